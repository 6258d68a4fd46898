"""Delivery end to end (SPEC sections 5 and 6), one scenario list for both
transports: every test here runs as [api] (tests/lib/fake_ses.py, the SES
HTTP API with SigV4 checked by botocore) and as [smtp]
(tests/lib/fake_ses_smtp.py, SES's SMTP interface: STARTTLS, AUTH, 50
recipients a transaction), through the common interface of
tests/lib/transports.py.  Mail is submitted over SMTP to the real binary.

Where a scenario has transport-specific flavours (the HTTP statuses of a
transient error, the stage an SMTP reply refuses), the test is parametrized
over each transport's own variants ([api-transient-500], [smtp-reject-mail]
...: transports.py's FAULTS map each to a fake's fault); where a
scenario cannot exist for one transport (SES's API has no per-recipient
verdict), it runs for the other only and says why.  What only one transport
has (SigV4, session tokens, API v1, the configuration set in the JSON; TLS
modes, certificates, AUTH mechanisms, pipelining, connection pooling details,
smtp-password) is in test_delivery.py and test_smtp_transport.py.

Every test is bounded: it polls with deadlines and never sleeps blindly,
except for short "nothing more happens" windows.  At teardown the fake must
have seen no protocol violation, no signature failure and no (message,
recipient) pair accepted twice, unless a test says otherwise.
"""
import collections
import hashlib
import re
import signal
import subprocess
import time

import pytest

import fake_ses_smtp
from relayharness import ASAN, BIN
from transports import (DELAY, binary_has_smtp, check_dsn, is_bounce, log_count,
                        make_transport, queued, rcpt_counts, received_prefix_only,
                        spooled_data, submit, submit_many, wait_for)

MSG = (b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nCc: carol@example.org\r\n"
       b"Subject: delivery test\r\nMessage-ID: <t1@example.com>\r\n\r\nhello\r\n")
# lines that dot-stuffing must get right on both legs (client -> relay -> SES)
DOTTY = b".\r\n..\r\n.leading dot\r\n...three\r\nmiddle . dot\r\n\r\n.\r\nlast line\r\n"


# --- fixtures ---------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return fake_ses_smtp.make_pki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture(params=["api", "smtp"])
def transport(request, pki):
    """The fake SES behind one transport (transports.py), started; checked
    for violations/duplicates/signature failures and stopped at teardown.
    Set .allow_duplicates in a test that provokes them on purpose."""
    if request.param == "smtp" and not binary_has_smtp():
        pytest.skip("the binary has no smtp transport wired in yet")
    t = make_transport(request.param, pki).start()
    yield t
    try:
        problems = t.problems()
        assert not problems, f"fake SES ({t.name}) saw:\n" + "\n".join(problems)
    finally:
        t.stop()


@pytest.fixture
def ses_relay(transport, relay_factory):
    """make(**config kwargs, relay_section=, start=) -> a Relay delivering
    through the transport under test.  The relays stop before the fake does."""
    def make(relay_section="", start=True, **kw):
        r = relay_factory(extra=transport.config(**kw), relay_section=relay_section,
                          start=False)
        if start:
            r.start(env=transport.env)
        return r
    return make


def variants(**per_transport):
    """Parametrize (transport, variant) over each transport's own variants."""
    return pytest.mark.parametrize(
        "transport,variant",
        [pytest.param(t, v, id=f"{t}-{v.replace('/', '-')}")
         for t, vs in per_transport.items() for v in vs],
        indirect=["transport"])


only_smtp = pytest.mark.parametrize("transport", ["smtp"], indirect=True)


# --- helpers ----------------------------------------------------------------

def wait_delivered(relay, t, n_messages, timeout=15):
    """Until the queue is empty and SES accepted at least n messages."""
    wait_for(lambda: not queued(relay) and len(t.delivered()) >= n_messages, timeout,
             f"{n_messages} message(s) delivered and the queue empty", relay, t)
    return t.delivered()


def delivered_to(t, rcpt):
    return [m for m in t.delivered() if rcpt.lower() in (r.lower() for r in m.rcpts)]


def settle(t, seconds=2.0):
    """Nothing more should happen: wait a quiet window."""
    before = len(t.calls())
    time.sleep(seconds)
    return before, len(t.calls())


def sent_rx(t, qid, rcpt, attempts=r"\d+"):
    return (rf"{qid}: to=<{re.escape(rcpt)}>, relay={t.relay_rx}, {DELAY}, attempts={attempts}, "
            rf"status=sent \(MessageId ([^)\s]+)\)")


def deferred_rx(t, qid, rcpt, text=""):
    return (rf"{qid}: to=<{re.escape(rcpt)}>, relay={t.relay_rx}, {DELAY}(?:, attempts=\d+)?, "
            rf"status=deferred \({text}")


def bounced_rx(t, qid, rcpt, status="bounced"):
    return (rf"{qid}: to=<{re.escape(rcpt)}>, relay={t.relay_rx}, {DELAY}(?:, attempts=\d+)?, "
            rf"status={status}")


def secrets_not_logged(t, relay):
    log = relay.read_log()
    for s in t.secrets():
        assert s not in log, f"{s[:6]}... in the log"


# --- delivered once, byte exact ------------------------------------------------

def test_delivered_once_byte_exact(transport, ses_relay):
    t = transport
    r = ses_relay()
    spooled = {}
    t.on_send(lambda call: spooled.update({q: spooled_data(r, q) for q in queued(r)}))
    body = (MSG + b"..two dots in the spool mean one\r\n8-bit: Gr\xc3\xbc\xc3\x9fe\r\n.\r\n"
            + DOTTY)
    rcpts = ["bob@example.net", "carol@example.org", "hidden@example.com"]
    qid = submit(r, "alice@example.com", rcpts, body)
    (m,) = wait_delivered(r, t, 1)
    assert m.raw == spooled[qid], "SES must get the spooled message byte for byte"
    assert m.raw.startswith(b"Received: from client.test (localhost[127.0.0.1])\r\n\tby relay.test "
                            b"(sesrelay) with ESMTP id " + qid.encode())
    received_prefix_only(m.raw, body)               # dot-stuffing round trip
    assert m.sender == "alice@example.com"
    assert sorted(m.rcpts) == sorted(rcpts), "destinations are the envelope recipients"
    assert b"hidden@" not in m.raw, "a Bcc-only recipient is in the envelope only"
    assert m.config_set is None
    assert len(t.calls()) == 1
    for rc in rcpts:
        got = r.wait_log(sent_rx(t, qid, rc, attempts=1))
        assert got.group(1) == m.message_id
    r.wait_log(rf"{qid}: removed")
    secrets_not_logged(t, r)
    if t.name == "api":
        assert m.native.api == "v2"
    else:
        # the SMTP session as SES wants it: TLS first, then AUTH, then the mail
        assert m.rcpts == rcpts, "RCPT TO in the envelope's order"
        assert m.native["tls"] in ("TLSv1.2", "TLSv1.3") and m.native["user"] == t.KEY
        [c] = t.fake.connections()
        assert c["commands"][:5] == ["EHLO", "STARTTLS", "EHLO", "AUTH PLAIN", "MAIL"], c
        assert any(o.startswith("SIZE=") for o in m.native["mail_options"]), m.native
        log = r.read_log()
        assert "AUTH PLAIN <secret>" in log or "AUTH PLAIN" not in log


def test_null_sender_has_no_from(transport, ses_relay):
    t = transport
    r = ses_relay()
    qid = submit(r, "", ["bob@example.net"], MSG)
    (m,) = wait_delivered(r, t, 1)
    assert m.sender == ""
    if t.name == "api":
        assert m.native.from_addr is None, "the null sender means no FromEmailAddress at all"
    else:
        assert t.calls()[0].native["mail_from"] == "", "MAIL FROM:<>"
    assert m.rcpts == ["bob@example.net"]
    r.wait_log(sent_rx(t, qid, "bob@example.net"))


def test_large_message_streamed_byte_exact(transport, ses_relay):
    """12 MB: streamed from the spool (base64'd and signed, or dot-stuffed)
    without damage and without holding it in memory."""
    t = transport
    r = ses_relay()
    spooled = {}
    t.on_send(lambda call: spooled.update({q: spooled_data(r, q) for q in queued(r)}))
    line = b"0123456789abcdefghijklmnopqrstuvwxyz.ABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789\r\n"
    body = (MSG + b".starts with a dot\r\n" + bytes(range(33, 33 + 76)) + b"\r\n"
            + line * (12 * 1024 * 1024 // len(line)))
    pid = r.proc.pid

    def hwm():
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) * 1024

    before = hwm()
    qid = submit(r, "alice@example.com", ["bob@example.net"], body)
    (m,) = wait_delivered(r, t, 1, timeout=60)
    assert len(m.raw) == len(spooled[qid]) and m.raw == spooled[qid]
    received_prefix_only(m.raw, body)
    assert hashlib.sha256(m.raw).digest() == hashlib.sha256(spooled[qid]).digest()
    if not ASAN:
        grown = hwm() - before
        assert grown < len(body) // 2, f"RSS peak grew by {grown} for a {len(body)} message"


def test_log_lines_match_spec(transport, ses_relay):
    t = transport
    r = ses_relay()
    qid = submit(r, "alice@example.com", ["bob@example.net", "carol@example.org"], MSG)
    (m,) = wait_delivered(r, t, 1)
    r.wait_log(rf"{qid}: removed")
    log = r.read_log()
    p = r"^sesrelay\[\d+\]: "
    frm = re.search(p + rf"{qid}: from=<alice@example\.com>, size=\d+, nrcpt=2(?: \(queue active\))?$",
                    log, re.M)
    assert frm, log
    tos = [re.search(p + sent_rx(t, qid, rc, attempts=1) + "$", log, re.M)
           for rc in ("bob@example.net", "carol@example.org")]
    assert all(tos), log
    assert {x.group(1) for x in tos} == {m.message_id}
    removed = re.search(p + rf"{qid}: removed$", log, re.M)
    assert removed and removed.start() > max(x.start() for x in tos) > frm.start()
    secrets_not_logged(t, r)


# --- splitting in calls of 50 ------------------------------------------------------

RCPTS_120 = [f"r{i:03d}@example.net" for i in range(120)]


def test_recipients_split_50_50_20(transport, ses_relay):
    t = transport
    r = ses_relay(relay_section="max_recipients = 200")
    qid = submit(r, "alice@example.com", RCPTS_120, MSG)
    msgs = wait_delivered(r, t, 3, timeout=30)
    assert sorted(c.nrcpt for c in t.calls()) == [20, 50, 50]
    assert len(msgs) == 3 and len({hashlib.sha256(m.raw).digest() for m in msgs}) == 1
    assert rcpt_counts(msgs) == collections.Counter(RCPTS_120)
    r.wait_log(rf"{qid}: removed")
    assert log_count(r, rf"{qid}: to=<r\d{{3}}@example\.net>, relay={t.relay_rx}, {DELAY}, "
                        r"attempts=1, status=sent") == 120


def test_chunk_rejected_bounces_only_that_chunk(transport, ses_relay):
    t = transport
    r = ses_relay(relay_section="max_recipients = 200")
    t.fail_next("reject", nth=2)
    qid = submit(r, "alice@example.com", RCPTS_120, MSG)
    wait_for(lambda: not queued(r) and delivered_to(t, "alice@example.com"), 20,
             "the two good chunks delivered and a bounce for the rejected one", r, t)
    rejected = [c for c in t.calls() if not c.ok]
    assert len(rejected) == 1 and rejected[0].nrcpt == 50
    assert rejected[0].code == t.code("reject")
    bad = set(rejected[0].rcpts)
    originals = [m for m in t.delivered() if not is_bounce(m)]
    assert rcpt_counts(originals) == collections.Counter(set(RCPTS_120) - bad)
    (b,) = delivered_to(t, "alice@example.com")
    check_dsn(b, "alice@example.com", bad, diag_rx=r"MessageRejected|not verified")
    settle(t, 2)
    assert len(t.calls()) == 4, "3 chunks and one bounce, nothing re-sent"
    for rc in bad:
        assert re.search(bounced_rx(t, qid, rc), r.read_log()), rc
    r.wait_log(rf"{qid}: removed")


def test_chunk_deferred_retries_only_that_chunk(transport, ses_relay):
    t = transport
    r = ses_relay(relay_section="max_recipients = 200")
    t.fail_next("transient", nth=2)
    qid = submit(r, "alice@example.com", RCPTS_120, MSG)
    msgs = wait_delivered(r, t, 3, timeout=20)
    calls = t.calls()
    assert len(calls) == 4, calls
    failed = [c for c in calls if not c.ok]
    assert len(failed) == 1 and failed[0].code == t.code("transient")
    assert set(calls[-1].rcpts) == set(failed[0].rcpts), "only the failed chunk is retried"
    assert rcpt_counts(msgs) == collections.Counter(RCPTS_120)
    rc = failed[0].rcpts[0]
    r.wait_log(deferred_rx(t, qid, rc, t.fault_rx("transient")))
    r.wait_log(sent_rx(t, qid, rc, attempts=2))
    r.wait_log(rf"{qid}: removed")


# SES's API has no per-recipient verdict: a call is accepted or refused whole
# (the chunk tests above).  Over SMTP each RCPT TO gets its own reply, so the
# same "only that part" promise holds for a single recipient: smtp only.

@only_smtp
def test_rcpt_rejected_bounces_only_that_recipient(transport, ses_relay):
    t = transport
    r = ses_relay()
    t.fake.inject("RCPT", "550 5.1.1 <gone@example.org>: no such user", n=1,
                  match=lambda a: a == "gone@example.org")
    qid = submit(r, "alice@example.com",
                 ["bob@example.net", "gone@example.org", "eve@example.com"], MSG)
    r.wait_log(bounced_rx(t, qid, "gone@example.org") + r" \(550 5\.1\.1 ")
    wait_for(lambda: not queued(r) and delivered_to(t, "alice@example.com"), 15,
             "the good recipients delivered and a bounce for the refused one", r, t)
    [m] = [m for m in t.delivered() if not is_bounce(m)]
    assert m.rcpts == ["bob@example.net", "eve@example.com"]
    assert log_count(r, rf"{qid}: .*status=bounced") == 1
    assert log_count(r, rf"{qid}: .*status=sent") == 2
    (b,) = delivered_to(t, "alice@example.com")
    check_dsn(b, "alice@example.com", ["gone@example.org"], diag_rx=r"550 5\.1\.1")


@only_smtp
def test_rcpt_deferred_retries_only_that_recipient(transport, ses_relay):
    t = transport
    r = ses_relay()
    t.fake.inject("RCPT", "451 4.3.0 try later", n=1, match=lambda a: a == "later@example.org")
    qid = submit(r, "alice@example.com", ["bob@example.net", "later@example.org"], MSG)
    msgs = wait_delivered(r, t, 2)
    assert [m.rcpts for m in msgs] == [["bob@example.net"], ["later@example.org"]]
    assert log_count(r, rf"{qid}: to=<later@example.org>.*status=deferred \(451 4\.3\.0") == 1
    assert log_count(r, rf"{qid}: to=<bob@example.net>.*status=sent") == 1
    r.wait_log(sent_rx(t, qid, "later@example.org", attempts=2))


# --- transient failures and throttling ---------------------------------------------

# api: the HTTP statuses SES and its load balancers answer, and a reset;
# smtp: 451 to the end of data or to MAIL, 421 (then the server hangs up),
# and a reset while the end of data waits for its answer.
@variants(api=["transient", "transient/500", "transient/502", "reset"],
          smtp=["transient", "transient/mail", "transient/421", "reset"])
def test_transient_error_then_sent(transport, ses_relay, variant):
    t = transport
    r = ses_relay()
    t.fail_next(variant)
    qid = submit(r, "alice@example.com", ["bob@example.net"], MSG)
    (m,) = wait_delivered(r, t, 1, timeout=15)
    assert [c.code for c in t.calls()] == [t.code(variant), t.ok_code]
    if (t.name == "api" and variant == "reset" and
            re.search(sent_rx(t, qid, "bob@example.net", attempts=1), r.read_log())):
        # libcurl resends by itself when a *reused* keep-alive connection (here
        # the one GetAccount opened) is reset before any answer: still once.
        assert not re.search(rf"{qid}: .*status=deferred", r.read_log())
        return
    log = r.wait_log(deferred_rx(t, qid, "bob@example.net", t.fault_rx(variant)))
    sent = r.wait_log(sent_rx(t, qid, "bob@example.net", attempts=2))
    assert log.start() < sent.start()
    assert sent.group(1) == m.message_id
    assert not delivered_to(t, "alice@example.com"), "no bounce for a transient error"


def test_throttling_retried_not_bounced(transport, ses_relay):
    t = transport
    r = ses_relay()
    t.fail_next("throttle", n=2)
    qid = submit(r, "alice@example.com", ["bob@example.net"], MSG)
    (m,) = wait_delivered(r, t, 1, timeout=20)
    assert m.rcpts == ["bob@example.net"]
    code = t.code("throttle")
    assert [c.code for c in t.calls()] == [code, code, t.ok_code]
    r.wait_log(deferred_rx(t, qid, "bob@example.net", t.fault_rx("throttle") + r"\)"))
    r.wait_log(r"SES is throttling us \(" + t.fault_rx("throttle"))
    r.wait_log(sent_rx(t, qid, "bob@example.net"))
    assert log_count(r, r"status=bounced") == 0
    assert not delivered_to(t, "alice@example.com")


def test_daily_quota_held_not_bounced(transport, ses_relay):
    t = transport
    r = ses_relay()
    t.fail_always("daily_quota")
    qid = submit(r, "alice@example.com", ["bob@example.net"], MSG)
    wait_for(lambda: t.calls() and t.calls()[0].code == t.code("daily_quota"), 10,
             "the call refused for the quota", r, t)
    r.wait_log(deferred_rx(t, qid, "bob@example.net", t.fault_rx("daily_quota")))
    r.wait_log(r"SES daily sending quota exhausted \(" + t.fault_rx("daily_quota"))
    time.sleep(3)
    assert queued(r) == {qid}, "held, not dropped"
    assert log_count(r, r"status=bounced") == 0 and not t.delivered()
    assert len(t.calls()) <= 4, "quota exhausted: delivery is held, not hammered"


# --- permanent failures and bounces ------------------------------------------------

# api: MessageRejected and MailFromDomainNotVerified (the whole call refused);
# smtp: 554 to the end of data, and 554 to MAIL FROM.
@variants(api=["reject", "reject/mail_from"], smtp=["reject", "reject/mail"])
def test_permanent_error_bounces_dsn(transport, ses_relay, variant):
    t = transport
    r = ses_relay()
    t.fail_always(variant, sender="alice@example.com")      # the original, not its bounce
    rcpts = ["bob@example.net", "carol@example.org"]
    qid = submit(r, "alice@example.com", rcpts, MSG)
    (b,) = wait_for(lambda: delivered_to(t, "alice@example.com"), 15, "the bounce", r, t)
    rc = check_dsn(b, "alice@example.com", rcpts, diag_rx=t.fault_rx(variant))
    assert rc["bob@example.net"]["Diagnostic-Code"], "Diagnostic-Code carries SES's words"
    assert b"Subject: delivery test" in b.raw, "the DSN quotes the original's headers"
    wait_for(lambda: not queued(r), 10, "the original removed from the spool", r, t)
    for x in rcpts:
        r.wait_log(bounced_rx(t, qid, x) + r" \(" + t.fault_rx(variant))
    r.wait_log(rf"{qid}: removed")
    settle(t, 1.5)
    calls = t.calls()
    assert len(calls) == 2, f"the original once, the bounce once: {calls}"
    assert not calls[0].ok and calls[0].code == t.code(variant) and calls[1].ok


def test_no_bounce_for_null_sender(transport, ses_relay):
    t = transport
    r = ses_relay()
    t.fail_always("reject")
    qid = submit(r, "", ["bob@example.net"], MSG)
    wait_for(lambda: not queued(r), 15, "the rejected message dropped", r, t)
    r.wait_log(bounced_rx(t, qid, "bob@example.net"))
    settle(t, 2)
    assert len(t.calls()) == 1 and not t.delivered()


def test_no_bounce_for_a_bounce(transport, ses_relay):
    t = transport
    r = ses_relay()
    t.fail_always("reject")       # the bounce is rejected too
    submit(r, "alice@example.com", ["bob@example.net"], MSG)
    wait_for(lambda: len(t.calls()) >= 2 and not queued(r), 15,
             "the original and its bounce both rejected, the queue empty", r, t)
    settle(t, 2.5)
    calls = t.calls()
    assert len(calls) == 2, calls
    assert calls[1].rcpts == ["alice@example.com"] and is_bounce(calls[1])
    assert not t.delivered()


def test_no_bounce_without_bounce_from(transport, ses_relay):
    t = transport
    r = ses_relay(bounce_from="")
    t.fail_always("reject")
    qid = submit(r, "alice@example.com", ["bob@example.net"], MSG)
    wait_for(lambda: not queued(r), 15, "the rejected message dropped", r, t)
    r.wait_log(bounced_rx(t, qid, "bob@example.net"))
    r.wait_log(rf"{qid}: no bounce sent to <alice@example.com>: \[queue\] bounce_from is not set")
    settle(t, 2)
    assert len(t.calls()) == 1, "bounce_from empty: log only, no DSN"


def test_lifetime_expired_bounces(transport, ses_relay):
    t = transport
    # smtp: after failed connections no new one is tried for 1 s, 2, 4, 8 ...
    # (the outage's connect back-off).  The bounce has the same short lifetime
    # and must outlive the back-off left when the original expires: with 6 s
    # that back-off may be 8 s (the connect at ~7 s), with 10 s it ends at ~15 s,
    # well inside the bounce's lifetime (expiry ~11 s + 10 s).
    lifetime = 6 if t.name == "api" else 10
    r = ses_relay(retry_initial="1s", retry_max="2s", lifetime=f"{lifetime}s")
    t.down()
    t0 = time.time()
    qid = submit(r, "alice@example.com", ["bob@example.net"], MSG)
    r.wait_log(bounced_rx(t, qid, "bob@example.net", status=r"(?:bounced|expired)"),
               timeout=lifetime + 14)
    assert time.time() - t0 >= lifetime - 0.5, "not before the lifetime is over"
    wait_for(lambda: qid not in queued(r), 5, "the expired message removed", r, t)
    r.wait_log(rf"{qid}: removed")
    t.up()
    (b,) = wait_for(lambda: delivered_to(t, "alice@example.com"), 25, "the bounce", r, t)
    check_dsn(b, "alice@example.com", ["bob@example.net"], status_rx=r"[45]\.4\.7",
              diag_rx=r"expired|in time|too long|lifetime")
    assert not delivered_to(t, "bob@example.net"), "an expired message is not sent late"


# --- credentials and permissions: pause, never bounce ------------------------------

def test_access_denied_pauses_then_resumes(transport, ses_relay):
    t = transport
    r = ses_relay()
    t.fail_always("access_denied")
    ids = submit_many(r, [("alice@example.com", [f"r{i}@example.net"], MSG) for i in range(3)])
    wait_for(lambda: any(c.code == t.code("access_denied") for c in t.calls()), 10,
             "a call refused for access", r, t)
    time.sleep(3)
    assert queued(r) == set(ids), "an operator error must not drop or bounce the queue"
    assert not t.delivered() and log_count(r, r"status=bounced") == 0
    loud = log_count(r, r"(?m)^sesrelay\[\d+\]: (?:error|warning): .*" + t.fault_rx("access_denied"))
    assert 1 <= loud <= 2, "logged loudly, once:\n" + r.read_log()[-3000:]
    r.wait_log(r"SES refused the request: " + t.fault_rx("access_denied") +
               r".*Delivery is paused and nothing is bounced")
    t.clear_faults()
    # The pause is probed again on the retry schedule, so within [queue]
    # retry_max (2 s here), not on a fixed timer of its own.
    msgs = wait_delivered(r, t, 3, timeout=25)
    assert rcpt_counts(msgs) == collections.Counter(f"r{i}@example.net" for i in range(3))
    r.wait_log(r"SES accepts our requests again: delivery resumed")


# --- outages -------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["refuse", "reset"])
def test_endpoint_down_then_back_exactly_once(transport, ses_relay, mode):
    t = transport
    r = ses_relay(relay_section="max_recipients = 200")
    t.down(mode)
    items = [("alice@example.com", [f"m{i}-r{j}@example.net" for j in range(1 + i % 3)], MSG)
             for i in range(8)]
    items.append(("carol@example.org", [f"big-{j}@example.net" for j in range(60)], MSG))
    ids = submit_many(r, items)
    wait_for(lambda: all(re.search(rf"{q}: to=<[^>]+>, relay={t.relay_rx}, {DELAY}"
                                   r"(?:, attempts=\d+)?, status=deferred", r.read_log())
                         for q in ids),
             15, "every message deferred while the endpoint is down", r, t)
    if t.name == "smtp" and mode == "refuse":
        # a dead server costs neither a connection storm nor a pile-up: no new
        # connection for 1 s, doubling, and deliveries meanwhile fail at once
        r.wait_log(r"status=deferred \(cannot connect to localhost\[[0-9a-f.:]+\]:\d+: "
                   r"Connection refused")
        r.wait_log(r"no new connection for 1 s")
        r.wait_log(r"status=deferred \(.*\(next connection attempt in \d+ s\)")
        r.wait_log(r"no new connection for [248] s", timeout=15)
    time.sleep(1)
    t.up()
    msgs = wait_delivered(r, t, 9, timeout=40)
    want = collections.Counter(rc for _, rcpts, _ in items for rc in rcpts)
    assert rcpt_counts(msgs) == want
    assert not [m for m in msgs if is_bounce(m)]
    if t.name == "smtp" and mode == "refuse":
        r.wait_log(r"ses-smtp\[localhost\]: connected again")


def test_queued_mail_delivered_after_restart(transport, ses_relay):
    t = transport
    r = ses_relay()
    t.down()
    ids = submit_many(r, [("alice@example.com", [f"r{i}@example.net"], MSG) for i in range(3)])
    r.stop()
    assert queued(r) == set(ids)
    t.up()
    r.start(env=t.env)
    msgs = wait_delivered(r, t, 3)
    assert rcpt_counts(msgs) == collections.Counter(f"r{i}@example.net" for i in range(3))


# short: SES answers within the shutdown grace (5 s): the relay waits for it
# and the answered call is never made again.  long: SES takes longer than the
# grace: the relay leaves anyway, on time, and the message stays queued.
@pytest.mark.parametrize("latency", ["short", "long"])
def test_sigterm_with_delivery_in_flight(transport, ses_relay, latency):
    t = transport
    r = ses_relay()
    t.set_latency(2.0 if latency == "short" else 20)
    t.allow_duplicates = latency == "long"
    submit(r, "alice@example.com", ["bob@example.net"], MSG)
    wait_for(lambda: any(c.raw is not None for c in t.calls()), 10,
             "the message on its way to SES", r, t)
    t0 = time.monotonic()
    r.signal(signal.SIGTERM)
    assert r.proc.wait(15) == 0
    r.log.close()
    if latency == "long":
        assert time.monotonic() - t0 < 10
        assert len(queued(r)) == 1, "still queued: SES never answered"
        assert re.search(r"shutdown: 1 SES call\(s\) still in flight abandoned", r.read_log())
        return
    assert len(t.delivered()) == 1
    t.set_latency(0)
    r.start(env=t.env)
    settle(t, 3)
    assert len(t.calls()) == 1, "the call SES answered is not made again"
    assert not queued(r)


# --- rate and concurrency ---------------------------------------------------------

def steady_rate(times, skip):
    x = sorted(times)[skip:]
    return (len(x) - 1) / (x[-1] - x[0])


# auto: the rate is SES's MaxSendRate from GetAccount, which only the API has
# (the smtp transport learns nothing up front: it adapts to throttling replies).
@variants(api=["explicit", "auto"], smtp=["explicit"])
def test_rate_limit_holds(transport, ses_relay, variant):
    t = transport
    if variant == "explicit":
        r = ses_relay(rate="10")
    else:
        t.fake.set_account(max_send_rate=10)
        r = ses_relay(rate=None)
    ids = submit_many(r, [("alice@example.com", [f"r{i:02d}@example.net"], MSG)
                          for i in range(40)])
    msgs = wait_delivered(r, t, 40, timeout=30)
    assert len(ids) == 40 and rcpt_counts(msgs) == collections.Counter(
        f"r{i:02d}@example.net" for i in range(40))
    ok = [c.time for c in t.calls() if c.ok]
    rate = steady_rate(ok, skip=11)      # the bucket may start full: one second's worth
    notes = "\n".join(x for x in r.read_log().splitlines()
                      if re.search(r"(?i)rate|account|throttl", x))
    assert 9.0 <= rate <= 11.0, f"steady rate {rate:.2f}/s, want 10/s +-10%\n{notes}"
    if variant == "auto":
        assert any(q.op == "account" for q in t.fake.requests), "auto reads GetAccount"


def test_rate_below_call_size_still_delivers(transport, ses_relay):
    t = transport
    r = ses_relay(rate="2")
    rcpts = [f"r{i:02d}@example.net" for i in range(50)]
    submit(r, "alice@example.com", rcpts, MSG)
    (m,) = wait_delivered(r, t, 1, timeout=10)
    assert sorted(m.rcpts) == rcpts


def test_rate_debt_delays_next_call(transport, ses_relay):
    t = transport
    r = ses_relay(rate="10")
    submit_many(r, [("alice@example.com", [f"a{i:02d}@example.net" for i in range(50)], MSG),
                    ("alice@example.com", [f"b{i:02d}@example.net" for i in range(50)], MSG)])
    wait_delivered(r, t, 2, timeout=20)
    x = sorted(c.time for c in t.calls())
    assert len(x) == 2
    assert 3.0 <= x[1] - x[0] <= 12, f"second call {x[1] - x[0]:.2f}s after the first"


def test_concurrency_limit_respected(transport, ses_relay):
    t = transport
    r = ses_relay(concurrency=4)
    t.set_latency(0.5)
    submit_many(r, [("alice@example.com", [f"r{i}@example.net"], MSG) for i in range(12)])
    wait_delivered(r, t, 12, timeout=20)
    peak = t.peak_in_flight()
    assert 3 <= peak <= 4, f"{peak} SES calls in flight at once with concurrency = 4"
    if t.name == "smtp":
        # one connection per delivery in flight, kept for the next: never more
        conns = t.fake.connections()
        assert len(conns) <= 4, conns


def test_connections_reused(transport, ses_relay):
    t = transport
    r = ses_relay()
    for i in range(5):
        submit(r, "alice@example.com", [f"r{i}@example.net"], MSG)
        wait_delivered(r, t, i + 1)
    conns = t.send_connections()
    if t.name == "api":
        # libcurl's pool: the GetAccount connection may or may not be the one
        assert len(conns) <= 2, f"5 sequential calls used {len(conns)} connections"
    else:
        [c] = t.fake.connections()
        assert c["messages"] == 5 and c["commands"].count("AUTH PLAIN") == 1, c
        assert "RSET" not in c["commands"], c  # only after a failed transaction


# --- retry now ------------------------------------------------------------------

def deferred_for_an_hour(t, ses_relay):
    r = ses_relay(retry_initial="1h", retry_max="2h", lifetime="1d")
    t.fail_next("transient")
    qid = submit(r, "alice@example.com", ["bob@example.net"], MSG)
    r.wait_log(deferred_rx(t, qid, "bob@example.net", t.fault_rx("transient")))
    settle(t, 1.5)
    assert len(t.calls()) == 1 and queued(r) == {qid}
    return r, qid


def test_sigusr1_flushes_deferred(transport, ses_relay):
    t = transport
    r, qid = deferred_for_an_hour(t, ses_relay)
    r.signal(signal.SIGUSR1)
    wait_delivered(r, t, 1, timeout=5)
    r.wait_log(sent_rx(t, qid, "bob@example.net", attempts=2))


def test_queue_flush_command(transport, ses_relay):
    t = transport
    r, qid = deferred_for_an_hour(t, ses_relay)
    p = subprocess.run([BIN, "-c", r.config, "queue", "flush"], capture_output=True,
                       timeout=10)
    assert p.returncode == 0, p.stderr
    wait_delivered(r, t, 1, timeout=5)
    r.wait_log(sent_rx(t, qid, "bob@example.net", attempts=2))
