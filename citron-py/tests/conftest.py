"""Shared helpers: real HTTP requests from a chosen source address, tool and backend checks."""

from __future__ import annotations

import http.client
import os
import shutil
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
