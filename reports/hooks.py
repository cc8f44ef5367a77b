"""Reports listen to governance's announcements (connected in ReportsConfig.ready); each receiver only enqueues.

They run in the web process after the decision's transaction has committed. Rendering and signing take a second
or two and need the PKI, so they run in a worker (reports.tasks). All three change-request announcements enqueue
the same idempotent task, which brings the report up to date whatever the order the tasks run in. If the broker
cannot take the task, the decision stands (it is committed) and the report is made by
`manage.py produce_missing_reports`; the user's request must not fail for it.
"""
import logging

from kombu.exceptions import OperationalError

from governance import signals

logger = logging.getLogger(__name__)


def on_change_request_gated(sender, *, change_request_id: int, **_) -> None:
    """Gates are known: render the draft report and certify it with one empty field per approver."""
    _enqueue("update_change_impact_report", change_request_id)


def on_approval_recorded(sender, *, change_request_id: int, **_) -> None:
    """An approval below quorum: the approver's signature goes into the draft as an incremental update."""
    _enqueue("update_change_impact_report", change_request_id)


def on_change_request_deployed(sender, *, change_request_id: int, **_) -> None:
    """Quorum reached and the alias moved: last signature, then the final PDF is stored under object lock."""
    _enqueue("update_change_impact_report", change_request_id)


def on_alias_rolled_back(sender, *, alias_change_id: int, **_) -> None:
    """A rollback happened: render its report, signed by the organisation and the ops user."""
    _enqueue("produce_rollback_report", alias_change_id)


def connect() -> None:
    signals.change_request_gated.connect(on_change_request_gated, dispatch_uid="reports.gated")
    signals.approval_recorded.connect(on_approval_recorded, dispatch_uid="reports.approval")
    signals.change_request_deployed.connect(on_change_request_deployed, dispatch_uid="reports.deployed")
    signals.alias_rolled_back.connect(on_alias_rolled_back, dispatch_uid="reports.rolled_back")


def _enqueue(task_name: str, object_id: int) -> None:
    from reports import tasks  # the tasks import rendering and signing: loaded at the first report, not at start

    try:
        getattr(tasks, task_name).apply_async(args=[object_id], queue="cpu")
    except (OperationalError, OSError):
        logger.exception("could not queue %s(%s); run `manage.py produce_missing_reports` to catch up",
                         task_name, object_id)
