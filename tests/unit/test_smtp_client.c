/*
 * test_smtp_client.c - the SMTP transport's pure parts (reply parser,
 * outcome classes, EHLO keywords, dot-stuffing across every chunk split)
 * as tables, then the transport itself against scripted SMTP servers: a
 * listener in the same event loop that plays a conversation line by line
 * (OpenSMTPD smtpscript style) and fails the case on any other line.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "conf/conf.h"
#include "relay/log.h"
#include "relay/transport.h"
#include "smtp/smtp_client.h"
#include "tests/unit/unit.h"

/* ========================================================================= */
/* Replies                                                                   */
/* ========================================================================= */

static const struct {
	const char *name;
	const char *in;
	int rc; /* 1 complete, 0 more, -1 malformed */
	int code;
	const char *enhanced;
	const char *text;
	size_t nlines;
	size_t consumed;
} REPLY_CASES[] = {
    {"simple", "250 Ok\r\n", 1, 250, "", "Ok", 1, 8},
    {"bare code", "220\r\n", 1, 220, "", "", 1, 5},
    {"bare LF tolerated", "250 Ok\n", 1, 250, "", "Ok", 1, 7},
    {"multi-line", "250-email-smtp.amazonaws.com\r\n250-8BITMIME\r\n250 Ok\r\n", 1, 250, "",
     "email-smtp.amazonaws.com\n8BITMIME\nOk", 3, 52},
    {"enhanced", "554 5.7.1 Access denied\r\n", 1, 554, "5.7.1", "Access denied", 1, 25},
    {"enhanced only", "250 2.0.0\r\n", 1, 250, "2.0.0", "", 1, 11},
    {"enhanced 3-digit parts", "550 5.123.456 x\r\n", 1, 550, "5.123.456", "x", 1, 17},
    {"enhanced class mismatch", "250 5.0.0 odd\r\n", 1, 250, "", "5.0.0 odd", 1, 15},
    {"enhanced part too long", "250 2.0.0000 x\r\n", 1, 250, "", "2.0.0000 x", 1, 16},
    {"enhanced not a code", "451 4.x.1 y\r\n", 1, 451, "", "4.x.1 y", 1, 13},
    {"enhanced each line stripped", "550-5.1.1 one\r\n550 5.1.1 two\r\n", 1, 550, "5.1.1",
     "one\ntwo", 2, 30},
    {"stops after the reply", "250 a\r\n250 b\r\n", 1, 250, "", "a", 1, 7},
    {"controls and 8-bit replaced", "250 a\tb\x01\xc3\xa9\r\n", 1, 250, "", "a b ??", 1, 12},
    {"empty", "", 0, 0, "", "", 0, 0},
    {"partial line", "250 O", 0, 0, "", "", 0, 0},
    {"continuation pending", "250-a\r\n", 0, 0, "", "", 0, 0},
    {"last line partial", "250-a\r\n250 b", 0, 0, "", "", 0, 0},
    {"two-digit code", "25 Ok\r\n", -1, 0, "", "", 0, 0},
    {"four-digit code", "2500 Ok\r\n", -1, 0, "", "", 0, 0},
    {"letters", "abc def\r\n", -1, 0, "", "", 0, 0},
    {"code 6xx", "650 x\r\n", -1, 0, "", "", 0, 0},
    {"code 0xx", "050 x\r\n", -1, 0, "", "", 0, 0},
    {"codes differ", "250-a\r\n251 b\r\n", -1, 0, "", "", 0, 0},
    {"bad separator", "250_a\r\n", -1, 0, "", "", 0, 0},
    {"empty line", "\r\n", -1, 0, "", "", 0, 0},
    {"NUL in code", "2\0000 x\r\n", -1, 0, "", "", 0, 0},
};

static void t_reply_table(void)
{
	size_t i;

	for (i = 0; i < sizeof(REPLY_CASES) / sizeof(REPLY_CASES[0]); i++) {
		struct smtp_client_reply r;
		size_t used = 0, len = strlen(REPLY_CASES[i].in);
		const char *err = NULL;
		int rc;

		if (strcmp(REPLY_CASES[i].name, "NUL in code") == 0)
			len = 7; /* "2", NUL, "0 x\r\n" */
		rc = smtp_client_parse_reply(REPLY_CASES[i].in, len, &r, &used, &err);
		unit_current = REPLY_CASES[i].name;
		CHECK_INT(rc, REPLY_CASES[i].rc);
		if (rc == -1)
			CHECK(err != NULL);
		if (rc != 1)
			continue;
		CHECK_INT(r.code, REPLY_CASES[i].code);
		CHECK_STR(r.enhanced, REPLY_CASES[i].enhanced);
		CHECK_STR(r.text, REPLY_CASES[i].text);
		CHECK_INT(r.nlines, REPLY_CASES[i].nlines);
		CHECK_INT(used, REPLY_CASES[i].consumed);
	}
}

/* Lines of exactly the limit pass; one octet more is refused, complete or not. */
static void t_reply_line_cap(void)
{
	char buf[SMTP_CLIENT_LINE_MAX + 16];
	struct smtp_client_reply r;
	size_t used;

	memset(buf, 'x', sizeof(buf));
	memcpy(buf, "250 ", 4);
	memcpy(buf + SMTP_CLIENT_LINE_MAX - 2, "\r\n", 2);
	CHECK_INT(smtp_client_parse_reply(buf, SMTP_CLIENT_LINE_MAX, &r, &used, NULL), 1);
	CHECK_INT(used, SMTP_CLIENT_LINE_MAX);
	memset(buf, 'x', sizeof(buf));
	memcpy(buf, "250 ", 4);
	memcpy(buf + SMTP_CLIENT_LINE_MAX - 1, "\r\n", 2);
	CHECK_INT(smtp_client_parse_reply(buf, SMTP_CLIENT_LINE_MAX + 1, &r, &used, NULL), -1);
	/* no line end yet, but already too long: refused without waiting */
	memset(buf, 'x', sizeof(buf));
	memcpy(buf, "250 ", 4);
	CHECK_INT(smtp_client_parse_reply(buf, SMTP_CLIENT_LINE_MAX, &r, &used, NULL), -1);
	CHECK_INT(smtp_client_parse_reply(buf, SMTP_CLIENT_LINE_MAX - 1, &r, &used, NULL), 0);
}

static void t_reply_lines_cap(void)
{
	char buf[64 * 40];
	struct smtp_client_reply r;
	size_t used, n = 0;
	int i;

	for (i = 0; i < SMTP_CLIENT_LINES_MAX - 1; i++)
		n += (size_t)sprintf(buf + n, "250-line %d\r\n", i);
	n += (size_t)sprintf(buf + n, "250 last\r\n");
	CHECK_INT(smtp_client_parse_reply(buf, n, &r, &used, NULL), 1);
	CHECK_INT(r.nlines, SMTP_CLIENT_LINES_MAX);
	n = 0;
	for (i = 0; i < SMTP_CLIENT_LINES_MAX; i++)
		n += (size_t)sprintf(buf + n, "250-line %d\r\n", i);
	/* the 33rd line is refused even before the reply ends */
	CHECK_INT(smtp_client_parse_reply(buf, n, &r, &used, NULL), 0);
	n += (size_t)sprintf(buf + n, "250-more\r\n");
	CHECK_INT(smtp_client_parse_reply(buf, n, &r, &used, NULL), -1);
}

/* Long text is cut, never refused, and never overflows. */
static void t_reply_text_cap(void)
{
	static char buf[SMTP_CLIENT_LINE_MAX * 8];
	struct smtp_client_reply r;
	size_t used, n = 0;
	int i;

	for (i = 0; i < 7; i++) {
		memcpy(buf + n, i < 6 ? "250-" : "250 ", 4);
		memset(buf + n + 4, 'a' + i, 900);
		memcpy(buf + n + 904, "\r\n", 2);
		n += 906;
	}
	CHECK_INT(smtp_client_parse_reply(buf, n, &r, &used, NULL), 1);
	CHECK_INT(used, n);
	CHECK_INT(strlen(r.text), SMTP_CLIENT_TEXT_MAX - 1);
}

static void t_reply_format_and_id(void)
{
	static const struct {
		const char *in, *line, *id;
	} cases[] = {
	    {"250 Ok 0100018c2f3e-5a1b-4c3d-9e8f-000000\r\n",
	     "250 Ok 0100018c2f3e-5a1b-4c3d-9e8f-000000", "0100018c2f3e-5a1b-4c3d-9e8f-000000"},
	    {"250 2.0.0 Ok <abc-1@x.example>\r\n", "250 2.0.0 Ok <abc-1@x.example>",
	     "abc-1@x.example"},
	    {"250 OK  id-2\r\n", "250 OK  id-2", "id-2"},
	    {"250 Ok\r\n", "250 Ok", NULL},
	    {"250 Queued as 12\r\n", "250 Queued as 12", NULL},
	    {"250 Ok id with/slash\r\n", "250 Ok id with/slash", "id"},
	    {"250 Ok bad/id\r\n", "250 Ok bad/id", NULL},
	    {"554-5.7.1 Message rejected:\r\n554 5.7.1 not verified\r\n",
	     "554 5.7.1 Message rejected: not verified", NULL},
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct smtp_client_reply r;
		char line[200], id[64];
		size_t used;
		int rc;

		CHECK_INT(
		    smtp_client_parse_reply(cases[i].in, strlen(cases[i].in), &r, &used, NULL), 1);
		smtp_client_reply_format(&r, line, sizeof(line));
		CHECK_STR(line, cases[i].line);
		rc = smtp_client_message_id(&r, id, sizeof(id));
		CHECK_INT(rc, cases[i].id ? 0 : -1);
		if (cases[i].id)
			CHECK_STR(id, cases[i].id);
	}
}

/* ========================================================================= */
/* Outcome classes                                                           */
/* ========================================================================= */

#define G SMTP_CLIENT_GREETING
#define E SMTP_CLIENT_EHLO
#define T SMTP_CLIENT_STARTTLS
#define A SMTP_CLIENT_AUTH
#define R SMTP_CLIENT_RSET
#define M SMTP_CLIENT_MAIL
#define P SMTP_CLIENT_RCPT
#define D SMTP_CLIENT_DATA
#define O SMTP_CLIENT_DOT

static const struct {
	enum smtp_client_stage stage;
	int code;
	const char *text;
	enum delivery_status want;
} CLASSIFY_CASES[] = {
    /* positive */
    {O, 250, "Ok 0100-id", DELIVERY_SENT},
    {D, 354, "End data with <CR><LF>.<CR><LF>", DELIVERY_SENT},
    {A, 334, "VXNlcm5hbWU6", DELIVERY_SENT},
    /* throttling and the daily quota, wherever they come */
    {M, 454, "Throttling failure: Maximum sending rate exceeded.", DELIVERY_THROTTLED},
    {O, 454, "Throttling failure: Maximum sending rate exceeded.", DELIVERY_THROTTLED},
    {P, 454, "Throttling failure: Maximum sending rate exceeded.", DELIVERY_THROTTLED},
    {M, 454, "Throttling failure: Daily message quota exceeded.", DELIVERY_QUOTA},
    {O, 454, "Throttling failure: Daily message quota exceeded.", DELIVERY_QUOTA},
    {D, 554, "Daily message quota exceeded", DELIVERY_QUOTA},
    {M, 554, "Maximum sending rate exceeded", DELIVERY_THROTTLED},
    /* the operator must act */
    {A, 535, "Authentication Credentials Invalid", DELIVERY_OPERATOR},
    {M, 535, "Authentication Credentials Invalid", DELIVERY_OPERATOR},
    {M, 530, "Must issue a STARTTLS command first", DELIVERY_OPERATOR},
    {M, 530, "5.7.0 Authentication required", DELIVERY_OPERATOR},
    {A, 534, "5.7.9 Authentication mechanism is too weak", DELIVERY_OPERATOR},
    {A, 538, "Encryption required", DELIVERY_OPERATOR},
    {M, 554, "Access denied: User is not authorized to perform ses:SendRawEmail",
     DELIVERY_OPERATOR},
    {O, 554, "Access denied", DELIVERY_OPERATOR},
    {P, 554, "Access denied", DELIVERY_OPERATOR},
    {M, 554, "Account sending paused", DELIVERY_OPERATOR},
    {M, 554, "Sending suspended for this account", DELIVERY_OPERATOR},
    {A, 504, "5.5.4 Unrecognized authentication type", DELIVERY_OPERATOR},
    {A, 501, "Can't decode base64", DELIVERY_OPERATOR},
    {T, 554, "TLS not available", DELIVERY_OPERATOR},
    /* transient */
    {A, 454, "Temporary authentication failure", DELIVERY_DEFER},
    {T, 454, "TLS not available due to temporary reason", DELIVERY_DEFER},
    {G, 421, "Service not available", DELIVERY_DEFER},
    {M, 421, "4.4.2 Timeout waiting for data from client.", DELIVERY_DEFER},
    {O, 451, "Temporary service failure", DELIVERY_DEFER},
    {P, 452, "4.5.3 Too many recipients", DELIVERY_DEFER},
    {P, 450, "mailbox busy", DELIVERY_DEFER},
    {D, 451, "local error", DELIVERY_DEFER},
    /* 5xx not about a message, or a protocol mismatch: not bounced */
    {G, 554, "no SMTP service here", DELIVERY_DEFER},
    {E, 550, "go away", DELIVERY_DEFER},
    {E, 502, "command not implemented", DELIVERY_DEFER},
    {R, 554, "odd", DELIVERY_DEFER},
    {M, 500, "5.5.2 Syntax error", DELIVERY_DEFER},
    {M, 502, "not implemented", DELIVERY_DEFER},
    {D, 503, "5.5.1 need RCPT", DELIVERY_DEFER},
    {M, 504, "parameter not implemented", DELIVERY_DEFER},
    {0, 199, "weird", DELIVERY_DEFER},
    /* permanent for the message or recipient */
    {O, 554,
     "Message rejected: Email address is not verified. The following identities "
     "failed the check in region US-EAST-1: a@example.com",
     DELIVERY_BOUNCE},
    {O, 554, "Transaction failed: Duplicate header 'Subject'.", DELIVERY_BOUNCE},
    {O, 552, "5.3.4 Message too long", DELIVERY_BOUNCE},
    {M, 552, "message size exceeds fixed maximum message size", DELIVERY_BOUNCE},
    {M, 501, "Invalid MAIL FROM address provided", DELIVERY_BOUNCE},
    {P, 501, "Invalid RCPT TO address provided", DELIVERY_BOUNCE},
    {P, 550, "5.1.1 no such user", DELIVERY_BOUNCE},
    {P, 553, "5.1.3 malformed address", DELIVERY_BOUNCE},
    {M, 553, "5.1.7 sender rejected", DELIVERY_BOUNCE},
    {D, 554, "5.5.1 no valid recipients", DELIVERY_BOUNCE},
    {O, 550, "5.6.0 content rejected", DELIVERY_BOUNCE},
    {O, 554, NULL, DELIVERY_BOUNCE},
};

static void t_classify_table(void)
{
	size_t i;

	for (i = 0; i < sizeof(CLASSIFY_CASES) / sizeof(CLASSIFY_CASES[0]); i++) {
		enum delivery_status got = smtp_client_classify(
		    CLASSIFY_CASES[i].stage, CLASSIFY_CASES[i].code, CLASSIFY_CASES[i].text);
		if (got != CLASSIFY_CASES[i].want) {
			fprintf(stderr, "FAIL %s: case %zu (stage %d, %d %s): got %d, want %d\n",
			        unit_current, i, (int)CLASSIFY_CASES[i].stage,
			        CLASSIFY_CASES[i].code,
			        CLASSIFY_CASES[i].text ? CLASSIFY_CASES[i].text : "(null)",
			        (int)got, (int)CLASSIFY_CASES[i].want);
			unit_failed = 1;
			return;
		}
	}
}

/* ========================================================================= */
/* EHLO keywords                                                             */
/* ========================================================================= */

static const struct {
	const char *in;
	int has_size;
	uint64_t size;
	int pipelining, eightbit, starttls, auth, plain, login, esc;
} EHLO_CASES[] = {
    /* SES before and after STARTTLS */
    {"250-email-smtp.amazonaws.com\r\n250-8BITMIME\r\n250-SIZE 41943040\r\n250-STARTTLS\r\n"
     "250-AUTH PLAIN LOGIN\r\n250 Ok\r\n",
     1, 41943040, 0, 1, 1, 1, 1, 1, 0},
    {"250-mx.example\r\n250-PIPELINING\r\n250-SIZE\r\n250-ENHANCEDSTATUSCODES\r\n250 "
     "8BITMIME\r\n",
     1, 0, 1, 1, 0, 0, 0, 0, 1},
    {"250-x\r\n250-auth=login plain\r\n250 size 1000\r\n", 1, 1000, 0, 0, 0, 1, 1, 1, 0},
    {"250-x\r\n250-AUTH CRAM-MD5 XOAUTH2\r\n250 STARTTLSX\r\n", 0, 0, 0, 0, 0, 1, 0, 0, 0},
    {"250-x\r\n250-AUTH LOGIN\r\n250 SIZE 99999999999999999999999\r\n", 1, 0, 0, 0, 0, 1, 0, 1, 0},
    /* the greeting line is the server's name, not a keyword */
    {"250 PIPELINING\r\n", 0, 0, 0, 0, 0, 0, 0, 0, 0},
    {"250-x\r\n250-SIZE abc\r\n250 pipelining\r\n", 1, 0, 1, 0, 0, 0, 0, 0, 0},
};

static void t_ehlo_table(void)
{
	size_t i;

	for (i = 0; i < sizeof(EHLO_CASES) / sizeof(EHLO_CASES[0]); i++) {
		struct smtp_client_reply r;
		struct smtp_client_ehlo e;
		size_t used;

		CHECK_INT(smtp_client_parse_reply(EHLO_CASES[i].in, strlen(EHLO_CASES[i].in), &r,
		                                  &used, NULL),
		          1);
		smtp_client_parse_ehlo(&r, &e);
		CHECK_INT(e.has_size, EHLO_CASES[i].has_size);
		CHECK_INT(e.size, EHLO_CASES[i].size);
		CHECK_INT(e.pipelining, EHLO_CASES[i].pipelining);
		CHECK_INT(e.eightbitmime, EHLO_CASES[i].eightbit);
		CHECK_INT(e.starttls, EHLO_CASES[i].starttls);
		CHECK_INT(e.auth, EHLO_CASES[i].auth);
		CHECK_INT(e.auth_plain, EHLO_CASES[i].plain);
		CHECK_INT(e.auth_login, EHLO_CASES[i].login);
		CHECK_INT(e.enhancedstatuscodes, EHLO_CASES[i].esc);
	}
}

/* ========================================================================= */
/* Dot-stuffing                                                              */
/* ========================================================================= */

static const struct {
	const char *name, *in, *out; /* out includes the terminating ".\r\n" */
} STUFF_CASES[] = {
    {"empty", "", ".\r\n"},
    {"plain", "a\r\nb\r\n", "a\r\nb\r\n.\r\n"},
    {"leading dot", ".a\r\n", "..a\r\n.\r\n"},
    {"lone dot line", "x\r\n.\r\ny\r\n", "x\r\n..\r\ny\r\n.\r\n"},
    {"dots", ".\r\n..\r\n...\r\n", "..\r\n...\r\n....\r\n.\r\n"},
    {"dot not at start", "a.b\r\n a\r\n", "a.b\r\n a\r\n.\r\n"},
    {"no final CRLF", "abc", "abc\r\n.\r\n"},
    {"ends with dot", "x\r\n.", "x\r\n..\r\n.\r\n"},
    {"ends with CR", "x\r", "x\r\n.\r\n"},
    {"empty lines", "\r\n\r\n.\r\n", "\r\n\r\n..\r\n.\r\n"},
    {"bare LF made CRLF", "a\nb\n.c\n", "a\r\nb\r\n..c\r\n.\r\n"},
    {"bare CR made CRLF", "a\rb\r.c\r\n", "a\r\nb\r\n..c\r\n.\r\n"},
    {"CR CR LF", "a\r\r\n.", "a\r\n\r\n..\r\n.\r\n"},
    {"smuggling attempt", "a\n.\nb\r\n", "a\r\n..\r\nb\r\n.\r\n"},
};

/* Encode in pieces cut at each of cuts[] and compare with want. */
static int stuff_pieces(const char *in, const size_t *cuts, size_t ncuts, const char *want)
{
	char out[256];
	struct smtp_client_dotstuff st;
	size_t len = strlen(in), pos = 0, o = 0, k;

	smtp_client_dotstuff_init(&st);
	for (k = 0; k <= ncuts; k++) {
		size_t end = k < ncuts ? cuts[k] : len, n;

		n = smtp_client_dotstuff(&st, in + pos, end - pos, out + o);
		if (n > SMTP_CLIENT_DOTSTUFF_MAX(end - pos))
			return 0;
		o += n;
		pos = end;
	}
	o += smtp_client_dotstuff_end(&st, out + o);
	return o == strlen(want) && memcmp(out, want, o) == 0;
}

static void t_dotstuff_every_split(void)
{
	size_t i, a, b;

	for (i = 0; i < sizeof(STUFF_CASES) / sizeof(STUFF_CASES[0]); i++) {
		size_t len = strlen(STUFF_CASES[i].in);

		unit_current = STUFF_CASES[i].name;
		CHECK(stuff_pieces(STUFF_CASES[i].in, NULL, 0, STUFF_CASES[i].out));
		for (a = 0; a <= len; a++) {
			size_t one[1] = {a};
			CHECK(stuff_pieces(STUFF_CASES[i].in, one, 1, STUFF_CASES[i].out));
			for (b = a; b <= len; b++) {
				size_t two[2] = {a, b};
				CHECK(stuff_pieces(STUFF_CASES[i].in, two, 2, STUFF_CASES[i].out));
			}
		}
		{ /* octet by octet */
			size_t cuts[64], k;
			for (k = 0; k < len; k++)
				cuts[k] = k;
			CHECK(stuff_pieces(STUFF_CASES[i].in, cuts, len, STUFF_CASES[i].out));
		}
	}
}

/* The worst case for the output bound: every octet doubles, plus a carried CR. */
static void t_dotstuff_bound(void)
{
	char out[64];
	struct smtp_client_dotstuff st;

	smtp_client_dotstuff_init(&st);
	CHECK_INT(smtp_client_dotstuff(&st, "\r", 1, out), 0);
	CHECK_INT(smtp_client_dotstuff(&st, ".\n\n\n", 4, out), 10); /* CRLF .. CRLF CRLF CRLF */
	CHECK(10 <= SMTP_CLIENT_DOTSTUFF_MAX(4));
	CHECK_INT(smtp_client_dotstuff_end(&st, out), 3);
	CHECK(memcmp(out, ".\r\n", 3) == 0);
}

/* ========================================================================= */
/* The transport against scripted servers                                    */
/* ========================================================================= */

/*
 * Steps: 'A' wait for a (new) connection; 'S' send text; 'C' read one client
 * line, which must start with text; 'D' read message data up to and
 * including CRLF.CRLF into the capture; 'X' close the connection.
 */
struct step {
	char kind;
	const char *text;
};

struct script {
	struct event_base *base;
	struct evconnlistener *lis;
	struct bufferevent *bev;
	int port;
	const struct step *steps;
	size_t at;
	int connections;
	char error[300];
	struct evbuffer *data;  /* captured message data */
	struct evbuffer *lines; /* every client line, for failure messages */
};

static void script_run(struct script *sc);

static void script_fail(struct script *sc, const char *fmt, const char *a, const char *b)
{
	if (sc->error[0] == '\0')
		snprintf(sc->error, sizeof(sc->error), fmt, a, b);
	event_base_loopbreak(sc->base);
}

static void script_read(struct bufferevent *bev, void *arg)
{
	script_run(arg);
}

static void script_event(struct bufferevent *bev, short what, void *arg)
{
	struct script *sc = arg;

	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		bufferevent_free(sc->bev);
		sc->bev = NULL;
		script_run(sc);
	}
}

static void script_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                          int len, void *arg)
{
	struct script *sc = arg;

	if (sc->bev != NULL || sc->steps[sc->at].kind != 'A') {
		script_fail(sc, "unexpected connection at step %s%s",
		            sc->steps[sc->at].text ? "" : "", "");
		evutil_closesocket(fd);
		return;
	}
	sc->connections++;
	sc->bev = bufferevent_socket_new(sc->base, fd, BEV_OPT_CLOSE_ON_FREE);
	bufferevent_setcb(sc->bev, script_read, NULL, script_event, sc);
	bufferevent_enable(sc->bev, EV_READ | EV_WRITE);
	sc->at++;
	script_run(sc);
}

static void script_run(struct script *sc)
{
	for (;;) {
		const struct step *st = &sc->steps[sc->at];
		struct evbuffer *in;
		char *line;
		size_t n;

		if (st->kind == '\0' || st->kind == 'A')
			return;
		if (sc->bev == NULL) {
			script_fail(sc, "connection closed by the client before step \"%s\"%s",
			            st->text ? st->text : "", "");
			return;
		}
		in = bufferevent_get_input(sc->bev);
		switch (st->kind) {
		case 'S':
			bufferevent_write(sc->bev, st->text, strlen(st->text));
			break;
		case 'X':
			bufferevent_free(sc->bev);
			sc->bev = NULL;
			break;
		case 'C':
			if ((line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF_STRICT)) == NULL)
				return;
			evbuffer_add_printf(sc->lines, "%s\n", line);
			if (strncmp(line, st->text, strlen(st->text)) != 0) {
				script_fail(sc, "client sent \"%s\", script wants \"%s\"", line,
				            st->text);
				free(line);
				return;
			}
			free(line);
			break;
		case 'D': {
			struct evbuffer_ptr p = evbuffer_search(in, "\r\n.\r\n", 5, NULL);
			if (p.pos == -1 && !(evbuffer_get_length(in) >= 3 &&
			                     evbuffer_search(in, ".\r\n", 3, NULL).pos == 0))
				return;
			n = p.pos == -1 ? 3 : (size_t)p.pos + 5;
			evbuffer_remove_buffer(in, sc->data, n);
			break;
		}
		}
		sc->at++;
	}
}

static void script_start(struct script *sc, struct event_base *base, const struct step *steps)
{
	struct sockaddr_in sin;
	socklen_t slen = sizeof(sin);

	memset(sc, 0, sizeof(*sc));
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sc->base = base;
	sc->steps = steps;
	sc->data = evbuffer_new();
	sc->lines = evbuffer_new();
	sc->lis = evconnlistener_new_bind(base, script_accept, sc,
	                                  LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 16,
	                                  (struct sockaddr *)&sin, sizeof(sin));
	getsockname(evconnlistener_get_fd(sc->lis), (struct sockaddr *)&sin, &slen);
	sc->port = ntohs(sin.sin_port);
}

static void script_free(struct script *sc)
{
	if (sc->bev)
		bufferevent_free(sc->bev);
	evconnlistener_free(sc->lis);
	evbuffer_free(sc->data);
	evbuffer_free(sc->lines);
}

/* The scheduler's side: deliveries and their done(). */
struct fixture {
	struct event_base *base;
	struct transport *t;
	struct conf conf;
	char path[64];
	int fd;
	int in_send;
	int done_inside_send;
	int ndone;
	struct delivery d[4];
};

static void on_done(struct delivery *d)
{
	struct fixture *fx = d->arg;

	if (fx->in_send)
		fx->done_inside_send = 1;
	fx->ndone++;
}

/* A queue file: 7 octets of something else, then the message. */
static void fixture_init(struct fixture *fx, int port, enum conf_tls tls, const char *msg)
{
	memset(fx, 0, sizeof(*fx));
	log_set_level(LOG_LEVEL_ERROR);
	fx->base = event_base_new();
	fx->conf.hostname = "client.test";
	fx->conf.region = "us-east-1";
	fx->conf.smtp_host = "127.0.0.1";
	fx->conf.smtp_port = port;
	fx->conf.smtp_tls = tls;
	fx->conf.smtp_username = "user";
	fx->conf.smtp_password = "pass";
	fx->conf.concurrency = 1;
	snprintf(fx->path, sizeof(fx->path), "/tmp/test_smtp_client.XXXXXX");
	fx->fd = mkstemp(fx->path);
	unlink(fx->path);
	if (write(fx->fd, "ENVELOP", 7) != 7 ||
	    write(fx->fd, msg, strlen(msg)) != (ssize_t)strlen(msg))
		abort();
}

static struct delivery *fixture_delivery(struct fixture *fx, int k, const char *id,
                                         const char *sender, const char **rcpts)
{
	struct delivery *d = &fx->d[k];

	memset(d, 0, sizeof(*d));
	d->id = id;
	d->fd = fx->fd;
	d->data_offset = 7;
	d->data_len = (uint64_t)lseek(fx->fd, 0, SEEK_END) - 7;
	d->sender = sender;
	for (d->nrcpts = 0; rcpts[d->nrcpts]; d->nrcpts++)
		d->rcpts[d->nrcpts] = rcpts[d->nrcpts];
	d->done = on_done;
	d->arg = fx;
	return d;
}

static void fixture_send(struct fixture *fx, struct delivery *d)
{
	fx->in_send = 1;
	fx->t->send(fx->t, d);
	fx->in_send = 0;
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	event_base_loopbreak(arg);
}

/* Run the loop until ndone reaches n (or the script fails, or 10 s pass). */
static int fixture_wait(struct fixture *fx, struct script *sc, int n)
{
	struct event *deadline = evtimer_new(fx->base, on_deadline, fx->base);
	struct timeval tv = {10, 0};

	event_add(deadline, &tv);
	while (fx->ndone < n && (sc == NULL || sc->error[0] == '\0') &&
	       event_pending(deadline, EV_TIMEOUT, NULL))
		event_base_loop(fx->base, EVLOOP_ONCE);
	event_free(deadline);
	return fx->ndone >= n;
}

/* Let the loop run a moment (e.g. for the script to see a close). */
static void fixture_spin(struct fixture *fx, int ms)
{
	struct event *deadline = evtimer_new(fx->base, on_deadline, fx->base);
	struct timeval tv = {0, ms * 1000};

	event_add(deadline, &tv);
	event_base_dispatch(fx->base);
	event_free(deadline);
}

/* The transport, then the script (its bufferevent needs the base), then the base. */
static void fixture_free(struct fixture *fx, struct script *sc)
{
	if (fx->t)
		fx->t->free(fx->t);
	if (sc)
		script_free(sc);
	close(fx->fd);
	event_base_free(fx->base);
	log_set_level(LOG_LEVEL_INFO);
}

#define SCRIPT_OK(sc)                                                                              \
	do {                                                                                       \
		if ((sc)->error[0]) {                                                              \
			fprintf(stderr, "FAIL %s: script: %s\nclient said:\n%.*s\n", unit_current, \
			        (sc)->error, (int)evbuffer_get_length((sc)->lines),                \
			        (char *)evbuffer_pullup((sc)->lines, -1));                         \
			unit_failed = 1;                                                           \
			return;                                                                    \
		}                                                                                  \
	} while (0)

static int data_is(struct script *sc, const char *want)
{
	size_t n = evbuffer_get_length(sc->data);

	return n == strlen(want) && memcmp(evbuffer_pullup(sc->data, -1), want, n) == 0;
}

static const char DOTTY_MSG[] = "Subject: t\r\n\r\n.one\r\nmid . dot\r\n.\r\n..\r\nend\r\n";
static const char DOTTY_WIRE[] =
    "Subject: t\r\n\r\n..one\r\nmid . dot\r\n..\r\n...\r\nend\r\n.\r\n";

/* PIPELINING offered: MAIL and every RCPT go out before any reply is read
 * (the script answers only after all three lines, so a client that waited
 * would stall); one recipient refused, the other sent. */
static void t_conv_pipelined(void)
{
	static const struct step steps[] = {
	    {'A', NULL},
	    {'S', "220 fake ESMTP\r\n"},
	    {'C', "EHLO client.test"},
	    {'S', "250-fake\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250-AUTH PLAIN LOGIN\r\n250 "
	          "8BITMIME\r\n"},
	    {'C', "AUTH PLAIN AHVzZXIAcGFzcw=="},
	    {'S', "235 2.7.0 ok\r\n"},
	    {'C', "MAIL FROM:<a@example.com> SIZE=43"},
	    {'C', "RCPT TO:<r1@example.net>"},
	    {'C', "RCPT TO:<r2@example.net>"},
	    {'S', "250 Ok\r\n250 Ok\r\n550 5.1.1 <r2@example.net> no such user\r\n"},
	    {'C', "DATA"},
	    {'S', "354 go\r\n"},
	    {'D', NULL},
	    {'S', "250 Ok 0100-abc-000000\r\n"},
	    {'\0', NULL},
	};
	const char *rcpts[] = {"r1@example.net", "r2@example.net", NULL};
	struct script sc;
	struct fixture fx;
	struct delivery *d;

	fixture_init(&fx, 0, CONF_TLS_NONE, DOTTY_MSG);
	script_start(&sc, fx.base, steps);
	fx.conf.smtp_port = sc.port;
	fx.t = smtp_client_transport_new(fx.base, NULL, &fx.conf);
	CHECK(fx.t != NULL);
	CHECK_STR(fx.t->name, "ses-smtp[127.0.0.1]");
	CHECK_INT(fx.t->capacity(fx.t), 1);
	CHECK_INT(fx.t->max_size(fx.t), SMTP_CLIENT_DEFAULT_MAX_SIZE);
	d = fixture_delivery(&fx, 0, "Q1", "a@example.com", rcpts);
	fixture_send(&fx, d);
	CHECK_INT(fx.ndone, 0);
	CHECK_INT(fx.t->capacity(fx.t), 0);
	CHECK(fixture_wait(&fx, &sc, 1));
	SCRIPT_OK(&sc);
	CHECK(!fx.done_inside_send);
	CHECK_INT(d->status[0], DELIVERY_SENT);
	CHECK_STR(d->text[0], "MessageId 0100-abc-000000");
	CHECK_INT(d->status[1], DELIVERY_BOUNCE);
	CHECK_STR(d->text[1], "550 5.1.1 <r2@example.net> no such user");
	CHECK(data_is(&sc, DOTTY_WIRE));
	CHECK_INT(fx.t->capacity(fx.t), 1);
	CHECK_INT(fx.t->max_size(fx.t), 100000);
	{
		double q = 0;
		CHECK(fx.t->send_rate(fx.t, &q) == -1 && q == -1);
	}
	fixture_free(&fx, &sc);
}

/* No PIPELINING: one command at a time.  A refused MAIL leaves the session
 * usable; the next transaction on it starts with RSET.  AUTH LOGIN when
 * PLAIN is not offered; the configuration set header goes first. */
static void t_conv_sequential_rset(void)
{
	static const struct step steps[] = {
	    {'A', NULL},
	    {'S', "220 fake\r\n"},
	    {'C', "EHLO client.test"},
	    {'S', "250-fake\r\n250 AUTH LOGIN\r\n"},
	    {'C', "AUTH LOGIN"},
	    {'S', "334 VXNlcm5hbWU6\r\n"},
	    {'C', "dXNlcg=="},
	    {'S', "334 UGFzc3dvcmQ6\r\n"},
	    {'C', "cGFzcw=="},
	    {'S', "235 ok\r\n"},
	    {'C', "MAIL FROM:<>"},
	    {'S', "451 4.3.0 try again\r\n"},
	    {'C', "RSET"},
	    {'S', "250 flushed\r\n"},
	    {'C', "MAIL FROM:<b@example.com>"},
	    {'S', "250 ok\r\n"},
	    {'C', "RCPT TO:<r@example.net>"},
	    {'S', "250 ok\r\n"},
	    {'C', "DATA"},
	    {'S', "354 go\r\n"},
	    {'D', NULL},
	    {'S', "250 2.0.0 Queued\r\n"},
	    {'\0', NULL},
	};
	const char *rcpts[] = {"r@example.net", NULL};
	struct script sc;
	struct fixture fx;
	struct delivery *d1, *d2;

	fixture_init(&fx, 0, CONF_TLS_NONE, "Subject: x\r\n\r\nbody\r\n");
	script_start(&sc, fx.base, steps);
	fx.conf.smtp_port = sc.port;
	fx.conf.configuration_set = "my-set";
	fx.t = smtp_client_transport_new(fx.base, NULL, &fx.conf);
	CHECK(fx.t != NULL);
	d1 = fixture_delivery(&fx, 0, "Q1", "", rcpts);
	fixture_send(&fx, d1);
	CHECK(fixture_wait(&fx, &sc, 1));
	SCRIPT_OK(&sc);
	CHECK_INT(d1->status[0], DELIVERY_DEFER);
	CHECK_STR(d1->text[0], "451 4.3.0 try again");
	d2 = fixture_delivery(&fx, 1, "Q2", "b@example.com", rcpts);
	fixture_send(&fx, d2);
	CHECK(fixture_wait(&fx, &sc, 2));
	SCRIPT_OK(&sc);
	CHECK(!fx.done_inside_send);
	CHECK_INT(d2->status[0], DELIVERY_SENT);
	CHECK_STR(d2->text[0], "250 2.0.0 Queued");
	CHECK(data_is(&sc, "X-SES-CONFIGURATION-SET: my-set\r\nSubject: x\r\n\r\nbody\r\n.\r\n"));
	CHECK_INT(sc.connections, 1);
	fixture_free(&fx, &sc);
}

/* A pooled connection the server dropped: the job moves to a new one, once. */
static void t_conv_pooled_eof_retried(void)
{
	static const struct step steps[] = {
	    {'A', NULL},
	    {'S', "220 fake\r\n"},
	    {'C', "EHLO"},
	    {'S', "250 fake\r\n"},
	    {'C', "MAIL FROM:<a@x>"},
	    {'S', "250 ok\r\n"},
	    {'C', "RCPT TO:<r@y>"},
	    {'S', "250 ok\r\n"},
	    {'C', "DATA"},
	    {'S', "354 go\r\n"},
	    {'D', NULL},
	    {'S', "250 Ok first\r\n"},
	    {'C', "MAIL FROM:<a@x>"},
	    {'X', NULL}, /* as if it had timed out just before */
	    {'A', NULL},
	    {'S', "220 fake again\r\n"},
	    {'C', "EHLO"},
	    {'S', "250 fake\r\n"},
	    {'C', "MAIL FROM:<a@x>"},
	    {'S', "250 ok\r\n"},
	    {'C', "RCPT TO:<r@y>"},
	    {'S', "250 ok\r\n"},
	    {'C', "DATA"},
	    {'S', "354 go\r\n"},
	    {'D', NULL},
	    {'S', "250 Ok second\r\n"},
	    {'\0', NULL},
	};
	const char *rcpts[] = {"r@y", NULL};
	struct script sc;
	struct fixture fx;

	fixture_init(&fx, 0, CONF_TLS_NONE, "x\r\n");
	script_start(&sc, fx.base, steps);
	fx.conf.smtp_port = sc.port;
	fx.t = smtp_client_transport_new(fx.base, NULL, &fx.conf);
	fixture_send(&fx, fixture_delivery(&fx, 0, "Q1", "a@x", rcpts));
	CHECK(fixture_wait(&fx, &sc, 1));
	CHECK_STR(fx.d[0].text[0], "MessageId first");
	fixture_send(&fx, fixture_delivery(&fx, 1, "Q2", "a@x", rcpts));
	CHECK(fixture_wait(&fx, &sc, 2));
	SCRIPT_OK(&sc);
	CHECK_INT(fx.d[1].status[0], DELIVERY_SENT);
	CHECK_STR(fx.d[1].text[0], "MessageId second");
	CHECK_INT(sc.connections, 2);
	fixture_free(&fx, &sc);
}

/* Hostile or broken replies: DEFER with "malformed reply", connection dropped. */
static void conv_malformed(const char *ehlo_reply)
{
	const struct step steps[] = {
	    {'A', NULL}, {'S', "220 fake\r\n"}, {'C', "EHLO"}, {'S', ehlo_reply}, {'\0', NULL},
	};
	const char *rcpts[] = {"r@y", NULL};
	struct script sc;
	struct fixture fx;

	fixture_init(&fx, 0, CONF_TLS_NONE, "x\r\n");
	script_start(&sc, fx.base, steps);
	fx.conf.smtp_port = sc.port;
	fx.t = smtp_client_transport_new(fx.base, NULL, &fx.conf);
	fixture_send(&fx, fixture_delivery(&fx, 0, "Q1", "a@x", rcpts));
	CHECK(fixture_wait(&fx, &sc, 1));
	SCRIPT_OK(&sc);
	CHECK_INT(fx.d[0].status[0], DELIVERY_DEFER);
	CHECK(strstr(fx.d[0].text[0], "malformed reply from 127.0.0.1[127.0.0.1]") != NULL);
	fixture_spin(&fx, 50);
	CHECK(sc.bev == NULL); /* the client hung up */
	fixture_free(&fx, &sc);
}

static void t_conv_malformed_codes(void)
{
	conv_malformed("250-fake\r\n251 mixed\r\n");
}

static void t_conv_malformed_garbage(void)
{
	conv_malformed("HTTP/1.1 400 Bad Request\r\n");
}

static void t_conv_malformed_long_line(void)
{
	static char line[1400];

	memset(line, 'x', sizeof(line) - 1);
	memcpy(line, "250 ", 4);
	conv_malformed(line);
}

static void t_conv_malformed_many_lines(void)
{
	static char reply[40 * 16];
	size_t n = 0;
	int i;

	for (i = 0; i < 40; i++)
		n += (size_t)sprintf(reply + n, "250-line%d\r\n", i);
	conv_malformed(reply);
}

/* STARTTLS required but not offered: OPERATOR, nothing more said in clear. */
static void t_conv_starttls_missing(void)
{
	static const struct step steps[] = {
	    {'A', NULL},
	    {'S', "220 fake\r\n"},
	    {'C', "EHLO client.test"},
	    {'S', "250-fake\r\n250 AUTH PLAIN LOGIN\r\n"},
	    {'\0', NULL},
	};
	const char *rcpts[] = {"r@y", NULL};
	struct script sc;
	struct fixture fx;

	fixture_init(&fx, 0, CONF_TLS_STARTTLS, "x\r\n");
	script_start(&sc, fx.base, steps);
	fx.conf.smtp_port = sc.port;
	fx.t = smtp_client_transport_new(fx.base, NULL, &fx.conf);
	CHECK(fx.t != NULL);
	fixture_send(&fx, fixture_delivery(&fx, 0, "Q1", "a@x", rcpts));
	CHECK(fixture_wait(&fx, &sc, 1));
	SCRIPT_OK(&sc);
	CHECK_INT(fx.d[0].status[0], DELIVERY_OPERATOR);
	CHECK(strstr(fx.d[0].text[0], "server does not offer STARTTLS") != NULL);
	fixture_spin(&fx, 50);
	CHECK(sc.bev == NULL);
	CHECK_INT(evbuffer_get_length(sc.lines), strlen("EHLO client.test\n"));
	fixture_free(&fx, &sc);
}

/* Larger than the server's SIZE: bounced before MAIL, connection kept. */
static void t_conv_size_exceeded(void)
{
	static const struct step steps[] = {
	    {'A', NULL},   {'S', "220 fake\r\n"},
	    {'C', "EHLO"}, {'S', "250-fake\r\n250 SIZE 10\r\n"},
	    {'\0', NULL},
	};
	const char *rcpts[] = {"r@y", NULL};
	struct script sc;
	struct fixture fx;

	fixture_init(&fx, 0, CONF_TLS_NONE, "0123456789abcdef\r\n");
	script_start(&sc, fx.base, steps);
	fx.conf.smtp_port = sc.port;
	fx.t = smtp_client_transport_new(fx.base, NULL, &fx.conf);
	fixture_send(&fx, fixture_delivery(&fx, 0, "Q1", "a@x", rcpts));
	CHECK(fixture_wait(&fx, &sc, 1));
	SCRIPT_OK(&sc);
	CHECK_INT(fx.d[0].status[0], DELIVERY_BOUNCE);
	CHECK_STR(fx.d[0].text[0], "552 5.3.4 message size 18 exceeds SES's limit 10");
	CHECK_INT(fx.t->max_size(fx.t), 10);
	fixture_spin(&fx, 50);
	CHECK(sc.bev != NULL);
	fixture_free(&fx, &sc);
}

/* Nothing listens: DEFER "Connection refused".  Three attempts failing
 * together count as one (backoff 1 s, not 4 s); meanwhile deliveries fail at
 * once with the last error, never inside send(). */
static void t_refused_then_backoff(void)
{
	static const struct step none[] = {{'\0', NULL}};
	const char *rcpts[] = {"r@y", NULL};
	struct fixture fx;
	struct script sc;
	int k;

	fixture_init(&fx, 0, CONF_TLS_NONE, "x\r\n");
	script_start(&sc, fx.base, none);
	fx.conf.smtp_port = sc.port;
	script_free(&sc); /* the port is free again: connections are refused */
	fx.conf.concurrency = 4;
	fx.t = smtp_client_transport_new(fx.base, NULL, &fx.conf);
	for (k = 0; k < 3; k++)
		fixture_send(&fx, fixture_delivery(&fx, k, "Q", "a@x", rcpts));
	CHECK_INT(fx.t->capacity(fx.t), 1);
	CHECK(fixture_wait(&fx, NULL, 3));
	for (k = 0; k < 3; k++) {
		CHECK_INT(fx.d[k].status[0], DELIVERY_DEFER);
		CHECK(strstr(fx.d[k].text[0], "cannot connect to 127.0.0.1[127.0.0.1]:") != NULL);
		CHECK(strstr(fx.d[k].text[0], "Connection refused") != NULL);
	}
	fixture_send(&fx, fixture_delivery(&fx, 3, "Q4", "a@x", rcpts));
	CHECK_INT(fx.ndone, 3);
	CHECK_INT(fx.t->capacity(fx.t), 3);
	CHECK(fixture_wait(&fx, NULL, 4));
	CHECK(!fx.done_inside_send);
	CHECK_INT(fx.d[3].status[0], DELIVERY_DEFER);
	CHECK(strstr(fx.d[3].text[0], "Connection refused (next connection attempt in 1 s)") !=
	      NULL);
	CHECK_INT(fx.t->capacity(fx.t), 4);
	fixture_free(&fx, NULL);
}

/* free() with a delivery in flight (connected, waiting for the greeting):
 * its done() never runs, nothing leaks (ASan). */
static void t_free_cancels(void)
{
	static const struct step steps[] = {{'A', NULL}, {'\0', NULL}};
	const char *rcpts[] = {"r@y", NULL};
	struct script sc;
	struct fixture fx;

	fixture_init(&fx, 0, CONF_TLS_NONE, "x\r\n");
	script_start(&sc, fx.base, steps);
	fx.conf.smtp_port = sc.port;
	fx.conf.concurrency = 2;
	fx.t = smtp_client_transport_new(fx.base, NULL, &fx.conf);
	fixture_send(&fx, fixture_delivery(&fx, 0, "Q1", "a@x", rcpts));
	fixture_spin(&fx, 30);
	fx.t->free(fx.t);
	fx.t = NULL;
	fixture_spin(&fx, 30);
	CHECK_INT(fx.ndone, 0);
	fixture_free(&fx, &sc);
}

static void t_constructor_checks(void)
{
	struct fixture fx;
	struct transport *t;

	fixture_init(&fx, 25, CONF_TLS_STARTTLS, "x\r\n");
	fx.conf.configuration_set = "bad set\r\nBcc: x";
	CHECK(smtp_client_transport_new(fx.base, NULL, &fx.conf) == NULL);
	fx.conf.configuration_set = NULL;
	fx.conf.ca_file = "/nonexistent/ca.pem";
	CHECK(smtp_client_transport_new(fx.base, NULL, &fx.conf) == NULL);
	fx.conf.ca_file = NULL;
	fx.conf.smtp_host = NULL;
	fx.conf.region = NULL;
	CHECK(smtp_client_transport_new(fx.base, NULL, &fx.conf) == NULL);
	fx.conf.region = "eu-west-1";
	fx.conf.smtp_port = 0;
	t = smtp_client_transport_new(fx.base, NULL, &fx.conf);
	CHECK(t != NULL);
	CHECK_STR(t->name, "ses-smtp[email-smtp.eu-west-1.amazonaws.com]");
	t->free(t);
	fixture_free(&fx, NULL);
}

static const struct unit_case UNIT_TESTS[] = {
    {"reply_table", t_reply_table},
    {"reply_line_cap", t_reply_line_cap},
    {"reply_lines_cap", t_reply_lines_cap},
    {"reply_text_cap", t_reply_text_cap},
    {"reply_format_and_id", t_reply_format_and_id},
    {"classify_table", t_classify_table},
    {"ehlo_table", t_ehlo_table},
    {"dotstuff_every_split", t_dotstuff_every_split},
    {"dotstuff_bound", t_dotstuff_bound},
    {"conv_pipelined", t_conv_pipelined},
    {"conv_sequential_rset", t_conv_sequential_rset},
    {"conv_pooled_eof_retried", t_conv_pooled_eof_retried},
    {"conv_malformed_codes", t_conv_malformed_codes},
    {"conv_malformed_garbage", t_conv_malformed_garbage},
    {"conv_malformed_long_line", t_conv_malformed_long_line},
    {"conv_malformed_many_lines", t_conv_malformed_many_lines},
    {"conv_starttls_missing", t_conv_starttls_missing},
    {"conv_size_exceeded", t_conv_size_exceeded},
    {"refused_then_backoff", t_refused_then_backoff},
    {"free_cancels", t_free_cancels},
    {"constructor_checks", t_constructor_checks},
};

UNIT_MAIN(UNIT_TESTS)
