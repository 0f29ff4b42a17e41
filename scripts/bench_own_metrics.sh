#!/usr/bin/env bash
# What agents' own metrics cost end to end (docs/benchmarks.md#agents-own-metrics-issue-22): the
# same swarm twice against standalone Flotilla and a local cluster (scripts/cluster.sh: 3
# coordinators, 2 gateways, nats-server, redis-server), once without own metrics (the baseline of
# the same run) and once with every agent sending a collector's export every INTERVAL. Reports the
# exports per second, the servers' CPU per export (the CPU of the second run minus the first's,
# over the exports) and the agents' reply latency in both.
#
#   scripts/bench_own_metrics.sh            10,000 agents, exports every 2 s (5,000 a second)
#
# Environment: AGENTS (default 10000), INTERVAL (default 2s), STEADY (default 60s), BENCH_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
agents=${AGENTS:-10000}
interval=${INTERVAL:-2s}
steady=${STEADY:-60s}
out=${BENCH_DIR:-target/bench/own-metrics-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
cargo build --release --quiet -p flotilla -p flotilla-loadtest
bin=$PWD/target/release
# shellcheck source=scripts/bench_lib.sh
source scripts/bench_lib.sh
machine_info "agents: $agents, export interval: $interval, steady: $steady"

# CPU time (ms) of processes, summed.
cpu_ms() {
  local total=0 p
  for p in "$@"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat") * 1000 / $(getconf CLK_TCK)))
  done
  echo "$total"
}

# run NAME PIDS URLS [SWARM ARGS...]: one steady swarm run; prints the servers' CPU ms.
run() {
  local name=$1 servers=$2 urls=$3; shift 3
  local before after
  # shellcheck disable=SC2086 # PIDS and URLS are lists split on spaces
  before=$(cpu_ms $servers)
  # shellcheck disable=SC2086
  "$bin/flotilla-swarm" $urls --scenario steady --agents "$agents" --heartbeat 10s \
    --connect-rate 2000 --duration "$steady" --source-ips 32 --quiet --out "$out/$name" "$@" \
    >"$out/$name.txt"
  # shellcheck disable=SC2086
  after=$(cpu_ms $servers)
  echo "$((after - before))" >"$out/$name.cpu_ms"
}

# summarize NAME: exports, exports/s, CPU ms, reply p50/p99 in the steady state.
summarize() {
  python3 - "$out/$1/report.json" "$(cat "$out/$1.cpu_ms")" "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); cpu = int(sys.argv[2])
o = r.get("own_metrics") or {}
s = r["latency"]["steady"]
print(f"{sys.argv[3]}: exports {o.get('exports', 0)} ({o.get('exports_per_s', 0):.0f}/s, "
      f"{o.get('errors_total', 0)} errors, export p99 {o.get('latency', {}).get('p99_ms', 0):.1f} ms); "
      f"server CPU {cpu} ms; reply p50 {s['p50_ms']:.2f} ms p99 {s['p99_ms']:.2f} ms")
PY
}

# --- standalone ----------------------------------------------------------------------------------
"$bin/flotilla" serve --opamp-listen 127.0.0.1:4320 --api-listen 127.0.0.1:4321 \
  --data-dir "$out/standalone-data" --heartbeat-interval 10s --agent-message-rate 1000 \
  >"$out/standalone.log" 2>&1 &
sa=$!; pids+=("$sa")
wait_port 4320
run standalone-baseline "$sa" "--url ws://127.0.0.1:4320/v1/opamp"
run standalone-own-metrics "$sa" "--url ws://127.0.0.1:4320/v1/opamp" --own-metrics "$interval"
curl -s "127.0.0.1:4321/api/v1/fleet/agent-metrics?top=1" >"$out/standalone-fleet.json"
kill "$sa"; wait "$sa" 2>/dev/null || true

# --- cluster -------------------------------------------------------------------------------------
export CLUSTER_DIR=$out/cluster CLUSTER_BASE_PORT=4400 FLOTILLA_BIN=$bin/flotilla
export GATEWAY_FLAGS="--agent-message-rate 1000" FLOTILLA_HEARTBEAT_INTERVAL=10s
scripts/cluster.sh start >/dev/null
gws="$(cat "$CLUSTER_DIR/g1.pid") $(cat "$CLUSTER_DIR/g2.pid")"
cos="$(cat "$CLUSTER_DIR"/c*.pid | xargs)"
urls="--url ws://127.0.0.1:4420/v1/opamp --url ws://127.0.0.1:4421/v1/opamp"
for name in cluster-baseline cluster-own-metrics; do
  extra=()
  [ "$name" = cluster-own-metrics ] && extra=(--own-metrics "$interval")
  co_before=$(cpu_ms $cos)
  run "$name" "$gws" "$urls" "${extra[@]}"
  echo "$(($(cpu_ms $cos) - co_before))" >"$out/$name.coordinators_cpu_ms"
done
scripts/cluster.sh stop >/dev/null

{
  summarize standalone-baseline
  summarize standalone-own-metrics
  summarize cluster-baseline
  echo "  coordinators' CPU: $(cat "$out/cluster-baseline.coordinators_cpu_ms") ms"
  summarize cluster-own-metrics
  echo "  coordinators' CPU: $(cat "$out/cluster-own-metrics.coordinators_cpu_ms") ms"
} | tee "$out/summary.txt"
echo "==> results in $out"
