"""`sesrelay check` against the fake SES endpoint and a local DNS server.

Every scenario starts from a set-up where everything is right (exit 0, every
line "ok"), breaks one thing, and checks the verdict line and the fix it
names, word for word.  DNS comes from dnsmasq (tests/lib/localdns.py) through
SESRELAY_DNS_SERVER; SES from tests/lib/fake_ses.py, which checks every
signature with botocore.  Every process is bounded in time and stopped by PID.
"""
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))

import localdns  # noqa: E402
from fake_ses import (ACCESS_DENIED, DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY,  # noqa: E402
                      THROTTLED_429, FakeSES)
from fake_sqs import ACCESS_DENIED as SQS_ACCESS_DENIED  # noqa: E402
from fake_sqs import CLOSE as SQS_CLOSE  # noqa: E402
from fake_sqs import FakeSQS  # noqa: E402
from relayharness import ASAN, BIN  # noqa: E402
from s3rver import S3rver  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not localdns.available(),
                       reason="needs dnsmasq: apt-get install dnsmasq-base"),
    pytest.mark.timeout(120),
]

REGION = "us-east-1"
DOMAIN = "example.com"
TOKENS = ["tok1aaaa", "tok2bbbb", "tok3cccc"]
MAIL_FROM = "mail.example.com"
SPF = "v=spf1 include:amazonses.com ~all"
# a valid yescrypt string (the password does not matter to check)
HASH = "$y$j9T$Yy6uB5WkvmDUbsUbG1jk./$dIPO22bGtAMFxW/TZ06BIpcX.Cx9faIINZLmlZCeb83"
FIX = " \u2014 fix: "
RUN_TIMEOUT = 60


def good_records():
    """(type, name) -> [values]: everything SES wants for DOMAIN."""
    r = {
        ("TXT", DOMAIN): [SPF],
        ("TXT", "_dmarc." + DOMAIN): ["v=DMARC1; p=quarantine; rua=mailto:dmarc@example.com"],
        ("MX", DOMAIN): [("inbound-smtp.%s.amazonaws.com" % REGION, 10)],
        ("MX", MAIL_FROM): [("feedback-smtp.%s.amazonses.com" % REGION, 10)],
        ("TXT", MAIL_FROM): [SPF],
    }
    for t in TOKENS:
        r[("CNAME", "%s._domainkey.%s" % (t, DOMAIN))] = ["%s.dkim.amazonses.com" % t]
    return r


class Result:
    def __init__(self, proc, seconds):
        self.rc = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr
        self.seconds = seconds
        self.lines = [l for l in self.out.splitlines() if re.match(r"^(ok|warn|FAIL) ", l)]

    def __repr__(self):
        return "rc=%s in %.1fs\n%s\nstderr:\n%s" % (self.rc, self.seconds, self.out, self.err)

    def find(self, text):
        """The one verdict line whose text (after the verdict) starts with text."""
        hits = [l for l in self.lines if l[6:].startswith(text)]
        assert len(hits) == 1, "%d lines start with %r:\n%r" % (len(hits), text, self)
        return hits[0]

    def expect(self, status, text, fix=None):
        """The line for text has this status (and exactly this fix, when given)."""
        line = self.find(text)
        assert line.startswith(status.ljust(6)), "%r is not %s:\n%r" % (line, status, self)
        if fix is not None:
            assert line.endswith(FIX + fix), "fix of %r is not %r" % (line, fix)
        return line

    def with_status(self, status):
        return [l for l in self.lines if l.startswith(status.ljust(6))]


class Env:
    """Fake SES + dnsmasq + relay.ini + users file, in tmp_path."""

    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.fake = FakeSES(region=REGION).start()
        self.fake.add_identity(DOMAIN, dkim_tokens=TOKENS, mail_from_domain=MAIL_FROM)
        self.records = good_records()
        self.zones = [DOMAIN, "corp.example", "pending.example", "unverified.example",
                      "solo.example"]
        self.dns = None
        self.users = ["alice:%s:@%s,alice@%s" % (HASH, DOMAIN, DOMAIN)]
        self.bounce_from = "postmaster@" + DOMAIN
        self.ses_extra = ""
        self.extra = ""
        self.users_mode = 0o600
        self.env = {}

    def write(self):
        users = self.dir / "users"
        users.write_text("\n".join(self.users) + "\n")
        os.chmod(users, self.users_mode)
        (self.dir / "spool").mkdir(exist_ok=True)
        conf = ["[relay]", "hostname = relay.test", "spool = %s" % (self.dir / "spool"),
                "[listen:local]", "address = 127.0.0.1:2525",
                "[users]", "file = %s" % users,
                "[ses]", "region = %s" % REGION, "endpoint = %s" % self.fake.url,
                self.ses_extra,
                "[queue]", "bounce_from = %s" % self.bounce_from if self.bounce_from else "",
                self.extra]
        self.config = self.dir / "relay.ini"
        self.config.write_text("\n".join(conf) + "\n")

    def start_dns(self):
        if self.dns is not None:
            return
        self.dns = localdns.LocalDns(self.dir / "dns", self.zones)
        for (typ, name), values in self.records.items():
            for v in values:
                if typ == "TXT":
                    self.dns.txt(name, *([v] if isinstance(v, str) else v))
                elif typ == "MX":
                    self.dns.mx(name, v[0], v[1])
                else:
                    self.dns.cname(name, v)
        self.dns.start()

    def base_env(self):
        e = {k: v for k, v in os.environ.items()
             if not k.startswith("AWS_") and k != "SESRELAY_CONFIG"}
        e.update(HOME=str(self.dir), AWS_ACCESS_KEY_ID=DEFAULT_ACCESS_KEY,
                 AWS_SECRET_ACCESS_KEY=DEFAULT_SECRET_KEY, AWS_EC2_METADATA_DISABLED="true",
                 AWS_SHARED_CREDENTIALS_FILE=str(self.dir / "no-credentials"),
                 AWS_CONFIG_FILE=str(self.dir / "no-config"))
        if self.dns is not None:
            e["SESRELAY_DNS_SERVER"] = self.dns.server
        if ASAN:
            e.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
            e.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        return e

    def run(self, args=None, env=None, timeout=RUN_TIMEOUT):
        self.write()
        self.start_dns()
        e = self.base_env()
        e.update(self.env)
        for k, v in (env or {}).items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
        t = time.monotonic()
        p = subprocess.run([BIN, "check", "-c", str(self.config)] + (args or []), env=e,
                           capture_output=True, text=True, timeout=timeout)
        res = Result(p, time.monotonic() - t)
        bad = [l for l in res.err.splitlines() if "Sanitizer" in l or "runtime error:" in l]
        assert not bad, "sanitizer reports:\n" + res.err
        # never a secret, never a whole access key id
        assert DEFAULT_SECRET_KEY not in res.out + res.err
        assert DEFAULT_ACCESS_KEY not in res.out + res.err
        return res

    def close(self):
        if self.dns:
            self.dns.stop()
        if not self.fake.is_up:
            self.fake.up()
        self.fake.stop()


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.close()


def only_problem(res, status, text, fix):
    """text is the one line that is not ok, with this status and fix."""
    line = res.expect(status, text, fix)
    others = [l for l in res.lines if not l.startswith("ok ") and not l[6:].startswith(text)]
    assert not others, "other problems:\n%r" % res
    assert res.rc == (1 if status == "FAIL" else 0), res
    return line


# --------------------------------------------------------------------------
# everything right
# --------------------------------------------------------------------------

def test_all_good_every_line_ok(env):
    res = env.run()
    assert res.rc == 0, res
    assert res.lines and all(l.startswith("ok    ") for l in res.lines), res
    assert res.out.splitlines()[-1] == "sesrelay check: %d ok, 0 warn, 0 FAIL" % len(res.lines)
    res.expect("ok", "config %s" % env.config)
    res.expect("ok", "users file %s (1 user)" % (env.dir / "users"))
    res.expect("ok", "DNS resolver %s (SESRELAY_DNS_SERVER)" % env.dns.server)
    res.expect("ok", "senders: 1 domain, 2 addresses")
    res.expect("ok", "credentials: environment (AKID\u2026)")
    res.expect("ok", "SES account: production (1000000/24h, 1000/s)")
    res.expect("ok", "SES account: sending enabled")
    res.expect("ok", "SES account: 0 of 1000000 sent in the last 24h")
    res.expect("ok", "identity example.com: verified for sending")
    res.expect("ok", "identity example.com: DKIM SUCCESS, signing enabled")
    res.expect("ok", "identity example.com: MAIL FROM mail.example.com SUCCESS")
    res.expect("ok", "DNS example.com: SPF includes amazonses.com")
    for t in TOKENS:
        res.expect("ok", "DNS %s._domainkey.example.com: CNAME -> %s.dkim.amazonses.com" % (t, t))
    res.expect("ok", "DNS _dmarc.example.com: DMARC p=quarantine")
    res.expect("ok", "DNS mail.example.com: MX 10 feedback-smtp.us-east-1.amazonses.com")
    res.expect("ok", "DNS mail.example.com: SPF includes amazonses.com")
    res.expect("ok", "DNS example.com: MX 10 inbound-smtp.us-east-1.amazonaws.com (SES receiving)")
    res.expect("ok", "identity alice@example.com: covered by the verified domain example.com")
    res.expect("ok", "identity postmaster@example.com: covered by the verified domain")
    # one GetAccount, one GetEmailIdentity (the domain covers both addresses),
    # every signature right
    env.fake.assert_clean()
    ops = [(r.op, r.path) for r in env.fake.snapshot()["requests"]]
    assert ops == [("account", "/v2/email/account"),
                   ("identity", "/v2/email/identities/example.com")], ops


def test_output_order_is_stable(env):
    env.users.append("bob:%s:bob@solo.example,@corp.example" % HASH)
    env.fake.add_identity("solo.example", dkim_tokens=["s1", "s2", "s3"])
    env.fake.add_identity("corp.example", dkim_tokens=["c1", "c2", "c3"])
    first = env.run()
    second = env.run()
    assert first.out == second.out
    # blocks: each domain's lines, then its addresses, in the users file's order
    names = [re.match(r"^\S+\s+(?:identity|DNS) (\S+?):", l) for l in first.lines]
    order = [m.group(1) for m in names if m and m.group(1) in
             ("example.com", "alice@example.com", "solo.example", "bob@solo.example",
              "corp.example", "postmaster@example.com")]
    dedup = [n for i, n in enumerate(order) if i == 0 or order[i - 1] != n]
    assert dedup == ["example.com", "alice@example.com", "postmaster@example.com",
                     "solo.example", "bob@solo.example", "corp.example"], dedup


# --------------------------------------------------------------------------
# DNS records, one broken at a time
# --------------------------------------------------------------------------

def test_spf_without_amazonses_gets_merged_record(env):
    env.records[("TXT", DOMAIN)] = ["v=spf1 include:spf.corp.example -all"]
    env.records[("TXT", "spf.corp.example")] = ["v=spf1 ip4:192.0.2.0/24 -all"]
    res = env.run()
    only_problem(res, "FAIL", "DNS example.com: SPF record does not include amazonses.com",
                 'TXT example.com "v=spf1 include:spf.corp.example include:amazonses.com -all" '
                 '(replacing "v=spf1 include:spf.corp.example -all")')


def test_spf_missing(env):
    del env.records[("TXT", DOMAIN)]
    res = env.run()
    only_problem(res, "FAIL", "DNS example.com: no SPF record",
                 'TXT example.com "v=spf1 include:amazonses.com ~all"')


def test_spf_two_records(env):
    env.records[("TXT", DOMAIN)] = ["v=spf1 mx -all", "v=spf1 include:amazonses.com ~all",
                                    "google-site-verification=abc"]
    res = env.run()
    only_problem(res, "FAIL",
                 "DNS example.com: 2 SPF records (more than one is a permanent error)",
                 'replace them with one: TXT example.com "v=spf1 include:amazonses.com mx ~all"')


def test_spf_through_an_include_is_ok(env):
    env.records[("TXT", DOMAIN)] = ["v=spf1 include:spf.corp.example ~all"]
    env.records[("TXT", "spf.corp.example")] = ["v=spf1 include:amazonses.com -all"]
    res = env.run()
    assert res.rc == 0, res
    res.expect("ok", "DNS example.com: SPF includes amazonses.com (through include:spf.corp.example)")


def test_one_dkim_cname_missing(env):
    del env.records[("CNAME", "tok2bbbb._domainkey.example.com")]
    res = env.run()
    only_problem(res, "FAIL", "DNS tok2bbbb._domainkey.example.com: CNAME missing",
                 "CNAME tok2bbbb._domainkey.example.com -> tok2bbbb.dkim.amazonses.com")
    res.expect("ok", "DNS tok1aaaa._domainkey.example.com: CNAME -> tok1aaaa.dkim.amazonses.com")


def test_dkim_cname_wrong_target(env):
    env.records[("CNAME", "tok3cccc._domainkey.example.com")] = ["tok3cccc.dkim.example.net"]
    res = env.run()
    only_problem(res, "FAIL",
                 "DNS tok3cccc._domainkey.example.com: CNAME points to tok3cccc.dkim.example.net, "
                 "not tok3cccc.dkim.amazonses.com",
                 "CNAME tok3cccc._domainkey.example.com -> tok3cccc.dkim.amazonses.com")


def test_dmarc_missing_is_only_a_warning(env):
    del env.records[("TXT", "_dmarc." + DOMAIN)]
    res = env.run()
    only_problem(res, "warn", "DNS _dmarc.example.com: no DMARC record",
                 'TXT _dmarc.example.com "v=DMARC1; p=none; rua=mailto:postmaster@example.com"')


def test_mail_from_mx_missing(env):
    del env.records[("MX", MAIL_FROM)]
    res = env.run()
    only_problem(res, "FAIL", "DNS mail.example.com: MAIL FROM MX missing",
                 "MX mail.example.com 10 feedback-smtp.us-east-1.amazonses.com")


def test_mail_from_mx_other_region(env):
    env.records[("MX", MAIL_FROM)] = [("feedback-smtp.eu-west-1.amazonses.com", 10)]
    res = env.run()
    only_problem(res, "FAIL",
                 "DNS mail.example.com: MX points to feedback-smtp.eu-west-1.amazonses.com, "
                 "not feedback-smtp.us-east-1.amazonses.com",
                 "MX mail.example.com 10 feedback-smtp.us-east-1.amazonses.com")


def test_mail_from_spf_missing(env):
    del env.records[("TXT", MAIL_FROM)]
    res = env.run()
    only_problem(res, "FAIL", "DNS mail.example.com: no SPF record for the MAIL FROM domain",
                 'TXT mail.example.com "v=spf1 include:amazonses.com ~all"')


def test_inbound_mx_missing_is_only_a_warning(env):
    del env.records[("MX", DOMAIN)]
    res = env.run()
    only_problem(res, "warn", "DNS example.com: no MX: receiving is not set up",
                 "MX example.com 10 inbound-smtp.us-east-1.amazonaws.com (SES receiving), or "
                 "your mailbox provider's MX")


def test_inbound_mx_elsewhere_is_ok(env):
    env.records[("MX", DOMAIN)] = [("aspmx.l.google.com", 1)]
    res = env.run()
    assert res.rc == 0, res
    res.expect("ok", "DNS example.com: MX 1 aspmx.l.google.com (mail is received there)")


def test_big_answer_is_read_over_tcp(env):
    # 8 x 200 bytes of TXT is more than the 1232 bytes taken over UDP
    env.records[("TXT", DOMAIN)] = [SPF] + ["verification-%d=%s" % (i, "x" * 200)
                                            for i in range(8)]
    res = env.run()
    assert res.rc == 0, res
    res.expect("ok", "DNS example.com: SPF includes amazonses.com")


def test_dns_server_down(env):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    dead = "127.0.0.1:%d" % s.getsockname()[1]
    s.close()
    res = env.run(env={"SESRELAY_DNS_SERVER": dead})
    assert res.rc == 1, res
    assert res.seconds < 20, res
    line = res.expect("FAIL", "DNS example.com: TXT lookup failed: ")
    assert line.endswith(FIX + "make sure the name servers of example.com answer (asked %s)"
                         % dead), line
    res.expect("warn", "DNS _dmarc.example.com: TXT lookup failed")
    # SES was still asked
    res.expect("ok", "identity example.com: verified for sending")


# --------------------------------------------------------------------------
# the SES account and identities
# --------------------------------------------------------------------------

def test_account_sending_paused(env):
    env.fake.set_account(sending_enabled=False)
    res = env.run()
    only_problem(res, "FAIL", "SES account: sending is PAUSED",
                 "find the cause on the SES console's reputation dashboard, then aws sesv2 "
                 "put-account-sending-attributes --sending-enabled --region us-east-1")


def test_account_sandbox_is_a_warning(env):
    env.fake.set_account(production=False, max_24h=200, max_send_rate=1)
    res = env.run()
    only_problem(res, "warn", "SES account: sandbox (200/24h, 1/s; recipients must be verified)",
                 "request production access in the SES console (Account dashboard)")


def test_account_quota_used_up(env):
    env.fake.set_account(max_24h=200, sent_24h=200)
    res = env.run()
    only_problem(res, "FAIL", "SES account: 24h quota used up (200 of 200)",
                 "mail waits until the quota frees up; ask for a higher quota in the SES console")


def test_identities_verified_pending_unverified(env):
    env.users = ["alice:%s:@%s,@pending.example,@unverified.example" % (HASH, DOMAIN)]
    env.fake.add_identity("pending.example", dkim_status="PENDING", dkim_tokens=["pa", "pb", "pc"])
    env.fake.add_identity("unverified.example", verified=False, dkim_status="FAILED",
                          dkim_tokens=["ua", "ub", "uc"])
    for t in ("pa", "pb", "pc", "ua", "ub"):
        d = "pending.example" if t[0] == "p" else "unverified.example"
        env.records[("CNAME", "%s._domainkey.%s" % (t, d))] = ["%s.dkim.amazonses.com" % t]
    for d in ("pending.example", "unverified.example"):
        env.records[("TXT", d)] = [SPF]
        env.records[("TXT", "_dmarc." + d)] = ["v=DMARC1; p=none"]
        env.records[("MX", d)] = [("inbound-smtp.us-east-1.amazonaws.com", 10)]
    res = env.run()
    assert res.rc == 1, res
    res.expect("ok", "identity example.com: verified for sending")
    res.expect("ok", "identity pending.example: verified for sending")
    res.expect("warn", "identity pending.example: DKIM PENDING",
               "wait: the CNAMEs are published and SES checks them for up to 72 hours")
    res.expect("FAIL", "identity unverified.example: not verified for sending (verification "
               "PENDING)",
               "publish the DKIM CNAMEs below; SES verifies unverified.example through them")
    res.expect("FAIL", "identity unverified.example: DKIM FAILED",
               "add CNAME uc._domainkey.unverified.example -> uc.dkim.amazonses.com")
    res.expect("FAIL", "DNS uc._domainkey.unverified.example: CNAME missing",
               "CNAME uc._domainkey.unverified.example -> uc.dkim.amazonses.com")
    assert len(res.with_status("FAIL")) == 3, res
    assert len(res.with_status("warn")) == 1, res


def test_domain_not_in_ses(env):
    env.users.append("carol:%s:@unverified.example" % HASH)
    env.records[("TXT", "unverified.example")] = [SPF]
    res = env.run()
    res.expect("FAIL", "identity unverified.example: not an identity in SES us-east-1",
               "aws sesv2 create-email-identity --email-identity unverified.example --region "
               "us-east-1, then publish the three DKIM CNAMEs it returns")
    assert res.rc == 1, res


def test_address_identities(env):
    """Addresses at a domain that is no identity: verified alone, or not at all.
    That domain's DNS is none of check's business (think gmail.com)."""
    env.users.append("bob:%s:bob@solo.example,carol@solo.example" % HASH)
    env.fake.add_identity("bob@solo.example")
    res = env.run()
    assert res.rc == 1, res
    res.expect("ok", "identity solo.example: no domain identity in SES us-east-1 (its "
               "addresses are checked one by one)")
    res.expect("ok", "identity bob@solo.example: verified for sending")
    res.expect("FAIL", "identity carol@solo.example: neither the address nor solo.example is "
               "verified in SES us-east-1",
               "verify the domain (aws sesv2 create-email-identity --email-identity "
               "solo.example) or this address (aws sesv2 create-email-identity "
               "--email-identity carol@solo.example, then open the link SES mails to it)")
    assert len(res.with_status("FAIL")) == 1, res
    assert not [l for l in res.lines if "DNS" in l and "solo.example" in l], res
    assert not re.search(r"query\[\w+\] \S*solo\.example", env.dns.read_log()), "looked up"
    paths = [r.path for r in env.fake.snapshot()["requests"]]
    assert "/v2/email/identities/bob%40solo.example" in paths, paths
    env.fake.assert_clean()


def test_address_domain_known_to_ses_gets_dns_checks(env):
    """bounce_from's domain is no "@domain" sender, but SES knows it: checked."""
    env.bounce_from = "bounces@pending.example"
    env.fake.add_identity("pending.example", dkim_tokens=["pa", "pb", "pc"])
    res = env.run()
    assert res.rc == 1, res
    res.expect("ok", "identity pending.example: verified for sending")
    res.expect("FAIL", "DNS pending.example: no SPF record")
    res.expect("FAIL", "DNS pa._domainkey.pending.example: CNAME missing")
    res.expect("ok", "identity bounces@pending.example: covered by the verified domain")


def test_throttled_identity_call_is_retried(env):
    env.fake.fail_next(THROTTLED_429, ops=("identity",))
    res = env.run()
    assert res.rc == 0, res
    reqs = [r for r in env.fake.snapshot()["requests"] if r.op == "identity"]
    assert [r.status for r in reqs] == [429, 200], reqs


def test_access_denied_names_the_permission(env):
    env.fake.fail_always(ACCESS_DENIED, ops=("identity",))
    res = env.run()
    assert res.rc == 1, res
    line = res.expect("FAIL", "identity example.com: GetEmailIdentity failed: 403 "
                      "AccessDeniedException: ")
    assert line.endswith(FIX + "allow ses:GetEmailIdentity in the IAM policy of these "
                         "credentials"), line


# --------------------------------------------------------------------------
# credentials, SES unreachable, the bound
# --------------------------------------------------------------------------

def test_no_credentials(env):
    res = env.run(env={"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None})
    assert res.rc == 1, res
    res.expect("FAIL", "credentials: none found (config file, environment, profile, web "
               "identity, container, EC2 instance metadata)",
               "set [ses] access_key_id and secret_access_key, or AWS_ACCESS_KEY_ID and "
               "AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials, or run with an IAM "
               "role")
    res.expect("FAIL", "SES account: not checked: no AWS credentials")
    res.expect("FAIL", "identity example.com: not checked: no AWS credentials")
    res.expect("FAIL", "identity alice@example.com: not checked: no AWS credentials")
    # the offline parts still ran
    res.expect("ok", "DNS example.com: SPF includes amazonses.com")
    res.expect("ok", "DNS _dmarc.example.com: DMARC p=quarantine")
    assert env.fake.snapshot()["requests"] == []


def test_credentials_from_config_file(env):
    env.ses_extra = "access_key_id = %s\nsecret_access_key = %s" % (DEFAULT_ACCESS_KEY,
                                                                    DEFAULT_SECRET_KEY)
    res = env.run(env={"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None})
    assert res.rc == 0, res
    res.expect("ok", "credentials: config file (AKID\u2026)")


def test_ses_down_still_checks_dns_and_exits(env):
    env.fake.down("refuse")
    res = env.run()
    assert res.rc == 1, res
    assert res.seconds < 20, res
    line = res.expect("FAIL", "SES account: GetAccount failed: no answer from %s: " % env.fake.url)
    assert line.endswith(FIX + "make sure this host reaches %s over HTTPS (firewall, proxy, "
                         "[ses] region and endpoint)" % env.fake.url), line
    res.expect("FAIL", "identity example.com: GetEmailIdentity failed: no answer from")
    res.expect("ok", "DNS example.com: SPF includes amazonses.com")
    res.expect("ok", "DNS example.com: MX 10 inbound-smtp.us-east-1.amazonaws.com")


def test_ses_hanging_is_cut_off_by_the_bound(env):
    env.fake.down("hang")
    res = env.run(env={"SESRELAY_CHECK_TIMEOUT": "3"}, timeout=30)
    assert res.rc == 1, res
    assert 2.5 < res.seconds < 10, res
    res.expect("FAIL", "SES account: timed out (no answer within 3 s)")
    res.expect("FAIL", "identity example.com: timed out (no answer within 3 s)")
    res.expect("ok", "DNS example.com: SPF includes amazonses.com")
    assert res.out.splitlines()[-1].startswith("sesrelay check: ")


# --------------------------------------------------------------------------
# the configuration
# --------------------------------------------------------------------------

def test_config_error_exits_78(env):
    env.extra = "no_such_key = 1"      # lands in [queue]
    env.write()
    p = subprocess.run([BIN, "check", "-c", str(env.config)], env=env.base_env(),
                       capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert p.returncode == 78, (p.stdout, p.stderr)
    assert re.match(r"^FAIL  config %s:\d+: .*no_such_key" % re.escape(str(env.config)),
                    p.stdout), p.stdout
    assert "no_such_key" in p.stderr
    assert env.fake.snapshot()["requests"] == []


def test_users_file_readable_by_others_exits_78(env):
    env.users_mode = 0o644
    res = env.run()
    assert res.rc == 78, res
    res.expect("FAIL", "users file %s: readable or writable by other users" % (env.dir / "users"))
    res.expect("ok", "credentials: environment")   # the rest still ran


def make_cert(tmp, days=30):
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", str(days), "-subj", "/CN=relay.test"],
                   check=True, capture_output=True, timeout=60)
    os.chmod(key, 0o600)
    return cert, key


def test_tls_certificate_and_key(env):
    cert, key = make_cert(env.dir, days=400)
    env.extra = "[tls]\ncertificate = %s\nprivate_key = %s" % (cert, key)
    res = env.run()
    assert res.rc == 0, res
    line = res.expect("ok", "TLS certificate %s (valid until " % cert)
    assert re.search(r"\(valid until \d{4}-\d\d-\d\d\)$", line), line


def test_tls_certificate_expiring_soon(env):
    cert, key = make_cert(env.dir, days=3)
    env.extra = "[tls]\ncertificate = %s\nprivate_key = %s" % (cert, key)
    res = env.run()
    assert res.rc == 0, res
    res.expect("warn", "TLS certificate %s expires on " % cert,
               "renew %s, then reload sesrelay (SIGHUP)" % cert)


def test_tls_key_readable_by_others_exits_78(env):
    cert, key = make_cert(env.dir)
    os.chmod(key, 0o644)
    env.extra = "[tls]\ncertificate = %s\nprivate_key = %s" % (cert, key)
    res = env.run()
    assert res.rc == 78, res
    res.expect("FAIL", "TLS: [tls] private_key %s is readable by other users" % key)


def test_no_senders_is_a_warning(env):
    env.users = ["alice:%s:*" % HASH]
    env.bounce_from = None
    res = env.run()
    assert res.rc == 0, res
    res.expect("warn", "senders: none named in the configuration, so no identity to check")
    assert [r.op for r in env.fake.snapshot()["requests"]] == ["account"]


def test_unexpected_argument_is_usage_error(env):
    env.write()
    p = subprocess.run([BIN, "check", "--frobnicate", "-c", str(env.config)],
                       env=env.base_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "usage: sesrelay check" in p.stderr


# --------------------------------------------------------------------------
# hostile DNS answers: never a crash (ASan in make asan), always a FAIL line
# --------------------------------------------------------------------------

class HostileDns:
    """A UDP 'server' that answers every query with a broken packet."""

    def __init__(self, mode, seed=1):
        import random
        import threading
        self.mode = mode
        self.rng = random.Random(seed)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.server = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.stopped = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stopped:
            try:
                q, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                self.sock.sendto(self.answer(q), peer)
            except OSError:
                pass

    def answer(self, q):
        end = 12
        while q[end] != 0:
            end += 1 + q[end]
        question = q[12:end + 5]
        qoff = 12 + len(question)          # where the answer section starts

        def hdr(an, flags=0x8180):
            return q[:2] + struct.pack(">HHHHH", flags, 1, an, 0, 0)
        m = self.mode
        if m == "loop":                     # a name that points at itself
            return hdr(1) + question + struct.pack(">H", 0xc000 | qoff) + b"\0" * 10
        if m == "forward":                  # a pointer past the packet
            return hdr(1) + question + b"\xc0\xff" + struct.pack(">HHIH", 16, 1, 0, 4) + b"abcd"
        if m == "rdlength":                 # rdata longer than the packet
            return hdr(1) + question + b"\xc0\x0c" + struct.pack(">HHIH", 16, 1, 0, 0xffff)
        if m == "txtlen":                   # a TXT string longer than its rdata
            return hdr(1) + question + b"\xc0\x0c" + struct.pack(">HHIH", 16, 1, 0, 3) + b"\xfeab"
        if m == "ancount":                  # 65535 answers announced, none there
            return hdr(0xffff) + question
        if m == "mxshort":                  # MX rdata too short for a name
            return hdr(1) + question + b"\xc0\x0c" + struct.pack(">HHIH", 15, 1, 0, 1) + b"\0"
        if m == "label":                    # a label running off the end
            return hdr(1) + question + b"\x3f" + b"a" * 10
        if m == "tc":                       # truncated, and nobody on TCP
            return hdr(0, 0x8380) + question
        if m == "servfail":
            return hdr(0, 0x8182) + question
        # random bytes after a valid header and question
        n = self.rng.randint(0, 600)
        return hdr(self.rng.randint(0, 40)) + question + bytes(self.rng.getrandbits(8)
                                                               for _ in range(n))

    def stop(self):
        self.stopped = True
        self.thread.join(2)
        self.sock.close()


@pytest.mark.parametrize("mode", ["loop", "forward", "rdlength", "txtlen", "ancount",
                                  "mxshort", "label", "tc", "servfail", "random"])
def test_hostile_dns_answers(env, mode):
    h = HostileDns(mode)
    try:
        res = env.run(env={"SESRELAY_DNS_SERVER": h.server}, timeout=60)
    finally:
        h.stop()
    assert res.rc == 1, res
    assert res.seconds < 20, res
    spf = [l for l in res.lines if l[6:].startswith("DNS example.com: ")][0]
    assert spf.startswith("FAIL  "), res
    if mode == "mxshort":               # only MX answers are broken
        line = res.expect("warn", "DNS example.com: MX lookup failed: malformed answer from %s"
                          % h.server)
    else:
        line = spf
    if mode in ("loop", "forward", "rdlength", "txtlen", "ancount", "label"):
        assert "TXT lookup failed: malformed answer from %s" % h.server in line, line
    if mode == "tc":
        assert "TXT lookup failed: TCP to %s: " % h.server in line, line
    if mode == "servfail":
        assert "TXT lookup failed: SERVFAIL from %s" % h.server in line, line
    if mode != "random":
        assert line.endswith(FIX + "make sure the name servers of example.com answer (asked %s)"
                             % h.server), line


# --------------------------------------------------------------------------
# [inbound]: the bucket (s3rver, or a front that refuses) and the MX of the
# domains the map receives for
# --------------------------------------------------------------------------

BUCKET = "inbound"
IN_MX = "inbound-smtp.us-east-1.amazonaws.com"
NO_ENV_KEYS = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}
PROBE = re.compile(r"^mail/\.sesrelay-check-[0-9a-f]{16}$")


def use_inbound(env, endpoint, maps=("@example.com me@gmail.test",), extra="",
                from_address="forwarder@" + DOMAIN):
    env.extra = "\n".join(["[inbound]", "bucket = " + BUCKET, "prefix = mail/",
                           "endpoint = " + endpoint, "from_address = " + from_address] +
                          ["map = " + m for m in maps] + ([extra] if extra else []))


def use_s3rver_keys(env, secret=S3rver.SECRET_KEY):
    """[ses] carries s3rver's keys (the one credentials chain); SES knows them too."""
    env.ses_extra = "access_key_id = %s\nsecret_access_key = %s" % (S3rver.ACCESS_KEY, secret)
    env.fake.add_credentials(S3rver.ACCESS_KEY, secret)


def run_s3rver(env, **kw):
    res = env.run(env=NO_ENV_KEYS, **kw)
    # at most the first four characters of the key id, never the secret
    assert S3rver.ACCESS_KEY not in res.out + res.err, res
    return res


@pytest.fixture
def s3(tmp_path):
    s = S3rver(tmp_path / "s3").start()
    yield s
    s.stop()


def noted(s3, n):
    """s3.requests once it holds n: the front notes a request after answering it."""
    deadline = time.monotonic() + 5
    while len(s3.requests) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return list(s3.requests)


@pytest.fixture
def bucket(s3):
    s3.create_bucket(BUCKET)
    noted(s3, 1)
    s3.requests.clear()
    return s3


class RefusingS3:
    """A test-only S3 that answers like S3 when the action is allowed (an empty
    listing, NoSuchKey for the key that cannot exist, 204 for its delete),
    403 AccessDenied for the operations in deny, or nothing at all (hang)."""

    LIST = ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.'
            'amazonaws.com/doc/2006-03-01/"><Name>inbound</Name><Prefix>mail/</Prefix>'
            '<KeyCount>0</KeyCount><MaxKeys>1</MaxKeys><IsTruncated>false</IsTruncated>'
            '</ListBucketResult>')

    def __init__(self, deny=(), hang=False):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        owner = self
        self.deny, self.hang, self.requests = set(deny), hang, []
        self.release = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.answer(self)

            do_PUT = do_DELETE = do_POST = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    @staticmethod
    def op(h):
        if h.command == "GET":
            return "list" if "list-type=" in h.path else "get"
        if h.command == "DELETE":
            return "delete"
        return "copy" if h.command == "PUT" and h.headers.get("x-amz-copy-source") else "other"

    @staticmethod
    def error(code, message):
        return ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>%s'
                '</Message><RequestId>0123456789ABCDEF</RequestId></Error>' % (code, message))

    def answer(self, h):
        n = int(h.headers.get("Content-Length") or 0)
        if n:
            h.rfile.read(n)
        op = self.op(h)
        self.requests.append((op, h.command, h.path, h.headers.get("x-amz-copy-source")))
        if self.hang:
            self.release.wait(30)
            h.close_connection = True
            return
        if op in self.deny:
            status, body = 403, self.error("AccessDenied", "Access Denied")
        elif op == "list":
            status, body = 200, self.LIST
        elif op == "delete":
            status, body = 204, ""
        elif op in ("get", "copy"):
            status, body = 404, self.error("NoSuchKey", "The specified key does not exist.")
        else:
            status, body = 400, self.error("InvalidRequest", "not an operation check uses")
        data = body.encode()
        h.send_response(status)
        h.send_header("x-amz-request-id", "0123456789ABCDEF")
        if data:
            h.send_header("Content-Type", "application/xml")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def refusing():
    made = []

    def make(**kw):
        made.append(RefusingS3(**kw))
        return made[-1]
    yield make
    for r in made:
        r.stop()


def test_inbound_all_good(env, bucket):
    use_s3rver_keys(env)
    use_inbound(env, bucket.endpoint)
    res = run_s3rver(env)
    assert res.rc == 0, res
    assert all(l.startswith("ok    ") for l in res.lines), res
    res.expect("ok", "credentials: config file (S3RV\u2026)")
    res.expect("ok", "senders: 1 domain, 3 addresses")
    res.expect("ok", "identity forwarder@example.com: covered by the verified domain example.com")
    inbound = [l for l in res.lines if l[6:].startswith("inbound: ")]
    assert inbound == [
        "ok    inbound: s3://inbound/mail/ can be listed (s3:ListBucket)",
        "ok    inbound: s3://inbound/mail/ objects can be read (s3:GetObject)",
        "ok    inbound: s3://inbound/mail/ objects can be deleted (s3:DeleteObject)",
        "ok    inbound: s3://inbound/held/ can be written (s3:PutObject, for failed_verdict "
        "= hold)",
        "ok    inbound: DNS example.com: MX 10 %s" % IN_MX,
    ], res
    # the two blocks come last, and example.com's MX is said once, as a requirement
    assert res.lines[-len(inbound):] == inbound, res
    assert not [l for l in res.lines if l[6:].startswith("DNS example.com: MX")], res
    # what was asked, signed right, and nothing left behind
    assert bucket.signature_failures == [], bucket.signature_failures
    methods = [(m, p.split("?")[0]) for m, p, _ in noted(bucket, 4)]
    assert [m for m, _ in methods] == ["GET", "GET", "DELETE", "PUT"], bucket.requests
    key = methods[1][1][len("/inbound/"):]
    assert PROBE.match(key), key
    assert methods[2][1] == "/inbound/" + key
    assert methods[3][1] == "/inbound/held/" + key
    assert bucket.keys(BUCKET) == []


def test_inbound_move_needs_put_object_on_done_prefix(env, bucket):
    use_s3rver_keys(env)
    use_inbound(env, bucket.endpoint, extra="delete_after = move\nfailed_verdict = delete")
    res = run_s3rver(env)
    assert res.rc == 0, res
    res.expect("ok", "inbound: s3://inbound/done/ can be written (s3:PutObject, for "
               "delete_after = move)")
    assert not [l for l in res.lines if "held/" in l], res
    puts = [p for m, p, _ in noted(bucket, 4) if m == "PUT"]
    assert len(puts) == 1 and PROBE.match(puts[0][len("/inbound/done/"):]), bucket.requests
    assert bucket.keys(BUCKET) == []


def test_inbound_missing_bucket(env, s3):
    use_s3rver_keys(env)
    use_inbound(env, s3.endpoint)
    res = run_s3rver(env)
    line = only_problem(res, "FAIL", "inbound: s3://inbound/mail/: ListObjectsV2 "
                        "s3://inbound/mail/: 404 NoSuchBucket: ", "check the bucket name")
    assert line.count("check the bucket name") == 1, line     # S3's hint is the fix, once
    # the other calls would only say the same
    assert [m for m, _, _ in noted(s3, 1)] == ["GET"], s3.requests
    assert not [l for l in res.lines if "s3:GetObject" in l], res


def test_inbound_wrong_secret(env, bucket):
    use_s3rver_keys(env, secret="not-the-secret")
    use_inbound(env, bucket.endpoint)
    res = run_s3rver(env)
    assert "not-the-secret" not in res.out + res.err
    res.expect("ok", "SES account: sending enabled")       # SES knows this secret
    only_problem(res, "FAIL", "inbound: s3://inbound/mail/: ListObjectsV2 s3://inbound/mail/: "
                 "403 SignatureDoesNotMatch: ",
                 "check the secret access key (and that no proxy rewrites requests)")


def test_inbound_mx_of_a_mapped_domain_elsewhere(env, bucket):
    env.records[("MX", DOMAIN)] = [("aspmx.l.google.com", 1)]
    use_s3rver_keys(env)
    use_inbound(env, bucket.endpoint)
    res = run_s3rver(env)
    only_problem(res, "FAIL", "inbound: DNS example.com: MX points to aspmx.l.google.com, not "
                 + IN_MX, "MX example.com 10 " + IN_MX)
    # not also the sender block's "mail is received there"
    assert not [l for l in res.lines if l[6:].startswith("DNS example.com: MX")], res


def test_inbound_mx_is_required_for_mapped_domains_only(env, refusing):
    """Every domain of an "@d" or "u@d" key must receive through SES; the
    sender domain example.com, not in the map, keeps its warning."""
    del env.records[("MX", DOMAIN)]
    env.records[("MX", "corp.example")] = [(IN_MX, 10), ("backup.corp.example", 20)]
    env.records[("MX", "pending.example")] = [("mx.pending.example", 5), (IN_MX, 10)]
    env.records[("TXT", "solo.example")] = [SPF]      # the domain exists, without an MX
    env.zones.append("nowhere.example")                # served, and empty: NXDOMAIN
    use_inbound(env, refusing().endpoint,
                maps=("info@corp.example a@gmail.test", "@solo.example b@gmail.test",
                      "@Pending.Example c@gmail.test", "INFO@pending.example d@gmail.test",
                      "@nowhere.example e@gmail.test", "postmaster f@gmail.test",
                      "@ g@gmail.test"))
    res = env.run()
    assert res.rc == 1, res
    res.expect("warn", "DNS example.com: no MX: receiving is not set up",
               "MX example.com 10 %s (SES receiving), or your mailbox provider's MX" % IN_MX)
    res.expect("ok", "inbound: DNS corp.example: MX 10 " + IN_MX)
    res.expect("FAIL", "inbound: DNS solo.example: no MX, so its mail does not reach SES",
               "MX solo.example 10 " + IN_MX)
    res.expect("FAIL", "inbound: DNS pending.example: MX 5 mx.pending.example takes mail "
               "before or beside MX 10 " + IN_MX,
               "MX pending.example 10 %s as the only MX" % IN_MX)
    res.expect("FAIL", "inbound: DNS nowhere.example: no such domain",
               "MX nowhere.example 10 " + IN_MX)
    mx = [l for l in res.lines if l[6:].startswith("inbound: DNS ")]
    assert [l.split()[3] for l in mx] == ["corp.example:", "solo.example:",
                                          "pending.example:", "nowhere.example:"], res
    assert len(res.with_status("FAIL")) == 3, res
    assert not [l for l in res.lines if "map names no domain" in l], res


def test_inbound_region_names_the_mx(env, refusing):
    env.records[("MX", DOMAIN)] = [(IN_MX, 10)]
    use_inbound(env, refusing().endpoint, extra="region = eu-west-1")
    res = env.run()
    res.expect("FAIL", "inbound: DNS example.com: MX points to %s, not "
               "inbound-smtp.eu-west-1.amazonaws.com" % IN_MX,
               "MX example.com 10 inbound-smtp.eu-west-1.amazonaws.com")


def test_inbound_map_without_domains_warns(env, refusing):
    use_inbound(env, refusing().endpoint, maps=("@ a@gmail.test", "info b@gmail.test"))
    res = env.run()
    only_problem(res, "warn", "inbound: the map names no domain (only bare users or the "
                 "catch-all @), so the receiving domains' MX cannot be checked",
                 "give each domain SES receives for MX DOMAIN 10 " + IN_MX)
    # the sender domain's MX is checked as before
    res.expect("ok", "DNS example.com: MX 10 %s (SES receiving)" % IN_MX)


def test_inbound_from_address_is_a_sender_identity(env, refusing):
    use_inbound(env, refusing().endpoint, from_address="forwarder@solo.example")
    res = env.run()
    only_problem(res, "FAIL", "identity forwarder@solo.example: neither the address nor "
                 "solo.example is verified in SES us-east-1",
                 "verify the domain (aws sesv2 create-email-identity --email-identity "
                 "solo.example) or this address (aws sesv2 create-email-identity "
                 "--email-identity forwarder@solo.example, then open the link SES mails to it)")
    env.fake.add_identity("forwarder@solo.example")
    res = env.run()
    assert res.rc == 0, res
    res.expect("ok", "identity forwarder@solo.example: verified for sending")
    paths = [r.path for r in env.fake.snapshot()["requests"]]
    assert "/v2/email/identities/forwarder%40solo.example" in paths, paths


WHERE_MAIL = "inbound: s3://inbound/mail/: "


@pytest.mark.parametrize("deny,extra,want", [
    ({"list"}, "", [
        ("FAIL", WHERE_MAIL + "ListObjectsV2 s3://inbound/mail/: 403 AccessDenied: Access Denied",
         "allow s3:ListBucket on arn:aws:s3:::inbound")]),
    ({"get"}, "", [
        ("FAIL", WHERE_MAIL + "GetObject s3://inbound/mail/.sesrelay-check-",
         "allow s3:GetObject on arn:aws:s3:::inbound/mail/*")]),
    ({"delete"}, "", [
        ("FAIL", WHERE_MAIL + "DeleteObject s3://inbound/mail/.sesrelay-check-",
         "allow s3:DeleteObject on arn:aws:s3:::inbound/mail/*")]),
    ({"copy"}, "delete_after = move", [
        ("FAIL", "inbound: s3://inbound/done/: CopyObject s3://inbound/mail/.sesrelay-check-",
         "allow s3:PutObject on arn:aws:s3:::inbound/done/*"),
        ("FAIL", "inbound: s3://inbound/held/: CopyObject s3://inbound/mail/.sesrelay-check-",
         "allow s3:PutObject on arn:aws:s3:::inbound/held/*")]),
    # without s3:ListBucket, S3 says AccessDenied for any missing key: unknown, not FAIL
    ({"list", "get", "delete", "copy"}, "", [
        ("FAIL", WHERE_MAIL + "ListObjectsV2 s3://inbound/mail/: 403 AccessDenied",
         "allow s3:ListBucket on arn:aws:s3:::inbound"),
        ("warn", WHERE_MAIL + "s3:GetObject unknown (without s3:ListBucket, S3 answers "
         "AccessDenied for a missing key)",
         "allow s3:ListBucket on arn:aws:s3:::inbound and s3:GetObject on "
         "arn:aws:s3:::inbound/mail/*"),
        ("FAIL", WHERE_MAIL + "DeleteObject s3://inbound/mail/.sesrelay-check-",
         "allow s3:DeleteObject on arn:aws:s3:::inbound/mail/*"),
        ("warn", "inbound: s3://inbound/held/: s3:PutObject unknown",
         "allow s3:ListBucket on arn:aws:s3:::inbound and s3:PutObject on "
         "arn:aws:s3:::inbound/held/*")]),
])
def test_inbound_access_denied_names_the_permission(env, refusing, deny, extra, want):
    s3 = refusing(deny=deny)
    use_inbound(env, s3.endpoint, extra=extra)
    res = env.run()
    assert res.rc == 1, res
    for status, text, fix in want:
        line = res.expect(status, text, fix)
        # the fix names the one action; S3's catch-all hint is left out
        assert "s3:ListBucket, s3:GetObject" not in line, line
    problems = [l for l in res.lines if not l.startswith("ok ")]
    assert len(problems) == len(want), res
    # every step ran, on one key
    ops = [op for op, _, _, _ in s3.requests]
    assert ops == ["list", "get", "delete"] + ["copy"] * (2 if extra else 1), s3.requests
    keys = {p.split("?")[0] for op, _, p, _ in s3.requests if op in ("get", "delete")}
    assert len(keys) == 1 and PROBE.match(keys.pop()[len("/inbound/"):]), s3.requests
    sources = {src for op, _, _, src in s3.requests if op == "copy"}
    assert len(sources) == 1 and sources.pop().startswith("inbound/mail/.sesrelay-check-")


def test_inbound_s3_unreachable(env):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = "http://127.0.0.1:%d" % s.getsockname()[1]
    s.close()
    use_inbound(env, dead)
    res = env.run()
    assert res.rc == 1, res
    assert res.seconds < 20, res
    only_problem(res, "FAIL", WHERE_MAIL + "ListObjectsV2 s3://inbound/mail/: no answer from "
                 + dead, "make sure this host reaches S3 over HTTP(S) (firewall, proxy, "
                 "[inbound] region and endpoint)")


def test_inbound_s3_hanging_is_cut_off_by_the_bound(env, refusing):
    s3 = refusing(hang=True)
    use_inbound(env, s3.endpoint)
    res = env.run(env={"SESRELAY_CHECK_TIMEOUT": "3"}, timeout=30)
    assert res.rc == 1, res
    assert 2.5 < res.seconds < 10, res
    only_problem(res, "FAIL", WHERE_MAIL + "timed out (no answer within 3 s)", None)
    assert res.out.splitlines()[-1].startswith("sesrelay check: ")


def test_inbound_without_credentials(env, refusing):
    s3 = refusing()
    use_inbound(env, s3.endpoint)
    res = env.run(env=NO_ENV_KEYS)
    assert res.rc == 1, res
    res.expect("FAIL", WHERE_MAIL + "not checked: no AWS credentials")
    res.expect("ok", "inbound: DNS example.com: MX 10 " + IN_MX)   # DNS needs none
    assert s3.requests == []


# --------------------------------------------------------------------------
# [inbound] queue_url: the SQS queue of SES's receipt notifications (fake_sqs,
# which checks every signature), beside the bucket (s3rver), one credentials
# chain for both
# --------------------------------------------------------------------------

QUEUE = "ses-inbound"
QUEUE_ARN = "arn:aws:sqs:us-east-1:000000000000:" + QUEUE
S3_OK = [
    "ok    inbound: s3://inbound/mail/ can be listed (s3:ListBucket)",
    "ok    inbound: s3://inbound/mail/ objects can be read (s3:GetObject)",
    "ok    inbound: s3://inbound/mail/ objects can be deleted (s3:DeleteObject)",
    "ok    inbound: s3://inbound/held/ can be written (s3:PutObject, for failed_verdict = hold)",
]


@pytest.fixture
def queue():
    q = FakeSQS(access_key=S3rver.ACCESS_KEY, secret_key=S3rver.SECRET_KEY).start()
    q.url = q.create_queue(QUEUE, visibility_timeout=30)
    yield q
    try:
        assert not q.sig_failures, q.sig_failures
    finally:
        q.stop()


def use_queue(env, s3_endpoint, url):
    use_s3rver_keys(env)
    use_inbound(env, s3_endpoint, extra="queue_url = " + url)


def ses_notification(key, recipients, bucket=BUCKET):
    """What SES publishes for a message its S3 action stored, as SNS delivers
    it to an SQS queue (as tests/test_inbound.py builds it)."""
    inner = {
        "notificationType": "Received",
        "mail": {"timestamp": "2026-11-28T10:00:00.000Z", "source": "bob@sender.test",
                 "messageId": key.rsplit("/", 1)[-1], "destination": recipients,
                 "headersTruncated": False},
        "receipt": {"timestamp": "2026-11-28T10:00:00.000Z", "processingTimeMillis": 300,
                    "recipients": recipients, "spamVerdict": {"status": "PASS"},
                    "virusVerdict": {"status": "PASS"}, "spfVerdict": {"status": "PASS"},
                    "dkimVerdict": {"status": "PASS"}, "dmarcVerdict": {"status": "PASS"},
                    "action": {"type": "S3", "topicArn": "arn:aws:sns:us-east-1:1:ses-in",
                               "bucketName": bucket, "objectKeyPrefix": "mail/",
                               "objectKey": key}},
    }
    return json.dumps({"Type": "Notification", "MessageId": "5d5e-1",
                       "TopicArn": "arn:aws:sns:us-east-1:1:ses-in",
                       "Subject": "Amazon SES Email Receipt Notification",
                       "Message": json.dumps(inner), "Timestamp": "2026-11-28T10:00:00.100Z",
                       "SignatureVersion": "1", "Signature": "c2ln"})


def s3_event_notification(key):
    """What S3 itself sends for a new object: not what the forwarder reads."""
    return json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-11-28T10:00:00.000Z", "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "new-mail",
               "bucket": {"name": BUCKET, "arn": "arn:aws:s3:::" + BUCKET},
               "object": {"key": key, "size": 1024}}}]})


def sqs_ops(queue):
    """(op, code) of every request the fake answered, once both are in."""
    deadline = time.monotonic() + 5
    while any(r["status"] is None for r in queue.requests) and time.monotonic() < deadline:
        time.sleep(0.01)
    return [(r["op"], r["code"]) for r in queue.requests]


def test_inbound_queue_empty(env, bucket, queue):
    use_queue(env, bucket.endpoint, queue.url)
    res = run_s3rver(env)
    assert res.rc == 0, res
    assert all(l.startswith("ok    ") for l in res.lines), res
    inbound = [l for l in res.lines if l[6:].startswith("inbound: ")]
    assert inbound == S3_OK + [
        "ok    inbound: SQS %s can be read (sqs:ReceiveMessage), empty now" % queue.url,
        "ok    inbound: SQS %s messages can be deleted (sqs:DeleteMessage)" % queue.url,
        "ok    inbound: DNS example.com: MX 10 %s" % IN_MX,
    ], res
    # the delete was of a handle SQS never issued, which it says is not one
    assert sqs_ops(queue) == [("ReceiveMessage", None),
                              ("DeleteMessage", "ReceiptHandleIsInvalid")], queue.requests


def test_inbound_queue_waiting_notification_is_left_in_place(env, bucket, queue):
    msg_id = queue.send(ses_notification("mail/abc123", ["me@example.com"]), queue=QUEUE)
    use_queue(env, bucket.endpoint, queue.url)
    res = run_s3rver(env)
    assert res.rc == 0, res
    assert all(l.startswith("ok    ") for l in res.lines), res
    res.expect("ok", "inbound: SQS %s can be read (sqs:ReceiveMessage), a message is "
               "waiting now" % queue.url)
    res.expect("ok", "inbound: SQS %s: the waiting message %s is an SES receipt notification "
               "for s3://inbound/mail/abc123" % (queue.url, msg_id))
    # visibility 0: received once, visible again at once, never deleted
    [(mid, _, count, visible)] = queue.messages(QUEUE)
    assert (mid, count, visible) == (msg_id, 1, True), queue.messages(QUEUE)
    assert queue.deleted(QUEUE) == []
    # the body names its sender and recipients: never printed
    assert "me@example.com" not in res.out and "bob@sender.test" not in res.out, res


@pytest.mark.parametrize("body,text,fix", [
    (s3_event_notification("mail/abc123"),
     "is not a readable SES receipt notification (an S3 event notification, not SES's)",
     "subscribe the queue to the SNS topic of the receipt rule's S3 action, not to the "
     "bucket's event notifications"),
    (ses_notification("mail/abc123", ["me@example.com"], bucket="another-relay"),
     "is an SES receipt notification for s3://another-relay/, not this bucket",
     "give this relay a queue of its own, subscribed to the topic of the receipt rule that "
     "stores in s3://inbound/ (the forwarder deletes notifications for other buckets)"),
])
def test_inbound_queue_waiting_message_from_elsewhere_warns(env, bucket, queue, body, text,
                                                             fix):
    msg_id = queue.send(body, queue=QUEUE)
    use_queue(env, bucket.endpoint, queue.url)
    res = run_s3rver(env)
    only_problem(res, "warn", "inbound: SQS %s: the waiting message %s %s"
                 % (queue.url, msg_id, text), fix)
    res.expect("ok", "inbound: SQS %s can be read (sqs:ReceiveMessage), a message is "
               "waiting now" % queue.url)
    res.expect("ok", "inbound: SQS %s messages can be deleted (sqs:DeleteMessage)" % queue.url)
    assert [m[0] for m in queue.messages(QUEUE)] == [msg_id]


def test_inbound_queue_does_not_exist(env, bucket, queue):
    url = queue.queue_url("no-such-queue")
    use_queue(env, bucket.endpoint, url)
    res = run_s3rver(env)
    line = only_problem(res, "FAIL", "inbound: SQS %s: ReceiveMessage %s: 400 QueueDoesNotExist: "
                        "The specified queue does not exist." % (url, url),
                        "check queue_url (account, name and region)")
    assert line.count("check queue_url") == 1, line     # SQS's hint is the fix, once
    # the delete would only say the same
    assert sqs_ops(queue) == [("ReceiveMessage", "QueueDoesNotExist")], queue.requests
    assert not [l for l in res.lines if "sqs:DeleteMessage" in l], res


def test_inbound_queue_receive_denied(env, bucket, queue):
    queue.fail_next(SQS_ACCESS_DENIED, op="ReceiveMessage")
    use_queue(env, bucket.endpoint, queue.url)
    res = run_s3rver(env)
    assert res.rc == 1, res
    line = res.expect("FAIL", "inbound: SQS %s: ReceiveMessage %s: 403 " % (queue.url, queue.url),
                      "allow sqs:ReceiveMessage on " + QUEUE_ARN)
    # the fix names the one action; SQS's catch-all hint is left out
    assert "sqs:ReceiveMessage and sqs:DeleteMessage" not in line, line
    # a refusal says nothing about the delete, which is asked all the same
    res.expect("ok", "inbound: SQS %s messages can be deleted (sqs:DeleteMessage)" % queue.url)
    assert len(res.with_status("FAIL")) == 1 and not res.with_status("warn"), res
    assert [op for op, _ in sqs_ops(queue)] == ["ReceiveMessage", "DeleteMessage"]


def test_inbound_queue_delete_denied(env, bucket, queue):
    queue.fail_next(SQS_ACCESS_DENIED, op="DeleteMessage")
    use_queue(env, bucket.endpoint, queue.url)
    res = run_s3rver(env)
    line = only_problem(res, "FAIL", "inbound: SQS %s: DeleteMessage %s handle=AQEBsesrelay-"
                        % (queue.url, queue.url),
                        "allow sqs:DeleteMessage on " + QUEUE_ARN)
    assert " 403 " in line, line
    res.expect("ok", "inbound: SQS %s can be read (sqs:ReceiveMessage), empty now" % queue.url)


def test_inbound_queue_makes_listing_optional(env, refusing, queue):
    """The forwarder follows the notifications and never lists: a refused
    s3:ListBucket is a warning, as is what it leaves unknown."""
    s3 = refusing(deny={"list", "get", "copy"})
    use_queue(env, s3.endpoint, queue.url)
    res = run_s3rver(env)
    assert res.rc == 0, res
    res.expect("warn", WHERE_MAIL + "listing is only used without queue_url: ListObjectsV2 "
               "s3://inbound/mail/: 403 AccessDenied: Access Denied",
               "none while queue_url is set; to poll without it, allow s3:ListBucket on "
               "arn:aws:s3:::inbound")
    res.expect("warn", WHERE_MAIL + "s3:GetObject unknown (without s3:ListBucket, S3 answers "
               "AccessDenied for a missing key)")
    res.expect("warn", "inbound: s3://inbound/held/: s3:PutObject unknown")
    res.expect("ok", "inbound: s3://inbound/mail/ objects can be deleted (s3:DeleteObject)")
    res.expect("ok", "inbound: SQS %s can be read (sqs:ReceiveMessage)" % queue.url)
    assert len(res.with_status("warn")) == 3, res
    # GetObject and DeleteObject stay required
    s3 = refusing(deny={"list", "delete"})
    use_queue(env, s3.endpoint, queue.url)
    res = run_s3rver(env)
    assert res.rc == 1, res
    res.expect("warn", WHERE_MAIL + "listing is only used without queue_url: ListObjectsV2 ")
    res.expect("FAIL", WHERE_MAIL + "DeleteObject s3://inbound/mail/.sesrelay-check-",
               "allow s3:DeleteObject on arn:aws:s3:::inbound/mail/*")


def test_inbound_queue_without_credentials(env, refusing, queue):
    use_inbound(env, refusing().endpoint, extra="queue_url = " + queue.url)
    res = env.run(env=NO_ENV_KEYS)
    assert res.rc == 1, res
    res.expect("FAIL", "inbound: SQS %s: not checked: no AWS credentials" % queue.url)
    assert queue.requests == []


def test_inbound_queue_unreachable(env, bucket, queue):
    queue.fail_next(SQS_CLOSE, n=10)
    use_queue(env, bucket.endpoint, queue.url)
    res = run_s3rver(env)
    assert res.seconds < 20, res
    only_problem(res, "FAIL", "inbound: SQS %s: ReceiveMessage %s: no answer from "
                 % (queue.url, queue.url), "make sure this host reaches SQS over HTTP(S) "
                 "(firewall, proxy, [inbound] queue_url)")
    assert not [l for l in res.lines if "sqs:DeleteMessage" in l], res


def test_inbound_queue_hanging_is_cut_off_by_the_bound(env, bucket):
    """A queue endpoint that takes the connection and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    try:
        url = "http://127.0.0.1:%d/000000000000/%s" % (s.getsockname()[1], QUEUE)
        use_queue(env, bucket.endpoint, url)
        env.env["SESRELAY_CHECK_TIMEOUT"] = "3"
        res = run_s3rver(env, timeout=30)
    finally:
        s.close()
    assert res.rc == 1, res
    assert 2.5 < res.seconds < 10, res
    only_problem(res, "FAIL", "inbound: SQS %s: timed out (no answer within 3 s)" % url, None)
