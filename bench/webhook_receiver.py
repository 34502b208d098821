"""A webhook receiver for the benchmarks: answers 200 to every POST (keep-alive, as a
production receiver) and notes, per event, when it arrived and when the upload finished
(`<received> <finished_at>` in seconds, one line each), for close-to-webhook latency.

    python3 bench/webhook_receiver.py PORT LOGFILE

It reads HTTP/1.1 with asyncio's protocol callbacks, not `http.server`: the receiver shares
the machine's cores with wharf in the benchmarks, and `http.server` (a thread and an email
header parser per request) cost about 150 us of CPU per event against about 70 us for this
(8,000 events on 4 keep-alive connections). It still parses every request (headers, `Content-Length` body, the event's
JSON) and answers each one; a request it cannot read (no `Content-Length`, such as a chunked
body) gets 501 and closes the connection, so a benchmark sees the failure as failed
deliveries rather than figures.
"""
import asyncio
import datetime
import json
import sys
import time

port, log = int(sys.argv[1]), open(sys.argv[2], "a", buffering=1)
# Named apart from the benchmarks' other Python processes, so that a per-process CPU breakdown
# (small-files.sh MACHINE=1) shows the receiver's share on its own line.
try:
    with open("/proc/self/comm", "w") as comm:
        comm.write("webhook-recv")
except OSError:
    pass

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
UNREADABLE = b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Receiver(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""
        self.need = None  # body length of the request whose headers were read

    def data_received(self, data):
        self.buf += data
        while True:
            if self.need is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head, self.buf = self.buf[:end], self.buf[end + 4:]
                lines = head.split(b"\r\n")
                if not lines[0].startswith(b"POST "):
                    return self.fail(BAD, f"not a POST: {lines[0][:80]!r}")
                length = None
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length is None:
                    return self.fail(UNREADABLE, "a request without Content-Length")
                self.need = length
            if len(self.buf) < self.need:
                return
            body, self.buf = self.buf[:self.need], self.buf[self.need:]
            self.need = None
            now = time.time()
            try:
                d = json.loads(body)["data"]
                fin = datetime.datetime.fromisoformat(d["finished_at"].replace("Z", "+00:00")).timestamp()
            except (ValueError, KeyError, TypeError) as e:
                return self.fail(BAD, f"not an event: {e}")
            log.write(f"{now} {fin}\n")
            self.transport.write(OK)

    def fail(self, answer, why):
        print(f"webhook receiver: {why}", file=sys.stderr)
        self.transport.write(answer)
        self.transport.close()


async def main():
    server = await asyncio.get_running_loop().create_server(Receiver, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


asyncio.run(main())
