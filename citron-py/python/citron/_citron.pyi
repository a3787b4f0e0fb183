"""Type stubs of the native module ``citron._citron`` (checked by ``mypy.stubtest``)."""

from datetime import timedelta
from types import TracebackType
from typing import Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Type, Union, final

from citron._types import AccessRecord, ArtifactDict, DutInfo, ErrorDetailDict, ResolvedJobDict, StrPath

__version__: str
__all__ = [
    "Artifact",
    "CitronError",
    "ErrorDetail",
    "FetchError",
    "JobDescription",
    "JobError",
    "JobErrorDetail",
    "Lab",
    "LabError",
    "ResolvedJob",
    "Server",
    "ServerError",
    "UnknownDutError",
    "__version__",
]

class CitronError(Exception):
    """Base class of every error citron raises."""

class JobError(CitronError, ValueError):
    """A job description is invalid; ``errors`` lists every problem with its position."""

    errors: List[ErrorDetail]
    def __init__(self, message: str, errors: Sequence[ErrorDetail] = ...) -> None: ...

class LabError(CitronError, ValueError):
    """A lab description is invalid or inconsistent; ``errors`` lists every problem with its
    position (in the lab file, or the Python call for a lab built in code)."""

    errors: List[ErrorDetail]
    def __init__(self, message: str, errors: Sequence[ErrorDetail] = ...) -> None: ...

class UnknownDutError(CitronError, KeyError):
    """No DUT has this id."""

class FetchError(CitronError):
    """Artifacts could not be fetched or did not match their sha256; ``errors`` has each failure at its ``url:``."""

    errors: List[ErrorDetail]
    def __init__(self, message: str, errors: Sequence[ErrorDetail] = ...) -> None: ...

class ServerError(CitronError, OSError):
    """A server could not start, bind or stop, or its data directory is unusable."""

@final
class ErrorDetail:
    """One problem in a job or lab description, with its position."""

    @property
    def file(self) -> str: ...
    @property
    def line(self) -> int: ...
    @property
    def column(self) -> int: ...
    @property
    def field(self) -> str: ...
    @property
    def message(self) -> str: ...
    def to_dict(self) -> ErrorDetailDict: ...

JobErrorDetail = ErrorDetail

@final
class Artifact:
    """One thing a DUT may fetch."""

    @property
    def step(self) -> Literal["start", "continue"]: ...
    @property
    def kind(self) -> Literal["file", "kernel", "initramfs", "disk"]: ...
    @property
    def protocol(self) -> Literal["http", "tftp", "boot", "nbd"]: ...
    @property
    def path(self) -> str: ...
    @property
    def source(self) -> Literal["data", "file", "url", "filesystem", "raw"]: ...
    @property
    def url(self) -> Optional[str]: ...
    @property
    def size(self) -> Optional[int]: ...
    @property
    def sha256(self) -> Optional[str]: ...
    @property
    def access_count(self) -> Optional[int]: ...
    @property
    def expiration(self) -> Optional[timedelta]: ...
    @property
    def readonly(self) -> Optional[bool]: ...
    @property
    def reset_on(self) -> Optional[Literal["boot", "job_start", "never"]]: ...
    @property
    def shared(self) -> Optional[bool]: ...
    def to_dict(self) -> ArtifactDict: ...

@final
class ResolvedJob:
    """A job rendered for one DUT."""

    @property
    def origin(self) -> str: ...
    @property
    def cmdline(self) -> Optional[str]: ...
    @property
    def continue_cmdline(self) -> Optional[str]: ...
    @property
    def artifacts(self) -> List[Artifact]: ...
    def to_dict(self) -> ResolvedJobDict: ...

@final
class JobDescription:
    """A parsed job description."""

    @staticmethod
    def from_yaml(
        text: str,
        filename: Optional[str] = None,
        *,
        lab: Union[Lab, Server, None] = None,
        dut: Optional[str] = None,
    ) -> JobDescription: ...
    @staticmethod
    def from_file(path: StrPath, *, lab: Union[Lab, Server, None] = None, dut: Optional[str] = None) -> JobDescription: ...
    @property
    def filename(self) -> str: ...
    def validate(self, lab: Union[Lab, Server, None] = None, dut: Optional[str] = None) -> None: ...
    def render(self, dut: str, lab: Union[Lab, Server, None] = None) -> ResolvedJob: ...

@final
class Lab:
    """A lab's DUTs, template variables and ``file:`` roots."""

    def __new__(
        cls,
        variables: Optional[Mapping[str, str]] = None,
        artifact_roots: Optional[Sequence[StrPath]] = None,
    ) -> Lab: ...
    @staticmethod
    def default() -> Lab: ...
    @staticmethod
    def from_yaml(text: str, filename: Optional[str] = None) -> Lab: ...
    @staticmethod
    def from_file(path: StrPath) -> Lab: ...
    def add_dut(
        self,
        id: str,
        ip: Sequence[str] = ...,
        mac: Optional[str] = None,
        tags: Sequence[str] = ...,
        machine_id: Optional[str] = None,
        serial: Optional[str] = None,
    ) -> None: ...
    @property
    def duts(self) -> List[DutInfo]: ...
    @property
    def variables(self) -> Dict[str, str]: ...
    @property
    def artifact_roots(self) -> List[str]: ...

@final
class Server:
    """A running citron: gateway plus HTTP/TFTP/NBD backends, in this process."""

    def __new__(
        cls,
        lab: Union[Lab, StrPath, None] = None,
        data_dir: Optional[StrPath] = None,
        *,
        http: Optional[str] = "127.0.0.1:0",
        tftp: Optional[str] = "127.0.0.1:0",
        nbd: Optional[str] = "127.0.0.1:0",
        api: Optional[str] = None,
        advertise: Optional[str] = None,
        state: Optional[str] = None,
    ) -> Server: ...
    @property
    def http_address(self) -> Optional[Tuple[str, int]]: ...
    @property
    def tftp_address(self) -> Optional[Tuple[str, int]]: ...
    @property
    def nbd_address(self) -> Optional[Tuple[str, int]]: ...
    @property
    def api_address(self) -> Optional[Tuple[str, int]]: ...
    @property
    def http_url(self) -> Optional[str]: ...
    @property
    def data_dir(self) -> str: ...
    @property
    def running(self) -> bool: ...
    def duts(self) -> List[DutInfo]: ...
    def add_dut(
        self,
        id: str,
        ip: Sequence[str] = ...,
        mac: Optional[str] = None,
        tags: Sequence[str] = ...,
        machine_id: Optional[str] = None,
        serial: Optional[str] = None,
    ) -> None: ...
    def remove_dut(self, id: str) -> None: ...
    def set_job(self, dut: str, job: Union[JobDescription, str], filename: Optional[str] = None) -> ResolvedJob: ...
    def job(self, dut: str) -> Optional[ResolvedJob]: ...
    def clear_job(self, dut: str) -> bool: ...
    def event(self, dut: str, event: Literal["boot", "job_start", "job_end"] = "boot") -> None: ...
    def accesses(self, dut: str, after: int = 0, limit: Optional[int] = None) -> List[AccessRecord]: ...
    def metrics(self) -> str: ...
    def stop(self) -> None: ...
    def __enter__(self) -> Server: ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]] = None,
        exc: Optional[BaseException] = None,
        tb: Optional[TracebackType] = None,
    ) -> Literal[False]: ...
