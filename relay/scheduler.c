/*
 * scheduler.c - the queue manager (see scheduler.h).
 *
 * DATA STRUCTURES
 *   index   every queued message by id (chained hash): struct qentry
 *   ready   FIFO of messages due now
 *   heap    deferred messages, a binary min-heap on next_try; one timer
 *           fires for the earliest and moves what is due to ready
 *   cur     the message whose recipients are being cut into calls
 *
 * A "pass" is one attempt at every pending recipient of a message: its
 * recipients go out in calls of at most 50 (several may be in flight at
 * once), and when the last call of the pass returns the message is either
 * finished (every recipient sent or bounced: bounce if needed, then remove)
 * or goes back to the heap.
 *
 * DURABILITY OF RESULTS
 *   A message with more than one call per pass records each recipient's
 *   final result in state/ID as soon as its call returns, so a crash or a
 *   later failure never re-sends to a recipient SES already accepted.  A
 *   single-call message is all-or-nothing at the API, and its results are
 *   recorded only if the pass ends with recipients still pending.
 *
 * TRANSPORT-WIDE CONDITIONS
 *   throttling  halves the rate (ratelimit.c), pauses briefly, and the
 *               message is retried soon without counting an attempt;
 *   daily quota holds all delivery for QUOTA_PAUSE_S, re-probing after;
 *   operator    (403, bad keys, sending paused) holds all delivery, probing
 *               again after retry_initial, doubling up to retry_max, and
 *               says so loudly once; nothing bounces.  A reload (SIGHUP)
 *               lifts every pause, so a fixed config is tried at once.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/rand.h>

#include "conf/conf.h"
#include "relay/bounce.h"
#include "relay/log.h"
#include "relay/metrics.h"
#include "relay/ratelimit.h"
#include "relay/scheduler.h"
#include "relay/spool.h"
#include "relay/transport.h"
#include "relay/util.h"

#define INDEX_SIZE 16384
#define THROTTLE_PAUSE_S 2.0
#define QUOTA_PAUSE_S 600.0
#define RATE_CHECK_S 10.0
#define RATE_WAIT_S 5.0       /* max_send_rate = auto: wait this long for GetAccount */

struct qentry {
	struct qentry *hnext;        /* index chain */
	struct qentry *rnext;        /* ready FIFO */
	char id[SPOOL_ID_LEN + 1];
	double arrival;
	double next_try;
	int attempts;
	int heap_pos;                /* -1 when not in the heap */
	int ready;                   /* in the ready FIFO */
	int finishing;               /* bounce being queued; then removed */
	char *last_error;            /* NULL until an attempt fails */

	/* for "sesrelay queue": read from the files at add, refreshed per pass */
	char *sender;                /* NULL until read */
	uint64_t size;
	size_t nrcpts, left;
	int held;                    /* parked by the operator: neither ready nor in the heap */
	int hold_req;                /* hold asked during a pass: park when it ends */
	int deleted;                 /* delete asked during a pass: remove when it ends */

	/* during a pass */
	struct spool_msg *msg;
	size_t cursor;               /* next recipient to cut into a call */
	int inflight;
	int multi;                   /* more than one call this pass */
	int pass_deferred;           /* some recipient got a transient failure */
	int pass_paused;             /* some recipient hit a transport-wide condition */
	unsigned char *dirty;        /* final results not yet recorded */
};

struct call {
	struct delivery d;              /* first: the transport hands it back */
	struct call *next, *prev;       /* all calls in flight */
	struct transport *t;            /* the transport carrying it */
	struct qentry *e;
	size_t idx[DELIVERY_MAX_RCPTS]; /* recipient index in the message */
	double started;
};

/* A transport replaced by a reload, finishing its calls. */
struct retiring {
	struct retiring *next;
	struct transport *t;
	size_t inflight;
	void (*release)(void *);
	void *arg;
};

struct scheduler {
	struct event_base *base;
	struct spool *spool;
	struct transport *t;
	void (*release)(void *);      /* frees t (set by scheduler_set_transport) */
	void *release_arg;
	struct retiring *retiring;

	/* settings */
	uint64_t retry_initial, retry_max, lifetime;
	char *bounce_from;
	char *hostname;
	double max_send_rate;        /* configured; 0 = auto */

	struct qentry *index[INDEX_SIZE];
	size_t nentries;
	struct qentry *ready_head, *ready_tail;
	struct qentry **heap;
	size_t nheap, heapcap;
	struct qentry *cur;

	struct ratelimit rl;
	double paused_until;
	int operator_alerted;
	int operator_streak;          /* consecutive operator errors */
	double rate_wait_until;       /* auto rate: hold the first calls until known */
	double sent_window_start;    /* for the recent-rate estimate */
	double sent_window_count;

	struct event *run_ev;        /* deferred "run" */
	struct event *timer;         /* heap head / pause end / rate wait */
	struct event *rate_check;

	struct call *calls;
	size_t inflight;
	int stopping;
	void (*stopped)(void *);
	void *stopped_arg;
};

static void kick(struct scheduler *s);
static void pass_end(struct scheduler *s, struct qentry *e);
static void retiring_done(struct scheduler *s, struct transport *t);

/* --- index --------------------------------------------------------------- */

static unsigned id_hash(const char *id)
{
	unsigned h = 2166136261u;
	for (; *id; id++)
		h = (h ^ (unsigned char)*id) * 16777619u;
	return h % INDEX_SIZE;
}

static struct qentry *index_find(struct scheduler *s, const char *id)
{
	struct qentry *e;
	for (e = s->index[id_hash(id)]; e; e = e->hnext)
		if (strcmp(e->id, id) == 0)
			return e;
	return NULL;
}

static void index_remove(struct scheduler *s, struct qentry *e)
{
	struct qentry **pp = &s->index[id_hash(e->id)];
	while (*pp != e)
		pp = &(*pp)->hnext;
	*pp = e->hnext;
	s->nentries--;
}

/* --- heap of deferred messages ------------------------------------------- */

static void heap_swap(struct scheduler *s, size_t a, size_t b)
{
	struct qentry *t = s->heap[a];
	s->heap[a] = s->heap[b];
	s->heap[b] = t;
	s->heap[a]->heap_pos = (int)a;
	s->heap[b]->heap_pos = (int)b;
}

static void heap_up(struct scheduler *s, size_t i)
{
	while (i > 0 && s->heap[(i - 1) / 2]->next_try > s->heap[i]->next_try) {
		heap_swap(s, i, (i - 1) / 2);
		i = (i - 1) / 2;
	}
}

static void heap_down(struct scheduler *s, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < s->nheap && s->heap[l]->next_try < s->heap[m]->next_try)
			m = l;
		if (r < s->nheap && s->heap[r]->next_try < s->heap[m]->next_try)
			m = r;
		if (m == i)
			return;
		heap_swap(s, i, m);
		i = m;
	}
}

static void heap_push(struct scheduler *s, struct qentry *e)
{
	if (s->nheap == s->heapcap) {
		s->heapcap = s->heapcap ? s->heapcap * 2 : 256;
		s->heap = xreallocarray(s->heap, s->heapcap, sizeof(*s->heap));
	}
	s->heap[s->nheap] = e;
	e->heap_pos = (int)s->nheap;
	heap_up(s, s->nheap++);
}

static void heap_remove(struct scheduler *s, struct qentry *e)
{
	size_t i = (size_t)e->heap_pos;

	ASSERT(e->heap_pos >= 0 && i < s->nheap && s->heap[i] == e);
	e->heap_pos = -1;
	if (i != --s->nheap) {
		s->heap[i] = s->heap[s->nheap];
		s->heap[i]->heap_pos = (int)i;
		heap_down(s, i);
		heap_up(s, i);
	}
}

/* --- ready FIFO ---------------------------------------------------------- */

static void ready_push(struct scheduler *s, struct qentry *e)
{
	if (e->ready)
		return;
	e->ready = 1;
	e->rnext = NULL;
	if (s->ready_tail)
		s->ready_tail->rnext = e;
	else
		s->ready_head = e;
	s->ready_tail = e;
}

static struct qentry *ready_pop(struct scheduler *s)
{
	struct qentry *e = s->ready_head;
	if (e == NULL)
		return NULL;
	s->ready_head = e->rnext;
	if (s->ready_head == NULL)
		s->ready_tail = NULL;
	e->ready = 0;
	e->rnext = NULL;
	return e;
}

/* Take e out of the ready FIFO (operator requests only: O(length)). */
static void ready_remove(struct scheduler *s, struct qentry *e)
{
	struct qentry *p = NULL, *q;

	if (!e->ready)
		return;
	for (q = s->ready_head; q != NULL && q != e; q = q->rnext)
		p = q;
	ASSERT(q == e);
	if (p)
		p->rnext = e->rnext;
	else
		s->ready_head = e->rnext;
	if (s->ready_tail == e)
		s->ready_tail = p;
	e->ready = 0;
	e->rnext = NULL;
}

static void set_last_error(struct qentry *e, const char *text)
{
	free(e->last_error);
	e->last_error = xstrdup(text);
}

/* What "queue list" shows of a message, from its files. */
static void entry_note_msg(struct qentry *e, const struct spool_msg *m)
{
	size_t i;

	if (e->sender == NULL)
		e->sender = xstrdup(m->sender);
	e->size = m->file_size;
	e->nrcpts = m->nrcpts;
	e->left = 0;
	for (i = 0; i < m->nrcpts; i++)
		e->left += m->rstate[i] == SPOOL_RCPT_PENDING;
	e->held = m->hold;
}

/* --- timers -------------------------------------------------------------- */

static void arm_timer(struct scheduler *s, double now)
{
	double when = -1;
	struct timeval tv;

	if (s->nheap > 0)
		when = s->heap[0]->next_try;
	if (s->paused_until > now && (s->ready_head || s->cur) &&
	    (when < 0 || s->paused_until < when))
		when = s->paused_until;
	event_del(s->timer);
	if (when < 0)
		return;
	double wait = when - now;
	if (wait < 0.001)
		wait = 0.001;
	tv.tv_sec = (time_t)wait;
	tv.tv_usec = (suseconds_t)((wait - (double)tv.tv_sec) * 1e6);
	event_add(s->timer, &tv);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct scheduler *s = arg;
	double now = util_now();

	while (s->nheap > 0 && s->heap[0]->next_try <= now + 0.0005) {
		struct qentry *e = s->heap[0];
		heap_remove(s, e);
		ready_push(s, e);
	}
	kick(s);
}

/* --- logging ------------------------------------------------------------- */

static const char *status_word(enum delivery_status st)
{
	switch (st) {
	case DELIVERY_SENT:
		return "sent";
	case DELIVERY_BOUNCE:
		return "bounced";
	default:
		return "deferred";
	}
}

static void log_result(struct scheduler *s, struct qentry *e, const char *rcpt,
    enum delivery_status st, const char *text, double started)
{
	double now = util_now();

	log_info("%s: to=<%s>, relay=%s, delay=%.2g, delays=%.2g/%.2g, attempts=%d, status=%s (%s)",
	    e->id, rcpt, s->t->name, now - e->arrival, started - e->arrival, now - started,
	    e->attempts + 1, status_word(st), text);
}

/* --- dispatch ------------------------------------------------------------ */

static void recent_rate_note(struct scheduler *s, size_t n, double now)
{
	if (now - s->sent_window_start > 10) {
		s->sent_window_start = now;
		s->sent_window_count = 0;
	}
	s->sent_window_count += (double)n;
}

static double recent_rate(struct scheduler *s, double now)
{
	double span = now - s->sent_window_start;
	return span > 0.5 ? s->sent_window_count / span : s->sent_window_count;
}

static void pause_transport(struct scheduler *s, double seconds)
{
	double until = util_now() + seconds;
	if (until > s->paused_until)
		s->paused_until = until;
}

static void record_dirty(struct scheduler *s, struct qentry *e)
{
	size_t i;

	if (e->dirty == NULL)
		return;
	for (i = 0; i < e->msg->nrcpts; i++) {
		if (!e->dirty[i])
			continue;
		e->dirty[i] = 0;
		if (spool_msg_record(s->spool, e->msg, i, e->msg->rstate[i], e->msg->rtext[i]) ==
		    -1)
			log_warn("%s: cannot record the result for <%s> in the spool", e->id,
			    e->msg->rcpts[i]);
	}
}

static void call_done(struct delivery *d)
{
	struct call *c = (struct call *)d;
	struct qentry *e = c->e;
	struct scheduler *s = d->arg;
	double now = util_now();
	int all_sent = 1;
	size_t i;

	s->inflight--;
	e->inflight--;
	if (c->prev)
		c->prev->next = c->next;
	else
		s->calls = c->next;
	if (c->next)
		c->next->prev = c->prev;
	for (i = 0; i < d->nrcpts; i++) {
		size_t idx = c->idx[i];
		const char *text = d->text[i];

		log_result(s, e, d->rcpts[i], d->status[i], text, c->started);
		if (d->status[i] == DELIVERY_SENT) {
			metrics.sent++;
			metrics_delivery_delay(now - e->arrival);
		} else if (d->status[i] == DELIVERY_BOUNCE)
			metrics.bounced++;
		else
			metrics.deferred++;
		switch (d->status[i]) {
		case DELIVERY_SENT:
		case DELIVERY_BOUNCE:
			e->msg->rstate[idx] =
			    d->status[i] == DELIVERY_SENT ? SPOOL_RCPT_SENT : SPOOL_RCPT_BOUNCED;
			free(e->msg->rtext[idx]);
			e->msg->rtext[idx] = xstrdup(text);
			e->dirty[idx] = 1;
			if (e->left > 0)
				e->left--;
			if (d->status[i] != DELIVERY_SENT)
				all_sent = 0;
			break;
		case DELIVERY_DEFER:
			e->pass_deferred = 1;
			all_sent = 0;
			set_last_error(e, text);
			break;
		case DELIVERY_THROTTLED:
		case DELIVERY_QUOTA:
		case DELIVERY_OPERATOR:
			e->pass_paused = 1;
			all_sent = 0;
			set_last_error(e, text);
			break;
		}
	}
	/* transport-wide conditions: judged once per call */
	if (d->nrcpts > 0 && (int)d->status[0] < METRICS_OUTCOMES)
		metrics.ses_requests[d->status[0]]++;
	switch (d->status[0]) {
	case DELIVERY_THROTTLED:
		ratelimit_throttled(&s->rl, recent_rate(s, now), now);
		pause_transport(s, THROTTLE_PAUSE_S);
		log_warnx("SES is throttling us (%s): slowing down to %.2g recipients/s", d->text[0],
		    s->rl.rate);
		break;
	case DELIVERY_QUOTA:
		pause_transport(s, QUOTA_PAUSE_S);
		log_warnx("SES daily sending quota exhausted (%s): holding delivery for %.0f minutes",
		    d->text[0], QUOTA_PAUSE_S / 60);
		break;
	case DELIVERY_OPERATOR: {
		double pause = (double)s->retry_initial;
		int k;
		for (k = 0; k < s->operator_streak && pause < (double)s->retry_max; k++)
			pause *= 2;
		if (pause > (double)s->retry_max)
			pause = (double)s->retry_max;
		s->operator_streak++;
		pause_transport(s, pause);
		if (!s->operator_alerted)
			log_error("SES refused the request: %s. Delivery is paused and nothing is "
				  "bounced; the relay probes again after %.0f s, backing off to %llu s. "
				  "Check the credentials and the IAM policy (ses:SendRawEmail, "
				  "ses:SendEmail) and whether sending is paused for the account; "
				  "'sesrelay check' tests them, SIGHUP reloads a fixed config.",
			    d->text[0], pause, (unsigned long long)s->retry_max);
		s->operator_alerted = 1;
		break;
	}
	case DELIVERY_SENT:
		if (s->operator_alerted)
			log_info("SES accepts our requests again: delivery resumed");
		s->operator_alerted = 0;
		s->operator_streak = 0;
		break;
	default:
		break;
	}
	if (all_sent)
		ratelimit_success(&s->rl, now);
	if (e->multi)
		record_dirty(s, e); /* other calls of this message may still fail */
	if (c->t != s->t)
		retiring_done(s, c->t);
	free(c);
	if (e->inflight == 0 && e != s->cur)
		pass_end(s, e);
	if (s->stopping && s->inflight == 0 && s->stopped) {
		void (*cb)(void *) = s->stopped;
		s->stopped = NULL;
		cb(s->stopped_arg);
		return;
	}
	kick(s);
}

static void retiring_done(struct scheduler *s, struct transport *t)
{
	struct retiring **pp, *r;

	for (pp = &s->retiring; (r = *pp) != NULL; pp = &r->next)
		if (r->t == t)
			break;
	ASSERT(r != NULL && r->inflight > 0);
	if (--r->inflight > 0)
		return;
	*pp = r->next;
	if (r->release) /* safe inside the transport's own done() */
		r->release(r->arg);
	else
		r->t->free(r->t);
	free(r);
}

/* Open the next ready message.  0: s->cur is set; -1: nothing ready. */
static int next_message(struct scheduler *s)
{
	struct qentry *e;
	char err[256];
	size_t i, pending = 0;

	while ((e = ready_pop(s)) != NULL) {
		if (e->finishing)
			continue;
		e->msg = spool_msg_open(s->spool, e->id, err, sizeof(err));
		if (e->msg == NULL) {
			log_warnx("%s: cannot be delivered: %s; left in the spool", e->id, err);
			index_remove(s, e);
			free(e->dirty);
			free(e->sender);
			free(e->last_error);
			free(e);
			continue;
		}
		entry_note_msg(e, e->msg);
		if (e->msg->hold) {
			spool_msg_close(e->msg);
			e->msg = NULL;
			continue; /* released by the operator later */
		}
		e->arrival = e->msg->arrival;
		for (i = 0; i < e->msg->nrcpts; i++)
			pending += e->msg->rstate[i] == SPOOL_RCPT_PENDING;
		e->cursor = 0;
		e->pass_deferred = e->pass_paused = 0;
		e->multi = pending > DELIVERY_MAX_RCPTS;
		free(e->dirty);
		e->dirty = xcalloc(e->msg->nrcpts, 1);
		if (pending == 0) {
			pass_end(s, e); /* all done in an earlier life: finish */
			continue;
		}
		s->cur = e;
		return 0;
	}
	return -1;
}

static void run(evutil_socket_t fd, short what, void *arg)
{
	struct scheduler *s = arg;
	double now = util_now();

	if (s->stopping || s->t == NULL)
		return;
	if (s->paused_until > now) {
		arm_timer(s, now);
		return;
	}
	if (s->rate_wait_until > 0) {
		/* max_send_rate = auto: SES's MaxSendRate should arrive any moment;
		 * sending at full speed before it does is what gets us throttled. */
		double quota_left, rate = s->t->send_rate ? s->t->send_rate(s->t, &quota_left) : 0;
		if (rate != 0 || now >= s->rate_wait_until || s->max_send_rate > 0) {
			s->rate_wait_until = 0;
			if (rate > 0 && s->max_send_rate == 0) {
				ratelimit_set_ceiling(&s->rl, rate, now);
				log_info("send rate: %.6g recipients/s (SES MaxSendRate)", rate);
			}
		} else {
			struct timeval tv = {0, 100000};
			event_del(s->timer);
			event_add(s->timer, &tv);
			return;
		}
	}
	while (s->t->capacity(s->t) > 0) {
		struct qentry *e;
		struct call *c;
		size_t n = 0, i;
		double wait;

		if (s->cur == NULL && next_message(s) == -1)
			break;
		e = s->cur;
		/* count the next call's recipients without taking them yet */
		for (i = e->cursor; i < e->msg->nrcpts && n < DELIVERY_MAX_RCPTS; i++)
			n += e->msg->rstate[i] == SPOOL_RCPT_PENDING;
		if (n == 0) {
			s->cur = NULL;
			if (e->inflight == 0)
				pass_end(s, e);
			continue;
		}
		if ((wait = ratelimit_take(&s->rl, n, now)) > 0) {
			struct timeval tv = {(time_t)wait, (suseconds_t)((wait - floor(wait)) * 1e6)};
			event_del(s->timer);
			event_add(s->timer, &tv);
			return;
		}
		c = xcalloc(1, sizeof(*c));
		c->t = s->t;
		c->e = e;
		c->started = now;
		c->d.id = e->id;
		c->d.fd = e->msg->fd;
		c->d.data_offset = e->msg->data_offset;
		c->d.data_len = e->msg->data_len;
		c->d.sender = e->msg->sender;
		c->d.done = call_done;
		c->d.arg = s;
		for (i = e->cursor; i < e->msg->nrcpts && c->d.nrcpts < DELIVERY_MAX_RCPTS; i++) {
			if (e->msg->rstate[i] != SPOOL_RCPT_PENDING)
				continue;
			c->idx[c->d.nrcpts] = i;
			c->d.rcpts[c->d.nrcpts++] = e->msg->rcpts[i];
		}
		e->cursor = i;
		if (e->cursor < e->msg->nrcpts) {
			size_t j, more = 0;
			for (j = e->cursor; j < e->msg->nrcpts; j++)
				more += e->msg->rstate[j] == SPOOL_RCPT_PENDING;
			if (more == 0)
				e->cursor = e->msg->nrcpts;
		}
		if (e->cursor >= e->msg->nrcpts)
			s->cur = NULL; /* last call of this pass */
		e->inflight++;
		s->inflight++;
		c->next = s->calls;
		if (s->calls)
			s->calls->prev = c;
		s->calls = c;
		recent_rate_note(s, c->d.nrcpts, now);
		c->t->send(c->t, &c->d);
	}
	arm_timer(s, now);
}

static void kick(struct scheduler *s)
{
	event_active(s->run_ev, EV_TIMEOUT, 0);
}

/* --- end of a pass: finish, bounce, or defer ----------------------------- */

static double backoff(struct scheduler *s, int attempts)
{
	double d = (double)s->retry_initial;
	unsigned char r[2];
	int i;

	for (i = 1; i < attempts && d < (double)s->retry_max; i++)
		d *= 2;
	if (d > (double)s->retry_max)
		d = (double)s->retry_max;
	/* +-20% jitter so a burst of failures does not retry in lockstep */
	if (RAND_bytes(r, 2) != 1)
		r[0] = r[1] = 128;
	d *= 0.8 + 0.4 * ((r[0] << 8 | r[1]) / 65535.0);
	return d < 1 ? 1 : d;
}

struct bounce_job {
	struct scheduler *s;
	struct qentry *e;
};

static void finish(struct scheduler *s, struct qentry *e)
{
	if (spool_remove(s->spool, e->id) == -1)
		log_warn("%s: cannot remove from the spool", e->id);
	else
		log_info("%s: removed", e->id);
	spool_msg_close_removed(s->spool, e->msg);
	free(e->dirty);
	free(e->sender);
	free(e->last_error);
	index_remove(s, e);
	free(e);
}

/* "queue delete": remove without delivering or bouncing.  0, or -1 with
 * errno (e is then untouched). */
static int operator_remove(struct scheduler *s, struct qentry *e)
{
	if (spool_remove(s->spool, e->id) == -1 && errno != ENOENT) {
		log_warn("%s: cannot remove from the spool", e->id);
		return -1;
	}
	log_info("%s: removed (deleted by the operator)", e->id);
	if (e->heap_pos >= 0)
		heap_remove(s, e);
	ready_remove(s, e);
	if (s->cur == e)
		s->cur = NULL;
	spool_msg_close(e->msg);
	free(e->dirty);
	free(e->sender);
	free(e->last_error);
	index_remove(s, e);
	free(e);
	return 0;
}

/* "queue hold": record it, then take e out of the schedule.  0 or -1 (errno). */
static int park(struct scheduler *s, struct qentry *e)
{
	if (spool_record_hold(s->spool, e->id, 1) == -1) {
		log_warn("%s: cannot record the hold in the spool", e->id);
		return -1;
	}
	if (e->heap_pos >= 0)
		heap_remove(s, e);
	ready_remove(s, e);
	if (s->cur == e)
		s->cur = NULL;
	spool_msg_close(e->msg);
	e->msg = NULL;
	e->held = 1;
	e->hold_req = 0;
	e->next_try = 0;
	log_info("%s: held by the operator", e->id);
	return 0;
}

static void bounce_committed(void *arg, const char *bounce_id, int error)
{
	struct bounce_job *j = arg;
	struct scheduler *s = j->s;
	struct qentry *e = j->e;

	free(j);
	e->finishing = 0;
	if (error != 0 && e->deleted && operator_remove(s, e) == 0)
		return;
	if (error != 0) {
		errno = error;
		log_warn("%s: cannot queue the bounce; will try again", e->id);
		spool_msg_close(e->msg);
		e->msg = NULL;
		e->next_try = util_now() + (double)s->retry_initial;
		heap_push(s, e);
		arm_timer(s, util_now());
		return;
	}
	log_info("%s: sender non-delivery notification: %s", e->id, bounce_id);
	metrics.dsn++;
	spool_msg_record_dsn(s->spool, e->msg);
	finish(s, e);
}

/* Queue a DSN for the bounced recipients, then remove the message. */
static void bounce_and_finish(struct scheduler *s, struct qentry *e, int expired)
{
	struct spool_msg *m = e->msg;
	struct bounce_rcpt *br;
	struct bounce_info bi;
	struct spool_envelope env;
	struct spool_writer *w;
	struct bounce_job *j;
	const char *rcpt[1];
	size_t i, n = 0;

	if (m->dsn_sent || m->sender[0] == '\0' || s->bounce_from == NULL) {
		if (m->sender[0] == '\0')
			log_info("%s: undeliverable message from <> discarded (bounces are never "
				 "bounced)",
			    e->id);
		else if (s->bounce_from == NULL && !m->dsn_sent)
			log_info("%s: no bounce sent to <%s>: [queue] bounce_from is not set", e->id,
			    m->sender);
		finish(s, e);
		return;
	}
	br = xcalloc(m->nrcpts, sizeof(*br));
	for (i = 0; i < m->nrcpts; i++)
		if (m->rstate[i] == SPOOL_RCPT_BOUNCED) {
			br[n].addr = m->rcpts[i];
			br[n].status = expired ? "4.4.7" : "5.0.0";
			br[n].diagnostic = m->rtext[i] ? m->rtext[i] : "";
			n++;
		}
	memset(&bi, 0, sizeof(bi));
	bi.queue_id = e->id;
	bi.hostname = s->hostname;
	bi.from = s->bounce_from;
	bi.to = m->sender;
	bi.arrival = m->arrival;
	bi.expired = expired;
	bi.rcpts = br;
	bi.nrcpts = n;
	bi.orig_fd = m->fd;
	bi.orig_offset = m->data_offset;
	bi.orig_len = m->data_len;

	memset(&env, 0, sizeof(env));
	rcpt[0] = m->sender;
	env.sender = "";
	env.rcpts = rcpt;
	env.nrcpts = 1;
	env.client = "sesrelay[127.0.0.1]";
	env.helo = s->hostname;
	env.proto = "DSN";
	w = spool_writer_begin(s->spool, &env);
	if (w == NULL) {
		log_warn("%s: cannot create the bounce; will try again", e->id);
		free(br);
		spool_msg_close(e->msg);
		e->msg = NULL;
		e->next_try = util_now() + (double)s->retry_initial;
		heap_push(s, e);
		arm_timer(s, util_now());
		return;
	}
	bounce_compose(spool_writer_buffer(w), &bi);
	free(br);
	j = xcalloc(1, sizeof(*j));
	j->s = s;
	j->e = e;
	e->finishing = 1;
	spool_writer_commit(w, bounce_committed, j);
}

static void pass_end(struct scheduler *s, struct qentry *e)
{
	struct spool_msg *m = e->msg;
	double now = util_now();
	size_t i, pending = 0, bounced = 0;

	if (e->deleted) { /* "queue delete" during the pass */
		e->deleted = 0;
		if (operator_remove(s, e) == 0)
			return;
	}
	for (i = 0; i < m->nrcpts; i++) {
		pending += m->rstate[i] == SPOOL_RCPT_PENDING;
		bounced += m->rstate[i] == SPOOL_RCPT_BOUNCED;
	}
	e->left = pending;
	if (pending > 0 && e->hold_req) { /* "queue hold" during the pass */
		if (e->pass_deferred)
			e->attempts++;
		record_dirty(s, e);
		if (park(s, e) == 0)
			return;
		if (e->pass_deferred)
			e->attempts--; /* counted again below */
	}
	e->hold_req = 0;
	if (pending == 0) {
		if (bounced)
			bounce_and_finish(s, e, 0);
		else
			finish(s, e);
		return;
	}
	if (e->pass_deferred)
		e->attempts++;
	if (now - e->arrival > (double)s->lifetime) {
		char text[DELIVERY_TEXT_MAX + 64];
		snprintf(text, sizeof(text), "message could not be delivered for %.0f hours: %s",
		    (now - e->arrival) / 3600, e->last_error ? e->last_error : "no reason recorded");
		for (i = 0; i < m->nrcpts; i++)
			if (m->rstate[i] == SPOOL_RCPT_PENDING) {
				metrics.bounced++;
				log_info("%s: to=<%s>, relay=%s, delay=%.0f, attempts=%d, status=bounced "
					 "(expired: %s)",
				    e->id, m->rcpts[i], s->t ? s->t->name : "none", now - e->arrival,
				    e->attempts, e->last_error ? e->last_error : "");
				m->rstate[i] = SPOOL_RCPT_BOUNCED;
				free(m->rtext[i]);
				m->rtext[i] = xstrdup(text);
			}
		bounce_and_finish(s, e, 1);
		return;
	}
	record_dirty(s, e);
	if (e->pass_deferred)
		e->next_try = now + backoff(s, e->attempts);
	else /* only transport-wide conditions: try again as soon as they lift */
		e->next_try = (s->paused_until > now ? s->paused_until : now) + 0.1;
	spool_msg_close(e->msg);
	e->msg = NULL;
	heap_push(s, e);
	arm_timer(s, now);
}

/* --- rate ceiling from SES ----------------------------------------------- */

static void on_rate_check(evutil_socket_t fd, short what, void *arg)
{
	struct scheduler *s = arg;
	double quota_left = -1, rate;
	struct timeval tv = {(time_t)RATE_CHECK_S, 0};

	if (s->t && s->max_send_rate == 0 && s->t->send_rate &&
	    (rate = s->t->send_rate(s->t, &quota_left)) > 0 && rate != s->rl.ceiling) {
		ratelimit_set_ceiling(&s->rl, rate, util_now());
		log_info("send rate: %.6g recipients/s (SES MaxSendRate)", rate);
	}
	event_add(s->rate_check, &tv);
}

/* --- API ----------------------------------------------------------------- */

struct scheduler *scheduler_new(struct event_base *base, struct spool *sp, struct transport *t,
    const struct conf *conf)
{
	struct scheduler *s = xcalloc(1, sizeof(*s));
	struct timeval tv = {1, 0};

	s->base = base;
	s->spool = sp;
	s->t = t;
	s->run_ev = event_new(base, -1, 0, run, s);
	s->timer = evtimer_new(base, on_timer, s);
	s->rate_check = evtimer_new(base, on_rate_check, s);
	ratelimit_init(&s->rl, 0, util_now());
	scheduler_reconfigure(s, conf);
	if (s->max_send_rate == 0 && t != NULL && t->send_rate != NULL)
		s->rate_wait_until = util_now() + RATE_WAIT_S;
	event_add(s->rate_check, &tv);
	return s;
}

void scheduler_reconfigure(struct scheduler *s, const struct conf *conf)
{
	s->retry_initial = conf->retry_initial;
	s->retry_max = conf->retry_max;
	s->lifetime = conf->lifetime;
	free(s->bounce_from);
	s->bounce_from = conf->bounce_from ? xstrdup(conf->bounce_from) : NULL;
	free(s->hostname);
	s->hostname = xstrdup(conf->hostname);
	s->max_send_rate = conf->max_send_rate;
	if (s->max_send_rate > 0)
		ratelimit_set_ceiling(&s->rl, s->max_send_rate, util_now());
	/* a reload may have fixed what paused the transport: try at once */
	s->paused_until = 0;
	s->operator_streak = 0;
	if (s->run_ev)
		kick(s);
}

void scheduler_set_transport(struct scheduler *s, struct transport *t,
    void (*release)(void *), void *arg)
{
	struct retiring *r;
	struct call *c;
	size_t n = 0;

	if (s->t == NULL && s->release) {
		s->release(s->release_arg); /* a stack that could not deliver */
	} else if (s->t != NULL) {
		for (c = s->calls; c; c = c->next)
			n += c->t == s->t;
		if (n == 0) {
			if (s->release)
				s->release(s->release_arg);
			else
				s->t->free(s->t);
		} else {
			r = xcalloc(1, sizeof(*r));
			r->t = s->t;
			r->inflight = n;
			r->release = s->release;
			r->arg = s->release_arg;
			r->next = s->retiring;
			s->retiring = r;
		}
	}
	s->t = t;
	s->release = release;
	s->release_arg = arg;
	if (t && s->max_send_rate == 0 && t->send_rate)
		s->rate_wait_until = util_now() + RATE_WAIT_S;
	kick(s);
}

void scheduler_add(struct scheduler *s, const char *id, double arrival)
{
	scheduler_add_new(s, id, arrival, 0, NULL, 0);
}

void scheduler_add_new(struct scheduler *s, const char *id, double arrival, uint64_t size,
    const char *sender, size_t nrcpts)
{
	struct qentry *e;
	char err[256];
	unsigned h;

	if (index_find(s, id) != NULL)
		return;
	e = xcalloc(1, sizeof(*e));
	snprintf(e->id, sizeof(e->id), "%s", id);
	e->arrival = arrival;
	e->heap_pos = -1;
	h = id_hash(id);
	e->hnext = s->index[h];
	s->index[h] = e;
	s->nentries++;
	if (sender != NULL) {
		/* just committed: the envelope is known and nothing is done yet */
		e->sender = xstrdup(sender);
		e->size = size;
		e->nrcpts = e->left = nrcpts;
	} else {
		/* found at start: one read of the envelope and state so that
		 * "queue list" knows sender, recipients left and holds of every
		 * message, also those not yet attempted; a file that cannot be
		 * read is reported by next_message(). */
		struct spool_msg *m = spool_msg_open(s->spool, id, err, sizeof(err));
		if (m != NULL) {
			entry_note_msg(e, m);
			spool_msg_close(m);
		}
	}
	if (e->held)
		return; /* parked by the operator before a restart */
	ready_push(s, e);
	kick(s);
}

size_t scheduler_flush(struct scheduler *s)
{
	size_t n = s->nheap;

	while (s->nheap > 0) {
		struct qentry *e = s->heap[0];
		heap_remove(s, e);
		ready_push(s, e);
	}
	s->paused_until = 0;
	s->operator_streak = 0;
	log_info("flush: %zu deferred message(s) are due now", n);
	kick(s);
	return n;
}

void scheduler_stop(struct scheduler *s, void (*done)(void *), void *arg)
{
	s->stopping = 1;
	event_del(s->timer);
	if (s->inflight == 0) {
		done(arg);
		return;
	}
	s->stopped = done;
	s->stopped_arg = arg;
}

size_t scheduler_in_flight(const struct scheduler *s)
{
	return s->inflight;
}

void scheduler_free(struct scheduler *s)
{
	size_t i;

	if (s == NULL)
		return;
	/* Transports cancel their calls: no done() runs after this. */
	if (s->release)
		s->release(s->release_arg);
	else if (s->t)
		s->t->free(s->t);
	while (s->retiring) {
		struct retiring *r = s->retiring;
		s->retiring = r->next;
		if (r->release)
			r->release(r->arg);
		else
			r->t->free(r->t);
		free(r);
	}
	while (s->calls) {
		struct call *c = s->calls;
		s->calls = c->next;
		free(c);
	}
	for (i = 0; i < INDEX_SIZE; i++)
		while (s->index[i]) {
			struct qentry *e = s->index[i];
			s->index[i] = e->hnext;
			spool_msg_close(e->msg);
			free(e->dirty);
			free(e->sender);
			free(e->last_error);
			free(e);
		}
	free(s->heap);
	event_free(s->run_ev);
	event_free(s->timer);
	event_free(s->rate_check);
	free(s->bounce_from);
	free(s->hostname);
	free(s);
}

/* --- "sesrelay queue" ----------------------------------------------------- */

static void entry_info(const struct qentry *e, struct scheduler_info *info)
{
	memset(info, 0, sizeof(*info));
	info->id = e->id;
	info->arrival = e->arrival;
	info->size = e->size;
	info->sender = e->sender;
	info->nrcpts = e->nrcpts;
	info->left = e->left;
	info->attempts = e->attempts;
	info->last_error = e->last_error ? e->last_error : "";
	info->hold_pending = e->hold_req;
	info->delete_pending = e->deleted;
	if (e->held)
		info->state = SCHED_HELD;
	else if (e->finishing)
		info->state = SCHED_BOUNCING;
	else if (e->msg != NULL)
		info->state = SCHED_ACTIVE;
	else if (e->heap_pos >= 0) {
		info->state = SCHED_DEFERRED;
		info->next_try = e->next_try;
	} else
		info->state = SCHED_QUEUED;
}

void scheduler_foreach(struct scheduler *s, scheduler_info_cb cb, void *arg)
{
	struct scheduler_info info;
	struct qentry *e;
	size_t i;

	for (i = 0; i < INDEX_SIZE; i++)
		for (e = s->index[i]; e != NULL; e = e->hnext) {
			entry_info(e, &info);
			cb(arg, &info);
		}
}

int scheduler_lookup(struct scheduler *s, const char *id, struct scheduler_info *info)
{
	struct qentry *e = index_find(s, id);

	if (e == NULL)
		return -1;
	entry_info(e, info);
	return 0;
}

static struct qentry *op_find(struct scheduler *s, const char *id, char *msg, size_t len)
{
	struct qentry *e = index_find(s, id);

	if (e == NULL)
		snprintf(msg, len, "no message %s in the queue", id);
	return e;
}

enum scheduler_op scheduler_flush_id(struct scheduler *s, const char *id, char *msg, size_t len)
{
	struct qentry *e;

	if ((e = op_find(s, id, msg, len)) == NULL)
		return SCHED_OP_NOTFOUND;
	if (e->held) {
		snprintf(msg, len, "%s is on hold: release it first (sesrelay queue release %s)", id,
		    id);
		return SCHED_OP_REFUSED;
	}
	/* the operator wants it tried now: lift the transport-wide pauses too */
	s->paused_until = 0;
	s->operator_streak = 0;
	if (e->heap_pos >= 0) {
		heap_remove(s, e);
		ready_push(s, e);
		log_info("%s: flush: due now", id);
		snprintf(msg, len, "%s: due now", id);
	} else if (e->msg != NULL)
		snprintf(msg, len, "%s: a delivery attempt is in progress", id);
	else
		snprintf(msg, len, "%s: already due", id);
	kick(s);
	return SCHED_OP_DONE;
}

enum scheduler_op scheduler_hold(struct scheduler *s, const char *id, char *msg, size_t len)
{
	struct qentry *e;

	if ((e = op_find(s, id, msg, len)) == NULL)
		return SCHED_OP_NOTFOUND;
	if (e->held) {
		snprintf(msg, len, "%s: already on hold", id);
		return SCHED_OP_DONE;
	}
	if (e->finishing) {
		snprintf(msg, len, "%s is finished: its bounce is being queued, then it is removed",
		    id);
		return SCHED_OP_REFUSED;
	}
	if (e->msg != NULL) { /* a pass is in progress */
		e->hold_req = 1;
		if (s->cur == e)
			s->cur = NULL; /* no further calls for it */
		if (e->inflight == 0) {
			pass_end(s, e); /* parks it (or finishes it if nothing is left) */
			kick(s);
			snprintf(msg, len, "%s: on hold", id);
			return SCHED_OP_DONE;
		}
		snprintf(msg, len,
		    "%s: a delivery attempt is in flight; the message is held when it returns", id);
		kick(s);
		return SCHED_OP_PENDING;
	}
	if (park(s, e) == -1) {
		snprintf(msg, len, "%s: cannot record the hold in the spool: %s", id,
		    strerror(errno));
		return SCHED_OP_FAILED;
	}
	arm_timer(s, util_now());
	snprintf(msg, len, "%s: on hold", id);
	return SCHED_OP_DONE;
}

enum scheduler_op scheduler_release(struct scheduler *s, const char *id, char *msg, size_t len)
{
	struct qentry *e;

	if ((e = op_find(s, id, msg, len)) == NULL)
		return SCHED_OP_NOTFOUND;
	if (e->hold_req) {
		e->hold_req = 0;
		snprintf(msg, len, "%s: hold cancelled (its delivery attempt was still in flight)",
		    id);
		return SCHED_OP_DONE;
	}
	if (!e->held) {
		snprintf(msg, len, "%s is not on hold", id);
		return SCHED_OP_REFUSED;
	}
	if (spool_record_hold(s->spool, e->id, 0) == -1) {
		snprintf(msg, len, "%s: cannot record the release in the spool: %s", id,
		    strerror(errno));
		log_warn("%s: cannot record the release in the spool", id);
		return SCHED_OP_FAILED;
	}
	e->held = 0;
	log_info("%s: released by the operator", id);
	ready_push(s, e);
	kick(s);
	snprintf(msg, len, "%s: released", id);
	return SCHED_OP_DONE;
}

enum scheduler_op scheduler_delete(struct scheduler *s, const char *id, char *msg, size_t len)
{
	struct qentry *e;

	if ((e = op_find(s, id, msg, len)) == NULL)
		return SCHED_OP_NOTFOUND;
	if (e->msg != NULL) { /* a pass is in progress, or its bounce is being queued */
		e->deleted = 1;
		if (s->cur == e)
			s->cur = NULL;
		if (e->finishing) {
			snprintf(msg, len,
			    "%s: its bounce is being queued; the message is removed then", id);
			return SCHED_OP_PENDING;
		}
		if (e->inflight == 0) {
			pass_end(s, e); /* removes it */
			kick(s);
			snprintf(msg, len, "%s: deleted", id);
			return SCHED_OP_DONE;
		}
		snprintf(msg, len,
		    "%s: a delivery attempt is in flight; the message is deleted when it returns", id);
		kick(s);
		return SCHED_OP_PENDING;
	}
	if (operator_remove(s, e) == -1) {
		snprintf(msg, len, "%s: cannot remove it from the spool: %s", id, strerror(errno));
		return SCHED_OP_FAILED;
	}
	arm_timer(s, util_now());
	snprintf(msg, len, "%s: deleted", id);
	return SCHED_OP_DONE;
}
