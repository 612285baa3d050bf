#!/usr/bin/env python3
"""End-to-end benchmark, run by `make bench`: itproxy vs nginx vs direct, side by side in one run.

Everything listens on 127.0.0.17 (loopback) and every load is bounded in time. Starts:
  - a fast backend: nginx (1 worker) answering `return 200` on two ports ("a" and "b"),
  - itproxy routing api.test to backend a,
  - nginx as an equivalent host-routing reverse proxy (upstream keepalive, same headers),
then loads direct, itproxy and nginx alternately with the same client (`itproxy bench`, and wrk
when installed), measures how long a route change takes to be visible (itproxy route vs nginx
reload), and counts failed requests during 1000+ itproxy swaps vs 20 nginx reloads under load.
Writes bench-results/<date>.json and .md, and prints the Markdown table.
"""
import datetime
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "itproxy")
IP = "127.0.0.17"
PORTS = {"a": 18001, "b": 18002, "itproxy": 18080, "nginx": 18081, "itproxy-pipeline": 18082,
         "itproxy-unrecorded": 18084}
# A bare TCP relay (nginx's stream module: no HTTP at all) in front of the backend: what one
# more loopback hop costs on this machine, the floor for any proxy's added latency.
RELAY_PORT = 18083
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
DURATION = os.environ.get("BENCH_DURATION", "30s")
WORK = tempfile.mkdtemp(prefix="itproxy-bench-")
STATE = os.path.join(WORK, "state")
# A second itproxy with the HTTP/1.1 front off: every request through Pingora's full proxy
# pipeline, to show what the front changes in the same run.
PIPELINE_STATE = os.path.join(WORK, "state-pipeline")
# The same proxy keeping no request in the inspector's ring (counts only): the cost of recording.
UNRECORDED_STATE = os.path.join(WORK, "state-unrecorded")
procs = []


def sh(*args, **kw):
    p = subprocess.run(args, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


def itproxy(*args):
    return sh(BIN, "--state-dir", STATE, *args)


def nginx_conf(name, body):
    path = os.path.join(WORK, f"{name}.conf")
    with open(path, "w") as f:
        f.write(f"""worker_processes {body['workers']};
daemon off;
pid {WORK}/{name}.pid;
error_log {WORK}/{name}.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
{body['http']}
}}
""")
    return path


BACKEND = {"workers": 1, "http": f"""
  server {{ listen {IP}:{PORTS['a']}; location / {{ return 200 "a\\n"; }} }}
  server {{ listen {IP}:{PORTS['b']}; location / {{ return 200 "b\\n"; }} }}
"""}


def proxy_conf(backend):
    return {"workers": "auto", "http": f"""
  upstream app {{ server {IP}:{PORTS[backend]}; keepalive 64; }}
  server {{
    listen {IP}:{PORTS['nginx']};
    server_name api.test;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;
    }}
  }}
  server {{ listen {IP}:{PORTS['nginx']} default_server; return 404; }}
"""}


def relay_conf():
    path = os.path.join(WORK, "relay.conf")
    with open(path, "w") as f:
        f.write(f"""load_module {STREAM_MODULE};
worker_processes 1;
daemon off;
pid {WORK}/relay.pid;
error_log {WORK}/relay.err warn;
events {{ worker_connections 4096; }}
stream {{ server {{ listen {IP}:{RELAY_PORT}; proxy_pass {IP}:{PORTS['a']}; tcp_nodelay on; }} }}
""")
    return path


def start(args, log):
    p = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    procs.append(p)
    return p


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection((IP, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"nothing listens on {IP}:{port}")


def get(port, host="api.test"):
    c = http.client.HTTPConnection(IP, port, timeout=2)
    c.request("GET", "/", headers={"Host": host})
    body = c.getresponse().read().decode().strip()
    c.close()
    return body


def bench(*extra):
    out = itproxy("bench", "api", "--json", *extra)
    return json.loads(out)


def cpu_seconds(pids):
    """utime + stime of the processes (and their threads), in seconds."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def wrk(port, pids=()):
    """(requests/s, proxy CPU µs per request) for 5 s of wrk -t2 -c64."""
    if not shutil.which("wrk"):
        return None
    before = cpu_seconds(pids)
    out = sh("wrk", "-t2", "-c64", "-d5s", "-H", "Host: api.test", f"http://{IP}:{port}/")
    cpu = cpu_seconds(pids) - before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return rps, (cpu / total * 1e6 if pids and total else None)


def control_put(target):
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.path.join(STATE, "control.sock"))
    body = json.dumps({"target": target})
    s.sendall(f"PUT /v1/routes/api HTTP/1.1\r\nHost: itproxy\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}".encode())
    resp = b""
    while chunk := s.recv(65536):
        resp += chunk
    s.close()
    assert resp.startswith(b"HTTP/1.1 200"), resp[:200]


def visible_after(change, port, want, limit=5.0):
    t0 = time.perf_counter()
    change()
    while get(port) != want:
        if time.perf_counter() - t0 > limit:
            raise SystemExit(f"the change to {want} never became visible on port {port}")
    return (time.perf_counter() - t0) * 1000


def main():
    os.makedirs(os.path.join(ROOT, "bench-results"), exist_ok=True)
    start(["nginx", "-c", nginx_conf("backend", BACKEND)], f"{WORK}/backend.log")
    proxy_path = nginx_conf("proxy", proxy_conf("a"))
    nginx = start(["nginx", "-c", proxy_path], f"{WORK}/proxy.log")
    itp = start([BIN, "--state-dir", STATE, "up", "--http", f"{IP}:{PORTS['itproxy']}", "--no-https", "--no-dns"],
                f"{WORK}/itproxy.log")
    pipeline_conf = os.path.join(WORK, "pipeline.toml")
    with open(pipeline_conf, "w") as f:
        f.write("[proxy]\nh1_front = false\n")
    itp_pipeline = start([BIN, "--state-dir", PIPELINE_STATE, "--config", pipeline_conf, "up", "--http",
                          f"{IP}:{PORTS['itproxy-pipeline']}", "--no-https", "--no-dns"], f"{WORK}/itproxy-pipeline.log")
    unrecorded_conf = os.path.join(WORK, "unrecorded.toml")
    with open(unrecorded_conf, "w") as f:
        f.write("[proxy]\nrecent_requests = 0\n")
    itp_unrecorded = start([BIN, "--state-dir", UNRECORDED_STATE, "--config", unrecorded_conf, "up", "--http",
                            f"{IP}:{PORTS['itproxy-unrecorded']}", "--no-https", "--no-dns"],
                           f"{WORK}/itproxy-unrecorded.log")
    relay = os.path.exists(STREAM_MODULE)
    if relay:
        start(["nginx", "-c", relay_conf()], f"{WORK}/relay.log")
        wait_port(RELAY_PORT)
    for port in PORTS.values():
        wait_port(port)
    for _ in range(100):
        if os.path.exists(os.path.join(STATE, "control.sock")):
            break
        time.sleep(0.05)
    for state, log in ((PIPELINE_STATE, "itproxy-pipeline.log"), (UNRECORDED_STATE, "itproxy-unrecorded.log")):
        for _ in range(600):
            if os.path.exists(os.path.join(state, "control.sock")):
                break
            time.sleep(0.05)
        else:
            raise SystemExit(f"itproxy did not start ({state}):\n" + open(os.path.join(WORK, log)).read())
    itproxy("route", "api", f"{IP}:{PORTS['a']}")
    sh(BIN, "--state-dir", PIPELINE_STATE, "route", "api", f"{IP}:{PORTS['a']}")
    sh(BIN, "--state-dir", UNRECORDED_STATE, "route", "api", f"{IP}:{PORTS['a']}")
    assert get(PORTS["itproxy"]) == "a" and get(PORTS["nginx"]) == "a" and get(PORTS["itproxy-pipeline"]) == "a"
    versions = {"itproxy": sh(BIN, "--version").strip(),
                "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()}

    also = f"nginx={IP}:{PORTS['nginx']}"
    also_pipeline = f"itproxy-pipeline={IP}:{PORTS['itproxy-pipeline']}"
    print(f"loading direct / itproxy / itproxy-pipeline / nginx alternately for {DURATION} (closed loop, 32 connections)...", flush=True)
    closed = bench("--duration", DURATION, "--connections", "32", "--direct", "--also", also_pipeline, "--also", also)
    print("... and at 1 connection (latency)", flush=True)
    also_relay = ["--also", f"tcp-relay={IP}:{RELAY_PORT}"] if relay else []
    single = bench("--duration", "10s", "--connections", "1", "--direct", "--also", also_pipeline, "--also", also,
                   *also_relay)
    wrk_rps, wrk_cpu = {}, {}
    if shutil.which("wrk"):
        nginx_pids = [nginx.pid] + [int(p) for p in sh("pgrep", "-P", str(nginx.pid)).split()]
        pids = {"direct": [], "itproxy": [itp.pid], "itproxy-pipeline": [itp_pipeline.pid], "nginx": nginx_pids,
                "itproxy-unrecorded": [itp_unrecorded.pid]}
        for rnd in range(3):
            for name in ("direct", "itproxy", "itproxy-unrecorded", "itproxy-pipeline", "nginx"):
                port = PORTS["a"] if name == "direct" else PORTS[name]
                rps, cpu = wrk(port, pids[name])
                wrk_rps.setdefault(name, []).append(rps)
                if cpu is not None:
                    wrk_cpu.setdefault(name, []).append(cpu)
        wrk_rps = {k: statistics.median(v) for k, v in wrk_rps.items()}
        wrk_cpu = {k: statistics.median(v) for k, v in wrk_cpu.items()}

    # Route change visible: itproxy API call vs nginx config rewrite + reload.
    print("route change visible time...", flush=True)
    itp_ms, ngx_ms = [], []
    for i in range(20):
        to = "b" if i % 2 == 0 else "a"
        itp_ms.append(visible_after(lambda: control_put(f"{IP}:{PORTS[to]}"), PORTS["itproxy"], to))

        def reload(to=to):
            nginx_conf("proxy", proxy_conf(to))
            sh("nginx", "-c", proxy_path, "-s", "reload")
        ngx_ms.append(visible_after(reload, PORTS["nginx"], to))
    itproxy("route", "api", f"{IP}:{PORTS['a']}")

    # Failed requests under load: 1000+ itproxy swaps vs 20 nginx reloads, same client and load.
    print("failed requests during swaps / reloads under load...", flush=True)
    swaps = bench("--duration", "10s", "--connections", "32", "--swap-every", "1ms",
                  "--swap-with", f"{IP}:{PORTS['b']}")
    loader = subprocess.Popen([BIN, "--state-dir", STATE, "bench", "api", "--json", "--skip-itproxy",
                               "--also", also, "--duration", "10s", "--connections", "32"],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    for i in range(20):
        to = "b" if i % 2 == 0 else "a"
        nginx_conf("proxy", proxy_conf(to))
        sh("nginx", "-c", proxy_path, "-s", "reload")
        time.sleep(0.4)
    nginx_load = json.loads(loader.communicate()[0])

    # The same with wrk, which (unlike our client) does not reconnect before reusing a
    # connection the server is closing: the classic nginx-reload failure mode.
    wrk_failures = None
    if shutil.which("wrk"):
        import threading

        def wrk_errors(port, changer):
            proc = subprocess.Popen(["wrk", "-t2", "-c64", "-d6s", "-H", "Host: api.test", f"http://{IP}:{port}/"],
                                    stdout=subprocess.PIPE, text=True)
            count = changer()
            out = proc.communicate()[0]
            total = int(re.search(r"(\d+) requests in", out).group(1))
            non2xx = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
            sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
            errors = non2xx + (sum(int(x) for x in sock.groups()) if sock else 0)
            return {"changes": count, "requests": total, "failed": errors}

        def swap_loop():
            n, end = 0, time.time() + 5
            while time.time() < end:
                control_put(f"{IP}:{PORTS['b' if n % 2 == 0 else 'a']}")
                n += 1
            control_put(f"{IP}:{PORTS['a']}")
            return n + 1

        def reload_loop():
            time.sleep(0.5)
            for i in range(20):
                nginx_conf("proxy", proxy_conf("b" if i % 2 == 0 else "a"))
                sh("nginx", "-c", proxy_path, "-s", "reload")
                time.sleep(0.25)
            return 20

        wrk_failures = {"itproxy": wrk_errors(PORTS["itproxy"], swap_loop),
                        "nginx": wrk_errors(PORTS["nginx"], reload_loop)}

    r = {x["label"]: x for x in closed["results"]}
    r1 = {x["label"]: x for x in single["results"]}
    ratio = lambda a, b: a / b if b else float("nan")
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count()},
        "versions": versions,
        "closed_loop_32": closed,
        "closed_loop_1": single,
        "wrk_t2_c64_rps": wrk_rps or None,
        "wrk_t2_c64_cpu_us_per_request": wrk_cpu or None,
        "route_change_visible_ms": {"itproxy_median": statistics.median(itp_ms),
                                    "nginx_reload_median": statistics.median(ngx_ms),
                                    "itproxy_all": itp_ms, "nginx_all": ngx_ms},
        "wrk_failures_during_changes": wrk_failures,
        "failures_during_changes": {
            "itproxy_swaps": swaps["swaps"]["swaps"], "itproxy_failed": swaps["swaps"]["failed_requests"],
            "itproxy_requests": swaps["results"][0]["requests"],
            "nginx_reloads": 20, "nginx_failed": nginx_load["results"][0]["errors"],
            "nginx_requests": nginx_load["results"][0]["requests"]},
    }
    md = [f"# itproxy end-to-end benchmark, {result['date']}", "",
          f"{versions['itproxy']}, {versions['nginx']}, {os.cpu_count()} CPUs, loopback, one run, targets alternating in 1 s slices.", "",
          "| path | req/s (c32) | p50 c32 | p99 c32 | p50 c1 | p99 c1 | errors |",
          "|---|---|---|---|---|---|---|"]
    for name in ("direct", "itproxy", "itproxy-pipeline", "nginx"):
        x, y = r[name], r1[name]
        md.append(f"| {name} | {x['requests_per_second']:.0f} | {x['p50_us']} µs | {x['p99_us']} µs | "
                  f"{y['p50_us']} µs | {y['p99_us']} µs | {x['errors'] + y['errors']} |")
    md += ["", "| ratio | throughput | p50 c32 | p99 c32 | p50 c1 (added µs) |", "|---|---|---|---|---|",
           f"| itproxy / nginx | {ratio(r['itproxy']['requests_per_second'], r['nginx']['requests_per_second']):.2f} | "
           f"{ratio(r['itproxy']['p50_us'], r['nginx']['p50_us']):.2f} | {ratio(r['itproxy']['p99_us'], r['nginx']['p99_us']):.2f} | "
           f"{r1['itproxy']['p50_us'] - r1['direct']['p50_us']} vs nginx {r1['nginx']['p50_us'] - r1['direct']['p50_us']} |",
           f"| itproxy / direct | {ratio(r['itproxy']['requests_per_second'], r['direct']['requests_per_second']):.2f} | "
           f"{ratio(r['itproxy']['p50_us'], r['direct']['p50_us']):.2f} | {ratio(r['itproxy']['p99_us'], r['direct']['p99_us']):.2f} | |",
           f"| itproxy / itproxy-pipeline | {ratio(r['itproxy']['requests_per_second'], r['itproxy-pipeline']['requests_per_second']):.2f} | "
           f"{ratio(r['itproxy']['p50_us'], r['itproxy-pipeline']['p50_us']):.2f} | {ratio(r['itproxy']['p99_us'], r['itproxy-pipeline']['p99_us']):.2f} | "
           f"{r1['itproxy']['p50_us'] - r1['direct']['p50_us']} vs {r1['itproxy-pipeline']['p50_us'] - r1['direct']['p50_us']} |"]
    added = lambda name: r1[name]["p50_us"] - r1["direct"]["p50_us"]
    if "tcp-relay" in r1:
        md += ["", f"Added p50 at 1 connection: itproxy {added('itproxy')} µs, nginx {added('nginx')} µs, "
                   f"a bare TCP relay (nginx stream, no HTTP) {added('tcp-relay')} µs: the cost of one more "
                   "loopback hop on this machine, the floor for any proxy."]
    if wrk_rps:
        md += ["", "wrk -t2 -c64 (median of 3 x 5 s, rotated; CPU = the proxy's utime+stime per request):", "",
               "| path | req/s | CPU µs/request |", "|---|---|---|"]
        for k, v in wrk_rps.items():
            cpu = wrk_cpu.get(k)
            md.append(f"| {k} | {v:.0f} | {f'{cpu:.1f}' if cpu is not None else '-'} |")
        if wrk_rps.get("nginx"):
            md.append("")
            md.append(f"itproxy / nginx with wrk: throughput {ratio(wrk_rps['itproxy'], wrk_rps['nginx']):.2f}, "
                      f"CPU per request {ratio(wrk_cpu['itproxy'], wrk_cpu['nginx']):.2f}; "
                      f"itproxy-pipeline / nginx: {ratio(wrk_rps['itproxy-pipeline'], wrk_rps['nginx']):.2f}, "
                      f"{ratio(wrk_cpu['itproxy-pipeline'], wrk_cpu['nginx']):.2f}.")
        if wrk_rps.get("itproxy-unrecorded"):
            md.append("")
            md.append(f"Cost of recording every request in the inspector (itproxy, default ring of 1000, vs "
                      f"itproxy-unrecorded, `recent_requests = 0`, counts only): throughput "
                      f"{ratio(wrk_rps['itproxy'], wrk_rps['itproxy-unrecorded']):.3f}, CPU per request "
                      f"{ratio(wrk_cpu['itproxy'], wrk_cpu['itproxy-unrecorded']):.3f}.")
    c = result["route_change_visible_ms"]
    f = result["failures_during_changes"]
    md += ["", f"Route change visible: itproxy {c['itproxy_median']:.2f} ms (API call incl. fsync) vs nginx reload {c['nginx_reload_median']:.2f} ms (medians of 20).",
           f"Failed requests under load: itproxy {f['itproxy_failed']} of {f['itproxy_requests']} during {f['itproxy_swaps']} swaps; "
           f"nginx {f['nginx_failed']} of {f['nginx_requests']} during {f['nginx_reloads']} reloads."]
    if wrk_failures:
        wi, wn = wrk_failures["itproxy"], wrk_failures["nginx"]
        md.append(f"With wrk -c64: itproxy {wi['failed']} failed of {wi['requests']} during {wi['changes']} swaps; "
                  f"nginx {wn['failed']} failed of {wn['requests']} during {wn['changes']} reloads.")
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    with open(os.path.join(ROOT, "bench-results", f"{stamp}.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    with open(os.path.join(ROOT, "bench-results", f"{stamp}.md"), "w") as fh:
        fh.write("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"\nwritten: bench-results/{stamp}.json and .md")


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if "itproxy" in str(p.args[0]) else signal.SIGQUIT)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(WORK, ignore_errors=True)
