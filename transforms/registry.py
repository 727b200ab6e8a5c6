"""The device registry as the streaming path sees it: a cached lookup refreshed from the lake."""
from __future__ import annotations

import logging
import time

import pyarrow as pa

from transforms import lake

log = logging.getLogger(__name__)


class RegistryCache:
    """device_id -> registry row, reloaded from `registry/devices` at most every `ttl_s` seconds.

    Streaming workers call `get()` per batch; a registry change reaches running jobs within the TTL.
    If a reload fails (e.g. the table is being rewritten), the previous snapshot is kept.
    """

    def __init__(self, lake_root: str, ttl_s: float = 300.0):
        self._lake = lake_root
        self._ttl = ttl_s
        self._loaded_at = -1e18
        self._table: pa.Table | None = None
        self._index: dict[str, int] = {}

    def get(self) -> tuple[pa.Table, dict[str, int]]:
        if time.monotonic() - self._loaded_at > self._ttl:
            try:
                table = lake.read(self._lake, "devices")
                self._table, self._index = table, {d: i for i, d in enumerate(table["device_id"].to_pylist())}
                self._loaded_at = time.monotonic()
            except Exception:  # noqa: BLE001 - keep serving the last good snapshot
                if self._table is None:
                    raise
                log.exception("registry reload failed; keeping the snapshot loaded %.0f s ago",
                              time.monotonic() - self._loaded_at)
        return self._table, self._index
