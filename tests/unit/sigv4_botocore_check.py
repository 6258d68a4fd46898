#!/usr/bin/python3
"""sigv4_botocore_check.py - botocore's SigV4 output for SES-like requests.

Regenerates the golden values that tests/unit/test_sigv4.c checks the C signer
against (the BOTOCORE_CASES table there).  It drives real botocore clients
(sesv2 and ses) with fixed credentials and a fixed clock, catches each request
just before it would be sent, and prints what botocore signed: the wire
method/path/query, the signed headers, the body, the canonical request, the
string to sign and the Authorization header.

Run with the system interpreter, which has python3-botocore:

    /usr/bin/python3 tests/unit/sigv4_botocore_check.py        # readable
    /usr/bin/python3 tests/unit/sigv4_botocore_check.py --c    # C table rows

No network access: the 'before-send' hook answers every request locally.
The credentials are the AWS documentation examples, not real keys.
"""

import datetime
import json
import sys
from unittest import mock
from urllib.parse import urlsplit

import botocore.auth
import botocore.session
from botocore.awsrequest import AWSResponse

ACCESS_KEY = "AKIDEXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
# The example token of the AWS SigV4 test suite (post-sts-token/readme.txt).
SESSION_TOKEN = (
    "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeM"
    "icRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phU"
    "ZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38"
    "xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQw"
    "j2ICCR/oLxBA=="
)
REGION = "us-west-2"
NOW = datetime.datetime(2015, 8, 30, 12, 36, 0)

RAW_MESSAGE = (
    b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nhello\r\n"
)

RESPONSES = {
    "SendEmail": b'{"MessageId":"0100-example"}',
    "GetEmailIdentity": b'{"IdentityType":"EMAIL_ADDRESS"}',
    "ListEmailIdentities": b'{"EmailIdentities":[]}',
    "SendRawEmail": (
        b"<SendRawEmailResponse><SendRawEmailResult><MessageId>0100-example"
        b"</MessageId></SendRawEmailResult></SendRawEmailResponse>"
    ),
}


def capture(service, operation, kwargs, token):
    """Run one API call through botocore; return what its signer produced."""
    seen = {}
    real_creq = botocore.auth.SigV4Auth.canonical_request
    real_sts = botocore.auth.SigV4Auth.string_to_sign

    def creq(self, request):
        seen["creq"] = real_creq(self, request)
        return seen["creq"]

    def sts(self, request, canonical_request):
        seen["sts"] = real_sts(self, request, canonical_request)
        return seen["sts"]

    def before_send(request, **_):
        seen["request"] = request
        return AWSResponse(request.url, 200, {}, _Raw(RESPONSES[operation]))

    session = botocore.session.get_session()
    client = session.create_client(
        service,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        aws_session_token=token,
    )
    client.meta.events.register("before-send", before_send)
    fake_dt = mock.Mock(wraps=datetime)
    fake_dt.datetime = mock.Mock(wraps=datetime.datetime)
    fake_dt.datetime.utcnow.return_value = NOW
    fake_dt.datetime.now.return_value = NOW
    with mock.patch.object(botocore.auth, "datetime", fake_dt), mock.patch.object(
        botocore.auth.SigV4Auth, "canonical_request", creq
    ), mock.patch.object(botocore.auth.SigV4Auth, "string_to_sign", sts):
        getattr(client, _snake(operation))(**kwargs)
    return seen


class _Raw:
    """The minimum of a urllib3 response that botocore reads."""

    def __init__(self, data):
        self.data = data

    def stream(self, *_args, **_kw):
        yield self.data


def _snake(name):
    out = ""
    for ch in name:
        if ch.isupper() and out:
            out += "_"
        out += ch.lower()
    return out


def signed(seen):
    """Everything the C signer needs as input, and what it must produce."""
    req = seen["request"]
    url = urlsplit(req.url)
    authz = req.headers["Authorization"]
    authz = authz.decode() if isinstance(authz, bytes) else authz
    names = authz.split("SignedHeaders=")[1].split(",")[0].split(";")
    headers = []
    for name in names:
        if name == "host" and "host" not in {k.lower() for k in req.headers}:
            value = url.netloc
        else:
            value = req.headers[name]
        headers.append((name, value.decode() if isinstance(value, bytes) else value))
    body = req.body or b""
    if not isinstance(body, bytes):
        body = body.read() if hasattr(body, "read") else body.encode()
    return {
        "method": req.method,
        "path": url.path,
        "query": url.query,
        "headers": headers,
        "body": body.decode(),
        "creq": seen["creq"],
        "sts": seen["sts"],
        "authz": authz,
    }


def cases():
    send = {
        "FromEmailAddress": "a@example.com",
        "Destination": {"ToAddresses": ["b@example.net"]},
        "Content": {"Raw": {"Data": RAW_MESSAGE}},
        "ConfigurationSetName": "relay",
    }
    yield "botocore-sesv2-send-email", "sesv2", "SendEmail", send, None
    yield "botocore-sesv2-send-email-token", "sesv2", "SendEmail", send, SESSION_TOKEN
    # '@' is encoded once on the wire and again in the canonical URI.
    yield (
        "botocore-sesv2-get-identity",
        "sesv2",
        "GetEmailIdentity",
        {"EmailIdentity": "user+tag@example.com"},
        None,
    )
    # Reserved characters in query values, names out of order.
    yield (
        "botocore-sesv2-list-identities",
        "sesv2",
        "ListEmailIdentities",
        {"PageSize": 10, "NextToken": "a+b/c=d e"},
        None,
    )
    yield (
        "botocore-ses-send-raw-email",
        "ses",
        "SendRawEmail",
        {
            "Source": "a@example.com",
            "Destinations": ["b@example.net"],
            "RawMessage": {"Data": RAW_MESSAGE},
        },
        SESSION_TOKEN,
    )


def _c_escape(s):
    out = ""
    for ch in s:
        if ch == "\\":
            out += "\\\\"
        elif ch == '"':
            out += '\\"'
        elif ch == "\n":
            out += "\\n"
        elif ch == "\r":
            out += "\\r"
        elif ord(ch) < 0x20 or ord(ch) > 0x7E:
            out += "\\x%02x" % ord(ch)
        else:
            out += ch
    return out


def _c_pieces(s, width=80):
    """Split s at newlines, after ", " and at width, for readable literals."""
    pieces, cur = [], ""
    for ch in s:
        cur += ch
        if ch == "\n" or len(cur) >= width or cur.endswith(", "):
            pieces.append(cur)
            cur = ""
    if cur or not pieces:
        pieces.append(cur)
    return pieces


def c_string(s, indent):
    """A C string expression; the session token appears as SIGV4_TEST_TOKEN."""
    parts = []
    chunks = s.split(SESSION_TOKEN)
    for i, chunk in enumerate(chunks):
        if chunk or len(chunks) == 1:
            parts += ['"%s"' % _c_escape(p) for p in _c_pieces(chunk)]
        if i + 1 < len(chunks):
            parts.append("SIGV4_TEST_TOKEN")
    return ("\n" + indent).join(parts)


def print_c(name, service, token, s):
    ind = "\t    "
    print("\t{")
    print('\t    .name = "%s",' % name)
    print('\t    .service = "%s",' % ("ses" if service in ("ses", "sesv2") else service))
    print("\t    .token = %s," % ("1" if token else "0"))
    print('\t    .method = "%s",' % s["method"])
    print("\t    .path = %s," % c_string(s["path"], ind))
    print("\t    .query = %s," % c_string(s["query"], ind))
    print("\t    .headers = {")
    for k, v in s["headers"]:
        print("\t\t{%s, %s}," % (c_string(k, ind), c_string(v, ind + "\t")))
    print("\t    },")
    print("\t    .body = %s," % c_string(s["body"], ind))
    print("\t    .creq = %s," % c_string(s["creq"], ind))
    print("\t    .sts = %s," % c_string(s["sts"], ind))
    print("\t    .authz = %s," % c_string(s["authz"], ind))
    print("\t},")


def main():
    as_c = "--c" in sys.argv[1:]
    for name, service, operation, kwargs, token in cases():
        s = signed(capture(service, operation, kwargs, token))
        if as_c:
            print_c(name, service, token, s)
            continue
        print("=== %s (%s %s%s)" % (name, service, operation, ", session token" if token else ""))
        print("%s %s%s" % (s["method"], s["path"], "?" + s["query"] if s["query"] else ""))
        for k, v in s["headers"]:
            print("%s: %s" % (k, v))
        print()
        print(s["body"])
        print("--- canonical request")
        print(s["creq"])
        print("--- string to sign")
        print(s["sts"])
        print("--- authorization")
        print(s["authz"])
        print()


if __name__ == "__main__":
    main()
