"""A Redis server of a test's own (append-only file, fsync on every write, as the
README recommends for a broker), to stop or crash and restart without touching the
machine's shared one."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from tests.integration.private_postgres import free_port


class PrivateRedis:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="weckr-redis-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, as a service manager stops it: Redis runs its SHUTDOWN (clients
        disconnected, the append-only file flushed) and exits 0, or this raises."""
        if self.process is not None:
            self.process.terminate()
            code = self.process.wait(timeout)  # on a timeout, __exit__ kills it
            self.process = None
            if code != 0:
                raise RuntimeError(f"redis-server exited {code} on SIGTERM")

    def crash(self) -> None:
        """SIGKILL: no shutdown save; what survives is what the append-only file has."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.crash()
        shutil.rmtree(self.folder, ignore_errors=True)
