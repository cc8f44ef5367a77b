"""Admin pages of the integrations: superusers add webhook subscriptions (through the same service as the API, SSRF
guard included) and read the delivery log; other roles do not see them; ops read the alarms."""
import pytest

from integrations.encryption import decrypt_secret
from integrations.models import Alarm, WebhookDelivery, WebhookSubscription

pytestmark = pytest.mark.django_db

ADD = "/admin/integrations/webhooksubscription/add/"


def test_superuser_adds_a_subscription_and_reads_its_delivery_log(client, superuser, settings):
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
    client.force_login(superuser)
    response = client.post(ADD, {"url": "http://127.0.0.1:9/hooks", "events": ["version.sealed", "alias.rolled_back"],
                                 "secret": "admin-secret-0123456789"}, follow=True)
    assert response.status_code == 200, response.content
    subscription = WebhookSubscription.objects.get()
    assert subscription.events == ["alias.rolled_back", "version.sealed"] and subscription.created_by == superuser
    assert decrypt_secret(subscription.secret_encrypted) == "admin-secret-0123456789"
    WebhookDelivery.objects.create(subscription=subscription, event_id="0e6a4a55-2c55-4d7f-a0a2-3f4b0d8e8c11",
                                   event_type="version.sealed", body="{}", status="failed", attempts=3,
                                   last_error="connection failed")
    page = client.get(f"/admin/integrations/webhooksubscription/{subscription.pk}/change/").content.decode()
    assert "connection failed" in page and "admin-secret" not in page
    assert client.get("/admin/integrations/webhookdelivery/").status_code == 200


def test_admin_refuses_a_private_destination_with_its_reason(client, superuser):
    client.force_login(superuser)
    response = client.post(ADD, {"url": "http://169.254.169.254/latest", "events": ["job.failed"]}, follow=True)
    assert "link-local" in response.content.decode()
    assert not WebhookSubscription.objects.exists()


def test_other_roles_do_not_manage_webhooks_but_ops_read_alarms(client, ops_user, engineer):
    Alarm.objects.create(source="health", status="firing", name="health report over 5m", model_name="credit-llm",
                         alias="production", action="ignored", reason="auto_rollback is off", received_by=ops_user)
    client.force_login(ops_user)
    assert client.get(ADD).status_code == 403
    assert client.get("/admin/integrations/webhooksubscription/").status_code == 403
    assert "auto_rollback is off" in client.get(f"/admin/integrations/alarm/{Alarm.objects.get().pk}/change/"
                                                ).content.decode()
    client.force_login(engineer)
    assert client.get("/admin/integrations/webhookdelivery/").status_code == 403
