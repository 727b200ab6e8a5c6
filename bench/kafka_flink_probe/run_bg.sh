#!/usr/bin/env bash
# run_bg.sh NAME [probe_pipeline args...]: start probe_pipeline.py in the background (log /tmp/kprobe/logs/NAME.log)
name=$1; shift
cd "$(dirname "$0")"
nohup /work/main/.venv/bin/python probe_pipeline.py "$@" > /tmp/kprobe/logs/$name.log 2>&1 &
echo $! > /tmp/kprobe/$name.pid
for _ in $(seq 120); do grep -q "Job state changed to RUNNING\|Traceback" /tmp/kprobe/logs/$name.log && break; sleep 1; done
grep -m1 -o "Job state changed to RUNNING\|Traceback.*" /tmp/kprobe/logs/$name.log
