/*
 * smtp_session.h - one SMTP server conversation (RFC 5321 + extensions).
 *
 * The session is an explicit state machine driven by a command table; the
 * DATA phase streams into the spool through smtp_data.c.  The session never
 * frees itself inside one of its own callbacks: it asks the reaper to.
 */
#ifndef SESRELAY_SMTP_SESSION_H
#define SESRELAY_SMTP_SESSION_H

#include <sys/socket.h>

struct smtp_server;
struct smtp_config;
struct conf_listener;
struct smtp_session;

struct smtp_session *smtp_session_new(struct smtp_server *srv, struct smtp_config *cfg,
    const struct conf_listener *l, int fd, const struct sockaddr *peer, socklen_t peerlen,
    int counted_per_ip);
/* Server shutdown: idle sessions get 421 and close now; busy ones finish. */
void smtp_session_shutdown(struct smtp_session *s);
/* Close at once (grace period over). */
void smtp_session_abort(struct smtp_session *s);

/* Intrusive list used by smtp_server.c */
struct smtp_session *smtp_session_next(struct smtp_session *s);
void smtp_session_link(struct smtp_session **head, struct smtp_session *s);
void smtp_session_unlink(struct smtp_session **head, struct smtp_session *s);

#endif
