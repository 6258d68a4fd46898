/*
 * test_sigv4.c - the SigV4 signer and the SES SMTP password, as scenarios.
 *
 * 1. Every case of AWS's SigV4 test suite (found through SESRELAY_SIGV4_SUITE),
 *    listed by name in SUITE_CASES so a case can never vanish silently: .req
 *    is parsed and signed, and the canonical request, string to sign and
 *    Authorization header must equal .creq, .sts and .authz byte for byte.
 * 2. botocore golden values for SES-shaped requests (BOTOCORE_CASES, produced
 *    by sigv4_botocore_check.py next to this file; rerun it to regenerate).
 * 3. Tables for the pieces: SMTP password vectors, streamed hashing, URI,
 *    query, header and path canonicalisation, dates, and hostile input that
 *    must be refused.
 *
 * The harness is unit.h's (CHECK*, "ok NAME" / "FAIL NAME: why", --list, one
 * NAME to run one case), with its own main() because suite cases carry an
 * argument, and a third verdict: "skip NAME: reason" for suite cases that are
 * broken or do not apply as shipped.  Skips are not failures.
 *
 * Test credentials only: the AWS documentation example keys.
 */
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <strings.h>
#include <sys/stat.h>

#include "ses/sigv4.h"
#include "ses/smtp_password.h"
#include "unit.h"

#define SUITE_AKID   "AKIDEXAMPLE"
#define SUITE_SECRET "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
#define SUITE_DATE   "20150830T123600Z"
#define SUITE_REGION "us-east-1"
#define SUITE_SVC    "service"
#define SUITE_SUBDIR "aws-sig-v4-test-suite/aws-sig-v4-test-suite"

/* The suite's example session token (post-sts-token/readme.txt). */
#define SIGV4_TEST_TOKEN                                                                           \
	"AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeM"       \
	"icRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phU"         \
	"ZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38"         \
	"xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQw"         \
	"j2ICCR/oLxBA=="

/* --- 1. the AWS SigV4 test suite --------------------------------------------- */

enum suite_quirk {
	QUIRK_NONE,
	/*
	 * post-x-www-form-urlencoded as shipped: .creq signs the request's
	 * Content-Length, but .sts and .authz were computed without it (their
	 * SignedHeaders is content-type;host;x-amz-date, and .sreq carries no
	 * Content-Length).  sha256(.creq) is not the hash in .sts, so no signer
	 * matches all three from one request.  We check .creq against the
	 * request as shipped and .sts/.authz against the request as .sreq sends
	 * it, i.e. without Content-Length; both must match exactly.
	 */
	QUIRK_STS_WITHOUT_CONTENT_LENGTH,
};

struct suite_case {
	const char *name; /* directory under the suite root; also the unit case name */
	const char *skip; /* why it is not run, or NULL */
	enum suite_quirk quirk;
};

#define SKIP_NORMALIZE                                                                             \
	"non-S3 path normalisation ('.', '..', '//') does not apply to SES's fixed paths"

static const struct suite_case SUITE_CASES[] = {
    {"get-header-key-duplicate", NULL, QUIRK_NONE},
    {"get-header-value-multiline",
     "folded header lines: botocore does not join them with ','; SES never sends them", QUIRK_NONE},
    {"get-header-value-order", NULL, QUIRK_NONE},
    {"get-header-value-trim", NULL, QUIRK_NONE},
    {"get-unreserved", NULL, QUIRK_NONE},
    {"get-utf8", NULL, QUIRK_NONE},
    {"get-vanilla", NULL, QUIRK_NONE},
    {"get-vanilla-empty-query-key", NULL, QUIRK_NONE},
    {"get-vanilla-query", NULL, QUIRK_NONE},
    {"get-vanilla-query-order-key", NULL, QUIRK_NONE},
    {"get-vanilla-query-order-key-case", NULL, QUIRK_NONE},
    {"get-vanilla-query-order-value", NULL, QUIRK_NONE},
    {"get-vanilla-query-unreserved", NULL, QUIRK_NONE},
    {"get-vanilla-utf8-query", NULL, QUIRK_NONE},
    {"normalize-path/get-relative", SKIP_NORMALIZE, QUIRK_NONE},
    {"normalize-path/get-relative-relative", SKIP_NORMALIZE, QUIRK_NONE},
    {"normalize-path/get-slash", SKIP_NORMALIZE, QUIRK_NONE},
    {"normalize-path/get-slash-dot-slash", SKIP_NORMALIZE, QUIRK_NONE},
    {"normalize-path/get-slash-pointless-dot", SKIP_NORMALIZE, QUIRK_NONE},
    {"normalize-path/get-slashes", SKIP_NORMALIZE, QUIRK_NONE},
    {"normalize-path/get-space", SKIP_NORMALIZE, QUIRK_NONE},
    {"post-header-key-case", NULL, QUIRK_NONE},
    {"post-header-key-sort", NULL, QUIRK_NONE},
    {"post-header-value-case", NULL, QUIRK_NONE},
    /* token added after signing: signed as is, with long-term-style credentials */
    {"post-sts-token/post-sts-header-after", NULL, QUIRK_NONE},
    /* token signed: credentials carry it and the request has the header */
    {"post-sts-token/post-sts-header-before", NULL, QUIRK_NONE},
    {"post-vanilla", NULL, QUIRK_NONE},
    {"post-vanilla-empty-query-value", NULL, QUIRK_NONE},
    {"post-vanilla-query", NULL, QUIRK_NONE},
    {"post-x-www-form-urlencoded", NULL, QUIRK_STS_WITHOUT_CONTENT_LENGTH},
    {"post-x-www-form-urlencoded-parameters",
     "broken as shipped: the hash in .sts is not sha256 of .creq, and .authz and .sreq "
     "list other signed headers than .creq",
     QUIRK_NONE},
};
#define NSUITE (sizeof(SUITE_CASES) / sizeof(SUITE_CASES[0]))

static char *xstrdup_test(const char *s)
{
	char *p = strdup(s);
	if (p == NULL)
		abort();
	return p;
}

static const char *suite_root(void)
{
	static const char *const fallback[] = {
	    "../shared/testdata/" SUITE_SUBDIR,
	    "/work/shared/testdata/" SUITE_SUBDIR,
	};
	const char *env = getenv("SESRELAY_SIGV4_SUITE");
	struct stat st;
	size_t i;

	if (env != NULL && *env != '\0')
		return env;
	for (i = 0; i < sizeof(fallback) / sizeof(fallback[0]); i++)
		if (stat(fallback[i], &st) == 0 && S_ISDIR(st.st_mode))
			return fallback[i];
	return NULL;
}

/* The whole file, NUL-terminated; NULL if it cannot be read. */
static char *slurp(const char *path, size_t *lenp)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t len = 0, cap = 0, n;

	if (f == NULL)
		return NULL;
	do {
		if (cap - len < 4096) {
			char *nb = realloc(buf, cap += 65536);
			if (nb == NULL)
				abort();
			buf = nb;
		}
		n = fread(buf + len, 1, cap - len - 1, f);
		len += n;
	} while (n > 0);
	if (ferror(f)) {
		fclose(f);
		free(buf);
		return NULL;
	}
	fclose(f);
	if (buf == NULL && (buf = malloc(1)) == NULL)
		abort();
	buf[len] = '\0';
	if (lenp != NULL)
		*lenp = len;
	return buf;
}

/* "<root>/<name>/<base of name>.<ext>", read whole. */
static char *suite_file(const char *root, const char *name, const char *ext)
{
	const char *base = strrchr(name, '/');
	char path[4096];
	int n;

	base = base ? base + 1 : name;
	n = snprintf(path, sizeof(path), "%s/%s/%s.%s", root, name, base, ext);
	if (n < 0 || (size_t)n >= sizeof(path))
		return NULL;
	return slurp(path, NULL);
}

#define MAX_REQ_HEADERS 16

/* A .req file taken apart; every string points into text. */
struct raw_req {
	char *text;
	char *method, *path, *query;
	struct sigv4_header headers[MAX_REQ_HEADERS];
	char *folded[MAX_REQ_HEADERS]; /* values rebuilt from folded lines */
	size_t nheaders;
	const char *body;
	size_t bodylen;
};

static void raw_req_free(struct raw_req *r)
{
	size_t i;

	for (i = 0; i < MAX_REQ_HEADERS; i++)
		free(r->folded[i]);
	free(r->text);
	memset(r, 0, sizeof(*r));
}

/* obs-fold: a continuation line joins the previous value with one space. */
static int fold_into(struct raw_req *r, const char *line)
{
	size_t k = r->nheaders - 1;
	const char *prev = r->headers[k].value;
	size_t n = strlen(prev) + 1 + strlen(line) + 1;
	char *v = malloc(n);

	if (v == NULL)
		abort();
	while (*line == ' ' || *line == '\t')
		line++;
	snprintf(v, n, "%s %s", prev, line);
	free(r->folded[k]);
	r->folded[k] = v;
	r->headers[k].value = v;
	return 0;
}

/*
 * "METHOD target HTTP/1.1", header lines, an empty line, the body.  The target
 * may contain spaces (normalize-path/get-space), so it runs from the first
 * space to the last one.  Returns NULL or what is wrong with the file.
 */
static const char *raw_req_parse(char *text, struct raw_req *r)
{
	char *line = text, *next, *sp, *lastsp, *q;

	memset(r, 0, sizeof(*r));
	r->text = text;
	next = strchr(line, '\n');
	if (next == NULL)
		return "no request line";
	*next++ = '\0';
	sp = strchr(line, ' ');
	lastsp = strrchr(line, ' ');
	if (sp == NULL || lastsp == sp)
		return "bad request line";
	*sp = '\0';
	*lastsp = '\0';
	r->method = line;
	r->path = sp + 1;
	if ((q = strchr(r->path, '?')) != NULL) {
		*q = '\0';
		r->query = q + 1;
	}
	for (line = next; line != NULL && *line != '\0'; line = next) {
		char *colon;
		if ((next = strchr(line, '\n')) != NULL)
			*next++ = '\0';
		if (*line == '\0') {
			r->body = next ? next : "";
			break;
		}
		if (*line == ' ' || *line == '\t') {
			if (r->nheaders == 0)
				return "continuation line before any header";
			fold_into(r, line);
			continue;
		}
		if ((colon = strchr(line, ':')) == NULL)
			return "header line without ':'";
		if (r->nheaders == MAX_REQ_HEADERS)
			return "too many headers";
		*colon = '\0';
		r->headers[r->nheaders].name = line;
		r->headers[r->nheaders].value = colon + 1;
		r->nheaders++;
	}
	if (r->body == NULL)
		r->body = "";
	r->bodylen = strlen(r->body);
	return NULL;
}

static const char *raw_req_header(const struct raw_req *r, const char *name)
{
	size_t i;

	for (i = 0; i < r->nheaders; i++)
		if (strcasecmp(r->headers[i].name, name) == 0)
			return r->headers[i].value;
	return NULL;
}

/* Sign a parsed .req the way the suite defines: its clock, region and keys. */
static int sign_raw(const struct raw_req *r, bool without_content_length, struct sigv4_signed *out)
{
	struct sigv4_header hdrs[MAX_REQ_HEADERS];
	struct sigv4_credentials creds = {SUITE_AKID, SUITE_SECRET, NULL};
	struct sigv4_request req = {0};
	char hash[SIGV4_HEX_SIZE];
	size_t i, n = 0;

	for (i = 0; i < r->nheaders; i++)
		if (!without_content_length ||
		    strcasecmp(r->headers[i].name, "content-length") != 0)
			hdrs[n++] = r->headers[i];
	/* A signed X-Amz-Security-Token means the credentials are temporary ones. */
	creds.session_token = raw_req_header(r, "x-amz-security-token");
	sigv4_sha256_hex(r->body, r->bodylen, hash);
	req.method = r->method;
	req.path = r->path;
	req.query = r->query;
	req.headers = hdrs;
	req.nheaders = n;
	req.payload_hash = hash;
	req.region = SUITE_REGION;
	req.service = SUITE_SVC;
	req.amz_date = SUITE_DATE;
	return sigv4_sign(&req, &creds, out);
}

/* Expected files, with at most one trailing newline forgiven. */
struct suite_expect {
	char *creq, *sts, *authz;
};

static void chomp(char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n > 0 && s[n - 1] == '\n')
		s[n - 1] = '\0';
}

struct suite_run {
	struct raw_req req;
	struct suite_expect want;
	struct sigv4_signed got, got2;
};

static void suite_run_free(struct suite_run *s)
{
	raw_req_free(&s->req);
	free(s->want.creq);
	free(s->want.sts);
	free(s->want.authz);
	sigv4_signed_free(&s->got);
	sigv4_signed_free(&s->got2);
}

static void suite_checks(const struct suite_case *c, struct suite_run *s)
{
	const char *root = suite_root(), *err;
	char *text, hash[SIGV4_HEX_SIZE];

	if (root == NULL) {
		fprintf(stderr, "FAIL %s: suite not found: set SESRELAY_SIGV4_SUITE\n", c->name);
		unit_failed = 1;
		return;
	}
	text = suite_file(root, c->name, "req");
	s->want.creq = suite_file(root, c->name, "creq");
	s->want.sts = suite_file(root, c->name, "sts");
	s->want.authz = suite_file(root, c->name, "authz");
	if (text == NULL || !s->want.creq || !s->want.sts || !s->want.authz)
		fprintf(stderr, "cannot read %s/%s/*.{req,creq,sts,authz}\n", root, c->name);
	CHECK(text != NULL && s->want.creq != NULL && s->want.sts != NULL && s->want.authz != NULL);
	chomp(s->want.creq);
	chomp(s->want.sts);
	chomp(s->want.authz);
	err = raw_req_parse(text, &s->req);
	CHECK_STR(err, NULL);

	CHECK_INT(sign_raw(&s->req, false, &s->got), 0);
	CHECK_STR(s->got.error, NULL);
	CHECK_STR(s->got.canonical_request, s->want.creq);
	if (c->quirk == QUIRK_STS_WITHOUT_CONTENT_LENGTH) {
		/* Still broken as described?  Else drop the quirk. */
		sigv4_sha256_hex(s->want.creq, strlen(s->want.creq), hash);
		CHECK(strstr(s->want.sts, hash) == NULL);
		CHECK_INT(sign_raw(&s->req, true, &s->got2), 0);
		CHECK_STR(s->got2.string_to_sign, s->want.sts);
		CHECK_STR(s->got2.authorization, s->want.authz);
		return;
	}
	CHECK_STR(s->got.string_to_sign, s->want.sts);
	CHECK_STR(s->got.authorization, s->want.authz);
}

static void run_suite_case(const void *arg)
{
	struct suite_run s;

	memset(&s, 0, sizeof(s));
	suite_checks(arg, &s);
	suite_run_free(&s);
}

/* Every .req under root, as "dir" or "dir/sub" names, so SUITE_CASES stays whole. */
static int scan_suite(const char *root, const char *rel, char **names, size_t *n, size_t max)
{
	char path[4096];
	DIR *d;
	struct dirent *e;

	snprintf(path, sizeof(path), "%s%s%s", root, *rel ? "/" : "", rel);
	if ((d = opendir(path)) == NULL)
		return -1;
	while ((e = readdir(d)) != NULL) {
		char sub[1024];
		size_t len = strlen(e->d_name);
		if (e->d_name[0] == '.')
			continue;
		if (len > 4 && strcmp(e->d_name + len - 4, ".req") == 0 && *rel != '\0') {
			if (*n < max)
				names[(*n)++] = xstrdup_test(rel);
			continue;
		}
		snprintf(sub, sizeof(sub), "%s%s%s", rel, *rel ? "/" : "", e->d_name);
		snprintf(path, sizeof(path), "%s/%s", root, sub);
		struct stat st;
		if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
			scan_suite(root, sub, names, n, max);
	}
	closedir(d);
	return 0;
}

static bool in_table(const char *name)
{
	size_t i;

	for (i = 0; i < NSUITE; i++)
		if (strcmp(SUITE_CASES[i].name, name) == 0)
			return true;
	return false;
}

static void inventory_checks(char **found, size_t *nfound)
{
	const char *root = suite_root();
	size_t i, j;

	CHECK(root != NULL);
	CHECK_INT(scan_suite(root, "", found, nfound, 2 * NSUITE), 0);
	for (i = 0; i < *nfound; i++) {
		if (!in_table(found[i]))
			fprintf(stderr, "suite case %s is missing from SUITE_CASES\n", found[i]);
		CHECK(in_table(found[i]));
	}
	for (i = 0; i < NSUITE; i++) {
		for (j = 0; j < *nfound; j++)
			if (strcmp(found[j], SUITE_CASES[i].name) == 0)
				break;
		if (j == *nfound)
			fprintf(stderr, "SUITE_CASES lists %s, not in the suite\n",
			        SUITE_CASES[i].name);
		CHECK(j < *nfound);
	}
	CHECK_INT(*nfound, NSUITE);
}

static void test_suite_inventory(const void *arg)
{
	char *found[2 * NSUITE];
	size_t n = 0, i;

	inventory_checks(found, &n);
	for (i = 0; i < n; i++)
		free(found[i]);
}

/* --- 2. botocore golden values ------------------------------------------------ */

#define BOTOCORE_REGION "us-west-2"

struct botocore_case {
	const char *name, *service;
	int token; /* 1: temporary credentials with SIGV4_TEST_TOKEN */
	const char *method, *path, *query;
	struct sigv4_header headers[6];
	const char *body, *creq, *sts, *authz;
};

/*
 * BEGIN generated: /usr/bin/python3 tests/unit/sigv4_botocore_check.py --c
 * (botocore 1.29.27; paste the output over these rows and clang-format).
 */
static const struct botocore_case BOTOCORE_CASES[] = {
    {
        .name = "botocore-sesv2-send-email",
        .service = "ses",
        .token = 0,
        .method = "POST",
        .path = "/v2/email/outbound-emails",
        .query = "",
        .headers =
            {
                {"content-type", "application/json"},
                {"host", "email.us-west-2.amazonaws.com"},
                {"x-amz-date", "20150830T123600Z"},
            },
        .body = "{\"FromEmailAddress\": \"a@example.com\", "
                "\"Destination\": {\"ToAddresses\": [\"b@example.net\"]}, "
                "\"Content\": {\"Raw\": {\"Data\": "
                "\"RnJvbTogYUBleGFtcGxlLmNvbQ0KVG86IGJAZXhhbXBsZS5uZXQ"
                "NClN1YmplY3Q6IGhpDQoNCmhlbGxvDQo=\"}}, "
                "\"ConfigurationSetName\": \"relay\"}",
        .creq = "POST\n"
                "/v2/email/outbound-emails\n"
                "\n"
                "content-type:application/json\n"
                "host:email.us-west-2.amazonaws.com\n"
                "x-amz-date:20150830T123600Z\n"
                "\n"
                "content-type;host;x-amz-date\n"
                "1d85d4d60d29e4252693e81fdae12b44ae251100495e03834c9bbd0997d74784",
        .sts = "AWS4-HMAC-SHA256\n"
               "20150830T123600Z\n"
               "20150830/us-west-2/ses/aws4_request\n"
               "cf84f966a49d3f9837b01c0c4a69f4bbbc13ed595c068e091bf666077bad1506",
        .authz = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-west-2/ses/aws4_request, "
                 "SignedHeaders=content-type;host;x-amz-date, "
                 "Signature=0c0fe29f5ed69104db61d8b819bf368284bdba1d408e46d53a8cc224f51b1b5f",
    },
    {
        .name = "botocore-sesv2-send-email-token",
        .service = "ses",
        .token = 1,
        .method = "POST",
        .path = "/v2/email/outbound-emails",
        .query = "",
        .headers =
            {
                {"content-type", "application/json"},
                {"host", "email.us-west-2.amazonaws.com"},
                {"x-amz-date", "20150830T123600Z"},
                {"x-amz-security-token", SIGV4_TEST_TOKEN},
            },
        .body = "{\"FromEmailAddress\": \"a@example.com\", "
                "\"Destination\": {\"ToAddresses\": [\"b@example.net\"]}, "
                "\"Content\": {\"Raw\": {\"Data\": "
                "\"RnJvbTogYUBleGFtcGxlLmNvbQ0KVG86IGJAZXhhbXBsZS5uZXQ"
                "NClN1YmplY3Q6IGhpDQoNCmhlbGxvDQo=\"}}, "
                "\"ConfigurationSetName\": \"relay\"}",
        .creq = "POST\n"
                "/v2/email/outbound-emails\n"
                "\n"
                "content-type:application/json\n"
                "host:email.us-west-2.amazonaws.com\n"
                "x-amz-date:20150830T123600Z\n"
                "x-amz-security-token:" SIGV4_TEST_TOKEN "\n"
                "\n"
                "content-type;host;x-amz-date;x-amz-security-token\n"
                "1d85d4d60d29e4252693e81fdae12b44ae251100495e03834c9bbd0997d74784",
        .sts = "AWS4-HMAC-SHA256\n"
               "20150830T123600Z\n"
               "20150830/us-west-2/ses/aws4_request\n"
               "69c1e05443b8fd6e868499741da4cf2bff1617e00c31eb70c06f4141d2873e3c",
        .authz = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-west-2/ses/aws4_request, "
                 "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, "
                 "Signature=c40a65e343977275e233fbbafa67b4770eca1628a9c92c1a2412e055dfdab3a5",
    },
    {
        .name = "botocore-sesv2-get-identity",
        .service = "ses",
        .token = 0,
        .method = "GET",
        .path = "/v2/email/identities/user%2Btag%40example.com",
        .query = "",
        .headers =
            {
                {"host", "email.us-west-2.amazonaws.com"},
                {"x-amz-date", "20150830T123600Z"},
            },
        .body = "",
        .creq = "GET\n"
                "/v2/email/identities/user%252Btag%2540example.com\n"
                "\n"
                "host:email.us-west-2.amazonaws.com\n"
                "x-amz-date:20150830T123600Z\n"
                "\n"
                "host;x-amz-date\n"
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        .sts = "AWS4-HMAC-SHA256\n"
               "20150830T123600Z\n"
               "20150830/us-west-2/ses/aws4_request\n"
               "0b16439bb05be88c8e17ebce71a45632efaea13c0b1ec49d4c6429c4000544d8",
        .authz = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-west-2/ses/aws4_request, "
                 "SignedHeaders=host;x-amz-date, "
                 "Signature=638fcbc23bcf5a6928df6f9e10676f5cca1a6bf62f0a74c05a5ba1228a5c71ac",
    },
    {
        .name = "botocore-sesv2-list-identities",
        .service = "ses",
        .token = 0,
        .method = "GET",
        .path = "/v2/email/identities",
        .query = "PageSize=10&NextToken=a%2Bb%2Fc%3Dd%20e",
        .headers =
            {
                {"host", "email.us-west-2.amazonaws.com"},
                {"x-amz-date", "20150830T123600Z"},
            },
        .body = "",
        .creq = "GET\n"
                "/v2/email/identities\n"
                "NextToken=a%2Bb%2Fc%3Dd%20e&PageSize=10\n"
                "host:email.us-west-2.amazonaws.com\n"
                "x-amz-date:20150830T123600Z\n"
                "\n"
                "host;x-amz-date\n"
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        .sts = "AWS4-HMAC-SHA256\n"
               "20150830T123600Z\n"
               "20150830/us-west-2/ses/aws4_request\n"
               "3a4c10dd33e96a23953d3c7cae59e885fcd0e17493c7cace6704942298795c01",
        .authz = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-west-2/ses/aws4_request, "
                 "SignedHeaders=host;x-amz-date, "
                 "Signature=d1d65bd53b918f76c8614247a1413c31077c505c166b55b372b7f2df8af5fc17",
    },
    {
        .name = "botocore-ses-send-raw-email",
        .service = "ses",
        .token = 1,
        .method = "POST",
        .path = "/",
        .query = "",
        .headers =
            {
                {"content-type", "application/x-www-form-urlencoded; charset=utf-8"},
                {"host", "email.us-west-2.amazonaws.com"},
                {"x-amz-date", "20150830T123600Z"},
                {"x-amz-security-token", SIGV4_TEST_TOKEN},
            },
        .body = "Action=SendRawEmail&Version=2010-12-01&Source=a%40example.com&Destinations.membe"
                "r.1=b%40example.net&RawMessage.Data=RnJvbTogYUBleGFtcGxlLmNvbQ0KVG86IGJAZXhhbXBs"
                "ZS5uZXQNClN1YmplY3Q6IGhpDQoNCmhlbGxvDQo%3D",
        .creq = "POST\n"
                "/\n"
                "\n"
                "content-type:application/x-www-form-urlencoded; charset=utf-8\n"
                "host:email.us-west-2.amazonaws.com\n"
                "x-amz-date:20150830T123600Z\n"
                "x-amz-security-token:" SIGV4_TEST_TOKEN "\n"
                "\n"
                "content-type;host;x-amz-date;x-amz-security-token\n"
                "67b56c0724df41fc6855ad34cb9dfecb4652e382cb3299d1be045579142838e1",
        .sts = "AWS4-HMAC-SHA256\n"
               "20150830T123600Z\n"
               "20150830/us-west-2/ses/aws4_request\n"
               "91a7235d535d61f531f271097469ba838cb576e858c0b8ea4a6053479e29e0f7",
        .authz = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-west-2/ses/aws4_request, "
                 "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, "
                 "Signature=13489c75dc6de22bfeb5f21ee19fd4b4f6f0a5a4f7060748b15ce9894989264f",
    },
};
/* END generated */
#define NBOTOCORE (sizeof(BOTOCORE_CASES) / sizeof(BOTOCORE_CASES[0]))

static void botocore_checks(const struct botocore_case *c, struct sigv4_signed *got)
{
	struct sigv4_credentials creds = {SUITE_AKID, SUITE_SECRET, NULL};
	struct sigv4_request req = {0};
	struct sigv4_sha256 *h = sigv4_sha256_new();
	char hash[SIGV4_HEX_SIZE];
	size_t len = strlen(c->body), off;

	/* As the SES client will: the body hashed in pieces while it streams. */
	for (off = 0; off < len; off += 17)
		sigv4_sha256_update(h, c->body + off, len - off < 17 ? len - off : 17);
	sigv4_sha256_final(h, hash);
	sigv4_sha256_free(h);
	if (c->token)
		creds.session_token = SIGV4_TEST_TOKEN;
	req.method = c->method;
	req.path = c->path;
	req.query = c->query;
	req.headers = c->headers;
	while (req.nheaders < 6 && c->headers[req.nheaders].name != NULL)
		req.nheaders++;
	req.payload_hash = hash;
	req.region = BOTOCORE_REGION;
	req.service = c->service;
	req.amz_date = SUITE_DATE;
	CHECK_INT(sigv4_sign(&req, &creds, got), 0);
	CHECK_STR(got->canonical_request, c->creq);
	CHECK_STR(got->string_to_sign, c->sts);
	CHECK_STR(got->authorization, c->authz);
}

static void run_botocore_case(const void *arg)
{
	struct sigv4_signed got;

	memset(&got, 0, sizeof(got));
	botocore_checks(arg, &got);
	sigv4_signed_free(&got);
}

/* --- 3. tables ---------------------------------------------------------------- */

static const struct {
	const char *secret, *region, *password;
} SMTP_PASSWORDS[] = {
    /* published in the aws-sdk-php tests */
    {"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "us-east-2",
     "BMPPgbAHoFVbze1Ud0oA5uNdXRwUXUZ+qOwphGJbl/cS"},
    /* computed with Python's hmac/hashlib/base64, independently of this code */
    {"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "eu-west-1",
     "BMW5RDrXmmVs0lV7GpI4oLkHXpZ4stDsk6q91z1g38Pk"},
    {"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "us-west-2",
     "BF2PynzbSCAjX08zhZZnP/kW+T9P5zs/1Er0pi5vTEmd"},
};

static void test_smtp_password(const void *arg)
{
	char out[SMTP_PASSWORD_SIZE];
	size_t i;

	for (i = 0; i < sizeof(SMTP_PASSWORDS) / sizeof(SMTP_PASSWORDS[0]); i++) {
		memset(out, 'x', sizeof(out));
		CHECK_INT(smtp_password_derive(SMTP_PASSWORDS[i].secret, SMTP_PASSWORDS[i].region,
		                               out, sizeof(out)),
		          0);
		CHECK_STR(out, SMTP_PASSWORDS[i].password);
	}
}

static void test_smtp_password_refuses(const void *arg)
{
	char out[SMTP_PASSWORD_SIZE + 8];
	const char *secret = SMTP_PASSWORDS[0].secret;

	CHECK_INT(smtp_password_derive(secret, "us-east-2", out, SMTP_PASSWORD_SIZE - 1), -1);
	CHECK_INT(smtp_password_derive("", "us-east-2", out, sizeof(out)), -1);
	CHECK_INT(smtp_password_derive(NULL, "us-east-2", out, sizeof(out)), -1);
	CHECK_INT(smtp_password_derive(secret, "", out, sizeof(out)), -1);
	CHECK_INT(smtp_password_derive(secret, NULL, out, sizeof(out)), -1);
	CHECK_INT(smtp_password_derive(secret, "us-east-2/x", out, sizeof(out)), -1);
	CHECK_INT(smtp_password_derive(secret, "US-EAST-2", out, sizeof(out)), -1);
	CHECK_INT(smtp_password_derive(secret, "us-east-2", NULL, sizeof(out)), -1);
	CHECK_INT(smtp_password_derive(secret, "us-east-2", out, SMTP_PASSWORD_SIZE), 0);
	CHECK_INT(strlen(out), SMTP_PASSWORD_SIZE - 1);
}

/* The AWS documentation's key-derivation example (IAM, 2012-02-15). */
static void test_signing_key(const void *arg)
{
	unsigned char key[SIGV4_MAC_SIZE];
	char hex[SIGV4_HEX_SIZE];
	size_t i;

	sigv4_signing_key(SUITE_SECRET, "20120215", "us-east-1", "iam", key);
	for (i = 0; i < sizeof(key); i++)
		snprintf(hex + 2 * i, 3, "%02x", key[i]);
	CHECK_STR(hex, "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d");
}

static void test_sha256_vectors(const void *arg)
{
	struct sigv4_sha256 *h;
	char hex[SIGV4_HEX_SIZE];

	sigv4_sha256_hex("", 0, hex);
	CHECK_STR(hex, SIGV4_EMPTY_SHA256);
	sigv4_sha256_hex(NULL, 0, hex);
	CHECK_STR(hex, SIGV4_EMPTY_SHA256);
	sigv4_sha256_hex("abc", 3, hex);
	CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	h = sigv4_sha256_new();
	sigv4_sha256_final(h, hex);
	sigv4_sha256_free(h);
	CHECK_STR(hex, SIGV4_EMPTY_SHA256);
	sigv4_sha256_free(NULL);
}

/* 1 MiB + 3 in pieces of 1..4099 bytes (and empty ones) hashes as one piece. */
static void test_sha256_streamed(const void *arg)
{
	size_t len = (1u << 20) + 3, off = 0, step = 0;
	unsigned char *body = malloc(len);
	uint32_t x = 2463534242u;
	struct sigv4_sha256 *h;
	char one[SIGV4_HEX_SIZE], streamed[SIGV4_HEX_SIZE];
	size_t i;

	CHECK(body != NULL);
	for (i = 0; i < len; i++) {
		x ^= x << 13, x ^= x >> 17, x ^= x << 5;
		body[i] = (unsigned char)x;
	}
	sigv4_sha256_hex(body, len, one);
	h = sigv4_sha256_new();
	while (off < len) {
		size_t n = (step * 977 + 1) % 4099 + 1;
		if (n > len - off)
			n = len - off;
		sigv4_sha256_update(h, body + off, n);
		sigv4_sha256_update(h, body + off, 0);
		off += n;
		step++;
	}
	sigv4_sha256_final(h, streamed);
	sigv4_sha256_free(h);
	free(body);
	CHECK(step > 100);
	CHECK_STR(streamed, one);
}

static const struct {
	const char *in;
	bool keep_slash;
	const char *want;
} URI_ENCODE[] = {
    {"-._~AZaz09", false, "-._~AZaz09"},
    {"user+tag@example.com", false, "user%2Btag%40example.com"},
    {"a/b c", false, "a%2Fb%20c"},
    {"/a/b c/", true, "/a/b%20c/"},
    {"%", false, "%25"},
    {"\xe1\x88\xb4", false, "%E1%88%B4"},
    {"!*'();:=&$,?#[]", false, "%21%2A%27%28%29%3B%3A%3D%26%24%2C%3F%23%5B%5D"},
    {"", false, ""},
};

static void test_uri_encode(const void *arg)
{
	size_t i;

	for (i = 0; i < sizeof(URI_ENCODE) / sizeof(URI_ENCODE[0]); i++) {
		char *got = sigv4_uri_encode(URI_ENCODE[i].in, strlen(URI_ENCODE[i].in),
		                             URI_ENCODE[i].keep_slash);
		int same = strcmp(got, URI_ENCODE[i].want) == 0;
		if (!same)
			fprintf(stderr, "uri_encode(\"%s\") = \"%s\"\n", URI_ENCODE[i].in, got);
		free(got);
		CHECK(same);
	}
	{
		char *got = sigv4_uri_encode("a\0b", 3, false);
		int same = strcmp(got, "a%00b") == 0;
		free(got);
		CHECK(same);
	}
}

/* Sign a minimal request; the caller may override fields through *req. */
static void base_request(struct sigv4_request *req, struct sigv4_header *hdrs)
{
	hdrs[0].name = "Host";
	hdrs[0].value = "email.us-west-2.amazonaws.com";
	hdrs[1].name = "X-Amz-Date";
	hdrs[1].value = SUITE_DATE;
	memset(req, 0, sizeof(*req));
	req->method = "GET";
	req->path = "/";
	req->headers = hdrs;
	req->nheaders = 2;
	req->payload_hash = SIGV4_EMPTY_SHA256;
	req->region = "us-west-2";
	req->service = "ses";
	req->amz_date = SUITE_DATE;
}

static const struct sigv4_credentials LONG_TERM = {SUITE_AKID, SUITE_SECRET, NULL};

/* Line n (0-based) of a canonical request, into buf. */
static const char *creq_line(const char *creq, int n, char *buf, size_t size)
{
	const char *end;

	while (n-- > 0 && creq != NULL)
		if ((creq = strchr(creq, '\n')) != NULL)
			creq++;
	if (creq == NULL)
		return "(no such line)";
	end = strchr(creq, '\n');
	snprintf(buf, size, "%.*s", (int)(end ? end - creq : (ptrdiff_t)strlen(creq)), creq);
	return buf;
}

static const struct {
	const char *query, *want;
} QUERIES[] = {
    {NULL, ""},
    {"", ""},
    {"b=2&a=1", "a=1&b=2"},
    {"a", "a="},
    {"a=&b", "a=&b="},
    {"&&a=1&", "a=1"},
    {"a=%2f", "a=%2F"},
    {"a=/", "a=%2F"},
    {"%61=1", "a=1"},
    {"a=%zz&b=%4", "a=%25zz&b=%254"},
    {"a=x+y", "a=x%2By"},
    {"a=x%20y", "a=x%20y"},
    {"a=1=2", "a=1%3D2"},
    {"a=b&a=a", "a=a&a=b"},
    {"a=1&A=1&_=1&~=1", "A=1&_=1&a=1&~=1"},
    {"k=\xe1\x88\xb4", "k=%E1%88%B4"},
};

static void test_canonical_query(const void *arg)
{
	struct sigv4_header hdrs[2];
	struct sigv4_request req;
	struct sigv4_signed got;
	char line[256];
	size_t i;

	for (i = 0; i < sizeof(QUERIES) / sizeof(QUERIES[0]); i++) {
		int same;
		base_request(&req, hdrs);
		req.query = QUERIES[i].query;
		CHECK_INT(sigv4_sign(&req, &LONG_TERM, &got), 0);
		same = strcmp(creq_line(got.canonical_request, 2, line, sizeof(line)),
		              QUERIES[i].want) == 0;
		sigv4_signed_free(&got);
		if (!same)
			fprintf(stderr, "query \"%s\" -> \"%s\", want \"%s\"\n",
			        QUERIES[i].query ? QUERIES[i].query : "(null)", line,
			        QUERIES[i].want);
		CHECK(same);
	}
}

static const struct {
	const char *path;
	bool s3_mode;
	const char *want;
} PATHS[] = {
    {"", false, "/"},
    {"/", false, "/"},
    {"/v2/email/outbound-emails", false, "/v2/email/outbound-emails"},
    /* wire form encoded once; the canonical form encodes it again */
    {"/v2/email/identities/a%40b.example", false, "/v2/email/identities/a%2540b.example"},
    {"/a b", false, "/a%20b"},
    /* S3: verbatim, no second encoding, no normalisation */
    {"/my-object//example//photo.user", true, "/my-object//example//photo.user"},
    {"/a%20b/c%2Fd", true, "/a%20b/c%2Fd"},
    {"", true, "/"},
};

static void test_canonical_path(const void *arg)
{
	struct sigv4_header hdrs[2];
	struct sigv4_request req;
	struct sigv4_signed got;
	char line[256];
	size_t i;

	for (i = 0; i < sizeof(PATHS) / sizeof(PATHS[0]); i++) {
		int same;
		base_request(&req, hdrs);
		req.path = PATHS[i].path;
		req.s3_mode = PATHS[i].s3_mode;
		CHECK_INT(sigv4_sign(&req, &LONG_TERM, &got), 0);
		same = strcmp(creq_line(got.canonical_request, 1, line, sizeof(line)),
		              PATHS[i].want) == 0;
		sigv4_signed_free(&got);
		if (!same)
			fprintf(stderr, "path \"%s\"%s -> \"%s\", want \"%s\"\n", PATHS[i].path,
			        PATHS[i].s3_mode ? " (s3)" : "", line, PATHS[i].want);
		CHECK(same);
	}
}

/* Headers in, canonical header block and SignedHeaders out. */
static const struct {
	struct sigv4_header extra[3];
	const char *block, *signed_headers;
} HEADERS[] = {
    {{{"Content-Type", "  application/json  "}},
     "content-type:application/json\nhost:h\nx-amz-date:" SUITE_DATE "\n",
     "content-type;host;x-amz-date"},
    {{{"X-A", "a \t  b\t\tc"}},
     "host:h\nx-a:a b c\nx-amz-date:" SUITE_DATE "\n",
     "host;x-a;x-amz-date"},
    {{{"x-b", "2"}, {"X-B", "1"}, {"X-b", " 3 "}},
     "host:h\nx-amz-date:" SUITE_DATE "\nx-b:2,1,3\n",
     "host;x-amz-date;x-b"},
    {{{"X-Empty", ""}, {"X-Blank", "   "}},
     "host:h\nx-amz-date:" SUITE_DATE "\nx-blank:\nx-empty:\n",
     "host;x-amz-date;x-blank;x-empty"},
    {{{"A-First", "\"q  u\""}},
     "a-first:\"q u\"\nhost:h\nx-amz-date:" SUITE_DATE "\n",
     "a-first;host;x-amz-date"},
};

static void header_checks(struct sigv4_signed *got)
{
	struct sigv4_header hdrs[5];
	struct sigv4_request req;
	size_t i, k;

	for (i = 0; i < sizeof(HEADERS) / sizeof(HEADERS[0]); i++) {
		char *start;
		base_request(&req, hdrs);
		hdrs[0].value = "h";
		for (k = 0; k < 3 && HEADERS[i].extra[k].name != NULL; k++)
			hdrs[req.nheaders++] = HEADERS[i].extra[k];
		CHECK_INT(sigv4_sign(&req, &LONG_TERM, got), 0);
		CHECK_STR(got->signed_headers, HEADERS[i].signed_headers);
		/* The block sits between the query line and the empty line. */
		start = strchr(strchr(got->canonical_request, '\n') + 1, '\n') + 1;
		start = strchr(start, '\n') + 1;
		*strstr(start, "\n\n") = '\0';
		strcat(start, "\n");
		CHECK_STR(start, HEADERS[i].block);
		sigv4_signed_free(got);
	}
}

static void test_canonical_headers(const void *arg)
{
	struct sigv4_signed got;

	memset(&got, 0, sizeof(got));
	header_checks(&got);
	sigv4_signed_free(&got);
}

enum bad_field { BAD_NONE, BAD_HEADER, BAD_TOKEN_HEADER, BAD_NO_HOST, BAD_NO_DATE };

/* Input that must be refused, with the reason sigv4_sign() gives. */
static const struct {
	const char *name;
	const char *method, *path, *payload_hash, *region, *service, *amz_date;
	bool s3_mode;
	const char *akid, *secret, *token;
	enum bad_field field;
	struct sigv4_header header;
	const char *error;
} REFUSED[] = {
    {"date without Z", .amz_date = "20150830T123600", .error = "amz_date"},
    {"ISO date", .amz_date = "2015-08-30T12:36:00Z", .error = "amz_date"},
    {"date letters", .amz_date = "2015083xT123600Z", .error = "amz_date"},
    {"empty region", .region = "", .error = "region"},
    {"region with slash", .region = "us/east", .error = "region"},
    {"service with space", .service = "s es", .error = "service"},
    {"empty method", .method = "", .error = "method"},
    {"method with newline", .method = "GET\nX", .error = "method"},
    {"relative path", .path = "v2/email", .error = "path"},
    {"s3 path with space", .path = "/a b", .s3_mode = true, .error = "S3 path"},
    {"s3 path with newline", .path = "/a\nb", .s3_mode = true, .error = "S3 path"},
    {"empty payload hash", .payload_hash = "", .error = "payload hash"},
    {"payload hash with newline", .payload_hash = "ab\ncd", .error = "payload hash"},
    {"empty access key", .akid = "", .error = "access key"},
    {"access key with slash", .akid = "AKID/X", .error = "access key"},
    {"empty secret", .secret = "", .error = "secret"},
    {"header value CRLF", .field = BAD_HEADER, .header = {"X-A", "a\r\nX-Injected: 1"},
     .error = "control character"},
    {"header value CTL", .field = BAD_HEADER, .header = {"X-A", "a\x01"},
     .error = "control character"},
    {"header name with space", .field = BAD_HEADER, .header = {"X A", "1"}, .error = "header name"},
    {"header name with colon", .field = BAD_HEADER, .header = {"X-A:", "1"},
     .error = "header name"},
    {"empty header name", .field = BAD_HEADER, .header = {"", "1"}, .error = "header name"},
    {"NULL header value", .field = BAD_HEADER, .header = {"X-A", NULL},
     .error = "control character"},
    /* the X-Amz-Date header says SUITE_DATE */
    {"x-amz-date mismatch", .amz_date = "20150830T123601Z", .error = "X-Amz-Date"},
    {"no host", .field = BAD_NO_HOST, .error = "Host"},
    {"no x-amz-date", .field = BAD_NO_DATE, .error = "X-Amz-Date header is not signed"},
    {"authorization signed", .field = BAD_HEADER, .header = {"Authorization", "AWS4-HMAC-SHA256 x"},
     .error = "Authorization"},
    {"token not signed", .token = SIGV4_TEST_TOKEN, .error = "session token"},
    {"token header differs", .token = SIGV4_TEST_TOKEN, .field = BAD_TOKEN_HEADER,
     .header = {"X-Amz-Security-Token", "other"}, .error = "session token"},
};

static void refused_checks(size_t i, struct sigv4_signed *got)
{
	struct sigv4_header hdrs[3];
	struct sigv4_request req;
	struct sigv4_credentials creds = LONG_TERM;

	base_request(&req, hdrs);
#define OVERRIDE(f)                                                                                \
	if (REFUSED[i].f != NULL)                                                                  \
		req.f = REFUSED[i].f;
	OVERRIDE(method)
	OVERRIDE(path)
	OVERRIDE(payload_hash)
	OVERRIDE(region)
	OVERRIDE(service)
	OVERRIDE(amz_date)
#undef OVERRIDE
	req.s3_mode = REFUSED[i].s3_mode;
	if (REFUSED[i].akid != NULL)
		creds.access_key_id = REFUSED[i].akid;
	if (REFUSED[i].secret != NULL)
		creds.secret_access_key = REFUSED[i].secret;
	creds.session_token = REFUSED[i].token;
	if (REFUSED[i].field == BAD_HEADER || REFUSED[i].field == BAD_TOKEN_HEADER)
		hdrs[req.nheaders++] = REFUSED[i].header;
	if (REFUSED[i].field == BAD_NO_HOST)
		hdrs[0].name = "X-Not-Host";
	if (REFUSED[i].field == BAD_NO_DATE)
		hdrs[1].name = "Date";

	if (sigv4_sign(&req, &creds, got) != -1 || got->error == NULL ||
	    strstr(got->error, REFUSED[i].error) == NULL)
		fprintf(stderr, "case \"%s\": error %s, want ...%s...\n", REFUSED[i].name,
		        got->error ? got->error : "(none)", REFUSED[i].error);
	CHECK(got->error != NULL && strstr(got->error, REFUSED[i].error) != NULL);
	CHECK(got->canonical_request == NULL && got->authorization == NULL);
}

static void test_refused(const void *arg)
{
	struct sigv4_signed got;
	size_t i;

	for (i = 0; i < sizeof(REFUSED) / sizeof(REFUSED[0]); i++) {
		refused_checks(i, &got);
		sigv4_signed_free(&got);
		if (unit_failed)
			return;
	}
	/* A refused result is safe to free twice. */
	sigv4_signed_free(&got);
	CHECK_INT(sigv4_sign(&(struct sigv4_request){0}, &LONG_TERM, &got), -1);
	sigv4_signed_free(&got);
	CHECK_INT(sigv4_sign(&(struct sigv4_request){0}, NULL, &got), -1);
	sigv4_signed_free(&got);
}

/* Same input, same output; no secret in anything a caller might log. */
static void sign_twice_checks(struct sigv4_signed *a, struct sigv4_signed *b)
{
	struct sigv4_header hdrs[3];
	struct sigv4_request req;
	struct sigv4_credentials creds = {SUITE_AKID, SUITE_SECRET, SIGV4_TEST_TOKEN};

	base_request(&req, hdrs);
	hdrs[2].name = "X-Amz-Security-Token";
	hdrs[2].value = SIGV4_TEST_TOKEN;
	req.nheaders = 3;
	CHECK_INT(sigv4_sign(&req, &creds, a), 0);
	CHECK_INT(sigv4_sign(&req, &creds, b), 0);
	CHECK_STR(a->canonical_request, b->canonical_request);
	CHECK_STR(a->authorization, b->authorization);
	CHECK_STR(a->credential_scope, "20150830/us-west-2/ses/aws4_request");
	CHECK_STR(a->signed_headers, "host;x-amz-date;x-amz-security-token");
	CHECK_INT(strlen(a->signature), 64);
	CHECK(strstr(a->authorization, a->signature) != NULL);
	CHECK(strstr(a->canonical_request, SUITE_SECRET) == NULL);
	CHECK(strstr(a->string_to_sign, SUITE_SECRET) == NULL);
	CHECK(strstr(a->authorization, SUITE_SECRET) == NULL);
	CHECK(strstr(a->authorization, SIGV4_TEST_TOKEN) == NULL);
}

static void test_deterministic(const void *arg)
{
	struct sigv4_signed a, b;

	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	sign_twice_checks(&a, &b);
	sigv4_signed_free(&a);
	sigv4_signed_free(&b);
}

static void test_amz_date(const void *arg)
{
	char out[SIGV4_AMZ_DATE_SIZE];

	CHECK_INT(sigv4_amz_date(1440938160, out), 0);
	CHECK_STR(out, SUITE_DATE);
	CHECK_INT(sigv4_amz_date(0, out), 0);
	CHECK_STR(out, "19700101T000000Z");
	CHECK_INT(sigv4_amz_date(253402300799, out), 0);
	CHECK_STR(out, "99991231T235959Z");
	CHECK_INT(sigv4_amz_date(253402300800, out), -1);
}

/* --- the harness --------------------------------------------------------------- */

struct test {
	const char *name;
	void (*fn)(const void *arg);
	const void *arg;
	const char *skip;
};

static const struct test PLAIN[] = {
    {"suite-inventory", test_suite_inventory, NULL, NULL},
    {"smtp-password-vectors", test_smtp_password, NULL, NULL},
    {"smtp-password-refuses", test_smtp_password_refuses, NULL, NULL},
    {"signing-key-aws-example", test_signing_key, NULL, NULL},
    {"sha256-vectors", test_sha256_vectors, NULL, NULL},
    {"sha256-streamed-equals-one-shot", test_sha256_streamed, NULL, NULL},
    {"uri-encode", test_uri_encode, NULL, NULL},
    {"canonical-query", test_canonical_query, NULL, NULL},
    {"canonical-path-ses-and-s3", test_canonical_path, NULL, NULL},
    {"canonical-headers", test_canonical_headers, NULL, NULL},
    {"refused-input", test_refused, NULL, NULL},
    {"deterministic-and-no-secrets", test_deterministic, NULL, NULL},
    {"amz-date", test_amz_date, NULL, NULL},
};
#define NPLAIN (sizeof(PLAIN) / sizeof(PLAIN[0]))
#define NTESTS (NSUITE + NBOTOCORE + NPLAIN)

static struct test test_at(size_t i)
{
	struct test t = {0};

	if (i < NSUITE) {
		t.name = SUITE_CASES[i].name;
		t.fn = run_suite_case;
		t.arg = &SUITE_CASES[i];
		t.skip = SUITE_CASES[i].skip;
	} else if (i < NSUITE + NBOTOCORE) {
		t.name = BOTOCORE_CASES[i - NSUITE].name;
		t.fn = run_botocore_case;
		t.arg = &BOTOCORE_CASES[i - NSUITE];
	} else {
		t = PLAIN[i - NSUITE - NBOTOCORE];
	}
	return t;
}

int main(int argc, char **argv)
{
	const char *only = argc > 1 ? argv[1] : NULL;
	int bad = 0, ran = 0;
	size_t i;

	if (only != NULL && strcmp(only, "--list") == 0) {
		for (i = 0; i < NTESTS; i++)
			printf("%s\n", test_at(i).name);
		return 0;
	}
	for (i = 0; i < NTESTS; i++) {
		struct test t = test_at(i);
		if (only != NULL && strcmp(only, t.name) != 0)
			continue;
		ran++;
		if (t.skip != NULL) {
			printf("skip %s: %s\n", t.name, t.skip);
			continue;
		}
		unit_current = t.name;
		unit_failed = 0;
		t.fn(t.arg);
		if (unit_failed)
			bad++;
		else
			printf("ok %s\n", t.name);
		fflush(stdout);
	}
	if (ran == 0) {
		fprintf(stderr, "no test case named %s\n", only);
		return 2;
	}
	return bad ? 1 : 0;
}
