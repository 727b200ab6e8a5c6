#!/usr/bin/env bash
# Start/stop a private Beam Flink job server for the probe (ports 182xx, own artifacts dir).
# Usage: jobserver.sh start|stop   (env: FLINK_REST_PORT=18281)
set -euo pipefail
JAR=/work/main/.cache/jvm/beam/beam-runners-flink-1.20-job-server-2.72.0.jar
D=${PROBE_DIR:-/tmp/kprobe}; mkdir -p "$D/artifacts"
case ${1:-} in
  start)
    nohup java -jar "$JAR" --flink-master=127.0.0.1:${FLINK_REST_PORT:-18281} --job-host=127.0.0.1 \
      --job-port=18299 --artifact-port=18298 --expansion-port=18297 --artifacts-dir="$D/artifacts" \
      >"$D/jobserver.log" 2>&1 &
    echo $! >"$D/jobserver.pid"
    for _ in $(seq 60); do grep -q 'Job server now running' "$D/jobserver.log" && break; sleep 0.5; done
    tail -1 "$D/jobserver.log" ;;
  stop)
    pid=$(cat "$D/jobserver.pid"); kill "$pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"; rm -f "$D/jobserver.pid"; echo stopped ;;
esac
