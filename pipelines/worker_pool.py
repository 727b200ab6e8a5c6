"""Python SDK worker pool for `--environment_type=EXTERNAL --environment_config=HOST:PORT`.

    python -m pipelines.worker_pool --service_port=50000 [--host=127.0.0.1]

A Flink TaskManager asks the pool for an SDK worker (StartWorker) for each environment it needs: one per
job and TaskManager per `--sdk_worker_parallelism` (Beam's DefaultJobBundleFactory deals the stage
instances round robin over that many workers). Each worker is a separate process of this interpreter,
so N workers use N cores.

Beam's own `apache_beam.runners.worker.worker_pool_main` would do, except that it binds every interface
(`[::]:port`), starts workers with whatever `python` is first on PATH, leaves their stdout on a pipe that
nobody reads (a chatty worker blocks), and hands them neither the job's pipeline options (no state
cache, default log level and experiments) nor its logging endpoint, and on SIGTERM exits without
stopping its workers. This pool binds one address, and starts each worker the way Beam's container boot
does: it reads the job's provision info (pipeline options, endpoints), fetches the pickled main session
if the job staged one, and runs `apache_beam.runners.worker.sdk_worker_main` with this interpreter.
Other staged artifacts (requirements, setup.py sdists) are not installed: the project and its locked
requirements are in the venv already, and a worker must not change the venv that other jobs share.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent import futures

import grpc
from google.protobuf import json_format, text_format

from apache_beam.portability import common_urns
from apache_beam.portability.api import (beam_artifact_api_pb2, beam_artifact_api_pb2_grpc, beam_fn_api_pb2,
                                         beam_fn_api_pb2_grpc, beam_provision_api_pb2,
                                         beam_provision_api_pb2_grpc, beam_runner_api_pb2, endpoints_pb2)
from apache_beam.runners.internal import names

_LOG = logging.getLogger("worker_pool")
STOP_GRACE_S = 10


def _descriptor(url: str) -> str:
    return text_format.MessageToString(endpoints_pb2.ApiServiceDescriptor(url=url))


def _provision_info(request: beam_fn_api_pb2.StartWorkerRequest) -> beam_provision_api_pb2.ProvisionInfo:
    # the runner's provisioning service tells workers apart by the worker_id header
    with grpc.insecure_channel(request.provision_endpoint.url) as channel:
        stub = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel)
        return stub.GetProvisionInfo(beam_provision_api_pb2.GetProvisionInfoRequest(),
                                     metadata=[("worker_id", request.worker_id)], timeout=60).info


def _fetch_main_session(info, request, staged_dir: str) -> None:
    """Writes the job's pickled main session (if staged) where sdk_worker_main looks for it."""
    staging_to = common_urns.artifact_roles.STAGING_TO.urn
    wanted = [a for a in info.dependencies if a.role_urn == staging_to
              and beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(a.role_payload).staged_name
              == names.PICKLED_MAIN_SESSION_FILE]
    if not wanted:
        return
    url = info.artifact_endpoint.url or request.artifact_endpoint.url
    with grpc.insecure_channel(url) as channel:
        stub = beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceStub(channel)
        with open(os.path.join(staged_dir, names.PICKLED_MAIN_SESSION_FILE), "wb") as out:
            for chunk in stub.GetArtifact(beam_artifact_api_pb2.GetArtifactRequest(artifact=wanted[0]),
                                          metadata=[("worker_id", request.worker_id)], timeout=300):
                out.write(chunk.data)
            _LOG.info("SDK worker %s: main session fetched (%d bytes)", request.worker_id, out.tell())


def worker_environment(info, request, semi_persistent_dir: str) -> dict[str, str]:
    """The environment variables of Beam's SDK container contract (what its boot program sets)."""
    env = dict(os.environ,
               WORKER_ID=request.worker_id,
               PIPELINE_OPTIONS=json_format.MessageToJson(info.pipeline_options),
               SEMI_PERSISTENT_DIRECTORY=semi_persistent_dir,
               CONTROL_API_SERVICE_DESCRIPTOR=_descriptor(info.control_endpoint.url or request.control_endpoint.url),
               LOGGING_API_SERVICE_DESCRIPTOR=_descriptor(info.logging_endpoint.url or request.logging_endpoint.url),
               RUNNER_CAPABILITIES=" ".join(info.runner_capabilities))
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")   # google-api-core's Python-version notices
    if info.status_endpoint.url:
        env["STATUS_API_SERVICE_DESCRIPTOR"] = _descriptor(info.status_endpoint.url)
    return env


class Worker:
    """One SDK worker process and its scratch directory."""

    def __init__(self, request: beam_fn_api_pb2.StartWorkerRequest):
        self.worker_id = request.worker_id
        self.scratch = tempfile.mkdtemp(prefix=f"beam-sdk-{os.getpid()}-")
        try:
            info = _provision_info(request)
            os.makedirs(os.path.join(self.scratch, "staged"))
            _fetch_main_session(info, request, os.path.join(self.scratch, "staged"))
            # stdout goes to the pool's log (stderr) rather than to a pipe nobody reads
            self.process = subprocess.Popen(
                [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"],
                env=worker_environment(info, request, self.scratch), stdin=subprocess.DEVNULL,
                stdout=sys.stderr.fileno(), close_fds=True)
        except BaseException:
            shutil.rmtree(self.scratch, ignore_errors=True)
            raise

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                _LOG.warning("SDK worker %s (pid %d) ignored SIGTERM; killing it", self.worker_id, self.process.pid)
                self.process.kill()
                self.process.wait()
        self.cleanup()

    def cleanup(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
        _LOG.info("SDK worker %s (pid %d) exited with %s", self.worker_id, self.process.pid, self.process.returncode)


class WorkerPool(beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolServicer):
    """Starts and stops SDK worker processes on the runner's request."""

    def __init__(self):
        self._lock = threading.Lock()
        self._workers: dict[str, Worker] = {}

    def _reap(self) -> None:
        # workers also end by themselves when the runner closes their control channel (job cancelled,
        # TaskManager gone) without a StopWorker: forget them, so that a long-lived pool stays small
        with self._lock:
            done = [w for w in self._workers.values() if w.process.poll() is not None]
            for worker in done:
                del self._workers[worker.worker_id]
        for worker in done:
            worker.cleanup()

    def StartWorker(self, request, context):
        self._reap()
        try:
            worker = Worker(request)
        except Exception as e:  # noqa: BLE001 - the runner shows the error to the user
            _LOG.exception("could not start SDK worker %s", request.worker_id)
            return beam_fn_api_pb2.StartWorkerResponse(error=f"{type(e).__name__}: {e}")
        with self._lock:
            self._workers[request.worker_id] = worker
        _LOG.info("started SDK worker %s (pid %d)", request.worker_id, worker.process.pid)
        return beam_fn_api_pb2.StartWorkerResponse()

    def StopWorker(self, request, context):
        with self._lock:
            worker = self._workers.pop(request.worker_id, None)
        if worker:
            worker.stop()
        self._reap()
        return beam_fn_api_pb2.StopWorkerResponse()

    def stop_all(self) -> None:
        with self._lock:
            workers, self._workers = list(self._workers.values()), {}
        for worker in workers:  # SIGTERM all first, so the grace periods overlap
            if worker.process.poll() is None:
                worker.process.terminate()
        for worker in workers:
            worker.stop()


def serve(host: str, port: int) -> tuple[grpc.Server, WorkerPool, int]:
    # no SO_REUSEPORT: a second pool on a taken port must fail, not share it
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                         options=[("grpc.so_reuseport", 0), ("grpc.http2.max_pings_without_data", 0),
                                  ("grpc.http2.max_ping_strikes", 0)])
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise SystemExit(f"cannot bind the worker pool to {host}:{port}")
    pool = WorkerPool()
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    server.start()
    return server, pool, bound


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.worker_pool", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--service_port", type=int, required=True, help="port of the worker pool service")
    parser.add_argument("--host", default="127.0.0.1", help="the one address to bind (default 127.0.0.1)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server, pool, port = serve(args.host, args.service_port)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    _LOG.info("listening on %s:%d, workers run %s", args.host, port, sys.executable)
    while not stopping.wait(1):
        pass
    _LOG.info("stopping: no new workers, stopping the running ones")
    server.stop(grace=None)
    pool.stop_all()
    _LOG.info("stopped")


if __name__ == "__main__":
    main()
