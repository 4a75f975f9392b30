#!/usr/bin/env bash
# Builds the dashboard's static files (service/dashboard/static, or the folder given) from its
# TypeScript sources: `make dashboard`, and tests/unit/test_dashboard_build.py, which builds
# into a scratch folder and compares. The tools are the exact versions of
# service/dashboard/package-lock.json, installed by `npm ci` from the npm registry into
# $IPLEDGER_CACHE/dashboard-npm (reinstalled when the lock changes), never into the tree.
# The build is reproducible: esbuild's output depends only on its version and the sources.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
front="$root/service/dashboard"
out="${1:-$front/static}"
cache="${IPLEDGER_CACHE:-$root/.cache}"
tools="$cache/dashboard-npm"

command -v npm >/dev/null 2>&1 || { echo "build.sh: npm (Node.js) is not installed" >&2; exit 1; }
mkdir -p "$tools" "$out"
if ! cmp -s "$front/package-lock.json" "$tools/package-lock.json" || [ ! -x "$tools/node_modules/.bin/esbuild" ]; then
    cp "$front/package.json" "$front/package-lock.json" "$tools/"
    (cd "$tools" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
fi

# Type-check first (esbuild only strips the types), then bundle the modules into one file.
"$tools/node_modules/.bin/tsc" -p "$front/tsconfig.json"
"$tools/node_modules/.bin/esbuild" "$front/src/main.ts" --bundle --format=esm --target=es2020 \
    --charset=utf8 --legal-comments=none --log-level=warning --outfile="$out/app.js"
cp "$front/src/index.html" "$front/src/style.css" "$out/"
