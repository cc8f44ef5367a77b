"""Entry points governance calls after its transactions commit. Report rendering and signing hang off these."""


def draft_report_requested(change_request_id: int) -> None:
    """Gates are known: render the draft report and certify it with one empty field per approver."""


def approval_recorded(change_request_id: int, approver_id: int) -> None:
    """An approval below quorum: the approver's signature goes into the draft as an incremental update."""


def deployment_recorded(change_request_id: int, approver_id: int) -> None:
    """Quorum reached and the alias moved: last signature, then the final PDF is stored under object lock."""


def rollback_recorded(alias_change_id: int, ops_user_id: int) -> None:
    """A rollback happened: render its report, signed by the organisation and the ops user."""
