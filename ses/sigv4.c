/*
 * sigv4.c - AWS Signature Version 4: canonical request, string to sign,
 * signing key and Authorization header (see sigv4.h for the contract).
 *
 * Owns the SigV4 canonicalisation rules and nothing else: it never opens a
 * connection, reads a clock or a file, or keeps state between calls.  Secrets
 * only ever reach the HMAC input; every buffer derived from them is wiped with
 * OPENSSL_cleanse() before it is freed.  Nothing here logs, and nothing here
 * may ever log a secret key or a session token.  A failing OpenSSL primitive
 * (no memory, broken provider) is treated like a failed allocation: fatal.
 *
 * The rules, from the SigV4 documentation and the AWS test suite:
 *   canonical request = METHOD \n URI \n QUERY \n (name:value \n)* \n SIGNED \n HASH
 *   URI     non-S3: the wire path URI-encoded again ('/' kept); S3: verbatim
 *   QUERY   each name=value percent-decoded, re-encoded (unreserved kept,
 *           the rest %XX uppercase), sorted by name then value, joined by '&'
 *   headers names lowercased; values trimmed with inner runs of blanks
 *           collapsed to one space; sorted by name, repeats joined by ','
 *           in the order given; Host and X-Amz-Date must be among them
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "relay/log.h"
#include "relay/util.h"
#include "ses/sigv4.h"

/*
 * A private appender.  The signer deliberately does not use evbuffer so that
 * it links with libcrypto alone (CLI, fuzz targets, unit tests).
 */
struct sbuf {
	char *p;
	size_t len, cap;
};

static void sbuf_add(struct sbuf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		b->p = xrealloc(b->p, cap);
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void sbuf_adds(struct sbuf *b, const char *s)
{
	sbuf_add(b, s, strlen(s));
}

static void sbuf_addc(struct sbuf *b, char c)
{
	sbuf_add(b, &c, 1);
}

/* Hands the string over (never NULL, even when nothing was added). */
static char *sbuf_take(struct sbuf *b)
{
	char *p = b->p ? b->p : xstrdup("");
	b->p = NULL;
	b->len = b->cap = 0;
	return p;
}

/* --- hashing ------------------------------------------------------------ */

struct sigv4_sha256 {
	EVP_MD_CTX *ctx;
};

static void hex_encode(const unsigned char *in, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < n; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 0x0f];
	}
	out[2 * n] = '\0';
}

struct sigv4_sha256 *sigv4_sha256_new(void)
{
	struct sigv4_sha256 *h = xcalloc(1, sizeof(*h));

	h->ctx = EVP_MD_CTX_new();
	if (h->ctx == NULL || EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1)
		fatalx("sigv4: SHA-256 init failed");
	return h;
}

void sigv4_sha256_update(struct sigv4_sha256 *h, const void *data, size_t len)
{
	if (len > 0 && EVP_DigestUpdate(h->ctx, data, len) != 1)
		fatalx("sigv4: SHA-256 update failed");
}

void sigv4_sha256_final(struct sigv4_sha256 *h, char hex[SIGV4_HEX_SIZE])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;

	if (EVP_DigestFinal_ex(h->ctx, md, &n) != 1 || n != SIGV4_MAC_SIZE)
		fatalx("sigv4: SHA-256 final failed");
	hex_encode(md, n, hex);
}

void sigv4_sha256_free(struct sigv4_sha256 *h)
{
	if (h == NULL)
		return;
	EVP_MD_CTX_free(h->ctx);
	free(h);
}

void sigv4_sha256_hex(const void *data, size_t len, char hex[SIGV4_HEX_SIZE])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;

	if (EVP_Digest(len ? data : "", len, md, &n, EVP_sha256(), NULL) != 1 ||
	    n != SIGV4_MAC_SIZE)
		fatalx("sigv4: SHA-256 failed");
	hex_encode(md, n, hex);
}

void sigv4_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen,
                       unsigned char mac[SIGV4_MAC_SIZE])
{
	unsigned int n = 0;

	if (keylen > INT_MAX)
		fatalx("sigv4: HMAC key too long");
	if (HMAC(EVP_sha256(), key, (int)keylen, msglen ? msg : (const void *)"", msglen, mac,
	         &n) == NULL ||
	    n != SIGV4_MAC_SIZE)
		fatalx("sigv4: HMAC-SHA256 failed");
}

void sigv4_signing_key(const char *secret, const char *date8, const char *region,
                       const char *service, unsigned char key[SIGV4_MAC_SIZE])
{
	/* Two buffers: never rely on HMAC() tolerating its output over its key. */
	unsigned char k1[SIGV4_MAC_SIZE], k2[SIGV4_MAC_SIZE];
	char *seed = xasprintf("AWS4%s", secret);
	size_t seedlen = strlen(seed);

	sigv4_hmac_sha256(seed, seedlen, date8, strlen(date8), k1);
	OPENSSL_cleanse(seed, seedlen);
	free(seed);
	sigv4_hmac_sha256(k1, sizeof(k1), region, strlen(region), k2);
	sigv4_hmac_sha256(k2, sizeof(k2), service, strlen(service), k1);
	sigv4_hmac_sha256(k1, sizeof(k1), "aws4_request", strlen("aws4_request"), key);
	OPENSSL_cleanse(k1, sizeof(k1));
	OPENSSL_cleanse(k2, sizeof(k2));
}

/* --- encoding ----------------------------------------------------------- */

static bool is_unreserved(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '.' || c == '_' || c == '~';
}

static void uri_encode_to(struct sbuf *b, const char *s, size_t len, bool keep_slash)
{
	static const char digits[] = "0123456789ABCDEF";
	size_t i;

	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (is_unreserved(c) || (keep_slash && c == '/')) {
			sbuf_addc(b, (char)c);
		} else {
			char esc[3] = {'%', digits[c >> 4], digits[c & 0x0f]};
			sbuf_add(b, esc, 3);
		}
	}
}

char *sigv4_uri_encode(const char *s, size_t len, bool keep_slash)
{
	struct sbuf b = {0};

	uri_encode_to(&b, s, len, keep_slash);
	return sbuf_take(&b);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Decode %XX in s[0..len) into out (at least len bytes); returns the decoded
 * length.  A '%' not followed by two hex digits stays a literal '%' (and is
 * then signed as "%25"), as botocore's unquote does.  '+' is not a space here:
 * callers encode spaces as %20.
 */
static size_t pct_decode(const char *s, size_t len, char *out)
{
	size_t i, n = 0;

	for (i = 0; i < len; i++) {
		int hi, lo;
		if (s[i] == '%' && i + 2 < len && (hi = hexval(s[i + 1])) >= 0 &&
		    (lo = hexval(s[i + 2])) >= 0) {
			out[n++] = (char)(hi << 4 | lo);
			i += 2;
		} else {
			out[n++] = s[i];
		}
	}
	return n;
}

/* Decode then encode: "a%2fb" and "a/b" both canonicalise to "a%2Fb". */
static char *reencode(const char *s, size_t len)
{
	char *raw = xmalloc(len + 1);
	size_t n = pct_decode(s, len, raw);
	char *enc = sigv4_uri_encode(raw, n, false);

	free(raw);
	return enc;
}

/* --- canonical query ---------------------------------------------------- */

struct qparam {
	char *name, *value; /* encoded */
};

static int qparam_cmp(const void *a, const void *b)
{
	const struct qparam *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	return c ? c : strcmp(x->value, y->value);
}

static char *canonical_query(const char *query)
{
	struct qparam *v = NULL;
	size_t n = 0, i;
	const char *p = query ? query : "";
	struct sbuf b = {0};

	while (*p) {
		size_t plen = strcspn(p, "&");
		if (plen > 0) {
			const char *eq = memchr(p, '=', plen);
			size_t nlen = eq ? (size_t)(eq - p) : plen;
			v = xreallocarray(v, n + 1, sizeof(*v));
			v[n].name = reencode(p, nlen);
			v[n].value = eq ? reencode(eq + 1, plen - nlen - 1) : xstrdup("");
			n++;
		}
		p += plen;
		if (*p == '&')
			p++;
	}
	if (n > 1)
		qsort(v, n, sizeof(*v), qparam_cmp);
	for (i = 0; i < n; i++) {
		if (i > 0)
			sbuf_addc(&b, '&');
		sbuf_adds(&b, v[i].name);
		sbuf_addc(&b, '=');
		sbuf_adds(&b, v[i].value);
		free(v[i].name);
		free(v[i].value);
	}
	free(v);
	return sbuf_take(&b);
}

/* --- canonical headers -------------------------------------------------- */

struct chdr {
	char *name;  /* lowercased */
	char *value; /* trimmed, blanks collapsed */
	size_t order;
};

/* RFC 7230 tchar: what a header name may be made of. */
static bool is_tchar(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool is_blank(char c)
{
	return c == ' ' || c == '\t';
}

static char *header_name(const char *s)
{
	size_t i, n = strlen(s);
	char *out;

	if (n == 0)
		return NULL;
	for (i = 0; i < n; i++)
		if (!is_tchar((unsigned char)s[i]))
			return NULL;
	out = xstrdup(s);
	for (i = 0; i < n; i++)
		if (out[i] >= 'A' && out[i] <= 'Z')
			out[i] = (char)(out[i] - 'A' + 'a');
	return out;
}

/* NULL if the value holds a control character (CR/LF would forge lines). */
static char *header_value(const char *s)
{
	struct sbuf b = {0};
	bool gap = false;

	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if ((c < 0x20 && c != '\t') || c == 0x7f) {
			free(b.p);
			return NULL;
		}
		if (is_blank(*s)) {
			gap = true;
			continue;
		}
		if (gap && b.len > 0)
			sbuf_addc(&b, ' ');
		gap = false;
		sbuf_addc(&b, *s);
	}
	return sbuf_take(&b);
}

/* By name, then by position: repeated headers keep the order they came in. */
static int chdr_cmp(const void *a, const void *b)
{
	const struct chdr *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	if (c != 0)
		return c;
	return x->order < y->order ? -1 : x->order > y->order;
}

struct canon_headers {
	char *block;                   /* "name:value\n" per distinct name */
	char *signed_;                 /* "name;name" */
	char *host, *amz_date, *token; /* joined values, or NULL when absent */
	bool authorization;
};

static void canon_headers_free(struct canon_headers *ch)
{
	free(ch->block);
	free(ch->signed_);
	free(ch->host);
	free(ch->amz_date);
	free(ch->token);
	memset(ch, 0, sizeof(*ch));
}

static void note_special(struct canon_headers *ch, const char *name, const char *value)
{
	char **slot = NULL;

	if (strcmp(name, "host") == 0)
		slot = &ch->host;
	else if (strcmp(name, "x-amz-date") == 0)
		slot = &ch->amz_date;
	else if (strcmp(name, "x-amz-security-token") == 0)
		slot = &ch->token;
	else if (strcmp(name, "authorization") == 0)
		ch->authorization = true;
	if (slot != NULL)
		*slot = xstrdup(value);
}

/* v sorted: one "name:v1,v2\n" line per name, and "name;name" for SignedHeaders. */
static void join_headers(const struct chdr *v, size_t n, struct canon_headers *ch)
{
	struct sbuf block = {0}, names = {0}, joined = {0};
	size_t i;

	for (i = 0; i < n; i++) {
		if (i == 0 || strcmp(v[i].name, v[i - 1].name) != 0) {
			joined.len = 0; /* a new name: start its value list afresh */
			if (names.len > 0)
				sbuf_addc(&names, ';');
			sbuf_adds(&names, v[i].name);
		} else {
			sbuf_addc(&joined, ',');
		}
		sbuf_adds(&joined, v[i].value);
		if (i + 1 < n && strcmp(v[i].name, v[i + 1].name) == 0)
			continue;
		sbuf_adds(&block, v[i].name);
		sbuf_addc(&block, ':');
		sbuf_adds(&block, joined.p);
		sbuf_addc(&block, '\n');
		note_special(ch, v[i].name, joined.p);
	}
	ch->block = sbuf_take(&block);
	ch->signed_ = sbuf_take(&names);
	free(joined.p);
}

static const char *canonical_headers(const struct sigv4_header *hdrs, size_t n,
                                     struct canon_headers *ch)
{
	struct chdr *v = xcalloc(n ? n : 1, sizeof(*v));
	const char *err = NULL;
	size_t i;

	for (i = 0; i < n && err == NULL; i++) {
		v[i].order = i;
		if (hdrs[i].name == NULL || (v[i].name = header_name(hdrs[i].name)) == NULL)
			err = "header name is empty or not an HTTP token";
		else if (hdrs[i].value == NULL ||
		         (v[i].value = header_value(hdrs[i].value)) == NULL)
			err = "header value is missing or contains a control character";
	}
	if (err == NULL) {
		qsort(v, n, sizeof(*v), chdr_cmp);
		join_headers(v, n, ch);
	}
	for (i = 0; i < n; i++) {
		free(v[i].name);
		free(v[i].value);
	}
	free(v);
	return err;
}

/* --- validation --------------------------------------------------------- */

static bool is_amz_date(const char *s)
{
	size_t i;

	if (s == NULL || strlen(s) != 16 || s[8] != 'T' || s[15] != 'Z')
		return false;
	for (i = 0; i < 15; i++)
		if (i != 8 && (s[i] < '0' || s[i] > '9'))
			return false;
	return true;
}

/* Scope parts and the access key id end up between '/' in Credential=. */
static bool is_scope_word(const char *s)
{
	if (s == NULL || *s == '\0')
		return false;
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c <= 0x20 || c >= 0x7f || c == '/' || c == ',' || c == '=' || c == ';')
			return false;
	}
	return true;
}

/* Printable ASCII without spaces: what may go verbatim on a canonical line. */
static bool is_visible(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
			return false;
	return true;
}

static const char *check_request(const struct sigv4_request *req,
                                 const struct sigv4_credentials *creds)
{
	if (req->method == NULL || *req->method == '\0' || !is_visible(req->method))
		return "bad method";
	if (req->path == NULL || (*req->path != '\0' && *req->path != '/'))
		return "path must start with '/'";
	if (req->s3_mode && !is_visible(req->path))
		return "S3 path must be percent-encoded";
	if (req->payload_hash == NULL || *req->payload_hash == '\0' ||
	    !is_visible(req->payload_hash))
		return "bad payload hash";
	if (!is_amz_date(req->amz_date))
		return "amz_date is not YYYYMMDDTHHMMSSZ";
	if (!is_scope_word(req->region))
		return "bad region";
	if (!is_scope_word(req->service))
		return "bad service";
	if (creds == NULL || !is_scope_word(creds->access_key_id))
		return "bad access key id";
	if (creds->secret_access_key == NULL || *creds->secret_access_key == '\0')
		return "no secret access key";
	if (req->headers == NULL && req->nheaders > 0)
		return "no headers";
	return NULL;
}

/* The headers that make a signature worthless or rejected when wrong. */
static const char *check_headers(const struct sigv4_request *req,
                                 const struct sigv4_credentials *creds,
                                 const struct canon_headers *ch)
{
	const char *token = creds->session_token;

	if (ch->host == NULL || *ch->host == '\0')
		return "Host header is not signed";
	if (ch->amz_date == NULL)
		return "X-Amz-Date header is not signed";
	if (strcmp(ch->amz_date, req->amz_date) != 0)
		return "X-Amz-Date header differs from amz_date";
	if (ch->authorization)
		return "an Authorization header cannot be signed";
	if (token != NULL && *token != '\0' && (ch->token == NULL || strcmp(ch->token, token) != 0))
		return "session token set but X-Amz-Security-Token is not signed with it";
	return NULL;
}

/* --- signing ------------------------------------------------------------ */

static char *canonical_request(const struct sigv4_request *req, const char *query,
                               const struct canon_headers *ch)
{
	struct sbuf b = {0};
	const char *path = *req->path ? req->path : "/";

	sbuf_adds(&b, req->method);
	sbuf_addc(&b, '\n');
	if (req->s3_mode)
		sbuf_adds(&b, path);
	else
		uri_encode_to(&b, path, strlen(path), true);
	sbuf_addc(&b, '\n');
	sbuf_adds(&b, query);
	sbuf_addc(&b, '\n');
	sbuf_adds(&b, ch->block);
	sbuf_addc(&b, '\n');
	sbuf_adds(&b, ch->signed_);
	sbuf_addc(&b, '\n');
	sbuf_adds(&b, req->payload_hash);
	return sbuf_take(&b);
}

int sigv4_sign(const struct sigv4_request *req, const struct sigv4_credentials *creds,
               struct sigv4_signed *out)
{
	struct canon_headers ch = {0};
	unsigned char key[SIGV4_MAC_SIZE], mac[SIGV4_MAC_SIZE];
	char date8[9], creq_hash[SIGV4_HEX_SIZE];
	char *query;

	memset(out, 0, sizeof(*out));
	if ((out->error = check_request(req, creds)) != NULL)
		return -1;
	if ((out->error = canonical_headers(req->headers, req->nheaders, &ch)) != NULL ||
	    (out->error = check_headers(req, creds, &ch)) != NULL) {
		canon_headers_free(&ch);
		return -1;
	}

	memcpy(date8, req->amz_date, 8);
	date8[8] = '\0';
	query = canonical_query(req->query);
	out->canonical_request = canonical_request(req, query, &ch);
	out->signed_headers = xstrdup(ch.signed_);
	free(query);
	canon_headers_free(&ch);

	out->credential_scope =
	    xasprintf("%s/%s/%s/aws4_request", date8, req->region, req->service);
	sigv4_sha256_hex(out->canonical_request, strlen(out->canonical_request), creq_hash);
	out->string_to_sign = xasprintf(SIGV4_ALGORITHM "\n%s\n%s\n%s", req->amz_date,
	                                out->credential_scope, creq_hash);

	sigv4_signing_key(creds->secret_access_key, date8, req->region, req->service, key);
	sigv4_hmac_sha256(key, sizeof(key), out->string_to_sign, strlen(out->string_to_sign), mac);
	OPENSSL_cleanse(key, sizeof(key));
	hex_encode(mac, sizeof(mac), out->signature);

	out->authorization = xasprintf(
	    SIGV4_ALGORITHM " Credential=%s/%s, SignedHeaders=%s, Signature=%s",
	    creds->access_key_id, out->credential_scope, out->signed_headers, out->signature);
	return 0;
}

void sigv4_signed_free(struct sigv4_signed *s)
{
	if (s == NULL)
		return;
	free(s->canonical_request);
	free(s->string_to_sign);
	free(s->credential_scope);
	free(s->signed_headers);
	free(s->authorization);
	memset(s, 0, sizeof(*s));
}

int sigv4_amz_date(time_t t, char out[SIGV4_AMZ_DATE_SIZE])
{
	struct tm tm;

	if (gmtime_r(&t, &tm) == NULL || tm.tm_year < -1900 || tm.tm_year > 9999 - 1900)
		return -1;
	if (strftime(out, SIGV4_AMZ_DATE_SIZE, "%Y%m%dT%H%M%SZ", &tm) != SIGV4_AMZ_DATE_SIZE - 1)
		return -1;
	return 0;
}
