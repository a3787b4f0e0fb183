"""citron.Server: real backends in the Python process, driven by real clients over loopback."""

from __future__ import annotations

import errno
import gc
import http.client
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import List, Tuple

import pytest

import citron
from conftest import DUT1, DUT2, http_get, require_tool, wait_for_accesses

HELLO_JOB = """\
deployment:
  start:
    storage:
      http:
        - path: /hello.txt
          data: "hello dut1"
        - path: /job/secret
          data: "s3cr3t"
          lifetime:
            access_count: 1
"""


def test_a_dut_gets_its_file_and_another_dut_does_not(http_server: citron.Server) -> None:
    http_server.set_job("dut1", HELLO_JOB, filename="hello.yaml")
    assert http_get(http_server, "/hello.txt", DUT1) == (200, b"hello dut1")
    status, _ = http_get(http_server, "/hello.txt", DUT2)
    assert status == 404
    # The access log says who got what.
    [rec] = wait_for_accesses(http_server, "dut1", 1)
    assert (rec["protocol"], rec["path"], rec["bytes"], rec["outcome"]) == ("http", "/hello.txt", 10, "served")
    [refused] = wait_for_accesses(http_server, "dut2", 1)
    assert refused["outcome"] == "refused" and refused["reason"]


class _FromAddress(urllib.request.HTTPHandler):
    """urllib with a chosen source address: how a lab script on a multi-homed host acts as a DUT."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        def connect(host: str, timeout: float = 10.0) -> http.client.HTTPConnection:
            return http.client.HTTPConnection(host, timeout=timeout, source_address=(self.source, 0))

        return self.do_open(connect, req)  # type: ignore[arg-type]


def test_urllib_from_a_dut_address(http_server: citron.Server) -> None:
    http_server.set_job("dut1", HELLO_JOB)
    addr = http_server.http_address
    assert addr is not None
    url = f"http://{addr[0]}:{addr[1]}/hello.txt"
    with urllib.request.build_opener(_FromAddress(DUT1)).open(url, timeout=10) as r:
        assert r.status == 200 and r.read() == b"hello dut1"
    # The same URL from 127.0.0.1, which is no DUT of the lab: 404, never dut1's file.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url, timeout=10)
    assert e.value.code == 404


def test_access_count_is_reset_by_a_boot_event(http_server: citron.Server) -> None:
    http_server.set_job("dut1", HELLO_JOB)
    assert http_get(http_server, "/job/secret", DUT1) == (200, b"s3cr3t")
    assert http_get(http_server, "/job/secret", DUT1)[0] == 410
    http_server.event("dut1", "boot")
    assert http_get(http_server, "/job/secret", DUT1) == (200, b"s3cr3t")
    recs = wait_for_accesses(http_server, "dut1", 3)
    assert [a["outcome"] for a in recs] == ["served", "refused", "served"]
    # Pages of the log: records after a `seq`, at most `limit` of them.
    seqs = [a["seq"] for a in recs]
    assert seqs == sorted(seqs)
    assert [a["seq"] for a in http_server.accesses("dut1", after=seqs[0], limit=1)] == [seqs[1]]
    assert http_server.accesses("dut1", after=seqs[-1]) == []


def test_a_server_started_again_on_its_state_serves_what_it_served(tmp_path: pathlib.Path) -> None:
    """The lab's state (SQLite in ``data_dir`` by default) outlives the Server: the job comes
    back, and a read-once secret read before the stop stays read until a boot."""
    data = tmp_path / "data"
    with citron.Server(data_dir=data, tftp=None, nbd=None) as srv:
        srv.set_job("dut1", HELLO_JOB)
        assert http_get(srv, "/job/secret", DUT1) == (200, b"s3cr3t")
    assert (data / "state.sqlite").stat().st_mode & 0o777 == 0o600
    # The data directory is held (locked) by the Server object until it is gone.
    del srv
    gc.collect()
    with citron.Server(data_dir=data, tftp=None, nbd=None) as srv:
        assert http_get(srv, "/hello.txt", DUT1) == (200, b"hello dut1")
        assert http_get(srv, "/job/secret", DUT1)[0] == 410
        srv.event("dut1", "boot")
        assert http_get(srv, "/job/secret", DUT1) == (200, b"s3cr3t")


def test_a_bad_state_url_is_a_server_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(citron.ServerError, match="--state"):
        citron.Server(data_dir=tmp_path / "data", tftp=None, nbd=None, state="mysql://nowhere/db")


def test_each_dut_has_its_own_namespace(http_server: citron.Server) -> None:
    http_server.set_job("dut1", HELLO_JOB)
    other = citron.JobDescription.from_yaml(
        "deployment:\n  start:\n    storage:\n      http:\n        - {path: /hello.txt, data: 'hello dut2'}\n"
    )
    http_server.set_job("dut2", other)
    assert http_get(http_server, "/hello.txt", DUT1) == (200, b"hello dut1")
    assert http_get(http_server, "/hello.txt", DUT2) == (200, b"hello dut2")
    # dut2 cannot reach dut1's secret by any spelling of the path.
    for path in ["/job/secret", "/../job/secret", "//job/./secret"]:
        assert http_get(http_server, path, DUT2)[0] in (400, 404), path


def test_jobs_see_the_servers_address_in_templates(http_server: citron.Server) -> None:
    job = "deployment:\n  start:\n    storage:\n      http:\n        - {path: /base, data: '{{ http_artifact_base }}'}\n"
    http_server.set_job("dut1", job)
    assert http_get(http_server, "/base", DUT1) == (200, (http_server.http_url or "").encode())


def test_stop_frees_the_port_and_is_idempotent() -> None:
    srv = citron.Server(http="127.0.0.1:0", tftp=None)
    addr = srv.http_address
    assert addr is not None and addr[1] != 0
    srv.set_job("dut1", HELLO_JOB)
    assert http_get(srv, "/hello.txt", DUT1)[0] == 200
    srv.stop()
    assert not srv.running
    srv.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(addr, timeout=5).close()
    # Nothing listens there any more: the same port can be bound and listened on again.
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(addr)
        s.listen()
    finally:
        s.close()
    # The gateway outlives the backends: the access log is still readable.
    assert wait_for_accesses(srv, "dut1", 1)[0]["outcome"] == "served"


def test_a_with_block_stops_the_server_even_on_error() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with citron.Server(tftp=None) as srv:
            addr = srv.http_address
            raise RuntimeError("boom")
    assert not srv.running
    assert addr is not None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(addr, timeout=5).close()


def test_a_taken_address_is_a_server_error() -> None:
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        port = blocker.getsockname()[1]
        with pytest.raises(citron.ServerError) as info:
            citron.Server(http=f"127.0.0.1:{port}", tftp=None)
        assert isinstance(info.value, OSError)
        assert f"127.0.0.1:{port}" in str(info.value)
        # As any OSError: the system's reason, so that callers can test it.
        assert info.value.errno == errno.EADDRINUSE
        assert info.value.strerror == os.strerror(errno.EADDRINUSE)
        assert str(info.value).startswith("cannot listen for http on ")  # citron's message, not "[Errno 98] ..."
    finally:
        blocker.close()


def test_an_unusable_data_dir_is_a_server_error_with_errno(tmp_path: pathlib.Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(citron.ServerError) as info:
        citron.Server(data_dir=not_a_dir / "data", http=None, tftp=None)
    assert info.value.errno == errno.ENOTDIR, info.value
    assert info.value.filename is not None and str(not_a_dir) in str(info.value.filename)


def test_tftp_read_with_the_tftp_hpa_client(tmp_path: pathlib.Path) -> None:
    tftp = require_tool("tftp")
    with citron.Server(http=None, tftp="127.0.0.1:0") as srv:
        # tftp-hpa cannot choose its source address; talking to 127.0.0.1 it sends from
        # 127.0.0.1, so that address is this test's DUT.
        srv.add_dut("local", ip=["127.0.0.1"])
        srv.set_job(
            "local",
            "deployment:\n  start:\n    storage:\n      tftp:\n        - {path: /boot/config.txt, data: 'local config'}\n",
        )
        srv.set_job(
            "dut1",
            "deployment:\n  start:\n    storage:\n      tftp:\n        - {path: /boot/config.txt, data: 'dut1 config'}\n",
        )
        addr = srv.tftp_address
        assert addr is not None
        out = tmp_path / "config.txt"
        proc = subprocess.run(
            [tftp, "-4", addr[0], str(addr[1]), "-m", "octet", "-c", "get", "/boot/config.txt", str(out)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert out.read_bytes() == b"local config"
        [rec] = wait_for_accesses(srv, "local", 1)
        assert (rec["protocol"], rec["outcome"], rec["bytes"]) == ("tftp", "served", 12)
        assert srv.accesses("dut1") == []
        # A missing file: tftp-hpa prints the server's error and leaves no file behind.
        missing = tmp_path / "missing"
        proc = subprocess.run(
            [tftp, "-4", addr[0], str(addr[1]), "-m", "octet", "-c", "get", "/nope", str(missing)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "Error code 1" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    # And the UDP port is free again.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(addr)
    finally:
        s.close()


def test_calls_from_many_threads_while_serving(http_server: citron.Server) -> None:
    http_server.set_job("dut1", HELLO_JOB)
    errors: List[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(20):
                assert http_get(http_server, "/hello.txt", DUT1)[0] == 200
                http_server.event("dut2", "boot")
                http_server.accesses("dut1")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    served = [a for a in wait_for_accesses(http_server, "dut1", 80) if a["outcome"] == "served"]
    assert len(served) == 80


def test_dropping_a_running_server_stops_it() -> None:
    srv = citron.Server(tftp=None)
    addr = srv.http_address
    assert addr is not None
    del srv
    gc.collect()
    # The backends stop in the background: wait (bounded) until the port refuses connections.
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(addr, timeout=5).close()
        except ConnectionRefusedError:
            break
        assert time.monotonic() < deadline, f"{addr} still accepts connections after the server was dropped"
        time.sleep(0.05)


def test_the_interpreter_exits_with_a_server_still_running() -> None:
    code = (
        "import citron\n"
        "srv = citron.Server()\n"
        "srv.set_job('dut1', 'deployment:\\n  start:\\n    kernel: {data: k}\\n')\n"
        "print('up', srv.http_address is not None)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "up True\n"), proc.stderr


def test_the_lab_api_shares_the_servers_state() -> None:
    with citron.Server(http=None, tftp=None, api="127.0.0.1:0") as srv:
        addr = srv.api_address
        assert addr is not None
        srv.add_dut("py-added", ip=["127.0.0.70"])

        def call(method: str, path: str, body: str = "") -> Tuple[int, bytes]:
            assert addr is not None
            conn = http.client.HTTPConnection(addr[0], addr[1], timeout=10)
            try:
                # A job is YAML; the API refuses bodies of any other type (415).
                headers = {"Content-Type": "application/yaml"} if body else {}
                conn.request(method, path, body=body.encode() or None, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            finally:
                conn.close()

        status, body = call("GET", "/api/v1/duts")
        assert status == 200
        assert "py-added" in [d["id"] for d in json.loads(body)]
        # A job set over the API is the one Python sees, and the other way round.
        status, _ = call("PUT", "/api/v1/duts/py-added/job", "deployment:\n  start:\n    kernel: {data: k}\n")
        assert status // 100 == 2
        job = srv.job("py-added")
        assert job is not None and [a.path for a in job.artifacts] == ["boot/py-added/kernel"]
        status, body = call("PUT", "/api/v1/duts/dut1/job", "deployment:\n  start:\n    colour: red\n")
        assert status == 422
    assert srv.api_address == addr and not srv.running


def test_nbd_export_with_nbdinfo() -> None:
    nbdinfo = require_tool("nbdinfo")
    with citron.Server(http=None, tftp=None, nbd="127.0.0.1:0") as srv:
        # Like tftp-hpa, nbdinfo cannot choose its source address: 127.0.0.1 is this test's DUT.
        srv.add_dut("local", ip=["127.0.0.1"])
        srv.set_job("local", "deployment:\n  start:\n    storage:\n      nbd:\n        - {name: scratch, raw: {size: 1M}}\n")
        srv.set_job("dut1", "deployment:\n  start:\n    storage:\n      nbd:\n        - {name: private, raw: {size: 2M}}\n")
        addr = srv.nbd_address
        assert addr is not None
        uri = f"nbd://{addr[0]}:{addr[1]}"

        def run(*args: str) -> "subprocess.CompletedProcess[str]":
            return subprocess.run([nbdinfo, *args], capture_output=True, text=True, timeout=60)

        size = run("--size", f"{uri}/scratch")
        assert (size.returncode, size.stdout.strip()) == (0, str(1 << 20)), size.stderr
        listing = run("--list", "--json", uri)
        assert listing.returncode == 0, listing.stderr
        names = [e["export-name"] for e in json.loads(listing.stdout)["exports"]]
        assert names == ["scratch"]  # not dut1's "private"
        assert run("--size", f"{uri}/private").returncode != 0


def test_access_records_have_one_shape_in_python_and_rest() -> None:
    """``Server.accesses`` and ``GET /api/v1/duts/{id}/accesses`` give the same records."""
    with citron.Server(http="127.0.0.1:0", tftp=None, api="127.0.0.1:0") as srv:
        srv.set_job("dut1", HELLO_JOB, filename="hello.yaml")
        assert http_get(srv, "/hello.txt", DUT1)[0] == 200
        assert http_get(srv, "/nothing", DUT1)[0] == 404
        py = wait_for_accesses(srv, "dut1", 2)
        api_address = srv.api_address
        assert api_address is not None
        host, port = api_address
        with urllib.request.urlopen(f"http://{host}:{port}/api/v1/duts/dut1/accesses", timeout=10) as r:
            rest = json.loads(r.read())
    assert [r["outcome"] for r in py] == ["served", "refused"]
    assert py[0]["reason"] is None and py[1]["reason"]
    assert rest == py
    assert set(rest[0]) == {"seq", "time", "protocol", "path", "bytes", "outcome", "reason"}
