#!/usr/bin/env bash
# FTPS upload throughput, side by side with a direct S3 upload, in one run on this machine.
#
#   bench/ftps-throughput.sh [ROUNDS] [SIZE_MIB]      (defaults: 3 rounds of 1024 MiB)
#
# Each round uploads the same file, interleaved, with:
#   curl FTPS -> wharf -> garage   explicit TLS (AUTH TLS, PROT P), passive mode
#   aws s3 cp -> garage            no gateway at all
# then prints medians and the ratio (target >= 0.9), and wharf's peak RSS during its uploads
# and during 8 concurrent FTPS uploads (bounded by storage.upload_memory: every byte a chunk
# holds is counted). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
. bench/lib.sh

ROUNDS=${1:-3}
SIZE_MIB=${2:-1024}
need_cmd curl curl
need_cmd openssl openssl
need_cmd bc bc
command -v aws >/dev/null || python3 -m pip install -q awscli >&2

build_wharf

WORK=$(mktemp -d /dev/shm/wharf-ftps-bench.XXXXXX)
WPID=
cleanup() {
  [ -n "$WPID" ] && kill "$WPID" 2>/dev/null || true
  stop_garage
  rm -rf "$WORK"
}
trap cleanup EXIT
ensure_garage
export AWS_DEFAULT_REGION=$WHARF_TEST_S3_REGION

log "creating a ${SIZE_MIB} MiB test file"
head -c "$((SIZE_MIB << 20))" /dev/urandom > "$WORK/upload.bin"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 \
  -keyout "$WORK/ftps.key" -out "$WORK/ftps.crt" 2>/dev/null
PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
(
  cd "$WORK"
  export WHARF_STORAGE__DEFAULT_HOME="s3://$WHARF_TEST_S3_BUCKET/wharf-ftps/" \
    WHARF_STORAGE__S3__ENDPOINT=$WHARF_TEST_S3_ENDPOINT WHARF_STORAGE__S3__REGION=$WHARF_TEST_S3_REGION \
    WHARF_STORAGE__S3__FORCE_PATH_STYLE=true WHARF_SFTP__LISTEN=127.0.0.1:0 WHARF_METRICS__LISTEN= \
    WHARF_FTPS__LISTEN=127.0.0.1:0 WHARF_FTPS__CERT=ftps.crt WHARF_FTPS__KEY=ftps.key \
    WHARF_LOG__LEVEL=warn
  echo "$PASSWORD" | "$WHARF" user add bench --password-stdin >/dev/null
  "$WHARF" serve > wharf.out 2> wharf.err &
  echo $! > wharf.pid
)
WPID=$(cat "$WORK/wharf.pid")
for ((i = 0; i < 100; i++)); do grep -q "sftp listening on" "$WORK/wharf.out" 2>/dev/null && break; sleep 0.1; done
PORT=$(sed -n 's/^ftps listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$WORK/wharf.out")

timed() { local s e; s=$(date +%s.%N); "$@"; e=$(date +%s.%N); echo "$e - $s" | bc -l; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$WPID/status"; }
# Samples wharf's RSS every 100 ms into $WORK/rss.peak while it runs (the highest value).
peak_sampler() {
  echo 0 > "$WORK/rss.peak"
  while kill -0 "$WPID" 2>/dev/null; do
    local r p; r=$(rss_kib); p=$(cat "$WORK/rss.peak")
    [ "${r:-0}" -gt "$p" ] && echo "$r" > "$WORK/rss.peak"
    sleep 0.1
  done
}
peak_sampler &
SAMPLER=$!
ftps_put() {
  curl -sS --insecure --ssl-reqd --user "bench:$PASSWORD" -T "$WORK/upload.bin" \
    "ftp://127.0.0.1:$PORT/upload.bin"
}
aws_cp() {
  aws --endpoint-url "$WHARF_TEST_S3_ENDPOINT" s3 cp --only-show-errors "$WORK/upload.bin" \
    "s3://$WHARF_TEST_S3_BUCKET/aws/upload.bin"
}

F="" A=""
for ((r = 1; r <= ROUNDS; r++)); do
  log "round $r/$ROUNDS"
  F+="$(timed ftps_put) "
  A+="$(timed aws_cp) "
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mf=$(echo "$F" | median) ma=$(echo "$A" | median)
echo
echo "Upload of ${SIZE_MIB} MiB, median of $ROUNDS interleaved rounds:"
printf '  %-26s %8.2f s %8.1f MB/s   rounds: %s\n' "curl FTPS -> wharf -> garage" "$mf" "$(echo "$SIZE_MIB * 1.048576 / $mf" | bc -l)" "$F"
printf '  %-26s %8.2f s %8.1f MB/s   rounds: %s\n' "aws s3 cp -> garage" "$ma" "$(echo "$SIZE_MIB * 1.048576 / $ma" | bc -l)" "$A"
printf '  wharf FTPS / aws s3 cp = %.2fx  (target >= 0.9)\n' "$(echo "$ma / $mf" | bc -l)"
printf '  wharf peak RSS during the rounds: %d MiB\n' "$(( $(cat "$WORK/rss.peak") / 1024 ))"
echo 0 > "$WORK/rss.peak"
log "8 concurrent uploads"
CURLS=()
for i in 1 2 3 4 5 6 7 8; do
  curl -sS --insecure --ssl-reqd --user "bench:$PASSWORD" -T "$WORK/upload.bin" \
    "ftp://127.0.0.1:$PORT/concurrent-$i.bin" &
  CURLS+=($!)
done
wait "${CURLS[@]}"
sleep 0.3
printf '  wharf peak RSS during 8 concurrent uploads: %d MiB (storage.upload_memory 1024 MiB)\n' "$(( $(cat "$WORK/rss.peak") / 1024 ))"
kill "$SAMPLER" 2>/dev/null || true
