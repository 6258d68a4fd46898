/*
 * transport.h - what the scheduler asks of a way to reach SES.
 *
 * A delivery is one SES call: one message, at most 50 envelope recipients.
 * The transport streams the message from the queue file (never loading it
 * whole), fills one outcome per recipient and calls done() later from the
 * loop, never from inside send().  Outcome classes follow SES-NOTES.md:
 * the scheduler, not the transport, decides retries, bounces and pauses.
 */
#ifndef SESRELAY_TRANSPORT_H
#define SESRELAY_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#define DELIVERY_MAX_RCPTS 50     /* SES takes at most 50 recipients a call */
#define DELIVERY_TEXT_MAX 400     /* outcome text kept per recipient */

enum delivery_status {
	DELIVERY_SENT,      /* SES accepted it; text = SES MessageId */
	DELIVERY_DEFER,     /* transient (network, 5xx HTTP, 4xx SMTP): retry later */
	DELIVERY_BOUNCE,    /* permanent (MessageRejected, 5xx SMTP ...): bounce */
	DELIVERY_THROTTLED, /* rate exceeded: slow the whole transport, retry */
	DELIVERY_QUOTA,     /* daily quota exhausted: hold delivery until it renews */
	DELIVERY_OPERATOR,  /* credentials/permission refused: pause, alert, never bounce */
};

struct delivery {
	/* input, owned by the scheduler */
	const char *id;                 /* queue id, for logs */
	int fd;                         /* the queue file, read-only */
	uint64_t data_offset;           /* where the message starts in fd */
	uint64_t data_len;
	const char *sender;             /* "" for <> */
	const char *rcpts[DELIVERY_MAX_RCPTS];
	size_t nrcpts;

	/* output, filled by the transport before done() */
	enum delivery_status status[DELIVERY_MAX_RCPTS];
	char text[DELIVERY_MAX_RCPTS][DELIVERY_TEXT_MAX];

	void (*done)(struct delivery *d);
	void *arg;                      /* scheduler's */
	void *priv;                     /* transport's */
};

/* Fill every recipient's outcome with the same status and text. */
void delivery_set_all(struct delivery *d, enum delivery_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

struct transport {
	const char *name;               /* for logs: "ses-api[us-west-2]" */
	void *impl;
	/* Deliveries the transport can start now (concurrency left). */
	size_t (*capacity)(struct transport *t);
	void (*send)(struct transport *t, struct delivery *d);
	/* Largest message the transport takes (0: unknown). */
	uint64_t (*max_size)(struct transport *t);
	/* SES's MaxSendRate in recipients/s when known; 0 while the lookup is
	 * under way, -1 when it failed.  Also sets *quota_left to the 24-hour
	 * quota left (-1: unknown/unlimited). */
	double (*send_rate)(struct transport *t, double *quota_left);
	/* Stop: cancel deliveries in flight (their done() does not run). */
	void (*free)(struct transport *t);
};

#endif
