"""Announcing what happened to whoever listens, so a lower floor never imports the floor above it.

Each app declares its announcements as Django signals (`workers/signals.py`, `governance/signals.py`) and the
apps above connect to them in their AppConfig.ready(). An announcement made on commit is for side effects that
must not happen for a change that rolled back (queueing a report, calling a webhook); a receiver's failure is
logged and never undoes the committed change it was told about.
"""
import logging

from django.db import transaction
from django.dispatch import Signal

logger = logging.getLogger(__name__)


def announce_on_commit(signal: Signal, **facts) -> None:
    """Send `signal` with `facts` once the current transaction commits (at once outside a transaction)."""
    transaction.on_commit(lambda: _send(signal, facts))


def _send(signal: Signal, facts: dict) -> None:
    for receiver, outcome in signal.send_robust(sender=None, **facts):
        if isinstance(outcome, Exception):
            logger.error("a receiver of %s (%s) failed for %s", signal, getattr(receiver, "__qualname__", receiver),
                         facts, exc_info=outcome)
