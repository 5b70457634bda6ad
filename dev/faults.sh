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
# Own ports, away from `make run` (55432, 19092+), `make test` (55433, 19094+) and `make bench` (55434, 19195+).
# shellcheck source=dev/stack/own-stack.sh
source dev/stack/own-stack.sh
own_stack_env faults "${ZAPTRIX_FAULTS_STATE:-$PWD/.local/faults}" "${ZAPTRIX_FAULTS_PG_PORT:-55436}" \
  "${ZAPTRIX_FAULTS_KAFKA_PORT:-19197}" "${ZAPTRIX_FAULTS_KAFKA_CONTROLLER_PORT:-}"

if [[ $# -eq 0 && -n ${FAULTS:-} ]]; then
  # shellcheck disable=SC2086
  set -- $FAULTS
fi

# Check the arguments before starting anything (--list prints the scenarios).
for arg in "$@"; do
  if [[ $arg == --list || $arg == -h || $arg == --help ]]; then run python -m bench.faults "$@"; exit 0; fi
done
run python -m bench.faults --list >/dev/null

own_stack_start
export FAULTS_STACK_STATE="$ZAPTRIX_STATE"

rc=0
run python -m bench.faults "$@" || rc=$?
exit "$rc"
