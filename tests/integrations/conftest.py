"""Integration fixtures: an alias deployed twice through approved change requests, and a policy that allows (or
not) automatic rollback; webhook receivers the tests start on 127.0.0.1."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from governance import services as governance_services
from tests.conftest import client_for, make_user
from tests.governance.conftest import credit_model, evaluation_dataset, make_analysis, versions  # noqa: F401


def deploy(engineer_api, approvers, model: str, number: int, alias: str = "production") -> int:
    request_id = engineer_api.post("/api/v1/change-requests/", {
        "model": model, "alias": alias, "version": number, "justification": f"release v{number}"},
        format="json").json()["id"]
    for user in approvers:
        response = client_for(user).post(f"/api/v1/change-requests/{request_id}/decisions", {"decision": "approve"},
                                         format="json")
        assert response.status_code == 200, response.content
    return request_id


@pytest.fixture
def deployed_twice(engineer, engineer_api, versions, approver, second_approver, evaluation_dataset):  # noqa: F811
    """credit-llm@production went v1 -> v2 through approved change requests."""
    make_analysis(reference=versions[0], candidate=versions[1], dataset=evaluation_dataset, actor=engineer)
    for number in (1, 2):
        deploy(engineer_api, (approver, second_approver), "credit-llm", number)
    return versions


@pytest.fixture
def superuser(db):
    return make_user("sam", superuser=True)


def set_auto_rollback(model, alias: str, actor, *, enabled: bool = True, max_error_increase: float = 0.05) -> None:
    governance_services.set_policy(model=model, alias=alias, actor=actor,
                                   values={"auto_rollback": enabled, "max_error_increase": max_error_increase})


class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 that records each request; `answers` are the statuses it gives in turn
    (the last one repeats)."""

    def __init__(self, answers=(200,)):
        self.answers = list(answers)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
                    status = receiver.answers[min(len(receiver.requests), len(receiver.answers)) - 1]
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps({"received": True}).encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/registry"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
