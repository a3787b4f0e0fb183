"""Shared helpers: real HTTP requests from a chosen source address, tool and backend checks, a
real ``citron serve``."""

from __future__ import annotations

import http.client
import os
import pathlib
import shutil
import subprocess
import time
from typing import Iterator, List, Tuple

import pytest

import citron

#: CI sets this: a test that would skip because a tool is missing fails instead.
STRICT = os.environ.get("CITRON_E2E_STRICT") == "1"

DUT1 = "127.0.0.2"  # default lab: dut1
DUT2 = "127.0.0.3"  # default lab: dut2


def require_tool(name: str) -> str:
    """The tool's path; skips the test when it is missing (fails under CITRON_E2E_STRICT=1)."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (scripts/setup-debian.sh installs it)"
        if STRICT:
            pytest.fail(msg + "; CITRON_E2E_STRICT=1 forbids skipping")
        pytest.skip(msg)
    return path


def http_get(srv: citron.Server, path: str, source: str) -> Tuple[int, bytes]:
    """GET ``path`` from ``srv`` with the request's source address set to ``source``."""
    addr = srv.http_address
    assert addr is not None, "the server has no HTTP listener"
    conn = http.client.HTTPConnection(addr[0], addr[1], timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_for_accesses(srv: citron.Server, dut: str, count: int, timeout: float = 10.0) -> List[citron.AccessRecord]:
    """``dut``'s access log once it has ``count`` records, in request order.

    A read is logged when the server lets go of the file, which can be just after the client
    has everything (TFTP's last ACK, HTTP's last body bytes): poll, bounded, rather than race.
    """
    deadline = time.monotonic() + timeout
    while True:
        recs = srv.accesses(dut)
        if len(recs) >= count or time.monotonic() > deadline:
            return sorted(recs, key=lambda r: r["time"])
        time.sleep(0.02)


@pytest.fixture
def http_server() -> Iterator[citron.Server]:
    """A server on the default lab with only HTTP, stopped after the test."""
    with citron.Server(http="127.0.0.1:0", tftp=None) as srv:
        yield srv


def citron_bin() -> str:
    """The ``citron`` binary: ``$CITRON_BIN``, else the workspace's debug build
    (scripts/test-python.sh builds it); skips when there is none (fails under
    CITRON_E2E_STRICT=1)."""
    env = os.environ.get("CITRON_BIN")
    if env:
        return env
    built = pathlib.Path(__file__).resolve().parents[2] / "target" / "debug" / "citron"
    if built.is_file():
        return str(built)
    msg = "the citron binary is not built (cargo build -p citron-cli, or set CITRON_BIN)"
    if STRICT:
        pytest.fail(msg + "; CITRON_E2E_STRICT=1 forbids skipping")
    pytest.skip(msg)


class Served:
    """A real ``citron serve`` on a lab file (its API, and HTTP for the DUTs when ``http``),
    stopped by :meth:`stop`."""

    def __init__(self, lab_yaml: str, tmp: pathlib.Path, admin_token: str, http: bool = False) -> None:
        lab = tmp / "lab.yaml"
        lab.write_text(lab_yaml)
        self.log = tmp / "citron.log"
        env = dict(os.environ, CITRON_API_TOKEN=admin_token, RUST_LOG="info")
        args = [citron_bin(), "serve", "--lab", str(lab), "--data", str(tmp / "data")]
        args += ["--api", "127.0.0.1:0", "--http", "127.0.0.1:0" if http else "off", "--tftp", "off", "--nbd", "off"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env)
        assert self.proc.stdout is not None
        # "citron: listening http=off tftp=off nbd=off api=127.0.0.1:PORT", once it serves.
        line = self.proc.stdout.readline().decode()
        if not line.startswith("citron: listening "):
            self.stop()
            raise RuntimeError(f"citron serve did not start: {line!r}\n{self.log.read_text()}")
        addrs = dict(kv.split("=", 1) for kv in line.split()[2:])
        self.url = f"http://{addrs['api']}"
        #: The DUTs' HTTP server, ``(host, port)``, or None.
        self.http = None if addrs["http"] == "off" else (addrs["http"].rsplit(":", 1)[0], int(addrs["http"].rsplit(":", 1)[1]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
