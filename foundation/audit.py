"""Append to and verify the hash-chained audit trail.

Each event's hash covers a canonical JSON serialization of the event (time as integer UTC epoch microseconds,
never a time-zone-dependent string) and the previous event's hash, so editing, inserting or deleting any event
breaks the chain from that point on. Appends take a transaction-scoped advisory lock so that concurrent writers
never fork the chain (inside the database function foundation_append_audit_event, which hashes the same bytes).
"""
import datetime
import hashlib
import json
from dataclasses import dataclass

from django.db import connection, transaction
from django.db.models.expressions import RawSQL
from django.db.models.signals import post_save
from django.utils import timezone

from foundation.models import AuditEvent

GENESIS_HASH = "0" * 64
# Arbitrary constant naming the lock that serializes appends (pg_advisory_xact_lock takes a bigint); the append
# function of migration foundation/0002 takes the same one.
_APPEND_LOCK_ID = 0x61756469745F6C6B


def _epoch_microseconds(moment) -> int:
    delta = moment - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _content_document(*, occurred_at_us: int, actor_name, action, model_name, object_type, object_id, before,
                      after) -> dict:
    return {"occurred_at_us": occurred_at_us, "actor": actor_name, "action": action, "model": model_name,
            "object_type": object_type, "object_id": str(object_id), "before": before, "after": after}


def canonical_prefix(**content) -> str:
    """The canonical JSON of an event up to its link to the chain. The two keys that link it, prev_hash and
    sequence, sort after every other key, so the whole document is this prefix followed by
    `"prev_hash":"<hash>","sequence":<n>}`: the database's append function completes it under the chain's lock."""
    text = json.dumps(_content_document(**content), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text[:-1] + ","


def canonical_event_bytes(*, sequence, prev_hash, **content) -> bytes:
    return f'{canonical_prefix(**content)}"prev_hash":"{prev_hash}","sequence":{int(sequence)}}}'.encode()


def _event_hash(event: AuditEvent, occurred_at_us: int) -> str:
    return hashlib.sha256(
        canonical_event_bytes(
            sequence=event.sequence, occurred_at_us=occurred_at_us, actor_name=event.actor_name,
            action=event.action, model_name=event.model_name, object_type=event.object_type,
            object_id=event.object_id, before=event.before, after=event.after, prev_hash=event.prev_hash,
        )
    ).hexdigest()


def _json_roundtrip(value):
    # What we hash must be what the database gives back: normalise through JSON once before storing.
    return None if value is None else json.loads(json.dumps(value, sort_keys=True, default=str))


def append_event(*, actor, action: str, object_type: str, object_id, model_name: str = "",
                 before=None, after=None) -> AuditEvent:
    """Append one event to the chain; must run inside the transaction that makes the change it records.

    The database function (migration foundation/0002) takes the chain's lock, links and hashes the event and
    inserts it in one round trip; the lock is held until this transaction commits, so call this last."""
    if not connection.in_atomic_block:
        raise RuntimeError("append_event must run inside the transaction of the change it records")
    event = AuditEvent(occurred_at=timezone.now(), actor=actor if getattr(actor, "pk", None) else None,
                       actor_name=getattr(actor, "username", "") or "system", action=action, model_name=model_name,
                       object_type=object_type, object_id=str(object_id), before=_json_roundtrip(before),
                       after=_json_roundtrip(after))
    prefix = canonical_prefix(occurred_at_us=_epoch_microseconds(event.occurred_at), actor_name=event.actor_name,
                              action=action, model_name=model_name, object_type=object_type,
                              object_id=event.object_id, before=event.before, after=event.after)
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM foundation_append_audit_event(%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, "
                       "%s::jsonb)",
                       [prefix, event.occurred_at, event.actor_id, event.actor_name, action, model_name, object_type,
                        event.object_id, _json_text(event.before), _json_text(event.after)])
        event.pk, event.sequence, event.prev_hash, event.hash = cursor.fetchone()
    event._state.adding = False
    # The row was inserted by SQL, not by Model.save(): tell whoever listens for new audit rows, as save() would.
    post_save.send(sender=AuditEvent, instance=event, created=True, update_fields=None, raw=False,
                   using=connection.alias)
    return event


def _json_text(value) -> str | None:
    return None if value is None else json.dumps(value)


def audit_events(*, model_name: str | None = None, action: str | None = None):
    """The trail, newest first, optionally for one model or one action."""
    events = AuditEvent.objects.all()
    if model_name:
        events = events.filter(model_name=model_name)
    if action:
        events = events.filter(action=action)
    return events


@dataclass(frozen=True)
class ChainVerification:
    ok: bool
    events: int
    first_bad: int | None
    reason: str
    head_hash: str


def verify_chain(*, expected_head: tuple[int, str] | None = None) -> ChainVerification:
    """Walk the whole chain in order and name the first event whose hash or link does not hold.

    `expected_head` (sequence, hash) comes from an anchor kept outside the database: when given, a chain
    that no longer contains that event unchanged (its tail was deleted or rewritten) fails verification.
    """
    previous_hash = GENESIS_HASH
    expected_sequence = 1
    count = 0
    anchor_seen = expected_head is None
    with transaction.atomic():
        # The instant is read as epoch microseconds computed by PostgreSQL itself: a driver converting
        # timestamptz text can mislabel local times when the session time zone is not UTC.
        events = AuditEvent.objects.order_by("sequence").annotate(
            occurred_at_us=RawSQL("(EXTRACT(EPOCH FROM occurred_at) * 1000000)::bigint", []))
        for event in events.iterator(chunk_size=2000):
            if event.sequence != expected_sequence:
                return ChainVerification(False, count, expected_sequence, "event missing from the sequence", previous_hash)
            if event.prev_hash != previous_hash:
                return ChainVerification(False, count, event.sequence, "link to the previous event is broken", previous_hash)
            if _event_hash(event, event.occurred_at_us) != event.hash:
                return ChainVerification(False, count, event.sequence, "event content does not match its hash", previous_hash)
            if expected_head and event.sequence == expected_head[0]:
                if event.hash != expected_head[1]:
                    return ChainVerification(False, count, event.sequence, "event differs from the anchored head", previous_hash)
                anchor_seen = True
            previous_hash = event.hash
            expected_sequence += 1
            count += 1
    if not anchor_seen:
        return ChainVerification(
            False, count, expected_head[0], "the anchored head event is missing: the tail of the chain was deleted",
            previous_hash,
        )
    return ChainVerification(True, count, None, "", previous_hash)
