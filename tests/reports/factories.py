"""Report test data: sealed versions built through the registry services, derived versions, analyses with a
synthetic 32-block result, and a full production history (deploy, quantized update, LoRA request, rollback)."""
import io
import json
import math
import random
import tempfile
from pathlib import Path

import numpy as np
from django.core.files.uploadedfile import SimpleUploadedFile
from safetensors.numpy import save as save_safetensors

from governance import services as governance
from registry import services as registry_services
from registry.models import LineageEdge, ModelVersion
from tests.conftest import jsonl
from workers.models import Analysis, Job

# The op each module's AWQ scales are folded into, within its decoder layer (workers/pipelines/calibrated/awq.py).
AWQ_FOLDED_INTO = {"self_attn.q_proj": "input_layernorm", "self_attn.k_proj": "input_layernorm",
                   "self_attn.v_proj": "input_layernorm", "self_attn.o_proj": "self_attn.v_proj",
                   "mlp.gate_proj": "post_attention_layernorm", "mlp.up_proj": "post_attention_layernorm",
                   "mlp.down_proj": "mlp.up_proj"}
MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")
STATISTICS = ("mean", "mean_uncertainty", "min", "p0_1", "p1", "p5", "p10", "median", "p90", "p95", "p99", "p99_9",
              "max")


def synthetic_analysis_result(*, blocks: int = 32, seed: int = 0, flips: bool = True, kl_mean: float = 0.0123,
                              top1: float = 0.957, ppl_ratio: float = 1.0123) -> dict:
    """An analysis result shaped like workers.pipelines.analysis produces, with `blocks` x 7 modules."""
    rng = random.Random(seed)
    kl = {key: round(kl_mean * factor, 6) for key, factor in zip(STATISTICS, (
        1.0, 0.012, 0.0, 0.0001, 0.0004, 0.001, 0.002, 0.45, 2.6, 3.9, 8.7, 17.3, 41.0))}
    kl["mean"] = kl_mean
    delta_p = dict(zip(STATISTICS, (-0.0021, 0.0003, -0.61, -0.31, -0.12, -0.051, -0.024, -0.0004, 0.019, 0.038,
                                    0.097, 0.22, 0.48)))
    layers = []
    for block in range(blocks):
        for module in MODULES:
            error = 0.002 + 0.02 * rng.random() * (1 + block / blocks)
            layers.append({
                "name": f"model.layers.{block}.{module}",
                "relative_error": error,
                "relative_error_propagated": error * (1 + block / 8),
                "cosine": 1 - error / 2,
                "sqnr_db": 10 * math.log10(1 / error),
                "max_error_channel": rng.randrange(4096),
                "weight_relative_error": error * 0.8,
                "ablation_kl": None,
            })
    kl_edges = [10 ** (-6 + i * 0.1) for i in range(71)]
    delta_edges = [-1 + i / 50 for i in range(101)]
    return {
        "tokens": 65536, "seconds": 412.5, "kl": kl, "delta_p": delta_p, "rms_delta_p": 0.0317,
        "top1_agreement": top1, "top1_agreement_uncertainty": 0.0008, "topk_overlap": 0.912,
        "ppl_reference": 7.412, "ppl_candidate": 7.412 * ppl_ratio, "ppl_ratio": ppl_ratio,
        "ln_ppl_ratio": math.log(ppl_ratio), "nll_correlation": 0.9871,
        "flips": {"accuracy_reference": 0.6125, "accuracy_candidate": 0.6075, "correct_to_incorrect": 9,
                  "incorrect_to_correct": 7, "rate": 0.0425} if flips else None,
        "layers": layers,
        "histograms": {
            "kl": {"edges": kl_edges, "counts": [int(5000 * math.exp(-((i - 38) / 9) ** 2)) + 1 for i in range(70)]},
            "delta_p": {"edges": delta_edges,
                        "counts": [int(30000 * math.exp(-((i - 50) / 3) ** 2)) + 2 for i in range(100)]},
        },
        "device": "cpu",
    }


def weights_bytes(seed: int) -> bytes:
    generator = np.random.default_rng(seed)
    return save_safetensors({"model.embed_tokens.weight": generator.standard_normal((4, 8)).astype(np.float32)})


def sealed_upload(model, actor, *, seed: int, description: str = "") -> ModelVersion:
    version = registry_services.create_version(model=model, description=description, actor=actor)
    for path, data in (("config.json", json.dumps({"model_type": "llama", "seed": seed}).encode()),
                       ("model.safetensors", weights_bytes(seed))):
        registry_services.upload_version_file(version=version, path=path, stream=io.BytesIO(data),
                                              content_length=len(data), expected_sha256=None, actor=actor)
    return registry_services.seal_version(version=version, actor=actor)


def derived_version(parent: ModelVersion, actor, *, kind: str, metadata: dict, datasets=(), seed: int = 9,
                    description: str = "", dataset_relation: str = LineageEdge.Relation.TRAINED_ON) -> ModelVersion:
    """A version registered as a worker would: output files from a job, lineage edges, metadata."""
    job = Job.objects.create(kind="quantize" if kind == ModelVersion.Kind.QUANTIZED else "lora",
                             status=Job.Status.SUCCEEDED, progress=100, created_by=actor, source_version=parent)
    relation = (LineageEdge.Relation.QUANTIZED_FROM if kind == ModelVersion.Kind.QUANTIZED
                else LineageEdge.Relation.ADAPTED_FROM)
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        if kind == ModelVersion.Kind.LORA:
            (directory / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16}))
            (directory / "adapter_model.safetensors").write_bytes(weights_bytes(seed))
        else:
            (directory / "config.json").write_text(json.dumps({"model_type": "llama", "quantized": True}))
            (directory / "model.safetensors").write_bytes(weights_bytes(seed))
        return registry_services.register_derived_version(
            parent=parent, job=job, local_dir=directory, kind=kind, relation=relation, metadata=metadata,
            datasets=[(dataset, dataset_relation) for dataset in datasets],
            description=description, actor=actor)


def dataset(actor, *, name: str, purpose: str, records: list[dict]):
    upload = SimpleUploadedFile(f"{name}.jsonl", jsonl(records))
    return registry_services.register_dataset(name=name, purpose=purpose, uploaded_file=upload, actor=actor)


def analysis(*, reference, candidate, dataset, actor, result: dict) -> Analysis:
    job = Job.objects.create(kind=Job.Kind.ANALYSIS, status=Job.Status.SUCCEEDED, progress=100, created_by=actor,
                             source_version=candidate)
    return Analysis.objects.create(reference=reference, candidate=candidate, dataset=dataset, job=job,
                                   created_by=actor, result=result, params={"max_tokens": 65536, "top_k": 5})


def approve(request, *approvers, comments=()):
    for index, approver in enumerate(approvers):
        comment = comments[index] if index < len(comments) else f"approved by {approver.username}"
        request = governance.decide(change_request=request, actor=approver, decision="approve", comment=comment)
    return request


QUANTIZATION_METADATA = {
    "method": "nf4",
    "settings": {"method": "nf4", "compute_dtype": "bfloat16", "double_quant": True, "skip_modules": ["lm_head"],
                 "bitsandbytes_config": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}},
    "library_versions": {"torch": "2.13.0", "transformers": "5.23.0", "bitsandbytes": "0.50.2"},
    "device": "NVIDIA H100",
    "wall_seconds": 41.2,
    "size_before_bytes": 14_483_464_192,
    "size_after_bytes": 3_865_470_976,
}


def lora_metadata(training_dataset) -> dict:
    return {
        "settings": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"], "steps": 200,
                     "learning_rate": 0.0002, "seed": 7, "optimizer": "AdamW", "qlora": False},
        "base_quantization": None,
        "trainable_parameters": 4_194_304,
        "curve": [{"step": step, "loss": round(2.4 * math.exp(-step / 80) + 0.9, 4),
                   **({"eval_loss": round(2.5 * math.exp(-step / 90) + 1.0, 4)} if step % 50 == 0 else {})}
                  for step in range(10, 201, 10)],
        "eval_loss_before": 3.41,
        "eval_loss_after": 1.62,
        "data_sha256": training_dataset.sha256,
        "dataset": {"id": training_dataset.pk, "name": training_dataset.name, "sha256": training_dataset.sha256},
        "wall_seconds": 388.0,
    }



def calibrated_metadata(calibration_dataset, *, method: str = "gptq", blocks: int = 8, keep_sensitive=None,
                        seed: int = 5) -> dict:
    """ModelVersion.quantization as workers.executors.execute_calibrated_quantize records it for a `blocks` x 7
    module model: lm_head kept by the default skip list, keep_sensitive's layers ({analysis, top_n, modules})
    kept too, every other module quantized with a loss."""
    from workers.pipelines.calibrated.spec import DEFAULT_SKIP_MODULES

    rng = random.Random(seed)
    sensitive = [item["name"] for item in (keep_sensitive or {}).get("modules", [])]
    names = [f"model.layers.{block}.{module}" for block in range(blocks) for module in MODULES]
    planned = [name for name in names if name not in sensitive]
    kept = {"lm_head": f"skip_modules {DEFAULT_SKIP_MODULES!r}", **{name: "keep_sensitive" for name in sensitive}}
    gptq = method == "gptq"
    settings = {"method": method, "bits": 4, "group_size": 128, "damping": 0.01, "sym": gptq, "desc_act": gptq,
                "calibration_samples": None, "max_length": 512, "modules": None,
                "skip_modules": [DEFAULT_SKIP_MODULES], "keep": sensitive}
    metadata = {
        "method": method, "format": "dequantized", "format_note": "Weights hold the grid values dequantized.",
        **{key: settings[key] for key in ("bits", "group_size", "damping", "sym", "desc_act")},
        "settings": settings,
        "calibration": {"samples": 128, "tokens": 65_536, "max_length": 512, "dataset": calibration_dataset.pk,
                        "name": calibration_dataset.name, "sha256": calibration_dataset.sha256,
                        "records": calibration_dataset.records},
        "calibration_dataset": {"id": calibration_dataset.pk, "sha256": calibration_dataset.sha256},
        "library_versions": {"torch": "2.13.0", "transformers": "5.23.0",
                             method: f"workers.pipelines.calibrated.{method}"},
        "device": "cuda:0 (NVIDIA H100 80GB HBM3)", "dtype": "bfloat16",
        "wall_seconds": 41.2, "peak_rss_bytes": 6_442_450_944, "peak_gpu_bytes": 17_179_869_184,
        "size_before_bytes": 14_483_464_192, "size_after_bytes": 14_483_464_192,
        "packed_size_bytes": 4_023_123_456, "size_ratio": 1.0, "packed_size_ratio": 0.2778,
        "quantized_modules": planned, "skipped_modules": sorted(kept),
        "kept_modules": [{"name": name, "reason": reason} for name, reason in sorted(kept.items())],
        "module_loss": {name: round(0.001 + 0.05 * rng.random(), 8) for name in planned},
        "loss_definition": "||WX - ŴX||² / ||WX||² over the calibration inputs of each layer",
    }
    if not gptq:
        metadata["awq_alpha"] = {name: round(rng.random(), 2) for name in planned}
        metadata["awq_folded_into"] = {name: f"{name.rsplit('.', 2)[0]}.{AWQ_FOLDED_INTO[name.split('.', 3)[3]]}"
                                       for name in planned}
        metadata["awq_scales"] = ("folded into the preceding norm or Linear, one scale vector per group of layers "
                                  "reading the same input")
    if keep_sensitive:
        metadata["keep_sensitive"] = {
            **keep_sensitive, "kept": sorted(sensitive),
            "reason": f"among the {keep_sensitive['top_n']} layers with the largest relative error in analysis "
                      f"{keep_sensitive['analysis']}"}
    return metadata
