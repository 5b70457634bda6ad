#!/usr/bin/env bash
# Prints the path of a uv binary of exactly UV_VERSION, installing it into
# $ZAPTRIX_CACHE/tools/uv-<version> with pip if needed.
set -euo pipefail
STACK_NAME=uv
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

UV_VERSION=0.13.9

if existing=$(command -v uv 2>/dev/null) && [[ $("$existing" --version 2>/dev/null) == "uv $UV_VERSION"* ]]; then
  printf '%s\n' "$existing"; exit 0
fi

target="$ZAPTRIX_CACHE/tools/uv-$UV_VERSION"
bin="$target/bin/uv"
[[ -x $bin ]] || lock "uv-$UV_VERSION"
if [[ ! -x $bin ]]; then
  log "installing uv==$UV_VERSION into $target"
  rm -rf "$target.tmp"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$target.tmp" "uv==$UV_VERSION" >&2 || die "pip install uv==$UV_VERSION failed"
  rm -rf "$target" && mv "$target.tmp" "$target"
fi
[[ $("$bin" --version) == "uv $UV_VERSION"* ]] || die "$bin is not uv $UV_VERSION"
printf '%s\n' "$bin"
