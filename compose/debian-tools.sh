#!/usr/bin/env bash
# Command-line tools some tests run as users would, from Debian's archive (no other registry
# ships them): kcat (the kcat producer example of docs/events.md), docker-compose (reads
# compose/docker-compose.yaml offline, with no daemon) and chromium (the dashboard's browser
# tests drive it headless through Playwright, whose own browser download cannot be reached).
# Called by `make services`. Installs only what is missing, and only as root with apt-get;
# otherwise says what to install and leaves it to the tests, which fail under CI=true when a
# tool is missing.
set -euo pipefail

declare -A packages=([kcat]=kcat [docker-compose]=docker-compose [chromium]=chromium)
missing=()
for tool in "${!packages[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${packages[$tool]}")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "debian-tools.sh: not installed: ${missing[*]} (as root: apt-get install ${missing[*]});" \
        "the tests that run them fail under CI=true and are skipped otherwise" >&2
    exit 0
fi
echo "debian-tools.sh: installing ${missing[*]} from Debian" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
