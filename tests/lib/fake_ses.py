#!/usr/bin/python3
"""fake_ses - a local Amazon SES endpoint that checks every signature.

A threaded HTTP/1.1 server (keep-alive, 127.0.0.1, port 0 by default) that
impersonates the parts of SES that sesrelay talks to:

  v2 (rest-json)  POST /v2/email/outbound-emails   SendEmail with Content.Raw
                  GET  /v2/email/account           GetAccount
                  GET  /v2/email/identities/{id}   GetEmailIdentity
                  GET  /v2/email/identities        ListEmailIdentities (PageSize, NextToken)
  v1 (query)      POST /  Action=SendRawEmail      (and Action=GetSendQuota)

Every request must carry a valid AWS SigV4 signature for service "ses" in the
fake's region.  The signature is recomputed with botocore (Debian's
python3-botocore; run this under /usr/bin/python3): the received request is
rebuilt as a botocore AWSRequest holding exactly the headers named in
SignedHeaders, SigV4Auth's own canonical_request / string_to_sign / signature
run at the request's X-Amz-Date, and the Authorization header botocore would
have written is compared with the received one, byte for byte.  A mismatch is
answered 403 SignatureDoesNotMatch in the API's own error shape and recorded
in .sig_failures (with the canonical request botocore expected, for
debugging; never a secret).

Stricter than AWS, on purpose (sesrelay's signer promises botocore's form,
ses/sigv4.h): the Authorization header must be formatted exactly as botocore
formats it (", " separators); a signed User-Agent/Expect/X-Amzn-Trace-Id
(botocore never signs them) is refused; X-Amz-Content-SHA256, when sent, must
be the body's real hash (UNSIGNED-PAYLOAD is refused).

What tests get (all thread-safe):
  .messages        accepted messages (raw bytes, from, to/cc/bcc, rcpts,
                   configuration set, tags, MessageId, time)
  .requests        every request: arrival/finish time, op, status, error
                   code, recipients, fault, connection id
  .sig_failures    requests refused for their signature
  .violations      protocol mistakes the relay must not make (more than 50
                   destinations, bad base64, bare LF in the message, ...)
  .duplicates()    (message sha256, recipient) pairs accepted more than once
  .wait_until(f)   poll f(fake) until truthy, with a deadline
  .assert_clean()  no signature failure, no violation, no duplicate

Fault injection:
  .fail_next(fault, n=1, match=None)   the next n matching requests get fault
  .fail_always(fault, match=None)      until .clear_faults()
  .set_latency(seconds)                sleep before answering (requests overlap)
  .down(mode) / .up()                  "refuse": close the listening socket and
                                       every open connection (connection
                                       refused); "reset": accept and reset;
                                       "hang": accept, never answer until up().
                                       up() listens again on the SAME port.
  .on_send(callback)                   callback(request) runs in the server
                                       thread before a send is accepted
  .enforce_rate(r) / .enforce_quota    answer Throttling like SES does
Faults are matched in order; fault presets are module constants (THROTTLED_429,
THROTTLING, DAILY_QUOTA, SERVER_500, UNAVAILABLE_503, MESSAGE_REJECTED,
MAIL_FROM_NOT_VERIFIED, SENDING_PAUSED, ACCESS_DENIED, RESET, CLOSE).

Standalone (make bench, manual runs):
  /usr/bin/python3 tests/lib/fake_ses.py --port 8025 --latency 0.05
prints "fake_ses: listening on http://127.0.0.1:PORT" and serves until SIGTERM
or SIGINT, then prints one JSON summary line.  GET /_fake/stats (unsigned)
returns the same summary while it runs; POST /_fake/reset clears the records.
"""
import argparse
import base64
import datetime
import hashlib
import json
import re
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit
from xml.sax.saxutils import escape as xml_escape

from botocore.auth import SIGNED_HEADERS_BLACKLIST, SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

DEFAULT_REGION = "us-east-1"
DEFAULT_ACCESS_KEY = "AKIDEXAMPLE"
DEFAULT_SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"

V1_XMLNS = "http://ses.amazonaws.com/doc/2010-12-01/"
V2_ERROR_SUFFIX = ":http://internal.amazon.com/coral/com.amazonaws.sesv2/"
AUTH_ERROR_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.coral.service/"
MAX_RCPTS = 50
MAX_RAW_V2 = 40 * 1024 * 1024
MAX_RAW_V1 = 10 * 1024 * 1024


# --------------------------------------------------------------------------
# faults
# --------------------------------------------------------------------------

class Fault:
    """One canned answer.

    status/code/message: the HTTP status and the SES error.  v1_code: the
    code the query API uses when it differs (AccessDenied vs
    AccessDeniedException).  sender: v1 <Type>Sender</Type> (else Receiver).
    action: "respond" (default), "reset" (RST the connection, no answer) or
    "close" (close without answering).  latency: extra sleep before it.
    message may use {rcpts}, {from_addr}, {region}.
    """

    def __init__(self, status=400, code=None, message="", v1_code=None, sender=None,
                 action="respond", latency=0.0, name=None, v2_code=None):
        self.status = status
        self.code = code
        self.v2_code = v2_code or code
        self.v1_code = v1_code or code
        self.message = message
        self.sender = (status < 500) if sender is None else sender
        self.action = action
        self.latency = latency
        self.name = name or (code or action)

    def text(self, req, region):
        return self.message.format(rcpts=", ".join(req.rcpts or []),
                                   from_addr=req.from_addr or "", region=region.upper())

    def __repr__(self):
        return f"Fault({self.status}, {self.name!r})"


THROTTLED_429 = Fault(429, "TooManyRequestsException", "Too Many Requests")
THROTTLING = Fault(400, "Throttling", "Maximum sending rate exceeded.",
                   v2_code="LimitExceededException", name="Throttling")
DAILY_QUOTA = Fault(400, "Throttling", "Daily message quota exceeded.",
                    v2_code="LimitExceededException", name="DailyQuota")
SERVER_500 = Fault(500, "InternalFailure", "An internal error occurred.",
                   v1_code="InternalFailure")
UNAVAILABLE_503 = Fault(503, "ServiceUnavailable", "Service Unavailable")
BAD_GATEWAY_502 = Fault(502, "BadGateway", "Bad Gateway")
MESSAGE_REJECTED = Fault(400, "MessageRejected",
                         "Email address is not verified. The following identities failed the "
                         "check in region {region}: {rcpts}")
MAIL_FROM_NOT_VERIFIED = Fault(400, "MailFromDomainNotVerifiedException",
                               "Mail FROM domain is not verified.")
SENDING_PAUSED = Fault(400, "SendingPausedException",
                       "Sending is paused for this account.",
                       v1_code="AccountSendingPausedException")
ACCESS_DENIED = Fault(403, "AccessDeniedException",
                      "User: arn:aws:iam::123456789012:user/sesrelay is not authorized to "
                      "perform: ses:SendRawEmail on resource: "
                      "arn:aws:ses:{region}:123456789012:identity/example.com",
                      v1_code="AccessDenied")
RESET = Fault(action="reset", name="reset")
CLOSE = Fault(action="close", name="close")


class _Rule:
    def __init__(self, fault, count, match, ops):
        self.fault, self.count, self.match, self.ops = fault, count, match, ops


# --------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------

class Request:
    """What the fake saw of one request (also what match/hook callbacks get)."""

    def __init__(self, seq, conn, method, path, headers):
        self.seq = seq                  # 1, 2, ... over the fake's life
        self.conn = conn                # client "ip:port": same value = reused connection
        self.method = method
        self.path = path
        self.headers = headers          # [(name, value)] as received
        self.time = time.time()         # arrival (headers read)
        self.mono = time.monotonic()
        self.done = None                # time.time() when answered
        self.body_len = 0
        self.op = None                  # send | account | identity | quota | unknown
        self.api = None                 # v1 | v2
        self.action = None              # v1 Action
        self.send_index = None          # 1, 2, ... among send requests
        self.status = None
        self.code = None                # error code answered, or None
        self.fault = None               # name of the injected fault, or None
        self.sig_error = None
        self.from_addr = None           # FromEmailAddress / Source (None: absent)
        self.to, self.cc, self.bcc = [], [], []
        self.rcpts = []
        self.raw = None                 # decoded message (send requests)
        self.config_set = None
        self.tags = []
        self.message_id = None
        self.content_type = None

    @property
    def nrcpt(self):
        return len(self.rcpts)

    def header(self, name):
        vals = [v for k, v in self.headers if k.lower() == name.lower()]
        return vals[0] if vals else None

    def __repr__(self):
        return (f"<Request #{self.seq} {self.method} {self.path} op={self.op} api={self.api} "
                f"status={self.status} code={self.code} nrcpt={self.nrcpt}>")


class Message:
    """A message SES accepted."""

    def __init__(self, req, store_raw=True):
        self.message_id = req.message_id
        self.api = req.api
        self.time = time.time()
        self.request_seq = req.seq
        self.raw = req.raw if store_raw else None
        self.sha256 = hashlib.sha256(req.raw).hexdigest()
        self.size = len(req.raw)
        self.from_addr = req.from_addr
        self.to, self.cc, self.bcc = list(req.to), list(req.cc), list(req.bcc)
        self.rcpts = list(req.rcpts)
        self.config_set = req.config_set
        self.tags = list(req.tags)

    def __repr__(self):
        return (f"<Message {self.message_id} from={self.from_addr!r} rcpts={self.rcpts[:5]}"
                f"{'...' if len(self.rcpts) > 5 else ''} size={self.size}>")


# --------------------------------------------------------------------------
# SigV4 verification with botocore
# --------------------------------------------------------------------------

class SigError(Exception):
    def __init__(self, status, code, message, detail=None):
        super().__init__(message)
        self.status, self.code, self.message, self.detail = status, code, message, detail


_AUTH_RX = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^,\s]+), SignedHeaders=([^,\s]+), "
                      r"Signature=([0-9a-f]{64})$")


def verify_sigv4(method, path, headers, body, credentials, region, service="ses",
                 now=None, max_skew=900):
    """Check one request's SigV4 signature the way SES would, using botocore.

    path: the request target as received (wire form, with any query).
    headers: [(name, value)] as received.  credentials: {access_key:
    (secret, token or None)}.  Returns the access key on success; raises
    SigError(status, code, message, detail) otherwise.
    """
    def values(name):
        return [v for k, v in headers if k.lower() == name]

    auth = values("authorization")
    if not auth:
        raise SigError(403, "MissingAuthenticationToken", "Missing Authentication Token")
    if len(auth) > 1:
        raise SigError(400, "IncompleteSignature", "More than one Authorization header")
    auth = auth[0]
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        raise SigError(400, "IncompleteSignature",
                       "Authorization header requires AWS4-HMAC-SHA256", auth[:40])
    m = _AUTH_RX.match(auth)
    if not m:
        raise SigError(400, "IncompleteSignature",
                       "Authorization header is not in botocore's form "
                       "'AWS4-HMAC-SHA256 Credential=K/D/R/S/aws4_request, SignedHeaders=h1;h2, "
                       "Signature=<64 hex>'", _redact_auth(auth))
    credential, signed_names, _ = m.groups()
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise SigError(400, "IncompleteSignature",
                       "Credential should be KEY/YYYYMMDD/REGION/SERVICE/aws4_request", credential)
    akid, date8, cregion, cservice, _ = parts
    if akid not in credentials:
        raise SigError(403, "UnrecognizedClientException",
                       "The security token included in the request is invalid.", akid[:4])
    secret, token = credentials[akid]
    if cservice != service:
        raise SigError(403, "SignatureDoesNotMatch",
                       f"Credential should be scoped to correct service: '{service}'. ", credential)
    if cregion != region:
        raise SigError(403, "SignatureDoesNotMatch",
                       f"Credential should be scoped to a valid region, not '{cregion}'. ",
                       credential)

    dates = values("x-amz-date")
    if len(dates) != 1:
        raise SigError(400, "IncompleteSignature",
                       "exactly one X-Amz-Date header is required (got %d)" % len(dates))
    amz_date = dates[0].strip()
    try:
        when = datetime.datetime.strptime(amz_date, SIGV4_TIMESTAMP).replace(
            tzinfo=datetime.timezone.utc)
    except ValueError:
        raise SigError(400, "IncompleteSignature", f"bad X-Amz-Date {amz_date!r}")
    if amz_date[:8] != date8:
        raise SigError(403, "SignatureDoesNotMatch",
                       f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version "
                       f"of date from HTTP: '{date8}' != '{amz_date[:8]}'")
    now = time.time() if now is None else now
    if abs(now - when.timestamp()) > max_skew:
        raise SigError(403, "SignatureDoesNotMatch",
                       f"Signature expired: {amz_date} is outside the {max_skew} s window "
                       f"around the server's time")

    names = signed_names.split(";")
    if names != sorted(set(names)) or any(n != n.lower() for n in names):
        raise SigError(403, "SignatureDoesNotMatch",
                       "SignedHeaders must be lowercase, sorted and unique", signed_names)
    for need in ("host", "x-amz-date"):
        if need not in names:
            raise SigError(403, "SignatureDoesNotMatch",
                           f"'{need}' must be a signed header", signed_names)
    for bad in SIGNED_HEADERS_BLACKLIST:
        if bad in names:
            raise SigError(403, "SignatureDoesNotMatch",
                           f"fake_ses: '{bad}' is signed; botocore never signs it and a proxy "
                           f"or the HTTP stack may change it", signed_names)
    sent_tokens = values("x-amz-security-token")
    if token:
        if sent_tokens != [token]:
            raise SigError(403, "UnrecognizedClientException",
                           "The security token included in the request is invalid.",
                           "missing or wrong X-Amz-Security-Token")
        if "x-amz-security-token" not in names:
            raise SigError(403, "SignatureDoesNotMatch",
                           "X-Amz-Security-Token is sent but not signed", signed_names)
    elif sent_tokens:
        raise SigError(403, "UnrecognizedClientException",
                       "The security token included in the request is invalid.",
                       "a session token was sent for long-term credentials")
    sha = values("x-amz-content-sha256")
    if sha and sha != [hashlib.sha256(body).hexdigest()]:
        raise SigError(400, "XAmzContentSHA256Mismatch",
                       "The provided 'x-amz-content-sha256' header does not match what was "
                       "computed.", sha[0][:70])

    host = values("host")
    if len(host) != 1:
        raise SigError(400, "IncompleteSignature", "exactly one Host header is required")
    req = AWSRequest(method=method, url="http://" + host[0] + path, data=body)
    for name in names:
        got = values(name)
        if not got:
            raise SigError(403, "SignatureDoesNotMatch",
                           f"signed header '{name}' is not in the request", signed_names)
        for v in got:
            req.headers[name] = v   # HTTPMessage: appends, so repeats are kept
    req.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(akid, secret, token), service, region)
    canonical = signer.canonical_request(req)
    sts = signer.string_to_sign(req, canonical)
    signature = signer.signature(sts, req)
    expected = ("AWS4-HMAC-SHA256 Credential=%s, SignedHeaders=%s, Signature=%s"
                % (signer.scope(req), signer.signed_headers(signer.headers_to_sign(req)),
                   signature))
    if auth != expected:
        raise SigError(403, "SignatureDoesNotMatch",
                       "The request signature we calculated does not match the signature you "
                       "provided. Check your AWS Secret Access Key and signing method. Consult "
                       "the service documentation for details.",
                       {"canonical_request": _redact_token(canonical, token),
                        "string_to_sign": sts,
                        "expected_signed_headers": signer.signed_headers(
                            signer.headers_to_sign(req)),
                        "received": _redact_auth(auth)})
    return akid


def _redact_auth(auth):
    return re.sub(r"Signature=[0-9a-fA-F]+", "Signature=...", auth)


def _redact_token(text, token):
    return text.replace(token, "<token>") if token else text


# --------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, addr, fake):
        self.fake = fake
        super().__init__(addr, _Handler)

    def verify_request(self, request, client_address):
        mode = self.fake._mode
        if mode in ("reset", "refuse"):
            _rst(request)
            return False
        return True

    def process_request(self, request, client_address):
        self.fake._track(request, True)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        self.fake._track(request, False)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        # Client went away, connection reset by a down(): not interesting.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, OSError)):
            return
        super().handle_error(request, client_address)


def _rst(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Server"
    sys_version = ""
    timeout = 120

    def log_message(self, fmt, *args):
        if self.server.fake.verbose:
            sys.stderr.write("fake_ses: " + (fmt % args) + "\n")

    def setup(self):
        super().setup()
        self.gen = self.server.fake._gen
        try:    # answers go out in one write anyway; never wait for a delayed ACK
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def do_GET(self):
        self.server.fake._handle(self)

    do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

    # -- helpers used by FakeSES._handle --
    def read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(8)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def reply(self, status, body=b"", headers=(), req=None):
        if req is not None:
            req.done = time.time()
        if isinstance(body, str):
            body = body.encode()
        try:
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            # headers and body in one write (end_headers() would send two)
            self._headers_buffer.append(b"\r\n")
            if self.command != "HEAD":
                self._headers_buffer.append(body)
            self.flush_headers()
        except OSError:
            self.close_connection = True

    def reset(self):
        self.close_connection = True
        _rst(self.connection)


class FakeSES:
    def __init__(self, region=DEFAULT_REGION, access_key=DEFAULT_ACCESS_KEY,
                 secret_key=DEFAULT_SECRET_KEY, token=None, host="127.0.0.1", port=0,
                 latency=0.0, verify=True, store_raw=True, max_skew=900, verbose=False):
        self.region = region
        self.credentials = {access_key: (secret_key, token)}
        self.host = host
        self.port = port
        self.latency = latency
        self.verify = verify
        self.store_raw = store_raw
        self.max_skew = max_skew
        self.verbose = verbose
        self.account = {
            "DedicatedIpAutoWarmupEnabled": False,
            "EnforcementStatus": "HEALTHY",
            "ProductionAccessEnabled": True,
            "SendQuota": {"Max24HourSend": 1000000.0, "MaxSendRate": 1000.0,
                          "SentLast24Hours": 0.0},
            "SendingEnabled": True,
            "SuppressionAttributes": {"SuppressedReasons": ["BOUNCE", "COMPLAINT"]},
            "Details": {"MailType": "TRANSACTIONAL", "WebsiteURL": "https://example.com",
                        "ContactLanguage": "EN", "UseCaseDescription": "sesrelay tests",
                        "AdditionalContactEmailAddresses": [],
                        "ReviewDetails": {"Status": "GRANTED", "CaseId": "1"}},
        }
        self.identities = {}
        self.list_pages = 0               # ListEmailIdentities pages served
        # Most tests list no identities, so by default ListEmailIdentities is
        # refused as an IAM policy without ses:ListEmailIdentities would: the
        # relay then checks nothing at SMTP time.  Set True to serve it.
        self.identities_api = False
        self.identities_latency = 0.0     # seconds before each ListEmailIdentities answer
        self.sent_base = 0.0              # SentLast24Hours before this fake's own count
        self._sent_rcpts = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._rules = []
        self._hooks = []
        self._rate = None                 # enforce_rate: (rate, tokens, last)
        self._quota = False
        self._mode = "up"
        self._gen = 0
        self._hang = threading.Event()
        self._conns = set()
        self._seq = 0
        self._send_seq = 0
        self._in_flight = 0
        self.max_in_flight = 0
        self.requests = []
        self.messages = []
        self.sig_failures = []
        self.violations = []
        self._accepted = {}               # (sha256, rcpt) -> count
        self._server = None
        self._thread = None

    # -- life ------------------------------------------------------------
    def start(self):
        self._listen()
        return self

    def _listen(self, attempts=100):
        last = None
        for _ in range(attempts):
            try:
                self._server = _Server((self.host, self.port), self)
                break
            except OSError as e:        # the port may linger for a moment after down()
                last = e
                time.sleep(0.05)
        else:
            raise last
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=f"fake_ses:{self.port}")
        self._thread.start()

    def stop(self):
        self._hang.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._close_conns()

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    endpoint = url

    def down(self, mode="refuse"):
        """Make the endpoint unreachable: "refuse" (nothing listens: connection
        refused), "reset" (connections accepted then reset) or "hang" (accepted,
        never answered until up()).  Requests in progress are cut off and not
        recorded as accepted."""
        assert mode in ("refuse", "reset", "hang"), mode
        with self._lock:
            self._mode = mode
            self._gen += 1
            if mode == "hang":
                self._hang.clear()
        if mode == "refuse" and self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._close_conns()

    def up(self):
        with self._lock:
            was = self._mode
            self._mode = "up"
            self._gen += 1
        self._hang.set()
        if self._server is None:
            self._listen()
        return was

    @property
    def is_up(self):
        return self._mode == "up"

    def _track(self, sock, add):
        with self._lock:
            if add:
                self._conns.add(sock)
            else:
                self._conns.discard(sock)

    def _close_conns(self):
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            _rst(s)

    # -- configuration from tests ------------------------------------------
    def add_credentials(self, access_key, secret_key, token=None):
        with self._lock:
            self.credentials[access_key] = (secret_key, token)

    def set_latency(self, seconds):
        self.latency = seconds

    def set_account(self, max_send_rate=None, max_24h=None, sent_24h=None, production=None,
                    sending_enabled=None, enforcement=None):
        with self._lock:
            q = self.account["SendQuota"]
            if max_send_rate is not None:
                q["MaxSendRate"] = float(max_send_rate)
            if max_24h is not None:
                q["Max24HourSend"] = float(max_24h)
            if sent_24h is not None:
                self.sent_base = float(sent_24h)
            if production is not None:
                self.account["ProductionAccessEnabled"] = bool(production)
            if sending_enabled is not None:
                self.account["SendingEnabled"] = bool(sending_enabled)
            if enforcement is not None:
                self.account["EnforcementStatus"] = enforcement

    def add_identity(self, identity, verified=True, dkim_status="SUCCESS", dkim_tokens=None,
                     signing_enabled=True, mail_from_domain=None, mail_from_status="SUCCESS",
                     behavior_on_mx_failure="USE_DEFAULT_VALUE"):
        is_domain = "@" not in identity
        d = {
            "IdentityType": "DOMAIN" if is_domain else "EMAIL_ADDRESS",
            "FeedbackForwardingStatus": True,
            "VerifiedForSendingStatus": bool(verified),
            "VerificationStatus": "SUCCESS" if verified else "PENDING",
            "DkimAttributes": {
                "SigningEnabled": bool(signing_enabled),
                "Status": dkim_status,
                "Tokens": list(dkim_tokens if dkim_tokens is not None else
                               [hashlib.sha1(f"{identity}{i}".encode()).hexdigest()[:32]
                                for i in range(3)]),
                "SigningAttributesOrigin": "AWS_SES",
                "NextSigningKeyLength": "RSA_2048_BIT",
                "CurrentSigningKeyLength": "RSA_2048_BIT",
            },
            "MailFromAttributes": {"BehaviorOnMxFailure": behavior_on_mx_failure},
            "Policies": {},
            "Tags": [],
        }
        if mail_from_domain:
            d["MailFromAttributes"].update(MailFromDomain=mail_from_domain,
                                           MailFromDomainStatus=mail_from_status)
        with self._lock:
            self.identities[identity.lower()] = d
        return d

    def fail_next(self, fault, n=1, match=None, ops=("send",)):
        """The next n requests of these ops for which match(request) is true
        (match None: any) get fault.  Rules are tried in the order added."""
        with self._lock:
            self._rules.append(_Rule(fault, n, match, tuple(ops)))

    def fail_always(self, fault, match=None, ops=("send",)):
        with self._lock:
            self._rules.append(_Rule(fault, None, match, tuple(ops)))

    def clear_faults(self):
        with self._lock:
            self._rules.clear()

    def pending_faults(self):
        with self._lock:
            return [(r.fault, r.count) for r in self._rules]

    def on_send(self, callback):
        """callback(request) runs before a send request is accepted (after
        its signature and faults); it sees .raw, .rcpts, .from_addr."""
        with self._lock:
            self._hooks.append(callback)

    def enforce_rate(self, rate):
        """Answer Throttling "Maximum sending rate exceeded." when recipients
        arrive faster than rate/s (a bucket of one second); None: off."""
        with self._lock:
            self._rate = None if rate is None else [float(rate), float(rate), time.monotonic()]

    def enforce_quota(self, on=True):
        """Answer "Daily message quota exceeded." past SendQuota.Max24HourSend."""
        self._quota = on

    def reset(self):
        with self._lock:
            self.requests.clear()
            self.messages.clear()
            self.sig_failures.clear()
            self.violations.clear()
            self._accepted.clear()
            self._sent_rcpts = 0
            self._rules.clear()
            self._hooks.clear()
            self.max_in_flight = 0
            self._send_seq = 0

    # -- what tests read ---------------------------------------------------
    def snapshot(self):
        with self._lock:
            return {"requests": list(self.requests), "messages": list(self.messages),
                    "sig_failures": list(self.sig_failures),
                    "violations": list(self.violations)}

    def send_requests(self):
        with self._lock:
            return [r for r in self.requests if r.op == "send"]

    def accepted(self):
        with self._lock:
            return list(self.messages)

    def messages_to(self, rcpt):
        rcpt = rcpt.lower()
        return [m for m in self.accepted() if rcpt in (r.lower() for r in m.rcpts)]

    def accepted_rcpts(self):
        """Every accepted recipient, one entry per acceptance."""
        return [r for m in self.accepted() for r in m.rcpts]

    def duplicates(self):
        with self._lock:
            return [k for k, n in self._accepted.items() if n > 1]

    def sent_24h(self):
        with self._lock:
            return self.sent_base + self._sent_rcpts

    def wait_until(self, pred, timeout=10.0, what=None):
        """Wait until pred(self) is truthy; return its value.  Wakes on every
        answered request; raises AssertionError with a summary at the deadline."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                self._cond.release()
                try:
                    v = pred(self)
                finally:
                    self._cond.acquire()
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.1))
        raise AssertionError(f"fake_ses: timed out after {timeout}s waiting for "
                             f"{what or getattr(pred, '__name__', 'condition')}\n" + self.summary())

    def summary(self, last=15):
        with self._lock:
            reqs = self.requests[-last:]
            lines = [f"requests={len(self.requests)} accepted={len(self.messages)} "
                     f"sig_failures={len(self.sig_failures)} violations={len(self.violations)}"]
            lines += ["  " + repr(r) for r in reqs]
            lines += ["  sig failure: %s %s" % (f["code"], f["message"]) for f in
                      self.sig_failures[-3:]]
            lines += ["  violation: " + v for v in self.violations[-5:]]
        return "\n".join(lines)

    def stats(self):
        with self._lock:
            sends = [r for r in self.requests if r.op == "send"]
            return {
                "requests": len(self.requests),
                "send_requests": len(sends),
                "accepted_messages": len(self.messages),
                "accepted_recipients": sum(len(m.rcpts) for m in self.messages),
                "accepted_bytes": sum(m.size for m in self.messages),
                "errors": sum(1 for r in self.requests if r.status and r.status >= 400),
                "sig_failures": len(self.sig_failures),
                "violations": len(self.violations),
                "duplicates": sum(1 for n in self._accepted.values() if n > 1),
                "max_in_flight": self.max_in_flight,
                "first_send": sends[0].time if sends else None,
                "last_send": sends[-1].done if sends else None,
            }

    def assert_clean(self):
        problems = []
        with self._lock:
            for f in self.sig_failures:
                problems.append("signature failure: %s %s: %s %s" % (
                    f["method"], f["path"], f["code"], f["message"]) + (
                    "\n" + json.dumps(f["detail"], indent=1) if f.get("detail") else ""))
            problems += ["violation: " + v for v in self.violations]
            problems += ["duplicate: %s to %s" % k for k, n in self._accepted.items() if n > 1]
        assert not problems, "fake_ses:\n" + "\n".join(problems)

    # -- request handling (shared by the threaded server and the asyncio one) --
    # A request goes _begin -> _prepare -> (_pick_fault, the latency sleep) ->
    # _finish -> _end.  Answers are (status, body, [(header, value)]) tuples,
    # or "reset" / "close" for a connection cut without an answer.
    def _begin(self, conn, method, path, headers):
        with self._lock:
            self._seq += 1
            req = Request(self._seq, conn, method, path, headers)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            self.requests.append(req)     # at arrival: a client may see the answer first
        return req

    def _end(self, req):
        if req.done is None:
            req.done = time.time()
        if not self.store_raw:
            req.raw = None
            req.headers = []
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def _prepare(self, req, body):
        """Classify, verify the signature, parse a send.  None: go on."""
        req.body_len = len(body)
        req.content_type = req.header("Content-Type")
        p = urlsplit(req.path).path
        if req.method == "POST" and p == "/v2/email/outbound-emails":
            req.op, req.api = "send", "v2"
        elif req.method == "GET" and p == "/v2/email/account":
            req.op, req.api = "account", "v2"
        elif req.method == "GET" and p.startswith("/v2/email/identities/"):
            req.op, req.api = "identity", "v2"
        elif req.method == "GET" and p in ("/v2/email/identities", "/v2/email/identities/"):
            req.op, req.api = "list_identities", "v2"
        elif req.method == "POST" and p == "/":
            req.api = "v1"
            form = dict(parse_qsl(body.decode("latin-1"), keep_blank_values=True))
            req.action = form.get("Action")
            req.op = {"SendRawEmail": "send", "GetSendQuota": "quota"}.get(req.action, "unknown")
        else:
            req.op, req.api = "unknown", "v2"

        if self.verify:
            try:
                verify_sigv4(req.method, req.path, req.headers, body, self.credentials,
                             self.region, max_skew=self.max_skew)
            except SigError as e:
                req.sig_error = e.message
                with self._lock:
                    self.sig_failures.append({"seq": req.seq, "method": req.method,
                                              "path": req.path, "code": e.code,
                                              "message": e.message, "detail": e.detail,
                                              "time": req.time})
                return self._error(req, e.status, e.code, e.message, auth=True)

        if req.op == "send":
            bad = self._parse_send(req, body)
            if bad is not None:
                return bad
            with self._lock:
                self._send_seq += 1
                req.send_index = self._send_seq
        return None

    def _delay(self, fault):
        return self.latency + (fault.latency if fault else 0.0)

    def _finish(self, req, fault, alive=lambda: True):
        """The answer after the latency: a fault, SES's own limits, or success.
        alive() is false when the endpoint went down meanwhile."""
        if fault is None and req.op == "send":
            fault = self._ses_limits(req)
        if fault is not None:
            req.fault = fault.name
            if fault.action in ("reset", "close"):
                req.status = 0
                return fault.action
            code = fault.v1_code if req.api == "v1" else fault.v2_code
            return self._error(req, fault.status, code, fault.text(req, self.region),
                               sender=fault.sender)
        if req.op == "send":
            for hook in list(self._hooks):
                hook(req)
            return self._accept(req, alive)
        if req.op == "account":
            return self._json(req, 200, self._account_doc())
        if req.op == "identity":
            ident = unquote(urlsplit(req.path).path[len("/v2/email/identities/"):]).lower()
            with self._lock:
                doc = self.identities.get(ident)
            if doc is None:
                return self._error(req, 404, "NotFoundException",
                                   f"Email identity {ident} does not exist.")
            return self._json(req, 200, doc)
        if req.op == "list_identities":
            return self._list_identities(req)
        if req.op == "quota":
            q = self._account_doc()["SendQuota"]
            xml = ('<GetSendQuotaResponse xmlns="%s"><GetSendQuotaResult>'
                   "<Max24HourSend>%s</Max24HourSend><MaxSendRate>%s</MaxSendRate>"
                   "<SentLast24Hours>%s</SentLast24Hours></GetSendQuotaResult>"
                   "<ResponseMetadata><RequestId>%s</RequestId></ResponseMetadata>"
                   "</GetSendQuotaResponse>" % (V1_XMLNS, q["Max24HourSend"], q["MaxSendRate"],
                                                q["SentLast24Hours"], uuid.uuid4()))
            return self._xml(req, 200, xml)
        self._violation(req, f"unknown operation {req.method} {req.path} "
                             f"(Action={req.action!r})")
        if req.api == "v1":
            return self._error(req, 400, "InvalidAction",
                               f"The action {req.action} is not valid for this web service.")
        return self._error(req, 404, "UnknownOperationException", "Unknown operation")

    # -- the threaded front end --------------------------------------------------
    def _handle(self, h):
        if self._mode != "up" or h.gen != self._gen:
            if self._mode == "hang":
                self._hang.wait(300)
            h.reset()
            return
        if h.path.startswith("/_fake/"):
            h.read_body()
            return h.reply(*self._control(h.command, h.path))
        req = self._begin("%s:%d" % h.client_address[:2], h.command, h.path,
                          list(h.headers.items()))
        try:
            try:
                body = h.read_body()
            except (OSError, ValueError):
                req.status = 0
                return h.reset()
            resp = self._prepare(req, body)
            if resp is None:
                fault = self._pick_fault(req)
                delay = self._delay(fault)
                if delay > 0:
                    time.sleep(delay)
                if self._mode != "up" or h.gen != self._gen:   # went down: never answered
                    req.fault, req.status = "down", 0
                    return h.reset()
                resp = self._finish(req, fault, lambda: h.gen == self._gen)
            if resp == "reset":
                h.reset()
            elif resp == "close":
                h.close_connection = True
                try:
                    h.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            else:
                h.reply(*resp, req=req)
        finally:
            self._end(req)

    def _parse_send(self, req, body):
        """None when the request is a well-formed send, else the error answer."""
        ctype = (req.content_type or "").split(";")[0].strip().lower()
        want = "application/json" if req.api == "v2" else "application/x-www-form-urlencoded"
        if ctype != want:
            self._violation(req, f"Content-Type is {req.content_type!r}, SES {req.api} wants "
                                 f"{want!r}")
        if req.api == "v2":
            try:
                doc = json.loads(body)
                data = doc["Content"]["Raw"]["Data"]
            except (ValueError, KeyError, TypeError) as e:
                self._violation(req, f"v2 SendEmail body is not JSON with Content.Raw.Data: {e}")
                return self._error(req, 400, "BadRequestException", "Invalid request body")
            if "FromEmailAddress" in doc:
                req.from_addr = doc["FromEmailAddress"]
                if not req.from_addr:
                    self._violation(req, "FromEmailAddress is present but empty "
                                         "(leave it out for the null sender)")
            dest = doc.get("Destination") or {}
            req.to = list(dest.get("ToAddresses") or [])
            req.cc = list(dest.get("CcAddresses") or [])
            req.bcc = list(dest.get("BccAddresses") or [])
            req.config_set = doc.get("ConfigurationSetName")
            req.tags = [(t.get("Name"), t.get("Value")) for t in doc.get("EmailTags") or []]
            unknown = set(doc) - {"FromEmailAddress", "Destination", "Content",
                                  "ConfigurationSetName", "EmailTags", "ReplyToAddresses",
                                  "FeedbackForwardingEmailAddress", "FromEmailAddressIdentityArn",
                                  "FeedbackForwardingEmailAddressIdentityArn",
                                  "ListManagementOptions"}
            if unknown:
                self._violation(req, f"unknown SendEmail fields {sorted(unknown)}")
            limit = MAX_RAW_V2
        else:
            try:
                form = parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
            except (UnicodeDecodeError, ValueError) as e:
                self._violation(req, f"v1 body is not a form: {e}")
                return self._error(req, 400, "MalformedQueryString", "Malformed query string")
            f = dict(form)
            if len(f) != len(form):
                self._violation(req, "a form field is repeated")
            if f.get("Version") != "2010-12-01":
                self._violation(req, f"Version is {f.get('Version')!r}, not '2010-12-01'")
            data = f.get("RawMessage.Data")
            if data is None:
                self._violation(req, "SendRawEmail without RawMessage.Data")
                return self._error(req, 400, "ValidationError",
                                   "1 validation error detected: Value null at "
                                   "'rawMessage.data' failed to satisfy constraint: Member "
                                   "must not be null")
            if "Source" in f:
                req.from_addr = f["Source"]
                if not req.from_addr:
                    self._violation(req, "Source is present but empty")
            dests = sorted(((int(k.rsplit(".", 1)[1]), v) for k, v in f.items()
                            if re.fullmatch(r"Destinations\.member\.\d+", k)))
            if [n for n, _ in dests] != list(range(1, len(dests) + 1)):
                self._violation(req, "Destinations.member.N are not numbered 1..n")
            req.to = [v for _, v in dests]
            req.config_set = f.get("ConfigurationSetName")
            i = 1
            while f"Tags.member.{i}.Name" in f:
                req.tags.append((f[f"Tags.member.{i}.Name"], f.get(f"Tags.member.{i}.Value")))
                i += 1
            limit = MAX_RAW_V1
        try:
            raw = base64.b64decode(data, validate=True)
        except (ValueError, TypeError) as e:
            self._violation(req, f"message data is not strict base64 ({e}); in a v1 form "
                                 "'+' must be sent as %2B")
            return self._error(req, 400, "InvalidParameterValue" if req.api == "v1"
                               else "BadRequestException", "Invalid base64 in message data")
        req.raw = raw
        req.rcpts = req.to + req.cc + req.bcc
        if not req.rcpts:
            self._violation(req, "no destinations: the envelope recipients must be passed")
        if len(req.rcpts) > MAX_RCPTS:
            self._violation(req, f"{len(req.rcpts)} destinations in one call (max {MAX_RCPTS})")
            return self._error(req, 400, "InvalidParameterValue" if req.api == "v1"
                               else "BadRequestException", "Recipient count exceeds 50.")
        if len({r.lower() for r in req.rcpts}) != len(req.rcpts):
            self._violation(req, f"a recipient is repeated within one call: {req.rcpts}")
        if len(raw) > limit:
            self._violation(req, f"message of {len(raw)} bytes over the {req.api} limit {limit}")
            return self._error(req, 400, "MessageRejected",
                               f"Message length is more than {limit} bytes long: '{len(raw)}'.")
        if re.search(rb"(?<!\r)\n|\r(?!\n)", raw):
            self._violation(req, "the message has a bare LF or CR (SES needs CRLF lines)")
        return None

    def _pick_fault(self, req):
        with self._lock:
            rules = list(self._rules)
        for rule in rules:
            if req.op not in rule.ops:
                continue
            if rule.match is not None and not rule.match(req):
                continue
            with self._lock:
                if rule.count is not None:
                    if rule.count <= 0:
                        continue
                    rule.count -= 1
                    if rule.count == 0 and rule in self._rules:
                        self._rules.remove(rule)
            return rule.fault
        return None

    def _ses_limits(self, req):
        n = len(req.rcpts)
        with self._lock:
            if self._quota:
                q = self.account["SendQuota"]["Max24HourSend"]
                sent = self.sent_base + self._sent_rcpts
                if q >= 0 and sent + n > q:
                    return DAILY_QUOTA
            if self._rate is not None:
                rate, tokens, last = self._rate
                now = time.monotonic()
                tokens = min(rate, tokens + (now - last) * rate)
                if tokens < n and not (tokens >= rate and n > rate):
                    self._rate = [rate, tokens, now]
                    return THROTTLING
                self._rate = [rate, tokens - n, now]
        return None

    def _accept(self, req, alive):
        req.message_id = "0100%012x-%s-000000" % (int(time.time() * 1000), uuid.uuid4())
        msg = Message(req, self.store_raw)
        with self._lock:
            if not alive():
                req.status = 0
                return "reset"
            self.messages.append(msg)
            self._sent_rcpts += len(req.rcpts)
            for r in req.rcpts:
                k = (msg.sha256, r.lower())
                self._accepted[k] = self._accepted.get(k, 0) + 1
        if req.api == "v1":
            xml = ('<SendRawEmailResponse xmlns="%s">\n  <SendRawEmailResult>\n'
                   "    <MessageId>%s</MessageId>\n  </SendRawEmailResult>\n"
                   "  <ResponseMetadata>\n    <RequestId>%s</RequestId>\n"
                   "  </ResponseMetadata>\n</SendRawEmailResponse>\n"
                   % (V1_XMLNS, req.message_id, uuid.uuid4()))
            return self._xml(req, 200, xml)
        return self._json(req, 200, {"MessageId": req.message_id})

    def _list_identities(self, req):
        """ListEmailIdentities: identities sorted by name, PageSize (1-1000,
        default 100 like SES) per page, NextToken = the index of the next one."""
        if self.identities_latency:
            time.sleep(self.identities_latency)
        if not self.identities_api:
            return self._error(req, 403, "AccessDeniedException",
                               "User: arn:aws:iam::123456789012:user/sesrelay is not authorized "
                               "to perform: ses:ListEmailIdentities")
        q = dict(parse_qsl(urlsplit(req.path).query, keep_blank_values=True))
        try:
            size = int(q.get("PageSize", "100"))
            start = int(q.get("NextToken", "0"))
        except ValueError:
            return self._error(req, 400, "BadRequestException", "Invalid PageSize or NextToken.")
        if not 1 <= size <= 1000 or start < 0:
            return self._error(req, 400, "BadRequestException",
                               "PageSize must be between 1 and 1000.")
        with self._lock:
            names = sorted(self.identities)
            page = [(n, self.identities[n]) for n in names[start:start + size]]
            self.list_pages += 1
        doc = {"EmailIdentities": [{"IdentityType": d["IdentityType"], "IdentityName": n,
                                    "SendingEnabled": d["VerifiedForSendingStatus"],
                                    "VerificationStatus": d["VerificationStatus"]}
                                   for n, d in page]}
        if start + size < len(names):
            doc["NextToken"] = str(start + size)
        return self._json(req, 200, doc)

    def remove_identity(self, identity):
        with self._lock:
            self.identities.pop(identity.lower(), None)

    def _account_doc(self):
        with self._lock:
            doc = json.loads(json.dumps(self.account))
            doc["SendQuota"]["SentLast24Hours"] = float(self.sent_base + self._sent_rcpts)
        return doc

    def _violation(self, req, text):
        with self._lock:
            self.violations.append(f"#{req.seq} {req.method} {req.path}: {text}")

    # -- answers -----------------------------------------------------------------
    def _json(self, req, status, doc):
        req.status = status
        return status, json.dumps(doc).encode(), [("x-amzn-RequestId", str(uuid.uuid4())),
                                                  ("Content-Type", "application/json")]

    def _xml(self, req, status, xml):
        req.status = status
        return status, xml.encode(), [("x-amzn-RequestId", str(uuid.uuid4())),
                                      ("Content-Type", "text/xml")]

    def _error(self, req, status, code, message, sender=True, auth=False):
        req.status, req.code = status, code
        if req.api == "v1":
            xml = ('<ErrorResponse xmlns="%s">\n  <Error>\n    <Type>%s</Type>\n'
                   "    <Code>%s</Code>\n    <Message>%s</Message>\n  </Error>\n"
                   "  <RequestId>%s</RequestId>\n</ErrorResponse>\n"
                   % (V1_XMLNS, "Sender" if sender else "Receiver", xml_escape(code),
                      xml_escape(message), uuid.uuid4()))
            return status, xml.encode(), [("x-amzn-RequestId", str(uuid.uuid4())),
                                          ("Content-Type", "text/xml")]
        etype = code + (AUTH_ERROR_SUFFIX if auth else V2_ERROR_SUFFIX)
        return status, json.dumps({"message": message}).encode(), [
            ("x-amzn-RequestId", str(uuid.uuid4())), ("x-amzn-ErrorType", etype),
            ("Content-Type", "application/json")]

    def _control(self, method, path):
        """Unsigned test hooks: GET /_fake/stats, POST /_fake/reset."""
        if path.startswith("/_fake/stats"):
            return 200, json.dumps(self.stats()).encode(), [("Content-Type", "application/json")]
        if path.startswith("/_fake/reset") and method == "POST":
            self.reset()
            return 200, b"{}", [("Content-Type", "application/json")]
        return 404, b"{}", [("Content-Type", "application/json")]


# --------------------------------------------------------------------------
# the asyncio front end (standalone/bench: thousands of requests a second)
# --------------------------------------------------------------------------

_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable"}


async def serve_asyncio(fake, ready=None, stop=None):
    """Serve fake (its signature checks, parsing, records, latency and queued
    faults; not down()/up()) on one asyncio loop: no thread per connection,
    so 64 keep-alive connections each waiting 50 ms cost next to nothing.
    ready(url) is called once listening; returns when the stop event is set."""
    import asyncio

    async def conn(reader, writer):
        peer = writer.get_extra_info("peername") or ("?", 0)
        sock = writer.get_extra_info("socket")
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        cid = "%s:%d" % tuple(peer[:2])
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        ConnectionError):
                    return
                lines = head[:-4].decode("latin-1").split("\r\n")
                try:
                    method, target, version = lines[0].split(" ", 2)
                except ValueError:
                    return
                headers = []
                for line in lines[1:]:
                    k, sep, v = line.partition(":")
                    if sep:
                        headers.append((k.strip(), v.strip()))
                hv = {k.lower(): v for k, v in headers}
                if hv.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                if "chunked" in hv.get("transfer-encoding", "").lower():
                    parts = []
                    while True:
                        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        parts.append(await reader.readexactly(size))
                        await reader.readline()
                    body = b"".join(parts)
                else:
                    n = int(hv.get("content-length") or 0)
                    body = await reader.readexactly(n) if n else b""
                keep = version == "HTTP/1.1" and hv.get("connection", "").lower() != "close"
                if target.startswith("/_fake/"):
                    resp, req = fake._control(method, target), None
                else:
                    req = fake._begin(cid, method, target, headers)
                    try:
                        resp = fake._prepare(req, body)
                        if resp is None:
                            fault = fake._pick_fault(req)
                            delay = fake._delay(fault)
                            if delay > 0:
                                await asyncio.sleep(delay)
                            resp = fake._finish(req, fault)
                    except Exception:
                        fake._end(req)
                        raise
                if resp in ("reset", "close"):
                    if resp == "reset" and sock is not None:
                        try:
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                            struct.pack("ii", 1, 0))
                        except OSError:
                            pass
                    fake._end(req)
                    return
                status, rbody, rheaders = resp
                out = ["HTTP/1.1 %d %s" % (status, _REASONS.get(status, "Error")),
                       "Server: Server",
                       "Date: " + time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())]
                out += ["%s: %s" % kv for kv in rheaders]
                out.append("Content-Length: %d" % len(rbody))
                if not keep:
                    out.append("Connection: close")
                if req is not None:
                    req.done = time.time()
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") +
                             (rbody if method != "HEAD" else b""))
                if req is not None:
                    fake._end(req)
                await writer.drain()
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(conn, fake.host, fake.port, reuse_address=True,
                                        backlog=1024, limit=1 << 20)
    fake.port = server.sockets[0].getsockname()[1]
    if ready:
        ready(fake.url)
    stop = stop or asyncio.Event()
    async with server:
        await stop.wait()
    return stop


# --------------------------------------------------------------------------
# standalone
# --------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description="A local SES endpoint that verifies SigV4 "
                                             "signatures with botocore.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    ap.add_argument("--region", default=DEFAULT_REGION)
    ap.add_argument("--access-key", default=DEFAULT_ACCESS_KEY)
    ap.add_argument("--secret-key", default=DEFAULT_SECRET_KEY)
    ap.add_argument("--token", default=None, help="require this session token")
    ap.add_argument("--max-send-rate", type=float, default=None,
                    help="GetAccount's MaxSendRate (default 1000)")
    ap.add_argument("--enforce-rate", type=float, default=None,
                    help="answer Throttling above this many recipients/s")
    ap.add_argument("--no-verify", action="store_true", help="skip signature checks")
    ap.add_argument("--store", action="store_true",
                    help="keep message bodies in memory (default: only size and hash)")
    ap.add_argument("--verbose", action="store_true", help="log every request on stderr")
    ap.add_argument("--engine", choices=("asyncio", "threads"), default="asyncio",
                    help="asyncio (default: one loop, fast) or threads (the server tests "
                         "use, with down()/up())")
    a = ap.parse_args(argv)
    fake = FakeSES(region=a.region, access_key=a.access_key, secret_key=a.secret_key,
                   token=a.token, host=a.host, port=a.port, latency=a.latency,
                   verify=not a.no_verify, store_raw=a.store, verbose=a.verbose)
    if a.max_send_rate is not None:
        fake.set_account(max_send_rate=a.max_send_rate)
    if a.enforce_rate is not None:
        fake.enforce_rate(a.enforce_rate)
    if a.engine == "asyncio":
        import asyncio

        async def run():
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await serve_asyncio(fake, lambda url: print(f"fake_ses: listening on {url}",
                                                        flush=True), stop)
        asyncio.run(run())
    else:
        fake.start()
        done = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: done.set())
        signal.signal(signal.SIGINT, lambda *_: done.set())
        print(f"fake_ses: listening on {fake.url}", flush=True)
        while not done.wait(0.5):
            pass
        fake.stop()
    print(json.dumps(fake.stats()), flush=True)
    for f in fake.sig_failures[:5]:
        print(f"fake_ses: signature failure: {f['code']}: {f['message']}", file=sys.stderr)
    for v in fake.violations[:5]:
        print(f"fake_ses: violation: {v}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
