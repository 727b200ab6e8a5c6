#!/usr/bin/env bash
# Builds Beam's Flink 1.20 job server jar ($JOB_SERVER_JAR) from source.
#
# Why from source: the prebuilt org.apache.beam:beam-runners-flink-1.20-job-server jar (and the
# beam-runners-flink-1.20 / beam-runners-java-job-service modules it is made of) is not served by
# this machine's Maven registry. The Beam source is: the Go module proxy serves the repository
# root as module github.com/apache/beam@v2.72.0+incompatible. We unpack only runners/flink and
# runners/java-job-service, and jvm/flink-job-server/pom.xml compiles them against the Beam
# modules Maven Central does serve, then shades a runnable jar (see the pom for what is left out).
#
# One Beam class is patched at build time: jvm/flink-job-server/patches/ServerFactory-bind-address.patch
# makes org.apache.beam.sdk.fn.server.ServerFactory (beam-sdks-java-core) bind the address it is
# given (NettyServerBuilder.forAddress) instead of the wildcard (forPort). Unpatched, the job and
# artifact services listen on *:<port> despite --job-host=127.0.0.1, and the TaskManager's gRPC
# servers for SDK harnesses (control/data/state, EMBEDDED/LOOPBACK/...) on *:<random>, while every
# server here must bind 127.0.0.1 only. The pom unpacks the original source from the
# beam-sdks-java-core sources jar (Maven Central), applies the patch with `patch --fuzz=0` (the
# build fails if it no longer applies), compiles it with the job server and filters the original
# classes out of the shaded jar; this script then checks the shaded jar holds the patched class.
#
# Usage: scripts/build_job_server.sh [--force]
# Idempotent: skips the build when the jar exists and was built from the same pom + patches + source.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$PROJECT_ROOT"

BEAM_MODULE=github.com/apache/beam
BEAM_MODULE_VERSION="v${BEAM_VERSION}+incompatible"
# Go checksum-database hash (h1) and zip sha256 of $BEAM_MODULE@$BEAM_MODULE_VERSION.
# Change together with BEAM_VERSION in lib.sh.
BEAM_MODULE_H1="h1:b2ZwEif8x2Lu7imqggYSjjsnyVUX67JyUthHZLVB+dM="
BEAM_ZIP_SHA256="e894f6257f33f5888a33a8d6dffa3d5bfa12b02271a096026ca362949d430b13"

POM="$PROJECT_ROOT/jvm/flink-job-server/pom.xml"
PATCH_DIR="$PROJECT_ROOT/jvm/flink-job-server/patches"
SRC_DIR="$CACHE_DIR/beam-src"
BUILD_DIR="$CACHE_DIR/beam-build"
STAMP="$JOB_SERVER_JAR.stamp"

force=false
[[ ${1:-} == --force ]] && force=true

command -v mvn >/dev/null || die "mvn not found"
command -v java >/dev/null || die "java not found"
command -v unzip >/dev/null || die "unzip not found"
command -v patch >/dev/null || die "patch not found (needed to apply $PATCH_DIR)"
command -v javap >/dev/null || die "javap not found (needed to check the patched class)"

# Hash of every file under patches/ (relative names + contents), so editing a patch rebuilds.
patches_sha=$(cd "$PATCH_DIR" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
# our own Java sources are part of the build too
sources_sha=$(find "$PROJECT_ROOT/jvm/flink-job-server/src" -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
want_stamp="beam=$BEAM_MODULE_H1 pom=$(sha256sum "$POM" | cut -d' ' -f1) patches=$patches_sha sources=$sources_sha"
if ! $force && [[ -f $JOB_SERVER_JAR && -f $STAMP && $(cat "$STAMP") == "$want_stamp" ]]; then
  log "job server: $JOB_SERVER_JAR is up to date (use --force to rebuild)"
  exit 0
fi

# Prints the path of the verified module zip on stdout.
fetch_beam_zip() {
  local json zip sum err
  if command -v go >/dev/null; then
    log "beam source: go mod download $BEAM_MODULE@$BEAM_MODULE_VERSION (verified by sum.golang.org)"
    # Run outside any module so no go.mod/go.work of the caller interferes.
    if json=$(cd /tmp && GO111MODULE=on GOWORK=off \
                go mod download -json "$BEAM_MODULE@$BEAM_MODULE_VERSION" 2>/dev/null) &&
       ! grep -q '"Error"' <<<"$json"; then
      zip=$(sed -n 's/^[[:space:]]*"Zip": "\(.*\)",$/\1/p' <<<"$json")
      sum=$(sed -n 's/^[[:space:]]*"Sum": "\(.*\)",$/\1/p' <<<"$json")
      [[ $sum == "$BEAM_MODULE_H1" ]] || die "beam source: module hash $sum != pinned $BEAM_MODULE_H1"
      [[ -f $zip ]] || die "beam source: go reported zip $zip, which does not exist"
      echo "$zip"; return
    fi
    err=$(sed -n 's/.*"Error": "\(.*\)".*/\1/p' <<<"${json:-}" | head -1)
    log "beam source: go mod download failed${err:+: $err}; falling back to the proxy over https"
  fi
  local dl="$CACHE_DIR/downloads" url
  url="https://proxy.golang.org/$BEAM_MODULE/@v/$BEAM_MODULE_VERSION.zip"
  zip="$dl/beam-$BEAM_MODULE_VERSION.zip"
  mkdir -p "$dl"
  if ! [[ -f $zip ]] || ! sha256sum --status -c <<<"$BEAM_ZIP_SHA256  $zip"; then
    log "beam source: downloading $url"
    curl -fsSL --retry 3 -o "$zip.part" "$url" || die "beam source: download failed"
    sha256sum --status -c <<<"$BEAM_ZIP_SHA256  $zip.part" || {
      rm -f "$zip.part"; die "beam source: sha256 mismatch for $url"; }
    mv "$zip.part" "$zip"
  fi
  echo "$zip"
}

unpack_beam_src() {
  if [[ -f $SRC_DIR/.module-sum && $(cat "$SRC_DIR/.module-sum") == "$BEAM_MODULE_H1" ]]; then
    log "beam source: $SRC_DIR already unpacked"
    return
  fi
  local zip prefix tmp
  zip=$(fetch_beam_zip)
  prefix="$BEAM_MODULE@$BEAM_MODULE_VERSION"
  tmp=$(mktemp -d "$CACHE_DIR/.beam-src.XXXXXX")
  log "beam source: unpacking runners/flink and runners/java-job-service into $SRC_DIR"
  unzip -q "$zip" -d "$tmp" \
    "$prefix/LICENSE" "$prefix/NOTICE" \
    "$prefix/runners/flink/*/build.gradle" "$prefix/runners/flink/*.gradle" \
    "$prefix/runners/flink/src/main/*" "$prefix/runners/flink/1.*/src/main/*" \
    "$prefix/runners/java-job-service/build.gradle" "$prefix/runners/java-job-service/src/main/*"
  chmod -R u+w "$tmp"
  echo "$BEAM_MODULE_H1" > "$tmp/$prefix/.module-sum"
  rm -rf "$SRC_DIR"
  mv "$tmp/$prefix" "$SRC_DIR"
  rm -rf "$tmp"
}

mkdir -p "$CACHE_DIR"
unpack_beam_src

# The pom compiles against flink.version; make sure it is still what Beam pins for 1.20.
beam_flink=$(sed -n "s/^[[:space:]]*flink_version = '\(.*\)'/\1/p" "$SRC_DIR/runners/flink/1.20/build.gradle")
pom_flink=$(sed -n 's|^[[:space:]]*<flink.version>\(.*\)</flink.version>|\1|p' "$POM")
[[ $beam_flink == "$pom_flink" ]] ||
  log "WARNING: Beam builds its 1.20 runner against Flink $beam_flink, the pom uses $pom_flink"

log "maven: compiling the Flink 1.20 runner + java-job-service and shading the job server"
start=$SECONDS
mvn -q -B -f "$POM" -Dbeam.src="$SRC_DIR" -Dbuild.dir="$BUILD_DIR" clean package
built="$BUILD_DIR/beam-runners-flink-1.20-job-server-$BEAM_VERSION.jar"
[[ -f $built ]] || die "maven finished but $built is missing"
log "maven: done in $((SECONDS - start)) s"

# The shaded jar must hold the patched ServerFactory (forAddress), not beam-sdks-java-core's (forPort).
check_patched_class() {
  local cls='org.apache.beam.sdk.fn.server.ServerFactory$InetSocketAddressServerFactory' code
  code=$(javap -c -p -classpath "$built" "$cls") || die "patch check: cannot read $cls from $built"
  grep -q 'NettyServerBuilder.forAddress' <<<"$code" && ! grep -q 'NettyServerBuilder.forPort' <<<"$code" ||
    die "patch check: $built holds the unpatched $cls (NettyServerBuilder.forPort)"
  log "patch check: $cls binds with NettyServerBuilder.forAddress"
}
check_patched_class

mkdir -p "$(dirname "$JOB_SERVER_JAR")"
mv "$built" "$JOB_SERVER_JAR"   # same filesystem: no 200 MB copy left behind
echo "$want_stamp" > "$STAMP"
log "job server: $JOB_SERVER_JAR ($(du -h "$JOB_SERVER_JAR" | cut -f1))"
