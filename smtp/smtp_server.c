/*
 * smtp_server.c - listening sockets, accept, connection caps, shutdown.
 *
 * Caps: max_connections overall and max_connections_per_ip per client
 * address (clients in the listener's relay_networks are exempt from the
 * per-IP cap: a LAN's NAT box or a local app pool must not lock itself out).
 * A connection over a cap gets "421 4.7.0" written straight to the socket and
 * is closed; it never becomes a session.
 *
 * Per-IP counts live in a small chained hash keyed by the address bytes
 * (IPv4-mapped IPv6 folded to IPv4).
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>

#include <openssl/ssl.h>

#include "conf/conf.h"
#include "relay/log.h"
#include "relay/metrics.h"
#include "relay/netaddr.h"
#include "relay/users.h"
#include "relay/util.h"
#include "relay/workq.h"
#include "smtp/smtp_server.h"
#include "smtp/smtp_session.h"
#include "smtp/tls.h"

#define IPTABLE_SIZE 4096
#define LISTEN_BACKLOG 4096
#define ACCEPT_PAUSE_S 1
#define AUTH_THREADS 2
/* Brute-force defence: this many failed AUTHs from one address within the
 * window lock the address out (421 at connect) for AUTH_LOCK_S. */
#define AUTH_FAIL_LIMIT 10
#define AUTH_FAIL_WINDOW_S 600
#define AUTH_LOCK_S 900
#define AUTH_TABLE_PRUNE 10000

struct authfail {
	struct authfail *next;
	unsigned char key[17];
	int failures;
	time_t window_start;
	time_t locked_until;
};

struct ipcount {
	struct ipcount *next;
	unsigned char key[17];
	int count;
};

struct listener {
	struct smtp_server *srv;
	struct conf_listener *cl;       /* in srv->cfg */
	int fd;
	struct evconnlistener *evl;
	struct event *resume;           /* re-enable after EMFILE */
};

struct smtp_server {
	struct event_base *base;
	struct smtp_config *cfg;
	struct spool *spool;
	struct listener *listeners;
	size_t nlisteners;
	struct smtp_session *sessions;
	size_t nsessions;
	struct ipcount *iptable[IPTABLE_SIZE];
	struct authfail *authtable[IPTABLE_SIZE];
	size_t nauth;
	struct workq *workq;
	struct ses_identity *identity; /* SES's verified identities, or NULL */
	int stopping;
	struct event *grace_timer;
	void (*stopped)(void *);
	void *stopped_arg;
};

/* --- configuration references ------------------------------------------- */

/* conf plus what is loaded from files it names; NULL with err on error (conf
 * is not freed then). */
static struct smtp_config *config_new(struct conf *conf, char *err, size_t errlen)
{
	struct smtp_config *c = xcalloc(1, sizeof(*c));
	size_t i;
	int need_tls = 0;

	for (i = 0; i < conf->nlisteners; i++)
		need_tls |= conf->listeners[i].tls != CONF_TLS_NONE;
	if (need_tls &&
	    (c->tls_ctx = tls_server_ctx(conf->tls_certificate, conf->tls_private_key, err,
		 errlen)) == NULL) {
		free(c);
		return NULL;
	}
	if (conf->users_file && (c->users = users_load(conf->users_file, err, errlen)) == NULL) {
		SSL_CTX_free(c->tls_ctx);
		free(c);
		return NULL;
	}
	c->conf = conf;
	c->refs = 1;
	return c;
}

struct smtp_config *smtp_config_ref(struct smtp_config *c)
{
	c->refs++;
	return c;
}

void smtp_config_unref(struct smtp_config *c)
{
	if (c == NULL || --c->refs > 0)
		return;
	conf_free(c->conf);
	SSL_CTX_free(c->tls_ctx);
	users_free(c->users);
	free(c);
}

/* --- per-IP counts ------------------------------------------------------- */

static unsigned ip_hash(const unsigned char key[17])
{
	unsigned h = 2166136261u; /* FNV-1a */
	int i;

	for (i = 0; i < 17; i++)
		h = (h ^ key[i]) * 16777619u;
	return h % IPTABLE_SIZE;
}

static struct ipcount **ip_find(struct smtp_server *srv, const unsigned char key[17])
{
	struct ipcount **pp = &srv->iptable[ip_hash(key)];

	while (*pp && memcmp((*pp)->key, key, 17) != 0)
		pp = &(*pp)->next;
	return pp;
}

static int ip_count(struct smtp_server *srv, const struct sockaddr *sa)
{
	unsigned char key[17];
	struct ipcount **pp;

	if (netaddr_key(sa, key) == -1)
		return 0;
	pp = ip_find(srv, key);
	return *pp ? (*pp)->count : 0;
}

static void ip_add(struct smtp_server *srv, const struct sockaddr *sa, int delta)
{
	unsigned char key[17];
	struct ipcount **pp, *e;

	if (netaddr_key(sa, key) == -1)
		return;
	pp = ip_find(srv, key);
	if (*pp == NULL) {
		ASSERT(delta > 0);
		e = xcalloc(1, sizeof(*e));
		memcpy(e->key, key, 17);
		*pp = e;
	}
	e = *pp;
	e->count += delta;
	ASSERT(e->count >= 0);
	if (e->count == 0) {
		*pp = e->next;
		free(e);
	}
}

/* --- failed logins per address ------------------------------------------ */

static struct authfail **auth_find(struct smtp_server *srv, const unsigned char key[17])
{
	struct authfail **pp = &srv->authtable[ip_hash(key)];

	while (*pp && memcmp((*pp)->key, key, 17) != 0)
		pp = &(*pp)->next;
	return pp;
}

static void auth_prune(struct smtp_server *srv, time_t now)
{
	size_t i;

	for (i = 0; i < IPTABLE_SIZE; i++) {
		struct authfail **pp = &srv->authtable[i];
		while (*pp) {
			struct authfail *a = *pp;
			if (a->locked_until <= now && now - a->window_start > AUTH_FAIL_WINDOW_S) {
				*pp = a->next;
				free(a);
				srv->nauth--;
			} else
				pp = &a->next;
		}
	}
}

void smtp_server_auth_failure(struct smtp_server *srv, const struct sockaddr *sa)
{
	unsigned char key[17];
	time_t now = time(NULL);
	struct authfail **pp, *a;
	char ip[64];

	if (netaddr_key(sa, key) == -1)
		return;
	if (srv->nauth > AUTH_TABLE_PRUNE)
		auth_prune(srv, now);
	pp = auth_find(srv, key);
	if ((a = *pp) == NULL) {
		a = *pp = xcalloc(1, sizeof(*a));
		memcpy(a->key, key, 17);
		a->window_start = now;
		srv->nauth++;
	}
	if (now - a->window_start > AUTH_FAIL_WINDOW_S) {
		a->window_start = now;
		a->failures = 0;
	}
	if (++a->failures >= AUTH_FAIL_LIMIT && a->locked_until <= now) {
		a->locked_until = now + AUTH_LOCK_S;
		netaddr_ntop(sa, ip, sizeof(ip));
		log_warnx("%s locked out for %d s after %d failed logins in %d s", ip, AUTH_LOCK_S,
		    a->failures, AUTH_FAIL_WINDOW_S);
	}
}

void smtp_server_auth_success(struct smtp_server *srv, const struct sockaddr *sa)
{
	unsigned char key[17];
	struct authfail **pp, *a;

	if (netaddr_key(sa, key) == -1)
		return;
	pp = auth_find(srv, key);
	if ((a = *pp) != NULL && a->locked_until <= time(NULL)) {
		*pp = a->next;
		free(a);
		srv->nauth--;
	}
}

int smtp_server_locked_out(struct smtp_server *srv, const struct sockaddr *sa)
{
	unsigned char key[17];
	struct authfail *a;

	if (netaddr_key(sa, key) == -1)
		return 0;
	a = *auth_find(srv, key);
	return a != NULL && a->locked_until > time(NULL);
}

struct workq *smtp_server_workq(struct smtp_server *srv)
{
	return srv->workq;
}

/* --- accept -------------------------------------------------------------- */

/* A connection we will not serve: 421 and close (just close on implicit
 * TLS, where clear text would be garbage to the client). */
static void refuse(int fd, const struct conf_listener *cl, const char *hostname, const char *why)
{
	char buf[256];
	int n = snprintf(buf, sizeof(buf), "421 4.7.0 %s Error: %s\r\n", hostname, why);

	metrics.connections_refused++;
	if (cl->tls != CONF_TLS_IMPLICIT && n > 0 && (size_t)n < sizeof(buf)) {
		ssize_t w = send(fd, buf, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
		(void)w; /* best effort: the client is refused either way */
	}
	close(fd);
}

static void on_accept(struct evconnlistener *evl, evutil_socket_t fd, struct sockaddr *sa,
    int salen, void *arg)
{
	struct listener *l = arg;
	struct smtp_server *srv = l->srv;
	const struct conf *conf = srv->cfg->conf;
	char ip[64];
	int per_ip;

	if (srv->stopping) {
		close(fd);
		return;
	}
	netaddr_ntop(sa, ip, sizeof(ip));
	if (srv->nsessions >= (size_t)conf->max_connections) {
		log_warnx("connect from unknown[%s]: refused: %zu connections reached "
			  "(max_connections)",
		    ip, srv->nsessions);
		refuse(fd, l->cl, conf->hostname, "too many connections");
		return;
	}
	/* Behind a proxy the address here is the proxy's: the checks by client
	 * address wait for the PROXY header (smtp_server_admit). */
	per_ip = 0;
	if (!l->cl->proxy_protocol) {
		const char *why;
		if ((per_ip = smtp_server_admit(srv, l->cl, sa, &why)) == -1) {
			refuse(fd, l->cl, conf->hostname, why);
			return;
		}
	}
	srv->nsessions++;
	metrics.connections_total++;
	struct smtp_session *s =
	    smtp_session_new(srv, srv->cfg, l->cl, fd, sa, (socklen_t)salen, per_ip);
	smtp_session_link(&srv->sessions, s);
}

int smtp_server_admit(struct smtp_server *srv, const struct conf_listener *cl,
    const struct sockaddr *sa, const char **why)
{
	const struct conf *conf = srv->cfg->conf;
	char ip[64];

	netaddr_ntop(sa, ip, sizeof(ip));
	if (smtp_server_locked_out(srv, sa)) {
		log_info("connect from unknown[%s]: refused: locked out after failed logins", ip);
		*why = "too many failed logins from your address; try later";
		return -1;
	}
	if (netaddr_match(cl->networks, cl->nnetworks, sa))
		return 0; /* trusted networks are exempt from the per-address cap */
	if (ip_count(srv, sa) >= conf->max_connections_per_ip) {
		log_warnx("connect from unknown[%s]: refused: too many connections from this "
			  "address (max_connections_per_ip = %d)",
		    ip, conf->max_connections_per_ip);
		*why = "too many connections from your address";
		return -1;
	}
	ip_add(srv, sa, 1);
	return 1;
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
	struct listener *l = arg;
	if (!l->srv->stopping)
		evconnlistener_enable(l->evl);
}

static void on_accept_error(struct evconnlistener *evl, void *arg)
{
	struct listener *l = arg;
	struct timeval tv = {ACCEPT_PAUSE_S, 0};
	int err = EVUTIL_SOCKET_ERROR();

	/* EMFILE/ENFILE/ENOBUFS: stop accepting for a moment rather than spin. */
	errno = err;
	log_warn("accept on %s (listener %s); pausing accepts for %d s", l->cl->address,
	    l->cl->name, ACCEPT_PAUSE_S);
	evconnlistener_disable(evl);
	event_add(l->resume, &tv);
}

void smtp_server_session_gone(struct smtp_server *srv, struct smtp_session *s,
    const struct sockaddr *peer, int counted_per_ip)
{
	smtp_session_unlink(&srv->sessions, s);
	srv->nsessions--;
	if (counted_per_ip)
		ip_add(srv, peer, -1);
	if (srv->stopping && srv->nsessions == 0 && srv->stopped) {
		void (*cb)(void *) = srv->stopped;
		srv->stopped = NULL;
		cb(srv->stopped_arg);
	}
}

/* --- listeners ----------------------------------------------------------- */

static int bind_one(const struct conf_listener *cl, char *err, size_t errlen)
{
	int fd, one = 1;

	fd = socket(cl->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1) {
		snprintf(err, errlen, "[listen:%s] socket: %s", cl->name, strerror(errno));
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	/* [::]:25 means IPv6 only, so 0.0.0.0:25 can be a listener of its own. */
	if (cl->ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)&cl->ss, cl->sslen) == -1 ||
	    listen(fd, LISTEN_BACKLOG) == -1) {
		snprintf(err, errlen, "[listen:%s] cannot listen on %s: %s%s", cl->name,
		    cl->address, strerror(errno),
		    errno == EACCES ? " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
		    : errno == EADDRINUSE ? " (another mail server running?)"
					  : "");
		close(fd);
		return -1;
	}
	return fd;
}

static void listener_start(struct smtp_server *srv, struct listener *l)
{
	l->srv = srv;
	l->evl = evconnlistener_new(srv->base, on_accept, l,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, l->fd);
	if (l->evl == NULL)
		fatalx("evconnlistener_new failed for %s", l->cl->address);
	evconnlistener_set_error_cb(l->evl, on_accept_error);
	l->resume = event_new(srv->base, -1, 0, on_resume, l);
	log_info("listening on %s (listener %s, tls=%s, auth=%s%s)", l->cl->address, l->cl->name,
	    l->cl->tls == CONF_TLS_NONE ? "none" : l->cl->tls == CONF_TLS_STARTTLS ? "starttls"
										 : "implicit",
	    l->cl->auth == CONF_AUTH_OFF ? "off" : l->cl->auth == CONF_AUTH_OPTIONAL ? "optional"
										  : "required",
	    l->cl->proxy_protocol ? ", proxy_protocol" : "");
}

static void listener_stop(struct listener *l)
{
	if (l->evl)
		evconnlistener_free(l->evl); /* closes the socket */
	else if (l->fd != -1)
		close(l->fd);
	if (l->resume)
		event_free(l->resume);
	l->evl = NULL;
	l->resume = NULL;
	l->fd = -1;
}

struct smtp_server *smtp_server_new(struct event_base *base, struct conf *conf, char *err,
    size_t errlen)
{
	struct smtp_server *srv;
	struct smtp_config *cfg = config_new(conf, err, errlen);

	if (cfg == NULL) {
		conf_free(conf);
		return NULL;
	}
	srv = xcalloc(1, sizeof(*srv));
	srv->base = base;
	srv->cfg = cfg;
	srv->workq = workq_new(base, AUTH_THREADS);
	return srv;
}

int smtp_server_bind(struct smtp_server *srv, char *err, size_t errlen)
{
	struct conf *conf = srv->cfg->conf;
	size_t i;

	srv->listeners = xcalloc(conf->nlisteners, sizeof(struct listener));
	srv->nlisteners = conf->nlisteners;
	for (i = 0; i < conf->nlisteners; i++) {
		srv->listeners[i].cl = &conf->listeners[i];
		srv->listeners[i].fd = -1;
	}
	for (i = 0; i < conf->nlisteners; i++)
		if ((srv->listeners[i].fd = bind_one(&conf->listeners[i], err, errlen)) == -1)
			return -1;
	return 0;
}

void smtp_server_start(struct smtp_server *srv, struct spool *sp)
{
	size_t i;

	srv->spool = sp;
	for (i = 0; i < srv->nlisteners; i++)
		listener_start(srv, &srv->listeners[i]);
}

static int same_address(const struct conf_listener *a, const struct conf_listener *b)
{
	return a->sslen == b->sslen && memcmp(&a->ss, &b->ss, a->sslen) == 0;
}

int smtp_server_reload(struct smtp_server *srv, struct conf *conf, char *err, size_t errlen)
{
	struct smtp_config *cfg = config_new(conf, err, errlen);
	struct listener *nl;
	size_t i, j;

	if (cfg == NULL)
		return -1;
	nl = xcalloc(conf->nlisteners, sizeof(*nl));

	/* Bind what is new first: if that fails, nothing changes. */
	for (i = 0; i < conf->nlisteners; i++) {
		nl[i].cl = &conf->listeners[i];
		nl[i].fd = -1;
		for (j = 0; j < srv->nlisteners; j++)
			if (srv->listeners[j].evl && same_address(srv->listeners[j].cl, nl[i].cl))
				break;
		if (j < srv->nlisteners)
			continue;
		if ((nl[i].fd = bind_one(nl[i].cl, err, errlen)) == -1) {
			for (j = 0; j < i; j++)
				if (nl[j].fd != -1)
					close(nl[j].fd);
			free(nl);
			cfg->conf = NULL; /* the caller frees conf */
			smtp_config_unref(cfg);
			return -1;
		}
	}
	/* Keep sockets whose address is unchanged; close the rest. */
	for (j = 0; j < srv->nlisteners; j++) {
		struct listener *old = &srv->listeners[j];
		for (i = 0; i < conf->nlisteners; i++)
			if (nl[i].fd == -1 && nl[i].evl == NULL && same_address(old->cl, nl[i].cl))
				break;
		if (i < conf->nlisteners && old->evl) {
			nl[i].evl = old->evl;
			nl[i].resume = old->resume;
			nl[i].srv = srv;
			evconnlistener_set_cb(nl[i].evl, on_accept, &nl[i]);
			evconnlistener_set_error_cb(nl[i].evl, on_accept_error);
			event_assign(nl[i].resume, srv->base, -1, 0, on_resume, &nl[i]);
			old->evl = NULL;
			old->resume = NULL;
		} else {
			log_info("no longer listening on %s (listener %s)", old->cl->address,
			    old->cl->name);
			listener_stop(old);
		}
	}
	free(srv->listeners);
	srv->listeners = nl;
	srv->nlisteners = conf->nlisteners;
	smtp_config_unref(srv->cfg);
	srv->cfg = cfg;
	for (i = 0; i < srv->nlisteners; i++)
		if (nl[i].evl == NULL)
			listener_start(srv, &nl[i]);
	return 0;
}

static void on_grace_over(evutil_socket_t fd, short what, void *arg)
{
	struct smtp_server *srv = arg;
	struct smtp_session *s, *next;

	log_info("shutdown: grace period over, closing %zu session(s)", srv->nsessions);
	for (s = srv->sessions; s; s = next) {
		next = smtp_session_next(s);
		smtp_session_abort(s);
	}
}

void smtp_server_shutdown(struct smtp_server *srv, int grace, void (*done)(void *), void *arg)
{
	struct smtp_session *s, *next;
	struct timeval tv = {grace, 0};
	size_t i;

	srv->stopping = 1;
	srv->stopped = done;
	srv->stopped_arg = arg;
	for (i = 0; i < srv->nlisteners; i++)
		listener_stop(&srv->listeners[i]);
	for (s = srv->sessions; s; s = next) {
		next = smtp_session_next(s);
		smtp_session_shutdown(s);
	}
	if (srv->nsessions == 0) {
		srv->stopped = NULL;
		done(arg);
		return;
	}
	srv->grace_timer = event_new(srv->base, -1, 0, on_grace_over, srv);
	event_add(srv->grace_timer, &tv);
}

void smtp_server_free(struct smtp_server *srv)
{
	size_t i;

	if (srv == NULL)
		return;
	for (i = 0; i < srv->nlisteners; i++)
		listener_stop(&srv->listeners[i]);
	free(srv->listeners);
	if (srv->grace_timer)
		event_free(srv->grace_timer);
	for (i = 0; i < IPTABLE_SIZE; i++) {
		while (srv->iptable[i]) {
			struct ipcount *e = srv->iptable[i];
			srv->iptable[i] = e->next;
			free(e);
		}
		while (srv->authtable[i]) {
			struct authfail *a = srv->authtable[i];
			srv->authtable[i] = a->next;
			free(a);
		}
	}
	workq_free(srv->workq); /* runs pending auth_done()s: sessions are gone */
	smtp_config_unref(srv->cfg);
	free(srv);
}

size_t smtp_server_nsessions(const struct smtp_server *srv)
{
	return srv->nsessions;
}

void smtp_server_set_identity(struct smtp_server *srv, struct ses_identity *id)
{
	srv->identity = id;
}

struct ses_identity *smtp_server_identity(struct smtp_server *srv)
{
	return srv->identity;
}

struct spool *smtp_server_spool(struct smtp_server *srv)
{
	return srv->spool;
}

struct event_base *smtp_server_base(struct smtp_server *srv)
{
	return srv->base;
}

int smtp_server_stopping(const struct smtp_server *srv)
{
	return srv->stopping;
}
