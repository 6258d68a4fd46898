"""`sesrelay check` against the fake SES endpoint and a local DNS server.

Every scenario starts from a set-up where everything is right (exit 0, every
line "ok"), breaks one thing, and checks the verdict line and the fix it
names, word for word.  DNS comes from dnsmasq (tests/lib/localdns.py) through
SESRELAY_DNS_SERVER; SES from tests/lib/fake_ses.py, which checks every
signature with botocore.  Every process is bounded in time and stopped by PID.
"""
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
from relayharness import ASAN, BIN  # noqa: E402

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
    res.expect(status, text, fix)
    others = [l for l in res.lines if not l.startswith("ok ") and not l[6:].startswith(text)]
    assert not others, "other problems:\n%r" % res
    assert res.rc == (1 if status == "FAIL" else 0), res


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
