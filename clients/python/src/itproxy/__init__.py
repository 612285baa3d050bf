"""Drive an itproxy integration environment from Python: its daemon, apps, routes, names and CA.

    import itproxy

    env = itproxy.Env.connect()                  # the daemon `itproxy up` started
    env.apps["api"].start_and_wait(timeout=60)
    with env.route("api", "localhost:8000"):     # a dev server, for this block only
        assert env.http().get("https://api.test/health").status_code == 200
    assert not env.errors(since=...)             # no error line in any container

The pytest plugin (``itproxy.pytest_plugin``) turns this into fixtures.
"""

from .env import App, Apps, Env, RouteChange, default_state_dir, find_binary
from .errors import ApiError, CommandFailed, DaemonNotRunning, ItproxyError, NotReady
from .types import (
    AppClock,
    AppInfo,
    CaInfo,
    Container,
    ErrorFinding,
    ErrorScan,
    Listeners,
    LogLine,
    Reloaded,
    Route,
    Snapshot,
    SnapshotVolume,
    Status,
)

__all__ = [
    "AppClock",
    "ApiError",
    "App",
    "AppInfo",
    "Apps",
    "CaInfo",
    "CommandFailed",
    "Container",
    "DaemonNotRunning",
    "Env",
    "ErrorFinding",
    "ErrorScan",
    "ItproxyError",
    "Listeners",
    "LogLine",
    "NotReady",
    "Reloaded",
    "Route",
    "RouteChange",
    "Snapshot",
    "SnapshotVolume",
    "Status",
    "default_state_dir",
    "find_binary",
]
