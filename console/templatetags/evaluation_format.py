"""`{{ evaluation.result|metric_summary }}`: an evaluation's metrics in one line, for tables that list several."""
from django import template

from console.evaluation_pages import METRIC_LABELS
from console.measurements import with_uncertainty

register = template.Library()


@register.filter
def metric_summary(result) -> str:
    """'accuracy 0.20 ± 0.13 · macro-F1 0.083 ± 0.050'; '—' before the evaluation has finished."""
    metrics = (result or {}).get("metrics") or {}
    return " · ".join(f"{METRIC_LABELS.get(name, name)} {with_uncertainty(m.get('value'), m.get('stderr'))}"
                      for name, m in metrics.items()) or "—"
