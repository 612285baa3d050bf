"""Names: HTTP(S) clients reach NAME.test through itproxy, the system resolver untouched; DNS
answers for libraries that resolve in C."""

import asyncio
import socket

import pytest


def test_httpx_keeps_the_url_host_and_tls_name(itproxy_env, itproxy_route, dev_server):
    itproxy_route("www", f"localhost:{dev_server}")
    r = itproxy_env.http().get("https://www.test/page")
    assert r.status_code == 200
    assert r.text == "hello-from-dev-server host=www.test", "no port in the Host the app sees"
    assert str(r.url) == "https://www.test/page"


def test_the_async_client_too(itproxy_env):
    async def get() -> str:
        async with itproxy_env.async_http() as client:
            return (await client.get("https://api.test/")).text

    assert asyncio.run(get()).strip() == "hello-from-api"


def test_requests_trusts_the_ca_whatever_requests_ca_bundle_says(itproxy_env, monkeypatch, tmp_path):
    # requests lets REQUESTS_CA_BUNDLE override Session.verify; the session must not care.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    r = itproxy_env.requests_session().get("https://api.test/")
    assert r.status_code == 200 and r.text.strip() == "hello-from-api"


def test_tls_is_verified_not_skipped(itproxy_env):
    import ssl

    import httpx

    from itproxy._names import http_transport

    # The same client with only the system's roots is refused by the same listener.
    transport = http_transport(itproxy_env.name_map(), ssl.create_default_context())
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.Client(transport=transport).get("https://api.test/")


def test_the_system_resolver_is_untouched(itproxy_env):
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("api.test", 443)


def test_dns_gives_a_tcp_endpoint_its_container(itproxy_env):
    db = itproxy_env.apps["db"].info.containers[0]
    assert itproxy_env.resolve("db") == [db.address]
    assert itproxy_env.resolve("db.test") == [db.address]
    # What a C library (libpq's hostaddr) would connect to.
    with socket.create_connection((itproxy_env.address("db"), 5432), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert s.recv(64).startswith(b"HTTP/1.")


def test_dns_knows_routed_names_and_not_others(itproxy_env):
    assert itproxy_env.resolve("api") == ["127.0.0.1"]
    assert itproxy_env.resolve("nothing-here") == []
