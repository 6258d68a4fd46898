/*
 * inbound_msg.c - streaming rewrite of a message SES received, for
 * forwarding (see inbound_msg.h for the rules and the API).
 *
 * SUMMARY
 *	Bytes go through one line-end normaliser (CR, LF and CRLF all become
 *	CRLF, NULs go).  In the header phase the normalised lines collect in
 *	one buffer capped at INBOUND_HDR_MAX; the first empty line (or EOF)
 *	ends it.  The buffer is then read twice through next_field(): once for
 *	the facts, once, when the caller asks, to write the rewritten header
 *	section.  What happens to a field of a given name, on both passes, is
 *	the field_rules table.  After that the body streams through the same
 *	normaliser straight into the caller's evbuffer.
 *
 * DESCRIPTION
 *	A field is its first line plus every following line that starts with
 *	SP or HTAB, so removing a field removes its folded lines too.  A field
 *	is copied out byte-exact unless its rule says otherwise; only the first
 *	From and (with a prefix) the first Subject are rewritten, and the new
 *	From and Reply-To are built from parsed parts whose control characters
 *	were made spaces, so nothing from the message can start a header line.
 *
 *	This file owns the wire form of a forwarded message, nothing else.  It
 *	does no I/O and no logging, and it never decides whether a message is
 *	forwarded or to whom (the caller does, from the facts and
 *	relay/inbound_map).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include "relay/inbound_msg.h"
#include "relay/log.h"
#include "relay/sendmail.h"
#include "relay/util.h"

#define LINE_MAX_RFC 998 /* RFC 5322 2.1.1, without the CRLF */
#define HDR_INITIAL  4096
#define NAME_RUN_MAX 300 /* plain text of one display-name run, before quoting */

enum { ST_HEADER, ST_READY, ST_BODY, ST_DONE, ST_ERROR };

struct rcpt_list {
	char **v;
	size_t n, over;
};

struct inbound_msg {
	int state;
	char *from_address;
	enum inbound_from_style from_style;
	char *prefix; /* NULL: none */

	/* header phase */
	char *hdr; /* normalised header lines, CRLF each, no blank line */
	size_t hlen, hcap;
	size_t linelen;           /* octets of the current line so far */
	int cr;                   /* the last octet was a CR: a LF may follow */
	struct evbuffer *pending; /* body octets that came with the header section */

	/* what the header parse found, beyond the facts */
	int froms, subjects;
	char sender[INBOUND_ADDR_MAX + 1];      /* From's address, else the Return-Path */
	char from_phrase[INBOUND_NAME_MAX + 1]; /* display name for the new From */
	char *from_value;                       /* the first From, unfolded, while parsing */
	struct rcpt_list rcv, hdr_rcpts;

	int last_lf; /* the last body octet produced was LF */
	struct inbound_facts f;
	char err[128];
};

/* --- small helpers ------------------------------------------------------- */

static void add(struct evbuffer *b, const void *p, size_t n)
{
	if (n > 0 && evbuffer_add(b, p, n) == -1)
		fatalx("inbound_msg: evbuffer_add(%zu): out of memory", n);
}

static void add_str(struct evbuffer *b, const char *s)
{
	add(b, s, strlen(s));
}

static int is_wsp(int c)
{
	return c == ' ' || c == '\t';
}

/* Copy s, white space trimmed at both ends, into dst (cap octets + NUL). */
static void copy_trim(char *dst, size_t cap, const char *s)
{
	size_t n;

	while (is_wsp((unsigned char)*s))
		s++;
	n = strlen(s);
	while (n > 0 && is_wsp((unsigned char)s[n - 1]))
		n--;
	if (n > cap)
		n = cap;
	memcpy(dst, s, n);
	dst[n] = '\0';
}

/* Skip a comment at *pp == '(' (nested, with quoted pairs); an unterminated
 * one runs to the end of the string. */
static void skip_comment(const char **pp)
{
	const char *p = *pp;
	int depth = 0;

	for (; *p != '\0'; p++) {
		if (*p == '\\' && p[1] != '\0')
			p++;
		else if (*p == '(')
			depth++;
		else if (*p == ')' && --depth == 0) {
			p++;
			break;
		}
	}
	*pp = p;
}

/* Octets of the quoted string at p (from '"' to '"' included); an
 * unterminated one runs to the end. */
static size_t quoted_len(const char *p)
{
	size_t i;

	for (i = 1; p[i] != '\0'; i++) {
		if (p[i] == '\\' && p[i + 1] != '\0')
			i++;
		else if (p[i] == '"')
			return i + 1;
	}
	return i;
}

/* A plausible address: an '@' with something on both sides, no white
 * space, control character or angle bracket, at most INBOUND_ADDR_MAX. */
static int addr_ok(const char *a, size_t n)
{
	const char *at;
	size_t i;

	if (n == 0 || n > INBOUND_ADDR_MAX)
		return 0;
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)a[i];
		if (c <= 0x20 || c == 0x7f || c == '<' || c == '>')
			return 0;
	}
	at = memrchr(a, '@', n);
	return at != NULL && at != a && at != a + n - 1;
}

static void rcpt_add(struct rcpt_list *l, const char *a, size_t n)
{
	size_t i;

	for (i = 0; i < l->n; i++)
		if (strlen(l->v[i]) == n && strncasecmp(l->v[i], a, n) == 0)
			return;
	if (l->n == INBOUND_RCPT_MAX) {
		l->over++;
		return;
	}
	if (l->n % 16 == 0)
		l->v = xreallocarray(l->v, l->n + 16, sizeof(*l->v));
	l->v[l->n++] = xstrndup(a, n);
}

static void rcpt_free(struct rcpt_list *l)
{
	size_t i;

	for (i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	memset(l, 0, sizeof(*l));
}

/* --- display names ------------------------------------------------------- */

/*
 * A display name is rebuilt from its words: encoded-words are kept as they
 * were (RFC 2047 5: never inside a quoted string), every run of other words
 * becomes one quoted-string, or UTF-8 encoded-words when it has 8-bit octets.
 */
struct phrase {
	char out[INBOUND_NAME_MAX + 1];
	size_t len;
	char run[NAME_RUN_MAX + 1];
	size_t runlen;
};

/* =?charset?B|Q?text?= and nothing else */
static int is_encoded_word(const char *w, size_t n)
{
	size_t i = 2, cs;

	if (n < 8 || w[0] != '=' || w[1] != '?' || w[n - 2] != '?' || w[n - 1] != '=')
		return 0;
	for (cs = i; i < n && w[i] != '?'; i++)
		;
	if (i == cs || i + 3 >= n - 2 || strchr("BbQq", w[i + 1]) == NULL || w[i + 2] != '?')
		return 0;
	for (i += 3; i < n - 2; i++)
		if (w[i] == '?' || (unsigned char)w[i] <= 0x20 || (unsigned char)w[i] >= 0x7f)
			return 0;
	return 1;
}

/* Append item to the output, space-separated, if it fits; else drop it. */
static void phrase_item(struct phrase *ph, const char *s, size_t n)
{
	size_t sep = ph->len > 0;

	if (n == 0 || ph->len + sep + n > INBOUND_NAME_MAX)
		return;
	if (sep)
		ph->out[ph->len++] = ' ';
	memcpy(ph->out + ph->len, s, n);
	ph->len += n;
	ph->out[ph->len] = '\0';
}

static void phrase_flush(struct phrase *ph)
{
	char q[2 * NAME_RUN_MAX + 3], *enc;
	size_t i, n = 0;
	int eight = 0;

	if (ph->runlen == 0)
		return;
	ph->run[ph->runlen] = '\0';
	for (i = 0; i < ph->runlen; i++)
		eight |= (unsigned char)ph->run[i] >= 0x80;
	if (eight) {
		enc = sendmail_display_name(ph->run);
		phrase_item(ph, enc, strlen(enc));
		free(enc);
	} else {
		q[n++] = '"';
		for (i = 0; i < ph->runlen; i++) {
			if (ph->run[i] == '"' || ph->run[i] == '\\')
				q[n++] = '\\';
			q[n++] = ph->run[i];
		}
		q[n++] = '"';
		phrase_item(ph, q, n);
	}
	ph->runlen = 0;
}

/* Cut a UTF-8 sequence that the cap at *len left incomplete. */
static void utf8_trim(const char *s, size_t *len)
{
	size_t k = *len, need;
	unsigned char lead;

	while (k > 0 && ((unsigned char)s[k - 1] & 0xc0) == 0x80)
		k--;
	if (k == 0 || (lead = (unsigned char)s[k - 1]) < 0xc0)
		return;
	need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2;
	if (*len - (k - 1) < need)
		*len = k - 1;
}

/* Add plain text (white space collapsed) to the current run, cut at
 * NAME_RUN_MAX without splitting a UTF-8 sequence. */
static void phrase_text(struct phrase *ph, const char *s, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == 0x7f)
			c = ' ';
		if (c == ' ' && (ph->runlen == 0 || ph->run[ph->runlen - 1] == ' '))
			continue;
		if (ph->runlen == NAME_RUN_MAX) {
			utf8_trim(ph->run, &ph->runlen);
			break;
		}
		ph->run[ph->runlen++] = (char)c;
	}
	while (ph->runlen > 0 && ph->run[ph->runlen - 1] == ' ')
		ph->runlen--;
}

/* One word of a display name: a new word in the run gets a space first. */
static void phrase_word(struct phrase *ph, const char *s, size_t n, int may_be_ew)
{
	if (may_be_ew && is_encoded_word(s, n)) {
		phrase_flush(ph);
		phrase_item(ph, s, n);
	} else {
		if (ph->runlen > 0 && ph->runlen < NAME_RUN_MAX)
			ph->run[ph->runlen++] = ' ';
		phrase_text(ph, s, n);
	}
}

/* The words of an old-style "addr (Name)" comment; p at '('. */
static void phrase_comment(struct phrase *ph, const char *p)
{
	const char *end = p;
	char *txt, *w;
	size_t n;

	skip_comment(&end);
	n = (size_t)(end - p);
	if (n >= 2 && end[-1] == ')')
		n--;
	txt = xstrndup(p + 1, n - 1);
	for (w = txt; *w != '\0';) {
		w += strspn(w, " ");
		n = strcspn(w, " ");
		if (n > 0)
			phrase_word(ph, w, n, 1);
		w += n;
	}
	free(txt);
}

/* First '<' of v outside quoted strings and comments, or NULL. */
static const char *find_angle(const char *v)
{
	const char *p = v;

	while (*p != '\0') {
		if (*p == '"')
			p += quoted_len(p);
		else if (*p == '(')
			skip_comment(&p);
		else if (*p == '<')
			return p;
		else
			p++;
	}
	return NULL;
}

/*
 * The display name of a From value (control characters already spaces): the
 * words before the first <address>, or, without one, the first comment.
 * With at_addr, "at ADDR" follows the name, or ADDR alone without a name.
 */
static void make_phrase(const char *v, const char *at_addr, char *dst)
{
	struct phrase ph;
	const char *p = v, *angle = find_angle(v);
	char *tmp;
	size_t n, i, k;

	memset(&ph, 0, sizeof(ph));
	if (angle == NULL) {
		while (*p != '\0' && *p != '(')
			p += *p == '"' ? quoted_len(p) : 1;
		if (*p == '(')
			phrase_comment(&ph, p);
	} else {
		while (p < angle) {
			if (*p == ' ') {
				p++;
			} else if (*p == '"') {
				n = quoted_len(p);
				tmp = xmalloc(n);
				for (i = 1, k = 0; i < n && !(i == n - 1 && p[i] == '"'); i++) {
					if (p[i] == '\\' && i + 1 < n)
						i++;
					tmp[k++] = p[i];
				}
				phrase_word(&ph, tmp, k, 0);
				free(tmp);
				p += n;
			} else if (*p == '(') {
				skip_comment(&p);
			} else {
				n = strcspn(p, " \"(<");
				phrase_word(&ph, p, n, 1);
				p += n;
			}
		}
	}
	if (at_addr != NULL && *at_addr != '\0') {
		n = strlen(at_addr);
		if (ph.len > 0 || ph.runlen > 0) {
			/* make room: the address matters more than the end of a huge name */
			if (ph.runlen + 4 + n > NAME_RUN_MAX) {
				ph.runlen = NAME_RUN_MAX - 4 - n;
				utf8_trim(ph.run, &ph.runlen);
			}
			phrase_word(&ph, "at", 2, 0);
		}
		phrase_word(&ph, at_addr, n, 0);
	}
	phrase_flush(&ph);
	memcpy(dst, ph.out, ph.len + 1);
}

/* --- facts, one function per field kind ---------------------------------- */

/*
 * sendmail_parse_addresses() never returns on a ')' outside a comment (its
 * atom scanner stops at ')' without moving on).  Such a ')' is garbage in
 * any reading, so it becomes a space before the parser sees the value.
 * The walk follows the parser's rules: quoted strings and domain literals
 * with quoted pairs, nested comments.
 */
static void blank_stray_parens(char *v)
{
	char close = 0; /* '"' or ']' inside a quoted string or domain literal */
	int depth = 0;

	for (; *v != '\0'; v++) {
		if (*v == '\\' && v[1] != '\0' && (close || depth > 0))
			v++;
		else if (close)
			close = *v == close ? 0 : close;
		else if (*v == '(')
			depth++;
		else if (*v == ')')
			depth > 0 ? (void)depth-- : (void)(*v = ' ');
		else if (depth == 0 && (*v == '"' || *v == '['))
			close = *v == '"' ? '"' : ']';
	}
}

static int parse_addresses(char *v, void (*fn)(void *, const char *), void *arg)
{
	const char *why;

	blank_stray_parens(v);
	return sendmail_parse_addresses(v, fn, arg, &why);
}

static void from_addr_cb(void *arg, const char *addr)
{
	struct inbound_msg *m = arg;

	if (m->f.from_addr[0] == '\0' && addr_ok(addr, strlen(addr)))
		snprintf(m->f.from_addr, sizeof(m->f.from_addr), "%s", addr);
}

static void fact_from(struct inbound_msg *m, char *v)
{
	make_phrase(v, NULL, m->f.from_name);
	m->from_value = xstrdup(v);
	(void)parse_addresses(v, from_addr_cb, m);
}

static void fact_reply_to(struct inbound_msg *m, char *v)
{
	m->f.has_reply_to = 1;
}

/* "<a@b>", "a@b" or "<>" */
static void fact_return_path(struct inbound_msg *m, char *v)
{
	char a[INBOUND_ADDR_MAX + 3];
	size_t n;

	copy_trim(a, sizeof(a) - 1, v);
	n = strlen(a);
	if (n >= 2 && a[0] == '<' && a[n - 1] == '>') {
		memmove(a, a + 1, n - 2);
		n -= 2;
		a[n] = '\0';
	}
	if (addr_ok(a, n))
		memcpy(m->f.return_path, a, n + 1);
}

static void fact_subject(struct inbound_msg *m, char *v)
{
	copy_trim(m->f.subject, INBOUND_TEXT_MAX, v);
}

static void fact_message_id(struct inbound_msg *m, char *v)
{
	copy_trim(m->f.message_id, INBOUND_TEXT_MAX, v);
}

static void fact_date(struct inbound_msg *m, char *v)
{
	copy_trim(m->f.date, INBOUND_TEXT_MAX, v);
}

static void verdict(char *dst, const char *v)
{
	size_t n;

	v += strspn(v, " ");
	n = strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-");
	if (n > INBOUND_VERDICT_MAX)
		n = INBOUND_VERDICT_MAX;
	memcpy(dst, v, n);
	dst[n] = '\0';
}

static void fact_spam(struct inbound_msg *m, char *v)
{
	verdict(m->f.spam_verdict, v);
}

static void fact_virus(struct inbound_msg *m, char *v)
{
	verdict(m->f.virus_verdict, v);
}

static void fact_receipt(struct inbound_msg *m, char *v)
{
	m->f.ses_receipt = 1;
}

/* A path after "for": "<a@b>", "a@b", maybe with a list comma.  0 when it
 * is not an address (the next clause keyword: the for clause is over). */
static int received_path(struct inbound_msg *m, const char *p, size_t n)
{
	if (n > 0 && p[n - 1] == ',')
		n--;
	if (n >= 2 && p[0] == '<' && p[n - 1] == '>') {
		p++;
		n -= 2;
	}
	if (!addr_ok(p, n))
		return 0;
	rcpt_add(&m->rcv, p, n);
	return 1;
}

/*
 * SES's own Received: "from H (R [IP]) by inbound-smtp.REGION.amazonaws.com
 * with SMTP id ID for a@b; DATE".  Only a "for" after "by" counts, so a HELO
 * name of "for" cannot inject a recipient; comments are skipped.
 */
static void fact_received(struct inbound_msg *m, char *v)
{
	const char *p = v;
	int seen_by = 0, in_for = 0;
	size_t n;

	for (;;) {
		p += strspn(p, " ");
		if (*p == '\0' || *p == ';')
			break;
		if (*p == '(') {
			skip_comment(&p);
			continue;
		}
		for (n = 0; p[n] != '\0' && strchr(" ;(", p[n]) == NULL;)
			n += p[n] == '"' ? quoted_len(p + n) : 1;
		if (in_for)
			in_for = received_path(m, p, n);
		else if (n == 2 && strncasecmp(p, "by", 2) == 0)
			seen_by = 1;
		else if (n == 3 && strncasecmp(p, "for", 3) == 0 && seen_by)
			in_for = 1;
		p += n;
	}
}

static void hdr_rcpt_cb(void *arg, const char *addr)
{
	struct inbound_msg *m = arg;
	size_t n = strlen(addr);

	if (addr_ok(addr, n))
		rcpt_add(&m->hdr_rcpts, addr, n);
}

/* To, Cc: what parses before an error is kept. */
static void fact_rcpt_list(struct inbound_msg *m, char *v)
{
	if (parse_addresses(v, hdr_rcpt_cb, m) == -1)
		m->f.rcpt_errors++;
}

/* --- the field table ----------------------------------------------------- */

enum { OUT_KEEP, OUT_DROP, OUT_FROM, OUT_SUBJECT };
#define RULE_EVERY 0x01 /* facts from every occurrence, not just the first */

static const struct field_rule {
	const char *name;
	int out; /* what the field becomes in the forwarded message */
	int flags;
	void (*fact)(struct inbound_msg *m, char *value); /* value: unfolded, theirs to change */
} field_rules[] = {
    {"From", OUT_FROM, 0, fact_from},
    {"Reply-To", OUT_KEEP, 0, fact_reply_to},
    {"Return-Path", OUT_DROP, 0, fact_return_path},
    {"Sender", OUT_DROP, 0, NULL},
    {"Message-ID", OUT_DROP, 0, fact_message_id},
    {"DKIM-Signature", OUT_DROP, 0, NULL},
    {"Subject", OUT_SUBJECT, 0, fact_subject},
    {"Date", OUT_KEEP, 0, fact_date},
    {"Received", OUT_KEEP, 0, fact_received},
    {"To", OUT_KEEP, RULE_EVERY, fact_rcpt_list},
    {"Cc", OUT_KEEP, RULE_EVERY, fact_rcpt_list},
    {"X-SES-Spam-Verdict", OUT_KEEP, 0, fact_spam},
    {"X-SES-Virus-Verdict", OUT_KEEP, 0, fact_virus},
    {"X-SES-Receipt", OUT_KEEP, 0, fact_receipt},
};
#define NRULES (sizeof(field_rules) / sizeof(field_rules[0]))

struct field {
	const char *p; /* first line and continuation lines, CRLFs included */
	size_t len;
	size_t namelen;  /* 0: malformed */
	const char *val; /* after the colon, to the end of the field */
	size_t vallen;
};

static int name_ok(const char *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if ((unsigned char)p[i] <= 0x20 || (unsigned char)p[i] >= 0x7f)
			return 0;
	return n > 0;
}

/* The field at *off of the header buffer (CRLF lines only); 0 at the end. */
static int next_field(const char *buf, size_t len, size_t *off, struct field *f)
{
	const char *p = buf + *off, *end = buf + len, *q, *colon;
	size_t n;

	if (p >= end)
		return 0;
	q = (const char *)memchr(p, '\n', (size_t)(end - p)) + 1;
	f->p = p;
	f->namelen = 0;
	if (!is_wsp((unsigned char)*p) && (colon = memchr(p, ':', (size_t)(q - p))) != NULL) {
		n = (size_t)(colon - p);
		while (n > 0 && is_wsp((unsigned char)p[n - 1]))
			n--; /* obs-optional: "Subject : x" */
		if (name_ok(p, n)) {
			f->namelen = n;
			f->val = colon + 1;
		}
	}
	while (q < end && is_wsp((unsigned char)*q))
		q = (const char *)memchr(q, '\n', (size_t)(end - q)) + 1;
	f->len = (size_t)(q - p);
	f->vallen = f->namelen ? (size_t)(q - f->val) : 0;
	*off += f->len;
	return 1;
}

static const struct field_rule *rule_for(const struct field *f, size_t *idx)
{
	size_t i;

	for (i = 0; i < NRULES; i++)
		if (strlen(field_rules[i].name) == f->namelen &&
		    strncasecmp(field_rules[i].name, f->p, f->namelen) == 0) {
			*idx = i;
			return &field_rules[i];
		}
	return NULL;
}

/* The value unfolded (CRLFs removed), control characters made spaces. */
static char *unfold(const struct field *f)
{
	char *s = xmalloc(f->vallen + 1), *w = s;
	size_t i;

	for (i = 0; i < f->vallen; i++) {
		unsigned char c = (unsigned char)f->val[i];
		if (c == '\r' || c == '\n')
			continue;
		*w++ = c < 0x20 || c == 0x7f ? ' ' : (char)c;
	}
	*w = '\0';
	return s;
}

static void parse_headers(struct inbound_msg *m)
{
	const struct field_rule *r;
	size_t off = 0, idx, seen[NRULES] = {0};
	struct field f;
	char *v;

	while (next_field(m->hdr, m->hlen, &off, &f)) {
		if (f.namelen == 0) {
			m->f.malformed++;
			continue;
		}
		if ((r = rule_for(&f, &idx)) == NULL || r->fact == NULL)
			continue;
		if (seen[idx]++ > 0 && !(r->flags & RULE_EVERY))
			continue;
		v = unfold(&f);
		r->fact(m, v);
		free(v);
	}

	/* the recipients: SES's envelope when it told us, else the headers */
	if (m->rcv.n > 0) {
		m->f.rcpt_source = INBOUND_RCPT_RECEIVED;
		m->f.rcpts = m->rcv.v;
		m->f.nrcpts = m->rcv.n;
		m->f.rcpts_over = m->rcv.over;
	} else if (m->hdr_rcpts.n > 0) {
		m->f.rcpt_source = INBOUND_RCPT_HEADERS;
		m->f.rcpts = m->hdr_rcpts.v;
		m->f.nrcpts = m->hdr_rcpts.n;
		m->f.rcpts_over = m->hdr_rcpts.over;
	}

	/* the sender and the name on the new From */
	snprintf(m->sender, sizeof(m->sender), "%s",
	         m->f.from_addr[0] != '\0' ? m->f.from_addr : m->f.return_path);
	if (m->from_style == INBOUND_FROM_NAME && m->f.from_name[0] != '\0')
		memcpy(m->from_phrase, m->f.from_name, sizeof(m->from_phrase));
	else
		make_phrase(m->from_value != NULL ? m->from_value : "", m->sender, m->from_phrase);
	free(m->from_value);
	m->from_value = NULL;
}

/* --- output -------------------------------------------------------------- */

static void put_from(struct inbound_msg *m, struct evbuffer *out)
{
	add_str(out, "From: ");
	if (m->from_phrase[0] != '\0') {
		add_str(out, m->from_phrase);
		add_str(out, " ");
	}
	evbuffer_add_printf(out, "<%s>\r\n", m->from_address);
	if (m->f.has_reply_to || m->sender[0] == '\0')
		return;
	add_str(out, "Reply-To: ");
	if (m->f.from_name[0] != '\0') {
		add_str(out, m->f.from_name);
		add_str(out, " ");
	}
	evbuffer_add_printf(out, "<%s>\r\n", m->sender);
}

/* "Subject: PREFIX ORIGINAL", the original's folded lines as they were. */
static void put_subject(struct inbound_msg *m, struct evbuffer *out, const struct field *f)
{
	const char *v = f->val, *end = f->val + f->vallen;
	size_t plen = strlen(m->prefix);

	while (v < end && is_wsp((unsigned char)*v))
		v++;
	add_str(out, "Subject: ");
	if (*v == '\r') /* empty first line: no space to add, none to keep */
		while (plen > 0 && is_wsp((unsigned char)m->prefix[plen - 1]))
			plen--;
	add(out, m->prefix, plen);
	if (*v != '\r' && !is_wsp((unsigned char)m->prefix[plen - 1]))
		add_str(out, " ");
	add(out, v, (size_t)(end - v));
}

static void emit_headers(struct inbound_msg *m, struct evbuffer *out)
{
	const struct field_rule *r;
	size_t off = 0, idx;
	struct field f;
	int froms = 0, subjects = 0;

	while (next_field(m->hdr, m->hlen, &off, &f)) {
		if (f.namelen == 0)
			continue;
		r = rule_for(&f, &idx);
		switch (r != NULL ? r->out : OUT_KEEP) {
		case OUT_DROP:
			continue;
		case OUT_FROM:
			if (froms++ == 0)
				put_from(m, out); /* a second From is dropped */
			continue;
		case OUT_SUBJECT:
			if (subjects++ == 0 && m->prefix != NULL) {
				put_subject(m, out, &f);
				continue;
			}
			break;
		}
		add(out, f.p, f.len);
	}
	if (froms == 0)
		put_from(m, out);
	if (subjects == 0 && m->prefix != NULL) {
		size_t plen = strlen(m->prefix);
		while (plen > 0 && is_wsp((unsigned char)m->prefix[plen - 1]))
			plen--;
		add_str(out, "Subject: ");
		add(out, m->prefix, plen);
		add_str(out, "\r\n");
	}
	add_str(out, "\r\n");
}

/* --- normalisation and the two phases ------------------------------------ */

static int hdr_put(struct inbound_msg *m, const char *p, size_t n)
{
	if (m->hlen + n > INBOUND_HDR_MAX) {
		snprintf(m->err, sizeof(m->err), "header section over %d octets", INBOUND_HDR_MAX);
		m->state = ST_ERROR;
		return -1;
	}
	if (m->hlen + n > m->hcap) {
		m->hcap = m->hcap ? m->hcap * 2 : HDR_INITIAL;
		if (m->hcap > INBOUND_HDR_MAX)
			m->hcap = INBOUND_HDR_MAX;
		m->hdr = xrealloc(m->hdr, m->hcap);
	}
	memcpy(m->hdr + m->hlen, p, n);
	m->hlen += n;
	return 0;
}

/* A line end in the header phase: 1 when it ends the header section. */
static int hdr_newline(struct inbound_msg *m)
{
	if (m->linelen == 0)
		return 1;
	if (m->linelen > LINE_MAX_RFC)
		m->f.long_lines++;
	m->linelen = 0;
	return hdr_put(m, "\r\n", 2);
}

static void body_put(struct inbound_msg *m, struct evbuffer *out, const void *p, size_t n)
{
	if (n == 0)
		return;
	add(out, p, n);
	m->f.body_size += n;
	m->last_lf = ((const char *)p)[n - 1] == '\n';
}

/* Body octets to out, CRLF line ends, no NULs; runs go out unsplit. */
static void body_norm(struct inbound_msg *m, const unsigned char *p, size_t n, struct evbuffer *out)
{
	size_t i = 0, run;

	if (n == 0)
		return;
	if (m->cr) {
		m->cr = 0;
		body_put(m, out, "\r\n", 2);
		if (p[0] == '\n')
			i = 1;
	}
	for (run = i; i < n; i++) {
		if (p[i] == '\r') {
			if (i + 1 < n && p[i + 1] == '\n') {
				i++;
				continue;
			}
			body_put(m, out, p + run, i - run);
			run = i + 1;
			if (i + 1 == n)
				m->cr = 1; /* its LF may come in the next chunk */
			else
				body_put(m, out, "\r\n", 2);
		} else if (p[i] == '\n') {
			body_put(m, out, p + run, i - run);
			body_put(m, out, "\r\n", 2);
			run = i + 1;
		} else if (p[i] == '\0') {
			body_put(m, out, p + run, i - run);
			m->f.nul_dropped++;
			run = i + 1;
		}
	}
	body_put(m, out, p + run, n - run);
}

static void header_complete(struct inbound_msg *m)
{
	m->state = ST_READY;
	m->f.header_size = m->hlen;
	parse_headers(m);
}

int inbound_msg_feed(struct inbound_msg *m, const void *data, size_t len)
{
	const unsigned char *p = data;
	size_t i;
	int r;

	if (m->state == ST_ERROR)
		return -1;
	ASSERT(m->state == ST_HEADER);
	for (i = 0; i < len; i++) {
		unsigned char c = p[i];

		if (m->cr) {
			m->cr = 0;
			if ((r = hdr_newline(m)) != 0) {
				if (r == -1)
					return -1;
				i += c == '\n'; /* the LF of this CRLF */
				goto done;
			}
			if (c == '\n')
				continue;
		}
		if (c == '\r') {
			m->cr = 1;
		} else if (c == '\n') {
			if ((r = hdr_newline(m)) != 0) {
				if (r == -1)
					return -1;
				i++;
				goto done;
			}
		} else if (c == '\0') {
			m->f.nul_dropped++;
		} else {
			if (hdr_put(m, (const char *)&c, 1) == -1)
				return -1;
			m->linelen++;
		}
	}
	return 0;
done:
	body_norm(m, p + i, len - i, m->pending);
	header_complete(m);
	return 1;
}

int inbound_msg_finish(struct inbound_msg *m)
{
	int r = 0;

	if (m->state == ST_ERROR)
		return -1;
	ASSERT(m->state == ST_HEADER);
	if (m->cr) {
		m->cr = 0;
		r = hdr_newline(m);
	}
	if (r == 0 && m->linelen > 0)
		r = hdr_newline(m); /* the last line, without its line end */
	if (r == -1)
		return -1;
	header_complete(m);
	return 1;
}

const char *inbound_msg_error(const struct inbound_msg *m)
{
	return m->err[0] != '\0' ? m->err : NULL;
}

const struct inbound_facts *inbound_msg_facts(const struct inbound_msg *m)
{
	ASSERT(m->state == ST_READY || m->state == ST_BODY || m->state == ST_DONE);
	return &m->f;
}

void inbound_msg_headers(struct inbound_msg *m, struct evbuffer *out)
{
	ASSERT(m->state == ST_READY);
	emit_headers(m, out);
	if (evbuffer_add_buffer(out, m->pending) == -1)
		fatalx("inbound_msg: evbuffer_add_buffer: out of memory");
	free(m->hdr);
	m->hdr = NULL;
	m->hlen = m->hcap = 0;
	m->state = ST_BODY;
}

void inbound_msg_body(struct inbound_msg *m, const void *data, size_t len, struct evbuffer *out)
{
	ASSERT(m->state == ST_BODY);
	body_norm(m, data, len, out);
}

void inbound_msg_body_end(struct inbound_msg *m, struct evbuffer *out)
{
	ASSERT(m->state == ST_BODY);
	if (m->cr) {
		m->cr = 0;
		body_put(m, out, "\r\n", 2);
	}
	if (m->f.body_size > 0 && !m->last_lf)
		body_put(m, out, "\r\n", 2);
	m->state = ST_DONE;
}

size_t inbound_msg_buffered(const struct inbound_msg *m)
{
	return m->hcap + evbuffer_get_length(m->pending);
}

/* --- life cycle ---------------------------------------------------------- */

static int addr_spec_ok(const char *a)
{
	size_t n = strlen(a);
	const char *at = strchr(a, '@');

	if (!addr_ok(a, n) || at != strrchr(a, '@'))
		return 0;
	return strpbrk(a, "()[]\\,;:\"") == NULL;
}

int inbound_msg_opts_check(const struct inbound_msg_opts *o, char *err, size_t errlen)
{
	const char *p;

	if (o->from_address == NULL || !addr_spec_ok(o->from_address)) {
		snprintf(err, errlen, "from address \"%s\" is not a plain user@domain address",
		         o->from_address ? o->from_address : "");
		return -1;
	}
	if (o->from_style != INBOUND_FROM_NAME && o->from_style != INBOUND_FROM_NAME_AT) {
		snprintf(err, errlen, "unknown from style %d", (int)o->from_style);
		return -1;
	}
	if (o->subject_prefix == NULL)
		return 0;
	if (strlen(o->subject_prefix) > INBOUND_PREFIX_MAX) {
		snprintf(err, errlen, "subject prefix longer than %d octets", INBOUND_PREFIX_MAX);
		return -1;
	}
	for (p = o->subject_prefix; *p != '\0'; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f) {
			snprintf(err, errlen, "subject prefix must be printable US-ASCII");
			return -1;
		}
	return 0;
}

struct inbound_msg *inbound_msg_new(const struct inbound_msg_opts *o)
{
	struct inbound_msg *m;
	char err[128];

	if (inbound_msg_opts_check(o, err, sizeof(err)) == -1)
		fatalx("inbound_msg_new: %s", err);
	m = xcalloc(1, sizeof(*m));
	m->state = ST_HEADER;
	m->from_address = xstrdup(o->from_address);
	m->from_style = o->from_style;
	if (o->subject_prefix != NULL &&
	    o->subject_prefix[strspn(o->subject_prefix, " \t")] != '\0')
		m->prefix = xstrdup(o->subject_prefix);
	if ((m->pending = evbuffer_new()) == NULL)
		fatalx("inbound_msg_new: evbuffer_new: out of memory");
	return m;
}

void inbound_msg_free(struct inbound_msg *m)
{
	if (m == NULL)
		return;
	rcpt_free(&m->rcv);
	rcpt_free(&m->hdr_rcpts);
	free(m->hdr);
	evbuffer_free(m->pending);
	free(m->from_address);
	free(m->prefix);
	free(m);
}
