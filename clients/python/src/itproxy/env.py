"""An itproxy environment as a test drives it: the daemon, its apps, routes, names and CA."""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import httpx

from . import _names
from ._control import ControlClient
from .errors import ApiError, CommandFailed, DaemonNotRunning, ItproxyError
from .types import AppClock, AppInfo, CaInfo, ErrorScan, LogLine, Reloaded, Route, Snapshot, Status

When = Union[None, float, int, _dt.datetime]
"""A point in time: Unix seconds, an aware or local datetime, or None for "from the start"."""


def default_state_dir() -> Path:
    """The state directory the ``itproxy`` CLI uses: $ITPROXY_STATE_DIR, else
    $XDG_STATE_HOME/itproxy, else ~/.local/state/itproxy."""
    if os.environ.get("ITPROXY_STATE_DIR"):
        return Path(os.environ["ITPROXY_STATE_DIR"])
    if os.environ.get("XDG_STATE_HOME"):
        return Path(os.environ["XDG_STATE_HOME"]) / "itproxy"
    return Path.home() / ".local/state/itproxy"


def find_binary(binary: Union[str, Path, None] = None) -> str:
    """The ``itproxy`` executable: ``binary``, else $ITPROXY_BIN, else ``itproxy`` on PATH."""
    chosen = binary or os.environ.get("ITPROXY_BIN") or shutil.which("itproxy")
    if not chosen:
        raise ItproxyError(
            "cannot find the itproxy executable: put it on PATH, set ITPROXY_BIN, or pass binary= "
            "(build it with `cargo build --release`; it is target/release/itproxy)"
        )
    return str(chosen)


def _unix_seconds(when: When) -> Optional[float]:
    if when is None:
        return None
    if isinstance(when, _dt.datetime):
        return when.timestamp()
    return float(when)


def _duration(seconds: Optional[float]) -> Optional[str]:
    return None if seconds is None else f"{max(1, int(round(seconds * 1000)))}ms"


class App:
    """A declared app of the environment: ``env.apps["api"]``."""

    def __init__(self, env: "Env", name: str) -> None:
        self._env = env
        self.name = name

    def __repr__(self) -> str:
        return f"App({self.name!r})"

    @property
    def info(self) -> AppInfo:
        """The app and its containers as they are now."""
        return AppInfo.from_json(self._env._control.call("GET", f"/v1/apps/{self.name}"))

    @property
    def state(self) -> str:
        """``pending``, ``starting``, ``ready``, ``restarting`` (ready, replacement starting),
        ``failed`` or ``stopped``."""
        return self.info.state

    def _action(self, action: str, wait: bool, timeout: Optional[float]) -> AppInfo:
        body: Dict[str, Any] = {"wait": wait}
        if timeout is not None:
            body["timeout"] = _duration(timeout)
        # The daemon answers once the app is ready or its timeout passed (the app's own, up to
        # an hour, when none is given here); leave it room.
        http_timeout = 3700.0 if timeout is None else timeout + 60
        return AppInfo.from_json(
            self._env._control.call("POST", f"/v1/apps/{self.name}/{action}", body, timeout=http_timeout)
        )

    def start(self) -> AppInfo:
        """Start the app's containers and return at once (its dependencies must be ready)."""
        return self._action("start", False, None)

    def start_and_wait(self, timeout: Optional[float] = None) -> AppInfo:
        """Start the app and return once it is ready; raise :class:`NotReady` with its last log
        lines if it is not within ``timeout`` seconds (default: the app's ``ready.timeout``)."""
        return self._action("start", True, timeout)

    def stop(self) -> AppInfo:
        """Stop the app: its routes go first, then its containers (SIGTERM, SIGKILL after 10 s)."""
        return self._action("stop", True, None)

    def restart_and_wait(self, timeout: Optional[float] = None) -> AppInfo:
        """Restart and return once the app is ready again (see :meth:`start_and_wait`): blue/green
        unless the app is ``restart = "stop-first"``, so it serves throughout."""
        return self._action("restart", True, timeout)

    def reset_and_wait(self, timeout: Optional[float] = None) -> AppInfo:
        """Start the app afresh and wait for it: its containers recreated from the image and
        its named volumes emptied (their data is lost), as a fixture between tests."""
        return self._action("reset", True, timeout)

    @property
    def clock(self) -> AppClock:
        """The clock of an app that declares ``faketime``: what its processes read now."""
        return AppClock.from_json(self._env._control.call("GET", f"/v1/apps/{self.name}/time"))

    def set_time(self, time: str) -> AppClock:
        """Move the app's clock while it runs: an offset (``"+2d"``, ``"-3h"``) or a UTC time
        (``"2031-01-01 00:00:00"``); its processes read it within a second."""
        return AppClock.from_json(
            self._env._control.call("POST", f"/v1/apps/{self.name}/time", body={"time": time})
        )

    def reset_time(self) -> AppClock:
        """Put the app's clock back as declared (its ``faketime``, from now)."""
        return self.set_time("declared")

    def logs(self, tail: Optional[int] = None, since: When = None) -> List[LogLine]:
        """What the app's containers wrote (stdout and stderr), the last ``tail`` lines of each."""
        data = self._env._control.call(
            "GET", f"/v1/apps/{self.name}/logs", params={"tail": tail, "since": _unix_seconds(since)}
        )
        return [LogLine(**l) for l in data["lines"]]


class Apps(Mapping[str, App]):
    """The environment's declared apps, by name, in step order."""

    def __init__(self, env: "Env") -> None:
        self._env = env

    def _names(self) -> List[str]:
        data = self._env._control.call("GET", "/v1/apps")
        return [a["name"] for a in data["apps"]]

    def __getitem__(self, name: str) -> App:
        names = self._names()
        if name not in names:
            raise KeyError(
                f"there is no app {name!r} in this environment (apps: {', '.join(names) or 'none'})"
            )
        return App(self._env, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    @property
    def phase(self) -> str:
        """The environment's phase: ``idle``, ``starting``, ``ready`` or ``failed``."""
        return str(self._env._control.call("GET", "/v1/apps")["phase"])


class RouteChange:
    """A route set by :meth:`Env.route`; as a context manager it puts the route back on exit
    as it was before (the previous override, the declared target, or no route)."""

    def __init__(self, env: "Env", name: str, before: Optional[Route], route: Route) -> None:
        self._env = env
        self.name = name
        self.before = before
        self.route = route

    def __enter__(self) -> Route:
        return self.route

    def __exit__(self, *exc: Any) -> None:
        self.undo()

    def undo(self) -> None:
        """Put the route back as it was before the change."""
        before = self.before
        if before is None:
            try:
                self._env.unroute(self.name)
            except ApiError as e:
                if e.code != "no_route":
                    raise
        elif before.source == "override":
            self._env.route(
                self.name,
                before.target,
                redirect_https=before.redirect_https,
                insecure_upstream=before.insecure_upstream,
            )
        else:
            self._env.restore(self.name)


class Env:
    """A running itproxy daemon and the environment it serves.

    ``Env.connect()`` attaches to a daemon that runs; ``Env.up(config)`` starts one (and its
    apps) and ``env.down()`` removes it all. Use it as a context manager to close its clients.
    """

    def __init__(self, state_dir: Union[str, Path], *, config: Union[str, Path, None] = None,
                 binary: Union[str, Path, None] = None) -> None:
        self.state_dir = Path(state_dir)
        self.config = Path(config) if config else None
        self._binary = binary
        self._control = ControlClient(self.state_dir)
        self._status: Optional[Status] = None

    # -- the daemon ---------------------------------------------------------------------------

    @classmethod
    def connect(cls, state_dir: Union[str, Path, None] = None) -> "Env":
        """Attach to the daemon running with ``state_dir`` (default: the CLI's); raise
        :class:`DaemonNotRunning` if none answers."""
        env = cls(state_dir or default_state_dir())
        env.status()
        return env

    @classmethod
    def up(cls, config: Union[str, Path, None] = None, *, state_dir: Union[str, Path, None] = None,
           steps: Sequence[str] = (), args: Sequence[str] = (), binary: Union[str, Path, None] = None,
           timeout: float = 900) -> "Env":
        """Run ``itproxy up --detach``: start the daemon and the config's apps, and return once
        every app is ready; raise :class:`CommandFailed` with the reason (and the apps' last log
        lines) otherwise. ``config`` defaults to ./itproxy.toml as for the CLI."""
        env = cls(state_dir or default_state_dir(), config=config, binary=binary)
        cmd = [find_binary(binary), "up", "--detach", "--state-dir", str(env.state_dir)]
        if config:
            cmd += ["--config", str(config)]
        for s in steps:
            cmd += ["--step", s]
        cmd += list(args)
        env._run(cmd, "itproxy up", timeout)
        env.status()
        return env

    def down(self, volumes: bool = False, timeout: float = 120) -> None:
        """Stop the daemon and remove the environment's containers and network (``itproxy down``),
        and with ``volumes`` its volumes too (their data is lost)."""
        env_name = None
        try:
            env_name = self.status().env
        except DaemonNotRunning:
            pass
        cmd = [find_binary(self._binary), "down", "--state-dir", str(self.state_dir)]
        if self.config:
            cmd += ["--config", str(self.config)]
        if env_name:
            cmd += ["--env", env_name]
        if volumes:
            cmd.append("--volumes")
        elif not self.config:
            # No daemon to ask and no config to read the environment from: nothing to remove.
            self.close()
            return
        self._run(cmd, "itproxy down", timeout)
        self.close()

    def close(self) -> None:
        """Close the client's connections (the daemon keeps running)."""
        self._control.close()

    def __enter__(self) -> "Env":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _run(self, cmd: List[str], what: str, timeout: float) -> str:
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise CommandFailed(f"{what} did not finish in {timeout:.0f} s", str(e.output or "")) from e
        if p.returncode != 0:
            raise CommandFailed(f"{what} failed (exit {p.returncode}): {' '.join(cmd)}", p.stdout)
        return p.stdout

    def status(self) -> Status:
        """``GET /v1/status``: listeners, domains, CA, route count."""
        self._status = Status.from_json(self._control.call("GET", "/v1/status"))
        return self._status

    def _known_status(self) -> Status:
        return self._status or self.status()

    @property
    def name(self) -> Optional[str]:
        """The environment's name (its Docker network is ``itproxy-<name>``)."""
        return self._known_status().env

    @property
    def domains(self) -> Sequence[str]:
        return self._known_status().domains

    def host(self, name: str) -> str:
        """``api`` -> ``api.test`` (the first domain); a full name under a domain stays as it is."""
        names = _names.NameMap(tuple(self.domains), None, None)
        return name if names.covers(name) else f"{name}.{self.domains[0]}"

    def url(self, name: str, path: str = "/", scheme: str = "https") -> str:
        """``https://api.test/`` for ``api``: the URL production would use, with no port."""
        return f"{scheme}://{self.host(name)}{path if path.startswith('/') else '/' + path}"

    # -- apps ---------------------------------------------------------------------------------

    @property
    def apps(self) -> Apps:
        """The declared apps: ``env.apps["api"].start_and_wait()``."""
        return Apps(self)

    def snapshot_save(self, name: str) -> Snapshot:
        """Save every app's named volumes as ``name`` (each app stopped meanwhile, then
        started again): known data to come back to."""
        return Snapshot.from_json(self._control.call("POST", f"/v1/snapshots/{name}", timeout=3700))

    def snapshot_restore(self, name: str) -> Snapshot:
        """Give each app of snapshot ``name`` fresh volumes holding what was saved, and wait
        until it is ready again: the fixture between tests."""
        return Snapshot.from_json(self._control.call("POST", f"/v1/snapshots/{name}/restore", timeout=3700))

    def reload(self) -> Reloaded:
        """Apply the edited config file (``itproxy reload``): declared routes, and apps added,
        removed or changed; returns once started apps are ready (``errors`` names any that is
        not). A file with a mistake, or a change that needs a new daemon, raises ApiError."""
        return Reloaded.from_json(self._control.call("POST", "/v1/reload", timeout=3700))

    @property
    def snapshots(self) -> List[Snapshot]:
        """The snapshots saved, by name."""
        return [Snapshot.from_json(s) for s in self._control.call("GET", "/v1/snapshots")]

    def errors(self, since: When = None) -> ErrorScan:
        """Every container's lines since ``since`` scanned for errors with its app's patterns
        (``itproxy logs --errors`` as data); falsy when there is none."""
        return ErrorScan.from_json(self._control.call("GET", "/v1/errors", params={"since": _unix_seconds(since)}))

    def requests(self, route: Optional[str] = None, *, since: Optional[int] = None,
                 limit: Optional[int] = None) -> List[Dict[str, Any]]:
        """The requests the proxy answered lately, oldest first (``itproxy requests --json``):
        each a dict with ``id``, ``method``, ``target``, ``route``, ``status``, ``duration_ms``,
        ``request_headers``, ``response_headers`` ... (docs/api.yaml, ``Request``). Only
        ``route``'s with ``route``; only those after the id ``since``; the newest ``limit``."""
        params = {"route": route, "since": since, "limit": limit}
        found: List[Dict[str, Any]] = self._control.call("GET", "/v1/requests", params=params)
        return found

    def metrics(self) -> str:
        """The daemon's metrics in the Prometheus text format (``GET /v1/metrics``)."""
        return self._control.text("/v1/metrics")

    # -- routes -------------------------------------------------------------------------------

    @property
    def routes(self) -> List[Route]:
        """The active routes, by host."""
        return [Route.from_json(r) for r in self._control.call("GET", "/v1/routes")]

    def get_route(self, name: str) -> Optional[Route]:
        """The route for ``name`` (``api`` or ``api.test``), or None."""
        try:
            return Route.from_json(self._control.call("GET", f"/v1/routes/{name}"))
        except ApiError as e:
            if e.code == "no_route":
                return None
            raise

    def route(self, name: str, target: str, *, redirect_https: bool = False,
              insecure_upstream: bool = False) -> RouteChange:
        """Route ``name`` to ``target`` (``localhost:8000``, ``http://host:port``,
        ``https://host``) now; in a ``with`` block, put it back as it was on exit."""
        before = self.get_route(name)
        route = Route.from_json(self._control.call(
            "PUT", f"/v1/routes/{name}",
            {"target": target, "redirect_https": redirect_https, "insecure_upstream": insecure_upstream},
        ))
        return RouteChange(self, name, before, route)

    def restore(self, name: str) -> Route:
        """Drop ``name``'s override: back to its declared target."""
        return Route.from_json(self._control.call("POST", f"/v1/routes/{name}/restore")["route"])

    def unroute(self, name: str) -> None:
        """Remove ``name``'s route."""
        self._control.call("DELETE", f"/v1/routes/{name}")

    # -- names, DNS and TLS -------------------------------------------------------------------

    def resolve(self, name: str, rdtype: str = "A") -> List[str]:
        """What itproxy's DNS server answers for ``name`` (``db`` or ``db.test``): addresses for
        A/AAAA, record text otherwise; empty for a name it does not know."""
        import dns.exception
        import dns.resolver

        listener = _names.pick_listener(self.status().listeners.dns)
        if listener is None:
            raise ItproxyError("this daemon serves no DNS ([listen] dns is empty)")
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [listener[0]]
        resolver.port = listener[1]
        try:
            answer = resolver.resolve(self.host(name), rdtype, lifetime=5, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as e:
            raise ItproxyError(f"itproxy's DNS at {listener[0]}:{listener[1]} did not answer for {name}: {e}") from e
        return [r.to_text() for r in answer]

    def address(self, name: str) -> str:
        """The first IPv4 address itproxy's DNS gives ``name``: for libraries that resolve in C,
        e.g. libpq's ``hostaddr`` beside ``host="db.test"``."""
        found = self.resolve(name, "A")
        if not found:
            raise ItproxyError(f"itproxy's DNS has no address for {self.host(name)}; is its app ready?")
        return found[0]

    def _ca(self) -> CaInfo:
        ca = self._known_status().ca
        if ca is None:
            raise ItproxyError("this daemon reports no CA")
        return ca

    @property
    def ca_bundle(self) -> Path:
        """The system's roots plus itproxy's root, for SSL_CERT_FILE, REQUESTS_CA_BUNDLE, verify=."""
        return self._ca().bundle

    @property
    def ca_root(self) -> Path:
        """itproxy's root certificate alone (PEM), e.g. for a browser's NSS database."""
        return self._ca().root

    def name_map(self) -> _names.NameMap:
        """Where connections to names under the domains go: itproxy's HTTP and HTTPS listeners."""
        st = self.status()
        return _names.NameMap(
            tuple(st.domains), _names.pick_listener(st.listeners.http), _names.pick_listener(st.listeners.https)
        )

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts the system's roots and itproxy's."""
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def http(self, **kwargs: Any) -> httpx.Client:
        """An httpx client for which ``https://api.test/`` reaches itproxy, with its CA trusted;
        no port in URLs, the system resolver untouched. Keyword arguments go to httpx.Client
        (``transport``-level ones: ``http2``, ``retries``, ``limits``)."""
        t_args = _transport_args(kwargs)
        return httpx.Client(transport=_names.http_transport(self.name_map(), self.ssl_context(), **t_args), **kwargs)

    def async_http(self, **kwargs: Any) -> httpx.AsyncClient:
        """The async twin of :meth:`http`."""
        t_args = _transport_args(kwargs)
        return httpx.AsyncClient(
            transport=_names.async_http_transport(self.name_map(), self.ssl_context(), **t_args), **kwargs
        )

    def requests_session(self) -> Any:
        """A ``requests.Session`` for which ``https://api.test/`` reaches itproxy with its CA
        trusted (needs ``pip install itproxy[requests]``)."""
        try:
            import requests
        except ImportError as e:
            raise ItproxyError("requests is not installed: pip install 'itproxy[requests]'") from e
        s = requests.Session()
        adapter = _names.requests_adapter(self.name_map(), str(self.ca_bundle))
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        return s

    def chromium_args(self) -> List[str]:
        """Chromium flags that send names under the domains to itproxy's listeners (the CA must
        still be trusted: see :mod:`itproxy.browser`)."""
        names = self.name_map()
        rules = []
        for d in names.domains:
            for pattern in (f"*.{d}", d):
                if names.https:
                    rules.append(f"MAP {pattern}:443 {_host_port(names.https)}")
                if names.http:
                    rules.append(f"MAP {pattern}:80 {_host_port(names.http)}")
        return [f"--host-resolver-rules={', '.join(rules)}"]


def _transport_args(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Takes the transport's keyword arguments out of a client's; the client never goes
    through a proxy from the environment (names under the domains must reach itproxy)."""
    kwargs.setdefault("trust_env", False)
    return {k: kwargs.pop(k) for k in ("http1", "http2", "retries", "limits") if k in kwargs}


def _host_port(a: _names.Address) -> str:
    return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"
