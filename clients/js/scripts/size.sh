#!/bin/sh
# Minified + gzipped size of each entry of the package, beside phoenix.js measured the same way:
#   esbuild <entry> --bundle --minify --format=esm | gzip -9 | wc -c
# Peer dependencies are not part of an entry (the application has them anyway); the Socket.IO
# entry is also shown with socket.io-client bundled, for scale. Run after `npm run build`.
set -eu
cd "$(dirname "$0")/.."
[ -f dist/index.js ] || { echo "dist/ is missing: run npm run build first" >&2; exit 1; }
esbuild=node_modules/.bin/esbuild

size() { # label, then esbuild arguments
    label=$1
    shift
    bytes=$("$esbuild" "$@" --bundle --minify --format=esm --log-level=error | gzip -9 | wc -c)
    printf '%-52s %6d B  %5s KiB\n' "$label" "$bytes" "$(awk "BEGIN { printf \"%.2f\", $bytes / 1024 }")"
}

phoenix=$(node -p "require('./node_modules/phoenix/package.json').version")
sio=$(node -p "require('./node_modules/socket.io-client/package.json').version")
size "occupancy-client (.)" dist/index.js
printf "import { Occupancy } from './dist/index.js';\nimport { OccupancyProvider, useRoom, useWatch } from './dist/react.js';\nexport { Occupancy, OccupancyProvider, useRoom, useWatch };\n" > .size-react.mjs
trap 'rm -f .size-react.mjs' EXIT
size "occupancy-client/react alone (react external)" dist/react.js --external:react
size "occupancy-client + /react (react external)" .size-react.mjs --external:react
size "occupancy-client/socketio (peer dep external)" dist/socketio.js --external:socket.io-client
size "occupancy-client/socketio + socket.io-client $sio" dist/socketio.js
size "socket.io-client $sio alone" node_modules/socket.io-client/build/esm/index.js
size "phoenix $phoenix (phoenix.mjs)" node_modules/phoenix/priv/static/phoenix.mjs
