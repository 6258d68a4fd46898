#!/usr/bin/python3
"""delivery.py - end-to-end delivery throughput and memory of sesrelay to SES.

    /usr/bin/python3 tests/bench/delivery.py [--quick] [--bin ./sesrelay]
                     [--bin-label NAME] [--tmp /var/tmp]
                     [--results build/bench-results.txt]

Needs Linux (/proc), /usr/bin/python3 with botocore (Debian python3-botocore,
for tests/lib/fake_ses.py) and, preferably, Postfix's smtp-source.  --tmp is
the parent of this run's temp dir (spools, logs): keep it on the disk mail
would be queued on, not tmpfs (the header line "spool:" names the file
system; with online discard every delivered message's deletion waits for the
device, on sesrelay's event loop).

Measures delivery only, never acceptance: every message is put in the queue
first by a sesrelay started WITHOUT an SES region (it accepts mail and keeps
it queued), which is then stopped; a second sesrelay started on the same
spool with [ses] pointing at a local fake SES delivers the whole queue.
Everything runs on 127.0.0.1.

The endpoint is tests/lib/fake_ses.py (through tests/bench/fake_ses_conns.py,
which only adds per-connection figures), asyncio engine, answering every call
after --latency 0.05 s.  GetAccount's MaxSendRate is raised to 100000 and
sesrelay has max_send_rate = 100000, so no rate limit interferes.

  1. Throughput: for concurrency 16 and 64, N messages of 2 KB with one
     recipient each (5000 and 10000; --quick: 1500 and 3000), queued with
     Postfix's smtp-source (parallel smtplib sessions when it is missing).
     The fake runs with --no-verify: its SigV4 check costs ~0.45 ms of CPU
     per request, and on a 2-core machine it would compete with sesrelay.
     Reported: messages/s from sesrelay's start until the fake answered the
     last send (the figure the target is judged on), and from the first
     send's arrival to the last answer; the ceiling concurrency / latency;
     CPU time of sesrelay (utime+stime from /proc/PID/stat) and of the fake;
     sesrelay's peak RSS (VmHWM); how many TCP connections the fake saw
     (libcurl should reuse ~concurrency keep-alive connections, not open one
     per request), the idle gap on a connection between an answer and the
     next request (sesrelay's turnaround: a connection carries at most
     1 / (latency + gap) calls a second), how long sesrelay's and the fake's
     main threads waited for a CPU (schedstat) and the CPU pressure (PSI),
     so a run disturbed by other jobs on the machine shows as such.
  2. Memory: sixteen 30 MB messages (random base64 text, 76-character CRLF
     lines) queued, then delivered at concurrency 16 to the fake WITH
     signature verification (every 40 MB signed body is hashed and checked
     by botocore).  sesrelay's VmRSS and PSS are sampled every 50 ms during
     delivery, with how many queue files it has open (messages being
     delivered at once: should reach 16); reported: peak VmRSS, peak PSS,
     VmHWM at the end.
  3. A table is printed and appended to build/bench-results.txt (after what
     tests/bench/bench.py wrote), followed by the raw results as JSON lines.

Targets (issue "Queued mail reaches SES over the HTTP API"): at least 90% of
the concurrency/latency ceiling at 16 and 64 (>= 288 and >= 1152 msg/s), and
peak RSS under 64 MB while delivering the sixteen 30 MB messages.

Every process started is stopped by PID (SIGTERM, then SIGKILL), also on
failure.  The binary is copied into the temp dir first, so a rebuild during
the run does not replace it.

Tunables (environment): BENCH_DELIVERY_N16, BENCH_DELIVERY_N64 (messages per
throughput run), BENCH_DELIVERY_SIZE=2048, BENCH_DELIVERY_LATENCY=0.05,
BENCH_DELIVERY_CONCURRENCY="16 64", BENCH_BIG_COUNT=16, BENCH_BIG_MB=30,
BENCH_QUIET_WAIT (seconds to wait for an idle machine before each measured
run; default 10, --quick 3), BENCH_TMPDIR (parent of the temp dir, default
/var/tmp), BENCH_KEEP=1 (keep the temp dir and logs).
"""
import argparse
import base64
import json
import os
import platform
import resource
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import procmem  # noqa: E402

PY = "/usr/bin/python3"
FAKE = os.path.join(HERE, "fake_ses_conns.py")
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SENDER = "sender@example.com"
RCPT = "rcpt@example.net"
REGION = "us-east-1"
ACCESS_KEY = "AKIDEXAMPLE"                                  # fake_ses defaults
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
HIGH_RATE = 100000


def env_int(name, default):
    v = os.environ.get(name, "").strip()
    return int(v) if v else default


def env_float(name, default):
    v = os.environ.get(name, "").strip()
    return float(v) if v else default


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def count_files(top):
    n = 0
    for _root, _dirs, files in os.walk(top):
        n += len(files)
    return n


def wait_quiet(max_wait, threshold=0.25):
    """Wait (up to max_wait s) for a second in which the machine is mostly idle.
    Returns (seconds waited, busy fraction of the last second)."""
    if max_wait <= 0:
        return 0.0, None
    t0 = time.monotonic()
    while True:
        a = procmem.system_cpu()
        time.sleep(1.0)
        b = procmem.system_cpu()
        busy = (b[0] - a[0]) / max(1, b[2] - a[2])
        waited = time.monotonic() - t0
        if busy <= threshold or waited >= max_wait:
            return waited, busy


def runq_wait(pid):
    """Seconds pid's main thread (sesrelay's event loop, the fake's asyncio
    loop) has spent runnable but waiting for a CPU (field 2 of
    /proc/PID/task/PID/schedstat), or None when not available."""
    try:
        with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def cpu_pressure():
    """Total microseconds some task waited for a CPU (PSI), or None."""
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some"):
                    return int(line.split("total=")[1])
    except (OSError, IndexError, ValueError):
        pass
    return None


def stop_pid(proc, timeout=20):
    """SIGTERM, then SIGKILL, one child process we started (by its PID)."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def tail(path, n=3000):
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


# --------------------------------------------------------------------------
class Fake:
    """tests/lib/fake_ses.py (via fake_ses_conns.py), standalone, asyncio."""

    def __init__(self, tmp, latency, verify, name):
        self.latency = latency
        self.verify = verify
        self.errlog = os.path.join(tmp, f"fake_ses.{name}.log")
        self.proc = None
        self.url = None
        self.summary = None

    def start(self):
        cmd = [PY, FAKE, "--host", "127.0.0.1", "--port", "0", "--latency", str(self.latency),
               "--max-send-rate", str(HIGH_RATE), "--engine", "asyncio"]
        if not self.verify:
            cmd.append("--no-verify")
        err = open(self.errlog, "ab")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err,
                                     stdin=subprocess.DEVNULL)
        err.close()
        line = self.proc.stdout.readline().decode().strip()
        prefix = "fake_ses: listening on "
        if not line.startswith(prefix):
            stop_pid(self.proc)
            raise RuntimeError(f"fake_ses did not start: {line!r}\n{tail(self.errlog)}")
        self.url = line[len(prefix):]
        return self

    @property
    def pid(self):
        return self.proc.pid

    def _get(self, path, timeout=10):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def stats(self, timeout=10):
        return self._get("/_fake/stats", timeout)

    def conns(self):
        return self._get("/_fake/conns", timeout=60)

    def cpu(self):
        return procmem.proc_cpu(self.pid)

    def stop(self):
        if self.proc is None:
            return
        stop_pid(self.proc)
        try:
            out = self.proc.stdout.read().decode("utf-8", "replace").strip().splitlines()
            self.summary = json.loads(out[-1]) if out else None
        except (ValueError, OSError):
            self.summary = None
        self.proc.stdout.close()
        self.proc = None


class Relay:
    """sesrelay on a given spool: holding (no [ses] region: mail stays queued)
    or delivering to a fake endpoint."""

    def __init__(self, tmp, binary, name):
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        self.bin = binary
        self.spool = os.path.join(self.dir, "spool")
        self.config = os.path.join(self.dir, "relay.ini")
        self.logfile = os.path.join(self.dir, "sesrelay.log")
        self.port = free_port()
        self.proc = None

    def write_config(self, endpoint=None, concurrency=16):
        text = f"""[relay]
hostname = sesrelay-bench.localdomain
spool = {self.spool}
log_level = warn
max_connections = 1000
max_connections_per_ip = 1000

[listen:bench]
address = 127.0.0.1:{self.port}
"""
        if endpoint:
            text += f"""
[ses]
transport = api
api_version = 2
region = {REGION}
endpoint = {endpoint}
access_key_id = {ACCESS_KEY}
secret_access_key = {SECRET_KEY}
concurrency = {concurrency}
max_send_rate = {HIGH_RATE}

[queue]
retry_initial = 2s
retry_max = 10s
"""
        fd = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def start(self):
        log = open(self.logfile, "ab")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("AWS_") and k != "SESRELAY_CONFIG"}
        env.update(AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
                   AWS_EC2_METADATA_DISABLED="true")
        self.proc = subprocess.Popen([self.bin, "-c", self.config], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, env=env)
        log.close()
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self):
        if not self.alive():
            raise RuntimeError(f"sesrelay exited ({self.proc.returncode}):\n{tail(self.logfile)}")

    def wait_banner(self, timeout=20):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            self.check_alive()
            s = socket.socket()
            s.settimeout(2)
            try:
                s.connect(("127.0.0.1", self.port))
                data = s.recv(512)
                if data.startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
                last = data
            except OSError as e:
                last = e
            finally:
                s.close()
            time.sleep(0.05)
        raise RuntimeError(f"sesrelay: no banner on port {self.port}: {last!r}")

    def stop(self):
        stop_pid(self.proc)

    def queued(self):
        return count_files(os.path.join(self.spool, "queue"))

    def mem(self):
        return procmem.proc_mem(self.pid)

    def cpu(self):
        return procmem.proc_cpu(self.pid)


# --------------------------------------------------------------------------
# filling the queue
# --------------------------------------------------------------------------

def submit_smtp_source(port, n, size, tmp):
    errf = os.path.join(tmp, "smtp-source.err")
    with open(errf, "ab") as err:
        r = subprocess.run([SMTP_SOURCE, "-s", "20", "-m", str(n), "-l", str(size),
                            "-f", SENDER, "-t", RCPT, f"127.0.0.1:{port}"],
                           stdout=subprocess.DEVNULL, stderr=err, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"smtp-source failed ({r.returncode}):\n{tail(errf)}")


def submit_smtplib(port, messages, sessions):
    """messages: list of (mail_from, [rcpts], bytes); sent over `sessions`
    parallel connections, several messages per connection."""
    errors = []
    lock = threading.Lock()
    it = iter(messages)

    def worker():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=300) as s:
                s.ehlo("bench.localdomain")
                while True:
                    with lock:
                        m = next(it, None)
                    if m is None:
                        return
                    s.sendmail(m[0], m[1], m[2])
        except Exception as e:  # noqa: BLE001 - reported below
            with lock:
                errors.append(repr(e))

    threads = [threading.Thread(target=worker) for _ in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("smtplib submission failed: " + "; ".join(errors[:3]))


def small_messages(n, size):
    body_line = b"La de da de da " * 4 + b"\r\n"
    for i in range(n):
        head = (f"From: <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: bench {i}\r\n"
                f"Message-ID: <bench.{i}.{os.getpid()}@example.com>\r\n\r\n").encode()
        body = body_line * max(1, (size - len(head)) // len(body_line))
        yield SENDER, [RCPT], head + body


def big_messages(count, size):
    """count messages of exactly `size` bytes (made one at a time as they are
    sent): distinct headers, a shared body of random base64 text in
    76-character CRLF lines."""
    raw = base64.encodebytes(os.urandom(size * 57 // 78 + 4096)).replace(b"\n", b"\r\n")
    for i in range(count):
        head = (f"From: <{SENDER}>\r\nTo: <big{i}@example.net>\r\nSubject: big {i}\r\n"
                f"Message-ID: <big.{i}.{os.getpid()}@example.com>\r\nMIME-Version: 1.0\r\n"
                "Content-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
        want = size - len(head)
        body = raw[:want]
        cut = body.rfind(b"\r\n") + 2          # whole lines only
        body = body[:cut]
        pad = want - len(body)                 # one last short line to hit the size
        if pad >= 3:
            body += b"A" * (pad - 2) + b"\r\n"
        yield SENDER, [f"big{i}@example.net"], head + body


def preload(tmp, binary, name, submit):
    """Start a holding sesrelay (no region), submit(port), stop it.  Returns
    (relay, info) with the spool left full for the delivering instance."""
    relay = Relay(tmp, binary, name)
    relay.write_config(endpoint=None)
    relay.start()
    try:
        relay.wait_banner()
        t0 = time.monotonic()
        submit(relay.port)
        wall = time.monotonic() - t0
        relay.check_alive()
        mem = relay.mem()
    finally:
        relay.stop()
    return relay, {"accept_wall_s": wall, "accept_mem": mem, "queued": relay.queued()}


# --------------------------------------------------------------------------
# delivering
# --------------------------------------------------------------------------

def open_queue_files(pid, qdir):
    """How many of the spool's queue files pid has open: the messages it is
    delivering right now (the scheduler opens a message for its pass and
    closes it when the pass ends)."""
    n = 0
    fddir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fddir)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0
    prefix = qdir.rstrip("/") + "/"
    for fd in fds:
        try:
            if os.readlink(os.path.join(fddir, fd)).startswith(prefix):
                n += 1
        except OSError:
            pass
    return n


class Sampler(threading.Thread):
    """Every interval: sesrelay's VmRSS, VmHWM, PSS and open queue files."""

    def __init__(self, pid, interval, qdir):
        super().__init__(daemon=True)
        self.pid, self.interval, self.qdir = pid, interval, qdir
        self.stop_ev = threading.Event()
        self.peak_rss = self.peak_pss = self.hwm = 0
        self.samples = 0
        self.peak_open = 0

    def run(self):
        while not self.stop_ev.is_set():
            m = procmem.proc_mem(self.pid)
            if m.get("rss_kb") is not None:
                self.samples += 1
                self.peak_rss = max(self.peak_rss, m["rss_kb"] or 0)
                self.peak_pss = max(self.peak_pss, m["pss_kb"] or 0)
                self.hwm = max(self.hwm, m["hwm_kb"] or 0)
                self.peak_open = max(self.peak_open, open_queue_files(self.pid, self.qdir))
            self.stop_ev.wait(self.interval)

    def stop(self):
        self.stop_ev.set()
        self.join()


def deliver(relay, fake, n, concurrency, timeout, quiet_wait, sample_interval):
    """Point relay's config at the fake, start it on the full spool and wait
    until the fake accepted n messages."""
    relay.write_config(endpoint=fake.url, concurrency=concurrency)
    waited, busy_before = wait_quiet(quiet_wait)
    fake_cpu0 = fake.cpu()
    fake_rq0 = runq_wait(fake.pid)
    psi0 = cpu_pressure()
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    sys0 = procmem.system_cpu()
    t0 = time.time()
    relay.start()
    sampler = Sampler(relay.pid, sample_interval, os.path.join(relay.spool, "queue"))
    sampler.start()
    st = None
    try:
        deadline = time.monotonic() + timeout
        qdir = os.path.join(relay.spool, "queue")
        while True:
            # Watch the queue directory (a file goes once SES accepted it),
            # not the fake: asking it walks all its records on its one loop.
            time.sleep(0.1)
            relay.check_alive()
            if len(os.listdir(qdir)) > 0 and time.monotonic() < deadline:
                continue
            try:
                st = fake.stats(timeout=60)
            except (OSError, ValueError):
                # the fake's single loop may be busy with a 40 MB body
                st = None
            if st and (st["accepted_messages"] >= n or time.monotonic() < deadline):
                break       # all accepted, or the queue is empty: the report checks
            if time.monotonic() > deadline:
                got = st["accepted_messages"] if st else "?"
                raise RuntimeError(f"timeout: the fake accepted {got} of {n} "
                                   f"after {timeout} s\n{tail(relay.logfile)}")
        t_seen = time.time()
        relay_cpu = relay.cpu()
        relay_rq = runq_wait(relay.pid)
        fake_cpu = fake.cpu() - fake_cpu0
        fake_rq1 = runq_wait(fake.pid)
        fake_rq = (fake_rq1 - fake_rq0) if fake_rq0 is not None and fake_rq1 is not None else None
        psi1 = cpu_pressure()
        sys1 = procmem.system_cpu()
        self1 = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(sample_interval * 2)
        mem_end = relay.mem()
        # the queue files are removed once each call is answered
        qdeadline = time.monotonic() + 10
        left = relay.queued()
        while left and time.monotonic() < qdeadline:
            time.sleep(0.1)
            left = relay.queued()
    finally:
        sampler.stop()
        relay.stop()
    conns = fake.conns()
    st = fake.stats(timeout=120)
    last = conns["last_done"] or t_seen
    first = conns["first_send"] or t0
    wall = last - t0
    busy = (sys1[0] - sys0[0]) / max(1, sys1[2] - sys0[2])
    ncpu = os.cpu_count() or 1
    seen_wall = t_seen - t0
    self_cpu = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    return {
        "concurrency": concurrency, "messages": n, "latency_s": fake.latency,
        "verify": fake.verify,
        "wall_s": wall, "send_window_s": last - first, "startup_s": first - t0,
        "rate": n / wall, "rate_sends": n / max(1e-9, last - first),
        "ceiling": concurrency / fake.latency,
        "relay_cpu_s": relay_cpu, "fake_cpu_s": fake_cpu, "self_cpu_s": self_cpu,
        "relay_runq_s": relay_rq, "fake_runq_s": fake_rq,
        "cpu_pressure": ((psi1 - psi0) / 1e6 / seen_wall) if psi0 is not None and psi1 else None,
        "sys_busy": busy, "cpus": ncpu,
        "other_cpu_s": max(0.0, busy * ncpu * seen_wall - relay_cpu - fake_cpu - self_cpu),
        "peak_rss_kb": sampler.peak_rss, "peak_pss_kb": sampler.peak_pss,
        "hwm_kb": max(sampler.hwm, mem_end.get("hwm_kb") or 0), "peak_open_messages": sampler.peak_open,
        "mem_end": mem_end, "samples": sampler.samples, "queue_left": left,
        "fake": st, "conns": conns, "quiet_wait_s": waited, "busy_before": busy_before,
    }


# --------------------------------------------------------------------------
def machine_header(binary_label, bin_path, tmp):
    try:
        ver = subprocess.run([bin_path, "--version"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        ver = "?"
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    la = os.getloadavg()
    return [
        "sesrelay delivery benchmark (make bench: tests/bench/delivery.py)",
        "date:      " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        f"machine:   {os.cpu_count()} CPUs, {cpu}, kernel {platform.release()}, {mem_mb} MB RAM",
        f"load avg:  {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} at start",
        f"sesrelay:  {ver} ({binary_label})",
        f"spool:     {tmp}: {fs_info(tmp)}",
    ]


def fs_info(path):
    """'ext4 (rw,relatime,discard,...) on /dev/vda mounted at /' for path."""
    path = os.path.realpath(path)
    best = None
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fstype, opts = line.split()[:4]
                mnt = mnt.replace("\\040", " ")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and \
                        (best is None or len(mnt) > len(best[1])):
                    best = (dev, mnt, fstype, opts)
    except OSError:
        return "?"
    if best is None:
        return "?"
    dev, mnt, fstype, opts = best
    note = ""
    if "discard" in opts.split(","):
        note = " -- online discard: deleting a delivered message's file waits for the device"
    if fstype in ("tmpfs", "ramfs"):
        note = " -- in memory: file creation and deletion cost less than on a disk"
    return f"{fstype} ({opts}) on {dev} mounted at {mnt}{note}"


def mb(kb):
    return f"{kb / 1024:.1f} MB" if kb else "-"


def fmt_s(v):
    return f"{v:.2f}" if v is not None else "-"


def report(header, tp, big, big_n, big_mb, elapsed, latency, size, quick):
    L = list(header)
    L.append(f"endpoint:  tests/lib/fake_ses.py (asyncio engine, via tests/bench/fake_ses_conns.py) "
             f"on 127.0.0.1, every call answered")
    L.append(f"           after {latency * 1000:.0f} ms; its MaxSendRate and sesrelay's "
             f"max_send_rate are {HIGH_RATE}: no rate limit")
    L.append("method:    a sesrelay with no SES region accepts the messages (it keeps mail "
             "queued) and is stopped; a second")
    L.append("           sesrelay on that spool delivers them: only delivery is timed, from its "
             "start to the last answer")
    if quick:
        L.append("           (--quick: fewer messages; numbers are noisier)")
    L.append("")
    if tp:
        L.append(f"DELIVERY THROUGHPUT ({size}-byte messages, 1 recipient, queued before "
                 f"delivery starts; fake with --no-verify: no SigV4 check)")
        L.append("conc  msgs  wall s  msg/s  ceiling  %ceil | sends msg/s %ceil | "
                 "sesrelay cpu/runq s  ms/msg | fake cpu/runq s | other  psi | "
                 "conns infl  gap p50/p90 ms  fake lag | peak RSS")
        for r in tp:
            g = r["conns"]["gap_ms"]
            gap = (f"{g['p50']:.1f}/{g['p90']:.1f}" if g["p50"] is not None else "-")
            lg = r["conns"].get("loop_lag_ms") or {}
            lag = (f"{lg['p50']:.1f}/{lg['p90']:.1f}" if lg.get("p50") is not None else "-")
            psi = f"{100 * r['cpu_pressure']:3.0f}%" if r.get("cpu_pressure") is not None else "  -"
            L.append(
                f"{r['concurrency']:4d}  {r['messages']:4d}  {r['wall_s']:6.2f}  {r['rate']:5.0f}  "
                f"{r['ceiling']:7.0f}  {100 * r['rate'] / r['ceiling']:4.0f}% | "
                f"{r['rate_sends']:11.0f} {100 * r['rate_sends'] / r['ceiling']:4.0f}% | "
                f"{r['relay_cpu_s']:12.2f}/{fmt_s(r.get('relay_runq_s')):<5s}  "
                f"{1000 * r['relay_cpu_s'] / r['messages']:6.3f} | "
                f"{r['fake_cpu_s']:8.2f}/{fmt_s(r.get('fake_runq_s')):<5s} | "
                f"{r['other_cpu_s']:4.1f}s {psi} | "
                f"{r['conns']['send_connections']:5d} {r['fake']['max_in_flight']:4d}  "
                f"{gap:>14s}  {lag:>8s} | {mb(r['hwm_kb'])}")
        L.append("  wall s, msg/s: from sesrelay's start (config, queue scan) to the fake's last "
                 "answer; sends: from the first")
        L.append("  send's arrival to the last answer.  ceiling = concurrency / latency.  cpu: "
                 "utime+stime (/proc/PID/stat;")
        L.append("  sesrelay's includes its start-up), runq: time its main thread (event loop) was "
                 "runnable but waiting for a CPU (schedstat).")
        L.append("  other: CPU used by everything else (this script, other jobs); psi: share of "
                 "the time some task waited for")
        L.append("  a CPU (/proc/pressure/cpu).  conns: TCP connections the fake saw carrying "
                 "sends; infl: most calls in flight")
        L.append("  at the fake at once; gap: idle time on a connection from an answer to the "
                 "next request's headers")
        L.append("  (sesrelay's per-call turnaround, plus any delay of the fake's loop); fake "
                 "lag: p50/p90 ms late of a 5 ms")
        L.append("  sleep on the fake's asyncio loop (its own congestion).  peak RSS: sesrelay's "
                 "VmHWM.")
        for r in tp:
            f = r["fake"]
            bad = []
            if f["errors"]:
                bad.append(f"{f['errors']} error answers")
            if f["violations"] or f["duplicates"] or f["sig_failures"]:
                bad.append(f"violations {f['violations']}, duplicates {f['duplicates']}, "
                           f"signature failures {f['sig_failures']}")
            if r["queue_left"]:
                bad.append(f"{r['queue_left']} files left in the queue")
            if r["accepted"] != r["messages"]:
                bad.append(f"fake accepted {r['accepted']} of {r['messages']}")
            if bad:
                L.append(f"  WARNING at concurrency {r['concurrency']}: " + "; ".join(bad))
            rq = r.get("relay_runq_s")
            if r["other_cpu_s"] > 0.25 * r["wall_s"] or (rq and rq > 0.25 * r["relay_cpu_s"]):
                L.append(f"  NOTE: concurrency {r['concurrency']}: other processes used "
                         f"{r['other_cpu_s']:.1f} s of CPU in {r['wall_s']:.1f} s and sesrelay "
                         f"waited {fmt_s(rq)} s for a CPU: the machine was busy, msg/s is low")
        L.append("")
    if big:
        r = big
        verify = "WITH SigV4 verification (botocore)" if r["verify"] else "without SigV4 check"
        L.append(f"MEMORY: {big_n} messages of {big_mb} MB queued, delivered at concurrency "
                 f"{r['concurrency']} to the fake {verify}")
        L.append(f"  delivered {r['accepted']}/{big_n} in {r['wall_s']:.1f} s "
                 f"({r['fake']['accepted_bytes'] / 1048576 / max(1e-9, r['wall_s']):.0f} MB/s of "
                 f"messages); cpu: sesrelay {r['relay_cpu_s']:.2f} s, fake {r['fake_cpu_s']:.2f} s;"
                 f" {r['conns']['send_connections']} connections")
        L.append(f"  messages being delivered at once (queue files sesrelay had open): peak "
                 f"{r.get('peak_open_messages', '-')}; calls in flight at the fake at once: "
                 f"{r['fake']['max_in_flight']} (its one loop decodes/hashes each body)")
        L.append(f"  sesrelay sampled every 50 ms ({r['samples']} samples): peak VmRSS "
                 f"{mb(r['peak_rss_kb'])}, peak PSS {mb(r['peak_pss_kb'])}, VmHWM "
                 f"{mb(r['hwm_kb'])}")
        am = r["accept"]["accept_mem"] or {}
        L.append(f"  (the holding sesrelay that accepted them over SMTP, 4 sessions: VmHWM "
                 f"{mb(am.get('hwm_kb'))}, {r['accept']['accept_wall_s']:.1f} s)")
        f = r["fake"]
        if f["errors"] or f["violations"] or f["sig_failures"] or f["duplicates"] \
                or r["queue_left"]:
            L.append(f"  WARNING: errors {f['errors']}, violations {f['violations']}, signature "
                     f"failures {f['sig_failures']}, duplicates {f['duplicates']}, "
                     f"queue files left {r['queue_left']}")
        L.append("")
    L.append("TARGETS")
    for r in tp:
        want = 0.9 * r["ceiling"]
        ok = r["rate"] >= want and r["accepted"] == r["messages"]
        L.append(f"  concurrency {r['concurrency']:2d}: >= 90% of {r['ceiling']:.0f} msg/s "
                 f"(>= {want:.0f}): {r['rate']:.0f} msg/s = {100 * r['rate'] / r['ceiling']:.1f}%"
                 f"  {'MET' if ok else 'NOT MET'}")
    if big:
        ok = big["hwm_kb"] and big["hwm_kb"] < 64 * 1024 and big["accepted"] == big_n
        L.append(f"  {big_n} x {big_mb} MB at once: peak RSS < 64 MB: VmHWM {mb(big['hwm_kb'])}"
                 f"  {'MET' if ok else 'NOT MET'}")
    L.append("")
    L.append(f"delivery bench time: {elapsed / 60:.1f} min")
    return L


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run (fewer messages)")
    ap.add_argument("--bin", default=os.environ.get("SESRELAY_BIN") or
                    os.path.join(ROOT, "sesrelay"))
    ap.add_argument("--bin-label", default=None,
                    help="name of the binary in the report (default: --bin)")
    ap.add_argument("--tmp", default=os.environ.get("BENCH_TMPDIR") or "/var/tmp",
                    help="parent of the temp dir (disk-backed, not tmpfs)")
    ap.add_argument("--results", default=os.path.join(ROOT, "build", "bench-results.txt"),
                    help="file the report is appended to")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    a = ap.parse_args()

    if not os.access(a.bin, os.X_OK):
        sys.exit(f"delivery: {a.bin} not found: build it first (make sesrelay)")
    quick = a.quick
    latency = env_float("BENCH_DELIVERY_LATENCY", 0.05)
    size = env_int("BENCH_DELIVERY_SIZE", 2048)
    counts = {16: env_int("BENCH_DELIVERY_N16", 1500 if quick else 5000),
              64: env_int("BENCH_DELIVERY_N64", 3000 if quick else 10000)}
    concs = [int(x) for x in os.environ.get("BENCH_DELIVERY_CONCURRENCY", "16 64").split()]
    big_n = env_int("BENCH_BIG_COUNT", 16)
    big_mb = env_int("BENCH_BIG_MB", 30)
    quiet = env_float("BENCH_QUIET_WAIT", 3 if quick else 10)
    keep = os.environ.get("BENCH_KEEP") == "1"

    start = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="sesrelay-delivery.", dir=a.tmp)
    ok = False
    fakes = []
    try:
        binary = os.path.join(tmp, "sesrelay.bin")
        shutil.copy2(a.bin, binary)
        header = machine_header(a.bin_label or a.bin, binary, tmp)
        for line in header:
            print(line, flush=True)
        use_source = os.access(SMTP_SOURCE, os.X_OK)

        tp = []
        if not a.skip_throughput:
            for c in concs:
                n = counts.get(c, 5000)
                print(f"delivery: concurrency {c}: queueing {n} messages of {size} bytes "
                      f"({'smtp-source' if use_source else 'smtplib'})...", flush=True)
                if use_source:
                    def submit(port, n=n):
                        submit_smtp_source(port, n, size, tmp)
                else:
                    def submit(port, n=n):
                        submit_smtplib(port, small_messages(n, size), 20)
                relay, acc = preload(tmp, binary, f"relay.c{c}", submit)
                if acc["queued"] != n:
                    raise RuntimeError(f"{acc['queued']} of {n} messages queued\n"
                                       f"{tail(relay.logfile)}")
                fake = Fake(tmp, latency, verify=False, name=f"c{c}").start()
                fakes.append(fake)
                try:
                    print(f"delivery: concurrency {c}: delivering to {fake.url} "
                          f"(latency {latency} s, --no-verify)...", flush=True)
                    timeout = max(60.0, 10.0 * n / (c / latency))
                    r = deliver(relay, fake, n, c, timeout, quiet, 0.25)
                finally:
                    fake.stop()
                r["accepted"] = r["fake"]["accepted_messages"]
                r["accept"] = acc
                r["fake_summary"] = fake.summary
                tp.append(r)
                print(f"delivery: concurrency {c}: {r['rate']:.0f} msg/s "
                      f"({100 * r['rate'] / r['ceiling']:.1f}% of {r['ceiling']:.0f}), sends-only "
                      f"{r['rate_sends']:.0f}, sesrelay cpu {r['relay_cpu_s']:.2f} s, fake cpu "
                      f"{r['fake_cpu_s']:.2f} s, connections {r['conns']['send_connections']}",
                      flush=True)
                shutil.rmtree(relay.spool, ignore_errors=True)

        big = None
        if not a.skip_memory:
            print(f"delivery: memory: queueing {big_n} messages of {big_mb} MB...", flush=True)
            msgs = big_messages(big_n, big_mb * 1024 * 1024)
            relay, acc = preload(tmp, binary, "relay.big",
                                 lambda port: submit_smtplib(port, msgs, 4))
            del msgs
            if acc["queued"] != big_n:
                raise RuntimeError(f"{acc['queued']} of {big_n} big messages queued\n"
                                   f"{tail(relay.logfile)}")
            fake = Fake(tmp, latency, verify=True, name="big").start()
            fakes.append(fake)
            try:
                print(f"delivery: memory: delivering at concurrency 16 to {fake.url} "
                      f"(latency {latency} s, signatures verified)...", flush=True)
                big = deliver(relay, fake, big_n, 16, 240.0, quiet, 0.05)
            finally:
                fake.stop()
            big["accepted"] = big["fake"]["accepted_messages"]
            big["accept"] = acc
            big["fake_summary"] = fake.summary
            shutil.rmtree(relay.spool, ignore_errors=True)

        elapsed = time.monotonic() - start
        lines = report(header, tp, big, big_n, big_mb, elapsed, latency, size, quick)
        text = "\n".join(lines) + "\n"
        print("\n" + text, flush=True)
        os.makedirs(os.path.dirname(os.path.abspath(a.results)), exist_ok=True)
        with open(a.results, "a") as f:
            f.write("\n" + text)
            f.write("\n# raw delivery results (JSON lines)\n")
            for r in tp + ([big] if big else []):
                f.write(json.dumps(r) + "\n")
        print(f"appended to {a.results}")
        ok = True
    finally:
        for fk in fakes:
            fk.stop()
        if keep or not ok:
            for d in os.listdir(tmp):
                p = os.path.join(tmp, d, "spool")
                if not keep and os.path.isdir(p):
                    shutil.rmtree(p, ignore_errors=True)
            print(f"delivery: temp dir kept (logs): {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _terminate(signum, _frame):
    # Unwind through the finally blocks, which stop every process started.
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
