from django.urls import path

from workers import api

urlpatterns = [
    path("models/<str:name>/versions/<int:number>/quantize", api.QuantizeView.as_view(), name="version-quantize"),
    path("jobs/", api.JobListView.as_view(), name="job-list"),
    path("jobs/<int:job_id>", api.JobDetailView.as_view(), name="job-detail"),
    path("jobs/<int:job_id>/", api.JobDetailView.as_view()),
    path("jobs/<int:job_id>/cancel", api.JobCancelView.as_view(), name="job-cancel"),
]
