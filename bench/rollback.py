"""Rollback latency through the API (1,000 rollbacks), the worker's CPU per rollback, and approval decisions per
second.

A rollback answers at once; its signed report and the audit anchor are made by the worker afterwards. First a few
rollbacks are made and the worker's CPU time (its process and children) is read until their reports exist, which
gives `worker_cpu_ms_per_rollback`; then the 1,000 timed rollbacks run while the worker works through their
reports, as it would in production.

Runs against the stack `make up` started. Sets up its own model with three versions deployed to production
through approved change requests, then alternates rollbacks; decisions are measured on fresh staging requests.
Last line: a JSON object (keys in shared/BENCHMARKS.md).
"""
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth.models import Group, User  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402

BASE_URL = os.environ.get("BENCH_BASE_URL", "http://127.0.0.1:8000")
ROLLBACKS = int(os.environ.get("BENCH_ROLLBACKS", "1000"))
CPU_SAMPLE_ROLLBACKS = int(os.environ.get("BENCH_CPU_SAMPLE_ROLLBACKS", "10"))
DECISIONS = int(os.environ.get("BENCH_DECISIONS", "200"))


def session_for(username: str, *roles: str) -> requests.Session:
    user, _ = User.objects.get_or_create(username=username, defaults={"is_staff": True})
    for role in roles:
        user.groups.add(Group.objects.get(name=role))
    token, _ = Token.objects.get_or_create(user=user)
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token.key}"
    return session


def check(response, expected=(200, 201)):
    if response.status_code not in expected:
        raise SystemExit(f"{response.request.method} {response.url} -> {response.status_code}: {response.text}")
    return response.json()


def worker_cpu_seconds() -> float:
    import psutil

    worker = psutil.Process(int((ROOT / ".var" / "run" / "worker.pid").read_text()))
    return sum(sum(p.cpu_times()[:2]) for p in [worker, *worker.children(recursive=True)])


def worker_cpu_per_rollback(ops: requests.Session, url: str, model: str) -> float:
    """The worker's CPU milliseconds per rollback: its report (render + sign) and the audit anchor."""
    from reports.models import Report

    def rollback_reports() -> int:
        # Signed and stored: a report row exists (as a draft) before its PDF is rendered.
        return Report.objects.filter(model__name=model, kind="rollback", status="final").count()

    deadline = time.time() + 300
    while time.time() < deadline and Report.objects.filter(model__name=model, status="final").count() < 2:
        # the deployments' reports, so their rendering is not counted below
        time.sleep(0.5)
    time.sleep(2)
    before = worker_cpu_seconds()
    for index in range(CPU_SAMPLE_ROLLBACKS):
        check(ops.post(url, json={"reason": "cpu sample", "to_version": 1 if index % 2 == 0 else 2}))
    while time.time() < deadline and rollback_reports() < CPU_SAMPLE_ROLLBACKS:
        time.sleep(0.2)
    time.sleep(1)  # the anchor task queued by the last rollback
    return round((worker_cpu_seconds() - before) * 1000 / CPU_SAMPLE_ROLLBACKS, 1)


def main() -> None:
    from workers.pipelines.tiny_model import build_tiny_llama

    tag = uuid.uuid4().hex[:6]
    engineer = session_for(f"bench-engineer-{tag}", "ml_engineer")
    approvers = [session_for(f"bench-approver{i}-{tag}", "approver") for i in range(2)]
    ops = session_for(f"bench-ops-{tag}", "ops")
    model = f"bench-rollback-{tag}"
    model_dir = build_tiny_llama(ROOT / ".var" / "bench" / f"rollback-{tag}")
    check(engineer.post(f"{BASE_URL}/api/v1/models/", json={"name": model}))
    for _ in range(3):
        number = check(engineer.post(f"{BASE_URL}/api/v1/models/{model}/versions/", json={}))["number"]
        for path in sorted(model_dir.iterdir()):
            check(engineer.put(f"{BASE_URL}/api/v1/models/{model}/versions/{number}/files/{path.name}",
                               data=path.read_bytes()))
        check(engineer.post(f"{BASE_URL}/api/v1/models/{model}/versions/{number}/seal"))
    # v1 goes to production as a first deployment (no gates, two approvals).
    request = check(engineer.post(f"{BASE_URL}/api/v1/change-requests/", json={
        "model": model, "alias": "production", "version": 1, "justification": "bench"}))
    for approver in approvers:
        check(approver.post(f"{BASE_URL}/api/v1/change-requests/{request['id']}/decisions",
                            json={"decision": "approve"}))
    # v2 follows through gates; a measured analysis is put in place rather than run (this bench times governance).
    from registry.models import Dataset, ModelVersion
    from workers.models import Analysis, Job

    user = User.objects.get(username=f"bench-engineer-{tag}")
    versions = {v.number: v for v in ModelVersion.objects.filter(model__name=model)}
    dataset = Dataset.objects.filter(purpose="evaluation").first() or Dataset.objects.create(
        name="bench", purpose="evaluation", sha256="0" * 64, records=1, size=1, record_format="text",
        object_key="bench", created_by=user)
    stats = {k: 0.0 for k in ("mean_uncertainty", "min", "p0_1", "p1", "p5", "p10", "median", "p90", "p95",
                              "p99", "p99_9", "max")}
    result = {"kl": {**stats, "mean": 0.001}, "top1_agreement": 0.99, "ppl_ratio": 1.0, "flips": None}
    job = Job.objects.create(kind="analysis", status="succeeded", created_by=user, source_version=versions[2])
    Analysis.objects.create(reference=versions[1], candidate=versions[2], dataset=dataset, job=job,
                            created_by=user, result=result)
    request = check(engineer.post(f"{BASE_URL}/api/v1/change-requests/", json={
        "model": model, "alias": "production", "version": 2, "justification": "bench"}))
    for approver in approvers:
        check(approver.post(f"{BASE_URL}/api/v1/change-requests/{request['id']}/decisions",
                            json={"decision": "approve"}))

    url = f"{BASE_URL}/api/v1/models/{model}/aliases/production/rollback"
    worker_cpu_ms = worker_cpu_per_rollback(ops, url, model)
    latencies = []
    for index in range(ROLLBACKS):
        target = 1 if index % 2 == 0 else 2
        started = time.perf_counter()
        response = ops.post(url, json={"reason": "bench", "to_version": target})
        latencies.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"rollback {index} -> {response.status_code}: {response.text}")
    latencies.sort()

    # Decisions: each staging request needs one approval, so every decision deploys (the heavier path).
    request_ids = []
    for index in range(DECISIONS):
        alias = f"d{index}-{tag}"
        request_ids.append(check(engineer.post(f"{BASE_URL}/api/v1/change-requests/", json={
            "model": model, "alias": alias, "version": 1, "justification": "bench"}))["id"])
    started = time.perf_counter()
    for request_id in request_ids:
        check(approvers[0].post(f"{BASE_URL}/api/v1/change-requests/{request_id}/decisions",
                                json={"decision": "approve"}))
    decisions_per_s = DECISIONS / (time.perf_counter() - started)

    print(json.dumps({
        "rollback_p50_ms": round(statistics.median(latencies), 2),
        "rollback_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 2),
        "rollback_max_ms": round(latencies[-1], 2),
        "rollbacks": ROLLBACKS,
        "worker_cpu_ms_per_rollback": worker_cpu_ms,
        "decisions_per_s": round(decisions_per_s, 1),
        "decisions": DECISIONS,
        "base_url": BASE_URL,
    }))


if __name__ == "__main__":
    main()
