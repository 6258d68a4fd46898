"""PROXY protocol (listeners with proxy_protocol = yes): the real client
address from the header is what relay_networks, caps and logs use; a
listener that expects the header refuses connections without it, and vice
versa.  Ends with HAProxy itself in front of sesrelay."""
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time

import pytest

from relayharness import free_port

MSG = b"From: a@example.com\r\nSubject: p\r\n\r\nx\r\n.\r\n"


def v1(src, dst="127.0.0.1", sport=40000, dport=25):
    fam = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {fam} {src} {dst} {sport} {dport}\r\n".encode()


def v2(src, dst="127.0.0.1", sport=40000, dport=25, local=False):
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    if local:
        return sig + b"\x20\x00\x00\x00"
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return sig + b"\x21\x11" + struct.pack("!H", len(body)) + body


@pytest.fixture
def proxied(relay_factory):
    def make(networks="192.0.2.0/24", tls=None, extra=""):
        port = free_port()
        l = {"address": f"127.0.0.1:{port}", "proxy_protocol": "yes", "relay_networks": networks}
        if tls:
            l["tls"] = tls
        r = relay_factory(listeners={"behind": l}, start=False)
        r.write_config(extra=extra)
        r.start(wait=False)
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                assert time.time() < deadline, r.read_log()
                time.sleep(0.05)
        r.port = port
        return r
    return make


def converse(sock, lines):
    f = sock.makefile("rb")
    out = [f.readline()]
    for l in lines:
        sock.sendall(l + b"\r\n")
        while True:
            line = f.readline()
            out.append(line)
            if line[3:4] != b"-":
                break
    return out


@pytest.mark.parametrize("header", [v1("192.0.2.7"), v2("192.0.2.7")], ids=["v1", "v2"])
def test_real_address_allows_relay(proxied, header):
    r = proxied()
    with socket.create_connection(("127.0.0.1", r.port), 10) as s:
        s.sendall(header)
        out = converse(s, [b"EHLO c", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.net>", b"DATA"])
        assert out[0].startswith(b"220 ") and out[-1].startswith(b"354")
        s.sendall(MSG)
        assert s.makefile("rb").readline().startswith(b"250 2.0.0 Ok: queued as")
    r.wait_log(r"connect from unknown\[192\.0\.2\.7\]")
    (m,) = r.queue().values()
    assert m["client"] == "unknown[192.0.2.7]"


@pytest.mark.parametrize("header", [v1("203.0.113.5"), v2("203.0.113.5")], ids=["v1", "v2"])
def test_real_address_outside_networks_is_denied(proxied, header):
    """The proxy itself (127.0.0.1) is not what counts: the client is."""
    r = proxied(networks="127.0.0.0/8, 192.0.2.0/24")
    with socket.create_connection(("127.0.0.1", r.port), 10) as s:
        s.sendall(header)
        out = converse(s, [b"EHLO c", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.net>"])
        assert out[-1].startswith(b"554 5.7.1")
    r.wait_log(r"NOQUEUE: reject: RCPT from unknown\[203\.0\.113\.5\]: 554 5.7.1")


def test_local_command_keeps_the_peer(proxied):
    r = proxied(networks="127.0.0.0/8")
    with socket.create_connection(("127.0.0.1", r.port), 10) as s:
        s.sendall(v2("0.0.0.0", local=True))
        out = converse(s, [b"EHLO c", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.net>"])
        assert out[-1].startswith(b"250")


def test_listener_expecting_proxy_refuses_plain_smtp(proxied):
    r = proxied()
    with socket.create_connection(("127.0.0.1", r.port), 10) as s:
        s.settimeout(5)
        s.sendall(b"EHLO attacker.example\r\n")
        assert s.recv(100) == b""  # closed, no banner, no reply
    r.wait_log(r"refused: no valid PROXY header \(.*\); is the proxy configured")


def test_listener_expecting_proxy_times_out_silent_client(proxied):
    r = proxied()
    with socket.create_connection(("127.0.0.1", r.port), 15) as s:
        t0 = time.monotonic()
        assert s.recv(100) == b""
        assert 8 < time.monotonic() - t0 < 14
    r.wait_log(r"no PROXY header within 10 s")


def test_proxy_header_on_plain_listener_is_not_trusted(relay_factory):
    """A listener without proxy_protocol never believes a PROXY line."""
    r = relay_factory()
    with r.connect() as c:
        code, _, _ = c.cmd("PROXY TCP4 192.0.2.7 127.0.0.1 40000 25")
        assert code == 502
        c.cmd("EHLO c")
    r.wait_log(r"connect from localhost\[127\.0\.0\.1\]")
    assert "192.0.2.7" not in r.read_log().split("PROXY")[0]


def test_implicit_tls_behind_proxy(proxied, tmp_path):
    pki = tmp_path
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", "k.pem", "-out", "c.pem", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], cwd=pki, check=True, capture_output=True)
    os.chmod(pki / "k.pem", 0o600)
    r = proxied(tls="implicit", extra=f"[tls]\ncertificate = {pki}/c.pem\nprivate_key = {pki}/k.pem\n")
    ctx = ssl.create_default_context(cafile=str(pki / "c.pem"))
    raw = socket.create_connection(("127.0.0.1", r.port), 10)
    raw.sendall(v2("192.0.2.9"))
    with ctx.wrap_socket(raw, server_hostname="localhost") as t:
        out = converse(t, [b"EHLO c", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.net>"])
        assert out[0].startswith(b"220") and out[-1].startswith(b"250")
    r.wait_log(r"TLS connection established from unknown\[192\.0\.2\.9\]")


@pytest.fixture
def haproxy(tmp_path):
    exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert os.path.exists(exe), "haproxy is not installed (apt-get install haproxy)"
    procs = []

    def start(backend_port, version):
        port = free_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(f"""
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend smtp
    bind 127.0.0.1:{port}
    default_backend relay
backend relay
    server sesrelay 127.0.0.1:{backend_port} {"send-proxy-v2" if version == 2 else "send-proxy"}
""")
        p = subprocess.Popen([exe, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        procs.append(p)
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                return port
            except OSError:
                assert p.poll() is None, p.stderr.read().decode()
                assert time.time() < deadline
                time.sleep(0.05)

    yield start
    for p in procs:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.mark.parametrize("version", [1, 2])
def test_haproxy_in_front(proxied, haproxy, version):
    """Clients from 127.0.0.2 (allowed) and 127.0.0.3 (not) reach sesrelay
    through HAProxy, which itself connects from 127.0.0.1: the decisions and
    the logs follow the original client."""
    r = proxied(networks="127.0.0.2/32")
    front = haproxy(r.port, version)
    for src, ok in (("127.0.0.2", True), ("127.0.0.3", False)):
        s = socket.socket()
        s.bind((src, 0))
        s.settimeout(10)
        s.connect(("127.0.0.1", front))
        out = converse(s, [b"EHLO c", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.net>"])
        assert out[-1].startswith(b"250" if ok else b"554 5.7.1"), (src, out)
        s.close()
    r.wait_log(r"connect from localhost\[127\.0\.0\.2\]")
    r.wait_log(r"NOQUEUE: reject: RCPT from localhost\[127\.0\.0\.3\]")
    # (HAProxy's own 127.0.0.1 appears only for this fixture's readiness probe)
