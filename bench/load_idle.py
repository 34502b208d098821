"""Holds N logged-in SFTP sessions open and idle (asyncssh: one event loop, no thread per
session), until stdin closes. Prints "ready <n>" once they are all open. Driven by
bench/load_bench.py."""
import asyncio
import os
import sys

import asyncssh


async def main():
    port, n, key = int(os.environ["PORT"]), int(sys.argv[1]), os.environ["KEY"]
    sem = asyncio.Semaphore(32)

    async def one():
        async with sem:
            conn = await asyncssh.connect("127.0.0.1", port, username="idler", client_keys=[key],
                                          known_hosts=None)
            sftp = await conn.start_sftp_client()
            return conn, sftp

    sessions = await asyncio.gather(*(one() for _ in range(n)))
    print(f"ready {len(sessions)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for conn, sftp in sessions:
        conn.close()


asyncio.run(main())
