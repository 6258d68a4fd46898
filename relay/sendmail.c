/*
 * sendmail.c - sendmail(8)-compatible submission for cron, scripts, PHP
 * mail() and git: "sesrelay sendmail [flags] [RCPT...]", or the binary
 * invoked as "sendmail" (a symlink /usr/sbin/sendmail -> sesrelay).
 *
 * DESIGN
 *   It never writes the spool itself: it is a short-lived SMTP client of the
 *   running daemon, so every message takes the same path (relay control,
 *   limits, Received:, fsync before 250) and needs no privilege.  The
 *   daemon adds Date and Message-ID only for authenticated submissions
 *   (SPEC 4), so this client adds them when they are missing.
 *   1. Options (Postfix's getopt letters, grouping and attached or separate
 *      arguments); "-c FILE" was already taken out by main.c, sendmail's own
 *      "-C FILE" overrides it.
 *   2. The config (78 on errors, as the daemon would report them; the file
 *      must be readable by the calling user) and the listener to use: the
 *      first [listen:*] on loopback or on the wildcard address (then
 *      127.0.0.1 or ::1 is dialled), with tls = none, auth = off or optional,
 *      no proxy_protocol, and 127.0.0.1 (::1) in its relay_networks.
 *   3. The whole message is read from stdin before connecting, so a slow
 *      producer never holds an SMTP session open.  Line ends become CRLF
 *      (bare LF and a lone CR alike), lines are dot-stuffed, lines over 998
 *      octets are broken with CRLF SPACE (what Postfix does), a NUL is
 *      refused.  Without -i a line "." ends the input.  A leading mbox
 *      "From " line is dropped.  The header section is kept in memory:
 *      Bcc:/Resent-Bcc: are always removed (never shown to recipients);
 *      with -t the recipients are read from To/Cc/Bcc (or Resent-To/Cc/Bcc
 *      when present) in addition to the arguments; a missing From: (with
 *      -F NAME: "NAME <sender>"), Date: and Message-ID: are added.  Input is
 *      capped at [relay] max_message_size (40 MB when unset), and at the
 *      relay's SIZE when that is smaller.
 *   4. Blocking SMTP over loopback with a 60 s timeout on every read and
 *      write: EHLO localhost, MAIL FROM (SIZE=, BODY=8BITMIME when the
 *      message has 8-bit bytes), RCPT TO each recipient, DATA, QUIT; more
 *      recipients than max_recipients go in several transactions on the same
 *      connection (10000 recipients at most).  Exit 0 only after 250 to the
 *      final dot, which the daemon sends only once the message is fsync'd.
 *   Recipients and -f addresses without '@' get "@" [relay] hostname; the
 *   default sender is the calling user's login name @ hostname.
 *
 * EXIT CODES (sysexits, as sendmail(8); not the 2 of the other commands)
 *   0 queued; 64 usage (bad flag, unsupported mode, no recipients, bad or
 *   too many argument addresses); 65 data (message too large, NUL byte,
 *   unreadable To/Cc/Bcc with -t, over 10000 recipients); 67 a recipient
 *   refused (5xx at RCPT); 69 other 5xx; 74 stdin read error; 75 temporary
 *   (relay unreachable, timeout, 4xx, connection lost); 76 garbled reply;
 *   78 config.  Each failure is one line on stderr; nothing is ever written
 *   to stdout.
 */
#include <errno.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <openssl/evp.h>

#include "conf/conf.h"
#include "relay/netaddr.h"
#include "relay/sendmail.h"
#include "relay/util.h"

#define SM_TIMEOUT        60                    /* seconds, every read and write */
#define SM_LINE_MAX       998                   /* octets per line on the wire, CRLF excluded */
#define SM_ADDR_MAX       256                   /* RFC 5321 path */
#define SM_RCPTS_MAX      10000                 /* per message, in as many transactions as needed */
#define SM_REPLY_LINE_MAX 1024                  /* generous: RFC 5321 says 512 */
#define SM_REPLY_LINES    200                   /* lines in one multi-line reply */
#define SM_DEFAULT_MAX    (40ULL * 1024 * 1024) /* when the config has no limit */
#define SM_HELP           (-2)                  /* parse_options: --help */
#define SM_DONE           (-3)                  /* a "." line ended the input */
#define SM_ARGOPTS        "ABCFLNORVXbefhopr"   /* letters taking an argument */
#define SM_IGNORED        "GUmnv"               /* accepted flags without effect */

static const char sm_usage[] =
    "usage: sendmail [-t] [-i] [-f FROM] [-F NAME] [-C FILE] [--] [RCPT...]\n"
    "  reads one message on stdin and queues it with the running sesrelay\n"
    "  -t       recipients from To:, Cc:, Bcc: (plus RCPT...); Bcc: is removed\n"
    "  -i, -oi  a line with a single '.' does not end the message\n"
    "  -f FROM  envelope sender (also -r); default: your login name @ hostname\n"
    "  -F NAME  full name for the From: header added when the message has none\n"
    "  -C FILE  relay.ini (as -c)\n"
    "  ignored: -B TYPE, -N DSN, -R RET, -V ENVID, -X FILE, -L TAG, -o*, -O*, -v, -bm\n";

struct sm_field {
	char *text; /* physical lines joined by '\n', no CR */
	size_t len;
};

struct sm {
	const char *config;
	struct conf *conf;

	/* options */
	int extract;     /* -t */
	int ignore_dots; /* -i, -oi */
	const char *from_arg;
	const char *fullname;
	char **args; /* recipient arguments, pointers into argv */
	size_t nargs;

	/* envelope */
	char *user_addr; /* login@hostname */
	char *sender;    /* "" for <> */
	char **rcpts;
	size_t nrcpts;
	const char *bad_rcpt; /* set by add_rcpt_cb */

	/* the message, wire form: CRLF, dot-stuffed, no final dot */
	struct evbuffer *out;
	uint64_t max;
	int eightbit;
	int in_headers, first_line;
	struct sm_field *fields;
	size_t nfields;
	size_t header_bytes;
	char *line;
	size_t linelen, linecap;

	/* where the relay listens */
	struct sockaddr_storage ss;
	socklen_t sslen;
	char where[80];
};

static int sm_err(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int sm_err(int code, const char *fmt, ...)
{
	va_list ap;

	fputs("sesrelay sendmail: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return code;
}

int sendmail_invoked_as(const char *argv0)
{
	const char *b;

	if (argv0 == NULL)
		return 0;
	b = strrchr(argv0, '/');
	return strcmp(b ? b + 1 : argv0, "sendmail") == 0;
}

/* ---- addresses ------------------------------------------------------------ */

struct addrbuf {
	char s[SM_ADDR_MAX + 1];
	size_t len;
	int overflow;
};

static void ab_add(struct addrbuf *b, const char *p, size_t n)
{
	if (b->len + n > SM_ADDR_MAX) {
		b->overflow = 1;
		return;
	}
	memcpy(b->s + b->len, p, n);
	b->len += n;
	b->s[b->len] = '\0';
}

static void ab_reset(struct addrbuf *b)
{
	b->len = 0;
	b->s[0] = '\0';
	b->overflow = 0;
}

/* Skip a comment starting at *p == '('.  0, or -1 when unterminated. */
static int skip_comment(const char **pp)
{
	const char *p = *pp;
	int depth = 0;

	for (; *p; p++) {
		if (*p == '\\' && p[1] != '\0')
			p++;
		else if (*p == '(')
			depth++;
		else if (*p == ')' && --depth == 0) {
			*pp = p + 1;
			return 0;
		}
	}
	return -1;
}

/* Length of the quoted string or domain literal at p (from open to close
 * included), or 0 when it is unterminated. */
static size_t delimited_len(const char *p, char close)
{
	size_t i;

	for (i = 1; p[i]; i++) {
		if (p[i] == '\\' && p[i + 1] != '\0')
			i++;
		else if (p[i] == close)
			return i + 1;
	}
	return 0;
}

static int has_control(const char *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f)
			return 1;
	return 0;
}

static int is_atom_end(unsigned char c)
{
	return c == '\0' || strchr(" \t\r\n()<>[]:;,\"", c) != NULL;
}

/* Emit the address of one mailbox; -1 on error. */
static int finish_mailbox(struct addrbuf *cur, struct addrbuf *ang, int have_angle, int phrase,
                          void (*fn)(void *, const char *), void *arg, int *count, const char **why)
{
	const char *a;
	size_t i;
	int q = 0;

	if (have_angle) {
		if (ang->overflow)
			return *why = "address longer than 256 octets", -1;
		a = ang->s;
		if (a[0] == '@') /* source route "@a,@b:user@dom": keep what follows ':' */
			for (i = 0; a[i]; i++) {
				if (a[i] == '"')
					q = !q;
				else if (a[i] == '\\' && a[i + 1] != '\0')
					i++;
				else if (a[i] == ':' && !q) {
					a += i + 1;
					break;
				}
			}
	} else {
		if (phrase)
			return *why = "a name without an <address>", -1;
		if (cur->overflow)
			return *why = "address longer than 256 octets", -1;
		a = cur->s;
	}
	if (*a == '\0')
		return 0;
	fn(arg, a);
	(*count)++;
	return 0;
}

int sendmail_parse_addresses(const char *list, void (*fn)(void *, const char *), void *arg,
                             const char **why)
{
	struct addrbuf cur, ang;
	const char *p = list;
	int in_angle = 0, have_angle = 0, in_group = 0, space = 0, phrase = 0, count = 0;
	size_t n;

	ab_reset(&cur);
	ab_reset(&ang);
	for (;;) {
		unsigned char c = (unsigned char)*p;
		struct addrbuf *b = in_angle ? &ang : &cur;

		if (c == '\0' || ((c == ',' || c == ';') && !in_angle)) {
			if (in_angle)
				return *why = "'<' without '>'", -1;
			if (finish_mailbox(&cur, &ang, have_angle, phrase, fn, arg, &count, why) ==
			    -1)
				return -1;
			if (c == ';') {
				if (!in_group)
					return *why = "';' outside a group", -1;
				in_group = 0;
			}
			if (c == '\0')
				return count;
			ab_reset(&cur);
			ab_reset(&ang);
			have_angle = phrase = space = 0;
			p++;
			continue;
		}
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			space = 1;
			p++;
		} else if (c == '(') {
			if (skip_comment(&p) == -1)
				return *why = "unterminated comment", -1;
			space = 1;
		} else if (c == '<') {
			if (in_angle || have_angle)
				return *why = "two <addresses> in one mailbox", -1;
			in_angle = have_angle = 1;
			space = 0;
			p++;
		} else if (c == '>') {
			if (!in_angle)
				return *why = "'>' without '<'", -1;
			in_angle = 0;
			space = 1;
			p++;
		} else if (c == ':' && !in_angle) {
			if (in_group)
				return *why = "a group inside a group", -1;
			in_group = 1; /* what came before was the group's name */
			ab_reset(&cur);
			have_angle = phrase = space = 0;
			p++;
		} else if (c < 0x20 || c == 0x7f) {
			return *why = "control character in an address", -1;
		} else {
			if (c == '"' || c == '[') {
				if ((n = delimited_len(p, c == '"' ? '"' : ']')) == 0)
					return *why = c == '"' ? "unterminated quoted string"
					                       : "unterminated domain literal",
					       -1;
			} else if (strchr(":;,]", c)) { /* inside <>: route punctuation */
				n = 1;
			} else if (c == ')') {
				return *why = "')' without '('", -1;
			} else {
				for (n = 0; !is_atom_end((unsigned char)p[n]); n++)
					;
			}
			if (has_control(p, n)) /* CR LF inside quotes would be SMTP injection */
				return *why = "control character in an address", -1;
			/* "John Doe": two words side by side make a phrase, not an
			 * address ("john . doe @ example.com" is still one, obs-local-part) */
			if (!in_angle && space && cur.len > 0 &&
			    !strchr(".@", cur.s[cur.len - 1]) && !strchr(".@", c))
				phrase = 1;
			ab_add(b, p, n);
			space = 0;
			p += n;
		}
	}
}

char *sendmail_display_name(const char *name)
{
	static const char specials[] = "()<>[]:;@\\,.\"";
	struct evbuffer *b = evbuffer_new();
	char *clean = xstrdup(name), *res;
	size_t i, len = strlen(clean), start;
	int eight = 0, special = 0;

	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)clean[i];
		if (c < 0x20 || c == 0x7f)
			clean[i] = ' ';
		else if (c >= 0x80)
			eight = 1;
		else if (strchr(specials, c))
			special = 1;
	}
	if (eight) {
		/* encoded-words of at most 75 octets: 45 input octets -> 60 of
		 * base64, never splitting a UTF-8 sequence between two words */
		for (start = 0; start < len;) {
			unsigned char enc[64];
			size_t n = len - start > 45 ? 45 : len - start;
			while (n > 1 && start + n < len &&
			       ((unsigned char)clean[start + n] & 0xc0) == 0x80)
				n--;
			EVP_EncodeBlock(enc, (const unsigned char *)clean + start, (int)n);
			evbuffer_add_printf(b, "%s=?UTF-8?B?%s?=", start ? " " : "", enc);
			start += n;
		}
	} else if (special) {
		evbuffer_add(b, "\"", 1);
		for (i = 0; i < len; i++) {
			if (clean[i] == '"' || clean[i] == '\\')
				evbuffer_add(b, "\\", 1);
			evbuffer_add(b, clean + i, 1);
		}
		evbuffer_add(b, "\"", 1);
	} else {
		evbuffer_add(b, clean, len);
	}
	len = evbuffer_get_length(b);
	res = xmalloc(len + 1);
	evbuffer_remove(b, res, len);
	res[len] = '\0';
	evbuffer_free(b);
	free(clean);
	return res;
}

/* Does the address have a domain ('@' outside quotes)? */
static int has_domain(const char *a)
{
	int q = 0;

	for (; *a; a++) {
		if (*a == '\\' && a[1] != '\0')
			a++;
		else if (*a == '"')
			q = !q;
		else if (*a == '@' && !q)
			return 1;
	}
	return 0;
}

/* "root" -> "root@hostname"; NULL when the result is too long. */
static char *qualify(struct sm *sm, const char *a)
{
	char *r = has_domain(a) ? xstrdup(a) : xasprintf("%s@%s", a, sm->conf->hostname);

	if (strlen(r) > SM_ADDR_MAX) {
		free(r);
		return NULL;
	}
	return r;
}

static void add_rcpt_cb(void *arg, const char *addr)
{
	struct sm *sm = arg;
	char *a;
	size_t i;

	if (sm->bad_rcpt)
		return;
	if ((a = qualify(sm, addr)) == NULL) {
		sm->bad_rcpt = "address longer than 256 octets";
		return;
	}
	for (i = 0; i < sm->nrcpts; i++)
		if (strcasecmp(sm->rcpts[i], a) == 0) {
			free(a);
			return;
		}
	if (sm->nrcpts == SM_RCPTS_MAX) {
		free(a);
		sm->bad_rcpt = "more than 10000 recipients";
		return;
	}
	sm->rcpts = xreallocarray(sm->rcpts, sm->nrcpts + 1, sizeof(char *));
	sm->rcpts[sm->nrcpts++] = a;
}

/* -1 with *why on a syntax error. */
static int add_rcpts(struct sm *sm, const char *list, const char **why)
{
	if (sendmail_parse_addresses(list, add_rcpt_cb, sm, why) == -1)
		return -1;
	if (sm->bad_rcpt) {
		*why = sm->bad_rcpt;
		return -1;
	}
	return 0;
}

static void one_addr_cb(void *arg, const char *addr)
{
	char **out = arg;

	if (*out == NULL)
		*out = xstrdup(addr);
}

/* ---- options ---------------------------------------------------------------- */

static int unsupported_mode(const char *v)
{
	if (strcmp(v, "p") == 0)
		return sm_err(EX_USAGE,
		              "-bp (list the queue) is not supported: use 'sesrelay queue list'");
	if (strcmp(v, "s") == 0)
		return sm_err(EX_USAGE, "-bs (SMTP on stdin) is not supported: talk SMTP to the "
		                        "relay's listener instead");
	if (strcmp(v, "i") == 0)
		return sm_err(EX_USAGE,
		              "-bi (newaliases) is not supported: sesrelay has no aliases");
	return sm_err(EX_USAGE, "-b%s is not supported (only -bm, deliver a message)", v);
}

static int option_with_arg(struct sm *sm, int c, const char *v)
{
	switch (c) {
	case 'C':
		sm->config = v;
		break;
	case 'F':
		sm->fullname = v;
		break;
	case 'f':
	case 'r':
		sm->from_arg = v;
		break;
	case 'b':
		if (strcmp(v, "m") != 0)
			return unsupported_mode(v);
		break;
	case 'o':
		if (strcmp(v, "i") == 0)
			sm->ignore_dots = 1;
		break; /* -oem, -odi, -odb, -oXXX: no meaning here */
	default:
		break; /* -A -B -L -N -O -R -V -X -e -h -p: accepted, ignored */
	}
	return 0;
}

/* Postfix's sendmail getopt: "-ti", "-fFROM", "-f FROM", "-oi", "-B 8BITMIME".
 * Options may follow recipients (as GNU getopt permutes); "--" ends them. */
static int parse_options(struct sm *sm, int argc, char **argv)
{
	int i, r;

	sm->args = xcalloc((size_t)argc + 1, sizeof(char *));
	for (i = 1; i < argc; i++) {
		const char *a = argv[i], *p;

		if (strcmp(a, "--") == 0) {
			while (++i < argc)
				sm->args[sm->nargs++] = argv[i];
			break;
		}
		if (a[0] != '-' || a[1] == '\0') {
			sm->args[sm->nargs++] = argv[i];
			continue;
		}
		if (strcmp(a, "--help") == 0)
			return SM_HELP;
		if (a[1] == '-')
			return sm_err(EX_USAGE, "unknown option %s (see sendmail --help)", a);
		for (p = a + 1; *p; p++) {
			if (strchr(SM_ARGOPTS, *p)) {
				const char *v = p[1] ? p + 1 : i + 1 < argc ? argv[++i] : NULL;
				if (v == NULL)
					return sm_err(EX_USAGE, "-%c needs an argument", *p);
				if ((r = option_with_arg(sm, *p, v)) != 0)
					return r;
				break;
			}
			if (*p == 'q')
				return sm_err(EX_USAGE,
				              "-q (process the queue) is not supported: use "
				              "'sesrelay queue flush'");
			if (*p == 'I')
				return unsupported_mode("i");
			if (*p == 't')
				sm->extract = 1;
			else if (*p == 'i')
				sm->ignore_dots = 1;
			else if (strchr(SM_IGNORED, *p) == NULL)
				return sm_err(EX_USAGE, "unknown option -%c (see sendmail --help)",
				              *p);
		}
	}
	return 0;
}

/* ---- config and listener ------------------------------------------------- */

static int load_config(struct sm *sm)
{
	char err[1024];

	if ((sm->conf = conf_load(sm->config, err, sizeof(err))) != NULL)
		return 0;
	if (access(sm->config, F_OK) == 0 && access(sm->config, R_OK) == -1)
		return sm_err(EX_CONFIG,
		              "%s (sendmail runs as the calling user, who must be able "
		              "to read the config)",
		              err);
	return sm_err(EX_CONFIG, "%s", err);
}

static int pick_listener(struct sm *sm)
{
	size_t i;
	char host[64];

	for (i = 0; i < sm->conf->nlisteners; i++) {
		const struct conf_listener *l = &sm->conf->listeners[i];
		struct sockaddr_storage ss = l->ss;

		if (l->tls != CONF_TLS_NONE || l->auth == CONF_AUTH_REQUIRED || l->proxy_protocol)
			continue;
		if (ss.ss_family == AF_INET) {
			struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
			if (sin->sin_addr.s_addr == htonl(INADDR_ANY))
				sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		} else if (ss.ss_family == AF_INET6) {
			struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
			if (IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr))
				sin6->sin6_addr = in6addr_loopback;
		} else
			continue;
		if (!netaddr_is_loopback((struct sockaddr *)&ss) ||
		    !netaddr_match(l->networks, l->nnetworks, (struct sockaddr *)&ss))
			continue;
		sm->ss = ss;
		sm->sslen = l->sslen;
		netaddr_ntop((struct sockaddr *)&ss, host, sizeof(host));
		if (ss.ss_family == AF_INET6)
			snprintf(sm->where, sizeof(sm->where), "[%s]:%u", host,
			         ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
		else
			snprintf(sm->where, sizeof(sm->where), "%s:%u", host,
			         ntohs(((struct sockaddr_in *)&ss)->sin_port));
		return 0;
	}
	return sm_err(
	    EX_CONFIG,
	    "%s: sendmail needs a [listen:*] on 127.0.0.1 with tls = none and auth = off or "
	    "optional (relay_networks includes 127.0.0.0/8 by default)",
	    sm->config);
}

static int set_envelope(struct sm *sm)
{
	struct passwd *pw = getpwuid(getuid());
	const char *user = pw && pw->pw_name[0] ? pw->pw_name : getenv("USER");
	const char *why = NULL;
	char *a = NULL;
	size_t i;
	int n;

	if (user == NULL || *user == '\0' || strpbrk(user, " \t\r\n<>\"()@,;:\\") != NULL)
		user = "nobody";
	sm->user_addr = xasprintf("%s@%s", user, sm->conf->hostname);
	if (sm->from_arg == NULL) {
		sm->sender = xstrdup(sm->user_addr);
	} else {
		n = sendmail_parse_addresses(sm->from_arg, one_addr_cb, &a, &why);
		if (n > 1)
			why = "more than one address";
		if (n < 0 || n > 1) {
			free(a);
			return sm_err(EX_USAGE, "bad sender address '%s': %s", sm->from_arg, why);
		}
		if (a == NULL) {
			sm->sender = xstrdup(""); /* -f '' or -f '<>': the null sender */
		} else {
			sm->sender = qualify(sm, a);
			free(a);
			if (sm->sender == NULL)
				return sm_err(EX_USAGE,
				              "bad sender address: longer than 256 octets");
		}
	}
	for (i = 0; i < sm->nargs; i++)
		if (add_rcpts(sm, sm->args[i], &why) == -1)
			return sm_err(EX_USAGE, "bad recipient address '%s': %s", sm->args[i], why);
	return 0;
}

/* ---- the message ----------------------------------------------------------- */

/* One line to the wire: dot-stuffed, broken with CRLF SPACE past 998 octets. */
static void emit_line(struct evbuffer *out, const char *p, size_t len)
{
	int first = 1;

	do {
		size_t lim = SM_LINE_MAX, n;
		if (first && len > 0 && p[0] == '.') {
			evbuffer_add(out, ".", 1);
			lim--;
		} else if (!first) {
			evbuffer_add(out, " ", 1);
			lim--;
		}
		n = len < lim ? len : lim;
		evbuffer_add(out, p, n);
		evbuffer_add(out, "\r\n", 2);
		p += n;
		len -= n;
		first = 0;
	} while (len > 0);
}

static int too_large(struct sm *sm)
{
	return sm_err(EX_DATAERR,
	              "message too large: more than %llu bytes (the relay's max_message_size)",
	              (unsigned long long)sm->max);
}

/* "Name:" (obs: "Name :") at the start of a line. */
static int is_field_start(const char *p, size_t len)
{
	size_t i = 0;

	while (i < len && (unsigned char)p[i] > 32 && (unsigned char)p[i] < 127 && p[i] != ':')
		i++;
	if (i == 0)
		return 0;
	while (i < len && (p[i] == ' ' || p[i] == '\t'))
		i++;
	return i < len && p[i] == ':';
}

static int field_is(const struct sm_field *f, const char *name)
{
	size_t n = strlen(name), i = n;

	if (f->len < n || strncasecmp(f->text, name, n) != 0)
		return 0;
	while (i < f->len && (f->text[i] == ' ' || f->text[i] == '\t'))
		i++;
	return i < f->len && f->text[i] == ':';
}

/* The unfolded value after the colon; malloc'd. */
static char *field_value(const struct sm_field *f)
{
	const char *c = memchr(f->text, ':', f->len);
	size_t i, n = 0, start = (size_t)(c - f->text) + 1;
	char *v = xmalloc(f->len - start + 1);

	for (i = start; i < f->len; i++)
		if (f->text[i] != '\n')
			v[n++] = f->text[i];
	v[n] = '\0';
	return v;
}

static void emit_field(struct evbuffer *out, const struct sm_field *f)
{
	const char *p = f->text, *end = f->text + f->len, *nl;

	for (;;) {
		nl = memchr(p, '\n', (size_t)(end - p));
		emit_line(out, p, nl ? (size_t)(nl - p) : (size_t)(end - p));
		if (nl == NULL)
			break;
		p = nl + 1;
	}
}

/* -t: which fields name recipients.  Resent-* win when present (RFC 5322 3.6.6). */
static int extract_rcpts(struct sm *sm)
{
	static const char *const plain[] = {"To", "Cc", "Bcc"};
	static const char *const resent[] = {"Resent-To", "Resent-Cc", "Resent-Bcc"};
	const char *const *names = plain;
	const char *why;
	size_t i, k;
	int rc = 0;

	for (i = 0; i < sm->nfields; i++)
		for (k = 0; k < 3; k++)
			if (field_is(&sm->fields[i], resent[k]))
				names = resent;
	for (i = 0; i < sm->nfields && rc == 0; i++)
		for (k = 0; k < 3; k++)
			if (field_is(&sm->fields[i], names[k])) {
				char *v = field_value(&sm->fields[i]);
				if (add_rcpts(sm, v, &why) == -1)
					rc = sm_err(EX_DATAERR,
					            "cannot read the %s: header: %s (%.200s)",
					            names[k], why, v);
				free(v);
				break;
			}
	return rc;
}

static void add_missing_headers(struct sm *sm, int has_from, int has_date, int has_msgid)
{
	char date[64], *name, *from;
	struct tm tm;
	time_t now = time(NULL);
	uint64_t rnd;
	const char *addr = sm->sender[0] ? sm->sender : sm->user_addr;

	localtime_r(&now, &tm);
	if (!has_from) {
		if (sm->fullname && sm->fullname[0]) {
			name = sendmail_display_name(sm->fullname);
			from = xasprintf("From: %s <%s>", name, addr);
			free(name);
		} else
			from = xasprintf("From: %s", addr);
		emit_line(sm->out, from, strlen(from)); /* a long -F NAME gets folded */
		free(from);
	}
	if (!has_date) {
		strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", &tm);
		evbuffer_add_printf(sm->out, "Date: %s\r\n", date);
	}
	if (!has_msgid) {
		if (getrandom(&rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
			rnd = ((uint64_t)now << 20) ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)&tm;
		strftime(date, sizeof(date), "%Y%m%d%H%M%S", &tm);
		evbuffer_add_printf(sm->out, "Message-ID: <%s.%016llx@%s>\r\n", date,
		                    (unsigned long long)rnd, sm->conf->hostname);
	}
}

/* The header section is complete: -t, Bcc removal, missing fields, blank line. */
static int end_headers(struct sm *sm)
{
	int has_from = 0, has_date = 0, has_msgid = 0, rc = 0;
	size_t i;

	sm->in_headers = 0;
	if (sm->extract)
		rc = extract_rcpts(sm);
	for (i = 0; i < sm->nfields; i++) {
		const struct sm_field *f = &sm->fields[i];
		if (field_is(f, "Bcc") || field_is(f, "Resent-Bcc"))
			continue;
		has_from |= field_is(f, "From");
		has_date |= field_is(f, "Date");
		has_msgid |= field_is(f, "Message-ID");
		emit_field(sm->out, f);
	}
	for (i = 0; i < sm->nfields; i++)
		free(sm->fields[i].text);
	free(sm->fields);
	sm->fields = NULL;
	sm->nfields = 0;
	sm->header_bytes = 0;
	if (rc)
		return rc;
	add_missing_headers(sm, has_from, has_date, has_msgid);
	evbuffer_add(sm->out, "\r\n", 2);
	return evbuffer_get_length(sm->out) > sm->max ? too_large(sm) : 0;
}

static int header_line(struct sm *sm, const char *p, size_t len)
{
	struct sm_field *f;
	int rc;

	if (sm->first_line) {
		sm->first_line = 0;
		if (len >= 5 && memcmp(p, "From ", 5) == 0) /* an mbox separator */
			return 0;
	}
	if (len == 0)
		return end_headers(sm);
	if ((p[0] == ' ' || p[0] == '\t') && sm->nfields > 0) {
		f = &sm->fields[sm->nfields - 1];
		f->text = xrealloc(f->text, f->len + 1 + len + 1);
		f->text[f->len] = '\n';
		memcpy(f->text + f->len + 1, p, len);
		f->len += 1 + len;
		f->text[f->len] = '\0';
		sm->header_bytes += len + 2;
		return 0;
	}
	if (is_field_start(p, len)) {
		sm->fields = xreallocarray(sm->fields, sm->nfields + 1, sizeof(*sm->fields));
		f = &sm->fields[sm->nfields++];
		f->text = xstrndup(p, len);
		f->len = len;
		sm->header_bytes += len + 2;
		return 0;
	}
	/* not a header field: the body starts here, without the blank line */
	if ((rc = end_headers(sm)) != 0)
		return rc;
	emit_line(sm->out, p, len);
	return 0;
}

static int end_line(struct sm *sm)
{
	const char *p = sm->line;
	size_t len = sm->linelen;

	sm->linelen = 0;
	if (!sm->ignore_dots && len == 1 && p[0] == '.')
		return SM_DONE;
	if (sm->in_headers)
		return header_line(sm, p, len);
	sm->first_line = 0;
	emit_line(sm->out, p, len);
	return 0;
}

static int read_message(struct sm *sm, int fd)
{
	char chunk[65536];
	ssize_t n, i;
	int pending_cr = 0, rc = 0;

	sm->in_headers = sm->first_line = 1;
	while (rc == 0) {
		n = read(fd, chunk, sizeof(chunk));
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			return sm_err(EX_IOERR, "cannot read the message from standard input: %s",
			              strerror(errno));
		if (n == 0)
			break;
		for (i = 0; i < n && rc == 0; i++) {
			unsigned char c = (unsigned char)chunk[i];
			if (pending_cr) {
				pending_cr = 0;
				if (c == '\n')
					continue; /* the LF of a CRLF */
			}
			if (c == '\r' || c == '\n') {
				pending_cr = c == '\r';
				rc = end_line(sm);
				continue;
			}
			if (c == '\0')
				return sm_err(EX_DATAERR,
				              "the message contains a NUL byte (binary data "
				              "must be MIME-encoded)");
			if (c >= 0x80)
				sm->eightbit = 1;
			if (evbuffer_get_length(sm->out) + sm->header_bytes + sm->linelen + 2 >=
			    sm->max)
				return too_large(sm);
			if (sm->linelen == sm->linecap) {
				sm->linecap = sm->linecap ? sm->linecap * 2 : 1024;
				sm->line = xrealloc(sm->line, sm->linecap);
			}
			sm->line[sm->linelen++] = (char)c;
		}
	}
	if (rc == 0 && sm->linelen > 0) /* a last line without its newline */
		rc = end_line(sm);
	if (rc == 0 && sm->in_headers)
		rc = end_headers(sm);
	if (rc == SM_DONE) /* "." ended the input */
		rc = sm->in_headers ? end_headers(sm) : 0;
	if (rc == 0 && evbuffer_get_length(sm->out) > sm->max)
		rc = too_large(sm);
	return rc;
}

/* ---- SMTP ------------------------------------------------------------------ */

struct sm_conn {
	int fd;
	const char *where;
	char buf[4096];
	size_t off, len;
	int size_offered;
	uint64_t size; /* EHLO SIZE; 0: no limit */
	int eightbitmime;
};

struct sm_reply {
	int code;
	char text[SM_REPLY_LINE_MAX + 1]; /* the last line, control characters replaced */
};

static const char *lc_strerror(int e, char *buf, size_t len)
{
	snprintf(buf, len, "%s", strerror(e));
	if (buf[0] >= 'A' && buf[0] <= 'Z')
		buf[0] = (char)(buf[0] - 'A' + 'a');
	return buf;
}

static int io_error(struct sm_conn *c, int e, const char *doing)
{
	char eb[128];

	if (e == EAGAIN || e == EWOULDBLOCK)
		return sm_err(EX_TEMPFAIL, "the relay at %s did not answer within %d s (%s)",
		              c->where, SM_TIMEOUT, doing);
	if (e == 0)
		return sm_err(EX_TEMPFAIL, "the relay at %s closed the connection (%s)", c->where,
		              doing);
	return sm_err(EX_TEMPFAIL, "lost the connection to the relay at %s (%s): %s", c->where,
	              doing, lc_strerror(e, eb, sizeof(eb)));
}

static int conn_open(struct sm *sm, struct sm_conn *c)
{
	struct timeval tv = {SM_TIMEOUT, 0};
	char eb[128];
	int e;

	memset(c, 0, sizeof(*c));
	c->where = sm->where;
	c->fd = socket(sm->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd == -1)
		return sm_err(EX_OSERR, "socket: %s", strerror(errno));
	(void)setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	(void)setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(c->fd, (struct sockaddr *)&sm->ss, sm->sslen) == 0)
		return 0;
	e = errno;
	close(c->fd);
	c->fd = -1;
	if (e == EINPROGRESS || e == EAGAIN)
		return sm_err(EX_TEMPFAIL,
		              "cannot reach the relay at %s (timed out after %d s): is "
		              "sesrelay running?",
		              sm->where, SM_TIMEOUT);
	return sm_err(EX_TEMPFAIL, "cannot reach the relay at %s (%s): is sesrelay running?",
	              sm->where, lc_strerror(e, eb, sizeof(eb)));
}

static int conn_write(struct sm_conn *c, const void *p, size_t len, const char *doing)
{
	const char *s = p;
	ssize_t n;

	while (len > 0) {
		n = send(c->fd, s, len, MSG_NOSIGNAL);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			return io_error(c, n == 0 ? EIO : errno, doing);
		s += n;
		len -= (size_t)n;
	}
	return 0;
}

/* One reply line without CRLF into line[SM_REPLY_LINE_MAX + 1]. */
static int conn_line(struct sm_conn *c, char *line, const char *doing)
{
	size_t n = 0;
	ssize_t r;

	for (;;) {
		while (c->off < c->len) {
			char ch = c->buf[c->off++];
			if (ch == '\n') {
				if (n > 0 && line[n - 1] == '\r')
					n--;
				line[n] = '\0';
				return 0;
			}
			if (n == SM_REPLY_LINE_MAX)
				return sm_err(
				    EX_PROTOCOL,
				    "the relay at %s sent a reply line over %d octets (%s)",
				    c->where, SM_REPLY_LINE_MAX, doing);
			line[n++] = ch;
		}
		r = recv(c->fd, c->buf, sizeof(c->buf), 0);
		if (r == -1 && errno == EINTR)
			continue;
		if (r <= 0)
			return io_error(c, r == 0 ? 0 : errno, doing);
		c->off = 0;
		c->len = (size_t)r;
	}
}

/* EHLO keywords we use. */
static void ehlo_line(struct sm_conn *c, const char *kw)
{
	if (strncasecmp(kw, "SIZE", 4) == 0 && (kw[4] == ' ' || kw[4] == '\0')) {
		c->size_offered = 1;
		c->size = strtoull(kw + 4, NULL, 10);
	} else if (strcasecmp(kw, "8BITMIME") == 0)
		c->eightbitmime = 1;
}

static int conn_reply(struct sm_conn *c, struct sm_reply *rp, int ehlo, const char *doing)
{
	char line[SM_REPLY_LINE_MAX + 1];
	int i, rc, code;
	char *s;

	for (i = 0; i < SM_REPLY_LINES; i++) {
		if ((rc = conn_line(c, line, doing)) != 0)
			return rc;
		if (strlen(line) < 3 || line[0] < '1' || line[0] > '5' || line[1] < '0' ||
		    line[1] > '9' || line[2] < '0' || line[2] > '9' ||
		    (line[3] != '\0' && line[3] != ' ' && line[3] != '-'))
			return sm_err(EX_PROTOCOL,
			              "the relay at %s sent a garbled reply (%s): %.80s", c->where,
			              doing, line);
		code = atoi(line);
		if (i > 0 && code != rp->code)
			return sm_err(EX_PROTOCOL, "the relay at %s mixed reply codes (%s)",
			              c->where, doing);
		rp->code = code;
		if (ehlo && i > 0 && line[3] != '\0')
			ehlo_line(c, line + 4);
		for (s = line; *s; s++)
			if ((unsigned char)*s < 0x20 || *s == 0x7f)
				*s = '?';
		snprintf(rp->text, sizeof(rp->text), "%s", line);
		if (line[3] != '-')
			return 0;
	}
	return sm_err(EX_PROTOCOL, "the relay at %s sent a reply of over %d lines (%s)", c->where,
	              SM_REPLY_LINES, doing);
}

static int conn_cmd(struct sm_conn *c, struct sm_reply *rp, int ehlo, const char *cmd)
{
	char line[600];
	int rc;

	if (bsnprintf(line, sizeof(line), "%s\r\n", cmd) == -1)
		return sm_err(EX_SOFTWARE, "command too long: %.40s", cmd);
	if ((rc = conn_write(c, line, strlen(line), cmd)) != 0)
		return rc;
	return conn_reply(c, rp, ehlo, cmd);
}

/* A reply other than the one wanted: the exit code and one line. */
static int refused(const struct sm_reply *rp, const char *doing, int rcpt, size_t done)
{
	char note[96] = "";

	if (done > 0)
		snprintf(note, sizeof(note), " (%zu recipients were already queued)", done);
	if (rp->code >= 400 && rp->code < 500)
		return sm_err(EX_TEMPFAIL, "temporary failure (%s): %s%s", doing, rp->text, note);
	if (rp->code >= 500 && rcpt)
		return sm_err(EX_NOUSER, "recipient refused (%s): %s%s", doing, rp->text, note);
	if (rp->code >= 500)
		return sm_err(EX_UNAVAILABLE, "the relay refused the message (%s): %s%s", doing,
		              rp->text, note);
	return sm_err(EX_PROTOCOL, "unexpected reply (%s): %s%s", doing, rp->text, note);
}

static int send_message(struct sm_conn *c, struct evbuffer *msg)
{
	struct evbuffer_ptr pos;
	struct evbuffer_iovec v[16];
	size_t off = 0, total = evbuffer_get_length(msg);
	int n, i, rc;

	while (off < total) {
		if (evbuffer_ptr_set(msg, &pos, off, EVBUFFER_PTR_SET) == -1)
			break;
		n = evbuffer_peek(msg, (ev_ssize_t)(total - off), &pos, v, 16);
		if (n <= 0)
			break;
		for (i = 0; i < n && i < 16; i++) {
			if ((rc = conn_write(c, v[i].iov_base, v[i].iov_len,
			                     "sending the message")) != 0)
				return rc;
			off += v[i].iov_len;
		}
	}
	return conn_write(c, ".\r\n", 3, "sending the final dot");
}

/* After the outcome is decided: say goodbye without reporting anything. */
static void quiet_quit(struct sm_conn *c)
{
	struct timeval tv = {5, 0};
	char buf[512];

	if (send(c->fd, "QUIT\r\n", 6, MSG_NOSIGNAL) != 6)
		return;
	(void)setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	(void)recv(c->fd, buf, sizeof(buf), 0); /* the 221, so the relay sees a clean QUIT */
}

/* One transaction for rcpts[from .. to). */
static int transaction(struct sm *sm, struct sm_conn *c, size_t from, size_t to)
{
	struct sm_reply rp;
	char cmd[SM_ADDR_MAX + 128];
	size_t len = evbuffer_get_length(sm->out), i;
	int rc;

	snprintf(cmd, sizeof(cmd), "MAIL FROM:<%s>", sm->sender);
	if (c->size_offered)
		snprintf(cmd + strlen(cmd), sizeof(cmd) - strlen(cmd), " SIZE=%zu", len);
	if (sm->eightbit && c->eightbitmime)
		snprintf(cmd + strlen(cmd), sizeof(cmd) - strlen(cmd), " BODY=8BITMIME");
	if ((rc = conn_cmd(c, &rp, 0, cmd)) != 0)
		return rc;
	if (rp.code != 250)
		return refused(&rp, "MAIL FROM", 0, from);
	for (i = from; i < to; i++) {
		snprintf(cmd, sizeof(cmd), "RCPT TO:<%s>", sm->rcpts[i]);
		if ((rc = conn_cmd(c, &rp, 0, cmd)) != 0)
			return rc;
		if (rp.code != 250 && rp.code != 251)
			return refused(&rp, cmd, 1, from);
	}
	if ((rc = conn_cmd(c, &rp, 0, "DATA")) != 0)
		return rc;
	if (rp.code != 354)
		return refused(&rp, "DATA", 0, from);
	if ((rc = send_message(c, sm->out)) != 0)
		return rc;
	if ((rc = conn_reply(c, &rp, 0, "end of data")) != 0)
		return rc;
	if (rp.code != 250)
		return refused(&rp, "end of data", 0, from);
	return 0;
}

static int submit(struct sm *sm)
{
	struct sm_conn c;
	struct sm_reply rp;
	size_t per, i, len = evbuffer_get_length(sm->out);
	int rc;

	if ((rc = conn_open(sm, &c)) != 0)
		return rc;
	if ((rc = conn_reply(&c, &rp, 0, "greeting")) != 0)
		goto out;
	if (rp.code != 220) {
		rc = refused(&rp, "greeting", 0, 0);
		goto quit;
	}
	if ((rc = conn_cmd(&c, &rp, 1, "EHLO localhost")) != 0)
		goto out;
	if (rp.code != 250) {
		rc = refused(&rp, "EHLO", 0, 0);
		goto quit;
	}
	if (c.size > 0 && len > c.size) {
		rc = sm_err(EX_DATAERR,
		            "message too large: %zu bytes, the relay accepts at most %llu", len,
		            (unsigned long long)c.size);
		goto quit;
	}
	per = sm->conf->max_recipients > 0 ? (size_t)sm->conf->max_recipients : sm->nrcpts;
	for (i = 0; i < sm->nrcpts && rc == 0; i += per)
		rc = transaction(sm, &c, i, i + per < sm->nrcpts ? i + per : sm->nrcpts);
	if (rc == EX_TEMPFAIL || rc == EX_PROTOCOL)
		goto out; /* the connection may be unusable: do not wait for QUIT */
quit:
	quiet_quit(&c);
out:
	close(c.fd);
	return rc;
}

/* ---- main ------------------------------------------------------------------ */

static void sm_free(struct sm *sm)
{
	size_t i;

	for (i = 0; i < sm->nrcpts; i++)
		free(sm->rcpts[i]);
	for (i = 0; i < sm->nfields; i++)
		free(sm->fields[i].text);
	free(sm->fields);
	free(sm->rcpts);
	free(sm->args);
	free(sm->user_addr);
	free(sm->sender);
	free(sm->line);
	if (sm->out)
		evbuffer_free(sm->out);
	conf_free(sm->conf);
}

int sendmail_main(int argc, char **argv, const char *config)
{
	struct sm sm;
	int rc;

	memset(&sm, 0, sizeof(sm));
	sm.config = config;
	rc = parse_options(&sm, argc, argv);
	if (rc == SM_HELP) {
		fputs(sm_usage, stdout);
		rc = 0;
		goto out;
	}
	if (rc != 0)
		goto out;
	if (!sm.extract && sm.nargs == 0) {
		rc = sm_err(EX_USAGE, "no recipients: give addresses, or -t to read them from the "
		                      "message");
		goto out;
	}
	if ((rc = load_config(&sm)) != 0 || (rc = pick_listener(&sm)) != 0 ||
	    (rc = set_envelope(&sm)) != 0)
		goto out;
	sm.out = evbuffer_new();
	sm.max = sm.conf->max_message_size ? sm.conf->max_message_size : SM_DEFAULT_MAX;
	if ((rc = read_message(&sm, STDIN_FILENO)) != 0)
		goto out;
	if (sm.nrcpts == 0) {
		rc = sm_err(EX_USAGE, "no recipients: none given and none in To:, Cc: or Bcc:");
		goto out;
	}
	rc = submit(&sm);
out:
	sm_free(&sm);
	return rc;
}
