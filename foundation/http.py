"""The HTTP boundary: every error from every URL in the contract's shape, and bad input refused before a view.

API clients get `{error, detail, field?}` JSON; browsers (which ask for text/html) get a plain page that shows
no internals. A request whose path or query holds a control character never reaches a view or the database; a
JSON body that is too large, nests too deeply or holds a NUL byte is refused by foundation.parsers.
"""
import html
import logging

from django.conf import settings
from django.core.exceptions import DisallowedHost, RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse

from foundation.error_responses import DATABASE_LOST, status_for
from foundation.errors import DomainError
from foundation.input_text import control_character_in, describe

logger = logging.getLogger(__name__)

ERROR_CODES = {400: "invalid", 401: "not_authenticated", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
               422: "unprocessable", 429: "throttled", 500: "server_error", 503: "unavailable"}
DEFAULT_DETAILS = {
    400: "The request is malformed.",
    401: "Authentication credentials were not provided or are invalid.",
    403: "You may not do this.",
    404: "Nothing is here. The API lives under /api/v1/ (documentation at /api/docs/).",
    405: "This method is not allowed here.",
    413: "The request body is too large.",
    415: "This content type is not accepted here.",
    429: "Too many requests; slow down and retry.",
    500: "The server failed to handle the request; nothing was changed. The administrators have the log.",
    503: "A service the registry depends on is unavailable; nothing was changed. Retry shortly.",
}


def wants_json(request) -> bool:
    """API paths always answer JSON; elsewhere a browser (Accept: text/html) gets HTML, any other client JSON."""
    path = request.path_info
    if path.startswith("/api/") or path in ("/healthz", "/metrics"):
        return True
    return "text/html" not in request.META.get("HTTP_ACCEPT", "")


def error_response(request, status: int, detail: str | None = None, *, code: str | None = None,
                   field: str | None = None, headers: dict | None = None) -> HttpResponse:
    code = code or ERROR_CODES.get(status, "error")
    detail = detail or DEFAULT_DETAILS.get(status, "The request failed.")
    if wants_json(request):
        body = {"error": code, "detail": detail}
        if field:
            body["field"] = field
        response = JsonResponse(body, status=status)
    else:
        title = html.escape(f"{status} {code.replace('_', ' ')}")
        response = HttpResponse(
            f"<!doctype html><html lang=en><meta charset=utf-8><title>{title}</title>"
            f"<body style='font-family:sans-serif;max-width:40em;margin:3em auto'><h1>{title}</h1>"
            f"<p>{html.escape(detail)}</p><p><a href='/admin/'>Admin</a> · <a href='/portal/'>Regulator portal</a>"
            " · <a href='/api/docs/'>API documentation</a></p></body></html>",
            status=status, content_type="text/html; charset=utf-8")
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _is_json(response) -> bool:
    return response.get("Content-Type", "").startswith("application/json")


class ErrorShapeMiddleware:
    """Outermost: errors raised or answered anywhere below come out in the contract's shape."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.status_code >= 400 and wants_json(request) and not _is_json(response):
            # Django's own answers (CSRF failure, 405 from a plain view) are HTML; say the same in JSON.
            headers = {"Allow": response["Allow"]} if response.has_header("Allow") else None
            return error_response(request, response.status_code, headers=headers)
        return response

    def process_exception(self, request, exception):
        if isinstance(exception, OperationalError | InterfaceError):
            logger.warning("database unavailable during %s %s: %s", request.method, request.path, exception)
            return error_response(request, 503, DATABASE_LOST, headers={"Retry-After": "2"})
        if isinstance(exception, DomainError):  # raised in a plain (non-DRF) view
            return error_response(request, status_for(exception), exception.message, code=exception.code,
                                  field=exception.field)
        return None


class RejectControlCharactersMiddleware:
    """A NUL or other control character in the path or the query string is a 400 naming where it was."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        found = control_character_in(request.path)
        if found:
            return error_response(request, 400, f"The URL path contains the control character {describe(found)}; "
                                  "remove it.", field="path")
        for key, values in request.GET.lists():
            for text in (key, *values):
                found = control_character_in(text)
                if found:
                    return error_response(request, 400, f"Query parameter {key!r} contains the control character "
                                          f"{describe(found)}; remove it.", field=key)
        return self.get_response(request)


# Django's error handlers (config/urls.py): pages Django itself answers, in the same shape.
def bad_request(request, exception=None):
    if isinstance(exception, RequestDataTooBig):
        return error_response(request, 413, f"The request body is over the limit of "
                                            f"{settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.")
    if isinstance(exception, TooManyFieldsSent | TooManyFilesSent):
        return error_response(request, 413, "The request has too many form fields or files "
                                            f"(at most {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS}).")
    if isinstance(exception, DisallowedHost):
        return error_response(request, 400, "The Host header names a host this server does not answer to "
                                            "(ALLOWED_HOSTS).", field="Host")
    return error_response(request, 400)


def permission_denied(request, exception=None):
    return error_response(request, 403)


def not_found(request, exception=None):
    return error_response(request, 404)


def server_error(request):
    return error_response(request, 500)


def csrf_failure(request, reason=""):
    return error_response(request, 403, "CSRF verification failed: send the CSRF token with the form, or "
                                        "authenticate API calls with a token (Authorization: Token <key>).")
