"""The pytest plugin (`citron.pytest_plugin`, entry point `pytest11`): its fixtures, as a test
suite of a lab's user would use them."""

from __future__ import annotations

import importlib.metadata

import pytest

import citron
from conftest import DUT1, DUT2, http_get

JOB = "deployment:\n  start:\n    storage:\n      http:\n        - {path: /hello.txt, data: hi}\n"


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    eps = importlib.metadata.distribution("citron-lab").entry_points
    assert ("pytest11", "citron", "citron.pytest_plugin") in [(ep.group, ep.name, ep.value) for ep in eps]


def test_citron_server_serves_the_default_lab(citron_server: citron.Server) -> None:
    # No import of the plugin anywhere in this suite: pytest found the fixture by the entry point.
    assert citron_server.running
    assert [d["id"] for d in citron_server.duts()] == ["dut1", "dut2"]
    assert citron_server.http_address and citron_server.tftp_address and citron_server.nbd_address
    citron_server.set_job("dut1", JOB)
    assert http_get(citron_server, "/hello.txt", DUT1) == (200, b"hi")
    assert http_get(citron_server, "/hello.txt", DUT2)[0] == 404


def test_citron_lab_can_be_overridden(pytester: pytest.Pytester) -> None:
    # A user's suite: its own lab through a fixture of the same name; the server is stopped
    # after each test (a second test binds again).
    pytester.makeconftest(
        """
import pytest, citron

@pytest.fixture
def citron_lab():
    lab = citron.Lab(variables={"greeting": "hello"})
    lab.add_dut("board", ip=["127.0.0.9"])
    return lab
"""
    )
    pytester.makepyfile(
        """
def test_lab(citron_server):
    assert [d["id"] for d in citron_server.duts()] == ["board"]
    r = citron_server.set_job("board", "deployment: {start: {cmdline: '{{ greeting }}'}}")
    assert r.cmdline == "hello"

def test_again(citron_server):
    assert citron_server.job("board") is None
"""
    )
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
