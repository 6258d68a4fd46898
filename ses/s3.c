/*
 * s3.c - an S3 client for one bucket on the relay's loop: ListObjectsV2,
 * GetObject streamed into a sink, DeleteObject, CopyObject and an access
 * probe, each one signed HTTP call through ses_http (see s3.h).
 *
 * A call is tiny: sign with the credentials of the moment, hand ses_http the
 * request, turn its answer into a struct s3_result, report it once.  A
 * failure found before anything is sent (no credentials yet, a key too long)
 * is reported from a zero timer so that done() never runs inside the call
 * that started it.  Calls are linked into their client so s3_free() can cancel
 * them all.
 *
 * S3 signing differs from SES's in three ways that live here: the wire path is
 * the canonical URI as is (sigv4's s3_mode), x-amz-content-sha256 is always
 * sent and signed (SIGV4_EMPTY_SHA256 for bodiless requests), and keys are
 * encoded per byte with '/' kept.  curl must send "/./" and "/../" inside keys
 * as they are (path_as_is), or the signature would cover another path.
 *
 * Answers are capped by ses_http before anything here reads them: 8 MiB for a
 * list page, 64 KiB for an error document; a GetObject body never passes
 * through this file's memory at all.  XML is read with ses_api_xml_text() and
 * a scanner for repeated <Contents>: no XML library, no pointer past the end.
 *
 * Must never: log or return the Authorization header, a secret or a session
 * token, or S3's StringToSign echo (only <Code> and <Message> are read).
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <openssl/crypto.h>

#include "relay/log.h"
#include "relay/util.h"
#include "ses/s3.h"
#include "ses/ses_api.h"
#include "ses/ses_creds.h"
#include "ses/ses_http.h"
#include "ses/sigv4.h"

#define S3_SERVICE          "s3"
#define DEFAULT_TIMEOUT_MS  30000L
#define DEFAULT_GET_TIMEOUT (15 * 60 * 1000L)
#define GET_STALL_MS        60000L
#define ERROR_BODY_MAX      (64 * 1024)
#define MESSAGE_MAX         200 /* of S3's <Message>, in a log line */
#define WHAT_KEY_MAX        160 /* of an encoded key, in a log line */
#define REGION_MAX          32

/* ========================================================================= */
/* Classes, hints                                                            */
/* ========================================================================= */

const char *s3_class_name(enum s3_class cls)
{
	switch (cls) {
	case S3_OK:
		return "ok";
	case S3_TRANSIENT:
		return "transient";
	case S3_OPERATOR:
		return "operator";
	case S3_NOT_FOUND:
		return "not-found";
	case S3_REJECTED:
		return "rejected";
	case S3_ABORTED:
		return "aborted";
	}
	return "unknown";
}

static const struct {
	const char *code;
	enum s3_class cls;
	const char *hint; /* operator codes only */
} CODES[] = {
    /* S3 or the path to it is busy or broken for now */
    {"InternalError", S3_TRANSIENT, NULL},
    {"ServiceUnavailable", S3_TRANSIENT, NULL},
    {"SlowDown", S3_TRANSIENT, NULL},
    {"RequestTimeout", S3_TRANSIENT, NULL},
    {"Throttling", S3_TRANSIENT, NULL},
    {"ThrottlingException", S3_TRANSIENT, NULL},
    {"RequestLimitExceeded", S3_TRANSIENT, NULL},
    {"TooManyRequests", S3_TRANSIENT, NULL},
    {"OperationAborted", S3_TRANSIENT, NULL},
    {"IncompleteBody", S3_TRANSIENT, NULL},
    {"TemporaryRedirect", S3_TRANSIENT, NULL},
    /* temporary credentials ran out: the chain refreshes them */
    {"ExpiredToken", S3_TRANSIENT, NULL},
    {"TokenRefreshRequired", S3_TRANSIENT, NULL},
    /* the operator must act */
    {"SignatureDoesNotMatch", S3_OPERATOR,
     "check the secret access key (and that no proxy rewrites requests)"},
    {"InvalidAccessKeyId", S3_OPERATOR,
     "S3 does not know this access key id: check the credentials"},
    {"InvalidToken", S3_OPERATOR, "the session token is malformed: check the credentials"},
    {"InvalidClientTokenId", S3_OPERATOR, "check the credentials"},
    {"MissingSecurityHeader", S3_OPERATOR, "check the credentials"},
    {"AccessDenied", S3_OPERATOR,
     "allow s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject on the bucket "
     "(IAM and bucket policies, KMS key)"},
    {"AllAccessDisabled", S3_OPERATOR, "all access to this bucket is disabled"},
    {"AccountProblem", S3_OPERATOR, "the AWS account cannot use S3 now"},
    {"NotSignedUp", S3_OPERATOR, "the AWS account is not signed up for S3"},
    {"NoSuchBucket", S3_OPERATOR, "check the bucket name"},
    {"InvalidBucketName", S3_OPERATOR, "check the bucket name"},
    {"InvalidBucketState", S3_OPERATOR, "check the bucket's configuration"},
    {"RequestTimeTooSkewed", S3_OPERATOR, "fix this host's clock (NTP)"},
    {"RequestExpired", S3_OPERATOR, "fix this host's clock (NTP)"},
    {"PermanentRedirect", S3_OPERATOR, "the bucket is in another region: check the region"},
    {"AuthorizationHeaderMalformed", S3_OPERATOR,
     "the bucket is in another region: check the region"},
    {"IllegalLocationConstraintException", S3_OPERATOR,
     "the bucket is in another region: check the region"},
    /* the object went away (another consumer took it) */
    {"NoSuchKey", S3_NOT_FOUND, NULL},
};

static int code_index(const char *code)
{
	size_t i;

	if (code == NULL || *code == '\0')
		return -1;
	for (i = 0; i < sizeof(CODES) / sizeof(CODES[0]); i++)
		if (strcmp(code, CODES[i].code) == 0)
			return (int)i;
	return -1;
}

enum s3_class s3_classify(long status, const char *code)
{
	int i = code_index(code);

	if (status >= 200 && status < 300 && (code == NULL || *code == '\0'))
		return S3_OK;
	if (i >= 0)
		return CODES[i].cls;
	if (status == 0 || status >= 500 || status == 429 || status == 307)
		return S3_TRANSIENT;
	if (status == 401 || status == 403 || status == 301)
		return S3_OPERATOR;
	if (status == 404)
		return S3_NOT_FOUND;
	return S3_REJECTED;
}

const char *s3_hint(const char *code)
{
	int i = code_index(code);

	return i >= 0 ? CODES[i].hint : NULL;
}

/* ========================================================================= */
/* Keys                                                                      */
/* ========================================================================= */

/* Well-formed UTF-8: no overlong forms, surrogates or code points past U+10FFFF. */
static int utf8_valid(const unsigned char *s, size_t len)
{
	size_t i = 0;

	while (i < len) {
		unsigned char c = s[i];
		size_t n, k;
		unsigned long cp;

		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf)
			n = 1, cp = c & 0x1f;
		else if (c >= 0xe0 && c <= 0xef)
			n = 2, cp = c & 0x0f;
		else if (c >= 0xf0 && c <= 0xf4)
			n = 3, cp = c & 0x07;
		else
			return 0;
		if (len - i <= n)
			return 0;
		for (k = 1; k <= n; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return 0;
			cp = cp << 6 | (s[i + k] & 0x3f);
		}
		if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		i += n + 1;
	}
	return 1;
}

int s3_key_valid(const char *key)
{
	size_t len;

	if (key == NULL || (len = strlen(key)) == 0 || len > S3_KEY_MAX)
		return -1;
	return utf8_valid((const unsigned char *)key, len) ? 0 : -1;
}

char *s3_key_encode(const char *key)
{
	return sigv4_uri_encode(key, strlen(key), true);
}

/* ========================================================================= */
/* Answers                                                                   */
/* ========================================================================= */

/* Text from the network goes to logs: printable ASCII only. */
static void sanitize(char *s)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c < 0x20 || c == 0x7f)
			*s = ' ';
		else if (c >= 0x80)
			*s = '?';
	}
}

int s3_parse_error(const char *xml, size_t len, char *code, size_t codesz, char *message,
                   size_t msgsz)
{
	code[0] = message[0] = '\0';
	if (xml == NULL || len == 0 || memchr(xml, '\0', len) != NULL)
		return -1;
	if (ses_api_xml_text(xml, len, "Error", "Code", code, codesz) == -1 || code[0] == '\0') {
		code[0] = '\0';
		return -1;
	}
	if (ses_api_xml_text(xml, len, "Error", "Message", message, msgsz) == -1)
		message[0] = '\0';
	sanitize(code);
	sanitize(message);
	return 0;
}

/*
 * The next <TAG>...</TAG> in [p, end).  1 with its content in [*cs, *ce) and
 * *after past the close; 0 when there is none; -1 when it is not closed, is
 * self-closing, or another <TAG> opens inside it (no nesting is legitimate in
 * the elements read here).
 */
static int elem_next(const char *p, const char *end, const char *tag, const char **cs,
                     const char **ce, const char **after)
{
	size_t tl = strlen(tag);
	const char *q, *gt, *close;
	char pat[64];

	if (bsnprintf(pat, sizeof(pat), "</%s>", tag) == -1)
		return -1;
	for (;;) {
		q = memchr(p, '<', (size_t)(end - p));
		if (q == NULL || (size_t)(end - q) < tl + 2)
			return 0;
		if (memcmp(q + 1, tag, tl) == 0 &&
		    (q[1 + tl] == '>' || q[1 + tl] == '/' || isspace((unsigned char)q[1 + tl])))
			break;
		p = q + 1;
	}
	if ((gt = memchr(q, '>', (size_t)(end - q))) == NULL || gt[-1] == '/')
		return -1;
	*cs = gt + 1;
	if ((close = memmem(*cs, (size_t)(end - *cs), pat, strlen(pat))) == NULL)
		return -1;
	/* an opening of the same tag before the close: nested or unclosed */
	for (q = *cs; (q = memmem(q, (size_t)(close - q), pat + 2, tl)) != NULL; q += tl)
		if (q[-1] == '<' && (q[tl] == '>' || q[tl] == '/' || isspace((unsigned char)q[tl])))
			return -1;
	*ce = close;
	*after = close + strlen(pat);
	return 1;
}

static void err_set(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void err_set(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap); /* a cut error text is still the error */
	va_end(ap);
}

/* The text of <TAG> in head, else in tail: elements outside every <Contents>. */
static int top_text(const char *head, size_t hlen, const char *tail, size_t tlen, const char *tag,
                    char *out, size_t size)
{
	if (ses_api_xml_text(head, hlen, NULL, tag, out, size) == 0)
		return 0;
	return ses_api_xml_text(tail, tlen, NULL, tag, out, size);
}

static int parse_size(const char *s, uint64_t *out)
{
	size_t n = strlen(s), i;
	uint64_t v = 0;

	if (n == 0 || n > 19)
		return -1;
	for (i = 0; i < n; i++) {
		if (!isdigit((unsigned char)s[i]))
			return -1;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	*out = v;
	return 0;
}

/* ETag text without its quotes; -1 when too long. */
static int copy_etag(char *dst, const char *src)
{
	size_t n = strlen(src);

	if (n >= 2 && src[0] == '"' && src[n - 1] == '"')
		src++, n -= 2;
	if (n >= S3_ETAG_MAX)
		return -1;
	memcpy(dst, src, n);
	dst[n] = '\0';
	sanitize(dst);
	return 0;
}

/* One <Contents> element into o; NULL, or what is wrong with it. */
static const char *parse_contents(const char *cs, size_t clen, struct s3_object *o)
{
	char key[S3_KEY_MAX + 2], etag[S3_ETAG_MAX + 3], size[24];

	if (ses_api_xml_text(cs, clen, NULL, "Key", key, sizeof(key)) == -1)
		return "an entry without a Key";
	if (strlen(key) > S3_KEY_MAX)
		return "a key longer than 1024 bytes";
	if (s3_key_valid(key) == -1)
		return "an empty or non-UTF-8 key";
	if (ses_api_xml_text(cs, clen, NULL, "Size", size, sizeof(size)) == -1 ||
	    parse_size(size, &o->size) == -1)
		return "an entry without a numeric Size";
	o->etag[0] = '\0';
	if (ses_api_xml_text(cs, clen, NULL, "ETag", etag, sizeof(etag)) == 0 &&
	    (strlen(etag) >= sizeof(etag) - 1 || copy_etag(o->etag, etag) == -1))
		return "an ETag too long";
	o->key = xstrdup(key);
	return NULL;
}

void s3_list_free(struct s3_list *l)
{
	size_t i;

	if (l == NULL)
		return;
	for (i = 0; i < l->nobjects; i++)
		free(l->objects[i].key);
	free(l->objects);
	free(l->next_token);
	memset(l, 0, sizeof(*l));
}

int s3_parse_list(const char *xml, size_t len, struct s3_list *out, char *err, size_t errlen)
{
	const char *end = xml + len, *rs, *re, *after, *cs, *ce, *p;
	const char *head_end = NULL, *tail_start = NULL, *why;
	char flag[8], token[S3_TOKEN_MAX + 2];
	size_t cap = 0;
	int rc;

	memset(out, 0, sizeof(*out));
	if (xml == NULL || len == 0 || memchr(xml, '\0', len) != NULL) {
		err_set(err, errlen, "%s",
		        xml && len ? "a NUL byte in the answer" : "an empty answer");
		return -1;
	}
	if (elem_next(xml, end, "ListBucketResult", &rs, &re, &after) != 1) {
		err_set(err, errlen, "not a ListBucketResult");
		return -1;
	}
	for (p = rs; (rc = elem_next(p, re, "Contents", &cs, &ce, &after)) == 1; p = after) {
		struct s3_object o;

		if (head_end == NULL)
			head_end = cs;
		tail_start = after;
		if (out->nobjects == S3_LIST_MAX_KEYS) {
			err_set(err, errlen, "more than %d entries", S3_LIST_MAX_KEYS);
			goto fail;
		}
		if ((why = parse_contents(cs, (size_t)(ce - cs), &o)) != NULL) {
			err_set(err, errlen, "entry %zu: %s", out->nobjects + 1, why);
			goto fail;
		}
		if (out->nobjects == cap) {
			cap = cap ? cap * 2 : 16;
			out->objects = xreallocarray(out->objects, cap, sizeof(*out->objects));
		}
		out->objects[out->nobjects++] = o;
	}
	if (rc == -1) {
		err_set(err, errlen, "a malformed Contents element");
		goto fail;
	}
	if (head_end == NULL)
		head_end = tail_start = re;

	if (top_text(rs, (size_t)(head_end - rs), tail_start, (size_t)(re - tail_start),
	             "IsTruncated", flag, sizeof(flag)) == 0) {
		if (strcmp(flag, "true") == 0)
			out->truncated = 1;
		else if (strcmp(flag, "false") != 0) {
			err_set(err, errlen, "IsTruncated is neither true nor false");
			goto fail;
		}
	}
	if (out->truncated) {
		if (top_text(rs, (size_t)(head_end - rs), tail_start, (size_t)(re - tail_start),
		             "NextContinuationToken", token, sizeof(token)) == -1 ||
		    token[0] == '\0') {
			err_set(err, errlen, "truncated without a NextContinuationToken");
			goto fail;
		}
		if (strlen(token) > S3_TOKEN_MAX) {
			err_set(err, errlen, "a NextContinuationToken longer than %d bytes",
			        S3_TOKEN_MAX);
			goto fail;
		}
		out->next_token = xstrdup(token);
	}
	return 0;
fail:
	s3_list_free(out);
	return -1;
}

/* ========================================================================= */
/* Signing                                                                   */
/* ========================================================================= */

static struct curl_slist *slist_add(struct curl_slist *l, const char *name, const char *value)
{
	char *line = xasprintf("%s: %s", name, value);
	struct curl_slist *n = curl_slist_append(l, line);

	OPENSSL_cleanse(line, strlen(line)); /* may be the session token */
	free(line);
	if (n == NULL)
		fatalx("curl_slist_append failed");
	return n;
}

/* Headers s3_sign() sets itself: an extra one must not repeat them. */
static int reserved_header(const char *name)
{
	static const char *const names[] = {"host", "x-amz-date", "x-amz-content-sha256",
	                                    "x-amz-security-token", "authorization"};
	size_t i;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcasecmp(name, names[i]) == 0)
			return 1;
	return 0;
}

struct curl_slist *s3_sign(const struct s3_sign_input *in, const struct sigv4_credentials *cr,
                           const char **err)
{
	char amz_date[SIGV4_AMZ_DATE_SIZE];
	const char *hash = in->payload_hash ? in->payload_hash : SIGV4_EMPTY_SHA256;
	struct sigv4_header *hs;
	struct sigv4_request req;
	struct sigv4_signed s;
	struct curl_slist *l = NULL;
	size_t n = 0, i;

	memset(&s, 0, sizeof(s));
	if (sigv4_amz_date(in->now, amz_date) == -1) {
		*err = "the clock is out of range";
		return NULL;
	}
	for (i = 0; i < in->nextra; i++)
		if (reserved_header(in->extra[i].name)) {
			*err = "an extra header repeats one the signer sets";
			return NULL;
		}
	hs = xcalloc(4 + in->nextra, sizeof(*hs));
	hs[n++] = (struct sigv4_header){"Host", in->host};
	hs[n++] = (struct sigv4_header){"X-Amz-Content-SHA256", hash};
	hs[n++] = (struct sigv4_header){"X-Amz-Date", amz_date};
	if (cr->session_token && *cr->session_token)
		hs[n++] = (struct sigv4_header){"X-Amz-Security-Token", cr->session_token};
	for (i = 0; i < in->nextra; i++)
		hs[n++] = in->extra[i];
	memset(&req, 0, sizeof(req));
	req.method = in->method;
	req.path = in->path;
	req.query = in->query;
	req.headers = hs;
	req.nheaders = n;
	req.payload_hash = hash;
	req.region = in->region;
	req.service = S3_SERVICE;
	req.amz_date = amz_date;
	req.s3_mode = true;
	if (sigv4_sign(&req, cr, &s) == -1) {
		*err = s.error ? s.error : "signing failed";
		sigv4_signed_free(&s);
		free(hs);
		return NULL;
	}
	for (i = 0; i < n; i++)
		l = slist_add(l, hs[i].name, hs[i].value);
	l = slist_add(l, "Authorization", s.authorization);
	sigv4_signed_free(&s);
	free(hs);
	return l;
}

/* ========================================================================= */
/* The client                                                                */
/* ========================================================================= */

enum s3_op { OP_LIST, OP_PROBE, OP_GET, OP_DELETE, OP_COPY };

static const char *const OP_NAMES[] = {"ListObjectsV2", "ListObjectsV2", "GetObject",
                                       "DeleteObject", "CopyObject"};

struct s3 {
	struct event_base *base;
	struct ses_http *http;
	struct ses_creds *creds;
	char *bucket, *region;
	char *base_url;    /* "https://bucket.s3.region.amazonaws.com", "http://127.0.0.1:4568" */
	char *host;        /* the Host header: base_url's authority */
	char *path_prefix; /* "" (virtual-hosted) or "/bucket" (path-style) */
	char *name;        /* "s3://bucket" */
	long timeout_ms, get_timeout_ms;
	struct s3_call *calls;
	size_t ncalls;
};

struct s3_call {
	struct s3_call *next, *prev;
	struct s3 *s;
	enum s3_op op;
	struct ses_http_call *http;
	struct event *later; /* reports a failure found up front */
	s3_done done;
	void *arg;
	s3_sink sink;
	void *sink_arg;
	int sink_stopped;
	int reporting; /* done() is running: the handle is spent */
	char *what;    /* "GetObject s3://bucket/a%20key" */
	struct s3_result early;
};

static int region_ok(const char *r)
{
	size_t n = strlen(r), i;

	if (n == 0 || n > REGION_MAX)
		return 0;
	for (i = 0; i < n; i++)
		if (!(islower((unsigned char)r[i]) || isdigit((unsigned char)r[i]) || r[i] == '-'))
			return 0;
	return 1;
}

/* Legacy bucket names may hold upper case and '_' (path-style only). */
static int bucket_ok(const char *b)
{
	size_t n = strlen(b), i;

	if (n < 3 || n > 255)
		return 0;
	for (i = 0; i < n; i++)
		if (!(isalnum((unsigned char)b[i]) || strchr(".-_", b[i])))
			return 0;
	return 1;
}

/* A bucket that can be a DNS label under s3.REGION.amazonaws.com with a
 * certificate that matches (*.s3...: no dots). */
static int bucket_vhost_ok(const char *b)
{
	size_t n = strlen(b), i;

	if (n > 63 || !isalnum((unsigned char)b[0]) || !isalnum((unsigned char)b[n - 1]))
		return 0;
	for (i = 0; i < n; i++)
		if (!(islower((unsigned char)b[i]) || isdigit((unsigned char)b[i]) || b[i] == '-'))
			return 0;
	return 1;
}

struct s3 *s3_new(struct event_base *base, struct ses_http *http, struct ses_creds *creds,
                  const struct s3_config *cfg, char *err, size_t errlen)
{
	const char *ep = cfg->endpoint && *cfg->endpoint ? cfg->endpoint : NULL;
	struct s3 *s;
	char *def = NULL;

	if (cfg->bucket == NULL || !bucket_ok(cfg->bucket)) {
		err_set(err, errlen, "S3 bucket \"%s\" is not a bucket name",
		        cfg->bucket ? cfg->bucket : "");
		return NULL;
	}
	if (cfg->region == NULL || !region_ok(cfg->region)) {
		err_set(err, errlen, "S3 region \"%s\" is not a region name",
		        cfg->region ? cfg->region : "");
		return NULL;
	}
	s = xcalloc(1, sizeof(*s));
	s->base = base;
	s->http = http;
	s->creds = creds;
	s->bucket = xstrdup(cfg->bucket);
	s->region = xstrdup(cfg->region);
	s->name = xasprintf("s3://%s", cfg->bucket);
	s->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS;
	s->get_timeout_ms = cfg->get_timeout_ms > 0 ? cfg->get_timeout_ms : DEFAULT_GET_TIMEOUT;
	if (ep == NULL && bucket_vhost_ok(cfg->bucket)) {
		def = xasprintf("https://%s.s3.%s.amazonaws.com", cfg->bucket, cfg->region);
		s->path_prefix = xstrdup("");
	} else {
		if (ep == NULL)
			def = xasprintf("https://s3.%s.amazonaws.com", cfg->region);
		s->path_prefix = xasprintf("/%s", cfg->bucket);
	}
	if (ses_api_parse_endpoint(def ? def : ep, &s->base_url, &s->host) == -1) {
		err_set(err, errlen, "S3 endpoint \"%s\" is not http(s)://host[:port]",
		        def ? def : ep);
		free(def);
		s3_free(s);
		return NULL;
	}
	free(def);
	return s;
}

const char *s3_name(const struct s3 *s)
{
	return s->name;
}

size_t s3_in_flight(const struct s3 *s)
{
	return s->ncalls;
}

struct curl_slist *s3_request_headers(const struct s3 *s, const char *method, const char *key,
                                      const char *query, const struct sigv4_header *extra,
                                      size_t nextra, const struct sigv4_credentials *cr, time_t now,
                                      char **url, const char **err)
{
	struct s3_sign_input in;
	struct curl_slist *h;
	char *enc = key ? s3_key_encode(key) : NULL;
	char *path;

	if (enc)
		path = xasprintf("%s/%s", s->path_prefix, enc);
	else
		path = xstrdup(*s->path_prefix ? s->path_prefix : "/");
	memset(&in, 0, sizeof(in));
	in.method = method;
	in.host = s->host;
	in.path = path;
	in.query = query;
	in.region = s->region;
	in.extra = extra;
	in.nextra = nextra;
	in.now = now;
	h = s3_sign(&in, cr, err);
	*url = h ? xasprintf("%s%s%s%s", s->base_url, path, query ? "?" : "", query ? query : "")
	         : NULL;
	free(path);
	free(enc);
	return h;
}

/* --- calls ----------------------------------------------------------------- */

static void call_unlink(struct s3_call *c)
{
	struct s3 *s = c->s;

	if (c->prev)
		c->prev->next = c->next;
	else
		s->calls = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->next = c->prev = NULL;
	s->ncalls--;
}

/* Never touches c->s: the client may be gone (freed from done()). */
static void call_free(struct s3_call *c)
{
	if (c->http)
		ses_http_cancel(c->http);
	if (c->later)
		event_free(c->later);
	free(c->what);
	free(c);
}

/* "s3://bucket/" + key URI-encoded, cut for a log line. */
static char *where(const struct s3 *s, const char *key)
{
	char *enc = s3_key_encode(key ? key : ""), *w;

	if (strlen(enc) > WHAT_KEY_MAX)
		w = xasprintf("%s/%.*s...", s->name, WHAT_KEY_MAX, enc);
	else
		w = xasprintf("%s/%s", s->name, enc);
	free(enc);
	return w;
}

static struct s3_call *call_new(struct s3 *s, enum s3_op op, const char *key, s3_done done,
                                void *arg)
{
	struct s3_call *c = xcalloc(1, sizeof(*c));
	char *w = where(s, key);

	c->s = s;
	c->op = op;
	c->done = done;
	c->arg = arg;
	c->what = xasprintf("%s %s", OP_NAMES[op], w);
	free(w);
	c->next = s->calls;
	if (s->calls)
		s->calls->prev = c;
	s->calls = c;
	s->ncalls++;
	return c;
}

/* r->text = "WHAT: " + fmt; a line cut at S3_TEXT_MAX ends in "...". */
static void result_text(struct s3_result *r, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void result_text(struct s3_result *r, const char *what, const char *fmt, ...)
{
	size_t n, size = sizeof(r->text);
	va_list ap;
	int w;

	w = snprintf(r->text, size, "%s: ", what);
	n = w < 0 ? 0 : (size_t)w < size ? (size_t)w : size - 1;
	va_start(ap, fmt);
	w = vsnprintf(r->text + n, size - n, fmt, ap);
	va_end(ap);
	if (w < 0 || (size_t)w >= size - n)
		memcpy(r->text + size - 4, "...", 4);
	sanitize(r->text);
}

static void report(struct s3_call *c, struct s3_result *r)
{
	c->reporting = 1;
	if (r->cls == S3_OK)
		log_debug("%s", r->text);
	c->done(c->arg, r);
}

static void later_cb(evutil_socket_t fd, short what, void *arg)
{
	struct s3_call *c = arg;

	call_unlink(c);
	report(c, &c->early);
	call_free(c);
}

/* Report cls/text from the loop, as if an answer had come. */
static struct s3_call *fail_later(struct s3_call *c, enum s3_class cls, const char *text)
{
	static const struct timeval now = {0, 0};

	c->early.cls = cls;
	result_text(&c->early, c->what, "%s", text);
	if ((c->later = evtimer_new(c->s->base, later_cb, c)) == NULL)
		fatalx("evtimer_new failed");
	evtimer_add(c->later, &now);
	return c;
}

static size_t get_sink(void *arg, const char *data, size_t len)
{
	struct s3_call *c = arg;

	if (c->sink(c->sink_arg, data, len) != len) {
		c->sink_stopped = 1;
		return 0;
	}
	return len;
}

/* The error answer of a call, or an error document inside a 200 (CopyObject). */
static void result_error(struct s3_call *c, struct s3_result *r, const char *code,
                         const char *message)
{
	const char *hint;

	r->cls = s3_classify(r->status, code);
	if (r->cls == S3_OK) /* a 2xx with an error code that is not ours */
		r->cls = S3_REJECTED;
	snprintf(r->code, sizeof(r->code), "%s", code);
	hint = s3_hint(code);
	if (*code && *message)
		result_text(r, c->what, "%ld %s: %.*s%s%s%s%s%s", r->status, code, MESSAGE_MAX,
		            message, hint ? " - " : "", hint ? hint : "",
		            r->request_id[0] ? " [request-id " : "", r->request_id,
		            r->request_id[0] ? "]" : "");
	else
		result_text(r, c->what, "%ld %s%s%s%s%s%s", r->status, *code ? code : "error",
		            hint ? " - " : "", hint ? hint : "",
		            r->request_id[0] ? " [request-id " : "", r->request_id,
		            r->request_id[0] ? "]" : "");
	if ((strcmp(code, "ExpiredToken") == 0 || strcmp(code, "TokenRefreshRequired") == 0) &&
	    c->s->creds)
		ses_creds_refresh(c->s->creds);
}

static void result_ok(struct s3_call *c, const struct ses_http_response *hr, struct s3_result *r,
                      struct s3_list *page)
{
	char code[S3_CODE_MAX], message[MESSAGE_MAX + 1], err[160], etag[S3_ETAG_MAX + 3];

	r->cls = S3_OK;
	switch (c->op) {
	case OP_LIST:
	case OP_PROBE:
		if (hr->truncated) {
			r->cls = S3_REJECTED;
			result_text(r, c->what, "%ld: an answer over %d bytes", r->status,
			            S3_LIST_MAX_BODY);
		} else if (s3_parse_list(hr->body, hr->body_len, page, err, sizeof(err)) == -1) {
			r->cls = S3_REJECTED;
			result_text(r, c->what, "%ld: unreadable answer: %s", r->status, err);
		} else {
			r->list = page;
			result_text(r, c->what, "%ld, %zu key%s%s", r->status, page->nobjects,
			            page->nobjects == 1 ? "" : "s",
			            page->truncated ? ", more" : "");
		}
		break;
	case OP_GET:
		if (hr->etag)
			copy_etag(r->etag, hr->etag);
		r->bytes = hr->streamed;
		result_text(r, c->what, "%ld, %llu bytes", r->status, (unsigned long long)r->bytes);
		break;
	case OP_COPY:
		/* a copy that fails once S3 has answered 200 says so in the body */
		if (s3_parse_error(hr->body, hr->body_len, code, sizeof(code), message,
		                   sizeof(message)) == 0) {
			result_error(c, r, code, message);
			break;
		}
		if (ses_api_xml_text(hr->body, hr->body_len, "CopyObjectResult", "ETag", etag,
		                     sizeof(etag)) == -1) {
			r->cls = S3_TRANSIENT; /* cut short: whether it copied is unknown */
			result_text(r, c->what, "%ld without a CopyObjectResult", r->status);
			break;
		}
		if (strlen(etag) < sizeof(etag) - 1)
			copy_etag(r->etag, etag);
		result_text(r, c->what, "%ld", r->status);
		break;
	case OP_DELETE:
		result_text(r, c->what, "%ld", r->status);
		break;
	}
}

static void http_done(void *arg, const struct ses_http_response *hr)
{
	struct s3_call *c = arg;
	struct s3_result r;
	struct s3_list page;
	char code[S3_CODE_MAX], message[MESSAGE_MAX + 1];

	c->http = NULL; /* ses_http frees it after this returns */
	memset(&r, 0, sizeof(r));
	memset(&page, 0, sizeof(page));
	if (hr->request_id)
		snprintf(r.request_id, sizeof(r.request_id), "%s", hr->request_id);
	if (!hr->ok) {
		r.bytes = hr->streamed;
		if (c->sink_stopped) {
			r.cls = S3_ABORTED;
			result_text(&r, c->what, "stopped by the receiver after %llu bytes",
			            (unsigned long long)r.bytes);
		} else {
			r.cls = S3_TRANSIENT;
			result_text(&r, c->what, "no answer from %s: %s", c->s->base_url,
			            hr->error ? hr->error : "unknown error");
		}
	} else {
		r.status = hr->status;
		if (hr->status >= 200 && hr->status < 300)
			result_ok(c, hr, &r, &page);
		else {
			s3_parse_error(hr->body, hr->body_len, code, sizeof(code), message,
			               sizeof(message));
			result_error(c, &r, code, message);
		}
	}
	call_unlink(c);
	report(c, &r);
	s3_list_free(&page);
	call_free(c);
}

struct send_args {
	const char *method;
	const char *key; /* NULL: the bucket */
	const char *query;
	const struct sigv4_header *extra;
	size_t nextra;
	long timeout_ms;
	size_t max_response;
	int stream; /* GetObject: 2xx body to the sink */
};

static struct s3_call *call_send(struct s3_call *c, const struct send_args *a)
{
	const struct sigv4_credentials *cr = ses_creds_get(c->s->creds);
	struct ses_http_request req;
	struct curl_slist *h;
	const char *err = NULL;
	char *url = NULL, *msg;

	if (cr == NULL) {
		msg =
		    xasprintf("no AWS credentials now (source: %s)", ses_creds_source(c->s->creds));
		fail_later(c, S3_TRANSIENT, msg);
		free(msg);
		return c;
	}
	h = s3_request_headers(c->s, a->method, a->key, a->query, a->extra, a->nextra, cr,
	                       time(NULL), &url, &err);
	if (h == NULL) {
		msg = xasprintf("cannot sign the request: %s", err);
		fail_later(c, S3_OPERATOR, msg);
		free(msg);
		return c;
	}
	/* no body: keep curl from announcing a form one */
	if (strcmp(a->method, "GET") != 0)
		h = curl_slist_append(h, "Content-Type:");
	memset(&req, 0, sizeof(req));
	req.method = a->method;
	req.url = url;
	req.headers = h;
	req.timeout_ms = a->timeout_ms;
	req.max_response = a->max_response;
	req.path_as_is = 1;
	req.done = http_done;
	req.arg = c;
	if (a->stream) {
		req.sink = get_sink;
		req.sink_arg = c;
		req.stall_timeout_ms = GET_STALL_MS;
	}
	log_debug("%s: %s %s", c->what, a->method, url);
	c->http = ses_http_send(c->s->http, &req);
	free(url);
	return c;
}

char *s3_list_query(const char *prefix, const char *token, unsigned max_keys)
{
	char *p = NULL, *t = NULL, *query;

	if (prefix && *prefix)
		p = sigv4_uri_encode(prefix, strlen(prefix), false);
	if (token && *token)
		t = sigv4_uri_encode(token, strlen(token), false);
	if (max_keys == 0 || max_keys > S3_LIST_MAX_KEYS)
		max_keys = S3_LIST_MAX_KEYS;
	query = xasprintf("list-type=2&max-keys=%u%s%s%s%s", max_keys, p ? "&prefix=" : "",
	                  p ? p : "", t ? "&continuation-token=" : "", t ? t : "");
	free(p);
	free(t);
	return query;
}

static struct s3_call *list_start(struct s3 *s, enum s3_op op, const char *prefix,
                                  const char *token, unsigned max_keys, s3_done done, void *arg)
{
	struct s3_call *c;
	struct send_args a;
	char *query;

	if (prefix && *prefix == '\0')
		prefix = NULL;
	c = call_new(s, op, prefix, done, arg);
	if (prefix && strlen(prefix) > S3_KEY_MAX)
		return fail_later(c, S3_REJECTED, "prefix longer than 1024 bytes");
	if (token && strlen(token) > S3_TOKEN_MAX)
		return fail_later(c, S3_REJECTED, "continuation token too long");
	query = s3_list_query(prefix, token, max_keys);
	memset(&a, 0, sizeof(a));
	a.method = "GET";
	a.query = query;
	a.timeout_ms = s->timeout_ms;
	a.max_response = S3_LIST_MAX_BODY;
	call_send(c, &a);
	free(query);
	return c;
}

struct s3_call *s3_list(struct s3 *s, const char *prefix, const char *token, unsigned max_keys,
                        s3_done done, void *arg)
{
	return list_start(s, OP_LIST, prefix, token, max_keys, done, arg);
}

struct s3_call *s3_probe(struct s3 *s, const char *prefix, s3_done done, void *arg)
{
	return list_start(s, OP_PROBE, prefix, NULL, 1, done, arg);
}

/* A call on one object; NULL when the key is fine, else the call, failing. */
static struct s3_call *object_call(struct s3 *s, enum s3_op op, const char *key, s3_done done,
                                   void *arg, struct s3_call **out)
{
	struct s3_call *c = call_new(s, op, key, done, arg);

	*out = c;
	if (s3_key_valid(key) == -1)
		return fail_later(c, S3_REJECTED, "not a key: empty, over 1024 bytes or not UTF-8");
	return NULL;
}

struct s3_call *s3_get(struct s3 *s, const char *key, s3_sink sink, void *sink_arg, s3_done done,
                       void *arg)
{
	struct s3_call *c;
	struct send_args a;

	if (object_call(s, OP_GET, key, done, arg, &c))
		return c;
	c->sink = sink;
	c->sink_arg = sink_arg;
	memset(&a, 0, sizeof(a));
	a.method = "GET";
	a.key = key;
	a.timeout_ms = s->get_timeout_ms;
	a.max_response = ERROR_BODY_MAX;
	a.stream = 1;
	return call_send(c, &a);
}

struct s3_call *s3_delete(struct s3 *s, const char *key, s3_done done, void *arg)
{
	struct s3_call *c;
	struct send_args a;

	if (object_call(s, OP_DELETE, key, done, arg, &c))
		return c;
	memset(&a, 0, sizeof(a));
	a.method = "DELETE";
	a.key = key;
	a.timeout_ms = s->timeout_ms;
	a.max_response = ERROR_BODY_MAX;
	return call_send(c, &a);
}

char *s3_copy_source(const struct s3 *s, const char *key)
{
	char *enc = s3_key_encode(key), *value;

	/* as botocore sends it: no leading '/', the key URI-encoded with '/' kept */
	value = xasprintf("%s/%s", s->bucket, enc);
	free(enc);
	return value;
}

struct s3_call *s3_copy(struct s3 *s, const char *src_key, const char *dst_key, s3_done done,
                        void *arg)
{
	struct sigv4_header source;
	struct s3_call *c;
	struct send_args a;
	char *enc, *value;

	c = call_new(s, OP_COPY, src_key, done, arg);
	enc = s3_key_encode(dst_key ? dst_key : "");
	value = xasprintf("%s -> %.*s%s", c->what, WHAT_KEY_MAX, enc,
	                  strlen(enc) > WHAT_KEY_MAX ? "..." : "");
	free(c->what);
	c->what = value;
	free(enc);
	if (s3_key_valid(src_key) == -1 || s3_key_valid(dst_key) == -1)
		return fail_later(c, S3_REJECTED, "not a key: empty, over 1024 bytes or not UTF-8");
	value = s3_copy_source(s, src_key);
	source = (struct sigv4_header){"x-amz-copy-source", value};
	memset(&a, 0, sizeof(a));
	a.method = "PUT";
	a.key = dst_key;
	a.extra = &source;
	a.nextra = 1;
	a.timeout_ms = s->timeout_ms * 4; /* S3 copies 5 GB in one call; ours are smaller */
	a.max_response = ERROR_BODY_MAX;
	call_send(c, &a);
	free(value);
	return c;
}

void s3_cancel(struct s3_call *c)
{
	if (c == NULL || c->reporting)
		return;
	call_unlink(c);
	call_free(c);
}

void s3_free(struct s3 *s)
{
	if (s == NULL)
		return;
	while (s->calls) {
		struct s3_call *c = s->calls;
		call_unlink(c);
		call_free(c);
	}
	free(s->bucket);
	free(s->region);
	free(s->base_url);
	free(s->host);
	free(s->path_prefix);
	free(s->name);
	free(s);
}
