"""The worker side listens to the registry's announcements (connected in WorkersConfig.ready)."""
from registry import signals
from workers import pii_services


def on_dataset_registered(sender, *, dataset_id: int, **_):
    pii_services.scan_dataset_on_registration(dataset_id=dataset_id)


def connect() -> None:
    signals.dataset_registered.connect(on_dataset_registered, dispatch_uid="workers.dataset_registered")
