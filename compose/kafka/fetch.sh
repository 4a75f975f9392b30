#!/usr/bin/env bash
# Resolve the Apache Kafka broker jars (compose/kafka/pom.xml) from Maven Central into the cache
# and write their classpath to $IPLEDGER_CACHE/kafka/classpath.txt, which tests/harness/kafka.py
# reads. Called by `make services`; safe to run again: when the classpath is newer than the pom
# and every jar on it is still present it exits at once, without starting Maven.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${IPLEDGER_CACHE:-$root/.cache}"
out_dir="$cache/kafka"
classpath="$out_dir/classpath.txt"
pom="$here/pom.xml"
# Pinned so the output does not depend on whichever plugin version the local Maven defaults to.
dependency_plugin="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

classpath_is_current() {
    [[ -s "$classpath" && "$classpath" -nt "$pom" ]] || return 1
    local jar jars
    IFS=: read -r -a jars <"$classpath"
    for jar in "${jars[@]}"; do
        [[ -f "$jar" ]] || return 1
    done
}

if classpath_is_current; then
    exit 0
fi

for tool in java mvn; do
    if ! command -v "$tool" >/dev/null; then
        echo "fetch.sh: '$tool' is not on PATH; the Kafka broker needs Java 17+ and Maven" >&2
        exit 1
    fi
done

mkdir -p "$out_dir"
# Written next to the target and renamed, so an interrupted run never leaves a half classpath
# that the freshness check above would accept.
tmp="$(mktemp "$out_dir/classpath.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
echo "fetch.sh: resolving the Kafka broker jars with Maven into $cache/m2"
# Output is kept for failures only: even with -q -B, Debian's Maven 3.8 writes stray ANSI resets.
if ! output="$(mvn -q -B -Dstyle.color=never -f "$pom" \
    -Dmaven.repo.local="$cache/m2" \
    "$dependency_plugin:build-classpath" \
    -Dmdep.includeScope=runtime \
    -Dmdep.outputFile="$tmp" 2>&1)"; then
    printf '%s\n' "$output" >&2
    echo "fetch.sh: Maven could not resolve compose/kafka/pom.xml (see above)" >&2
    exit 1
fi
if [[ ! -s "$tmp" ]]; then
    echo "fetch.sh: Maven produced an empty classpath" >&2
    exit 1
fi
mv "$tmp" "$classpath"
trap - EXIT
echo "fetch.sh: Kafka classpath written to $classpath"
