"""``citron.AsyncClient`` against a real ``citron serve``: the pool (``async with
client.reserve``, a timeout, a cancelled wait withdrawing its request, a long poll that does
not block the event loop), results (``async with`` a run, ``async for`` pages, ``watch`` and
the feed) and DUTs. Run with ``asyncio.run`` (no plugin needed)."""

from __future__ import annotations

import asyncio
import pathlib
from typing import Iterator

import pytest

import citron
from conftest import Served

ADMIN = "admin-secret-for-async-tests"
LAB = (
    "tenants:\n  ci: {}\n"
    "duts:\n"
    '  - {id: d1, ip: [127.0.9.1], tags: [x], power: {on: "true", off: "true"}}\n'
    '  - {id: d2, ip: [127.0.9.2], tags: [x], power: {on: "true", off: "true"}}\n'
)
JOB = "deployment:\n  start:\n    storage:\n      http:\n        - path: /hello.txt\n          data: hello\n"


@pytest.fixture
def served(tmp_path: pathlib.Path) -> Iterator[Served]:
    s = Served(LAB, tmp_path, ADMIN)
    try:
        yield s
    finally:
        s.stop()


async def until_released(c: citron.AsyncClient, rid: int) -> citron.Reservation:
    for _ in range(400):
        r = await c.pool.get(rid)
        if r.state != "waiting":
            return r
        await asyncio.sleep(0.05)
    pytest.fail(f"reservation {rid} was not withdrawn")


def test_async_reserve_timeout_and_cancel(served: Served) -> None:
    async def main() -> None:
        async with citron.AsyncClient(served.url, token=ADMIN) as c:
            tenant = await c.tenants.create("ci")
            async with citron.AsyncClient(c.url, token=tenant.token) as ci:
                async with ci.reserve(tags=["x"], count=2, wait=30.0) as duts:
                    assert isinstance(duts, citron.Reservation) and sorted(d.id for d in duts) == ["d1", "d2"]
                    # Nothing left: a second reserve times out and withdraws its request.
                    with pytest.raises(citron.ReservationTimeout) as info:
                        async with ci.reserve(tags=["x"], wait=1.0):
                            pytest.fail("the block ran without DUTs")
                    assert info.value.reservation is not None
                    assert (await ci.pool.get(info.value.reservation)).state == "released"

                    # A task waiting for DUTs, cancelled: its request is withdrawn too.
                    task = asyncio.ensure_future(ci.reserve(tags=["x"], wait=600.0).__aenter__())
                    waiting = []
                    for _ in range(200):
                        waiting = [r async for r in ci.pool.list("waiting")]
                        if waiting:
                            break
                        await asyncio.sleep(0.05)
                    assert len(waiting) == 1
                    # The loop is not blocked while the task long-polls: other calls go on.
                    assert await ci.pool.get(duts.id) == duts and not task.done()
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task
                    assert (await until_released(ci, waiting[0].id)).state == "released"
                assert (await ci.pool.get(duts)).state == "released"

                # A long poll answered once the DUTs come back: run alongside a release.
                first = await ci.pool.request(tags=["x"], count=2)
                second = await ci.pool.request(tags=["x"])
                polled, released = await asyncio.gather(ci.pool.get(second, wait=20.0), ci.pool.release(first))
                assert released.state == "released" and polled.state == "allocated" and len(polled) == 1
                with pytest.raises(RuntimeError):
                    async with ci.reserve(tags=["x"], wait=10.0) as held:
                        raise RuntimeError("the block failed")
                assert (await ci.pool.get(held)).state == "released"
                assert [p.state for p in await c.pool.duts()].count("allocated") == 1  # second's

    asyncio.run(main())


def test_async_results_feed_and_duts(served: Served, tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        (tmp_path / "b").write_bytes(b"from disk")
        async with citron.AsyncClient(served.url, token=ADMIN) as c:
            async with await c.results.open_run("build", revision="r1") as run:
                await run.upload("a.bin", b"abc")
                await run.upload("b.bin", tmp_path / "b")  # streamed from disk
                assert await run.console("log\n") == 4
            assert run.finished is not None and run.finished.status == "success"
            with pytest.raises(RuntimeError):
                async with await c.results.open_run("build", revision="r2"):
                    raise RuntimeError("failed")
            latest = await c.results.latest("build", "b.bin")
            assert await latest.read() == b"from disk"
            assert await latest.download(tmp_path / "out") == 9 and (tmp_path / "out").read_bytes() == b"from disk"
            assert (await c.results.latest("build")).id == run.id
            assert [r.revision async for r in c.results.runs("build")] == ["r1", "r2"]
            assert [r.status async for r in c.results.watch("build", status=None, timeout=1.0)] == ["success", "failure"]
            assert [e.type async for e in c.events("build", type="run_finished", timeout=1.0)] == ["run_finished"] * 2
            assert await c.results.console("build", run.id) == b"log\n"
            assert [h.path for h in await c.results.find_by_hash(latest.sha256)] == ["b.bin"]

            await c.duts.set_job("d1", JOB)
            assert (await c.duts.job("d1")).yaml == JOB
            await c.duts.event("d1", "boot")
            assert [r async for r in c.duts.accesses("d1")] == []
            assert [d.id for d in await c.duts.list()] == ["d1", "d2"]
            assert (await c.version()).version == citron.__version__ and await c.health() and await c.ready()
            with pytest.raises(citron.NotFoundError):
                await c.duts.get("nope")
            t = await c.tokens.mint(["read"], "build", ttl=60.0)
            await c.tokens.revoke(t)
            with pytest.raises(citron.AuthError):
                async with citron.AsyncClient(c.url, token=t.token) as gone:
                    await gone.results.run("build", run.id)
        with pytest.raises(citron.CitronError):
            await c.health()  # closed

    asyncio.run(main())
