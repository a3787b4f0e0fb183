"""The rest of the API from Python against a real ``citron serve`` (its API and HTTP): DUTs and
their jobs, events, access logs, the lab's version/health/readiness/metrics, a run's files,
console and blobs, retention; a reservation's token driving exactly its DUTs. The client's
mirrors of the server's views (``Dut``, ``DutJob``, ``Version``) are compared with the
server's own JSON, so a field added on one side only fails here."""

from __future__ import annotations

import hashlib
import http.client
import json
import pathlib
import time
import urllib.request
from typing import Any, Dict, Iterator

import pytest

import citron
from conftest import Served

ADMIN = "admin-secret-for-route-tests"
JOB = "deployment:\n  start:\n    storage:\n      http:\n        - path: /hello.txt\n          data: hello\n"
LAB = (
    "tenants:\n  ci: {}\n"
    "duts:\n"
    '  - {id: d1, ip: [127.0.8.1], mac: "52:54:00:00:08:01", serial: S1, tags: [x], power: {on: "true", off: "true"}}\n'
    '  - {id: d2, ip: [127.0.8.2], mac: "52:54:00:00:08:02", tags: [x], power: {on: "true", off: "true"}}\n'
)


@pytest.fixture
def served(tmp_path: pathlib.Path) -> Iterator[Served]:
    s = Served(LAB, tmp_path, ADMIN, http=True)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def admin(served: Served) -> Iterator[citron.Client]:
    with citron.Client(served.url, token=ADMIN) as c:
        yield c


def raw(url: str, path: str) -> Dict[str, Any]:
    """The server's own JSON for ``GET path``."""
    req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        doc: Dict[str, Any] = json.load(r)
        return doc


def fields(obj: object) -> set[str]:
    return {a for a in dir(obj) if not a.startswith("_")}


def http_get(served: Served, path: str, source: str) -> int:
    assert served.http is not None
    conn = http.client.HTTPConnection(served.http[0], served.http[1], timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def test_duts_jobs_events_and_accesses(served: Served, admin: citron.Client) -> None:
    assert [d.id for d in admin.duts.list()] == ["d1", "d2"]
    d1 = admin.duts.get("d1")
    assert (d1.ip, d1.mac, d1.tags, d1.job, d1.online) == (["127.0.8.1"], "52:54:00:00:08:01", ["x"], None, True)
    with pytest.raises(citron.NotFoundError):
        admin.duts.job("d1")  # no job yet

    assert admin.duts.set_job("d1", JOB, revision="r1").job == "api:d1"
    job = admin.duts.job("d1")
    assert job.yaml == JOB and job.origin == "api:d1" and job.set_at > 0
    assert http_get(served, "/hello.txt", "127.0.8.1") == 200
    admin.duts.event("d1", "boot")
    deadline = time.monotonic() + 10
    while not (log := list(admin.duts.accesses("d1"))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [(r["protocol"], r["path"], r["outcome"]) for r in log] == [("http", "/hello.txt", "served")]
    assert list(admin.duts.accesses("d1", after=log[-1]["seq"])) == []
    with pytest.raises(citron.ApiError) as info:
        admin.duts.set_job("d1", "deployment: {start: {colour: red}}")
    assert info.value.status == 422
    with pytest.raises(citron.ApiError):
        admin.duts.event("d1", "reboot")  # type: ignore[arg-type]

    # The mirrors agree with the server's JSON, field for field.
    assert fields(admin.duts.get("d1")) == set(raw(served.url, "/api/v1/duts/d1"))
    assert fields(admin.duts.job("d1")) == set(raw(served.url, "/api/v1/duts/d1/job"))
    v = raw(served.url, "/api/v1/version")
    assert fields(admin.version()) == set(v)
    ver = admin.version()
    assert ver.version == v["version"] == citron.__version__
    assert ver.state is not None and (ver.state.engine, ver.state.schema_version) == (v["state"]["engine"], v["state"]["schema_version"])

    admin.duts.clear_job("d1")
    assert admin.duts.get("d1").job is None
    admin.duts.clear_job("d1")  # none is fine
    added = admin.duts.add("d9", ip=["127.0.8.9"], tags=["spare"], machine_id="m9")
    assert (added.id, added.machine_id, added.tags) == ("d9", "m9", ["spare"])
    with pytest.raises(citron.ConflictError):
        admin.duts.add("d10", ip=["127.0.8.9"])  # the address is taken
    admin.duts.remove("d9")
    with pytest.raises(citron.NotFoundError):
        admin.duts.get("d9")
    assert admin.health() and admin.ready()
    assert "citron_build_info" in admin.metrics()


def test_a_reservations_token_drives_exactly_its_duts(admin: citron.Client) -> None:
    tenant = admin.tenants.create("ci")
    with citron.Client(admin.url, token=tenant.token) as ci:
        with ci.reserve(tags=["x"], wait=10.0) as duts:
            mine = duts[0].id
            other = "d2" if mine == "d1" else "d1"
            assert duts.token is not None
            with citron.Client(admin.url, token=duts.token) as holder:
                holder.duts.set_job(mine, JOB)
                assert holder.duts.job(mine).origin == f"api:{mine}"
                holder.duts.event(mine, "job_start")
                assert list(holder.duts.accesses(mine)) == []
                with pytest.raises(citron.AuthError):
                    holder.duts.set_job(other, JOB)
                with pytest.raises(citron.AuthError):
                    holder.duts.remove(mine)  # the administrator's


def test_run_files_console_blobs_and_retention(admin: citron.Client) -> None:
    with admin.results.open_run("build", revision="r1") as run:
        run.upload("out/a.bin", b"abc")
        run.console("step 1\n")
        run.console(b"step 2\n")
    assert admin.results.console("build", run.id) == b"step 1\nstep 2\n"
    with pytest.raises(ValueError):
        admin.results.console("build", run.id, max_bytes=3)
    f = admin.results.file("build", run.id, "out/a.bin")
    assert f.sha256 == hashlib.sha256(b"abc").hexdigest() and f.read() == b"abc"
    assert admin.results.read_latest("build", "out/a.bin") == b"abc"
    assert admin.results.blob(f.sha256).read() == b"abc"
    with pytest.raises(citron.NotFoundError):
        admin.results.blob("00" * 32)
    with pytest.raises(citron.NotFoundError):
        admin.results.file("build", run.id, "missing")

    assert admin.results.retention("build") == admin.results.retention("build")
    r = admin.results.set_retention("build", keep_last=1)
    assert (r.keep_last, r.ttl) == (1, None)
    admin.results.open_run("build", revision="r2").finish()
    # Applied at once: the older run lost its files.
    with pytest.raises(citron.NotFoundError):
        admin.results.file("build", run.id, "out/a.bin")
    r = admin.results.set_retention("build", keep_last=3, ttl=3600.0)
    assert (r.keep_last, r.ttl) == (3, 3600.0) and admin.results.retention("build") == r
    with pytest.raises(citron.ApiError) as info:
        admin.results.set_retention("build", keep_last=0)
    assert info.value.status == 400
