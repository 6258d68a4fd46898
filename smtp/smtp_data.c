/*
 * smtp_data.c - DATA stream state machine (see smtp_data.h).
 *
 * States, with "line start" meaning just after CRLF (or at the start of data):
 *   BOL     at line start
 *   DOT     line start, saw "."
 *   DOT_CR  line start, saw ".\r"      -> "\n" ends the data
 *   TEXT    inside a line
 *   CR      inside a line, saw "\r"   -> "\n" ends the line
 * A bare LF leaves us in TEXT, not BOL: otherwise "<LF>.<CR><LF>" would end
 * the data for us while a downstream server sees it differently - the
 * smuggling bug this design exists to prevent.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include "smtp/smtp_data.h"
#include "smtp/smtp_parse.h"

enum { ST_BOL, ST_DOT, ST_DOT_CR, ST_TEXT, ST_CR };

void smtp_data_init(struct smtp_data *d, uint64_t max_size)
{
	memset(d, 0, sizeof(*d));
	d->state = ST_BOL;
	d->max_size = max_size;
	d->in_headers = 1;
}

/* A complete header line (without CRLF) in d->hline: note what we need. */
static void header_line(struct smtp_data *d)
{
	const char *l = d->hline, *colon;
	size_t n = d->hlen;

	d->hline[n] = '\0';
	if (n > 0 && (l[0] == ' ' || l[0] == '\t')) { /* folded continuation */
		if (d->last_was_from) {
			size_t have = strlen(d->from);
			snprintf(d->from + have, sizeof(d->from) - have, "%s", l);
		}
		return;
	}
	d->last_was_from = 0;
	colon = memchr(l, ':', n);
	if (colon == NULL)
		return;
	n = (size_t)(colon - l);
	while (n > 0 && (l[n - 1] == ' ' || l[n - 1] == '\t'))
		n--;
	if (n == 4 && strncasecmp(l, "From", 4) == 0) {
		snprintf(d->from, sizeof(d->from), "%s", colon + 1);
		d->has_from++;
		d->last_was_from = 1;
	} else if (n == 10 && strncasecmp(l, "Message-ID", 10) == 0)
		d->has_message_id = 1;
	else if (n == 4 && strncasecmp(l, "Date", 4) == 0)
		d->has_date = 1;
}

static void emit(struct smtp_data *d, struct evbuffer *out, const unsigned char *p, size_t n)
{
	if (n == 0)
		return;
	d->size += n;
	if (d->size > d->max_size)
		d->errors |= SMTP_DATA_TOO_BIG;
	if (out != NULL && d->errors == 0)
		evbuffer_add(out, p, n);
}

size_t smtp_data_feed(struct smtp_data *d, const unsigned char *in, size_t len,
    struct evbuffer *out, int *done)
{
	size_t i, from = 0; /* in[from..i) is message text not yet emitted */

	*done = 0;
	for (i = 0; i < len; i++) {
		unsigned char c = in[i];

		if (++d->linelen > SMTP_TEXT_LINE_MAX)
			d->errors |= SMTP_DATA_LONG_LINE;
		if (d->in_headers) {
			if (d->state == ST_BOL && c == '\r') {
				/* maybe the blank line: hold the CR back */
				emit(d, out, in + from, i - from);
				from = i + 1;
				d->blank_pending = 1;
				d->state = ST_CR;
				continue;
			}
			if (d->blank_pending && d->state == ST_CR) {
				d->blank_pending = 0;
				if (c == '\n') { /* end of headers: CRLF consumed, not produced */
					d->in_headers = 0;
					d->header_end = 1;
					d->state = ST_BOL;
					d->linelen = 0;
					return i + 1;
				}
				d->errors |= SMTP_DATA_BARE_CR;
				d->state = ST_TEXT;
			} else if (d->state == ST_CR && c == '\n') {
				header_line(d);
				d->hlen = 0;
			} else if (c != '\r' && !(d->state == ST_BOL && c == '.') &&
				   d->hlen < sizeof(d->hline) - 1)
				d->hline[d->hlen++] = (char)c;
		}
		switch (d->state) {
		case ST_BOL:
			if (c == '.') {
				emit(d, out, in + from, i - from);
				from = i + 1; /* unstuff: drop the dot */
				d->state = ST_DOT;
				continue;
			}
			d->state = ST_TEXT;
			break;
		case ST_DOT:
			if (c == '\r') {
				d->state = ST_DOT_CR;
				continue;
			}
			d->state = ST_TEXT;
			break;
		case ST_DOT_CR:
			if (c == '\n') {
				*done = 1;
				return i + 1;
			}
			/* ".\r" then something else: a bare CR in the text */
			d->errors |= SMTP_DATA_BARE_CR;
			d->state = ST_TEXT;
			break;
		case ST_CR:
			if (c == '\n') {
				d->state = ST_BOL;
				d->linelen = 0;
				continue;
			}
			d->errors |= SMTP_DATA_BARE_CR;
			d->state = ST_TEXT;
			break;
		}
		/* ST_TEXT */
		if (c == '\r')
			d->state = ST_CR;
		else if (c == '\n')
			d->errors |= SMTP_DATA_BARE_LF;
		else if (c == '\0')
			d->errors |= SMTP_DATA_NUL;
	}
	/* A CR right after a line-start dot may yet end the data: hold it back. */
	emit(d, out, in + from, len - from - (d->state == ST_DOT_CR ? 1 : 0));
	return len;
}

const char *smtp_data_verdict(const struct smtp_data *d)
{
	if (d->errors & SMTP_DATA_TOO_BIG)
		return "552 5.3.4 Message size exceeds fixed limit";
	if (d->errors & (SMTP_DATA_BARE_LF | SMTP_DATA_BARE_CR))
		return "550 5.6.0 Message refused: bare CR or LF in data; lines must end with "
		       "CR LF (RFC 5321 2.3.8)";
	if (d->errors & SMTP_DATA_NUL)
		return "550 5.6.0 Message refused: NUL byte in data";
	if (d->errors & SMTP_DATA_LONG_LINE)
		return "550 5.6.0 Message refused: text line longer than 1000 octets (RFC 5321 "
		       "4.5.3.1.6)";
	return NULL;
}
