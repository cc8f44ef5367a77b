"""Governance endpoints: change requests and decisions, policies, aliases and rollback, the audit trail."""
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from foundation.anchoring import verify_anchored_chain
from foundation.models import AuditEvent
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

    def validate_gates(self, gates):
        unknown = set(gates) - set(GATE_THRESHOLD_FIELDS)
        if unknown:
            raise serializers.ValidationError(f"Unknown gates: {', '.join(sorted(unknown))}.")
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
            for d in request.decisions.select_related("decided_by").all()
        ],
        "gates": request.gates, "analysis": request.analysis_id, "policy": request.policy_snapshot,
        "expires_at": request.expires_at, "created_at": request.created_at, "deployed_at": request.deployed_at,
    }


def policy_document(policy: dict) -> dict:
    return {"required_approvals": policy["required_approvals"],
            "gates": {field: policy[field] for field in GATE_THRESHOLD_FIELDS},
            "allow_override": policy["allow_override"], "expiry_days": policy["expiry_days"]}


class ChangeRequestListView(APIView):
    permission_classes = [GovernanceWrites]

    def get(self, request):
        params = request.query_params
        requests = governance_selectors.change_requests(model_name=params.get("model"), alias=params.get("alias"),
                                                        status=params.get("status"))
        return Response([change_request_document(r) for r in requests[:500]])

    @extend_schema(request=ChangeRequestOpenSerializer, responses={201: dict})
    def post(self, request):
        payload = ChangeRequestOpenSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        change_request = services.open_change_request(
            model=selectors.get_model(data["model"]), alias=data["alias"], version_number=data["version"],
            justification=data["justification"], dataset_id=data.get("dataset"), actor=request.user)
        return Response(change_request_document(governance_selectors.get_change_request(change_request.pk)),
                        status=status.HTTP_201_CREATED)


class ChangeRequestDetailView(APIView):
    permission_classes = [GovernanceWrites]

    def get(self, request, request_id):
        return Response(change_request_document(governance_selectors.get_change_request(request_id)))


class DecisionView(APIView):
    permission_classes = [GovernanceWrites]

    @extend_schema(request=DecisionSerializer, responses=dict)
    def post(self, request, request_id):
        payload = DecisionSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        services.decide(change_request=governance_selectors.get_change_request(request_id), actor=request.user,
                        **payload.validated_data)
        return Response(change_request_document(governance_selectors.get_change_request(request_id)))


class PolicyView(APIView):
    permission_classes = [GovernanceWrites]

    def get(self, request, name, alias):
        return Response(policy_document(services.effective_policy(selectors.get_model(name), alias)))

    @extend_schema(request=PolicySerializer, responses=PolicySerializer)
    def put(self, request, name, alias):
        payload = PolicySerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        values = {"required_approvals": data["required_approvals"], "allow_override": data["allow_override"],
                  "expiry_days": data["expiry_days"], **data["gates"]}
        policy = services.set_policy(model=selectors.get_model(name), alias=alias, values=values, actor=request.user)
        return Response(policy_document(policy))


def alias_document(alias: Alias) -> dict:
    return {
        "alias": alias.name, "version": alias.version.number if alias.version else None, "since": alias.since,
        "history": [
            {"kind": c.kind, "from_version": c.from_version.number if c.from_version else None,
             "to_version": c.to_version.number, "change_request": c.change_request_id,
             "actor": c.actor.username, "reason": c.reason, "at": c.created_at}
            for c in alias.changes.select_related("from_version", "to_version", "actor")
        ],
    }


class AliasListView(APIView):
    permission_classes = [GovernanceWrites]

    def get(self, request, name):
        aliases = governance_selectors.aliases_of(selectors.get_model(name))
        return Response([alias_document(a) for a in aliases])


class RollbackView(APIView):
    permission_classes = [GovernanceWrites]

    @extend_schema(request=RollbackSerializer, responses=dict)
    def post(self, request, name, alias):
        payload = RollbackSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        change = services.roll_back(model=selectors.get_model(name), alias=alias,
                                    reason=payload.validated_data["reason"],
                                    to_version_number=payload.validated_data.get("to_version"), actor=request.user)
        return Response({"alias": alias, "version": change.to_version.number,
                         "previous": change.from_version.number if change.from_version else None})


class AuditEventListView(APIView):
    permission_classes = [role_permission()]

    def get(self, request):
        events = AuditEvent.objects.all()
        if request.query_params.get("model"):
            events = events.filter(model_name=request.query_params["model"])
        if request.query_params.get("action"):
            events = events.filter(action=request.query_params["action"])
        try:
            limit = min(int(request.query_params.get("limit", 500)), 5000)
        except ValueError:
            limit = 500
        return Response([
            {"sequence": e.sequence, "occurred_at": e.occurred_at, "actor": e.actor_name, "action": e.action,
             "model": e.model_name, "object_type": e.object_type, "object_id": e.object_id, "before": e.before,
             "after": e.after, "prev_hash": e.prev_hash, "hash": e.hash}
            for e in events[:limit]
        ])


class AuditVerificationView(APIView):
    permission_classes = [role_permission()]

    def get(self, request):
        result, anchor = verify_anchored_chain()
        return Response({"ok": result.ok, "events": result.events, "first_bad": result.first_bad,
                         "reason": result.reason, "anchor": anchor})
