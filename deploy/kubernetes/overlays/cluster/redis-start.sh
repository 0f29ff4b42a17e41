#!/bin/sh
# Starts one Redis pod: as the primary, or as a replica of the primary the Sentinels name.
# Pod 0 is the primary only on a first start, when no Sentinel knows one yet.
set -eu
password=$(cat /etc/redis/auth/password)
self="${POD_NAME}.flotilla-redis-headless"
export REDISCLI_AUTH="$password"

primary=""
for i in 0 1 2; do
  answer=$(timeout 3 redis-cli -h "flotilla-redis-sentinel-$i.flotilla-redis-sentinel-headless" \
    -p 26379 --raw sentinel get-master-addr-by-name mymaster 2>/dev/null | head -n 1) || true
  case "$answer" in
    flotilla-redis-*) primary="$answer"; break ;;
  esac
done
[ -n "$primary" ] || primary="flotilla-redis-0.flotilla-redis-headless"

conf=/run/redis/redis.conf
cp /etc/redis/redis.conf "$conf"
cat >>"$conf" <<CONF
requirepass "$password"
masterauth "$password"
# Sentinel hands out names, not pod IPs (which change on every restart).
replica-announce-ip $self
CONF
if [ "$primary" != "$self" ]; then
  echo "replicaof $primary 6379" >>"$conf"
  echo "starting as a replica of $primary"
else
  echo "starting as the primary"
fi
exec redis-server "$conf"
