"""Checks on what users upload: file paths, weight formats, safetensors headers, JSONL datasets.

Pure functions over bytes and readers, so the same checks serve streamed uploads (ranged reads from storage)
and files a worker produced locally. Nothing here ever unpickles anything.
"""
import json
import posixpath
import struct
from dataclasses import dataclass
from typing import Callable, Iterable

from foundation.errors import InvalidInput, Unprocessable
from foundation.input_text import control_character_in, describe, first_control_character

# Formats that are pickles under the hood: loading one can run arbitrary code, so they are refused outright.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
SAFETENSORS_SUFFIX = ".safetensors"
# The safetensors format itself caps its JSON header at 100 MB; anything larger is corrupt or hostile.
MAX_SAFETENSORS_HEADER_BYTES = 100 * 1024 * 1024
MAX_JSON_FILE_BYTES = 16 * 1024 * 1024
SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "F4": 1, "F6_E2M3": 1, "F6_E3M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
    "C64": 8,
}


def validate_file_path(path: str) -> str:
    """Return the path if it is a safe relative path inside a version, else raise InvalidInput."""
    if not path or len(path) > 512:
        raise InvalidInput("File path must be 1-512 characters.", field="path")
    if "\\" in path:
        raise InvalidInput(f"File path {path!r} contains a backslash; use '/' between folders.", field="path")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise InvalidInput(f"File path {path!r} is absolute; give a path relative to the version.", field="path")
    control = control_character_in(path)
    if control:
        raise InvalidInput(f"File path {path!r} contains the control character {describe(control)}; remove it.",
                           field="path")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise InvalidInput(
            f"File path {path!r} has an empty, '.' or '..' segment; paths must stay inside the version.",
            field="path",
        )
    if posixpath.normpath(path) != path:
        raise InvalidInput(f"File path {path!r} is not in normal form.", field="path")
    return path


def is_pickle_path(path: str) -> bool:
    return path.lower().endswith(PICKLE_SUFFIXES)


def pickle_refusal(path: str) -> Unprocessable:
    return Unprocessable(
        f"{path} is a pickle-based weights file, which can execute code when loaded; it is never opened. "
        "Convert it to safetensors (model.save_pretrained(dir, safe_serialization=True)) and upload that instead.",
        field="files",
    )


def parse_safetensors_header(path: str, size: int, read_range: Callable[[int, int], bytes]) -> dict:
    """Validate a safetensors file from its header alone and return {tensor: {dtype, shape}}.

    `read_range(offset, length)` reads bytes of the file, so a multi-GB file needs two small reads.
    """
    if size < 8:
        raise Unprocessable(f"{path} is {size} bytes long, too short to be a safetensors file.", field="files")
    (header_length,) = struct.unpack("<Q", read_range(0, 8))
    if header_length > MAX_SAFETENSORS_HEADER_BYTES:
        raise Unprocessable(
            f"{path} declares a {header_length}-byte header, beyond the safetensors limit of "
            f"{MAX_SAFETENSORS_HEADER_BYTES}; the file is corrupt.", field="files")
    if 8 + header_length > size:
        raise Unprocessable(
            f"{path} declares a {header_length}-byte header but the file is only {size} bytes; it is truncated "
            "or corrupt.", field="files")
    raw_header = read_range(8, header_length)
    try:
        header = json.loads(raw_header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise Unprocessable(f"{path} has a header that is not valid JSON ({error}); the file is corrupt.",
                            field="files") from None
    if not isinstance(header, dict):
        raise Unprocessable(f"{path} has a header that is not a JSON object.", field="files")
    data_length = size - 8 - header_length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        control = control_character_in(name)
        if control:
            raise InvalidInput(f"{path}: tensor name {name!r} contains the control character {describe(control)}; "
                               "the file cannot be registered. Save the model again with plain tensor names.",
                               field="files")
        tensors[name] = _check_tensor_entry(path, name, entry, data_length)
    if not tensors:
        raise Unprocessable(f"{path} holds no tensors.", field="files")
    return tensors


def _check_tensor_entry(path: str, name: str, entry, data_length: int) -> dict:
    if not isinstance(entry, dict):
        raise Unprocessable(f"{path}: tensor {name!r} has a malformed header entry.", field="files")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPE_BYTES:
        raise Unprocessable(f"{path}: tensor {name!r} has unknown dtype {dtype!r}.", field="files")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise Unprocessable(f"{path}: tensor {name!r} has a malformed shape.", field="files")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise Unprocessable(f"{path}: tensor {name!r} has malformed data offsets.", field="files")
    begin, end = offsets
    if not 0 <= begin <= end <= data_length:
        raise Unprocessable(
            f"{path}: tensor {name!r} points at bytes {begin}-{end} but the file holds only {data_length} bytes "
            "of tensor data; the file is truncated or corrupt.", field="files")
    return {"dtype": dtype, "shape": shape}


def parse_json_file(path: str, raw: bytes) -> dict:
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise Unprocessable(f"{path} is not valid JSON: {error}.", field="files") from None
    if not isinstance(document, dict):
        raise Unprocessable(f"{path} must hold a JSON object.", field="files")
    found = first_control_character(document, field=path)
    if found:
        raise InvalidInput(f"{found[0]} contains the control character {describe(found[1])}; fix {path} and upload "
                           "it again.", field="files")
    return document


@dataclass(frozen=True)
class DatasetSummary:
    records: int
    record_format: str


_FORMATS_BY_PURPOSE = {
    "calibration": ("text",),
    "evaluation": ("text", "multiple_choice", "generation"),
    "training": ("text", "prompt_completion"),
}


def _record_format(record: dict) -> str | None:
    if isinstance(record.get("text"), str) and record["text"].strip():
        return "text"
    if isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str) and record["completion"]:
        return "prompt_completion"
    choices, answer = record.get("choices"), record.get("answer")
    if (isinstance(record.get("prompt"), str) and isinstance(choices, list) and len(choices) >= 2
            and all(isinstance(c, str) and c for c in choices)
            and isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices)):
        return "multiple_choice"
    if isinstance(record.get("prompt"), str) and isinstance(answer, str) and answer.strip():
        return "generation"
    return None


_FORMAT_HELP = {
    "text": '{"text": "..."}',
    "prompt_completion": '{"prompt": "...", "completion": "..."}',
    "multiple_choice": '{"prompt": "...", "choices": ["...", "..."], "answer": <index of the right choice>}',
    "generation": '{"prompt": "...", "answer": "..."}',
}


def validate_jsonl_dataset(lines: Iterable[bytes], purpose: str) -> DatasetSummary:
    """Check every line of a JSONL dataset for its purpose; name the first bad line."""
    allowed = _FORMATS_BY_PURPOSE[purpose]
    expected = " or ".join(_FORMAT_HELP[f] for f in allowed)
    seen_format = None
    records = 0
    for number, raw_line in enumerate(lines, start=1):
        if not raw_line.strip():
            continue
        try:
            record = json.loads(raw_line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise Unprocessable(f"Line {number} is not valid JSON ({error}).", field="file") from None
        record_format = _record_format(record) if isinstance(record, dict) else None
        if record_format not in allowed:
            raise Unprocessable(f"Line {number} is not a {purpose} record; each line must be {expected}.",
                                field="file")
        if seen_format and record_format != seen_format:
            raise Unprocessable(
                f"Line {number} is a {record_format} record but earlier lines are {seen_format}; "
                "use one format per dataset.", field="file")
        seen_format = record_format
        records += 1
    if records == 0:
        raise Unprocessable("The dataset has no records; upload at least one JSON line.", field="file")
    return DatasetSummary(records=records, record_format=seen_format)


SHARD_INDEX_SUFFIX = SAFETENSORS_SUFFIX + ".index.json"


def is_shard_index_path(path: str) -> bool:
    """model.safetensors.index.json, adapter_model.safetensors.index.json: the map of a sharded checkpoint."""
    return path.endswith(SHARD_INDEX_SUFFIX)


def tensor_data_bytes(tensor: dict) -> int:
    """Bytes of one tensor's data from its header entry: what transformers sums into the index's total_size."""
    count = 1
    for dimension in tensor["shape"]:
        count *= dimension
    return count * SAFETENSORS_DTYPE_BYTES[tensor["dtype"]]


def check_shard_index(index_path: str, index: dict, tensors_by_path: dict[str, dict]) -> None:
    """Check a sharded checkpoint's index against the shards' parsed headers; raise on the first mismatch.

    The index's `weight_map` names, for every tensor, the shard (relative to the index's folder) that holds it;
    transformers loads each tensor from the shard named and trusts the map, so a wrong map yields a model with
    missing or misplaced weights instead of an error. Every safetensors file beside the index must be one of its
    shards, each tensor must live in exactly one shard, and `metadata.total_size` (when given) must equal the sum
    of the tensors' data bytes, as save_pretrained computes it.
    """
    folder = posixpath.dirname(index_path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise Unprocessable(f"{index_path} has no weight_map object naming each tensor's shard; upload the index "
                            "written by save_pretrained.", field="files")
    shards = {path: tensors for path, tensors in tensors_by_path.items() if posixpath.dirname(path) == folder}
    owner_of = {}
    for shard_path, tensors in shards.items():
        for name in tensors:
            if name in owner_of:
                raise Unprocessable(f"Tensor {name!r} is stored in both {owner_of[name]} and {shard_path}; each "
                                    "tensor must live in exactly one shard.", field="files")
            owner_of[name] = shard_path
    referenced = set()
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise Unprocessable(f"{index_path}: weight_map entry for tensor {name!r} is not a shard file name.",
                                field="files")
        shard_path = posixpath.join(folder, shard)
        if shard_path not in shards:
            raise Unprocessable(f"{index_path} maps tensor {name!r} to shard {shard}, which was not uploaded; "
                                f"upload {shard_path}.", field="files")
        referenced.add(shard_path)
        if name not in shards[shard_path]:
            found = f"; it is in {owner_of[name]}" if name in owner_of else "; no uploaded shard holds it"
            raise Unprocessable(f"{index_path} maps tensor {name!r} to {shard_path}, but that shard does not hold "
                                f"it{found}.", field="files")
    for shard_path in sorted(shards):
        if shard_path not in referenced:
            raise Unprocessable(f"{shard_path} is not referenced by {index_path}; remove it or upload the index "
                                "that names it.", field="files")
        for name in shards[shard_path]:
            if name not in weight_map:
                raise Unprocessable(f"{shard_path} holds tensor {name!r}, which {index_path} does not list; "
                                    "upload the index written together with these shards.", field="files")
    metadata = index.get("metadata", {})
    if not isinstance(metadata, dict):
        raise Unprocessable(f"{index_path}: metadata must be a JSON object.", field="files")
    if "total_size" in metadata:
        declared = metadata["total_size"]
        actual = sum(tensor_data_bytes(tensor) for tensors in shards.values() for tensor in tensors.values())
        if isinstance(declared, bool) or not isinstance(declared, int) or declared != actual:
            raise Unprocessable(f"{index_path} declares metadata.total_size {declared!r} but its shards hold "
                                f"{actual} bytes of tensor data; upload the index written with these shards.",
                                field="files")
