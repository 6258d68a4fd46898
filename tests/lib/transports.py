"""transports - one interface over the two SES fakes, so that an end-to-end
scenario is written once and runs against both of sesrelay's transports
(tests/test_transports.py):

  "api"   ApiTransport over fake_ses.FakeSES (the SES HTTP API, SigV4)
  "smtp"  SmtpTransport over fake_ses_smtp.FakeSESSMTP (SES's SMTP interface)

An adapter offers, in common terms:

  start() / stop()            the fake
  config(**kw)                the relay's [ses] and [queue] sections for it
  env                         environment for the relay process
  relay_rx                    regex of the relay= field of the relay's log lines
  delivered()                 [Delivered]: what SES accepted, normalised: sender
                              ("" for the null sender), rcpts, raw (the message
                              bytes as SES got them: the API fake base64-decodes,
                              the SMTP fake dot-unstuffs), message_id, config_set
  calls()                     [Call]: every send attempt in arrival order (an API
                              SendEmail/SendRawEmail request; an SMTP transaction
                              from MAIL to its final reply): rcpts, ok, code (HTTP
                              status; SMTP final reply code; 0: cut off), raw (the
                              message when it got that far), time, done, conn
  on_send(callback)           callback(call) before a send is answered
  fail_next(kind, n=1, rcpts=None, nth=None, sender=None) / fail_always(...)
                              kinds: "throttle", "daily_quota", "access_denied",
                              "reject" (permanent: MessageRejected / 554 at the
                              end of data), "transient" (503 / 451 at the end of
                              data), "reset" (the connection reset, no answer);
                              "kind/variant" picks a transport's own flavour
                              (FAULTS below); rcpts: only calls with one of those
                              recipients; nth: only the nth call; sender: only
                              calls from that sender
  clear_faults()
  code(kind), fault_rx(kind)  the status a call failing so has, and a regex of
                              the text the relay logs for it
  set_latency(seconds)        before SES answers a send (the end of data)
  down(mode="refuse"|"reset") / up()
  peak_in_flight()            most send calls in flight at once
  send_connections()          the connections send calls used
  problems()                  what teardown fails on: violations, duplicates
                              (unless .allow_duplicates), signature failures
  secrets()                   strings that must never appear in the relay's log

Plus helpers the scenarios share: submit() over raw SMTP, queue and log
helpers, and an RFC 3464 DSN checker.
"""
import collections
import email
import email.utils
import os
import re
import subprocess
import time

import fake_ses
import fake_ses_smtp
from relayharness import BIN, parse_queue_file

REGION = "us-east-1"
BOUNCE_FROM = "bounces@example.com"
# SPEC 6 fields; Postfix's "delays=a/b/c/d" and "dsn=X.Y.Z" may follow delay=
DELAY = r"delay=\d+(?:\.\d+)?(?:, delays=[\d./]+)?(?:, dsn=\d\.\d{1,3}\.\d{1,3})?"


class Delivered:
    """One message SES accepted, the same shape for both fakes."""

    def __init__(self, sender, rcpts, raw, message_id, config_set, native):
        self.sender, self.rcpts, self.raw = sender, list(rcpts), raw
        self.message_id, self.config_set, self.native = message_id, config_set, native

    def __repr__(self):
        return (f"<Delivered {self.message_id} from={self.sender!r} rcpts={self.rcpts[:5]}"
                f"{'...' if len(self.rcpts) > 5 else ''} size={len(self.raw or b'')}>")


class Call:
    """One send attempt: an API request, or an SMTP transaction."""

    def __init__(self, rcpts, ok, code, raw, time, done, conn, sender, native):
        self.rcpts, self.ok, self.code, self.raw = list(rcpts), ok, code, raw
        self.time, self.done, self.conn, self.sender, self.native = time, done, conn, sender, native

    @property
    def nrcpt(self):
        return len(self.rcpts)

    def __repr__(self):
        return f"<Call ok={self.ok} code={self.code} nrcpt={self.nrcpt} conn={self.conn}>"


def _peak(intervals):
    """Most [start, end) intervals overlapping at once (end None: still open)."""
    now = time.time()
    ev = sorted([(s, 1) for s, _ in intervals] + [(e or now, -1) for _, e in intervals],
                key=lambda e: (e[0], e[1]))
    cur = peak = 0
    for _, d in ev:
        cur += d
        peak = max(peak, cur)
    return peak


# --- the API transport --------------------------------------------------------

class ApiTransport:
    name = "api"
    relay_rx = rf"ses-api\[{REGION}\]"
    ok_code = 200
    KEY = fake_ses.DEFAULT_ACCESS_KEY
    SECRET = fake_ses.DEFAULT_SECRET_KEY
    env = {"AWS_EC2_METADATA_DISABLED": "true",
           "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
           "AWS_CONFIG_FILE": "/nonexistent/config"}
    # kind -> (fault, regex of the text the relay logs for it)
    FAULTS = {
        "throttle": (fake_ses.THROTTLED_429, r"429 TooManyRequestsException: Too Many Requests"),
        "daily_quota": (fake_ses.DAILY_QUOTA, r"400 LimitExceededException: Daily message quota "
                                              r"exceeded\."),
        "access_denied": (fake_ses.ACCESS_DENIED, r"403 AccessDeniedException: User: "
                                                  r"arn:aws:iam::\d+:user/sesrelay is not "
                                                  r"authorized"),
        "reject": (fake_ses.MESSAGE_REJECTED, r"400 MessageRejected: Email address is not "
                                              r"verified"),
        "reject/mail_from": (fake_ses.MAIL_FROM_NOT_VERIFIED,
                             r"400 MailFromDomainNotVerifiedException: Mail FROM domain is not "
                             r"verified\."),
        "transient": (fake_ses.UNAVAILABLE_503, r"503\b"),
        "transient/500": (fake_ses.SERVER_500, r"500\b"),
        "transient/502": (fake_ses.BAD_GATEWAY_502, r"502\b"),
        "reset": (fake_ses.RESET, r""),
    }

    def __init__(self, api_version=2):
        self.api_version = api_version
        self.fake = fake_ses.FakeSES(region=REGION)
        self.allow_duplicates = False
        self.allow_sig_failures = False

    def start(self):
        self.fake.start()
        return self

    def stop(self):
        self.fake.stop()

    def config(self, rate="1000", concurrency=None, retry_initial="1s", retry_max="2s",
               lifetime="20s", bounce_from=BOUNCE_FROM):
        lines = ["[ses]", "transport = api", f"api_version = {self.api_version}",
                 f"region = {REGION}", f"endpoint = {self.fake.url}",
                 f"access_key_id = {self.KEY}", f"secret_access_key = {self.SECRET}"]
        if rate is not None:             # None: the default (auto: GetAccount's MaxSendRate)
            lines.append(f"max_send_rate = {rate}")
        if concurrency is not None:
            lines.append(f"concurrency = {concurrency}")
        lines += ["[queue]", f"retry_initial = {retry_initial}", f"retry_max = {retry_max}",
                  f"lifetime = {lifetime}"]
        if bounce_from:
            lines.append(f"bounce_from = {bounce_from}")
        return "\n".join(lines) + "\n"

    def secrets(self):
        return [self.SECRET, self.SECRET[:12], "Signature="]

    # what SES saw
    def delivered(self):
        return [Delivered(m.from_addr or "", m.rcpts, m.raw, m.message_id, m.config_set, m)
                for m in self.fake.accepted()]

    @staticmethod
    def _call(q):
        return Call(q.rcpts, q.status == 200, q.status, q.raw, q.time, q.done, q.conn,
                    q.from_addr or "", q)

    def calls(self):
        return [self._call(q) for q in self.fake.send_requests()]

    def on_send(self, callback):
        self.fake.on_send(lambda req: callback(self._call(req)))

    def peak_in_flight(self):
        return _peak([(q.time, q.done) for q in self.fake.send_requests()])

    def send_connections(self):
        return {q.conn for q in self.fake.send_requests()}

    # faults
    def _match(self, rcpts, nth, sender):
        if rcpts is None and nth is None and sender is None:
            return None
        want = {r.lower() for r in rcpts or ()}

        def match(q):
            return ((not want or bool(want & {r.lower() for r in q.rcpts})) and
                    (nth is None or q.send_index == nth) and
                    (sender is None or (q.from_addr or "") == sender))
        return match

    def fail_next(self, kind, n=1, rcpts=None, nth=None, sender=None):
        self.fake.fail_next(self.FAULTS[kind][0], n=n, match=self._match(rcpts, nth, sender))

    def fail_always(self, kind, rcpts=None, nth=None, sender=None):
        self.fake.fail_always(self.FAULTS[kind][0], match=self._match(rcpts, nth, sender))

    def clear_faults(self):
        self.fake.clear_faults()

    def code(self, kind):
        f = self.FAULTS[kind][0]
        return 0 if f.action in ("reset", "close") else f.status

    def fault_rx(self, kind):
        return self.FAULTS[kind][1]

    def set_latency(self, seconds):
        self.fake.set_latency(seconds)

    def down(self, mode="refuse"):
        self.fake.down(mode)

    def up(self):
        self.fake.up()

    # teardown
    def problems(self):
        f = self.fake
        out = []
        if not self.allow_sig_failures:
            out += ["signature failure: %(method)s %(path)s: %(code)s %(message)s %(detail)s" % s
                    for s in f.sig_failures]
        out += ["violation: " + v for v in f.violations]
        if not self.allow_duplicates:
            out += ["accepted twice: message %s... to %s" % (h[:12], r)
                    for h, r in f.duplicates()]
        return out

    def summary(self):
        return self.fake.summary()


# --- the SMTP transport ---------------------------------------------------------

class SmtpTransport:
    name = "smtp"
    relay_rx = r"ses-smtp\[localhost\]"
    ok_code = 250
    KEY = fake_ses_smtp.DEFAULT_ACCESS_KEY
    SECRET = fake_ses_smtp.DEFAULT_SECRET_KEY
    env = {"AWS_EC2_METADATA_DISABLED": "true",
           "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
           "AWS_CONFIG_FILE": "/nonexistent/config",
           "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": ""}
    # kind -> (stage, reply (None: reset the connection), regex of the logged text)
    FAULTS = {
        "throttle": ("MAIL", fake_ses_smtp.THROTTLING,
                     r"454 Throttling failure: Maximum sending rate exceeded\."),
        "daily_quota": ("DOT", fake_ses_smtp.DAILY_QUOTA,
                        r"454 Throttling failure: Daily message quota exceeded\."),
        "access_denied": ("MAIL", fake_ses_smtp.ACCESS_DENIED,
                          r"554 Access denied: User is not authorized to perform "
                          r"ses:SendRawEmail"),
        "reject": ("DOT", fake_ses_smtp.MESSAGE_REJECTED,
                   r"554 Message rejected: Email address is not verified"),
        "reject/mail": ("MAIL", "554 Mail FROM domain is not verified.",
                        r"554 Mail FROM domain is not verified\."),
        "transient": ("DOT", fake_ses_smtp.TEMP_FAILURE, r"451 Temporary service failure"),
        "transient/mail": ("MAIL", fake_ses_smtp.TEMP_FAILURE, r"451 Temporary service failure"),
        "transient/421": ("DOT", fake_ses_smtp.SERVICE_CLOSING,
                          r"421 Service unavailable: closing transmission channel"),
        "reset": ("DOT", None, r""),
    }

    def __init__(self, pki, **fake_kw):
        self.pki = pki
        self.fake = fake_ses_smtp.FakeSESSMTP(mode="starttls", pki=pki, region=REGION,
                                              host="127.0.0.1", **fake_kw)
        self.allow_duplicates = False

    def start(self):
        self.fake.start()
        return self

    def stop(self):
        self.fake.stop()

    def config(self, rate="1000", concurrency=None, retry_initial="1s", retry_max="2s",
               lifetime="20s", bounce_from=BOUNCE_FROM):
        lines = ["[ses]", "transport = smtp", f"region = {REGION}", "smtp_host = localhost",
                 f"smtp_port = {self.fake.port}", f"smtp_tls = {self.fake.mode}",
                 f"access_key_id = {self.KEY}", f"secret_access_key = {self.SECRET}",
                 f"ca_file = {self.pki['ca']}"]
        if rate is not None:
            lines.append(f"max_send_rate = {rate}")
        if concurrency is not None:
            lines.append(f"concurrency = {concurrency}")
        lines += ["[queue]", f"retry_initial = {retry_initial}", f"retry_max = {retry_max}",
                  f"lifetime = {lifetime}", f"bounce_from = {bounce_from or ''}"]
        return "\n".join(lines) + "\n"

    def secrets(self):
        return [self.SECRET, fake_ses_smtp.smtp_password(self.SECRET, REGION)]

    # what SES saw
    def delivered(self):
        return [Delivered(m["mail_from"], m["rcpts"], m["data"], m["message_id"],
                          m["config_set"], m) for m in self.fake.messages()]

    @staticmethod
    def _call(t):
        return Call(t["rcpts"], t["ok"], t["code"], t["data"], t["start"], t["done"], t["conn"],
                    t["mail_from"] or "", t)

    def calls(self):
        return [self._call(t) for t in self.fake.transactions()]

    def on_send(self, callback):
        self.fake.on_data(lambda txn: callback(self._call(txn)))

    def peak_in_flight(self):
        return _peak([(t["start"], t["done"]) for t in self.fake.transactions()])

    def send_connections(self):
        return {t["conn"] for t in self.fake.transactions()}

    # faults
    def _inject(self, kind, n, rcpts, nth, sender):
        stage, reply, _ = self.FAULTS[kind]
        want = {r.lower() for r in rcpts or ()}
        if want and stage == "MAIL":
            raise ValueError(f"{kind}: a MAIL fault cannot pick recipients (use sender=)")

        def when(txn):
            return ((not want or bool(want & {r.lower() for r in txn["rcpts"]})) and
                    (nth is None or txn["index"] == nth) and
                    (sender is None or (txn["mail_from"] or "") == sender))
        self.fake.inject(stage, reply, n=n, when=when)

    def fail_next(self, kind, n=1, rcpts=None, nth=None, sender=None):
        self._inject(kind, n, rcpts, nth, sender)

    def fail_always(self, kind, rcpts=None, nth=None, sender=None):
        self._inject(kind, None, rcpts, nth, sender)

    def clear_faults(self):
        self.fake.clear_faults()

    def code(self, kind):
        m = re.match(r"\d{3}", self.FAULTS[kind][1] or "")
        return int(m.group(0)) if m else 0

    def fault_rx(self, kind):
        return self.FAULTS[kind][2]

    def set_latency(self, seconds):
        self.fake.dot_latency = seconds

    def down(self, mode="refuse"):
        self.fake.down(mode)

    def up(self):
        self.fake.up()

    # teardown
    def problems(self):
        out = ["violation: " + v for v in self.fake.violations()]
        if not self.allow_duplicates:
            out += ["accepted twice: %s... to %s" % (h[:12], r)
                    for h, r in self.fake.duplicates()]
        return out

    def summary(self):
        lines = [f"fake_ses_smtp: {len(self.fake.messages())} message(s), "
                 f"{len(self.fake.connections())} connection(s)"]
        for t in self.fake.transactions()[-15:]:
            lines.append(f"  txn #{t['index']} conn {t['conn']} from={t['mail_from']!r} "
                         f"nrcpt={len(t['rcpts'])} -> {t['code']} {t['reply']!r}")
        for c in self.fake.connections()[-5:]:
            lines.append(f"  conn #{c['id']}: {c['commands'][:30]}")
        lines += ["  violation: " + v for v in self.fake.violations()[-5:]]
        return "\n".join(lines)


_HAS_SMTP = None


def binary_has_smtp():
    """Whether the binary under test has the smtp transport wired in (the
    smtp-password command is its cheap witness)."""
    global _HAS_SMTP
    if _HAS_SMTP is None:
        try:
            r = subprocess.run([BIN, "smtp-password", "--region", "us-east-2"],
                               input="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                               capture_output=True, text=True, timeout=10)
            _HAS_SMTP = (r.returncode == 0 and r.stdout.strip() ==
                         "BMPPgbAHoFVbze1Ud0oA5uNdXRwUXUZ+qOwphGJbl/cS")
        except (OSError, subprocess.TimeoutExpired):
            _HAS_SMTP = False
    return _HAS_SMTP


def make_transport(name, pki=None):
    if name == "api":
        return ApiTransport()
    if name == "smtp":
        return SmtpTransport(pki)
    raise ValueError(name)


# --- submitting, the queue and the log ------------------------------------------

def dotstuff(body):
    return re.sub(rb"(?m)^\.", b"..", body)


def submit(relay, sender, rcpts, body, conn=None):
    """One SMTP transaction to the relay's listener; returns the queue id."""
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
    """Poll pred() until truthy (returned) or fail at the deadline with the
    fake's summary (anything with .summary()) and the relay's queue and log."""
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


def log_count(relay, pattern):
    return len(re.findall(pattern, relay.read_log()))


def received_prefix_only(data, body):
    """data is body with only the relay's own Received: trace field before it."""
    assert data.endswith(body), data[-200:]
    head = data[:len(data) - len(body)]
    assert head.startswith(b"Received: "), head[:200]
    for line in head.split(b"\r\n")[1:]:
        assert line == b"" or line[:1] in (b" ", b"\t"), head
    return head


# --- bounces ---------------------------------------------------------------------

def is_bounce(m):
    """m: anything with .raw (a Delivered, a Call, fake_ses records)."""
    return b"multipart/report" in (m.raw or b"")[:4000]


def rcpt_counts(messages):
    return collections.Counter(r.lower() for m in messages for r in m.rcpts)


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


def check_dsn(m, original_sender, failed, status_rx=r"5\.\d{1,3}\.\d{1,3}", diag_rx=None,
              bounce_from=BOUNCE_FROM):
    """m: the bounce as SES accepted it (.sender or .from_addr, .rcpts, .raw).
    Checks envelope, headers and the delivery-status report; returns the
    per-recipient blocks by address."""
    assert m.rcpts == [original_sender], m.rcpts
    sender = m.sender if hasattr(m, "sender") else m.from_addr
    assert sender in (None, "", bounce_from), \
        f"a bounce goes out with the null sender (or bounce_from), not {sender!r}"
    msg, per_msg, per_rcpt = dsn_parts(m.raw)
    assert email.utils.parseaddr(msg["From"])[1].lower() == bounce_from
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
            text = re.sub(r"\r?\n(?=[ \t])", "", text)      # unfold header lines
            assert re.search(diag_rx, text, re.I), (diag_rx, b["Diagnostic-Code"])
    return rcpts
