"""The user's story in ten lines: start an app, wait for it, swap it for a dev server, check the
containers' logs, and reach HTTPS URLs by name (the README's "From pytest" example)."""


import time


def test_swap_api_for_a_dev_server(itproxy_env, dev_server):
    started = time.time()
    itproxy_env.apps["api"].start_and_wait(timeout=30)
    http = itproxy_env.http()
    assert http.get("https://api.test/").text.strip() == "hello-from-api"
    with itproxy_env.route("api", f"localhost:{dev_server}"):
        assert http.get("https://api.test/").text == "hello-from-dev-server host=api.test"
    assert http.get("https://api.test/").text.strip() == "hello-from-api"
    assert not (errors := itproxy_env.errors(since=started)), errors.report()
