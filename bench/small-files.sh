#!/usr/bin/env bash
# Small files with OpenSSH's sftp, side by side with peers on this machine, in one run:
#
#   bench/small-files.sh [ROUNDS] [PER_SESSION] [PER_CONNECTION_LOOP]   (defaults: 3 100 20)
#
# ONLY=wharf runs only the targets whose name contains it; MODES=sessions one mode; PERF=1
# profiles wharf/pg with perf and prints where its CPU went; MACHINE=1 prints every process's
# CPU seconds during each run (the clients, garage, Postgres and the webhook receiver share the
# cores with the server). ASSURANCE=1 adds two more wharf/pg targets in the same rounds: one
# whose accounts have `--duplicates flag` (each round after the first re-sends the first
# round's bytes under new names, so those arrivals are all flagged) and one whose accounts are
# scanned by a clamd of the run's own (scripts/services.sh; its CPU is reported apart).
# BENCH_BASELINE=<another wharf binary> adds baseline/pg -> garage in the same rounds: that
# build set up as wharf/pg is, on a database of its own (an A/B of two builds).
#
# Two modes, each in interleaved rounds (rotating order, page cache flushed before each run):
#   sessions  10 concurrent `sftp -b` sessions x PER_SESSION files of 4 KiB
#   perconn   10 parallel loops of `sftp -b` with one put each, PER_CONNECTION_LOOP per loop
#             (one file per connection, as many partner systems work)
# Targets:
#   wharf/pg -> garage       wharf on Postgres, events durable in its outbox, a webhook sink;
#                            ten accounts, one per session or loop
#   wharf/sqlite -> garage   the same on SQLite
#   rclone -> garage         `rclone serve sftp` on the same bucket
#   sshd -> /dev/shm         OpenSSH's internal-sftp: no storage, no events (the SFTP ceiling)
# Prints files/s (medians), the server's CPU seconds per run and per login, wharf's S3 requests
# per file (from its metrics), close-to-webhook latency (p50/p99), and the ratios. Not in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
. bench/lib.sh

export ROUNDS=${1:-3} PER=${2:-100} PERCONN=${3:-20} SESSIONS=${SESSIONS:-10} SIZE=${SIZE:-4096}
need_cmd rclone rclone
need_cmd sshd openssh-server
need_cmd sftp openssh-client

build_wharf

export WORK=$(mktemp -d /dev/shm/wharf-small.XXXXXX)
# Every run writes under a prefix of its own: in a garage shared between runs, an account's
# directory that earlier runs filled past a page (1,000 names) is not listed by wharf's
# session view, so every stat a client sends before a put would cost an S3 request.
RUN=$(basename "$WORK")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_garage
  stop_clamd
  for d in "${DB:-}" "${DB:-}_dup" "${DB:-}_scan" "${DB:-}_base"; do
    [ -n "${DB:-}" ] && psql "$WHARF_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
ensure_postgres
ensure_garage
unset AWS_CA_BUNDLE
ssh-keygen -q -t ed25519 -N '' -f "$WORK/client" -C bench
export KEY="$WORK/client"

# A webhook receiver that notes, per event, when it arrived and when the upload finished.
export HOOK_LOG="$WORK/hook.log"
HOOK_PORT=$(free_port)
python3 bench/webhook_receiver.py "$HOOK_PORT" "$HOOK_LOG" &
PIDS+=($!)

DB="wharf_small_$$"
psql "$WHARF_TEST_POSTGRES_URL" -qc "CREATE DATABASE $DB" >/dev/null
PG_URL=$(python3 -c "import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p._replace(path='/$DB').geturl())" "$WHARF_TEST_POSTGRES_URL")

# S3_DELAY_MS=N: each target reaches garage through its own proxy (bench/s3_delay_proxy.py)
# that holds every S3 answer back N ms, as a remote S3 endpoint would, and counts the answers
# (S3 requests per file for every target, rclone's included). Unset: direct, as before.
DIRECT_S3=$WHARF_TEST_S3_ENDPOINT
s3_endpoint() {  # name -> ENDPOINT, the S3 endpoint this target uses
  ENDPOINT=$DIRECT_S3
  if [ -z "${S3_DELAY_MS:-}" ]; then return; fi
  local port
  port=$(free_port)
  python3 bench/s3_delay_proxy.py "$port" "${DIRECT_S3#http://}" "$S3_DELAY_MS" "$WORK/s3-$1.count" \
    > "$WORK/s3-$1.log" 2>&1 &
  PIDS+=($!)
  wait_port 127.0.0.1 "$port" 20
  ENDPOINT="http://127.0.0.1:$port"
}
s3_count() {  # name -> the JSON value of the target's S3 answer count file
  if [ -z "${S3_DELAY_MS:-}" ]; then echo null; else echo "\"$WORK/s3-$1.count\""; fi
}

start_wharf() {  # name database-url [user-set options] -> PORT_<name>, PID_<name>, METRICS_<name>
  local name=$1 db=$2 dir="$WORK/wharf-$1"
  shift 2
  mkdir -p "$dir"
  s3_endpoint "$name"
  (
    cd "$dir"
    bench_wharf_env "s3://$WHARF_TEST_S3_BUCKET/$RUN/$name/" "$ENDPOINT"
    export WHARF_DATABASE__URL=$db \
      WHARF_EVENTS__SINKS="[{name = \"hook\", type = \"webhook\", url = \"http://127.0.0.1:$HOOK_PORT/\", secret = \"s\"}]"
    if [ "$name" = pgscan ]; then export WHARF_SCAN__CLAMD=$WHARF_TEST_CLAMD; fi
    for i in 0 1 2 3 4 5 6 7 8 9; do
      "$WHARF" user add "bench$i" --ssh-key "$KEY.pub" >/dev/null
      if (($#)); then "$WHARF" user set "bench$i" "$@" >/dev/null; fi
    done
    "$WHARF" serve > out 2> err &
    echo $! > pid
  )
  wharf_started "$name" "$dir"
}
start_wharf pg "$PG_URL"
start_wharf sqlite "sqlite://wharf.db"
EXTRA=""
if [ -n "${ASSURANCE:-}" ]; then
  ensure_clamd
  CLAMD_PID=$WHARF_CLAMD_PID
  for v in dup scan; do
    psql "$WHARF_TEST_POSTGRES_URL" -qc "CREATE DATABASE ${DB}_$v" >/dev/null
  done
  start_wharf pgdup "${PG_URL%/*}/${DB}_dup" --duplicates flag
  start_wharf pgscan "${PG_URL%/*}/${DB}_scan" --scan
  EXTRA=$(cat <<JSON
 {"name": "wharf/pg+dup->garage", "port": $PORT_pgdup, "user": "bench{s}", "dir": ".", "pid": $PID_pgdup, "metrics": "$METRICS_pgdup", "s3_count": $(s3_count pgdup)},
 {"name": "wharf/pg+scan->garage", "port": $PORT_pgscan, "user": "bench{s}", "dir": ".", "pid": $PID_pgscan, "aux_pid": $CLAMD_PID, "aux": "clamd", "metrics": "$METRICS_pgscan", "s3_count": $(s3_count pgscan)},
JSON
)
fi
if [ -n "${BENCH_BASELINE:-}" ]; then
  psql "$WHARF_TEST_POSTGRES_URL" -qc "CREATE DATABASE ${DB}_base" >/dev/null
  WHARF=$BENCH_BASELINE start_wharf pgbase "${PG_URL%/*}/${DB}_base"
  EXTRA+=" {\"name\": \"baseline/pg->garage\", \"port\": $PORT_pgbase, \"user\": \"bench{s}\", \"dir\": \".\", \"pid\": $PID_pgbase, \"metrics\": \"$METRICS_pgbase\", \"s3_count\": $(s3_count pgbase)},"
fi

s3_endpoint rclone
WHARF_TEST_S3_ENDPOINT=$ENDPOINT start_rclone_sftp "$RUN/rclone" "$KEY.pub" "$WORK/rclone.log"
PIDS+=("$RCLONE_PID")

PORT_sshd=$(free_port)
mkdir -p "$WORK/sshd" "$WORK/sshd-target" /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$WORK/sshd/host"
cp "$KEY.pub" "$WORK/sshd/authorized_keys"
cat > "$WORK/sshd/config" <<CFG
Port $PORT_sshd
ListenAddress 127.0.0.1
HostKey $WORK/sshd/host
PidFile $WORK/sshd/pid
AuthorizedKeysFile $WORK/sshd/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
StrictModes no
UsePAM no
MaxStartups 100
Subsystem sftp internal-sftp
CFG
/usr/sbin/sshd -f "$WORK/sshd/config" -E "$WORK/sshd/log"
wait_port 127.0.0.1 "$PORT_sshd" 20
PIDS+=("$(cat "$WORK/sshd/pid")")

export TARGETS=$(cat <<JSON
[$EXTRA{"name": "wharf/pg->garage", "port": $PORT_pg, "user": "bench{s}", "dir": ".", "pid": $PID_pg, "metrics": "$METRICS_pg", "s3_count": $(s3_count pg)},
 {"name": "wharf/sqlite->garage", "port": $PORT_sqlite, "user": "bench{s}", "dir": ".", "pid": $PID_sqlite, "metrics": "$METRICS_sqlite", "s3_count": $(s3_count sqlite)},
 {"name": "rclone->garage", "port": $RCLONE_PORT, "user": "bench", "dir": ".", "pid": $RCLONE_PID, "metrics": null, "s3_count": $(s3_count rclone)},
 {"name": "sshd->/dev/shm", "port": $PORT_sshd, "user": "root", "dir": "$WORK/sshd-target", "pid": $(cat "$WORK/sshd/pid"), "metrics": null}]
JSON
)
python3 bench/small_files_bench.py > "$WORK/report.json"
python3 - "$WORK/report.json" <<'PY'
import json, os, sys
r = json.load(open(sys.argv[1]))
res = r["results"]
print(f"\nSmall files ({r['size']} B) with OpenSSH sftp, medians of {r['rounds']} interleaved rounds:")
if os.environ.get("S3_DELAY_MS"):
    print(f"  every S3 answer held back {os.environ['S3_DELAY_MS']} ms (a remote endpoint); S3 requests counted at the proxy")
for mode, label, n in (("sessions", f"{r['sessions']} sessions x {r['per_session']} files", r['sessions'] * r['per_session']),
                       ("perconn", f"{r['sessions']} loops x {r['per_connection_loops']} connections, one file each", r['sessions'] * r['per_connection_loops'])):
    print(f"  {label}:")
    print(f"    {'target':24} {'files/s':>9} {'server CPU s':>13} {'CPU ms/file':>12} {'S3 req/file':>12} errors")
    for k, v in res.items():
        if not k.startswith(mode + ":"):
            continue
        s3 = f"{v['median_s3_per_file']:.2f}" if "median_s3_per_file" in v else "-"
        aux = f"   (+ {v['aux']} {1000*v['median_aux_cpu_s']/n:.2f} CPU ms/file)" if "median_aux_cpu_s" in v else ""
        print(f"    {k.split(':',1)[1]:24} {v['median_files_per_s']:9.0f} {v['median_cpu_s']:13.2f} {1000*v['median_cpu_s']/n:12.2f} {s3:>12} {v['errors']}{aux}")
    base = res.get(f"{mode}:wharf/pg->garage")
    for variant in ("wharf/pg+dup->garage", "wharf/pg+scan->garage", "baseline/pg->garage"):
        v = res.get(f"{mode}:{variant}")
        if base and v:
            print(f"    {variant} / wharf/pg: files/s {v['median_files_per_s'] / base['median_files_per_s']:.2f}x, "
                  f"wharf CPU per file {v['median_cpu_s'] / base['median_cpu_s']:.2f}x")
    # Where a file's time goes, per session: the SFTP ceiling's time per file (sshd, same
    # sessions) plus one S3 round trip is the floor; wharf's upload time (open to close
    # answered) holds its PutObject call and the rest of its own work.
    sshd = res.get(f"{mode}:sshd->/dev/shm")
    for k, v in res.items():
        if not k.startswith(mode + ":") or "median_upload_ms" not in v or not sshd:
            continue
        per_file = 1000 * r["sessions"] / v["median_files_per_s"]
        floor = 1000 * r["sessions"] / sshd["median_files_per_s"]
        put = v.get("median_put_object_ms", 0)
        print(f"    {k.split(':',1)[1]}: {per_file:.1f} ms per file per session; SFTP ceiling {floor:.1f}"
              f" + its PutObject call {put:.1f} (round trip and S3's own time) = {floor + put:.1f},"
              f" {per_file - floor - put:+.1f} over; an upload (open to close answered) took {v['median_upload_ms']:.1f},"
              f" {v['median_upload_ms'] - put:.1f} of it besides PutObject")
    rc = res.get(f"{mode}:rclone->garage", {}).get("median_files_per_s")
    for w in ("wharf/pg->garage", "wharf/sqlite->garage", "baseline/pg->garage"):
        if rc and f"{mode}:{w}" in res:
            print(f"    {w} / rclone = {res[f'{mode}:{w}']['median_files_per_s'] / rc:.2f}x")
for key, profiles in r.get("perf", {}).items():
    print(f"  {key} CPU profile (last round; self time by part):")
    for k, v in profiles[-1]["categories"].items():
        print(f"    {v:5.1f}%  {k}")
    print("    top symbols:")
    for line in profiles[-1]["top"]:
        print(f"      {line}")
for k, v in r.get("machine", {}).items():
    print(f"  CPU seconds on the machine during {k} (last round): " + ", ".join(f"{c} {s}" for c, s in v.items()))
for name, n in r.get("delivery_retries", {}).items():
    print(f"  {name}: {n:.0f} webhook deliveries retried")
if "webhook_latency_ms" in r:
    l = r["webhook_latency_ms"]
    print(f"  close-to-webhook latency over {l['n']} events: p50 {l['p50']} ms, p99 {l['p99']} ms (target p99 < 100)")
PY
