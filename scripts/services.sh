#!/usr/bin/env bash
# Make sure the local Redis and PostgreSQL that the scale-out tests use are running (loopback only).
# On the project's machines both are installed and usually already started; this starts a stopped one.
set -uo pipefail

redis_up() { (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; }
pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }

if ! redis_up && command -v redis-server >/dev/null; then
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi
if ! pg_up && command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
for _ in $(seq 1 30); do
    if redis_up && pg_up; then
        echo "services: redis and postgresql are up"
        exit 0
    fi
    sleep 1
done
echo "services: redis up: $(redis_up && echo yes || echo no), postgresql up: $(pg_up && echo yes || echo no)"
exit 0
