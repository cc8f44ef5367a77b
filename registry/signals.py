"""What the registry announces; the worker side listens (connected in WorkersConfig.ready)."""
from django.dispatch import Signal

# dataset_id: a dataset was registered and must be scanned for personal data. Sent inside the registration's
# transaction, so a small dataset's scan result commits with it (and the 201 already says clean or found).
dataset_registered = Signal()
