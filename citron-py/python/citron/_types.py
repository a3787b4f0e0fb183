"""Shapes of the plain dicts citron returns, for type checkers (``from citron import DutInfo``)."""

import os
from datetime import timedelta
from typing import List, Literal, Optional, TypedDict, Union

__all__ = ["AccessRecord", "ArtifactDict", "DutInfo", "ErrorDetailDict", "JobErrorDetailDict", "ResolvedJobDict", "StrPath"]

#: A path argument: ``str`` or ``pathlib.Path``.
StrPath = Union[str, "os.PathLike[str]"]


class DutInfo(TypedDict):
    """A DUT as ``Lab.duts`` and ``Server.duts()`` return it."""

    id: str
    machine_id: str
    ip: List[str]
    mac: Optional[str]
    serial: Optional[str]
    tags: List[str]


class AccessRecord(TypedDict):
    """One line of a DUT's access log (``Server.accesses``): the same keys and values as a record of
    the REST API's ``GET /api/v1/duts/{id}/accesses`` (its ``AccessRecord`` schema)."""

    seq: int
    time: float
    protocol: str
    path: str
    bytes: int
    outcome: Literal["served", "aborted", "refused"]
    reason: Optional[str]


class ArtifactDict(TypedDict):
    """``Artifact.to_dict()``."""

    step: str
    kind: str
    protocol: str
    path: str
    source: str
    url: Optional[str]
    size: Optional[int]
    sha256: Optional[str]
    access_count: Optional[int]
    expiration: Optional[timedelta]
    readonly: Optional[bool]
    reset_on: Optional[str]
    shared: Optional[bool]


class ResolvedJobDict(TypedDict):
    """``ResolvedJob.to_dict()``."""

    origin: str
    cmdline: Optional[str]
    continue_cmdline: Optional[str]
    artifacts: List[ArtifactDict]


class ErrorDetailDict(TypedDict):
    """``ErrorDetail.to_dict()``."""

    file: str
    line: int
    column: int
    field: str
    message: str


class JobErrorDetailDict(ErrorDetailDict):
    """The name ``ErrorDetailDict`` had before lab errors had positions too (the same keys)."""
