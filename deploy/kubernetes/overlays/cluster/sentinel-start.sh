#!/bin/sh
# Starts one Sentinel. Sentinel rewrites its config file as it learns (the current primary, the
# replicas, the other Sentinels), so the file lives on the pod's volume and survives restarts:
# after a failover, a restarted Sentinel still knows which pod is the primary. (It also keeps
# the password: after changing flotilla-redis-auth, delete /data/sentinel.conf on each Sentinel
# in turn, or SENTINEL SET mymaster auth-pass / CONFIG SET requirepass on each.)
set -eu
password=$(cat /etc/redis/auth/password)
self="${POD_NAME}.flotilla-redis-sentinel-headless"
conf=/data/sentinel.conf

if [ ! -s "$conf" ]; then
  # First start: the primary another Sentinel already knows, else Redis pod 0 (the first primary).
  export REDISCLI_AUTH="$password"
  primary=$(sh /etc/redis/known-primary.sh)
  cp /etc/redis/sentinel.conf "$conf.new"
  cat >>"$conf.new" <<CONF
sentinel announce-ip $self
sentinel announce-port 26379
# Two of three Sentinels must agree the primary is down.
sentinel monitor mymaster $primary 6379 2
# Down after 5 s; the election and promotion take a few seconds more. That is close to the
# 10 s a coordinator keeps acting after its last lease renewal (--lease-ttl 15s, renewed every
# 5 s): shards whose leases lapse meanwhile are taken again once the new primary answers
# (docs/operations.md, "Redis restarts or is unreachable").
sentinel down-after-milliseconds mymaster 5000
sentinel failover-timeout mymaster 60000
sentinel parallel-syncs mymaster 1
sentinel auth-pass mymaster "$password"
sentinel sentinel-pass "$password"
# Clients (Flotilla) and other Sentinels authenticate with the same password as Redis, so the
# password in Flotilla's redis+sentinel:// URL works for both.
requirepass "$password"
CONF
  mv "$conf.new" "$conf"
fi
exec redis-server "$conf" --sentinel
