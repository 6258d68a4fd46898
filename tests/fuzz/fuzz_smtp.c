/*
 * fuzz_smtp.c - libFuzzer target for the pure SMTP parsers: the command-line
 * parser (smtp/smtp_parse.c) and the DATA stream machine (smtp/smtp_data.c).
 *
 * The input is a client's byte stream, so real conversations make good
 * seeds.  Two passes over it:
 *
 *   Lines: split as the session does (LF, optional CR before it; over-long
 *   lines skipped), each line through smtp_parse_verb, then its arguments
 *   through smtp_parse_mail/rcpt/helo (also behind "FROM:"/"TO:", so every
 *   line reaches the path parser).  Checked: verb and arguments stay inside
 *   the line, a verb has no space or lower-case letter, arguments no outer
 *   spaces, an accepted address is printable ASCII with a real "@", every
 *   refusal is one well-formed reply line.
 *
 *   DATA: the stream as message data, message after message (each one ends
 *   at its CRLF.CRLF and the next starts right after), fed whole and again in
 *   chunks whose sizes come from the input bytes, and compared with a naive
 *   reference reading of RFC 5321: where the data ends, which of bare CR /
 *   bare LF / NUL / long line it contains, the dot-unstuffed text and its
 *   size.  Whole and chunked feeds must agree with each other and with the
 *   reference (chunk boundaries are where smuggling bugs live), output must
 *   never contain a bare CR or LF when no error was flagged, and the SIZE
 *   limit must hold to the octet.
 *
 * A broken promise aborts, which libFuzzer reports as a crash.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "smtp/smtp_data.h"
#include "smtp/smtp_parse.h"

#define PROMISE(cond)                                                                              \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_smtp: broken promise at %s:%d: %s\n", __FILE__,      \
			        __LINE__, #cond);                                                  \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* --- command lines ---------------------------------------------------------- */

/* "501 5.1.7 Bad sender address syntax": code, space, enhanced code, text. */
static void check_reply(const char *reply)
{
	size_t n = strlen(reply);

	PROMISE(n >= 10 && n < 512);
	PROMISE(reply[0] >= '2' && reply[0] <= '5' && reply[1] >= '0' && reply[1] <= '9' &&
	        reply[2] >= '0' && reply[2] <= '9' && reply[3] == ' ');
	PROMISE(reply[4] == reply[0] && reply[5] == '.');
	PROMISE(strpbrk(reply, "\r\n") == NULL);
}

static void check_address(const char *addr, int allow_null)
{
	size_t n = strlen(addr), i;
	const char *at;

	PROMISE(n <= SMTP_PATH_MAX);
	if (n == 0) {
		PROMISE(allow_null);
		return;
	}
	for (i = 0; i < n; i++)
		PROMISE(addr[i] >= 0x20 && addr[i] < 0x7f);
	at = strrchr(addr, '@');
	PROMISE(at != NULL && at != addr && at[1] != '\0');
}

static void check_args(const char *args)
{
	struct smtp_mail_args m;
	char addr[SMTP_PATH_MAX + 1];
	const char *reply;

	if ((reply = smtp_parse_mail(args, &m)) != NULL) {
		check_reply(reply);
	} else {
		check_address(m.addr, 1);
		PROMISE(m.body == SMTP_BODY_UNSPEC || m.body == SMTP_BODY_7BIT ||
		        m.body == SMTP_BODY_8BITMIME);
	}
	if ((reply = smtp_parse_rcpt(args, addr)) != NULL)
		check_reply(reply);
	else
		check_address(addr, 0);
	if (smtp_parse_helo(args)) {
		size_t n = strlen(args), i;
		PROMISE(n >= 1 && n <= 255);
		for (i = 0; i < n; i++)
			PROMISE(args[i] > 0x20 && args[i] < 0x7f);
	}
}

static void fuzz_line(const uint8_t *p, size_t n)
{
	char line[SMTP_CMD_LINE_MAX + 1], copy[SMTP_CMD_LINE_MAX + 1],
	    prefixed[SMTP_CMD_LINE_MAX + 8];
	char *verb, *args, *end;
	size_t i;

	memcpy(line, p, n);
	line[n] = '\0'; /* a NUL inside ends the C string early, as it would */
	memcpy(copy, line, n + 1);
	end = line + strlen(line);
	smtp_parse_verb(line, &verb, &args);
	PROMISE(verb >= line && verb <= end && args >= line && args <= end);
	PROMISE(strchr(verb, ' ') == NULL);
	for (i = 0; verb[i]; i++)
		PROMISE(!(verb[i] >= 'a' && verb[i] <= 'z'));
	PROMISE(args[0] != ' ' && (args[0] == '\0' || args[strlen(args) - 1] != ' '));
	check_args(args);
	check_args(copy);
	snprintf(prefixed, sizeof(prefixed), "FROM:%s", args);
	check_args(prefixed);
	snprintf(prefixed, sizeof(prefixed), "TO:%s", args);
	check_args(prefixed);
}

static void fuzz_lines(const uint8_t *data, size_t size)
{
	size_t start = 0, i, n;

	for (i = 0; i <= size; i++) {
		if (i < size && data[i] != '\n')
			continue;
		n = i - start;
		if (n > 0 && data[start + n - 1] == '\r')
			n--;
		if (n + 2 <= SMTP_CMD_LINE_MAX)
			fuzz_line(data + start, n);
		start = i + 1;
	}
}

/* --- DATA ------------------------------------------------------------------- */

struct ref {
	size_t end; /* octets the data takes, terminator included */
	int done;   /* the terminator is there */
	int errors; /* SMTP_DATA_* except TOO_BIG */
	uint8_t *text;
	size_t len; /* dot-unstuffed message */
};

/* RFC 5321 4.1.1.4 / 4.5.2 / 2.3.8, read naively: lines end with CRLF and
 * nothing else; the data starts at a line start and ends at the first line
 * that is just "."; a line's leading dot is dropped. */
static void reference(const uint8_t *p, size_t n, struct ref *r)
{
	size_t i, body, linestart = 0;

	memset(r, 0, sizeof(*r));
	r->end = n;
	for (i = 0; i + 3 <= n; i++)
		if (p[i] == '.' && p[i + 1] == '\r' && p[i + 2] == '\n' &&
		    (i == 0 || (i >= 2 && p[i - 2] == '\r' && p[i - 1] == '\n'))) {
			r->end = i + 3;
			r->done = 1;
			break;
		}
	body = r->done ? r->end - 3 : n;
	r->text = malloc(body + 1);
	PROMISE(r->text != NULL);
	for (i = 0; i < body; i++) {
		int eol = p[i] == '\n' && i > 0 && p[i - 1] == '\r';

		if (p[i] == '\r' && (i + 1 >= body || p[i + 1] != '\n'))
			r->errors |= SMTP_DATA_BARE_CR;
		if (p[i] == '\n' && !eol)
			r->errors |= SMTP_DATA_BARE_LF;
		if (p[i] == '\0')
			r->errors |= SMTP_DATA_NUL;
		if (i + 1 - linestart > SMTP_TEXT_LINE_MAX)
			r->errors |= SMTP_DATA_LONG_LINE;
		if (!(i == linestart && p[i] == '.'))
			r->text[r->len++] = p[i];
		if (eol)
			linestart = i + 1;
	}
}

static size_t chunk_size(uint8_t c)
{
	return c < 0x80 ? 1 + c % 17u : 1 + (size_t)(c - 0x80) * 8;
}

/*
 * Feed p[0..n) as smtp_session.c does: chunk by chunk (sized by the bytes
 * themselves, or all at once), calling again after the early return at the
 * end of the headers, where the caller puts the blank line back (adding no
 * header fields here).  Returns the octets consumed.
 */
static size_t feed(struct smtp_data *d, const uint8_t *p, size_t n, struct evbuffer *out,
                   int chunked, int *done)
{
	size_t pos = 0, chunk, off, used;
	int header_ends = 0;

	*done = 0;
	while (pos < n && !*done) {
		chunk = chunked ? chunk_size(p[pos]) : n - pos;
		if (chunk > n - pos)
			chunk = n - pos;
		for (off = 0; off < chunk && !*done; off += used) {
			used = smtp_data_feed(d, p + pos + off, chunk - off, d->errors ? NULL : out,
			                      done);
			PROMISE(used > 0 && used <= chunk - off);
			PROMISE(*done || d->header_end || used == chunk - off);
			PROMISE(d->hlen < sizeof(d->hline));
			PROMISE(memchr(d->from, '\0', sizeof(d->from)) != NULL);
			if (d->header_end) {
				PROMISE(!*done && ++header_ends == 1);
				d->header_end = 0;
				if (d->errors == 0) {
					evbuffer_add(out, "\r\n", 2);
					d->size += 2;
					if (d->size > d->max_size)
						d->errors |= SMTP_DATA_TOO_BIG;
				}
			}
		}
		pos += off;
	}
	return pos;
}

/* No CR without LF after it, no LF without CR before it. */
static void check_crlf_only(struct evbuffer *b)
{
	size_t n = evbuffer_get_length(b), i;
	const uint8_t *p = evbuffer_pullup(b, -1);

	for (i = 0; i < n; i++) {
		if (p[i] == '\r')
			PROMISE(i + 1 < n && p[i + 1] == '\n');
		if (p[i] == '\n')
			PROMISE(i > 0 && p[i - 1] == '\r');
	}
}

static int same_bytes(struct evbuffer *b, const uint8_t *p, size_t n)
{
	return evbuffer_get_length(b) == n && (n == 0 || memcmp(evbuffer_pullup(b, -1), p, n) == 0);
}

/* One message starting at p; returns the octets it took. */
static size_t fuzz_message(const uint8_t *p, size_t n)
{
	struct evbuffer *whole = evbuffer_new(), *chunked = evbuffer_new(), *cap = evbuffer_new();
	struct smtp_data dw, dc, dl;
	struct ref ref;
	size_t used_w, used_c;
	int done_w, done_c, done_l;

	PROMISE(whole && chunked && cap);
	reference(p, n, &ref);

	smtp_data_init(&dw, UINT64_MAX);
	used_w = feed(&dw, p, n, whole, 0, &done_w);
	smtp_data_init(&dc, UINT64_MAX);
	used_c = feed(&dc, p, n, chunked, 1, &done_c);

	/* where the data ends: the same for everyone */
	PROMISE(used_w <= n && used_w == ref.end && done_w == ref.done);
	PROMISE(used_c == ref.end && done_c == ref.done);
	/* what is wrong with it: the same too (the reference knows the whole
	 * message only once it has ended) */
	PROMISE(dw.errors == dc.errors);
	/* the header section is read the same whatever the chunking */
	PROMISE(dw.in_headers == dc.in_headers && dw.has_from == dc.has_from);
	PROMISE(dw.has_date == dc.has_date && dw.has_message_id == dc.has_message_id);
	PROMISE(strcmp(dw.from, dc.from) == 0);
	PROMISE(!(dw.errors & SMTP_DATA_TOO_BIG));
	if (ref.done)
		PROMISE(dw.errors == ref.errors);
	PROMISE((dw.errors == 0) == (smtp_data_verdict(&dw) == NULL));
	if (ref.done && dw.errors == 0) {
		PROMISE(same_bytes(whole, ref.text, ref.len));
		PROMISE(same_bytes(chunked, ref.text, ref.len));
		PROMISE(dw.size == ref.len && dc.size == ref.len);
		check_crlf_only(whole);
	}

	/* SIZE, on an otherwise clean message (a refused one is refused anyway,
	 * and the blank line after its headers is not counted): one octet over
	 * the limit is refused and not passed on, the exact limit is fine */
	if (ref.done && ref.len > 0 && ref.errors == 0) {
		smtp_data_init(&dl, ref.len - 1);
		PROMISE(feed(&dl, p, n, cap, 1, &done_l) == ref.end && done_l);
		PROMISE(dl.errors & SMTP_DATA_TOO_BIG);
		PROMISE(smtp_data_verdict(&dl) != NULL);
		/* + the blank line the caller puts back before it checks */
		PROMISE(evbuffer_get_length(cap) <= ref.len - 1 + 2);
		evbuffer_drain(cap, evbuffer_get_length(cap));
		smtp_data_init(&dl, ref.len);
		PROMISE(feed(&dl, p, n, cap, 1, &done_l) == ref.end && done_l);
		PROMISE(!(dl.errors & SMTP_DATA_TOO_BIG));
	}

	free(ref.text);
	evbuffer_free(whole);
	evbuffer_free(chunked);
	evbuffer_free(cap);
	return ref.end;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t pos = 0;

	fuzz_lines(data, size);
	while (pos < size)
		pos += fuzz_message(data + pos, size - pos);
	return 0;
}
