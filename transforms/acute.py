"""The acute-rule stage of the streaming pipeline, as Beam transforms over Arrow batches.

    landing rows (Arrow) --Enrich--> (shard, Arrow batch) --stateful rules per shard--> alert dicts

Enrich is vectorised: registry join (model, rated current, timezone), `ts` to UTC, values to
canonical units, range check. Devices the registry does not know (yet) flow on with fleet-default
thresholds and no rated current (so CURRENT_SPIKE skips them); they are counted. The registry is
re-read within its TTL, so a registry that appears later is picked up without a restart.

Evaluation is keyed by a hash shard of the device: one element per (shard, batch), so the per-element
cost of Beam is paid per batch, not per device. The engine (core.acute_rules, no Beam) works on
all devices of the batch at once; their state lives in a log-structured store over three state cells
of the shard key (core.acute_state): a batch reads and appends only the devices it touched, in a
versioned binary page format. An event-time timer per shard compacts the store and evicts devices
silent past their horizon (24 h window + lateness by default). A device the store does not hold (a
job started without a savepoint) gets its vibration baseline rebuilt from the lake
(core.acute_warm), loaded once per worker process.
"""
from __future__ import annotations

import datetime as dt
import logging
import typing
import zlib

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.coders import Coder, VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.shared import Shared
from apache_beam.utils.timestamp import Timestamp

from core import acute_state, acute_warm
from core.arrays import to_numpy
from core.readings import canonical_values, in_range
from core.acute_rules import RULE_NAMES, Batch, DeviceStates, RuleConfig, evaluate
from core.registry import RegistryCache
from core.timestamps import parse_ts

log = logging.getLogger(__name__)
DEFAULT_SHARDS = 16
RULES = RULE_NAMES
EVICTION_PERIOD_S = 3600.0


def shard_of(device_ids: list[str], shards: int) -> np.ndarray:
    return np.fromiter((zlib.crc32(d.encode()) % shards for d in device_ids), np.int64, len(device_ids))


def _shards(device: pa.ChunkedArray | pa.Array, shards: int) -> np.ndarray:
    """shard_of per reading, hashing each distinct device once."""
    enc = (device.combine_chunks() if isinstance(device, pa.ChunkedArray) else device).dictionary_encode()
    return shard_of(enc.dictionary.to_pylist(), shards)[enc.indices.to_numpy()]


class _EnrichFn(beam.DoFn):
    def __init__(self, lake_root: str, shards: int, registry_ttl_s: float):
        self._lake, self._shards, self._ttl = lake_root, shards, registry_ttl_s
        self.unknown = Metrics.counter("acute", "readings_unknown_device")
        self.bad_time = Metrics.counter("acute", "readings_unparseable_ts")
        self.out_of_range = Metrics.counter("acute", "readings_out_of_range")

    def setup(self):
        self._registry = RegistryCache(self._lake, self._ttl)

    def process(self, readings: pa.Table):
        if readings.num_rows == 0:
            return
        registry = self._registry.get()
        device = readings["device_id"]
        # unknown devices (also: no registry yet) get a null index, and a null index takes nulls
        take = pc.index_in(device, value_set=registry["device_id"].combine_chunks())
        known = np.asarray(take.is_valid())
        zones = registry["timezone"].take(take)
        t = parse_ts(readings["ts"], zones)
        value = canonical_values(readings["sensor_type"], readings["unit"], readings["value"])
        ok_range = in_range(readings["sensor_type"], value)
        ok_time = np.asarray(t.is_valid())
        self.unknown.inc(int((~known).sum()))
        self.bad_time.inc(int((~ok_time).sum()))
        self.out_of_range.inc(int((ok_time & ~ok_range).sum()))
        usable = ok_time & ok_range
        if not usable.any():
            return
        table = pa.table({
            "device_id": readings["device_id"], "event_id": readings["event_id"],
            "sensor_type": readings["sensor_type"], "t_us": t.cast(pa.int64()).fill_null(0),
            "value": value,
            "model": registry["model"].take(take),
            "rated_current_a": registry["rated_current_a"].take(take).cast(pa.float64()),
            "shard": _shards(device, self._shards),
        }).filter(pa.array(usable))
        for shard in np.unique(table["shard"].to_numpy()):
            yield int(shard), table.filter(pc.equal(table["shard"], int(shard)))


class PageCoder(Coder):
    """Acute state pages (DeviceStates) in acute_state's versioned binary layout, not pickle."""

    def encode(self, value: DeviceStates) -> bytes:
        return acute_state.encode(value)

    def decode(self, encoded: bytes) -> DeviceStates:
        return acute_state.decode(encoded)

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return typing.Any


class _BeamCells:
    """acute_state.Cells over the state cells of one shard key."""

    def __init__(self, log_bag, runs_bag, level1, level2):
        self._log, self._runs, self._levels = log_bag, runs_bag, {1: level1, 2: level2}

    def log(self):
        return list(self._log.read())

    def append(self, page):
        self._log.add(page)

    def clear_log(self):
        self._log.clear()

    def runs(self):
        return list(self._runs.read())

    def add_run(self, page):
        self._runs.add(page)

    def clear_runs(self):
        self._runs.clear()

    def level(self, i):
        return self._levels[i].read()

    def set_level(self, i, page):
        if page is None:
            self._levels[i].clear()
        else:
            self._levels[i].write(page)


class _RulesFn(beam.DoFn):
    """Per shard: the store of its devices' states, updated batch by batch (arrival order kept)."""
    LOG = BagStateSpec("log", PageCoder())
    RUNS = BagStateSpec("runs", PageCoder())     # added with state layout 2: empty in older savepoints
    LEVEL1 = ReadModifyWriteStateSpec("level1", PageCoder())
    LEVEL2 = ReadModifyWriteStateSpec("level2", PageCoder())
    EVICT_AT = ReadModifyWriteStateSpec("evict_at", VarIntCoder())
    EVICT = TimerSpec("evict", TimeDomain.WATERMARK)

    def __init__(self, lake_root: str, config: RuleConfig, idle_horizon_s: float | None = None,
                 eviction_period_s: float = EVICTION_PERIOD_S, registry_ttl_s: float = 300.0,
                 warm_start: bool = True, warm_as_of: dt.datetime | None = None):
        # the config arrives as a value (parsed on the driver), not as a path the worker would open
        self._lake, self._config, self._horizon_s, self._period_s = lake_root, config, idle_horizon_s, \
            eviction_period_s
        self._ttl, self._warm_start, self._warm_as_of = registry_ttl_s, warm_start, warm_as_of
        self._shared = Shared()          # one warm-start source per worker process, not per DoFn instance
        self._counters = {}

    def setup(self):
        self._registry = RegistryCache(self._lake, self._ttl)
        self._warm = (self._shared.acquire(lambda: acute_warm.WarmStart(self._lake, self._config,
                                                                                  as_of=self._warm_as_of))
                      if self._warm_start else None)
        th = self._config.for_model(None)
        default = th.vibration_window_buckets * th.vibration_bucket_us + th.lateness_us
        self._horizon_us = int(self._horizon_s * 1e6) if self._horizon_s is not None else default
        self._period_us = int(self._period_s * 1e6)

    def _count(self, name: str, n: int) -> None:
        if n:
            if name not in self._counters:
                self._counters[name] = Metrics.counter("acute", name)
            self._counters[name].inc(n)

    def process(self, element, ts=beam.DoFn.TimestampParam, log_bag=beam.DoFn.StateParam(LOG),
                runs_bag=beam.DoFn.StateParam(RUNS), level1=beam.DoFn.StateParam(LEVEL1),
                level2=beam.DoFn.StateParam(LEVEL2), evict_at=beam.DoFn.StateParam(EVICT_AT),
                timer=beam.DoFn.TimerParam(EVICT)):
        _, table = element
        arrived = int(ts.micros)
        batch = Batch.from_table(table, arrived)
        store = acute_state.Store(_BeamCells(log_bag, runs_bag, level1, level2))
        ids, index = batch.devices()
        new, alerts, counts = evaluate(store.lookup(ids, self._warm_fill(ids, index, batch)), batch, self._config,
                                       dt.datetime.now(dt.timezone.utc), index)
        store.write(new)
        self._count("state_devices_written", len(new))
        if evict_at.read() is None:
            when = arrived + self._period_us
            timer.set(Timestamp(micros=when))
            evict_at.write(when)
        for name, k in counts.items():
            self._count(name if name.startswith("alerts_") else f"readings_{name}", k)
        yield from alerts

    def _warm_fill(self, ids: np.ndarray, index: np.ndarray, batch: Batch):
        """States for the batch's devices the store does not hold: baselines rebuilt from the lake."""
        if self._warm is None:
            return None

        def fill(missing: np.ndarray):
            # only called for devices without state: the model lookup stays off the per-batch path
            first_row = np.unique(index, return_index=True)[1]
            models = np.asarray(batch.model, object)[first_row][np.searchsorted(ids, missing)]
            states = self._warm.states(missing, models,
                                       self._registry.get())
            self._count("state_devices_warmed", int((np.diff(states.offsets("vib")) > 0).sum()))
            return states
        return fill

    @on_timer(EVICT)
    def evict(self, fired=beam.DoFn.TimestampParam, log_bag=beam.DoFn.StateParam(LOG),
              runs_bag=beam.DoFn.StateParam(RUNS), level1=beam.DoFn.StateParam(LEVEL1),
              level2=beam.DoFn.StateParam(LEVEL2), evict_at=beam.DoFn.StateParam(EVICT_AT),
              timer=beam.DoFn.TimerParam(EVICT)):
        """Compacts the shard's store, dropping devices silent past the horizon; re-arms while
        devices remain, no earlier than the next one could expire."""
        store = acute_state.Store(_BeamCells(log_bag, runs_bag, level1, level2))
        now = int(fired.micros)
        kept, evicted = store.compact(now, self._horizon_us)
        self._count("state_devices_evicted", evicted)
        evict_at.clear()
        if kept:
            oldest = int(level2.read().seen_at.min())
            when = max(now + self._period_us, oldest + self._horizon_us + 1)
            if when < GlobalWindow().max_timestamp().micros:
                timer.set(Timestamp(micros=when))
                evict_at.write(when)


@beam.typehints.with_input_types(pa.Table)
@beam.typehints.with_output_types(typing.Dict[str, typing.Any])
class AcuteRules(beam.PTransform):
    """PCollection of decoded landing rows (Arrow) -> PCollection of CRITICAL alert dicts."""

    def __init__(self, lake_root: str, shards: int = DEFAULT_SHARDS, config: RuleConfig | None = None,
                 registry_ttl_s: float = 300.0, idle_horizon_s: float | None = None,
                 eviction_period_s: float = EVICTION_PERIOD_S, warm_start: bool = True,
                 warm_as_of: dt.datetime | None = None):
        """``config``: the parsed rule thresholds (default: the file shipped in the package, parsed here,
        on the driver)."""
        super().__init__()
        config = config if config is not None else RuleConfig.load()
        self._lake, self._shards, self._config, self._ttl = lake_root, shards, config, registry_ttl_s
        self._horizon, self._period = idle_horizon_s, eviction_period_s
        self._warm_start, self._warm_as_of = warm_start, warm_as_of

    def expand(self, readings):
        return (readings
                | "Enrich" >> beam.ParDo(_EnrichFn(self._lake, self._shards, self._ttl)).with_output_types(
                    typing.Tuple[int, typing.Any])    # an int key: a deterministic coder for the state
                | "EvaluatePerShard" >> beam.ParDo(_RulesFn(
                    self._lake, self._config, self._horizon, self._period, self._ttl, self._warm_start,
                    self._warm_as_of)))


__all__ = ["AcuteRules", "PageCoder", "RULES", "canonical_values", "in_range", "shard_of"]
