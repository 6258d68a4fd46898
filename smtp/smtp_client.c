/*
 * smtp_client.c - the "smtp" transport (see smtp_client.h).
 *
 * A session is one connection to SES and a state machine (enum sess_state,
 * enter_state(), and the STATES table of reply handlers and timeouts):
 *
 *   RESOLVING -> CONNECTING -> [TLS] -> GREETING -> EHLO -> [STARTTLS -> TLS
 *   -> EHLO] -> [AUTH] -> IDLE -> ENVELOPE -> DATA -> BODY -> DOT -> IDLE ...
 *   -> QUIT -> DEAD
 *
 * Names are resolved with evdns (never getaddrinfo(3) on the loop) and every
 * address is tried in turn with a non-blocking connect(2) of our own, so the
 * error is the real one ("Connection refused") and a name with an IPv6 and
 * an IPv4 address works whichever the server listens on.  The connected
 * socket then goes into a bufferevent: plain, or bufferevent_openssl for
 * implicit TLS; STARTTLS puts an openssl filter on top after the 220, once
 * the plaintext input is drained (STYLE 4).
 *
 * A delivery is a job.  send() gives it an idle session from the pool, or a
 * new one.  A job whose first command meets a pooled connection that the
 * server closed meanwhile (EOF, or 421 to RSET/MAIL: SES drops connections
 * idle ~10 s) moves once to a new connection.  Finished jobs wait in a queue
 * that one zero timer (tick) drains, one job per loop turn, calling done()
 * as its very last act: done() may send() again or free() the transport.
 * Dead sessions are freed by the same tick, never inside their callbacks.
 *
 * After a failed connection set-up no new connection is tried for 1 s,
 * doubling to 60 s: deliveries arriving meanwhile fail at once with the last
 * error, so a dead server costs neither a connection storm nor a pile-up.
 *
 * The message is streamed: about BODY_LOWAT of it is read ahead of what the
 * socket (or, under STARTTLS, the socket below the TLS filter) has taken.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "conf/conf.h"
#include "relay/log.h"
#include "relay/transport.h"
#include "relay/util.h"
#include "ses/ses_creds.h"
#include "ses/smtp_password.h"
#include "smtp/smtp_client.h"

#define DEFAULT_PORT      587
#define RESOLVE_TIMEOUT_S 30
#define CONNECT_TIMEOUT_S 15  /* per address */
#define REPLY_TIMEOUT_S   60  /* each reply; each TLS handshake */
#define DATA_TIMEOUT_S    600 /* sending the message; again for its final reply */
#define IDLE_CLOSE_S      8   /* SES closes connections idle ~10 s: we close first */
#define QUIT_TIMEOUT_S    5
#define MSGS_PER_CONN     100
#define BACKOFF_MIN_S     1
#define BACKOFF_MAX_S     60

#define BODY_CHUNK   (64 * 1024) /* message octets per pread */
#define BODY_LOWAT   (64 * 1024) /* read the next chunk once output is below this */
#define TLS_UNDER_HI (64 * 1024) /* STARTTLS: ciphertext queued under the filter */
#define READ_HIGH    (64 * 1024) /* input buffered before reading pauses */
#define REPLY_MAX    (SMTP_CLIENT_LINE_MAX * SMTP_CLIENT_LINES_MAX)

/* ========================================================================= */
/* Replies, outcome classes, EHLO keywords, dot-stuffing (pure)              */
/* ========================================================================= */

/* SMTP text goes to logs and bounces: printable ASCII only. */
static void sanitize(char *s)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c < 0x20 || c == 0x7f)
			*s = ' ';
		else if (c >= 0x80)
			*s = '?';
	}
}

/* An enhanced status code "C.SSS.DDD" (class digit = the reply's, 1-3 digit
 * parts) at p, followed by a space or the end: its length, else 0. */
static size_t enhanced_len(const char *p, size_t n, int code)
{
	size_t i = 2, k;
	int part;

	if (n < 5 || p[0] != '0' + code / 100 || (p[0] != '2' && p[0] != '4' && p[0] != '5') ||
	    p[1] != '.')
		return 0;
	for (part = 0; part < 2; part++) {
		for (k = 0; k < 3 && i < n && isdigit((unsigned char)p[i]); k++)
			i++;
		if (k == 0)
			return 0;
		if (part == 0) {
			if (i >= n || p[i] != '.')
				return 0;
			i++;
		}
	}
	return i == n || p[i] == ' ' ? i : 0;
}

/* Append one line's text, '\n' between lines; cut when full, never refused. */
static void reply_add_text(struct smtp_client_reply *r, const char *p, size_t n)
{
	size_t have = strlen(r->text), room, i;

	if (r->nlines > 1 && have + 1 < sizeof(r->text)) {
		r->text[have++] = '\n';
		r->text[have] = '\0';
	}
	room = sizeof(r->text) - 1 - have;
	if (n > room)
		n = room;
	for (i = 0; i < n; i++)
		r->text[have + i] = p[i];
	r->text[have + n] = '\0';
	/* '\n' separates lines: sanitize only what this line added */
	sanitize(r->text + have);
}

int smtp_client_parse_reply(const char *buf, size_t len, struct smtp_client_reply *r,
                            size_t *consumed, const char **err)
{
	const char *dummy;
	size_t pos = 0;

	if (err == NULL)
		err = &dummy;
	*err = NULL;
	memset(r, 0, sizeof(*r));
	for (;;) {
		size_t avail = len - pos;
		size_t scan = avail < SMTP_CLIENT_LINE_MAX ? avail : SMTP_CLIENT_LINE_MAX;
		const char *line = buf + pos, *nl = memchr(line, '\n', scan);
		size_t n, e;
		int code, more;

		if (nl == NULL) {
			if (avail >= SMTP_CLIENT_LINE_MAX) {
				*err = "reply line too long";
				return -1;
			}
			return 0;
		}
		n = (size_t)(nl - line);
		pos += n + 1;
		if (n > 0 && line[n - 1] == '\r')
			n--;
		if (n < 3 || line[0] < '1' || line[0] > '5' || !isdigit((unsigned char)line[1]) ||
		    !isdigit((unsigned char)line[2]) ||
		    (n > 3 && line[3] != ' ' && line[3] != '-')) {
			*err = "reply line is not \"DDD text\"";
			return -1;
		}
		code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
		if (r->nlines > 0 && code != r->code) {
			*err = "reply lines with different codes";
			return -1;
		}
		if (++r->nlines > SMTP_CLIENT_LINES_MAX) {
			*err = "reply with too many lines";
			return -1;
		}
		r->code = code;
		more = n > 3 && line[3] == '-';
		line += n > 3 ? 4 : 3;
		n -= n > 3 ? 4 : 3;
		if ((e = enhanced_len(line, n, code)) > 0) {
			if (r->nlines == 1)
				memcpy(r->enhanced, line, e);
			line += e;
			n -= e;
			while (n > 0 && *line == ' ') {
				line++;
				n--;
			}
		}
		reply_add_text(r, line, n);
		if (!more) {
			*consumed = pos;
			return 1;
		}
	}
}

void smtp_client_reply_format(const struct smtp_client_reply *r, char *out, size_t size)
{
	char *p;

	if (size == 0)
		return;
	snprintf(out, size, "%03d%s%s%s%s", r->code, r->enhanced[0] ? " " : "", r->enhanced,
	         r->text[0] ? " " : "", r->text);
	for (p = out; *p; p++)
		if (*p == '\n')
			*p = ' ';
}

int smtp_client_message_id(const struct smtp_client_reply *r, char *out, size_t size)
{
	const char *p = r->text, *id;
	size_t n = 0;

	while (*p == ' ')
		p++;
	if (strncasecmp(p, "ok", 2) != 0 || p[2] != ' ')
		return -1;
	p += 3;
	while (*p == ' ')
		p++;
	if (*p == '<')
		p++;
	id = p;
	while (id[n] && (isalnum((unsigned char)id[n]) || strchr("-._@", id[n])))
		n++;
	if (n == 0 || (id[n] && id[n] != ' ' && id[n] != '>' && id[n] != '\n') || n >= size)
		return -1;
	memcpy(out, id, n);
	out[n] = '\0';
	return 0;
}

enum delivery_status smtp_client_classify(enum smtp_client_stage stage, int code, const char *text)
{
	if (text == NULL)
		text = "";
	if (code >= 200 && code < 400)
		return DELIVERY_SENT;
	if (strcasestr(text, "throttling") || strcasestr(text, "rate exceeded") ||
	    strcasestr(text, "quota exceeded")) {
		if (strcasestr(text, "daily") || strcasestr(text, "quota"))
			return DELIVERY_QUOTA;
		return DELIVERY_THROTTLED;
	}
	if (code == 530 || code == 534 || code == 535 || code == 538 ||
	    strcasestr(text, "access denied") || strcasestr(text, "sending paused") ||
	    strcasestr(text, "sending suspended") || strcasestr(text, "account is paused"))
		return DELIVERY_OPERATOR;
	if (code >= 500 && (stage == SMTP_CLIENT_AUTH || stage == SMTP_CLIENT_STARTTLS))
		return DELIVERY_OPERATOR;
	if (code < 500)
		return DELIVERY_DEFER;
	if (stage == SMTP_CLIENT_GREETING || stage == SMTP_CLIENT_EHLO || stage == SMTP_CLIENT_RSET)
		return DELIVERY_DEFER;
	if (code == 500 || code == 502 || code == 503 || code == 504)
		return DELIVERY_DEFER;
	return DELIVERY_BOUNCE;
}

static int word_is(const char *w, size_t n, const char *kw)
{
	return strlen(kw) == n && strncasecmp(w, kw, n) == 0;
}

static void ehlo_auth_mechs(struct smtp_client_ehlo *out, const char *p, const char *end)
{
	out->auth = 1;
	while (p < end) {
		const char *w;

		while (p < end && (*p == ' ' || *p == '='))
			p++;
		w = p;
		while (p < end && *p != ' ')
			p++;
		if (word_is(w, (size_t)(p - w), "PLAIN"))
			out->auth_plain = 1;
		else if (word_is(w, (size_t)(p - w), "LOGIN"))
			out->auth_login = 1;
	}
}

void smtp_client_parse_ehlo(const struct smtp_client_reply *r, struct smtp_client_ehlo *out)
{
	const char *line = r->text;
	size_t i;

	memset(out, 0, sizeof(*out));
	for (i = 0; *line; i++) {
		const char *end = strchr(line, '\n'), *p = line, *kw;
		size_t kn;

		if (end == NULL)
			end = line + strlen(line);
		while (p < end && *p == ' ')
			p++;
		kw = p;
		while (p < end && *p != ' ' && *p != '=')
			p++;
		kn = (size_t)(p - kw);
		if (i == 0) {
			/* the server's name and greeting */
		} else if (word_is(kw, kn, "SIZE")) {
			char *e;
			unsigned long long v;

			out->has_size = 1;
			while (p < end && *p == ' ')
				p++;
			errno = 0;
			v = p < end && isdigit((unsigned char)*p) ? strtoull(p, &e, 10) : 0;
			out->size = errno ? 0 : (uint64_t)v;
		} else if (word_is(kw, kn, "PIPELINING"))
			out->pipelining = 1;
		else if (word_is(kw, kn, "8BITMIME"))
			out->eightbitmime = 1;
		else if (word_is(kw, kn, "STARTTLS"))
			out->starttls = 1;
		else if (word_is(kw, kn, "ENHANCEDSTATUSCODES"))
			out->enhancedstatuscodes = 1;
		else if (word_is(kw, kn, "AUTH"))
			ehlo_auth_mechs(out, p, end);
		line = *end ? end + 1 : end;
	}
}

void smtp_client_dotstuff_init(struct smtp_client_dotstuff *st)
{
	st->bol = 1;
	st->cr = 0;
}

size_t smtp_client_dotstuff(struct smtp_client_dotstuff *st, const char *in, size_t len, char *out)
{
	size_t i, o = 0;

	for (i = 0; i < len; i++) {
		char c = in[i];

		if (st->cr) {
			/* the CR before this octet ends a line, whatever follows */
			out[o++] = '\r';
			out[o++] = '\n';
			st->cr = 0;
			st->bol = 1;
			if (c == '\n')
				continue;
		}
		if (c == '\r') {
			st->cr = 1;
			continue;
		}
		if (c == '\n') { /* a bare LF: never passed on as such */
			out[o++] = '\r';
			out[o++] = '\n';
			st->bol = 1;
			continue;
		}
		if (st->bol && c == '.')
			out[o++] = '.';
		st->bol = 0;
		out[o++] = c;
	}
	return o;
}

size_t smtp_client_dotstuff_end(struct smtp_client_dotstuff *st, char *out)
{
	size_t o = 0;

	if (st->cr || !st->bol) {
		out[o++] = '\r';
		out[o++] = '\n';
	}
	memcpy(out + o, ".\r\n", 3);
	smtp_client_dotstuff_init(st);
	return o + 3;
}

/* ========================================================================= */
/* The transport                                                             */
/* ========================================================================= */

enum sess_state {
	S_INIT,       /* created */
	S_RESOLVING,  /* evdns */
	S_CONNECTING, /* connect(2) to one address */
	S_TLS,        /* TLS handshake (implicit, or after STARTTLS) */
	S_GREETING,   /* waiting for 220 */
	S_EHLO,
	S_STARTTLS,
	S_AUTH,
	S_IDLE,     /* ready, in the pool */
	S_ENVELOPE, /* RSET/MAIL/RCPT replies */
	S_DATA,     /* DATA sent, waiting for 354 */
	S_BODY,     /* streaming the message */
	S_DOT,      /* waiting for the final reply */
	S_QUIT,
	S_DEAD, /* waiting for the tick to free it */
};

enum auth_step { AUTH_PLAIN_SENT, AUTH_LOGIN_SENT, AUTH_LOGIN_USER_SENT, AUTH_LOGIN_PASS_SENT };

enum rcpt_state { R_PENDING, R_ACCEPTED, R_DONE };

struct session;
struct smtp_client;

/* One delivery. */
struct job {
	struct job *next, *prev; /* cl->jobs: every job, for free() */
	struct job *dnext;       /* cl->done_head: finished, done() not yet run */
	struct smtp_client *cl;
	struct delivery *d;
	struct session *s;
	int finished;
	int retried; /* moved to a new connection once already */

	/* the transaction on s */
	enum rcpt_state r[DELIVERY_MAX_RCPTS];
	size_t send_idx[DELIVERY_MAX_RCPTS]; /* recipients that get an RCPT */
	size_t nsend;
	size_t naccepted;
	int rset_first; /* the envelope starts with RSET */
	size_t ncmds;   /* RSET? + MAIL + RCPTs */
	size_t sent;    /* commands written */
	size_t replied; /* replies read */
	int mail_ok;    /* MAIL (and RSET) accepted */
	int failed;     /* RSET or MAIL refused: the rest are skipped */
	int data_sent;  /* DATA went out with the envelope (PIPELINING) */
	int aborting;   /* the transaction failed: its DATA reply is only drained */
	enum delivery_status fail_st;
	char fail_text[DELIVERY_TEXT_MAX];

	/* the body */
	size_t hdr_pos;
	uint64_t data_pos;
	struct smtp_client_dotstuff ds;
};

/* A name lookup; outlives its session when cancelled (evdns calls back later). */
struct resolve {
	struct smtp_client_dns *dns;
	struct session *s; /* NULL once cancelled */
	struct evdns_getaddrinfo_request *req;
};

/* The evdns base, freed once no lookup can call back into it. */
struct smtp_client_dns {
	struct evdns_base *base;
	int pending;
	int orphaned; /* the transport is gone: free when pending drops to 0 */
};

struct session {
	struct session *next, *prev; /* cl->sessions, or cl->dead */
	struct smtp_client *cl;
	unsigned id;
	enum sess_state state;
	struct bufferevent *bev;
	struct event *timer;
	struct event *conn_ev; /* connect(2) in progress on fd */
	evutil_socket_t fd;
	struct resolve *resolve;
	struct evutil_addrinfo *ai, *ai_next;
	char peer[INET6_ADDRSTRLEN + 2]; /* the address connected to */
	char conn_err[160];              /* the last address's failure */
	int tls;                         /* TLS is on */
	int ready_once;                  /* reached IDLE: set-up worked */
	int reused;                      /* the job came from the pool */
	int dirty;                       /* a transaction failed: RSET first */
	unsigned nmsgs;
	double started; /* monotonic, for the backoff */
	enum auth_step auth;
	struct smtp_client_ehlo ehlo;
	struct job *job;
};

struct smtp_client {
	struct transport t;
	struct event_base *base;
	struct smtp_client_dns *dns;
	SSL_CTX *ssl_ctx;
	struct ses_creds *creds;
	char *name, *host, *region, *helo, *username, *password;
	char *hdr; /* "X-SES-CONFIGURATION-SET: name\r\n" or NULL */
	size_t hdr_len;
	int port;
	enum conf_tls tls;
	int host_is_ip;
	size_t concurrency;

	struct session *sessions; /* live */
	struct session *dead;
	unsigned next_id;
	struct job *jobs;
	size_t njobs;
	struct job *done_head, *done_tail;
	struct event *tick;

	uint64_t max_size; /* SIZE from the last EHLO; 0 unknown */
	double backoff_until;
	double backoff_set_at;
	int backoff_s;
	enum delivery_status backoff_st;
	char backoff_text[DELIVERY_TEXT_MAX];
	int temp_creds_logged;

	char *inbuf, *outbuf; /* one chunk and its encoding, shared: all on one thread */
};

static const struct timeval TV_NOW = {0, 0};

typedef void (*reply_fn)(struct session *s, const struct smtp_client_reply *r);

static void on_greeting(struct session *s, const struct smtp_client_reply *r);
static void on_ehlo(struct session *s, const struct smtp_client_reply *r);
static void on_starttls(struct session *s, const struct smtp_client_reply *r);
static void on_auth(struct session *s, const struct smtp_client_reply *r);
static void on_idle(struct session *s, const struct smtp_client_reply *r);
static void on_envelope(struct session *s, const struct smtp_client_reply *r);
static void on_data(struct session *s, const struct smtp_client_reply *r);
static void on_body(struct session *s, const struct smtp_client_reply *r);
static void on_dot(struct session *s, const struct smtp_client_reply *r);
static void on_quit(struct session *s, const struct smtp_client_reply *r);

static const struct {
	const char *name;
	const char *waiting_for; /* for timeout messages */
	int timeout;             /* seconds, armed on entry; 0: none */
	reply_fn on_reply;       /* NULL: no reply is expected here */
} STATES[] = {
    [S_INIT] = {"INIT", "nothing", 0, NULL},
    [S_RESOLVING] = {"RESOLVING", "the host name to resolve", RESOLVE_TIMEOUT_S, NULL},
    [S_CONNECTING] = {"CONNECTING", "the connection", CONNECT_TIMEOUT_S, NULL},
    [S_TLS] = {"TLS", "the TLS handshake", REPLY_TIMEOUT_S, NULL},
    [S_GREETING] = {"GREETING", "the greeting", REPLY_TIMEOUT_S, on_greeting},
    [S_EHLO] = {"EHLO", "the EHLO reply", REPLY_TIMEOUT_S, on_ehlo},
    [S_STARTTLS] = {"STARTTLS", "the STARTTLS reply", REPLY_TIMEOUT_S, on_starttls},
    [S_AUTH] = {"AUTH", "the AUTH reply", REPLY_TIMEOUT_S, on_auth},
    [S_IDLE] = {"IDLE", "nothing", IDLE_CLOSE_S, on_idle},
    [S_ENVELOPE] = {"ENVELOPE", "the MAIL/RCPT replies", REPLY_TIMEOUT_S, on_envelope},
    [S_DATA] = {"DATA", "the DATA reply", REPLY_TIMEOUT_S, on_data},
    [S_BODY] = {"BODY", "the server to take the message", DATA_TIMEOUT_S, on_body},
    [S_DOT] = {"DOT", "the reply to the message", DATA_TIMEOUT_S, on_dot},
    [S_QUIT] = {"QUIT", "the QUIT reply", QUIT_TIMEOUT_S, on_quit},
    [S_DEAD] = {"DEAD", "nothing", 0, NULL},
};

static void session_kill(struct session *s);
static struct session *session_new(struct smtp_client *cl, struct job *j);
static void txn_start(struct session *s);
static void schedule_tick(struct smtp_client *cl);

static void copy_capped(char *dst, size_t size, const char *src)
{
	size_t n = strlen(src);

	if (n >= size)
		n = size - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
	sanitize(dst);
}

static void arm(struct session *s, int seconds)
{
	struct timeval tv = {seconds, 0};

	event_del(s->timer);
	if (seconds > 0)
		event_add(s->timer, &tv);
}

static void enter_state(struct session *s, enum sess_state st)
{
	log_debug("%s: connection %u: %s -> %s", s->cl->name, s->id, STATES[s->state].name,
	          STATES[st].name);
	s->state = st;
	arm(s, STATES[st].timeout);
}

static const char *job_id(const struct session *s)
{
	return s->job ? s->job->d->id : "-";
}

/* --- jobs --------------------------------------------------------------------- */

static void rcpt_set(struct job *j, size_t i, enum delivery_status st, const char *text)
{
	j->d->status[i] = st;
	copy_capped(j->d->text[i], sizeof(j->d->text[i]), text);
	j->r[i] = R_DONE;
}

/* Queue the job for done(): every recipient without an outcome gets st/text. */
static void job_finish(struct job *j, enum delivery_status st, const char *text)
{
	struct smtp_client *cl = j->cl;
	size_t i;

	ASSERT(!j->finished);
	for (i = 0; i < j->d->nrcpts; i++)
		if (j->r[i] != R_DONE)
			rcpt_set(j, i, st, text);
	if (j->s) {
		j->s->job = NULL;
		j->s = NULL;
	}
	j->finished = 1;
	if (cl->done_tail)
		cl->done_tail->dnext = j;
	else
		cl->done_head = j;
	cl->done_tail = j;
	schedule_tick(cl);
}

static void job_finishf(struct job *j, enum delivery_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void job_finishf(struct job *j, enum delivery_status st, const char *fmt, ...)
{
	char text[DELIVERY_TEXT_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	job_finish(j, st, text);
}

/* Forget j without telling anyone (free(), or just before done()). */
static void job_free(struct job *j)
{
	struct smtp_client *cl = j->cl;

	if (j->prev)
		j->prev->next = j->next;
	else
		cl->jobs = j->next;
	if (j->next)
		j->next->prev = j->prev;
	cl->njobs--;
	if (j->s)
		j->s->job = NULL;
	j->d->priv = NULL;
	free(j);
}

/* Reap dead sessions, then run one done(): the last thing this does. */
static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	struct smtp_client *cl = arg;
	struct session *s;
	struct delivery *d;
	struct job *j;

	while ((s = cl->dead) != NULL) {
		cl->dead = s->next;
		if (s->bev)
			bufferevent_free(s->bev);
		event_free(s->timer);
		free(s);
	}
	if ((j = cl->done_head) == NULL)
		return;
	cl->done_head = j->dnext;
	if (cl->done_head == NULL)
		cl->done_tail = NULL;
	else
		schedule_tick(cl);
	d = j->d;
	job_free(j);
	d->done(d); /* may send() or free the transport: nothing after this */
}

static void schedule_tick(struct smtp_client *cl)
{
	if (!event_pending(cl->tick, EV_TIMEOUT, NULL))
		event_add(cl->tick, &TV_NOW);
}

/* --- connection set-up failures and backoff ---------------------------------------- */

/*
 * A connection set-up failed.  Attempts that started before the current
 * backoff was set (parallel ones failing together) do not make it longer,
 * so one outage seen by 16 connections counts once.
 */
static void backoff_note(struct smtp_client *cl, const struct session *s, enum delivery_status st,
                         const char *text)
{
	cl->backoff_st = st;
	copy_capped(cl->backoff_text, sizeof(cl->backoff_text), text);
	if (cl->backoff_s && s->started < cl->backoff_set_at)
		return;
	cl->backoff_s = cl->backoff_s == 0 ? BACKOFF_MIN_S : cl->backoff_s * 2;
	if (cl->backoff_s > BACKOFF_MAX_S)
		cl->backoff_s = BACKOFF_MAX_S;
	cl->backoff_set_at = util_monotime();
	cl->backoff_until = cl->backoff_set_at + cl->backoff_s;
	log_warnx("%s: %s; no new connection for %d s", cl->name, cl->backoff_text, cl->backoff_s);
}

static void backoff_reset(struct smtp_client *cl)
{
	if (cl->backoff_s)
		log_info("%s: connected again", cl->name);
	cl->backoff_s = 0;
	cl->backoff_until = 0;
}

/* --- sessions ------------------------------------------------------------------- */

static void list_remove(struct session **head, struct session *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else
		*head = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->next = s->prev = NULL;
}

static void list_push(struct session **head, struct session *s)
{
	s->prev = NULL;
	s->next = *head;
	if (*head)
		(*head)->prev = s;
	*head = s;
}

static void resolve_cancel(struct session *s)
{
	struct resolve *rs = s->resolve;

	if (rs == NULL)
		return;
	s->resolve = NULL;
	rs->s = NULL;
	if (rs->req)
		evdns_getaddrinfo_cancel(rs->req); /* the callback frees rs, later or now */
}

static void connect_abort(struct session *s)
{
	if (s->conn_ev) {
		event_free(s->conn_ev);
		s->conn_ev = NULL;
	}
	if (s->fd != -1) {
		evutil_closesocket(s->fd);
		s->fd = -1;
	}
}

/* Stop everything; the tick frees it.  The job must be gone already. */
static void session_kill(struct session *s)
{
	struct smtp_client *cl = s->cl;

	if (s->state == S_DEAD)
		return;
	ASSERT(s->job == NULL);
	enter_state(s, S_DEAD);
	resolve_cancel(s);
	connect_abort(s);
	if (s->ai) {
		evutil_freeaddrinfo(s->ai);
		s->ai = s->ai_next = NULL;
	}
	if (s->bev) {
		bufferevent_disable(s->bev, EV_READ | EV_WRITE);
		bufferevent_setcb(s->bev, NULL, NULL, NULL, NULL);
	}
	list_remove(&cl->sessions, s);
	list_push(&cl->dead, s);
	schedule_tick(cl);
}

/*
 * The session cannot go on.  Its job, if any, ends with st/text for every
 * recipient not yet decided; a failure before the session was ever ready
 * starts the connect backoff.
 */
static void session_fail(struct session *s, enum delivery_status st, const char *text)
{
	struct smtp_client *cl = s->cl;

	log_debug("%s: connection %u: %s: %s", cl->name, s->id, job_id(s), text);
	if (!s->ready_once)
		backoff_note(cl, s, st, text);
	if (s->job)
		job_finish(s->job, st, text);
	session_kill(s);
}

static void session_failf(struct session *s, enum delivery_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void session_failf(struct session *s, enum delivery_status st, const char *fmt, ...)
{
	char text[DELIVERY_TEXT_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	session_fail(s, st, text);
}

/* A reply that ends the session's set-up or its transaction badly. */
static void session_fail_reply(struct session *s, enum smtp_client_stage stage, const char *what,
                               const struct smtp_client_reply *r)
{
	char line[DELIVERY_TEXT_MAX];

	smtp_client_reply_format(r, line, sizeof(line));
	session_failf(s, smtp_client_classify(stage, r->code, r->text), "%s%s%s", what,
	              *what ? ": " : "", line);
}

static void send_line(struct session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void send_line(struct session *s, const char *fmt, ...)
{
	struct evbuffer *out = bufferevent_get_output(s->bev);
	va_list ap;

	va_start(ap, fmt);
	if (log_level_enabled(LOG_LEVEL_DEBUG)) {
		char line[600];
		va_list aq;

		va_copy(aq, ap);
		vsnprintf(line, sizeof(line), fmt, aq);
		va_end(aq);
		log_debug("%s: connection %u: %s: > %s", s->cl->name, s->id, job_id(s), line);
	}
	evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	evbuffer_add(out, "\r\n", 2);
}

/* A secret: never logged, wiped from our memory once queued. */
static void send_secret_line(struct session *s, const char *prefix, char *secret)
{
	struct evbuffer *out = bufferevent_get_output(s->bev);

	log_debug("%s: connection %u: > %s<secret>", s->cl->name, s->id, prefix);
	evbuffer_add(out, prefix, strlen(prefix));
	evbuffer_add(out, secret, strlen(secret));
	evbuffer_add(out, "\r\n", 2);
	OPENSSL_cleanse(secret, strlen(secret));
}

static void session_quit(struct session *s)
{
	send_line(s, "QUIT");
	enter_state(s, S_QUIT);
}

/* The transaction is over (its job finished): back to the pool, or close. */
static void session_txn_end(struct session *s)
{
	ASSERT(s->job == NULL);
	s->nmsgs++;
	if (s->nmsgs >= MSGS_PER_CONN)
		session_quit(s);
	else
		enter_state(s, S_IDLE);
}

/* --- connecting --------------------------------------------------------------- */

static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);
static void on_timer(evutil_socket_t fd, short what, void *arg);
static void connect_next(struct session *s);

static SSL *tls_new(struct session *s)
{
	struct smtp_client *cl = s->cl;
	SSL *ssl = SSL_new(cl->ssl_ctx);

	if (ssl == NULL)
		fatalx("SSL_new failed");
	if (cl->host_is_ip) {
		if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), cl->host) != 1)
			fatalx("X509_VERIFY_PARAM_set1_ip_asc failed");
	} else {
		SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		if (SSL_set1_host(ssl, cl->host) != 1 ||
		    SSL_set_tlsext_host_name(ssl, cl->host) != 1)
			fatalx("SSL_set1_host failed");
	}
	return ssl;
}

static void bev_setup(struct session *s)
{
	bufferevent_setcb(s->bev, on_read, on_write, on_event, s);
	bufferevent_setwatermark(s->bev, EV_READ, 0, READ_HIGH);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

/* TCP is up on s->fd: wrap it, then TLS (implicit) or the greeting. */
static void connected(struct session *s)
{
	struct smtp_client *cl = s->cl;
	evutil_socket_t fd = s->fd;

	s->fd = -1;
	if (s->conn_ev) {
		event_free(s->conn_ev);
		s->conn_ev = NULL;
	}
	log_debug("%s: connection %u: connected to %s port %d", cl->name, s->id, s->peer, cl->port);
	if (cl->tls == CONF_TLS_IMPLICIT) {
		s->bev = bufferevent_openssl_socket_new(
		    cl->base, fd, tls_new(s), BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
		if (s->bev == NULL)
			fatalx("bufferevent_openssl_socket_new failed");
		bufferevent_openssl_set_allow_dirty_shutdown(s->bev, 1);
		bev_setup(s);
		enter_state(s, S_TLS);
		return;
	}
	if ((s->bev = bufferevent_socket_new(cl->base, fd, BEV_OPT_CLOSE_ON_FREE)) == NULL)
		fatalx("bufferevent_socket_new failed");
	bev_setup(s);
	enter_state(s, S_GREETING);
}

static void on_connect(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;
	int err = 0;
	socklen_t len = sizeof(err);

	if (what & EV_TIMEOUT)
		err = ETIMEDOUT;
	else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
		err = errno;
	if (err == 0) {
		connected(s);
		return;
	}
	snprintf(s->conn_err, sizeof(s->conn_err), "%s", strerror(err));
	connect_abort(s);
	connect_next(s);
}

/* Try the next address; when none is left, fail with the last error. */
static void connect_next(struct session *s)
{
	struct smtp_client *cl = s->cl;

	while (s->ai_next) {
		struct evutil_addrinfo *ai = s->ai_next;
		struct timeval tv = {CONNECT_TIMEOUT_S, 0};
		const void *addr;

		s->ai_next = ai->ai_next;
		addr = ai->ai_family == AF_INET6
		           ? (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr
		           : (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr;
		if (inet_ntop(ai->ai_family, addr, s->peer, sizeof(s->peer)) == NULL)
			snprintf(s->peer, sizeof(s->peer), "?");
		s->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (s->fd == -1) {
			snprintf(s->conn_err, sizeof(s->conn_err), "socket: %s", strerror(errno));
			continue;
		}
		if (connect(s->fd, ai->ai_addr, ai->ai_addrlen) == 0) {
			connected(s);
			return;
		}
		if (errno != EINPROGRESS) {
			snprintf(s->conn_err, sizeof(s->conn_err), "%s", strerror(errno));
			connect_abort(s);
			continue;
		}
		if ((s->conn_ev = event_new(cl->base, s->fd, EV_WRITE, on_connect, s)) == NULL)
			fatalx("event_new failed");
		enter_state(s, S_CONNECTING);
		event_del(s->timer); /* the connect event carries its own timeout */
		event_add(s->conn_ev, &tv);
		return;
	}
	session_failf(s, DELIVERY_DEFER, "cannot connect to %s[%s]:%d: %s", cl->host, s->peer,
	              cl->port, s->conn_err[0] ? s->conn_err : "no address");
}

static void on_resolved(int result, struct evutil_addrinfo *ai, void *arg)
{
	struct resolve *rs = arg;
	struct smtp_client_dns *dns = rs->dns;
	struct session *s = rs->s;

	dns->pending--;
	free(rs);
	if (s == NULL) { /* cancelled: the session (maybe the transport) is gone */
		if (ai)
			evutil_freeaddrinfo(ai);
		if (dns->orphaned && dns->pending == 0) {
			evdns_base_free(dns->base, 0);
			free(dns);
		}
		return;
	}
	s->resolve = NULL;
	if (result != 0 || ai == NULL) {
		if (ai)
			evutil_freeaddrinfo(ai);
		session_failf(s, DELIVERY_DEFER, "cannot resolve %s: %s", s->cl->host,
		              evutil_gai_strerror(result));
		return;
	}
	s->ai = s->ai_next = ai;
	connect_next(s);
}

static void session_resolve(struct session *s)
{
	struct smtp_client *cl = s->cl;
	struct evutil_addrinfo hints;
	struct evdns_getaddrinfo_request *req;
	struct resolve *rs = xcalloc(1, sizeof(*rs));
	char port[8];

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_protocol = IPPROTO_TCP;
	snprintf(port, sizeof(port), "%d", cl->port);
	rs->dns = cl->dns;
	rs->s = s;
	s->resolve = rs;
	cl->dns->pending++;
	enter_state(s, S_RESOLVING);
	/* may call back at once (numeric, /etc/hosts): rs is then freed */
	req = evdns_getaddrinfo(cl->dns->base, cl->host, port, &hints, on_resolved, rs);
	if (req != NULL)
		rs->req = req;
}

static struct session *session_new(struct smtp_client *cl, struct job *j)
{
	struct session *s = xcalloc(1, sizeof(*s));

	s->cl = cl;
	s->id = ++cl->next_id;
	s->fd = -1;
	s->started = util_monotime();
	s->state = S_INIT;
	if ((s->timer = evtimer_new(cl->base, on_timer, s)) == NULL)
		fatalx("evtimer_new failed");
	list_push(&cl->sessions, s);
	if (j) {
		s->job = j;
		j->s = s;
	}
	log_debug("%s: connection %u: new, for %s", cl->name, s->id, job_id(s));
	return s;
}

/* --- greeting, EHLO, STARTTLS, AUTH ----------------------------------------------- */

static void send_ehlo(struct session *s)
{
	memset(&s->ehlo, 0, sizeof(s->ehlo));
	send_line(s, "EHLO %s", s->cl->helo);
	enter_state(s, S_EHLO);
}

static void on_greeting(struct session *s, const struct smtp_client_reply *r)
{
	if (r->code != 220) {
		session_fail_reply(s, SMTP_CLIENT_GREETING, "refused at the greeting", r);
		return;
	}
	send_ehlo(s);
}

static void session_ready(struct session *s)
{
	struct smtp_client *cl = s->cl;

	if (!s->ready_once) {
		s->ready_once = 1;
		backoff_reset(cl);
		log_debug("%s: connection %u: ready (%s%s%s)", cl->name, s->id,
		          s->tls ? "TLS" : "no TLS", s->ehlo.pipelining ? ", PIPELINING" : "",
		          s->ehlo.has_size ? ", SIZE" : "");
	}
	if (s->ehlo.has_size && s->ehlo.size > 0)
		cl->max_size = s->ehlo.size;
	if (s->job)
		txn_start(s);
	else
		enter_state(s, S_IDLE);
}

/*
 * The AUTH user and password: configured, or the access key id and the
 * password derived from the secret key.  0, or -1 with st/text.
 */
static int auth_credentials(struct smtp_client *cl, char *user, size_t usize, char *pass,
                            size_t psize, enum delivery_status *st, char *text, size_t tsize)
{
	const struct sigv4_credentials *cr = NULL;

	if (cl->username == NULL || cl->password == NULL) {
		if ((cr = ses_creds_get(cl->creds)) == NULL) {
			*st = DELIVERY_DEFER;
			snprintf(text, tsize,
			         "no AWS credentials available yet (for the SMTP login)");
			return -1;
		}
		if (cl->password == NULL && ses_creds_temporary(cl->creds)) {
			*st = DELIVERY_OPERATOR;
			snprintf(text, tsize,
			         "the AWS credentials (from %s) are temporary: SES refuses SMTP "
			         "passwords derived from them; use a long-term IAM user's "
			         "access_key_id/secret_access_key, or set smtp_username and "
			         "smtp_password",
			         ses_creds_source(cl->creds));
			if (!cl->temp_creds_logged)
				log_error("%s: %s", cl->name, text);
			cl->temp_creds_logged = 1;
			return -1;
		}
	}
	if (user) {
		const char *u = cl->username ? cl->username : cr->access_key_id;
		if (bsnprintf(user, usize, "%s", u ? u : "") == -1 || *user == '\0') {
			*st = DELIVERY_OPERATOR;
			snprintf(text, tsize, "no usable SMTP user name");
			return -1;
		}
	}
	if (pass) {
		if (cl->password) {
			if (bsnprintf(pass, psize, "%s", cl->password) == -1) {
				*st = DELIVERY_OPERATOR;
				snprintf(text, tsize, "smtp_password is too long");
				return -1;
			}
		} else if (cl->region == NULL ||
		           smtp_password_derive(cr->secret_access_key, cl->region, pass, psize) ==
		               -1) {
			*st = DELIVERY_OPERATOR;
			snprintf(
			    text, tsize,
			    "cannot derive the SMTP password (region \"%s\"): set [ses] region, "
			    "or smtp_password",
			    cl->region ? cl->region : "");
			return -1;
		}
	}
	return 0;
}

/* base64 of s[0..n) into out (EVP_EncodeBlock's 4/3 + 1). */
static void b64(const char *s, size_t n, char *out)
{
	EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)s, (int)n);
}

#define AUTH_FIELD_MAX 256

static void auth_begin(struct session *s)
{
	struct smtp_client *cl = s->cl;
	char user[AUTH_FIELD_MAX], pass[AUTH_FIELD_MAX], text[DELIVERY_TEXT_MAX];
	char raw[2 * AUTH_FIELD_MAX + 2], enc[(2 * AUTH_FIELD_MAX + 2) / 3 * 4 + 8];
	enum delivery_status st;
	size_t ul, pl;

	if (!s->ehlo.auth) {
		log_debug("%s: connection %u: the server offers no AUTH: going on without",
		          cl->name, s->id);
		session_ready(s);
		return;
	}
	if (!s->ehlo.auth_plain && !s->ehlo.auth_login) {
		session_fail(s, DELIVERY_OPERATOR,
		             "the server offers neither AUTH PLAIN nor LOGIN");
		return;
	}
	if (!s->ehlo.auth_plain) {
		send_line(s, "AUTH LOGIN");
		s->auth = AUTH_LOGIN_SENT;
		enter_state(s, S_AUTH);
		return;
	}
	if (auth_credentials(cl, user, sizeof(user), pass, sizeof(pass), &st, text, sizeof(text)) ==
	    -1) {
		session_fail(s, st, text);
		return;
	}
	/* RFC 4616: authzid NUL authcid NUL passwd */
	ul = strlen(user);
	pl = strlen(pass);
	raw[0] = '\0';
	memcpy(raw + 1, user, ul);
	raw[1 + ul] = '\0';
	memcpy(raw + 2 + ul, pass, pl);
	b64(raw, 2 + ul + pl, enc);
	OPENSSL_cleanse(raw, sizeof(raw));
	OPENSSL_cleanse(pass, sizeof(pass));
	send_secret_line(s, "AUTH PLAIN ", enc);
	s->auth = AUTH_PLAIN_SENT;
	enter_state(s, S_AUTH);
}

/* AUTH LOGIN: the user name, then the password, each base64 after a 334. */
static void auth_login_step(struct session *s, int password)
{
	char field[AUTH_FIELD_MAX], enc[AUTH_FIELD_MAX / 3 * 4 + 8], text[DELIVERY_TEXT_MAX];
	enum delivery_status st;

	if (auth_credentials(s->cl, password ? NULL : field, sizeof(field), password ? field : NULL,
	                     sizeof(field), &st, text, sizeof(text)) == -1) {
		session_fail(s, st, text);
		return;
	}
	b64(field, strlen(field), enc);
	OPENSSL_cleanse(field, sizeof(field));
	send_secret_line(s, "", enc);
	s->auth = password ? AUTH_LOGIN_PASS_SENT : AUTH_LOGIN_USER_SENT;
	arm(s, REPLY_TIMEOUT_S);
}

static void on_auth(struct session *s, const struct smtp_client_reply *r)
{
	struct smtp_client *cl = s->cl;
	char what[96];

	if (r->code == 235 && (s->auth == AUTH_PLAIN_SENT || s->auth == AUTH_LOGIN_PASS_SENT)) {
		log_debug("%s: connection %u: authenticated", cl->name, s->id);
		session_ready(s);
		return;
	}
	if (r->code == 334 && (s->auth == AUTH_LOGIN_SENT || s->auth == AUTH_LOGIN_USER_SENT)) {
		auth_login_step(s, s->auth == AUTH_LOGIN_USER_SENT);
		return;
	}
	/* at most 4 characters of a key id in logs (ses_creds.h) */
	snprintf(what, sizeof(what), "SMTP authentication refused (AUTH %s)",
	         s->auth == AUTH_PLAIN_SENT ? "PLAIN" : "LOGIN");
	session_fail_reply(s, SMTP_CLIENT_AUTH, what, r);
}

static void on_ehlo(struct session *s, const struct smtp_client_reply *r)
{
	struct smtp_client *cl = s->cl;

	if (r->code != 250) {
		session_fail_reply(s, SMTP_CLIENT_EHLO, "EHLO refused", r);
		return;
	}
	smtp_client_parse_ehlo(r, &s->ehlo);
	if (cl->tls == CONF_TLS_STARTTLS && !s->tls) {
		if (!s->ehlo.starttls) {
			/* a misconfiguration or a downgrade attack: never go on in clear */
			session_failf(s, DELIVERY_OPERATOR,
			              "%s[%s]:%d: server does not offer STARTTLS", cl->host,
			              s->peer, cl->port);
			return;
		}
		send_line(s, "STARTTLS");
		enter_state(s, S_STARTTLS);
		return;
	}
	auth_begin(s);
}

static void on_starttls(struct session *s, const struct smtp_client_reply *r)
{
	struct smtp_client *cl = s->cl;
	struct evbuffer *in = bufferevent_get_input(s->bev);
	struct bufferevent *tbev;

	if (r->code != 220) {
		session_fail_reply(s, SMTP_CLIENT_STARTTLS, "STARTTLS refused", r);
		return;
	}
	/* nothing sent in clear after the 220 may count (CVE-2011-0411's mirror) */
	if (evbuffer_get_length(in) > 0) {
		log_debug("%s: connection %u: %zu octets after the STARTTLS reply discarded",
		          cl->name, s->id, evbuffer_get_length(in));
		evbuffer_drain(in, evbuffer_get_length(in));
	}
	bufferevent_setcb(s->bev, NULL, NULL, NULL, NULL);
	tbev = bufferevent_openssl_filter_new(cl->base, s->bev, tls_new(s),
	                                      BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
	if (tbev == NULL)
		fatalx("bufferevent_openssl_filter_new failed");
	bufferevent_openssl_set_allow_dirty_shutdown(tbev, 1);
	/* the filter moves output down as long as the socket's buffer is under its
	 * high-water mark: with none, a whole message would pile up there */
	bufferevent_setwatermark(s->bev, EV_WRITE, TLS_UNDER_HI / 4, TLS_UNDER_HI);
	s->bev = tbev;
	bev_setup(s);
	enter_state(s, S_TLS);
}

/* Why a TLS handshake failed, in words an operator can act on. */
static void tls_error_text(struct session *s, char *out, size_t size)
{
	struct smtp_client *cl = s->cl;
	SSL *ssl = bufferevent_openssl_get_ssl(s->bev);
	long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
	unsigned long e, first = 0;
	int sockerr = EVUTIL_SOCKET_ERROR();

	while ((e = bufferevent_get_openssl_error(s->bev)) != 0)
		if (first == 0)
			first = e;
	if (vr != X509_V_OK)
		snprintf(out, size, "TLS with %s[%s]:%d: certificate verify failed (%s)", cl->host,
		         s->peer, cl->port, X509_verify_cert_error_string(vr));
	else if (first != 0)
		snprintf(out, size, "TLS with %s[%s]:%d failed: %s", cl->host, s->peer, cl->port,
		         ERR_reason_error_string(first) ? ERR_reason_error_string(first)
		                                        : "unknown error");
	else
		snprintf(out, size, "TLS with %s[%s]:%d failed: %s", cl->host, s->peer, cl->port,
		         sockerr ? strerror(sockerr) : "connection closed during the handshake");
}

static void tls_up(struct session *s)
{
	struct smtp_client *cl = s->cl;
	SSL *ssl = bufferevent_openssl_get_ssl(s->bev);

	s->tls = 1;
	log_debug("%s: connection %u: %s, %s", cl->name, s->id, SSL_get_version(ssl),
	          SSL_get_cipher_name(ssl));
	if (cl->tls == CONF_TLS_IMPLICIT)
		enter_state(s, S_GREETING);
	else
		send_ehlo(s); /* RFC 3207: everything learnt before TLS is forgotten */
}

/* --- the transaction ------------------------------------------------------------ */

/* An address we can put between <>: no controls, spaces or angle brackets. */
static int address_ok(const char *a)
{
	if (a == NULL)
		return 0;
	for (; *a; a++)
		if ((unsigned char)*a <= 0x20 || *a == 0x7f || *a == '<' || *a == '>')
			return 0;
	return 1;
}

static const char *sender_of(const struct delivery *d)
{
	return d->sender ? d->sender : ""; /* NULL or "": the null sender <> */
}

/* Envelope command k: RSET (when first), MAIL, then the RCPTs. */
static void send_envelope_cmd(struct session *s, size_t k)
{
	struct job *j = s->job;
	struct delivery *d = j->d;

	if (j->rset_first && k == 0)
		send_line(s, "RSET");
	else if (k == (size_t)j->rset_first) {
		if (s->ehlo.has_size)
			send_line(s, "MAIL FROM:<%s> SIZE=%ju", sender_of(d),
			          (uintmax_t)(s->cl->hdr_len + d->data_len));
		else
			send_line(s, "MAIL FROM:<%s>", sender_of(d));
	} else
		send_line(s, "RCPT TO:<%s>", d->rcpts[j->send_idx[k - 1 - (size_t)j->rset_first]]);
	j->sent++;
}

/* The session is ready and holds a job: its transaction starts. */
static void txn_start(struct session *s)
{
	struct smtp_client *cl = s->cl;
	struct job *j = s->job;
	struct delivery *d = j->d;
	uint64_t size = cl->hdr_len + d->data_len;
	size_t i;

	ASSERT(j != NULL);
	if (s->ehlo.has_size && s->ehlo.size > 0 && size > s->ehlo.size) {
		job_finishf(j, DELIVERY_BOUNCE,
		            "552 5.3.4 message size %ju exceeds SES's limit %ju", (uintmax_t)size,
		            (uintmax_t)s->ehlo.size);
		enter_state(s, S_IDLE);
		return;
	}
	if (!address_ok(sender_of(d))) {
		job_finish(j, DELIVERY_BOUNCE, "553 5.1.7 the sender address cannot be sent");
		enter_state(s, S_IDLE);
		return;
	}
	j->nsend = j->naccepted = 0;
	for (i = 0; i < d->nrcpts; i++) {
		if (j->r[i] == R_DONE)
			continue;
		j->r[i] = R_PENDING;
		if (address_ok(d->rcpts[i]))
			j->send_idx[j->nsend++] = i;
		else
			rcpt_set(j, i, DELIVERY_BOUNCE,
			         "553 5.1.3 the recipient address cannot be sent");
	}
	if (j->nsend == 0) {
		job_finish(j, DELIVERY_BOUNCE, "no recipient to send to");
		enter_state(s, S_IDLE);
		return;
	}
	j->rset_first = s->dirty;
	j->ncmds = (size_t)j->rset_first + 1 + j->nsend;
	j->sent = j->replied = 0;
	j->mail_ok = j->failed = j->data_sent = j->aborting = 0;
	enter_state(s, S_ENVELOPE);
	if (s->ehlo.pipelining) {
		/* RFC 2920: the whole envelope and DATA in one write; the server
		 * refuses DATA itself when no recipient was accepted */
		while (j->sent < j->ncmds)
			send_envelope_cmd(s, j->sent);
		send_line(s, "DATA");
		j->data_sent = 1;
	} else
		send_envelope_cmd(s, 0);
}

/*
 * Move the job to a new connection: the pooled one it met was closed by the
 * server (SES drops idle connections and recycles hosts).  Once per job, and
 * only before the server took anything of it.  Returns 1 when moved.
 */
static int txn_retry_elsewhere(struct session *s, const char *why)
{
	struct smtp_client *cl = s->cl;
	struct job *j = s->job;

	if (j == NULL || j->retried || !s->reused || j->mail_ok)
		return 0;
	log_debug("%s: connection %u: %s: pooled connection closed by the server (%s): "
	          "retrying on a new connection",
	          cl->name, s->id, j->d->id, why);
	j->retried = 1;
	s->job = NULL;
	j->s = NULL;
	session_kill(s);
	session_resolve(session_new(cl, j));
	return 1;
}

/* A failed transaction is over (its pipelined DATA answered, if any). */
static void txn_failed(struct session *s)
{
	struct job *j = s->job;

	s->dirty = 1;
	job_finish(j, j->fail_st, j->fail_text);
	session_txn_end(s);
}

/* The envelope is done (all replies read): DATA, or the end of this job. */
static void envelope_done(struct session *s)
{
	struct job *j = s->job;

	if (!j->failed && j->naccepted == 0) {
		/* every recipient has its RCPT outcome; the transaction stays open */
		j->failed = 1;
		j->fail_st = DELIVERY_DEFER;
		copy_capped(j->fail_text, sizeof(j->fail_text), "no recipient accepted");
	}
	if (j->failed) {
		if (j->data_sent) {
			/* the pipelined DATA still gets a reply: read it first */
			j->aborting = 1;
			enter_state(s, S_DATA);
			return;
		}
		txn_failed(s);
		return;
	}
	if (!j->data_sent)
		send_line(s, "DATA");
	enter_state(s, S_DATA);
}

static void on_envelope(struct session *s, const struct smtp_client_reply *r)
{
	struct job *j = s->job;
	size_t k = j->replied++;
	char line[DELIVERY_TEXT_MAX];
	enum smtp_client_stage stage = j->rset_first && k == 0      ? SMTP_CLIENT_RSET
	                               : k == (size_t)j->rset_first ? SMTP_CLIENT_MAIL
	                                                            : SMTP_CLIENT_RCPT;

	smtp_client_reply_format(r, line, sizeof(line));
	if (stage != SMTP_CLIENT_RCPT) {
		if (r->code == 421 && txn_retry_elsewhere(s, line))
			return;
		if (r->code / 100 != 2 && !j->failed) {
			j->failed = 1;
			j->fail_st = smtp_client_classify(stage, r->code, r->text);
			copy_capped(j->fail_text, sizeof(j->fail_text), line);
		} else if (stage == SMTP_CLIENT_MAIL && !j->failed)
			j->mail_ok = 1;
	} else if (!j->failed) {
		size_t i = j->send_idx[k - 1 - (size_t)j->rset_first];

		if (r->code / 100 == 2) {
			j->r[i] = R_ACCEPTED;
			j->naccepted++;
		} else
			rcpt_set(j, i, smtp_client_classify(stage, r->code, r->text), line);
	}
	if (r->code == 421) { /* the server is closing the connection */
		session_fail(s, DELIVERY_DEFER, line);
		return;
	}
	arm(s, REPLY_TIMEOUT_S);
	if (!s->ehlo.pipelining && !j->failed && j->sent < j->ncmds) {
		send_envelope_cmd(s, j->sent);
		return;
	}
	if (j->replied == j->sent && (j->sent == j->ncmds || j->failed))
		envelope_done(s);
}

static void body_fill(struct session *s);

static void on_data(struct session *s, const struct smtp_client_reply *r)
{
	struct job *j = s->job;
	char line[DELIVERY_TEXT_MAX];

	if (j->aborting) {
		if (r->code == 354 && j->naccepted > 0) {
			/* the transaction failed (RSET or MAIL refused) but the
			 * server took recipients and DATA: no way to abort data but
			 * to drop the connection, so nobody gets a half message */
			session_fail(s, DELIVERY_DEFER, j->fail_text);
		} else if (r->code == 354) {
			/* a server that takes DATA with no recipient: an empty
			 * message to nobody ends it (RFC 2920 section 3.1) */
			send_line(s, ".");
			enter_state(s, S_DOT);
		} else if (r->code == 421)
			session_fail(s, DELIVERY_DEFER, j->fail_text);
		else
			txn_failed(s);
		return;
	}
	if (r->code == 354) {
		j->hdr_pos = 0;
		j->data_pos = 0;
		smtp_client_dotstuff_init(&j->ds);
		enter_state(s, S_BODY);
		bufferevent_setwatermark(s->bev, EV_WRITE, BODY_LOWAT, 0);
		body_fill(s);
		return;
	}
	smtp_client_reply_format(r, line, sizeof(line));
	s->dirty = 1;
	if (r->code == 421) {
		session_fail(s, DELIVERY_DEFER, line);
		return;
	}
	job_finish(j, smtp_client_classify(SMTP_CLIENT_DATA, r->code, r->text), line);
	session_txn_end(s);
}

/* Queue message octets until the output holds BODY_LOWAT; on_write calls
 * again once it drained below that. */
static void body_fill(struct session *s)
{
	struct smtp_client *cl = s->cl;
	struct job *j = s->job;
	struct delivery *d = j->d;
	struct evbuffer *out = bufferevent_get_output(s->bev);
	size_t n;

	while (evbuffer_get_length(out) < BODY_LOWAT) {
		if (j->hdr_pos < cl->hdr_len) {
			n = smtp_client_dotstuff(&j->ds, cl->hdr, cl->hdr_len, cl->outbuf);
			evbuffer_add(out, cl->outbuf, n);
			j->hdr_pos = cl->hdr_len;
		} else if (j->data_pos < d->data_len) {
			uint64_t left = d->data_len - j->data_pos;
			size_t want = left < BODY_CHUNK ? (size_t)left : BODY_CHUNK;
			ssize_t got =
			    pread(d->fd, cl->inbuf, want, (off_t)(d->data_offset + j->data_pos));

			if (got < 0 && errno == EINTR)
				continue;
			if (got <= 0) {
				/* DATA cannot be taken back: the connection goes */
				session_failf(s, DELIVERY_DEFER, "cannot read the queue file: %s",
				              got < 0 ? strerror(errno)
				                      : "it is shorter than recorded");
				return;
			}
			n = smtp_client_dotstuff(&j->ds, cl->inbuf, (size_t)got, cl->outbuf);
			evbuffer_add(out, cl->outbuf, n);
			j->data_pos += (uint64_t)got;
		} else {
			n = smtp_client_dotstuff_end(&j->ds, cl->outbuf);
			evbuffer_add(out, cl->outbuf, n);
			bufferevent_setwatermark(s->bev, EV_WRITE, 0, 0);
			log_debug("%s: connection %u: %s: > (%ju octets of message) .", cl->name,
			          s->id, d->id, (uintmax_t)(cl->hdr_len + d->data_len));
			enter_state(s, S_DOT);
			return;
		}
	}
}

/* The final reply: SENT for every accepted recipient, or what it says. */
static void on_dot(struct session *s, const struct smtp_client_reply *r)
{
	struct job *j = s->job;
	char line[DELIVERY_TEXT_MAX], id[200];

	if (j->aborting) {
		if (r->code == 421)
			session_fail(s, DELIVERY_DEFER, j->fail_text);
		else
			txn_failed(s);
		return;
	}
	smtp_client_reply_format(r, line, sizeof(line));
	if (r->code / 100 == 2) {
		if (smtp_client_message_id(r, id, sizeof(id)) == 0)
			job_finishf(j, DELIVERY_SENT, "MessageId %s", id);
		else
			job_finish(j, DELIVERY_SENT, line);
		session_txn_end(s);
		return;
	}
	if (r->code == 421) {
		session_fail(s, DELIVERY_DEFER, line);
		return;
	}
	job_finish(j, smtp_client_classify(SMTP_CLIENT_DOT, r->code, r->text), line);
	session_txn_end(s);
}

/* A reply while the message is still going out: the server gave up on it. */
static void on_body(struct session *s, const struct smtp_client_reply *r)
{
	char line[DELIVERY_TEXT_MAX];
	enum delivery_status st = smtp_client_classify(SMTP_CLIENT_DOT, r->code, r->text);

	smtp_client_reply_format(r, line, sizeof(line));
	session_failf(s, st == DELIVERY_SENT ? DELIVERY_DEFER : st, "during the message data: %s",
	              line);
}

static void on_idle(struct session *s, const struct smtp_client_reply *r)
{
	char line[DELIVERY_TEXT_MAX];

	smtp_client_reply_format(r, line, sizeof(line));
	log_debug("%s: connection %u: closed by the server while idle: %s", s->cl->name, s->id,
	          line);
	session_kill(s);
}

static void on_quit(struct session *s, const struct smtp_client_reply *r)
{
	session_kill(s);
}

/* --- bufferevent callbacks --------------------------------------------------- */

static void on_read(struct bufferevent *bev, void *arg)
{
	struct session *s = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	while (s->state != S_DEAD && s->bev == bev && evbuffer_get_length(in) > 0) {
		size_t len = evbuffer_get_length(in), n = len < REPLY_MAX ? len : REPLY_MAX,
		       used = 0;
		const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)n), *err = NULL;
		struct smtp_client_reply r;
		char line[DELIVERY_TEXT_MAX];
		int rc = smtp_client_parse_reply(p, n, &r, &used, &err);

		if (rc == 0 && n < REPLY_MAX)
			return;
		if (rc != 1) {
			if (s->state == S_ENVELOPE && txn_retry_elsewhere(s, "malformed reply"))
				return;
			session_failf(s, DELIVERY_DEFER, "malformed reply from %s[%s]: %s",
			              s->cl->host, s->peer, err ? err : "reply too long");
			return;
		}
		evbuffer_drain(in, used);
		if (log_level_enabled(LOG_LEVEL_DEBUG)) {
			smtp_client_reply_format(&r, line, sizeof(line));
			log_debug("%s: connection %u: %s: < %s", s->cl->name, s->id, job_id(s),
			          line);
		}
		if (STATES[s->state].on_reply == NULL) {
			smtp_client_reply_format(&r, line, sizeof(line));
			session_failf(s, DELIVERY_DEFER, "unexpected reply from %s[%s]: %s",
			              s->cl->host, s->peer, line);
			return;
		}
		STATES[s->state].on_reply(s, &r);
	}
}

static void on_write(struct bufferevent *bev, void *arg)
{
	struct session *s = arg;

	if (s->state == S_BODY)
		body_fill(s);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct session *s = arg;
	struct smtp_client *cl = s->cl;
	char text[DELIVERY_TEXT_MAX];
	int sockerr = EVUTIL_SOCKET_ERROR();

	if (what & BEV_EVENT_CONNECTED) {
		if (s->state == S_TLS)
			tls_up(s);
		return;
	}
	if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
		return;
	switch (s->state) {
	case S_TLS:
		tls_error_text(s, text, sizeof(text));
		session_fail(s, DELIVERY_DEFER, text);
		return;
	case S_IDLE:
	case S_QUIT:
		log_debug("%s: connection %u: closed by the server", cl->name, s->id);
		session_kill(s);
		return;
	case S_ENVELOPE:
		if (txn_retry_elsewhere(s, "connection closed"))
			return;
		break;
	default:
		break;
	}
	snprintf(text, sizeof(text), "connection to %s[%s]:%d lost while waiting for %s%s%s",
	         cl->host, s->peer, cl->port, STATES[s->state].waiting_for,
	         (what & BEV_EVENT_ERROR) && sockerr ? ": " : "",
	         (what & BEV_EVENT_ERROR) && sockerr ? strerror(sockerr) : "");
	while (s->tls && bufferevent_get_openssl_error(bev) != 0)
		; /* keep OpenSSL's error queue from leaking into the next connection */
	session_fail(s, DELIVERY_DEFER, text);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;
	struct smtp_client *cl = s->cl;

	switch (s->state) {
	case S_IDLE:
		session_quit(s);
		return;
	case S_QUIT:
		session_kill(s);
		return;
	case S_ENVELOPE:
		if (txn_retry_elsewhere(s, "no reply"))
			return;
		break;
	default:
		break;
	}
	session_failf(s, DELIVERY_DEFER, "%s[%s]:%d: timed out waiting for %s", cl->host,
	              s->peer[0] ? s->peer : "?", cl->port, STATES[s->state].waiting_for);
}

/* --- the transport's methods --------------------------------------------------------- */

static struct session *pool_take(struct smtp_client *cl)
{
	struct session *s;

	for (s = cl->sessions; s; s = s->next)
		if (s->state == S_IDLE && s->job == NULL)
			return s;
	return NULL;
}

/* Whether a new connection could log in; 0, or -1 with st/text. */
static int can_login(struct smtp_client *cl, enum delivery_status *st, char *text, size_t size)
{
	char pass[AUTH_FIELD_MAX];
	int r;

	if (cl->username && cl->password)
		return 0;
	r = auth_credentials(cl, NULL, 0, pass, sizeof(pass), st, text, size);
	OPENSSL_cleanse(pass, sizeof(pass));
	return r;
}

static void client_send(struct transport *t, struct delivery *d)
{
	struct smtp_client *cl = t->impl;
	char text[DELIVERY_TEXT_MAX];
	enum delivery_status st;
	struct session *s;
	struct job *j;
	double now;

	ASSERT(d->nrcpts >= 1 && d->nrcpts <= DELIVERY_MAX_RCPTS);
	ASSERT(cl->njobs < cl->concurrency);
	j = xcalloc(1, sizeof(*j));
	j->cl = cl;
	j->d = d;
	d->priv = j;
	j->next = cl->jobs;
	if (cl->jobs)
		cl->jobs->prev = j;
	cl->jobs = j;
	cl->njobs++;

	if ((s = pool_take(cl)) != NULL) {
		log_debug("%s: connection %u: reused for %s", cl->name, s->id, d->id);
		s->job = j;
		j->s = s;
		s->reused = 1;
		txn_start(s);
		return;
	}
	/* a new connection: fail fast, from the loop, when it cannot work */
	if (can_login(cl, &st, text, sizeof(text)) == -1) {
		job_finish(j, st, text);
		return;
	}
	now = util_monotime();
	if (now < cl->backoff_until) {
		job_finishf(j, cl->backoff_st, "%s (next connection attempt in %.0f s)",
		            cl->backoff_text, cl->backoff_until - now + 0.5);
		return;
	}
	session_resolve(session_new(cl, j));
}

static size_t client_capacity(struct transport *t)
{
	struct smtp_client *cl = t->impl;

	return cl->njobs < cl->concurrency ? cl->concurrency - cl->njobs : 0;
}

static uint64_t client_max_size(struct transport *t)
{
	struct smtp_client *cl = t->impl;

	return cl->max_size ? cl->max_size : SMTP_CLIENT_DEFAULT_MAX_SIZE;
}

/* Unknown: the scheduler adapts from throttling replies (GetAccount belongs
 * to the API). */
static double client_send_rate(struct transport *t, double *quota_left)
{
	if (quota_left)
		*quota_left = -1;
	return -1;
}

static void session_free_now(struct session *s)
{
	resolve_cancel(s);
	connect_abort(s);
	if (s->ai)
		evutil_freeaddrinfo(s->ai);
	if (s->bev)
		bufferevent_free(s->bev);
	event_free(s->timer);
	free(s);
}

static void client_free(struct transport *t)
{
	struct smtp_client *cl;
	struct session *s;

	if (t == NULL)
		return;
	cl = t->impl;
	while (cl->jobs)
		job_free(cl->jobs); /* their done() does not run */
	while ((s = cl->sessions) != NULL) {
		cl->sessions = s->next;
		session_free_now(s);
	}
	while ((s = cl->dead) != NULL) {
		cl->dead = s->next;
		session_free_now(s);
	}
	if (cl->tick)
		event_free(cl->tick);
	if (cl->dns) {
		if (cl->dns->pending == 0) {
			evdns_base_free(cl->dns->base, 0);
			free(cl->dns);
		} else
			cl->dns->orphaned = 1; /* the last cancelled lookup frees it */
	}
	if (cl->ssl_ctx)
		SSL_CTX_free(cl->ssl_ctx);
	if (cl->password) {
		OPENSSL_cleanse(cl->password, strlen(cl->password));
		free(cl->password);
	}
	free(cl->name);
	free(cl->host);
	free(cl->region);
	free(cl->helo);
	free(cl->username);
	free(cl->hdr);
	free(cl->inbuf);
	free(cl->outbuf);
	free(cl);
}

static SSL_CTX *tls_ctx_new(const char *name, const char *ca_file)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	char err[256];

	if (ctx == NULL)
		fatalx("SSL_CTX_new failed");
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS); /* pooled idle connections */
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if (ca_file && *ca_file) {
		if (access(ca_file, R_OK) == -1)
			snprintf(err, sizeof(err), "%s", strerror(errno));
		else if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1)
			ERR_error_string_n(ERR_peek_last_error(), err, sizeof(err));
		else
			err[0] = '\0';
		if (err[0]) {
			log_error("%s: cannot load ca_file %s: %s", name, ca_file, err);
			ERR_clear_error();
			SSL_CTX_free(ctx);
			return NULL;
		}
	} else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
		log_warnx("%s: cannot load the system CA bundle", name);
		ERR_clear_error();
	}
	return ctx;
}

/* SES configuration set names: letters, digits, '_' and '-' (max 64). */
static int config_set_ok(const char *cs)
{
	size_t n = strlen(cs);

	if (n == 0 || n > 64)
		return 0;
	for (; *cs; cs++)
		if (!isalnum((unsigned char)*cs) && *cs != '_' && *cs != '-')
			return 0;
	return 1;
}

static int is_ip_literal(const char *host)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

static char *nonempty(const char *s)
{
	return s && *s ? xstrdup(s) : NULL;
}

struct transport *smtp_client_transport_new(struct event_base *base, struct ses_creds *creds,
                                            const struct conf *conf)
{
	struct smtp_client *cl;
	const char *region = conf->region && *conf->region ? conf->region : NULL;

	if ((conf->smtp_host == NULL || *conf->smtp_host == '\0') && region == NULL) {
		log_error("ses-smtp: no SMTP host: set [ses] region (or AWS_REGION) or smtp_host");
		return NULL;
	}
	cl = xcalloc(1, sizeof(*cl));
	cl->t.impl = cl;
	cl->base = base;
	cl->creds = creds;
	cl->region = nonempty(region);
	cl->host = conf->smtp_host && *conf->smtp_host
	               ? xstrdup(conf->smtp_host)
	               : xasprintf("email-smtp.%s.amazonaws.com", region);
	cl->host_is_ip = is_ip_literal(cl->host);
	cl->port = conf->smtp_port > 0 ? conf->smtp_port : DEFAULT_PORT;
	cl->tls = conf->smtp_tls;
	cl->helo = xstrdup(conf->hostname && *conf->hostname ? conf->hostname : "localhost");
	cl->username = nonempty(conf->smtp_username);
	cl->password = nonempty(conf->smtp_password);
	cl->concurrency = conf->concurrency > 0 ? (size_t)conf->concurrency : 1;
	cl->name = xasprintf("ses-smtp[%s]", cl->host);
	cl->t.name = cl->name;
	cl->t.capacity = client_capacity;
	cl->t.send = client_send;
	cl->t.max_size = client_max_size;
	cl->t.send_rate = client_send_rate;
	cl->t.free = client_free;

	if (conf->configuration_set && *conf->configuration_set) {
		if (!config_set_ok(conf->configuration_set)) {
			log_error(
			    "%s: configuration_set \"%s\" is not a valid SES configuration set "
			    "name (letters, digits, '_', '-'; at most 64)",
			    cl->name, conf->configuration_set);
			client_free(&cl->t);
			return NULL;
		}
		cl->hdr = xasprintf("X-SES-CONFIGURATION-SET: %s\r\n", conf->configuration_set);
		cl->hdr_len = strlen(cl->hdr);
	}
	if (cl->tls == CONF_TLS_NONE)
		log_warnx("%s: smtp_tls = none: mail and SMTP password go in clear text; only for "
		          "test sinks",
		          cl->name);
	else if ((cl->ssl_ctx = tls_ctx_new(cl->name, conf->ca_file)) == NULL) {
		client_free(&cl->t);
		return NULL;
	}
	if (cl->tls == CONF_TLS_IMPLICIT && cl->port == DEFAULT_PORT)
		log_warnx("%s: smtp_tls = implicit on port 587: SES takes implicit TLS on 465 or "
		          "2465 (587 is for STARTTLS)",
		          cl->name);
	if (cl->password == NULL && cl->region == NULL) {
		log_error(
		    "%s: no region to derive the SMTP password from the secret key: set [ses] "
		    "region or smtp_password",
		    cl->name);
		client_free(&cl->t);
		return NULL;
	}
	cl->dns = xcalloc(1, sizeof(*cl->dns));
	cl->dns->base = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
	                                         EVDNS_BASE_DISABLE_WHEN_INACTIVE);
	if (cl->dns->base == NULL) {
		log_error("%s: cannot set up DNS resolution (evdns_base_new failed)", cl->name);
		free(cl->dns);
		cl->dns = NULL;
		client_free(&cl->t);
		return NULL;
	}
	if ((cl->tick = evtimer_new(base, on_tick, cl)) == NULL)
		fatalx("evtimer_new failed");
	cl->inbuf = xmalloc(BODY_CHUNK);
	cl->outbuf = xmalloc(SMTP_CLIENT_DOTSTUFF_MAX(BODY_CHUNK) + SMTP_CLIENT_DOTSTUFF_END_MAX);
	log_debug("%s: port %d, %s, up to %zu connections", cl->name, cl->port,
	          cl->tls == CONF_TLS_IMPLICIT   ? "implicit TLS"
	          : cl->tls == CONF_TLS_STARTTLS ? "STARTTLS"
	                                         : "no TLS",
	          cl->concurrency);
	return &cl->t;
}
