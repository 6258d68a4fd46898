/*
 * metrics.c - counters and their Prometheus text format (version 0.0.4).
 */
#include <event2/buffer.h>

#include "relay/metrics.h"

struct metrics metrics;

static const double bucket_le[METRICS_BUCKETS] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
    300, 3600};

static const char *outcome_names[METRICS_OUTCOMES] = {"sent", "deferred", "bounced",
    "throttled", "quota", "refused"};

void metrics_delivery_delay(double seconds)
{
	int i;

	for (i = 0; i < METRICS_BUCKETS; i++)
		if (seconds <= bucket_le[i])
			metrics.delay_bucket[i]++;
	metrics.delay_count++;
	metrics.delay_sum += seconds;
}

static void counter(struct evbuffer *out, const char *name, const char *help, uint64_t v)
{
	evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name,
	    name, (unsigned long long)v);
}

static void gauge(struct evbuffer *out, const char *name, const char *help, double v)
{
	evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s gauge\n%s %.17g\n", name, help, name, name,
	    v);
}

void metrics_format(struct evbuffer *out, size_t queue_messages, uint64_t queue_bytes,
    size_t smtp_connections, size_t ses_in_flight)
{
	int i;

	counter(out, "sesrelay_messages_received_total", "Messages accepted and queued.",
	    metrics.received);
	counter(out, "sesrelay_received_bytes_total", "Bytes of messages queued.",
	    metrics.received_bytes);
	counter(out, "sesrelay_messages_rejected_total",
	    "Messages refused at the end of DATA (size, bare LF, sender ownership, disk).",
	    metrics.rejected);
	counter(out, "sesrelay_messages_sent_total",
	    "Recipients accepted by SES (one per status=sent log line).", metrics.sent);
	counter(out, "sesrelay_messages_deferred_total",
	    "Recipients deferred for a later retry (status=deferred).", metrics.deferred);
	counter(out, "sesrelay_messages_bounced_total",
	    "Recipients that failed permanently (status=bounced).", metrics.bounced);
	counter(out, "sesrelay_bounces_queued_total", "Delivery status notifications queued.",
	    metrics.dsn);
	evbuffer_add_printf(out, "# HELP sesrelay_ses_requests_total SES calls by outcome.\n"
				 "# TYPE sesrelay_ses_requests_total counter\n");
	for (i = 0; i < METRICS_OUTCOMES; i++)
		evbuffer_add_printf(out, "sesrelay_ses_requests_total{outcome=\"%s\"} %llu\n",
		    outcome_names[i], (unsigned long long)metrics.ses_requests[i]);
	counter(out, "sesrelay_auth_failures_total", "Failed SMTP AUTH attempts.",
	    metrics.auth_failures);
	counter(out, "sesrelay_smtp_connections_total", "SMTP connections accepted.",
	    metrics.connections_total);
	counter(out, "sesrelay_smtp_connections_refused_total",
	    "SMTP connections refused by a cap or a lock-out.", metrics.connections_refused);
	counter(out, "sesrelay_identity_refusals_total",
	    "MAIL, RCPT or From: refused because SES has not verified the identity.",
	    metrics.identity_refusals);
	counter(out, "sesrelay_inbound_forwarded_total",
	    "Messages from the [inbound] bucket queued for forwarding.", metrics.inbound_forwarded);
	counter(out, "sesrelay_inbound_held_total",
	    "Messages from the [inbound] bucket held (failing verdict, no map entry, too large).",
	    metrics.inbound_held);
	counter(out, "sesrelay_inbound_dropped_total",
	    "Messages from the [inbound] bucket deleted unforwarded (failed_verdict = delete).",
	    metrics.inbound_dropped);
	gauge(out, "sesrelay_queue_messages", "Messages in the queue.", (double)queue_messages);
	gauge(out, "sesrelay_queue_bytes", "Bytes of queue files.", (double)queue_bytes);
	gauge(out, "sesrelay_smtp_connections", "SMTP sessions open now.", (double)smtp_connections);
	gauge(out, "sesrelay_ses_requests_in_flight", "SES calls in flight now.",
	    (double)ses_in_flight);
	evbuffer_add_printf(out,
	    "# HELP sesrelay_delivery_duration_seconds Time from arrival to SES accepting a "
	    "recipient.\n# TYPE sesrelay_delivery_duration_seconds histogram\n");
	for (i = 0; i < METRICS_BUCKETS; i++)
		evbuffer_add_printf(out, "sesrelay_delivery_duration_seconds_bucket{le=\"%g\"} %llu\n",
		    bucket_le[i], (unsigned long long)metrics.delay_bucket[i]);
	evbuffer_add_printf(out,
	    "sesrelay_delivery_duration_seconds_bucket{le=\"+Inf\"} %llu\n"
	    "sesrelay_delivery_duration_seconds_sum %.17g\n"
	    "sesrelay_delivery_duration_seconds_count %llu\n",
	    (unsigned long long)metrics.delay_count, metrics.delay_sum,
	    (unsigned long long)metrics.delay_count);
}
