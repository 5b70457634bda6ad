#!/usr/bin/env bash
# `make k8s-test`: the chart installed with the real helm client into a throwaway Kubernetes control
# plane on loopback (etcd, kube-apiserver with Pod Security admission, kube-controller-manager,
# kube-scheduler, kwok fake nodes), and `skaffold render` of skaffold.yaml. The binaries are built from the Go module proxy once and cached in
# $ZAPTRIX_CACHE/bin (the first run builds for a long while on 2 cores: see docs/deploy.md).
# Prints `N passed, N failed`; exits non-zero on a failure. K8S_TEST_KEEP=1 keeps the logs/data dir.
set -euo pipefail
cd "$(dirname "$0")/../.."
export ZAPTRIX_CACHE="${ZAPTRIX_CACHE:-$HOME/.cache/zaptrix}"
export UV_CACHE_DIR="${UV_CACHE_DIR:-$ZAPTRIX_CACHE/uv}" UV_PYTHON_DOWNLOADS=never
# Builds share the machine: one compile at a time, low priority.
export GOFLAGS="${GOFLAGS:--p=1}" GOMAXPROCS="${GOMAXPROCS:-1}"

start=$SECONDS
tool() { nice -n 19 dev/k8s/tools.sh "$@"; }
K8S_TOOL_ETCD=$(tool etcd)
K8S_TOOL_KUBE_APISERVER=$(tool kube-apiserver)
K8S_TOOL_KUBE_CONTROLLER_MANAGER=$(tool kube-controller-manager)
K8S_TOOL_KUBE_SCHEDULER=$(tool kube-scheduler)
K8S_TOOL_KUBECTL=$(tool kubectl)
K8S_TOOL_KWOK=$(tool kwok)
K8S_KWOK_STAGES=$(tool kwok-stages)
K8S_PROMETHEUS_CRDS=$(tool prometheus-crds)
K8S_TOOL_HELM=$(nice -n 19 dev/stack/tools.sh helm)
K8S_TOOL_SKAFFOLD=$(tool skaffold)
export K8S_TOOL_SKAFFOLD K8S_TOOL_ETCD K8S_TOOL_KUBE_APISERVER K8S_TOOL_KUBE_CONTROLLER_MANAGER K8S_TOOL_KUBE_SCHEDULER \
  K8S_TOOL_KUBECTL K8S_TOOL_KWOK K8S_KWOK_STAGES K8S_PROMETHEUS_CRDS K8S_TOOL_HELM
echo "[k8s-test] tools ready after $((SECONDS - start))s"
# The Go runtime of the control plane: the defaults again (the build limits above are for go build).
unset GOFLAGS GOMAXPROCS
uv=$(dev/stack/uv.sh)
"$uv" sync --frozen --quiet
rc=0
"$uv" run --frozen --no-sync python dev/k8s/harness.py || rc=$?
echo "[k8s-test] finished in $((SECONDS - start))s"
exit "$rc"
