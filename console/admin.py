"""The admin UI, one module per area; Django's admin autodiscovery imports this module."""
from django.contrib import admin

from console import (  # noqa: F401
    analysis_pages,  # noqa: F401
    audit_pages,
    evaluation_pages,
    governance_pages,
    job_pages,
    registry_pages,
    report_pages,
    sweep_pages,
)

admin.site.site_header = "LLM model registry"
admin.site.site_title = "LLM model registry"
admin.site.index_title = "Models, versions, jobs and governance"
