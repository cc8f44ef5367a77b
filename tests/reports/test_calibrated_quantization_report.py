"""The change-impact report of a calibrated quantization (GPTQ, AWQ): every setting with its unit, the calibration
data with its SHA-256, the modules quantized and kept with their reasons, the per-module loss worst first, and for
sensitivity-guided mixed precision the earlier analysis's error of each layer kept out of quantization."""
import pytest
from django.template.loader import render_to_string

from foundation.roles import APPROVER, ML_ENGINEER
from governance import services as governance
from registry import services as registry_services
from registry.models import LineageEdge, ModelVersion
from reports import facts, render
from reports.quantization_facts import LOSS_ROWS
from tests.conftest import make_user
from tests.reports import factories
from tests.reports.test_change_impact_report import pdf_text

pytestmark = pytest.mark.django_db


@pytest.fixture
def gptq_request():
    """mortgage-llm: v1 in production; v2 an NF4 version whose analysis found the sensitive layers; v3 a GPTQ of v1
    calibrated on mortgage-calibration that kept the analysis's two most sensitive layers; v3 requested."""
    engineer = make_user("gina", ML_ENGINEER)
    approvers = [make_user(name, APPROVER) for name in ("hal", "ida")]
    model = registry_services.create_model(name="mortgage-llm", description="Mortgage letters", actor=engineer)
    v1 = factories.sealed_upload(model, engineer, seed=1)
    factories.approve(governance.open_change_request(model=model, alias="production", version_number=1,
                                                     justification="first", actor=engineer), *approvers)
    evaluation = factories.dataset(engineer, name="mortgage-eval", purpose="evaluation",
                                   records=[{"text": "The loan-to-value ratio is 80%."}] * 4)
    calibration = factories.dataset(engineer, name="mortgage-calibration", purpose="calibration",
                                    records=[{"text": f"Mortgage letter number {index}."} for index in range(8)])
    v2 = factories.derived_version(v1, engineer, kind=ModelVersion.Kind.QUANTIZED, seed=2,
                                   metadata=factories.QUANTIZATION_METADATA)
    earlier = factories.analysis(reference=v1, candidate=v2, dataset=evaluation, actor=engineer,
                                 result=factories.synthetic_analysis_result(blocks=8, seed=11))
    ranked = sorted(earlier.result["layers"], key=lambda layer: layer["relative_error"], reverse=True)
    keep_sensitive = {"analysis": earlier.pk, "top_n": 2,
                      "modules": [{"name": layer["name"], "relative_error": layer["relative_error"]}
                                  for layer in ranked[:2]]}
    v3 = factories.derived_version(v1, engineer, kind=ModelVersion.Kind.QUANTIZED, seed=3, datasets=[calibration],
                                   dataset_relation=LineageEdge.Relation.CALIBRATED_ON,
                                   metadata=factories.calibrated_metadata(calibration, keep_sensitive=keep_sensitive))
    factories.analysis(reference=v1, candidate=v3, dataset=evaluation, actor=engineer,
                       result=factories.synthetic_analysis_result(blocks=8, seed=12))
    request = governance.open_change_request(model=model, alias="production", version_number=3,
                                             justification="GPTQ with the sensitive layers kept.",
                                             dataset_id=evaluation.pk, actor=engineer)
    return {"request": request, "calibration": calibration, "earlier": earlier, "ranked": ranked, "version": v3}


def test_facts_state_settings_calibration_kept_modules_and_the_worst_losses(gptq_request):
    stated = facts.change_impact_facts(gptq_request["request"], signature_fields=[])
    q = stated["change"]["calibrated"]
    calibration = gptq_request["calibration"]
    assert (q["method_label"], q["bits"], q["group_size"], q["damping"], q["sym"], q["desc_act"]) == \
        ("GPTQ", 4, 128, 0.01, True, True)
    assert q["calibration"] == {"dataset_id": calibration.pk, "name": "mortgage-calibration",
                                "sha256": calibration.sha256, "sha256_short": calibration.sha256[:16],
                                "records": 8, "samples": 128, "samples_requested": None, "tokens": 65_536}
    assert q["quantized_count"] == 8 * 7 - 2
    most_sensitive = [layer["name"] for layer in gptq_request["ranked"][:2]]
    assert {module["name"]: module["reason"] for module in q["kept"]} == {
        "lm_head": q["kept"][0]["reason"], **{name: "keep_sensitive" for name in most_sensitive}}
    assert "default skip list" in next(m["reason_text"] for m in q["kept"] if m["name"] == "lm_head")
    loss = q["loss"]
    recorded = gptq_request["version"].quantization["module_loss"]
    assert loss["total"] == 54 and not loss["all_shown"] and len(loss["rows"]) == LOSS_ROWS
    assert [row["loss"] for row in loss["rows"]] == sorted(recorded.values(), reverse=True)[:LOSS_ROWS]
    assert stated["change"]["rows"] == []  # the calibrated account replaces the raw key/value dump


def test_facts_give_each_kept_layer_its_error_and_rank_in_the_earlier_analysis(gptq_request):
    sensitive = facts.change_impact_facts(gptq_request["request"], signature_fields=[])["change"]["calibrated"][
        "keep_sensitive"]
    ranked = gptq_request["ranked"]
    assert sensitive["analysis"] == gptq_request["earlier"].pk and sensitive["found"]
    assert [(row["rank"], row["name"], row["relative_error"], row["outcome"]) for row in sensitive["rows"]] == [
        (rank, layer["name"], layer["relative_error"], "kept in full precision")
        for rank, layer in enumerate(ranked[:2], start=1)]
    assert sensitive["first_quantized"] == {"name": ranked[2]["name"], "relative_error": ranked[2]["relative_error"],
                                            "rank": 3}
    assert sensitive["layers_measured"] == 56 and sensitive["kept_count"] == 2


def test_awq_facts_carry_alpha_and_say_damping_and_act_order_do_not_apply(db):
    engineer = make_user("awq-engineer", ML_ENGINEER)
    calibration = factories.dataset(engineer, name="awq-calibration", purpose="calibration",
                                    records=[{"text": f"Letter {index}."} for index in range(8)])
    from reports.quantization_facts import calibrated_quantization_facts

    q = calibrated_quantization_facts(factories.calibrated_metadata(calibration, method="awq", blocks=3))
    assert q["method_label"] == "AWQ" and not q["uses_damping"] and not q["uses_desc_act"] and not q["sym"]
    assert q["loss"]["all_shown"] and q["loss"]["total"] == 21 and q["loss"]["has_alpha"]
    assert all(row["alpha"] is not None for row in q["loss"]["rows"]) and q["keep_sensitive"] is None
    assert q["loss"]["has_folded_into"] and "preceding norm" in q["awq_scales"]
    folded = {row["name"]: row["folded_into"] for row in q["loss"]["rows"]}
    assert folded["model.layers.2.mlp.down_proj"] == "model.layers.2.mlp.up_proj"
    html = render_to_string("reports/pdf/_calibrated_quantization.html", {"q": q})
    assert "Scales folded into" in html and "model.layers.2.post_attention_layernorm" in html


def test_the_report_states_what_a_regulator_needs_about_the_gptq_run(gptq_request, tmp_path):
    stated = facts.change_impact_facts(gptq_request["request"], signature_fields=[])
    pdf = render.render_change_impact(stated).pdf
    (tmp_path / "report.pdf").write_bytes(pdf)
    text = pdf_text(pdf)
    calibration, ranked = gptq_request["calibration"], gptq_request["ranked"]
    for expected in (
        "Quantization settings: GPTQ 4-bit, calibrated",
        "Bits 4 bits per weight", "Group size 128 weights share one scale",
        "Damping 0.01 × the mean of the Hessian's diagonal, added to it (1 %, GPTQ's damp_percent)",
        "Symmetric grid yes (no zero point)", "Act-order (desc_act) yes",
        f"Dataset mortgage-calibration (id {calibration.pk}), 8 records",
        f"Dataset SHA-256 {calibration.sha256[:16]}…",
        "Samples used 128 sequences of at most 512 tokens each", "Tokens used 65,536 tokens",
        "Device cuda:0 (NVIDIA H100 80GB HBM3)", "Wall time 41.2 s",
        "Library versions torch 2.13.0 · transformers 5.23.0",
        "Size before 14,483,464,192 bytes (13.5 GiB)",
        "Size packed at 4 bits 4,023,123,456 bytes (3.75 GiB), 27.8 % of before",
        "54 Linear layers quantized to 4 bits; 3 kept in full precision",
        "lm_head default skip list (embeddings, norms, output head stay in full precision)",
        f"keep_sensitive: among the 2 layers with the largest relative error in analysis {gptq_request['earlier'].pk}",
        "The 20 worst of 54 quantized modules, worst first.",
        "Sensitivity-guided mixed precision (keep_sensitive)",
        "Rule keep the 2 layers with the largest relative error",
    ):
        assert expected in text, expected
    assert calibration.sha256 in text.replace(" ", "")
    losses = sorted(gptq_request["version"].quantization["module_loss"].items(), key=lambda item: -item[1])
    worst, twentieth, twenty_first = losses[0], losses[LOSS_ROWS - 1], losses[LOSS_ROWS]
    assert f"1 {worst[0]} {worst[1]:.4g}" in text
    assert f"20 {twentieth[0]} {twentieth[1]:.4g}" in text and f"21 {twenty_first[0]} " not in text
    for rank, layer in enumerate(ranked[:2], start=1):
        assert f"{rank} {layer['name']} {layer['relative_error']:.4g}" in text
    assert f"layerthatwasquantized:{ranked[2]['name']}(rank3," in text.replace(" ", "")


def test_a_bitsandbytes_report_keeps_its_plain_settings_table(history):
    stated = facts.change_impact_facts(history["requests"]["update"], signature_fields=[])
    assert "calibrated" not in stated["change"] and ("method", "nf4") in stated["change"]["rows"]


def test_a_real_gptq_run_of_the_tiny_model_reads_back_in_its_report(tiny_model_dir, tmp_path):
    """The metadata the worker records (not a hand-made copy) is what the report reads: run the calibrated
    quantization executor on the tiny model with keep_sensitive, open its first deployment, render."""
    from tests.governance.conftest import register_version
    from workers import services as worker_services
    from workers.executors import execute_calibrated_quantize
    from workers.pipelines.tiny_model import SAMPLE_TEXTS

    engineer = make_user("kim", ML_ENGINEER)
    model = registry_services.create_model(name="tiny-gptq", description="Tiny", actor=engineer)
    v1, v2 = (register_version(model, tiny_model_dir, engineer) for _ in range(2))
    calibration = factories.dataset(engineer, name="tiny-calibration", purpose="calibration",
                                    records=[{"text": text} for text in SAMPLE_TEXTS[:8]])
    evaluation = factories.dataset(engineer, name="tiny-eval", purpose="evaluation",
                                   records=[{"text": text} for text in SAMPLE_TEXTS[8:12]])
    layers = [{"name": "model.layers.1.mlp.down_proj", "relative_error": 0.4},
              {"name": "model.layers.0.self_attn.q_proj", "relative_error": 0.02}]
    earlier = factories.analysis(reference=v1, candidate=v2, dataset=evaluation, actor=engineer,
                                 result={"layers": layers})
    job = worker_services.start_calibrated_quantization(
        version=v1, calibration_dataset=calibration, actor=engineer,
        settings={"method": "gptq", "max_length": 32, "keep_sensitive": {"analysis": earlier.pk, "top_n": 1}})
    number = execute_calibrated_quantize(job=job, workdir=tmp_path / "work", report=lambda percent, message: None)[
        "version"]
    recorded = ModelVersion.objects.get(model=model, number=number).quantization
    request = governance.open_change_request(model=model, alias="staging", version_number=number,
                                             justification="tiny GPTQ", actor=engineer)
    q = facts.change_impact_facts(request, signature_fields=[])["change"]["calibrated"]
    assert q["calibration"]["sha256"] == calibration.sha256 and q["calibration"]["tokens"] > 0
    assert q["quantized_count"] == len(recorded["module_loss"]) == q["loss"]["total"]
    assert q["keep_sensitive"]["rows"][0] == {
        "name": "model.layers.1.mlp.down_proj", "rank": 1, "relative_error": 0.4, "relative_error_propagated": None,
        "sqnr_db": None, "outcome": "kept in full precision"}
    pdf = render.render_change_impact(facts.change_impact_facts(request, signature_fields=[])).pdf
    (tmp_path / "report.pdf").write_bytes(pdf)
    text = pdf_text(pdf)
    assert f"{q['quantized_count']} Linear layers quantized to 4 bits" in text
    assert f"Tokens used {recorded['calibration']['tokens']:,} tokens" in text
    assert "model.layers.1.mlp.down_proj keep_sensitive: the layer with the largest relative error" in text
    assert "1 model.layers.1.mlp.down_proj 0.4" in text
