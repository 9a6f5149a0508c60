"""Shared fixtures: the package on the import path, and a real Kiln started with ``kiln up``."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

CLIENT_DIR = pathlib.Path(__file__).resolve().parents[1]
REPO = CLIENT_DIR.parents[1]
sys.path.insert(0, str(CLIENT_DIR))  # the tests run from the tree, without installing the package

from kiln_client import Kiln, KilnError  # noqa: E402

#: How long ``kiln up`` may take to be ready: it builds the demo model's environment with pip.
STARTUP_SECONDS = 600
#: How long ``kiln up`` may take to stop after SIGTERM before it is killed.
STOP_SECONDS = 5


@pytest.fixture(scope="session")
def kiln_up(tmp_path_factory):
    """A Kiln of its own: ``kiln up`` on a scratch folder with one local CPU worker and the demo
    model promoted to production. Yields ``up.json`` (``url``, ``admin_key``, ``user_key``,
    ``worker_key``, ``account_id``). Skipped when the binary has not been built, unless
    ``KILN_BIN`` names it explicitly."""
    binary = pathlib.Path(os.environ.get("KILN_BIN", REPO / ".build" / "debug" / "kiln"))
    if not binary.exists():
        if "KILN_BIN" in os.environ:
            pytest.fail(f"KILN_BIN={binary} does not exist")
        pytest.skip(f"no kiln binary at {binary}: build it (swift build --product kiln) or set KILN_BIN")
    data = tmp_path_factory.mktemp("kiln-up")
    log_path = data / "kiln.log"
    config = data / "kiln.yaml"
    config.write_text("webhooks: {allow_private_urls: true}\n")  # the tests' webhook receiver is on loopback
    env = dict(os.environ, KILN_RUNTIME_PATH=str(REPO / "python"))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(binary), "up", "--data", str(data), "--port", "0", "--workers", "1", "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield _wait_until_ready(process, data / "up.json", log_path)
    finally:
        _stop(process)


def _wait_until_ready(process: subprocess.Popen, up_json: pathlib.Path, log_path: pathlib.Path) -> dict:
    """``up.json`` once it exists and the server lists the demo model with a ``production``
    alias (``kiln up`` writes the file before it pushes and promotes the model)."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"kiln up exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        up = _read_json(up_json)
        if up and _demo_model_ready(up):
            return up
        time.sleep(0.5)
    pytest.fail(f"kiln up was not ready within {STARTUP_SECONDS} s:\n{log_path.read_text()[-4000:]}")


def _read_json(path: pathlib.Path):
    """The file's JSON, or ``None`` while it is missing or still being written."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _demo_model_ready(up: dict) -> bool:
    try:
        with Kiln(up["url"], up["user_key"], timeout=5, max_retries=0) as kiln:
            models = kiln.models.list()
    except KilnError:
        return False
    return any(model.name == "demo-video" and any(alias.name == "production" for alias in model.aliases)
               for model in models)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM for a graceful stop, then SIGKILL after a few seconds: a graceful stop of
    ``kiln up`` can take over 15 s, and nothing in its scratch folder needs to be kept."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def kiln(kiln_up):
    """A client of ``kiln_up`` with its user key."""
    with Kiln(kiln_up["url"], kiln_up["user_key"]) as client:
        yield client
