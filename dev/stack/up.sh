#!/usr/bin/env bash
# Starts the local infrastructure: PostgreSQL, Kafka (+ topics), and Jaeger with --with-jaeger.
# Usage: up.sh [--with-jaeger]
set -euo pipefail
STACK_NAME=up
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

with_jaeger=false
for a in "$@"; do
  case $a in
    --with-jaeger) with_jaeger=true ;;
    *) echo "usage: $0 [--with-jaeger]" >&2; exit 2 ;;
  esac
done

"$STACK_DIR/postgres.sh" start
"$STACK_DIR/kafka.sh" start
"$STACK_DIR/kafka.sh" topics >/dev/null
if $with_jaeger; then "$STACK_DIR/jaeger.sh" start; fi

cat <<INFO
PostgreSQL  $("$STACK_DIR/postgres.sh" url)
Kafka       127.0.0.1:$KAFKA_PORT (controller 127.0.0.1:$KAFKA_CONTROLLER_PORT)
INFO
if $with_jaeger; then
  cat <<INFO
Jaeger UI   http://127.0.0.1:$JAEGER_UI_PORT
OTLP        grpc 127.0.0.1:$JAEGER_OTLP_GRPC_PORT  http http://127.0.0.1:$JAEGER_OTLP_HTTP_PORT
INFO
fi
echo "state      $ZAPTRIX_STATE (logs: */*.log)"
