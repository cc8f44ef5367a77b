"""The regulator portal (session login, read-only pages) and e-mail delivery of final reports."""
import pytest
from django.core import mail
from django.test import Client

from reports import services
from reports.models import ReportDelivery, ReportSubscription
from tests.conftest import make_user


@pytest.fixture
def regulator_browser(history):
    client = Client()
    assert client.login(username="rita", password="rita-password")
    return client


def test_portal_lists_reports_per_model_with_verification_badges_and_downloads(history, regulator_browser):
    response = regulator_browser.get("/portal/")

    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="model-credit-llm"' in page
    update, rollback = history["reports"]["update"], history["reports"]["rollback"]
    assert f'href="/portal/reports/{update.pk}/pdf"' in page and f'href="/portal/reports/{rollback.pk}/pdf"' in page
    assert page.count('<span class="badge ok">verified</span>') >= 3  # first, update and rollback reports
    assert "signatures valid (draft)" in page  # the LoRA request's draft


def test_portal_pages_its_report_list_so_each_page_verifies_a_bounded_number(history, regulator_browser,
                                                                           monkeypatch):
    from reports import portal

    monkeypatch.setattr(portal, "REPORTS_PER_PAGE", 1)
    first = regulator_browser.get("/portal/").content.decode()
    assert first.count("/pdf\"") == 1 and "page 1 of" in first and "older" in first
    second = regulator_browser.get("/portal/?page=2").content.decode()
    assert second.count("/pdf\"") == 1 and "newer" in second


def test_portal_report_page_shows_each_signature(history, regulator_browser):
    report = history["reports"]["update"]

    page = regulator_browser.get(f"/portal/reports/{report.pk}/").content.decode()

    assert '<span class="badge ok">verified</span>' in page
    assert "Bob Approver" in page and "Carol Checker" in page and "approve: Gates pass with margin" in page
    assert report.sha256 in page


def test_portal_downloads_the_pdf(history, regulator_browser):
    report = history["reports"]["rollback"]

    response = regulator_browser.get(f"/portal/reports/{report.pk}/pdf")

    assert response.status_code == 200 and response.content == history["pdfs"]["rollback"]


def test_portal_shows_the_audit_trail_and_its_chain(history, regulator_browser):
    page = regulator_browser.get("/portal/audit/", {"model": "credit-llm"}).content.decode()

    assert "alias.rollback" in page and "change_request.approved" in page
    assert "Hash chain:" in page


def test_portal_report_page_summarises_the_change_and_its_gates(history, regulator_browser):
    report, request = history["reports"]["update"], history["requests"]["update"]

    page = regulator_browser.get(f"/portal/reports/{report.pk}/").content.decode()

    summary = page.split('id="change-summary"')[1].split("</table>")[0]
    assert "credit-llm@production: v1 (upload) → v2 (quantized: nf4 quantization of v1)" in summary
    assert f"#{request.pk}, deployed" in summary
    assert "Quarter the serving memory. &lt;img" in summary and "<iframe" not in summary  # escaped, never markup
    assert "Bob Approver: approve" in summary and "(2 required)" in summary
    gates = page.split('id="report-gates"')[1].split("</table>")[0]
    assert gates.count("<tr>") == len(request.gates) + 1 and "kl mean" in gates
    assert "pass" in gates


def test_portal_rollback_report_page_names_what_went_back_and_why(history, regulator_browser):
    page = regulator_browser.get(f"/portal/reports/{history['reports']['rollback'].pk}/").content.decode()
    summary = page.split('id="change-summary"')[1].split("</table>")[0]
    assert "Rollback of" in summary and "credit-llm@production: v2 → v1" in summary and "Oscar Operator" in summary
    assert 'id="report-gates"' not in page


def test_portal_audit_trail_names_objects_in_product_words(history, regulator_browser):
    page = regulator_browser.get("/portal/audit/", {"model": "credit-llm"}).content.decode()
    update = history["requests"]["update"]
    assert "credit-llm v2" in page and f"change request #{update.pk} (credit-llm@production → v2)" in page
    assert "credit-llm@production" in page
    assert "refuses deletion and overwriting" in page.split('id="anchor-explained"')[1]


def test_portal_audit_trail_is_paged_and_keeps_its_filters(history, regulator_browser, monkeypatch):
    from foundation.models import AuditEvent
    from reports import portal

    monkeypatch.setattr(portal, "AUDIT_PAGE_SIZE", 3)
    total = AuditEvent.objects.filter(model_name="credit-llm").count()
    first = regulator_browser.get("/portal/audit/", {"model": "credit-llm"}).content.decode()
    assert f"Events 1–3 of {total}" in first and first.count("<tr><td>") == 3
    assert 'href="?model=credit-llm&amp;page=2" rel="next"' in first
    last_page = (total + 2) // 3
    last = regulator_browser.get("/portal/audit/", {"model": "credit-llm", "page": last_page}).content.decode()
    oldest = AuditEvent.objects.filter(model_name="credit-llm").order_by("sequence").first()
    assert f"<tr><td>{oldest.sequence}</td>" in last and "rel=\"prev\"" in last


def test_portal_audit_trail_filters_by_action_actor_and_time(history, regulator_browser):
    from foundation.models import AuditEvent

    page = regulator_browser.get("/portal/audit/", {"action": "change_request.approved", "actor": "carol"}).content
    page = page.decode()
    expected = AuditEvent.objects.filter(action="change_request.approved", actor_name="carol").count()
    assert expected and page.count("<tr><td>") == expected and "bob" not in page.split('id="audit-events"')[1]
    future = regulator_browser.get("/portal/audit/", {"since": "2999-01-01"}).content.decode()
    assert "No events match" in future
    today = AuditEvent.objects.order_by("-sequence").first().occurred_at.date().isoformat()
    bounded = regulator_browser.get("/portal/audit/", {"since": today, "until": today}).content.decode()
    assert "No events match" not in bounded
    bad = regulator_browser.get("/portal/audit/", {"since": "yesterday"}).content.decode()
    assert "is not a date (YYYY-MM-DD); the since filter is ignored" in bad


def test_portal_needs_a_login(history):
    response = Client().get("/portal/")

    assert response.status_code == 302 and response["Location"].startswith("/portal/login/")


def test_portal_is_for_regulators_only(history):
    client = Client()
    client.force_login(history["users"]["bob"])

    response = client.get("/portal/")

    assert response.status_code == 403 and "regulator" in response.content.decode()


def test_portal_login_page_logs_a_regulator_in(history):
    client = Client()
    response = client.post("/portal/login/", {"username": "rita", "password": "rita-password"})

    assert response.status_code == 302 and response["Location"] == "/portal/"
    assert client.get("/portal/").status_code == 200


def test_unknown_report_in_the_portal_is_404(regulator_browser):
    assert regulator_browser.get("/portal/reports/999999/").status_code == 404


# --- e-mail delivery -------------------------------------------------------------------------------------------


def test_final_report_is_emailed_with_the_pdf_attached_to_subscribed_regulators(history, db, regulator_browser):
    rita = history["users"]["rita"]
    report = history["reports"]["update"]
    mail.outbox.clear()
    regulator_browser.post("/portal/subscription", {"action": "subscribe"})
    assert ReportSubscription.objects.filter(user=rita, model=None).exists()
    make_user("no-mail-regulator", "regulator")  # not subscribed: gets nothing

    sent = services.deliver_report(report_id=report.pk)

    assert sent == 1 and len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["rita@bank.example"]
    assert "Signed change-impact report" in message.subject and "credit-llm@production deployed v2" in message.subject
    assert report.sha256 in message.body and "pyhanko sign validate" in message.body
    [(filename, content, mimetype)] = message.attachments
    assert filename == report.filename and mimetype == "application/pdf"
    assert content == history["pdfs"]["update"]
    assert ReportDelivery.objects.filter(report=report, user=rita).count() == 1


def test_a_report_is_emailed_once_however_often_delivery_runs(history, db):
    rita = history["users"]["rita"]
    services.subscribe(user=rita, model=history["model"])
    mail.outbox.clear()

    first = services.deliver_report(report_id=history["reports"]["rollback"].pk)
    second = services.deliver_report(report_id=history["reports"]["rollback"].pk)

    assert (first, second) == (1, 0) and len(mail.outbox) == 1
    assert "rolled back to v1" in mail.outbox[0].subject


def test_drafts_are_never_emailed(history, db):
    services.subscribe(user=history["users"]["rita"])
    mail.outbox.clear()

    assert services.deliver_report(report_id=history["reports"]["lora"].pk) == 0
    assert mail.outbox == []


def test_only_regulators_can_subscribe(history, db):
    from foundation.errors import PermissionDenied

    with pytest.raises(PermissionDenied):
        services.subscribe(user=history["users"]["bob"])


def test_unsubscribing_stops_delivery(history, db, regulator_browser):
    regulator_browser.post("/portal/subscription", {"action": "subscribe"})
    regulator_browser.post("/portal/subscription", {"action": "unsubscribe"})
    mail.outbox.clear()

    assert services.deliver_report(report_id=history["reports"]["first"].pk) == 0
