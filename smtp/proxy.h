/*
 * proxy.h - the PROXY protocol header (HAProxy, versions 1 and 2) that a load
 * balancer or tunnel puts in front of the SMTP stream on listeners with
 * proxy_protocol = yes.
 *
 * A pure, incremental parser: the listener hands it whatever it has read so
 * far from the start of the connection, and it says "complete, N bytes",
 * "need more" or "invalid".  No I/O, no allocation, no logging, no timers:
 * the caller owns the read cap (PROXY_HEADER_MAX), the timeout and what to
 * log.  It must never be called on a listener without proxy_protocol, where
 * "PROXY ..." is just an unknown SMTP command from an untrusted client.
 *
 * Spec: https://www.haproxy.org/download/2.0/doc/proxy-protocol.txt
 */
#ifndef SESRELAY_PROXY_H
#define SESRELAY_PROXY_H

#include <stddef.h>
#include <sys/socket.h>

#define PROXY_V1_MAX     107  /* "PROXY UNKNOWN <v6> <v6> 65535 65535\r\n" */
#define PROXY_V2_HDR     16   /* signature, ver/cmd, family, length */
#define PROXY_HEADER_MAX 4096 /* v2 with TLVs; a longer header is refused */

struct proxy_result {
	int version; /* 1 or 2 */
	/*
	 * 1: keep the connection's own addresses (v1 UNKNOWN, v2 LOCAL - e.g. a
	 * health check - or v2 PROXY with family UNSPEC); src/dst are unset.
	 */
	int local;
	struct sockaddr_storage src, dst; /* AF_INET or AF_INET6, port set */
	socklen_t srclen, dstlen;         /* 0 when local */
	const char *error;                /* static text, set when -1 is returned */
};

/*
 * Parse the first len bytes of a connection.  Returns the header's length
 * (>0, complete; the SMTP stream starts after it), 0 when more bytes are
 * needed (only ever while len < PROXY_HEADER_MAX), or -1 when the bytes can
 * never become a valid header (out->error says why).  Reads nothing past
 * len; a result never changes as more bytes arrive, so the caller may call
 * again with a longer buffer after 0.
 */
int proxy_parse(const unsigned char *buf, size_t len, struct proxy_result *out);

#endif
