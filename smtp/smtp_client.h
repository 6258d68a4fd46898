/*
 * smtp_client.h - the "smtp" transport: deliveries to Amazon SES's SMTP
 * interface (email-smtp.REGION.amazonaws.com) over a pool of reused,
 * authenticated TLS connections.
 *
 * Owns: the client side of SMTP (RFC 5321, STARTTLS RFC 3207, AUTH PLAIN and
 * LOGIN RFC 4954, PIPELINING RFC 2920, SIZE RFC 1870), TLS with certificate
 * and host name verification, the connection pool (at most conf->concurrency
 * connections, closed after ~8 s idle or 100 messages), connect backoff, and
 * reading SES's replies into one outcome class per recipient
 * (relay/transport.h, SES-NOTES.md "What to retry").
 *
 * Must never: hold a whole message in memory (it is streamed from the queue
 * file through the dot-stuffing encoder below, paced by the output buffer),
 * block the loop (names are resolved with evdns), log the SMTP password, the
 * secret key or an AUTH payload, run a delivery's done() inside send() or
 * after free(), or parse a byte of a reply before it is capped.
 *
 * The lower half of this header is the pure part (replies, outcome classes,
 * EHLO keywords, dot-stuffing), exported for tests/unit/test_smtp_client.c.
 */
#ifndef SESRELAY_SMTP_CLIENT_H
#define SESRELAY_SMTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "relay/transport.h"

struct conf;
struct event_base;
struct ses_creds;

#define SMTP_CLIENT_DEFAULT_MAX_SIZE 41943040ULL /* SES: 40 MiB */

/*
 * The transport, named "ses-smtp[HOST]" (HOST: [ses] smtp_host, default
 * email-smtp.REGION.amazonaws.com; port smtp_port, default 587).  Copies what
 * it needs from conf, so conf may be freed after; creds must outlive it (free
 * the transport first) and must be started by the caller (ses_creds_start).
 * The AUTH user is smtp_username or the access key id, the password
 * smtp_password or the one derived from the secret key (long-term keys only).
 * Returns NULL, with an error logged, when no host can be named (no
 * smtp_host and no region), the ca_file cannot be loaded, or the
 * configuration set name cannot go in a header.
 */
struct transport *smtp_client_transport_new(struct event_base *base, struct ses_creds *creds,
                                            const struct conf *conf);

/* --- replies (pure; exported for tests) --------------------------------------- */

#define SMTP_CLIENT_LINE_MAX  1000 /* octets per reply line, CRLF included */
#define SMTP_CLIENT_LINES_MAX 32   /* lines per reply */
#define SMTP_CLIENT_TEXT_MAX  2048 /* reply text kept (the rest is cut, not refused) */

struct smtp_client_reply {
	int code;          /* 200..599 (1xx is accepted too, and never expected) */
	char enhanced[16]; /* "5.7.1" when the first line carries one, else "" */
	/* Each line's text after the code, separator and enhanced code, lines
	 * joined with '\n'; control and 8-bit octets replaced, capped. */
	char text[SMTP_CLIENT_TEXT_MAX];
	size_t nlines;
};

/*
 * Parse one reply at the start of buf[0..len).  Returns 1 with *r and
 * *consumed (octets of the whole reply), 0 when more input is needed, or -1
 * when it is malformed: a line not "DDD", "DDD text" or "DDD-text", codes
 * that differ between lines, a line over SMTP_CLIENT_LINE_MAX, more than
 * SMTP_CLIENT_LINES_MAX lines.  *err (may be NULL) then says which.  Lines
 * end with CRLF; a bare LF is tolerated.
 */
int smtp_client_parse_reply(const char *buf, size_t len, struct smtp_client_reply *r,
                            size_t *consumed, const char **err);

/* "554 5.7.1 text of line one text of line two" on one line, capped. */
void smtp_client_reply_format(const struct smtp_client_reply *r, char *out, size_t size);

/* SES ends a message with "250 Ok <MessageId>": the id, or -1. */
int smtp_client_message_id(const struct smtp_client_reply *r, char *out, size_t size);

/* Which command a reply answers, for smtp_client_classify(). */
enum smtp_client_stage {
	SMTP_CLIENT_GREETING,
	SMTP_CLIENT_EHLO,
	SMTP_CLIENT_STARTTLS,
	SMTP_CLIENT_AUTH,
	SMTP_CLIENT_RSET,
	SMTP_CLIENT_MAIL,
	SMTP_CLIENT_RCPT,
	SMTP_CLIENT_DATA, /* the DATA command (354 expected) */
	SMTP_CLIENT_DOT,  /* the end of the message data */
};

/*
 * The outcome class of a reply (SES-NOTES.md "What to retry"); 2xx and 3xx
 * are DELIVERY_SENT (positive).  In order:
 *   "Throttling"/"rate exceeded" text: THROTTLED, or QUOTA when it is the
 *     daily quota ("454 Throttling failure: Daily message quota exceeded")
 *   530, 534, 535, 538, "Access denied", sending paused/suspended: OPERATOR
 *   5xx to AUTH or STARTTLS: OPERATOR (nothing a retry fixes)
 *   4xx (421, 451, 454, ...): DEFER
 *   5xx to the greeting, EHLO or RSET (not about a message): DEFER
 *   500/502/503/504 (a protocol mismatch, not the message): DEFER
 *   other 5xx: BOUNCE
 */
enum delivery_status smtp_client_classify(enum smtp_client_stage stage, int code, const char *text);

/* --- EHLO keywords ---------------------------------------------------------- */

struct smtp_client_ehlo {
	int has_size;
	uint64_t size; /* 0: no limit given */
	int pipelining;
	int eightbitmime;
	int starttls;
	int enhancedstatuscodes;
	int auth; /* AUTH offered at all */
	int auth_plain;
	int auth_login;
};

/* Read a 250 reply to EHLO (the first line is the server's name). */
void smtp_client_parse_ehlo(const struct smtp_client_reply *r, struct smtp_client_ehlo *out);

/* --- dot-stuffing (RFC 5321 4.5.2) ------------------------------------------ */

/*
 * Encodes a message for DATA in pieces of any size: a line starting with '.'
 * gets another '.', and line ends are made CRLF (a bare CR or LF, which the
 * spool never holds, becomes CRLF rather than reach SES: no smuggling).
 */
struct smtp_client_dotstuff {
	int bol; /* at the beginning of a line */
	int cr;  /* the last input octet was a CR (its LF may come next call) */
};

/* Output room one call may need for len input octets. */
#define SMTP_CLIENT_DOTSTUFF_MAX(len) (2 * (len) + 2)
/* Room for smtp_client_dotstuff_end(). */
#define SMTP_CLIENT_DOTSTUFF_END_MAX 8

void smtp_client_dotstuff_init(struct smtp_client_dotstuff *st);
/* Encode in[0..len) into out (SMTP_CLIENT_DOTSTUFF_MAX(len) octets); returns
 * the octets written. */
size_t smtp_client_dotstuff(struct smtp_client_dotstuff *st, const char *in, size_t len, char *out);
/* The end: CRLF if the last line is open, then ".\r\n".  Returns octets. */
size_t smtp_client_dotstuff_end(struct smtp_client_dotstuff *st, char *out);

#endif
