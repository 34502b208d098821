"""Small files with OpenSSH's sftp, against several SFTP servers in interleaved rounds (driven by
bench/small-files.sh). Prints a JSON report.

Modes:
  sessions  SESSIONS concurrent `sftp -b` sessions, each putting PER files of SIZE bytes
  perconn   SESSIONS parallel loops, each running `sftp -b` with one put, PERCONN times

Targets come as JSON in TARGETS: [{"name", "port", "user", "dir", "pid", "metrics"}] (and
optionally "host", default 127.0.0.1, and "sessions", default SESSIONS), where
`dir` is the remote directory to put into, `pid` the server process (for its CPU time) and
`metrics` the wharf metrics address (for S3 requests and the webhook latency), or null, and
`s3_count` (optional) a file where the bench's S3 proxy counts the target's requests. For a
cluster (bench/cluster.sh), `pid` and `metrics` may be lists: their sums are reported.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

TARGETS = [t for t in json.loads(os.environ["TARGETS"]) if os.environ.get("ONLY", "") in t["name"]]
MODES = os.environ.get("MODES", "sessions,perconn").split(",")
KEY = os.environ["KEY"]
WORK = os.environ["WORK"]
ROUNDS = int(os.environ.get("ROUNDS", "3"))
SESSIONS = int(os.environ.get("SESSIONS", "10"))
PER = int(os.environ.get("PER", "100"))
PERCONN = int(os.environ.get("PERCONN", "20"))
SIZE = int(os.environ.get("SIZE", "4096"))
HOOK_LOG = os.environ.get("HOOK_LOG")
# PERF=1: profile wharf/pg with `perf record` during its rounds and report where its CPU goes
# (the SSH algorithms, the database driver, the S3 client, ...); PERF=name,name: the targets
# whose names start with one of these.
PERF = ["wharf/pg"] if os.environ.get("PERF") == "1" else [p for p in os.environ.get("PERF", "").split(",") if p]
# MACHINE=1: CPU seconds of every process on the machine during each run, by command name
# (clients, the S3 server, Postgres, the webhook receiver: what shares the cores).
MACHINE = os.environ.get("MACHINE") == "1"
# SYSCALLS=1: system calls per file of each target's processes during its rounds (`perf stat`
# counting the raw_syscalls:sys_enter tracepoint): the kernel work a file costs, apart from
# how fast the cores run it.
SYSCALLS = os.environ.get("SYSCALLS") == "1"


def machine_cpu():
    """Per pid: (command, CPU ticks of it and its reaped children)."""
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
        except OSError:
            continue
        comm = st[st.index("(") + 1:st.rindex(")")]
        out[p] = (comm, sum(int(x) for x in st.rsplit(")", 1)[1].split()[11:15]))
    return out


def machine_diff(a, b):
    tck = os.sysconf("SC_CLK_TCK")
    by = {}
    for p, (comm, ticks) in b.items():
        prev = a.get(p)
        # By pid: a kernel worker renames itself after the work it does.
        d = ticks - (prev[1] if prev and prev[1] <= ticks else 0)
        if d > 0:
            by[comm] = by.get(comm, 0) + d / tck
    top = {k: round(v, 2) for k, v in sorted(by.items(), key=lambda kv: -kv[1])[:8]}
    top["all processes"] = round(sum(by.values()), 2)
    return top

# Symbol substrings -> what they are part of. First match wins.
CATEGORIES = [
    ("SSH kex and host-key signature (curve25519, ed25519)", ("curve25519", "ed25519", "x25519")),
    ("SSH kex (ECDH P-256, RSA, bignum)", ("p256", "primeorder", "elliptic_curve", "rsa::", "num_bigint", "crypto_bigint")),
    ("SSH cipher and MAC (chacha20, poly1305, aes, ghash, hmac)", ("chacha20", "poly1305", "aes", "ghash", "polyval", "hmac")),
    ("hashes (sha2: kex exchange hash, signatures, file SHA-256)", ("sha2", "sha256", "sha512")),
    ("argon2 (password logins only)", ("argon2", "blake2")),
    ("database driver (sqlx, postgres, sqlite)", ("sqlx", "sqlite", "postgres")),
    ("S3 client (aws-sdk, hyper, http)", ("aws_", "hyper", "h2::", "http::", "rustls")),
    ("logs and metrics (tracing, serde_json)", ("tracing", "serde_json", "metrics", "prometheus")),
    ("kernel", ("[k]",)),
    ("allocator and memcpy", ("malloc", "free", "memcpy", "memmove", "realloc", "cfree", "_int_")),
    ("async runtime (tokio)", ("tokio",)),
]


def perf_categories(data):
    """Self time per category, as a share of wharf's samples."""
    out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "sym", "--stdio",
                          "--percent-limit", "0"], capture_output=True, text=True).stdout
    shares, top = {}, []
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\[.\])\s+(.*)", line)
        if not m:
            continue
        pct, kind, sym = float(m.group(1)), m.group(2), m.group(3)
        if len(top) < 15:
            top.append(f"{pct:5.1f}% {sym[:90]}")
        name = "other"
        for cat, keys in CATEGORIES:
            if any(k in sym.lower() or k == kind for k in keys):
                name = cat
                break
        shares[name] = shares.get(name, 0.0) + pct
    return {"categories": {k: round(v, 1) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])},
            "top": top}

def syscall_counter(pids):
    """`perf stat` counting system calls of these processes (all their threads) until stopped."""
    out = os.path.join(WORK, "syscalls.csv")
    proc = subprocess.Popen(["perf", "stat", "-x", ",", "-o", out, "-e", "raw_syscalls:sys_enter",
                             "-p", ",".join(map(str, pids if isinstance(pids, list) else [pids]))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.2)  # attached before the round starts
    return proc, out


def syscalls_counted(counter):
    proc, out = counter
    proc.send_signal(2)
    proc.wait()
    for line in open(out):
        f = line.split(",")
        if len(f) > 2 and f[2] == "raw_syscalls:sys_enter":
            return int(f[0])
    raise RuntimeError(f"perf stat counted no system calls: {open(out).read()!r}")


# A target with "callgrind": {"dir": D, "pid": [...]} runs its instances under `valgrind
# --tool=callgrind --callgrind-out-file=D/callgrind.%p` (bench/cluster.sh CALLGRIND=1): their
# counters are zeroed before each round and dumped after it, and the instructions they ran in
# user space are counted per file. Instruction counts do not depend on what else the cores run
# or how fast they run it (valgrind serializes each instance's threads and runs it many times
# slower, so the rounds' rates and CPU times are not comparable to a run without it). What the
# instances run while idle (timers, polls) is measured over IDLE_S seconds before the rounds and
# also reported with that rate times each round's length taken out: under valgrind a round
# lasts many times longer, and three instances have three sets of timers.
IDLE_S = 10
def callgrind(target, command):
    for pid in target["callgrind"]["pid"]:
        subprocess.run(["callgrind_control", command, str(pid)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


def callgrind_instructions(target):
    callgrind(target, "-d")
    total = 0
    d = target["callgrind"]["dir"]
    for pid in target["callgrind"]["pid"]:
        dumps = [f for f in os.listdir(d) if re.fullmatch(rf"callgrind\.{pid}\.\d+", f)]
        last = max(dumps, key=lambda f: int(f.rsplit(".", 1)[1]))
        with open(os.path.join(d, last)) as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("summary:"))
    return total


SSH = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o",
       "LogLevel=ERROR", "-o", "IdentitiesOnly=yes", "-i", KEY]


def cpu_ticks(pids, fields=(11, 12, 13, 14)):
    total = 0
    for pid in pids if isinstance(pids, list) else [pids]:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        # utime stime cutime cstime (fields 14-17): children included for sshd's session processes
        total += sum(int(parts[i]) for i in fields)
    return total


def system_ticks(pids):
    """The part of cpu_ticks spent in the kernel (stime, cstime)."""
    return cpu_ticks(pids, (12, 14))


def switches(pids):
    """Context switches (voluntary, involuntary) of the servers' live threads: a wake-up is
    a voluntary one; a thread preempted because the cores were oversubscribed, an involuntary one."""
    vol = invol = 0
    for pid in pids if isinstance(pids, list) else [pids]:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            vol += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches:"):
                            invol += int(line.split()[1])
            except OSError:
                pass
    return vol, invol


def metric_sum(metrics, pattern):
    """The sum of a metric's samples over one wharf's metrics address, or several."""
    if not metrics:
        return None
    total = 0.0
    for addr in metrics if isinstance(metrics, list) else [metrics]:
        text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()
        total += sum(float(m.group(1)) for m in re.finditer(pattern, text, re.M))
    return total


def s3_requests(target):
    """S3 requests so far: counted by the bench's S3 proxy when the target goes through one
    (`s3_count`, a file), else from wharf's metrics."""
    if target.get("s3_count"):
        try:
            with open(target["s3_count"]) as f:
                return float(f.read() or 0)
        except FileNotFoundError:
            return 0.0
    return metric_sum(target.get("metrics"), r'^wharf_s3_request_duration_seconds_count\{[^}]*\} (\S+)')


def means(metrics):
    """Sums and counts so far of wharf's upload time (open to close answered) and of its S3
    PutObject calls, to tell where a small file's time goes."""
    if not metrics:
        return None
    return {k: (metric_sum(metrics, rf'^{name}_sum{sel} (\S+)'), metric_sum(metrics, rf'^{name}_count{sel} (\S+)'))
            for k, name, sel in (("upload_ms", "wharf_upload_duration_seconds", r"(?:\{[^}]*\})?"),
                                 ("put_object_ms", "wharf_s3_request_duration_seconds", r'\{[^}]*operation="PutObject"[^}]*\}'))}


def mean_ms(before, after, k):
    (s0, n0), (s1, n1) = before[k], after[k]
    return 1000 * (s1 - s0) / (n1 - n0) if n1 > n0 else None


def delivery_retries(metrics):
    return metric_sum(metrics, r'^wharf_event_deliveries_total\{[^}]*outcome="retry"[^}]*\} (\S+)')


def claims(metrics):
    """Claims the dispatchers made so far (all sinks, all instances)."""
    return metric_sum(metrics, r'^wharf_event_claims_total\{[^}]*\} (\S+)')


def sessions(target):
    return target.get("sessions", SESSIONS)


def files(tag):
    os.makedirs(os.path.join(WORK, "src"), exist_ok=True)
    out = []
    for s in range(max([SESSIONS] + [sessions(t) for t in TARGETS])):
        for i in range(max(PER, PERCONN)):
            p = os.path.join(WORK, "src", f"{tag}-{s}-{i}.csv")
            if not os.path.exists(p):
                with open(p, "wb") as f:
                    f.write(os.urandom(SIZE))
            out.append(p)
    return out


def sftp(target, batch, session):
    # wharf: one account per session (ten partners); the others take any user name.
    user = target["user"].replace("{s}", str(session))
    host = target.get("host", "127.0.0.1")
    r = subprocess.run(["sftp", *SSH, "-P", str(target["port"]), "-b", "-",
                        f"{user}@{host}"], input=batch.encode(),
                       capture_output=True)
    return r.returncode == 0, r.stderr.decode()[-300:]


def run_sessions(target, rnd):
    def one(s):
        lines = [f"put {WORK}/src/f-{s}-{i}.csv {target['dir']}/r{rnd}-s{s}-{i}.csv" for i in range(PER)]
        ok, err = sftp(target, "\n".join(lines) + "\n", s)
        if not ok:
            errors.append(err)
    errors = []
    threads = [threading.Thread(target=one, args=(s,)) for s in range(sessions(target))]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.time() - t0, sessions(target) * PER, errors


def run_perconn(target, rnd):
    def loop(s):
        for i in range(PERCONN):
            ok, err = sftp(target, f"put {WORK}/src/f-{s}-{i}.csv {target['dir']}/c{rnd}-s{s}-{i}.csv\n", s)
            if not ok:
                errors.append(err)
    errors = []
    threads = [threading.Thread(target=loop, args=(s,)) for s in range(sessions(target))]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.time() - t0, sessions(target) * PERCONN, errors


def settle():
    subprocess.run(["sync"])
    time.sleep(1)


files("f")
idle = {}
for target in TARGETS:
    if target.get("callgrind") and target["callgrind"]["dir"] + repr(target["callgrind"]["pid"]) not in idle:
        settle()
        callgrind(target, "-z")
        time.sleep(IDLE_S)
        idle[target["callgrind"]["dir"] + repr(target["callgrind"]["pid"])] = callgrind_instructions(target) / IDLE_S
report = {"rounds": ROUNDS, "sessions": SESSIONS, "per_session": PER, "per_connection_loops": PERCONN,
          "size": SIZE, "results": {}}
for mode, runner in (("sessions", run_sessions), ("perconn", run_perconn)):
    if mode not in MODES:
        continue
    for rnd in range(ROUNDS):
        order = TARGETS[rnd % len(TARGETS):] + TARGETS[:rnd % len(TARGETS)]
        for target in order:
            settle()
            c0 = cpu_ticks(target["pid"])
            k0s = system_ticks(target["pid"])
            s0 = switches(target["pid"])
            a0 = cpu_ticks(target["aux_pid"]) if target.get("aux_pid") else None
            q0 = s3_requests(target)
            k0 = claims(target.get("metrics"))
            t0 = means(target.get("metrics"))
            prof = None
            if any(target["name"].startswith(p) for p in PERF):
                data = os.path.join(WORK, f"perf-{mode}-{rnd}.data")
                pids = target["pid"] if isinstance(target["pid"], list) else [target["pid"]]
                prof = (subprocess.Popen(["perf", "record", "-q", "-F", "499", "-p", ",".join(map(str, pids)),
                                          "-o", data], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL), data)
            m0 = machine_cpu() if MACHINE else None
            counter = syscall_counter(target["pid"]) if SYSCALLS else None
            if target.get("callgrind"):
                callgrind(target, "-z")
            secs, n, errors = runner(target, rnd)
            instructions = callgrind_instructions(target) if target.get("callgrind") else None
            calls = syscalls_counted(counter) if counter else None
            if MACHINE:
                used = machine_diff(m0, machine_cpu())
                # How busy the cores were: a run that kept them all busy is bound by CPU, not
                # by round trips (its time per file is the machine's CPU per file x sessions
                # / cores).
                used["busy %"] = round(100 * used["all processes"] / secs / os.cpu_count())
                used["machine CPU ms/file"] = round(1000 * used["all processes"] / n, 2)
                report.setdefault("machine", {})[f"{mode}:{target['name']}"] = used
            if prof:
                prof[0].send_signal(2)
                prof[0].wait()
                report.setdefault("perf", {}).setdefault(f"{mode}:{target['name']}", []).append(perf_categories(prof[1]))
            time.sleep(0.3)
            cpu = (cpu_ticks(target["pid"]) - c0) / os.sysconf("SC_CLK_TCK")
            system = (system_ticks(target["pid"]) - k0s) / os.sysconf("SC_CLK_TCK")
            s1 = switches(target["pid"])
            q1 = s3_requests(target)
            k1 = claims(target.get("metrics"))
            r = report["results"].setdefault(f"{mode}:{target['name']}", {"files_per_s": [], "cpu_s": [],
                                                                            "s3_per_file": [], "errors": 0,
                                                                            "files": n})
            if k0 is not None:
                r.setdefault("claims_per_file", []).append((k1 - k0) / n)
            if t0 is not None:
                t1 = means(target.get("metrics"))
                for k in t0:
                    m = mean_ms(t0, t1, k)
                    if m is not None:
                        r.setdefault(k, []).append(m)
            r["files_per_s"].append(n / secs)
            r.setdefault("switches_per_file", []).append([(s1[0] - s0[0]) / n, (s1[1] - s0[1]) / n])
            r["cpu_s"].append(cpu)
            r.setdefault("system_cpu_s", []).append(system)
            if calls is not None:
                r.setdefault("syscalls_per_file", []).append(calls / n)
            if instructions is not None:
                rate = idle[target["callgrind"]["dir"] + repr(target["callgrind"]["pid"])]
                r["idle_instructions_per_s"] = rate
                r.setdefault("instructions_per_file", []).append(instructions / n)
                r.setdefault("busy_instructions_per_file", []).append((instructions - rate * secs) / n)
            if a0 is not None:
                r["aux"] = target["aux"]
                r.setdefault("aux_cpu_s", []).append((cpu_ticks(target["aux_pid"]) - a0) / os.sysconf("SC_CLK_TCK"))
            r["errors"] += len(errors)
            if errors:
                r["last_error"] = errors[-1]
            if q0 is not None:
                r["s3_per_file"].append((q1 - q0) / n)
            print(f"[bench] {mode} {target['name']} round {rnd + 1}: {n / secs:.0f} files/s, "
                  f"{cpu:.2f} CPU s, {len(errors)} errors", file=sys.stderr, flush=True)

for r in report["results"].values():
    r["median_files_per_s"] = statistics.median(r["files_per_s"])
    r["median_cpu_s"] = statistics.median(r["cpu_s"])
    r["median_system_cpu_s"] = statistics.median(r["system_cpu_s"])
    if r.get("aux_cpu_s"):
        r["median_aux_cpu_s"] = statistics.median(r["aux_cpu_s"])
    if r["s3_per_file"]:
        r["median_s3_per_file"] = statistics.median(r["s3_per_file"])
    if r.get("switches_per_file"):
        r["median_switches_per_file"] = [statistics.median(x[i] for x in r["switches_per_file"]) for i in (0, 1)]
    for k in ("syscalls_per_file", "instructions_per_file", "busy_instructions_per_file"):
        if r.get(k):
            r["median_" + k] = statistics.median(r[k])
    if r.get("claims_per_file"):
        r["median_claims_per_file"] = statistics.median(r["claims_per_file"])
    for k in ("upload_ms", "put_object_ms"):
        if r.get(k):
            r["median_" + k] = round(statistics.median(r[k]), 2)

if HOOK_LOG and os.path.exists(HOOK_LOG):
    lat = []
    for line in open(HOOK_LOG):
        recv, finished = line.split()
        lat.append(float(recv) - float(finished))
    lat.sort()
    if lat:
        report["webhook_latency_ms"] = {"n": len(lat), "p50": round(statistics.median(lat) * 1000, 1),
                                        "p99": round(lat[int(len(lat) * 0.99) - 1] * 1000, 1)}
for t in TARGETS:
    n = delivery_retries(t.get("metrics"))
    if n is not None:
        report.setdefault("delivery_retries", {})[t["name"]] = n
print(json.dumps(report))
