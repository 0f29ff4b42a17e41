#!/usr/bin/env bash
# A local Flotilla cluster on loopback: nats-server, redis-server (append-only file), 3 coordinators
# and 2 gateways, each its own `flotilla serve` process.
#
#   scripts/cluster.sh start    build, start everything in the background, print where it listens
#   scripts/cluster.sh status   which processes are running
#   scripts/cluster.sh stop     SIGTERM every process (gateways first), wait, clean up pid files
#   scripts/cluster.sh run      start, then stop on Ctrl-C
#
# Environment: CLUSTER_DIR (default target/cluster: logs, pids, Redis data), CLUSTER_BASE_PORT
# (default 4400), FLOTILLA_BIN (default: cargo build --release, then target/release/flotilla), REGION (local),
# GATEWAY_FLAGS (more flags for the gateways, e.g. their TLS files; split on spaces).
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${CLUSTER_DIR:-target/cluster}"
base="${CLUSTER_BASE_PORT:-4400}"
region="${REGION:-local}"
nats_port=$base
redis_port=$((base + 1))
coordinators=(c1 c2 c3)
gateways=(g1 g2)

coord_api() { echo $((base + 10 + $1)); }
gw_opamp() { echo $((base + 20 + $1)); }
gw_api() { echo $((base + 30 + $1)); }

need() {
  command -v "$1" >/dev/null || { echo "cluster.sh: $1 is not installed (apt-get install $2)" >&2; exit 1; }
}

bin() {
  if [ -n "${FLOTILLA_BIN:-}" ]; then echo "$FLOTILLA_BIN"; return; fi
  cargo build --release --quiet -p flotilla >&2
  echo "target/release/flotilla"
}

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "cluster.sh: nothing listens on 127.0.0.1:$1 (see $dir/*.log)" >&2
  return 1
}

# start NAME COMMAND...: runs it in the background with its log and pid file.
launch() {
  local name=$1; shift
  "$@" >>"$dir/$name.log" 2>&1 &
  echo $! >"$dir/$name.pid"
}

running() { [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }

start() {
  need nats-server nats-server
  need redis-server redis-server
  local flotilla
  flotilla=$(bin)
  mkdir -p "$dir/redis-data"
  for p in nats redis "${coordinators[@]}" "${gateways[@]}"; do
    if running "$p"; then echo "cluster.sh: $p is already running; run: $0 stop" >&2; exit 1; fi
  done
  launch nats nats-server -a 127.0.0.1 -p "$nats_port"
  launch redis redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$dir/redis-data" \
    --save "" --appendonly yes --daemonize no
  wait_port "$nats_port"
  wait_port "$redis_port"
  local urls=(--nats-url "nats://127.0.0.1:$nats_port" --redis-url "redis://127.0.0.1:$redis_port"
    --region "$region")
  local i=0
  for c in "${coordinators[@]}"; do
    launch "$c" "$flotilla" serve --roles coordinator --node-id "$c" "${urls[@]}" \
      --api-listen "127.0.0.1:$(coord_api $i)"
    i=$((i + 1))
  done
  i=0
  for g in "${gateways[@]}"; do
    launch "$g" "$flotilla" serve --roles gateway --node-id "$g" "${urls[@]}" \
      --opamp-listen "127.0.0.1:$(gw_opamp $i)" --api-listen "127.0.0.1:$(gw_api $i)" \
      ${GATEWAY_FLAGS:-}
    i=$((i + 1))
  done
  for i in 0 1 2; do wait_port "$(coord_api $i)"; done
  for i in 0 1; do wait_port "$(gw_opamp $i)"; done
  cat <<EOF
Flotilla cluster (region $region) is up; logs and pids in $dir
  nats-server      nats://127.0.0.1:$nats_port
  redis-server     redis://127.0.0.1:$redis_port   (append-only file in $dir/redis-data)
  coordinator c1   API http://127.0.0.1:$(coord_api 0)
  coordinator c2   API http://127.0.0.1:$(coord_api 1)
  coordinator c3   API http://127.0.0.1:$(coord_api 2)
  gateway g1       OpAMP ws://127.0.0.1:$(gw_opamp 0)/v1/opamp   ops http://127.0.0.1:$(gw_api 0)
  gateway g2       OpAMP ws://127.0.0.1:$(gw_opamp 1)/v1/opamp   ops http://127.0.0.1:$(gw_api 1)
Try: flotilla ctl --api http://127.0.0.1:$(coord_api 0) health
Stop: $0 stop
EOF
}

stop_one() {
  local name=$1
  [ -f "$dir/$name.pid" ] || return 0
  local pid
  pid=$(cat "$dir/$name.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 250); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "cluster.sh: $name did not stop in 25 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "stopped $name"
  fi
  rm -f "$dir/$name.pid"
}

stop() {
  # Gateways first (agents are told to go away), then coordinators (they hand their shards
  # over to each other, the last one releases them), then the servers they need.
  for p in "${gateways[@]}" "${coordinators[@]}" nats redis; do stop_one "$p"; done
}

status() {
  for p in nats redis "${coordinators[@]}" "${gateways[@]}"; do
    if running "$p"; then echo "$p: running (pid $(cat "$dir/$p.pid"))"; else echo "$p: stopped"; fi
  done
}

case "${1:-run}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  run)
    start
    trap 'stop; exit 0' INT TERM
    echo "Ctrl-C stops the cluster."
    while true; do sleep 1; done
    ;;
  *) echo "usage: $0 start|stop|status|run" >&2; exit 2 ;;
esac
