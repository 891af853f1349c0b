#!/usr/bin/env bash
# CI of the npm package occupancy-client: install (committed lockfile), typecheck, build, the
# tests against the real example servers, what `npm pack` would ship, and the sizes.
#
# The tests start the Rust examples and need them built first (`cargo test --all-features` or
# `cargo build --example documents --example socketio_documents` does it):
#   ${CARGO_TARGET_DIR:-<repo>/target}/debug/examples/documents
#   ${CARGO_TARGET_DIR:-<repo>/target}/debug/examples/socketio_documents
# (a relative CARGO_TARGET_DIR is taken from the repository root; OCCUPANCY_EXAMPLES_DIR
# overrides the whole directory). Needs node >= 20, npm and gzip.
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n--- clients/js: %s (%s)\n' "$*" "$(date +%T)"; }

examples=${OCCUPANCY_EXAMPLES_DIR:-}
if [ -z "$examples" ]; then
    target=${CARGO_TARGET_DIR:-target}
    case $target in /*) ;; *) target=../../$target ;; esac
    examples=$target/debug/examples
fi
for bin in documents socketio_documents; do
    if [ ! -x "$examples/$bin" ]; then
        echo "missing $examples/$bin: run cargo build --example documents --example socketio_documents first" >&2
        exit 1
    fi
done

step "version: the crates' (workspace.package in the root Cargo.toml)"
crate=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' ../../Cargo.toml)
package=$(node -p "require('./package.json').version")
if [ "$crate" != "$package" ]; then
    echo "package.json version $package is not the crates' $crate" >&2
    exit 1
fi
echo "$package"

step "npm ci"
npm ci --no-audit --no-fund

step "typecheck (tsc --noEmit, strict)"
npm run typecheck

step "build (tsc → dist/)"
npm run build

step "examples/static/occupancy.js is the build of src/index.ts"
if ! cmp -s dist/index.js ../../examples/static/occupancy.js; then
    echo "examples/static/occupancy.js is not dist/index.js: run npm run build:example in clients/js and commit it" >&2
    exit 1
fi

step "test (the published types, then node:test against documents and socketio_documents)"
npm test

step "the hook tests again on React 18 (test/react18: its own lockfile; React 19 above)"
npm ci --prefix test/react18 --no-audit --no-fund
EXPECT_REACT=18 node --import ./test/react18.mjs --test --test-concurrency=1 --test-reporter=spec \
    test/react.test.mjs

step "pack --dry-run: only dist/, README, licences"
node scripts/check-pack.mjs

step "size (minified + gzipped, beside phoenix.js)"
npm run size
