/*
 * inbound.h - the S3 forwarder: mail that SES received for the owner's
 * domain and stored in an S3 bucket is rewritten and queued for delivery
 * through SES to the owner's real inbox - what aws-lambda-ses-forwarder
 * does, without a Lambda.
 *
 * Owns: polling the bucket ([inbound] poll_interval), streaming each object
 * through the rewrite (relay/inbound_msg.c) into the spool, the recipient
 * map (relay/inbound_map.c), the exactly-once hand-off between "queued" and
 * "gone from the bucket" (protocol at the top of inbound.c), holding objects
 * with a failing spam/virus verdict, and the log lines of all that.
 */
#ifndef SESRELAY_INBOUND_H
#define SESRELAY_INBOUND_H

#include <stddef.h>

struct conf;
struct event_base;
struct ses_http;
struct spool;
struct inbound;

/*
 * NULL when [inbound] is not configured (err "") or cannot run (err says
 * why).  Recovers the hand-off markers left by a previous run (blocking: call
 * before the loop runs), then polls from the loop.  http and sp must outlive
 * it.
 */
struct inbound *inbound_new(struct event_base *base, struct ses_http *http, struct spool *sp,
                            const struct conf *conf, char *err, size_t errlen);
/* Poll now (SIGUSR1). */
void inbound_poll_now(struct inbound *in);
/* Stop: transfers in flight are abandoned (their objects stay in the bucket
 * and are fetched again next time; nothing is queued twice). */
void inbound_free(struct inbound *in);

#endif
