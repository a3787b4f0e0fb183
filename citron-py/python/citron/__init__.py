"""citron: the artifact server of a CI test lab, scriptable from Python.

citron serves every device under test (DUT) its own namespace of files over HTTP, TFTP and
NBD, as the DUT's YAML job description says, with lifetimes (read N times per boot, expire
after a while). This package validates and renders job descriptions and runs citron's
servers inside the Python process, e.g. in a test suite:

>>> import citron
>>> job = citron.JobDescription.from_yaml(
...     "deployment:\\n  start:\\n    storage:\\n      http:\\n"
...     "        - {path: /hello.txt, data: hi}\\n", filename="job.yaml")
>>> with citron.Server(tftp=None) as srv:          # dut1 = 127.0.0.2, dut2 = 127.0.0.3
...     _ = srv.set_job("dut1", job)
...     srv.http_address[0]
'127.0.0.1'

Errors are :class:`CitronError` subclasses that are also the matching builtin:
:class:`JobError` and :class:`LabError` (``ValueError``, with ``.errors``: every problem with
its position, :class:`ErrorDetail`), :class:`UnknownDutError` (``KeyError``),
:class:`FetchError` and :class:`ServerError` (``OSError``, with ``errno`` when the system said
why).

A remote citron (``citron serve``) is reached with :class:`Client`, every route of its API:
``client.results`` uploads and reads results (``open_run``, ``upload``, ``latest``, ``runs``,
``find_by_hash``, ``watch``), ``client.tenants`` and ``client.tokens`` hand out access,
``client.duts`` sets jobs and reads access logs, ``client.pool`` and ``with
client.reserve(tags=["x86_64"], count=2, wait=600) as duts:`` take DUTs from the lab's pool
(:class:`ReservationTimeout` when none come in time). Its refusals are :class:`ApiError`
(``status``, ``message``), :class:`AuthError` for 401/403, :class:`NotFoundError`,
:class:`ConflictError`; :class:`UnreachableError` when the server cannot be reached.
:class:`AsyncClient` is the same surface for asyncio (``await``, ``async with``, ``async for``). ``Server.client()`` is the same client for the in-process server.

For pytest, the package brings the fixtures ``citron_server`` and ``citron_lab``
(``citron.pytest_plugin``, loaded by pytest by itself).

The distribution is named ``citron-lab`` (``pip install citron-lab``); the import name is
``citron``.
"""

from citron._citron import (
    AccessesIter,
    AllocatedDut,
    ApiError,
    Artifact,
    AsyncAccessesIter,
    AsyncClient,
    AsyncDuts,
    AsyncEvents,
    AsyncLatest,
    AsyncOpenRun,
    AsyncPool,
    AsyncReservationsIter,
    AsyncReserve,
    AsyncResults,
    AsyncRunsIter,
    AsyncTenants,
    AsyncTokens,
    AsyncWatch,
    AuthError,
    CitronError,
    Client,
    ConflictError,
    Dut,
    DutJob,
    Duts,
    ErrorDetail,
    Event,
    Events,
    FetchError,
    Found,
    HashHit,
    JobDescription,
    JobError,
    JobErrorDetail,
    Lab,
    LabError,
    Latest,
    NotFoundError,
    OpenRun,
    Pool,
    PoolDut,
    Reservation,
    ReservationTimeout,
    ReservationsIter,
    Reserve,
    ResolvedJob,
    ResultFile,
    Results,
    Retention,
    Run,
    RunsIter,
    Server,
    ServerError,
    StateVersion,
    Tenant,
    Tenants,
    Token,
    Tokens,
    UnknownDutError,
    UnreachableError,
    Version,
    Watch,
    __version__,
)
from citron._types import (
    AccessRecord,
    ArtifactDict,
    DutInfo,
    ErrorDetailDict,
    JobErrorDetailDict,
    ResolvedJobDict,
    StrPath,
)

__all__ = [
    "AccessRecord",
    "AccessesIter",
    "AllocatedDut",
    "ApiError",
    "Artifact",
    "ArtifactDict",
    "AsyncAccessesIter",
    "AsyncClient",
    "AsyncDuts",
    "AsyncEvents",
    "AsyncLatest",
    "AsyncOpenRun",
    "AsyncPool",
    "AsyncReservationsIter",
    "AsyncReserve",
    "AsyncResults",
    "AsyncRunsIter",
    "AsyncTenants",
    "AsyncTokens",
    "AsyncWatch",
    "AuthError",
    "CitronError",
    "Client",
    "ConflictError",
    "Dut",
    "DutInfo",
    "DutJob",
    "Duts",
    "ErrorDetail",
    "ErrorDetailDict",
    "Event",
    "Events",
    "FetchError",
    "Found",
    "HashHit",
    "JobDescription",
    "JobError",
    "JobErrorDetail",
    "JobErrorDetailDict",
    "Lab",
    "LabError",
    "Latest",
    "NotFoundError",
    "OpenRun",
    "Pool",
    "PoolDut",
    "Reservation",
    "ReservationTimeout",
    "ReservationsIter",
    "Reserve",
    "ResolvedJob",
    "ResolvedJobDict",
    "ResultFile",
    "Results",
    "Retention",
    "Run",
    "RunsIter",
    "Server",
    "ServerError",
    "StateVersion",
    "StrPath",
    "Tenant",
    "Tenants",
    "Token",
    "Tokens",
    "UnknownDutError",
    "UnreachableError",
    "Version",
    "Watch",
    "__version__",
]
