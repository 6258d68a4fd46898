"""Submission that is safe on the internet (SPEC 4 and 8): STARTTLS on 587,
implicit TLS on 465, AUTH PLAIN/LOGIN only under TLS, sender ownership, the
brute-force defence - through the real binary, with real clients (smtplib as
Gmail's "Send mail as" does it, nodemailer), against a test CA made here."""
import base64
import crypt
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from relayharness import BIN, free_port

NODE_DIR = os.path.join(os.path.dirname(__file__), "node")
PASSWORD = "correct horse battery staple"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A CA and a server certificate for localhost/127.0.0.1 (and a second one)."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=sesrelay test CA",
            cwd=d)
    for name in ("server", "server2"):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}.localhost",
                cwd=d)
        (d / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
                cwd=d)
        os.chmod(d / f"{name}.key", 0o600)
    return d


def client_ctx(pki):
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    return ctx


@pytest.fixture
def submission(relay_factory, pki):
    """A relay with 587-style (starttls, auth required) and 465-style
    (implicit, auth required) listeners, and a LAN listener without auth."""
    def make(users=None, relay_section="", **kw):
        p587, p465 = free_port(), free_port()
        listeners = {
            "submission": {"address": f"127.0.0.1:{p587}", "tls": "starttls", "auth": "required",
                           "relay_networks": ""},
            "submissions": {"address": f"127.0.0.1:{p465}", "tls": "implicit", "auth": "required",
                            "relay_networks": ""},
        }
        r = relay_factory(listeners=listeners, start=False, relay_section=relay_section)
        users_file = os.path.join(r.dir, "users")
        lines = users or [f"alice:{crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_SHA512))}:alice@example.com,@alice.example",
                          f"bob:{crypt.crypt('bobpw', crypt.mksalt(crypt.METHOD_SHA512))}:bob@example.org"]
        with open(users_file, "w") as f:
            f.write("# test users\n" + "\n".join(lines) + "\n")
        os.chmod(users_file, 0o600)
        r.write_config(extra=f"[tls]\ncertificate = {pki}/server.pem\nprivate_key = {pki}/server.key\n"
                             f"[users]\nfile = {users_file}\n", relay_section=relay_section)
        r.users_file = users_file
        r.p587, r.p465 = p587, p465
        r.start(wait=False)
        wait_port(r, p587)
        wait_port(r, p465)
        return r
    return make


def wait_port(r, port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if r.proc.poll() is not None:
            raise RuntimeError(r.read_log())
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("not listening:\n" + r.read_log())


MSG = "From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: via 587\r\n\r\nhello\r\n"


def test_gmail_send_mail_as_on_587(submission, pki):
    """Gmail's sequence: EHLO, STARTTLS, EHLO, AUTH PLAIN, MAIL/RCPT/DATA."""
    r = submission()
    with smtplib.SMTP("127.0.0.1", r.p587, timeout=30) as s:
        code, text = s.ehlo("mail-gmail.test")
        assert b"STARTTLS" in text and b"AUTH" not in text  # no AUTH in clear
        s.starttls(context=client_ctx(pki))
        code, text = s.ehlo("mail-gmail.test")
        assert b"AUTH PLAIN LOGIN" in text and b"STARTTLS" not in text
        s.login("alice", PASSWORD)  # smtplib prefers PLAIN... after CRAM: we offer PLAIN LOGIN
        assert s.sendmail("alice@example.com", ["bob@example.net"], MSG) == {}
    (m,) = r.queue().values()
    assert m["auth"] == "alice" and m["proto"] == "ESMTPSA"
    assert m["sender"] == "alice@example.com" and m["rcpts"] == ["bob@example.net"]
    data = m["data"].decode()
    # RFC 6409: the submission server adds Message-ID and Date when missing
    assert re.search(r"\r\nMessage-ID: <[0-9A-Z]{10}\.\d+@relay\.test>\r\nDate: ", data)
    assert data.endswith("Subject: via 587\r\nMessage-ID: " + data.split("Message-ID: ")[1].split("\r\n")[0]
                         + "\r\nDate: " + data.split("\r\nDate: ")[1].split("\r\n")[0] + "\r\n\r\nhello\r\n")
    r.wait_log(r"client=localhost\[127\.0\.0\.1\], sasl_username=alice")
    r.wait_log(r"TLS connection established from localhost\[127\.0\.0\.1\]: TLSv1\.[23] with cipher")


def test_implicit_tls_on_465(submission, pki):
    r = submission()
    with smtplib.SMTP_SSL("127.0.0.1", r.p465, timeout=30, context=client_ctx(pki)) as s:
        code, text = s.ehlo("laptop.test")
        assert b"AUTH PLAIN LOGIN" in text and b"STARTTLS" not in text
        s.login("bob", "bobpw")
        msg = "From: bob@example.org\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <x@y>\r\nSubject: s\r\n\r\nbody\r\n"
        s.sendmail("bob@example.org", ["carol@example.net"], msg)
    (m,) = r.queue().values()
    assert m["auth"] == "bob"
    assert m["data"].endswith(msg.encode()), "present Date/Message-ID are kept, nothing added"


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_both_mechanisms(submission, pki, mech):
    r = submission()
    with smtplib.SMTP("127.0.0.1", r.p587, timeout=30) as s:
        s.starttls(context=client_ctx(pki))
        s.ehlo("c")
        s.user, s.password = "alice", PASSWORD
        code, _ = s.auth(mech, getattr(s, "auth_" + mech.lower()), initial_response_ok=(mech == "PLAIN"))
        assert code == 235


def test_tls_1_1_refused(submission, pki):
    r = submission()
    ctx = client_ctx(pki)
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    with pytest.raises((ssl.SSLError, ConnectionError, smtplib.SMTPServerDisconnected)):
        with smtplib.SMTP_SSL("127.0.0.1", r.p465, timeout=10, context=ctx) as s:
            s.ehlo("old")


def test_nodemailer_submission(submission, pki):
    r = submission()
    script = os.path.join(NODE_DIR, "submit_tls.js")
    with open(script, "w") as f:
        f.write("""
const nodemailer = require('nodemailer');
const fs = require('fs');
const [port, secure, ca, pass] = process.argv.slice(2);
const t = nodemailer.createTransport({host: '127.0.0.1', port: +port, secure: secure === '1',
  requireTLS: secure !== '1', auth: {user: 'alice', pass},
  tls: {ca: [fs.readFileSync(ca)], servername: 'localhost'}});
t.sendMail({from: '"Alice" <alice@example.com>', to: 'x@example.net', subject: 'nm', text: 'hi'})
 .then(i => { console.log(i.response); process.exit(0); })
 .catch(e => { console.error(e); process.exit(1); });
""")
    try:
        for port, secure in ((r.p587, "0"), (r.p465, "1")):
            p = subprocess.run(["node", script, str(port), secure, str(pki / "ca.pem"), PASSWORD],
                               capture_output=True, text=True, timeout=60, cwd=NODE_DIR)
            assert p.returncode == 0 and "250 2.0.0 Ok: queued as" in p.stdout, p.stdout + p.stderr
    finally:
        os.unlink(script)
    assert len(r.queue()) == 2


# --- attacks -------------------------------------------------------------------

def test_attack_relay_without_auth(submission, pki):
    """An outsider on the submission port cannot relay without logging in."""
    r = submission()
    with smtplib.SMTP("127.0.0.1", r.p587, timeout=30) as s:
        s.starttls(context=client_ctx(pki))
        s.ehlo("spammer")
        code, text = s.mail("victim@example.com")
        assert code == 530 and text.startswith(b"5.7.0 Authentication required")
    assert r.queue() == {}


def test_attack_auth_before_tls(submission):
    r = submission()
    with r.connect("submission") as c:
        c.cmd("EHLO c")
        code, text, _ = c.cmd("AUTH PLAIN " + base64.b64encode(b"\0alice\0" + PASSWORD.encode()).decode())
        assert code == 530 and "STARTTLS" in text
        code, text, _ = c.cmd("MAIL FROM:<alice@example.com>")
        assert code == 530 and "STARTTLS" in text
    assert PASSWORD not in r.read_log()


def test_attack_wrong_password_delay_grows_then_lockout(submission, pki):
    r = submission()
    with smtplib.SMTP_SSL("127.0.0.1", r.p465, timeout=60, context=client_ctx(pki)) as s:
        s.ehlo("guesser")
        delays = []
        for i in range(3):
            t0 = time.monotonic()
            with pytest.raises(smtplib.SMTPAuthenticationError) as e:
                s.login("alice", f"guess{i}")
            delays.append(time.monotonic() - t0)
            assert e.value.smtp_code == 535
        assert delays[0] >= 0.9 and delays[1] >= 1.9 and delays[2] >= 3.9, delays
    r.wait_log(r"authentication failed: user=alice, client=127\.0\.0\.1$".replace("$", ""))
    assert "guess0" not in r.read_log()
    # an unknown user is refused the same way (no user enumeration)
    with smtplib.SMTP_SSL("127.0.0.1", r.p465, timeout=60, context=client_ctx(pki)) as s:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("mallory", "x")
    # more failures lock the address out: 10 within the window
    for _ in range(3):
        try:
            with smtplib.SMTP_SSL("127.0.0.1", r.p465, timeout=60, context=client_ctx(pki)) as s:
                for _ in range(2):
                    with pytest.raises(smtplib.SMTPAuthenticationError):
                        s.login("alice", "nope")
        except (smtplib.SMTPServerDisconnected, ssl.SSLError, ConnectionError):
            pass  # locked out part-way: 421, or a closed connection on 465
    r.wait_log(r"127\.0\.0\.1 locked out for \d+ s after 10 failed logins")
    with pytest.raises((smtplib.SMTPConnectError, smtplib.SMTPServerDisconnected)) as e:
        smtplib.SMTP("127.0.0.1", r.p587, timeout=10)
    # the right password does not help while locked out
    assert "421" in str(e.value) or isinstance(e.value, smtplib.SMTPServerDisconnected)


def test_attack_starttls_command_injection(submission, pki):
    """CVE-2011-0411: commands pipelined after STARTTLS in the same packet
    must not be executed inside the TLS session."""
    r = submission()
    raw = socket.create_connection(("127.0.0.1", r.p587), 10)
    f = raw.makefile("rb")
    f.readline()
    raw.sendall(b"EHLO c\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    raw.sendall(b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@attacker.example>\r\n")
    assert f.readline().startswith(b"220 2.0.0")
    tls = client_ctx(pki).wrap_socket(raw, server_hostname="localhost")
    tls.settimeout(3)
    # nothing must arrive: the injected RSET/MAIL were discarded
    with pytest.raises(socket.timeout):
        tls.recv(100)
    tls.sendall(b"MAIL FROM:<alice@example.com>\r\n")
    assert tls.recv(200).startswith(b"503 5.5.1")  # EHLO must be repeated after STARTTLS
    tls.close()
    r.wait_log(r"discarding \d+ byte\(s\) pipelined after STARTTLS")


def test_attack_spoofed_mail_from(submission, pki):
    r = submission()
    with smtplib.SMTP("127.0.0.1", r.p587, timeout=30) as s:
        s.starttls(context=client_ctx(pki))
        s.login("bob", "bobpw")
        code, text = s.mail("alice@example.com")
        assert code == 553 and text.startswith(b"5.7.1") and b"not owned by user bob" in text
        code, _ = s.mail("bob@example.org")
        assert code == 250


@pytest.mark.parametrize("from_header,ok", [
    ("alice@example.com", True),
    ("Alice <alice@example.com>", True),
    ('"Alice, the boss" <ALICE@example.com>', True),
    ("alice@example.com (Alice)", True),
    ("anyone <x@alice.example>", True),
    ("Bob <bob@example.org>", False),
    ("alice@example.com, bob@example.org", False),
    ('"alice@example.com" <bob@example.org>', False),
    ("(alice@example.com) bob@example.org", False),
])
def test_attack_spoofed_from_header(submission, pki, from_header, ok):
    r = submission()
    with smtplib.SMTP("127.0.0.1", r.p587, timeout=30) as s:
        s.starttls(context=client_ctx(pki))
        s.login("alice", PASSWORD)
        msg = f"From: {from_header}\r\nSubject: t\r\n\r\nx\r\n"
        if ok:
            assert s.sendmail("alice@example.com", ["z@example.net"], msg) == {}
        else:
            with pytest.raises(smtplib.SMTPDataError) as e:
                s.sendmail("alice@example.com", ["z@example.net"], msg)
            assert e.value.smtp_code == 550 and e.value.smtp_error.startswith(b"5.7.1")
    assert len(r.queue()) == (1 if ok else 0)


def test_two_from_headers_refused(submission, pki):
    r = submission()
    with smtplib.SMTP("127.0.0.1", r.p587, timeout=30) as s:
        s.starttls(context=client_ctx(pki))
        s.login("alice", PASSWORD)
        with pytest.raises(smtplib.SMTPDataError):
            s.sendmail("alice@example.com", ["z@example.net"],
                       "From: alice@example.com\r\nFrom: bob@example.org\r\n\r\nx\r\n")


def test_2000_half_open_tls_handshakes(submission, pki):
    """Clients that connect to 465 and never finish the handshake do not stop
    a normal client from being served."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 10000), hard))
    r = submission(relay_section="max_connections = 3000\nmax_connections_per_ip = 3000")
    socks = []
    try:
        for _ in range(2000):
            s = socket.create_connection(("127.0.0.1", r.p465), 10)
            s.sendall(b"\x16\x03\x01\x00")  # the start of a ClientHello, then nothing
            socks.append(s)
        t0 = time.monotonic()
        with smtplib.SMTP_SSL("127.0.0.1", r.p465, timeout=30, context=client_ctx(pki)) as s:
            s.login("alice", PASSWORD)
            s.sendmail("alice@example.com", ["z@example.net"], MSG)
        print(f"normal client served in {time.monotonic() - t0:.2f}s with 2000 half-open handshakes")
    finally:
        for s in socks:
            s.close()
    assert len(r.queue()) == 1


def test_world_readable_key_refused(relay_factory, pki, tmp_path):
    key = tmp_path / "open.key"
    shutil.copy(pki / "server.key", key)
    os.chmod(key, 0o644)
    port = free_port()
    r = relay_factory(listeners={"s": {"address": f"127.0.0.1:{port}", "tls": "implicit"}},
                      start=False)
    r.write_config(extra=f"[tls]\ncertificate = {pki}/server.pem\nprivate_key = {key}\n")
    p = subprocess.run([BIN, "-c", r.config], capture_output=True, text=True, timeout=10)
    assert p.returncode == 78 and "readable by other users" in p.stderr and "chmod 600" in p.stderr


def test_sighup_reloads_certificate(submission, pki):
    r = submission()
    def serial():
        with socket.create_connection(("127.0.0.1", r.p465), 10) as raw:
            with client_ctx(pki).wrap_socket(raw, server_hostname="localhost") as t:
                return t.getpeercert()["subject"]
    assert ("commonName", "server.localhost") in [x[0] for x in serial()]
    # an open session survives the reload
    keep = smtplib.SMTP_SSL("127.0.0.1", r.p465, timeout=30, context=client_ctx(pki))
    keep.ehlo("stays")
    with open(r.config) as f:
        conf = f.read()
    with open(r.config, "w") as f:
        f.write(conf.replace("server.pem", "server2.pem").replace("server.key", "server2.key"))
    r.signal(1)
    r.wait_log(r"reloaded ")
    assert ("commonName", "server2.localhost") in [x[0] for x in serial()]
    keep.login("alice", PASSWORD)
    keep.sendmail("alice@example.com", ["z@example.net"], MSG)
    keep.quit()


def test_passwd_command_makes_a_working_line(tmp_path):
    p = subprocess.run([BIN, "passwd", "carol@example.com"], input="s3cret!\n",
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    user, hash_, senders = p.stdout.strip().split(":")
    assert user == "carol@example.com" and senders == "carol@example.com"
    assert hash_.startswith("$y$") and crypt.crypt("s3cret!", hash_) == hash_
    p = subprocess.run([BIN, "passwd", "dave", "dave@example.com", "@dave.example"], input="pw\n",
                       capture_output=True, text=True, timeout=30)
    assert p.stdout.strip().endswith(":dave@example.com,@dave.example")
    p = subprocess.run([BIN, "passwd", "erin"], input="pw\n", capture_output=True, text=True)
    assert p.returncode == 2 and "may send as" in p.stderr


def test_fail2ban_filter_matches_our_log_line(submission, pki):
    """The shipped fail2ban filter matches the line a failed login writes, and
    takes the client address from the end (a user name cannot forge it)."""
    r = submission()
    with smtplib.SMTP_SSL("127.0.0.1", r.p465, timeout=30, context=client_ctx(pki)) as s:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("x, client=198.51.100.1", "wrong")
    line = r.wait_log(r"authentication failed: .*").group(0)
    full = next(l for l in r.read_log().splitlines() if "authentication failed" in l)
    conf = open(os.path.join(os.path.dirname(__file__), "..", "contrib", "fail2ban", "filter.d",
                             "sesrelay.conf")).read()
    rx = re.search(r"failregex = (.*)\n", conf).group(1).strip()
    m = re.search(rx.replace("<HOST>", r"(?P<host>\S+)"), full)
    assert m and m.group("host") == "127.0.0.1", (rx, full, line)
