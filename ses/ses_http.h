/*
 * ses_http.h - HTTPS requests on the relay's event loop (libcurl multi-socket
 * API driven by libevent).
 *
 * Used for every AWS call: SES, STS, S3, the container and instance metadata
 * services.  Connections are kept alive and reused between calls.  A
 * response body is capped (max_response) before anything parses it, unless
 * the caller streams a 2xx body into a sink (S3 objects of 40 MB), in which
 * case it is never held here at all.  The done callback always runs later
 * from the loop, never inside ses_http_send().  Nothing here blocks or logs
 * request bodies or headers (they may carry credentials).
 */
#ifndef SESRELAY_SES_HTTP_H
#define SESRELAY_SES_HTTP_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct curl_slist;
struct ses_http;
struct ses_http_call;

struct ses_http_response {
	int ok;                       /* 1: an HTTP status was received */
	long status;
	const char *body;             /* NUL-terminated, at most max_response bytes */
	size_t body_len;
	int truncated;                /* the body was longer than max_response */
	const char *error;            /* when !ok: what went wrong (curl's words) */
	const char *amzn_error_type;  /* x-amzn-ErrorType, cut at ':' (or NULL) */
	const char *request_id;       /* x-amzn-RequestId / x-amz-request-id (or NULL) */
	const char *etag;             /* ETag as sent, quotes included (or NULL) */
	uint64_t streamed;            /* body bytes the sink accepted */
	double seconds;               /* total time */
};

typedef void (*ses_http_done)(void *arg, const struct ses_http_response *r);
/* Streamed request body: fill buf with up to len bytes; return the count,
 * 0 at the end, or (size_t)-1 to abort the request. */
typedef size_t (*ses_http_reader)(void *arg, char *buf, size_t len);
/* Start the streamed body over (libcurl resends it when a reused connection
 * turns out to be dead).  0, or -1 when that is impossible. */
typedef int (*ses_http_rewinder)(void *arg);
/*
 * Streamed response body: bytes of a 2xx answer as they arrive.  Return len
 * to go on; anything else aborts the transfer (the done callback then sees
 * !ok).  It runs inside libcurl: it must not cancel or free this call, its
 * ses_http, or anything else that owns them - return 0 and let done() do it.
 */
typedef size_t (*ses_http_sink)(void *arg, const char *data, size_t len);

struct ses_http_request {
	const char *method;           /* "GET", "POST", "PUT", "DELETE" */
	const char *url;
	struct curl_slist *headers;   /* ownership passes to the call */
	const void *body;             /* in-memory body (copied), or NULL */
	size_t body_len;
	ses_http_reader reader;       /* or a streamed body of stream_len bytes */
	ses_http_rewinder rewind;     /* optional, for the streamed body */
	void *reader_arg;             /* for reader and rewind */
	uint64_t stream_len;
	long timeout_ms;              /* whole request; 0 = 60 s */
	long connect_timeout_ms;      /* 0 = 10 s */
	size_t max_response;          /* 0 = 64 KiB; with a sink, for non-2xx bodies */
	ses_http_sink sink;           /* optional: 2xx bodies go here, not to body */
	void *sink_arg;
	long stall_timeout_ms;        /* 0: none; else abort after this long without a byte */
	int path_as_is;               /* send "/./" and "/../" as they are (S3 keys) */
	ses_http_done done;
	void *arg;
};

/* ca_file NULL: the system bundle.  max_host_conns caps parallel connections
 * per host (and so requests in flight beyond it wait in libcurl). */
struct ses_http *ses_http_new(struct event_base *base, const char *ca_file, long max_host_conns);
/* Cancels calls in flight (their done callbacks do not run). */
void ses_http_free(struct ses_http *h);
struct ses_http_call *ses_http_send(struct ses_http *h, const struct ses_http_request *req);
/* The done callback will not run. */
void ses_http_cancel(struct ses_http_call *c);
size_t ses_http_in_flight(const struct ses_http *h);

#endif
