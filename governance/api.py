"""Governance endpoints: change requests and decisions, policies, aliases and rollback, the audit trail."""
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from foundation.anchoring import verify_anchored_chain
from foundation.audit import audit_events
from foundation.models import AuditEvent
from foundation.pagination import ARRAY_OF_OBJECTS, filter_parameter, list_parameters, paginated_response
from foundation.permissions import role_permission
from foundation.roles import APPROVER, ML_ENGINEER, OPS
from governance import selectors as governance_selectors
from governance import services
from governance.models import GATE_THRESHOLD_FIELDS, Alias, ChangeRequest
from registry import selectors

# Writes are further checked by the services (which role may do what, and separation of duties).
GovernanceWrites = role_permission(ML_ENGINEER, APPROVER, OPS)


class ChangeRequestOpenSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=100)
    alias = serializers.RegexField(r"^[a-z0-9][a-z0-9._-]{0,63}$", max_length=64)
    version = serializers.IntegerField(min_value=1)
    justification = serializers.CharField(max_length=20_000)
    dataset = serializers.IntegerField(required=False, min_value=1,
                                       help_text="Evaluation dataset for the gates' analysis (default: newest).")
    eval_dataset = serializers.IntegerField(required=False, min_value=1,
                                            help_text="Labelled evaluation dataset for the task gates (accuracy "
                                                      "drop, relative F1); default: the policy's.")


class DecisionSerializer(serializers.Serializer):
    decision = serializers.ChoiceField(choices=["approve", "reject"])
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=20_000)


class RollbackSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=20_000)
    to_version = serializers.IntegerField(required=False, min_value=1)


class PolicySerializer(serializers.Serializer):
    required_approvals = serializers.IntegerField(min_value=1, max_value=20)
    gates = serializers.DictField(child=serializers.FloatField(allow_null=True))
    allow_override = serializers.BooleanField()
    expiry_days = serializers.IntegerField(min_value=1, max_value=365)
    # Optional in a PUT: left out, they keep their current values.
    auto_rollback = serializers.BooleanField(required=False)
    max_error_increase = serializers.FloatField(required=False, min_value=0.0, max_value=100.0)
    eval_dataset = serializers.IntegerField(required=False, allow_null=True, min_value=1,
                                            help_text="Labelled evaluation dataset the task gates are measured on "
                                                      "when a change request names none (null: none).")

    def validate_gates(self, gates):
        unknown = set(gates) - set(GATE_THRESHOLD_FIELDS)
        if unknown:
            raise serializers.ValidationError(f"Unknown gates: {', '.join(sorted(unknown))}.")
        drop = gates.get("accuracy_drop_max")
        if drop is not None and not 0 <= drop <= 100:
            raise serializers.ValidationError("accuracy_drop_max is in accuracy points: from 0 to 100.")
        ratio = gates.get("f1_relative_min")
        if ratio is not None and not 0 < ratio <= 10:
            raise serializers.ValidationError("f1_relative_min is candidate F1 / reference F1: above 0, such as "
                                              "0.9.")
        return gates


def change_request_document(request: ChangeRequest) -> dict:
    return {
        "id": request.pk, "model": request.model.name, "alias": request.alias, "status": request.status,
        "status_reason": request.status_reason,
        "from_version": request.from_version.number if request.from_version else None,
        "to_version": request.to_version.number, "justification": request.justification,
        "requested_by": request.requested_by.username, "required_approvals": request.required_approvals,
        "override": request.override, "round": request.round,
        "approvals": [
            {"user": d.decided_by.username, "decision": d.decision, "comment": d.comment, "at": d.created_at,
             "round": d.round}
            for d in request.decisions.all()
        ],
        "gates": request.gates, "analysis": request.analysis_id, "evaluation": request.evaluation_id,
        "dataset": request.dataset_id, "eval_dataset": request.eval_dataset_id, "policy": request.policy_snapshot,
        "expires_at": request.expires_at, "created_at": request.created_at, "deployed_at": request.deployed_at,
    }


def policy_document(policy: dict) -> dict:
    return {"required_approvals": policy["required_approvals"],
            "gates": {field: policy[field] for field in GATE_THRESHOLD_FIELDS},
            "allow_override": policy["allow_override"], "expiry_days": policy["expiry_days"],
            "auto_rollback": policy["auto_rollback"], "max_error_increase": policy["max_error_increase"],
            "eval_dataset": policy.get("eval_dataset")}


class ChangeRequestListView(APIView):
    permission_classes = [GovernanceWrites]

    @extend_schema(responses=ARRAY_OF_OBJECTS, operation_id="change_requests_list", parameters=list_parameters(
        filter_parameter("model", "Only requests for this model."),
        filter_parameter("alias", "Only requests for this alias (production, staging, ...)."),
        filter_parameter("status", "Only requests in this status: analysing, pending, blocked, approved, deployed, "
                                   "rejected, expired or stale.")))
    def get(self, request):
        params = request.query_params
        requests = governance_selectors.change_requests(model_name=params.get("model"), alias=params.get("alias"),
                                                        status=params.get("status"))
        return paginated_response(request, requests, ordering=("-pk",),
                                  serialize=lambda page: [change_request_document(r) for r in page])

    @extend_schema(request=ChangeRequestOpenSerializer, responses={201: OpenApiTypes.OBJECT})
    def post(self, request):
        payload = ChangeRequestOpenSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        change_request = services.open_change_request(
            model=selectors.get_model(data["model"]), alias=data["alias"], version_number=data["version"],
            justification=data["justification"], dataset_id=data.get("dataset"),
            eval_dataset_id=data.get("eval_dataset"), actor=request.user)
        return Response(change_request_document(governance_selectors.get_change_request(change_request.pk)),
                        status=status.HTTP_201_CREATED)


class ChangeRequestDetailView(APIView):
    permission_classes = [GovernanceWrites]

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, request_id):
        return Response(change_request_document(governance_selectors.get_change_request(request_id)))


class DecisionView(APIView):
    permission_classes = [GovernanceWrites]

    @extend_schema(request=DecisionSerializer, responses=OpenApiTypes.OBJECT)
    def post(self, request, request_id):
        payload = DecisionSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        services.decide(change_request=governance_selectors.get_change_request(request_id), actor=request.user,
                        **payload.validated_data)
        return Response(change_request_document(governance_selectors.get_change_request(request_id)))


class WithdrawSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=20_000)


class WithdrawView(APIView):
    permission_classes = [GovernanceWrites]

    @extend_schema(request=WithdrawSerializer, responses=OpenApiTypes.OBJECT)
    def post(self, request, request_id):
        payload = WithdrawSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        services.withdraw_change_request(change_request=governance_selectors.get_change_request(request_id),
                                         reason=payload.validated_data["reason"], actor=request.user)
        return Response(change_request_document(governance_selectors.get_change_request(request_id)))


class PolicyView(APIView):
    permission_classes = [GovernanceWrites]

    @extend_schema(responses=PolicySerializer)
    def get(self, request, name, alias):
        return Response(policy_document(services.effective_policy(selectors.get_model(name), alias)))

    @extend_schema(request=PolicySerializer, responses=PolicySerializer)
    def put(self, request, name, alias):
        payload = PolicySerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        values = {"required_approvals": data["required_approvals"], "allow_override": data["allow_override"],
                  "expiry_days": data["expiry_days"], **data["gates"]}
        values.update({field: data[field] for field in ("auto_rollback", "max_error_increase", "eval_dataset")
                       if field in data})
        policy = services.set_policy(model=selectors.get_model(name), alias=alias, values=values, actor=request.user)
        return Response(policy_document(policy))


def alias_document(alias: Alias) -> dict:
    return {"alias": alias.name, "version": alias.version.number if alias.version else None, "since": alias.since}


def alias_change_document(row: dict) -> dict:
    """One change of an alias, from a row of governance_selectors.alias_change_rows."""
    return {"kind": row["kind"], "from_version": row["from_number"], "to_version": row["to_number"],
            "change_request": row["change_request_id"], "actor": row["actor_name"], "reason": row["reason"],
            "at": row["created_at"]}


# A list of aliases shows each one's latest changes; the whole history is paged at .../aliases/{alias}/history.
# Without a bound, every read of an alias that moved a thousand times would carry a thousand changes.
RECENT_ALIAS_CHANGES = 20


def aliases_with_history(page: list[Alias], *, path: str) -> list[dict]:
    history = {alias.pk: [] for alias in page}
    totals = dict.fromkeys(history, 0)
    for row in governance_selectors.latest_alias_change_rows(history, latest=RECENT_ALIAS_CHANGES):
        history[row["alias_id"]].append(alias_change_document(row))
        totals[row["alias_id"]] = row["total"]
    return [alias_document(alias) | {"history": history[alias.pk], "history_total": totals[alias.pk],
                                     "history_url": f"{path}{alias.name}/history"} for alias in page]


class AliasListView(APIView):
    permission_classes = [GovernanceWrites]

    @extend_schema(responses=ARRAY_OF_OBJECTS, parameters=list_parameters(), operation_id="models_aliases_list")
    def get(self, request, name):
        path = request.path if request.path.endswith("/") else request.path + "/"
        return paginated_response(request, governance_selectors.aliases_of(selectors.get_model(name)),
                                  ordering=("name",), serialize=lambda page: aliases_with_history(page, path=path))


class AliasDetailView(APIView):
    permission_classes = [GovernanceWrites]

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, name, alias):
        found = governance_selectors.get_alias_of(selectors.get_model(name), alias)
        return Response(alias_document(found) | {"history": f"{request.path.rstrip('/')}/history"})


class AliasHistoryView(APIView):
    permission_classes = [GovernanceWrites]

    @extend_schema(responses=ARRAY_OF_OBJECTS, parameters=list_parameters(),
                   operation_id="models_aliases_history_list")
    def get(self, request, name, alias):
        found = governance_selectors.get_alias_of(selectors.get_model(name), alias)
        return paginated_response(request, governance_selectors.alias_change_rows([found.pk]), ordering=("-pk",),
                                  serialize=lambda page: [alias_change_document(row) for row in page])


class RollbackView(APIView):
    permission_classes = [GovernanceWrites]

    @extend_schema(request=RollbackSerializer, responses=OpenApiTypes.OBJECT)
    def post(self, request, name, alias):
        payload = RollbackSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        change = services.roll_back(model=selectors.get_model(name), alias=alias,
                                    reason=payload.validated_data["reason"],
                                    to_version_number=payload.validated_data.get("to_version"), actor=request.user)
        return Response({"alias": alias, "version": change.to_version.number,
                         "previous": change.from_version.number if change.from_version else None})


def audit_event_document(event: AuditEvent) -> dict:
    return {"sequence": event.sequence, "occurred_at": event.occurred_at, "actor": event.actor_name,
            "action": event.action, "model": event.model_name, "object_type": event.object_type,
            "object_id": event.object_id, "before": event.before, "after": event.after,
            "prev_hash": event.prev_hash, "hash": event.hash}


class AuditEventListView(APIView):
    permission_classes = [role_permission()]

    @extend_schema(responses=ARRAY_OF_OBJECTS, operation_id="audit_events_list", parameters=list_parameters(
        filter_parameter("model", "Only events about this model."),
        filter_parameter("action", "Only events of this action, e.g. version.sealed or alias.rollback.")))
    def get(self, request):
        events = audit_events(model_name=request.query_params.get("model"),
                              action=request.query_params.get("action"))
        return paginated_response(request, events, ordering=("-sequence",),
                                  serialize=lambda page: [audit_event_document(e) for e in page])


class AuditVerificationView(APIView):
    permission_classes = [role_permission()]

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request):
        result, anchor = verify_anchored_chain()
        return Response({"ok": result.ok, "events": result.events, "first_bad": result.first_bad,
                         "reason": result.reason, "anchor": anchor})
