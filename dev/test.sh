#!/usr/bin/env bash
# `make test`: install what is needed, check code and contracts, start a throwaway PostgreSQL and Kafka
# (own ports and state folder, so a running `make run` is not disturbed), run pytest, stop them again.
set -euo pipefail
cd "$(dirname "$0")/.."
export ZAPTRIX_CACHE="${ZAPTRIX_CACHE:-$HOME/.cache/zaptrix}"
export UV_CACHE_DIR="${UV_CACHE_DIR:-$ZAPTRIX_CACHE/uv}" UV_PYTHON_DOWNLOADS=never
export ZAPTRIX_STATE="${ZAPTRIX_TEST_STATE:-$PWD/.local/test}"
export PG_PORT="${ZAPTRIX_TEST_PG_PORT:-55433}" KAFKA_PORT="${ZAPTRIX_TEST_KAFKA_PORT:-19094}"
started=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$*" "$(( $(date +%s) - started ))"; }

step "python environment"
uv=$(dev/stack/uv.sh)
"$uv" sync --frozen --quiet
run() { "$uv" run --frozen --no-sync "$@"; }

step "lint and format"
run ruff check .
run ruff format --check .
step "type check"
run mypy
step "generated code is current"
run dev/protos.sh --check

step "PostgreSQL and Kafka"
cleanup() { dev/stack/kafka.sh stop >/dev/null 2>&1 || true; dev/stack/postgres.sh stop >/dev/null 2>&1 || true; }
trap cleanup EXIT
dev/stack/postgres.sh start
dev/stack/kafka.sh start
dev/stack/kafka.sh topics
export ZAPTRIX_TEST_PG_URL; ZAPTRIX_TEST_PG_URL=$(dev/stack/postgres.sh url)
export ZAPTRIX_TEST_KAFKA="127.0.0.1:$KAFKA_PORT"
# Tools the chart tests need (built once into the cache).
export ZAPTRIX_HELM; ZAPTRIX_HELM=$(dev/stack/tools.sh helm)
export ZAPTRIX_PROMTOOL; ZAPTRIX_PROMTOOL=$(dev/stack/tools.sh promtool)
# Headless Chromium and chromedriver (Debian packages) for the settings page's browser tests.
step "chromium"
read -r ZAPTRIX_CHROMIUM ZAPTRIX_CHROMEDRIVER < <(dev/stack/chromium.sh install)
export ZAPTRIX_CHROMIUM ZAPTRIX_CHROMEDRIVER

step "pytest"
run pytest -p no:cacheprovider "$@"
step "done"
