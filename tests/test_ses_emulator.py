"""Against a third-party SES emulator: the npm package aws-ses-v2-local
(tests/node, installed by `npm ci`).  Mail sent to sesrelay by real clients
(swaks, nodemailer via tests/node/send.js) must show up in the emulator's
GET /store, for API v2 (SendEmail, Content.Raw) and v1 (SendRawEmail).

What the emulator does and does not do (read from its dist/ sources, 2.10.x):
  - routes: POST /v2/email/outbound-emails (Simple, Raw, Template content),
    POST / with Action=SendRawEmail or SendEmail (v1), GET /v2/email/account
    (answers the JSON in $AWS_SES_ACCOUNT, else 400), templates, bulk;
    no GetEmailIdentity (404 "<UnknownOperationException/>").
  - it only checks that an Authorization header starting with "AWS" exists:
    no signature check (tests/lib/fake_ses.py does that).
  - bodies: express.json() (so v2 needs Content-Type application/json) and
    express.urlencoded() ('+' is a space: RawMessage.Data must be
    percent-encoded), both capped at 25 MB.
  - it parses the raw message with mailparser and stores the *header*
    addresses: FromEmailAddress/Destination are not kept, so an envelope-only
    (Bcc) recipient is invisible here (test_delivery.py checks those).
  - GET /store -> {"templates": {}, "emails": [{messageId: "ses-NNNNNNNNN",
    from: "\"Alice\" <alice@example.com>", replyTo: [], destination: {to: [..],
    cc: [..], bcc: [..]}, subject, body: {text, html}, attachments: [{filename,
    contentType, size, content (base64), ...}], at: epoch seconds}]};
    ?since=EPOCH filters; POST /clear-store empties it; GET /health-check.
"""
import base64
import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from relayharness import free_port

NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")
EMULATOR_CLI = os.path.join(NODE_DIR, "node_modules", "aws-ses-v2-local", "dist", "cli.js")
ATTACHMENT = bytes(i % 256 for i in range(3000))
ACCOUNT = {
    "DedicatedIpAutoWarmupEnabled": False,
    "Details": {"AdditionalContactEmailAddresses": [], "ContactLanguage": "EN",
                "MailType": "TRANSACTIONAL",
                "ReviewDetails": {"CaseId": "1", "Status": "GRANTED"},
                "UseCaseDescription": "sesrelay tests", "WebsiteURL": "https://example.com"},
    "EnforcementStatus": "HEALTHY",
    "ProductionAccessEnabled": True,
    "SendingEnabled": True,
    "SendQuota": {"Max24HourSend": 50000, "MaxSendRate": 100, "SentLast24Hours": 0},
    "SuppressionAttributes": {"SuppressedReasons": []},
}


class Emulator:
    def __init__(self, tmp_path):
        node = shutil.which("node")
        assert node, "node is not installed (CI installs nodejs)"
        assert os.path.isfile(EMULATOR_CLI), \
            "tests/node/node_modules/aws-ses-v2-local missing: run `npm ci` in tests/node"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logfile = open(tmp_path / "aws-ses-v2-local.log", "wb")
        env = dict(os.environ, AWS_SES_ACCOUNT=json.dumps(ACCOUNT))
        env.pop("SMTP_TRANSPORT", None)      # never forward anything anywhere
        # `npx aws-ses-v2-local` runs this same file through npm; starting it
        # directly keeps one process (this PID) to stop, and no npm start-up.
        self.proc = subprocess.Popen([node, EMULATOR_CLI, "--host", "127.0.0.1",
                                      "--port", str(self.port)], cwd=NODE_DIR, env=env,
                                     stdout=self.logfile, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, "aws-ses-v2-local exited:\n" + self.log()
            try:
                with urllib.request.urlopen(self.url + "/health-check", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "aws-ses-v2-local did not start:\n" + self.log()
            time.sleep(0.1)

    def log(self):
        self.logfile.flush()
        with open(self.logfile.name, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def store(self):
        with urllib.request.urlopen(self.url + "/store", timeout=5) as r:
            return json.loads(r.read())

    def wait_emails(self, n=1, timeout=20, relay=None):
        deadline = time.monotonic() + timeout
        while True:
            emails = self.store()["emails"]
            if len(emails) >= n:
                return emails
            if time.monotonic() > deadline:
                raise AssertionError(f"the emulator's /store has {len(emails)} email(s), want {n}"
                                     + ("\n" + relay.read_log()[-3000:] if relay else "")
                                     + "\nemulator:\n" + self.log()[-2000:])
            time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logfile.close()


@pytest.fixture
def emulator(tmp_path):
    e = Emulator(tmp_path)
    yield e
    e.stop()


@pytest.fixture
def emu_relay(emulator, relay_factory):
    def make(api_version):
        return relay_factory(extra=f"""
[ses]
transport = api
api_version = {api_version}
region = us-east-1
endpoint = {emulator.url}
access_key_id = AKIDANYTHING
secret_access_key = anything-goes-here
[queue]
retry_initial = 1s
retry_max = 2s
""")
    return make


def signed(method, url, body=b"", headers=None):
    req = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    SigV4Auth(Credentials("AKIDANYTHING", "anything"), "ses", "us-east-1").add_auth(req)
    p = req.prepare()
    r = urllib.request.Request(p.url, data=p.body, headers=dict(p.headers.items()),
                               method=method)
    with urllib.request.urlopen(r, timeout=10) as resp:
        return resp.status, resp.read()


RAW = (b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nCc: carol@example.org\r\n"
       b"Subject: direct raw\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
       b"\r\nHello direct.\r\n")


def check_direct(e, subject):
    (m,) = e.wait_emails(1)
    assert m["subject"] == subject
    assert m["from"] in ('"Alice" <alice@example.com>', "Alice <alice@example.com>")
    assert m["destination"] == {"to": ["bob@example.net"], "cc": ["carol@example.org"],
                                "bcc": []}
    assert m["body"]["text"].strip() == "Hello direct."
    return m


# --- the harness itself: requests made here, no sesrelay ----------------------

def test_emulator_accepts_v2_send_email_raw(emulator):
    body = json.dumps({"FromEmailAddress": "alice@example.com",
                       "Destination": {"ToAddresses": ["bob@example.net"]},
                       "Content": {"Raw": {"Data": base64.b64encode(RAW).decode()}}}).encode()
    status, resp = signed("POST", emulator.url + "/v2/email/outbound-emails", body,
                          {"Content-Type": "application/json"})
    assert status == 200
    mid = json.loads(resp)["MessageId"]
    m = check_direct(emulator, "direct raw")
    assert m["messageId"] == mid


def test_emulator_accepts_v1_send_raw_email(emulator):
    raw = RAW.replace(b"direct raw", b"direct v1 \xc3\xa4+/")
    form = urllib.parse.urlencode([("Action", "SendRawEmail"), ("Version", "2010-12-01"),
                                   ("Destinations.member.1", "bob@example.net"),
                                   ("Source", "alice@example.com"),
                                   ("RawMessage.Data", base64.b64encode(raw).decode())]).encode()
    status, resp = signed("POST", emulator.url + "/", form,
                          {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    assert status == 200 and b"<SendRawEmailResponse" in resp and b"<MessageId>ses-" in resp
    check_direct(emulator, "direct v1 \u00e4+/")


def test_emulator_get_account(emulator):
    status, resp = signed("GET", emulator.url + "/v2/email/account")
    assert status == 200 and json.loads(resp)["SendQuota"]["MaxSendRate"] == 100


# --- through sesrelay ------------------------------------------------------------

@pytest.mark.parametrize("api", [2, 1], ids=lambda a: f"v{a}")
def test_swaks_through_relay(emulator, emu_relay, api):
    r = emu_relay(api)
    host, port = r.addr()
    p = subprocess.run(["swaks", "--server", f"{host}:{port}", "--helo", "swaks.test",
                        "--from", "alice@example.com", "--to", "bob@example.net",
                        "--header", f"Subject: swaks via sesrelay v{api}",
                        "--body", "Hello from swaks.\n.a line starting with a dot\n"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    (m,) = emulator.wait_emails(1, relay=r)
    assert m["subject"] == f"swaks via sesrelay v{api}"
    assert m["from"] == "alice@example.com"
    assert m["destination"]["to"] == ["bob@example.net"]
    text = m["body"]["text"].replace("\r\n", "\n")
    assert text.startswith("Hello from swaks.\n.a line starting with a dot\n"), text
    r.wait_log(rf"to=<bob@example\.net>, relay=ses-api\[us-east-1\], .*status=sent "
               rf"\(MessageId {m['messageId']}\)")


@pytest.mark.parametrize("api", [2, 1], ids=lambda a: f"v{a}")
def test_nodemailer_through_relay(emulator, emu_relay, api):
    r = emu_relay(api)
    host, port = r.addr()
    p = subprocess.run([shutil.which("node"), os.path.join(NODE_DIR, "send.js"), str(port), host],
                       capture_output=True, text=True, timeout=60, cwd=NODE_DIR)
    assert p.returncode == 0, f"send.js failed:\n{p.stdout}\n{p.stderr}"
    (m,) = emulator.wait_emails(1, relay=r)
    assert m["subject"] == "Grüße aus Köln – ☃ test"
    assert "alice@example.com" in m["from"] and "Alice Ä" in m["from"]
    assert m["destination"] == {"to": ["bob@example.net"], "cc": ["carol@example.org"],
                                "bcc": []}   # Bcc is envelope-only: not in any header
    assert m["body"]["text"].replace("\r\n", "\n") == \
        "Hello from nodemailer.\n.a line starting with a dot\n"
    (att,) = m["attachments"]
    assert att["filename"] == "report.bin" and att["contentType"] == "application/octet-stream"
    assert base64.b64decode(att["content"]) == ATTACHMENT
    for rcpt in ("bob@example.net", "carol@example.org", "secret-dave@example.com"):
        r.wait_log(rf"to=<{rcpt}>, relay=ses-api\[us-east-1\], .*status=sent "
                   rf"\(MessageId {m['messageId']}\)")
