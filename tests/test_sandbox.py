"""Fail fast at SMTP time (issue 6): when SES would refuse a message because
an identity is not verified - any unverified sender, and in the sandbox any
unverified recipient - the relay says so at MAIL, RCPT or end of data
instead of queueing a certain bounce.  What SES has verified comes from
GetAccount and ListEmailIdentities, polled in the background
(ses/ses_identity.c) against tests/lib/fake_ses.py, which checks every
signature with botocore.
"""
import os
import smtplib
import subprocess
import time

import pytest

import fake_ses
from fake_ses import ACCESS_DENIED, FakeSES
from relayharness import BIN

REGION = "us-east-1"
ENV = {"AWS_EC2_METADATA_DISABLED": "true",
       "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
       "AWS_CONFIG_FILE": "/nonexistent/config"}
MSG = ("From: Alice <alice@example.com>\r\nTo: friend@gmail.test\r\n"
       "Subject: sandbox test\r\n\r\nhello\r\n")


@pytest.fixture
def fake():
    f = FakeSES(region=REGION).start()
    f.identities_api = True
    f.add_identity("example.com")
    f.add_identity("friend@gmail.test")
    f.add_identity("pending@gmail.test", verified=False)
    yield f
    try:
        assert not f.sig_failures, f.sig_failures
        assert not f.violations, f.violations
    finally:
        f.stop()


def start_relay(relay_factory, fake, production=False, extra_ses=""):
    fake.set_account(production=production)
    ses = (f"[ses]\ntransport = api\nregion = {REGION}\nendpoint = {fake.url}\n"
           f"access_key_id = {fake_ses.DEFAULT_ACCESS_KEY}\n"
           f"secret_access_key = {fake_ses.DEFAULT_SECRET_KEY}\nmax_send_rate = 1000\n"
           + extra_ses)
    r = relay_factory(extra=ses, start=False)
    r.start(env=ENV)
    return r


def wait_identities(r, sandbox):
    r.wait_log(r"SES identities: account in %s, \d+ verified identit"
               % ("the SANDBOX" if sandbox else "production"), timeout=15)


def test_sandbox_refuses_unverified_recipient_at_rcpt(relay_factory, fake):
    r = start_relay(relay_factory, fake)
    wait_identities(r, sandbox=True)
    with r.connect() as c:
        c.cmd("EHLO client.test")
        assert c.cmd("MAIL FROM:<alice@example.com>")[0] == 250
        assert c.cmd("RCPT TO:<friend@gmail.test>")[0] == 250
        code, text, _ = c.cmd("RCPT TO:<stranger@gmail.test>")
        assert code == 550 and text.startswith("5.7.1 <stranger@gmail.test>"), text
        assert "sandbox" in text and "not a verified identity" in text, text
        # pending verification is not verified
        assert c.cmd("RCPT TO:<pending@gmail.test>")[0] == 550
        # a verified domain covers its addresses and subdomains; case does not matter
        assert c.cmd("RCPT TO:<Bob@Example.COM>")[0] == 250
        assert c.cmd("RCPT TO:<ops@nas.example.com>")[0] == 250
        # SES's mailbox simulator is always allowed
        assert c.cmd("RCPT TO:<success@simulator.amazonses.com>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(MSG + ".\r\n")
        code, text, _ = c.reply()
        assert code == 250, text
        c.cmd("QUIT")
    r.wait_log(r"to=<success@simulator\.amazonses\.com>.*status=sent", timeout=15)
    sent = set(fake.accepted_rcpts())
    assert "stranger@gmail.test" not in sent and "friend@gmail.test" in sent
    log = r.read_log()
    assert "NOQUEUE: reject: RCPT from" in log and "to=<stranger@gmail.test>" in log


def test_unverified_sender_refused_at_mail(relay_factory, fake):
    from relayharness import free_port
    from test_metrics import scrape
    hport = free_port()
    r = start_relay(relay_factory, fake, extra_ses=f"[http]\naddress = 127.0.0.1:{hport}\n")
    wait_identities(r, sandbox=True)
    with r.connect() as c:
        c.cmd("EHLO client.test")
        code, text, _ = c.cmd("MAIL FROM:<root@nas.lan>")
        assert code == 550 and text.startswith("5.7.1 <root@nas.lan>"), text
        assert "not a verified SES identity" in text, text
        # the null sender is always accepted (bounces)
        assert c.cmd("MAIL FROM:<>")[0] == 250
    assert "NOQUEUE: reject: MAIL from" in r.read_log()
    assert scrape(hport)["sesrelay_identity_refusals_total"] == 1


def test_unverified_from_header_refused_at_end_of_data(relay_factory, fake):
    r = start_relay(relay_factory, fake)
    wait_identities(r, sandbox=True)
    with pytest.raises(smtplib.SMTPDataError) as e:
        with smtplib.SMTP(*r.addr(), timeout=10) as s:
            s.sendmail("alice@example.com", ["friend@gmail.test"],
                       "From: Mallory <mallory@evil.test>\r\nSubject: x\r\n\r\nbody\r\n")
    assert e.value.smtp_code == 550
    assert b"mallory@evil.test is not a verified SES identity" in e.value.smtp_error
    assert not r.queue()


def test_production_checks_senders_not_recipients(relay_factory, fake):
    r = start_relay(relay_factory, fake, production=True)
    wait_identities(r, sandbox=False)
    with smtplib.SMTP(*r.addr(), timeout=10) as s:
        refused = s.sendmail("alice@example.com", ["anyone@elsewhere.test"], MSG)
        assert refused == {}
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            s.sendmail("someone@unverified.test", ["anyone@elsewhere.test"], MSG)
        assert e.value.smtp_code == 550
    r.wait_log(r"to=<anyone@elsewhere\.test>.*status=sent", timeout=15)


def test_newly_verified_identity_accepted_after_sighup(relay_factory, fake):
    r = start_relay(relay_factory, fake)
    wait_identities(r, sandbox=True)
    with r.connect() as c:
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<alice@example.com>")
        assert c.cmd("RCPT TO:<new@gmail.test>")[0] == 550
    fake.add_identity("new@gmail.test")
    pages = fake.list_pages
    r.signal(__import__("signal").SIGHUP)
    deadline = time.time() + 15
    while fake.list_pages == pages and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the answer is applied on the loop right after it arrives
    with r.connect() as c:
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<alice@example.com>")
        assert c.cmd("RCPT TO:<new@gmail.test>")[0] == 250


def test_leaving_the_sandbox_noticed_on_refresh(relay_factory, fake):
    r = start_relay(relay_factory, fake)
    wait_identities(r, sandbox=True)
    fake.set_account(production=True)
    r.signal(__import__("signal").SIGHUP)
    wait_identities(r, sandbox=False)
    with smtplib.SMTP(*r.addr(), timeout=10) as s:
        assert s.sendmail("alice@example.com", ["stranger@gmail.test"], MSG) == {}


def test_many_identities_paged(relay_factory, fake):
    for i in range(2500):
        fake.add_identity(f"user{i:04d}@people.test")
    r = start_relay(relay_factory, fake)
    m = r.wait_log(r"SES identities: account in the SANDBOX, (\d+) verified identit", timeout=20)
    assert int(m.group(1)) == 2502      # + example.com and friend@gmail.test
    assert fake.list_pages >= 3         # 1000 per page
    with r.connect() as c:
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<alice@example.com>")
        assert c.cmd("RCPT TO:<user2499@people.test>")[0] == 250
        assert c.cmd("RCPT TO:<user2500@people.test>")[0] == 550


def test_iam_without_list_permission_refuses_nothing(relay_factory, fake):
    fake.identities_api = False         # 403 AccessDeniedException, as IAM would
    r = start_relay(relay_factory, fake)
    r.wait_log(r"SES identities: ListEmailIdentities failed .*AccessDenied.*"
               r"allow ses:GetAccount and ses:ListEmailIdentities", timeout=15)
    with smtplib.SMTP(*r.addr(), timeout=10) as s:
        assert s.sendmail("root@nas.lan", ["stranger@gmail.test"], MSG) == {}
    r.wait_log(r"to=<stranger@gmail\.test>.*status=sent", timeout=15)


def test_check_identities_off(relay_factory, fake):
    r = start_relay(relay_factory, fake, extra_ses="check_identities = no\n")
    r.wait_log(r"SES account: sandbox", timeout=15)
    time.sleep(0.5)
    assert fake.list_pages == 0
    with smtplib.SMTP(*r.addr(), timeout=10) as s:
        assert s.sendmail("root@nas.lan", ["stranger@gmail.test"], MSG) == {}


def test_slow_identity_api_never_stalls_sessions(relay_factory, fake):
    """While ListEmailIdentities takes seconds, sessions are answered at once
    (nothing is refused until the answer is complete)."""
    fake.identities_latency = 4.0
    r = start_relay(relay_factory, fake)
    t0 = time.time()
    with smtplib.SMTP(*r.addr(), timeout=10) as s:
        assert s.sendmail("root@nas.lan", ["stranger@gmail.test"], MSG) == {}
    assert time.time() - t0 < 2.0, "a session waited for the identity poll"
    wait_identities(r, sandbox=True)
    with r.connect() as c:
        c.cmd("EHLO client.test")
        assert c.cmd("MAIL FROM:<root@nas.lan>")[0] == 550


def test_identity_failure_keeps_last_known(relay_factory, fake):
    """A failed refresh keeps what was known (for up to an hour), so a blip
    in the SES API does not open or close the gate."""
    r = start_relay(relay_factory, fake)
    wait_identities(r, sandbox=True)
    fake.fail_always(ACCESS_DENIED, ops=("account", "list_identities"))
    pages = len([x for x in fake.snapshot()["requests"] if x.op == "account"])
    r.signal(__import__("signal").SIGHUP)
    deadline = time.time() + 15
    while len([x for x in fake.snapshot()["requests"] if x.op == "account"]) == pages \
            and time.time() < deadline:
        time.sleep(0.05)
    r.wait_log(r"SES identities: GetAccount failed", timeout=10)
    with r.connect() as c:
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<alice@example.com>")
        assert c.cmd("RCPT TO:<stranger@gmail.test>")[0] == 550
