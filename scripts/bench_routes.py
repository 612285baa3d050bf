#!/usr/bin/env python3
"""Route change benchmark, run by `make bench`: what one route change costs at 1,000 and 10,000
routes, end to end against the release binary.

For each table size an itproxy (loopback, 127.0.0.19, its own state directory) gets that many
routes in one bulk change (`PUT /v1/routes`), then CHANGES single changes swap `api.test`
between two backends through the control socket. For each change it reports:
  - acknowledged: the `PUT /v1/routes/api` round trip on a kept-alive control connection (parse,
    apply, one log append + fdatasync, publish table and zone, answer),
  - visible: from sending the PUT until the sending of the first request (through the proxy, in
    a tight loop on a second thread) that reaches the new backend: an upper bound, within one
    request's round trip,
and the bulk change itself. Medians and p90 over the changes.
Writes bench-results/<date>-routes.json and .md, and prints the Markdown table.
"""
import datetime
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "itproxy")
IP = "127.0.0.19"
BACKENDS = {"a": 18601, "b": 18602}
PROXY_PORT = 18680
SIZES = [int(x) for x in os.environ.get("ROUTE_BENCH_SIZES", "1000,10000").split(",")]
CHANGES = int(os.environ.get("ROUTE_BENCH_CHANGES", "200"))
WORK = tempfile.mkdtemp(prefix="itproxy-route-bench-")
procs = []


class Backend(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self):
        # One write (headers and body): split writes meet delayed ACKs, 40 ms per request.
        body = self.server.name.encode()
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def log_message(self, *args):
        pass


def backend(name, port):
    srv = http.server.ThreadingHTTPServer((IP, port), Backend)
    srv.name = name
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


class Control:
    """The control API over one kept-alive connection to control.sock, as a client that makes
    many changes (the Python client, a CI script) holds it."""

    def __init__(self, state):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(os.path.join(state, "control.sock"))

    def call(self, method, path, body):
        data = json.dumps(body).encode()
        self.sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: itproxy\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        resp = b""
        while b"\r\n\r\n" not in resp:
            resp += self.sock.recv(65536)
        head, _, rest = resp.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(rest) < length:
            rest += self.sock.recv(65536)
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"{method} {path} failed: {head[:200]!r} {rest[:300]!r}")
        return rest

    def close(self):
        self.sock.close()


class Watcher:
    """Requests api.test through the proxy in a tight loop (one connection, kept alive):
    `expect(name, since)` then `wait()` gives when the first request sent after `since` that
    reached backend `name` was sent. The change was visible by then, and not one loop period
    (a request's round trip, a fraction of a millisecond) before."""

    def __init__(self):
        self.conn = http.client.HTTPConnection(IP, PROXY_PORT, timeout=5)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.want = None
        self.since = 0.0
        self.at = None
        self.cond = threading.Condition()
        self.running = True
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while self.running:
            sent = time.perf_counter()
            self.conn.request("GET", "/", headers={"Host": "api.test"})
            body = self.conn.getresponse().read().decode()
            with self.cond:
                if self.want == body and sent >= self.since and self.at is None:
                    self.at = sent
                    self.cond.notify_all()

    def expect(self, name, since):
        with self.cond:
            self.want, self.since, self.at = name, since, None

    def wait(self, limit=5.0):
        with self.cond:
            if not self.cond.wait_for(lambda: self.at is not None, timeout=limit):
                raise SystemExit(f"the change to {self.want} never became visible")
            return self.at


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def run(size):
    state = os.path.join(WORK, f"state-{size}")
    p = subprocess.Popen([BIN, "--state-dir", state, "up", "--http", f"{IP}:{PROXY_PORT}", "--no-https",
                          "--no-dns"], stdout=open(f"{WORK}/itproxy-{size}.log", "w"), stderr=subprocess.STDOUT)
    procs.append(p)
    for _ in range(200):
        if os.path.exists(os.path.join(state, "control.sock")):
            break
        time.sleep(0.05)
    routes = {f"r{i}": {"target": f"{IP}:{BACKENDS['a']}"} for i in range(size - 1)}
    routes["api"] = {"target": f"{IP}:{BACKENDS['a']}"}
    ctl = Control(state)
    t0 = time.perf_counter()
    ctl.call("PUT", "/v1/routes", {"set": routes})
    bulk_ms = (time.perf_counter() - t0) * 1000
    watcher = Watcher()
    acked, visible = [], []
    try:
        for i in range(CHANGES):
            to = "b" if i % 2 == 0 else "a"
            t0 = time.perf_counter()
            watcher.expect(to, t0)
            ctl.call("PUT", "/v1/routes/api", {"target": f"{IP}:{BACKENDS[to]}"})
            acked.append((time.perf_counter() - t0) * 1000)
            visible.append((watcher.wait() - t0) * 1000)
    finally:
        watcher.running = False
        ctl.close()
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)
    return {"routes": size, "bulk_ms": bulk_ms, "changes": CHANGES,
            "acknowledged_ms": {"median": statistics.median(acked), "p90": pct(acked, 0.9)},
            "visible_ms": {"median": statistics.median(visible), "p90": pct(visible, 0.9)},
            "acknowledged_all": acked, "visible_all": visible}


def main():
    os.makedirs(os.path.join(ROOT, "bench-results"), exist_ok=True)
    for name, port in BACKENDS.items():
        backend(name, port)
    results = [run(n) for n in SIZES]
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    md = [f"# Route change benchmark, {date}", "",
          f"{sh_version()}, {os.cpu_count()} CPUs, loopback; {CHANGES} single changes per table size "
          "(`PUT /v1/routes/api` over one kept-alive connection to the control socket, while a second thread requests api.test through the proxy in a loop), medians and p90.", "",
          "| routes | acknowledged (incl. fdatasync) | visible through the proxy | bulk set of all routes |",
          "|---|---|---|---|"]
    for r in results:
        a, v = r["acknowledged_ms"], r["visible_ms"]
        md.append(f"| {r['routes']:,} | {a['median']:.2f} ms (p90 {a['p90']:.2f}) | "
                  f"{v['median']:.2f} ms (p90 {v['p90']:.2f}) | {r['bulk_ms']:.0f} ms |")
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    with open(os.path.join(ROOT, "bench-results", f"{stamp}-routes.json"), "w") as fh:
        json.dump({"date": date, "results": results}, fh, indent=2)
    with open(os.path.join(ROOT, "bench-results", f"{stamp}-routes.md"), "w") as fh:
        fh.write("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"\nwritten: bench-results/{stamp}-routes.json and .md")


def sh_version():
    return subprocess.run([BIN, "--version"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(WORK, ignore_errors=True)
