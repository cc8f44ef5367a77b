"""Scan and redact whole datasets: JSONL lines or parsed records, streamed one at a time."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import phonenumbers

from workers.pipelines.errors import PipelineInputError
from workers.pipelines.pii.checks import mask_value, placeholder
from workers.pipelines.pii.scanner import PiiScanner, PiiScanSpec, selected_types, validate_pii_scan_spec

STRATEGIES = ("mask", "replace", "drop_record")
MAX_FINDINGS = 1000
# Bump when a detection rule changes, so a stored scan result tells which rules produced it.
RULES_VERSION = "1"
_PLAIN_KEY = re.compile(r"[^.\[\]\"]+")


@dataclass
class PiiFinding:
    """One piece of personal data: where it is (1-based record line, field path, span) and a masked form."""

    record: int
    field: str
    type: str
    start: int
    end: int
    masked: str


@dataclass
class PiiScanResult:
    """A dataset's scan: status, exact counts per type, and the first findings (up to the cap)."""

    status: str
    counts: dict[str, int]
    scanned_records: int
    records_with_pii: int
    engine: dict[str, str]
    findings: list[PiiFinding]
    findings_truncated: bool

    def as_dict(self) -> dict:
        return asdict(self)


def _parse_records(items: Iterable) -> Iterator[tuple[int, object, int]]:
    """(1-based line number, parsed record, bytes consumed) for JSONL lines (str or bytes) or parsed records."""
    for number, item in enumerate(items, start=1):
        if isinstance(item, (bytes, str)):
            size = len(item) if isinstance(item, bytes) else len(item.encode("utf-8"))
            if number == 1:  # a byte-order mark, as some Windows editors write
                item = item.removeprefix(b"\xef\xbb\xbf" if isinstance(item, bytes) else "\ufeff")
            if not item.strip():
                yield number, None, size  # blank line: counted for line numbers, not a record
                continue
            try:
                record = json.loads(item)
            except UnicodeDecodeError:
                raise PipelineInputError(
                    f"Line {number} of the dataset is not UTF-8 text; save the dataset as UTF-8 JSONL."
                ) from None
            except json.JSONDecodeError as error:
                raise PipelineInputError(
                    f"Line {number} of the dataset is not valid JSON ({error.msg} at column {error.colno}); "
                    "fix or remove that line."
                ) from None
            except RecursionError:
                raise PipelineInputError(
                    f"Line {number} of the dataset nests too deeply to read; flatten that record."
                ) from None
            yield number, record, size
        else:
            yield number, item, 0


def field_path(parts: tuple) -> str:
    """A field's path as findings name it: text, choices[2], meta.customer.email, meta["a.b"]; $ for the root."""
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            path += f".{part}" if path else part
        else:
            path += f"[{json.dumps(part, ensure_ascii=False)}]"
    return path or "$"


def _texts(value, parts: tuple = ()) -> Iterator[tuple[tuple, str]]:
    """(path parts, text) for every string and integer in a record; integers as written in JSON."""
    if isinstance(value, str):
        yield parts, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _texts(item, (*parts, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _texts(item, (*parts, index))
    elif isinstance(value, int) and not isinstance(value, bool):
        yield parts, str(value)


def engine_description() -> dict[str, str]:
    """Which rules and library versions produced a result, for the audit trail."""
    return {"name": "workers.pipelines.pii", "version": RULES_VERSION, "phonenumbers": phonenumbers.__version__}


class _Progress:
    """Calls report(percent, message) each time another whole percent of total_bytes has been read."""

    def __init__(self, report, total_bytes, verb):
        self.report, self.total, self.verb = report, total_bytes, verb
        self.done, self.percent = 0, 0

    def advance(self, size: int, records: int) -> None:
        self.done += size
        if self.total:
            percent = min(99, self.done * 100 // self.total)
            if percent > self.percent:
                self.percent = percent
                self.report(
                    percent, f"{self.verb} {records} records ({self.done / 1e6:.0f} of {self.total / 1e6:.0f} MB)"
                )


def scan_records(
    records: Iterable,
    spec: PiiScanSpec | None = None,
    *,
    report: Callable[[int, str], None] = lambda percent, message: None,
    total_bytes: int | None = None,
    max_findings: int = MAX_FINDINGS,
) -> PiiScanResult:
    """Scan JSONL lines or parsed records one at a time (flat memory) and return counts and the first findings."""
    scanner = PiiScanner(spec or PiiScanSpec())
    counts = dict.fromkeys(scanner.types, 0)
    findings: list[PiiFinding] = []
    scanned = with_pii = 0
    progress = _Progress(report, total_bytes, "Scanned")
    report(0, "Scanning the dataset for personal data")
    for number, record, size in _parse_records(records):
        if record is not None:
            scanned += 1
            record_has_pii = False
            for parts, text in _texts(record):
                for pii_type, start, end in scanner.find(text):
                    record_has_pii = True
                    counts[pii_type] += 1
                    if len(findings) < max_findings:
                        masked = mask_value(pii_type, text[start:end])
                        findings.append(PiiFinding(number, field_path(parts), pii_type, start, end, masked))
            with_pii += record_has_pii
        progress.advance(size, scanned)
    total = sum(counts.values())
    report(100, f"Scanned {scanned} records: {total} findings")
    return PiiScanResult(
        status="found" if total else "clean",
        counts=counts,
        scanned_records=scanned,
        records_with_pii=with_pii,
        engine=engine_description(),
        findings=findings,
        findings_truncated=total > len(findings),
    )


def scan_jsonl(
    path: Path,
    spec: PiiScanSpec | None = None,
    *,
    report: Callable[[int, str], None] = lambda percent, message: None,
    max_findings: int = MAX_FINDINGS,
) -> PiiScanResult:
    """Scan a JSONL file line by line, reporting progress by bytes read."""
    path = Path(path)
    with path.open("rb") as lines:
        return scan_records(lines, spec, report=report, total_bytes=path.stat().st_size, max_findings=max_findings)


# --- Redaction -------------------------------------------------------------------------------------------------


class RedactedRecords:
    """The records redact_records yields; counts and dropped_records are final once it has been iterated."""

    def __init__(self, records: Iterable, scanner: PiiScanner, strategy: str, progress: _Progress):
        self.strategy = strategy
        self.counts = dict.fromkeys(scanner.types, 0)
        self.records_in = self.records_out = self.dropped_records = 0
        self._scanner, self._progress = scanner, progress
        self._iterator = self._redact(records)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._iterator)

    def summary(self) -> dict:
        return {
            "strategy": self.strategy, "types": list(self.counts), "counts": dict(self.counts),
            "records_in": self.records_in, "records_out": self.records_out, "dropped_records": self.dropped_records,
            "engine": engine_description(),
        }

    def _redact(self, records):
        for _, record, size in _parse_records(records):
            self._progress.advance(size, self.records_in)
            if record is None:
                continue
            self.records_in += 1
            found = {}
            redacted = self._rewrite(record, found)
            for pii_type, count in found.items():
                self.counts[pii_type] += count
            if found and self.strategy == "drop_record":
                self.dropped_records += 1
                continue
            self.records_out += 1
            yield redacted

    def _rewrite(self, value, found: dict[str, int]):
        """value with its PII replaced as the strategy says; adds what it replaced to found."""
        if isinstance(value, dict):
            return {key: self._rewrite(item, found) for key, item in value.items()}
        if isinstance(value, list):
            return [self._rewrite(item, found) for item in value]
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            return value
        text = value if isinstance(value, str) else str(value)
        spans = self._scanner.find(text)
        if not spans:
            return value
        pieces, position = [], 0
        for pii_type, start, end in spans:
            found[pii_type] = found.get(pii_type, 0) + 1
            replacement = mask_value(pii_type, text[start:end]) if self.strategy == "mask" else placeholder(pii_type)
            pieces += [text[position:start], replacement]
            position = end
        return "".join(pieces) + text[position:]  # an integer holding PII becomes a string


def redact_records(
    records: Iterable,
    strategy: str,
    types: list[str] | None = None,
    *,
    spec: PiiScanSpec | None = None,
    report: Callable[[int, str], None] = lambda percent, message: None,
    total_bytes: int | None = None,
) -> RedactedRecords:
    """Stream records with PII of the given types masked, replaced by <TYPE>, or the whole record dropped."""
    if strategy not in STRATEGIES:
        raise PipelineInputError(f"Unknown redaction strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}.")
    spec = spec or PiiScanSpec()
    validate_pii_scan_spec(spec)
    if types is not None:
        available = selected_types(spec)
        unknown = [name for name in types if name not in available] if isinstance(types, (list, tuple)) else types
        if unknown or not types:
            raise PipelineInputError(
                f"Cannot redact {unknown or types!r}: types must be a non-empty list drawn from {', '.join(available)}."
            )
        spec = PiiScanSpec(
            regions=list(spec.regions),
            custom_patterns={name: spec.custom_patterns[name] for name in types if name in spec.custom_patterns},
            types=list(types),
        )
    return RedactedRecords(records, PiiScanner(spec), strategy, _Progress(report, total_bytes, "Redacted"))


def redact_jsonl(
    source: Path,
    destination: Path,
    strategy: str,
    types: list[str] | None = None,
    *,
    spec: PiiScanSpec | None = None,
    report: Callable[[int, str], None] = lambda percent, message: None,
) -> dict:
    """Write a redacted copy of a JSONL file (complete or not at all) and return what was redacted."""
    source, destination = Path(source), Path(destination)
    report(0, f"Redacting personal data ({strategy})")
    destination.parent.mkdir(parents=True, exist_ok=True)
    descriptor, staging = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent)
    try:
        with source.open("rb") as lines, os.fdopen(descriptor, "w", encoding="utf-8") as out:
            redacted = redact_records(
                lines, strategy, types, spec=spec, report=report, total_bytes=source.stat().st_size
            )
            for record in redacted:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(staging, destination)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    summary = redacted.summary()
    report(100, f"Redacted {sum(summary['counts'].values())} values in {summary['records_in']} records")
    return summary

