"""Every route of the API is reachable from Python: each operation of ``citron openapi`` (the
binary's OpenAPI document) maps to the ``citron.Client`` method that calls it, in both the
blocking and the asyncio client. A route added to the server without a client method fails
here; so does a mapping to a method that does not exist."""

from __future__ import annotations

import json
import subprocess
from typing import Dict, List, Set, Tuple

import citron
from conftest import citron_bin

#: operationId -> the methods that send it ("Class.method"; the Async* twin is checked too).
CALLED_BY: Dict[str, List[str]] = {
    # The lab itself.
    "getVersion": ["Client.version"],
    "getHealth": ["Client.health"],
    "getReady": ["Client.ready"],
    "getMetrics": ["Client.metrics"],
    "getOpenApi": ["Client.openapi"],
    "streamEvents": ["Client.events", "Results.watch"],
    # DUTs and their jobs.
    "listDuts": ["Duts.list"],
    "addDut": ["Duts.add"],
    "getDut": ["Duts.get"],
    "removeDut": ["Duts.remove"],
    "getJob": ["Duts.job"],
    "setJob": ["Duts.set_job"],
    "clearJob": ["Duts.clear_job"],
    "postEvent": ["Duts.event"],
    "listAccesses": ["Duts.accesses"],
    # Tenants and tokens.
    "addTenant": ["Tenants.create"],
    "mintToken": ["Tokens.mint"],
    "subsetToken": ["Tokens.subset"],
    "revokeToken": ["Tokens.revoke"],
    # Results.
    "openRun": ["Results.open_run"],
    "listRuns": ["Results.runs"],
    "getRun": ["Results.run"],
    "uploadFile": ["Results.upload", "OpenRun.upload"],
    "getRunFile": ["Results.file"],
    "appendConsole": ["OpenRun.console"],
    "getConsole": ["Results.console"],
    "finishRun": ["Results.finish", "OpenRun.finish"],
    "latestRun": ["Results.latest"],
    "latestFile": ["Results.read_latest"],
    "headLatestFile": ["Results.latest"],
    "resultsByHash": ["Results.find_by_hash"],
    "findRun": ["Results.find"],
    "getRunById": ["Results.run_by_id"],
    "getBlob": ["Latest.read", "Latest.download"],
    "headBlob": ["Results.blob"],
    "getRetention": ["Results.retention"],
    "setRetention": ["Results.set_retention"],
    # The DUT pool.
    "requestDuts": ["Pool.request", "Client.reserve"],
    "listReservations": ["Pool.list"],
    "getReservation": ["Pool.get"],
    "releaseReservation": ["Pool.release", "Client.reserve"],
    "extendReservation": ["Pool.extend"],
    "failReservation": ["Pool.fail"],
    "listPoolDuts": ["Pool.duts"],
    "enablePoolDut": ["Pool.enable", "Pool.disable"],
}

#: Classes whose asyncio twin is ``citron.Async<Name>``.
ASYNC_TWINS = {"Client", "Duts", "Tenants", "Tokens", "Results", "OpenRun", "Latest", "Pool"}


def operations() -> Dict[str, Tuple[str, str]]:
    """operationId -> (METHOD, path) of every operation ``citron openapi`` prints."""
    out = subprocess.run([citron_bin(), "openapi"], capture_output=True, text=True, timeout=60, check=True).stdout
    doc = json.loads(out)
    ops: Dict[str, Tuple[str, str]] = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in {"get", "put", "post", "delete", "patch", "head", "options"}:
                assert "operationId" in op, f"{method.upper()} {path} has no operationId"
                ops[op["operationId"]] = (method.upper(), path)
    return ops


def test_every_operation_has_a_client_method() -> None:
    ops = operations()
    missing = sorted(f"{m} {p} ({oid})" for oid, (m, p) in ops.items() if oid not in CALLED_BY)
    assert not missing, "routes without a Python client method (add one, and a row to CALLED_BY): " + ", ".join(missing)
    stale = sorted(set(CALLED_BY) - set(ops))
    assert not stale, f"CALLED_BY names operations the API no longer has: {stale}"
    assert len(ops) >= 40  # the document was read whole


def test_each_named_method_exists_sync_and_async() -> None:
    absent: Set[str] = set()
    for methods in CALLED_BY.values():
        for name in methods:
            cls, meth = name.split(".")
            for c in [cls, f"Async{cls}"] if cls in ASYNC_TWINS else [cls]:
                if not callable(getattr(getattr(citron, c, None), meth, None)):
                    absent.add(f"{c}.{meth}")
    assert not absent, f"CALLED_BY names methods that do not exist: {sorted(absent)}"


def test_the_served_document_is_the_binarys() -> None:
    with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
        served = c.openapi()
    ops = {op["operationId"] for item in served["paths"].values() for op in item.values() if isinstance(op, dict) and "operationId" in op}
    assert ops == set(operations())
