/*
 * test_ses_api.c - the SES API transport (ses/ses_api.c), as scenarios.
 *
 * 1. Tables: the outcome class of every SES error code and HTTP status that
 *    SES-NOTES.md names, whole answers (v2 JSON, v1 XML, garbage, truncated,
 *    huge, hostile) into status + text, the JSON and XML extractors, and
 *    GetAccount answers.
 * 2. Request bodies: v2 JSON (escaping) and v1 form (percent-encoding,
 *    member numbering) byte for byte, and the streaming encoder: for sizes
 *    0..57 and 1 MiB+1, several chunk, read and slice sizes, the streamed
 *    body equals the one built in memory, pass 1's hash and length equal the
 *    body's, and a short queue file is an error, not a short body.
 * 3. The transport on a real event loop against a fake SES served by libevent's
 *    evhttp on 127.0.0.1 (no network): the fake checks every signature with the
 *    bytes it received, so "sent = hashed" is proven on the wire too.
 *    Outcomes, concurrency, done() never inside send(), free() with calls in
 *    flight, no credentials, an unreadable queue file, GetAccount.
 *
 * Credentials come from a fake ses_creds (ses_creds_get/_refresh below, a link
 * seam: the unit binary links libsesrelay.a, whose ses_creds.o is then never
 * pulled in).  Test keys only: the AWS documentation examples.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/evp.h>

#include "conf/conf.h"
#include "relay/log.h"
#include "relay/transport.h"
#include "relay/util.h"
#include "ses/ses_api.h"
#include "ses/ses_creds.h"
#include "ses/ses_http.h"
#include "ses/sigv4.h"
#include "tests/unit/unit.h"

#define AKID   "AKIDEXAMPLE"
#define SECRET "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
#define TOKEN  "FwoGZXIvYXdzEXAMPLETOKEN/with+chars="
#define REGION "us-west-2"

/* ========================================================================= */
/* Fake credentials (link seam)                                              */
/* ========================================================================= */

struct ses_creds {
	const struct sigv4_credentials *cur;
	int refreshed;
};

const struct sigv4_credentials *ses_creds_get(struct ses_creds *c)
{
	return c->cur;
}

void ses_creds_refresh(struct ses_creds *c)
{
	c->refreshed++;
}

const char *ses_creds_source(struct ses_creds *c)
{
	return "test";
}

static const struct sigv4_credentials KEYS = {AKID, SECRET, NULL};
static const struct sigv4_credentials TEMP_KEYS = {AKID, SECRET, TOKEN};

/* ========================================================================= */
/* Helpers                                                                   */
/* ========================================================================= */

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static unsigned char rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (unsigned char)(rng_state >> 24);
}

static void fill_random(unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = rnd();
}

/* An unlinked temp file: `pre` junk bytes, data, 100 junk bytes. */
static int temp_message(const unsigned char *data, size_t len, size_t pre)
{
	const char *dir = getenv("TMPDIR");
	char *path = xasprintf("%s/test_ses_api.XXXXXX", dir && *dir ? dir : "/tmp");
	unsigned char junk[4200];
	int fd = mkstemp(path);

	if (fd == -1) {
		perror(path);
		exit(2);
	}
	unlink(path);
	free(path);
	fill_random(junk, sizeof(junk));
	if (pre > sizeof(junk) || write(fd, junk, pre) != (ssize_t)pre ||
	    (len && write(fd, data, len) != (ssize_t)len) || write(fd, junk, 100) != 100) {
		perror("write");
		exit(2);
	}
	return fd;
}

/* Independent of the encoder under test: base64 of everything at once. */
static char *b64(const unsigned char *data, size_t len)
{
	char *out = xmalloc(len / 3 * 4 + 8);

	EVP_EncodeBlock((unsigned char *)out, data, (int)len);
	return out;
}

static char *pct_b64(const char *s)
{
	char *out = xmalloc(strlen(s) * 3 + 1), *o = out;

	for (; *s; s++) {
		if (*s == '+' || *s == '/' || *s == '=')
			o += sprintf(o, "%%%02X", (unsigned char)*s);
		else
			*o++ = *s;
	}
	*o = '\0';
	return out;
}

/* The whole body through ses_api_body_read, `step` bytes a call. */
static char *read_all(struct ses_api_body *b, size_t step, size_t *len)
{
	size_t cap = 1024, n = 0;
	char *out = xmalloc(cap);

	for (;;) {
		ssize_t r;
		if (n + step + 1 > cap) {
			cap = (n + step + 1) * 2;
			out = xrealloc(out, cap);
		}
		r = ses_api_body_read(b, out + n, step);
		if (r < 0) {
			free(out);
			return NULL;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	out[n] = '\0';
	*len = n;
	return out;
}

static char *body_string(int version, const char *sender, const char *const *rcpts, size_t n,
                         const char *cs, const char *data)
{
	struct ses_api_body b;
	size_t len;
	int fd = temp_message((const unsigned char *)data, strlen(data), 7);
	char *s;

	ses_api_body_init(&b, version, sender, rcpts, n, cs, fd, 7, strlen(data));
	s = read_all(&b, 5, &len);
	ses_api_body_free(&b);
	close(fd);
	return s;
}

/* ========================================================================= */
/* 1. Classification                                                         */
/* ========================================================================= */

struct class_row {
	long status;
	const char *code, *message;
	enum delivery_status want;
};

static const struct class_row CLASS_ROWS[] = {
    /* no HTTP answer at all: connection refused, TLS, timeout */
    {0, "", "Connection refused", DELIVERY_DEFER},
    {0, "MessageRejected", "", DELIVERY_DEFER},
    /* throttling, and the daily quota hiding behind the same codes */
    {400, "Throttling", "Maximum sending rate exceeded.", DELIVERY_THROTTLED},
    {400, "Throttling", "Daily message quota exceeded.", DELIVERY_QUOTA},
    {400, "Throttling", "Maximum sending quota exceeded", DELIVERY_QUOTA},
    {400, "ThrottlingException", "Rate exceeded", DELIVERY_THROTTLED},
    {400, "ThrottlingException", "DAILY limit", DELIVERY_QUOTA},
    {429, "TooManyRequestsException", "Maximum sending rate exceeded.", DELIVERY_THROTTLED},
    {429, "TooManyRequestsException", "Daily message quota exceeded.", DELIVERY_QUOTA},
    {400, "LimitExceededException", "", DELIVERY_THROTTLED},
    {400, "LimitExceededException", "Sending Quota exceeded", DELIVERY_QUOTA},
    {429, "", "", DELIVERY_THROTTLED},
    {429, "", "daily sending quota exceeded", DELIVERY_QUOTA},
    {429, "SomethingNew", "slow down", DELIVERY_THROTTLED},
    /* SES's side */
    {500, "", "", DELIVERY_DEFER},
    {502, "", "", DELIVERY_DEFER},
    {503, "", "", DELIVERY_DEFER},
    {504, "", "", DELIVERY_DEFER},
    {507, "", "", DELIVERY_DEFER},
    {599, "SomethingNew", "", DELIVERY_DEFER},
    {500, "InternalFailure", "", DELIVERY_DEFER},
    {503, "ServiceUnavailable", "", DELIVERY_DEFER},
    {408, "", "", DELIVERY_DEFER},
    {400, "RequestTimeoutException", "", DELIVERY_DEFER},
    /* the operator must act */
    {403, "", "", DELIVERY_OPERATOR},
    {401, "", "", DELIVERY_OPERATOR},
    {403, "AccessDenied", "not authorized", DELIVERY_OPERATOR},
    {400, "AccessDeniedException", "", DELIVERY_OPERATOR},
    {403, "InvalidClientTokenId", "", DELIVERY_OPERATOR},
    {403, "SignatureDoesNotMatch", "", DELIVERY_OPERATOR},
    {400, "IncompleteSignature", "", DELIVERY_OPERATOR},
    {403, "UnrecognizedClientException", "", DELIVERY_OPERATOR},
    {400, "ExpiredToken", "", DELIVERY_OPERATOR},
    {403, "ExpiredTokenException", "", DELIVERY_OPERATOR},
    {400, "RequestExpired", "Request has expired", DELIVERY_OPERATOR},
    {403, "MissingAuthenticationToken", "", DELIVERY_OPERATOR},
    {403, "MissingAuthenticationTokenException", "", DELIVERY_OPERATOR},
    {400, "AccountSuspendedException", "", DELIVERY_OPERATOR},
    {400, "SendingPausedException", "", DELIVERY_OPERATOR},
    {400, "AccountSendingPausedException", "", DELIVERY_OPERATOR},
    {400, "ConfigurationSetSendingPausedException", "", DELIVERY_OPERATOR},
    {403, "AccessDeniedException", "daily quota", DELIVERY_OPERATOR},
    /* permanent for this message */
    {400, "MessageRejected", "Email address is not verified.", DELIVERY_BOUNCE},
    {400, "messagerejected", "", DELIVERY_BOUNCE},
    {400, "MessageRejected", "daily quota text does not matter here", DELIVERY_BOUNCE},
    {400, "MailFromDomainNotVerifiedException", "", DELIVERY_BOUNCE},
    {400, "BadRequestException", "", DELIVERY_BOUNCE},
    {404, "NotFoundException", "Configuration set <x> does not exist.", DELIVERY_OPERATOR},
    {400, "ConfigurationSetDoesNotExist", "", DELIVERY_OPERATOR},
    {400, "InvalidParameterValue", "", DELIVERY_BOUNCE},
    {400, "SomethingNew", "", DELIVERY_BOUNCE},
    {404, "", "", DELIVERY_BOUNCE},
    {413, "", "", DELIVERY_BOUNCE},
    {503, "MessageRejected", "", DELIVERY_BOUNCE}, /* a known code wins */
    /* not an error answer, yet no MessageId: never lose, never bounce */
    {200, "", "", DELIVERY_DEFER},
    {302, "", "", DELIVERY_DEFER},
    {100, "", "", DELIVERY_DEFER},
};

static void t_classify_table(void)
{
	size_t i;

	for (i = 0; i < sizeof(CLASS_ROWS) / sizeof(CLASS_ROWS[0]); i++) {
		const struct class_row *r = &CLASS_ROWS[i];
		enum delivery_status got = ses_api_classify(r->status, r->code, r->message);
		if (got != r->want)
			fprintf(stderr, "row %zu: %ld %s (%s)\n", i, r->status, r->code,
			        r->message);
		CHECK_INT(got, r->want);
	}
	CHECK_INT(ses_api_classify(400, NULL, NULL), DELIVERY_BOUNCE);
	CHECK_INT(ses_api_classify(429, NULL, NULL), DELIVERY_THROTTLED);
}

/* ========================================================================= */
/* 1b. Whole answers                                                         */
/* ========================================================================= */

struct answer_row {
	const char *name;
	int ok;
	long status;
	const char *errtype; /* x-amzn-ErrorType as ses_http gives it */
	const char *body;
	enum delivery_status want;
	const char *text; /* exact; NULL: only checked printable */
};

#define V1_NS "xmlns=\"http://ses.amazonaws.com/doc/2010-12-01/\""

static const struct answer_row ANSWER_ROWS[] = {
    {"v2 sent", 1, 200, NULL, "{\"MessageId\":\"0101018c-abc-000000\"}", DELIVERY_SENT,
     "MessageId 0101018c-abc-000000"},
    {"v2 sent, spaces", 1, 200, NULL, " \n{ \"MessageId\" : \"m-1\" }\n", DELIVERY_SENT,
     "MessageId m-1"},
    {"v1 sent", 1, 200, NULL,
     "<SendRawEmailResponse " V1_NS "><SendRawEmailResult><MessageId>0000-1</MessageId>"
     "</SendRawEmailResult><ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata>"
     "</SendRawEmailResponse>",
     DELIVERY_SENT, "MessageId 0000-1"},
    {"v2 rejected (header code)", 1, 400, "MessageRejected",
     "{\"message\":\"Email address is not verified. The following identities failed the check "
     "in region US-WEST-2: a@example.com\"}",
     DELIVERY_BOUNCE,
     "400 MessageRejected: Email address is not verified. The following identities failed the "
     "check in region US-WEST-2: a@example.com"},
    {"v2 __type with prefix", 1, 400, NULL,
     "{\"__type\":\"com.amazon.coral.service#ExpiredTokenException\",\"message\":\"The security "
     "token included in the request is expired\"}",
     DELIVERY_OPERATOR,
     "400 ExpiredTokenException: The security token included in the request is expired"},
    {"v2 code and Message", 1, 403, "AccessDeniedException",
     "{\"Message\":\"User: arn:aws:iam::1:user/x is not authorized to perform: ses:SendEmail\"}",
     DELIVERY_OPERATOR,
     "403 AccessDeniedException: User: arn:aws:iam::1:user/x is not authorized to perform: "
     "ses:SendEmail"},
    {"v2 header wins over body", 1, 429, "TooManyRequestsException",
     "{\"code\":\"BadRequestException\",\"message\":\"Maximum sending rate exceeded.\"}",
     DELIVERY_THROTTLED, "429 TooManyRequestsException: Maximum sending rate exceeded."},
    {"v2 quota", 1, 429, "TooManyRequestsException",
     "{\"message\":\"Daily message quota exceeded.\"}", DELIVERY_QUOTA,
     "429 TooManyRequestsException: Daily message quota exceeded."},
    {"v2 code with :suffix", 1, 400, NULL,
     "{\"code\":\"ValidationException:http://internal.amazon.com/\",\"message\":\"bad\"}",
     DELIVERY_BOUNCE, "400 ValidationException: bad"},
    {"v2 not found", 1, 404, "NotFoundException",
     "{\"message\":\"Configuration set <cs> does not exist.\"}", DELIVERY_OPERATOR,
     "404 NotFoundException: Configuration set <cs> does not exist."},
    {"v1 throttled", 1, 400, NULL,
     "<ErrorResponse " V1_NS "><Error><Type>Sender</Type><Code>Throttling</Code><Message>"
     "Maximum sending rate exceeded.</Message></Error><RequestId>x</RequestId></ErrorResponse>",
     DELIVERY_THROTTLED, "400 Throttling: Maximum sending rate exceeded."},
    {"v1 quota", 1, 400, NULL,
     "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Daily message "
     "quota exceeded.</Message></Error></ErrorResponse>",
     DELIVERY_QUOTA, "400 Throttling: Daily message quota exceeded."},
    {"v1 rejected, entities", 1, 400, NULL,
     "<ErrorResponse><Error><Type>Sender</Type><Code>MessageRejected</Code><Message>Email "
     "address is not verified: &lt;a@x&gt; &amp; &quot;b&quot;</Message></Error></ErrorResponse>",
     DELIVERY_BOUNCE, "400 MessageRejected: Email address is not verified: <a@x> & \"b\""},
    {"v1 paused", 1, 400, NULL,
     "<ErrorResponse><Error><Code>AccountSendingPausedException</Code><Message>Sending paused"
     "</Message></Error></ErrorResponse>",
     DELIVERY_OPERATOR, "400 AccountSendingPausedException: Sending paused"},
    {"v1 signature", 1, 403, NULL,
     "<ErrorResponse><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code><Message>The "
     "request signature we calculated does not match</Message></Error></ErrorResponse>",
     DELIVERY_OPERATOR,
     "403 SignatureDoesNotMatch: The request signature we calculated does not match"},
    {"v1 config set", 1, 400, NULL,
     "<ErrorResponse><Error><Code>ConfigurationSetDoesNotExist</Code><Message>Configuration set "
     "does not exist</Message></Error></ErrorResponse>",
     DELIVERY_OPERATOR, "400 ConfigurationSetDoesNotExist: Configuration set does not exist"},
    {"html 503", 1, 503, NULL, "<html><body>Service Unavailable</body></html>", DELIVERY_DEFER,
     "503 (no error details): <html><body>Service Unavailable</body></html>"},
    {"empty 502", 1, 502, NULL, "", DELIVERY_DEFER, "502 (no error details)"},
    {"empty 403", 1, 403, NULL, "", DELIVERY_OPERATOR, "403 (no error details)"},
    {"code only", 1, 400, "MessageRejected", "", DELIVERY_BOUNCE, "400 MessageRejected"},
    {"message only", 1, 500, NULL, "{\"message\":\"internal\"}", DELIVERY_DEFER, "500: internal"},
    {"connection refused", 0, 0, NULL, NULL, DELIVERY_DEFER,
     "no answer from SES: Failed to connect to 127.0.0.1 port 1: Connection refused"},
    {"200 garbage", 1, 200, NULL, "not json", DELIVERY_DEFER,
     "200 answer without a MessageId: not json"},
    {"200 truncated", 1, 200, NULL, "{\"MessageId\":\"abc", DELIVERY_DEFER,
     "200 answer without a MessageId: {\"MessageId\":\"abc"},
    {"200 MessageId not a string", 1, 200, NULL, "{\"MessageId\":17}", DELIVERY_DEFER, NULL},
    {"200 error-shaped", 1, 200, NULL, "{\"code\":\"Weird\"}", DELIVERY_DEFER, "200 Weird"},
    {"controls in message", 1, 400, "MessageRejected",
     "{\"message\":\"line1\\nline2\\u0007end\\r\"}", DELIVERY_BOUNCE,
     "400 MessageRejected: line1 line2 end "},
    {"raw controls in XML", 1, 400, NULL,
     "<Error><Code>MessageRejected</Code><Message>a\r\nb\x1b[31m</Message></Error>",
     DELIVERY_BOUNCE, "400 MessageRejected: a  b [31m"},
    {"non-ASCII", 1, 400, "MessageRejected", "{\"message\":\"caf\\u00e9 \xc3\xa9\"}",
     DELIVERY_BOUNCE, "400 MessageRejected: caf?? ??"},
    {"hostile code", 1, 400, NULL, "{\"code\":\"Evil\\nstatus=sent\",\"message\":\"x\"}",
     DELIVERY_BOUNCE, "400 Evil status=sent: x"},
    {"MessageId outside result (v1)", 1, 200, NULL, "<X><MessageId>m</MessageId></X>",
     DELIVERY_DEFER, NULL},
};

static void t_answer_table(void)
{
	size_t i;

	for (i = 0; i < sizeof(ANSWER_ROWS) / sizeof(ANSWER_ROWS[0]); i++) {
		const struct answer_row *row = &ANSWER_ROWS[i];
		struct ses_http_response r;
		struct ses_api_reply rep;
		char text[DELIVERY_TEXT_MAX];
		enum delivery_status st;

		memset(&r, 0, sizeof(r));
		r.ok = row->ok;
		r.status = row->status;
		r.body = row->body;
		r.body_len = row->body ? strlen(row->body) : 0;
		r.amzn_error_type = row->errtype;
		r.error =
		    row->ok ? NULL : "Failed to connect to 127.0.0.1 port 1: Connection refused";
		st = ses_api_outcome(&r, &rep, text, sizeof(text));
		if (st != row->want || (row->text && strcmp(text, row->text) != 0))
			fprintf(stderr, "row \"%s\": got %d \"%s\"\n", row->name, st, text);
		CHECK_INT(st, row->want);
		if (row->text)
			CHECK_STR(text, row->text);
		for (const char *p = text; *p; p++)
			CHECK(*p >= 0x20 && *p < 0x7f);
	}
}

/* Huge, embedded NUL, deep nesting, random bytes: capped, printable, no crash. */
static void t_answer_hostile(void)
{
	struct ses_http_response r;
	struct ses_api_reply rep;
	char text[DELIVERY_TEXT_MAX], *big;
	size_t n = 60000, i, round;
	static const char alphabet[] =
	    "{}[]\":,\\u0123456789abcdefABCDEF<>/=&#;x \n\tMessageIdCode";

	memset(&r, 0, sizeof(r));
	r.ok = 1;
	r.status = 400;
	/* a 60 KB message is cut to DELIVERY_TEXT_MAX-1 */
	big = xmalloc(n + 64);
	i = (size_t)sprintf(big, "{\"code\":\"MessageRejected\",\"message\":\"");
	memset(big + i, 'm', n);
	strcpy(big + i + n, "\"}");
	r.body = big;
	r.body_len = strlen(big);
	CHECK_INT(ses_api_outcome(&r, &rep, text, sizeof(text)), DELIVERY_BOUNCE);
	CHECK_INT(strlen(text), DELIVERY_TEXT_MAX - 1);
	CHECK(strncmp(text, "400 MessageRejected: mmm", 24) == 0);
	/* a huge code is cut, still classified as "other 4xx" */
	i = (size_t)sprintf(big, "{\"code\":\"");
	memset(big + i, 'C', n);
	strcpy(big + i + n, "\"}");
	r.body_len = strlen(big);
	CHECK_INT(ses_api_outcome(&r, &rep, text, sizeof(text)), DELIVERY_BOUNCE);
	CHECK_INT(strlen(rep.code), SES_API_CODE_MAX - 1);
	/* 60 000 nested arrays before the member we want: depth capped */
	memset(big, '[', n);
	big[n] = '\0';
	r.body_len = n;
	CHECK_INT(ses_api_outcome(&r, &rep, text, sizeof(text)), DELIVERY_BOUNCE);
	i = (size_t)sprintf(big, "{\"x\":");
	memset(big + i, '[', n - 10);
	strcpy(big + i + n - 10, "]");
	r.body_len = strlen(big);
	CHECK_INT(ses_api_json_string(big, r.body_len, "x", text, sizeof(text)), -1);
	CHECK_INT(ses_api_outcome(&r, &rep, text, sizeof(text)), DELIVERY_BOUNCE);
	free(big);
	/* an embedded NUL: body_len is what counts */
	static const char nul_body[] = "{\"message\":\"a\0b\",\"code\":\"MessageRejected\"}";
	r.body = nul_body; /* a raw NUL in a string: not JSON */
	r.body_len = sizeof(nul_body) - 1;
	CHECK_INT(ses_api_outcome(&r, &rep, text, sizeof(text)), DELIVERY_BOUNCE);
	CHECK_STR(text,
	          "400 (no error details): {\"message\":\"a b\",\"code\":\"MessageRejected\"}");
	r.body = "{\"message\":\"a\\u0000b\",\"code\":\"MessageRejected\"}";
	r.body_len = strlen(r.body);
	CHECK_INT(ses_api_outcome(&r, &rep, text, sizeof(text)), DELIVERY_BOUNCE);
	CHECK_STR(text, "400 MessageRejected: a");
	r.body = "<html>\0</html>";
	r.body_len = 14;
	ses_api_outcome(&r, &rep, text, sizeof(text));
	CHECK_STR(text, "400 (no error details): <html> </html>");
	/* random bodies from a JSON/XML-ish alphabet; ASan watches the reads */
	big = xmalloc(512);
	for (round = 0; round < 20000; round++) {
		size_t len = rnd() % 300;
		for (i = 0; i < len; i++)
			big[i] =
			    round % 7 == 0 ? (char)rnd() : alphabet[rnd() % (sizeof(alphabet) - 1)];
		if (len && round % 2)
			big[0] = round % 4 == 1 ? '{' : '<';
		r.body = big;
		r.body_len = len;
		r.status = 200 + (long)(rnd() % 400);
		ses_api_outcome(&r, &rep, text, sizeof(text));
		for (const char *p = text; *p; p++)
			CHECK(*p >= 0x20 && *p < 0x7f);
		CHECK(strlen(text) < sizeof(text));
	}
	free(big);
}

/* ========================================================================= */
/* 1c. Extractors                                                            */
/* ========================================================================= */

struct json_row {
	const char *json, *path, *want; /* want NULL: not found */
};

static const struct json_row JSON_ROWS[] = {
    {"{\"a\":\"x\"}", "a", "x"},
    {"  {  \"a\"  :  \"x\"  }  ", "a", "x"},
    {"{\"a\":{\"b\":\"y\"}}", "a.b", "y"},
    {"{\"b\":\"no\",\"a\":{\"c\":1,\"b\":\"y\"}}", "a.b", "y"},
    {"{\"a\":[\"x\",{\"b\":\"z\"}],\"b\":\"top\"}", "b", "top"},
    {"{\"x\":[1,2,{\"y\":[]}],\"z\":{},\"a\":\"ok\"}", "a", "ok"},
    {"{\"a\":\"x\",\"a\":\"y\"}", "a", "x"},
    {"{\"ab\":\"1\",\"a\":\"2\"}", "a", "2"},
    {"{\"a.b\":\"1\",\"a\":{\"b\":\"2\"}}", "a.b", "2"},
    {"{\"\\u0061\":\"x\"}", "a", "x"},
    {"{\"a\":\"\\u00e9\\ud83d\\ude00\\\"\\\\\\/\\n\\t\"}", "a",
     "\xc3\xa9\xf0\x9f\x98\x80\"\\/\n\t"},
    {"{\"a\":\"\\ud800x\"}", "a", "\xef\xbf\xbdx"},
    {"{\"a\":\"\\udc00\"}", "a", "\xef\xbf\xbd"},
    {"{\"a\":\"x\"} trailing garbage", "a", "x"},
    {"{\"a\":1}", "a", NULL},
    {"{\"a\":{\"b\":\"y\"}}", "a", NULL},
    {"{\"a\":\"y\"}", "a.b", NULL},
    {"[\"a\"]", "a", NULL},
    {"", "a", NULL},
    {"{", "a", NULL},
    {"{}", "a", NULL},
    {"{\"a\"", "a", NULL},
    {"{\"a\":", "a", NULL},
    {"{\"a\":\"x", "a", NULL},
    {"{\"a\":\"x\\", "a", NULL},
    {"{\"a\":\"\\u12", "a", NULL},
    {"{\"a\":\"\\q\"}", "a", NULL},
    {"{\"a\" \"x\"}", "a", NULL},
    {"{\"a\":\"x\x01\"}", "a", NULL},
    {"{\"b\":\"\x01\",\"a\":\"x\"}", "a", NULL},
    {"{\"b\":[1,2,\"a\":\"x\"}", "a", NULL},
    {"{\"b\":1 \"a\":\"x\"}", "a", NULL},
    {"{\"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\":1,"
     "\"a\":\"x\"}",
     "a", "x"},
};

static void t_json_table(void)
{
	char out[64];
	size_t i;

	for (i = 0; i < sizeof(JSON_ROWS) / sizeof(JSON_ROWS[0]); i++) {
		const struct json_row *r = &JSON_ROWS[i];
		int got = ses_api_json_string(r->json, strlen(r->json), r->path, out, sizeof(out));
		if ((got == 0) != (r->want != NULL))
			fprintf(stderr, "row %zu: %s\n", i, r->json);
		CHECK_INT(got, r->want ? 0 : -1);
		if (r->want)
			CHECK_STR(out, r->want);
	}
	/* cut to size-1, never a partial UTF-8 sequence */
	CHECK_INT(ses_api_json_string("{\"a\":\"abcdef\"}", 14, "a", out, 4), 0);
	CHECK_STR(out, "abc");
	CHECK_INT(ses_api_json_string("{\"a\":\"ab\\u00e9\"}", 16, "a", out, 4), 0);
	CHECK_STR(out, "ab");
	/* the length bound is honoured: the value is past it */
	CHECK_INT(ses_api_json_string("{\"a\":\"x\"}", 6, "a", out, sizeof(out)), -1);
	CHECK_INT(ses_api_json_string(NULL, 0, "a", out, sizeof(out)), -1);
}

static void t_json_numbers(void)
{
	static const struct {
		const char *json;
		int ok;
		double want;
	} rows[] = {
	    {"{\"SendQuota\":{\"MaxSendRate\":14.0}}", 1, 14},
	    {"{\"SendQuota\":{\"MaxSendRate\":-1}}", 1, -1},
	    {"{\"SendQuota\":{\"MaxSendRate\":1e3}}", 1, 1000},
	    {"{\"SendQuota\":{\"MaxSendRate\":0.5 }}", 1, 0.5},
	    {"{\"SendQuota\":{\"MaxSendRate\":\"14\"}}", 0, 0},
	    {"{\"SendQuota\":{\"MaxSendRate\":1e999}}", 0, 0},
	    {"{\"SendQuota\":{\"MaxSendRate\":-}}", 0, 0},
	    {"{\"SendQuota\":{\"MaxSendRate\":1-2}}", 0, 0},
	    {"{\"SendQuota\":{\"MaxSendRate\":true}}", 0, 0},
	    {"{\"SendQuota\":{\"MaxSendRate\":null}}", 0, 0},
	    {"{\"SendQuota\":{\"MaxSendRate\":"
	     "11111111111111111111111111111111111111111111111111111111111111111111111}}",
	     0, 0},
	    {"{\"MaxSendRate\":14}", 0, 0},
	};
	double d;
	int b;
	size_t i;

	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		int got = ses_api_json_number(rows[i].json, strlen(rows[i].json),
		                              "SendQuota.MaxSendRate", &d);
		CHECK_INT(got, rows[i].ok ? 0 : -1);
		if (rows[i].ok)
			CHECK(d == rows[i].want);
	}
	CHECK_INT(ses_api_json_bool("{\"a\":true}", 10, "a", &b), 0);
	CHECK_INT(b, 1);
	CHECK_INT(ses_api_json_bool("{\"a\":false}", 11, "a", &b), 0);
	CHECK_INT(b, 0);
	CHECK_INT(ses_api_json_bool("{\"a\":\"true\"}", 12, "a", &b), -1);
	CHECK_INT(ses_api_json_bool("{\"a\":tru}", 9, "a", &b), -1);
	CHECK_INT(ses_api_json_bool("{\"a\":truex}", 11, "a", &b), -1);
}

struct xml_row {
	const char *xml, *scope, *tag, *want;
};

static const struct xml_row XML_ROWS[] = {
    {"<a><Error><Code>X</Code></Error></a>", "Error", "Code", "X"},
    {"<Code>outside</Code><Error><Code>in</Code></Error>", "Error", "Code", "in"},
    {"<Error><Type>S</Type></Error><Code>outside</Code>", "Error", "Code", NULL},
    {"<Error><Message>a &amp; b &lt;c&gt; &#65;&#x42;&#X43; &bogus; &#; &#12</Message></Error>",
     "Error", "Message", "a & b <c> ABC &bogus; &#; &#12"},
    {"<Error><Code/></Error>", "Error", "Code", ""},
    {"<Error><Code /></Error>", "Error", "Code", ""},
    {"<Error><Code>X", "Error", "Code", NULL},
    {"<Error><Codex>1</Codex><Code>2</Code></Error>", "Error", "Code", "2"},
    {"<Error><Code>Y</Code>", "Error", "Code", "Y"},
    {"<Error/><Code>Z</Code>", "Error", "Code", NULL},
    {"<Code attr=\"1\">W</Code>", NULL, "Code", "W"},
    {"<Code\tx='>'>V</Code>", NULL, "Code", "'>V"},
    {"<Code>&#1114112;&#0;</Code>", NULL, "Code", "\xef\xbf\xbd\xef\xbf\xbd"},
    {"<Code>&#xe9;</Code>", NULL, "Code", "\xc3\xa9"},
    {"<", NULL, "Code", NULL},
    {"", NULL, "Code", NULL},
    {"<Code", NULL, "Code", NULL},
    {"<Code>", NULL, "Code", NULL},
    {"<<<<Code>a</Code>", NULL, "Code", "a"},
    {"<Code>a</Cod", NULL, "Code", NULL},
    {"<Code>&amp</Code>", NULL, "Code", "&amp"},
};

static void t_xml_table(void)
{
	char out[64];
	size_t i;

	for (i = 0; i < sizeof(XML_ROWS) / sizeof(XML_ROWS[0]); i++) {
		const struct xml_row *r = &XML_ROWS[i];
		int got =
		    ses_api_xml_text(r->xml, strlen(r->xml), r->scope, r->tag, out, sizeof(out));
		if ((got == 0) != (r->want != NULL) || (r->want && strcmp(out, r->want) != 0))
			fprintf(stderr, "row %zu: %s -> \"%s\"\n", i, r->xml, got ? "-" : out);
		CHECK_INT(got, r->want ? 0 : -1);
		if (r->want)
			CHECK_STR(out, r->want);
	}
	CHECK_INT(ses_api_xml_text("<C>abcdef</C>", 13, NULL, "C", out, 4), 0);
	CHECK_STR(out, "abc");
	CHECK_INT(ses_api_xml_text("<C>abc</C>", 8, NULL, "C", out, sizeof(out)), -1);
}

static void t_account_parse(void)
{
	static const char prod[] =
	    "{\"DedicatedIpAutoWarmupEnabled\":false,\"Details\":{\"MailType\":\"TRANSACTIONAL\"},"
	    "\"EnforcementStatus\":\"HEALTHY\",\"ProductionAccessEnabled\":true,\"SendQuota\":"
	    "{\"Max24HourSend\":50000.0,\"MaxSendRate\":14.0,\"SentLast24Hours\":1234.0},"
	    "\"SendingEnabled\":true,\"SuppressionAttributes\":{\"SuppressedReasons\":[\"BOUNCE\"]}"
	    "}";
	static const char sandbox[] =
	    "{\"ProductionAccessEnabled\":false,\"SendQuota\":{\"Max24HourSend\":200.0,"
	    "\"MaxSendRate\":1.0,\"SentLast24Hours\":0.0},\"SendingEnabled\":false}";
	static const char unlimited[] =
	    "{\"SendQuota\":{\"Max24HourSend\":-1.0,\"MaxSendRate\":500.0}}";
	struct ses_api_account a;

	CHECK_INT(ses_api_parse_account(prod, strlen(prod), &a), 0);
	CHECK(a.max_send_rate == 14 && a.max_24h == 50000 && a.sent_24h == 1234);
	CHECK(a.production == 1 && a.sending_enabled == 1);
	CHECK_INT(ses_api_parse_account(sandbox, strlen(sandbox), &a), 0);
	CHECK(a.max_send_rate == 1 && a.max_24h == 200 && a.sent_24h == 0);
	CHECK(a.production == 0 && a.sending_enabled == 0);
	CHECK_INT(ses_api_parse_account(unlimited, strlen(unlimited), &a), 0);
	CHECK(a.max_24h == -1 && a.max_send_rate == 500 && a.sending_enabled == 1);
	CHECK_INT(ses_api_parse_account("{\"MaxSendRate\":1}", 17, &a), -1);
	CHECK_INT(ses_api_parse_account("{\"SendQuota\":{}}", 16, &a), -1);
	CHECK_INT(ses_api_parse_account("<html>", 6, &a), -1);
	CHECK_INT(ses_api_parse_account("", 0, &a), -1);
	CHECK_INT(ses_api_parse_account("{\"SendQuota\":{\"MaxSendRate\":-3}}", 32, &a), -1);
}

/* ========================================================================= */
/* 2. Request bodies                                                         */
/* ========================================================================= */

static void t_body_v2(void)
{
	const char *rcpts[] = {"b@y.example", "c\"q@z.example"};
	const char *one[] = {"b@y"};
	const char *odd[] = {"a\\b\t\x7f\x01@x", "caf\xc3\xa9@x"};
	char *s;

	s = body_string(2, "a@x.example", rcpts, 2, "cs1", "hi");
	CHECK_STR(
	    s, "{\"FromEmailAddress\":\"a@x.example\",\"Destination\":{\"ToAddresses\":"
	       "[\"b@y.example\",\"c\\\"q@z.example\"]},\"Content\":{\"Raw\":{\"Data\":\"aGk=\"}},"
	       "\"ConfigurationSetName\":\"cs1\"}");
	free(s);
	/* null sender and no configuration set: both left out */
	s = body_string(2, "", one, 1, NULL, "");
	CHECK_STR(
	    s,
	    "{\"Destination\":{\"ToAddresses\":[\"b@y\"]},\"Content\":{\"Raw\":{\"Data\":\"\"}}}");
	free(s);
	s = body_string(2, NULL, one, 1, "", "abc");
	CHECK_STR(s, "{\"Destination\":{\"ToAddresses\":[\"b@y\"]},\"Content\":{\"Raw\":{\"Data\":"
	             "\"YWJj\"}}}");
	free(s);
	/* escaping: backslash, controls and DEL as \u00XX, UTF-8 as is */
	s = body_string(2, "\"q\"@x", odd, 2, "c\"s", "?");
	CHECK_STR(s, "{\"FromEmailAddress\":\"\\\"q\\\"@x\",\"Destination\":{\"ToAddresses\":"
	             "[\"a\\\\b\\u0009\\u007f\\u0001@x\",\"caf\xc3\xa9@x\"]},\"Content\":{\"Raw\":"
	             "{\"Data\":\"Pw==\"}},\"ConfigurationSetName\":\"c\\\"s\"}");
	free(s);
}

static void t_body_v1(void)
{
	const char *rcpts[] = {"b@y", "c d@z", "x+y@\xc3\xa9"};
	const char *many[50];
	char names[50][32];
	char *s, *p, want[64];
	size_t i;

	s = body_string(1, "a+b@x", rcpts, 3, "my set", "hi?");
	CHECK_STR(s, "Action=SendRawEmail&Version=2010-12-01&Source=a%2Bb%40x"
	             "&Destinations.member.1=b%40y&Destinations.member.2=c%20d%40z"
	             "&Destinations.member.3=x%2By%40%C3%A9&RawMessage.Data=aGk%2F"
	             "&ConfigurationSetName=my%20set");
	free(s);
	s = body_string(1, "", rcpts, 1, NULL, "hi");
	CHECK_STR(s, "Action=SendRawEmail&Version=2010-12-01&Destinations.member.1=b%40y"
	             "&RawMessage.Data=aGk%3D");
	free(s);
	s = body_string(1, "", rcpts, 1, NULL, "");
	CHECK_STR(s, "Action=SendRawEmail&Version=2010-12-01&Destinations.member.1=b%40y"
	             "&RawMessage.Data=");
	free(s);
	/* 50 members, numbered from 1, in order */
	for (i = 0; i < 50; i++) {
		snprintf(names[i], sizeof(names[i]), "r%zu@x", i + 1);
		many[i] = names[i];
	}
	s = body_string(1, "s@x", many, 50, NULL, "m");
	p = s;
	for (i = 0; i < 50; i++) {
		snprintf(want, sizeof(want), "&Destinations.member.%zu=r%zu%%40x&", i + 1, i + 1);
		p = strstr(p, want);
		CHECK(p != NULL);
	}
	CHECK(strstr(s, "member.51") == NULL && strstr(s, "member.0") == NULL);
	free(s);
}

/* The body the encoder must produce, built in memory another way. */
static char *expected_body(const struct ses_api_body *b, const unsigned char *data, size_t len,
                           size_t *outlen)
{
	char *enc = b64(data, len), *body;

	if (b->form) {
		char *p = pct_b64(enc);
		free(enc);
		enc = p;
	}
	body = xasprintf("%.*s%s%.*s", (int)b->head_len, b->head, enc, (int)b->tail_len, b->tail);
	*outlen = strlen(body);
	free(enc);
	return body;
}

/* One size, one chunk, one read step, one hash budget: both passes. */
static int stream_case(int version, size_t size, size_t chunk, size_t step, size_t budget)
{
	const char *rcpts[] = {"r1@example.com", "r2+x@example.com"};
	unsigned char *data = xmalloc(size + 1);
	char hex[SIGV4_HEX_SIZE], want_hex[SIGV4_HEX_SIZE], *want, *got = NULL;
	struct ses_api_body b;
	struct sigv4_sha256 *sha;
	size_t want_len, got_len = 0;
	uint64_t hashed_len;
	int fd, r, slices = 0, ok = 0;

	fill_random(data, size);
	fd = temp_message(data, size, 4097);
	ses_api_body_init(&b, version, "s@example.com", rcpts, 2, "cs", fd, 4097, size);
	b.chunk = chunk;
	want = expected_body(&b, data, size, &want_len);
	/* pass 1 in slices */
	sha = sigv4_sha256_new();
	while ((r = ses_api_body_hash(&b, sha, budget)) == 0)
		slices++;
	sigv4_sha256_final(sha, hex);
	sigv4_sha256_free(sha);
	hashed_len = b.produced;
	/* pass 2 */
	ses_api_body_rewind(&b);
	got = read_all(&b, step, &got_len);
	sigv4_sha256_hex(want, want_len, want_hex);
	ok = r == 1 && got != NULL && got_len == want_len && memcmp(got, want, want_len) == 0 &&
	     hashed_len == want_len && strcmp(hex, want_hex) == 0 && b.produced == want_len &&
	     (want_len <= budget + 16384 || slices > 0); /* sliced when it is long */
	if (!ok)
		fprintf(stderr,
		        "v%d size=%zu chunk=%zu step=%zu budget=%zu: r=%d len %zu/%ju/%zu\n",
		        version, size, chunk, step, budget, r, got_len, (uintmax_t)hashed_len,
		        want_len);
	/* a third read after rewind: same bytes again */
	ses_api_body_rewind(&b);
	free(got);
	got = read_all(&b, 65536, &got_len);
	ok = ok && got && got_len == want_len && memcmp(got, want, want_len) == 0;
	free(got);
	free(want);
	free(data);
	ses_api_body_free(&b);
	close(fd);
	return ok;
}

static void t_stream_small(void)
{
	static const size_t sizes[] = {0, 1, 2, 3, 4, 5, 6, 7, 56, 57, 58};
	static const size_t chunks[] = {3, 6, 48, SES_API_CHUNK};
	static const size_t steps[] = {1, 2, 3, 7, 4096};
	static const size_t budgets[] = {1, 100, 1 << 20};
	size_t a, b, c, d;
	int v;

	for (v = 1; v <= 2; v++)
		for (a = 0; a < sizeof(sizes) / sizeof(sizes[0]); a++)
			for (b = 0; b < sizeof(chunks) / sizeof(chunks[0]); b++)
				for (c = 0; c < sizeof(steps) / sizeof(steps[0]); c++)
					for (d = 0; d < sizeof(budgets) / sizeof(budgets[0]); d++)
						CHECK(stream_case(v, sizes[a], chunks[b], steps[c],
						                  budgets[d]));
}

static void t_stream_1mb(void)
{
	static const struct {
		size_t chunk, step, budget;
	} rows[] = {
	    {SES_API_CHUNK, 65536, 1 << 20},
	    {SES_API_CHUNK, 1, 1 << 20},
	    {SES_API_CHUNK, 16385, 100000},
	    {3000, 4096, 1 << 20},
	    {3, 65536, 1 << 20},
	    {SES_API_CHUNK * 30, 65536, 1 << 18},
	};
	size_t i;
	int v;

	for (v = 1; v <= 2; v++)
		for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
			CHECK(stream_case(v, 1024 * 1024 + 1, rows[i].chunk, rows[i].step,
			                  rows[i].budget));
}

/* A queue file shorter than data_len, or unreadable: an error, never a short body. */
static void t_stream_read_errors(void)
{
	const char *rcpts[] = {"r@x"};
	unsigned char data[100];
	struct ses_api_body b;
	struct sigv4_sha256 *sha;
	char buf[4096];
	int fd;

	fill_random(data, sizeof(data));
	fd = temp_message(data, sizeof(data), 10); /* 10 + 100 + 100 bytes */
	ses_api_body_init(&b, 2, "", rcpts, 1, NULL, fd, 10, 1000);
	sha = sigv4_sha256_new();
	CHECK_INT(ses_api_body_hash(&b, sha, 1 << 20), -1);
	CHECK_INT(b.err, EIO);
	sigv4_sha256_free(sha);
	ses_api_body_rewind(&b);
	CHECK_INT(b.err, 0);
	CHECK_INT(ses_api_body_read(&b, buf, sizeof(buf)), -1);
	ses_api_body_free(&b);
	close(fd);
	ses_api_body_init(&b, 1, "", rcpts, 1, NULL, fd /* closed */, 0, 10);
	CHECK_INT(ses_api_body_read(&b, buf, sizeof(buf)), -1);
	CHECK_INT(b.err, EBADF);
	ses_api_body_free(&b);
}

/* Buffers per delivery do not grow with the message. */
static void t_stream_memory(void)
{
	const char *rcpts[] = {"r@x"};
	struct ses_api_body b;
	struct sigv4_sha256 *sha;
	char buf[65536];
	int fd = temp_message(NULL, 0, 0);
	uint64_t size = 30ULL * 1024 * 1024;

	/* a sparse 30 MiB message: zeros, no disk */
	CHECK(ftruncate(fd, (off_t)size + 100) == 0); /* after 100 junk bytes */
	ses_api_body_init(&b, 1, "", rcpts, 1, NULL, fd, 100, size);
	sha = sigv4_sha256_new();
	CHECK_INT(ses_api_body_read(&b, buf, sizeof(buf)), sizeof(buf));
	/* the only buffers: one chunk and its base64 */
	CHECK(b.chunk + b.chunk / 3 * 4 + 1 + b.head_len + b.tail_len < 256 * 1024);
	ses_api_body_rewind(&b);
	while (ses_api_body_hash(&b, sha, 8 << 20) == 0)
		;
	/* base64 of zeros is "AAAA": nothing to percent-encode */
	CHECK(b.produced == b.head_len + size / 3 * 4 + b.tail_len);
	sigv4_sha256_free(sha);
	ses_api_body_free(&b);
	close(fd);
}

/* ========================================================================= */
/* 3. The transport against a fake SES on 127.0.0.1                          */
/* ========================================================================= */

struct fake {
	struct evhttp *http;
	int port;
	/* answers */
	int status;
	const char *body, *errtype;
	int hold;         /* keep send requests unanswered */
	int hold_account; /* and GetAccount */
	struct evhttp_request *held_account;
	int account_status;
	const char *account_body;
	/* what arrived */
	int sends, account_calls, bad_sigs, held_n;
	struct evhttp_request *held[4];
	char *uri, *ctype, *auth, *token, *signed_headers;
	unsigned char *req_body;
	size_t req_len;
	unsigned ticks_at_send; /* the loop-turn counter when the request arrived */
};

struct ctx {
	struct event_base *base;
	struct ses_http *http;
	struct fake fake;
	struct ses_creds creds;
	struct conf conf;
	struct transport *t;
	char endpoint[64];
	struct event *ticker;
	unsigned ticks;
};

struct result {
	int done, in_send;
	struct delivery d;
};

static int in_send, total_done;
static struct ctx *cur_ctx;

static const char *hdr(struct evhttp_request *req, const char *name)
{
	return evhttp_find_header(evhttp_request_get_input_headers(req), name);
}

/* Re-sign what arrived, with the bytes that arrived: must equal Authorization. */
static int fake_verify(struct evhttp_request *req, const unsigned char *body, size_t len)
{
	const char *auth = hdr(req, "Authorization"), *sh, *date = hdr(req, "X-Amz-Date");
	char hex[SIGV4_HEX_SIZE], names[256], *name, *save = NULL;
	struct sigv4_header hs[8];
	struct sigv4_request sr;
	struct sigv4_signed s;
	size_t n = 0;
	int ok;

	if (auth == NULL || date == NULL || (sh = strstr(auth, "SignedHeaders=")) == NULL)
		return 0;
	snprintf(names, sizeof(names), "%.*s", (int)strcspn(sh + 14, ","), sh + 14);
	for (name = strtok_r(names, ";", &save); name && n < 8; name = strtok_r(NULL, ";", &save)) {
		hs[n].name = name;
		if ((hs[n].value = hdr(req, name)) == NULL)
			return 0;
		n++;
	}
	sigv4_sha256_hex(body, len, hex);
	memset(&sr, 0, sizeof(sr));
	sr.method = evhttp_request_get_command(req) == EVHTTP_REQ_GET ? "GET" : "POST";
	sr.path = evhttp_request_get_uri(req);
	sr.headers = hs;
	sr.nheaders = n;
	sr.payload_hash = hex;
	sr.region = REGION;
	sr.service = "ses";
	sr.amz_date = date;
	memset(&s, 0, sizeof(s));
	ok = sigv4_sign(&sr, cur_ctx->creds.cur ? cur_ctx->creds.cur : &KEYS, &s) == 0 &&
	     strcmp(s.authorization, auth) == 0;
	sigv4_signed_free(&s);
	return ok;
}

static void fake_reply(struct evhttp_request *req, int status, const char *errtype,
                       const char *body)
{
	struct evbuffer *out = evbuffer_new();

	if (errtype)
		evhttp_add_header(evhttp_request_get_output_headers(req), "x-amzn-ErrorType",
		                  errtype);
	evhttp_add_header(evhttp_request_get_output_headers(req), "x-amzn-RequestId", "req-1");
	evbuffer_add(out, body, strlen(body));
	evhttp_send_reply(req, status, "X", out);
	evbuffer_free(out);
}

static char *xstrdup_or_null(const char *s)
{
	return s ? xstrdup(s) : NULL;
}

static void fake_cb(struct evhttp_request *req, void *arg)
{
	struct fake *f = arg;
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	unsigned char *body = xmalloc(len + 1);
	const char *auth, *sh;

	evbuffer_remove(in, body, len);
	if (!fake_verify(req, body, len))
		f->bad_sigs++;
	if (strcmp(evhttp_request_get_uri(req), "/v2/email/account") == 0) {
		f->account_calls++;
		free(body);
		if (f->hold_account) {
			f->held_account = req;
			return;
		}
		fake_reply(req, f->account_status, f->account_status == 200 ? NULL : "AccessDenied",
		           f->account_body);
		return;
	}
	f->sends++;
	f->ticks_at_send = cur_ctx->ticks;
	free(f->uri);
	free(f->ctype);
	free(f->auth);
	free(f->token);
	free(f->signed_headers);
	free(f->req_body);
	f->uri = xstrdup(evhttp_request_get_uri(req));
	f->ctype = xstrdup_or_null(hdr(req, "Content-Type"));
	f->auth = xstrdup_or_null(auth = hdr(req, "Authorization"));
	f->token = xstrdup_or_null(hdr(req, "X-Amz-Security-Token"));
	f->signed_headers = NULL;
	if (auth && (sh = strstr(auth, "SignedHeaders=")) != NULL)
		f->signed_headers = xstrndup(sh + 14, strcspn(sh + 14, ","));
	f->req_body = body;
	f->req_len = len;
	if (f->hold && f->held_n < 4) {
		f->held[f->held_n++] = req;
		return;
	}
	fake_reply(req, f->status, f->errtype, f->body);
}

static void tick(evutil_socket_t fd, short what, void *arg)
{
	struct ctx *c = arg;
	static const struct timeval now = {0, 0};

	c->ticks++;
	event_add(c->ticker, &now);
}

static void ctx_init(struct ctx *c, int version, int concurrency, const char *endpoint)
{
	struct evhttp_bound_socket *bs;
	struct sockaddr_in sin;
	socklen_t sl = sizeof(sin);

	memset(c, 0, sizeof(*c));
	cur_ctx = c;
	c->base = event_base_new();
	c->fake.http = evhttp_new(c->base);
	evhttp_set_gencb(c->fake.http, fake_cb, &c->fake);
	bs = evhttp_bind_socket_with_handle(c->fake.http, "127.0.0.1", 0);
	if (bs == NULL ||
	    getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sin, &sl) == -1) {
		perror("evhttp bind");
		exit(2);
	}
	c->fake.port = ntohs(sin.sin_port);
	c->fake.status = 200;
	c->fake.body = "{\"MessageId\":\"0101-test\"}";
	c->fake.account_status = 200;
	c->fake.account_body = "{\"ProductionAccessEnabled\":true,\"SendQuota\":{\"Max24HourSend\":"
	                       "50000.0,\"MaxSendRate\":14.0,\"SentLast24Hours\":1234.0},"
	                       "\"SendingEnabled\":true}";
	snprintf(c->endpoint, sizeof(c->endpoint), "http://127.0.0.1:%d", c->fake.port);
	c->creds.cur = &KEYS;
	c->conf.region = REGION;
	c->conf.api_version = version;
	c->conf.concurrency = concurrency;
	c->conf.endpoint = (char *)(endpoint ? endpoint : c->endpoint);
	c->http = ses_http_new(c->base, NULL, concurrency);
	c->t = ses_api_transport_new(c->base, c->http, &c->creds, &c->conf);
	c->ticker = evtimer_new(c->base, tick, c);
}

static void ctx_free(struct ctx *c)
{
	struct fake *f = &c->fake;

	if (c->t)
		c->t->free(c->t);
	ses_http_free(c->http);
	evhttp_free(f->http);
	event_free(c->ticker);
	event_base_free(c->base);
	free(f->uri);
	free(f->ctype);
	free(f->auth);
	free(f->token);
	free(f->signed_headers);
	free(f->req_body);
	cur_ctx = NULL;
}

static void noop(evutil_socket_t fd, short what, void *arg)
{
}

/* Run the loop until *counter >= target or `secs` pass; 1 if reached. */
static int run_until(struct ctx *c, const int *counter, int target, double secs)
{
	double end = util_monotime() + secs;
	struct event *keep = event_new(c->base, -1, EV_PERSIST, noop, NULL);
	struct timeval tv = {0, 10000};

	event_add(keep, &tv);
	while (*counter < target && util_monotime() < end)
		event_base_loop(c->base, EVLOOP_ONCE);
	event_free(keep);
	return *counter >= target;
}

static void on_done(struct delivery *d)
{
	struct result *r = d->arg;

	r->done++;
	r->in_send = in_send;
	total_done++;
}

static void result_init(struct result *r, int fd, uint64_t off, uint64_t len, const char *sender,
                        size_t nrcpts)
{
	static const char *const rcpts[] = {"a@example.net", "b@example.net", "c@example.net"};
	size_t i;

	memset(r, 0, sizeof(*r));
	r->d.id = "TESTQID";
	r->d.fd = fd;
	r->d.data_offset = off;
	r->d.data_len = len;
	r->d.sender = sender;
	for (i = 0; i < nrcpts; i++)
		r->d.rcpts[i] = rcpts[i % 3];
	r->d.nrcpts = nrcpts;
	r->d.done = on_done;
	r->d.arg = r;
}

static void send_it(struct ctx *c, struct result *r)
{
	in_send = 1;
	c->t->send(c->t, &r->d);
	in_send = 0;
}

static int all_texts(const struct result *r, enum delivery_status st, const char *text)
{
	for (size_t i = 0; i < r->d.nrcpts; i++)
		if (r->d.status[i] != st || strcmp(r->d.text[i], text) != 0) {
			fprintf(stderr, "rcpt %zu: %d \"%s\"\n", i, r->d.status[i], r->d.text[i]);
			return 0;
		}
	return 1;
}

static void t_transport_new(void)
{
	struct ctx c;
	static const struct {
		const char *endpoint;
		int ok;
	} rows[] = {
	    {"https://email.us-west-2.amazonaws.com", 1},
	    {"https://email.us-west-2.amazonaws.com/", 1},
	    {"http://127.0.0.1:8443", 1},
	    {"HTTPS://[::1]:8443/", 1},
	    {"ftp://x", 0},
	    {"https://", 0},
	    {"https://host/path", 0},
	    {"https://user@host", 0},
	    {"https://host?x", 0},
	    {"https://ho st", 0},
	    {"email.us-west-2.amazonaws.com", 0},
	};
	size_t i;
	double q;

	log_set_level(LOG_LEVEL_ERROR); /* the bad endpoints log errors */
	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		ctx_init(&c, 2, 4, rows[i].endpoint);
		CHECK_INT(c.t != NULL, rows[i].ok);
		ctx_free(&c);
	}
	ctx_init(&c, 2, 4, "");
	CHECK(c.t != NULL);
	CHECK_STR(c.t->name, "ses-api[us-west-2]");
	CHECK_INT(c.t->max_size(c.t), 41943040);
	CHECK_INT(c.t->capacity(c.t), 4);
	CHECK(c.t->send_rate(c.t, &q) == 0 && q == -1); /* not known yet */
	ctx_free(&c);
	ctx_init(&c, 1, 0, NULL);
	CHECK_INT(c.t->max_size(c.t), 10485760);
	CHECK_INT(c.t->capacity(c.t), 1);
	ctx_free(&c);
	memset(&c, 0, sizeof(c));
	c.conf.endpoint = "http://127.0.0.1:1";
	CHECK(ses_api_transport_new(NULL, NULL, NULL, &c.conf) == NULL); /* no region */
	log_set_level(LOG_LEVEL_INFO);
}

/* v2, three recipients: SENT for all; the fake received exactly the body
 * built in memory, signed over exactly those bytes. */
static void t_transport_v2_sent(void)
{
	unsigned char data[5000];
	struct result r;
	struct ctx c;
	char *enc, *want;
	int fd;

	fill_random(data, sizeof(data));
	fd = temp_message(data, sizeof(data), 333);
	ctx_init(&c, 2, 4, NULL);
	c.conf.configuration_set = NULL;
	result_init(&r, fd, 333, sizeof(data), "s@example.com", 3);
	send_it(&c, &r);
	CHECK_INT(r.done, 0);
	CHECK_INT(c.t->capacity(c.t), 3);
	CHECK(run_until(&c, &r.done, 1, 10));
	CHECK_INT(r.in_send, 0);
	CHECK(all_texts(&r, DELIVERY_SENT, "MessageId 0101-test"));
	CHECK_INT(c.t->capacity(c.t), 4);
	CHECK_INT(c.fake.sends, 1);
	CHECK_INT(c.fake.bad_sigs, 0);
	CHECK_STR(c.fake.uri, "/v2/email/outbound-emails");
	CHECK_STR(c.fake.ctype, "application/json");
	CHECK_STR(c.fake.signed_headers, "content-type;host;x-amz-date");
	CHECK(c.fake.token == NULL);
	CHECK(strncmp(c.fake.auth, "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/", 40) == 0);
	CHECK(strstr(c.fake.auth, "/us-west-2/ses/aws4_request") != NULL);
	enc = b64(data, sizeof(data));
	want = xasprintf("{\"FromEmailAddress\":\"s@example.com\",\"Destination\":{\"ToAddresses\":"
	                 "[\"a@example.net\",\"b@example.net\",\"c@example.net\"]},\"Content\":"
	                 "{\"Raw\":{\"Data\":\"%s\"}}}",
	                 enc);
	CHECK_INT(c.fake.req_len, strlen(want));
	CHECK(memcmp(c.fake.req_body, want, c.fake.req_len) == 0);
	free(enc);
	free(want);
	ctx_free(&c);
	close(fd);
}

/* v1 with temporary credentials and a configuration set, 3 MB: several
 * pass-1 slices with the loop turning between them. */
static void t_transport_v1_token_big(void)
{
	size_t size = 3 * 1024 * 1024 + 2;
	unsigned char *data = xmalloc(size);
	struct result r;
	struct ctx c;
	char *enc, *pct, *want;
	int fd;

	fill_random(data, size);
	fd = temp_message(data, size, 1);
	ctx_init(&c, 1, 2, NULL);
	c.creds.cur = &TEMP_KEYS;
	c.t->free(c.t);
	c.conf.configuration_set = "cs one";
	c.t = ses_api_transport_new(c.base, c.http, &c.creds, &c.conf);
	c.fake.body = "<SendRawEmailResponse><SendRawEmailResult><MessageId>v1-id</MessageId>"
	              "</SendRawEmailResult></SendRawEmailResponse>";
	result_init(&r, fd, 1, size, "", 1);
	event_add(c.ticker, &(struct timeval){0, 0});
	send_it(&c, &r);
	CHECK(run_until(&c, &r.done, 1, 60));
	CHECK(all_texts(&r, DELIVERY_SENT, "MessageId v1-id"));
	CHECK_INT(c.fake.bad_sigs, 0);
	CHECK_STR(c.fake.uri, "/");
	CHECK_STR(c.fake.ctype, "application/x-www-form-urlencoded; charset=utf-8");
	CHECK_STR(c.fake.signed_headers, "content-type;host;x-amz-date;x-amz-security-token");
	CHECK_STR(c.fake.token, TOKEN);
	/* 4 MiB of form body at 1 MiB a slice: the loop turned in between */
	CHECK(c.fake.ticks_at_send >= 4);
	enc = b64(data, size);
	pct = pct_b64(enc);
	want =
	    xasprintf("Action=SendRawEmail&Version=2010-12-01&Destinations.member.1=a%%40example."
	              "net&RawMessage.Data=%s&ConfigurationSetName=cs%%20one",
	              pct);
	CHECK_INT(c.fake.req_len, strlen(want));
	CHECK(memcmp(c.fake.req_body, want, c.fake.req_len) == 0);
	free(enc);
	free(pct);
	free(want);
	free(data);
	ctx_free(&c);
	close(fd);
}

struct wire_row {
	int status;
	const char *errtype, *body;
	enum delivery_status want;
	const char *text;
};

static void t_transport_errors(void)
{
	static const struct wire_row rows[] = {
	    {400, "MessageRejected", "{\"message\":\"Email address is not verified.\"}",
	     DELIVERY_BOUNCE, "400 MessageRejected: Email address is not verified."},
	    {429, "TooManyRequestsException", "{\"message\":\"Maximum sending rate exceeded.\"}",
	     DELIVERY_THROTTLED, "429 TooManyRequestsException: Maximum sending rate exceeded."},
	    {429, "TooManyRequestsException", "{\"message\":\"Daily message quota exceeded.\"}",
	     DELIVERY_QUOTA, "429 TooManyRequestsException: Daily message quota exceeded."},
	    {403, "SignatureDoesNotMatch", "{\"message\":\"no\"}", DELIVERY_OPERATOR,
	     "403 SignatureDoesNotMatch: no"},
	    {503, NULL, "", DELIVERY_DEFER, "503 (no error details)"},
	    {200, NULL, "{}", DELIVERY_DEFER, "200 answer without a MessageId: {}"},
	};
	unsigned char data[10] = "0123456789";
	struct result r;
	struct ctx c;
	size_t i;
	int fd = temp_message(data, sizeof(data), 0);

	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		ctx_init(&c, 2, 1, NULL);
		c.fake.status = rows[i].status;
		c.fake.errtype = rows[i].errtype;
		c.fake.body = rows[i].body;
		result_init(&r, fd, 0, sizeof(data), "s@x", 2);
		send_it(&c, &r);
		CHECK(run_until(&c, &r.done, 1, 10));
		CHECK_INT(r.in_send, 0);
		CHECK(all_texts(&r, rows[i].want, rows[i].text));
		CHECK_INT(c.creds.refreshed, 0);
		ctx_free(&c);
	}
	/* ExpiredToken asks the credentials chain for a refresh */
	ctx_init(&c, 2, 1, NULL);
	c.fake.status = 403;
	c.fake.errtype = "ExpiredTokenException";
	c.fake.body = "{\"message\":\"The security token included in the request is expired\"}";
	result_init(&r, fd, 0, sizeof(data), "s@x", 1);
	send_it(&c, &r);
	CHECK(run_until(&c, &r.done, 1, 10));
	CHECK_INT(r.d.status[0], DELIVERY_OPERATOR);
	CHECK_INT(c.creds.refreshed, 1);
	ctx_free(&c);
	close(fd);
}

static void t_transport_refused(void)
{
	struct sockaddr_in sin;
	socklen_t sl = sizeof(sin);
	char ep[64];
	struct result r;
	struct ctx c;
	int s = socket(AF_INET, SOCK_STREAM, 0),
	    fd = temp_message((const unsigned char *)"x", 1, 0);

	/* a port that was free a moment ago: nothing listens there */
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	CHECK(bind(s, (struct sockaddr *)&sin, sizeof(sin)) == 0);
	CHECK(getsockname(s, (struct sockaddr *)&sin, &sl) == 0);
	close(s);
	snprintf(ep, sizeof(ep), "http://127.0.0.1:%d", ntohs(sin.sin_port));
	log_set_level(LOG_LEVEL_ERROR);
	ctx_init(&c, 2, 1, ep);
	result_init(&r, fd, 0, 1, "", 1);
	send_it(&c, &r);
	CHECK(run_until(&c, &r.done, 1, 15));
	CHECK_INT(r.d.status[0], DELIVERY_DEFER);
	CHECK(strncmp(r.d.text[0], "no answer from SES: ", 20) == 0);
	ctx_free(&c);
	close(fd);
	log_set_level(LOG_LEVEL_INFO);
}

static void t_transport_no_creds(void)
{
	struct result r;
	struct ctx c;
	int fd = temp_message((const unsigned char *)"x", 1, 0);

	ctx_init(&c, 2, 1, NULL);
	c.creds.cur = NULL;
	result_init(&r, fd, 0, 1, "", 2);
	send_it(&c, &r);
	CHECK_INT(r.done, 0);
	CHECK_INT(c.t->capacity(c.t), 0);
	CHECK(run_until(&c, &r.done, 1, 5));
	CHECK_INT(r.in_send, 0);
	CHECK(all_texts(&r, DELIVERY_DEFER, "no AWS credentials available yet"));
	CHECK_INT(c.fake.sends, 0);
	CHECK_INT(c.fake.account_calls, 0);
	CHECK_INT(c.t->capacity(c.t), 1);
	ctx_free(&c);
	close(fd);
}

static void t_transport_short_file(void)
{
	struct result r;
	struct ctx c;
	int fd = temp_message((const unsigned char *)"short", 5, 0);

	ctx_init(&c, 2, 1, NULL);
	result_init(&r, fd, 0, 100000, "", 1);
	send_it(&c, &r);
	CHECK(run_until(&c, &r.done, 1, 5));
	CHECK_INT(r.d.status[0], DELIVERY_DEFER);
	CHECK_STR(r.d.text[0], "cannot read the queue file: Input/output error");
	CHECK_INT(c.fake.sends, 0);
	ctx_free(&c);
	close(fd);
}

/*
 * The queue file shrinks between pass 1 and pass 2: the reader aborts the
 * upload rather than send fewer bytes than were signed.  With one connection
 * per host and GetAccount holding it, the send waits in libcurl, hashed.
 */
static void t_transport_file_shrinks(void)
{
	unsigned char data[3000];
	struct result r;
	struct ctx c;
	int fd, never = 0;

	fill_random(data, sizeof(data));
	fd = temp_message(data, sizeof(data), 0);
	ctx_init(&c, 2, 1, NULL);
	c.fake.hold_account = 1;
	CHECK(run_until(&c, &c.fake.account_calls, 1, 10));
	result_init(&r, fd, 0, sizeof(data), "", 1);
	send_it(&c, &r);
	run_until(&c, &never, 1, 0.3); /* pass 1 is done; the call waits for the connection */
	CHECK_INT(r.done, 0);
	CHECK(ftruncate(fd, 1000) == 0);
	fake_reply(c.fake.held_account, 200, NULL, c.fake.account_body);
	CHECK(run_until(&c, &r.done, 1, 10));
	CHECK_INT(r.d.status[0], DELIVERY_DEFER);
	CHECK_STR(r.d.text[0], "cannot read the queue file: Input/output error");
	CHECK_INT(c.fake.sends, 0);
	ctx_free(&c);
	close(fd);
}

/* At most `concurrency` in flight; capacity comes back as each one ends. */
static void t_transport_concurrency(void)
{
	struct result r[2];
	struct ctx c;
	int fd = temp_message((const unsigned char *)"msg", 3, 0);

	ctx_init(&c, 2, 2, NULL);
	c.fake.hold = 1;
	result_init(&r[0], fd, 0, 3, "", 1);
	result_init(&r[1], fd, 0, 3, "", 1);
	CHECK_INT(c.t->capacity(c.t), 2);
	send_it(&c, &r[0]);
	CHECK_INT(c.t->capacity(c.t), 1);
	send_it(&c, &r[1]);
	CHECK_INT(c.t->capacity(c.t), 0);
	CHECK(run_until(&c, &c.fake.held_n, 2, 10));
	CHECK_INT(r[0].done + r[1].done, 0);
	CHECK_INT(c.t->capacity(c.t), 0);
	total_done = 0;
	fake_reply(c.fake.held[1], 200, NULL, "{\"MessageId\":\"second\"}");
	CHECK(run_until(&c, &total_done, 1, 10));
	CHECK_INT(r[0].done + r[1].done, 1);
	CHECK_INT(c.t->capacity(c.t), 1);
	fake_reply(c.fake.held[0], 200, NULL, "{\"MessageId\":\"first\"}");
	CHECK(run_until(&c, &total_done, 2, 10));
	CHECK_INT(r[0].done + r[1].done, 2);
	CHECK_INT(c.t->capacity(c.t), 2);
	/* the first request to arrive got the first answer */
	CHECK(r[0].d.status[0] == DELIVERY_SENT && r[1].d.status[0] == DELIVERY_SENT);
	CHECK(strcmp(r[0].d.text[0], r[1].d.text[0]) != 0);
	CHECK_INT(c.fake.bad_sigs, 0);
	ctx_free(&c);
	close(fd);
}

/* free() with one delivery hashing and one waiting for SES: no done(), no leak. */
static void t_transport_free_in_flight(void)
{
	size_t size = 4 * 1024 * 1024;
	unsigned char *data = xcalloc(1, size);
	struct result r[3];
	struct ctx c;
	int fd = temp_message(data, size, 0), i;

	ctx_init(&c, 2, 3, NULL);
	c.fake.hold = 1;
	result_init(&r[0], fd, 0, 10, "", 1);
	send_it(&c, &r[0]);
	CHECK(run_until(&c, &c.fake.held_n, 1, 10));
	result_init(&r[1], fd, 0, size, "", 1); /* several slices: still hashing */
	send_it(&c, &r[1]);
	event_base_loop(c.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	event_base_loop(c.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	CHECK_INT(r[1].done, 0);
	c.creds.cur = NULL;
	result_init(&r[2], fd, 0, 10, "", 1); /* a FAILED report not yet made */
	send_it(&c, &r[2]);
	c.creds.cur = &KEYS;
	c.t->free(c.t);
	c.t = NULL;
	for (i = 0; i < 50; i++)
		event_base_loop(c.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	CHECK_INT(r[0].done + r[1].done + r[2].done, 0);
	ctx_free(&c);
	free(data);
	close(fd);
}

/* done() may start the next delivery, or free the transport. */
static struct ctx *reentry_ctx;
static struct result reentry_next;
static int reentry_fd;

static void on_done_send_next(struct delivery *d)
{
	struct result *r = d->arg;

	r->done++;
	if (reentry_ctx->t->capacity(reentry_ctx->t) == 1) {
		result_init(&reentry_next, reentry_fd, 0, 3, "", 1);
		reentry_ctx->t->send(reentry_ctx->t, &reentry_next.d);
	}
}

static void on_done_free(struct delivery *d)
{
	struct result *r = d->arg;

	r->done++;
	reentry_ctx->t->free(reentry_ctx->t);
	reentry_ctx->t = NULL;
}

static void t_transport_reentry(void)
{
	struct result r;
	struct ctx c;

	reentry_fd = temp_message((const unsigned char *)"abc", 3, 0);
	ctx_init(&c, 2, 1, NULL);
	reentry_ctx = &c;
	result_init(&r, reentry_fd, 0, 3, "", 1);
	r.d.done = on_done_send_next;
	send_it(&c, &r);
	CHECK(run_until(&c, &r.done, 1, 10));
	CHECK(run_until(&c, &reentry_next.done, 1, 10));
	CHECK_INT(reentry_next.d.status[0], DELIVERY_SENT);
	CHECK_INT(c.fake.sends, 2);
	/* free() from inside done(): the call that finished is not touched again */
	result_init(&r, reentry_fd, 0, 3, "", 1);
	r.d.done = on_done_free;
	send_it(&c, &r);
	CHECK(run_until(&c, &r.done, 1, 10));
	CHECK(c.t == NULL);
	event_base_loop(c.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	ctx_free(&c);
	close(reentry_fd);
}

static void t_transport_account(void)
{
	struct ctx c;
	double q, rate;
	int polls = 0;

	ctx_init(&c, 1, 1, NULL);
	CHECK(run_until(&c, &c.fake.account_calls, 1, 10));
	while (c.t->send_rate(c.t, &q) == 0 && polls++ < 200)
		event_base_loop(c.base, EVLOOP_ONCE);
	rate = c.t->send_rate(c.t, &q);
	CHECK(rate == 14);
	CHECK(q == 50000 - 1234);
	CHECK_INT(c.fake.bad_sigs, 0);
	ctx_free(&c);

	ctx_init(&c, 2, 1, NULL);
	c.fake.account_body = "{\"SendQuota\":{\"Max24HourSend\":-1.0,\"MaxSendRate\":200.0,"
	                      "\"SentLast24Hours\":5.0}}";
	CHECK(run_until(&c, &c.fake.account_calls, 1, 10));
	polls = 0;
	while (c.t->send_rate(c.t, &q) == 0 && polls++ < 200)
		event_base_loop(c.base, EVLOOP_ONCE);
	CHECK(c.t->send_rate(c.t, &q) == 200 && q == -1);
	CHECK(c.t->send_rate(c.t, NULL) == 200);
	ctx_free(&c);

	/* 403: the IAM policy lacks ses:GetAccount; unknown, warned once */
	log_set_level(LOG_LEVEL_ERROR);
	ctx_init(&c, 2, 1, NULL);
	c.fake.account_status = 403;
	c.fake.account_body = "{\"message\":\"not authorized to perform: ses:GetAccount\"}";
	CHECK(run_until(&c, &c.fake.account_calls, 1, 10));
	polls = 0;
	run_until(&c, &polls, 1, 0.3); /* let the answer come back */
	CHECK(c.t->send_rate(c.t, &q) == -1 && q == -1); /* failed: "will not know" */
	CHECK_INT(c.fake.account_calls, 1); /* not retried before 10 minutes */
	ctx_free(&c);

	/* no credentials yet: no call */
	ctx_init(&c, 2, 1, NULL);
	c.creds.cur = NULL;
	for (polls = 0; polls < 20; polls++)
		event_base_loop(c.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	CHECK_INT(c.fake.account_calls, 0);
	ctx_free(&c);
	log_set_level(LOG_LEVEL_INFO);
}

static const struct unit_case UNIT_TESTS[] = {
    {"classify_table", t_classify_table},
    {"answer_table", t_answer_table},
    {"answer_hostile", t_answer_hostile},
    {"json_table", t_json_table},
    {"json_numbers", t_json_numbers},
    {"xml_table", t_xml_table},
    {"account_parse", t_account_parse},
    {"body_v2", t_body_v2},
    {"body_v1", t_body_v1},
    {"stream_small", t_stream_small},
    {"stream_1mb", t_stream_1mb},
    {"stream_read_errors", t_stream_read_errors},
    {"stream_memory", t_stream_memory},
    {"transport_new", t_transport_new},
    {"transport_v2_sent", t_transport_v2_sent},
    {"transport_v1_token_big", t_transport_v1_token_big},
    {"transport_errors", t_transport_errors},
    {"transport_refused", t_transport_refused},
    {"transport_no_creds", t_transport_no_creds},
    {"transport_short_file", t_transport_short_file},
    {"transport_file_shrinks", t_transport_file_shrinks},
    {"transport_concurrency", t_transport_concurrency},
    {"transport_free_in_flight", t_transport_free_in_flight},
    {"transport_reentry", t_transport_reentry},
    {"transport_account", t_transport_account},
};

static void setup(void) __attribute__((constructor));
static void setup(void)
{
	/* curl honours proxy variables: never route the loopback fake through one */
	setenv("NO_PROXY", "*", 1);
	setenv("no_proxy", "*", 1);
}

UNIT_MAIN(UNIT_TESTS)
