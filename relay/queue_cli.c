/*
 * queue_cli.c - "sesrelay queue list|show|delete|flush|hold|release" (SPEC.md
 * section 2).
 *
 * A running daemon holds SPOOL/lock (relay/control.h): then every request
 * goes through SPOOL/control.sock and the daemon's queue manager carries it
 * out between two events, so nothing races with a delivery in flight.
 *
 * With no daemon running, list and show read the files directly and change
 * nothing: in particular no spool recovery, which would delete the temp
 * files of a daemon starting meanwhile.  delete, hold and release change the
 * files (unlink; append "hold"/"release" to state/ID) while holding a shared
 * lock on SPOOL/lock, which a daemon starting meanwhile waits for.  flush
 * needs a daemon.  Without a daemon, attempts, next try and last error are
 * not known (they live in the daemon's memory) and show as "-".
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "conf/conf.h"
#include "relay/control.h"
#include "relay/queue_cli.h"
#include "relay/spool.h"
#include "relay/util.h"

#define EX_USAGE_        2
#define EX_CONFIG_       78
#define CONNECT_TRIES    100 /* x 50 ms: a daemon that has the lock but not yet the socket */
#define ANSWER_TIMEOUT_S 60

static const char queue_usage[] =
    "usage: sesrelay queue list [--json]     queued messages (like mailq)\n"
    "       sesrelay queue show ID           envelope, state, recipients, header\n"
    "       sesrelay queue delete ID         remove without delivering or bouncing\n"
    "       sesrelay queue flush [ID]        retry now (every deferred message, or ID)\n"
    "       sesrelay queue hold ID           park: not delivered until released\n"
    "       sesrelay queue release ID        un-park\n"
    "Each accepts -c FILE (default $SESRELAY_CONFIG or /etc/sesrelay/relay.ini).\n";

struct qitem {
	char id[SPOOL_ID_LEN + 1];
	double arrival;
	unsigned long long size;
	char *sender;      /* NULL: unknown */
	long nrcpts, left; /* -1: unknown */
	long attempts;     /* -1: unknown (no daemon) */
	double next_try;   /* 0: not deferred */
	char state[16];    /* queued deferred active held bouncing */
	char *last_error;  /* NULL: unknown */
};

struct qlist {
	struct qitem *v;
	size_t n;
};

struct qctx {
	const char *cmd;
	char *id;
	int json;
	char *spool;
	char *user; /* [relay] user, for messages */
};

static void qlist_free(struct qlist *l)
{
	size_t i;

	for (i = 0; i < l->n; i++) {
		free(l->v[i].sender);
		free(l->v[i].last_error);
	}
	free(l->v);
}

static struct qitem *qlist_add(struct qlist *l)
{
	struct qitem *it;

	l->v = xreallocarray(l->v, l->n + 1, sizeof(*l->v));
	it = &l->v[l->n++];
	memset(it, 0, sizeof(*it));
	it->nrcpts = it->left = it->attempts = -1;
	return it;
}

static int cmp_item(const void *a, const void *b)
{
	const struct qitem *x = a, *y = b;

	if (x->arrival != y->arrival)
		return x->arrival < y->arrival ? -1 : 1;
	return strcmp(x->id, y->id);
}

/* An operator-typed id, safe to print. */
static void print_bad_id(const char *id)
{
	size_t i;

	fprintf(stderr, "sesrelay: no message ");
	for (i = 0; id[i] && i < 64; i++)
		fputc((unsigned char)id[i] < 0x20 || id[i] == 0x7f ? '?' : id[i], stderr);
	fprintf(stderr, "%s in the queue\n", id[i] ? "..." : "");
}

static const char *perm_hint(const struct qctx *q, char *buf, size_t len)
{
	if (q->user)
		snprintf(buf, len, "run as root or as user %s", q->user);
	else
		snprintf(buf, len, "run as root or as the user the relay runs as");
	return buf;
}

/* --- output ---------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at p, 0 if there is none. */
static size_t utf8_len(const unsigned char *p)
{
	unsigned c = p[0], cp;
	size_t n, i;

	if (c >= 0xc2 && c <= 0xdf) {
		n = 2;
		cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		cp = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		cp = c & 0x07;
	} else
		return 0;
	for (i = 1; i < n; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3f);
	}
	if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
	    (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
		return 0;
	return n;
}

static void json_str(FILE *f, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t n;

	if (s == NULL) {
		fputs("null", f);
		return;
	}
	putc('"', f);
	while (*p) {
		if (*p == '"' || *p == '\\') {
			putc('\\', f);
			putc(*p++, f);
		} else if (*p < 0x20 || *p == 0x7f)
			fprintf(f, "\\u%04x", *p++);
		else if (*p < 0x80)
			putc(*p++, f);
		else if ((n = utf8_len(p)) > 0) {
			fwrite(p, 1, n, f);
			p += n;
		} else {
			fputs("\\ufffd", f);
			p++;
		}
	}
	putc('"', f);
}

static void print_json(const struct qlist *l, double now)
{
	size_t i;

	printf("[");
	for (i = 0; i < l->n; i++) {
		const struct qitem *it = &l->v[i];
		printf("%s\n  {\"id\": \"%s\", \"arrival\": %.6f, \"age\": %ld, \"size\": %llu, "
		       "\"sender\": ",
		       i ? "," : "", it->id, it->arrival,
		       now > it->arrival ? (long)(now - it->arrival) : 0L, it->size);
		json_str(stdout, it->sender);
		if (it->nrcpts < 0)
			printf(", \"recipients\": null, \"recipients_left\": null");
		else
			printf(", \"recipients\": %ld, \"recipients_left\": %ld", it->nrcpts,
			       it->left);
		if (it->attempts < 0)
			printf(", \"attempts\": null");
		else
			printf(", \"attempts\": %ld", it->attempts);
		if (it->next_try > 0)
			printf(", \"next_try\": %.6f", it->next_try);
		else
			printf(", \"next_try\": null");
		printf(", \"state\": \"%s\", \"held\": %s, \"last_error\": ", it->state,
		       strcmp(it->state, "held") == 0 ? "true" : "false");
		json_str(stdout, it->last_error && it->last_error[0] ? it->last_error : NULL);
		printf("}");
	}
	printf("%s]\n", l->n ? "\n" : "");
}

#define NCOLS 8

static void print_table(const struct qlist *l, double now, int live)
{
	static const char *head[NCOLS] = {"ID",         "AGE",      "SIZE",     "SENDER",
	                                  "RCPTS-LEFT", "ATTEMPTS", "NEXT-TRY", "LAST-ERROR"};
	size_t w[NCOLS], i, c;
	char **cell;
	unsigned long long bytes = 0;

	if (l->n == 0) {
		printf("Mail queue is empty\n");
		return;
	}
	cell = xcalloc(l->n * NCOLS, sizeof(char *));
	for (c = 0; c < NCOLS; c++)
		w[c] = strlen(head[c]);
	for (i = 0; i < l->n; i++) {
		const struct qitem *it = &l->v[i];
		char **r = &cell[i * NCOLS], d[32];

		bytes += it->size;
		control_fmt_duration(now - it->arrival, d, sizeof(d));
		r[0] = xstrdup(it->id);
		r[1] = xstrdup(d);
		r[2] = xasprintf("%llu", it->size);
		r[3] = xstrdup(it->sender == NULL ? "?" : it->sender[0] ? it->sender : "<>");
		r[4] = it->nrcpts < 0 ? xstrdup("?") : xasprintf("%ld/%ld", it->left, it->nrcpts);
		r[5] = it->attempts < 0 ? xstrdup("-") : xasprintf("%ld", it->attempts);
		if (strcmp(it->state, "deferred") == 0) {
			control_fmt_duration(it->next_try - now, d, sizeof(d));
			r[6] = it->next_try <= now ? xstrdup("now") : xasprintf("in %s", d);
		} else if (strcmp(it->state, "queued") == 0)
			r[6] = xstrdup(live ? "now" : "-");
		else
			r[6] = xstrdup(it->state);
		r[7] = xstrdup(it->last_error && it->last_error[0] ? it->last_error : "-");
		for (c = 0; c < NCOLS; c++)
			if (strlen(r[c]) > w[c])
				w[c] = strlen(r[c]);
	}
	for (c = 0; c < NCOLS - 1; c++)
		printf("%-*s  ", (int)w[c], head[c]);
	printf("%s\n", head[NCOLS - 1]);
	for (i = 0; i < l->n; i++) {
		for (c = 0; c < NCOLS - 1; c++)
			printf("%-*s  ", (int)w[c], cell[i * NCOLS + c]);
		printf("%s\n", cell[i * NCOLS + NCOLS - 1]);
	}
	printf("-- %zu message%s, %llu bytes\n", l->n, l->n == 1 ? "" : "s", bytes);
	for (i = 0; i < l->n * NCOLS; i++)
		free(cell[i]);
	free(cell);
}

static void print_list(struct qlist *l, const struct qctx *q, int live)
{
	double now = util_now();

	if (l->n > 1)
		qsort(l->v, l->n, sizeof(*l->v), cmp_item);
	if (q->json)
		print_json(l, now);
	else
		print_table(l, now, live);
}

/* --- through the daemon --------------------------------------------------- */

/* One list line: id arrival size sender nrcpts left attempts next_try state last_error */
static int parse_item(char *line, struct qitem *it)
{
	char *f[10], *p = line;
	size_t i;

	for (i = 0; i < 10; i++) {
		f[i] = strsep(&p, "\t");
		if (f[i] == NULL)
			return -1;
	}
	if (!spool_valid_id(f[0]))
		return -1;
	memcpy(it->id, f[0], sizeof(it->id));
	it->arrival = strtod(f[1], NULL);
	it->size = strtoull(f[2], NULL, 10);
	it->sender = strcmp(f[4], "?") == 0 ? NULL : xstrdup(f[3]);
	it->nrcpts = strcmp(f[4], "?") == 0 ? -1 : strtol(f[4], NULL, 10);
	it->left = strcmp(f[5], "?") == 0 ? -1 : strtol(f[5], NULL, 10);
	it->attempts = strtol(f[6], NULL, 10);
	it->next_try = strtod(f[7], NULL);
	snprintf(it->state, sizeof(it->state), "%s", f[8]);
	it->last_error = xstrdup(f[9]);
	return 0;
}

/* The whole answer, NUL-terminated; NULL with errno. */
static char *read_answer(int fd)
{
	size_t len = 0, cap = 4096;
	char *buf = xmalloc(cap);
	ssize_t n;

	for (;;) {
		if (cap - len < 4096) {
			cap *= 2;
			buf = xrealloc(buf, cap);
		}
		n = read(fd, buf + len, cap - len - 1);
		if (n == 0)
			break;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			int e = errno;
			free(buf);
			errno = e == EAGAIN ? ETIMEDOUT : e;
			return NULL;
		}
		len += (size_t)n;
	}
	buf[len] = '\0';
	return buf;
}

static int via_daemon(const struct qctx *q, long pid)
{
	struct timeval tv = {ANSWER_TIMEOUT_S, 0};
	char *req, *ans, *body, hint[128];
	int fd = -1, tries, rc = 1;
	size_t len;

	for (tries = 0; tries < CONNECT_TRIES; tries++) {
		if ((fd = control_connect(q->spool)) != -1)
			break;
		if (errno != ENOENT && errno != ECONNREFUSED)
			break;
		usleep(50000); /* starting up (recovering the spool) or stopping */
	}
	if (fd == -1) {
		if (errno == EACCES || errno == EPERM)
			fprintf(stderr, "sesrelay: cannot connect to %s/%s: %s (%s)\n", q->spool,
			        CONTROL_SOCKET, strerror(errno), perm_hint(q, hint, sizeof(hint)));
		else
			fprintf(stderr,
			        "sesrelay: the relay (pid %ld) holds %s/%s but does not answer on "
			        "%s/%s: "
			        "%s\n",
			        pid, q->spool, CONTROL_LOCK, q->spool, CONTROL_SOCKET,
			        strerror(errno));
		return 1;
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	req = q->id ? xasprintf("%s %s\n", q->cmd, q->id) : xasprintf("%s\n", q->cmd);
	len = strlen(req);
	if (send(fd, req, len, MSG_NOSIGNAL) != (ssize_t)len) {
		fprintf(stderr, "sesrelay: cannot send to %s/%s: %s\n", q->spool, CONTROL_SOCKET,
		        strerror(errno));
		free(req);
		close(fd);
		return 1;
	}
	free(req);
	ans = read_answer(fd);
	close(fd);
	if (ans == NULL) {
		fprintf(stderr, "sesrelay: no answer from the relay: %s\n", strerror(errno));
		return 1;
	}
	if ((body = strchr(ans, '\n')) == NULL) {
		fprintf(stderr, "sesrelay: no answer from the relay (it may be stopping)\n");
		free(ans);
		return 1;
	}
	*body++ = '\0';
	if (strncmp(ans, "error ", 6) == 0) {
		fprintf(stderr, "sesrelay: %s\n", ans + 6);
		if (strncmp(ans + 6, "permission denied", 17) == 0)
			fprintf(stderr, "sesrelay: %s\n", perm_hint(q, hint, sizeof(hint)));
	} else if (strcmp(ans, "ok") != 0 && strncmp(ans, "ok ", 3) != 0)
		fprintf(stderr, "sesrelay: unexpected answer from the relay: %.80s\n", ans);
	else if (strcmp(q->cmd, "list") == 0) {
		struct qlist l = {NULL, 0};
		char *line, *p = body;
		while ((line = strsep(&p, "\n")) != NULL) {
			if (*line == '\0')
				continue;
			if (parse_item(line, qlist_add(&l)) == -1) {
				l.n--;
				free(l.v[l.n].sender);
				free(l.v[l.n].last_error);
			}
		}
		print_list(&l, q, 1);
		qlist_free(&l);
		rc = 0;
	} else if (strcmp(q->cmd, "show") == 0) {
		fputs(body, stdout);
		rc = 0;
	} else {
		printf("%s\n", ans + 3);
		rc = 0;
	}
	free(ans);
	return rc;
}

/* --- without a daemon --------------------------------------------------------- */

static void item_from_msg(struct qitem *it, const struct spool_msg *m)
{
	size_t i;

	memcpy(it->id, m->id, sizeof(it->id));
	it->arrival = m->arrival;
	it->size = (unsigned long long)m->file_size;
	it->sender = xstrdup(m->sender);
	it->nrcpts = (long)m->nrcpts;
	it->left = 0;
	for (i = 0; i < m->nrcpts; i++)
		it->left += m->rstate[i] == SPOOL_RCPT_PENDING;
	snprintf(it->state, sizeof(it->state), "%s", m->hold ? "held" : "queued");
}

static int offline_list(const struct qctx *q, struct spool *sp, struct qlist *l)
{
	char *dir = xasprintf("%s/queue", q->spool), err[512];
	struct dirent *de;
	DIR *d;

	if (sp == NULL || (d = opendir(dir)) == NULL) {
		if (sp != NULL && errno != ENOENT) {
			fprintf(stderr, "sesrelay: cannot read %s: %s\n", dir, strerror(errno));
			free(dir);
			return 1;
		}
		free(dir);
		return 0; /* no spool yet: empty */
	}
	while ((de = readdir(d)) != NULL) {
		struct spool_msg *m;

		if (de->d_name[0] == '.' || !spool_valid_id(de->d_name))
			continue;
		if ((m = spool_msg_open(sp, de->d_name, err, sizeof(err))) == NULL) {
			if (faccessat(dirfd(d), de->d_name, F_OK, 0) == 0)
				fprintf(stderr, "sesrelay: warning: %s\n", err);
			continue; /* else: removed meanwhile */
		}
		item_from_msg(qlist_add(l), m);
		spool_msg_close(m);
	}
	closedir(d);
	free(dir);
	return 0;
}

static int exists(const struct qctx *q)
{
	char *path = xasprintf("%s/queue/%s", q->spool, q->id);
	int r = access(path, F_OK) == 0;

	free(path);
	return r;
}

static int offline(const struct qctx *q, int lockfd)
{
	struct spool *sp = NULL;
	struct spool_msg *m = NULL;
	char err[512];
	int rc = 1;

	if (strcmp(q->cmd, "flush") == 0) {
		fprintf(stderr,
		        "sesrelay: the relay is not running (no process holds %s/%s): nothing to "
		        "flush; "
		        "queued mail is tried as soon as it starts\n",
		        q->spool, CONTROL_LOCK);
		return 1;
	}
	if (lockfd != -1 && (sp = spool_open_readonly(q->spool, err, sizeof(err))) == NULL &&
	    errno != ENOENT) {
		fprintf(stderr, "sesrelay: %s\n", err);
		return 1;
	}
	if (strcmp(q->cmd, "list") == 0) {
		struct qlist l = {NULL, 0};
		rc = offline_list(q, sp, &l);
		spool_close(sp);
		if (lockfd != -1)
			close(lockfd); /* done with the files: do not hold a starting daemon */
		if (rc == 0)
			print_list(&l, q, 0);
		qlist_free(&l);
		return rc;
	}
	if (sp == NULL || !exists(q)) {
		print_bad_id(q->id);
		goto out;
	}
	if (strcmp(q->cmd, "delete") == 0) {
		if (spool_remove(sp, q->id) == -1) {
			if (errno == ENOENT)
				print_bad_id(q->id);
			else
				fprintf(stderr, "sesrelay: cannot delete %s: %s\n", q->id,
				        strerror(errno));
			goto out;
		}
		printf("%s: deleted\n", q->id);
		rc = 0;
		goto out;
	}
	if ((m = spool_msg_open(sp, q->id, err, sizeof(err))) == NULL) {
		if (exists(q))
			fprintf(stderr, "sesrelay: %s\n", err);
		else
			print_bad_id(q->id);
		goto out;
	}
	if (strcmp(q->cmd, "show") == 0) {
		struct evbuffer *out = evbuffer_new();
		control_format_show(out, m, NULL, util_now());
		fwrite(evbuffer_pullup(out, -1), 1, evbuffer_get_length(out), stdout);
		evbuffer_free(out);
		rc = 0;
	} else if (strcmp(q->cmd, "hold") == 0) {
		if (m->hold)
			printf("%s: already on hold\n", q->id);
		else if (spool_record_hold(sp, q->id, 1) == -1) {
			fprintf(stderr, "sesrelay: cannot record the hold for %s: %s\n", q->id,
			        strerror(errno));
			goto out;
		} else
			printf("%s: on hold\n", q->id);
		rc = 0;
	} else { /* release */
		if (!m->hold) {
			fprintf(stderr, "sesrelay: %s is not on hold\n", q->id);
			goto out;
		}
		if (spool_record_hold(sp, q->id, 0) == -1) {
			fprintf(stderr, "sesrelay: cannot record the release for %s: %s\n", q->id,
			        strerror(errno));
			goto out;
		}
		printf("%s: released\n", q->id);
		rc = 0;
	}
out:
	spool_msg_close(m);
	spool_close(sp);
	if (lockfd != -1)
		close(lockfd);
	return rc;
}

/* --- entry ------------------------------------------------------------------ */

int queue_cli(int argc, char **argv, const char *config_path)
{
	struct qctx q;
	struct conf *conf;
	char err[1024], hint[128];
	int i, r, lockfd, rc, need_id, may_id;
	long pid;

	memset(&q, 0, sizeof(q));
	if (argc < 2) {
		fputs(queue_usage, stderr);
		return EX_USAGE_;
	}
	q.cmd = argv[1];
	if (strcmp(q.cmd, "--help") == 0 || strcmp(q.cmd, "-h") == 0 ||
	    strcmp(q.cmd, "help") == 0) {
		fputs(queue_usage, stdout);
		return 0;
	}
	if (strcmp(q.cmd, "list") != 0 && strcmp(q.cmd, "show") != 0 &&
	    strcmp(q.cmd, "delete") != 0 && strcmp(q.cmd, "flush") != 0 &&
	    strcmp(q.cmd, "hold") != 0 && strcmp(q.cmd, "release") != 0) {
		fprintf(stderr, "sesrelay: unknown queue command '%s'\n", q.cmd);
		fputs(queue_usage, stderr);
		return EX_USAGE_;
	}
	need_id = strcmp(q.cmd, "list") != 0 && strcmp(q.cmd, "flush") != 0;
	may_id = strcmp(q.cmd, "list") != 0;
	for (i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0 && strcmp(q.cmd, "list") == 0)
			q.json = 1;
		else if (argv[i][0] == '-' && argv[i][1] != '\0') {
			fprintf(stderr, "sesrelay: queue %s: unknown option '%s'\n", q.cmd,
			        argv[i]);
			fputs(queue_usage, stderr);
			return EX_USAGE_;
		} else if (may_id && q.id == NULL)
			q.id = argv[i];
		else {
			fprintf(stderr, "sesrelay: queue %s: unexpected argument '%s'\n", q.cmd,
			        argv[i]);
			fputs(queue_usage, stderr);
			return EX_USAGE_;
		}
	}
	if (need_id && q.id == NULL) {
		fprintf(stderr, "sesrelay: queue %s needs a queue ID\n", q.cmd);
		fputs(queue_usage, stderr);
		return EX_USAGE_;
	}

	if ((conf = conf_load(config_path, err, sizeof(err))) == NULL) {
		fprintf(stderr, "sesrelay: %s\n", err);
		return EX_CONFIG_;
	}
	q.spool = xstrdup(conf->spool);
	q.user = conf->user ? xstrdup(conf->user) : NULL;
	conf_free(conf);

	if (q.id != NULL) {
		char *p;
		q.id = xstrdup(q.id);
		for (p = q.id; *p; p++)
			*p = (char)toupper((unsigned char)*p); /* ids are upper case */
		if (!spool_valid_id(q.id)) {
			print_bad_id(q.id);
			rc = 1;
			goto out;
		}
	}
	r = control_lock_probe(q.spool, &lockfd, &pid, err, sizeof(err));
	if (r == -1) {
		if (errno == EACCES || errno == EPERM)
			fprintf(stderr, "sesrelay: %s (%s)\n", err,
			        perm_hint(&q, hint, sizeof(hint)));
		else
			fprintf(stderr, "sesrelay: %s\n", err);
		rc = 1;
	} else if (r == 1)
		rc = via_daemon(&q, pid);
	else
		rc = offline(&q, lockfd);
out:
	free(q.id);
	free(q.spool);
	free(q.user);
	return rc;
}
