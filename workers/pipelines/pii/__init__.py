"""Find and redact personal data (PII) in JSONL datasets before they train or calibrate a model.

Looks in every string (and integer) value of each record, nested, for bank card numbers, IBANs, phone numbers,
e-mail addresses, mainland China resident ID numbers and the custom patterns the spec names.

Engine: phonenumbers (Google's libphonenumber metadata) for phones, and checksums written here for the rest.
Presidio's analyzer was tried first and left out: it imports spaCy even with its NoOpNlpEngine (some twenty
packages), its card and e-mail patterns use \\b, so they miss "客户卡号4111111111111111已冻结" (CJK letters are
word characters), its card pattern stops at 17 digits, and its e-mail check (tldextract) reaches for the public
suffix list over the network. Replacing all of those recognizers would have left Presidio doing little more
than looping over them. Checksums decide for cards (Luhn), IBANs (ISO 13616 mod 97) and CN IDs (GB 11643).
"""

from workers.pipelines.pii.checks import (
    CARD_NUMBER,
    CN_RESIDENT_ID,
    EMAIL,
    IBAN,
    PHONE_NUMBER,
    card_number_valid,
    cn_resident_id_valid,
    iban_valid,
    luhn_valid,
    mask_value,
    placeholder,
)
from workers.pipelines.pii.dataset import (
    MAX_FINDINGS,
    STRATEGIES,
    PiiFinding,
    PiiScanResult,
    RedactedRecords,
    engine_description,
    redact_jsonl,
    redact_records,
    scan_jsonl,
    scan_records,
)
from workers.pipelines.pii.scanner import (
    BUILTIN_TYPES,
    DEFAULT_REGIONS,
    EU_REGIONS,
    PiiScanner,
    PiiScanSpec,
    selected_types,
    validate_pii_scan_spec,
)

__all__ = [
    "BUILTIN_TYPES", "CARD_NUMBER", "CN_RESIDENT_ID", "DEFAULT_REGIONS", "EMAIL", "EU_REGIONS", "IBAN",
    "MAX_FINDINGS", "PHONE_NUMBER", "STRATEGIES", "PiiFinding", "PiiScanResult", "PiiScanSpec", "PiiScanner",
    "RedactedRecords", "card_number_valid", "cn_resident_id_valid", "engine_description", "iban_valid",
    "luhn_valid", "mask_value", "placeholder", "redact_jsonl", "redact_records", "scan_jsonl", "scan_records",
    "selected_types", "validate_pii_scan_spec",
]
