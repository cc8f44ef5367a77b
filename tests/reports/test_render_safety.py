"""The renderer escapes every user-supplied text and fetches nothing: no file://, no link-local metadata service,
no network at all; only the charts it embeds itself as data: URIs."""
import http.server
import subprocess
import threading

import pytest

from reports import facts, render, services
from tests.reports.conftest import HOSTILE_TEXT


@pytest.fixture
def listening_server():
    """A local HTTP server that records every request it gets (there must be none)."""
    requests = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            requests.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()


def extracted_text(pdf: bytes) -> str:
    text = subprocess.run(["pdftotext", "-raw", "-", "-"], input=pdf, capture_output=True, check=True).stdout.decode()
    return "".join(text.split())


def test_fetcher_refuses_file_link_local_and_any_network_url(listening_server, tmp_path):
    base_url, requests = listening_server
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-FILE-CONTENT")
    html = f"""<html><head>
      <link rel="stylesheet" href="http://169.254.169.254/latest/meta-data/iam/security-credentials/">
      <style>@import url("file://{secret}"); body {{ background: url("{base_url}/background.png"); }}</style>
    </head><body>
      <p>report body</p>
      <img src="file:///etc/passwd"><img src="{base_url}/tracker.png"><img src="secret.txt">
      <object data="file://{secret}"></object><iframe src="file://{secret}"></iframe>
    </body></html>"""

    rendered = render.html_to_pdf(html)

    refused = rendered.fetcher.refused
    assert "http://169.254.169.254/latest/meta-data/iam/security-credentials/" in refused
    assert "file:///etc/passwd" in refused
    assert f"file://{secret}" in refused
    assert f"{base_url}/tracker.png" in refused and f"{base_url}/background.png" in refused
    assert rendered.fetcher.asked == refused  # nothing was fetched
    assert requests == []  # and the network saw nothing
    text = extracted_text(rendered.pdf)
    assert "reportbody" in text and "TOP-SECRET" not in text


def test_fetcher_serves_the_embedded_charts():
    rendered = render.html_to_pdf('<img src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAAD'
                                  'UlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==">')

    assert rendered.fetcher.refused == [] and len(rendered.fetcher.asked) == 1


def test_user_text_in_a_report_is_escaped_and_nothing_is_fetched(history):
    request = history["requests"]["update"]
    stated = facts.change_impact_facts(request, signature_fields=services.approval_fields(2)) | {"report": {"id": 0}}

    rendered = render.render_change_impact(stated)

    assert rendered.fetcher.refused == []
    assert rendered.fetcher.asked and all(url.startswith("data:image/png;base64,") for url in rendered.fetcher.asked)
    assert len(rendered.fetcher.asked) == len(rendered.charts) == 5
    assert "".join(HOSTILE_TEXT.split()) in extracted_text(rendered.pdf)


def test_rollback_reason_is_printed_literally(history):
    text = extracted_text(history["pdfs"]["rollback"])

    # Twice: in the report body and in the operator's signature stamp.
    assert text.count("".join(("Flip rate drifted. " + HOSTILE_TEXT).split())) == 2


def test_a_template_without_a_signature_box_is_refused():
    with pytest.raises(render.ReportRenderingError, match="no signature box for approver-1"):
        render.html_to_pdf("<p>no boxes</p>", expected_fields=["approver-1"])
