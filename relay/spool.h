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
/* Remove the temp file now (a write failed: give the space back at once);
 * the writer stays allocated until spool_writer_abort(). */
void spool_writer_discard(struct spool_writer *w);
/* Remove the temp file and free the writer. */
void spool_writer_abort(struct spool_writer *w);

/* Finish the file and make it durable off the loop.  cb runs later on the
 * loop thread with error 0 (the message is queued) or an errno (it is not,
 * and the temp file is gone).  The writer is consumed either way. */
typedef void (*spool_commit_cb)(void *arg, const char *id, int error);
void spool_writer_commit(struct spool_writer *w, spool_commit_cb cb, void *arg);

/* Called after every successful commit (and, through spool_foreach, for
 * messages found at start): the scheduler's way to learn of new mail. */
typedef void (*spool_message_cb)(void *arg, const char *id, double arrival, uint64_t size);
/* After a commit the envelope is known: passed along to save a re-read. */
typedef void (*spool_commit_hook)(void *arg, const char *id, double arrival, uint64_t size,
    const char *sender, size_t nrcpts);
void spool_set_commit_hook(struct spool *sp, spool_commit_hook cb, void *arg);
/* Every message recovered by spool_open(), oldest first. */
void spool_foreach(struct spool *sp, spool_message_cb cb, void *arg);

/* --- reading a queued message for delivery ------------------------------- */

enum spool_rcpt_state { SPOOL_RCPT_PENDING, SPOOL_RCPT_SENT, SPOOL_RCPT_BOUNCED };

struct spool_msg {
	char id[SPOOL_ID_LEN + 1];
	int fd;                      /* queue file, read-only */
	uint64_t file_size;
	double arrival;
	char *sender;                /* "" for <> */
	char *client, *helo, *auth;  /* auth NULL when not authenticated */
	char **rcpts;
	size_t nrcpts;
	unsigned char *rstate;       /* enum spool_rcpt_state per recipient */
	char **rtext;                /* last outcome text per recipient (or NULL) */
	uint64_t data_offset, data_len;
	int dsn_sent;                /* a bounce for this message is already queued */
	int hold;
};

/* Open and parse queue/ID and replay state/ID.  NULL with a reason in err. */
struct spool_msg *spool_msg_open(struct spool *sp, const char *id, char *err, size_t errlen);
void spool_msg_close(struct spool_msg *m);
/* The same for a message just removed: its file is closed off the loop. */
void spool_msg_close_removed(struct spool *sp, struct spool_msg *m);
/* Append a durable per-recipient result ("sent"/"bounced") to state/ID;
 * made durable off the loop.  0 or -1 (errno). */
int spool_msg_record(struct spool *sp, struct spool_msg *m, size_t idx,
    enum spool_rcpt_state st, const char *text);
/* Note that the bounce for m is queued (so a restart does not send it twice). */
int spool_msg_record_dsn(struct spool *sp, struct spool_msg *m);
/* Delete queue/ID and state/ID: the message is finished. */
int spool_remove(struct spool *sp, const char *id);

/* --- for "sesrelay queue" (relay/control.c, relay/queue_cli.c) ----------- */

/* 1 if s has the form of a queue id. */
int spool_valid_id(const char *s);
/* Open an existing spool for the queue command while no daemon runs: creates,
 * recovers and deletes nothing (tmp/ is never touched).  Only spool_msg_open,
 * spool_msg_close, spool_remove, spool_record_hold and spool_close may be used
 * on it.  NULL with a reason and errno (ENOENT: there is no such spool). */
struct spool *spool_open_readonly(const char *path, char *err, size_t errlen);
/* Append "hold" (parked by the operator) or "release" to state/ID: durable
 * before it returns on a read-only spool, off the loop on the daemon's. */
int spool_record_hold(struct spool *sp, const char *id, int hold);

/* --- for the S3 forwarder (relay/inbound.c) --------------------------------- */

/* Do not run the commit hook for this message: its owner will announce it
 * with spool_announce() once it may be delivered. */
void spool_writer_quiet(struct spool_writer *w);
double spool_writer_arrival(const struct spool_writer *w);
/* Run the commit hook (tell the scheduler) for a committed quiet message. */
void spool_announce(struct spool *sp, const char *id, double arrival, uint64_t size,
    const char *sender, size_t nrcpts);

/* Hand-off markers inbound/ID (format and purpose: relay/spool.c and
 * relay/inbound.c).  A marker's text is at most SPOOL_MARK_MAX bytes. */
#define SPOOL_MARK_MAX 4096
typedef void (*spool_mark_done)(void *arg, int error);
/* Write (or atomically replace) inbound/ID durably, off the loop; done runs
 * later on the loop with 0 or an errno. */
void spool_mark_write(struct spool *sp, const char *id, const char *text, size_t len,
    spool_mark_done done, void *arg);
/* The same, blocking: only before the loop runs (recovery).  0 or -1. */
int spool_mark_write_now(struct spool *sp, const char *id, const char *text, size_t len);
/* Remove inbound/ID (not fsync'd: a marker that comes back is harmless). */
void spool_mark_remove(struct spool *sp, const char *id);
/* Every marker, with whether queue/ID exists.  Blocking: before the loop
 * runs only.  0, or -1 (errno) when inbound/ cannot be read. */
typedef void (*spool_mark_cb)(void *arg, const char *id, const char *text, size_t len,
    int queued);
int spool_mark_foreach(struct spool *sp, spool_mark_cb cb, void *arg);

/* Number of commits handed off and not yet reported back. */
size_t spool_commits_pending(const struct spool *sp);

/* Counters kept up to date by the spool. */
size_t spool_queue_messages(const struct spool *sp);
uint64_t spool_queue_bytes(const struct spool *sp);

#endif
