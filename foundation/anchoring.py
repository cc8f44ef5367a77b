"""Anchor the audit chain's head outside the database: an object-locked JSON object in storage per anchor.

A database administrator can delete the newest audit events and the chain that remains is still internally
consistent; the anchor, which the storage server refuses to delete or overwrite, is what reveals the cut.
Anchors are filed under the hash of the chain's first event, which names the chain: two databases (or a
restored copy started afresh) never read each other's anchors.
"""
import json

from django.conf import settings

from foundation import storage
from foundation.audit import ChainVerification, verify_chain
from foundation.models import AuditEvent

ANCHOR_PREFIX = "audit/anchors/"


def anchor_chain_head() -> dict | None:
    """Store the current head {sequence, hash} under retention; returns it (None for an empty chain)."""
    head = AuditEvent.objects.order_by("-sequence").values("sequence", "hash", "occurred_at").first()
    if head is None:
        return None
    document = {"sequence": head["sequence"], "hash": head["hash"], "occurred_at": head["occurred_at"].isoformat()}
    key = f"{_chain_prefix()}{head['sequence']:015d}.json"
    storage.put_locked_bytes(key, json.dumps(document, sort_keys=True).encode(),
                             retain_days=settings.REPORT_RETENTION_DAYS, mode=settings.REPORT_RETENTION_MODE,
                             content_type="application/json")
    return document


def _chain_prefix() -> str | None:
    genesis = AuditEvent.objects.order_by("sequence").values_list("hash", flat=True).first()
    return f"{ANCHOR_PREFIX}{genesis}/" if genesis else None


def latest_anchor() -> dict | None:
    prefix = _chain_prefix()
    if prefix is None:
        return None
    keys = storage.list_keys(prefix)
    if not keys:
        return None
    return json.loads(storage.read_bytes(max(keys)))


def verify_anchored_chain() -> tuple[ChainVerification, dict | None]:
    """Verify the whole chain against the newest anchor in storage; (verification, that anchor or None)."""
    anchor = latest_anchor()
    return verify_chain(expected_head=(anchor["sequence"], anchor["hash"]) if anchor else None), anchor
