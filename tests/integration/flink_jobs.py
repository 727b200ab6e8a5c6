"""Running pipelines on the local Flink from tests: submit in a subprocess, find, cancel."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import FLINK_REST, PROJECT_ROOT

JOB_ENDPOINT = f"127.0.0.1:{os.environ.get('JOB_SERVER_PORT', '8099')}"
PORTABLE_ARGS = ["--runner=PortableRunner", f"--job_endpoint={JOB_ENDPOINT}", "--environment_type=LOOPBACK",
                 "--default_environment_type=EMBEDDED"]


def rest(path: str, method: str = "GET") -> dict:
    request = urllib.request.Request(f"http://{FLINK_REST}{path}", method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else {}


def jobs(state: str | None = None) -> list[dict]:
    return [j for j in rest("/jobs/overview")["jobs"] if state is None or j["state"] == state]


def start(module: str, args: list[str], log: Path) -> subprocess.Popen:
    """Starts `python -m module args` in the background (the LOOPBACK worker lives in it)."""
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=PROJECT_ROOT,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for_running_job(known: set[str], timeout_s: float = 120) -> str:
    """The id of a new RUNNING job (not among `known`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = [j["jid"] for j in jobs("RUNNING") if j["jid"] not in known]
        if running:
            return running[0]
        time.sleep(1)
    raise TimeoutError("no new Flink job reached RUNNING")


def cancel(jid: str, timeout_s: float = 60) -> None:
    rest(f"/jobs/{jid}?mode=cancel", method="PATCH")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if rest(f"/jobs/{jid}")["state"] in ("CANCELED", "FAILED", "FINISHED"):
            return
        time.sleep(0.5)
    raise TimeoutError(f"job {jid} did not stop")


def stop(process: subprocess.Popen, jid: str | None) -> None:
    if jid:
        try:
            cancel(jid)
        except Exception:  # noqa: BLE001 - still stop the client below
            pass
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
