/*
 * smtp_session.c - the SMTP server session: states, commands, relay policy,
 * DATA streamed into the spool.
 *
 * The conversation is a state machine (enum smtp_state, enter_state()) with a
 * command table; each command's preconditions are table flags, so "MAIL
 * before EHLO" and friends are answered in one place.  Pipelined input is
 * processed in order until a command must wait (the spool commit at the end
 * of DATA); replies go out in one write when the input is drained.
 *
 * Memory per session is bounded: the input buffer by a read watermark, the
 * output buffer by pausing input processing while the client does not read,
 * command lines by SMTP_CMD_LINE_MAX, message data by streaming it to disk.
 *
 * Never here: blocking calls, freeing the session inside a callback (the
 * reaper does it), or acknowledging a message before the spool says it is
 * durable.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>

#include "conf/conf.h"
#include "relay/log.h"
#include "relay/metrics.h"
#include "relay/netaddr.h"
#include "relay/spool.h"
#include "relay/users.h"
#include "relay/util.h"
#include "relay/workq.h"
#include "ses/ses_identity.h"
#include "smtp/smtp_data.h"
#include "smtp/smtp_parse.h"
#include "smtp/smtp_server.h"
#include "smtp/proxy.h"
#include "smtp/smtp_session.h"
#include "smtp/tls.h"

#define INPUT_MAX       (256 * 1024) /* unprocessed input before we stop reading */
#define OUTPUT_MAX      (64 * 1024)  /* queued replies before we stop processing */
#define READ_MAX        (64 * 1024)  /* one read(2) */
#define ERROR_LIMIT     20           /* Postfix smtpd_hard_error_limit */
#define CLOSE_FLUSH_S   10           /* time to deliver the last reply */
#define AUTH_LINE_MAX   SMTP_CMD_LINE_MAX
#define AUTH_DELAY_MAX  16           /* seconds: the longest penalty for a bad password */
#define PROXY_TIMEOUT_S 10           /* for the PROXY header to arrive */

enum smtp_state {
	S_PROXY,  /* waiting for the PROXY protocol header (no banner yet) */
	S_INIT,   /* before HELO/EHLO */
	S_READY,  /* greeted, no transaction */
	S_MAIL,   /* MAIL accepted */
	S_RCPT,   /* at least one RCPT accepted */
	S_DATA,   /* receiving message data */
	S_COMMIT, /* waiting for the spool to make the message durable */
	S_CLOSING /* last reply going out, then close */
};

static const char *state_names[] = {"PROXY", "INIT", "READY", "MAIL", "RCPT", "DATA",
    "COMMIT", "CLOSING"};

enum cmd_index {
	C_EHLO, C_HELO, C_MAIL, C_RCPT, C_DATA, C_RSET, C_NOOP, C_QUIT, C_VRFY, C_EXPN, C_HELP,
	C_STARTTLS, C_AUTH, C_BDAT, C_FORBIDDEN, C_COUNT
};

struct smtp_session {
	struct smtp_session *next, *prev;
	struct smtp_server *srv;
	struct smtp_config *cfg;
	const struct conf_listener *l;
	struct bufferevent *bev;
	struct event *session_timer;
	struct event *data_timer;
	struct event *reaper;

	struct sockaddr_storage peer;
	char ip[64];
	char name[300];            /* "unknown[192.0.2.1]" */
	int counted_per_ip;
	int trusted;               /* in relay_networks */

	enum smtp_state state;
	char helo[256];
	int esmtp;
	int errors;
	int pipelining_logged;
	int skip_to_lf;            /* discarding the rest of an over-long line */
	int commit_pending;        /* the spool owes us a commit_done() */
	int in_commit_call;        /* inside spool_writer_commit() */
	int paused;                /* waiting for an async result */
	int closing;
	int dead;                  /* connection gone; struct kept for a pending commit */
	int shutdown;              /* server is stopping: close after this transaction */
	const char *last_cmd;

	/* transaction */
	char sender[SMTP_PATH_MAX + 1];
	char **rcpts;
	size_t nrcpts;
	uint64_t declared_size;
	struct spool_writer *writer;
	struct smtp_data *data;    /* allocated for the DATA phase only */
	int write_error;

	/* TLS and authentication */
	int tls;                   /* TLS is on */
	const struct user *user;   /* authenticated user (in cfg's users) */
	char auth_name[256];       /* the name it authenticated as */
	int auth_step;             /* AUTH dialogue: see auth_continue() */
	char auth_login_user[256];
	int auth_failures;         /* in this session */
	struct auth_job *auth_job; /* password check in flight */
	struct event *auth_timer;  /* the penalty delay before 535 */

	/* per-command statistics for the disconnect line: ok/total */
	unsigned ok[C_COUNT], total[C_COUNT];
};

struct smtp_cmd {
	const char *verb;
	int flags;
	void (*fn)(struct smtp_session *, char *args);
};

#define CMD_LAST      0x01 /* must be last in a pipelined group (RFC 2920) */
#define CMD_NEED_HELO 0x02
#define CMD_NEED_MAIL 0x04
#define CMD_NEED_RCPT 0x08

static void cmd_ehlo(struct smtp_session *, char *);
static void cmd_helo(struct smtp_session *, char *);
static void cmd_mail(struct smtp_session *, char *);
static void cmd_rcpt(struct smtp_session *, char *);
static void cmd_data(struct smtp_session *, char *);
static void cmd_rset(struct smtp_session *, char *);
static void cmd_noop(struct smtp_session *, char *);
static void cmd_quit(struct smtp_session *, char *);
static void cmd_vrfy(struct smtp_session *, char *);
static void cmd_expn(struct smtp_session *, char *);
static void cmd_help(struct smtp_session *, char *);
static void cmd_starttls(struct smtp_session *, char *);
static void cmd_auth(struct smtp_session *, char *);
static void cmd_bdat(struct smtp_session *, char *);
static void cmd_forbidden(struct smtp_session *, char *);

/* Indexed by enum cmd_index. */
static const struct smtp_cmd commands[C_COUNT] = {
    [C_EHLO] = {"EHLO", CMD_LAST, cmd_ehlo},
    [C_HELO] = {"HELO", CMD_LAST, cmd_helo},
    [C_MAIL] = {"MAIL", CMD_NEED_HELO, cmd_mail},
    [C_RCPT] = {"RCPT", CMD_NEED_HELO | CMD_NEED_MAIL, cmd_rcpt},
    [C_DATA] = {"DATA", CMD_LAST | CMD_NEED_HELO | CMD_NEED_MAIL | CMD_NEED_RCPT, cmd_data},
    [C_RSET] = {"RSET", 0, cmd_rset},
    [C_NOOP] = {"NOOP", CMD_LAST, cmd_noop},
    [C_QUIT] = {"QUIT", CMD_LAST, cmd_quit},
    [C_VRFY] = {"VRFY", CMD_LAST, cmd_vrfy},
    [C_EXPN] = {"EXPN", CMD_LAST, cmd_expn},
    [C_HELP] = {"HELP", CMD_LAST, cmd_help},
    [C_STARTTLS] = {"STARTTLS", CMD_LAST, cmd_starttls},
    [C_AUTH] = {"AUTH", CMD_LAST, cmd_auth},
    [C_BDAT] = {"BDAT", 0, cmd_bdat},
    [C_FORBIDDEN] = {NULL, CMD_LAST, cmd_forbidden},
};

/* Verbs that mean the peer is not an SMTP client (HTTP through a proxy...). */
static const char *forbidden_verbs[] = {"GET", "POST", "PUT", "HEAD", "CONNECT", "USER", NULL};

static void process_input(struct smtp_session *s);
static void session_close(struct smtp_session *s, const char *why);
static void close_after_reply(struct smtp_session *s);

static const struct conf *cf(const struct smtp_session *s)
{
	return s->cfg->conf;
}

static void enter_state(struct smtp_session *s, enum smtp_state st)
{
	if (s->state != st)
		log_debug("%s: state %s -> %s", s->name, state_names[s->state], state_names[st]);
	s->state = st;
}

static void reply(struct smtp_session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reply(struct smtp_session *s, const char *fmt, ...)
{
	struct evbuffer *out;
	va_list ap;

	if (s->dead)
		return;
	out = bufferevent_get_output(s->bev);
	va_start(ap, fmt);
	evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	evbuffer_add(out, "\r\n", 2);
}

/* Count an error; past the limit the client is cut off (Postfix does the same). */
static int too_many_errors(struct smtp_session *s)
{
	if (++s->errors < ERROR_LIMIT)
		return 0;
	log_info("too many errors after %s from %s", s->last_cmd ? s->last_cmd : "CONNECT",
	    s->name);
	reply(s, "421 4.7.0 %s Error: too many errors", cf(s)->hostname);
	close_after_reply(s);
	return 1;
}

static void reset_transaction(struct smtp_session *s)
{
	size_t i;

	for (i = 0; i < s->nrcpts; i++)
		free(s->rcpts[i]);
	free(s->rcpts);
	s->rcpts = NULL;
	s->nrcpts = 0;
	s->sender[0] = '\0';
	s->declared_size = 0;
	if (s->writer) {
		spool_writer_abort(s->writer);
		s->writer = NULL;
	}
	free(s->data);
	s->data = NULL;
	if (s->data_timer)
		event_del(s->data_timer);
	if (s->state != S_INIT)
		enter_state(s, S_READY);
}

/* --- commands ------------------------------------------------------------ */

/* AUTH is offered under TLS, or in clear only on a loopback connection to a
 * tls = none listener (the password never leaves the host: a local TLS
 * terminator or an app on the same machine). */
static int auth_offered(const struct smtp_session *s)
{
	if (s->l->auth == CONF_AUTH_OFF || s->cfg->users == NULL || s->user != NULL)
		return 0;
	return s->tls || (s->l->tls == CONF_TLS_NONE && netaddr_is_loopback((struct sockaddr *)&s->peer));
}

/* 1 when the greeting was accepted (and the transaction reset). */
static int greet(struct smtp_session *s, char *args, int esmtp)
{
	if (!smtp_parse_helo(args)) {
		reply(s, "501 5.5.4 Syntax: %s hostname", esmtp ? "EHLO" : "HELO");
		too_many_errors(s);
		return 0;
	}
	snprintf(s->helo, sizeof(s->helo), "%s", args);
	s->esmtp = esmtp;
	reset_transaction(s);
	enter_state(s, S_READY);
	return 1;
}

static void cmd_ehlo(struct smtp_session *s, char *args)
{
	if (!greet(s, args, 1))
		return;
	reply(s, "250-%s", cf(s)->hostname);
	reply(s, "250-PIPELINING");
	reply(s, "250-SIZE %llu", (unsigned long long)cf(s)->max_message_size);
	reply(s, "250-8BITMIME");
	if (s->l->tls == CONF_TLS_STARTTLS && !s->tls)
		reply(s, "250-STARTTLS");
	if (auth_offered(s))
		reply(s, "250-AUTH PLAIN LOGIN");
	reply(s, "250 ENHANCEDSTATUSCODES");
	s->ok[C_EHLO]++;
}

static void cmd_helo(struct smtp_session *s, char *args)
{
	if (!greet(s, args, 0))
		return;
	reply(s, "250 %s", cf(s)->hostname);
	s->ok[C_HELO]++;
}

static int relay_allowed(const struct smtp_session *s)
{
	if (s->user != NULL)
		return 1;
	return s->l->auth != CONF_AUTH_REQUIRED && s->trusted;
}

static void log_reject(struct smtp_session *s, const char *verb, const char *rcpt,
    const char *why)
{
	if (rcpt)
		log_info("NOQUEUE: reject: %s from %s: %s; from=<%s> to=<%s> proto=%s helo=<%s>",
		    verb, s->name, why, s->sender, rcpt, s->esmtp ? "ESMTP" : "SMTP", s->helo);
	else
		log_info("NOQUEUE: reject: %s from %s: %s; from=<%s> proto=%s helo=<%s>", verb,
		    s->name, why, s->sender, s->esmtp ? "ESMTP" : "SMTP", s->helo);
}

static void cmd_mail(struct smtp_session *s, char *args)
{
	struct smtp_mail_args m;
	char why[900];
	const char *err;

	if (s->state != S_READY) {
		reply(s, "503 5.5.1 Error: nested MAIL command");
		too_many_errors(s);
		return;
	}
	if ((err = smtp_parse_mail(args, &m)) != NULL) {
		reply(s, "%s", err);
		too_many_errors(s);
		return;
	}
	if (s->l->auth != CONF_AUTH_OFF && !relay_allowed(s)) {
		if (s->l->tls == CONF_TLS_STARTTLS && !s->tls) {
			reply(s, "530 5.7.0 Must issue a STARTTLS command first");
			log_reject(s, "MAIL", NULL, "530 5.7.0 Must issue a STARTTLS command first");
		} else {
			reply(s, "530 5.7.0 Authentication required");
			log_reject(s, "MAIL", NULL, "530 5.7.0 Authentication required");
		}
		too_many_errors(s);
		return;
	}
	if (s->user != NULL && !users_sender_allowed(s->user, m.addr)) {
		reply(s, "553 5.7.1 <%s>: Sender address rejected: not owned by user %s", m.addr,
		    s->auth_name);
		log_info("NOQUEUE: reject: MAIL from %s: 553 5.7.1 <%s>: Sender address rejected: not "
			 "owned by user %s; sasl_username=%s",
		    s->name, m.addr, s->auth_name, s->auth_name);
		too_many_errors(s);
		return;
	}
	if (ses_identity_refuse_sender(smtp_server_identity(s->srv), m.addr, why, sizeof(why))) {
		metrics.identity_refusals++;
		reply(s, "550 5.7.1 <%s>: Sender address rejected: %s", m.addr, why);
		log_info("NOQUEUE: reject: MAIL from %s: 550 5.7.1 <%s>: Sender address rejected: "
			 "%s; proto=%s helo=<%s>",
		    s->name, m.addr, why, s->esmtp ? "ESMTP" : "SMTP", s->helo);
		too_many_errors(s);
		return;
	}
	if (m.size > cf(s)->max_message_size) {
		reply(s, "552 5.3.4 Message size exceeds fixed limit of %llu bytes",
		    (unsigned long long)cf(s)->max_message_size);
		log_reject(s, "MAIL", NULL, "552 5.3.4 Message size exceeds fixed limit");
		return;
	}
	if (spool_low_space(smtp_server_spool(s->srv), cf(s)->spool_reserve, m.size)) {
		reply(s, "452 4.3.1 Insufficient system storage");
		log_warnx("NOQUEUE: reject: MAIL from %s: 452 4.3.1 Insufficient system storage "
			  "(spool %s has less than spool_reserve free)",
		    s->name, cf(s)->spool);
		return;
	}
	snprintf(s->sender, sizeof(s->sender), "%s", m.addr);
	s->declared_size = m.size;
	enter_state(s, S_MAIL);
	reply(s, "250 2.1.0 Ok");
	s->ok[C_MAIL]++;
}

static void cmd_rcpt(struct smtp_session *s, char *args)
{
	char addr[SMTP_PATH_MAX + 1], why[900];
	const char *err;
	size_t i;

	if ((err = smtp_parse_rcpt(args, addr)) != NULL) {
		reply(s, "%s", err);
		too_many_errors(s);
		return;
	}
	if (!relay_allowed(s)) {
		reply(s, "554 5.7.1 <%s>: Relay access denied", addr);
		log_reject(s, "RCPT", addr, "554 5.7.1 Relay access denied");
		too_many_errors(s);
		return;
	}
	if (s->nrcpts >= (size_t)cf(s)->max_recipients) {
		reply(s, "452 4.5.3 Error: too many recipients");
		return;
	}
	if (ses_identity_refuse_rcpt(smtp_server_identity(s->srv), addr, why, sizeof(why))) {
		metrics.identity_refusals++;
		reply(s, "550 5.7.1 <%s>: Recipient address rejected: %s", addr, why);
		log_reject(s, "RCPT", addr, "550 5.7.1 Recipient address rejected: not a verified "
		    "identity (SES sandbox)");
		too_many_errors(s);
		return;
	}
	for (i = 0; i < s->nrcpts; i++)
		if (strcasecmp(s->rcpts[i], addr) == 0) {
			/* a duplicate is accepted but delivered once */
			reply(s, "250 2.1.5 Ok");
			s->ok[C_RCPT]++;
			return;
		}
	s->rcpts = xreallocarray(s->rcpts, s->nrcpts + 1, sizeof(char *));
	s->rcpts[s->nrcpts++] = xstrdup(addr);
	enter_state(s, S_RCPT);
	reply(s, "250 2.1.5 Ok");
	s->ok[C_RCPT]++;
}

static void on_data_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct smtp_session *s = arg;

	log_info("timeout after DATA (%llu bytes) from %s", (unsigned long long)s->data->size,
	    s->name);
	reset_transaction(s);
	reply(s, "421 4.4.2 %s Error: timeout exceeded", cf(s)->hostname);
	close_after_reply(s);
}

static void rfc5322_date(char *buf, size_t len)
{
	time_t now = time(NULL);
	struct tm tm;

	localtime_r(&now, &tm);
	strftime(buf, len, "%a, %d %b %Y %H:%M:%S %z", &tm);
}

static void cmd_data(struct smtp_session *s, char *args)
{
	struct spool_envelope env;
	struct evbuffer *buf;
	char date[64], client[400];
	/* RFC 3848: ESMTPS (TLS), ESMTPA (AUTH), ESMTPSA (both) */
	const char *proto = !s->esmtp ? "SMTP"
			    : s->tls && s->user ? "ESMTPSA"
			    : s->tls ? "ESMTPS"
			    : s->user ? "ESMTPA"
				     : "ESMTP";

	if (*args) {
		reply(s, "501 5.5.4 Syntax: DATA");
		too_many_errors(s);
		return;
	}
	snprintf(client, sizeof(client), "%s", s->name);
	memset(&env, 0, sizeof(env));
	env.sender = s->sender;
	env.rcpts = (const char **)s->rcpts;
	env.nrcpts = s->nrcpts;
	env.client = client;
	env.helo = s->helo;
	env.proto = proto;
	env.auth_user = s->user ? s->auth_name : NULL;
	s->writer = spool_writer_begin(smtp_server_spool(s->srv), &env);
	if (s->writer == NULL) {
		log_warn("NOQUEUE: cannot create queue file for %s", s->name);
		reply(s, "451 4.3.0 Error: queue file write error");
		return;
	}
	if (s->user)
		log_info("%s: client=%s, sasl_username=%s", spool_writer_id(s->writer), s->name,
		    s->auth_name);
	else
		log_info("%s: client=%s", spool_writer_id(s->writer), s->name);

	/* Received: the trace header every relay prepends (RFC 5321 4.4). */
	buf = spool_writer_buffer(s->writer);
	size_t before = evbuffer_get_length(buf);
	rfc5322_date(date, sizeof(date));
	evbuffer_add_printf(buf, "Received: from %s (%s)\r\n\tby %s (sesrelay) with %s id %s",
	    s->helo, s->name, cf(s)->hostname, proto, spool_writer_id(s->writer));
	if (s->nrcpts == 1)
		evbuffer_add_printf(buf, "\r\n\tfor <%s>", s->rcpts[0]);
	evbuffer_add_printf(buf, "; %s\r\n", date);

	/* The limit applies to what we will hand SES, our header included. */
	if (s->data == NULL)
		s->data = xmalloc(sizeof(*s->data));
	smtp_data_init(s->data, cf(s)->max_message_size);
	s->data->size = evbuffer_get_length(buf) - before;
	s->write_error = 0;
	enter_state(s, S_DATA);
	if (s->data_timer) {
		struct timeval tv = {(time_t)cf(s)->data_timeout, 0};
		event_add(s->data_timer, &tv);
	}
	reply(s, "354 End data with <CR><LF>.<CR><LF>");
	s->ok[C_DATA]++;
}

static void cmd_rset(struct smtp_session *s, char *args)
{
	reset_transaction(s);
	reply(s, "250 2.0.0 Ok");
	s->ok[C_RSET]++;
}

static void cmd_noop(struct smtp_session *s, char *args)
{
	reply(s, "250 2.0.0 Ok");
	s->ok[C_NOOP]++;
}

static void cmd_quit(struct smtp_session *s, char *args)
{
	reply(s, "221 2.0.0 Bye");
	s->ok[C_QUIT]++;
	close_after_reply(s);
}

static void cmd_vrfy(struct smtp_session *s, char *args)
{
	/* A relay cannot verify mailboxes at SES; RFC 5321 3.5.3 says 252. */
	reply(s, "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery");
	s->ok[C_VRFY]++;
}

static void cmd_expn(struct smtp_session *s, char *args)
{
	reply(s, "502 5.5.1 Error: EXPN not supported");
	too_many_errors(s);
}

static void cmd_help(struct smtp_session *s, char *args)
{
	reply(s, "214-2.0.0 sesrelay: a relay to Amazon SES");
	reply(s, "214-2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP");
	reply(s, "214 2.0.0 See the sesrelay README");
	s->ok[C_HELP]++;
}

static void install_callbacks(struct smtp_session *s);

static void cmd_starttls(struct smtp_session *s, char *args)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);
	struct bufferevent *tbev;
	size_t junk;
	SSL *ssl;

	if (s->l->tls != CONF_TLS_STARTTLS || s->cfg->tls_ctx == NULL) {
		reply(s, "502 5.5.1 Error: STARTTLS is not enabled on this listener");
		too_many_errors(s);
		return;
	}
	if (s->tls) {
		reply(s, "503 5.5.1 Error: TLS already active");
		too_many_errors(s);
		return;
	}
	if (*args) {
		reply(s, "501 5.5.4 Syntax: STARTTLS");
		too_many_errors(s);
		return;
	}
	if ((ssl = SSL_new(s->cfg->tls_ctx)) == NULL) {
		char e[256];
		log_warnx("STARTTLS from %s: %s", s->name, tls_error(e, sizeof(e)));
		reply(s, "454 4.7.0 TLS not available due to local problem");
		return;
	}
	reply(s, "220 2.0.0 Ready to start TLS");
	/* CVE-2011-0411: nothing the client sent in clear after STARTTLS may be
	 * read as if it came through TLS. */
	if ((junk = evbuffer_get_length(in)) > 0) {
		log_info("discarding %zu byte(s) pipelined after STARTTLS from %s", junk, s->name);
		evbuffer_drain(in, junk);
	}
	tbev = bufferevent_openssl_filter_new(smtp_server_base(s->srv), s->bev, ssl,
	    BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
	if (tbev == NULL)
		fatalx("bufferevent_openssl_filter_new failed");
	bufferevent_openssl_set_allow_dirty_shutdown(tbev, 1);
	s->bev = tbev;
	s->tls = 1;
	/* Forget everything said in clear (RFC 3207 4.2). */
	reset_transaction(s);
	s->helo[0] = '\0';
	s->esmtp = 0;
	enter_state(s, S_INIT);
	install_callbacks(s);
	s->ok[C_STARTTLS]++;
}

/* --- AUTH (RFC 4954) -------------------------------------------------------- */

enum { AUTH_NONE, AUTH_PLAIN_WAIT, AUTH_LOGIN_USER, AUTH_LOGIN_PASS, AUTH_CHECKING };

struct auth_job {
	struct smtp_session *s;   /* NULL once the session went away */
	char *hash;               /* copy: the users file may be reloaded meanwhile */
	char *password;
	int ok;
};

static void auth_work(void *arg)
{
	struct auth_job *j = arg;
	j->ok = users_verify_hash(j->hash, j->password);
}

static void auth_job_free(struct auth_job *j)
{
	OPENSSL_cleanse(j->password, strlen(j->password));
	free(j->password);
	free(j->hash);
	free(j);
}

static void auth_penalty_over(evutil_socket_t fd, short what, void *arg)
{
	struct smtp_session *s = arg;

	reply(s, "535 5.7.8 Error: authentication failed");
	s->paused = 0;
	s->auth_step = AUTH_NONE;
	if (smtp_server_locked_out(s->srv, (struct sockaddr *)&s->peer)) {
		reply(s, "421 4.7.0 %s Error: too many failed logins from your address; try later",
		    cf(s)->hostname);
		close_after_reply(s);
		return;
	}
	if (!too_many_errors(s))
		process_input(s);
}

static void auth_done(void *arg)
{
	struct auth_job *j = arg;
	struct smtp_session *s = j->s;
	int ok = j->ok;

	auth_job_free(j);
	if (s == NULL)
		return; /* the client left while we were checking */
	s->auth_job = NULL;
	if (ok) {
		s->user = users_find(s->cfg->users, s->auth_name);
		s->auth_step = AUTH_NONE;
		s->paused = 0;
		smtp_server_auth_success(s->srv, (struct sockaddr *)&s->peer);
		log_info("%s: sasl_username=%s, authenticated", s->name, s->auth_name);
		reply(s, "235 2.7.0 Authentication successful");
		s->ok[C_AUTH]++;
		process_input(s);
		return;
	}
	s->auth_failures++;
	metrics.auth_failures++;
	smtp_server_auth_failure(s->srv, (struct sockaddr *)&s->peer);
	/* fail2ban: "authentication failed: user=NAME, client=IP" (client last,
	 * so a user name cannot forge it) */
	log_warnx("authentication failed: user=%s, client=%s", s->auth_name, s->ip);
	int delay = 1 << (s->auth_failures - 1 < 4 ? s->auth_failures - 1 : 4);
	if (delay > AUTH_DELAY_MAX)
		delay = AUTH_DELAY_MAX;
	struct timeval tv = {delay, 0};
	event_add(s->auth_timer, &tv); /* stays paused until the penalty is served */
}

/* Check NAME/PASSWORD off the loop; the session waits (paused). */
static void auth_check(struct smtp_session *s, const char *name, const char *password)
{
	const struct user *u = users_find(s->cfg->users, name);
	struct auth_job *j = xcalloc(1, sizeof(*j));

	snprintf(s->auth_name, sizeof(s->auth_name), "%s", name);
	j->s = s;
	j->hash = u ? xstrdup(user_hash(u)) : NULL;
	j->password = xstrdup(password);
	s->auth_job = j;
	s->auth_step = AUTH_CHECKING;
	s->paused = 1;
	workq_submit(smtp_server_workq(s->srv), auth_work, auth_done, j);
}

/* Decode base64 (RFC 4648, no line breaks) into out; length or -1. */
static int b64decode(const char *in, unsigned char *out, size_t outsz)
{
	size_t n = strlen(in);
	int len;

	if (n == 0 || n % 4 != 0 || n / 4 * 3 > outsz)
		return -1;
	len = EVP_DecodeBlock(out, (const unsigned char *)in, (int)n);
	if (len < 0)
		return -1;
	if (n >= 1 && in[n - 1] == '=')
		len--;
	if (n >= 2 && in[n - 2] == '=')
		len--;
	return len;
}

static void auth_syntax_error(struct smtp_session *s, const char *what)
{
	s->auth_step = AUTH_NONE;
	reply(s, "501 5.5.2 Error: %s", what);
	too_many_errors(s);
}

/* PLAIN: authzid \0 authcid \0 password (RFC 4616). */
static void auth_plain(struct smtp_session *s, const char *b64)
{
	unsigned char buf[AUTH_LINE_MAX];
	const char *authz, *user, *pass;
	int n = b64decode(b64, buf, sizeof(buf) - 1);

	if (n < 0) {
		auth_syntax_error(s, "invalid base64 in AUTH PLAIN");
		return;
	}
	buf[n] = '\0';
	authz = (const char *)buf;
	user = memchr(buf, '\0', (size_t)n);
	if (user == NULL || (pass = memchr(user + 1, '\0', (size_t)(n - (user + 1 - authz)))) == NULL) {
		OPENSSL_cleanse(buf, sizeof(buf));
		auth_syntax_error(s, "malformed AUTH PLAIN response");
		return;
	}
	user++;
	pass++;
	if (*authz && strcmp(authz, user) != 0) {
		OPENSSL_cleanse(buf, sizeof(buf));
		s->auth_step = AUTH_NONE;
		reply(s, "535 5.7.8 Error: authorization identity not supported");
		too_many_errors(s);
		return;
	}
	auth_check(s, user, pass);
	OPENSSL_cleanse(buf, sizeof(buf));
}

static void cmd_auth(struct smtp_session *s, char *args)
{
	char *mech = args, *initial;

	if (!auth_offered(s)) {
		if (s->user)
			reply(s, "503 5.5.1 Error: already authenticated");
		else if (s->l->auth != CONF_AUTH_OFF && !s->tls)
			reply(s, "530 5.7.0 Must issue a STARTTLS command first");
		else
			reply(s, "503 5.5.1 Error: authentication not enabled");
		too_many_errors(s);
		return;
	}
	if (s->state == S_INIT) {
		reply(s, "503 5.5.1 Error: send EHLO first");
		too_many_errors(s);
		return;
	}
	if (s->state != S_READY) {
		reply(s, "503 5.5.1 Error: MAIL transaction in progress");
		too_many_errors(s);
		return;
	}
	if ((initial = strchr(mech, ' ')) != NULL) {
		*initial++ = '\0';
		while (*initial == ' ')
			initial++;
	}
	if (strcasecmp(mech, "PLAIN") == 0) {
		if (initial == NULL || *initial == '\0') {
			s->auth_step = AUTH_PLAIN_WAIT;
			reply(s, "334 ");
		} else if (strcmp(initial, "=") == 0)
			auth_syntax_error(s, "empty AUTH PLAIN response");
		else
			auth_plain(s, initial);
	} else if (strcasecmp(mech, "LOGIN") == 0) {
		if (initial && *initial) {
			unsigned char u[256];
			int n = b64decode(initial, u, sizeof(u) - 1);
			if (n <= 0) {
				auth_syntax_error(s, "invalid base64 in AUTH LOGIN");
				return;
			}
			u[n] = '\0';
			snprintf(s->auth_login_user, sizeof(s->auth_login_user), "%s", u);
			s->auth_step = AUTH_LOGIN_PASS;
			reply(s, "334 UGFzc3dvcmQ6"); /* "Password:" */
		} else {
			s->auth_step = AUTH_LOGIN_USER;
			reply(s, "334 VXNlcm5hbWU6"); /* "Username:" */
		}
	} else {
		reply(s, "504 5.5.4 Error: unsupported authentication mechanism (PLAIN or LOGIN)");
		too_many_errors(s);
	}
}

/* A line sent in the middle of an AUTH dialogue. */
static void auth_continue(struct smtp_session *s, char *line)
{
	unsigned char buf[AUTH_LINE_MAX];
	int n;

	if (strcmp(line, "*") == 0) {
		s->auth_step = AUTH_NONE;
		reply(s, "501 5.7.0 Authentication aborted");
		return;
	}
	switch (s->auth_step) {
	case AUTH_PLAIN_WAIT:
		auth_plain(s, line);
		break;
	case AUTH_LOGIN_USER:
		n = b64decode(line, buf, 255);
		if (n <= 0) {
			auth_syntax_error(s, "invalid base64 in AUTH LOGIN");
			return;
		}
		buf[n] = '\0';
		snprintf(s->auth_login_user, sizeof(s->auth_login_user), "%.255s", (char *)buf);
		s->auth_step = AUTH_LOGIN_PASS;
		reply(s, "334 UGFzc3dvcmQ6");
		break;
	case AUTH_LOGIN_PASS:
		n = b64decode(line, buf, sizeof(buf) - 1);
		if (n < 0) {
			auth_syntax_error(s, "invalid base64 in AUTH LOGIN");
			return;
		}
		buf[n] = '\0';
		auth_check(s, s->auth_login_user, (const char *)buf);
		OPENSSL_cleanse(buf, sizeof(buf));
		break;
	}
}

static void cmd_bdat(struct smtp_session *s, char *args)
{
	/* CHUNKING is not advertised; a client using BDAT anyway cannot be
	 * resynchronised, so it is told and disconnected. */
	reply(s, "502 5.5.1 Error: BDAT (CHUNKING) not supported");
	close_after_reply(s);
}

static void cmd_forbidden(struct smtp_session *s, char *args)
{
	log_warnx("non-SMTP command from %s: %s", s->name, s->last_cmd);
	reply(s, "221 2.7.0 Error: I can break rules, too. Goodbye.");
	close_after_reply(s);
}

/* --- DATA ---------------------------------------------------------------- */

static void commit_done(void *arg, const char *id, int error)
{
	struct smtp_session *s = arg;
	size_t i;

	s->paused = 0;
	s->commit_pending = 0;
	if (error != 0) {
		errno = error;
		log_warn("%s: cannot make queue file durable; message refused", id);
		reply(s, "451 4.3.0 Error: queue file write error");
	} else {
		log_info("%s: from=<%s>, size=%llu, nrcpt=%zu (queue active)", id, s->sender,
		    (unsigned long long)s->data->size, s->nrcpts);
		if (log_level_enabled(LOG_LEVEL_DEBUG))
			for (i = 0; i < s->nrcpts; i++)
				log_debug("%s: to=<%s> queued", id, s->rcpts[i]);
		reply(s, "250 2.0.0 Ok: queued as %s", id);
		metrics.received++;
		metrics.received_bytes += s->data->size;
	}
	reset_transaction(s);
	if (s->dead) {
		session_close(s, NULL);
		return;
	}
	if (s->shutdown) {
		reply(s, "421 4.3.2 %s Service shutting down, closing transmission channel",
		    cf(s)->hostname);
		close_after_reply(s);
		return;
	}
	if (!s->in_commit_call)
		process_input(s);
}

/* Check one mailbox of the From: field (angle address, or the bare text). */
static const char *check_mailbox(struct smtp_session *s, const char *angle, const char *bare,
    int *found)
{
	static char why[1200];
	char addr[SMTP_PATH_MAX + 1], idwhy[900];
	const char *a = angle[0] ? angle : bare;
	size_t n;

	while (*a == ' ' || *a == '\t')
		a++;
	n = strlen(a);
	while (n > 0 && (a[n - 1] == ' ' || a[n - 1] == '\t'))
		n--;
	if (n == 0)
		return NULL; /* an empty group member: nothing to check */
	if (n > SMTP_PATH_MAX)
		return "550 5.7.1 Message refused: From: address too long";
	memcpy(addr, a, n);
	addr[n] = '\0';
	(*found)++;
	if (s->user != NULL && !users_sender_allowed(s->user, addr)) {
		snprintf(why, sizeof(why),
		    "550 5.7.1 Message refused: From: <%s> is not an address user %s may use", addr,
		    s->auth_name);
		return why;
	}
	if (ses_identity_refuse_sender(smtp_server_identity(s->srv), addr, idwhy,
		sizeof(idwhy))) {
		metrics.identity_refusals++;
		snprintf(why, sizeof(why), "550 5.7.1 Message refused: From: %s", idwhy);
		return why;
	}
	return NULL;
}

/* SES signs anything from a verified domain: an authenticated user's From:
 * must be one of its own addresses, like its MAIL FROM.  And SES refuses a
 * From: that is not a verified identity: when that is known (ses_identity.h),
 * refuse it now for every client rather than queue a certain bounce.  The
 * field is split into mailboxes at top-level commas; quoted strings and
 * comments are skipped; a mailbox's address is its <...> part, else its bare
 * text.  A missing or repeated From: is refused only for authenticated users
 * (SPEC 4); for others SES decides. */
static const char *check_from_header(struct smtp_session *s)
{
	char angle[SMTP_PATH_MAX + 2], bare[SMTP_PATH_MAX + 2];
	size_t na = 0, nb = 0;
	const char *p, *why;
	int found = 0, in_angle = 0, depth;

	if (s->user == NULL &&
	    (s->data->has_from != 1 || !ses_identity_active(smtp_server_identity(s->srv))))
		return NULL; /* nothing to check for this client */
	if (s->data->has_from != 1)
		return s->data->has_from == 0 ? "550 5.7.1 Message refused: no From: header"
					      : "550 5.7.1 Message refused: more than one From: header";
	angle[0] = bare[0] = '\0';
	for (p = s->data->from;; p++) {
		if (*p == '\0' || (*p == ',' && !in_angle)) {
			angle[na] = bare[nb] = '\0';
			if ((why = check_mailbox(s, angle, bare, &found)) != NULL)
				return why;
			na = nb = 0;
			if (*p == '\0')
				break;
			continue;
		}
		if (*p == '"' && !in_angle) {
			for (p++; *p && *p != '"'; p++)
				if (*p == '\\' && p[1])
					p++;
			if (*p == '\0')
				p--;
			nb = 0; /* a display name, not an address */
			continue;
		}
		if (*p == '(' && !in_angle) {
			for (depth = 0; *p; p++) {
				if (*p == '(')
					depth++;
				else if (*p == ')' && --depth == 0)
					break;
			}
			if (*p == '\0')
				p--;
			continue;
		}
		if (*p == '<') {
			in_angle = 1;
			na = 0;
			nb = 0;
			continue;
		}
		if (*p == '>') {
			in_angle = 0;
			continue;
		}
		if (in_angle) {
			if (na < SMTP_PATH_MAX + 1)
				angle[na++] = *p;
		} else if (*p == ':') {
			nb = 0; /* "group:" */
		} else if (*p == ';') {
			;
		} else if (nb < SMTP_PATH_MAX + 1)
			bare[nb++] = *p;
	}
	if (found == 0 && s->user != NULL)
		return "550 5.7.1 Message refused: no address in the From: header";
	return NULL;
}

static void end_of_data(struct smtp_session *s)
{
	const char *verdict = smtp_data_verdict(s->data);
	const char *id = spool_writer_id(s->writer);

	if (s->data_timer)
		event_del(s->data_timer);
	if (verdict == NULL && s->write_error) {
		errno = s->write_error;
		log_warn("%s: queue file write error", id);
		verdict = "451 4.3.0 Error: queue file write error";
	}
	if (verdict == NULL)
		verdict = check_from_header(s);
	if (verdict != NULL) {
		log_info("%s: reject: DATA from %s: %s; from=<%s> nrcpt=%zu", id, s->name, verdict,
		    s->sender, s->nrcpts);
		reply(s, "%s", verdict);
		metrics.rejected++;
		s->ok[C_DATA]--;
		reset_transaction(s);
		return;
	}
	struct spool_writer *w = s->writer;
	s->writer = NULL;
	s->paused = 1;
	s->commit_pending = 1;
	enter_state(s, S_COMMIT);
	s->in_commit_call = 1;
	spool_writer_commit(w, commit_done, s); /* may call back at once on error */
	s->in_commit_call = 0;
}

/* Feed what input we have to the DATA parser.  Returns 1 at end of data. */
/* After the header section, before its blank line: add what a submission
 * must carry (RFC 6409 8.2, 8.3), then the blank line the parser held back. */
static void end_of_headers(struct smtp_session *s, struct evbuffer *out)
{
	size_t before;
	char date[64];

	if (out == NULL)
		return;
	before = evbuffer_get_length(out);
	if (s->user != NULL && s->writer != NULL) {
		if (!s->data->has_message_id)
			evbuffer_add_printf(out, "Message-ID: <%s.%lld@%s>\r\n",
			    spool_writer_id(s->writer), (long long)time(NULL), cf(s)->hostname);
		if (!s->data->has_date) {
			rfc5322_date(date, sizeof(date));
			evbuffer_add_printf(out, "Date: %s\r\n", date);
		}
	}
	evbuffer_add(out, "\r\n", 2);
	s->data->size += evbuffer_get_length(out) - before;
	if (s->data->size > s->data->max_size)
		s->data->errors |= SMTP_DATA_TOO_BIG;
}

/* Feed what input we have to the DATA parser.  Returns 1 at end of data. */
static int feed_data(struct smtp_session *s, struct evbuffer *in)
{
	struct evbuffer *out = s->write_error ? NULL : spool_writer_buffer(s->writer);
	struct evbuffer_iovec v[8];
	int n, i, done = 0;
	size_t used = 0;

	n = evbuffer_peek(in, -1, NULL, v, 8);
	for (i = 0; i < n && i < 8 && !done; i++) {
		size_t off = 0;
		while (off < v[i].iov_len && !done) {
			off += smtp_data_feed(s->data, (unsigned char *)v[i].iov_base + off,
			    v[i].iov_len - off, s->data->errors ? NULL : out, &done);
			if (s->data->header_end) {
				s->data->header_end = 0;
				end_of_headers(s, s->data->errors ? NULL : out);
			}
		}
		used += off;
	}
	evbuffer_drain(in, used);
	if (!s->write_error && s->data->errors == 0 &&
	    spool_writer_flush(s->writer, 0) == -1) {
		/* Keep reading to the end of data so the session stays in sync,
		 * then answer 451; the partial file goes now. */
		s->write_error = errno ? errno : EIO;
		evbuffer_drain(spool_writer_buffer(s->writer), (size_t)-1);
		spool_writer_discard(s->writer);
	}
	if (s->data->errors != 0)
		evbuffer_drain(spool_writer_buffer(s->writer), (size_t)-1);
	return done;
}

/* --- the input loop ------------------------------------------------------ */

static const struct smtp_cmd *lookup(const char *verb, enum cmd_index *idx)
{
	int i;

	for (i = 0; i < C_FORBIDDEN; i++)
		if (strcmp(commands[i].verb, verb) == 0) {
			*idx = (enum cmd_index)i;
			return &commands[i];
		}
	for (i = 0; forbidden_verbs[i]; i++)
		if (strcmp(forbidden_verbs[i], verb) == 0) {
			*idx = C_FORBIDDEN;
			return &commands[C_FORBIDDEN];
		}
	return NULL;
}

static void dispatch(struct smtp_session *s, char *line, struct evbuffer *in)
{
	const struct smtp_cmd *cmd;
	enum cmd_index idx;
	char *verb, *args;

	smtp_parse_verb(line, &verb, &args);
	cmd = lookup(verb, &idx);
	if (cmd == NULL) {
		s->last_cmd = "unknown";
		reply(s, "502 5.5.2 Error: command not recognized");
		too_many_errors(s);
		return;
	}
	s->last_cmd = cmd->verb ? cmd->verb : verb;
	s->total[idx]++;
	if ((cmd->flags & CMD_NEED_HELO) && s->state == S_INIT) {
		reply(s, "503 5.5.1 Error: send HELO/EHLO first");
		too_many_errors(s);
		return;
	}
	if ((cmd->flags & CMD_NEED_MAIL) && s->state == S_READY) {
		reply(s, "503 5.5.1 Error: need MAIL command");
		too_many_errors(s);
		return;
	}
	if ((cmd->flags & CMD_NEED_RCPT) && s->state == S_MAIL) {
		reply(s, "554 5.5.1 Error: no valid recipients");
		too_many_errors(s);
		return;
	}
	cmd->fn(s, args);
	if ((cmd->flags & CMD_LAST) && idx != C_DATA && idx != C_QUIT &&
	    evbuffer_get_length(in) > 0 && !s->pipelining_logged) {
		s->pipelining_logged = 1;
		log_info("improper command pipelining after %s from %s", s->last_cmd, s->name);
	}
}

/* Take one command line from in.  1: line in buf; 0: need more; -1: too long
 * (already answered and skipped). */
static int next_line(struct smtp_session *s, struct evbuffer *in, char *buf, size_t bufsz,
    size_t *linelen)
{
	struct evbuffer_ptr eol;
	size_t eol_len = 0, len;

	eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
	if (eol.pos < 0) {
		if (evbuffer_get_length(in) < SMTP_CMD_LINE_MAX)
			return 0;
		/* Too long and still going: answer once, then skip to the LF. */
		reply(s, "500 5.5.2 Error: line too long (over %d octets)", SMTP_CMD_LINE_MAX);
		log_info("command line too long from %s", s->name);
		evbuffer_drain(in, evbuffer_get_length(in));
		return -2; /* the rest of the line is discarded as it arrives */
	}
	len = (size_t)eol.pos;
	if (len + eol_len > SMTP_CMD_LINE_MAX) {
		evbuffer_drain(in, len + eol_len);
		reply(s, "500 5.5.2 Error: line too long (over %d octets)", SMTP_CMD_LINE_MAX);
		log_info("command line too long from %s", s->name);
		return -1;
	}
	ASSERT(len < bufsz);
	evbuffer_remove(in, buf, len);
	evbuffer_drain(in, eol_len);
	buf[len] = '\0';
	*linelen = len;
	return 1;
}

static int skipping_long_line(struct smtp_session *s, struct evbuffer *in);

static int has_control(const char *line, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (((unsigned char)line[i] < 0x20 && line[i] != '\t') || line[i] == 0x7f)
			return 1;
	return 0;
}

static void greet_client(struct smtp_session *s)
{
	log_info("connect from %s", s->name);
	reply(s, "220 %s ESMTP sesrelay", cf(s)->hostname);
}

static void set_peer(struct smtp_session *s, const struct sockaddr *peer, socklen_t len)
{
	memcpy(&s->peer, peer, len < sizeof(s->peer) ? len : sizeof(s->peer));
	netaddr_ntop(peer, s->ip, sizeof(s->ip));
	/* No reverse DNS: names are unverifiable and lookups cost a round trip. */
	snprintf(s->name, sizeof(s->name), "%s[%s]",
	    netaddr_is_loopback(peer) ? "localhost" : "unknown", s->ip);
	s->trusted = netaddr_match(s->l->networks, s->l->nnetworks, peer);
}

/* The PROXY header (listener with proxy_protocol = yes): the real client
 * address replaces the proxy's for relay_networks, caps and logs.  1: done,
 * the session goes on; 0: need more bytes; -1: the session is closing. */
static int proxy_step(struct smtp_session *s, struct evbuffer *in)
{
	struct proxy_result pr;
	size_t len = evbuffer_get_length(in);
	const char *why;
	int r;

	if (len == 0)
		return 0;
	if (len > PROXY_HEADER_MAX)
		len = PROXY_HEADER_MAX;
	r = proxy_parse(evbuffer_pullup(in, (ev_ssize_t)len), len, &pr);
	if (r == 0)
		return 0;
	if (r < 0) {
		log_warnx("connection from %s refused: no valid PROXY header (%s); is the proxy "
			  "configured to send one (HAProxy: send-proxy or send-proxy-v2)?",
		    s->name, pr.error);
		session_close(s, NULL);
		return -1;
	}
	evbuffer_drain(in, (size_t)r);
	if (!pr.local)
		set_peer(s, (struct sockaddr *)&pr.src, pr.srclen);
	if ((r = smtp_server_admit(s->srv, s->l, (struct sockaddr *)&s->peer, &why)) < 0) {
		if (s->l->tls != CONF_TLS_IMPLICIT)
			reply(s, "421 4.7.0 %s Error: %s", cf(s)->hostname, why);
		enter_state(s, S_INIT);
		close_after_reply(s);
		return -1;
	}
	s->counted_per_ip = r;
	enter_state(s, S_INIT);
	if (s->l->tls == CONF_TLS_IMPLICIT && s->cfg->tls_ctx != NULL) {
		struct bufferevent *under = s->bev;
		SSL *ssl = SSL_new(s->cfg->tls_ctx);
		if (ssl == NULL)
			fatalx("SSL_new failed");
		s->bev = bufferevent_openssl_filter_new(smtp_server_base(s->srv), under, ssl,
		    BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
		if (s->bev == NULL)
			fatalx("bufferevent_openssl_filter_new failed");
		bufferevent_openssl_set_allow_dirty_shutdown(s->bev, 1);
		s->tls = 1;
		install_callbacks(s);
		greet_client(s);
		/* the ClientHello may already sit in the buffer behind the header */
		if (evbuffer_get_length(bufferevent_get_input(under)) > 0)
			bufferevent_trigger(under, EV_READ, 0);
		return -1; /* s->bev changed: leave this input loop */
	}
	install_callbacks(s);
	greet_client(s);
	return 1;
}

static void process_input(struct smtp_session *s)
{
	struct evbuffer *in, *out;
	char line[SMTP_CMD_LINE_MAX + 1];
	size_t len = 0;

	while (!s->paused && !s->closing && !s->dead) {
		/* fetched each time: STARTTLS replaces the bufferevent */
		in = bufferevent_get_input(s->bev);
		out = bufferevent_get_output(s->bev);
		if (evbuffer_get_length(out) > OUTPUT_MAX)
			break; /* resumed from the write callback */
		if (s->state == S_PROXY) {
			if (proxy_step(s, in) != 1)
				break;
			continue;
		}
		if (s->state == S_DATA) {
			if (evbuffer_get_length(in) == 0)
				break;
			if (feed_data(s, in))
				end_of_data(s);
			continue;
		}
		if (skipping_long_line(s, in))
			break;
		int r = next_line(s, in, line, sizeof(line), &len);
		if (r == 0)
			break;
		if (r < 0) {
			if (r == -2)
				s->skip_to_lf = 1;
			s->auth_step = 0;
			if (too_many_errors(s))
				break;
			continue;
		}
		/* NUL, CR or other control bytes in a command are never legitimate;
		 * a NUL must not cut the command short and let the prefix run. */
		if (has_control(line, len)) {
			reply(s, "500 5.5.2 Error: bad syntax (control character in command)");
			s->auth_step = 0;
			if (too_many_errors(s))
				break;
			continue;
		}
		if (s->auth_step != 0) {
			auth_continue(s, line);
			OPENSSL_cleanse(line, sizeof(line)); /* it may hold a password */
			continue;
		}
		dispatch(s, line, in);
		if (s->last_cmd && strcmp(s->last_cmd, "AUTH") == 0)
			OPENSSL_cleanse(line, sizeof(line));
	}
}

/* While in skip mode, discard input through the next LF. */
static int skipping_long_line(struct smtp_session *s, struct evbuffer *in)
{
	struct evbuffer_ptr p;

	if (!s->skip_to_lf)
		return 0;
	p = evbuffer_search(in, "\n", 1, NULL);
	if (p.pos < 0) {
		evbuffer_drain(in, evbuffer_get_length(in));
		return 1;
	}
	evbuffer_drain(in, (size_t)p.pos + 1);
	s->skip_to_lf = 0;
	return 0;
}

/* --- connection events --------------------------------------------------- */

static void on_read(struct bufferevent *bev, void *arg)
{
	process_input(arg);
}

static void on_write(struct bufferevent *bev, void *arg)
{
	struct smtp_session *s = arg;

	if (s->state == S_CLOSING) {
		if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
			session_close(s, NULL);
		return;
	}
	/* output drained below the cap: pipelined input may go on */
	process_input(s);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct smtp_session *s = arg;
	char why[300];

	if (what & BEV_EVENT_CONNECTED) {
		SSL *ssl = bufferevent_openssl_get_ssl(bev);
		if (ssl)
			log_info("TLS connection established from %s: %s with cipher %s", s->name,
			    SSL_get_version(ssl), SSL_get_cipher_name(ssl));
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		if (s->commit_pending) {
			/* our disk is slow, not the client: keep waiting */
			bufferevent_enable(bev, EV_READ | EV_WRITE);
			return;
		}
		if (s->state == S_CLOSING) {
			session_close(s, "timeout while sending the last reply");
			return;
		}
		if (s->state == S_PROXY) {
			log_warnx("connection from %s closed: no PROXY header within %d s", s->name,
			    PROXY_TIMEOUT_S);
			session_close(s, NULL);
			return;
		}
		log_info("timeout after %s from %s", s->last_cmd ? s->last_cmd : "CONNECT", s->name);
		reset_transaction(s);
		reply(s, "421 4.4.2 %s Error: timeout exceeded", cf(s)->hostname);
		close_after_reply(s);
		return;
	}
	unsigned long e = s->tls ? bufferevent_get_openssl_error(bev) : 0;
	if (e != 0) {
		char es[200];
		ERR_error_string_n(e, es, sizeof(es));
		snprintf(why, sizeof(why), "TLS error after %s (%s)",
		    s->last_cmd ? s->last_cmd : "CONNECT", es);
	} else if (s->state == S_DATA || s->state == S_COMMIT)
		snprintf(why, sizeof(why), "lost connection after DATA (%llu bytes)",
		    (unsigned long long)s->data->size);
	else
		snprintf(why, sizeof(why), "lost connection after %s",
		    s->last_cmd ? s->last_cmd : "CONNECT");
	session_close(s, s->state == S_CLOSING ? NULL : why);
}

static void on_session_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct smtp_session *s = arg;

	log_info("session time limit exceeded for %s", s->name);
	if (s->commit_pending) {
		s->shutdown = 1; /* answer the commit, then close */
		return;
	}
	reset_transaction(s);
	reply(s, "421 4.4.2 %s Error: session time limit exceeded", cf(s)->hostname);
	close_after_reply(s);
}

static void close_after_reply(struct smtp_session *s)
{
	struct timeval tv = {CLOSE_FLUSH_S, 0};

	if (s->dead || s->state == S_CLOSING)
		return;
	enter_state(s, S_CLOSING);
	s->closing = 1;
	bufferevent_disable(s->bev, EV_READ);
	bufferevent_set_timeouts(s->bev, NULL, &tv);
	bufferevent_setwatermark(s->bev, EV_WRITE, 0, 0);
	if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
		session_close(s, NULL);
}

static void reap(evutil_socket_t fd, short what, void *arg)
{
	struct smtp_session *s = arg;
	size_t i;

	if (s->bev)
		bufferevent_free(s->bev);
	for (i = 0; i < s->nrcpts; i++)
		free(s->rcpts[i]);
	free(s->rcpts);
	if (s->writer)
		spool_writer_abort(s->writer);
	free(s->data);
	event_free(s->session_timer);
	event_free(s->data_timer);
	event_free(s->auth_timer);
	event_free(s->reaper);
	if (s->auth_job)
		s->auth_job->s = NULL; /* auth_done() frees it */
	smtp_server_session_gone(s->srv, s, (struct sockaddr *)&s->peer, s->counted_per_ip);
	smtp_config_unref(s->cfg);
	free(s);
}

static void log_disconnect(struct smtp_session *s)
{
	static const char *names[C_COUNT] = {"ehlo", "helo", "mail", "rcpt", "data", "rset",
	    "noop", "quit", "vrfy", "expn", "help", "starttls", "auth", "bdat", "forbidden"};
	char stats[400];
	size_t len = 0;
	unsigned all = 0, allok = 0;
	int i;

	stats[0] = '\0';
	for (i = 0; i < C_COUNT; i++) {
		if (s->total[i] == 0)
			continue;
		all += s->total[i];
		allok += s->ok[i];
		if (s->ok[i] == s->total[i])
			len += (size_t)snprintf(stats + len, sizeof(stats) - len, " %s=%u", names[i],
			    s->total[i]);
		else
			len += (size_t)snprintf(stats + len, sizeof(stats) - len, " %s=%u/%u",
			    names[i], s->ok[i], s->total[i]);
		if (len >= sizeof(stats))
			break;
	}
	if (all == allok)
		log_info("disconnect from %s%s commands=%u", s->name, stats, all);
	else
		log_info("disconnect from %s%s commands=%u/%u", s->name, stats, allok, all);
}

static void session_close(struct smtp_session *s, const char *why)
{
	if (!s->dead) {
		if (why)
			log_info("%s from %s", why, s->name);
		log_disconnect(s);
		s->dead = 1;
		s->closing = 1;
		bufferevent_disable(s->bev, EV_READ | EV_WRITE);
		bufferevent_setcb(s->bev, NULL, NULL, NULL, NULL);
		event_del(s->session_timer);
		if (s->data_timer)
			event_del(s->data_timer);
		event_del(s->auth_timer);
		if (s->writer) {
			log_info("%s: removed (client disconnected before end of data)",
			    spool_writer_id(s->writer));
			spool_writer_abort(s->writer);
			s->writer = NULL;
		}
	}
	if (s->commit_pending)
		return; /* commit_done() comes back and finishes the job */
	event_active(s->reaper, EV_TIMEOUT, 0);
}

/* --- lifecycle ----------------------------------------------------------- */

/* Callbacks, caps and timeouts on s->bev (again after STARTTLS). */
static void install_callbacks(struct smtp_session *s)
{
	struct timeval tv = {(time_t)cf(s)->smtp_timeout, 0};

	bufferevent_setcb(s->bev, on_read, on_write, on_event, s);
	bufferevent_setwatermark(s->bev, EV_READ, 0, INPUT_MAX);
	bufferevent_setwatermark(s->bev, EV_WRITE, OUTPUT_MAX / 2, 0);
	bufferevent_set_max_single_read(s->bev, READ_MAX);
	bufferevent_set_timeouts(s->bev, &tv, &tv);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

struct smtp_session *smtp_session_new(struct smtp_server *srv, struct smtp_config *cfg,
    const struct conf_listener *l, int fd, const struct sockaddr *peer, socklen_t peerlen,
    int counted_per_ip)
{
	struct event_base *base = smtp_server_base(srv);
	struct smtp_session *s = xcalloc(1, sizeof(*s));
	struct timeval tv = {0, 0};

	s->srv = srv;
	s->cfg = smtp_config_ref(cfg);
	s->l = l;
	s->counted_per_ip = counted_per_ip;
	set_peer(s, peer, peerlen);
	s->state = l->proxy_protocol ? S_PROXY : S_INIT;

	if (l->tls == CONF_TLS_IMPLICIT && cfg->tls_ctx != NULL && !l->proxy_protocol) {
		SSL *ssl = SSL_new(cfg->tls_ctx);
		if (ssl == NULL)
			fatalx("SSL_new failed");
		s->bev = bufferevent_openssl_socket_new(base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
		    BEV_OPT_CLOSE_ON_FREE);
		if (s->bev)
			bufferevent_openssl_set_allow_dirty_shutdown(s->bev, 1);
		s->tls = 1;
	} else
		s->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (s->bev == NULL)
		fatalx("bufferevent_socket_new failed");
	install_callbacks(s);
	if (s->state == S_PROXY) {
		struct timeval ptv = {PROXY_TIMEOUT_S, 0};
		bufferevent_set_timeouts(s->bev, &ptv, &ptv);
	}

	s->reaper = event_new(base, -1, 0, reap, s);
	s->session_timer = event_new(base, -1, 0, on_session_timeout, s);
	s->auth_timer = event_new(base, -1, 0, auth_penalty_over, s);
	s->data_timer = event_new(base, -1, 0, on_data_timeout, s);
	tv.tv_sec = (time_t)cf(s)->session_timeout;
	event_add(s->session_timer, &tv);

	if (s->state != S_PROXY)
		greet_client(s);
	return s;
}

void smtp_session_shutdown(struct smtp_session *s)
{
	if (s->dead || s->state == S_CLOSING)
		return;
	s->shutdown = 1;
	if (s->state == S_DATA || s->state == S_COMMIT)
		return; /* answer this message first */
	reset_transaction(s);
	reply(s, "421 4.3.2 %s Service shutting down, closing transmission channel",
	    cf(s)->hostname);
	close_after_reply(s);
}

void smtp_session_abort(struct smtp_session *s)
{
	if (s->dead)
		return;
	session_close(s, "shutdown: closing session");
}

struct smtp_session *smtp_session_next(struct smtp_session *s)
{
	return s->next;
}

void smtp_session_link(struct smtp_session **head, struct smtp_session *s)
{
	s->prev = NULL;
	s->next = *head;
	if (*head)
		(*head)->prev = s;
	*head = s;
}

void smtp_session_unlink(struct smtp_session **head, struct smtp_session *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else
		*head = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->next = s->prev = NULL;
}
