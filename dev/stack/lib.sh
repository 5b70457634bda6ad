# shellcheck shell=bash
# Shared helpers for dev/stack/*.sh. Source it; it does not run anything.
set -euo pipefail

STACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$STACK_DIR/../.." && pwd)"
ZAPTRIX_CACHE="${ZAPTRIX_CACHE:-${HOME:-/root}/.cache/zaptrix}"
ZAPTRIX_STATE="${ZAPTRIX_STATE:-$REPO_ROOT/.local/run}"
PG_PORT="${PG_PORT:-55432}"
KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
JAEGER_UI_PORT="${JAEGER_UI_PORT:-16686}"
JAEGER_OTLP_GRPC_PORT="${JAEGER_OTLP_GRPC_PORT:-4317}"
JAEGER_OTLP_HTTP_PORT="${JAEGER_OTLP_HTTP_PORT:-4318}"
JAEGER_QUERY_GRPC_PORT="${JAEGER_QUERY_GRPC_PORT:-$((JAEGER_UI_PORT - 1))}"
export ZAPTRIX_CACHE ZAPTRIX_STATE PG_PORT KAFKA_PORT KAFKA_CONTROLLER_PORT \
  JAEGER_UI_PORT JAEGER_OTLP_GRPC_PORT JAEGER_OTLP_HTTP_PORT JAEGER_QUERY_GRPC_PORT

log() { printf '[%s %s] %s\n' "$(date +%H:%M:%S)" "${STACK_NAME:-stack}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# port_open PORT [HOST]: true when something accepts TCP connections there.
port_open() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }

# wait_until TIMEOUT_S LOGFILE DESCRIPTION CMD...: poll CMD every 0.2 s.
wait_until() {
  local timeout=$1 logfile=$2 what=$3 deadline; shift 3
  deadline=$((SECONDS + timeout))
  until "$@"; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${timeout}s waiting for $what; last log lines ($logfile):"
      tail -n 30 "$logfile" >&2 2>/dev/null || true
      die "$what did not come up, see $logfile"
    fi
    sleep 0.2
  done
}
wait_for_port() { wait_until "$3" "$4" "port $1 (${2})" port_open "$1"; }  # PORT WHAT TIMEOUT LOG

# pid_alive FILE [PATTERN]: true when the pid recorded in FILE runs (and its
# command line contains PATTERN, which guards against a stale, reused pid).
pid_alive() {
  local pid
  [[ -s $1 ]] && pid=$(<"$1") && kill -0 "$pid" 2>/dev/null || return 1
  [[ -z ${2:-} ]] || tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2"
}

# stop_pid FILE WHAT PATTERN [TIMEOUT]: TERM, wait, then KILL; removes the pidfile.
stop_pid() {
  local file=$1 what=$2 pattern=$3 timeout=${4:-20} pid i
  if ! pid_alive "$file" "$pattern"; then log "$what is not running"; rm -f "$file"; return 0; fi
  pid=$(<"$file"); log "stopping $what (pid $pid)"
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < timeout * 5; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then log "$what ignored TERM, killing"; kill -9 "$pid" 2>/dev/null || true; fi
  rm -f "$file"
}

# lock NAME: holds an exclusive lock on $ZAPTRIX_CACHE/locks/NAME until the
# (sub)shell exits, so that concurrent runs don't download/build the same thing.
lock() {
  local fd
  mkdir -p "$ZAPTRIX_CACHE/locks"
  exec {fd}>"$ZAPTRIX_CACHE/locks/$1.lock"
  flock "$fd"
}

# go_env: the Go toolchain with module and build caches kept in ZAPTRIX_CACHE.
go_env() {
  local go; go=$(command -v go || echo /usr/local/go/bin/go)
  [[ -x $go ]] || die "go not found (expected on PATH or /usr/local/go/bin/go)"
  env GOMODCACHE="$ZAPTRIX_CACHE/go/mod" GOCACHE="$ZAPTRIX_CACHE/go/build" \
    GOFLAGS=-mod=mod GOTOOLCHAIN=local "$go" "$@"
}

# heartbeat WHAT ABOUT CMD...: runs CMD; every HEARTBEAT_S seconds (30) while it runs, logs how long WHAT has
# taken so far and how long it usually takes (ABOUT), so that a long first run never looks hung.
heartbeat() {
  local what=$1 about=$2 every=${HEARTBEAT_S:-30} start=$SECONDS next pid rc=0; shift 2
  next=$every
  "$@" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    kill -0 "$pid" 2>/dev/null || break
    if ((SECONDS - start >= next)); then
      log "still $what: $(((SECONDS - start) / 60))m$(((SECONDS - start) % 60))s so far (usually $about)"
      next=$((next + every))
    fi
  done
  wait "$pid" || rc=$?
  return "$rc"
}

_go_build() {  # WRAP_DIR OUT PKG
  # shellcheck disable=SC2086 # GO_BUILD_FLAGS: several flags, split on purpose
  (cd "$1" && go_env build ${GO_BUILD_FLAGS:-} -trimpath -ldflags="-s -w ${GO_LDFLAGS:-}" -o "$2" "$3")
}

# go_build_tool NAME MODULE VERSION PKG [REPLACE...]: builds PKG of MODULE@VERSION
# into $ZAPTRIX_CACHE/bin/NAME-VERSION (once) and prints that path. Like
# `go install PKG@VERSION`, but inside a small wrapper module so that upstream
# replace directives (which go install refuses) can be repeated: pass them as
# "old => new version". GO_LDFLAGS adds linker flags (e.g. -X version stamps);
# GO_BUILD_FLAGS more build flags (e.g. -p 1 to keep a big build to one core); GO_BUILD_ABOUT how long the
# first build usually takes (said at the start and with each heartbeat).
go_build_tool() {
  local name=$1 module=$2 version=$3 pkg=$4 out wrap r gov; shift 4
  out="$ZAPTRIX_CACHE/bin/$name-$version"
  [[ -x $out ]] || lock "$name-$version"
  if [[ ! -x $out ]]; then
    wrap="$ZAPTRIX_CACHE/go/wrap/$name-$version"
    mkdir -p "$wrap" "$ZAPTRIX_CACHE/bin"
    gov=$(go_env env GOVERSION); gov=${gov#go}
    { printf 'module zaptrix.local/build/%s\n\ngo %s\n\nrequire %s %s\n' "$name" "$gov" "$module" "$version"
      for r in "$@"; do printf '\nreplace %s\n' "$r"; done; } >"$wrap/go.mod"
    log "building $name $version from source with Go: first run only, usually ${GO_BUILD_ABOUT:-a few minutes} (modules are downloaded, then compiled); kept in $out"
    heartbeat "building $name" "${GO_BUILD_ABOUT:-a few minutes}" _go_build "$wrap" "$out.tmp" "$pkg" >&2 \
      || die "building $name failed"
    log "built $name $version"
    mv "$out.tmp" "$out"
  fi
  printf '%s\n' "$out"
}
