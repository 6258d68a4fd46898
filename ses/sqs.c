/*
 * sqs.c - an SQS client for one queue on the relay's loop (ReceiveMessage
 * with long polling, DeleteMessage) and the reader of the SES receipt
 * notifications it carries (see sqs.h).
 *
 * A call is tiny, as in s3.c: sign with the credentials of the moment, hand
 * ses_http the request, turn its answer into a struct sqs_result, report it
 * once.  A failure found before anything is sent (no credentials yet, a
 * number out of range) is reported from a zero timer so that done() never
 * runs inside the call that started it.  Calls are linked into their client
 * so sqs_free() can cancel them all.
 *
 * The JSON protocol always posts to the endpoint's root, so the canonical
 * URI is "/" and SES-style double encoding never matters; the queue travels
 * in the body as QueueUrl.  A long poll holds the connection for up to
 * WaitTimeSeconds: the HTTP timeout is the wait plus the configured timeout.
 *
 * JSON is read with ses_api_json_*() only: no second parser.  Those cut a
 * string that does not fit, and decode \u0000 into a NUL, so every string
 * read here goes through jstr(), which sees both (a cut address or key must
 * never pass for a whole one).  Answers are capped by ses_http first: 8 MiB
 * for a receive, 64 KiB for anything else.
 *
 * Must never: log or return the Authorization header, a secret or a session
 * token, or a message body (only ids and counts reach r->text).
 */
#include <ctype.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "relay/log.h"
#include "relay/util.h"
#include "ses/s3.h"
#include "ses/ses_api.h"
#include "ses/ses_creds.h"
#include "ses/ses_http.h"
#include "ses/sigv4.h"
#include "ses/sqs.h"

#define SQS_SERVICE        "sqs"
#define SQS_CONTENT_TYPE   "application/x-amz-json-1.0"
#define SQS_TARGET_PREFIX  "AmazonSQS."
#define DEFAULT_TIMEOUT_MS 30000L
#define ERROR_BODY_MAX     (64 * 1024)
#define MESSAGE_MAX        200 /* of SQS's message, in a log line */
#define WHAT_URL_MAX       200 /* of the queue URL, in a log line */
#define WHAT_HANDLE_MAX    16  /* of a receipt handle, in a log line */
#define REGION_MAX         32
#define JSTR_SLACK         8 /* > the longest piece a JSON string decodes at once (4) */
#define ELEM_STRING_MAX    (SQS_ADDR_MAX * 6 + 2) /* "\u0041..." for every byte */

/* ========================================================================= */
/* Classes, hints                                                            */
/* ========================================================================= */

const char *sqs_class_name(enum sqs_class cls)
{
	switch (cls) {
	case SQS_OK:
		return "ok";
	case SQS_TRANSIENT:
		return "transient";
	case SQS_OPERATOR:
		return "operator";
	case SQS_REJECTED:
		return "rejected";
	}
	return "unknown";
}

#define HINT_SECRET "check the secret access key (and that no proxy rewrites requests)"
#define HINT_CREDS  "check the credentials"
#define HINT_CLOCK  "fix this host's clock (NTP)"
#define HINT_QUEUE  "check queue_url (account, name and region)"
#define HINT_KMS                                                                                   \
	"allow kms:Decrypt and kms:GenerateDataKey on the queue's KMS key, and check that "        \
	"the key is enabled"

static const struct {
	const char *code;
	enum sqs_class cls;
	const char *hint; /* operator codes only */
} CODES[] = {
    /* SQS or the path to it is busy or broken for now */
    {"InternalError", SQS_TRANSIENT, NULL},
    {"InternalFailure", SQS_TRANSIENT, NULL},
    {"ServiceUnavailable", SQS_TRANSIENT, NULL},
    {"Throttling", SQS_TRANSIENT, NULL},
    {"ThrottlingException", SQS_TRANSIENT, NULL},
    {"RequestThrottled", SQS_TRANSIENT, NULL},
    {"AWS.SimpleQueueService.RequestThrottled", SQS_TRANSIENT, NULL},
    {"OverLimit", SQS_TRANSIENT, NULL}, /* 120,000 messages in flight */
    {"KmsThrottled", SQS_TRANSIENT, NULL},
    {"RequestTimeout", SQS_TRANSIENT, NULL},
    /* temporary credentials ran out: the chain refreshes them */
    {"ExpiredToken", SQS_TRANSIENT, NULL},
    {"ExpiredTokenException", SQS_TRANSIENT, NULL},
    /* the operator must act */
    {"SignatureDoesNotMatch", SQS_OPERATOR, HINT_SECRET},
    {"InvalidSignatureException", SQS_OPERATOR, HINT_SECRET},
    {"InvalidClientTokenId", SQS_OPERATOR, "SQS does not know this access key id: " HINT_CREDS},
    {"UnrecognizedClientException", SQS_OPERATOR,
     "SQS does not know this access key id (or session token): " HINT_CREDS},
    {"IncompleteSignature", SQS_OPERATOR, HINT_CREDS},
    {"MissingAuthenticationToken", SQS_OPERATOR, HINT_CREDS},
    {"MissingAuthenticationTokenException", SQS_OPERATOR, HINT_CREDS},
    {"AccessDenied", SQS_OPERATOR,
     "allow sqs:ReceiveMessage and sqs:DeleteMessage on the queue (IAM and queue policies)"},
    {"AccessDeniedException", SQS_OPERATOR,
     "allow sqs:ReceiveMessage and sqs:DeleteMessage on the queue (IAM and queue policies)"},
    {"QueueDoesNotExist", SQS_OPERATOR, HINT_QUEUE},
    {"AWS.SimpleQueueService.NonExistentQueue", SQS_OPERATOR, HINT_QUEUE},
    {"InvalidAddress", SQS_OPERATOR, HINT_QUEUE},
    {"InvalidSecurity", SQS_OPERATOR, "the queue wants HTTPS: check queue_url"},
    {"RequestExpired", SQS_OPERATOR, HINT_CLOCK},
    {"RequestTimeTooSkewed", SQS_OPERATOR, HINT_CLOCK},
    {"KmsAccessDenied", SQS_OPERATOR, HINT_KMS},
    {"KmsDisabled", SQS_OPERATOR, HINT_KMS},
    {"KmsInvalidState", SQS_OPERATOR, HINT_KMS},
    {"KmsNotFound", SQS_OPERATOR, HINT_KMS},
    {"KmsInvalidKeyUsage", SQS_OPERATOR, HINT_KMS},
    {"KmsOptInRequired", SQS_OPERATOR, "the account must opt in to the queue's KMS key"},
    {"OptInRequired", SQS_OPERATOR, "the AWS account is not subscribed to SQS"},
    /* this request, not SQS, is the problem */
    {"ReceiptHandleIsInvalid", SQS_REJECTED, NULL},
    {"InvalidIdFormat", SQS_REJECTED, NULL},
    {"InvalidParameterValue", SQS_REJECTED, NULL},
    {"UnsupportedOperation", SQS_REJECTED, NULL},
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

enum sqs_class sqs_classify(long status, const char *code)
{
	int i = code_index(code);

	if (status >= 200 && status < 300 && (code == NULL || *code == '\0'))
		return SQS_OK;
	if (i >= 0)
		return CODES[i].cls;
	if (status == 0 || status >= 500 || status == 429)
		return SQS_TRANSIENT;
	if (status == 401 || status == 403)
		return SQS_OPERATOR;
	return SQS_REJECTED;
}

const char *sqs_hint(const char *code)
{
	int i = code_index(code);

	return i >= 0 ? CODES[i].hint : NULL;
}

/* ========================================================================= */
/* Strings out of JSON                                                       */
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
	sanitize(err);
}

enum { JSTR_OK = 0, JSTR_ABSENT = -1, JSTR_LONG = -2, JSTR_NUL = -3 };

/*
 * The string at PATH, decoded into buf (bufsize >= cap + JSTR_SLACK): JSTR_OK
 * with its length in *n, JSTR_ABSENT (missing, not a string, malformed),
 * JSTR_LONG (over cap bytes) or JSTR_NUL (a \u0000 inside).
 *
 * ses_api_json_string() writes a terminator after every piece it stores and
 * stops storing at the first piece that does not fit; bytes past the last
 * terminator keep the 0x01 filled in here.  So the last NUL is the decoded
 * length, and one before it is a decoded NUL.
 */
static int jstr(const char *json, size_t len, const char *path, char *buf, size_t bufsize,
                size_t cap, size_t *n)
{
	const char *end;

	ASSERT(bufsize >= cap + JSTR_SLACK);
	memset(buf, 1, bufsize);
	if (ses_api_json_string(json, len, path, buf, bufsize) == -1) {
		buf[0] = '\0';
		return JSTR_ABSENT;
	}
	end = memrchr(buf, '\0', bufsize);
	ASSERT(end != NULL);
	*n = (size_t)(end - buf);
	if (*n > cap) {
		buf[0] = '\0';
		return JSTR_LONG;
	}
	if (strlen(buf) != *n) {
		buf[0] = '\0';
		return JSTR_NUL;
	}
	return JSTR_OK;
}

/* jstr() into a fixed field of dstsize bytes; "" unless JSTR_OK. */
static int jfield(const char *json, size_t len, const char *path, char *dst, size_t dstsize)
{
	char tmp[SQS_RECEIPT_HANDLE_MAX + 1 + JSTR_SLACK];
	size_t n;
	int rc;

	ASSERT(dstsize > 0 && dstsize - 1 + JSTR_SLACK <= sizeof(tmp));
	dst[0] = '\0';
	rc = jstr(json, len, path, tmp, dstsize - 1 + JSTR_SLACK, dstsize - 1, &n);
	if (rc == JSTR_OK)
		memcpy(dst, tmp, n + 1);
	return rc;
}

/* A string element of an array (its JSON text [elem, +elen)) into dst. */
static int jelem(const char *elem, size_t elen, char *dst, size_t dstsize)
{
	char doc[ELEM_STRING_MAX + 8];
	int n;

	if (elen == 0 || *elem != '"')
		return JSTR_ABSENT;
	if (elen > ELEM_STRING_MAX)
		return JSTR_LONG;
	n = snprintf(doc, sizeof(doc), "{\"v\":%.*s}", (int)elen, elem);
	ASSERT(n > 0 && (size_t)n < sizeof(doc));
	return jfield(doc, (size_t)n, "v", dst, dstsize);
}

static const char *jstr_why(int rc)
{
	switch (rc) {
	case JSTR_ABSENT:
		return "missing or not a string";
	case JSTR_LONG:
		return "too long";
	case JSTR_NUL:
		return "holds a NUL";
	}
	return "fine";
}

static int printable_ascii(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x21 || (unsigned char)*s > 0x7e)
			return 0;
	return 1;
}

static int json_object(const char *json, size_t len)
{
	size_t i = 0;

	while (i < len && strchr(" \t\r\n", json[i]))
		i++;
	return i < len && json[i] == '{';
}

/* ========================================================================= */
/* ReceiveMessage answers, error answers                                     */
/* ========================================================================= */

void sqs_messages_free(struct sqs_message *m, size_t n)
{
	size_t i;

	if (m == NULL)
		return;
	for (i = 0; i < n; i++)
		free(m[i].body);
	free(m);
}

int sqs_receipt_handle_valid(const char *h)
{
	size_t n;

	if (h == NULL || (n = strlen(h)) == 0 || n > SQS_RECEIPT_HANDLE_MAX)
		return 0;
	return printable_ascii(h);
}

/* Lowercase hex MD5 of [p, +n); -1 when this OpenSSL refuses MD5 (FIPS). */
static int md5_hex(const char *p, size_t n, char hex[33])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0, i;

	if (EVP_Digest(p, n, md, &mdlen, EVP_md5(), NULL) != 1 || mdlen != 16)
		return -1;
	for (i = 0; i < 16; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	return 0;
}

static unsigned parse_count(const char *s)
{
	unsigned long v = 0;
	size_t i;

	for (i = 0; s[i]; i++) {
		if (!isdigit((unsigned char)s[i]) || i >= 9)
			return 0;
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	return (unsigned)v;
}

/* One element of Messages into m; NULL, or what is wrong with it. */
static const char *parse_message(const char *e, size_t elen, struct sqs_message *m)
{
	char md5[40], got[33], count[16];
	size_t cap = elen < SQS_BODY_MAX ? elen : SQS_BODY_MAX, n;
	char *body;
	int rc;

	if (jfield(e, elen, "MessageId", m->message_id, sizeof(m->message_id)) != JSTR_OK ||
	    m->message_id[0] == '\0' || !printable_ascii(m->message_id))
		return "a message without a usable MessageId";
	if (jfield(e, elen, "ReceiptHandle", m->receipt_handle, sizeof(m->receipt_handle)) !=
	        JSTR_OK ||
	    !sqs_receipt_handle_valid(m->receipt_handle))
		return "a message without a usable ReceiptHandle";
	body = xmalloc(cap + JSTR_SLACK);
	rc = jstr(e, elen, "Body", body, cap + JSTR_SLACK, cap, &n); /* decoded <= elen */
	if (rc == JSTR_LONG) {
		free(body);
		m->oversize = 1;
	} else if (rc != JSTR_OK) {
		free(body);
		return rc == JSTR_NUL ? "a Body with a NUL" : "a message without a Body";
	} else {
		m->body = body;
		m->body_len = n;
	}
	rc = jfield(e, elen, "MD5OfBody", md5, sizeof(md5));
	if (rc == JSTR_OK && m->body && md5_hex(m->body, m->body_len, got) == 0 &&
	    strcasecmp(md5, got) != 0)
		return "a Body that does not match its MD5OfBody";
	if (rc == JSTR_LONG || rc == JSTR_NUL)
		return "an MD5OfBody that is not one";
	if (jfield(e, elen, "Attributes.ApproximateReceiveCount", count, sizeof(count)) == JSTR_OK)
		m->receive_count = parse_count(count);
	return NULL;
}

int sqs_parse_receive(const char *json, size_t len, struct sqs_message **out, size_t *n, char *err,
                      size_t errlen)
{
	struct sqs_message *m = NULL;
	const char *elem, *why;
	size_t pos = 0, elen, count = 0;
	int rc;

	*out = NULL;
	*n = 0;
	if (json == NULL || len == 0 || memchr(json, '\0', len) != NULL) {
		err_set(err, errlen, "%s",
		        json && len ? "a NUL byte in the answer" : "an empty answer");
		return -1;
	}
	if (!json_object(json, len)) {
		err_set(err, errlen, "not a JSON object");
		return -1;
	}
	/* no "Messages" at all is how SQS says "none" */
	if (memmem(json, len, "\"Messages\"", 10) == NULL)
		return 0;
	while ((rc = ses_api_json_array_next(json, len, "Messages", &pos, &elem, &elen)) == 1) {
		if (count == SQS_MAX_MESSAGES) {
			err_set(err, errlen, "more than %d messages", SQS_MAX_MESSAGES);
			goto fail;
		}
		if (m == NULL)
			m = xcalloc(SQS_MAX_MESSAGES, sizeof(*m));
		why = parse_message(elem, elen, &m[count]);
		count++;
		if (why != NULL) {
			err_set(err, errlen, "message %zu: %s", count, why);
			goto fail;
		}
	}
	if (rc == -1) {
		err_set(err, errlen, "Messages is not a readable array");
		goto fail;
	}
	*out = m;
	*n = count;
	return 0;
fail:
	sqs_messages_free(m, count);
	return -1;
}

/* code = what follows the last '#' of s, up to a ':' ("com.amazonaws.sqs#X"). */
static void code_from(const char *s, char *code, size_t codesz)
{
	const char *hash = strrchr(s, '#');
	size_t n;

	if (hash)
		s = hash + 1;
	n = strcspn(s, ":");
	snprintf(code, codesz, "%.*s", (int)n, s);
}

int sqs_parse_error(const char *body, size_t len, const char *amzn_error_type, char *code,
                    size_t codesz, char *message, size_t msgsz)
{
	static const char *const json_codes[] = {"__type", "code", "Code", NULL};
	static const char *const json_messages[] = {"message", "Message", NULL};
	char tmp[SQS_CODE_MAX * 2];
	const char *const *p;
	int json;

	code[0] = message[0] = '\0';
	if (amzn_error_type && *amzn_error_type)
		code_from(amzn_error_type, code, codesz);
	if (body == NULL || len == 0 || memchr(body, '\0', len) != NULL)
		goto out;
	json = json_object(body, len);
	for (p = json_codes; json && code[0] == '\0' && *p; p++)
		if (jfield(body, len, *p, tmp, sizeof(tmp)) == JSTR_OK)
			code_from(tmp, code, codesz);
	for (p = json_messages; json && message[0] == '\0' && *p; p++)
		if (ses_api_json_string(body, len, *p, message, msgsz) == -1)
			message[0] = '\0';
	if (!json) {
		if (code[0] == '\0' &&
		    ses_api_xml_text(body, len, "Error", "Code", code, codesz) == -1)
			code[0] = '\0';
		if (ses_api_xml_text(body, len, "Error", "Message", message, msgsz) == -1)
			message[0] = '\0';
	}
out:
	sanitize(code);
	sanitize(message);
	return code[0] ? 0 : -1;
}

/* ========================================================================= */
/* SES receipt notifications                                                 */
/* ========================================================================= */

const char *sqs_receipt_kind_name(enum sqs_receipt_kind kind)
{
	switch (kind) {
	case SQS_RECEIPT_RECEIVED:
		return "received";
	case SQS_RECEIPT_SETUP:
		return "setup";
	case SQS_RECEIPT_OTHER:
		return "other";
	}
	return "unknown";
}

void sqs_receipt_free(struct sqs_receipt *r)
{
	size_t i;

	if (r == NULL)
		return;
	for (i = 0; i < r->nrecipients; i++)
		free(r->recipients[i]);
	free(r->recipients);
	r->recipients = NULL;
	r->nrecipients = 0;
}

/* Legacy bucket names may hold upper case and '_'. */
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

/*
 * An envelope address as SES reports it: UTF-8 (SMTPUTF8 allowed), no
 * control characters, spaces or angle brackets, one '@' with text on both
 * sides.  Empty only when allow_empty (the null reverse-path).
 */
static int address_ok(const char *a, int allow_empty)
{
	const char *at;
	size_t i;

	if (*a == '\0')
		return allow_empty;
	for (i = 0; a[i]; i++)
		if ((unsigned char)a[i] <= 0x20 || a[i] == 0x7f || a[i] == '<' || a[i] == '>')
			return 0;
	if ((at = strrchr(a, '@')) == NULL || at == a || at[1] == '\0')
		return 0;
	return s3_key_valid(a) == 0; /* well-formed UTF-8 (and short) */
}

static int ends_with(const char *s, const char *tail)
{
	size_t n = strlen(s), t = strlen(tail);

	return n >= t && strcmp(s + n - t, tail) == 0;
}

static int discard(struct sqs_receipt *out, enum sqs_receipt_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int discard(struct sqs_receipt *out, enum sqs_receipt_kind kind, const char *fmt, ...)
{
	va_list ap;

	out->kind = kind;
	va_start(ap, fmt);
	vsnprintf(out->why, sizeof(out->why), fmt, ap);
	va_end(ap);
	sanitize(out->why);
	return 0;
}

/* receipt.recipients into out; 0, or -1 with err. */
static int read_recipients(const char *doc, size_t len, struct sqs_receipt *out, char *err,
                           size_t errlen)
{
	char addr[SQS_ADDR_MAX + 1];
	const char *elem;
	size_t pos = 0, elen;
	int rc, src;

	while ((rc = ses_api_json_array_next(doc, len, "receipt.recipients", &pos, &elem, &elen)) ==
	       1) {
		if (out->nrecipients == SQS_RECEIPT_RCPTS_MAX) {
			err_set(err, errlen, "more than %d recipients", SQS_RECEIPT_RCPTS_MAX);
			return -1;
		}
		if ((src = jelem(elem, elen, addr, sizeof(addr))) != JSTR_OK) {
			err_set(err, errlen, "recipient %zu %s", out->nrecipients + 1,
			        src == JSTR_ABSENT ? "is not a string" : jstr_why(src));
			return -1;
		}
		if (!address_ok(addr, 0)) {
			err_set(err, errlen, "recipient %zu is not an address",
			        out->nrecipients + 1);
			return -1;
		}
		if (out->nrecipients == 0)
			out->recipients = xcalloc(SQS_RECEIPT_RCPTS_MAX, sizeof(*out->recipients));
		out->recipients[out->nrecipients++] = xstrdup(addr);
	}
	if (rc == -1) {
		err_set(err, errlen, "receipt.recipients is missing or not an array");
		return -1;
	}
	if (out->nrecipients == 0) {
		err_set(err, errlen, "receipt.recipients is empty");
		return -1;
	}
	return 0;
}

/* Printable fields that only go to logs and comparisons: cut is an error,
 * odd bytes are masked. */
static int read_text(const char *doc, size_t len, const char *path, char *dst, size_t size,
                     char *err, size_t errlen)
{
	int rc = jfield(doc, len, path, dst, size);

	if (rc == JSTR_LONG || rc == JSTR_NUL) {
		err_set(err, errlen, "%s %s", path, jstr_why(rc));
		return -1;
	}
	sanitize(dst);
	return 0;
}

/* The SES notification itself (unwrapped). */
static int parse_ses(const char *doc, size_t len, struct sqs_receipt *out, char *err, size_t errlen)
{
	static const struct {
		const char *path;
		size_t off;
	} texts[] = {
	    {"mail.messageId", offsetof(struct sqs_receipt, mail_message_id)},
	    {"mail.timestamp", offsetof(struct sqs_receipt, timestamp)},
	    {"receipt.action.type", offsetof(struct sqs_receipt, action_type)},
	    {"receipt.spamVerdict.status", offsetof(struct sqs_receipt, spam_verdict)},
	    {"receipt.virusVerdict.status", offsetof(struct sqs_receipt, virus_verdict)},
	    {"receipt.spfVerdict.status", offsetof(struct sqs_receipt, spf_verdict)},
	    {"receipt.dkimVerdict.status", offsetof(struct sqs_receipt, dkim_verdict)},
	    {"receipt.dmarcVerdict.status", offsetof(struct sqs_receipt, dmarc_verdict)},
	};
	char event[SQS_FIELD_MAX];
	const char *elem;
	size_t pos = 0, elen, i;
	int rc, rb, rk, rs;

	if (!json_object(doc, len)) {
		err_set(err, errlen, "not a JSON object");
		return -1;
	}
	rc = jfield(doc, len, "notificationType", out->notification_type,
	            sizeof(out->notification_type));
	if (rc == JSTR_ABSENT) {
		if (jfield(doc, len, "Event", event, sizeof(event)) == JSTR_OK &&
		    strcmp(event, "s3:TestEvent") == 0)
			return discard(out, SQS_RECEIPT_OTHER, "S3's test event");
		if (ses_api_json_array_next(doc, len, "Records", &pos, &elem, &elen) >= 0) {
			err_set(err, errlen,
			        "an S3 event notification, not SES's: subscribe the queue to the "
			        "receipt rule's SNS topic instead");
			return -1;
		}
		err_set(err, errlen, "neither an SNS envelope nor an SES notification");
		return -1;
	}
	if (rc != JSTR_OK) {
		err_set(err, errlen, "notificationType %s", jstr_why(rc));
		return -1;
	}
	sanitize(out->notification_type);
	if (strcmp(out->notification_type, "Received") != 0)
		return discard(out, SQS_RECEIPT_OTHER, "notificationType %s",
		               out->notification_type);
	for (i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
		if (read_text(doc, len, texts[i].path, (char *)out + texts[i].off, SQS_FIELD_MAX,
		              err, errlen) == -1)
			return -1;
	rb = jfield(doc, len, "receipt.action.bucketName", out->bucket, sizeof(out->bucket));
	rk = jfield(doc, len, "receipt.action.objectKey", out->object_key, sizeof(out->object_key));
	rs = jfield(doc, len, "mail.source", out->source, sizeof(out->source));

	if (strcmp(out->mail_message_id, SQS_SES_SETUP_ID) == 0 ||
	    (rk == JSTR_OK && ends_with(out->object_key, SQS_SES_SETUP_ID)))
		return discard(out, SQS_RECEIPT_SETUP, "SES's setup notification");
	/* SES always names the action: without one the document is broken
	 * (or cut, or nested past the reader's depth), not someone else's */
	if (out->action_type[0] == '\0') {
		err_set(err, errlen, "receipt.action.type missing or unreadable");
		return -1;
	}
	if (strcmp(out->action_type, "S3") != 0)
		return discard(out, SQS_RECEIPT_OTHER, "receipt action %s, not S3",
		               out->action_type);

	if (rb != JSTR_OK || !bucket_ok(out->bucket)) {
		err_set(err, errlen, "receipt.action.bucketName %s",
		        rb == JSTR_OK ? "is not a bucket name" : jstr_why(rb));
		return -1;
	}
	if (rk != JSTR_OK || s3_key_valid(out->object_key) == -1) {
		err_set(err, errlen, "receipt.action.objectKey %s",
		        rk == JSTR_OK ? "is empty or not UTF-8" : jstr_why(rk));
		return -1;
	}
	if (rs == JSTR_LONG || rs == JSTR_NUL || !address_ok(out->source, 1)) {
		err_set(err, errlen, "mail.source %s",
		        rs == JSTR_OK ? "is not an address" : jstr_why(rs));
		return -1;
	}
	if (read_recipients(doc, len, out, err, errlen) == -1)
		return -1;
	out->kind = SQS_RECEIPT_RECEIVED;
	return 0;
}

/* The SNS envelope: pass its Message (a JSON string, decoded) to parse_ses(). */
static int parse_sns(const char *body, size_t len, const char *type, struct sqs_receipt *out,
                     char *err, size_t errlen)
{
	char *inner;
	size_t n;
	int rc;

	out->sns = 1;
	if (read_text(body, len, "MessageId", out->sns_message_id, sizeof(out->sns_message_id), err,
	              errlen) == -1 ||
	    read_text(body, len, "TopicArn", out->topic_arn, sizeof(out->topic_arn), err, errlen) ==
	        -1)
		return -1;
	if (strcmp(type, "Notification") != 0)
		return discard(out, SQS_RECEIPT_OTHER, "SNS %s", type);
	/* a decoded string is never longer than its escaped form */
	inner = xmalloc(len + JSTR_SLACK);
	rc = jstr(body, len, "Message", inner, len + JSTR_SLACK, len, &n);
	if (rc != JSTR_OK) {
		err_set(err, errlen, "the SNS Message %s", jstr_why(rc));
		free(inner);
		return -1;
	}
	rc = parse_ses(inner, n, out, err, errlen);
	free(inner);
	return rc;
}

int sqs_parse_receipt(const char *body, size_t len, struct sqs_receipt *out, char *err,
                      size_t errlen)
{
	char type[SQS_FIELD_MAX];
	int rc;

	memset(out, 0, sizeof(*out));
	out->kind = SQS_RECEIPT_OTHER;
	if (errlen)
		err[0] = '\0';
	if (body == NULL || len == 0 || memchr(body, '\0', len) != NULL) {
		err_set(err, errlen, "%s",
		        body && len ? "a NUL byte in the body" : "an empty body");
		return -1;
	}
	if (!json_object(body, len)) {
		err_set(err, errlen, "not a JSON object");
		return -1;
	}
	rc = jfield(body, len, "Type", type, sizeof(type));
	if (rc == JSTR_OK) {
		sanitize(type);
		rc = parse_sns(body, len, type, out, err, errlen);
	} else if (rc == JSTR_ABSENT)
		rc = parse_ses(body, len, out, err, errlen);
	else {
		err_set(err, errlen, "the SNS Type %s", jstr_why(rc));
		rc = -1;
	}
	if (rc == -1)
		sqs_receipt_free(out);
	return rc;
}

/* ========================================================================= */
/* Request bodies, signing                                                   */
/* ========================================================================= */

/* The evbuffer's bytes as a C string, and the evbuffer freed. */
static char *evbuffer_string(struct evbuffer *b)
{
	size_t n = evbuffer_get_length(b);
	char *s = xmalloc(n + 1);

	if (evbuffer_remove(b, s, n) != (int)n)
		fatalx("evbuffer_remove failed");
	s[n] = '\0';
	evbuffer_free(b);
	return s;
}

static struct evbuffer *body_start(const char *queue_url)
{
	struct evbuffer *b = evbuffer_new();

	if (b == NULL)
		fatalx("evbuffer_new failed");
	evbuffer_add_printf(b, "{\"QueueUrl\":\"");
	ses_api_json_escape(b, queue_url);
	evbuffer_add_printf(b, "\"");
	return b;
}

char *sqs_receive_body(const char *queue_url, unsigned max_messages, unsigned wait_seconds,
                       int visibility_timeout)
{
	struct evbuffer *b = body_start(queue_url);

	evbuffer_add_printf(b, ",\"MaxNumberOfMessages\":%u,\"WaitTimeSeconds\":%u", max_messages,
	                    wait_seconds);
	if (visibility_timeout >= 0)
		evbuffer_add_printf(b, ",\"VisibilityTimeout\":%d", visibility_timeout);
	evbuffer_add_printf(b, ",\"MessageSystemAttributeNames\":[\"ApproximateReceiveCount\"]}");
	return evbuffer_string(b);
}

char *sqs_delete_body(const char *queue_url, const char *receipt_handle)
{
	struct evbuffer *b = body_start(queue_url);

	evbuffer_add_printf(b, ",\"ReceiptHandle\":\"");
	ses_api_json_escape(b, receipt_handle);
	evbuffer_add_printf(b, "\"}");
	return evbuffer_string(b);
}

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

/* ========================================================================= */
/* The client                                                                */
/* ========================================================================= */

enum sqs_op { OP_RECEIVE, OP_DELETE };

static const char *const OP_NAMES[] = {"ReceiveMessage", "DeleteMessage"};

struct sqs {
	struct event_base *base;
	struct ses_http *http;
	struct ses_creds *creds;
	char *queue_url;
	char *region;
	char *base_url; /* "https://sqs.eu-west-1.amazonaws.com", "http://127.0.0.1:9324" */
	char *host;     /* the Host header: base_url's authority */
	long timeout_ms;
	struct sqs_call *calls;
	size_t ncalls;
};

struct sqs_call {
	struct sqs_call *next, *prev;
	struct sqs *q;
	enum sqs_op op;
	struct ses_http_call *http;
	struct event *later; /* reports a failure found up front */
	sqs_done done;
	void *arg;
	int reporting; /* done() is running: the handle is spent */
	char *what;    /* "ReceiveMessage https://sqs.../123/inbound" */
	struct sqs_result early;
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

/*
 * "http(s)://authority[/path]": the scheme and authority into *base_url,
 * the authority into *host, where the path starts into *path (NULL: none).
 * -1 when it is not such a URL (userinfo, query, fragment, spaces...).
 */
static int split_url(const char *u, char **base_url, char **host, const char **path)
{
	size_t skip, i, alen;

	if (strncasecmp(u, "https://", 8) == 0)
		skip = 8;
	else if (strncasecmp(u, "http://", 7) == 0)
		skip = 7;
	else
		return -1;
	for (i = skip; u[i]; i++)
		if (strchr("?#@ ", u[i]) || (unsigned char)u[i] < 0x21 ||
		    (unsigned char)u[i] >= 0x7f)
			return -1;
	alen = strcspn(u + skip, "/");
	if (alen == 0)
		return -1;
	*path = u[skip + alen] ? u + skip + alen : NULL;
	*base_url = xstrndup(u, skip + alen);
	*host = xstrndup(u + skip, alen);
	return 0;
}

/* The region in an SQS host name: sqs.REGION.amazonaws.com, a VPC endpoint's
 * ...sqs.REGION.vpce.amazonaws.com, or the legacy REGION.queue.amazonaws.com. */
static char *region_from_host(const char *host)
{
	const char *p = NULL, *q;
	char *r;

	if (strncasecmp(host, "sqs.", 4) == 0)
		p = host + 4;
	else if ((q = strcasestr(host, ".sqs.")) != NULL)
		p = q + 5;
	else if ((q = strcasestr(host, ".queue.amazonaws.com")) != NULL && q > host) {
		r = xstrndup(host, (size_t)(q - host));
		goto check;
	}
	if (p == NULL)
		return NULL;
	r = xstrndup(p, strcspn(p, ".:"));
check:
	if (!region_ok(r)) {
		free(r);
		return NULL;
	}
	return r;
}

struct sqs *sqs_new(struct event_base *base, struct ses_http *http, struct ses_creds *creds,
                    const struct sqs_config *cfg, char *err, size_t errlen)
{
	const char *ep = cfg->endpoint && *cfg->endpoint ? cfg->endpoint : NULL, *path = NULL;
	char *qbase = NULL, *qhost = NULL;
	struct sqs *q;

	if (cfg->queue_url == NULL || split_url(cfg->queue_url, &qbase, &qhost, &path) == -1 ||
	    path == NULL || path[1] == '\0') {
		err_set(err, errlen,
		        "SQS queue URL \"%.*s\" is not http(s)://host[:port]/ACCOUNT/NAME",
		        WHAT_URL_MAX, cfg->queue_url ? cfg->queue_url : "");
		free(qbase);
		free(qhost);
		return NULL;
	}
	q = xcalloc(1, sizeof(*q));
	q->base = base;
	q->http = http;
	q->creds = creds;
	q->queue_url = xstrdup(cfg->queue_url);
	q->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS;
	if (cfg->region && *cfg->region)
		q->region = region_ok(cfg->region) ? xstrdup(cfg->region) : NULL;
	else
		q->region = region_from_host(qhost);
	if (q->region == NULL) {
		err_set(err, errlen,
		        cfg->region && *cfg->region
		            ? "SQS region \"%s\" is not a region name"
		            : "no region in the SQS queue URL's host %s: set one",
		        cfg->region && *cfg->region ? cfg->region : qhost);
		goto fail;
	}
	if (ep == NULL) {
		q->base_url = qbase;
		q->host = qhost;
		qbase = qhost = NULL;
	} else if (split_url(ep, &q->base_url, &q->host, &path) == -1 ||
	           (path && strspn(path, "/") != strlen(path))) {
		err_set(err, errlen, "SQS endpoint \"%.*s\" is not http(s)://host[:port]",
		        WHAT_URL_MAX, ep);
		goto fail;
	}
	free(qbase);
	free(qhost);
	return q;
fail:
	free(qbase);
	free(qhost);
	sqs_free(q);
	return NULL;
}

const char *sqs_name(const struct sqs *q)
{
	return q->queue_url;
}

const char *sqs_region(const struct sqs *q)
{
	return q->region;
}

size_t sqs_in_flight(const struct sqs *q)
{
	return q->ncalls;
}

struct curl_slist *sqs_request_headers(const struct sqs *q, const char *op, const char *body,
                                       size_t body_len, const struct sigv4_credentials *cr,
                                       time_t now, char **url, const char **err)
{
	char amz_date[SIGV4_AMZ_DATE_SIZE], hash[SIGV4_HEX_SIZE];
	char *target = xasprintf("%s%s", SQS_TARGET_PREFIX, op);
	struct sigv4_header hs[5];
	struct sigv4_request req;
	struct sigv4_signed s;
	struct curl_slist *l = NULL;
	size_t n = 0, i;

	*url = NULL;
	memset(&s, 0, sizeof(s));
	if (sigv4_amz_date(now, amz_date) == -1) {
		*err = "the clock is out of range";
		free(target);
		return NULL;
	}
	sigv4_sha256_hex(body, body_len, hash);
	hs[n++] = (struct sigv4_header){"Host", q->host};
	hs[n++] = (struct sigv4_header){"X-Amz-Date", amz_date};
	hs[n++] = (struct sigv4_header){"X-Amz-Target", target};
	hs[n++] = (struct sigv4_header){"Content-Type", SQS_CONTENT_TYPE};
	if (cr->session_token && *cr->session_token)
		hs[n++] = (struct sigv4_header){"X-Amz-Security-Token", cr->session_token};
	memset(&req, 0, sizeof(req));
	req.method = "POST";
	req.path = "/";
	req.headers = hs;
	req.nheaders = n;
	req.payload_hash = hash;
	req.region = q->region;
	req.service = SQS_SERVICE;
	req.amz_date = amz_date;
	if (sigv4_sign(&req, cr, &s) == -1) {
		*err = s.error ? s.error : "signing failed";
		sigv4_signed_free(&s);
		free(target);
		return NULL;
	}
	for (i = 0; i < n; i++)
		l = slist_add(l, hs[i].name, hs[i].value);
	l = slist_add(l, "Authorization", s.authorization);
	sigv4_signed_free(&s);
	free(target);
	*url = xasprintf("%s/", q->base_url);
	return l;
}

/* --- calls ----------------------------------------------------------------- */

static void call_unlink(struct sqs_call *c)
{
	struct sqs *q = c->q;

	if (c->prev)
		c->prev->next = c->next;
	else
		q->calls = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->next = c->prev = NULL;
	q->ncalls--;
}

/* Never touches c->q: the client may be gone (freed from done()). */
static void call_free(struct sqs_call *c)
{
	if (c->http)
		ses_http_cancel(c->http);
	if (c->later)
		event_free(c->later);
	free(c->what);
	free(c);
}

static struct sqs_call *call_new(struct sqs *q, enum sqs_op op, const char *handle, sqs_done done,
                                 void *arg)
{
	struct sqs_call *c = xcalloc(1, sizeof(*c));
	size_t ulen = strlen(q->queue_url), hlen = handle ? strlen(handle) : 0;

	c->q = q;
	c->op = op;
	c->done = done;
	c->arg = arg;
	c->what =
	    xasprintf("%s %.*s%s%s%.*s%s", OP_NAMES[op], WHAT_URL_MAX, q->queue_url,
	              ulen > WHAT_URL_MAX ? "..." : "", handle ? " handle=" : "", WHAT_HANDLE_MAX,
	              handle ? handle : "", hlen > WHAT_HANDLE_MAX ? "..." : "");
	sanitize(c->what);
	c->next = q->calls;
	if (q->calls)
		q->calls->prev = c;
	q->calls = c;
	q->ncalls++;
	return c;
}

/* r->text = "WHAT: " + fmt; a line cut at SQS_TEXT_MAX ends in "...". */
static void result_text(struct sqs_result *r, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void result_text(struct sqs_result *r, const char *what, const char *fmt, ...)
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

static void report(struct sqs_call *c, struct sqs_result *r)
{
	c->reporting = 1;
	if (r->cls == SQS_OK)
		log_debug("%s", r->text);
	c->done(c->arg, r);
}

static void later_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sqs_call *c = arg;

	call_unlink(c);
	report(c, &c->early);
	call_free(c);
}

/* Report cls/text from the loop, as if an answer had come. */
static struct sqs_call *fail_later(struct sqs_call *c, enum sqs_class cls, const char *text)
{
	static const struct timeval now = {0, 0};

	c->early.cls = cls;
	result_text(&c->early, c->what, "%s", text);
	if ((c->later = evtimer_new(c->q->base, later_cb, c)) == NULL)
		fatalx("evtimer_new failed");
	evtimer_add(c->later, &now);
	return c;
}

static void result_error(struct sqs_call *c, const struct ses_http_response *hr,
                         struct sqs_result *r)
{
	char code[SQS_CODE_MAX], message[MESSAGE_MAX + 1];
	const char *hint;

	sqs_parse_error(hr->body, hr->body_len, hr->amzn_error_type, code, sizeof(code), message,
	                sizeof(message));
	r->cls = sqs_classify(r->status, code);
	if (r->cls == SQS_OK) /* a 2xx with an error code: not an answer we know */
		r->cls = SQS_TRANSIENT;
	snprintf(r->code, sizeof(r->code), "%s", code);
	hint = sqs_hint(code);
	result_text(r, c->what, "%ld %s%s%s%s%s%s%s%s", r->status, *code ? code : "error",
	            *message ? ": " : "", message, hint ? " - " : "", hint ? hint : "",
	            r->request_id[0] ? " [request-id " : "", r->request_id,
	            r->request_id[0] ? "]" : "");
	if ((strcmp(code, "ExpiredToken") == 0 || strcmp(code, "ExpiredTokenException") == 0) &&
	    c->q->creds)
		ses_creds_refresh(c->q->creds);
}

static void result_ok(struct sqs_call *c, const struct ses_http_response *hr, struct sqs_result *r,
                      struct sqs_message **msgs)
{
	char err[160];
	size_t i, big = 0;

	r->cls = SQS_OK;
	if (c->op == OP_DELETE) {
		result_text(r, c->what, "%ld", r->status);
		return;
	}
	/* what SQS handed out comes back after the visibility timeout: retry */
	if (hr->truncated) {
		r->cls = SQS_TRANSIENT;
		result_text(r, c->what, "%ld: an answer over %d bytes", r->status,
		            SQS_RECEIVE_MAX_BODY);
		return;
	}
	if (sqs_parse_receive(hr->body, hr->body_len, msgs, &r->nmessages, err, sizeof(err)) ==
	    -1) {
		r->cls = SQS_TRANSIENT;
		result_text(r, c->what, "%ld: unreadable answer: %s", r->status, err);
		return;
	}
	r->messages = *msgs;
	for (i = 0; i < r->nmessages; i++)
		big += (size_t)r->messages[i].oversize;
	if (big)
		result_text(r, c->what, "%ld, %zu message%s, %zu oversize (%.1f s)", r->status,
		            r->nmessages, r->nmessages == 1 ? "" : "s", big, hr->seconds);
	else
		result_text(r, c->what, "%ld, %zu message%s (%.1f s)", r->status, r->nmessages,
		            r->nmessages == 1 ? "" : "s", hr->seconds);
}

static void http_done(void *arg, const struct ses_http_response *hr)
{
	struct sqs_call *c = arg;
	struct sqs_message *msgs = NULL;
	struct sqs_result r;

	c->http = NULL; /* ses_http frees it after this returns */
	memset(&r, 0, sizeof(r));
	if (hr->request_id) {
		snprintf(r.request_id, sizeof(r.request_id), "%s", hr->request_id);
		sanitize(r.request_id);
	}
	if (!hr->ok) {
		r.cls = SQS_TRANSIENT;
		result_text(&r, c->what, "no answer from %s: %s", c->q->base_url,
		            hr->error ? hr->error : "unknown error");
	} else {
		r.status = hr->status;
		if (hr->status >= 200 && hr->status < 300)
			result_ok(c, hr, &r, &msgs);
		else
			result_error(c, hr, &r);
	}
	call_unlink(c);
	report(c, &r);
	sqs_messages_free(msgs, r.nmessages);
	call_free(c);
}

static struct sqs_call *call_send(struct sqs_call *c, char *body, long timeout_ms,
                                  size_t max_response)
{
	const struct sigv4_credentials *cr = ses_creds_get(c->q->creds);
	struct ses_http_request req;
	struct curl_slist *h;
	const char *err = NULL;
	char *url = NULL, *msg;

	if (cr == NULL) {
		msg =
		    xasprintf("no AWS credentials now (source: %s)", ses_creds_source(c->q->creds));
		fail_later(c, SQS_TRANSIENT, msg);
		free(msg);
		free(body);
		return c;
	}
	h = sqs_request_headers(c->q, OP_NAMES[c->op], body, strlen(body), cr, time(NULL), &url,
	                        &err);
	if (h == NULL) {
		msg = xasprintf("cannot sign the request: %s", err);
		fail_later(c, SQS_OPERATOR, msg);
		free(msg);
		free(body);
		return c;
	}
	memset(&req, 0, sizeof(req));
	req.method = "POST";
	req.url = url;
	req.headers = h;
	req.body = body;
	req.body_len = strlen(body);
	req.timeout_ms = timeout_ms;
	req.max_response = max_response;
	req.done = http_done;
	req.arg = c;
	log_debug("%s: POST %s", c->what, url);
	c->http = ses_http_send(c->q->http, &req);
	free(url);
	free(body);
	return c;
}

struct sqs_call *sqs_receive(struct sqs *q, unsigned max_messages, unsigned wait_seconds,
                             int visibility_timeout, sqs_done done, void *arg)
{
	struct sqs_call *c = call_new(q, OP_RECEIVE, NULL, done, arg);

	if (max_messages == 0)
		max_messages = SQS_MAX_MESSAGES;
	if (max_messages > SQS_MAX_MESSAGES)
		return fail_later(c, SQS_REJECTED, "MaxNumberOfMessages over 10");
	if (wait_seconds > SQS_MAX_WAIT)
		return fail_later(c, SQS_REJECTED, "WaitTimeSeconds over 20");
	if (visibility_timeout < -1 || visibility_timeout > SQS_MAX_VISIBILITY)
		return fail_later(c, SQS_REJECTED, "VisibilityTimeout not in 0..43200");
	/* the long poll itself must not look like a stalled server */
	return call_send(
	    c, sqs_receive_body(q->queue_url, max_messages, wait_seconds, visibility_timeout),
	    q->timeout_ms + (long)wait_seconds * 1000, SQS_RECEIVE_MAX_BODY);
}

struct sqs_call *sqs_delete(struct sqs *q, const char *receipt_handle, sqs_done done, void *arg)
{
	int ok = sqs_receipt_handle_valid(receipt_handle);
	struct sqs_call *c = call_new(q, OP_DELETE, ok ? receipt_handle : NULL, done, arg);

	if (!ok)
		return fail_later(c, SQS_REJECTED,
		                  "not a receipt handle: empty, over 2048 bytes or not printable");
	return call_send(c, sqs_delete_body(q->queue_url, receipt_handle), q->timeout_ms,
	                 ERROR_BODY_MAX);
}

void sqs_cancel(struct sqs_call *c)
{
	if (c == NULL || c->reporting)
		return;
	call_unlink(c);
	call_free(c);
}

void sqs_free(struct sqs *q)
{
	if (q == NULL)
		return;
	while (q->calls) {
		struct sqs_call *c = q->calls;
		call_unlink(c);
		call_free(c);
	}
	free(q->queue_url);
	free(q->region);
	free(q->base_url);
	free(q->host);
	free(q);
}
