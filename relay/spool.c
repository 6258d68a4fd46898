/*
 * spool.c - the queue directory: ids, the file format, writing, recovery.
 *
 * LAYOUT (under [relay] spool)
 *   tmp/ID      a message being received; never acknowledged; deleted on start
 *   queue/ID    a committed message: complete, fsync'd, renamed into place
 *   state/ID    per-recipient delivery results, append-only (scheduler)
 *   corrupt/ID  a queue file that failed validation on start; kept for a human
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
};

struct spool_writer {
	struct spool *sp;
	char id[SPOOL_ID_LEN + 1];
	int fd;
	struct evbuffer *buf;
	uint64_t env_size;    /* bytes of envelope, before the message */
	uint64_t file_size;   /* bytes written to the file so far */
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
static int64_t validate_file(int dirfd, const char *name, const char **why)
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
		int64_t size;

		if (de->d_name[0] == '.')
			continue;
		if (valid_id(de->d_name) && (size = validate_file(sp->queuefd, de->d_name, &why)) >= 0) {
			sp->nmessages++;
			sp->nbytes += (uint64_t)size;
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
	if (bad)
		fsync(sp->queuefd);
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
	sp->rootfd = sp->tmpfd = sp->queuefd = -1;
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
	if (sp->rootfd != -1)
		close(sp->rootfd);
	if (sp->tmpfd != -1)
		close(sp->tmpfd);
	if (sp->queuefd != -1)
		close(sp->queuefd);
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
	evbuffer_add_printf(w->buf, SPOOL_MAGIC "id %s\narrival %.6f\nclient %s\nhelo %s\n", w->id,
	    util_now(), env->client, env->helo ? env->helo : "");
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
	if (w->fd != -1)
		close(w->fd);
	evbuffer_free(w->buf);
	free(w);
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
