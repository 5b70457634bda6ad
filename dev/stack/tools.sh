#!/usr/bin/env bash
# Prints the path of a pinned tool binary, building it with Go into $ZAPTRIX_CACHE/bin once.
# Usage: tools.sh helm|kubeconform|promtool
set -euo pipefail
STACK_NAME=tools
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HELM_VERSION=v3.22.0
KUBECONFORM_VERSION=v0.8.0
# Prometheus 3.16.0 (Go module v0.316.0 needs Go >= 1.26.7); promtool checks and unit-tests the chart's alert rules.
PROMETHEUS_VERSION=v0.316.0

case "${1:-}" in
  helm)
    GO_BUILD_ABOUT="2-4 minutes on 2 cores" GO_LDFLAGS="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
      go_build_tool helm helm.sh/helm/v3 "$HELM_VERSION" helm.sh/helm/v3/cmd/helm ;;
  kubeconform)
    GO_BUILD_ABOUT="about a minute" GO_LDFLAGS="-X main.version=$KUBECONFORM_VERSION" \
      go_build_tool kubeconform github.com/yannh/kubeconform "$KUBECONFORM_VERSION" \
      github.com/yannh/kubeconform/cmd/kubeconform ;;
  promtool)
    # A large build (every service discovery package, ~10 CPU-minutes): niced, and one package at a time
    # outside CI, to spare a box others work on (24 min wall on 2 shared cores; CI has the machine to itself).
    renice -n 19 -p $$ >/dev/null
    GO_BUILD_ABOUT="10-25 minutes on 2 shared cores" GO_BUILD_FLAGS=$([[ ${CI:-} == true ]] || echo "-p 1") GO_LDFLAGS="-X github.com/prometheus/common/version.Version=3.16.0" \
      go_build_tool promtool github.com/prometheus/prometheus "$PROMETHEUS_VERSION" \
      github.com/prometheus/prometheus/cmd/promtool ;;
  *) echo "usage: $0 helm|kubeconform|promtool" >&2; exit 2 ;;
esac
