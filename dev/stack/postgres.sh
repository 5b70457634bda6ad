#!/usr/bin/env bash
# Throwaway PostgreSQL cluster for local runs and tests.
# Usage: postgres.sh start|stop|status|url
set -euo pipefail
STACK_NAME=postgres
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PG_DIR="$ZAPTRIX_STATE/pg"       # also holds the unix socket
# A symlink when ZAPTRIX_STATE is not reachable by the postgres user (see prepare_dir).
if [[ -L $PG_DIR ]]; then PG_DIR=$(readlink -f "$PG_DIR"); fi
PG_DATA="$PG_DIR/data"
PG_LOG="$PG_DIR/postgres.log"
DB_USER=zaptrix DB_PASS=zaptrix DB_NAME=zaptrix

# pg_bindir [install]: newest /usr/lib/postgresql/<ver>/bin; installs Debian's package if asked.
pg_bindir() {
  local d
  d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
  if [[ -z $d || ! -x $d/initdb ]]; then
    [[ ${1:-} == install ]] || return 1
    [[ $EUID -eq 0 ]] || die "PostgreSQL server binaries missing; run: sudo apt-get install -y postgresql"
    log "installing PostgreSQL server from Debian's packages (apt-get; first run only, usually under a minute)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >&2 \
      || die "apt-get install postgresql failed"
    d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d | sort -V | tail -n 1)
  fi
  printf '%s\n' "$d"
}

# Run a command as the cluster owner: the `postgres` system user when we are root.
as_owner() {
  if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

running() { [[ -f $PG_DATA/postmaster.pid ]] && as_owner "$BIN/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1; }
psql_admin() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_DIR" -p "$PG_PORT" -U postgres "$@"; }

# As root the cluster belongs to the `postgres` user, which must be able to reach
# its directory. When a parent of ZAPTRIX_STATE is private (e.g. a checkout under
# /root), the cluster lives in /tmp instead and $ZAPTRIX_STATE/pg links to it.
prepare_dir() {
  local want="$ZAPTRIX_STATE/pg" alt
  mkdir -p "$PG_DIR"
  [[ $EUID -eq 0 ]] || return 0
  id postgres >/dev/null 2>&1 || die "system user 'postgres' missing (it comes with Debian's postgresql package)"
  chown postgres: "$PG_DIR"
  runuser -u postgres -- test -w "$PG_DIR" && return 0
  [[ $PG_DIR == "$want" ]] || die "user postgres cannot write $PG_DIR"
  alt="${TMPDIR:-/tmp}/zaptrix-pg-$(printf '%s' "$want" | cksum | cut -d' ' -f1)"
  log "user postgres cannot reach $want (private parent directory); using $alt"
  rmdir "$want"; rm -rf "$alt"; mkdir -p "$alt"; chown postgres: "$alt"; chmod 700 "$alt"
  ln -s "$alt" "$want"; PG_DIR=$alt PG_DATA="$alt/data" PG_LOG="$alt/postgres.log"
  runuser -u postgres -- test -w "$PG_DIR" || die "user postgres cannot write $PG_DIR either"
}

init_cluster() {
  prepare_dir
  log "initdb in $PG_DATA"
  as_owner "$BIN/initdb" -D "$PG_DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 --no-sync >"$PG_DIR/initdb.log" 2>&1 \
    || { tail -n 20 "$PG_DIR/initdb.log" >&2; die "initdb failed, see $PG_DIR/initdb.log"; }
  cat >>"$PG_DATA/postgresql.conf" <<CONF
# zaptrix throwaway cluster
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_DIR'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
CONF
}

start() {
  if running; then log "already running on 127.0.0.1:$PG_PORT"; return 0; fi
  [[ -f $PG_DATA/PG_VERSION ]] || init_cluster
  port_open "$PG_PORT" && die "port $PG_PORT is taken by another process (set PG_PORT)"
  log "starting on 127.0.0.1:$PG_PORT (log: $PG_LOG)"
  # The port is set on the command line so that PG_PORT may change between runs.
  as_owner "$BIN/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -s -o "-p $PG_PORT" -w -t 60 \
    || { tail -n 20 "$PG_LOG" >&2 || true; die "PostgreSQL did not start, see $PG_LOG"; }
  wait_until 30 "$PG_LOG" "PostgreSQL to accept connections" \
    "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"
  psql_admin -d postgres <<SQL
SELECT 'CREATE ROLE $DB_USER LOGIN SUPERUSER PASSWORD ''$DB_PASS'''
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') \gexec
SELECT 'CREATE DATABASE $DB_NAME OWNER $DB_USER'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB_NAME') \gexec
SQL
  log "ready: $(url)"
}

stop() {
  if ! running; then log "not running"; return 0; fi
  log "stopping"
  as_owner "$BIN/pg_ctl" stop -D "$PG_DATA" -m fast -s -w -t 60 || die "pg_ctl stop failed, see $PG_LOG"
}

status() {
  if running; then echo "postgres: running on 127.0.0.1:$PG_PORT (data $PG_DATA, log $PG_LOG)"
  else echo "postgres: stopped"; return 1; fi
}

url() { printf 'postgresql://%s:%s@127.0.0.1:%s/%s\n' "$DB_USER" "$DB_PASS" "$PG_PORT" "$DB_NAME"; }

case "${1:-}" in
  url) url; exit 0 ;;
  start) BIN=$(pg_bindir install); start ;;
  stop | status)
    if BIN=$(pg_bindir); then "$1"; else [[ $1 == stop ]] || { echo "postgres: not installed"; exit 1; }; fi ;;
  *) echo "usage: $0 start|stop|status|url" >&2; exit 2 ;;
esac
