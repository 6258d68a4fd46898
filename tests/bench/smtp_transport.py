#!/usr/bin/python3
"""smtp_transport.py - delivery over sesrelay's SMTP transport vs Postfix relayhost.

    /usr/bin/python3 tests/bench/smtp_transport.py --tmp DIR --bin ./sesrelay
                     [--bin-label NAME] [--results build/bench-results.txt]

Started by tests/bench/run (root: the private Postfix instance needs it).
Everything on 127.0.0.1.  Measures delivery only, never acceptance:

  * the sink: an SMTP server answering the end of every message's data
    ("." -> 250) after 50 ms (a small asyncio server in this file, run as a
    subprocess: Postfix's smtp-sink only takes whole seconds for -w / -W).
    It offers PIPELINING and AUTH PLAIN/LOGIN (any credentials), no TLS.
  * sesrelay: N messages of 2 KB, 1 recipient, queued by a sesrelay with no
    SES region (delivery.py's preload()), which is stopped; a second one on
    that spool with [ses] transport = smtp, smtp_tls = none, pointing at the
    sink, concurrency C, delivers it.  Timed from its start to the sink's
    last answer.
  * Postfix: a private instance (bench.py's Postfix) with relayhost =
    [127.0.0.1]:SINKPORT, smtp/default_destination_concurrency_limit = 20,
    no TLS, no SASL.  N messages are submitted with smtp-source and put on
    hold (bench.py's static:HOLD); then `postsuper -H ALL` + `postqueue -f`
    release them; timed from the release to the sink's last answer.
  * memory sampled during delivery every 0.2 s: sesrelay's PSS and VmHWM;
    Postfix's PSS (and RSS) summed over its master and all its children.
  * sesrelay alone again at concurrency 64.

Ceiling = concurrency / 0.05 s.  Targets: sesrelay >= 95% of the ceiling at
20, peak PSS <= 1/5 of Postfix's.  Table printed and appended to --results.

Tunables (environment): BENCH_SMTP_N=4000, BENCH_SMTP_N64=8000,
BENCH_SMTP_LATENCY=0.05, BENCH_SMTP_SIZE=2048, BENCH_QUIET_WAIT=5.
"""
import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import procmem  # noqa: E402
import bench  # noqa: E402
import delivery  # noqa: E402

PY = "/usr/bin/python3"
POSTSUPER = shutil.which("postsuper") or "/usr/sbin/postsuper"
POSTQUEUE = shutil.which("postqueue") or "/usr/sbin/postqueue"


# --------------------------------------------------------------------------
# the sink (subprocess mode: smtp_transport.py --sink DELAY)
# --------------------------------------------------------------------------
class SinkStats:
    count = 0
    first = None
    last = None
    conns = 0


class SinkProto(asyncio.Protocol):
    EHLO = (b"250-sink.localdomain\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
            b"250-SIZE 52428800\r\n250-AUTH PLAIN LOGIN\r\n250 ENHANCEDSTATUSCODES\r\n")

    def __init__(self, delay):
        self.delay = delay
        self.buf = b""
        self.data = False
        self.scan = 0
        self.blocked = False
        self.auth = 0
        self.tr = None

    def connection_made(self, tr):
        self.tr = tr
        SinkStats.conns += 1
        tr.write(b"220 sink.localdomain ESMTP\r\n")

    def data_received(self, d):
        self.buf += d
        if not self.blocked:
            self.process()

    def process(self):
        while not self.blocked and self.tr is not None:
            if self.data:
                if self.buf.startswith(b".\r\n") and self.scan == 0:
                    skip = 3
                else:
                    i = self.buf.find(b"\r\n.\r\n", max(0, self.scan - 4))
                    if i < 0:
                        self.scan = len(self.buf)
                        return
                    skip = i + 5
                self.buf = self.buf[skip:]
                self.data = False
                self.scan = 0
                self.blocked = True
                if SinkStats.first is None:
                    SinkStats.first = time.time()
                asyncio.get_running_loop().call_later(self.delay, self.dot_done)
                return
            i = self.buf.find(b"\r\n")
            if i < 0:
                return
            line, self.buf = self.buf[:i], self.buf[i + 2:]
            self.command(line)

    def dot_done(self):
        SinkStats.count += 1
        SinkStats.last = time.time()
        self.blocked = False
        if self.tr is not None:
            self.tr.write(b"250 2.0.0 Ok: queued\r\n")
            self.process()

    def command(self, line):
        w = self.tr.write
        if self.auth:
            self.auth -= 1
            w(b"334 UGFzc3dvcmQ6\r\n" if self.auth else b"235 2.7.0 Authentication successful\r\n")
            return
        verb = line[:4].upper()
        if verb == b"EHLO":
            w(self.EHLO)
        elif verb == b"AUTH":
            parts = line.split()
            if len(parts) >= 3:
                w(b"235 2.7.0 Authentication successful\r\n")
            elif len(parts) == 2 and parts[1].upper() == b"LOGIN":
                self.auth = 2
                w(b"334 VXNlcm5hbWU6\r\n")
            else:
                self.auth = 1
                w(b"334 \r\n")
        elif verb == b"DATA":
            self.data = True
            self.scan = 0
            w(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        elif verb == b"QUIT":
            w(b"221 2.0.0 Bye\r\n")
            self.tr.close()
            self.tr = None
        elif verb == b"XSTA":
            w(("250 " + json.dumps({"count": SinkStats.count, "first": SinkStats.first,
                                    "last": SinkStats.last, "conns": SinkStats.conns})
               + "\r\n").encode())
        else:
            w(b"250 2.0.0 Ok\r\n")

    def connection_lost(self, exc):
        self.tr = None


def sink_main(delay):
    loop = asyncio.new_event_loop()
    srv = loop.run_until_complete(loop.create_server(lambda: SinkProto(delay), "127.0.0.1", 0,
                                                     backlog=512))
    port = srv.sockets[0].getsockname()[1]
    print(f"sink: listening on 127.0.0.1:{port}", flush=True)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.run_forever()
    srv.close()
    loop.close()


class Sink:
    def __init__(self, tmp, delay, name):
        self.delay, self.errlog = delay, os.path.join(tmp, f"sink.{name}.log")
        self.proc = None
        self.port = None

    def start(self):
        err = open(self.errlog, "ab")
        self.proc = subprocess.Popen([PY, os.path.abspath(__file__), "--sink", str(self.delay)],
                                     stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        err.close()
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("sink: listening on 127.0.0.1:"):
            self.stop()
            raise RuntimeError(f"sink did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def stats(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"XSTAT\r\n")
            line = f.readline().decode()
            s.sendall(b"QUIT\r\n")
        return json.loads(line[4:])

    def cpu(self):
        return procmem.proc_cpu(self.proc.pid)

    def stop(self):
        if self.proc is not None:
            delivery.stop_pid(self.proc)
            self.proc.stdout.close()
            self.proc = None


# --------------------------------------------------------------------------
class MemSampler(threading.Thread):
    def __init__(self, fn, interval=0.2):
        super().__init__(daemon=True)
        self.fn, self.interval = fn, interval
        self.ev = threading.Event()
        self.peak = {}

    def run(self):
        while not self.ev.is_set():
            try:
                m = self.fn()
            except Exception:  # noqa: BLE001 - process gone
                m = {}
            for k, v in m.items():
                if isinstance(v, (int, float)) and k != "pid":
                    self.peak[k] = max(self.peak.get(k, 0), v)
            self.ev.wait(self.interval)

    def stop(self):
        self.ev.set()
        self.join()


def wait_sink(sink, n, timeout, alive):
    deadline = time.monotonic() + timeout
    while True:
        st = sink.stats()
        if st["count"] >= n:
            return st
        if time.monotonic() > deadline:
            raise RuntimeError(f"timeout: the sink got {st['count']} of {n} in {timeout} s")
        alive()
        time.sleep(0.05)


def run_sesrelay(tmp, binary, n, size, conc, latency, quiet):
    def submit(port):
        delivery.submit_smtp_source(port, n, size, tmp)
    relay, acc = delivery.preload(tmp, binary, f"smtp.c{conc}", submit)
    if acc["queued"] != n:
        raise RuntimeError(f"{acc['queued']} of {n} queued\n{delivery.tail(relay.logfile)}")
    sink = Sink(tmp, latency, f"sesrelay.c{conc}").start()
    try:
        relay.write_config(endpoint=None)
        with open(relay.config, "a") as f:
            f.write(f"""
[ses]
transport = smtp
region = us-east-1
smtp_host = 127.0.0.1
smtp_port = {sink.port}
smtp_tls = none
smtp_username = u
smtp_password = p
concurrency = {conc}
max_send_rate = 100000

[queue]
retry_initial = 2s
retry_max = 10s
""")
        delivery.wait_quiet(quiet)
        sys0 = procmem.system_cpu()
        t0 = time.time()
        relay.start()
        sampler = MemSampler(relay.mem)
        sampler.start()
        try:
            st = wait_sink(sink, n, max(60.0, 10.0 * n / (conc / latency)), relay.check_alive)
            cpu = relay.cpu()
            sys1 = procmem.system_cpu()
            time.sleep(0.3)
        finally:
            sampler.stop()
            relay.stop()
        sink_cpu = sink.cpu()
    finally:
        sink.stop()
    left = relay.queued()
    shutil.rmtree(relay.spool, ignore_errors=True)
    wall = st["last"] - t0
    return {"server": "sesrelay", "concurrency": conc, "messages": n, "delivered": st["count"],
            "wall_s": wall, "rate": n / wall, "ceiling": conc / latency,
            "startup_s": st["first"] - t0, "cpu_s": cpu, "sink_cpu_s": sink_cpu,
            "sink_conns": st["conns"], "queue_left": left,
            "sys_busy": (sys1[0] - sys0[0]) / max(1, sys1[2] - sys0[2]),
            "pss_kb": sampler.peak.get("pss_kb"), "rss_kb": sampler.peak.get("hwm_kb"),
            "processes": 1}


class RelayPostfix(bench.Postfix):
    """bench.py's private instance, relaying everything to the sink."""
    sink_port = None
    conc = 20

    def write_main_cf(self):
        super().write_main_cf()
        path = os.path.join(self.conf, "main.cf")
        with open(path) as f:
            lines = [ln for ln in f.read().splitlines()
                     if not ln.startswith(("relayhost", "defer_transports"))]
        lines += [f"relayhost = [127.0.0.1]:{self.sink_port}",
                  f"default_destination_concurrency_limit = {self.conc}",
                  f"smtp_destination_concurrency_limit = {self.conc}",
                  "smtp_tls_security_level = none",
                  "smtp_sasl_auth_enable = no"]
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")


def run_postfix(tmp, n, size, conc, latency, quiet):
    sink = Sink(tmp, latency, "postfix").start()
    pf = RelayPostfix(tmp)
    pf.sink_port, pf.conc = sink.port, conc
    try:
        pf.start()
        delivery.submit_smtp_source(pf.port, n, size, tmp)
        hold = os.path.join(pf.queue, "hold")
        deadline = time.monotonic() + 60
        while delivery.count_files(hold) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"postfix: {delivery.count_files(hold)} of {n} on hold\n"
                                   + pf.log_tail())
            time.sleep(0.1)
        delivery.wait_quiet(quiet)
        cpu0 = pf.cpu()
        sys0 = procmem.system_cpu()
        sampler = MemSampler(pf.mem)
        sampler.start()
        try:
            t0 = time.time()
            for cmd in ([POSTSUPER, "-c", pf.conf, "-H", "ALL"], [POSTQUEUE, "-c", pf.conf, "-f"]):
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)

            def alive():
                if not bench.pid_alive(pf.master):
                    raise RuntimeError("postfix master exited\n" + pf.log_tail())
            st = wait_sink(sink, n, max(60.0, 10.0 * n / (conc / latency)), alive)
            cpu = pf.cpu() - cpu0
            sys1 = procmem.system_cpu()
            time.sleep(0.5)
        finally:
            sampler.stop()
        sink_cpu = sink.cpu()
        left = pf.queued()
    finally:
        pf.stop()
        sink.stop()
    wall = st["last"] - t0
    return {"server": "postfix", "concurrency": conc, "messages": n, "delivered": st["count"],
            "wall_s": wall, "rate": n / wall, "ceiling": conc / latency,
            "startup_s": st["first"] - t0, "cpu_s": cpu, "sink_cpu_s": sink_cpu,
            "sink_conns": st["conns"], "queue_left": left,
            "sys_busy": (sys1[0] - sys0[0]) / max(1, sys1[2] - sys0[2]),
            "pss_kb": sampler.peak.get("pss_kb"), "rss_kb": sampler.peak.get("rss_sum_kb"),
            "processes": sampler.peak.get("processes"),
            "warnings": pf.log_problems()[:5]}


def steady(r):
    """Messages per second once delivering: the time to the first message
    reaching the sink left out (for sesrelay that is its own start-up)."""
    busy = r["wall_s"] - r["startup_s"]
    return r["messages"] / busy if busy > 0 else 0.0


def mb(kb):
    return f"{kb / 1024:.1f} MB" if kb else "-"


def report(header, rs, latency, elapsed):
    L = list(header) + [""]
    L.append(f"SMTP TRANSPORT DELIVERY (sink answers each message's end of data after "
             f"{1000 * latency:.0f} ms; no TLS; queued before delivery starts)")
    L.append(f"{'server':<9} {'conc':>4} {'msgs':>5} {'wall s':>6} {'msg/s':>6} {'ceiling':>7} "
             f"{'%ceil':>5} {'start':>5} {'steady':>6} {'%ceil':>5} "
             f"{'cpu s':>6} {'ms/msg':>6} {'sink cpu':>8} {'conns':>5} "
             f"{'busy':>4} {'peak PSS':>9} {'peak RSS':>9} {'procs':>5}")
    for r in rs:
        L.append(f"{r['server']:<9} {r['concurrency']:>4} {r['messages']:>5} {r['wall_s']:>6.2f} "
                 f"{r['rate']:>6.0f} {r['ceiling']:>7.0f} {100 * r['rate'] / r['ceiling']:>4.0f}% "
                 f"{r['startup_s']:>5.2f} {steady(r):>6.0f} {100 * steady(r) / r['ceiling']:>4.0f}% "
                 f"{r['cpu_s']:>6.2f} {1000 * r['cpu_s'] / r['messages']:>6.3f} "
                 f"{r['sink_cpu_s']:>8.2f} {r['sink_conns']:>5} {100 * r['sys_busy']:>3.0f}% "
                 f"{mb(r['pss_kb']):>9} {mb(r['rss_kb']):>9} {r['processes'] or '-':>5}")
        if r["delivered"] != r["messages"] or r["queue_left"]:
            L.append(f"  WARNING: {r['server']} c{r['concurrency']}: sink got {r['delivered']}, "
                     f"{r['queue_left']} left in the queue")
        for w in r.get("warnings") or []:
            L.append(f"  postfix log: {w}")
    L.append("  wall: sesrelay from its start, Postfix from `postsuper -H ALL; postqueue -f`, to "
             "the sink's last answer.  start: from there")
    L.append("  to the first message reaching the sink (sesrelay: process start, spool recovery, "
             "connecting; Postfix's processes")
    L.append("  already run).  steady: msgs / (wall - start), the rate once delivering.  cpu: "
             "server")
    L.append("  (Postfix: all its processes); conns: connections the sink saw (incl. the bench's "
             "status polls); busy: all CPUs.")
    L.append("  peak RSS: sesrelay VmHWM; Postfix: sum of VmRSS over its processes (shared pages "
             "counted many times).")
    sr = next((r for r in rs if r["server"] == "sesrelay" and r["concurrency"] == 20), None)
    pf = next((r for r in rs if r["server"] == "postfix"), None)
    L.append("")
    L.append("TARGETS")
    if sr and pf:
        L.append(f"  ratio sesrelay/postfix msg/s at 20: {sr['rate'] / pf['rate']:.2f}x")
        ok = sr["rate"] >= 0.95 * sr["ceiling"]
        L.append(f"  >= 95% of {sr['ceiling']:.0f} msg/s at 20, from sesrelay's start: "
                 f"{100 * sr['rate'] / sr['ceiling']:.1f}%  {'MET' if ok else 'NOT MET'}")
        ok = steady(sr) >= 0.95 * sr["ceiling"]
        L.append(f"  >= 95% of {sr['ceiling']:.0f} msg/s at 20, once delivering (steady): "
                 f"{100 * steady(sr) / sr['ceiling']:.1f}%  {'MET' if ok else 'NOT MET'} "
                 f"(Postfix: {100 * steady(pf) / pf['ceiling']:.1f}%)")
        if sr["pss_kb"] and pf["pss_kb"]:
            ok = sr["pss_kb"] * 5 <= pf["pss_kb"]
            L.append(f"  <= 1/5 of Postfix's PSS: {mb(sr['pss_kb'])} vs {mb(pf['pss_kb'])} = "
                     f"1/{pf['pss_kb'] / sr['pss_kb']:.1f}  {'MET' if ok else 'NOT MET'}")
    s64 = next((r for r in rs if r["server"] == "sesrelay" and r["concurrency"] != 20), None)
    if s64:
        L.append(f"  scaling: concurrency {s64['concurrency']}: {s64['rate']:.0f} msg/s = "
                 f"{100 * s64['rate'] / s64['ceiling']:.1f}% of {s64['ceiling']:.0f}, steady "
                 f"{100 * steady(s64) / s64['ceiling']:.1f}% "
                 f"(sesrelay cpu {100 * s64['cpu_s'] / s64['wall_s']:.0f}% of a core, machine "
                 f"{100 * s64['sys_busy']:.0f}% busy)")
    L.append("")
    L.append(f"smtp transport bench time: {elapsed / 60:.1f} min")
    return L


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--bin-label")
    ap.add_argument("--results", default=os.path.join(ROOT, "build", "bench-results.txt"))
    a = ap.parse_args()
    n = delivery.env_int("BENCH_SMTP_N", 4000)
    n64 = delivery.env_int("BENCH_SMTP_N64", 8000)
    latency = delivery.env_float("BENCH_SMTP_LATENCY", 0.05)
    size = delivery.env_int("BENCH_SMTP_SIZE", 2048)
    quiet = delivery.env_float("BENCH_QUIET_WAIT", 5)
    start = time.monotonic()
    tmp = os.path.join(os.path.abspath(a.tmp), "smtp-transport")
    os.makedirs(tmp, exist_ok=True)
    os.chmod(tmp, 0o755)
    binary = os.path.abspath(a.bin)
    header = ["sesrelay SMTP transport vs Postfix relayhost (make bench)",
              f"date:      {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
              f"machine:   {os.cpu_count()} CPUs, load avg "
              f"{' '.join(open('/proc/loadavg').read().split()[:3])} at start",
              f"sesrelay:  {a.bin_label or a.bin}; postfix "
              f"{bench.sh(bench.POSTCONF + ' -d -h mail_version')}",
              f"load:      {n} messages of {size} bytes, 1 recipient (sesrelay at 64: {n64})"]
    for line in header:
        print(line, flush=True)
    rs = []
    for name, fn in [("sesrelay c20", lambda: run_sesrelay(tmp, binary, n, size, 20, latency, quiet)),
                     ("postfix c20", lambda: run_postfix(tmp, n, size, 20, latency, quiet)),
                     ("sesrelay c64", lambda: run_sesrelay(tmp, binary, n64, size, 64, latency,
                                                           quiet))]:
        print(f"smtp transport: {name}...", flush=True)
        r = fn()
        rs.append(r)
        print(f"smtp transport: {name}: {r['rate']:.0f} msg/s "
              f"({100 * r['rate'] / r['ceiling']:.1f}% of {r['ceiling']:.0f}), peak PSS "
              f"{mb(r['pss_kb'])}", flush=True)
    lines = report(header, rs, latency, time.monotonic() - start)
    text = "\n".join(lines) + "\n"
    print("\n" + text, flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(a.results)), exist_ok=True)
    with open(a.results, "a") as f:
        f.write("\n" + text + "\n# raw smtp transport results (JSON lines)\n")
        for r in rs:
            f.write(json.dumps(r) + "\n")
    print(f"appended to {a.results}")
    return 0


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--sink":
        sink_main(float(sys.argv[2]))
        sys.exit(0)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    sys.exit(main())
