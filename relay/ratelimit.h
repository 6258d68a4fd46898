/*
 * ratelimit.h - the token bucket that keeps delivery under SES's send rate.
 *
 * Tokens are recipients.  The bucket holds at most one second's worth, but a
 * call larger than that (up to 50 recipients with a rate below 50/s) is let
 * through as soon as the bucket is full, leaving it in debt: the long-run
 * rate holds and no call starves.  Throttling replies halve the rate
 * (multiplicative decrease, as TCP); quiet periods win it back gradually,
 * never above the ceiling.
 */
#ifndef SESRELAY_RATELIMIT_H
#define SESRELAY_RATELIMIT_H

#include <stddef.h>

struct ratelimit {
	double ceiling;      /* recipients/s allowed at most; 0 = no limit known */
	double rate;         /* current rate; 0 = unlimited */
	double tokens;
	double last;         /* time tokens were last updated */
	double last_throttle;
	double last_raise;
};

void ratelimit_init(struct ratelimit *rl, double ceiling, double now);
/* New ceiling (config reload or SES's MaxSendRate).  0 = none known. */
void ratelimit_set_ceiling(struct ratelimit *rl, double ceiling, double now);
/* 0 when n recipients may go now (tokens taken), else seconds to wait. */
double ratelimit_take(struct ratelimit *rl, size_t n, double now);
/* SES said "slow down".  recent_rate: what we actually sent lately (r/s). */
void ratelimit_throttled(struct ratelimit *rl, double recent_rate, double now);
/* A call went through: after a quiet period the rate climbs back. */
void ratelimit_success(struct ratelimit *rl, double now);

#endif
