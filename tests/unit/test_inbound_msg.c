/*
 * test_inbound_msg.c - the streaming rewrite of received mail
 * (relay/inbound_msg.c).
 *
 * Every message here goes through run_all(), which feeds it whole and in
 * chunks of 1, 2, 3, 7, 13 and 64 octets and insists that every chunking
 * gives the same output, the same facts and the same verdict: a split
 * inside a CRLF, a folded field or the blank line must not change a byte.
 * Messages are written with "\n" and turned into CRLF by crlf() unless a
 * case is about line ends itself.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "relay/inbound_msg.h"
#include "tests/unit/unit.h"

#define FWD "fwd@example.net"

static const struct inbound_msg_opts OPT_NAME = {FWD, INBOUND_FROM_NAME, NULL};
static const struct inbound_msg_opts OPT_NAME_AT = {FWD, INBOUND_FROM_NAME_AT, NULL};
static const struct inbound_msg_opts OPT_PREFIX = {FWD, INBOUND_FROM_NAME, "[fwd]"};
static const struct inbound_msg_opts OPT_PREFIX_SP = {FWD, INBOUND_FROM_NAME, "[fwd] "};

/* --- driving the module -------------------------------------------------- */

struct run {
	struct inbound_msg *m;
	int rc; /* 1, or -1 when the header section failed */
	char *out;
	size_t len;
	size_t max_buffered;
};

static char *xdup(const char *s, size_t n)
{
	char *p = malloc(n + 1);
	if (p == NULL)
		abort();
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

/* "\n" -> "\r\n" */
static char *crlf(const char *s)
{
	size_t n = strlen(s), i, k = 0;
	char *o = malloc(2 * n + 1);

	if (o == NULL)
		abort();
	for (i = 0; i < n; i++) {
		if (s[i] == '\n')
			o[k++] = '\r';
		o[k++] = s[i];
	}
	o[k] = '\0';
	return o;
}

static void note_buffered(struct run *r)
{
	size_t b = inbound_msg_buffered(r->m);
	if (b > r->max_buffered)
		r->max_buffered = b;
}

/* Feed in into a new object in chunks of chunk octets (0: whole). */
static void run(struct run *r, const struct inbound_msg_opts *o, const char *in, size_t len,
                size_t chunk)
{
	struct evbuffer *b = evbuffer_new();
	size_t off = 0, n;
	int body = 0;

	memset(r, 0, sizeof(*r));
	r->m = inbound_msg_new(o);
	if (chunk == 0)
		chunk = len ? len : 1;
	while (off < len) {
		n = len - off < chunk ? len - off : chunk;
		if (!body) {
			r->rc = inbound_msg_feed(r->m, in + off, n);
			note_buffered(r);
			if (r->rc == -1)
				break;
			if (r->rc == 1) {
				inbound_msg_headers(r->m, b);
				body = 1;
			}
		} else {
			inbound_msg_body(r->m, in + off, n, b);
		}
		note_buffered(r);
		off += n;
	}
	if (r->rc != -1 && !body) {
		r->rc = inbound_msg_finish(r->m);
		if (r->rc == 1) {
			inbound_msg_headers(r->m, b);
			body = 1;
		}
	}
	if (body)
		inbound_msg_body_end(r->m, b);
	r->len = evbuffer_get_length(b);
	r->out = malloc(r->len + 1);
	evbuffer_remove(b, r->out, r->len);
	r->out[r->len] = '\0';
	evbuffer_free(b);
}

static void run_free(struct run *r)
{
	inbound_msg_free(r->m);
	free(r->out);
	memset(r, 0, sizeof(*r));
}

static int same_facts(const struct inbound_facts *a, const struct inbound_facts *b)
{
	size_t i;

	if (strcmp(a->from_addr, b->from_addr) || strcmp(a->from_name, b->from_name) ||
	    strcmp(a->return_path, b->return_path) || strcmp(a->subject, b->subject) ||
	    strcmp(a->message_id, b->message_id) || strcmp(a->date, b->date) ||
	    strcmp(a->spam_verdict, b->spam_verdict) ||
	    strcmp(a->virus_verdict, b->virus_verdict) || a->ses_receipt != b->ses_receipt ||
	    a->has_reply_to != b->has_reply_to || a->rcpt_source != b->rcpt_source ||
	    a->nrcpts != b->nrcpts || a->malformed != b->malformed ||
	    a->long_lines != b->long_lines || a->header_size != b->header_size ||
	    a->nul_dropped != b->nul_dropped || a->body_size != b->body_size)
		return 0;
	for (i = 0; i < a->nrcpts; i++)
		if (strcmp(a->rcpts[i], b->rcpts[i]) != 0)
			return 0;
	return 1;
}

/* Run whole (into *r, for the caller to inspect) and in every chunking;
 * 1 when all agree. */
static int run_all(struct run *r, const struct inbound_msg_opts *o, const char *in, size_t len)
{
	static const size_t chunks[] = {1, 2, 3, 7, 13, 64};
	struct run c;
	size_t i;
	int ok = 1;

	run(r, o, in, len, 0);
	for (i = 0; i < sizeof(chunks) / sizeof(chunks[0]) && ok; i++) {
		run(&c, o, in, len, chunks[i]);
		if (c.rc != r->rc || c.len != r->len || memcmp(c.out, r->out, r->len) != 0) {
			fprintf(stderr,
			        "chunk %zu: rc %d/%d, output differs:\n%s\n---- whole:\n%s\n",
			        chunks[i], c.rc, r->rc, c.out, r->out);
			ok = 0;
		} else if (r->rc == 1 &&
		           !same_facts(inbound_msg_facts(c.m), inbound_msg_facts(r->m))) {
			fprintf(stderr, "chunk %zu: facts differ\n", chunks[i]);
			ok = 0;
		}
		run_free(&c);
	}
	return ok;
}

/* The first line of out starting with "NAME: " (without its CRLF), or "". */
static const char *line_of(const char *out, const char *name)
{
	static char buf[2048];
	size_t n = strlen(name);
	const char *p = out, *e;

	buf[0] = '\0';
	while (*p != '\0' && strncmp(p, "\r\n", 2) != 0) {
		e = strstr(p, "\r\n");
		if (e == NULL)
			break;
		if (strncmp(p, name, n) == 0 && p[n] == ':') {
			snprintf(buf, sizeof(buf), "%.*s", (int)(e - p), p);
			break;
		}
		p = e + 2;
	}
	return buf;
}

/* The header section of out (up to and including the blank line). */
static char *head_of(const char *out)
{
	const char *e = strstr(out, "\r\n\r\n");
	return xdup(out, e != NULL ? (size_t)(e - out) + 4 : strlen(out));
}

/* --- golden messages ----------------------------------------------------- */

#define SES_TOP                                                                                    \
	"Return-Path: <alice@sender.example>\n"                                                    \
	"Received: from mail-ej1-f41.google.com (mail-ej1-f41.google.com "                         \
	"[209.85.218.41]) by inbound-smtp.us-east-1.amazonaws.com with SMTP id "                   \
	"8vfdqpuc5ln0u3ijdk7ngkq4b0i1lc0r5m3ghq81 for me@example.com; Thu, 01 Jun "                \
	"2023 01:02:03 +0000 (UTC)\n"                                                              \
	"X-SES-Spam-Verdict: PASS\n"                                                               \
	"X-SES-Virus-Verdict: PASS\n"                                                              \
	"Received-SPF: pass (spfCheck: domain of sender.example designates "                       \
	"209.85.218.41 as permitted sender)\n"                                                     \
	"X-SES-RECEIPT: AEFBQUFBQUFBQUFFbWVzc2FnZQ==\n"                                            \
	"X-SES-DKIM-SIGNATURE: a=rsa-sha256; q=dns/txt; b=abc; c=relaxed/simple;\n"                \
	"\ts=224i4yxa5dv7c2xz3womw6peuasteono; d=amazonses.com; t=1685581323;\n"

#define SES_TOP_OUT                                                                                \
	"Received: from mail-ej1-f41.google.com (mail-ej1-f41.google.com "                         \
	"[209.85.218.41]) by inbound-smtp.us-east-1.amazonaws.com with SMTP id "                   \
	"8vfdqpuc5ln0u3ijdk7ngkq4b0i1lc0r5m3ghq81 for me@example.com; Thu, 01 Jun "                \
	"2023 01:02:03 +0000 (UTC)\n"                                                              \
	"X-SES-Spam-Verdict: PASS\n"                                                               \
	"X-SES-Virus-Verdict: PASS\n"                                                              \
	"Received-SPF: pass (spfCheck: domain of sender.example designates "                       \
	"209.85.218.41 as permitted sender)\n"                                                     \
	"X-SES-RECEIPT: AEFBQUFBQUFBQUFFbWVzc2FnZQ==\n"                                            \
	"X-SES-DKIM-SIGNATURE: a=rsa-sha256; q=dns/txt; b=abc; c=relaxed/simple;\n"                \
	"\ts=224i4yxa5dv7c2xz3womw6peuasteono; d=amazonses.com; t=1685581323;\n"

static const struct golden {
	const char *name;
	const struct inbound_msg_opts *o;
	const char *in, *want; /* "\n" line ends: crlf() makes them CRLF */
} goldens[] = {
    {"typical", &OPT_NAME,
     SES_TOP "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;\n"
             "        d=sender.example; s=20221208; t=1685581320;\n"
             "        h=to:subject:message-id:date:from:mime-version:from:to:cc;\n"
             "        bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\n"
             "        b=Fo0\n"
             "DKIM-Signature: v=1; d=other.example; b=x\n"
             "MIME-Version: 1.0\n"
             "From: Alice Example <alice@sender.example>\n"
             "Date: Thu, 1 Jun 2023 03:01:52 +0200\n"
             "Message-ID: <CAF=abc@mail.gmail.com>\n"
             "Subject: Hello there\n"
             "To: me@example.com\n"
             "Sender: list-bounces@sender.example\n"
             "Content-Type: text/plain; charset=\"UTF-8\"\n"
             "\n"
             "Hi,\n"
             "\n"
             ". a line with a dot\n"
             "-- \n"
             "Alice\n",
     SES_TOP_OUT "MIME-Version: 1.0\n"
                 "From: \"Alice Example\" <" FWD ">\n"
                 "Reply-To: \"Alice Example\" <alice@sender.example>\n"
                 "Date: Thu, 1 Jun 2023 03:01:52 +0200\n"
                 "Subject: Hello there\n"
                 "To: me@example.com\n"
                 "Content-Type: text/plain; charset=\"UTF-8\"\n"
                 "\n"
                 "Hi,\n"
                 "\n"
                 ". a line with a dot\n"
                 "-- \n"
                 "Alice\n"},
    {"reply_to_kept", &OPT_NAME,
     "From: Bob <bob@b.example>\n"
     "reply-to: Team <team@b.example>\n"
     "Subject: x\n"
     "\n"
     "body\n",
     "From: \"Bob\" <" FWD ">\n"
     "reply-to: Team <team@b.example>\n"
     "Subject: x\n"
     "\n"
     "body\n"},
    {"field_names_any_case", &OPT_NAME,
     "FROM: bob@b.example\n"
     "return-path: <bob@b.example>\n"
     "MESSAGE-ID: <1@b>\n"
     "dkim-signature: a=b;\n"
     " c=d\n"
     "SENDER: x@b.example\n"
     "Subject : spaced name\n"
     "\n",
     "From: \"bob@b.example\" <" FWD ">\n"
     "Reply-To: <bob@b.example>\n"
     "Subject : spaced name\n"
     "\n"},
    {"dkim_folded_with_tabs_only_that_field", &OPT_NAME,
     "X-Before: 1\n"
     "DKIM-Signature: v=1;\n"
     "\ta=rsa-sha256;\n"
     " \t b=zzz\n"
     "\t\n"
     "X-After: 2\n"
     "X-DKIM-Signature-Like: stays\n"
     "  folded too\n"
     "From: <a@a.example>\n"
     "\n",
     "X-Before: 1\n"
     "X-After: 2\n"
     "X-DKIM-Signature-Like: stays\n"
     "  folded too\n"
     "From: \"a@a.example\" <" FWD ">\n"
     "Reply-To: <a@a.example>\n"
     "\n"},
    {"second_from_dropped", &OPT_NAME,
     "From: One <one@a.example>\n"
     "From: Two <two@b.example>\n"
     "\n"
     "x\n",
     "From: \"One\" <" FWD ">\n"
     "Reply-To: \"One\" <one@a.example>\n"
     "\n"
     "x\n"},
    {"no_from_uses_return_path", &OPT_NAME,
     "Return-Path: <bounce@c.example>\n"
     "Subject: anonymous\n"
     "\n"
     "x\n",
     "Subject: anonymous\n"
     "From: \"bounce@c.example\" <" FWD ">\n"
     "Reply-To: <bounce@c.example>\n"
     "\n"
     "x\n"},
    {"no_from_no_sender_at_all", &OPT_NAME,
     "Return-Path: <>\n"
     "Subject: from nobody\n"
     "\n",
     "Subject: from nobody\n"
     "From: <" FWD ">\n"
     "\n"},
    {"from_without_address", &OPT_NAME,
     "Return-Path: <rp@c.example>\n"
     "From: just a name\n"
     "\n",
     "From: \"rp@c.example\" <" FWD ">\n"
     "Reply-To: <rp@c.example>\n"
     "\n"},
    {"subject_prefix", &OPT_PREFIX,
     "From: a@a.example\n"
     "Subject: Hello\n"
     "subject: second stays\n"
     "\n",
     "From: \"a@a.example\" <" FWD ">\n"
     "Reply-To: <a@a.example>\n"
     "Subject: [fwd] Hello\n"
     "subject: second stays\n"
     "\n"},
    {"subject_prefix_trailing_space", &OPT_PREFIX_SP,
     "Subject:   Hello\n"
     "From: a@a.example\n"
     "\n",
     "Subject: [fwd] Hello\n"
     "From: \"a@a.example\" <" FWD ">\n"
     "Reply-To: <a@a.example>\n"
     "\n"},
    {"subject_prefix_folded", &OPT_PREFIX,
     "SUBJECT: =?UTF-8?B?SGVsbG8=?=\n"
     " =?UTF-8?B?V29ybGQ=?=\n"
     "From: a@a.example\n"
     "\n",
     "Subject: [fwd] =?UTF-8?B?SGVsbG8=?=\n"
     " =?UTF-8?B?V29ybGQ=?=\n"
     "From: \"a@a.example\" <" FWD ">\n"
     "Reply-To: <a@a.example>\n"
     "\n"},
    {"subject_prefix_empty_subject", &OPT_PREFIX_SP,
     "Subject:\n"
     "From: a@a.example\n"
     "\n",
     "Subject: [fwd]\n"
     "From: \"a@a.example\" <" FWD ">\n"
     "Reply-To: <a@a.example>\n"
     "\n"},
    {"subject_prefix_added_when_missing", &OPT_PREFIX_SP,
     "From: a@a.example\n"
     "\n"
     "b\n",
     "From: \"a@a.example\" <" FWD ">\n"
     "Reply-To: <a@a.example>\n"
     "Subject: [fwd]\n"
     "\n"
     "b\n"},
    {"headers_only_no_blank_line", &OPT_NAME,
     "From: a@a.example\n"
     "Subject: no body",
     "From: \"a@a.example\" <" FWD ">\n"
     "Reply-To: <a@a.example>\n"
     "Subject: no body\n"
     "\n"},
    {"headers_only_with_blank_line", &OPT_NAME,
     "From: a@a.example\n"
     "\n",
     "From: \"a@a.example\" <" FWD ">\n"
     "Reply-To: <a@a.example>\n"
     "\n"},
    {"empty_message", &OPT_NAME, "", "From: <" FWD ">\n\n"},
    {"body_without_final_newline", &OPT_NAME,
     "From: a@a.example\n"
     "\n"
     "last line",
     "From: \"a@a.example\" <" FWD ">\n"
     "Reply-To: <a@a.example>\n"
     "\n"
     "last line\n"},
    {"body_starts_with_blank_lines", &OPT_NAME,
     "From: a@a.example\n"
     "\n"
     "\n"
     "\n"
     "x\n",
     "From: \"a@a.example\" <" FWD ">\n"
     "Reply-To: <a@a.example>\n"
     "\n"
     "\n"
     "\n"
     "x\n"},
    {"malformed_lines_dropped", &OPT_NAME,
     " orphan continuation\n"
     "X-Ok: 1\n"
     "this line has no colon\n"
     " and a continuation of it\n"
     "Bad Name: space in the field name\n"
     ": empty name\n"
     "From: a@a.example\n"
     "\n",
     "X-Ok: 1\n"
     "From: \"a@a.example\" <" FWD ">\n"
     "Reply-To: <a@a.example>\n"
     "\n"},
};

static void golden(void)
{
	size_t i;

	for (i = 0; i < sizeof(goldens) / sizeof(goldens[0]); i++) {
		const struct golden *g = &goldens[i];
		char *in = crlf(g->in), *want = crlf(g->want);
		struct run r;
		int same = run_all(&r, g->o, in, strlen(in));

		if (!same || r.rc != 1 || strcmp(r.out, want) != 0)
			fprintf(stderr, "golden %s:\n%s\n---- want:\n%s\n", g->name, r.out, want);
		CHECK(same);
		CHECK_INT(r.rc, 1);
		CHECK_STR(r.out, want);
		run_free(&r);
		free(in);
		free(want);
	}
}

static void typical_facts(void)
{
	char *in = crlf(goldens[0].in);
	const struct inbound_facts *f;
	struct run r;

	CHECK(run_all(&r, &OPT_NAME, in, strlen(in)));
	f = inbound_msg_facts(r.m);
	CHECK_STR(f->from_addr, "alice@sender.example");
	CHECK_STR(f->from_name, "\"Alice Example\"");
	CHECK_STR(f->return_path, "alice@sender.example");
	CHECK_STR(f->subject, "Hello there");
	CHECK_STR(f->message_id, "<CAF=abc@mail.gmail.com>");
	CHECK_STR(f->date, "Thu, 1 Jun 2023 03:01:52 +0200");
	CHECK_STR(f->spam_verdict, "PASS");
	CHECK_STR(f->virus_verdict, "PASS");
	CHECK_INT(f->ses_receipt, 1);
	CHECK_INT(f->has_reply_to, 0);
	CHECK_INT(f->rcpt_source, INBOUND_RCPT_RECEIVED);
	CHECK_INT(f->nrcpts, 1);
	CHECK_STR(f->rcpts[0], "me@example.com");
	CHECK_INT(f->malformed, 0);
	CHECK_INT(f->long_lines, 0);
	CHECK_INT(f->nul_dropped, 0);
	CHECK_INT(f->body_size, strlen("Hi,\r\n\r\n. a line with a dot\r\n-- \r\nAlice\r\n"));
	CHECK_INT(f->header_size, strstr(in, "\r\n\r\n") + 2 - in);
	run_free(&r);
	free(in);
}

/* --- From and Reply-To ---------------------------------------------------- */

static const struct from_case {
	const struct inbound_msg_opts *o;
	const char *from; /* the From value, "\n" allowed for folding */
	const char *want_from, *want_reply_to, *want_name, *want_addr;
} from_cases[] = {
    {&OPT_NAME, "Alice Example <alice@a.example>", "\"Alice Example\" <" FWD ">",
     "\"Alice Example\" <alice@a.example>", "\"Alice Example\"", "alice@a.example"},
    {&OPT_NAME, "\"Doe, John \\\"JD\\\"\" <j@a.example>", "\"Doe, John \\\"JD\\\"\" <" FWD ">",
     "\"Doe, John \\\"JD\\\"\" <j@a.example>", "\"Doe, John \\\"JD\\\"\"", "j@a.example"},
    {&OPT_NAME, "\"back\\\\slash\" <b@a.example>", "\"back\\\\slash\" <" FWD ">",
     "\"back\\\\slash\" <b@a.example>", "\"back\\\\slash\"", "b@a.example"},
    {&OPT_NAME, "=?UTF-8?B?SsO2cmc=?= Schmidt <j@a.example>",
     "=?UTF-8?B?SsO2cmc=?= \"Schmidt\" <" FWD ">", "=?UTF-8?B?SsO2cmc=?= \"Schmidt\" <j@a.example>",
     "=?UTF-8?B?SsO2cmc=?= \"Schmidt\"", "j@a.example"},
    {&OPT_NAME, "=?utf-8?q?J=C3=B6rg?=\n =?utf-8?q?_Schmidt?= <j@a.example>",
     "=?utf-8?q?J=C3=B6rg?= =?utf-8?q?_Schmidt?= <" FWD ">",
     "=?utf-8?q?J=C3=B6rg?= =?utf-8?q?_Schmidt?= <j@a.example>",
     "=?utf-8?q?J=C3=B6rg?= =?utf-8?q?_Schmidt?=", "j@a.example"},
    /* an encoded-word inside quotes is text (RFC 2047 5) and stays quoted */
    {&OPT_NAME, "\"=?UTF-8?B?SsO2cmc=?=\" <j@a.example>", "\"=?UTF-8?B?SsO2cmc=?=\" <" FWD ">",
     "\"=?UTF-8?B?SsO2cmc=?=\" <j@a.example>", "\"=?UTF-8?B?SsO2cmc=?=\"", "j@a.example"},
    /* raw UTF-8 becomes encoded-words */
    {&OPT_NAME, "J\xc3\xb6rg <j@a.example>", "=?UTF-8?B?SsO2cmc=?= <" FWD ">",
     "=?UTF-8?B?SsO2cmc=?= <j@a.example>", "=?UTF-8?B?SsO2cmc=?=", "j@a.example"},
    {&OPT_NAME, "j@a.example", "\"j@a.example\" <" FWD ">", "<j@a.example>", "", "j@a.example"},
    {&OPT_NAME, "<j@a.example>", "\"j@a.example\" <" FWD ">", "<j@a.example>", "", "j@a.example"},
    {&OPT_NAME, "j@a.example (John Doe)", "\"John Doe\" <" FWD ">", "\"John Doe\" <j@a.example>",
     "\"John Doe\"", "j@a.example"},
    {&OPT_NAME, "John (the boss) Doe <j@a.example>", "\"John Doe\" <" FWD ">",
     "\"John Doe\" <j@a.example>", "\"John Doe\"", "j@a.example"},
    {&OPT_NAME, "\"Folded\n   Name\" <f@a.example>", "\"Folded Name\" <" FWD ">",
     "\"Folded Name\" <f@a.example>", "\"Folded Name\"", "f@a.example"},
    {&OPT_NAME, "John Q. Public <jqp@a.example>", "\"John Q. Public\" <" FWD ">",
     "\"John Q. Public\" <jqp@a.example>", "\"John Q. Public\"", "jqp@a.example"},
    {&OPT_NAME, "Doe, John <j@a.example>", "\"Doe, John\" <" FWD ">", "\"Doe, John\" <j@a.example>",
     "\"Doe, John\"", "j@a.example"},
    {&OPT_NAME, "\"\" <e@a.example>", "\"e@a.example\" <" FWD ">", "<e@a.example>", "",
     "e@a.example"},
    {&OPT_NAME, "A <a@a.example>, B <b@a.example>", "\"A\" <" FWD ">", "\"A\" <a@a.example>",
     "\"A\"", "a@a.example"},
    /* hostile: an unterminated quote swallows the address; no crash, no injection */
    {&OPT_NAME, "\"Alice <alice@a.example>", "\"rp@r.example\" <" FWD ">", "<rp@r.example>", "",
     ""},
    /* a stray ')' once hung the address parser (sendmail_parse_addresses) */
    {&OPT_NAME, "Alice) <alice@a.example>)", "\"Alice)\" <" FWD ">", "\"Alice)\" <alice@a.example>",
     "\"Alice)\"", "alice@a.example"},
    {&OPT_NAME, "Evil\x01Name\x7f <e@a.example>", "\"Evil Name\" <" FWD ">",
     "\"Evil Name\" <e@a.example>", "\"Evil Name\"", "e@a.example"},
    /* the "at" style */
    {&OPT_NAME_AT, "Alice Example <alice@a.example>",
     "\"Alice Example at alice@a.example\" <" FWD ">", "\"Alice Example\" <alice@a.example>",
     "\"Alice Example\"", "alice@a.example"},
    {&OPT_NAME_AT, "alice@a.example", "\"alice@a.example\" <" FWD ">", "<alice@a.example>", "",
     "alice@a.example"},
    {&OPT_NAME_AT, "=?UTF-8?B?SsO2cmc=?= <j@a.example>",
     "=?UTF-8?B?SsO2cmc=?= \"at j@a.example\" <" FWD ">", "=?UTF-8?B?SsO2cmc=?= <j@a.example>",
     "=?UTF-8?B?SsO2cmc=?=", "j@a.example"},
};

static void from_forms(void)
{
	size_t i;

	for (i = 0; i < sizeof(from_cases) / sizeof(from_cases[0]); i++) {
		const struct from_case *c = &from_cases[i];
		char *raw, *in, want[1024];
		const struct inbound_facts *f;
		struct run r;
		int n;

		n = asprintf(&raw,
		             "Return-Path: <rp@r.example>\nFrom: %s\nTo: me@example.com\n\nb\n",
		             c->from);
		CHECK(n > 0);
		in = crlf(raw);
		CHECK(run_all(&r, c->o, in, strlen(in)));
		f = inbound_msg_facts(r.m);
		if (strcmp(f->from_addr, c->want_addr) != 0 || strcmp(f->from_name, c->want_name))
			fprintf(stderr, "from %s: name %s addr %s\n", c->from, f->from_name,
			        f->from_addr);
		CHECK_STR(f->from_addr, c->want_addr);
		CHECK_STR(f->from_name, c->want_name);
		snprintf(want, sizeof(want), "From: %s", c->want_from);
		CHECK_STR(line_of(r.out, "From"), want);
		snprintf(want, sizeof(want), "Reply-To: %s", c->want_reply_to);
		CHECK_STR(line_of(r.out, "Reply-To"), want);
		CHECK_STR(line_of(r.out, "To"), "To: me@example.com");
		run_free(&r);
		free(in);
		free(raw);
	}
}

/* A name far over every cap: the From line still fits in 998 octets. */
static void from_name_capped(void)
{
	char *raw, *in, big[3000];
	const char *from;
	struct run r;

	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	CHECK(asprintf(&raw, "From: \"%s\" =?UTF-8?B?SsO2cmc=?= %s <a@a.example>\n\n", big, big) >
	      0);
	in = crlf(raw);
	CHECK(run_all(&r, &OPT_NAME_AT, in, strlen(in)));
	from = line_of(r.out, "From");
	CHECK(strncmp(from, "From: \"xxx", 10) == 0);
	CHECK(strstr(from, "x at a@a.example\" <" FWD ">") != NULL);
	CHECK(strlen(from) <= 998);
	CHECK(strstr(from, "<" FWD ">") != NULL);
	CHECK(strlen(line_of(r.out, "Reply-To")) <= 998);
	CHECK(strlen(inbound_msg_facts(r.m)->from_name) <= INBOUND_NAME_MAX);
	run_free(&r);
	free(in);
	free(raw);
}

/* --- recipients ------------------------------------------------------------ */

static const struct rcpt_case {
	const char *name;
	const char *head; /* header section, "\n" line ends */
	enum inbound_rcpt_source source;
	const char *want; /* recipients joined with " " */
} rcpt_cases[] = {
    {"received_for_bare",
     "Received: from h (h [1.2.3.4]) by inbound-smtp.us-east-1.amazonaws.com with SMTP "
     "id abc for me@example.com; Thu, 01 Jun 2023 01:02:03 +0000 (UTC)\n"
     "To: other@example.com\n",
     INBOUND_RCPT_RECEIVED, "me@example.com"},
    {"received_for_angle",
     "Received: from h (h [1.2.3.4]) by inbound-smtp.eu-west-1.amazonaws.com with SMTP "
     "id abc for <Me@Example.com>; Thu, 01 Jun 2023 01:02:03 +0000 (UTC)\n",
     INBOUND_RCPT_RECEIVED, "Me@Example.com"},
    {"received_for_folded",
     "Received: from mail-ej1-f41.google.com (mail-ej1-f41.google.com\n"
     " [209.85.218.41]) by inbound-smtp.us-east-1.amazonaws.com with SMTP id\n"
     " 8vfdqpuc5ln0u3ijdk7ngkq4b0i1lc0r5m3ghq81\n"
     "\tfor\n"
     "\t<me@example.com>;\n"
     " Thu, 01 Jun 2023 01:02:03 +0000 (UTC)\n",
     INBOUND_RCPT_RECEIVED, "me@example.com"},
    {"received_for_list",
     "Received: from h by inbound-smtp.us-east-1.amazonaws.com with SMTP id x for "
     "<a@example.com>, <b@example.com>; Thu, 01 Jun 2023 01:02:03 +0000\n",
     INBOUND_RCPT_RECEIVED, "a@example.com b@example.com"},
    {"received_comment_skipped",
     "Received: from h (for fake@evil.example) by inbound-smtp (for x@evil.example) with "
     "SMTP id x for me@example.com (comment; with semicolon); date\n",
     INBOUND_RCPT_RECEIVED, "me@example.com"},
    /* a HELO of "for" comes before "by": no recipient from it */
    {"received_helo_for",
     "Received: from for (fake@evil.example [1.2.3.4]) by inbound-smtp.us-east-1.amazonaws.com "
     "with SMTP id x; Thu, 01 Jun 2023 01:02:03 +0000\n"
     "To: me@example.com\n",
     INBOUND_RCPT_HEADERS, "me@example.com"},
    /* only the topmost Received is SES's: the others are the sender's */
    {"received_lower_ignored",
     "Received: from h by inbound-smtp.us-east-1.amazonaws.com with SMTP id x; date\n"
     "Received: from evil by evil for admin@example.com; date\n"
     "To: me@example.com\n",
     INBOUND_RCPT_HEADERS, "me@example.com"},
    {"headers_to_cc_groups_comments",
     "To: \"Doe, John\" <john@example.com>, team: a@example.com, (c) b@example.com (B);,\n"
     " undisclosed-recipients:;, <c@example.com>\n"
     "Cc: d@example.com,\n"
     "\tJOHN@EXAMPLE.COM, e@example.com (Eve)\n"
     "cc: \"quoted, name\" <f@example.com>\n"
     "Bcc: never@example.com\n",
     INBOUND_RCPT_HEADERS,
     "john@example.com a@example.com b@example.com c@example.com d@example.com e@example.com "
     "f@example.com"},
    {"headers_partly_broken",
     "To: ok@example.com, Bob, \"unterminated\n"
     "Cc: cc@example.com\n",
     INBOUND_RCPT_HEADERS, "ok@example.com cc@example.com"},
    {"headers_stray_parens",
     "To: a@example.com), ((nested) comment) b@example.com (x))\n"
     "Cc: <c)@example.com>, \"q)\" <d@example.com>\n",
     INBOUND_RCPT_HEADERS, "a@example.com b@example.com c@example.com d@example.com"},
    {"no_recipients",
     "Subject: none\n"
     "To: undisclosed-recipients:;\n",
     INBOUND_RCPT_NONE, ""},
};

static void recipients(void)
{
	size_t i, j;

	for (i = 0; i < sizeof(rcpt_cases) / sizeof(rcpt_cases[0]); i++) {
		const struct rcpt_case *c = &rcpt_cases[i];
		char *raw, *in, got[1024] = "";
		const struct inbound_facts *f;
		struct run r;

		CHECK(asprintf(&raw, "%sFrom: a@a.example\n\nbody\n", c->head) > 0);
		in = crlf(raw);
		CHECK(run_all(&r, &OPT_NAME, in, strlen(in)));
		f = inbound_msg_facts(r.m);
		for (j = 0; j < f->nrcpts; j++)
			snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%s", j ? " " : "",
			         f->rcpts[j]);
		if (strcmp(got, c->want) != 0 || f->rcpt_source != c->source)
			fprintf(stderr, "case %s: source %d rcpts %s\n", c->name, f->rcpt_source,
			        got);
		CHECK_STR(got, c->want);
		CHECK_INT(f->rcpt_source, c->source);
		if (strcmp(c->name, "headers_partly_broken") == 0)
			CHECK_INT(f->rcpt_errors, 1);
		/* recipients never change the header section */
		CHECK(strstr(r.out, "\r\nFrom: \"a@a.example\" <" FWD ">\r\n") != NULL ||
		      strncmp(r.out, "From: ", 6) == 0);
		run_free(&r);
		free(in);
		free(raw);
	}
}

static void recipients_capped(void)
{
	struct evbuffer *b = evbuffer_new();
	const struct inbound_facts *f;
	struct run r;
	char *in;
	size_t len;
	int i;

	evbuffer_add_printf(b, "From: a@a.example\r\nTo: ");
	for (i = 0; i < 1500; i++)
		evbuffer_add_printf(b, "%su%d@example.com", i ? ",\r\n " : "", i);
	evbuffer_add_printf(b, "\r\nCc: u0@example.com\r\n\r\n");
	len = evbuffer_get_length(b);
	in = malloc(len);
	evbuffer_remove(b, in, len);
	run(&r, &OPT_NAME, in, len, 4096);
	CHECK_INT(r.rc, 1);
	f = inbound_msg_facts(r.m);
	CHECK_INT(f->nrcpts, INBOUND_RCPT_MAX);
	CHECK_INT(f->rcpts_over, 500);
	CHECK_STR(f->rcpts[999], "u999@example.com");
	run_free(&r);
	free(in);
	evbuffer_free(b);
}

/* --- verdicts ---------------------------------------------------------------- */

static void verdicts(void)
{
	static const struct {
		const char *head, *spam, *virus;
		int receipt;
	} t[] = {
	    {"X-SES-Spam-Verdict: FAIL\nX-SES-Virus-Verdict: PASS\nX-SES-Receipt: x\n", "FAIL",
	     "PASS", 1},
	    {"X-SES-Spam-Verdict: GRAY\nX-SES-Virus-Verdict: PROCESSING_FAILED\n", "GRAY",
	     "PROCESSING_FAILED", 0},
	    {"x-ses-spam-verdict:PASS  \nx-ses-virus-verdict: FAIL (eicar)\n", "PASS", "FAIL", 0},
	    /* the sender's own copies come below SES's and do not count */
	    {"X-SES-Spam-Verdict: FAIL\nX-SES-Virus-Verdict: FAIL\nSubject: s\n"
	     "X-SES-Spam-Verdict: PASS\nX-SES-Virus-Verdict: PASS\n",
	     "FAIL", "FAIL", 0},
	    {"Subject: none\n", "", "", 0},
	    {"X-SES-Spam-Verdict: "
	     "AVERYLONGVERDICTVALUETHATGOESONANDONANDONANDONANDONANDON\n",
	     "AVERYLONGVERDICTVALUETHATGOESON", "", 0},
	};
	size_t i;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char *raw, *in;
		const struct inbound_facts *f;
		struct run r;

		CHECK(asprintf(&raw, "%sFrom: a@a.example\n\n", t[i].head) > 0);
		in = crlf(raw);
		CHECK(run_all(&r, &OPT_NAME, in, strlen(in)));
		f = inbound_msg_facts(r.m);
		CHECK_STR(f->spam_verdict, t[i].spam);
		CHECK_STR(f->virus_verdict, t[i].virus);
		CHECK_INT(f->ses_receipt, t[i].receipt);
		/* the verdict fields stay in the forwarded message */
		if (t[i].spam[0] != '\0')
			CHECK(strstr(r.out, "erdict") != NULL);
		run_free(&r);
		free(in);
		free(raw);
	}
}

/* --- line ends and NULs -------------------------------------------------------- */

/* The typical message with its CRLFs made LF, CR, or a mix: the output is
 * the CRLF message's output. */
static void line_ends_normalised(void)
{
	char *in = crlf(goldens[0].in), *want = crlf(goldens[0].want);
	size_t n = strlen(in), i, k;
	int variant;

	for (variant = 0; variant < 3; variant++) {
		char *v = malloc(n + 1);
		struct run r;

		for (i = k = 0; i < n; i++) {
			if (in[i] == '\r' && in[i + 1] == '\n') {
				/* 0: LF only, 1: CR only, 2: LF and CRLF mixed (a CR
				 * next to a LF would merge into one line end) */
				int how = variant == 2 ? (int)(k % 2) * 2 : variant;
				if (how == 0)
					v[k++] = '\n';
				else if (how == 1)
					v[k++] = '\r';
				else {
					v[k++] = '\r';
					v[k++] = '\n';
				}
				i++;
			} else {
				v[k++] = in[i];
			}
		}
		CHECK(run_all(&r, &OPT_NAME, v, k));
		if (strcmp(r.out, want) != 0)
			fprintf(stderr, "variant %d:\n%s\n", variant, r.out);
		CHECK_STR(r.out, want);
		run_free(&r);
		free(v);
	}
	free(in);
	free(want);
}

static void line_end_edge_cases(void)
{
	static const struct {
		const char *in, *want_body;
	} t[] = {
	    {"From: a@a.example\r\r\nbody",
	     "body\r\n"}, /* the CR ends the line, the CRLF is the blank one */
	    {"From: a@a.example\n\rbody\r", "body\r\n"}, /* LF, then a lone CR blank line */
	    {"From: a@a.example\r\n\r\na\r\rb\n\rc\r\n\r\n", "a\r\n\r\nb\r\n\r\nc\r\n\r\n"},
	    {"From: a@a.example\r\n\r\n\r", "\r\n"},
	    {"From: a@a.example\r\n\r\nx\r", "x\r\n"},
	};
	size_t i;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct run r;
		const char *body;

		CHECK(run_all(&r, &OPT_NAME, t[i].in, strlen(t[i].in)));
		body = strstr(r.out, "\r\n\r\n");
		CHECK(body != NULL);
		CHECK_STR(body + 4, t[i].want_body);
		run_free(&r);
	}
}

static void nul_dropped(void)
{
	static const char in[] = "From: a@a\0.example\r\nX-N\0ul: 1\r\n\0\r\nbo\0dy\0\r\n\0";
	struct run r;

	CHECK(run_all(&r, &OPT_NAME, in, sizeof(in) - 1));
	CHECK(memchr(r.out, '\0', r.len) == NULL);
	CHECK_STR(r.out, "From: \"a@a.example\" <" FWD ">\r\nReply-To: <a@a.example>\r\n"
	                 "X-Nul: 1\r\n\r\nbody\r\n");
	CHECK_INT(inbound_msg_facts(r.m)->nul_dropped, 6);
	run_free(&r);
}

/* --- malformed and oversized ----------------------------------------------------- */

static void malformed_counted(void)
{
	char *in = crlf(goldens[sizeof(goldens) / sizeof(goldens[0]) - 1].in);
	struct run r;

	CHECK(run_all(&r, &OPT_NAME, in, strlen(in)));
	CHECK_INT(inbound_msg_facts(r.m)->malformed, 4);
	run_free(&r);
	free(in);
}

/* Lines over 998 octets pass unchanged, in headers and body. */
static void long_lines_kept(void)
{
	size_t n = 5000;
	char *v = malloc(n + 1), *raw, *in, *head;
	struct run r;

	memset(v, 'v', n);
	v[n] = '\0';
	CHECK(asprintf(&raw, "X-Long: %s\nFrom: a@a.example\nX-Folded: a\n %s\n\n%s\n", v, v, v) >
	      0);
	in = crlf(raw);
	CHECK(run_all(&r, &OPT_NAME, in, strlen(in)));
	CHECK_INT(inbound_msg_facts(r.m)->long_lines, 2);
	CHECK(strncmp(r.out, "X-Long: vvv", 11) == 0);
	head = head_of(r.out);
	CHECK(strstr(head, v) != NULL);
	CHECK(strstr(head, "\r\nX-Folded: a\r\n vvv") != NULL);
	CHECK_INT(strlen(r.out), strlen(in) + strlen("Reply-To: <a@a.example>\r\n") +
	                             strlen("From: \"a@a.example\" <" FWD ">") -
	                             strlen("From: a@a.example"));
	free(head);
	run_free(&r);
	free(in);
	free(raw);
	free(v);
}

/* A header section over the cap fails, however it is fed, and stays failed. */
static void header_cap(void)
{
	static const size_t chunks[] = {0, 1, 1000, 65536};
	struct evbuffer *b = evbuffer_new();
	char *in;
	size_t len, i;

	evbuffer_add_printf(b, "From: a@a.example\r\n");
	while (evbuffer_get_length(b) <= INBOUND_HDR_MAX + 100)
		evbuffer_add_printf(b, "X-Filler: %0100d\r\n", 0);
	evbuffer_add_printf(b, "\r\nbody\r\n");
	len = evbuffer_get_length(b);
	in = malloc(len);
	evbuffer_remove(b, in, len);
	evbuffer_free(b);
	for (i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
		struct run r;

		run(&r, &OPT_NAME, in, len, chunks[i]);
		CHECK_INT(r.rc, -1);
		CHECK_INT(r.len, 0);
		CHECK(inbound_msg_error(r.m) != NULL);
		CHECK(strstr(inbound_msg_error(r.m), "header section over 262144 octets") != NULL);
		CHECK(r.max_buffered <= INBOUND_HDR_MAX + (chunks[i] ? chunks[i] : len));
		CHECK_INT(inbound_msg_feed(r.m, "x", 1), -1);
		CHECK_INT(inbound_msg_finish(r.m), -1);
		run_free(&r);
	}
	free(in);

	/* exactly at the cap (the blank line is not counted) is fine */
	b = evbuffer_new();
	evbuffer_add_printf(b, "From: a@a.example\r\n");
	while (evbuffer_get_length(b) + 102 <= INBOUND_HDR_MAX)
		evbuffer_add_printf(b, "X-Filler: %088d\r\n", 0);
	len = INBOUND_HDR_MAX - evbuffer_get_length(b);
	CHECK(len >= 14);
	evbuffer_add_printf(b, "X-Last: %0*d\r\n", (int)(len - 10), 0);
	CHECK_INT(evbuffer_get_length(b), INBOUND_HDR_MAX);
	evbuffer_add_printf(b, "\r\nbody\r\n");
	len = evbuffer_get_length(b);
	in = malloc(len);
	evbuffer_remove(b, in, len);
	evbuffer_free(b);
	{
		struct run r;
		run(&r, &OPT_NAME, in, len, 0);
		CHECK_INT(r.rc, 1);
		CHECK_INT(inbound_msg_facts(r.m)->header_size, INBOUND_HDR_MAX);
		run_free(&r);
	}
	free(in);
}

/* --- a large body streams in bounded memory --------------------------------------- */

static void large_body_streams(void)
{
	const size_t body_target = 5 * 1024 * 1024, chunk = 65536;
	struct inbound_msg *m = inbound_msg_new(&OPT_PREFIX);
	struct evbuffer *out = evbuffer_new();
	char *buf = malloc(chunk), *line;
	size_t fed = 0, outlen = 0, lines = 0, max_buf = 0, max_out = 0, i;
	uint64_t sum_in = 0, sum_out = 0;
	static const char head[] = "From: Big <big@a.example>\nSubject: big\n\n";
	int rc;

	rc = inbound_msg_feed(m, head, sizeof(head) - 1);
	CHECK_INT(rc, 1);
	inbound_msg_headers(m, out);
	CHECK_STR(inbound_msg_facts(m)->subject, "big");
	outlen += evbuffer_get_length(out);
	evbuffer_drain(out, evbuffer_get_length(out));
	CHECK(inbound_msg_buffered(m) == 0);

	/* LF-only lines of 76 octets, split across chunk boundaries anywhere */
	while (fed < body_target) {
		size_t n = 0;
		while (n < chunk) {
			char c = (lines % 77) == 76 ? '\n' : (char)('A' + lines % 26);
			buf[n++] = c;
			lines++;
			if (c != '\n')
				sum_in += (unsigned char)c;
		}
		inbound_msg_body(m, buf, n, out);
		fed += n;
		if (inbound_msg_buffered(m) > max_buf)
			max_buf = inbound_msg_buffered(m);
		if (evbuffer_get_length(out) > max_out)
			max_out = evbuffer_get_length(out);
		/* drain like a spool writer would */
		while (evbuffer_get_length(out) > 0) {
			struct evbuffer_iovec v;
			evbuffer_peek(out, -1, NULL, &v, 1);
			line = v.iov_base;
			for (i = 0; i < v.iov_len; i++)
				if (line[i] != '\r' && line[i] != '\n')
					sum_out += (unsigned char)line[i];
			outlen += v.iov_len;
			evbuffer_drain(out, v.iov_len);
		}
	}
	inbound_msg_body_end(m, out);
	CHECK_INT(evbuffer_get_length(out), 2); /* the last line's CRLF */
	outlen += evbuffer_get_length(out);
	CHECK(max_buf == 0);
	CHECK(max_out <= 2 * chunk + 2);
	CHECK_INT(sum_out, sum_in);
	/* every LF became CRLF, and a last partial line got one */
	{
		uint64_t lf = fed / 77, tail = fed % 77 ? 1 : 0;
		uint64_t want_body = fed + lf + 2 * tail;
		CHECK_INT(inbound_msg_facts(m)->body_size, want_body);
	}
	inbound_msg_free(m);
	evbuffer_free(out);
	free(buf);
}

/* --- options -------------------------------------------------------------------------- */

static void opts_checked(void)
{
	static const struct {
		struct inbound_msg_opts o;
		int ok;
	} t[] = {
	    {{"fwd@example.net", INBOUND_FROM_NAME, NULL}, 1},
	    {{"fwd@example.net", INBOUND_FROM_NAME_AT, "[inbound]"}, 1},
	    {{NULL, INBOUND_FROM_NAME, NULL}, 0},
	    {{"", INBOUND_FROM_NAME, NULL}, 0},
	    {{"no-at-sign", INBOUND_FROM_NAME, NULL}, 0},
	    {{"a@b@c.example", INBOUND_FROM_NAME, NULL}, 0},
	    {{"Name <a@example.net>", INBOUND_FROM_NAME, NULL}, 0},
	    {{"a@example.net\r\nBcc: x@y", INBOUND_FROM_NAME, NULL}, 0},
	    {{"fwd@example.net", (enum inbound_from_style)7, NULL}, 0},
	    {{"fwd@example.net", INBOUND_FROM_NAME, "bad\r\nBcc: x@y"}, 0},
	    {{"fwd@example.net", INBOUND_FROM_NAME, "caf\xc3\xa9"}, 0},
	    {{"fwd@example.net", INBOUND_FROM_NAME,
	      "0123456789012345678901234567890123456789012345678901234567890123456789"},
	     0},
	};
	char err[256];
	size_t i;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		err[0] = '\0';
		CHECK_INT(inbound_msg_opts_check(&t[i].o, err, sizeof(err)), t[i].ok ? 0 : -1);
		CHECK(t[i].ok || err[0] != '\0');
	}
}

/* A blank prefix is no prefix. */
static void blank_prefix_is_none(void)
{
	static const struct inbound_msg_opts o = {FWD, INBOUND_FROM_NAME, "   "};
	static const char in[] = "From: a@a.example\r\nSubject: s\r\n\r\n";
	struct run r;

	CHECK(run_all(&r, &o, in, sizeof(in) - 1));
	CHECK_STR(line_of(r.out, "Subject"), "Subject: s");
	run_free(&r);
}

static const struct unit_case cases[] = {
    {"golden", golden},
    {"typical_facts", typical_facts},
    {"from_forms", from_forms},
    {"from_name_capped", from_name_capped},
    {"recipients", recipients},
    {"recipients_capped", recipients_capped},
    {"verdicts", verdicts},
    {"line_ends_normalised", line_ends_normalised},
    {"line_end_edge_cases", line_end_edge_cases},
    {"nul_dropped", nul_dropped},
    {"malformed_counted", malformed_counted},
    {"long_lines_kept", long_lines_kept},
    {"header_cap", header_cap},
    {"large_body_streams", large_body_streams},
    {"opts_checked", opts_checked},
    {"blank_prefix_is_none", blank_prefix_is_none},
};

UNIT_MAIN(cases)
