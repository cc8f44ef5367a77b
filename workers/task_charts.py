"""Figures of task evaluations, as PNG bytes: the confusion matrix of a classification evaluation, candidate
beside reference (change-impact reports), and a distillation's F1 relative to the teacher by training size.

Built like workers/charts.py (own Figure on an Agg canvas, fixed size and dpi, no metadata), so the bytes are
deterministic; kept apart from it only because it arrived with issue 16 and belongs there once that module is
next edited."""

from __future__ import annotations

import io

from workers.charts import DPI, WIDTH_IN, _mpl  # matplotlib is loaded at the first chart, not at import

# Beyond this many labels the cells are too small to read; the report's per-class table still lists every label.
MAX_LABELS = 20


def confusion_matrices(labels: list[str], candidate: list[list[int]], reference: list[list[int]] | None = None,
                       *, candidate_title: str = "candidate", reference_title: str = "reference") -> bytes:
    """Counts of true label (rows) by predicted label (columns), candidate beside the reference when given."""
    panels = [(reference_title, reference), (candidate_title, candidate)] if reference else [(candidate_title,
                                                                                              candidate)]
    shown = labels[:MAX_LABELS]
    size = len(shown)
    height = min(6.0, 2.2 + 0.3 * size)
    fig = _mpl().figure.Figure(figsize=(WIDTH_IN, height), dpi=DPI)
    _mpl().backends.backend_agg.FigureCanvasAgg(fig)
    # Fixed margins in inches (as workers/charts.py): rotated label names below, the titles above.
    fig.subplots_adjust(left=0.16, right=0.98, bottom=1.15 / height, top=1 - 0.35 / height, wspace=0.45)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    peak = max([1, *(max(map(max, matrix[:size]), default=0) for _, matrix in panels if matrix)])
    for ax, (title, matrix) in zip(axes, panels):
        cells = [row[:size] for row in matrix[:size]]
        ax.imshow(cells, cmap="Blues", vmin=0, vmax=peak)
        for row in range(size):
            for column in range(size):
                count = cells[row][column]
                ax.text(column, row, str(count), ha="center", va="center", fontsize=7,
                        color="white" if count > peak / 2 else "#1a1a1a")
        ax.set_xticks(range(size), [_short(label) for label in shown], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(size), [_short(label) for label in shown], fontsize=7)
        ax.set_xlabel("predicted label", fontsize=8)
        ax.set_ylabel("true label", fontsize=8)
        suffix = f" (first {MAX_LABELS} of {len(labels)} labels)" if len(labels) > MAX_LABELS else ""
        ax.set_title(f"{title}{suffix}", fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _short(label: str, width: int = 14) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def f1_by_size(rows: list[dict], *, f1_relative_min: float | None = None) -> bytes:
    """A distillation's F1 relative to the teacher against the training subset size, one line per student (the
    data flywheel's figure), with the minimum the best candidate must reach."""
    fig = _mpl().figure.Figure(figsize=(WIDTH_IN, 3.2), dpi=DPI)
    _mpl().backends.backend_agg.FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.8 / WIDTH_IN, right=1 - 0.25 / WIDTH_IN, bottom=0.55 / 3.2, top=1 - 0.4 / 3.2)
    ax = fig.add_subplot()
    students: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        if row.get("f1_relative_to_teacher") is None:
            continue
        name = f"{row['student']['model']} v{row['student']['version']}"
        students.setdefault(name, []).append((row["size"], row["f1_relative_to_teacher"]))
    for name, points in sorted(students.items()):
        points.sort()
        ax.plot([size for size, _ in points], [value for _, value in points], marker="o", linewidth=1.2,
                markersize=4, label=name)
    if f1_relative_min is not None:
        ax.axhline(f1_relative_min, color="#a11616", linestyle="--", linewidth=0.9,
                   label=f"minimum {f1_relative_min:g}")
    if not students:
        ax.text(0.5, 0.5, "No student evaluated yet", ha="center", va="center", fontsize=10, color="#777777",
                transform=ax.transAxes)
    ax.set_xlabel("training records")
    ax.set_ylabel("F1 / teacher F1")
    ax.set_title("Distilled students: F1 relative to the teacher by training size")
    ax.grid(alpha=0.3)
    if students or f1_relative_min is not None:
        ax.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()
