#!/usr/bin/python3
"""fake_ses_smtp - a local SMTP server that behaves like Amazon SES's SMTP
interface (email-smtp.REGION.amazonaws.com), for tests of the "smtp"
transport.  Built on Debian's python3-aiosmtpd: run it under /usr/bin/python3.

Like SES:
  * TLS is mandatory: mode "starttls" (MAIL before STARTTLS gets "530 Must
    issue a STARTTLS command first") or "implicit" (TLS from the first byte).
    Mode "none" (plain text) exists for the relay's smtp_tls = none.
  * AUTH PLAIN and LOGIN, and nothing without it ("530 5.7.0 Authentication
    required").  The one account accepted is the access key id with the SMTP
    password derived from its secret key for the fake's region (SES-NOTES.md:
    smtp_password(); the published vector is checked by self_check()), plus
    any extra user/password given.  Failures answer "535 Authentication
    Credentials Invalid".
  * EHLO advertises 8BITMIME, SIZE, STARTTLS, AUTH PLAIN LOGIN; PIPELINING
    only when asked for (SES does not offer it; the relay must cope with both).
  * At most 50 recipients per transaction: the 51st and later get
    "452 4.5.3 Too many recipients" (RFC 5321's answer for it; a client should
    send the rest in another transaction) and are recorded as violations,
    since the relay promises never to send more than 50.
  * A connection idle for idle_timeout seconds gets "451 4.4.2 Timeout
    waiting for data from client." and is closed (SES: about 10 s).
  * The end of data is answered "250 Ok <MessageId>".

What tests get (thread-safe; each accessor returns copies):
  .messages()      accepted messages: mail_from ("" for <>), rcpts, data
                   (bytes, dot-unstuffed, exactly as received), mail_options,
                   config_set (X-SES-CONFIGURATION-SET value or None),
                   message_id, conn (connection number), tls (version or None),
                   user (AUTH login)
  .connections()   one dict per connection: id, tls, auth (mechanism),
                   user, commands (verbs in order: EHLO, STARTTLS, AUTH, MAIL,
                   RCPT, DATA, RSET, QUIT ...), pipelined (commands that
                   arrived while earlier replies were unsent), messages, closed
  .violations()    protocol mistakes the relay must never make
  .duplicates()    (sha256 of the data, recipient) accepted more than once
  .wait_until(f, timeout)  poll f() until truthy; returns its value

Fault injection (matched in order, each used up after n uses):
  .inject(kind, reply, n=1, match=None, close=False)
      kind: "MAIL", "RCPT", "DATA" (the DATA command) or "DOT" (the end of
      the message data); reply: the full reply line(s), e.g.
      "454 Throttling failure: Maximum sending rate exceeded.";
      match(addr) narrows RCPT/MAIL faults to some addresses; close=True (or a
      421 reply) closes the connection after answering.
  .clear_faults()
  .dot_latency = seconds slept before answering the end of data

PKI for tests: make_pki(directory) writes a CA, a server certificate for
localhost / 127.0.0.1 / ::1 and one for a WRONG name (wrong.example.net),
all signed by the CA, with python3-cryptography; returns their paths.

Standalone: /usr/bin/python3 tests/lib/fake_ses_smtp.py --mode none --port 2525
prints "fake_ses_smtp: listening on 127.0.0.1:PORT" and serves until SIGINT.
"""
import argparse
import asyncio
import base64
import datetime
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import socket
import ssl
import sys
import threading
import time
import uuid
import warnings

from aiosmtpd.smtp import SMTP, AuthResult

DEFAULT_ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
DEFAULT_SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
MAX_RECIPIENTS = 50
MAX_SIZE = 40 * 1024 * 1024
NULL_SENDER = "null-sender@fake-ses.invalid"  # aiosmtpd refuses MAIL FROM:<>

logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd's chatter

THROTTLING = "454 Throttling failure: Maximum sending rate exceeded."
DAILY_QUOTA = "454 Throttling failure: Daily message quota exceeded."
ACCESS_DENIED = "554 Access denied: User is not authorized to perform ses:SendRawEmail"
MESSAGE_REJECTED = ("554 Message rejected: Email address is not verified. The following "
                    "identities failed the check in region US-EAST-1: a@example.com")
SERVICE_CLOSING = "421 Service unavailable: closing transmission channel"
TEMP_FAILURE = "451 Temporary service failure"


def smtp_password(secret, region):
    """The SES SMTP password for an IAM secret access key (SES-NOTES.md)."""
    def mac(key, msg):
        return hmac.new(key, msg.encode(), hashlib.sha256).digest()
    k = mac(("AWS4" + secret).encode(), "11111111")
    for part in (region, "ses", "aws4_request", "SendRawEmail"):
        k = mac(k, part)
    return base64.b64encode(b"\x04" + k).decode()


def self_check():
    """The published vector (aws-sdk-php tests) must come out."""
    got = smtp_password("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "us-east-2")
    assert got == "BMPPgbAHoFVbze1Ud0oA5uNdXRwUXUZ+qOwphGJbl/cS", got
    return got


# --- PKI ---------------------------------------------------------------------

def make_pki(directory):
    """CA + server certs (right and wrong host name) in directory; returns a
    dict of paths: ca, cert, key, wrong_cert, wrong_key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.utcnow() - datetime.timedelta(minutes=5)
    later = now + datetime.timedelta(days=2)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(path, key):
        with open(path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        os.chmod(path, 0o600)

    def write_cert(path, cert):
        with open(path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("fake-ses test CA"))
          .issuer_name(name("fake-ses test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(later)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    paths = {"ca": os.path.join(directory, "ca.pem")}
    write_cert(paths["ca"], ca)

    def leaf(tag, cn, sans):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(later)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        paths[tag + "cert"] = os.path.join(directory, tag + "cert.pem")
        paths[tag + "key"] = os.path.join(directory, tag + "key.pem")
        write_cert(paths[tag + "cert"], cert)
        write_key(paths[tag + "key"], key)

    leaf("", "localhost", [x509.DNSName("localhost"),
                           x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                           x509.IPAddress(ipaddress.ip_address("::1"))])
    leaf("wrong_", "wrong.example.net", [x509.DNSName("wrong.example.net")])
    return paths


def server_context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


# --- the SMTP side -----------------------------------------------------------

class _Session(SMTP):
    """aiosmtpd's SMTP with SES's manners and the fake's bookkeeping."""

    def __init__(self, fake, **kw):
        self.fake = fake
        self.conn = None
        super().__init__(_Handler(fake), **kw)

    def connection_made(self, transport):
        starttls_done = self._original_transport is not None and self.transport is not None
        super().connection_made(transport)
        if starttls_done:
            obj = transport.get_extra_info("ssl_object")
            self.fake._update_conn(self.conn, tls=obj.version() if obj else "?")
            return
        obj = transport.get_extra_info("ssl_object")
        self.conn = self.fake._new_conn(transport.get_extra_info("peername"),
                                        obj.version() if obj else None)

    def connection_lost(self, error):
        if self.conn is not None:
            self.fake._update_conn(self.conn, closed=True)
        super().connection_lost(error)

    def _timeout_cb(self):
        # SES says why before it hangs up on an idle client
        try:
            self._writer.write(b"451 4.4.2 Timeout waiting for data from client.\r\n")
        except Exception:
            pass
        self.fake._update_conn(self.conn, idle_closed=True)
        super()._timeout_cb()

    def _note(self, verb):
        # pipelining: the client wrote this command before reading earlier replies
        pipelined = len(self._reader._buffer) > 0  # noqa: SLF001 (aiosmtpd's own reader)
        self.fake._command(self.conn, verb, pipelined)

    async def smtp_EHLO(self, arg):
        self._note("EHLO")
        await super().smtp_EHLO(arg)

    async def smtp_HELO(self, arg):
        self._note("HELO")
        await super().smtp_HELO(arg)

    async def smtp_STARTTLS(self, arg):
        self._note("STARTTLS")
        await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg):
        self._note("AUTH " + (arg or "").split(" ")[0].upper())
        await super().smtp_AUTH(arg)

    async def smtp_MAIL(self, arg):
        self._note("MAIL")
        if arg and re.match(r"(?i)^FROM:\s*<>", arg):
            arg = re.sub(r"(?i)^FROM:\s*<>", f"FROM:<{NULL_SENDER}>", arg)
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg):
        self._note("RCPT")
        await super().smtp_RCPT(arg)

    async def smtp_RSET(self, arg):
        self._note("RSET")
        await super().smtp_RSET(arg)

    async def smtp_NOOP(self, arg):
        self._note("NOOP")
        await super().smtp_NOOP(arg)

    async def smtp_QUIT(self, arg):
        self._note("QUIT")
        await super().smtp_QUIT(arg)

    async def smtp_DATA(self, arg):
        self._note("DATA")
        reply = self.envelope.rcpt_tos and self.fake._fault_reply(self, "DATA", None)
        if reply:
            await self.push(reply)
            return
        await super().smtp_DATA(arg)

    def close_soon(self):
        # after the reply that aiosmtpd is about to push has gone out
        transport = self.transport
        if transport is not None:
            self.loop.call_later(0.05, transport.close)


class _Handler:
    def __init__(self, fake):
        self.fake = fake

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        out = ["250-email-smtp.amazonaws.com"] + [r for r in responses[1:-1]
                                                   if not r.startswith("250-HELP")]
        if self.fake.pipelining:
            out.append("250-PIPELINING")
        out.append("250 Ok")
        return out

    async def handle_MAIL(self, server, session, envelope, address, options):
        reply = self.fake._fault_reply(server, "MAIL", address)
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 Ok"

    async def handle_RCPT(self, server, session, envelope, address, options):
        reply = self.fake._fault_reply(server, "RCPT", address)
        if reply:
            return reply
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            self.fake._violation(f"more than {MAX_RECIPIENTS} recipients in one transaction "
                                 f"(connection {server.conn})")
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 Ok"

    async def handle_DATA(self, server, session, envelope):
        if self.fake.dot_latency:
            await asyncio.sleep(self.fake.dot_latency)
        reply = self.fake._fault_reply(server, "DOT", None)
        if reply:
            return reply
        data = bytes(envelope.original_content)
        if re.search(rb"(?<!\r)\n|\r(?!\n)", data):
            self.fake._violation("bare CR or LF in the message data")
        mid = "0100%012x-%s-000000" % (int(time.time() * 1000), uuid.uuid4())
        login = session.auth_data.login.decode() if session.auth_data else None
        self.fake._record(dict(mail_from="" if envelope.mail_from == NULL_SENDER
                               else envelope.mail_from,
                               rcpts=list(envelope.rcpt_tos), data=data,
                               mail_options=list(envelope.mail_options),
                               config_set=_header(data, b"X-SES-CONFIGURATION-SET"),
                               message_id=mid, conn=server.conn, user=login,
                               tls=self.fake._conn_tls(server.conn), time=time.time()))
        return f"250 Ok {mid}"


def _header(data, name):
    head = data.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        k, sep, v = line.partition(b":")
        if sep and k.strip().lower() == name.lower():
            return v.strip().decode("ascii", "replace")
    return None


class FakeSESSMTP:
    def __init__(self, mode="starttls", pki=None, cert=None, key=None, region="us-east-1",
                 access_key=DEFAULT_ACCESS_KEY, secret_key=DEFAULT_SECRET_KEY, users=None,
                 idle_timeout=10.0, size_limit=MAX_SIZE, pipelining=False,
                 auth_mechanisms=("PLAIN", "LOGIN"), host="127.0.0.1", port=0):
        assert mode in ("starttls", "implicit", "none"), mode
        self.mode = mode
        if mode != "none" and cert is None:
            cert, key = pki["cert"], pki["key"]
        self.cert, self.key = cert, key
        self.region = region
        self.accounts = {access_key: smtp_password(secret_key, region)}
        self.accounts.update(users or {})
        self.idle_timeout = idle_timeout
        self.size_limit = size_limit
        self.pipelining = pipelining
        self.auth_exclude = [m for m in ("PLAIN", "LOGIN") if m not in auth_mechanisms]
        self.host = host
        self.port = port
        self.dot_latency = 0.0
        self.allow_duplicates = False  # tests that provoke duplicates on purpose set it
        self._lock = threading.Lock()
        self._messages = []
        self._conns = []
        self._violations = []
        self._faults = []
        self._fault_log = []
        self._auth_failures = 0
        self._loop = None
        self._thread = None
        self._server = None
        self._sessions = set()

    # --- life cycle ----------------------------------------------------------

    def start(self):
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        implicit = server_context(self.cert, self.key) if self.mode == "implicit" else None

        def run():
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                self._loop.create_server(self._factory, sock=sock, ssl=implicit))
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake_ses_smtp", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def _factory(self):
        tls = server_context(self.cert, self.key) if self.mode == "starttls" else None
        with warnings.catch_warnings():
            # implicit TLS and mode "none" require AUTH without STARTTLS on purpose
            warnings.simplefilter("ignore")
            s = _Session(self, tls_context=tls, require_starttls=self.mode == "starttls",
                         auth_required=True, auth_require_tls=self.mode == "starttls",
                         authenticator=self._authenticate,
                         hostname="email-smtp.amazonaws.com", ident="SimpleEmailService-fake",
                         timeout=self.idle_timeout, data_size_limit=self.size_limit,
                         auth_exclude_mechanism=self.auth_exclude, loop=self._loop)
        self._sessions.add(s)
        return s

    def stop(self):
        if self._loop is None:
            return
        loop, self._loop = self._loop, None

        def shutdown():
            self._server.close()
            for s in list(self._sessions):
                if s.transport is not None:
                    s.transport.close()
            loop.call_later(0.1, loop.stop)

        loop.call_soon_threadsafe(shutdown)
        self._thread.join(5)
        if not self._thread.is_alive():
            loop.close()

    def drop_connections(self):
        """Close every open connection now (as SES does when it recycles hosts)."""
        def drop():
            for s in list(self._sessions):
                if s.transport is not None:
                    s.transport.close()
        self._loop.call_soon_threadsafe(drop)

    # --- AUTH ----------------------------------------------------------------

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        ok = login in self.accounts and hmac.compare_digest(self.accounts[login], password)
        self._update_conn(server.conn, auth=mechanism, user=login if ok else None)
        if not ok:
            with self._lock:
                self._auth_failures += 1
            return AuthResult(success=False, handled=False,
                              message="535 Authentication Credentials Invalid")
        return AuthResult(success=True, auth_data=auth_data)

    @property
    def auth_failures(self):
        with self._lock:
            return self._auth_failures

    # --- faults --------------------------------------------------------------

    def inject(self, kind, reply, n=1, match=None, close=False):
        assert kind in ("MAIL", "RCPT", "DATA", "DOT"), kind
        with self._lock:
            self._faults.append(dict(kind=kind, reply=reply, n=n, match=match, close=close))

    def clear_faults(self):
        with self._lock:
            self._faults = []

    def _fault_reply(self, server, kind, address):
        """The injected reply for this command (closing the connection after
        it when asked to, or for a 421), or None."""
        with self._lock:
            for f in self._faults:
                if f["kind"] != kind or f["n"] <= 0:
                    continue
                if f["match"] is not None and not f["match"](address):
                    continue
                f["n"] -= 1
                reply, close = f["reply"], f["close"]
                break
            else:
                return None
            self._fault_log.append((kind, address, reply))
        if close or reply.startswith("421"):
            server.close_soon()
        return reply

    def faults_used(self):
        with self._lock:
            return list(self._fault_log)

    # --- records -------------------------------------------------------------

    def _new_conn(self, peer, tls):
        with self._lock:
            cid = len(self._conns) + 1
            self._conns.append(dict(id=cid, peer=peer, tls=tls, auth=None, user=None,
                                    commands=[], pipelined=[], messages=0, closed=False,
                                    idle_closed=False, opened=time.time()))
            return cid

    def _update_conn(self, cid, **kw):
        if cid is None:
            return
        with self._lock:
            self._conns[cid - 1].update(kw)

    def _conn_tls(self, cid):
        with self._lock:
            return self._conns[cid - 1]["tls"] if cid else None

    def _command(self, cid, verb, pipelined):
        if cid is None:
            return
        with self._lock:
            c = self._conns[cid - 1]
            c["commands"].append(verb)
            if pipelined:
                c["pipelined"].append(verb)

    def _violation(self, what):
        with self._lock:
            self._violations.append(what)

    def _record(self, msg):
        with self._lock:
            self._messages.append(msg)
            if msg["conn"]:
                self._conns[msg["conn"] - 1]["messages"] += 1

    def messages(self):
        with self._lock:
            return [dict(m) for m in self._messages]

    def connections(self):
        with self._lock:
            return [dict(c, commands=list(c["commands"]), pipelined=list(c["pipelined"]))
                    for c in self._conns]

    def violations(self):
        with self._lock:
            return list(self._violations)

    def duplicates(self):
        seen, dups = set(), []
        for m in self.messages():
            h = hashlib.sha256(m["data"]).hexdigest()
            for r in m["rcpts"]:
                if (h, r) in seen:
                    dups.append((h, r))
                seen.add((h, r))
        return dups

    def rcpt_count(self):
        return sum(len(m["rcpts"]) for m in self.messages())

    def wait_until(self, f, timeout=15, interval=0.05):
        deadline = time.time() + timeout
        while True:
            v = f()
            if v:
                return v
            if time.time() > deadline:
                raise AssertionError(f"fake_ses_smtp: condition not met within {timeout}s; "
                                     f"{len(self.messages())} message(s), "
                                     f"{len(self.connections())} connection(s)")
            time.sleep(interval)


def main():
    ap = argparse.ArgumentParser(description="a local SES-like SMTP server for tests")
    ap.add_argument("--mode", choices=("starttls", "implicit", "none"), default="none")
    ap.add_argument("--port", type=int, default=2525)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--pipelining", action="store_true")
    a = ap.parse_args()
    self_check()
    f = FakeSESSMTP(mode=a.mode, cert=a.cert, key=a.key, region=a.region, port=a.port,
                    pipelining=a.pipelining).start()
    print(f"fake_ses_smtp: listening on {f.host}:{f.port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    f.stop()
    print(f"fake_ses_smtp: {len(f.messages())} message(s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
