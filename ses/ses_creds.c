/*
 * ses_creds.c - the AWS credentials chain and its background refresh (see
 * ses_creds.h for the order and the contract).
 *
 * Owns: choosing the source (a "plan", decided from the config, the
 * environment and the shared files alone), fetching from it (a
 * credential_process child read through a pipe, STS, the container endpoint,
 * IMDSv2 - all on the loop), the current credentials, and the timer that
 * refreshes them or retries after a failure.  One fetch runs at a time; its
 * progress is the state below, changed only through enter_state().
 *
 * Must never: block the loop (only the small local files are read directly),
 * wait for a child it has not killed, put a secret into a log line or an
 * error text (errors name sources, files and HTTP statuses, never values), or
 * drop a secret without wiping it.  Everything read from outside is capped
 * before it is parsed: shared files 1 MiB, tokens 64 KiB, process output and
 * HTTP bodies 64 KiB, JSON strings 16 KiB, JSON nesting 16 deep.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <openssl/crypto.h>

#include "conf/conf.h"
#include "relay/log.h"
#include "relay/util.h"
#include "ses/ses_creds.h"
#include "ses/ses_http.h"
#include "ses/sigv4.h"

extern char **environ;

#define SHARED_FILE_MAX      (1024 * 1024) /* ~/.aws/credentials, ~/.aws/config */
#define TOKEN_FILE_MAX       (64 * 1024)   /* web identity / container auth token */
#define PROCESS_OUTPUT_MAX   (64 * 1024)
#define PROCESS_TIMEOUT      30 /* seconds */
#define PROCESS_REAP_POLL_MS 20
#define HTTP_RESPONSE_MAX    (64 * 1024)
#define JSON_STRING_MAX      (16 * 1024)
#define JSON_DEPTH_MAX       16
#define IMDS_TOKEN_MAX       4096
#define IMDS_ROLE_MAX        128
#define RETRY_MIN            5 /* seconds; doubles per failure */
#define RETRY_MAX            300
#define REFRESH_EARLY        600 /* refresh 10-15 minutes before expiry */
#define REFRESH_JITTER       300
#define ERR_MAX              512

#define ECS_HOST         "http://169.254.170.2"
#define IMDS_ENDPOINT    "http://169.254.169.254"
#define IMDS_ENDPOINT_V6 "http://[fd00:ec2::254]"
#define IMDS_ROLES_PATH  "/latest/meta-data/iam/security-credentials/"

static const char NOTHING_FOUND[] =
    "no AWS credentials found: set [ses] access_key_id/secret_access_key, "
    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile in ~/.aws/credentials, "
    "or run on EC2/ECS with a role";

/* A set of keys.  Every string is a secret but the access key id, and all
 * are wiped when dropped. */
struct creds_set {
	char *akid, *secret, *token;
	time_t expires; /* 0: does not expire */
};

/* Where credentials come from, decided without any I/O but local files. */
enum plan_kind {
	PLAN_NONE, /* nothing configured (error holds the text) */
	PLAN_ERROR,
	PLAN_STATIC,
	PLAN_PROCESS,
	PLAN_WEB_IDENTITY,
	PLAN_CONTAINER,
	PLAN_IMDS,
};

struct plan {
	enum plan_kind kind;
	char *source;          /* for logs and ses_creds_source() */
	char *error;           /* PLAN_NONE, PLAN_ERROR */
	struct creds_set keys; /* PLAN_STATIC */
	char *command;         /* PLAN_PROCESS */
	char *token_file;      /* PLAN_WEB_IDENTITY */
	char *role_arn, *session_name;
	char *url;              /* STS endpoint, container URL, IMDS endpoint */
	char *auth_file, *auth; /* PLAN_CONTAINER; auth is a secret */
};

enum creds_state {
	CREDS_IDLE,
	CREDS_PROCESS,
	CREDS_STS,
	CREDS_CONTAINER,
	CREDS_IMDS_TOKEN,
	CREDS_IMDS_ROLE,
	CREDS_IMDS_CREDS,
};

static const char *const state_names[] = {
    "idle", "credential_process", "sts", "container", "imds-token", "imds-role", "imds-creds",
};

struct ses_creds {
	struct event_base *base;
	struct ses_http *http;
	char *conf_profile, *conf_akid, *conf_secret, *conf_region;
	int started;

	enum creds_state state;
	struct plan plan; /* the source being tried, or the one that worked */
	struct ses_http_call *call;
	char *imds_token, *imds_role;

	/* credential_process */
	pid_t pid;
	int pipe_fd;
	struct event *ev_pipe, *ev_proc;
	char *out;
	size_t out_len;
	double proc_deadline;
	int proc_eof;

	/* what ses_creds_get() hands out */
	struct creds_set cur;
	struct sigv4_credentials view;
	char *source;
	int have;
	int expired_logged;

	struct event *ev_timer; /* refresh, or retry after a failure */
	int failures;
	int warned;

	ses_creds_ready ready;
	void *ready_arg;
	struct event *ev_ready;
	int reported, ready_ok;
	char ready_err[ERR_MAX];
};

static void attempt_start(struct ses_creds *c);
static void attempt_finish(struct ses_creds *c, struct creds_set *got, const char *source,
                           const char *err);

/* --- small helpers -------------------------------------------------------- */

static void wipe_free(char **p)
{
	if (*p) {
		OPENSSL_cleanse(*p, strlen(*p));
		free(*p);
		*p = NULL;
	}
}

static void wipe_buf(char *p, size_t len)
{
	if (p) {
		OPENSSL_cleanse(p, len);
		free(p);
	}
}

static const char *env(const char *name)
{
	const char *v = getenv(name);
	return v && *v ? v : NULL;
}

/* vsnprintf into an error buffer; a cut message ends in "...". */
static void msg(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void msg(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	if (n < 0)
		buf[0] = '\0';
	else if ((size_t)n >= size && size > 4)
		memcpy(buf + size - 4, "...", 4);
}

/* Copy text from a peer for an error message: printable ASCII, capped. */
static void printable(char *dst, size_t size, const char *src)
{
	size_t i;

	for (i = 0; src && src[i] && i + 1 < size; i++)
		dst[i] = src[i] >= 0x20 && src[i] < 0x7f ? src[i] : '?';
	dst[i] = '\0';
}

static const char *fmt_time(time_t t, char buf[32])
{
	struct tm tm;

	if (gmtime_r(&t, &tm) == NULL || strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(buf, 32, "%lld", (long long)t);
	return buf;
}

/* Trim trailing whitespace in place (token files end in a newline). */
static size_t rtrim(char *s, size_t len)
{
	while (len && isspace((unsigned char)s[len - 1]))
		s[--len] = '\0';
	return len;
}

/* Only printable ASCII without blanks: what keys and tokens look like, and
 * what may go into an HTTP header. */
static int token_chars_ok(const char *s)
{
	for (; *s; s++)
		if (*s <= 0x20 || *s >= 0x7f)
			return 0;
	return 1;
}

/*
 * A small local file, whole, capped.  Returns an xmalloc'd NUL-terminated
 * buffer (wipe it: it may hold secrets) or NULL with *errp.  O_NONBLOCK and
 * the regular-file check keep a FIFO from blocking the loop.
 */
static char *read_capped(const char *path, size_t cap, size_t *lenp, int *errp)
{
	struct stat st;
	size_t len = 0;
	char *buf;
	int fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)) == -1) {
		*errp = errno;
		return NULL;
	}
	if (fstat(fd, &st) == -1) {
		*errp = errno;
		close(fd);
		return NULL;
	}
	if (!S_ISREG(st.st_mode)) {
		*errp = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
		close(fd);
		return NULL;
	}
	buf = xmalloc(cap + 2);
	for (;;) {
		ssize_t n = read(fd, buf + len, cap + 1 - len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			*errp = errno;
			close(fd);
			wipe_buf(buf, cap + 2);
			return NULL;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > cap) {
			*errp = EFBIG;
			close(fd);
			wipe_buf(buf, cap + 2);
			return NULL;
		}
	}
	close(fd);
	buf[len] = '\0';
	*lenp = len;
	return buf;
}

static void creds_clear(struct creds_set *s)
{
	wipe_free(&s->akid);
	wipe_free(&s->secret);
	wipe_free(&s->token);
	s->expires = 0;
}

/* Keys end up in HTTP headers and HMAC input: refuse anything odd. */
static int creds_check(const struct creds_set *s, char *err, size_t errlen)
{
	if (s->akid == NULL || s->akid[0] == '\0' || s->secret == NULL || s->secret[0] == '\0') {
		msg(err, errlen, "an access key id and a secret access key are both required");
		return -1;
	}
	if (!token_chars_ok(s->akid) || !token_chars_ok(s->secret) ||
	    (s->token && !token_chars_ok(s->token))) {
		msg(err, errlen, "a key or token contains blanks or non-ASCII characters");
		return -1;
	}
	return 0;
}

static struct curl_slist *hdr_add(struct curl_slist *list, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static struct curl_slist *hdr_add(struct curl_slist *list, const char *fmt, ...)
{
	struct curl_slist *l;
	va_list ap;
	char *line;

	va_start(ap, fmt);
	if (vasprintf(&line, fmt, ap) < 0)
		fatal("vasprintf");
	va_end(ap);
	l = curl_slist_append(list, line);
	wipe_free(&line); /* header values may be tokens */
	if (l == NULL)
		fatalx("curl_slist_append: out of memory");
	return l;
}

/* --- a growable buffer for decoded strings (wiped, they may be secrets) ---- */

struct sbuf {
	char *p;
	size_t len, cap;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 64;
		char *np;
		while (cap < b->len + n + 1)
			cap *= 2;
		np = xmalloc(cap);
		if (b->p) {
			memcpy(np, b->p, b->len);
			OPENSSL_cleanse(b->p, b->cap);
			free(b->p);
		}
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void sb_wipe(struct sbuf *b)
{
	if (b->p) {
		OPENSSL_cleanse(b->p, b->cap);
		free(b->p);
	}
	memset(b, 0, sizeof(*b));
}

static char *sb_take(struct sbuf *b)
{
	char *p = b->p ? b->p : xstrdup("");
	memset(b, 0, sizeof(*b));
	return p;
}

static void utf8_put(struct sbuf *b, unsigned long cp)
{
	char u[4];
	size_t n;

	if (cp < 0x80) {
		u[0] = (char)cp;
		n = 1;
	} else if (cp < 0x800) {
		u[0] = (char)(0xc0 | (cp >> 6));
		u[1] = (char)(0x80 | (cp & 0x3f));
		n = 2;
	} else if (cp < 0x10000) {
		u[0] = (char)(0xe0 | (cp >> 12));
		u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		u[2] = (char)(0x80 | (cp & 0x3f));
		n = 3;
	} else {
		u[0] = (char)(0xf0 | (cp >> 18));
		u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
		u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
		u[3] = (char)(0x80 | (cp & 0x3f));
		n = 4;
	}
	sb_add(b, u, n);
}

/* --- shared config / credentials files ----------------------------------- */

/* Is the section header text [s, e) (between the brackets) PROFILE's? */
static int section_is(const char *s, const char *e, const char *profile, int is_config)
{
	size_t plen = strlen(profile);

	while (s < e && isspace((unsigned char)*s))
		s++;
	while (e > s && isspace((unsigned char)e[-1]))
		e--;
	if (is_config) {
		if ((size_t)(e - s) > 7 && strncmp(s, "profile", 7) == 0 &&
		    isspace((unsigned char)s[7])) {
			s += 7;
			while (s < e && isspace((unsigned char)*s))
				s++;
		} else if (!((size_t)(e - s) == 7 && strncmp(s, "default", 7) == 0))
			return 0; /* [sso-session x], [services x], a bare [x] */
	}
	return (size_t)(e - s) == plen && memcmp(s, profile, plen) == 0;
}

char *ses_creds_profile_value(const char *text, size_t len, const char *profile, int is_config,
                              const char *key, int *section_found)
{
	const char *p = text, *end = text + len;
	size_t klen = strlen(key);
	long key_indent = -1;
	char *val = NULL;
	int in = 0;

	*section_found = 0;
	while (p < end) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		const char *s = p, *le = eol ? eol : end, *d, *ne, *vs;
		long indent = 0;

		p = eol ? eol + 1 : end;
		while (s < le && (*s == ' ' || *s == '\t'))
			s++, indent++;
		while (le > s && isspace((unsigned char)le[-1]))
			le--;
		if (s == le || *s == '#' || *s == ';')
			continue;
		if (*s == '[') {
			const char *close = memrchr(s, ']', (size_t)(le - s));
			in = close && section_is(s + 1, close, profile, is_config);
			if (in)
				*section_found = 1;
			key_indent = -1;
			continue;
		}
		/* deeper than the key before it: a continuation or a nested
		 * setting ("s3 =" then "  max_concurrent_requests = 4") */
		if (!in || (key_indent >= 0 && indent > key_indent))
			continue;
		for (d = s; d < le && *d != '=' && *d != ':'; d++)
			;
		if (d == le)
			continue;
		key_indent = indent;
		for (ne = d; ne > s && isspace((unsigned char)ne[-1]); ne--)
			;
		for (vs = d + 1; vs < le && isspace((unsigned char)*vs); vs++)
			;
		if ((size_t)(ne - s) == klen && strncasecmp(s, key, klen) == 0) {
			wipe_free(&val);
			val = xstrndup(vs, (size_t)(le - vs));
		}
	}
	return val;
}

/* --- JSON: a validating scan that extracts top-level fields ----------------- */

struct json {
	const char *p, *end;
};

static void json_ws(struct json *j)
{
	while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
		j->p++;
}

static int json_peek(struct json *j, char ch)
{
	return j->p < j->end && *j->p == ch;
}

static int hex4(const char *p, unsigned long *out)
{
	unsigned long v = 0;
	int i;

	for (i = 0; i < 4; i++) {
		int ch = (unsigned char)p[i], d;
		if (ch >= '0' && ch <= '9')
			d = ch - '0';
		else if (ch >= 'a' && ch <= 'f')
			d = ch - 'a' + 10;
		else if (ch >= 'A' && ch <= 'F')
			d = ch - 'A' + 10;
		else
			return -1;
		v = v * 16 + (unsigned long)d;
	}
	*out = v;
	return 0;
}

/* A string at j->p, decoded into out when out is not NULL.  Control
 * characters, bad escapes, lone surrogates, \u0000 and strings longer than
 * JSON_STRING_MAX bytes (decoded) are refused. */
static int json_string(struct json *j, struct sbuf *out)
{
	size_t n = 0;

	if (!json_peek(j, '"'))
		return -1;
	j->p++;
	while (j->p < j->end) {
		unsigned char ch = (unsigned char)*j->p;
		unsigned long cp;
		char e;

		if (ch == '"') {
			j->p++;
			if (out && out->p == NULL)
				sb_add(out, "", 0);
			return 0;
		}
		if (ch < 0x20)
			return -1;
		if (ch != '\\') {
			const char *s = j->p;
			while (j->p < j->end && *j->p != '"' && *j->p != '\\' &&
			       (unsigned char)*j->p >= 0x20)
				j->p++;
			n += (size_t)(j->p - s);
			if (n > JSON_STRING_MAX)
				return -1;
			if (out)
				sb_add(out, s, (size_t)(j->p - s));
			continue;
		}
		if (j->end - j->p < 2)
			return -1;
		e = j->p[1];
		j->p += 2;
		switch (e) {
		case '"':
		case '\\':
		case '/':
			cp = (unsigned char)e;
			break;
		case 'b':
			cp = '\b';
			break;
		case 'f':
			cp = '\f';
			break;
		case 'n':
			cp = '\n';
			break;
		case 'r':
			cp = '\r';
			break;
		case 't':
			cp = '\t';
			break;
		case 'u':
			if (j->end - j->p < 4 || hex4(j->p, &cp) == -1)
				return -1;
			j->p += 4;
			if (cp >= 0xd800 && cp <= 0xdbff) {
				unsigned long lo;
				if (j->end - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u' ||
				    hex4(j->p + 2, &lo) == -1 || lo < 0xdc00 || lo > 0xdfff)
					return -1;
				j->p += 6;
				cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
			} else if ((cp >= 0xdc00 && cp <= 0xdfff) || cp == 0)
				return -1;
			break;
		default:
			return -1;
		}
		n += cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
		if (n > JSON_STRING_MAX)
			return -1;
		if (out)
			utf8_put(out, cp);
	}
	return -1; /* unterminated */
}

static int json_digits(struct json *j)
{
	const char *s = j->p;

	while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
		j->p++;
	return j->p > s ? 0 : -1;
}

/* true, false, null or a number (JSON grammar; no leading zeros check). */
static int json_scalar(struct json *j)
{
	static const char *const lits[] = {"true", "false", "null"};
	size_t i;

	for (i = 0; i < sizeof(lits) / sizeof(lits[0]); i++) {
		size_t n = strlen(lits[i]);
		if ((size_t)(j->end - j->p) >= n && memcmp(j->p, lits[i], n) == 0) {
			j->p += n;
			return 0;
		}
	}
	if (json_peek(j, '-'))
		j->p++;
	if (json_digits(j) == -1)
		return -1;
	if (json_peek(j, '.')) {
		j->p++;
		if (json_digits(j) == -1)
			return -1;
	}
	if (json_peek(j, 'e') || json_peek(j, 'E')) {
		j->p++;
		if (json_peek(j, '+') || json_peek(j, '-'))
			j->p++;
		if (json_digits(j) == -1)
			return -1;
	}
	return 0;
}

static int json_skip(struct json *j, int depth)
{
	char close;

	if (depth > JSON_DEPTH_MAX)
		return -1;
	json_ws(j);
	if (json_peek(j, '"'))
		return json_string(j, NULL);
	if (!json_peek(j, '{') && !json_peek(j, '['))
		return json_scalar(j);
	close = *j->p == '{' ? '}' : ']';
	j->p++;
	json_ws(j);
	if (json_peek(j, close)) {
		j->p++;
		return 0;
	}
	for (;;) {
		if (close == '}') {
			json_ws(j);
			if (json_string(j, NULL) == -1)
				return -1;
			json_ws(j);
			if (!json_peek(j, ':'))
				return -1;
			j->p++;
		}
		if (json_skip(j, depth + 1) == -1)
			return -1;
		json_ws(j);
		if (json_peek(j, close)) {
			j->p++;
			return 0;
		}
		if (!json_peek(j, ','))
			return -1;
		j->p++;
	}
}

enum json_type { JSON_MISSING, JSON_STRING, JSON_OTHER };

/*
 * Scan the whole document, a top-level object; the last NAME field wins.
 * A string value lands in *val; anything else is returned raw in
 * [*raw, *raw + *rawlen).  Returns the type, or -1 when malformed.
 */
static int json_field(const char *doc, size_t len, const char *name, struct sbuf *val,
                      const char **raw, size_t *rawlen)
{
	struct json j = {doc, doc + len};
	struct sbuf key = {0};
	size_t nlen = strlen(name);
	int type = JSON_MISSING;

	json_ws(&j);
	if (!json_peek(&j, '{'))
		goto bad;
	j.p++;
	json_ws(&j);
	if (json_peek(&j, '}'))
		j.p++;
	else
		for (;;) {
			int match;
			json_ws(&j);
			key.len = 0;
			if (json_string(&j, &key) == -1)
				goto bad;
			match = key.len == nlen && memcmp(key.p, name, nlen) == 0;
			json_ws(&j);
			if (!json_peek(&j, ':'))
				goto bad;
			j.p++;
			json_ws(&j);
			if (match && json_peek(&j, '"')) {
				sb_wipe(val);
				if (json_string(&j, val) == -1)
					goto bad;
				type = JSON_STRING;
			} else if (match) {
				const char *s = j.p;
				if (json_skip(&j, 1) == -1)
					goto bad;
				sb_wipe(val);
				*raw = s;
				*rawlen = (size_t)(j.p - s);
				type = JSON_OTHER;
			} else if (json_skip(&j, 1) == -1)
				goto bad;
			json_ws(&j);
			if (json_peek(&j, '}')) {
				j.p++;
				break;
			}
			if (!json_peek(&j, ','))
				goto bad;
			j.p++;
		}
	json_ws(&j);
	if (j.p != j.end)
		goto bad;
	sb_wipe(&key);
	return type;
bad:
	sb_wipe(&key);
	sb_wipe(val);
	return -1;
}

char *ses_creds_json_string(const char *json, size_t len, const char *name, const char **err)
{
	struct sbuf v = {0};
	const char *raw = NULL;
	size_t rawlen = 0;

	switch (json_field(json, len, name, &v, &raw, &rawlen)) {
	case JSON_STRING:
		*err = NULL;
		return sb_take(&v);
	case JSON_MISSING:
		*err = "missing";
		return NULL;
	case JSON_OTHER:
		*err = "not a string";
		return NULL;
	default:
		*err = "malformed JSON";
		return NULL;
	}
}

/* --- XML: just enough for an STS answer ------------------------------------ */

/* The first <TAG> or <TAG attrs> in [p, end); returns where its text starts. */
static const char *xml_open(const char *p, const char *end, const char *tag)
{
	size_t tlen = strlen(tag);

	while (p < end && (p = memchr(p, '<', (size_t)(end - p))) != NULL) {
		const char *q = p + 1, *gt;
		p++;
		if ((size_t)(end - q) <= tlen || memcmp(q, tag, tlen) != 0)
			continue;
		q += tlen;
		if (*q != '>' && *q != ' ' && *q != '\t' && *q != '\r' && *q != '\n')
			continue;
		if ((gt = memchr(q, '>', (size_t)(end - q))) == NULL)
			return NULL;
		if (gt[-1] == '/')
			continue; /* <TAG/>: empty, keep looking */
		return gt + 1;
	}
	return NULL;
}

static const char *xml_close(const char *p, const char *end, const char *tag)
{
	size_t tlen = strlen(tag);

	for (; p < end && (p = memchr(p, '<', (size_t)(end - p))) != NULL; p++)
		if ((size_t)(end - p) >= tlen + 3 && p[1] == '/' && memcmp(p + 2, tag, tlen) == 0 &&
		    p[2 + tlen] == '>')
			return p;
	return NULL;
}

static char *xml_decode(const char *s, const char *e)
{
	static const struct {
		const char *name;
		char ch;
	} ents[] = {{"amp;", '&'}, {"lt;", '<'}, {"gt;", '>'}, {"quot;", '"'}, {"apos;", '\''}};
	struct sbuf b = {0};
	size_t i;

	if (e - s > JSON_STRING_MAX)
		return NULL;
	while (s < e) {
		const char *amp = memchr(s, '&', (size_t)(e - s));
		const char *stop = amp ? amp : e;
		if (memchr(s, '<', (size_t)(stop - s)))
			goto bad; /* an element inside: not text */
		sb_add(&b, s, (size_t)(stop - s));
		if ((s = stop) == e)
			break;
		s++;
		for (i = 0; i < sizeof(ents) / sizeof(ents[0]); i++) {
			size_t n = strlen(ents[i].name);
			if ((size_t)(e - s) >= n && memcmp(s, ents[i].name, n) == 0) {
				sb_add(&b, &ents[i].ch, 1);
				s += n;
				break;
			}
		}
		if (i < sizeof(ents) / sizeof(ents[0]))
			continue;
		if (s < e && *s == '#') {
			unsigned long cp = 0;
			int hex = s + 1 < e && (s[1] == 'x' || s[1] == 'X'), digits = 0;
			for (s += hex ? 2 : 1; s < e && *s != ';' && digits < 8; s++, digits++) {
				int ch = (unsigned char)*s;
				if (isdigit(ch))
					cp = cp * (hex ? 16 : 10) + (unsigned long)(ch - '0');
				else if (hex && isxdigit(ch))
					cp = cp * 16 + (unsigned long)(tolower(ch) - 'a' + 10);
				else
					goto bad;
			}
			if (s == e || *s != ';' || digits == 0 || cp == 0 || cp > 0x10ffff ||
			    (cp >= 0xd800 && cp <= 0xdfff))
				goto bad;
			s++;
			utf8_put(&b, cp);
			continue;
		}
		goto bad;
	}
	return sb_take(&b);
bad:
	sb_wipe(&b);
	return NULL;
}

char *ses_creds_xml_text(const char *xml, size_t len, const char *outer, const char *tag)
{
	const char *end = xml + len, *in, *in_end, *t, *t_end;

	if ((in = xml_open(xml, end, outer)) == NULL ||
	    (in_end = xml_close(in, end, outer)) == NULL ||
	    (t = xml_open(in, in_end, tag)) == NULL || (t_end = xml_close(t, in_end, tag)) == NULL)
		return NULL;
	return xml_decode(t, t_end);
}

/* --- ISO 8601 -------------------------------------------------------------- */

static int digits_n(const char **p, int n, int *out)
{
	int v = 0;

	while (n-- > 0) {
		if (**p < '0' || **p > '9')
			return -1;
		v = v * 10 + (*(*p)++ - '0');
	}
	*out = v;
	return 0;
}

int ses_creds_parse_time(const char *s, time_t *out)
{
	static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	int y, mo, d, h, mi, sec, oh = 0, om = 0, sign = 0, leap;
	struct tm tm;
	time_t t;

	if (s == NULL || digits_n(&s, 4, &y) || *s++ != '-' || digits_n(&s, 2, &mo) ||
	    *s++ != '-' || digits_n(&s, 2, &d))
		return -1;
	if (*s != 'T' && *s != 't' && *s != ' ')
		return -1;
	s++;
	if (digits_n(&s, 2, &h) || *s++ != ':' || digits_n(&s, 2, &mi) || *s++ != ':' ||
	    digits_n(&s, 2, &sec))
		return -1;
	if (*s == '.') {
		if (!isdigit((unsigned char)*++s))
			return -1;
		while (isdigit((unsigned char)*s))
			s++;
	}
	if (*s == 'Z' || *s == 'z')
		s++;
	else if (*s == '+' || *s == '-') {
		sign = *s++ == '-' ? -1 : 1;
		if (digits_n(&s, 2, &oh))
			return -1;
		if (*s == ':')
			s++;
		if (digits_n(&s, 2, &om) || oh > 23 || om > 59)
			return -1;
	} else
		return -1; /* no zone: a local time would be a guess */
	if (*s != '\0')
		return -1;
	leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
	if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] + (mo == 2 && leap) ||
	    h > 23 || mi > 59 || sec > 60)
		return -1;
	memset(&tm, 0, sizeof(tm));
	tm.tm_year = y - 1900;
	tm.tm_mon = mo - 1;
	tm.tm_mday = d;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = sec;
	if ((t = timegm(&tm)) == (time_t)-1)
		return -1;
	*out = t - (time_t)sign * (oh * 3600 + om * 60);
	return 0;
}

/*
 * Credentials out of a JSON answer (credential_process, container, IMDS).
 * token_name: "SessionToken" or "Token".  Messages never echo a value but the
 * expiration.
 */
static int creds_from_json(const char *body, size_t len, const char *token_name, int need_version,
                           struct creds_set *s, char *err, size_t errlen)
{
	struct sbuf v = {0};
	const char *raw = NULL, *why;
	size_t rawlen = 0;
	char *exp = NULL, shown[48];
	int type;

	memset(s, 0, sizeof(*s));
	if (need_version) {
		type = json_field(body, len, "Version", &v, &raw, &rawlen);
		sb_wipe(&v);
		if (type == -1) {
			msg(err, errlen, "malformed JSON");
			return -1;
		}
		if (type != JSON_OTHER || rawlen != 1 || raw[0] != '1') {
			msg(err, errlen, "\"Version\" must be the number 1");
			return -1;
		}
	}
	if (json_field(body, len, "Code", &v, &raw, &rawlen) == JSON_STRING &&
	    strcmp(v.p, "Success") != 0) {
		printable(shown, sizeof(shown), v.p);
		msg(err, errlen, "\"Code\" is \"%s\"", shown);
		sb_wipe(&v);
		return -1;
	}
	sb_wipe(&v);
	if ((s->akid = ses_creds_json_string(body, len, "AccessKeyId", &why)) == NULL) {
		msg(err, errlen, "\"AccessKeyId\": %s", why);
		goto bad;
	}
	if ((s->secret = ses_creds_json_string(body, len, "SecretAccessKey", &why)) == NULL) {
		msg(err, errlen, "\"SecretAccessKey\": %s", why);
		goto bad;
	}
	s->token = ses_creds_json_string(body, len, token_name, &why);
	if (s->token == NULL && strcmp(why, "missing") != 0) {
		msg(err, errlen, "\"%s\": %s", token_name, why);
		goto bad;
	}
	if (s->token && s->token[0] == '\0')
		wipe_free(&s->token);
	exp = ses_creds_json_string(body, len, "Expiration", &why);
	if (exp == NULL && strcmp(why, "missing") != 0) {
		msg(err, errlen, "\"Expiration\": %s", why);
		goto bad;
	}
	if (exp && ses_creds_parse_time(exp, &s->expires) == -1) {
		printable(shown, sizeof(shown), exp);
		msg(err, errlen, "\"Expiration\" \"%s\" is not an ISO 8601 time with a zone",
		    shown);
		goto bad;
	}
	free(exp);
	return creds_check(s, err, errlen) == -1 ? (creds_clear(s), -1) : 0;
bad:
	free(exp);
	creds_clear(s);
	return -1;
}

/* --- the plan: which source, decided from config, environment and files ---- */

static void plan_clear(struct plan *p)
{
	free(p->source);
	free(p->error);
	creds_clear(&p->keys);
	free(p->command);
	free(p->token_file);
	free(p->role_arn);
	free(p->session_name);
	free(p->url);
	free(p->auth_file);
	wipe_free(&p->auth);
	memset(p, 0, sizeof(*p));
}

static void plan_error(struct plan *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void plan_error(struct plan *p, const char *fmt, ...)
{
	va_list ap;

	p->kind = PLAN_ERROR;
	free(p->error);
	va_start(ap, fmt);
	if (vasprintf(&p->error, fmt, ap) < 0)
		fatal("vasprintf");
	va_end(ap);
}

static void plan_static(struct plan *p, char *source, const char *akid, const char *secret,
                        const char *token)
{
	p->kind = PLAN_STATIC;
	p->source = source;
	p->keys.akid = xstrdup(akid);
	p->keys.secret = xstrdup(secret);
	p->keys.token = token && *token ? xstrdup(token) : NULL;
}

static const char *home_dir(void)
{
	const char *h = env("HOME");
	struct passwd *pw;

	if (h)
		return h;
	pw = getpwuid(getuid());
	return pw && pw->pw_dir && *pw->pw_dir ? pw->pw_dir : NULL;
}

struct shared_file {
	char *path;
	char *text; /* NULL: absent */
	size_t len;
};

static void shared_file_free(struct shared_file *f)
{
	free(f->path);
	wipe_buf(f->text, f->len);
	memset(f, 0, sizeof(*f));
}

/* Load $ENVNAME or ~/REL.  A missing file is fine; an unreadable one is not. */
static int shared_file_load(struct shared_file *f, const char *envname, const char *rel,
                            struct plan *p)
{
	const char *v = env(envname), *home = home_dir();
	int e = 0;

	if (v && strncmp(v, "~/", 2) == 0 && home)
		f->path = xasprintf("%s/%s", home, v + 2);
	else if (v)
		f->path = xstrdup(v);
	else if (home)
		f->path = xasprintf("%s/%s", home, rel);
	else
		return 0;
	f->text = read_capped(f->path, SHARED_FILE_MAX, &f->len, &e);
	if (f->text == NULL && e != ENOENT && e != ENOTDIR) {
		plan_error(p, "cannot read %s: %s (fix it, or point %s at another file)", f->path,
		           e == EFBIG ? "larger than 1 MiB" : strerror(e), envname);
		return -1;
	}
	return 0;
}

/* A non-empty value of KEY in PROFILE of F, or NULL; ORs *found. */
static char *pv(const struct shared_file *f, const char *profile, int is_config, const char *key,
                int *found)
{
	int here = 0;
	char *v;

	if (f->text == NULL)
		return NULL;
	v = ses_creds_profile_value(f->text, f->len, profile, is_config, key, &here);
	*found |= here;
	if (v && *v == '\0')
		wipe_free(&v);
	return v;
}

/* Keys hold no blanks: cut what follows one (an inline "# comment"). */
static char *pv_token(const struct shared_file *f, const char *profile, int is_config,
                      const char *key, int *found)
{
	char *v = pv(f, profile, is_config, key, found);
	size_t n;

	if (v) {
		n = strcspn(v, " \t");
		OPENSSL_cleanse(v + n, strlen(v + n));
		if (n == 0)
			wipe_free(&v);
	}
	return v;
}

/* Static keys of PROFILE in F; 1 when decided (keys or a partial-keys error). */
static int profile_keys(const struct shared_file *f, const char *profile, int is_config, int *found,
                        struct plan *p)
{
	char *akid = pv_token(f, profile, is_config, "aws_access_key_id", found);
	char *secret = pv_token(f, profile, is_config, "aws_secret_access_key", found);
	char *token = pv_token(f, profile, is_config, "aws_session_token", found);
	int decided = akid || secret;

	if (akid && secret)
		plan_static(p, xasprintf("profile %s (%s)", profile, f->path), akid, secret, token);
	else if (decided)
		plan_error(p, "profile %s in %s has %s but no %s: add it, or remove both", profile,
		           f->path, akid ? "aws_access_key_id" : "aws_secret_access_key",
		           akid ? "aws_secret_access_key" : "aws_access_key_id");
	wipe_free(&akid);
	wipe_free(&secret);
	wipe_free(&token);
	return decided;
}

static int plan_profile(struct ses_creds *c, struct plan *p)
{
	/* botocore resolves these itself; we say how to bridge them instead */
	static const char *const unsupported[] = {"role_arn", "sso_session", "sso_start_url",
	                                          "web_identity_token_file", "credential_source"};
	const char *name = c->conf_profile ? c->conf_profile : env("AWS_PROFILE");
	struct shared_file kf = {0}, cf = {0};
	int is_explicit = name != NULL, found = 0, decided = 1;
	char *proc = NULL;
	size_t i;

	if (name == NULL)
		name = "default";
	if (shared_file_load(&kf, "AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials", p) == -1 ||
	    shared_file_load(&cf, "AWS_CONFIG_FILE", ".aws/config", p) == -1)
		goto out;
	for (i = 0; i < sizeof(unsupported) / sizeof(unsupported[0]); i++) {
		char *v = pv(&cf, name, 1, unsupported[i], &found);
		if (v) {
			free(v);
			plan_error(
			    p,
			    "profile %s in %s uses %s, which sesrelay does not resolve: set "
			    "\"credential_process = aws configure export-credentials --profile "
			    "%s --format process\" in another profile and use that one",
			    name, cf.path, unsupported[i], name);
			goto out;
		}
	}
	if (profile_keys(&kf, name, 0, &found, p))
		goto out;
	if ((proc = pv(&kf, name, 0, "credential_process", &found)) == NULL)
		proc = pv(&cf, name, 1, "credential_process", &found);
	if (proc) {
		p->kind = PLAN_PROCESS;
		p->command = proc;
		p->source = xasprintf("credential_process (profile %s)", name);
		goto out;
	}
	if (profile_keys(&cf, name, 1, &found, p))
		goto out;
	if (!found && is_explicit) {
		plan_error(p, "profile %s not found in %s or %s: add it, or fix %s", name,
		           kf.path ? kf.path : "~/.aws/credentials",
		           cf.path ? cf.path : "~/.aws/config",
		           c->conf_profile ? "[ses] profile" : "AWS_PROFILE");
		goto out;
	}
	decided = 0;
out:
	shared_file_free(&kf);
	shared_file_free(&cf);
	return decided;
}

static int region_ok(const char *r)
{
	if (*r == '\0')
		return 0;
	for (; *r; r++)
		if (!(islower((unsigned char)*r) || isdigit((unsigned char)*r) || *r == '-'))
			return 0;
	return 1;
}

/* Strip the trailing slashes of an endpoint so paths can be appended. */
static char *endpoint_dup(const char *url)
{
	char *u = xstrdup(url);
	size_t n = strlen(u);

	while (n > 0 && u[n - 1] == '/')
		u[--n] = '\0';
	return u;
}

static int plan_web_identity(struct ses_creds *c, struct plan *p)
{
	const char *file = env("AWS_WEB_IDENTITY_TOKEN_FILE"), *arn = env("AWS_ROLE_ARN");
	const char *session = env("AWS_ROLE_SESSION_NAME"), *region, *override;

	if (file == NULL || arn == NULL) {
		if (file || arn)
			log_debug("credentials: %s is set without %s: no web identity",
			          file ? "AWS_WEB_IDENTITY_TOKEN_FILE" : "AWS_ROLE_ARN",
			          file ? "AWS_ROLE_ARN" : "AWS_WEB_IDENTITY_TOKEN_FILE");
		return 0;
	}
	region = c->conf_region ? c->conf_region : env("AWS_REGION");
	if (region == NULL)
		region = env("AWS_DEFAULT_REGION");
	if ((override = env("AWS_ENDPOINT_URL_STS")) != NULL)
		p->url = endpoint_dup(override);
	else if (region && !region_ok(region)) {
		plan_error(
		    p, "web identity: region \"%s\" is not valid (fix [ses] region or AWS_REGION)",
		    region);
		return 1;
	} else if (region)
		p->url = xasprintf("https://sts.%s.amazonaws.com%s", region,
		                   strncmp(region, "cn-", 3) == 0 ? ".cn" : "");
	else
		p->url = xstrdup("https://sts.amazonaws.com");
	p->kind = PLAN_WEB_IDENTITY;
	p->token_file = xstrdup(file);
	p->role_arn = xstrdup(arn);
	p->session_name =
	    session ? xstrdup(session) : xasprintf("sesrelay-%lld", (long long)time(NULL));
	p->source = xasprintf("web identity (%s)", arn);
	return 1;
}

/*
 * A plain-http FULL_URI may only point at this host or the ECS/EKS agents,
 * as in botocore: anything else would hand the auth token to the network.
 */
static int container_url_ok(const char *url)
{
	static const char *const hosts[] = {"localhost", "169.254.170.2", "169.254.170.23",
	                                    "[fd00:ec2::23]", "[::1]"};
	const char *h, *e;
	size_t i, n;

	if (strncasecmp(url, "https://", 8) == 0)
		return url[8] != '\0';
	if (strncasecmp(url, "http://", 7) != 0)
		return 0;
	h = url + 7;
	e = h + strcspn(h, "/?#");
	if (memchr(h, '@', (size_t)(e - h)))
		return 0;
	if (*h == '[') {
		const char *rb = memchr(h, ']', (size_t)(e - h));
		if (rb == NULL)
			return 0;
		n = (size_t)(rb + 1 - h);
	} else
		n = strcspn(h, ":/?#");
	for (i = 0; i < sizeof(hosts) / sizeof(hosts[0]); i++)
		if (strlen(hosts[i]) == n && strncasecmp(h, hosts[i], n) == 0)
			return 1;
	/* 127.0.0.0/8, written as a dotted quad */
	if (n >= 9 && n <= 15 && strncmp(h, "127.", 4) == 0 && strspn(h, "0123456789.") >= n)
		return 1;
	return 0;
}

static int plan_container(struct plan *p)
{
	const char *rel = env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
	const char *full = env("AWS_CONTAINER_CREDENTIALS_FULL_URI");
	const char *tok = env("AWS_CONTAINER_AUTHORIZATION_TOKEN");
	const char *tokfile = env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");

	if (rel) {
		if (rel[0] != '/') {
			plan_error(p, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI must start with /");
			return 1;
		}
		p->url = xasprintf("%s%s", ECS_HOST, rel);
	} else if (full) {
		if (!container_url_ok(full)) {
			plan_error(p,
			           "AWS_CONTAINER_CREDENTIALS_FULL_URI must be https, or http to "
			           "a loopback address or the ECS/EKS agent (169.254.170.2, "
			           "169.254.170.23, fd00:ec2::23)");
			return 1;
		}
		p->url = xstrdup(full);
	} else
		return 0;
	p->kind = PLAN_CONTAINER;
	p->source = xstrdup("container endpoint");
	if (tokfile)
		p->auth_file = xstrdup(tokfile);
	else if (tok)
		p->auth = xstrdup(tok);
	return 1;
}

static void plan_imds(struct plan *p)
{
	const char *off = env("AWS_EC2_METADATA_DISABLED");
	const char *ep = env("AWS_EC2_METADATA_SERVICE_ENDPOINT");
	const char *mode = env("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE");

	if (off && strcasecmp(off, "true") == 0) {
		p->kind = PLAN_NONE;
		p->error = xasprintf("%s (EC2 instance metadata is off: AWS_EC2_METADATA_DISABLED)",
		                     NOTHING_FOUND);
		return;
	}
	p->kind = PLAN_IMDS;
	p->url = endpoint_dup(ep                                      ? ep
	                      : mode && strcasecmp(mode, "IPv6") == 0 ? IMDS_ENDPOINT_V6
	                                                              : IMDS_ENDPOINT);
	p->source = xstrdup("EC2 instance metadata (IMDSv2)");
}

static void plan_build(struct ses_creds *c, struct plan *p)
{
	const char *akid = env("AWS_ACCESS_KEY_ID"), *secret = env("AWS_SECRET_ACCESS_KEY");

	plan_clear(p);
	if (c->conf_akid || c->conf_secret) {
		if (c->conf_akid && c->conf_secret)
			plan_static(p, xstrdup("config file"), c->conf_akid, c->conf_secret, NULL);
		else
			plan_error(
			    p, "set both [ses] access_key_id and secret_access_key, or neither");
		return;
	}
	if (akid || secret) {
		if (akid && secret)
			plan_static(p, xstrdup("environment"), akid, secret,
			            env("AWS_SESSION_TOKEN"));
		else
			plan_error(p, "%s is set but %s is not: set both, or neither",
			           akid ? "AWS_ACCESS_KEY_ID" : "AWS_SECRET_ACCESS_KEY",
			           akid ? "AWS_SECRET_ACCESS_KEY" : "AWS_ACCESS_KEY_ID");
		return;
	}
	if (plan_profile(c, p) || plan_web_identity(c, p) || plan_container(p))
		return;
	plan_imds(p);
}

/* --- state, results, timers ------------------------------------------------ */

static void enter_state(struct ses_creds *c, enum creds_state st)
{
	if (c->state != st)
		log_debug("credentials: %s -> %s", state_names[c->state], state_names[st]);
	c->state = st;
}

static void timer_arm(struct event *ev, double seconds)
{
	struct timeval tv;

	if (seconds < 0)
		seconds = 0;
	tv.tv_sec = (time_t)seconds;
	tv.tv_usec = (suseconds_t)((seconds - (double)tv.tv_sec) * 1e6);
	evtimer_add(ev, &tv);
}

static void on_ready(evutil_socket_t fd, short what, void *arg)
{
	struct ses_creds *c = arg;
	char err[ERR_MAX];
	int ok = c->ready_ok;

	if (c->ready == NULL)
		return;
	memcpy(err, c->ready_err, sizeof(err));
	/* last statement: ready() may free c */
	c->ready(c->ready_arg, ok, ok ? NULL : err);
}

static void report_first(struct ses_creds *c, int ok, const char *err)
{
	if (c->reported)
		return;
	c->reported = 1;
	c->ready_ok = ok;
	msg(c->ready_err, sizeof(c->ready_err), "%s", err ? err : "");
	event_active(c->ev_ready, EV_TIMEOUT, 1);
}

/* 10-15 minutes before expiry; half the time left when that is sooner. */
static void schedule_refresh(struct ses_creds *c)
{
	time_t left = c->cur.expires - time(NULL);
	double delay;

	if (c->cur.expires == 0)
		return;
	if (left > REFRESH_EARLY + REFRESH_JITTER)
		delay = (double)(left - REFRESH_EARLY) - arc4random_uniform(REFRESH_JITTER + 1);
	else
		delay = (double)left / 2;
	timer_arm(c->ev_timer, delay < 1 ? 1 : delay);
}

static void install(struct ses_creds *c, struct creds_set *got, const char *source)
{
	char when[32];
	int first = !c->have;

	creds_clear(&c->cur);
	c->cur = *got;
	memset(got, 0, sizeof(*got));
	free(c->source);
	c->source = xstrdup(source);
	c->have = 1;
	c->expired_logged = 0;
	c->view.access_key_id = c->cur.akid;
	c->view.secret_access_key = c->cur.secret;
	c->view.session_token = c->cur.token;
	if (first)
		log_info("credentials from %s (access key %.4s\u2026%s%s)", source, c->cur.akid,
		         c->cur.expires ? ", valid until " : "",
		         c->cur.expires ? fmt_time(c->cur.expires, when) : "");
	else
		log_info("credentials refreshed from %s, valid until %s", source,
		         c->cur.expires ? fmt_time(c->cur.expires, when) : "revoked");
}

static void attempt_failed(struct ses_creds *c, const char *err)
{
	double delay = RETRY_MIN;
	time_t now = time(NULL);
	char when[32];
	int i;

	for (i = 0; i < c->failures && delay < RETRY_MAX; i++)
		delay *= 2;
	if (delay > RETRY_MAX)
		delay = RETRY_MAX;
	c->failures++;
	if (c->have && c->cur.expires > now) {
		/* retry before the old keys run out, but without hammering */
		double left = (double)(c->cur.expires - now) / 2;
		if (delay > left)
			delay = left < 1 ? 1 : left;
	}
	if (c->have && !c->warned)
		log_warnx("credentials: refresh from %s failed: %s; keeping the current ones "
		          "(valid until %s), retrying in %.0fs",
		          c->source, err, fmt_time(c->cur.expires, when), delay);
	else if (!c->have && c->reported && !c->warned)
		log_warnx("credentials: %s; retrying in %.0fs", err, delay);
	else
		log_debug("credentials: %s; retrying in %.0fs", err, delay);
	/* the first failure is the caller's to report, through ready() */
	c->warned = c->reported;
	report_first(c, 0, err);
	timer_arm(c->ev_timer, delay);
}

/* Every fetch ends here, exactly once; got's contents are taken over. */
static void attempt_finish(struct ses_creds *c, struct creds_set *got, const char *source,
                           const char *err)
{
	char buf[ERR_MAX], when[32];

	enter_state(c, CREDS_IDLE);
	if (got && got->expires && got->expires <= time(NULL)) {
		msg(buf, sizeof(buf),
		    "%s: the credentials expired at %s already (is this host's clock right?)",
		    source, fmt_time(got->expires, when));
		creds_clear(got);
		got = NULL;
		err = buf;
	}
	if (got == NULL) {
		attempt_failed(c, err);
		return;
	}
	install(c, got, source);
	c->failures = 0;
	c->warned = 0;
	schedule_refresh(c);
	report_first(c, 1, NULL);
}

/* Refresh time, or time to retry a failure. */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct ses_creds *c = arg;
	char when[32];

	if (c->state != CREDS_IDLE)
		return; /* a fetch is running; it will rearm */
	if (!c->have)
		plan_build(c, &c->plan); /* nothing worked yet: the whole chain again */
	else if (c->cur.expires && c->cur.expires <= time(NULL) && !c->expired_logged) {
		log_warnx("credentials from %s expired at %s and could not be refreshed; "
		          "deliveries wait until they are",
		          c->source, fmt_time(c->cur.expires, when));
		c->expired_logged = 1;
	}
	attempt_start(c);
}

/* --- credential_process ---------------------------------------------------- */

/* Kill (the whole process group) and reap; bounded, since SIGKILL is. */
static void process_cleanup(struct ses_creds *c)
{
	if (c->ev_pipe) {
		event_free(c->ev_pipe);
		c->ev_pipe = NULL;
	}
	if (c->pipe_fd != -1) {
		close(c->pipe_fd);
		c->pipe_fd = -1;
	}
	if (c->ev_proc)
		evtimer_del(c->ev_proc);
	if (c->pid > 0) {
		kill(-c->pid, SIGKILL);
		while (waitpid(c->pid, NULL, 0) == -1 && errno == EINTR)
			;
		c->pid = -1;
	}
	if (c->out) {
		wipe_buf(c->out, PROCESS_OUTPUT_MAX + 1);
		c->out = NULL;
		c->out_len = 0;
	}
}

static void process_fail(struct ses_creds *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void process_fail(struct ses_creds *c, const char *fmt, ...)
{
	char why[ERR_MAX], err[ERR_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	msg(err, sizeof(err), "%s: %s", c->plan.source, why);
	process_cleanup(c);
	attempt_finish(c, NULL, NULL, err);
}

static void process_parse(struct ses_creds *c)
{
	struct creds_set s;
	char why[ERR_MAX];

	if (creds_from_json(c->out, c->out_len, "SessionToken", 1, &s, why, sizeof(why)) == -1) {
		process_fail(c,
		             "printed no usable credentials (%s); it must print {\"Version\": 1, "
		             "\"AccessKeyId\": ..., \"SecretAccessKey\": ...}",
		             why);
		return;
	}
	process_cleanup(c);
	attempt_finish(c, &s, c->plan.source, NULL);
}

static void process_try_reap(struct ses_creds *c)
{
	pid_t r;
	int st = 0;

	while ((r = waitpid(c->pid, &st, WNOHANG)) == -1 && errno == EINTR)
		;
	if (r == 0) {
		timer_arm(c->ev_proc, PROCESS_REAP_POLL_MS / 1000.0);
		return;
	}
	c->pid = -1; /* reaped (or ECHILD: reaped by someone else; trust the output) */
	if (r > 0 && WIFEXITED(st) && WEXITSTATUS(st) != 0)
		process_fail(c, "exited with status %d (run it by hand to see why)",
		             WEXITSTATUS(st));
	else if (r > 0 && WIFSIGNALED(st))
		process_fail(c, "killed by signal %d", WTERMSIG(st));
	else
		process_parse(c);
}

static void on_process_output(evutil_socket_t fd, short what, void *arg)
{
	struct ses_creds *c = arg;

	for (;;) {
		ssize_t n = read(fd, c->out + c->out_len, PROCESS_OUTPUT_MAX + 1 - c->out_len);
		if (n > 0) {
			c->out_len += (size_t)n;
			if (c->out_len > PROCESS_OUTPUT_MAX) {
				process_fail(c, "printed more than %d KiB",
				             PROCESS_OUTPUT_MAX / 1024);
				return;
			}
			continue;
		}
		if (n == 0)
			break;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			process_fail(c, "reading its output: %s", strerror(errno));
		return;
	}
	event_free(c->ev_pipe);
	c->ev_pipe = NULL;
	close(c->pipe_fd);
	c->pipe_fd = -1;
	c->proc_eof = 1;
	process_try_reap(c);
}

/* The deadline, or (after EOF) the next waitpid poll. */
static void on_process_timer(evutil_socket_t fd, short what, void *arg)
{
	struct ses_creds *c = arg;

	if (util_monotime() >= c->proc_deadline)
		process_fail(c, "did not finish within %d s", PROCESS_TIMEOUT);
	else if (c->proc_eof)
		process_try_reap(c);
	else
		timer_arm(c->ev_proc, c->proc_deadline - util_monotime());
}

/*
 * /bin/sh -c COMMAND with stdin from /dev/null, stdout into our pipe, stderr
 * shared (its complaints reach the daemon's log), no other descriptor, signal
 * dispositions reset (the daemon ignores SIGPIPE), in a process group of its
 * own so a timeout kills what it started too.
 */
static void process_start(struct ses_creds *c)
{
	char *argv[] = {"/bin/sh", "-c", c->plan.command, NULL};
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	sigset_t none, all;
	int fds[2], rc;

	enter_state(c, CREDS_PROCESS);
	if (pipe2(fds, O_CLOEXEC) == -1) {
		process_fail(c, "pipe: %s", strerror(errno));
		return;
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
	posix_spawn_file_actions_addclosefrom_np(&fa, 3);
	posix_spawnattr_init(&at);
	sigemptyset(&none);
	sigfillset(&all);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setsigdefault(&at, &all);
	posix_spawnattr_setpgroup(&at, 0);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
	                                  POSIX_SPAWN_SETPGROUP);
	rc = posix_spawn(&c->pid, "/bin/sh", &fa, &at, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	close(fds[1]);
	if (rc != 0) {
		close(fds[0]);
		c->pid = -1;
		process_fail(c, "cannot run /bin/sh: %s", strerror(rc));
		return;
	}
	if (fcntl(fds[0], F_SETFL, O_NONBLOCK) == -1)
		fatal("fcntl");
	c->pipe_fd = fds[0];
	c->out = xmalloc(PROCESS_OUTPUT_MAX + 1);
	c->out_len = 0;
	c->proc_eof = 0;
	c->ev_pipe = event_new(c->base, fds[0], EV_READ | EV_PERSIST, on_process_output, c);
	if (c->ev_pipe == NULL || event_add(c->ev_pipe, NULL) == -1)
		fatalx("credential_process: cannot watch the pipe");
	c->proc_deadline = util_monotime() + PROCESS_TIMEOUT;
	timer_arm(c->ev_proc, PROCESS_TIMEOUT);
}

/* --- HTTP sources ------------------------------------------------------------ */

static void on_http(void *arg, const struct ses_http_response *r);

static void http_send(struct ses_creds *c, const char *method, const char *url,
                      struct curl_slist *hdrs, const char *body, long connect_ms, long total_ms)
{
	struct ses_http_request rq;

	memset(&rq, 0, sizeof(rq));
	rq.method = method;
	rq.url = url;
	rq.headers = hdrs;
	rq.body = body;
	rq.body_len = body ? strlen(body) : 0;
	rq.connect_timeout_ms = connect_ms;
	rq.timeout_ms = total_ms;
	rq.max_response = HTTP_RESPONSE_MAX;
	rq.done = on_http;
	rq.arg = c;
	c->call = ses_http_send(c->http, &rq);
}

/* A token file, trimmed; NULL and err set when it cannot be used. */
static char *read_token_file(const char *path, const char *what, char *err, size_t errlen)
{
	size_t len = 0;
	char *t;
	int e = 0;

	if ((t = read_capped(path, TOKEN_FILE_MAX, &len, &e)) == NULL) {
		msg(err, errlen, "cannot read %s %s: %s", what, path,
		    e == EFBIG ? "larger than 64 KiB" : strerror(e));
		return NULL;
	}
	len = rtrim(t, len);
	if (len == 0 || strlen(t) != len || strpbrk(t, "\r\n")) {
		msg(err, errlen, "%s %s is empty or not a one-line token", what, path);
		wipe_buf(t, TOKEN_FILE_MAX + 2);
		return NULL;
	}
	return t;
}

static void sts_start(struct ses_creds *c)
{
	const struct plan *p = &c->plan;
	char err[ERR_MAX], *token, *arn, *name, *tok, *body;
	struct curl_slist *h = NULL;

	enter_state(c, CREDS_STS);
	if ((token = read_token_file(p->token_file, "AWS_WEB_IDENTITY_TOKEN_FILE", err,
	                             sizeof(err))) == NULL) {
		char full[ERR_MAX];
		msg(full, sizeof(full), "%s: %s", p->source, err);
		attempt_finish(c, NULL, NULL, full);
		return;
	}
	arn = sigv4_uri_encode(p->role_arn, strlen(p->role_arn), false);
	name = sigv4_uri_encode(p->session_name, strlen(p->session_name), false);
	tok = sigv4_uri_encode(token, strlen(token), false);
	body = xasprintf("Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=%s"
	                 "&RoleSessionName=%s&WebIdentityToken=%s",
	                 arn, name, tok);
	h = hdr_add(h, "Content-Type: application/x-www-form-urlencoded; charset=utf-8");
	h = hdr_add(h, "Accept: text/xml");
	http_send(c, "POST", p->url, h, body, 5000, 15000);
	wipe_buf(token, TOKEN_FILE_MAX + 2);
	wipe_free(&tok);
	wipe_free(&body);
	free(arn);
	free(name);
}

static int sts_done(struct ses_creds *c, const struct ses_http_response *r, struct creds_set *s,
                    char *err, size_t errlen)
{
	static const char *const fields[] = {"AccessKeyId", "SecretAccessKey", "SessionToken",
	                                     "Expiration"};
	char *v[4], shown[256] = "", code[64] = "";
	int i, rc = -1;

	if (r->status != 200) {
		char *ec = ses_creds_xml_text(r->body, r->body_len, "Error", "Code");
		char *em = ses_creds_xml_text(r->body, r->body_len, "Error", "Message");
		printable(code, sizeof(code), ec);
		printable(shown, sizeof(shown), em);
		msg(err, errlen, "STS AssumeRoleWithWebIdentity answered HTTP %ld%s%s%s%s",
		    r->status, *code ? " " : "", code, *shown ? ": " : "", shown);
		free(ec);
		free(em);
		return -1;
	}
	for (i = 0; i < 4; i++)
		v[i] = ses_creds_xml_text(r->body, r->body_len, "Credentials", fields[i]);
	memset(s, 0, sizeof(*s));
	for (i = 0; i < 4; i++)
		if (v[i] == NULL) {
			msg(err, errlen, "STS answer has no Credentials/%s", fields[i]);
			goto out;
		}
	if (ses_creds_parse_time(v[3], &s->expires) == -1) {
		msg(err, errlen, "STS answer has a bad Expiration");
		goto out;
	}
	s->akid = v[0];
	s->secret = v[1];
	s->token = v[2];
	v[0] = v[1] = v[2] = NULL;
	rc = creds_check(s, err, errlen);
out:
	for (i = 0; i < 4; i++)
		wipe_free(&v[i]);
	if (rc == -1)
		creds_clear(s);
	return rc;
}

static void container_start(struct ses_creds *c)
{
	const struct plan *p = &c->plan;
	struct curl_slist *h = NULL;
	char err[ERR_MAX], *auth = NULL;

	enter_state(c, CREDS_CONTAINER);
	if (p->auth_file &&
	    (auth = read_token_file(p->auth_file, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", err,
	                            sizeof(err))) == NULL) {
		char full[ERR_MAX];
		msg(full, sizeof(full), "%s %s: %s", p->source, p->url, err);
		attempt_finish(c, NULL, NULL, full);
		return;
	}
	if (auth == NULL && p->auth)
		auth = xstrdup(p->auth);
	if (auth && strpbrk(auth, "\r\n")) {
		char full[ERR_MAX];
		msg(full, sizeof(full), "%s: AWS_CONTAINER_AUTHORIZATION_TOKEN has a line break",
		    p->source);
		wipe_free(&auth);
		attempt_finish(c, NULL, NULL, full);
		return;
	}
	h = hdr_add(h, "Accept: application/json");
	if (auth)
		h = hdr_add(h, "Authorization: %s", auth);
	wipe_free(&auth);
	http_send(c, "GET", p->url, h, NULL, 2000, 5000);
}

static void imds_get(struct ses_creds *c, enum creds_state next, const char *path, const char *role)
{
	struct curl_slist *h = hdr_add(NULL, "X-aws-ec2-metadata-token: %s", c->imds_token);
	char *url = xasprintf("%s%s%s", c->plan.url, path, role ? role : "");

	enter_state(c, next);
	http_send(c, "GET", url, h, NULL, 1000, 2000);
	free(url);
}

static void imds_start(struct ses_creds *c)
{
	struct curl_slist *h = hdr_add(NULL, "X-aws-ec2-metadata-token-ttl-seconds: 21600");
	char *url = xasprintf("%s/latest/api/token", c->plan.url);

	enter_state(c, CREDS_IMDS_TOKEN);
	http_send(c, "PUT", url, h, "", 1000, 2000);
	free(url);
}

static int role_name_ok(const char *s)
{
	size_t n = strlen(s);

	return n > 0 && n <= IMDS_ROLE_MAX &&
	       strspn(s, "abcdefghijklmnopqrstuvwxyz"
	                 "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	                 "0123456789+=,.@_-") == n;
}

/* One IMDS step done: 1 when the next request went out, 0 when creds are in
 * *s, -1 with err. */
static int imds_step(struct ses_creds *c, const struct ses_http_response *r, struct creds_set *s,
                     char *err, size_t errlen)
{
	size_t n;

	if (c->state == CREDS_IMDS_ROLE && r->status == 404) {
		msg(err, errlen,
		    "no IAM role is attached to this instance (attach an instance "
		    "profile with SES permissions)");
		return -1;
	}
	if (r->status != 200 || r->truncated) {
		msg(err, errlen, "HTTP %ld for the %s", r->status,
		    c->state == CREDS_IMDS_TOKEN  ? "session token"
		    : c->state == CREDS_IMDS_ROLE ? "role name"
		                                  : "role's credentials");
		return -1;
	}
	switch (c->state) {
	case CREDS_IMDS_TOKEN:
		wipe_free(&c->imds_token);
		n = strcspn(r->body, " \t\r\n");
		if (n == 0 || n > IMDS_TOKEN_MAX || r->body[n + strspn(r->body + n, " \t\r\n")]) {
			msg(err, errlen, "the session token is empty or malformed");
			return -1;
		}
		c->imds_token = xstrndup(r->body, n);
		if (!token_chars_ok(c->imds_token)) {
			msg(err, errlen, "the session token is empty or malformed");
			return -1;
		}
		imds_get(c, CREDS_IMDS_ROLE, IMDS_ROLES_PATH, NULL);
		return 1;
	case CREDS_IMDS_ROLE:
		free(c->imds_role);
		c->imds_role = xstrndup(r->body, strcspn(r->body, "\r\n"));
		if (!role_name_ok(c->imds_role)) {
			msg(err, errlen, "the role name it returned is not valid");
			return -1;
		}
		imds_get(c, CREDS_IMDS_CREDS, IMDS_ROLES_PATH, c->imds_role);
		return 1;
	default:
		return creds_from_json(r->body, r->body_len, "Token", 0, s, err, errlen);
	}
}

static void on_http(void *arg, const struct ses_http_response *r)
{
	struct ses_creds *c = arg;
	char why[ERR_MAX], err[ERR_MAX], *src = NULL;
	struct creds_set s;
	int rc;

	c->call = NULL;
	memset(&s, 0, sizeof(s));
	if (!r->ok) {
		msg(why, sizeof(why), "%s", r->error ? r->error : "request failed");
		rc = -1;
	} else if (c->state == CREDS_STS)
		rc = sts_done(c, r, &s, why, sizeof(why));
	else if (c->state == CREDS_CONTAINER) {
		if (r->status != 200 || r->truncated) {
			msg(why, sizeof(why), "HTTP %ld", r->status);
			rc = -1;
		} else
			rc =
			    creds_from_json(r->body, r->body_len, "Token", 0, &s, why, sizeof(why));
	} else if ((rc = imds_step(c, r, &s, why, sizeof(why))) == 1)
		return;

	if (c->plan.kind == PLAN_IMDS) {
		wipe_free(&c->imds_token);
		if (rc == 0)
			src = xasprintf("EC2 instance metadata (IMDSv2, role %s)", c->imds_role);
		else if (!c->have)
			msg(err, sizeof(err), "%s (EC2 instance metadata at %s: %s)", NOTHING_FOUND,
			    c->plan.url, why);
		else
			msg(err, sizeof(err), "EC2 instance metadata at %s: %s", c->plan.url, why);
	} else if (c->plan.kind == PLAN_CONTAINER)
		msg(err, sizeof(err), "%s %s: %s", c->plan.source, c->plan.url, why);
	else
		msg(err, sizeof(err), "%s: %s", c->plan.source, why);
	attempt_finish(c, rc == 0 ? &s : NULL, src ? src : c->plan.source, err);
	free(src);
}

static void attempt_start(struct ses_creds *c)
{
	struct creds_set s;

	switch (c->plan.kind) {
	case PLAN_NONE:
	case PLAN_ERROR:
		attempt_finish(c, NULL, NULL, c->plan.error);
		break;
	case PLAN_STATIC:
		s.akid = xstrdup(c->plan.keys.akid);
		s.secret = xstrdup(c->plan.keys.secret);
		s.token = c->plan.keys.token ? xstrdup(c->plan.keys.token) : NULL;
		s.expires = 0;
		{
			char why[ERR_MAX], err[ERR_MAX];
			if (creds_check(&s, why, sizeof(why)) == -1) {
				creds_clear(&s);
				msg(err, sizeof(err), "credentials from %s: %s", c->plan.source,
				    why);
				attempt_finish(c, NULL, NULL, err);
				break;
			}
		}
		attempt_finish(c, &s, c->plan.source, NULL);
		break;
	case PLAN_PROCESS:
		process_start(c);
		break;
	case PLAN_WEB_IDENTITY:
		sts_start(c);
		break;
	case PLAN_CONTAINER:
		container_start(c);
		break;
	case PLAN_IMDS:
		imds_start(c);
		break;
	}
}

/* --- API ------------------------------------------------------------------- */

static char *conf_str(const char *s)
{
	return s && *s ? xstrdup(s) : NULL;
}

struct ses_creds *ses_creds_new(struct event_base *base, struct ses_http *http,
                                const struct conf *conf)
{
	struct ses_creds *c = xcalloc(1, sizeof(*c));

	c->base = base;
	c->http = http;
	if (conf) {
		c->conf_profile = conf_str(conf->profile);
		c->conf_akid = conf_str(conf->access_key_id);
		c->conf_secret = conf_str(conf->secret_access_key);
		c->conf_region = conf_str(conf->region);
	}
	c->pid = -1;
	c->pipe_fd = -1;
	c->ev_ready = event_new(base, -1, 0, on_ready, c);
	c->ev_timer = evtimer_new(base, on_timer, c);
	c->ev_proc = evtimer_new(base, on_process_timer, c);
	if (c->ev_ready == NULL || c->ev_timer == NULL || c->ev_proc == NULL)
		fatalx("ses_creds: cannot create events");
	return c;
}

void ses_creds_start(struct ses_creds *c, ses_creds_ready ready, void *arg)
{
	ASSERT(!c->started);
	c->started = 1;
	c->ready = ready;
	c->ready_arg = arg;
	plan_build(c, &c->plan);
	attempt_start(c);
}

const struct sigv4_credentials *ses_creds_get(struct ses_creds *c)
{
	if (!c->have || (c->cur.expires && time(NULL) >= c->cur.expires))
		return NULL;
	return &c->view;
}

time_t ses_creds_expiration(struct ses_creds *c)
{
	return c->have ? c->cur.expires : 0;
}

const char *ses_creds_source(struct ses_creds *c)
{
	return c->source ? c->source : "none";
}

int ses_creds_temporary(struct ses_creds *c)
{
	return c->have && c->cur.token && c->cur.token[0];
}

void ses_creds_refresh(struct ses_creds *c)
{
	if (!c->started || c->state != CREDS_IDLE || (c->have && c->cur.expires == 0))
		return;
	timer_arm(c->ev_timer, 0); /* from the loop, not from the caller's stack */
}

void ses_creds_free(struct ses_creds *c)
{
	if (c == NULL)
		return;
	if (c->call)
		ses_http_cancel(c->call);
	process_cleanup(c);
	event_free(c->ev_ready);
	event_free(c->ev_timer);
	event_free(c->ev_proc);
	wipe_free(&c->imds_token);
	free(c->imds_role);
	plan_clear(&c->plan);
	creds_clear(&c->cur);
	free(c->source);
	free(c->conf_profile);
	wipe_free(&c->conf_akid);
	wipe_free(&c->conf_secret);
	free(c->conf_region);
	free(c);
}
