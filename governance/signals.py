"""What governance announces, after the transaction that made the change commits (reports and integrations
listen; governance knows none of them)."""
from django.dispatch import Signal

# change_request_id: gates are known and the request awaits decisions (a draft report can be drawn).
change_request_gated = Signal()
# change_request_id, approver_id: an approval below the quorum.
approval_recorded = Signal()
# change_request_id, approver_id: the quorum was reached and the alias moved.
change_request_deployed = Signal()
# alias_change_id, actor_id: an alias was rolled back.
alias_rolled_back = Signal()
