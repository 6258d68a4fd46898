/*
 * workq.h - run slow, CPU-bound work (password hashing) off the event loop.
 *
 * work(arg) runs on a worker thread and must not touch loop state; done(arg)
 * runs afterwards on the loop thread.  A caller that goes away before done()
 * must not free arg: it marks it cancelled and lets done() free it.
 */
#ifndef SESRELAY_WORKQ_H
#define SESRELAY_WORKQ_H

struct event_base;
struct workq;

struct workq *workq_new(struct event_base *base, int nthreads);
void workq_submit(struct workq *q, void (*work)(void *), void (*done)(void *), void *arg);
/* Finishes queued work, runs the remaining done() callbacks, frees. */
void workq_free(struct workq *q);

#endif
