"""The control API's shapes (docs/api.yaml) as typed, read-only values."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple


@dataclass(frozen=True)
class Route:
    """One active route: ``host`` is served from ``target``."""

    host: str
    target: str
    source: str
    """``config``, ``override``, ``discovered`` (a labelled container) or ``app`` (a declared app)."""
    addresses: Tuple[str, ...]
    declared: Optional[str] = None
    """The declared target an override replaces."""
    redirect_https: bool = False
    insecure_upstream: bool = False

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Route":
        return cls(
            host=d["host"],
            target=d["target"],
            source=d["source"],
            addresses=tuple(d.get("addresses", ())),
            declared=d.get("declared"),
            redirect_https=bool(d.get("redirect_https", False)),
            insecure_upstream=bool(d.get("insecure_upstream", False)),
        )


@dataclass(frozen=True)
class Listeners:
    """Where the daemon serves: ``host:port`` strings, as it reports them."""

    http: Tuple[str, ...]
    https: Tuple[str, ...]
    dns: Tuple[str, ...]
    control: str


@dataclass(frozen=True)
class CaInfo:
    """The local certificate authority."""

    root: Path
    """The root certificate alone (PEM)."""
    bundle: Path
    """The system's roots plus the root: what clients should verify with."""
    fingerprint: str
    permitted: Tuple[str, ...]


@dataclass(frozen=True)
class Status:
    """``GET /v1/status``."""

    version: str
    pid: int
    uptime_seconds: float
    state_dir: Path
    config_file: Optional[Path]
    domains: Tuple[str, ...]
    env: Optional[str]
    listeners: Listeners
    ca: Optional[CaInfo]
    routes: int
    overrides: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Status":
        lst = d["listeners"]
        ca = d.get("ca")
        return cls(
            version=d["version"],
            pid=int(d["pid"]),
            uptime_seconds=float(d["uptime_seconds"]),
            state_dir=Path(d["state_dir"]),
            config_file=Path(d["config_file"]) if d.get("config_file") else None,
            domains=tuple(d["domains"]),
            env=d.get("env"),
            listeners=Listeners(
                http=tuple(lst.get("http", ())),
                https=tuple(lst.get("https", ())),
                dns=tuple(lst.get("dns", ())),
                control=lst["control"],
            ),
            ca=CaInfo(
                root=Path(ca["root"]),
                bundle=Path(ca["bundle"]),
                fingerprint=ca.get("fingerprint", ""),
                permitted=tuple(ca.get("permitted", ())),
            )
            if ca
            else None,
            routes=int(d["routes"]),
            overrides=int(d["overrides"]),
        )


@dataclass(frozen=True)
class Container:
    """One container of an app, as the engine reports it now."""

    endpoint: str
    name: str
    state: str
    """Docker's state (``running``, ``exited``...) or ``missing``."""
    address: Optional[str] = None
    serves: Optional[str] = None


@dataclass(frozen=True)
class AppInfo:
    """``GET /v1/apps/{app}``: a declared app and its containers."""

    name: str
    step: str
    image: str
    state: str
    """``pending``, ``starting``, ``ready``, ``restarting`` (ready, replacement starting),
    ``failed`` or ``stopped``."""
    ready_check: str
    depends_on: Tuple[str, ...]
    containers: Tuple[Container, ...]
    error: Optional[str] = None
    ready_in_ms: Optional[int] = None
    restart_policy: str = "on-failure"
    """What happens when its container exits on its own: ``on-failure``, ``always`` or ``no``."""
    restarts: int = 0
    """How often the restart policy started it again since the daemon started."""
    last_exit: Optional[str] = None
    """How its container last ended on its own (``exit code 1``, ``... (OOM)``)."""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "AppInfo":
        return cls(
            name=d["name"],
            step=d["step"],
            image=d["image"],
            state=d["state"],
            ready_check=d["ready_check"],
            depends_on=tuple(d.get("depends_on", ())),
            containers=tuple(
                Container(
                    endpoint=c["endpoint"],
                    name=c["name"],
                    state=c["state"],
                    address=c.get("address"),
                    serves=c.get("serves"),
                )
                for c in d.get("containers", ())
            ),
            error=d.get("error"),
            ready_in_ms=d.get("ready_in_ms"),
            restart_policy=d.get("restart_policy", "on-failure"),
            restarts=int(d.get("restarts", 0)),
            last_exit=d.get("last_exit"),
        )


@dataclass(frozen=True)
class LogLine:
    """A line one of an app's containers wrote."""

    container: str
    endpoint: str
    stream: str
    """``stdout`` or ``stderr``."""
    text: str


@dataclass(frozen=True)
class ErrorFinding:
    """A line an app's ``log_errors`` patterns mark as an error, or a Python traceback as one
    finding: ``line`` is then its last line (the exception) and ``context`` all its lines."""

    app: str
    container: str
    line: str
    context: Tuple[str, ...] = ()

    def __str__(self) -> str:
        return "\n".join([f"{self.container}: {self.line}", *(f"    | {l}" for l in self.context)])


@dataclass(frozen=True)
class ErrorScan:
    """``GET /v1/errors``: the ``itproxy logs --errors`` scan of every container."""

    env: str
    since: float
    containers: int
    findings: Tuple[ErrorFinding, ...] = field(default_factory=tuple)

    def __bool__(self) -> bool:
        """True when an error line was found."""
        return bool(self.findings)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ErrorScan":
        return cls(
            env=d["env"],
            since=float(d["since"]),
            containers=int(d["containers"]),
            findings=tuple(
                ErrorFinding(f["app"], f["container"], f["line"], tuple(f.get("context", ())))
                for f in d["findings"]
            ),
        )

    def report(self) -> str:
        """The findings as ``itproxy logs --errors`` prints them."""
        lines: Sequence[str] = [str(f) for f in self.findings]
        return "\n".join(lines)


@dataclass(frozen=True)
class SnapshotVolume:
    """One volume of a snapshot."""

    app: str
    volume: str
    target: str
    bytes: int


@dataclass(frozen=True)
class Snapshot:
    """A snapshot of the environment's named volumes."""

    name: str
    created: int
    volumes: Tuple[SnapshotVolume, ...]
    took_ms: Optional[int] = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Snapshot":
        return cls(
            name=d["name"],
            created=int(d["created"]),
            volumes=tuple(SnapshotVolume(**v) for v in d["volumes"]),
            took_ms=d.get("took_ms"),
        )


@dataclass(frozen=True)
class Reloaded:
    """``POST /v1/reload``: what reading the config file again changed."""

    routes_added: Tuple[str, ...] = ()
    routes_changed: Tuple[str, ...] = ()
    routes_removed: Tuple[str, ...] = ()
    apps_added: Tuple[str, ...] = ()
    apps_changed: Tuple[str, ...] = ()
    apps_removed: Tuple[str, ...] = ()
    apps_started: Tuple[str, ...] = ()
    """Unchanged apps a failed ``up`` had left unstarted."""
    errors: Tuple[str, ...] = ()
    """Apps that did not become ready, with why (the rest took effect)."""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Reloaded":
        return cls(**{k: tuple(d.get(k, ())) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class AppClock:
    """``GET /v1/apps/{app}/time``: the clock of an app that declares ``faketime``."""

    app: str
    declared: str
    offset_seconds: int
    """Ahead of the real time if positive."""
    now: str
    """What the app's processes read now (RFC 3339, UTC)."""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "AppClock":
        return cls(app=d["app"], declared=d["declared"], offset_seconds=int(d["offset_seconds"]), now=d["now"])
