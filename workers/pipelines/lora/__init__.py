"""Incremental LoRA updates: train a small adapter on top of a (possibly 4-/8-bit quantized) base version.

"Quantize once, keep training": a version quantized with bitsandbytes stays frozen and each update only trains
low-rank adapter matrices (QLoRA when the base is quantized). The output directory holds the adapter
(`adapter_model.safetensors`, `adapter_config.json`) and the base's tokenizer; it is registered as a new
version whose parent is the base.

The modules: run (train_lora, merge_lora), spec (LoraSpec and its checks), records (checks, split and
tokenization of the dataset), training (the loop), adapters (target layers, attaching and saving the adapter).
"""

from workers.pipelines.lora.adapters import ATTENTION_PROJECTIONS, check_target_modules, default_target_modules
from workers.pipelines.lora.records import (
    IGNORE_INDEX,
    MAX_EVAL_RECORDS,
    EncodedRecord,
    canonical_record,
    check_records,
    encode_record,
    encode_records,
    encoding_warnings,
    records_sha256,
    split_records,
    usable,
)
from workers.pipelines.lora.run import merge_lora, train_lora
from workers.pipelines.lora.training import (
    EVALUATIONS_DURING_TRAINING,
    MAX_CURVE_POINTS,
    MAX_GRAD_NORM,
    REPORT_INTERVAL_SECONDS,
    ProgressCallback,
)
from workers.pipelines.specs import LoraSpec, validate_lora_spec

__all__ = [
    "ATTENTION_PROJECTIONS",
    "EVALUATIONS_DURING_TRAINING",
    "EncodedRecord",
    "IGNORE_INDEX",
    "LoraSpec",
    "MAX_CURVE_POINTS",
    "MAX_EVAL_RECORDS",
    "MAX_GRAD_NORM",
    "ProgressCallback",
    "REPORT_INTERVAL_SECONDS",
    "canonical_record",
    "check_records",
    "check_target_modules",
    "default_target_modules",
    "encode_record",
    "encode_records",
    "encoding_warnings",
    "merge_lora",
    "records_sha256",
    "split_records",
    "train_lora",
    "usable",
    "validate_lora_spec",
]
