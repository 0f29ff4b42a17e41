#!/usr/bin/env bash
# The rollout scenario with the swarm's default agents and its --supervisor agents (collectors run
# by their OpAMP supervisor), 10,000 each, against standalone Flotilla with mutual TLS, one after
# the other on a fresh server each; for every directory of release binaries given (default
# target/release, built first), so that two builds can be compared in one run:
#
#   scripts/bench_profiles.sh                         this checkout
#   scripts/bench_profiles.sh /tmp/old-bin target/release   an older build, then this one
#
# Environment: AGENTS (default 10000), OUT (default target/bench-profiles/<time>).
set -euo pipefail
cd "$(dirname "$0")/.."
agents=${AGENTS:-10000}
out=${OUT:-target/bench-profiles/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
ulimit -n "$(ulimit -Hn)"
cargo build --release --quiet -p flotilla -p flotilla-loadtest
[ $# -gt 0 ] || set -- target/release
target/release/flotilla certs init --out "$out/pki" --clients 1 >/dev/null
pki=$out/pki
tls=(--ca "$pki/ca.pem" --cert "$pki/client-1.pem" --key "$pki/client-1-key.pem")
# Every agent presents the one client certificate (it names one uid): no uid identity rule.
server_tls=(--tls-cert "$pki/server.pem" --tls-key "$pki/server-key.pem"
  --client-ca "$pki/ca.pem" --agent-identity none)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null || true' EXIT
n=0
for bin in "$@"; do
  n=$((n + 1))
  for profile in default supervisor; do
    rm -rf "$out/data"
    "$bin/flotilla" serve --opamp-listen 127.0.0.1:4320 --api-listen 127.0.0.1:4321 \
      --data-dir "$out/data" --heartbeat-interval 10s "${server_tls[@]}" \
      >"$out/serve-$n-$profile.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/4320) 2>/dev/null && break; sleep 0.1; done
    extra=()
    [ "$profile" = supervisor ] && extra=(--supervisor)
    echo "==> $bin $profile"
    "$bin/flotilla-swarm" --source-ips 32 --quiet --out "$out/$n-$profile" \
      --url wss://localhost:4320/v1/opamp "${tls[@]}" --scenario rollout --agents "$agents" \
      --heartbeat 10s --connect-rate 2000 --api http://127.0.0.1:4321 --duration 120s \
      "${extra[@]}" | tee "$out/$n-$profile.txt"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    pid=
  done
done
