#!/usr/bin/env bash
# Make sure the machine's shared Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432) are up; start them with
# the machine's documented commands if they are down. Tests that kill a service start their own instance.
set -uo pipefail

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }

if ! redis_up; then
  echo "starting redis-server on 127.0.0.1:6379"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi
if ! pg_up; then
  echo "starting PostgreSQL on 127.0.0.1:5432"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
for _ in $(seq 1 30); do
  redis_up && pg_up && break
  sleep 1
done
redis_up || { echo "Redis is not reachable on 127.0.0.1:6379" >&2; exit 1; }
pg_up || { echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
echo "services: redis ok, postgresql ok"
