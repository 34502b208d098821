#!/usr/bin/env bash
# Arrival-event benchmarks, in one run on this machine:
#  1. close-to-delivery latency: 1,000 small uploads over 10 concurrent SFTP sessions into
#     wharf -> garage, p50/p99 from the client's close returning to the webhook receiving
#     the event (target p99 < 100 ms);
#  2. small-file throughput: 4 KiB files over 10 concurrent sessions into wharf -> garage
#     with events on, side by side with `rclone serve sftp` on the same bucket, in
#     interleaved rounds (medians and ratio).
#
#   bench/events.sh [ROUNDS] [FILES_PER_SESSION]     (defaults: 3 rounds, 100 files)
# Installs rclone and paramiko when missing. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
. bench/lib.sh

ROUNDS=${1:-3}
PER=${2:-100}
need_cmd rclone rclone
python3 -c 'import paramiko' 2>/dev/null || python3 -m pip install -q paramiko >&2

build_wharf

WORK=$(mktemp -d "${TMPDIR:-/tmp}/wharf-events-bench.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_garage
  rm -rf "$WORK"
}
trap cleanup EXIT
ensure_garage
unset AWS_CA_BUNDLE
ssh-keygen -q -t ed25519 -N '' -m PEM -f "$WORK/client" -C bench
HOOK_PORT=$(free_port)

(
  cd "$WORK"
  export WHARF_STORAGE__DEFAULT_HOME="s3://$WHARF_TEST_S3_BUCKET/wharf/" \
    WHARF_STORAGE__S3__ENDPOINT=$WHARF_TEST_S3_ENDPOINT WHARF_STORAGE__S3__REGION=$WHARF_TEST_S3_REGION \
    WHARF_STORAGE__S3__FORCE_PATH_STYLE=true WHARF_SFTP__LISTEN=127.0.0.1:0 WHARF_METRICS__LISTEN=127.0.0.1:0 WHARF_LOG__LEVEL=warn \
    WHARF_DATABASE__URL=${WHARF_BENCH_DATABASE_URL:-sqlite://wharf.db} \
    WHARF_EVENTS__SINKS="[{name = \"hook\", type = \"webhook\", url = \"http://127.0.0.1:$HOOK_PORT/\", secret = \"s\"}]"
  for u in bench bench0 bench1 bench2 bench3 bench4 bench5 bench6 bench7 bench8 bench9; do
    "$WHARF" user add "$u" --ssh-key "$WORK/client.pub" >/dev/null 2>&1
  done
  "$WHARF" serve > "$WORK/wharf.out" 2> "$WORK/wharf.err" &
  echo $! > "$WORK/wharf.pid"
)
PIDS+=("$(cat "$WORK/wharf.pid")")
for ((i = 0; i < 100; i++)); do grep -q "sftp listening on" "$WORK/wharf.out" 2>/dev/null && break; sleep 0.1; done
PORT=$(sed -n 's/^sftp listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$WORK/wharf.out")

start_rclone_sftp rclone "$WORK/client.pub" "$WORK/rclone.log"
PORT_rclone=$RCLONE_PORT
PIDS+=("$RCLONE_PID")

echo "1. Close-to-delivery latency (wharf -> garage, webhook sink, database ${WHARF_BENCH_DATABASE_URL:-sqlite})"
echo " a) 10 sessions of 10 different accounts"
python3 bench/events_bench.py latency "$PORT" "$HOOK_PORT" 'bench*' "$WORK/client" 10 100
echo " b) 10 sessions of one account (its events are delivered one after another, in order)"
python3 bench/events_bench.py latency "$PORT" "$HOOK_PORT" bench "$WORK/client" 10 100

echo
echo "2. 4 KiB files over 10 concurrent sessions, $PER files each, files/s (interleaved rounds)"
W=() R=()
for ((r = 1; r <= ROUNDS; r++)); do
  W+=("$(python3 bench/events_bench.py throughput "$PORT" bench "$WORK/client" 10 "$PER" 4096)")
  R+=("$(python3 bench/events_bench.py throughput "$PORT_rclone" bench "$WORK/client" 10 "$PER" 4096)")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mw=$(median "${W[@]}"); mr=$(median "${R[@]}")
printf '  %-28s median %8.1f   rounds: %s\n' "wharf -> garage (events on)" "$mw" "${W[*]}"
printf '  %-28s median %8.1f   rounds: %s\n' "rclone serve sftp -> garage" "$mr" "${R[*]}"
printf '  ratio wharf / rclone = %.2fx\n' "$(echo "$mw / $mr" | bc -l)"
