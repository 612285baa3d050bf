"""Apps: state, stop, start and restart with waiting, logs."""

import subprocess
import time
from pathlib import Path

import pytest

import itproxy


def test_an_app_stops_and_starts_again(itproxy_env):
    api = itproxy_env.apps["api"]
    assert api.state == "ready"
    assert api.stop().state == "stopped"
    assert itproxy_env.get_route("api") is None, "a stopped app's route goes away"
    info = api.start_and_wait(timeout=30)
    assert info.state == "ready"
    assert info.containers[0].state == "running" and info.containers[0].address
    assert itproxy_env.http().get("https://api.test/").text.strip() == "hello-from-api"


def test_restart_and_wait_returns_a_ready_app(itproxy_env):
    before = itproxy_env.apps["api"].info.containers[0].address
    info = itproxy_env.apps["api"].restart_and_wait(timeout=30)
    assert info.state == "ready" and info.ready_in_ms is not None
    assert info.containers[0].address  # a new container; its address may be the old one
    assert before is not None
    assert itproxy_env.http().get("http://api.test/").status_code == 200


def test_a_reset_starts_from_the_image_with_empty_volumes(itproxy_env):
    container = itproxy_env.apps["db"].info.containers[0].name

    def sh(script: str) -> str:
        return subprocess.run(["docker", "exec", container, "sh", "-c", script],
                              capture_output=True, text=True).stdout

    sh("echo order-42 > /var/lib/db/rows")
    assert sh("cat /var/lib/db/rows").strip() == "order-42"
    assert itproxy_env.apps["db"].reset_and_wait(timeout=30).state == "ready"
    assert sh("ls /var/lib/db").strip() == "", "the volume starts empty"
    assert itproxy_env.resolve("db") == [itproxy_env.apps["db"].info.containers[0].address]


def test_a_snapshot_brings_the_data_back(itproxy_env):
    container = itproxy_env.apps["db"].info.containers[0].name

    def sh(script: str) -> str:
        return subprocess.run(["docker", "exec", container, "sh", "-c", script],
                              capture_output=True, text=True).stdout

    sh("echo seeded > /var/lib/db/rows")
    saved = itproxy_env.snapshot_save("seeded")
    assert [(v.app, v.volume, v.target) for v in saved.volumes] == [("db", "dbdata", "/var/lib/db")]
    assert "seeded" in [s.name for s in itproxy_env.snapshots]
    container = itproxy_env.apps["db"].info.containers[0].name
    sh("echo changed-by-a-test > /var/lib/db/rows")
    restored = itproxy_env.snapshot_restore("seeded")
    assert restored.took_ms is not None
    container = itproxy_env.apps["db"].info.containers[0].name
    assert sh("cat /var/lib/db/rows").strip() == "seeded"
    assert itproxy_env.apps["db"].state == "ready"
    with pytest.raises(itproxy.ApiError) as e:
        itproxy_env.snapshot_restore("never-saved")
    assert e.value.code == "no_snapshot"


def test_logs_are_the_containers_lines(itproxy_env):
    itproxy_env.http().get("https://api.test/")
    lines = itproxy_env.apps["api"].logs()
    assert any(l.text == "api listening on 8080" and l.stream == "stdout" for l in lines), lines
    assert all(l.container == f"itproxy-{itproxy_env.name}-api" for l in lines)
    last = itproxy_env.apps["api"].logs(tail=1)
    assert len(last) == 1 and last[0] == lines[-1]


def test_unknown_apps_are_named_with_the_ones_there_are(itproxy_env):
    assert sorted(itproxy_env.apps) == ["api", "clock", "db"]
    with pytest.raises(KeyError, match="apps: api, db, clock"):
        itproxy_env.apps["nope"]
    with pytest.raises(itproxy.ApiError) as e:
        itproxy.App(itproxy_env, "nope").start_and_wait()
    assert e.value.code == "no_app" and e.value.status == 404


def test_a_bad_timeout_is_refused_with_its_code(itproxy_env):
    with pytest.raises(itproxy.ApiError) as e:
        itproxy_env._control.call("POST", "/v1/apps/api/start", {"wait": True, "timeout": "soon"})
    assert e.value.code == "invalid_timeout"


def test_reload_applies_the_edited_config_and_refuses_what_needs_a_new_daemon(itproxy_env, pytestconfig):
    path = Path(pytestconfig.getoption("itproxy_config"))
    original = path.read_text()
    try:
        path.write_text(original.replace("[env]", '[routes]\nlegacy = "127.0.0.1:9"\n\n[env]', 1))
        done = itproxy_env.reload()
        assert done.routes_added == ("legacy.test",) and not done.errors, done
        assert itproxy_env.get_route("legacy") is not None
        path.write_text(original.replace('domains = ["test"]', 'domains = ["other.test"]'))
        with pytest.raises(itproxy.ApiError) as refused:
            itproxy_env.reload()
        assert refused.value.code == "needs_restart" and "domains" in refused.value.message
    finally:
        path.write_text(original)
        itproxy_env.reload()
    assert itproxy_env.get_route("legacy") is None


def test_an_apps_clock_moves_while_it_runs(itproxy_env):
    clock = itproxy_env.apps["clock"]
    container = clock.info.containers[0].name

    def today() -> str:
        return subprocess.run(["docker", "exec", container, "/usr/bin/date", "-u", "+%Y-%m-%d"],
                              capture_output=True, text=True).stdout.strip()

    assert clock.clock.now.startswith("2030-06-01") and today() == "2030-06-01"
    assert clock.set_time("2031-01-01 00:00:00").now.startswith("2031-01-01")
    deadline = time.monotonic() + 5
    while today() != "2031-01-01":
        assert time.monotonic() < deadline, today()
        time.sleep(0.1)
    clock.reset_time()
    with pytest.raises(itproxy.ApiError) as refused:
        itproxy_env.apps["api"].set_time("+1d")
    assert refused.value.code == "no_clock"
