/*
 * test_ses_identity.c - the pure half of ses/ses_identity.c: reading
 * ListEmailIdentities pages and deciding what a verified identity covers.
 */
#include <stdio.h>
#include <string.h>

#include "ses/ses_api.h"
#include "ses/ses_identity.h"
#include "unit.h"

static const char PAGE1[] =
    "{\"EmailIdentities\":["
    "{\"IdentityType\":\"DOMAIN\",\"IdentityName\":\"Example.COM\",\"SendingEnabled\":true,"
    "\"VerificationStatus\":\"SUCCESS\"},"
    "{\"IdentityType\":\"EMAIL_ADDRESS\",\"IdentityName\":\"me@gmail.com\","
    "\"SendingEnabled\":true,\"VerificationStatus\":\"SUCCESS\"},"
    "{\"IdentityType\":\"EMAIL_ADDRESS\",\"IdentityName\":\"pending@other.org\","
    "\"SendingEnabled\":false,\"VerificationStatus\":\"PENDING\"},"
    "{\"IdentityType\":\"DOMAIN\",\"IdentityName\":\"paused.example\","
    "\"SendingEnabled\":false,\"VerificationStatus\":\"SUCCESS\"},"
    "{\"IdentityType\":\"DOMAIN\",\"IdentityName\":\"old-style.example\",\"SendingEnabled\":true}"
    "],\"NextToken\":\"tok/en+=1\"}";

static void t_parse_page(void)
{
	struct ses_identity_set set = {0};
	char next[64];

	CHECK_INT(ses_identity_parse_page(PAGE1, strlen(PAGE1), &set, next, sizeof(next)), 0);
	CHECK_STR(next, "tok/en+=1");
	CHECK_INT(set.n, 4); /* the PENDING one is not verified */
	ses_identity_set_seal(&set);
	CHECK_STR(set.e[0].name, "example.com"); /* lowercased, sorted */
	CHECK_STR(set.e[1].name, "me@gmail.com");
	CHECK_STR(set.e[2].name, "old-style.example");
	CHECK_STR(set.e[3].name, "paused.example");
	CHECK_INT(set.e[3].sending, 0);
	ses_identity_set_clear(&set);
}

static void t_last_page_and_garbage(void)
{
	struct ses_identity_set set = {0};
	char next[64];
	static const char *bad[] = {
	    "", "[]", "{\"EmailIdentities\":{}}", "{\"EmailIdentities\":[{]}",
	    "{\"EmailIdentities\":[1,2", "{\"Other\":[]}",
	};
	size_t i;

	CHECK_INT(ses_identity_parse_page("{\"EmailIdentities\":[]}", 22, &set, next, sizeof(next)),
	    0);
	CHECK_STR(next, "");
	CHECK_INT(set.n, 0);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (ses_identity_parse_page(bad[i], strlen(bad[i]), &set, next, sizeof(next)) != -1) {
			fprintf(stderr, "accepted: %s\n", bad[i]);
			CHECK(0);
		}
	}
	ses_identity_set_clear(&set);
}

static void t_covers(void)
{
	struct ses_identity_set set = {0};
	char next[64];

	CHECK_INT(ses_identity_parse_page(PAGE1, strlen(PAGE1), &set, next, sizeof(next)), 0);
	ses_identity_set_seal(&set);
	/* senders */
	CHECK_INT(ses_identity_set_covers(&set, "alice@example.com", 1), 1);
	CHECK_INT(ses_identity_set_covers(&set, "Alice@EXAMPLE.com", 1), 1);
	CHECK_INT(ses_identity_set_covers(&set, "cron@nas.example.com", 1), 1); /* subdomain */
	CHECK_INT(ses_identity_set_covers(&set, "x@deep.sub.example.com", 1), 1);
	CHECK_INT(ses_identity_set_covers(&set, "x@notexample.com", 1), 0);
	CHECK_INT(ses_identity_set_covers(&set, "x@com", 1), 0);
	CHECK_INT(ses_identity_set_covers(&set, "me@gmail.com", 1), 1);
	CHECK_INT(ses_identity_set_covers(&set, "you@gmail.com", 1), 0); /* address only */
	CHECK_INT(ses_identity_set_covers(&set, "pending@other.org", 0), 0);
	/* verified but not enabled for sending: a recipient, not a sender */
	CHECK_INT(ses_identity_set_covers(&set, "a@paused.example", 1), 0);
	CHECK_INT(ses_identity_set_covers(&set, "a@paused.example", 0), 1);
	CHECK_INT(ses_identity_set_covers(&set, "", 0), 0);
	CHECK_INT(ses_identity_set_covers(&set, "no-at-sign", 0), 0);
	ses_identity_set_clear(&set);
}

static void t_many_pages_cap(void)
{
	struct ses_identity_set set = {0};
	char *page, next[64];
	size_t i, len, cap = 1000 * 120 + 64;
	int rc = 0, pages = 0;

	page = malloc(cap);
	CHECK(page != NULL);
	/* pages of 1000 until the cap refuses one */
	while (rc == 0 && pages < SES_IDENTITY_MAX / 1000 + 2) {
		len = (size_t)snprintf(page, cap, "{\"EmailIdentities\":[");
		for (i = 0; i < 1000; i++)
			len += (size_t)snprintf(page + len, cap - len,
			    "%s{\"IdentityName\":\"u%d-%zu@x.example\",\"SendingEnabled\":true,"
			    "\"VerificationStatus\":\"SUCCESS\"}",
			    i ? "," : "", pages, i);
		len += (size_t)snprintf(page + len, cap - len, "]}");
		rc = ses_identity_parse_page(page, len, &set, next, sizeof(next));
		pages++;
	}
	free(page);
	CHECK_INT(rc, -1);
	CHECK_INT(set.n, SES_IDENTITY_MAX);
	ses_identity_set_seal(&set);
	CHECK_INT(ses_identity_set_covers(&set, "u3-999@x.example", 0), 1);
	ses_identity_set_clear(&set);
}

static void t_array_next(void)
{
	const char *j = "{\"a\":{\"L\":[ {\"k\":1} , \"s\",[1,[2]] ]},\"L\":[]}";
	const char *el;
	size_t pos = 0, n;

	CHECK_INT(ses_api_json_array_next(j, strlen(j), "a.L", &pos, &el, &n), 1);
	CHECK_INT(n, 7);
	CHECK_INT(ses_api_json_array_next(j, strlen(j), "a.L", &pos, &el, &n), 1);
	CHECK(n == 3 && memcmp(el, "\"s\"", 3) == 0);
	CHECK_INT(ses_api_json_array_next(j, strlen(j), "a.L", &pos, &el, &n), 1);
	CHECK(n == 7 && memcmp(el, "[1,[2]]", 7) == 0);
	CHECK_INT(ses_api_json_array_next(j, strlen(j), "a.L", &pos, &el, &n), 0);
	pos = 0;
	CHECK_INT(ses_api_json_array_next(j, strlen(j), "L", &pos, &el, &n), 0);
	pos = 0;
	CHECK_INT(ses_api_json_array_next(j, strlen(j), "a", &pos, &el, &n), -1);
}

static const struct unit_case UNIT_TESTS[] = {
    {"parse_page", t_parse_page},
    {"last_page_and_garbage", t_last_page_and_garbage},
    {"covers", t_covers},
    {"many_pages_cap", t_many_pages_cap},
    {"array_next", t_array_next},
};

UNIT_MAIN(UNIT_TESTS)
