"""The error scan: what any container logged, as data."""

import subprocess
import time

import pytest


def log_in_container(container: str, line: str) -> None:
    """Write a line to the container's own stdout, as its process would."""
    subprocess.run(["docker", "exec", container, "sh", "-c", f"echo '{line}' > /proc/1/fd/1"], check=True)


@pytest.mark.itproxy_allow_errors("ERROR payment declined")
def test_a_logged_error_is_found_with_its_container(itproxy_env):
    start = time.time()
    container = itproxy_env.apps["api"].info.containers[0].name
    log_in_container(container, "ERROR payment declined")
    scan = itproxy_env.errors(since=start)
    assert [(f.app, f.container, f.line) for f in scan.findings] == [("api", container, "ERROR payment declined")]
    assert scan.containers == 3
    assert f"{container}: ERROR payment declined" in scan.report()
