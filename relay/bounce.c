/*
 * bounce.c - compose RFC 3464 delivery status notifications ("bounces").
 *
 * SUMMARY
 *	bounce_compose() turns the failed recipients of one queued message into
 *	a multipart/report DSN laid out as Postfix's bounce daemon writes them:
 *	a notice for people (text/plain), a machine-readable report
 *	(message/delivery-status) and the original header section
 *	(text/rfc822-headers).
 *
 * DESCRIPTION
 *	Every line of the DSN leaves through put_line() or put_orig_line(), and
 *	that is where the wire rules live: US-ASCII only (any other byte, CR and
 *	LF included, becomes '?', so no text can end a line or start a header of
 *	its own), CRLF line ends, no line over 998 octets.  The parts are built
 *	before the boundary is chosen, so the boundary is checked against the
 *	text it has to delimit.
 *
 *	This file owns the wording and the layout, nothing else.  It never
 *	queues, sends or logs the DSN (the caller queues it with the null
 *	sender), and it never copies the original body: a bounce returns headers
 *	only, for privacy, and so that a bounce stays small however large the
 *	message was.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <openssl/rand.h>

#include "relay/bounce.h"
#include "relay/log.h"
#include "relay/util.h"

#define BOUNCE_LINE_SOFT 78          /* RFC 5322 2.1.1: SHOULD */
#define BOUNCE_LINE_MAX  998         /* RFC 5322 2.1.1: MUST (without the CRLF) */
#define BOUNCE_TEXT_MAX  8192        /* one logical line, e.g. a diagnostic, before wrapping */
#define BOUNCE_HDR_MAX   (64 * 1024) /* of the original header section, whole lines */
#define BOUNCE_DATE_SIZE 64

/* --- output primitives --------------------------------------------------- */

static void add(struct evbuffer *b, const void *p, size_t n)
{
	if (evbuffer_add(b, p, n) == -1)
		fatalx("bounce: evbuffer_add(%zu): out of memory", n);
}

static void add_str(struct evbuffer *b, const char *s)
{
	add(b, s, strlen(s));
}

static int is_wire_safe(unsigned char c, int keep_tab)
{
	return (c >= 0x20 && c < 0x7f) || (keep_tab && c == '\t');
}

/*
 * Append s as lines of at most BOUNCE_LINE_SOFT columns, breaking at spaces.
 * A break replaces the space with CRLF + indent: for a header field the
 * indent is " ", which is RFC 5322 folding (unfolding gives the text back);
 * for the notice it is Postfix's hanging indent.  Runs of spaces collapse to
 * one, so no folded line is white space only; leading spaces are layout and
 * stay.  A word longer than BOUNCE_LINE_MAX allows is cut where it must be:
 * unfolding then puts a space into it, the price of a limit that is a MUST.
 */
static void wrap(struct evbuffer *b, const char *s, const char *indent)
{
	size_t col, ilen = strlen(indent), n;
	int started = 0;

	n = strspn(s, " ");
	col = n < BOUNCE_LINE_SOFT ? n : BOUNCE_LINE_SOFT;
	add(b, s, col);
	s += n;
	while (*s != '\0') {
		n = strcspn(s, " ");
		if (started) {
			/* a word that will be cut anyway starts right here */
			if (col + 1 + n <= BOUNCE_LINE_SOFT ||
			    (ilen + n > BOUNCE_LINE_MAX && col + 1 < BOUNCE_LINE_MAX)) {
				add(b, " ", 1);
				col++;
			} else {
				add(b, "\r\n", 2);
				add(b, indent, ilen);
				col = ilen;
			}
		}
		while (col + n > BOUNCE_LINE_MAX) {
			size_t k = BOUNCE_LINE_MAX - col;
			add(b, s, k);
			add(b, "\r\n", 2);
			add(b, indent, ilen);
			col = ilen;
			s += k;
			n -= k;
		}
		add(b, s, n);
		col += n;
		s += n;
		s += strspn(s, " ");
		started = 1;
	}
	add(b, "\r\n", 2);
}

/* One logical line of our own text, capped, made ASCII, wrapped, CRLF. */
static void put_line(struct evbuffer *b, const char *indent, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void put_line(struct evbuffer *b, const char *indent, const char *fmt, ...)
{
	va_list ap;
	char *s;
	size_t i;
	int r;

	va_start(ap, fmt);
	r = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (r < 0)
		fatal("bounce: vasprintf");
	if ((size_t)r > BOUNCE_TEXT_MAX)
		s[BOUNCE_TEXT_MAX] = '\0';
	for (i = 0; s[i] != '\0'; i++)
		if (!is_wire_safe((unsigned char)s[i], 0))
			s[i] = '?';
	wrap(b, s, indent);
	free(s);
}

/* One line of the original header section: cut, not folded (folding would
 * change a header it is our job to show as it was), tabs kept. */
static void put_orig_line(struct evbuffer *b, const char *p, size_t n)
{
	char line[BOUNCE_LINE_MAX];
	size_t i;

	if (n > sizeof(line))
		n = sizeof(line);
	for (i = 0; i < n; i++)
		line[i] = is_wire_safe((unsigned char)p[i], 1) ? p[i] : '?';
	add(b, line, n);
	add(b, "\r\n", 2);
}

static const char *str(const char *s)
{
	return s != NULL ? s : "";
}

/* RFC 5322 date in UTC: fixed English names (no locale), and a clock
 * value that gmtime cannot represent, or a double that would not fit a
 * time_t, becomes the epoch rather than undefined behaviour. */
static void rfc5322_date(char *buf, size_t len, double t)
{
	static const char *const day[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char *const mon[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
	                                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	struct tm tm;
	time_t tt;
	int r;

	if (!(t >= 0 && t < 253402300800.0)) /* up to 9999-12-31; NaN fails too */
		t = 0;
	tt = (time_t)t;
	if (gmtime_r(&tt, &tm) == NULL)
		fatal("bounce: gmtime_r");
	r = bsnprintf(buf, len, "%s, %02d %s %04d %02d:%02d:%02d +0000", day[tm.tm_wday],
	              tm.tm_mday, mon[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
	              tm.tm_sec);
	ASSERT(r == 0);
}

/* 2 * nbytes hex digits of CSPRNG output.  A failing RAND_bytes means the
 * process's TLS is broken as well: not something to limp on from. */
static void random_hex(char *buf, size_t size, size_t nbytes)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char r[32];
	size_t i;

	ASSERT(nbytes <= sizeof(r) && size > 2 * nbytes);
	if (RAND_bytes(r, (int)nbytes) != 1)
		fatalx("bounce: RAND_bytes failed");
	for (i = 0; i < nbytes; i++) {
		buf[2 * i] = hex[r[i] >> 4];
		buf[2 * i + 1] = hex[r[i] & 0xf];
	}
	buf[2 * nbytes] = '\0';
}

/* RFC 3463 status as RFC 3464 wants it for Action: failed: class 4 or 5
 * (Postfix keeps 4.x.x for mail that expired), then 1-3 digits twice. */
static int valid_status(const char *s)
{
	int part;
	size_t n;

	if (s == NULL || (s[0] != '4' && s[0] != '5') || s[1] != '.')
		return 0;
	s += 2;
	for (part = 0; part < 2; part++) {
		n = strspn(s, "0123456789");
		if (n < 1 || n > 3)
			return 0;
		s += n;
		if (part == 0 && *s++ != '.')
			return 0;
	}
	return *s == '\0';
}

/* --- the three parts ----------------------------------------------------- */

/* Part 3: the header section of the original, read with pread so the
 * caller's file offset is untouched.  At most BOUNCE_HDR_MAX octets are
 * read and never past orig_len; the copy stops at the empty line and keeps
 * whole lines only.  -1 (errno) when the original cannot be read. */
static int put_orig_headers(struct evbuffer *b, const struct bounce_info *bi)
{
	size_t want, got = 0;
	const char *p, *end, *eol;
	char *buf;
	ssize_t n;
	int saved;

	if (bi->orig_fd < 0) {
		errno = EBADF;
		return -1;
	}
	want = bi->orig_len < BOUNCE_HDR_MAX ? (size_t)bi->orig_len : BOUNCE_HDR_MAX;
	buf = xmalloc(want);
	while (got < want) {
		n = pread(bi->orig_fd, buf + got, want - got, (off_t)(bi->orig_offset + got));
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0) {
			saved =
			    n == 0 ? EIO : errno; /* 0: the file is shorter than the queue says */
			free(buf);
			errno = saved;
			return -1;
		}
		got += (size_t)n;
	}
	for (p = buf, end = buf + want; p < end; p = eol + 2) {
		eol = memmem(p, (size_t)(end - p), "\r\n", 2);
		if (eol == NULL) {
			/* A line cut by the cap is dropped; one cut by the end of
			 * a message that has no body is the message's last line. */
			if (want == bi->orig_len)
				put_orig_line(b, p, (size_t)(end - p));
			break;
		}
		if (eol == p)
			break; /* the empty line: the body starts after it */
		put_orig_line(b, p, (size_t)(eol - p));
	}
	free(buf);
	return 0;
}

/* Part 1, in the words of Postfix's default failure template, less what
 * does not apply: the message is not attached, at most its headers are. */
static void put_notice(struct evbuffer *b, const struct bounce_info *bi, int have_headers)
{
	size_t i;

	put_line(b, "", "This is the mail system at host %s.", str(bi->hostname));
	add(b, "\r\n", 2);
	if (bi->expired)
		put_line(
		    b, "",
		    "I'm sorry to have to inform you that your message could not be delivered to "
		    "one or more recipients within the queue lifetime of this mail system, and "
		    "it has been returned.%s",
		    have_headers ? " Its headers are attached below." : "");
	else
		put_line(
		    b, "",
		    "I'm sorry to have to inform you that your message could not be delivered to "
		    "one or more recipients.%s",
		    have_headers ? " Its headers are attached below." : "");
	add(b, "\r\n", 2);
	put_line(b, "", "For further assistance, please send mail to postmaster.");
	add(b, "\r\n", 2);
	put_line(b, "", "If you do so, please include this problem report.");
	add(b, "\r\n", 2);
	put_line(b, "", "                   The mail system");
	for (i = 0; i < bi->nrcpts; i++) {
		const struct bounce_rcpt *r = &bi->rcpts[i];
		add(b, "\r\n", 2);
		put_line(b, "    ", "<%s>%s%s", str(r->addr), *str(r->diagnostic) ? ": " : "",
		         str(r->diagnostic));
	}
}

/*
 * Part 2.  The diagnostic-type is always "X-SES": the text is SES's, and
 * although it often begins "400 ..." that is an HTTP status from the API,
 * not an SMTP reply, so labelling it "smtp" would mislead a parser, and
 * guessing from its shape cannot tell the two apart.  Remote-MTA is left
 * out: SES is an API endpoint, not an MTA reached by a DNS name we could
 * report truthfully here.
 */
static void put_status(struct evbuffer *b, const struct bounce_info *bi)
{
	char date[BOUNCE_DATE_SIZE];
	size_t i;

	rfc5322_date(date, sizeof(date), bi->arrival);
	put_line(b, " ", "Reporting-MTA: dns; %s", str(bi->hostname));
	put_line(b, " ", "X-Sesrelay-Queue-ID: %s", str(bi->queue_id));
	put_line(b, " ", "X-Sesrelay-Sender: rfc822; %s", str(bi->to));
	put_line(b, " ", "Arrival-Date: %s", date);
	for (i = 0; i < bi->nrcpts; i++) {
		const struct bounce_rcpt *r = &bi->rcpts[i];
		add(b, "\r\n", 2);
		put_line(b, " ", "Final-Recipient: rfc822; %s", str(r->addr));
		put_line(b, " ", "Original-Recipient: rfc822; %s", str(r->addr));
		put_line(b, " ", "Action: failed");
		put_line(b, " ", "Status: %s", valid_status(r->status) ? r->status : "5.0.0");
		if (*str(r->diagnostic))
			put_line(b, " ", "Diagnostic-Code: X-SES; %s", r->diagnostic);
	}
}

/* --- assembly ------------------------------------------------------------ */

static int occurs(struct evbuffer *b, const char *s)
{
	struct evbuffer_ptr at;

	if (b == NULL)
		return 0;
	at = evbuffer_search(b, s, strlen(s), NULL);
	return at.pos != -1;
}

/* The queue id (in boundary characters only) and 128 random bits: a
 * boundary nobody can predict, which is still checked against the parts,
 * since "cannot occur in the content" is the one thing MIME requires. */
static void choose_boundary(char *boundary, size_t size, const char *qid,
                            struct evbuffer *const *parts, size_t nparts)
{
	char id[33], hex[33], delim[128];
	size_t i;
	int clash, r;

	for (i = 0; qid[i] != '\0' && i < sizeof(id) - 1; i++)
		id[i] = isalnum((unsigned char)qid[i]) ? qid[i] : '_';
	id[i] = '\0';
	do {
		random_hex(hex, sizeof(hex), 16);
		r = bsnprintf(boundary, size, "%s.%s", id, hex);
		ASSERT(r == 0);
		r = bsnprintf(delim, sizeof(delim), "--%s", boundary);
		ASSERT(r == 0);
		for (clash = 0, i = 0; i < nparts; i++)
			clash |= occurs(parts[i], delim);
	} while (clash);
}

static void put_part(struct evbuffer *out, const char *boundary, const char *description,
                     const char *type, struct evbuffer *body)
{
	put_line(out, " ", "--%s", boundary);
	put_line(out, " ", "Content-Description: %s", description);
	put_line(out, " ", "Content-Type: %s", type);
	add(out, "\r\n", 2);
	if (evbuffer_add_buffer(out, body) == -1)
		fatalx("bounce: evbuffer_add_buffer: out of memory");
	add(out, "\r\n", 2);
}

int bounce_compose(struct evbuffer *out, const struct bounce_info *bi)
{
	struct evbuffer *parts[3];
	char boundary[80], date[BOUNCE_DATE_SIZE], hex[17];
	time_t now = time(NULL);
	int rc = 0, saved = 0;
	size_t i;

	ASSERT(bi->nrcpts > 0 && bi->rcpts != NULL); /* RFC 3464: at least one */
	for (i = 0; i < 3; i++)
		if ((parts[i] = evbuffer_new()) == NULL)
			fatalx("bounce: evbuffer_new: out of memory");
	if (put_orig_headers(parts[2], bi) == -1) {
		saved = errno;
		rc = -1;
		evbuffer_free(parts[2]);
		parts[2] = NULL;
	}
	put_notice(parts[0], bi, parts[2] != NULL);
	put_status(parts[1], bi);
	choose_boundary(boundary, sizeof(boundary), str(bi->queue_id), parts, 3);

	rfc5322_date(date, sizeof(date), (double)now);
	random_hex(hex, sizeof(hex), 8);
	put_line(out, " ", "Date: %s", date);
	put_line(out, " ", "From: Mail Delivery System <%s>", str(bi->from));
	put_line(out, " ", "To: <%s>", str(bi->to));
	/* Postfix uses the same subject when the lifetime ran out. */
	put_line(out, " ", "Subject: Undelivered Mail Returned to Sender");
	put_line(out, " ", "Message-ID: <%s.%lld.%s@%s>", str(bi->queue_id), (long long)now, hex,
	         str(bi->hostname));
	/* RFC 3834: vacation responders and the like must not answer this. */
	put_line(out, " ", "Auto-Submitted: auto-replied");
	put_line(out, " ", "MIME-Version: 1.0");
	put_line(out, " ",
	         "Content-Type: multipart/report; report-type=delivery-status; boundary=\"%s\"",
	         boundary);
	add(out, "\r\n", 2);
	add_str(out, "This is a MIME-encapsulated message.\r\n\r\n");
	put_part(out, boundary, "Notification", "text/plain; charset=us-ascii", parts[0]);
	put_part(out, boundary, "Delivery report", "message/delivery-status", parts[1]);
	if (parts[2] != NULL)
		put_part(out, boundary, "Undelivered Message Headers", "text/rfc822-headers",
		         parts[2]);
	put_line(out, " ", "--%s--", boundary);

	for (i = 0; i < 3; i++)
		if (parts[i] != NULL)
			evbuffer_free(parts[i]);
	if (rc == -1)
		errno = saved;
	return rc;
}
