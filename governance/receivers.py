"""Governance listens to the worker side's announcements (connected in GovernanceConfig.ready): analyses and
task evaluations that finish or fail gate the change requests waiting for them; a quantization sweep's rows are
gated as they are recorded."""
from governance import services
from registry.models import ModelVersion
from workers import signals


def on_analysis_completed(sender, *, analysis_id: int, **_):
    services.analysis_completed(analysis_id=analysis_id)


def on_analysis_failed(sender, *, analysis_id: int, error: str, **_):
    services.analysis_failed(analysis_id=analysis_id, error=error)


def on_evaluation_completed(sender, *, evaluation_id: int, **_):
    services.evaluation_completed(evaluation_id=evaluation_id)


def on_evaluation_failed(sender, *, evaluation_id: int, error: str, **_):
    services.evaluation_failed(evaluation_id=evaluation_id, error=error)


def on_version_registered(sender, *, version_id: int, **_):
    services.compare_adapter_with_production(version=ModelVersion.objects.select_related("model").get(pk=version_id))


def on_quantization_sweep_row_recorded(sender, *, sweep_id: int, index: int, **_):
    services.gate_quantization_sweep_row(sweep_id=sweep_id, index=index)


def connect() -> None:
    signals.analysis_completed.connect(on_analysis_completed, dispatch_uid="governance.analysis_completed")
    signals.analysis_failed.connect(on_analysis_failed, dispatch_uid="governance.analysis_failed")
    signals.evaluation_completed.connect(on_evaluation_completed, dispatch_uid="governance.evaluation_completed")
    signals.evaluation_failed.connect(on_evaluation_failed, dispatch_uid="governance.evaluation_failed")
    signals.version_registered.connect(on_version_registered, dispatch_uid="governance.version_registered")
    signals.quantization_sweep_row_recorded.connect(on_quantization_sweep_row_recorded,
                                                    dispatch_uid="governance.quantization_sweep_row_recorded")
