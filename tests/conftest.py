"""Shared fixtures. Integration tests need the local services (scripts/services.sh start);
when FLEET_REQUIRE_SERVICES=1 (CI) a missing service fails the test instead of skipping it."""
from __future__ import annotations

import datetime as dt
import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
KAFKA_BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}")
FLINK_REST = f"127.0.0.1:{os.environ.get('FLINK_REST_PORT', '8081')}"


def _port_open(hostport: str) -> bool:
    host, port = hostport.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, hostport: str) -> None:
    if _port_open(hostport):
        return
    message = f"{name} is not reachable on {hostport}; start it with scripts/services.sh start"
    if os.environ.get("FLEET_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def kafka_bootstrap() -> str:
    require_service("Kafka", KAFKA_BOOTSTRAP)
    return KAFKA_BOOTSTRAP


@pytest.fixture
def lake(tmp_path: Path) -> str:
    return str(tmp_path / "lake")


UTC = dt.timezone.utc
