"""Anchor the audit chain's head outside the database: an object-locked JSON object in storage per anchor.

A database administrator can delete the newest audit events and the chain that remains is still internally
consistent; the anchor, which the storage server refuses to delete or overwrite, is what reveals the cut.
"""
import json

from django.conf import settings

from governance.models import AuditEvent
from registry import storage

ANCHOR_PREFIX = "audit/anchors/"


def anchor_chain_head() -> dict | None:
    """Store the current head {sequence, hash} under retention; returns it (None for an empty chain)."""
    head = AuditEvent.objects.order_by("-sequence").values("sequence", "hash", "occurred_at").first()
    if head is None:
        return None
    document = {"sequence": head["sequence"], "hash": head["hash"], "occurred_at": head["occurred_at"].isoformat()}
    key = f"{ANCHOR_PREFIX}{head['sequence']:015d}.json"
    storage.put_locked_bytes(key, json.dumps(document, sort_keys=True).encode(),
                             retain_days=settings.REPORT_RETENTION_DAYS, mode=settings.REPORT_RETENTION_MODE,
                             content_type="application/json")
    return document


def latest_anchor() -> dict | None:
    keys = storage.list_keys(ANCHOR_PREFIX)
    if not keys:
        return None
    return json.loads(storage.read_bytes(max(keys)))
