"""The pytest plugin as its users meet it: inner pytest runs (pytester) against this session's
daemon, which they find through its state directory and leave running."""

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import itproxy

pytest_plugins = ["pytester"]


@pytest.fixture
def inner(pytester, itproxy_env):
    """Runs pytest on the given test file text, attached to this session's environment."""

    def run(source: str, *args: str):
        pytester.makepyfile(source)
        return pytester.runpytest_subprocess(
            f"--itproxy-state-dir={itproxy_env.state_dir}", "-p", "no:cacheprovider", *args
        )

    return run


def test_the_route_fixture_puts_routes_back_between_tests(inner, itproxy_env):
    result = inner(
        """
import http.server, threading

def test_swapped(itproxy_env, itproxy_route):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    itproxy_route("api", f"localhost:{server.server_address[1]}")
    assert itproxy_env.get_route("api").source == "override"
    assert itproxy_env.http().get("https://api.test/").status_code == 200
    server.shutdown()

def test_back(itproxy_env):
    assert itproxy_env.get_route("api").source == "app"
    assert itproxy_env.http().get("https://api.test/").text.strip() == "hello-from-api"
"""
    )
    result.assert_outcomes(passed=2)
    assert itproxy_env.status().pid, "the inner session left the daemon running"


# The inner tests' error lines are this test's too: allowed here, which also shows the marker.
@pytest.mark.itproxy_allow_errors("inner test broke", "expected failure", "something else")
def test_an_error_line_fails_the_test_naming_container_and_line(inner, itproxy_env):
    container = f"itproxy-{itproxy_env.name}-api"
    result = inner(
        f"""
import subprocess, pytest

def shout(line):
    subprocess.run(["docker", "exec", "{container}", "sh", "-c", f"echo '{{line}}' >/proc/1/fd/1"], check=True)

def test_quiet(itproxy_env):
    pass

def test_noisy(itproxy_env):
    shout("ERROR inner test broke something")

@pytest.mark.itproxy_allow_errors("expected failure")
def test_allowed(itproxy_env):
    shout("ERROR an expected failure")

@pytest.mark.itproxy_allow_errors("expected failure")
def test_allowed_only_what_it_names(itproxy_env):
    shout("ERROR something else")
"""
    )
    result.assert_outcomes(passed=4, errors=2)
    result.stdout.fnmatch_lines([
        f"*{container}: ERROR inner test broke something*",
        f"*{container}: ERROR something else*",
    ])
    assert "an expected failure" not in result.stdout.str()


@pytest.mark.itproxy_allow_errors("in session mode")
def test_session_mode_fails_the_session_not_the_test(inner, itproxy_env):
    container = f"itproxy-{itproxy_env.name}-api"
    result = inner(
        f"""
import subprocess

def test_noisy(itproxy_env):
    subprocess.run(["docker", "exec", "{container}", "sh", "-c", "echo 'ERROR in session mode' >/proc/1/fd/1"], check=True)
""",
        "--itproxy-errors=session",
    )
    result.assert_outcomes(passed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines([f"*{container}: ERROR in session mode*"])


def test_a_failing_browser_test_leaves_a_screenshot(inner, pytester):
    result = inner(
        """
def test_page(browser, itproxy_env):
    browser.get(itproxy_env.url("api"))
    assert "hello-from-api" in browser.page_source
    assert False, "fails on purpose"
""",
        f"--itproxy-artifacts={pytester.path / 'shots'}",
    )
    result.assert_outcomes(failed=1)
    shots = list((pytester.path / "shots").glob("*.png"))
    assert len(shots) == 1 and shots[0].stat().st_size > 1000
    assert "hello-from-api" in shots[0].with_suffix(".html").read_text()
    result.stdout.fnmatch_lines(["*screenshot: *shots*test_page*.png*"])


@pytest.fixture
def state(tmp_path_factory):
    """A state directory with a short path: a Unix socket's path is limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="itp-"))
    yield path / "state"
    shutil.rmtree(path, ignore_errors=True)


def _leftovers(env_name: str) -> str:
    """The environment's containers and volumes still on the engine."""
    found = []
    for what in (["ps", "-aq"], ["volume", "ls", "-q"]):
        found.append(subprocess.run(
            ["docker", *what, "--filter", f"label=itproxy.env={env_name}"], capture_output=True, text=True
        ).stdout.strip())
    return " ".join(f for f in found if f)


def _own_config(pytester, itproxy_env, env_name: str, image: str = "itproxy-pytest/busybox:latest") -> str:
    text = (itproxy_env.config or Path("tests/itproxy.toml")).read_text()
    text = text.replace(f'name = "{itproxy_env.name}"', f'name = "{env_name}"')
    text = text.replace('image = "itproxy-pytest/busybox:latest"', f'image = "{image}"', 1)
    path = pytester.path / "itproxy.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("keep", [False, True])
def test_a_session_brings_its_environment_up_and_down(pytester, itproxy_env, state, keep):
    env_name = f"{itproxy_env.name}k" if keep else f"{itproxy_env.name}u"
    _own_config(pytester, itproxy_env, env_name)
    pytester.makepyfile(
        """
def test_up(itproxy_env):
    assert itproxy_env.apps["api"].state == "ready"
    assert itproxy_env.http().get("https://api.test/").text.strip() == "hello-from-api"
"""
    )
    args = [f"--itproxy-state-dir={state}", "-p", "no:cacheprovider"] + (["--itproxy-keep"] if keep else [])
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=1)
    if keep:
        kept = itproxy.Env.connect(state)
        assert kept.apps["api"].state == "ready", "--itproxy-keep leaves it running"
        kept.down(volumes=True)
    else:
        with pytest.raises(itproxy.DaemonNotRunning):
            itproxy.Env.connect(state)
    assert _leftovers(env_name) == "", "nothing of the environment is left on the engine"


def test_an_environment_that_cannot_come_up_fails_the_session_and_is_removed(pytester, itproxy_env, state):
    env_name = f"{itproxy_env.name}f"
    _own_config(pytester, itproxy_env, env_name, image="itproxy-pytest/no-such-image:latest")
    pytester.makepyfile("def test_never(itproxy_env):\n    pass\n")
    result = pytester.runpytest_subprocess(f"--itproxy-state-dir={state}", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*itproxy up failed*", "*no-such-image*"])
    with pytest.raises(itproxy.DaemonNotRunning):
        itproxy.Env.connect(state)
    assert _leftovers(env_name) == ""
