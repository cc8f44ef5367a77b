"""The one place that turns errors into HTTP responses: domain errors by class, DRF's own, and storage outages.
Every error body is JSON: {"error": code, "detail": message, "field"?: name}."""
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from foundation import errors

STATUS_BY_ERROR = {
    errors.InvalidInput: status.HTTP_400_BAD_REQUEST,
    errors.PermissionDenied: status.HTTP_403_FORBIDDEN,
    errors.NotFound: status.HTTP_404_NOT_FOUND,
    errors.Conflict: status.HTTP_409_CONFLICT,
    errors.TooLarge: status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    errors.Unprocessable: status.HTTP_422_UNPROCESSABLE_ENTITY,
    errors.StorageUnavailable: status.HTTP_503_SERVICE_UNAVAILABLE,
}


def domain_error_response(error: errors.DomainError) -> Response:
    http_status = next((code for cls, code in STATUS_BY_ERROR.items() if isinstance(error, cls)), 400)
    body = {"error": error.code, "detail": error.message}
    if error.field:
        body["field"] = error.field
    return Response(body, status=http_status)


def exception_handler(exc, context):
    if isinstance(exc, errors.DomainError):
        return domain_error_response(exc)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = {"error": "invalid", "detail": _flatten(exc.detail), "fields": exc.detail}
    elif isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        response.data = {"error": "not_authenticated", "detail": str(exc.detail)}
    elif isinstance(exc, exceptions.APIException):
        response.data = {"error": exc.default_code, "detail": str(exc.detail)}
    return response


def _flatten(detail) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{key}: {_flatten(value)}" for key, value in detail.items())
    if isinstance(detail, list):
        return " ".join(_flatten(item) for item in detail)
    return str(detail)
