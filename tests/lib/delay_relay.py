#!/usr/bin/env python3
"""delay_relay.py -- a TCP relay that delays every byte by a fixed time, both ways (tests only)

This kernel has no netem qdisc, so tests put this relay between ferry and Postgres to add
latency: every chunk read from one side is written to the other DELAY_MS later, in order, and
a close travels the same way. The delay is read from DELAY_FILE (milliseconds) when one is
given, at each chunk, so a test can change it while connections stay open.

With RELAY_DOWN_LIMIT=BYTES in the environment it forwards at most BYTES from the target to
the clients, over all connections, and holds the rest: a download stalled at a point the test
chooses by size, whatever the machine's speed.

Usage: delay_relay.py LISTEN_HOST:PORT TARGET_HOST:PORT DELAY_MS [DELAY_FILE]
Prints "listening" once it accepts connections; runs until killed.
"""
import asyncio
import os
import sys
import time


def delay_s(default_ms, path):
    if path:
        try:
            with open(path) as f:
                return int(f.read().strip() or default_ms) / 1000.0
        except (OSError, ValueError):
            pass
    return default_ms / 1000.0


down_left = int(os.environ["RELAY_DOWN_LIMIT"]) if os.environ.get("RELAY_DOWN_LIMIT") else None


async def pump(reader, writer, default_ms, path, down=False):
    """Copy reader to writer, each chunk DELAY later than it arrived (down: within the limit)."""
    queue = asyncio.Queue()

    async def read_side():
        while True:
            try:
                data = await reader.read(65536)
            except (ConnectionError, OSError):
                data = b""
            await queue.put((time.monotonic() + delay_s(default_ms, path), data))
            if not data:
                return

    async def write_side():
        global down_left
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                try:
                    writer.write_eof()
                except (OSError, RuntimeError):
                    pass
                return
            if down and down_left is not None:
                if down_left <= 0:
                    await asyncio.Event().wait()  # held until killed
                data = data[:down_left]
                down_left -= len(data)
            try:
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError):
                return

    await asyncio.gather(read_side(), write_side())


async def handle(creader, cwriter, target, default_ms, path):
    host, port = target
    try:
        sreader, swriter = await asyncio.open_connection(host, port)
    except OSError:
        cwriter.close()
        return
    try:
        await asyncio.gather(pump(creader, swriter, default_ms, path),
                             pump(sreader, cwriter, default_ms, path, down=True))
    finally:
        for w in (cwriter, swriter):
            try:
                w.close()
            except OSError:
                pass


def split(hp):
    host, _, port = hp.rpartition(":")
    return host, int(port)


async def main():
    if len(sys.argv) < 4:
        sys.exit("usage: delay_relay.py LISTEN_HOST:PORT TARGET_HOST:PORT DELAY_MS [DELAY_FILE]")
    lhost, lport = split(sys.argv[1])
    target = split(sys.argv[2])
    default_ms = int(sys.argv[3])
    path = sys.argv[4] if len(sys.argv) > 4 else None
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, target, default_ms, path), lhost, lport)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        os._exit(0)
