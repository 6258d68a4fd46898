/*
 * inbound.c - forward the mail SES stored in S3: poll, rewrite, queue,
 * remove the object; exactly once.
 *
 * ONE OBJECT, STEP BY STEP (one object at a time; keys in listing order)
 *   1. GetObject streams into relay/inbound_msg.c.  Once the header section
 *      is read, its facts decide: a failing X-SES-Spam/Virus-Verdict, no
 *      recipient the map knows, or a header section too large -> the object
 *      is held (moved to held_prefix) or deleted, per failed_verdict; it is
 *      never queued.  Otherwise a spool writer begins, with the envelope
 *      sender from_address and the mapped destinations as recipients.
 *   2. The marker inbound/ID = "pending KEY ETAG" is written durably (off the
 *      loop) while the body streams into the spool file.
 *   3. Both done: the message is committed *quietly* - it is on disk but the
 *      scheduler does not know it yet.
 *   4. The marker becomes "queued KEY ETAG" (durably).
 *   5. Now the scheduler is told (spool_announce) and the object is deleted
 *      (or copied to done_prefix, then deleted).
 *   6. The marker is removed.
 *
 * WHY NOTHING IS LOST OR SENT TWICE
 *   A message can be delivered (and its queue file removed) only after step
 *   5, when its marker already says "queued".  So at start:
 *     - "pending", no queue/ID: the commit never happened (crash in 1-3):
 *       drop the marker; the object is still in the bucket and is fetched
 *       again.  Nothing was queued, so nothing is sent twice.
 *     - "pending", queue/ID exists: committed, crash before step 4 was
 *       durable; the message was never announced, hence never delivered.
 *       The marker becomes "queued" (blocking, before the loop runs) and the
 *       message is delivered like any other queued one.
 *     - "queued": the message is (or was) queued: never fetch KEY again;
 *       finish steps 5-6 for the object.
 *   While a "queued" marker exists for a key, a listing that still shows the
 *   key skips it.  A failed delete keeps the marker and is retried at the
 *   next poll; delivery does not wait for it.
 *
 * WITH AN SQS QUEUE ([inbound] queue_url)
 *   The receipt rule's S3 action also publishes to SNS, and an SQS queue
 *   subscribed to the topic holds one notification per stored message, with
 *   the exact envelope recipients (receipt.recipients: Bcc included).  Then
 *   the bucket is not listed: notifications are long-polled (20 s) and each
 *   names its object, which goes through the same steps with those
 *   recipients.  The notification is deleted once its object is handled (or
 *   gone: a repeated notification), never before, so a crash only makes SQS
 *   deliver it again, and the markers above keep that from forwarding twice.
 *
 * Never: hold an object in memory (the body streams from curl's buffer to
 * the spool file), block the loop, or queue an object with a failing verdict
 * unless failed_verdict = forward.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "conf/conf.h"
#include "relay/inbound.h"
#include "relay/inbound_map.h"
#include "relay/inbound_msg.h"
#include "relay/log.h"
#include "relay/metrics.h"
#include "relay/spool.h"
#include "relay/util.h"
#include "ses/s3.h"
#include "ses/ses_creds.h"
#include "ses/sigv4.h"
#include "ses/sqs.h"

#define RETRY_S       30    /* after a failed list/get, at most this (or poll_interval) */
#define MARKS_MAX     10000 /* "queued" markers whose delete is pending */
#define LOG_RCPTS_MAX 5     /* recipients named in one log line */
#define SQS_WAIT_S    20    /* long polling */
#define SQS_VISIBLE_S 600   /* a received notification stays hidden this long */

enum job_action {
	ACT_QUEUE,   /* forward it */
	ACT_HOLD,    /* move it to held_prefix */
	ACT_DELETE,  /* delete it unforwarded (failed_verdict = delete) */
	ACT_RETRY,   /* leave it; try again at the next poll */
};

/* One object on its way. */
struct job {
	struct inbound *in;          /* NULL once the forwarder is gone */
	char *key;
	char etag[S3_ETAG_MAX];
	uint64_t size;
	struct s3_call *call;
	struct inbound_msg *msg;
	struct spool_writer *w;
	char id[SPOOL_ID_LEN + 1];
	int headers_done;
	int get_done;                /* GetObject finished well */
	int mark_state;              /* 0 none, 1 writing, 2 durable, -1 failed */
	int committing;
	int copied;                  /* hold/move: the copy is made */
	enum job_action action;
	char why[256];               /* for hold/delete/retry */
	char **dests;
	size_t ndests;
	double arrival;
	uint64_t msg_size;
	char from[INBOUND_ADDR_MAX + 1];
	char rcpt_log[512];
	/* from an SQS notification */
	char *handle;                /* its receipt handle: delete it when done */
	char **orcpts;               /* receipt.recipients: exact, Bcc included */
	size_t norcpts;
	char spam[SQS_FIELD_MAX], virus[SQS_FIELD_MAX];    /* its verdicts */
	int gone;                    /* the object was not there (already handled) */
};

/* A notification waiting for its turn. */
struct note {
	char *key, *handle;
	char **rcpts;
	size_t nrcpts;
	char spam[SQS_FIELD_MAX], virus[SQS_FIELD_MAX];
};

/* A "queued" marker: the object still has to leave the bucket. */
struct mark {
	char id[SPOOL_ID_LEN + 1];
	char *key;
	char etag[S3_ETAG_MAX];
};

struct inbound {
	struct event_base *base;
	struct spool *sp;
	struct ses_http *http;
	struct ses_creds *creds;
	struct s3 *s3;
	struct inbound_map *map;
	struct inbound_msg_opts mopts;
	char *bucket, *prefix, *done_prefix, *held_prefix, *from_address, *subject_prefix;
	enum conf_after after;
	enum conf_verdict failed_verdict;
	uint64_t max_size;
	int poll_interval;
	struct event *timer;

	/* the poll under way */
	int polling;
	struct s3_call *list_call;
	char *token;                 /* continuation token of the next page */
	struct s3_object *todo;      /* this page's objects not yet handled */
	size_t ntodo, itodo;
	struct job *job;             /* the object in hand */
	size_t mark_i;               /* next "queued" marker to finish */
	struct s3_call *mark_call;
	int mark_copy_done;
	int failed;                  /* this poll met an error: retry sooner */
	int polled;                  /* SQS mode: this round's receive is done */
	int warned;

	struct mark *marks;
	size_t nmarks;
	char **skips;                /* keys held in place: not fetched again */
	size_t nskips;

	struct sqs *sqs;             /* queue_url: notifications instead of listing */
	struct sqs_call *sqs_call;   /* the receive under way */
	struct note *notes;          /* this receive's notifications not yet handled */
	size_t nnotes, inote;
};

static void poll_next(struct inbound *in);
static void job_finish(struct job *j);
static void job_dispose(struct job *j);
static void job_marked(void *arg, int error);

/* --- markers -------------------------------------------------------------- */

/* "STATE\nKEY(uri-encoded)\nETAG\n" */
static char *mark_text(const char *state, const char *key, const char *etag, size_t *len)
{
	char *enc = s3_key_encode(key), *t;

	t = xasprintf("%s\n%s\n%s\n", state, enc, etag);
	free(enc);
	*len = strlen(t);
	return t;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Parse a marker; 0 with state/key (xmalloc'd)/etag, or -1. */
static int mark_parse(const char *text, char state[16], char **key, char etag[S3_ETAG_MAX])
{
	const char *nl1 = strchr(text, '\n'), *nl2, *nl3, *p;
	char *k;
	size_t n = 0;
	int hi, lo;

	if (nl1 == NULL || (size_t)(nl1 - text) >= 16 || (nl2 = strchr(nl1 + 1, '\n')) == NULL ||
	    (nl3 = strchr(nl2 + 1, '\n')) == NULL || (size_t)(nl3 - nl2 - 1) >= S3_ETAG_MAX)
		return -1;
	memcpy(state, text, (size_t)(nl1 - text));
	state[nl1 - text] = '\0';
	k = xmalloc((size_t)(nl2 - nl1));
	for (p = nl1 + 1; p < nl2; p++) {
		if (*p == '%' && p + 2 < nl2 && (hi = hexval(p[1])) >= 0 && (lo = hexval(p[2])) >= 0) {
			k[n++] = (char)(hi * 16 + lo);
			p += 2;
		} else
			k[n++] = *p;
	}
	k[n] = '\0';
	if (s3_key_valid(k) != 0) {
		free(k);
		return -1;
	}
	memcpy(etag, nl2 + 1, (size_t)(nl3 - nl2 - 1));
	etag[nl3 - nl2 - 1] = '\0';
	*key = k;
	return 0;
}

static void marks_add(struct inbound *in, const char *id, const char *key, const char *etag)
{
	struct mark *m;

	in->marks = xreallocarray(in->marks, in->nmarks + 1, sizeof(*in->marks));
	m = &in->marks[in->nmarks++];
	snprintf(m->id, sizeof(m->id), "%s", id);
	m->key = xstrdup(key);
	snprintf(m->etag, sizeof(m->etag), "%s", etag);
}

static void marks_drop(struct inbound *in, size_t i)
{
	free(in->marks[i].key);
	memmove(&in->marks[i], &in->marks[i + 1], (in->nmarks - i - 1) * sizeof(*in->marks));
	in->nmarks--;
}

static int marked(const struct inbound *in, const char *key)
{
	size_t i;

	for (i = 0; i < in->nmarks; i++)
		if (strcmp(in->marks[i].key, key) == 0)
			return 1;
	for (i = 0; i < in->nskips; i++)
		if (strcmp(in->skips[i], key) == 0)
			return 1;
	return 0;
}

static void skip_add(struct inbound *in, const char *key)
{
	if (in->nskips >= MARKS_MAX)
		return;
	in->skips = xreallocarray(in->skips, in->nskips + 1, sizeof(*in->skips));
	in->skips[in->nskips++] = xstrdup(key);
}

/* Startup: what a previous run left (see the top of this file). */
static void recover_one(void *arg, const char *id, const char *text, size_t len, int queued)
{
	struct inbound *in = arg;
	char state[16], etag[S3_ETAG_MAX], *key, *t;
	size_t tlen;

	if (mark_parse(text, state, &key, etag) == -1) {
		log_warnx("inbound: %s/inbound/%s is not a marker this version reads; left as is",
		          spool_path(in->sp), id);
		return;
	}
	if (strcmp(state, "pending") == 0 && !queued) {
		log_info("inbound: s3://%s/%s was not queued before the stop: fetching it again",
		         in->bucket, key);
		spool_mark_remove(in->sp, id);
	} else if (strcmp(state, "pending") == 0) {
		t = mark_text("queued", key, etag, &tlen);
		if (spool_mark_write_now(in->sp, id, t, tlen) == -1)
			log_warn("inbound: %s/inbound/%s", spool_path(in->sp), id);
		free(t);
		log_info("%s: inbound: s3://%s/%s was queued before the stop", id, in->bucket, key);
		marks_add(in, id, key, etag);
	} else if (strcmp(state, "queued") == 0)
		marks_add(in, id, key, etag);
	else
		log_warnx("inbound: %s/inbound/%s: unknown state \"%s\"; left as is",
		          spool_path(in->sp), id, state);
	free(key);
}

/* --- finishing "queued" markers: the object leaves the bucket --------------- */

static void mark_step(struct inbound *in);

static void mark_removed(void *arg, const struct s3_result *r)
{
	struct inbound *in = arg;
	struct mark *m = &in->marks[in->mark_i];

	in->mark_call = NULL;
	if (r->cls == S3_OK || r->cls == S3_NOT_FOUND) {
		if (in->after == CONF_AFTER_MOVE)
			log_info("%s: inbound: s3://%s/%s moved to %s", m->id, in->bucket, m->key,
			         in->done_prefix);
		else
			log_info("%s: inbound: s3://%s/%s deleted", m->id, in->bucket, m->key);
		spool_mark_remove(in->sp, m->id);
		marks_drop(in, in->mark_i);
	} else {
		log_warnx("%s: inbound: the message is queued but the object stays in the bucket "
		          "for now: %s",
		          m->id, r->text);
		in->failed = 1;
		in->mark_i++;
	}
	in->mark_copy_done = 0;
	mark_step(in);
}

static void mark_copied(void *arg, const struct s3_result *r)
{
	struct inbound *in = arg;
	struct mark *m = &in->marks[in->mark_i];

	in->mark_call = NULL;
	if (r->cls == S3_OK || r->cls == S3_NOT_FOUND) {
		/* not found: the source is gone already (an earlier run moved it) */
		in->mark_copy_done = 1;
		mark_step(in);
		return;
	}
	log_warnx("%s: inbound: cannot copy the object to %s: %s", m->id, in->done_prefix,
	          r->text);
	in->failed = 1;
	in->mark_i++;
	mark_step(in);
}

static void mark_step(struct inbound *in)
{
	struct mark *m;
	char *dst;

	if (in->mark_i >= in->nmarks) {
		poll_next(in);
		return;
	}
	m = &in->marks[in->mark_i];
	if (in->after == CONF_AFTER_MOVE && !in->mark_copy_done) {
		dst = xasprintf("%s%s", in->done_prefix, m->key);
		if (s3_key_valid(dst) != 0) {
			log_warnx("%s: inbound: %s%s is too long a key: deleting instead of moving",
			          m->id, in->done_prefix, m->key);
			in->mark_copy_done = 1;
		} else {
			in->mark_call = s3_copy(in->s3, m->key, dst, mark_copied, in);
			free(dst);
			return;
		}
		free(dst);
	}
	in->mark_call = s3_delete(in->s3, m->key, mark_removed, in);
}

/* --- one object ------------------------------------------------------------- */

static void job_free(struct job *j)
{
	size_t i;

	if (j->call)
		s3_cancel(j->call);
	if (j->w)
		spool_writer_abort(j->w);
	inbound_msg_free(j->msg);
	for (i = 0; i < j->ndests; i++)
		free(j->dests[i]);
	free(j->dests);
	for (i = 0; i < j->norcpts; i++)
		free(j->orcpts[i]);
	free(j->orcpts);
	free(j->handle);
	free(j->key);
	free(j);
}

/* The object's fate is decided without queueing it. */
static void job_set(struct job *j, enum job_action a, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void job_set(struct job *j, enum job_action a, const char *fmt, ...)
{
	va_list ap;

	j->action = a;
	va_start(ap, fmt);
	vsnprintf(j->why, sizeof(j->why), fmt, ap);
	va_end(ap);
}

/* "a@x, b@y (+3 more)" */
static void rcpt_list(char *out, size_t size, char *const *v, size_t n)
{
	size_t i, len = 0;

	out[0] = '\0';
	for (i = 0; i < n && i < LOG_RCPTS_MAX && len < size; i++)
		len += (size_t)snprintf(out + len, size - len, "%s<%s>", i ? "," : "", v[i]);
	if (n > LOG_RCPTS_MAX && len < size)
		snprintf(out + len, size - len, " (+%zu more)", n - LOG_RCPTS_MAX);
}

/* The header section is in: decide, and for a forward, begin the spool file. */
static int job_headers(struct job *j)
{
	struct inbound *in = j->in;
	const struct inbound_facts *f = inbound_msg_facts(j->msg);
	struct inbound_resolved res;
	struct spool_envelope env;
	char **orig;
	size_t norig;
	const char **rcpts;
	char client[300], *t;
	size_t i, tlen;
	int spam, virus;

	j->headers_done = 1;
	snprintf(j->from, sizeof(j->from), "%s", f->from_addr[0] ? f->from_addr : f->return_path);
	spam = strcasecmp(f->spam_verdict, "FAIL") == 0 || strcasecmp(j->spam, "FAIL") == 0;
	virus = strcasecmp(f->virus_verdict, "FAIL") == 0 || strcasecmp(j->virus, "FAIL") == 0;
	if ((spam || virus) && in->failed_verdict != CONF_VERDICT_FORWARD) {
		job_set(j, in->failed_verdict == CONF_VERDICT_DELETE ? ACT_DELETE : ACT_HOLD,
		        "X-SES-%s-Verdict: FAIL", virus ? "Virus" : "Spam");
		return -1;
	}
	orig = j->orcpts ? j->orcpts : f->rcpts;
	norig = j->orcpts ? j->norcpts : f->nrcpts;
	memset(&res, 0, sizeof(res));
	if (inbound_map_resolve(in->map, (const char *const *)orig, norig, &res) == 0) {
		char list[300];

		inbound_resolved_free(&res);
		rcpt_list(list, sizeof(list), orig, norig);
		job_set(j, ACT_HOLD, "no map entry for %s", norig ? list : "(no recipients found)");
		return -1;
	}
	j->dests = xreallocarray(NULL, res.ndests, sizeof(*j->dests));
	for (i = 0; i < res.ndests; i++)
		j->dests[i] = xstrdup(res.dests[i]);
	j->ndests = res.ndests;
	if (res.unmatched)
		for (i = 0; i < res.nmatch; i++)
			if (res.match[i].kind == INBOUND_KEY_NONE)
				log_info("inbound: s3://%s/%s: no map entry for <%s>: not forwarded to "
				         "it",
				         in->bucket, j->key, res.match[i].rcpt);
	inbound_resolved_free(&res);
	if (j->orcpts == NULL && f->rcpt_source == INBOUND_RCPT_HEADERS)
		log_debug("inbound: s3://%s/%s: recipients from To/Cc (no SES Received line)",
		          in->bucket, j->key);
	rcpt_list(j->rcpt_log, sizeof(j->rcpt_log), orig, norig);
	rcpts = xreallocarray(NULL, j->ndests, sizeof(*rcpts));
	for (i = 0; i < j->ndests; i++)
		rcpts[i] = j->dests[i];
	snprintf(client, sizeof(client), "s3[%s]", in->bucket);
	memset(&env, 0, sizeof(env));
	env.sender = in->from_address;
	env.rcpts = rcpts;
	env.nrcpts = j->ndests;
	env.client = client;
	env.helo = "";
	env.proto = "S3";
	j->w = spool_writer_begin(in->sp, &env);
	free(rcpts);
	if (j->w == NULL) {
		job_set(j, ACT_RETRY, "cannot create a spool file: %s", strerror(errno));
		return -1;
	}
	snprintf(j->id, sizeof(j->id), "%s", spool_writer_id(j->w));
	j->arrival = spool_writer_arrival(j->w);
	t = mark_text("pending", j->key, j->etag, &tlen);
	j->mark_state = 1;
	spool_mark_write(in->sp, j->id, t, tlen, job_marked, j);
	free(t);
	inbound_msg_headers(j->msg, spool_writer_buffer(j->w));
	return 0;
}

/* GetObject bytes: header phase, then straight into the spool file. */
static size_t job_sink(void *arg, const char *data, size_t len)
{
	struct job *j = arg;
	const struct inbound_facts *f;
	int r;

	if (j->action != ACT_QUEUE)
		return 0; /* decided meanwhile (the marker could not be written) */
	if (!j->headers_done) {
		if ((r = inbound_msg_feed(j->msg, data, len)) == 0)
			return len;
		if (r == -1) {
			job_set(j, ACT_HOLD, "%s", inbound_msg_error(j->msg));
			return 0;
		}
		if (job_headers(j) == -1)
			return 0;
	} else
		inbound_msg_body(j->msg, data, len, spool_writer_buffer(j->w));
	if (spool_writer_flush(j->w, 0) == -1) {
		job_set(j, ACT_RETRY, "spool write error: %s", strerror(errno));
		return 0;
	}
	f = inbound_msg_facts(j->msg);
	if (f->header_size + f->body_size > j->in->max_size) {
		job_set(j, ACT_HOLD, "larger than the %llu bytes SES takes",
		        (unsigned long long)j->in->max_size);
		return 0;
	}
	return len;
}

static void note_deleted(void *arg, const struct sqs_result *r)
{
	if (r->cls != SQS_OK)
		log_warnx("inbound: %s: cannot delete a handled notification (SQS sends it again; "
		          "it is recognised then): %s",
		          sqs_name((struct sqs *)arg), r->text);
}

/* The object is handled (or left for the next poll): on to the next. */
static void job_finish(struct job *j)
{
	struct inbound *in = j->in;

	if (in) {
		in->job = NULL;
		if (j->action == ACT_RETRY && !j->gone)
			in->failed = 1;
		/* handled, held, deleted, or already gone: the notification is done;
		 * a retry leaves it to come back after its visibility timeout */
		if (j->handle && in->sqs && (j->action != ACT_RETRY || j->gone))
			sqs_delete(in->sqs, j->handle, note_deleted, in->sqs);
	}
	job_free(j);
	if (in)
		poll_next(in);
}

static void job_moved(void *arg, const struct s3_result *r);

/* Hold (copy to held_prefix, then delete) or delete an object not forwarded. */
static void job_dispose(struct job *j)
{
	struct inbound *in = j->in;
	char *dst;

	if (j->w) {
		spool_writer_abort(j->w);
		j->w = NULL;
	}
	if (j->mark_state == 1)
		return; /* job_marked() comes back here once the marker is on disk */
	if (j->mark_state == 2)
		spool_mark_remove(in->sp, j->id);
	j->mark_state = 0;
	switch (j->action) {
	case ACT_HOLD:
		dst = xasprintf("%s%s", in->held_prefix, j->key);
		metrics.inbound_held++;
		if (s3_key_valid(dst) == 0) {
			log_warnx("inbound: s3://%s/%s: held (moved to %s): %s; from=<%s>", in->bucket,
			          j->key, in->held_prefix, j->why, j->from);
			j->call = s3_copy(in->s3, j->key, dst, job_moved, j);
			free(dst);
			return;
		}
		free(dst);
		log_warnx("inbound: s3://%s/%s: held (left in place: the held_prefix key would be "
		          "too long): %s; from=<%s>",
		          in->bucket, j->key, j->why, j->from);
		skip_add(in, j->key);
		break;
	case ACT_DELETE:
		metrics.inbound_dropped++;
		log_warnx("inbound: s3://%s/%s: deleted unforwarded: %s; from=<%s>", in->bucket,
		          j->key, j->why, j->from);
		j->copied = 1;
		j->call = s3_delete(in->s3, j->key, job_moved, j);
		return;
	case ACT_RETRY:
		if (j->gone && j->handle)
			log_info("inbound: s3://%s/%s: already handled (a repeated notification)",
			         in->bucket, j->key);
		else
			log_warnx("inbound: s3://%s/%s: not forwarded this time: %s", in->bucket,
			          j->key, j->why);
		break;
	case ACT_QUEUE:
		break;
	}
	job_finish(j);
}

static void job_moved(void *arg, const struct s3_result *r)
{
	struct job *j = arg;
	struct inbound *in = j->in;

	j->call = NULL;
	if (r->cls != S3_OK && r->cls != S3_NOT_FOUND) {
		log_warnx("inbound: s3://%s/%s: %s", in->bucket, j->key, r->text);
		j->action = ACT_RETRY;
		job_finish(j);
		return;
	}
	if (!j->copied) {
		j->copied = 1; /* copied: now delete the original */
		j->call = s3_delete(in->s3, j->key, job_moved, j);
		return;
	}
	job_finish(j);
}

/* --- queueing ---------------------------------------------------------------- */

static void job_queued(void *arg, int error);

static void job_committed(void *arg, const char *id, int error)
{
	struct job *j = arg;
	char *t;
	size_t tlen;

	j->committing = 0;
	if (error) {
		errno = error;
		log_warn("%s: inbound: s3://%s/%s: cannot queue it (spool commit)", j->id,
		         j->in ? j->in->bucket : "?", j->key);
		if (j->in) {
			spool_mark_remove(j->in->sp, j->id);
			j->action = ACT_RETRY;
			job_finish(j);
		} else
			job_free(j); /* the pending marker goes at the next start */
		return;
	}
	if (j->in == NULL) {
		/* stopping: the marker still says "pending" and the file exists, so
		 * the next start queues it (see the top of this file) */
		job_free(j);
		return;
	}
	t = mark_text("queued", j->key, j->etag, &tlen);
	j->mark_state = 3;
	spool_mark_write(j->in->sp, j->id, t, tlen, job_queued, j);
	free(t);
}

static void job_commit(struct job *j)
{
	struct inbound *in = j->in;

	inbound_msg_body_end(j->msg, spool_writer_buffer(j->w));
	j->msg_size = inbound_msg_facts(j->msg)->header_size + inbound_msg_facts(j->msg)->body_size;
	spool_writer_quiet(j->w);
	j->committing = 1;
	spool_writer_commit(j->w, job_committed, j);
	j->w = NULL;
	(void)in;
}

static void job_queued(void *arg, int error)
{
	struct job *j = arg;
	struct inbound *in = j->in;
	char dests[400];

	if (in == NULL) {
		job_free(j);
		return;
	}
	if (error) {
		errno = error;
		/* the marker says "pending" and the message exists: announcing it now
		 * could send it twice after a crash; the next start announces it */
		log_warn("%s: inbound: cannot record that s3://%s/%s is queued; it is delivered "
		         "after the next restart",
		         j->id, in->bucket, j->key);
		skip_add(in, j->key);
		j->action = ACT_RETRY;
		job_finish(j);
		return;
	}
	rcpt_list(dests, sizeof(dests), j->dests, j->ndests);
	log_info("%s: inbound: s3://%s/%s from=<%s> to=%s -> %s, size=%llu", j->id, in->bucket,
	         j->key, j->from, j->rcpt_log, dests, (unsigned long long)j->msg_size);
	spool_announce(in->sp, j->id, j->arrival, j->msg_size, in->from_address, j->ndests);
	metrics.inbound_forwarded++;
	marks_add(in, j->id, j->key, j->etag);
	j->mark_state = 0;
	job_finish(j); /* poll_next() finishes the new marker first: the delete */
}

/* The "pending" marker is on disk (or failed). */
static void job_marked(void *arg, int error)
{
	struct job *j = arg;

	if (j->in == NULL) {
		job_free(j); /* stopping; the next start drops the marker */
		return;
	}
	if (error) {
		errno = error;
		j->mark_state = -1;
		if (j->action == ACT_QUEUE)
			job_set(j, ACT_RETRY, "cannot write %s/inbound/%s: %s", spool_path(j->in->sp),
			        j->id, strerror(error));
	} else
		j->mark_state = 2;
	if (j->action != ACT_QUEUE) {
		if (j->call == NULL)
			job_dispose(j); /* GetObject is over and waited for this */
		return;
	}
	if (j->get_done)
		job_commit(j);
}

/* GetObject is over. */
static void job_got(void *arg, const struct s3_result *r)
{
	struct job *j = arg;
	struct inbound *in = j->in;

	j->call = NULL;
	if (r->cls == S3_OK && !j->headers_done) {
		/* an object without a blank line, or empty */
		if (inbound_msg_finish(j->msg) == -1)
			job_set(j, ACT_HOLD, "%s", inbound_msg_error(j->msg));
		else
			(void)job_headers(j);
	}
	if (r->cls != S3_OK && j->action == ACT_QUEUE) {
		if (r->cls == S3_NOT_FOUND) {
			job_set(j, ACT_RETRY, "gone before it was read");
			j->gone = 1;
		}
		else
			job_set(j, ACT_RETRY, "%s", r->text);
	}
	if (j->action != ACT_QUEUE) {
		job_dispose(j);
		return;
	}
	if (spool_writer_flush(j->w, 1) == -1) {
		job_set(j, ACT_RETRY, "spool write error: %s", strerror(errno));
		job_dispose(j);
		return;
	}
	j->get_done = 1;
	if (j->mark_state == 2)
		job_commit(j);
	/* else job_marked() commits */
	(void)in;
}

static void job_start(struct inbound *in, const struct s3_object *o, struct note *n)
{
	struct job *j = xcalloc(1, sizeof(*j));

	j->in = in;
	j->key = xstrdup(o->key);
	snprintf(j->etag, sizeof(j->etag), "%s", o->etag);
	j->size = o->size;
	if (n) { /* the notification's facts move to the job */
		j->handle = n->handle;
		j->orcpts = n->rcpts;
		j->norcpts = n->nrcpts;
		n->handle = NULL;
		n->rcpts = NULL;
		n->nrcpts = 0;
		snprintf(j->spam, sizeof(j->spam), "%s", n->spam);
		snprintf(j->virus, sizeof(j->virus), "%s", n->virus);
	}
	j->msg = inbound_msg_new(&in->mopts);
	j->action = ACT_QUEUE;
	in->job = j;
	log_debug("inbound: s3://%s/%s (%llu bytes): fetching", in->bucket, j->key,
	          (unsigned long long)o->size);
	j->call = s3_get(in->s3, j->key, job_sink, j, job_got, j);
}

/* --- polling ------------------------------------------------------------------ */

static void todo_free(struct inbound *in)
{
	size_t i;

	for (i = 0; i < in->ntodo; i++)
		free(in->todo[i].key);
	free(in->todo);
	in->todo = NULL;
	in->ntodo = in->itodo = 0;
}

/* Keys that are not mail for us. */
static int skip_key(const struct inbound *in, const struct s3_object *o)
{
	const char *base = strrchr(o->key, '/');

	base = base ? base + 1 : o->key;
	if (*base == '\0')
		return 1; /* a "folder" */
	if (strcmp(base, "AMAZON_SES_SETUP_NOTIFICATION") == 0)
		return 1; /* SES's test object when the receipt rule is created */
	if (strncmp(o->key, in->done_prefix, strlen(in->done_prefix)) == 0 ||
	    strncmp(o->key, in->held_prefix, strlen(in->held_prefix)) == 0)
		return 1;
	return marked(in, o->key);
}

static void list_done(void *arg, const struct s3_result *r)
{
	struct inbound *in = arg;
	size_t i;

	in->list_call = NULL;
	free(in->token);
	in->token = NULL;
	if (r->cls != S3_OK) {
		if (!in->warned)
			log_warnx("inbound: cannot list s3://%s/%s: %s", in->bucket, in->prefix,
			          r->text);
		in->warned = 1;
		in->failed = 1;
		poll_next(in);
		return;
	}
	if (in->warned)
		log_info("inbound: s3://%s/%s can be listed again", in->bucket, in->prefix);
	in->warned = 0;
	todo_free(in);
	in->todo = xreallocarray(NULL, r->list->nobjects ? r->list->nobjects : 1, sizeof(*in->todo));
	for (i = 0; i < r->list->nobjects; i++) {
		in->todo[i] = r->list->objects[i];
		in->todo[i].key = xstrdup(r->list->objects[i].key);
	}
	in->ntodo = r->list->nobjects;
	if (r->list->truncated && r->list->next_token)
		in->token = xstrdup(r->list->next_token);
	poll_next(in);
}

static void schedule(struct inbound *in, int seconds)
{
	struct timeval tv = {seconds, 0};

	event_add(in->timer, &tv);
}

static void note_clear(struct note *n)
{
	size_t i;

	for (i = 0; i < n->nrcpts; i++)
		free(n->rcpts[i]);
	free(n->rcpts);
	free(n->key);
	free(n->handle);
	memset(n, 0, sizeof(*n));
}

static void notes_free(struct inbound *in)
{
	size_t i;

	for (i = 0; i < in->nnotes; i++)
		note_clear(&in->notes[i]);
	free(in->notes);
	in->notes = NULL;
	in->nnotes = in->inote = 0;
}

/* What one SQS message says: a note to handle, or nothing (deleted). */
static void note_take(struct inbound *in, const struct sqs_message *m)
{
	struct sqs_receipt rc;
	struct note *n;
	char err[256];
	size_t i;

	if (m->oversize || m->body == NULL ||
	    sqs_parse_receipt(m->body, m->body_len, &rc, err, sizeof(err)) == -1) {
		log_warnx("inbound: %s: message %s is not an SES receipt notification (%s): "
		          "deleted",
		          sqs_name(in->sqs), m->message_id,
		          m->oversize ? "over 256 KiB" : m->body == NULL ? "no body" : err);
		sqs_delete(in->sqs, m->receipt_handle, note_deleted, in->sqs);
		return;
	}
	if (rc.kind != SQS_RECEIPT_RECEIVED || strcmp(rc.bucket, in->bucket) != 0) {
		if (rc.kind == SQS_RECEIPT_RECEIVED)
			log_warnx("inbound: %s: a notification for s3://%s/%s, not this bucket: "
			          "deleted",
			          sqs_name(in->sqs), rc.bucket, rc.object_key);
		else
			log_info("inbound: %s: %s notification (%s): deleted", sqs_name(in->sqs),
			         sqs_receipt_kind_name(rc.kind), rc.why);
		sqs_receipt_free(&rc);
		sqs_delete(in->sqs, m->receipt_handle, note_deleted, in->sqs);
		return;
	}
	in->notes = xreallocarray(in->notes, in->nnotes + 1, sizeof(*in->notes));
	n = &in->notes[in->nnotes++];
	memset(n, 0, sizeof(*n));
	n->key = xstrdup(rc.object_key);
	n->handle = xstrdup(m->receipt_handle);
	n->rcpts = xreallocarray(NULL, rc.nrecipients, sizeof(*n->rcpts));
	for (i = 0; i < rc.nrecipients; i++)
		n->rcpts[i] = xstrdup(rc.recipients[i]);
	n->nrcpts = rc.nrecipients;
	snprintf(n->spam, sizeof(n->spam), "%s", rc.spam_verdict);
	snprintf(n->virus, sizeof(n->virus), "%s", rc.virus_verdict);
	sqs_receipt_free(&rc);
}

static void receive_done(void *arg, const struct sqs_result *r)
{
	struct inbound *in = arg;
	size_t i;

	in->sqs_call = NULL;
	if (r->cls != SQS_OK) {
		if (!in->warned)
			log_warnx("inbound: cannot read %s: %s", sqs_name(in->sqs), r->text);
		in->warned = 1;
		in->failed = 1;
		poll_next(in);
		return;
	}
	if (in->warned)
		log_info("inbound: %s can be read again", sqs_name(in->sqs));
	in->warned = 0;
	notes_free(in);
	for (i = 0; i < r->nmessages; i++)
		note_take(in, &r->messages[i]);
	in->polled = 1;
	poll_next(in);
}

static void poll_next(struct inbound *in)
{
	const struct s3_object *o;

	if (in->job || in->mark_call || in->list_call || in->sqs_call)
		return;
	if (in->mark_i < in->nmarks) {
		mark_step(in);
		return;
	}
	while (in->itodo < in->ntodo) {
		o = &in->todo[in->itodo++];
		if (skip_key(in, o))
			continue;
		job_start(in, o, NULL);
		return;
	}
	while (in->inote < in->nnotes) {
		struct note *n = &in->notes[in->inote++];
		struct s3_object obj;

		if (marked(in, n->key)) {
			/* queued already (a repeated notification): its marker finishes it */
			sqs_delete(in->sqs, n->handle, note_deleted, in->sqs);
			continue;
		}
		memset(&obj, 0, sizeof(obj));
		obj.key = n->key;
		job_start(in, &obj, n);
		return;
	}
	if (in->sqs) {
		notes_free(in);
		if (!in->polled && !in->failed) {
			/* the marks are done: now wait for notifications */
			in->sqs_call = sqs_receive(in->sqs, SQS_MAX_MESSAGES, SQS_WAIT_S, SQS_VISIBLE_S,
			                           receive_done, in);
			return;
		}
		in->polling = 0;
		/* long polling is the wait: go again at once unless something failed */
		schedule(in, in->failed ? RETRY_S : 0);
		return;
	}
	todo_free(in);
	if (in->token && !in->failed) {
		in->list_call = s3_list(in->s3, in->prefix, in->token, 0, list_done, in);
		return;
	}
	free(in->token);
	in->token = NULL;
	in->polling = 0;
	schedule(in, in->failed && in->poll_interval > RETRY_S ? RETRY_S : in->poll_interval);
}

static void poll_start(evutil_socket_t fd, short what, void *arg)
{
	struct inbound *in = arg;

	if (in->polling)
		return;
	in->polling = 1;
	in->failed = 0;
	in->mark_i = 0;
	in->mark_copy_done = 0;
	in->polled = 0;
	if (in->sqs) {
		poll_next(in); /* pending deletes first, then a receive */
		return;
	}
	in->list_call = s3_list(in->s3, in->prefix, NULL, 0, list_done, in);
}

void inbound_poll_now(struct inbound *in)
{
	if (in && !in->polling)
		schedule(in, 0);
}

/* --- life cycle --------------------------------------------------------------- */

static void creds_ready(void *arg, int ok, const char *err)
{
	if (!ok)
		log_warnx("inbound: %s; the bucket is polled once credentials are available", err);
}

void inbound_free(struct inbound *in)
{
	size_t i;

	if (in == NULL)
		return;
	if (in->job) {
		struct job *j = in->job;

		j->in = NULL;
		if (j->call) {
			s3_cancel(j->call);
			j->call = NULL;
		}
		/* callbacks still to come free it */
		if (j->mark_state != 1 && j->mark_state != 3 && !j->committing)
			job_free(j);
	}
	if (in->list_call)
		s3_cancel(in->list_call);
	sqs_free(in->sqs); /* cancels its calls */
	notes_free(in);
	if (in->mark_call)
		s3_cancel(in->mark_call);
	s3_free(in->s3);
	ses_creds_free(in->creds);
	if (in->timer)
		event_free(in->timer);
	todo_free(in);
	free(in->token);
	for (i = 0; i < in->nmarks; i++)
		free(in->marks[i].key);
	free(in->marks);
	for (i = 0; i < in->nskips; i++)
		free(in->skips[i]);
	free(in->skips);
	inbound_map_free(in->map);
	free(in->bucket);
	free(in->prefix);
	free(in->done_prefix);
	free(in->held_prefix);
	free(in->from_address);
	free(in->subject_prefix);
	free(in);
}

struct inbound *inbound_new(struct event_base *base, struct ses_http *http, struct spool *sp,
                            const struct conf *conf, char *err, size_t errlen)
{
	struct inbound *in;
	struct s3_config cfg;
	size_t i;

	err[0] = '\0';
	if (conf->inbound_bucket == NULL)
		return NULL;
	in = xcalloc(1, sizeof(*in));
	in->base = base;
	in->sp = sp;
	in->http = http;
	in->bucket = xstrdup(conf->inbound_bucket);
	in->prefix = xstrdup(conf->inbound_prefix);
	in->done_prefix = xstrdup(conf->inbound_done_prefix);
	in->held_prefix = xstrdup(conf->inbound_held_prefix);
	in->from_address = xstrdup(conf->inbound_from_address);
	in->subject_prefix = xstrdup(conf->inbound_subject_prefix);
	in->after = conf->inbound_after;
	in->failed_verdict = conf->inbound_failed_verdict;
	in->max_size = conf->max_message_size;
	in->poll_interval = conf->inbound_poll_interval > 86400 ? 86400
	                                                        : (int)conf->inbound_poll_interval;
	in->mopts.from_address = in->from_address;
	in->mopts.from_style = conf->inbound_from_format == CONF_FROM_NAME_AT_ADDRESS
	                           ? INBOUND_FROM_NAME_AT
	                           : INBOUND_FROM_NAME;
	in->mopts.subject_prefix = in->subject_prefix;
	if (inbound_msg_opts_check(&in->mopts, err, errlen) == -1)
		goto fail;
	in->map = inbound_map_new(INBOUND_MAP_PLUS);
	for (i = 0; i < conf->ninbound_map; i++)
		if (inbound_map_add(in->map, conf->inbound_map[i], err, errlen) == -1)
			goto fail;
	in->creds = ses_creds_new(base, http, conf);
	memset(&cfg, 0, sizeof(cfg));
	cfg.bucket = conf->inbound_bucket;
	cfg.region = conf->inbound_region;
	cfg.endpoint = conf->inbound_endpoint;
	if ((in->s3 = s3_new(base, http, in->creds, &cfg, err, errlen)) == NULL)
		goto fail;
	if (conf->inbound_queue_url) {
		struct sqs_config qc;

		memset(&qc, 0, sizeof(qc));
		qc.queue_url = conf->inbound_queue_url;
		/* an AWS queue URL names its region; a test server's does not */
		if (strstr(conf->inbound_queue_url, ".amazonaws.com") == NULL)
			qc.region = conf->inbound_region;
		qc.timeout_ms = 30000;
		if ((in->sqs = sqs_new(base, http, in->creds, &qc, err, errlen)) == NULL)
			goto fail;
	}
	if (spool_mark_foreach(sp, recover_one, in) == -1) {
		snprintf(err, errlen, "%s/inbound: %s", spool_path(sp), strerror(errno));
		goto fail;
	}
	if ((in->timer = evtimer_new(base, poll_start, in)) == NULL)
		fatalx("evtimer_new failed");
	ses_creds_start(in->creds, creds_ready, in);
	if (in->sqs)
		log_info("inbound: forwarding mail from s3://%s as %s announces it, sent from <%s>%s",
		         in->bucket, sqs_name(in->sqs), in->from_address,
		         in->nmarks ? " (finishing hand-offs of the last run first)" : "");
	else
		log_info("inbound: forwarding mail from s3://%s/%s every %ds, sent from <%s>%s",
		         in->bucket, in->prefix, in->poll_interval, in->from_address,
		         in->nmarks ? " (finishing hand-offs of the last run first)" : "");
	schedule(in, 0);
	return in;
fail:
	inbound_free(in);
	return NULL;
}
