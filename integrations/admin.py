"""Admin pages of the integrations: webhook subscriptions (added through the same service as the API) and their
delivery log, and the alarms received. Superusers (and holders of integrations.manage_webhooks) only."""
from django import forms
from django.contrib import admin, messages

from foundation.admin_access import RoleAccessMixin
from foundation.roles import OPS, has_role
from integrations import webhooks
from integrations.models import EVENT_TYPES, Alarm, WebhookDelivery, WebhookSubscription


class WebhookSubscriptionForm(forms.ModelForm):
    events = forms.MultipleChoiceField(choices=[(e, e) for e in EVENT_TYPES], widget=forms.CheckboxSelectMultiple)
    secret = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False), min_length=16,
                             help_text="Leave empty to generate one; it is shown once after saving.")

    class Meta:
        model = WebhookSubscription
        fields = ["url", "events"]


class WebhookAccessMixin(RoleAccessMixin):
    def has_module_permission(self, request):
        return webhooks.may_manage_webhooks(request.user) or has_role(request.user, OPS)

    def has_view_permission(self, request, obj=None):
        return webhooks.may_manage_webhooks(request.user)

    def has_add_permission(self, request):
        return False


class DeliveryInline(admin.TabularInline):
    model = WebhookDelivery
    fields = ["event_type", "status", "attempts", "response_code", "last_error", "created_at", "last_attempt_at",
              "delivered_at"]
    readonly_fields = fields
    extra = 0
    max_num = 0
    ordering = ["-id"]
    show_change_link = True

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(WebhookSubscription)
class WebhookSubscriptionAdmin(WebhookAccessMixin, admin.ModelAdmin):
    form = WebhookSubscriptionForm
    list_display = ["id", "url", "events", "active", "created_by", "created_at"]
    list_filter = ["active"]
    readonly_fields = ["url", "events", "active", "created_by", "created_at"]
    inlines = [DeliveryInline]
    actions = ["deactivate"]

    def has_add_permission(self, request):
        return webhooks.may_manage_webhooks(request.user)

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj else []

    def get_inlines(self, request, obj):
        return self.inlines if obj else []  # the delivery log of an existing subscription only

    def get_fields(self, request, obj=None):
        return self.readonly_fields if obj else ["url", "events", "secret"]

    def save_model(self, request, obj, form, change):
        subscription, secret = webhooks.create_subscription(
            url=form.cleaned_data["url"], events=form.cleaned_data["events"],
            secret=form.cleaned_data.get("secret") or None, actor=request.user)
        obj.pk = subscription.pk
        if not form.cleaned_data.get("secret"):
            messages.warning(request, f"The generated signing secret (shown once): {secret}")

    def save_related(self, request, form, formsets, change):
        pass  # the service saved everything

    @admin.action(description="Deactivate (stop sending; the log stays)")
    def deactivate(self, request, queryset):
        for subscription in queryset:
            webhooks.deactivate_subscription(subscription_id=subscription.pk, actor=request.user)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(WebhookAccessMixin, admin.ModelAdmin):
    list_display = ["id", "subscription", "event_type", "status", "attempts", "response_code", "created_at",
                    "last_attempt_at", "delivered_at"]
    list_filter = ["status", "event_type"]
    readonly_fields = ["subscription", "event_id", "delivery_id", "event_type", "status", "attempts",
                       "response_code", "last_error", "created_at", "last_attempt_at", "next_attempt_at",
                       "delivered_at", "body"]


@admin.register(Alarm)
class AlarmAdmin(RoleAccessMixin, admin.ModelAdmin):
    write_roles = ()
    list_display = ["id", "source", "status", "name", "model_name", "alias", "action", "received_by", "received_at"]
    list_filter = ["source", "action", "status"]
    readonly_fields = ["source", "fingerprint", "starts_at", "status", "name", "model_name", "alias", "details",
                       "action", "reason", "alias_change", "received_by", "received_at"]

    def has_add_permission(self, request):
        return False
