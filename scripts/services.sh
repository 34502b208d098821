# Sourced by scripts/test.sh and the benchmarks: finds, installs and starts what wharf's tests
# need, using what is already running and installing (as root, from Debian packages or
# crates.io) only what is missing. Every function exports what the tests read.

WHARF_TOOLS_DIR=${WHARF_TOOLS_DIR:-$HOME/.cache/wharf-test}
mkdir -p "$WHARF_TOOLS_DIR"

log() { printf '[services] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else log "need root to run: $*"; return 1; fi
}

_apt_updated=""
apt_install() {
  if ! command -v apt-get >/dev/null; then
    log "apt-get not found; install these packages by hand: $*"; return 1
  fi
  if [ -z "$_apt_updated" ]; then as_root apt-get update -qq >&2; _apt_updated=1; fi
  log "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

# need_cmd COMMAND PACKAGE: installs PACKAGE when COMMAND is missing.
need_cmd() { command -v "$1" >/dev/null || apt_install "$2"; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() {  # host port seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do port_open "$1" "$2" && return 0; sleep 0.1; done
  return 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

ensure_client_tools() {
  need_cmd ssh-keygen openssh-client
  need_cmd sftp openssh-client
  need_cmd scp openssh-client
  need_cmd python3 python3
  need_cmd lftp lftp
  need_cmd curl curl
  need_cmd openssl openssl
  # libfaketime moves one instance's clock in the cluster tests (tests/it/exactly_once.rs).
  need_cmd faketime faketime
  # GnuPG plays the partner in the PGP tests (tests/it/pgp.rs); HAProxy balances the
  # clusters scripts/cluster.sh starts (tests/it/cluster.rs).
  need_cmd gpg gnupg
  need_cmd haproxy haproxy
  # The client matrix (tests/it/clients.rs): rclone (Go's pkg/sftp), PuTTY's psftp, JSch
  # with a JDK to compile against it, and paramiko.
  need_cmd rclone rclone
  need_cmd psftp putty-tools
  need_cmd javac default-jdk-headless
  [ -f "${WHARF_TEST_JSCH_JAR:-/usr/share/java/jsch.jar}" ] || apt_install libjsch-java
  if ! python3 -c 'import paramiko' 2>/dev/null; then
    log "installing paramiko"
    python3 -m pip install --quiet paramiko >&2 2>/dev/null \
      || python3 -m pip install --quiet --break-system-packages paramiko >&2 2>/dev/null \
      || apt_install python3-paramiko
  fi
  # Schemathesis checks the admin API against its OpenAPI document (tests/it/admin.rs).
  if ! command -v schemathesis >/dev/null 2>&1; then
    log "installing schemathesis"
    python3 -m pip install --quiet schemathesis >&2 2>/dev/null \
      || python3 -m pip install --quiet --break-system-packages schemathesis >&2 2>/dev/null \
      || true
  fi
}

# Exports WHARF_TEST_POSTGRES_URL: an admin URL that may create and drop databases.
ensure_postgres() {
  if [ -n "${WHARF_TEST_POSTGRES_URL:-}" ]; then return 0; fi
  need_cmd psql postgresql-client
  local trust="postgres://postgres@127.0.0.1:5432/postgres"
  if ! port_open 127.0.0.1 5432; then
    if ! command -v pg_ctlcluster >/dev/null; then apt_install postgresql; fi
    local ver
    ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$ver" ]; then
      ver=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
      as_root pg_createcluster "$ver" main >&2
    fi
    log "starting PostgreSQL $ver"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start >&2 || true
    wait_port 127.0.0.1 5432 30 || { log "PostgreSQL did not start on 127.0.0.1:5432"; return 1; }
  fi
  if psql "$trust" -w -qAtc 'select 1' >/dev/null 2>&1; then
    export WHARF_TEST_POSTGRES_URL=$trust
    return 0
  fi
  # A stock Debian cluster wants a password over TCP: give the postgres role a test one.
  log "setting a password for the postgres role (local test cluster)"
  as_root runuser -u postgres -- psql -qc "ALTER ROLE postgres PASSWORD 'wharf-test'" >&2
  export WHARF_TEST_POSTGRES_URL="postgres://postgres:wharf-test@127.0.0.1:5432/postgres"
  psql "$WHARF_TEST_POSTGRES_URL" -w -qAtc 'select 1' >/dev/null
}

# Exports WHARF_TEST_S3_ENDPOINT, _REGION, _BUCKET, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
# for a garage server (a real S3 implementation: SigV4, multipart, checksums) started for this
# run on free ports, or uses the one already described by WHARF_TEST_S3_ENDPOINT.
GARAGE_VERSION=2.5.0
ensure_garage() {
  if [ -n "${WHARF_TEST_S3_ENDPOINT:-}" ]; then return 0; fi
  local garage
  garage=$(command -v garage || true)
  [ -z "$garage" ] && [ -x "$HOME/.cargo/bin/garage" ] && garage="$HOME/.cargo/bin/garage"
  if [ -z "$garage" ] || ! "$garage" --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
    log "installing garage $GARAGE_VERSION from crates.io (takes several minutes, once)"
    cargo install garage --version "$GARAGE_VERSION" --locked --no-default-features \
      --features sqlite,bundled-libs >&2
    garage="$HOME/.cargo/bin/garage"
  fi
  local dir s3port rpcport
  dir=$(mktemp -d "${TMPDIR:-/tmp}/wharf-garage.XXXXXX")
  s3port=$(free_port); rpcport=$(free_port)
  cat > "$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpcport"
rpc_public_addr = "127.0.0.1:$rpcport"
rpc_secret = "$(od -vAn -N32 -tx1 /dev/urandom | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3port"
root_domain = ".s3.garage.localhost"
TOML
  export AWS_ACCESS_KEY_ID="GK$(od -vAn -N12 -tx1 /dev/urandom | tr -d ' \n')"
  export AWS_SECRET_ACCESS_KEY="$(od -vAn -N32 -tx1 /dev/urandom | tr -d ' \n')"
  export WHARF_TEST_S3_BUCKET=wharf-test
  GARAGE_DEFAULT_ACCESS_KEY=$AWS_ACCESS_KEY_ID GARAGE_DEFAULT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
    GARAGE_DEFAULT_BUCKET=$WHARF_TEST_S3_BUCKET RUST_LOG=warn \
    "$garage" -c "$dir/garage.toml" server --single-node --default-bucket > "$dir/garage.log" 2>&1 &
  WHARF_GARAGE_PID=$!
  WHARF_GARAGE_DIR=$dir
  wait_port 127.0.0.1 "$s3port" 30 || { log "garage did not start:"; cat "$dir/garage.log" >&2; return 1; }
  # The API port opens before the default bucket exists; wait until it answers for the bucket.
  local i
  for ((i = 0; i < 100; i++)); do
    grep -q "bucket" "$dir/garage.log" 2>/dev/null && break
    curl -s -o /dev/null "http://127.0.0.1:$s3port/$WHARF_TEST_S3_BUCKET" && break
    sleep 0.1
  done
  export WHARF_TEST_S3_ENDPOINT="http://127.0.0.1:$s3port"
  export WHARF_TEST_S3_REGION=garage
  log "garage on $WHARF_TEST_S3_ENDPOINT (bucket $WHARF_TEST_S3_BUCKET)"
}

stop_garage() {
  if [ -n "${WHARF_GARAGE_PID:-}" ]; then kill "$WHARF_GARAGE_PID" 2>/dev/null || true; wait "$WHARF_GARAGE_PID" 2>/dev/null || true; fi
  if [ -n "${WHARF_GARAGE_DIR:-}" ]; then rm -rf "$WHARF_GARAGE_DIR"; fi
}

# Exports WHARF_TEST_NATS_URL: the machine's NATS (with JetStream) on 127.0.0.1:4222, or a
# nats-server started with -js for this run on a free port.
ensure_nats() {
  if [ -n "${WHARF_TEST_NATS_URL:-}" ]; then return 0; fi
  if port_open 127.0.0.1 4222; then
    export WHARF_TEST_NATS_URL=nats://127.0.0.1:4222
    return 0
  fi
  need_cmd nats-server nats-server
  local port dir
  port=$(free_port)
  dir=$(mktemp -d "${TMPDIR:-/tmp}/wharf-nats.XXXXXX")
  nats-server -a 127.0.0.1 -p "$port" -js -sd "$dir" > "$dir/nats.log" 2>&1 &
  WHARF_NATS_PID=$!
  WHARF_NATS_DIR=$dir
  wait_port 127.0.0.1 "$port" 20 || { log "nats-server did not start:"; cat "$dir/nats.log" >&2; return 1; }
  export WHARF_TEST_NATS_URL="nats://127.0.0.1:$port"
  log "nats-server (JetStream) on $WHARF_TEST_NATS_URL"
}

stop_nats() {
  if [ -n "${WHARF_NATS_PID:-}" ]; then kill "$WHARF_NATS_PID" 2>/dev/null || true; wait "$WHARF_NATS_PID" 2>/dev/null || true; fi
  if [ -n "${WHARF_NATS_DIR:-}" ]; then rm -rf "$WHARF_NATS_DIR"; fi
}

# The EICAR test string: what every scanner is built to detect, harmless.
EICAR='X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*'

# Exports WHARF_TEST_CLAMD (and WHARF_TEST_CLAMD_UNIX, its unix socket): a clamd of this run's
# own (Debian's clamav-daemon) on a free port, whose signature database is generated here from
# the EICAR test string with sigtool (a whole-file MD5 signature, as `sigtool --md5` writes it,
# and a body signature so the string is found inside a larger file); nothing is downloaded.
# WHARF_CLAMD_MAX (default 200M) is its stream and scan size limit.
ensure_clamd() {
  if [ -n "${WHARF_TEST_CLAMD:-}" ]; then return 0; fi
  need_cmd clamd clamav-daemon
  need_cmd sigtool clamav
  local dir port
  dir=$(mktemp -d "${TMPDIR:-/tmp}/wharf-clamd.XXXXXX")
  mkdir -p "$dir/db"
  printf '%s' "$EICAR" > "$dir/eicar.com"
  (cd "$dir" && sigtool --md5 eicar.com) | sed 's/:eicar.com$/:Wharf-Test-EICAR/' > "$dir/db/wharf-test.hdb"
  printf 'Wharf-Test-EICAR-Body:0:*:%s\n' "$(printf '%s' "$EICAR" | sigtool --hex-dump)" > "$dir/db/wharf-test.ndb"
  port=$(free_port)
  cat > "$dir/clamd.conf" <<CONF
DatabaseDirectory $dir/db
TCPSocket $port
TCPAddr 127.0.0.1
LocalSocket $dir/clamd.sock
Foreground yes
StreamMaxLength ${WHARF_CLAMD_MAX:-200M}
MaxScanSize ${WHARF_CLAMD_MAX:-200M}
MaxFileSize ${WHARF_CLAMD_MAX:-200M}
LogFile $dir/clamd.log
User $(id -un)
CONF
  clamd -c "$dir/clamd.conf" > "$dir/clamd.out" 2>&1 &
  WHARF_CLAMD_PID=$!
  WHARF_CLAMD_DIR=$dir
  wait_port 127.0.0.1 "$port" 120 || { log "clamd did not start:"; cat "$dir/clamd.out" "$dir/clamd.log" >&2; return 1; }
  export WHARF_TEST_CLAMD="tcp://127.0.0.1:$port" WHARF_TEST_CLAMD_UNIX="unix://$dir/clamd.sock"
  log "clamd on $WHARF_TEST_CLAMD (signatures: Wharf-Test-EICAR)"
}

stop_clamd() {
  if [ -n "${WHARF_CLAMD_PID:-}" ]; then kill "$WHARF_CLAMD_PID" 2>/dev/null || true; wait "$WHARF_CLAMD_PID" 2>/dev/null || true; fi
  if [ -n "${WHARF_CLAMD_DIR:-}" ]; then rm -rf "$WHARF_CLAMD_DIR"; fi
}

# Starts `rclone serve sftp` on the garage bucket (under PREFIX), accepting KEYFILE.pub; sets
# RCLONE_PORT and RCLONE_PID. For the benchmarks.
start_rclone_sftp() {  # prefix keyfile.pub logfile
  need_cmd rclone rclone
  RCLONE_PORT=$(free_port)
  RCLONE_CONFIG_GARAGE_TYPE=s3 RCLONE_CONFIG_GARAGE_PROVIDER=Other \
    RCLONE_CONFIG_GARAGE_ENDPOINT=$WHARF_TEST_S3_ENDPOINT RCLONE_CONFIG_GARAGE_REGION=$WHARF_TEST_S3_REGION \
    RCLONE_CONFIG_GARAGE_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID RCLONE_CONFIG_GARAGE_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY \
    RCLONE_CONFIG_GARAGE_FORCE_PATH_STYLE=true \
    rclone serve sftp "garage:$WHARF_TEST_S3_BUCKET/$1" --addr "127.0.0.1:$RCLONE_PORT" \
    --authorized-keys "$2" --vfs-cache-mode off > "$3" 2>&1 &
  RCLONE_PID=$!
  wait_port 127.0.0.1 "$RCLONE_PORT" 20
}
