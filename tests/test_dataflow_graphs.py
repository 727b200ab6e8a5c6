"""Every Beam pipeline builds its Dataflow job offline: `main` with --runner=DataflowRunner --dry_run=True.

Beam pipelines among the entry points: streaming, cleanse, features, score, archive, extract_training,
and train with --start/--end (its extraction; the fitting is plain Python). simulate and evaluate
build no Beam pipeline.

Beam 2.72's dry run builds the whole Dataflow job (runner v2: the portable pipeline proto with the
Docker SDK environment, the Job message with its type) and returns before anything is staged or
submitted. It writes no --dataflow_job_file (Beam writes that file at submission), and a runner v2
Job message holds no steps (the graph is the pipeline proto). So the checks read the dry run's
result, captured from DataflowRunner.run_pipeline: the job type (batch / streaming) and the
transforms of the pipeline proto (the steps Dataflow would run). A name lookup or connection to
anything but the loopback address fails the test.

The batch pipelines plan at graph-construction time (which Delta versions, files and models to
read), so a small lake is built first: simulator (4 devices, 4 days: the first archived, landing
v0..v2), cleanse of landing v0, features, cleanse of v1 (landing v2 is then new to cleanse and clean
v1 to features), and small models for score. The streaming pipeline needs the Java expansion service
for ReadFromKafka (scripts/services.sh: 127.0.0.1:$KAFKA_EXPANSION_PORT, default 8096): integration.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import socket

import pytest
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

from pipelines import archive, cleanse, extract_training, features, score, streaming, train
from tests.conftest import PROJECT_ROOT, require_service
from tests.helpers import run_simulator

KAFKA_EXPANSION = f"127.0.0.1:{os.environ.get('KAFKA_EXPANSION_PORT', '8096')}"
DATAFLOW = ["--runner=DataflowRunner", "--dry_run=True", "--project=demo", "--region=europe-west1",
            "--temp_location=gs://demo/tmp", "--setup_file=./setup.py"]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


class JobGraph:
    """What a dry run built: the Dataflow Job message and the pipeline proto it carries."""

    def __init__(self, result):
        job = result.job
        self.job = json.loads(job.json())
        self.streaming = self.job["type"] == "JOB_TYPE_STREAMING"
        self.proto: beam_runner_api_pb2.Pipeline = job.proto_pipeline
        self.transforms = {t.unique_name: t for t in self.proto.components.transforms.values()}
        self.environments = {e.urn for e in self.proto.components.environments.values()}

    def has(self, name: str) -> bool:
        return name in self.transforms

    def stateful(self, prefix: str) -> list[str]:
        """Names of the ParDos under ``prefix`` that declare state."""
        out = []
        for name, t in self.transforms.items():
            if name.startswith(prefix) and t.spec.urn == "beam:transform:pardo:v1":
                if beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).state_specs:
                    out.append(name)
        return out


@pytest.fixture
def dry_run(monkeypatch):
    """dry_run(main, args) -> JobGraph: runs a pipeline's main on the DataflowRunner's dry run."""
    captured, attempts = [], []
    original = DataflowRunner.run_pipeline

    def run_pipeline(self, pipeline, options):
        result = original(self, pipeline, options)
        captured.append(result)
        return result

    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOCAL_HOSTS:
            attempts.append(host)
            raise OSError(f"network access to {host} during a dry run")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if isinstance(address, tuple) and address[0] not in LOCAL_HOSTS:
            attempts.append(address)
            raise OSError(f"network access to {address} during a dry run")
        return real_connect(self, address)

    monkeypatch.setattr(DataflowRunner, "run_pipeline", run_pipeline)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)

    def run(main, args: list[str]) -> JobGraph:
        captured.clear()
        assert main([*args, *DATAFLOW]) == 0
        assert attempts == [], f"the dry run tried the network: {attempts}"
        assert len(captured) == 1 and captured[0].job is not None
        return JobGraph(captured[0])

    monkeypatch.chdir(PROJECT_ROOT)       # --setup_file=./setup.py
    return run


@pytest.fixture(scope="module")
def graph_lake(tmp_path_factory) -> tuple[str, str]:
    """(lake, models root) with new landing versions for cleanse and new clean versions for features."""
    from simulation import synthetic
    from pipelines.train import TrainParams
    lake = str(tmp_path_factory.mktemp("graphs") / "lake")
    run_simulator(lake, "--devices", "4", "--backfill_days", "4", "--backfill_end", "2026-10-05",
                  "--archive_days", "1", "--interval", "300")
    assert cleanse.run(["--lake", lake, "--upto_version", "0"])["reconciles"]
    assert features.run(["--lake", lake])["feature_rows"] > 0
    assert cleanse.run(["--lake", lake, "--upto_version", "1"])["reconciles"]
    models = str(tmp_path_factory.mktemp("models"))
    start = dt.datetime(2026, 9, 1, tzinfo=dt.timezone.utc)
    fleet, _ = synthetic.fleet_features(4, start, 2, seed=3)
    train.train(fleet, {"dataset_id": "synthetic"}, models, TrainParams(ae_epochs=1, if_trees=10))
    return lake, models


def _batch(graph: JobGraph) -> None:
    assert not graph.streaming and graph.job["type"] == "JOB_TYPE_BATCH"
    assert graph.environments == {"beam:env:docker:v1"}


def test_cleanse_graph(graph_lake, dry_run):
    lake, _ = graph_lake
    graph = dry_run(cleanse.main, ["--lake", lake])
    _batch(graph)
    for table in ("clean_sensor_readings", "quarantine"):
        for step in ("WriteFiles", "Validate", "Commit"):
            assert graph.has(f"Write_{table}/{step}"), (table, step)
    assert any(n.startswith("Cleanse/") for n in graph.transforms)


def test_features_graph(graph_lake, dry_run):
    lake, _ = graph_lake
    graph = dry_run(features.main, ["--lake", lake])
    _batch(graph)
    for step in ("Features/ReadNew", "Features/ByShard", "Write/WriteFiles", "Write/Validate", "Write/Commit"):
        assert graph.has(step), step


def test_score_graph(graph_lake, dry_run):
    lake, models = graph_lake
    graph = dry_run(score.main, ["--lake", lake, "--models", models])
    _batch(graph)
    for model in ("isolation_forest", "autoencoder", "statistical"):
        assert graph.has(f"Score/RunInference_{model}"), model
    for table in ("scores", "alerts"):
        assert graph.has(f"Write_{table}/Commit"), table


def test_archive_graph(graph_lake, dry_run):
    lake, _ = graph_lake
    graph = dry_run(archive.main, ["--lake", lake, "--hot_days", "1", "--now", "2026-10-05T06:00:00"])
    _batch(graph)
    for step in ("LandingFiles", "WriteArchive", "AllWritten", "RemoveFromLanding"):
        assert graph.has(f"Archive/{step}"), step


@pytest.mark.parametrize("kind", ["raw", "features"])
def test_extract_training_graph(graph_lake, dry_run, tmp_path, kind):
    lake, _ = graph_lake
    graph = dry_run(extract_training.main, ["--lake", lake, "--kind", kind, "--start", "2026-10-01",
                                            "--end", "2026-10-06", "--output", str(tmp_path / "out")])
    _batch(graph)
    cold = ["ColdFiles", "ReadCold"] if kind == "raw" else []
    for step in ["HotFiles", "ReadHot", "GroupShards", "WriteShards", *cold]:
        assert graph.has(f"Extract/{step}"), step
    assert graph.has("Manifest")
    assert not any((tmp_path / "out").iterdir())       # nothing was extracted


def test_train_graph_is_its_extraction(graph_lake, dry_run, tmp_path):
    lake, _ = graph_lake
    models = tmp_path / "models"
    graph = dry_run(train.main, ["--lake", lake, "--models", str(models), "--start", "2026-10-01",
                                 "--end", "2026-10-06"])
    _batch(graph)
    assert graph.has("Extract/WriteShards") and graph.has("Manifest")
    assert not models.exists()                          # nothing was trained


@pytest.mark.integration
def test_streaming_graph(tmp_path, dry_run):
    require_service("Kafka expansion service", KAFKA_EXPANSION)
    graph = dry_run(streaming.main, ["--lake", str(tmp_path / "lake"), "--expansion_service", KAFKA_EXPANSION])
    assert graph.streaming and graph.job["type"] == "JOB_TYPE_STREAMING"
    assert any(n.startswith("Kafka/ReadFromKafka/") for n in graph.transforms)
    assert graph.stateful("Fleet/AcuteRules/") == ["Fleet/AcuteRules/EvaluatePerShard"]
    assert "beam:requirement:pardo:stateful:v1" in graph.proto.requirements
    for step in ("Fleet/Decode", "Fleet/Land/Commit", "Fleet/Alerts/Commit", "Fleet/Alerts/PublishKafka"):
        assert graph.has(step), step
    # the Python steps run in Dataflow's SDK container; the Java KafkaIO steps get the environment the
    # expansion service is configured with (scripts/services.sh: EMBEDDED, for Flink)
    rules_env = graph.transforms["Fleet/AcuteRules/EvaluatePerShard"].environment_id
    assert graph.proto.components.environments[rules_env].urn == "beam:env:docker:v1"
