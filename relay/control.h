/*
 * control.h - the spool lock and the local control socket of "sesrelay queue".
 *
 * SPOOL/lock      the daemon holds an exclusive flock(2) on it for its whole
 *                 life and writes its pid into it; a second daemon on the
 *                 same spool refuses to start.  The queue command probes it
 *                 with a shared lock: held -> a daemon runs, talk to it;
 *                 free -> read the files directly, holding the shared lock
 *                 (a daemon starting meanwhile waits for it a moment).
 * SPOOL/control.sock
 *                 a Unix stream socket, mode 0600 in the 0700 spool, created
 *                 after privileges are dropped; peers other than root and the
 *                 daemon's own uid are refused (SO_PEERCRED).  Served by the
 *                 event loop, one request per connection, never blocking it.
 *
 * PROTOCOL (one connection, one request; the daemon closes after answering)
 *   request:  one line, at most CONTROL_LINE_MAX bytes with its LF:
 *             "list" | "show ID" | "delete ID" | "flush" | "flush ID" |
 *             "hold ID" | "release ID"
 *   answer:   "ok TEXT" or "error TEXT" on the first line, then for
 *             - list: one line per message, tab-separated (no field contains
 *               a tab or a control character):
 *               id arrival size sender nrcpts left attempts next_try state last_error
 *               (arrival, next_try: unix time; next_try 0 when not deferred;
 *               sender "" for <>, "?" columns when unknown; state: queued,
 *               deferred, active, held, bouncing)
 *             - show: the text to print (control_format_show)
 */
#ifndef SESRELAY_CONTROL_H
#define SESRELAY_CONTROL_H

#include <stddef.h>

struct event_base;
struct evbuffer;
struct scheduler;
struct scheduler_info;
struct spool;
struct spool_msg;

#define CONTROL_LINE_MAX 512
#define CONTROL_SOCKET   "control.sock"
#define CONTROL_LOCK     "lock"

/* Daemon: lock SPOOL/lock (creating the spool directory if needed) and write
 * the pid into it.  Waits up to 2 s for a queue command that holds it.
 * Returns the descriptor to keep open, or -1 with a reason in err. */
int control_lock_daemon(const char *spool, char *err, size_t errlen);

/* Queue command: 1 when a daemon holds the lock (its pid, or 0, in *pid);
 * 0 when none runs and *lockfd is a shared lock to hold while working on the
 * files (-1 when the spool does not exist); -1 on error (err; errno kept). */
int control_lock_probe(const char *spool, int *lockfd, long *pid, char *err, size_t errlen);

/* Connect to a running daemon's socket.  fd or -1 with errno. */
int control_connect(const char *spool);

struct control;
/* Listen on SPOOL/control.sock (a stale one is replaced: the caller holds
 * the lock).  NULL with a reason in err. */
struct control *control_new(struct event_base *base, struct spool *sp, struct scheduler *sched,
                            char *err, size_t errlen);
/* Close every connection, stop listening, remove the socket. */
void control_free(struct control *c);

/* --- formatting shared by the daemon and the queue command --------------- */

/* "queue show": envelope, state, recipients and the first few KB of the
 * message's header.  live: what the running daemon knows (NULL when it is
 * not running). */
void control_format_show(struct evbuffer *out, const struct spool_msg *m,
                         const struct scheduler_info *live, double now);
/* "45s", "12m", "3h", "2d" */
void control_fmt_duration(double seconds, char *buf, size_t len);

#endif
