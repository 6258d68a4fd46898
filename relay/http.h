/*
 * http.h - the optional [http] listener (libevent evhttp): /metrics
 * (Prometheus text), /healthz, /queue (JSON, like `sesrelay queue list
 * --json`).  GET only, small caps on requests, loopback is the intended
 * address (it has no authentication).
 */
#ifndef SESRELAY_HTTP_H
#define SESRELAY_HTTP_H

#include <stddef.h>

struct conf;
struct event_base;
struct scheduler;
struct smtp_server;
struct spool;
struct http;

/* Bind [http] address (before privileges are dropped); NULL with err on error. */
struct http *http_new(struct event_base *base, const struct conf *conf, char *err,
    size_t errlen);
void http_start(struct http *h, struct spool *sp, struct scheduler *sched,
    struct smtp_server *srv);
void http_free(struct http *h);

#endif
