/*
 * test_ratelimit.c - the token bucket and its back-off (relay/ratelimit.c),
 * driven by a simulated clock.
 */
#include <math.h>

#include "relay/ratelimit.h"
#include "tests/unit/unit.h"

/* Send calls of `n` recipients as fast as the bucket allows for `secs`
 * simulated seconds; return the recipients sent per second. */
static double simulate(struct ratelimit *rl, size_t n, double start, double secs)
{
	double now = start, sent = 0, w;

	while (now < start + secs) {
		w = ratelimit_take(rl, n, now);
		if (w == 0)
			sent += (double)n;
		else
			now += w;
	}
	return sent / secs;
}

static void unlimited(void)
{
	struct ratelimit rl;
	ratelimit_init(&rl, 0, 0);
	CHECK(ratelimit_take(&rl, 50, 0) == 0);
	CHECK(ratelimit_take(&rl, 50, 0) == 0);
}

static void holds_rate(void)
{
	static const struct {
		double rate;
		size_t n;
	} t[] = {{14, 1}, {14, 5}, {1, 1}, {200, 50}, {2, 50}, {0.5, 1}, {10, 50}};
	size_t i;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct ratelimit rl;
		ratelimit_init(&rl, t[i].rate, 0);
		double got = simulate(&rl, t[i].n, 0, 1000);
		if (fabs(got - t[i].rate) > t[i].rate * 0.1)
			fprintf(stderr, "rate %g n %zu: got %g\n", t[i].rate, t[i].n, got);
		CHECK(fabs(got - t[i].rate) <= t[i].rate * 0.1);
	}
}

static void big_call_below_rate_gets_through(void)
{
	struct ratelimit rl;
	double w;

	/* 50 recipients at 2/s: waits for a full bucket, then goes into debt */
	ratelimit_init(&rl, 2, 0);
	w = ratelimit_take(&rl, 50, 0);
	CHECK(w == 0);
	w = ratelimit_take(&rl, 50, 0.1);
	CHECK(w > 20 && w < 30); /* pays the debt back first */
}

static void throttle_halves_and_recovers(void)
{
	struct ratelimit rl;

	ratelimit_init(&rl, 20, 0);
	ratelimit_throttled(&rl, 20, 1);
	CHECK(fabs(rl.rate - 10) < 1e-9);
	ratelimit_throttled(&rl, 10, 2);
	CHECK(fabs(rl.rate - 5) < 1e-9);
	ratelimit_success(&rl, 5); /* too soon */
	CHECK(fabs(rl.rate - 5) < 1e-9);
	for (double now = 12; now < 200; now += 10)
		ratelimit_success(&rl, now);
	CHECK(fabs(rl.rate - 20) < 1e-9); /* back to the ceiling, never above */
}

static void adaptive_without_ceiling(void)
{
	struct ratelimit rl;

	ratelimit_init(&rl, 0, 0);
	ratelimit_throttled(&rl, 30, 1); /* we were doing 30/s */
	CHECK(fabs(rl.rate - 15) < 1e-9);
	double got = simulate(&rl, 1, 1, 5);
	CHECK(got < 17);
}

static void floor_rate(void)
{
	struct ratelimit rl;
	int i;

	ratelimit_init(&rl, 1, 0);
	for (i = 0; i < 20; i++)
		ratelimit_throttled(&rl, 1, i);
	CHECK(rl.rate >= 0.2 - 1e-9);
}

static void ceiling_change(void)
{
	struct ratelimit rl;

	ratelimit_init(&rl, 0, 0);
	ratelimit_set_ceiling(&rl, 14, 0);
	CHECK(fabs(rl.rate - 14) < 1e-9);
	ratelimit_set_ceiling(&rl, 7, 1);
	CHECK(fabs(rl.rate - 7) < 1e-9);
}

static const struct unit_case cases[] = {
    {"unlimited", unlimited},
    {"holds_rate", holds_rate},
    {"big_call_below_rate_gets_through", big_call_below_rate_gets_through},
    {"throttle_halves_and_recovers", throttle_halves_and_recovers},
    {"adaptive_without_ceiling", adaptive_without_ceiling},
    {"floor_rate", floor_rate},
    {"ceiling_change", ceiling_change},
};

UNIT_MAIN(cases)
