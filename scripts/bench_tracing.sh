#!/usr/bin/env bash
# What tracing costs on the hot path: the same steady swarm against standalone Flotilla (release
# build, plain WebSocket, embedded store) several times in one run: tracing off, and on at the
# sample ratios of VARIANTS (default "off default 1.0"; 0 keeps no trace; default is 0.1),
# exporting over OTLP http/protobuf to a local receiver that takes and drops every batch
# (python3's http.server). For each run: messages, the
# server's CPU per 1,000 messages (process_cpu_seconds_total), reply latency (swarm), and the
# spans exported or dropped (flotilla_trace_spans_total). Prints a Markdown table.
#
#   scripts/bench_tracing.sh     (AGENTS=2000, HEARTBEAT=1s, DURATION=40s; about 4 minutes)
#   VARIANTS="off 0 default 1.0" scripts/bench_tracing.sh
set -euo pipefail
cd "$(dirname "$0")/.."
agents=${AGENTS:-2000}; heartbeat=${HEARTBEAT:-1s}; duration=${DURATION:-40s}
out=${BENCH_DIR:-target/bench/tracing-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"; out=$(cd "$out" && pwd)
ulimit -n "$(ulimit -Hn)"

cargo build --release --quiet -p flotilla -p flotilla-loadtest
bin=$PWD/target/release

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# The OTLP receiver: answers every POST with an empty ExportTraceServiceResponse.
python3 - 4318 >"$out/otlp-sink.log" 2>&1 <<'PY' &
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
pids+=($!)

metric() { curl -s http://127.0.0.1:4341/metrics | awk -v s="$1" 'index($0, s) == 1 { v += $NF } END { printf "%.3f", v + 0 }'; }

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs) x $(nproc); agents $agents, heartbeat $heartbeat, $duration" | tee "$out/machine.txt"
base=""
{
echo "| tracing | messages | server CPU s / 1,000 msgs | vs off | p50 ms | p99 ms | spans exported | spans dropped |"
echo "|---|---|---|---|---|---|---|---|"
# "off" first: the ratios are to it.
for variant in ${VARIANTS:-off default 1.0}; do
  flags=()
  case $variant in
    off) ;;
    default) flags=(--otlp-endpoint http://127.0.0.1:4318) ;;
    *) flags=(--otlp-endpoint http://127.0.0.1:4318 --trace-sample-ratio "$variant") ;;
  esac
  rm -rf "$out/data-$variant"
  "$bin/flotilla" serve --opamp-listen 127.0.0.1:4340 --api-listen 127.0.0.1:4341 \
    --data-dir "$out/data-$variant" --heartbeat-interval "$heartbeat" "${flags[@]}" \
    >"$out/serve-$variant.log" 2>&1 &
  pid=$!; pids+=("$pid")
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:4341/readyz >/dev/null && break; sleep 0.1; done
  cpu0=$(metric process_cpu_seconds_total); msgs0=$(metric 'flotilla_gateway_messages_total{transport="websocket",direction="in"}')
  "$bin/flotilla-swarm" --url ws://127.0.0.1:4340/v1/opamp --scenario steady --agents "$agents" \
    --heartbeat "$heartbeat" --connect-rate 2000 --duration "$duration" --quiet \
    --out "$out/swarm-$variant" >"$out/swarm-$variant.txt"
  sleep 6 # one more export batch
  cpu1=$(metric process_cpu_seconds_total); msgs1=$(metric 'flotilla_gateway_messages_total{transport="websocket",direction="in"}')
  exported=$(metric 'flotilla_trace_spans_total{fate="exported"}'); dropped=$(metric 'flotilla_trace_spans_total{fate="dropped"}')
  kill "$pid"; wait "$pid" 2>/dev/null || true
  read -r p50 p99 < <(python3 -c "import json,sys; l=json.load(open(sys.argv[1]))['latency']['steady']; print(l['p50_ms'], l['p99_ms'])" "$out/swarm-$variant/report.json")
  if python3 -c "import sys; sys.exit(0 if $msgs1 - $msgs0 > 0 else 1)"; then :; else
    echo "bench_tracing.sh: no agent message counted in the $variant run (see $out/swarm-$variant.txt)" >&2
    exit 1
  fi
  per=$(python3 -c "print(round(($cpu1-$cpu0)/(($msgs1-$msgs0)/1000), 4))")
  [ "$variant" = off ] && base=$per
  ratio=$([ -n "$base" ] && python3 -c "print(round($per/$base, 2))" || echo "-")
  echo "| $variant | $(printf %.0f "$(python3 -c "print($msgs1-$msgs0)")") | $per | ${ratio}x | $p50 | $p99 | $(printf %.0f "$exported") | $(printf %.0f "$dropped") |"
done
} | tee "$out/summary.md"
