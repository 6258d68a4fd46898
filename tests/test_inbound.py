"""Receiving (issue 7): sesrelay forwards the mail SES stored in an S3 bucket
to the owner's inbox, as aws-lambda-ses-forwarder does, without a Lambda.

The bucket is the `s3rver` npm package (it verifies the relay's S3 SigV4
signatures), reached through tests/lib/s3proxy.py when a test must make S3
fail; the sender is tests/lib/fake_ses.py (botocore-verified SES).  Every
test checks what SES was given (headers rewritten, recipients mapped), what
is left in the bucket, and that nothing was sent twice.
"""
import email
import email.policy
import os
import re
import signal
import time

import pytest

import fake_ses
from fake_ses import FakeSES
from relayharness import ASAN
from s3proxy import S3Proxy

s3rver = pytest.importorskip("s3rver")

REGION = "us-east-1"
BUCKET = "inbound-mail"
FROM = "forwarder@example.com"
ENV = {"AWS_EC2_METADATA_DISABLED": "true",
       "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
       "AWS_CONFIG_FILE": "/nonexistent/config"}


def ses_stored(rcpt="me@example.com", frm='"Bob Sender" <bob@sender.test>', subject="Hello",
               body=b"Hi there.\r\n", spam="PASS", virus="PASS", to=None, extra=b""):
    """A message as SES's receipt rule stores it: SES's Return-Path,
    Received (with the envelope recipient) and X-SES-* fields on top of the
    sender's message, DKIM-signed by the sender."""
    to = to or rcpt
    head = (
        "Return-Path: <bob@sender.test>\r\n"
        "Received: from mail-ej1-f41.google.com (mail-ej1-f41.google.com [209.85.218.41])\r\n"
        f" by inbound-smtp.us-east-1.amazonaws.com with SMTP id 8vfdqpuc5ln0u3ijdk7ngkq4\r\n"
        f" for {rcpt};\r\n Thu, 01 Jun 2023 01:02:03 +0000 (UTC)\r\n"
        "X-SES-Spam-Verdict: " + spam + "\r\n"
        "X-SES-Virus-Verdict: " + virus + "\r\n"
        "Received-SPF: pass (spfCheck: domain of sender.test designates 209.85.218.41)\r\n"
        "X-SES-RECEIPT: AEFBQUFBQUFBQUFHbG1hYWxzZ1lTTkpxcnZXZm9DTTR4RWlYUGQ0TmJpSlRIbUhDZ3BO\r\n"
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=sender.test; s=s1;\r\n"
        "\th=from:to:subject; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
        "\tb=dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZQ==\r\n"
        f"From: {frm}\r\n"
        f"To: {to}\r\n"
        f"Subject: {subject}\r\n"
        "Message-ID: <orig-1@sender.test>\r\n"
        "Date: Thu, 01 Jun 2023 01:02:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
    ).encode() + extra + b"\r\n"
    return head + body


@pytest.fixture
def fake():
    f = FakeSES(region=REGION).start()
    yield f
    try:
        assert not f.sig_failures, f.sig_failures
        assert not f.violations, f.violations
        assert not f.duplicates(), "sent twice: %r" % f.duplicates()
    finally:
        f.stop()


@pytest.fixture
def bucket(tmp_path):
    s = s3rver.S3rver(str(tmp_path / "s3")).start()
    s.create_bucket(BUCKET)
    yield s
    s.stop()


@pytest.fixture
def proxy(bucket):
    p = S3Proxy(bucket.endpoint).start()
    yield p
    p.stop()


def inbound_relay(relay_factory, fake, endpoint, maps=("@example.com me@gmail.test",),
                  extra="", start=True):
    lines = ["[ses]", "transport = api", f"region = {REGION}", f"endpoint = {fake.url}",
             f"access_key_id = {s3rver.ACCESS_KEY}", f"secret_access_key = {s3rver.SECRET_KEY}",
             "max_send_rate = 1000", "[queue]", "retry_initial = 1s", "retry_max = 2s",
             "[inbound]", f"bucket = {BUCKET}", f"endpoint = {endpoint}", "poll_interval = 1s",
             f"from_address = {FROM}"]
    lines += [f"map = {m}" for m in maps]
    fake.add_credentials(s3rver.ACCESS_KEY, s3rver.SECRET_KEY)
    r = relay_factory(extra="\n".join(lines) + "\n" + extra, start=False)
    if start:
        r.start(env=ENV)
    return r


def wait_sent(fake, n, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(fake.accepted()) >= n:
            return fake.accepted()
        time.sleep(0.05)
    raise AssertionError(f"{len(fake.accepted())} of {n} messages reached SES")


def wait_gone(bucket, key, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if key not in bucket.keys(BUCKET):
            return
        time.sleep(0.05)
    raise AssertionError(f"{key} still in the bucket: {bucket.keys(BUCKET)}")


def parsed(raw):
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def test_forwarded_once_with_rewritten_headers(relay_factory, fake, bucket):
    bucket.put(BUCKET, "mail/abc123", ses_stored())
    r = inbound_relay(relay_factory, fake, bucket.endpoint,
                      extra="subject_prefix = [fwd]\nprefix = mail/\n")
    m = wait_sent(fake, 1)[0]
    assert m.rcpts == ["me@gmail.test"]
    msg = parsed(m.raw)
    assert msg["From"] == '"Bob Sender" <forwarder@example.com>'
    assert msg["Reply-To"] == '"Bob Sender" <bob@sender.test>'
    assert msg["Subject"] == "[fwd] Hello"
    for gone in ("DKIM-Signature", "Return-Path", "Message-ID", "Sender"):
        assert msg[gone] is None, gone
    assert msg["To"] == "me@example.com"
    assert msg["X-SES-Spam-Verdict"] == "PASS"
    assert m.raw.endswith(b"\r\n\r\nHi there.\r\n")
    assert b"\r\n\tb=dGhpcyBp" not in m.raw        # the folded DKIM lines went too
    wait_gone(bucket, "mail/abc123")
    log = r.wait_log(r"(\w{10}): inbound: s3://inbound-mail/mail/abc123 from=<bob@sender\.test> "
                     r"to=<me@example\.com> -> <me@gmail\.test>").group(0)
    r.wait_log(r"to=<me@gmail\.test>, relay=ses-api\[us-east-1\].*status=sent")
    time.sleep(2.5)                                  # two more polls: nothing new
    assert len(fake.accepted()) == 1, log
    assert not [k for k in bucket.keys(BUCKET) if not k.startswith("held/")]


def test_map_semantics_and_name_at_address(relay_factory, fake, bucket):
    bucket.put(BUCKET, "a", ses_stored(rcpt="info@example.com"))
    bucket.put(BUCKET, "b", ses_stored(rcpt="sales@other.test"))
    bucket.put(BUCKET, "c", ses_stored(rcpt="random@elsewhere.test"))
    inbound_relay(relay_factory, fake, bucket.endpoint,
                  maps=("info@example.com boss@gmail.test, me@gmail.test",
                        "sales ops@gmail.test", "@ catchall@gmail.test"),
                  extra="from_format = name_at_address\n")
    sent = {tuple(m.rcpts): parsed(m.raw) for m in wait_sent(fake, 3)}
    assert set(sent) == {("boss@gmail.test", "me@gmail.test"), ("ops@gmail.test",),
                         ("catchall@gmail.test",)}
    assert sent[("ops@gmail.test",)]["From"] == \
        '"Bob Sender at bob@sender.test" <forwarder@example.com>'


def test_more_than_50_destinations(relay_factory, fake, bucket):
    """60 original recipients (To, no SES Received line) mapped one to one:
    one message, delivered in two SES calls of 50 and 10."""
    rcpts = [f"user{i:02d}@example.com" for i in range(60)]
    maps = [f"user{i:02d}@example.com dest{i:02d}@gmail.test" for i in range(60)]
    raw = ses_stored(rcpt="x", to=", ".join(rcpts))
    raw = re.sub(rb"Received: .*?\(UTC\)\r\n", b"", raw, flags=re.S)
    bucket.put(BUCKET, "many", raw)
    r = inbound_relay(relay_factory, fake, bucket.endpoint, maps=maps)
    sent = wait_sent(fake, 2)
    got = sorted(x for m in sent for x in m.rcpts)
    assert got == sorted(f"dest{i:02d}@gmail.test" for i in range(60))
    assert sorted(len(m.rcpts) for m in sent) == [10, 50]
    wait_gone(bucket, "many")


def test_failing_verdicts_held_not_forwarded(relay_factory, fake, bucket):
    from relayharness import free_port
    from test_metrics import scrape
    bucket.put(BUCKET, "spam", ses_stored(spam="FAIL"))
    bucket.put(BUCKET, "virus", ses_stored(virus="FAIL"))
    bucket.put(BUCKET, "good", ses_stored())
    hport = free_port()
    r = inbound_relay(relay_factory, fake, bucket.endpoint,
                      extra=f"[http]\naddress = 127.0.0.1:{hport}\n")
    wait_sent(fake, 1)
    r.wait_log(r"inbound: s3://inbound-mail/spam: held \(moved to held/\): "
               r"X-SES-Spam-Verdict: FAIL; from=<bob@sender\.test>")
    r.wait_log(r"inbound: s3://inbound-mail/virus: held \(moved to held/\): "
               r"X-SES-Virus-Verdict: FAIL")
    deadline = time.time() + 10
    while time.time() < deadline and sorted(bucket.keys(BUCKET)) != ["held/spam", "held/virus"]:
        time.sleep(0.05)
    assert sorted(bucket.keys(BUCKET)) == ["held/spam", "held/virus"]
    time.sleep(2.5)
    assert len(fake.accepted()) == 1                 # held ones never, even later
    m = scrape(hport)
    assert m["sesrelay_inbound_forwarded_total"] == 1
    assert m["sesrelay_inbound_held_total"] == 2
    assert m["sesrelay_inbound_dropped_total"] == 0


def test_unmapped_recipient_held(relay_factory, fake, bucket):
    bucket.put(BUCKET, "stray", ses_stored(rcpt="who@unknown.test"))
    r = inbound_relay(relay_factory, fake, bucket.endpoint)
    r.wait_log(r"inbound: s3://inbound-mail/stray: held \(moved to held/\): "
               r"no map entry for <who@unknown\.test>")
    time.sleep(1.5)
    assert fake.accepted() == []


def test_delete_after_move_keeps_a_copy(relay_factory, fake, bucket):
    bucket.put(BUCKET, "k1", ses_stored())
    inbound_relay(relay_factory, fake, bucket.endpoint, extra="delete_after = move\n")
    wait_sent(fake, 1)
    deadline = time.time() + 10
    while time.time() < deadline and bucket.keys(BUCKET) != ["done/k1"]:
        time.sleep(0.05)
    assert bucket.keys(BUCKET) == ["done/k1"]
    assert bucket.get(BUCKET, "done/k1") == ses_stored()


def test_large_message_streamed(relay_factory, fake, bucket):
    """25 MB with a base64 attachment: forwarded byte-exact (past the
    rewritten headers) while the relay's memory stays small."""
    import base64
    blob = base64.encodebytes(os.urandom(18 * 1024 * 1024)).replace(b"\n", b"\r\n")
    body = (b"--b1\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n--b1\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=big.bin\r\n\r\n" + blob + b"--b1--\r\n")
    raw = ses_stored(body=body).replace(b"Content-Type: text/plain; charset=utf-8",
                                        b'Content-Type: multipart/mixed; boundary="b1"')
    assert len(raw) > 24 * 1024 * 1024
    bucket.put(BUCKET, "big", raw)
    r = inbound_relay(relay_factory, fake, bucket.endpoint)
    m = wait_sent(fake, 1, timeout=120)[0]
    assert m.raw.split(b"\r\n\r\n", 1)[1] == body
    wait_gone(bucket, "big", timeout=30)
    with open(f"/proc/{r.proc.pid}/status") as f:
        hwm = int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1))
    print(f"peak RSS {hwm} kB for a {len(raw)} byte object")
    if not ASAN:
        # less than the object itself: it was never held whole (measured: ~12 MB)
        assert hwm < 24 * 1024, f"peak RSS {hwm} kB for a {len(raw)} byte object"


def test_crash_after_queueing_before_delete_forwards_once(relay_factory, fake, bucket, proxy):
    """The object is queued, S3 refuses the delete, the relay is killed -9;
    after a restart the object is deleted and the message sent exactly once."""
    fake.down("refuse")                               # keep the message queued
    proxy.fail("DELETE", 503)
    bucket.put(BUCKET, "crash1", ses_stored())
    r = inbound_relay(relay_factory, fake, proxy.url)
    r.wait_log(r"inbound: s3://inbound-mail/crash1 from=")
    r.wait_log(r"the message is queued but the object stays in the bucket")
    assert "crash1" in bucket.keys(BUCKET)
    r.kill9()
    markers = os.listdir(os.path.join(r.spool, "inbound"))
    assert len(markers) == 1
    proxy.clear()
    fake.up()
    r.start(env=ENV)
    wait_sent(fake, 1)
    wait_gone(bucket, "crash1")
    time.sleep(2.5)
    assert len(fake.accepted()) == 1
    assert os.listdir(os.path.join(r.spool, "inbound")) == []


def test_recovery_of_pending_markers(relay_factory, fake, bucket, proxy):
    """The two crash points around the commit, reproduced on disk: a
    "pending" marker with its queue file (committed, not yet recorded) is
    delivered once and its object deleted; a "pending" marker without a queue
    file (never committed) is dropped and the object fetched again."""
    fake.down("refuse")
    proxy.fail("DELETE", 503)
    bucket.put(BUCKET, "p1", ses_stored(subject="one"))
    r = inbound_relay(relay_factory, fake, proxy.url)
    r.wait_log(r"inbound: s3://inbound-mail/p1 from=")
    r.wait_log(r"the message is queued but the object stays in the bucket")
    r.kill9()
    inbound = os.path.join(r.spool, "inbound")
    (mid,) = os.listdir(inbound)
    with open(os.path.join(inbound, mid)) as f:
        text = f.read()
    assert text.startswith("queued\n")
    with open(os.path.join(inbound, mid), "w") as f:
        f.write("pending" + text[len("queued"):])   # crash before step 4 was durable
    # and an object whose commit never happened: marker, but no queue file
    bucket.put(BUCKET, "p2", ses_stored(subject="two"))
    with open(os.path.join(inbound, "0000000000"), "w") as f:
        f.write("pending\np2\netag\n")
    proxy.clear()
    fake.up()
    r.start(env=ENV)
    sent = wait_sent(fake, 2)
    wait_gone(bucket, "p1")
    wait_gone(bucket, "p2")
    time.sleep(2.5)
    subjects = sorted(parsed(m.raw)["Subject"] for m in fake.accepted())
    assert subjects == ["one", "two"]
    r.wait_log(r"inbound: s3://inbound-mail/p2 was not queued before the stop")
    assert os.listdir(inbound) == []


def test_s3_outage_retried(relay_factory, fake, bucket, proxy):
    proxy.fail("GET", 503)
    bucket.put(BUCKET, "o1", ses_stored())
    r = inbound_relay(relay_factory, fake, proxy.url)
    r.wait_log(r"inbound: cannot list s3://inbound-mail/")
    time.sleep(1.5)
    assert fake.accepted() == []
    proxy.clear()
    wait_sent(fake, 1)
    r.wait_log(r"inbound: s3://inbound-mail/ can be listed again")
    wait_gone(bucket, "o1")


def test_wrong_secret_is_a_clear_operator_error(relay_factory, fake, bucket):
    bucket.put(BUCKET, "w1", ses_stored())
    r = inbound_relay(relay_factory, fake, bucket.endpoint, start=False)
    with open(r.config) as f:
        cfg = f.read().replace(f"secret_access_key = {s3rver.SECRET_KEY}",
                               "secret_access_key = wrong")
    with open(r.config, "w") as f:
        f.write(cfg)
    fake.add_credentials(s3rver.ACCESS_KEY, "wrong")
    r.start(env=ENV)
    r.wait_log(r"inbound: cannot list s3://inbound-mail/: .*SignatureDoesNotMatch")
    assert "w1" in bucket.keys(BUCKET)


def test_config_errors(relay_factory, tmp_path):
    import subprocess
    from relayharness import BIN
    base = ("[relay]\nspool = %s\n[listen:l]\naddress = 127.0.0.1:2525\n"
            "[ses]\nregion = us-east-1\n" % (tmp_path / "sp"))
    cases = [
        ("[inbound]\nbucket = b-1\nmap = @ a@b.test\n", "needs from_address"),
        ("[inbound]\nfrom_address = f@x.test\nmap = @ a@b.test\n", "needs bucket"),
        ("[inbound]\nbucket = b-1\nfrom_address = f@x.test\n", "at least one map entry"),
        ("[inbound]\nbucket = Bad_Bucket\n", "S3 bucket name"),
        ("[inbound]\nbucket = b-1\nfrom_address = f@x.test\nmap = @ not-an-address\n", "map"),
        ("[inbound]\nbucket = b-1\nfrom_address = f@x.test\nmap = @ a@b.test\nmap = @ c@d.test\n",
         "map"),
    ]
    for text, want in cases:
        p = tmp_path / "r.ini"
        p.write_text(base + text)
        res = subprocess.run([BIN, "check", "-c", str(p)], capture_output=True, text=True,
                             timeout=20, env=dict(os.environ, **ENV))
        assert res.returncode == 78, (text, res.stdout, res.stderr)
        assert want in res.stdout + res.stderr, (text, res.stdout, res.stderr)


# --- with an SQS queue: the exact recipients from SES's notification ---------

import json  # noqa: E402

from fake_sqs import FakeSQS  # noqa: E402


def ses_notification(key, recipients, spam="PASS", virus="PASS", sns=True):
    """What SES publishes for a message its S3 action stored, as SNS
    delivers it to an SQS queue (raw message delivery off) or raw."""
    inner = {
        "notificationType": "Received",
        "mail": {"timestamp": "2026-11-28T10:00:00.000Z", "source": "bob@sender.test",
                 "messageId": key.rsplit("/", 1)[-1], "destination": recipients,
                 "headersTruncated": False},
        "receipt": {"timestamp": "2026-11-28T10:00:00.000Z", "processingTimeMillis": 300,
                    "recipients": recipients, "spamVerdict": {"status": spam},
                    "virusVerdict": {"status": virus}, "spfVerdict": {"status": "PASS"},
                    "dkimVerdict": {"status": "PASS"}, "dmarcVerdict": {"status": "PASS"},
                    "action": {"type": "S3", "topicArn": "arn:aws:sns:us-east-1:1:ses-in",
                               "bucketName": BUCKET, "objectKeyPrefix": "mail/",
                               "objectKey": key}},
    }
    if not sns:
        return json.dumps(inner)
    return json.dumps({"Type": "Notification", "MessageId": "5d5e-1",
                       "TopicArn": "arn:aws:sns:us-east-1:1:ses-in",
                       "Subject": "Amazon SES Email Receipt Notification",
                       "Message": json.dumps(inner), "Timestamp": "2026-11-28T10:00:00.100Z",
                       "SignatureVersion": "1", "Signature": "c2ln"})


@pytest.fixture
def sqs():
    q = FakeSQS(access_key=s3rver.ACCESS_KEY, secret_key=s3rver.SECRET_KEY).start()
    q.url = q.create_queue("ses-inbound", visibility_timeout=30)
    yield q
    try:
        assert not q.sig_failures, q.sig_failures
    finally:
        q.stop()


def test_sqs_gives_the_exact_recipients_bcc_included(relay_factory, fake, bucket, sqs):
    """To: names a list; SES received the message for two of our addresses
    (Bcc): only the notification knows them.  The bucket is never listed."""
    raw = ses_stored(rcpt="me@example.com", to="list@elsewhere.test")
    bucket.put(BUCKET, "mail/bcc1", raw)
    sqs.send(ses_notification("mail/bcc1", ["me@example.com", "boss@example.com"]),
             queue="ses-inbound")
    r = inbound_relay(relay_factory, fake, bucket.endpoint,
                      maps=("me@example.com me@gmail.test", "boss@example.com boss@gmail.test"),
                      extra=f"queue_url = {sqs.url}\n")
    m = wait_sent(fake, 1)[0]
    assert sorted(m.rcpts) == ["boss@gmail.test", "me@gmail.test"]
    wait_gone(bucket, "mail/bcc1")
    sqs.wait_until(lambda s: s.messages("ses-inbound") == [], timeout=10)
    assert len(sqs.deleted("ses-inbound")) == 1
    # the relay never lists (botocore, in wait_gone, asks with encoding-type=url)
    assert not [x for x in bucket.requests
               if x[0] == "GET" and "list-type" in x[1] and "encoding-type" not in x[1]]
    r.wait_log(r"inbound: s3://inbound-mail/mail/bcc1 from=<bob@sender\.test> "
               r"to=<me@example\.com>,<boss@example\.com> -> ")


def test_sqs_repeated_and_setup_notifications(relay_factory, fake, bucket, sqs):
    bucket.put(BUCKET, "mail/dup1", ses_stored())
    note = ses_notification("mail/dup1", ["me@example.com"], sns=False)
    sqs.send(json.dumps({"notificationType": "Received", "receipt": {},
                         "mail": {"messageId": "AMAZON_SES_SETUP_NOTIFICATION"}}),
             queue="ses-inbound")
    sqs.send(note, queue="ses-inbound")
    sqs.send(note, queue="ses-inbound")       # SNS delivers at least once
    r = inbound_relay(relay_factory, fake, bucket.endpoint, extra=f"queue_url = {sqs.url}\n")
    wait_sent(fake, 1)
    sqs.wait_until(lambda s: s.messages("ses-inbound") == [], timeout=15)
    assert len(sqs.deleted("ses-inbound")) == 3
    time.sleep(1.5)
    assert len(fake.accepted()) == 1
    r.wait_log(r"inbound: .*: setup notification")


def test_sqs_spam_verdict_from_the_notification_holds(relay_factory, fake, bucket, sqs):
    bucket.put(BUCKET, "mail/sp1", ses_stored())           # headers say PASS
    sqs.send(ses_notification("mail/sp1", ["me@example.com"], spam="FAIL"), queue="ses-inbound")
    r = inbound_relay(relay_factory, fake, bucket.endpoint, extra=f"queue_url = {sqs.url}\n")
    r.wait_log(r"inbound: s3://inbound-mail/mail/sp1: held \(moved to held/\): "
               r"X-SES-Spam-Verdict: FAIL")
    sqs.wait_until(lambda s: s.messages("ses-inbound") == [], timeout=10)
    time.sleep(1)
    assert fake.accepted() == []
    assert bucket.keys(BUCKET) == ["held/mail/sp1"]
