#!/usr/bin/env bash
# CI of the React example: install (committed lockfile), build it (production, and the
# development build the browser test uses: StrictMode mounts twice only in development), then
# drive it in headless Chromium against the documents example (e2e.mjs).
#
# Needs, built first: clients/js/dist (clients/js/ci.sh or `npm run build` there: the example
# depends on the package as file:../../clients/js), and the documents example binary in
# ${CARGO_TARGET_DIR:-<repo>/target}/debug/examples/documents. Needs /usr/bin/chromium (or
# CHROMIUM=path).
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n--- examples/react-documents: %s (%s)\n' "$*" "$(date +%T)"; }

[ -f ../../clients/js/dist/react.js ] || {
    echo "clients/js/dist is missing: run clients/js/ci.sh (or npm run build in clients/js) first" >&2
    exit 1
}

step "npm ci"
npm ci --no-audit --no-fund

step "vite build (production, and development for the browser test)"
npm run build
npm run build:dev

step "headless Chromium against the documents example"
node e2e.mjs
