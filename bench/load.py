"""Mixed read/write load on the REST API, then the audit trail checked against every write the load made.

    .venv/bin/python bench/load.py [--clients 50] [--seconds 60] [--base-url URL] [--change-requests 40]

`--clients` threads, each with its own keep-alive `requests.Session` (one connection per client), run for
`--seconds` (then stop by themselves: a request in flight at the deadline finishes, bounded by `--timeout`)
against the stack `make up` started (http://127.0.0.1:8000; `--base-url` / `LOAD_BASE_URL` / `BENCH_BASE_URL`
for another server). Every request goes through the public API; Django's ORM is used only for setup that has no
API (users with their roles and tokens, and a team for the run's engineers), with the settings and database of
the server under load (`--settings` / `DJANGO_SETTINGS_MODULE`, default config.settings; `--database-url` /
`LOAD_DATABASE_URL` sets DATABASE_URL for a server on another database).

Each client is one ml_engineer and one approver of this run; all engineers share one team, so versions are
created concurrently on the same models (their numbers must come out distinct). The mix:

- reads: model list and detail, version list and detail, lineage, jobs list and detail, audit events (all and
  per model), aliases (list, detail, history), policies, change requests (list and detail), datasets; lists
  with `?limit=`
- writes: create models (names unique per run), create versions, upload tiny files (a config.json and a
  safetensors file of a few hundred bytes, each with unique content), seal versions, open change requests for a
  fresh alias (a first deployment: no analysis, so no ML job) and approve or reject them. Change requests are
  capped by `--change-requests` over the whole run, spread over it, since each one makes the worker render a
  signed report afterwards.
- expected refusals, provoked on purpose and not errors: a duplicate model name (409), a second decision on a
  decided request (409), a model that does not exist (404).

No ML jobs and no large uploads: this measures the web process and the database, not the worker.

Afterwards (not timed): GET /api/v1/audit-events/verification must say ok, and every write that returned 2xx
must have its audit event (model.created per model, version.created / version.sealed per version,
version.file_uploaded per file, change_request.opened per request, change_request.approved|rejected and
change_request.updated per decision, alias.deploy per deployment): `writes_without_event` counts those missing,
`unexpected_events` counts events by this run's users that no 2xx write accounts for (a write that failed for
the client but committed), `duplicate_version_numbers` counts version numbers handed out twice.

`errors` counts every response other than the one the operation expects (any 5xx, any unexpected 4xx) and every
connection error or timeout; the first few are printed in full and kept in `error_samples`.
Last line: a JSON object (keys in shared/BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import secrets
import struct
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.stack import base_url as stack_base_url  # noqa: E402
from bench.stack import emit, log  # noqa: E402

API = "/api/v1"
ERROR_SAMPLES_KEPT = 20
# Relative weights of the operations; an operation whose preconditions do not hold yet is skipped in the draw.
WEIGHTS = {
    # reads
    "model_list": 6, "model_detail": 6, "model_detail_missing": 1, "version_list": 5, "version_detail": 7,
    "lineage": 2, "job_list": 3, "job_detail": 2, "audit_list": 3, "audit_list_model": 3, "alias_list": 3,
    "alias_detail": 2, "alias_history": 1, "policy_detail": 1, "change_request_list": 3,
    "change_request_detail": 2, "dataset_list": 1,
    # writes
    "model_create": 4, "model_create_duplicate": 1, "version_create": 5, "file_upload": 8, "version_seal": 4,
    "change_request_open": 3, "change_request_decide": 12, "decision_duplicate": 1,
}
WRITE_OPERATIONS = {"model_create", "version_create", "file_upload", "version_seal", "change_request_open",
                    "change_request_decide"}


def parse_args() -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=int(env("LOAD_CLIENTS", "50")))
    parser.add_argument("--seconds", type=float, default=float(env("LOAD_SECONDS", "60")))
    parser.add_argument("--base-url", default=env("LOAD_BASE_URL") or stack_base_url())
    parser.add_argument("--settings", default=env("LOAD_SETTINGS") or env("DJANGO_SETTINGS_MODULE")
                        or "config.settings", help="Django settings of the server under load (for the users)")
    parser.add_argument("--database-url", default=env("LOAD_DATABASE_URL"),
                        help="the database of the server under load, when not the settings' own")
    parser.add_argument("--change-requests", type=int, default=int(env("LOAD_CHANGE_REQUESTS", "40")),
                        help="most change requests opened over the run (each makes the worker render a report)")
    parser.add_argument("--timeout", type=float, default=float(env("LOAD_REQUEST_TIMEOUT", "30")),
                        help="seconds one request may take before it counts as an error")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    if args.clients < 1 or args.seconds <= 0:
        parser.error("--clients and --seconds must be positive")
    args.base_url = args.base_url.rstrip("/")
    return args


# ----------------------------------------------------------------------------------------------------------- setup

def setup_users(args, tag: str) -> dict:
    """Users of this run (ORM: there is no API for users, roles, teams or tokens): per client one ml_engineer and
    one approver, plus a regulator for the checks afterwards. All engineers share the run's team."""
    os.environ["DJANGO_SETTINGS_MODULE"] = args.settings
    if args.database_url:
        os.environ["DATABASE_URL"] = args.database_url
    import django

    django.setup()
    from django.contrib.auth.models import Group, User
    from django.db import transaction
    from rest_framework.authtoken.models import Token

    from registry.models import Team

    groups = {name: Group.objects.get(name=name) for name in ("ml_engineer", "approver", "regulator")}

    def make(username: str, role: str) -> str:
        user = User.objects.create(username=username, email=f"{username}@registry.local")
        user.groups.add(groups[role])
        return Token.objects.create(user=user).key

    with transaction.atomic():
        team = Team.objects.create(name=f"load-{tag}")
        engineers, approvers = [], []
        for index in range(args.clients):
            engineers.append(make(f"load-{tag}-e{index}", "ml_engineer"))
            approvers.append(make(f"load-{tag}-a{index}", "approver"))
        team.members.add(*User.objects.filter(username__startswith=f"load-{tag}-e"))
        regulator = make(f"load-{tag}-regulator", "regulator")
    return {"engineers": engineers, "approvers": approvers, "regulator": regulator, "team": team.name,
            "usernames": {f"load-{tag}-e{i}" for i in range(args.clients)}
            | {f"load-{tag}-a{i}" for i in range(args.clients)} | {f"load-{tag}-regulator"}}


def tiny_safetensors(note: str) -> bytes:
    """A valid safetensors file of a few hundred bytes: one float32 tensor of 4 values; `note` makes it unique."""
    header = {"__metadata__": {"note": note},
              "weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + struct.pack("<4f", 0.5, -0.25, 1.0, 2.0)


def tiny_config(note: str) -> bytes:
    return json.dumps({"model_type": "llama", "hidden_size": 4, "num_hidden_layers": 1, "_load": note}).encode()


# ------------------------------------------------------------------------------------------------------- the load

class Shared:
    """What all clients see: the run's models, versions, aliases and requests (for reads), and the totals."""

    def __init__(self, args, tag: str):
        self.args = args
        self.tag = tag
        self.lock = threading.Lock()
        self.models: list[str] = []
        self.versions: list[tuple[str, int]] = []
        self.aliases: list[tuple[str, str]] = []
        self.change_requests: list[int] = []
        self.decided: list[int] = []
        self.job_ids: list[int] = []
        self.change_requests_opened = 0
        self.error_samples: list[dict] = []
        self.started = 0.0
        self.deadline = 0.0

    def take_change_request_slot(self) -> bool:
        """At most --change-requests over the run, released evenly over its first 80%."""
        budget = self.args.change_requests
        elapsed = time.monotonic() - self.started
        allowed = min(budget, math.ceil(budget * elapsed / (0.8 * self.args.seconds)))
        with self.lock:
            if self.change_requests_opened >= allowed:
                return False
            self.change_requests_opened += 1
            return True


class Client(threading.Thread):
    def __init__(self, index: int, shared: Shared, engineer: str, approver: str, barrier: threading.Barrier):
        super().__init__(name=f"load-client-{index}", daemon=True)
        self.index = index
        self.shared = shared
        self.args = shared.args
        self.barrier = barrier
        self.rng = random.Random(None if self.args.seed is None else self.args.seed * 1000 + index)
        self.session = requests.Session()  # one keep-alive connection per client
        self.engineer = {"Authorization": f"Token {engineer}"}
        self.approver = {"Authorization": f"Token {approver}"}
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter = Counter()
        self.statuses: Counter = Counter()
        self.serial = 0
        # This client's own state: drafts it created (model, number, files uploaded), versions it sealed,
        # requests it opened that await a decision.
        self.drafts: list[dict] = []
        self.sealed: list[tuple[str, int]] = []
        self.pending: list[dict] = []
        # Writes that returned 2xx: audit keys (see audit_key()).
        self.writes: list[tuple] = []
        self.versions_created: list[tuple[str, int]] = []

    # -- plumbing

    def call(self, op: str, method: str, path: str, *, headers=None, expect=(200,), **kwargs):
        """One timed request; returns the response when its status is the expected one, else None (an error)."""
        url = f"{self.args.base_url}{path}"
        started = time.perf_counter()
        try:
            response = self.session.request(method, url, headers=headers or self.engineer,
                                            timeout=self.args.timeout, allow_redirects=False, **kwargs)
            body = response.content
        except requests.RequestException as error:
            self.latencies[op].append((time.perf_counter() - started) * 1000)
            self.record_error(op, method, url, kwargs, f"{type(error).__name__}: {error}", None)
            return None
        self.latencies[op].append((time.perf_counter() - started) * 1000)
        self.statuses[(op, response.status_code)] += 1
        if response.status_code not in expect:
            self.record_error(op, method, url, kwargs, body.decode("utf-8", "replace")[:2000], response.status_code)
            return None
        return response

    def record_error(self, op, method, url, kwargs, detail, status) -> None:
        self.errors[(op, status if status is not None else "connection")] += 1
        request_body = kwargs.get("json")
        if request_body is None and "data" in kwargs:
            request_body = f"<{len(kwargs['data'])} bytes>"
        sample = {"op": op, "request": f"{method} {url}", "request_body": request_body, "status": status,
                  "response": detail, "at_s": round(time.monotonic() - self.shared.started, 2),
                  "client": self.index}
        with self.shared.lock:
            if len(self.shared.error_samples) < ERROR_SAMPLES_KEPT:
                self.shared.error_samples.append(sample)

    def unique(self, kind: str) -> str:
        self.serial += 1
        return f"load-{self.shared.tag}-{kind}{self.index}-{self.serial}"

    def pick(self, items):
        return items[self.rng.randrange(len(items))] if items else None

    # -- the loop

    def run(self) -> None:
        self.barrier.wait()
        self.model_create()  # every client starts by registering a model, so the others have something to read
        while time.monotonic() < self.shared.deadline:
            choices = [op for op in WEIGHTS if self.possible(op)]
            op = self.rng.choices(choices, weights=[WEIGHTS[o] for o in choices])[0]
            getattr(self, op)()
        self.session.close()

    def possible(self, op: str) -> bool:
        s = self.shared
        return {
            "model_detail": bool(s.models), "model_create_duplicate": bool(s.models), "version_list": bool(s.models),
            "version_create": bool(s.models), "audit_list_model": bool(s.models), "alias_list": bool(s.models),
            "version_detail": bool(s.versions), "lineage": bool(s.versions), "job_detail": bool(s.job_ids),
            "alias_detail": bool(s.aliases), "alias_history": bool(s.aliases), "policy_detail": bool(s.models),
            "change_request_detail": bool(s.change_requests), "decision_duplicate": bool(s.decided),
            "file_upload": any(self.missing_files(d) for d in self.drafts),
            "version_seal": any(not self.missing_files(d) for d in self.drafts),
            "change_request_open": bool(self.sealed) and s.change_requests_opened < self.args.change_requests,
            "change_request_decide": bool(self.pending),
        }.get(op, True)

    @staticmethod
    def missing_files(draft: dict) -> list[str]:
        return [p for p in ("config.json", "model.safetensors") if p not in draft["files"]]

    def limit(self) -> int:
        return self.pick([5, 20, 50, 100])

    # -- reads

    def model_list(self):
        self.call("model_list", "GET", f"{API}/models/?limit={self.limit()}")

    def model_detail(self):
        self.call("model_detail", "GET", f"{API}/models/{self.pick(self.shared.models)}/")

    def model_detail_missing(self):
        self.call("model_detail_missing", "GET", f"{API}/models/load-{self.shared.tag}-absent/", expect=(404,))

    def version_list(self):
        self.call("version_list", "GET", f"{API}/models/{self.pick(self.shared.models)}/versions/?limit={self.limit()}")

    def version_detail(self):
        model, number = self.pick(self.shared.versions)
        self.call("version_detail", "GET", f"{API}/models/{model}/versions/{number}/")

    def lineage(self):
        model, number = self.pick(self.shared.versions)
        self.call("lineage", "GET", f"{API}/models/{model}/versions/{number}/lineage")

    def job_list(self):
        response = self.call("job_list", "GET", f"{API}/jobs/?limit={self.limit()}")
        if response is not None and not self.shared.job_ids:
            ids = [job["id"] for job in response.json()[:50]]
            with self.shared.lock:
                if not self.shared.job_ids:
                    self.shared.job_ids.extend(ids)

    def job_detail(self):
        self.call("job_detail", "GET", f"{API}/jobs/{self.pick(self.shared.job_ids)}")

    def audit_list(self):
        self.call("audit_list", "GET", f"{API}/audit-events/?limit={self.limit()}")

    def audit_list_model(self):
        self.call("audit_list_model", "GET",
                  f"{API}/audit-events/?model={self.pick(self.shared.models)}&limit={self.limit()}")

    def alias_list(self):
        self.call("alias_list", "GET", f"{API}/models/{self.pick(self.shared.models)}/aliases/?limit={self.limit()}")

    def alias_detail(self):
        model, alias = self.pick(self.shared.aliases)
        self.call("alias_detail", "GET", f"{API}/models/{model}/aliases/{alias}")

    def alias_history(self):
        model, alias = self.pick(self.shared.aliases)
        self.call("alias_history", "GET", f"{API}/models/{model}/aliases/{alias}/history?limit={self.limit()}")

    def policy_detail(self):
        self.call("policy_detail", "GET", f"{API}/models/{self.pick(self.shared.models)}/policies/staging")

    def change_request_list(self):
        query = self.pick(["", "&status=pending", "&status=deployed", f"&model={self.pick(self.shared.models)}"])
        if "model=None" in query:
            query = ""
        self.call("change_request_list", "GET", f"{API}/change-requests/?limit={self.limit()}{query}")

    def change_request_detail(self):
        self.call("change_request_detail", "GET", f"{API}/change-requests/{self.pick(self.shared.change_requests)}/")

    def dataset_list(self):
        self.call("dataset_list", "GET", f"{API}/datasets/?limit={self.limit()}")

    # -- writes

    def model_create(self):
        name = self.unique("m")
        response = self.call("model_create", "POST", f"{API}/models/", expect=(201,),
                             json={"name": name, "description": "load benchmark"})
        if response is not None:
            self.writes.append(("model.created", name))
            with self.shared.lock:
                self.shared.models.append(name)

    def model_create_duplicate(self):
        self.call("model_create_duplicate", "POST", f"{API}/models/", expect=(409,),
                  json={"name": self.pick(self.shared.models), "description": "a name that is taken"})

    def version_create(self):
        # Any model of the run (all engineers share its team): numbers are allocated under contention.
        own = [d for d in self.drafts]
        if len(own) >= 3:  # enough open drafts of our own: finish those first
            return self.file_upload() if any(self.missing_files(d) for d in own) else self.version_seal()
        model = self.pick(self.shared.models)
        response = self.call("version_create", "POST", f"{API}/models/{model}/versions/", expect=(201,),
                             json={"description": "load"})
        if response is not None:
            number = response.json()["number"]
            self.writes.append(("version.created", model, number))
            self.versions_created.append((model, number))
            self.drafts.append({"model": model, "number": number, "files": set()})
            with self.shared.lock:
                self.shared.versions.append((model, number))

    def file_upload(self):
        draft = self.pick([d for d in self.drafts if self.missing_files(d)])
        path = self.missing_files(draft)[0]
        note = f"{draft['model']}/{draft['number']}/{path}/{secrets.token_hex(4)}"
        data = tiny_config(note) if path == "config.json" else tiny_safetensors(note)
        digest = hashlib.sha256(data).hexdigest()
        response = self.call("file_upload", "PUT",
                             f"{API}/models/{draft['model']}/versions/{draft['number']}/files/{path}",
                             expect=(201,), data=data, headers={**self.engineer, "X-Content-SHA256": digest})
        if response is not None:
            draft["files"].add(path)
            self.writes.append(("version.file_uploaded", draft["model"], draft["number"], digest))

    def version_seal(self):
        draft = self.pick([d for d in self.drafts if not self.missing_files(d)])
        response = self.call("version_seal", "POST",
                             f"{API}/models/{draft['model']}/versions/{draft['number']}/seal")
        self.drafts.remove(draft)  # sealed, or refused: either way not retried
        if response is not None:
            self.writes.append(("version.sealed", draft["model"], draft["number"]))
            self.sealed.append((draft["model"], draft["number"]))

    def change_request_open(self):
        if not self.shared.take_change_request_slot():
            return self.model_list()
        model, number = self.sealed.pop(self.rng.randrange(len(self.sealed)))
        alias = f"l{self.shared.tag}-{self.index}-{self.serial}"
        self.serial += 1
        response = self.call("change_request_open", "POST", f"{API}/change-requests/", expect=(201,), json={
            "model": model, "alias": alias, "version": number, "justification": "load benchmark"})
        if response is None:
            return
        document = response.json()
        self.writes.append(("change_request.opened", document["id"]))
        with self.shared.lock:
            self.shared.change_requests.append(document["id"])
        if document["status"] != "pending":  # a first deployment has no gates: it must be pending at once
            self.record_error("change_request_open", "POST", f"{self.args.base_url}{API}/change-requests/",
                              {"json": {"model": model, "alias": alias, "version": number}},
                              f"status {document['status']!r}, expected 'pending': {json.dumps(document)[:1500]}",
                              201)
            return
        self.pending.append({"id": document["id"], "model": model, "alias": alias})

    def change_request_decide(self):
        request = self.pending.pop(0)
        decision = "reject" if self.rng.random() < 0.3 else "approve"
        response = self.call("change_request_decide", "POST",
                             f"{API}/change-requests/{request['id']}/decisions", headers=self.approver,
                             json={"decision": decision, "comment": "load benchmark"})
        if response is None:
            return
        document = response.json()
        # The past tense of the decision, as an audit reader would filter for it.
        self.writes.append((f"change_request.{'rejected' if decision == 'reject' else 'approved'}", request["id"]))
        self.writes.append(("change_request.updated", request["id"]))
        expected = "rejected" if decision == "reject" else "deployed"
        if document["status"] != expected:
            self.record_error("change_request_decide", "POST",
                              f"{self.args.base_url}{API}/change-requests/{request['id']}/decisions",
                              {"json": {"decision": decision}},
                              f"status {document['status']!r}, expected {expected!r}: {json.dumps(document)[:1500]}",
                              200)
        elif decision == "approve":
            self.writes.append(("alias.deploy", request["model"], request["alias"]))
            with self.shared.lock:
                self.shared.aliases.append((request["model"], request["alias"]))
        with self.shared.lock:
            self.shared.decided.append(request["id"])

    def decision_duplicate(self):
        self.call("decision_duplicate", "POST",
                  f"{API}/change-requests/{self.pick(self.shared.decided)}/decisions", headers=self.approver,
                  expect=(409,), json={"decision": "approve", "comment": "already decided"})


# ------------------------------------------------------------------------------------------------------ the checks

def audit_head(session: requests.Session, url: str) -> int:
    response = session.get(f"{url}{API}/audit-events/?limit=1", timeout=60)
    response.raise_for_status()
    events = response.json()
    return events[0]["sequence"] if events else 0


def events_since(session: requests.Session, url: str, after_sequence: int) -> list[dict]:
    """Every audit event with a sequence above `after_sequence`, paging newest first through the API."""
    events, next_url = [], f"{url}{API}/audit-events/?limit=1000"
    while next_url:
        response = session.get(next_url, timeout=120)
        response.raise_for_status()
        page = response.json()
        events.extend(e for e in page if e["sequence"] > after_sequence)
        if not page or page[-1]["sequence"] <= after_sequence:
            break
        next_url = response.links.get("next", {}).get("url")
    return events


def audit_keys(events: list[dict]) -> list[tuple]:
    """The key of each event as the load's writes record them."""
    version_numbers = {e["object_id"]: e["after"]["number"] for e in events if e["action"] == "version.created"}
    keys = []
    for e in events:
        action, after = e["action"], e.get("after") or {}
        if action == "model.created":
            keys.append((action, e["model"]))
        elif action in ("version.created", "version.sealed"):
            keys.append((action, e["model"], after.get("number")))
        elif action == "version.file_uploaded":
            keys.append((action, e["model"], version_numbers.get(e["object_id"]), after.get("sha256")))
        elif action.startswith("change_request."):
            keys.append((action, int(e["object_id"])))
        elif action == "alias.deploy":
            keys.append((action, e["model"], after.get("alias")))
        else:
            keys.append((action, e["model"], e["object_id"]))
    return keys


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


def main() -> None:
    args = parse_args()
    tag = secrets.token_hex(3)
    log(f"load {tag}: {args.clients} clients x {args.seconds:g} s against {args.base_url}")
    users = setup_users(args, tag)
    checker = requests.Session()
    checker.headers["Authorization"] = f"Token {users['regulator']}"
    start_sequence = audit_head(checker, args.base_url)

    shared = Shared(args, tag)
    barrier = threading.Barrier(args.clients + 1)
    clients = [Client(i, shared, users["engineers"][i], users["approvers"][i], barrier) for i in range(args.clients)]
    for client in clients:
        client.start()
    barrier.wait()
    shared.started = time.monotonic()
    shared.deadline = shared.started + args.seconds
    hard_stop = shared.deadline + args.timeout + 30
    for client in clients:
        client.join(max(0.0, hard_stop - time.monotonic()))
    elapsed = time.monotonic() - shared.started
    stuck = sum(client.is_alive() for client in clients)
    log(f"load done in {elapsed:.1f} s" + (f"; {stuck} clients still in a request" if stuck else ""))

    latencies: dict[str, list[float]] = defaultdict(list)
    errors_by: Counter = Counter()
    statuses: Counter = Counter()
    writes: Counter = Counter()
    versions_created: list[tuple[str, int]] = []
    for client in clients:
        for op, values in client.latencies.items():
            latencies[op].extend(values)
        errors_by.update(client.errors)
        statuses.update(client.statuses)
        writes.update(client.writes)
        versions_created.extend(client.versions_created)
    everything = sorted(v for values in latencies.values() for v in values)
    requests_total = len(everything)
    errors = sum(errors_by.values())

    # The checks: the chain, then every 2xx write against the events since the load began. A server that fails
    # here still gets its result line (audit_ok false, the reason kept).
    started = time.perf_counter()
    try:
        verification = checker.get(f"{args.base_url}{API}/audit-events/verification", timeout=600)
        try:
            verified = verification.json()
        except ValueError:
            verified = {"ok": False, "reason": f"HTTP {verification.status_code}: {verification.text[:500]}"}
        audit_ok = verification.status_code == 200 and verified.get("ok") is True
    except requests.RequestException as error:
        verified, audit_ok = {"ok": False, "reason": f"{type(error).__name__}: {error}"}, False
    verification_s = time.perf_counter() - started
    try:
        events = events_since(checker, args.base_url, start_sequence)
        check_error = None
    except requests.RequestException as error:
        events, check_error = [], f"{type(error).__name__}: {error}"
        log(f"could not read the audit events: {check_error}")
    # An approver's first signature issues their signing certificate (an audited event the worker writes for
    # the approver): a consequence of a decision, not a write of the load's own.
    ours = [e for e in events if e["actor"] in users["usernames"] and e["action"] != "signing_identity.issued"]
    seen = Counter(audit_keys(ours))
    missing = writes - seen
    unexpected = seen - writes
    duplicate_numbers = len(versions_created) - len(set(versions_created))

    per_operation = {}
    for op in sorted(latencies):
        values = sorted(latencies[op])
        per_operation[op] = {"count": len(values), "p50_ms": round(percentile(values, 0.5), 2),
                             "p99_ms": round(percentile(values, 0.99), 2),
                             "errors": sum(n for (o, _), n in errors_by.items() if o == op)}

    print(f"{'operation':<24}{'count':>8}{'errors':>8}{'p50 ms':>10}{'p99 ms':>10}")
    for op, row in per_operation.items():
        print(f"{op:<24}{row['count']:>8}{row['errors']:>8}{row['p50_ms']:>10.1f}{row['p99_ms']:>10.1f}")
    print(f"{'all':<24}{requests_total:>8}{errors:>8}{percentile(everything, 0.5):>10.1f}"
          f"{percentile(everything, 0.99):>10.1f}")
    print(f"{requests_total / elapsed:.1f} requests/s over {elapsed:.1f} s with {args.clients} clients; "
          f"audit chain {'ok' if audit_ok else 'NOT ok: ' + json.dumps(verified)[:500]} "
          f"({verified.get('events')} events, verified in {verification_s:.1f} s); "
          f"{sum(missing.values())} of {sum(writes.values())} writes without their audit event; "
          f"{sum(unexpected.values())} unexpected events by this run's users")
    for sample in shared.error_samples:
        print(f"ERROR {json.dumps(sample)}", file=sys.stderr)
    if missing:
        print(f"writes without event (first 20): {list(missing.items())[:20]}", file=sys.stderr)
    if unexpected:
        print(f"unexpected events (first 20): {list(unexpected.items())[:20]}", file=sys.stderr)

    emit({
        "errors": errors,
        "requests_per_s": round(requests_total / elapsed, 1),
        "p50_ms": round(percentile(everything, 0.5), 2),
        "p99_ms": round(percentile(everything, 0.99), 2),
        "audit_ok": audit_ok,
        "writes_without_event": sum(missing.values()),
        "unexpected_events": sum(unexpected.values()),
        "duplicate_version_numbers": duplicate_numbers,
        "per_operation": per_operation,
        "clients": args.clients,
        "seconds": args.seconds,
        "elapsed_s": round(elapsed, 2),
        "requests": requests_total,
        "writes": sum(writes.values()),
        "writes_by_action": dict(Counter(key[0] for key in writes.elements())),
        "change_requests_opened": shared.change_requests_opened,
        "errors_by_operation": {f"{op} {status}": n for (op, status), n in sorted(errors_by.items(), key=str)},
        "error_samples": [{**s, "response": str(s["response"])[:300]} for s in shared.error_samples[:5]],
        "audit_events_checked": len(ours),
        "audit_verification": {k: verified.get(k) for k in ("ok", "events", "first_bad", "reason")},
        "audit_verification_s": round(verification_s, 2),
        "audit_events_error": check_error,
        "clients_stuck": stuck,
        "base_url": args.base_url,
        "run": tag,
    })


if __name__ == "__main__":
    main()
