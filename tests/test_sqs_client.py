"""The SQS client (ses/sqs.c) against fake_sqs (tests/lib/fake_sqs.py):
tests/tools/sqstool runs the relay's own ses_http + credentials chain + SQS
client on an event loop; the fake checks every request's SigV4 signature
(service "sqs") with botocore and keeps queues that behave like SQS's.

Scenarios: a long poll that returns as soon as a message arrives, and one
that returns empty when its wait is over; receiving several and deleting
them; a message that is not deleted coming back after its visibility timeout
(with a new handle; the old one no longer deletes it); bodies byte for byte
up to SQS's size limit, and one over the client's cap reported as oversize
but still deletable; SES receipt notifications received and parsed in one go;
then the errors an operator must see clearly (wrong secret, unknown key,
403 AccessDenied, missing queue) and the ones a retry fixes (500, throttling,
no server, a closed connection).

sqstool exit codes: 0 ok, 1 transient, 2 operator, 3 rejected, 4 refused
notification (parse), 70 its own deadline.
"""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))

from fake_sqs import (ACCESS_DENIED, CLOSE, KMS_ACCESS_DENIED, SERVER_500,  # noqa: E402
                      THROTTLED, FakeSQS)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS_DIR = os.environ.get("SESRELAY_TOOLS_DIR") or os.path.join(ROOT, "build", "release",
                                                                  "tests", "tools")
SQSTOOL = os.path.join(TOOLS_DIR, "sqstool")

OK, TRANSIENT, OPERATOR, REJECTED, REFUSED = range(5)


@pytest.fixture(scope="module")
def fake():
    assert os.access(SQSTOOL, os.X_OK), f"{SQSTOOL} missing: run `make tools`"
    with FakeSQS() as server:
        yield server


_queue_seq = iter(range(1, 10 ** 6))


@pytest.fixture
def queue(fake):
    """A fresh queue per test: (name, url)."""
    name = f"q{next(_queue_seq)}"
    return name, fake.create_queue(name, visibility_timeout=30)


def tool_cmd(url, *args):
    return [SQSTOOL, "-q", url, "-t", "60", *args]


def run_tool(fake, url, *args, env=None, timeout=90):
    p = subprocess.run(tool_cmd(url, *args), env=env or fake.env(), capture_output=True,
                       timeout=timeout)
    err = p.stderr.decode(errors="replace")
    assert "runtime error:" not in err and "Sanitizer" not in err, err
    return p


def received(p):
    assert p.returncode == OK, p.stderr
    # not splitlines(): a body may hold U+2028, which it also splits at
    return [json.loads(line) for line in p.stdout.decode().split("\n") if line]


def failure_line(p):
    return p.stderr.decode(errors="replace").strip().splitlines()[-1]


def no_signature_failures(fake, before):
    assert fake.sig_failures[before:] == [], fake.sig_failures[before:]


# --- long polling ---------------------------------------------------------------


def test_long_poll_returns_when_a_message_arrives(fake, queue):
    name, url = queue
    before = len(fake.sig_failures)
    t0 = time.monotonic()
    proc = subprocess.Popen(tool_cmd(url, "-w", "15", "receive"), env=fake.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        fake.wait_until(lambda f: f.polling(name) == 1, timeout=10)
        time.sleep(0.5)  # well inside the poll
        assert proc.poll() is None
        sent_at = time.monotonic()
        mid = fake.send('{"hello": "world"}', queue=name)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == OK, err
    got = [json.loads(line) for line in out.decode().split("\n") if line]
    assert [(m["id"], m["body"], m["receive_count"]) for m in got] == \
        [(mid, '{"hello": "world"}', 1)]
    done = time.monotonic()
    assert done - sent_at < 3, "the long poll did not return when the message came"
    assert done - t0 < 12
    assert "messages=1" in err.decode()
    no_signature_failures(fake, before)


def test_long_poll_returns_empty_after_the_wait(fake, queue):
    name, url = queue
    t0 = time.monotonic()
    p = run_tool(fake, url, "-w", "2", "receive")
    elapsed = time.monotonic() - t0
    assert received(p) == []
    assert "messages=0" in p.stderr.decode()
    assert 1.9 <= elapsed < 8, elapsed
    rec = [r for r in fake.requests if r["op"] == "ReceiveMessage"][-1]
    assert rec["status"] == 200 and rec["seconds"] >= 1.9


# --- receive, delete, redelivery -------------------------------------------------


def test_receive_several_then_delete_them(fake, queue):
    name, url = queue
    before = len(fake.sig_failures)
    ids = [fake.send(f"message {i}", queue=name) for i in range(3)]
    got = received(run_tool(fake, url, "-n", "10", "receive"))
    assert [m["id"] for m in got] == ids
    assert [m["body"] for m in got] == ["message 0", "message 1", "message 2"]
    # all three are in flight: nothing left to receive
    assert received(run_tool(fake, url, "receive")) == []
    for m in got:
        p = run_tool(fake, url, "delete", m["handle"])
        assert p.returncode == OK, p.stderr
        assert "DeleteMessage " + url in p.stderr.decode()
    assert fake.deleted(name) == ids
    assert fake.messages(name) == []
    no_signature_failures(fake, before)


def test_max_messages_is_honoured(fake, queue):
    name, url = queue
    for i in range(5):
        fake.send(f"m{i}", queue=name)
    assert len(received(run_tool(fake, url, "-n", "2", "receive"))) == 2
    assert len(received(run_tool(fake, url, "-n", "10", "receive"))) == 3


def test_redelivery_after_the_visibility_timeout(fake, queue):
    name, url = queue
    mid = fake.send("not deleted in time", queue=name)
    first = received(run_tool(fake, url, "-v", "1", "receive"))
    assert [(m["id"], m["receive_count"]) for m in first] == [(mid, 1)]
    # invisible for now
    assert received(run_tool(fake, url, "-w", "0", "receive")) == []
    # a long poll wakes when it comes back, well before its own wait ends
    t0 = time.monotonic()
    second = received(run_tool(fake, url, "-w", "10", "-v", "30", "receive"))
    assert time.monotonic() - t0 < 5
    assert [(m["id"], m["receive_count"]) for m in second] == [(mid, 2)]
    assert second[0]["handle"] != first[0]["handle"]
    # the first handle is stale: SQS answers 200 and keeps the message
    p = run_tool(fake, url, "delete", first[0]["handle"])
    assert p.returncode == OK, p.stderr
    assert [m[0] for m in fake.messages(name)] == [mid]
    p = run_tool(fake, url, "delete", second[0]["handle"])
    assert p.returncode == OK, p.stderr
    assert fake.messages(name) == [] and fake.deleted(name) == [mid]


def test_delete_with_an_unknown_handle_is_rejected(fake, queue):
    name, url = queue
    p = run_tool(fake, url, "delete", "AQEBbm90LWEtcmVhbC1oYW5kbGU=")
    assert p.returncode == REJECTED, p.stderr
    assert "rejected ReceiptHandleIsInvalid: DeleteMessage " + url in failure_line(p)


# --- bodies -------------------------------------------------------------------------


def test_bodies_byte_for_byte_up_to_the_limit(fake, queue):
    name, url = queue
    before = len(fake.sig_failures)
    tricky = 'quotes " backslash \\ tab\t nl\n ümlaut € 😀 中文 </xml> \u2028'
    # exactly 256 KiB of UTF-8; escaped in the answer it is far more
    big = tricky * (256 * 1024 // len(tricky.encode()))
    big += "x" * (256 * 1024 - len(big.encode()))
    assert len(big.encode()) == 256 * 1024
    for body in (tricky, big):
        fake.send(body, queue=name)
    got = received(run_tool(fake, url, "receive"))
    assert [m["body"] for m in got] == [tricky, big]
    assert all(m["oversize"] == 0 for m in got)
    no_signature_failures(fake, before)


def test_oversize_body_is_flagged_and_deletable(fake, queue):
    name, url = queue
    mid = fake.send("x" * (256 * 1024 + 1), queue=name)
    got = received(run_tool(fake, url, "receive"))
    assert [(m["id"], m["oversize"], "body" in m) for m in got] == [(mid, 1, False)]
    p = run_tool(fake, url, "delete", got[0]["handle"])
    assert p.returncode == OK, p.stderr
    assert fake.deleted(name) == [mid]


# --- SES receipt notifications, end to end ----------------------------------------------


def ses_notification(recipients, key="mail/4ba0t1bk7e3a0sr2d1f0example", message_id=None):
    message_id = message_id or key.rsplit("/", 1)[-1]
    return {
        "notificationType": "Received",
        "mail": {"timestamp": "2024-03-01T10:00:00.512Z", "source": "bob@sender.example",
                 "messageId": message_id, "destination": ["alice@example.com"],
                 "headersTruncated": False,
                 "headers": [{"name": "Subject", "value": "Quarterly \"numbers\" — draft"}],
                 "commonHeaders": {"to": ["alice@example.com"], "subject": "Quarterly"}},
        "receipt": {"timestamp": "2024-03-01T10:00:00.512Z", "processingTimeMillis": 431,
                    "recipients": recipients,
                    "spamVerdict": {"status": "PASS"}, "virusVerdict": {"status": "PASS"},
                    "spfVerdict": {"status": "PASS"}, "dkimVerdict": {"status": "PASS"},
                    "dmarcVerdict": {"status": "PASS"},
                    "action": {"type": "S3",
                               "topicArn": "arn:aws:sns:us-east-1:000000000000:ses-inbound",
                               "bucketName": "inbound-mail", "objectKeyPrefix": "mail/",
                               "objectKey": key}}}


def sns_envelope(inner, type_="Notification"):
    return json.dumps({
        "Type": type_, "MessageId": "0d5d8b6e-5f4a-5d0e-8a3b-1c2d3e4f5a6b",
        "TopicArn": "arn:aws:sns:us-east-1:000000000000:ses-inbound",
        "Subject": "Amazon SES Email Receipt Notification",
        "Message": inner if isinstance(inner, str) else json.dumps(inner),
        "Timestamp": "2024-03-01T10:00:01.123Z", "SignatureVersion": "1",
        "Signature": "EXAMPLE==", "SigningCertURL": "https://sns.example/x.pem",
        "UnsubscribeURL": "https://sns.example/?u=1"}, indent=2)


def test_receive_and_parse_receipt_notifications(fake, queue):
    name, url = queue
    rcpts = ["alice@example.com", "team@example.com", "hidden.bcc@example.org",
             "jürgen@bücher.example"]
    fake.send(sns_envelope(ses_notification(rcpts)), queue=name)
    fake.send(json.dumps(ses_notification(["raw@example.com"], key="mail/raw1")), queue=name)
    fake.send(sns_envelope(ses_notification([], key="mail/AMAZON_SES_SETUP_NOTIFICATION",
                                            message_id="AMAZON_SES_SETUP_NOTIFICATION")),
              queue=name)
    fake.send(sns_envelope("You have chosen to subscribe to the topic",
                           type_="SubscriptionConfirmation"), queue=name)
    fake.send(json.dumps({"Records": [{"eventSource": "aws:s3"}]}), queue=name)
    got = received(run_tool(fake, url, "-p", "receive"))
    receipts = [m["receipt"] for m in got]
    assert receipts[0]["kind"] == "received" and receipts[0]["sns"] == 1
    assert receipts[0]["recipients"] == rcpts
    assert (receipts[0]["bucket"], receipts[0]["key"]) == \
        ("inbound-mail", "mail/4ba0t1bk7e3a0sr2d1f0example")
    assert (receipts[0]["spam"], receipts[0]["virus"], receipts[0]["source"]) == \
        ("PASS", "PASS", "bob@sender.example")
    assert receipts[1]["kind"] == "received" and receipts[1]["sns"] == 0
    assert receipts[1]["recipients"] == ["raw@example.com"]
    assert receipts[2]["kind"] == "setup"
    assert (receipts[3]["kind"], receipts[3]["why"]) == ("other",
                                                         "SNS SubscriptionConfirmation")
    assert "an S3 event notification" in receipts[4]["error"]


def test_parse_command_reads_files(tmp_path):
    path = tmp_path / "n.json"
    path.write_text(sns_envelope(ses_notification(["a@example.com"])))
    p = subprocess.run([SQSTOOL, "parse", str(path)], capture_output=True, timeout=30)
    assert p.returncode == OK, p.stderr
    assert json.loads(p.stdout)["recipients"] == ["a@example.com"]
    path.write_text('{"Type":"Notification","Message":"{\\"notificationType\\":\\"Received\\"}"}')
    p = subprocess.run([SQSTOOL, "parse", str(path)], capture_output=True, timeout=30)
    assert p.returncode == REFUSED, p.stderr
    assert "error" in json.loads(p.stdout)


# --- errors an operator must see ---------------------------------------------------------


def test_wrong_secret_is_a_clear_signature_error(fake, queue):
    name, url = queue
    before = len(fake.sig_failures)
    p = run_tool(fake, url, "receive", env=fake.env(AWS_SECRET_ACCESS_KEY="not-the-secret"))
    assert p.returncode == OPERATOR, p.stderr
    line = failure_line(p)
    assert line.startswith(f"sqstool: operator SignatureDoesNotMatch: ReceiveMessage {url}: "
                           "403 SignatureDoesNotMatch: The request signature we calculated"), line
    assert "check the secret access key" in line
    assert "[request-id " in line
    assert "not-the-secret" not in p.stderr.decode()
    assert [f["code"] for f in fake.sig_failures[before:]] == ["SignatureDoesNotMatch"]


def test_unknown_access_key_id(fake, queue):
    name, url = queue
    p = run_tool(fake, url, "receive", env=fake.env(AWS_ACCESS_KEY_ID="AKIANOTKNOWN"))
    assert p.returncode == OPERATOR, p.stderr
    assert "operator UnrecognizedClientException:" in failure_line(p)
    assert "access key id" in failure_line(p)


def test_access_denied_403_is_operator(fake, queue):
    name, url = queue
    fake.fail_next(ACCESS_DENIED, op="ReceiveMessage")
    p = run_tool(fake, url, "receive")
    assert p.returncode == OPERATOR, p.stderr
    line = failure_line(p)
    assert f"operator AccessDeniedException: ReceiveMessage {url}: 403 AccessDeniedException: " \
        "User: arn:aws:iam::000000000000:user/sesrelay is not authorized" in line, line
    assert "allow sqs:ReceiveMessage and sqs:DeleteMessage" in line
    # one fault, one failure: the next call goes through
    assert received(run_tool(fake, url, "receive")) == []


def test_kms_denied_is_operator(fake, queue):
    name, url = queue
    fake.fail_next(KMS_ACCESS_DENIED)
    p = run_tool(fake, url, "receive")
    assert p.returncode == OPERATOR, p.stderr
    assert "kms:Decrypt" in failure_line(p)


def test_missing_queue_is_operator(fake):
    url = fake.queue_url("never-created")
    p = run_tool(fake, url, "receive")
    assert p.returncode == OPERATOR, p.stderr
    line = failure_line(p)
    assert f"operator QueueDoesNotExist: ReceiveMessage {url}: 400 QueueDoesNotExist: " \
        "The specified queue does not exist. - check queue_url" in line, line


def test_temporary_credentials_send_and_sign_the_token(fake, queue):
    name, url = queue
    fake.add_credentials("ASIATEMPEXAMPLE", "tempSecretEXAMPLE", "FwoGZXIvYXdzEXAMPLE/token+==")
    before = len(fake.sig_failures)
    env = fake.env(AWS_ACCESS_KEY_ID="ASIATEMPEXAMPLE", AWS_SECRET_ACCESS_KEY="tempSecretEXAMPLE",
                   AWS_SESSION_TOKEN="FwoGZXIvYXdzEXAMPLE/token+==")
    fake.send("with a token", queue=name)
    got = received(run_tool(fake, url, "receive", env=env))
    assert [m["body"] for m in got] == ["with a token"]
    p = run_tool(fake, url, "delete", got[0]["handle"], env=env)
    assert p.returncode == OK, p.stderr
    no_signature_failures(fake, before)
    # the same keys without their token are refused
    p = run_tool(fake, url, "receive", env=dict(env, AWS_SESSION_TOKEN=""))
    assert p.returncode == OPERATOR, p.stderr


def test_no_credentials_at_all(fake, queue):
    name, url = queue
    p = run_tool(fake, url, "receive",
                 env=fake.env(AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None))
    assert p.returncode == OPERATOR, p.stderr
    assert "no credentials" in failure_line(p)


# --- errors a retry fixes -------------------------------------------------------------------


@pytest.mark.parametrize("fault,code", [(SERVER_500, "InternalFailure"),
                                        (THROTTLED, "RequestThrottled")])
def test_server_errors_and_throttling_are_transient(fake, queue, fault, code):
    name, url = queue
    mid = fake.send("survives the failure", queue=name)
    fake.fail_next(fault, n=2)
    for op in (["receive"], ["delete", "AQEBbm90LWEtcmVhbC1oYW5kbGU="]):
        p = run_tool(fake, url, *op)
        assert p.returncode == TRANSIENT, p.stderr
        assert f"sqstool: transient {code}:" in failure_line(p)
    got = received(run_tool(fake, url, "receive"))
    assert [m["id"] for m in got] == [mid]


def test_closed_connection_is_transient(fake, queue):
    name, url = queue
    fake.fail_next(CLOSE)
    p = run_tool(fake, url, "receive")
    assert p.returncode == TRANSIENT, p.stderr
    assert f"transient: ReceiveMessage {url}: no answer from {fake.endpoint}" in failure_line(p)


def test_no_server_is_transient(fake):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/000000000000/q"
    p = run_tool(fake, url, "receive")
    assert p.returncode == TRANSIENT, p.stderr
    assert f"transient: ReceiveMessage {url}: no answer from http://127.0.0.1:{port}" \
        in failure_line(p)


def test_bad_arguments_are_refused_before_sending(fake, queue):
    name, url = queue
    n = len(fake.requests)
    for args in (["-n", "11", "receive"], ["-w", "21", "receive"], ["-v", "43201", "receive"],
                 ["delete", "has space"]):
        p = run_tool(fake, url, *args)
        assert p.returncode == REJECTED, (args, p.stderr)
    assert len(fake.requests) == n
