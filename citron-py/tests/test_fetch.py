"""Loading a job fetches its URLs with the GIL released: a Python HTTP server in this very process
(another thread, which needs the GIL to answer) serves the artifacts."""

from __future__ import annotations

import functools
import hashlib
import http.server
import pathlib
import signal
import socket
import subprocess
import sys
import threading
from typing import Iterator, Tuple

import pytest

import citron
from conftest import DUT1, http_get, wait_for_accesses


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        pass


@pytest.fixture
def origin(tmp_path: pathlib.Path) -> Iterator[Tuple[str, pathlib.Path]]:
    """An HTTP server on 127.0.0.1 serving ``tmp_path``, run by a Python thread."""
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", tmp_path
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(timeout=10)


def test_set_job_fetches_from_a_python_thread_and_serves_it(origin: Tuple[str, pathlib.Path]) -> None:
    base, root = origin
    content = b"\x7fELF" + bytes(range(256)) * 64
    (root / "kernel.bin").write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    job = (
        "deployment:\n  start:\n    storage:\n      http:\n"
        f"        - {{path: /vmlinuz, url: '{base}/kernel.bin', sha256: '{digest}'}}\n"
    )
    with citron.Server(tftp=None) as srv:
        r = srv.set_job("dut1", job)
        [a] = r.artifacts
        assert (a.source, a.url, a.sha256) == ("url", f"{base}/kernel.bin", digest)
        assert http_get(srv, "/vmlinuz", DUT1) == (200, content)
        assert wait_for_accesses(srv, "dut1", 1)[0]["bytes"] == len(content)


def test_a_missing_url_is_a_fetch_error_and_keeps_the_old_job(origin: Tuple[str, pathlib.Path]) -> None:
    base, root = origin
    (root / "ok.txt").write_bytes(b"ok")
    with citron.Server(tftp=None) as srv:
        srv.set_job("dut1", f"deployment:\n  start:\n    storage:\n      http:\n        - {{path: /ok, url: '{base}/ok.txt'}}\n")
        with pytest.raises(citron.FetchError) as info:
            srv.set_job(
                "dut1", f"deployment:\n  start:\n    storage:\n      http:\n        - {{path: /x, url: '{base}/missing'}}\n"
            )
        assert "404" in str(info.value) and f"{base}/missing" in str(info.value)
        assert isinstance(info.value, citron.CitronError)
        assert http_get(srv, "/ok", DUT1) == (200, b"ok")


INTERRUPTED_LOAD = """
import sys, citron
srv = citron.Server(http=None, tftp=None)
try:
    srv.set_job("dut1", "deployment:\\n  start:\\n    kernel: {url: 'http://127.0.0.1:%s/vmlinuz'}\\n")
except KeyboardInterrupt:
    print("interrupted", srv.job("dut1"))
    sys.exit(0)
print("not interrupted")
"""


def test_ctrl_c_interrupts_a_stalled_job_load() -> None:
    # An origin that accepts the connection and never answers: the load would stall until the
    # fetcher's read timeout (60 s) if Ctrl-C were not honoured.
    with socket.socket() as origin:
        origin.bind(("127.0.0.1", 0))
        origin.listen()
        origin.settimeout(30)
        code = INTERRUPTED_LOAD % origin.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            conn, _ = origin.accept()  # the child is now inside set_job, waiting for an answer
            with conn:
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=45)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert (proc.returncode, out) == (0, "interrupted None\n"), err
