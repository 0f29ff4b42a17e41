#!/bin/sh
# Starts one Redis pod: as the primary, or as a replica of the primary the Sentinels name.
# Pod 0 is the primary only on a first start, when no Sentinel knows one yet.
set -eu
password=$(cat /etc/redis/auth/password)
self="${POD_NAME}.flotilla-redis-headless"
export REDISCLI_AUTH="$password"

primary=$(sh /etc/redis/known-primary.sh)

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
