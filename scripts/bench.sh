#!/usr/bin/env bash
# The benchmark: flotilla-swarm's scenarios against, in one run,
#   1. the baseline: flotilla-echo, a bare tokio-tungstenite + rustls echo server (mutual TLS);
#   2. standalone Flotilla (`flotilla serve`, embedded store, mutual TLS);
#   3. a local cluster (scripts/cluster.sh: nats-server, redis-server, 3 coordinators, 2 gateways
#      with mutual TLS).
# Each run writes report.json and timeline.svg under target/bench/<time>/<target>-<scenario>/;
# summary.md (made by scripts/bench_summary.py) puts them side by side, as ratios to the baseline.
#
#   scripts/bench.sh            the full benchmark (10,000 agents; about 5 minutes here)
#   scripts/bench.sh --quick    the same with 1,000 agents and short runs (about 2 minutes here)
#   scripts/bench.sh --scale    100,000 agents with realistic reports through a local cluster of
#                               6 gateways, one config push, API latency and memory per role
#                               (scripts/bench_scale.sh; AGENTS=12000 for a quick check)
#   scripts/bench.sh --pairs    the standalone server against the echo in alternating pairs, the
#                               median ratio of their p99s (scripts/bench_pairs.sh; PAIRS=4)
#
# Environment: AGENTS (default 10000, quick 1000), MAX_AGENTS (the connect-storm that finds how
# many agents one process holds; default 19000, quick 2000: the machine's open-file limit per
# process bounds it, see docs/benchmarks.md), BENCH_DIR (default target/bench/<time>).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${1:-}" = "--scale" ] && exec scripts/bench_scale.sh
[ "${1:-}" = "--pairs" ] && exec scripts/bench_pairs.sh

quick=0
[ "${1:-}" = "--quick" ] && quick=1
if [ $quick = 1 ]; then
  agents=${AGENTS:-1000}; max_agents=${MAX_AGENTS:-2000}; steady=15s; churn_for=10s
else
  agents=${AGENTS:-10000}; max_agents=${MAX_AGENTS:-19000}; steady=60s; churn_for=30s
fi
out=${BENCH_DIR:-target/bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
out=$(cd "$out" && pwd)

ulimit -n "$(ulimit -Hn)"
for p in nats-server redis-server python3; do
  command -v $p >/dev/null || { echo "bench.sh: $p is not installed (scripts/test.sh installs it)" >&2; exit 1; }
done

echo "==> cargo build --release"
cargo build --release --quiet -p flotilla -p flotilla-loadtest
bin=$PWD/target/release
flotilla=$bin/flotilla
swarm=$bin/flotilla-swarm

# shellcheck source=scripts/bench_lib.sh
source scripts/bench_lib.sh
machine_info "agents: $agents, max agents: $max_agents, steady: $steady"

bench_pki "$flotilla"
# Every swarm agent presents the one client certificate, which names one instance uid: the
# identity rule that holds agents to the uid their certificate names is off for the benchmark.
server_tls=("${echo_tls[@]}" --agent-identity none)

# run NAME ARGS...: one swarm run into $out/NAME.
run() {
  local name=$1; shift
  echo "==> $name"
  "$swarm" --source-ips 32 --quiet --out "$out/$name" "$@" | tee "$out/$name.txt"
}

# --- 1. baseline ---------------------------------------------------------------------------------
"$bin/flotilla-echo" --listen 127.0.0.1:4330 "${echo_tls[@]}" >"$out/echo.log" 2>&1 &
echo_pid=$!; pids+=("$echo_pid")
wait_port 4330
echo_url=(--url wss://localhost:4330/v1/opamp "${tls[@]}")
run echo-connect-storm "${echo_url[@]}" --scenario connect-storm --agents "$max_agents" \
  --connect-rate 0 --gateway-pid "$echo_pid" --duration 120s
run echo-steady "${echo_url[@]}" --scenario steady --agents "$agents" --heartbeat 10s \
  --connect-rate 2000 --duration "$steady"
kill "$echo_pid"

# --- 2. standalone -------------------------------------------------------------------------------
serve_standalone() {
  rm -rf "$out/standalone-data"
  # The storm's agents, past the default cap (the open-file limit less a tenth: 18,000 here).
  "$flotilla" serve --opamp-listen 127.0.0.1:4320 --api-listen 127.0.0.1:4321 \
    --data-dir "$out/standalone-data" --heartbeat-interval 10s "${server_tls[@]}" \
    --max-connections "$max_agents" >>"$out/standalone.log" 2>&1 &
  standalone_pid=$!; pids+=("$standalone_pid")
  wait_port 4320
}
standalone_url=(--url wss://localhost:4320/v1/opamp "${tls[@]}")
serve_standalone
run standalone-connect-storm "${standalone_url[@]}" --scenario connect-storm \
  --agents "$max_agents" --connect-rate 0 --gateway-pid "$standalone_pid" --duration 180s
kill "$standalone_pid"; wait "$standalone_pid" 2>/dev/null || true
serve_standalone
run standalone-steady "${standalone_url[@]}" --scenario steady --agents "$agents" \
  --heartbeat 10s --connect-rate 2000 --duration "$steady"
run standalone-rollout "${standalone_url[@]}" --scenario rollout --agents "$agents" \
  --heartbeat 10s --connect-rate 2000 --api http://127.0.0.1:4321 --duration 120s
run standalone-rollout-supervisor "${standalone_url[@]}" --scenario rollout --agents "$agents" \
  --heartbeat 10s --connect-rate 2000 --api http://127.0.0.1:4321 --duration 120s --supervisor
run standalone-churn "${standalone_url[@]}" --scenario churn --agents "$((agents / 10))" \
  --heartbeat 10s --churn 0.05 --duration "$churn_for"
kill "$standalone_pid"; wait "$standalone_pid" 2>/dev/null || true

# --- 3. cluster ----------------------------------------------------------------------------------
export CLUSTER_DIR=$out/cluster CLUSTER_BASE_PORT=4400 FLOTILLA_BIN=$flotilla
export GATEWAY_FLAGS="${server_tls[*]}" FLOTILLA_HEARTBEAT_INTERVAL=10s
scripts/cluster.sh start >/dev/null
cluster_urls=(--url wss://localhost:4420/v1/opamp --url wss://localhost:4421/v1/opamp "${tls[@]}")
g1=$(cat "$CLUSTER_DIR/g1.pid"); g2=$(cat "$CLUSTER_DIR/g2.pid")
run cluster-steady "${cluster_urls[@]}" --scenario steady --agents "$agents" --heartbeat 10s \
  --connect-rate 2000 --gateway-pid "$g1" --gateway-pid "$g2" --duration "$steady"
run cluster-rollout "${cluster_urls[@]}" --scenario rollout --agents "$agents" --heartbeat 10s \
  --connect-rate 2000 --api http://127.0.0.1:4410 --duration 120s
run cluster-gateway-loss "${cluster_urls[@]}" --scenario gateway-loss --agents "$agents" \
  --heartbeat 10s --connect-rate 2000 --kill-pid "$g1" --kill-after 5s --duration 180s
scripts/cluster.sh stop >/dev/null

python3 scripts/bench_summary.py "$out" | tee "$out/summary.md"

# --- 4. what tracing costs (docs/benchmarks.md#tracing) ------------------------------------------
BENCH_DIR=$out/tracing scripts/bench_tracing.sh
echo "==> results in $out"
