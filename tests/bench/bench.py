#!/usr/bin/python3
"""bench.py - accept throughput and memory of sesrelay against a private Postfix.

Started by tests/bench/run (which checks the tools and makes the temp dir):

    bench.py --tmp DIR --bin ./sesrelay --results build/bench-results.txt

What it does, all on loopback:
  * a private Postfix instance under DIR/postfix (own main.cf/master.cf,
    queue and data directories, smtpd on a high port, no chroot, fsync on as
    by default).  Every accepted message is put in the hold queue
    (smtpd_data_restrictions = check_client_access static:HOLD) and
    defer_transports = smtp, so nothing is ever delivered: only receiving
    and queueing are measured.  The system Postfix is never touched.
  * sesrelay with a config under DIR/sesrelay (spool there, log_level = warn,
    no SES region or credentials: it accepts and keeps every message queued).
  * every run gets a fresh, empty spool/queue directory; all of them are
    deleted at the end, not between runs, and (chattr +T) each is placed in
    a fresh block group: see spread_dirs().
  * for each session count (1, 32, 200) and round: smtp-source sends
    MESSAGES messages of 4 KB to sesrelay, then to Postfix (the order flips
    every round), each run against a freshly started server with an empty
    queue.  Messages/s = messages found in the queue afterwards / wall time
    of smtp-source.  Memory is sampled during each run (every 0.25 s for
    sesrelay, every 1 s and once at the end for Postfix): PSS and peak RSS
    (VmHWM) of sesrelay; PSS summed over Postfix's master and all its
    children.
  * Postfix runs with its stock default_process_limit = 100 (at most 100
    smtpd processes, listen backlog 100).  At session counts above 100 it is
    run a second time with default_process_limit = 250 so it can serve every
    session; both rows are printed.
  * 5000 idle connections (tests/bench/idle.py): time until every banner
    is read, and sesrelay's memory with all of them open; the same against
    Postfix, bounded, reporting how many it greeted.

Tunables (environment): BENCH_SESSIONS="1 32 200", BENCH_MESSAGES=20000,
BENCH_MESSAGES_1=5000 (messages for the 1-session runs), BENCH_ROUNDS=2,
BENCH_RUN_TIMEOUT=300 (seconds per smtp-source run; on timeout the messages
queued so far count), BENCH_SIZE=4096, BENCH_IDLE=5000,
BENCH_POSTFIX_BIG_LIMIT=250 (0: skip the extra Postfix runs),
BENCH_PERF=1 (profile sesrelay with perf during its runs and print the
top symbols), BENCH_QUIET_WAIT=20 (before each run, wait up to this many
seconds for the machine to be idle: other jobs skew the numbers; 0: don't).
"""
import argparse
import json
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procmem  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
SENDER = "sender@example.com"
RCPT = "rcpt@example.net"


def env_int(name, default):
    v = os.environ.get(name, "").strip()
    return int(v) if v else default


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_banner(port, timeout, alive=lambda: True):
    """Wait until 127.0.0.1:port answers with a 220 banner."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        if not alive():
            raise RuntimeError("server exited while starting")
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
            data = s.recv(512)
            if data.startswith(b"220"):
                s.sendall(b"QUIT\r\n")
                return
            last = data
        except OSError as e:
            last = e
        finally:
            s.close()
        time.sleep(0.1)
    raise RuntimeError(f"no banner on port {port}: {last!r}")


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def count_files(top):
    n = 0
    for _root, _dirs, files in os.walk(top):
        n += len(files)
    return n


# --------------------------------------------------------------------------
class Sesrelay:
    kind = "sesrelay"

    def __init__(self, tmp, binary):
        self.dir = os.path.join(tmp, "sesrelay")
        os.makedirs(self.dir, exist_ok=True)
        self.bin = binary
        self.spool = os.path.join(self.dir, "spool")
        self.config = os.path.join(self.dir, "relay.ini")
        self.logfile = os.path.join(self.dir, "sesrelay.log")
        self.pidfile = os.path.join(tmp, "sesrelay.pid")
        self.port = free_port()
        self.proc = None
        self.label = "sesrelay"
        self.runs = 0

    def write_config(self):
        with open(self.config, "w") as f:
            f.write(f"""[relay]
hostname = sesrelay-bench.localdomain
spool = {self.spool}
log_level = warn
max_connections = 6000
max_connections_per_ip = 1000

[listen:bench]
address = 127.0.0.1:{self.port}
""")

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self):
        # A new spool directory per run; old ones are deleted only at the end.
        # (On ext4 without a journal, creating files soon after deleting many
        # makes the inode allocator skip every "recently deleted" inode,
        # which would charge this bench's own clean-up to the next run.)
        self.runs += 1
        self.spool = os.path.join(self.dir, f"spool.{self.runs}")
        self.write_config()
        subprocess.run(["sync"])
        log = open(self.logfile, "ab")
        # No SES region and no credentials: sesrelay accepts and keeps every
        # message queued (its equivalent of Postfix's hold queue), and never
        # talks to anything but the benchmark client.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("AWS_") and k != "SESRELAY_CONFIG"}
        env.update(AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
                   AWS_EC2_METADATA_DISABLED="true")
        self.proc = subprocess.Popen([self.bin, "-c", self.config], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, env=env)
        log.close()
        with open(self.pidfile, "w") as f:
            f.write(f"{self.proc.pid}\n")
        wait_banner(self.port, 15, alive=lambda: self.proc.poll() is None)

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        try:
            os.unlink(self.pidfile)
        except FileNotFoundError:
            pass

    def queued(self):
        return count_files(os.path.join(self.spool, "queue"))

    def mem(self):
        return procmem.proc_mem(self.pid)

    def cpu(self):
        return procmem.proc_cpu(self.pid)

    def log_tail(self, n=20):
        try:
            with open(self.logfile, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except FileNotFoundError:
            return ""


# --------------------------------------------------------------------------
MASTER_CF = """\
# private benchmark instance: no chroot, smtpd on a high loopback port
{addr} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    kind = "postfix"

    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "postfix")
        self.conf = os.path.join(self.dir, "conf")
        self.queue = None
        self.pidfile = os.path.join(tmp, "postfix-master.pid")
        self.runs = 0
        self.data = os.path.join(self.dir, "data")
        self.maillog = os.path.join(self.dir, "maillog")
        self.port = free_port()
        self.master = None
        self.limit = 100
        for d in (self.dir, self.conf, self.data):
            os.makedirs(d, exist_ok=True)
        os.chmod(self.dir, 0o755)
        pw = pwd.getpwnam("postfix")
        os.chown(self.data, pw.pw_uid, pw.pw_gid)
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(addr=f"127.0.0.1:{self.port}"))

    @property
    def label(self):
        return f"postfix (process_limit {self.limit})"

    @property
    def pid(self):
        return self.master

    def write_main_cf(self):
        # Everything not listed keeps its compiled-in default (postconf -d):
        # notably fsync on, in_flow_delay, smtpd_peername_lookup.
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write(f"""# private benchmark instance written by tests/bench/bench.py
compatibility_level = 3.6
config_directory = {self.conf}
queue_directory = {self.queue}
data_directory = {self.data}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-bench.localdomain
mydomain = localdomain
myorigin = $myhostname
mydestination =
relay_domains =
relayhost =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
# queue only: every message goes to the hold queue, nothing is delivered
smtpd_data_restrictions = check_client_access static:HOLD
defer_transports = smtp
default_process_limit = {self.limit}
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_recipient_rate_limit = 0
smtpd_client_new_tls_session_rate_limit = 0
syslog_name = postfix-bench
maillog_file = {self.maillog}
maillog_file_prefixes = {self.dir}
""")

    def _postfix(self, *args, check=True):
        r = subprocess.run([POSTFIX, "-c", self.conf] + list(args), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"postfix {' '.join(args)} failed:\n{r.stdout}\n"
                               f"{self.log_tail()}")
        return r

    def start(self):
        # A new queue directory per run (see Sesrelay.start).
        self.runs += 1
        self.queue = os.path.join(self.dir, f"queue.{self.runs}")
        os.makedirs(self.queue)
        os.chmod(self.queue, 0o755)
        subprocess.run(["sync"])
        self.write_main_cf()
        self._postfix("check")          # creates the queue directories
        self._postfix("start")
        pidfile = os.path.join(self.queue, "pid", "master.pid")
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with open(pidfile) as f:
                    self.master = int(f.read().strip())
                break
            except (FileNotFoundError, ValueError):
                time.sleep(0.1)
        if not self.master:
            raise RuntimeError("postfix master did not write its pid file\n" + self.log_tail())
        with open(self.pidfile, "w") as f:
            f.write(f"{self.master} {self.conf}\n")
        wait_banner(self.port, 15, alive=lambda: pid_alive(self.master))

    def stop(self):
        if self.master is None:
            return
        procs = procmem.descendants(self.master)
        self._postfix("stop", check=False)
        deadline = time.time() + 15
        while pid_alive(self.master) and time.time() < deadline:
            time.sleep(0.1)
        if pid_alive(self.master):
            try:
                os.kill(self.master, signal.SIGTERM)
            except ProcessLookupError:
                pass
            time.sleep(2)
        for p in procs:
            if pid_alive(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.master = None
        try:
            os.unlink(self.pidfile)
        except FileNotFoundError:
            pass

    def queued(self):
        return sum(count_files(os.path.join(self.queue, q))
                   for q in ("maildrop", "incoming", "active", "deferred", "hold"))

    def mem(self):
        return procmem.tree_mem(self.master)

    def cpu(self):
        return procmem.tree_cpu(self.master)

    def log_tail(self, n=20):
        try:
            with open(self.maillog, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except FileNotFoundError:
            return ""

    def log_problems(self):
        out = []
        try:
            with open(self.maillog, errors="replace") as f:
                for line in f:
                    if ("warning:" in line or "fatal:" in line or "panic:" in line) \
                            and "not owned by postfix" not in line:
                        out.append(line.rstrip())
        except FileNotFoundError:
            pass
        return out


# --------------------------------------------------------------------------
class Sampler(threading.Thread):
    """Samples server memory every interval seconds, keeping the peaks."""

    def __init__(self, server, interval=0.25):
        super().__init__(daemon=True)
        self.server, self.interval = server, interval
        self.stop_ev = threading.Event()
        self.peak = {}

    def sample(self):
        m = self.server.mem()
        for k, v in m.items():
            if k != "pid" and isinstance(v, int):
                self.peak[k] = max(self.peak.get(k, 0), v)

    def run(self):
        while not self.stop_ev.is_set():
            try:
                self.sample()
            except Exception:  # a process vanished mid-read
                pass
            self.stop_ev.wait(self.interval)

    def finish(self):
        self.stop_ev.set()
        self.join()
        self.sample()
        return self.peak


def wait_quiet(max_wait, threshold=0.25):
    """Wait (up to max_wait s) for a second in which the machine is mostly idle
    (other jobs, a build...), so runs are less disturbed.  Returns
    (seconds waited, busy fraction of the last second)."""
    t0 = time.monotonic()
    while True:
        a = procmem.system_cpu()
        time.sleep(1.0)
        b = procmem.system_cpu()
        busy = (b[0] - a[0]) / max(1, b[2] - a[2])
        waited = time.monotonic() - t0
        if busy <= threshold or waited >= max_wait:
            return waited, busy


def run_load(server, sessions, messages, size, timeout, tmp, quiet_wait=0):
    waited, busy_before = wait_quiet(quiet_wait) if quiet_wait else (0.0, None)
    server.start()
    try:
        time.sleep(0.3)
        mem_start = server.mem()
        cpu0 = server.cpu()
        sys0 = procmem.system_cpu()
        disk0 = procmem.disk_stats(tmp)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        # Reading smaps of ~200 Postfix processes costs CPU on a 2-core box:
        # sample Postfix once a second (its processes linger, so the peak is
        # still seen; one more sample is taken right after the run).
        sampler = Sampler(server, 0.25 if server.kind == "sesrelay" else 1.0)
        sampler.start()
        errf = os.path.join(tmp, f"smtp-source.{server.kind}.{sessions}.err")
        cmd = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size),
               "-f", SENDER, "-t", RCPT, f"127.0.0.1:{server.port}"]
        perf = perf_data = None
        if os.environ.get("BENCH_PERF") == "1" and server.kind == "sesrelay" \
                and shutil.which("perf"):
            perf_data = os.path.join(tmp, f"perf.{server.kind}.{sessions}.{server.runs}.data")
            perf = subprocess.Popen(["perf", "record", "-q", "-F", "499", "-p", str(server.pid),
                                     "-o", perf_data], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        t0 = time.monotonic()
        with open(errf, "w") as ef:
            p = subprocess.Popen(cmd, stdout=ef, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
            timed_out = False
            try:
                rc = p.wait(timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                p.kill()
                rc = p.wait()
        wall = time.monotonic() - t0
        if perf:
            perf.send_signal(signal.SIGINT)
            try:
                perf.wait(30)
            except subprocess.TimeoutExpired:
                perf.kill()
                perf.wait()
        queued = server.queued()
        peak = sampler.finish()
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu1 = server.cpu()
        sys1 = procmem.system_cpu()
        disk1 = procmem.disk_stats(tmp)
        with open(errf, errors="replace") as f:
            err = f.read().strip()
        res = {
            "server": server.kind, "label": server.label, "sessions": sessions,
            "messages": messages, "queued": queued, "wall_s": wall, "rc": rc,
            "timed_out": timed_out, "rate": queued / wall if wall > 0 else 0.0,
            "server_cpu_s": cpu1 - cpu0,
            "client_cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
            "sys_busy": (sys1[0] - sys0[0]) / max(1, sys1[2] - sys0[2]),
            "iowait": (sys1[1] - sys0[1]) / max(1, sys1[2] - sys0[2]),
            "cpus": os.cpu_count(),
            "peak": peak, "client_errors": err[-600:], "mem_start": mem_start,
            "quiet_wait_s": waited, "busy_before": busy_before,
        }
        # CPU used by anything else on the machine (other jobs, this script's
        # sampler): a large value means the run was disturbed.
        res["other_cpu_s"] = max(0.0, res["sys_busy"] * res["cpus"] * wall
                                 - res["server_cpu_s"] - res["client_cpu_s"])
        if disk0 and disk1:
            res["disk_writes"] = disk1[0] - disk0[0]
            if disk0[1] is not None:
                res["disk_flushes"] = disk1[1] - disk0[1]
        if server.kind == "postfix":
            res["limit"] = server.limit
        if perf_data and os.path.exists(perf_data):
            rep = subprocess.run(["perf", "report", "-i", perf_data, "--no-children", "--sort",
                                  "symbol", "--stdio"], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True).stdout
            res["perf_top"] = [" ".join(l.split()).replace(" - -", "").replace("[k] ", "k:")
                               .replace("[.] ", "") for l in rep.splitlines()
                               if l.strip() and not l.startswith("#")][:8]
        return res
    finally:
        server.stop()


def idle_test(server, count, limit, hold, tree):
    server.start()
    try:
        time.sleep(0.3)
        cmd = ["/usr/bin/python3", os.path.join(HERE, "idle.py"), "--port", str(server.port),
               "--count", str(count), "--limit", str(limit), "--hold", str(hold),
               "--pid", str(server.pid)]
        if tree:
            cmd.append("--tree")
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=limit + hold + 120)
        if r.returncode != 0 or not r.stdout.strip():
            return {"error": (r.stderr or r.stdout)[-800:]}
        res = json.loads(r.stdout)
        # sesrelay's peak over its lifetime (start + 5000 sessions)
        res["server_after"] = server.mem()
        return res
    finally:
        server.stop()


# --------------------------------------------------------------------------
def mb(kb):
    return f"{kb / 1024:.1f} MB" if kb is not None else "n/a"


def fmt_rate(runs):
    rates = [r["rate"] for r in runs]
    mean = sum(rates) / len(rates)
    s = f"{mean:.0f}"
    if len(rates) > 1:
        s += " [" + " ".join(f"{x:.0f}" for x in rates) + "]"
    if any(r["timed_out"] for r in runs):
        s += " (timeout)"
    return mean, s


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True).stdout.strip()
    except Exception:
        return "?"


def fs_info(path):
    """'ext4 (no journal) on /dev/vda' and the like, from /proc/mounts."""
    best = None
    with open("/proc/mounts") as f:
        for line in f:
            dev, mnt, fstype, opts = line.split()[:4]
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and \
                    (best is None or len(mnt) > len(best[1])):
                best = (dev, mnt, fstype, opts)
    if not best:
        return "?"
    dev, mnt, fstype, opts = best
    desc = fstype
    if fstype == "ext4":
        jt = f"/sys/fs/ext4/{os.path.basename(dev)}/journal_task"
        try:
            with open(jt) as f:
                desc += " (no journal)" if "none" in f.read() else " (journaled)"
        except OSError:
            pass
    return f"{desc} on {dev} mounted at {mnt}"


def spread_dirs(*dirs):
    """chattr +T (ext4 "top directory"): directories made inside these are
    placed in fresh block groups instead of next to their parent, so a run's
    spool is not in a group where many files were deleted minutes ago (by an
    earlier run or another job).  On ext4 without a journal the inode
    allocator skips inodes deleted in the last 1-6 minutes one by one, which
    makes every file creation there slow.  Returns True if it worked."""
    ok = True
    for d in dirs:
        r = subprocess.run(["chattr", "+T", d], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        ok = ok and r.returncode == 0
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--bin-label", help="where the binary under test was copied from")
    a = ap.parse_args()

    sessions_list = [int(x) for x in os.environ.get("BENCH_SESSIONS", "1 32 200").split()]
    messages = env_int("BENCH_MESSAGES", 20000)
    messages_1 = env_int("BENCH_MESSAGES_1", 5000)
    rounds = env_int("BENCH_ROUNDS", 2)
    timeout = env_int("BENCH_RUN_TIMEOUT", 300)
    size = env_int("BENCH_SIZE", 4096)
    idle_n = env_int("BENCH_IDLE", 5000)
    big_limit = env_int("BENCH_POSTFIX_BIG_LIMIT", 250)
    quiet_wait = env_int("BENCH_QUIET_WAIT", 20)

    tmp = os.path.abspath(a.tmp)
    servers = []

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    sr = Sesrelay(tmp, os.path.abspath(a.bin))
    pf = Postfix(tmp)
    servers += [sr, pf]
    spread = shutil.which("chattr") is not None and spread_dirs(sr.dir, pf.dir)
    t_start = time.monotonic()

    header = []
    header.append("sesrelay accept benchmark (make bench)")
    header.append(f"date:      {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    cpu_model = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2")
    mem_mb = sh("free -m | awk '/^Mem:/{print $2}'")
    header.append(f"machine:   {os.cpu_count()} CPUs (nproc {sh('nproc')}), {cpu_model}, "
                  f"kernel {os.uname().release}, {mem_mb} MB RAM")
    header.append(f"load avg:  {' '.join(open('/proc/loadavg').read().split()[:3])} "
                  "at start")
    header.append(f"disk:      {tmp}: {fs_info(tmp)}"
                  + ("; each run's queue in a fresh ext4 block group (chattr +T)" if spread
                     else ""))
    header.append(f"sesrelay:  {sh(a.bin + ' --version')} ({a.bin_label or a.bin})")
    header.append(f"postfix:   {sh(POSTCONF + ' -d -h mail_version')} (private instance, "
                  "hold queue, fsync on; stock default_process_limit = 100"
                  + (f", plus runs with {big_limit} above 100 sessions)" if big_limit else ")"))
    header.append(f"load:      smtp-source -s SESSIONS -m MESSAGES -l {size} -f {SENDER} "
                  f"-t {RCPT} 127.0.0.1:PORT (one message per connection)")
    header.append(f"           {messages} messages per run ({messages_1} at 1 session), "
                  f"{rounds} round(s), sesrelay/postfix alternating, order flipped each round")
    for line in header:
        print(line, flush=True)
    print(flush=True)

    results = []
    idle = {}
    try:
        for rnd in range(rounds):
            for s in sessions_list:
                n = messages_1 if s == 1 else messages
                plan = [(sr, None), (pf, 100)]
                if big_limit and s > 100:
                    plan.append((pf, big_limit))
                if rnd % 2:
                    plan.reverse()
                for srv, limit in plan:
                    if limit:
                        srv.limit = limit
                    r = run_load(srv, s, n, size, timeout, tmp, quiet_wait)
                    r["round"] = rnd + 1
                    results.append(r)
                    extra = ""
                    if r["busy_before"] is not None and r["busy_before"] > 0.25:
                        extra += f"  (machine busy before the run: {100 * r['busy_before']:.0f}%)"
                    if r["queued"] != n:
                        extra += f"  QUEUED {r['queued']} OF {n}"
                    if r["rc"] != 0:
                        extra += f"  smtp-source exit {r['rc']}: {r['client_errors'][-200:]!r}"
                    print(f"round {rnd + 1}  {s:4d} sessions  {srv.label:30s} "
                          f"{r['rate']:7.0f} msg/s  {r['wall_s']:6.1f} s  "
                          f"peak PSS {mb(r['peak'].get('pss_kb'))}{extra}", flush=True)
                    if r["rc"] != 0 or r["queued"] != n:
                        print("  server log tail:\n" + srv.log_tail(10), flush=True)

        if idle_n:
            pf.limit = 100
            idle["sesrelay"] = idle_test(sr, idle_n, 10.0, 1.0, False)
            print(f"idle: sesrelay {json.dumps(idle['sesrelay'])}", flush=True)
            idle["postfix"] = idle_test(pf, idle_n, 5.0, 0.5, True)
            print(f"idle: postfix  {json.dumps(idle['postfix'])}", flush=True)
    finally:
        for srv in servers:
            try:
                srv.stop()
            except Exception as e:  # keep stopping the others
                print(f"stopping {srv.kind}: {e}", file=sys.stderr)

    elapsed = time.monotonic() - t_start
    out = report(header, results, idle, sessions_list, big_limit, pf, elapsed)
    print()
    print(out)
    os.makedirs(os.path.dirname(os.path.abspath(a.results)), exist_ok=True)
    with open(a.results, "w") as f:
        f.write(out + "\n")
        f.write("\n# raw results (JSON lines)\n")
        for r in results:
            f.write(json.dumps(r) + "\n")
        f.write(json.dumps({"idle": idle}) + "\n")
    print(f"\nwritten to {a.results}")
    return 0


def report(header, results, idle, sessions_list, big_limit, pf, elapsed):
    L = list(header) + [""]
    L.append("ACCEPT THROUGHPUT (messages queued per second; mean [each round])")
    L.append(f"{'sessions':>8}  {'messages':>8}  {'sesrelay msg/s':<22}"
             f"{'postfix msg/s':<22}{'postfix limit':>13}  {'ratio':>6}")
    ratios = {}
    sr_rates = {}
    for s in sessions_list:
        srr = [r for r in results if r["server"] == "sesrelay" and r["sessions"] == s]
        if not srr:
            continue
        sr_mean, sr_s = fmt_rate(srr)
        sr_rates[s] = sr_mean
        limits = sorted({r["limit"] for r in results if r["server"] == "postfix"
                         and r["sessions"] == s})
        for i, lim in enumerate(limits):
            pfr = [r for r in results if r["server"] == "postfix" and r["sessions"] == s
                   and r["limit"] == lim]
            pf_mean, pf_s = fmt_rate(pfr)
            ratio = sr_mean / pf_mean if pf_mean else float("inf")
            ratios[(s, lim)] = ratio
            L.append(f"{s:>8}  {srr[0]['messages']:>8}  {sr_s if i == 0 else '  (same)':<22}"
                     f"{pf_s:<22}{lim:>13}  {ratio:>5.2f}x")
    L.append("")

    L.append("PER RUN (cpu: % of one core over the run; ms/msg: server CPU time per message; "
             "client = smtp-source;")
    L.append("         other = everything else on the machine (kernel threads, other jobs, "
             "this script's sampler);")
    L.append("         busy/iowt: % of all CPUs; wr/msg, fl/msg: block-device writes and "
             "cache flushes (fsync) per message)")
    L.append(f"{'rnd':>3} {'server':<29}{'sess':>5} {'queued':>7} {'wall s':>7} {'msg/s':>6} "
             f"{'srv cpu':>7} {'ms/msg':>6} {'client':>6} {'other':>6} {'busy':>5} {'iowt':>5} {'wr/msg':>6} "
             f"{'fl/msg':>6} {'peak PSS':>9} {'peak RSS':>9} {'procs':>5}")
    for r in results:
        w = r["wall_s"] or 1
        q = r["queued"] or 1
        pk = r["peak"]
        rss = pk.get("hwm_kb") if r["server"] == "sesrelay" else pk.get("rss_sum_kb")
        procs = pk.get("processes", 1)
        fl = r.get("disk_flushes")
        wr = r.get("disk_writes")
        L.append(f"{r['round']:>3} {r['label']:<29}{r['sessions']:>5} {r['queued']:>7} "
                 f"{r['wall_s']:>7.1f} {r['rate']:>6.0f} "
                 f"{100 * r['server_cpu_s'] / w:>6.0f}% {1000 * r['server_cpu_s'] / q:>6.2f} "
                 f"{100 * r['client_cpu_s'] / w:>5.0f}% "
                 f"{100 * r.get('other_cpu_s', 0) / w:>5.0f}% "
                 f"{100 * r['sys_busy']:>4.0f}% {100 * r['iowait']:>4.0f}% "
                 f"{(wr / q if wr is not None else float('nan')):>6.2f} "
                 f"{(fl / q if fl is not None else float('nan')):>6.2f} "
                 f"{mb(pk.get('pss_kb')):>9} {mb(rss):>9} {procs:>5}"
                 + ("  TIMEOUT" if r["timed_out"] else "")
                 + (f"  rc={r['rc']}" if r["rc"] else ""))
    L.append("  (peak RSS: sesrelay VmHWM; postfix: sum of VmRSS over its processes, which "
             "counts shared pages many times)")
    for r in results:
        if r.get("perf_top"):
            L.append(f"  perf, sesrelay at {r['sessions']} sessions (round {r['round']}): "
                     + "; ".join(r["perf_top"]))
    disturbed = [r for r in results if r.get("other_cpu_s", 0) > 0.25 * r["wall_s"]]
    if disturbed:
        L.append(f"  NOTE: in {len(disturbed)} of {len(results)} runs other processes used "
                 "more than 25% of a core: those numbers are noisy")
    L.append("")

    L.append("PEAK MEMORY DURING THE THROUGHPUT RUNS")
    sr_pss = max((r["peak"].get("pss_kb", 0) for r in results if r["server"] == "sesrelay"),
                 default=0)
    sr_hwm = max((r["peak"].get("hwm_kb", 0) for r in results if r["server"] == "sesrelay"),
                 default=0)
    L.append(f"  sesrelay: PSS {mb(sr_pss)}, peak RSS (VmHWM) {mb(sr_hwm)} (one process)")
    big = [r for r in results if r["server"] == "sesrelay" and r["queued"] >= 1000
           and r.get("mem_start", {}).get("pss_kb")]
    if big:
        r = max(big, key=lambda r: r["queued"])
        p0, p1 = r["mem_start"]["pss_kb"], r["peak"].get("pss_kb", 0)
        L.append(f"  sesrelay's memory grows with its queue: PSS {mb(p0)} after start, "
                 f"{mb(p1)} with {r['queued']} queued at {r['sessions']} sessions "
                 f"(~{1024 * (p1 - p0) / r['queued']:.0f} bytes per queued message)")
    pf_by = {}
    for r in results:
        if r["server"] != "postfix":
            continue
        key = (r["sessions"], r["limit"])
        old = pf_by.get(key)
        if old is None or r["peak"].get("pss_kb", 0) > old["pss_kb"]:
            pf_by[key] = {"pss_kb": r["peak"].get("pss_kb", 0),
                          "processes": r["peak"].get("processes", 0)}
    for (s, lim), v in sorted(pf_by.items()):
        srs = max((r["peak"].get("pss_kb", 0) for r in results
                   if r["server"] == "sesrelay" and r["sessions"] == s), default=0)
        L.append(f"  postfix at {s:>3} sessions (process_limit {lim:>3}): PSS sum "
                 f"{mb(v['pss_kb'])} over up to {v['processes']} processes; "
                 f"sesrelay at {s} sessions: {mb(srs)} "
                 f"= 1/{(v['pss_kb'] / srs) if srs else float('inf'):.0f}")
    pf_pss_32 = max((v["pss_kb"] for (s, _), v in pf_by.items() if s == 32), default=0)
    pf_pss = max((v["pss_kb"] for v in pf_by.values()), default=0)
    L.append("")

    if idle:
        L.append("IDLE CONNECTIONS (opened as fast as one client process can, all kept open)")
        si = idle.get("sesrelay", {})
        if "error" in si:
            L.append(f"  sesrelay: error: {si['error']}")
        elif si:
            sv = si.get("server", {})
            t = si.get("all_greeted_s")
            L.append(f"  sesrelay: {si['greeted']}/{si['count']} greeted"
                     + (f", all within {t:.3f} s" if t is not None
                        else f" after {si.get('gave_up_after_s')} s (gave up)")
                     + f" (connect loop {si['connect_loop_s']:.3f} s); with all open: "
                     f"RSS {mb(sv.get('rss_kb'))}, peak RSS {mb(sv.get('hwm_kb'))}, "
                     f"PSS {mb(sv.get('pss_kb'))}")
            if si.get("errors"):
                L.append(f"            errors: {si['errors']}")
        pi = idle.get("postfix", {})
        if "error" in pi:
            L.append(f"  postfix:  error: {pi['error']}")
        elif pi:
            sv = pi.get("server", {})
            L.append(f"  postfix (process_limit 100): {pi['greeted']}/{pi['count']} greeted in "
                     f"{pi['limit_s']:.0f} s (bounded; the rest wait in or are dropped from its "
                     f"listen queue); PSS sum {mb(sv.get('pss_kb'))} over "
                     f"{sv.get('processes')} processes")
        L.append("")

    L.append("SERVER CPU PER MESSAGE (mean over rounds; less sensitive to other load than msg/s)")
    for s in sessions_list:
        for kind, lim in [("sesrelay", None)] + [("postfix", l) for l in sorted(
                {r["limit"] for r in results if r["server"] == "postfix" and r["sessions"] == s})]:
            rs = [r for r in results if r["server"] == kind and r["sessions"] == s
                  and (lim is None or r.get("limit") == lim)]
            if rs:
                v = sum(1000 * r["server_cpu_s"] / max(1, r["queued"]) for r in rs) / len(rs)
                L.append(f"  {s:>3} sessions  {rs[0]['label']:<29} {v:5.2f} ms")
    L.append("")

    L.append("TARGETS")
    r32 = ratios.get((32, 100))
    if r32 is not None:
        L.append(f"  >= 3x Postfix msg/s at 32 sessions:        {r32:.2f}x  "
                 f"{'MET' if r32 >= 3 else 'MISSED'}")
    if 200 in sr_rates and 32 in sr_rates:
        frac = sr_rates[200] / sr_rates[32]
        L.append(f"  no collapse at 200 sessions (>= 80% of the 32-session rate): "
                 f"{frac * 100:.0f}%  {'MET' if frac >= 0.8 else 'MISSED'}")
    if pf_pss_32 and sr_pss:
        L.append(f"  <= 1/5 of Postfix's memory (peak PSS, 32 sessions: {mb(pf_pss_32)}; "
                 f"largest Postfix peak {mb(pf_pss)}): sesrelay peak {mb(sr_pss)} = "
                 f"1/{pf_pss_32 / sr_pss:.0f}  {'MET' if sr_pss * 5 <= pf_pss_32 else 'MISSED'}")
    si = idle.get("sesrelay") if idle else None
    if si and "error" not in si:
        t = si.get("all_greeted_s")
        rss = max(si.get("server", {}).get("hwm_kb") or 0,
                  si.get("server_after", {}).get("hwm_kb") or 0)
        ok = t is not None and t <= 1.0 and si["greeted"] == si["count"] and rss < 50 * 1024
        L.append(f"  {si['count']} idle connections greeted within 1 s under 50 MB RSS: "
                 f"{'all in %.3f s' % t if t is not None else 'NOT all greeted'}, peak RSS "
                 f"{mb(rss)}  {'MET' if ok else 'MISSED'}")
    problems = pf.log_problems()
    if problems:
        L.append("")
        L.append(f"postfix log warnings ({len(problems)}), first ones:")
        L += ["  " + p for p in problems[:5]]
    L.append("")
    L.append(f"bench time: {elapsed / 60:.1f} min")
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
