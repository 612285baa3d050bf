"""The shop environment under test: its Debian base image made here (debootstrap + docker
import, no registry), its config given a name of its own and free loopback ports, and a state
directory of its own. The images are built by itproxy (`build` in itproxy.toml)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from itproxy import Env

SHOP = Path(__file__).resolve().parent.parent
REPO = SHOP.parent.parent


def _docker_problem() -> str | None:
    if not shutil.which("docker"):
        return "no docker CLI"
    p = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    return None if p.returncode == 0 else p.stderr.strip()


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("itproxy_config"):
        return
    problem = _docker_problem()
    if problem:
        if os.environ.get("CI") == "true":
            raise pytest.UsageError(f"CI needs Docker for the shop example's tests: {problem}")
        config.issue_config_time_warning(pytest.PytestConfigWarning(f"Docker unavailable: {problem}"), 2)
        return
    subprocess.run([str(REPO / "scripts/debian-image.sh")], check=True)
    work = Path(tempfile.mkdtemp(prefix="itproxy-shop-"))
    text = (SHOP / "itproxy.toml").read_text()
    # Relative paths stay the example's; the environment gets a name and ports of its own.
    text = re.sub(r'"\./', f'"{SHOP}/', text)
    text = text.replace('env_file = "api.env"', f'env_file = "{SHOP}/api.env"')
    text = text.replace('name = "shop"', f'name = "shop{os.getpid()}"', 1)
    text += '\n[listen]\nhttp = "127.0.0.1:0"\nhttps = "127.0.0.1:0"\ndns = "127.0.0.1:0"\n'
    (work / "itproxy.toml").write_text(text)
    config.option.itproxy_config = str(work / "itproxy.toml")
    config.option.itproxy_state_dir = str(work / "state")


@pytest.fixture(autouse=True)
def _needs_docker(request: pytest.FixtureRequest) -> None:
    if not request.config.getoption("itproxy_config"):
        pytest.skip("Docker is unavailable (see the warning above)")


@pytest.fixture(scope="session")
def seeded(itproxy_env: Env) -> str:
    """The data after migrations (the fixture user alice), saved once for the session."""
    itproxy_env.snapshot_save("seeded")
    return "seeded"


@pytest.fixture
def clean_data(itproxy_env: Env, seeded: str) -> Env:
    """Each test that asks for it starts from the seeded data: the database's volume is put
    back as saved (about a second for PostgreSQL)."""
    itproxy_env.snapshot_restore(seeded)
    return itproxy_env


@pytest.fixture
def signed_in(clean_data: Env) -> Iterator[Any]:
    """A requests session signed in as alice, as the front end does it: a CSRF token from the
    api, then the login with it, from the front end's origin."""
    s = clean_data.requests_session()
    front = "https://www.shop.test"
    s.headers.update({"Origin": front, "Referer": front + "/"})
    token = s.get("https://api.shop.test/api/csrf").json()["csrf"]
    r = s.post(
        "https://api.shop.test/api/login",
        json={"username": "alice", "password": "wonderland"},
        headers={"X-CSRFToken": token},
    )
    assert r.status_code == 200, r.text
    s.headers["X-CSRFToken"] = s.cookies.get("csrftoken", domain="api.shop.test")
    yield s
    s.close()
