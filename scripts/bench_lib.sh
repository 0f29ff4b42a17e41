# shellcheck shell=bash disable=SC2154 # $out is set by the script that sources this
# Shared by the benchmark scripts (sourced after they set $out): the machine a run was on, the
# processes a run started (stopped at exit, with any local cluster under $out/cluster), and
# waiting for a port.

# machine_info LINE...: the machine, the commit and the lines given, on stdout and in
# $out/machine.txt.
machine_info() {
  {
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse --short HEAD)$(git diff HEAD --quiet || echo ' (with uncommitted changes)')"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs) x $(nproc)"
    echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "kernel: $(uname -r)"
    echo "open files per process: $(ulimit -n)"
    printf '%s\n' "$@"
  } | tee "$out/machine.txt"
}

# Processes a run started: killed at exit.
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  CLUSTER_DIR=$out/cluster scripts/cluster.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

# wait_port PORT: until something listens on 127.0.0.1:PORT (10 s at most).
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$(basename "$0"): nothing listens on 127.0.0.1:$1" >&2
  return 1
}

# bench_pki FLOTILLA: a CA, a server certificate and one client certificate under $out/pki (made
# by FLOTILLA certs init); sets tls (the swarm's flags) and echo_tls (a server's, mutual TLS).
bench_pki() {
  local pki=$out/pki
  "$1" certs init --out "$pki" --clients 1 >/dev/null
  tls=(--ca "$pki/ca.pem" --cert "$pki/client-1.pem" --key "$pki/client-1-key.pem")
  echo_tls=(--tls-cert "$pki/server.pem" --tls-key "$pki/server-key.pem" --client-ca "$pki/ca.pem")
}
