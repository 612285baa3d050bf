"""A browser on an HTTPS page of one name fetching another name with credentials (CORS), as
in production: real names, the CA trusted by Chromium itself, no certificate flag.

The two names share a site, as www.example.com and api.example.com do: `test` is a top-level
domain to a browser, so www.test and api.test are two sites and Chromium keeps api.test's
cookies out of www.test's requests (third-party cookies); www.shop.test and api.shop.test are
one site (shop.test), so only CORS stands between them, as in production."""

import json
from typing import Iterator

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import serve

PAGE = b"""<!doctype html><title>shop</title>
<p id="out">loading</p>
<script>
fetch("https://api.shop.test/whoami", {credentials: "include", headers: {"X-Requested-With": "shop"}})
  .then(r => r.text()).then(t => { document.getElementById("out").textContent = t; })
  .catch(e => { document.getElementById("out").textContent = "failed: " + e; });
</script>"""


def api(h):
    origin = h.headers.get("Origin")
    cors = {}
    if origin == "https://www.shop.test":
        cors = {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true", "Vary": "Origin"}
    if h.command == "OPTIONS":
        return 204, {**cors, "Access-Control-Allow-Headers": "X-Requested-With",
                     "Access-Control-Allow-Methods": "GET"}, b""
    if h.path == "/login":
        return 200, {"Set-Cookie": "session=s3cret; Path=/; Secure; HttpOnly; SameSite=None",
                     "Content-Type": "text/plain"}, b"logged in"
    body = json.dumps({"cookie": h.headers.get("Cookie"), "origin": origin,
                       "proto": h.headers.get("X-Forwarded-Proto")})
    return 200, {**cors, "Content-Type": "application/json"}, body.encode()


@pytest.fixture
def shop(itproxy_route) -> Iterator[None]:
    """www.shop.test (the page) and api.shop.test (the API): dev servers on this machine."""
    for www_port in serve(lambda h: (200, {"Content-Type": "text/html"}, PAGE)):
        for api_port in serve(api):
            itproxy_route("www.shop.test", f"localhost:{www_port}")
            itproxy_route("api.shop.test", f"localhost:{api_port}")
            yield


def test_a_page_fetches_another_name_with_its_cookie(browser, itproxy_env, shop):
    browser.get(itproxy_env.url("api.shop.test", "/login"))
    assert "logged in" in browser.page_source
    browser.get(itproxy_env.url("www.shop.test"))
    out = WebDriverWait(browser, 15).until(
        lambda b: (t := b.find_element(By.ID, "out").text) != "loading" and t
    )
    assert json.loads(out) == {"cookie": "session=s3cret", "origin": "https://www.shop.test", "proto": "https"}
    assert browser.current_url == "https://www.shop.test/"
