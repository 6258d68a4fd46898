/*
 * test_creds.c - the AWS credentials chain, as scenarios.
 *
 * 1. Tables for the pure parts: shared-file profiles ([profile x] vs [x],
 *    comments, whitespace, nested settings), the JSON field extractor
 *    (escapes, hostile input), the STS XML extractor and ISO 8601 times.
 * 2. The chain on a real event loop.  The metadata services are faked by an
 *    evhttp server on 127.0.0.1 inside this process, on the same loop, and
 *    reached through the standard override variables
 *    (AWS_EC2_METADATA_SERVICE_ENDPOINT, AWS_CONTAINER_CREDENTIALS_FULL_URI,
 *    AWS_ENDPOINT_URL_STS); credential_process runs real shell scripts.  So
 *    every case runs on its own under tests/test_unit.py, needs no network
 *    and no outside set-up, and is bounded in time (the slowest, the refresh
 *    cases, take a few seconds).
 *
 * Each chain case starts from a scrubbed environment (no AWS_* variable, no
 * proxy, HOME a fresh temporary directory, instance metadata disabled) and
 * sets exactly what it tests.  Keys are made up.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "conf/conf.h"
#include "relay/log.h"
#include "relay/util.h"
#include "ses/ses_creds.h"
#include "ses/ses_http.h"
#include "tests/unit/unit.h"

#define ROLE_ARN   "arn:aws:iam::123456789012:role/relay"
#define WEB_TOKEN  "eyJhbGciOi.J+pay/load=.sig&x=1"
#define IMDS_TOKEN "AQAEAFakeImdsToken=="

/* The error that must tell the operator every way to provide credentials. */
#define NOTHING_FOUND                                                                              \
	"no AWS credentials found: set [ses] access_key_id/secret_access_key, "                    \
	"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile in ~/.aws/credentials, or run on "     \
	"EC2/ECS with a role"

/* ---- 1. pure parts ------------------------------------------------------- */

struct profile_row {
	const char *text;
	const char *profile;
	int is_config;
	const char *key;
	const char *want; /* NULL: no value */
	int found;        /* the section exists */
};

static const struct profile_row profile_rows[] = {
    {"[default]\naws_access_key_id = AKIA1\n", "default", 0, "aws_access_key_id", "AKIA1", 1},
    {"[work]\naws_access_key_id=AKIA2\n", "work", 0, "aws_access_key_id", "AKIA2", 1},
    /* the credentials file has no "profile " prefix: this is "profile work" */
    {"[profile work]\naws_access_key_id=AKIA2\n", "work", 0, "aws_access_key_id", NULL, 0},
    {"[profile work]\naws_access_key_id=AKIA3\n", "work", 1, "aws_access_key_id", "AKIA3", 1},
    /* in the config file a bare [work] is not a profile */
    {"[work]\naws_access_key_id=AKIA3\n", "work", 1, "aws_access_key_id", NULL, 0},
    {"[default]\nregion=x\n", "default", 1, "region", "x", 1},
    {"[profile default]\nregion=y\n", "default", 1, "region", "y", 1},
    {"[ profile \t work ]\nregion = z\n", "work", 1, "region", "z", 1},
    {"[sso-session work]\nregion = z\n", "work", 1, "region", NULL, 0},
    {"[workx]\nregion=1\n[work]\nregion=2\n[work2]\nregion=3\n", "work", 0, "region", "2", 1},
    {"# comment\n; another\n\n[a]\n  # indented comment\nk = v\n", "a", 0, "k", "v", 1},
    {"[a]\r\nk = v w \r\n", "a", 0, "k", "v w", 1},
    {"[a]\n\tk\t=\tv\n", "a", 0, "k", "v", 1},
    {"[a]\nK = upper\n", "a", 0, "k", "upper", 1},
    {"[a]\nk: colon\n", "a", 0, "k", "colon", 1},
    {"[a]\nk =\n", "a", 0, "k", "", 1},
    {"[a]\nk = 1\nk = 2\n", "a", 0, "k", "2", 1},
    {"[a] ; trailing comment\nk = v\n", "a", 0, "k", "v", 1},
    /* a nested setting is not a key of the profile */
    {"[a]\ns3 =\n  k = nested\nother = x\n", "a", 0, "k", NULL, 1},
    {"[a]\ns3 =\n  k = nested\nk = top\n", "a", 0, "k", "top", 1},
    {"[a]\nk = cmd --url=https://x:1/?a=b\n", "a", 0, "k", "cmd --url=https://x:1/?a=b", 1},
    {"[a]\nnot a setting\nk=v\n", "a", 0, "k", "v", 1},
    {"[a\nk=v\n", "a", 0, "k", NULL, 0},
    {"[b]\nk=v\n", "a", 0, "k", NULL, 0},
    {"", "a", 0, "k", NULL, 0},
    {"[a]\nk=v", "a", 0, "k", "v", 1}, /* no final newline */
};

static void test_profile_table(void)
{
	size_t i;

	for (i = 0; i < sizeof(profile_rows) / sizeof(profile_rows[0]); i++) {
		const struct profile_row *r = &profile_rows[i];
		int found = -1;
		char *v = ses_creds_profile_value(r->text, strlen(r->text), r->profile,
		                                  r->is_config, r->key, &found);
		if (!(r->want == NULL ? v == NULL : v && strcmp(v, r->want) == 0) ||
		    found != r->found) {
			fprintf(stderr, "FAIL profile_table: row %zu: got \"%s\" found=%d\n", i,
			        v ? v : "(null)", found);
			unit_failed = 1;
		}
		free(v);
	}
}

struct json_row {
	const char *doc;
	const char *name;
	const char *want; /* NULL: expect err */
	const char *err;
};

static const struct json_row json_rows[] = {
    {"{\"a\":\"b\"}", "a", "b", NULL},
    {" \n{ \"x\" : 1 , \"a\" :\t\"b\" } \r\n", "a", "b", NULL},
    {"{\"a\":\"q\\\"b\\\\s\\/e\\n\"}", "a", "q\"b\\s/e\n", NULL},
    {"{\"a\":\"\\u00e9\\u20ac\"}", "a", "\xc3\xa9\xe2\x82\xac", NULL},
    {"{\"a\":\"\\ud83d\\ude00\"}", "a", "\xf0\x9f\x98\x80", NULL},
    {"{\"\\u0061\":\"esc-key\"}", "a", "esc-key", NULL},
    {"{\"a\":\"\"}", "a", "", NULL},
    {"{\"a\":\"1\",\"a\":\"2\"}", "a", "2", NULL},
    {"{\"n\":{\"a\":\"inner\"},\"l\":[1,-2.5e+3,true,false,null,{\"a\":[]}],\"a\":\"top\"}", "a",
     "top", NULL},
    {"{\"n\":{\"a\":\"inner\"}}", "a", NULL, "missing"},
    {"{}", "a", NULL, "missing"},
    {"{\"a\":1}", "a", NULL, "not a string"},
    {"{\"a\":null}", "a", NULL, "not a string"},
    {"{\"a\":{\"b\":\"c\"}}", "a", NULL, "not a string"},
    /* hostile or broken */
    {"", "a", NULL, "malformed JSON"},
    {"[\"a\"]", "a", NULL, "malformed JSON"},
    {"{\"a\":\"b\"", "a", NULL, "malformed JSON"},
    {"{\"a\":\"b}", "a", NULL, "malformed JSON"},
    {"{\"a\":\"b\"}x", "a", NULL, "malformed JSON"},
    {"{\"a\":\"b\"}{}", "a", NULL, "malformed JSON"},
    {"{\"a\":\"b\",}", "a", NULL, "malformed JSON"},
    {"{\"a\" \"b\"}", "a", NULL, "malformed JSON"},
    {"{a:\"b\"}", "a", NULL, "malformed JSON"},
    {"{\"a\":'b'}", "a", NULL, "malformed JSON"},
    {"{\"a\":\"\\x41\"}", "a", NULL, "malformed JSON"},
    {"{\"a\":\"\\u12\"}", "a", NULL, "malformed JSON"},
    {"{\"a\":\"\\u12g4\"}", "a", NULL, "malformed JSON"},
    {"{\"a\":\"\\u0000\"}", "a", NULL, "malformed JSON"},
    {"{\"a\":\"\\ud83d\"}", "a", NULL, "malformed JSON"},
    {"{\"a\":\"\\ud83dx\"}", "a", NULL, "malformed JSON"},
    {"{\"a\":\"\\ude00\"}", "a", NULL, "malformed JSON"},
    {"{\"a\":\"\\ud83d\\u0041\"}", "a", NULL, "malformed JSON"},
    {"{\"a\":\"tab\there\"}", "a", NULL, "malformed JSON"},
    {"{\"a\":\"new\nline\"}", "a", NULL, "malformed JSON"},
    {"{\"a\":\"\\", "a", NULL, "malformed JSON"},
    {"{\"x\":-,\"a\":\"b\"}", "a", NULL, "malformed JSON"},
    {"{\"x\":1.,\"a\":\"b\"}", "a", NULL, "malformed JSON"},
    {"{\"x\":tru,\"a\":\"b\"}", "a", NULL, "malformed JSON"},
    {"{\"x\":[1,],\"a\":\"b\"}", "a", NULL, "malformed JSON"},
    {"{\"x\":[1 2],\"a\":\"b\"}", "a", NULL, "malformed JSON"},
    {"{\"x\":{\"k\"},\"a\":\"b\"}", "a", NULL, "malformed JSON"},
    /* nesting: 15 deep is fine, 17 is refused */
    {"{\"x\":[[[[[[[[[[[[[[[]]]]]]]]]]]]]]],\"a\":\"b\"}", "a", "b", NULL},
    {"{\"x\":[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]],\"a\":\"b\"}", "a", NULL, "malformed JSON"},
};

static void test_json_table(void)
{
	size_t i;

	for (i = 0; i < sizeof(json_rows) / sizeof(json_rows[0]); i++) {
		const struct json_row *r = &json_rows[i];
		const char *err = "unset";
		char *v = ses_creds_json_string(r->doc, strlen(r->doc), r->name, &err);
		int good = r->want ? v && strcmp(v, r->want) == 0 && err == NULL
		                   : v == NULL && err && strcmp(err, r->err) == 0;
		if (!good) {
			fprintf(stderr, "FAIL json_table: row %zu (%s): got \"%s\" err=%s\n", i,
			        r->doc, v ? v : "(null)", err ? err : "(null)");
			unit_failed = 1;
		}
		free(v);
	}
}

/* Lengths: a 16 KiB string is the limit; one byte more is hostile.  The
 * document is not NUL-terminated where the length says it ends. */
static void test_json_caps(void)
{
	size_t n = 16 * 1024, len;
	char *doc = xmalloc(n + 64), *v;
	const char *err;

	memcpy(doc, "{\"a\":\"", 6);
	memset(doc + 6, 'x', n);
	memcpy(doc + 6 + n, "\"}", 3);
	len = strlen(doc);
	v = ses_creds_json_string(doc, len, "a", &err);
	CHECK(v != NULL && strlen(v) == n);
	free(v);
	memcpy(doc + 6 + n, "x\"}", 4);
	CHECK(ses_creds_json_string(doc, strlen(doc), "a", &err) == NULL);
	CHECK_STR(err, "malformed JSON");
	/* an escape that would decode past the cap counts too */
	memcpy(doc + 6 + n - 1, "\\u00e9\"}", 9);
	CHECK(ses_creds_json_string(doc, strlen(doc), "a", &err) == NULL);
	/* cut in the middle: the length wins over the NUL */
	memcpy(doc, "{\"a\":\"bc\"}", 11);
	CHECK(ses_creds_json_string(doc, 8, "a", &err) == NULL);
	CHECK_STR(err, "malformed JSON");
	free(doc);
}

#define STS_OK                                                                                     \
	"<AssumeRoleWithWebIdentityResponse "                                                      \
	"xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n"                                   \
	"  <AssumeRoleWithWebIdentityResult>\n"                                                    \
	"    <SubjectFromWebIdentityToken>system:sa</SubjectFromWebIdentityToken>\n"               \
	"    <Credentials>\n"                                                                      \
	"      <SessionToken>Tok/en+1==</SessionToken>\n"                                          \
	"      <SecretAccessKey>sec&amp;ret</SecretAccessKey>\n"                                   \
	"      <Expiration>2026-11-28T15:04:05Z</Expiration>\n"                                    \
	"      <AccessKeyId>ASIASTS</AccessKeyId>\n"                                               \
	"    </Credentials>\n"                                                                     \
	"    <AccessKeyId>OUTSIDE</AccessKeyId>\n"                                                 \
	"  </AssumeRoleWithWebIdentityResult>\n"                                                   \
	"</AssumeRoleWithWebIdentityResponse>\n"

#define STS_ERR                                                                                    \
	"<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender"   \
	"</Type><Code>AccessDenied</Code><Message>Not authorized &lt;here&gt;</Message></Error>"   \
	"<RequestId>r</RequestId></ErrorResponse>"

struct xml_row {
	const char *xml, *outer, *tag, *want;
};

static const struct xml_row xml_rows[] = {
    {STS_OK, "Credentials", "AccessKeyId", "ASIASTS"},
    {STS_OK, "Credentials", "SecretAccessKey", "sec&ret"},
    {STS_OK, "Credentials", "SessionToken", "Tok/en+1=="},
    {STS_OK, "Credentials", "Expiration", "2026-11-28T15:04:05Z"},
    {STS_OK, "Credentials", "Missing", NULL},
    {STS_OK, "AssumeRoleWithWebIdentityResponse", "SubjectFromWebIdentityToken", "system:sa"},
    {STS_ERR, "Error", "Code", "AccessDenied"},
    {STS_ERR, "Error", "Message", "Not authorized <here>"},
    {STS_ERR, "Credentials", "AccessKeyId", NULL},
    {"<C><A>&#65;&#x42;&#x20ac;&quot;&apos;</A></C>", "C", "A", "AB\xe2\x82\xac\"'"},
    {"<C><A></A></C>", "C", "A", ""},
    {"<C><A/><A>x</A></C>", "C", "A", "x"},
    {"<C><AB>no</AB><A>yes</A></C>", "C", "A", "yes"},
    {"<CX><A>no</A></CX><C><A>yes</A></C>", "C", "A", "yes"},
    {"<C><A><B>nested</B></A></C>", "C", "A", NULL},
    {"<C><A>x</A>", "C", "A", NULL},
    {"<C><A>x</C>", "C", "A", NULL},
    {"<C><A>a&bogus;b</A></C>", "C", "A", NULL},
    {"<C><A>a&b</A></C>", "C", "A", NULL},
    {"<C><A>&#0;</A></C>", "C", "A", NULL},
    {"<C><A>&#xd800;</A></C>", "C", "A", NULL},
    {"<C><A>&#;</A></C>", "C", "A", NULL},
    {"<C><A>&#1234567890;</A></C>", "C", "A", NULL},
    {"<C", "C", "A", NULL},
    {"", "C", "A", NULL},
};

static void test_xml_table(void)
{
	size_t i;

	for (i = 0; i < sizeof(xml_rows) / sizeof(xml_rows[0]); i++) {
		const struct xml_row *r = &xml_rows[i];
		char *v = ses_creds_xml_text(r->xml, strlen(r->xml), r->outer, r->tag);
		if (!(r->want == NULL ? v == NULL : v && strcmp(v, r->want) == 0)) {
			fprintf(stderr, "FAIL xml_table: row %zu: got \"%s\"\n", i,
			        v ? v : "(null)");
			unit_failed = 1;
		}
		free(v);
	}
}

struct time_row {
	const char *s;
	long long want; /* -1: refused */
};

static const struct time_row time_rows[] = {
    {"1970-01-01T00:00:00Z", 0},
    {"2026-11-28T15:04:05Z", 1795878245},
    {"2026-11-28t15:04:05z", 1795878245},
    {"2026-11-28 15:04:05Z", 1795878245},
    {"2026-11-28T15:04:05.123456Z", 1795878245},
    {"2026-11-28T15:04:05+00:00", 1795878245},
    {"2026-11-28T16:04:05+01:00", 1795878245},
    {"2026-11-28T16:04:05+0100", 1795878245},
    {"2026-11-28T09:34:05-05:30", 1795878245},
    {"2024-02-29T00:00:00Z", 1709164800},
    {"2026-11-28T15:04:05", -1}, /* no zone */
    {"2025-02-29T00:00:00Z", -1},
    {"2026-13-01T00:00:00Z", -1},
    {"2026-00-01T00:00:00Z", -1},
    {"2026-11-31T00:00:00Z", -1},
    {"2026-11-28T24:00:00Z", -1},
    {"2026-11-28T15:60:00Z", -1},
    {"2026-11-28T15:04:05.Z", -1},
    {"2026-11-28T15:04:05Zjunk", -1},
    {"2026-11-28T15:04:05+24:00", -1},
    {"2026-11-28T15:04Z", -1},
    {"2026-11-28", -1},
    {"26-11-28T15:04:05Z", -1},
    {"1969-12-31T23:59:59Z", -1},
    {"", -1},
};

static void test_time_table(void)
{
	size_t i;

	CHECK(ses_creds_parse_time(NULL, NULL) == -1);
	for (i = 0; i < sizeof(time_rows) / sizeof(time_rows[0]); i++) {
		time_t t = 42;
		int rc = ses_creds_parse_time(time_rows[i].s, &t);
		if (time_rows[i].want == -1 ? rc != -1 : rc != 0 || t != time_rows[i].want) {
			fprintf(stderr, "FAIL time_table: row %zu (%s): rc=%d t=%lld\n", i,
			        time_rows[i].s, rc, (long long)t);
			unit_failed = 1;
		}
	}
}

/* ---- 2. fixtures: scrubbed environment, loop, fake metadata server ------- */

struct fake {
	struct evhttp *http;
	char url[64];          /* http://127.0.0.1:PORT */
	int fail;              /* answer 500 to everything */
	int ttl;               /* lifetime of issued credentials; 0: no Expiration */
	int issued;            /* credentials handed out (keys are numbered by it) */
	int token_puts;        /* IMDS: PUT /latest/api/token with the TTL header */
	int untokened;         /* IMDS: GETs without the right token (refused) */
	int no_role;           /* IMDS: 404 on the role list */
	const char *want_auth; /* /container: required Authorization */
	char auth[256];        /* /container: last Authorization seen */
	char form[4096];       /* /sts: last body */
	int sts_error;
};

struct fx {
	struct event_base *base;
	struct ses_http *http;
	struct ses_creds *creds;
	struct conf conf;
	struct fake fake;
	char dir[PATH_MAX]; /* temporary HOME */
	int ready, ok;
	char err[512];
};

static const char *const scrubbed[] = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_ENDPOINT_URL_STS",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
};

static void write_file(const struct fx *f, const char *name, const char *text)
{
	char *path = xasprintf("%s/%s", f->dir, name), *slash = strrchr(path, '/');
	FILE *fp;

	*slash = '\0';
	mkdir(path, 0700); /* one level (".aws") is all the cases need */
	*slash = '/';
	if ((fp = fopen(path, "w")) == NULL || fputs(text, fp) == EOF || fclose(fp) == EOF) {
		perror(path);
		exit(2);
	}
	free(path);
}

static char *in_dir(const struct fx *f, const char *name)
{
	return xasprintf("%s/%s", f->dir, name);
}

static void fake_reply(struct evhttp_request *req, int code, const char *type, const char *body)
{
	struct evbuffer *b = evbuffer_new();

	evbuffer_add(b, body, strlen(body));
	if (type)
		evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", type);
	evhttp_send_reply(req, code, code == 200 ? "OK" : "Error", b);
	evbuffer_free(b);
}

static void fake_iso(time_t t, char buf[32])
{
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Numbered keys, so a test sees which issue it got: ASIAFAKE0001, ... */
static char *fake_json(struct fake *k, const char *token_name)
{
	char exp[32];

	k->issued++;
	fake_iso(time(NULL) + k->ttl, exp);
	return xasprintf("{\"Code\": \"Success\", \"LastUpdated\": \"x\", \"Type\": \"AWS-HMAC\", "
	                 "\"AccessKeyId\": \"ASIAFAKE%04d\", \"SecretAccessKey\": "
	                 "\"fakeSecret%04d/+x\", \"%s\": \"FakeToken%04d\"%s%s%s}",
	                 k->issued, k->issued, token_name, k->issued,
	                 k->ttl ? ", \"Expiration\": \"" : "", k->ttl ? exp : "",
	                 k->ttl ? "\"" : "");
}

static void fake_cb(struct evhttp_request *req, void *arg)
{
	struct fake *k = arg;
	const char *uri = evhttp_request_get_uri(req);
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	const char *tok = evhttp_find_header(in, "X-aws-ec2-metadata-token");
	const char *roles = "/latest/meta-data/iam/security-credentials/";
	char *body;

	if (k->fail) {
		fake_reply(req, 500, NULL, "down");
	} else if (strcmp(uri, "/latest/api/token") == 0) {
		const char *ttl = evhttp_find_header(in, "X-aws-ec2-metadata-token-ttl-seconds");
		if (cmd != EVHTTP_REQ_PUT || ttl == NULL || strcmp(ttl, "21600") != 0) {
			fake_reply(req, 400, NULL, "");
			return;
		}
		k->token_puts++;
		fake_reply(req, 200, "text/plain", IMDS_TOKEN);
	} else if (strncmp(uri, roles, strlen(roles)) == 0) {
		if (cmd != EVHTTP_REQ_GET || tok == NULL || strcmp(tok, IMDS_TOKEN) != 0) {
			k->untokened++;
			fake_reply(req, 401, NULL, "");
		} else if (strcmp(uri + strlen(roles), "") == 0)
			fake_reply(req, k->no_role ? 404 : 200, "text/plain",
			           k->no_role ? "" : "test-role\nsecond-role\n");
		else if (strcmp(uri + strlen(roles), "test-role") == 0) {
			body = fake_json(k, "Token");
			fake_reply(req, 200, "text/plain", body);
			free(body);
		} else
			fake_reply(req, 404, NULL, "");
	} else if (strcmp(uri, "/container") == 0) {
		const char *auth = evhttp_find_header(in, "Authorization");
		snprintf(k->auth, sizeof(k->auth), "%s", auth ? auth : "");
		if (k->want_auth && strcmp(k->auth, k->want_auth) != 0) {
			fake_reply(req, 401, NULL, "{\"message\": \"bad token\"}");
			return;
		}
		body = fake_json(k, "Token");
		fake_reply(req, 200, "application/json", body);
		free(body);
	} else if (strcmp(uri, "/sts") == 0 && cmd == EVHTTP_REQ_POST) {
		struct evbuffer *b = evhttp_request_get_input_buffer(req);
		size_t n = evbuffer_get_length(b);
		char exp[32];
		if (n >= sizeof(k->form))
			n = sizeof(k->form) - 1;
		evbuffer_copyout(b, k->form, n);
		k->form[n] = '\0';
		if (k->sts_error) {
			fake_reply(req, 403, "text/xml", STS_ERR);
			return;
		}
		k->issued++;
		fake_iso(time(NULL) + (k->ttl ? k->ttl : 3600), exp);
		body = xasprintf(
		    "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult>"
		    "<Credentials><AccessKeyId>ASIASTS%04d</AccessKeyId>"
		    "<SecretAccessKey>stsSecret</SecretAccessKey>"
		    "<SessionToken>stsToken</SessionToken>"
		    "<Expiration>%s</Expiration></Credentials>"
		    "</AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>",
		    k->issued, exp);
		fake_reply(req, 200, "text/xml", body);
		free(body);
	} else
		fake_reply(req, 404, NULL, "");
}

static void fake_start(struct fx *f)
{
	struct evhttp_bound_socket *s;
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);

	f->fake.http = evhttp_new(f->base);
	evhttp_set_allowed_methods(f->fake.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT);
	evhttp_set_gencb(f->fake.http, fake_cb, &f->fake);
	if ((s = evhttp_bind_socket_with_handle(f->fake.http, "127.0.0.1", 0)) == NULL ||
	    getsockname(evhttp_bound_socket_get_fd(s), (struct sockaddr *)&sin, &len) == -1) {
		perror("fake server");
		exit(2);
	}
	snprintf(f->fake.url, sizeof(f->fake.url), "http://127.0.0.1:%d", ntohs(sin.sin_port));
}

/* A port nothing listens on (bound, never listened, then closed). */
static int dead_port(void)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd == -1 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == -1 ||
	    getsockname(fd, (struct sockaddr *)&sin, &len) == -1)
		exit(2);
	close(fd);
	return ntohs(sin.sin_port);
}

static void fx_init(struct fx *f)
{
	const char *tmp = getenv("TMPDIR");
	size_t i;

	memset(f, 0, sizeof(*f));
	for (i = 0; i < sizeof(scrubbed) / sizeof(scrubbed[0]); i++)
		unsetenv(scrubbed[i]);
	snprintf(f->dir, sizeof(f->dir), "%s/test_creds.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (mkdtemp(f->dir) == NULL) {
		perror(f->dir);
		exit(2);
	}
	setenv("HOME", f->dir, 1);
	setenv("AWS_EC2_METADATA_DISABLED", "true", 1);
	f->base = event_base_new();
	f->http = ses_http_new(f->base, NULL, 4);
	fake_start(f);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void fx_done(struct fx *f)
{
	ses_creds_free(f->creds);
	f->creds = NULL;
	if (f->fake.http)
		evhttp_free(f->fake.http);
	ses_http_free(f->http);
	event_base_free(f->base);
	nftw(f->dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

static void on_ready(void *arg, int ok, const char *err)
{
	struct fx *f = arg;

	f->ready = 1;
	f->ok = ok;
	snprintf(f->err, sizeof(f->err), "%s", err ? err : "");
	event_base_loopbreak(f->base);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
}

/* Run the loop until pred(f) holds or SECONDS pass; returns pred(f). */
static int run_until(struct fx *f, int (*pred)(struct fx *), double seconds)
{
	struct timeval tv = {0, 20000};
	struct event *tick = event_new(f->base, -1, EV_PERSIST, on_tick, NULL);
	double end = util_monotime() + seconds;

	event_add(tick, &tv);
	while (!pred(f) && util_monotime() < end)
		event_base_loop(f->base, EVLOOP_ONCE);
	event_free(tick);
	return pred(f);
}

static int is_ready(struct fx *f)
{
	return f->ready;
}

/* A fresh ses_creds (the previous one freed), started and resolved. */
static int fx_resolve(struct fx *f)
{
	ses_creds_free(f->creds);
	f->ready = f->ok = 0;
	f->err[0] = '\0';
	f->creds = ses_creds_new(f->base, f->http, &f->conf);
	ses_creds_start(f->creds, on_ready, f);
	if (f->ready) {
		fprintf(stderr, "ready() ran inside ses_creds_start()\n");
		return -1;
	}
	if (!run_until(f, is_ready, 10)) {
		fprintf(stderr, "ready() did not run within 10 s\n");
		return -1;
	}
	return f->ok;
}

static const char *akid(struct fx *f)
{
	const struct sigv4_credentials *c = ses_creds_get(f->creds);
	return c ? c->access_key_id : NULL;
}

/* ---- 3. the chain ---------------------------------------------------------- */

/* Every source configured at once; take the winner away, the next one wins. */
static void test_precedence(void)
{
	struct fx f;
	char *path, *want;

	fx_init(&f);
	f.fake.ttl = 3600;
	f.conf.access_key_id = "AKIACONF";
	f.conf.secret_access_key = "confsecret";
	setenv("AWS_ACCESS_KEY_ID", "AKIAENV", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "envsecret", 1);
	write_file(&f, ".aws/credentials",
	           "[default]\naws_access_key_id = AKIAFILE\n"
	           "aws_secret_access_key = filesecret\n");
	write_file(&f, "token", WEB_TOKEN "\n");
	setenv("AWS_WEB_IDENTITY_TOKEN_FILE", path = in_dir(&f, "token"), 1);
	free(path);
	setenv("AWS_ROLE_ARN", ROLE_ARN, 1);
	setenv("AWS_ENDPOINT_URL_STS", want = xasprintf("%s/sts", f.fake.url), 1);
	free(want);
	setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", want = xasprintf("%s/container", f.fake.url),
	       1);
	free(want);
	setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f.fake.url, 1);
	unsetenv("AWS_EC2_METADATA_DISABLED");

	CHECK_INT(fx_resolve(&f), 1);
	CHECK_STR(ses_creds_source(f.creds), "config file");
	CHECK_STR(akid(&f), "AKIACONF");

	f.conf.access_key_id = f.conf.secret_access_key = NULL;
	CHECK_INT(fx_resolve(&f), 1);
	CHECK_STR(ses_creds_source(f.creds), "environment");
	CHECK_STR(akid(&f), "AKIAENV");

	unsetenv("AWS_ACCESS_KEY_ID");
	unsetenv("AWS_SECRET_ACCESS_KEY");
	CHECK_INT(fx_resolve(&f), 1);
	want = xasprintf("profile default (%s/.aws/credentials)", f.dir);
	CHECK_STR(ses_creds_source(f.creds), want);
	free(want);
	CHECK_STR(akid(&f), "AKIAFILE");

	write_file(&f, ".aws/credentials", "[other]\naws_access_key_id = AKIAFILE\n");
	CHECK_INT(fx_resolve(&f), 1);
	CHECK_STR(ses_creds_source(f.creds), "web identity (" ROLE_ARN ")");
	CHECK_STR(akid(&f), "ASIASTS0001");

	unsetenv("AWS_ROLE_ARN"); /* half a web identity is none */
	CHECK_INT(fx_resolve(&f), 1);
	CHECK_STR(ses_creds_source(f.creds), "container endpoint");
	CHECK_STR(akid(&f), "ASIAFAKE0002");

	unsetenv("AWS_CONTAINER_CREDENTIALS_FULL_URI");
	CHECK_INT(fx_resolve(&f), 1);
	CHECK_STR(ses_creds_source(f.creds), "EC2 instance metadata (IMDSv2, role test-role)");
	CHECK_STR(akid(&f), "ASIAFAKE0003");

	setenv("AWS_EC2_METADATA_DISABLED", "TRUE", 1);
	CHECK_INT(fx_resolve(&f), 0);
	CHECK(strncmp(f.err, NOTHING_FOUND, strlen(NOTHING_FOUND)) == 0);
	CHECK(ses_creds_get(f.creds) == NULL);
	CHECK_STR(ses_creds_source(f.creds), "none");
	fx_done(&f);
}

static void test_env_keys(void)
{
	struct fx f;

	fx_init(&f);
	setenv("AWS_ACCESS_KEY_ID", "AKIAENV", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "envsecret", 1);
	CHECK_INT(fx_resolve(&f), 1);
	CHECK_INT(ses_creds_temporary(f.creds), 0);
	CHECK(ses_creds_get(f.creds)->session_token == NULL);
	CHECK_INT(ses_creds_expiration(f.creds), 0);
	CHECK_STR(ses_creds_get(f.creds)->secret_access_key, "envsecret");

	setenv("AWS_SESSION_TOKEN", "envtoken", 1);
	CHECK_INT(fx_resolve(&f), 1);
	CHECK_INT(ses_creds_temporary(f.creds), 1);
	CHECK_STR(ses_creds_get(f.creds)->session_token, "envtoken");

	unsetenv("AWS_SECRET_ACCESS_KEY");
	CHECK_INT(fx_resolve(&f), 0);
	CHECK(strstr(f.err, "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not") != NULL);

	/* half a key pair in the config file does not fall through to env */
	setenv("AWS_SECRET_ACCESS_KEY", "envsecret", 1);
	f.conf.access_key_id = "AKIACONF";
	CHECK_INT(fx_resolve(&f), 0);
	CHECK(strstr(f.err, "[ses] access_key_id and secret_access_key") != NULL);
	fx_done(&f);
}

/* Which profile, which file, which section; and the errors that say why. */
static void test_profiles(void)
{
	struct fx f;
	char *want;

	fx_init(&f);
	write_file(&f, ".aws/credentials",
	           "# keys\n[default]\naws_access_key_id=AKIADEF\naws_secret_access_key=d\n"
	           "[work]\n  aws_access_key_id = AKIAWORK   # inline\n"
	           "  aws_secret_access_key = w\n  aws_session_token = wt\n"
	           "[half]\naws_access_key_id = AKIAHALF\n");
	write_file(&f, ".aws/config",
	           "[default]\nregion = eu-west-1\n"
	           "[profile cfg]\naws_access_key_id = AKIACFG\naws_secret_access_key = c\n"
	           "[cfgbare]\naws_access_key_id = AKIABARE\naws_secret_access_key = c\n"
	           "[profile assume]\nrole_arn = " ROLE_ARN "\nsource_profile = default\n"
	           "[profile regiononly]\nregion = us-east-1\n");

	CHECK_INT(fx_resolve(&f), 1);
	CHECK_STR(akid(&f), "AKIADEF");

	setenv("AWS_PROFILE", "work", 1);
	CHECK_INT(fx_resolve(&f), 1);
	CHECK_STR(akid(&f), "AKIAWORK");
	CHECK_INT(ses_creds_temporary(f.creds), 1);
	want = xasprintf("profile work (%s/.aws/credentials)", f.dir);
	CHECK_STR(ses_creds_source(f.creds), want);
	free(want);

	f.conf.profile = "cfg"; /* [ses] profile beats AWS_PROFILE */
	CHECK_INT(fx_resolve(&f), 1);
	CHECK_STR(akid(&f), "AKIACFG");
	want = xasprintf("profile cfg (%s/.aws/config)", f.dir);
	CHECK_STR(ses_creds_source(f.creds), want);
	free(want);

	f.conf.profile = "cfgbare"; /* [cfgbare] in the config file is no profile */
	CHECK_INT(fx_resolve(&f), 0);
	CHECK(strstr(f.err, "profile cfgbare not found in ") != NULL);
	CHECK(strstr(f.err, "fix [ses] profile") != NULL);

	f.conf.profile = NULL;
	setenv("AWS_PROFILE", "nope", 1);
	CHECK_INT(fx_resolve(&f), 0);
	CHECK(strstr(f.err, "profile nope not found") != NULL);
	CHECK(strstr(f.err, "AWS_PROFILE") != NULL);

	setenv("AWS_PROFILE", "half", 1);
	CHECK_INT(fx_resolve(&f), 0);
	CHECK(strstr(f.err, "has aws_access_key_id but no aws_secret_access_key") != NULL);

	setenv("AWS_PROFILE", "assume", 1);
	CHECK_INT(fx_resolve(&f), 0);
	CHECK(strstr(f.err, "uses role_arn") != NULL);
	CHECK(strstr(f.err, "aws configure export-credentials --profile assume") != NULL);

	/* a profile without keys lets the chain go on */
	setenv("AWS_PROFILE", "regiononly", 1);
	CHECK_INT(fx_resolve(&f), 0);
	CHECK(strncmp(f.err, "no AWS credentials found", 24) == 0);

	/* the file variables replace the home directory's files */
	unsetenv("AWS_PROFILE");
	write_file(&f, "alt", "[default]\naws_access_key_id=AKIAALT\naws_secret_access_key=a\n");
	setenv("AWS_SHARED_CREDENTIALS_FILE", want = in_dir(&f, "alt"), 1);
	free(want);
	CHECK_INT(fx_resolve(&f), 1);
	CHECK_STR(akid(&f), "AKIAALT");

	/* unreadable: a directory where the file should be */
	setenv("AWS_SHARED_CREDENTIALS_FILE", f.dir, 1);
	CHECK_INT(fx_resolve(&f), 0);
	CHECK(strstr(f.err, "cannot read") != NULL);
	CHECK(strstr(f.err, "AWS_SHARED_CREDENTIALS_FILE") != NULL);
	fx_done(&f);
}

static const char PROC_OK[] =
    "#!/bin/sh\n"
    "n=$(cat \"$0.count\" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > \"$0.count\"\n"
    "exp=$(date -u -d \"+${TTL:-3600} seconds\" +%Y-%m-%dT%H:%M:%SZ)\n"
    "printf '{\"Version\": 1, \"AccessKeyId\": \"ASIAPROC%04d\", \"SecretAccessKey\": "
    "\"procsecret\", \"SessionToken\": \"proctoken\", \"Expiration\": \"%s\"}\\n' $n \"$exp\"\n";

static void set_process(struct fx *f, const char *script)
{
	char *text;

	write_file(f, "proc.sh", script);
	text = xasprintf("[default]\ncredential_process = /bin/sh %s/proc.sh --flag=1\n", f->dir);
	write_file(f, ".aws/config", text);
	free(text);
}

static void test_process(void)
{
	struct fx f;
	time_t exp;

	fx_init(&f);
	set_process(&f, PROC_OK);
	CHECK_INT(fx_resolve(&f), 1);
	CHECK_STR(ses_creds_source(f.creds), "credential_process (profile default)");
	CHECK_STR(akid(&f), "ASIAPROC0001");
	CHECK_STR(ses_creds_get(f.creds)->secret_access_key, "procsecret");
	CHECK_STR(ses_creds_get(f.creds)->session_token, "proctoken");
	CHECK_INT(ses_creds_temporary(f.creds), 1);
	exp = ses_creds_expiration(f.creds);
	CHECK(exp > time(NULL) + 3500 && exp <= time(NULL) + 3601);

	/* the credentials file's process beats the config file's */
	write_file(&f, ".aws/credentials", "[default]\ncredential_process = /bin/false\n");
	CHECK_INT(fx_resolve(&f), 0);
	CHECK(strstr(f.err, "credential_process (profile default): exited with status 1") != NULL);
	fx_done(&f);
}

struct process_row {
	const char *script;
	const char *err; /* substring */
};

static const struct process_row process_rows[] = {
    {"exit 3\n", "exited with status 3"},
    /* the shell credential_process runs in, signalled while it waits */
    {"kill -TERM $PPID; sleep 1\n", "killed by signal 15"},
    {"echo 'not json'\n", "printed no usable credentials (malformed JSON)"},
    {"echo '{\"Version\": 2, \"AccessKeyId\": \"A\", \"SecretAccessKey\": \"S\"}'\n",
     "\"Version\" must be the number 1"},
    {"echo '{\"Version\": \"1\", \"AccessKeyId\": \"A\", \"SecretAccessKey\": \"S\"}'\n",
     "\"Version\" must be the number 1"},
    {"echo '{\"Version\": 1, \"SecretAccessKey\": \"S\"}'\n", "\"AccessKeyId\": missing"},
    {"echo '{\"Version\": 1, \"AccessKeyId\": \"A\", \"SecretAccessKey\": 5}'\n",
     "\"SecretAccessKey\": not a string"},
    {"echo '{\"Version\": 1, \"AccessKeyId\": \"A B\", \"SecretAccessKey\": \"S\"}'\n",
     "blanks or non-ASCII"},
    {"echo '{\"Version\": 1, \"AccessKeyId\": \"A\", \"SecretAccessKey\": \"S\", "
     "\"Expiration\": \"tomorrow\"}'\n",
     "\"Expiration\" \"tomorrow\" is not an ISO 8601 time"},
    {"echo '{\"Version\": 1, \"AccessKeyId\": \"A\", \"SecretAccessKey\": \"S\", "
     "\"Expiration\": \"2001-01-01T00:00:00Z\"}'\n",
     "expired at 2001-01-01T00:00:00Z already"},
    {"head -c 70000 /dev/zero | tr '\\0' x\n", "printed more than 64 KiB"},
    {"yes\n", "printed more than 64 KiB"},
    {"", "printed no usable credentials (malformed JSON)"},
};

static void test_process_errors(void)
{
	struct fx f;
	size_t i;

	fx_init(&f);
	for (i = 0; i < sizeof(process_rows) / sizeof(process_rows[0]); i++) {
		set_process(&f, process_rows[i].script);
		if (fx_resolve(&f) != 0 || strstr(f.err, process_rows[i].err) == NULL ||
		    strncmp(f.err, "credential_process (profile default): ", 38) != 0) {
			fprintf(stderr, "FAIL process_errors: row %zu: ok=%d err=%s\n", i, f.ok,
			        f.err);
			unit_failed = 1;
		}
	}
	fx_done(&f);
}

/* Gone, or a zombie waiting for init (not ours to reap): dead either way. */
static int pid_dead(pid_t pid)
{
	char path[64], buf[256], *rp;
	FILE *fp;
	size_t n;

	if (kill(pid, 0) == -1 && errno == ESRCH)
		return 1;
	snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
	if ((fp = fopen(path, "r")) == NULL)
		return 1;
	n = fread(buf, 1, sizeof(buf) - 1, fp);
	fclose(fp);
	buf[n] = '\0';
	rp = strrchr(buf, ')');
	return rp && rp[1] == ' ' && rp[2] == 'Z';
}

static long read_pid(const struct fx *f, const char *name)
{
	char *path = in_dir(f, name);
	FILE *fp = fopen(path, "r");
	long pid = -1;

	if (fp) {
		if (fscanf(fp, "%ld", &pid) != 1)
			pid = -1;
		fclose(fp);
	}
	free(path);
	return pid;
}

static int pids_written(struct fx *f)
{
	return read_pid(f, "sh.pid") > 0 && read_pid(f, "bg.pid") > 0;
}

/* ses_creds_free() while the process hangs: the shell we started is killed
 * and reaped at once (no zombie of ours), what it started is killed with it
 * (same process group), and ready() never runs. */
static void test_process_killed_on_free(void)
{
	struct fx f;
	char *script;
	long sh, inner, bg;
	double t0;

	fx_init(&f);
	/* $PPID: the "/bin/sh -c" we spawned; $$: the script's own shell */
	script = xasprintf("echo $$ > %s/in.pid; echo $PPID > %s/sh.pid.tmp\n"
	                   "mv %s/sh.pid.tmp %s/sh.pid\n"
	                   "sleep 60 & echo $! > %s/bg.pid.tmp; mv %s/bg.pid.tmp %s/bg.pid\n"
	                   "wait\n",
	                   f.dir, f.dir, f.dir, f.dir, f.dir, f.dir, f.dir);
	set_process(&f, script);
	free(script);
	f.creds = ses_creds_new(f.base, f.http, &f.conf);
	ses_creds_start(f.creds, on_ready, &f);
	CHECK(run_until(&f, pids_written, 10));
	sh = read_pid(&f, "sh.pid");
	inner = read_pid(&f, "in.pid");
	bg = read_pid(&f, "bg.pid");
	CHECK(sh > 0 && inner > 0 && bg > 0);
	CHECK(!pid_dead((pid_t)sh) && !pid_dead((pid_t)inner) && !pid_dead((pid_t)bg));
	t0 = util_monotime();
	ses_creds_free(f.creds);
	f.creds = NULL;
	CHECK(util_monotime() - t0 < 2);
	CHECK(waitpid((pid_t)sh, NULL, WNOHANG) == -1 && errno == ECHILD);
	CHECK(pid_dead((pid_t)sh));
	t0 = util_monotime();
	while (!(pid_dead((pid_t)inner) && pid_dead((pid_t)bg)) && util_monotime() - t0 < 5)
		usleep(10000);
	CHECK(pid_dead((pid_t)inner));
	CHECK(pid_dead((pid_t)bg));
	CHECK_INT(f.ready, 0);
	fx_done(&f);
}

static int key_changed(struct fx *f)
{
	const char *k = akid(f);
	return k && strcmp(k, "ASIAPROC0001") != 0 && strcmp(k, "ASIAFAKE0001") != 0;
}

/* Short-lived keys from a process are refreshed from the same process. */
static void test_process_refresh(void)
{
	struct fx f;

	fx_init(&f);
	setenv("TTL", "3", 1);
	set_process(&f, PROC_OK);
	CHECK_INT(fx_resolve(&f), 1);
	CHECK_STR(akid(&f), "ASIAPROC0001");
	CHECK(run_until(&f, key_changed, 6));
	CHECK_STR(akid(&f), "ASIAPROC0002");
	CHECK_STR(ses_creds_source(f.creds), "credential_process (profile default)");
	unsetenv("TTL");
	fx_done(&f);
}

static void use_imds(struct fx *f)
{
	setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f->fake.url, 1);
	unsetenv("AWS_EC2_METADATA_DISABLED");
}

/* The token first, then the role, then its keys - each with the token. */
static void test_imds(void)
{
	struct fx f;
	char *ep;

	fx_init(&f);
	use_imds(&f);
	f.fake.ttl = 3600;
	CHECK_INT(fx_resolve(&f), 1);
	CHECK_STR(ses_creds_source(f.creds), "EC2 instance metadata (IMDSv2, role test-role)");
	CHECK_STR(akid(&f), "ASIAFAKE0001");
	CHECK_STR(ses_creds_get(f.creds)->secret_access_key, "fakeSecret0001/+x");
	CHECK_STR(ses_creds_get(f.creds)->session_token, "FakeToken0001");
	CHECK_INT(ses_creds_temporary(f.creds), 1);
	CHECK_INT(f.fake.token_puts, 1);
	CHECK_INT(f.fake.untokened, 0);

	/* a trailing slash on the endpoint is fine */
	setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", ep = xasprintf("%s/", f.fake.url), 1);
	free(ep);
	CHECK_INT(fx_resolve(&f), 1);
	CHECK_INT(f.fake.token_puts, 2);

	f.fake.no_role = 1;
	CHECK_INT(fx_resolve(&f), 0);
	CHECK(strncmp(f.err, "no AWS credentials found", 24) == 0);
	CHECK(strstr(f.err, "no IAM role is attached to this instance") != NULL);

	f.fake.no_role = 0;
	f.fake.fail = 1;
	CHECK_INT(fx_resolve(&f), 0);
	CHECK(strstr(f.err, "HTTP 500 for the session token") != NULL);

	/* nothing listening, as off EC2 */
	setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT",
	       ep = xasprintf("http://127.0.0.1:%d", dead_port()), 1);
	CHECK_INT(fx_resolve(&f), 0);
	CHECK(strncmp(f.err, "no AWS credentials found", 24) == 0);
	CHECK(strstr(f.err, ep) != NULL);
	free(ep);
	fx_done(&f);
}

static void test_imds_refresh(void)
{
	struct fx f;

	fx_init(&f);
	use_imds(&f);
	f.fake.ttl = 3;
	CHECK_INT(fx_resolve(&f), 1);
	CHECK_STR(akid(&f), "ASIAFAKE0001");
	CHECK(run_until(&f, key_changed, 6));
	CHECK_STR(akid(&f), "ASIAFAKE0002");
	CHECK_INT(f.fake.token_puts, 2);
	CHECK_INT(f.fake.untokened, 0);
	fx_done(&f);
}

static int creds_gone(struct fx *f)
{
	return ses_creds_get(f->creds) == NULL;
}

/* A failing refresh keeps the old key until it expires, then nothing; a
 * forced refresh brings keys back once the source answers again. */
static void test_refresh_failure(void)
{
	struct fx f;
	time_t exp;

	fx_init(&f);
	use_imds(&f);
	f.fake.ttl = 4;
	CHECK_INT(fx_resolve(&f), 1);
	exp = ses_creds_expiration(f.creds);
	f.fake.fail = 1;
	CHECK(!run_until(&f, creds_gone, (double)(exp - time(NULL)) - 1.2));
	CHECK_STR(akid(&f), "ASIAFAKE0001");
	CHECK(run_until(&f, creds_gone, 3));
	CHECK(time(NULL) >= exp);
	CHECK_STR(ses_creds_source(f.creds), "EC2 instance metadata (IMDSv2, role test-role)");
	f.fake.fail = 0;
	ses_creds_refresh(f.creds);
	CHECK(run_until(&f, key_changed, 3));
	CHECK_STR(akid(&f), "ASIAFAKE0002");
	fx_done(&f);
}

static void test_container(void)
{
	struct fx f;
	char *url, *path;

	fx_init(&f);
	f.fake.ttl = 3600;
	setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", url = xasprintf("%s/container", f.fake.url),
	       1);
	CHECK_INT(fx_resolve(&f), 1);
	CHECK_STR(ses_creds_source(f.creds), "container endpoint");
	CHECK_STR(akid(&f), "ASIAFAKE0001");
	CHECK_STR(f.fake.auth, "");

	setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "Basic envtoken", 1);
	CHECK_INT(fx_resolve(&f), 1);
	CHECK_STR(f.fake.auth, "Basic envtoken");

	/* the token file wins over the variable, and is read at each fetch */
	write_file(&f, "auth", "filetoken\n");
	setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", path = in_dir(&f, "auth"), 1);
	f.fake.want_auth = "filetoken";
	CHECK_INT(fx_resolve(&f), 1);
	CHECK_STR(f.fake.auth, "filetoken");

	f.fake.want_auth = "other";
	CHECK_INT(fx_resolve(&f), 0);
	CHECK(strstr(f.err, "container endpoint") != NULL);
	CHECK(strstr(f.err, url) != NULL);
	CHECK(strstr(f.err, "HTTP 401") != NULL);
	CHECK(strstr(f.err, "filetoken") == NULL);

	unlink(path);
	CHECK_INT(fx_resolve(&f), 0);
	CHECK(strstr(f.err, "cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") != NULL);
	unsetenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
	free(path);
	free(url);

	/* plain http only to loopback or the ECS/EKS agents */
	setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://example.com/creds", 1);
	CHECK_INT(fx_resolve(&f), 0);
	CHECK(strstr(f.err, "AWS_CONTAINER_CREDENTIALS_FULL_URI must be https") != NULL);
	setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1.example.com/", 1);
	CHECK_INT(fx_resolve(&f), 0);
	setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://user@127.0.0.1/", 1);
	CHECK_INT(fx_resolve(&f), 0);

	/* the relative form wins over the full one and must be a path */
	setenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "v2/credentials/x", 1);
	CHECK_INT(fx_resolve(&f), 0);
	CHECK(strstr(f.err, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI must start with /") != NULL);
	fx_done(&f);
}

/* Decode the fake's copy of the form and look one field up. */
static int form_has(struct fx *f, const char *name, const char *want)
{
	struct evkeyvalq q;
	const char *v;
	int ok;

	TAILQ_INIT(&q);
	if (evhttp_parse_query_str(f->fake.form, &q) == -1)
		return 0;
	v = evhttp_find_header(&q, name);
	ok = want ? v && strcmp(v, want) == 0 : v != NULL;
	evhttp_clear_headers(&q);
	return ok;
}

static void test_web_identity(void)
{
	struct fx f;
	char *path, *url;

	fx_init(&f);
	write_file(&f, "token", WEB_TOKEN "\n");
	setenv("AWS_WEB_IDENTITY_TOKEN_FILE", path = in_dir(&f, "token"), 1);
	setenv("AWS_ROLE_ARN", ROLE_ARN, 1);
	setenv("AWS_ROLE_SESSION_NAME", "relay-session", 1);
	setenv("AWS_ENDPOINT_URL_STS", url = xasprintf("%s/sts", f.fake.url), 1);
	CHECK_INT(fx_resolve(&f), 1);
	CHECK_STR(ses_creds_source(f.creds), "web identity (" ROLE_ARN ")");
	CHECK_STR(akid(&f), "ASIASTS0001");
	CHECK_STR(ses_creds_get(f.creds)->secret_access_key, "stsSecret");
	CHECK_STR(ses_creds_get(f.creds)->session_token, "stsToken");
	CHECK(ses_creds_expiration(f.creds) > time(NULL) + 3500);
	CHECK(form_has(&f, "Action", "AssumeRoleWithWebIdentity"));
	CHECK(form_has(&f, "Version", "2011-06-15"));
	CHECK(form_has(&f, "RoleArn", ROLE_ARN));
	CHECK(form_has(&f, "RoleSessionName", "relay-session"));
	CHECK(form_has(&f, "WebIdentityToken", WEB_TOKEN));

	unsetenv("AWS_ROLE_SESSION_NAME");
	CHECK_INT(fx_resolve(&f), 1);
	CHECK(strncmp(f.fake.form, "Action=AssumeRoleWithWebIdentity&", 33) == 0);
	CHECK(strstr(f.fake.form, "&RoleSessionName=sesrelay-1") != NULL);

	f.fake.sts_error = 1;
	CHECK_INT(fx_resolve(&f), 0);
	CHECK(strstr(f.err, "web identity (" ROLE_ARN "): STS AssumeRoleWithWebIdentity answered "
	                    "HTTP 403 AccessDenied: Not authorized <here>") != NULL);

	unlink(path);
	CHECK_INT(fx_resolve(&f), 0);
	CHECK(strstr(f.err, "cannot read AWS_WEB_IDENTITY_TOKEN_FILE") != NULL);
	write_file(&f, "token", "\n\n");
	CHECK_INT(fx_resolve(&f), 0);
	CHECK(strstr(f.err, "is empty") != NULL);
	free(path);
	free(url);
	fx_done(&f);
}

/* ready() may free the object; start() never calls it synchronously (which
 * fx_resolve checks for every source in the other cases). */
static void free_in_ready(void *arg, int ok, const char *err)
{
	struct fx *f = arg;

	f->ready = 1;
	f->ok = ok;
	ses_creds_free(f->creds);
	f->creds = NULL;
}

static void test_free_in_ready(void)
{
	struct fx f;

	fx_init(&f);
	setenv("AWS_ACCESS_KEY_ID", "AKIAENV", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "envsecret", 1);
	f.creds = ses_creds_new(f.base, f.http, &f.conf);
	ses_creds_start(f.creds, free_in_ready, &f);
	CHECK_INT(f.ready, 0);
	CHECK(run_until(&f, is_ready, 5));
	CHECK_INT(f.ok, 1);
	CHECK(f.creds == NULL);
	/* and with an HTTP fetch and a child in flight */
	f.creds = ses_creds_new(f.base, f.http, &f.conf);
	use_imds(&f);
	unsetenv("AWS_ACCESS_KEY_ID");
	unsetenv("AWS_SECRET_ACCESS_KEY");
	ses_creds_start(f.creds, on_ready, &f);
	CHECK_STR(ses_creds_source(f.creds), "none");
	ses_creds_free(f.creds);
	set_process(&f, "sleep 30\n");
	f.creds = ses_creds_new(f.base, f.http, &f.conf);
	ses_creds_start(f.creds, on_ready, &f);
	event_base_loop(f.base, EVLOOP_NONBLOCK);
	ses_creds_free(f.creds);
	f.creds = NULL;
	f.ready = 0;
	event_base_loop(f.base, EVLOOP_NONBLOCK);
	CHECK_INT(f.ready, 0);
	fx_done(&f);
}

/* Secrets never reach the log, at debug level, on success or failure. */
static void test_no_secrets_logged(void)
{
	static const char *const secrets[] = {"procsecret", "proctoken", "fakeSecret",
	                                      "FakeToken",  IMDS_TOKEN,  "envsecret"};
	struct fx f;
	char *logpath, *text;
	size_t len = 0, i;
	int fd, saved, e;

	fx_init(&f);
	logpath = in_dir(&f, "log");
	fflush(stderr);
	saved = dup(2);
	fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	dup2(fd, 2);
	close(fd);
	log_set_level(LOG_LEVEL_DEBUG);

	set_process(&f, PROC_OK);
	fx_resolve(&f);
	write_file(&f, ".aws/config", "[default]\nregion = x\n");
	use_imds(&f);
	f.fake.ttl = 2;
	fx_resolve(&f);
	run_until(&f, key_changed, 3); /* "refreshed" line */
	f.fake.fail = 1;
	ses_creds_refresh(f.creds);
	run_until(&f, creds_gone, 3); /* warning line */
	setenv("AWS_ACCESS_KEY_ID", "AKIAENV", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "envsecret", 1);
	fx_resolve(&f);

	log_set_level(LOG_LEVEL_INFO);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	{
		FILE *fp = fopen(logpath, "r");
		CHECK(fp != NULL);
		text = xcalloc(1, 1 << 20);
		len = fread(text, 1, (1 << 20) - 1, fp);
		fclose(fp);
	}
	free(logpath);
	e = 0;
	for (i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++)
		if (strstr(text, secrets[i])) {
			fprintf(stderr, "FAIL no_secrets_logged: \"%s\" in the log\n", secrets[i]);
			e = 1;
		}
	CHECK(len > 0);
	CHECK(strstr(text, "credentials from credential_process (profile default) (access key "
	                   "ASIA\xe2\x80\xa6") != NULL);
	CHECK(strstr(text, "credentials refreshed from EC2 instance metadata") != NULL);
	CHECK(strstr(text, "refresh from EC2 instance metadata (IMDSv2, role test-role) failed") !=
	      NULL);
	free(text);
	CHECK(!e);
	fx_done(&f);
}

static const struct unit_case cases[] = {
    {"profile_table", test_profile_table},
    {"json_table", test_json_table},
    {"json_caps", test_json_caps},
    {"xml_table", test_xml_table},
    {"time_table", test_time_table},
    {"precedence", test_precedence},
    {"env_keys", test_env_keys},
    {"profiles", test_profiles},
    {"process", test_process},
    {"process_errors", test_process_errors},
    {"process_killed_on_free", test_process_killed_on_free},
    {"process_refresh", test_process_refresh},
    {"imds", test_imds},
    {"imds_refresh", test_imds_refresh},
    {"refresh_failure", test_refresh_failure},
    {"container", test_container},
    {"web_identity", test_web_identity},
    {"free_in_ready", test_free_in_ready},
    {"no_secrets_logged", test_no_secrets_logged},
};

UNIT_MAIN(cases)
