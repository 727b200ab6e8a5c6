"""Batch scoring of feature windows with RunInference: blocks -> per-model scores -> ensemble ->
scores rows and model alerts.

    features (Arrow) --Blocks--> (block_id, meta, raw feature matrix)
        --Normalize[m]--> (block_id, device-relative z)  --RunInference[m]--> (block_id, (scores, contributions))
    CoGroupByKey(meta, m1 .. mn) --BuildScores--> scores rows (Arrow) + the ensemble's windows per device
    windows --by device--> incidents --> OPEN / ESCALATED / CLOSED alert rows (Arrow, WARNING / HIGH)

Model alerts are incidents (issue 14 item 7): consecutive anomalous windows of a device form one
incident, opened once (WARNING) when it is HIGH or has lasted ``IncidentPolicy.open_after`` windows (one
anomalous window alone is the most common false alarm), escalated once to HIGH when it reaches HIGH or
persists, closed when the device is normal again; each row names the incident's top contributing sensors
(:func:`incident_rows`). The alerts contract is unchanged: status, incident id and sensors are in
``context``.

Element sizes: a block's meta table and each model's (scores, contributions) cross the Join, so a
block holds at most as many windows as keep the largest of them within the chunk bound of
:mod:`transforms.arrow` (``--block_rows`` is capped accordingly); its meta is compacted (a slice of
the file's table would pickle the whole file's columns).

The models come from the catalog (models/base.py): the one a version was trained as says which
handler serves it, whether it needs the device ids beside z, and whether its contributions (the
window's |z|) explain the ensemble's alerts. The ensemble is the explicit vote of models/ensemble.py.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from models import base as catalog
from models import ensemble, registry
from models.features import CROSS_FEATURE_SENSORS, MODEL_FEATURES, DeviceBaseline, matrix, sensor_stat, top_features
from models.handlers import BASELINE_FILE, handler_for
from schemas import contracts
from transforms.arrow import DEFAULT_CHUNK_BYTES, ElementSizes, compact

APP = "score"
META_COLUMNS = ["device_id", "window_size", "window_start", "window_end"]


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    path: str
    kind: str            # the handler serving it (models/handlers.py)
    threshold: float
    module: str | None = None     # where its class registers (imported on workers that do not know it)
    features: tuple[str, ...] = MODEL_FEATURES    # the model inputs it was trained on (its metadata)

    @classmethod
    def of(cls, mv: registry.ModelVersion) -> "ModelRef":
        features = tuple(mv.metadata.get("model_features") or MODEL_FEATURES)
        unknown = [c for c in features if c not in MODEL_FEATURES]
        if unknown:
            raise ValueError(f"model {mv.name} {mv.version} ({mv.path}) was trained on features this code does not "
                             f"compute: {unknown}; retrain it (python -m pipelines.train) or pin another version")
        return cls(mv.name, mv.version, str(mv.path), mv.metadata["kind"], float(mv.metadata["threshold"]),
                   mv.metadata.get("model_module"), features)

    def columns(self) -> np.ndarray:
        """Index of each of its features in MODEL_FEATURES (a version trained on an older, smaller
        feature set sees those columns only)."""
        return np.array([MODEL_FEATURES.index(c) for c in self.features], dtype=np.int64)

    def model_class(self) -> type[catalog.AnomalyModel]:
        return catalog.get(self.name, self.module)


def ensemble_version(models: list[ModelRef]) -> str:
    return ",".join(f"{m.name}={m.version}" for m in sorted(models, key=lambda m: m.name))


def max_block_rows(requested: int, nbytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Windows per block: the requested number, capped so that a model's output for the block
    (a float64 score and a contribution per feature, per window) stays within ``nbytes``."""
    per_window = (len(MODEL_FEATURES) + 1) * 8
    return max(1, min(requested, nbytes // per_window))


class _Blocks(beam.DoFn):
    """An Arrow table of feature windows -> blocks of at most `rows` windows: (id, meta, matrix)."""

    def __init__(self, window_size: str, rows: int):
        self._ws, self._rows = window_size, max_block_rows(rows)
        self._windows = Metrics.counter(APP, "windows_in")

    def setup(self):
        self._sizes = ElementSizes("score_block_meta")

    def process(self, element):
        source, data = element
        data = data.filter(pc.equal(data["window_size"], self._ws))
        if data.num_rows == 0:
            return
        data = data.sort_by([("device_id", "ascending"), ("window_start", "ascending")])
        self._windows.inc(data.num_rows)
        tag = hashlib.sha1(source.encode()).hexdigest()[:12]
        for i, lo in enumerate(range(0, data.num_rows, self._rows)):
            part = data.slice(lo, self._rows)
            yield f"{tag}-{i:05d}", self._sizes.observe(compact(part.select(META_COLUMNS))), matrix(part)


class _Normalize(beam.DoFn):
    """Raw features -> the model version's device-relative z (its baseline, hash-verified)."""

    def __init__(self, model: ModelRef):
        self._model = model

    def setup(self):
        self._baseline = DeviceBaseline.from_bytes(registry.read_verified(self._model.path, BASELINE_FILE))
        if self._baseline.columns != self._model.features:
            raise ValueError(f"model {self._model.name} {self._model.version}: its baseline's features "
                             f"{list(self._baseline.columns)} differ from its metadata's model_features "
                             f"{list(self._model.features)}; the version is inconsistent, retrain it")
        self._columns = None if self._model.features == MODEL_FEATURES else self._model.columns()
        self._with_devices = self._model.model_class().needs_devices

    def process(self, block):
        block_id, meta, x = block
        devices = np.asarray(meta["device_id"].to_pylist(), dtype=object)
        z = self._baseline.transform(devices, x if self._columns is None else x[:, self._columns])
        yield block_id, ((z, devices) if self._with_devices else z)


class _BuildScores(beam.DoFn):
    """Joins a block's model outputs: scores rows for each model and the ensemble; anomalous
    ensemble windows go to the `anomalies` output, keyed by device."""

    ANOMALIES = "anomalies"

    def __init__(self, models: list[ModelRef], high_factor: float, top_k: int, scored_at: dt.datetime,
                 vote: ensemble.KOfN = ensemble.DEFAULT_VOTE):
        self._models = sorted(models, key=lambda m: m.name)
        self._high, self._k, self._at, self._vote = high_factor, top_k, scored_at, vote
        self._rows = Metrics.counter(APP, "score_rows")
        self._anomalies = {m.name: Metrics.counter(APP, f"anomalous_windows_{m.name}") for m in self._models}
        self._anomalies[ensemble.ENSEMBLE] = Metrics.counter(APP, "anomalous_windows_ensemble")

    def process(self, joined):
        block_id, grouped = joined
        if any(len(v) != 1 for v in grouped.values()):
            raise RuntimeError(f"block {block_id}: expected one meta and one result per model, got "
                               f"{ {k: len(v) for k, v in grouped.items()} }")
        meta = grouped["meta"][0]
        n = meta.num_rows
        scores, contrib = {}, {}
        for m in self._models:
            s, c = grouped[m.name][0]
            scores[m.name], contrib[m.name] = np.asarray(s, np.float64), _widen(np.asarray(c, np.float64), m)
        thresholds = {m.name: m.threshold for m in self._models}
        ens = ensemble.combine(scores, thresholds, self._vote)
        severity = ensemble.severity(ens, self._high)
        z_rows = self._z_contributions(contrib)
        ens_contrib = z_rows if z_rows is not None else \
            np.mean([c / (c.sum(axis=1, keepdims=True) + 1e-12) for c in contrib.values()], axis=0)
        outputs = [(m.name, m.version, scores[m.name], m.threshold, contrib[m.name]) for m in self._models]
        outputs.append((ensemble.ENSEMBLE, ensemble_version(self._models), ens, 1.0, ens_contrib))
        date = pc.cast(meta["window_start"], pa.date32())
        parts = []
        for name, version, s, threshold, c in outputs:
            flagged = s >= threshold
            tops = [[] for _ in range(n)]
            if flagged.any():
                for i, names in zip(np.flatnonzero(flagged), top_features(c[flagged], MODEL_FEATURES, self._k)):
                    tops[i] = names
            self._anomalies[name].inc(int(flagged.sum()))
            parts.append(pa.table({
                **{col: meta[col] for col in META_COLUMNS},
                "model": pa.array([name] * n, pa.string()), "model_version": pa.array([version] * n, pa.string()),
                "score": pa.array(s, pa.float64()), "threshold": pa.array(np.full(n, threshold), pa.float64()),
                "is_anomaly": pa.array(flagged), "top_features": pa.array(tops, pa.list_(pa.string())),
                "scored_at": pa.array([self._at] * n, contracts.UTC_TS), "date": date,
            }))
        table = pa.concat_tables(parts).cast(contracts.SCORES)
        self._rows.inc(table.num_rows)
        yield table
        normal = np.flatnonzero(ens < 1.0)
        if len(normal):          # the device is normal again there: incidents close (one element per device)
            devices = meta["device_id"].to_pylist()
            starts, ends = meta["window_start"].to_pylist(), meta["window_end"].to_pylist()
            by_device: dict[str, list] = {}
            for i in normal:
                by_device.setdefault(devices[i], []).append(
                    {"window_start": starts[i], "window_end": ends[i], "anomalous": False})
            for d, ws in by_device.items():
                yield beam.pvalue.TaggedOutput(self.ANOMALIES, (d, {"normal": ws}))
        anomalous = np.flatnonzero(ens >= 1.0)
        if len(anomalous):
            by_model = {m.name: scores[m.name] for m in self._models}
            for i in anomalous:
                tops = top_features(ens_contrib[i:i + 1], MODEL_FEATURES, self._k)[0]
                detail = {f: round(float(z_rows[i, MODEL_FEATURES.index(f)]), 3) for f in tops} \
                    if z_rows is not None else {}
                yield beam.pvalue.TaggedOutput(self.ANOMALIES, (meta["device_id"][i].as_py(), {
                    "window_start": meta["window_start"][i].as_py(), "window_end": meta["window_end"][i].as_py(),
                    "anomalous": True, "score": float(ens[i]), "severity": severity[i], "top_features": tops, "z": detail,
                    "model_scores": {k: round(float(v[i]), 6) for k, v in by_model.items()},
                }))


    def _z_contributions(self, contrib: dict[str, np.ndarray]) -> np.ndarray | None:
        """The ensemble's attribution: the |z| of the window, from a model whose contributions are
        exactly that (models/base.py ``explains_with_z``), else None (the models' mean share is used)."""
        for m in self._models:
            if m.model_class().explains_with_z:
                return contrib[m.name]
        return None


def _widen(contrib: np.ndarray, model: ModelRef) -> np.ndarray:
    """A model's contributions over its own features -> over MODEL_FEATURES (0 where it has none)."""
    if model.features == MODEL_FEATURES:
        return contrib
    out = np.zeros((contrib.shape[0], len(MODEL_FEATURES)))
    out[:, model.columns()] = contrib
    return out


MODEL_ALERT_RULE = "MODEL_ENSEMBLE"
OPEN, ESCALATED, CLOSED = "OPEN", "ESCALATED", "CLOSED"
LEVELS = {1: "WARNING", 2: "HIGH"}          # level 0: pending, not yet raised


@dataclass(frozen=True)
class IncidentPolicy:
    """When a device's anomalous ensemble windows raise, escalate and close an incident
    (:func:`incident_rows`); score's options set each field, these are the defaults."""
    high_factor: float = ensemble.DEFAULT_HIGH_FACTOR   # ensemble score from which a window is HIGH
    # anomalous windows before an incident that never reached HIGH is raised: a lone window is the
    # commonest false alarm, and a real fault lasts (acute ones are the streaming rules' job)
    open_after: int = 2
    escalate_after: int = 6      # anomalous windows after which a WARNING incident escalates to HIGH
    gap: int = 2                 # windows past its last anomalous one after which an incident closes
    top_k: int = 3               # top contributing features (and sensors) kept per window and incident


def incident_alert_id(device_id: str, first_window_start: dt.datetime, status: str) -> str:
    """The id of one row of an incident: device, rule, the incident's first window and the row's status."""
    return hashlib.sha1(f"{device_id}|{MODEL_ALERT_RULE}|{first_window_start.isoformat()}|{status}".encode()
                        ).hexdigest()[:32]


def feature_sensors(feature: str) -> tuple[str, ...]:
    """The sensors a model feature is computed from (a cross feature: several)."""
    if feature in CROSS_FEATURE_SENSORS:
        return CROSS_FEATURE_SENSORS[feature][1]
    return (sensor_stat(feature)[0],)


@dataclass
class Incident:
    """An open incident of a device: consecutive anomalous windows (gaps of at most ``gap`` windows)."""
    device_id: str
    first_start: dt.datetime
    last_end: dt.datetime
    level: int                    # 1 WARNING, 2 HIGH
    windows: int
    max_score: float
    sensors: dict                 # sensor -> weight from the windows' top features (rank k..1)
    seen_until: dt.datetime | None = None     # the device's last window already accounted for

    def top_sensors(self, k: int = 3) -> list[str]:
        return [s for s, _ in sorted(self.sensors.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def incident_rows(device: str, windows: list[dict], prior: Incident | None, *, window_s: float,
                  policy: IncidentPolicy, detected_at: dt.datetime, versions: dict | None = None,
                  thresholds: dict | None = None) -> tuple[list[dict], Incident | None]:
    """The alert rows of a device's scored ensemble windows (``anomalous`` ones with severity, score and
    top features, and normal ones), continuing ``prior``; returns (rows, the incident still open).

    One incident per run of anomalous windows: an OPEN row (WARNING, or HIGH when it opens on a HIGH
    window) at the window where it is first HIGH or has lasted ``policy.open_after`` anomalous windows, with
    the incident's first window as event time (a run that ends before that raises nothing: level 0,
    pending); one ESCALATED row (HIGH) at the window where it first reaches HIGH or
    has lasted ``policy.escalate_after`` anomalous windows; a CLOSED row at the first window that starts
    ``policy.gap`` windows after its last anomalous one (the device is normal again). Ids are deterministic
    (device, first window, status), so a rerun writes the same rows."""
    rows: list[dict] = []
    gap, high_factor, top_k = policy.gap, policy.high_factor, policy.top_k
    inc = dataclasses.replace(prior, sensors=dict(prior.sensors)) if prior else None
    seen = prior.seen_until if prior else None
    for w in sorted(windows, key=lambda w: w["window_start"]):
        if seen is not None and w["window_start"] <= seen:
            continue              # already accounted for by an earlier run (e.g. rescored after late data)
        start = w["window_start"]
        limit = None if inc is None else inc.last_end + dt.timedelta(seconds=gap * window_s)
        if inc is not None and (start > limit or (not w["anomalous"] and start >= limit)):
            if inc.level > 0:
                rows.append(_incident_row(inc, CLOSED, w, inc.max_score, "normal", detected_at, top_k, versions,
                                          thresholds, high_factor))
            inc = None
        if w["anomalous"]:
            high = w["score"] >= high_factor
            weights = {}
            for rank, f in enumerate(w.get("top_features") or []):
                for sensor in feature_sensors(f):
                    weights[sensor] = weights.get(sensor, 0) + (top_k - rank)
            if inc is None:
                inc = Incident(device, start, w["window_end"], 0, 1, w["score"], weights)
            else:
                inc.windows += 1
                inc.last_end = w["window_end"]
                inc.max_score = max(inc.max_score, w["score"])
                for sensor, v in weights.items():
                    inc.sensors[sensor] = inc.sensors.get(sensor, 0) + v
            if inc.level == 0 and (high or inc.windows >= policy.open_after):
                inc.level = 2 if high else 1
                rows.append(_incident_row(inc, OPEN, w, w["score"], "score" if high or inc.windows == 1 else "persisted",
                                          detected_at, top_k, versions, thresholds, high_factor))
            elif inc.level == 1 and (high or inc.windows >= policy.escalate_after):
                inc.level = 2
                rows.append(_incident_row(inc, ESCALATED, w, w["score"], "score" if high else "persisted",
                                          detected_at, top_k, versions, thresholds, high_factor))
        seen = start
    if inc is not None:
        inc.seen_until = seen
    return rows, inc


def _incident_row(inc: Incident, status: str, w: dict, value: float, reason: str, detected_at: dt.datetime,
                  top_k: int, versions, thresholds, high_factor: float) -> dict:
    severity = LEVELS[inc.level]
    context = {"incident_id": incident_alert_id(inc.device_id, inc.first_start, OPEN), "status": status,
               "reason": reason, "first_window_start": inc.first_start.isoformat(),
               "last_window_end": inc.last_end.isoformat(), "windows": inc.windows,
               "max_score": round(float(inc.max_score), 6), "top_sensors": inc.top_sensors(top_k),
               "window_start": w["window_start"].isoformat(), "window_end": w["window_end"].isoformat(),
               "model_versions": versions or {}, "thresholds": thresholds or {}}
    if w["anomalous"]:
        context.update(model_scores=w.get("model_scores", {}), top_features=w.get("top_features", []),
                       z=w.get("z", {}))
    return {"alert_id": incident_alert_id(inc.device_id, inc.first_start, status), "device_id": inc.device_id,
            "rule": MODEL_ALERT_RULE, "severity": severity,
            "event_time": inc.first_start if status == OPEN else w["window_start"], "detected_at": detected_at,
            "value": float(value), "threshold": 1.0 if severity == "WARNING" else high_factor,
            "context": json.dumps(context, sort_keys=True), "event_id": None}


class _Incidents(beam.DoFn):
    """The scored ensemble windows of one device -> its incident alerts (:func:`incident_rows`),
    continuing the incident a previous run left open (``prior``: device -> Incident)."""

    def __init__(self, window_s: float, policy: IncidentPolicy, models: list[ModelRef], prior: dict,
                 detected_at: dt.datetime):
        self._window_s, self._policy = window_s, policy
        self._versions = {m.name: m.version for m in models}
        self._thresholds = {m.name: m.threshold for m in models}
        self._prior, self._at = prior, detected_at
        self._alerts = Metrics.counter(APP, "alerts")
        self._counts = {st: Metrics.counter(APP, f"incidents_{st.lower()}") for st in (OPEN, ESCALATED, CLOSED)}

    def process(self, element):
        device, parts = element
        windows = [w for part in parts for w in (part["normal"] if "normal" in part else [part])]
        rows, _ = incident_rows(device, windows, self._prior.get(device), window_s=self._window_s,
                                policy=self._policy, detected_at=self._at, versions=self._versions,
                                thresholds=self._thresholds)
        for r in rows:
            self._counts[json.loads(r["context"])["status"]].inc()
        self._alerts.inc(len(rows))
        if rows:
            yield pa.Table.from_pylist(rows, schema=contracts.ALERTS)


class ScoreWindows(beam.PTransform):
    """(source, Arrow features table) -> {"scores": Arrow tables, "alerts": Arrow tables}."""

    def __init__(self, models: list[ModelRef], window_size: str, window_s: float, *, block_rows: int = 4096,
                 policy: IncidentPolicy = IncidentPolicy(), prior: dict | None = None, now: dt.datetime | None = None,
                 vote: ensemble.KOfN = ensemble.DEFAULT_VOTE):
        super().__init__()
        self._vote, self._policy = vote, policy
        self._models, self._ws, self._window_s = models, window_size, window_s
        self._block_rows = block_rows
        self._prior = prior or {}
        self._now = now or dt.datetime.now(dt.timezone.utc)

    def expand(self, tables):
        blocks = tables | "Blocks" >> beam.ParDo(_Blocks(self._ws, self._block_rows))
        joined = {"meta": blocks | "Meta" >> beam.Map(lambda b: (b[0], b[1]))}
        for m in self._models:
            handler = KeyedModelHandler(handler_for(m.kind, m.path))
            joined[m.name] = (blocks
                              | f"Normalize_{m.name}" >> beam.ParDo(_Normalize(m))
                              | f"RunInference_{m.name}" >> RunInference(handler)
                              | f"Unwrap_{m.name}" >> beam.MapTuple(lambda k, r: (k, r.inference)))
        built = (joined | "Join" >> beam.CoGroupByKey()
                 | "BuildScores" >> beam.ParDo(_BuildScores(self._models, self._policy.high_factor, self._policy.top_k,
                                                         self._now, self._vote))
                 .with_outputs(_BuildScores.ANOMALIES, main="scores"))
        alerts = (built[_BuildScores.ANOMALIES]
                  | "ByDevice" >> beam.GroupByKey()
                  | "Incidents" >> beam.ParDo(_Incidents(self._window_s, self._policy, self._models, self._prior,
                                                         self._now)))
        return {"scores": built.scores, "alerts": alerts}
