#!/usr/bin/env bash
# `make run`: infrastructure (dev/stack), then every service as a local process (dev/run.py).
set -euo pipefail
cd "$(dirname "$0")/.."
export ZAPTRIX_CACHE="${ZAPTRIX_CACHE:-$HOME/.cache/zaptrix}"
export UV_CACHE_DIR="${UV_CACHE_DIR:-$ZAPTRIX_CACHE/uv}" UV_PYTHON_DOWNLOADS=never
uv=$(dev/stack/uv.sh)
"$uv" sync --frozen --quiet
exec "$uv" run --frozen --no-sync python dev/run.py
