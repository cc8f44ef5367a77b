"""`manage.py init_pki`, the PKI settings, and the receivers of governance's announcements (they only enqueue)."""
import pytest
from django.core.management import call_command
from django.test import override_settings
from kombu.exceptions import OperationalError

from governance import signals as governance_signals
from reports import hooks, pki, signing, tasks
from reports.templatetags.report_format import num


def test_init_pki_creates_the_organisation_pki_once(tmp_path, capsys):
    directory = tmp_path / "pki"
    with override_settings(REPORT_PKI_DIR=directory, REPORT_ORGANISATION="Example Bank"):
        call_command("init_pki")
        created = capsys.readouterr().out
        before = {name: (directory / name).read_bytes() for name in ("root.pem", "root-key.pem", "organisation.p12")}
        call_command("init_pki", "--organisation", "Other Bank")
        kept = capsys.readouterr().out

    assert created.startswith(f"Created PKI in {directory}") and "Root SHA-256 fingerprint:" in created
    assert kept.startswith("Kept the existing PKI")
    assert {name: (directory / name).read_bytes() for name in before} == before
    assert "Example Bank Model Registry Root CA" in signing.certificate_summary(before["root.pem"])["subject"]


def test_missing_pki_is_an_error_outside_development(tmp_path):
    with override_settings(REPORT_PKI_DIR=tmp_path / "none", REPORT_PKI_AUTO_CREATE=False):
        with pytest.raises(signing.ReportSigningError, match="run `manage.py init_pki`"):
            pki.organisation_pkcs12()


def test_development_pki_is_created_on_first_use(tmp_path):
    with override_settings(REPORT_PKI_DIR=tmp_path / "auto", REPORT_PKI_AUTO_CREATE=True):
        assert pki.root_pem().startswith(b"-----BEGIN CERTIFICATE-----")


@pytest.mark.parametrize(("announcement", "facts", "task"), [
    (governance_signals.change_request_gated, {"change_request_id": 7}, "update_change_impact_report"),
    (governance_signals.approval_recorded, {"change_request_id": 7, "approver_id": 3}, "update_change_impact_report"),
    (governance_signals.change_request_deployed, {"change_request_id": 7, "approver_id": 3},
     "update_change_impact_report"),
    (governance_signals.alias_rolled_back, {"alias_change_id": 11, "actor_id": 5}, "produce_rollback_report"),
])
def test_hooks_only_enqueue_on_the_cpu_queue(monkeypatch, announcement, facts, task):
    calls = []
    monkeypatch.setattr(getattr(tasks, task), "apply_async", lambda **kwargs: calls.append(kwargs))

    announcement.send(sender=None, **facts)

    assert calls == [{"args": [next(iter(facts.values()))], "queue": "cpu"}]


def test_a_broker_outage_does_not_fail_the_request_that_fired_the_hook(monkeypatch, caplog):
    def refuse(**kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks.update_change_impact_report, "apply_async", refuse)

    hooks.on_approval_recorded(None, change_request_id=7, approver_id=3)

    assert "produce_missing_reports" in caplog.text


def test_report_tasks_retry_only_when_storage_is_unavailable():
    from foundation.errors import StorageUnavailable

    for task in (tasks.update_change_impact_report, tasks.produce_rollback_report):
        assert task.autoretry_for == (StorageUnavailable,)
        assert task.acks_late is True


@pytest.mark.parametrize(("value", "shown"), [(None, "—"), (0.0123456, "0.01235"), (1.2e-05, "1.200e-05"),
                                              (65536, "65,536"), (True, "yes"), (float("nan"), "—")])
def test_numbers_are_shown_with_four_significant_digits(value, shown):
    assert num(value) == shown
