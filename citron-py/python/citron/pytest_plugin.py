"""pytest fixtures for test suites that need a real citron: ``citron_lab`` and ``citron_server``.

pytest loads this module by itself once the package is installed (the ``pytest11`` entry point
of ``citron-lab``), so a test only names the fixture:

.. code-block:: python

    import urllib.request

    def test_the_dut_gets_its_kernel(citron_server):
        citron_server.set_job("dut1", "deployment:\\n  start:\\n    kernel: {data: k}\\n")
        ...

``citron_server`` is a :class:`citron.Server` on loopback (HTTP, TFTP and NBD, ports picked by
the system) serving ``citron_lab``, with its cache, disks and state in the test's ``tmp_path``;
it is stopped, and its ports freed, when the test ends. ``citron_lab`` is the default lab
(``dut1`` at 127.0.0.2, ``dut2`` at 127.0.0.3); override it with a fixture of the same name in a
``conftest.py`` (or a test module) to serve your own::

    @pytest.fixture
    def citron_lab() -> citron.Lab:
        lab = citron.Lab(variables={"tty": "ttyS0"})
        lab.add_dut("board", ip=["127.0.0.9"])
        return lab

``pytest -p no:citron`` turns the plugin off.
"""

from __future__ import annotations

import pathlib
from typing import Iterator

import pytest

import citron

__all__ = ["citron_lab", "citron_server"]


@pytest.fixture
def citron_lab() -> citron.Lab:
    """The lab ``citron_server`` serves: the default lab (``dut1`` = 127.0.0.2, ``dut2`` =
    127.0.0.3). Override this fixture to serve another."""
    return citron.Lab.default()


@pytest.fixture
def citron_server(citron_lab: citron.Lab, tmp_path: pathlib.Path) -> Iterator[citron.Server]:
    """A running :class:`citron.Server` on ``citron_lab``: HTTP, TFTP and NBD on 127.0.0.1 (ports
    picked; see ``http_address`` and friends), data in ``tmp_path / "citron"``; stopped after the
    test."""
    with citron.Server(
        lab=citron_lab,
        data_dir=tmp_path / "citron",
        http="127.0.0.1:0",
        tftp="127.0.0.1:0",
        nbd="127.0.0.1:0",
    ) as srv:
        yield srv
