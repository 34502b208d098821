#!/usr/bin/env bash
# SFTP upload throughput and memory, side by side with peers on this machine, in one run.
#
#   bench/sftp-throughput.sh [ROUNDS] [SIZE_MIB]      (defaults: 3 rounds of 1024 MiB)
#   BENCH_CIPHER=aes128-gcm@openssh.com bench/sftp-throughput.sh   (default: the client's choice,
#                                       chacha20-poly1305 for OpenSSH; applies to every SSH peer)
#   BENCH_BASELINE=/path/to/older/wharf bench/sftp-throughput.sh   adds that build as two more
#                                       targets (->garage, ->/dev/shm) and prints this build's
#                                       speed relative to it: an A/B of a change on a noisy machine
#   SCAN=1 bench/sftp-throughput.sh     adds wharf+scan -> garage: the same account scanned for
#                                       malware by a clamd of the run's own (scripts/services.sh),
#                                       with clamd's CPU reported apart from wharf's (TCP on
#                                       loopback; SCAN=unix: clamd's unix socket)
#   RTT_MS=50 bench/sftp-throughput.sh 3 256   a long link: every SSH target is reached through
#                                       its own bench/delay_proxy.py holding each byte RTT_MS/2
#                                       each way (nothing throttled), so the window and the
#                                       requests kept in flight decide; aws s3 cp and the memory
#                                       figures are left out
#
# Each round uploads the same file, interleaved (each round in a rotated order, the page
# cache flushed and the CPUs quiet before every upload), with the OpenSSH sftp client to:
#   wharf -> garage        wharf (release build) streaming into a garage bucket
#   rclone -> garage       `rclone serve sftp` on the same bucket (--vfs-cache-mode off)
#   aws s3 cp -> garage    no gateway at all
#   wharf -> /dev/shm      wharf on local storage
#   sshd -> /dev/shm       OpenSSH's own internal-sftp
# then prints medians, the receiving server's CPU seconds, ratios, wharf's RSS with 100 idle sessions, and its peak RSS
# during 8 concurrent uploads. Installs rclone, openssh-server and awscli when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
. bench/lib.sh

ROUNDS=${1:-3}
SIZE_MIB=${2:-1024}
need_cmd rclone rclone
need_cmd sshd openssh-server
need_cmd sftp openssh-client
command -v aws >/dev/null || python3 -m pip install -q awscli >&2

build_wharf

WORK=$(mktemp -d /dev/shm/wharf-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_garage
  stop_clamd
  rm -rf "$WORK"
}
trap cleanup EXIT
ensure_garage
export AWS_DEFAULT_REGION=$WHARF_TEST_S3_REGION
unset AWS_CA_BUNDLE # rclone 1.60 fails on it

log "creating a ${SIZE_MIB} MiB test file"
head -c "$((SIZE_MIB << 20))" /dev/urandom > "$WORK/upload.bin"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/client" -C bench

SSH_OPTS=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
  -o IdentitiesOnly=yes -i "$WORK/client")
if [[ -n ${BENCH_CIPHER:-} ]]; then SSH_OPTS+=(-c "$BENCH_CIPHER"); fi

# --- wharf on garage, and wharf on /dev/shm -------------------------------------------------
start_wharf() {  # name default_home [binary] -> sets PORT_<name>, PID_<name>
  local name=$1 home=$2 bin=${3:-$WHARF} dir="$WORK/wharf-$1"
  mkdir -p "$dir"
  (
    cd "$dir"
    bench_wharf_env "$home"
    local scan=()
    if [[ $name == scan ]]; then
      export WHARF_SCAN__CLAMD=$WHARF_TEST_CLAMD
      [[ $SCAN == unix ]] && WHARF_SCAN__CLAMD=$WHARF_TEST_CLAMD_UNIX
      scan=(--scan)
    fi
    "$bin" user add bench --ssh-key "$WORK/client.pub" >/dev/null
    if ((${#scan[@]})); then "$bin" user set bench "${scan[@]}" >/dev/null; fi
    "$bin" serve > "$dir/out" 2> "$dir/err" &
    echo $! > "$dir/pid"
  )
  wharf_started "$name" "$dir"
}
start_wharf s3 "s3://$WHARF_TEST_S3_BUCKET/wharf/"
start_wharf shm "file://$WORK/wharf-shm/data/"
if [[ -n ${SCAN:-} ]]; then
  export WHARF_CLAMD_MAX=$((SIZE_MIB + 64))M WHARF_SCAN__MAX_BYTES="$((SIZE_MIB + 64))MiB"
  ensure_clamd
  start_wharf scan "s3://$WHARF_TEST_S3_BUCKET/wharf-scan/"
fi
if [[ -n ${BENCH_BASELINE:-} ]]; then
  start_wharf s3base "s3://$WHARF_TEST_S3_BUCKET/baseline/" "$BENCH_BASELINE"
  start_wharf shmbase "file://$WORK/wharf-shmbase/data/" "$BENCH_BASELINE"
fi

# --- rclone serve sftp on the same bucket ---------------------------------------------------
start_rclone_sftp rclone "$WORK/client.pub" "$WORK/rclone.log"
PORT_rclone=$RCLONE_PORT
PIDS+=("$RCLONE_PID")

# --- OpenSSH sshd with internal-sftp, chrooted to /dev/shm ----------------------------------
PORT_sshd=$(free_port)
mkdir -p "$WORK/sshd" /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$WORK/sshd/host"
cp "$WORK/client.pub" "$WORK/sshd/authorized_keys"
cat > "$WORK/sshd/config" <<EOF
Port $PORT_sshd
ListenAddress 127.0.0.1
HostKey $WORK/sshd/host
PidFile $WORK/sshd/pid
AuthorizedKeysFile $WORK/sshd/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
EOF
/usr/sbin/sshd -f "$WORK/sshd/config" -E "$WORK/sshd/log"
wait_port 127.0.0.1 "$PORT_sshd" 20
PIDS+=("$(cat "$WORK/sshd/pid")")
mkdir -p "$WORK/sshd-target"

need_cmd bc bc

# name -> "port user remote-path server-pid local-copy-to-remove"
declare -A TARGET
TARGET["wharf->garage"]="$PORT_s3 bench upload.bin $PID_s3 -"
TARGET["rclone->garage"]="$PORT_rclone bench upload.bin $RCLONE_PID -"
TARGET["aws-s3-cp->garage"]="- - - - -"
TARGET["wharf->/dev/shm"]="$PORT_shm bench upload.bin $PID_shm $WORK/wharf-shm/data/bench/upload.bin"
TARGET["sshd->/dev/shm"]="$PORT_sshd root $WORK/sshd-target/upload.bin $(cat "$WORK/sshd/pid") $WORK/sshd-target/upload.bin"
if [[ -n ${SCAN:-} ]]; then TARGET["wharf+scan->garage"]="$PORT_scan bench upload.bin $PID_scan -"; fi
if [[ -n ${BENCH_BASELINE:-} ]]; then
  TARGET["baseline->garage"]="$PORT_s3base bench upload.bin $PID_s3base -"
  TARGET["baseline->/dev/shm"]="$PORT_shmbase bench upload.bin $PID_shmbase $WORK/wharf-shmbase/data/bench/upload.bin"
fi

if [[ -n ${RTT_MS:-} ]]; then
  # Each SSH target behind its own delay proxy: the port the client dials is the proxy's.
  unset 'TARGET[aws-s3-cp->garage]'
  for n in "${!TARGET[@]}"; do
    read -r port rest <<<"${TARGET[$n]}"
    pf="$WORK/proxy-$(echo "$n" | tr -c 'a-z0-9\n' _)"
    python3 bench/delay_proxy.py 0 "127.0.0.1:$port" "$(echo "$RTT_MS / 2" | bc -l)" "$pf" &
    PIDS+=($!)
    for ((i = 0; i < 50; i++)); do [[ -s $pf ]] && break; sleep 0.1; done
    TARGET[$n]="$(cat "$pf") $rest"
  done
fi

declare -A T C A M
measure() {  # target name: appends its wall time to T and its server's CPU time to C (and
  # clamd's to A for the scanned target)
  local port user path pid copy c0=0 c1=0 a0=0 start end
  read -r port user path pid copy <<<"${TARGET[$1]}"
  settle
  [[ $pid != - ]] && c0=$(ticks "$pid")
  [[ $1 == *scan* ]] && a0=$(ticks "$WHARF_CLAMD_PID")
  m0=$(busy)
  start=$(date +%s.%N)
  if [[ $port == - ]]; then
    aws --endpoint-url "$WHARF_TEST_S3_ENDPOINT" s3 cp --only-show-errors "$WORK/upload.bin" "s3://$WHARF_TEST_S3_BUCKET/aws/upload.bin"
  else
    sftp -q "${SSH_OPTS[@]}" -P "$port" -b - "$user@127.0.0.1" >/dev/null <<<"put $WORK/upload.bin $path"
  fi
  end=$(date +%s.%N)
  M[$1]+="$(echo "($(busy) - $m0) / $(getconf CLK_TCK)" | bc -l) "
  if [[ $pid != - ]]; then
    sleep 0.3 # sshd adds a session's CPU to its own once it has reaped the session process
    c1=$(ticks "$pid")
    C[$1]+="$(echo "($c1 - $c0) / $(getconf CLK_TCK)" | bc -l) "
  fi
  if [[ $1 == *scan* ]]; then
    A[$1]+="$(echo "($(ticks "$WHARF_CLAMD_PID") - $a0) / $(getconf CLK_TCK)" | bc -l) "
  fi
  T[$1]+="$(echo "$end - $start" | bc -l) "
  [[ $copy != - ]] && rm -f "$copy"
  return 0
}

NAMES=("wharf->garage" "rclone->garage" "aws-s3-cp->garage" "wharf->/dev/shm" "sshd->/dev/shm")
if [[ -n ${RTT_MS:-} ]]; then NAMES=("wharf->garage" "rclone->garage" "wharf->/dev/shm" "sshd->/dev/shm"); fi
if [[ -n ${SCAN:-} ]]; then NAMES+=("wharf+scan->garage"); fi
if [[ -n ${BENCH_BASELINE:-} ]]; then NAMES+=("baseline->garage" "baseline->/dev/shm"); fi
for ((r = 1; r <= ROUNDS; r++)); do
  log "round $r/$ROUNDS"
  # Each round starts one target further along, so no target always follows the same one.
  for ((k = 0; k < ${#NAMES[@]}; k++)); do
    measure "${NAMES[$(((k + r - 1) % ${#NAMES[@]}))]}"
  done
done

declare -A MBS
if ((ROUNDS > 0)); then
echo
echo "Upload of ${SIZE_MIB} MiB with OpenSSH sftp (cipher: ${BENCH_CIPHER:-client default}), median of $ROUNDS rounds"
if [[ -n ${RTT_MS:-} ]]; then echo "through a delay proxy: round trip ${RTT_MS} ms, nothing throttled"; fi
echo "(interleaved, rotating order, page cache flushed and CPUs quiet before each upload):"
printf '  %-20s %10s %10s %14s %15s   %s\n' target "median s" "MB/s" "server CPU s" "machine CPU s" "all rounds (s)"
for n in "${NAMES[@]}"; do
  m=$(echo "${T[$n]}" | median)
  MBS[$n]=$(echo "$SIZE_MIB * 1.048576 / $m" | bc -l)
  cpu=-
  [[ -n ${C[$n]:-} ]] && cpu=$(printf '%.2f' "$(echo "${C[$n]}" | median)")
  printf '  %-20s %10.2f %10.1f %14s %15.2f   %s\n' "$n" "$m" "${MBS[$n]}" "$cpu" "$(echo "${M[$n]}" | median)" "${T[$n]}"
done
echo "  (server CPU: median CPU seconds the receiving server spent per upload; aws s3 cp has none;"
echo "   machine CPU: every process's, client, server and garage: with every core busy, it decides)"
if [[ -n ${SCAN:-} ]]; then
  sc=$(echo "${C[wharf+scan->garage]}" | median); nc=$(echo "${C[wharf->garage]}" | median)
  ac=$(echo "${A[wharf+scan->garage]}" | median)
  printf '  scanning: wharf %.2f CPU s/GiB with it, %.2f without (%.2fx); clamd %.2f CPU s/GiB; %.1f MB/s vs %.1f\n' \
    "$(echo "$sc * 1024 / $SIZE_MIB" | bc -l)" "$(echo "$nc * 1024 / $SIZE_MIB" | bc -l)" "$(echo "$sc / $nc" | bc -l)" \
    "$(echo "$ac * 1024 / $SIZE_MIB" | bc -l)" "${MBS[wharf+scan->garage]}" "${MBS[wharf->garage]}"
fi
ratio() { echo "${MBS[$1]} / ${MBS[$2]}" | bc -l; }
echo
printf '  wharf->garage / rclone->garage     = %.2fx  (target >= 2)\n' "$(ratio 'wharf->garage' 'rclone->garage')"
if [[ -z ${RTT_MS:-} ]]; then
printf '  wharf->garage / aws s3 cp->garage  = %.2fx  (target >= 0.9)\n' "$(ratio 'wharf->garage' 'aws-s3-cp->garage')"
fi
printf '  wharf->/dev/shm / sshd->/dev/shm   = %.2fx  (target >= 1.5)\n' "$(ratio 'wharf->/dev/shm' 'sshd->/dev/shm')"
if [[ -n ${RTT_MS:-} ]]; then
  printf '  wharf->garage: %.2f MiB per round trip; sshd: %.2f\n' \
    "$(echo "${MBS[wharf->garage]} / 1.048576 * $RTT_MS / 1000" | bc -l)" "$(echo "${MBS[sshd->/dev/shm]} / 1.048576 * $RTT_MS / 1000" | bc -l)"
fi
if [[ -n ${BENCH_BASELINE:-} ]]; then
  printf '  this build / baseline, ->garage    = %.2fx\n' "$(ratio 'wharf->garage' 'baseline->garage')"
  printf '  this build / baseline, ->/dev/shm  = %.2fx\n' "$(ratio 'wharf->/dev/shm' 'baseline->/dev/shm')"
fi
fi

rss() { awk -v k="$2:" '$1==k {print $2}' "/proc/$1/status"; }
if [[ -n ${RTT_MS:-} ]]; then exit 0; fi

# --- memory: 100 idle sessions, on a fresh instance -----------------------------------------
echo
kill "$PID_s3" 2>/dev/null || true
start_wharf idle "s3://$WHARF_TEST_S3_BUCKET/wharf-idle/"
PID_s3=$PID_idle PORT_s3=$PORT_idle
base=$(rss "$PID_s3" VmRSS)
IDLE=()
for ((i = 0; i < 100; i++)); do
  (sleep 30 | sftp -q "${SSH_OPTS[@]}" -P "$PORT_s3" "bench@127.0.0.1" >/dev/null 2>&1) &
  IDLE+=($!)
done
sleep 8
sessions=$(ss -tn state established "( sport = :$PORT_s3 )" | tail -n +2 | wc -l)
idle_rss=$(rss "$PID_s3" VmRSS)
printf '  wharf RSS: %d KiB before, %d KiB with %d idle sessions (%.1f MiB total, target < 40)\n' \
  "$base" "$idle_rss" "$sessions" "$(echo "$idle_rss / 1024" | bc -l)"
for p in "${IDLE[@]}"; do kill "$p" 2>/dev/null || true; done
wait "${IDLE[@]}" 2>/dev/null || true
pkill -f "^sleep 30$" 2>/dev/null || true

# --- memory: 8 concurrent uploads ----------------------------------------------------------
kill "$PID_s3" 2>/dev/null || true; sleep 0.5
start_wharf s3b "s3://$WHARF_TEST_S3_BUCKET/wharf-concurrent/"
before=$(rss "$PID_s3b" VmRSS)
start=$(date +%s.%N)
UP=()
for ((i = 0; i < 8; i++)); do
  (sftp -q "${SSH_OPTS[@]}" -P "$PORT_s3b" -b - "bench@127.0.0.1" >/dev/null <<<"put $WORK/upload.bin up$i.bin") &
  UP+=($!)
done
failed=0
for p in "${UP[@]}"; do wait "$p" || failed=$((failed + 1)); done
end=$(date +%s.%N)
# A figure over failed uploads would be meaningless: say so instead.
if ((failed > 0)); then echo "  8 concurrent uploads: $failed of 8 FAILED"; fi
peak=$(rss "$PID_s3b" VmHWM)
printf '  8 concurrent %d MiB uploads to garage: %.1f s (%.0f MB/s aggregate); wharf RSS %d KiB before, peak %d KiB (%.0f MiB)\n' \
  "$SIZE_MIB" "$(echo "$end - $start" | bc -l)" "$(echo "8 * $SIZE_MIB * 1.048576 / ($end - $start)" | bc -l)" \
  "$before" "$peak" "$(echo "$peak / 1024" | bc -l)"
echo "  (part pool: part_size 8MiB x (max_inflight_parts 4 + 1) per upload; storage.upload_memory 1GiB in total)"
