#!/bin/sh
# First start: make the cluster (password from POSTGRES_PASSWORD), the read-only role
# assay_reader (password from POSTGRES_READER_PASSWORD, if set) and run /docker-entrypoint-
# initdb.d/*.sql once; then serve on every address of the container's network and on the Unix
# socket in /run/postgresql (compose.yaml shares that folder with the sql workers).
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}" > "$pwfile"
    # Password authentication on the socket too: the sql workers' containers reach it.
    initdb -D "$PGDATA" -U postgres --pwfile="$pwfile" --auth-host=scram-sha-256 --auth-local=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
    export PGPASSWORD="$POSTGRES_PASSWORD"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=/tmp" -w start >/dev/null
    if [ -n "${POSTGRES_READER_PASSWORD:-}" ]; then
        # Reads every table of every database, and nothing more (docs/sql.md).
        psql -v ON_ERROR_STOP=1 -h /tmp -U postgres -d postgres -v pw="$POSTGRES_READER_PASSWORD" >/dev/null <<'SQL'
CREATE ROLE assay_reader LOGIN PASSWORD :'pw';
GRANT pg_read_all_data TO assay_reader;
SQL
    fi
    for f in /docker-entrypoint-initdb.d/*.sql; do
        [ -e "$f" ] && psql -v ON_ERROR_STOP=1 -h /tmp -U postgres -f "$f" >/dev/null
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    unset PGPASSWORD
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/run/postgresql
