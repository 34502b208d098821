#!/usr/bin/env bash
# PGP decryption on arrival: wharf's decryption speed against `gpg --decrypt` of the same file,
# on this machine, in one run, with wharf's CPU and peak memory.
#
#   bench/pgp.sh [ROUNDS] [SIZE_MIB]          (defaults: 3 rounds of 1024 MiB)
#
# A SIZE_MIB file of random bytes is encrypted to a fresh RSA-3072 deployment key and signed
# with a partner's Ed25519 key by GnuPG (its defaults: AES-256, ZLIB, SEIPD v1 with MDC).
# Each round, interleaved (TARGETS="shm gpg" runs a subset; gpg must be among them):
#   wharf -> /dev/shm   the file uploaded over SFTP into a folder with --decrypt-to (local
#                       storage): decryption time from the wharf.decrypt.completed event
#                       (started_at .. finished_at), wharf's CPU seconds over the decryption
#   wharf -> garage     the same on S3 (garage on this machine: reads and writes go through it)
#   gpg --decrypt       the same file, plaintext to /dev/shm, signature checked
# then prints medians, MB/s of plaintext, CPU s/GiB, ratios to gpg, and wharf's peak RSS
# (VmHWM over the whole run, uploads included).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
. bench/lib.sh

ROUNDS=${1:-3}
SIZE_MIB=${2:-1024}
need_cmd gpg gnupg
need_cmd sftp openssh-client

build_wharf

WORK=$(mktemp -d /dev/shm/wharf-pgp-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  gpgconf --homedir "$WORK/gnupg" --kill all 2>/dev/null || true
  stop_garage
  rm -rf "$WORK"
}
trap cleanup EXIT
ensure_garage

export GNUPGHOME=$WORK/gnupg
mkdir -m 700 "$GNUPGHOME"
GPG=(gpg --batch --yes --quiet --pinentry-mode loopback --trust-model always)
cat > "$WORK/wharf.params" <<EOF
Key-Type: RSA
Key-Length: 3072
Subkey-Type: RSA
Subkey-Length: 3072
Name-Real: wharf bench
Name-Email: decrypt@wharf.bench
Expire-Date: 0
Passphrase: bench-pass
%commit
EOF
cat > "$WORK/partner.params" <<EOF
Key-Type: EDDSA
Key-Curve: ed25519
Subkey-Type: ECDH
Subkey-Curve: cv25519
Name-Real: partner
Name-Email: reports@partner.bench
Expire-Date: 0
%no-protection
%commit
EOF
"${GPG[@]}" --gen-key "$WORK/wharf.params"
"${GPG[@]}" --gen-key "$WORK/partner.params"
"${GPG[@]}" --passphrase bench-pass --armor --export-secret-keys decrypt@wharf.bench > "$WORK/wharf.asc"
"${GPG[@]}" --armor --export reports@partner.bench > "$WORK/partner.asc"

log "creating and encrypting a ${SIZE_MIB} MiB file"
head -c "$((SIZE_MIB << 20))" /dev/urandom > "$WORK/plain.bin"
"${GPG[@]}" --passphrase '' -r decrypt@wharf.bench -u reports@partner.bench --sign \
  --output "$WORK/upload.bin.pgp" --encrypt "$WORK/plain.bin"
PLAIN_SHA=$(sha256sum "$WORK/plain.bin" | cut -d' ' -f1)
ssh-keygen -q -t ed25519 -N '' -f "$WORK/client" -C bench
SSH_OPTS=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
  -o IdentitiesOnly=yes -i "$WORK/client")

start_wharf() {  # name default_home
  local name=$1 home=$2 dir="$WORK/wharf-$1"
  mkdir -p "$dir"
  (
    cd "$dir"
    bench_wharf_env "$home"
    export WHARF_PGP__KEYS="[\"$WORK/wharf.asc\"]" WHARF_PGP__PASSPHRASE_ENV=BENCH_PGP_PASS BENCH_PGP_PASS=bench-pass
    "$WHARF" user add bench --ssh-key "$WORK/client.pub" >/dev/null 2>&1
    "$WHARF" user pgp add bench "$WORK/partner.asc" >/dev/null 2>&1
    # The plaintext's folder first: --decrypt-to must name one of the account's folders.
    "$WHARF" user dir add bench /plain plain --permissions list >/dev/null
    "$WHARF" user dir add bench /inbound inbound --permissions list,upload --decrypt-to /plain --require-signature >/dev/null
    "$WHARF" serve > "$dir/out" 2> "$dir/err" &
    echo $! > "$dir/pid"
  )
  wharf_started "$name" "$dir"
}
start_wharf shm "file://$WORK/wharf-shm/data/"
start_wharf s3 "s3://$WHARF_TEST_S3_BUCKET/$(basename "$WORK")/"  # a prefix of its own: objects of an earlier run stay in a shared S3

cpu_s() {  # pid -> utime+stime in seconds, its own and its reaped children's (the decryption
  # workers)
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15 + $16 + $17) / hz}' "/proc/$1/stat"
}

# Prints "seconds cpu_seconds" for one decryption by wharf instance $1 of upload round $2.
run_wharf() {
  local name=$1 round=$2 port pid dir
  port=$(eval echo "\$PORT_$name"); pid=$(eval echo "\$PID_$name"); dir="$WORK/wharf-$name"
  cp "$WORK/upload.bin.pgp" "$WORK/r$round.bin.pgp"
  sftp -q -b - -P "$port" "${SSH_OPTS[@]}" bench@127.0.0.1 >/dev/null <<<"put $WORK/r$round.bin.pgp /inbound/r$round.bin.pgp"
  local before after
  before=$(cpu_s "$pid")
  python3 - "$dir/events.jsonl" "/plain/r$round.bin" "$PLAIN_SHA" <<'EOF'
import json, sys, time
from datetime import datetime
path, subject, sha = sys.argv[1:]
deadline = time.time() + 900
while time.time() < deadline:
    try:
        for line in open(path):
            e = json.loads(line)
            if e["type"].startswith("wharf.decrypt.") and e["data"]["path"] == subject:
                d = e["data"]
                if e["type"] != "wharf.decrypt.completed" or d["sha256"] != sha:
                    sys.exit(f"decryption failed: {line}")
                t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
                print(f"{t(d['finished_at']) - t(d['started_at']):.3f}")
                sys.exit(0)
    except FileNotFoundError:
        pass
    time.sleep(0.05)
sys.exit("no decryption event")
EOF
  after=$(cpu_s "$pid")
  # CPU over the wait includes the tail of the upload's own work; small next to the decryption.
  echo "$(python3 -c "print($after - $before)")"
  # The encrypted upload goes too: files piling up in /dev/shm make each later write touch
  # memory this VM never used before (the host faults it in), which slowed the later rounds'
  # plaintext writes by half while gpg's output, deleted each round, reused its memory.
  rm -f "$WORK/r$round.bin.pgp" "$WORK/wharf-shm/data/plain/r$round.bin" \
    "$WORK/wharf-shm/data/inbound/r$round.bin.pgp"
}

run_gpg() {
  local wall user sys
  /usr/bin/time -f "%e %U %S" -o "$WORK/gpg.time" "${GPG[@]}" --passphrase bench-pass \
    --output "$WORK/gpg-out.bin" --decrypt "$WORK/upload.bin.pgp" 2>/dev/null
  read -r wall user sys < "$WORK/gpg.time"
  echo "$wall $(python3 -c "print($user + $sys)")"
  rm -f "$WORK/gpg-out.bin"
}
need_cmd /usr/bin/time time

declare -A T C
for ((r = 1; r <= ROUNDS; r++)); do
  for target in ${TARGETS:-shm s3 gpg}; do
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    if [[ $target == gpg ]]; then
      read -r t c < <(run_gpg)
    else
      out=$(run_wharf "$target" "$r")
      t=$(sed -n 1p <<<"$out"); c=$(sed -n 2p <<<"$out")
    fi
    T[$target]+="$t "; C[$target]+="$c "
    log "round $r $target: ${t}s, cpu ${c}s"
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '\n%s MiB encrypted+signed by gpg, %d rounds (medians)\n' "$SIZE_MIB" "$ROUNDS"
printf '%-22s %10s %10s %14s %10s\n' target seconds "MB/s" "CPU s/GiB" "vs gpg"
GPG_T=$(median <<<"${T[gpg]}")
for target in ${TARGETS:-shm s3 gpg}; do
  t=$(median <<<"${T[$target]}"); c=$(median <<<"${C[$target]}")
  python3 - "$target" "$t" "$c" "$SIZE_MIB" "$GPG_T" <<'EOF'
import sys
name, t, c, mib, g = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
label = {"shm": "wharf -> /dev/shm", "s3": "wharf -> garage", "gpg": "gpg --decrypt"}[name]
mbs = mib * 1048576 / t / 1e6
print(f"{label:<22} {t:10.2f} {mbs:10.1f} {c / (mib / 1024):14.2f} {g / t:9.2f}x")
EOF
done
for name in shm s3; do
  pid=$(eval echo "\$PID_$name")
  printf 'wharf (%s) peak RSS over the run: %s MiB\n' "$name" \
    "$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$pid/status")"
done
