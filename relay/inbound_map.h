/*
 * inbound_map.h - the [inbound] recipient map: which real mailboxes each
 * address that SES received mail for is forwarded to.
 *
 * One entry per config line, aws-lambda-ses-forwarder's forwardMapping:
 *
 *	KEY = DEST[, DEST...]		KEY: DEST DEST		KEY DEST, DEST
 *
 * The key ends at the first white space, '=' or ':' (so a key cannot contain
 * '=' or ':'); then white space and at most one '=' or ':' separate it from
 * the destinations, which are separated by commas and/or white space.  An
 * empty element (",,", a comma at either end) is an error.  KEY is one of
 *
 *	info@example.com	that address
 *	@example.com		any user at that domain
 *	info			that user at any domain
 *	@			any recipient no other key matched (catch-all)
 *
 * and each DEST a plain addr-spec: a dot-atom local part (no quoted local
 * parts), '@', a domain name with at least one dot (no address literals).
 * Keys and addresses compare case-insensitively throughout; keys are stored
 * lower-cased, destinations as written.  Rejected: a bad key or destination,
 * no destination, a key given twice, the same destination twice under one
 * key, and more than INBOUND_MAP_DEST_MAX destinations in the whole map.  A
 * rejected line leaves the map as it was.
 *
 * Lookup of one original recipient, first match wins (the Lambda's order):
 *   1. the exact address,
 *   2. with INBOUND_MAP_PLUS: the address without its "+detail"
 *      (the Lambda's allowPlusSign: "info+shop@example.com" -> "info@example.com"),
 *   3. "@domain",
 *   4. the bare user (with INBOUND_MAP_PLUS: then the user without "+detail"),
 *   5. "@".
 * A recipient matching nothing maps to nothing: the caller logs and drops it.
 */
#ifndef SESRELAY_INBOUND_MAP_H
#define SESRELAY_INBOUND_MAP_H

#include <stddef.h>

#define INBOUND_MAP_DEST_MAX 1000 /* destinations in the whole map */
#define INBOUND_MAP_LINE_MAX 8192 /* octets of one entry */

#define INBOUND_MAP_PLUS 0x01 /* ignore "+detail" in recipients (the Lambda's default) */

enum inbound_key_kind {
	INBOUND_KEY_NONE, /* no key matched */
	INBOUND_KEY_ADDRESS,
	INBOUND_KEY_DOMAIN,
	INBOUND_KEY_USER,
	INBOUND_KEY_CATCHALL,
};

struct inbound_map;

struct inbound_map *inbound_map_new(int flags);
void inbound_map_free(struct inbound_map *map);

/* Parse one entry and add it.  0, or -1 with the reason in err (the caller
 * prefixes file and line). */
int inbound_map_add(struct inbound_map *map, const char *line, char *err, size_t errlen);

size_t inbound_map_keys(const struct inbound_map *map);
size_t inbound_map_dests(const struct inbound_map *map); /* in all entries */

/* What one original recipient matched, for the log line. */
struct inbound_match {
	const char *rcpt; /* as given to inbound_map_resolve */
	enum inbound_key_kind kind;
	/* as stored: "info@example.com", "@example.com", "info" or "@"; NULL: none */
	const char *key;
};

struct inbound_resolved {
	const char **dests; /* the union of the matched keys' destinations,
	                     * in order of first appearance, without duplicates
	                     * (compared case-insensitively) */
	size_t ndests;
	struct inbound_match *match; /* one per recipient, in the order given */
	size_t nmatch;
	size_t unmatched; /* recipients that matched no key */
};

/*
 * Map the original recipients rcpts[0..n) to destinations.  Strings in out
 * point into map and rcpts: valid while both live.  Free the arrays with
 * inbound_resolved_free().  Returns out->ndests (0: nothing to forward to).
 */
size_t inbound_map_resolve(const struct inbound_map *map, const char *const *rcpts, size_t n,
                           struct inbound_resolved *out);
void inbound_resolved_free(struct inbound_resolved *r);

#endif
