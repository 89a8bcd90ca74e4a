"""A TCP proxy for outage tests: ``python -m tests.support.tcp_proxy LISTEN_PORT TARGET_PORT``.

SIGUSR1 cuts every connection and refuses new ones (the listener closes); SIGUSR2 restores
it. The shared services behind it are never restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


class Proxy:
    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port = listen_port
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.target_port), timeout=5
            )
        except (OSError, TimeoutError):
            writer.close()
            return
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self.writers -= {writer, up_writer}

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.listen_port)

    def cut(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.writers):
            transport = writer.transport
            transport.abort()
        self.writers.clear()
        print("cut", flush=True)

    async def restore(self) -> None:
        if self.server is None:
            await self.start()
        print("restored", flush=True)


async def main(listen_port: int, target_port: int) -> None:
    proxy = Proxy(listen_port, target_port)
    await proxy.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, proxy.cut)
    loop.add_signal_handler(signal.SIGUSR2, lambda: loop.create_task(proxy.restore()))
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await asyncio.wait_for(stop.wait(), timeout=3600)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))


class RedisProxy:
    """A running proxy subprocess in front of a Redis URL, cut and restored by signals."""

    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url

    def _expect(self, word: str) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        assert line == word, f"proxy said {line!r}, expected {word!r}"

    def cut(self) -> None:
        """Abort every connection and refuse new ones."""
        self.process.send_signal(signal.SIGUSR1)
        self._expect("cut")

    def restore(self) -> None:
        """Accept connections again."""
        self.process.send_signal(signal.SIGUSR2)
        self._expect("restored")


@contextlib.contextmanager
def redis_proxy(redis_url: str, listen_port: int) -> Iterator[RedisProxy]:
    """A TCP proxy to the Redis at ``redis_url`` (TCP only) on ``listen_port``."""
    import redis

    target = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.tcp_proxy", str(listen_port), str(target["port"])],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
    )
    proxy = RedisProxy(process, f"redis://127.0.0.1:{listen_port}/{target.get('db', 0)}")
    try:
        proxy._expect("ready")
        yield proxy
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
