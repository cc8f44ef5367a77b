"""Reads of jobs and analyses that the API and the admin share."""
from registry.errors import NotFound
from registry.models import Analysis
from workers.models import Job


def get_job(job_id) -> Job:
    try:
        return Job.objects.select_related("source_version__model", "created_by").get(pk=job_id)
    except Job.DoesNotExist:
        raise NotFound(f"No job with id {job_id}.") from None


def get_analysis(analysis_id) -> Analysis:
    try:
        return Analysis.objects.select_related("job", "reference__model", "candidate__model").get(pk=analysis_id)
    except Analysis.DoesNotExist:
        raise NotFound(f"No analysis with id {analysis_id}.") from None
