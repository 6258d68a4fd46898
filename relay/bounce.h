/*
 * bounce.h - RFC 3464 delivery status notifications ("bounces").
 *
 * bounce_compose() writes a complete DSN message (headers and body, CRLF
 * line ends, every line under 1000 octets) for the failed recipients of one
 * queued message.  The caller queues it like any message, with the null
 * sender <> so that a bounce can never cause another bounce.
 */
#ifndef SESRELAY_BOUNCE_H
#define SESRELAY_BOUNCE_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;

struct bounce_rcpt {
	const char *addr;        /* the envelope recipient */
	const char *status;      /* RFC 3463 code, "5.0.0" or "4.4.7" */
	const char *diagnostic;  /* SES's words, e.g. "400 MessageRejected: Email address is not verified." */
};

struct bounce_info {
	const char *queue_id;     /* of the failed message */
	const char *hostname;     /* the relay's [relay] hostname: Reporting-MTA */
	const char *from;         /* [queue] bounce_from */
	const char *to;           /* the failed message's envelope sender */
	double arrival;           /* unix time the failed message arrived */
	int expired;              /* 1: lifetime exceeded (wording: "could not be delivered in time") */
	const struct bounce_rcpt *rcpts;
	size_t nrcpts;
	/* The failed message: its header section is copied into the
	 * text/rfc822-headers part (at most 64 KiB of it, whole lines). */
	int orig_fd;
	uint64_t orig_offset;
	uint64_t orig_len;
};

/* Append the DSN to out.  Returns 0, or -1 (errno) when the original could
 * not be read: the DSN is then still written, without the headers part. */
int bounce_compose(struct evbuffer *out, const struct bounce_info *bi);

#endif
