/*
 * ses_http.c - libcurl's multi-socket API on the relay's libevent loop.
 *
 * libcurl tells us which sockets it wants watched (socket callback) and when
 * it wants a timeout (timer callback); libevent tells libcurl when a socket
 * is ready (curl_multi_socket_action).  Finished transfers are collected
 * from curl_multi_info_read() and reported through each call's done
 * callback.  This is curl's hiperfifo pattern; nothing here ever calls
 * curl_easy_perform or waits.
 *
 * Connections are reused (the multi handle keeps a connection cache).  A
 * response body beyond max_response is dropped and the call flagged
 * truncated rather than grown without bound.  A call with a sink decides at
 * its first body byte, from the final status: a 2xx body goes to the sink
 * as it arrives and is never kept; any other body (an error document) is
 * collected and capped as usual.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/crypto.h>

#include "relay/log.h"
#include "relay/util.h"
#include "ses/ses_http.h"

#define DEFAULT_MAX_RESPONSE (64 * 1024)
#define HEADER_VALUE_MAX 256

struct ses_http {
	struct event_base *base;
	CURLM *multi;
	struct event *timer;
	char *ca_file;
	char *noproxy;
	struct ses_http_call *calls;
	size_t ncalls;
	struct sock_watch *watches;   /* freed at the end if curl did not */
	int running;
};

enum body_mode {
	BODY_UNDECIDED, /* no body byte yet */
	BODY_COLLECT,   /* into resp, capped */
	BODY_SINK       /* to the caller's sink */
};

struct ses_http_call {
	struct ses_http_call *next, *prev;
	struct ses_http *h;
	CURL *easy;
	struct curl_slist *headers;
	char *body_copy;
	struct evbuffer *resp;
	size_t max_response;
	int truncated;
	ses_http_reader reader;
	ses_http_rewinder rewind;
	void *reader_arg;
	size_t body_len;
	ses_http_sink sink;
	void *sink_arg;
	enum body_mode mode;
	int sink_refused;
	uint64_t streamed;
	ses_http_done done;
	void *arg;
	char errbuf[CURL_ERROR_SIZE];
	char amzn_error_type[HEADER_VALUE_MAX];
	char request_id[HEADER_VALUE_MAX];
	char etag[HEADER_VALUE_MAX];
};

/* Per-socket watcher, attached to the socket with curl_multi_assign. */
struct sock_watch {
	struct sock_watch *next, *prev;
	struct ses_http *h;
	struct event *ev;
	curl_socket_t fd;
};

static void check_finished(struct ses_http *h);

static void call_unlink(struct ses_http_call *c)
{
	struct ses_http *h = c->h;

	if (c->prev)
		c->prev->next = c->next;
	else
		h->calls = c->next;
	if (c->next)
		c->next->prev = c->prev;
	h->ncalls--;
}

static void call_free(struct ses_http_call *c)
{
	curl_multi_remove_handle(c->h->multi, c->easy);
	curl_easy_cleanup(c->easy);
	curl_slist_free_all(c->headers);
	if (c->body_copy) /* may hold a web identity token or similar */
		OPENSSL_cleanse(c->body_copy, c->body_len);
	free(c->body_copy);
	evbuffer_free(c->resp);
	free(c);
}

/* --- libevent -> libcurl ------------------------------------------------- */

static void on_socket(evutil_socket_t fd, short what, void *arg)
{
	struct sock_watch *w = arg;
	struct ses_http *h = w->h;
	int flags = (what & EV_READ ? CURL_CSELECT_IN : 0) | (what & EV_WRITE ? CURL_CSELECT_OUT : 0);

	curl_multi_socket_action(h->multi, fd, flags, &h->running);
	check_finished(h);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct ses_http *h = arg;

	curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &h->running);
	check_finished(h);
}

/* --- libcurl -> libevent ------------------------------------------------- */

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	struct ses_http *h = userp;
	struct sock_watch *w = socketp;
	short events;

	if (what == CURL_POLL_REMOVE) {
		if (w) {
			if (w->prev)
				w->prev->next = w->next;
			else
				h->watches = w->next;
			if (w->next)
				w->next->prev = w->prev;
			event_free(w->ev);
			free(w);
			curl_multi_assign(h->multi, fd, NULL);
		}
		return 0;
	}
	events = (short)((what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0) |
			 EV_PERSIST);
	if (w == NULL) {
		w = xcalloc(1, sizeof(*w));
		w->h = h;
		w->fd = fd;
		w->ev = event_new(h->base, fd, events, on_socket, w);
		w->next = h->watches;
		if (h->watches)
			h->watches->prev = w;
		h->watches = w;
		curl_multi_assign(h->multi, fd, w);
	} else {
		event_del(w->ev);
		event_assign(w->ev, h->base, fd, events, on_socket, w);
	}
	event_add(w->ev, NULL);
	return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	struct ses_http *h = userp;
	struct timeval tv;

	if (timeout_ms < 0) {
		event_del(h->timer);
		return 0;
	}
	/* 0 means "call socket_action soon": never from inside this callback */
	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;
	event_add(h->timer, &tv);
	return 0;
}

/* --- per-call callbacks -------------------------------------------------- */

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	struct ses_http_call *c = userdata;
	size_t n = size * nmemb, have = evbuffer_get_length(c->resp);

	if (c->mode == BODY_UNDECIDED) {
		long status = 0;

		/* the final status: 1xx answers never reach the write callback */
		curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);
		c->mode = c->sink && status >= 200 && status < 300 ? BODY_SINK : BODY_COLLECT;
	}
	if (c->mode == BODY_SINK) {
		if (n == 0)
			return 0;
		if (c->sink(c->sink_arg, ptr, n) != n) {
			c->sink_refused = 1;
			return 0; /* any count but n: CURLE_WRITE_ERROR */
		}
		c->streamed += n;
		return n;
	}
	if (have + n > c->max_response) {
		c->truncated = 1;
		if (have < c->max_response)
			evbuffer_add(c->resp, ptr, c->max_response - have);
		return n; /* keep reading so the connection can be reused */
	}
	evbuffer_add(c->resp, ptr, n);
	return n;
}

/* Copy a header value (trimmed, capped) if the line is "name: value". */
static int header_value(const char *line, size_t len, const char *name, char *out, size_t outsz)
{
	size_t nl = strlen(name), i;

	if (len <= nl + 1 || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
		return 0;
	line += nl + 1;
	len -= nl + 1;
	while (len && (*line == ' ' || *line == '\t'))
		line++, len--;
	while (len && isspace((unsigned char)line[len - 1]))
		len--;
	for (i = 0; i < len && i < outsz - 1; i++)
		out[i] = isprint((unsigned char)line[i]) ? line[i] : '?';
	out[i] = '\0';
	return 1;
}

static size_t header_cb(char *line, size_t size, size_t nitems, void *userdata)
{
	struct ses_http_call *c = userdata;
	size_t n = size * nitems;

	if (n >= 5 && memcmp(line, "HTTP/", 5) == 0) {
		/* a new answer (after a 1xx): forget the previous one's headers */
		c->amzn_error_type[0] = c->request_id[0] = c->etag[0] = '\0';
		return n;
	}
	if (header_value(line, n, "ETag", c->etag, sizeof(c->etag)))
		return n;
	if (header_value(line, n, "x-amzn-ErrorType", c->amzn_error_type,
		sizeof(c->amzn_error_type))) {
		char *colon = strchr(c->amzn_error_type, ':');
		if (colon)
			*colon = '\0';
	} else if (!header_value(line, n, "x-amzn-RequestId", c->request_id, sizeof(c->request_id)))
		header_value(line, n, "x-amz-request-id", c->request_id, sizeof(c->request_id));
	return n;
}

static size_t read_cb(char *buf, size_t size, size_t nitems, void *userdata)
{
	struct ses_http_call *c = userdata;
	size_t n = c->reader(c->reader_arg, buf, size * nitems);

	return n == (size_t)-1 ? CURL_READFUNC_ABORT : n;
}

static int seek_cb(void *userdata, curl_off_t offset, int origin)
{
	struct ses_http_call *c = userdata;

	if (offset != 0 || origin != SEEK_SET || c->rewind == NULL || c->rewind(c->reader_arg) != 0)
		return CURL_SEEKFUNC_CANTSEEK;
	return CURL_SEEKFUNC_OK;
}

static void check_finished(struct ses_http *h)
{
	CURLMsg *msg;
	int left;

	while ((msg = curl_multi_info_read(h->multi, &left)) != NULL) {
		struct ses_http_response r;
		struct ses_http_call *c;
		double secs = 0;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&c);
		memset(&r, 0, sizeof(r));
		evbuffer_add(c->resp, "", 1); /* NUL-terminate */
		r.body = (const char *)evbuffer_pullup(c->resp, -1);
		r.body_len = evbuffer_get_length(c->resp) - 1;
		r.truncated = c->truncated;
		curl_easy_getinfo(c->easy, CURLINFO_TOTAL_TIME, &secs);
		r.seconds = secs;
		if (msg->data.result == CURLE_OK) {
			r.ok = 1;
			curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &r.status);
		} else if (c->sink_refused)
			r.error = "the receiver refused the response body";
		else
			r.error = c->errbuf[0] ? c->errbuf : curl_easy_strerror(msg->data.result);
		r.amzn_error_type = c->amzn_error_type[0] ? c->amzn_error_type : NULL;
		r.request_id = c->request_id[0] ? c->request_id : NULL;
		r.etag = c->etag[0] ? c->etag : NULL;
		r.streamed = c->streamed;
		call_unlink(c);
		c->done(c->arg, &r);
		call_free(c);
	}
}

/* --- API ----------------------------------------------------------------- */

struct ses_http *ses_http_new(struct event_base *base, const char *ca_file, long max_host_conns)
{
	static int curl_ready;
	struct ses_http *h;

	if (!curl_ready) {
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			fatalx("curl_global_init failed");
		curl_ready = 1;
	}
	h = xcalloc(1, sizeof(*h));
	h->base = base;
	h->ca_file = ca_file ? xstrdup(ca_file) : NULL;
	{
		const char *env = getenv("NO_PROXY");
		if (env == NULL || *env == '\0')
			env = getenv("no_proxy");
		if (env && strcmp(env, "*") == 0) /* "*" only works alone */
			h->noproxy = xstrdup("*");
		else
			h->noproxy = xasprintf("%s%s169.254.169.254,169.254.170.2,169.254.170.23,"
				       "fd00:ec2::254,localhost,127.0.0.1,::1",
		    env && *env ? env : "", env && *env ? "," : "");
	}
	h->multi = curl_multi_init();
	if (h->multi == NULL)
		fatalx("curl_multi_init failed");
	h->timer = evtimer_new(base, on_timer, h);
	event_priority_set(h->timer, 0); /* fails harmlessly without priorities */
	curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
	curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
	curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
	if (max_host_conns > 0) {
		curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS, max_host_conns);
		curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, max_host_conns * 2);
	}
	return h;
}

void ses_http_free(struct ses_http *h)
{
	if (h == NULL)
		return;
	while (h->calls) {
		struct ses_http_call *c = h->calls;
		call_unlink(c);
		call_free(c);
	}
	curl_multi_cleanup(h->multi); /* closes cached connections */
	while (h->watches) {
		struct sock_watch *w = h->watches;
		h->watches = w->next;
		event_free(w->ev);
		free(w);
	}
	event_free(h->timer);
	free(h->ca_file);
	free(h->noproxy);
	free(h);
}

struct ses_http_call *ses_http_send(struct ses_http *h, const struct ses_http_request *req)
{
	struct ses_http_call *c = xcalloc(1, sizeof(*c));
	CURL *e;

	c->h = h;
	c->resp = evbuffer_new();
	c->max_response = req->max_response ? req->max_response : DEFAULT_MAX_RESPONSE;
	c->done = req->done;
	c->arg = req->arg;
	c->sink = req->sink;
	c->sink_arg = req->sink_arg;
	c->headers = req->headers;
	c->easy = e = curl_easy_init();
	if (e == NULL)
		fatalx("curl_easy_init failed");

	curl_easy_setopt(e, CURLOPT_URL, req->url);
	curl_easy_setopt(e, CURLOPT_PRIVATE, c);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
	if (h->ca_file)
		curl_easy_setopt(e, CURLOPT_CAINFO, h->ca_file);
	/* A proxy from the environment may serve SES, never loopback or the
	 * link-local metadata services. */
	curl_easy_setopt(e, CURLOPT_NOPROXY, h->noproxy);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, req->timeout_ms ? req->timeout_ms : 60000L);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
	    req->connect_timeout_ms ? req->connect_timeout_ms : 10000L);
	if (req->stall_timeout_ms > 0) {
		/* below 1 byte/s for that long: a peer that stopped sending */
		curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
		curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, (req->stall_timeout_ms + 999) / 1000);
	}
	if (req->path_as_is)
		curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(e, CURLOPT_USERAGENT, "sesrelay/0.1");
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, c);

	/* libcurl adds "Expect: 100-continue" to large POSTs: a round trip lost. */
	c->headers = curl_slist_append(c->headers, "Expect:");
	if (strcmp(req->method, "GET") == 0) {
		curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
	} else if (req->reader) {
		c->reader = req->reader;
		c->rewind = req->rewind;
		c->reader_arg = req->reader_arg;
		curl_easy_setopt(e, CURLOPT_POST, 1L);
		curl_easy_setopt(e, CURLOPT_READFUNCTION, read_cb);
		curl_easy_setopt(e, CURLOPT_READDATA, c);
		curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, seek_cb);
		curl_easy_setopt(e, CURLOPT_SEEKDATA, c);
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->stream_len);
		if (strcmp(req->method, "POST") != 0)
			curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
	} else {
		c->body_copy = xmalloc(req->body_len + 1);
		c->body_len = req->body_len;
		if (req->body_len)
			memcpy(c->body_copy, req->body, req->body_len);
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, c->body_copy);
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
		if (strcmp(req->method, "POST") != 0)
			curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
	}
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->headers);

	c->next = h->calls;
	if (h->calls)
		h->calls->prev = c;
	h->calls = c;
	h->ncalls++;
	curl_multi_add_handle(h->multi, e); /* schedules a timer; nothing runs now */
	return c;
}

void ses_http_cancel(struct ses_http_call *c)
{
	if (c == NULL)
		return;
	call_unlink(c);
	call_free(c);
}

size_t ses_http_in_flight(const struct ses_http *h)
{
	return h->ncalls;
}
