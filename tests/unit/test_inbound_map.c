/*
 * test_inbound_map.c - the [inbound] recipient map (relay/inbound_map.c):
 * entry syntax, the four key kinds and their precedence, case, "+detail",
 * deduplication and the limits.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay/inbound_map.h"
#include "tests/unit/unit.h"

/* A map from lines; aborts the case on a line that does not parse. */
static struct inbound_map *map_of(int flags, const char *const *lines)
{
	struct inbound_map *map = inbound_map_new(flags);
	char err[256];

	for (; *lines != NULL; lines++)
		if (inbound_map_add(map, *lines, err, sizeof(err)) == -1) {
			fprintf(stderr, "line \"%s\": %s\n", *lines, err);
			inbound_map_free(map);
			return NULL;
		}
	return map;
}

/* Resolve the recipients (a space-separated list) and render the result as
 * "dest dest | rcpt=key rcpt=key" ("-" for no key). */
static char *resolve_str(const struct inbound_map *map, const char *rcpts)
{
	char *copy = strdup(rcpts), *tok, *save = NULL, *out = malloc(65536);
	const char *v[64];
	struct inbound_resolved r;
	size_t n = 0, i, len = 0;

	for (tok = strtok_r(copy, " ", &save); tok != NULL && n < 64;
	     tok = strtok_r(NULL, " ", &save))
		v[n++] = tok;
	inbound_map_resolve(map, v, n, &r);
	out[0] = '\0';
	for (i = 0; i < r.ndests; i++)
		len += (size_t)snprintf(out + len, 65536 - len, "%s%s", i ? " " : "", r.dests[i]);
	len += (size_t)snprintf(out + len, 65536 - len, " |");
	for (i = 0; i < r.nmatch; i++)
		len += (size_t)snprintf(out + len, 65536 - len, " %s=%s", r.match[i].rcpt,
		                        r.match[i].key ? r.match[i].key : "-");
	inbound_resolved_free(&r);
	free(copy);
	return out;
}

/* --- lookup ----------------------------------------------------------------- */

static const char *const LAMBDA_MAP[] = {
    "info@example.com = john@gmail.example, jen@gmail.example",
    "abuse@example.com: jim@gmail.example",
    "@example.com john@gmail.example",
    "info = info@other.example",
    "@ = catchall@gmail.example",
    NULL,
};

static const struct {
	int flags;
	const char *rcpts, *want;
} lookups[] = {
    /* the four kinds, in precedence order */
    {0, "info@example.com",
     "john@gmail.example jen@gmail.example | info@example.com=info@example.com"},
    {0, "sales@example.com", "john@gmail.example | sales@example.com=@example.com"},
    {0, "info@elsewhere.example", "info@other.example | info@elsewhere.example=info"},
    {0, "bob@elsewhere.example", "catchall@gmail.example | bob@elsewhere.example=@"},
    /* exact beats @domain beats user */
    {0, "abuse@example.com", "jim@gmail.example | abuse@example.com=abuse@example.com"},
    /* case-insensitive everywhere; the recipient is reported as given */
    {0, "INFO@Example.COM",
     "john@gmail.example jen@gmail.example | INFO@Example.COM=info@example.com"},
    {0, "Sales@EXAMPLE.com", "john@gmail.example | Sales@EXAMPLE.com=@example.com"},
    {0, "Info@Elsewhere.example", "info@other.example | Info@Elsewhere.example=info"},
    /* +detail: only with INBOUND_MAP_PLUS; without it the domain key wins */
    {0, "info+shop@example.com", "john@gmail.example | info+shop@example.com=@example.com"},
    {INBOUND_MAP_PLUS, "info+shop@example.com",
     "john@gmail.example jen@gmail.example | info+shop@example.com=info@example.com"},
    {INBOUND_MAP_PLUS, "info+a+b@elsewhere.example",
     "info@other.example | info+a+b@elsewhere.example=info"},
    {INBOUND_MAP_PLUS, "+info@elsewhere.example",
     "catchall@gmail.example | +info@elsewhere.example=@"},
    /* union, in order, without duplicates */
    {0, "sales@example.com info@example.com abuse@example.com",
     "john@gmail.example jen@gmail.example jim@gmail.example | sales@example.com=@example.com "
     "info@example.com=info@example.com abuse@example.com=abuse@example.com"},
    {0, "a@example.com b@example.com",
     "john@gmail.example | a@example.com=@example.com b@example.com=@example.com"},
    /* a recipient without a domain can still match a user key */
    {0, "info", "info@other.example | info=info"},
    {0, "", " |"},
};

static void lookup_order(void)
{
	size_t i;

	for (i = 0; i < sizeof(lookups) / sizeof(lookups[0]); i++) {
		struct inbound_map *map = map_of(lookups[i].flags, LAMBDA_MAP);
		char *got;

		CHECK(map != NULL);
		got = resolve_str(map, lookups[i].rcpts);
		if (strcmp(got, lookups[i].want) != 0)
			fprintf(stderr, "rcpts %s\n", lookups[i].rcpts);
		CHECK_STR(got, lookups[i].want);
		free(got);
		inbound_map_free(map);
	}
}

/* Without a catch-all, a recipient can match nothing; the rest still maps. */
static void unmatched(void)
{
	static const char *const lines[] = {"me@example.com me@gmail.example", NULL};
	struct inbound_map *map = map_of(0, lines);
	const char *v[] = {"stranger@example.com", "me@example.com", "x@other.example"};
	struct inbound_resolved r;

	CHECK(map != NULL);
	CHECK_INT(inbound_map_resolve(map, v, 3, &r), 1);
	CHECK_STR(r.dests[0], "me@gmail.example");
	CHECK_INT(r.nmatch, 3);
	CHECK_INT(r.unmatched, 2);
	CHECK_INT(r.match[0].kind, INBOUND_KEY_NONE);
	CHECK(r.match[0].key == NULL);
	CHECK_INT(r.match[1].kind, INBOUND_KEY_ADDRESS);
	CHECK(r.match[2].key == NULL);
	inbound_resolved_free(&r);

	CHECK_INT(inbound_map_resolve(map, v, 1, &r), 0);
	CHECK_INT(r.ndests, 0);
	inbound_resolved_free(&r);
	inbound_map_free(map);
}

/* Each lookup step only finds keys of its own kind. */
static void kinds_do_not_cross(void)
{
	static const char *const lines[] = {"info@example.com a@gmail.example",
	                                    "@example.com b@gmail.example", NULL};
	struct inbound_map *map = map_of(0, lines);
	char *got;

	CHECK(map != NULL);
	/* local part "info@example.com" must not hit the address key as a user key */
	got = resolve_str(map, "info@example.com@evil.example @example.com");
	CHECK_STR(got, " | info@example.com@evil.example=- @example.com=-");
	free(got);
	inbound_map_free(map);
}

static void destinations_deduplicated(void)
{
	static const char *const lines[] = {
	    "a@example.com = Me@Gmail.example, other@x.example",
	    "b@example.com = me@gmail.example you@x.example",
	    "@ = OTHER@X.EXAMPLE",
	    NULL,
	};
	struct inbound_map *map = map_of(0, lines);
	char *got;

	CHECK(map != NULL);
	got = resolve_str(map, "b@example.com a@example.com z@z.example");
	CHECK_STR(got,
	          "me@gmail.example you@x.example other@x.example | b@example.com=b@example.com "
	          "a@example.com=a@example.com z@z.example=@");
	free(got);
	inbound_map_free(map);
}

/* More than 50 destinations is fine here: the scheduler splits. */
static void many_destinations(void)
{
	struct inbound_map *map = inbound_map_new(0);
	struct inbound_resolved r;
	char line[INBOUND_MAP_LINE_MAX], err[256];
	const char *v[] = {"list@example.com", "x@example.com"};
	size_t len, i;
	int k;

	len = (size_t)snprintf(line, sizeof(line), "list@example.com =");
	for (k = 0; k < 120; k++)
		len += (size_t)snprintf(line + len, sizeof(line) - len, " m%d@gmail.example,", k);
	line[len - 1] = '\0'; /* no trailing comma */
	CHECK_INT(inbound_map_add(map, line, err, sizeof(err)), 0);
	CHECK_INT(inbound_map_add(map, "@example.com m7@gmail.example, new@gmail.example", err,
	                          sizeof(err)),
	          0);
	CHECK_INT(inbound_map_dests(map), 122);
	CHECK_INT(inbound_map_keys(map), 2);
	CHECK_INT(inbound_map_resolve(map, v, 2, &r), 121);
	for (i = 0; i < 120; i++) {
		char want[64];
		snprintf(want, sizeof(want), "m%zu@gmail.example", i);
		CHECK_STR(r.dests[i], want);
	}
	CHECK_STR(r.dests[120], "new@gmail.example");
	inbound_resolved_free(&r);
	inbound_map_free(map);
}

/* --- syntax -------------------------------------------------------------------- */

static const struct {
	const char *line;
	const char *err; /* NULL: accepted; else a substring of the error */
} entries[] = {
    {"info@example.com = a@gmail.example", NULL},
    {"info@example.com=a@gmail.example,b@gmail.example", NULL},
    {"info@example.com: a@gmail.example b@gmail.example", NULL},
    {"info@example.com a@gmail.example, b@gmail.example", NULL},
    {"  info@example.com\t:\ta@gmail.example ,  b@gmail.example  ", NULL},
    {"@example.com a@gmail.example", NULL},
    {"first.last a@gmail.example", NULL},
    {"@ a@gmail.example", NULL},
    {"@: a@gmail.example", NULL},
    {"o'brien+tag@sub.example.com a@gmail.example", NULL},
    {"info@example.com = x.y-z+tag@mail.gmail.example", NULL},
    {"", "no key"},
    {"   ", "no key"},
    {"= a@gmail.example", "no key"},
    {"info@example.com", "no destination"},
    {"info@example.com =", "no destination"},
    {"info@example.com = ", "no destination"},
    {"info@example.com = a@gmail.example,", "empty destination"},
    {"info@example.com = ,a@gmail.example", "empty destination"},
    {"info@example.com = a@gmail.example,,b@gmail.example", "empty destination"},
    {"info@example.com = a@gmail.example, , b@gmail.example", "empty destination"},
    {"info@example.com = gmail.example", "bad destination"},
    {"info@example.com = a@localhost", "bad destination"},
    {"info@example.com = a@gmail..example", "bad destination"},
    {"info@example.com = a@-gmail.example", "bad destination"},
    {"info@example.com = a@gmail-.example", "bad destination"},
    {"info@example.com = .a@gmail.example", "bad destination"},
    {"info@example.com = a..b@gmail.example", "bad destination"},
    {"info@example.com = a@b@gmail.example", "bad destination"},
    {"info@example.com = <a@gmail.example>", "bad destination"},
    {"info@example.com = \"a b\"@gmail.example", "bad destination"},
    {"info@example.com = a@[192.0.2.1]", "bad destination"},
    {"info@example.com = a@gmail.example;b@gmail.example", "bad destination"},
    {"info@example.com = a@gmail.example == b@gmail.example", "bad destination"},
    {"info@example.com = a@gm\xc3\xa4il.example", "bad destination"},
    {"info@example.com = a@gmail.example\r\nb@gmail.example", "bad destination"},
    {"info@example.com = a@gmail.example A@GMAIL.example", "given twice"},
    {"info@@example.com a@gmail.example", "bad key"},
    {"@example a@gmail.example", "bad key"},
    {"@@ a@gmail.example", "bad key"},
    {"in fo a@gmail.example", "bad destination"},
    {"<info@example.com> a@gmail.example", "bad key"},
    {"info@example.com. a@gmail.example", "bad key"},
    {"*@example.com a@gmail.example", NULL}, /* '*' is atext: a user named "*" */
    {"user. a@gmail.example", "bad key"},
};

static void entry_syntax(void)
{
	size_t i;

	for (i = 0; i < sizeof(entries) / sizeof(entries[0]); i++) {
		struct inbound_map *map = inbound_map_new(0);
		char err[256] = "";
		int rc = inbound_map_add(map, entries[i].line, err, sizeof(err));

		if ((rc == 0) != (entries[i].err == NULL) ||
		    (entries[i].err != NULL && strstr(err, entries[i].err) == NULL))
			fprintf(stderr, "line \"%s\": rc %d err \"%s\"\n", entries[i].line, rc,
			        err);
		CHECK_INT(rc, entries[i].err == NULL ? 0 : -1);
		if (entries[i].err != NULL) {
			CHECK(strstr(err, entries[i].err) != NULL);
			CHECK_INT(inbound_map_keys(map), 0);
			CHECK_INT(inbound_map_dests(map), 0);
		}
		inbound_map_free(map);
	}
}

static void duplicate_keys(void)
{
	static const struct {
		const char *first, *second;
	} t[] = {
	    {"info@example.com a@gmail.example", "INFO@EXAMPLE.COM b@gmail.example"},
	    {"@example.com a@gmail.example", "@Example.Com: b@gmail.example"},
	    {"info a@gmail.example", "Info = b@gmail.example"},
	    {"@ a@gmail.example", "@ = b@gmail.example"},
	};
	size_t i;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct inbound_map *map = inbound_map_new(0);
		char err[256] = "";

		CHECK_INT(inbound_map_add(map, t[i].first, err, sizeof(err)), 0);
		CHECK_INT(inbound_map_add(map, t[i].second, err, sizeof(err)), -1);
		CHECK(strstr(err, "given twice") != NULL);
		CHECK_INT(inbound_map_keys(map), 1);
		CHECK_INT(inbound_map_dests(map), 1);
		inbound_map_free(map);
	}
}

/* The whole map holds at most INBOUND_MAP_DEST_MAX destinations; the line
 * that would pass the limit is refused whole. */
static void destination_limit(void)
{
	struct inbound_map *map = inbound_map_new(0);
	char line[INBOUND_MAP_LINE_MAX], err[256];
	size_t len;
	int key, k;

	for (key = 0; key < 10; key++) {
		len = (size_t)snprintf(line, sizeof(line), "u%d@example.com =", key);
		for (k = 0; k < 100; k++)
			len += (size_t)snprintf(line + len, sizeof(line) - len,
			                        " d%d.%d@gmail.example", key, k);
		CHECK_INT(inbound_map_add(map, line, err, sizeof(err)), 0);
	}
	CHECK_INT(inbound_map_dests(map), INBOUND_MAP_DEST_MAX);
	CHECK_INT(inbound_map_add(map, "extra@example.com one@gmail.example", err, sizeof(err)),
	          -1);
	CHECK(strstr(err, "more than 1000 destinations") != NULL);
	CHECK_INT(inbound_map_keys(map), 10);

	/* the union over many recipients stays within the map's destinations */
	{
		const char *v[12];
		char names[12][32];
		struct inbound_resolved r;
		int i;
		for (i = 0; i < 12; i++) {
			snprintf(names[i], sizeof(names[i]), "u%d@example.com", i % 10);
			v[i] = names[i];
		}
		CHECK_INT(inbound_map_resolve(map, v, 12, &r), 1000);
		CHECK_INT(r.unmatched, 0);
		inbound_resolved_free(&r);
	}
	inbound_map_free(map);

	/* an over-long line is refused before it is parsed */
	map = inbound_map_new(0);
	{
		char *big = malloc(INBOUND_MAP_LINE_MAX + 2);
		memset(big, 'a', INBOUND_MAP_LINE_MAX + 1);
		big[INBOUND_MAP_LINE_MAX + 1] = '\0';
		CHECK_INT(inbound_map_add(map, big, err, sizeof(err)), -1);
		CHECK(strstr(err, "longer than") != NULL);
		free(big);
	}
	inbound_map_free(map);
}

static const struct unit_case cases[] = {
    {"lookup_order", lookup_order},
    {"unmatched", unmatched},
    {"kinds_do_not_cross", kinds_do_not_cross},
    {"destinations_deduplicated", destinations_deduplicated},
    {"many_destinations", many_destinations},
    {"entry_syntax", entry_syntax},
    {"duplicate_keys", duplicate_keys},
    {"destination_limit", destination_limit},
};

UNIT_MAIN(cases)
