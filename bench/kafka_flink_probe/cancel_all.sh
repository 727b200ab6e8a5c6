#!/usr/bin/env bash
# Cancel every RUNNING job on the PROBE Flink cluster (REST 18281 only).
for j in $(curl -s 127.0.0.1:${FLINK_REST_PORT:-18281}/jobs/overview | python3 -c "import json,sys; [print(j['jid']) for j in json.load(sys.stdin)['jobs'] if j['state']=='RUNNING']"); do
  curl -s -X PATCH "127.0.0.1:${FLINK_REST_PORT:-18281}/jobs/$j?mode=cancel"; echo "cancel $j"
done
