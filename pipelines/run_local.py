"""The main job on this machine: the whole system on the local Flink, end to end, with a report.

Stages (each a pipeline entry point, run as its own process so its log and exit code stand alone):
  1. history    simulate: device registry + N days of history into landing (and labels)
  2. batch      cleanse -> features over the history              (Flink, or --batch_runner direct)
  3. models     extract the training span and train the models, if none exist yet
  4. stream     the streaming pipeline on Flink (Kafka -> landing, dead letters, acute alerts)
                while the simulator streams live readings with injected failures; then the
                streaming job is stopped once it has landed everything the simulator produced
  5. batch      cleanse -> features -> score over what streamed in
  6. evaluate   detection quality against the simulator's ground truth
  7. maintain   lake upkeep (archive move, compaction, checkpoints, vacuum)
  8. report     HTML report + console summary; exit 1 when the counts do not reconcile or an acute
                alert came later than the seed's 2 minutes after its reading arrived

Every run starts clean: an earlier run's lake, models and outputs in --data are removed first (only in
a folder that run_local made), so reruns give the same figures.

Kafka and Flink must be running (run_local.sh starts and stops them).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from core.windows import MODEL_WINDOW

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _local(port_variable: str, default: int) -> str:
    """A local service's address, on the port scripts/services.sh uses (its environment variable), so
    a second stack on other ports can run beside the first."""
    return f"127.0.0.1:{os.environ.get(port_variable, default)}"


def arg_parser() -> argparse.ArgumentParser:
    # no project imports here: `--help` works with a bare python3, before setup
    class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass
    p = argparse.ArgumentParser(prog="python -m pipelines.run_local", description=__doc__, formatter_class=Formatter)
    p.add_argument("--data", default="./data", help="output folder: lake, models, ground truth, report")
    p.add_argument("--devices", type=int, default=500, help="devices in the simulated fleet")
    p.add_argument("--days", type=float, default=14, help="days of history to backfill")
    p.add_argument("--end", default=None,
                   help="simulated time (UTC) where the history ends and the live stream starts; fixed by "
                        "default (the simulator's --end), so that the same seed gives the same figures on any day")
    p.add_argument("--history_interval", type=float, default=300,
                   help="seconds between two readings of one sensor in the history")
    p.add_argument("--stream_minutes", type=float, default=90,
                   help="simulated minutes of live readings (acute failures need > 85: 1 h vibration warm-up)")
    p.add_argument("--acceleration", type=float, default=10,
                   help="simulated seconds per wall-clock second; the default streams ~2,500 readings/s, a third "
                        "of what the local streaming job takes on 2 busy cores, so alerts stay within the 2 minutes "
                        "when another CPU-heavy process runs beside it (at 30x the job lags and alerts come late)")
    p.add_argument("--stream_interval", type=float, default=10, help="seconds between readings in the stream")
    p.add_argument("--window_size", default=MODEL_WINDOW, help="feature window the models are trained on and score")
    p.add_argument("--batch_runner", choices=["flink", "direct"], default="flink",
                   help="where cleanse/features/score run (the streaming job always runs on Flink)")
    p.add_argument("--seed", type=int, default=7, help="simulator seed")
    # defaults: the ports scripts/services.sh starts the services on (the same environment variables)
    p.add_argument("--job_endpoint", default=_local("JOB_SERVER_PORT", 8099), help="Beam job server of the local Flink")
    p.add_argument("--flink_rest", default=_local("FLINK_REST_PORT", 8081), help="Flink REST address")
    p.add_argument("--bootstrap_servers", default=_local("KAFKA_PORT", 9092), help="Kafka")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return arg_parser().parse_args(argv)


class Stages:
    """Runs stages with a banner, elapsed time and a prefixed log; stops at the first failure."""

    def __init__(self, total: int):
        self.total, self.n, self.t0, self.times = total, 0, time.monotonic(), {}

    def banner(self, name: str) -> float:
        self.n += 1
        print(f"\n==> [{self.n}/{self.total}] {name}   (+{time.monotonic() - self.t0:.0f} s)", flush=True)
        return time.monotonic()

    def run(self, name: str, module: str, *args: str, ok_codes=(0,)) -> int:
        started = self.banner(name)
        code = subprocess.call([sys.executable, "-m", module, *args], cwd=PROJECT_ROOT)
        self.times[name] = time.monotonic() - started
        print(f"    {name}: exit {code} in {self.times[name]:.0f} s", flush=True)
        if code not in ok_codes:
            raise SystemExit(f"stage '{name}' failed (exit {code})")
        return code


def flink_jobs(rest: str, deadline_s: float = 120) -> list[dict]:
    """The cluster's jobs; a busy or restarting JobManager (5xx, refused, timeout) is retried."""
    from core.retry import http_retriable, retry

    def once() -> list[dict]:
        with urllib.request.urlopen(f"http://{rest}/jobs/overview", timeout=10) as r:
            return json.load(r)["jobs"]
    return retry(once, what=f"list the Flink jobs at {rest}", deadline_s=deadline_s, retriable=http_retriable)


def landed_counts(lake: str) -> tuple[int, int]:
    """Rows the streaming job landed (landing rows with Kafka coordinates) and dead letters."""
    from core import lake as lake_io
    landing = lake_io.read(lake, "raw_sensor_readings", columns=["kafka_topic"])
    dead = lake_io.open_table(lake, "deadletter")
    return landing.num_rows - landing["kafka_topic"].null_count, (len(dead.to_pyarrow_table(columns=["reason"]))
                                                                   if dead else 0)


def start_group_at_end(bootstrap: str, topic: str, group: str) -> None:
    """Positions a new consumer group at the end of the topic: this run reads only what it produces,
    not the readings earlier runs left in the topic."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition
    from core.retry import kafka_new_topic_retriable, partitions_ok, retry
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})

    def partitions() -> list[int]:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        if meta.error is not None:     # e.g. a topic just created, or a leader election
            raise KafkaException(meta.error)
        return sorted(meta.partitions)

    def end(p: int) -> int:
        return consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
    try:
        # a freshly started broker answers COORDINATOR_LOAD_IN_PROGRESS etc. for a while
        ps = retry(partitions, what=f"list the partitions of {topic}", retriable=kafka_new_topic_retriable)
        ends = [TopicPartition(topic, p, retry(lambda: end(p), what=f"read the end offset of {topic}[{p}]"))
                for p in ps]
        retry(lambda: partitions_ok(consumer.commit(offsets=ends, asynchronous=False)),
              what=f"commit the end offsets of {topic} for group {group}")
    finally:
        consumer.close()


class StreamingJob:
    """The streaming pipeline as a background process on the local Flink."""

    def __init__(self, args, lake: str, group: str, log: Path, warm_as_of: dt.datetime):
        self.args, self.lake, self.group, self.log = args, lake, group, log
        start_group_at_end(args.bootstrap_servers, "sensor.readings", group)
        self.known = {j["jid"] for j in flink_jobs(args.flink_rest)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.streaming", "--lake", lake, "--consumer_group", group,
             f"--job_name={group}", "--warm_as_of", warm_as_of.isoformat(),
             "--bootstrap_servers", args.bootstrap_servers, "--commit_interval_s", "10",
             "--runner=PortableRunner", f"--job_endpoint={args.job_endpoint}",
             # Python runs in the worker pool (scripts/services.sh start workers), one SDK worker process
             # per core; the Java KafkaIO stays EMBEDDED in the TaskManager
             "--environment_type=EXTERNAL",
             f"--environment_config={_local('SDK_WORKER_POOL_PORT', 50000)}",
             f"--expansion_service={_local('KAFKA_EXPANSION_PORT', 8096)}",
             f"--sdk_worker_parallelism={os.cpu_count() or 1}",
             "--default_environment_type=EMBEDDED", "--max_bundle_time_mills=100",
             "--checkpointing_interval=30000", "--parallelism=2"],
            cwd=PROJECT_ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.jid = self._wait_running()

    def _wait_running(self, timeout_s: float = 180) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the streaming job exited early; see {self.log}")
            jobs = flink_jobs(self.args.flink_rest, deadline_s=max(1.0, deadline - time.monotonic()))
            # by name: another job started on a shared cluster meanwhile must not be taken for ours
            new = [j["jid"] for j in jobs if j["jid"] not in self.known and j["state"] == "RUNNING"
                   and j["name"] == self.group]
            if new:
                return new[0]
            time.sleep(1)
        raise SystemExit(f"the streaming job did not start within {timeout_s} s; see {self.log}")

    def stop(self) -> None:
        from core.retry import http_retriable, retry
        url = f"http://{self.args.flink_rest}/jobs/{self.jid}?mode=cancel"
        # cancelling twice is harmless: a retry after a lost response only repeats the request
        try:
            retry(lambda: urllib.request.urlopen(urllib.request.Request(url, method="PATCH"), timeout=10).read(),
                  what=f"cancel Flink job {self.jid}", retriable=http_retriable)
        except urllib.error.HTTPError as exc:
            if exc.code != 409:         # 409: the job already ended (failed, or cancelled elsewhere)
                raise
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)


def wait_until_landed(lake: str, produced: int, deadletters_at_least: int, timeout_s: float = 600) -> None:
    """Polls the lake until the streaming job has landed every produced reading, with progress."""
    deadline, last = time.monotonic() + timeout_s, -1
    while time.monotonic() < deadline:
        landed, dead = landed_counts(lake)
        if landed != last:
            print(f"    streaming job: {landed} of {produced} accepted readings landed, {dead} dead letters", flush=True)
            last = landed
        if landed >= produced and dead >= deadletters_at_least:
            return
        time.sleep(5)
    raise SystemExit(f"the streaming job had not landed everything after {timeout_s:.0f} s")


def expected_stream_counts(truth_dir: Path) -> tuple[int, int]:
    import pyarrow.parquet as pq
    produced = pq.read_table(truth_dir / "stream.produced.parquet")
    kinds = produced["kind"].to_pylist()
    return kinds.count("reading"), len({r for r in produced["expected_reason"].to_pylist() if r})


def simulated_end(text: str | None) -> dt.datetime:
    """The simulated clock of the run: the history ends and the live stream starts here. Fixed (not the
    wall clock): the simulator's readings depend on their time, and the run must not depend on the day."""
    from pipelines import cli
    from simulation import DEFAULT_END
    return cli.utc_datetime(text) if text else DEFAULT_END


RUN_MARKER = ".run_local.json"     # written into --data: marks a folder this job made and may replace
OUTPUTS = ("lake", "models", "ground_truth", "report.html", "evaluation.json", "maintenance.json", "streaming.log")


def start_clean(data: Path, args: argparse.Namespace) -> None:
    """Every run starts from an empty --data: a rerun never appends a second copy of the history, and
    the same arguments give the same report figures. Only a folder an earlier run made is cleared."""
    marker = data / RUN_MARKER
    if data.exists() and any(data.iterdir()) and not marker.exists():
        raise SystemExit(f"{data} exists and was not made by run_local (no {RUN_MARKER}); "
                         "choose another --data or empty it")
    if marker.exists():
        print(f"==> {data} holds an earlier run ({json.loads(marker.read_text()).get('started_at')}): "
              "removing its lake, models and outputs, starting clean", flush=True)
        for name in OUTPUTS:
            path = data / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                  "args": vars(args)}, indent=2, sort_keys=True))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_at = dt.datetime.now(dt.timezone.utc)
    data = Path(args.data)
    lake, models, truth = str(data / "lake"), str(data / "models"), data / "ground_truth"
    start_clean(data, args)
    runner = ([f"--runner=PortableRunner", f"--job_endpoint={args.job_endpoint}", "--environment_type=LOOPBACK",
               "--parallelism=1"] if args.batch_runner == "flink" else ["--runner=DirectRunner"])
    end = simulated_end(args.end)
    start = end - dt.timedelta(days=args.days)
    train_end = start + dt.timedelta(days=max(1.0, args.days / 2))
    stages = Stages(total=13)
    sim = ["--lake", lake, "--devices", str(args.devices), "--seed", str(args.seed), "--end", end.isoformat()]
    stream_end = end + dt.timedelta(minutes=args.stream_minutes)

    stages.run("history: registry + backfill", "pipelines.simulate", *sim, "--backfill_days", str(args.days),
               "--interval", str(args.history_interval))
    stages.run("cleanse the history", "pipelines.cleanse", "--lake", lake, *runner)
    stages.run("features of the history", "pipelines.features", "--lake", lake,
               "--sampling_interval_seconds", str(args.history_interval), *runner)
    from models import base as catalog
    if not any((Path(models) / name).exists() for name in catalog.default_names()):
        stages.run("train the models", "pipelines.train", "--lake", lake, "--models", models,
                   "--start", start.isoformat(), "--end", train_end.isoformat(), "--window_size", args.window_size)
    else:
        stages.banner("train the models: skipped, models exist in " + models)

    group = f"fleet-local-{int(time.time())}"
    t = stages.banner("start the streaming job on Flink")
    job = StreamingJob(args, lake, group, data / "streaming.log", warm_as_of=end)
    print(f"    Flink job {job.jid} running (log {data / 'streaming.log'}) after {time.monotonic() - t:.0f} s", flush=True)
    try:
        stages.run("stream live readings into Kafka", "pipelines.simulate", *sim, "--stream", "--stream_start", "end",
                   "--bootstrap_servers", args.bootstrap_servers, "--stream_minutes", str(args.stream_minutes),
                   "--acceleration", str(args.acceleration), "--interval", str(args.stream_interval))
        readings, fault_kinds = expected_stream_counts(truth)
        t = stages.banner("wait for the streaming job to land everything")
        produced = readings
        wait_until_landed(lake, produced, deadletters_at_least=fault_kinds)
        time.sleep(15)      # one more commit interval: the alerts of the last readings
        stages.times["catch-up"] = time.monotonic() - t
    finally:
        print("    stopping the streaming job", flush=True)
        job.stop()

    stages.run("cleanse what streamed in", "pipelines.cleanse", "--lake", lake, *runner)
    stages.run("features of it", "pipelines.features", "--lake", lake,
               "--sampling_interval_seconds", str(args.stream_interval), *runner)
    stages.run("score", "pipelines.score", "--lake", lake, "--models", models, "--window_size", args.window_size, *runner)
    stages.run("evaluate detection quality", "pipelines.evaluate", "--lake", lake, "--window_size", args.window_size,
               "--eval_from", train_end.isoformat(), "--json", str(data / "evaluation.json"))
    stages.run("lake upkeep: archive, compaction, checkpoints, vacuum", "pipelines.maintain", "--lake", lake,
               "--json", str(data / "maintenance.json"), "--now", stream_end.isoformat(), *runner)
    code = stages.run("report", "pipelines.report", "--lake", lake, "--out", str(data / "report.html"),
                      "--started_at", started_at.isoformat(), "--maintenance_json", str(data / "maintenance.json"),
                      "--eval_from", train_end.isoformat(),
                      ok_codes=(0, 1))
    total = time.monotonic() - stages.t0
    print(f"\n==> done in {total / 60:.1f} min; report {data / 'report.html'}"
          + ("" if code == 0 else "  (RECONCILIATION FAILED)"), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
