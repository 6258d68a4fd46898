/*
 * smtp_data.h - the DATA phase byte stream: end-of-data detection,
 * dot-unstuffing and the checks that make SMTP smuggling impossible.
 *
 * Only <CR><LF>.<CR><LF> ends the data.  A bare CR, a bare LF or a NUL
 * anywhere marks the message as refused (it is never split or "repaired"),
 * as does a line over 1000 octets or a message over the size limit; the
 * parser then keeps consuming until the real end so the session stays in
 * sync with the client.  No I/O here: bytes in, message bytes out.
 */
#ifndef SESRELAY_SMTP_DATA_H
#define SESRELAY_SMTP_DATA_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;

#define SMTP_DATA_BARE_LF   0x01
#define SMTP_DATA_BARE_CR   0x02
#define SMTP_DATA_NUL       0x04
#define SMTP_DATA_LONG_LINE 0x08
#define SMTP_DATA_TOO_BIG   0x10

#define SMTP_DATA_FROM_MAX 2048 /* the From: field we keep for sender checks */

struct smtp_data {
	int state;
	size_t linelen;     /* octets of the current line on the wire */
	uint64_t size;      /* message octets produced (after unstuffing) */
	uint64_t max_size;
	int errors;         /* SMTP_DATA_* */

	/* The header section, seen on the way through. */
	int in_headers;
	int header_end;     /* set when the blank line after the headers was consumed
			     * (and not produced): the caller may add header fields,
			     * then must produce "\r\n" itself and clear the flag */
	int blank_pending;  /* a CR at the start of a header line */
	char hline[1001];   /* the current header line, capped */
	size_t hlen;
	int last_was_from;
	int has_message_id, has_date, has_from;
	char from[SMTP_DATA_FROM_MAX + 1]; /* From: value, unfolded, capped */
};

void smtp_data_init(struct smtp_data *d, uint64_t max_size);
/*
 * Consume bytes from in.  Message bytes go to out (when out is non-NULL and
 * no error has been seen).  Returns how many bytes were consumed; sets *done
 * when the terminating CRLF.CRLF has been consumed (bytes after it belong to
 * the next command and are not consumed).  It also returns early, with
 * header_end set, right after the blank line that ends the header section.
 */
size_t smtp_data_feed(struct smtp_data *d, const unsigned char *in, size_t len,
    struct evbuffer *out, int *done);
/* NULL when the message is acceptable, else the reply line (no CRLF). */
const char *smtp_data_verdict(const struct smtp_data *d);

#endif
