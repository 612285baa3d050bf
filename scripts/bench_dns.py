#!/usr/bin/env python3
"""DNS benchmark, run by `make bench`: itproxy vs dnsmasq vs Knot DNS, side by side in one run.

Each server answers the same name (api.test A -> 127.0.0.18, the address itproxy gives askers of that listener) on 127.0.0.18 (loopback) and is
loaded by dnsperf for DNS_BENCH_SECONDS per round, in rounds that rotate the order; the table
gives the median queries/s of the rounds, the server's CPU time per query (utime+stime of its
process / answered queries) and the ratios to itproxy. Knot runs with 2 UDP workers (one per
core here), dnsmasq is single-threaded by design, itproxy with its defaults.
Writes bench-results/<date>-dns.json and .md, and prints the Markdown table.
"""
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "itproxy")
IP = "127.0.0.18"
PORTS = {"itproxy": 18553, "dnsmasq": 18554, "knot": 18555}
HTTP_PORT = 18580
SECONDS = int(os.environ.get("DNS_BENCH_SECONDS", "5"))
ROUNDS = int(os.environ.get("DNS_BENCH_ROUNDS", "3"))
WORK = tempfile.mkdtemp(prefix="itproxy-dns-bench-")
procs = []


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def start(args, log):
    p = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    procs.append(p)
    return p


def answers(port, timeout=10):
    """Waits until the server on `port` answers api.test with 127.0.0.1."""
    end = time.time() + timeout
    last = ""
    while time.time() < end:
        try:
            last = sh("dig", "+short", "+tries=1", "+time=1", "-p", str(port), f"@{IP}", "api.test", "A")
            if last.strip() == IP:
                return
        except subprocess.CalledProcessError as e:
            last = e.stdout + e.stderr
        time.sleep(0.1)
    raise SystemExit(f"the server on {IP}:{port} does not answer api.test: {last!r}")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dnsperf(port, pid, queries):
    """(queries/s, lost, server CPU µs per answered query) for one dnsperf run."""
    before = cpu_seconds(pid)
    out = sh("dnsperf", "-s", IP, "-p", str(port), "-d", queries, "-l", str(SECONDS),
             "-c", "8", "-q", "256", "-t", "2")
    cpu = cpu_seconds(pid) - before
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    done = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))
    lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))
    return qps, lost, (cpu / done * 1e6 if done else None)


def knot_conf():
    os.makedirs(f"{WORK}/knot/db", exist_ok=True)
    with open(f"{WORK}/knot/test.zone", "w") as f:
        f.write("$ORIGIN test.\n$TTL 5\n"
                "@ SOA ns.test. hostmaster.test. 1 3600 600 86400 5\n"
                f"@ NS ns.test.\nns A {IP}\napi A {IP}\n")
    path = f"{WORK}/knot.conf"
    with open(path, "w") as f:
        f.write(f"""server:
    rundir: "{WORK}/knot"
    listen: {IP}@{PORTS['knot']}
    udp-workers: 2
    tcp-workers: 1
    background-workers: 1
database:
    storage: "{WORK}/knot/db"
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: "{WORK}/knot"
zone:
  - domain: test
""")
    return path


def main():
    for tool in ("dnsperf", "dnsmasq", "knotd", "dig"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed: `make bench` installs dnsperf, dnsmasq-base, knot and dnsutils")
    os.makedirs(os.path.join(ROOT, "bench-results"), exist_ok=True)
    queries = f"{WORK}/queries"
    with open(queries, "w") as f:
        f.write("api.test A\n")
    state = f"{WORK}/state"
    servers = {
        "itproxy": start([BIN, "--state-dir", state, "up", "--http", f"{IP}:{HTTP_PORT}", "--no-https",
                          "--dns", f"{IP}:{PORTS['itproxy']}"], f"{WORK}/itproxy.log"),
        "dnsmasq": start(["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                          f"--listen-address={IP}", "--bind-interfaces", f"--port={PORTS['dnsmasq']}",
                          f"--address=/api.test/{IP}", "--cache-size=0", f"--pid-file={WORK}/dnsmasq.pid"],
                         f"{WORK}/dnsmasq.log"),
        "knot": start(["knotd", "-c", knot_conf()], f"{WORK}/knot.log"),
    }
    for _ in range(100):
        if os.path.exists(os.path.join(state, "control.sock")):
            break
        time.sleep(0.05)
    sh(BIN, "--state-dir", state, "route", "api", f"{IP}:{HTTP_PORT + 1}")
    for port in PORTS.values():
        answers(port)
    versions = {"itproxy": sh(BIN, "--version").strip(),
                "dnsmasq": sh("dnsmasq", "--version").splitlines()[0],
                "knot": sh("knotd", "--version").strip()}
    print(f"dnsperf, {ROUNDS} rounds of {SECONDS} s per server, order rotated...", flush=True)
    runs = {name: [] for name in PORTS}
    order = list(PORTS)
    for rnd in range(ROUNDS):
        for name in order[rnd % len(order):] + order[:rnd % len(order)]:
            runs[name].append(dnsperf(PORTS[name], servers[name].pid, queries))
    med = {name: {"qps": statistics.median(r[0] for r in rs),
                  "lost": sum(r[1] for r in rs),
                  "cpu_us_per_query": statistics.median(r[2] for r in rs if r[2] is not None)}
           for name, rs in runs.items()}
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count()}, "versions": versions,
              "dnsperf": {"seconds": SECONDS, "rounds": ROUNDS, "clients": 8, "outstanding": 256,
                          "query": "api.test A"},
              "runs": runs, "medians": med}
    it = med["itproxy"]
    md = [f"# DNS benchmark, {result['date']}", "",
          f"{versions['itproxy']}, {versions['dnsmasq']}, {versions['knot']}; {os.cpu_count()} CPUs, loopback, "
          f"dnsperf -c 8 -q 256 for `api.test A`, median of {ROUNDS} rounds of {SECONDS} s, order rotated. "
          "Knot with 2 UDP workers.", "",
          "| server | queries/s | CPU µs/query | lost | itproxy / this |", "|---|---|---|---|---|"]
    for name, m in med.items():
        md.append(f"| {name} | {m['qps']:.0f} | {m['cpu_us_per_query']:.2f} | {m['lost']} | "
                  f"{it['qps'] / m['qps']:.2f} |")
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    with open(os.path.join(ROOT, "bench-results", f"{stamp}-dns.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    with open(os.path.join(ROOT, "bench-results", f"{stamp}-dns.md"), "w") as fh:
        fh.write("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"\nwritten: bench-results/{stamp}-dns.json and .md")


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(WORK, ignore_errors=True)
