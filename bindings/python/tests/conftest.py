"""Fixtures: a REAL ``onetrip serve`` (the built binary, a temp data dir, an
ephemeral port on 127.0.0.1), keys made with the CLI, and helpers that read the
console second-factor codes from the server's stderr.

The binary is ``$ONETRIP_BIN`` or ``target/debug/onetrip`` at the repo root
(``cargo build -p onetrip-server``). Without it the tests skip with the reason,
unless ``ONETRIP_REQUIRE_TOOLS=1``, which makes a missing binary a failure.
The server is killed by PID when the session ends, also after a failed test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[3]


def _binary() -> str:
    path = Path(os.environ.get("ONETRIP_BIN") or REPO / "target" / "debug" / "onetrip")
    if not path.is_file():
        reason = f"onetrip binary not found at {path}: run `cargo build -p onetrip-server` or set ONETRIP_BIN"
        if os.environ.get("ONETRIP_REQUIRE_TOOLS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return str(path)


def _clean_env() -> Dict[str, str]:
    """The environment without ONETRIP_* settings that would redirect the server or CLI."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ONETRIP_")}


class Server:
    """A running ``onetrip serve``."""

    def __init__(self, binary: str, data_dir: Path, extra: List[str]) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.stderr_path = data_dir.parent / (data_dir.name + ".stderr")
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [binary, "serve", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0", *extra],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=_clean_env(),
        )
        self.port: Optional[int] = None
        self.fingerprint: Optional[str] = None
        ready = threading.Event()

        def read_stdout() -> None:
            # Keeps draining stdout so the server never blocks on a full pipe.
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").strip()
                if "listening on http://" in line:
                    self.port = int(line.rsplit(":", 1)[1])
                if line.startswith("identity fingerprint: "):
                    self.fingerprint = line.split(": ", 1)[1].strip()
                if self.port and self.fingerprint:
                    ready.set()
            ready.set()

        threading.Thread(target=read_stdout, daemon=True).start()
        if not ready.wait(30) or not (self.port and self.fingerprint):
            self.stop()
            raise RuntimeError(f"onetrip serve did not start:\n{self.stderr()}")
        self.url = f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> str:
        """Runs ``onetrip <args> --data-dir DIR`` and returns its stdout."""
        out = subprocess.run(
            [self.binary, *args, "--data-dir", str(self.data_dir)],
            capture_output=True,
            env=_clean_env(),
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"onetrip {args[0]} failed: {out.stderr.decode(errors='replace')}")
        return out.stdout.decode()

    def create_key(self, *args: str) -> Dict[str, str]:
        """``keys create --json``: returns ``{"api_key": ..., "id": ...}``."""
        v = json.loads(self.cli("keys", "create", "--json", *args))
        return {"api_key": v["api_key"], "id": v["id"]}

    def audience_key(self, audience: str) -> str:
        """The ``<key id hex>:<key hex>`` lines ``onetrip audience-key`` prints."""
        return self.cli("audience-key", audience)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def console_code(self, operation: str, timeout: float = 5.0) -> str:
        """The code the console channel printed for ``operation`` (hex)."""
        marker = f"(operation {operation}): "
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stderr()
            complete = text[: text.rfind("\n") + 1]
            for line in reversed(complete.splitlines()):
                if marker in line:
                    return line.rsplit(": ", 1)[1].strip()
            time.sleep(0.02)
        raise AssertionError(f"no console code for {operation}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # by PID: only the process this fixture started
        self.proc.wait(timeout=10)
        self._stderr.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the session, with console second-factor codes enabled."""
    binary = _binary()
    s = Server(binary, tmp_path_factory.mktemp("onetrip") / "data", ["--otp-console-codes"])
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def db_key(server: Server) -> str:
    """A fresh API key for audience ``db`` with scope ``db:read``."""
    return server.create_key("--name", "py", "--audience", "db", "--scope", "db:read")["api_key"]


class BlackHole:
    """A TCP listener on 127.0.0.1 that accepts and never answers: a network call
    against it lasts exactly the client's timeout."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._conns: List[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for c in self._conns:
            c.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    bh = BlackHole()
    try:
        yield bh
    finally:
        bh.close()


@pytest.fixture
def dead_url() -> str:
    """A 127.0.0.1 URL nothing listens on (a port just bound and released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"
