/*
 * test_sendmail.c - the address-list parser behind "sendmail -t" and the
 * display name of the From: header it adds (relay/sendmail.c).  Table
 * driven: header value in, the addresses ("|"-joined) or the error out.
 */
#include "relay/sendmail.h"
#include "tests/unit/unit.h"

struct joined {
	char s[2048];
};

static void join_cb(void *arg, const char *addr)
{
	struct joined *j = arg;
	size_t n = strlen(j->s);

	snprintf(j->s + n, sizeof(j->s) - n, "%s%s", n ? "|" : "", addr);
}

/* NULL want: must be refused. */
static const struct {
	const char *in;
	const char *want;
} parse_cases[] = {
    {"a@example.com", "a@example.com"},
    {"  a@example.com  ", "a@example.com"},
    {"root", "root"},
    {"A <a@example.com>", "a@example.com"},
    {"A B <a@example.com>, C <c@example.net>", "a@example.com|c@example.net"},
    {"\"Doe, John\" <john@example.com>, x@example.org", "john@example.com|x@example.org"},
    {"\"quoted <not@this>\" <real@example.com>", "real@example.com"},
    {"a@example.com (Comment, with comma), c@example.com", "a@example.com|c@example.com"},
    {"Nested (a (b, c) d) <x@example.com>", "x@example.com"},
    {"(only a comment) <x@example.com> (trailing)", "x@example.com"},
    {"Friends: a@example.com, B <b@example.com>;, c@example.com",
     "a@example.com|b@example.com|c@example.com"},
    {"undisclosed-recipients:;", ""},
    {"<@hop1.example,@hop2.example:a@example.com>", "a@example.com"},
    {"\"john doe\"@example.com", "\"john doe\"@example.com"},
    {"\"a\\\"b\"@example.com", "\"a\\\"b\"@example.com"},
    {"user@[192.0.2.1]", "user@[192.0.2.1]"},
    {"john . doe @ example . com", "john.doe@example.com"},
    {"a@example.com,,b@example.com,", "a@example.com|b@example.com"},
    {"<>", ""},
    {"", ""},
    {"=?UTF-8?B?w6lsw6huZQ==?= <e@example.com>", "e@example.com"},
    {"< a@example.com >", "a@example.com"},
    {"John Doe", NULL},
    {"a@example.com b@example.com", NULL},
    {"<a@example.com", NULL},
    {"a@example.com>", NULL},
    {"\"unterminated@example.com", NULL},
    {"(unterminated a@example.com", NULL},
    {"user@[192.0.2.1", NULL},
    {"A <a@example.com> <b@example.com>", NULL},
    {"a@example.com;", NULL},
    {"g1: g2: a@example.com;;", NULL},
    {"a\001b@example.com", NULL},
    {"<a@example.com\r\nRCPT TO:<evil@example.com>>", NULL},
    {"\"a\r\nRCPT TO:<evil@example.com>\"@example.com", NULL},
    {"[192.0.2.1\n]", NULL},
    /* a stray ')' once made the scanner loop forever */
    {"a@b.example)", NULL},
    {"<a@b.example)>", NULL},
    {")", NULL},
    {"a@example.com\r\nRCPT TO:<evil@example.com>", "evil@example.com"},
};

static void test_parse_table(void)
{
	size_t i;

	for (i = 0; i < sizeof(parse_cases) / sizeof(parse_cases[0]); i++) {
		struct joined j = {""};
		const char *why = NULL;
		int n = sendmail_parse_addresses(parse_cases[i].in, join_cb, &j, &why);
		if (parse_cases[i].want == NULL) {
			if (n != -1 || why == NULL)
				fprintf(stderr, "case %zu: %s\n", i, parse_cases[i].in);
			CHECK_INT(n, -1);
			CHECK(why != NULL);
		} else {
			if (n < 0 || strcmp(j.s, parse_cases[i].want) != 0)
				fprintf(stderr, "case %zu: %s: %s\n", i, parse_cases[i].in,
				        why ? why : "");
			CHECK(n >= 0);
			CHECK_STR(j.s, parse_cases[i].want);
		}
	}
}

static void test_parse_long_address(void)
{
	char in[600], name[400];
	struct joined j = {""};
	const char *why = NULL;

	/* a long display name is fine; a long address is not */
	memset(name, 'n', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	snprintf(in, sizeof(in), "%s <a@example.com>", name);
	CHECK_INT(sendmail_parse_addresses(in, join_cb, &j, &why), 1);
	CHECK_STR(j.s, "a@example.com");
	snprintf(in, sizeof(in), "%s@example.com", name);
	CHECK_INT(sendmail_parse_addresses(in, join_cb, &j, &why), -1);
	CHECK_STR(why, "address longer than 256 octets");
}

static const struct {
	const char *in;
	const char *want;
} name_cases[] = {
    {"Cron Daemon", "Cron Daemon"},
    {"Doe, John", "\"Doe, John\""},
    {"J. \"Q\" Public", "\"J. \\\"Q\\\" Public\""},
    {"back\\slash", "\"back\\\\slash\""},
    {"line\r\nBcc: evil@example.com", "\"line  Bcc: evil@example.com\""},
    {"\xc3\xa9l\xc3\xa8ne", "=?UTF-8?B?w6lsw6huZQ==?="},
    /* 46 octets: the split falls inside the last "é", which moves whole */
    {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\xc3\xa9",
     "=?UTF-8?B?YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=?= =?UTF-8?B?w6k=?="},
};

static void test_display_name(void)
{
	size_t i;

	for (i = 0; i < sizeof(name_cases) / sizeof(name_cases[0]); i++) {
		char *got = sendmail_display_name(name_cases[i].in);
		int ok = strcmp(got, name_cases[i].want) == 0;
		if (!ok)
			fprintf(stderr, "case %zu: got %s\n", i, got);
		free(got);
		CHECK(ok);
	}
}

static void test_invoked_as(void)
{
	CHECK_INT(sendmail_invoked_as("sendmail"), 1);
	CHECK_INT(sendmail_invoked_as("/usr/sbin/sendmail"), 1);
	CHECK_INT(sendmail_invoked_as("/usr/sbin/sesrelay"), 0);
	CHECK_INT(sendmail_invoked_as("/tmp/sendmail.d/x"), 0);
	CHECK_INT(sendmail_invoked_as(NULL), 0);
}

static const struct unit_case cases[] = {
    {"parse_table", test_parse_table},
    {"parse_long_address", test_parse_long_address},
    {"display_name", test_display_name},
    {"invoked_as", test_invoked_as},
};

UNIT_MAIN(cases)
