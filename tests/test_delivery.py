"""Delivery through the API transport (SPEC sections 5 and 6) end to end,
what only the API has: SES API v1 (the query API), the configuration set in
the request, SigV4 credentials (a bad signature, a session token).  Mail is
submitted over SMTP to the real binary and delivered to tests/lib/fake_ses.py,
which checks every request's SigV4 signature with botocore and can inject
SES's errors, latency and outages.

The delivery scenarios both transports share (byte-exact delivery, splitting,
bounces, retries, throttling, quota, pauses, outages, restarts, rate and
concurrency, flushing) are written once in test_transports.py and run there
for the API and the SMTP transport alike.  The fixtures and helpers here are
also used by test_queue_cli.py and test_metrics.py.

Every test is bounded: it polls with deadlines and never sleeps blindly,
except for short "nothing more happens" windows.  At teardown the fake must
have seen no signature failure, no protocol violation and no (message,
recipient) pair accepted twice, unless a test says otherwise.
"""
import re
import signal
import time

import pytest

import fake_ses
from fake_ses import THROTTLING, UNAVAILABLE_503, FakeSES
# shared with test_transports.py; queued, submit_many and wait_for are also
# imported from here by test_queue_cli.py
from transports import (log_count, queued, spooled_data, submit as _submit,  # noqa: F401
                        submit_many, wait_for)

KEY = fake_ses.DEFAULT_ACCESS_KEY
SECRET = fake_ses.DEFAULT_SECRET_KEY
REGION = "us-east-1"
RELAY = r"relay=ses-api\[us-east-1\]"
# SPEC 6 fields; Postfix's "delays=a/b/c/d" and "dsn=X.Y.Z" may follow delay=
DELAY = r"delay=\d+(?:\.\d+)?(?:, delays=[\d./]+)?(?:, dsn=\d\.\d{1,3}\.\d{1,3})?"
BOUNCE_FROM = "bounces@example.com"
MSG = (b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nCc: carol@example.org\r\n"
       b"Subject: delivery test\r\nMessage-ID: <t1@example.com>\r\n\r\nhello\r\n")


# --- fixtures ---------------------------------------------------------------

@pytest.fixture
def fake():
    """The fake SES.  Set .allow_sig_failures / .allow_duplicates in a test
    that provokes them on purpose."""
    f = FakeSES(region=REGION).start()
    f.allow_sig_failures = False
    f.allow_duplicates = False
    yield f
    try:
        problems = []
        if not f.allow_sig_failures:
            problems += ["signature failure: %(method)s %(path)s: %(code)s %(message)s %(detail)s"
                         % s for s in f.sig_failures]
        problems += ["violation: " + v for v in f.violations]
        if not f.allow_duplicates:
            problems += ["accepted twice: message %s... to %s" % (h[:12], r)
                         for h, r in f.duplicates()]
        assert not problems, "fake SES saw:\n" + "\n".join(problems)
    finally:
        f.stop()


def ses_config(fake, api_version=2, rate="1000", concurrency=None, config_set=None,
               retry_initial="1s", retry_max="4s", lifetime="20s", bounce_from=BOUNCE_FROM,
               key=KEY, secret=SECRET, keys=True):
    lines = ["[ses]", "transport = api", f"api_version = {api_version}", f"region = {REGION}",
             f"endpoint = {fake.url}"]
    if keys:
        lines += [f"access_key_id = {key}", f"secret_access_key = {secret}"]
    if rate is not None:                 # None: the default (auto: GetAccount's MaxSendRate)
        lines.append(f"max_send_rate = {rate}")
    if concurrency is not None:
        lines.append(f"concurrency = {concurrency}")
    if config_set:
        lines.append(f"configuration_set = {config_set}")
    lines += ["[queue]", f"retry_initial = {retry_initial}", f"retry_max = {retry_max}",
              f"lifetime = {lifetime}"]
    if bounce_from:
        lines.append(f"bounce_from = {bounce_from}")
    return "\n".join(lines) + "\n"


BASE_ENV = {"AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
            "AWS_CONFIG_FILE": "/nonexistent/config"}


@pytest.fixture
def ses_relay(fake, relay_factory):
    """make(**ses_config kwargs, relay_section=, env=, start=) -> a Relay whose
    API transport points at the fake.  The relays stop before the fake does."""
    def make(relay_section="", env=None, start=True, **kw):
        r = relay_factory(extra=ses_config(fake, **kw), relay_section=relay_section, start=False)
        r.ses_kw = kw
        r.relay_section = relay_section
        if start:
            r.start(env=dict(BASE_ENV, **(env or {})))
        return r
    return make


# --- helpers ----------------------------------------------------------------

def submit(relay, sender, rcpts, body=MSG, conn=None):
    """One SMTP transaction (MSG unless told); returns the queue id."""
    return _submit(relay, sender, rcpts, body, conn)


def wait_delivered(relay, fake, n_messages, timeout=15):
    """Until the queue is empty and the fake accepted at least n messages."""
    wait_for(lambda: not queued(relay) and len(fake.accepted()) >= n_messages, timeout,
             f"{n_messages} message(s) delivered and the queue empty", relay, fake)
    return fake.accepted()


def settle(relay, fake, seconds=2.0):
    """Nothing more should happen: wait a quiet window and return the counts."""
    before = len(fake.requests)
    time.sleep(seconds)
    return before, len(fake.requests)


def sent_rx(qid, rcpt, attempts=r"\d+"):
    return (rf"{qid}: to=<{re.escape(rcpt)}>, {RELAY}, {DELAY}, attempts={attempts}, "
            rf"status=sent \(MessageId ([^)\s]+)\)")


def deferred_rx(qid, rcpt, text=""):
    return (rf"{qid}: to=<{re.escape(rcpt)}>, {RELAY}, {DELAY}(?:, attempts=\d+)?, "
            rf"status=deferred \({text}")


def api_id(api):
    return f"v{api}"


# --- API v1 and the configuration set -------------------------------------------

# v2 is the shared test_transports.py::test_delivered_once_byte_exact[api]
@pytest.mark.parametrize("api", [1], ids=api_id)
def test_delivered_once_byte_exact(ses_relay, fake, api):
    r = ses_relay(api_version=api)
    spooled = {}
    fake.on_send(lambda req: spooled.update({q: spooled_data(r, q) for q in queued(r)}))
    body = MSG + b"..two dots in the spool mean one\r\n8-bit: Gr\xc3\xbc\xc3\x9fe\r\n.\r\n"
    rcpts = ["bob@example.net", "carol@example.org", "hidden@example.com"]
    qid = submit(r, "alice@example.com", rcpts, body)
    (m,) = wait_delivered(r, fake, 1)
    assert m.api == f"v{api}"
    assert m.raw == spooled[qid], "SES must get the spooled message byte for byte"
    assert m.raw.startswith(b"Received: from client.test (localhost[127.0.0.1])\r\n\tby relay.test "
                            b"(sesrelay) with ESMTP id " + qid.encode())
    assert m.raw.endswith(body)
    assert m.from_addr == "alice@example.com"
    assert sorted(m.rcpts) == sorted(rcpts), "destinations are the envelope recipients"
    assert b"hidden@" not in m.raw, "a Bcc-only recipient is in the envelope only"
    assert m.config_set is None
    assert len(fake.send_requests()) == 1
    for rc in rcpts:
        got = r.wait_log(sent_rx(qid, rc, attempts=1))
        assert got.group(1) == m.message_id
    r.wait_log(rf"{qid}: removed")


# v2 is the shared test_transports.py::test_null_sender_has_no_from[api]
@pytest.mark.parametrize("api", [1], ids=api_id)
def test_null_sender_has_no_from(ses_relay, fake, api):
    r = ses_relay(api_version=api)
    qid = submit(r, "", ["bob@example.net"])
    (m,) = wait_delivered(r, fake, 1)
    assert m.from_addr is None, "the null sender means no FromEmailAddress/Source at all"
    assert m.rcpts == ["bob@example.net"]
    r.wait_log(sent_rx(qid, "bob@example.net"))


@pytest.mark.parametrize("api", [2, 1], ids=api_id)
def test_configuration_set_passed(ses_relay, fake, api):
    r = ses_relay(api_version=api, config_set="relay-events")
    submit(r, "alice@example.com", ["bob@example.net"])
    (m,) = wait_delivered(r, fake, 1)
    assert m.config_set == "relay-events"


def test_throttling_v1_retried_not_bounced(ses_relay, fake):
    r = ses_relay(api_version=1)
    fake.fail_next(THROTTLING)
    qid = submit(r, "alice@example.com", ["bob@example.net"])
    wait_delivered(r, fake, 1, timeout=20)
    r.wait_log(deferred_rx(qid, "bob@example.net",
                           r"400 Throttling: Maximum sending rate exceeded\.\)"))
    assert log_count(r, r"status=bounced") == 0


# --- credentials: pause, never bounce ------------------------------------------

def test_bad_signature_pauses_until_sighup_fixes_config(ses_relay, fake):
    fake.allow_sig_failures = True
    r = ses_relay(secret=SECRET[:-3] + "BAD")
    qid = submit(r, "alice@example.com", ["bob@example.net"])
    fake.wait_until(lambda f: f.sig_failures, 10)
    time.sleep(2)
    assert queued(r) == {qid} and log_count(r, r"status=bounced") == 0
    assert log_count(r, r"(?m)^sesrelay\[\d+\]: (?:error|warning): .*SignatureDoesNotMatch") >= 1
    r.write_config(ses_config(fake, **dict(r.ses_kw, secret=SECRET)), r.relay_section)
    n = len(fake.sig_failures)
    r.signal(signal.SIGHUP)
    # New credentials from a reload lift the pause (or the next probe, within
    # retry_max, uses them): either way delivery resumes promptly.
    (m,) = wait_delivered(r, fake, 1, timeout=25)
    assert m.rcpts == ["bob@example.net"]
    assert all(f["seq"] < m.request_seq for f in fake.sig_failures[n:])


def test_session_token_from_environment(ses_relay, fake):
    token = "IQoJb3JpZ2luX2VjEXAMPLE//session+token=="
    fake.add_credentials("ASIAEXAMPLETEMP", "tempSecretKeyEXAMPLE/abc+def", token)
    r = ses_relay(keys=False, env={"AWS_ACCESS_KEY_ID": "ASIAEXAMPLETEMP",
                                   "AWS_SECRET_ACCESS_KEY": "tempSecretKeyEXAMPLE/abc+def",
                                   "AWS_SESSION_TOKEN": token})
    submit(r, "alice@example.com", ["bob@example.net"])
    wait_delivered(r, fake, 1)
    (q,) = fake.send_requests()
    assert q.header("X-Amz-Security-Token") == token
    assert "Credential=ASIAEXAMPLETEMP/" in q.header("Authorization")
    assert token not in r.read_log()


# --- for test_queue_cli.py --------------------------------------------------------

def _deferred_for_an_hour(ses_relay, fake):
    r = ses_relay(retry_initial="1h", retry_max="2h", lifetime="1d")
    fake.fail_next(UNAVAILABLE_503)
    qid = submit(r, "alice@example.com", ["bob@example.net"])
    r.wait_log(deferred_rx(qid, "bob@example.net", r"503\b"))
    settle(r, fake, 1.5)
    assert len(fake.send_requests()) == 1 and queued(r) == {qid}
    return r, qid
