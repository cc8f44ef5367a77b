"""Registry API speed: the peer workload (../shared/bench/peer_mlflow) against the stack `make up` started.

20 models; 2,000 version creates spread over them; 200 lists of 100 versions; 200 governed rollbacks (an alias
moving between two versions deployed through approved change requests), each followed by a read of the alias.
One keep-alive `requests` session per client thread; latency per request includes reading the body; an untimed
warm-up first. Run at c = 1 and c = 8. Every create and every rollback appends an audit event to the hash chain.

Setup without an API (users, tokens, and the measured analysis that lets v2 pass its gates: this benchmark times
the registry, not the analysis job) goes through the ORM. Last line: a JSON object (keys in shared/BENCHMARKS.md).
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import os
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

from registry.models import Dataset, ModelVersion, Team  # noqa: E402
from workers.models import Analysis, Job  # noqa: E402

BASE_URL = os.environ.get("BENCH_BASE_URL", "http://127.0.0.1:8000")
API = BASE_URL + "/api/v1"
MODELS = int(os.environ.get("BENCH_API_MODELS", "20"))
CREATES = int(os.environ.get("BENCH_API_CREATES", "2000"))
LISTS = int(os.environ.get("BENCH_API_LISTS", "200"))
ALIAS_OPS = int(os.environ.get("BENCH_API_ALIAS_OPS", "200"))
WARMUP = int(os.environ.get("BENCH_API_WARMUP", "50"))
CONCURRENCIES = [int(c) for c in os.environ.get("BENCH_API_CONCURRENCY", "1,8").split(",")]


def token_for(username: str, role: str, team: Team | None = None) -> str:
    user, _ = User.objects.get_or_create(username=username, defaults={"is_staff": True})
    user.groups.add(Group.objects.get(name=role))
    if team is not None:
        team.members.add(user)
    return Token.objects.get_or_create(user=user)[0].key


def session(token: str) -> requests.Session:
    s = requests.Session()
    s.mount("http://", requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0))
    s.headers.update({"Authorization": f"Token {token}", "Content-Type": "application/json"})
    return s


def check(response: requests.Response, expected=(200, 201)) -> dict:
    if response.status_code not in expected:
        raise SystemExit(f"{response.request.method} {response.url} -> {response.status_code}: {response.text[:300]}")
    return response.json()


def timed(s: requests.Session, method: str, url: str, **kwargs) -> float:
    started = time.perf_counter()
    response = s.request(method, url, timeout=60, **kwargs)
    _ = response.content
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code not in (200, 201):
        raise SystemExit(f"{method} {url} -> {response.status_code}: {response.text[:300]}")
    return elapsed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * fraction))], 2)


def run_parallel(concurrency: int, tokens: list[str], work: list) -> tuple[list[float], float]:
    """Run each (method, url, body) of `work` over `concurrency` threads, one kept-alive session each."""
    chunks = [work[i::concurrency] for i in range(concurrency)]

    def client(index: int) -> list[float]:
        s = session(tokens[index % len(tokens)])
        return [timed(s, method, url, data=body) for method, url, body in chunks[index]]

    started = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        latencies = [ms for chunk in pool.map(client, range(concurrency)) for ms in chunk]
    return latencies, time.perf_counter() - started


def deploy_two_versions(engineer: requests.Session, approvers: list[requests.Session], model: str,
                        files: list[Path], engineer_user: User, dataset: Dataset) -> None:
    """v1 then v2 of `model` deployed to production through approved change requests (v2 through its gates)."""
    for _ in range(2):
        number = check(engineer.post(f"{API}/models/{model}/versions/", data="{}"))["number"]
        for path in files:
            check(engineer.put(f"{API}/models/{model}/versions/{number}/files/{path.name}", data=path.read_bytes(),
                               headers={"Content-Type": "application/octet-stream"}))
        check(engineer.post(f"{API}/models/{model}/versions/{number}/seal"))
        if number == 2:
            versions = {v.number: v for v in ModelVersion.objects.filter(model__name=model)}
            stats = {k: 0.0 for k in ("mean_uncertainty", "min", "p0_1", "p1", "p5", "p10", "median", "p90", "p95",
                                      "p99", "p99_9", "max")}
            job = Job.objects.create(kind="analysis", status="succeeded", created_by=engineer_user,
                                     source_version=versions[2])
            Analysis.objects.create(reference=versions[1], candidate=versions[2], dataset=dataset, job=job,
                                    created_by=engineer_user, result={"kl": {**stats, "mean": 0.001},
                                                                      "top1_agreement": 0.99, "ppl_ratio": 1.0,
                                                                      "flips": None})
        request = check(engineer.post(f"{API}/change-requests/", data=json.dumps({
            "model": model, "alias": "production", "version": number, "justification": "api bench"})))
        for approver in approvers:
            body = check(approver.post(f"{API}/change-requests/{request['id']}/decisions",
                                       data=json.dumps({"decision": "approve"})))
            if body["status"] == "deployed":
                break
        if body["status"] != "deployed":
            raise SystemExit(f"{model} v{number} was not deployed: {body['status']} {body.get('status_reason')}")


def wait_for_rollback_reports(models: list[str], per_model: int, timeout_s: float = 900) -> None:
    """Untimed: wait until the worker has signed every rollback report of this phase, so the next phase's requests
    do not share the 2 cores with this phase's report rendering."""
    from reports.models import Report

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if Report.objects.filter(model__name__in=models, kind="rollback", status="final").count() >= \
                per_model * len(models):
            return
        time.sleep(1)
    print(f"warning: rollback reports still pending after {timeout_s:.0f} s", file=sys.stderr)


def measure(concurrency: int, tag: str, tokens: dict, files: list[Path], engineer_user: User,
            dataset: Dataset) -> dict:
    models = [f"api-{tag}-c{concurrency}-{i:02d}" for i in range(MODELS)]
    engineer = session(tokens["engineer"])
    for name in models:
        check(engineer.post(f"{API}/models/", data=json.dumps({"name": name})))
    description = json.dumps({"description": "s3://bench/artifacts/" + "x" * 64})
    run_parallel(concurrency, [tokens["engineer"]],
                 [("POST", f"{API}/models/{models[i % MODELS]}/versions/", description) for i in range(WARMUP)])

    creates, create_s = run_parallel(concurrency, [tokens["engineer"]], [
        ("POST", f"{API}/models/{models[i % MODELS]}/versions/", description) for i in range(CREATES)])
    lists, _ = run_parallel(concurrency, [tokens["engineer"]], [
        ("GET", f"{API}/models/{models[i % MODELS]}/versions/?limit=100", None) for i in range(LISTS)])

    # Alias moves: one model per client thread, so no two threads move the same alias at once.
    alias_models = [f"api-{tag}-c{concurrency}-alias-{i}" for i in range(concurrency)]
    approvers = [session(t) for t in tokens["approvers"]]
    for name in alias_models:
        check(engineer.post(f"{API}/models/", data=json.dumps({"name": name})))
        deploy_two_versions(engineer, approvers, name, files, engineer_user, dataset)
    per_thread = ALIAS_OPS // concurrency

    def mover(index: int) -> tuple[list[float], list[float]]:
        s = session(tokens["ops"])
        name = alias_models[index]
        rollbacks, reads = [], []
        for op in range(per_thread):
            body = json.dumps({"reason": "api bench", "to_version": 1 if op % 2 == 0 else 2})
            rollbacks.append(timed(s, "POST", f"{API}/models/{name}/aliases/production/rollback", data=body))
            reads.append(timed(s, "GET", f"{API}/models/{name}/aliases/"))
        return rollbacks, reads

    with cf.ThreadPoolExecutor(concurrency) as pool:
        moved = list(pool.map(mover, range(concurrency)))
    rollbacks = [ms for r, _ in moved for ms in r]
    reads = [ms for _, r in moved for ms in r]
    wait_for_rollback_reports(alias_models, per_thread)
    return {
        "create_ops_s": round(CREATES / create_s, 1),
        "create_p50_ms": percentile(creates, 0.5), "create_p99_ms": percentile(creates, 0.99),
        "list_p50_ms": percentile(lists, 0.5), "list_p99_ms": percentile(lists, 0.99),
        "rollback_p50_ms": percentile(rollbacks, 0.5), "rollback_p99_ms": percentile(rollbacks, 0.99),
        "read_alias_p50_ms": percentile(reads, 0.5), "read_alias_p99_ms": percentile(reads, 0.99),
    }


def main() -> None:
    from workers.pipelines.tiny_model import build_tiny_llama

    tag = uuid.uuid4().hex[:6]
    team, _ = Team.objects.get_or_create(name=f"api-bench-{tag}")
    tokens = {"engineer": token_for(f"api-engineer-{tag}", "ml_engineer", team),
              "ops": token_for(f"api-ops-{tag}", "ops"),
              "approvers": [token_for(f"api-approver{i}-{tag}", "approver") for i in range(2)]}
    engineer_user = User.objects.get(username=f"api-engineer-{tag}")
    dataset = Dataset.objects.filter(purpose="evaluation").first() or Dataset.objects.create(
        name="api-bench", purpose="evaluation", sha256="0" * 64, records=1, size=1, record_format="text",
        object_key="api-bench", created_by=engineer_user)
    files = sorted(build_tiny_llama(ROOT / ".var" / "bench" / f"api-{tag}").iterdir())
    result = {"base_url": BASE_URL, "models": MODELS, "creates": CREATES, "lists": LISTS, "alias_ops": ALIAS_OPS}
    for concurrency in CONCURRENCIES:
        for key, value in measure(concurrency, tag, tokens, files, engineer_user, dataset).items():
            result[f"{key}_c{concurrency}"] = value
        print(f"c={concurrency}: " + json.dumps({k: v for k, v in result.items() if k.endswith(f"_c{concurrency}")}),
              file=sys.stderr, flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
