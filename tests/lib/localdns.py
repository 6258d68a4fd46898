"""localdns - a throwaway DNS server for tests: Debian's dnsmasq (package
dnsmasq-base) in the foreground on 127.0.0.1 and a free port, answering
exactly the records a test gives it.

    dns = LocalDns(tmp_path, zones=["example.com"])
    dns.txt("example.com", "v=spf1 include:amazonses.com ~all")
    dns.mx("example.com", "inbound-smtp.us-east-1.amazonaws.com", 10)
    dns.cname("tok._domainkey.example.com", "tok.dkim.amazonses.com")
    dns.start()            # dns.server == "127.0.0.1:PORT" (UDP and TCP)
    ...
    dns.stop()             # by PID

Every zone is "local" (dnsmasq's local=/zone/): a name in it without records
is NXDOMAIN and a missing type NODATA, as from a real authoritative server;
names outside every zone are REFUSED (there is no upstream).  dnsmasq serves
a CNAME whose target it does not know, and answers over TCP too, so a big
answer (more than the 1232 bytes sesrelay takes over UDP) exercises the
truncation fallback.  query() is a tiny client for readiness and debugging.
"""
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import time

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def available():
    return os.path.exists(DNSMASQ)


def _free_port():
    """A port free for both UDP and TCP on 127.0.0.1 (racy, hence retries)."""
    for _ in range(50):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t = socket.socket()
        try:
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()
    raise RuntimeError("no free port")


def _quote(text):
    assert '"' not in text and "\n" not in text, text
    return '"%s"' % text


class LocalDns:
    def __init__(self, workdir, zones):
        self.dir = str(workdir)
        os.makedirs(self.dir, exist_ok=True)
        self.zones = list(zones)
        self.lines = []
        self.proc = None
        self.port = None
        self.log = os.path.join(self.dir, "dnsmasq.log")

    # -- records ----------------------------------------------------------
    def txt(self, name, *strings):
        """One TXT record of one or more strings (each at most 255 bytes)."""
        assert strings and all(len(s) <= 255 and "," not in s for s in strings)
        self.lines.append("txt-record=%s,%s" % (name, ",".join(_quote(s) for s in strings)))

    def mx(self, name, host, pref=10):
        self.lines.append("mx-host=%s,%s,%d" % (name, host, pref))

    def cname(self, name, target):
        self.lines.append("cname=%s,%s" % (name, target))

    # -- life -------------------------------------------------------------
    @property
    def server(self):
        return "127.0.0.1:%d" % self.port

    def start(self, timeout=10):
        conf = os.path.join(self.dir, "dnsmasq.conf")
        with open(conf, "w") as f:
            for z in self.zones:
                f.write("local=/%s/\n" % z)
            f.write("\n".join(self.lines) + "\n")
        last = ""
        for _ in range(5):
            self.port = _free_port()
            logf = open(self.log, "ab")
            self.proc = subprocess.Popen(
                [DNSMASQ, "--keep-in-foreground", "--no-daemon", "--port=%d" % self.port,
                 "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
                 "--no-hosts", "--no-poll", "--pid-file=", "--log-facility=-",
                 "--log-queries", "--conf-file=" + conf],
                stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
            logf.close()
            deadline = time.time() + timeout
            while time.time() < deadline and self.proc.poll() is None:
                try:
                    self.query(self.zones[0], 6, timeout=0.2)   # SOA: any answer will do
                    return self
                except OSError:
                    time.sleep(0.05)
            last = self.read_log()
            self.stop()
        raise RuntimeError("dnsmasq did not start:\n" + last[-2000:])

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def read_log(self):
        try:
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()

    # -- a minimal client -------------------------------------------------
    def query(self, name, qtype, timeout=1.0):
        """(rcode, answer count) for NAME/QTYPE over UDP; raises OSError on silence."""
        tid = random.randint(0, 65535)
        pkt = struct.pack(">HHHHHH", tid, 0x0100, 1, 0, 0, 0)
        for label in name.split("."):
            pkt += bytes([len(label)]) + label.encode()
        pkt += b"\0" + struct.pack(">HH", qtype, 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        try:
            s.sendto(pkt, ("127.0.0.1", self.port))
            r = s.recv(4096)
        finally:
            s.close()
        flags, _, an = struct.unpack(">HHH", r[2:8])
        return flags & 15, an
