#!/usr/bin/env bash
# Build the two binaries of the test Kubernetes API server into $IPLEDGER_CACHE/kube/bin/:
# apiextensions-apiserver (k8s.io/apiextensions-apiserver) and etcd (go.etcd.io/etcd/server/v3),
# at the versions pinned by compose/kube/go.mod as `tool` dependencies and verified by the
# committed go.sum. tests/harness/kube.py runs them. Called by `make services`; safe to run again:
# when both binaries are newer than go.mod, go.sum and this script it exits at once, without Go.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${IPLEDGER_CACHE:-$root/.cache}"
bin_dir="$cache/kube/bin"

# binary name -> Go package (a package main inside a module go.mod requires).
declare -A packages=(
    [apiextensions-apiserver]="k8s.io/apiextensions-apiserver"
    [etcd]="go.etcd.io/etcd/server/v3"
)

binaries_are_current() {
    local name input
    for name in "${!packages[@]}"; do
        for input in "$here/go.mod" "$here/go.sum" "${BASH_SOURCE[0]}"; do
            [[ -x "$bin_dir/$name" && "$bin_dir/$name" -nt "$input" ]] || return 1
        done
    done
}

if binaries_are_current; then
    exit 0
fi

if ! command -v go >/dev/null; then
    echo "build.sh: 'go' is not on PATH; building the test API server needs Go 1.26+" >&2
    exit 1
fi

# Everything Go downloads, compiles or records (GOPATH holds the checksum database's state) stays
# in the project cache, so `make clean` removes it and a warm cache makes a rebuild take seconds.
# -modcacherw keeps the module cache deletable by rm -rf for non-root users. GOSUMDB is left at
# its default: the proxy serves sum.golang.org itself, and the committed go.sum verifies every
# module on each build anyway.
export GOPATH="$cache/go"
export GOMODCACHE="$cache/go/mod"
export GOCACHE="$cache/go/build"
export GOFLAGS="-mod=readonly -modcacherw -buildvcs=false -trimpath"

mkdir -p "$bin_dir"
cd "$here"
started=$SECONDS
# Stamp the apiserver like Kubernetes' own build does (hack/lib/version.sh), so `/version` says
# v1.36.x instead of v0.0.0-master and clients that gate features on the server version behave as
# against a real cluster. apiextensions-apiserver v0.N.P is released with Kubernetes v1.N.P.
k8s_module_version="$(go list -m -f '{{.Version}}' k8s.io/apiextensions-apiserver)"
k8s_version="v1.${k8s_module_version#v0.}"
k8s_minor="${k8s_version#v1.}"
k8s_minor="${k8s_minor%%.*}"
declare -A ldflags=(
    [apiextensions-apiserver]="-s -w"
    [etcd]="-s -w"
)
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags[apiextensions-apiserver]+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1"
    ldflags[apiextensions-apiserver]+=" -X $pkg.gitMinor=$k8s_minor -X $pkg.gitTreeState=clean"
done
for name in "${!packages[@]}"; do
    # Built next to the target and renamed, so an interrupted build never leaves a half-written
    # binary that the freshness check above would accept.
    tmp="$(mktemp "$bin_dir/.$name.XXXXXX")"
    trap 'rm -f "$tmp"' EXIT
    go build -ldflags="${ldflags[$name]}" -o "$tmp" "${packages[$name]}"
    chmod 0755 "$tmp"
    mv -f "$tmp" "$bin_dir/$name"
    trap - EXIT
done
echo "build.sh: apiextensions-apiserver and etcd built into $bin_dir in $((SECONDS - started))s"
