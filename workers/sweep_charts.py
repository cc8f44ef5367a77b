"""A quantization sweep's figure, as PNG bytes: each measured candidate's size (relative to the source) against its
mean KL divergence from the source, the policy's KL limit drawn across, the recommended candidate ringed.

Built like workers/charts.py (its own Figure on an Agg canvas, fixed size and dpi, no metadata), so the bytes are
deterministic and matplotlib is loaded only when a page draws it."""

from __future__ import annotations

import io

from workers.charts import DPI, WIDTH_IN, _mpl  # matplotlib is loaded at the first chart, not at import

PASSED_COLOUR = "#1a7f37"
FAILED_COLOUR = "#a11616"


def size_vs_kl(points: list[dict], *, kl_mean_max: float | None = None) -> bytes:
    """points: [{label, size_ratio, kl_mean, passed, recommended}] of the measured candidates."""
    height = 3.4
    fig = _mpl().figure.Figure(figsize=(WIDTH_IN, height), dpi=DPI)
    _mpl().backends.backend_agg.FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.85 / WIDTH_IN, right=1 - 0.25 / WIDTH_IN, bottom=0.55 / height, top=1 - 0.4 / height)
    ax = fig.add_subplot()
    for passed, colour, name in ((True, PASSED_COLOUR, "passes every gate"), (False, FAILED_COLOUR, "fails a gate")):
        chosen = [point for point in points if point["passed"] is passed]
        if chosen:
            ax.scatter([p["size_ratio"] for p in chosen], [p["kl_mean"] for p in chosen], s=36, color=colour,
                       label=name, zorder=3)
    for point in points:
        ax.annotate(point["label"], (point["size_ratio"], point["kl_mean"]), textcoords="offset points",
                    xytext=(6, 5), fontsize=7)
        if point.get("recommended"):
            ax.scatter([point["size_ratio"]], [point["kl_mean"]], s=180, facecolors="none",
                       edgecolors=PASSED_COLOUR, linewidths=1.6, label="recommended", zorder=4)
    if kl_mean_max is not None:
        ax.axhline(kl_mean_max, color=FAILED_COLOUR, linestyle="--", linewidth=0.9,
                   label=f"KL mean limit {kl_mean_max:g}")
    if not points:
        ax.text(0.5, 0.5, "No candidate measured yet", ha="center", va="center", fontsize=10, color="#777777",
                transform=ax.transAxes)
    else:
        ax.set_xlim(0, max(1.0, *(p["size_ratio"] for p in points)) * 1.05)
        # Headroom above the highest point or limit, so the labels and the legend stay clear of the data.
        top = max([p["kl_mean"] for p in points] + ([kl_mean_max] if kl_mean_max is not None else []))
        ax.set_ylim(0, (top or 1.0) * 1.3)
    ax.set_xlabel("size relative to the source (weights)")
    ax.set_ylabel("mean KL divergence (nats/token)")
    ax.set_title("Quantization sweep: size against distance from the source")
    ax.grid(alpha=0.3)
    if points or kl_mean_max is not None:
        ax.legend(fontsize=7, loc="best")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()
