#!/usr/bin/env bash
# Build promtool into $IPLEDGER_CACHE/prometheus/bin/promtool from the Go module proxy, at the
# version pinned by compose/prometheus/go.mod as a `tool` dependency (github.com/prometheus/
# prometheus v0.316.0, i.e. Prometheus 3.16.0) and verified by the committed go.sum.
# tests/integration/test_alert_rules.py runs it (`promtool check rules`, `promtool test rules`
# on compose/prometheus/alerts.yaml and alerts_test.yaml). Called by `make services`; safe to
# run again: when the binary is newer than go.mod, go.sum and this script it exits at once,
# without Go.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${IPLEDGER_CACHE:-$root/.cache}"
bin_dir="$cache/prometheus/bin"
package="github.com/prometheus/prometheus/cmd/promtool"

binary_is_current() {
    local input
    for input in "$here/go.mod" "$here/go.sum" "${BASH_SOURCE[0]}"; do
        [[ -x "$bin_dir/promtool" && "$bin_dir/promtool" -nt "$input" ]] || return 1
    done
}

if binary_is_current; then
    exit 0
fi

if ! command -v go >/dev/null; then
    echo "build.sh: 'go' is not on PATH; building promtool needs Go 1.26+" >&2
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
# Stamp the version as Prometheus' own build does (promu), so `promtool --version` names the
# release built: module v0.316.0 is Prometheus 3.16.0.
module_version="$(go list -m -f '{{.Version}}' github.com/prometheus/prometheus)"
minor="${module_version#v0.}"
minor="${minor%%.*}"
patch="${module_version##*.}"
version="3.$((10#${minor} - 300)).${patch}"
ldflags="-s -w -X github.com/prometheus/common/version.Version=$version"
ldflags+=" -X github.com/prometheus/common/version.Branch=$module_version"
# Built next to the target and renamed, so an interrupted build never leaves a half-written
# binary that the freshness check above would accept.
tmp="$(mktemp "$bin_dir/.promtool.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
go build -ldflags="$ldflags" -o "$tmp" "$package"
chmod 0755 "$tmp"
mv -f "$tmp" "$bin_dir/promtool"
trap - EXIT
echo "build.sh: promtool $version ($package@$module_version) built into $bin_dir" \
    "in $((SECONDS - started))s"
