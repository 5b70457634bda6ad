#!/usr/bin/env bash
# `make faults`: the fault suite of bench/faults (see docs/faults.md).
#
#   dev/faults.sh                                  every scenario, full load
#   dev/faults.sh mapper-kill graph-slow           some of them (or: make faults FAULTS="mapper-kill graph-slow")
#   dev/faults.sh --messages 300 --replies 60 meta-dispatcher-kill    a quick run
#   dev/faults.sh --list
#
# Installs what it needs (uv and the locked Python dependencies, PostgreSQL and Kafka through dev/stack),
# starts its OWN PostgreSQL and Kafka (own state folder and ports: two scenarios kill them, so never the
# ones of `make run` or `make test`), runs `python -m bench.faults`, and stops what it started, also on
# failure or Ctrl-C. Results: bench/results/faults.json.
#
# Environment: FAULTS (arguments when none are given), ZAPTRIX_FAULTS_STATE, ZAPTRIX_FAULTS_PG_PORT,
# ZAPTRIX_FAULTS_KAFKA_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
export ZAPTRIX_CACHE="${ZAPTRIX_CACHE:-$HOME/.cache/zaptrix}"
export UV_CACHE_DIR="${UV_CACHE_DIR:-$ZAPTRIX_CACHE/uv}" UV_PYTHON_DOWNLOADS=never
export ZAPTRIX_STATE="${ZAPTRIX_FAULTS_STATE:-$PWD/.local/faults}"
# Own ports, away from `make run` (55432, 19092+), `make test` (55433, 19094+) and `make bench` (55434, 19195+).
export PG_PORT="${ZAPTRIX_FAULTS_PG_PORT:-55436}" KAFKA_PORT="${ZAPTRIX_FAULTS_KAFKA_PORT:-19197}"
export KAFKA_CONTROLLER_PORT="${ZAPTRIX_FAULTS_KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"

log() { printf '[%s faults] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ $# -eq 0 && -n ${FAULTS:-} ]]; then
  # shellcheck disable=SC2086
  set -- $FAULTS
fi

uv=$(dev/stack/uv.sh)
"$uv" sync --frozen --quiet
run() { "$uv" run --frozen --no-sync "$@"; }

# Check the arguments before starting anything (--list prints the scenarios).
for arg in "$@"; do
  if [[ $arg == --list || $arg == -h || $arg == --help ]]; then run python -m bench.faults "$@"; exit 0; fi
done
run python -m bench.faults --list >/dev/null

# shellcheck disable=SC2317  # called through the trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  log "stopping the suite's Kafka and PostgreSQL"
  dev/stack/kafka.sh stop >/dev/null 2>&1 || true
  dev/stack/postgres.sh stop >/dev/null 2>&1 || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "PostgreSQL :$PG_PORT and Kafka :$KAFKA_PORT (state $ZAPTRIX_STATE)"
dev/stack/postgres.sh start
dev/stack/kafka.sh start

export BENCH_PG_URL BENCH_KAFKA="127.0.0.1:$KAFKA_PORT" BENCH_STATE="$ZAPTRIX_STATE" FAULTS_STACK_STATE="$ZAPTRIX_STATE"
BENCH_PG_URL=$(dev/stack/postgres.sh url)

rc=0
run python -m bench.faults "$@" || rc=$?
exit "$rc"
