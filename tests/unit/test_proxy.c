/*
 * test_proxy.c - table-driven tests of the PROXY protocol parser
 * (smtp/proxy.c).
 *
 * Every row is its own unit case and is fed four ways: whole; every proper
 * prefix (a valid header must answer "need more" until its last byte, an
 * invalid one may answer "need more" and then only "invalid", never flip
 * back); followed by the client's first SMTP bytes (which must not change
 * the answer); and from exactly-sized heap copies, so ASan sees any read past
 * len.  Golden vectors are the bytes HAProxy sends with send-proxy (v1) and
 * send-proxy-v2, written out by hand from the protocol specification
 * (haproxy.org/download/2.0/doc/proxy-protocol.txt), plus an AWS NLB-style
 * header with TLVs.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp/proxy.h"
#include "tests/unit/unit.h"

/* the v2 signature, then ver/cmd, family, length (big-endian) */
#define SIG       "\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A"
#define B(s)      s, sizeof(s) - 1
#define SMTP_NEXT "EHLO client.example\r\n"

#define V6MAX "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"

struct proxy_row {
	const char *name;
	const char *bytes;
	size_t len;
	int want;        /* header length, or -1: invalid */
	int version;     /* valid rows */
	int local;       /* valid rows */
	const char *src; /* "addr port"; NULL when local */
	const char *dst;
	const char *err; /* invalid rows: a substring of out.error (or NULL) */
};

#define OK(name, bytes, version, local, src, dst)                                                  \
	{                                                                                          \
		name, B(bytes), (int)sizeof(bytes) - 1, version, local, src, dst, NULL             \
	}
#define BAD(name, bytes, err)                                                                      \
	{                                                                                          \
		name, B(bytes), -1, 0, 0, NULL, NULL, err                                          \
	}

static const struct proxy_row rows[] = {
    /* --- v1 golden: what HAProxy's send-proxy writes ------------------------ */
    OK("v1_haproxy_tcp4", "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", 1, 0,
       "192.168.0.1 56324", "192.168.0.11 443"),
    OK("v1_haproxy_tcp6", "PROXY TCP6 2001:db8::1 2001:db8::2 40000 25\r\n", 1, 0,
       "2001:db8::1 40000", "2001:db8::2 25"),
    OK("v1_haproxy_unknown", "PROXY UNKNOWN\r\n", 1, 1, NULL, NULL),
    /* the longest lines the spec makes receivers accept */
    OK("v1_tcp4_longest", "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n", 1, 0,
       "255.255.255.255 65535", "255.255.255.255 65535"),
    OK("v1_tcp6_longest", "PROXY TCP6 " V6MAX " " V6MAX " 65535 65535\r\n", 1, 0, V6MAX " 65535",
       V6MAX " 65535"),
    OK("v1_unknown_longest_107", "PROXY UNKNOWN " V6MAX " " V6MAX " 65535 65535\r\n", 1, 1, NULL,
       NULL),
    OK("v1_unknown_rest_ignored", "PROXY UNKNOWN whatever  the sender\tputs here\r\n", 1, 1, NULL,
       NULL),
    OK("v1_ports_zero", "PROXY TCP4 10.0.0.1 10.0.0.2 0 0\r\n", 1, 0, "10.0.0.1 0", "10.0.0.2 0"),
    OK("v1_tcp6_v4mapped", "PROXY TCP6 ::ffff:192.0.2.7 ::ffff:192.0.2.1 1234 25\r\n", 1, 0,
       "::ffff:192.0.2.7 1234", "::ffff:192.0.2.1 25"),
    OK("v1_tcp6_uppercase_hex", "PROXY TCP6 2001:DB8::A 2001:db8::b 1 2\r\n", 1, 0, "2001:db8::a 1",
       "2001:db8::b 2"),

    /* --- v2 golden: what HAProxy's send-proxy-v2 writes --------------------- */
    OK("v2_haproxy_tcp4",
       SIG "\x21\x11\x00\x0C"
           "\xC0\xA8\x00\x01\xC0\xA8\x00\x0B\xDC\x04\x01\xBB",
       2, 0, "192.168.0.1 56324", "192.168.0.11 443"),
    OK("v2_haproxy_tcp6",
       SIG "\x21\x21\x00\x24"
           "\x20\x01\x0D\xB8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"
           "\x20\x01\x0D\xB8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02"
           "\x9C\x40\x00\x19",
       2, 0, "2001:db8::1 40000", "2001:db8::2 25"),
    /* health checks (check-send-proxy) and proxies without addresses */
    OK("v2_haproxy_local", SIG "\x20\x00\x00\x00", 2, 1, NULL, NULL),
    OK("v2_proxy_unspec_is_local", SIG "\x21\x00\x00\x00", 2, 1, NULL, NULL),
    /* LOCAL: the family and the whole block are ignored (spec 2.2) */
    OK("v2_local_with_addresses",
       SIG "\x20\x11\x00\x0C"
           "\x0A\x00\x00\x01\x0A\x00\x00\x02\x00\x01\x00\x02",
       2, 1, NULL, NULL),
    OK("v2_local_unknown_family", SIG "\x20\x31\x00\x00", 2, 1, NULL, NULL),
    /* TLVs: AWS NLB's PP2_TYPE_AWS (0xEA) VPC endpoint id, CRC32C, NOOP */
    OK("v2_tcp4_tlvs_aws_nlb",
       SIG "\x21\x11\x00\x30"
           "\xC6\x33\x64\x07\xC0\x00\x02\x01\xA0\x01\x00\x19"
           "\xEA\x00\x17\x01vpce-0123456789abcdef0"
           "\x03\x00\x04\x12\x34\x56\x78"
           "\x04\x00\x00",
       2, 0, "198.51.100.7 40961", "192.0.2.1 25"),
    OK("v2_tcp6_tlv_authority",
       SIG "\x21\x21\x00\x35"
           "\x20\x01\x0D\xB8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x07"
           "\x20\x01\x0D\xB8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19"
           "\xFF\xFF\x02\x4B"
           "\x02\x00\x0E"
           "mx.example.com",
       2, 0, "2001:db8::7 65535", "2001:db8::19 587"),
    OK("v2_tcp4_empty_tlv_last",
       SIG "\x21\x11\x00\x0F"
           "\x7F\x00\x00\x01\x7F\x00\x00\x01\x00\x00\x00\x19"
           "\x04\x00\x00",
       2, 0, "127.0.0.1 0", "127.0.0.1 25"),

    /* --- not a PROXY header at all ----------------------------------------- */
    BAD("smtp_instead_of_header", SMTP_NEXT, "no PROXY header"),
    BAD("http_instead_of_header", "GET / HTTP/1.0\r\n", "no PROXY header"),
    BAD("v1_lowercase_proxy", "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "no PROXY header"),
    BAD("v1_lowercase_protocol", "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    BAD("v1_leading_space", " PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "no PROXY header"),
    BAD("v1_proxy_without_space", "PROXY\r\n", "not a PROXY header"),
    BAD("v1_proxy_tab", "PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY header"),
    BAD("v1_unknown_protocol", "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    BAD("v1_udp4", "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    BAD("v1_tcp4_no_fields", "PROXY TCP4\r\n", "missing fields"),
    BAD("v1_empty_protocol", "PROXY \r\n", "unknown protocol"),

    /* --- v1 framing ---------------------------------------------------------- */
    BAD("v1_lf_without_cr", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "LF without CR"),
    BAD("v1_unknown_lf_without_cr", "PROXY UNKNOWN\n", "LF without CR"),
    BAD("v1_cr_without_lf", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rEHLO x\r\n", "CR without LF"),
    BAD("v1_bare_cr_in_unknown", "PROXY UNKNOWN a\rb\r\n", "CR without LF"),
    BAD("v1_too_long_without_crlf", "PROXY UNKNOWN " V6MAX " " V6MAX " 65535 655355",
        "no CRLF within 107"),
    BAD("v1_108_bytes", "PROXY UNKNOWN " V6MAX " " V6MAX " 65535 655355\r\n", "no CRLF within 107"),
    BAD("v1_double_space_after_proxy", "PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    BAD("v1_double_space_between_addresses", "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
        "bad destination address"),
    BAD("v1_double_space_before_port", "PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n", "bad source port"),
    BAD("v1_trailing_space", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "extra data"),
    BAD("v1_extra_field", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "extra data"),
    BAD("v1_missing_port", "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "missing fields"),
    BAD("v1_tab_separator", "PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", "bad source address"),
    BAD("v1_nul_in_address", "PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n", "bad source address"),

    /* --- v1 addresses -------------------------------------------------------- */
    BAD("v1_ipv4_octet_256", "PROXY TCP4 256.1.1.1 5.6.7.8 1 2\r\n", "bad source address"),
    BAD("v1_ipv4_three_octets", "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "bad source address"),
    BAD("v1_ipv4_five_octets", "PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", "bad source address"),
    BAD("v1_ipv4_leading_zero", "PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "bad source address"),
    BAD("v1_ipv4_hostname", "PROXY TCP4 localhost 5.6.7.8 1 2\r\n", "bad source address"),
    BAD("v1_ipv4_too_long", "PROXY TCP4 1111.2222.3333.4444 5.6.7.8 1 2\r\n", "bad source address"),
    BAD("v1_bad_destination", "PROXY TCP4 1.2.3.4 5.6.7.256 1 2\r\n", "bad destination address"),
    BAD("v1_tcp4_with_ipv6", "PROXY TCP4 ::1 ::1 1 2\r\n", "bad source address"),
    BAD("v1_tcp6_with_ipv4", "PROXY TCP6 192.0.2.1 192.0.2.2 1 2\r\n", "bad source address"),
    BAD("v1_tcp6_mixed_families", "PROXY TCP6 2001:db8::1 192.0.2.2 1 2\r\n",
        "bad destination address"),
    BAD("v1_ipv6_two_double_colons", "PROXY TCP6 2001::db8::1 ::1 1 2\r\n", "bad source address"),
    BAD("v1_ipv6_zone", "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "bad source address"),
    BAD("v1_ipv6_brackets", "PROXY TCP6 [::1] ::1 1 2\r\n", "bad source address"),
    BAD("v1_ipv6_too_long", "PROXY TCP6 " V6MAX ":ffff ::1 1 2\r\n", "bad source address"),

    /* --- v1 ports -------------------------------------------------------------- */
    BAD("v1_port_65536", "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad source port"),
    BAD("v1_port_99999", "PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", "bad destination port"),
    BAD("v1_port_six_digits", "PROXY TCP4 1.2.3.4 5.6.7.8 100000 2\r\n", "bad source port"),
    BAD("v1_port_plus", "PROXY TCP4 1.2.3.4 5.6.7.8 +25 2\r\n", "bad source port"),
    BAD("v1_port_minus", "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "bad source port"),
    BAD("v1_port_leading_zero", "PROXY TCP4 1.2.3.4 5.6.7.8 025 2\r\n", "bad source port"),
    BAD("v1_port_double_zero", "PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n", "bad destination port"),
    BAD("v1_port_hex", "PROXY TCP4 1.2.3.4 5.6.7.8 0x19 2\r\n", "bad source port"),
    BAD("v1_port_letters", "PROXY TCP4 1.2.3.4 5.6.7.8 25a 2\r\n", "bad source port"),
    BAD("v1_port_huge", "PROXY TCP4 1.2.3.4 5.6.7.8 1 4294967321\r\n", "bad destination port"),

    /* --- v2 ------------------------------------------------------------------ */
    BAD("v2_bad_signature", "\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x58\x0A\x21\x00\x00\x00",
        "bad signature"),
    BAD("v2_empty_line_then_smtp", "\r\nEHLO x\r\n", "bad signature"),
    BAD("v2_version_1", SIG "\x11\x11\x00\x0C", "unsupported version"),
    BAD("v2_version_3", SIG "\x31\x11\x00\x0C", "unsupported version"),
    BAD("v2_version_0", SIG "\x01\x00\x00\x00", "unsupported version"),
    BAD("v2_command_2", SIG "\x22\x11\x00\x0C", "unknown command"),
    BAD("v2_command_f", SIG "\x2F\x00\x00\x00", "unknown command"),
    BAD("v2_family_udp4", SIG "\x21\x12\x00\x0C", "unsupported address family"),
    BAD("v2_family_udp6", SIG "\x21\x22\x00\x24", "unsupported address family"),
    BAD("v2_family_unix", SIG "\x21\x31\x00\xD8", "unsupported address family"),
    BAD("v2_family_unknown", SIG "\x21\x41\x00\x0C", "unsupported address family"),
    BAD("v2_family_tcp_unspec_af", SIG "\x21\x01\x00\x0C", "unsupported address family"),
    BAD("v2_tcp4_length_short", SIG "\x21\x11\x00\x08", "too short"),
    BAD("v2_tcp4_length_zero", SIG "\x21\x11\x00\x00", "too short"),
    BAD("v2_tcp6_with_tcp4_length",
        SIG "\x21\x21\x00\x0C"
            "\xC0\xA8\x00\x01\xC0\xA8\x00\x0B\xDC\x04\x01\xBB",
        "too short"),
    BAD("v2_length_65535", SIG "\x21\x11\xFF\xFF", "longer than 4096"),
    BAD("v2_length_4081", SIG "\x21\x11\x0F\xF1", "longer than 4096"),
    BAD("v2_local_length_overflow", SIG "\x20\x00\xFF\xFF", "longer than 4096"),
    BAD("v2_tlv_truncated_header",
        SIG "\x21\x11\x00\x0E"
            "\x0A\x00\x00\x01\x0A\x00\x00\x02\x00\x01\x00\x02"
            "\x04\x00",
        "truncated TLV"),
    BAD("v2_tlv_overruns",
        SIG "\x21\x11\x00\x11"
            "\x0A\x00\x00\x01\x0A\x00\x00\x02\x00\x01\x00\x02"
            "\x04\x00\x03\x00\x00",
        "TLV longer than the header"),
    BAD("v2_tlv_length_ffff",
        SIG "\x21\x11\x00\x10"
            "\x0A\x00\x00\x01\x0A\x00\x00\x02\x00\x01\x00\x02"
            "\x04\xFF\xFF\x00",
        "TLV longer than the header"),
};

#define NROWS (sizeof(rows) / sizeof(rows[0]))

/* --- helpers ------------------------------------------------------------------ */

/* "addr port" of a parsed address, "" when unset. */
static void addr_text(const struct sockaddr_storage *ss, socklen_t len, char *buf, size_t size)
{
	char ip[INET6_ADDRSTRLEN] = "";
	unsigned port = 0;

	buf[0] = '\0';
	if (ss->ss_family == AF_INET && len == sizeof(struct sockaddr_in)) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
		port = ntohs(sin->sin_port);
	} else if (ss->ss_family == AF_INET6 && len == sizeof(struct sockaddr_in6)) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
		port = ntohs(sin6->sin6_port);
	} else if (len == 0) {
		return;
	}
	snprintf(buf, size, "%s %u", ip, port);
}

/* Parse from an exactly-sized heap copy, so ASan catches any read past len. */
static int parse_copy(const char *bytes, size_t len, struct proxy_result *out)
{
	unsigned char *copy = malloc(len ? len : 1);
	int r;

	if (copy == NULL)
		abort();
	memcpy(copy, bytes, len);
	r = proxy_parse(copy, len, out);
	free(copy);
	return r;
}

static void check_valid(const struct proxy_row *row, const struct proxy_result *res)
{
	char got[80];

	CHECK_INT(res->version, row->version);
	CHECK_INT(res->local, row->local);
	CHECK(res->error == NULL);
	addr_text(&res->src, res->srclen, got, sizeof(got));
	CHECK_STR(got, row->src ? row->src : "");
	addr_text(&res->dst, res->dstlen, got, sizeof(got));
	CHECK_STR(got, row->dst ? row->dst : "");
}

static void run_valid(const struct proxy_row *row)
{
	struct proxy_result res, whole;
	char *more;
	size_t k, extra = strlen(SMTP_NEXT);

	CHECK_INT(parse_copy(row->bytes, row->len, &whole), row->want);
	check_valid(row, &whole);
	if (unit_failed)
		return;
	/* every split point: need more until the very last byte */
	for (k = 0; k < row->len; k++) {
		int r = parse_copy(row->bytes, k, &res);
		if (r != 0)
			fprintf(stderr, "  prefix of %zu bytes: %d (%s)\n", k, r,
			        res.error ? res.error : "");
		CHECK_INT(r, 0);
		CHECK(res.error == NULL);
	}
	/* the client's first command right behind it is not part of the header */
	more = malloc(row->len + extra);
	CHECK(more != NULL);
	memcpy(more, row->bytes, row->len);
	memcpy(more + row->len, SMTP_NEXT, extra);
	for (k = 1; k <= extra; k++) {
		int r = parse_copy(more, row->len + k, &res);
		if (r != row->want || memcmp(&res, &whole, sizeof(res)) != 0) {
			free(more);
			CHECK_INT(r, row->want);
			CHECK(!"result changed by the bytes after the header");
		}
	}
	free(more);
}

static void run_invalid(const struct proxy_row *row)
{
	struct proxy_result res;
	char *more;
	size_t k, extra = strlen(SMTP_NEXT);
	int seen_invalid = 0;

	CHECK_INT(parse_copy(row->bytes, row->len, &res), -1);
	CHECK(res.error != NULL);
	CHECK(res.version == 0 && res.local == 0 && res.srclen == 0 && res.dstlen == 0);
	if (row->err != NULL && strstr(res.error, row->err) == NULL)
		fprintf(stderr, "  error was: %s\n", res.error);
	CHECK(row->err == NULL || strstr(res.error, row->err) != NULL);
	/* prefixes: "need more", then "invalid" for good - never a success */
	for (k = 0; k < row->len; k++) {
		int r = parse_copy(row->bytes, k, &res);
		if (seen_invalid)
			CHECK_INT(r, -1);
		CHECK(r == 0 || r == -1);
		CHECK((r == -1) == (res.error != NULL));
		seen_invalid = r == -1;
	}
	/* and more bytes cannot repair it */
	more = malloc(row->len + extra);
	CHECK(more != NULL);
	memcpy(more, row->bytes, row->len);
	memcpy(more + row->len, SMTP_NEXT, extra);
	k = (size_t)parse_copy(more, row->len + extra, &res);
	free(more);
	CHECK_INT((int)k, -1);
}

static void run_row(void)
{
	const struct proxy_row *row = NULL;
	size_t i;

	for (i = 0; i < NROWS; i++)
		if (strcmp(rows[i].name, unit_current) == 0)
			row = &rows[i];
	CHECK(row != NULL);
	if (row->want > 0)
		run_valid(row);
	else
		run_invalid(row);
}

/* --- cases that need more than a table row ---------------------------------- */

/* A v2 header of exactly PROXY_HEADER_MAX bytes: TCP4 and one big TLV. */
static unsigned char *big_v2(size_t total)
{
	unsigned char *h = calloc(1, total);
	size_t tlv = total - PROXY_V2_HDR - 12 - 3;

	if (h == NULL)
		abort();
	memcpy(h, SIG "\x21\x11", 14);
	h[14] = (unsigned char)((total - PROXY_V2_HDR) >> 8);
	h[15] = (unsigned char)(total - PROXY_V2_HDR);
	memcpy(h + 16, "\x0A\x00\x00\x01\x0A\x00\x00\x02\x00\x01\x00\x02", 12);
	h[28] = 0x04; /* PP2_TYPE_NOOP */
	h[29] = (unsigned char)(tlv >> 8);
	h[30] = (unsigned char)tlv;
	return h;
}

static void v2_longest_header(void)
{
	struct proxy_result res;
	unsigned char *h = big_v2(PROXY_HEADER_MAX);

	CHECK_INT(proxy_parse(h, PROXY_HEADER_MAX, &res), PROXY_HEADER_MAX);
	CHECK_INT(res.local, 0);
	CHECK_INT(proxy_parse(h, PROXY_HEADER_MAX - 1, &res), 0);
	CHECK_INT(proxy_parse(h, 16, &res), 0);
	free(h);
	h = big_v2(PROXY_HEADER_MAX + 1);
	CHECK_INT(proxy_parse(h, 16, &res), -1);
	CHECK(strstr(res.error, "4096") != NULL);
	free(h);
}

/* Whatever a client sends, 0 ("need more") stops well before the read cap. */
static void need_more_is_bounded(void)
{
	static const char *const starts[] = {"PROXY UNKNOWN ", "PROXY TCP6 ::", "P"};
	unsigned char buf[PROXY_HEADER_MAX];
	struct proxy_result res;
	size_t i, k, n;

	for (i = 0; i < sizeof(starts) / sizeof(starts[0]); i++) {
		memset(buf, 'f', sizeof(buf));
		n = strlen(starts[i]);
		memcpy(buf, starts[i], n);
		for (k = 0; k <= sizeof(buf); k++)
			if (proxy_parse(buf, k, &res) != 0)
				break;
		CHECK(k <= PROXY_V1_MAX);
	}
	CHECK_INT(proxy_parse(buf, 0, &res), 0);
}

/* The results of one call do not leak into the next. */
static void result_is_reset(void)
{
	static const char v1[] = "PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n";
	struct proxy_result res;

	CHECK_INT(proxy_parse((const unsigned char *)"x", 1, &res), -1);
	CHECK(res.error != NULL);
	CHECK_INT(proxy_parse((const unsigned char *)v1, sizeof(v1) - 1, &res), sizeof(v1) - 1);
	CHECK(res.error == NULL);
	CHECK_INT(res.srclen, sizeof(struct sockaddr_in));
	CHECK_INT(proxy_parse((const unsigned char *)"PROXY UNKNOWN\r\n", 15, &res), 15);
	CHECK_INT(res.local, 1);
	CHECK_INT(res.srclen, 0);
	CHECK_INT(res.src.ss_family, 0);
}

static const struct unit_case fn_cases[] = {
    {"v2_longest_header", v2_longest_header},
    {"need_more_is_bounded", need_more_is_bounded},
    {"result_is_reset", result_is_reset},
};

#define NFN (sizeof(fn_cases) / sizeof(fn_cases[0]))

/* One unit case per table row, then the function cases. */
static struct unit_case cases[NROWS + NFN];

__attribute__((constructor)) static void register_cases(void)
{
	size_t i;

	for (i = 0; i < NROWS; i++) {
		cases[i].name = rows[i].name;
		cases[i].fn = run_row;
	}
	for (i = 0; i < NFN; i++)
		cases[NROWS + i] = fn_cases[i];
}

UNIT_MAIN(cases)
