# shellcheck shell=bash disable=SC2034 # PG_INST_SSL_CERT is read by up.sh
# PostgreSQL clusters for the tests: sourced by up.sh (after common.sh), never
# run. pg_instance sets up and starts one cluster from the files in
# tests/infra/postgres/; up.sh calls it for the Debian server ("pg") and
# pg-latest.sh for the newer one ("pg-latest").

# pg_root_for NAME: create the instance directory .infra/NAME owned by the
# postgres user and print its physical path. If that user cannot reach the
# clone (e.g. it sits under a 0700 home directory) or the socket path would
# exceed the 107-byte unix socket limit, the directory lives in /var/tmp and
# .infra/NAME is a symlink to it.
pg_root_for() {
    local name=$1 link="$INFRA_DIR/$1" root
    if [[ ! -e $link && ! -L $link ]]; then
        mkdir -p "$link"
        chown "$PG_OS_USER:" "$link"
        local sock="$link/socket/.s.PGSQL.$PG_LATEST_PORT"
        if ! run_as_pg test -w "$link" || ((${#sock} > 100)); then
            rmdir "$link"
            root="/var/tmp/outbox-relay-$(printf '%s' "$REPO_ROOT" | sha1sum | cut -c1-12)/$name"
            log "postgres user cannot use $link; keeping $name in $root (symlinked)"
            mkdir -p "$root"
            chmod 755 "$(dirname "$root")"
            ln -s "$root" "$link"
        fi
    fi
    root=$(pg_root_path "$name")
    mkdir -p "$root"
    chown "$PG_OS_USER:" "$root"
    printf '%s\n' "$root"
}

# pg_instance NAME BIN_DIR PORT: init (once), configure and start one cluster.
# Sets PG_INST_SSL_CERT to the certificate path, or "" without SSL support.
PG_INST_SSL_CERT=""
pg_instance() {
    local name=$1 bin=$2 port=$3
    local root data sock logfile
    root=$(pg_root_for "$name")
    data="$root/data"
    sock="$root/socket"
    logfile="$root/postgres.log"
    run_as_pg mkdir -p "$sock"

    if [[ ! -f $data/PG_VERSION ]]; then
        log "$name: initdb in $data"
        rm -rf "$data"
        # Bootstrap superuser "postgres" has no password, so it can only log
        # in over the trusted unix socket; tests use the roles of roles.sql.
        run_logged "$root/initdb.log" run_as_pg "$bin/initdb" -D "$data" -U postgres \
            -E UTF8 --locale=C --auth-local=trust --auth-host=scram-sha-256
    fi

    # SSL only where the server was built with OpenSSL: the PyPI PostgreSQL 18
    # build is not, Debian's is.
    local ssl=off
    PG_INST_SSL_CERT=""
    if "$bin/pg_config" --configure | grep -Eq -- "--with-(ssl=)?openssl"; then
        ssl=on
        PG_INST_SSL_CERT="$root/server.crt"
        if [[ ! -f $root/server.key || ! -f $root/server.crt ]]; then
            # Self-signed: the certificate is its own CA, so tests can pass it
            # as sslrootcert for verify-ca / verify-full (SAN covers both the
            # name and the IP clients connect to).
            run_logged "$root/openssl.log" openssl req -x509 -newkey rsa:2048 -nodes -sha256 \
                -days 3650 -subj "/CN=localhost" \
                -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
                -keyout "$root/server.key" -out "$root/server.crt"
            chown "$PG_OS_USER:" "$root/server.key" "$root/server.crt"
            chmod 600 "$root/server.key"
            chmod 644 "$root/server.crt"
        fi
    fi

    # Our settings live in their own file, included from postgresql.conf, and
    # are rewritten on every run so edits to the templates take effect.
    render "$INFRA_SCRIPT_DIR/postgres/postgresql.conf" "$data/outbox-relay.conf" \
        HOST="$HOST" PORT="$port" SOCKET_DIR="$sock" SSL="$ssl" \
        SSL_CERT_FILE="$root/server.crt" SSL_KEY_FILE="$root/server.key"
    grep -q "^include 'outbox-relay.conf'" "$data/postgresql.conf" ||
        echo "include 'outbox-relay.conf'" >>"$data/postgresql.conf"
    render "$INFRA_SCRIPT_DIR/postgres/pg_hba.conf" "$data/pg_hba.conf"
    chown "$PG_OS_USER:" "$data/outbox-relay.conf" "$data/pg_hba.conf"

    if pid_matches "$data/postmaster.pid" "$data"; then
        # Already running: pick up any hba/config change without a restart.
        run_as_pg "$bin/pg_ctl" -D "$data" reload >/dev/null
    else
        if port_open "$port"; then die "$name: port $port is taken by a process up.sh did not start"; fi
        log "$name: starting on $HOST:$port"
        if [[ -f $logfile ]]; then mv -f "$logfile" "$logfile.prev"; fi
        run_as_pg touch "$logfile"
        if ! run_as_pg "$bin/pg_ctl" -D "$data" -l "$logfile" -w -t 60 start >"$root/pg_ctl.log" 2>&1 9>&-; then
            cat "$root/pg_ctl.log" >&2
            fail_with_log "$name: PostgreSQL did not start" "$logfile"
        fi
    fi

    # Roles and grants, idempotently, on every run so they cannot drift.
    run_logged "$root/roles.log" "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$sock" -p "$port" \
        -U postgres -d postgres -f "$INFRA_SCRIPT_DIR/postgres/roles.sql"

    # Prove the TCP + password path works (and TLS, where enabled).
    local conn="host=$HOST port=$port dbname=outbox user=outbox password=outbox"
    if [[ $ssl == on ]]; then
        conn+=" sslmode=verify-full sslrootcert=$root/server.crt"
    else
        conn+=" sslmode=disable"
    fi
    "$bin/psql" -X -Atq "$conn" -c 'SELECT 1' >/dev/null 2>"$root/check.log" ||
        fail_with_log "$name: cannot log in as outbox over TCP ($(cat "$root/check.log"))" "$logfile"
}
