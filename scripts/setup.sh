#!/usr/bin/env bash
# Sets up everything the project runs, from the registries only, idempotently:
#   1. .venv from requirements.lock (hash-checked)
#   2. JVM artifacts through Maven (jvm/pom.xml): the Kafka broker classpath
#   3. Flink 1.20 home assembled from the PyPI packages pinned in jvm/flink-dist.lock
#   4. Beam's Flink 1.20 job server jar (scripts/build_job_server.sh)
# Re-running skips what is already in place (delete .cache/ or .venv/ to force).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$PROJECT_ROOT"

setup_python() {
  local stamp="$VENV/.lock-sha256" want
  want=$(sha256sum requirements.lock | cut -d' ' -f1)
  if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then return; fi
  log "python: creating $VENV from requirements.lock"
  [[ -x $PYTHON ]] || python3.11 -m venv "$VENV"
  "$VENV/bin/pip" install -q --require-hashes -r scripts/bootstrap.lock
  "$VENV/bin/uv" pip sync -q --python "$PYTHON" --require-hashes requirements.lock
  "$VENV/bin/uv" pip install -q --python "$PYTHON" --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
}

setup_kafka_jars() {
  local stamp="$JVM_DIR/kafka/.pom-sha256" want
  want=$(sha256sum jvm/pom.xml | cut -d' ' -f1)
  if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then return; fi
  log "maven: resolving the Kafka broker classpath (jvm/pom.xml)"
  rm -rf "$JVM_DIR/kafka"
  mvn -q -B -f jvm/pom.xml -Djvm.out="$JVM_DIR" package
  echo "$want" > "$stamp"
}

setup_flink() {
  [[ -f $FLINK_HOME/.assembled ]] && return
  log "flink: assembling $FLINK_HOME from PyPI packages (jvm/flink-dist.lock)"
  local dl; dl=$(mktemp -d)
  "$VENV/bin/pip" download -q --no-deps --require-hashes -r jvm/flink-dist.lock -d "$dl" \
      --only-binary apache-flink --python-version 3.11 --platform manylinux2014_x86_64
  rm -rf "$FLINK_HOME"; mkdir -p "$FLINK_HOME"
  tar -xzf "$dl"/apache-flink-libraries-*.tar.gz -C "$dl"
  cp -r "$dl"/apache-flink-libraries-*/deps/{lib,opt} "$FLINK_HOME/"
  mkdir -p "$FLINK_HOME/bin" && cp "$dl"/apache-flink-libraries-*/deps/bin/bash-java-utils.jar "$FLINK_HOME/bin/"
  (cd "$dl" && unzip -q apache_flink-*.whl 'pyflink/bin/*' 'pyflink/conf/*')
  cp -r "$dl"/pyflink/bin/. "$FLINK_HOME/bin/"; cp -r "$dl"/pyflink/conf "$FLINK_HOME/conf"
  chmod +x "$FLINK_HOME"/bin/*.sh "$FLINK_HOME/bin/flink"
  mkdir -p "$FLINK_HOME/log" "$FLINK_HOME/plugins"
  rm -rf "$dl"
  touch "$FLINK_HOME/.assembled"
}

setup_job_server() {
  bash scripts/build_job_server.sh   # keeps its own stamp: a no-op when up to date
}

start=$SECONDS
setup_python
setup_kafka_jars
setup_flink
setup_job_server
log "setup complete in $((SECONDS - start)) s"
