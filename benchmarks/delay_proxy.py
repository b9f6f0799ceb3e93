"""A TCP proxy, in its own process, that holds every request for a set delay: a distant store.

    python benchmarks/delay_proxy.py TARGET_PORT

Listens on a free port of 127.0.0.1 and prints it as its first line; forwards each connection to
127.0.0.1:TARGET_PORT. Each chunk a client sends (an HTTP GET or HEAD is one chunk: no body) waits
the delay before it is forwarded; the answers flow back at once in 1 MiB reads. The delay, in
seconds, is read from stdin, one number a line (0 at start), so one proxy serves every latency of
a benchmark. One asyncio loop: no thread per connection, and no work in the loader's process.
"""
from __future__ import annotations

import asyncio
import os
import sys

CHUNK = 1 << 20


class Delay:
    seconds = 0.0


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delayed: bool) -> None:
    try:
        while chunk := await reader.read(CHUNK):
            if delayed and Delay.seconds:
                await asyncio.sleep(Delay.seconds)
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def serve(target: int) -> None:
    async def connect(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target, limit=4 * CHUNK)
        await asyncio.gather(pump(client_reader, server_writer, True), pump(server_reader, client_writer, False))

    server = await asyncio.start_server(connect, "127.0.0.1", 0, limit=4 * CHUNK)
    print(server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while line := await stdin.readline():
        Delay.seconds = float(line)


if __name__ == "__main__":
    loop = asyncio.new_event_loop()
    loop.run_until_complete(serve(int(sys.argv[1])))  # the benchmark closing stdin ends the process,
    os._exit(0)  # its open connections with it (no cancelled-task noise)
