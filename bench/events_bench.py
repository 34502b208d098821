"""Close-to-delivery latency and small-file throughput, driven by paramiko SFTP clients.

Run by bench/events.sh, which starts garage, wharf (with a webhook sink pointing here) and
`rclone serve sftp`. Modes:

  latency PORT HOOK_PORT USER KEYFILE SESSIONS FILES_PER_SESSION   (USER "name*": one account per session)
      uploads small files over SESSIONS concurrent sessions; the webhook receiver in this
      process timestamps each event; prints p50/p90/p99/max of (event received - close returned)
  throughput PORT USER KEYFILE SESSIONS FILES_PER_SESSION SIZE
      uploads SIZE-byte files over SESSIONS concurrent sessions; prints files/s
"""

import http.server
import json
import statistics
import sys
import threading
import time

import paramiko


def connect(port, user, keyfile):
    key = paramiko.Ed25519Key.from_private_key_file(keyfile)
    t = paramiko.Transport(("127.0.0.1", port))
    t.connect(username=user, pkey=key)
    return t, paramiko.SFTPClient.from_transport(t)


def upload_many(port, user, keyfile, session, n, size, closed_at):
    # "bench*" means one account per session (bench0, bench1, ...).
    if user.endswith("*"):
        user = f"{user[:-1]}{session}"
    t, sftp = connect(port, user, keyfile)
    payload = b"x" * size
    for i in range(n):
        name = f"s{session}-f{i}.csv"
        with sftp.open(name, "wb") as f:
            f.write(payload)
        # The `with` block returns once the server has answered the close.
        closed_at[f"/{name}"] = time.monotonic()
    sftp.close()
    t.close()


def run_sessions(port, user, keyfile, sessions, per_session, size, closed_at):
    threads = [
        threading.Thread(target=upload_many, args=(port, user, keyfile, s, per_session, size, closed_at))
        for s in range(sessions)
    ]
    start = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.monotonic() - start


def percentile(xs, p):
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def receiver(hook_port, out_path):
    """The webhook, in a process of its own so the clients' threads cannot slow it down."""
    out = open(out_path, "w", buffering=1)

    class Hook(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            out.write(f"{json.loads(body)['subject']} {time.time()}\n")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", hook_port), Hook).serve_forever()


def latency(port, hook_port, user, keyfile, sessions, per_session):
    import multiprocessing
    import os
    import tempfile

    out_path = os.path.join(tempfile.mkdtemp(), "received.txt")
    proc = multiprocessing.Process(target=receiver, args=(hook_port, out_path), daemon=True)
    proc.start()
    time.sleep(0.5)
    closed_mono = {}
    # Wall-clock close times, comparable with the receiver's (same machine, same clock).
    offset = time.time() - time.monotonic()
    elapsed = run_sessions(port, user, keyfile, sessions, per_session, 1024, closed_mono)
    closed_at = {k: v + offset for k, v in closed_mono.items()}
    received = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(out_path) as f:
            received = dict((l.split()[0], float(l.split()[1])) for l in f if l.strip())
        if len(received) >= len(closed_at):
            break
        time.sleep(0.1)
    proc.terminate()
    lat = [(received[k] - closed_at[k]) * 1000 for k in closed_at if k in received]
    missing = len(closed_at) - len(lat)
    print(f"  {len(closed_at)} uploads of 1 KiB over {sessions} sessions in {elapsed:.1f} s; "
          f"{len(lat)} events received, {missing} missing")
    print(f"  close-to-webhook latency ms: p50 {statistics.median(lat):.1f}  p90 {percentile(lat, 90):.1f}  "
          f"p99 {percentile(lat, 99):.1f}  max {max(lat):.1f}  (negative = the event arrived before "
          f"the client saw its close acknowledged)")


def throughput(port, user, keyfile, sessions, per_session, size):
    closed_at = {}
    elapsed = run_sessions(port, user, keyfile, sessions, per_session, size, closed_at)
    n = len(closed_at)
    print(f"{n / elapsed:.1f}")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "latency":
        latency(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6]), int(sys.argv[7]))
    else:
        throughput(int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]))
