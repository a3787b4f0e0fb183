"""The Python surface itself: exception classes, bad input, labs, DUT management."""

from __future__ import annotations

import os
import pathlib
import sys
from typing import Any

import pytest

import citron


def test_exception_hierarchy() -> None:
    assert issubclass(citron.JobError, citron.CitronError) and issubclass(citron.JobError, ValueError)
    assert issubclass(citron.LabError, citron.CitronError) and issubclass(citron.LabError, ValueError)
    assert issubclass(citron.UnknownDutError, citron.CitronError) and issubclass(citron.UnknownDutError, KeyError)
    assert issubclass(citron.FetchError, citron.CitronError)
    assert issubclass(citron.ServerError, citron.CitronError) and issubclass(citron.ServerError, OSError)
    assert citron.JobError.__module__ == "citron"
    e = citron.JobError("msg")
    assert e.errors == [] and str(e) == "msg"


def test_unknown_dut_message_is_not_quoted_like_a_key_error() -> None:
    with citron.Server(http=None, tftp=None) as srv:
        with pytest.raises(citron.UnknownDutError) as info:
            srv.event("ghost", "boot")
    assert str(info.value).startswith("no DUT")
    assert "ghost" in str(info.value)


def test_lab_building_and_errors(tmp_path: pathlib.Path) -> None:
    lab = citron.Lab(variables={"a": "1"}, artifact_roots=[tmp_path])
    lab.add_dut("d1", ip=["127.0.0.10", "::ffff:127.0.0.11"], mac="52:54:00:00:00:10", tags=["x"])
    assert lab.duts == [
        {
            "id": "d1",
            "machine_id": "d1",
            "ip": ["127.0.0.10", "::ffff:127.0.0.11"],
            "mac": "52:54:00:00:00:10",
            "serial": None,
            "tags": ["x"],
        }
    ]
    assert lab.artifact_roots == [str(tmp_path)]
    with pytest.raises(citron.LabError, match="already"):
        lab.add_dut("d1")
    with pytest.raises(citron.LabError, match="127.0.0.11"):
        lab.add_dut("d2", ip=["127.0.0.11"])  # the same sender as ::ffff:127.0.0.11
    with pytest.raises(citron.LabError, match="not an IP address"):
        lab.add_dut("d3", ip=["not-an-ip"])
    with pytest.raises(citron.LabError):
        lab.add_dut("../escape")
    assert len(lab.duts) == 1  # failed additions left the lab unchanged


def test_lab_files(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "lab.yaml"
    p.write_text("duts:\n  - id: a\n    ip: [127.0.0.30]\nvariables: {x: y}\nartifact_roots: [arts]\n")
    lab = citron.Lab.from_file(p)
    assert [d["id"] for d in lab.duts] == ["a"]
    assert lab.artifact_roots == [str(tmp_path / "arts")]
    with pytest.raises(citron.LabError) as info:
        citron.Lab.from_yaml("duts: []\nvariablez: {}\n", filename="bad-lab.yaml")
    assert str(info.value).startswith("bad-lab.yaml:2:1: ")
    with pytest.raises(citron.LabError, match="cannot read"):
        citron.Lab.from_file(tmp_path / "missing.yaml")
    with pytest.raises(citron.LabError, match="already"):
        citron.Lab.from_yaml("duts: [{id: a, ip: [127.0.0.5]}, {id: b, ip: [127.0.0.5]}]\n")


def test_server_manages_duts_and_jobs(tmp_path: pathlib.Path) -> None:
    with citron.Server(lab=citron.Lab(), data_dir=tmp_path / "data", http=None, tftp=None) as srv:
        assert srv.duts() == []
        assert srv.data_dir == str(tmp_path / "data")
        srv.add_dut("x", ip=["127.0.0.40"])
        with pytest.raises(citron.LabError):
            srv.add_dut("y", ip=["127.0.0.40"])
        assert srv.job("x") is None
        r = srv.set_job("x", "deployment:\n  start:\n    kernel: {data: kk}\n")
        assert [a.path for a in r.artifacts] == ["boot/x/kernel"]
        assert srv.job("x") == r
        assert srv.clear_job("x") is True
        assert srv.clear_job("x") is False
        srv.remove_dut("x")
        with pytest.raises(citron.UnknownDutError):
            srv.remove_dut("x")
        with pytest.raises(citron.UnknownDutError):
            srv.set_job("x", "deployment: {start: {}}")
        with pytest.raises(KeyError):
            srv.accesses("x")
    assert (tmp_path / "data").is_dir()


def test_server_takes_a_lab_file(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "lab.yaml"
    p.write_text("duts: [{id: only, ip: [127.0.0.50]}]\n")
    with citron.Server(lab=p, http=None, tftp=None) as srv:
        assert [d["id"] for d in srv.duts()] == ["only"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"http": "localhost"},
        {"http": "127.0.0.1:99999"},
        {"tftp": ""},
        {"nbd": "::1"},
    ],
)
def test_bad_listen_addresses_are_server_errors(kwargs: Any) -> None:
    with pytest.raises(citron.ServerError, match="not a socket address"):
        citron.Server(**kwargs)


def test_bad_arguments_raise_and_never_crash() -> None:
    with citron.Server(http=None, tftp=None) as srv:
        with pytest.raises(ValueError, match="unknown event"):
            srv.event("dut1", "explode")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            srv.set_job("dut1", 42)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            srv.add_dut("z", ip="127.0.0.60")  # a str is not a list of addresses
        with pytest.raises(TypeError):
            citron.Server(lab=3)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            citron.JobDescription.from_yaml(b"bytes")  # type: ignore[arg-type]
        # Text that is not YAML, odd characters, a huge line: an error or a job, never a crash.
        for text in ["\x00", "deployment: {start: {storage: {http: [{path: \"a\\0b\", data: x}]}}}", "a" * 100_000]:
            try:
                citron.JobDescription.from_yaml(text).validate()
            except citron.JobError:
                pass


def test_set_job_errors_are_job_errors_with_positions() -> None:
    with citron.Server(http=None, tftp=None) as srv:
        with pytest.raises(citron.JobError) as info:
            srv.set_job("dut1", "deployment:\n  start:\n    colour: red\n", filename="api.yaml")
        [d] = info.value.errors
        assert (d.file, d.line, d.column) == ("api.yaml", 3, 5)
        assert srv.job("dut1") is None


def test_fetch_errors_are_fetch_errors(tmp_path: pathlib.Path) -> None:
    (tmp_path / "k").write_bytes(b"kernel")
    p = tmp_path / "job.yaml"
    p.write_text("deployment:\n  start:\n    kernel: {file: k, sha256: '" + "00" * 32 + "'}\n")
    job = citron.JobDescription.from_file(p)
    with citron.Server(http=None, tftp=None) as srv:
        with pytest.raises(citron.FetchError, match="sha256 mismatch"):
            srv.set_job("dut1", job)


def test_repr_and_version() -> None:
    assert citron.__version__
    assert "dut1" in repr(citron.Lab.default())
    assert repr(citron.JobDescription.from_yaml("deployment: {start: {}}", filename="f.yaml")) == 'JobDescription(filename="f.yaml")'
    srv = citron.Server(http="127.0.0.1:0", tftp=None)
    assert repr(srv) == (
        f"Server(http='127.0.0.1:{srv.http_address[1] if srv.http_address else 0}', tftp=None, "
        f"nbd='127.0.0.1:{srv.nbd_address[1] if srv.nbd_address else 0}', api=None, running=True)"
    )
    srv.stop()
    assert repr(srv).endswith("running=False)")


def test_mangled_jobs_give_job_errors_never_a_panic() -> None:
    """Bounded random mutations of a valid job (fixed seed): each one is a job or a JobError."""
    import random

    base = (pathlib.Path(__file__).resolve().parents[2] / "examples" / "job-hello.yaml").read_text()
    rng = random.Random(1234)
    alphabet = "{}[]:-,'\"\\ \n\t#&*!|>%@`x0{{ }}"
    outcomes = {"ok": 0, "error": 0}
    for _ in range(400):
        chars = list(base)
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(chars))
            op = rng.randrange(3)
            if op == 0:
                del chars[i]
            elif op == 1:
                chars.insert(i, rng.choice(alphabet))
            else:
                chars[i] = rng.choice(alphabet)
        text = "".join(chars)
        try:
            citron.JobDescription.from_yaml(text, filename="m.yaml").render(dut="dut1")
            outcomes["ok"] += 1
        except citron.JobError as e:
            assert e.errors and all(d.line >= 1 and d.column >= 1 for d in e.errors), text
            outcomes["error"] += 1
    assert outcomes["error"] > 0


def test_citron_log_shows_the_rust_log_on_stderr() -> None:
    import subprocess
    import sys

    code = (
        "import citron\n"
        "with citron.Server(http=None, tftp=None, nbd=None) as srv:\n"
        "    srv.set_job('dut1', 'deployment:\\n  start:\\n    kernel: {data: k}\\n')\n"
    )
    env = dict(os.environ, CITRON_LOG="info")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "job loaded" in proc.stderr
    env.pop("CITRON_LOG")
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert (quiet.returncode, quiet.stderr) == (0, "")


def test_lab_errors_carry_positions(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "lab.yaml"
    p.write_text("duts:\n  - id: a\n    ip: [127.0.0.5]\n  - id: b\n    ip: [127.0.0.5]\nvariablez: {}\n")
    with pytest.raises(citron.LabError) as info:
        citron.Lab.from_file(p)
    got = [(d.file, d.line, d.column, d.field) for d in info.value.errors]
    assert got == [(str(p), 5, 10, "duts[1].ip[0]"), (str(p), 6, 1, "variablez")], got
    assert str(info.value).splitlines() == [str(d) for d in info.value.errors]
    assert all(isinstance(d, citron.ErrorDetail) for d in info.value.errors)
    # A DUT id the registry refuses is a lab file error like the others, at the id.
    with pytest.raises(citron.LabError) as info:
        citron.Lab.from_yaml("duts:\n  - id: ../escape\n", filename="l.yaml")
    assert [(d.file, d.line, d.column, d.field) for d in info.value.errors] == [("l.yaml", 2, 9, "duts[0].id")]


def test_lab_errors_of_a_lab_built_in_code_point_at_the_call() -> None:
    lab = citron.Lab()
    lab.add_dut("a", ip=["127.0.0.5"])
    line = sys._getframe().f_lineno + 2
    with pytest.raises(citron.LabError) as info:
        lab.add_dut("b", ip=["127.0.0.5"])
    [d] = info.value.errors
    assert (d.file, d.line, d.field) == (__file__, line, "ip")
    # Python >= 3.11 knows the call's column (the 9th, after 8 spaces).
    assert d.column == (9 if sys.version_info >= (3, 11) else 1)
    assert "127.0.0.5" in d.message
    with pytest.raises(citron.LabError) as info:
        lab.add_dut("c", ip=["127.0.0.6", "not-an-ip"])
    assert [d.field for d in info.value.errors] == ["ip[1]"]
    with citron.Server(lab=lab, http=None, tftp=None) as srv:
        with pytest.raises(citron.LabError) as info:
            srv.add_dut("a", ip=["127.0.0.7"])
        [d] = info.value.errors
        assert (d.file, d.field) == (__file__, "id")
