"""s3proxy - a pass-through HTTP proxy in front of s3rver that can refuse
chosen requests, to put the relay's S3 forwarder in the states a real outage
or a crash would (an object queued but not yet deleted, a GET that dies).

Requests are forwarded byte for byte, Host header included, so s3rver still
verifies the relay's SigV4 signatures.  Responses stream back in chunks: a
40 MB object never sits in this process either.

    p = S3Proxy("http://127.0.0.1:PORT").start()
    p.fail("DELETE", status=503)      # every DELETE answered 503 SlowDown
    p.clear()
    p.seen                            # [(method, path)] in order
    p.stop()
"""
import http.client
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
       "upgrade"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def _any(self):
        px = self.server.proxy
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        with px.lock:
            px.seen.append((self.command, self.path))
            rule = px.rules.get(self.command)
        if rule is not None:
            status = rule
            msg = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                   b"<Message>Please reduce your request rate.</Message></Error>")
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)
            return
        up = http.client.HTTPConnection(px.host, px.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        try:
            up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in headers.items():
                up.putheader(k, v)
            up.endheaders(body if body else None)
            r = up.getresponse()
        except OSError:
            self.send_response(502)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(r.status, r.reason)
        for k, v in r.getheaders():
            if k.lower() not in HOP and k.lower() != "content-length":
                self.send_header(k, v)
        length = r.getheader("Content-Length")
        if self.command == "HEAD" or length is not None:
            self.send_header("Content-Length", length or "0")
            self.end_headers()
            while self.command != "HEAD":
                chunk = r.read(65536)
                if not chunk:
                    break
                self.wfile.write(chunk)
        else:
            data = r.read()
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        up.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any


class S3Proxy:
    def __init__(self, upstream):
        u = urlsplit(upstream)
        self.host, self.port = u.hostname, u.port
        self.rules = {}
        self.seen = []
        self.lock = threading.Lock()
        self.server = None

    def start(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.proxy = self
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.server.server_address[1]

    def fail(self, method, status=503):
        with self.lock:
            self.rules[method] = status

    def clear(self):
        with self.lock:
            self.rules.clear()

    def count(self, method):
        with self.lock:
            return sum(1 for m, _ in self.seen if m == method)

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
