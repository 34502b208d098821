"""The parts of scripts/chaos.sh's fault campaign: a webhook receiver, the workload (partners
uploading through the balancer), the nemesis (faults injected at random) and the checker.

    python3 scripts/chaos.py receiver --port PORT --out FILE --secret SECRET
    python3 scripts/chaos.py workload --port LB_SFTP --accounts FILE --prefix PREFIX \\
        --log FILE --stop-file FILE [--clients N] [--seed N]
    python3 scripts/chaos.py nemesis --dir DIR --seconds S --instances N --cluster-sh PATH \\
        --pg-ctl CMD --proxy-control URL --log FILE [--seed N]
    python3 scripts/chaos.py check --dir DIR --pg-url URL --s3-endpoint URL --region R \\
        --bucket B --prefix PREFIX [--settle SECONDS]

The checker reads AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from the environment, and the
files the others wrote under DIR (ops.jsonl, faults.jsonl, webhook.jsonl, s3-lost.jsonl).
Standard library only, but for paramiko in the workload.
"""

import argparse
import collections
import datetime
import hashlib
import heapq
import hmac
import http.client
import http.server
import json
import logging
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

TEMP_SUFFIXES = (".part", ".filepart", ".tmp")
ARRIVALS = ("wharf.upload.completed", "wharf.file.renamed")
COMPLETED = "wharf.upload.completed"
# What wharf tells a client whose commit's outcome it could not settle (src/session/fs.rs).
UNCONFIRMED = "could not be confirmed"
KIB, MIB = 1 << 10, 1 << 20
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class JsonLog:
    """Appends JSON lines to a file from several threads."""

    def __init__(self, path):
        self.f = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def write(self, record):
        line = json.dumps(record, sort_keys=True)
        with self.lock:
            self.f.write(line + "\n")


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def is_temp(name):
    return name.endswith(TEMP_SUFFIXES)


# ---------------------------------------------------------------------------------------------
# Webhook receiver


def receiver(args):
    """Answers 200 to every POST and records each delivery (one JSON line)."""
    out = JsonLog(args.out)
    secret = args.secret.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            want = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
            try:
                event = json.loads(body)
            except ValueError:
                event = None
            out.write(
                {
                    "t": time.time(),
                    "header_id": self.headers.get("Wharf-Event-Id"),
                    "signature_ok": hmac.compare_digest(
                        want, self.headers.get("Wharf-Signature", "")
                    ),
                    "event": event,
                }
            )
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


# ---------------------------------------------------------------------------------------------
# Workload


class Session:
    """One SSH connection with its SFTP channel, through the balancer."""

    def __init__(self, port, account, timeout):
        import paramiko  # only the workload needs it

        self.client = paramiko.SSHClient()
        self.client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        self.client.connect(
            "127.0.0.1",
            port=port,
            username=account["name"],
            password=account["password"],
            timeout=20,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
            allow_agent=False,
            look_for_keys=False,
        )
        self.sftp = self.client.open_sftp()
        self.sftp.get_channel().settimeout(timeout)

    def close(self):
        try:
            self.client.close()
        except Exception:
            pass


def transport_error(exc):
    """Whether an exception is the connection failing rather than the server's answer."""
    import paramiko

    return isinstance(
        exc, (socket.timeout, TimeoutError, EOFError, ConnectionError, paramiko.SSHException)
    )


def describe(exc):
    return f"{type(exc).__name__}: {exc}"


def classify(exc, phase):
    """The outcome of a failed step, as the client can know it: `unconfirmed` (the server
    said the outcome could not be confirmed), `lost` (the connection failed while the commit
    request, a close or a rename, was outstanding: it may have been done) or `failed` (the
    server refused, or the commit request was never sent)."""
    if phase in ("close", "rename"):
        if transport_error(exc):
            return "lost"
        if UNCONFIRMED in str(exc):
            return "unconfirmed"
    return "failed"


def upload(session, path, data, rec):
    """Writes `data` to `path`, noting in rec["phase"] how far it got. Raises on failure."""
    from paramiko.sftp import CMD_CLOSE

    rec["phase"] = "open"
    f = session.sftp.open(path, "wb")
    f.set_pipelined(True)
    rec["phase"] = "write"
    for off in range(0, len(data), MIB):
        f.write(data[off : off + MIB])
    f.flush()
    # Every write answered; a refused one raises here.
    session.sftp._finish_responses(f)
    rec["phase"] = "close"
    # paramiko's own close ignores the server's answer to CLOSE: send it here instead.
    f._closed = True
    session.sftp._request(CMD_CLOSE, f.handle)


class Workload:
    """Clients uploading through the balancer until the stop file appears."""

    def __init__(self, args):
        with open(args.accounts) as f:
            self.accounts = json.load(f)
        self.port = args.port
        self.prefix = args.prefix
        self.log = JsonLog(args.log)
        self.stop_file = args.stop_file
        self.timeout = args.timeout
        self.seed = args.seed

    def stopped(self):
        return os.path.exists(self.stop_file)

    def record(self, op_id, kind, account, name, data, **extra):
        rec = {
            "id": op_id,
            "kind": kind,
            "user": account["name"],
            "path": "/" + name,
            "key": f"{self.prefix}{account['name']}/{name}",
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "t_start": time.time(),
            "phase": "connect",
        }
        rec.update(extra)
        return rec

    def record_outcome(self, rec, exc=None, outcome=None):
        rec["t_end"] = time.time()
        if exc is None:
            rec["outcome"] = outcome or "ok"
            rec["phase"] = "done"
        else:
            rec["outcome"] = outcome or classify(exc, rec["phase"])
            rec["error"] = describe(exc)
        self.log.write(rec)
        return rec["outcome"] == "ok"

    def session(self, worker, account):
        """The worker's open session for `account`, or a new one."""
        s = worker.get("session")
        if s and worker.get("account") is account and worker["uses"] < 5:
            worker["uses"] += 1
            return s
        self.drop(worker)
        s = Session(self.port, account, self.timeout)
        worker.update(session=s, account=account, uses=1)
        return s

    def drop(self, worker):
        if worker.get("session"):
            worker["session"].close()
        worker["session"] = None

    def direct(self, worker, rng, op_id, kind, size):
        account = rng.choice(self.accounts)
        name = f"{op_id}.bin"
        data = os.urandom(size)
        rec = self.record(op_id, kind, account, name, data, via="direct")
        try:
            s = self.session(worker, account)
            upload(s, rec["path"], data, rec)
        except Exception as e:
            self.drop(worker)
            return self.finish(rec, e)
        return self.finish(rec)

    def finish(self, rec, exc=None, outcome=None):
        ok = self.record_outcome(rec, exc, outcome)
        if rec["phase"] == "connect" and exc is not None:
            # No instance took the connection (all down, or the database is): a partner's
            # client would wait before trying again, rather than spin.
            time.sleep(1)
        return ok

    def temp(self, worker, rng, op_id, size, account=None, name=None, session=None,
             barrier=None, group=None):
        """`put x x.part` then `rename x.part x` (posix-rename when the name is shared)."""
        account = account or rng.choice(self.accounts)
        name = name or f"{op_id}.bin"
        suffix = rng.choice(TEMP_SUFFIXES)
        temp_name = f"{name}.{op_id}{suffix}" if group else f"{name}{suffix}"
        data = os.urandom(size)
        rec = self.record(op_id, "pair" if group else "temp", account, name, data, via="temp",
                          temp_path="/" + temp_name, group=group)
        try:
            s = session or self.session(worker, account)
            if barrier:
                barrier.wait()
            rec["phase"] = "put"
            put = {}
            try:
                upload(s, "/" + temp_name, data, put)
            except Exception as e:
                rec["put_phase"] = put.get("phase")
                rec["put_outcome"] = classify(e, put.get("phase"))
                raise
            rec["phase"] = "rename"
            if group:
                s.sftp.posix_rename("/" + temp_name, rec["path"])
            else:
                s.sftp.rename("/" + temp_name, rec["path"])
        except Exception as e:
            if session is None:
                self.drop(worker)
            # A put that failed, whatever its outcome, was never renamed: that is a failure
            # of the final name, known for sure.
            return self.finish(rec, e, "failed" if rec["phase"] == "put" else None)
        return self.finish(rec)

    def pair(self, worker, rng, op_id):
        """Two clients writing one name at once, each its own content."""
        account = rng.choice(self.accounts)
        name = f"{op_id}.bin"
        barrier = threading.Barrier(2, timeout=120)

        def member(tag, seed):
            mrng = random.Random(seed)
            size = mrng.choice([mrng.randint(KIB, 200 * KIB), mrng.randint(8 * MIB, 12 * MIB)])
            mid = f"{op_id}{tag}"
            if mrng.random() < 0.3:
                try:
                    s = Session(self.port, account, self.timeout)
                except Exception as e:
                    barrier.abort()
                    data = os.urandom(size)
                    rec = self.record(mid, "pair", account, name, data, via="temp", group=op_id)
                    self.finish(rec, e)
                    return
                try:
                    self.temp(None, mrng, mid, size, account, name, s, barrier, op_id)
                finally:
                    s.close()
                return
            data = os.urandom(size)
            rec = self.record(mid, "pair", account, name, data, via="direct", group=op_id)
            s = None
            try:
                s = Session(self.port, account, self.timeout)
                barrier.wait()
                upload(s, rec["path"], data, rec)
            except Exception as e:
                barrier.abort()
                self.finish(rec, e)
                return
            finally:
                if s:
                    s.close()
            self.finish(rec)

        threads = [
            threading.Thread(target=member, args=(tag, rng.random())) for tag in "ab"
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def worker(self, k):
        rng = random.Random(f"{self.seed}-{k}")
        state = {"session": None}
        n = 0
        while not self.stopped():
            n += 1
            op_id = f"w{k}-{n:04d}"
            r = rng.random()
            if r < 0.40:
                self.direct(state, rng, op_id, "small", rng.randint(KIB, 200 * KIB))
            elif r < 0.55:
                self.direct(state, rng, op_id, "large", rng.randint(8 * MIB, 20 * MIB))
            elif r < 0.80:
                big = rng.random() < 0.2
                size = rng.randint(8 * MIB, 12 * MIB) if big else rng.randint(KIB, 200 * KIB)
                self.temp(state, rng, op_id, size)
            else:
                self.pair(state, rng, f"p{k}-{n:04d}")
        self.drop(state)

    def run(self, clients):
        threads = [threading.Thread(target=self.worker, args=(k,)) for k in range(1, clients + 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def workload(args):
    # Every failure is in the operations log; paramiko's own tracebacks would only repeat it.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    Workload(args).run(args.clients)


# ---------------------------------------------------------------------------------------------
# Nemesis


class Nemesis:
    """Injects a random fault every 3-8 s and undoes each after its time; heals at the end."""

    CLOCK_OFFSETS = ["-300s", "-120s", "-40s", "-10s", "+10s", "+25s", "+90s", "+240s"]
    S3_OPS = ["PutObject", "CompleteMultipartUpload", "DeleteObject", "CopyObject"]

    def __init__(self, args):
        self.dir = args.dir
        self.n = args.instances
        self.cluster_sh = args.cluster_sh
        self.pg_ctl = shlex.split(args.pg_ctl)
        self.control = args.proxy_control.rstrip("/")
        self.log = JsonLog(args.log)
        self.rng = random.Random(args.seed)
        self.lock = threading.RLock()
        self.undos = []  # heap of (due, seq, fault, fn)
        self.seq = 0
        self.threads = []
        # Instance K: None, "kill" or "pause" (at most N-1 at once); clocks moved; Postgres
        # and the S3 proxy: one fault at a time.
        self.down = {k: None for k in range(1, self.n + 1)}
        self.clock = set()
        self.pg_busy = False
        self.s3_busy = False
        self.env = dict(
            line.strip().split("=", 1)
            for line in open(os.path.join(self.dir, "cluster.env"))
            if "=" in line
        )

    # -- helpers

    def note(self, fault, phase, **detail):
        rec = {"t": time.time(), "fault": fault, "phase": phase}
        rec.update(detail)
        self.log.write(rec)
        print(f"[nemesis] {time.strftime('%H:%M:%S')} {fault} {phase} {detail}", file=sys.stderr)

    def later(self, delay, fault, fn):
        with self.lock:
            self.seq += 1
            heapq.heappush(self.undos, (time.monotonic() + delay, self.seq, fault, fn))

    def background(self, fn):
        def guarded():
            try:
                fn()
            except Exception as e:
                self.note("nemesis", "error", error=describe(e))

        t = threading.Thread(target=guarded)
        t.start()
        self.threads.append(t)

    def run(self, *cmd, timeout=120):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return 124, f"timed out after {timeout} s"
        return p.returncode, (p.stdout + p.stderr).strip()[-500:]

    def pid(self, k):
        try:
            with open(os.path.join(self.dir, f"wharf{k}", "pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def alive(self, k):
        pid = self.pid(k)
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        # A zombie is not alive: its parent (a cluster.sh that exited) is gone, so it is
        # reaped by init; /proc tells.
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ", 1)[1][0] != "Z"
        except OSError:
            return False

    def ready(self, k):
        url = f"http://{self.env['CLUSTER_NET']}.{k}:9464/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
        except Exception:
            return False

    def proxy(self, path):
        with urllib.request.urlopen(self.control + path, timeout=10) as r:
            return json.load(r)

    def faketime(self, k, offset):
        path = os.path.join(self.dir, f"wharf{k}", "faketime")
        with open(path + ".tmp", "w") as f:
            f.write(offset + "\n")
        os.replace(path + ".tmp", path)

    def start_once(self, k, timeout=90):
        """`cluster.sh start K`: whether the instance is up. Given up as soon as the instance
        it started has exited (wharf stops at start while the database is not there yet),
        rather than after cluster.sh's own wait."""
        old = self.pid(k)
        with open(os.path.join(self.dir, "nemesis-starts.log"), "a") as out:
            p = subprocess.Popen([self.cluster_sh, "start", str(k), self.dir],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=out)
            deadline = time.monotonic() + timeout
            while p.poll() is None:
                new = self.pid(k)
                if (new and new != old and not self.alive(k)) or time.monotonic() > deadline:
                    p.kill()
                    p.wait()
                    return False
                time.sleep(0.5)
        return p.returncode == 0

    def restart(self, k, fault, within=120):
        """Starts instance K, again and again while it exits at start; whether it is up."""
        deadline = time.monotonic() + within
        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1
            if self.start_once(k, timeout=max(5, deadline - time.monotonic())):
                self.note(fault, "end", instance=k, attempts=attempt)
                return True
            self.note(fault, "start-failed", instance=k, attempt=attempt,
                      log=self.instance_tail(k))
            time.sleep(2)
        return False

    def instance_tail(self, k, n=3):
        try:
            with open(os.path.join(self.dir, f"wharf{k}", "err"), errors="replace") as f:
                return [ANSI.sub("", line).rstrip()[-300:] for line in f.readlines()[-n:]]
        except OSError:
            return []

    def start_instance(self, k):
        """Instance K back, in the background; it counts as down until it is."""

        def go():
            try:
                self.restart(k, "kill")
            except Exception as e:
                self.note("kill", "undo-error", instance=k, error=describe(e))
            finally:
                if self.alive(k):
                    with self.lock:
                        self.down[k] = None

        self.background(go)

    # -- faults

    def fault_kill(self, k):
        self.down[k] = "kill"
        rc, out = self.run(self.cluster_sh, "kill", str(k), self.dir)
        self.note("kill", "start", instance=k, rc=rc)
        self.later(self.rng.uniform(2, 8), "kill", lambda: self.start_instance(k))

    def fault_pause(self, k):
        pid = self.pid(k)
        if pid is None or not self.alive(k):
            return False
        self.down[k] = "pause"
        os.kill(pid, signal.SIGSTOP)
        secs = self.rng.uniform(10, 40)
        self.note("pause", "start", instance=k, pid=pid, seconds=round(secs, 1))

        def resume():
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
            self.note("pause", "end", instance=k, pid=pid)
            with self.lock:
                self.down[k] = None

        self.later(secs, "pause", resume)
        return True

    def fault_clock(self, k):
        offset = self.rng.choice(self.CLOCK_OFFSETS)
        self.clock.add(k)
        self.faketime(k, offset)
        secs = self.rng.uniform(10, 40)
        self.note("clock", "start", instance=k, offset=offset, seconds=round(secs, 1))

        def back():
            self.faketime(k, "+0s")
            self.note("clock", "end", instance=k)
            with self.lock:
                self.clock.discard(k)

        self.later(secs, "clock", back)

    def fault_pg(self):
        self.pg_busy = True
        if self.rng.random() < 0.5:
            self.note("postgres", "start", how="restart -m fast")

            def restart():
                rc, out = self.run(*self.pg_ctl, "restart", "-m", "fast", "-w")
                self.note("postgres", "end", how="restart", rc=rc, output=out if rc else "")
                with self.lock:
                    self.pg_busy = False

            self.background(restart)
            return
        secs = self.rng.uniform(5, 35)
        rc, out = self.run(*self.pg_ctl, "stop", "-m", "fast", "-w")
        self.note("postgres", "start", how="stop", seconds=round(secs, 1), rc=rc,
                  output=out if rc else "")

        def start():
            def go():
                rc, out = self.run(*self.pg_ctl, "start", "-w")
                self.note("postgres", "end", how="start", rc=rc, output=out if rc else "")
                with self.lock:
                    self.pg_busy = False

            self.background(go)

        self.later(secs, "postgres", start)

    def fault_s3(self):
        op = self.rng.choice(self.S3_OPS)
        self.s3_busy = True
        self.proxy("/lose?ops=" + op)
        secs = self.rng.uniform(3, 10)
        self.note("s3", "start", op=op, seconds=round(secs, 1))

        def back():
            stats = self.proxy("/pass")
            self.note("s3", "end", op=op, lost=stats["lost"])
            with self.lock:
                self.s3_busy = False

        self.later(secs, "s3", back)

    def inject(self):
        with self.lock:
            up = [k for k, d in self.down.items() if d is None]
            may_down = len(up) > 1
            choices = []
            if may_down:
                choices += ["kill", "pause"]
            if len(self.clock) < self.n:
                choices.append("clock")
            if not self.pg_busy:
                choices.append("postgres")
            if not self.s3_busy:
                choices.append("s3")
            if not choices:
                return
            kind = self.rng.choice(choices)
            if kind == "kill":
                self.fault_kill(self.rng.choice(up))
            elif kind == "pause":
                if not self.fault_pause(self.rng.choice(up)):
                    self.note("pause", "skipped", reason="instance not running")
            elif kind == "clock":
                self.fault_clock(self.rng.choice([k for k in self.down if k not in self.clock]))
            elif kind == "postgres":
                self.fault_pg()
            else:
                self.fault_s3()

    def due(self, everything=False):
        """Runs the undos that are due (all of them when healing)."""
        while True:
            with self.lock:
                if not self.undos or (not everything and self.undos[0][0] > time.monotonic()):
                    return
                _, _, fault, fn = heapq.heappop(self.undos)
            try:
                fn()
            except Exception as e:
                self.note(fault, "undo-error", error=describe(e))

    def campaign(self, seconds):
        deadline = time.monotonic() + seconds
        next_fault = time.monotonic() + self.rng.uniform(3, 8)
        while time.monotonic() < deadline:
            self.due()
            if time.monotonic() >= next_fault:
                try:
                    self.inject()
                except Exception as e:
                    self.note("inject", "error", error=describe(e))
                next_fault = time.monotonic() + self.rng.uniform(3, 8)
            time.sleep(0.1)

    def heal(self):
        """Undoes every fault and checks the cluster is whole again."""
        self.note("heal", "start")
        self.due(everything=True)
        for t in self.threads:
            t.join()
        # Starts that were retried schedule more: run those until none is left.
        while self.undos:
            self.due(everything=True)
            for t in self.threads:
                t.join()
        self.proxy("/pass")
        rc, _ = self.run(*self.pg_ctl, "status")
        if rc != 0:
            rc, out = self.run(*self.pg_ctl, "start", "-w")
            self.note("heal", "postgres-started", rc=rc, output=out)
        for k in range(1, self.n + 1):
            self.faketime(k, "+0s")
            pid = self.pid(k)
            if pid:
                try:
                    os.kill(pid, signal.SIGCONT)
                except OSError:
                    pass
        deadline = time.monotonic() + 120
        for k in range(1, self.n + 1):
            while not self.ready(k) and time.monotonic() < deadline:
                if not self.alive(k):
                    self.restart(k, "heal", within=deadline - time.monotonic())
                else:
                    time.sleep(0.5)
        whole = all(self.ready(k) for k in range(1, self.n + 1))
        self.note("heal", "end", ready=whole)
        return whole


def nemesis(args):
    n = Nemesis(args)
    healing = threading.Event()

    def on_term(*_):
        if healing.is_set():
            sys.exit(1)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        n.campaign(args.seconds)
    except KeyboardInterrupt:
        pass
    finally:
        healing.set()
        whole = n.heal()
    sys.exit(0 if whole else 1)


# ---------------------------------------------------------------------------------------------
# Checker: S3, Postgres and the files the others wrote


class S3:
    """A minimal S3 client (SigV4, path style) for listing and reading the bucket."""

    EMPTY = hashlib.sha256(b"").hexdigest()

    def __init__(self, endpoint, region, bucket):
        u = urllib.parse.urlsplit(endpoint)
        self.host = u.netloc
        self.region = region
        self.bucket = bucket
        self.access = os.environ["AWS_ACCESS_KEY_ID"]
        self.secret = os.environ["AWS_SECRET_ACCESS_KEY"]

    @staticmethod
    def _q(s):
        return urllib.parse.quote(s, safe="-_.~")

    def request(self, method, key, query):
        path = urllib.parse.quote(f"/{self.bucket}" + (f"/{key}" if key else ""), safe="/-_.~")
        cq = "&".join(f"{self._q(k)}={self._q(v)}" for k, v in sorted(query.items()))
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        signed = "host;x-amz-content-sha256;x-amz-date"
        creq = (
            f"{method}\n{path}\n{cq}\nhost:{self.host}\nx-amz-content-sha256:{self.EMPTY}\n"
            f"x-amz-date:{amz_date}\n\n{signed}\n{self.EMPTY}"
        )
        scope = f"{date}/{self.region}/s3/aws4_request"
        sts = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(creq.encode()).hexdigest()}"
        k = ("AWS4" + self.secret).encode()
        for part in (date, self.region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        headers = {
            "x-amz-content-sha256": self.EMPTY,
            "x-amz-date": amz_date,
            "Authorization": f"AWS4-HMAC-SHA256 Credential={self.access}/{scope}, "
            f"SignedHeaders={signed}, Signature={sig}",
        }
        conn = http.client.HTTPConnection(self.host, timeout=120)
        conn.request(method, path + (f"?{cq}" if cq else ""), headers=headers)
        return conn, conn.getresponse()

    def _xml(self, query):
        conn, r = self.request("GET", "", query)
        body = r.read()
        conn.close()
        if r.status != 200:
            raise RuntimeError(f"S3 {query}: {r.status} {body[:300]!r}")
        root = ET.fromstring(body)
        for el in root.iter():
            el.tag = el.tag.split("}", 1)[-1]
        return root

    def list(self, prefix):
        """{key: size} of every object under prefix."""
        out, token = {}, None
        while True:
            q = {"list-type": "2", "prefix": prefix}
            if token:
                q["continuation-token"] = token
            root = self._xml(q)
            for c in root.findall("Contents"):
                out[c.findtext("Key")] = int(c.findtext("Size"))
            token = root.findtext("NextContinuationToken")
            if root.findtext("IsTruncated") != "true" or not token:
                return out

    def multipart_uploads(self, prefix):
        """[(key, upload id, initiated)] of every multipart upload open under prefix."""
        out, markers = [], {}
        while True:
            root = self._xml({"uploads": "", "prefix": prefix, **markers})
            for u in root.findall("Upload"):
                out.append((u.findtext("Key"), u.findtext("UploadId"), u.findtext("Initiated")))
            if root.findtext("IsTruncated") != "true":
                return out
            markers = {
                "key-marker": root.findtext("NextKeyMarker") or "",
                "upload-id-marker": root.findtext("NextUploadIdMarker") or "",
            }

    def sha256(self, key):
        conn, r = self.request("GET", key, {})
        h, n = hashlib.sha256(), 0
        while True:
            chunk = r.read(MIB)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        conn.close()
        if r.status != 200:
            return None, r.status
        return h.hexdigest(), n


def psql(url, sql):
    p = subprocess.run(["psql", url, "-XAtq", "-c", sql], capture_output=True, text=True,
                       timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"psql: {p.stderr.strip()}")
    return p.stdout.strip()


def recorded_events(url):
    """Every event in the outbox, in order: [(seq, CloudEvent)]."""
    rows = json.loads(psql(url, "SELECT coalesce(json_agg(json_build_object('seq', seq, "
                               "'body', body) ORDER BY seq), '[]') FROM events"))
    return [(r["seq"], json.loads(r["body"])) for r in rows]


class Checker:
    def __init__(self, args):
        self.dir = args.dir
        self.pg = args.pg_url
        self.s3 = S3(args.s3_endpoint, args.region, args.bucket)
        self.prefix = args.prefix
        self.settle_secs = args.settle
        self.violations = []
        self.notes = []

    def violation(self, what, **evidence):
        self.violations.append({"what": what, **evidence})

    # -- settling

    def wait(self, what, secs, probe):
        """Polls probe() (a falsy value when settled) for up to secs; returns what is left."""
        deadline = time.monotonic() + secs
        started = time.monotonic()
        while True:
            try:
                left = probe()
            except Exception as e:  # the database coming back, say
                left = describe(e)
            if not left:
                self.notes.append(f"{what}: settled in {time.monotonic() - started:.1f} s")
                return None
            if time.monotonic() > deadline:
                return left
            time.sleep(1)

    def settle(self):
        def journal():
            rows = psql(self.pg, "SELECT json_build_object('intents', (SELECT coalesce(json_agg(c), "
                        "'[]') FROM commit_intents c), 'live_uploads', (SELECT coalesce(json_agg(l), "
                        "'[]') FROM live_uploads l))")
            j = json.loads(rows)
            return j if j["intents"] or j["live_uploads"] else None

        left = self.wait("commit intents and tracked uploads", self.settle_secs, journal)
        if left:
            self.violation("the journal did not settle: commit intents or tracked uploads left "
                           f"after {self.settle_secs:.0f} s", **self.unsettled(left))

        def outbox():
            n = int(psql(self.pg, "SELECT count(*) FROM event_deliveries WHERE sink = 'hook' "
                         "AND state = 'pending'"))
            return n

        left = self.wait("hook deliveries", max(self.settle_secs, 120), outbox)
        if left:
            rows = psql(self.pg, "SELECT coalesce(json_agg(d), '[]') FROM (SELECT event_seq, state, "
                        "attempts, lease_owner, last_error FROM event_deliveries WHERE sink = 'hook' "
                        "AND state <> 'delivered' LIMIT 20) d")
            self.violation("the outbox was not delivered", pending=left, rows=json.loads(rows))

        left = self.wait("open multipart uploads", 60, lambda: self.s3.multipart_uploads(self.prefix))
        if left:
            self.violation("multipart uploads left open", uploads=left)

        def hook_behind():
            ids = {e["id"] for _, e in recorded_events(self.pg)}
            got = {d["event"]["id"] for d in read_jsonl(os.path.join(self.dir, "webhook.jsonl"))
                   if d.get("event")}
            return len(ids - got)

        self.wait("webhook receiver", 30, hook_behind)

    # -- evidence

    def unsettled(self, left):
        """What is known of rows the journal still holds: their instances' liveness, whether
        S3 still has their multipart uploads, and what the instances logged about them."""
        out = {"left": left}
        if not isinstance(left, dict):
            return out
        try:
            out["instances"] = json.loads(psql(
                self.pg, "SELECT coalesce(json_agg(json_build_object('id', id, 'heartbeat_age_s', "
                "((SELECT now_us FROM wharf_clock) - heartbeat_us) / 1e6, 'lapse_s', lapse_us / 1e6)),"
                " '[]') FROM instances"))
            open_uploads = {u[1]: u for u in self.s3.multipart_uploads(self.prefix)}
        except Exception as e:
            out["instances"] = describe(e)
            open_uploads = {}
        for row in left["intents"] + left["live_uploads"]:
            ids = {row.get("id"), row.get("upload_id")}
            try:
                ids.add(json.loads(row.get("detail") or "{}").get("upload_id"))
            except ValueError:
                pass
            ids.discard(None)
            row["s3_upload_open"] = any(i in open_uploads for i in ids)
            row["instance_log"] = [line for i in sorted(ids)
                                   for line in self.instance_lines(i.split(":")[-1])]
        return out

    def instance_lines(self, needle, limit=12):
        out = []
        for k in sorted(os.listdir(self.dir)):
            p = os.path.join(self.dir, k, "err")
            if not (k.startswith("wharf") and os.path.exists(p)):
                continue
            with open(p, errors="replace") as f:
                hits = [f"{k}: {ANSI.sub('', line).rstrip()[:600]}" for line in f
                        if needle in line]
            out += hits[-limit:]
        return out

    @staticmethod
    def brief(seq, e):
        d = e.get("data", {})
        return {"seq": seq, "id": e["id"], "type": e["type"], "source": e.get("source"),
                "sha256": d.get("sha256"), "bytes": d.get("bytes"),
                "failure_code": d.get("failure_code"), "from_key": d.get("from_key"),
                "session_id": d.get("session_id"), "finished_at": d.get("finished_at")}

    # -- the checks

    def check(self):
        started = time.time()
        self.settle()
        ops = read_jsonl(os.path.join(self.dir, "ops.jsonl"))
        faults = read_jsonl(os.path.join(self.dir, "faults.jsonl"))
        lost = read_jsonl(os.path.join(self.dir, "s3-lost.jsonl"))
        deliveries = read_jsonl(os.path.join(self.dir, "webhook.jsonl"))
        events = recorded_events(self.pg)
        listing = self.s3.list(self.prefix)
        objects = {}
        for key, size in listing.items():
            if key.endswith("/") and size == 0:
                continue  # a directory marker
            sha, n = self.s3.sha256(key)
            objects[key] = {"sha256": sha, "bytes": n}

        # Per key, in outbox order: what arrived there (completed, renamed onto it) and what
        # left it (renamed away, deleted).
        timeline = collections.defaultdict(list)
        completed = collections.defaultdict(list)  # (key, sha256) -> [(seq, event)]
        for seq, e in events:
            d = e.get("data") or {}
            key = d.get("key")
            if e["type"] in ARRIVALS and key:
                timeline[key].append((seq, "arrive", e))
                if d.get("from_key") and not is_temp(d["from_key"]):
                    timeline[d["from_key"]].append((seq, "leave", e))
            elif e["type"] == "wharf.file.deleted" and key:
                timeline[key].append((seq, "leave", e))
            if e["type"] == COMPLETED and key:
                completed[(key, d.get("sha256"))].append((seq, e))
                if is_temp(key):
                    self.violation("a completed event for a temp name", event=self.brief(seq, e))

        def last_arrival(key):
            """(seq, event) of the last arrival at key, or None if nothing is there now."""
            state = None
            for seq, what, e in timeline.get(key, []):
                state = (seq, e) if what == "arrive" else None
            return state

        def replaced_after(key, seq):
            return any(s > seq and w == "arrive" for s, w, _ in timeline.get(key, []))

        # Clients' view against the events and the bucket.
        landed_unconfirmed = []
        for op in ops:
            key, sha = op["key"], op["sha256"]
            found = completed.get((key, sha), [])
            obj = objects.get(key)
            evidence = lambda: {  # noqa: E731
                "op": op,
                "events": [self.brief(s, e) for s, w, e in timeline.get(key, [])],
                "object": obj,
                "instance_log": self.instance_lines(op["path"]),
            }
            if op["outcome"] == "ok":
                if len(found) != 1:
                    self.violation(f"an acknowledged upload has {len(found)} completed events "
                                   "with its SHA-256", **evidence())
                    continue
                seq = found[0][0]
                if obj and obj["sha256"] == sha:
                    continue
                if not replaced_after(key, seq):
                    self.violation("an acknowledged upload's bytes are not stored, and no later "
                                   "arrival replaced them", **evidence())
                continue
            if not found:
                continue
            if len(found) > 1:
                self.violation(f"a failed upload has {len(found)} completed events", **evidence())
                continue
            landed = bool(obj and obj["sha256"] == sha) or replaced_after(key, found[0][0])
            if not landed:
                self.violation("a failed upload was announced, and its bytes are not stored",
                               **evidence())
            elif op["outcome"] in ("unconfirmed", "lost"):
                landed_unconfirmed.append(op)
            else:
                self.violation("an upload the client was told failed was announced and stored",
                               **evidence())

        # The bucket against the events: no object without its event, no event without its
        # object.
        for key, obj in sorted(objects.items()):
            name = key.rsplit("/", 1)[-1]
            if is_temp(name):
                continue
            last = last_arrival(key)
            ev = lambda: {  # noqa: E731
                "key": key, "object": obj,
                "events": [self.brief(s, e) for s, w, e in timeline.get(key, [])],
                "ops": [o for o in ops if o["key"] == key],
                "instance_log": self.instance_lines(name),
            }
            if not timeline.get(key):
                self.violation("an object without an event", **ev())
            elif last is None:
                self.violation("an object whose last event says it left", **ev())
            elif last[1]["data"].get("sha256") != obj["sha256"]:
                earlier = any(e["data"].get("sha256") == obj["sha256"]
                              for _, w, e in timeline[key] if w == "arrive")
                self.violation("the object is not what its last event describes"
                               + (" (it is an earlier arrival's)" if earlier else ""), **ev())
            elif last[1]["data"].get("bytes") != obj["bytes"]:
                self.violation("the object's size is not its last event's", **ev())
        for key in sorted(timeline):
            last = last_arrival(key)
            if last and key not in objects and not is_temp(key):
                self.violation("an event for bytes that are not there",
                               key=key, last=self.brief(*last),
                               events=[self.brief(s, e) for s, w, e in timeline[key]],
                               ops=[o for o in ops if o["key"] == key],
                               instance_log=self.instance_lines(key.rsplit("/", 1)[-1]))

        # Every event reached the webhook (deduplicated by id).
        got = collections.Counter(d["event"]["id"] for d in deliveries if d.get("event"))
        ids = {e["id"] for _, e in events}
        missing = sorted(ids - set(got))
        if missing:
            self.violation(f"{len(missing)} events never reached the webhook",
                           ids=missing[:20])
        bad_sig = [d for d in deliveries if not d.get("signature_ok")]
        if bad_sig:
            self.violation(f"{len(bad_sig)} webhook deliveries with a wrong signature",
                           sample=bad_sig[:3])

        return self.report(ops, faults, lost, events, objects, got, landed_unconfirmed,
                           time.time() - started)

    def report(self, ops, faults, lost, events, objects, got, landed_unconfirmed, check_secs):
        lines = []
        if ops:
            span = max(o["t_end"] for o in ops) - min(o["t_start"] for o in ops)
            lines.append(f"workload: {len(ops)} operations over {span:.0f} s")
        by = collections.Counter((o["kind"], o["outcome"]) for o in ops)
        lines.append("operations by kind and outcome:")
        for kind in sorted({k for k, _ in by}):
            row = ", ".join(f"{out} {by[(kind, out)]}" for out in
                            ("ok", "failed", "unconfirmed", "lost") if by[(kind, out)])
            lines.append(f"  {kind:6} {row}")
        phases = collections.Counter(
            (o["outcome"], o.get("phase")) for o in ops if o["outcome"] != "ok")
        if phases:
            lines.append("  failures by phase: " + ", ".join(
                f"{out}@{ph} {n}" for (out, ph), n in sorted(phases.items())))
        started = [f for f in faults if f["phase"] == "start" and f["fault"] != "heal"]
        kinds = collections.Counter(f["fault"] for f in started)
        lines.append(f"faults injected: {len(started)} ("
                     + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + ")")
        detail = collections.Counter(
            f"{f['fault']}:{f.get('how') or f.get('offset') or f.get('op') or ''}".rstrip(":")
            for f in started if f["fault"] in ("postgres", "clock", "s3"))
        if detail:
            lines.append("  " + ", ".join(f"{k} {n}" for k, n in sorted(detail.items())))
        trouble = [f for f in faults if f["phase"] not in ("start", "end")
                   and f["fault"] != "heal"]
        if trouble:
            lines.append(f"  nemesis trouble: {len(trouble)} (see faults.jsonl)")
        lost_by = collections.Counter(x["op"] for x in lost)
        lines.append("S3 answers lost: " + (", ".join(f"{k} {n}" for k, n in sorted(lost_by.items()))
                                            or "none"))
        types = collections.Counter(e["type"] for _, e in events)
        codes = collections.Counter(e["data"].get("failure_code") for _, e in events
                                    if e["type"] == "wharf.upload.failed")
        lines.append("events: " + ", ".join(f"{k} {n}" for k, n in sorted(types.items())))
        if codes:
            lines.append("  failed by code: " + ", ".join(f"{k} {n}" for k, n in sorted(codes.items())))
        dup = sum(n - 1 for n in got.values())
        lines.append(f"webhook: {sum(got.values())} deliveries, {len(got)} distinct events, "
                     f"{dup} repeated")
        lines.append(f"bucket: {len(objects)} objects under {self.prefix}")
        lines.append(f"unconfirmed but landed (allowed, the client was told the outcome was "
                     f"unknown): {len(landed_unconfirmed)}")
        for o in landed_unconfirmed:
            lines.append(f"  {o['id']} {o['path']} {o['outcome']} at {o['phase']}: "
                         f"{o.get('error', '')[:160]}")
        for n in self.notes:
            lines.append(f"settle: {n}")
        lines.append(f"check took {check_secs:.0f} s")
        lines.append(f"violations: {len(self.violations)}")
        for i, v in enumerate(self.violations, 1):
            lines.append(f"--- violation {i}: {v['what']}")
            lines.append(json.dumps({k: v for k, v in v.items() if k != "what"}, indent=2,
                                    sort_keys=True, default=str))
        text = "\n".join(lines)
        with open(os.path.join(self.dir, "report.txt"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(self.dir, "violations.json"), "w") as f:
            json.dump(self.violations, f, indent=2, default=str)
        print(text)
        return not self.violations


def check(args):
    sys.exit(0 if Checker(args).check() else 1)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("receiver")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--secret", required=True)

    w = sub.add_parser("workload")
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--accounts", required=True)
    w.add_argument("--prefix", required=True)
    w.add_argument("--log", required=True)
    w.add_argument("--stop-file", required=True)
    w.add_argument("--clients", type=int, default=4)
    w.add_argument("--timeout", type=float, default=90)
    w.add_argument("--seed", default=str(random.randrange(1 << 30)))

    n = sub.add_parser("nemesis")
    n.add_argument("--dir", required=True)
    n.add_argument("--seconds", type=float, required=True)
    n.add_argument("--instances", type=int, required=True)
    n.add_argument("--cluster-sh", required=True)
    n.add_argument("--pg-ctl", required=True)
    n.add_argument("--proxy-control", required=True)
    n.add_argument("--log", required=True)
    n.add_argument("--seed", default=str(random.randrange(1 << 30)))

    c = sub.add_parser("check")
    c.add_argument("--dir", required=True)
    c.add_argument("--pg-url", required=True)
    c.add_argument("--s3-endpoint", required=True)
    c.add_argument("--region", required=True)
    c.add_argument("--bucket", required=True)
    c.add_argument("--prefix", required=True)
    c.add_argument("--settle", type=float, default=90)

    args = p.parse_args()
    {"receiver": receiver, "workload": workload, "nemesis": nemesis, "check": check}[args.cmd](args)


if __name__ == "__main__":
    main()
