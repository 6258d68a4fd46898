/*
 * netaddr.h - IP addresses, CIDR networks and "host:port" listener addresses.
 *
 * Owns the one place where textual addresses become sockaddrs and where a
 * client address is matched against relay_networks.  IPv4-mapped IPv6 client
 * addresses (::ffff:a.b.c.d) match IPv4 networks, so a dual-stack listener
 * cannot be used to slip past an IPv4 relay_networks entry.
 */
#ifndef SESRELAY_NETADDR_H
#define SESRELAY_NETADDR_H

#include <stddef.h>
#include <sys/socket.h>

struct netaddr_cidr {
	int family;               /* AF_INET or AF_INET6 */
	unsigned char addr[16];   /* network bytes; 4 used for AF_INET */
	int prefix;               /* 0..32 or 0..128 */
};

/* "192.168.0.0/16", "::1/128", "10.1.2.3" (host).  0 or -1. */
int netaddr_parse_cidr(const char *s, struct netaddr_cidr *out);
/* "0.0.0.0:25", "[::]:25", "localhost:2525" is refused (numeric only).  0 or -1. */
int netaddr_parse_hostport(const char *s, struct sockaddr_storage *ss, socklen_t *len);
int netaddr_match(const struct netaddr_cidr *nets, size_t n, const struct sockaddr *sa);
/* Numeric address text of sa, without port ("192.0.2.1", "2001:db8::1"). */
void netaddr_ntop(const struct sockaddr *sa, char *buf, size_t len);
int netaddr_is_loopback(const struct sockaddr *sa);
/* Same address (port ignored), mapped IPv4 folded to IPv4. */
int netaddr_key(const struct sockaddr *sa, unsigned char key[17]);

#endif
