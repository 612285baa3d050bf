"""Reaching ``http(s)://NAME.<domain>/`` through itproxy without touching the system resolver.

HTTP clients keep the URL, the Host header and the TLS server name exactly as written; only the
TCP connection for a name under the environment's domains goes to itproxy's listener instead of
wherever the system would resolve it. Nothing global is patched: each client gets its own map.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Tuple, Union

import httpcore
import httpx

Address = Tuple[str, int]


def listener_address(listener: str) -> Address:
    """``127.0.0.1:8080`` / ``[::1]:8080`` / ``0.0.0.0:80`` as an address a local client dials."""
    host, _, port = listener.rpartition(":")
    host = host.strip("[]")
    ip = ipaddress.ip_address(host)
    if ip.is_unspecified:
        host = "::1" if ip.version == 6 else "127.0.0.1"
    return host, int(port)


def pick_listener(listeners: Iterable[str]) -> Optional[Address]:
    """The listener a client on this machine should use: a loopback one if there is one."""
    addrs = [listener_address(l) for l in listeners]
    for a in addrs:
        if ipaddress.ip_address(a[0]).is_loopback:
            return a
    return addrs[0] if addrs else None


@dataclass(frozen=True)
class NameMap:
    """Which (host, port) connections go to itproxy, and to which of its listeners."""

    domains: Tuple[str, ...]
    http: Optional[Address]
    https: Optional[Address]

    def covers(self, host: str) -> bool:
        """Whether ``host`` is a name under one of the domains."""
        h = host.rstrip(".").lower()
        return any(h == d or h.endswith("." + d) for d in self.domains)

    def lookup(self, host: str, port: int) -> Optional[Address]:
        """itproxy's listener for a connection to ``host:port``, or None to connect as usual.

        Port 80 (and the HTTP listener's own port) goes to the HTTP listener, 443 (and the HTTPS
        listener's) to the HTTPS one, so URLs carry no port, as in production.
        """
        if not self.covers(host):
            return None
        if self.http and port in (80, self.http[1]):
            return self.http
        if self.https and port in (443, self.https[1]):
            return self.https
        return None


class _SyncBackend(httpcore.NetworkBackend):
    def __init__(self, names: NameMap, inner: httpcore.NetworkBackend) -> None:
        self._names = names
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: Optional[float] = None,
                    local_address: Optional[str] = None, socket_options: Any = None) -> httpcore.NetworkStream:
        host, port = self._names.lookup(host, port) or (host, port)
        return self._inner.connect_tcp(host, port, timeout=timeout, local_address=local_address,
                                       socket_options=socket_options)

    def connect_unix_socket(self, path: str, timeout: Optional[float] = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        return self._inner.connect_unix_socket(path, timeout=timeout, socket_options=socket_options)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, names: NameMap, inner: httpcore.AsyncNetworkBackend) -> None:
        self._names = names
        self._inner = inner

    async def connect_tcp(self, host: str, port: int, timeout: Optional[float] = None,
                          local_address: Optional[str] = None,
                          socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        host, port = self._names.lookup(host, port) or (host, port)
        return await self._inner.connect_tcp(host, port, timeout=timeout, local_address=local_address,
                                             socket_options=socket_options)

    async def connect_unix_socket(self, path: str, timeout: Optional[float] = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        return await self._inner.connect_unix_socket(path, timeout=timeout, socket_options=socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _pool_of(transport: Any) -> Any:
    pool = getattr(transport, "_pool", None)
    if pool is None or not hasattr(pool, "_network_backend"):
        raise RuntimeError(
            f"this httpx/httpcore version ({httpx.__version__}/{httpcore.__version__}) does not "
            "expose the connection pool itproxy's client maps names in; install httpx<1 and httpcore<2"
        )
    return pool


def http_transport(names: NameMap, verify: ssl.SSLContext, **kwargs: Any) -> httpx.HTTPTransport:
    """An httpx transport that connects names under the domains to itproxy."""
    t = httpx.HTTPTransport(verify=verify, **kwargs)
    pool = _pool_of(t)
    pool._network_backend = _SyncBackend(names, pool._network_backend)
    return t


def async_http_transport(names: NameMap, verify: ssl.SSLContext, **kwargs: Any) -> httpx.AsyncHTTPTransport:
    """The asyncio/trio twin of :func:`http_transport`."""
    t = httpx.AsyncHTTPTransport(verify=verify, **kwargs)
    pool = _pool_of(t)
    pool._network_backend = _AsyncBackend(names, pool._network_backend)
    return t


def requests_adapter(names: NameMap, ca_bundle: str) -> Any:
    """A requests adapter that connects names under the domains to itproxy and verifies them
    with the CA bundle, whatever REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE or a proxy variable says."""
    import requests
    import requests.adapters
    import urllib3.connection
    import urllib3.connectionpool
    import urllib3.exceptions
    import urllib3.util.connection

    def mapped(base: Any) -> Any:
        class Mapped(base):  # type: ignore[misc]
            def _new_conn(self) -> Any:
                target = names.lookup(self.host, self.port)
                if target is None:
                    return super()._new_conn()
                try:
                    return urllib3.util.connection.create_connection(
                        target, self.timeout, source_address=self.source_address,
                        socket_options=self.socket_options,
                    )
                except OSError as e:
                    raise urllib3.exceptions.NewConnectionError(
                        self, f"cannot connect to itproxy's listener {target[0]}:{target[1]} for {self.host}: {e}"
                    ) from e

        return Mapped

    class Pool(urllib3.connectionpool.HTTPConnectionPool):
        ConnectionCls = mapped(urllib3.connection.HTTPConnection)

    class TlsPool(urllib3.connectionpool.HTTPSConnectionPool):
        ConnectionCls = mapped(urllib3.connection.HTTPSConnection)

    class Adapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": TlsPool}

        def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,
                 verify: Union[bool, str] = True, cert: Any = None,
                 proxies: Optional[Mapping[str, str]] = None) -> requests.Response:
            host = urllib3.util.parse_url(request.url or "").host or ""
            if names.covers(host):
                # requests lets REQUESTS_CA_BUNDLE override Session.verify, and would send these
                # names to an HTTP proxy from the environment: neither may happen here.
                proxies = {}
                if verify is not False:
                    verify = ca_bundle
            return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies)

    return Adapter()
