/*
 * workq.c - a small thread pool with completions delivered to the loop
 * through an eventfd (the same pattern as spool_sync.c, for generic jobs).
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>

#include "relay/log.h"
#include "relay/util.h"
#include "relay/workq.h"

struct job {
	struct job *next;
	void (*work)(void *);
	void (*done)(void *);
	void *arg;
};

struct workq {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct job *todo, **todo_tail, *done, **done_tail;
	pthread_t *threads;
	int nthreads, stopping, efd;
	struct event *ev;
};

static void *worker(void *arg)
{
	struct workq *q = arg;
	uint64_t one = 1;

	pthread_mutex_lock(&q->lock);
	for (;;) {
		while (q->todo == NULL && !q->stopping)
			pthread_cond_wait(&q->cond, &q->lock);
		struct job *j = q->todo;
		if (j == NULL)
			break;
		if ((q->todo = j->next) == NULL)
			q->todo_tail = &q->todo;
		pthread_mutex_unlock(&q->lock);
		j->work(j->arg);
		pthread_mutex_lock(&q->lock);
		j->next = NULL;
		*q->done_tail = j;
		q->done_tail = &j->next;
		ssize_t w = write(q->efd, &one, sizeof(one));
		(void)w;
	}
	pthread_mutex_unlock(&q->lock);
	return NULL;
}

static void run_done(struct workq *q)
{
	struct job *list, *j;

	pthread_mutex_lock(&q->lock);
	list = q->done;
	q->done = NULL;
	q->done_tail = &q->done;
	pthread_mutex_unlock(&q->lock);
	while ((j = list) != NULL) {
		list = j->next;
		j->done(j->arg);
		free(j);
	}
}

static void on_event(evutil_socket_t fd, short what, void *arg)
{
	uint64_t n;
	ssize_t r = read(fd, &n, sizeof(n));
	(void)r;
	run_done(arg);
}

struct workq *workq_new(struct event_base *base, int nthreads)
{
	struct workq *q = xcalloc(1, sizeof(*q));
	int i;

	pthread_mutex_init(&q->lock, NULL);
	pthread_cond_init(&q->cond, NULL);
	q->todo_tail = &q->todo;
	q->done_tail = &q->done;
	if ((q->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) == -1)
		fatal("eventfd");
	q->ev = event_new(base, q->efd, EV_READ | EV_PERSIST, on_event, q);
	event_add(q->ev, NULL);
	q->nthreads = nthreads;
	q->threads = xcalloc((size_t)nthreads, sizeof(pthread_t));
	for (i = 0; i < nthreads; i++)
		if ((errno = pthread_create(&q->threads[i], NULL, worker, q)) != 0)
			fatal("pthread_create");
	return q;
}

void workq_submit(struct workq *q, void (*work)(void *), void (*done)(void *), void *arg)
{
	struct job *j = xcalloc(1, sizeof(*j));

	j->work = work;
	j->done = done;
	j->arg = arg;
	pthread_mutex_lock(&q->lock);
	*q->todo_tail = j;
	q->todo_tail = &j->next;
	pthread_cond_signal(&q->cond);
	pthread_mutex_unlock(&q->lock);
}

void workq_free(struct workq *q)
{
	int i;

	if (q == NULL)
		return;
	pthread_mutex_lock(&q->lock);
	q->stopping = 1;
	pthread_cond_broadcast(&q->cond);
	pthread_mutex_unlock(&q->lock);
	for (i = 0; i < q->nthreads; i++)
		pthread_join(q->threads[i], NULL);
	run_done(q);
	event_free(q->ev);
	close(q->efd);
	pthread_mutex_destroy(&q->lock);
	pthread_cond_destroy(&q->cond);
	free(q->threads);
	free(q);
}
