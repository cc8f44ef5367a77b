from django.apps import AppConfig


class OperationsConfig(AppConfig):
    """Operational management commands: the demo, PKI set-up, audit anchoring and verification, report catch-up."""

    name = "operations"
    verbose_name = "Operations"
