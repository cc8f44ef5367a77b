"""Concurrency against the real database: racing approvals deploy exactly once; concurrent audit appends never
fork the chain. Threads use their own connections, so the data is committed (committed_db)."""
import threading

from django.db import connection

from foundation.audit import append_event, verify_chain
from foundation.roles import APPROVER
from governance.models import AliasChange, ChangeRequest
from governance.services import decide
from tests.conftest import client_for, make_user, register_sealed_version


def _run_together(functions):
    barrier = threading.Barrier(len(functions))
    outcomes = [None] * len(functions)

    def run(index, function):
        try:
            barrier.wait()
            outcomes[index] = function()
        except Exception as error:  # each thread's outcome is what the test checks
            outcomes[index] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, f)) for i, f in enumerate(functions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_racing_final_approvals_deploy_exactly_once(e2e_users, unique, tiny_model_dir):
    api = client_for(e2e_users["engineer"])
    model = f"race-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    approvers = [e2e_users["approver"], e2e_users["approver2"]] + [make_user(f"app{i}-{unique}", APPROVER)
                                                                    for i in range(4)]
    request_id = api.post("/api/v1/change-requests/", {"model": model, "alias": "staging", "version": 1,
                                                       "justification": "race"}, format="json").json()["id"]
    request = ChangeRequest.objects.get(pk=request_id)
    assert request.required_approvals == 1
    outcomes = _run_together([lambda user=user: decide(change_request=request, actor=user, decision="approve",
                                                       comment="") for user in approvers])
    successes = [o for o in outcomes if isinstance(o, ChangeRequest)]
    assert len(successes) == 1, outcomes
    assert all("deployed" in str(o) for o in outcomes if not isinstance(o, ChangeRequest))
    assert AliasChange.objects.filter(alias__model__name=model).count() == 1
    assert ChangeRequest.objects.get(pk=request_id).status == "deployed"


def test_concurrent_audit_appends_never_fork_the_chain(e2e_users, unique):
    from django.db import transaction

    def append_many(index):
        def run():
            for number in range(10):
                with transaction.atomic():
                    append_event(actor=e2e_users["engineer"], action="test.concurrent", object_type="thread",
                                 object_id=f"{index}-{number}", model_name=f"audit-{unique}")
        return run

    outcomes = _run_together([append_many(i) for i in range(6)])
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    result = verify_chain()
    assert result.ok, result
