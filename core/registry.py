"""The device registry as the streaming path sees it: a cached lookup refreshed from the lake."""
from __future__ import annotations

import logging
import time

import pyarrow as pa

from core import lake

log = logging.getLogger(__name__)


class RegistryCache:
    """The registry table, reloaded from `registry/devices` at most every `ttl_s` seconds.

    Streaming workers call `get()` per batch; a registry change reaches running jobs within the TTL.
    No registry table yet (or an empty one) is an empty registry, not an error: every device is
    unknown until the table appears, which the next reload after the TTL picks up. If a reload
    fails (e.g. the table is being rewritten), the previous snapshot is kept.
    """

    def __init__(self, lake_root: str, ttl_s: float = 300.0):
        self._lake = lake_root
        self._ttl = ttl_s
        self._loaded_at = -1e18
        self._table: pa.Table | None = None

    def get(self) -> pa.Table:
        if time.monotonic() - self._loaded_at > self._ttl:
            try:
                table = lake.read(self._lake, "devices")
                if table.num_rows == 0:
                    log.warning("device registry at %s is missing or empty: all devices unknown for now",
                                self._lake)
                self._table = table
            except Exception:  # noqa: BLE001 - keep serving the last good snapshot
                log.exception("registry reload failed; keeping the previous snapshot")
                if self._table is None:
                    self._table = lake.TABLES["devices"].schema.empty_table()
            self._loaded_at = time.monotonic()
        return self._table
