"""The change-impact report's "Task performance" section: metrics of reference and candidate with their standard
errors, the change in points, the per-class table, the confusion matrix, and the task gates with uncertainty."""
import pytest

from governance import services as governance
from registry import services as registry_services
from reports import facts, render
from tests.conftest import make_user
from tests.governance.conftest import make_analysis, register_version
from tests.governance.test_task_gates import LABELLED, _register, classification_result, make_evaluation, with_reference
from tests.reports.test_change_impact_report import pdf_text

pytestmark = pytest.mark.django_db


def _per_class(f1_interest, f1_warm):
    return {"interest": {"precision": {"value": 1.0, "stderr": 0.0}, "recall": {"value": 0.5, "stderr": 0.1},
                         "f1": {"value": f1_interest, "stderr": 0.1}, "support": 2},
            "warm": {"precision": {"value": None, "stderr": None}, "recall": {"value": 0.0, "stderr": 0.0},
                     "f1": {"value": f1_warm, "stderr": 0.0}, "support": 1}}


@pytest.fixture
def gated_request(tiny_model_dir, tmp_path):
    from foundation.roles import APPROVER, ML_ENGINEER

    engineer = make_user("tess", ML_ENGINEER)
    approver = make_user("uma", APPROVER)
    model = registry_services.create_model(name="complaints-llm", description="Complaint routing", actor=engineer)
    v1, v2 = (register_version(model, tiny_model_dir, engineer) for _ in range(2))
    first = governance.open_change_request(model=model, alias="staging", version_number=1, justification="first",
                                           actor=engineer)
    governance.decide(change_request=first, actor=approver, decision="approve", comment="")
    texts = _register(engineer, "texts", [{"text": "The bank raised its rate."}])
    labelled = _register(engineer, "complaints", LABELLED)
    make_analysis(reference=v1, candidate=v2, dataset=texts, actor=engineer)
    candidate = {**classification_result(0.75, 0.6), "per_class": _per_class(0.6667, 0.0),
                 "confusion": {"labels": ["interest", "warm"], "matrix": [[1, 1], [1, 0]]}}
    reference = {**classification_result(0.80, 0.7), "per_class": _per_class(0.8, 0.5),
                 "confusion": {"labels": ["interest", "warm"], "matrix": [[2, 0], [0, 1]]}}
    make_evaluation(reference=v1, candidate=v2, dataset=labelled, actor=engineer,
                    result=with_reference(candidate, reference))
    return governance.open_change_request(model=model, alias="staging", version_number=2, justification="smaller",
                                          dataset_id=texts.pk, eval_dataset_id=labelled.pk, actor=engineer)


def test_facts_state_each_metric_its_change_and_the_per_class_scores(gated_request):
    stated = facts.change_impact_facts(gated_request, signature_fields=[])
    evaluation = stated["evaluation"]
    accuracy = next(row for row in evaluation["metric_rows"] if row["name"] == "accuracy")
    assert (accuracy["reference"], accuracy["candidate"]) == (0.80, 0.75)
    assert accuracy["delta"] == pytest.approx(-5.0) and accuracy["delta_unit"] == "points"
    f1 = next(row for row in evaluation["metric_rows"] if row["name"] == "macro_f1")
    assert f1["f1_relative"] == pytest.approx(0.6 / 0.7)
    assert [row["label"] for row in evaluation["per_class"]] == ["interest", "warm"]
    assert evaluation["per_class"][1]["reference_f1"] == 0.5 and evaluation["per_class"][1]["precision"] is None
    assert {"use": "task performance (task gates)", "name": "complaints"}.items() <= next(
        row for row in stated["datasets"] if row["name"] == "complaints").items()


def test_the_report_has_a_task_performance_section_with_a_confusion_matrix(gated_request, tmp_path):
    stated = facts.change_impact_facts(gated_request, signature_fields=[])
    rendered = render.render_change_impact(stated)
    (tmp_path / "report.pdf").write_bytes(rendered.pdf)
    assert "confusion_matrix" in rendered.charts
    text = pdf_text(rendered.pdf)
    assert "6b. Task performance" in text
    assert "accuracy 0.8 ± 0.01 0.75 ± 0.01 -5 points ± 1.4" in text
    assert "macro-F1 0.7 ± 0.01 0.6 ± 0.01 -10 points ± 1.4 0.8571 ± 0.019" in text
    assert "interest 2 1 0.5 0.6667 0.8" in text and "warm 1 — 0 0 0.5" in text
    assert "Figure: confusion matrix of the reference (left) and the candidate (right)" in text
    assert "accuracy drop 2 5 ± 1.4 FAIL" in text
    assert "Task performance accuracy 0.75 (-5 points); macro-F1 0.6 (-10 points)" in text
