/*
 * inbound_map.c - the [inbound] recipient map (see inbound_map.h for the
 * syntax and the lookup order).
 *
 * SUMMARY
 *	Entries live in one array sorted by key (lower-cased), so both the
 *	duplicate check and every lookup step are a binary search.  A key's
 *	kind follows from its form and is stored with it; each lookup step
 *	asks for a kind, so a recipient can only match a key through the step
 *	the key was written for.
 *
 *	This file owns parsing, validating and resolving the map.  It never
 *	reads files (the config loader hands it lines), never logs, and never
 *	decides what happens to a recipient that maps to nothing.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "relay/inbound_map.h"
#include "relay/util.h"

#define LOCAL_MAX  64  /* RFC 5321 4.5.3.1.1 */
#define DOMAIN_MAX 253 /* a domain name, without a final dot */
#define ADDR_MAX   254 /* RFC 5321 path less the angle brackets */

struct entry {
	char *key; /* lower case */
	enum inbound_key_kind kind;
	char **dests;
	size_t ndests;
};

struct inbound_map {
	int flags;
	struct entry *e; /* sorted by key */
	size_t n;
	size_t ndests;
};

/* --- syntax -------------------------------------------------------------- */

static int is_atext(int c)
{
	return isalnum(c) || (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

/* dot-atom: atext runs separated by single dots */
static int local_ok(const char *s, size_t n)
{
	size_t i;

	if (n == 0 || n > LOCAL_MAX || s[0] == '.' || s[n - 1] == '.')
		return 0;
	for (i = 0; i < n; i++)
		if (s[i] == '.' ? s[i + 1] == '.' : !is_atext((unsigned char)s[i]))
			return 0;
	return 1;
}

/* LDH labels of 1..63, at least two of them */
static int domain_ok(const char *s, size_t n)
{
	size_t i, label = 0, labels = 1;

	if (n == 0 || n > DOMAIN_MAX)
		return 0;
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '.') {
			if (label == 0 || s[i - 1] == '-')
				return 0;
			label = 0;
			labels++;
		} else if (isalnum(c) || (c == '-' && label > 0)) {
			if (++label > 63)
				return 0;
		} else {
			return 0;
		}
	}
	return label > 0 && s[n - 1] != '-' && labels >= 2;
}

static int addr_ok(const char *s, size_t n)
{
	const char *at = memchr(s, '@', n);

	return n <= ADDR_MAX && at != NULL && local_ok(s, (size_t)(at - s)) &&
	       domain_ok(at + 1, n - (size_t)(at - s) - 1);
}

static enum inbound_key_kind key_kind(const char *k, size_t n)
{
	if (n == 1 && k[0] == '@')
		return INBOUND_KEY_CATCHALL;
	if (k[0] == '@')
		return domain_ok(k + 1, n - 1) ? INBOUND_KEY_DOMAIN : INBOUND_KEY_NONE;
	if (memchr(k, '@', n) != NULL)
		return addr_ok(k, n) ? INBOUND_KEY_ADDRESS : INBOUND_KEY_NONE;
	return local_ok(k, n) ? INBOUND_KEY_USER : INBOUND_KEY_NONE;
}

/* --- the sorted array ---------------------------------------------------- */

/* Index of key, or -(insertion point) - 1. */
static long find(const struct inbound_map *map, const char *key)
{
	size_t lo = 0, hi = map->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(key, map->e[mid].key);
		if (c == 0)
			return (long)mid;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return -(long)lo - 1;
}

static void lower(char *s)
{
	for (; *s != '\0'; s++)
		*s = (char)tolower((unsigned char)*s);
}

static void free_dests(char **d, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		free(d[i]);
	free(d);
}

/* --- adding an entry ----------------------------------------------------- */

/* The destinations after the key: elements between commas, each one or
 * more addresses separated by white space.  0, or -1 with err. */
static int parse_dests(const char *p, const char *key, char ***out, size_t *nout, char *err,
                       size_t errlen)
{
	char **d = NULL;
	size_t n = 0, i, len;
	int elem_empty;

	for (;;) {
		elem_empty = 1;
		for (;;) {
			p += strspn(p, " \t");
			len = strcspn(p, " \t,");
			if (len == 0)
				break;
			elem_empty = 0;
			if (!addr_ok(p, len)) {
				snprintf(err, errlen, "%s: bad destination \"%.*s\"", key,
				         len > 300 ? 300 : (int)len, p);
				goto fail;
			}
			for (i = 0; i < n; i++)
				if (strlen(d[i]) == len && strncasecmp(d[i], p, len) == 0) {
					snprintf(err, errlen, "%s: destination %s given twice", key,
					         d[i]);
					goto fail;
				}
			if (n == INBOUND_MAP_DEST_MAX) {
				snprintf(err, errlen, "%s: more than %d destinations", key,
				         INBOUND_MAP_DEST_MAX);
				goto fail;
			}
			d = xreallocarray(d, n + 1, sizeof(*d));
			d[n++] = xstrndup(p, len);
			p += len;
		}
		if (elem_empty && (n > 0 || *p == ',')) {
			snprintf(err, errlen, "%s: empty destination (a stray comma)", key);
			goto fail;
		}
		if (*p != ',')
			break;
		p++;
	}
	if (n == 0) {
		snprintf(err, errlen, "%s: no destination", key);
		goto fail;
	}
	*out = d;
	*nout = n;
	return 0;
fail:
	free_dests(d, n);
	return -1;
}

int inbound_map_add(struct inbound_map *map, const char *line, char *err, size_t errlen)
{
	const char *p = line;
	enum inbound_key_kind kind;
	struct entry *e;
	char *key, **dests;
	size_t n, ndests;
	long at;

	if (strlen(line) > INBOUND_MAP_LINE_MAX) {
		snprintf(err, errlen, "entry longer than %d octets", INBOUND_MAP_LINE_MAX);
		return -1;
	}
	p += strspn(p, " \t");
	n = strcspn(p, " \t=:");
	if (n == 0) {
		snprintf(err, errlen, "no key before the destinations");
		return -1;
	}
	key = xstrndup(p, n);
	lower(key);
	if ((kind = key_kind(key, n)) == INBOUND_KEY_NONE) {
		snprintf(err, errlen, "bad key \"%.300s\" (want user@domain, @domain, user or @)",
		         key);
		goto fail;
	}
	if ((at = find(map, key)) >= 0) {
		snprintf(err, errlen, "key %s given twice", key);
		goto fail;
	}
	p += n;
	p += strspn(p, " \t");
	if (*p == '=' || *p == ':')
		p++;
	if (parse_dests(p, key, &dests, &ndests, err, errlen) == -1)
		goto fail;
	if (map->ndests + ndests > INBOUND_MAP_DEST_MAX) {
		snprintf(err, errlen, "%s: more than %d destinations in the whole map", key,
		         INBOUND_MAP_DEST_MAX);
		free_dests(dests, ndests);
		goto fail;
	}

	at = -at - 1;
	map->e = xreallocarray(map->e, map->n + 1, sizeof(*map->e));
	memmove(map->e + at + 1, map->e + at, (map->n - (size_t)at) * sizeof(*map->e));
	e = &map->e[at];
	e->key = key;
	e->kind = kind;
	e->dests = dests;
	e->ndests = ndests;
	map->n++;
	map->ndests += ndests;
	return 0;
fail:
	free(key);
	return -1;
}

/* --- lookup -------------------------------------------------------------- */

/* The entry for key if it is of that kind, else -1. */
static long find_kind(const struct inbound_map *map, const char *key, enum inbound_key_kind kind)
{
	long i = find(map, key);

	return i >= 0 && map->e[i].kind == kind ? i : -1;
}

/* The lookup steps of inbound_map.h for one recipient: an entry index or -1. */
static long lookup(const struct inbound_map *map, const char *rcpt)
{
	char *a = xstrdup(rcpt), *at, *plus, *tmp;
	long i = -1;

	lower(a);
	at = strrchr(a, '@');
	plus = strchr(a, '+');
	if (plus != NULL &&
	    (plus == a || (at != NULL && plus > at) || !(map->flags & INBOUND_MAP_PLUS)))
		plus = NULL; /* no "+detail" to ignore */
	if (at != NULL && at > a) {
		i = find_kind(map, a, INBOUND_KEY_ADDRESS);
		if (i < 0 && plus != NULL) {
			tmp = xasprintf("%.*s%s", (int)(plus - a), a, at);
			i = find_kind(map, tmp, INBOUND_KEY_ADDRESS);
			free(tmp);
		}
		if (i < 0 && at[1] != '\0')
			i = find_kind(map, at, INBOUND_KEY_DOMAIN);
	}
	if (i < 0 && at != a) {
		if (at != NULL)
			*at = '\0';
		i = find_kind(map, a, INBOUND_KEY_USER);
		if (i < 0 && plus != NULL) {
			*plus = '\0';
			i = find_kind(map, a, INBOUND_KEY_USER);
		}
	}
	if (i < 0)
		i = find_kind(map, "@", INBOUND_KEY_CATCHALL);
	free(a);
	return i;
}

size_t inbound_map_resolve(const struct inbound_map *map, const char *const *rcpts, size_t n,
                           struct inbound_resolved *out)
{
	unsigned char *used = xcalloc(map->n + 1, 1);
	size_t r, j, k;
	long i;

	memset(out, 0, sizeof(*out));
	out->dests = xcalloc(map->ndests + 1, sizeof(*out->dests));
	out->match = xcalloc(n + 1, sizeof(*out->match));
	out->nmatch = n;
	for (r = 0; r < n; r++) {
		struct inbound_match *mt = &out->match[r];
		const struct entry *e;

		mt->rcpt = rcpts[r];
		if ((i = lookup(map, rcpts[r])) < 0) {
			mt->kind = INBOUND_KEY_NONE;
			out->unmatched++;
			continue;
		}
		e = &map->e[i];
		mt->kind = e->kind;
		mt->key = e->key;
		if (used[i]++)
			continue; /* its destinations are in already */
		for (j = 0; j < e->ndests; j++) {
			for (k = 0; k < out->ndests; k++)
				if (strcasecmp(out->dests[k], e->dests[j]) == 0)
					break;
			if (k == out->ndests)
				out->dests[out->ndests++] = e->dests[j];
		}
	}
	free(used);
	return out->ndests;
}

void inbound_resolved_free(struct inbound_resolved *r)
{
	free(r->dests);
	free(r->match);
	memset(r, 0, sizeof(*r));
}

/* --- life cycle ---------------------------------------------------------- */

struct inbound_map *inbound_map_new(int flags)
{
	struct inbound_map *map = xcalloc(1, sizeof(*map));

	map->flags = flags;
	return map;
}

void inbound_map_free(struct inbound_map *map)
{
	size_t i;

	if (map == NULL)
		return;
	for (i = 0; i < map->n; i++) {
		free(map->e[i].key);
		free_dests(map->e[i].dests, map->e[i].ndests);
	}
	free(map->e);
	free(map);
}

size_t inbound_map_keys(const struct inbound_map *map)
{
	return map->n;
}

size_t inbound_map_dests(const struct inbound_map *map)
{
	return map->ndests;
}
