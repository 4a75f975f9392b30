#!/usr/bin/env bash
# Build the test Kubernetes control plane and fetch Cilium's CRDs into $IPLEDGER_CACHE/kube/:
#   bin/kube-apiserver   k8s.io/kubernetes/cmd/kube-apiserver, Kubernetes v1.36.3
#   bin/kube-controller-manager  k8s.io/kubernetes/cmd/kube-controller-manager, the same version
#                        (only its garbage collector runs, in one test)
#   bin/etcd             go.etcd.io/etcd/server/v3
#   crds/cilium-VERSION/ciliumnodes.yaml
#                        Cilium's CiliumNode CRD, unmodified from Cilium's Go module, for every
#                        version in cilium-crds.txt, each checked against the sha256 there
# The versions are pinned by compose/kube/go.mod (k8s.io/kubernetes plus a replace for each of its
# staging modules, which its own go.mod points at ./staging and a requiring module cannot follow)
# and verified by the committed go.sum. tests/harness/kube.py runs the binaries and installs the
# CRDs. Called by `make services`; safe to run again: when the stamp file records the hash of this
# script, go.mod and go.sum, both binaries exist and every cached CRD has its pinned sha256, it
# exits at once without Go. A cold build (empty module and build caches) takes about six minutes
# on two cores.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
script="$here/$(basename "${BASH_SOURCE[0]}")"
root="$(cd "$here/../.." && pwd)"
cache="${IPLEDGER_CACHE:-$root/.cache}"
kube_dir="$cache/kube"
bin_dir="$kube_dir/bin"
crd_dir="$kube_dir/crds"
stamp="$kube_dir/inputs.sha256"
crd_list="$here/cilium-crds.txt"
cilium_module="github.com/cilium/cilium"
crd_in_module="pkg/k8s/apis/cilium.io/client/crds/v2/ciliumnodes.yaml"

# binary name -> Go package (a package main inside a module go.mod requires).
declare -A packages=(
    [kube-apiserver]="k8s.io/kubernetes/cmd/kube-apiserver"
    # Only for the garbage-collection test of ownerReferences (tests/integration/
    # test_nodes_and_watch.py runs its garbage-collector controller alone); most of it is
    # compiled for kube-apiserver already.
    [kube-controller-manager]="k8s.io/kubernetes/cmd/kube-controller-manager"
    [etcd]="go.etcd.io/etcd/server/v3"
)
# Built by earlier versions of this script and no longer used by the harness.
obsolete=(apiextensions-apiserver)

# "VERSION SHA256" per line, comments and blank lines skipped.
crd_entries() {
    grep -Ev '^[[:space:]]*(#|$)' "$crd_list"
}

# The binaries are keyed by what they are built from: this script, go.mod and go.sum.
inputs_hash() {
    cat "$script" "$here/go.mod" "$here/go.sum" | sha256sum | cut -d' ' -f1
}

binaries_current() {
    local name
    for name in "${!packages[@]}"; do
        [[ -x "$bin_dir/$name" ]] || return 1
    done
    [[ -f "$stamp" && "$(cat "$stamp")" == "$(inputs_hash)" ]]
}

# A CRD is current when the cached copy has the pinned sha256.
crd_current() {
    local version="$1" sum="$2" file="$crd_dir/cilium-$1/ciliumnodes.yaml"
    [[ -f "$file" && "$(sha256sum "$file" | cut -d' ' -f1)" == "$sum" ]]
}

crds_current() {
    local version sum
    while read -r version sum; do
        crd_current "$version" "$sum" || return 1
    done < <(crd_entries)
}

if binaries_current && crds_current; then
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
# module on each build anyway (Cilium's modules, fetched outside this module, are checked against
# the checksum database by `go mod download` and their CRD against cilium-crds.txt).
export GOPATH="$cache/go"
export GOMODCACHE="$cache/go/mod"
export GOCACHE="$cache/go/build"
export GOFLAGS="-mod=readonly -modcacherw -buildvcs=false -trimpath"

mkdir -p "$bin_dir" "$crd_dir"
started=$SECONDS

# Cilium's CRDs first: a download of seconds each, and a checksum mismatch should fail before the
# long build. Run outside this module, so that `go mod download` leaves go.mod and go.sum alone.
while read -r version sum; do
    crd_current "$version" "$sum" && continue
    module_dir="$(cd "$crd_dir" && GOFLAGS=-modcacherw go mod download -json \
        "$cilium_module@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    source="$module_dir/$crd_in_module"
    if [[ ! -f "$source" ]]; then
        echo "build.sh: $cilium_module@$version has no $crd_in_module" >&2
        exit 1
    fi
    actual="$(sha256sum "$source" | cut -d' ' -f1)"
    if [[ "$actual" != "$sum" ]]; then
        echo "build.sh: $cilium_module@$version $crd_in_module has sha256 $actual," \
            "cilium-crds.txt pins $sum" >&2
        exit 1
    fi
    mkdir -p "$crd_dir/cilium-$version"
    install -m 0644 "$source" "$crd_dir/cilium-$version/.ciliumnodes.yaml.tmp"
    mv -f "$crd_dir/cilium-$version/.ciliumnodes.yaml.tmp" \
        "$crd_dir/cilium-$version/ciliumnodes.yaml"
done < <(crd_entries)

if binaries_current; then
    echo "build.sh: Cilium CRDs fetched into $crd_dir in $((SECONDS - started))s"
    exit 0
fi
rm -f "$stamp"

cd "$here"
# Stamp the binaries like Kubernetes' own build does (hack/lib/version.sh), so `/version` says
# v1.36.x instead of v0.0.0-master and clients that gate features or warn on version skew (kubectl
# does) behave as against a real cluster.
k8s_version="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"
k8s_minor="${k8s_version#v1.}"
k8s_minor="${k8s_minor%%.*}"
declare -A ldflags=(
    [kube-apiserver]="-s -w"
    [kube-controller-manager]="-s -w"
    [etcd]="-s -w"
)
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    for name in kube-apiserver kube-controller-manager; do
        ldflags[$name]+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1"
        ldflags[$name]+=" -X $pkg.gitMinor=$k8s_minor -X $pkg.gitTreeState=clean"
    done
done
for name in "${!packages[@]}"; do
    # Built next to the target and renamed, so an interrupted build never leaves a half-written
    # binary behind under the final name.
    tmp="$(mktemp "$bin_dir/.$name.XXXXXX")"
    trap 'rm -f "$tmp"' EXIT
    go build -ldflags="${ldflags[$name]}" -o "$tmp" "${packages[$name]}"
    chmod 0755 "$tmp"
    mv -f "$tmp" "$bin_dir/$name"
    trap - EXIT
done
for name in "${obsolete[@]}"; do
    rm -f "$bin_dir/$name"
done
inputs_hash >"$stamp"
echo "build.sh: kube-apiserver and kube-controller-manager $k8s_version, etcd and" \
    "$(crd_entries | wc -l) Cilium CRD(s)" \
    "ready in $kube_dir in $((SECONDS - started))s"
