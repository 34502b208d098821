"""A TCP proxy in front of the S3 test server that holds every answer back by DELAY_MS, so a
bench on one machine sees what a remote S3 endpoint costs per request (a regional endpoint
answers a small PUT, HEAD or LIST in tens of milliseconds; the local one in about one). It
also counts the answers, so each gateway's S3 requests per file can be compared.

    python3 bench/s3_delay_proxy.py LISTEN_PORT UPSTREAM_HOST:PORT DELAY_MS COUNT_FILE

COUNT_FILE is rewritten with the number of HTTP responses seen, at most ten times a second.
Plain HTTP only (the test server speaks it); answers keep their order on each connection.
"""

import asyncio
import os
import sys
import time

PORT, UPSTREAM, DELAY, COUNT_FILE = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]) / 1000, sys.argv[4]
HOST, UPORT = UPSTREAM.rsplit(":", 1)
responses = 0


async def pump(reader, writer, delay, count):
    global responses
    queue = asyncio.Queue()

    async def sender():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    task = asyncio.create_task(sender())
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if count and data.startswith(b"HTTP/1."):
                responses += 1
            queue.put_nowait((time.monotonic() + delay, data))
    except ConnectionError:
        pass
    queue.put_nowait((0, None))
    try:
        await task
    except ConnectionError:
        pass


async def handle(client_r, client_w):
    try:
        up_r, up_w = await asyncio.open_connection(HOST, int(UPORT))
    except OSError:
        client_w.close()
        return
    await asyncio.gather(pump(client_r, up_w, 0, False), pump(up_r, client_w, DELAY, True))


async def report():
    last = -1
    while True:
        if responses != last:
            last = responses
            with open(COUNT_FILE + ".tmp", "w") as f:
                f.write(str(last))
            os.replace(COUNT_FILE + ".tmp", COUNT_FILE)
        await asyncio.sleep(0.1)


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", PORT, backlog=1024)
    asyncio.create_task(report())
    async with server:
        await server.serve_forever()


asyncio.run(main())
