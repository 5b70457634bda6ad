#!/usr/bin/env bash
# Generates the Python code of protos/ into libs/zaptrix/zaptrix/v1 (protobuf, grpc, mypy stubs).
# --check: generate into a temporary folder and fail when the committed code differs (stale).
set -euo pipefail
cd "$(dirname "$0")/.."
out=libs/zaptrix
if [[ "${1:-}" == "--check" ]]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out/zaptrix/v1"
python -m grpc_tools.protoc -I protos \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" \
  protos/zaptrix/v1/*.proto
if [[ "${1:-}" == "--check" ]]; then
  for f in "$out"/zaptrix/v1/*; do
    name=$(basename "$f")
    if ! cmp -s "$f" "libs/zaptrix/zaptrix/v1/$name"; then
      echo "stale generated code: libs/zaptrix/zaptrix/v1/$name differs from protos/ — run 'make protos'" >&2
      exit 1
    fi
  done
  extra=$(comm -13 <(ls "$out/zaptrix/v1" | sort) <(ls libs/zaptrix/zaptrix/v1 | grep -v '^__' | sort) || true)
  if [[ -n "$extra" ]]; then echo "generated files without a proto: $extra" >&2; exit 1; fi
  echo "generated code is up to date"
fi
