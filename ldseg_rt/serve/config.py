"""The service's settings: a TOML file (`--config FILE`) with the flags' names as keys, and
the flags on top (a flag given on the command line wins over the file).

    model = "builtin:phantom"
    http = "127.0.0.1:8000"        # "off": no HTTP door
    dicom = "127.0.0.1:11112"      # absent: no DICOM node
    allow_ae = ["SCANNER1", "PACS"]
    destination = "PACS@10.0.0.5:104"
    spool = "/var/lib/ldseg/spool"
    queue = 8
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidArgumentError
from ..options import EngineOptions, NodeOptions, SegmentOptions
from .oip.limits import DEFAULT_MAX_N, DEFAULT_MAX_REQUEST_BYTES

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"
# The settings of the DICOM node that NodeOptions owns (allow_ae is its allowed_aes).
NODE_SETTINGS = ("ae_title", "quiet", "incomplete_after", "idle_timeout", "max_associations", "send_retries",
                 "send_backoff", "keep_received")


@dataclass
class ServeConfig:
    model: str | None = None
    # How the model runs and how images and series are sampled: None takes EngineOptions' and
    # SegmentOptions' defaults (a request may ask for its own n, steps and seed).
    backend: str | None = None
    precision: str | None = None
    n: int | None = None
    steps: int | None = None
    seed: int | None = None  # DICOM series; None: derived from the SeriesInstanceUID (reproducible)
    http: str = f"{LOOPBACK}:8000"  # HOST:PORT or "off"
    dicom: str | None = None  # HOST:PORT of the DICOM node; None: no node
    # How the DICOM node meets the network: None takes NodeOptions' defaults.
    ae_title: str | None = None
    allow_ae: list[str] = field(default_factory=list)
    destination: str | None = None  # AE@HOST:PORT
    output_dir: str | None = None
    spool: str | None = None
    select: str | None = None  # series rule, as `segment --select`
    quiet: float | None = None
    incomplete_after: float | None = None
    idle_timeout: float | None = None
    max_associations: int | None = None
    send_retries: int | None = None
    send_backoff: float | None = None
    keep_received: bool | None = None
    queue: int = 8
    token_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    max_request_mb: float = DEFAULT_MAX_REQUEST_BYTES / 2 ** 20
    max_n: int = DEFAULT_MAX_N  # the most samples one HTTP request may ask for

    def check(self) -> "ServeConfig":
        """Refuse settings that cannot work together, naming the setting."""
        if not self.model:
            raise InvalidArgumentError("no model: pass -m MODEL or set model in the config file")
        for name in ("queue", "max_n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
        self.engine_options()
        n = self.segment_options().n
        if n > self.max_n:
            raise InvalidArgumentError(f"n ({n}) is more than max_n ({self.max_n})")
        if not self.max_request_mb > 0:
            raise InvalidArgumentError("max_request_mb must be positive")
        if self.http_address is None and self.dicom_address is None:
            raise InvalidArgumentError("both doors are off: give --http HOST:PORT or --dicom HOST:PORT")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgumentError("TLS needs both --tls-cert and --tls-key")
        if self.dicom is not None:
            if not self.allow_ae:
                raise InvalidArgumentError("the DICOM node accepts only configured callers: give --allow-ae A,B")
            self.node_options()
            if (self.destination is None) == (self.output_dir is None):
                raise InvalidArgumentError("the DICOM node needs exactly one of --destination AE@HOST:PORT and "
                                           "--output-dir DIR")
            if self.spool is None:
                raise InvalidArgumentError("the DICOM node needs --spool DIR (received instances wait there)")
        return self

    def engine_options(self) -> EngineOptions:
        return EngineOptions.of(**{k: v for k, v in (("backend", self.backend), ("precision", self.precision))
                                   if v is not None})

    def node_options(self) -> NodeOptions:
        """How the DICOM node meets the network (NodeOptions checks each setting)."""
        given = {name: getattr(self, name) for name in NODE_SETTINGS if getattr(self, name) is not None}
        return NodeOptions.of(allowed_aes=tuple(self.allow_ae), **given)

    def segment_options(self) -> SegmentOptions:
        """How series (and, for what a request does not say, images) are segmented."""
        given = {"n": self.n, "steps": self.steps, "seed": self.seed, "select": self.select}
        return SegmentOptions.of(**{k: v for k, v in given.items() if v is not None})

    @property
    def http_address(self) -> tuple[str, int] | None:
        return None if self.http in (None, "off") else parse_address(self.http, "--http")

    @property
    def dicom_address(self) -> tuple[str, int] | None:
        return None if self.dicom is None else parse_address(self.dicom, "--dicom")

    def token(self) -> str | None:
        """The bearer token in token_file (its first line), or None."""
        if self.token_file is None:
            return None
        token = Path(self.token_file).read_text().strip().splitlines()
        if not token or not token[0].strip():
            raise InvalidArgumentError(f"token file {self.token_file} is empty")
        return token[0].strip()


# What each setting of a config file must be (str where not listed).
_INTEGER, _NUMBER = (int, "an integer"), ((int, float), "a number")
_TYPES = {"n": _INTEGER, "max_n": _INTEGER, "steps": _INTEGER, "seed": _INTEGER, "queue": _INTEGER, "quiet": _NUMBER,
          "incomplete_after": _NUMBER, "idle_timeout": _NUMBER, "max_associations": _INTEGER,
          "send_retries": _INTEGER, "send_backoff": _NUMBER, "keep_received": (bool, "true or false"),
          "max_request_mb": _NUMBER, "allow_ae": (list, "a list of AE titles")}


def parse_address(text: str, what: str) -> tuple[str, int]:
    """HOST:PORT ([::1]:PORT for IPv6) -> (host, port); port 0 picks a free one."""
    host, sep, port = str(text).rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgumentError(f"{what} {text!r}: expected HOST:PORT, e.g. {LOOPBACK}:8000")
    try:
        if not ipaddress.ip_address(host).is_loopback:
            log.warning("%s %s: listening beyond this machine", what, text)
    except ValueError:  # a host name
        if host != "localhost":
            log.warning("%s %s: listening beyond this machine", what, text)
    return host, int(port)


def load_config(path) -> ServeConfig:
    """A config from a TOML file; unknown keys are refused (a misspelt key must not be ignored)."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgumentError(f"config file {path}: not valid TOML: {e}") from e
    names = {f.name for f in dataclasses.fields(ServeConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InvalidArgumentError(f"config file {path}: unknown setting(s) {', '.join(unknown)}; "
                                   f"known: {', '.join(sorted(names))}")
    if isinstance(values.get("allow_ae"), str):
        values["allow_ae"] = split_list(values["allow_ae"])
    for key, value in values.items():
        kind, what = _TYPES.get(key, (str, "a string"))
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise InvalidArgumentError(f"config file {path}: {key} = {value!r} should be {what}")
    if not all(isinstance(ae, str) for ae in values.get("allow_ae", [])):
        raise InvalidArgumentError(f"config file {path}: allow_ae should be a list of AE titles")
    return ServeConfig(**values)


def split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
