"""Where PII is in a piece of text: the spec, its validation, and the scanner built from it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import phonenumbers
from phonenumbers import Leniency, NumberParseException, PhoneNumberMatcher, PhoneNumberType

from workers.pipelines.errors import PipelineInputError
from workers.pipelines.pii.checks import (
    CARD_MAX_DIGITS,
    CARD_MIN_DIGITS,
    CARD_NUMBER,
    CN_RESIDENT_ID,
    EMAIL,
    IBAN,
    IBAN_LENGTHS,
    PHONE_NUMBER,
    card_number_valid,
    cn_resident_id_valid,
    iban_valid,
)

# Priority order: where two types claim overlapping text, the earlier, more specific one wins (an 18-digit ID
# that happens to pass Luhn is an ID; "13800138000@qq.com" is an e-mail address, not a phone number).
BUILTIN_TYPES = (EMAIL, CN_RESIDENT_ID, IBAN, CARD_NUMBER, PHONE_NUMBER)
_NUMBER_TYPES = frozenset({CN_RESIDENT_ID, IBAN, CARD_NUMBER, PHONE_NUMBER})
EU_REGIONS = (
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
    "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
)
DEFAULT_REGIONS = ("CN", *EU_REGIONS)
CUSTOM_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")

# Digits next to ASCII letters are part of a word or a hash ("a3f4111111111111111b"), not a number; next to
# Chinese characters they are not ("卡号4111111111111111已冻结"), so the boundaries name ASCII explicitly.
_EMAIL_PATTERN = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![A-Za-z0-9\-])"
)
_CN_ID_PATTERN = re.compile(r"(?<![\dA-Za-z])\d{17}[\dXx](?![\dA-Za-z])")
_IBAN_PATTERN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}(?:[ \-]?[A-Za-z0-9]){10,32}")
_CARD_RUN_PATTERN = re.compile(r"(?<![\dA-Za-z])\d+(?:[ \-]\d+)*(?![\dA-Za-z])")
# Digit groups need a separator between them (an area code in parentheses may go without), so a run splits into
# groups one way only and the regex cannot backtrack exponentially over a long digit string.
_PHONE_RUN_PATTERN = re.compile(
    r"(?<![\dA-Za-z+])\+?(?:\(\d{1,5}\)[ \-.\u00a0]?)?\d+"
    r"(?:[ \-.\u00a0]\d+|[ \-.\u00a0]?\(\d{1,5}\)[ \-.\u00a0]?\d+)*(?![\dA-Za-z])"
)
_DIGITS = re.compile(r"\d+")
_NON_DIGITS = re.compile(r"\D")
# The shortest value a built-in type can have: a 6-character e-mail address (a@b.cn), 7-digit phone numbers.
_SHORTEST_BUILTIN = 6
_ANY_DIGIT = re.compile(r"\d")
# Dates and amounts share the shape of grouped phone numbers (libphonenumber's own matcher skips dates too);
# amounts are everywhere in banking text and would each cost a parse per region.
_DATE_LIKE = re.compile(r"\d{4}[\-./]\d{1,2}[\-./]\d{1,2}|\d{1,2}[\-./]\d{1,2}[\-./]\d{4}")
_AMOUNT_LIKE = re.compile(r"\d+\.\d{1,2}")
# A bare national number (no +, no country code) is valid in one of 27 EU numbering plans for nearly every 7-12
# digit string, so it counts as a phone number only when written in its region's standard grouping or after a
# phone word. The exception is a CN mobile number: 11 digits with a narrow 1[3-9] prefix, routinely written bare
# in Chinese text ("电话13800138000").
_PHONE_CONTEXT = re.compile(
    r"(?i)(?<![a-z])(?:tel|phone|mobil|cell|call|fax|handy|rufnummer|t[ée]l|portable|m[óo]vil|celular|"
    r"kom[óo]rk|puhelin|whatsapp|contact)|电话|電話|手机|手機|联系|致电|拨打|热线|座机|传真"
)
_PHONE_CONTEXT_WINDOW = 30
_BARE_MOBILE_PATTERNS = {"CN": re.compile(r"1[3-9]\d{9}")}
_PHONE_MIN_DIGITS, _PHONE_MAX_DIGITS = 7, 17


@dataclass
class PiiScanSpec:
    """What to look for: phone regions for national-format numbers, custom patterns (name -> regex), types."""

    regions: list[str] = field(default_factory=lambda: list(DEFAULT_REGIONS))
    custom_patterns: dict[str, str] = field(default_factory=dict)
    types: list[str] | None = None  # None: every built-in type and every custom pattern


def selected_types(spec: PiiScanSpec) -> list[str]:
    """The types a (valid) spec looks for, in priority order: built-ins first, then custom patterns."""
    wanted = spec.types if spec.types is not None else [*BUILTIN_TYPES, *spec.custom_patterns]
    return [name for name in [*BUILTIN_TYPES, *spec.custom_patterns] if name in wanted]


def validate_pii_scan_spec(spec: PiiScanSpec) -> None:
    """Raise PipelineInputError when the spec names an unknown type or region or a bad custom pattern."""
    if not isinstance(spec.regions, (list, tuple)) or not all(isinstance(r, str) for r in spec.regions):
        raise PipelineInputError(
            f"regions must be a list of region codes such as ['CN', 'DE'], not {spec.regions!r}."
        )
    supported = phonenumbers.SUPPORTED_REGIONS
    for region in spec.regions:
        if region not in supported:
            hint = f" (write it in capitals: {region.upper()!r})" if region.upper() in supported else ""
            raise PipelineInputError(
                f"Unknown phone region {region!r}{hint}; use two-letter ISO 3166 codes such as CN, DE or FR."
            )
    if not isinstance(spec.custom_patterns, dict):
        raise PipelineInputError(
            f"custom_patterns must map a name to a regular expression, not {spec.custom_patterns!r}."
        )
    for name, pattern in spec.custom_patterns.items():
        if not isinstance(name, str) or not CUSTOM_NAME.fullmatch(name):
            raise PipelineInputError(
                f"Custom pattern name {name!r} is not allowed; use lower-case letters, digits and underscores, "
                "starting with a letter (e.g. 'employee_id')."
            )
        if name in BUILTIN_TYPES:
            raise PipelineInputError(f"Custom pattern name {name!r} is a built-in type; choose another name.")
        if not isinstance(pattern, str) or not pattern:
            raise PipelineInputError(f"Custom pattern {name!r} must be a non-empty regular expression.")
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            raise PipelineInputError(
                f"Custom pattern {name!r} is not a valid regular expression ({error})."
            ) from error
        if compiled.fullmatch(""):
            raise PipelineInputError(
                f"Custom pattern {name!r} matches the empty string, so it would flag every value; make it "
                "require at least one character (e.g. use + instead of *)."
            )
    if spec.types is not None:
        known = [*BUILTIN_TYPES, *spec.custom_patterns]
        if not isinstance(spec.types, (list, tuple)) or not spec.types:
            raise PipelineInputError(f"types must be a non-empty list drawn from {', '.join(known)}, or left out.")
        for name in spec.types:
            if name not in known:
                raise PipelineInputError(f"Unknown PII type {name!r}; choose from {', '.join(known)}.")
        for name in spec.custom_patterns:
            if name not in spec.types:
                raise PipelineInputError(
                    f"Custom pattern {name!r} is defined but not in types; add {name!r} to types or drop the "
                    "pattern."
                )


class PiiScanner:
    """Finds the spec's PII types in text; built once per dataset (validates and compiles the spec)."""

    def __init__(self, spec: PiiScanSpec):
        validate_pii_scan_spec(spec)
        self.types = selected_types(spec)
        self.regions = list(spec.regions)
        # Phone-number lengths per region (national significant number) and trunk prefix, to skip regions whose
        # numbers cannot have a candidate's length before asking phonenumbers to parse it.
        self._lengths = {}
        for region in self.regions:
            metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
            self._lengths[region] = (set(metadata.general_desc.possible_length), metadata.national_prefix)
        self._finders = {
            EMAIL: self._emails, CN_RESIDENT_ID: self._cn_ids, IBAN: self._ibans,
            CARD_NUMBER: self._cards, PHONE_NUMBER: self._phones,
        }
        for name in self.types:
            if name not in BUILTIN_TYPES:
                self._finders[name] = _custom_finder(re.compile(spec.custom_patterns[name]))
        # Most values in chat datasets are short labels ("user", "zh"); a custom pattern may match those.
        self._shortest = 1 if any(name not in BUILTIN_TYPES for name in self.types) else _SHORTEST_BUILTIN

    def find(self, text: str) -> list[tuple[str, int, int]]:
        """Non-overlapping (type, start, end) spans of PII in text, in order of position."""
        found: list[tuple[str, int, int]] = []
        if len(text) < self._shortest:
            return found
        has_digit = _ANY_DIGIT.search(text) is not None
        for pii_type in self.types:
            if pii_type in _NUMBER_TYPES and not has_digit:
                continue
            for start, end in self._finders[pii_type](text, found):
                if not _overlaps(found, start, end):
                    found.append((pii_type, start, end))
        return sorted(found, key=lambda span: span[1])

    def _emails(self, text, found):
        if "@" not in text:
            return ()
        return ((m.start(), m.end()) for m in _EMAIL_PATTERN.finditer(text))

    def _cn_ids(self, text, found):
        return ((m.start(), m.end()) for m in _CN_ID_PATTERN.finditer(text) if cn_resident_id_valid(m.group()))

    def _ibans(self, text, found):
        position = 0
        while match := _IBAN_PATTERN.search(text, position):
            start = match.start()
            length = IBAN_LENGTHS.get(text[start:start + 2].upper())
            end = _end_after_alphanumerics(text, start, length) if length else None
            # The IBAN ends at its country's length; a letter or digit glued on after it means it is not one.
            if end and not (end < len(text) and text[end].isascii() and text[end].isalnum()) \
                    and iban_valid(text[start:end]):
                yield start, end
                position = end
            else:
                position = start + 1

    def _cards(self, text, found):
        for match in _CARD_RUN_PATTERN.finditer(text):
            if len(match.group()) >= CARD_MIN_DIGITS:
                yield from _group_spans(text, match, CARD_MIN_DIGITS, CARD_MAX_DIGITS,
                                        lambda span: card_number_valid(_NON_DIGITS.sub("", span)))

    def _phones(self, text, found):
        for match in _PHONE_RUN_PATTERN.finditer(text):
            start, end = match.span()
            if not _overlaps(found, start, end) and self._is_phone(text, start, end):
                yield start, end
                continue
            # A phone number written right after another number ("ref 2024 13800138000") joins its run.
            for group in _DIGITS.finditer(text, start, end):
                if group.span() != (start, end) and len(group.group()) >= _PHONE_MIN_DIGITS \
                        and not _overlaps(found, *group.span()) and self._is_phone(text, *group.span()):
                    yield group.span()

    def _is_phone(self, text: str, start: int, end: int) -> bool:
        """Whether text[start:end] is a valid phone number written the way a phone number is (see above)."""
        candidate = text[start:end]
        digits = "".join(_DIGITS.findall(candidate))
        if not _PHONE_MIN_DIGITS <= len(digits) <= _PHONE_MAX_DIGITS or _DATE_LIKE.match(candidate) \
                or _AMOUNT_LIKE.fullmatch(candidate):
            return False
        if candidate.startswith("+"):
            return _parses_valid(candidate, None) is not None
        grouped = len(_DIGITS.findall(candidate)) > 1
        context = _PHONE_CONTEXT.search(text, max(0, start - _PHONE_CONTEXT_WINDOW), start) is not None
        if not grouped and not context:
            for region, pattern in _BARE_MOBILE_PATTERNS.items():
                if region in self.regions and pattern.fullmatch(digits):
                    number = _parses_valid(candidate, region)
                    if number and phonenumbers.number_type(number) == PhoneNumberType.MOBILE:
                        return True
            return False
        for region in self.regions:
            lengths, prefix = self._lengths[region]
            plausible = len(digits) in lengths or digits.startswith("00") or (
                prefix and digits.startswith(prefix) and len(digits) - len(prefix) in lengths
            )
            if plausible and _parses_valid(candidate, region) is not None:
                if context or any(
                    m.start == 0 and m.end == len(candidate)
                    for m in PhoneNumberMatcher(candidate, region, leniency=Leniency.EXACT_GROUPING)
                ):
                    return True
        return False


def _custom_finder(pattern: re.Pattern):
    def find(text, found):
        return ((m.start(), m.end()) for m in pattern.finditer(text) if m.end() > m.start())

    return find


def _parses_valid(candidate: str, region: str | None):
    try:
        number = phonenumbers.parse(candidate, region)
    except NumberParseException:
        return None
    return number if phonenumbers.is_valid_number(number) else None


def _overlaps(found, start: int, end: int) -> bool:
    return any(start < other_end and other_start < end for _, other_start, other_end in found)


def _end_after_alphanumerics(text: str, start: int, count: int) -> int | None:
    """Index just past the count-th letter or digit from start, skipping single spaces/dashes; None if cut short."""
    seen, position = 0, start
    while position < len(text) and seen < count:
        character = text[position]
        if character.isascii() and character.isalnum():
            seen += 1
        elif character not in " -" or text[position - 1] in " -":
            return None
        position += 1
    return position if seen == count else None


def _group_spans(text, match, min_digits, max_digits, is_valid):
    """Valid spans made of whole digit groups of a run, left to right, longest first (a run may hold two numbers)."""
    groups = [group.span() for group in _DIGITS.finditer(text, match.start(), match.end())]
    first = 0
    while first < len(groups):
        digits, spans = 0, []
        for last in range(first, len(groups)):
            digits += groups[last][1] - groups[last][0]
            if digits > max_digits:
                break
            if digits >= min_digits:
                spans.append(last)
        for last in reversed(spans):
            if is_valid(text[groups[first][0]:groups[last][1]]):
                yield groups[first][0], groups[last][1]
                first = last
                break
        first += 1
