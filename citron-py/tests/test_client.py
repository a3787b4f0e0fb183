"""citron.Client against a real citron API over loopback: the in-process server with its API
on 127.0.0.1 (the same router, state store and token checks as ``citron serve``), reached
through real HTTP by the shared Rust client."""

from __future__ import annotations

import hashlib
import io
import pathlib
import threading
from typing import Iterator

import pytest

import citron

ADMIN = "admin-secret-for-tests"


@pytest.fixture
def server(tmp_path: pathlib.Path) -> Iterator[citron.Server]:
    """A lab with an ``api_token``, its API on loopback, state and blobs in ``tmp_path``."""
    lab = citron.Lab.from_yaml(f"api_token: {ADMIN}\n", filename="lab.yaml")
    with citron.Server(lab, tmp_path / "data", http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
        yield srv


@pytest.fixture
def admin(server: citron.Server) -> Iterator[citron.Client]:
    addr = server.api_address
    assert addr is not None
    with citron.Client(f"http://{addr[0]}:{addr[1]}", token=ADMIN) as c:
        yield c


def test_upload_latest_and_digest(admin: citron.Client, tmp_path: pathlib.Path) -> None:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"K" * (3 << 20) + b"tail")  # several chunks of the stream
    with admin.results.open_run("kernel", revision="v6.9", platform="x86_64") as run:
        f = run.upload("images/bzImage", kernel)
        run.upload("config", io.BytesIO(b"CONFIG_X=y\n"))
        run.upload("notes", b"built")
    assert f.sha256 == hashlib.sha256(kernel.read_bytes()).hexdigest() and f.size == kernel.stat().st_size
    assert run.finished is not None and run.finished.status == "success"

    latest = admin.results.latest("kernel", "images/bzImage", platform="x86_64")
    assert latest.sha256 == f.sha256
    assert latest.read(max_bytes=4 << 20) == kernel.read_bytes()
    out = tmp_path / "out" / "bzImage"
    out.parent.mkdir()
    assert latest.download(out) == kernel.stat().st_size
    assert out.read_bytes() == kernel.read_bytes()
    with pytest.raises(ValueError):
        latest.read(max_bytes=10)

    newest = admin.results.latest("kernel")
    assert newest == admin.results.run("kernel", run.id)
    assert sorted(x.path for x in newest.files or []) == ["config", "images/bzImage", "notes"]
    assert [(h.job, h.run, h.path) for h in admin.results.find_by_hash(f.sha256)] == [("kernel", run.id, "images/bzImage")]
    with pytest.raises(citron.NotFoundError):
        admin.results.latest("kernel", platform="arm64")


def test_a_blob_that_changed_on_the_server_is_refused(server: citron.Server, admin: citron.Client, tmp_path: pathlib.Path) -> None:
    with admin.results.open_run("build") as run:
        run.upload("a", b"the right bytes")
    latest = admin.results.latest("build", "a")
    # The store keeps a blob as a file named by its digest; change it behind citron's back.
    stored = [p for p in (tmp_path / "data" / "results").rglob("*") if p.is_file() and latest.sha256 in p.name]
    assert stored, "the blob is not where the local store keeps it"
    stored[0].write_bytes(b"the wrong bytes")
    out = tmp_path / "a"
    try:
        latest.download(out)
    except citron.FetchError:
        pass  # the client checked the digest
    except citron.ApiError as e:
        assert e.status >= 500  # or the server checked it first
    else:
        pytest.fail("a blob whose bytes changed was accepted")
    assert not out.exists(), "a download that failed its check left a file"


def test_a_bad_token_is_401(server: citron.Server, admin: citron.Client) -> None:
    for token in ["wrong", None]:
        with citron.Client(admin.url, token=token) as c:
            with pytest.raises(citron.AuthError) as info:
                c.results.open_run("build")
            assert info.value.status == 401 and isinstance(info.value, PermissionError)
    forged = admin.tokens.mint(["upload"], "build").token[:-4] + "AAAA"
    with pytest.raises(citron.AuthError) as info:
        citron.Client(admin.url, token=forged).results.open_run("build")
    assert info.value.status == 401


def test_out_of_scope_is_403_and_writes_nothing(admin: citron.Client) -> None:
    reader = admin.tokens.mint(["read"], "build", ttl=600.0)
    other_job = admin.tokens.mint(["upload"], "deploy-*", ttl=600.0)
    with citron.Client(admin.url, token=reader.token) as c:
        with pytest.raises(citron.AuthError) as info:
            c.results.open_run("build")
        assert info.value.status == 403 and "upload" in info.value.message
    with citron.Client(admin.url, token=other_job.token) as c:
        with pytest.raises(citron.AuthError) as info:
            c.results.open_run("build")
        assert info.value.status == 403
    assert list(admin.results.runs("build")) == []

    # A tenant's token never reads another tenant's job.
    a, b = admin.tenants.create("team-a"), admin.tenants.create("team-b")
    with citron.Client(admin.url, token=a.token) as ca, citron.Client(admin.url, token=b.token) as cb:
        with ca.results.open_run("firmware") as run:
            run.upload("fw.bin", b"A")
        with pytest.raises(citron.ApiError) as err:
            cb.results.latest("firmware")
        assert err.value.status in (403, 404)
        with pytest.raises(citron.AuthError):
            cb.results.open_run("firmware")
        assert ca.results.latest("firmware", "fw.bin").read() == b"A"


def test_other_content_at_a_path_is_409(admin: citron.Client) -> None:
    run = admin.results.open_run("build")
    admin.results.upload("build", run.id, "out.bin", b"one")
    admin.results.upload("build", run.run, "out.bin", b"one")  # the same again: fine
    with pytest.raises(citron.ConflictError) as info:
        admin.results.upload("build", run.id, "out.bin", b"two")
    assert info.value.status == 409
    admin.results.finish("build", run.id)
    assert admin.results.latest("build", "out.bin").read() == b"one"


def test_a_failing_block_finishes_the_run_as_failure(admin: citron.Client) -> None:
    with pytest.raises(RuntimeError):
        with admin.results.open_run("build") as run:
            run.console("step 1\n")
            raise RuntimeError("the test failed")
    assert admin.results.run("build", run.id).status == "failure"
    with pytest.raises(citron.NotFoundError):
        admin.results.latest("build")  # no successful run
    assert admin.results.latest("build", status="failure").id == run.id


def test_watch_sees_a_finished_run(admin: citron.Client) -> None:
    earlier = admin.results.open_run("build", revision="r1")
    earlier.finish()
    watch = admin.results.watch("build", timeout=20.0)
    assert next(watch).id == earlier.id  # stored events first
    resume_at = watch.last_event_id

    def later() -> None:
        with admin.results.open_run("build", revision="r2") as run:
            run.upload("out", b"2")
        admin.results.open_run("build", revision="r3").finish("failure")

    t = threading.Timer(0.3, later)
    t.start()
    got = next(watch)  # waits for it
    t.join()
    assert (got.revision, got.status) == ("r2", "success") and got.file("out") is not None

    # The failed run is not a success; with status=None every finished run comes, and a new
    # reader resumes after the last event read (Last-Event-ID).
    assert list(admin.results.watch("build", after=resume_at, timeout=1.0)) == [got]
    assert [r.revision for r in admin.results.watch("build", status=None, after=resume_at, timeout=1.0)] == ["r2", "r3"]


def test_runs_iterate_over_pages(admin: citron.Client) -> None:
    for i in range(105):  # more than one page (100)
        admin.results.open_run("many", revision=f"r{i % 2}")
    ids = [r.id for r in admin.results.runs("many")]
    assert len(ids) == 105 and ids == sorted(ids)
    assert len(list(admin.results.runs("many", revision="r1"))) == 52


def test_tokens_subset_and_revoke(admin: citron.Client) -> None:
    t = admin.tokens.mint(["read", "upload"], "build", ttl=600.0)
    with citron.Client(admin.url, token=t.token) as c:
        narrow = c.tokens.subset(scopes=["read"], ttl=60.0)
        assert narrow.expires_at <= t.expires_at
        with pytest.raises(citron.AuthError):
            c.tokens.subset(scopes=["admin"])
        with pytest.raises(citron.AuthError):
            c.tokens.subset(ttl=10_000_000.0)
        c.results.open_run("build").finish()
    admin.tokens.revoke(t)
    with pytest.raises(citron.AuthError) as info:
        citron.Client(admin.url, token=t.token).results.open_run("build")
    assert info.value.status == 401
    with pytest.raises(citron.NotFoundError):
        admin.tokens.revoke("no-such-token")


def test_environment_and_token_file(admin: citron.Client, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITRON_SERVER", admin.url)
    monkeypatch.setenv("CITRON_TOKEN", ADMIN)
    with citron.Client() as c:
        assert c.results.open_run("env").job == "env"
    (tmp_path / "token").write_text(ADMIN + "\n")
    monkeypatch.setenv("CITRON_TOKEN", "wrong")
    with citron.Client(token_file=tmp_path / "token") as c:
        assert c.results.open_run("env").job == "env"
    with pytest.raises(ValueError):
        citron.Client(admin.url, token="a", token_file=tmp_path / "token")
    with pytest.raises(FileNotFoundError):
        citron.Client(admin.url, token_file=tmp_path / "missing")
    monkeypatch.delenv("CITRON_SERVER")
    with pytest.raises(ValueError):
        citron.Client()


def test_closed_and_unreachable(admin: citron.Client) -> None:
    c = citron.Client(admin.url, token=ADMIN)
    c.close()
    with pytest.raises(citron.CitronError):
        c.results.run("build", 1)
    with pytest.raises(citron.UnreachableError):
        citron.Client("http://127.0.0.1:9").results.run("build", 1)
    with pytest.raises(ValueError):
        citron.Client("ftp://127.0.0.1/")


def test_server_client_shares_the_result_types(server: citron.Server, admin: citron.Client) -> None:
    # The in-process server's client and a remote one answer the same classes, equal by value.
    with server.client() as local:
        run = local.results.open_run("build")
        local.results.finish("build", run.id)
        mine = local.results.latest("build")
    theirs = admin.results.latest("build")
    assert type(mine) is type(theirs) is citron.Run
    assert mine == theirs
    with pytest.raises(citron.ServerError):
        citron.Server(http=None, tftp=None, nbd=None).client()
