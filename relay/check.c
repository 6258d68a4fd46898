/*
 * check.c - `sesrelay check`: the configuration, the credentials, the SES
 * account, every sender identity and its DNS, one verdict line per check.
 *
 * Output (stdout), one line per check, the verdict padded to six columns and
 * " — fix: " before what to change:
 *
 *     ok    config /etc/sesrelay/relay.ini
 *     warn  SES account: sandbox (200/24h, 1/s; recipients must be verified) — fix: ...
 *     FAIL  DNS example.com: SPF record does not include amazonses.com — fix: TXT ...
 *
 * Lines come in blocks (configuration, credentials, account, then each sender
 * domain followed by its addresses) and a block is printed once it and every
 * block before it are complete, so the order never depends on which answer
 * arrived first.  A summary line ends the run.  Exit 0 when no line says
 * FAIL, 1 when one does, 78 when the configuration, or the users file or TLS
 * key it names, does not load.
 *
 * Senders are the users file's allowed senders ("a@b" and "@b"; "*" names
 * nothing), [queue] bounce_from and [inbound] from_address.  Every domain
 * among them gets GetEmailIdentity; an address gets one of its own unless
 * its domain is verified (that covers every address in it).  The DNS checks
 * run for the "@domain" senders and for the domains SES knows as identities,
 * not for gmail.com because one address there is verified.  SES calls go one
 * at a time, since SES allows about one non-send call per second (a throttled
 * call is retried); DNS lookups run in parallel.
 *
 * With [inbound], two blocks (three with queue_url) follow the senders.  The
 * bucket: calls that change nothing and succeed only with the permission the
 * forwarder needs - list one key under the prefix, then get, delete and (for
 * delete_after = move, failed_verdict = hold) copy a key that cannot exist,
 * which S3 answers with NoSuchKey or 204 when the action is allowed and
 * AccessDenied when it is not; a refusal's fix names the IAM action and
 * resource.  These run with the same credentials as SES, alongside the SES
 * calls (S3 is another service).
 * With queue_url, the queue gets a block of its own: one ReceiveMessage that
 * does not wait and hides nothing (visibility 0: what it sees is visible
 * again at once), whose message, if one waits, is read to tell an SES receipt
 * notification for our bucket from anything else, then a DeleteMessage of a
 * handle SQS never issued, which it answers ReceiptHandleIsInvalid when the
 * action is allowed.  The forwarder then no longer lists the bucket, so a
 * refused s3:ListBucket is only a warning.
 * Then the receiving domains: every domain the map names ("@d", "u@d") must
 * have its MX at inbound-smtp.REGION.amazonaws.com, a FAIL otherwise; such a
 * domain's sender block leaves its MX to this block.
 *
 * DNS: libevent's evdns resolves only A, AAAA and PTR, so the TXT, MX and
 * CNAME queries go through a small stub resolver of our own on the loop (UDP
 * with EDNS0, TCP when the answer comes back truncated, three tries across the
 * servers).  evdns supplies the servers: those in /etc/resolv.conf, or
 * SESRELAY_DNS_SERVER=HOST:PORT (tests point it at a local server).  Answers
 * are hostile input: every length is checked before it is used, compression
 * pointers may only point backwards, and what is kept is capped.
 *
 * Must never: print a secret (at most the first four characters of an access
 * key id), run unbounded (SESRELAY_CHECK_TIMEOUT, 60 s by default, turns every
 * open question into a "timed out" FAIL), or block the loop.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <openssl/asn1.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "conf/conf.h"
#include "relay/check.h"
#include "relay/log.h"
#include "relay/users.h"
#include "relay/util.h"
#include "ses/s3.h"
#include "ses/ses_api.h"
#include "ses/ses_creds.h"
#include "ses/ses_http.h"
#include "ses/sigv4.h"
#include "ses/sqs.h"
#include "smtp/tls.h"

#define EX_CONFIG_ 78
#define EX_USAGE_  2

#define FIX " \u2014 fix: "

#define CHECK_TIMEOUT_DEFAULT 60    /* seconds, the whole run */
#define SES_CALL_TIMEOUT_MS   15000 /* one SES call */
#define SES_CONNECT_MS        5000
#define SES_THROTTLE_RETRIES  5 /* a throttled call, 1 s, 2 s, ... apart */
#define SES_SERVICE           "ses"
#define SES_ACCOUNT_PATH      "/v2/email/account"
#define SES_IDENTITY_PATH     "/v2/email/identities/"
#define CERT_WARN_DAYS        14
#define QUOTA_WARN            0.8 /* of the 24-hour quota */
#define TEXT_MAX              320 /* one error or status text */

#define AMAZONSES    "amazonses.com"
#define SPF_DEFAULT  "v=spf1 include:" AMAZONSES " ~all"
#define SPF_LOOKUPS  10 /* RFC 7208 4.6.4: include/redirect lookups */
#define SPF_DEPTH    5
#define SPF_TERMS    64
#define RESOLV_CONF  "/etc/resolv.conf"
#define DNS_ENV      "SESRELAY_DNS_SERVER"
#define TIMEOUT_ENV  "SESRELAY_CHECK_TIMEOUT"
#define PROBE_NAME   ".sesrelay-check-"    /* + random hex: a key that cannot exist */
#define PROBE_HANDLE "AQEBsesrelay-check-" /* + random hex: a handle SQS never issued */
#define INBOUND_MX   "inbound-smtp.%s.amazonaws.com"

/* ========================================================================= */
/* Output: blocks of lines, printed in order                                 */
/* ========================================================================= */

enum sev { SEV_OK, SEV_WARN, SEV_FAIL };
static const char *const SEV_WORDS[] = {"ok", "warn", "FAIL"};

struct check;

struct unit {
	struct unit *next;
	struct check *ck;
	struct evbuffer *out;
	int done, printed;
};

/* ========================================================================= */
/* A stub DNS resolver for TXT, MX and CNAME, on the loop                    */
/* ========================================================================= */

#define DNS_NS_MAX       3
#define DNS_TRIES        3
#define DNS_TRY_MS       2000
#define DNS_TCP_MS       5000
#define DNS_INFLIGHT_MAX 16
#define DNS_EDNS_SIZE    1232 /* what we take over UDP (the 2020 DNS flag day size) */
#define DNS_UDP_BUF      4096
#define DNS_RR_MAX       16   /* records kept per answer */
#define DNS_TXT_MAX      2048 /* bytes kept per TXT record */
#define DNS_NAME_MAX     256
#define DNS_JUMPS_MAX    32

enum dns_status { DNS_PENDING, DNS_OK, DNS_NXDOMAIN, DNS_FAILED };

/* One answer.  DNS_OK with n == 0 is "no such record" (NODATA). */
struct dns_result {
	enum dns_status status;
	char error[128]; /* DNS_FAILED: what happened */
	size_t n;
	char *rr[DNS_RR_MAX]; /* TXT text (its strings joined), MX exchange, CNAME target */
	int pref[DNS_RR_MAX]; /* MX preference */
};

typedef void (*dns_done)(void *arg);

struct dnsr;

struct dnsq {
	struct dnsq *next, *prev;
	struct dnsr *r;
	char name[DNS_NAME_MAX];
	int type;
	unsigned char pkt[DNS_NAME_MAX + 32];
	size_t pktlen;
	uint16_t id;
	int started, tries;
	size_t server;
	evutil_socket_t fd;
	struct event *ev;        /* UDP read + timeout, or a deferred failure */
	struct bufferevent *bev; /* TCP */
	char error[128];         /* why the last try failed */
	struct dns_result *out;
	dns_done done;
	void *arg;
};

struct dnsr {
	struct event_base *base;
	struct sockaddr_storage ns[DNS_NS_MAX];
	socklen_t nslen[DNS_NS_MAX];
	char ns_text[DNS_NS_MAX][64];
	size_t nns;
	struct dnsq *head, *tail; /* every query, in order; the first unstarted wait */
	size_t nactive;
	int closing;
};

static const struct timeval TV_ZERO = {0, 0};

static void dns_result_clear(struct dns_result *res)
{
	size_t i;

	for (i = 0; i < res->n; i++)
		free(res->rr[i]);
	memset(res, 0, sizeof(*res));
}

/* Letters, digits, '-' and '_' in labels of 1-63, at most 253 in all. */
static int dns_name_ok(const char *s)
{
	size_t label = 0;

	if (*s == '\0' || strlen(s) > 253)
		return 0;
	for (; *s; s++) {
		if (*s == '.') {
			if (label == 0)
				return 0;
			label = 0;
			continue;
		}
		if (!isalnum((unsigned char)*s) && *s != '-' && *s != '_')
			return 0;
		if (++label > 63)
			return 0;
	}
	return label > 0;
}

static unsigned get16(const unsigned char *p)
{
	return (unsigned)p[0] << 8 | p[1];
}

/* A query for NAME (checked by dns_name_ok): header with RD, the question,
 * and an EDNS0 OPT record offering DNS_EDNS_SIZE bytes.  Its length, or 0. */
static size_t dns_build(unsigned char *p, size_t size, uint16_t id, const char *name, int type)
{
	static const unsigned char rest[] = {0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1};
	const char *s = name;
	size_t n = 0;

	if (size < 12 + strlen(name) + 2 + 4 + 11)
		return 0;
	p[n++] = (unsigned char)(id >> 8);
	p[n++] = (unsigned char)id;
	memcpy(p + n, rest, sizeof(rest));
	n += sizeof(rest);
	while (*s) {
		size_t l = strcspn(s, ".");
		p[n++] = (unsigned char)l;
		memcpy(p + n, s, l);
		n += l;
		s += l;
		if (*s == '.')
			s++;
	}
	p[n++] = 0;
	p[n++] = 0;
	p[n++] = (unsigned char)type;
	p[n++] = 0;
	p[n++] = 1; /* class IN */
	p[n++] = 0; /* OPT: root owner, type 41, class = our UDP size, no options */
	p[n++] = 0;
	p[n++] = 41;
	p[n++] = DNS_EDNS_SIZE >> 8;
	p[n++] = DNS_EDNS_SIZE & 0xff;
	memset(p + n, 0, 6);
	return n + 6;
}

/* The (possibly compressed) name at *off, lowercased, odd bytes as '?'. */
static int dns_read_name(const unsigned char *m, size_t len, size_t *off, char *out, size_t size)
{
	size_t pos = *off, n = 0, i;
	int jumps = 0, jumped = 0;

	for (;;) {
		unsigned c;

		if (pos >= len)
			return -1;
		c = m[pos];
		if ((c & 0xc0) == 0xc0) {
			size_t ptr;

			if (pos + 1 >= len || ++jumps > DNS_JUMPS_MAX)
				return -1;
			ptr = (size_t)(c & 0x3f) << 8 | m[pos + 1];
			if (ptr >= pos)
				return -1; /* only backwards, so never a loop */
			if (!jumped)
				*off = pos + 2;
			jumped = 1;
			pos = ptr;
			continue;
		}
		if (c & 0xc0)
			return -1;
		if (c == 0) {
			if (!jumped)
				*off = pos + 1;
			break;
		}
		if (pos + 1 + c > len || n + c + 2 > size)
			return -1;
		if (n)
			out[n++] = '.';
		for (i = 0; i < c; i++) {
			unsigned char ch = m[pos + 1 + i];
			out[n++] = isalnum(ch) || ch == '-' || ch == '_' ? (char)tolower(ch) : '?';
		}
		pos += 1 + c;
	}
	out[n] = '\0';
	return 0;
}

/* One answer record's data into res (the types we asked for only). */
static int dns_rdata(const unsigned char *m, size_t len, size_t rd, size_t rdlen, unsigned type,
                     struct dns_result *res)
{
	char name[DNS_NAME_MAX], txt[DNS_TXT_MAX];
	size_t p, n = 0, o;

	switch (type) {
	case EVDNS_TYPE_TXT:
		for (p = rd; p < rd + rdlen; p += 1 + m[p]) {
			size_t l = m[p], i;
			if (p + 1 + l > rd + rdlen)
				return -1;
			for (i = 0; i < l && n < sizeof(txt) - 1; i++) {
				unsigned char ch = m[p + 1 + i];
				txt[n++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
			}
		}
		txt[n] = '\0';
		res->rr[res->n++] = xstrdup(txt);
		return 0;
	case EVDNS_TYPE_MX:
		if (rdlen < 3)
			return -1;
		o = rd + 2;
		if (dns_read_name(m, len, &o, name, sizeof(name)) == -1)
			return -1;
		res->pref[res->n] = (int)get16(m + rd);
		res->rr[res->n++] = xstrdup(name);
		return 0;
	case EVDNS_TYPE_CNAME:
		o = rd;
		if (dns_read_name(m, len, &o, name, sizeof(name)) == -1)
			return -1;
		res->rr[res->n++] = xstrdup(name);
		return 0;
	}
	return 0;
}

enum dns_parse { DNS_PARSE_NOT_OURS, DNS_PARSE_BAD, DNS_PARSE_OK };

/* Read an answer to q.  NOT_OURS: another id or question (a stray datagram). */
static enum dns_parse dns_parse(const struct dnsq *q, const unsigned char *m, size_t len,
                                int *rcode, int *tc, struct dns_result *res)
{
	char name[DNS_NAME_MAX];
	size_t off = 12, i, an;

	if (len < 12 || get16(m) != q->id || !(m[2] & 0x80) || get16(m + 4) != 1)
		return DNS_PARSE_NOT_OURS;
	if (dns_read_name(m, len, &off, name, sizeof(name)) == -1 ||
	    strcasecmp(name, q->name) != 0 || off + 4 > len ||
	    get16(m + off) != (unsigned)q->type || get16(m + off + 2) != 1)
		return DNS_PARSE_NOT_OURS;
	off += 4;
	*tc = (m[2] & 0x02) != 0;
	*rcode = m[3] & 0x0f;
	if (*tc || *rcode != 0)
		return DNS_PARSE_OK;
	an = get16(m + 6);
	for (i = 0; i < an; i++) {
		unsigned type, cls;
		size_t rd, rdlen;

		if (dns_read_name(m, len, &off, name, sizeof(name)) == -1 || off + 10 > len)
			return DNS_PARSE_BAD;
		type = get16(m + off);
		cls = get16(m + off + 2);
		rdlen = get16(m + off + 8);
		rd = off + 10;
		if (rd + rdlen > len)
			return DNS_PARSE_BAD;
		off = rd + rdlen;
		/* TXT and MX of a CNAME's target count (the resolver followed it);
		 * a CNAME only when it is the name asked about */
		if (cls != 1 || type != (unsigned)q->type || res->n >= DNS_RR_MAX ||
		    (type == EVDNS_TYPE_CNAME && strcasecmp(name, q->name) != 0))
			continue;
		if (dns_rdata(m, len, rd, rdlen, type, res) == -1)
			return DNS_PARSE_BAD;
	}
	return DNS_PARSE_OK;
}

static const char *dns_rcode_name(int rcode)
{
	switch (rcode) {
	case 1:
		return "FORMERR";
	case 2:
		return "SERVFAIL";
	case 4:
		return "NOTIMP";
	case 5:
		return "REFUSED";
	}
	return "an error";
}

static void dnsr_pump(struct dnsr *r);
static void dnsq_try(struct dnsq *q);

static void dnsq_close(struct dnsq *q)
{
	if (q->ev) {
		event_free(q->ev);
		q->ev = NULL;
	}
	if (q->fd != -1) {
		evutil_closesocket(q->fd);
		q->fd = -1;
	}
	if (q->bev) {
		bufferevent_free(q->bev);
		q->bev = NULL;
	}
}

/* Records come in any order: sort them (MX by preference) so output is stable. */
static void dns_result_sort(struct dns_result *res)
{
	size_t i, j;

	for (i = 1; i < res->n; i++)
		for (j = i; j > 0; j--) {
			int c = res->pref[j - 1] != res->pref[j]
			            ? (res->pref[j - 1] > res->pref[j] ? 1 : -1)
			            : strcmp(res->rr[j - 1], res->rr[j]);
			char *rr = res->rr[j];
			int pref = res->pref[j];

			if (c <= 0)
				break;
			res->rr[j] = res->rr[j - 1];
			res->pref[j] = res->pref[j - 1];
			res->rr[j - 1] = rr;
			res->pref[j - 1] = pref;
		}
}

/* Hand res (moved) to the caller and forget q. */
static void dnsq_finish(struct dnsq *q, struct dns_result *res)
{
	struct dnsr *r = q->r;
	dns_done done = q->done;
	void *arg = q->arg;

	dns_result_sort(res);
	dns_result_clear(q->out);
	*q->out = *res;
	dnsq_close(q);
	if (q->prev)
		q->prev->next = q->next;
	else
		r->head = q->next;
	if (q->next)
		q->next->prev = q->prev;
	else
		r->tail = q->prev;
	if (q->started)
		r->nactive--;
	free(q);
	done(arg);
	dnsr_pump(r);
}

static void dnsq_fail_now(struct dnsq *q, const char *why)
{
	struct dns_result res;

	memset(&res, 0, sizeof(res));
	res.status = DNS_FAILED;
	snprintf(res.error, sizeof(res.error), "%s", why);
	dnsq_finish(q, &res);
}

static void dnsq_later_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dnsq *q = arg;

	dnsq_fail_now(q, q->error);
}

/* Fail with q->error on the next loop turn: never inside dns_query(). */
static void dnsq_fail_later(struct dnsq *q)
{
	dnsq_close(q);
	if ((q->ev = evtimer_new(q->r->base, dnsq_later_cb, q)) == NULL)
		fatalx("evtimer_new failed");
	event_add(q->ev, &TV_ZERO);
}

/* The current try failed (q->error says why): the next one, or give up. */
static void dnsq_next(struct dnsq *q)
{
	if (q->tries >= DNS_TRIES)
		dnsq_fail_later(q);
	else
		dnsq_try(q);
}

static void dnsq_tcp(struct dnsq *q);

static void dnsq_answer(struct dnsq *q, const unsigned char *m, size_t len, int over_tcp)
{
	const char *ns = q->r->ns_text[q->server];
	struct dns_result res;
	int rcode = 0, tc = 0;
	enum dns_parse pr;

	memset(&res, 0, sizeof(res));
	pr = dns_parse(q, m, len, &rcode, &tc, &res);
	if (pr == DNS_PARSE_NOT_OURS && !over_tcp) {
		dns_result_clear(&res);
		return; /* keep waiting for ours */
	}
	if (pr != DNS_PARSE_OK) {
		dns_result_clear(&res);
		snprintf(q->error, sizeof(q->error), "malformed answer from %s", ns);
		dnsq_next(q);
		return;
	}
	if (tc && !over_tcp) {
		dns_result_clear(&res);
		dnsq_tcp(q);
		return;
	}
	if (rcode == 0 || rcode == 3) {
		res.status = rcode == 0 ? DNS_OK : DNS_NXDOMAIN;
		dnsq_finish(q, &res);
		return;
	}
	dns_result_clear(&res);
	snprintf(q->error, sizeof(q->error), "%s from %s", dns_rcode_name(rcode), ns);
	dnsq_next(q);
}

static void dnsq_udp_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dnsq *q = arg;
	unsigned char buf[DNS_UDP_BUF];
	ssize_t n;

	if (what & EV_TIMEOUT) {
		snprintf(q->error, sizeof(q->error), "no answer from %s", q->r->ns_text[q->server]);
		dnsq_next(q);
		return;
	}
	n = recv(fd, buf, sizeof(buf), 0);
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return;
		snprintf(q->error, sizeof(q->error), "%s: %s", q->r->ns_text[q->server],
		         strerror(errno));
		dnsq_next(q);
		return;
	}
	dnsq_answer(q, buf, (size_t)n, 0);
}

static void dnsq_tcp_read(struct bufferevent *bev, void *arg)
{
	struct dnsq *q = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	unsigned char l2[2], *m;
	size_t mlen;

	if (evbuffer_copyout(in, l2, 2) < 2)
		return;
	mlen = get16(l2);
	if (evbuffer_get_length(in) < 2 + mlen)
		return;
	m = evbuffer_pullup(in, (ev_ssize_t)(2 + mlen));
	dnsq_answer(q, m + 2, mlen, 1);
}

static void dnsq_tcp_event(struct bufferevent *bev, short what, void *arg)
{
	struct dnsq *q = arg;

	if (what & BEV_EVENT_CONNECTED)
		return;
	snprintf(q->error, sizeof(q->error), "TCP to %s: %s", q->r->ns_text[q->server],
	         what & BEV_EVENT_TIMEOUT ? "timed out"
	         : what & BEV_EVENT_EOF   ? "closed without an answer"
	                                  : evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
	dnsq_next(q);
}

/* The UDP answer was truncated: the same question over TCP, same server. */
static void dnsq_tcp(struct dnsq *q)
{
	struct dnsr *r = q->r;
	struct timeval tv = {DNS_TCP_MS / 1000, 0};
	unsigned char l2[2] = {(unsigned char)(q->pktlen >> 8), (unsigned char)q->pktlen};
	size_t s = q->server;

	dnsq_close(q);
	if ((q->bev = bufferevent_socket_new(r->base, -1, BEV_OPT_CLOSE_ON_FREE)) == NULL)
		fatalx("bufferevent_socket_new failed");
	bufferevent_setcb(q->bev, dnsq_tcp_read, NULL, dnsq_tcp_event, q);
	bufferevent_set_timeouts(q->bev, &tv, &tv);
	bufferevent_write(q->bev, l2, 2);
	bufferevent_write(q->bev, q->pkt, q->pktlen);
	bufferevent_enable(q->bev, EV_READ | EV_WRITE);
	if (bufferevent_socket_connect(q->bev, (struct sockaddr *)&r->ns[s], (int)r->nslen[s]) ==
	    -1) {
		snprintf(q->error, sizeof(q->error), "TCP to %s: %s", r->ns_text[s],
		         strerror(errno));
		dnsq_next(q);
	}
}

/* One UDP try, at the next server in turn. */
static void dnsq_try(struct dnsq *q)
{
	struct dnsr *r = q->r;
	struct timeval tv = {DNS_TRY_MS / 1000, (DNS_TRY_MS % 1000) * 1000};
	size_t s = (size_t)q->tries % r->nns;
	evutil_socket_t fd;

	dnsq_close(q);
	q->tries++;
	q->server = s;
	fd = socket(r->ns[s].ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1 || connect(fd, (struct sockaddr *)&r->ns[s], r->nslen[s]) == -1 ||
	    send(fd, q->pkt, q->pktlen, 0) != (ssize_t)q->pktlen) {
		snprintf(q->error, sizeof(q->error), "%s: %s", r->ns_text[s], strerror(errno));
		if (fd != -1)
			evutil_closesocket(fd);
		dnsq_next(q);
		return;
	}
	q->fd = fd;
	if ((q->ev = event_new(r->base, fd, EV_READ | EV_PERSIST, dnsq_udp_cb, q)) == NULL)
		fatalx("event_new failed");
	event_add(q->ev, &tv);
}

static void dnsr_pump(struct dnsr *r)
{
	struct dnsq *q;

	for (q = r->head; q && !r->closing && r->nactive < DNS_INFLIGHT_MAX; q = q->next) {
		if (q->started)
			continue;
		q->started = 1;
		r->nactive++;
		dnsq_try(q); /* failures are reported later, so q stays */
	}
}

/*
 * Ask for NAME's records of TYPE (EVDNS_TYPE_TXT, _MX, _CNAME).  out is filled
 * and done(arg) runs from the loop, never inside this call.
 */
static void dns_query(struct dnsr *r, const char *name, int type, struct dns_result *out,
                      dns_done done, void *arg)
{
	struct dnsq *q = xcalloc(1, sizeof(*q));

	q->r = r;
	q->fd = -1;
	q->type = type;
	q->out = out;
	q->done = done;
	q->arg = arg;
	dns_result_clear(out);
	if (RAND_bytes((unsigned char *)&q->id, sizeof(q->id)) != 1)
		q->id = (uint16_t)random();
	snprintf(q->name, sizeof(q->name), "%s", name);
	q->prev = r->tail;
	if (r->tail)
		r->tail->next = q;
	else
		r->head = q;
	r->tail = q;
	if (r->nns == 0 || !dns_name_ok(name) ||
	    (q->pktlen = dns_build(q->pkt, sizeof(q->pkt), q->id, name, type)) == 0) {
		snprintf(q->error, sizeof(q->error), "%s",
		         r->nns == 0 ? "no DNS server to ask" : "not a valid DNS name");
		q->started = 1;
		r->nactive++;
		dnsq_fail_later(q);
		return;
	}
	dnsr_pump(r);
}

/* Every open query fails with why, now (their done callbacks run). */
static void dnsr_cancel_all(struct dnsr *r, const char *why)
{
	r->closing = 1;
	while (r->head)
		dnsq_fail_now(r->head, why);
}

static void sockaddr_text(const struct sockaddr_storage *ss, char *out, size_t size)
{
	char host[INET6_ADDRSTRLEN] = "?";

	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
		evutil_inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
		snprintf(out, size, "[%s]:%u", host, (unsigned)ntohs(s6->sin6_port));
	} else {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
		evutil_inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
		snprintf(out, size, "%s:%u", host, (unsigned)ntohs(s4->sin_port));
	}
}

/* The servers to ask: SESRELAY_DNS_SERVER, else /etc/resolv.conf, read by evdns. */
static int dnsr_init(struct dnsr *r, struct event_base *base, char *err, size_t errlen)
{
	const char *override = getenv(DNS_ENV);
	struct evdns_base *eb;
	int i, n;

	memset(r, 0, sizeof(*r));
	r->base = base;
	if ((eb = evdns_base_new(base, 0)) == NULL)
		fatalx("evdns_base_new failed");
	if (override && *override) {
		if (evdns_base_nameserver_ip_add(eb, override) != 0) {
			snprintf(err, errlen, "%s=%s is not ADDRESS[:PORT]", DNS_ENV, override);
			evdns_base_free(eb, 0);
			return -1;
		}
	} else {
		/* without a usable file evdns falls back to 127.0.0.1, as libc does */
		evdns_base_resolv_conf_parse(eb, DNS_OPTION_NAMESERVERS, RESOLV_CONF);
	}
	n = evdns_base_count_nameservers(eb);
	for (i = 0; i < n && r->nns < DNS_NS_MAX; i++) {
		struct sockaddr_storage ss;
		int len;

		memset(&ss, 0, sizeof(ss));
		len = evdns_base_get_nameserver_addr(eb, i, (struct sockaddr *)&ss, sizeof(ss));
		if (len <= 0 || (size_t)len > sizeof(ss) ||
		    (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
			continue;
		r->ns[r->nns] = ss;
		r->nslen[r->nns] = (socklen_t)len;
		sockaddr_text(&ss, r->ns_text[r->nns], sizeof(r->ns_text[0]));
		r->nns++;
	}
	evdns_base_free(eb, 0);
	if (r->nns == 0) {
		snprintf(err, errlen, "no DNS server in %s", RESOLV_CONF);
		return -1;
	}
	return 0;
}

/* ========================================================================= */
/* The run                                                                   */
/* ========================================================================= */

enum ses_phase { SES_WAIT_CREDS, SES_ACCOUNT, SES_IDENTITIES, SES_DONE };
enum id_state { ID_PENDING, ID_FOUND, ID_NOT_FOUND, ID_FAILED, ID_COVERED };

struct spf_sub;

/* A sender domain or address, and everything learnt about it. */
struct target {
	struct target *next;
	struct check *ck;
	char *name;      /* "example.com" or "a@example.com", lowercase */
	const char *dom; /* the domain: name itself, or after the '@' */
	int is_domain;
	int explicit_domain;   /* "@domain" in the users file: any address there */
	int valid;             /* dom is a DNS name */
	struct target *domain; /* an address's domain */
	struct unit *unit;
	int pending; /* operations still open; rendered at 0 */

	enum id_state id_state;
	struct ses_api_identity id;
	char *id_error; /* ID_FAILED: why */
	char *id_fix;
	char mail_from[DNS_NAME_MAX]; /* a custom MAIL FROM domain we can look up */

	struct dns_result spf, dmarc, mx, mf_mx, mf_txt;
	struct dns_result dkim[SES_API_DKIM_TOKENS_MAX];
	struct spf_sub *spf_subs;
	int spf_lookups, spf_found;
	char spf_via[DNS_NAME_MAX]; /* the include that led to amazonses.com */
	char *spf_unread;           /* an include that could not be read, and why */
};

/* A record the SPF walk follows (include:NAME, redirect=NAME). */
struct spf_sub {
	struct spf_sub *next;
	struct target *t;
	char name[DNS_NAME_MAX];
	char via[DNS_NAME_MAX]; /* the domain's own include it hangs under */
	int depth;
	struct dns_result res;
};

/* The [inbound] bucket checks, in order; each proves one IAM action. */
enum s3_step {
	S3_STEP_LIST,      /* ListObjectsV2 under the prefix */
	S3_STEP_GET,       /* GetObject of a key that cannot exist */
	S3_STEP_DELETE,    /* DeleteObject of that key */
	S3_STEP_COPY_DONE, /* CopyObject of it to done_prefix (delete_after = move) */
	S3_STEP_COPY_HELD, /* CopyObject of it to held_prefix (failed_verdict = hold) */
	S3_STEP_END
};

/* The [inbound] queue checks, in order. */
enum sqs_step {
	SQS_STEP_RECEIVE, /* ReceiveMessage, no wait, visibility 0 */
	SQS_STEP_DELETE,  /* DeleteMessage of a handle never issued */
	SQS_STEP_END
};

/* A domain the [inbound] map receives mail for: its MX must lead to SES. */
struct rdomain {
	struct rdomain *next;
	struct check *ck;
	char *name; /* lowercase */
	int valid;  /* a DNS name */
	struct dns_result mx;
};

struct check {
	struct conf *conf;
	const char *config_path;
	struct users *users;
	struct event_base *base;
	struct ses_http *http;
	struct ses_creds *creds;
	struct dnsr dns;
	int dns_ready;
	char dns_where[200];
	struct event *deadline, *retry;
	int timeout;
	int stopping;
	int looping;
	int config_error;
	int counts[3];

	struct unit *units, **units_tail;
	struct unit *u_creds, *u_account;

	char *base_url, *host;
	const char *region; /* "REGION" in fixes when there is none */
	enum ses_phase phase;
	struct target *cur; /* whose identity is being asked */
	struct ses_http_call *call;
	int throttled;

	struct target *targets;
	size_t ndomains, naddresses;

	/* [inbound] (inbound_bucket set; u_sqs.. with queue_url) */
	struct unit *u_s3, *u_mx;
	struct s3 *s3;
	struct s3_call *s3_call;
	enum s3_step s3_step;
	int s3_list_denied; /* S3 then says AccessDenied for a missing key too */
	char *s3_key;       /* the key that cannot exist */
	struct unit *u_sqs; /* queue_url set */
	struct sqs *sqs;
	struct sqs_call *sqs_call;
	enum sqs_step sqs_step;
	struct rdomain *rdomains;
	size_t rpending; /* MX lookups still open */
};

static struct unit *unit_new(struct check *ck)
{
	struct unit *u = xcalloc(1, sizeof(*u));

	u->ck = ck;
	if ((u->out = evbuffer_new()) == NULL)
		fatalx("evbuffer_new failed");
	*ck->units_tail = u;
	ck->units_tail = &u->next;
	return u;
}

/* One verdict line.  fix (xmalloc'd, or NULL) is consumed. */
static void say(struct unit *u, enum sev sev, char *fix, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void say(struct unit *u, enum sev sev, char *fix, const char *fmt, ...)
{
	va_list ap;

	u->ck->counts[sev]++;
	evbuffer_add_printf(u->out, "%-6s", SEV_WORDS[sev]);
	va_start(ap, fmt);
	evbuffer_add_vprintf(u->out, fmt, ap);
	va_end(ap);
	if (fix && *fix)
		evbuffer_add_printf(u->out, "%s%s", FIX, fix);
	evbuffer_add(u->out, "\n", 1);
	free(fix);
}

/* Print the finished blocks that no unfinished block precedes. */
static void flush(struct check *ck)
{
	struct unit *u;

	for (u = ck->units; u; u = u->next) {
		size_t n;

		if (u->printed)
			continue;
		if (!u->done)
			break;
		if ((n = evbuffer_get_length(u->out)) > 0) {
			fwrite(evbuffer_pullup(u->out, -1), 1, n, stdout);
			evbuffer_drain(u->out, n);
		}
		u->printed = 1;
	}
	fflush(stdout);
	if (u == NULL && ck->looping)
		event_base_loopexit(ck->base, NULL);
}

static void unit_done(struct unit *u)
{
	u->done = 1;
	flush(u->ck);
}

/* Network text goes to a terminal: printable ASCII only. */
static void printable(char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
			*s = '?';
}

/* Is name a domain the [inbound] map receives for?  Its MX is then checked
 * as a requirement in the inbound block, not in its sender block. */
static int receiving(const struct check *ck, const char *name)
{
	const struct rdomain *rd;

	for (rd = ck->rdomains; rd; rd = rd->next)
		if (strcasecmp(rd->name, name) == 0)
			return 1;
	return 0;
}

/* ------------------------------------------------------------------------- */
/* SPF and DMARC text                                                        */
/* ------------------------------------------------------------------------- */

static int is_spf(const char *txt)
{
	return strncasecmp(txt, "v=spf1", 6) == 0 && (txt[6] == '\0' || txt[6] == ' ');
}

static int is_dmarc(const char *txt)
{
	return strncmp(txt, "v=DMARC1", 8) == 0 &&
	       (txt[8] == '\0' || txt[8] == ';' || txt[8] == ' ');
}

static size_t count_matching(const struct dns_result *res, int (*pred)(const char *),
                             const char **first)
{
	size_t i, n = 0;

	*first = NULL;
	for (i = 0; res->status == DNS_OK && i < res->n; i++)
		if (pred(res->rr[i]) && n++ == 0)
			*first = res->rr[i];
	return n;
}

/* The next space-separated term of an SPF record, or 0 at the end. */
static size_t spf_term(const char **p, char *term, size_t size)
{
	size_t n;

	*p += strspn(*p, " ");
	n = strcspn(*p, " ");
	if (n == 0)
		return 0;
	snprintf(term, size, "%.*s", (int)n, *p);
	*p += n;
	return n < size ? n : size - 1;
}

/* Without its qualifier: "+include:x" and "include:x" are the same. */
static const char *spf_bare(const char *term)
{
	return *term && strchr("+-~?", *term) ? term + 1 : term;
}

static int spf_includes_ses(const char *rec)
{
	char term[DNS_NAME_MAX + 16];
	const char *p = rec;

	while (spf_term(&p, term, sizeof(term)))
		if ((*term == '+' || *term == 'i' || *term == 'I') &&
		    strcasecmp(spf_bare(term), "include:" AMAZONSES) == 0)
			return 1;
	return 0;
}

/* Every SPF record of res merged into one that includes amazonses.com. */
static char *spf_merged(const struct dns_result *res)
{
	char *terms[SPF_TERMS], *all = NULL, *redirect = NULL, term[DNS_TXT_MAX], *out;
	size_t nterms = 0, i, j;
	struct evbuffer *b;
	int have_ses = 0;

	for (i = 0; i < res->n; i++) {
		const char *p = res->rr[i];

		if (!is_spf(p))
			continue;
		spf_term(&p, term, sizeof(term)); /* v=spf1 */
		while (spf_term(&p, term, sizeof(term))) {
			const char *bare = spf_bare(term);
			if (strcasecmp(bare, "all") == 0) {
				if (all == NULL)
					all = xstrdup(term);
				continue;
			}
			if (strncasecmp(term, "redirect=", 9) == 0) {
				if (redirect == NULL)
					redirect = xstrdup(term);
				continue;
			}
			for (j = 0; j < nterms && strcasecmp(terms[j], term) != 0; j++)
				;
			if (j < nterms || nterms == SPF_TERMS)
				continue;
			have_ses |= strcasecmp(bare, "include:" AMAZONSES) == 0 && *term != '-';
			terms[nterms++] = xstrdup(term);
		}
	}
	if ((b = evbuffer_new()) == NULL)
		fatalx("evbuffer_new failed");
	evbuffer_add_printf(b, "v=spf1");
	for (i = 0; i < nterms; i++) {
		evbuffer_add_printf(b, " %s", terms[i]);
		free(terms[i]);
	}
	if (!have_ses)
		evbuffer_add_printf(b, " include:%s", AMAZONSES);
	if (all || redirect)
		evbuffer_add_printf(b, " %s", all ? all : redirect);
	free(all);
	free(redirect);
	evbuffer_add(b, "", 1);
	out = xstrdup((const char *)evbuffer_pullup(b, -1));
	evbuffer_free(b);
	return out;
}

/* The p= tag of a DMARC record ("none" when absent, as receivers read it). */
static void dmarc_policy(const char *rec, char *out, size_t size)
{
	const char *p = rec;

	snprintf(out, size, "none");
	while ((p = strchr(p, ';')) != NULL) {
		p++;
		p += strspn(p, " \t");
		if (strncasecmp(p, "p=", 2) == 0) {
			snprintf(out, size, "%.*s", (int)strcspn(p + 2, "; \t"), p + 2);
			return;
		}
	}
}

/* ------------------------------------------------------------------------- */
/* Per target: operations and rendering                                      */
/* ------------------------------------------------------------------------- */

static void render_target(struct target *t);

static void op_done(struct target *t)
{
	if (--t->pending > 0)
		return;
	render_target(t);
	unit_done(t->unit);
}

static void dns_op_done(void *arg)
{
	op_done(arg);
}

static void lookup(struct target *t, const char *name, int type, struct dns_result *out)
{
	if (t->ck->stopping || !t->ck->dns_ready)
		return; /* rendered as not checked */
	t->pending++;
	dns_query(&t->ck->dns, name, type, out, dns_op_done, t);
}

static void spf_follow(struct target *t, const char *rec, const char *via, int depth);

static void spf_sub_done(void *arg)
{
	struct spf_sub *s = arg;
	struct target *t = s->t;
	const char *rec;

	if (s->res.status == DNS_FAILED && t->spf_unread == NULL)
		t->spf_unread = xasprintf("%s: %s", s->name, s->res.error);
	if (!t->spf_found && count_matching(&s->res, is_spf, &rec) >= 1) {
		if (spf_includes_ses(rec)) {
			t->spf_found = 1;
			snprintf(t->spf_via, sizeof(t->spf_via), "%s", s->via);
		} else
			spf_follow(t, rec, s->via, s->depth + 1);
	}
	op_done(t);
}

/* Look for include:amazonses.com behind the record's include: and redirect=. */
static void spf_follow(struct target *t, const char *rec, const char *via, int depth)
{
	char term[DNS_NAME_MAX + 16];
	const char *p = rec, *target;
	struct spf_sub *s;

	while (spf_term(&p, term, sizeof(term))) {
		if (strncasecmp(term, "redirect=", 9) == 0)
			target = term + 9;
		else if ((*term == '+' || *term == 'i' || *term == 'I') &&
		         strncasecmp(spf_bare(term), "include:", 8) == 0)
			target = spf_bare(term) + 8;
		else
			continue;
		if (via == NULL)
			via = target;
		if (depth > SPF_DEPTH || t->spf_lookups >= SPF_LOOKUPS || t->ck->stopping ||
		    !dns_name_ok(target) || strlen(via) >= sizeof(s->via))
			continue; /* macros and the like: not followed */
		s = xcalloc(1, sizeof(*s));
		s->t = t;
		s->depth = depth;
		memcpy(s->name, target, strlen(target) + 1); /* dns_name_ok: at most 253 */
		memcpy(s->via, via, strlen(via) + 1);
		s->next = t->spf_subs;
		t->spf_subs = s;
		t->spf_lookups++;
		t->pending++;
		dns_query(&t->ck->dns, s->name, EVDNS_TYPE_TXT, &s->res, spf_sub_done, s);
	}
}

static void spf_root_done(void *arg)
{
	struct target *t = arg;
	const char *rec;

	if (count_matching(&t->spf, is_spf, &rec) == 1) {
		if (spf_includes_ses(rec))
			t->spf_found = 1;
		else
			spf_follow(t, rec, NULL, 1);
	}
	op_done(t);
}

/* The DNS that needs nothing from SES: SPF, DMARC, MX. */
static void target_start_dns(struct target *t)
{
	char name[DNS_NAME_MAX + 8];

	if (!t->is_domain || !t->valid || !t->ck->dns_ready)
		return;
	t->pending++;
	dns_query(&t->ck->dns, t->dom, EVDNS_TYPE_TXT, &t->spf, spf_root_done, t);
	snprintf(name, sizeof(name), "_dmarc.%s", t->dom);
	lookup(t, name, EVDNS_TYPE_TXT, &t->dmarc);
	if (!receiving(t->ck, t->dom))
		lookup(t, t->dom, EVDNS_TYPE_MX, &t->mx);
}

/* The DNS that SES names: the DKIM CNAMEs and the MAIL FROM domain. */
static void target_start_identity_dns(struct target *t)
{
	char name[DNS_NAME_MAX + 80];
	size_t i;

	if (!t->is_domain || !t->valid)
		return;
	for (i = 0; i < t->id.ndkim_tokens; i++) {
		snprintf(name, sizeof(name), "%s._domainkey.%s", t->id.dkim_tokens[i], t->dom);
		lookup(t, name, EVDNS_TYPE_CNAME, &t->dkim[i]);
	}
	if (t->id.mail_from_domain[0] && dns_name_ok(t->id.mail_from_domain)) {
		snprintf(t->mail_from, sizeof(t->mail_from), "%s", t->id.mail_from_domain);
		for (i = 0; t->mail_from[i]; i++)
			t->mail_from[i] = (char)tolower((unsigned char)t->mail_from[i]);
		lookup(t, t->mail_from, EVDNS_TYPE_MX, &t->mf_mx);
		lookup(t, t->mail_from, EVDNS_TYPE_TXT, &t->mf_txt);
	}
}

/* A lookup that gave no usable answer: say so in u (lines begin with lead)
 * with sev and return 1. */
static int dns_unusable_in(struct check *ck, struct unit *u, const char *lead,
                           const struct dns_result *res, enum sev sev, const char *name,
                           const char *zone, const char *what)
{
	if (res->status == DNS_PENDING)
		say(u, sev, NULL, "%sDNS %s: %s not checked (%s)", lead, name, what,
		    ck->dns_ready ? "the check ran out of time" : "no DNS resolver");
	else if (res->status == DNS_FAILED)
		say(u, sev,
		    xasprintf("make sure the name servers of %s answer (asked %s)", zone,
		              ck->dns_where),
		    "%sDNS %s: %s lookup failed: %s", lead, name, what, res->error);
	else
		return 0;
	return 1;
}

static int dns_unusable(struct target *t, const struct dns_result *res, enum sev sev,
                        const char *name, const char *zone, const char *what)
{
	return dns_unusable_in(t->ck, t->unit, "", res, sev, name, zone, what);
}

static int records(const struct dns_result *res)
{
	return res->status == DNS_OK ? (int)res->n : 0;
}

static void line_identity(struct target *t)
{
	struct check *ck = t->ck;
	struct unit *u = t->unit;
	enum sev missing = t->is_domain && !t->explicit_domain ? SEV_WARN : SEV_FAIL;
	const char *vs = t->id.verification_status[0] ? t->id.verification_status : "unknown";

	switch (t->id_state) {
	case ID_FOUND:
		if (t->id.verified)
			say(u, SEV_OK, NULL, "identity %s: verified for sending", t->name);
		else if (t->is_domain)
			say(u, missing,
			    t->id.ndkim_tokens
			        ? xasprintf(
			              "publish the DKIM CNAMEs below; SES verifies %s through "
			              "them",
			              t->name)
			        : xasprintf("publish the records shown for %s in the SES console",
			                    t->name),
			    "identity %s: not verified for sending (verification %s)", t->name, vs);
		else
			say(u, SEV_FAIL,
			    xasprintf("open the link in the mail SES sent to %s, or verify the "
			              "domain %s",
			              t->name, t->dom),
			    "identity %s: not verified for sending (verification %s)", t->name, vs);
		break;
	case ID_NOT_FOUND:
		if (t->is_domain && !t->explicit_domain)
			say(u, SEV_OK, NULL,
			    "identity %s: no domain identity in SES %s (its addresses are checked "
			    "one by one)",
			    t->name, ck->region);
		else if (t->is_domain)
			say(u, SEV_FAIL,
			    xasprintf("aws sesv2 create-email-identity --email-identity %s "
			              "--region %s, then publish the three DKIM CNAMEs it returns",
			              t->name, ck->region),
			    "identity %s: not an identity in SES %s", t->name, ck->region);
		else
			say(u, SEV_FAIL,
			    xasprintf("verify the domain (aws sesv2 create-email-identity "
			              "--email-identity %s) or this address (aws sesv2 "
			              "create-email-identity --email-identity %s, then open the "
			              "link SES mails to it)",
			              t->dom, t->name),
			    "identity %s: neither the address nor %s is verified in SES %s",
			    t->name, t->dom, ck->region);
		break;
	case ID_COVERED:
		say(u, SEV_OK, NULL, "identity %s: covered by the verified domain %s", t->name,
		    t->dom);
		break;
	case ID_PENDING:
	case ID_FAILED:
		say(u, SEV_FAIL, t->id_fix, "identity %s: %s", t->name,
		    t->id_error ? t->id_error : "not checked");
		t->id_fix = NULL;
		break;
	}
}

static int dkim_cname_ok(const struct target *t, size_t i)
{
	const struct dns_result *res = &t->dkim[i];
	const char *tok = t->id.dkim_tokens[i], *v;
	size_t tl = strlen(tok), vl;

	if (res->status != DNS_OK || res->n == 0)
		return 0;
	/* <token>.dkim.amazonses.com, or a regional <token>.dkim.<region>.amazonses.com */
	v = res->rr[0];
	vl = strlen(v);
	return strncasecmp(v, tok, tl) == 0 && strncasecmp(v + tl, ".dkim.", 6) == 0 &&
	       vl > strlen("." AMAZONSES) &&
	       strcasecmp(v + vl - strlen("." AMAZONSES), "." AMAZONSES) == 0;
}

static void line_dkim_status(struct target *t)
{
	const char *st = t->id.dkim_status[0] ? t->id.dkim_status : "unknown";
	struct evbuffer *add;
	char *fix;
	size_t i;

	if (strcmp(st, "SUCCESS") == 0) {
		if (t->id.dkim_signing)
			say(t->unit, SEV_OK, NULL, "identity %s: DKIM SUCCESS, signing enabled",
			    t->name);
		else
			say(t->unit, SEV_WARN,
			    xasprintf("aws sesv2 put-email-identity-dkim-attributes "
			              "--email-identity %s --signing-enabled",
			              t->name),
			    "identity %s: DKIM SUCCESS but signing is disabled", t->name);
		return;
	}
	if ((add = evbuffer_new()) == NULL)
		fatalx("evbuffer_new failed");
	for (i = 0; i < t->id.ndkim_tokens; i++)
		if (!dkim_cname_ok(t, i))
			evbuffer_add_printf(add, "%sCNAME %s._domainkey.%s -> %s.dkim.%s",
			                    evbuffer_get_length(add) ? "; " : "add ",
			                    t->id.dkim_tokens[i], t->dom, t->id.dkim_tokens[i],
			                    AMAZONSES);
	evbuffer_add(add, "", 1);
	if (t->id.ndkim_tokens == 0)
		fix = xasprintf("set up DKIM for %s in the SES console", t->name);
	else if (*(const char *)evbuffer_pullup(add, -1))
		fix = xstrdup((const char *)evbuffer_pullup(add, -1));
	else if (strcmp(st, "PENDING") == 0)
		fix = xstrdup("wait: the CNAMEs are published and SES checks them for up to 72 "
		              "hours");
	else
		fix = xstrdup("the CNAMEs are published now: restart DKIM verification in the SES "
		              "console");
	evbuffer_free(add);
	say(t->unit, strcmp(st, "PENDING") == 0 ? SEV_WARN : SEV_FAIL, fix, "identity %s: DKIM %s",
	    t->name, st);
}

static char *mail_from_records(const struct target *t, const char *mf)
{
	return xasprintf("MX %s 10 feedback-smtp.%s.%s and TXT %s \"%s\"", mf, t->ck->region,
	                 AMAZONSES, mf, SPF_DEFAULT);
}

static void line_mail_from_status(struct target *t)
{
	const char *mf = t->id.mail_from_domain, *st = t->id.mail_from_status;

	if (*mf == '\0') {
		say(t->unit, SEV_OK, NULL,
		    "identity %s: MAIL FROM is SES's own (no custom MAIL FROM domain)", t->name);
		return;
	}
	if (*st == '\0')
		st = "unknown";
	if (strcmp(st, "SUCCESS") == 0)
		say(t->unit, SEV_OK, NULL, "identity %s: MAIL FROM %s SUCCESS", t->name, mf);
	else
		say(t->unit, strcmp(st, "PENDING") == 0 ? SEV_WARN : SEV_FAIL,
		    mail_from_records(t, mf), "identity %s: MAIL FROM %s %s", t->name, mf, st);
}

static void line_spf(struct target *t)
{
	const char *rec;
	size_t n;

	if (dns_unusable(t, &t->spf, SEV_FAIL, t->dom, t->dom, "TXT"))
		return;
	n = count_matching(&t->spf, is_spf, &rec);
	if (n == 0)
		say(t->unit, SEV_FAIL, xasprintf("TXT %s \"%s\"", t->dom, SPF_DEFAULT),
		    "DNS %s: no SPF record", t->dom);
	else if (n > 1) {
		char *m = spf_merged(&t->spf);
		say(t->unit, SEV_FAIL, xasprintf("replace them with one: TXT %s \"%s\"", t->dom, m),
		    "DNS %s: %zu SPF records (more than one is a permanent error)", t->dom, n);
		free(m);
	} else if (t->spf_found && t->spf_via[0])
		say(t->unit, SEV_OK, NULL, "DNS %s: SPF includes %s (through include:%s)", t->dom,
		    AMAZONSES, t->spf_via);
	else if (t->spf_found)
		say(t->unit, SEV_OK, NULL, "DNS %s: SPF includes %s", t->dom, AMAZONSES);
	else {
		char *m = spf_merged(&t->spf);
		say(t->unit, SEV_FAIL,
		    xasprintf("TXT %s \"%s\" (replacing \"%s\")", t->dom, m, rec),
		    "DNS %s: SPF record does not include %s%s%s%s", t->dom, AMAZONSES,
		    t->spf_unread ? " (could not read " : "", t->spf_unread ? t->spf_unread : "",
		    t->spf_unread ? ")" : "");
		free(m);
	}
}

static void line_dkim_cname(struct target *t, size_t i)
{
	const struct dns_result *res = &t->dkim[i];
	const char *tok = t->id.dkim_tokens[i];
	char name[DNS_NAME_MAX + 80], want[DNS_NAME_MAX];

	snprintf(name, sizeof(name), "%s._domainkey.%s", tok, t->dom);
	snprintf(want, sizeof(want), "%s.dkim.%s", tok, AMAZONSES);
	if (dns_unusable(t, res, SEV_FAIL, name, t->dom, "CNAME"))
		return;
	if (dkim_cname_ok(t, i))
		say(t->unit, SEV_OK, NULL, "DNS %s: CNAME -> %s", name, res->rr[0]);
	else if (res->status == DNS_OK && res->n > 0)
		say(t->unit, SEV_FAIL, xasprintf("CNAME %s -> %s", name, want),
		    "DNS %s: CNAME points to %s, not %s", name, res->rr[0], want);
	else if (res->status == DNS_OK)
		say(t->unit, SEV_FAIL,
		    xasprintf("CNAME %s -> %s (DNS only, not proxied)", name, want),
		    "DNS %s: not a CNAME (other records, or a proxied/flattened CNAME)", name);
	else
		say(t->unit, SEV_FAIL, xasprintf("CNAME %s -> %s", name, want),
		    "DNS %s: CNAME missing", name);
}

static void line_dmarc(struct target *t)
{
	char name[DNS_NAME_MAX + 8], policy[32];
	const char *rec;
	size_t n;

	snprintf(name, sizeof(name), "_dmarc.%s", t->dom);
	if (dns_unusable(t, &t->dmarc, SEV_WARN, name, t->dom, "TXT"))
		return;
	n = count_matching(&t->dmarc, is_dmarc, &rec);
	if (n == 0)
		say(t->unit, SEV_WARN,
		    xasprintf("TXT %s \"v=DMARC1; p=none; rua=mailto:postmaster@%s\"", name,
		              t->dom),
		    "DNS %s: no DMARC record", name);
	else if (n > 1)
		say(t->unit, SEV_WARN,
		    xasprintf("keep one TXT \"v=DMARC1; ...\" record at %s", name),
		    "DNS %s: %zu DMARC records (receivers then ignore DMARC)", name, n);
	else {
		dmarc_policy(rec, policy, sizeof(policy));
		say(t->unit, SEV_OK, NULL, "DNS %s: DMARC p=%s", name, policy);
	}
}

static void line_mail_from_dns(struct target *t)
{
	char want[DNS_NAME_MAX];
	const char *mf = t->mail_from, *rec;
	size_t i, n;
	int found = -1;

	snprintf(want, sizeof(want), "feedback-smtp.%s.%s", t->ck->region, AMAZONSES);
	if (!dns_unusable(t, &t->mf_mx, SEV_FAIL, mf, mf, "MX")) {
		for (i = 0; i < (size_t)records(&t->mf_mx) && found < 0; i++)
			if (strcasecmp(t->mf_mx.rr[i], want) == 0)
				found = (int)i;
		if (found >= 0)
			say(t->unit, SEV_OK, NULL, "DNS %s: MX %d %s", mf, t->mf_mx.pref[found],
			    want);
		else if (records(&t->mf_mx) > 0)
			say(t->unit, SEV_FAIL, xasprintf("MX %s 10 %s", mf, want),
			    "DNS %s: MX points to %s, not %s", mf, t->mf_mx.rr[0], want);
		else
			say(t->unit, SEV_FAIL, xasprintf("MX %s 10 %s", mf, want),
			    "DNS %s: MAIL FROM MX missing", mf);
	}
	if (dns_unusable(t, &t->mf_txt, SEV_FAIL, mf, mf, "TXT"))
		return;
	n = count_matching(&t->mf_txt, is_spf, &rec);
	if (n == 1 && spf_includes_ses(rec))
		say(t->unit, SEV_OK, NULL, "DNS %s: SPF includes %s", mf, AMAZONSES);
	else if (n == 0)
		say(t->unit, SEV_FAIL, xasprintf("TXT %s \"%s\"", mf, SPF_DEFAULT),
		    "DNS %s: no SPF record for the MAIL FROM domain", mf);
	else {
		char *m = spf_merged(&t->mf_txt);
		say(t->unit, SEV_FAIL, xasprintf("TXT %s \"%s\" (as the only SPF record)", mf, m),
		    n > 1 ? "DNS %s: more than one SPF record"
		          : "DNS %s: SPF record does not "
		            "include amazonses.com",
		    mf);
		free(m);
	}
}

static void line_inbound_mx(struct target *t)
{
	char want[DNS_NAME_MAX];
	size_t i, n = (size_t)records(&t->mx);

	snprintf(want, sizeof(want), "inbound-smtp.%s.amazonaws.com", t->ck->region);
	if (dns_unusable(t, &t->mx, SEV_WARN, t->dom, t->dom, "MX"))
		return;
	for (i = 0; i < n; i++)
		if (strcasecmp(t->mx.rr[i], want) == 0) {
			say(t->unit, SEV_OK, NULL, "DNS %s: MX %d %s (SES receiving)", t->dom,
			    t->mx.pref[i], want);
			return;
		}
	for (i = 0; i < n; i++)
		if (strncmp(t->mx.rr[i], "inbound-smtp.", 13) == 0) {
			say(t->unit, SEV_OK, NULL, "DNS %s: MX %d %s (SES receiving)", t->dom,
			    t->mx.pref[i], t->mx.rr[i]);
			return;
		}
	if (n == 1 && t->mx.rr[0][0] == '\0')
		say(t->unit, SEV_WARN,
		    xasprintf("MX %s 10 %s, or your mailbox provider's", t->dom, want),
		    "DNS %s: null MX: %s receives no mail (bounces and replies are lost)", t->dom,
		    t->dom);
	else if (n > 0)
		say(t->unit, SEV_OK, NULL, "DNS %s: MX %d %s (mail is received there)", t->dom,
		    t->mx.pref[0], t->mx.rr[0]);
	else
		say(t->unit, SEV_WARN,
		    xasprintf("MX %s 10 %s (SES receiving), or your mailbox provider's MX", t->dom,
		              want),
		    "DNS %s: no MX: receiving is not set up", t->dom);
}

static void render_target(struct target *t)
{
	size_t i;

	line_identity(t);
	/* DNS is the business of domains the configuration names as "@domain" or
	 * that SES knows; not of gmail.com because one address there is verified */
	if (!t->is_domain || !t->valid || (!t->explicit_domain && t->id_state != ID_FOUND))
		return;
	if (t->id_state == ID_FOUND) {
		line_dkim_status(t);
		line_mail_from_status(t);
	}
	line_spf(t);
	for (i = 0; t->id_state == ID_FOUND && i < t->id.ndkim_tokens; i++)
		line_dkim_cname(t, i);
	line_dmarc(t);
	if (t->id_state == ID_FOUND && t->mail_from[0])
		line_mail_from_dns(t);
	if (!receiving(t->ck, t->dom))
		line_inbound_mx(t);
}

/* ------------------------------------------------------------------------- */
/* The senders the configuration names                                       */
/* ------------------------------------------------------------------------- */

static struct target *target_find(struct target *list, const char *name)
{
	for (; list; list = list->next)
		if (strcasecmp(list->name, name) == 0)
			return list;
	return NULL;
}

static struct target *target_new(struct check *ck, struct target **list, const char *name,
                                 int is_domain)
{
	struct target *t, **tail;
	size_t i;

	if ((t = target_find(*list, name)) != NULL)
		return t;
	t = xcalloc(1, sizeof(*t));
	t->ck = ck;
	t->name = xstrdup(name);
	for (i = 0; t->name[i]; i++)
		t->name[i] = (char)tolower((unsigned char)t->name[i]);
	t->is_domain = is_domain;
	t->dom = is_domain ? t->name : strrchr(t->name, '@') + 1;
	t->valid = dns_name_ok(t->dom);
	for (tail = list; *tail; tail = &(*tail)->next)
		;
	*tail = t;
	return t;
}

/* "a@b" or "@b" (or "*", which names nothing). */
static void add_sender(struct check *ck, struct target **domains, struct target **addrs,
                       const char *s, int from_users)
{
	const char *at = strrchr(s, '@');
	struct target *d;

	if (at == NULL || at[1] == '\0')
		return;
	d = target_new(ck, domains, at + 1, 1);
	if (at == s) {
		d->explicit_domain |= from_users;
		return;
	}
	target_new(ck, addrs, s, 0)->domain = d;
}

/* Domains in order, each followed by its addresses; one block each. */
static void collect_targets(struct check *ck)
{
	struct target *domains = NULL, *addrs = NULL, *t, **dv, **av, **tail = &ck->targets;
	size_t i, j, nd = 0, na = 0;

	for (i = 0; i < users_count(ck->users); i++) {
		const struct user *u = users_at(ck->users, i);
		for (j = 0; j < user_sender_count(u); j++)
			add_sender(ck, &domains, &addrs, user_sender_at(u, j), 1);
	}
	if (ck->conf->bounce_from && *ck->conf->bounce_from)
		add_sender(ck, &domains, &addrs, ck->conf->bounce_from, 0);
	if (ck->conf->inbound_bucket && ck->conf->inbound_from_address)
		add_sender(ck, &domains, &addrs, ck->conf->inbound_from_address, 0);
	for (t = domains; t; t = t->next)
		nd++;
	for (t = addrs; t; t = t->next)
		na++;
	dv = xcalloc(nd + 1, sizeof(*dv));
	av = xcalloc(na + 1, sizeof(*av));
	for (t = domains, i = 0; t; t = t->next)
		dv[i++] = t;
	for (t = addrs, i = 0; t; t = t->next)
		av[i++] = t;
	for (i = 0; i < nd; i++) {
		*tail = dv[i];
		tail = &dv[i]->next;
		for (j = 0; j < na; j++)
			if (av[j]->domain == dv[i]) {
				*tail = av[j];
				tail = &av[j]->next;
			}
	}
	*tail = NULL;
	ck->ndomains = nd;
	ck->naddresses = na;
	free(dv);
	free(av);
}

/* ------------------------------------------------------------------------- */
/* SES: GetAccount, then GetEmailIdentity for each sender, one at a time     */
/* ------------------------------------------------------------------------- */

static void ses_next(struct check *ck);

/* A signed GET of path (the same headers the transport signs). */
static struct curl_slist *sign_get(struct check *ck, const char *path,
                                   const struct sigv4_credentials *cr, const char **err)
{
	return ses_api_sign(ck->host, ck->conf->region, "GET", path, NULL, SIGV4_EMPTY_SHA256, cr,
	                    err);
}

/* Start a signed GET; -1 with err when it cannot even be sent. */
static int ses_get(struct check *ck, const char *path, ses_http_done done, char *err, size_t errlen)
{
	const struct sigv4_credentials *cr = ses_creds_get(ck->creds);
	struct ses_http_request req;
	struct curl_slist *h;
	const char *serr = NULL;
	char *url;

	if (cr == NULL) {
		snprintf(err, errlen, "the credentials expired during the check");
		return -1;
	}
	if ((h = sign_get(ck, path, cr, &serr)) == NULL) {
		snprintf(err, errlen, "cannot sign the request: %s", serr);
		return -1;
	}
	url = xasprintf("%s%s", ck->base_url, path);
	memset(&req, 0, sizeof(req));
	req.method = "GET";
	req.url = url;
	req.headers = h;
	req.timeout_ms = SES_CALL_TIMEOUT_MS;
	req.connect_timeout_ms = SES_CONNECT_MS;
	req.done = done;
	req.arg = ck;
	ck->call = ses_http_send(ck->http, &req);
	free(url);
	return 0;
}

static int credential_code(const char *code)
{
	static const char *const codes[] = {"UnrecognizedClientException",
	                                    "InvalidClientTokenId",
	                                    "SignatureDoesNotMatch",
	                                    "IncompleteSignature",
	                                    "ExpiredToken",
	                                    "ExpiredTokenException",
	                                    "RequestExpired",
	                                    "MissingAuthenticationToken",
	                                    "MissingAuthenticationTokenException"};
	size_t i;

	for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
		if (strcasecmp(code, codes[i]) == 0)
			return 1;
	return 0;
}

/* What went wrong with a call (*err) and what to do about it (*fix, or NULL);
 * both xmalloc'd. */
static void ses_trouble(struct check *ck, const struct ses_http_response *r,
                        const struct ses_api_reply *rep, const char *action, char **err, char **fix)
{
	*fix = NULL;
	if (!r->ok) {
		*err = xasprintf("no answer from %s: %s", ck->base_url, rep->message);
		*fix = xasprintf("make sure this host reaches %s over HTTPS (firewall, proxy, "
		                 "[ses] region and endpoint)",
		                 ck->base_url);
		return;
	}
	if (rep->code[0] && rep->message[0])
		*err = xasprintf("%ld %s: %s", r->status, rep->code, rep->message);
	else if (rep->code[0])
		*err = xasprintf("%ld %s", r->status, rep->code);
	else
		*err = xasprintf("HTTP status %ld", r->status);
	if (credential_code(rep->code))
		*fix = xasprintf("check the access key and secret (from %s) and the clock",
		                 ses_creds_source(ck->creds));
	else if (r->status == 401 || r->status == 403)
		*fix = xasprintf("allow ses:%s in the IAM policy of these credentials", action);
	else if (r->status >= 500 || r->status == 429)
		*fix = xstrdup("SES had trouble: run the check again later");
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
	ses_next(arg);
}

/* A throttled call is tried again, a little later each time: 1 when it will be. */
static int ses_retry(struct check *ck, const struct ses_http_response *r,
                     const struct ses_api_reply *rep)
{
	struct timeval tv = {0, 0};

	if (!r->ok || ck->throttled >= SES_THROTTLE_RETRIES ||
	    !(r->status == 429 || strcasecmp(rep->code, "TooManyRequestsException") == 0 ||
	      strcasecmp(rep->code, "Throttling") == 0 ||
	      strcasecmp(rep->code, "ThrottlingException") == 0))
		return 0;
	tv.tv_sec = ++ck->throttled;
	evtimer_add(ck->retry, &tv);
	return 1;
}

static void account_lines(struct check *ck, const struct ses_http_response *r,
                          const struct ses_api_reply *rep)
{
	struct unit *u = ck->u_account;
	struct ses_api_account a;
	char quota[48], enforcement[64], *err, *fix;

	if (!r->ok || r->status != 200) {
		ses_trouble(ck, r, rep, "GetAccount", &err, &fix);
		say(u, SEV_FAIL, fix, "SES account: GetAccount failed: %s", err);
		free(err);
		return;
	}
	if (ses_api_parse_account(r->body, r->body_len, &a) == -1) {
		say(u, SEV_FAIL, xasprintf("check [ses] endpoint (%s)", ck->base_url),
		    "SES account: the GetAccount answer has no SendQuota.MaxSendRate");
		return;
	}
	if (a.max_24h < 0)
		snprintf(quota, sizeof(quota), "unlimited/24h");
	else
		snprintf(quota, sizeof(quota), "%.0f/24h", a.max_24h);
	if (a.production)
		say(u, SEV_OK, NULL, "SES account: production (%s, %g/s)", quota, a.max_send_rate);
	else
		say(u, SEV_WARN,
		    xstrdup("request production access in the SES console (Account dashboard)"),
		    "SES account: sandbox (%s, %g/s; recipients must be verified)", quota,
		    a.max_send_rate);
	if (a.sending_enabled)
		say(u, SEV_OK, NULL, "SES account: sending enabled");
	else
		say(u, SEV_FAIL,
		    xasprintf("find the cause on the SES console's reputation dashboard, then "
		              "aws sesv2 put-account-sending-attributes --sending-enabled "
		              "--region %s",
		              ck->region),
		    "SES account: sending is PAUSED");
	if (ses_api_json_string(r->body, r->body_len, "EnforcementStatus", enforcement,
	                        sizeof(enforcement)) == 0 &&
	    enforcement[0] && strcmp(enforcement, "HEALTHY") != 0) {
		printable(enforcement);
		say(u, SEV_WARN,
		    xstrdup("bring bounces and complaints down (SES console: reputation "
		            "dashboard)"),
		    "SES account: enforcement status %s", enforcement);
	}
	if (a.max_24h < 0)
		say(u, SEV_OK, NULL, "SES account: %.0f sent in the last 24h (no daily quota)",
		    a.sent_24h);
	else if (a.sent_24h >= a.max_24h)
		say(u, SEV_FAIL,
		    xstrdup("mail waits until the quota frees up; ask for a higher quota in the "
		            "SES console"),
		    "SES account: 24h quota used up (%.0f of %.0f)", a.sent_24h, a.max_24h);
	else if (a.sent_24h >= QUOTA_WARN * a.max_24h)
		say(u, SEV_WARN, xstrdup("ask for a higher sending quota in the SES console"),
		    "SES account: %.0f of %.0f sent in the last 24h", a.sent_24h, a.max_24h);
	else
		say(u, SEV_OK, NULL, "SES account: %.0f of %.0f sent in the last 24h", a.sent_24h,
		    a.max_24h);
	if (ck->conf->max_send_rate > a.max_send_rate)
		say(u, SEV_WARN,
		    xasprintf("set [ses] max_send_rate = %g, or 0 to follow the account",
		              a.max_send_rate),
		    "SES account: max send rate %g/s is below [ses] max_send_rate = %g",
		    a.max_send_rate, ck->conf->max_send_rate);
}

static void account_done(void *arg, const struct ses_http_response *r)
{
	struct check *ck = arg;
	struct ses_api_reply rep;

	ck->call = NULL;
	ses_api_parse_response(r, &rep);
	if (ses_retry(ck, r, &rep))
		return;
	ck->throttled = 0;
	account_lines(ck, r, &rep);
	unit_done(ck->u_account);
	ck->phase = SES_IDENTITIES;
	ck->cur = ck->targets;
	ses_next(ck);
}

static void identity_done(void *arg, const struct ses_http_response *r)
{
	struct check *ck = arg;
	struct target *t = ck->cur;
	struct ses_api_reply rep;
	char *err;

	ck->call = NULL;
	ses_api_parse_response(r, &rep);
	if (ses_retry(ck, r, &rep))
		return;
	ck->throttled = 0;
	if (r->ok && r->status == 200 &&
	    ses_api_parse_identity(r->body, r->body_len, &t->id) == 0) {
		t->id_state = ID_FOUND;
		if (!t->explicit_domain)
			target_start_dns(t);
		target_start_identity_dns(t);
	} else if (r->ok && r->status == 404) {
		t->id_state = ID_NOT_FOUND;
	} else {
		t->id_state = ID_FAILED;
		if (r->ok && r->status == 200)
			t->id_error = xstrdup("GetEmailIdentity answer without "
			                      "VerifiedForSendingStatus");
		else {
			ses_trouble(ck, r, &rep, "GetEmailIdentity", &err, &t->id_fix);
			t->id_error = xasprintf("GetEmailIdentity failed: %s", err);
			free(err);
		}
	}
	ck->cur = t->next;
	op_done(t);
	ses_next(ck);
}

/* The next SES call in order, or nothing when all are answered. */
static void ses_next(struct check *ck)
{
	char err[TEXT_MAX], *path, *enc;
	struct target *t;
	int rc;

	if (ck->stopping)
		return;
	if (ck->phase == SES_ACCOUNT) {
		if (ses_get(ck, SES_ACCOUNT_PATH, account_done, err, sizeof(err)) == 0)
			return;
		say(ck->u_account, SEV_FAIL, NULL, "SES account: %s", err);
		unit_done(ck->u_account);
		ck->phase = SES_IDENTITIES;
		ck->cur = ck->targets;
	}
	if (ck->phase != SES_IDENTITIES)
		return;
	while ((t = ck->cur) != NULL) {
		if (t->id_state != ID_PENDING) {
			ck->cur = t->next;
			continue;
		}
		/* a verified domain covers its addresses: spare the rate-limited call */
		if (!t->is_domain && t->domain->id_state == ID_FOUND && t->domain->id.verified) {
			t->id_state = ID_COVERED;
			ck->cur = t->next;
			op_done(t);
			continue;
		}
		enc = sigv4_uri_encode(t->name, strlen(t->name), false);
		path = xasprintf("%s%s", SES_IDENTITY_PATH, enc);
		free(enc);
		rc = ses_get(ck, path, identity_done, err, sizeof(err));
		free(path);
		if (rc == 0)
			return;
		t->id_state = ID_FAILED;
		t->id_error = xstrdup(err);
		ck->cur = t->next;
		op_done(t);
	}
	ck->phase = SES_DONE;
}

/* No SES answers will come (why): every open SES question gets a FAIL line. */
static void ses_abort(struct check *ck, const char *why)
{
	struct target *t;

	if (!ck->u_creds->done) {
		say(ck->u_creds, SEV_FAIL, NULL, "credentials: %s", why);
		unit_done(ck->u_creds);
	}
	if (!ck->u_account->done) {
		say(ck->u_account, SEV_FAIL, NULL, "SES account: %s", why);
		unit_done(ck->u_account);
	}
	ck->phase = SES_DONE;
	for (t = ck->targets; t; t = t->next) {
		if (t->id_state != ID_PENDING)
			continue;
		t->id_state = ID_FAILED;
		t->id_error = xstrdup(why);
		op_done(t);
	}
}

/* ------------------------------------------------------------------------- */
/* [inbound]: the bucket SES stores mail in, and the domains it receives for */
/* ------------------------------------------------------------------------- */

static const struct s3_step_def {
	const char *action;  /* the IAM action the step proves */
	const char *ok_text; /* after "s3://BUCKET/PREFIX " */
	const char *needed;  /* the setting that needs it, or NULL: always */
} S3_STEPS[S3_STEP_END] = {
    [S3_STEP_LIST] = {"s3:ListBucket", "can be listed", NULL},
    [S3_STEP_GET] = {"s3:GetObject", "objects can be read", NULL},
    [S3_STEP_DELETE] = {"s3:DeleteObject", "objects can be deleted", NULL},
    [S3_STEP_COPY_DONE] = {"s3:PutObject", "can be written", "delete_after = move"},
    [S3_STEP_COPY_HELD] = {"s3:PutObject", "can be written", "failed_verdict = hold"},
};

static int s3_step_wanted(const struct conf *c, enum s3_step step)
{
	switch (step) {
	case S3_STEP_COPY_DONE:
		return c->inbound_after == CONF_AFTER_MOVE;
	case S3_STEP_COPY_HELD:
		return c->inbound_failed_verdict == CONF_VERDICT_HOLD;
	default:
		return 1;
	}
}

/* The keys a step is about: the forwarder reads and deletes under prefix and
 * copies to done_prefix or held_prefix. */
static const char *s3_step_prefix(const struct conf *c, enum s3_step step)
{
	switch (step) {
	case S3_STEP_COPY_DONE:
		return c->inbound_done_prefix;
	case S3_STEP_COPY_HELD:
		return c->inbound_held_prefix;
	default:
		return c->inbound_prefix;
	}
}

/* "s3://BUCKET/PREFIX", for a verdict line.  xmalloc'd. */
static char *s3_where(const struct conf *c, enum s3_step step)
{
	char *w = xasprintf("s3://%s/%s", c->inbound_bucket, s3_step_prefix(c, step));

	printable(w);
	return w;
}

/* The IAM resource of a step's action: the bucket for s3:ListBucket, the
 * objects under the step's prefix for the others.  xmalloc'd. */
static char *s3_resource(const struct conf *c, enum s3_step step)
{
	char *r = step == S3_STEP_LIST ? xasprintf("arn:aws:s3:::%s", c->inbound_bucket)
	                               : xasprintf("arn:aws:s3:::%s/%s*", c->inbound_bucket,
	                                           s3_step_prefix(c, step));

	printable(r);
	return r;
}

/* S3 refused for want of a permission. */
static int s3_denied(const struct s3_result *r)
{
	return strcmp(r->code, "AccessDenied") == 0 || (r->code[0] == '\0' && r->status == 403);
}

/* Did the answer show the step's action allowed?  For the key that cannot
 * exist, S3 says NoSuchKey (get, copy) or 204 (delete) when it is. */
static int s3_allowed(enum s3_step step, const struct s3_result *r)
{
	switch (step) {
	case S3_STEP_GET:
	case S3_STEP_COPY_DONE:
	case S3_STEP_COPY_HELD:
		return strcmp(r->code, "NoSuchKey") == 0 || r->cls == S3_OK || r->cls == S3_ABORTED;
	default:
		return r->cls == S3_OK;
	}
}

/*
 * What to do about a step that failed: for a refusal, the IAM statement that
 * grants the step's action on its resource; else S3's own hint, or advice for
 * an answer that never came.  xmalloc'd, or NULL.
 */
static char *s3_step_fix(const struct conf *c, enum s3_step step, const struct s3_result *r)
{
	const char *hint = s3_hint(r->code);
	char *res, *fix;

	if (s3_denied(r)) {
		res = s3_resource(c, step);
		fix = xasprintf("allow %s on %s", S3_STEPS[step].action, res);
		free(res);
		return fix;
	}
	if (hint)
		return xstrdup(hint);
	if (r->status == 0)
		return xstrdup("make sure this host reaches S3 over HTTP(S) (firewall, proxy, "
		               "[inbound] region and endpoint)");
	if (r->status >= 500 || r->status == 429)
		return xstrdup("S3 had trouble: run the check again later");
	return NULL;
}

/* r->text without S3's hint (" - check the bucket name"): the fix says it,
 * or says better for a refusal. */
static void s3_text(const struct s3_result *r, char *out, size_t size)
{
	const char *hint = s3_hint(r->code);
	char *cut, *p;

	snprintf(out, size, "%s", r->text);
	if (hint == NULL)
		return;
	cut = xasprintf(" - %s", hint);
	if ((p = strstr(out, cut)) != NULL)
		memmove(p, p + strlen(cut), strlen(p + strlen(cut)) + 1);
	free(cut);
}

static void s3_step_line(struct check *ck, enum s3_step step, const struct s3_result *r)
{
	const struct s3_step_def *d = &S3_STEPS[step];
	struct unit *u = ck->u_s3;
	char *where = s3_where(ck->conf, step), *res, *list, text[S3_TEXT_MAX];

	if (s3_allowed(step, r) && d->needed)
		say(u, SEV_OK, NULL, "inbound: %s %s (%s, for %s)", where, d->ok_text, d->action,
		    d->needed);
	else if (s3_allowed(step, r))
		say(u, SEV_OK, NULL, "inbound: %s %s (%s)", where, d->ok_text, d->action);
	else if (ck->s3_list_denied && s3_denied(r) && step != S3_STEP_DELETE) {
		/* who may not list gets AccessDenied for a missing key, allowed or not */
		res = s3_resource(ck->conf, step);
		list = s3_resource(ck->conf, S3_STEP_LIST);
		say(u, SEV_WARN,
		    xasprintf("allow s3:ListBucket on %s and %s on %s", list, d->action, res),
		    "inbound: %s: %s unknown (without s3:ListBucket, S3 answers AccessDenied for a "
		    "missing key)",
		    where, d->action);
		free(list);
		free(res);
	} else if (step == S3_STEP_LIST && s3_denied(r) && ck->conf->inbound_queue_url) {
		/* the forwarder follows the queue's notifications instead */
		s3_text(r, text, sizeof(text));
		res = s3_resource(ck->conf, step);
		say(u, SEV_WARN,
		    xasprintf("none while queue_url is set; to poll without it, allow %s on %s",
		              d->action, res),
		    "inbound: %s: listing is only used without queue_url: %s", where, text);
		free(res);
	} else {
		s3_text(r, text, sizeof(text));
		say(u, SEV_FAIL, s3_step_fix(ck->conf, step, r), "inbound: %s: %s", where, text);
	}
	free(where);
}

static void s3_next(struct check *ck);

static void s3_step_done(void *arg, const struct s3_result *r)
{
	struct check *ck = arg;
	enum s3_step step = ck->s3_step;

	ck->s3_call = NULL;
	s3_step_line(ck, step, r);
	if (step == S3_STEP_LIST && !s3_allowed(step, r) && !s3_denied(r)) {
		/* no bucket, wrong credentials or region, no answer: the rest would say the same */
		ck->s3_step = S3_STEP_END;
	} else {
		ck->s3_list_denied |= step == S3_STEP_LIST && !s3_allowed(step, r);
		ck->s3_step = step + 1;
	}
	s3_next(ck);
}

/* The probe key exists only if someone made it: whatever it holds is not read. */
static size_t s3_no_body(void *arg, const char *data, size_t len)
{
	return 0;
}

/* Start the next step the configuration needs, one at a time; or finish. */
static void s3_next(struct check *ck)
{
	const struct conf *c = ck->conf;
	char *dst;

	while (ck->s3_step < S3_STEP_END && !s3_step_wanted(c, ck->s3_step))
		ck->s3_step++;
	switch (ck->s3_step) {
	case S3_STEP_LIST:
		ck->s3_call = s3_probe(ck->s3, c->inbound_prefix, s3_step_done, ck);
		break;
	case S3_STEP_GET:
		ck->s3_call = s3_get(ck->s3, ck->s3_key, s3_no_body, NULL, s3_step_done, ck);
		break;
	case S3_STEP_DELETE:
		ck->s3_call = s3_delete(ck->s3, ck->s3_key, s3_step_done, ck);
		break;
	case S3_STEP_COPY_DONE:
	case S3_STEP_COPY_HELD:
		/* where the forwarder puts a message: the prefix, then the whole key */
		dst = xasprintf("%s%s", s3_step_prefix(c, ck->s3_step), ck->s3_key);
		ck->s3_call = s3_copy(ck->s3, ck->s3_key, dst, s3_step_done, ck);
		free(dst);
		break;
	case S3_STEP_END:
		unit_done(ck->u_s3);
		break;
	}
}

/* hex: 16 random hex digits, for a name nobody made. */
static void probe_hex(char hex[17])
{
	unsigned char rnd[8];
	size_t i;

	if (RAND_bytes(rnd, sizeof(rnd)) != 1)
		for (i = 0; i < sizeof(rnd); i++)
			rnd[i] = (unsigned char)random();
	for (i = 0; i < sizeof(rnd); i++)
		snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
}

/* The credentials are known: ask about the bucket. */
static void inbound_start_s3(struct check *ck)
{
	char hex[17];

	if (ck->s3 == NULL || ck->u_s3->done)
		return;
	probe_hex(hex);
	ck->s3_key = xasprintf("%s%s%s", ck->conf->inbound_prefix, PROBE_NAME, hex);
	ck->s3_step = S3_STEP_LIST;
	s3_next(ck);
}

/* ------------------------------------------------------------------------- */
/* [inbound] queue_url: the SQS queue of SES's receipt notifications         */
/* ------------------------------------------------------------------------- */

static const char *const SQS_ACTIONS[SQS_STEP_END] = {
    [SQS_STEP_RECEIVE] = "sqs:ReceiveMessage",
    [SQS_STEP_DELETE] = "sqs:DeleteMessage",
};

#define SQS_FIX_SUBSCRIBE                                                                          \
	"subscribe the queue to the SNS topic of the receipt rule's S3 action, and to "            \
	"nothing else (the forwarder deletes any other message)"

/* "SQS QUEUE_URL", for a verdict line.  xmalloc'd. */
static char *sqs_where(const struct check *ck)
{
	char *w = xasprintf("SQS %s", ck->conf->inbound_queue_url);

	printable(w);
	return w;
}

/* The queue's ARN: the account and name from the URL's path (/ACCOUNT/NAME),
 * the region the client signs for; a part the path lacks stays a
 * placeholder.  xmalloc'd. */
static char *sqs_arn(const struct check *ck)
{
	const char *url = ck->conf->inbound_queue_url, *region, *partition, *p, *slash;
	char path[256], *arn;
	size_t len;

	region = ck->sqs ? sqs_region(ck->sqs) : "REGION";
	partition = strstr(url, ".amazonaws.com.cn")     ? "aws-cn"
	            : strncmp(region, "us-gov-", 7) == 0 ? "aws-us-gov"
	                                                 : "aws";
	path[0] = '\0';
	if ((p = strstr(url, "://")) != NULL && (p = strchr(p + 3, '/')) != NULL)
		snprintf(path, sizeof(path), "%s", p + 1);
	len = strcspn(path, "?#");
	while (len && path[len - 1] == '/')
		len--;
	path[len] = '\0';
	slash = strchr(path, '/');
	if (slash == NULL || slash == path || slash[1] == '\0' || strchr(slash + 1, '/'))
		arn = xasprintf("arn:%s:sqs:%s:ACCOUNT:NAME", partition, region);
	else
		arn = xasprintf("arn:%s:sqs:%s:%.*s:%s", partition, region, (int)(slash - path),
		                path, slash + 1);
	printable(arn);
	return arn;
}

/* SQS refused for want of a permission. */
static int sqs_denied(const struct sqs_result *r)
{
	return strcmp(r->code, "AccessDenied") == 0 ||
	       strcmp(r->code, "AccessDeniedException") == 0 ||
	       (r->code[0] == '\0' && r->status == 403);
}

/* What to do about a step that failed, as s3_step_fix.  xmalloc'd, or NULL. */
static char *sqs_step_fix(const struct check *ck, enum sqs_step step, const struct sqs_result *r)
{
	const char *hint = sqs_hint(r->code);
	char *arn, *fix;

	if (sqs_denied(r)) {
		arn = sqs_arn(ck);
		fix = xasprintf("allow %s on %s", SQS_ACTIONS[step], arn);
		free(arn);
		return fix;
	}
	if (hint)
		return xstrdup(hint);
	if (r->status == 0)
		return xstrdup("make sure this host reaches SQS over HTTP(S) (firewall, proxy, "
		               "[inbound] queue_url)");
	if (r->status >= 500 || r->status == 429)
		return xstrdup("SQS had trouble: run the check again later");
	return NULL;
}

/* r->text without SQS's hint: the fix says it, or says better for a refusal. */
static void sqs_text(const struct sqs_result *r, char *out, size_t size)
{
	const char *hint = sqs_hint(r->code);
	char *cut, *p;

	snprintf(out, size, "%s", r->text);
	if (hint == NULL)
		return;
	cut = xasprintf(" - %s", hint);
	if ((p = strstr(out, cut)) != NULL)
		memmove(p, p + strlen(cut), strlen(p + strlen(cut)) + 1);
	free(cut);
}

/*
 * What the message the probe saw is: the forwarder handles an SES receipt
 * notification for our bucket and deletes anything else, so anything else
 * means the queue is fed by the wrong source.  Never the body itself: it
 * names senders and recipients.
 */
static void sqs_message_line(struct check *ck, const char *where, const struct sqs_message *m)
{
	const char *bucket = ck->conf->inbound_bucket;
	struct unit *u = ck->u_sqs;
	struct sqs_receipt rc;
	char id[SQS_MESSAGE_ID_MAX], err[256], *cut;

	snprintf(id, sizeof(id), "%s", m->message_id);
	printable(id);
	if (m->oversize || m->body == NULL) {
		say(u, SEV_WARN, xstrdup(SQS_FIX_SUBSCRIBE),
		    "inbound: %s: the waiting message %s is not an SES receipt notification (%s)",
		    where, id, m->oversize ? "over 256 KiB" : "no body");
		return;
	}
	memset(&rc, 0, sizeof(rc));
	if (sqs_parse_receipt(m->body, m->body_len, &rc, err, sizeof(err)) == -1) {
		printable(err);
		if ((cut = strstr(err, ": subscribe ")) != NULL)
			*cut = '\0'; /* the parser's advice: the fix says it */
		say(u, SEV_WARN,
		    xstrdup(strstr(err, "S3 event notification")
		                ? "subscribe the queue to the SNS topic of the receipt rule's S3 "
		                  "action, not to the bucket's event notifications"
		                : SQS_FIX_SUBSCRIBE),
		    "inbound: %s: the waiting message %s is not a readable SES receipt "
		    "notification (%s)",
		    where, id, err);
	} else if (rc.kind == SQS_RECEIPT_RECEIVED && strcmp(rc.bucket, bucket) == 0) {
		printable(rc.object_key);
		say(u, SEV_OK, NULL,
		    "inbound: %s: the waiting message %s is an SES receipt notification for "
		    "s3://%s/%s",
		    where, id, bucket, rc.object_key);
	} else if (rc.kind == SQS_RECEIPT_RECEIVED) {
		printable(rc.bucket);
		say(u, SEV_WARN,
		    xasprintf("give this relay a queue of its own, subscribed to the topic of the "
		              "receipt rule that stores in s3://%s/ (the forwarder deletes "
		              "notifications for other buckets)",
		              bucket),
		    "inbound: %s: the waiting message %s is an SES receipt notification for "
		    "s3://%s/, not this bucket",
		    where, id, rc.bucket);
	} else if (rc.kind == SQS_RECEIPT_SETUP) {
		say(u, SEV_OK, NULL,
		    "inbound: %s: the waiting message %s is SES's setup notification (the "
		    "forwarder deletes it)",
		    where, id);
	} else {
		printable(rc.why);
		say(u, SEV_WARN, xstrdup(SQS_FIX_SUBSCRIBE),
		    "inbound: %s: the waiting message %s is not an SES receipt notification (%s)",
		    where, id, rc.why);
	}
	sqs_receipt_free(&rc);
}

static void sqs_step_line(struct check *ck, enum sqs_step step, const struct sqs_result *r)
{
	struct unit *u = ck->u_sqs;
	char *where = sqs_where(ck), text[SQS_TEXT_MAX];

	if (step == SQS_STEP_RECEIVE && r->cls == SQS_OK) {
		say(u, SEV_OK, NULL, "inbound: %s can be read (%s), %s now", where,
		    SQS_ACTIONS[step], r->nmessages ? "a message is waiting" : "empty");
		if (r->nmessages)
			sqs_message_line(ck, where, &r->messages[0]);
	} else if (step == SQS_STEP_DELETE &&
	           (r->cls == SQS_OK || strcmp(r->code, "ReceiptHandleIsInvalid") == 0)) {
		/* SQS looked at the handle, so the action was allowed */
		say(u, SEV_OK, NULL, "inbound: %s messages can be deleted (%s)", where,
		    SQS_ACTIONS[step]);
	} else {
		sqs_text(r, text, sizeof(text));
		say(u, SEV_FAIL, sqs_step_fix(ck, step, r), "inbound: %s: %s", where, text);
	}
	free(where);
}

static void sqs_next(struct check *ck);

static void sqs_step_done(void *arg, const struct sqs_result *r)
{
	struct check *ck = arg;
	enum sqs_step step = ck->sqs_step;

	ck->sqs_call = NULL;
	sqs_step_line(ck, step, r);
	if (step == SQS_STEP_RECEIVE && r->cls != SQS_OK && !sqs_denied(r))
		ck->sqs_step = SQS_STEP_END; /* no queue, wrong credentials, no answer */
	else
		ck->sqs_step = step + 1;
	sqs_next(ck);
}

/* Start the next step, one at a time; or finish. */
static void sqs_next(struct check *ck)
{
	char hex[17], *handle;

	switch (ck->sqs_step) {
	case SQS_STEP_RECEIVE:
		/* no wait, and visibility 0: what the probe sees is visible again at once */
		ck->sqs_call = sqs_receive(ck->sqs, 1, 0, 0, sqs_step_done, ck);
		break;
	case SQS_STEP_DELETE:
		probe_hex(hex);
		handle = xasprintf("%s%s", PROBE_HANDLE, hex);
		ck->sqs_call = sqs_delete(ck->sqs, handle, sqs_step_done, ck);
		free(handle);
		break;
	case SQS_STEP_END:
		unit_done(ck->u_sqs);
		break;
	}
}

/* The credentials are known: ask about the queue. */
static void inbound_start_sqs(struct check *ck)
{
	if (ck->sqs == NULL || ck->u_sqs->done)
		return;
	ck->sqs_step = SQS_STEP_RECEIVE;
	sqs_next(ck);
}

/* No SQS answer will come (why): the open question gets a FAIL line. */
static void inbound_abort_sqs(struct check *ck, const char *why)
{
	enum sqs_step step = ck->sqs_step < SQS_STEP_END ? ck->sqs_step : SQS_STEP_RECEIVE;
	char *where;

	if (ck->u_sqs == NULL || ck->u_sqs->done)
		return;
	sqs_cancel(ck->sqs_call);
	ck->sqs_call = NULL;
	where = sqs_where(ck);
	if (step == SQS_STEP_RECEIVE)
		say(ck->u_sqs, SEV_FAIL, NULL, "inbound: %s: %s", where, why);
	else
		say(ck->u_sqs, SEV_FAIL, NULL, "inbound: %s: %s %s", where, SQS_ACTIONS[step], why);
	free(where);
	ck->sqs_step = SQS_STEP_END;
	unit_done(ck->u_sqs);
}

/* No S3 or SQS answer will come (why): the open questions get a FAIL line. */
static void inbound_abort(struct check *ck, const char *why)
{
	enum s3_step step = ck->s3_step < S3_STEP_END ? ck->s3_step : S3_STEP_LIST;
	char *where;

	inbound_abort_sqs(ck, why);
	if (ck->u_s3 == NULL || ck->u_s3->done)
		return;
	s3_cancel(ck->s3_call);
	ck->s3_call = NULL;
	where = s3_where(ck->conf, step);
	if (step == S3_STEP_LIST)
		say(ck->u_s3, SEV_FAIL, NULL, "inbound: %s: %s", where, why);
	else
		say(ck->u_s3, SEV_FAIL, NULL, "inbound: %s: %s %s", where, S3_STEPS[step].action,
		    why);
	free(where);
	ck->s3_step = S3_STEP_END;
	unit_done(ck->u_s3);
}

/*
 * The domains the map receives for, in the map's order: those of "@domain"
 * and "user@domain" keys; a bare user or "@" names none.  conf_load has
 * checked every entry; the key is read as relay/inbound_map.c reads it (up to
 * white space, '=' or ':').
 */
static void collect_receiving(struct check *ck)
{
	const struct conf *c = ck->conf;
	struct rdomain *rd, **tail = &ck->rdomains;
	const char *p, *at;
	size_t i, n;
	char *dom;

	if (c->inbound_bucket == NULL)
		return;
	for (i = 0; i < c->ninbound_map; i++) {
		p = c->inbound_map[i] + strspn(c->inbound_map[i], " \t");
		n = strcspn(p, " \t=:");
		if ((at = memchr(p, '@', n)) == NULL || at + 1 == p + n)
			continue;
		dom = xstrndup(at + 1, (size_t)(p + n - at - 1));
		for (n = 0; dom[n]; n++)
			dom[n] = (char)tolower((unsigned char)dom[n]);
		if (receiving(ck, dom)) {
			free(dom);
			continue;
		}
		rd = xcalloc(1, sizeof(*rd));
		rd->ck = ck;
		rd->name = dom;
		rd->valid = dns_name_ok(dom);
		*tail = rd;
		tail = &rd->next;
	}
}

/* Receiving is configured, so an MX elsewhere is a FAIL (a sender domain's
 * MX, in line_inbound_mx, is only a warning). */
static void line_receiving_mx(struct check *ck, const struct rdomain *rd)
{
	const struct dns_result *mx = &rd->mx;
	struct unit *u = ck->u_mx;
	char want[DNS_NAME_MAX];
	size_t i, j, n = (size_t)records(mx);

	snprintf(want, sizeof(want), INBOUND_MX, ck->conf->inbound_region);
	if (!rd->valid) {
		say(u, SEV_FAIL, xstrdup("correct the key in [inbound] map"),
		    "inbound: map: %s is not a domain name DNS can be asked about", rd->name);
		return;
	}
	if (dns_unusable_in(ck, u, "inbound: ", mx, SEV_FAIL, rd->name, rd->name, "MX"))
		return;
	for (i = 0; i < n && strcasecmp(mx->rr[i], want) != 0; i++)
		;
	/* another MX as preferred as SES's takes (some of) the mail */
	for (j = 0; i < n && j < n && (j == i || mx->pref[j] > mx->pref[i]); j++)
		;
	if (i < n && j == n)
		say(u, SEV_OK, NULL, "inbound: DNS %s: MX %d %s", rd->name, mx->pref[i], want);
	else if (i < n)
		say(u, SEV_FAIL, xasprintf("MX %s 10 %s as the only MX", rd->name, want),
		    "inbound: DNS %s: MX %d %s takes mail before or beside MX %d %s", rd->name,
		    mx->pref[j], mx->rr[j], mx->pref[i], want);
	else if (mx->status == DNS_NXDOMAIN)
		say(u, SEV_FAIL, xasprintf("MX %s 10 %s", rd->name, want),
		    "inbound: DNS %s: no such domain", rd->name);
	else if (n == 0)
		say(u, SEV_FAIL, xasprintf("MX %s 10 %s", rd->name, want),
		    "inbound: DNS %s: no MX, so its mail does not reach SES", rd->name);
	else if (n == 1 && mx->rr[0][0] == '\0')
		say(u, SEV_FAIL, xasprintf("MX %s 10 %s", rd->name, want),
		    "inbound: DNS %s: null MX: the domain receives no mail", rd->name);
	else
		say(u, SEV_FAIL, xasprintf("MX %s 10 %s", rd->name, want),
		    "inbound: DNS %s: MX points to %s, not %s", rd->name, mx->rr[0], want);
}

static void receiving_lines(struct check *ck)
{
	const struct rdomain *rd;
	char want[DNS_NAME_MAX];

	for (rd = ck->rdomains; rd; rd = rd->next)
		line_receiving_mx(ck, rd);
	if (ck->rdomains == NULL) {
		snprintf(want, sizeof(want), INBOUND_MX, ck->conf->inbound_region);
		say(ck->u_mx, SEV_WARN,
		    xasprintf("give each domain SES receives for MX DOMAIN 10 %s", want),
		    "inbound: the map names no domain (only bare users or the catch-all @), so "
		    "the receiving domains' MX cannot be checked");
	}
}

/* One MX answer fewer to wait for; the block is rendered after the last. */
static void receiving_release(struct check *ck)
{
	if (--ck->rpending > 0)
		return;
	receiving_lines(ck);
	unit_done(ck->u_mx);
}

static void receiving_done(void *arg)
{
	struct rdomain *rd = arg;

	receiving_release(rd->ck);
}

/* The S3 client (its calls wait for the credentials) and the MX lookups. */
static void inbound_start(struct check *ck)
{
	const struct conf *c = ck->conf;
	struct s3_config cfg;
	struct sqs_config qc;
	struct rdomain *rd;
	char err[256];

	memset(&cfg, 0, sizeof(cfg));
	cfg.bucket = c->inbound_bucket;
	cfg.region = c->inbound_region;
	cfg.endpoint = c->inbound_endpoint;
	cfg.timeout_ms = SES_CALL_TIMEOUT_MS;
	cfg.get_timeout_ms = SES_CALL_TIMEOUT_MS;
	if ((ck->s3 = s3_new(ck->base, ck->http, ck->creds, &cfg, err, sizeof(err))) == NULL) {
		printable(err);
		say(ck->u_s3, SEV_FAIL, xstrdup("correct [inbound] bucket, region and endpoint"),
		    "inbound: %s", err);
		unit_done(ck->u_s3);
	}
	if (c->inbound_queue_url) {
		memset(&qc, 0, sizeof(qc));
		qc.queue_url = c->inbound_queue_url;
		/* as the forwarder: an AWS queue URL names its region, a test server's not */
		if (strstr(c->inbound_queue_url, ".amazonaws.com") == NULL)
			qc.region = c->inbound_region;
		qc.timeout_ms = SES_CALL_TIMEOUT_MS;
		if ((ck->sqs = sqs_new(ck->base, ck->http, ck->creds, &qc, err, sizeof(err))) ==
		    NULL) {
			printable(err);
			say(ck->u_sqs, SEV_FAIL,
			    xstrdup("correct [inbound] queue_url (https://sqs.REGION.amazonaws.com/"
			            "ACCOUNT/NAME), or region for a queue URL without one"),
			    "inbound: %s", err);
			unit_done(ck->u_sqs);
		}
	}
	ck->rpending = 1; /* until every lookup is asked */
	for (rd = ck->rdomains; rd; rd = rd->next)
		if (rd->valid && ck->dns_ready) {
			ck->rpending++;
			dns_query(&ck->dns, rd->name, EVDNS_TYPE_MX, &rd->mx, receiving_done, rd);
		}
	receiving_release(ck);
}

static void on_creds(void *arg, int ok, const char *err)
{
	struct check *ck = arg;
	const struct sigv4_credentials *cr;
	char text[TEXT_MAX], when[64] = "";
	time_t exp;
	struct tm tm;

	if (!ok) {
		snprintf(text, sizeof(text), "%s", err ? err : "unknown error");
		printable(text);
		if (strncmp(text, "no AWS credentials found", 24) == 0)
			say(ck->u_creds, SEV_FAIL,
			    xstrdup("set [ses] access_key_id and secret_access_key, or "
			            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in "
			            "~/.aws/credentials, or run with an IAM role"),
			    "credentials: none found (config file, environment, profile, web "
			    "identity, container, EC2 instance metadata)");
		else
			say(ck->u_creds, SEV_FAIL,
			    xstrdup("correct that source: the chain stops at the first source that "
			            "is configured"),
			    "credentials: %s", text);
		unit_done(ck->u_creds);
		ses_abort(ck, "not checked: no AWS credentials");
		inbound_abort(ck, "not checked: no AWS credentials");
		return;
	}
	cr = ses_creds_get(ck->creds);
	if ((exp = ses_creds_expiration(ck->creds)) != 0 && gmtime_r(&exp, &tm))
		strftime(when, sizeof(when), ", temporary, until %Y-%m-%d %H:%M UTC", &tm);
	else if (ses_creds_temporary(ck->creds))
		snprintf(when, sizeof(when), ", temporary");
	say(ck->u_creds, SEV_OK, NULL, "credentials: %s (%.4s\u2026%s)",
	    ses_creds_source(ck->creds), cr ? cr->access_key_id : "????", when);
	unit_done(ck->u_creds);
	inbound_start_s3(ck);
	inbound_start_sqs(ck);
	if (ck->base_url == NULL) {
		ses_abort(ck, "not checked: no SES region");
		return;
	}
	ck->phase = SES_ACCOUNT;
	ses_next(ck);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct check *ck = arg;
	char why[96];

	snprintf(why, sizeof(why), "timed out (no answer within %d s)", ck->timeout);
	ck->stopping = 1;
	if (ck->call) {
		ses_http_cancel(ck->call);
		ck->call = NULL;
	}
	evtimer_del(ck->retry);
	ses_abort(ck, why);
	inbound_abort(ck, why);
	dnsr_cancel_all(&ck->dns, why);
	event_base_loopexit(ck->base, NULL);
}

/* ------------------------------------------------------------------------- */
/* Offline: the configuration and what it names                              */
/* ------------------------------------------------------------------------- */

static void check_tls(struct check *ck, struct unit *u)
{
	const struct conf *c = ck->conf;
	const ASN1_TIME *na = NULL;
	char err[1024], until[32];
	int days = 0, secs = 0;
	SSL_CTX *ctx;
	struct tm tm;
	X509 *x;

	if (c->tls_certificate == NULL)
		return;
	if ((ctx = tls_server_ctx(c->tls_certificate, c->tls_private_key, err, sizeof(err))) ==
	    NULL) {
		printable(err);
		say(u, SEV_FAIL, NULL, "TLS: %s", err);
		ck->config_error = 1;
		return;
	}
	if ((x = SSL_CTX_get0_certificate(ctx)) != NULL)
		na = X509_get0_notAfter(x);
	memset(&tm, 0, sizeof(tm));
	if (na == NULL || ASN1_TIME_to_tm(na, &tm) != 1 ||
	    ASN1_TIME_diff(&days, &secs, NULL, na) != 1)
		say(u, SEV_OK, NULL, "TLS certificate %s", c->tls_certificate);
	else {
		strftime(until, sizeof(until), "%Y-%m-%d", &tm);
		if (days < 0 || secs < 0)
			say(u, SEV_FAIL,
			    xasprintf("renew %s, then reload sesrelay (SIGHUP)",
			              c->tls_certificate),
			    "TLS certificate %s expired on %s", c->tls_certificate, until);
		else if (days < CERT_WARN_DAYS)
			say(u, SEV_WARN,
			    xasprintf("renew %s, then reload sesrelay (SIGHUP)",
			              c->tls_certificate),
			    "TLS certificate %s expires on %s (in %d days)", c->tls_certificate,
			    until, days);
		else
			say(u, SEV_OK, NULL, "TLS certificate %s (valid until %s)",
			    c->tls_certificate, until);
	}
	SSL_CTX_free(ctx);
}

/* https://host[:port] from [ses] endpoint or the region. */
static int endpoint_parse(struct check *ck)
{
	const struct conf *c = ck->conf;
	const char *p;
	size_t len;
	char *url;

	if (c->region == NULL)
		return -1;
	url = c->endpoint && *c->endpoint ? xstrdup(c->endpoint)
	                                  : xasprintf("https://email.%s.amazonaws.com", c->region);
	len = strlen(url);
	while (len && url[len - 1] == '/')
		url[--len] = '\0';
	if ((p = strstr(url, "://")) == NULL || p[3] == '\0' || strchr(p + 3, '/')) {
		free(url);
		return -1;
	}
	ck->base_url = url;
	ck->host = xstrdup(p + 3);
	return 0;
}

static void check_config(struct check *ck, struct unit *u)
{
	const struct conf *c = ck->conf;
	char err[1024];

	say(u, SEV_OK, NULL, "config %s", ck->config_path);
	if (c->users_file) {
		if ((ck->users = users_load(c->users_file, err, sizeof(err))) == NULL) {
			printable(err);
			say(u, SEV_FAIL, NULL, "users file %s", err);
			ck->config_error = 1;
		} else
			say(u, SEV_OK, NULL, "users file %s (%zu user%s)", c->users_file,
			    users_count(ck->users), users_count(ck->users) == 1 ? "" : "s");
	}
	check_tls(ck, u);
	if (c->region == NULL)
		say(u, SEV_FAIL, xstrdup("set [ses] region, or AWS_REGION"), "SES region: not set");
	else if (endpoint_parse(ck) == -1)
		say(u, SEV_FAIL, xstrdup("set [ses] endpoint to https://HOST[:PORT]"),
		    "SES endpoint: \"%s\" is not a URL without a path", c->endpoint);
	else
		say(u, SEV_OK, NULL, "SES endpoint %s (region %s)", ck->base_url, c->region);
}

static void check_dns_setup(struct check *ck, struct unit *u)
{
	const char *from = getenv(DNS_ENV) && *getenv(DNS_ENV) ? DNS_ENV : RESOLV_CONF;
	char err[256];
	size_t i, n = 0;

	if (dnsr_init(&ck->dns, ck->base, err, sizeof(err)) == -1) {
		printable(err);
		say(u, SEV_FAIL,
		    xasprintf("list a nameserver in %s (or set %s=ADDRESS:PORT)", RESOLV_CONF,
		              DNS_ENV),
		    "DNS resolver: %s", err);
		snprintf(ck->dns_where, sizeof(ck->dns_where), "no resolver");
		return;
	}
	for (i = 0; i < ck->dns.nns; i++)
		n += (size_t)snprintf(ck->dns_where + n, sizeof(ck->dns_where) - n, "%s%s",
		                      i ? ", " : "", ck->dns.ns_text[i]);
	ck->dns_ready = 1;
	say(u, SEV_OK, NULL, "DNS resolver %s (%s)", ck->dns_where, from);
}

static void check_senders(struct check *ck, struct unit *u)
{
	if (ck->ndomains == 0)
		say(u, SEV_WARN,
		    xstrdup("list sender addresses or @domains in the users file, or set [queue] "
		            "bounce_from"),
		    "senders: none named in the configuration, so no identity to check");
	else
		say(u, SEV_OK, NULL, "senders: %zu domain%s, %zu address%s", ck->ndomains,
		    ck->ndomains == 1 ? "" : "s", ck->naddresses, ck->naddresses == 1 ? "" : "es");
}

static int timeout_from_env(void)
{
	const char *v = getenv(TIMEOUT_ENV);
	char *end;
	long n;

	if (v == NULL || *v == '\0')
		return CHECK_TIMEOUT_DEFAULT;
	errno = 0;
	n = strtol(v, &end, 10);
	if (errno || *end || n < 1 || n > 3600)
		return CHECK_TIMEOUT_DEFAULT;
	return (int)n;
}

static void target_free(struct target *t)
{
	struct spf_sub *s, *next;
	size_t i;

	dns_result_clear(&t->spf);
	dns_result_clear(&t->dmarc);
	dns_result_clear(&t->mx);
	dns_result_clear(&t->mf_mx);
	dns_result_clear(&t->mf_txt);
	for (i = 0; i < SES_API_DKIM_TOKENS_MAX; i++)
		dns_result_clear(&t->dkim[i]);
	for (s = t->spf_subs; s; s = next) {
		next = s->next;
		dns_result_clear(&s->res);
		free(s);
	}
	free(t->spf_unread);
	free(t->id_fix);
	free(t->id_error);
	free(t->name);
	free(t);
}

static void check_free(struct check *ck)
{
	struct target *t, *tn;
	struct rdomain *rd, *rn;
	struct unit *u, *un;

	for (t = ck->targets; t; t = tn) {
		tn = t->next;
		target_free(t);
	}
	for (rd = ck->rdomains; rd; rd = rn) {
		rn = rd->next;
		dns_result_clear(&rd->mx);
		free(rd->name);
		free(rd);
	}
	s3_free(ck->s3); /* before the credentials and HTTP client it uses */
	sqs_free(ck->sqs);
	free(ck->s3_key);
	for (u = ck->units; u; u = un) {
		un = u->next;
		evbuffer_free(u->out);
		free(u);
	}
	ses_creds_free(ck->creds);
	if (ck->http)
		ses_http_free(ck->http);
	if (ck->retry)
		event_free(ck->retry);
	if (ck->deadline)
		event_free(ck->deadline);
	if (ck->base)
		event_base_free(ck->base);
	users_free(ck->users);
	conf_free(ck->conf);
	free(ck->base_url);
	free(ck->host);
}

/* Everything the loop needs, then the questions that need no SES answer. */
static void check_start(struct check *ck)
{
	struct timeval tv = {ck->timeout, 0};
	struct target *t;

	ck->u_creds = unit_new(ck);
	ck->u_account = unit_new(ck);
	for (t = ck->targets; t; t = t->next) {
		t->unit = unit_new(ck);
		t->pending = 1; /* the identity */
	}
	if (ck->conf->inbound_bucket) {
		ck->u_s3 = unit_new(ck);
		if (ck->conf->inbound_queue_url)
			ck->u_sqs = unit_new(ck);
		ck->u_mx = unit_new(ck);
	}
	ck->http = ses_http_new(ck->base, ck->conf->ca_file, 2);
	ck->creds = ses_creds_new(ck->base, ck->http, ck->conf);
	if ((ck->retry = evtimer_new(ck->base, on_retry, ck)) == NULL ||
	    (ck->deadline = evtimer_new(ck->base, on_deadline, ck)) == NULL)
		fatalx("evtimer_new failed");
	evtimer_add(ck->deadline, &tv);
	for (t = ck->targets; t; t = t->next) {
		if (t->valid) {
			if (t->explicit_domain)
				target_start_dns(t);
			continue;
		}
		t->id_state = ID_FAILED;
		t->id_error = xstrdup("not a valid domain name");
		t->id_fix = xstrdup(ck->conf->inbound_bucket
		                        ? "correct it in the users file, [queue] bounce_from or "
		                          "[inbound] from_address"
		                        : "correct it in the users file or [queue] bounce_from");
		op_done(t);
	}
	if (ck->conf->inbound_bucket)
		inbound_start(ck);
	ses_creds_start(ck->creds, on_creds, ck);
}

int check_main(int argc, char **argv, const char *config_path)
{
	struct check ck;
	struct unit *cfg, *u;
	char err[1024];
	int i, rc;

	for (i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			printf("usage: sesrelay check [-c FILE]\n");
			return 0;
		}
		fprintf(stderr,
		        "sesrelay check: unexpected argument '%s'\n"
		        "usage: sesrelay check [-c FILE]\n",
		        argv[i]);
		return EX_USAGE_;
	}
	log_init("sesrelay", 0);
	log_set_level(LOG_LEVEL_ERROR); /* the verdict lines say it all */
	signal(SIGPIPE, SIG_IGN);
	memset(&ck, 0, sizeof(ck));
	ck.config_path = config_path;
	ck.units_tail = &ck.units;
	ck.timeout = timeout_from_env();
	if ((ck.conf = conf_load(config_path, err, sizeof(err))) == NULL) {
		printf("%-6sconfig %s\n", SEV_WORDS[SEV_FAIL], err);
		fflush(stdout);
		fprintf(stderr, "sesrelay: %s\n", err);
		return EX_CONFIG_;
	}
	ck.region = ck.conf->region ? ck.conf->region : "REGION";
	if ((ck.base = event_base_new()) == NULL)
		fatalx("event_base_new failed");

	cfg = unit_new(&ck);
	check_config(&ck, cfg);
	check_dns_setup(&ck, cfg);
	collect_targets(&ck);
	collect_receiving(&ck);
	check_senders(&ck, cfg);
	unit_done(cfg);

	check_start(&ck);
	ck.looping = 1;
	flush(&ck);
	event_base_dispatch(ck.base);
	ck.looping = 0;

	/* Normally everything is answered by now; the deadline cut the rest off. */
	ck.stopping = 1;
	if (ck.call) {
		ses_http_cancel(ck.call);
		ck.call = NULL;
	}
	ses_abort(&ck, "not finished");
	inbound_abort(&ck, "not finished");
	dnsr_cancel_all(&ck.dns, "not finished");
	for (u = ck.units; u; u = u->next)
		if (!u->done) {
			say(u, SEV_FAIL, NULL, "check: not finished");
			u->done = 1;
		}
	flush(&ck);
	printf("sesrelay check: %d ok, %d warn, %d FAIL\n", ck.counts[SEV_OK], ck.counts[SEV_WARN],
	       ck.counts[SEV_FAIL]);
	fflush(stdout);
	rc = ck.config_error ? EX_CONFIG_ : ck.counts[SEV_FAIL] ? 1 : 0;
	check_free(&ck);
	return rc;
}
