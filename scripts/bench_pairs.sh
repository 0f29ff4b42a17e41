#!/usr/bin/env bash
# The standalone server against the bare echo, in alternating pairs: one steady run of each
# (mutual TLS, AGENTS agents, 10 s heartbeats, STEADY long), PAIRS times, the order swapped in
# every other pair. A single pair does not tell the ratio on a shared machine (the echo's own p99
# moved 0.6 -> 2.7 ms between runs minutes apart; docs/benchmarks.md): pairs.md lists each pair's
# steady p50 / p99 and gives the median of the p99 ratios.
#
#   scripts/bench.sh --pairs      (PAIRS default 4, AGENTS 10000, STEADY 60s; about 2.5 min a pair)
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${PAIRS:-4}; agents=${AGENTS:-10000}; steady=${STEADY:-60s}
out=${BENCH_DIR:-target/bench/pairs-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
ulimit -n "$(ulimit -Hn)"

echo "==> cargo build --release"
cargo build --release --quiet -p flotilla -p flotilla-loadtest
bin=$PWD/target/release

# shellcheck source=scripts/bench_lib.sh
source scripts/bench_lib.sh
machine_info "pairs: $pairs, agents: $agents, steady: $steady"

bench_pki "$bin/flotilla"

# steady NAME PORT: the swarm's steady run against 127.0.0.1:PORT, into $out/NAME.
steady() {
  "$bin/flotilla-swarm" --source-ips 32 --quiet --out "$out/$1" \
    --url "wss://localhost:$2/v1/opamp" "${tls[@]}" --scenario steady --agents "$agents" \
    --heartbeat 10s --connect-rate 2000 --duration "$steady" >"$out/$1.txt"
}
echo_run() {
  "$bin/flotilla-echo" --listen 127.0.0.1:4330 "${echo_tls[@]}" >"$out/echo.log" 2>&1 &
  local pid=$!; pids+=("$pid")
  wait_port 4330
  steady "echo-$1" 4330
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
standalone_run() {
  rm -rf "$out/standalone-data"
  # Every swarm agent presents the one client certificate: the identity rule is off.
  "$bin/flotilla" serve --opamp-listen 127.0.0.1:4320 --api-listen 127.0.0.1:4321 \
    --data-dir "$out/standalone-data" --heartbeat-interval 10s "${echo_tls[@]}" \
    --agent-identity none >>"$out/standalone.log" 2>&1 &
  local pid=$!; pids+=("$pid")
  wait_port 4320
  steady "standalone-$1" 4320
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

for i in $(seq 1 "$pairs"); do
  echo "==> pair $i of $pairs"
  if [ $((i % 2)) = 1 ]; then echo_run "$i"; standalone_run "$i"
  else standalone_run "$i"; echo_run "$i"; fi
done

python3 - "$out" "$pairs" <<'PY' | tee "$out/pairs.md"
import json, statistics, sys
out, pairs = sys.argv[1], int(sys.argv[2])
steady = lambda name: json.load(open(f"{out}/{name}/report.json"))["latency"]["steady"]
print("| pair | echo p50 / p99 | standalone p50 / p99 | p99 ratio |")
print("|---|---|---|---|")
ratios = []
for i in range(1, pairs + 1):
    e, s = steady(f"echo-{i}"), steady(f"standalone-{i}")
    ratios.append(s["p99_ms"] / e["p99_ms"])
    print(f"| {i} | {e['p50_ms']:.3f} / {e['p99_ms']:.3f} ms | "
          f"{s['p50_ms']:.3f} / {s['p99_ms']:.3f} ms | {ratios[-1]:.2f}x |")
print(f"\nmedian p99 ratio over {pairs} pairs: {statistics.median(ratios):.2f}x")
PY
echo "==> results in $out"
