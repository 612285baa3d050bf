"""pytest plugin (entry point ``pytest11``): an itproxy environment as fixtures.

- ``itproxy_env`` (session): the environment, up from itproxy.toml at the start (or the daemon
  already running with the state directory), down at the end (volumes too) unless
  ``--itproxy-keep``.
- ``itproxy_route`` (function): ``itproxy_route("api", "localhost:8000")`` swaps a route for
  the test and puts it back after.
- The error check: a test that uses the environment fails when any container logged an error
  line while it ran (``--itproxy-errors=test``, the default), or the session fails at its end
  (``session``), or nothing is checked (``off``). ``@pytest.mark.itproxy_allow_errors`` allows
  all errors in one test, or with regexes only the lines they match.
- ``browser`` / ``itproxy_browser`` (function): headless Chromium (Selenium) trusting the CA and
  resolving the domains to itproxy; a failing test leaves a screenshot in ``--itproxy-artifacts``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from .env import Env, RouteChange, default_state_dir
from .errors import CommandFailed, DaemonNotRunning
from .types import ErrorScan

_REPORTS = pytest.StashKey[Dict[str, Any]]()
_SESSION = pytest.StashKey[Dict[str, Any]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("itproxy", "itproxy integration environment")
    group.addoption("--itproxy-config", metavar="FILE",
                    help="config of the environment [default: itproxy.toml in the rootdir, if any]")
    group.addoption("--itproxy-state-dir", metavar="DIR",
                    help="the daemon's state directory [default: the itproxy CLI's]")
    group.addoption("--itproxy-keep", action="store_true",
                    help="leave the environment running after the session (when the session started it)")
    group.addoption("--itproxy-errors", choices=("test", "session", "off"),
                    help="fail each test (test), or the session (session), when a container logs an error "
                         "line; or do not check (off) [default: test]")
    group.addoption("--itproxy-artifacts", metavar="DIR",
                    help="where failing browser tests leave screenshots [default: itproxy-artifacts in the rootdir]")
    group.addoption("--itproxy-headed", action="store_true", help="show the browser's window")
    parser.addini("itproxy_config", "config of the environment (relative to the rootdir)")
    parser.addini("itproxy_state_dir", "the daemon's state directory")
    parser.addini("itproxy_errors", "test, session or off (see --itproxy-errors)", default="test")
    parser.addini("itproxy_artifacts", "where failing browser tests leave screenshots")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "itproxy_allow_errors(*patterns): container error lines do not fail this test "
        "(only those matching one of the regexes, if any are given)",
    )
    config.stash[_SESSION] = {"started_at": time.time(), "errors": None}


def _option(config: pytest.Config, name: str) -> Optional[str]:
    value = config.getoption(f"itproxy_{name}")
    if value:
        return str(value)
    ini = config.getini(f"itproxy_{name}")
    return str(ini) if ini else None


def _in_rootdir(config: pytest.Config, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else Path(config.rootpath) / p


def _error_mode(config: pytest.Config) -> str:
    mode = _option(config, "errors") or "test"
    if mode not in ("test", "session", "off"):
        raise pytest.UsageError(f"itproxy_errors = {mode!r}: use test, session or off")
    return mode


@pytest.fixture(scope="session")
def itproxy_env(request: pytest.FixtureRequest) -> Iterator[Env]:
    """The environment: the daemon running with the state directory if there is one (left
    running), else ``itproxy up`` of the config (down at the end unless --itproxy-keep)."""
    config = request.config
    state = _option(config, "state_dir")
    state_dir = _in_rootdir(config, state) if state else default_state_dir()
    try:
        env = Env.connect(state_dir)
        started = False
    except DaemonNotRunning:
        cfg = _option(config, "config")
        cfg_path = _in_rootdir(config, cfg) if cfg else Path(config.rootpath) / "itproxy.toml"
        if cfg and not cfg_path.is_file():
            raise pytest.UsageError(f"itproxy config {cfg_path} does not exist")
        chosen = cfg_path if cfg_path.is_file() else None
        try:
            env = Env.up(chosen, state_dir=state_dir)
        except CommandFailed:
            # `up` leaves a failed environment running for inspection; a test session keeps it
            # only when asked to.
            if not config.getoption("itproxy_keep"):
                Env(state_dir, config=chosen).down(volumes=True)
            raise
        started = True
    session = config.stash[_SESSION]
    try:
        yield env
    finally:
        if _error_mode(config) == "session":
            session["errors"] = env.errors(since=session["started_at"])
        if started and not config.getoption("itproxy_keep"):
            # The session's environment is its own: nothing of it outlives the session.
            env.down(volumes=True)
        else:
            env.close()


@pytest.fixture
def itproxy_route(itproxy_env: Env) -> Iterator[Callable[..., RouteChange]]:
    """``itproxy_route("api", "localhost:8000")``: route for this test only; each route is put
    back as it was when the test ends."""
    changes: List[RouteChange] = []

    def route(name: str, target: str, **kwargs: Any) -> RouteChange:
        change = itproxy_env.route(name, target, **kwargs)
        changes.append(change)
        return change

    yield route
    for change in reversed(changes):
        change.undo()


def _allowed(item: pytest.Item) -> Optional[List["re.Pattern[str]"]]:
    """None: errors fail the test; a list: the patterns of lines allowed (empty list: all)."""
    marks = list(item.iter_markers("itproxy_allow_errors"))
    if not marks:
        return None
    patterns = [re.compile(p) for m in marks for p in m.args]
    return patterns


@pytest.fixture(autouse=True)
def itproxy_error_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails a test that uses ``itproxy_env`` when a container logged an error line during it."""
    if "itproxy_env" not in request.fixturenames or _error_mode(request.config) != "test":
        yield
        return
    allowed = _allowed(request.node)
    if allowed == []:
        yield
        return
    env: Env = request.getfixturevalue("itproxy_env")
    since = time.time()
    yield
    report = request.node.stash.get(_REPORTS, {}).get("call")
    if report is not None and report.skipped:
        return
    found = env.errors(since=since).findings
    new = [f for f in found if not any(p.search(f.line) for p in allowed or [])]
    if new:
        listing = "\n".join(f"  {f}" for f in new)
        pytest.fail(
            f"{len(new)} error line(s) in the environment's containers during this test:\n{listing}\n"
            "(mark the test @pytest.mark.itproxy_allow_errors(REGEX) if they are expected)",
            pytrace=False,
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    item.stash.setdefault(_REPORTS, {})[report.when] = report


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In session mode, the scan made as ``itproxy_env`` ended fails the session."""
    state = session.config.stash.get(_SESSION, None)
    scan: Optional[ErrorScan] = state.get("errors") if state else None
    if scan:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        text = f"itproxy: {len(scan.findings)} error line(s) in the environment's containers during the session:\n"
        text += "\n".join(f"  {f}" for f in scan.findings)
        if tr is not None:
            tr.write_line(text, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def _itproxy_browser_home(itproxy_env: Env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from .browser import nss_home

    return nss_home(tmp_path_factory.mktemp("itproxy-browser-home"), itproxy_env.ca_root)


@pytest.fixture
def itproxy_browser(request: pytest.FixtureRequest, itproxy_env: Env, _itproxy_browser_home: Path) -> Iterator[Any]:
    """Headless Chromium (Selenium WebDriver) reaching ``https://NAME.test/`` through itproxy
    with its CA trusted; a screenshot is saved when the test fails."""
    from .browser import chrome, screenshot

    driver = chrome(itproxy_env, _itproxy_browser_home, headless=not request.config.getoption("itproxy_headed"))
    try:
        yield driver
    finally:
        report = request.node.stash.get(_REPORTS, {}).get("call")
        if report is not None and report.failed:
            where = _option(request.config, "artifacts")
            folder = _in_rootdir(request.config, where) if where else Path(request.config.rootpath) / "itproxy-artifacts"
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)
            saved = screenshot(driver, folder / f"{name}.png")
            if saved:
                request.node.add_report_section("teardown", "itproxy browser", f"screenshot: {saved}")
        driver.quit()


@pytest.fixture
def browser(itproxy_browser: Any) -> Any:
    """Alias of ``itproxy_browser``."""
    return itproxy_browser
