/*
 * sigv4.h - AWS Signature Version 4 (AWS4-HMAC-SHA256) request signing.
 *
 * Owns: the canonical request, the string to sign, the signing key chain and
 * the Authorization header value, plus the SHA-256 payload hash that callers
 * feed incrementally while they stream a request body.  It does no I/O, reads
 * no clock and keeps no state between calls: the caller passes the time, the
 * credentials and every header to sign, so one request always signs the same.
 *
 * Must never: log, print or copy a secret key or session token anywhere but
 * the HMAC input (the derived keys are wiped after use), nor sign anything it
 * was not given - every header in a request is signed, none is added.
 *
 * Paths.  req->path is the path exactly as it goes on the wire, i.e. already
 * percent-encoded once (build path segments with sigv4_uri_encode()).  Every
 * service but S3 canonicalises it by URI-encoding it a second time ('%' becomes
 * "%25"; "/v2/email/identities/a%40b.example" is signed as ".../a%2540b.example"),
 * which is what botocore does.  With req->s3_mode the wire path is the canonical
 * URI verbatim (S3's "no double encoding").  No '.'/'..' or "//" normalisation is
 * done in either mode: SES paths are fixed.
 *
 * Headers.  The caller passes exactly the headers it wants signed and sends
 * the same values: at least Host and X-Amz-Date (equal to req->amz_date),
 * plus Content-Type for a body.  Leave out headers that the HTTP stack or a
 * proxy may rewrite (User-Agent, Content-Length, Expect, Transfer-Encoding),
 * as botocore does.  An Authorization header among them is refused.
 *
 * Temporary credentials.  When creds->session_token is set, the caller must put
 * an "X-Amz-Security-Token: <token>" header among req->headers (and send it);
 * sigv4_sign() refuses to sign otherwise: botocore signs the token for SES,
 * and services that want it signed reject a request that leaves it out.
 */
#ifndef SESRELAY_SIGV4_H
#define SESRELAY_SIGV4_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#define SIGV4_ALGORITHM "AWS4-HMAC-SHA256"
/* x-amz-content-sha256 value for unsigned S3 payloads */
#define SIGV4_UNSIGNED_PAYLOAD "UNSIGNED-PAYLOAD"
/* Lowercase hex SHA-256 or HMAC-SHA256: 64 digits and a NUL. */
#define SIGV4_HEX_SIZE 65
/* Raw SHA-256 / HMAC-SHA256 output. */
#define SIGV4_MAC_SIZE 32
/* "YYYYMMDDTHHMMSSZ" and a NUL. */
#define SIGV4_AMZ_DATE_SIZE 17
/* sha256("") - the payload hash of a GET */
#define SIGV4_EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

struct sigv4_credentials {
	const char *access_key_id;
	const char *secret_access_key;
	const char *session_token; /* NULL or "" for long-term keys */
};

struct sigv4_header {
	const char *name;  /* any case; lowercased for signing */
	const char *value; /* trimmed and space-collapsed for signing; no CR/LF */
};

struct sigv4_request {
	const char *method; /* "GET", "POST" */
	const char *path;   /* wire form, already percent-encoded; "" means "/" */
	const char *query;  /* wire form without '?', or NULL; decoded, re-encoded, sorted */
	const struct sigv4_header *headers; /* all of them are signed; repeats are joined */
	size_t nheaders;
	const char *payload_hash; /* sigv4_sha256_*() hex, or SIGV4_UNSIGNED_PAYLOAD */
	const char *region;       /* "us-west-2" */
	const char *service;      /* "ses" */
	const char *amz_date;     /* "YYYYMMDDTHHMMSSZ", see sigv4_amz_date() */
	bool s3_mode;             /* path is the canonical URI as is (no second encoding) */
};

/*
 * What sigv4_sign() produces.  Every intermediate string is kept so tests and
 * debug logging can show them (none contains a secret; the session token does
 * appear in canonical_request as a signed header value, so never log that one
 * in full).  Free with sigv4_signed_free(); safe on a zeroed or failed result.
 */
struct sigv4_signed {
	char *canonical_request;
	char *string_to_sign;
	char *credential_scope; /* "20150830/us-east-1/ses/aws4_request" */
	char *signed_headers;   /* "content-type;host;x-amz-date" */
	char signature[SIGV4_HEX_SIZE];
	char *authorization; /* the whole Authorization header value */
	const char *error;   /* static text when sigv4_sign() failed */
};

/*
 * Sign req with creds.  Returns 0 and fills *out, or -1 with out->error set
 * (bad date, region, header name/value, missing Host, unsigned session
 * token...).  Either way the caller calls sigv4_signed_free(out).
 */
int sigv4_sign(const struct sigv4_request *req, const struct sigv4_credentials *creds,
               struct sigv4_signed *out);
void sigv4_signed_free(struct sigv4_signed *s);

/* Incremental SHA-256 for a streamed body: new, update* , final, free. */
struct sigv4_sha256;
struct sigv4_sha256 *sigv4_sha256_new(void);
void sigv4_sha256_update(struct sigv4_sha256 *h, const void *data, size_t len);
/* Lowercase hex digest.  Call once; only sigv4_sha256_free() may follow. */
void sigv4_sha256_final(struct sigv4_sha256 *h, char hex[SIGV4_HEX_SIZE]);
void sigv4_sha256_free(struct sigv4_sha256 *h);
/* One-shot form of the above. */
void sigv4_sha256_hex(const void *data, size_t len, char hex[SIGV4_HEX_SIZE]);

/* HMAC-SHA256, exported for the SES SMTP password derivation. */
void sigv4_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen,
                       unsigned char mac[SIGV4_MAC_SIZE]);
/* kSigning = HMAC chain of "AWS4"+secret over date (YYYYMMDD), region, service,
 * "aws4_request".  The result is a secret: wipe it (OPENSSL_cleanse) after use. */
void sigv4_signing_key(const char *secret, const char *date8, const char *region,
                       const char *service, unsigned char key[SIGV4_MAC_SIZE]);

/*
 * Percent-encode s[0..len) the AWS way: A-Z a-z 0-9 - . _ ~ stay, every other
 * byte becomes %XX (uppercase); '/' stays too when keep_slash.  Use it for the
 * wire form of path segments (keep_slash false) and query values.  Returns an
 * xmalloc'd string.
 */
char *sigv4_uri_encode(const char *s, size_t len, bool keep_slash);

/* t (seconds since the epoch) as "YYYYMMDDTHHMMSSZ" in UTC.  0, or -1 if the
 * year does not fit in four digits. */
int sigv4_amz_date(time_t t, char out[SIGV4_AMZ_DATE_SIZE]);

#endif
