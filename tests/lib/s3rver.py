"""A local S3 for tests: s3rver (npm, tests/node) on a free loopback port with
a private data directory, optionally behind a small front that checks every
request's SigV4 signature with botocore - s3rver itself only checks that the
access key id exists and accepts any V4 signature.

    from s3rver import S3rver

    with S3rver(tmp_path) as s3:               # starts; stops (by PID) on exit
        s3.create_bucket("inbound")
        s3.put("inbound", "mail/0001", b"From: ...")   # bytes, or a file path
        s3.endpoint                           # "http://127.0.0.1:PORT": give this
        s3.env()                              # os.environ + the AWS_* s3rver knows
        s3.keys("inbound", prefix="mail/")    # ["mail/0001"]
        s3.get("inbound", "mail/0001")        # b"From: ..."
        s3.exists("inbound", "mail/0001")     # True
        s3.delete("inbound", "mail/0001")
        s3.requests                           # [(method, raw path, status), ...]
        s3.signature_failures                 # requests the front refused, with why

Credentials are s3rver's built-in S3RVER/S3RVER, region us-east-1, path-style
addressing.  With verify_signatures (the default) the front answers like S3
for a bad signature (403 SignatureDoesNotMatch), a payload that does not match
x-amz-content-sha256 (400 XAmzContentSHA256Mismatch), a credential scope for
another region (400 AuthorizationHeaderMalformed) or a session token that is
sent but not signed; everything else is passed to s3rver as it came.  The
helper's own botocore requests go through the same front, so they check it.

s3rver quirks worth knowing (3.7.1):
  - it never verifies V4 signatures (hence the front);
  - its continuation tokens use DES, which Node 17+ refuses unless started with
    --openssl-legacy-provider (done here when node supports it);
  - CopyObject reads x-amz-copy-source with JavaScript's decodeURI, which
    leaves %2B %24 %26 %2C %2F %3A %3B %3D %3F %40 %23 encoded: copying a key
    with + $ & , : ; = ? @ # fails with NoSuchKey (real S3 decodes them);
  - encoding-type=url is ignored (keys always come back raw);
  - keys with "//" cannot be stored (404), and "a/./b", "a/../b" are
    normalised to "a/b", "b" (real S3 keeps all three as they are).

Missing node or `npm ci` in tests/node is an error, not a skip (as for the
nodemailer test): CI installs both.
"""
import hashlib
import http.client
import http.server
import os
import re
import shutil
import socketserver
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
S3RVER_JS = NODE_DIR / "node_modules" / "s3rver" / "bin" / "s3rver.js"

ACCESS_KEY = "S3RVER"
SECRET_KEY = "S3RVER"
REGION = "us-east-1"

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer",
               "upgrade", "proxy-connection", "content-length"}
_UNSIGNED = ("UNSIGNED-PAYLOAD", "STREAMING-")


def _node_args():
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed (CI installs nodejs)")
    if not S3RVER_JS.exists():
        raise RuntimeError(f"{S3RVER_JS} missing: run `npm ci` in tests/node")
    args = [node]
    ok = subprocess.run([node, "--openssl-legacy-provider", "-e", "0"],
                        capture_output=True, timeout=30).returncode == 0
    if ok:  # s3rver's continuation tokens are DES-encrypted
        args.append("--openssl-legacy-provider")
    return args + [str(S3RVER_JS)]


class S3rver:
    """s3rver on 127.0.0.1, started by start() (or `with`), stopped by stop()."""

    ACCESS_KEY = ACCESS_KEY
    SECRET_KEY = SECRET_KEY
    REGION = REGION

    def __init__(self, workdir, verify_signatures=True, start_timeout=30):
        self.workdir = Path(workdir)
        self.verify_signatures = verify_signatures
        self.start_timeout = start_timeout
        self.proc = None
        self.port = None          # s3rver's own port
        self.endpoint = None      # what clients use: the front's URL when verifying
        self.requests = []        # (method, raw path, status) seen by the front
        self.signature_failures = []  # dicts: method, path, code, why[, canonical_request]
        self._front = None
        self._front_thread = None
        self._client = None
        self._lock = threading.Lock()

    # --- life cycle ---------------------------------------------------------

    def start(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        data = self.workdir / "s3rver-data"
        data.mkdir(exist_ok=True)
        self.log_path = self.workdir / "s3rver.log"
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                _node_args() + ["-d", str(data), "-a", "127.0.0.1", "-p", "0", "--silent",
                                "--no-vhost-buckets"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=str(self.workdir))
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout
        while self.port is None:
            m = re.search(rb"listening on 127\.0\.0\.1:(\d+)", self.log_path.read_bytes())
            if m:
                self.port = int(m.group(1))
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                text = self.log_path.read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"s3rver did not start:\n{text}")
            else:
                time.sleep(0.05)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        if self.verify_signatures:
            self._start_front()
        return self

    def stop(self):
        if self._front is not None:
            self._front.shutdown()
            self._front.server_close()
            self._front_thread.join(timeout=10)
            self._front = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- for the code under test ----------------------------------------------

    def env(self, **extra):
        """os.environ with only the credentials s3rver knows (nothing from
        ~/.aws, no metadata service), plus extra (a None value removes)."""
        e = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        e.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                 AWS_REGION=REGION, AWS_EC2_METADATA_DISABLED="true",
                 AWS_SHARED_CREDENTIALS_FILE=str(self.workdir / "no-credentials"),
                 AWS_CONFIG_FILE=str(self.workdir / "no-config"))
        for k, v in extra.items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
        return e

    # --- seeing and changing the bucket from Python ------------------------------

    @property
    def client(self):
        """A botocore S3 client on the endpoint (path-style, S3RVER keys)."""
        if self._client is None:
            import botocore.session
            from botocore.config import Config
            session = botocore.session.get_session()
            self._client = session.create_client(
                "s3", region_name=REGION, endpoint_url=self.endpoint,
                aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                              connect_timeout=10, read_timeout=60))
        return self._client

    def create_bucket(self, bucket):
        self.client.create_bucket(Bucket=bucket)

    def put(self, bucket, key, data):
        """data: bytes, or the path of a file (streamed from disk)."""
        if isinstance(data, (str, Path)):
            with open(data, "rb") as f:
                self.client.put_object(Bucket=bucket, Key=key, Body=f)
        else:
            self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def get(self, bucket, key):
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def exists(self, bucket, key):
        import botocore.exceptions
        try:
            self.client.head_object(Bucket=bucket, Key=key)
            return True
        except botocore.exceptions.ClientError as e:
            if e.response["Error"]["Code"] in ("404", "NoSuchKey"):
                return False
            raise

    def keys(self, bucket, prefix=""):
        out, token = [], None
        while True:
            kw = {"Bucket": bucket, "Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            page = self.client.list_objects_v2(**kw)
            out += [o["Key"] for o in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated"):
                return out

    def delete(self, bucket, key):
        self.client.delete_object(Bucket=bucket, Key=key)

    # --- the signature-checking front -------------------------------------------

    def _start_front(self):
        owner = self

        class Handler(_FrontHandler):
            s3 = owner

        self._front = _Server(("127.0.0.1", 0), Handler)
        self._front_thread = threading.Thread(target=self._front.serve_forever,
                                              kwargs={"poll_interval": 0.1}, daemon=True)
        self._front_thread.start()
        self.endpoint = f"http://127.0.0.1:{self._front.server_address[1]}"

    def _note(self, method, path, status):
        with self._lock:
            self.requests.append((method, path, status))

    def _refuse(self, method, path, code, why, creq=None):
        with self._lock:
            self.signature_failures.append({"method": method, "path": path, "code": code,
                                            "why": why, "canonical_request": creq})

    def check(self, method, path, headers, body):
        """None when the request may pass, else (status, code, message)."""
        auth = headers.get("Authorization")
        if auth is None or not auth.startswith("AWS4-HMAC-SHA256 "):
            return None  # anonymous or V2: s3rver decides
        parts = dict(p.strip().split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 "):].split(",")
                     if "=" in p)
        try:
            akid, date8, region, service, _ = parts["Credential"].split("/")
            signed = parts["SignedHeaders"].split(";")
            given = parts["Signature"]
        except (KeyError, ValueError):
            return 400, "AuthorizationHeaderMalformed", "The authorization header is malformed."
        if akid != ACCESS_KEY:
            return None  # s3rver answers InvalidAccessKeyId
        if region != REGION or service != "s3":
            return (400, "AuthorizationHeaderMalformed",
                    f"The authorization header is malformed; the region '{region}' is wrong; "
                    f"expecting '{REGION}'")
        for need in ("host", "x-amz-content-sha256", "x-amz-date"):
            if need not in signed or headers.get(need) is None:
                return 403, "AccessDenied", f"{need} must be sent and signed"
        if headers.get("x-amz-security-token") is not None and \
                "x-amz-security-token" not in signed:
            return 403, "AccessDenied", "x-amz-security-token must be signed"
        payload = headers["x-amz-content-sha256"]
        if not payload.startswith(_UNSIGNED) and payload != hashlib.sha256(body).hexdigest():
            return (400, "XAmzContentSHA256Mismatch",
                    "The provided 'x-amz-content-sha256' header does not match what was "
                    "computed.")
        want, creq = _botocore_signature(method, path, headers, signed, SECRET_KEY, region)
        if want != given:
            return (403, "SignatureDoesNotMatch",
                    "The request signature we calculated does not match the signature you "
                    "provided. Check your key and signing method.", creq)
        return None


def _botocore_signature(method, raw_path, headers, signed, secret, region):
    """What botocore's S3SigV4Auth makes of this request as it arrived."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    split = urlsplit(raw_path)
    # S3 decodes each query name and value, then signs them re-encoded
    params = [tuple(unquote(x) for x in pair.partition("=")[::2])
              for pair in split.query.split("&") if pair]
    req = AWSRequest(method=method, url="http://" + headers["host"] + split.path,
                     headers={h: headers[h] for h in signed if headers.get(h) is not None},
                     params=params)
    req.context["timestamp"] = headers["x-amz-date"]
    token = headers.get("x-amz-security-token")
    auth = S3SigV4Auth(Credentials(ACCESS_KEY, secret, token), "s3", region)
    creq = auth.canonical_request(req)
    return auth.signature(auth.string_to_sign(req, creq), req), creq


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # a client that stops reading mid-body (a sink that aborts) is normal
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _FrontHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as libcurl and botocore expect
    timeout = 120                  # an idle kept-alive connection ends
    s3 = None                      # the S3rver, set by a subclass

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._handle()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self):
        body = self._read_body()
        problem = self.s3.check(self.command, self.path, self.headers, body)
        if problem is not None:
            status, code, message = problem[:3]
            self.s3._refuse(self.command, self.path, code, message,
                            problem[3] if len(problem) > 3 else None)
            self._send_error(status, code, message)
            return
        self._forward(body)

    def _send_error(self, status, code, message):
        rid = uuid.uuid4().hex[:16].upper()
        doc = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
               f"<Message>{message}</Message><RequestId>{rid}</RequestId></Error>").encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", rid)
        self.send_header("Content-Length", str(len(doc)) if self.command != "HEAD" else "0")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(doc)
        self.s3._note(self.command, self.path, status)

    def _forward(self, body):
        conn = http.client.HTTPConnection("127.0.0.1", self.s3.port, timeout=120)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() not in _HOP_BY_HOP and k.lower() != "expect":
                    conn.putheader(k, v)
            if body or self.command in ("PUT", "POST"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body if body else None)
            resp = conn.getresponse()
            self.send_response_only(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP_BY_HOP:
                    self.send_header(k, v)
            no_body = self.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
            length = resp.getheader("Content-Length")
            if no_body:
                if self.command == "HEAD" and length is not None:
                    self.send_header("Content-Length", length)
                self.end_headers()
            elif length is not None:
                self.send_header("Content-Length", length)
                self.end_headers()
                left = int(length)
                while left > 0:
                    chunk = resp.read(min(left, 1 << 16))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    left -= len(chunk)
            else:
                data = resp.read()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            self.s3._note(self.command, self.path, resp.status)
        finally:
            conn.close()
