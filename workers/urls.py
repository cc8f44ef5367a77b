from django.urls import path

from workers import api, merge_api, sweep_api

urlpatterns = [
    path("models/<str:name>/versions/<int:number>/quantize", api.QuantizeView.as_view(), name="version-quantize"),
    path("models/<str:name>/versions/<int:number>/analyses", api.AnalysisStartView.as_view(), name="version-analyse"),
    path("models/<str:name>/versions/<int:number>/lora-updates", api.LoraUpdateView.as_view(), name="version-lora"),
    path("models/<str:name>/versions/<int:number>/merge", merge_api.MergeView.as_view(), name="version-merge"),
    path("models/<str:name>/versions/<int:number>/evaluations", api.EvaluationStartView.as_view(),
         name="version-evaluations"),
    path("evaluations/<int:evaluation_id>", api.EvaluationDetailView.as_view(), name="evaluation-detail"),
    path("evaluations/<int:evaluation_id>/", api.EvaluationDetailAliasView.as_view()),
    path("models/<str:name>/versions/<int:number>/quantization-sweeps", sweep_api.QuantizationSweepStartView.as_view(),
         name="version-quantization-sweeps"),
    path("quantization-sweeps", sweep_api.QuantizationSweepListView.as_view(), name="quantization-sweep-list"),
    path("quantization-sweeps/", sweep_api.QuantizationSweepListAliasView.as_view()),
    path("quantization-sweeps/<int:sweep_id>", sweep_api.QuantizationSweepDetailView.as_view(),
         name="quantization-sweep-detail"),
    path("quantization-sweeps/<int:sweep_id>/", sweep_api.QuantizationSweepDetailAliasView.as_view()),
    path("distillations", api.DistillationListView.as_view(), name="distillation-list"),
    path("distillations/", api.DistillationListAliasView.as_view()),
    path("distillations/<int:distillation_id>", api.DistillationDetailView.as_view(), name="distillation-detail"),
    path("distillations/<int:distillation_id>/", api.DistillationDetailAliasView.as_view()),
    path("analyses/<int:analysis_id>", api.AnalysisDetailView.as_view(), name="analysis-detail"),
    path("analyses/<int:analysis_id>/", api.AnalysisDetailAliasView.as_view()),
    path("analyses/<int:analysis_id>/plots/<str:plot>", api.AnalysisPlotView.as_view(), name="analysis-plot"),
    path("datasets/<int:dataset_id>/redact", api.DatasetRedactView.as_view(), name="dataset-redact"),
    path("jobs/", api.JobListView.as_view(), name="job-list"),
    path("jobs/<int:job_id>", api.JobDetailView.as_view(), name="job-detail"),
    path("jobs/<int:job_id>/", api.JobDetailAliasView.as_view()),
    path("jobs/<int:job_id>/cancel", api.JobCancelView.as_view(), name="job-cancel"),
]
