/*
 * spool.c - the queue directory: ids, the file format, writing, recovery.
 *
 * LAYOUT (under [relay] spool)
 *   tmp/ID      a message being received; never acknowledged; deleted on start
 *   queue/ID    a committed message: complete, fsync'd, renamed into place
 *   state/ID    per-recipient delivery results, append-only (scheduler)
 *   corrupt/ID  a queue file that failed validation on start; kept for a human
 *   inbound/ID  a hand-off marker of the S3 forwarder (relay/inbound.c): "the
 *               object KEY is (being) queued as ID"; see INBOUND MARKERS below
 *
 * FILE FORMAT (queue/ID), version 1.  Text lines, LF-terminated, then the
 * message, then an end record:
 *
 *   SESRELAY-QUEUE 1
 *   id 9QX2C7M4KD
 *   arrival 1764340000.123456       (unix time, seconds)
 *   client lan-host[192.168.1.20]
 *   helo laptop.example
 *   auth alice                      (only when the client authenticated)
 *   proto ESMTP
 *   sender alice@example.com        ("sender " with nothing after it for <>)
 *   rcpt bob@example.net            (one line per recipient, in order; the
 *   rcpt x@example.org               scheduler's state file refers to them by index)
 *   data
 *   <the message exactly as delivered: CRLF lines, dots unstuffed>
 *   end 2314                        (message length in bytes)
 *
 * Envelope values never contain control characters (the SMTP parser refuses
 * them, and this file refuses them again), so a line cannot be forged.
 *
 * WHY A CRASH LOSES NOTHING
 *   The file is written under tmp/, fsync'd, renamed into queue/ (the single
 *   commit point), and queue/ is fsync'd; only then is the client told 250
 *   (relay/spool_sync.c does the last three steps off the loop, batching
 *   directory fsyncs across sessions).  A crash before the rename leaves a
 *   temp file that no one acknowledged: recovery deletes it.  A file in
 *   queue/ is complete by construction; recovery still checks the header and
 *   that "end N" matches the file size, so a file system that lies is caught
 *   and the file parked in corrupt/ instead of half-delivered.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "relay/log.h"
#include "relay/spool.h"
#include "relay/spool_sync.h"
#include "relay/util.h"

#define SPOOL_MAGIC         "SESRELAY-QUEUE 1\n"
#define SPOOL_FLUSH_AT      (64 * 1024)
#define SPOOL_SYNC_THREADS  8
#define SPOOL_HEADER_MAX    (1024 * 1024) /* an envelope larger than this is damage */
#define SPOOL_SPACE_CACHE_S 1.0

struct spool {
	struct event_base *base;
	char *path;
	int rootfd, tmpfd, queuefd;
	struct spool_sync *sync;
	size_t pending;
	size_t nmessages;
	uint64_t nbytes;
	uint32_t seq;
	double space_checked;
	uint64_t space_free;
	spool_commit_hook hook;
	void *hook_arg;
	int markfd;                /* inbound/, opened on first use */
	struct spool_sync *marksync;
	struct recovered *found;   /* messages found by recovery, sorted */
	size_t nfound;
};

struct recovered {
	char id[SPOOL_ID_LEN + 1];
	double arrival;
	uint64_t size;
};

struct spool_writer {
	struct spool *sp;
	char id[SPOOL_ID_LEN + 1];
	int fd;
	struct evbuffer *buf;
	uint64_t env_size;    /* bytes of envelope, before the message */
	uint64_t file_size;   /* bytes written to the file so far */
	double arrival;
	char *sender;         /* for the commit hook */
	size_t nrcpts;
	int quiet;            /* the owner announces it (spool_announce) */
	spool_commit_cb cb;
	void *cbarg;
};

/* Crockford's base32: no I, L, O, U, so ids survive being read aloud. */
static const char id_alphabet[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/* 10 characters = 50 bits: 30 bits of seconds since 2024 and a 20-bit
 * sequence that starts at a random point, so ids sort roughly by arrival and
 * do not repeat across restarts within the same second. */
static void make_id(struct spool *sp, char id[SPOOL_ID_LEN + 1])
{
	uint64_t secs = (uint64_t)time(NULL) - 1704067200ULL;
	uint64_t v = ((secs & 0x3fffffffULL) << 20) | (sp->seq++ & 0xfffffU);
	int i;

	for (i = SPOOL_ID_LEN - 1; i >= 0; i--) {
		id[i] = id_alphabet[v & 31];
		v >>= 5;
	}
	id[SPOOL_ID_LEN] = '\0';
}

static int valid_id(const char *s)
{
	size_t i;

	if (strlen(s) != SPOOL_ID_LEN)
		return 0;
	for (i = 0; i < SPOOL_ID_LEN; i++)
		if (strchr(id_alphabet, s[i]) == NULL || s[i] == '\0')
			return 0;
	return 1;
}

static int open_subdir(int rootfd, const char *name)
{
	if (mkdirat(rootfd, name, 0700) == -1 && errno != EEXIST)
		return -1;
	return openat(rootfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

/* Read and check a queue file; returns its size or -1 with a reason. */
static int64_t validate_file(int dirfd, const char *name, const char **why, double *arrival)
{
	char head[sizeof(SPOOL_MAGIC)], tail[64], *line, *nl;
	struct stat st;
	int64_t ret = -1;
	size_t datapos = 0;
	FILE *f;
	int fd;

	*why = "cannot open";
	if ((fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC)) == -1)
		return -1;
	if (fstat(fd, &st) == -1 || (f = fdopen(fd, "r")) == NULL) {
		close(fd);
		return -1;
	}
	*why = "bad header";
	if (fread(head, 1, sizeof(SPOOL_MAGIC) - 1, f) != sizeof(SPOOL_MAGIC) - 1 ||
	    memcmp(head, SPOOL_MAGIC, sizeof(SPOOL_MAGIC) - 1) != 0)
		goto out;
	/* Envelope lines up to "data". */
	line = NULL;
	size_t cap = 0;
	ssize_t n;
	int nrcpt = 0, have_id = 0, have_sender = 0;
	while ((n = getline(&line, &cap, f)) > 0) {
		if (ftell(f) > SPOOL_HEADER_MAX)
			break;
		if (strcmp(line, "data\n") == 0) {
			datapos = (size_t)ftell(f);
			break;
		}
		if (strncmp(line, "rcpt ", 5) == 0)
			nrcpt++;
		else if (strncmp(line, "id ", 3) == 0)
			have_id = strncmp(line + 3, name, SPOOL_ID_LEN) == 0;
		else if (strncmp(line, "sender ", 7) == 0)
			have_sender = 1;
		else if (strncmp(line, "arrival ", 8) == 0)
			*arrival = strtod(line + 8, NULL);
	}
	free(line);
	if (datapos == 0 || nrcpt == 0 || !have_id || !have_sender)
		goto out;
	*why = "missing end record";
	off_t tailpos = st.st_size > (off_t)sizeof(tail) - 1 ? st.st_size - (off_t)sizeof(tail) + 1 : 0;
	if (fseeko(f, tailpos, SEEK_SET) == -1)
		goto out;
	size_t got = fread(tail, 1, sizeof(tail) - 1, f);
	tail[got] = '\0';
	if (got == 0 || tail[got - 1] != '\n')
		goto out;
	tail[got - 1] = '\0';
	nl = strrchr(tail, '\n');
	if (nl == NULL || strncmp(nl + 1, "end ", 4) != 0)
		goto out;
	unsigned long long dlen = strtoull(nl + 5, NULL, 10);
	size_t endlen = strlen(nl + 1) + 1;
	*why = "size does not match end record";
	if ((unsigned long long)st.st_size != datapos + dlen + endlen)
		goto out;
	ret = st.st_size;
out:
	fclose(f);
	return ret;
}

static int cmp_recovered(const void *a, const void *b)
{
	const struct recovered *x = a, *y = b;

	if (x->arrival != y->arrival)
		return x->arrival < y->arrival ? -1 : 1;
	return strcmp(x->id, y->id);
}

/* Orphaned state files (their message is gone) are leftovers of a crash
 * between the two unlinks of spool_remove(). */
static void remove_orphan_states(struct spool *sp)
{
	struct dirent *de;
	DIR *d;
	int fd, sfd;

	if ((sfd = openat(sp->rootfd, "state", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1)
		return;
	if ((fd = dup(sfd)) == -1 || (d = fdopendir(fd)) == NULL) {
		if (fd != -1)
			close(fd);
		close(sfd);
		return;
	}
	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.' && faccessat(sp->queuefd, de->d_name, F_OK, 0) == -1)
			unlinkat(sfd, de->d_name, 0);
	closedir(d);
	close(sfd);
}

static int recover(struct spool *sp, char *err, size_t errlen)
{
	struct dirent *de;
	DIR *d;
	int fd, removed = 0, bad = 0;

	/* Temp files were never acknowledged: remove them. */
	if ((fd = dup(sp->tmpfd)) == -1 || (d = fdopendir(fd)) == NULL) {
		snprintf(err, errlen, "%s/tmp: %s", sp->path, strerror(errno));
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		if (unlinkat(sp->tmpfd, de->d_name, 0) == 0)
			removed++;
	}
	closedir(d);
	if (removed)
		log_info("spool recovery: removed %d unfinished message(s) from %s/tmp", removed,
		    sp->path);

	if ((fd = dup(sp->queuefd)) == -1 || (d = fdopendir(fd)) == NULL) {
		snprintf(err, errlen, "%s/queue: %s", sp->path, strerror(errno));
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		const char *why = "not a queue file name";
		double arrival = 0;
		int64_t size;

		if (de->d_name[0] == '.')
			continue;
		if (valid_id(de->d_name) &&
		    (size = validate_file(sp->queuefd, de->d_name, &why, &arrival)) >= 0) {
			sp->nmessages++;
			sp->nbytes += (uint64_t)size;
			sp->found = xreallocarray(sp->found, sp->nfound + 1, sizeof(*sp->found));
			memcpy(sp->found[sp->nfound].id, de->d_name, SPOOL_ID_LEN + 1);
			sp->found[sp->nfound].arrival = arrival;
			sp->found[sp->nfound].size = (uint64_t)size;
			sp->nfound++;
			continue;
		}
		int cfd = open_subdir(sp->rootfd, "corrupt");
		if (cfd == -1 || renameat(sp->queuefd, de->d_name, cfd, de->d_name) == -1)
			log_warn("spool: %s/queue/%s is damaged (%s) and could not be moved aside",
			    sp->path, de->d_name, why);
		else
			log_warnx("spool: %s/queue/%s is damaged (%s); moved to %s/corrupt/ for "
				  "inspection",
			    sp->path, de->d_name, why, sp->path);
		if (cfd != -1)
			close(cfd);
		bad++;
	}
	closedir(d);
	if (sp->nfound > 1)
		qsort(sp->found, sp->nfound, sizeof(*sp->found), cmp_recovered);
	if (bad)
		fsync(sp->queuefd);
	remove_orphan_states(sp);
	log_info("spool %s: %zu message(s), %llu bytes queued", sp->path, sp->nmessages,
	    (unsigned long long)sp->nbytes);
	return 0;
}

struct spool *spool_open(struct event_base *base, const char *path, char *err, size_t errlen)
{
	struct spool *sp = xcalloc(1, sizeof(*sp));
	uint32_t rnd;
	int fd;

	sp->base = base;
	sp->path = xstrdup(path);
	sp->rootfd = sp->tmpfd = sp->queuefd = sp->markfd = -1;
	if (mkdir(path, 0700) == -1 && errno != EEXIST) {
		snprintf(err, errlen, "cannot create spool %s: %s", path, strerror(errno));
		goto fail;
	}
	if ((sp->rootfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1) {
		snprintf(err, errlen, "cannot open spool %s: %s", path, strerror(errno));
		goto fail;
	}
	if ((sp->tmpfd = open_subdir(sp->rootfd, "tmp")) == -1 ||
	    (sp->queuefd = open_subdir(sp->rootfd, "queue")) == -1 ||
	    (fd = open_subdir(sp->rootfd, "state")) == -1) {
		snprintf(err, errlen, "cannot create directories in spool %s: %s", path,
		    strerror(errno));
		goto fail;
	}
	close(fd);
	if (recover(sp, err, errlen) == -1)
		goto fail;
	/* Random start for the id sequence; time-derived bits do the rest. */
	if ((fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC)) != -1) {
		if (read(fd, &rnd, sizeof(rnd)) == sizeof(rnd))
			sp->seq = rnd;
		close(fd);
	}
	if (base != NULL)
		sp->sync = spool_sync_new(base, sp->tmpfd, sp->queuefd, SPOOL_SYNC_THREADS);
	return sp;
fail:
	spool_close(sp);
	return NULL;
}

void spool_close(struct spool *sp)
{
	if (sp == NULL)
		return;
	spool_sync_free(sp->sync);
	if (sp->marksync)
		spool_sync_free(sp->marksync);
	if (sp->markfd != -1)
		close(sp->markfd);
	if (sp->rootfd != -1)
		close(sp->rootfd);
	if (sp->tmpfd != -1)
		close(sp->tmpfd);
	if (sp->queuefd != -1)
		close(sp->queuefd);
	free(sp->found);
	free(sp->path);
	free(sp);
}

const char *spool_path(const struct spool *sp)
{
	return sp->path;
}

int spool_low_space(struct spool *sp, uint64_t reserve, uint64_t need)
{
	double now = util_monotime();
	struct statvfs vfs;

	if (sp->space_checked == 0 || now - sp->space_checked > SPOOL_SPACE_CACHE_S) {
		if (fstatvfs(sp->queuefd, &vfs) == -1)
			return 0; /* cannot tell: let the write itself fail */
		sp->space_free = (uint64_t)vfs.f_bavail * vfs.f_frsize;
		sp->space_checked = now;
	}
	return sp->space_free < reserve + need;
}

static int clean_value(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return 0;
	return 1;
}

struct spool_writer *spool_writer_begin(struct spool *sp, const struct spool_envelope *env)
{
	struct spool_writer *w;
	size_t i;
	int tries;

	if (!clean_value(env->sender) || !clean_value(env->client) ||
	    !clean_value(env->helo ? env->helo : "") ||
	    !clean_value(env->auth_user ? env->auth_user : "") || env->nrcpts == 0) {
		errno = EINVAL;
		return NULL;
	}
	for (i = 0; i < env->nrcpts; i++)
		if (!clean_value(env->rcpts[i])) {
			errno = EINVAL;
			return NULL;
		}

	w = xcalloc(1, sizeof(*w));
	w->sp = sp;
	w->fd = -1;
	for (tries = 0; tries < 100 && w->fd == -1; tries++) {
		make_id(sp, w->id);
		if (faccessat(sp->queuefd, w->id, F_OK, 0) == 0)
			continue;
		w->fd = openat(sp->tmpfd, w->id, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (w->fd == -1 && errno != EEXIST) {
			free(w);
			return NULL;
		}
	}
	if (w->fd == -1) {
		free(w);
		errno = EEXIST;
		return NULL;
	}
	w->buf = evbuffer_new();
	w->arrival = util_now();
	w->sender = xstrdup(env->sender);
	w->nrcpts = env->nrcpts;
	evbuffer_add_printf(w->buf, SPOOL_MAGIC "id %s\narrival %.6f\nclient %s\nhelo %s\n", w->id,
	    w->arrival, env->client, env->helo ? env->helo : "");
	if (env->auth_user)
		evbuffer_add_printf(w->buf, "auth %s\n", env->auth_user);
	evbuffer_add_printf(w->buf, "proto %s\nsender %s\n", env->proto ? env->proto : "SMTP",
	    env->sender);
	for (i = 0; i < env->nrcpts; i++)
		evbuffer_add_printf(w->buf, "rcpt %s\n", env->rcpts[i]);
	evbuffer_add(w->buf, "data\n", 5);
	w->env_size = evbuffer_get_length(w->buf);
	return w;
}

const char *spool_writer_id(const struct spool_writer *w)
{
	return w->id;
}

struct evbuffer *spool_writer_buffer(struct spool_writer *w)
{
	return w->buf;
}

uint64_t spool_writer_size(const struct spool_writer *w)
{
	return w->file_size + evbuffer_get_length(w->buf);
}

int spool_writer_flush(struct spool_writer *w, int force)
{
	size_t len;

	while ((len = evbuffer_get_length(w->buf)) > 0 && (force || len >= SPOOL_FLUSH_AT)) {
		int n = evbuffer_write(w->buf, w->fd);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0) {
			errno = ENOSPC;
			return -1;
		}
		w->file_size += (uint64_t)n;
	}
	return 0;
}

static void writer_free(struct spool_writer *w)
{
	free(w->sender);
	if (w->fd != -1)
		close(w->fd);
	evbuffer_free(w->buf);
	free(w);
}

void spool_writer_discard(struct spool_writer *w)
{
	unlinkat(w->sp->tmpfd, w->id, 0);
	if (w->fd != -1)
		close(w->fd);
	w->fd = -1;
}

void spool_writer_abort(struct spool_writer *w)
{
	if (w == NULL)
		return;
	unlinkat(w->sp->tmpfd, w->id, 0);
	writer_free(w);
}

static void commit_done(void *arg, int error)
{
	struct spool_writer *w = arg;
	struct spool *sp = w->sp;

	sp->pending--;
	if (error == 0) {
		sp->nmessages++;
		sp->nbytes += w->file_size;
	}
	w->cb(w->cbarg, w->id, error);
	if (error == 0 && sp->hook && !w->quiet)
		sp->hook(sp->hook_arg, w->id, w->arrival, w->file_size, w->sender, w->nrcpts);
	w->fd = -1; /* closed by the sync job */
	writer_free(w);
}

void spool_writer_commit(struct spool_writer *w, spool_commit_cb cb, void *arg)
{
	struct spool *sp = w->sp;
	uint64_t data_size = spool_writer_size(w) - w->env_size;

	w->cb = cb;
	w->cbarg = arg;
	sp->pending++;
	if (spool_writer_flush(w, 1) == -1) {
		int e = errno;
		unlinkat(sp->tmpfd, w->id, 0);
		commit_done(w, e);
		return;
	}
	evbuffer_add_printf(w->buf, "end %llu\n", (unsigned long long)data_size);
	if (spool_writer_flush(w, 1) == -1) {
		int e = errno;
		unlinkat(sp->tmpfd, w->id, 0);
		commit_done(w, e);
		return;
	}
	spool_sync_submit(sp->sync, w->fd, w->id, w->id, commit_done, w);
}

void spool_writer_quiet(struct spool_writer *w)
{
	w->quiet = 1;
}

double spool_writer_arrival(const struct spool_writer *w)
{
	return w->arrival;
}

void spool_announce(struct spool *sp, const char *id, double arrival, uint64_t size,
    const char *sender, size_t nrcpts)
{
	if (sp->hook)
		sp->hook(sp->hook_arg, id, arrival, size, sender, nrcpts);
}

size_t spool_commits_pending(const struct spool *sp)
{
	return sp->pending;
}

size_t spool_queue_messages(const struct spool *sp)
{
	return sp->nmessages;
}

uint64_t spool_queue_bytes(const struct spool *sp)
{
	return sp->nbytes;
}

/* --- hooks --------------------------------------------------------------- */

void spool_set_commit_hook(struct spool *sp, spool_commit_hook cb, void *arg)
{
	sp->hook = cb;
	sp->hook_arg = arg;
}

void spool_foreach(struct spool *sp, spool_message_cb cb, void *arg)
{
	size_t i;

	for (i = 0; i < sp->nfound; i++)
		cb(arg, sp->found[i].id, sp->found[i].arrival, sp->found[i].size);
	free(sp->found);
	sp->found = NULL;
	sp->nfound = 0;
}

/* --- reading a queued message -------------------------------------------- */

/*
 * STATE FILE FORMAT (state/ID), append-only, one record per line:
 *   sent IDX TEXT        recipient IDX (0-based, envelope order) accepted by SES
 *   bounced IDX TEXT     recipient IDX failed permanently
 *   dsn                  the bounce for this message is queued
 *   hold / release       parked by the operator / un-parked
 * A torn last line (no LF) is ignored: its result is simply not known.
 */
static void replay_state(struct spool *sp, struct spool_msg *m)
{
	char *line = NULL, *end;
	size_t cap = 0;
	ssize_t n;
	FILE *f;
	int fd, sfd;

	if ((sfd = openat(sp->rootfd, "state", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1)
		return;
	fd = openat(sfd, m->id, O_RDONLY | O_CLOEXEC);
	close(sfd);
	if (fd == -1 || (f = fdopen(fd, "r")) == NULL) {
		if (fd != -1)
			close(fd);
		return;
	}
	while ((n = getline(&line, &cap, f)) > 0) {
		unsigned long idx;
		int st = -1;

		if (line[n - 1] != '\n')
			break; /* torn */
		line[n - 1] = '\0';
		if (strcmp(line, "dsn") == 0) {
			m->dsn_sent = 1;
			continue;
		}
		if (strcmp(line, "hold") == 0 || strcmp(line, "release") == 0) {
			m->hold = line[0] == 'h';
			continue;
		}
		if (strncmp(line, "sent ", 5) == 0)
			st = SPOOL_RCPT_SENT;
		else if (strncmp(line, "bounced ", 8) == 0)
			st = SPOOL_RCPT_BOUNCED;
		else
			continue;
		idx = strtoul(strchr(line, ' ') + 1, &end, 10);
		if (idx >= m->nrcpts)
			continue;
		m->rstate[idx] = (unsigned char)st;
		free(m->rtext[idx]);
		m->rtext[idx] = xstrdup(*end == ' ' ? end + 1 : "");
	}
	free(line);
	fclose(f);
}

struct spool_msg *spool_msg_open(struct spool *sp, const char *id, char *err, size_t errlen)
{
	struct spool_msg *m;
	char *line = NULL;
	size_t cap = 0;
	struct stat st;
	ssize_t n;
	FILE *f;
	int fd;

	if (!valid_id(id)) {
		snprintf(err, errlen, "not a queue id: %s", id);
		return NULL;
	}
	if ((fd = openat(sp->queuefd, id, O_RDONLY | O_CLOEXEC)) == -1) {
		snprintf(err, errlen, "%s: %s", id, strerror(errno));
		return NULL;
	}
	m = xcalloc(1, sizeof(*m));
	memcpy(m->id, id, SPOOL_ID_LEN + 1);
	m->fd = fd;
	if (fstat(fd, &st) == -1 || (fd = dup(fd)) == -1 || (f = fdopen(fd, "r")) == NULL) {
		snprintf(err, errlen, "%s: %s", id, strerror(errno));
		spool_msg_close(m);
		return NULL;
	}
	m->file_size = (uint64_t)st.st_size;
	while ((n = getline(&line, &cap, f)) > 0 && ftell(f) <= SPOOL_HEADER_MAX) {
		if (line[n - 1] == '\n')
			line[--n] = '\0';
		if (strcmp(line, "data") == 0) {
			m->data_offset = (uint64_t)ftell(f);
			break;
		}
		if (strncmp(line, "rcpt ", 5) == 0) {
			m->rcpts = xreallocarray(m->rcpts, m->nrcpts + 1, sizeof(char *));
			m->rcpts[m->nrcpts++] = xstrdup(line + 5);
		} else if (strncmp(line, "sender ", 7) == 0)
			m->sender = xstrdup(line + 7);
		else if (strncmp(line, "arrival ", 8) == 0)
			m->arrival = strtod(line + 8, NULL);
		else if (strncmp(line, "client ", 7) == 0)
			m->client = xstrdup(line + 7);
		else if (strncmp(line, "helo ", 5) == 0)
			m->helo = xstrdup(line + 5);
		else if (strncmp(line, "auth ", 5) == 0)
			m->auth = xstrdup(line + 5);
	}
	free(line);
	fclose(f);
	if (m->data_offset == 0 || m->sender == NULL || m->nrcpts == 0) {
		snprintf(err, errlen, "%s: damaged queue file (no envelope)", id);
		spool_msg_close(m);
		return NULL;
	}
	{
		/* "end N\n" closes the file: the message is what lies between. */
		char buf[64];
		off_t from = st.st_size > 63 ? st.st_size - 63 : 0;
		ssize_t got = pread(m->fd, buf, (size_t)(st.st_size - from), from);
		char *nl;
		if (got <= 0 || buf[got - 1] != '\n') {
			snprintf(err, errlen, "%s: damaged queue file (no end record)", id);
			spool_msg_close(m);
			return NULL;
		}
		buf[got - 1] = '\0';
		nl = strrchr(buf, '\n');
		if (nl == NULL || strncmp(nl + 1, "end ", 4) != 0) {
			snprintf(err, errlen, "%s: damaged queue file (no end record)", id);
			spool_msg_close(m);
			return NULL;
		}
		m->data_len = strtoull(nl + 5, NULL, 10);
		if (m->data_offset + m->data_len + strlen(nl + 1) + 1 != (uint64_t)st.st_size) {
			snprintf(err, errlen, "%s: damaged queue file (size mismatch)", id);
			spool_msg_close(m);
			return NULL;
		}
	}
	if (m->client == NULL)
		m->client = xstrdup("");
	if (m->helo == NULL)
		m->helo = xstrdup("");
	m->rstate = xcalloc(m->nrcpts, 1);
	m->rtext = xcalloc(m->nrcpts, sizeof(char *));
	replay_state(sp, m);
	return m;
}

void spool_msg_close(struct spool_msg *m)
{
	size_t i;

	if (m == NULL)
		return;
	if (m->fd != -1)
		close(m->fd);
	for (i = 0; i < m->nrcpts; i++) {
		free(m->rcpts[i]);
		if (m->rtext)
			free(m->rtext[i]);
	}
	free(m->rcpts);
	free(m->rtext);
	free(m->rstate);
	free(m->sender);
	free(m->client);
	free(m->helo);
	free(m->auth);
	free(m);
}

void spool_msg_close_removed(struct spool *sp, struct spool_msg *m)
{
	if (m == NULL)
		return;
	if (m->fd != -1 && sp->sync != NULL) {
		spool_sync_close(sp->sync, m->fd);
		m->fd = -1;
	}
	spool_msg_close(m);
}

static int state_append(struct spool *sp, const char *id, const char *line)
{
	int sfd, fd;
	size_t len = strlen(line);

	if ((sfd = openat(sp->rootfd, "state", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1)
		return -1;
	fd = openat(sfd, id, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	close(sfd);
	if (fd == -1)
		return -1;
	if (write(fd, line, len) != (ssize_t)len) {
		int e = errno;
		close(fd);
		errno = e ? e : ENOSPC;
		return -1;
	}
	if (sp->sync)
		spool_sync_fsync(sp->sync, fd); /* closes fd */
	else {
		fsync(fd);
		close(fd);
	}
	return 0;
}

int spool_msg_record(struct spool *sp, struct spool_msg *m, size_t idx,
    enum spool_rcpt_state st, const char *text)
{
	char line[512];
	size_t i;

	ASSERT(idx < m->nrcpts && st != SPOOL_RCPT_PENDING);
	m->rstate[idx] = (unsigned char)st;
	if (text != m->rtext[idx]) { /* callers may pass m->rtext[idx] itself */
		char *copy = xstrdup(text ? text : "");
		free(m->rtext[idx]);
		m->rtext[idx] = copy;
	}
	text = m->rtext[idx];
	snprintf(line, sizeof(line), "%s %zu %s", st == SPOOL_RCPT_SENT ? "sent" : "bounced", idx,
	    text ? text : "");
	for (i = 0; line[i]; i++)
		if ((unsigned char)line[i] < 0x20)
			line[i] = ' ';
	/* a full buffer cuts the text, never the newline */
	i = strlen(line);
	if (i > sizeof(line) - 2)
		i = sizeof(line) - 2;
	line[i] = '\n';
	line[i + 1] = '\0';
	return state_append(sp, m->id, line);
}

int spool_msg_record_dsn(struct spool *sp, struct spool_msg *m)
{
	m->dsn_sent = 1;
	return state_append(sp, m->id, "dsn\n");
}

int spool_remove(struct spool *sp, const char *id)
{
	struct stat st;
	int sfd, r;

	if (!valid_id(id)) {
		errno = EINVAL;
		return -1;
	}
	if (fstatat(sp->queuefd, id, &st, 0) == -1)
		return -1;
	/* The message goes first: a state file without its message is
	 * cleaned up at start, a message without its state would be re-sent. */
	if ((r = unlinkat(sp->queuefd, id, 0)) == -1)
		return -1;
	if ((sfd = openat(sp->rootfd, "state", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) != -1) {
		unlinkat(sfd, id, 0);
		close(sfd);
	}
	if (sp->nmessages > 0)
		sp->nmessages--;
	sp->nbytes = sp->nbytes >= (uint64_t)st.st_size ? sp->nbytes - (uint64_t)st.st_size : 0;
	return 0;
}

/* --- for "sesrelay queue" ------------------------------------------------- */

int spool_valid_id(const char *s)
{
	return valid_id(s);
}

struct spool *spool_open_readonly(const char *path, char *err, size_t errlen)
{
	struct spool *sp = xcalloc(1, sizeof(*sp));

	sp->path = xstrdup(path);
	sp->rootfd = sp->tmpfd = sp->queuefd = sp->markfd = -1;
	if ((sp->rootfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1 ||
	    (sp->queuefd = openat(sp->rootfd, "queue", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1) {
		int e = errno;
		snprintf(err, errlen, "cannot open spool %s: %s", path, strerror(e));
		spool_close(sp);
		errno = e;
		return NULL;
	}
	return sp;
}

int spool_record_hold(struct spool *sp, const char *id, int hold)
{
	if (!valid_id(id)) {
		errno = EINVAL;
		return -1;
	}
	return state_append(sp, id, hold ? "hold\n" : "release\n");
}

/* --- inbound markers ------------------------------------------------------------ */

/*
 * INBOUND MARKERS (inbound/ID).  The S3 forwarder must turn an object into a
 * queued message exactly once, across crashes, although "queue the message"
 * and "delete the object" cannot be one atomic step.  The marker bridges
 * them; its text is the forwarder's (a state word, the key, the ETag).  It
 * is written under tmp/, fsync'd and renamed into inbound/, and inbound/ is
 * fsync'd, before the forwarder goes on; replacing it is the same atomic
 * rename.  relay/inbound.c documents the protocol built on it.
 */
static int mark_dir(struct spool *sp)
{
	if (sp->markfd != -1)
		return 0;
	if (mkdirat(sp->rootfd, "inbound", 0700) == -1 && errno != EEXIST)
		return -1;
	if ((sp->markfd = openat(sp->rootfd, "inbound", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1)
		return -1;
	if (sp->base && sp->marksync == NULL)
		sp->marksync = spool_sync_new(sp->base, sp->tmpfd, sp->markfd, 1);
	return 0;
}

/* tmp/ID.mark with text, not yet fsync'd: the descriptor, or -1. */
static int mark_tmp(struct spool *sp, const char *id, const char *text, size_t len,
    char name[SPOOL_ID_LEN + 8])
{
	ssize_t n;
	size_t off = 0;
	int fd;

	snprintf(name, SPOOL_ID_LEN + 8, "%s.mark", id);
	if ((fd = openat(sp->tmpfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) == -1)
		return -1;
	while (off < len) {
		if ((n = write(fd, text + off, len - off)) == -1) {
			int e = errno;
			if (e == EINTR)
				continue;
			close(fd);
			unlinkat(sp->tmpfd, name, 0);
			errno = e;
			return -1;
		}
		off += (size_t)n;
	}
	return fd;
}

struct mark_job {
	spool_mark_done done;
	void *arg;
	int error; /* for a failure reported without a job */
};

static void mark_written(void *arg, int error)
{
	struct mark_job *j = arg;

	j->done(j->arg, error);
	free(j);
}

static void mark_failed(evutil_socket_t fd, short what, void *arg)
{
	struct mark_job *j = arg;

	mark_written(j, j->error);
}

void spool_mark_write(struct spool *sp, const char *id, const char *text, size_t len,
    spool_mark_done done, void *arg)
{
	char name[SPOOL_ID_LEN + 8];
	struct mark_job *j;
	int fd;

	errno = 0;
	if (!spool_valid_id(id) || mark_dir(sp) == -1 || sp->marksync == NULL ||
	    (fd = mark_tmp(sp, id, text, len, name)) == -1) {
		/* report it from the loop, like a completed job */
		j = xcalloc(1, sizeof(*j));
		j->done = done;
		j->arg = arg;
		j->error = errno ? errno : EINVAL;
		if (event_base_once(sp->base, -1, EV_TIMEOUT, mark_failed, j, NULL) == -1)
			fatalx("event_base_once failed");
		return;
	}
	j = xcalloc(1, sizeof(*j));
	j->done = done;
	j->arg = arg;
	spool_sync_submit(sp->marksync, fd, name, id, mark_written, j);
}

int spool_mark_write_now(struct spool *sp, const char *id, const char *text, size_t len)
{
	char name[SPOOL_ID_LEN + 8];
	int fd, e;

	if (!spool_valid_id(id) || mark_dir(sp) == -1 || (fd = mark_tmp(sp, id, text, len, name)) == -1)
		return -1;
	if (fsync(fd) == -1 || renameat(sp->tmpfd, name, sp->markfd, id) == -1 ||
	    fsync(sp->markfd) == -1) {
		e = errno;
		close(fd);
		unlinkat(sp->tmpfd, name, 0);
		errno = e;
		return -1;
	}
	close(fd);
	return 0;
}

void spool_mark_remove(struct spool *sp, const char *id)
{
	if (spool_valid_id(id) && mark_dir(sp) == 0 && unlinkat(sp->markfd, id, 0) == -1 &&
	    errno != ENOENT)
		log_warn("%s/inbound/%s: cannot remove", sp->path, id);
}

int spool_mark_foreach(struct spool *sp, spool_mark_cb cb, void *arg)
{
	struct dirent *de;
	char text[SPOOL_MARK_MAX + 1];
	struct stat st;
	ssize_t n;
	DIR *d;
	int fd, dfd;

	if (mark_dir(sp) == -1)
		return -1;
	if ((dfd = dup(sp->markfd)) == -1 || (d = fdopendir(dfd)) == NULL) {
		if (dfd != -1)
			close(dfd);
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		if (!spool_valid_id(de->d_name))
			continue;
		if ((fd = openat(sp->markfd, de->d_name, O_RDONLY | O_CLOEXEC)) == -1)
			continue;
		n = read(fd, text, SPOOL_MARK_MAX);
		close(fd);
		if (n < 0)
			n = 0;
		text[n] = '\0';
		cb(arg, de->d_name, text, (size_t)n,
		    fstatat(sp->queuefd, de->d_name, &st, 0) == 0);
	}
	closedir(d);
	return 0;
}
