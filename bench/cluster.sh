#!/usr/bin/env bash
# Three instances behind HAProxy against one, on this machine, in one run: what the balancer
# and the shared database cost (on 2 cores the instances share the CPUs with garage, Postgres
# and the clients, so this shows overhead, not scaling; the CPU figures say what more cores
# would give).
#
#   bench/cluster.sh [ROUNDS] [BIG_MIB]       (defaults: 3 rounds, 1024 MiB; 0 skips the big rounds)
#   SCALED=1 bench/cluster.sh          adds two small-file targets in the same rounds:
#                                       three-haproxy@30 (three times the sessions: each instance
#                                       under the load one instance has at 10, i.e. instances that
#                                       add capacity) and one-haproxy@3 (one instance under the
#                                       load each of three has at 10)
#   SYSCALLS=1 bench/cluster.sh        adds system calls per file of the instances and HAProxy
#                                       (`perf stat`) to the small-file figures
#   CALLGRIND=1 bench/cluster.sh       runs every instance under valgrind's callgrind and adds the
#                                       instructions they run in user space per small file: a
#                                       count that does not depend on how busy or how fast the
#                                       cores are (only the small rounds; rates and CPU times under
#                                       valgrind are not comparable to a run without it)
#   PERF=one-haproxy,three-haproxy bench/cluster.sh   profiles those clusters' instances during
#                                       the small-file rounds (`perf record`) and prints where
#                                       each one's CPU per file goes
#
# Three clusters from scripts/cluster.sh (the recipe in deploy/), on one garage and one
# Postgres server (a database each), events on (a webhook sink), all up at once:
#   one/direct   one instance, clients connect to it directly (no PROXY protocol)
#   one/haproxy  one instance behind HAProxy
#   three/haproxy three instances behind HAProxy
# In interleaved rounds (rotating order, page cache flushed before each run):
#   big    8 concurrent `sftp` uploads of BIG_MIB each (8 accounts): aggregate MB/s, CPU
#          seconds of the instances and of HAProxy per GiB
#   small  10 concurrent `sftp -b` sessions x 100 files of 4 KiB (bench/small_files_bench.py):
#          files/s, CPU ms per file, dispatcher claims per file (all sinks, all instances),
#          close-to-webhook latency over all rounds
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
. bench/lib.sh

ROUNDS=${1:-3}
BIG_MIB=${2:-1024}
need_cmd haproxy haproxy
need_cmd sftp openssh-client

build_wharf
if [ "${CALLGRIND:-}" = 1 ]; then
  need_cmd valgrind valgrind
  BIG_MIB=0
fi

export WORK=$(mktemp -d /dev/shm/wharf-cluster.XXXXXX)
CONFIGS=(one-direct one-haproxy three-haproxy)
PIDS=()
cleanup() {
  for c in "${CONFIGS[@]}"; do [ -f "$WORK/$c/cluster.env" ] && scripts/cluster.sh down "$WORK/$c" 2>/dev/null; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_garage
  rm -rf "$WORK"
}
trap cleanup EXIT
ensure_postgres
ensure_garage
unset AWS_CA_BUNDLE

export HOOK_LOG="$WORK/hook.log"
HOOK_PORT=$(free_port)
python3 bench/webhook_receiver.py "$HOOK_PORT" "$HOOK_LOG" &
PIDS+=($!)
ssh-keygen -q -t ed25519 -N '' -f "$WORK/client" -C bench
export KEY="$WORK/client"
INSTANCE_BIN=$WHARF
if [ "${CALLGRIND:-}" = 1 ]; then
  # `serve` under callgrind, counting from the start (the bench zeroes the counters before each
  # round); the CLI commands (migrate, user add) as they are.
  mkdir "$WORK/callgrind"
  INSTANCE_BIN=$WORK/wharf-callgrind
  cat > "$INSTANCE_BIN" <<EOF
#!/bin/sh
[ "\$1" = serve ] && exec valgrind -q --tool=callgrind --callgrind-out-file="$WORK/callgrind/callgrind.%p" "$WHARF" "\$@"
exec "$WHARF" "\$@"
EOF
  chmod +x "$INSTANCE_BIN"
fi

i=0
for c in "${CONFIGS[@]}"; do
  i=$((i + 1))
  n=1; [[ $c == three-* ]] && n=3
  proxy=true; [[ $c == *-direct ]] && proxy=false
  log "starting $c"
  CLUSTER_NET=127.61.$i CLUSTER_PASSIVE_BASE=$((12000 + 1000 * i)) WHARF_BIN=$INSTANCE_BIN \
    WHARF_STORAGE__DEFAULT_HOME="s3://$WHARF_TEST_S3_BUCKET/$(basename "$WORK")/bench-$c/" \
    WHARF_STORAGE__S3__ENDPOINT=$WHARF_TEST_S3_ENDPOINT WHARF_STORAGE__S3__REGION=$WHARF_TEST_S3_REGION \
    WHARF_STORAGE__S3__FORCE_PATH_STYLE=true WHARF_LOG__LEVEL=warn \
    WHARF_SECURITY__PROXY_PROTOCOL=$proxy \
    WHARF_EVENTS__SINKS="[{name = \"hook\", type = \"webhook\", url = \"http://127.0.0.1:$HOOK_PORT/\", secret = \"s\"}]" \
    scripts/cluster.sh up "$n" "$WORK/$c" > /dev/null
  (
    set -a; . "$WORK/$c/shared.env"; set +a
    for ((u = 0; u < 30; u++)); do "$WHARF" user add "bench$u" --ssh-key "$KEY.pub" > /dev/null 2>&1; done
  )
done

# name -> "host port pids metrics" (pids and metrics comma-separated; HAProxy's pid last)
target() {
  local c=$1 net n pids="" metrics="" k
  net=$(sed -n 's/^CLUSTER_NET=//p' "$WORK/$c/cluster.env"); n=$(sed -n 's/^CLUSTER_N=//p' "$WORK/$c/cluster.env")
  for ((k = 1; k <= n; k++)); do pids+="$(cat "$WORK/$c/wharf$k/pid"),"; metrics+="$net.$k:9464,"; done
  if [[ $c == *-direct ]]; then
    echo "$net.1 2222 ${pids%,} ${metrics%,}"
  else
    echo "127.0.0.1 $(sed -n 's/^LB_SFTP=//p' "$WORK/$c/cluster.env") ${pids}$(cat "$WORK/$c/haproxy.pid") ${metrics%,}"
  fi
}
cpu_ticks() { local t=0 p; for p in ${1//,/ }; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }

if [ "$BIG_MIB" -gt 0 ]; then
  log "creating a ${BIG_MIB} MiB file"
  head -c "$((BIG_MIB << 20))" /dev/urandom > "$WORK/big.bin"
fi
SSH=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o IdentitiesOnly=yes -i "$KEY")
declare -A MBS CPU
for ((r = 0; r < ROUNDS && BIG_MIB > 0; r++)); do
  for ((j = 0; j < ${#CONFIGS[@]}; j++)); do
    c=${CONFIGS[$(((j + r) % ${#CONFIGS[@]}))]}
    read -r host port pids _ <<<"$(target "$c")"
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; sleep 1
    c0=$(cpu_ticks "$pids"); t0=$(date +%s.%N)
    UP=()
    for u in 0 1 2 3 4 5 6 7; do
      sftp -q "${SSH[@]}" -P "$port" -b - "bench$u@$host" <<<"put $WORK/big.bin big-$r.bin" > /dev/null &
      UP+=($!)
    done
    for p in "${UP[@]}"; do wait "$p" || log "an upload failed ($c, round $((r + 1)))"; done
    t1=$(date +%s.%N); c1=$(cpu_ticks "$pids")
    mbs=$(python3 -c "print(8 * $BIG_MIB * 1048576 / ($t1 - $t0) / 1e6)")
    cpu=$(python3 -c "print(($c1 - $c0) / $(getconf CLK_TCK) / (8 * $BIG_MIB / 1024))")
    MBS[$c]+="$mbs "; CPU[$c]+="$cpu "
    log "big round $((r + 1)) $c: $(printf %.0f "$mbs") MB/s, $(printf %.2f "$cpu") CPU s/GiB"
  done
done

TARGETS="["
for c in "${CONFIGS[@]}"; do
  read -r host port pids metrics <<<"$(target "$c")"
  t="\"host\": \"$host\", \"port\": $port, \"user\": \"bench{s}\", \"dir\": \".\", \"pid\": [${pids}], \"metrics\": [\"${metrics//,/\", \"}\"]"
  if [ "${CALLGRIND:-}" = 1 ]; then
    instances=$(for f in "$WORK/$c"/wharf*/pid; do cat "$f"; done | paste -sd,)
    t+=", \"callgrind\": {\"dir\": \"$WORK/callgrind\", \"pid\": [$instances]}"
  fi
  TARGETS+="{\"name\": \"$c\", $t},"
  if [ "${SCALED:-}" = 1 ]; then
    case $c in
      three-haproxy) TARGETS+="{\"name\": \"$c@30\", \"sessions\": 30, $t}," ;;
      one-haproxy) TARGETS+="{\"name\": \"$c@3\", \"sessions\": 3, $t}," ;;
    esac
  fi
done
export TARGETS="${TARGETS%,}]" MODES=sessions ROUNDS
python3 bench/small_files_bench.py > "$WORK/small.json"

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
if [ "$BIG_MIB" -gt 0 ]; then
printf '\n8 concurrent uploads of %s MiB (aggregate), medians of %d interleaved rounds:\n' "$BIG_MIB" "$ROUNDS"
printf '  %-16s %10s %16s %10s\n' target "MB/s" "CPU s/GiB (all)" "vs one"
base=$(median <<<"${MBS[one-direct]}")
for c in "${CONFIGS[@]}"; do
  m=$(median <<<"${MBS[$c]}"); p=$(median <<<"${CPU[$c]}")
  printf '  %-16s %10.0f %16.2f %9.2fx\n' "$c" "$m" "$p" "$(python3 -c "print($m / $base)")"
done
fi
python3 - "$WORK/small.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
res = r["results"]
print(f"\n{r['sessions']} sessions (@N: N sessions) x {r['per_session']} files of {r['size']} B, events on, medians of {r['rounds']} rounds:")
base = res["sessions:one-direct"]["median_files_per_s"]
one = res["sessions:one-haproxy"]
base_cpu = one["median_cpu_s"] / one["files"]
counted = [k for k in ("syscalls", "instructions", "busy_instructions") if f"median_{k}_per_file" in one]
print(f"  {'target':16} {'files/s':>9} {'CPU ms/file':>12} {'of it kernel':>13} {'vs one':>8} {'CPU vs one-haproxy':>19} {'claims/file':>12} {'S3 req/file':>12} {'switches/file':>14}"
      + "".join(f" {k + '/file':>18} {'vs one-haproxy':>15}" for k in counted) + " errors")
for k, v in res.items():
    n = v["files"]
    print(f"  {k.split(':', 1)[1]:16} {v['median_files_per_s']:9.0f} {v['median_cpu_s'] / n * 1000:12.2f} {v['median_system_cpu_s'] / n * 1000:13.2f} "
          f"{v['median_files_per_s'] / base:7.2f}x {v['median_cpu_s'] / n / base_cpu:18.2f}x {v.get('median_claims_per_file', float('nan')):12.3f} "
          f"{v.get('median_s3_per_file', float('nan')):12.3f} {'%.1f+%.1f' % tuple(v.get('median_switches_per_file', (0, 0))):>14}"
          + "".join(f" {v[f'median_{k}_per_file']:18,.0f} {v[f'median_{k}_per_file'] / one[f'median_{k}_per_file']:14.2f}x" for k in counted)
          + f" {v['errors']}")
print("  (switches/file: context switches of the instances and HAProxy per file, voluntary + involuntary)")
if "syscalls" in counted:
    print("  (syscalls/file: system calls of the instances and HAProxy per file)")
if "instructions" in counted:
    print("  (instructions/file: user-space instructions of the instances per file, under callgrind;"
          " the rates and CPU times above are under valgrind too;\n"
          "   busy_instructions/file: the same without what the instances run while idle, measured"
          " before the rounds: " + ", ".join(f"{k.split(':', 1)[1]} {v['idle_instructions_per_s']:,.0f}/s"
                                              for k, v in res.items()) + ")")
for key, profiles in r.get("perf", {}).items():
    v = res[key]
    per_file = v["median_cpu_s"] / v["files"] * 1000
    print(f"  {key.split(':', 1)[1]} CPU profile (last round), as ms per file of its {per_file:.2f}:")
    print("    " + ", ".join(f"{k} {s / 100 * per_file:.3f}" for k, s in profiles[-1]["categories"].items()))
if "webhook_latency_ms" in r:
    w = r["webhook_latency_ms"]
    print(f"  close-to-webhook over all rounds: p50 {w['p50']} ms, p99 {w['p99']} ms (n={w['n']})")
PY
