"""relayharness - run sesrelay for a test and read what it queued.

Relay(dir).start() writes relay.ini, starts the binary, waits until every
listener accepts; .stop() sends SIGTERM (then SIGKILL after a bound) by PID.
SmtpConn is a raw SMTP client for conversations that real clients refuse to
have (hostile input, pipelining, bare LF).  read_queue() parses spool files
in the format documented at the top of relay/spool.c.
"""
import os
import re
import signal
import socket
import subprocess
import time

BIN = os.environ.get("SESRELAY_BIN") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "sesrelay"))
ASAN = os.environ.get("SESRELAY_ASAN") == "1"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Relay:
    def __init__(self, workdir, extra="", listeners=None, hostname="relay.test",
                 relay_section=""):
        self.dir = str(workdir)
        os.makedirs(self.dir, exist_ok=True)
        self.spool = os.path.join(self.dir, "spool")
        self.config = os.path.join(self.dir, "relay.ini")
        self.logfile = os.path.join(self.dir, "sesrelay.log")
        self.proc = None
        self.port = free_port()
        if listeners is None:
            listeners = {"local": {"address": f"127.0.0.1:{self.port}"}}
        self.listeners = listeners
        self.hostname = hostname
        self.write_config(extra, relay_section)

    def write_config(self, extra="", relay_section=""):
        lines = ["[relay]", f"hostname = {self.hostname}", f"spool = {self.spool}",
                 "log_level = debug"]
        if relay_section:
            lines.append(relay_section.strip())
        for name, keys in self.listeners.items():
            lines.append(f"[listen:{name}]")
            for k, v in keys.items():
                lines.append(f"{k} = {v}")
        lines.append(extra.strip())
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")

    def addr(self, name=None):
        keys = self.listeners[name] if name else next(iter(self.listeners.values()))
        host, port = keys["address"].rsplit(":", 1)
        return host.strip("[]"), int(port)

    def start(self, wait=True, env=None, args=None):
        self.log = open(self.logfile, "ab")
        e = dict(os.environ)
        if ASAN:
            e.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
            e.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        if env:
            e.update(env)
        self.proc = subprocess.Popen([BIN, "-c", self.config] + (args or []),
                                     stdout=self.log, stderr=self.log, env=e)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=10):
        deadline = time.time() + timeout
        for name in self.listeners:
            host, port = self.addr(name)
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"sesrelay exited {self.proc.returncode}:\n{self.read_log()}")
                try:
                    s = socket.socket(fam)
                    s.settimeout(1)
                    s.connect((host, port))
                    s.recv(512)
                    s.close()
                    break
                except OSError:
                    s.close()
                    if time.time() > deadline:
                        raise RuntimeError("sesrelay did not start listening:\n" + self.read_log())
                    time.sleep(0.05)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=15):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()

    def read_log(self):
        try:
            with open(self.logfile, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern, timeout=10):
        deadline = time.time() + timeout
        rx = re.compile(pattern)
        while time.time() < deadline:
            m = rx.search(self.read_log())
            if m:
                return m
            time.sleep(0.05)
        raise AssertionError(f"log never matched {pattern!r}:\n{self.read_log()[-3000:]}")

    def sanitizer_reports(self):
        log = self.read_log()
        bad = [l for l in log.splitlines()
               if "ERROR: AddressSanitizer" in l or "runtime error:" in l
               or "ERROR: LeakSanitizer" in l or "panic:" in l]
        return bad

    def queue(self):
        return read_queue(self.spool)

    def connect(self, name=None, timeout=10):
        return SmtpConn(*self.addr(name), timeout=timeout)


def read_queue(spool):
    """{id: {"sender", "rcpts", "data", "client", ...}} for every queued file."""
    qdir = os.path.join(spool, "queue")
    out = {}
    if not os.path.isdir(qdir):
        return out
    for name in sorted(os.listdir(qdir)):
        with open(os.path.join(qdir, name), "rb") as f:
            out[name] = parse_queue_file(f.read())
    return out


def parse_queue_file(raw):
    assert raw.startswith(b"SESRELAY-QUEUE 1\n"), raw[:40]
    head, sep, rest = raw.partition(b"\ndata\n")
    assert sep, "no data record"
    env = {"rcpts": []}
    for line in head.split(b"\n")[1:]:
        key, _, val = line.partition(b" ")
        key = key.decode()
        if key == "rcpt":
            env["rcpts"].append(val.decode())
        else:
            env[key] = val.decode()
    # "end N" follows the message; N is the message length
    m = re.search(rb"end (\d+)\n\Z", rest)
    assert m, rest[-40:]
    n = int(m.group(1))
    data = rest[:n]
    assert rest[n:] == b"end %d\n" % n, "end record does not match the message length"
    env["data"] = data
    return env


class SmtpConn:
    """A raw SMTP client: send exactly these bytes, read replies."""

    def __init__(self, host, port, timeout=10):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.buf = b""
        self.banner = self.reply()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed; buffered: %r" % self.buf)
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line.decode("utf-8", "replace")

    def reply(self):
        """One (possibly multi-line) reply as (code, text-of-last-line, all-lines)."""
        lines = []
        while True:
            l = self.line()
            lines.append(l)
            if len(l) < 4 or l[3] != "-":
                break
        return int(lines[-1][:3]), lines[-1][4:], lines

    def cmd(self, text):
        self.send(text + "\r\n")
        return self.reply()

    def closed(self, timeout=5):
        """True once the server has closed the connection (after any buffered replies)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()
