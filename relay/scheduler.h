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
/* The same for a message just committed, whose envelope the caller knows
 * (saves reading the file back). */
void scheduler_add_new(struct scheduler *s, const char *id, double arrival, uint64_t size,
    const char *sender, size_t nrcpts);
/* SIGUSR1 / "queue flush": every deferred message is due now.  Returns how
 * many were deferred. */
size_t scheduler_flush(struct scheduler *s);
/* Stop starting deliveries; done() runs when none is in flight any more
 * (at once if none is). */
void scheduler_stop(struct scheduler *s, void (*done)(void *), void *arg);
size_t scheduler_in_flight(const struct scheduler *s);

/* --- "sesrelay queue" (relay/control.c) ----------------------------------- */

enum scheduler_state {
	SCHED_QUEUED,    /* due now, waiting for the transport */
	SCHED_DEFERRED,  /* waiting for next_try */
	SCHED_ACTIVE,    /* a delivery attempt (pass) is in progress */
	SCHED_HELD,      /* parked by the operator */
	SCHED_BOUNCING,  /* finished; its bounce is being queued, then it is removed */
};

/* What the queue manager knows of one message.  Sender and recipient counts
 * are read from the queue and state files when the message is added (and
 * refreshed at every attempt); attempts and last_error live in memory only,
 * so they start again from 0 / "" after a restart. */
struct scheduler_info {
	const char *id;
	double arrival;
	uint64_t size;          /* of the queue file */
	const char *sender;     /* "" for <>; NULL if the file could not be read */
	size_t nrcpts, left;    /* envelope recipients / not yet sent nor bounced */
	int attempts;
	double next_try;        /* SCHED_DEFERRED: unix time; else 0 */
	const char *last_error; /* "" when none */
	enum scheduler_state state;
	int hold_pending;       /* hold asked while active: parked when the attempt ends */
	int delete_pending;     /* delete asked while active: removed when it ends */
};
typedef void (*scheduler_info_cb)(void *arg, const struct scheduler_info *info);
/* Every message in the queue, in no particular order. */
void scheduler_foreach(struct scheduler *s, scheduler_info_cb cb, void *arg);
/* 0 and *info filled, or -1: no such message. */
int scheduler_lookup(struct scheduler *s, const char *id, struct scheduler_info *info);

/* Outcome of an operator's request; msg gets one line for the operator. */
enum scheduler_op {
	SCHED_OP_DONE,     /* done now */
	SCHED_OP_PENDING,  /* an attempt is in flight: done when it returns */
	SCHED_OP_NOTFOUND, /* no message with that id */
	SCHED_OP_REFUSED,  /* not in a state that allows it (e.g. release of a message not held) */
	SCHED_OP_FAILED,   /* the spool could not be changed (errno in msg) */
};
/* Retry now (a held message is not retried: release it). */
enum scheduler_op scheduler_flush_id(struct scheduler *s, const char *id, char *msg, size_t len);
/* Park: recorded in state/ID (survives restarts), never delivered until
 * released.  In flight: the calls SES already has complete and are
 * recorded; then the message is parked instead of being retried. */
enum scheduler_op scheduler_hold(struct scheduler *s, const char *id, char *msg, size_t len);
enum scheduler_op scheduler_release(struct scheduler *s, const char *id, char *msg, size_t len);
/* Remove from the spool without delivering or bouncing.  In flight: the
 * results of the calls SES already has are logged, then it is removed. */
enum scheduler_op scheduler_delete(struct scheduler *s, const char *id, char *msg, size_t len);
void scheduler_free(struct scheduler *s);

#endif
