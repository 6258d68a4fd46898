/*
 * smtp_server.h - listeners, accepting, connection caps, the session list.
 *
 * Owns the listening sockets (bound before privileges are dropped), the
 * global and per-IP connection counts, the reference-counted configuration
 * that sessions hold (so a SIGHUP reload never changes the rules under a
 * session in progress) and graceful shutdown.  Sessions themselves live in
 * smtp_session.c.
 */
#ifndef SESRELAY_SMTP_SERVER_H
#define SESRELAY_SMTP_SERVER_H

#include <stddef.h>
#include <sys/socket.h>

struct conf;
struct conf_listener;
struct event_base;
struct spool;
struct users;
struct workq;
struct ssl_ctx_st;
struct smtp_server;
struct smtp_session;

/* A configuration shared by the sessions started under it. */
struct smtp_config {
	struct conf *conf;
	struct ssl_ctx_st *tls_ctx;   /* SSL_CTX when a listener uses TLS */
	struct users *users;          /* [users] file, when set */
	int refs;
};

/* Loads the TLS certificate and the users file too; NULL with err on error
 * (conf is freed then). */
struct smtp_server *smtp_server_new(struct event_base *base, struct conf *conf, char *err,
    size_t errlen);
/* Bind and listen on every configured address (needs privileges for <1024). */
int smtp_server_bind(struct smtp_server *srv, char *err, size_t errlen);
/* Start accepting, queueing into sp. */
void smtp_server_start(struct smtp_server *srv, struct spool *sp);
/* Swap in a new configuration: new sessions use it, old ones keep theirs.
 * Listeners whose address is unchanged keep their socket. */
int smtp_server_reload(struct smtp_server *srv, struct conf *conf, char *err, size_t errlen);
/* Stop accepting; idle sessions get 421 now, busy ones get `grace` seconds.
 * done() runs once every session is gone. */
void smtp_server_shutdown(struct smtp_server *srv, int grace, void (*done)(void *), void *arg);
void smtp_server_free(struct smtp_server *srv);
size_t smtp_server_nsessions(const struct smtp_server *srv);

/* What SES would refuse (ses/ses_identity.h), for fail-fast replies at MAIL,
 * RCPT and end of data; NULL: check nothing.  Not owned. */
struct ses_identity;
void smtp_server_set_identity(struct smtp_server *srv, struct ses_identity *id);
struct ses_identity *smtp_server_identity(struct smtp_server *srv);

/* For smtp_session.c */
struct smtp_config *smtp_config_ref(struct smtp_config *c);
void smtp_config_unref(struct smtp_config *c);
void smtp_server_session_gone(struct smtp_server *srv, struct smtp_session *s,
    const struct sockaddr *peer, int counted_per_ip);
struct spool *smtp_server_spool(struct smtp_server *srv);
struct event_base *smtp_server_base(struct smtp_server *srv);
int smtp_server_stopping(const struct smtp_server *srv);
struct workq *smtp_server_workq(struct smtp_server *srv);
/* Brute-force defence: count a failed/successful AUTH from sa's address;
 * locked_out() is 1 while that address is refused. */
void smtp_server_auth_failure(struct smtp_server *srv, const struct sockaddr *sa);
void smtp_server_auth_success(struct smtp_server *srv, const struct sockaddr *sa);
int smtp_server_locked_out(struct smtp_server *srv, const struct sockaddr *sa);
/* The per-address checks (lock-out, max_connections_per_ip) for a client:
 * 1 admitted and counted, 0 admitted uncounted (trusted network), -1 refused
 * with the reason in *why.  Called at accept, or after the PROXY header. */
int smtp_server_admit(struct smtp_server *srv, const struct conf_listener *cl,
    const struct sockaddr *sa, const char **why);

#endif
