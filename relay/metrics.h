/*
 * metrics.h - the daemon's counters, exported in Prometheus text format by
 * relay/http.c.  One daemon per process, so one global set of counters;
 * updated only on the loop thread.
 */
#ifndef SESRELAY_METRICS_H
#define SESRELAY_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;

#define METRICS_OUTCOMES 6   /* enum delivery_status */
#define METRICS_BUCKETS 12

struct metrics {
	uint64_t received;                 /* messages queued (250 sent) */
	uint64_t received_bytes;
	uint64_t rejected;                 /* transactions refused at end of data */
	uint64_t sent, deferred, bounced;  /* recipients, as the log's status= lines */
	uint64_t dsn;                      /* bounce reports queued */
	uint64_t ses_requests[METRICS_OUTCOMES];
	uint64_t auth_failures;
	uint64_t connections_total;
	uint64_t connections_refused;
	uint64_t identity_refusals;        /* MAIL/RCPT/From: refused as unverified in SES */
	uint64_t inbound_forwarded;        /* S3 objects queued for forwarding */
	uint64_t inbound_held;             /* S3 objects held (verdict, no map entry, size) */
	uint64_t inbound_dropped;          /* S3 objects deleted unforwarded (failed_verdict) */
	/* seconds from arrival to SES accepting a recipient */
	uint64_t delay_bucket[METRICS_BUCKETS];
	uint64_t delay_count;
	double delay_sum;
};

extern struct metrics metrics;

void metrics_delivery_delay(double seconds);
/* Prometheus text exposition of everything, with the gauges passed in. */
void metrics_format(struct evbuffer *out, size_t queue_messages, uint64_t queue_bytes,
    size_t smtp_connections, size_t ses_in_flight);

#endif
