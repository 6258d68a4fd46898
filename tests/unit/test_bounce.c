/*
 * test_bounce.c - tests of the DSN composer (relay/bounce.c).
 *
 * Every case composes a real DSN, splits it the way a MIME reader would
 * (boundary from the Content-Type, parts between delimiter lines) and runs
 * the wire check - CRLF only, US-ASCII only, no line over 998 octets - on
 * the whole message, whatever else it looks at.  Hostile input (CR/LF and
 * 8-bit bytes in addresses, diagnostics and the original headers) is part
 * of the tables, not a separate afterthought.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "relay/bounce.h"
#include "tests/unit/unit.h"

#define QID      "4XyZ12AbCd"
#define HOST     "relay.example.com"
#define ARRIVAL  1700000000.25
#define ARRIVED  "Tue, 14 Nov 2023 22:13:20 +0000"
#define MAXPARTS 4

/* --- a composed DSN, split like a MIME reader would ---------------------- */

struct dsn {
	int rc, err;
	char *text; /* the whole message, NUL-terminated */
	size_t len;
	char *head; /* top-level header section, unfolded */
	char boundary[128];
	size_t nparts;
	char *phead[MAXPARTS]; /* each part's header section, unfolded */
	char *pbody[MAXPARTS]; /* each part's body, as sent */
	int closed;            /* the close delimiter ends the message */
};

static char *dupn(const char *s, size_t n)
{
	char *p = malloc(n + 1);
	if (p == NULL)
		abort();
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

/* RFC 5322 unfolding: CRLF followed by white space goes, the white space stays. */
static char *unfold(const char *s)
{
	char *out = dupn(s, strlen(s)), *w = out;

	for (; *s != '\0'; s++) {
		if (s[0] == '\r' && s[1] == '\n' && (s[2] == ' ' || s[2] == '\t')) {
			s++;
			continue;
		}
		*w++ = *s;
	}
	*w = '\0';
	return out;
}

/* Remove every occurrence of pat (to undo a wrap: "\r\n " or "\r\n    "). */
static char *unwrap(const char *s, const char *pat, const char *with)
{
	size_t n = strlen(pat), wn = strlen(with);
	char *out = dupn(s, strlen(s)), *w = out;

	while (*s != '\0') {
		if (strncmp(s, pat, n) == 0) {
			memcpy(w, with, wn);
			w += wn;
			s += n;
		} else
			*w++ = *s++;
	}
	*w = '\0';
	return out;
}

/* The value of field name in an unfolded header section, into buf. */
static const char *field(const char *section, const char *name, char *buf, size_t size)
{
	size_t n = strlen(name);
	const char *p = section, *eol;

	while (p != NULL && *p != '\0') {
		eol = strstr(p, "\r\n");
		if (eol == NULL)
			break;
		if (strncmp(p, name, n) == 0 && p[n] == ':' && p[n + 1] == ' ') {
			p += n + 2;
			if ((size_t)(eol - p) >= size)
				return NULL;
			memcpy(buf, p, (size_t)(eol - p));
			buf[eol - p] = '\0';
			return buf;
		}
		p = eol + 2;
	}
	return NULL;
}

/* NULL when text obeys the wire rules, else what is wrong. */
static const char *wire_error(const char *text, size_t len)
{
	size_t i, col = 0;

	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)text[i];
		if (c == '\r') {
			if (i + 1 >= len || text[i + 1] != '\n')
				return "bare CR";
			continue;
		}
		if (c == '\n') {
			if (i == 0 || text[i - 1] != '\r')
				return "bare LF";
			col = 0;
			continue;
		}
		if (c >= 0x7f || (c < 0x20 && c != '\t'))
			return "byte outside printable US-ASCII";
		if (++col > 998)
			return "line over 998 octets";
	}
	if (len < 2 || text[len - 2] != '\r' || text[len - 1] != '\n')
		return "does not end with CRLF";
	return NULL;
}

static void split_parts(struct dsn *d, const char *from)
{
	char delim[140];
	const char *p, *start = NULL, *after, *sep;

	snprintf(delim, sizeof(delim), "\r\n--%s", d->boundary);
	for (p = strstr(from, delim); p != NULL; p = strstr(start, delim)) {
		if (start != NULL && d->nparts > 0) {
			sep = strstr(start, "\r\n\r\n");
			if (sep == NULL || sep + 2 > p) /* no blank line ends the part's headers */
				return;
			char *h = dupn(start, (size_t)(sep + 2 - start));
			d->phead[d->nparts - 1] = unfold(h);
			free(h);
			d->pbody[d->nparts - 1] = dupn(sep + 4, (size_t)(p - sep - 4));
		}
		after = p + strlen(delim);
		if (strncmp(after, "--\r\n", 4) == 0) {
			d->closed = after + 4 == d->text + d->len;
			return;
		}
		if (strncmp(after, "\r\n", 2) != 0 || d->nparts == MAXPARTS)
			return;
		start = after + 2;
		d->nparts++;
	}
}

static void dsn_parse(struct dsn *d)
{
	const char *end = strstr(d->text, "\r\n\r\n"), *b;
	char *raw;
	size_t n;

	if (end == NULL)
		return;
	raw = dupn(d->text, (size_t)(end + 2 - d->text));
	d->head = unfold(raw);
	free(raw);
	b = strstr(d->head, "boundary=\"");
	if (b == NULL)
		return;
	b += strlen("boundary=\"");
	n = strcspn(b, "\"");
	if (n >= sizeof(d->boundary))
		return;
	memcpy(d->boundary, b, n);
	d->boundary[n] = '\0';
	split_parts(d, end + 2);
}

static void compose(struct dsn *d, const struct bounce_info *bi)
{
	struct evbuffer *out = evbuffer_new();

	memset(d, 0, sizeof(*d));
	errno = 0;
	d->rc = bounce_compose(out, bi);
	d->err = errno;
	d->len = evbuffer_get_length(out);
	d->text = malloc(d->len + 1);
	if (out == NULL || d->text == NULL)
		abort();
	evbuffer_remove(out, d->text, d->len);
	d->text[d->len] = '\0';
	evbuffer_free(out);
	dsn_parse(d);
}

static void dsn_free(struct dsn *d)
{
	size_t i;

	for (i = 0; i < MAXPARTS; i++) {
		free(d->phead[i]);
		free(d->pbody[i]);
	}
	free(d->head);
	free(d->text);
}

/* Checks shared by every case: well-formed on the wire, MIME that splits,
 * parts in order.  want_parts is 3, or 2 when the original is unreadable. */
static int dsn_ok(const struct dsn *d, size_t want_parts)
{
	static const char *const types[] = {"text/plain; charset=us-ascii",
	                                    "message/delivery-status", "text/rfc822-headers"};
	const char *why = wire_error(d->text, d->len);
	char v[256];
	size_t i;

	if (why == NULL && strlen(d->text) != d->len)
		why = "NUL in output";
	if (why == NULL && d->head == NULL)
		why = "no header section";
	if (why == NULL && (d->nparts != want_parts || !d->closed))
		why = "MIME parts not as expected";
	for (i = 0; why == NULL && i < d->nparts; i++)
		if (d->phead[i] == NULL ||
		    field(d->phead[i], "Content-Type", v, sizeof(v)) == NULL ||
		    strcmp(v, types[i]) != 0)
			why = "part Content-Type";
	if (why != NULL)
		fprintf(stderr, "dsn: %s\n--- message ---\n%s\n---\n", why, d->text);
	return why == NULL;
}

/* --- fixtures ------------------------------------------------------------ */

static const struct bounce_rcpt ONE_RCPT[] = {
    {"bob@example.net", "5.1.1", "400 MessageRejected: Email address is not verified."},
};

static struct bounce_info info(const struct bounce_rcpt *rcpts, size_t n)
{
	struct bounce_info bi;

	memset(&bi, 0, sizeof(bi));
	bi.queue_id = QID;
	bi.hostname = HOST;
	bi.from = "mailer-daemon@example.com";
	bi.to = "alice@example.org";
	bi.arrival = ARRIVAL;
	bi.rcpts = rcpts;
	bi.nrcpts = n;
	bi.orig_fd = -1;
	return bi;
}

/* A queue-file stand-in: junk, then the message, then junk that must never
 * be read (it is past orig_len). */
static FILE *orig_file(struct bounce_info *bi, const char *msg, size_t len)
{
	static const char before[] = "ENVELOPE-JUNK\r\n", after[] = "X-Past-The-End: leaked\r\n";
	FILE *f = tmpfile();

	if (f == NULL || fwrite(before, 1, sizeof(before) - 1, f) != sizeof(before) - 1 ||
	    fwrite(msg, 1, len, f) != len ||
	    fwrite(after, 1, sizeof(after) - 1, f) != sizeof(after) - 1 || fflush(f) != 0)
		abort();
	bi->orig_fd = fileno(f);
	bi->orig_offset = sizeof(before) - 1;
	bi->orig_len = len;
	return f;
}

#define STD_MSG "From: Alice <alice@example.org>\r\nSubject: hi\r\n\r\nsecret body\r\n"

/* --- structure ----------------------------------------------------------- */

static void mime_structure(void)
{
	static const struct {
		const char *name, *want;
	} t[] = {
	    {"From", "Mail Delivery System <mailer-daemon@example.com>"},
	    {"To", "<alice@example.org>"},
	    {"Subject", "Undelivered Mail Returned to Sender"},
	    {"Auto-Submitted", "auto-replied"},
	    {"MIME-Version", "1.0"},
	};
	struct bounce_info bi = info(ONE_RCPT, 1);
	FILE *f = orig_file(&bi, STD_MSG, strlen(STD_MSG));
	struct dsn d;
	char v[512], want[512];
	size_t i;

	compose(&d, &bi);
	fclose(f);
	CHECK_INT(d.rc, 0);
	CHECK(dsn_ok(&d, 3));
	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		CHECK(field(d.head, t[i].name, v, sizeof(v)) != NULL);
		CHECK_STR(v, t[i].want);
	}
	snprintf(want, sizeof(want),
	         "multipart/report; report-type=delivery-status; boundary=\"%s\"", d.boundary);
	CHECK(field(d.head, "Content-Type", v, sizeof(v)) != NULL);
	CHECK_STR(v, want);
	/* RFC 2046: 1-70 characters; ours carry the queue id and 128 random bits */
	CHECK(strlen(d.boundary) <= 70);
	CHECK(strncmp(d.boundary, QID ".", strlen(QID) + 1) == 0);
	CHECK_INT(strspn(d.boundary + strlen(QID) + 1, "0123456789abcdef"), 32);
	CHECK(strstr(d.text, "\r\n\r\nThis is a MIME-encapsulated message.\r\n") != NULL);
	CHECK(strstr(d.pbody[0], "This is the mail system at host " HOST ".\r\n") == d.pbody[0]);
	CHECK(strstr(d.pbody[1], "Reporting-MTA: dns; " HOST "\r\n") == d.pbody[1]);
	CHECK_STR(d.pbody[2], "From: Alice <alice@example.org>\r\nSubject: hi\r\n");
	CHECK(strstr(d.text, "secret body") == NULL);
	dsn_free(&d);
}

static void header_dates_and_ids(void)
{
	struct bounce_info bi = info(ONE_RCPT, 1);
	struct dsn a, b;
	char va[256], vb[256], id[64], host[64], wday[4], mon[4], zone[6], tail;
	long long t, now = (long long)time(NULL);
	int day, year, hh, mm, ss;

	compose(&a, &bi);
	compose(&b, &bi);
	CHECK(dsn_ok(&a, 2) && dsn_ok(&b, 2));
	CHECK(field(a.head, "Message-ID", va, sizeof(va)) != NULL);
	CHECK(field(b.head, "Message-ID", vb, sizeof(vb)) != NULL);
	CHECK(strcmp(va, vb) != 0);
	CHECK(strcmp(a.boundary, b.boundary) != 0);
	/* <QUEUEID.unixtime.random@hostname> */
	CHECK_INT(sscanf(va, "<" QID ".%lld.%63[0-9a-f]@%63[^>]>%c", &t, id, host, &tail), 3);
	CHECK_STR(host, HOST);
	CHECK_INT(strlen(id), 16);
	CHECK(t >= now - 5 && t <= now + 5);
	CHECK(field(a.head, "Date", va, sizeof(va)) != NULL);
	CHECK_INT(sscanf(va, "%3s, %2d %3s %4d %2d:%2d:%2d %5s%c", wday, &day, mon, &year, &hh, &mm,
	                 &ss, zone, &tail),
	          8);
	CHECK_STR(zone, "+0000");
	CHECK(strstr("SunMonTueWedThuFriSat", wday) != NULL);
	CHECK(strstr("JanFebMarAprMayJunJulAugSepOctNovDec", mon) != NULL);
	dsn_free(&a);
	dsn_free(&b);
}

static void appends_to_buffer(void)
{
	struct bounce_info bi = info(ONE_RCPT, 1);
	struct evbuffer *out = evbuffer_new();
	char head[7];

	evbuffer_add(out, "KEEP\r\n", 6);
	bounce_compose(out, &bi);
	CHECK(evbuffer_get_length(out) > 100);
	evbuffer_copyout(out, head, 6);
	head[6] = '\0';
	evbuffer_free(out);
	CHECK_STR(head, "KEEP\r\n");
}

/* --- recipients ---------------------------------------------------------- */

static const struct bounce_rcpt THREE_RCPTS[] = {
    {"bob@example.net", "5.1.1", "400 MessageRejected: Email address is not verified."},
    {"carol@example.net", "4.4.7", "message expired after 5d"},
    {"dave@example.net", "bogus", NULL},
};

#define STATUS_HEAD                                                                                \
	"Reporting-MTA: dns; " HOST "\r\n"                                                         \
	"X-Sesrelay-Queue-ID: " QID "\r\n"                                                         \
	"X-Sesrelay-Sender: rfc822; alice@example.org\r\n"                                         \
	"Arrival-Date: " ARRIVED "\r\n"
#define BOB_BLOCK                                                                                  \
	"\r\n"                                                                                     \
	"Final-Recipient: rfc822; bob@example.net\r\n"                                             \
	"Original-Recipient: rfc822; bob@example.net\r\n"                                          \
	"Action: failed\r\n"                                                                       \
	"Status: 5.1.1\r\n"                                                                        \
	"Diagnostic-Code: X-SES; 400 MessageRejected: Email address is not verified.\r\n"

static void recipient_blocks(void)
{
	static const struct {
		const char *name;
		const struct bounce_rcpt *rcpts;
		size_t n;
		const char *status;     /* part 2, exactly */
		const char *notice_end; /* part 1 ends so */
	} t[] = {
	    {"one", ONE_RCPT, 1, STATUS_HEAD BOB_BLOCK,
	     "\r\n<bob@example.net>: 400 MessageRejected: Email address is not verified.\r\n"},
	    {"three", THREE_RCPTS, 3,
	     STATUS_HEAD BOB_BLOCK "\r\n"
	                           "Final-Recipient: rfc822; carol@example.net\r\n"
	                           "Original-Recipient: rfc822; carol@example.net\r\n"
	                           "Action: failed\r\n"
	                           "Status: 4.4.7\r\n"
	                           "Diagnostic-Code: X-SES; message expired after 5d\r\n"
	                           "\r\n"
	                           "Final-Recipient: rfc822; dave@example.net\r\n"
	                           "Original-Recipient: rfc822; dave@example.net\r\n"
	                           "Action: failed\r\n"
	                           "Status: 5.0.0\r\n",
	     "\r\n<bob@example.net>: 400 MessageRejected: Email address is not verified.\r\n"
	     "\r\n<carol@example.net>: message expired after 5d\r\n"
	     "\r\n<dave@example.net>\r\n"},
	};
	size_t i, n;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct bounce_info bi = info(t[i].rcpts, t[i].n);
		struct dsn d;
		compose(&d, &bi);
		CHECK(dsn_ok(&d, 2));
		CHECK_STR(d.pbody[1], t[i].status);
		n = strlen(t[i].notice_end);
		CHECK(strlen(d.pbody[0]) > n);
		CHECK_STR(d.pbody[0] + strlen(d.pbody[0]) - n, t[i].notice_end);
		dsn_free(&d);
	}
}

static void status_codes(void)
{
	static const struct {
		const char *in, *out;
	} t[] = {
	    {"5.0.0", "5.0.0"},         {"5.1.1", "5.1.1"},    {"4.4.7", "4.4.7"},
	    {"5.123.456", "5.123.456"}, {"2.0.0", "5.0.0"},    {"5.1", "5.0.0"},
	    {"5.1.1 ", "5.0.0"},        {"5.1234.1", "5.0.0"}, {"5..1", "5.0.0"},
	    {"x.1.1", "5.0.0"},         {"", "5.0.0"},         {NULL, "5.0.0"},
	    {"5.1.1\r\nX: y", "5.0.0"},
	};
	size_t i;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct bounce_rcpt r = {"bob@example.net", t[i].in, "x"};
		struct bounce_info bi = info(&r, 1);
		struct dsn d;
		char v[64];
		compose(&d, &bi);
		CHECK(dsn_ok(&d, 2));
		CHECK(field(d.pbody[1], "Status", v, sizeof(v)) != NULL);
		CHECK_STR(v, t[i].out);
		dsn_free(&d);
	}
}

/* --- long and hostile text ----------------------------------------------- */

static char *long_text(size_t n, const char *word)
{
	char *s = malloc(n + 1);
	size_t i, wl = strlen(word);

	if (s == NULL)
		abort();
	for (i = 0; i < n; i++)
		s[i] = word[i % wl];
	s[n] = '\0';
	return s;
}

static size_t longest_line(const char *s)
{
	size_t max = 0, n;

	while (*s != '\0') {
		n = strcspn(s, "\r");
		if (n > max)
			max = n;
		s += n;
		s += strspn(s, "\r\n");
	}
	return max;
}

/* The field (from part 2) or notice line (from part 1) undone to one line. */
static void long_diagnostics(void)
{
	static const struct {
		const char *name, *word;
		size_t len;
		const char *fold;   /* what a "\r\n " in the part 2 field took the place of */
		const char *space1; /* what a wrap in part 1 took the place of */
		size_t longest;     /* of any line in parts 1 and 2 */
	} t[] = {
	    {"words", "SES said no ", 5000, " ", " ", 78},
	    {"one_token", "x", 5000, "", "", 998},
	};
	size_t i;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char *diag = long_text(t[i].len, t[i].word), *v = malloc(t[i].len + 64);
		char *want = malloc(t[i].len + 64), *field2, *line1;
		struct bounce_rcpt r = {"bob@example.net", "5.0.0", diag};
		struct bounce_info bi = info(&r, 1);
		struct dsn d;

		/* trailing spaces are not kept, so compare with the text trimmed */
		while (diag[strlen(diag) - 1] == ' ')
			diag[strlen(diag) - 1] = '\0';
		compose(&d, &bi);
		CHECK(dsn_ok(&d, 2));
		CHECK(longest_line(d.pbody[0]) <= t[i].longest);
		CHECK(longest_line(d.pbody[1]) <= t[i].longest);

		field2 = unwrap(strstr(d.pbody[1], "Diagnostic-Code:"), "\r\n ", t[i].fold);
		snprintf(want, t[i].len + 64, "Diagnostic-Code: X-SES; %s\r\n", diag);
		CHECK_STR(field2, want);
		line1 = unwrap(strstr(d.pbody[0], "<bob@"), "\r\n    ", t[i].space1);
		snprintf(want, t[i].len + 64, "<bob@example.net>: %s\r\n", diag);
		CHECK_STR(line1, want);
		free(field2);
		free(line1);
		free(v);
		free(want);
		free(diag);
		dsn_free(&d);
	}
}

static void diagnostic_capped(void)
{
	char *diag = long_text(100000, "abc ");
	struct bounce_rcpt r = {"bob@example.net", "5.0.0", diag};
	struct bounce_info bi = info(&r, 1);
	struct dsn d;
	char *field2;

	compose(&d, &bi);
	free(diag);
	CHECK(dsn_ok(&d, 2));
	CHECK(d.len < 3 * 8192 + 4096);
	field2 = unfold(strstr(d.pbody[1], "Diagnostic-Code:"));
	CHECK(strlen(field2) <= 8192 + 2);
	free(field2);
	dsn_free(&d);
}

static void hostile_bytes(void)
{
	static const struct {
		const char *addr, *diag;
		const char *want; /* the notice's recipient line */
	} t[] = {
	    {"h\xc3\xa9@example.net", "caf\xc3\xa9", "<h??@example.net>: caf??"},
	    {"bob@example.net", "no\r\nBcc: evil@example.com",
	     "<bob@example.net>: no??Bcc: evil@example.com"},
	    {"bob@example.net\r\nBcc: evil@example.com", "x",
	     "<bob@example.net??Bcc: evil@example.com>: x"},
	    {"bob@example.net", "\t\x01\x7f\xff\x1b[31m", "<bob@example.net>: ?????[31m"},
	    {"bob@example.net", "a\nb\rc", "<bob@example.net>: a?b?c"},
	};
	size_t i;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct bounce_rcpt r = {t[i].addr, "5.0.0", t[i].diag};
		struct bounce_info bi = info(&r, 1);
		struct dsn d;
		char want[256];
		compose(&d, &bi);
		CHECK(dsn_ok(&d, 2));
		snprintf(want, sizeof(want), "\r\n%s\r\n", t[i].want);
		CHECK(strstr(d.pbody[0], want) != NULL);
		CHECK(strstr(d.text, "\r\nBcc:") == NULL);
		dsn_free(&d);
	}
}

static void envelope_fields_sanitized(void)
{
	struct bounce_info bi = info(ONE_RCPT, 1);
	struct dsn d;
	char v[256];

	bi.to = "alice@example.org\r\nBcc: evil@example.com";
	bi.from = "mailer-daemon@ex\xe4mple.com";
	compose(&d, &bi);
	CHECK(dsn_ok(&d, 2));
	CHECK(field(d.head, "To", v, sizeof(v)) != NULL);
	CHECK_STR(v, "<alice@example.org??Bcc: evil@example.com>");
	CHECK(field(d.head, "From", v, sizeof(v)) != NULL);
	CHECK_STR(v, "Mail Delivery System <mailer-daemon@ex?mple.com>");
	CHECK(strstr(d.text, "\r\nBcc:") == NULL);
	dsn_free(&d);
}

/* --- the original's header section --------------------------------------- */

static void orig_headers(void)
{
	static const struct {
		const char *name, *msg, *want;
	} t[] = {
	    {"simple", STD_MSG, "From: Alice <alice@example.org>\r\nSubject: hi\r\n"},
	    {"folded", "Subject: a\r\n\tfolded\r\n  twice\r\nTo: x@y\r\n\r\nsecret body\r\n",
	     "Subject: a\r\n\tfolded\r\n  twice\r\nTo: x@y\r\n"},
	    {"body_looks_like_headers", "A: 1\r\n\r\nB: secret\r\n\r\nC: 3\r\n", "A: 1\r\n"},
	    {"no_body", "A: 1\r\nB: 2\r\n", "A: 1\r\nB: 2\r\n"},
	    {"no_final_crlf", "A: 1\r\nB: 2", "A: 1\r\nB: 2\r\n"},
	    {"empty_header_section", "\r\nsecret body\r\n", ""},
	    {"empty_message", "", ""},
	    {"eight_bit", "Subject: caf\xc3\xa9\r\n\r\nsecret\r\n", "Subject: caf??\r\n"},
	    {"bare_lf_and_cr", "A: x\ny\r\nB: p\rq\r\n\r\nsecret\r\n", "A: x?y\r\nB: p?q\r\n"},
	    {"nul", "A: x\0y\r\n\r\n", "A: x?y\r\n"},
	};
	size_t i;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct bounce_info bi = info(ONE_RCPT, 1);
		size_t len = strcmp(t[i].name, "nul") == 0 ? 10 : strlen(t[i].msg);
		FILE *f = orig_file(&bi, t[i].msg, len);
		struct dsn d;
		compose(&d, &bi);
		fclose(f);
		CHECK_INT(d.rc, 0);
		CHECK(dsn_ok(&d, 3));
		CHECK_STR(d.pbody[2], t[i].want);
		CHECK(strstr(d.text, "secret") == NULL);
		CHECK(strstr(d.text, "leaked") == NULL);
		CHECK(strstr(d.text, "ENVELOPE-JUNK") == NULL);
		dsn_free(&d);
	}
}

/* A header section over 64 KiB: whole lines that fit in 64 KiB, no more. */
static void orig_header_cap(void)
{
	static const struct {
		size_t line; /* octets per header line, CRLF included */
		size_t want; /* octets copied */
	} t[] = {
	    {100, 65500}, /* 655 lines; the 656th would end past the cap */
	    {128, 65536}, /* 512 lines end exactly at the cap */
	    {1000, 65000},
	    {1500, 43 * 1000}, /* lines cut to 998 + CRLF; 43 whole ones fit */
	};
	size_t i, j, k, nlines = 800;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		size_t total = nlines * t[i].line + 2 + 6;
		char *msg = malloc(total + 1), *p = msg;
		struct bounce_info bi = info(ONE_RCPT, 1);
		struct dsn d;
		FILE *f;

		for (j = 0; j < nlines; j++) {
			k = (size_t)snprintf(p, 32, "X-Pad-%05zu: ", j);
			memset(p + k, 'a' + (char)(j % 26), t[i].line - 2 - k);
			memcpy(p + t[i].line - 2, "\r\n", 2);
			p += t[i].line;
		}
		memcpy(p, "\r\nBODY\r\n", 8);
		f = orig_file(&bi, msg, total);
		compose(&d, &bi);
		fclose(f);
		CHECK_INT(d.rc, 0);
		CHECK(dsn_ok(&d, 3));
		CHECK_INT(strlen(d.pbody[2]), t[i].want);
		if (t[i].line <= 1000)
			CHECK(memcmp(d.pbody[2], msg, t[i].want) == 0);
		else
			CHECK(memcmp(d.pbody[2], msg, 998) == 0 &&
			      memcmp(d.pbody[2] + 998, "\r\nX-Pad-00001: ", 15) == 0);
		free(msg);
		dsn_free(&d);
	}
}

static void orig_unreadable(void)
{
	static const struct {
		const char *name;
		int fd;          /* -1, or use the file */
		uint64_t extra;  /* orig_len past the end of the file */
		uint64_t offset; /* 0: where the message is */
		int err;
	} t[] = {
	    {"no_fd", -1, 0, 0, EBADF},
	    {"closed_fd", 1000, 0, 0, EBADF},
	    {"file_too_short", 0, 100, 0, EIO},
	    {"offset_past_end", 0, 0, 1 << 20, EIO},
	};
	size_t i;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct bounce_info bi = info(ONE_RCPT, 1);
		FILE *f = orig_file(&bi, STD_MSG, strlen(STD_MSG));
		struct dsn d;
		if (t[i].fd != 0)
			bi.orig_fd = t[i].fd;
		bi.orig_len += t[i].extra + 32; /* + the junk after the message */
		if (t[i].offset)
			bi.orig_offset = t[i].offset;
		compose(&d, &bi);
		fclose(f);
		CHECK_INT(d.rc, -1);
		CHECK_INT(d.err, t[i].err);
		CHECK(dsn_ok(&d, 2));
		CHECK(strstr(d.pbody[1], "Final-Recipient: rfc822; bob@example.net\r\n") != NULL);
		CHECK(strstr(d.pbody[0], "attached") == NULL);
		CHECK(strstr(d.text, "text/rfc822-headers") == NULL);
		dsn_free(&d);
	}
}

/* --- wording ------------------------------------------------------------- */

static void expired_wording(void)
{
	static const struct {
		int expired;
		const char *has, *lacks;
	} t[] = {
	    {0, "could not be delivered to one or more recipients. Its headers are attached",
	     "queue lifetime"},
	    {1, "within the queue lifetime of this mail system, and it has been returned.",
	     "recipients. Its"},
	};
	size_t i;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct bounce_info bi = info(ONE_RCPT, 1);
		FILE *f = orig_file(&bi, STD_MSG, strlen(STD_MSG));
		struct dsn d;
		char *notice, v[128];
		bi.expired = t[i].expired;
		compose(&d, &bi);
		fclose(f);
		CHECK(dsn_ok(&d, 3));
		notice = unwrap(d.pbody[0], "\r\n", " ");
		CHECK(strstr(notice, t[i].has) != NULL);
		CHECK(strstr(notice, t[i].lacks) == NULL);
		free(notice);
		CHECK(field(d.head, "Subject", v, sizeof(v)) != NULL);
		CHECK_STR(v, "Undelivered Mail Returned to Sender");
		dsn_free(&d);
	}
}

static void arrival_dates(void)
{
	static const struct {
		double t;
		const char *want;
	} t[] = {
	    {ARRIVAL, ARRIVED},
	    {0, "Thu, 01 Jan 1970 00:00:00 +0000"},
	    {951782400, "Tue, 29 Feb 2000 00:00:00 +0000"},
	    {-1, "Thu, 01 Jan 1970 00:00:00 +0000"},
	    {1e300, "Thu, 01 Jan 1970 00:00:00 +0000"},
	    {NAN, "Thu, 01 Jan 1970 00:00:00 +0000"},
	};
	size_t i;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct bounce_info bi = info(ONE_RCPT, 1);
		struct dsn d;
		char v[64];
		bi.arrival = t[i].t;
		compose(&d, &bi);
		CHECK(dsn_ok(&d, 2));
		CHECK(field(d.pbody[1], "Arrival-Date", v, sizeof(v)) != NULL);
		CHECK_STR(v, t[i].want);
		dsn_free(&d);
	}
}

static const struct unit_case cases[] = {
    {"mime_structure", mime_structure},
    {"header_dates_and_ids", header_dates_and_ids},
    {"appends_to_buffer", appends_to_buffer},
    {"recipient_blocks", recipient_blocks},
    {"status_codes", status_codes},
    {"long_diagnostics", long_diagnostics},
    {"diagnostic_capped", diagnostic_capped},
    {"hostile_bytes", hostile_bytes},
    {"envelope_fields_sanitized", envelope_fields_sanitized},
    {"orig_headers", orig_headers},
    {"orig_header_cap", orig_header_cap},
    {"orig_unreadable", orig_unreadable},
    {"expired_wording", expired_wording},
    {"arrival_dates", arrival_dates},
};

UNIT_MAIN(cases)
