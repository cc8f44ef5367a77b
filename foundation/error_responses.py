"""The one place that turns errors raised in API views into HTTP responses: domain errors by class, DRF's own,
a lost database connection. Every error body is JSON: {"error": code, "detail": message, "field"?: name}."""
import logging

from django.db import InterfaceError, OperationalError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from foundation import errors

logger = logging.getLogger(__name__)

DATABASE_LOST = ("The database could not complete the request (its connection was lost, or the change collided "
                 "with a concurrent one); nothing was changed. Retry the request.")

STATUS_BY_ERROR = {
    errors.InvalidInput: status.HTTP_400_BAD_REQUEST,
    errors.PermissionDenied: status.HTTP_403_FORBIDDEN,
    errors.NotFound: status.HTTP_404_NOT_FOUND,
    errors.Conflict: status.HTTP_409_CONFLICT,
    errors.TooLarge: status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    errors.Unprocessable: status.HTTP_422_UNPROCESSABLE_ENTITY,
    errors.StorageUnavailable: status.HTTP_503_SERVICE_UNAVAILABLE,
}
# DRF's exceptions keep their status; their codes are renamed where the contract uses another word.
_DRF_CODES = {"parse_error": "invalid", "authentication_failed": "not_authenticated",
              "permission_denied": "forbidden", "not_found": "not_found", "method_not_allowed": "method_not_allowed",
              "unsupported_media_type": "unsupported_media_type", "throttled": "throttled",
              "not_acceptable": "not_acceptable"}


def status_for(error: errors.DomainError) -> int:
    return next((code for cls, code in STATUS_BY_ERROR.items() if isinstance(error, cls)), 400)


def domain_error_response(error: errors.DomainError) -> Response:
    body = {"error": error.code, "detail": error.message}
    if error.field:
        body["field"] = error.field
    return Response(body, status=status_for(error))


def exception_handler(exc, context):
    if isinstance(exc, errors.DomainError):
        return domain_error_response(exc)
    if isinstance(exc, OperationalError | InterfaceError):
        logger.warning("database unavailable in %s: %s", context.get("view").__class__.__name__, exc)
        return Response({"error": "unavailable", "detail": DATABASE_LOST}, status=503, headers={"Retry-After": "2"})
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        body = {"error": "invalid", "detail": _flatten(exc.detail), "fields": exc.detail}
        field = _first_field(exc.detail)
        if field:
            body["field"] = field
        response.data = body
    elif isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        response.data = {"error": "not_authenticated", "detail": str(exc.detail)}
    elif isinstance(exc, exceptions.APIException):
        response.data = {"error": _DRF_CODES.get(exc.default_code, exc.default_code), "detail": str(exc.detail)}
    return response


def _first_field(detail) -> str | None:
    if isinstance(detail, dict) and detail:
        key = next(iter(detail))
        inner = _first_field(detail[key])
        return f"{key}.{inner}" if inner else str(key)
    return None


def _flatten(detail) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{key}: {_flatten(value)}" for key, value in detail.items())
    if isinstance(detail, list):
        return " ".join(_flatten(item) for item in detail)
    return str(detail)
