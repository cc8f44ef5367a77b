"""What the worker side announces. Workers know none of their listeners: governance connects in its AppConfig.

`analysis_completed` and `analysis_failed`, `evaluation_completed` and `evaluation_failed` are sent inside the
transaction that records the outcome, so what a listener changes (a change request's gates) commits together with
the analysis or evaluation, or not at all.
"""
from django.dispatch import Signal

# analysis_id: the analysis's statistics are stored.
analysis_completed = Signal()
# analysis_id, error: the analysis will never finish (its job failed or was cancelled).
analysis_failed = Signal()
# version_id, job_id: a job registered a derived version (quantized or LoRA), after that registration committed.
version_registered = Signal()
# evaluation_id: the evaluation's metrics (and its deltas against the reference, if any) are stored.
evaluation_completed = Signal()
# evaluation_id, error: the evaluation will never finish (its job failed or was cancelled).
evaluation_failed = Signal()
# sweep_id, index: a quantization sweep recorded one candidate's row (sent inside that transaction; governance
# gates the row with the sweep's policy and writes the verdicts back through workers.sweep_services).
quantization_sweep_row_recorded = Signal()
