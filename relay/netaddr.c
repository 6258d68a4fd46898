/*
 * netaddr.c - address parsing and relay_networks matching.
 *
 * Only numeric addresses are accepted: resolving a name here would block the
 * loop at reload and make relay decisions depend on DNS.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay/netaddr.h"

int netaddr_parse_cidr(const char *s, struct netaddr_cidr *out)
{
	char buf[INET6_ADDRSTRLEN + 8], *slash, *end;
	long prefix;
	int max;

	if (strlen(s) >= sizeof(buf))
		return -1;
	strcpy(buf, s);
	slash = strchr(buf, '/');
	if (slash)
		*slash++ = '\0';
	memset(out, 0, sizeof(*out));
	if (inet_pton(AF_INET, buf, out->addr) == 1) {
		out->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
		out->family = AF_INET6;
		max = 128;
	} else
		return -1;
	prefix = max;
	if (slash) {
		if (*slash == '\0')
			return -1;
		prefix = strtol(slash, &end, 10);
		if (*end != '\0' || prefix < 0 || prefix > max)
			return -1;
	}
	out->prefix = (int)prefix;
	return 0;
}

int netaddr_parse_hostport(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[INET6_ADDRSTRLEN + 2], *end;
	const char *colon, *port;
	long p;
	size_t hl;

	memset(ss, 0, sizeof(*ss));
	if (s[0] == '[') {
		const char *rb = strchr(s, ']');
		if (rb == NULL || rb[1] != ':')
			return -1;
		hl = (size_t)(rb - s - 1);
		if (hl >= sizeof(host))
			return -1;
		memcpy(host, s + 1, hl);
		host[hl] = '\0';
		port = rb + 2;
	} else {
		colon = strrchr(s, ':');
		if (colon == NULL || strchr(s, ':') != colon)
			return -1;
		hl = (size_t)(colon - s);
		if (hl >= sizeof(host))
			return -1;
		memcpy(host, s, hl);
		host[hl] = '\0';
		port = colon + 1;
	}
	if (*port == '\0')
		return -1;
	p = strtol(port, &end, 10);
	if (*end != '\0' || p < 0 || p > 65535)
		return -1;
	if (s[0] == '[') {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
		if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
			return -1;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)p);
		*len = sizeof(*sin6);
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;
		if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
			return -1;
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)p);
		*len = sizeof(*sin);
	}
	return 0;
}

/* The address bytes of sa with IPv4-mapped IPv6 folded to IPv4. */
static int addr_bytes(const struct sockaddr *sa, unsigned char *b)
{
	static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

	if (sa->sa_family == AF_INET) {
		memcpy(b, &((const struct sockaddr_in *)sa)->sin_addr, 4);
		return AF_INET;
	}
	if (sa->sa_family == AF_INET6) {
		const unsigned char *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
		if (memcmp(a, mapped, 12) == 0) {
			memcpy(b, a + 12, 4);
			return AF_INET;
		}
		memcpy(b, a, 16);
		return AF_INET6;
	}
	return -1;
}

static int prefix_equal(const unsigned char *a, const unsigned char *b, int bits)
{
	int full = bits / 8, rest = bits % 8;

	if (memcmp(a, b, (size_t)full) != 0)
		return 0;
	if (rest == 0)
		return 1;
	unsigned char mask = (unsigned char)(0xff << (8 - rest));
	return (a[full] & mask) == (b[full] & mask);
}

int netaddr_match(const struct netaddr_cidr *nets, size_t n, const struct sockaddr *sa)
{
	unsigned char b[16];
	int family = addr_bytes(sa, b);
	size_t i;

	for (i = 0; i < n; i++)
		if (nets[i].family == family && prefix_equal(nets[i].addr, b, nets[i].prefix))
			return 1;
	return 0;
}

void netaddr_ntop(const struct sockaddr *sa, char *buf, size_t len)
{
	unsigned char b[16];
	int family = addr_bytes(sa, b);

	if (family < 0 || inet_ntop(family, b, buf, (socklen_t)len) == NULL)
		snprintf(buf, len, "unknown");
}

int netaddr_is_loopback(const struct sockaddr *sa)
{
	unsigned char b[16];
	int family = addr_bytes(sa, b);

	if (family == AF_INET)
		return b[0] == 127;
	if (family == AF_INET6)
		return memcmp(b, in6addr_loopback.s6_addr, 16) == 0;
	return 0;
}

int netaddr_key(const struct sockaddr *sa, unsigned char key[17])
{
	memset(key, 0, 17);
	int family = addr_bytes(sa, key + 1);
	if (family < 0)
		return -1;
	key[0] = (unsigned char)family;
	return 0;
}
