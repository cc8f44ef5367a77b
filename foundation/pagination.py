"""Lists as the contract has them: JSON arrays of at most `?limit=` rows (default 100, at most 1000), and a
`Link: <url>; rel="next"` header while more rows exist; `?cursor=` continues from there. Cursors point at a
position in a stable ordering, so rows added meanwhile never shift a page."""
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response

from foundation.errors import InvalidInput

DEFAULT_LIMIT = 100
# The OpenAPI response of a list whose rows are documents (not serializers): a JSON array of objects.
ARRAY_OF_OBJECTS = {200: {"type": "array", "items": {"type": "object", "additionalProperties": {}}}}
MAX_LIMIT = 1000
LIST_PARAMETERS = [
    OpenApiParameter("limit", OpenApiTypes.INT, description=f"Rows per page, 1-{MAX_LIMIT} (default {DEFAULT_LIMIT})."),
    OpenApiParameter("cursor", OpenApiTypes.STR, description="Where to continue: the cursor in the previous "
                     "page's Link: rel=\"next\" URL."),
]


def list_parameters(*filters: OpenApiParameter) -> list[OpenApiParameter]:
    """The OpenAPI parameters of a paginated list: its filters, then limit and cursor."""
    return [*filters, *LIST_PARAMETERS]


def filter_parameter(name: str, description: str, kind=OpenApiTypes.STR) -> OpenApiParameter:
    return OpenApiParameter(name, kind, description=description)


class _ArrayCursorPagination(CursorPagination):
    page_size = DEFAULT_LIMIT
    max_page_size = MAX_LIMIT
    page_size_query_param = "limit"
    cursor_query_param = "cursor"

    def __init__(self, ordering: tuple[str, ...]):
        self.ordering = ordering

    def get_page_size(self, request):
        raw = request.query_params.get(self.page_size_query_param)
        if raw in (None, ""):
            return self.page_size
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or not 1 <= value <= self.max_page_size:
            raise InvalidInput(f"limit must be a whole number from 1 to {self.max_page_size}, not {raw!r}.",
                               field="limit")
        return value

    def decode_cursor(self, request):
        try:
            return super().decode_cursor(request)
        except NotFound:
            raise InvalidInput("cursor is not one this API handed out; start again without it.",
                               field="cursor") from None

    def get_paginated_response(self, data):
        next_link = self.get_next_link()
        return Response(data, headers={"Link": f'<{next_link}>; rel="next"'} if next_link else None)


def paginated_response(request, queryset, *, ordering: tuple[str, ...], serialize) -> Response:
    """One page of `queryset` in `ordering` (its last field unique), each row turned into JSON by `serialize`."""
    paginator = _ArrayCursorPagination(ordering)
    page = paginator.paginate_queryset(queryset, request)
    return paginator.get_paginated_response(serialize(page))
