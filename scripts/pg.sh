#!/usr/bin/env bash
# Throwaway PostgreSQL clusters for trying and testing lockledger's PostgreSQL mode.
#   ./scripts/pg.sh install      install Debian's postgresql if initdb is missing
#   ./scripts/pg.sh start DIR    start a cluster in DIR (created; must be absent or empty):
#                                127.0.0.1 on a free port, unix sockets in DIR, trust auth,
#                                a database `lockledger`; the last line on stdout is its URL,
#                                postgres://postgres@127.0.0.1:PORT/lockledger
#   ./scripts/pg.sh stop DIR     stop it (pg_ctl stop -m fast) and remove DIR
#   ./scripts/pg.sh url DIR      print the URL of the cluster running in DIR
# Sourced (`. scripts/pg.sh`), it only defines the functions (setup.sh uses pg_install).
#
# Invariants: every wait is bounded (pg_ctl -t, psql connect_timeout); initdb and pg_ctl
# run as the unprivileged `postgres` user when this runs as root (they refuse root), so
# DIR then belongs to postgres; `stop` removes only a directory that `start` made (it
# carries the marker file .lockledger-pg). Progress goes to stderr, the URL to stdout.

# The directory holding initdb and pg_ctl: PG_BIN if set, else where PATH finds initdb,
# else Debian's /usr/lib/postgresql/<newest>/bin. Fails (prints nothing) when none.
pg_bindir() {
  if [ -n "${PG_BIN:-}" ] && [ -x "$PG_BIN/initdb" ]; then
    echo "$PG_BIN"
    return 0
  fi
  local found
  if found=$(command -v initdb 2>/dev/null) && [ -n "$found" ]; then
    dirname "$(readlink -f "$found")"
    return 0
  fi
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$found" ] && [ -x "$found/initdb" ]; then
    echo "$found"
    return 0
  fi
  return 1
}

# Installs Debian's postgresql (server and client) when initdb cannot be found.
pg_install() {
  if pg_bindir >/dev/null; then
    return 0
  fi
  echo "setup: installing postgresql" >&2
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "pg.sh: postgresql is missing and installing it needs root (or sudo)" >&2
      return 1
    fi
    sudo=(sudo)
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  pg_bindir >/dev/null || {
    echo "pg.sh: postgresql was installed but initdb is still not found" >&2
    return 1
  }
}

# Runs a PostgreSQL server program as `postgres` when we are root, else as ourselves.
# (From /: a working directory closed to postgres, say /root, makes initdb fail.)
pg_as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

# Is something listening on 127.0.0.1:$1? (A refused connection means the port is free.)
pg_port_busy() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pg_start() {
  local dir=$1 bin port tries=0
  bin=$(pg_bindir) || {
    echo "pg.sh: initdb not found; run scripts/pg.sh install (or scripts/setup.sh --tests)" >&2
    return 1
  }
  if [ -e "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
    echo "pg.sh: $dir is not empty; stop that cluster first (scripts/pg.sh stop $dir)" >&2
    return 1
  fi
  dir=$(realpath -m "$dir")
  case "$dir" in
    *[[:space:]\'\"]*)
      echo "pg.sh: $dir: use a directory without spaces or quotes in its path" >&2
      return 1
      ;;
  esac
  mkdir -p "$dir"
  chmod 700 "$dir"
  touch "$dir/.lockledger-pg"
  if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres:postgres "$dir"
    if ! runuser -u postgres -- test -w "$dir"; then
      echo "pg.sh: user postgres cannot write $dir (a parent directory is closed to it); use a directory under /tmp" >&2
      rm -rf "$dir"
      return 1
    fi
  fi
  echo "pg.sh: initdb in $dir/data" >&2
  pg_as_owner "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync \
    >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    echo "pg.sh: initdb failed; scripts/pg.sh stop $dir removes $dir" >&2
    return 1
  }
  # A free port is only free until someone takes it: on a failed start, try another.
  while :; do
    tries=$((tries + 1))
    if [ "$tries" -gt 50 ]; then
      echo "pg.sh: found no free port" >&2
      return 1
    fi
    port=$((20000 + RANDOM % 30000))
    if pg_port_busy "$port"; then
      continue
    fi
    if pg_as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir" start >&2; then
      break
    fi
    if ! grep -q "could not bind\|Address already in use" "$dir/server.log"; then
      echo "pg.sh: the server did not start; its log, $dir/server.log:" >&2
      tail -n 20 "$dir/server.log" >&2
      echo "pg.sh: scripts/pg.sh stop $dir removes $dir" >&2
      return 1
    fi
  done
  echo "$port" >"$dir/port"
  PGCONNECT_TIMEOUT=10 "$bin/psql" -q -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres \
    -d postgres -c "CREATE DATABASE lockledger" >&2
  echo "pg.sh: running; stop with scripts/pg.sh stop $dir" >&2
  pg_url "$dir"
}

pg_url() {
  local dir
  dir=$(realpath -m "$1")
  [ -f "$dir/port" ] || {
    echo "pg.sh: no cluster started by pg.sh in $dir" >&2
    return 1
  }
  echo "postgres://postgres@127.0.0.1:$(cat "$dir/port")/lockledger"
}

# Does the postmaster named by DIR's pid file still run (a zombie does not count)?
pg_alive() {
  local pid state
  pid=$(head -n 1 "$1/data/postmaster.pid" 2>/dev/null) || return 1
  state=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
  case "$state" in Z*) return 1 ;; esac
}

pg_stop() {
  local dir bin
  dir=$(realpath -m "$1")
  if [ ! -e "$dir" ]; then
    echo "pg.sh: $dir does not exist; nothing to stop" >&2
    return 0
  fi
  if [ ! -f "$dir/.lockledger-pg" ]; then
    echo "pg.sh: $dir was not made by pg.sh start; not touching it" >&2
    return 1
  fi
  if [ -f "$dir/data/postmaster.pid" ]; then
    bin=$(pg_bindir) || {
      echo "pg.sh: pg_ctl not found" >&2
      return 1
    }
    if ! pg_as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >&2 \
      && pg_alive "$dir"; then
      echo "pg.sh: the server in $dir did not stop; $dir is left in place" >&2
      return 1
    fi
  fi
  rm -rf "$dir"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  case "${1:-}" in
    install) pg_install ;;
    start | stop | url)
      [ -n "${2:-}" ] || {
        echo "usage: $0 $1 DIR" >&2
        exit 2
      }
      [ "$1" != start ] || pg_install
      "pg_$1" "$2"
      ;;
    *)
      echo "usage: $0 install | start DIR | stop DIR | url DIR" >&2
      exit 2
      ;;
  esac
fi
