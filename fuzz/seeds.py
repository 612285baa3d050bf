#!/usr/bin/env python3
"""Writes the seed corpora (corpus/<target>/seed-*) from inputs the tests use.

Run from anywhere: `python3 fuzz/seeds.py`. The seeds are committed; libFuzzer adds what it
finds next to them (ignored by git).
"""
import pathlib
import re
import struct

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def write(target, name, data):
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data if isinstance(data, bytes) else data.encode())


# http_request: one byte for the client's address family (0: IPv4, 1: IPv6), then the head.
# Heads from router/src/forward.rs's tests and tests/integration/errors.rs.
REQUESTS = [
    b"GET /a?b HTTP/1.1\r\nHost: API.test:80\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nTE: trailers\r\nX-Forwarded-For: 6.6.6.6\r\nAccept: */*\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: api.test\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: api.test\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: secure.test\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: shop.test\r\nAccept: text/html\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: api.test\r\nHost: api.test\r\n\r\n",
    b"GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: api.test\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: api.test\r\nExpect: 100-continue\r\n\r\n",
    b"POST /form HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhelloGET",
    b"HEAD /x HTTP/1.1\r\nhost: api.test\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\nTrailer: a\r\n\r\n",
    b"DELETE /items/1 HTTP/1.1\r\nHost: [::1]:8000\r\nX-Forwarded-Host: evil\r\n\r\n",
]
for i, head in enumerate(REQUESTS):
    write("http_request", f"{i:02}", bytes([i % 2]) + head)

# http_response: upstream response heads (router/src/forward.rs's tests, tests/integration).
RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\nKeep-Alive: timeout=5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n",
]
for i, head in enumerate(RESPONSES):
    write("http_response", f"{i:02}", head)

# chunked: `\0` (no extra read boundaries), then a body (router/src/chunked.rs's tests).
CHUNKED = [
    b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n",
    b"3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n",
    b"a\r\n0123",
    b"zz\r\n",
    b"3\r\nabcX\r\n",
    b"0\r\nnot a trailer\r\n",
    b"ffffffffffffffffffff\r\n",
    b"1A;name=\"v\"\r\n" + b"x" * 26 + b"\r\n0\r\n\r\n",
]
for i, body in enumerate(CHUNKED):
    write("chunked", f"{i:02}", b"\0" + body)
write("chunked", "split", b"\x02\x03\x00\x09\x00" + CHUNKED[0])


# dns_query: wire-format queries as `dig`/`itproxy resolve` send them.
def name(n):
    out = b""
    for label in n.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def query(qid, qname, qtype, rd=True, edns=False):
    flags = 0x0100 if rd else 0
    arcount = 1 if edns else 0
    msg = struct.pack(">HHHHHH", qid, flags, 1, 0, 0, arcount)
    msg += name(qname) + struct.pack(">HH", qtype, 1)
    if edns:  # OPT: root name, type 41, UDP size 1232, no options
        msg += b"\0" + struct.pack(">HHIH", 41, 1232, 0, 0)
    return msg


A, NS, SOA, AAAA, ANY, TXT = 1, 2, 6, 28, 255, 16
write("dns_query", "a-routed", query(1, "api.test", A))
write("dns_query", "aaaa-below-routed", query(2, "v2.api.test", AAAA, edns=True))
write("dns_query", "a-direct", query(3, "db.test", A))
write("dns_query", "any-apex", query(4, "test", ANY))
write("dns_query", "soa-apex", query(5, "corp.example", SOA))
write("dns_query", "ns-apex", query(6, "test", NS, rd=False))
write("dns_query", "nxdomain", query(7, "nothing.test", A))
write("dns_query", "txt-nodata", query(8, "web.test", TXT))
write("dns_query", "not-ours", query(9, "example.com", A, edns=True))
write("dns_query", "ns-name", query(10, "ns.test", A))
# A question name that is a compression pointer to the first label of an earlier question.
two = struct.pack(">HHHHHH", 11, 0x0100, 2, 0, 0, 0) + name("api.test") + struct.pack(">HH", A, 1)
two += b"\x03www\xc0\x0c" + struct.pack(">HH", A, 1)
write("dns_query", "compressed-second", two)

# config: the README's examples and the files src/config.rs's tests load.
readme = (ROOT / "README.md").read_text()
for i, block in enumerate(re.findall(r"```toml\n(.*?)```", readme, re.S)):
    write("config", f"readme-{i}", block)
config_rs = (ROOT / "src" / "config.rs").read_text()
for i, block in enumerate(re.findall(r'r#"\n(.*?)"#', config_rs, re.S)):
    write("config", f"test-{i}", block)
write("config", "empty", "")
write("config", "unknown-key", "colour = 1\n")

# api_body: endpoint byte (1: PUT /v1/routes/{name}, 0: POST /v1/apps/{name}/{action}),
# the name, a newline, the body (docs/api.yaml's examples, tests/integration).
API = [
    b"\x01api\n{\"target\": \"localhost:8000\"}",
    b"\x01web.test\n{\"target\": \"https://127.0.0.1:8443\", \"redirect_https\": true, \"insecure_upstream\": true}",
    b"\x01api\n{\"target\": \"8000\"}",
    b"\x01api.corp.example\n{\"target\": \"http://[::1]:3000\"}",
    b"\x01api\n{\"target\": \"localhost:8000\", \"colour\": 1}",
    b"\x01example.com\n{\"target\": \"localhost:1\"}",
    b"\x00www\n",
    b"\x00www\n{\"wait\": true, \"timeout\": \"30s\"}",
    b"\x00www\n{\"timeout\": \"1h 30min\"}",
    b"\x00www\n{\"timeout\": \"soon\"}",
]
for i, data in enumerate(API):
    write("api_body", f"{i:02}", data)
