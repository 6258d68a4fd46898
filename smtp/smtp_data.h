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

struct smtp_data {
	int state;
	size_t linelen;     /* octets of the current line on the wire */
	uint64_t size;      /* message octets produced (after unstuffing) */
	uint64_t max_size;
	int errors;         /* SMTP_DATA_* */
};

void smtp_data_init(struct smtp_data *d, uint64_t max_size);
/*
 * Consume bytes from in.  Message bytes go to out (when out is non-NULL and
 * no error has been seen).  Returns how many bytes were consumed; sets *done
 * when the terminating CRLF.CRLF has been consumed (bytes after it belong to
 * the next command and are not consumed).
 */
size_t smtp_data_feed(struct smtp_data *d, const unsigned char *in, size_t len,
    struct evbuffer *out, int *done);
/* NULL when the message is acceptable, else the reply line (no CRLF). */
const char *smtp_data_verdict(const struct smtp_data *d);

#endif
