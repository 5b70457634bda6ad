#!/usr/bin/env bash
# Headless Chromium and its chromedriver from Debian's packages, for the browser tests of the connector
# settings page (tests marked `browser`). Nothing is downloaded outside apt: Selenium Manager is disabled
# in the tests and pointed at the driver printed here.
# Usage: chromium.sh install|paths   (install: apt-get install chromium chromium-driver when missing, then
# print "<chromium> <chromedriver>"; paths: print them or fail)
set -euo pipefail
STACK_NAME=chromium
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

find_paths() {
  local browser driver
  browser=$(command -v chromium || true)
  driver=$(command -v chromedriver || true)
  [[ -n $browser && -n $driver ]] || return 1
  printf '%s %s\n' "$browser" "$driver"
}

install() {
  find_paths && return 0
  [[ $EUID -eq 0 ]] || die "chromium missing; run: sudo apt-get install -y chromium chromium-driver"
  log "installing chromium and chromium-driver (apt-get, about 1-2 minutes)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >&2 \
    || die "apt-get install chromium chromium-driver failed"
  find_paths || die "chromium installed but chromium/chromedriver not on PATH"
}

case "${1:-paths}" in
  install) install ;;
  paths) find_paths || die "chromium/chromedriver not installed: dev/stack/chromium.sh install" ;;
  *) echo "usage: $0 install|paths" >&2; exit 2 ;;
esac
