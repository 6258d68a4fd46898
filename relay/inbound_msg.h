/*
 * inbound_msg.h - rewrite one message that SES received (and stored in S3)
 * so that it can be forwarded through SES, as a stream.
 *
 * What aws-lambda-ses-forwarder's processMessage does, without ever holding
 * the message whole: only the header section is buffered (at most
 * INBOUND_HDR_MAX octets), the body streams through.  Bytes go in in chunks
 * split anywhere; the header section is parsed once it is complete; the
 * caller reads the facts (original sender, recipients, SES verdicts), decides
 * the envelope, then takes the rewritten header block and pushes the body.
 *
 *	m = inbound_msg_new(&opts);
 *	while (inbound_msg_feed(m, chunk, n) == 0)	(-1: inbound_msg_error())
 *		...next chunk...			(EOF: inbound_msg_finish(m))
 *	facts = inbound_msg_facts(m);
 *	inbound_msg_headers(m, out);
 *	for each further chunk: inbound_msg_body(m, chunk, n, out);
 *	inbound_msg_body_end(m, out);
 *	inbound_msg_free(m);
 *
 * The rewrite:
 *   From:	  the first From becomes "NAME" <from_address> (see
 *		  enum inbound_from_style); further From fields are dropped, so
 *		  no unverified From reaches SES.  A message without a From gets
 *		  one (the name is then the SES Return-Path address, if any).
 *   Reply-To:	  kept when present; otherwise added right after From, with
 *		  the original sender (From's address, else the Return-Path).
 *		  Not added when neither has an address.
 *   removed:	  Return-Path, Sender, Message-ID and every DKIM-Signature
 *		  (each with its folded continuation lines).  SES adds a new
 *		  Message-ID.  X-SES-*, Received and everything else stay,
 *		  byte-exact and in order.
 *   Subject:	  with a prefix configured, the first Subject becomes
 *		  "Subject: PREFIX ORIGINAL" (one space between, none added when
 *		  PREFIX ends in white space); a message without a Subject gets
 *		  "Subject: PREFIX".  No check for an existing prefix.
 *
 * Normalisation, in headers and body alike, across chunk boundaries:
 *   - CRLF stays; a lone LF and a lone CR each become CRLF ("\r\r\n" is
 *     two line ends).  The output has CRLF line ends only and, when it is not
 *     empty, ends with CRLF (inbound_msg_body_end adds one if needed).
 *   - NUL octets are dropped and counted (facts.nul_dropped).
 *   - No dot-stuffing: the output is a message, not SMTP DATA.
 * Malformed header lines - no colon, an empty or non-printable field name,
 * or a continuation line with no field before it - are dropped with their
 * continuation lines and counted (facts.malformed).  Lines over 998 octets
 * are passed on unchanged and counted (facts.long_lines): what to do with
 * them is SES's decision.  The header section ends at the first empty line
 * or at EOF; one over INBOUND_HDR_MAX octets (after normalisation) is an
 * error.  Nothing here does I/O or logs.
 */
#ifndef SESRELAY_INBOUND_MSG_H
#define SESRELAY_INBOUND_MSG_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;

#define INBOUND_HDR_MAX     (256 * 1024) /* the header section, CRLFs included */
#define INBOUND_ADDR_MAX    256          /* an address (RFC 5321 path limit) */
#define INBOUND_NAME_MAX    700          /* a display name as re-emitted */
#define INBOUND_TEXT_MAX    998          /* Subject, Message-ID, Date (unfolded) */
#define INBOUND_VERDICT_MAX 31           /* X-SES-*-Verdict values */
#define INBOUND_RCPT_MAX    1000         /* original recipients kept */
#define INBOUND_PREFIX_MAX  64           /* subject_prefix */

enum inbound_from_style {
	INBOUND_FROM_NAME,    /* "Original Name" <from_address> */
	INBOUND_FROM_NAME_AT, /* "Original Name at orig@addr" <from_address> */
};

struct inbound_msg_opts {
	const char *from_address; /* the verified address mail is forwarded from */
	enum inbound_from_style from_style;
	const char *subject_prefix; /* NULL or "": none */
};

/* Where facts.rcpts came from. */
enum inbound_rcpt_source {
	INBOUND_RCPT_NONE,     /* found no recipient anywhere */
	INBOUND_RCPT_RECEIVED, /* the "for" clause of the topmost Received (SES's) */
	INBOUND_RCPT_HEADERS,  /* To and Cc: Bcc recipients are then missing */
};

/*
 * What the header section says.  Strings are NUL-terminated, capped (longer
 * values are cut), unfolded, with control characters made spaces, and ""
 * when absent.  Where a field occurs more than once the first counts: SES
 * prepends its own Return-Path, Received and X-SES-* fields, so the first is
 * SES's and a sender cannot forge a verdict or a recipient below it.
 */
struct inbound_facts {
	char from_addr[INBOUND_ADDR_MAX + 1];   /* From's first address with an '@' */
	char from_name[INBOUND_NAME_MAX + 1];   /* its display name as re-emitted:
	                                         * "quoted", encoded-words as they were,
	                                         * 8-bit text as UTF-8 encoded-words */
	char return_path[INBOUND_ADDR_MAX + 1]; /* the envelope sender; "" also for <> */
	char subject[INBOUND_TEXT_MAX + 1];     /* raw: encoded-words not decoded */
	char message_id[INBOUND_TEXT_MAX + 1];
	char date[INBOUND_TEXT_MAX + 1];
	char spam_verdict[INBOUND_VERDICT_MAX + 1];  /* X-SES-Spam-Verdict: "PASS", "FAIL", ... */
	char virus_verdict[INBOUND_VERDICT_MAX + 1]; /* X-SES-Virus-Verdict */
	int ses_receipt;                             /* an X-SES-Receipt field is present */
	int has_reply_to;

	/* The original recipients: the addresses of the topmost Received's
	 * "for" clause when it has any, else those of every To and Cc field.
	 * Deduplicated (case-insensitively), in order, each with an '@'. */
	enum inbound_rcpt_source rcpt_source;
	char **rcpts;
	size_t nrcpts;
	size_t rcpts_over;  /* further recipients not kept (INBOUND_RCPT_MAX) */
	size_t rcpt_errors; /* To/Cc fields that did not parse (fully) */

	size_t malformed;     /* header lines dropped as malformed */
	size_t long_lines;    /* header lines over 998 octets, kept */
	uint64_t header_size; /* octets of the header section (normalised) */
	/* These two keep counting while the body streams. */
	uint64_t nul_dropped;
	uint64_t body_size; /* octets of body produced (normalised) */
};

/* 0, or -1 with err set, when opts cannot be used (for the config loader):
 * from_address must be a plain addr-spec, the prefix printable ASCII. */
int inbound_msg_opts_check(const struct inbound_msg_opts *o, char *err, size_t errlen);

/* o must pass inbound_msg_opts_check(); its strings are copied. */
struct inbound_msg *inbound_msg_new(const struct inbound_msg_opts *o);
void inbound_msg_free(struct inbound_msg *m);

/*
 * Header phase.  Feed the message in chunks: returns 0 when more is needed,
 * 1 when the header section is complete (bytes of the chunk after it are
 * kept for inbound_msg_headers), -1 when the header section is over
 * INBOUND_HDR_MAX (inbound_msg_error() says so; the object is then dead).
 * inbound_msg_finish() is EOF: the header section is complete, with or
 * without a blank line or a body; it returns 1, or -1 after an error.
 * Calling either after they returned 1 is a bug.
 */
int inbound_msg_feed(struct inbound_msg *m, const void *data, size_t len);
int inbound_msg_finish(struct inbound_msg *m);
const char *inbound_msg_error(const struct inbound_msg *m);

/* Valid once feed or finish returned 1, until inbound_msg_free(). */
const struct inbound_facts *inbound_msg_facts(const struct inbound_msg *m);

/* Append the rewritten header section, the blank line and the body bytes
 * received so far to out.  Once, after feed or finish returned 1. */
void inbound_msg_headers(struct inbound_msg *m, struct evbuffer *out);
/* Body phase: normalise and append body bytes; then end it (a pending CR,
 * a last line without its CRLF) with inbound_msg_body_end(). */
void inbound_msg_body(struct inbound_msg *m, const void *data, size_t len, struct evbuffer *out);
void inbound_msg_body_end(struct inbound_msg *m, struct evbuffer *out);

/* Octets the object holds now (header buffer and body bytes not yet
 * handed out): at most INBOUND_HDR_MAX plus one chunk, about 0 in the body. */
size_t inbound_msg_buffered(const struct inbound_msg *m);

#endif
