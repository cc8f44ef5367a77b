"""gunicorn as the stack runs it keeps a polling client's connection: one requests.Session polling /healthz every
~2 s reuses one TCP connection for half a minute, never sees a reset, and gets 200 every time.

gunicorn's default keep-alive is 2 s, which races exactly such a client: the server closes the idle connection
just as the client reuses it. The server here is started the way scripts/stack.sh starts it
(`gunicorn -c config/gunicorn.conf.py --bind ...`), so the test checks the options the stack really uses. Against
a 2 s keep-alive about every other poll lands on a closed connection, so 15 polls catch it; that the keep-alive
outlasts a client's or proxy's 60 s idle timeout is checked on the printed configuration.
"""
import os
import random
import signal
import subprocess
import time

import pytest
import requests

from tests.e2e.conftest import ROOT, VENV_BIN, _free_port, _process_env

pytestmark = pytest.mark.e2e

GUNICORN_CONFIG = "config/gunicorn.conf.py"
POLLS = 15


def gunicorn_command(port: int) -> list[str]:
    """The stack's command line (scripts/stack.sh up) without its pid, daemon and log-file options."""
    return [str(VENV_BIN / "gunicorn"), "-c", GUNICORN_CONFIG, "--bind", f"127.0.0.1:{port}"]


@pytest.fixture
def stack_web_server(committed_db, tmp_path):
    port = _free_port()
    log_path = tmp_path / "web.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(gunicorn_command(port), cwd=ROOT, env=_process_env(), stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{base_url}/healthz", timeout=10).status_code == 200:
                break
        except requests.RequestException:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise RuntimeError(f"gunicorn did not become healthy:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    yield base_url
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=60)


def test_the_stack_starts_gunicorn_with_the_shared_options():
    stack = (ROOT / "scripts" / "stack.sh").read_text()
    assert f"gunicorn\" -c {GUNICORN_CONFIG} --bind" in stack
    printed = subprocess.run([str(VENV_BIN / "gunicorn"), "-c", GUNICORN_CONFIG, "--print-config"], cwd=ROOT,
                             env=_process_env(), capture_output=True, text=True, timeout=60, check=True).stdout
    config = dict(line.split(" = ", 1) for line in printed.splitlines() if " = " in line)
    config = {name.strip(): value.strip() for name, value in config.items()}
    assert int(config["keepalive"]) >= 65  # longer than the usual 60 s idle timeout of clients and proxies
    assert int(config["max_requests"]) > 0 and int(config["max_requests_jitter"]) > 0


def test_a_client_polling_every_two_seconds_keeps_one_connection(stack_web_server):
    session = requests.Session()
    statuses, local_ports = [], set()
    for poll in range(POLLS):
        if poll:
            time.sleep(random.uniform(1.95, 2.05))
        try:
            response = session.get(f"{stack_web_server}/healthz", timeout=10, stream=True)
            # urllib3 silently reconnects when the server has closed the idle connection; the client's port shows it.
            local_ports.add(response.raw.connection.sock.getsockname()[1])
            response.content  # noqa: B018 (read the body, which hands the connection back to the session)
        except requests.ConnectionError as error:  # a reset, or a connection closed under the request
            pytest.fail(f"poll {poll + 1} of {POLLS}: {error}")
        statuses.append(response.status_code)
    assert statuses == [200] * POLLS
    assert len(local_ports) == 1, f"the server closed the connection {len(local_ports) - 1} times"
