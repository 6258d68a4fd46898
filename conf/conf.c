/*
 * conf.c - load and validate relay.ini (SPEC.md section 3) into struct conf.
 *
 * Owns the key table (every section and key sesrelay knows, with its parser),
 * value parsing (sizes, durations, booleans, enums, CIDR lists, host:port),
 * defaults, and the cross-checks between keys (SPEC.md section 8: no AUTH in
 * clear text on a non-loopback listener).
 *
 * inih does the INI syntax, but through our own line reader: Debian's libinih
 * has a 200-byte line buffer and silently hands a longer line over in pieces,
 * and its handler gets no line number.  The reader feeds inih one whole line at
 * a time, refuses over-long lines, counts lines for every message, and sees
 * section headers before any key of the section (so empty and repeated
 * sections are caught too).
 *
 * Must never: touch the network or the spool, log (the caller reports the
 * one-line error), or copy a secret value into an error message.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ini.h>

#include "conf/conf.h"
#include "relay/inbound_map.h"
#include "relay/log.h"
#include "relay/netaddr.h"
#include "relay/util.h"

#define DEFAULT_PATH  "/etc/sesrelay/relay.ini"
#define DEFAULT_SPOOL "/var/spool/sesrelay"
#define LIMIT_API_V1  (10ULL * 1024 * 1024) /* SendRawEmail */
#define LIMIT_DEFAULT (40ULL * 1024 * 1024) /* SendEmail v2 and SES SMTP */
#define DURATION_MAX  (365ULL * 86400)
#define SECTION_MAX   49 /* inih's MAX_SECTION - 1: longer names are cut */
#define LISTEN_PREFIX "listen:"
#define WS            " \t\r\n\v\f"

/* enum fields are written through int *: make sure that is the same object. */
_Static_assert(sizeof(enum conf_tls) == sizeof(int), "enum conf_tls is not int-sized");
_Static_assert(sizeof(enum conf_auth) == sizeof(int), "enum conf_auth is not int-sized");
_Static_assert(sizeof(enum conf_log) == sizeof(int), "enum conf_log is not int-sized");
_Static_assert(sizeof(enum conf_transport) == sizeof(int), "enum conf_transport is not int-sized");

enum section {
	SEC_NONE, /* keys before any [section] */
	SEC_RELAY,
	SEC_LISTEN,
	SEC_TLS,
	SEC_USERS,
	SEC_SES,
	SEC_QUEUE,
	SEC_HTTP,
	SEC_INBOUND,
	SEC_UNKNOWN,
};

static const char *const section_names[] = {
    [SEC_RELAY] = "relay", [SEC_TLS] = "tls",     [SEC_USERS] = "users",
    [SEC_SES] = "ses",     [SEC_QUEUE] = "queue", [SEC_HTTP] = "http",
    [SEC_INBOUND] = "inbound",
};

struct loader;
struct key;
typedef int (*parse_fn)(struct loader *, const struct key *, const char *value, void *field);

#define KEY_LIST   0x1 /* may repeat and continue on indented lines */
#define KEY_SECRET 0x2 /* never echo the value */

struct key {
	enum section section;
	const char *name;
	parse_fn parse;
	size_t off; /* into struct conf, or struct conf_listener for SEC_LISTEN */
	const void *arg;
	int flags;
};

struct enum_val {
	const char *name;
	int value;
};

struct irange {
	long min, max;
};

struct urange {
	uint64_t min, max;
};

static int parse_str(struct loader *, const struct key *, const char *, void *);
static int parse_word(struct loader *, const struct key *, const char *, void *);
static int parse_hostname(struct loader *, const struct key *, const char *, void *);
static int parse_user(struct loader *, const struct key *, const char *, void *);
static int parse_region(struct loader *, const struct key *, const char *, void *);
static int parse_url(struct loader *, const struct key *, const char *, void *);
static int parse_mailaddr(struct loader *, const struct key *, const char *, void *);
static int parse_enum(struct loader *, const struct key *, const char *, void *);
static int parse_int(struct loader *, const struct key *, const char *, void *);
static int parse_size(struct loader *, const struct key *, const char *, void *);
static int parse_duration(struct loader *, const struct key *, const char *, void *);
static int parse_rate(struct loader *, const struct key *, const char *, void *);
static int parse_networks(struct loader *, const struct key *, const char *, void *);
static int parse_listen_address(struct loader *, const struct key *, const char *, void *);
static int parse_http_address(struct loader *, const struct key *, const char *, void *);
static int parse_bucket(struct loader *, const struct key *, const char *, void *);
static int parse_prefix(struct loader *, const struct key *, const char *, void *);
static int parse_map(struct loader *, const struct key *, const char *, void *);
static int parse_queue_url(struct loader *, const struct key *, const char *, void *);

static const struct enum_val bool_vals[] = {{"yes", 1},   {"no", 0}, {"true", 1},
                                            {"false", 0}, {"on", 1}, {"off", 0},
                                            {"1", 1},     {"0", 0},  {NULL, 0}};
static const struct enum_val tls_vals[] = {{"none", CONF_TLS_NONE},
                                           {"starttls", CONF_TLS_STARTTLS},
                                           {"implicit", CONF_TLS_IMPLICIT},
                                           {NULL, 0}};
static const struct enum_val smtp_tls_vals[] = {{"starttls", CONF_TLS_STARTTLS},
                                                {"implicit", CONF_TLS_IMPLICIT},
                                                {"none", CONF_TLS_NONE},
                                                {NULL, 0}};
static const struct enum_val auth_vals[] = {{"off", CONF_AUTH_OFF},
                                            {"optional", CONF_AUTH_OPTIONAL},
                                            {"required", CONF_AUTH_REQUIRED},
                                            {NULL, 0}};
static const struct enum_val log_vals[] = {
    {"stderr", CONF_LOG_STDERR}, {"syslog", CONF_LOG_SYSLOG}, {NULL, 0}};
static const struct enum_val level_vals[] = {{"error", LOG_LEVEL_ERROR},
                                             {"warn", LOG_LEVEL_WARN},
                                             {"info", LOG_LEVEL_INFO},
                                             {"debug", LOG_LEVEL_DEBUG},
                                             {NULL, 0}};
static const struct enum_val transport_vals[] = {
    {"api", CONF_TRANSPORT_API}, {"smtp", CONF_TRANSPORT_SMTP}, {NULL, 0}};
static const struct enum_val api_version_vals[] = {{"1", 1}, {"2", 2}, {NULL, 0}};
static const struct enum_val from_format_vals[] = {
    {"name", CONF_FROM_NAME}, {"name_at_address", CONF_FROM_NAME_AT_ADDRESS}, {NULL, 0}};
static const struct enum_val after_vals[] = {
    {"delete", CONF_AFTER_DELETE}, {"move", CONF_AFTER_MOVE}, {NULL, 0}};
static const struct enum_val verdict_vals[] = {{"hold", CONF_VERDICT_HOLD},
                                               {"forward", CONF_VERDICT_FORWARD},
                                               {"delete", CONF_VERDICT_DELETE},
                                               {NULL, 0}};

static const struct irange r_recipients = {1, 100000};
static const struct irange r_positive = {1, INT_MAX};
static const struct irange r_concurrency = {1, 1024};
static const struct irange r_port = {1, 65535};
static const struct urange r_msgsize = {1, UINT64_MAX};
static const struct urange r_anysize = {0, UINT64_MAX}; /* 0: check off */
static const struct urange r_duration = {1, DURATION_MAX};

#define C(f) offsetof(struct conf, f)
#define L(f) offsetof(struct conf_listener, f)

/* Every key sesrelay knows.  Anything else is an error naming file:line. */
static const struct key keys[] = {
    {SEC_RELAY, "hostname", parse_hostname, C(hostname), NULL, 0},
    {SEC_RELAY, "spool", parse_str, C(spool), NULL, 0},
    {SEC_RELAY, "user", parse_user, C(user), NULL, 0},
    {SEC_RELAY, "log", parse_enum, C(log), log_vals, 0},
    {SEC_RELAY, "max_message_size", parse_size, C(max_message_size), &r_msgsize, 0},
    {SEC_RELAY, "max_recipients", parse_int, C(max_recipients), &r_recipients, 0},
    {SEC_RELAY, "max_connections", parse_int, C(max_connections), &r_positive, 0},
    {SEC_RELAY, "max_connections_per_ip", parse_int, C(max_connections_per_ip), &r_positive, 0},
    {SEC_RELAY, "spool_reserve", parse_size, C(spool_reserve), &r_anysize, 0},
    {SEC_RELAY, "log_level", parse_enum, C(log_level), level_vals, 0},
    {SEC_RELAY, "smtp_timeout", parse_duration, C(smtp_timeout), &r_duration, 0},
    {SEC_RELAY, "data_timeout", parse_duration, C(data_timeout), &r_duration, 0},
    {SEC_RELAY, "session_timeout", parse_duration, C(session_timeout), &r_duration, 0},

    {SEC_LISTEN, "address", parse_listen_address, L(address), NULL, 0},
    {SEC_LISTEN, "tls", parse_enum, L(tls), tls_vals, 0},
    {SEC_LISTEN, "auth", parse_enum, L(auth), auth_vals, 0},
    {SEC_LISTEN, "relay_networks", parse_networks, L(networks), NULL, KEY_LIST},
    {SEC_LISTEN, "proxy_protocol", parse_enum, L(proxy_protocol), bool_vals, 0},

    {SEC_TLS, "certificate", parse_str, C(tls_certificate), NULL, 0},
    {SEC_TLS, "private_key", parse_str, C(tls_private_key), NULL, 0},

    {SEC_USERS, "file", parse_str, C(users_file), NULL, 0},

    {SEC_SES, "transport", parse_enum, C(transport), transport_vals, 0},
    {SEC_SES, "region", parse_region, C(region), NULL, 0},
    {SEC_SES, "api_version", parse_enum, C(api_version), api_version_vals, 0},
    {SEC_SES, "endpoint", parse_url, C(endpoint), NULL, 0},
    {SEC_SES, "configuration_set", parse_word, C(configuration_set), NULL, 0},
    {SEC_SES, "profile", parse_word, C(profile), NULL, 0},
    {SEC_SES, "access_key_id", parse_word, C(access_key_id), NULL, 0},
    {SEC_SES, "secret_access_key", parse_word, C(secret_access_key), NULL, KEY_SECRET},
    {SEC_SES, "max_send_rate", parse_rate, C(max_send_rate), NULL, 0},
    {SEC_SES, "concurrency", parse_int, C(concurrency), &r_concurrency, 0},
    {SEC_SES, "smtp_host", parse_hostname, C(smtp_host), NULL, 0},
    {SEC_SES, "smtp_port", parse_int, C(smtp_port), &r_port, 0},
    {SEC_SES, "smtp_tls", parse_enum, C(smtp_tls), smtp_tls_vals, 0},
    {SEC_SES, "smtp_username", parse_word, C(smtp_username), NULL, 0},
    {SEC_SES, "smtp_password", parse_word, C(smtp_password), NULL, KEY_SECRET},
    {SEC_SES, "ca_file", parse_str, C(ca_file), NULL, 0},
    {SEC_SES, "check_identities", parse_enum, C(check_identities), bool_vals, 0},

    {SEC_QUEUE, "retry_initial", parse_duration, C(retry_initial), &r_duration, 0},
    {SEC_QUEUE, "retry_max", parse_duration, C(retry_max), &r_duration, 0},
    {SEC_QUEUE, "lifetime", parse_duration, C(lifetime), &r_duration, 0},
    {SEC_QUEUE, "bounce_from", parse_mailaddr, C(bounce_from), NULL, 0},

    {SEC_HTTP, "address", parse_http_address, C(http_address), NULL, 0},

    {SEC_INBOUND, "bucket", parse_bucket, C(inbound_bucket), NULL, 0},
    {SEC_INBOUND, "prefix", parse_prefix, C(inbound_prefix), NULL, 0},
    {SEC_INBOUND, "region", parse_region, C(inbound_region), NULL, 0},
    {SEC_INBOUND, "endpoint", parse_url, C(inbound_endpoint), NULL, 0},
    {SEC_INBOUND, "queue_url", parse_queue_url, C(inbound_queue_url), NULL, 0},
    {SEC_INBOUND, "poll_interval", parse_duration, C(inbound_poll_interval), &r_duration, 0},
    {SEC_INBOUND, "from_address", parse_mailaddr, C(inbound_from_address), NULL, 0},
    {SEC_INBOUND, "from_format", parse_enum, C(inbound_from_format), from_format_vals, 0},
    {SEC_INBOUND, "subject_prefix", parse_str, C(inbound_subject_prefix), NULL, 0},
    {SEC_INBOUND, "map", parse_map, 0, NULL, KEY_LIST},
    {SEC_INBOUND, "delete_after", parse_enum, C(inbound_after), after_vals, 0},
    {SEC_INBOUND, "done_prefix", parse_prefix, C(inbound_done_prefix), NULL, 0},
    {SEC_INBOUND, "held_prefix", parse_prefix, C(inbound_held_prefix), NULL, 0},
    {SEC_INBOUND, "failed_verdict", parse_enum, C(inbound_failed_verdict), verdict_vals, 0},
};

#define NKEYS (sizeof(keys) / sizeof(keys[0]))

/* Per-listener parse state that does not belong in struct conf_listener. */
struct lstate {
	int seen[NKEYS]; /* line where each key was first given */
	int networks_set;
	int address_set;
};

struct loader {
	struct conf *conf;
	const char *path;
	FILE *fp;
	char *err;
	size_t errlen;
	int failed;

	int lineno;
	int have_key;     /* inih's prev_name is set: indented lines continue it */
	int continuation; /* the current line is a continuation line */
	int section_line[SEC_UNKNOWN];
	int seen[NKEYS]; /* for the single-instance sections */
	struct lstate *lstates;

	/* set by the handler for the parsers */
	const char *secname;
	struct conf_listener *listener;
	struct lstate *lstate;
};

/* Record the first error; later ones are consequences.  Always returns 0. */
static int fail(struct loader *ld, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct loader *ld, int line, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (ld->failed)
		return 0;
	ld->failed = 1;
	if (ld->err == NULL || ld->errlen == 0)
		return 0;
	if (line > 0)
		n = snprintf(ld->err, ld->errlen, "%s:%d: ", ld->path, line);
	else
		n = snprintf(ld->err, ld->errlen, "%s: ", ld->path);
	if (n < 0 || (size_t)n >= ld->errlen)
		return 0;
	va_start(ap, fmt);
	vsnprintf(ld->err + n, ld->errlen - (size_t)n, fmt, ap);
	va_end(ap);
	return 0;
}

/* "[section] key = "value": expected ..."; secrets are named, never shown. */
static int bad_value(struct loader *ld, const struct key *k, const char *value, const char *fmt,
                     ...) __attribute__((format(printf, 4, 5)));
static int bad_value(struct loader *ld, const struct key *k, const char *value, const char *fmt,
                     ...)
{
	char why[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	if (k->flags & KEY_SECRET)
		return fail(ld, ld->lineno, "[%s] %s: %s", ld->secname, k->name, why);
	return fail(ld, ld->lineno, "[%s] %s = \"%s\": %s", ld->secname, k->name, value, why);
}

/* ---- value parsers ------------------------------------------------------ */

static int parse_str(struct loader *ld, const struct key *k, const char *value, void *field)
{
	*(char **)field = xstrdup(value);
	return 1;
}

static int has_space(const char *s)
{
	for (; *s; s++)
		if (isspace((unsigned char)*s) || iscntrl((unsigned char)*s))
			return 1;
	return 0;
}

static int parse_word(struct loader *ld, const struct key *k, const char *value, void *field)
{
	if (has_space(value))
		return bad_value(ld, k, value, "must not contain spaces");
	return parse_str(ld, k, value, field);
}

static int parse_hostname(struct loader *ld, const struct key *k, const char *value, void *field)
{
	if (strspn(value, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:[]") !=
	    strlen(value))
		return bad_value(ld, k, value, "expected a host name such as relay.example.com");
	return parse_str(ld, k, value, field);
}

static int parse_user(struct loader *ld, const struct key *k, const char *value, void *field)
{
	if (getpwnam(value) == NULL)
		return bad_value(ld, k, value,
		                 "no such user (create it, e.g. useradd --system %s, or leave user "
		                 "empty to stay as started)",
		                 value);
	return parse_str(ld, k, value, field);
}

static int valid_region(const char *s)
{
	return *s && strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789-") == strlen(s);
}

static int parse_region(struct loader *ld, const struct key *k, const char *value, void *field)
{
	if (!valid_region(value))
		return bad_value(ld, k, value, "expected an AWS region such as us-west-2");
	return parse_str(ld, k, value, field);
}

static int parse_url(struct loader *ld, const struct key *k, const char *value, void *field)
{
	size_t skip = strncmp(value, "https://", 8) == 0  ? 8
	              : strncmp(value, "http://", 7) == 0 ? 7
	                                                  : 0;

	if (skip == 0 || value[skip] == '\0' || value[skip] == '/' || has_space(value))
		return bad_value(ld, k, value,
		                 "expected a URL such as https://email.us-west-2.amazonaws.com");
	return parse_str(ld, k, value, field);
}

/* An S3 bucket name: 3-63 of a-z 0-9 . -, starting and ending alphanumeric. */
static int parse_bucket(struct loader *ld, const struct key *k, const char *value, void *field)
{
	size_t n = strlen(value), i;

	for (i = 0; i < n; i++)
		if (!islower((unsigned char)value[i]) && !isdigit((unsigned char)value[i]) &&
		    value[i] != '.' && value[i] != '-')
			break;
	if (n < 3 || n > 63 || i < n || !isalnum((unsigned char)value[0]) ||
	    !isalnum((unsigned char)value[n - 1]))
		return bad_value(ld, k, value,
		                 "expected an S3 bucket name (3-63 lowercase letters, digits, '.', '-')");
	*(char **)field = xstrdup(value);
	return 1;
}

/* A key prefix: printable, no leading '/', at most 512 bytes. */
static int parse_prefix(struct loader *ld, const struct key *k, const char *value, void *field)
{
	const char *p;

	for (p = value; *p; p++)
		if (iscntrl((unsigned char)*p))
			break;
	if (*p || value[0] == '/' || strlen(value) > 512)
		return bad_value(ld, k, value,
		                 "expected an S3 key prefix such as \"inbox/\" (no leading '/')");
	free(*(char **)field);
	*(char **)field = xstrdup(value);
	return 1;
}

/* An SQS queue URL: http(s)://host[:port]/ACCOUNT/NAME, printable, no spaces. */
static int parse_queue_url(struct loader *ld, const struct key *k, const char *value, void *field)
{
	size_t skip = strncmp(value, "https://", 8) == 0  ? 8
	              : strncmp(value, "http://", 7) == 0 ? 7
	                                                  : 0;
	const char *slash = skip ? strchr(value + skip, '/') : NULL;

	if (skip == 0 || slash == NULL || slash == value + skip || slash[1] == '\0' ||
	    has_space(value) || strlen(value) > 1024)
		return bad_value(ld, k, value,
		                 "expected https://sqs.REGION.amazonaws.com/ACCOUNT/QUEUE");
	*(char **)field = xstrdup(value);
	return 1;
}

/* One "KEY DEST[, DEST...]" entry; checked by relay/inbound_map.c once the
 * section is read (finish_inbound), kept as written with its line. */
static int parse_map(struct loader *ld, const struct key *k, const char *value, void *field)
{
	struct conf *c = ld->conf;

	if (*value == '\0')
		return 1; /* "map =" with the entries on the lines that follow */
	if (c->ninbound_map >= 10000)
		return fail(ld, ld->lineno, "[inbound] map: more than 10000 entries");
	c->inbound_map = xreallocarray(c->inbound_map, c->ninbound_map + 1, sizeof(char *));
	c->inbound_map_line = xreallocarray(c->inbound_map_line, c->ninbound_map + 1, sizeof(int));
	c->inbound_map[c->ninbound_map] = xstrdup(value);
	c->inbound_map_line[c->ninbound_map] = ld->lineno;
	c->ninbound_map++;
	return 1;
}

static int parse_mailaddr(struct loader *ld, const struct key *k, const char *value, void *field)
{
	const char *at = strchr(value, '@');

	if (at == NULL || at == value || at[1] == '\0' || strchr(at + 1, '@') != NULL ||
	    has_space(value) || strpbrk(value, "<>") != NULL)
		return bad_value(ld, k, value,
		                 "expected an address such as postmaster@example.com");
	return parse_str(ld, k, value, field);
}

/* "a, b or c" from an enum table, for messages. */
static void enum_list(const struct enum_val *v, char *buf, size_t len)
{
	size_t i, n = 0;

	buf[0] = '\0';
	for (i = 0; v[i].name; i++) {
		const char *sep = i == 0 ? "" : v[i + 1].name ? ", " : " or ";
		if (n < len)
			n += (size_t)snprintf(buf + n, len - n, "%s%s", sep, v[i].name);
	}
}

static int parse_enum(struct loader *ld, const struct key *k, const char *value, void *field)
{
	const struct enum_val *v;
	char list[128];

	for (v = k->arg; v->name; v++) {
		if (strcasecmp(v->name, value) == 0) {
			*(int *)field = v->value;
			return 1;
		}
	}
	enum_list(k->arg, list, sizeof(list));
	return bad_value(ld, k, value, "expected %s", list);
}

static int parse_int(struct loader *ld, const struct key *k, const char *value, void *field)
{
	const struct irange *r = k->arg;
	char *end;
	long v;

	errno = 0;
	v = strtol(value, &end, 10);
	if (!isdigit((unsigned char)value[0]) || *end != '\0' || errno != 0 || v < r->min ||
	    v > r->max) {
		if (r->max == INT_MAX)
			return bad_value(ld, k, value, "expected a whole number of at least %ld",
			                 r->min);
		return bad_value(ld, k, value, "expected a whole number from %ld to %ld", r->min,
		                 r->max);
	}
	*(int *)field = (int)v;
	return 1;
}

static int parse_size(struct loader *ld, const struct key *k, const char *value, void *field)
{
	const struct urange *r = k->arg;
	uint64_t v;

	if (util_parse_size(value, &v) == -1)
		return bad_value(ld, k, value, "expected a size such as 512K, 40M or 1G");
	if (v < r->min || v > r->max)
		return bad_value(ld, k, value, "expected a size above 0, such as 10M");
	*(uint64_t *)field = v;
	return 1;
}

static int parse_duration(struct loader *ld, const struct key *k, const char *value, void *field)
{
	const struct urange *r = k->arg;
	uint64_t v;

	if (util_parse_duration(value, &v) == -1 || v < r->min || v > r->max)
		return bad_value(ld, k, value,
		                 "expected a duration from 1s to 365d, such as 30s, 5m, 1h or 5d");
	*(uint64_t *)field = v;
	return 1;
}

static int parse_rate(struct loader *ld, const struct key *k, const char *value, void *field)
{
	char *end;
	double v;

	if (strcasecmp(value, "auto") == 0) {
		*(double *)field = 0;
		return 1;
	}
	/* Digits and one dot only: strtod would also take "inf", "nan" and hex. */
	if (strspn(value, "0123456789.") != strlen(value) ||
	    strchr(value, '.') != strrchr(value, '.'))
		goto bad;
	v = strtod(value, &end);
	if (end == value || *end != '\0' || !isfinite(v) || v <= 0)
		goto bad;
	*(double *)field = v;
	return 1;
bad:
	return bad_value(ld, k, value,
	                 "expected auto or a positive number of recipients per second (e.g. 14 "
	                 "or 0.5)");
}

static void add_network(struct conf_listener *l, const struct netaddr_cidr *net)
{
	l->networks = xreallocarray(l->networks, l->nnetworks + 1, sizeof(*l->networks));
	l->networks[l->nnetworks++] = *net;
}

/*
 * Items separated by commas and/or white space.  The key may repeat and
 * continue on indented lines; Debian's inih 55 leaves " ; comment" on
 * continuation lines, so a ';' that starts an item ends the value here.
 */
static int parse_networks(struct loader *ld, const struct key *k, const char *value, void *field)
{
	struct netaddr_cidr net;
	const char *p = value;
	char *item;
	size_t n;
	int ok;

	ld->lstate->networks_set = 1;
	for (;;) {
		p += strspn(p, "," WS);
		if (*p == '\0' || (*p == ';' && (p == value || isspace((unsigned char)p[-1]))))
			return 1;
		n = strcspn(p, "," WS);
		item = xstrndup(p, n);
		ok = netaddr_parse_cidr(item, &net) == 0;
		if (ok)
			add_network(ld->listener, &net);
		else
			fail(ld, ld->lineno,
			     "[%s] relay_networks: \"%s\" is not an IP network (expected e.g. "
			     "192.168.0.0/16, 10.1.2.3 or 2001:db8::/32)",
			     ld->secname, item);
		free(item);
		if (!ok)
			return 0;
		p += n;
	}
}

static int parse_hostport(struct loader *ld, const struct key *k, const char *value, char **str,
                          struct sockaddr_storage *ss, socklen_t *sslen)
{
	/* sin_port and sin6_port sit at the same offset */
	if (netaddr_parse_hostport(value, ss, sslen) == -1 ||
	    ((struct sockaddr_in *)ss)->sin_port == 0)
		return bad_value(
		    ld, k, value,
		    "expected a numeric host:port such as 0.0.0.0:25, 127.0.0.1:2525 or "
		    "[::]:25 (host names are not accepted)");
	*str = xstrdup(value);
	return 1;
}

static int parse_listen_address(struct loader *ld, const struct key *k, const char *value,
                                void *field)
{
	struct conf_listener *l = ld->listener;

	ld->lstate->address_set = 1;
	return parse_hostport(ld, k, value, &l->address, &l->ss, &l->sslen);
}

static int parse_http_address(struct loader *ld, const struct key *k, const char *value,
                              void *field)
{
	struct conf *c = ld->conf;

	return parse_hostport(ld, k, value, &c->http_address, &c->http_ss, &c->http_sslen);
}

/* ---- sections and keys -------------------------------------------------- */

static enum section section_kind(const char *name)
{
	size_t i;

	if (name[0] == '\0')
		return SEC_NONE;
	if (strncmp(name, LISTEN_PREFIX, strlen(LISTEN_PREFIX)) == 0)
		return SEC_LISTEN;
	for (i = 0; i < sizeof(section_names) / sizeof(section_names[0]); i++)
		if (section_names[i] && strcmp(section_names[i], name) == 0)
			return (enum section)i;
	return SEC_UNKNOWN;
}

static const struct key *find_key(enum section sec, const char *name)
{
	size_t i;

	for (i = 0; i < NKEYS; i++)
		if (keys[i].section == sec && strcmp(keys[i].name, name) == 0)
			return &keys[i];
	return NULL;
}

/* Line where KEY of SEC was first given (0: never), from a seen[] array. */
static int seen_line(const int *seen, enum section sec, const char *name)
{
	const struct key *k = find_key(sec, name);

	ASSERT(k != NULL);
	return seen[k - keys];
}

static int find_listener(struct loader *ld, const char *name)
{
	size_t i;

	for (i = 0; i < ld->conf->nlisteners; i++)
		if (strcmp(ld->conf->listeners[i].name, name) == 0)
			return (int)i;
	return -1;
}

static int open_listener(struct loader *ld, const char *name)
{
	struct conf *c = ld->conf;
	struct conf_listener *l;
	int dup;

	if (name[0] == '\0' || strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	                                    "0123456789_-") != strlen(name))
		return fail(ld, ld->lineno,
		            "[listen:%s]: a listener name is one or more letters, digits, '-' or "
		            "'_' (e.g. [listen:lan])",
		            name);
	if ((dup = find_listener(ld, name)) >= 0)
		return fail(ld, ld->lineno, "[listen:%s] given twice (first on line %d)", name,
		            c->listeners[dup].line);
	c->listeners = xreallocarray(c->listeners, c->nlisteners + 1, sizeof(*c->listeners));
	ld->lstates = xreallocarray(ld->lstates, c->nlisteners + 1, sizeof(*ld->lstates));
	l = &c->listeners[c->nlisteners];
	memset(l, 0, sizeof(*l));
	memset(&ld->lstates[c->nlisteners], 0, sizeof(*ld->lstates));
	c->nlisteners++;
	l->name = xstrdup(name);
	l->line = ld->lineno;
	l->tls = CONF_TLS_NONE;
	l->auth = CONF_AUTH_OFF;
	return 1;
}

static int open_section(struct loader *ld, const char *name, size_t len)
{
	char sec[SECTION_MAX + 1];
	enum section kind;

	if (len > SECTION_MAX)
		return fail(ld, ld->lineno, "section name [%.20s...] is longer than %d characters",
		            name, SECTION_MAX);
	memcpy(sec, name, len);
	sec[len] = '\0';
	kind = section_kind(sec);
	if (kind == SEC_LISTEN)
		return open_listener(ld, sec + strlen(LISTEN_PREFIX));
	if (kind == SEC_UNKNOWN || kind == SEC_NONE)
		return fail(ld, ld->lineno,
		            "unknown section [%s] (expected relay, listen:NAME, tls, users, ses, "
		            "queue, http or inbound)",
		            sec);
	if (ld->section_line[kind])
		return fail(ld, ld->lineno, "section [%s] given twice (first on line %d)", sec,
		            ld->section_line[kind]);
	ld->section_line[kind] = ld->lineno;
	return 1;
}

/* inih's find_chars_or_comment(): stop at one of CHARS or a " ;" comment. */
static const char *find_sep(const char *s, const char *chars)
{
	int was_space = 0;

	while (*s && !strchr(chars, *s) && !(was_space && *s == ';')) {
		was_space = isspace((unsigned char)*s);
		s++;
	}
	return s;
}

/*
 * Classify LINE as inih 55 will (ini.c, ini_parse_stream): blank or comment,
 * continuation (indented, after a key), [section], or key=value.  Syntax
 * errors are reported here so that they come with a useful message.
 */
static int scan_line(struct loader *ld, const char *line)
{
	const char *s = line, *end, *rest;

	ld->continuation = 0;
	if (ld->lineno == 1 && strncmp(s, "\xEF\xBB\xBF", 3) == 0)
		s += 3;
	while (isspace((unsigned char)*s))
		s++;
	if (*s == '\0' || *s == ';' || *s == '#')
		return 1;
	if (ld->have_key && s > line) {
		ld->continuation = 1;
		return 1;
	}
	if (*s == '[') {
		end = find_sep(s + 1, "]");
		if (*end != ']')
			return fail(ld, ld->lineno, "section header without closing ']'");
		rest = end + 1 + strspn(end + 1, WS);
		if (*rest != '\0' && *rest != ';' && *rest != '#')
			return fail(ld, ld->lineno, "unexpected text after ']'");
		ld->have_key = 0;
		return open_section(ld, s + 1, (size_t)(end - s - 1));
	}
	end = find_sep(s, "=:");
	if (*end != '=' && *end != ':')
		return fail(ld, ld->lineno, "expected \"key = value\", a [section] or a comment");
	ld->have_key = 1;
	return 1;
}

/* A long comment is harmless: inih would only skip it. */
static int is_comment(const char *s, size_t len)
{
	size_t i = 0;

	while (i < len && isspace((unsigned char)s[i]))
		i++;
	return i < len && (s[i] == ';' || s[i] == '#');
}

/*
 * inih's reader: one whole line per call (so the handler knows its number),
 * at most NUM - 2 bytes plus "\n" and NUL.  A longer line is an error, never
 * cut in pieces as inih would do, unless it is a comment.  Reads are capped:
 * no line is ever buffered beyond NUM bytes.
 */
static char *conf_reader(char *str, int num, void *stream)
{
	struct loader *ld = stream;
	size_t len = 0, max = (size_t)num - 2;
	int c;

	if (ld->failed || num < 3)
		return NULL;
	if ((c = getc(ld->fp)) == EOF) {
		if (ferror(ld->fp))
			fail(ld, 0, "read error: %s", strerror(errno));
		return NULL;
	}
	ld->lineno++;
	for (; c != EOF && c != '\n'; c = getc(ld->fp)) {
		if (c == '\0') {
			fail(ld, ld->lineno, "NUL byte in line");
			return NULL;
		}
		if (len > max) /* one byte of slack for a CR before the LF */
			break;
		str[len++] = (char)c;
	}
	if (len > 0 && str[len - 1] == '\r' && (c == '\n' || c == EOF))
		len--;
	if (len > max && is_comment(str, len)) {
		while (c != EOF && c != '\n')
			c = getc(ld->fp);
		len = 0;
	}
	if (len > max) {
		fail(ld, ld->lineno, "line longer than %zu bytes", max);
		return NULL;
	}
	if (ferror(ld->fp)) {
		fail(ld, ld->lineno, "read error: %s", strerror(errno));
		return NULL;
	}
	str[len] = '\n';
	str[len + 1] = '\0';
	return scan_line(ld, str) ? str : NULL;
}

/* Point ld->listener/lstate and the seen[] array at the section's instance. */
static int *section_state(struct loader *ld, enum section sec, const char *section)
{
	int i;

	ld->listener = NULL;
	ld->lstate = NULL;
	if (sec != SEC_LISTEN)
		return ld->seen;
	i = find_listener(ld, section + strlen(LISTEN_PREFIX));
	ASSERT(i >= 0); /* conf_reader opened it */
	ld->listener = &ld->conf->listeners[i];
	ld->lstate = &ld->lstates[i];
	return ld->lstate->seen;
}

static int conf_handler(void *user, const char *section, const char *name, const char *value)
{
	struct loader *ld = user;
	enum section sec = section_kind(section);
	const struct key *k;
	int *seen;
	void *base;

	if (ld->failed)
		return 0;
	ld->secname = section;
	if (sec == SEC_NONE)
		return fail(ld, ld->lineno, "'%s' is outside any section (start with [relay])",
		            name);
	ASSERT(sec != SEC_UNKNOWN); /* conf_reader refused the header */
	if ((k = find_key(sec, name)) == NULL)
		return fail(ld, ld->lineno, "unknown key '%s' in [%s]", name, section);
	seen = section_state(ld, sec, section);
	if (!(k->flags & KEY_LIST)) {
		if (ld->continuation)
			return fail(ld, ld->lineno,
			            "[%s] '%s' takes one value, but this indented line continues "
			            "it (remove the indentation)",
			            section, name);
		if (seen[k - keys])
			return fail(ld, ld->lineno, "[%s] '%s' given twice (first on line %d)",
			            section, name, seen[k - keys]);
	}
	if (!seen[k - keys])
		seen[k - keys] = ld->lineno;
	if (*value == '\0' && !(k->flags & KEY_LIST))
		return 1; /* "key =" keeps the default */
	base = ld->listener ? (void *)ld->listener : (void *)ld->conf;
	return k->parse(ld, k, value, (char *)base + k->off);
}

/* ---- defaults and cross-checks ------------------------------------------ */

static void set_defaults(struct conf *c)
{
	c->log = CONF_LOG_STDERR;
	c->max_recipients = 100;
	c->max_connections = 1000;
	c->max_connections_per_ip = 20;
	c->spool_reserve = 100ULL * 1024 * 1024;
	c->log_level = LOG_LEVEL_INFO;
	c->smtp_timeout = 5 * 60;
	c->data_timeout = 10 * 60;
	c->session_timeout = 60 * 60;
	c->transport = CONF_TRANSPORT_API;
	c->api_version = 2;
	c->max_send_rate = 0;
	c->concurrency = 16;
	c->check_identities = 1;
	c->inbound_poll_interval = 60;
	c->smtp_port = 587;
	c->smtp_tls = CONF_TLS_STARTTLS;
	c->retry_initial = 60;
	c->retry_max = 60 * 60;
	c->lifetime = 5 * 86400;
}

static int finish_relay(struct loader *ld)
{
	struct conf *c = ld->conf;
	char host[256];

	if (c->hostname == NULL) {
		if (gethostname(host, sizeof(host)) == -1 || host[0] == '\0')
			bsnprintf(host, sizeof(host), "localhost");
		host[sizeof(host) - 1] = '\0';
		c->hostname = xstrdup(host);
	}
	if (c->spool == NULL)
		c->spool = xstrdup(DEFAULT_SPOOL);
	return 1;
}

/* 41943040 -> "40M", for messages. */
static const char *fmt_size(uint64_t v, char *buf, size_t len)
{
	static const char units[] = "GMK";
	int shift = 30, i;

	for (i = 0; units[i]; i++, shift -= 10) {
		if (v >= (1ULL << shift) && v % (1ULL << shift) == 0) {
			snprintf(buf, len, "%llu%c", (unsigned long long)(v >> shift), units[i]);
			return buf;
		}
	}
	snprintf(buf, len, "%llu bytes", (unsigned long long)v);
	return buf;
}

static int finish_ses(struct loader *ld)
{
	static const char *const envs[] = {"AWS_REGION", "AWS_DEFAULT_REGION"};
	struct conf *c = ld->conf;
	char buf[32], lbuf[32];
	uint64_t limit;
	size_t i;
	const char *v;

	for (i = 0; c->region == NULL && i < sizeof(envs) / sizeof(envs[0]); i++) {
		if ((v = getenv(envs[i])) == NULL || *v == '\0')
			continue;
		if (!valid_region(v))
			return fail(ld, 0,
			            "[ses] region is empty and %s=\"%s\" is not an AWS region",
			            envs[i], v);
		c->region = xstrdup(v);
	}
	if ((c->access_key_id == NULL) != (c->secret_access_key == NULL))
		return fail(ld,
		            seen_line(ld->seen, SEC_SES,
		                      c->access_key_id ? "access_key_id" : "secret_access_key"),
		            "[ses] access_key_id and secret_access_key go together: set both, or "
		            "neither to use the standard AWS credential chain");
	limit = c->transport == CONF_TRANSPORT_API && c->api_version == 1 ? LIMIT_API_V1
	                                                                  : LIMIT_DEFAULT;
	if (c->max_message_size == 0)
		c->max_message_size = limit;
	else if (c->max_message_size > limit)
		return fail(ld, seen_line(ld->seen, SEC_RELAY, "max_message_size"),
		            "[relay] max_message_size = %s is more than SES accepts with %s: at "
		            "most %s",
		            fmt_size(c->max_message_size, buf, sizeof(buf)),
		            c->transport == CONF_TRANSPORT_SMTP ? "transport = smtp"
		            : c->api_version == 1               ? "transport = api, api_version = 1"
		                                  : "transport = api, api_version = 2",
		            fmt_size(limit, lbuf, sizeof(lbuf)));
	return 1;
}

static int finish_queue(struct loader *ld)
{
	struct conf *c = ld->conf;
	int line;

	if (c->retry_max < c->retry_initial) {
		line = seen_line(ld->seen, SEC_QUEUE, "retry_max");
		return fail(ld, line ? line : seen_line(ld->seen, SEC_QUEUE, "retry_initial"),
		            "[queue] retry_max (%llus) is shorter than retry_initial (%llus)",
		            (unsigned long long)c->retry_max, (unsigned long long)c->retry_initial);
	}
	if (c->lifetime < c->retry_initial) {
		line = seen_line(ld->seen, SEC_QUEUE, "lifetime");
		return fail(ld, line ? line : seen_line(ld->seen, SEC_QUEUE, "retry_initial"),
		            "[queue] lifetime (%llus) is shorter than retry_initial (%llus)",
		            (unsigned long long)c->lifetime, (unsigned long long)c->retry_initial);
	}
	return 1;
}

/* Each map entry parses (relay/inbound_map.c), reported at its line. */
static int check_inbound_map(struct loader *ld)
{
	struct conf *c = ld->conf;
	struct inbound_map *map = inbound_map_new(INBOUND_MAP_PLUS);
	char why[512];
	size_t i;
	int ok = 1;

	for (i = 0; ok && i < c->ninbound_map; i++)
		if (inbound_map_add(map, c->inbound_map[i], why, sizeof(why)) == -1)
			ok = fail(ld, c->inbound_map_line[i], "[inbound] map: %s", why);
	inbound_map_free(map);
	return ok;
}

static int finish_inbound(struct loader *ld)
{
	struct conf *c = ld->conf;
	int line = ld->section_line[SEC_INBOUND];

	if (line == 0)
		return 1;
	if (c->inbound_bucket == NULL)
		return fail(ld, line, "[inbound] needs bucket (the S3 bucket SES's receipt rule "
		                      "stores mail in)");
	if (c->inbound_from_address == NULL)
		return fail(ld, line, "[inbound] needs from_address: a verified address forwarded "
		                      "mail is sent from, e.g. forwarder@example.com");
	if (c->ninbound_map == 0)
		return fail(ld, line, "[inbound] needs at least one map entry, e.g. "
		                      "\"map = @example.com you@gmail.com\"");
	if (c->inbound_region == NULL && c->region)
		c->inbound_region = xstrdup(c->region);
	if (c->inbound_region == NULL)
		return fail(ld, line, "[inbound] has no region: set region here or in [ses]");
	if (c->inbound_prefix == NULL)
		c->inbound_prefix = xstrdup("");
	if (c->inbound_subject_prefix == NULL)
		c->inbound_subject_prefix = xstrdup("");
	if (c->inbound_done_prefix == NULL)
		c->inbound_done_prefix = xstrdup("done/");
	if (c->inbound_held_prefix == NULL)
		c->inbound_held_prefix = xstrdup("held/");
	if (c->inbound_done_prefix[0] == '\0' || c->inbound_held_prefix[0] == '\0' ||
	    strcmp(c->inbound_done_prefix, c->inbound_held_prefix) == 0)
		return fail(ld, line, "[inbound] done_prefix and held_prefix must be set and differ");
	return check_inbound_map(ld);
}

static int finish_tls(struct loader *ld)
{
	struct conf *c = ld->conf;

	if (c->tls_certificate && !c->tls_private_key)
		return fail(ld, seen_line(ld->seen, SEC_TLS, "certificate"),
		            "[tls] certificate is set but private_key is not");
	if (!c->tls_certificate && c->tls_private_key)
		return fail(ld, seen_line(ld->seen, SEC_TLS, "private_key"),
		            "[tls] private_key is set but certificate is not");
	return 1;
}

static int same_address(const struct conf_listener *a, const struct conf_listener *b)
{
	unsigned char ka[17], kb[17];
	const struct sockaddr_in *sa = (const struct sockaddr_in *)&a->ss;
	const struct sockaddr_in *sb = (const struct sockaddr_in *)&b->ss;

	/* sin_port and sin6_port sit at the same offset. */
	if (sa->sin_port != sb->sin_port)
		return 0;
	if (netaddr_key((const struct sockaddr *)&a->ss, ka) == -1 ||
	    netaddr_key((const struct sockaddr *)&b->ss, kb) == -1)
		return 0;
	return memcmp(ka, kb, sizeof(ka)) == 0;
}

static int check_listener(struct loader *ld, size_t i)
{
	struct conf *c = ld->conf;
	struct conf_listener *l = &c->listeners[i];
	struct lstate *st = &ld->lstates[i];
	int tls_line = seen_line(st->seen, SEC_LISTEN, "tls");
	int auth_line = seen_line(st->seen, SEC_LISTEN, "auth");
	size_t j;

	if (!st->address_set)
		return fail(ld, l->line, "[listen:%s] has no address (e.g. address = 127.0.0.1:25)",
		            l->name);
	for (j = 0; j < i; j++)
		if (same_address(&c->listeners[j], l))
			return fail(ld, seen_line(st->seen, SEC_LISTEN, "address"),
			            "[listen:%s] address %s is already used by [listen:%s]",
			            l->name, l->address, c->listeners[j].name);
	if (l->tls != CONF_TLS_NONE && (!c->tls_certificate || !c->tls_private_key))
		return fail(ld, tls_line,
		            "[listen:%s] tls = %s needs a [tls] section with certificate and "
		            "private_key",
		            l->name, l->tls == CONF_TLS_STARTTLS ? "starttls" : "implicit");
	if (l->auth != CONF_AUTH_OFF && l->tls == CONF_TLS_NONE &&
	    !netaddr_is_loopback((const struct sockaddr *)&l->ss))
		return fail(
		    ld, auth_line,
		    "[listen:%s] auth = %s with tls = none on %s: AUTH would send passwords "
		    "in clear text; set tls = starttls or implicit",
		    l->name, l->auth == CONF_AUTH_OPTIONAL ? "optional" : "required", l->address);
	if (l->auth != CONF_AUTH_OFF && c->users_file == NULL)
		return fail(ld, auth_line,
		            "[listen:%s] auth = %s needs [users] file (nobody could log in)",
		            l->name, l->auth == CONF_AUTH_OPTIONAL ? "optional" : "required");
	return 1;
}

static void default_networks(struct conf_listener *l)
{
	static const char *const nets[] = {"127.0.0.0/8", "::1/128"};
	struct netaddr_cidr net;
	size_t i;

	for (i = 0; i < sizeof(nets) / sizeof(nets[0]); i++) {
		ASSERT(netaddr_parse_cidr(nets[i], &net) == 0);
		add_network(l, &net);
	}
}

static int finish_listeners(struct loader *ld)
{
	struct conf *c = ld->conf;
	size_t i;

	if (c->nlisteners == 0)
		return fail(ld, 0, "no [listen:NAME] section: sesrelay would accept no mail");
	for (i = 0; i < c->nlisteners; i++) {
		if (!ld->lstates[i].networks_set)
			default_networks(&c->listeners[i]);
		if (!check_listener(ld, i))
			return 0;
	}
	return 1;
}

/* ---- API ---------------------------------------------------------------- */

struct conf *conf_load(const char *path, char *err, size_t errlen)
{
	struct loader ld;
	struct conf *c = xcalloc(1, sizeof(*c));
	int r;

	memset(&ld, 0, sizeof(ld));
	ld.conf = c;
	ld.path = path;
	ld.err = err;
	ld.errlen = errlen;
	if (err && errlen)
		err[0] = '\0';
	c->path = xstrdup(path);
	set_defaults(c);
	if ((ld.fp = fopen(path, "re")) == NULL) {
		fail(&ld, 0, "cannot open: %s", strerror(errno));
		goto out;
	}
	r = ini_parse_stream(conf_reader, &ld, conf_handler, &ld);
	fclose(ld.fp);
	if (r != 0 && !ld.failed) /* conf_reader classifies lines first: not expected */
		fail(&ld, r > 0 ? r : 0, "syntax error");
	if (!ld.failed)
		(void)(finish_relay(&ld) && finish_ses(&ld) && finish_queue(&ld) &&
		       finish_tls(&ld) && finish_listeners(&ld) && finish_inbound(&ld));
out:
	free(ld.lstates);
	if (ld.failed) {
		conf_free(c);
		return NULL;
	}
	return c;
}

void conf_free(struct conf *c)
{
	size_t i;

	if (c == NULL)
		return;
	for (i = 0; i < c->nlisteners; i++) {
		free(c->listeners[i].name);
		free(c->listeners[i].address);
		free(c->listeners[i].networks);
	}
	free(c->listeners);
	free(c->path);
	free(c->hostname);
	free(c->spool);
	free(c->user);
	free(c->tls_certificate);
	free(c->tls_private_key);
	free(c->users_file);
	free(c->region);
	free(c->endpoint);
	free(c->configuration_set);
	free(c->profile);
	free(c->access_key_id);
	if (c->secret_access_key)
		explicit_bzero(c->secret_access_key, strlen(c->secret_access_key));
	free(c->secret_access_key);
	free(c->smtp_host);
	free(c->smtp_username);
	if (c->smtp_password)
		explicit_bzero(c->smtp_password, strlen(c->smtp_password));
	free(c->smtp_password);
	free(c->ca_file);
	free(c->bounce_from);
	free(c->http_address);
	free(c->inbound_bucket);
	free(c->inbound_prefix);
	free(c->inbound_region);
	free(c->inbound_endpoint);
	free(c->inbound_queue_url);
	free(c->inbound_from_address);
	free(c->inbound_subject_prefix);
	for (i = 0; i < c->ninbound_map; i++)
		free(c->inbound_map[i]);
	free(c->inbound_map);
	free(c->inbound_map_line);
	free(c->inbound_done_prefix);
	free(c->inbound_held_prefix);
	free(c);
}

const char *conf_default_path(void)
{
	const char *p = getenv("SESRELAY_CONFIG");

	return p && *p ? p : DEFAULT_PATH;
}
