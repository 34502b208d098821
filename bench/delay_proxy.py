"""A TCP proxy that stands in for a long network link: every byte, in each direction, is held
back ONE_WAY_MS milliseconds (so a round trip through it costs twice that) and is otherwise
passed on as fast as it comes. Nothing is throttled and nothing is reordered: what limits a
transfer through it is how many bytes each end keeps in flight, as on a real long link with
enough bandwidth.

    python3 bench/delay_proxy.py LISTEN_PORT UPSTREAM_HOST:PORT ONE_WAY_MS [PORT_FILE]

LISTEN_PORT 0 takes a free port; PORT_FILE, when given, receives the port once it listens.
Bytes held are not bounded (a link with a large bandwidth-delay product holds them too): the
benchmarks that use it move a few hundred MiB at most.
"""

import asyncio
import collections
import sys

PORT, UPSTREAM, DELAY = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]) / 1000
PORT_FILE = sys.argv[4] if len(sys.argv) > 4 else None
HOST, UPORT = UPSTREAM.rsplit(":", 1)


class Delayed:
    """One direction: chunks queued with the time they are due, written in order."""

    def __init__(self, loop):
        self.loop = loop
        self.queue = collections.deque()
        self.out = None  # the transport to write to, once connected
        self.timer = None
        self.eof = False

    def push(self, data):
        self.queue.append((self.loop.time() + DELAY, data))
        if self.timer is None:
            self.timer = self.loop.call_at(self.queue[0][0], self.flush)

    def close_after(self):
        self.eof = True
        if self.timer is None:
            self.timer = self.loop.call_at(self.loop.time() + DELAY, self.flush)

    def flush(self):
        self.timer = None
        if self.out is None:  # upstream not connected yet: try again shortly
            self.timer = self.loop.call_at(self.loop.time() + 0.001, self.flush)
            return
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            self.out.write(self.queue.popleft()[1])
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self.flush)
        elif self.eof:
            if self.out.can_write_eof():
                self.out.write_eof()
            else:
                self.out.close()


class Side(asyncio.Protocol):
    def __init__(self, to_other):
        self.to_other = to_other  # Delayed towards the other side
        self.transport = None
        self.peer = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.to_other.push(data)

    def eof_received(self):
        self.to_other.close_after()
        return True

    def connection_lost(self, exc):
        self.to_other.close_after()


async def handle(client_sock):
    loop = asyncio.get_running_loop()
    up, down = Delayed(loop), Delayed(loop)
    client = Side(up)
    client_transport, _ = await loop.connect_accepted_socket(lambda: client, client_sock)
    down.out = client_transport
    try:
        upstream_transport, _ = await loop.create_connection(lambda: Side(down), HOST, int(UPORT))
    except OSError:
        client_transport.close()
        return
    up.out = upstream_transport


async def main():
    import socket

    loop = asyncio.get_running_loop()
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", PORT))
    srv.listen(128)
    srv.setblocking(False)
    if PORT_FILE:
        with open(PORT_FILE + ".tmp", "w") as f:
            f.write(str(srv.getsockname()[1]))
        import os

        os.rename(PORT_FILE + ".tmp", PORT_FILE)
    while True:
        sock, _ = await loop.sock_accept(srv)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop.create_task(handle(sock))


asyncio.run(main())
