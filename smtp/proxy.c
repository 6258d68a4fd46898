/*
 * proxy.c - PROXY protocol v1/v2 header parser (see proxy.h).
 *
 * Strict, because whoever sends the header chooses the client address that
 * relay_networks is matched against.  v1: fields separated by exactly one
 * space, addresses that parse as the declared family, ports decimal 0..65535
 * without sign or leading zero, CRLF within 107 bytes.  v2: version nibble 2,
 * a known command and family, a length that covers the family's address
 * block, and TLVs that tile the rest exactly (their contents are skipped).
 *
 * Incremental without state: every call reads the buffer from the start.
 * What is refused on a prefix is refused on every longer buffer (early checks
 * are only ever necessary conditions of the full ones) and a complete header
 * does not depend on the bytes after it, so the answer never flips as bytes
 * arrive; tests/fuzz/fuzz_proxy.c checks exactly that.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "smtp/proxy.h"

static const unsigned char v2_sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                         0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

enum { V2_CMD_LOCAL = 0x0, V2_CMD_PROXY = 0x1 };
enum { V2_FAM_UNSPEC = 0x00, V2_FAM_TCP4 = 0x11, V2_FAM_TCP6 = 0x21 };

#define V2_ADDR_TCP4 12 /* src, dst (4 octets each), sport, dport (2 each) */
#define V2_ADDR_TCP6 36 /* src, dst (16 octets each), sport, dport */
#define V2_TLV_HDR   3  /* type, 16-bit length */

/* v1 fields after "PROXY ", in order */
enum { F_PROTO, F_SRC, F_DST, F_SPORT, F_DPORT };

struct v1_addrs {
	int family;
	unsigned char src[16], dst[16];
	unsigned sport, dport;
};

static int fail(struct proxy_result *out, const char *why)
{
	out->error = why;
	return -1;
}

static size_t min_size(size_t a, size_t b)
{
	return a < b ? a : b;
}

static int is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static int is_xdigit(unsigned char c)
{
	return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* A v1 port.  partial: more digits may follow, so check only what they
 * cannot repair. */
static int v1_port(const unsigned char *p, size_t n, int partial, unsigned *port)
{
	unsigned v = 0;
	size_t i;

	if (n == 0)
		return partial ? 0 : -1;
	if (n > 5 || (n > 1 && p[0] == '0'))
		return -1;
	for (i = 0; i < n; i++) {
		if (!is_digit(p[i]))
			return -1;
		v = v * 10 + (unsigned)(p[i] - '0');
	}
	if (v > 65535)
		return -1;
	*port = v;
	return 0;
}

/* A v1 address of the declared family.  partial: as for v1_port. */
static int v1_addr(const unsigned char *p, size_t n, int family, int partial, unsigned char *addr)
{
	char text[INET6_ADDRSTRLEN];
	size_t i;

	if (n > (family == AF_INET ? INET_ADDRSTRLEN : INET6_ADDRSTRLEN) - 1)
		return -1;
	for (i = 0; i < n; i++)
		if (!(is_digit(p[i]) || p[i] == '.' ||
		      (family == AF_INET6 && (is_xdigit(p[i]) || p[i] == ':'))))
			return -1;
	if (partial)
		return 0;
	memcpy(text, p, n);
	text[n] = '\0';
	return inet_pton(family, text, addr) == 1 ? 0 : -1;
}

/* The protocol word's family: AF_INET, AF_INET6, AF_UNSPEC for UNKNOWN, or
 * -1.  While partial, any prefix of a word passes as AF_UNSPEC (the caller
 * looks no further until the word is complete). */
static int v1_proto(const unsigned char *p, size_t n, int partial)
{
	static const struct {
		const char *word;
		int family;
	} protos[] = {{"TCP4", AF_INET}, {"TCP6", AF_INET6}, {"UNKNOWN", AF_UNSPEC}};
	size_t i;

	for (i = 0; i < sizeof(protos) / sizeof(protos[0]); i++) {
		size_t wl = strlen(protos[i].word);
		if (n == wl && memcmp(p, protos[i].word, n) == 0)
			return partial ? AF_UNSPEC : protos[i].family;
		if (partial && n < wl && memcmp(p, protos[i].word, n) == 0)
			return AF_UNSPEC;
	}
	return -1;
}

/* Check the fields of line[6..end).  final: the line ends at end (its CR is
 * there); otherwise the last field may still grow. */
static int v1_fields(const unsigned char *line, size_t end, int final, struct v1_addrs *a,
                     struct proxy_result *out)
{
	size_t p = 6, start, n;
	int field, last, partial;

	for (field = F_PROTO;; field++, p++) {
		start = p;
		while (p < end && line[p] != ' ')
			p++;
		n = p - start;
		last = p == end;
		partial = last && !final;
		switch (field) {
		case F_PROTO:
			a->family = v1_proto(line + start, n, partial);
			if (a->family == -1)
				return fail(out, "v1: unknown protocol (TCP4, TCP6 or UNKNOWN)");
			if (a->family == AF_UNSPEC && !partial)
				return 0; /* UNKNOWN: the rest of the line is ignored */
			break;
		case F_SRC:
		case F_DST:
			if (v1_addr(line + start, n, a->family, partial,
			            field == F_SRC ? a->src : a->dst) == -1)
				return fail(out, field == F_SRC ? "v1: bad source address"
				                                : "v1: bad destination address");
			break;
		case F_SPORT:
		case F_DPORT:
			if (v1_port(line + start, n, partial,
			            field == F_SPORT ? &a->sport : &a->dport) == -1)
				return fail(out, field == F_SPORT ? "v1: bad source port"
				                                  : "v1: bad destination port");
			if (field == F_DPORT && !last)
				return fail(out, "v1: extra data after the destination port");
			break;
		}
		if (last) {
			if (final && field != F_DPORT)
				return fail(out, "v1: missing fields");
			return 0;
		}
	}
}

static void set_addr(struct sockaddr_storage *ss, socklen_t *sslen, int family,
                     const unsigned char *addr, unsigned port)
{
	memset(ss, 0, sizeof(*ss));
	if (family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;
		sin->sin_family = AF_INET;
		sin->sin_port = htons((unsigned short)port);
		memcpy(&sin->sin_addr, addr, 4);
		*sslen = sizeof(*sin);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((unsigned short)port);
		memcpy(&sin6->sin6_addr, addr, 16);
		*sslen = sizeof(*sin6);
	}
}

static int parse_v1(const unsigned char *buf, size_t len, struct proxy_result *out)
{
	/* The CR is at most at PROXY_V1_MAX - 2, the LF right after it. */
	size_t scan = min_size(len, PROXY_V1_MAX - 1), i;
	struct v1_addrs a;
	int final = 0, complete = 0;

	if (memcmp(buf, "PROXY ", min_size(len, 6)) != 0)
		return fail(out, "v1: not a PROXY header");
	if (len < 6)
		return 0;
	for (i = 0; i < scan; i++) {
		if (buf[i] == '\n')
			return fail(out, "v1: LF without CR");
		if (buf[i] == '\r') {
			final = 1;
			if (i + 1 < len) {
				if (buf[i + 1] != '\n')
					return fail(out, "v1: CR without LF");
				complete = 1;
			}
			break;
		}
	}
	if (!final && len >= PROXY_V1_MAX - 1)
		return fail(out, "v1: no CRLF within 107 bytes");
	if (v1_fields(buf, i, final, &a, out) == -1)
		return -1;
	if (!complete)
		return 0;
	out->version = 1;
	if (a.family == AF_UNSPEC) {
		out->local = 1;
	} else {
		set_addr(&out->src, &out->srclen, a.family, a.src, a.sport);
		set_addr(&out->dst, &out->dstlen, a.family, a.dst, a.dport);
	}
	return (int)(i + 2);
}

static unsigned be16(const unsigned char *p)
{
	return (unsigned)p[0] << 8 | p[1];
}

static int parse_v2(const unsigned char *buf, size_t len, struct proxy_result *out)
{
	size_t total, need, off, tlv;
	unsigned cmd, fam;
	int family;

	if (memcmp(buf, v2_sig, min_size(len, sizeof(v2_sig))) != 0)
		return fail(out, "v2: bad signature");
	if (len < 13)
		return 0;
	if (buf[12] >> 4 != 2)
		return fail(out, "v2: unsupported version");
	cmd = buf[12] & 0x0f;
	if (cmd != V2_CMD_LOCAL && cmd != V2_CMD_PROXY)
		return fail(out, "v2: unknown command");
	if (len < 14)
		return 0;
	/* LOCAL: the family is ignored (spec 2.2), as is the whole block. */
	fam = cmd == V2_CMD_LOCAL ? V2_FAM_UNSPEC : buf[13];
	if (fam != V2_FAM_UNSPEC && fam != V2_FAM_TCP4 && fam != V2_FAM_TCP6)
		return fail(out, "v2: unsupported address family");
	if (len < PROXY_V2_HDR)
		return 0;
	total = PROXY_V2_HDR + be16(buf + 14);
	if (total > PROXY_HEADER_MAX)
		return fail(out, "v2: header longer than 4096 bytes");
	need = fam == V2_FAM_TCP4 ? V2_ADDR_TCP4 : fam == V2_FAM_TCP6 ? V2_ADDR_TCP6 : 0;
	if (total - PROXY_V2_HDR < need)
		return fail(out, "v2: length too short for the address family");
	if (len < total)
		return 0;
	if (fam == V2_FAM_UNSPEC) {
		out->version = 2;
		out->local = 1;
		return (int)total;
	}
	for (off = PROXY_V2_HDR + need; off < total; off += V2_TLV_HDR + tlv) {
		if (total - off < V2_TLV_HDR)
			return fail(out, "v2: truncated TLV");
		tlv = be16(buf + off + 1);
		if (tlv > total - off - V2_TLV_HDR)
			return fail(out, "v2: TLV longer than the header");
	}
	out->version = 2;
	family = fam == V2_FAM_TCP4 ? AF_INET : AF_INET6;
	off = PROXY_V2_HDR;
	need = family == AF_INET ? 4 : 16; /* one address */
	set_addr(&out->src, &out->srclen, family, buf + off, be16(buf + off + 2 * need));
	set_addr(&out->dst, &out->dstlen, family, buf + off + need, be16(buf + off + 2 * need + 2));
	return (int)total;
}

int proxy_parse(const unsigned char *buf, size_t len, struct proxy_result *out)
{
	memset(out, 0, sizeof(*out));
	if (len == 0)
		return 0;
	if (buf[0] == 'P')
		return parse_v1(buf, len, out);
	if (buf[0] == v2_sig[0])
		return parse_v2(buf, len, out);
	return fail(out, "no PROXY header");
}
