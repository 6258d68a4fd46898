#!/usr/bin/python3
"""fake_sqs - a local Amazon SQS endpoint (JSON protocol) that checks every
signature.

A threaded HTTP/1.1 server (keep-alive, 127.0.0.1, port 0 by default) that
impersonates the parts of SQS that sesrelay's ses/sqs.c talks to:

  POST /  X-Amz-Target: AmazonSQS.ReceiveMessage   MaxNumberOfMessages 1..10,
                                                   WaitTimeSeconds 0..20 (long
                                                   polling), VisibilityTimeout
          X-Amz-Target: AmazonSQS.DeleteMessage    ReceiptHandle
          X-Amz-Target: AmazonSQS.SendMessage      (for completeness)

with Content-Type application/x-amz-json-1.0 and the queue named by the
body's QueueUrl (only its path, /ACCOUNT/NAME, is compared).

Queues behave like SQS's standard queues, minus the distribution: messages
come out in the order they were sent; a received message is invisible for
its visibility timeout and then comes back (ApproximateReceiveCount + 1, a
new receipt handle) unless deleted; DeleteMessage with a handle of an
earlier receive answers 200 but does not delete (SQS documents exactly
that); a handle never issued is ReceiptHandleIsInvalid.  A long poll waits on
a condition variable and returns as soon as a message is visible (sent, or
back from invisibility), else after WaitTimeSeconds with no messages.

Every request must carry a valid AWS SigV4 signature for service "sqs" in
the fake's region; it is recomputed with botocore by fake_ses.verify_sigv4
(run this under /usr/bin/python3, which has python3-botocore).  A mismatch
is answered 403 SignatureDoesNotMatch in SQS's JSON error shape and recorded
in .sig_failures (with the canonical request botocore expected; never a
secret).  Errors look like SQS's:

  HTTP/1.1 400 Bad Request
  x-amzn-RequestId: <uuid>
  x-amzn-query-error: AWS.SimpleQueueService.NonExistentQueue;Sender
  Content-Type: application/x-amz-json-1.0
  {"__type":"com.amazonaws.sqs#QueueDoesNotExist","message":"The specified queue does not exist."}

Use:

    from fake_sqs import FakeSQS, SERVER_500, ACCESS_DENIED

    with FakeSQS() as sqs:                      # starts; stops on exit
        url = sqs.create_queue("inbound", visibility_timeout=30)
        sqs.send("body text", queue="inbound")  # -> MessageId; wakes long polls
        sqs.env()                               # os.environ + the fake's AWS_* only
        sqs.fail_next(SERVER_500, n=2)          # the next 2 requests (op=... to pick)
        sqs.fail_next(ACCESS_DENIED)
        sqs.messages("inbound")                 # what is still in the queue
        sqs.deleted("inbound")                  # MessageIds deleted, in order
        sqs.requests                            # dicts: op, status, code, fault, ...
        sqs.sig_failures                        # requests refused for their signature
        sqs.polling("inbound")                  # long polls waiting right now
        sqs.wait_until(lambda s: ..., timeout=10)

Fault presets: SERVER_500, UNAVAILABLE_503, ACCESS_DENIED (403),
THROTTLED (400 RequestThrottled), KMS_ACCESS_DENIED, and Fault(...) for more.

Standalone (manual runs):
  /usr/bin/python3 tests/lib/fake_sqs.py --port 9324 --queue inbound
prints "fake_sqs: listening on http://127.0.0.1:PORT queue URL" and the
credentials to use, then serves until SIGTERM or SIGINT.
"""
import argparse
import base64
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fake_ses import SigError, verify_sigv4  # noqa: E402

DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT = "000000000000"
DEFAULT_ACCESS_KEY = "AKIDSQSEXAMPLE"
DEFAULT_SECRET_KEY = "sqsSecretKeyEXAMPLE/K7MDENG+bPxRfiCYEXAMPLE"
CONTENT_TYPE = "application/x-amz-json-1.0"
TARGET_PREFIX = "AmazonSQS."
MAX_BODY = 256 * 1024          # SQS's classic message size limit
MAX_REQUEST = 2 * 1024 * 1024  # what the fake reads of one request


# --------------------------------------------------------------------------
# faults and errors
# --------------------------------------------------------------------------

class Fault:
    """One canned error answer.  code is the JSON __type's shape name,
    query_code the legacy code in x-amzn-query-error; action "respond" or
    "close" (close the connection without answering)."""

    def __init__(self, status, code, message="", query_code=None, sender=None,
                 namespace="com.amazonaws.sqs", action="respond", name=None):
        self.status, self.code, self.message = status, code, message
        self.query_code = query_code or code
        self.sender = (status < 500) if sender is None else sender
        self.namespace = namespace
        self.action = action
        self.name = name or code

    def __repr__(self):
        return f"Fault({self.status}, {self.name!r})"


SERVER_500 = Fault(500, "InternalFailure", "We encountered an internal error. Please try again.",
                   namespace="com.amazon.coral.service")
UNAVAILABLE_503 = Fault(503, "ServiceUnavailable", "Service is unavailable. Try again later.",
                        namespace="com.amazon.coral.service")
ACCESS_DENIED = Fault(403, "AccessDeniedException",
                      "User: arn:aws:iam::000000000000:user/sesrelay is not authorized to "
                      "perform: sqs:receivemessage on resource: "
                      "arn:aws:sqs:us-east-1:000000000000:inbound because no identity-based "
                      "policy allows the sqs:receivemessage action",
                      query_code="AccessDenied", namespace="com.amazon.coral.service",
                      name="AccessDenied")
THROTTLED = Fault(400, "RequestThrottled", "Request is throttled.")
KMS_ACCESS_DENIED = Fault(400, "KmsAccessDenied",
                          "The ciphertext refers to a customer master key that does not exist, "
                          "does not exist in this region, or you are not allowed to access.",
                          query_code="KMS.AccessDeniedException")
CLOSE = Fault(0, "close", action="close")

# errors the fake itself answers (shape name, legacy code, status)
_QUEUE_MISSING = ("QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue", 400,
                  "The specified queue does not exist.")


class _Rule:
    def __init__(self, fault, count, op):
        self.fault, self.count, self.op = fault, count, op


class _Message:
    def __init__(self, body):
        self.id = str(uuid.uuid4())
        self.body = body
        self.md5 = hashlib.md5(body.encode()).hexdigest()
        self.sent = time.time()
        self.receive_count = 0
        self.first_receive = None
        self.visible_at = 0.0      # time.monotonic(); 0: visible now
        self.handle = None         # the latest receipt handle
        self.deleted = False


class _Queue:
    def __init__(self, name, url, visibility_timeout, wait_seconds):
        self.name, self.url = name, url
        self.visibility_timeout = visibility_timeout
        self.wait_seconds = wait_seconds
        self.messages = []         # in send order, deleted ones removed
        self.handles = {}          # every handle ever issued -> _Message
        self.deleted = []          # MessageIds, in deletion order
        self.polling = 0           # long polls waiting now


class _ApiError(Exception):
    def __init__(self, status, code, message, query_code=None, namespace="com.amazonaws.sqs"):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.query_code = query_code or code
        self.namespace = namespace


def _invalid(param, value, reason):
    return _ApiError(400, "InvalidParameterValue",
                     f"Value {value} for parameter {param} is invalid. Reason: {reason}.")


# --------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, addr, fake):
        self.fake = fake
        super().__init__(addr, _Handler)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, OSError)):
            return  # the client went away
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Server"
    sys_version = ""
    timeout = 120

    def log_message(self, fmt, *args):
        if self.server.fake.verbose:
            sys.stderr.write("fake_sqs: " + (fmt % args) + "\n")

    def setup(self):
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def do_POST(self):
        self.server.fake._handle(self)

    do_GET = do_PUT = do_DELETE = do_POST

    def reply(self, status, body, headers=()):
        if isinstance(body, str):
            body = body.encode()
        try:
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self._headers_buffer.append(b"\r\n")
            self._headers_buffer.append(body)
            self.flush_headers()
        except OSError:
            self.close_connection = True


class FakeSQS:
    def __init__(self, region=DEFAULT_REGION, account=DEFAULT_ACCOUNT,
                 access_key=DEFAULT_ACCESS_KEY, secret_key=DEFAULT_SECRET_KEY, token=None,
                 host="127.0.0.1", port=0, verify=True, max_skew=900, verbose=False):
        self.region = region
        self.account = account
        self.access_key, self.secret_key = access_key, secret_key
        self.credentials = {access_key: (secret_key, token)}
        self.host, self.port = host, port
        self.verify = verify
        self.max_skew = max_skew
        self.verbose = verbose
        self.endpoint = None
        self.requests = []
        self.sig_failures = []
        self._queues = {}          # path "/ACCOUNT/NAME" -> _Queue
        self._rules = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._seq = 0
        self._stopping = False
        self._server = None
        self._thread = None

    # --- life cycle ---------------------------------------------------------

    def start(self):
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self.endpoint = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        with self._cond:
            self._stopping = True
            self._cond.notify_all()     # long polls end now
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- for tests ------------------------------------------------------------

    def add_credentials(self, access_key, secret_key, token=None):
        self.credentials[access_key] = (secret_key, token)

    def env(self, **extra):
        """os.environ with only the fake's credentials and region (nothing
        from ~/.aws, no metadata service), plus extra (None removes)."""
        e = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        e.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key,
                 AWS_REGION=self.region, AWS_EC2_METADATA_DISABLED="true",
                 AWS_SHARED_CREDENTIALS_FILE="/nonexistent/fake_sqs/credentials",
                 AWS_CONFIG_FILE="/nonexistent/fake_sqs/config")
        for k, v in extra.items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
        return e

    def queue_url(self, name):
        return f"{self.endpoint}/{self.account}/{name}"

    def create_queue(self, name, visibility_timeout=30, wait_seconds=0):
        url = self.queue_url(name)
        with self._lock:
            self._queues[f"/{self.account}/{name}"] = _Queue(name, url, visibility_timeout,
                                                             wait_seconds)
        return url

    def send(self, body, queue="inbound"):
        """Put a message in the queue (as SendMessage would); its MessageId."""
        with self._cond:
            q = self._queue_named(queue)
            m = _Message(body)
            q.messages.append(m)
            self._cond.notify_all()
            return m.id

    def messages(self, queue="inbound"):
        """[(MessageId, body, receive_count, visible now)] not yet deleted."""
        now = time.monotonic()
        with self._lock:
            return [(m.id, m.body, m.receive_count, m.visible_at <= now)
                    for m in self._queue_named(queue).messages]

    def deleted(self, queue="inbound"):
        with self._lock:
            return list(self._queue_named(queue).deleted)

    def polling(self, queue="inbound"):
        with self._lock:
            return self._queue_named(queue).polling

    def fail_next(self, fault, n=1, op=None):
        """The next n requests (of operation op, e.g. "ReceiveMessage") that
        pass the signature check get fault."""
        with self._lock:
            self._rules.append(_Rule(fault, n, op))

    def clear_faults(self):
        with self._lock:
            self._rules.clear()

    def wait_until(self, pred, timeout=10.0, interval=0.02):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = pred(self)
            if v:
                return v
            time.sleep(interval)
        raise TimeoutError(f"fake_sqs: condition not met within {timeout} s")

    def _queue_named(self, name):
        q = self._queues.get(f"/{self.account}/{name}")
        if q is None:
            raise KeyError(f"no queue {name!r}: create_queue() it first")
        return q

    # --- one request -------------------------------------------------------------

    def _handle(self, h):
        with self._lock:
            self._seq += 1
            rec = {"seq": self._seq, "method": h.command, "path": h.path, "op": None,
                   "status": None, "code": None, "fault": None, "time": time.time(),
                   "seconds": None, "nmessages": None, "conn": "%s:%s" % h.client_address}
            self.requests.append(rec)
        t0 = time.monotonic()
        n = int(h.headers.get("Content-Length") or 0)
        if n > MAX_REQUEST:
            h.close_connection = True
            return self._error(h, rec, _ApiError(413, "RequestEntityTooLarge", "too large"))
        body = h.rfile.read(n) if n else b""
        try:
            status, doc = self._dispatch(h, rec, body)
        except _ApiError as e:
            self._error(h, rec, e)
        except _Close:
            rec["status"] = 0
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        else:
            rec["status"] = status
            h.reply(status, json.dumps(doc), [("x-amzn-RequestId", str(uuid.uuid4())),
                                              ("Content-Type", CONTENT_TYPE)])
        rec["seconds"] = time.monotonic() - t0

    def _error(self, h, rec, e):
        rec["status"], rec["code"] = e.status, e.code
        doc = {"__type": f"{e.namespace}#{e.code}", "message": e.message}
        sender = "Sender" if e.status < 500 else "Receiver"
        h.reply(e.status, json.dumps(doc), [("x-amzn-RequestId", str(uuid.uuid4())),
                                            ("x-amzn-query-error", f"{e.query_code};{sender}"),
                                            ("Content-Type", CONTENT_TYPE)])

    def _dispatch(self, h, rec, body):
        target = h.headers.get("X-Amz-Target") or ""
        op = target[len(TARGET_PREFIX):] if target.startswith(TARGET_PREFIX) else None
        rec["op"] = op
        if h.command != "POST":
            raise _ApiError(405, "UnsupportedOperation", "only POST is served here")
        if self.verify:
            try:
                verify_sigv4(h.command, h.path, list(h.headers.items()), body, self.credentials,
                             self.region, service="sqs", max_skew=self.max_skew)
            except SigError as e:
                with self._lock:
                    self.sig_failures.append({"seq": rec["seq"], "op": op, "code": e.code,
                                              "message": e.message, "detail": e.detail})
                raise _ApiError(e.status, e.code, e.message,
                                namespace="com.amazon.coral.service")
        fault = self._take_fault(op)
        if fault is not None:
            rec["fault"] = fault.name
            if fault.action == "close":
                raise _Close()
            raise _ApiError(fault.status, fault.code, fault.message, fault.query_code,
                            fault.namespace)
        if (h.headers.get("Content-Type") or "").split(";")[0].strip() != CONTENT_TYPE:
            raise _ApiError(400, "UnsupportedOperation",
                            f"the JSON protocol wants Content-Type {CONTENT_TYPE}")
        try:
            req = json.loads(body.decode("utf-8"))
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except (UnicodeDecodeError, ValueError) as e:
            raise _ApiError(400, "SerializationException", f"bad JSON body: {e}",
                            namespace="com.amazon.coral.service")
        handler = {"ReceiveMessage": self._receive, "DeleteMessage": self._delete,
                   "SendMessage": self._send_op}.get(op)
        if handler is None:
            raise _ApiError(400, "UnknownOperationException", f"unknown target {target!r}",
                            namespace="com.amazon.coral.service")
        queue = self._lookup(req)
        return 200, handler(queue, req, rec)

    def _take_fault(self, op):
        with self._lock:
            for rule in self._rules:
                if rule.count > 0 and (rule.op is None or rule.op == op):
                    rule.count -= 1
                    if rule.count == 0:
                        self._rules.remove(rule)
                    return rule.fault
        return None

    def _lookup(self, req):
        url = req.get("QueueUrl")
        if not isinstance(url, str) or not url:
            raise _ApiError(400, "MissingParameter",
                            "The request must contain the parameter QueueUrl.")
        with self._lock:
            q = self._queues.get(urlsplit(url).path.rstrip("/"))
        if q is None:
            code, query, status, message = _QUEUE_MISSING
            raise _ApiError(status, code, message, query)
        return q

    @staticmethod
    def _int(req, name, default, lo, hi, reason):
        v = req.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise _invalid(name, v, reason)
        return v

    def _receive(self, q, req, rec):
        n = self._int(req, "MaxNumberOfMessages", 1, 1, 10, "Must be between 1 and 10, if "
                      "provided")
        wait = self._int(req, "WaitTimeSeconds", q.wait_seconds, 0, 20,
                         "Must be >= 0 and <= 20, if provided")
        vis = self._int(req, "VisibilityTimeout", q.visibility_timeout, 0, 43200,
                        "Must be >= 0 and <= 43200, if provided")
        names = set(req.get("MessageSystemAttributeNames") or []) | \
            set(req.get("AttributeNames") or [])
        deadline = time.monotonic() + wait
        with self._cond:
            q.polling += 1
            try:
                while True:
                    now = time.monotonic()
                    ready = [m for m in q.messages if m.visible_at <= now][:n]
                    if ready or now >= deadline or self._stopping:
                        break
                    # wake for a send, or when the next invisible message returns
                    wake = min([m.visible_at for m in q.messages] + [deadline])
                    self._cond.wait(max(0.0, min(wake, deadline) - now))
            finally:
                q.polling -= 1
            out = []
            for m in ready:
                m.receive_count += 1
                if m.first_receive is None:
                    m.first_receive = time.time()
                m.visible_at = now + vis
                m.handle = base64.b64encode(uuid.uuid4().bytes + m.id.encode() +
                                            os.urandom(96)).decode()
                q.handles[m.handle] = m
                doc = {"MessageId": m.id, "ReceiptHandle": m.handle, "MD5OfBody": m.md5,
                       "Body": m.body}
                attrs = {}
                if names & {"All", "ApproximateReceiveCount"}:
                    attrs["ApproximateReceiveCount"] = str(m.receive_count)
                if names & {"All", "SentTimestamp"}:
                    attrs["SentTimestamp"] = str(int(m.sent * 1000))
                if attrs:
                    doc["Attributes"] = attrs
                out.append(doc)
        rec["nmessages"] = len(out)
        return {"Messages": out} if out else {}

    def _delete(self, q, req, rec):
        handle = req.get("ReceiptHandle")
        if not isinstance(handle, str) or not handle:
            raise _ApiError(400, "MissingParameter",
                            "The request must contain the parameter ReceiptHandle.")
        with self._cond:
            m = q.handles.get(handle)
            if m is None:
                raise _ApiError(400, "ReceiptHandleIsInvalid",
                                f'The input receipt handle "{handle[:40]}" is not a valid '
                                f"receipt handle.")
            # an earlier receive's handle: SQS answers 200 and keeps the message
            if m.handle == handle and not m.deleted:
                m.deleted = True
                q.messages.remove(m)
                q.deleted.append(m.id)
                self._cond.notify_all()
        return {}

    def _send_op(self, q, req, rec):
        body = req.get("MessageBody")
        if not isinstance(body, str) or not body or len(body.encode()) > MAX_BODY:
            raise _invalid("MessageBody", "(body)", "Must be 1 to 262144 bytes")
        with self._cond:
            m = _Message(body)
            q.messages.append(m)
            self._cond.notify_all()
        return {"MessageId": m.id, "MD5OfMessageBody": m.md5}


class _Close(Exception):
    pass


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--region", default=DEFAULT_REGION)
    ap.add_argument("--queue", action="append", default=None)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    fake = FakeSQS(region=args.region, port=args.port, verbose=args.verbose).start()
    urls = [fake.create_queue(name) for name in (args.queue or ["inbound"])]
    print(f"fake_sqs: listening on {fake.endpoint} {' '.join(urls)}", flush=True)
    print(f"fake_sqs: AWS_ACCESS_KEY_ID={fake.access_key} "
          f"AWS_SECRET_ACCESS_KEY={fake.secret_key} AWS_REGION={fake.region}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
