/*
 * ses_api.c - the "api" transport: SES v2 SendEmail (Content.Raw) or v1
 * SendRawEmail over HTTPS, one call per delivery, streamed from the queue.
 *
 * A delivery is a small state machine (enum job_state):
 *
 *   HASHING  pass 1: encode the message from the queue file in slices of
 *            about 1 MB per loop turn, feeding SHA-256 and counting bytes.
 *            SigV4 signs the payload hash, so it must be known before the
 *            first byte goes out; the slices keep the loop serving everyone
 *            else meanwhile (a zero timer, not event_active(): an event
 *            activated from its own callback runs again in the same pass,
 *            before any I/O is polled).
 *   SENDING  pass 2: sign, then hand ses_http a reader that re-encodes the
 *            same bytes (same code, same file range) with stream_len = the
 *            length pass 1 counted.  The reader refuses to give more or less.
 *   FAILED   a failure found inside send() (no credentials), reported from
 *            the loop on the next turn, since done() never runs inside send().
 *
 * Memory per delivery is one chunk of the message and its base64 (about
 * 112 KiB), whatever the message size.  Answers are capped by ses_http
 * (64 KiB) and read with small extractors below: no JSON or XML library, no
 * pointer past the end, depth and lengths capped.
 *
 * GetAccount (GET /v2/email/account, also when api_version = 1) runs at start
 * and every 10 minutes for MaxSendRate and the 24-hour quota.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "conf/conf.h"
#include "relay/log.h"
#include "relay/transport.h"
#include "relay/util.h"
#include "ses/ses_api.h"
#include "ses/ses_creds.h"
#include "ses/ses_http.h"
#include "ses/sigv4.h"

#define V2_SEND_PATH    "/v2/email/outbound-emails"
#define V2_ACCOUNT_PATH "/v2/email/account"
#define V2_CONTENT_TYPE "application/json"
#define V1_CONTENT_TYPE "application/x-www-form-urlencoded; charset=utf-8"
#define SES_SERVICE     "ses"

#define HASH_SLICE       (1024 * 1024) /* body bytes hashed per loop turn */
#define HASH_BUF         16384
#define SEND_TIMEOUT_MS  60000L /* plus 1 ms per 256 body bytes */
#define ACCOUNT_TIMEOUT  30000L
#define ACCOUNT_INTERVAL 600 /* seconds between GetAccount calls */
#define ACCOUNT_RETRY    60  /* after a transient failure */
#define ACCOUNT_NO_CREDS 10  /* while the credentials chain resolves */

#define JSON_DEPTH_MAX  32
#define JSON_KEY_MAX    64
#define JSON_NUMBER_MAX 64
#define SNIPPET_MAX     80

/* ========================================================================= */
/* Request bodies                                                            */
/* ========================================================================= */

static char *evbuffer_take(struct evbuffer *eb, size_t *len)
{
	char *s;

	*len = evbuffer_get_length(eb);
	s = xmalloc(*len + 1);
	evbuffer_remove(eb, s, *len);
	s[*len] = '\0';
	evbuffer_free(eb);
	return s;
}

static struct evbuffer *xevbuffer_new(void)
{
	struct evbuffer *eb = evbuffer_new();

	if (eb == NULL)
		fatalx("evbuffer_new failed");
	return eb;
}

void ses_api_json_escape(struct evbuffer *out, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	for (; *p; p++) {
		if (*p == '"' || *p == '\\')
			evbuffer_add_printf(out, "\\%c", *p);
		else if (*p < 0x20 || *p == 0x7f)
			evbuffer_add_printf(out, "\\u%04x", *p);
		else
			evbuffer_add(out, p, 1);
	}
}

static void json_member(struct evbuffer *eb, const char *name, const char *value)
{
	evbuffer_add_printf(eb, "\"%s\":\"", name);
	ses_api_json_escape(eb, value);
	evbuffer_add(eb, "\"", 1);
}

static void form_param(struct evbuffer *eb, const char *name, const char *value)
{
	char *enc = sigv4_uri_encode(value, strlen(value), false);

	evbuffer_add_printf(eb, "&%s=%s", name, enc);
	free(enc);
}

/* {"FromEmailAddress":..,"Destination":{"ToAddresses":[..]},"Content":{"Raw":{"Data":"
 * ... "}},"ConfigurationSetName":".."} */
static void body_parts_v2(struct ses_api_body *b, const char *sender, const char *const *rcpts,
                          size_t nrcpts, const char *cs)
{
	struct evbuffer *head = xevbuffer_new(), *tail = xevbuffer_new();
	size_t i;

	evbuffer_add(head, "{", 1);
	if (*sender) {
		json_member(head, "FromEmailAddress", sender);
		evbuffer_add(head, ",", 1);
	}
	evbuffer_add_printf(head, "\"Destination\":{\"ToAddresses\":[");
	for (i = 0; i < nrcpts; i++) {
		evbuffer_add_printf(head, "%s\"", i ? "," : "");
		ses_api_json_escape(head, rcpts[i]);
		evbuffer_add(head, "\"", 1);
	}
	evbuffer_add_printf(head, "]},\"Content\":{\"Raw\":{\"Data\":\"");

	evbuffer_add_printf(tail, "\"}}");
	if (cs && *cs) {
		evbuffer_add(tail, ",", 1);
		json_member(tail, "ConfigurationSetName", cs);
	}
	evbuffer_add(tail, "}", 1);
	b->head = evbuffer_take(head, &b->head_len);
	b->tail = evbuffer_take(tail, &b->tail_len);
}

/* Action=SendRawEmail&Version=2010-12-01&Source=..&Destinations.member.N=..
 * &RawMessage.Data=...&ConfigurationSetName=.. */
static void body_parts_v1(struct ses_api_body *b, const char *sender, const char *const *rcpts,
                          size_t nrcpts, const char *cs)
{
	struct evbuffer *head = xevbuffer_new(), *tail = xevbuffer_new();
	char name[48];
	size_t i;

	evbuffer_add_printf(head, "Action=SendRawEmail&Version=2010-12-01");
	if (*sender)
		form_param(head, "Source", sender);
	for (i = 0; i < nrcpts; i++) {
		snprintf(name, sizeof(name), "Destinations.member.%zu", i + 1);
		form_param(head, name, rcpts[i]);
	}
	evbuffer_add_printf(head, "&RawMessage.Data=");
	if (cs && *cs)
		form_param(tail, "ConfigurationSetName", cs);
	b->head = evbuffer_take(head, &b->head_len);
	b->tail = evbuffer_take(tail, &b->tail_len);
}

void ses_api_body_init(struct ses_api_body *b, int api_version, const char *sender,
                       const char *const *rcpts, size_t nrcpts, const char *configuration_set,
                       int fd, uint64_t data_offset, uint64_t data_len)
{
	memset(b, 0, sizeof(*b));
	if (sender == NULL)
		sender = "";
	if (api_version == 1)
		body_parts_v1(b, sender, rcpts, nrcpts, configuration_set);
	else
		body_parts_v2(b, sender, rcpts, nrcpts, configuration_set);
	b->form = api_version == 1;
	b->fd = fd;
	b->data_offset = data_offset;
	b->data_len = data_len;
	b->chunk = SES_API_CHUNK;
	b->phase = SES_API_BODY_HEAD;
}

void ses_api_body_rewind(struct ses_api_body *b)
{
	b->phase = SES_API_BODY_HEAD;
	b->pos = 0;
	b->consumed = 0;
	b->produced = 0;
	b->b64_len = b->b64_pos = 0;
	b->pend_len = b->pend_pos = 0;
	b->err = 0;
}

void ses_api_body_free(struct ses_api_body *b)
{
	free(b->head);
	free(b->tail);
	free(b->in);
	free(b->b64);
	memset(b, 0, sizeof(*b));
}

/* Read the next chunk of the message and base64 it.  0, or -1 with b->err. */
static int body_refill(struct ses_api_body *b)
{
	uint64_t left = b->data_len - b->consumed;
	size_t want = left < b->chunk ? (size_t)left : b->chunk, got = 0;

	ASSERT(b->chunk >= 3 && b->chunk % 3 == 0);
	if (b->in == NULL) {
		b->in = xmalloc(b->chunk);
		b->b64 = xmalloc(b->chunk / 3 * 4 + 1);
	}
	while (got < want) {
		ssize_t r = pread(b->fd, b->in + got, want - got,
		                  (off_t)(b->data_offset + b->consumed + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			b->err = r < 0 ? errno : EIO; /* EOF inside the message: short file */
			return -1;
		}
		got += (size_t)r;
	}
	b->consumed += want;
	b->b64_len = (size_t)EVP_EncodeBlock((unsigned char *)b->b64, b->in, (int)want);
	b->b64_pos = 0;
	return 0;
}

/* Copy base64 out, percent-encoding '+', '/' and '=' for the form body.  An
 * escape that does not fit is kept in pend for the next call. */
static size_t body_copy_b64(struct ses_api_body *b, char *buf, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = 0;

	if (!b->form) {
		n = b->b64_len - b->b64_pos < len ? b->b64_len - b->b64_pos : len;
		memcpy(buf, b->b64 + b->b64_pos, n);
		b->b64_pos += n;
		return n;
	}
	while (n < len && b->b64_pos < b->b64_len) {
		unsigned char c = (unsigned char)b->b64[b->b64_pos++];
		if (c != '+' && c != '/' && c != '=') {
			buf[n++] = (char)c;
			continue;
		}
		b->pend[0] = '%';
		b->pend[1] = hex[c >> 4];
		b->pend[2] = hex[c & 15];
		b->pend_len = 3;
		b->pend_pos = 0;
		while (n < len && b->pend_pos < b->pend_len)
			buf[n++] = b->pend[b->pend_pos++];
	}
	return n;
}

static size_t copy_part(const char *part, size_t part_len, size_t *pos, char *buf, size_t len)
{
	size_t k = part_len - *pos < len ? part_len - *pos : len;

	memcpy(buf, part + *pos, k);
	*pos += k;
	return k;
}

ssize_t ses_api_body_read(struct ses_api_body *b, char *buf, size_t len)
{
	size_t n = 0;

	while (n < len && b->phase != SES_API_BODY_END) {
		switch (b->phase) {
		case SES_API_BODY_HEAD:
			n += copy_part(b->head, b->head_len, &b->pos, buf + n, len - n);
			if (b->pos == b->head_len) {
				b->phase = SES_API_BODY_DATA;
				b->pos = 0;
			}
			break;
		case SES_API_BODY_DATA:
			if (b->pend_pos < b->pend_len)
				n +=
				    copy_part(b->pend, b->pend_len, &b->pend_pos, buf + n, len - n);
			else if (b->b64_pos < b->b64_len)
				n += body_copy_b64(b, buf + n, len - n);
			else if (b->consumed == b->data_len)
				b->phase = SES_API_BODY_TAIL;
			else if (body_refill(b) == -1)
				return -1;
			break;
		case SES_API_BODY_TAIL:
			n += copy_part(b->tail, b->tail_len, &b->pos, buf + n, len - n);
			if (b->pos == b->tail_len)
				b->phase = SES_API_BODY_END;
			break;
		case SES_API_BODY_END:
			break;
		}
	}
	b->produced += n;
	return (ssize_t)n;
}

int ses_api_body_hash(struct ses_api_body *b, struct sigv4_sha256 *sha, size_t budget)
{
	char buf[HASH_BUF];
	size_t done = 0;

	while (done < budget) {
		ssize_t n = ses_api_body_read(b, buf, sizeof(buf));
		if (n < 0)
			return -1;
		if (n == 0)
			return 1;
		sigv4_sha256_update(sha, buf, (size_t)n);
		done += (size_t)n;
	}
	return b->phase == SES_API_BODY_END ? 1 : 0;
}

/* ========================================================================= */
/* JSON and XML extractors (capped; the input is hostile until proven not)   */
/* ========================================================================= */

struct jcur {
	const char *p, *end;
};

/* A capped output string: once something does not fit, nothing more goes in. */
struct sout {
	char *buf;
	size_t size, n;
	int full;
};

static void sout_put(struct sout *o, const char *s, size_t len)
{
	if (o->buf == NULL || o->full)
		return;
	if (o->n + len >= o->size) {
		o->full = 1;
		return;
	}
	memcpy(o->buf + o->n, s, len);
	o->n += len;
	o->buf[o->n] = '\0';
}

static void sout_utf8(struct sout *o, unsigned long cp)
{
	char u[4];

	if (cp < 0x80) {
		u[0] = (char)cp;
		sout_put(o, u, 1);
	} else if (cp < 0x800) {
		u[0] = (char)(0xc0 | (cp >> 6));
		u[1] = (char)(0x80 | (cp & 0x3f));
		sout_put(o, u, 2);
	} else if (cp < 0x10000) {
		u[0] = (char)(0xe0 | (cp >> 12));
		u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		u[2] = (char)(0x80 | (cp & 0x3f));
		sout_put(o, u, 3);
	} else {
		u[0] = (char)(0xf0 | (cp >> 18));
		u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
		u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
		u[3] = (char)(0x80 | (cp & 0x3f));
		sout_put(o, u, 4);
	}
}

static void j_ws(struct jcur *c)
{
	while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
		c->p++;
}

static int j_hex4(struct jcur *c, unsigned long *out)
{
	int i;

	*out = 0;
	if (c->end - c->p < 4)
		return -1;
	for (i = 0; i < 4; i++) {
		int ch = (unsigned char)*c->p++;
		*out <<= 4;
		if (ch >= '0' && ch <= '9')
			*out |= (unsigned long)(ch - '0');
		else if (ch >= 'a' && ch <= 'f')
			*out |= (unsigned long)(ch - 'a' + 10);
		else if (ch >= 'A' && ch <= 'F')
			*out |= (unsigned long)(ch - 'A' + 10);
		else
			return -1;
	}
	return 0;
}

/* \uXXXX (the "\u" already read), joining a surrogate pair when one follows. */
static int j_unicode(struct jcur *c, unsigned long *cp)
{
	struct jcur save;
	unsigned long lo;

	if (j_hex4(c, cp) == -1)
		return -1;
	if (*cp < 0xd800 || *cp > 0xdfff)
		return 0;
	save = *c;
	if (*cp <= 0xdbff && c->end - c->p >= 6 && c->p[0] == '\\' && c->p[1] == 'u') {
		c->p += 2;
		if (j_hex4(c, &lo) == 0 && lo >= 0xdc00 && lo <= 0xdfff) {
			*cp = 0x10000 + ((*cp - 0xd800) << 10) + (lo - 0xdc00);
			return 0;
		}
	}
	*c = save;
	*cp = 0xfffd; /* a lone surrogate */
	return 0;
}

/* The string token at c->p, decoded into o (o->buf may be NULL: just skip). */
static int j_string(struct jcur *c, struct sout *o)
{
	if (c->p >= c->end || *c->p != '"')
		return -1;
	c->p++;
	while (c->p < c->end) {
		char ch = *c->p++, e;
		unsigned long cp;

		if (ch == '"')
			return 0;
		if ((unsigned char)ch < 0x20)
			return -1;
		if (ch != '\\') {
			sout_put(o, &ch, 1);
			continue;
		}
		if (c->p >= c->end)
			return -1;
		switch (ch = *c->p++) {
		case '"':
		case '\\':
		case '/':
			sout_put(o, &ch, 1);
			break;
		case 'b':
		case 'f':
		case 'n':
		case 'r':
		case 't':
			e = ch == 'b'   ? '\b'
			    : ch == 'f' ? '\f'
			    : ch == 'n' ? '\n'
			    : ch == 'r' ? '\r'
			                : '\t';
			sout_put(o, &e, 1);
			break;
		case 'u':
			if (j_unicode(c, &cp) == -1)
				return -1;
			sout_utf8(o, cp);
			break;
		default:
			return -1;
		}
	}
	return -1; /* unterminated */
}

static int j_skip(struct jcur *c, int depth);

/* An object or array at c->p. */
static int j_skip_container(struct jcur *c, int depth)
{
	int obj = *c->p == '{';
	char close = obj ? '}' : ']';
	struct sout none = {0};

	if (depth >= JSON_DEPTH_MAX)
		return -1;
	c->p++;
	j_ws(c);
	if (c->p < c->end && *c->p == close) {
		c->p++;
		return 0;
	}
	for (;;) {
		j_ws(c);
		if (obj) {
			if (j_string(c, &none) == -1)
				return -1;
			j_ws(c);
			if (c->p >= c->end || *c->p != ':')
				return -1;
			c->p++;
		}
		if (j_skip(c, depth + 1) == -1)
			return -1;
		j_ws(c);
		if (c->p >= c->end)
			return -1;
		if (*c->p == close) {
			c->p++;
			return 0;
		}
		if (*c->p++ != ',')
			return -1;
	}
}

static int j_skip(struct jcur *c, int depth)
{
	struct sout none = {0};
	const char *start;

	j_ws(c);
	if (c->p >= c->end)
		return -1;
	if (*c->p == '"')
		return j_string(c, &none);
	if (*c->p == '{' || *c->p == '[')
		return j_skip_container(c, depth);
	/* number, true, false, null: checked when read, only skipped here */
	start = c->p;
	while (c->p < c->end && *c->p && strchr("+-.0123456789eEtruefalsn", *c->p))
		c->p++;
	return c->p == start ? -1 : 0;
}

/* In the object at c->p, find PATH (first component up to '.'); on success
 * [*v, *vend) is the value's text. */
static int j_find(struct jcur *c, const char *path, int depth, const char **v, const char **vend)
{
	const char *dot = strchr(path, '.');
	size_t clen = dot ? (size_t)(dot - path) : strlen(path);
	char key[JSON_KEY_MAX];

	j_ws(c);
	if (depth >= JSON_DEPTH_MAX || c->p >= c->end || *c->p != '{')
		return -1;
	c->p++;
	j_ws(c);
	if (c->p < c->end && *c->p == '}')
		return -1;
	for (;;) {
		struct sout k = {key, sizeof(key), 0, 0};

		key[0] = '\0';
		j_ws(c);
		if (j_string(c, &k) == -1)
			return -1;
		j_ws(c);
		if (c->p >= c->end || *c->p != ':')
			return -1;
		c->p++;
		j_ws(c);
		if (!k.full && k.n == clen && memcmp(key, path, clen) == 0) {
			if (dot)
				return j_find(c, dot + 1, depth + 1, v, vend);
			*v = c->p;
			if (j_skip(c, depth + 1) == -1)
				return -1;
			*vend = c->p;
			j_ws(c); /* "truex", or a value cut short, is not a value */
			return c->p < c->end && (*c->p == ',' || *c->p == '}') ? 0 : -1;
		}
		if (j_skip(c, depth + 1) == -1)
			return -1;
		j_ws(c);
		if (c->p >= c->end || *c->p++ != ',')
			return -1; /* '}' (not there) or garbage */
	}
}

static int j_lookup(const char *json, size_t len, const char *path, struct jcur *val)
{
	struct jcur c = {json, json + len};
	const char *v, *vend;

	if (json == NULL || j_find(&c, path, 0, &v, &vend) == -1)
		return -1;
	val->p = v;
	val->end = vend;
	return 0;
}

int ses_api_json_string(const char *json, size_t len, const char *path, char *out, size_t size)
{
	struct sout o = {out, size, 0, 0};
	struct jcur v;

	if (size == 0 || j_lookup(json, len, path, &v) == -1 || v.p >= v.end || *v.p != '"')
		return -1;
	out[0] = '\0';
	return j_string(&v, &o);
}

int ses_api_json_number(const char *json, size_t len, const char *path, double *out)
{
	char num[JSON_NUMBER_MAX], *end;
	struct jcur v;
	size_t n;

	if (j_lookup(json, len, path, &v) == -1)
		return -1;
	n = (size_t)(v.end - v.p);
	if (n == 0 || n >= sizeof(num) || !(*v.p == '-' || isdigit((unsigned char)*v.p)))
		return -1;
	memcpy(num, v.p, n);
	num[n] = '\0';
	errno = 0;
	*out = strtod(num, &end);
	return *end == '\0' && errno == 0 && isfinite(*out) ? 0 : -1;
}

int ses_api_json_bool(const char *json, size_t len, const char *path, int *out)
{
	struct jcur v;
	size_t n;

	if (j_lookup(json, len, path, &v) == -1)
		return -1;
	n = (size_t)(v.end - v.p);
	if (n == 4 && memcmp(v.p, "true", 4) == 0)
		*out = 1;
	else if (n == 5 && memcmp(v.p, "false", 5) == 0)
		*out = 0;
	else
		return -1;
	return 0;
}

/* The first "<TAG>" / "<TAG attr...>" / "<TAG/>" in [p, end).  Returns where
 * it starts; *content is after its '>' (NULL when self-closing). */
static const char *xml_open(const char *p, const char *end, const char *tag, const char **content)
{
	size_t tl = strlen(tag);

	while (p < end && (p = memchr(p, '<', (size_t)(end - p))) != NULL) {
		const char *q = p + 1 + tl, *gt;

		if ((size_t)(end - p) > tl + 1 && memcmp(p + 1, tag, tl) == 0 &&
		    (*q == '>' || *q == '/' || isspace((unsigned char)*q)) &&
		    (gt = memchr(q, '>', (size_t)(end - q))) != NULL) {
			*content = gt[-1] == '/' ? NULL : gt + 1;
			return p;
		}
		p++;
	}
	return NULL;
}

static const char *xml_close(const char *p, const char *end, const char *tag)
{
	char close[JSON_KEY_MAX + 4];

	if (bsnprintf(close, sizeof(close), "</%s>", tag) == -1)
		return NULL;
	return memmem(p, (size_t)(end - p), close, strlen(close));
}

static void xml_decode(const char *p, const char *end, struct sout *o)
{
	static const struct {
		const char *name;
		char c;
	} ents[] = {
	    {"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
	size_t i;

	while (p < end) {
		if (*p != '&')
			goto literal;
		for (i = 0; i < sizeof(ents) / sizeof(ents[0]); i++) {
			size_t l = strlen(ents[i].name);
			if ((size_t)(end - p) >= l && memcmp(p, ents[i].name, l) == 0) {
				sout_put(o, &ents[i].c, 1);
				p += l;
				break;
			}
		}
		if (i < sizeof(ents) / sizeof(ents[0]))
			continue;
		if (end - p >= 4 && p[1] == '#') {
			int hex = p[2] == 'x' || p[2] == 'X';
			const char *q = p + 2 + hex;
			unsigned long cp = 0;
			int digits = 0;

			while (q < end && digits < 7 &&
			       (hex ? isxdigit((unsigned char)*q) : isdigit((unsigned char)*q))) {
				int dv = isdigit((unsigned char)*q)
				             ? *q - '0'
				             : tolower((unsigned char)*q) - 'a' + 10;
				cp = cp * (hex ? 16 : 10) + (unsigned long)dv;
				q++, digits++;
			}
			if (digits && q < end && *q == ';') {
				sout_utf8(o, cp > 0 && cp <= 0x10ffff ? cp : 0xfffd);
				p = q + 1;
				continue;
			}
		}
	literal:
		sout_put(o, p, 1);
		p++;
	}
}

int ses_api_xml_text(const char *xml, size_t len, const char *scope, const char *tag, char *out,
                     size_t size)
{
	const char *end = xml + len, *start = xml, *content, *close;
	struct sout o = {out, size, 0, 0};

	if (xml == NULL || size == 0 || strlen(tag) > JSON_KEY_MAX ||
	    (scope && strlen(scope) > JSON_KEY_MAX))
		return -1;
	out[0] = '\0';
	if (scope) {
		if (xml_open(xml, end, scope, &content) == NULL || content == NULL)
			return -1;
		start = content;
		if ((close = xml_close(start, end, scope)) != NULL)
			end = close; /* a Code outside <Error> is not the error's */
	}
	if (xml_open(start, end, tag, &content) == NULL)
		return -1;
	if (content == NULL)
		return 0; /* <Tag/> */
	if ((close = xml_close(content, end, tag)) == NULL)
		return -1;
	xml_decode(content, close, &o);
	return 0;
}

/* ========================================================================= */
/* Answers: parse, classify, word                                            */
/* ========================================================================= */

/* SES text goes to logs and bounces: printable ASCII only. */
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

static void copy_capped(char *dst, size_t size, const char *src)
{
	size_t n = strlen(src);

	if (n >= size)
		n = size - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

/* "com.amazon.coral.service#ExpiredTokenException:http://..." -> "ExpiredTokenException" */
static void normalize_code(char *code)
{
	char *hash = strrchr(code, '#'), *colon;

	if (hash)
		memmove(code, hash + 1, strlen(hash + 1) + 1);
	if ((colon = strchr(code, ':')) != NULL)
		*colon = '\0';
	while (*code && isspace((unsigned char)code[strlen(code) - 1]))
		code[strlen(code) - 1] = '\0';
}

static int first_json(const char *b, size_t len, const char *const *paths, char *out, size_t size)
{
	for (; *paths; paths++)
		if (ses_api_json_string(b, len, *paths, out, size) == 0)
			return 0;
	out[0] = '\0';
	return -1;
}

void ses_api_parse_response(const struct ses_http_response *r, struct ses_api_reply *out)
{
	static const char *const json_codes[] = {"code", "__type", "Code", NULL};
	static const char *const json_messages[] = {"message", "Message", NULL};
	const char *b = r->body ? r->body : "";
	size_t len = r->body ? r->body_len : 0, skip = 0;

	memset(out, 0, sizeof(*out));
	if (!r->ok) {
		copy_capped(out->message, sizeof(out->message), r->error ? r->error : "no answer");
		sanitize(out->message);
		return;
	}
	out->status = r->status;
	while (skip < len && isspace((unsigned char)b[skip]))
		skip++;
	if (skip < len && b[skip] == '{') {
		out->parsed |= ses_api_json_string(b, len, "MessageId", out->message_id,
		                                   sizeof(out->message_id)) == 0;
		out->parsed |= first_json(b, len, json_codes, out->code, sizeof(out->code)) == 0;
		out->parsed |=
		    first_json(b, len, json_messages, out->message, sizeof(out->message)) == 0;
	} else if (skip < len && b[skip] == '<') {
		out->parsed |= ses_api_xml_text(b, len, "SendRawEmailResult", "MessageId",
		                                out->message_id, sizeof(out->message_id)) == 0;
		out->parsed |=
		    ses_api_xml_text(b, len, "Error", "Code", out->code, sizeof(out->code)) == 0;
		out->parsed |= ses_api_xml_text(b, len, "Error", "Message", out->message,
		                                sizeof(out->message)) == 0;
	}
	if (r->amzn_error_type && *r->amzn_error_type)
		copy_capped(out->code, sizeof(out->code), r->amzn_error_type);
	normalize_code(out->code);
	sanitize(out->message_id);
	sanitize(out->code);
	sanitize(out->message);
}

static const struct {
	const char *code;
	enum delivery_status status;
} CODE_CLASSES[] = {
    /* rate: slow the whole transport down (or hold it, for the daily quota) */
    {"Throttling", DELIVERY_THROTTLED},
    {"ThrottlingException", DELIVERY_THROTTLED},
    {"TooManyRequestsException", DELIVERY_THROTTLED},
    {"LimitExceededException", DELIVERY_THROTTLED},
    /* the operator must act: credentials, permissions, clock, account */
    {"AccessDenied", DELIVERY_OPERATOR},
    {"AccessDeniedException", DELIVERY_OPERATOR},
    {"InvalidClientTokenId", DELIVERY_OPERATOR},
    {"SignatureDoesNotMatch", DELIVERY_OPERATOR},
    {"IncompleteSignature", DELIVERY_OPERATOR},
    {"InvalidSignatureException", DELIVERY_OPERATOR},
    {"UnrecognizedClientException", DELIVERY_OPERATOR},
    {"ExpiredToken", DELIVERY_OPERATOR},
    {"ExpiredTokenException", DELIVERY_OPERATOR},
    {"RequestExpired", DELIVERY_OPERATOR}, /* the clock is off */
    {"MissingAuthenticationToken", DELIVERY_OPERATOR},
    {"MissingAuthenticationTokenException", DELIVERY_OPERATOR},
    {"OptInRequired", DELIVERY_OPERATOR},
    {"AccountSuspendedException", DELIVERY_OPERATOR},
    {"SendingPausedException", DELIVERY_OPERATOR},
    {"AccountSendingPausedException", DELIVERY_OPERATOR},
    {"ConfigurationSetSendingPausedException", DELIVERY_OPERATOR},
    /* permanent for this message */
    {"MessageRejected", DELIVERY_BOUNCE},
    {"MailFromDomainNotVerifiedException", DELIVERY_BOUNCE},
    {"BadRequestException", DELIVERY_BOUNCE},
    /* for SendEmail a missing resource is a misnamed configuration_set: an
     * operator mistake that must not bounce the whole queue (SPEC 5) */
    {"NotFoundException", DELIVERY_OPERATOR},
    {"ConfigurationSetDoesNotExist", DELIVERY_OPERATOR},
    {"ConfigurationSetDoesNotExistException", DELIVERY_OPERATOR},
    /* SES's side: try again */
    {"InternalFailure", DELIVERY_DEFER},
    {"InternalServiceError", DELIVERY_DEFER},
    {"ServiceUnavailable", DELIVERY_DEFER},
    {"ServiceUnavailableException", DELIVERY_DEFER},
    {"RequestTimeout", DELIVERY_DEFER},
    {"RequestTimeoutException", DELIVERY_DEFER},
};

/* Throttling replies also say "Daily message quota exceeded": hold, don't retry soon. */
static enum delivery_status throttled_or_quota(const char *message)
{
	if (message && (strcasestr(message, "daily") || strcasestr(message, "quota")))
		return DELIVERY_QUOTA;
	return DELIVERY_THROTTLED;
}

enum delivery_status ses_api_classify(long http_status, const char *code, const char *message)
{
	size_t i;

	if (http_status == 0)
		return DELIVERY_DEFER; /* no answer: connection, TLS, timeout */
	for (i = 0; code && *code && i < sizeof(CODE_CLASSES) / sizeof(CODE_CLASSES[0]); i++) {
		if (strcasecmp(code, CODE_CLASSES[i].code) != 0)
			continue;
		if (CODE_CLASSES[i].status == DELIVERY_THROTTLED)
			return throttled_or_quota(message);
		return CODE_CLASSES[i].status;
	}
	if (http_status == 429)
		return throttled_or_quota(message);
	if (http_status == 401 || http_status == 403)
		return DELIVERY_OPERATOR;
	if (http_status == 408 || http_status >= 500)
		return DELIVERY_DEFER;
	if (http_status >= 400)
		return DELIVERY_BOUNCE;
	return DELIVERY_DEFER; /* 1xx-3xx, or 2xx without a MessageId */
}

/* The start of an answer we could not read, for the operator's eyes. */
static void body_snippet(const struct ses_http_response *r, char *out, size_t size)
{
	size_t n = r->body ? r->body_len : 0;

	if (n >= size)
		n = size - 1;
	if (n)
		memcpy(out, r->body, n);
	out[n] = '\0';
	for (size_t i = 0; i < n; i++)
		if (out[i] == '\0')
			out[i] = ' ';
	sanitize(out);
}

enum delivery_status ses_api_outcome(const struct ses_http_response *r, struct ses_api_reply *rep,
                                     char *text, size_t size)
{
	char snip[SNIPPET_MAX + 1];
	enum delivery_status st;

	ses_api_parse_response(r, rep);
	if (rep->status >= 200 && rep->status < 300 && rep->message_id[0]) {
		snprintf(text, size, "MessageId %s", rep->message_id);
		return DELIVERY_SENT;
	}
	st = ses_api_classify(rep->status, rep->code, rep->message);
	if (rep->status == 0)
		snprintf(text, size, "no answer from SES: %s", rep->message);
	else if (rep->code[0] && rep->message[0])
		snprintf(text, size, "%ld %s: %s", rep->status, rep->code, rep->message);
	else if (rep->code[0])
		snprintf(text, size, "%ld %s", rep->status, rep->code);
	else if (rep->message[0])
		snprintf(text, size, "%ld: %s", rep->status, rep->message);
	else {
		body_snippet(r, snip, sizeof(snip));
		snprintf(text, size, "%ld %s%s%s", rep->status,
		         rep->status < 300 ? "answer without a MessageId" : "(no error details)",
		         snip[0] ? ": " : "", snip);
	}
	sanitize(text);
	return st;
}

int ses_api_parse_account(const char *body, size_t len, struct ses_api_account *out)
{
	memset(out, 0, sizeof(*out));
	if (ses_api_json_number(body, len, "SendQuota.MaxSendRate", &out->max_send_rate) == -1 ||
	    out->max_send_rate < 0)
		return -1;
	if (ses_api_json_number(body, len, "SendQuota.Max24HourSend", &out->max_24h) == -1 ||
	    out->max_24h < 0)
		out->max_24h = -1;
	if (ses_api_json_number(body, len, "SendQuota.SentLast24Hours", &out->sent_24h) == -1 ||
	    out->sent_24h < 0)
		out->sent_24h = 0;
	if (ses_api_json_bool(body, len, "ProductionAccessEnabled", &out->production) == -1)
		out->production = 0;
	if (ses_api_json_bool(body, len, "SendingEnabled", &out->sending_enabled) == -1)
		out->sending_enabled = 1;
	return 0;
}

int ses_api_json_array_string(const char *json, size_t len, const char *path, size_t index,
                              char *out, size_t size)
{
	struct sout o = {out, size, 0, 0};
	struct jcur v;
	size_t i;

	if (size == 0 || j_lookup(json, len, path, &v) == -1 || v.p >= v.end || *v.p != '[')
		return -1;
	out[0] = '\0';
	v.p++;
	for (i = 0;; i++) {
		j_ws(&v);
		if (v.p >= v.end || *v.p == ']')
			return -1; /* fewer elements */
		if (i == index)
			return *v.p == '"' && j_string(&v, &o) == 0 && !o.full ? 0 : -1;
		if (j_skip(&v, 1) == -1)
			return -1;
		j_ws(&v);
		if (v.p >= v.end || *v.p++ != ',')
			return -1;
	}
}

int ses_api_json_array_next(const char *json, size_t len, const char *path, size_t *pos,
                            const char **elem, size_t *elem_len)
{
	struct jcur v;

	if (*pos == 0) {
		if (j_lookup(json, len, path, &v) == -1 || v.p >= v.end || *v.p != '[')
			return -1;
		v.p++;
	} else {
		if (*pos > len)
			return -1;
		v.p = json + *pos;
		v.end = json + len;
		j_ws(&v);
		if (v.p < v.end && *v.p == ']')
			return 0;
		if (v.p >= v.end || *v.p++ != ',')
			return -1;
	}
	j_ws(&v);
	if (v.p >= v.end)
		return -1;
	if (*v.p == ']')
		return 0;
	*elem = v.p;
	if (j_skip(&v, 1) == -1)
		return -1;
	*elem_len = (size_t)(v.p - *elem);
	*pos = (size_t)(v.p - json);
	return 1;
}

/* A DKIM token becomes a DNS label: 1-63 letters, digits or '-', nothing else. */
static int dns_label_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 63)
		return 0;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && *s != '-')
			return 0;
	return 1;
}

int ses_api_parse_identity(const char *body, size_t len, struct ses_api_identity *out)
{
	char tok[SES_API_TOKEN_MAX];
	size_t i;

	memset(out, 0, sizeof(*out));
	if (ses_api_json_bool(body, len, "VerifiedForSendingStatus", &out->verified) == -1)
		return -1;
	ses_api_json_string(body, len, "VerificationStatus", out->verification_status,
	                    sizeof(out->verification_status));
	ses_api_json_string(body, len, "DkimAttributes.Status", out->dkim_status,
	                    sizeof(out->dkim_status));
	if (ses_api_json_bool(body, len, "DkimAttributes.SigningEnabled", &out->dkim_signing) == -1)
		out->dkim_signing = 0;
	for (i = 0; out->ndkim_tokens < SES_API_DKIM_TOKENS_MAX && i < 16; i++) {
		if (ses_api_json_array_string(body, len, "DkimAttributes.Tokens", i, tok,
		                              sizeof(tok)) == -1)
			break;
		if (dns_label_ok(tok))
			memcpy(out->dkim_tokens[out->ndkim_tokens++], tok, sizeof(tok));
	}
	ses_api_json_string(body, len, "MailFromAttributes.MailFromDomain", out->mail_from_domain,
	                    sizeof(out->mail_from_domain));
	ses_api_json_string(body, len, "MailFromAttributes.MailFromDomainStatus",
	                    out->mail_from_status, sizeof(out->mail_from_status));
	sanitize(out->verification_status);
	sanitize(out->dkim_status);
	sanitize(out->mail_from_domain);
	sanitize(out->mail_from_status);
	return 0;
}

/* ========================================================================= */
/* The transport                                                             */
/* ========================================================================= */

enum job_state { JOB_HASHING, JOB_SENDING, JOB_FAILED };
static const char *const JOB_STATE_NAMES[] = {"hashing", "sending", "failed"};

struct job {
	struct job *next, *prev;
	struct ses_api *api;
	struct delivery *d;
	enum job_state state;
	struct ses_api_body body;
	struct sigv4_sha256 *sha; /* pass 1 */
	char payload_hash[SIGV4_HEX_SIZE];
	uint64_t stream_len;        /* what pass 1 counted */
	struct event *ev;           /* pass 1 slices; a FAILED report */
	struct ses_http_call *call; /* pass 2 */
	enum delivery_status fail_status;
	char fail_text[DELIVERY_TEXT_MAX];
};

struct ses_api {
	struct transport t;
	struct event_base *base;
	struct ses_http *http;
	struct ses_creds *creds;
	char *name, *region, *base_url, *host, *configuration_set;
	int api_version;
	size_t concurrency;
	struct job *jobs;
	size_t njobs;

	struct event *account_timer;
	struct ses_http_call *account_call;
	struct ses_api_account account;
	int account_known;
	int account_warned;
};

static const struct timeval TV_NOW = {0, 0};

/* --- signing ---------------------------------------------------------------- */

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

/*
 * The headers of a signed request: Content-Type (with a body), Host,
 * X-Amz-Date, X-Amz-Security-Token for temporary credentials, all signed, and
 * Authorization.  NULL with *err when sigv4 refuses.
 */
struct curl_slist *ses_api_sign(const char *host, const char *region, const char *method,
                                const char *path, const char *content_type,
                                const char *payload_hash, const struct sigv4_credentials *cr,
                                const char **err)
{
	char amz_date[SIGV4_AMZ_DATE_SIZE];
	struct sigv4_header hs[4];
	struct sigv4_request req;
	struct sigv4_signed s;
	struct curl_slist *l = NULL;
	char *wire_path = NULL;
	const char *q;
	size_t n = 0, i;

	memset(&s, 0, sizeof(s));
	if (sigv4_amz_date(time(NULL), amz_date) == -1) {
		*err = "the clock is out of range";
		return NULL;
	}
	if (content_type)
		hs[n++] = (struct sigv4_header){"Content-Type", content_type};
	hs[n++] = (struct sigv4_header){"Host", host};
	hs[n++] = (struct sigv4_header){"X-Amz-Date", amz_date};
	if (cr->session_token && *cr->session_token)
		hs[n++] = (struct sigv4_header){"X-Amz-Security-Token", cr->session_token};
	memset(&req, 0, sizeof(req));
	req.method = method;
	if ((q = strchr(path, '?')) != NULL) {
		wire_path = xstrndup(path, (size_t)(q - path));
		req.query = q + 1;
	}
	req.path = wire_path ? wire_path : path;
	req.headers = hs;
	req.nheaders = n;
	req.payload_hash = payload_hash;
	req.region = region;
	req.service = SES_SERVICE;
	req.amz_date = amz_date;
	if (sigv4_sign(&req, cr, &s) == -1) {
		*err = s.error ? s.error : "signing failed";
		sigv4_signed_free(&s);
		free(wire_path);
		return NULL;
	}
	free(wire_path);
	for (i = 0; i < n; i++)
		l = slist_add(l, hs[i].name, hs[i].value);
	l = slist_add(l, "Authorization", s.authorization);
	sigv4_signed_free(&s);
	return l;
}

static struct curl_slist *sign_request(struct ses_api *api, const char *method, const char *path,
                                       const char *content_type, const char *payload_hash,
                                       const struct sigv4_credentials *cr, const char **err)
{
	return ses_api_sign(api->host, api->region, method, path, content_type, payload_hash, cr,
	                    err);
}

/* --- deliveries --------------------------------------------------------------- */

static void job_enter(struct job *j, enum job_state st)
{
	log_debug("%s: %s: %s -> %s", j->d->id, j->api->name, JOB_STATE_NAMES[j->state],
	          JOB_STATE_NAMES[st]);
	j->state = st;
}

/* Forget j without telling anyone (free(), or just before done()). */
static void job_free(struct job *j)
{
	struct ses_api *api = j->api;

	if (j->prev)
		j->prev->next = j->next;
	else
		api->jobs = j->next;
	if (j->next)
		j->next->prev = j->prev;
	api->njobs--;
	if (j->call)
		ses_http_cancel(j->call);
	if (j->ev)
		event_free(j->ev);
	if (j->sha)
		sigv4_sha256_free(j->sha);
	ses_api_body_free(&j->body);
	j->d->priv = NULL;
	free(j);
}

/* The outcome is known: free the job first, so that done() sees the
 * capacity it freed and may send() or free() at will. */
static void job_finish(struct job *j, enum delivery_status st, const char *text)
{
	struct delivery *d = j->d;

	delivery_set_all(d, st, "%s", text);
	job_free(j);
	d->done(d);
}

static void job_fail_later(struct job *j, enum delivery_status st, const char *text)
{
	j->fail_status = st;
	copy_capped(j->fail_text, sizeof(j->fail_text), text);
	job_enter(j, JOB_FAILED);
	event_add(j->ev, &TV_NOW);
}

/* Pass 2's reader: exactly the stream_len bytes pass 1 hashed, or an abort. */
static size_t job_reader(void *arg, char *buf, size_t len)
{
	struct job *j = arg;
	uint64_t left = j->stream_len - j->body.produced;
	ssize_t n;

	if (left == 0)
		return 0;
	if (len > left)
		len = (size_t)left;
	n = ses_api_body_read(&j->body, buf, len);
	if (n <= 0) {
		if (n == 0)
			j->body.err = EIO; /* shorter than pass 1: the file changed */
		return (size_t)-1;
	}
	return (size_t)n;
}

/* libcurl must resend the body (a reused connection turned out dead). */
static int job_rewind(void *arg)
{
	struct job *j = arg;

	ses_api_body_rewind(&j->body);
	return 0;
}

static void job_http_done(void *arg, const struct ses_http_response *r)
{
	struct job *j = arg;
	struct ses_api *api = j->api;
	struct ses_api_reply rep;
	char text[DELIVERY_TEXT_MAX];
	enum delivery_status st;

	j->call = NULL; /* ses_http frees it after we return */
	memset(&rep, 0, sizeof(rep));
	if (!r->ok && j->body.err) {
		snprintf(text, sizeof(text), "cannot read the queue file: %s",
		         strerror(j->body.err));
		st = DELIVERY_DEFER;
	} else
		st = ses_api_outcome(r, &rep, text, sizeof(text));
	log_debug("%s: %s: answer %ld in %.2fs, request-id=%s: %s", j->d->id, api->name,
	          r->ok ? r->status : 0L, r->seconds, r->request_id ? r->request_id : "-", text);
	if (st == DELIVERY_OPERATOR && r->ok && strncasecmp(rep.code, "ExpiredToken", 12) == 0)
		ses_creds_refresh(api->creds);
	job_finish(j, st, text);
}

static void job_start_request(struct job *j)
{
	struct ses_api *api = j->api;
	const struct sigv4_credentials *cr = ses_creds_get(api->creds);
	const char *path = api->api_version == 1 ? "/" : V2_SEND_PATH, *err = NULL;
	const char *ctype = api->api_version == 1 ? V1_CONTENT_TYPE : V2_CONTENT_TYPE;
	struct ses_http_request req;
	struct curl_slist *headers;
	char *url, text[DELIVERY_TEXT_MAX];

	if (cr == NULL) {
		job_finish(j, DELIVERY_DEFER, "no AWS credentials available yet");
		return;
	}
	headers = sign_request(api, "POST", path, ctype, j->payload_hash, cr, &err);
	if (headers == NULL) {
		snprintf(text, sizeof(text), "cannot sign the SES request: %s", err);
		job_finish(j, DELIVERY_OPERATOR, text);
		return;
	}
	j->stream_len = j->body.produced;
	ses_api_body_rewind(&j->body);
	url = xasprintf("%s%s", api->base_url, path);
	memset(&req, 0, sizeof(req));
	req.method = "POST";
	req.url = url;
	req.headers = headers;
	req.reader = job_reader;
	req.rewind = job_rewind;
	req.reader_arg = j;
	req.stream_len = j->stream_len;
	req.timeout_ms = SEND_TIMEOUT_MS + (long)(j->stream_len / 256);
	req.done = job_http_done;
	req.arg = j;
	log_debug("%s: %s: POST %s size=%ju, nrcpt=%zu", j->d->id, api->name, url,
	          (uintmax_t)j->stream_len, j->d->nrcpts);
	job_enter(j, JOB_SENDING);
	j->call = ses_http_send(api->http, &req);
	free(url);
}

/* Pass 1 slices, and FAILED reports: always from the loop. */
static void job_step(evutil_socket_t fd, short what, void *arg)
{
	struct job *j = arg;
	char text[DELIVERY_TEXT_MAX];
	int r;

	if (j->state == JOB_FAILED) {
		job_finish(j, j->fail_status, j->fail_text);
		return;
	}
	ASSERT(j->state == JOB_HASHING);
	r = ses_api_body_hash(&j->body, j->sha, HASH_SLICE);
	if (r == 0) {
		event_add(j->ev, &TV_NOW);
		return;
	}
	if (r == -1) {
		snprintf(text, sizeof(text), "cannot read the queue file: %s",
		         strerror(j->body.err));
		job_finish(j, DELIVERY_DEFER, text);
		return;
	}
	sigv4_sha256_final(j->sha, j->payload_hash);
	sigv4_sha256_free(j->sha);
	j->sha = NULL;
	job_start_request(j);
}

static void api_send(struct transport *t, struct delivery *d)
{
	struct ses_api *api = t->impl;
	struct job *j;

	ASSERT(d->nrcpts >= 1 && d->nrcpts <= DELIVERY_MAX_RCPTS);
	ASSERT(api->njobs < api->concurrency);
	j = xcalloc(1, sizeof(*j));
	j->api = api;
	j->d = d;
	d->priv = j;
	j->next = api->jobs;
	if (api->jobs)
		api->jobs->prev = j;
	api->jobs = j;
	api->njobs++;
	ses_api_body_init(&j->body, api->api_version, d->sender, d->rcpts, d->nrcpts,
	                  api->configuration_set, d->fd, d->data_offset, d->data_len);
	if ((j->ev = evtimer_new(api->base, job_step, j)) == NULL)
		fatalx("evtimer_new failed");
	j->state = JOB_HASHING;
	/* No credentials: don't spend pass 1 on a call that cannot be signed. */
	if (ses_creds_get(api->creds) == NULL) {
		job_fail_later(j, DELIVERY_DEFER, "no AWS credentials available yet");
		return;
	}
	j->sha = sigv4_sha256_new();
	event_add(j->ev, &TV_NOW);
}

static size_t api_capacity(struct transport *t)
{
	struct ses_api *api = t->impl;

	return api->njobs < api->concurrency ? api->concurrency - api->njobs : 0;
}

static uint64_t api_max_size(struct transport *t)
{
	struct ses_api *api = t->impl;

	return api->api_version == 1 ? SES_API_V1_MAX_SIZE : SES_API_V2_MAX_SIZE;
}

/* --- GetAccount --------------------------------------------------------------- */

static void account_schedule(struct ses_api *api, int seconds)
{
	struct timeval tv = {seconds, 0};

	event_add(api->account_timer, &tv);
}

static void account_log(struct ses_api *api, const struct ses_api_account *a)
{
	const struct ses_api_account *old = &api->account;
	int changed = !api->account_known || old->production != a->production ||
	              old->sending_enabled != a->sending_enabled ||
	              old->max_send_rate != a->max_send_rate || old->max_24h != a->max_24h;
	char quota[48], line[256];

	if (a->max_24h < 0)
		snprintf(quota, sizeof(quota), "unlimited");
	else
		snprintf(quota, sizeof(quota), "%.0f", a->max_24h);
	snprintf(line, sizeof(line),
	         "SES account: %s, sending %s, max send rate %g/s, 24h quota %s (used %.0f)",
	         a->production ? "production" : "sandbox",
	         a->sending_enabled ? "enabled" : "PAUSED", a->max_send_rate, quota, a->sent_24h);
	/* once when it changes; the used count alone changes every poll */
	if (!changed)
		log_debug("%s", line);
	else if (!a->sending_enabled)
		log_warnx("%s", line);
	else
		log_info("%s", line);
}

static void account_done(void *arg, const struct ses_http_response *r)
{
	struct ses_api *api = arg;
	struct ses_api_account a;
	struct ses_api_reply rep;
	char text[DELIVERY_TEXT_MAX];
	enum delivery_status st;

	api->account_call = NULL;
	if (r->ok && r->status == 200 && ses_api_parse_account(r->body, r->body_len, &a) == 0) {
		account_log(api, &a);
		api->account = a;
		api->account_known = 1;
		api->account_warned = 0;
		account_schedule(api, ACCOUNT_INTERVAL);
		return;
	}
	st = ses_api_outcome(r, &rep, text, sizeof(text));
	if (r->ok && r->status == 200) {
		snprintf(text, sizeof(text), "200 answer without SendQuota.MaxSendRate");
		st = DELIVERY_BOUNCE; /* will not fix itself soon */
	}
	if (st == DELIVERY_OPERATOR || st == DELIVERY_BOUNCE) {
		api->account_known = 0;
		if (!api->account_warned)
			log_warnx("%s: GetAccount failed (%s): send rate and quota unknown; allow "
			          "ses:GetAccount in the IAM policy, or set max_send_rate",
			          api->name, text);
		account_schedule(api, ACCOUNT_INTERVAL);
	} else {
		if (!api->account_warned)
			log_warnx("%s: GetAccount failed (%s): retrying in %ds", api->name, text,
			          ACCOUNT_RETRY);
		account_schedule(api, ACCOUNT_RETRY);
	}
	api->account_warned = 1;
}

static void account_poll(evutil_socket_t fd, short what, void *arg)
{
	struct ses_api *api = arg;
	const struct sigv4_credentials *cr = ses_creds_get(api->creds);
	struct ses_http_request req;
	struct curl_slist *headers;
	const char *err = NULL;
	char *url;

	if (api->account_call)
		return;
	if (cr == NULL) {
		account_schedule(api, ACCOUNT_NO_CREDS);
		return;
	}
	headers = sign_request(api, "GET", V2_ACCOUNT_PATH, NULL, SIGV4_EMPTY_SHA256, cr, &err);
	if (headers == NULL) {
		if (!api->account_warned)
			log_warnx("%s: cannot sign GetAccount: %s", api->name, err);
		api->account_warned = 1;
		account_schedule(api, ACCOUNT_INTERVAL);
		return;
	}
	url = xasprintf("%s%s", api->base_url, V2_ACCOUNT_PATH);
	memset(&req, 0, sizeof(req));
	req.method = "GET";
	req.url = url;
	req.headers = headers;
	req.timeout_ms = ACCOUNT_TIMEOUT;
	req.done = account_done;
	req.arg = api;
	log_debug("%s: GET %s", api->name, url);
	api->account_call = ses_http_send(api->http, &req);
	free(url);
}

static double api_send_rate(struct transport *t, double *quota_left)
{
	struct ses_api *api = t->impl;
	const struct ses_api_account *a = &api->account;

	if (quota_left)
		*quota_left = -1;
	if (!api->account_known)
		return api->account_warned ? -1 : 0; /* failed: do not wait for it */
	if (quota_left && a->max_24h >= 0)
		*quota_left = a->max_24h > a->sent_24h ? a->max_24h - a->sent_24h : 0;
	return a->max_send_rate;
}

/* --- life cycle ----------------------------------------------------------------- */

int ses_api_parse_endpoint(const char *ep, char **base_url, char **host)
{
	size_t len = strlen(ep), skip, i;

	while (len && ep[len - 1] == '/')
		len--;
	if (strncasecmp(ep, "https://", 8) == 0)
		skip = 8;
	else if (strncasecmp(ep, "http://", 7) == 0)
		skip = 7;
	else
		return -1;
	if (len <= skip)
		return -1;
	for (i = skip; i < len; i++)
		if (strchr("/?#@ ", ep[i]) || (unsigned char)ep[i] < 0x21 ||
		    (unsigned char)ep[i] >= 0x7f)
			return -1;
	*base_url = xstrndup(ep, len);
	*host = xstrndup(ep + skip, len - skip);
	return 0;
}

static void api_free(struct transport *t)
{
	struct ses_api *api;

	if (t == NULL)
		return;
	api = t->impl;
	while (api->jobs)
		job_free(api->jobs); /* their done() does not run */
	if (api->account_call)
		ses_http_cancel(api->account_call);
	if (api->account_timer)
		event_free(api->account_timer);
	free(api->name);
	free(api->region);
	free(api->base_url);
	free(api->host);
	free(api->configuration_set);
	free(api);
}

struct transport *ses_api_transport_new(struct event_base *base, struct ses_http *http,
                                        struct ses_creds *creds, const struct conf *conf)
{
	struct ses_api *api;
	char *def = NULL;

	if (conf->region == NULL || *conf->region == '\0') {
		log_error("ses-api: no region: set [ses] region or AWS_REGION");
		return NULL;
	}
	api = xcalloc(1, sizeof(*api));
	api->t.impl = api;
	api->base = base;
	api->http = http;
	api->creds = creds;
	api->region = xstrdup(conf->region);
	api->name = xasprintf("ses-api[%s]", conf->region);
	api->api_version = conf->api_version == 1 ? 1 : 2;
	api->concurrency = conf->concurrency > 0 ? (size_t)conf->concurrency : 1;
	if (conf->configuration_set && *conf->configuration_set)
		api->configuration_set = xstrdup(conf->configuration_set);
	if (conf->endpoint == NULL || *conf->endpoint == '\0')
		def = xasprintf("https://email.%s.amazonaws.com", conf->region);
	if (ses_api_parse_endpoint(def ? def : conf->endpoint, &api->base_url, &api->host) == -1) {
		log_error("%s: endpoint \"%s\" is not http(s)://host[:port]", api->name,
		          def ? def : conf->endpoint);
		free(def);
		api_free(&api->t);
		return NULL;
	}
	free(def);
	api->t.name = api->name;
	api->t.capacity = api_capacity;
	api->t.send = api_send;
	api->t.max_size = api_max_size;
	api->t.send_rate = api_send_rate;
	api->t.free = api_free;
	if ((api->account_timer = evtimer_new(base, account_poll, api)) == NULL)
		fatalx("evtimer_new failed");
	account_schedule(api, 0);
	return &api->t;
}
