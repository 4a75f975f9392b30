#!/usr/bin/env bash
# Build helm into $IPLEDGER_CACHE/helm/bin/helm from the Go module proxy, at the version pinned by
# compose/helm/go.mod as a `tool` dependency and verified by the committed go.sum.
# tests/integration/test_helm_chart.py runs it (`helm lint`, `helm template`). Called by
# `make services`; safe to run again: when the binary is newer than go.mod, go.sum and this
# script it exits at once, without Go.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${IPLEDGER_CACHE:-$root/.cache}"
bin_dir="$cache/helm/bin"
package="helm.sh/helm/v4/cmd/helm"

binary_is_current() {
    local input
    for input in "$here/go.mod" "$here/go.sum" "${BASH_SOURCE[0]}"; do
        [[ -x "$bin_dir/helm" && "$bin_dir/helm" -nt "$input" ]] || return 1
    done
}

if binary_is_current; then
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

mkdir -p "$bin_dir"
cd "$here"
started=$SECONDS
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
