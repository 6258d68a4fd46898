/*
 * smtp_parse.c - SMTP command-line parsing.
 *
 * Addresses: the angle-bracketed path of RFC 5321 with a source route
 * stripped; printable ASCII only (we do not offer SMTPUTF8 because SES does
 * not take it); local@domain with a non-empty domain; quoted local parts are
 * kept as written.  Tolerated as Postfix does: a space after the colon, and a
 * missing pair of angle brackets around a bare address.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "smtp/smtp_parse.h"

void smtp_parse_verb(char *line, char **verb, char **args)
{
	char *p = line, *q;

	while (*p == ' ')
		p++;
	*verb = p;
	while (*p && *p != ' ') {
		*p = (char)toupper((unsigned char)*p);
		p++;
	}
	if (*p)
		*p++ = '\0';
	while (*p == ' ')
		p++;
	/* trailing spaces are not part of the arguments */
	q = p + strlen(p);
	while (q > p && q[-1] == ' ')
		*--q = '\0';
	*args = p;
}

/* Parse "<path>" at *pp into addr; advance *pp past it.  0 or -1 (syntax),
 * -2 (non-ASCII), -3 (too long). */
static int parse_path(const char **pp, char *addr, int allow_null)
{
	const char *p = *pp, *start, *end, *at;
	int bracket = 0, inquote = 0;
	size_t len;

	while (*p == ' ')
		p++;
	if (*p == '<') {
		bracket = 1;
		p++;
	}
	/* source route "@a,@b:" is obsolete and ignored (RFC 5321 C); its colon
	 * must come before the closing '>', or "<@a> SIZE=1 x:b@c>" would eat
	 * the parameters */
	if (bracket && *p == '@') {
		const char *gt = strchr(p, '>');
		const char *colon = gt ? memchr(p, ':', (size_t)(gt - p)) : NULL;
		if (colon == NULL)
			return -1;
		p = colon + 1;
	}
	start = p;
	for (; *p; p++) {
		unsigned char c = (unsigned char)*p;
		if (c >= 0x80)
			return -2;
		if (c < 0x20 || c == 0x7f)
			return -1;
		if (c == '\\' && inquote && p[1]) {
			p++;
			continue;
		}
		if (c == '"')
			inquote = !inquote;
		else if (!inquote && bracket && c == '>')
			break;
		else if (!inquote && !bracket && c == ' ')
			break;
		else if (!inquote && (c == '<' || c == '>' || c == ' '))
			return -1;
	}
	if (inquote)
		return -1;
	end = p;
	if (bracket) {
		if (*p != '>')
			return -1;
		p++;
	}
	len = (size_t)(end - start);
	if (len > SMTP_PATH_MAX)
		return -3;
	if (len == 0) {
		if (!allow_null || !bracket)
			return -1;
		addr[0] = '\0';
		*pp = p;
		return 0;
	}
	memcpy(addr, start, len);
	addr[len] = '\0';
	/* local@domain: the last @ outside quotes separates them */
	at = strrchr(addr, '@');
	if (at == NULL || at == addr || at[1] == '\0' || at[1] == '.' || addr[len - 1] == '.')
		return -1;
	for (const char *d = at + 1; *d; d++)
		if (!(isalnum((unsigned char)*d) || *d == '-' || *d == '.' || *d == '[' ||
			*d == ']' || *d == ':'))
			return -1;
	*pp = p;
	return 0;
}

static const char *path_error(int r, int is_rcpt)
{
	switch (r) {
	case -2:
		return is_rcpt ? "553 5.6.7 Non-ASCII recipient address not supported (no SMTPUTF8)"
			       : "553 5.6.7 Non-ASCII sender address not supported (no SMTPUTF8)";
	case -3:
		return "501 5.1.3 Address too long";
	default:
		return is_rcpt ? "501 5.1.3 Bad recipient address syntax"
			       : "501 5.1.7 Bad sender address syntax";
	}
}

static int keyword(const char *p, const char *kw, const char **val)
{
	size_t n = strlen(kw);
	if (strncasecmp(p, kw, n) != 0)
		return 0;
	*val = p + n;
	return 1;
}

const char *smtp_parse_mail(const char *args, struct smtp_mail_args *out)
{
	const char *p = args, *val;
	int r;

	memset(out, 0, sizeof(*out));
	if (strncasecmp(p, "FROM:", 5) != 0)
		return "501 5.5.4 Syntax: MAIL FROM:<address>";
	p += 5;
	if ((r = parse_path(&p, out->addr, 1)) != 0)
		return path_error(r, 0);
	while (*p) {
		char param[64];
		size_t n;

		if (*p != ' ')
			return "501 5.5.4 Syntax error in parameters";
		while (*p == ' ')
			p++;
		if (*p == '\0')
			break;
		n = strcspn(p, " ");
		if (n >= sizeof(param))
			return "555 5.5.4 Unsupported option";
		memcpy(param, p, n);
		param[n] = '\0';
		p += n;
		if (keyword(param, "SIZE=", &val)) {
			char *end;
			if (!isdigit((unsigned char)*val))
				return "501 5.5.4 Bad SIZE parameter";
			errno = 0;
			out->size = strtoull(val, &end, 10);
			if (*end != '\0' || errno)
				return "501 5.5.4 Bad SIZE parameter";
		} else if (keyword(param, "BODY=", &val)) {
			if (strcasecmp(val, "8BITMIME") == 0)
				out->body = SMTP_BODY_8BITMIME;
			else if (strcasecmp(val, "7BIT") == 0)
				out->body = SMTP_BODY_7BIT;
			else
				return "501 5.5.4 Bad BODY parameter (7BIT or 8BITMIME)";
		} else if (strcasecmp(param, "SMTPUTF8") == 0) {
			return "555 5.6.7 SMTPUTF8 is not supported (Amazon SES does not accept it)";
		} else
			return "555 5.5.4 Unsupported option";
	}
	return NULL;
}

const char *smtp_parse_rcpt(const char *args, char addr[SMTP_PATH_MAX + 1])
{
	const char *p = args;
	int r;

	if (strncasecmp(p, "TO:", 3) != 0)
		return "501 5.5.4 Syntax: RCPT TO:<address>";
	p += 3;
	if ((r = parse_path(&p, addr, 0)) != 0)
		return path_error(r, 1);
	while (*p == ' ')
		p++;
	if (*p != '\0')
		return "555 5.5.4 Unsupported option";
	return NULL;
}

int smtp_parse_helo(const char *args)
{
	size_t n = strlen(args);

	if (n == 0 || n > 255)
		return 0;
	for (; *args; args++)
		if ((unsigned char)*args <= 0x20 || (unsigned char)*args >= 0x7f)
			return 0;
	return 1;
}
