#!/usr/bin/env bash
# Re-resolves requirements.in into requirements.lock (pinned, hashed). Run after editing requirements.in.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$PROJECT_ROOT"
"$VENV/bin/uv" pip compile requirements.in --python-version 3.11 --generate-hashes \
  --no-header --annotation-style line -o requirements.lock
