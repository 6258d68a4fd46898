/*
 * fuzz_proxy.c - libFuzzer target for the PROXY header parser (smtp/proxy.c).
 *
 * The input is what a peer sends first on a proxy_protocol listener.  Beyond
 * "no crash, no read past len" (every call gets an exactly-sized copy, so
 * ASan sees an over-read), it checks the promises proxy.h makes to the
 * listener, which calls the parser again each time more bytes arrive:
 *   - the answer is consistent: consumed <= len, "need more" only below the
 *     read cap, an error text exactly when invalid, addresses exactly when
 *     not local;
 *   - the answer never flips as bytes arrive: on the prefixes of an input, a
 *     complete header reads "need more" until its last byte and the same
 *     result from then on, and "invalid" is final;
 *   - a parsed address means what it says: written back as a canonical v1
 *     line, it parses to the same sockaddrs.
 * A broken promise aborts, which libFuzzer reports as a crash.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp/proxy.h"

#define PROMISE(cond)                                                                              \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_proxy: broken promise at %s:%d: %s\n", __FILE__,     \
			        __LINE__, #cond);                                                  \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* Parse data[0..len) from the end of a buffer of exactly len bytes. */
static int parse_exact(const uint8_t *data, size_t len, struct proxy_result *out)
{
	uint8_t *copy = malloc(len ? len : 1);
	int r;

	PROMISE(copy != NULL);
	memcpy(copy, data, len);
	r = proxy_parse(copy, len, out);
	free(copy);
	return r;
}

static int addr_ok(const struct sockaddr_storage *ss, socklen_t len)
{
	if (ss->ss_family == AF_INET)
		return len == sizeof(struct sockaddr_in);
	if (ss->ss_family == AF_INET6)
		return len == sizeof(struct sockaddr_in6);
	return 0;
}

static void check_answer(const uint8_t *data, size_t len, int r, const struct proxy_result *res)
{
	PROMISE(r >= -1);
	PROMISE(r <= PROXY_HEADER_MAX);
	PROMISE((size_t)(r > 0 ? r : 0) <= len);
	PROMISE((r == -1) == (res->error != NULL));
	if (r == 0)
		PROMISE(len < PROXY_HEADER_MAX);
	if (r <= 0) {
		PROMISE(res->version == 0 && res->srclen == 0 && res->dstlen == 0);
		return;
	}
	PROMISE(res->version == 1 || res->version == 2);
	if (res->version == 1) {
		PROMISE(data[0] == 'P' && r <= PROXY_V1_MAX && r >= 15);
		PROMISE(data[r - 2] == '\r' && data[r - 1] == '\n');
	} else {
		PROMISE(r >= PROXY_V2_HDR && r == PROXY_V2_HDR + ((int)data[14] << 8 | data[15]));
	}
	if (res->local) {
		PROMISE(res->srclen == 0 && res->dstlen == 0);
		PROMISE(res->src.ss_family == 0 && res->dst.ss_family == 0);
	} else {
		PROMISE(addr_ok(&res->src, res->srclen) && addr_ok(&res->dst, res->dstlen));
		PROMISE(res->src.ss_family == res->dst.ss_family);
	}
}

/* Write a parsed result back as a v1 line and parse that: same sockaddrs. */
static void check_round_trip(const struct proxy_result *res)
{
	char line[PROXY_V1_MAX + 1], s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];
	struct proxy_result again;
	unsigned sport, dport;
	int n, r;

	if (res->local)
		return;
	if (res->src.ss_family == AF_INET) {
		const struct sockaddr_in *a = (const void *)&res->src, *b = (const void *)&res->dst;
		PROMISE(inet_ntop(AF_INET, &a->sin_addr, s, sizeof(s)) != NULL);
		PROMISE(inet_ntop(AF_INET, &b->sin_addr, d, sizeof(d)) != NULL);
		sport = ntohs(a->sin_port);
		dport = ntohs(b->sin_port);
	} else {
		const struct sockaddr_in6 *a = (const void *)&res->src,
		                          *b = (const void *)&res->dst;
		PROMISE(inet_ntop(AF_INET6, &a->sin6_addr, s, sizeof(s)) != NULL);
		PROMISE(inet_ntop(AF_INET6, &b->sin6_addr, d, sizeof(d)) != NULL);
		sport = ntohs(a->sin6_port);
		dport = ntohs(b->sin6_port);
	}
	n = snprintf(line, sizeof(line), "PROXY TCP%c %s %s %u %u\r\n",
	             res->src.ss_family == AF_INET ? '4' : '6', s, d, sport, dport);
	PROMISE(n > 0 && (size_t)n < sizeof(line));
	r = parse_exact((const uint8_t *)line, (size_t)n, &again);
	PROMISE(r == n && again.local == 0);
	PROMISE(again.srclen == res->srclen && again.dstlen == res->dstlen);
	PROMISE(memcmp(&again.src, &res->src, res->srclen) == 0);
	PROMISE(memcmp(&again.dst, &res->dst, res->dstlen) == 0);
}

/* The answer on a prefix of k bytes, against the answer r on the whole input.
 * *invalid: an earlier (shorter) prefix was already invalid. */
static void check_prefix(const uint8_t *data, size_t k, int r, const struct proxy_result *whole,
                         int *invalid)
{
	struct proxy_result part;
	int rk = parse_exact(data, k, &part);

	check_answer(data, k, rk, &part);
	if (r > 0 && k < (size_t)r)
		PROMISE(rk == 0);
	if (r > 0 && k >= (size_t)r)
		PROMISE(rk == r && memcmp(&part, whole, sizeof(part)) == 0);
	if (r == 0)
		PROMISE(rk == 0);
	if (r == -1) {
		PROMISE(rk == 0 || rk == -1);
		PROMISE(!*invalid || rk == -1);
	}
	*invalid = rk == -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proxy_result whole;
	size_t k, step;
	int r, invalid = 0;

	r = parse_exact(data, size, &whole);
	check_answer(data, size, r, &whole);
	if (r > 0)
		check_round_trip(&whole);
	/* Every prefix up to 128 bytes (all of v1, v2's fixed part and short
	 * TLVs), a sample of longer ones, the last one, and for a complete
	 * header the two around its end. */
	step = size <= 256 ? 1 : size / 64;
	for (k = 0; k < size; k += k < 128 ? 1 : step)
		check_prefix(data, k, r, &whole, &invalid);
	if (size > 0)
		check_prefix(data, size - 1, r, &whole, &invalid);
	if (r > 1) { /* complete: "invalid" is not in play, order does not matter */
		check_prefix(data, (size_t)r - 1, r, &whole, &invalid);
		check_prefix(data, (size_t)r, r, &whole, &invalid);
	}
	return 0;
}
