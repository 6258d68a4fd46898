/*
 * http.c - /metrics, /healthz and /queue over libevent's evhttp.
 *
 * The socket is bound with the SMTP listeners (before privileges are
 * dropped); requests are answered from memory, except /healthz, which checks
 * that the spool can still take a file (a cheap access(2), not a write) and
 * that the loop is turning (it answers at all).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

#include "conf/conf.h"
#include "relay/http.h"
#include "relay/log.h"
#include "relay/metrics.h"
#include "relay/scheduler.h"
#include "relay/spool.h"
#include "relay/util.h"
#include "smtp/smtp_server.h"

struct http {
	struct evhttp *ev;
	int fd;
	char *spool_tmp;
	struct spool *spool;
	struct scheduler *sched;
	struct smtp_server *srv;
};

static void send_text(struct evhttp_request *req, int code, const char *reason,
    const char *ctype, struct evbuffer *body)
{
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
	evhttp_send_reply(req, code, reason, body);
}

static void on_metrics(struct evhttp_request *req, void *arg)
{
	struct http *h = arg;
	struct evbuffer *b = evbuffer_new();

	metrics_format(b, spool_queue_messages(h->spool), spool_queue_bytes(h->spool),
	    smtp_server_nsessions(h->srv), scheduler_in_flight(h->sched));
	send_text(req, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", b);
	evbuffer_free(b);
}

static void on_healthz(struct evhttp_request *req, void *arg)
{
	struct http *h = arg;
	struct evbuffer *b = evbuffer_new();

	if (access(h->spool_tmp, W_OK | X_OK) == 0) {
		evbuffer_add_printf(b, "ok\n");
		send_text(req, 200, "OK", "text/plain", b);
	} else {
		evbuffer_add_printf(b, "spool not writable: %s: %s\n", h->spool_tmp, strerror(errno));
		send_text(req, 503, "Service Unavailable", "text/plain", b);
	}
	evbuffer_free(b);
}

/* A JSON string (RFC 8259): quotes, backslashes and control bytes escaped. */
static void json_string(struct evbuffer *b, const char *s)
{
	evbuffer_add(b, "\"", 1);
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			evbuffer_add_printf(b, "\\%c", c);
		else if (c < 0x20 || c == 0x7f)
			evbuffer_add_printf(b, "\\u%04x", c);
		else
			evbuffer_add(b, s, 1);
	}
	evbuffer_add(b, "\"", 1);
}

/* A huge queue must not become a huge response built on the loop: /queue
 * lists at most this many messages (the count is in X-Sesrelay-Queue-Total). */
#define QUEUE_JSON_MAX 10000

struct queue_json {
	struct evbuffer *b;
	int n;
	size_t total;
	double now;
};

static void queue_entry(void *arg, const struct scheduler_info *i)
{
	struct queue_json *q = arg;
	static const char *states[] = {"queued", "deferred", "active", "held", "bouncing"};

	if (q->total++ >= QUEUE_JSON_MAX)
		return;
	evbuffer_add_printf(q->b, "%s\n  {\"id\": ", q->n++ ? "," : "");
	json_string(q->b, i->id);
	evbuffer_add_printf(q->b, ", \"age\": %.0f, \"size\": %llu, \"sender\": ", q->now - i->arrival,
	    (unsigned long long)i->size);
	json_string(q->b, i->sender ? i->sender : "");
	evbuffer_add_printf(q->b,
	    ", \"recipients\": %zu, \"recipients_left\": %zu, \"attempts\": %d, "
	    "\"next_try\": %.0f, \"state\": \"%s\", \"last_error\": ",
	    i->nrcpts, i->left, i->attempts, i->next_try,
	    (unsigned)i->state < 5 ? states[i->state] : "unknown");
	json_string(q->b, i->last_error);
	evbuffer_add(q->b, "}", 1);
}

static void on_queue(struct evhttp_request *req, void *arg)
{
	struct http *h = arg;
	struct evbuffer *b = evbuffer_new();
	struct queue_json q = {b, 0, 0, util_now()};
	char total[32];

	evbuffer_add(b, "[", 1);
	scheduler_foreach(h->sched, queue_entry, &q);
	evbuffer_add_printf(b, "%s]\n", q.n ? "\n" : "");
	snprintf(total, sizeof(total), "%zu", q.total);
	evhttp_add_header(evhttp_request_get_output_headers(req), "X-Sesrelay-Queue-Total", total);
	send_text(req, 200, "OK", "application/json", b);
	evbuffer_free(b);
}

static void on_other(struct evhttp_request *req, void *arg)
{
	struct evbuffer *b = evbuffer_new();

	evbuffer_add_printf(b, "not found: try /metrics, /healthz or /queue\n");
	send_text(req, 404, "Not Found", "text/plain", b);
	evbuffer_free(b);
}

struct http *http_new(struct event_base *base, const struct conf *conf, char *err,
    size_t errlen)
{
	struct http *h;
	int fd, one = 1;

	if (conf->http_address == NULL)
		return NULL;
	fd = socket(conf->http_ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
	    bind(fd, (const struct sockaddr *)&conf->http_ss, conf->http_sslen) == -1 ||
	    listen(fd, 64) == -1) {
		snprintf(err, errlen, "[http] cannot listen on %s: %s", conf->http_address,
		    strerror(errno));
		if (fd != -1)
			close(fd);
		return NULL;
	}
	h = xcalloc(1, sizeof(*h));
	h->fd = fd;
	h->spool_tmp = xasprintf("%s/tmp", conf->spool);
	h->ev = evhttp_new(base);
	if (h->ev == NULL || evhttp_accept_socket(h->ev, fd) != 0)
		fatalx("evhttp setup failed");
	evhttp_set_allowed_methods(h->ev, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
	evhttp_set_max_headers_size(h->ev, 8192);
	evhttp_set_max_body_size(h->ev, 0);
	evhttp_set_timeout(h->ev, 10);
	log_info("HTTP listening on %s (/metrics, /healthz, /queue)", conf->http_address);
	return h;
}

void http_start(struct http *h, struct spool *sp, struct scheduler *sched,
    struct smtp_server *srv)
{
	if (h == NULL)
		return;
	h->spool = sp;
	h->sched = sched;
	h->srv = srv;
	evhttp_set_cb(h->ev, "/metrics", on_metrics, h);
	evhttp_set_cb(h->ev, "/healthz", on_healthz, h);
	evhttp_set_cb(h->ev, "/queue", on_queue, h);
	evhttp_set_gencb(h->ev, on_other, h);
}

void http_free(struct http *h)
{
	if (h == NULL)
		return;
	evhttp_free(h->ev); /* closes the bound socket */
	free(h->spool_tmp);
	free(h);
}
