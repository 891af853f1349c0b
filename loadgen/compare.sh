#!/usr/bin/env bash
# The comparison of issue 7, in one run on one machine: the axum example (protocol v1), the
# socketio example (the article's events) and the article's own Node server, each driven by
# loadgen with the same scenarios (rooms, crowd, storm); then the markdown table and the
# hand-over-vs-R plot. The storm drops $CLIENTS connections of one room at once: our servers keep
# them for their grace (5 s by default), the article's server has none.
#
#   loadgen/compare.sh                 # from anywhere; about 15-20 minutes on 2 cores
#   REPEAT=1 ROOMS=0,1000 CLIENTS=1001 MAX_IDLE=1000 loadgen/compare.sh   # a quick look
#   SERVERS="socketio article" loadgen/compare.sh    # re-measure some; the table uses all in $OUT
#
# Outputs: $OUT/{axum,socketio,article}.json (default docs/loadgen), $OUT/table.md and
# $SVG (default docs/handover-vs-rooms.svg). Servers run on CPU 0 and loadgen on CPU 1
# (taskset) when there are at least 2 CPUs. The article's server is rebuilt in a temporary
# folder outside the repository (loadgen/article-server/setup.sh) and removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

OUT=${OUT:-docs/loadgen}
SVG=${SVG:-docs/handover-vs-rooms.svg}
REPEAT=${REPEAT:-3}
ROOMS=${ROOMS:-0,1000,10000,50000}
MAX_IDLE=${MAX_IDLE:-10000}
CLIENTS=${CLIENTS:-10001}
ITERATIONS=${ITERATIONS:-1000}
PORT_AXUM=${PORT_AXUM:-3300}
PORT_SIO=${PORT_SIO:-9300}
PORT_ARTICLE=${PORT_ARTICLE:-9400}
# Which servers to (re)measure; the report uses every result in $OUT.
SERVERS=${SERVERS:-axum socketio article}
want() { [[ " $SERVERS " == *" $1 "* ]]; }

# Every connection is a file descriptor, in loadgen and in the server.
ulimit -n "$(ulimit -Hn)"
echo "open-file limit: $(ulimit -n)" >&2

for p in "$PORT_AXUM" "$PORT_SIO" "$PORT_ARTICLE"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "port $p is in use; set PORT_AXUM/PORT_SIO/PORT_ARTICLE" >&2
        exit 1
    fi
done

echo "== building (release)" >&2
cargo build --release -p loadgen
cargo build --release -p occupancy --features axum,socketio \
    --example documents --example socketio_documents

echo "== the article's server (outside the repository)" >&2
article_dir=$(mktemp -d /tmp/article-server.XXXXXX)
trap 'rm -rf "$article_dir"' EXIT
"$root/loadgen/article-server/setup.sh" "$article_dir" >/dev/null
node_version=$(node --version)
sio_version=$(node -p "require('$article_dir/node_modules/socket.io/package.json').version")
echo "node $node_version, socket.io $sio_version" >&2

server_cpu="" loadgen_cpu=""
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    server_cpu="taskset -c 0"
    loadgen_cpu="taskset -c 1"
fi

mkdir -p "$OUT" "$(dirname "$SVG")"
loadgen="$loadgen_cpu $root/target/release/loadgen run --repeat $REPEAT --rooms $ROOMS \
    --max-idle-conns $MAX_IDLE --clients $CLIENTS --iterations $ITERATIONS"

started=$(date +%s)
if want axum; then
echo "== axum example (protocol v1)" >&2
$loadgen --name axum --proto v1 --url "ws://127.0.0.1:$PORT_AXUM/occupancy" \
    --spawn "$server_cpu env PORT=$PORT_AXUM RUST_LOG=warn $root/target/release/examples/documents" \
    --out "$OUT/axum.json"
fi

if want socketio; then
echo "== socketio example (the article's events)" >&2
$loadgen --name socketio --proto sio --url "ws://127.0.0.1:$PORT_SIO" \
    --spawn "$server_cpu env PORT=$PORT_SIO RUST_LOG=warn $root/target/release/examples/socketio_documents" \
    --out "$OUT/socketio.json"
fi

if want article; then
echo "== the article's Node server" >&2
$loadgen --name article --proto sio --url "ws://127.0.0.1:$PORT_ARTICLE" --storm-grace-ms 0 \
    --spawn "$server_cpu env PORT=$PORT_ARTICLE node $article_dir/index.js" \
    --out "$OUT/article.json"
fi

"$root/target/release/loadgen" report --baseline article --md "$OUT/table.md" --svg "$SVG" \
    "$OUT/axum.json" "$OUT/socketio.json" "$OUT/article.json"
{
    echo
    echo "Run $(date -u +%Y-%m-%dT%H:%MZ) in $(( $(date +%s) - started )) s: $REPEAT repetitions, R = $ROOMS" \
        "(at most $MAX_IDLE idle connections), $CLIENTS clients in one room, $ITERATIONS hand-overs per R;" \
        "servers ${server_cpu:-unpinned}, loadgen ${loadgen_cpu:-unpinned}; node $node_version, socket.io $sio_version;" \
        "$(nproc) CPUs, load average at the end $(cut -d' ' -f1-3 /proc/loadavg)."
} >> "$OUT/table.md"
cat "$OUT/table.md"
