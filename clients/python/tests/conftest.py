"""The suite's own environment: a busybox image built here (nothing is pulled), a config on
free loopback ports, and a state directory of its own, so a developer's daemon is never used."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator, Tuple

import pytest

IMAGE = "itproxy-pytest/busybox:latest"
CLOCK_IMAGE = "itproxy-pytest/clock:latest"
# The host's dynamically linked date and sleep with the C library, so libfaketime applies.
CLOCK_FILES = (
    "/usr/bin/date",
    "/usr/bin/sleep",
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/lib/x86_64-linux-gnu/libm.so.6",
    "/lib64/ld-linux-x86-64.so.2",
)
HERE = Path(__file__).parent


def _docker_problem() -> str | None:
    if not Path("/bin/busybox").exists():
        return "/bin/busybox is missing (apt-get install busybox-static)"
    if not shutil.which("docker"):
        return "no docker CLI"
    p = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    return None if p.returncode == 0 else p.stderr.strip()


def build_image() -> None:
    """FROM scratch + Debian's static busybox with its applets installed: a real shell image."""
    with tempfile.TemporaryDirectory() as ctx:
        shutil.copy("/bin/busybox", Path(ctx) / "busybox")
        (Path(ctx) / "Dockerfile").write_text(
            'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\nCMD ["sh"]\n'
        )
        subprocess.run(["docker", "build", "-q", "-t", IMAGE, ctx], check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as ctx:
        for f in CLOCK_FILES:
            to = Path(ctx) / "root" / f.lstrip("/")
            to.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, to)
        (Path(ctx) / "Dockerfile").write_text(f"FROM {IMAGE}\nCOPY root/ /\n")
        subprocess.run(["docker", "build", "-q", "-t", CLOCK_IMAGE, ctx], check=True, capture_output=True)


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("itproxy_config") or getattr(config, "workerinput", None):
        return
    problem = _docker_problem()
    if problem:
        if os.environ.get("CI") == "true":
            raise pytest.UsageError(f"CI needs Docker for the Python client's tests: {problem}")
        config.issue_config_time_warning(pytest.PytestConfigWarning(f"Docker unavailable: {problem}"), 2)
        return
    build_image()
    work = Path(tempfile.mkdtemp(prefix="itproxy-pytest-"))
    env_name = f"pyt{os.getpid()}"
    text = (HERE / "itproxy.toml").read_text().replace('name = "pytest"', f'name = "{env_name}"')
    (work / "itproxy.toml").write_text(text)
    config.option.itproxy_config = str(work / "itproxy.toml")
    if not config.getoption("itproxy_state_dir"):
        config.option.itproxy_state_dir = str(work / "state")


@pytest.fixture(autouse=True)
def _needs_docker(request: pytest.FixtureRequest) -> None:
    if "itproxy_env" in request.fixturenames and not request.config.getoption("itproxy_config"):
        pytest.skip("Docker is unavailable (see the warning above)")


class _Handler(BaseHTTPRequestHandler):
    reply: Callable[["_Handler"], Tuple[int, dict, bytes]]

    def _answer(self) -> None:
        status, headers, body = type(self).reply(self)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = do_OPTIONS = _answer

    def log_message(self, *args: object) -> None:
        pass


def serve(reply: Callable[[BaseHTTPRequestHandler], Tuple[int, dict, bytes]]) -> Iterator[int]:
    """A dev server on the host (127.0.0.1, a free port) answering with ``reply``; yields its port."""
    handler = type("Handler", (_Handler,), {"reply": staticmethod(reply)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def dev_server() -> Iterator[int]:
    """A local dev server answering ``hello-from-dev-server`` with the Host it was asked for."""
    yield from serve(lambda h: (200, {"Content-Type": "text/plain"},
                                f"hello-from-dev-server host={h.headers.get('Host')}".encode()))
