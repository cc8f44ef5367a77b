"""Facts -> HTML (Django templates, autoescaped) -> PDF (WeasyPrint), with the charts drawn by matplotlib.

No database access here: `reports.facts` decided what the report says. The renderer fetches nothing: charts are
embedded as data: URIs and the URL fetcher refuses every other URL (file://, http://169.254.169.254/...,
anything a stray tag might name), so a report can never read the server's files or its cloud metadata.

Signature fields are placed where the template left room for them: each `<div class="signature-box"
id="signature-field-NAME">` is looked up in WeasyPrint's layout and returned as (page, box in PDF points).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.template.loader import render_to_string

from reports.templatetags.report_format import num
from workers import charts, task_charts

# WeasyPrint narrates every rendering step at INFO level; keep its warnings (e.g. a refused URL) only.
logging.getLogger("weasyprint.progress").setLevel(logging.WARNING)
import weasyprint  # noqa: E402  (after its logger is quietened: it logs while loading its own stylesheets)
from weasyprint.urls import URLFetcher  # noqa: E402

logger = logging.getLogger(__name__)

SIGNATURE_ANCHOR_PREFIX = "signature-field-"
# WeasyPrint lays out in CSS pixels (96 per inch); PDF user space is in points (72 per inch).
POINTS_PER_CSS_PIXEL = 0.75


class ReportRenderingError(Exception):
    """The template did not lay out as the signing step needs (a signature box is missing)."""


class ConfinedURLFetcher(URLFetcher):
    """Serves data: URIs and refuses everything else, remembering what it was asked for and what it refused."""

    def __init__(self):
        super().__init__(allowed_protocols=("data",), allow_redirects=False, timeout=1)
        self.asked: list[str] = []
        self.refused: list[str] = []

    def fetch(self, url, headers=None):
        self.asked.append(url)
        if not url.lower().startswith("data:"):
            self.refused.append(url)
            logger.warning("report renderer refused to fetch %s", url[:200])
            raise ValueError(f"Reports fetch nothing from outside: refused {url[:200]}")
        return super().fetch(url, headers)


@dataclass(frozen=True)
class RenderedReport:
    pdf: bytes
    # field name -> (page index, (x1, y1, x2, y2) in PDF points from the page's bottom left)
    field_boxes: dict[str, tuple[int, tuple[float, float, float, float]]]
    charts: tuple[str, ...]
    pages: int
    fetcher: ConfinedURLFetcher = field(repr=False, compare=False)


def render_change_impact(facts: dict) -> RenderedReport:
    """The change-impact report for `facts` (reports.facts.change_impact_facts)."""
    figures = change_impact_charts(facts)
    expected = [slot["field"] for slot in facts["signature_fields"]]
    appendix = layer_appendix(facts["analysis"]["layers"]) if facts.get("analysis") else ""
    return render_pdf("reports/change_impact.html", {"facts": facts, "charts": figures, "layer_appendix": appendix},
                      expected_fields=expected, chart_names=tuple(figures))


def layer_appendix(layers: list[dict]) -> str:
    """Every measured module as fixed-width text lines. A 224-row HTML table took WeasyPrint a second and a half
    to lay out (most of a report's rendering time); the same columns as preformatted text take a tenth of that."""
    columns = (("relative_error", "rel. error"), ("relative_error_propagated", "propagated"), ("cosine", "cosine"),
               ("sqnr_db", "SQNR dB"), ("max_error_channel", "max-err ch."), ("weight_relative_error", "weight err."))
    width = max([len("module"), *(len(layer["name"]) for layer in layers)])
    lines = ["module".ljust(width) + "".join(label.rjust(12) for _, label in columns)]
    for layer in layers:
        cells = [num(layer.get(key), 6 if key == "cosine" else 4) for key, _ in columns]
        lines.append(layer["name"].ljust(width) + "".join(cell.rjust(12) for cell in cells))
    return "\n".join(lines)


def render_rollback(facts: dict) -> RenderedReport:
    """The rollback report for `facts` (reports.facts.rollback_facts)."""
    return render_pdf("reports/rollback.html", {"facts": facts},
                      expected_fields=[slot["field"] for slot in facts["signature_fields"]])


def change_impact_charts(facts: dict) -> dict[str, str]:
    """Every chart of a change-impact report as a data: URI, in the order the report shows them."""
    figures: dict[str, bytes] = {}
    analysis = facts.get("analysis")
    if analysis:
        result = analysis["result"]
        histograms = result.get("histograms") or {}
        kl = result.get("kl") or {}
        figures["kl_distribution"] = charts.kl_histogram(histograms.get("kl") or {}, mean=kl.get("mean"),
                                                         p99=kl.get("p99"))
        figures["delta_p_distribution"] = charts.delta_p_histogram(histograms.get("delta_p") or {})
        if analysis["layers"]:
            figures["layer_error"] = charts.layer_error_bars(analysis["layers"])
            figures["weight_error_heatmap"] = charts.weight_error_heatmap(analysis["layers"])
    evaluation = facts.get("evaluation")
    if evaluation and evaluation.get("confusion"):
        confusion = evaluation["confusion"]
        reference = evaluation.get("reference_confusion")
        figures["confusion_matrix"] = task_charts.confusion_matrices(
            confusion["labels"], confusion["matrix"], reference["matrix"] if reference else None,
            candidate_title=f"candidate v{evaluation['candidate']}",
            reference_title=f"reference v{evaluation['reference']}")
    if facts["change"].get("curve"):
        figures["training_curve"] = charts.training_curve(facts["change"]["curve"])
    figures["lineage"] = _lineage_chart(facts["lineage"])
    return {name: charts.as_data_uri(png) for name, png in figures.items()}


def render_pdf(template: str, context: dict, *, expected_fields: list[str], chart_names: tuple[str, ...] = ()
               ) -> RenderedReport:
    """Render a report template to PDF and locate its signature boxes."""
    return html_to_pdf(render_to_string(template, context), expected_fields=expected_fields, chart_names=chart_names)


def html_to_pdf(html: str, *, expected_fields: list[str] = (), chart_names: tuple[str, ...] = ()) -> RenderedReport:
    """HTML -> PDF with the confined fetcher; `expected_fields` must each have a signature box."""
    fetcher = ConfinedURLFetcher()
    # base_url=None: relative URLs resolve to nothing rather than to the working directory.
    document = weasyprint.HTML(string=html, base_url=None, url_fetcher=fetcher).render()
    boxes = {}
    for index, page in enumerate(document.pages):
        page_height_pt = page.height * POINTS_PER_CSS_PIXEL
        for anchor, position in page.anchors.items():
            if not anchor.startswith(SIGNATURE_ANCHOR_PREFIX) or len(position) != 4:
                continue
            x1, y1, x2, y2 = (value * POINTS_PER_CSS_PIXEL for value in position)
            boxes[anchor.removeprefix(SIGNATURE_ANCHOR_PREFIX)] = (index, (x1, page_height_pt - y2,
                                                                          x2, page_height_pt - y1))
    missing = [name for name in expected_fields if name not in boxes]
    if missing:
        raise ReportRenderingError(f"The report has no signature box for {', '.join(missing)}.")
    return RenderedReport(pdf=document.write_pdf(), field_boxes={name: boxes[name] for name in expected_fields},
                          charts=chart_names, pages=len(document.pages), fetcher=fetcher)


def _lineage_chart(lineage: dict) -> bytes:
    nodes = [{"id": node["id"], "label": node["label"],
              "kind": "dataset" if node["type"] == "dataset" else ("current" if node.get("current") else "version")}
             for node in lineage["nodes"]]
    return charts.lineage_graph(nodes, lineage["edges"])
