"""Report figures: PNG bytes, identical for identical input, sensible when there is nothing to draw."""

import base64
import math
import struct

import pytest

from workers import charts

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MODULES = [
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
]


def make_layers(blocks=32):
    return [
        {
            "name": f"model.layers.{block}.{module}",
            "relative_error": 0.01 + 0.001 * block + 0.0001 * index,
            "relative_error_propagated": 0.02 + 0.002 * block,
            "weight_relative_error": 10 ** (-3 + index / 3),
        }
        for block in range(blocks)
        for index, module in enumerate(MODULES)
    ] + [{"name": "lm_head", "relative_error": 0.005, "relative_error_propagated": 0.03, "weight_relative_error": None}]


def make_kl_hist():
    edges = [10 ** (-5 + i / 10) for i in range(61)]
    return {"edges": edges, "counts": [round(1e5 * math.exp(-(((i - 20) / 6) ** 2))) for i in range(60)]}


def make_delta_p_hist():
    counts = [round(1e4 * math.exp(-(((i - 25) / 2) ** 2))) for i in range(50)]
    return {"edges": [-1 + i / 25 for i in range(51)], "counts": counts}


def make_curve():
    curve = [{"step": step, "loss": 2.5 * math.exp(-step / 50) + 0.5} for step in range(201)]
    for point in curve[::20]:
        point["eval_loss"] = 2.6 * math.exp(-point["step"] / 50) + 0.6
    return curve


LINEAGE_NODES = [
    {"id": "m:1", "label": "credit-llm v1", "kind": "version"},
    {"id": "m:2", "label": "credit-llm v2 (nf4)", "kind": "version"},
    {"id": "d:7", "label": "calibration: filings-2024", "kind": "dataset"},
    {"id": "m:3", "label": "credit-llm v3 (LoRA)", "kind": "current"},
]
LINEAGE_EDGES = [
    {"parent": "m:1", "child": "m:2", "relation": "quantized_from"},
    {"parent": "d:7", "child": "m:2", "relation": "calibrated_on"},
    {"parent": "m:2", "child": "m:3", "relation": "adapted_from"},
]

FIGURES = {
    "kl_histogram": lambda: charts.kl_histogram(make_kl_hist()),
    "delta_p_histogram": lambda: charts.delta_p_histogram(make_delta_p_hist()),
    "layer_error_bars": lambda: charts.layer_error_bars(make_layers()),
    "weight_error_heatmap": lambda: charts.weight_error_heatmap(make_layers()),
    "training_curve": lambda: charts.training_curve(make_curve()),
    "lineage_graph": lambda: charts.lineage_graph(LINEAGE_NODES, LINEAGE_EDGES),
}

EMPTY_FIGURES = {
    "kl_histogram": lambda: charts.kl_histogram({"edges": [], "counts": []}),
    "delta_p_histogram": lambda: charts.delta_p_histogram({"edges": [0, 1], "counts": [0]}),
    "layer_error_bars": lambda: charts.layer_error_bars([]),
    "weight_error_heatmap": lambda: charts.weight_error_heatmap([]),
    "training_curve": lambda: charts.training_curve([]),
    "lineage_graph": lambda: charts.lineage_graph([], []),
}


def png_size(png: bytes) -> tuple[int, int]:
    return struct.unpack(">II", png[16:24])


@pytest.mark.parametrize("name", FIGURES)
def test_each_figure_is_a_png(name):
    png = FIGURES[name]()

    assert png.startswith(PNG_MAGIC)
    assert png_size(png)[0] == round(charts.WIDTH_IN * charts.DPI)


@pytest.mark.parametrize("name", FIGURES)
def test_same_input_gives_the_same_bytes(name):
    assert FIGURES[name]() == FIGURES[name]()


def test_png_carries_no_software_or_date_metadata():
    png = charts.training_curve(make_curve())

    assert b"Software" not in png and b"tIME" not in png


@pytest.mark.parametrize("name", EMPTY_FIGURES)
def test_empty_input_gives_a_placeholder_png(name):
    assert EMPTY_FIGURES[name]().startswith(PNG_MAGIC)


def test_layer_error_bars_show_only_the_worst_modules():
    many = charts.layer_error_bars(make_layers(blocks=32))  # 225 modules
    exactly_top_n = charts.layer_error_bars(make_layers(blocks=32)[: charts.TOP_LAYERS])

    assert png_size(many)[1] == png_size(exactly_top_n)[1]


def test_layer_error_bars_accept_missing_propagated_error():
    png = charts.layer_error_bars([{"name": "model.layers.0.mlp.up_proj", "relative_error": 0.1}])

    assert png.startswith(PNG_MAGIC)


def test_heatmap_without_block_indices_shows_placeholder():
    png = charts.weight_error_heatmap([{"name": "lm_head", "weight_relative_error": 0.1}])

    assert png == charts.weight_error_heatmap([])


def test_histogram_with_mismatched_edges_is_refused():
    with pytest.raises(ValueError, match="one more edge than counts"):
        charts.kl_histogram({"edges": [0, 1], "counts": [1, 2, 3]})


def test_training_curve_without_eval_loss_draws():
    assert charts.training_curve([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]).startswith(PNG_MAGIC)


def test_lineage_with_a_cycle_or_dangling_edge_still_draws():
    nodes = [{"id": "a", "label": "a", "kind": "version"}, {"id": "b", "label": "b", "kind": "version"}]
    edges = [
        {"parent": "a", "child": "b", "relation": "derived_from"},
        {"parent": "b", "child": "a", "relation": "derived_from"},
        {"parent": "gone", "child": "a", "relation": "trained_on"},
    ]

    assert charts.lineage_graph(nodes, edges).startswith(PNG_MAGIC)


def test_data_uri_round_trips():
    png = charts.layer_error_bars([])
    uri = charts.as_data_uri(png)

    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == png



KL_CHART_EDGES = [0.0] + [10 ** (-8 + i / 4) for i in range(41)]  # as workers.pipelines.analysis.statistics


def make_typical_kl_hist():
    """Per-token KL between 1e-4 and 1e-1 nats, binned like the analysis does."""
    counts = [0] * 41
    for index, (low, high) in enumerate(zip(KL_CHART_EDGES, KL_CHART_EDGES[1:])):
        if low >= 1e-4 and high <= 1e-1 * 1.0001:
            counts[index] = 1000
    return {"edges": KL_CHART_EDGES, "counts": counts}


def test_kl_chart_x_range_covers_typical_values_not_a_fixed_0_to_100_nats():
    layout = charts.kl_histogram_layout(make_typical_kl_hist())

    low, high = layout["xlim"]
    assert low <= 1e-4 and high >= 1e-1
    assert low >= 1e-6 and high <= 10  # empty bins trimmed: the data fills the axis
    assert charts.kl_histogram(make_typical_kl_hist()).startswith(PNG_MAGIC)


def test_kl_chart_draws_the_zero_bin_below_its_upper_edge_on_the_log_axis():
    hist = make_typical_kl_hist()
    hist["counts"][0] = 5

    layout = charts.kl_histogram_layout(hist)

    assert layout["edges"][0] == pytest.approx(1e-9)
    assert layout["zero_tokens"] == 5
    assert layout["xlim"][0] <= 1e-9 < layout["xlim"][1]


def test_kl_chart_marks_mean_and_p99_from_arguments_or_the_histogram():
    from_arguments = charts.kl_histogram_layout(make_typical_kl_hist(), mean=3e-3, p99=5e-2)
    from_dict = charts.kl_histogram_layout({**make_typical_kl_hist(), "mean": 2e-3, "p99": 4e-2})

    assert (from_arguments["mean"], from_arguments["p99"]) == (3e-3, 5e-2)
    assert (from_dict["mean"], from_dict["p99"]) == (2e-3, 4e-2)


def test_kl_chart_of_all_zero_counts_renders_a_placeholder():
    hist = {"edges": KL_CHART_EDGES, "counts": [0] * 41}

    assert charts.kl_histogram_layout(hist) is None
    assert charts.kl_histogram(hist).startswith(PNG_MAGIC)
