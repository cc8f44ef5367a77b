"""Figures for change-impact reports, as PNG bytes.

Plain functions over the analysis JSON (see API.md, analyses): no Django, no pyplot. Each figure is built on its
own `Figure` with an Agg canvas, so nothing touches matplotlib's global backend or figure registry and the
functions are safe to call from a Celery worker or a web process. Output is deterministic for a given input and
matplotlib version (fixed size and dpi, no Software/date metadata), so a re-rendered report embeds the same bytes.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _mpl():
    """matplotlib, imported at the first chart drawn: the web process imports this module with every admin page
    (version pages draw curves and lineage) but must not pay for matplotlib until a page shows a chart."""
    import matplotlib.backends.backend_agg
    import matplotlib.colors
    import matplotlib.figure
    import matplotlib.ticker

    return matplotlib

DPI = 110
WIDTH_IN = 7.0  # fits an A4 page with margins at 100 % zoom
TOP_LAYERS = 30  # bars beyond this make labels unreadable; the full table is in the report's appendix
REFERENCE_COLOUR = "#4c72b0"
CANDIDATE_COLOUR = "#dd8452"
NODE_COLOURS = {"version": "#dce9f7", "dataset": "#e6f4e1", "current": "#fde9c9"}
NODE_DEFAULT_COLOUR = "#eeeeee"

# "model.layers.12.self_attn.q_proj", "transformer.h.3.mlp.c_fc", "encoder.block.0.layer.1.DenseReluDense.wi"
_LAYER_NAME = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.(.+)$")


def as_data_uri(png: bytes) -> str:
    """A PNG as a data: URI, for embedding in the report HTML that WeasyPrint renders."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def kl_histogram(hist: dict, *, mean: float | None = None, p99: float | None = None) -> bytes:
    """Distribution of per-token KL(reference || candidate) on a log x axis, with the mean and p99 marked."""
    fig, ax = _figure(3.0)
    layout = kl_histogram_layout(hist, mean=mean, p99=p99)
    if layout is None:
        _no_data(ax, "No tokens measured")
        return _png(fig)
    ax.stairs(layout["counts"], layout["edges"], fill=True, color=REFERENCE_COLOUR, alpha=0.85)
    ax.set_xscale("log")
    ax.set_xlim(*layout["xlim"])
    ax.xaxis.set_minor_locator(_mpl().ticker.NullLocator())  # minor log ticks cost more than the rest of the figure together
    positive = [c for c in layout["counts"] if c > 0]
    if max(positive) / min(positive) >= 100:
        ax.set_yscale("log")  # tails hold few tokens but are what regulators ask about
        ax.yaxis.set_minor_locator(_mpl().ticker.NullLocator())
    for label, value, colour, style in (("mean", layout["mean"], CANDIDATE_COLOUR, "--"),
                                        ("p99", layout["p99"], "#c44e52", ":")):
        if value is not None:
            ax.axvline(value, color=colour, linestyle=style, linewidth=1.2, label=f"{label} {value:.3g}")
    if layout["mean"] is not None or layout["p99"] is not None:
        ax.legend(fontsize=7, loc="upper right")
    ax.set_xlabel("KL divergence per token (nats, log scale)")
    ax.set_ylabel("tokens")
    title = f"Per-token KL divergence ({int(sum(layout['counts'])):,} tokens)"
    if layout["zero_tokens"]:
        title += f"; {layout['zero_tokens']:,} below {layout['zero_edge']:.0e} drawn at the left edge"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return _png(fig)


def kl_histogram_layout(hist: dict, *, mean: float | None = None, p99: float | None = None) -> dict | None:
    """What `kl_histogram` draws: non-empty bins, x range and markers; None when no token was measured.

    The analysis bins KL on log-spaced edges with a first bin [0, 1e-8) (KL_CHART_EDGES). A log axis cannot
    show 0, so that bin is drawn one decade wide below its upper edge. Empty bins at either end are trimmed so
    the axis spans the data's own decades instead of the fixed 0-100 nats of the edges. `mean` and `p99` come
    from the arguments, else from the histogram dict, and are dropped when they are not positive.
    """
    edges = [float(e) for e in (hist or {}).get("edges") or []]
    counts = [float(c) for c in (hist or {}).get("counts") or []]
    if counts and len(edges) != len(counts) + 1:
        raise ValueError(f"A histogram needs one more edge than counts; got {len(edges)} edges, {len(counts)} counts.")
    if not counts or sum(counts) <= 0:
        return None
    filled = [i for i, c in enumerate(counts) if c > 0]
    first, last = filled[0], filled[-1]
    counts = counts[first:last + 1]
    edges = edges[first:last + 2]
    zero_tokens, zero_edge = 0, None
    if edges[0] <= 0:
        zero_edge = edges[1] if edges[1] > 0 else 1e-8
        zero_tokens = int(counts[0])
        edges[0] = zero_edge / 10
    markers = {}
    for name, given in (("mean", mean), ("p99", p99)):
        value = _number(given if given is not None else (hist or {}).get(name))
        markers[name] = value if value > 0 and math.isfinite(value) else None
    low = min([edges[0]] + [v for v in markers.values() if v is not None])
    high = max([edges[-1]] + [v for v in markers.values() if v is not None])
    if high / low < 10:  # a single narrow bin: widen to one decade around it so the axis has ticks
        centre = math.sqrt(low * high)
        low, high = centre / math.sqrt(10), centre * math.sqrt(10)
    # A little air on both sides, so a marker at the outermost edge (p99 in the last bin) is not hidden by the frame.
    low, high = low / 1.5, high * 1.5
    return {"edges": edges, "counts": counts, "xlim": (low, high), "zero_tokens": zero_tokens,
            "zero_edge": zero_edge, **markers}


def delta_p_histogram(hist: dict) -> bytes:
    """Distribution of per-token change in the probability of the reference's top token."""
    return _histogram(hist, xlabel="Δp (candidate − reference)", title="Per-token probability change (Δp)")


def layer_error_bars(layers: Sequence[dict], *, top_n: int = TOP_LAYERS) -> bytes:
    """Relative output error per module (own and propagated), the `top_n` worst as horizontal bars."""
    rows = [
        (
            _short_module_name(layer["name"]),
            _number(layer.get("relative_error")),
            _number(layer.get("relative_error_propagated")),
        )
        for layer in layers
    ]
    rows = [row for row in rows if not (math.isnan(row[1]) and math.isnan(row[2]))]
    # Worst first; ties keep the analysis' order so equal inputs give equal pictures.
    rows.sort(key=lambda row: -max(_or_zero(row[1]), _or_zero(row[2])))
    shown = rows[:top_n]
    height = max(2.2, 1.2 + 0.22 * len(shown))
    # DejaVu Sans at 7 pt averages about 0.058 in per character.
    label_width = 0.2 + 0.058 * max((len(row[0]) for row in shown), default=0)
    fig, ax = _figure(height, left=min(3.2, max(0.8, label_width)), top=0.75)
    if not shown:
        _no_data(ax, "No per-layer measurements")
        return _png(fig)
    positions = list(range(len(shown)))
    bar = 0.4
    ax.barh([p - bar / 2 for p in positions], [_or_zero(r[1]) for r in shown], height=bar,
            color=REFERENCE_COLOUR, label="own error (reference inputs)")
    ax.barh([p + bar / 2 for p in positions], [_or_zero(r[2]) for r in shown], height=bar,
            color=CANDIDATE_COLOUR, label="propagated error (candidate inputs)")
    ax.set_yticks(positions, [r[0] for r in shown], fontsize=7)
    ax.set_ylim(len(shown) - 0.5, -0.5)  # worst at the top, no empty band
    ax.set_xlabel("relative error ‖Δy‖ / ‖y‖")
    count = f"top {len(shown)} of {len(rows)}" if len(rows) > len(shown) else f"all {len(rows)}"
    ax.set_title(f"Per-module relative output error ({count} modules)", pad=18)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def weight_error_heatmap(layers: Sequence[dict]) -> bytes:
    """Grid of weight relative error: transformer block index × module type."""
    cells: dict[tuple[int, str], float] = {}
    unplaced = 0
    for layer in layers:
        placed = _layer_position(layer)
        value = _number(layer.get("weight_relative_error"))
        if placed is None or math.isnan(value):
            unplaced += 1
            continue
        cells[placed] = value
    fig, ax = _figure(4.6, left=0.6, right=0.8, bottom=0.75)
    if not cells:
        _no_data(ax, "No per-layer weight errors")
        return _png(fig)
    indices = sorted({index for index, _ in cells})
    modules = _ordered_unique(module for _, module in cells)
    labels = _distinct_short_labels(modules)
    grid = [[cells.get((index, module), math.nan) for module in modules] for index in indices]
    values = [v for v in cells.values() if v > 0]
    norm = (
        _mpl().colors.LogNorm(vmin=min(values), vmax=max(values))
        if values and max(values) / min(values) >= 100
        else _mpl().colors.Normalize(vmin=min(cells.values()), vmax=max(cells.values()))
    )
    cmap = _mpl().colormaps["viridis"].with_extremes(bad="#dddddd")  # grey: module not measured in that block
    image = ax.imshow(grid, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    ax.set_xticks(range(len(modules)), labels, rotation=45 if len(modules) > 5 else 0, ha="right", fontsize=7)
    step = max(1, math.ceil(len(indices) / 16))
    ax.set_yticks(range(0, len(indices), step), [str(indices[i]) for i in range(0, len(indices), step)], fontsize=7)
    ax.set_ylabel("block")
    title = "Weight relative error ‖ΔW‖ / ‖W‖"
    if unplaced:
        title += f" (not shown: {unplaced} outside the blocks or unmeasured)"
    ax.set_title(title, fontsize=10)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    colorbar.ax.tick_params(labelsize=7)
    colorbar.ax.minorticks_off()
    return _png(fig)


def training_curve(curve: Sequence[dict]) -> bytes:
    """Training loss per step, with evaluation loss where it was measured."""
    fig, ax = _figure(3.0)
    train = [(point["step"], _number(point.get("loss"))) for point in curve]
    train = [(step, loss) for step, loss in train if not math.isnan(loss)]
    evaluation = [(point["step"], _number(point.get("eval_loss"))) for point in curve]
    evaluation = [(step, loss) for step, loss in evaluation if not math.isnan(loss)]
    if not train and not evaluation:
        _no_data(ax, "No training steps recorded")
        return _png(fig)
    if train:
        ax.plot([s for s, _ in train], [v for _, v in train], color=REFERENCE_COLOUR, linewidth=1.2,
                label="training loss")
    if evaluation:
        ax.plot([s for s, _ in evaluation], [v for _, v in evaluation], color=CANDIDATE_COLOUR, marker="o",
                markersize=3, linewidth=1.0, label="evaluation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("LoRA training curve")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


def lineage_graph(nodes: Sequence[dict], edges: Sequence[dict]) -> bytes:
    """Lineage as a left-to-right layered drawing: parents in earlier columns, edges labelled by relation."""
    by_id = {node["id"]: node for node in nodes}
    edges = [edge for edge in edges if edge["parent"] in by_id and edge["child"] in by_id]
    columns = _layer_columns([node["id"] for node in nodes], edges)
    depth = max(columns.values(), default=0) + 1
    layered: list[list] = [[] for _ in range(depth)]
    for node in nodes:
        layered[columns[node["id"]]].append(node["id"])
    row_of: dict = {}
    parents: dict = {}
    for edge in edges:
        parents.setdefault(edge["child"], []).append(edge["parent"])
    for column, ids in enumerate(layered):
        if column:
            # One barycentre pass: a child sits near the average row of its parents, which removes most
            # crossings in lineage graphs (mostly chains with datasets hanging off them).
            ids.sort(key=lambda i: sum(row_of[p] for p in parents.get(i, [])) / max(1, len(parents.get(i, []))))
        offset = (len(ids) - 1) / 2
        for row, node_id in enumerate(ids):
            row_of[node_id] = row - offset
    widest = max((len(ids) for ids in layered), default=1)
    fig, ax = _figure(max(1.6, 0.9 * widest + 0.6), left=0.1, right=0.1, bottom=0.1)
    if not nodes:
        _no_data(ax, "No lineage recorded")
        return _png(fig)
    ax.set_axis_off()
    span_x = max(1, depth - 1)
    ax.set_xlim(-0.6, span_x + 0.6)
    ax.set_ylim(-(widest - 1) / 2 - 0.6, (widest - 1) / 2 + 0.6)
    ax.invert_yaxis()
    for edge in edges:
        start = (columns[edge["parent"]], row_of[edge["parent"]])
        end = (columns[edge["child"]], row_of[edge["child"]])
        ax.annotate(
            "", xy=end, xytext=start,
            arrowprops={"arrowstyle": "-|>", "color": "#555555", "lw": 0.9, "shrinkA": 28, "shrinkB": 28},
        )
        if edge.get("relation"):
            ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 - 0.12, edge["relation"].replace("_", " "),
                    fontsize=6, color="#555555", ha="center", va="bottom")
    for node in nodes:
        ax.text(
            columns[node["id"]], row_of[node["id"]], _wrap(str(node.get("label", node["id"])), 22),
            ha="center", va="center", fontsize=7,
            bbox={"boxstyle": "round,pad=0.4", "facecolor": NODE_COLOURS.get(node.get("kind"), NODE_DEFAULT_COLOUR),
                  "edgecolor": "#777777", "linewidth": 0.8},
        )
    ax.set_title("Lineage", fontsize=10)
    return _png(fig)


# --- building blocks -------------------------------------------------------------------------------------------


def _histogram(hist: dict, *, xlabel: str, title: str) -> bytes:
    edges = [float(e) for e in (hist or {}).get("edges") or []]
    counts = [float(c) for c in (hist or {}).get("counts") or []]
    fig, ax = _figure(3.0)
    if counts and len(edges) != len(counts) + 1:
        raise ValueError(f"A histogram needs one more edge than counts; got {len(edges)} edges, {len(counts)} counts.")
    if not counts or sum(counts) <= 0:
        _no_data(ax, "No tokens measured")
        return _png(fig)
    ax.stairs(counts, edges, fill=True, color=REFERENCE_COLOUR, alpha=0.85)
    positive_edges = edges[0] > 0
    if positive_edges and edges[-1] / edges[0] >= 100:
        ax.set_xscale("log")  # KL bins are log-spaced by the analysis when they span decades
        # Minor log ticks cost more than the rest of the figure together and add nothing at this size.
        ax.xaxis.set_minor_locator(_mpl().ticker.NullLocator())
    positive = [c for c in counts if c > 0]
    if max(positive) / min(positive) >= 100:
        ax.set_yscale("log")  # tails hold few tokens but are what regulators ask about
        ax.yaxis.set_minor_locator(_mpl().ticker.NullLocator())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("tokens")
    ax.set_title(f"{title} ({int(sum(counts)):,} tokens)")
    ax.grid(alpha=0.3)
    return _png(fig)


def _figure(height_in: float, *, left: float = 0.8, right: float = 0.25, bottom: float = 0.55, top: float = 0.4):
    """A figure with margins given in inches. Fixed margins instead of a layout engine: constrained layout
    draws every figure twice and doubled the time of each chart."""
    fig = _mpl().figure.Figure(figsize=(WIDTH_IN, height_in), dpi=DPI)
    _mpl().backends.backend_agg.FigureCanvasAgg(fig)
    fig.subplots_adjust(
        left=left / WIDTH_IN, right=1 - right / WIDTH_IN, bottom=bottom / height_in, top=1 - top / height_in
    )
    return fig, fig.add_subplot()


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    # Software would embed the matplotlib version; PNG carries no date unless asked to.
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _no_data(ax, message: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=10, color="#777777", transform=ax.transAxes)


def _number(value) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _or_zero(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def _short_module_name(name: str) -> str:
    for prefix in ("model.", "transformer.", "base_model.model."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def _layer_position(layer: dict) -> tuple[int, str] | None:
    if layer.get("layer_index") is not None and layer.get("module"):
        return int(layer["layer_index"]), str(layer["module"])
    match = _LAYER_NAME.search(layer.get("name", ""))
    if not match:
        return None
    return int(match.group(1)), match.group(2)


def _ordered_unique(values) -> list:
    return list(dict.fromkeys(values))


def _distinct_short_labels(modules: list[str]) -> list[str]:
    """`self_attn.q_proj` -> `q_proj`, unless two modules would then share a label."""
    short = [module.rsplit(".", 1)[-1] for module in modules]
    return short if len(set(short)) == len(short) else modules


def _layer_columns(node_ids: list, edges: Sequence[dict]) -> dict:
    """Column of each node: the length of the longest parent chain above it (Kahn's order; a cycle, which
    lineage should never have, is placed after its known parents rather than looped on)."""
    children: dict = {}
    parents: dict = {}
    for edge in edges:
        children.setdefault(edge["parent"], []).append(edge["child"])
        parents.setdefault(edge["child"], []).append(edge["parent"])
    waiting = {node_id: len(parents.get(node_id, [])) for node_id in node_ids}
    columns = {node_id: 0 for node_id in node_ids}
    ready = [node_id for node_id in node_ids if waiting[node_id] == 0]
    done = set()
    while ready:
        node_id = ready.pop(0)
        done.add(node_id)
        for child in children.get(node_id, []):
            columns[child] = max(columns[child], columns[node_id] + 1)
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    for node_id in node_ids:
        if node_id not in done:
            columns[node_id] = 1 + max((columns[p] for p in parents.get(node_id, []) if p in done), default=-1)
    return columns


def _wrap(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines)
