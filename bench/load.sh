#!/usr/bin/env bash
# Load as production sees it, on one instance (garage, Postgres, events on):
#
#   bench/load.sh [IDLE] [HOSTILE] [UPLOADS] [SIZE_MIB]     (defaults: 900 20 100 64)
#
# IDLE logged-in SFTP sessions that do nothing, HOSTILE connections trying to make the server
# hold what it should not (overlapping writes, 20 channels x 256 handles, requests whose
# replies are never read, connections that never log in), and UPLOADS concurrent uploads of a
# SIZE_MIB file with OpenSSH's sftp, all at once. Prints the server's RSS (start, with the idle
# sessions, per idle session, peak), login latency of new sessions during the load (p50/p99),
# and whether every honest upload landed whole with its event (SHA-256 as sent).
# UPLOAD_MEMORY=512MiB sets storage.upload_memory (default 1GiB).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
. bench/lib.sh

IDLE=${1:-900}
HOSTILE=${2:-20}
UPLOADS=${3:-100}
SIZE_MIB=${4:-64}
need_cmd sftp openssh-client
python3 -c 'import paramiko' 2>/dev/null || python3 -m pip install -q paramiko >&2
python3 -c 'import asyncssh' 2>/dev/null || python3 -m pip install -q asyncssh >&2
command -v aws >/dev/null || python3 -m pip install -q awscli >&2
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

build_wharf

WORK=$(mktemp -d /dev/shm/wharf-load.XXXXXX)
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  stop_garage
  [ -n "${DB:-}" ] && psql "$WHARF_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ensure_postgres
ensure_garage
export AWS_DEFAULT_REGION=$WHARF_TEST_S3_REGION

DB="wharf_load_$$"
psql "$WHARF_TEST_POSTGRES_URL" -qc "CREATE DATABASE $DB" >/dev/null
DB_URL=$(python3 -c "import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p._replace(path='/$DB').geturl())" "$WHARF_TEST_POSTGRES_URL")

head -c "$((SIZE_MIB << 20))" /dev/urandom > "$WORK/upload.bin"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/client" -C load

cd "$WORK"
export WHARF_DATABASE__URL=$DB_URL WHARF_STORAGE__DEFAULT_HOME="s3://$WHARF_TEST_S3_BUCKET/load/" \
  WHARF_STORAGE__S3__ENDPOINT=$WHARF_TEST_S3_ENDPOINT WHARF_STORAGE__S3__REGION=$WHARF_TEST_S3_REGION \
  WHARF_STORAGE__S3__FORCE_PATH_STYLE=true WHARF_SFTP__LISTEN=127.0.0.1:0 WHARF_METRICS__LISTEN=127.0.0.1:0 \
  WHARF_LOG__LEVEL=warn WHARF_SFTP__MAX_SESSIONS=4000 WHARF_SFTP__MAX_SESSIONS_PER_IP=4000 \
  WHARF_SFTP__LOGIN_TIMEOUT=20s WHARF_STORAGE__UPLOAD_MEMORY=${UPLOAD_MEMORY:-1GiB}
for u in honest idler mallory; do "$WHARF" user add "$u" --ssh-key "$WORK/client.pub" >/dev/null; done
"$WHARF" serve > "$WORK/out" 2> "$WORK/err" &
SERVER_PID=$!
for ((i = 0; i < 100; i++)); do grep -q "sftp listening on" "$WORK/out" 2>/dev/null && break; sleep 0.1; done
PORT=$(sed -n 's/^sftp listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$WORK/out")
log "wharf on port $PORT (pid $SERVER_PID): $IDLE idle, $HOSTILE hostile, $UPLOADS x $SIZE_MIB MiB uploads"

PORT=$PORT WHARF_PID=$SERVER_PID KEY="$WORK/client" IDLE=$IDLE HOSTILE=$HOSTILE UPLOADS=$UPLOADS \
  FILE="$WORK/upload.bin" WORK=$WORK python3 "$OLDPWD/bench/load_bench.py" | tee "$WORK/report.json"
python3 - "$WORK/report.json" "$UPLOADS" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); n = int(sys.argv[2])
print(f"idle sessions:        {r['idle_sessions']}, {r['rss_per_idle_session_kib']} KiB RSS each (target <= 100)")
print(f"RSS:                  start {r['rss_start_kib']//1024} MiB, with idle {r['rss_with_idle_kib']//1024} MiB, peak {r['rss_peak_kib']//1024} MiB (target < upload_memory 1024 + 150)")
print(f"login during load:    p50 {r.get('login_p50_ms')} ms, p99 {r.get('login_p99_ms')} ms over {r['login_probes']} logins, {r['login_failures']} failed")
print(f"honest uploads:       {n - r['uploads_failed']}/{n} succeeded in {r['upload_seconds']} s; {r['events_completed']} completed events, {r['events_sha256_match']} with the file's SHA-256, {r['objects_full_size']} objects of full size")
print(f"hostile:              {json.dumps(r['hostile'])}")
PY
