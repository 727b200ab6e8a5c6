#!/usr/bin/env bash
# The main job, end to end on this machine: sets up the environment (Python from requirements.lock,
# JVM artifacts through Maven, the Flink home), starts Kafka and the local Flink, runs the whole
# system (python -m pipelines.run_local: history, batch pipelines, models, the streaming job on
# Flink with live readings, scoring, evaluation, report) and stops the services.
# Output: ./data/ (lake, models, ground truth, report.html). Exit code: 0, or 1 when the report's
# counts do not reconcile (or a stage failed).
#
# usage: ./run_local.sh [--keep_services] [options of python -m pipelines.run_local]
#        ./run_local.sh --help
set -euo pipefail
cd "$(dirname "$0")"

keep_services=0
args=()
for a in "$@"; do
  case $a in
    --keep_services) keep_services=1 ;;
    -h|--help)
      sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
      echo; echo "options of the main job (--keep_services: leave Kafka and Flink running at the end):"
      exec python3 -m pipelines.run_local --help ;;
    *) args+=("$a") ;;
  esac
done

t0=$SECONDS
echo "==> setup"
scripts/setup.sh
echo "==> start Kafka and Flink"
if [[ $keep_services == 0 ]]; then trap 'echo "==> stop services"; scripts/services.sh stop' EXIT; fi
scripts/services.sh start
status=0
.venv/bin/python -m pipelines.run_local "${args[@]}" || status=$?
echo "==> run_local.sh finished in $(( (SECONDS - t0) / 60 )) min $(( (SECONDS - t0) % 60 )) s with exit code $status"
exit $status
