/*
 * spool_sync.c - group commit for the spool.
 *
 * Why threads: fsync(2) blocks for a disk round trip (milliseconds).  Doing it
 * on the loop would stall every session; doing one fsync per message in
 * sequence would cap throughput at one message per disk flush.  A few
 * threads fsync different files at the same time, which the file system's
 * journal folds into one commit, and the directory fsync that makes the
 * renames durable is shared: a thread that finds another one already syncing
 * the directory waits for the *next* sync to start and covers its rename with
 * it, so N sessions finishing together cost about two flushes, not 2N.
 *
 * The loop never waits for this module: it hands over a job and gets the
 * result later through an eventfd.  Nothing here touches session state.
 *
 * Ordering per job: fsync(file) -> close -> renameat(tmp -> queue) ->
 * fsync(queue dir) -> report.  A crash before the rename leaves only a temp
 * file, which recovery deletes; a crash after it leaves a complete file.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>

#include "relay/log.h"
#include "relay/spool_sync.h"
#include "relay/util.h"

#define SPOOL_NAME_MAX 64

struct sync_job {
	struct sync_job *next;
	int fd;
	char from[SPOOL_NAME_MAX];
	char to[SPOOL_NAME_MAX];
	int error;
	int close_only;       /* just close(2) it: see spool_sync_close() */
	spool_sync_done done;
	void *arg;
};

struct spool_sync {
	int dir_from, dir_to;
	int efd;
	struct event *ev;
	pthread_t *threads;
	int nthreads;

	pthread_mutex_t lock;
	pthread_cond_t work;   /* jobs available or stopping */
	pthread_cond_t dirsync; /* a directory sync finished */
	struct sync_job *todo_head, **todo_tail;
	struct sync_job *done_head, **done_tail;
	int stopping;

	/* group commit of the directory: generations of renames */
	uint64_t renamed;      /* renames done so far */
	uint64_t synced;       /* renames covered by a finished dir fsync */
	int syncing;
};

/* Make rename number `mine` durable, sharing directory fsyncs.  Called with
 * ss->lock held; returns with it held. */
static int group_dirsync(struct spool_sync *ss, uint64_t mine)
{
	while (ss->synced < mine) {
		if (ss->syncing) {
			pthread_cond_wait(&ss->dirsync, &ss->lock);
			continue;
		}
		uint64_t target = ss->renamed;
		ss->syncing = 1;
		pthread_mutex_unlock(&ss->lock);
		int r = fsync(ss->dir_to) == -1 ? errno : 0;
		pthread_mutex_lock(&ss->lock);
		ss->syncing = 0;
		if (r == 0)
			ss->synced = target;
		pthread_cond_broadcast(&ss->dirsync);
		if (r != 0)
			return r;
	}
	return 0;
}

static void run_job(struct spool_sync *ss, struct sync_job *j)
{
	int err = 0;

	if (j->close_only) {
		close(j->fd);
		j->fd = -1;
		return;
	}
	if (fsync(j->fd) == -1)
		err = errno;
	if (close(j->fd) == -1 && err == 0)
		err = errno;
	j->fd = -1;
	if (j->to[0] == '\0') { /* fsync-only job */
		j->error = err;
		return;
	}
	if (err == 0 && renameat(ss->dir_from, j->from, ss->dir_to, j->to) == -1)
		err = errno;
	if (err != 0) {
		unlinkat(ss->dir_from, j->from, 0);
		j->error = err;
		return;
	}
	pthread_mutex_lock(&ss->lock);
	uint64_t mine = ++ss->renamed;
	err = group_dirsync(ss, mine);
	pthread_mutex_unlock(&ss->lock);
	if (err != 0) {
		/* The file is in the queue but we cannot promise it survives a
		 * crash: refuse the message.  Recovery would deliver it if it
		 * does survive; the client retries, a rare duplicate. */
		unlinkat(ss->dir_to, j->to, 0);
		j->error = err;
	}
}

static void *worker(void *arg)
{
	struct spool_sync *ss = arg;
	uint64_t one = 1;

	pthread_mutex_lock(&ss->lock);
	for (;;) {
		while (ss->todo_head == NULL && !ss->stopping)
			pthread_cond_wait(&ss->work, &ss->lock);
		struct sync_job *j = ss->todo_head;
		if (j == NULL)
			break;
		ss->todo_head = j->next;
		if (ss->todo_head == NULL)
			ss->todo_tail = &ss->todo_head;
		pthread_mutex_unlock(&ss->lock);

		run_job(ss, j);

		pthread_mutex_lock(&ss->lock);
		j->next = NULL;
		*ss->done_tail = j;
		ss->done_tail = &j->next;
		ssize_t w = write(ss->efd, &one, sizeof(one));
		(void)w; /* an eventfd write only fails on counter overflow */
	}
	pthread_mutex_unlock(&ss->lock);
	return NULL;
}

static void run_completions(struct spool_sync *ss)
{
	struct sync_job *list, *j;

	pthread_mutex_lock(&ss->lock);
	list = ss->done_head;
	ss->done_head = NULL;
	ss->done_tail = &ss->done_head;
	pthread_mutex_unlock(&ss->lock);

	while ((j = list) != NULL) {
		list = j->next;
		if (j->done)
			j->done(j->arg, j->error);
		free(j);
	}
}

static void on_eventfd(evutil_socket_t fd, short what, void *arg)
{
	uint64_t n;
	ssize_t r = read(fd, &n, sizeof(n));
	(void)r;
	run_completions(arg);
}

struct spool_sync *spool_sync_new(struct event_base *base, int dirfd_from, int dirfd_to,
    int nthreads)
{
	struct spool_sync *ss = xcalloc(1, sizeof(*ss));
	int i;

	ss->dir_from = dirfd_from;
	ss->dir_to = dirfd_to;
	ss->todo_tail = &ss->todo_head;
	ss->done_tail = &ss->done_head;
	pthread_mutex_init(&ss->lock, NULL);
	pthread_cond_init(&ss->work, NULL);
	pthread_cond_init(&ss->dirsync, NULL);
	ss->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (ss->efd == -1)
		fatal("eventfd");
	ss->ev = event_new(base, ss->efd, EV_READ | EV_PERSIST, on_eventfd, ss);
	event_add(ss->ev, NULL);
	ss->nthreads = nthreads;
	ss->threads = xcalloc((size_t)nthreads, sizeof(pthread_t));
	for (i = 0; i < nthreads; i++)
		if ((errno = pthread_create(&ss->threads[i], NULL, worker, ss)) != 0)
			fatal("pthread_create");
	return ss;
}

void spool_sync_submit(struct spool_sync *ss, int fd, const char *from, const char *to,
    spool_sync_done done, void *arg)
{
	struct sync_job *j = xcalloc(1, sizeof(*j));

	j->fd = fd;
	if (bsnprintf(j->from, sizeof(j->from), "%s", from) == -1 ||
	    bsnprintf(j->to, sizeof(j->to), "%s", to) == -1)
		fatalx("spool_sync_submit: name too long");
	j->done = done;
	j->arg = arg;
	pthread_mutex_lock(&ss->lock);
	*ss->todo_tail = j;
	ss->todo_tail = &j->next;
	pthread_cond_signal(&ss->work);
	pthread_mutex_unlock(&ss->lock);
}

void spool_sync_fsync(struct spool_sync *ss, int fd)
{
	spool_sync_submit(ss, fd, "", "", NULL, NULL);
}

void spool_sync_close(struct spool_sync *ss, int fd)
{
	struct sync_job *j = xcalloc(1, sizeof(*j));

	j->fd = fd;
	j->close_only = 1;
	pthread_mutex_lock(&ss->lock);
	*ss->todo_tail = j;
	ss->todo_tail = &j->next;
	pthread_cond_signal(&ss->work);
	pthread_mutex_unlock(&ss->lock);
}

void spool_sync_free(struct spool_sync *ss)
{
	int i;

	if (ss == NULL)
		return;
	pthread_mutex_lock(&ss->lock);
	ss->stopping = 1;
	pthread_cond_broadcast(&ss->work);
	pthread_mutex_unlock(&ss->lock);
	for (i = 0; i < ss->nthreads; i++)
		pthread_join(ss->threads[i], NULL);
	run_completions(ss);
	event_free(ss->ev);
	close(ss->efd);
	pthread_mutex_destroy(&ss->lock);
	pthread_cond_destroy(&ss->work);
	pthread_cond_destroy(&ss->dirsync);
	free(ss->threads);
	free(ss);
}
