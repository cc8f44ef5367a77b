"""PII scanning and redaction of datasets: checksums, detection in Chinese and English text, masks, records."""

import datetime
import json
import re
import tracemalloc

import pytest

from workers.pipelines.errors import JobCancelled, PipelineInputError
from workers.pipelines.pii import (
    BUILTIN_TYPES,
    CARD_NUMBER,
    CN_RESIDENT_ID,
    EMAIL,
    IBAN,
    PHONE_NUMBER,
    PiiScanner,
    PiiScanSpec,
    card_number_valid,
    cn_resident_id_valid,
    iban_valid,
    mask_value,
    redact_jsonl,
    redact_records,
    scan_jsonl,
    scan_records,
    validate_pii_scan_spec,
)

CARD = "4111111111111111"
IBAN_GB = "GB82WEST12345698765432"
CN_ID = "11010519491231002X"


def found(text, spec=None):
    """(type, matched text) pairs the scanner reports in text."""
    return [(pii_type, text[start:end]) for pii_type, start, end in PiiScanner(spec or PiiScanSpec()).find(text)]


def jsonl(*records):
    return [json.dumps(record, ensure_ascii=False) + "\n" for record in records]


# --- Checksums -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("number", [
    "4111111111111111", "5500000000000004", "378282246310005", "6011111111111117", "4222222222222",
    "6222021000000005", "6212345678901234569",
])
def test_known_test_card_numbers_are_valid(number):
    assert card_number_valid(number)


@pytest.mark.parametrize("number", [
    "4111111111111112",  # last digit off
    "4111111111111121",  # two digits swapped
    "5500000000000005",
    "0000000000000000",  # passes Luhn, but no card starts with 0
    "411111111111",  # 12 digits
    "41111111111111111113",  # 20 digits
])
def test_card_numbers_that_fail_luhn_or_length_are_invalid(number):
    assert not card_number_valid(number)


@pytest.mark.parametrize("iban", [
    IBAN_GB, "DE89370400440532013000", "DE89 3704 0044 0532 0130 00", "gb82west12345698765432",
])
def test_known_ibans_are_valid(iban):
    assert iban_valid(iban)


@pytest.mark.parametrize("iban", [
    "GB82WEST12345698765433",  # one digit off
    "DE89370400440532013001",
    "DE8937040044053201300",  # one character short for Germany
    "XX82WEST12345698765432",  # no such country
])
def test_ibans_failing_mod_97_or_length_are_invalid(iban):
    assert not iban_valid(iban)


def test_known_cn_resident_ids_are_valid():
    assert cn_resident_id_valid(CN_ID)
    assert cn_resident_id_valid(CN_ID.lower())
    assert cn_resident_id_valid("440306199001011236")


@pytest.mark.parametrize("value", [
    "110105194912310021",  # wrong check digit
    "110105194902310026",  # right check digit, but 31 February 1949
    "990105194912310023",  # right check digit, no province 99
    "11010519491231002",  # 17 characters
])
def test_cn_resident_ids_with_bad_check_digit_or_date_are_invalid(value):
    assert not cn_resident_id_valid(value)


def test_cn_resident_id_born_in_the_future_is_invalid():
    assert not cn_resident_id_valid("110105209912310029", today=datetime.date(2026, 1, 1))


# --- Detection in text ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("客户卡号4111111111111111已冻结", [(CARD_NUMBER, CARD)]),
    ("Card 5500 0000 0000 0004 was blocked.", [(CARD_NUMBER, "5500 0000 0000 0004")]),
    ("卡号：4111-1111-1111-1111，请核实", [(CARD_NUMBER, "4111-1111-1111-1111")]),
    ("银联卡6212345678901234569", [(CARD_NUMBER, "6212345678901234569")]),
    ("卡号：４１１１１１１１１１１１１１１１", [(CARD_NUMBER, "４１１１１１１１１１１１１１１１")]),
    ("paid with 4111 1111 1111 1111 20 times", [(CARD_NUMBER, "4111 1111 1111 1111")]),
    ("IBAN: GB82WEST12345698765432.", [(IBAN, IBAN_GB)]),
    ("请汇款至 DE89 3704 0044 0532 0130 00，谢谢", [(IBAN, "DE89 3704 0044 0532 0130 00")]),
    ("from GB82WEST12345698765432 to DE89370400440532013000",
     [(IBAN, IBAN_GB), (IBAN, "DE89370400440532013000")]),
    ("身份证号：11010519491231002X，已核验", [(CN_RESIDENT_ID, CN_ID)]),
    ("ID 440306199001011252 on file", [(CN_RESIDENT_ID, "440306199001011252")]),  # also passes Luhn: an ID
    ("联系电话 +86 138 0013 8000", [(PHONE_NUMBER, "+86 138 0013 8000")]),
    ("Please call +44 20 7946 0958 today", [(PHONE_NUMBER, "+44 20 7946 0958")]),
    ("电话13800138000", [(PHONE_NUMBER, "13800138000")]),
    ("请拨打 138-0013-8000", [(PHONE_NUMBER, "138-0013-8000")]),
    ("Tel: 030 12345678", [(PHONE_NUMBER, "030 12345678")]),
    ("Mon numéro: 01 23 45 67 89", [(PHONE_NUMBER, "01 23 45 67 89")]),
    ("ref 2024 13800138000", [(PHONE_NUMBER, "13800138000")]),
    ("Contact john.doe@example.com for details", [(EMAIL, "john.doe@example.com")]),
    ("邮箱john@example.com谢谢", [(EMAIL, "john@example.com")]),
    ("QQ邮箱13800138000@qq.com", [(EMAIL, "13800138000@qq.com")]),  # the digits belong to the address
])
def test_scanner_finds_pii_in_chinese_and_english_text(text, expected):
    assert found(text) == expected


@pytest.mark.parametrize("text", [
    "客户卡号4111111111111112已冻结",  # fails Luhn
    "txn a4111111111111111b",  # part of a hash, not a number
    "IBAN GB82WEST12345698765433",  # fails mod 97
    "IBAN GB82WEST12345698765432X",  # a letter glued on: not that IBAN
    "amount 12345678",  # valid somewhere in 27 numbering plans, but written like no phone number
    "order 20240131",
    "balance 1234567.89",
    "posted 2024-01-31 12:00",
    "write to john@localhost",
    "The statement balance is due next week.",
])
def test_scanner_reports_nothing_in_lookalikes(text):
    assert found(text) == []


def test_long_digit_runs_glued_to_letters_are_scanned_without_catastrophic_backtracking():
    # An earlier phone pattern let digit groups follow each other without a separator, so a failed match
    # backtracked over every way of splitting the run: its time doubled with each digit (2 s at 24 digits), so
    # this run of 28 would take half a minute and the long runs below would never finish. (Speed itself is
    # measured in bench/pii.py, not asserted here.)
    assert found("1" * 28 + "abc") == []
    assert found(("1" * 400 + "abc ") * 50) == []


def test_ids_with_a_bad_check_digit_or_date_are_not_reported_as_ids():
    spec = PiiScanSpec(types=[CN_RESIDENT_ID])
    assert found("身份证110105194912310021", spec) == []
    assert found("身份证110105194902310026", spec) == []


def test_national_phone_numbers_follow_the_configured_regions():
    assert found("Tel: 030 12345678", PiiScanSpec(regions=["CN"])) == []
    assert found("Tel: 030 12345678", PiiScanSpec(regions=["DE"])) == [(PHONE_NUMBER, "030 12345678")]
    assert found("电话13800138000", PiiScanSpec(regions=["DE"])) == []
    # International format names its country, so it counts whatever the regions.
    assert found("call +44 20 7946 0958", PiiScanSpec(regions=["CN"])) == [(PHONE_NUMBER, "+44 20 7946 0958")]


def test_scanner_reports_offsets_of_each_value():
    text = "客户卡号4111111111111111已冻结"
    assert PiiScanner(PiiScanSpec()).find(text) == [(CARD_NUMBER, 4, 20)]


def test_custom_patterns_are_found_by_name():
    spec = PiiScanSpec(custom_patterns={"employee_id": r"EMP-\d{6}"})
    assert found("员工EMP-123456已离职", spec) == [("employee_id", "EMP-123456")]


def test_types_limit_what_is_looked_for():
    text = f"card {CARD} mail a.b@example.com"
    assert found(text, PiiScanSpec(types=[EMAIL])) == [(EMAIL, "a.b@example.com")]


# --- Masks ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pii_type, value, masked", [
    (CARD_NUMBER, "4111 1111 1111 1111", "4111 **** **** 1111"),
    (CARD_NUMBER, CARD, "4111********1111"),
    (IBAN, IBAN_GB, "GB82**************5432"),
    (CN_RESIDENT_ID, CN_ID, "110105***********X"),
    (PHONE_NUMBER, "+86 138 0013 8000", "+** *** **** 8000"),
    (PHONE_NUMBER, "13800138000", "*******8000"),
    (EMAIL, "john.doe@example.com", "j***@example.com"),
    (EMAIL, "j@example.com", "***@example.com"),
    ("employee_id", "EMP-123456", "**********"),
])
def test_masks_keep_only_a_few_characters(pii_type, value, masked):
    assert mask_value(pii_type, value) == masked


def test_findings_never_hold_the_full_value():
    values = [CARD, "5500 0000 0000 0004", IBAN_GB, CN_ID, "+44 20 7946 0958", "13800138000", "john.doe@example.com"]
    result = scan_records([{"text": f"客户信息 {value} 已登记"} for value in values])
    assert result.counts[CARD_NUMBER] == 2 and sum(result.counts.values()) == len(values)
    for finding, value in zip(result.findings, values):
        assert value not in finding.masked
        assert re.sub(r"\W", "", value) not in re.sub(r"\W", "", finding.masked)


# --- Datasets ---------------------------------------------------------------------------------------------------


def test_scan_reports_nested_field_paths_and_line_numbers():
    lines = [
        json.dumps({"text": "hello"}) + "\n",
        "\n",  # blank lines are not records but still count for line numbers
        json.dumps({
            "choices": ["a", "b", f"卡号{CARD}"],
            "meta": {"customer": {"email": "li.lei@example.cn"}, "a.b": "电话13800138000"},
            "messages": [{"role": "user", "content": f"身份证{CN_ID}"}],
            "phone": 13800138000,
            "verified": True,
        }, ensure_ascii=False) + "\n",
    ]
    result = scan_records(lines)
    assert result.scanned_records == 2
    assert [(f.record, f.field, f.type) for f in result.findings] == [
        (3, "choices[2]", CARD_NUMBER),
        (3, "meta.customer.email", EMAIL),
        (3, 'meta["a.b"]', PHONE_NUMBER),
        (3, "messages[0].content", CN_RESIDENT_ID),
        (3, "phone", PHONE_NUMBER),
    ]
    assert result.findings[0].start == 2 and result.findings[0].end == 18


def test_clean_dataset_has_status_clean_and_zero_counts():
    result = scan_records(jsonl({"text": "The customer asked about fees."}, {"text": "余额查询"}))
    assert result.status == "clean"
    assert result.counts == dict.fromkeys(BUILTIN_TYPES, 0)
    assert result.scanned_records == 2 and result.findings == []
    assert result.engine["name"] == "workers.pipelines.pii" and result.engine["version"]


def test_dataset_with_pii_has_status_found_and_exact_counts():
    result = scan_records(jsonl({"text": f"卡号{CARD}"}, {"text": "clean"}, {"a": "x@example.com", "b": CARD}))
    assert result.status == "found"
    assert result.counts[CARD_NUMBER] == 2 and result.counts[EMAIL] == 1
    assert result.records_with_pii == 2
    assert result.as_dict()["findings"][0]["masked"] == "4111********1111"


def test_findings_are_capped_while_counts_stay_exact():
    result = scan_records(jsonl(*[{"text": f"卡号{CARD}"}] * 25), max_findings=10)
    assert result.counts[CARD_NUMBER] == 25
    assert len(result.findings) == 10 and result.findings_truncated


def test_scan_accepts_parsed_records_and_bytes_lines():
    assert scan_records([{"text": CARD}]).counts[CARD_NUMBER] == 1
    assert scan_records([json.dumps({"text": CARD}).encode()]).counts[CARD_NUMBER] == 1


def test_byte_order_mark_on_the_first_line_is_ignored():
    assert scan_records(["\ufeff" + json.dumps({"text": CARD})]).counts[CARD_NUMBER] == 1
    assert scan_records([b"\xef\xbb\xbf" + json.dumps({"text": CARD}).encode()]).counts[CARD_NUMBER] == 1


def test_invalid_json_line_is_refused_with_its_line_number():
    with pytest.raises(PipelineInputError, match="Line 2 of the dataset is not valid JSON"):
        scan_records(['{"text": "ok"}\n', '{"text": \n'])


def test_non_utf8_line_is_refused():
    with pytest.raises(PipelineInputError, match="Line 1 .* not UTF-8"):
        scan_records([b'{"text": "\xff\xfe"}\n'])


def test_scan_jsonl_reports_progress_by_bytes(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(jsonl(*[{"text": f"记录 {index} 卡号{CARD}"} for index in range(500)])), encoding="utf-8")
    calls = []
    result = scan_jsonl(path, report=lambda percent, message: calls.append((percent, message)))
    assert result.counts[CARD_NUMBER] == 500
    percents = [percent for percent, _ in calls]
    assert percents[0] == 0 and percents[-1] == 100 and percents == sorted(percents) and len(percents) > 10
    assert "records" in calls[1][1]


def test_cancelling_from_the_progress_callback_stops_the_scan(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(jsonl(*[{"text": "x"}] * 200)), encoding="utf-8")

    def report(percent, message):
        if percent >= 50:
            raise JobCancelled()

    with pytest.raises(JobCancelled):
        scan_jsonl(path, report=report)


def test_scan_streams_records_with_flat_memory():
    def lines(count):
        for index in range(count):
            yield json.dumps({"id": index, "text": f"客户{index}卡号{CARD}，邮箱u{index}@example.com"}) + "\n"

    def peak_bytes(count):
        tracemalloc.start()
        try:
            result = scan_records(lines(count), max_findings=100)
            return result, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    scan_records(lines(50))  # phonenumbers loads its metadata on first use; that is not the dataset's cost
    _, small_peak = peak_bytes(500)
    result, large_peak = peak_bytes(2000)
    assert result.counts[CARD_NUMBER] == 2000 and len(result.findings) == 100
    # Keeping the 1,500 extra records (about 140 kB of text) or their findings would show here.
    assert large_peak < small_peak + 50_000


# --- Spec validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, message", [
    (PiiScanSpec(types=["passport"]), "Unknown PII type 'passport'; choose from email"),
    (PiiScanSpec(types=[]), "types must be a non-empty list"),
    (PiiScanSpec(regions=["XX"]), "Unknown phone region 'XX'"),
    (PiiScanSpec(regions=["cn"]), r"write it in capitals: 'CN'"),
    (PiiScanSpec(regions="CN"), "regions must be a list"),
    (PiiScanSpec(custom_patterns={"employee_id": "EMP-(\\d"}), "'employee_id' is not a valid regular expression"),
    (PiiScanSpec(custom_patterns={"employee_id": "\\d*"}), "matches the empty string"),
    (PiiScanSpec(custom_patterns={"Employee ID": "EMP"}), "Custom pattern name 'Employee ID' is not allowed"),
    (PiiScanSpec(custom_patterns={"email": "x+"}), "'email' is a built-in type"),
    (PiiScanSpec(custom_patterns={"staff": "S\\d+"}, types=[EMAIL]), "'staff' is defined but not in types"),
])
def test_invalid_specs_are_refused_with_what_to_fix(spec, message):
    with pytest.raises(PipelineInputError, match=message):
        validate_pii_scan_spec(spec)
    with pytest.raises(PipelineInputError, match=message):
        scan_records([], spec)


def test_default_spec_is_valid_and_covers_cn_and_the_eu():
    spec = PiiScanSpec()
    validate_pii_scan_spec(spec)
    assert spec.regions[0] == "CN" and len(spec.regions) == 28 and "DE" in spec.regions


# --- Redaction ---------------------------------------------------------------------------------------------------

PII_RECORDS = [
    {"text": f"客户卡号{CARD}已冻结", "meta": {"email": "john.doe@example.com"}},
    {"text": "The customer asked about fees.", "turns": ["电话13800138000", "ok"]},
    {"text": f"IBAN {IBAN_GB}, 身份证{CN_ID}", "score": 3},
]


def test_mask_strategy_masks_each_value_in_place():
    redacted = redact_records(jsonl(*PII_RECORDS), "mask")
    records = list(redacted)
    assert records[0] == {"text": "客户卡号4111********1111已冻结", "meta": {"email": "j***@example.com"}}
    assert records[1] == {"text": "The customer asked about fees.", "turns": ["电话*******8000", "ok"]}
    assert records[2] == {"text": "IBAN GB82**************5432, 身份证110105***********X", "score": 3}
    assert redacted.counts == {EMAIL: 1, CN_RESIDENT_ID: 1, IBAN: 1, CARD_NUMBER: 1, PHONE_NUMBER: 1}
    assert scan_records(records).status == "clean"


def test_replace_strategy_writes_type_placeholders():
    records = list(redact_records(jsonl(*PII_RECORDS), "replace"))
    assert records[0]["text"] == "客户卡号<CARD_NUMBER>已冻结"
    assert records[0]["meta"]["email"] == "<EMAIL>"
    assert records[2]["text"] == "IBAN <IBAN>, 身份证<CN_RESIDENT_ID>"
    assert scan_records(records).status == "clean"


def test_drop_record_strategy_leaves_out_records_with_pii():
    redacted = redact_records(PII_RECORDS + [{"text": "clean"}], "drop_record")
    records = list(redacted)
    assert records == [{"text": "clean"}]
    assert (redacted.records_in, redacted.records_out, redacted.dropped_records) == (4, 1, 3)
    assert scan_records(records).status == "clean"


def test_redacting_some_types_leaves_the_others():
    records = list(redact_records(PII_RECORDS, "replace", [EMAIL, PHONE_NUMBER]))
    assert records[0]["meta"]["email"] == "<EMAIL>" and CARD in records[0]["text"]
    rescan = scan_records(records)
    assert rescan.counts[EMAIL] == 0 and rescan.counts[PHONE_NUMBER] == 0
    assert rescan.counts[CARD_NUMBER] == 1


def test_integer_holding_pii_is_redacted_as_text():
    assert list(redact_records([{"phone": 13800138000, "n": 7}], "mask")) == [{"phone": "*******8000", "n": 7}]


def test_custom_patterns_are_redacted():
    spec = PiiScanSpec(custom_patterns={"employee_id": r"EMP-\d{6}"})
    records = list(redact_records([{"text": "员工EMP-123456已离职"}], "replace", spec=spec))
    assert records == [{"text": "员工<EMPLOYEE_ID>已离职"}]
    assert scan_records(records, spec).status == "clean"


def test_unknown_strategy_or_type_is_refused():
    with pytest.raises(PipelineInputError, match="Unknown redaction strategy 'hash'; choose one of mask"):
        redact_records([], "hash")
    with pytest.raises(PipelineInputError, match="Cannot redact \\['passport'\\]"):
        redact_records([], "mask", ["passport"])


def test_redact_jsonl_writes_a_dataset_that_scans_clean(tmp_path):
    source, destination = tmp_path / "raw.jsonl", tmp_path / "out" / "redacted.jsonl"
    source.write_text("".join(jsonl(*PII_RECORDS)), encoding="utf-8")
    summary = redact_jsonl(source, destination, "mask")
    assert summary["records_in"] == 3 and summary["records_out"] == 3 and sum(summary["counts"].values()) == 5
    assert scan_jsonl(destination).status == "clean"
    assert "客户卡号" in destination.read_text(encoding="utf-8")  # written as UTF-8, not \\u escapes
    assert [path.name for path in destination.parent.iterdir()] == ["redacted.jsonl"]


def test_redact_jsonl_leaves_no_output_when_the_source_is_bad(tmp_path):
    source, destination = tmp_path / "raw.jsonl", tmp_path / "redacted.jsonl"
    source.write_text('{"text": "ok"}\nnot json\n', encoding="utf-8")
    with pytest.raises(PipelineInputError, match="Line 2"):
        redact_jsonl(source, destination, "mask")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["raw.jsonl"]
