#!/usr/bin/env bash
# Rebuilds the article's Node server in a temporary folder OUTSIDE the repository:
# copies index.js, socket.js and package.json there and runs `npm install express cors socket.io`.
# Prints the folder; start it with `PORT=9300 node <folder>/index.js`.
# Usage: loadgen/article-server/setup.sh [DIR]   (default: a new mktemp -d)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:-$(mktemp -d /tmp/article-server.XXXXXX)}"
mkdir -p "$dir"
cp "$here/index.js" "$here/socket.js" "$here/package.json" "$dir/"
if [ ! -d "$dir/node_modules/socket.io" ]; then
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error express cors socket.io >&2)
fi
echo "$dir"
