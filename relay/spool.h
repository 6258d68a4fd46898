/*
 * spool.h - the durable message queue on disk.
 *
 * A message is acknowledged to a client only after spool_writer_commit()'s
 * callback reports success: by then file and directory are fsync'd.  The
 * on-disk format and the crash-safety argument are documented at the top of
 * relay/spool.c; the group-commit machinery lives in relay/spool_sync.c.
 */
#ifndef SESRELAY_SPOOL_H
#define SESRELAY_SPOOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct event_base;
struct evbuffer;

#define SPOOL_ID_LEN 10

struct spool;

/* The envelope of a message as received. */
struct spool_envelope {
	const char *sender;          /* "" for the null sender <> */
	const char **rcpts;
	size_t nrcpts;
	const char *client;          /* "name[ip]" */
	const char *helo;
	const char *auth_user;       /* NULL when not authenticated */
	const char *proto;           /* "ESMTP", "ESMTPSA", "SENDMAIL", ... */
};

struct spool_writer;

/* Create the directories if needed, remove uncommitted temp files, validate
 * queued files (moving damaged ones to corrupt/).  Runs before the loop serves:
 * a blocking directory scan is acceptable only here. */
struct spool *spool_open(struct event_base *base, const char *path, char *err, size_t errlen);
/* Waits for in-flight commits, then frees.  Call after the loop has ended. */
void spool_close(struct spool *sp);
const char *spool_path(const struct spool *sp);

/* Free space check: 1 if fewer than reserve + need bytes are free. */
int spool_low_space(struct spool *sp, uint64_t reserve, uint64_t need);

/* Begin a message: picks a fresh queue id, creates the temp file and writes
 * the envelope.  NULL with errno set on failure. */
struct spool_writer *spool_writer_begin(struct spool *sp, const struct spool_envelope *env);
const char *spool_writer_id(const struct spool_writer *w);
/* The buffer message bytes are appended to; spool_writer_flush() moves it to
 * the file when it has grown (call after each append burst). */
struct evbuffer *spool_writer_buffer(struct spool_writer *w);
/* 0, or -1 with errno from the write that failed (the writer stays usable
 * only for spool_writer_abort). */
int spool_writer_flush(struct spool_writer *w, int force);
uint64_t spool_writer_size(const struct spool_writer *w);
/* Remove the temp file and free the writer. */
void spool_writer_abort(struct spool_writer *w);

/* Finish the file and make it durable off the loop.  cb runs later on the
 * loop thread with error 0 (the message is queued) or an errno (it is not,
 * and the temp file is gone).  The writer is consumed either way. */
typedef void (*spool_commit_cb)(void *arg, const char *id, int error);
void spool_writer_commit(struct spool_writer *w, spool_commit_cb cb, void *arg);

/* Number of commits handed off and not yet reported back. */
size_t spool_commits_pending(const struct spool *sp);

/* Counters kept up to date by the spool. */
size_t spool_queue_messages(const struct spool *sp);
uint64_t spool_queue_bytes(const struct spool *sp);

#endif
