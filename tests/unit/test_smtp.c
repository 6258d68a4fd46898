/*
 * test_smtp.c - table-driven tests of the SMTP command parser
 * (smtp/smtp_parse.c) and the DATA stream machine (smtp/smtp_data.c).
 *
 * DATA cases are fed three ways - whole, byte by byte, and in two halves at
 * every split point - because a state machine that works on whole buffers
 * and breaks at a chunk boundary is the classic smuggling bug.
 */
#include <string.h>

#include <event2/buffer.h>

#include "smtp/smtp_data.h"
#include "smtp/smtp_parse.h"
#include "tests/unit/unit.h"

/* --- verbs --------------------------------------------------------------- */

static void verb_split(void)
{
	static const struct {
		const char *line, *verb, *args;
	} t[] = {
	    {"EHLO host", "EHLO", "host"},
	    {"ehlo host", "EHLO", "host"},
	    {"  NOOP  ", "NOOP", ""},
	    {"MAIL FROM:<a@b.c>  SIZE=10  ", "MAIL", "FROM:<a@b.c>  SIZE=10"},
	    {"QUIT", "QUIT", ""},
	    {"", "", ""},
	};
	size_t i;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char buf[128], *verb, *args;
		strcpy(buf, t[i].line);
		smtp_parse_verb(buf, &verb, &args);
		CHECK_STR(verb, t[i].verb);
		CHECK_STR(args, t[i].args);
	}
}

/* --- MAIL ---------------------------------------------------------------- */

static const struct {
	const char *args;
	const char *reply_prefix; /* NULL: accepted */
	const char *addr;
	unsigned long long size;
	enum smtp_body body;
} mail_cases[] = {
    {"FROM:<alice@example.com>", NULL, "alice@example.com", 0, SMTP_BODY_UNSPEC},
    {"from:<alice@example.com>", NULL, "alice@example.com", 0, SMTP_BODY_UNSPEC},
    {"FROM:<>", NULL, "", 0, SMTP_BODY_UNSPEC},
    {"FROM: <alice@example.com>", NULL, "alice@example.com", 0, SMTP_BODY_UNSPEC},
    {"FROM:alice@example.com", NULL, "alice@example.com", 0, SMTP_BODY_UNSPEC},
    {"FROM:<alice@example.com> SIZE=1024", NULL, "alice@example.com", 1024, SMTP_BODY_UNSPEC},
    {"FROM:<a@example.com> BODY=8BITMIME SIZE=5", NULL, "a@example.com", 5, SMTP_BODY_8BITMIME},
    {"FROM:<a@example.com> body=7bit", NULL, "a@example.com", 0, SMTP_BODY_7BIT},
    {"FROM:<\"john doe\"@example.com>", NULL, "\"john doe\"@example.com", 0, SMTP_BODY_UNSPEC},
    {"FROM:<@relay.example:a@example.com>", NULL, "a@example.com", 0, SMTP_BODY_UNSPEC},
    {"FROM:<a@[192.0.2.1]>", NULL, "a@[192.0.2.1]", 0, SMTP_BODY_UNSPEC},
    {"TO:<a@example.com>", "501 5.5.4", NULL, 0, 0},
    {"FROM", "501 5.5.4", NULL, 0, 0},
    {"FROM:<a@example.com", "501 5.1.7", NULL, 0, 0},
    {"FROM:<a b@example.com>", "501 5.1.7", NULL, 0, 0},
    {"FROM:<alice>", "501 5.1.7", NULL, 0, 0},
    {"FROM:<alice@>", "501 5.1.7", NULL, 0, 0},
    {"FROM:<@example.com>", "501 5.1.7", NULL, 0, 0},
    {"FROM:<a@exa mple.com>", "501 5.1.7", NULL, 0, 0},
    {"FROM:<a@example.com.>", "501 5.1.7", NULL, 0, 0},
    {"FROM:<a@ex_ample.com>", "501 5.1.7", NULL, 0, 0},
    {"FROM:<\"unterminated@example.com>", "501 5.1.7", NULL, 0, 0},
    {"FROM:<a\x01@example.com>", "501 5.1.7", NULL, 0, 0},
    {"FROM:<h\xc3\xa9@example.com>", "553 5.6.7", NULL, 0, 0},
    {"FROM:<a@example.com> SIZE=", "501 5.5.4", NULL, 0, 0},
    {"FROM:<a@example.com> SIZE=12x", "501 5.5.4", NULL, 0, 0},
    {"FROM:<a@example.com> SIZE=99999999999999999999999", "501 5.5.4", NULL, 0, 0},
    {"FROM:<a@example.com> BODY=BINARYMIME", "501 5.5.4", NULL, 0, 0},
    {"FROM:<a@example.com> SMTPUTF8", "555 5.6.7", NULL, 0, 0},
    {"FROM:<a@example.com> AUTH=<>", "555 5.5.4", NULL, 0, 0},
    {"FROM:<a@example.com>junk", "501 5.5.4", NULL, 0, 0},
    {"FROM:<>>", "501 5.5.4", NULL, 0, 0},
    /* found by fuzzing: a source route must not run past '>' */
    {"FROM:<@a> SIZE=1 x:b@c.example>", "501 5.1.7", NULL, 0, 0},
};

static void mail_table(void)
{
	size_t i;

	for (i = 0; i < sizeof(mail_cases) / sizeof(mail_cases[0]); i++) {
		struct smtp_mail_args m;
		const char *r = smtp_parse_mail(mail_cases[i].args, &m);
		if (mail_cases[i].reply_prefix == NULL) {
			if (r != NULL)
				fprintf(stderr, "case %zu: %s -> %s\n", i, mail_cases[i].args, r);
			CHECK(r == NULL);
			CHECK_STR(m.addr, mail_cases[i].addr);
			CHECK_INT(m.size, mail_cases[i].size);
			CHECK_INT(m.body, mail_cases[i].body);
		} else {
			if (r == NULL || strncmp(r, mail_cases[i].reply_prefix,
					     strlen(mail_cases[i].reply_prefix)) != 0)
				fprintf(stderr, "case %zu: %s -> %s\n", i, mail_cases[i].args,
				    r ? r : "accepted");
			CHECK(r != NULL);
			CHECK(strncmp(r, mail_cases[i].reply_prefix,
				  strlen(mail_cases[i].reply_prefix)) == 0);
		}
	}
}

static void mail_path_length(void)
{
	char args[600];
	struct smtp_mail_args m;
	const char *r;

	/* 256 octets is the limit for a path (RFC 5321 4.5.3.1.3) */
	memset(args, 0, sizeof(args));
	strcpy(args, "FROM:<");
	memset(args + 6, 'a', 244);
	strcat(args, "@example.com>"); /* 244 + 12 = 256 */
	r = smtp_parse_mail(args, &m);
	CHECK(r == NULL);
	CHECK_INT(strlen(m.addr), 256);
	memset(args, 0, sizeof(args));
	strcpy(args, "FROM:<");
	memset(args + 6, 'a', 245);
	strcat(args, "@example.com>");
	r = smtp_parse_mail(args, &m);
	CHECK(r != NULL && strncmp(r, "501 5.1.3", 9) == 0);
}

static void rcpt_table(void)
{
	static const struct {
		const char *args, *reply_prefix, *addr;
	} t[] = {
	    {"TO:<bob@example.net>", NULL, "bob@example.net"},
	    {"to:<bob@example.net>", NULL, "bob@example.net"},
	    {"TO: <bob@example.net>", NULL, "bob@example.net"},
	    {"TO:<@a.example,@b.example:bob@example.net>", NULL, "bob@example.net"},
	    {"TO:<>", "501 5.1.3", NULL},
	    {"TO:<postmaster>", "501 5.1.3", NULL},
	    {"TO:<bob@example.net> NOTIFY=NEVER", "555 5.5.4", NULL},
	    {"FROM:<bob@example.net>", "501 5.5.4", NULL},
	    {"TO:<b\xc3\xb6" "b@example.net>", "553 5.6.7", NULL},
	    {"TO:<bob@example.net", "501 5.1.3", NULL},
	    {"TO:<@evil>,<x:victim@example.com>", "501 5.1.3", NULL},
	};
	size_t i;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char addr[SMTP_PATH_MAX + 1];
		const char *r = smtp_parse_rcpt(t[i].args, addr);
		if (t[i].reply_prefix == NULL) {
			CHECK(r == NULL);
			CHECK_STR(addr, t[i].addr);
		} else {
			if (r == NULL || strncmp(r, t[i].reply_prefix, 9) != 0)
				fprintf(stderr, "case %zu: %s -> %s\n", i, t[i].args,
				    r ? r : "accepted");
			CHECK(r != NULL && strncmp(r, t[i].reply_prefix, 9) == 0);
		}
	}
}

static void helo_table(void)
{
	char longname[300];

	CHECK(smtp_parse_helo("mail.example.com"));
	CHECK(smtp_parse_helo("[192.0.2.1]"));
	CHECK(!smtp_parse_helo(""));
	CHECK(!smtp_parse_helo("two words"));
	CHECK(!smtp_parse_helo("tab\there"));
	CHECK(!smtp_parse_helo("h\xc3\xa9"));
	memset(longname, 'a', 256);
	longname[256] = '\0';
	CHECK(!smtp_parse_helo(longname));
	longname[255] = '\0';
	CHECK(smtp_parse_helo(longname));
}

/* --- DATA ---------------------------------------------------------------- */

struct data_case {
	const char *name;
	const char *in;
	size_t inlen;      /* 0: strlen */
	int done;          /* terminator found */
	size_t consumed;   /* bytes consumed when done (0: all) */
	int errors;        /* SMTP_DATA_* flags expected */
	const char *out;   /* message bytes produced, when errors == 0 */
};

#define S(x) x, sizeof(x) - 1

static const struct data_case data_cases[] = {
    {"empty message", S(".\r\n"), 1, 3, 0, ""},
    {"simple", S("a\r\nb\r\n.\r\n"), 1, 0, 0, "a\r\nb\r\n"},
    {"unstuff", S("..x\r\n..\r\n.\r\n"), 1, 0, 0, ".x\r\n.\r\n"},
    {"dot inside line kept", S("a.b\r\n.\r\n"), 1, 0, 0, "a.b\r\n"},
    {"stops at terminator", S("a\r\n.\r\nQUIT\r\n"), 1, 6, 0, "a\r\n"},
    {"no terminator yet", S("a\r\nb\r\n"), 0, 0, 0, "a\r\nb\r\n"},
    {"lf dot lf is not the end", S("a\n.\nb\r\n.\r\n"), 1, 0, SMTP_DATA_BARE_LF, NULL},
    {"cr dot cr is not the end", S("a\r.\rb\r\n.\r\n"), 1, 0, SMTP_DATA_BARE_CR, NULL},
    {"lf dot crlf is not the end", S("a\n.\r\nMAIL FROM:<x@y.z>\r\n.\r\n"), 1, 0, SMTP_DATA_BARE_LF, NULL},
    {"crlf dot lf is not the end", S("a\r\n.\nRCPT TO:<x@y.z>\r\n.\r\n"), 1, 0, SMTP_DATA_BARE_LF, NULL},
    {"cr lf dot cr cr lf", S("a\r\n.\r\r\n.\r\n"), 1, 0, SMTP_DATA_BARE_CR, NULL},
    {"bare lf in text", S("a\nb\r\n.\r\n"), 1, 0, SMTP_DATA_BARE_LF, NULL},
    {"bare cr in text", S("a\rb\r\n.\r\n"), 1, 0, SMTP_DATA_BARE_CR, NULL},
    {"cr cr lf", S("a\r\r\n.\r\n"), 1, 0, SMTP_DATA_BARE_CR, NULL},
    {"nul", "a\0b\r\n.\r\n", 8, 1, 0, SMTP_DATA_NUL, NULL},
    {"lf only terminator never ends", S("a\n.\n"), 0, 0, SMTP_DATA_BARE_LF, NULL},
};

static void run_data_case(const struct data_case *c, size_t split1, int bytewise, int *ok)
{
	struct evbuffer *out = evbuffer_new();
	struct smtp_data d;
	size_t len = c->inlen, pos = 0, step;
	int done = 0;

	smtp_data_init(&d, 1000000);
	while (pos < len && !done) {
		step = bytewise ? 1 : (pos < split1 ? split1 - pos : len - pos);
		pos += smtp_data_feed(&d, (const unsigned char *)c->in + pos, step, out, &done);
	}
	*ok = done == c->done && d.errors == c->errors &&
	      (!c->done || pos == (c->consumed ? c->consumed : len));
	if (*ok && c->out != NULL) {
		size_t n = evbuffer_get_length(out);
		*ok = n == strlen(c->out) && (n == 0 || memcmp(evbuffer_pullup(out, -1), c->out, n) == 0);
	}
	if (!*ok)
		fprintf(stderr, "data case '%s' (split %zu, bytewise %d): done=%d errors=%#x pos=%zu\n",
		    c->name, split1, bytewise, done, d.errors, pos);
	evbuffer_free(out);
}

static void data_table(void)
{
	size_t i, split;
	int ok;

	for (i = 0; i < sizeof(data_cases) / sizeof(data_cases[0]); i++) {
		const struct data_case *c = &data_cases[i];
		run_data_case(c, c->inlen, 0, &ok);
		CHECK(ok);
		run_data_case(c, 0, 1, &ok);
		CHECK(ok);
		for (split = 1; split < c->inlen; split++) {
			run_data_case(c, split, 0, &ok);
			CHECK(ok);
		}
	}
}

static void data_line_length(void)
{
	/* 998 octets + CRLF = 1000: the longest legal line */
	static char in[2100];
	struct smtp_data d;
	int done;

	memset(in, 'x', 998);
	memcpy(in + 998, "\r\n.\r\n", 5);
	smtp_data_init(&d, 1000000);
	smtp_data_feed(&d, (unsigned char *)in, 1003, NULL, &done);
	CHECK(done);
	CHECK_INT(d.errors, 0);

	memset(in, 'x', 999);
	memcpy(in + 999, "\r\n.\r\n", 5);
	smtp_data_init(&d, 1000000);
	smtp_data_feed(&d, (unsigned char *)in, 1004, NULL, &done);
	CHECK(done);
	CHECK_INT(d.errors, SMTP_DATA_LONG_LINE);
	CHECK(strncmp(smtp_data_verdict(&d), "550 5.6.0", 9) == 0);
}

static void data_size_limit(void)
{
	struct evbuffer *out = evbuffer_new();
	struct smtp_data d;
	int done;

	smtp_data_init(&d, 10);
	smtp_data_feed(&d, (const unsigned char *)"0123456\r\n", 9, out, &done);
	CHECK_INT(d.errors, 0);
	smtp_data_feed(&d, (const unsigned char *)"89\r\n.\r\n", 7, out, &done);
	CHECK(done);
	CHECK_INT(d.errors, SMTP_DATA_TOO_BIG);
	CHECK(strncmp(smtp_data_verdict(&d), "552 5.3.4", 9) == 0);
	/* after an error nothing more is written */
	CHECK_INT(evbuffer_get_length(out), 9);
	evbuffer_free(out);
}

static void data_verdicts(void)
{
	struct smtp_data d;

	smtp_data_init(&d, 100);
	CHECK(smtp_data_verdict(&d) == NULL);
	d.errors = SMTP_DATA_NUL;
	CHECK(strncmp(smtp_data_verdict(&d), "550 5.6.0", 9) == 0);
	d.errors = SMTP_DATA_BARE_LF | SMTP_DATA_TOO_BIG;
	CHECK(strncmp(smtp_data_verdict(&d), "552 5.3.4", 9) == 0);
}

/* Feed a message in chunks of `step`; collect output, emitting the held-back
 * blank line at header_end as the session does. */
static void feed_headers(const char *in, size_t step, struct smtp_data *d, struct evbuffer *out,
    int *header_ends)
{
	size_t len = strlen(in), pos = 0;
	int done = 0;

	smtp_data_init(d, 1000000);
	*header_ends = 0;
	while (pos < len && !done) {
		size_t n = len - pos < step ? len - pos : step;
		size_t off = 0;
		while (off < n && !done) {
			off += smtp_data_feed(d, (const unsigned char *)in + pos + off, n - off, out, &done);
			if (d->header_end) {
				d->header_end = 0;
				(*header_ends)++;
				evbuffer_add(out, "X-Added: 1\r\n\r\n", 14);
			}
		}
		pos += off;
	}
}

static void header_tracking(void)
{
	static const struct {
		const char *in, *out, *from;
		int has_from, msgid, date;
	} t[] = {
	    {"From: a@b.c\r\nSubject: x\r\n\r\nbody\r\n.\r\n",
		"From: a@b.c\r\nSubject: x\r\nX-Added: 1\r\n\r\nbody\r\n", " a@b.c", 1, 0, 0},
	    {"Message-ID: <x@y>\r\nDATE: now\r\nfrom: \"N\"\r\n <n@x.y>\r\n\r\n.\r\n",
		"Message-ID: <x@y>\r\nDATE: now\r\nfrom: \"N\"\r\n <n@x.y>\r\nX-Added: 1\r\n\r\n",
		" \"N\" <n@x.y>", 1, 1, 1},
	    {"From: a\r\nFrom: b\r\n\r\n\r\n.\r\n", "From: a\r\nFrom: b\r\nX-Added: 1\r\n\r\n\r\n",
		" b", 2, 0, 0},
	    {"Subject: no blank line\r\n.\r\n", "Subject: no blank line\r\n", "", 0, 0, 0},
	    {"\r\nbody only\r\n.\r\n", "X-Added: 1\r\n\r\nbody only\r\n", "", 0, 0, 0},
	    {"From-Address: z\r\nX-From: y\r\n\r\n.\r\n", "From-Address: z\r\nX-From: y\r\nX-Added: 1\r\n\r\n",
		"", 0, 0, 0},
	};
	size_t i, step;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		for (step = 1; step <= strlen(t[i].in); step++) {
			struct evbuffer *out = evbuffer_new();
			struct smtp_data d;
			int ends;
			feed_headers(t[i].in, step, &d, out, &ends);
			size_t n = evbuffer_get_length(out);
			char *got = calloc(1, n + 1);
			evbuffer_remove(out, got, n);
			evbuffer_free(out);
			int ok = strcmp(got, t[i].out) == 0 && d.errors == 0 &&
				 strcmp(d.from, t[i].from) == 0 && d.has_from == t[i].has_from &&
				 d.has_message_id == t[i].msgid && d.has_date == t[i].date &&
				 ends == (strstr(t[i].out, "X-Added") != NULL);
			if (!ok)
				fprintf(stderr, "case %zu step %zu: got \"%s\" from \"%s\" errors %#x\n", i,
				    step, got, d.from, d.errors);
			free(got);
			CHECK(ok);
		}
}

static const struct unit_case cases[] = {
    {"header_tracking", header_tracking},
    {"verb_split", verb_split},
    {"mail_table", mail_table},
    {"mail_path_length", mail_path_length},
    {"rcpt_table", rcpt_table},
    {"helo_table", helo_table},
    {"data_table", data_table},
    {"data_line_length", data_line_length},
    {"data_size_limit", data_size_limit},
    {"data_verdicts", data_verdicts},
};

UNIT_MAIN(cases)
