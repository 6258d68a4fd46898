/*
 * ratelimit.c - token bucket with AIMD back-off (see ratelimit.h).
 */
#include "relay/ratelimit.h"

#define MIN_RATE 0.2          /* never slower than one recipient per 5 s */
#define RAISE_EVERY 10.0      /* seconds without throttling before a raise */
#define RAISE_FACTOR 1.25

static void refill(struct ratelimit *rl, double now)
{
	double cap;

	if (rl->rate <= 0) {
		rl->last = now;
		return;
	}
	cap = rl->rate < 1 ? 1 : rl->rate;
	rl->tokens += (now - rl->last) * rl->rate;
	if (rl->tokens > cap)
		rl->tokens = cap;
	rl->last = now;
}

void ratelimit_init(struct ratelimit *rl, double ceiling, double now)
{
	rl->ceiling = ceiling > 0 ? ceiling : 0;
	rl->rate = rl->ceiling;
	rl->tokens = rl->rate < 1 ? 1 : rl->rate;
	rl->last = now;
	rl->last_throttle = 0;
	rl->last_raise = now;
}

void ratelimit_set_ceiling(struct ratelimit *rl, double ceiling, double now)
{
	refill(rl, now);
	rl->ceiling = ceiling > 0 ? ceiling : 0;
	if (rl->ceiling > 0 && (rl->rate <= 0 || rl->rate > rl->ceiling))
		rl->rate = rl->ceiling;
	if (rl->ceiling == 0 && rl->last_throttle == 0)
		rl->rate = 0;
}

double ratelimit_take(struct ratelimit *rl, size_t n, double now)
{
	double need, cap;

	refill(rl, now);
	if (rl->rate <= 0)
		return 0;
	cap = rl->rate < 1 ? 1 : rl->rate;
	need = (double)n < cap ? (double)n : cap; /* a big call waits for a full bucket */
	if (rl->tokens >= need - 1e-9) {
		rl->tokens -= (double)n; /* may go into debt */
		return 0;
	}
	return (need - rl->tokens) / rl->rate;
}

void ratelimit_throttled(struct ratelimit *rl, double recent_rate, double now)
{
	double base;

	refill(rl, now);
	base = rl->rate > 0 ? rl->rate : recent_rate;
	if (base <= 0)
		base = 1;
	rl->rate = base / 2;
	if (rl->rate < MIN_RATE)
		rl->rate = MIN_RATE;
	if (rl->tokens > 0)
		rl->tokens = 0;
	rl->last_throttle = now;
	rl->last_raise = now;
}

void ratelimit_success(struct ratelimit *rl, double now)
{
	if (rl->rate <= 0 || now - rl->last_raise < RAISE_EVERY || rl->last_throttle == 0)
		return;
	rl->last_raise = now;
	rl->rate *= RAISE_FACTOR;
	if (rl->ceiling > 0 && rl->rate >= rl->ceiling) {
		rl->rate = rl->ceiling;
		rl->last_throttle = 0; /* fully recovered */
	}
}
