#!/usr/bin/env bash
# `make bench`: the benchmarks of bench/ (see docs/benchmarks.md).
#
#   dev/bench.sh                      every scenario
#   dev/bench.sh ingress portal_rate  some of them (or: make bench BENCH="ingress portal_rate")
#   dev/bench.sh --list
#
# Installs what it needs (uv and the locked Python dependencies, wrk from Debian's packages, PostgreSQL
# and Kafka through dev/stack), starts its own PostgreSQL and Kafka (own state folder and ports, so a
# `make run` or `make test` on the same machine is not disturbed), runs `python -m bench.run`, and stops
# what it started, also on failure or Ctrl-C. Results: bench/results/<scenario>.json and summary.json.
#
# Environment: BENCH (scenarios when no arguments are given), BENCH_SCALE (multiplies every duration;
# 0.3 = a quick smoke run), BENCH_PROFILE=1 (py-spy profiles of the busy processes, installed on demand;
# BENCH_PROFILE_RATE samples/s, default 100),
# BENCH_OUTBOUND_STATUSES=0 (switch the Graph stand-in's status webhooks off during outbound_throughput),
# BENCH_RECORD_METRICS=1 (every process's /metrics each second into bench/results/<scenario>-metrics.jsonl,
# for bench/dashboard_png.py: docs/observability.md),
# ZAPTRIX_BENCH_STATE, ZAPTRIX_BENCH_PG_PORT, ZAPTRIX_BENCH_KAFKA_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
# Own ports, away from `make run` (55432, Kafka 19092+19093), `make test` (55433, 19094+19095) and the
# 1909x ports engineers pick for their own stacks.
# shellcheck source=dev/stack/own-stack.sh
source dev/stack/own-stack.sh
own_stack_env bench "${ZAPTRIX_BENCH_STATE:-$PWD/.local/bench}" "${ZAPTRIX_BENCH_PG_PORT:-55434}" \
  "${ZAPTRIX_BENCH_KAFKA_PORT:-19195}" "${ZAPTRIX_BENCH_KAFKA_CONTROLLER_PORT:-}"

if [[ $# -eq 0 && -n ${BENCH:-} ]]; then
  # shellcheck disable=SC2086
  set -- $BENCH
fi

if [[ ${1:-} == --list ]]; then run python -m bench.run --list; exit 0; fi
# Check the scenario names before starting anything.
# Read once: `--list | grep -q` let grep exit before the list was written, and with pipefail the
# writer's broken pipe made a known scenario "unknown".
scenarios=$(run python -m bench.run --list)
for name in "$@"; do
  for n in ${name//,/ }; do
    grep -qx -- "$n" <<<"$scenarios" || { log "unknown scenario: $n (see dev/bench.sh --list)"; exit 2; }
  done
done

if ! command -v wrk >/dev/null; then
  [[ $EUID -eq 0 ]] || { log "wrk is missing; run: sudo apt-get install -y wrk"; exit 1; }
  log "installing wrk (apt-get)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; } >&2 \
    || { log "apt-get install wrk failed"; exit 1; }
fi

if [[ ${BENCH_PROFILE:-} == 1 ]] && ! command -v py-spy >/dev/null && [[ ! -x $ZAPTRIX_CACHE/bin/py-spy ]]; then
  log "installing py-spy 0.4.3 (uv tool, into $ZAPTRIX_CACHE/bin) for BENCH_PROFILE=1"
  UV_TOOL_DIR="$ZAPTRIX_CACHE/uv-tools" UV_TOOL_BIN_DIR="$ZAPTRIX_CACHE/bin" "$uv" tool install --quiet py-spy==0.4.3 \
    || { log "could not install py-spy"; exit 1; }
fi

own_stack_start
export BENCH_RESULTS="${BENCH_RESULTS:-$PWD/bench/results}"

# Not exec: the trap must stop the stack afterwards. The driver handles SIGINT itself (it stops every
# process it started); a second Ctrl-C reaches it too, and its atexit hook kills what is left.
rc=0
run python -m bench.run "$@" || rc=$?
exit "$rc"
