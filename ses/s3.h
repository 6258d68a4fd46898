/*
 * s3.h - an Amazon S3 client for one bucket, on the relay's event loop: the
 * reading side of "[inbound]" (mail that SES stored in a bucket).
 *
 * Owns: S3's addressing (virtual-hosted https://BUCKET.s3.REGION.amazonaws.com
 * by default, path-style ENDPOINT/BUCKET/KEY when an endpoint is configured or
 * the bucket name has a dot), S3's flavour of SigV4 (no second URI encoding,
 * a signed x-amz-content-sha256), the operations the inbound feature needs -
 * ListObjectsV2, GetObject streamed into a sink, DeleteObject, CopyObject, and
 * a cheap access probe for `sesrelay check` - and reading S3's answers into
 * one outcome class with a line of text fit for a log.
 *
 * Must never: hold an object in memory (GetObject streams through the
 * caller's sink), call a done callback from inside the call that started it
 * or after s3_free()/s3_cancel(), log or return credentials, the
 * Authorization header or S3's StringToSign/CanonicalRequest echo, or parse a
 * byte of an answer before it is capped (answers come from the network).
 *
 * The lower half of this header (signing, keys, list and error parsing,
 * classification) is pure, exported for tests/unit/test_s3.c and
 * tests/tools/s3tool.c.
 */
#ifndef SESRELAY_S3_H
#define SESRELAY_S3_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct curl_slist;
struct event_base;
struct ses_creds;
struct ses_http;
struct sigv4_credentials;
struct sigv4_header;

#define S3_KEY_MAX        1024 /* bytes of UTF-8, S3's own limit */
#define S3_ETAG_MAX       128  /* a multipart ETag is "<32 hex>-<parts>" */
#define S3_TOKEN_MAX      1024 /* NextContinuationToken */
#define S3_CODE_MAX       64
#define S3_TEXT_MAX       512
#define S3_REQUEST_ID_MAX 128
#define S3_LIST_MAX_KEYS  1000              /* S3 never returns more per page */
#define S3_LIST_MAX_BODY  (8 * 1024 * 1024) /* a page of 1000 hostile keys fits */

/* What the caller should do about an outcome. */
enum s3_class {
	S3_OK,        /* 2xx and, for a list, a page that parsed */
	S3_TRANSIENT, /* no answer, 5xx, SlowDown, RequestTimeout, expired token: retry later */
	S3_OPERATOR,  /* credentials, permissions, clock, bucket, region: a human must act */
	S3_NOT_FOUND, /* NoSuchKey: the object is gone (another consumer took it) */
	S3_REJECTED,  /* S3 refused this request for another reason: retrying will not help */
	S3_ABORTED,   /* the caller's sink stopped a GetObject */
};

/* "ok", "transient", "operator", "not-found", "rejected", "aborted" */
const char *s3_class_name(enum s3_class cls);

struct s3_object {
	char *key;              /* decoded UTF-8, 1..S3_KEY_MAX bytes, no NUL */
	char etag[S3_ETAG_MAX]; /* without the surrounding quotes; "" if absent */
	uint64_t size;
};

/* One ListObjectsV2 page. */
struct s3_list {
	struct s3_object *objects;
	size_t nobjects;
	int truncated;    /* IsTruncated: ask again with next_token */
	char *next_token; /* NextContinuationToken (decoded), NULL when not truncated */
};

/*
 * One finished operation, valid only during the done callback.  text is one
 * printable ASCII line: what was asked, what S3 said and, for an operator
 * error, what to check and S3's request id ("GetObject s3://b/k%20x: 403
 * SignatureDoesNotMatch: The request signature ... - check the secret access
 * key [request-id 4442587FB7D0A2F9]").  Keys appear in it URI-encoded, so the
 * line is printable and lossless.
 */
struct s3_result {
	enum s3_class cls;
	long status;                        /* HTTP status; 0 when none arrived */
	char code[S3_CODE_MAX];             /* S3's <Code>, "" when none */
	char request_id[S3_REQUEST_ID_MAX]; /* x-amz-request-id, "" when none */
	char text[S3_TEXT_MAX];
	char etag[S3_ETAG_MAX];     /* get/copy: the object's ETag, unquoted */
	uint64_t bytes;             /* get: bytes the sink accepted */
	const struct s3_list *list; /* list (S3_OK only), else NULL */
};

typedef void (*s3_done)(void *arg, const struct s3_result *r);
/* GetObject bytes as they arrive; return len to go on, anything else stops
 * the transfer (done then sees S3_ABORTED).  Must not cancel or free the
 * call or the client: return 0 and do that from done. */
typedef size_t (*s3_sink)(void *arg, const char *data, size_t len);

struct s3;
struct s3_call;

struct s3_config {
	const char *bucket;   /* required */
	const char *region;   /* required: "us-east-1" */
	const char *endpoint; /* NULL/"": AWS; else "http(s)://host[:port]", path-style */
	long timeout_ms;      /* per list/delete/copy call; 0 = 30 s */
	long get_timeout_ms;  /* whole GetObject; 0 = 15 min (stalls abort after 60 s) */
};

/*
 * A client for cfg->bucket.  Copies cfg.  http and creds must outlive it
 * (free this first).  NULL with err (one line) when the bucket, region or
 * endpoint is not usable.
 */
struct s3 *s3_new(struct event_base *base, struct ses_http *http, struct ses_creds *creds,
                  const struct s3_config *cfg, char *err, size_t errlen);
/* Cancels every call in flight: no done callback runs after this.  NULL is
 * fine, and so is calling it from inside a done callback. */
void s3_free(struct s3 *s);
/* "s3://bucket" (for logs). */
const char *s3_name(const struct s3 *s);
size_t s3_in_flight(const struct s3 *s);

/*
 * Operations.  Each returns a handle and reports exactly once through done,
 * later from the loop, never from inside the call - also for failures found
 * up front (no credentials yet, a key too long).  A handle is valid until its
 * done callback starts or it is cancelled.
 */

/* ListObjectsV2: keys under prefix (NULL/"": all), from token (NULL: the
 * start), at most max_keys (1..1000; 0 = 1000).  r->list holds the page. */
struct s3_call *s3_list(struct s3 *s, const char *prefix, const char *token, unsigned max_keys,
                        s3_done done, void *arg);
/* GetObject, streamed into sink.  r->etag and r->bytes on success.  After a
 * failure the sink may have seen part of the object: discard it. */
struct s3_call *s3_get(struct s3 *s, const char *key, s3_sink sink, void *sink_arg, s3_done done,
                       void *arg);
/* DeleteObject.  S3 answers 204 for a key that does not exist too. */
struct s3_call *s3_delete(struct s3 *s, const char *key, s3_done done, void *arg);
/* CopyObject within the bucket (metadata copied).  With s3_delete of the
 * source afterwards, a "move" to a done/ prefix.  r->etag is the copy's. */
struct s3_call *s3_copy(struct s3 *s, const char *src_key, const char *dst_key, s3_done done,
                        void *arg);
/* Can we list prefix?  ListObjectsV2 with max-keys=1: S3_OK, or why not. */
struct s3_call *s3_probe(struct s3 *s, const char *prefix, s3_done done, void *arg);
/* The done callback will not run.  NULL is fine. */
void s3_cancel(struct s3_call *c);

/* --- the pure parts, exported for tests ---------------------------------- */

/* One S3 request before signing; the signature covers all of it. */
struct s3_sign_input {
	const char *method; /* "GET", "PUT", "DELETE" */
	const char *host;   /* Host header: "bucket.s3.us-east-1.amazonaws.com" */
	const char *path;   /* wire form (s3_key_encode), "/" at least */
	const char *query;  /* wire form without '?', or NULL */
	const char *region;
	const char *payload_hash;         /* NULL: SIGV4_EMPTY_SHA256 (no body) */
	const struct sigv4_header *extra; /* also sent and signed: Range, x-amz-copy-source */
	size_t nextra;
	time_t now;
};

/*
 * The headers of one signed request: Host, X-Amz-Content-SHA256, X-Amz-Date,
 * X-Amz-Security-Token (temporary credentials), the extra ones - all signed -
 * then Authorization.  NULL with *err when the signer refuses.  Free with
 * curl_slist_free_all() (ses_http_send() takes it over).
 */
struct curl_slist *s3_sign(const struct s3_sign_input *in, const struct sigv4_credentials *cr,
                           const char **err);

/*
 * What s3.c would send for METHOD on key (NULL: the bucket) with query (wire
 * form) at time now: the URL (xmalloc'd, into *url) and the signed headers.
 * For tests and s3tool's "sign" command, which check it against botocore.
 */
struct curl_slist *s3_request_headers(const struct s3 *s, const char *method, const char *key,
                                      const char *query, const struct sigv4_header *extra,
                                      size_t nextra, const struct sigv4_credentials *cr, time_t now,
                                      char **url, const char **err);

/* The query of a ListObjectsV2 call, wire form: "list-type=2&max-keys=N"
 * [&prefix=P][&continuation-token=T] (NULL or "" leaves one out; max_keys 0 or
 * over 1000 is 1000).  xmalloc'd. */
char *s3_list_query(const char *prefix, const char *token, unsigned max_keys);
/* CopyObject's x-amz-copy-source for key in this client's bucket, as botocore
 * sends it: "bucket/" + the key URI-encoded with '/' kept.  xmalloc'd. */
char *s3_copy_source(const struct s3 *s, const char *key);

/* key as a URI path: every byte but A-Z a-z 0-9 - . _ ~ and '/' becomes %XX.
 * xmalloc'd.  S3 signs exactly this form (no second encoding). */
char *s3_key_encode(const char *key);
/* 0 when key is a usable object key: 1..S3_KEY_MAX bytes of valid UTF-8. */
int s3_key_valid(const char *key);

/*
 * A ListObjectsV2 answer: Contents/Key, ETag, Size, IsTruncated and
 * NextContinuationToken, entities decoded.  The whole page is refused (-1,
 * err set, out empty) when it is not a ListBucketResult, holds a NUL byte, a
 * key that is empty, too long or not UTF-8, more than S3_LIST_MAX_KEYS
 * entries, a Size that is not a number, an ETag or token too long, or says
 * IsTruncated without a token.  0 on success; free with s3_list_free().
 */
int s3_parse_list(const char *xml, size_t len, struct s3_list *out, char *err, size_t errlen);
void s3_list_free(struct s3_list *l);

/* <Error><Code> and <Message> of an error answer (printable, capped); 0 when
 * a Code was found, -1 when the body is not an S3 error document. */
int s3_parse_error(const char *xml, size_t len, char *code, size_t codesz, char *message,
                   size_t msgsz);
/* The class of an answer: status 0 means none arrived.  A known code wins
 * over the status. */
enum s3_class s3_classify(long status, const char *code);
/* What to check for an operator error code ("check the secret access key"),
 * or NULL. */
const char *s3_hint(const char *code);

#endif
