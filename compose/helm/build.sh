#!/usr/bin/env bash
# Build helm into $IPLEDGER_CACHE/helm/bin/helm from the Go module proxy, at the version pinned by
# compose/helm/go.mod as a `tool` dependency and verified by the committed go.sum; and take the
# prometheus-operator's ServiceMonitor CRD, unmodified, from its Go module (pinned below by
# version and sha256) into $IPLEDGER_CACHE/helm/crds/, so that the chart's ServiceMonitor can be
# validated by the test API server too. tests/integration/test_helm_chart.py uses both.
# Called by `make services`; safe to run again: when the binary is newer than go.mod, go.sum and
# this script, and the CRD is there with its sha256, it exits at once, without Go.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Absolute: the freshness check runs again after the `cd` below.
script="$here/$(basename "${BASH_SOURCE[0]}")"
root="$(cd "$here/../.." && pwd)"
cache="${IPLEDGER_CACHE:-$root/.cache}"
bin_dir="$cache/helm/bin"
package="helm.sh/helm/v4/cmd/helm"
crd_dir="$cache/helm/crds"
crd_module="github.com/prometheus-operator/prometheus-operator@v0.85.0"
crd_path="example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"
crd_sha256="1dae27b7189b5ce7b9ab764656c18b4c75a45cde1e6f3af6a5e84c4317628919"
crd_file="$crd_dir/servicemonitors.monitoring.coreos.com.yaml"

binary_is_current() {
    local input
    for input in "$here/go.mod" "$here/go.sum" "$script"; do
        [[ -x "$bin_dir/helm" && "$bin_dir/helm" -nt "$input" ]] || return 1
    done
}

crd_is_current() {
    [[ -f "$crd_file" ]] && echo "$crd_sha256  $crd_file" | sha256sum --check --status
}

if binary_is_current && crd_is_current; then
    exit 0
fi

if ! command -v go >/dev/null; then
    echo "build.sh: 'go' is not on PATH; building helm needs Go 1.26+" >&2
    exit 1
fi

# The same module and build caches as compose/kube/build.sh: shared modules download once, and
# `make clean` removes everything (-modcacherw keeps the module cache deletable by rm -rf).
export GOPATH="$cache/go"
export GOMODCACHE="$cache/go/mod"
export GOCACHE="$cache/go/build"
export GOFLAGS="-mod=readonly -modcacherw -buildvcs=false -trimpath"

mkdir -p "$bin_dir" "$crd_dir"
cd "$here"
started=$SECONDS

if ! crd_is_current; then
    # `go mod download` verifies the module against the checksum database; the sha256 pins the
    # one file taken from it.
    module_dir="$(go mod download -json "$crd_module" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    if ! echo "$crd_sha256  $module_dir/$crd_path" | sha256sum --check --status; then
        echo "build.sh: $crd_module $crd_path does not have the pinned sha256" >&2
        exit 1
    fi
    cp "$module_dir/$crd_path" "$crd_file.tmp"
    mv -f "$crd_file.tmp" "$crd_file"
    echo "build.sh: ServiceMonitor CRD of $crd_module in $crd_dir"
fi
if binary_is_current; then
    exit 0
fi
# Stamp the version as helm's own Makefile does, so `helm version` names the release built.
version="$(go list -m -f '{{.Version}}' helm.sh/helm/v4)"
ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$version"
# Built next to the target and renamed, so an interrupted build never leaves a half-written
# binary that the freshness check above would accept.
tmp="$(mktemp "$bin_dir/.helm.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
go build -ldflags="$ldflags" -o "$tmp" "$package"
chmod 0755 "$tmp"
mv -f "$tmp" "$bin_dir/helm"
trap - EXIT
echo "build.sh: helm $version built into $bin_dir in $((SECONDS - started))s"
