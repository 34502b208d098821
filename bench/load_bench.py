"""Load as production sees it, against one wharf instance (driven by bench/load.sh).

Holds IDLE logged-in SFTP sessions, runs HOSTILE connections that try to make the server hold
what it should not (overlapping writes, channel and handle floods, requests whose replies are
never read, connections that never log in), and uploads UPLOADS files of SIZE_MIB with
OpenSSH's sftp at the same time, while sampling the server's RSS and timing new logins.
Prints a JSON report on stdout.
"""
import hashlib
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

import paramiko

PORT = int(os.environ["PORT"])
PID = int(os.environ["WHARF_PID"])
KEY = paramiko.Ed25519Key.from_private_key_file(os.environ["KEY"])
KEY_PATH = os.environ["KEY"]
IDLE = int(os.environ.get("IDLE", "900"))
HOSTILE = int(os.environ.get("HOSTILE", "20"))
UPLOADS = int(os.environ.get("UPLOADS", "100"))
FILE = os.environ["FILE"]
WORK = os.environ["WORK"]


def rss_kib():
    with open(f"/proc/{PID}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def login(user):
    t = paramiko.Transport(("127.0.0.1", PORT))
    t.banner_timeout = 60
    t.connect(username=user, pkey=KEY)
    return t


def packet(kind, rid, body):
    return struct.pack(">IBI", len(body) + 5, kind, rid) + body


def sstr(b):
    return struct.pack(">I", len(b)) + b


def raw_sftp(t):
    ch = t.open_session()
    ch.invoke_subsystem("sftp")
    ch.sendall(struct.pack(">IBI", 5, 1, 3))
    return ch


def read_reply(ch):
    hdr = b""
    while len(hdr) < 4:
        got = ch.recv(4 - len(hdr))
        if not got:
            return None
        hdr += got
    n = struct.unpack(">I", hdr)[0]
    body = b""
    while len(body) < n:
        got = ch.recv(n - len(body))
        if not got:
            return None
        body += got
    return body


def open_write(ch, rid, name):
    ch.sendall(packet(3, rid, sstr(name) + struct.pack(">II", 0x1A, 0)))


# --- hostile connections -----------------------------------------------------------------------
stop = threading.Event()
hostile_seen = {}


def hostile_overlap(i):
    t = login("mallory")
    ch = raw_sftp(t)
    read_reply(ch)
    open_write(ch, 1, f"overlap-{i}.bin".encode())
    handle = read_reply(ch)[9:]
    chunk = os.urandom(250_000)
    refused = 0
    reader = threading.Thread(target=lambda: [read_reply(ch) for _ in range(4000)], daemon=True)
    reader.start()
    for off in range(1, 4001):
        if stop.is_set():
            break
        ch.sendall(packet(6, 10 + off, sstr(handle[4:]) + struct.pack(">Q", off) + sstr(chunk)))
    hostile_seen[f"overlap-{i}"] = "sent 4000 overlapping writes"
    while not stop.is_set():
        time.sleep(0.5)
    t.close()


def hostile_handles(i):
    t = login("mallory")
    granted = 0
    channels = []
    for c in range(20):
        try:
            ch = raw_sftp(t)
            read_reply(ch)
            channels.append(ch)
        except Exception:
            break
    rid = 1
    for ch in channels:
        for h in range(256):
            rid += 1
            open_write(ch, rid, f"h-{i}-{rid}.bin".encode())
            r = read_reply(ch)
            if r is None:
                break
            if r[0] == 102:
                granted += 1
            else:
                break
    hostile_seen[f"handles-{i}"] = {"channels": len(channels), "handles": granted}
    while not stop.is_set():
        time.sleep(0.5)
    t.close()


def hostile_unread(i):
    t = login("mallory")
    ch = raw_sftp(t)
    sent = 0
    try:
        for rid in range(1_000_000):
            if stop.is_set():
                break
            ch.sendall(packet(17, rid, sstr(b"/")))
            sent += 1
    except Exception:
        pass
    hostile_seen[f"unread-{i}"] = {"requests_taken": sent}
    t.close()


def hostile_silent(i):
    s = socket.create_connection(("127.0.0.1", PORT))
    while not stop.is_set():
        try:
            s.settimeout(0.5)
            if s.recv(1 << 16) == b"":
                hostile_seen[f"silent-{i}"] = "closed by the server"
                break
        except socket.timeout:
            pass
        except OSError:
            hostile_seen[f"silent-{i}"] = "closed by the server"
            break
    s.close()


# --- the run ------------------------------------------------------------------------------------
report = {}
base = rss_kib()
report["rss_start_kib"] = base

t0 = time.time()
idle = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "load_idle.py"), str(IDLE)],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
ready = idle.stdout.readline().split()
report["idle_sessions"] = int(ready[1]) if len(ready) == 2 else 0
report["idle_login_seconds"] = round(time.time() - t0, 1)
time.sleep(2)
with_idle = rss_kib()
report["rss_with_idle_kib"] = with_idle
report["rss_per_idle_session_kib"] = round((with_idle - base) / max(1, IDLE), 1)

peak = [with_idle]


def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], rss_kib())
        time.sleep(0.1)


threading.Thread(target=sample, daemon=True).start()

kinds = [hostile_overlap, hostile_handles, hostile_unread, hostile_silent]
hostile = [threading.Thread(target=kinds[i % 4], args=(i,), daemon=True) for i in range(HOSTILE)]
for h in hostile:
    h.start()

latencies = []
ssh = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
       "-o", "IdentitiesOnly=yes", "-i", KEY_PATH, "-P", str(PORT)]


def probe():
    # A new partner logging in during the load: OpenSSH's sftp, connect to first reply.
    while not stop.is_set():
        s = time.time()
        r = subprocess.run(["sftp", *ssh, "-b", "-", "idler@127.0.0.1"], input=b"pwd\n",
                           capture_output=True)
        latencies.append(time.time() - s if r.returncode == 0 else float("inf"))
        if r.returncode != 0:
            report.setdefault("probe_errors", []).append(r.stderr.decode()[-200:])
        time.sleep(0.5)


threading.Thread(target=probe, daemon=True).start()

t0 = time.time()
procs = []
for n in range(UPLOADS):
    p = subprocess.Popen(["sftp", *ssh, "-b", "-", "honest@127.0.0.1"], stdin=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    p.stdin.write(f"put {FILE} up-{n:03}.bin\n".encode())
    p.stdin.close()
    procs.append(p)
failed = [p.stderr.read().decode() for p in procs if p.wait() != 0]
report["upload_seconds"] = round(time.time() - t0, 1)
report["uploads_failed"] = len(failed)
if failed:
    report["upload_errors"] = failed[:3]
stop.set()
time.sleep(1)
report["rss_peak_kib"] = peak[0]
finite = sorted(x for x in latencies if x != float("inf"))
report["login_probes"] = len(latencies)
report["login_failures"] = len(latencies) - len(finite)
if finite:
    report["login_p50_ms"] = round(statistics.median(finite) * 1000, 1)
    report["login_p99_ms"] = round(finite[min(len(finite) - 1, int(len(finite) * 0.99))] * 1000, 1)
report["hostile"] = hostile_seen

with open(FILE, "rb") as f:
    want = hashlib.sha256(f.read()).hexdigest()
events = {}
deadline = time.time() + 60
while time.time() < deadline:
    events = {}
    for line in open(os.path.join(WORK, "events.jsonl")):
        e = json.loads(line)
        if e["type"] == "wharf.upload.completed" and e["data"]["path"].startswith("/up-"):
            events[e["data"]["path"]] = e["data"]["sha256"]
    if len(events) >= UPLOADS:
        break
    time.sleep(1)
report["events_completed"] = len(events)
listed = subprocess.run(
    ["aws", "--endpoint-url", os.environ["WHARF_TEST_S3_ENDPOINT"], "s3api", "list-objects-v2",
     "--bucket", os.environ["WHARF_TEST_S3_BUCKET"], "--prefix", "load/honest/up-",
     "--query", "Contents[].Size", "--output", "json"],
    capture_output=True, text=True, check=True).stdout
sizes = json.loads(listed) or []
report["objects_full_size"] = sum(1 for s in sizes if s == os.path.getsize(FILE))
report["events_sha256_match"] = sum(1 for v in events.values() if v == want)
idle.stdin.close()
idle.wait(timeout=60)
print(json.dumps(report))
