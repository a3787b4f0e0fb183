"""The DUT pool from Python (``client.pool``, ``client.reserve``) against a real ``citron
serve``: bare-metal DUTs whose power commands append to a file, two tenants."""

from __future__ import annotations

import pathlib
import time
from typing import Iterator, List

import pytest

import citron
from conftest import Served

ADMIN = "admin-secret-for-pool-tests"


def lab_yaml(power_log: pathlib.Path) -> str:
    power = f'power: {{on: "echo on $CITRON_DUT_ID >> {power_log}", off: "echo off $CITRON_DUT_ID >> {power_log}"}}'
    duts = "".join(
        f"  - id: d{i}\n"
        f'    mac: "52:54:00:00:07:0{i}"\n'
        f"    ip: [127.0.7.{i}]\n"
        f"    arch: {arch}\n"
        f"    model: m{i % 2}\n"
        f"    tags: [{arch}, rack1]\n"
        f"    {power}\n"
        for i, arch in [(1, "x86_64"), (2, "x86_64"), (3, "aarch64")]
    )
    return f"tenants:\n  ci: {{max_lifetime: 1h}}\n  other: {{}}\nduts:\n{duts}"


@pytest.fixture
def served(tmp_path: pathlib.Path) -> Iterator[Served]:
    s = Served(lab_yaml(tmp_path / "power.log"), tmp_path, ADMIN)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def admin(served: Served) -> Iterator[citron.Client]:
    with citron.Client(served.url, token=ADMIN) as c:
        yield c


@pytest.fixture
def ci(admin: citron.Client) -> Iterator[citron.Client]:
    with citron.Client(admin.url, token=admin.tenants.create("ci").token) as c:
        yield c


def until_free(admin: citron.Client, duts: List[str]) -> None:
    """Waits (bounded) until every DUT of ``duts`` is back in the pool."""
    deadline = time.monotonic() + 20
    while True:
        states = {d.id: d.state for d in admin.pool.duts()}
        if all(states[d] == "free" for d in duts):
            return
        assert time.monotonic() < deadline, f"not recycled: {states}"
        time.sleep(0.1)


def test_reserve_holds_for_the_block_and_releases_even_on_error(admin: citron.Client, ci: citron.Client, tmp_path: pathlib.Path) -> None:
    with ci.reserve(tags=["x86_64"], count=2, wait=600) as duts:
        assert isinstance(duts, citron.Reservation) and duts.state == "allocated" and duts.tenant == "ci"
        assert len(duts) == 2 and sorted(d.id for d in duts) == ["d1", "d2"]
        d = duts[0]
        assert isinstance(d, citron.AllocatedDut) and d.kind == "baremetal" and d.arch == "x86_64"
        assert d.ip == [f"127.0.7.{d.id[1]}"] and d.mac is not None and d.job_url == f"/api/v1/duts/{d.id}/job"
        assert duts[-1] == duts.duts[1] and duts.token is not None
        held = {p.id: p for p in admin.pool.duts()}
        assert held["d1"].state == "allocated" and held["d1"].reservation == duts.id and held["d3"].state == "free"
    assert ci.pool.get(duts.id).state == "released"
    until_free(admin, ["d1", "d2"])
    assert sorted((tmp_path / "power.log").read_text().split("\n")) == ["", "off d1", "off d2"]

    with pytest.raises(RuntimeError, match="the test failed"):
        with ci.reserve(tags=["aarch64"], wait=10.0) as held_then_raised:
            raise RuntimeError("the test failed")
    assert ci.pool.get(held_then_raised.id).state == "released"


def test_reserve_times_out_and_withdraws_its_request(admin: citron.Client, ci: citron.Client) -> None:
    other = citron.Client(admin.url, token=admin.tenants.create("other").token)
    with ci.reserve(tags=["x86_64"], count=2, wait=10.0) as mine:
        with pytest.raises(citron.ReservationTimeout) as info:
            with other.reserve(tags=["x86_64"], wait=1.0):
                pytest.fail("the block ran without DUTs")
        assert isinstance(info.value, TimeoutError) and "not allocated within 1" in str(info.value)
        withdrawn = info.value.reservation
        assert withdrawn is not None and other.pool.get(withdrawn).state == "released"
        # Tenants are kept apart: the other one neither sees nor releases mine.
        with pytest.raises(citron.AuthError):
            other.pool.release(mine)
        assert mine.id not in [r.id for r in other.pool.list()]
    until_free(admin, ["d1", "d2"])
    assert all(d.reservation is None for d in admin.pool.duts()), "the withdrawn request took DUTs"
    with pytest.raises(ValueError):
        ci.reserve(kind="container")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ci.reserve(wait=-1.0)


def test_pool_request_get_list_extend_fail_and_duts(admin: citron.Client, ci: citron.Client) -> None:
    with pytest.raises(citron.ApiError) as info:
        ci.pool.request(tags=["x86_64"], count=3)
    assert info.value.status == 400 and "above" in info.value.message
    with pytest.raises(citron.ApiError) as info:
        ci.pool.request(lifetime=7200.0)
    assert info.value.status == 400 and "maximum" in info.value.message

    first = ci.pool.request(tags=["x86_64", "rack1"], count=2, lifetime=600.0, priority=3)
    assert (first.state, first.count, first.lifetime, first.tags) == ("allocated", 2, 600.0, ["x86_64", "rack1"])
    second = ci.pool.request(arch="x86_64", model="m1")
    assert second.state == "waiting" and second.duts == [] and second.token is None
    assert ci.pool.get(second, wait=1.0).state == "waiting"  # long poll, nothing changed
    assert [r.id for r in ci.pool.list()] == [first.id, second.id]
    assert [r.id for r in ci.pool.list(state="waiting")] == [second.id]

    assert ci.pool.extend(first, 1800.0).lifetime == 1800.0
    failed = ci.pool.fail(first.id, keep=3600.0)
    assert failed.state == "failed" and failed.keep_until is not None
    kept = {d.id: d for d in admin.pool.duts()}
    assert kept["d1"].state == kept["d2"].state == "kept"
    with pytest.raises(citron.AuthError):
        ci.pool.duts()  # the administrator's
    assert ci.pool.release(first).state == "failed"  # idempotent: as it ended

    # Kept DUTs come back by hand; the waiting request gets d1 (model m1).
    admin.pool.enable("d1")
    got = ci.pool.get(second.id, wait=20.0)
    assert got.state == "allocated" and [d.id for d in got] == ["d1"] and got.allocated_at is not None
    with pytest.raises(citron.ConflictError):
        admin.pool.disable("d1")  # held
    assert admin.pool.enable("d2").state == "free"
    assert admin.pool.disable("d2").state == "disabled"
    assert ci.pool.release(got).state == "released"
    assert all(isinstance(r, citron.Reservation) for r in admin.pool.list())
