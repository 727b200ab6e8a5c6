# Shared paths and helpers for the project's shell scripts. Source it; do not run it.
PROJECT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${FLEET_CACHE_DIR:-$PROJECT_ROOT/.cache}"
VENV="${FLEET_VENV:-$PROJECT_ROOT/.venv}"
PYTHON="$VENV/bin/python"
RUN_DIR="${FLEET_RUN_DIR:-$PROJECT_ROOT/.run}"       # pid files, service data, logs
LOG_DIR="$RUN_DIR/logs"
FLINK_VERSION=1.20.3
FLINK_HOME="$CACHE_DIR/flink-$FLINK_VERSION"
BEAM_VERSION=2.72.0
JVM_DIR="$CACHE_DIR/jvm"
JOB_SERVER_JAR="$JVM_DIR/beam/beam-runners-flink-1.20-job-server-$BEAM_VERSION.jar"

KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
FLINK_REST_PORT="${FLINK_REST_PORT:-8081}"
FLINK_RPC_PORT="${FLINK_RPC_PORT:-6123}"
JOB_SERVER_PORT="${JOB_SERVER_PORT:-8099}"
SDK_WORKER_POOL_PORT="${SDK_WORKER_POOL_PORT:-50000}"   # Python SDK worker pool (EXTERNAL environment)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# wait_for <seconds> <description> <command...>: poll until the command succeeds.
wait_for() {
  local timeout=$1 what=$2; shift 2
  local start=$SECONDS
  until "$@" >/dev/null 2>&1; do
    (( SECONDS - start >= timeout )) && return 1
    sleep 0.5
  done
  log "$what ready after $((SECONDS - start)) s"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
