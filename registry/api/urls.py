from django.urls import path

from registry.api import views

urlpatterns = [
    path("models/", views.ModelListView.as_view(), name="model-list"),
    path("models/<str:name>/", views.ModelDetailView.as_view(), name="model-detail"),
    path("models/<str:name>/versions/", views.VersionListView.as_view(), name="version-list"),
    path("models/<str:name>/versions/<int:number>/", views.VersionDetailView.as_view(), name="version-detail"),
    path("models/<str:name>/versions/<int:number>/files/<path:path>", views.VersionFileView.as_view(),
         name="version-file"),
    path("models/<str:name>/versions/<int:number>/seal", views.SealView.as_view(), name="version-seal"),
    path("models/<str:name>/versions/<int:number>/lineage", views.LineageView.as_view(), name="version-lineage"),
    path("datasets/", views.DatasetListView.as_view(), name="dataset-list"),
    path("datasets/<int:dataset_id>/", views.DatasetDetailView.as_view(), name="dataset-detail"),
]
