"""PII scan throughput of a synthetic ~100 MB JSONL dataset, and whether its memory stays flat.

    .venv/bin/python bench/pii.py            # PII_BENCH_MB=10 for a quick run

Writes synthetic chat records (about a third with a card number, IBAN, CN resident ID, phone number or e-mail
address; the rest with amounts, dates and order numbers that look like them) to a temporary directory, then
scans it with workers.pipelines.pii.scan_jsonl in a fresh subprocess, once at a tenth of the size and once at
full size. Peak RSS is each subprocess's own (resource.getrusage), so the two show whether memory grows with the
dataset. Needs no running stack. Last line: a JSON object (keys in shared/BENCHMARKS.md, plus the pii_* ones).
"""
from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MB = 1_000_000
TARGET_MB = float(os.environ.get("PII_BENCH_MB", "100"))
SMALL_FRACTION = 0.1


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    """A card number of length digits starting with prefix, with its Luhn check digit."""
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    total = 0
    for position, character in enumerate(reversed(body)):
        value = int(character)
        if position % 2 == 0:  # doubled: the check digit will sit to the right
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return body + str((10 - total % 10) % 10)


def german_iban(rng: random.Random) -> str:
    bban = "".join(rng.choice("0123456789") for _ in range(18))
    check = 98 - int(bban + "131400") % 97  # D=13, E=14, check digits 00
    return f"DE{check:02d}{bban}"


def cn_resident_id(rng: random.Random) -> str:
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    birth = f"{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    body = rng.choice(["110105", "310104", "440306", "510107"]) + birth + f"{rng.randint(0, 999):03d}"
    return body + "10X98765432"[sum(int(d) * w for d, w in zip(body, weights)) % 11]


def pii_sentence(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return f"客户卡号{luhn_complete(rng.choice(['4', '51', '62']), 16, rng)}已冻结，请尽快处理。"
    if kind == 1:
        iban = german_iban(rng)
        return f"Please transfer the refund to {' '.join(iban[i:i + 4] for i in range(0, len(iban), 4))} today."
    if kind == 2:
        return f"身份证号码{cn_resident_id(rng)}已核验，客户可办理开户。"
    if kind == 3:
        return f"联系电话1{rng.choice('3589')}{rng.randint(0, 999999999):09d}，工作日可拨打。"
    if kind == 4:
        return f"Call me back on +44 20 7946 {rng.randint(0, 9999):04d} after five."
    return f"My e-mail is user{rng.randint(0, 10**6)}@example.com, send the statement there."


def clean_sentence(rng: random.Random) -> str:
    return rng.choice([
        f"Your balance is {rng.randint(0, 10**7) / 100:.2f} EUR as of 2024-{rng.randint(1, 12):02d}-15.",
        f"订单号{rng.randint(10**9, 10**10 - 1)}已发货，预计三天内送达。",
        "The customer asked how to raise the daily transfer limit on the mobile app.",
        "请问信用卡的年费可以减免吗？我每个月消费都超过五千元。",
        f"Transaction ref {rng.randint(10**5, 10**6)} was declined by the merchant at 12:{rng.randint(0, 59):02d}.",
        "Interest is calculated daily and paid on the first business day of each month.",
    ])


def record(index: int, rng: random.Random) -> dict:
    turns = [clean_sentence(rng) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.33:
        turns.insert(rng.randrange(len(turns) + 1), pii_sentence(rng))
    return {
        "id": index,
        "messages": [{"role": "user" if n % 2 == 0 else "assistant", "content": text} for n, text in enumerate(turns)],
        "meta": {"channel": rng.choice(["app", "web", "branch"]), "lang": rng.choice(["zh", "en"])},
    }


def write_dataset(path: Path, megabytes: float, seed: int) -> tuple[int, int]:
    """Write about megabytes of JSONL records; returns (records, bytes)."""
    rng, written, count = random.Random(seed), 0, 0
    with path.open("w", encoding="utf-8") as out:
        while written < megabytes * MB:
            line = json.dumps(record(count, rng), ensure_ascii=False) + "\n"
            out.write(line)
            written += len(line.encode("utf-8"))
            count += 1
    return count, written


def scan_in_subprocess(path: Path) -> dict:
    """Scan path in a fresh interpreter; its wall time and peak RSS, untouched by this process's generation."""
    output = subprocess.run(
        [sys.executable, __file__, "--scan", str(path)], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def scan_here(path: Path) -> None:
    from workers.pipelines.pii import scan_jsonl

    import_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    result = scan_jsonl(path)
    seconds = time.perf_counter() - started
    print(json.dumps({
        "seconds": seconds,
        "records": result.scanned_records,
        "records_with_pii": result.records_with_pii,
        "counts": result.counts,
        "engine": result.engine,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "import_rss_mb": import_rss,
    }))


def main() -> None:
    from bench.stack import emit, log

    with tempfile.TemporaryDirectory(prefix="pii-bench-") as scratch:
        small_path, full_path = Path(scratch) / "small.jsonl", Path(scratch) / "full.jsonl"
        started = time.perf_counter()
        write_dataset(small_path, TARGET_MB * SMALL_FRACTION, seed=1)
        records, size = write_dataset(full_path, TARGET_MB, seed=2)
        log(f"Wrote {records} records, {size / MB:.1f} MB in {time.perf_counter() - started:.1f} s")
        small = scan_in_subprocess(small_path)
        full = scan_in_subprocess(full_path)
    log(f"Found {full['counts']} in {full['records_with_pii']} of {full['records']} records, {full['seconds']:.1f} s")
    records_per_s = full["records"] / full["seconds"]
    emit({
        "records_per_s": round(records_per_s),
        "peak_rss_mb": round(full["peak_rss_mb"], 1),
        "file_mb": round(size / MB, 1),
        "peak_rss_small_mb": round(small["peak_rss_mb"], 1),
        "import_rss_mb": round(full["import_rss_mb"], 1),
        "pii_records_per_s": round(records_per_s),
        "pii_mb_per_s": round(size / MB / full["seconds"], 2),
        "pii_peak_rss_mb": round(full["peak_rss_mb"], 1),
        "records": full["records"],
        "records_with_pii": full["records_with_pii"],
        "mb": round(size / MB, 1),
        "engine": full["engine"],
    })


if __name__ == "__main__":
    if sys.argv[1:2] == ["--scan"]:
        scan_here(Path(sys.argv[2]))
    else:
        main()
