"""Routes: swapping in a block puts back exactly what was there before."""

import pytest

import itproxy


def test_a_block_over_an_app_route_goes_back_to_the_app(itproxy_env, dev_server):
    assert itproxy_env.get_route("api").source == "app"
    with itproxy_env.route("api", f"localhost:{dev_server}") as route:
        assert route.source == "override" and route.target == f"http://localhost:{dev_server}"
    assert itproxy_env.get_route("api").source == "app"


def test_a_block_over_an_override_goes_back_to_that_override(itproxy_env, dev_server):
    itproxy_env.route("api", "localhost:9")
    try:
        with itproxy_env.route("api", f"localhost:{dev_server}"):
            pass
        assert itproxy_env.get_route("api").target == "http://localhost:9"
    finally:
        itproxy_env.restore("api")
    assert itproxy_env.get_route("api").source == "app"


def test_a_block_for_a_new_name_removes_it_after(itproxy_env, dev_server):
    with itproxy_env.route("scratch", f"localhost:{dev_server}"):
        assert itproxy_env.http().get("https://scratch.test/").text == "hello-from-dev-server host=scratch.test"
        assert "scratch.test" in [r.host for r in itproxy_env.routes]
    assert itproxy_env.get_route("scratch") is None


def test_the_route_fixture_swaps_for_one_test(itproxy_route, itproxy_env, dev_server):
    itproxy_route("api", f"localhost:{dev_server}")
    assert itproxy_env.http().get("http://api.test/").text == "hello-from-dev-server host=api.test"


def test_a_bad_target_raises_the_api_code(itproxy_env):
    with pytest.raises(itproxy.ApiError) as e:
        itproxy_env.route("api", "localhost:notaport")
    assert e.value.code == "invalid_target" and "notaport" in e.value.message
    assert itproxy_env.get_route("api").source == "app", "a refused change alters nothing"
