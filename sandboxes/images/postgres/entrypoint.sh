#!/bin/sh
# First start: make the cluster (password from POSTGRES_PASSWORD) and run /docker-entrypoint-
# initdb.d/*.sql once; then serve on every address of the container's network.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}" > "$pwfile"
    initdb -D "$PGDATA" -U postgres --pwfile="$pwfile" --auth-host=scram-sha-256 --auth-local=trust >/dev/null
    rm -f "$pwfile"
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [ -d /docker-entrypoint-initdb.d ]; then
        pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
        for f in /docker-entrypoint-initdb.d/*.sql; do
            [ -e "$f" ] && psql -v ON_ERROR_STOP=1 -U postgres -f "$f" >/dev/null
        done
        pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    fi
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp
