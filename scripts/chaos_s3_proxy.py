"""A TCP proxy in front of an S3 server that can lose answers, for scripts/chaos.sh: while an
operation is switched on, each request of it is forwarded to S3, and once S3 starts to answer
(so the work is done) the client's connection is closed without the answer, as a timeout or a
connection cut after S3 did the work would. Everything else passes through untouched.

    python3 scripts/chaos_s3_proxy.py LISTEN_PORT UPSTREAM_HOST:PORT CONTROL_PORT LOG_FILE

Control (HTTP on 127.0.0.1:CONTROL_PORT):

    GET /lose?ops=PutObject,CompleteMultipartUpload    lose the answers of these operations
    GET /pass                                          pass every answer through again
    GET /stats                                         JSON: answers lost per operation, mode

Operations: PutObject (PUT without uploadId and without x-amz-copy-source), UploadPart,
CopyObject (PUT with x-amz-copy-source), UploadPartCopy, CreateMultipartUpload,
CompleteMultipartUpload (POST with uploadId=), AbortMultipartUpload, DeleteObject (DELETE
without uploadId), HeadObject, Get. Every lost answer is appended to LOG_FILE (one JSON line).

HTTP/1.1 with keep-alive: every request and answer is parsed (Content-Length or chunked
bodies, interim 100-continue answers, bodiless answers to HEAD) so each answer is matched to
its request, and bodies are streamed through in small pieces, never held whole.
"""

import asyncio
import json
import sys
import time
import urllib.parse

CHUNK = 64 << 10


class Faults:
    """What to lose, and what was lost."""

    def __init__(self, log_path):
        self.lose = set()
        self.lost = {}
        self.requests = 0
        self.log_path = log_path

    def should_lose(self, op):
        return op in self.lose

    def note_lost(self, op, target):
        self.lost[op] = self.lost.get(op, 0) + 1
        with open(self.log_path, "a") as f:
            f.write(json.dumps({"t": time.time(), "op": op, "target": target}) + "\n")


def operation(method, target, headers):
    """The S3 operation a request is, from its request line and headers."""
    query = urllib.parse.urlsplit(target).query
    has_upload_id = "uploadId=" in query
    if method == "PUT":
        if "x-amz-copy-source" in headers:
            return "UploadPartCopy" if has_upload_id else "CopyObject"
        return "UploadPart" if has_upload_id else "PutObject"
    if method == "POST":
        if has_upload_id:
            return "CompleteMultipartUpload"
        if "uploads" in urllib.parse.parse_qs(query, keep_blank_values=True):
            return "CreateMultipartUpload"
        return "Post"
    if method == "DELETE":
        return "AbortMultipartUpload" if has_upload_id else "DeleteObject"
    if method == "HEAD":
        return "HeadObject"
    if method == "GET":
        return "Get"
    return method


def parse_head(raw):
    """(first line, {lower-case header: value}) of an HTTP head."""
    lines = raw.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    return lines[0], headers


async def copy_exactly(reader, writer, n):
    while n > 0:
        data = await reader.read(min(n, CHUNK))
        if not data:
            raise ConnectionError("peer closed mid-body")
        writer.write(data)
        await writer.drain()
        n -= len(data)


async def copy_chunked(reader, writer):
    """Copies a chunked body (chunks, then trailers) as it comes."""
    while True:
        line = await reader.readuntil(b"\r\n")
        writer.write(line)
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:
                trailer = await reader.readuntil(b"\r\n")
                writer.write(trailer)
                if trailer == b"\r\n":
                    await writer.drain()
                    return
        await copy_exactly(reader, writer, size + 2)


async def copy_until_eof(reader, writer):
    while True:
        data = await reader.read(CHUNK)
        if not data:
            return
        writer.write(data)
        await writer.drain()


async def copy_body(reader, writer, headers):
    if "chunked" in headers.get("transfer-encoding", "").lower():
        await copy_chunked(reader, writer)
    elif "content-length" in headers:
        await copy_exactly(reader, writer, int(headers["content-length"]))


class Connection:
    """One client connection and its connection to S3."""

    def __init__(self, faults, client_r, client_w, up_r, up_w):
        self.faults = faults
        self.client_r, self.client_w = client_r, client_w
        self.up_r, self.up_w = up_r, up_w
        # Requests sent upstream and not answered yet: (method, op, target, lose).
        self.pending = asyncio.Queue()

    async def requests(self):
        """Client -> S3, one request after another."""
        while True:
            try:
                raw = await self.client_r.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            line, headers = parse_head(raw)
            parts = line.split(" ")
            method, target = parts[0], parts[1] if len(parts) > 1 else "/"
            op = operation(method, target, headers)
            self.faults.requests += 1
            await self.pending.put((method, op, target, self.faults.should_lose(op)))
            self.up_w.write(raw)
            await self.up_w.drain()
            await copy_body(self.client_r, self.up_w, headers)

    async def answers(self):
        """S3 -> client; closes everything when an answer is to be lost."""
        while True:
            try:
                raw = await self.up_r.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            line, headers = parse_head(raw)
            status = int(line.split(" ")[1])
            if 100 <= status < 200:
                # An interim answer (100 Continue): the request's body follows it.
                self.client_w.write(raw)
                await self.client_w.drain()
                continue
            method, op, target, lose = await self.pending.get()
            if lose:
                self.faults.note_lost(op, target)
                return
            self.client_w.write(raw)
            await self.client_w.drain()
            if method == "HEAD" or status in (204, 304):
                continue
            if "content-length" in headers or "chunked" in headers.get("transfer-encoding", ""):
                await copy_body(self.up_r, self.client_w, headers)
            else:
                await copy_until_eof(self.up_r, self.client_w)
                return

    async def run(self):
        tasks = [asyncio.create_task(self.requests()), asyncio.create_task(self.answers())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for w in (self.client_w, self.up_w):
                w.close()


async def control(faults, reader, writer):
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
        line, _ = parse_head(raw)
        url = urllib.parse.urlsplit(line.split(" ")[1])
        if url.path == "/lose":
            ops = urllib.parse.parse_qs(url.query).get("ops", [""])[0]
            faults.lose = {o for o in ops.split(",") if o}
        elif url.path == "/pass":
            faults.lose = set()
        body = json.dumps(
            {"lose": sorted(faults.lose), "lost": faults.lost, "requests": faults.requests}
        ).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, IndexError):
        pass
    finally:
        writer.close()


async def main(listen_port, upstream, control_port, log_path):
    host, port = upstream.rsplit(":", 1)
    faults = Faults(log_path)

    async def handle(client_r, client_w):
        try:
            up_r, up_w = await asyncio.open_connection(host, int(port), limit=1 << 20)
        except OSError:
            client_w.close()
            return
        await Connection(faults, client_r, client_w, up_r, up_w).run()

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port, backlog=1024, limit=1 << 20)
    ctl = await asyncio.start_server(
        lambda r, w: control(faults, r, w), "127.0.0.1", control_port
    )
    async with server, ctl:
        await asyncio.gather(server.serve_forever(), ctl.serve_forever())


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]))
