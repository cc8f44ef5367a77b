from django.urls import path

from registry import api

urlpatterns = [
    path("models/", api.ModelListView.as_view(), name="model-list"),
    path("models/<str:name>/", api.ModelDetailView.as_view(), name="model-detail"),
    path("models/<str:name>/versions/", api.VersionListView.as_view(), name="version-list"),
    path("models/<str:name>/versions/<int:number>/", api.VersionDetailView.as_view(), name="version-detail"),
    path("models/<str:name>/versions/<int:number>/files/<path:path>", api.VersionFileView.as_view(),
         name="version-file"),
    path("models/<str:name>/versions/<int:number>/seal", api.SealView.as_view(), name="version-seal"),
    path("models/<str:name>/versions/<int:number>/lineage", api.LineageView.as_view(), name="version-lineage"),
    path("datasets/", api.DatasetListView.as_view(), name="dataset-list"),
    path("datasets/<int:dataset_id>/", api.DatasetDetailView.as_view(), name="dataset-detail"),
    path("datasets/<int:dataset_id>/pii-findings", api.PiiFindingsView.as_view(), name="dataset-pii-findings"),
    path("datasets/<int:dataset_id>/pii-exception", api.PiiExceptionView.as_view(), name="dataset-pii-exception"),
]
