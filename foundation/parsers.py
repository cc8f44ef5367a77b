"""Request body parsers for the API (REST_FRAMEWORK's DEFAULT_PARSER_CLASSES). Imports nothing of DRF's views:
DRF reads this module while it builds its APIView class."""
import json

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser

from foundation.errors import InvalidInput, TooLarge
from foundation.input_text import describe, first_control_character, nesting_depth

# Deeper JSON than this is no request a client of this API sends; refusing it keeps parsing cheap.
MAX_JSON_DEPTH = 32


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser with limits: the body's size, its nesting depth, and no NUL or control characters
    (tab and newlines are fine inside values)."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        if declared and declared.isdigit() and int(declared) > limit:
            raise TooLarge(f"The JSON body is {declared} bytes; the limit is {limit}.")
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise TooLarge(f"The JSON body is over the limit of {limit} bytes.")
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw.decode("utf-8"))
        except RecursionError:
            raise InvalidInput(f"The JSON body nests more than {MAX_JSON_DEPTH} levels deep.", field="body") from None
        except (ValueError, UnicodeDecodeError) as error:
            raise ParseError(f"The body is not valid JSON: {error}") from None
        if nesting_depth(data, limit=MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
            raise InvalidInput(f"The JSON body nests more than {MAX_JSON_DEPTH} levels deep.", field="body")
        found = first_control_character(data)
        if found:
            field, character = found
            raise InvalidInput(f"{field} contains the control character {describe(character)}; remove it.",
                               field=field)
        return data


def _refuse_control_characters_in_fields(data) -> None:
    for key, values in data.lists():
        for text in (key, *values):
            found = first_control_character(text, field=key)
            if found:
                raise InvalidInput(f"{found[0]} contains the control character {describe(found[1])}; remove it.",
                                   field=found[0])


class CheckedFormParser(FormParser):
    """URL-encoded forms, with the same refusal of control characters as JSON bodies."""

    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        _refuse_control_characters_in_fields(data)
        return data


class CheckedMultiPartParser(MultiPartParser):
    """Multipart forms: the fields are checked like JSON values; the files' contents are the services' to judge."""

    def parse(self, stream, media_type=None, parser_context=None):
        parsed = super().parse(stream, media_type, parser_context)
        _refuse_control_characters_in_fields(parsed.data)
        return parsed
