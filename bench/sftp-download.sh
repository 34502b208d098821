#!/usr/bin/env bash
# SFTP download throughput from S3, side by side with peers on this machine, in one run.
#
#   bench/sftp-download.sh [ROUNDS] [SIZE_MIB]      (defaults: 3 rounds of 512 MiB)
#   BENCH_BASELINE=/path/to/older/wharf bench/sftp-download.sh   adds that build as one more
#                                       target and prints this build's speed relative to it
#   RTT_MS=50 bench/sftp-download.sh    a long link: wharf and rclone are reached through their
#                                       own bench/delay_proxy.py (RTT_MS/2 each way, nothing
#                                       throttled); aws s3 cp is left out
#
# The same object (SIZE_MIB of random bytes in a garage bucket) is fetched in interleaved
# rounds (rotating order, CPUs quiet before each fetch) to /dev/null by:
#   wharf          OpenSSH `sftp get` from wharf (release build), the object in the account's home
#   rclone         OpenSSH `sftp get` from `rclone serve sftp` on the same bucket
#   aws-s3-cp      `aws s3 cp` of the object, no gateway at all
#   wharf/lftp     lftp's sftp (OpenSSH's ssh underneath) from wharf, 255 KiB reads and 256 of
#                  them in flight (sftp:max-packets-in-flight) instead of OpenSSH sftp's 64
#   wharf/rclone-client  `rclone cat` from wharf (Go's pkg/sftp and x/crypto/ssh as the client)
# and prints medians, MB/s, the serving process's CPU seconds per fetch, the whole machine's
# CPU seconds per fetch (client, server and garage: on a machine whose cores are all busy, this
# is what decides), and ratios. Not in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
. bench/lib.sh

ROUNDS=${1:-3}
SIZE_MIB=${2:-512}
need_cmd rclone rclone
need_cmd sftp openssh-client
need_cmd bc bc
command -v aws >/dev/null || python3 -m pip install -q awscli >&2

build_wharf

WORK=$(mktemp -d /dev/shm/wharf-dl.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_garage
  rm -rf "$WORK"
}
trap cleanup EXIT
ensure_garage
export AWS_DEFAULT_REGION=$WHARF_TEST_S3_REGION
unset AWS_CA_BUNDLE

log "putting a ${SIZE_MIB} MiB object"
head -c "$((SIZE_MIB << 20))" /dev/urandom > "$WORK/object.bin"
aws --endpoint-url "$WHARF_TEST_S3_ENDPOINT" s3 cp --only-show-errors "$WORK/object.bin" \
  "s3://$WHARF_TEST_S3_BUCKET/dl/bench/object.bin"
rm -f "$WORK/object.bin"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/client" -C bench
SSH_OPTS=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
  -o IdentitiesOnly=yes -i "$WORK/client")

start_wharf() {  # name [binary] -> PORT_<name>, PID_<name>
  local name=$1 bin=${2:-$WHARF} dir="$WORK/wharf-$1"
  mkdir -p "$dir"
  (
    cd "$dir"
    bench_wharf_env "s3://$WHARF_TEST_S3_BUCKET/dl/"
    "$bin" user add bench --ssh-key "$WORK/client.pub" --permissions list,download >/dev/null
    "$bin" serve > "$dir/out" 2> "$dir/err" &
    echo $! > "$dir/pid"
  )
  wharf_started "$name" "$dir"
}
start_wharf wharf
[[ -n ${BENCH_BASELINE:-} ]] && start_wharf base "$BENCH_BASELINE"
start_rclone_sftp dl "$WORK/client.pub" "$WORK/rclone.log"
PIDS+=("$RCLONE_PID")


declare -A TARGET T C M
TARGET[wharf]="$PORT_wharf bench object.bin $PID_wharf"
TARGET[rclone]="$RCLONE_PORT bench bench/object.bin $RCLONE_PID"
TARGET[aws-s3-cp]="- - - -"
TARGET[wharf/lftp]="$PORT_wharf bench object.bin $PID_wharf"
TARGET[wharf/rclone-client]="$PORT_wharf bench object.bin $PID_wharf"
NAMES=(wharf rclone aws-s3-cp wharf/lftp wharf/rclone-client)
if [[ -n ${RTT_MS:-} ]]; then
  NAMES=(wharf rclone wharf/lftp wharf/rclone-client)
  declare -A PROXIED
  for n in wharf rclone; do
    read -r port rest <<<"${TARGET[$n]}"
    if [[ -z ${PROXIED[$port]:-} ]]; then
      python3 bench/delay_proxy.py 0 "127.0.0.1:$port" "$(echo "$RTT_MS / 2" | bc -l)" "$WORK/proxy-$n" &
      PIDS+=($!)
      for ((i = 0; i < 50; i++)); do [[ -s $WORK/proxy-$n ]] && break; sleep 0.1; done
      PROXIED[$port]=$(cat "$WORK/proxy-$n")
    fi
  done
  for n in "${NAMES[@]}"; do
    read -r port rest <<<"${TARGET[$n]}"
    TARGET[$n]="${PROXIED[$port]} $rest"
  done
fi
if [[ -n ${BENCH_BASELINE:-} ]]; then TARGET[baseline]="$PORT_base bench object.bin $PID_base"; NAMES+=(baseline); fi

measure() {
  local port user path pid c0=0 m0 start end
  read -r port user path pid <<<"${TARGET[$1]}"
  settle
  [[ $pid != - ]] && c0=$(ticks "$pid")
  m0=$(busy)
  start=$(date +%s.%N)
  if [[ $1 == */lftp ]]; then
    lftp -c "set sftp:auto-confirm yes; set xfer:clobber on; set sftp:max-packets-in-flight 256; set sftp:size-read 261120;
      set sftp:connect-program 'ssh -a -x ${SSH_OPTS[*]}';
      open -u bench, sftp://127.0.0.1:$port; get $path -o /dev/null" >/dev/null
  elif [[ $1 == */rclone-client ]]; then
    rclone cat --sftp-host 127.0.0.1 --sftp-port "$port" --sftp-user bench \
      --sftp-key-file "$WORK/client" --sftp-chunk-size 255k --sftp-concurrency 64 \
      --sftp-set-modtime=false ":sftp:$path" > /dev/null
  elif [[ $port == - ]]; then
    aws --endpoint-url "$WHARF_TEST_S3_ENDPOINT" s3 cp --only-show-errors \
      "s3://$WHARF_TEST_S3_BUCKET/dl/bench/object.bin" - > /dev/null
  else
    sftp -q "${SSH_OPTS[@]}" -P "$port" -b - "$user@127.0.0.1" >/dev/null <<<"get $path /dev/null"
  fi
  end=$(date +%s.%N)
  if [[ $pid != - ]]; then C[$1]+="$(echo "($(ticks "$pid") - $c0) / $(getconf CLK_TCK)" | bc -l) "; fi
  M[$1]+="$(echo "($(busy) - $m0) / $(getconf CLK_TCK)" | bc -l) "
  T[$1]+="$(echo "$end - $start" | bc -l) "
}

for ((r = 1; r <= ROUNDS; r++)); do
  log "round $r/$ROUNDS"
  for ((k = 0; k < ${#NAMES[@]}; k++)); do measure "${NAMES[$(((k + r - 1) % ${#NAMES[@]}))]}"; done
done

declare -A MBS
echo
echo "Download of ${SIZE_MIB} MiB from S3 (garage) with OpenSSH sftp get, median of $ROUNDS interleaved rounds:"
if [[ -n ${RTT_MS:-} ]]; then echo "through a delay proxy: round trip ${RTT_MS} ms, nothing throttled"; fi
printf '  %-20s %10s %10s %14s %15s   %s\n' target "median s" "MB/s" "server CPU s" "machine CPU s" "all rounds (s)"
for n in "${NAMES[@]}"; do
  m=$(echo "${T[$n]}" | median)
  MBS[$n]=$(echo "$SIZE_MIB * 1.048576 / $m" | bc -l)
  cpu=-
  [[ -n ${C[$n]:-} ]] && cpu=$(printf '%.2f' "$(echo "${C[$n]}" | median)")
  printf '  %-20s %10.2f %10.1f %14s %15.2f   %s\n' "$n" "$m" "${MBS[$n]}" "$cpu" "$(echo "${M[$n]}" | median)" "${T[$n]}"
done
ratio() { echo "${MBS[$1]} / ${MBS[$2]}" | bc -l; }
if [[ -z ${RTT_MS:-} ]]; then printf '  wharf / aws s3 cp = %.2fx  (target >= 0.9)\n' "$(ratio wharf aws-s3-cp)"; fi
printf '  wharf / rclone    = %.2fx\n' "$(ratio wharf rclone)"
if [[ -n ${BENCH_BASELINE:-} ]]; then printf '  this build / baseline = %.2fx\n' "$(ratio wharf baseline)"; fi
