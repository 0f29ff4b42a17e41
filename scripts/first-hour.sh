#!/usr/bin/env bash
# How long a new user waits from a fresh clone to the first APPLIED config, following README.md:
# clones this checkout into a temporary directory (a cold target/ directory: everything is
# compiled; crates come from the local cargo cache if present), runs the first README command and
# the Quickstart, and prints the two times. Uses ports 4320/4321 (stop any Flotilla on them first).
#
#   scripts/first-hour.sh
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
work=$(mktemp -d)
trap 'pkill -f "flotilla-swarm --url ws://127.0.0.1:4320" || true; pkill -f "$work/fresh/target/release/flotilla serve" || true; rm -rf "$work"' EXIT
t0=$(date +%s)
git clone -q "$src" "$work/fresh"
cd "$work/fresh"
(cargo run --release --bin flotilla -- serve > serve.log 2>&1 &)
until curl -sf http://127.0.0.1:4321/healthz > /dev/null; do sleep 2; done
t_serve=$(date +%s)
cargo build --release --bin flotilla --bin flotilla-swarm
export PATH="$PWD/target/release:$PATH"
flotilla-swarm --url ws://127.0.0.1:4320/v1/opamp --agents 5 --env prod --duration 10m > swarm.log 2>&1 &
sleep 2
flotilla ctl agents list --selector deployment.environment=prod
flotilla ctl configs apply prod-base -f examples/collector.yaml --selector deployment.environment=prod
until flotilla ctl agents list --config applied | grep -q "5 of 5 agents"; do sleep 0.2; done
t_applied=$(date +%s)
echo "clone -> serving: $((t_serve - t0)) s; clone -> 5 agents APPLIED: $((t_applied - t0)) s"
