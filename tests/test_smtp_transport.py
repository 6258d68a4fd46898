"""The "smtp" transport end to end (SPEC sections 3 and 5), what only it has:
mail submitted over SMTP to the real binary, delivered over SES's SMTP
interface as impersonated by tests/lib/fake_ses_smtp.py (aiosmtpd with SES's
manners: TLS mandatory, AUTH with the password derived from the secret key,
50 recipients per transaction, idle connections dropped, injectable SES
replies).  Here: TLS modes and certificates, STARTTLS stripping, AUTH
mechanisms and SMTP credentials, pipelining, the connection pool's own
manners (idle connections, 421 on a pooled connection, RSET), SES's SIZE
limit, and the `sesrelay smtp-password` command.

The delivery scenarios both transports share (byte-exact delivery, splitting,
per-recipient and per-transaction refusals, bounces, retries, throttling,
quota, pauses, outages and connection back-off, restarts, SIGTERM, rate and
concurrency, flushing) are written once in test_transports.py and run there
for the SMTP and the API transport alike.

Every test is bounded: it polls with deadlines and never sleeps blindly,
except for short "nothing more happens" windows.  At teardown the fake must
have seen no protocol violation and no (message, recipient) pair twice.
"""
import os
import smtplib
import subprocess
import time

import pytest

import fake_ses_smtp
from fake_ses_smtp import FakeSESSMTP
from relayharness import BIN

KEY = fake_ses_smtp.DEFAULT_ACCESS_KEY
SECRET = fake_ses_smtp.DEFAULT_SECRET_KEY
REGION = "us-east-1"
VECTOR_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
VECTOR_PASSWORD = "BMPPgbAHoFVbze1Ud0oA5uNdXRwUXUZ+qOwphGJbl/cS"  # us-east-2, SES-NOTES.md
BASE_ENV = {"AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
            "AWS_CONFIG_FILE": "/nonexistent/config",
            "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": ""}
MSG = (b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\n"
       b"Subject: smtp transport test\r\nMessage-ID: <s1@example.com>\r\n\r\nhello\r\n")


def _binary_has_smtp():
    try:
        r = subprocess.run([BIN, "smtp-password", "--region", "us-east-2"], input=VECTOR_SECRET,
                           capture_output=True, text=True, timeout=10)
    except OSError:
        return False
    return r.returncode == 0 and r.stdout.strip() == VECTOR_PASSWORD


if not _binary_has_smtp():
    pytest.skip(f"{BIN} has no smtp transport / smtp-password command wired in yet "
                "(relay/main.c and relay/daemon.c)", allow_module_level=True)


# --- fixtures ---------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return fake_ses_smtp.make_pki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def fakes(pki):
    """make(mode=, **kw) -> a started FakeSESSMTP; checked and stopped at teardown."""
    started = []

    def make(mode="starttls", **kw):
        f = FakeSESSMTP(mode=mode, pki=pki, region=REGION, host="127.0.0.1", **kw).start()
        started.append(f)
        return f

    yield make
    try:
        problems = []
        for f in started:
            problems += ["violation: " + v for v in f.violations()]
            if not f.allow_duplicates:
                problems += ["accepted twice: %s... to %s" % (h[:12], r)
                             for h, r in f.duplicates()]
        assert not problems, "fake SES SMTP saw:\n" + "\n".join(problems)
    finally:
        for f in started:
            f.stop()


def smtp_config(fake=None, pki=None, tls=None, port=None, host="localhost", keys=True,
                ca=True, concurrency=None, config_set=None, user=None, password=None,
                retry_initial="1s", retry_max="2s", lifetime="30s", bounce_from=""):
    mode = tls or (fake.mode if fake else "starttls")
    lines = ["[ses]", "transport = smtp", f"region = {REGION}", f"smtp_host = {host}",
             f"smtp_port = {port or fake.port}", f"smtp_tls = {mode}"]
    if keys:
        lines += [f"access_key_id = {KEY}", f"secret_access_key = {SECRET}"]
    if ca and pki:
        lines.append(f"ca_file = {pki['ca']}")
    if concurrency:
        lines.append(f"concurrency = {concurrency}")
    if config_set:
        lines.append(f"configuration_set = {config_set}")
    if user:
        lines.append(f"smtp_username = {user}")
    if password:
        lines.append(f"smtp_password = {password}")
    lines += ["[queue]", f"retry_initial = {retry_initial}", f"retry_max = {retry_max}",
              f"lifetime = {lifetime}", f"bounce_from = {bounce_from}"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def smtp_relay(relay_factory, pki):
    """make(fake, relay_section=, env=, start=, **smtp_config kwargs) -> a Relay."""
    def make(fake=None, relay_section="", env=None, start=True, **kw):
        r = relay_factory(extra=smtp_config(fake, pki, **kw), relay_section=relay_section,
                          start=False)
        if start:
            r.start(env=dict(BASE_ENV, **(env or {})))
        return r
    return make


# --- helpers ----------------------------------------------------------------

def submit(relay, sender, rcpts, body=MSG):
    """One message through the relay's listener (smtplib dot-stuffs it)."""
    host, port = relay.addr()
    with smtplib.SMTP(host, port, timeout=10) as c:
        c.ehlo("client.test")
        refused = c.sendmail(sender, rcpts, body)
        assert not refused, refused
        code, text = c.noop()
        assert code == 250


def queued(relay):
    try:
        return set(os.listdir(os.path.join(relay.spool, "queue")))
    except FileNotFoundError:
        return set()


def wait_for(pred, timeout, what, relay=None, fake=None):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    info = [f"timed out after {timeout}s waiting for {what}"]
    if fake is not None:
        info.append(f"fake: {len(fake.messages())} message(s); connections: "
                    f"{[(c['id'], c['commands']) for c in fake.connections()]}")
    if relay is not None:
        info.append("queue: %s" % sorted(queued(relay)))
        info.append(relay.read_log()[-5000:])
    raise AssertionError("\n".join(info))


def wait_delivered(relay, fake, n_rcpts, timeout=20):
    wait_for(lambda: not queued(relay) and fake.rcpt_count() >= n_rcpts, timeout,
             f"{n_rcpts} recipient(s) delivered and the queue empty", relay, fake)
    return fake.messages()


# --- delivery ---------------------------------------------------------------

def test_implicit_tls_with_configuration_set(fakes, smtp_relay):
    fake = fakes("implicit")
    relay = smtp_relay(fake, config_set="tracking-set_1")
    body = MSG + b"\xc3\xa9t\xc3\xa9 8-bit line\r\n"
    submit(relay, "alice@example.com", ["bob@example.net"], body)
    [m] = wait_delivered(relay, fake, 1)
    assert m["config_set"] == "tracking-set_1"
    assert m["data"].startswith(b"X-SES-CONFIGURATION-SET: tracking-set_1\r\nReceived: ")
    assert m["data"].endswith(body)
    [c] = fake.connections()
    assert c["tls"] in ("TLSv1.2", "TLSv1.3") and "STARTTLS" not in c["commands"], c


def test_pipelining_when_offered(fakes, smtp_relay):
    fake = fakes("starttls", pipelining=True)
    relay = smtp_relay(fake)
    rcpts = [f"r{i}@example.net" for i in range(5)]
    submit(relay, "alice@example.com", rcpts)
    [m] = wait_delivered(relay, fake, 5)
    assert m["rcpts"] == rcpts
    [c] = fake.connections()
    # MAIL and the RCPTs went out in one write: the fake found them queued
    assert c["pipelined"].count("RCPT") >= 4, c


def test_pipelined_data_with_every_recipient_refused(fakes, smtp_relay):
    """DATA goes out with the envelope (RFC 2920); when every RCPT is refused
    the server refuses DATA too, and the relay reads that reply before it
    resets and uses the connection for the next message."""
    fake = fakes("starttls", pipelining=True)
    relay = smtp_relay(fake, concurrency=1)
    fake.inject("RCPT", "550 5.1.1 no such user", n=2)
    submit(relay, "alice@example.com", ["gone1@example.org", "gone2@example.org"])
    relay.wait_log(r"to=<gone2@example.org>.*status=bounced")
    submit(relay, "alice@example.com", ["bob@example.net"])
    [m] = wait_delivered(relay, fake, 1)
    assert m["rcpts"] == ["bob@example.net"]
    [c] = fake.connections()
    # every command of the envelope had the next one queued behind it: the
    # last RCPT had DATA (the fake marks a command "pipelined" when more input
    # was already buffered after it)
    assert c["pipelined"][:3] == ["MAIL", "RCPT", "RCPT"], c
    i = c["commands"].index("RSET")
    assert c["commands"][i - 4:i + 1] == ["MAIL", "RCPT", "RCPT", "DATA", "RSET"], c


def test_own_idle_connections_closed_with_quit(fakes, smtp_relay):
    fake = fakes("starttls", idle_timeout=60)
    relay = smtp_relay(fake)
    submit(relay, "alice@example.com", ["bob@example.net"])
    wait_delivered(relay, fake, 1)
    wait_for(lambda: fake.connections()[0]["closed"], 15, "the idle connection closed",
             relay, fake)
    c = fake.connections()[0]
    assert c["commands"][-1] == "QUIT" and not c["idle_closed"], c


def test_idle_connection_closed_by_server_recovered(fakes, smtp_relay):
    fake = fakes("starttls", idle_timeout=1.0)
    relay = smtp_relay(fake)
    submit(relay, "alice@example.com", ["bob@example.net"])
    wait_delivered(relay, fake, 1)
    wait_for(lambda: fake.connections()[0]["idle_closed"], 10, "the fake's idle close",
             relay, fake)
    time.sleep(0.3)
    submit(relay, "alice@example.com", ["carol@example.net"])
    wait_delivered(relay, fake, 2)
    assert "status=deferred" not in relay.read_log()
    assert len(fake.connections()) == 2


def test_pooled_connection_421_retried_once_elsewhere(fakes, smtp_relay):
    """The race SES's idle timeout makes: MAIL on a pooled connection meets 421."""
    fake = fakes("starttls", idle_timeout=60)
    relay = smtp_relay(fake)
    submit(relay, "alice@example.com", ["bob@example.net"])
    wait_delivered(relay, fake, 1)
    fake.inject("MAIL", "421 4.4.2 Timeout waiting for data from client.", n=1)
    submit(relay, "alice@example.com", ["carol@example.net"])
    wait_delivered(relay, fake, 2)
    assert "status=deferred" not in relay.read_log()
    relay.wait_log(r"pooled connection closed by the server .*retrying on a new connection")
    conns = fake.connections()
    assert len(conns) == 2 and conns[1]["messages"] == 1


def test_failed_transaction_reset_before_next(fakes, smtp_relay):
    fake = fakes("starttls")
    relay = smtp_relay(fake, concurrency=1)
    fake.inject("RCPT", "550 5.1.1 no such user", n=1)
    submit(relay, "alice@example.com", ["gone@example.org"])
    relay.wait_log(r"to=<gone@example.org>.*status=bounced")
    submit(relay, "alice@example.com", ["bob@example.net"])
    wait_delivered(relay, fake, 1)
    [c] = fake.connections()
    i = c["commands"].index("RSET")
    assert c["commands"][i - 2:i + 2] == ["MAIL", "RCPT", "RSET", "MAIL"], c


def test_size_limit_from_ehlo_bounces_without_sending(fakes, smtp_relay):
    fake = fakes("starttls", size_limit=2000)
    relay = smtp_relay(fake)
    big = MSG + b"x" * 70 + b"\r\n"
    big = big * 40
    submit(relay, "alice@example.com", ["bob@example.net"], big)
    relay.wait_log(r"to=<bob@example.net>, .*status=bounced \(552 5\.3\.4 message size "
                   r"\d+ exceeds SES's limit 2000\)")
    assert not fake.messages()
    assert "MAIL" not in fake.connections()[0]["commands"]


# --- TLS and AUTH -----------------------------------------------------------

def test_wrong_host_name_certificate_refused(smtp_relay, pki):
    fake = FakeSESSMTP(mode="starttls", cert=pki["wrong_cert"], key=pki["wrong_key"],
                       region=REGION).start()
    try:
        relay = smtp_relay(fake)
        submit(relay, "alice@example.com", ["bob@example.net"])
        relay.wait_log(r"to=<bob@example.net>, .*status=deferred \(TLS with "
                       r"localhost\[[0-9a-f.:]+\]:\d+: certificate verify failed "
                       r"\(hostname mismatch\)")
        time.sleep(0.5)
        assert not fake.messages() and fake.auth_failures == 0
        assert all(not any(x.startswith("AUTH") for x in c["commands"])
                   for c in fake.connections())
        assert len(queued(relay)) == 1
    finally:
        relay.stop()
        fake.stop()


def test_plaintext_after_starttls_reply_discarded(smtp_relay, pki):
    """A server (or a man in the middle) that sends more after "220" to STARTTLS:
    those octets must not count as a reply once TLS is on (STYLE 4)."""
    import socket
    import threading

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    got = {}

    def serve():
        conn, _ = lsock.accept()
        conn.settimeout(10)
        f = conn.makefile("rb")
        conn.sendall(b"220 hostile ESMTP\r\n")
        assert f.readline().startswith(b"EHLO ")
        conn.sendall(b"250-hostile\r\n250 STARTTLS\r\n")
        assert f.readline() == b"STARTTLS\r\n"
        conn.sendall(b"220 go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n")
        ctx = fake_ses_smtp.server_context(pki["cert"], pki["key"])
        tls = ctx.wrap_socket(conn, server_side=True)
        f = tls.makefile("rb")
        lines = []
        reply = {b"EHLO": b"250-hostile\r\n250 AUTH PLAIN\r\n", b"AUTH": b"235 ok\r\n",
                 b"MAIL": b"250 ok\r\n", b"RCPT": b"250 ok\r\n", b"DATA": b"354 go\r\n"}
        while True:
            line = f.readline()
            if not line:
                break
            lines.append(line.split(b" ")[0].strip())
            if lines[-1] == b"DATA":
                tls.sendall(reply[b"DATA"])
                while f.readline() != b".\r\n":
                    pass
                tls.sendall(b"250 Ok tls-ok-1\r\n")
                continue
            if lines[-1] == b"QUIT":
                tls.sendall(b"221 bye\r\n")
                break
            tls.sendall(reply.get(lines[-1], b"500 what\r\n"))
        got["lines"] = lines
        tls.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    relay = smtp_relay(None, port=lsock.getsockname()[1], tls="starttls")
    try:
        submit(relay, "alice@example.com", ["bob@example.net"])
        relay.wait_log(r"to=<bob@example.net>, .*status=sent \(MessageId tls-ok-1\)")
        relay.wait_log(r"octets after the STARTTLS reply discarded")
    finally:
        relay.stop()
        t.join(5)
        lsock.close()
    assert got["lines"][:2] == [b"EHLO", b"AUTH"], got


def test_untrusted_certificate_refused(fakes, smtp_relay):
    fake = fakes("implicit")
    relay = smtp_relay(fake, ca=False)  # system CA bundle: the test CA is not in it
    submit(relay, "alice@example.com", ["bob@example.net"])
    relay.wait_log(r"status=deferred \(TLS with localhost\[[0-9a-f.:]+\]:\d+: certificate "
                   r"verify failed \(")
    assert not fake.messages()


def test_starttls_not_offered_is_operator_error(fakes, smtp_relay):
    fake = fakes("none")
    relay = smtp_relay(fake, tls="starttls")
    submit(relay, "alice@example.com", ["bob@example.net"])
    relay.wait_log(r"server does not offer STARTTLS")
    relay.wait_log(r"SES refused the request: .*server does not offer STARTTLS")
    time.sleep(0.3)
    assert not fake.messages()
    assert all(c["commands"] == ["EHLO"] or c["commands"] == ["EHLO", "QUIT"]
               for c in fake.connections()), fake.connections()
    assert "status=bounced" not in relay.read_log()


def test_smtp_tls_none_warns_and_delivers(fakes, smtp_relay):
    fake = fakes("none")
    relay = smtp_relay(fake, tls="none")
    relay.wait_log(r"smtp_tls = none: mail and SMTP password go in clear text; only for "
                   r"test sinks")
    submit(relay, "alice@example.com", ["bob@example.net"])
    [m] = wait_delivered(relay, fake, 1)
    assert m["tls"] is None and m["user"] == KEY


def test_explicit_smtp_credentials_and_auth_login(fakes, smtp_relay):
    fake = fakes("starttls", users={"smtp-user": "s3cret-pw"}, auth_mechanisms=("LOGIN",))
    relay = smtp_relay(fake, keys=False, user="smtp-user", password="s3cret-pw")
    submit(relay, "alice@example.com", ["bob@example.net"])
    [m] = wait_delivered(relay, fake, 1)
    assert m["user"] == "smtp-user"
    assert fake.connections()[0]["auth"] == "LOGIN"
    assert "s3cret-pw" not in relay.read_log()


def test_wrong_password_pauses_nothing_bounced(fakes, smtp_relay):
    fake = fakes("starttls")
    relay = smtp_relay(fake, keys=False, user=KEY, password="not-the-password")
    submit(relay, "alice@example.com", ["bob@example.net"])
    relay.wait_log(r"SES refused the request: SMTP authentication refused \(AUTH PLAIN\): "
                   r"535 Authentication Credentials Invalid")
    time.sleep(1.0)
    assert not fake.messages() and "status=bounced" not in relay.read_log()
    assert "not-the-password" not in relay.read_log()


def test_temporary_credentials_refused_clearly(fakes, smtp_relay):
    fake = fakes("starttls")
    relay = smtp_relay(fake, keys=False,
                       env={"AWS_ACCESS_KEY_ID": "ASIAEXAMPLEEXAMPLE12",
                            "AWS_SECRET_ACCESS_KEY": SECRET,
                            "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEXAMPLETOKEN"})
    submit(relay, "alice@example.com", ["bob@example.net"])
    relay.wait_log(r"are temporary: SES refuses SMTP passwords derived from them; use a "
                   r"long-term IAM user's access_key_id/secret_access_key, or set "
                   r"smtp_username and smtp_password")
    time.sleep(0.5)
    assert not fake.connections(), "no connection for credentials that cannot log in"
    assert len(queued(relay)) == 1 and "status=bounced" not in relay.read_log()
    assert "FwoGZXIvYXdzEXAMPLETOKEN" not in relay.read_log()


# --- sesrelay smtp-password --------------------------------------------------

def run_cli(args, stdin, env=None):
    e = {k: v for k, v in os.environ.items() if k not in ("AWS_REGION", "AWS_DEFAULT_REGION")}
    e.update(env or {})
    return subprocess.run([BIN, "smtp-password"] + args, input=stdin, capture_output=True,
                          text=True, timeout=10, env=e)


@pytest.mark.parametrize("args,env,stdin,code,out", [
    (["--region", "us-east-2"], {}, VECTOR_SECRET + "\n", 0, VECTOR_PASSWORD + "\n"),
    (["--region=us-east-2"], {}, VECTOR_SECRET, 0, VECTOR_PASSWORD + "\n"),
    ([], {"AWS_REGION": "us-east-2"}, VECTOR_SECRET + "\r\n", 0, VECTOR_PASSWORD + "\n"),
    ([], {"AWS_DEFAULT_REGION": "us-east-2"}, "  " + VECTOR_SECRET + " \n", 0,
     VECTOR_PASSWORD + "\n"),
    ([], {}, VECTOR_SECRET, 2, ""),                                  # no region at all
    (["--region"], {}, VECTOR_SECRET, 2, ""),                        # missing value
    (["--bogus"], {}, VECTOR_SECRET, 2, ""),
    (["--region", "us-east-2", "extra"], {}, VECTOR_SECRET, 2, ""),
    (["--region", "US East"], {}, VECTOR_SECRET, 2, ""),             # not a region
    (["--region", "us-east-2"], {}, "", 1, ""),                      # no secret
    (["--region", "us-east-2"], {}, "\n", 1, ""),
], ids=["flag", "flag=", "AWS_REGION", "AWS_DEFAULT_REGION", "no-region", "missing-value",
        "unknown-option", "extra-arg", "bad-region", "empty-stdin", "blank-line"])
def test_smtp_password_command(args, env, stdin, code, out):
    r = run_cli(args, stdin, env)
    assert r.returncode == code, r.stderr
    assert r.stdout == out
    if code:
        assert r.stderr.strip()
    assert VECTOR_SECRET not in r.stdout + r.stderr


def test_smtp_password_matches_the_fakes_derivation():
    assert fake_ses_smtp.self_check() == VECTOR_PASSWORD
    r = run_cli(["--region", "eu-west-1"], SECRET)
    assert r.stdout.strip() == fake_ses_smtp.smtp_password(SECRET, "eu-west-1")
    assert len(r.stdout.strip()) == 44 and r.stdout.startswith("B")
