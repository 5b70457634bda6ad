#!/usr/bin/env bash
# Jaeger v2 all-in-one (in-memory storage), built from the Go module proxy.
# Usage: jaeger.sh start|stop|status|path
set -euo pipefail
STACK_NAME=jaeger
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

JAEGER_VERSION=v1.76.0   # module tag of github.com/jaegertracing/jaeger; the binary is Jaeger v2
JAEGER_DIR="$ZAPTRIX_STATE/jaeger"
JAEGER_LOG="$JAEGER_DIR/jaeger.log"
JAEGER_PID="$JAEGER_DIR/jaeger.pid"

binary() {
  # Jaeger's go.mod has a replace directive, which `go install pkg@version` refuses;
  # go_build_tool repeats it in a wrapper module.
  GO_BUILD_ABOUT="5-10 minutes on 2 cores" \
    GO_LDFLAGS="-X github.com/jaegertracing/jaeger/internal/version.latestVersion=$JAEGER_VERSION" \
    go_build_tool jaeger github.com/jaegertracing/jaeger "$JAEGER_VERSION" \
    github.com/jaegertracing/jaeger/cmd/jaeger \
    'github.com/Shopify/sarama => github.com/Shopify/sarama v1.33.0'
}

running() { pid_alive "$JAEGER_PID" "jaeger-$JAEGER_VERSION"; }
ready() { running && curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$JAEGER_UI_PORT/api/services" 2>/dev/null; }
ready_or_dead() {
  ready && return 0
  running && return 1
  tail -n 20 "$JAEGER_LOG" >&2 2>/dev/null || true
  die "jaeger exited during startup, see $JAEGER_LOG"
}

start() {
  if running; then
    wait_until 30 "$JAEGER_LOG" "jaeger UI on :$JAEGER_UI_PORT" ready_or_dead
    log "already running, UI http://127.0.0.1:$JAEGER_UI_PORT"; return 0
  fi
  local bin p; bin=$(binary)
  for p in "$JAEGER_UI_PORT" "$JAEGER_QUERY_GRPC_PORT" "$JAEGER_OTLP_GRPC_PORT" "$JAEGER_OTLP_HTTP_PORT"; do
    port_open "$p" && die "port $p is taken by another process (see JAEGER_* variables)"
  done
  mkdir -p "$JAEGER_DIR"
  if [[ -f $JAEGER_LOG ]]; then mv -f "$JAEGER_LOG" "$JAEGER_LOG.prev"; fi
  log "starting (log: $JAEGER_LOG)"
  setsid "$bin" --config "$STACK_DIR/jaeger.yaml" </dev/null >"$JAEGER_LOG" 2>&1 &
  echo $! >"$JAEGER_PID"
  wait_until 60 "$JAEGER_LOG" "jaeger UI on :$JAEGER_UI_PORT" ready_or_dead
  log "ready: UI http://127.0.0.1:$JAEGER_UI_PORT, OTLP gRPC 127.0.0.1:$JAEGER_OTLP_GRPC_PORT, OTLP HTTP 127.0.0.1:$JAEGER_OTLP_HTTP_PORT"
}

stop() { stop_pid "$JAEGER_PID" jaeger "jaeger-$JAEGER_VERSION" 20; }

status() {
  if ready; then echo "jaeger: running, UI http://127.0.0.1:$JAEGER_UI_PORT, OTLP 127.0.0.1:$JAEGER_OTLP_GRPC_PORT (grpc) / :$JAEGER_OTLP_HTTP_PORT (http) (pid $(<"$JAEGER_PID"), log $JAEGER_LOG)"
  elif running; then echo "jaeger: starting (pid $(<"$JAEGER_PID"), log $JAEGER_LOG)"; return 1
  else echo "jaeger: stopped"; return 1; fi
}

case "${1:-}" in
  start | stop | status) "$1" ;;
  path) binary ;;
  *) echo "usage: $0 start|stop|status|path" >&2; exit 2 ;;
esac
