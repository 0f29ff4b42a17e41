#!/bin/sh
# Prints the Redis primary the Sentinels name (asking each in turn), else Redis pod 0: the first
# primary, when no Sentinel knows one yet. Needs REDISCLI_AUTH. Used by redis-start.sh and
# sentinel-start.sh.
for i in 0 1 2; do
  answer=$(timeout 3 redis-cli -h "flotilla-redis-sentinel-$i.flotilla-redis-sentinel-headless" \
    -p 26379 --raw sentinel get-master-addr-by-name mymaster 2>/dev/null | head -n 1) || true
  case "$answer" in
    flotilla-redis-*) echo "$answer"; exit 0 ;;
  esac
done
echo "flotilla-redis-0.flotilla-redis-headless"
