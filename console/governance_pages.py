"""Governance in the admin: approvers decide change requests (gates, charts, lineage beside the buttons), ops roll
aliases back in one click. Every action calls governance.services."""
from django import forms
from django.contrib import admin, messages
from django.db.models import Prefetch
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse

from console import version_display
from console.forms import RollbackForm, WithdrawForm
from foundation.admin_access import RoleAccessMixin
from foundation.errors import DomainError
from foundation.roles import APPROVER, OPS, has_role
from governance import selectors as governance_selectors
from governance import services
from governance.models import Alias, ChangeRequest
from reports import selectors as report_selectors
from reports.models import Report


class DecisionForm(forms.Form):
    comment = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)


def _draft_report(change_request):
    """The draft change-impact report of the request's current round: the PDF an approver's decision signs."""
    drafts = (change_request.reports.filter(status="draft").exclude(object_key="")
              .order_by("-round", "-created_at", "-id"))
    return drafts.filter(round=change_request.round).first() or drafts.first()


@admin.register(ChangeRequest)
class ChangeRequestAdmin(RoleAccessMixin, admin.ModelAdmin):
    change_form_template = "admin/governance/changerequest/change_form.html"
    list_display = ["id", "model", "alias", "from_number", "to_number", "status", "approvals", "requested_by",
                    "created_at"]
    list_filter = ["status", "alias", "model"]
    readonly_fields = ["model", "alias", "from_version", "to_version", "status", "status_reason", "justification",
                       "requested_by", "required_approvals", "override", "round", "expires_at", "created_at",
                       "deployed_at"]
    fields = readonly_fields

    def has_add_permission(self, request):
        return False  # opened from the API (POST /api/v1/change-requests/)

    @admin.display(description="From")
    def from_number(self, obj):
        return f"v{obj.from_version.number}" if obj.from_version else "-"

    @admin.display(description="To")
    def to_number(self, obj):
        return f"v{obj.to_version.number}"

    @admin.display(description="Approvals")
    def approvals(self, obj):
        count = obj.decisions.filter(round=obj.round, decision="approve").count()
        return f"{count}/{obj.required_approvals}"

    def get_urls(self):
        return [path("<int:request_id>/decide/", self.admin_site.admin_view(self.decide_view),
                     name="governance_changerequest_decide"),
                path("<int:request_id>/withdraw/", self.admin_site.admin_view(self.withdraw_view),
                     name="governance_changerequest_withdraw")] + super().get_urls()

    def change_view(self, request, object_id, form_url="", extra_context=None):
        change_request = get_object_or_404(governance_selectors.change_requests(), pk=object_id)
        analysis = change_request.analysis
        context = {
            "change_request": change_request,
            "decisions": change_request.decisions.select_related("decided_by"),
            "analysis": analysis,
            "analysis_result": analysis.result if analysis else None,
            "plots": [f"/api/v1/analyses/{analysis.pk}/plots/{p['name']}" for p in analysis.plots] if analysis else [],
            "lineage": version_display.lineage_view(change_request.to_version),
            "can_decide": change_request.status == "pending" and has_role(request.user, APPROVER),
            "decision_form": DecisionForm(),
            "draft_report": _draft_report(change_request),
            "reports": report_selectors.reports(change_request_id=change_request.pk).order_by("-round", "-pk"),
            "can_withdraw": (change_request.status in ChangeRequest.OPEN
                             and change_request.requested_by_id == request.user.pk),
            "withdraw_form": WithdrawForm(),
            "alias": governance_selectors.aliases_of(change_request.model).filter(name=change_request.alias).first(),
        }
        return super().change_view(request, object_id, form_url, {**context, **(extra_context or {})})

    def decide_view(self, request, request_id):
        change_request = get_object_or_404(governance_selectors.change_requests(), pk=request_id)
        if request.method == "POST":
            form = DecisionForm(request.POST)
            decision = "approve" if "_approve" in request.POST else "reject"
            if form.is_valid():
                try:
                    decided = services.decide(change_request=change_request, actor=request.user, decision=decision,
                                              comment=form.cleaned_data["comment"])
                    messages.success(request, f"Recorded your {decision}; the request is now {decided.status}.")
                except DomainError as error:
                    messages.error(request, error.message)
        return HttpResponseRedirect(reverse("admin:governance_changerequest_change", args=[request_id]))

    def withdraw_view(self, request, request_id):
        change_request = get_object_or_404(governance_selectors.change_requests(), pk=request_id)
        if request.method == "POST":
            form = WithdrawForm(request.POST)
            if form.is_valid():
                try:
                    services.withdraw_change_request(change_request=change_request,
                                                     reason=form.cleaned_data["reason"], actor=request.user)
                    messages.success(request, f"You withdrew change request #{request_id}.")
                except DomainError as error:
                    messages.error(request, error.message)
        return HttpResponseRedirect(reverse("admin:governance_changerequest_change", args=[request_id]))


@admin.register(Alias)
class AliasAdmin(RoleAccessMixin, admin.ModelAdmin):
    change_form_template = "admin/governance/alias/change_form.html"
    list_display = ["__str__", "version", "since"]
    list_filter = ["model"]
    readonly_fields = ["model", "name", "version", "since"]
    fields = readonly_fields

    def has_add_permission(self, request):
        return False  # aliases move only through approved change requests

    def get_urls(self):
        return [path("<int:alias_id>/rollback/", self.admin_site.admin_view(self.rollback_view),
                     name="governance_alias_rollback")] + super().get_urls()

    def change_view(self, request, object_id, form_url="", extra_context=None):
        alias = get_object_or_404(governance_selectors.aliases(), pk=object_id)
        targets = governance_selectors.rollback_targets(alias) if alias.version_id else []
        default = governance_selectors.default_rollback_number(alias)
        rollback_reports = Prefetch("reports", queryset=Report.objects.filter(kind=Report.Kind.ROLLBACK),
                                    to_attr="rollback_reports")
        deploy_reports = Prefetch("change_request__reports", queryset=Report.objects.filter(status="final"),
                                  to_attr="final_reports")
        context = {
            "alias": alias,
            "history": governance_selectors.alias_history(alias).select_related("change_request")
                                           .prefetch_related(rollback_reports, deploy_reports),
            "is_ops": has_role(request.user, OPS),
            "rollback_targets": targets,
            "default_rollback": default,
            "rollback_form": RollbackForm(targets=targets, default=default),
        }
        return super().change_view(request, object_id, form_url, {**context, **(extra_context or {})})

    def rollback_view(self, request, alias_id):
        alias = get_object_or_404(governance_selectors.aliases(), pk=alias_id)
        if request.method == "POST":
            targets = governance_selectors.rollback_targets(alias) if alias.version_id else []
            form = RollbackForm(request.POST, targets=targets)
            if form.is_valid():
                try:
                    change = services.roll_back(model=alias.model, alias=alias.name,
                                                reason=form.cleaned_data["reason"],
                                                to_version_number=form.cleaned_data["to_version"],
                                                actor=request.user)
                    messages.success(request, f"{alias} rolled back from v{change.from_version.number} to "
                                              f"v{change.to_version.number}.")
                except DomainError as error:
                    messages.error(request, error.message)
            else:
                messages.error(request, " ".join(f"{form.fields[name].label or name}: {' '.join(errors)}"
                                                 for name, errors in form.errors.items()))
        return HttpResponseRedirect(reverse("admin:governance_alias_change", args=[alias_id]))
