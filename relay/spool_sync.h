/*
 * spool_sync.h - make finished spool files durable off the event loop.
 *
 * A job is "fsync this file, rename it to its queue name, make the rename
 * durable".  Jobs run on a small pool of threads; directory fsyncs are shared
 * between jobs (group commit).  Completions come back on the loop thread.
 */
#ifndef SESRELAY_SPOOL_SYNC_H
#define SESRELAY_SPOOL_SYNC_H

struct event_base;
struct spool_sync;

typedef void (*spool_sync_done)(void *arg, int error);

struct spool_sync *spool_sync_new(struct event_base *base, int dirfd_from, int dirfd_to,
    int nthreads);
/* Takes ownership of fd (closed by the job).  from/to are names relative to
 * the two directories.  done(arg, 0 or errno) runs on the loop thread; on
 * error the source file has been unlinked. */
void spool_sync_submit(struct spool_sync *ss, int fd, const char *from, const char *to,
    spool_sync_done done, void *arg);
/* fsync fd and close it, off the loop; nothing is reported back (used for
 * the append-only state files, where durability "soon" is what we need). */
void spool_sync_fsync(struct spool_sync *ss, int fd);
/* close(2) fd off the loop.  For the last descriptor of a removed file the
 * kernel frees its blocks then, which may wait for the disk (discard). */
void spool_sync_close(struct spool_sync *ss, int fd);
/* Finish queued jobs, stop the threads, run remaining completions, free. */
void spool_sync_free(struct spool_sync *ss);

#endif
