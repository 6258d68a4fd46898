"""Delivery to SES (SPEC sections 5 and 6) end to end: mail submitted over
SMTP to the real binary, delivered to tests/lib/fake_ses.py, which checks
every request's SigV4 signature with botocore and can inject SES's errors,
latency and outages.

Every test is bounded: it polls with deadlines and never sleeps blindly,
except for short "nothing more happens" windows.  At teardown the fake must
have seen no signature failure, no protocol violation and no (message,
recipient) pair accepted twice, unless a test says otherwise.
"""
import collections
import email
import email.utils
import hashlib
import os
import re
import signal
import subprocess
import time

import pytest

import fake_ses
from fake_ses import (ACCESS_DENIED, BAD_GATEWAY_502, DAILY_QUOTA, MAIL_FROM_NOT_VERIFIED,
                      MESSAGE_REJECTED, RESET, SERVER_500, THROTTLED_429, THROTTLING,
                      UNAVAILABLE_503, FakeSES)
from relayharness import BIN, parse_queue_file

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

def dotstuff(body):
    return re.sub(rb"(?m)^\.", b"..", body)


def submit(relay, sender, rcpts, body=MSG, conn=None):
    """One SMTP transaction; returns the queue id."""
    own = conn is None
    c = conn or relay.connect()
    try:
        if own:
            assert c.cmd("EHLO client.test")[0] == 250
        param = " BODY=8BITMIME" if re.search(rb"[\x80-\xff]", body) else ""
        code, text, _ = c.cmd(f"MAIL FROM:<{sender}>{param}")
        assert code == 250, text
        for r in rcpts:
            code, text, _ = c.cmd(f"RCPT TO:<{r}>")
            assert code == 250, (r, text)
        assert c.cmd("DATA")[0] == 354
        c.send(dotstuff(body) + b".\r\n")
        code, text, _ = c.reply()
        assert code == 250 and "queued as" in text, text
        return text.split()[-1]
    finally:
        if own:
            c.close()


def submit_many(relay, items):
    """items: [(sender, rcpts, body)] in one SMTP session; returns the ids."""
    with relay.connect() as c:
        assert c.cmd("EHLO client.test")[0] == 250
        return [submit(relay, s, r, b, conn=c) for s, r, b in items]


def queued(relay):
    try:
        return set(os.listdir(os.path.join(relay.spool, "queue")))
    except FileNotFoundError:
        return set()


def spooled_data(relay, qid):
    with open(os.path.join(relay.spool, "queue", qid), "rb") as f:
        return parse_queue_file(f.read())["data"]


def wait_for(pred, timeout, what, relay=None, fake=None, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            break
        time.sleep(interval)
    info = [f"timed out after {timeout}s waiting for {what}"]
    if fake is not None:
        info.append(fake.summary())
    if relay is not None:
        info.append("queue: %s" % sorted(queued(relay)))
        info.append(relay.read_log()[-4000:])
    raise AssertionError("\n".join(info))


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


def bounced_rx(qid, rcpt, status="bounced"):
    return rf"{qid}: to=<{re.escape(rcpt)}>, {RELAY}, {DELAY}(?:, attempts=\d+)?, status={status}"


def log_count(relay, pattern):
    return len(re.findall(pattern, relay.read_log()))


def dsn_parts(raw):
    """(message, per-message fields, [per-recipient fields]) of an RFC 3464 DSN."""
    msg = email.message_from_bytes(raw)
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert (msg.get_param("report-type") or "").lower() == "delivery-status", msg["Content-Type"]
    parts = msg.get_payload()
    assert isinstance(parts, list) and len(parts) >= 2, "a DSN has at least two parts"
    assert parts[0].get_content_maintype() == "text", "the first part is for humans"
    ds = [p for p in parts if p.get_content_type() == "message/delivery-status"]
    assert len(ds) == 1, [p.get_content_type() for p in parts]
    blocks = [b for b in ds[0].get_payload() if len(b.keys())]
    assert len(blocks) >= 2, "per-message fields, then one block per recipient"
    return msg, blocks[0], blocks[1:]


def dsn_recipients(per_rcpt):
    out = {}
    for b in per_rcpt:
        kind, _, addr = b["Final-Recipient"].partition(";")
        assert kind.strip().lower() == "rfc822", b["Final-Recipient"]
        out[addr.strip().lower()] = b
    return out


def check_dsn(m, original_sender, failed, status_rx=r"5\.\d{1,3}\.\d{1,3}", diag_rx=None):
    """m: the bounce as SES accepted it.  Checks envelope, headers and the
    delivery-status report; returns the per-recipient blocks by address."""
    assert m.rcpts == [original_sender], m.rcpts
    assert m.from_addr in (None, BOUNCE_FROM), \
        f"a bounce goes out with the null sender (or bounce_from), not {m.from_addr!r}"
    msg, per_msg, per_rcpt = dsn_parts(m.raw)
    assert email.utils.parseaddr(msg["From"])[1].lower() == BOUNCE_FROM
    assert original_sender in msg["To"]
    assert msg["Subject"] and msg["Date"] and msg["Message-ID"]
    assert per_msg["Reporting-MTA"], "per-message fields start with Reporting-MTA"
    rcpts = dsn_recipients(per_rcpt)
    assert set(rcpts) == {r.lower() for r in failed}
    for addr, b in rcpts.items():
        assert b["Action"].strip().lower() == "failed", b["Action"]
        assert re.fullmatch(status_rx, b["Status"].strip()), b["Status"]
        if diag_rx:
            text = (b["Diagnostic-Code"] or "") + " " + m.raw.decode("utf-8", "replace")
            assert re.search(diag_rx, text, re.I), (diag_rx, b["Diagnostic-Code"])
    return rcpts


def rcpt_counts(messages):
    return collections.Counter(r.lower() for m in messages for r in m.rcpts)


def is_bounce(req_or_msg):
    return b"multipart/report" in (req_or_msg.raw or b"")[:4000]


def api_id(api):
    return f"v{api}"


# --- delivered once, byte exact ------------------------------------------------

@pytest.mark.parametrize("api", [2, 1], ids=api_id)
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


@pytest.mark.parametrize("api", [2, 1], ids=api_id)
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


def test_large_message_byte_exact(ses_relay, fake):
    """6 MB: streamed from the spool, base64'd and signed without damage."""
    r = ses_relay()
    spooled = {}
    fake.on_send(lambda req: spooled.update({q: spooled_data(r, q) for q in queued(r)}))
    line = bytes(range(33, 33 + 76)) + b"\r\n"
    body = MSG + line * (6 * 1024 * 1024 // len(line))
    qid = submit(r, "alice@example.com", ["bob@example.net"], body)
    (m,) = wait_delivered(r, fake, 1, timeout=30)
    assert m.size == len(spooled[qid]) and m.raw == spooled[qid]
    assert hashlib.sha256(m.raw).hexdigest() == hashlib.sha256(spooled[qid]).hexdigest()


def test_log_lines_match_spec(ses_relay, fake):
    r = ses_relay()
    qid = submit(r, "alice@example.com", ["bob@example.net", "carol@example.org"])
    (m,) = wait_delivered(r, fake, 1)
    r.wait_log(rf"{qid}: removed")
    log = r.read_log()
    p = r"^sesrelay\[\d+\]: "
    frm = re.search(p + rf"{qid}: from=<alice@example\.com>, size=\d+, nrcpt=2(?: \(queue active\))?$",
                    log, re.M)
    assert frm, log
    tos = [re.search(p + sent_rx(qid, rc, attempts=1) + "$", log, re.M)
           for rc in ("bob@example.net", "carol@example.org")]
    assert all(tos), log
    assert {t.group(1) for t in tos} == {m.message_id}
    removed = re.search(p + rf"{qid}: removed$", log, re.M)
    assert removed and removed.start() > max(t.start() for t in tos) > frm.start()
    assert SECRET not in log and "Signature=" not in log and SECRET[:12] not in log


# --- splitting in calls of 50 ------------------------------------------------------

RCPTS_120 = [f"r{i:03d}@example.net" for i in range(120)]


def test_recipients_split_50_50_20(ses_relay, fake):
    r = ses_relay(relay_section="max_recipients = 200")
    qid = submit(r, "alice@example.com", RCPTS_120)
    msgs = wait_delivered(r, fake, 3)
    assert sorted(q.nrcpt for q in fake.send_requests()) == [20, 50, 50]
    assert len(msgs) == 3 and len({m.sha256 for m in msgs}) == 1
    assert rcpt_counts(msgs) == collections.Counter(RCPTS_120)
    r.wait_log(rf"{qid}: removed")
    assert log_count(r, rf"{qid}: to=<r\d{{3}}@example\.net>, {RELAY}, {DELAY}, attempts=1, "
                        r"status=sent") == 120


def test_chunk_rejected_bounces_only_that_chunk(ses_relay, fake):
    r = ses_relay(relay_section="max_recipients = 200")
    fake.fail_next(MESSAGE_REJECTED, match=lambda q: q.send_index == 2)
    qid = submit(r, "alice@example.com", RCPTS_120)
    wait_for(lambda: not queued(r) and fake.messages_to("alice@example.com"), 20,
             "the two good chunks delivered and a bounce for the rejected one", r, fake)
    rejected = [q for q in fake.send_requests() if q.status == 400]
    assert len(rejected) == 1 and rejected[0].nrcpt == 50
    bad = set(rejected[0].rcpts)
    originals = [m for m in fake.accepted() if not is_bounce(m)]
    assert rcpt_counts(originals) == collections.Counter(set(RCPTS_120) - bad)
    (b,) = fake.messages_to("alice@example.com")
    check_dsn(b, "alice@example.com", bad, diag_rx=r"MessageRejected|not verified")
    settle(r, fake, 2)
    assert len(fake.send_requests()) == 4, "3 chunks and one bounce, nothing re-sent"
    for rc in bad:
        assert re.search(bounced_rx(qid, rc), r.read_log()), rc
    r.wait_log(rf"{qid}: removed")


def test_chunk_deferred_retries_only_that_chunk(ses_relay, fake):
    r = ses_relay(relay_section="max_recipients = 200")
    fake.fail_next(UNAVAILABLE_503, match=lambda q: q.send_index == 2)
    qid = submit(r, "alice@example.com", RCPTS_120)
    msgs = wait_delivered(r, fake, 3, timeout=20)
    reqs = fake.send_requests()
    assert len(reqs) == 4, reqs
    failed = [q for q in reqs if q.status == 503]
    assert len(failed) == 1
    assert set(reqs[-1].rcpts) == set(failed[0].rcpts), "only the failed chunk is retried"
    assert rcpt_counts(msgs) == collections.Counter(RCPTS_120)
    rc = failed[0].rcpts[0]
    r.wait_log(deferred_rx(qid, rc, r"503\b"))
    r.wait_log(sent_rx(qid, rc, attempts=2))
    r.wait_log(rf"{qid}: removed")


# --- transient failures and throttling ---------------------------------------------

TRANSIENT = {"503": (UNAVAILABLE_503, r"503\b"), "500": (SERVER_500, r"500\b"),
             "502": (BAD_GATEWAY_502, r"502\b"), "reset": (RESET, r"")}


@pytest.mark.parametrize("kind", sorted(TRANSIENT))
def test_transient_error_then_sent(ses_relay, fake, kind):
    fault, text = TRANSIENT[kind]
    r = ses_relay()
    fake.fail_next(fault)
    qid = submit(r, "alice@example.com", ["bob@example.net"])
    (m,) = wait_delivered(r, fake, 1, timeout=15)
    assert [q.status for q in fake.send_requests()] == [0 if kind == "reset" else int(kind), 200]
    if kind == "reset" and re.search(sent_rx(qid, "bob@example.net", attempts=1), r.read_log()):
        # libcurl resends by itself when a *reused* keep-alive connection (here
        # the one GetAccount opened) is reset before any answer: still once.
        assert not re.search(rf"{qid}: .*status=deferred", r.read_log())
        return
    log = r.wait_log(deferred_rx(qid, "bob@example.net", text))
    sent = r.wait_log(sent_rx(qid, "bob@example.net", attempts=2))
    assert log.start() < sent.start()
    assert sent.group(1) == m.message_id
    assert not fake.messages_to("alice@example.com"), "no bounce for a transient error"


def test_throttling_429_retried_not_bounced(ses_relay, fake):
    r = ses_relay()
    fake.fail_next(THROTTLED_429, n=2)
    qid = submit(r, "alice@example.com", ["bob@example.net"])
    (m,) = wait_delivered(r, fake, 1, timeout=20)
    assert m.rcpts == ["bob@example.net"]
    assert [q.status for q in fake.send_requests()] == [429, 429, 200]
    r.wait_log(deferred_rx(qid, "bob@example.net",
                           r"429 TooManyRequestsException: Too Many Requests\)"))
    r.wait_log(sent_rx(qid, "bob@example.net"))
    assert log_count(r, r"status=bounced") == 0
    assert not fake.messages_to("alice@example.com")


def test_throttling_v1_retried_not_bounced(ses_relay, fake):
    r = ses_relay(api_version=1)
    fake.fail_next(THROTTLING)
    qid = submit(r, "alice@example.com", ["bob@example.net"])
    wait_delivered(r, fake, 1, timeout=20)
    r.wait_log(deferred_rx(qid, "bob@example.net",
                           r"400 Throttling: Maximum sending rate exceeded\.\)"))
    assert log_count(r, r"status=bounced") == 0


def test_daily_quota_held_not_bounced(ses_relay, fake):
    r = ses_relay()
    fake.fail_always(DAILY_QUOTA)
    qid = submit(r, "alice@example.com", ["bob@example.net"])
    fake.wait_until(lambda f: f.send_requests() and f.send_requests()[0].status == 400, 10)
    r.wait_log(deferred_rx(qid, "bob@example.net", r".*Daily message quota exceeded"))
    time.sleep(3)
    assert queued(r) == {qid}, "held, not dropped"
    assert log_count(r, r"status=bounced") == 0 and not fake.accepted()
    assert len(fake.send_requests()) <= 4, "quota exhausted: delivery is held, not hammered"


# --- permanent failures and bounces ------------------------------------------------

@pytest.mark.parametrize("fault", [MESSAGE_REJECTED, MAIL_FROM_NOT_VERIFIED],
                         ids=lambda f: f.code)
def test_permanent_error_bounces_dsn(ses_relay, fake, fault):
    r = ses_relay()
    fake.fail_always(fault, match=lambda q: "bob@example.net" in q.rcpts)
    qid = submit(r, "alice@example.com", ["bob@example.net"])
    (b,) = fake.wait_until(lambda f: f.messages_to("alice@example.com"), 15, "the bounce")
    rc = check_dsn(b, "alice@example.com", ["bob@example.net"],
                   diag_rx=re.escape(fault.code) + "|" + re.escape(fault.message[:20]))
    assert rc["bob@example.net"]["Diagnostic-Code"], "Diagnostic-Code carries SES's words"
    assert b"Subject: delivery test" in b.raw, "the DSN quotes the original's headers"
    wait_for(lambda: not queued(r), 10, "the original removed from the spool", r, fake)
    r.wait_log(bounced_rx(qid, "bob@example.net"))
    r.wait_log(rf"{qid}: removed")
    settle(r, fake, 1.5)
    assert len(fake.send_requests()) == 2, "the original once, the bounce once"


def test_no_bounce_for_null_sender(ses_relay, fake):
    r = ses_relay()
    fake.fail_always(MESSAGE_REJECTED)
    qid = submit(r, "", ["bob@example.net"])
    wait_for(lambda: not queued(r), 15, "the rejected message dropped", r, fake)
    r.wait_log(bounced_rx(qid, "bob@example.net"))
    settle(r, fake, 2)
    assert len(fake.send_requests()) == 1 and not fake.accepted()


def test_no_bounce_for_a_bounce(ses_relay, fake):
    r = ses_relay()
    fake.fail_always(MESSAGE_REJECTED)       # the bounce is rejected too
    submit(r, "alice@example.com", ["bob@example.net"])
    wait_for(lambda: len(fake.send_requests()) >= 2 and not queued(r), 15,
             "the original and its bounce both rejected, the queue empty", r, fake)
    settle(r, fake, 2.5)
    reqs = fake.send_requests()
    assert len(reqs) == 2, reqs
    assert reqs[1].rcpts == ["alice@example.com"] and is_bounce(reqs[1])
    assert not fake.accepted()


def test_no_bounce_without_bounce_from(ses_relay, fake):
    r = ses_relay(bounce_from="")
    fake.fail_always(MESSAGE_REJECTED)
    qid = submit(r, "alice@example.com", ["bob@example.net"])
    wait_for(lambda: not queued(r), 15, "the rejected message dropped", r, fake)
    r.wait_log(bounced_rx(qid, "bob@example.net"))
    settle(r, fake, 2)
    assert len(fake.send_requests()) == 1, "bounce_from empty: log only, no DSN"


def test_lifetime_expired_bounces(ses_relay, fake):
    r = ses_relay(retry_initial="1s", retry_max="2s", lifetime="6s")
    fake.down()
    t0 = time.time()
    qid = submit(r, "alice@example.com", ["bob@example.net"])
    r.wait_log(bounced_rx(qid, "bob@example.net", status=r"(?:bounced|expired)"), timeout=20)
    assert time.time() - t0 >= 5.5, "not before the lifetime is over"
    wait_for(lambda: qid not in queued(r), 5, "the expired message removed", r, fake)
    r.wait_log(rf"{qid}: removed")
    fake.up()
    (b,) = fake.wait_until(lambda f: f.messages_to("alice@example.com"), 15, "the bounce")
    check_dsn(b, "alice@example.com", ["bob@example.net"], status_rx=r"[45]\.4\.7",
              diag_rx=r"expired|in time|too long|lifetime")
    assert not fake.messages_to("bob@example.net"), "an expired message is not sent late"


# --- credentials and permissions: pause, never bounce ------------------------------

def test_access_denied_pauses_then_resumes(ses_relay, fake):
    r = ses_relay()
    fake.fail_always(ACCESS_DENIED)
    ids = submit_many(r, [("alice@example.com", [f"r{i}@example.net"], MSG) for i in range(3)])
    fake.wait_until(lambda f: any(q.status == 403 for q in f.send_requests()), 10)
    time.sleep(3)
    assert queued(r) == set(ids), "an operator error must not drop or bounce the queue"
    assert not fake.accepted() and log_count(r, r"status=bounced") == 0
    loud = log_count(r, r"(?m)^sesrelay\[\d+\]: (?:error|warning): .*(?:AccessDenied|403)")
    assert 1 <= loud <= 2, "logged loudly, once:\n" + r.read_log()[-3000:]
    fake.clear_faults()
    # The pause is probed again on the retry schedule, so within [queue]
    # retry_max (4 s here), not on a fixed timer of its own.
    msgs = wait_delivered(r, fake, 3, timeout=25)
    assert rcpt_counts(msgs) == collections.Counter(f"r{i}@example.net" for i in range(3))


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


# --- outages -------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["refuse", "reset"])
def test_endpoint_down_then_back_exactly_once(ses_relay, fake, mode):
    r = ses_relay(relay_section="max_recipients = 200")
    fake.down(mode)
    items = [("alice@example.com", [f"m{i}-r{j}@example.net" for j in range(1 + i % 3)], MSG)
             for i in range(8)]
    items.append(("carol@example.org", [f"big-{j}@example.net" for j in range(60)], MSG))
    ids = submit_many(r, items)
    wait_for(lambda: all(re.search(rf"{q}: to=<[^>]+>, {RELAY}, {DELAY}(?:, attempts=\d+)?, "
                                   r"status=deferred", r.read_log()) for q in ids),
             15, "every message deferred while the endpoint is down", r, fake)
    time.sleep(1)
    fake.up()
    msgs = wait_delivered(r, fake, 9, timeout=25)
    want = collections.Counter(rc for _, rcpts, _ in items for rc in rcpts)
    assert rcpt_counts(msgs) == want
    assert not fake.duplicates()
    assert not [m for m in msgs if is_bounce(m)]


def test_queued_mail_delivered_after_restart(ses_relay, fake):
    r = ses_relay()
    fake.down()
    ids = submit_many(r, [("alice@example.com", [f"r{i}@example.net"], MSG) for i in range(3)])
    r.stop()
    assert queued(r) == set(ids)
    fake.up()
    r.start(env=BASE_ENV)
    msgs = wait_delivered(r, fake, 3)
    assert rcpt_counts(msgs) == collections.Counter(f"r{i}@example.net" for i in range(3))


def test_sigterm_finishes_in_flight_without_resend(ses_relay, fake):
    r = ses_relay()
    fake.set_latency(2.0)
    submit(r, "alice@example.com", ["bob@example.net"])
    fake.wait_until(lambda f: f.send_requests(), 10)
    r.signal(signal.SIGTERM)
    r.proc.wait(12)
    r.log.close()
    assert len(fake.accepted()) == 1
    fake.set_latency(0)
    r.start(env=BASE_ENV)
    settle(r, fake, 3)
    assert len(fake.send_requests()) == 1, "the call SES answered is not made again"
    assert not queued(r)


# --- rate and concurrency ---------------------------------------------------------

def steady_rate(times, skip):
    t = sorted(times)[skip:]
    return (len(t) - 1) / (t[-1] - t[0])


@pytest.mark.parametrize("how", ["explicit", "auto"])
def test_rate_limit_holds(ses_relay, fake, how):
    if how == "explicit":
        r = ses_relay(rate="5")
    else:
        fake.set_account(max_send_rate=5)
        r = ses_relay(rate=None)
    ids = submit_many(r, [("alice@example.com", [f"r{i:02d}@example.net"], MSG)
                          for i in range(40)])
    msgs = wait_delivered(r, fake, 40, timeout=30)
    assert len(ids) == 40 and rcpt_counts(msgs) == collections.Counter(
        f"r{i:02d}@example.net" for i in range(40))
    ok = [q.time for q in fake.send_requests() if q.status == 200]
    rate = steady_rate(ok, skip=6)       # the bucket may start full: one second's worth
    notes = "\n".join(l for l in r.read_log().splitlines()
                      if re.search(r"(?i)rate|account|throttl", l))
    assert 4.5 <= rate <= 5.5, f"steady rate {rate:.2f}/s, want 5/s +-10%\n{notes}"
    if how == "auto":
        assert any(q.op == "account" for q in fake.requests), "auto reads GetAccount"


def test_rate_below_call_size_still_delivers(ses_relay, fake):
    r = ses_relay(rate="2")
    rcpts = [f"r{i:02d}@example.net" for i in range(50)]
    submit(r, "alice@example.com", rcpts)
    (m,) = wait_delivered(r, fake, 1, timeout=10)
    assert sorted(m.rcpts) == rcpts


def test_rate_debt_delays_next_call(ses_relay, fake):
    r = ses_relay(rate="10")
    submit_many(r, [("alice@example.com", [f"a{i:02d}@example.net" for i in range(50)], MSG),
                    ("alice@example.com", [f"b{i:02d}@example.net" for i in range(50)], MSG)])
    wait_delivered(r, fake, 2, timeout=20)
    t = sorted(q.time for q in fake.send_requests())
    assert len(t) == 2
    assert 3.0 <= t[1] - t[0] <= 12, f"second call {t[1] - t[0]:.2f}s after the first"


def test_concurrency_limit_respected(ses_relay, fake):
    r = ses_relay(concurrency=4)
    fake.set_latency(0.5)
    submit_many(r, [("alice@example.com", [f"r{i}@example.net"], MSG) for i in range(12)])
    wait_delivered(r, fake, 12, timeout=20)
    ev = sorted([(q.time, 1) for q in fake.send_requests()] +
                [(q.done, -1) for q in fake.send_requests()], key=lambda e: (e[0], e[1]))
    cur = peak = 0
    for _, d in ev:
        cur += d
        peak = max(peak, cur)
    assert 3 <= peak <= 4, f"{peak} SES calls in flight at once with concurrency = 4"


def test_connections_reused(ses_relay, fake):
    r = ses_relay()
    for i in range(5):
        submit(r, "alice@example.com", [f"r{i}@example.net"])
        wait_delivered(r, fake, i + 1)
    conns = {q.conn for q in fake.send_requests()}
    assert len(conns) <= 2, f"5 sequential calls used {len(conns)} connections"


# --- retry now ------------------------------------------------------------------

def _deferred_for_an_hour(ses_relay, fake):
    r = ses_relay(retry_initial="1h", retry_max="2h", lifetime="1d")
    fake.fail_next(UNAVAILABLE_503)
    qid = submit(r, "alice@example.com", ["bob@example.net"])
    r.wait_log(deferred_rx(qid, "bob@example.net", r"503\b"))
    settle(r, fake, 1.5)
    assert len(fake.send_requests()) == 1 and queued(r) == {qid}
    return r, qid


def test_sigusr1_flushes_deferred(ses_relay, fake):
    r, qid = _deferred_for_an_hour(ses_relay, fake)
    r.signal(signal.SIGUSR1)
    (m,) = wait_delivered(r, fake, 1, timeout=5)
    r.wait_log(sent_rx(qid, "bob@example.net", attempts=2))


def test_queue_flush_command(ses_relay, fake):
    r, qid = _deferred_for_an_hour(ses_relay, fake)
    p = subprocess.run([BIN, "-c", r.config, "queue", "flush"], capture_output=True,
                       timeout=10)
    assert p.returncode == 0, p.stderr
    wait_delivered(r, fake, 1, timeout=5)
