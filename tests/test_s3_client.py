"""The S3 client (ses/s3.c) against a real S3 emulator: tests/tools/s3tool,
which runs the relay's own ses_http + credentials chain + s3 client on an
event loop, talks to s3rver (tests/lib/s3rver.py) through a front that checks
every request's SigV4 signature with botocore.

Scenarios: listing 2500 keys across pages; keys with spaces, UTF-8, '+', '%'
and XML specials, listed and fetched byte for byte; a 25 MB object streamed
while s3tool's peak RSS stays near that of a tiny call; delete; copy then
delete (a move); the errors an operator must see clearly (wrong secret,
unknown key id, missing bucket) and the ones a retry fixes (no server); a
sink that stops a transfer; temporary credentials.  Finally the wire form of
requests is checked against botocore's own S3 client and S3SigV4Auth for
keys full of special characters, at a fixed time.

s3tool exit codes: 0 ok, 1 transient, 2 operator, 3 not-found, 4 rejected,
5 aborted.  Node and `npm ci` in tests/node are required (not a skip).
"""
import hashlib
import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from unittest import mock
from urllib.parse import urlsplit

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))

from s3rver import S3rver  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS_DIR = os.environ.get("SESRELAY_TOOLS_DIR") or os.path.join(ROOT, "build", "release",
                                                                  "tests", "tools")
S3TOOL = os.path.join(TOOLS_DIR, "s3tool")
BUCKET = "inbound-test"

OK, TRANSIENT, OPERATOR, NOT_FOUND, REJECTED, ABORTED = range(6)

# Not here, because s3rver cannot store them (they are in CROSS_KEYS below):
# "a//b" (404 from its router) and "a/./b", "a/../b" (its path is normalised).
SPECIAL_KEYS = [
    "mail/with space.eml",
    "mail/plus+sign",
    "mail/per%cent%20not-an-escape",
    "mail/ümlaut-€-😀-中文",
    "mail/xml <&> \"quotes\" 'apos'",
    "mail/q?uery#frag",
    "mail/semi;colon:at@dollar$comma,eq=amp&",
    "mail/tilde~dots..-_",
    "mail/trailing space ",
]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    assert os.access(S3TOOL, os.X_OK), f"{S3TOOL} missing: run `make tools`"
    with S3rver(tmp_path_factory.mktemp("s3rver")) as server:
        server.create_bucket(BUCKET)
        yield server


def run_tool(s3, *args, env=None, bucket=BUCKET, endpoint=None, timeout=120, **kw):
    cmd = [S3TOOL, "-b", bucket, "-e", endpoint or s3.endpoint, "-t", "60", *args]
    if "stdout" not in kw:
        kw["capture_output"] = True
    p = subprocess.run(cmd, env=env or s3.env(), timeout=timeout, **kw)
    err = p.stderr.decode(errors="replace")
    assert "runtime error:" not in err and "Sanitizer" not in err, err
    return p


def failure_line(p):
    return p.stderr.decode(errors="replace").strip().splitlines()[-1]


def tool_list(s3, prefix, *opts):
    p = run_tool(s3, *opts, "list", prefix)
    assert p.returncode == OK, p.stderr
    entries = [json.loads(line) for line in p.stdout.decode().splitlines()]
    stats = dict(kv.split("=") for kv in p.stderr.decode().split("\n")[-2].split())
    return entries, int(stats["pages"])


def expect_no_signature_failures(s3, before):
    assert s3.signature_failures[before:] == [], s3.signature_failures[before:]


# --- listing ------------------------------------------------------------------


def test_list_2500_keys_across_pages(s3):
    keys = [f"bulk/{i:05d}.eml" for i in range(2500)]
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda k: s3.put(BUCKET, k, k.encode()), keys))
    before = len(s3.signature_failures)

    entries, pages = tool_list(s3, "bulk/")
    assert pages == 3  # S3's 1000 per page
    assert [e["key"] for e in entries] == keys
    assert all(e["size"] == len(e["key"]) for e in entries)
    assert entries[7]["etag"] == hashlib.md5(keys[7].encode()).hexdigest()

    entries, pages = tool_list(s3, "bulk/", "-n", "700")
    assert pages == 4
    assert [e["key"] for e in entries] == keys
    # the continuation token went back as sent (it has + / = in it)
    assert any("continuation-token=" in path for _, path, _ in s3.requests)
    expect_no_signature_failures(s3, before)


def test_list_empty_prefix_and_probe(s3):
    entries, pages = tool_list(s3, "nothing-here/")
    assert entries == [] and pages == 1
    p = run_tool(s3, "probe", "nothing-here/")
    assert p.returncode == OK, p.stderr
    p = run_tool(s3, "probe")
    assert p.returncode == OK, p.stderr


# --- keys with special characters ------------------------------------------------


def test_special_keys_list_and_get_byte_exact(s3):
    for i, key in enumerate(SPECIAL_KEYS):
        s3.put(BUCKET, key, key.encode() + bytes(range(256)) * (i + 1))
    before = len(s3.signature_failures)

    entries, _ = tool_list(s3, "mail/")
    assert sorted(e["key"] for e in entries) == sorted(SPECIAL_KEYS)
    for i, key in enumerate(SPECIAL_KEYS):
        p = run_tool(s3, "get", key)
        assert p.returncode == OK, (key, p.stderr)
        want = key.encode() + bytes(range(256)) * (i + 1)
        assert p.stdout == want, key
        assert f"etag={hashlib.md5(want).hexdigest()} bytes={len(want)}" in p.stderr.decode()
    # a prefix with specials selects exactly its keys
    entries, _ = tool_list(s3, "mail/xml <&>")
    assert [e["key"] for e in entries] == ["mail/xml <&> \"quotes\" 'apos'"]
    expect_no_signature_failures(s3, before)


def test_get_missing_key_is_not_found(s3):
    p = run_tool(s3, "get", "mail/never-there")
    assert p.returncode == NOT_FOUND, p.stderr
    assert p.stdout == b""
    assert "not-found NoSuchKey: GetObject s3://inbound-test/mail/never-there: 404 NoSuchKey" \
        in failure_line(p)


# --- big objects are streamed ------------------------------------------------------


def vmhwm(stderr_text):
    """s3tool -m's own peak RSS in KiB (VmHWM: exec resets it, ru_maxrss does not)."""
    for line in stderr_text.splitlines():
        if line.startswith("vmhwm_kib="):
            return int(line.split("=")[1])
    raise AssertionError(f"no vmhwm_kib line in:\n{stderr_text}")


def test_get_25mb_streams_with_small_rss(s3, tmp_path):
    size = 25 * 1024 * 1024
    src = tmp_path / "big.eml"
    block = hashlib.sha256(b"seed").digest() * 4096  # 128 KiB, not all one byte
    with open(src, "wb") as f:
        for i in range(size // len(block)):
            f.write(bytes([i & 0xff]) + block[1:])
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    s3.put(BUCKET, "big/25mb.eml", src)

    p = run_tool(s3, "-m", "probe")
    assert p.returncode == OK, p.stderr
    baseline = vmhwm(p.stderr.decode())
    with open(tmp_path / "got", "wb") as out:  # stdout to a file, not through Python
        p = run_tool(s3, "-m", "get", "big/25mb.eml", stdout=out, stderr=subprocess.PIPE)
    err = p.stderr.decode()
    assert p.returncode == OK, err
    assert os.path.getsize(tmp_path / "got") == size
    assert hashlib.sha256((tmp_path / "got").read_bytes()).hexdigest() == want
    assert f"bytes={size}" in err
    peak = vmhwm(err)
    print(f"s3tool VmHWM: probe {baseline} KiB, 25 MB get {peak} KiB")
    # the object never sits in memory: the peak grows by buffers, not by 25 MB
    assert peak - baseline < 8 * 1024, (baseline, peak)
    if not os.environ.get("SESRELAY_ASAN"):
        assert peak < 24 * 1024, peak


def test_sink_that_stops_aborts_the_transfer(s3):
    s3.put(BUCKET, "abort/obj", os.urandom(1 << 20))
    p = run_tool(s3, "-a", "100000", "get", "abort/obj")
    assert p.returncode == ABORTED, p.stderr
    assert "aborted: GetObject s3://inbound-test/abort/obj: stopped by the receiver" \
        in failure_line(p)
    assert len(p.stdout) <= 100000


# --- delete, copy, move ---------------------------------------------------------------


def test_delete(s3):
    s3.put(BUCKET, "del/ü x+y", b"bye")
    p = run_tool(s3, "delete", "del/ü x+y")
    assert p.returncode == OK, p.stderr
    assert not s3.exists(BUCKET, "del/ü x+y")
    # S3 answers 204 for a key that is not there: deleting twice is fine
    p = run_tool(s3, "delete", "del/ü x+y")
    assert p.returncode == OK, p.stderr


def test_copy_then_delete_moves_to_done_prefix(s3):
    # no + $ & , : ; = ? @ # in the source: s3rver's decodeURI of
    # x-amz-copy-source leaves them encoded (real S3 does not)
    src, dst = "inbox/ü €%x 😀.eml", "done/inbox/ü €%x 😀.eml"
    data = os.urandom(300000)
    s3.put(BUCKET, src, data)
    before = len(s3.signature_failures)
    p = run_tool(s3, "copy", src, dst)
    assert p.returncode == OK, p.stderr
    assert f"etag={hashlib.md5(data).hexdigest()}" in p.stderr.decode()
    p = run_tool(s3, "delete", src)
    assert p.returncode == OK, p.stderr
    assert s3.get(BUCKET, dst) == data
    assert not s3.exists(BUCKET, src)
    expect_no_signature_failures(s3, before)


def test_copy_of_missing_source_is_not_found(s3):
    p = run_tool(s3, "copy", "inbox/not-there", "done/not-there")
    assert p.returncode == NOT_FOUND, p.stderr
    assert "NoSuchKey" in failure_line(p)


# --- errors ------------------------------------------------------------------------------


def test_wrong_secret_is_a_clear_signature_error(s3):
    before = len(s3.signature_failures)
    p = run_tool(s3, "probe", env=s3.env(AWS_SECRET_ACCESS_KEY="not-the-secret"))
    assert p.returncode == OPERATOR, p.stderr
    line = failure_line(p)
    assert line.startswith("s3tool: operator SignatureDoesNotMatch: ListObjectsV2 "
                           "s3://inbound-test/: 403 SignatureDoesNotMatch: The request signature"), line
    assert "check the secret access key" in line
    assert "[request-id " in line
    assert "not-the-secret" not in p.stderr.decode()
    assert [f["code"] for f in s3.signature_failures[before:]] == ["SignatureDoesNotMatch"]


def test_unknown_access_key_id(s3):
    p = run_tool(s3, "list", "x/", env=s3.env(AWS_ACCESS_KEY_ID="AKIANOTKNOWN"))
    assert p.returncode == OPERATOR, p.stderr
    assert "operator InvalidAccessKeyId:" in failure_line(p)
    assert "check the credentials" in failure_line(p)


def test_missing_bucket_is_an_operator_error(s3):
    p = run_tool(s3, "probe", bucket="no-such-bucket")
    assert p.returncode == OPERATOR, p.stderr
    line = failure_line(p)
    assert "operator NoSuchBucket: ListObjectsV2 s3://no-such-bucket/: 404 NoSuchBucket" in line
    assert "check the bucket name" in line
    p = run_tool(s3, "get", "k", bucket="no-such-bucket")
    assert p.returncode == OPERATOR and "NoSuchBucket" in failure_line(p)


def test_wrong_region_is_an_operator_error(s3):
    p = run_tool(s3, "probe", env=s3.env(AWS_REGION="eu-west-1"))
    assert p.returncode == OPERATOR, p.stderr
    assert "AuthorizationHeaderMalformed" in failure_line(p)
    assert "check the region" in failure_line(p)


def test_no_server_is_transient(s3):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    p = run_tool(s3, "probe", endpoint=f"http://127.0.0.1:{port}")
    assert p.returncode == TRANSIENT, p.stderr
    assert f"transient: ListObjectsV2 s3://inbound-test/: no answer from http://127.0.0.1:{port}" \
        in failure_line(p)


def test_no_credentials_at_all(s3):
    env = s3.env(AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None)
    p = run_tool(s3, "probe", env=env)
    assert p.returncode == OPERATOR, p.stderr
    assert "no credentials" in failure_line(p)


def test_temporary_credentials_send_and_sign_the_token(s3):
    before = len(s3.signature_failures)
    p = run_tool(s3, "probe", env=s3.env(AWS_SESSION_TOKEN="FwoGZXIvYXdzEXAMPLE/token+=="))
    assert p.returncode == OK, p.stderr
    expect_no_signature_failures(s3, before)


# --- the wire form against botocore --------------------------------------------------------

FIXED_TIME = 1440938160  # 2015-08-30T12:36:00Z
FIXED_AMZ_DATE = "20150830T123600Z"
CROSS_KEYS = [
    "in box/ü+%€ 😀;:@&=$,?#[]!*'()~._-",
    "a//b/./c/../d",
    "%2F already encoded %20",
    "tab\there\x01ctl",
]


def tool_sign(command, *args, token=None):
    """s3tool's sign commands: the URL and headers s3.c would send at FIXED_TIME."""
    env = {"PATH": os.environ.get("PATH", ""), "S3TOOL_TIME": str(FIXED_TIME),
           "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
           "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}
    if token:
        env["AWS_SESSION_TOKEN"] = token
    p = subprocess.run([S3TOOL, "-b", BUCKET, "-e", "http://127.0.0.1:4568", "-r", "us-east-1",
                        command, *args], env=env, capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.decode().splitlines()
    assert lines[0].startswith("URL ")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return lines[0][4:], headers


def botocore_wire(operation, **params):
    """The URL and headers botocore's S3 client sends (nothing is sent)."""
    import botocore.session
    from botocore.awsrequest import AWSResponse
    from botocore.config import Config

    seen = {}

    class Raw:
        def stream(self, **kw):
            yield b""

    def before_send(request, **kw):
        seen["request"] = request
        return AWSResponse(request.url, 200, {}, Raw())

    session = botocore.session.get_session()
    client = session.create_client(
        "s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:4568",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        config=Config(s3={"addressing_style": "path"}))
    client.meta.events.register("before-send.s3", before_send)
    try:
        getattr(client, operation)(Bucket=BUCKET, **params)
    except Exception:
        pass  # the empty answer may not parse; the request was caught already
    return seen["request"]


def botocore_authorization(method, url, headers, token=None):
    """S3SigV4Auth over exactly our Host and extra headers, at FIXED_TIME."""
    import datetime

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    keep = {k: v for k, v in headers.items()
            if k.lower() not in ("authorization", "x-amz-date", "x-amz-content-sha256",
                                 "x-amz-security-token")}
    req = AWSRequest(method=method, url=url, headers=keep)
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    with mock.patch("botocore.auth.datetime") as dt:
        dt.datetime.utcnow.return_value = datetime.datetime(2015, 8, 30, 12, 36, 0)
        dt.datetime.strptime = datetime.datetime.strptime
        S3SigV4Auth(creds, "s3", "us-east-1").add_auth(req)
    return req.headers


@pytest.mark.parametrize("key", CROSS_KEYS)
def test_get_object_url_and_signature_match_botocore(key):
    url, ours = tool_sign("sign", "GET", key)
    theirs = botocore_wire("get_object", Key=key)
    assert url == theirs.url  # the key's path encoding
    want = botocore_authorization("GET", url, ours)
    assert ours["X-Amz-Date"] == FIXED_AMZ_DATE == want["X-Amz-Date"]
    assert ours["X-Amz-Content-SHA256"] == want["X-Amz-Content-SHA256"]
    assert ours["Authorization"] == want["Authorization"]
    assert "SignedHeaders=host;x-amz-content-sha256;x-amz-date," in ours["Authorization"]


@pytest.mark.parametrize("key", CROSS_KEYS)
def test_copy_source_and_signature_match_botocore(key):
    dst = "done/" + key
    theirs = botocore_wire("copy_object", Key=dst, CopySource={"Bucket": BUCKET, "Key": key})
    source = theirs.headers["x-amz-copy-source"]
    source = source.decode() if isinstance(source, bytes) else source
    url, ours = tool_sign("sign-copy", key, dst)
    assert url == theirs.url
    assert ours["x-amz-copy-source"] == source
    want = botocore_authorization("PUT", url, ours)
    assert ours["Authorization"] == want["Authorization"]
    assert "x-amz-copy-source;x-amz-date," in ours["Authorization"]


def test_list_query_and_signature_match_botocore_with_token():
    prefix, ctoken = "in box/ü+%&=", "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=+"
    theirs = botocore_wire("list_objects_v2", Prefix=prefix, ContinuationToken=ctoken,
                           MaxKeys=1000)
    session_token = "FwoGZXIvYXdzEXAMPLE/token+=="
    url, ours = tool_sign("sign-list", prefix, ctoken, token=session_token)
    # botocore also asks for encoding-type=url, which s3.c does not (s3rver ignores it)
    their_query = sorted(p for p in urlsplit(theirs.url).query.split("&")
                         if not p.startswith("encoding-type="))
    assert sorted(urlsplit(url).query.split("&")) == their_query
    assert urlsplit(url).path == urlsplit(theirs.url).path == f"/{BUCKET}"
    want = botocore_authorization("GET", url, ours, token=session_token)
    assert ours["X-Amz-Security-Token"] == want["X-Amz-Security-Token"] == session_token
    assert ours["Authorization"] == want["Authorization"]
