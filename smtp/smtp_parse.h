/*
 * smtp_parse.h - pure parsing of SMTP command lines (RFC 5321, 1870, 6152).
 *
 * No I/O, no session state: a line goes in, a verb, a path and parameters
 * come out, or an SMTP reply explaining what is wrong.  Shared by the server
 * session, the fuzz target and the unit tests.
 */
#ifndef SESRELAY_SMTP_PARSE_H
#define SESRELAY_SMTP_PARSE_H

#include <stddef.h>
#include <stdint.h>

#define SMTP_CMD_LINE_MAX 512   /* octets, CRLF included (RFC 5321 4.5.3.1.4) */
#define SMTP_TEXT_LINE_MAX 1000 /* octets, CRLF included (RFC 5321 4.5.3.1.6) */
#define SMTP_PATH_MAX 256       /* RFC 5321 4.5.3.1.3 */

/* Split "VERB args" in place.  verb is upper-cased; args may be "". */
void smtp_parse_verb(char *line, char **verb, char **args);

enum smtp_body { SMTP_BODY_UNSPEC, SMTP_BODY_7BIT, SMTP_BODY_8BITMIME };

struct smtp_mail_args {
	char addr[SMTP_PATH_MAX + 1]; /* "" for <> */
	uint64_t size;                /* SIZE=, 0 when absent */
	enum smtp_body body;
};

/*
 * Parse the arguments of MAIL ("FROM:<a@b> SIZE=10") or RCPT ("TO:<a@b>").
 * Returns NULL on success, else a complete reply line without CRLF
 * ("501 5.1.7 Bad sender address syntax").  is_rcpt forbids the null path
 * and every parameter (we announce no RCPT extension).
 */
const char *smtp_parse_mail(const char *args, struct smtp_mail_args *out);
const char *smtp_parse_rcpt(const char *args, char addr[SMTP_PATH_MAX + 1]);

/* A HELO/EHLO argument we accept: printable ASCII, no spaces, 1..255. */
int smtp_parse_helo(const char *args);

#endif
