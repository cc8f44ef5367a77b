from celery import shared_task

from foundation.anchoring import anchor_chain_head
from foundation.errors import StorageUnavailable


@shared_task(autoretry_for=(StorageUnavailable,), retry_backoff=5, max_retries=5, ignore_result=True)
def anchor_audit_head() -> None:
    anchor_chain_head()
