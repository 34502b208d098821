#!/usr/bin/env bash
# A wharf cluster on this machine, from the recipe in deploy/: N instances on one Postgres
# database and one bucket (garage, started when no S3 endpoint is given), behind HAProxy with
# deploy/haproxy.cfg rendered for them. For tests, and for anyone evaluating wharf.
#
#   scripts/cluster.sh up N [DIR]      start; writes DIR/cluster.env (ports, pids) and prints it
#   scripts/cluster.sh stop K [DIR]    SIGTERM instance K (a rolling restart's first half); waits
#   scripts/cluster.sh kill K [DIR]    SIGKILL instance K
#   scripts/cluster.sh start K [DIR]   start instance K again; waits until its /readyz is 200
#   scripts/cluster.sh down [DIR]      stop everything it started
#
# DIR defaults to ./cluster. Instance K listens on CLUSTER_NET.K (default 127.0.1.K: every
# 127/8 address is this machine's) on the recipe's ports, and gets the passive range
# CLUSTER_PASSIVE_BASE + 100 (K-1) (default 50000; pick one outside the ephemeral port range,
# since HAProxy must bind all of it); HAProxy listens on 127.0.0.1 on free ports. Everything the instances read comes from the environment, as in
# deploy/wharf.env.example: WHARF_DATABASE__URL (default: a new database on the local
# Postgres), WHARF_STORAGE__DEFAULT_HOME with WHARF_STORAGE__S3__* and AWS_* (default: a
# garage bucket), WHARF_EVENTS__SINKS and any other WHARF_* setting. WHARF_BIN is the binary
# (default: target/debug/wharf, built if missing). Installs haproxy when missing.
#
# CLUSTER_FAKETIME=1 (given to `up`, remembered for `start`) runs every instance under
# libfaketime (installing the faketime package when missing) with its clock offset read from
# DIR/wharfK/faketime at every call, "+0s" at first: write "-40s" or "+25s" there to move
# instance K's clock at once (its monotonic clock is left alone).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/services.sh"

CMD=${1:-}
NET=${CLUSTER_NET:-127.0.1}
PASSIVE_BASE=${CLUSTER_PASSIVE_BASE:-50000}

usage() { sed -n '2,24p' "$0" >&2; exit 2; }

addr() { echo "$NET.$1"; }

wait_ready() {  # K seconds
  local i a; a=$(addr "$1")
  for ((i = 0; i < $2 * 10; i++)); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$a:9464/readyz" 2>/dev/null)" = 200 ] && return 0
    sleep 0.1
  done
  log "instance $1 did not become ready; its log:"; tail -n 20 "$DIR/wharf$1/err" >&2; return 1
}

start_instance() {  # K
  local k=$1 a; a=$(addr "$1")
  local lo=$((PASSIVE_BASE + 100 * (k - 1)))
  mkdir -p "$DIR/wharf$k"
  local faketime=""
  if [ "${CLUSTER_FAKETIME:-0}" = 1 ]; then
    faketime=$(faketime_lib)
    [ -f "$DIR/wharf$k/faketime" ] || echo "+0s" > "$DIR/wharf$k/faketime"
  fi
  (
    cd "$DIR/wharf$k"
    set -a; . "$DIR/shared.env"; set +a
    if [ -n "$faketime" ]; then
      export LD_PRELOAD=$faketime FAKETIME_TIMESTAMP_FILE=$DIR/wharf$k/faketime \
        FAKETIME_NO_CACHE=1 FAKETIME_DONT_FAKE_MONOTONIC=1
    fi
    export WHARF_SFTP__LISTEN=$a:2222 WHARF_FTPS__LISTEN=$a:2121 WHARF_FTPS__IMPLICIT_LISTEN=$a:2990 \
      WHARF_METRICS__LISTEN=$a:9464 WHARF_FTPS__PASSIVE_PORTS=$lo-$((lo + 99))
    exec "$WHARF_BIN" serve > "$DIR/wharf$k/out" 2>> "$DIR/wharf$k/err"
  ) &
  echo $! > "$DIR/wharf$k/pid"
  wait_ready "$k" 60
}

faketime_lib() {  # the path of libfaketime.so.1
  local lib
  for lib in /usr/lib/*/faketime/libfaketime.so.1; do
    [ -f "$lib" ] && { echo "$lib"; return 0; }
  done
  log "libfaketime.so.1 not found under /usr/lib/*/faketime/"; return 1
}

render_haproxy() {  # N -> DIR/haproxy.cfg, from deploy/haproxy.cfg
  python3 - "$ROOT/deploy/haproxy.cfg" "$DIR/haproxy.cfg" "$1" "$NET" "$PASSIVE_BASE" \
    "$LB_SFTP" "$LB_FTPS" "$LB_FTPS_IMPLICIT" <<'EOF'
import re, sys
src, dst, n, net, pbase, sftp, ftps, implicit = sys.argv[1:]
n, pbase = int(n), int(pbase)
binds = {"22": sftp, "21": ftps, "990": implicit}
out, block = [], []

def flush():
    # A passive frontend/backend pair written for wharf1 is repeated for every instance;
    # those for wharf2.. in the recipe are dropped.
    global block
    text = "".join(block)
    block = []
    m = re.search(r"ftps_passive_wharf(\d+)", text)
    if not m:
        out.append(text)
        return
    if m.group(1) != "1":
        return
    for k in range(1, n + 1):
        lo = pbase + 100 * (k - 1)
        t = re.sub(r"bind :\d+-\d+", f"bind 127.0.0.1:{lo}-{lo + 99}", text)
        t = t.replace("wharf1", f"wharf{k}").replace("10.0.0.11", f"{net}.{k}")
        out.append(t)

for line in open(src):
    if re.match(r"(frontend|backend|global|defaults)\b", line):
        flush()
    # A machine's default file-descriptor limit holds a few thousand connections.
    line = re.sub(r"^(\s*)maxconn \d+", r"\1maxconn 4000", line)
    # Without SO_REUSEPORT a port another process holds is an error, not silently shared.
    if line.strip() == "global":
        line += "    noreuseport\n"
    m = re.match(r"(\s*)bind :(\d+)\s*$", line)
    if m and m.group(2) in binds:
        line = f"{m.group(1)}bind 127.0.0.1:{binds[m.group(2)]}\n"
    m = re.match(r"(\s*)server wharf(\d+) 10\.0\.0\.1\d(:\d+)?(.*)$", line)
    if m and "ftps_passive" not in "".join(block):
        # The first server line of a backend stands for all N.
        if m.group(2) == "1":
            for k in range(1, n + 1):
                block.append(f"{m.group(1)}server wharf{k} {net}.{k}{m.group(3) or ''}{m.group(4)}\n")
        continue
    block.append(line)
flush()
open(dst, "w").write("".join(out))
EOF
}

# Stops what it started; `up` calls it when a step fails.
down() {
  [ -f "$DIR/haproxy.pid" ] && kill "$(cat "$DIR/haproxy.pid")" 2>/dev/null || true
  for p in "$DIR"/wharf*/pid; do [ -f "$p" ] && kill -TERM "$(cat "$p")" 2>/dev/null || true; done
  [ -f "$DIR/garage.pid" ] && kill "$(cat "$DIR/garage.pid")" 2>/dev/null || true
  # Until the instances are gone (their shutdown grace), so a cluster started next on the
  # same addresses finds them free.
  local p pid i
  for p in "$DIR"/wharf*/pid; do
    [ -f "$p" ] || continue
    pid=$(cat "$p")
    for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
}

DIR=""
case "$CMD" in
  up)
    N=${2:-3}; DIR=$(mkdir -p "${3:-cluster}" && cd "${3:-cluster}" && pwd)
    trap 'log "cluster.sh up failed at line $LINENO: $BASH_COMMAND"; cat "$DIR/haproxy.log" >&2 2>/dev/null; down' ERR
    need_cmd haproxy haproxy
    need_cmd openssl openssl
    if [ "${CLUSTER_FAKETIME:-0}" = 1 ]; then need_cmd faketime faketime; fi
    if [ -z "${WHARF_BIN:-}" ]; then
      WHARF_BIN=$(cargo metadata --manifest-path "$ROOT/Cargo.toml" --format-version 1 --no-deps \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/wharf
      [ -x "$WHARF_BIN" ] || cargo build --manifest-path "$ROOT/Cargo.toml" -q
    fi
    : > "$DIR/shared.env"
    if [ -z "${WHARF_DATABASE__URL:-}" ]; then
      ensure_postgres
      db="wharf_cluster_$$"
      psql "$WHARF_TEST_POSTGRES_URL" -qc "CREATE DATABASE $db" >&2
      WHARF_DATABASE__URL="${WHARF_TEST_POSTGRES_URL%/*}/$db"
    fi
    echo "WHARF_DATABASE__URL=$WHARF_DATABASE__URL" >> "$DIR/shared.env"
    if [ -z "${WHARF_STORAGE__DEFAULT_HOME:-}" ]; then
      ensure_garage
      echo "$WHARF_GARAGE_PID" > "$DIR/garage.pid"
      cat >> "$DIR/shared.env" <<EOF
WHARF_STORAGE__DEFAULT_HOME=s3://$WHARF_TEST_S3_BUCKET/cluster-$$/
WHARF_STORAGE__S3__ENDPOINT=$WHARF_TEST_S3_ENDPOINT
WHARF_STORAGE__S3__REGION=$WHARF_TEST_S3_REGION
WHARF_STORAGE__S3__FORCE_PATH_STYLE=true
AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
EOF
    fi
    # One identity for partners: host keys made once, shared; one FTPS certificate.
    mkdir -p "$DIR/keys"
    [ -f "$DIR/keys/ftps.crt" ] || openssl req -x509 -newkey rsa:2048 -nodes -days 30 \
      -subj "/CN=wharf-cluster" -keyout "$DIR/keys/ftps.key" -out "$DIR/keys/ftps.crt" 2>/dev/null
    # The recipe's settings (deploy/wharf.env.example), then whatever the caller set.
    cat >> "$DIR/shared.env" <<EOF
WHARF_SFTP__HOST_KEY_DIR=$DIR/keys
WHARF_FTPS__CERT=$DIR/keys/ftps.crt
WHARF_FTPS__KEY=$DIR/keys/ftps.key
WHARF_FTPS__PASSIVE_HOST=127.0.0.1
WHARF_SECURITY__PROXY_PROTOCOL=true
WHARF_SECURITY__PROXY_TRUSTED=["127.0.0.0/8"]
WHARF_SFTP__DRAIN_DELAY=3s
WHARF_SFTP__SHUTDOWN_GRACE=45s
WHARF_SFTP__MAX_SESSIONS_PER_IP=1000
EOF
    # The caller's WHARF_* settings and AWS_* credentials win over the recipe's; every
    # value is quoted for sourcing (sink lists hold spaces and quotes).
    python3 - "$DIR/shared.env" <<'EOF'
import os, re, shlex, sys
p = sys.argv[1]
out = {}
for line in open(p):
    k, _, v = line.rstrip("\n").partition("=")
    if k:
        out[k] = v
per_instance = {"WHARF_SFTP__LISTEN", "WHARF_FTPS__LISTEN", "WHARF_FTPS__IMPLICIT_LISTEN",
                "WHARF_METRICS__LISTEN", "WHARF_FTPS__PASSIVE_PORTS"}
for k, v in os.environ.items():
    if (re.match(r"WHARF_[A-Z0-9_]+__", k) or k.startswith("AWS_")) and k not in per_instance:
        out[k] = v
open(p, "w").write("".join(f"{k}={shlex.quote(v)}\n" for k, v in out.items()))
EOF
    (set -a; . "$DIR/shared.env"; "$WHARF_BIN" migrate; "$WHARF_BIN" hostkey list > /dev/null) >&2
    LB_SFTP=$(free_port); LB_FTPS=$(free_port); LB_FTPS_IMPLICIT=$(free_port)
    render_haproxy "$N"
    haproxy -c -q -f "$DIR/haproxy.cfg" >&2
    for ((k = 1; k <= N; k++)); do start_instance "$k"; done
    haproxy -f "$DIR/haproxy.cfg" -D -p "$DIR/haproxy.pid" </dev/null >"$DIR/haproxy.log" 2>&1
    trap - ERR
    wait_port 127.0.0.1 "$LB_SFTP" 10
    cat > "$DIR/cluster.env" <<EOF
CLUSTER_N=$N
CLUSTER_NET=$NET
CLUSTER_PASSIVE_BASE=$PASSIVE_BASE
CLUSTER_FAKETIME=${CLUSTER_FAKETIME:-0}
WHARF_BIN=$WHARF_BIN
LB_SFTP=$LB_SFTP
LB_FTPS=$LB_FTPS
LB_FTPS_IMPLICIT=$LB_FTPS_IMPLICIT
EOF
    cat "$DIR/cluster.env"
    log "cluster up: sftp -P $LB_SFTP USER@127.0.0.1 (create users with: (set -a; . $DIR/shared.env; $WHARF_BIN user add …))"
    ;;
  stop|kill|start)
    K=${2:?instance number}; DIR=$(cd "${3:-cluster}" && pwd)
    . "$DIR/cluster.env"
    NET=$CLUSTER_NET PASSIVE_BASE=$CLUSTER_PASSIVE_BASE
    pid=$(cat "$DIR/wharf$K/pid" 2>/dev/null || true)
    case "$CMD" in
      stop)
        [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 900; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done ;;
      kill)
        [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done ;;
      start) start_instance "$K" ;;
    esac
    ;;
  down)
    DIR=$(cd "${2:-cluster}" && pwd)
    down
    ;;
  *) usage ;;
esac
