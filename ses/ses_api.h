/*
 * ses_api.h - the "api" transport: one SES SendEmail (v2, Content.Raw) or
 * SendRawEmail (v1) HTTPS call per delivery, SigV4-signed, on the loop.
 *
 * Owns: the request bodies (built around a message streamed from the queue
 * file), the two passes a streamed SigV4 body needs (hash, then send the same
 * bytes), at most conf->concurrency calls in flight, reading SES's answers
 * into one outcome class (relay/transport.h), and polling GetAccount for the
 * send rate and the 24-hour quota.
 *
 * Must never: hold a whole message or its base64 in memory, call a
 * delivery's done() from inside send() or after free(), log credentials, the
 * Authorization header or message content, or trust a byte of an answer
 * before it is capped and checked (answers come from the network).
 *
 * The lower half of this header (body, reply, account) is the pure part,
 * exported for tests/unit/test_ses_api.c.
 */
#ifndef SESRELAY_SES_API_H
#define SESRELAY_SES_API_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "relay/transport.h"

struct conf;
struct event_base;
struct ses_creds;
struct ses_http;
struct ses_http_response;
struct sigv4_sha256;

#define SES_API_V2_MAX_SIZE 41943040ULL /* 40 MiB */
#define SES_API_V1_MAX_SIZE 10485760ULL /* 10 MiB */

/*
 * The transport, named "ses-api[REGION]".  Copies what it needs from conf
 * (region, api_version, endpoint, configuration_set, concurrency), so conf may
 * be freed after.  http and creds must outlive it (free the transport first).
 * Returns NULL, with an error logged, when the endpoint is not an http(s) URL
 * without path, or no region is known.  Starts polling GetAccount (first call
 * from the loop, then every 10 minutes).
 */
struct transport *ses_api_transport_new(struct event_base *base, struct ses_http *http,
                                        struct ses_creds *creds, const struct conf *conf);

/* --- request bodies (pure; exported for tests) ------------------------------ */

/* Message bytes per pread: a multiple of 3 so base64 never pads mid-stream. */
#define SES_API_CHUNK 49152

enum ses_api_body_phase {
	SES_API_BODY_HEAD,
	SES_API_BODY_DATA,
	SES_API_BODY_TAIL,
	SES_API_BODY_END
};

/*
 * HEAD + encode(message) + TAIL, produced on demand.  encode is base64 (v2,
 * inside a JSON string) or base64 then percent-encoded (v1 form).  The same
 * object is read twice: once to hash and measure it, once (after
 * ses_api_body_rewind) to send it; both reads produce the same bytes.
 */
struct ses_api_body {
	char *head, *tail;
	size_t head_len, tail_len;
	int form; /* v1: percent-encode the base64 */
	int fd;   /* the queue file; not owned */
	uint64_t data_offset, data_len;
	size_t chunk; /* bytes per pread; tests may change it before the first read */

	enum ses_api_body_phase phase;
	size_t pos;        /* in head or tail */
	uint64_t consumed; /* message bytes read */
	uint64_t produced; /* body bytes handed out since the last rewind */
	unsigned char *in; /* chunk bytes */
	char *b64;         /* base64 of the last chunk */
	size_t b64_len, b64_pos;
	char pend[3]; /* the rest of a %XX that did not fit */
	size_t pend_len, pend_pos;
	int err; /* errno of a failed read (EIO: the file is short) */
};

/* Build head and tail for api_version 1 or 2; sender "" is left out; the
 * message is [data_offset, +data_len) of fd. */
void ses_api_body_init(struct ses_api_body *b, int api_version, const char *sender,
                       const char *const *rcpts, size_t nrcpts, const char *configuration_set,
                       int fd, uint64_t data_offset, uint64_t data_len);
/* Up to len bytes of the body into buf; 0 at the end, -1 on a read error
 * (b->err).  Never returns 0 before the end when len > 0. */
ssize_t ses_api_body_read(struct ses_api_body *b, char *buf, size_t len);
/* Start over from the first byte (pass 2, or a resent request). */
void ses_api_body_rewind(struct ses_api_body *b);
void ses_api_body_free(struct ses_api_body *b);
/*
 * Pass 1, in slices: feed at most about `budget` body bytes into sha.
 * Returns 1 when the whole body is hashed (b->produced is then its length),
 * 0 when there is more, -1 on a read error.
 */
int ses_api_body_hash(struct ses_api_body *b, struct sigv4_sha256 *sha, size_t budget);

/* s[0..len) as the inside of a JSON string ("\" \\ and controls escaped),
 * appended to *out (an evbuffer); exported for the escaping tests. */
struct evbuffer;
void ses_api_json_escape(struct evbuffer *out, const char *s);

/* --- answers (pure; exported for tests) -------------------------------------- */

#define SES_API_ID_MAX   128
#define SES_API_CODE_MAX 96

/* What one SES answer says, every field capped and printable. */
struct ses_api_reply {
	long status;                     /* HTTP status; 0 when none arrived */
	char message_id[SES_API_ID_MAX]; /* "" unless found */
	char code[SES_API_CODE_MAX];     /* error code, "prefix#" and ":suffix" cut */
	char message[DELIVERY_TEXT_MAX]; /* error message, or curl's words */
	int parsed;                      /* the body was JSON or XML we could read */
};

/* Read r (v2 JSON or v1 XML, sniffed; x-amzn-ErrorType wins for the code). */
void ses_api_parse_response(const struct ses_http_response *r, struct ses_api_reply *out);
/*
 * The outcome class of an error: http_status 0 means no HTTP answer at all.
 * The code wins over the status when it is known; message decides between
 * throttling and an exhausted daily quota.
 */
enum delivery_status ses_api_classify(long http_status, const char *code, const char *message);
/* Everything above in one go: fills rep, and text with the words for every
 * recipient ("MessageId ID", "STATUS Code: Message", "no answer from SES:
 * curl's words"; at most size-1 printable ASCII). */
enum delivery_status ses_api_outcome(const struct ses_http_response *r, struct ses_api_reply *rep,
                                     char *text, size_t size);

/* A GetAccount answer. */
struct ses_api_account {
	double max_send_rate; /* SendQuota.MaxSendRate */
	double max_24h;       /* SendQuota.Max24HourSend; -1 unlimited */
	double sent_24h;      /* SendQuota.SentLast24Hours */
	int production;       /* ProductionAccessEnabled (0: sandbox) */
	int sending_enabled;  /* SendingEnabled */
};

/* 0, or -1 when the body lacks SendQuota.MaxSendRate or is not JSON. */
int ses_api_parse_account(const char *body, size_t len, struct ses_api_account *out);

/* A GetEmailIdentity answer (GET /v2/email/identities/{id}), for `sesrelay check`. */
#define SES_API_DKIM_TOKENS_MAX 3 /* Easy DKIM: three CNAMEs */
#define SES_API_TOKEN_MAX       64
#define SES_API_STATUS_MAX      32
#define SES_API_DOMAIN_MAX      256
struct ses_api_identity {
	int verified;                                 /* VerifiedForSendingStatus */
	char verification_status[SES_API_STATUS_MAX]; /* VerificationStatus ("" if absent) */
	char dkim_status[SES_API_STATUS_MAX];         /* DkimAttributes.Status */
	int dkim_signing;                             /* DkimAttributes.SigningEnabled */
	char dkim_tokens[SES_API_DKIM_TOKENS_MAX][SES_API_TOKEN_MAX]; /* .Tokens */
	size_t ndkim_tokens;
	char mail_from_domain[SES_API_DOMAIN_MAX]; /* MailFromAttributes.MailFromDomain */
	char mail_from_status[SES_API_STATUS_MAX]; /* MailFromAttributes.MailFromDomainStatus */
};

/* 0, or -1 when the body is not JSON or lacks VerifiedForSendingStatus.  Text
 * is capped and printable; a token that is not a DNS label is dropped. */
int ses_api_parse_identity(const char *body, size_t len, struct ses_api_identity *out);

/*
 * The value at PATH ("SendQuota.MaxSendRate": object keys joined by '.') in a
 * JSON document, depth and lengths capped.  _string decodes escapes into out
 * (cut to size-1); _number and _bool want that type.  0 found, -1 not.
 */
int ses_api_json_string(const char *json, size_t len, const char *path, char *out, size_t size);
int ses_api_json_number(const char *json, size_t len, const char *path, double *out);
int ses_api_json_bool(const char *json, size_t len, const char *path, int *out);
/* The string at INDEX (from 0) of the array at PATH; 0 found, -1 not (not a
 * string, or longer than size-1). */
int ses_api_json_array_string(const char *json, size_t len, const char *path, size_t index,
                              char *out, size_t size);
/*
 * Walk the array at PATH: start with *pos = 0; each call sets [*elem,
 * *elem + *elem_len) to the next element's JSON text (feed an object to the
 * functions above) and returns 1, then 0 after the last one; -1 when PATH is
 * not an array or the text is malformed.  Each call scans only its element.
 */
int ses_api_json_array_next(const char *json, size_t len, const char *path, size_t *pos,
                            const char **elem, size_t *elem_len);
/* The text of the first <TAG> inside the first <SCOPE> element (SCOPE NULL:
 * anywhere), entities decoded, cut to size-1.  0 found, -1 not. */
int ses_api_xml_text(const char *xml, size_t len, const char *scope, const char *tag, char *out,
                     size_t size);

/* "https://host[:port]" (a trailing '/' allowed, nothing after the authority)
 * split into base URL and host, both xmalloc'd.  0, or -1 when it is not. */
int ses_api_parse_endpoint(const char *ep, char **base_url, char **host);

/* Headers for one signed SES call (path may carry "?query", wire form): Content-Type (when given), Host,
 * X-Amz-Date, X-Amz-Security-Token (temporary keys), all signed, and
 * Authorization.  NULL with *err when the signer refuses.  Shared by the
 * transport and `sesrelay check`. */
struct curl_slist;
struct sigv4_credentials;
struct curl_slist *ses_api_sign(const char *host, const char *region, const char *method,
                                const char *path, const char *content_type,
                                const char *payload_hash, const struct sigv4_credentials *cr,
                                const char **err);

#endif
