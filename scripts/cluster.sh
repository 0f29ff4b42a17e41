#!/usr/bin/env bash
# A local Flotilla cluster on loopback: nats-server, redis-server (append-only file), coordinators
# (3 by default) and gateways (2 by default), each its own `flotilla serve` process. With REGIONS, a fleet of such cells, one
# per region, their nats-servers joined as a NATS supercluster (gateway connections).
#
#   scripts/cluster.sh start    build, start everything in the background, wait until the
#                               coordinators hold every shard, print where it listens
#   scripts/cluster.sh status   which processes are running
#   scripts/cluster.sh stop     SIGTERM every process (gateways first), wait, clean up pid files
#   scripts/cluster.sh run      start, then stop on Ctrl-C
#
# Environment: CLUSTER_DIR (default target/cluster: logs, pids, Redis data), CLUSTER_BASE_PORT
# (default 4400), FLOTILLA_BIN (default: cargo build --release, then target/release/flotilla), REGION (local),
# GATEWAY_FLAGS (more flags for the gateways, e.g. their TLS files; split on spaces),
# REDIS_FLAGS (more flags for redis-server, e.g. "--auto-aof-rewrite-min-size 4gb"; split on spaces),
# COORDINATORS (how many, 1-9, default 3: c1, c2, ...), GATEWAYS (1-9, default 2: g1, g2, ...).
# status and stop also see every cN and gN with a pid file, whatever COORDINATORS and GATEWAYS say.
#
# REGIONS (e.g. "eu us"; unset: one region, named by REGION): one cell per region, the i-th
# (0-based) on ports CLUSTER_BASE_PORT + 100*i and up, with its files in CLUSTER_DIR/<region>/,
# its processes named <region>-c1, <region>-g1, <region>-nats, ... Every flotilla process gets
# --region <region>, --regions (all of them) and a --region-endpoint for each region (the OpAMP
# URL of its first gateway). Give status and stop the same REGIONS.
#
# Ports of a cell from its first port P: nats P, redis P+1, NATS gateway P+2 (REGIONS only),
# coordinators' API P+10.. (c1 on P+10, c9 on P+18), gateways' OpAMP P+20.. and ops API P+30..
# (g1 on P+20 and P+30, g9 on P+28 and P+38).
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${CLUSTER_DIR:-target/cluster}"
base="${CLUSTER_BASE_PORT:-4400}"
# A cell has room for 9 of each on its ports (see above).
for count in "COORDINATORS=${COORDINATORS:-3}" "GATEWAYS=${GATEWAYS:-2}"; do
  case "${count#*=}" in
    [1-9]) ;;
    *) echo "cluster.sh: ${count%%=*} must be a number from 1 to 9 (got '${count#*=}')" >&2; exit 2 ;;
  esac
done
coordinators=() gateways=()
for i in $(seq 1 "${COORDINATORS:-3}"); do coordinators+=("c$i"); done
for i in $(seq 1 "${GATEWAYS:-2}"); do gateways+=("g$i"); done
if [ -n "${REGIONS:-}" ]; then
  read -ra regions <<<"$REGIONS"
  multi=1
else
  regions=("${REGION:-local}")
  multi=
fi
stop_command="${multi:+REGIONS=\"${regions[*]}\" }$0 stop"

# in_region I: the I-th region's settings (region, rdir, prefix, col, ports) become current. One
# region without REGIONS keeps the legacy layout: files in $dir, names without a prefix.
in_region() {
  region=${regions[$1]}
  local first=$((base + 100 * $1))
  nats_port=$first
  redis_port=$((first + 1))
  nats_gateway_port=$((first + 2))
  coord_api_base=$((first + 10))
  gw_opamp_base=$((first + 20))
  gw_api_base=$((first + 30))
  if [ -n "$multi" ]; then
    rdir=$dir/$region
    prefix=$region-
    col=$(printf '%-*s  ' "$region_width" "$region")
  else
    rdir=$dir
    prefix=
    col=
  fi
}
region_width=0 # the longest region name, for the summary's first column
for r in "${regions[@]}"; do
  if [ ${#r} -gt "$region_width" ]; then region_width=${#r}; fi
done

coord_api() { echo $((coord_api_base + $1)); }
gw_opamp() { echo $((gw_opamp_base + $1)); }
gw_api() { echo $((gw_api_base + $1)); }

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
  echo "cluster.sh: nothing listens on 127.0.0.1:$1 (see $rdir/*.log)" >&2
  return 1
}

# wait_owned: waits (at most 30 s) until the current region's coordinators hold all 1024 shards
# between them. Until then an agent's first message waits at its gateway for an owner (the
# coordinators join the membership on their first second and take their shards on the next).
wait_owned() {
  local owned=0 n
  for _ in $(seq 1 300); do
    owned=0
    for p in "${!coordinators[@]}"; do
      n=$(curl -s "http://127.0.0.1:$(coord_api "$p")/metrics" 2>/dev/null \
        | awk '$1 == "flotilla_coordinator_owned_shards" { print $2 }')
      owned=$((owned + ${n:-0}))
    done
    [ "$owned" -ge 1024 ] && return 0
    sleep 0.1
  done
  echo "cluster.sh: the coordinators hold $owned of 1024 shards after 30 s (see $rdir/c*.log)" >&2
}

# launch NAME COMMAND...: runs it in the background with its log and pid file (in the current
# region's directory).
launch() {
  local name=$1; shift
  "$@" >>"$rdir/$name.log" 2>&1 &
  echo $! >"$rdir/$name.pid"
}

running() { [ -f "$rdir/$1.pid" ] && kill -0 "$(cat "$rdir/$1.pid")" 2>/dev/null; }

# The NATS gateway block joining the current region's nats-server to every region's.
nats_config() {
  local i all=""
  for i in "${!regions[@]}"; do
    all+="${all:+, }{name: ${regions[$i]}, url: \"nats://127.0.0.1:$((base + 100 * i + 2))\"}"
  done
  printf 'gateway {\n  name: %s\n  listen: "127.0.0.1:%s"\n  gateways: [%s]\n}\n' \
    "$region" "$nats_gateway_port" "$all"
}

# start_region FLOTILLA FLEET_FLAGS...: the current region's processes, in the background.
start_region() {
  local flotilla=$1; shift
  mkdir -p "$rdir/redis-data"
  local nats_flags=()
  if [ -n "$multi" ]; then
    nats_config >"$rdir/nats.conf"
    nats_flags=(-c "$rdir/nats.conf")
  fi
  launch nats nats-server -a 127.0.0.1 -p "$nats_port" "${nats_flags[@]}"
  # Agents' hashes kept compact (listpack) with their description and health fields of a few KB,
  # as docs/deploy.md advises.
  # shellcheck disable=SC2086 # REDIS_FLAGS is split on spaces
  launch redis redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$rdir/redis-data" \
    --save "" --appendonly yes --hash-max-listpack-value 4096 --daemonize no ${REDIS_FLAGS:-}
  wait_port "$nats_port"
  wait_port "$redis_port"
  local urls=(--nats-url "nats://127.0.0.1:$nats_port" --redis-url "redis://127.0.0.1:$redis_port"
    --region "$region" "$@")
  local i=0
  for c in "${coordinators[@]}"; do
    launch "$c" "$flotilla" serve --roles coordinator --node-id "$c" "${urls[@]}" \
      --api-listen "127.0.0.1:$(coord_api $i)"
    i=$((i + 1))
  done
  i=0
  for g in "${gateways[@]}"; do
    # shellcheck disable=SC2086 # GATEWAY_FLAGS is split on spaces
    launch "$g" "$flotilla" serve --roles gateway --node-id "$g" "${urls[@]}" \
      --opamp-listen "127.0.0.1:$(gw_opamp $i)" --api-listen "127.0.0.1:$(gw_api $i)" \
      ${GATEWAY_FLAGS:-}
    i=$((i + 1))
  done
}

# One line of the summary: the region (with REGIONS), the process, where it listens.
line() { printf '  %s%-17s%s\n' "$col" "$1" "$2"; }

summary() {
  if [ -n "$multi" ]; then
    echo "Flotilla fleet (regions ${regions[*]}) is up; logs and pids in $dir/<region>"
  else
    echo "Flotilla cluster (region $region) is up; logs and pids in $dir"
  fi
  local i n
  for i in "${!regions[@]}"; do
    in_region "$i"
    line nats-server "nats://127.0.0.1:$nats_port${multi:+   gateway nats://127.0.0.1:$nats_gateway_port}"
    line redis-server "redis://127.0.0.1:$redis_port   (append-only file in $rdir/redis-data)"
    for n in "${!coordinators[@]}"; do
      line "coordinator ${coordinators[$n]}" "API http://127.0.0.1:$(coord_api "$n")"
    done
    for n in "${!gateways[@]}"; do
      line "gateway ${gateways[$n]}" \
        "OpAMP ws://127.0.0.1:$(gw_opamp "$n")/v1/opamp   ops http://127.0.0.1:$(gw_api "$n")"
    done
  done
  in_region 0
  echo "Try: flotilla ctl --api http://127.0.0.1:$(coord_api 0) health"
  echo "Stop: $stop_command"
}

start() {
  need nats-server nats-server
  need redis-server redis-server
  need curl curl
  local flotilla
  flotilla=$(bin)
  local i p fleet=()
  for i in "${!regions[@]}"; do
    in_region "$i"
    for p in nats redis "${coordinators[@]}" "${gateways[@]}"; do
      if running "$p"; then echo "cluster.sh: $prefix$p is already running; run: $stop_command" >&2; exit 1; fi
    done
    if [ -n "$multi" ]; then
      fleet+=(--region-endpoint "$region=ws://127.0.0.1:$(gw_opamp 0)/v1/opamp")
    fi
  done
  if [ -n "$multi" ]; then
    fleet=(--regions "$(IFS=,; echo "${regions[*]}")" "${fleet[@]}")
  fi
  for i in "${!regions[@]}"; do
    in_region "$i"
    start_region "$flotilla" "${fleet[@]}"
  done
  for i in "${!regions[@]}"; do
    in_region "$i"
    for p in "${!coordinators[@]}"; do wait_port "$(coord_api "$p")"; done
    for p in "${!gateways[@]}"; do wait_port "$(gw_opamp "$p")"; done
    wait_owned
  done
  summary
}

stop_one() {
  local name=$1
  [ -f "$rdir/$name.pid" ] || return 0
  local pid
  pid=$(cat "$rdir/$name.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 250); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "cluster.sh: $prefix$name did not stop in 25 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "stopped $prefix$name"
  fi
  rm -f "$rdir/$name.pid"
}

# members PREFIX NAMES...: NAMES, and every other PREFIX<n> with a pid file in the current
# region's directory (started with more than this run's COORDINATORS or GATEWAYS).
members() {
  local prefix=$1 f n
  shift
  local all=("$@")
  for f in "$rdir/$prefix"[0-9]*.pid; do
    [ -e "$f" ] || continue
    n=$(basename "$f" .pid)
    [[ " ${all[*]} " == *" $n "* ]] || all+=("$n")
  done
  echo "${all[*]}"
}

stop() {
  # Gateways first (agents are told to go away), then coordinators (they hand their shards
  # over to each other, the last one releases them), then the servers they need; each step in
  # every region before the next.
  local group i p group_members
  for group in g c servers; do
    for i in "${!regions[@]}"; do
      in_region "$i"
      case $group in
        g) group_members=$(members g "${gateways[@]}") ;;
        c) group_members=$(members c "${coordinators[@]}") ;;
        *) group_members="nats redis" ;;
      esac
      for p in $group_members; do stop_one "$p"; done
    done
  done
}

status() {
  local i p
  for i in "${!regions[@]}"; do
    in_region "$i"
    # shellcheck disable=SC2046 # members prints names without spaces
    for p in nats redis $(members c "${coordinators[@]}") $(members g "${gateways[@]}"); do
      if running "$p"; then
        echo "$prefix$p: running (pid $(cat "$rdir/$p.pid"))"
      else
        echo "$prefix$p: stopped"
      fi
    done
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
