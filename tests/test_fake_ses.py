"""Self-tests of tests/lib/fake_ses.py: requests signed by botocore itself
and sent with urllib.  If these fail, test_delivery.py's verdicts mean nothing."""
import base64
import datetime
import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from unittest import mock

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

import fake_ses
from fake_ses import (ACCESS_DENIED, DAILY_QUOTA, MESSAGE_REJECTED, RESET, SERVER_500,
                      THROTTLED_429, THROTTLING, UNAVAILABLE_503, FakeSES, verify_sigv4)

KEY, SECRET = fake_ses.DEFAULT_ACCESS_KEY, fake_ses.DEFAULT_SECRET_KEY
RAW = b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nhello\r\n"
NS = {"s": fake_ses.V1_XMLNS}


@pytest.fixture
def fake():
    f = FakeSES().start()
    yield f
    f.stop()


def sign(method, url, body=b"", headers=None, key=KEY, secret=SECRET, token=None,
         region="us-east-1", service="ses"):
    req = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    SigV4Auth(Credentials(key, secret, token), service, region).add_auth(req)
    return req


def send(req, body=None, timeout=10):
    """Send a signed AWSRequest with urllib; returns (status, headers, body)."""
    p = req.prepare()
    r = urllib.request.Request(p.url, data=p.body if body is None else body,
                               headers=dict(p.headers.items()), method=p.method)
    try:
        with urllib.request.urlopen(r, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def v2_body(raw=RAW, to=("bob@example.net",), cc=(), bcc=(), sender="alice@example.com",
            config_set=None):
    doc = {"Destination": {"ToAddresses": list(to)},
           "Content": {"Raw": {"Data": base64.b64encode(raw).decode()}}}
    if cc:
        doc["Destination"]["CcAddresses"] = list(cc)
    if bcc:
        doc["Destination"]["BccAddresses"] = list(bcc)
    if sender is not None:
        doc["FromEmailAddress"] = sender
    if config_set:
        doc["ConfigurationSetName"] = config_set
    return json.dumps(doc).encode()


def v2_send(fake, raw=RAW, **kw):
    sign_kw = {k: kw.pop(k) for k in ("key", "secret", "token", "region", "service") if k in kw}
    req = sign("POST", fake.url + "/v2/email/outbound-emails", v2_body(raw, **kw),
               {"Content-Type": "application/json"}, **sign_kw)
    return send(req)


def v1_form(raw=RAW, dests=("bob@example.net",), source="alice@example.com", config_set=None):
    f = [("Action", "SendRawEmail"), ("Version", "2010-12-01"),
         ("RawMessage.Data", base64.b64encode(raw).decode())]
    f += [(f"Destinations.member.{i}", d) for i, d in enumerate(dests, 1)]
    if source is not None:
        f.append(("Source", source))
    if config_set:
        f.append(("ConfigurationSetName", config_set))
    return urllib.parse.urlencode(f).encode()


def v1_send(fake, raw=RAW, **kw):
    sign_kw = {k: kw.pop(k) for k in ("key", "secret", "token", "region") if k in kw}
    req = sign("POST", fake.url + "/", v1_form(raw, **kw),
               {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}, **sign_kw)
    return send(req)


def v2_error(headers, body):
    return headers["x-amzn-ErrorType"].split(":")[0], json.loads(body)["message"]


def v1_error(body):
    root = ET.fromstring(body)
    e = root.find("s:Error", NS)
    return e.find("s:Type", NS).text, e.find("s:Code", NS).text, e.find("s:Message", NS).text


# --- signatures --------------------------------------------------------------

def test_v2_signed_request_accepted(fake):
    status, headers, body = v2_send(fake, to=["bob@example.net"], cc=["carol@example.org"],
                                    bcc=["dave@example.com"], config_set="cs1")
    assert status == 200, body
    mid = json.loads(body)["MessageId"]
    (m,) = fake.accepted()
    assert m.message_id == mid and m.raw == RAW and m.api == "v2"
    assert m.from_addr == "alice@example.com" and m.config_set == "cs1"
    assert m.rcpts == ["bob@example.net", "carol@example.org", "dave@example.com"]
    assert m.bcc == ["dave@example.com"]
    assert headers["x-amzn-RequestId"]
    fake.assert_clean()


def test_v2_null_sender_has_no_from(fake):
    assert v2_send(fake, sender=None)[0] == 200
    assert fake.accepted()[0].from_addr is None
    fake.assert_clean()


def test_v1_signed_request_accepted(fake):
    raw = RAW + bytes(range(256)) * 40 + b"\r\n"     # base64 with '+' and '/'
    raw = raw.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")
    status, headers, body = v1_send(fake, raw, dests=["b@example.net", "c@example.net"],
                                    config_set="cs1")
    assert status == 200, body
    root = ET.fromstring(body)
    assert root.tag == "{%s}SendRawEmailResponse" % fake_ses.V1_XMLNS
    mid = root.find("s:SendRawEmailResult/s:MessageId", NS).text
    assert root.find("s:ResponseMetadata/s:RequestId", NS).text
    (m,) = fake.accepted()
    assert m.message_id == mid and m.raw == raw and m.api == "v1"
    assert m.rcpts == ["b@example.net", "c@example.net"] and m.config_set == "cs1"
    assert m.from_addr == "alice@example.com"


def test_v1_plus_not_encoded_is_caught(fake):
    raw = b"Subject: x\r\n\r\n" + b"\xfb\xef" * 30 + b"\r\n"     # base64 has '+'
    data = base64.b64encode(raw).decode()
    assert "+" in data
    body = ("Action=SendRawEmail&Version=2010-12-01&Destinations.member.1=b%40example.net"
            "&RawMessage.Data=" + data).encode()
    req = sign("POST", fake.url + "/", body,
               {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    status, _, rbody = send(req)
    assert status == 400
    assert any("base64" in v for v in fake.violations)


@pytest.mark.parametrize("case", ["wrong_secret", "tampered_body", "wrong_region",
                                  "wrong_service", "unknown_key", "missing_token",
                                  "wrong_token", "unsigned", "stale_date", "tampered_header"])
def test_bad_signatures_refused(case):
    token = "IQoJb3JpZ2luX2VjEXAMPLETOKEN//+=" if case in ("missing_token", "wrong_token") \
        else None
    with FakeSES(token=token) as fake:
        url = fake.url + "/v2/email/outbound-emails"
        body = v2_body()
        hdrs = {"Content-Type": "application/json"}
        kw = {"token": token}
        send_body = None
        if case == "wrong_secret":
            kw["secret"] = SECRET[:-1] + "X"
        elif case == "tampered_body":
            send_body = body.replace(b"bob@", b"eve@")
        elif case == "wrong_region":
            kw["region"] = "us-west-2"
        elif case == "wrong_service":
            kw["service"] = "email"
        elif case == "unknown_key":
            kw["key"] = "AKIDOTHER"
        elif case == "missing_token":
            kw["token"] = None
        elif case == "wrong_token":
            kw["token"] = token + "x"
        if case == "unsigned":
            req = AWSRequest(method="POST", url=url, data=body, headers=hdrs)
        elif case == "stale_date":
            with mock.patch("botocore.auth.datetime") as dt:
                dt.datetime.utcnow.return_value = datetime.datetime.utcnow() - \
                    datetime.timedelta(minutes=20)
                req = sign("POST", url, body, hdrs, **kw)
        else:
            req = sign("POST", url, body, hdrs, **kw)
        if case == "tampered_header":
            req.headers.replace_header("Content-Type", "application/x-amz-json-1.0")
        status, headers, rbody = send(req, body=send_body)
        assert status == 403, (case, rbody)
        code, message = v2_error(headers, rbody)
        assert code in ("SignatureDoesNotMatch", "UnrecognizedClientException",
                        "MissingAuthenticationToken"), code
        assert headers["x-amzn-ErrorType"].startswith(code + ":")
        assert fake.accepted() == []
        assert len(fake.sig_failures) == 1
        with pytest.raises(AssertionError, match="signature failure"):
            fake.assert_clean()


def test_signature_mismatch_detail_shows_canonical_request(fake):
    status, headers, body = v2_send(fake, secret="not-the-secret")
    assert status == 403 and v2_error(headers, body)[0] == "SignatureDoesNotMatch"
    detail = fake.sig_failures[0]["detail"]
    assert detail["canonical_request"].startswith("POST\n/v2/email/outbound-emails\n\n")
    assert "SECRET" not in json.dumps(detail) and "Signature=..." in detail["received"]


def test_v1_signature_error_shape(fake):
    status, headers, body = v1_send(fake, secret="nope")
    assert status == 403
    assert v1_error(body)[:2] == ("Sender", "SignatureDoesNotMatch")


def test_session_token_accepted_when_signed():
    token = "FwoGZXIvYXdzEXAMPLE/token+with=chars"
    with FakeSES(token=token) as fake:
        assert v2_send(fake, token=token)[0] == 200
        fake.assert_clean()


def test_percent_encoded_identity_path():
    with FakeSES() as fake:
        fake.add_identity("alice@example.com")
        fake.add_identity("example.com", mail_from_domain="mail.example.com")
        for ident in ("alice@example.com", "example.com"):
            url = fake.url + "/v2/email/identities/" + urllib.parse.quote(ident, safe="")
            status, _, body = send(sign("GET", url))
            assert status == 200, body
            doc = json.loads(body)
            assert doc["VerifiedForSendingStatus"] is True
            assert doc["DkimAttributes"]["Status"] == "SUCCESS"
            assert len(doc["DkimAttributes"]["Tokens"]) == 3
        assert doc["MailFromAttributes"]["MailFromDomain"] == "mail.example.com"
        status, headers, body = send(sign("GET", fake.url + "/v2/email/identities/nope.example"))
        assert status == 404 and v2_error(headers, body)[0] == "NotFoundException"
        fake.assert_clean()


def test_account(fake):
    fake.set_account(max_send_rate=14, max_24h=50000, production=False)
    assert v2_send(fake, to=["a@x.org", "b@x.org"])[0] == 200
    status, _, body = send(sign("GET", fake.url + "/v2/email/account"))
    assert status == 200
    doc = json.loads(body)
    assert doc["SendQuota"] == {"Max24HourSend": 50000.0, "MaxSendRate": 14.0,
                                "SentLast24Hours": 2.0}
    assert doc["ProductionAccessEnabled"] is False and doc["SendingEnabled"] is True
    fake.assert_clean()


def test_verify_function_on_aws_suite_vector():
    """verify_sigv4 agrees with AWS's published get-vanilla example."""
    headers = [("Host", "example.amazonaws.com"), ("X-Amz-Date", "20150830T123600Z"),
               ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/"
                "service/aws4_request, SignedHeaders=host;x-amz-date, Signature="
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")]
    now = datetime.datetime(2015, 8, 30, 12, 36, tzinfo=datetime.timezone.utc).timestamp()
    creds = {KEY: (SECRET, None)}
    assert verify_sigv4("GET", "/", headers, b"", creds, "us-east-1", service="service",
                        now=now) == KEY
    with pytest.raises(fake_ses.SigError):
        verify_sigv4("GET", "/?a=b", headers, b"", creds, "us-east-1", service="service",
                     now=now)


# --- faults ----------------------------------------------------------------

def test_faults_fire_in_order_v2(fake):
    for f in (THROTTLED_429, UNAVAILABLE_503, SERVER_500, MESSAGE_REJECTED, THROTTLING,
              DAILY_QUOTA, ACCESS_DENIED):
        fake.fail_next(f)
    got = []
    for _ in range(8):
        status, headers, body = v2_send(fake)
        got.append((status, None if status == 200 else v2_error(headers, body)[0]))
    assert got == [(429, "TooManyRequestsException"), (503, "ServiceUnavailable"),
                   (500, "InternalFailure"), (400, "MessageRejected"),
                   (400, "LimitExceededException"), (400, "LimitExceededException"),
                   (403, "AccessDeniedException"), (200, None)]
    assert [r.fault for r in fake.send_requests()] == [
        "TooManyRequestsException", "ServiceUnavailable", "InternalFailure", "MessageRejected",
        "Throttling", "DailyQuota", "AccessDeniedException", None]
    assert len(fake.accepted()) == 1
    fake.assert_clean()   # faults are not the relay's mistakes


def test_faults_v1_shape(fake):
    fake.fail_next(MESSAGE_REJECTED)
    fake.fail_next(THROTTLING)
    fake.fail_next(DAILY_QUOTA)
    fake.fail_next(ACCESS_DENIED)
    fake.fail_next(SERVER_500)
    out = []
    for _ in range(5):
        status, _, body = v1_send(fake, dests=["bad@example.net"])
        out.append((status,) + v1_error(body))
    assert out[0][:3] == (400, "Sender", "MessageRejected")
    assert out[0][3].startswith("Email address is not verified. The following identities "
                                "failed the check in region US-EAST-1: bad@example.net")
    assert out[1] == (400, "Sender", "Throttling", "Maximum sending rate exceeded.")
    assert out[2] == (400, "Sender", "Throttling", "Daily message quota exceeded.")
    assert out[3][:3] == (403, "Sender", "AccessDenied")
    assert out[4][:3] == (500, "Receiver", "InternalFailure")
    assert fake.accepted() == []


def test_fault_match_and_always(fake):
    fake.fail_always(MESSAGE_REJECTED, match=lambda r: "bad@example.net" in r.rcpts)
    fake.fail_next(UNAVAILABLE_503, n=2, match=lambda r: r.send_index >= 3)
    assert v2_send(fake, to=["bad@example.net"])[0] == 400
    assert v2_send(fake, to=["ok@example.net"])[0] == 200
    assert v2_send(fake, to=["ok2@example.net"])[0] == 503
    assert v2_send(fake, to=["bad@example.net"])[0] == 400
    assert v2_send(fake, to=["ok2@example.net"])[0] == 503
    assert v2_send(fake, to=["ok2@example.net"])[0] == 200
    assert v2_send(fake, to=["bad@example.net"])[0] == 400
    fake.clear_faults()
    assert v2_send(fake, to=["bad@example.net"])[0] == 200


def test_reset_fault_and_account_unaffected(fake):
    fake.fail_next(RESET)
    with pytest.raises((ConnectionError, urllib.error.URLError, OSError)):
        v2_send(fake)
    assert send(sign("GET", fake.url + "/v2/email/account"))[0] == 200
    assert v2_send(fake)[0] == 200
    assert [r.status for r in fake.send_requests()] == [0, 200]


def test_latency_overlaps(fake):
    fake.set_latency(0.5)
    results = []

    def one(i):
        results.append(v2_send(fake, to=[f"r{i}@example.net"])[0])

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    assert results == [200] * 8
    assert 0.5 <= took < 1.4, took
    assert fake.max_in_flight >= 6
    for r in fake.send_requests():
        assert r.done - r.time >= 0.5


def test_down_refuse_then_up_same_port(fake):
    port = fake.port
    assert v2_send(fake)[0] == 200
    fake.down()
    with pytest.raises(urllib.error.URLError) as e:
        v2_send(fake)
    assert isinstance(e.value.reason, ConnectionRefusedError)
    s = socket.socket()
    assert s.connect_ex(("127.0.0.1", port)) != 0
    s.close()
    fake.up()
    assert fake.port == port
    assert v2_send(fake)[0] == 200
    assert len(fake.accepted()) == 2


def test_down_reset_mode(fake):
    fake.down("reset")
    with pytest.raises((ConnectionError, urllib.error.URLError, OSError)):
        v2_send(fake)
    fake.up()
    assert v2_send(fake)[0] == 200


def test_down_during_latency_is_not_accepted(fake):
    fake.set_latency(1.0)
    err = []

    def one():
        try:
            v2_send(fake)
        except Exception as e:      # noqa: BLE001
            err.append(e)

    t = threading.Thread(target=one)
    t.start()
    fake.wait_until(lambda f: f._in_flight == 1, 5)
    fake.down()
    t.join(5)
    assert err and fake.accepted() == []
    fake.set_latency(0)
    fake.up()
    assert v2_send(fake)[0] == 200


def test_keepalive_connection_reused(fake):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    for i in range(3):
        req = sign("POST", fake.url + "/v2/email/outbound-emails", v2_body(to=[f"r{i}@x.org"]),
                   {"Content-Type": "application/json"})
        p = req.prepare()
        conn.request("POST", "/v2/email/outbound-emails", body=p.body, headers=dict(p.headers))
        r = conn.getresponse()
        r.read()
        assert r.status == 200
    conn.close()
    assert len({r.conn for r in fake.send_requests()}) == 1


def test_duplicates_detected(fake):
    assert v2_send(fake, to=["a@x.org", "b@x.org"])[0] == 200
    assert v2_send(fake, to=["c@x.org"])[0] == 200
    assert fake.duplicates() == []
    assert v2_send(fake, to=["B@x.org"])[0] == 200
    assert len(fake.duplicates()) == 1 and fake.duplicates()[0][1] == "b@x.org"
    with pytest.raises(AssertionError, match="duplicate"):
        fake.assert_clean()


def test_violations(fake):
    status, _, _ = v2_send(fake, to=[f"r{i}@x.org" for i in range(51)])
    assert status == 400
    assert v2_send(fake, raw=b"Subject: x\n\nbare lf\n")[0] == 200
    assert v2_send(fake, to=[])[0] == 200
    v = "\n".join(fake.violations)
    assert "51 destinations" in v and "bare LF" in v and "no destinations" in v


def test_rate_enforced(fake):
    fake.enforce_rate(5)
    statuses = [v2_send(fake, to=[f"r{i}@x.org"])[0] for i in range(8)]
    assert statuses[:5] == [200] * 5 and 400 in statuses[5:]
    time.sleep(0.5)
    assert v2_send(fake, to=["late@x.org"])[0] == 200


def test_request_log_and_wait_until(fake):
    def later():
        time.sleep(0.3)
        v2_send(fake, to=["a@x.org", "b@x.org"])
    threading.Thread(target=later).start()
    r = fake.wait_until(lambda f: f.send_requests(), 5)
    assert r[0].nrcpt == 2 and r[0].status == 200 and r[0].done >= r[0].time
    with pytest.raises(AssertionError, match="timed out"):
        fake.wait_until(lambda f: len(f.accepted()) > 5, 0.3, "six messages")


def test_on_send_hook_sees_request_before_accept(fake):
    seen = []
    fake.on_send(lambda r: seen.append((r.raw, list(r.rcpts), len(fake.accepted()))))
    assert v2_send(fake)[0] == 200
    assert seen == [(RAW, ["bob@example.net"], 0)]


@pytest.mark.parametrize("engine", ["asyncio", "threads"])
def test_standalone(engine):
    here = os.path.join(os.path.dirname(__file__), "lib", "fake_ses.py")
    p = subprocess.Popen(["/usr/bin/python3", here, "--port", "0", "--latency", "0.05",
                          "--engine", engine],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("fake_ses: listening on http://127.0.0.1:"), line
        url = line.split()[-1]

        class F:
            pass
        f = F()
        f.url = url
        assert v2_send(f)[0] == 200
        assert v1_send(f, dests=["carol@example.org"])[0] == 200
        status, headers, body = v2_send(f, secret="wrong")
        assert status == 403 and v2_error(headers, body)[0] == "SignatureDoesNotMatch"
        status, _, body = send(sign("GET", url + "/v2/email/account"))
        assert status == 200 and json.loads(body)["SendQuota"]["SentLast24Hours"] == 2
        with urllib.request.urlopen(url + "/_fake/stats", timeout=5) as r:
            stats = json.loads(r.read())
        assert stats["accepted_messages"] == 2 and stats["sig_failures"] == 1
    finally:
        p.terminate()
        out, err = p.communicate(timeout=10)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["accepted_recipients"] == 2 and summary["duplicates"] == 0, err
