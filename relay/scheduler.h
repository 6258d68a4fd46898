/*
 * scheduler.h - the queue manager: which message goes to SES when.
 *
 * Owns the in-memory index of queued messages, the retry schedule
 * (exponential back-off with jitter from retry_initial to retry_max, until
 * lifetime), the split of recipients into calls of at most 50, the rate
 * limit, the pauses that throttling, quota and credential errors impose on
 * the whole transport, per-recipient results, bounces and removal.
 * Transports (relay/transport.h) only carry out single calls.
 */
#ifndef SESRELAY_SCHEDULER_H
#define SESRELAY_SCHEDULER_H

#include <stddef.h>
#include <stdint.h>

struct conf;
struct event_base;
struct spool;
struct transport;
struct scheduler;

struct scheduler *scheduler_new(struct event_base *base, struct spool *sp, struct transport *t,
    const struct conf *conf);
/* Take the settings that may change on SIGHUP. */
void scheduler_reconfigure(struct scheduler *s, const struct conf *conf);
/* Switch to a new transport (a reload changed [ses]).  The old one finishes
 * the calls it has in flight; then release(arg) runs to free it (at once if
 * it has none). */
void scheduler_set_transport(struct scheduler *s, struct transport *t,
    void (*release)(void *), void *arg);
/* A message is in the queue (new, or found at start). */
void scheduler_add(struct scheduler *s, const char *id, double arrival);
/* SIGUSR1 / "queue flush": every deferred message is due now. */
void scheduler_flush(struct scheduler *s);
/* Stop starting deliveries; done() runs when none is in flight any more
 * (at once if none is). */
void scheduler_stop(struct scheduler *s, void (*done)(void *), void *arg);
size_t scheduler_in_flight(const struct scheduler *s);
void scheduler_free(struct scheduler *s);

#endif
