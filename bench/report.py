"""Benchmark: render and sign a change-impact report for a 32-layer analysis (32 blocks x 7 modules) with every
chart, as the report task does it: charts, HTML -> PDF, organisation certification, two approver signatures and
the final issue stamp. No database or storage: the facts are synthetic and the PKI lives in a scratch directory.

Prints one JSON object as its last line: {"render_sign_s", "layers", "charts", ...}; target render_sign_s < 3.
"""
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.test import override_settings  # noqa: E402

from registry.models import ModelVersion  # noqa: E402
from reports import facts, render, services, signing  # noqa: E402
from tests.reports.factories import QUANTIZATION_METADATA, synthetic_analysis_result  # noqa: E402
from workers.models import Analysis  # noqa: E402

BLOCKS = 32
PASSPHRASE = b"bench-passphrase"
REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))


def synthetic_facts(pki_dir: Path) -> dict:
    now = dt.datetime.now(dt.timezone.utc)
    person = {"id": 1, "name": "Alice Engineer", "username": "alice", "email": "alice@bank.example",
              "roles": ["ml_engineer"]}
    files = [{"path": name, "size": size, "sha256": "ab" * 32, "storage_version_id": "0" * 32}
             for name, size in (("config.json", 712), ("model.safetensors", 3_865_470_976), ("tokenizer.json", 9_085_657))]
    version = {"kind": "upload", "manifest_sha256": "cd" * 32, "description": "base", "status": "ready",
               "created_by": person, "created_at": now, "sealed_at": now, "files": files, "parents": []}
    old = {**version, "number": 1}
    new = {**version, "number": 2, "kind": "quantized", "description": "nf4 of v1",
           "parents": [{"relation": "quantized from", "parent": "v1"}]}
    reference, candidate = ModelVersion(number=1), ModelVersion(number=2)
    analysis = Analysis(pk=1, reference=reference, candidate=candidate, params={"max_tokens": 65536, "top_k": 5},
                        result=synthetic_analysis_result(blocks=BLOCKS), created_at=now)
    lineage = {"nodes": [{"id": "v1", "type": "version", "label": "credit-llm v1 (upload)"},
                         {"id": "v2", "type": "version", "label": "credit-llm v2 (quantized)", "current": True},
                         {"id": "d1", "type": "dataset", "label": "dataset calibration (calibration)"}],
               "edges": [{"parent": "v1", "child": "v2", "relation": "quantized_from",
                          "parent_label": "credit-llm v1 (upload)", "child_label": "credit-llm v2 (quantized)"},
                         {"parent": "d1", "child": "v2", "relation": "calibrated_on",
                          "parent_label": "dataset calibration", "child_label": "credit-llm v2 (quantized)"}]}
    root = signing.certificate_summary((pki_dir / signing.ROOT_CERTIFICATE).read_bytes())
    return {
        "kind": "change_impact", "organisation": "Bench Bank", "issued_at": now,
        "audit_head": {"sequence": 12345, "hash": "ef" * 32, "occurred_at": now}, "verification": root,
        "report": {"id": 1},
        "model": {"name": "credit-llm", "description": "Drafts credit memos.", "created_at": now, "created_by": person},
        "change_request": {"id": 7, "alias": "production", "status": "pending", "round": 1,
                           "justification": "Quarter the serving memory.", "requested_by": person, "created_at": now,
                           "expires_at": now, "required_approvals": 2, "override": False, "status_reason": ""},
        "from_version": old, "to_version": new,
        "change": {"kind": "quantized", "title": "Quantization", "rows": sorted(facts.flatten(QUANTIZATION_METADATA)),
                   "curve": None},
        "datasets": [{"id": 1, "name": "credit-eval", "purpose": "evaluation", "use": "evaluated on (gates)",
                      "sha256": "12" * 32, "records": 4000, "size": 1, "storage_version_id": ""}],
        "analysis": facts.analysis_facts(analysis),
        "gates": [{"name": "kl_mean", "threshold": 0.035, "value": 0.0123, "passed": True},
                  {"name": "same_top1", "threshold": 0.91, "value": 0.957, "passed": True},
                  {"name": "ppl_ratio", "threshold": 1.03, "value": 1.0123, "passed": True}],
        "policy": {}, "materiality": {"material": False, "reasons": [], "rule": facts.MATERIALITY_RULE},
        "lineage": lineage, "signature_fields": services.approval_fields(2),
        "rollback_target": {"number": 1, "kind": "upload", "manifest_sha256": "cd" * 32, "description": "base"},
    }


def render_and_sign(stated: dict, pki_dir: Path, people: dict) -> tuple[bytes, render.RenderedReport]:
    organisation = (pki_dir / signing.ORGANISATION_PKCS12).read_bytes()
    rendered = render.render_change_impact(stated)
    fields = [slot["field"] for slot in stated["signature_fields"]]
    pdf = signing.certify_pdf(rendered.pdf, pkcs12=organisation, passphrase=PASSPHRASE, signature_fields=fields,
                              field_boxes=rendered.field_boxes, reason="Change-impact report 1")
    for field, (name, pkcs12) in zip(("approver-1", "approver-2"), people.items(), strict=True):
        pdf = signing.sign_pdf_field(pdf, field_name=field, pkcs12=pkcs12, passphrase=PASSPHRASE,
                                     reason="approve: ok", signer_name=name,
                                     appearance=f"APPROVED by {name}\nDecision: approve\nComment: ok")
    pdf = signing.sign_pdf_field(pdf, field_name="issue", pkcs12=organisation, passphrase=PASSPHRASE,
                                 reason="final issue", signer_name="Bench Bank", appearance="FINAL: issued")
    return pdf, rendered


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        pki_dir = Path(scratch)
        signing.create_organisation_pki(pki_dir, organisation="Bench Bank", passphrase=PASSPHRASE)
        people = {name: signing.issue_person_certificate(pki_dir, common_name=name, email="", passphrase=PASSPHRASE)
                  for name in ("Bob Approver", "Carol Checker")}
        with override_settings(REPORT_ORGANISATION="Bench Bank"):
            render_and_sign(synthetic_facts(pki_dir), pki_dir, people)  # warm-up: fonts, templates, imports
            timings, charts_s = [], []
            for _ in range(REPEATS):
                stated = synthetic_facts(pki_dir)
                started = time.perf_counter()
                render.change_impact_charts(stated)
                charts_s.append(time.perf_counter() - started)
                started = time.perf_counter()
                pdf, rendered = render_and_sign(stated, pki_dir, people)
                timings.append(time.perf_counter() - started)
        verdict = signing.verify_pdf(pdf, trusted_root_pem=(pki_dir / signing.ROOT_CERTIFICATE).read_bytes())
    print(json.dumps({
        "render_sign_s": round(statistics.median(timings), 3),
        "render_sign_max_s": round(max(timings), 3),
        "charts_only_s": round(statistics.median(charts_s), 3),
        "layers": BLOCKS,
        "modules": len(stated["analysis"]["layers"]),
        "charts": len(rendered.charts),
        "pages": rendered.pages,
        "signatures": len(verdict["signatures"]),
        "verified": bool(verdict["intact"] and verdict["trusted"]),
        "pdf_bytes": len(pdf),
        "repeats": REPEATS,
        "target_s": 3.0,
    }))


if __name__ == "__main__":
    main()
