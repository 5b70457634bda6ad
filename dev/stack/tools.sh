#!/usr/bin/env bash
# Prints the path of a pinned tool binary, building it with Go into $ZAPTRIX_CACHE/bin once.
# Usage: tools.sh helm|kubeconform
set -euo pipefail
STACK_NAME=tools
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HELM_VERSION=v3.22.0
KUBECONFORM_VERSION=v0.8.0

case "${1:-}" in
  helm)
    GO_LDFLAGS="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
      go_build_tool helm helm.sh/helm/v3 "$HELM_VERSION" helm.sh/helm/v3/cmd/helm ;;
  kubeconform)
    GO_LDFLAGS="-X main.version=$KUBECONFORM_VERSION" \
      go_build_tool kubeconform github.com/yannh/kubeconform "$KUBECONFORM_VERSION" \
      github.com/yannh/kubeconform/cmd/kubeconform ;;
  *) echo "usage: $0 helm|kubeconform" >&2; exit 2 ;;
esac
