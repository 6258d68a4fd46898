/*
 * sqs.h - an Amazon SQS client for one queue, on the relay's event loop, and
 * the reader of the SES receipt notifications that arrive through it: the
 * exact envelope recipients of the mail that "[inbound]" fetches from S3
 * (a message's own headers miss its Bcc recipients).
 *
 * Owns: SQS's JSON protocol (POST to the endpoint root with X-Amz-Target
 * AmazonSQS.ReceiveMessage / AmazonSQS.DeleteMessage and an
 * application/x-amz-json-1.0 body naming the QueueUrl), SigV4 for service
 * "sqs", long polling (the HTTP timeout always outlasts WaitTimeSeconds),
 * reading SQS's answers into one outcome class with a line fit for a log,
 * and sqs_parse_receipt(): an SNS envelope or a raw SES notification in, the
 * S3 object and its recipients out.
 *
 * Must never: call a done callback from inside the call that started it or
 * after sqs_free()/sqs_cancel(), log or return credentials or the
 * Authorization header, log a message body (it names senders and
 * recipients: only ids and counts go to the log line), or parse a byte of
 * an answer before it is capped (answers come from the network).
 *
 * Trust.  A notification is not signed for us (SNS signatures are not
 * checked here): whoever may send to the queue may write one.  The queue's
 * access policy is the barrier; the caller must still check that the bucket
 * named is its own bucket before it fetches anything.
 *
 * The lower half of this header (request bodies, signing, answer and
 * notification parsing, classification) is pure, exported for
 * tests/unit/test_sqs.c and tests/tools/sqstool.c.
 */
#ifndef SESRELAY_SQS_H
#define SESRELAY_SQS_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct curl_slist;
struct event_base;
struct ses_creds;
struct ses_http;
struct sigv4_credentials;

#define SQS_MAX_MESSAGES       10                /* per ReceiveMessage: SQS's own limit */
#define SQS_MAX_WAIT           20                /* WaitTimeSeconds: SQS's own limit */
#define SQS_MAX_VISIBILITY     43200             /* VisibilityTimeout, 12 hours */
#define SQS_MESSAGE_ID_MAX     128               /* a UUID in practice */
#define SQS_RECEIPT_HANDLE_MAX 2048              /* SQS's are under 1 KiB */
#define SQS_BODY_MAX           (256 * 1024)      /* SNS's limit; a longer body is not read */
#define SQS_RECEIVE_MAX_BODY   (8 * 1024 * 1024) /* 10 bodies, escaped up to 3x */
#define SQS_CODE_MAX           96
#define SQS_TEXT_MAX           512
#define SQS_REQUEST_ID_MAX     128

/* What the caller should do about an outcome. */
enum sqs_class {
	SQS_OK,        /* 2xx, and for a receive an answer that parsed */
	SQS_TRANSIENT, /* no answer, 5xx, throttling, expired token, a garbled answer: retry */
	SQS_OPERATOR,  /* credentials, permissions, clock, queue URL, KMS key: a human must act */
	SQS_REJECTED,  /* SQS refused this request (a bad handle...): a retry will not help */
};

/* "ok", "transient", "operator", "rejected" */
const char *sqs_class_name(enum sqs_class cls);

/* One received message. */
struct sqs_message {
	char message_id[SQS_MESSAGE_ID_MAX];
	char receipt_handle[SQS_RECEIPT_HANDLE_MAX + 1]; /* printable ASCII */
	char *body; /* UTF-8, NUL-terminated, body_len bytes; NULL when oversize */
	size_t body_len;
	int oversize;           /* the Body was over SQS_BODY_MAX: not read, not checked */
	unsigned receive_count; /* ApproximateReceiveCount; 0 when not given */
};

/*
 * One finished operation, valid only during the done callback.  text is one
 * printable ASCII line: what was asked, what SQS said and, for an operator
 * error, what to check and SQS's request id ("ReceiveMessage
 * https://sqs.eu-west-1.amazonaws.com/123456789012/inbound: 400
 * QueueDoesNotExist: The specified queue does not exist. - check queue_url
 * (account, name and region) [request-id 66916324-...]").
 */
struct sqs_result {
	enum sqs_class cls;
	long status;                         /* HTTP status; 0 when none arrived */
	char code[SQS_CODE_MAX];             /* "QueueDoesNotExist" ("prefix#" cut); "" when none */
	char request_id[SQS_REQUEST_ID_MAX]; /* x-amzn-RequestId; "" when none */
	char text[SQS_TEXT_MAX];
	const struct sqs_message *messages; /* receive (SQS_OK only): 0..10 of them */
	size_t nmessages;
};

typedef void (*sqs_done)(void *arg, const struct sqs_result *r);

struct sqs;
struct sqs_call;

struct sqs_config {
	const char *queue_url; /* required: https://sqs.REGION.amazonaws.com/ACCOUNT/NAME */
	const char *region;    /* NULL/"": from the queue URL's host (sqs.REGION.amazonaws.com) */
	const char *endpoint;  /* NULL/"": the queue URL's scheme and host; else
	                        * "http(s)://host[:port]" (a VPC endpoint, a test server) */
	long timeout_ms;       /* per call, on top of a receive's wait; 0 = 30 s */
};

/*
 * A client for cfg->queue_url.  Copies cfg.  http and creds must outlive it
 * (free this first).  NULL with err (one line) when the URL is not
 * http(s)://host[:port]/PATH, the endpoint is not usable, or no region is
 * given nor found in the host name.
 */
struct sqs *sqs_new(struct event_base *base, struct ses_http *http, struct ses_creds *creds,
                    const struct sqs_config *cfg, char *err, size_t errlen);
/* Cancels every call in flight: no done callback runs after this.  NULL is
 * fine, and so is calling it from inside a done callback. */
void sqs_free(struct sqs *q);
/* The queue URL (for logs). */
const char *sqs_name(const struct sqs *q);
/* The region requests are signed for. */
const char *sqs_region(const struct sqs *q);
size_t sqs_in_flight(const struct sqs *q);

/*
 * Operations.  Each returns a handle and reports exactly once through done,
 * later from the loop, never from inside the call - also for failures found
 * up front (no credentials yet, a receipt handle too long).  A handle is
 * valid until its done callback starts or it is cancelled.
 */

/*
 * ReceiveMessage: at most max_messages (1..10; 0 = 10), waiting up to
 * wait_seconds (0..20, long polling) for the first one; what is received
 * stays invisible to other consumers for visibility_timeout seconds
 * (0..43200; -1: the queue's default), then comes back unless deleted.
 * r->messages on success, possibly none.  Out-of-range numbers are refused
 * (SQS_REJECTED), not clamped.
 */
struct sqs_call *sqs_receive(struct sqs *q, unsigned max_messages, unsigned wait_seconds,
                             int visibility_timeout, sqs_done done, void *arg);
/* DeleteMessage with the handle of the latest receive of the message. */
struct sqs_call *sqs_delete(struct sqs *q, const char *receipt_handle, sqs_done done, void *arg);
/* The done callback will not run.  NULL is fine. */
void sqs_cancel(struct sqs_call *c);

/* --- the pure parts, exported for tests ---------------------------------- */

/* The JSON bodies sqs.c sends (xmalloc'd).  visibility_timeout < 0 leaves
 * it out; the receive asks for ApproximateReceiveCount. */
char *sqs_receive_body(const char *queue_url, unsigned max_messages, unsigned wait_seconds,
                       int visibility_timeout);
char *sqs_delete_body(const char *queue_url, const char *receipt_handle);

/*
 * The headers of one signed call of operation OP ("ReceiveMessage") with
 * body: Host, X-Amz-Date, X-Amz-Target, Content-Type, X-Amz-Security-Token
 * (temporary credentials) - all signed - then Authorization; and the URL
 * (xmalloc'd, into *url: the endpoint root).  NULL with *err when the
 * signer refuses.  Free with curl_slist_free_all() (ses_http_send() takes it
 * over).
 */
struct curl_slist *sqs_request_headers(const struct sqs *q, const char *op, const char *body,
                                       size_t body_len, const struct sigv4_credentials *cr,
                                       time_t now, char **url, const char **err);

/* A handle sqs_delete() accepts: 1..SQS_RECEIPT_HANDLE_MAX printable ASCII. */
int sqs_receipt_handle_valid(const char *h);

/*
 * A ReceiveMessage answer: Messages[].MessageId, ReceiptHandle, Body (escapes
 * decoded), MD5OfBody (checked against the body when present) and
 * Attributes.ApproximateReceiveCount.  A Body over SQS_BODY_MAX is not read
 * (oversize).  No "Messages" is an empty answer.  The whole answer is
 * refused (-1, err set, nothing out) when it is not a JSON object, holds a NUL
 * byte, more than SQS_MAX_MESSAGES messages, a message without an id or a
 * handle (or one too long or not printable), without a Body, or whose body
 * does not match its MD5.  0 on success; free with sqs_messages_free().
 */
int sqs_parse_receive(const char *json, size_t len, struct sqs_message **out, size_t *n, char *err,
                      size_t errlen);
void sqs_messages_free(struct sqs_message *m, size_t n);

/*
 * The code and message of an error answer: amzn_error_type (the
 * x-amzn-ErrorType header, may be NULL) wins, else the JSON "__type"/"code"
 * (the part after '#'), else an XML <Error><Code> (the query protocol, a
 * proxy).  Both printable and capped.  0 when a code was found, else -1.
 */
int sqs_parse_error(const char *body, size_t len, const char *amzn_error_type, char *code,
                    size_t codesz, char *message, size_t msgsz);
/* The class of an answer: status 0 means none arrived.  A known code wins
 * over the status. */
enum sqs_class sqs_classify(long status, const char *code);
/* What to check for an operator error code ("check the secret access key"),
 * or NULL. */
const char *sqs_hint(const char *code);

/* --- SES receipt notifications ---------------------------------------------- */

#define SQS_RECEIPT_RCPTS_MAX 1000
#define SQS_ADDR_MAX          320 /* bytes of one address: 64 + '@' + 255 */
#define SQS_BUCKET_MAX        256
#define SQS_OBJECT_KEY_MAX    1024 /* = S3_KEY_MAX */
#define SQS_FIELD_MAX         128  /* ids, types, verdicts, timestamps */
#define SQS_ARN_MAX           256
/* mail.messageId of the test notification SES sends when the rule is made */
#define SQS_SES_SETUP_ID "AMAZON_SES_SETUP_NOTIFICATION"

enum sqs_receipt_kind {
	SQS_RECEIPT_RECEIVED, /* a mail stored in S3: fetch it, deliver to recipients */
	SQS_RECEIPT_SETUP,    /* SES's setup notification: delete the message, nothing else */
	SQS_RECEIPT_OTHER,    /* anything else well-formed (SNS subscription confirmation,
	                       * a bounce notification, a non-S3 action): delete, log why */
};

/* "received", "setup", "other" */
const char *sqs_receipt_kind_name(enum sqs_receipt_kind kind);

/*
 * What one notification says.  Strings are "" when absent; recipients is
 * set only for SQS_RECEIPT_RECEIVED.  Free with sqs_receipt_free() (also
 * after a failure: safe on what sqs_parse_receipt() left).
 */
struct sqs_receipt {
	enum sqs_receipt_kind kind;
	char why[SQS_FIELD_MAX];                 /* SETUP/OTHER: what it was, printable */
	int sns;                                 /* it came in an SNS envelope */
	char sns_message_id[SQS_FIELD_MAX];      /* the envelope's MessageId */
	char topic_arn[SQS_ARN_MAX];             /* the envelope's TopicArn */
	char notification_type[SQS_FIELD_MAX];   /* "Received" */
	char action_type[SQS_FIELD_MAX];         /* receipt.action.type: "S3" */
	char bucket[SQS_BUCKET_MAX];             /* receipt.action.bucketName */
	char object_key[SQS_OBJECT_KEY_MAX + 1]; /* receipt.action.objectKey, UTF-8 */
	char **recipients;                       /* receipt.recipients: envelope RCPT TOs */
	size_t nrecipients;                      /* 1..SQS_RECEIPT_RCPTS_MAX when RECEIVED */
	char spam_verdict[SQS_FIELD_MAX];        /* receipt.spamVerdict.status: PASS, FAIL, GRAY, */
	char virus_verdict[SQS_FIELD_MAX];       /*   PROCESSING_FAILED, DISABLED (also spf/dkim/ */
	char spf_verdict[SQS_FIELD_MAX];         /*   dmarc) */
	char dkim_verdict[SQS_FIELD_MAX];
	char dmarc_verdict[SQS_FIELD_MAX];
	char mail_message_id[SQS_FIELD_MAX]; /* mail.messageId (also the S3 key's last part) */
	char source[SQS_ADDR_MAX + 1];       /* mail.source: the envelope MAIL FROM ("" for <>) */
	char timestamp[SQS_FIELD_MAX];       /* mail.timestamp */
};

/*
 * Read one SQS message body: an SNS envelope ({"Type":"Notification",
 * "Message":"<the SES notification as a JSON string>"}, as SNS delivers to
 * SQS) or, with raw message delivery, the SES notification itself.
 *
 * 0 and out->kind: RECEIVED for an S3 action's "Received" notification,
 * with bucket, object_key (valid UTF-8, 1..1024 bytes), at least one
 * recipient and the verdicts; SETUP for SES's setup notification; OTHER
 * for an SNS subscription message, another notificationType, another action
 * type or S3's own test event.
 *
 * -1 and err (printable, one line) when it is neither an SNS envelope nor an
 * SES notification (an S3 event notification is named as such), or when a
 * "Received" S3 notification lacks the bucket, the key or the recipients,
 * or holds a field too long, an address that is not one (empty, control
 * characters, spaces, no '@'), more than SQS_RECEIPT_RCPTS_MAX recipients or
 * a NUL.  Never reads past len; body need not be NUL-terminated.
 */
int sqs_parse_receipt(const char *body, size_t len, struct sqs_receipt *out, char *err,
                      size_t errlen);
void sqs_receipt_free(struct sqs_receipt *r);

#endif
