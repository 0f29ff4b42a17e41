#!/usr/bin/env bash
# The scale benchmark (issue 17), run as `scripts/bench.sh --scale`: 100,000 agents reporting as
# a production fleet does (flotilla-swarm --realistic: 15 attributes, 30 health components, 20 KB
# effective configs) through a local cluster on this one machine (scripts/cluster.sh: nats-server,
# redis-server, 3 coordinators, 6 gateways; plain WebSocket, 30 s heartbeats), one swarm process
# per gateway: each process holds at most 17,000 connections (the open-file limit is 20,000 per
# process). Every swarm's agents start on its own gateway, the others are their failover.
#
#   1. ramp: the swarms connect their agents at rates that bring the fleet in over RAMP seconds;
#      then wait until GET /api/v1/fleet/health counts every agent connected;
#   2. SETTLE seconds for the replies the ramp left waiting (its last agents' first reports: not
#      the steady state), then the steady state for STEADY seconds;
#   3. push: PUT /api/v1/configs/scale (empty selector: every agent), then wait until
#      GET /api/v1/agents?config=applied counts every agent;
#   4. API latency: the fleet health and a filtered agent list, SAMPLES times each (curl);
#   5. with FAULTS=1, two faults, each followed by a push of a new config to every agent:
#      kill -9 of gateway g1 (its agents fail over to the others), then, once the swarms have
#      every agent connected again, the push; then kill -9 of coordinator c3 (c1 serves the API
#      this script asks) and at once the push (its shards are taken over by the others once its
#      leases expire); from the push and each kill, 30 s of metrics twice a second (metrics/watch-*.txt);
#   6. resident memory of each role (ps); the swarms stop (writing their report.json), then the
#      cluster;
#   7. summary.md and timeline.svg under BENCH_DIR (scripts/bench_scale_summary.py).
#
# Every wait is bounded and the run ends within 10 minutes of the build (15 with FAULTS=1); every
# process it started is stopped on exit, and all of them at once if the machine's used memory
# passes MEM_LIMIT_GIB.
#
# Environment: AGENTS (default 100000; fewer agents run on fewer gateways and swarms: at most
# 17,000 agents each, at least 2, e.g. AGENTS=12000 for a quick check), RAMP (default 180: over
# 120 s, the ramp's last seconds bring 100,000 agents' first reports faster than the cluster
# answers them),
# SETTLE (30), STEADY (60), PUSH_WAIT (180), SAMPLES (20), MEM_LIMIT_GIB (20), API_TOKEN (bearer
# token, if the API has --api-tokens), BENCH_DIR (default target/bench/scale-<time>), FAULTS (1:
# step 5; the agents are then spread over more gateways, at most 14,000 each, so that the
# survivors of a gateway's loss hold its agents within their open-file limit), TLS (1: mutual TLS
# between agents and gateways, with a PKI from `flotilla certs init`; every agent presents the
# one client certificate, so the gateways hold agents to no uid: --agent-identity none),
# REDIS_FLAGS (more flags for redis-server, e.g. "--auto-aof-rewrite-min-size 4gb": see
# docs/benchmarks.md on the append-only file's rewrites).
set -euo pipefail
cd "$(dirname "$0")/.."

agents=${AGENTS:-100000}
ramp=${RAMP:-180}
settle=${SETTLE:-30}
steady=${STEADY:-60}
push_wait=${PUSH_WAIT:-180}
samples=${SAMPLES:-20}
mem_limit_gib=${MEM_LIMIT_GIB:-20}
faults=${FAULTS:-0}
tls=${TLS:-0}
per_process=17000
[ "$faults" = 1 ] && per_process=14000
n=$(((agents + per_process - 1) / per_process))
[ "$n" -ge 2 ] || n=2
if [ "$n" -gt 9 ]; then
  echo "bench_scale.sh: at most 9 x $per_process agents (9 gateways fit a cluster cell)" >&2
  exit 2
fi
out=${BENCH_DIR:-target/bench/scale-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
out=$(cd "$out" && pwd)

ulimit -n "$(ulimit -Hn)"
for p in nats-server redis-server python3 curl; do
  command -v $p >/dev/null || { echo "bench_scale.sh: $p is not installed" >&2; exit 1; }
done

echo "==> cargo build --release"
cargo build --release --quiet -p flotilla -p flotilla-loadtest
bin=$PWD/target/release

# shellcheck source=scripts/bench_lib.sh
source scripts/bench_lib.sh
swarms=() roles=()
# On any exit: the swarms, then the cluster, gracefully for at most 60 s, then by SIGKILL, so that
# the run stays bounded however it ends; then bench_lib's cleanup.
finish() {
  local r role name pid
  [ ${#swarms[@]} = 0 ] || kill -TERM "${swarms[@]}" 2>/dev/null || true
  for _ in $(seq 1 30); do alive "${swarms[@]}" || break; sleep 1; done
  timeout 60 scripts/cluster.sh stop >/dev/null 2>&1 || true
  for r in "${roles[@]}"; do
    read -r role name pid <<<"$r"
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null && echo "killed $role $name"
  done
  cleanup
}
# summarize: summary.md and timeline.svg from whatever the run got to.
summarize() {
  python3 scripts/bench_scale_summary.py "$out" | tee "$out/summary.md" || true
  echo "==> results in $out (summary.md, timeline.svg, swarm-*/report.json)"
}
trap 'finish; summarize' EXIT
# A signal ends the run through the EXIT trap, once the command in progress returns (waits are
# `nap`s, which a signal cuts short).
trap 'exit 143' INT TERM
nap() {
  sleep "$1" &
  wait $! || true
}
# alive PID...: whether any of them runs.
alive() {
  local p
  for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done
  return 1
}
transport="plain WebSocket"
[ "$tls" = 1 ] && transport="WebSocket over mutual TLS"
machine_info "agents: $agents over $n gateways and $n swarms (--realistic, $transport)" \
  "ramp: ${ramp}s, settle: ${settle}s, steady: ${steady}s, heartbeat: 30s, 3 coordinators" \
  "redis-server: --appendonly yes ${REDIS_FLAGS:-}"

now_ms() { date +%s%3N; }
started=$(now_ms)
run_s=600
[ "$faults" = 1 ] && run_s=900
deadline=$((started + run_s * 1000))
# left S: seconds to wait, at most S and what is left of the run's time (less 60 s to stop).
left() {
  local rest=$(((deadline - 60000 - $(now_ms)) / 1000))
  if [ "$rest" -lt "$1" ]; then echo $((rest > 0 ? rest : 0)); else echo "$1"; fi
}
# event NAME VALUE: one line of events.txt (read by the summary).
event() { echo "$1 $2" >>"$out/events.txt"; }
: >"$out/events.txt"
event agents "$agents"
event processes "$n"
event started_ms "$started"

api=http://127.0.0.1:4410
auth=()
[ -n "${API_TOKEN:-}" ] && auth=(-H "Authorization: Bearer $API_TOKEN")
# get PATH FIELD [SECONDS]: FIELD of the API's JSON answer to GET PATH (empty if it did not
# answer within SECONDS, default 10).
get() {
  curl -sf --max-time "${3:-10}" "${auth[@]}" "$api$1" |
    python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])" 2>/dev/null || true
}

# --- the cluster ---------------------------------------------------------------------------------
export CLUSTER_DIR=$out/cluster CLUSTER_BASE_PORT=4400 FLOTILLA_BIN=$bin/flotilla
export GATEWAYS=$n COORDINATORS=3 FLOTILLA_HEARTBEAT_INTERVAL=30s FLOTILLA_LOG_LEVEL=warn
scheme=ws client_tls=()
if [ "$tls" = 1 ]; then
  pki=$out/pki
  "$bin/flotilla" certs init --out "$pki" --clients 1 >/dev/null
  export GATEWAY_FLAGS="--tls-cert $pki/server.pem --tls-key $pki/server-key.pem --client-ca $pki/ca.pem --agent-identity none"
  scheme=wss client_tls=(--ca "$pki/ca.pem" --cert "$pki/client-1.pem" --key "$pki/client-1-key.pem")
fi
echo "==> cluster: 3 coordinators, $n gateways"
timeout 120 scripts/cluster.sh start >"$out/cluster.txt"
for c in c1 c2 c3; do roles+=("coordinator $c $(cat "$CLUSTER_DIR/$c.pid")"); done
for i in $(seq 1 "$n"); do roles+=("gateway g$i $(cat "$CLUSTER_DIR/g$i.pid")"); done
roles+=("redis redis $(cat "$CLUSTER_DIR/redis.pid")" "nats nats $(cat "$CLUSTER_DIR/nats.pid")")
# rss PHASE: every server process's resident memory, as lines of rss.txt.
rss() {
  local r role name pid kib
  for r in "${roles[@]}"; do
    read -r role name pid <<<"$r"
    kib=$(ps -o rss= -p "$pid" | tr -d ' ' || true) # none once killed (FAULTS)
    echo "$PHASE $role $name $pid ${kib:-0}" >>"$out/rss.txt"
  done
}
PHASE=idle rss
# cpu MARK: every process's CPU time so far (user + system, in clock ticks), as lines of cpu.txt
# with the time: the summary gives each role's share of the machine between two marks.
cpu() {
  local r role name pid ticks t
  t=$(now_ms)
  for r in "${roles[@]}"; do
    read -r role name pid <<<"$r"
    # None once killed (FAULTS).
    if ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null); then
      echo "$1 $t $role $name $ticks" >>"$out/cpu.txt"
    fi
  done
}

# scrape MARK: every coordinator's and gateway's /metrics, into metrics/MARK-NAME.txt: what the
# servers counted between two marks (the summary reads the owners' list walks from them).
mkdir -p "$out/metrics"
# metrics_port ROLE NAME: the port of a coordinator's or gateway's /metrics (none for the others).
metrics_port() {
  case $1 in
    coordinator) echo $((4410 + ${2#c} - 1)) ;;
    gateway) echo $((4430 + ${2#g} - 1)) ;;
  esac
}
scrape() {
  local r role name pid port
  for r in "${roles[@]}"; do
    read -r role name pid <<<"$r"
    port=$(metrics_port "$role" "$name")
    [ -n "$port" ] || continue
    curl -s --max-time 5 "http://127.0.0.1:$port/metrics" >"$out/metrics/$1-$name.txt" || true
  done
}
# watch TAG SECONDS: twice a second for SECONDS, each server's agent messages in flight and
# handled (and the owners' time on them and in the store, the agents they await answers from),
# and the gateways' bus requests by outcome, into metrics/watch-TAG.txt ("unix_ms name
# series value"): what showed a dead coordinator's agents filling the gateways' room for agent
# messages (docs/benchmarks.md, "Parts of a record kept apart").
watch() {
  local until_ms=$(($(now_ms) + $2 * 1000)) r role name pid port
  while [ "$(now_ms)" -lt "$until_ms" ]; do
    for r in "${roles[@]}"; do
      read -r role name pid <<<"$r"
      port=$(metrics_port "$role" "$name")
      [ -n "$port" ] || continue
      curl -s --max-time 1 "http://127.0.0.1:$port/metrics" 2>/dev/null |
        grep -E '^flotilla_(coordinator_uplinks_in_flight|coordinator_uplink_seconds_(count|sum)|coordinator_pushes_awaiting|store_seconds_(count|sum)\{[^}]*op="(save_agent|touch_agent)"|gateway_uplinks_in_flight|gateway_messages_total|bus_requests_total)' |
        sed "s/^/$(now_ms) $name /" || true
    done >>"$out/metrics/watch-$1.txt"
    nap 0.5
  done
}

# --- 1. ramp -------------------------------------------------------------------------------------
echo "==> ramp: $agents agents over ${ramp}s"
swarms=()
for i in $(seq 0 $((n - 1))); do
  count=$((agents / n + (i < agents % n ? 1 : 0)))
  rate=$(awk "BEGIN {printf \"%.1f\", $count / $ramp}")
  urls=(--url "$scheme://localhost:$((4420 + i))/v1/opamp" "${client_tls[@]}")
  for j in $(seq 0 $((n - 1))); do
    [ "$j" = "$i" ] || urls+=(--failover-url "$scheme://localhost:$((4420 + (i + j) % n))/v1/opamp")
  done
  # Its summary on stdout, a progress line a second on stderr.
  "$bin/flotilla-swarm" --scenario steady --agents "$count" "${urls[@]}" --realistic \
    --source-ips 16 --connect-rate "$rate" --heartbeat 30s --reply-timeout 30s \
    --duration "$(left "$run_s")s" --out "$out/swarm-$((i + 1))" \
    >"$out/swarm-$((i + 1)).txt" 2>"$out/swarm-$((i + 1)).progress" &
  swarms+=($!)
  pids+=($!)
  roles+=("swarm swarm-$((i + 1)) $!")
done
# The machine's used memory, every 2 s: past the limit, the servers are killed at once (their
# memory now), the swarms told to stop (they write their reports), and the run ends.
(
  while sleep 2; do
    used=$(free -m | awk '/Mem:/ {print $3}')
    echo "$(date +%s) $used" >>"$out/memory.txt"
    if [ "$used" -gt $((mem_limit_gib * 1024)) ]; then
      echo "bench_scale.sh: $used MiB used, above MEM_LIMIT_GIB=$mem_limit_gib: stopping" >&2
      event memory_limit_ms "$(now_ms)"
      PHASE=limit rss
      for r in "${roles[@]}"; do
        read -r role _ pid <<<"$r"
        if [ "$role" = swarm ]; then kill -TERM "$pid"; else kill -KILL "$pid"; fi 2>/dev/null
      done
      kill -TERM $$
      exit 0
    fi
  done
) &
pids+=($!)
# progress FIELD [FILE...]: the number after FIELD ("connected", "applied") in the last progress
# line of each swarm (default: every swarm), summed.
progress() {
  local field=$1 total=0 f v
  shift
  [ $# -gt 0 ] || set -- "$out"/swarm-*.progress
  for f in "$@"; do
    v=$(tail -n 1 "$f" | sed -n "s/.* $field *\([0-9]*\)[ /].*/\1/p")
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
event swarms_started_ms "$(now_ms)"
connected=0
until_s=$(($(now_ms) / 1000 + $(left $((ramp + 120)))))
while [ "$(date +%s)" -lt "$until_s" ]; do
  nap 2
  connected=$(get /api/v1/fleet/health connected_agents)
  echo "$(now_ms) ${connected:-?}" >>"$out/fleet-connected.txt"
  [ "${connected:-0}" -ge "$agents" ] && break
  alive "${swarms[@]}" || { echo "bench_scale.sh: every swarm ended (see $out/swarm-*.txt)" >&2; break; }
done
event all_connected_ms "$(now_ms)"
event connected "${connected:-0}"
echo "    connected: ${connected:-0} of $agents"

# --- 2. steady -----------------------------------------------------------------------------------
echo "==> settling: ${settle}s"
nap "$(left "$settle")"
echo "==> steady state: ${steady}s"
event steady_from_ms "$(now_ms)"
cpu steady
scrape steady
nap "$(left "$steady")"
PHASE=steady rss
cpu push
scrape push

# --- 3. push -------------------------------------------------------------------------------------
echo "==> push: PUT /api/v1/configs/scale for every agent"
# config_json TAG: the config pushed, a collector's, with TAG in its first line.
config_json() {
  python3 - "$(date -u +%FT%TZ) $1" <<'PY'
import json, sys
body = f"""# scale benchmark, {sys.argv[1]}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 0.0.0.0:4317
  hostmetrics:
    collection_interval: 60s
    scrapers:
      cpu: {{}}
      memory: {{}}
processors:
  memory_limiter:
    check_interval: 1s
    limit_percentage: 75
  batch:
    timeout: 10s
exporters:
  otlp:
    endpoint: otel-gateway.observability.svc:4317
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [otlp]
    metrics:
      receivers: [otlp, hostmetrics]
      processors: [memory_limiter, batch]
      exporters: [otlp]
"""
print(json.dumps({"selector": "", "files": {"collector.yaml": body}}))
PY
}
config_json push >"$out/config.json"
put_ms=$(now_ms)
event put_ms "$put_ms"
watch push 30 &
curl -sf --max-time 60 "${auth[@]}" -X PUT -H 'Content-Type: application/json' \
  --data-binary "@$out/config.json" -o "$out/put.json" \
  -w '%{time_total}\n' "$api/api/v1/configs/scale" >"$out/put-time.txt"
event put_done_ms "$(now_ms)"
hash=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['hash'])" "$out/put.json" ||
  get /api/v1/configs/scale hash)
event hash "${hash:-?}"
# Until every swarm's agents reported APPLIED, and the API counts them all (30 s more at most).
applied=0 by_swarms=0 swarms_done_ms=
until_s=$(($(date +%s) + $(left "$push_wait")))
while [ "$(date +%s)" -lt "$until_s" ]; do
  nap 2
  by_swarms=$(progress applied)
  # A count of every agent's config state walks the whole fleet (seconds at 100,000 agents).
  applied=$(get "/api/v1/agents?config=applied&limit=1" total 60)
  echo "$(now_ms) ${applied:-?} $by_swarms" >>"$out/fleet-applied.txt"
  [ "${applied:-0}" -ge "$agents" ] && break
  if [ "$by_swarms" -ge "$agents" ] && [ -z "$swarms_done_ms" ]; then
    swarms_done_ms=$(now_ms)
    until_s=$(($(date +%s) + $(left 30)))
  fi
done
event all_applied_ms "$(now_ms)"
event applied "${applied:-0}"
cpu applied
scrape applied
echo "    applied: $by_swarms of $agents as the agents report, ${applied:-0} as the API counts"

# --- 4. API latency ------------------------------------------------------------------------------
echo "==> API latency: $samples samples each"
list="/api/v1/agents?selector=deployment.environment%3Dprod,cloud.region%3Deu-west-1&limit=50"
for _ in $(seq 1 "$samples"); do
  [ "$(left 1)" -gt 0 ] || break
  curl -s -o /dev/null --max-time 10 "${auth[@]}" -w '%{time_total}\n' \
    "$api/api/v1/fleet/health" >>"$out/api-health.txt" || true
  curl -s -o /dev/null --max-time 10 "${auth[@]}" -w '%{time_total}\n' \
    "$api$list" >>"$out/api-list.txt" || true
done
event api_list_path "$list"
scrape api

# --- 5. faults -----------------------------------------------------------------------------------
# push_again TAG: PUT a new config for every agent; events TAG_put_ms, then TAG_applied_ms and
# TAG_applied once the API counts every agent applied (or the bound passed).
push_again() {
  local tag=$1 n=0 until_s
  config_json "$tag" >"$out/config-$tag.json"
  event "${tag}_put_ms" "$(now_ms)"
  curl -sf --max-time 60 "${auth[@]}" -X PUT -H 'Content-Type: application/json' \
    --data-binary "@$out/config-$tag.json" -o /dev/null "$api/api/v1/configs/scale" ||
    echo "bench_scale.sh: PUT after $tag failed" >&2
  until_s=$(($(date +%s) + $(left "$push_wait")))
  while [ "$(date +%s)" -lt "$until_s" ]; do
    nap 2
    n=$(get "/api/v1/agents?config=applied&limit=1" total 60)
    echo "$(now_ms) ${n:-?}" >>"$out/fleet-applied-$tag.txt"
    [ "${n:-0}" -ge "$agents" ] && break
  done
  event "${tag}_applied_ms" "$(now_ms)"
  event "${tag}_applied" "${n:-0}"
  echo "    $tag: ${n:-0} of $agents applied as the API counts"
}
if [ "$faults" = 1 ]; then
  PHASE=pushed rss
  echo "==> fault: kill -9 gateway g1"
  watch gateway 30 &
  pids+=($!)
  event gateway_killed_ms "$(now_ms)"
  event gateway_agents "$(progress connected "$out/swarm-1.progress")"
  kill -KILL "$(cat "$CLUSTER_DIR/g1.pid")"
  nap 2
  back=0
  until_s=$(($(date +%s) + $(left 180)))
  while [ "$(date +%s)" -lt "$until_s" ]; do
    back=$(progress connected)
    [ "$back" -ge "$agents" ] && break
    nap 1
  done
  event gateway_back_ms "$(now_ms)"
  event gateway_back "$back"
  echo "    connected again: $back of $agents (as the swarms count)"
  push_again gateway
  echo "==> fault: kill -9 coordinator c3, and a push at once"
  watch coordinator 30 &
  pids+=($!)
  event coordinator_killed_ms "$(now_ms)"
  kill -KILL "$(cat "$CLUSTER_DIR/c3.pid")"
  push_again coordinator
  event coordinator_connected "$(get /api/v1/fleet/health connected_agents)"
fi

# --- 6. memory, stop -----------------------------------------------------------------------------
[ "$faults" = 1 ] || PHASE=pushed rss
echo "==> stopping the swarms and the cluster"
event stopping_ms "$(now_ms)"
# --- 7. summary: the EXIT trap stops everything, then writes it ----------------------------------
