/*
 * daemon.c - start-up order, privileges, signals, reload and clean exit.
 *
 * Start-up: load the config (exit 78 on error) -> raise the open-files limit
 * -> bind every listener (as root if started as root) -> create the spool and
 * hand it to [relay] user -> drop privileges -> recover the spool -> serve.
 *
 * Then the delivery side: the HTTP engine, the credentials chain (resolved
 * in the background), the transport and the scheduler, which learns of every
 * message already in the spool and of each new one as it is committed.
 *
 * SIGHUP reloads relay.ini: a bad file is logged and the running
 * configuration kept.  Sessions in progress keep the configuration they
 * started with.  SIGUSR1 retries every deferred message now.
 * SIGTERM/SIGINT stop accepting, give sessions in DATA and SES calls in
 * flight a few seconds to finish, wait for spool commits and exit 0.
 */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/crypto.h>

#include "conf/conf.h"
#include "relay/control.h"
#include "relay/daemon.h"
#include "relay/http.h"
#include "relay/inbound.h"
#include "relay/log.h"
#include "relay/scheduler.h"
#include "relay/spool.h"
#include "relay/transport.h"
#include "relay/util.h"
#include "ses/ses_api.h"
#include "ses/ses_creds.h"
#include "ses/ses_http.h"
#include "ses/ses_identity.h"
#include "smtp/smtp_client.h"
#include "smtp/smtp_server.h"

#define SHUTDOWN_GRACE_S 5
#define FD_RESERVE 64 /* descriptors kept for spool files, logs, listeners */

/* Credentials and the transport that uses them: replaced together when a
 * reload changes [ses], freed together once the old transport is idle. */
struct ses_stack {
	struct daemon *d;
	struct ses_creds *creds;
	struct transport *t;
	struct ses_identity *ident;  /* verified identities, for SMTP-time refusals */
};

struct daemon {
	struct event_base *base;
	char *config_path;
	struct smtp_server *srv;
	struct spool *spool;
	struct ses_http *http;
	struct ses_stack *stack;     /* current credentials + transport */
	char *ses_settings;          /* what built it, to notice changes on reload */
	struct scheduler *sched;
	struct control *control;     /* SPOOL/control.sock for "sesrelay queue" */
	struct http *http_srv;       /* [http] /metrics, /healthz, /queue */
	struct inbound *inbound;     /* [inbound]: the S3 forwarder, or NULL */
	char *inbound_settings;      /* what built it, to notice changes on reload */
	int lockfd;                  /* SPOOL/lock, held while running */
	struct event *sig_term, *sig_int, *sig_hup, *sig_usr1;
	struct event *stop_timer;
	int stopping;
	int waiting;             /* parts still finishing at shutdown */
};

static void apply_logging(const struct conf *conf)
{
	log_init("sesrelay", conf->log == CONF_LOG_SYSLOG);
	log_set_level((enum log_level)conf->log_level);
}

static void raise_fd_limit(const struct conf *conf)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
		return;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) == -1)
			log_warn("cannot raise the open-files limit to %llu",
			    (unsigned long long)rl.rlim_max);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 &&
	    (rlim_t)conf->max_connections + FD_RESERVE > rl.rlim_cur)
		log_warnx("max_connections = %d cannot be held: the open-files limit is %llu "
			  "(raise it, e.g. LimitNOFILE=%d in the systemd unit, or lower "
			  "max_connections)",
		    conf->max_connections, (unsigned long long)rl.rlim_cur,
		    conf->max_connections + FD_RESERVE);
}

/* Resolve [relay] user; with it, create the spool for it while still root. */
static int prepare_user(const struct conf *conf, struct passwd *pw_out, int *have_user)
{
	struct passwd *pw;

	*have_user = 0;
	if (geteuid() != 0) {
		if (conf->user)
			log_warnx("[relay] user = %s ignored: not started as root", conf->user);
		return 0;
	}
	if (conf->user == NULL) {
		log_warnx("running as root: set [relay] user so a bug cannot cost the whole "
			  "machine");
		return 0;
	}
	if ((pw = getpwnam(conf->user)) == NULL) {
		log_error("[relay] user %s does not exist", conf->user);
		return -1;
	}
	*pw_out = *pw;
	pw_out->pw_name = xstrdup(pw->pw_name);
	*have_user = 1;
	if (mkdir(conf->spool, 0700) == -1 && errno != EEXIST) {
		log_warn("cannot create spool %s", conf->spool);
		return -1;
	}
	if (chown(conf->spool, pw->pw_uid, pw->pw_gid) == -1) {
		log_warn("cannot give spool %s to user %s", conf->spool, conf->user);
		return -1;
	}
	return 0;
}

static int drop_privileges(const struct passwd *pw)
{
	if (setgroups(1, &pw->pw_gid) == -1 || setgid(pw->pw_gid) == -1 ||
	    setuid(pw->pw_uid) == -1) {
		log_warn("cannot drop privileges to %s", pw->pw_name);
		return -1;
	}
	if (setuid(0) == 0) {
		log_error("privileges were not dropped (setuid(0) still works)");
		return -1;
	}
	log_info("running as user %s", pw->pw_name);
	return 0;
}

static void on_stopped(void *arg)
{
	struct daemon *d = arg;

	if (--d->waiting == 0)
		event_base_loopexit(d->base, NULL);
}

static void on_stop_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;

	log_info("shutdown: %zu SES call(s) still in flight abandoned; those messages stay "
		 "queued",
	    scheduler_in_flight(d->sched));
	event_base_loopexit(d->base, NULL);
}

static void on_term(evutil_socket_t sig, short what, void *arg)
{
	struct daemon *d = arg;

	if (d->stopping) {
		log_info("second stop signal: exiting now");
		event_base_loopexit(d->base, NULL);
		return;
	}
	d->stopping = 1;
	log_info("stopping (signal %d): no new connections; %zu session(s) and %zu SES call(s) to "
		 "finish",
	    (int)sig, smtp_server_nsessions(d->srv), scheduler_in_flight(d->sched));
	struct timeval tv = {SHUTDOWN_GRACE_S + 1, 0};
	d->stop_timer = evtimer_new(d->base, on_stop_timeout, d);
	event_add(d->stop_timer, &tv);
	d->waiting = 2;
	inbound_free(d->inbound); /* an object half-read is simply read again next time */
	d->inbound = NULL;
	smtp_server_shutdown(d->srv, SHUTDOWN_GRACE_S, on_stopped, d);
	scheduler_stop(d->sched, on_stopped, d);
}

static void on_usr1(evutil_socket_t sig, short what, void *arg)
{
	struct daemon *d = arg;

	scheduler_flush(d->sched);
	inbound_poll_now(d->inbound);
}

/* Every [inbound] setting, as one comparable string. */
static char *inbound_settings(const struct conf *c)
{
	char *s = xasprintf("%s|%s|%s|%s|%s|%llu|%s|%d|%s|%d|%s|%s|%d", c->inbound_queue_url ?
	    c->inbound_queue_url : "", c->inbound_bucket
	    ? c->inbound_bucket : "", c->inbound_prefix ? c->inbound_prefix : "",
	    c->inbound_region ? c->inbound_region : "", c->inbound_endpoint ? c->inbound_endpoint
	    : "", (unsigned long long)c->inbound_poll_interval, c->inbound_from_address ?
	    c->inbound_from_address : "", (int)c->inbound_from_format, c->inbound_subject_prefix ?
	    c->inbound_subject_prefix : "", (int)c->inbound_after, c->inbound_done_prefix ?
	    c->inbound_done_prefix : "", c->inbound_held_prefix ? c->inbound_held_prefix : "",
	    (int)c->inbound_failed_verdict), *t;
	size_t i;

	for (i = 0; i < c->ninbound_map; i++) {
		t = xasprintf("%s|%s", s, c->inbound_map[i]);
		free(s);
		s = t;
	}
	return s;
}

static void start_inbound(struct daemon *d, const struct conf *conf)
{
	char err[1024];

	d->inbound_settings = inbound_settings(conf);
	d->inbound = inbound_new(d->base, d->http, d->spool, conf, err, sizeof(err));
	if (d->inbound == NULL && err[0])
		log_error("[inbound]: %s. Receiving is off; fix relay.ini and restart.", err);
}


static void on_found(void *arg, const char *id, double arrival, uint64_t size)
{
	scheduler_add(arg, id, arrival);
}

static void on_queued(void *arg, const char *id, double arrival, uint64_t size,
    const char *sender, size_t nrcpts)
{
	scheduler_add_new(arg, id, arrival, size, sender, nrcpts);
}

static void on_creds_ready(void *arg, int ok, const char *err)
{
	struct ses_stack *st = arg;

	if (ok)
		log_info("AWS credentials from %s", ses_creds_source(st->creds));
	else
		log_warnx("%s; mail stays queued until credentials are available", err);
}

static void stack_release(void *arg)
{
	struct ses_stack *st = arg;

	if (st->t)
		st->t->free(st->t);
	ses_identity_free(st->ident);
	ses_creds_free(st->creds);
	free(st);
}

/* Every [ses] setting the stack depends on, as one comparable string. */
static char *ses_settings(const struct conf *c)
{
#define S(x) ((x) ? (x) : "")
	return xasprintf("%d|%s|%d|%s|%s|%s|%s|%s|%d|%s|%d|%d|%s|%s|%s", (int)c->transport,
	    S(c->region), c->api_version, S(c->endpoint), S(c->configuration_set), S(c->profile),
	    S(c->access_key_id), S(c->secret_access_key), c->concurrency, S(c->smtp_host),
	    c->smtp_port, (int)c->smtp_tls, S(c->smtp_username), S(c->smtp_password),
	    S(c->ca_file));
#undef S
}

/* Credentials + transport for conf; the transport is NULL (mail stays
 * queued) when the configuration cannot deliver. */
static struct ses_stack *stack_new(struct daemon *d, const struct conf *conf)
{
	struct ses_stack *st = xcalloc(1, sizeof(*st));

	st->d = d;
	st->creds = ses_creds_new(d->base, d->http, conf);
	if (conf->transport == CONF_TRANSPORT_SMTP) {
		/* with explicit SMTP credentials the chain is not needed */
		if (conf->smtp_username == NULL || conf->smtp_password == NULL) {
			ses_creds_start(st->creds, on_creds_ready, st);
			/* the same IAM key can ask SES's API what SES will refuse; not
			 * when the SMTP host is some other server (a test sink) and
			 * no API endpoint says where to ask */
			if (conf->smtp_host == NULL || conf->endpoint != NULL)
				st->ident = ses_identity_new(d->base, d->http, st->creds, conf);
		}
		st->t = smtp_client_transport_new(d->base, st->creds, conf);
		if (st->t == NULL)
			log_error("the SMTP transport cannot start (see above). Mail is accepted and "
				  "stays queued.");
	} else if (conf->region == NULL)
		log_error("no SES region: set [ses] region (or AWS_REGION). Mail is accepted and "
			  "stays queued.");
	else {
		ses_creds_start(st->creds, on_creds_ready, st);
		st->t = ses_api_transport_new(d->base, d->http, st->creds, conf);
		if (st->t)
			st->ident = ses_identity_new(d->base, d->http, st->creds, conf);
	}
	return st;
}

/* The HTTP engine, credentials, transport and scheduler. */
static void start_delivery(struct daemon *d, const struct conf *conf)
{
	d->http = ses_http_new(d->base, conf->ca_file, conf->concurrency);
	d->stack = stack_new(d, conf);
	d->ses_settings = ses_settings(conf);
	d->sched = scheduler_new(d->base, d->spool, NULL, conf);
	scheduler_set_transport(d->sched, d->stack->t, stack_release, d->stack);
	smtp_server_set_identity(d->srv, d->stack->ident);
	spool_set_commit_hook(d->spool, on_queued, d->sched);
	spool_foreach(d->spool, on_found, d->sched);
}

/* Reload: rebuild credentials and transport when [ses] changed. */
static void reload_delivery(struct daemon *d, const struct conf *conf)
{
	char *now = ses_settings(conf);

	if (strcmp(now, d->ses_settings) == 0) {
		OPENSSL_cleanse(now, strlen(now));
		free(now);
		if (d->stack)
			ses_identity_refresh(d->stack->ident);
		return;
	}
	log_info("[ses] changed: new credentials and transport (calls in flight finish on the "
		 "old ones)");
	OPENSSL_cleanse(d->ses_settings, strlen(d->ses_settings));
	free(d->ses_settings);
	d->ses_settings = now;
	d->stack = stack_new(d, conf);
	if (d->stack->t == NULL) {
		/* keep delivering with what works rather than stop */
		log_warnx("the new [ses] settings cannot deliver; keeping the previous transport");
		stack_release(d->stack);
		d->stack = NULL;
		return;
	}
	smtp_server_set_identity(d->srv, d->stack->ident);
	scheduler_set_transport(d->sched, d->stack->t, stack_release, d->stack);
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
	struct daemon *d = arg;
	char err[1024];
	struct conf *conf;

	if (d->stopping)
		return;
	log_info("reloading %s", d->config_path);
	if ((conf = conf_load(d->config_path, err, sizeof(err))) == NULL) {
		log_error("reload failed, keeping the running configuration: %s", err);
		return;
	}
	if (strcmp(conf->spool, spool_path(d->spool)) != 0)
		log_warnx("spool changed to %s: takes effect only after a restart; still using %s",
		    conf->spool, spool_path(d->spool));
	apply_logging(conf);
	reload_delivery(d, conf);
	{
		char *now = inbound_settings(conf);
		if (d->inbound_settings && strcmp(now, d->inbound_settings) != 0)
			log_warnx("[inbound] changed: takes effect after a restart (the forwarder "
				  "keeps its settings while objects are in flight)");
		free(now);
	}
	scheduler_reconfigure(d->sched, conf);
	if (smtp_server_reload(d->srv, conf, err, sizeof(err)) == -1) {
		log_error("reload failed, keeping the running configuration: %s", err);
		conf_free(conf);
		return;
	}
	log_info("reloaded %s", d->config_path);
}

int daemon_run(const char *config_path)
{
	struct daemon d;
	struct passwd pw;
	struct conf *conf;
	char err[1024];
	int have_user, rc = 0;

	memset(&d, 0, sizeof(d));
	d.lockfd = -1;
	if ((conf = conf_load(config_path, err, sizeof(err))) == NULL) {
		fprintf(stderr, "sesrelay: %s\n", err);
		return 78;
	}
	apply_logging(conf);
	signal(SIGPIPE, SIG_IGN);
	raise_fd_limit(conf);

	d.config_path = xstrdup(config_path);
	d.base = event_base_new();
	if (d.base == NULL)
		fatalx("event_base_new failed");
	/* Two priorities: libcurl's "start now" timer runs before the rest of
	 * a batch of ready events, so a connection freed by an SES answer sends
	 * the next request at once instead of after every other answer. */
	event_base_priority_init(d.base, 2);
	d.srv = smtp_server_new(d.base, conf, err, sizeof(err)); /* owns conf from here */
	if (d.srv == NULL) {
		fprintf(stderr, "sesrelay: %s\n", err);
		log_error("%s", err);
		rc = 78;
		goto out;
	}
	if (smtp_server_bind(d.srv, err, sizeof(err)) == -1) {
		log_error("%s", err);
		rc = 1;
		goto out;
	}
	if (conf->http_address &&
	    (d.http_srv = http_new(d.base, conf, err, sizeof(err))) == NULL) {
		log_error("%s", err);
		rc = 1;
		goto out;
	}
	if (prepare_user(conf, &pw, &have_user) == -1) {
		rc = 1;
		goto out;
	}
	if (have_user) {
		int r = drop_privileges(&pw);
		free(pw.pw_name);
		if (r == -1) {
			rc = 1;
			goto out;
		}
	}
	/* one daemon per spool; taken before recovery touches anything */
	if ((d.lockfd = control_lock_daemon(conf->spool, err, sizeof(err))) == -1) {
		log_error("%s", err);
		rc = 1;
		goto out;
	}
	if ((d.spool = spool_open(d.base, conf->spool, err, sizeof(err))) == NULL) {
		log_error("%s", err);
		rc = 1;
		goto out;
	}
	start_delivery(&d, conf);
	start_inbound(&d, conf); /* recovery of hand-off markers, before the loop runs */
	if ((d.control = control_new(d.base, d.spool, d.sched, err, sizeof(err))) == NULL) {
		log_error("%s", err);
		rc = 1;
		goto out;
	}
	smtp_server_start(d.srv, d.spool);
	http_start(d.http_srv, d.spool, d.sched, d.srv);

	d.sig_term = evsignal_new(d.base, SIGTERM, on_term, &d);
	d.sig_int = evsignal_new(d.base, SIGINT, on_term, &d);
	d.sig_hup = evsignal_new(d.base, SIGHUP, on_hup, &d);
	d.sig_usr1 = evsignal_new(d.base, SIGUSR1, on_usr1, &d);
	evsignal_add(d.sig_term, NULL);
	evsignal_add(d.sig_int, NULL);
	evsignal_add(d.sig_hup, NULL);
	evsignal_add(d.sig_usr1, NULL);
	log_info("sesrelay started (spool %s, max message size %llu bytes)", conf->spool,
	    (unsigned long long)conf->max_message_size);

	event_base_dispatch(d.base);
	log_info("stopped");
out:
	if (d.sig_term) {
		event_free(d.sig_term);
		event_free(d.sig_int);
		event_free(d.sig_hup);
		event_free(d.sig_usr1);
	}
	if (d.stop_timer)
		event_free(d.stop_timer);
	control_free(d.control);
	inbound_free(d.inbound);
	free(d.inbound_settings);
	http_free(d.http_srv);
	scheduler_free(d.sched); /* and the transports with their credentials */
	if (d.ses_settings) {
		OPENSSL_cleanse(d.ses_settings, strlen(d.ses_settings));
		free(d.ses_settings);
	}
	ses_http_free(d.http);
	smtp_server_free(d.srv);
	spool_close(d.spool); /* waits for commits still in flight */
	event_base_free(d.base);
	free(d.config_path);
	if (d.lockfd != -1)
		close(d.lockfd);
	return rc;
}
