#!/usr/bin/env bash
# The main job, end to end on this machine: sets up the environment, starts Kafka and Flink,
# writes the device registry and backfills history into the lake, streams live readings with
# injected failures into Kafka, then stops the services. Output goes to ./data/.
set -euo pipefail
cd "$(dirname "$0")"

DEVICES=200 DAYS=3 STREAM_MINUTES=30 ACCELERATION=60 LAKE=./data/lake KEEP_SERVICES=0
usage() {
  cat <<USAGE
usage: ./run_local.sh [options]
  --devices N          devices in the simulated fleet            (default $DEVICES)
  --days D             days of history to backfill               (default $DAYS)
  --stream-minutes M   simulated minutes of live readings        (default $STREAM_MINUTES)
  --acceleration X     simulated seconds per wall-clock second   (default $ACCELERATION)
  --lake PATH          lake root                                 (default $LAKE)
  --keep-services      leave Kafka and Flink running at the end
  -h, --help           this text
USAGE
}
while (($#)); do
  case $1 in
    --devices) DEVICES=$2; shift 2 ;;
    --days) DAYS=$2; shift 2 ;;
    --stream-minutes) STREAM_MINUTES=$2; shift 2 ;;
    --acceleration) ACCELERATION=$2; shift 2 ;;
    --lake) LAKE=$2; shift 2 ;;
    --keep-services) KEEP_SERVICES=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

t0=$SECONDS
stage() { printf '\n==> [%4ds] %s\n' $((SECONDS - t0)) "$*"; }

stage "setup (Python from requirements.lock, JVM artifacts through Maven, Flink home)"
scripts/setup.sh

stage "start local services"
[[ $KEEP_SERVICES == 1 ]] || trap 'stage "stop services"; scripts/services.sh stop' EXIT
scripts/services.sh start

stage "registry + $DAYS days of history for $DEVICES devices -> $LAKE"
.venv/bin/python -m pipelines.simulate --lake "$LAKE" --devices "$DEVICES" --backfill-days "$DAYS" --interval 60

stage "stream $STREAM_MINUTES simulated minutes of live readings into Kafka at ${ACCELERATION}x"
.venv/bin/python -m pipelines.simulate --lake "$LAKE" --devices "$DEVICES" --stream \
  --stream-minutes "$STREAM_MINUTES" --acceleration "$ACCELERATION" --interval 10

stage "done in $((SECONDS - t0)) s: lake $LAKE, ground truth $(dirname "$LAKE")/ground_truth/"
