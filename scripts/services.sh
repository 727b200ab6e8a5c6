#!/usr/bin/env bash
# Local services for development, tests and run_local.sh, all bound to 127.0.0.1:
#   kafka  single-node KRaft broker from the Maven-resolved jars (jvm/pom.xml), topics created
#   flink  Flink 1.20 JobManager + TaskManager from the assembled home (.cache/flink-*), and
#          Beam's Flink job server in front of it (job API 8099, artifacts 8098, expansion 8097), and
#          the expansion service the streaming pipeline uses for the Java KafkaIO (8096: the legacy,
#          non-SDF read, run EMBEDDED in the TaskManager; see pipelines/streaming.py)
#   workers  Python SDK worker pool (pipelines/worker_pool.py, the venv's python) for jobs run with
#          --environment_type=EXTERNAL --environment_config=127.0.0.1:$SDK_WORKER_POOL_PORT (50000)
# Usage: scripts/services.sh {start|stop|status|restart} [kafka|flink|workers|all]   (default: all)
# State and logs live under .run/ (FLEET_RUN_DIR): .run/logs/{kafka,flink,workers}/, .run/kafka/data/.
# start is idempotent (a healthy service is left alone); stop leaves no process behind.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

KAFKA_DIR="$RUN_DIR/kafka"
KAFKA_PID="$KAFKA_DIR/kafka.pid"
KAFKA_TOPICS="${KAFKA_TOPICS:-sensor.readings:4 sensor.alerts:1}"   # name:partitions
# Record time is the broker's append time: monotone per partition and the arrival time of every
# reading (timestamp_ingested), also for devices that replay old readings after a reconnection.
FLINK_CONF="$RUN_DIR/flink/conf"
FLINK_SLOTS="${FLINK_SLOTS:-4}"
FLINK_TM_MEMORY="${FLINK_TM_MEMORY:-8g}"
FLINK_TM_TASK_HEAP="${FLINK_TM_TASK_HEAP:-2g}"
FLINK_TM_TASK_OFF_HEAP="${FLINK_TM_TASK_OFF_HEAP:-1536m}"   # gRPC buffers of the Fn API (Arrow batches)
FLINK_TM_METASPACE="${FLINK_TM_METASPACE:-1536m}"
export FLINK_CONF_DIR="$FLINK_CONF" FLINK_LOG_DIR="$LOG_DIR/flink" FLINK_PID_DIR="$RUN_DIR/flink"

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

kafka_java() { java -Xms256m -Xmx1g -cp "$JVM_DIR/kafka/*" "$@"; }

kafka_healthy() { pid_alive "$KAFKA_PID" && port_open "$KAFKA_PORT"; }

kafka_write_config() {
  mkdir -p "$KAFKA_DIR/data" "$LOG_DIR/kafka"
  cat > "$KAFKA_DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
message.max.bytes=2097152
log.retention.hours=168
# simulated fleets run ahead of (accelerated) or behind (replays, backfills) the wall clock
log.message.timestamp.before.max.ms=9223372036854775807
log.message.timestamp.after.max.ms=9223372036854775807
PROPS
}

kafka_start() {
  if kafka_healthy; then log "kafka already running on 127.0.0.1:$KAFKA_PORT"; return; fi
  [[ -d $JVM_DIR/kafka ]] || die "Kafka jars missing: run scripts/setup.sh"
  local t0=$SECONDS
  kafka_write_config
  if [[ ! -f $KAFKA_DIR/data/meta.properties ]]; then
    kafka_java kafka.tools.StorageTool format -t "$(kafka_java kafka.tools.StorageTool random-uuid)" \
      -c "$KAFKA_DIR/server.properties" >"$LOG_DIR/kafka/format.log" 2>&1
  fi
  nohup java -Xms512m -Xmx1g -XX:+UseG1GC -Dkafka.logs.dir="$LOG_DIR/kafka" \
    -Dlog4j2.configurationFile="$PROJECT_ROOT/config/kafka-log4j2.properties" \
    -cp "$JVM_DIR/kafka/*" kafka.Kafka "$KAFKA_DIR/server.properties" \
    >"$LOG_DIR/kafka/stdout.log" 2>&1 &
  echo $! > "$KAFKA_PID"
  wait_for 60 "kafka broker" port_open "$KAFKA_PORT" || { tail -20 "$LOG_DIR/kafka/stdout.log" >&2; die "kafka did not start; see $LOG_DIR/kafka/"; }
  local spec name parts
  for spec in $KAFKA_TOPICS; do
    name=${spec%%:*}; parts=${spec##*:}
    kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
      --create --if-not-exists --topic "$name" --partitions "$parts" --replication-factor 1 \
      --config message.timestamp.type=LogAppendTime \
      >>"$LOG_DIR/kafka/topics.log" 2>&1 || die "could not create topic $name; see $LOG_DIR/kafka/topics.log"
  done
  log "kafka up on 127.0.0.1:$KAFKA_PORT with topics: $KAFKA_TOPICS (start-up $((SECONDS - t0)) s, logs $LOG_DIR/kafka)"
}

# stop_pid <pidfile> <name>: SIGTERM, wait up to 30 s, then SIGKILL.
stop_pid() {
  local pidfile=$1 name=$2 pid
  pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then log "$name did not stop in 30 s; killing"; kill -9 "$pid" 2>/dev/null || true; fi
  rm -f "$pidfile"
  log "$name stopped"
}

kafka_stop() { stop_pid "$KAFKA_PID" kafka; }

kafka_status() {
  if kafka_healthy; then echo "kafka: running (pid $(cat "$KAFKA_PID"), 127.0.0.1:$KAFKA_PORT)"; else echo "kafka: stopped"; fi
}

flink_write_config() {
  mkdir -p "$FLINK_CONF" "$FLINK_LOG_DIR" "$FLINK_PID_DIR" "$RUN_DIR/flink/tmp"
  cp "$FLINK_HOME"/conf/log4j*.properties "$FLINK_CONF/"
  local java_opts
  java_opts=$(sed -n 's/^ *all: \(--add-exports.*\)$/\1/p' "$FLINK_HOME/conf/config.yaml")
  cat > "$FLINK_CONF/config.yaml" <<YAML
env:
  java:
    opts:
      all: $java_opts
  pid:
    dir: $FLINK_PID_DIR
  log:
    dir: $FLINK_LOG_DIR
io:
  tmp:
    dirs: $RUN_DIR/flink/tmp
jobmanager:
  bind-host: 127.0.0.1
  rpc: {address: 127.0.0.1, port: $FLINK_RPC_PORT}
  memory: {process: {size: 1600m}}
  execution: {failover-strategy: region}
taskmanager:
  bind-host: 127.0.0.1
  host: 127.0.0.1
  numberOfTaskSlots: $FLINK_SLOTS
  # Each Beam job leaks class metadata in the TaskManager (the default 256m metaspace lasts 3 jobs).
  # Beam batch jobs use Flink's blocking shuffle (direct memory); a streaming job runs beside them.
  # Beam's portable runner moves Arrow batches of tens of MB through the task heap; the network
  # buffers (Beam batch shuffles) get the rest.
  memory:
    process: {size: $FLINK_TM_MEMORY}
    jvm-metaspace: {size: $FLINK_TM_METASPACE}
    framework: {off-heap: {size: 384m, batch-shuffle: {size: 128m}}}
    task: {heap: {size: $FLINK_TM_TASK_HEAP}, off-heap: {size: $FLINK_TM_TASK_OFF_HEAP}}
    managed: {fraction: 0.15}
parallelism: {default: 1}
rest:
  address: 127.0.0.1
  bind-address: 127.0.0.1
  port: $FLINK_REST_PORT
state:
  checkpoints: {dir: "file://$RUN_DIR/flink/checkpoints"}
  savepoints: {dir: "file://$RUN_DIR/flink/savepoints"}
YAML
}

flink_rest() { curl -sf --max-time 2 "http://127.0.0.1:$FLINK_REST_PORT$1"; }
flink_has_taskmanager() { flink_rest /overview | grep -q '"taskmanagers":[1-9]'; }
flink_pids() { pgrep -f "org.apache.flink.runtime.(entrypoint.StandaloneSessionClusterEntrypoint|taskexecutor.TaskManagerRunner).*$FLINK_CONF" || true; }

JOB_SERVER_PID="$RUN_DIR/flink/jobserver.pid"
EXPANSION_PORT="${EXPANSION_PORT:-8097}"
KAFKA_EXPANSION_PORT="${KAFKA_EXPANSION_PORT:-8096}"
KAFKA_EXPANSION_PID="$RUN_DIR/flink/kafka-expansion.pid"
ARTIFACT_PORT="${ARTIFACT_PORT:-8098}"

jobserver_start() {
  if pid_alive "$JOB_SERVER_PID" && port_open "$JOB_SERVER_PORT"; then return; fi
  [[ -f $JOB_SERVER_JAR ]] || die "job server jar missing: run scripts/setup.sh"
  mkdir -p "$RUN_DIR/flink/artifacts"
  nohup java -Xmx1g -jar "$JOB_SERVER_JAR" --flink-master="127.0.0.1:$FLINK_REST_PORT" --job-host=127.0.0.1 \
    --job-port="$JOB_SERVER_PORT" --artifact-port="$ARTIFACT_PORT" --expansion-port="$EXPANSION_PORT" \
    --artifacts-dir="$RUN_DIR/flink/artifacts" --flink-conf-dir="$FLINK_CONF" \
    >"$FLINK_LOG_DIR/jobserver.log" 2>&1 &
  echo $! > "$JOB_SERVER_PID"
  wait_for 60 "beam job server" port_open "$EXPANSION_PORT" || { tail -20 "$FLINK_LOG_DIR/jobserver.log" >&2; die "job server did not start"; }
}

kafka_expansion_start() {
  if pid_alive "$KAFKA_EXPANSION_PID" && port_open "$KAFKA_EXPANSION_PORT"; then return; fi
  nohup java -Xmx512m -cp "$JOB_SERVER_JAR" io.compressorfleet.jvm.LoopbackExpansionService 127.0.0.1 \
    "$KAFKA_EXPANSION_PORT" --experiments=use_deprecated_read --defaultEnvironmentType=EMBEDDED \
    >"$FLINK_LOG_DIR/kafka-expansion.log" 2>&1 &
  echo $! > "$KAFKA_EXPANSION_PID"
  wait_for 60 "kafka expansion service" port_open "$KAFKA_EXPANSION_PORT" \
    || { tail -20 "$FLINK_LOG_DIR/kafka-expansion.log" >&2; die "kafka expansion service did not start"; }
}

flink_start() {
  if flink_has_taskmanager; then
    jobserver_start
    kafka_expansion_start
    log "flink already running, REST on 127.0.0.1:$FLINK_REST_PORT"; return
  fi
  [[ -f $FLINK_HOME/.assembled ]] || die "Flink home missing: run scripts/setup.sh"
  local t0=$SECONDS
  flink_write_config
  { "$FLINK_HOME/bin/jobmanager.sh" start && "$FLINK_HOME/bin/taskmanager.sh" start; } >"$FLINK_LOG_DIR/start.log" 2>&1 \
    || { cat "$FLINK_LOG_DIR/start.log" >&2; die "flink start scripts failed"; }
  wait_for 90 "flink (JobManager + TaskManager)" flink_has_taskmanager \
    || { tail -30 "$FLINK_LOG_DIR"/*.log >&2; die "flink did not start; see $FLINK_LOG_DIR"; }
  jobserver_start
  kafka_expansion_start
  log "flink up: REST http://127.0.0.1:$FLINK_REST_PORT, $FLINK_SLOTS slots, job server 127.0.0.1:$JOB_SERVER_PORT (expansion $EXPANSION_PORT) (start-up $((SECONDS - t0)) s, logs $FLINK_LOG_DIR)"
}

flink_stop() {
  stop_pid "$KAFKA_EXPANSION_PID" "kafka expansion service"
  stop_pid "$JOB_SERVER_PID" "beam job server"
  [[ -n $(flink_pids) ]] || { log "flink not running"; return 0; }
  { "$FLINK_HOME/bin/taskmanager.sh" stop-all; "$FLINK_HOME/bin/jobmanager.sh" stop-all; } >"$FLINK_LOG_DIR/stop.log" 2>&1 || true
  for _ in $(seq 60); do [[ -z $(flink_pids) ]] && break; sleep 0.5; done
  local left; left=$(flink_pids)
  if [[ -n $left ]]; then log "flink processes still alive after 30 s; killing $left"; kill -9 $left 2>/dev/null || true; fi
  log "flink stopped"
}

flink_status() {
  if flink_has_taskmanager; then echo "flink: running (REST 127.0.0.1:$FLINK_REST_PORT) $(flink_rest /overview)"; else echo "flink: stopped"; fi
}

WORKERS_DIR="$RUN_DIR/workers"
WORKERS_PID="$WORKERS_DIR/pool.pid"
WORKERS_LOG="$LOG_DIR/workers/pool.log"

workers_healthy() { pid_alive "$WORKERS_PID" && port_open "$SDK_WORKER_POOL_PORT"; }
# The pool runs in its own session (id = the pool's pid), which holds it and its workers: the live
# members, matched by command too so that a stale pid file never names another program's processes
# (zombies are dead already: they wait for their parent, or for init, to reap them).
workers_group() {
  [[ -f $WORKERS_PID ]] || return 0
  ps -o pid=,stat=,args= --sid "$(cat "$WORKERS_PID")" 2>/dev/null \
    | awk '$2 !~ /^Z/ && /pipelines[.]worker_pool|sdk_worker_main/ {print $1}' || true
}

workers_start() {
  if workers_healthy; then log "sdk worker pool already running on 127.0.0.1:$SDK_WORKER_POOL_PORT"; return; fi
  [[ -x $PYTHON ]] || die "venv missing: run scripts/setup.sh"
  port_open "$SDK_WORKER_POOL_PORT" && die "port $SDK_WORKER_POOL_PORT is taken by another process (set SDK_WORKER_POOL_PORT)"
  workers_stop_group   # leftovers of a pool that died
  mkdir -p "$WORKERS_DIR" "$LOG_DIR/workers"
  local t0=$SECONDS
  # cwd = the project, so that its modules import the same way as in the submitting process
  (cd "$PROJECT_ROOT" && exec nohup setsid "$PYTHON" -m pipelines.worker_pool --host=127.0.0.1 \
    --service_port="$SDK_WORKER_POOL_PORT" >>"$WORKERS_LOG" 2>&1 </dev/null) &
  echo $! > "$WORKERS_PID"
  wait_for 60 "sdk worker pool" workers_healthy \
    || { tail -20 "$WORKERS_LOG" >&2; workers_stop_group; die "sdk worker pool did not start; see $WORKERS_LOG"; }
  log "sdk worker pool up on 127.0.0.1:$SDK_WORKER_POOL_PORT (start-up $((SECONDS - t0)) s, log $WORKERS_LOG)"
}

# SIGTERM the pool (it stops its workers, 10 s grace each), wait up to 30 s, then SIGKILL the group.
workers_stop_group() {
  [[ -f $WORKERS_PID ]] || return 0
  local pgid; pgid=$(cat "$WORKERS_PID")
  [[ -n $(workers_group) ]] && kill -TERM "$pgid" 2>/dev/null || true
  for _ in $(seq 60); do [[ -z $(workers_group) ]] && break; sleep 0.5; done
  if [[ -n $(workers_group) ]]; then log "sdk worker pool did not stop in 30 s; killing"; kill -KILL -- "-$pgid" 2>/dev/null || true; fi
  for _ in $(seq 20); do [[ -z $(workers_group) ]] && break; sleep 0.5; done
  rm -f "$WORKERS_PID"
}

workers_stop() {
  [[ -f $WORKERS_PID ]] || { log "sdk worker pool not running"; return 0; }
  workers_stop_group
  log "sdk worker pool stopped"
}

workers_status() {
  if workers_healthy; then
    echo "workers: running (pid $(cat "$WORKERS_PID"), 127.0.0.1:$SDK_WORKER_POOL_PORT, $(pgrep -P "$(cat "$WORKERS_PID")" | wc -l) SDK worker processes)"
  else echo "workers: stopped"; fi
}

main() {
  local action=${1:-status} target=${2:-all} services
  case $target in
    all) services="kafka flink workers";;
    kafka|flink|workers) services=$target;;
    *) die "unknown service '$target' (kafka|flink|workers|all)";;
  esac
  case $action in
    start|status) for s in $services; do "${s}_$action"; done ;;
    stop) for s in $(echo "$services" | tr ' ' '\n' | tac); do "${s}_stop"; done ;;
    restart) main stop "$target"; main start "$target" ;;
    *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
}
main "$@"
