"""A webhook receiver for the benchmarks: answers 200 to every POST (keep-alive, as a
production receiver) and notes, per event, when it arrived and when the upload finished
(`<received> <finished_at>` in seconds, one line each), for close-to-webhook latency.

    python3 bench/webhook_receiver.py PORT LOGFILE
"""
import datetime
import http.server
import json
import sys
import time

port, log = int(sys.argv[1]), open(sys.argv[2], "a", buffering=1)


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        now = time.time()
        d = json.loads(body)["data"]
        fin = datetime.datetime.fromisoformat(d["finished_at"].replace("Z", "+00:00")).timestamp()
        log.write(f"{now} {fin}\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
