# Sourced by dev/bench.sh and dev/faults.sh: a suite that runs on its OWN PostgreSQL and Kafka (own state
# folder and ports, so `make run` or `make test` on the same machine is not disturbed).
#
#   own_stack_env <name> <state dir> <pg port> <kafka port> [<kafka controller port>]
#                                                            exports, log(), the synced venv and run()
#   own_stack_start                                          starts both, stops them on exit (also on Ctrl-C)
# shellcheck shell=bash

own_stack_env() {
  OWN_STACK_NAME=$1
  export ZAPTRIX_CACHE="${ZAPTRIX_CACHE:-$HOME/.cache/zaptrix}"
  export UV_CACHE_DIR="${UV_CACHE_DIR:-$ZAPTRIX_CACHE/uv}" UV_PYTHON_DOWNLOADS=never
  export ZAPTRIX_STATE=$2 PG_PORT=$3 KAFKA_PORT=$4
  export KAFKA_CONTROLLER_PORT="${5:-$((KAFKA_PORT + 1))}"
  uv=$(dev/stack/uv.sh)
  "$uv" sync --frozen --quiet
}

log() { printf '[%s %s] %s\n' "$(date +%H:%M:%S)" "$OWN_STACK_NAME" "$*" >&2; }
run() { "$uv" run --frozen --no-sync "$@"; }

# shellcheck disable=SC2317  # called through the trap
own_stack_stop() {
  local rc=$?
  trap - EXIT INT TERM
  log "stopping its own Kafka and PostgreSQL"
  dev/stack/kafka.sh stop >/dev/null 2>&1 || true
  dev/stack/postgres.sh stop >/dev/null 2>&1 || true
  exit "$rc"
}

own_stack_start() {
  trap own_stack_stop EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  log "PostgreSQL :$PG_PORT and Kafka :$KAFKA_PORT (state $ZAPTRIX_STATE)"
  dev/stack/postgres.sh start
  dev/stack/kafka.sh start
  export BENCH_PG_URL BENCH_KAFKA="127.0.0.1:$KAFKA_PORT" BENCH_STATE="$ZAPTRIX_STATE"
  BENCH_PG_URL=$(dev/stack/postgres.sh url)
}
