#!/usr/bin/env bash
# Stops whatever up.sh started (Jaeger too, if it runs). Data stays in $ZAPTRIX_STATE
# unless --reset is given, which deletes it (fresh cluster, topics and traces next time).
# Usage: down.sh [--reset]
set -euo pipefail
STACK_NAME=down
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

reset=false
case "${1:-}" in
  "") ;;
  --reset) reset=true ;;
  *) echo "usage: $0 [--reset]" >&2; exit 2 ;;
esac

rc=0
"$STACK_DIR/jaeger.sh" stop || rc=1
"$STACK_DIR/kafka.sh" stop || rc=1
"$STACK_DIR/postgres.sh" stop || rc=1
if $reset && ((rc == 0)); then
  log "deleting pg, kafka and jaeger data under $ZAPTRIX_STATE"
  if [[ -L $ZAPTRIX_STATE/pg ]]; then rm -rf "$(readlink -f "$ZAPTRIX_STATE/pg")"; fi
  rm -rf "${ZAPTRIX_STATE:?}/pg" "${ZAPTRIX_STATE:?}/kafka" "${ZAPTRIX_STATE:?}/jaeger"
fi
exit $rc
