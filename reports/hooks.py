"""Entry points governance calls after its transactions commit, in the web process: they only enqueue.

Rendering and signing take a second or two and need the PKI, so they run in a worker (reports.tasks). All three
change-request hooks enqueue the same idempotent task, which brings the report up to date whatever the order the
tasks run in. If the broker cannot take the task, the decision stands (it is committed) and the report is made by
`manage.py produce_missing_reports`; the user's request must not fail for it.
"""
import logging

from kombu.exceptions import OperationalError

logger = logging.getLogger(__name__)


def draft_report_requested(change_request_id: int) -> None:
    """Gates are known: render the draft report and certify it with one empty field per approver."""
    _enqueue("update_change_impact_report", change_request_id)


def approval_recorded(change_request_id: int, approver_id: int) -> None:
    """An approval below quorum: the approver's signature goes into the draft as an incremental update."""
    _enqueue("update_change_impact_report", change_request_id)


def deployment_recorded(change_request_id: int, approver_id: int) -> None:
    """Quorum reached and the alias moved: last signature, then the final PDF is stored under object lock."""
    _enqueue("update_change_impact_report", change_request_id)


def rollback_recorded(alias_change_id: int, ops_user_id: int) -> None:
    """A rollback happened: render its report, signed by the organisation and the ops user."""
    _enqueue("produce_rollback_report", alias_change_id)


def _enqueue(task_name: str, object_id: int) -> None:
    from reports import tasks

    try:
        getattr(tasks, task_name).apply_async(args=[object_id], queue="cpu")
    except (OperationalError, OSError):
        logger.exception("could not queue %s(%s); run `manage.py produce_missing_reports` to catch up",
                         task_name, object_id)
