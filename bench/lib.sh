# Sourced by the benchmarks after scripts/services.sh: building wharf, the settings every
# bench instance shares, waiting for an instance to listen, and measuring (CPU ticks, a quiet
# machine before each run, medians).

build_wharf() {  # -> WHARF, the release binary (WHARF_BENCH_BIN: that one, nothing built)
  if [ -n "${WHARF_BENCH_BIN:-}" ]; then WHARF=$WHARF_BENCH_BIN; return; fi
  cargo build --release -q
  WHARF=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/wharf
}

bench_wharf_env() {  # home [s3-endpoint]: exports what every bench instance shares
  export WHARF_STORAGE__DEFAULT_HOME=$1 WHARF_STORAGE__S3__ENDPOINT=${2:-$WHARF_TEST_S3_ENDPOINT} \
    WHARF_STORAGE__S3__REGION=$WHARF_TEST_S3_REGION WHARF_STORAGE__S3__FORCE_PATH_STYLE=true \
    WHARF_SFTP__LISTEN=127.0.0.1:0 WHARF_METRICS__LISTEN=127.0.0.1:0 WHARF_LOG__LEVEL=warn \
    WHARF_SFTP__MAX_SESSIONS_PER_IP=1000
}

wharf_started() {  # name dir: waits for the instance started in DIR (its out, pid), then sets
  # PORT_<name>, PID_<name>, METRICS_<name> and adds it to PIDS
  local name=$1 dir=$2 i
  for ((i = 0; i < 100; i++)); do grep -q "sftp listening on" "$dir/out" 2>/dev/null && break; sleep 0.1; done
  PIDS+=("$(cat "$dir/pid")")
  eval "PORT_$name=$(sed -n 's/^sftp listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$dir/out")"
  eval "METRICS_$name=$(sed -n 's/^metrics.* listening on \(.*\)$/\1/p' "$dir/out")"
  eval "PID_$name=$(cat "$dir/pid")"
}

busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }  # all CPUs' non-idle ticks

ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat"; }  # own + reaped children's CPU

cpu_idle_pct() {  # idle share of all CPUs over 0.5 s
  local a b
  a=($(head -1 /proc/stat)); sleep 0.5; b=($(head -1 /proc/stat))
  local idle=$(( (b[4] + b[5]) - (a[4] + a[5]) )) total=0 i
  for ((i = 1; i < ${#a[@]}; i++)); do total=$((total + b[i] - a[i])); done
  echo $((total > 0 ? 100 * idle / total : 100))
}

# Before every run: flush what the previous one left in the page cache and wait (up to 10 s)
# for the CPUs to go quiet, so no target pays for its predecessor's background work.
settle() {
  sync
  local i
  for ((i = 0; i < 20; i++)); do (( $(cpu_idle_pct) >= 90 )) && return 0; done
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
