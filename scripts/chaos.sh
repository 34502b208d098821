#!/usr/bin/env bash
# A randomized fault campaign (Jepsen-style) against a wharf cluster on this machine: three
# instances behind HAProxy (scripts/cluster.sh) on a private Postgres cluster and garage, behind
# an S3 proxy that can lose answers, with every instance's clock under libfaketime. Partners
# upload through the balancer while a nemesis kills, pauses and moves the clocks of instances,
# restarts or stops Postgres and makes S3 lose answers; then every fault is undone, the cluster
# settles and a checker compares what the clients were told with the bucket, the events table
# and what the webhook received. Exits 0 only when it finds no violation.
#
#   scripts/chaos.sh MINUTES [DIR]     MINUTES of faults (fractions allowed: 0.5); DIR keeps
#                                      everything (default: a new temporary directory)
#
# In DIR: report.txt and violations.json (the checker's findings, with evidence), ops.jsonl
# (every client operation and what the client saw), faults.jsonl (every fault, with its time),
# webhook.jsonl (every delivery), s3-lost.jsonl (every S3 answer lost), wharfK/err (instance
# K's log), pg/ (the Postgres cluster) and the cluster's own files (see scripts/cluster.sh).
# Uses the S3 server WHARF_TEST_S3_ENDPOINT (etc.) names, or starts garage. WHARF_BIN is the
# binary (default: target/debug/wharf, built if missing); CHAOS_SEED fixes the random choices
# (their timing still varies); CHAOS_CLIENTS (4) is the number of concurrent clients.
# Installs faketime, haproxy, PostgreSQL and paramiko when missing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/services.sh"

usage() { sed -n '2,20p' "$0" >&2; exit 2; }

MINUTES=${1:-}
[[ $MINUTES =~ ^[0-9]+(\.[0-9]+)?$ ]] || usage
SECONDS_OF_FAULTS=$(python3 -c "print(round(float('$MINUTES') * 60))")
DIR=${2:-$(mktemp -d "${TMPDIR:-/tmp}/wharf-chaos.XXXXXX")}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
SEED=${CHAOS_SEED:-$RANDOM$RANDOM}
CLIENTS=${CHAOS_CLIENTS:-4}
N=3
log "campaign directory: $DIR (seed $SEED)"

PG_BIN="" PG_DATA="" PG_PORT="" PROXY_PID="" RECEIVER_PID="" WORKLOAD_PID="" NEMESIS_PID=""
CLUSTER_STARTED=""

# Runs a Postgres tool as the owner of the private cluster (initdb refuses root).
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# pg_ctl for the private cluster, as one command line (for the nemesis).
pg_ctl_line() {
  local as=""
  if [ "$(id -u)" = 0 ]; then as="runuser -u postgres -- "; fi
  echo "${as}$PG_BIN/pg_ctl -D $PG_DATA -l $DIR/pg/postgres.log"
}

# shellcheck disable=SC2317 # reached from the EXIT trap
stop_pid() {  # PID: SIGTERM, then SIGKILL after 10 s
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317 # the EXIT trap
cleanup() {
  local rc=$? k pid
  trap - EXIT INT TERM
  stop_pid "$NEMESIS_PID"
  stop_pid "$WORKLOAD_PID"
  if [ -n "$CLUSTER_STARTED" ]; then
    # A paused instance would not act on SIGTERM: continue every one first.
    for ((k = 1; k <= N; k++)); do
      pid=$(cat "$DIR/wharf$k/pid" 2>/dev/null || true)
      if [ -n "$pid" ]; then kill -CONT "$pid" 2>/dev/null || true; fi
    done
    "$ROOT/scripts/cluster.sh" down "$DIR" >/dev/null 2>&1 || true
    for ((k = 1; k <= N; k++)); do stop_pid "$(cat "$DIR/wharf$k/pid" 2>/dev/null || true)"; done
  fi
  stop_pid "$PROXY_PID"
  stop_pid "$RECEIVER_PID"
  if [ -n "$PG_DATA" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
  fi
  stop_garage
  log "campaign directory kept: $DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

install_tools() {
  need_cmd python3 python3
  need_cmd curl curl
  need_cmd haproxy haproxy
  need_cmd faketime faketime
  need_cmd psql postgresql-client
  if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then apt_install postgresql; fi
  if ! python3 -c 'import paramiko' 2>/dev/null; then
    log "installing paramiko"
    python3 -m pip install --quiet paramiko >&2 2>/dev/null \
      || python3 -m pip install --quiet --break-system-packages paramiko >&2 2>/dev/null \
      || apt_install python3-paramiko
  fi
}

# A Postgres cluster of its own (initdb + pg_ctl, trust auth, a free port), so the nemesis
# can restart it without disturbing anything else on the machine. Sets PG_URL.
start_postgres() {
  PG_BIN=$(dirname "$(compgen -G "/usr/lib/postgresql/*/bin/initdb" | sort -V | tail -n 1)")
  PG_PORT=$(free_port)
  mkdir -p "$DIR/pg"
  if [ "$(id -u)" = 0 ]; then
    chmod a+x "$DIR"
    chown postgres: "$DIR/pg"
    if ! runuser -u postgres -- test -w "$DIR/pg"; then
      # The postgres user cannot reach DIR (a private parent directory): keep the cluster
      # in a directory of its own, linked from DIR.
      local elsewhere
      elsewhere=$(mktemp -d "/tmp/wharf-chaos-pg.XXXXXX")
      chown postgres: "$elsewhere"
      rmdir "$DIR/pg" && ln -s "$elsewhere" "$DIR/pg"
    fi
  fi
  PG_DATA=$DIR/pg/data
  as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 >"$DIR/pg/initdb.log" 2>&1 \
    || { cat "$DIR/pg/initdb.log" >&2; return 1; }
  cat >> "$PG_DATA/postgresql.conf" <<EOF
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR/pg'
max_connections = 200
EOF
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$DIR/pg/postgres.log" -w start >/dev/null </dev/null
  PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/wharf"
  psql "postgres://postgres@127.0.0.1:$PG_PORT/postgres" -qc "CREATE DATABASE wharf" >&2
  log "private PostgreSQL on 127.0.0.1:$PG_PORT ($PG_DATA)"
}

start_proxy() {  # the S3 fault proxy in front of garage; sets PROXY_PORT, CONTROL_PORT
  PROXY_PORT=$(free_port); CONTROL_PORT=$(free_port)
  python3 "$ROOT/scripts/chaos_s3_proxy.py" "$PROXY_PORT" "${WHARF_TEST_S3_ENDPOINT#http://}" \
    "$CONTROL_PORT" "$DIR/s3-lost.jsonl" </dev/null >"$DIR/s3-proxy.log" 2>&1 &
  PROXY_PID=$!
  if ! wait_port 127.0.0.1 "$PROXY_PORT" 10 || ! wait_port 127.0.0.1 "$CONTROL_PORT" 10; then
    log "the S3 proxy did not start:"; cat "$DIR/s3-proxy.log" >&2; return 1
  fi
}

start_receiver() {  # the webhook sink; sets HOOK_PORT
  HOOK_PORT=$(free_port)
  python3 "$ROOT/scripts/chaos.py" receiver --port "$HOOK_PORT" --out "$DIR/webhook.jsonl" \
    --secret s </dev/null >"$DIR/webhook.log" 2>&1 &
  RECEIVER_PID=$!
  wait_port 127.0.0.1 "$HOOK_PORT" 10 \
    || { log "the webhook receiver did not start:"; cat "$DIR/webhook.log" >&2; return 1; }
}

start_cluster() {  # three instances behind HAProxy, on a loopback net and passive range of their own
  local attempt
  for attempt in 1 2 3; do
    CLUSTER_STARTED=1
    if CLUSTER_NET=${CLUSTER_NET:-127.$((10 + RANDOM % 200)).$((1 + RANDOM % 200))} \
      CLUSTER_PASSIVE_BASE=${CLUSTER_PASSIVE_BASE:-$((10000 + (RANDOM % 100) * 100))} \
      CLUSTER_FAKETIME=1 \
      WHARF_DATABASE__URL=$PG_URL \
      WHARF_STORAGE__DEFAULT_HOME="s3://$WHARF_TEST_S3_BUCKET/$PREFIX" \
      WHARF_STORAGE__S3__ENDPOINT="http://127.0.0.1:$PROXY_PORT" \
      WHARF_STORAGE__S3__REGION=$WHARF_TEST_S3_REGION \
      WHARF_STORAGE__S3__FORCE_PATH_STYLE=true \
      WHARF_STORAGE__S3__PART_SIZE=5MiB \
      WHARF_STORAGE__S3__REQUEST_TIMEOUT=5s \
      WHARF_RECOVERY__HEARTBEAT=2s \
      WHARF_RECOVERY__INTERVAL=2s \
      WHARF_LOG__LEVEL=info \
      WHARF_EVENTS__SINKS="[{name=\"hook\", type=\"webhook\", url=\"http://127.0.0.1:$HOOK_PORT/\", secret=\"s\"}]" \
      "$ROOT/scripts/cluster.sh" up "$N" "$DIR" </dev/null >"$DIR/cluster-up.log" 2>&1; then
      return 0
    fi
    log "cluster.sh up failed (attempt $attempt):"; tail -n 20 "$DIR/cluster-up.log" >&2
  done
  return 1
}

# shellcheck source=/dev/null # written by cluster.sh
wharf_cli() { (set -a; . "$DIR/shared.env"; set +a; exec "$WHARF_BIN" "$@"); }

add_accounts() {  # two partners with random passwords, in DIR/accounts.json
  local u pw list=()
  for u in acme globex; do
    pw=$(od -vAn -N18 -tx1 /dev/urandom | tr -d ' \n')
    echo "$pw" | wharf_cli user add "$u" --password-stdin >/dev/null
    list+=("{\"name\": \"$u\", \"password\": \"$pw\"}")
  done
  (umask 077; IFS=,; echo "[${list[*]}]" > "$DIR/accounts.json")
}

install_tools
if [ -z "${WHARF_BIN:-}" ]; then
  WHARF_BIN=$(cargo metadata --manifest-path "$ROOT/Cargo.toml" --format-version 1 --no-deps \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/wharf
  [ -x "$WHARF_BIN" ] || cargo build --manifest-path "$ROOT/Cargo.toml" -q --bin wharf
fi
export WHARF_BIN
start_postgres
ensure_garage
PREFIX="chaos-$(od -vAn -N6 -tx1 /dev/urandom | tr -d ' \n')/"
start_proxy
start_receiver
start_cluster
# shellcheck source=/dev/null # written by cluster.sh
. "$DIR/cluster.env"
add_accounts
log "cluster up (sftp on 127.0.0.1:$LB_SFTP, bucket prefix $PREFIX); $MINUTES minutes of faults"

started=$(date +%s)
python3 "$ROOT/scripts/chaos.py" workload --port "$LB_SFTP" --accounts "$DIR/accounts.json" \
  --prefix "$PREFIX" --log "$DIR/ops.jsonl" --stop-file "$DIR/stop" --clients "$CLIENTS" \
  --seed "$SEED" </dev/null >"$DIR/workload.log" 2>&1 &
WORKLOAD_PID=$!
python3 "$ROOT/scripts/chaos.py" nemesis --dir "$DIR" --seconds "$SECONDS_OF_FAULTS" \
  --instances "$N" --cluster-sh "$ROOT/scripts/cluster.sh" --pg-ctl "$(pg_ctl_line)" \
  --proxy-control "http://127.0.0.1:$CONTROL_PORT" --log "$DIR/faults.jsonl" --seed "$SEED" \
  </dev/null 2>"$DIR/nemesis.log" &
NEMESIS_PID=$!
healed=0
wait "$NEMESIS_PID" || healed=$?
NEMESIS_PID=""
[ "$healed" = 0 ] || log "the nemesis could not make the cluster whole again (see $DIR/faults.jsonl)"
log "faults over after $(($(date +%s) - started)) s; letting the clients finish"
touch "$DIR/stop"
wait "$WORKLOAD_PID" || log "the workload exited with $? (see $DIR/workload.log)"
WORKLOAD_PID=""
log "workload done after $(($(date +%s) - started)) s; settling and checking"

status=0
python3 "$ROOT/scripts/chaos.py" check --dir "$DIR" --pg-url "$PG_URL" \
  --s3-endpoint "$WHARF_TEST_S3_ENDPOINT" --region "$WHARF_TEST_S3_REGION" \
  --bucket "$WHARF_TEST_S3_BUCKET" --prefix "$PREFIX" || status=$?
[ "$healed" = 0 ] || { echo "violation: the cluster was not whole again after the faults"; status=1; }
echo "campaign: $MINUTES minutes of faults, $(($(date +%s) - started)) s in all; directory $DIR"
exit "$status"
