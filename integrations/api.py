"""Endpoints of the platform integrations: Alertmanager's receiver and health reports (ops), webhook subscriptions
and their delivery log (superusers), and /metrics (a token or an allowed network)."""
import re

from django.http import HttpResponse
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from prometheus_client import CONTENT_TYPE_LATEST
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from registry.authentication import TokenWithRolesAndTeamsAuthentication
from foundation.errors import NotFound
from foundation.http import error_response
from foundation.pagination import ARRAY_OF_OBJECTS, list_parameters, paginated_response
from foundation.parsers import BoundedJSONParser
from foundation.permissions import role_permission
from foundation.roles import OPS
from integrations import alarms, metrics, webhooks
from integrations.models import EVENT_TYPES, WebhookDelivery, WebhookSubscription
from registry import selectors

OpsWrites = role_permission(OPS, read_roles=(OPS,))
ALIAS_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class BearerTokenAuthentication(TokenWithRolesAndTeamsAuthentication):
    """`Authorization: Bearer <token>`: what Alertmanager's http_config.authorization sends; the same API tokens."""

    keyword = "Bearer"


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = BearerTokenAuthentication
    name = "bearerTokenAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An API token, sent as `Bearer <token>`."}


ALARM_AUTHENTICATION = [TokenWithRolesAndTeamsAuthentication, BearerTokenAuthentication, SessionAuthentication]

@extend_schema_field({"type": "string", "pattern": "^(firing|resolved)$"})
class AlertStatusField(serializers.ChoiceField):
    """firing or resolved (a pattern in the schema, not an enum: `status` names other enums elsewhere)."""

    def __init__(self, **kwargs):
        super().__init__(choices=["firing", "resolved"], **kwargs)


_LABEL_VALUE = serializers.CharField(max_length=2000, allow_blank=True)


class AlertSerializer(serializers.Serializer):
    status = AlertStatusField()
    labels = serializers.DictField(child=_LABEL_VALUE)
    annotations = serializers.DictField(child=serializers.CharField(max_length=20_000, allow_blank=True),
                                        required=False, default=dict)
    startsAt = serializers.CharField(max_length=64)  # noqa: N815 - Alertmanager's field names
    endsAt = serializers.CharField(max_length=64, required=False, allow_blank=True)  # noqa: N815
    generatorURL = serializers.CharField(max_length=2000, required=False, allow_blank=True)  # noqa: N815
    fingerprint = serializers.CharField(max_length=128, required=False, allow_blank=True)


class AlertmanagerPayloadSerializer(serializers.Serializer):
    """Alertmanager's webhook notification (version 4); fields not listed are accepted and ignored."""

    version = serializers.CharField(max_length=16, required=False)
    status = AlertStatusField(required=False)
    receiver = serializers.CharField(max_length=500, required=False, allow_blank=True)
    alerts = AlertSerializer(many=True, allow_empty=False, max_length=1000)


class HealthSerializer(serializers.Serializer):
    error_rate = serializers.FloatField(min_value=0.0, max_value=1e9)
    baseline_error_rate = serializers.FloatField(min_value=0.0, max_value=1e9, required=False, allow_null=True)
    window = serializers.RegexField(r"^[0-9]{1,6}(ms|s|m|h|d|w)$", max_length=8,
                                    help_text="The period the rates were measured over, e.g. 5m or 1h.")


def outcome_document(outcome: alarms.Outcome) -> dict:
    document = {"action": outcome.action, "reason": outcome.reason}
    if outcome.alarm is not None:
        document["alarm"] = outcome.alarm.pk
    if outcome.change is not None:
        change = outcome.change
        document["change"] = {"alias": change.alias.name, "model": change.alias.model.name,
                              "version": change.to_version.number, "previous": change.from_version.number,
                              "kind": change.kind, "reason": change.reason, "at": change.created_at}
    return document


class AlertmanagerView(APIView):
    authentication_classes = ALARM_AUTHENTICATION
    permission_classes = [OpsWrites]
    parser_classes = [BoundedJSONParser]

    @extend_schema(request=AlertmanagerPayloadSerializer, responses=OpenApiTypes.OBJECT)
    def post(self, request):
        payload = AlertmanagerPayloadSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        outcomes = alarms.receive_alertmanager(payload=payload.validated_data, actor=request.user)
        acted = next((o for o in outcomes if o.action == "rolled_back"), None)
        summary = outcome_document(acted or outcomes[0])
        if len(outcomes) > 1:
            summary["reason"] = "; ".join(o.reason for o in outcomes)
        summary["alerts"] = [outcome_document(o) for o in outcomes]
        return Response(summary)


class HealthView(APIView):
    authentication_classes = ALARM_AUTHENTICATION
    permission_classes = [OpsWrites]
    parser_classes = [BoundedJSONParser]

    @extend_schema(request=HealthSerializer, responses=OpenApiTypes.OBJECT)
    def post(self, request, name, alias):
        payload = HealthSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        if not ALIAS_NAME.fullmatch(alias):
            raise NotFound(f"Model {name!r} has no alias {alias!r}.")
        outcome = alarms.report_health(model=selectors.get_model(name), alias=alias, error_rate=data["error_rate"],
                                       baseline_error_rate=data.get("baseline_error_rate"), window=data["window"],
                                       actor=request.user)
        return Response(outcome_document(outcome))


class ManagesWebhooks(BasePermission):
    message = "Webhook subscriptions are managed by superusers (or holders of integrations.manage_webhooks)."

    def has_permission(self, request, view):
        return webhooks.may_manage_webhooks(request.user)


class WebhookCreateSerializer(serializers.Serializer):
    url = serializers.URLField(max_length=2000)
    events = serializers.ListField(child=serializers.CharField(max_length=64), allow_empty=False,
                                   max_length=len(EVENT_TYPES), help_text="Any of: " + ", ".join(EVENT_TYPES))
    secret = serializers.CharField(max_length=500, required=False, trim_whitespace=False,
                                   help_text="Signing secret (16+ characters); generated and returned once when "
                                             "left out.")


def subscription_document(subscription: WebhookSubscription) -> dict:
    return {"id": subscription.pk, "url": subscription.url, "events": subscription.events,
            "active": subscription.active, "created_by": subscription.created_by.username,
            "created_at": subscription.created_at,
            "deliveries": f"/api/v1/webhooks/{subscription.pk}/deliveries"}


def delivery_document(delivery: WebhookDelivery) -> dict:
    return {"id": delivery.pk, "delivery": str(delivery.delivery_id), "event": str(delivery.event_id),
            "type": delivery.event_type, "status": delivery.status, "attempts": delivery.attempts,
            "response_code": delivery.response_code, "error": delivery.last_error, "created_at": delivery.created_at,
            "last_attempt_at": delivery.last_attempt_at, "next_attempt_at": delivery.next_attempt_at,
            "delivered_at": delivery.delivered_at}


class WebhookListView(APIView):
    permission_classes = [ManagesWebhooks]
    parser_classes = [BoundedJSONParser]

    @extend_schema(responses=ARRAY_OF_OBJECTS, parameters=list_parameters(), operation_id="webhooks_list")
    def get(self, request):
        return paginated_response(request, WebhookSubscription.objects.select_related("created_by"),
                                  ordering=("-pk",), serialize=lambda page: [subscription_document(s) for s in page])

    @extend_schema(request=WebhookCreateSerializer, responses={201: OpenApiTypes.OBJECT})
    def post(self, request):
        payload = WebhookCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        subscription, secret = webhooks.create_subscription(url=data["url"], events=data["events"],
                                                            secret=data.get("secret"), actor=request.user)
        document = subscription_document(subscription)
        if "secret" not in data:
            document["secret"] = secret  # shown once: it is stored encrypted and never shown again
        return Response(document, status=status.HTTP_201_CREATED)


def _subscription(subscription_id) -> WebhookSubscription:
    subscription = WebhookSubscription.objects.select_related("created_by").filter(pk=subscription_id).first()
    if subscription is None:
        raise NotFound(f"No webhook subscription with id {subscription_id}.")
    return subscription


class WebhookDetailView(APIView):
    permission_classes = [ManagesWebhooks]

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, subscription_id):
        return Response(subscription_document(_subscription(subscription_id)))

    @extend_schema(responses=OpenApiTypes.OBJECT, description="Deactivate the subscription (its log stays).")
    def delete(self, request, subscription_id):
        subscription = webhooks.deactivate_subscription(subscription_id=subscription_id, actor=request.user)
        return Response(subscription_document(subscription))


class WebhookDeliveryListView(APIView):
    permission_classes = [ManagesWebhooks]

    @extend_schema(responses=ARRAY_OF_OBJECTS, parameters=list_parameters(), operation_id="webhooks_deliveries_list")
    def get(self, request, subscription_id):
        subscription = _subscription(subscription_id)
        return paginated_response(request, subscription.deliveries.all(), ordering=("-pk",),
                                  serialize=lambda page: [delivery_document(d) for d in page])


def metrics_view(request):
    """Prometheus text exposition; 403 (JSON) unless the scraper sent METRICS_TOKEN or comes from an allowed network."""
    if request.method not in ("GET", "HEAD"):
        return error_response(request, 405, "GET /metrics.")
    if not metrics.may_scrape(request):
        return error_response(request, 403, "Scraping /metrics needs `Authorization: Bearer <METRICS_TOKEN>` or an "
                                            "address inside METRICS_ALLOWED_NETWORKS.")
    return HttpResponse(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)
