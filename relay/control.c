/*
 * control.c - the spool lock and the control socket (see control.h).
 *
 * Every request is answered from the loop thread in one go: list walks the
 * scheduler's index (memory only), show reads one queue file's envelope,
 * its state file and the first CONTROL_SHOW_HEADERS bytes of the message
 * (small reads of one file, like the scheduler's own), the others change
 * one entry.  Answers are queued on a bufferevent, so a slow reader never
 * holds the loop; a client that sends no complete line in time, or too
 * long a one, is dropped.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "relay/control.h"
#include "relay/log.h"
#include "relay/scheduler.h"
#include "relay/spool.h"
#include "relay/util.h"

#define CONTROL_MAX_CONNS    32
#define CONTROL_TIMEOUT_S    10
#define CONTROL_SHOW_HEADERS 8192
#define LOCK_WAIT_TRIES      40 /* x 50 ms: a queue command's shared lock */

struct cconn {
	struct control *c;
	struct bufferevent *bev;
	struct cconn *next, *prev;
	uid_t uid;
};

struct control {
	struct event_base *base;
	struct spool *sp;
	struct scheduler *sched;
	struct evconnlistener *lst;
	char *path;
	struct cconn *conns;
	size_t nconns;
};

/* --- the lock ------------------------------------------------------------ */

static long read_pid(int fd)
{
	char buf[32];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);

	if (n <= 0)
		return 0;
	buf[n] = '\0';
	return strtol(buf, NULL, 10);
}

int control_lock_daemon(const char *spool, char *err, size_t errlen)
{
	char *path = xasprintf("%s/%s", spool, CONTROL_LOCK);
	int fd, writable = 1, tries = 0;

	if (mkdir(spool, 0700) == -1 && errno != EEXIST) {
		snprintf(err, errlen, "cannot create spool %s: %s", spool, strerror(errno));
		free(path);
		return -1;
	}
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd == -1 && errno == EACCES) { /* left by root: lock it all the same */
		fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
		writable = 0;
	}
	if (fd == -1) {
		snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
		free(path);
		return -1;
	}
	while (flock(fd, LOCK_EX | LOCK_NB) == -1) {
		long pid;

		if (errno == EINTR)
			continue;
		if (errno == EWOULDBLOCK && ++tries < LOCK_WAIT_TRIES) {
			usleep(50000); /* a "sesrelay queue" command reading the files */
			continue;
		}
		if (errno != EWOULDBLOCK)
			snprintf(err, errlen, "cannot lock %s: %s", path, strerror(errno));
		else if ((pid = read_pid(fd)) > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM))
			snprintf(err, errlen, "another sesrelay is running on spool %s (pid %ld)",
			         spool, pid);
		else
			snprintf(
			    err, errlen,
			    "spool %s is locked by another process (%s is held): another sesrelay "
			    "or a 'sesrelay queue' command",
			    spool, path);
		close(fd);
		free(path);
		return -1;
	}
	if (writable) {
		char buf[32];
		int n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
		if (ftruncate(fd, 0) == -1 || pwrite(fd, buf, (size_t)n, 0) != n)
			log_warn("cannot write the pid into %s", path);
	}
	free(path);
	return fd;
}

int control_lock_probe(const char *spool, int *lockfd, long *pid, char *err, size_t errlen)
{
	char *path = xasprintf("%s/%s", spool, CONTROL_LOCK);
	struct stat st;
	int fd, e;

	*lockfd = -1;
	*pid = 0;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd == -1 && errno == ENOENT) {
		if (stat(spool, &st) == -1) {
			e = errno;
			free(path);
			if (e == ENOENT)
				return 0; /* no spool: no daemon, no mail */
			snprintf(err, errlen, "cannot access spool %s: %s", spool, strerror(e));
			errno = e;
			return -1;
		}
		/* a spool no daemon of this version has run on yet */
		fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
		if (fd != -1 && geteuid() == 0 && st.st_uid != 0 &&
		    fchown(fd, st.st_uid, st.st_gid) == -1)
			fprintf(stderr, "sesrelay: warning: cannot give %s to uid %ld: %s\n", path,
			        (long)st.st_uid, strerror(errno));
		if (fd == -1 && errno == EEXIST)
			fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	}
	if (fd == -1) {
		e = errno;
		snprintf(err, errlen, "cannot open %s: %s", path, strerror(e));
		free(path);
		errno = e;
		return -1;
	}
	while (flock(fd, LOCK_SH | LOCK_NB) == -1) {
		if (errno == EINTR)
			continue;
		e = errno;
		if (e == EWOULDBLOCK) {
			*pid = read_pid(fd);
			close(fd);
			free(path);
			return 1;
		}
		snprintf(err, errlen, "cannot lock %s: %s", path, strerror(e));
		close(fd);
		free(path);
		errno = e;
		return -1;
	}
	free(path);
	*lockfd = fd;
	return 0;
}

/* --- the socket address -------------------------------------------------- */

/* sun_path holds ~107 bytes; a longer spool path is reached through
 * /proc/self/fd/N/ of the directory (Linux).  *dirfd: close after use. */
static int sock_addr(const char *spool, struct sockaddr_un *sun, int *dirfd)
{
	memset(sun, 0, sizeof(*sun));
	sun->sun_family = AF_UNIX;
	*dirfd = -1;
	if (bsnprintf(sun->sun_path, sizeof(sun->sun_path), "%s/%s", spool, CONTROL_SOCKET) == 0)
		return 0;
	if ((*dirfd = open(spool, O_PATH | O_DIRECTORY | O_CLOEXEC)) == -1)
		return -1;
	snprintf(sun->sun_path, sizeof(sun->sun_path), "/proc/self/fd/%d/%s", *dirfd,
	         CONTROL_SOCKET);
	return 0;
}

int control_connect(const char *spool)
{
	struct sockaddr_un sun;
	int fd, dirfd, r, e;

	if (sock_addr(spool, &sun, &dirfd) == -1)
		return -1;
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1) {
		e = errno;
		if (dirfd != -1)
			close(dirfd);
		errno = e;
		return -1;
	}
	do
		r = connect(fd, (struct sockaddr *)&sun, sizeof(sun));
	while (r == -1 && errno == EINTR);
	e = errno;
	if (dirfd != -1)
		close(dirfd);
	if (r == -1) {
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* --- formatting ------------------------------------------------------------ */

void control_fmt_duration(double seconds, char *buf, size_t len)
{
	long s = seconds < 0 ? 0 : (long)(seconds + 0.5);

	if (s < 120)
		snprintf(buf, len, "%lds", s);
	else if (s < 120 * 60)
		snprintf(buf, len, "%ldm", s / 60);
	else if (s < 48 * 3600)
		snprintf(buf, len, "%ldh", s / 3600);
	else
		snprintf(buf, len, "%ldd", s / 86400);
}

static void fmt_time(double t, char *buf, size_t len)
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (localtime_r(&tt, &tm) == NULL || strftime(buf, len, "%Y-%m-%d %H:%M:%S %Z", &tm) == 0)
		snprintf(buf, len, "%.0f", t);
}

/* A value from a file or from SES, made safe for one output line (and for
 * a tab-separated field): control characters become spaces. */
static void add_clean(struct evbuffer *out, const char *s)
{
	while (*s) {
		size_t n = 0;
		while (s[n] && (unsigned char)s[n] >= 0x20 && s[n] != 0x7f)
			n++;
		evbuffer_add(out, s, n);
		s += n;
		if (*s) {
			evbuffer_add(out, " ", 1);
			s++;
		}
	}
}

static const char *state_word(enum scheduler_state st)
{
	switch (st) {
	case SCHED_QUEUED:
		return "queued";
	case SCHED_DEFERRED:
		return "deferred";
	case SCHED_ACTIVE:
		return "active";
	case SCHED_HELD:
		return "held";
	case SCHED_BOUNCING:
		return "bouncing";
	}
	return "?";
}

static void show_headers(struct evbuffer *out, const struct spool_msg *m)
{
	size_t want =
	    m->data_len < CONTROL_SHOW_HEADERS ? (size_t)m->data_len : CONTROL_SHOW_HEADERS;
	char *buf = xmalloc(want + 1), *p, *end, *eol;
	ssize_t got = want ? pread(m->fd, buf, want, (off_t)m->data_offset) : 0;
	int complete = 0;

	evbuffer_add_printf(out, "header:\n");
	if (got < 0) {
		evbuffer_add_printf(out, "  (cannot read the message: %s)\n", strerror(errno));
		free(buf);
		return;
	}
	end = buf + got;
	for (p = buf; p < end; p = eol + 1) {
		size_t n;

		if ((eol = memchr(p, '\n', (size_t)(end - p))) == NULL)
			break; /* a line cut by the limit */
		n = (size_t)(eol - p);
		if (n > 0 && p[n - 1] == '\r')
			n--;
		if (n == 0) {
			complete = 1;
			break;
		}
		for (size_t i = 0; i < n; i++)
			if (((unsigned char)p[i] < 0x20 && p[i] != '\t') || p[i] == 0x7f)
				p[i] = '?';
		evbuffer_add(out, "  ", 2);
		evbuffer_add(out, p, n);
		evbuffer_add(out, "\n", 1);
	}
	if (!complete && (uint64_t)got < m->data_len)
		evbuffer_add_printf(out,
		                    "  [... the header goes on; the first %zu bytes are shown]\n",
		                    (size_t)got);
	free(buf);
}

void control_format_show(struct evbuffer *out, const struct spool_msg *m,
                         const struct scheduler_info *live, double now)
{
	char t[64], d[32];
	size_t i, left = 0, width = 0;

	for (i = 0; i < m->nrcpts; i++)
		left += m->rstate[i] == SPOOL_RCPT_PENDING;
	evbuffer_add_printf(out, "id:          %s\n", m->id);
	evbuffer_add_printf(out, "state:       ");
	if (live == NULL)
		evbuffer_add_printf(out, "%s\n",
		                    m->hold ? "held" : "queued (the relay is not running)");
	else {
		evbuffer_add_printf(out, "%s", state_word(live->state));
		if (live->state == SCHED_DEFERRED) {
			fmt_time(live->next_try, t, sizeof(t));
			control_fmt_duration(live->next_try - now, d, sizeof(d));
			evbuffer_add_printf(out, ", next try in %s (%s)", d, t);
		}
		if (live->delete_pending)
			evbuffer_add_printf(out, ", deleted when its delivery attempt returns");
		else if (live->hold_pending)
			evbuffer_add_printf(out, ", held when its delivery attempt returns");
		evbuffer_add_printf(out, "\n");
	}
	fmt_time(m->arrival, t, sizeof(t));
	control_fmt_duration(now - m->arrival, d, sizeof(d));
	evbuffer_add_printf(out, "arrival:     %s (%s ago)\n", t, d);
	evbuffer_add_printf(out, "size:        %llu bytes (message %llu bytes)\n",
	                    (unsigned long long)m->file_size, (unsigned long long)m->data_len);
	evbuffer_add_printf(out, "sender:      <");
	add_clean(out, m->sender);
	evbuffer_add_printf(out, ">\nclient:      ");
	add_clean(out, m->client);
	evbuffer_add_printf(out, "\nhelo:        ");
	add_clean(out, m->helo);
	if (m->auth) {
		evbuffer_add_printf(out, "\nauth:        ");
		add_clean(out, m->auth);
	}
	evbuffer_add_printf(out, "\n");
	if (live != NULL) {
		evbuffer_add_printf(out, "attempts:    %d\n", live->attempts);
		if (live->last_error && live->last_error[0]) {
			evbuffer_add_printf(out, "last error:  ");
			add_clean(out, live->last_error);
			evbuffer_add_printf(out, "\n");
		}
	}
	if (m->dsn_sent)
		evbuffer_add_printf(out, "bounce:      queued\n");
	evbuffer_add_printf(out, "recipients:  %zu of %zu left\n", left, m->nrcpts);
	for (i = 0; i < m->nrcpts; i++)
		if (strlen(m->rcpts[i]) > width)
			width = strlen(m->rcpts[i]);
	if (width > 40)
		width = 40;
	for (i = 0; i < m->nrcpts; i++) {
		size_t pad = strlen(m->rcpts[i]) < width ? width - strlen(m->rcpts[i]) : 0;
		evbuffer_add_printf(out, "  <");
		add_clean(out, m->rcpts[i]);
		evbuffer_add_printf(out, ">  %*s", (int)pad, "");
		switch (m->rstate[i]) {
		case SPOOL_RCPT_SENT:
			evbuffer_add_printf(out, "sent");
			break;
		case SPOOL_RCPT_BOUNCED:
			evbuffer_add_printf(out, "bounced");
			break;
		default:
			evbuffer_add_printf(out, "pending");
			break;
		}
		if (m->rtext[i] && m->rtext[i][0]) {
			evbuffer_add_printf(out, " (");
			add_clean(out, m->rtext[i]);
			evbuffer_add_printf(out, ")");
		}
		evbuffer_add_printf(out, "\n");
	}
	show_headers(out, m);
}

/* A tab-separated field: never a tab, LF or other control character. */
static void add_field(struct evbuffer *out, const char *s)
{
	add_clean(out, s ? s : "?");
}

struct list_job {
	struct evbuffer *out;
	size_t n;
};

static void list_one(void *arg, const struct scheduler_info *in)
{
	struct list_job *j = arg;
	struct evbuffer *out = j->out;

	j->n++;
	evbuffer_add_printf(out, "%s\t%.6f\t%llu\t", in->id, in->arrival,
	                    (unsigned long long)in->size);
	add_field(out, in->sender);
	if (in->sender == NULL)
		evbuffer_add_printf(out, "\t?\t?");
	else
		evbuffer_add_printf(out, "\t%zu\t%zu", in->nrcpts, in->left);
	evbuffer_add_printf(out, "\t%d\t%.6f\t%s\t", in->attempts, in->next_try,
	                    state_word(in->state));
	add_field(out, in->last_error);
	evbuffer_add(out, "\n", 1);
}

/* --- requests -------------------------------------------------------------- */

static void reply_op(struct evbuffer *out, enum scheduler_op r, const char *msg)
{
	evbuffer_add_printf(out, "%s ",
	                    r == SCHED_OP_DONE || r == SCHED_OP_PENDING ? "ok" : "error");
	add_clean(out, msg);
	evbuffer_add(out, "\n", 1);
}

static void handle(struct control *c, struct cconn *cc, char *line, struct evbuffer *out)
{
	char *arg = strchr(line, ' '), msg[512], err[256], id[SPOOL_ID_LEN + 1];
	struct scheduler_info info;
	const char *cmd = line;

	if (arg != NULL)
		*arg++ = '\0';
	log_debug("control: uid %ld: %s%s%s", (long)cc->uid, cmd, arg ? " " : "", arg ? arg : "");
	if (strcmp(cmd, "list") == 0 && arg == NULL) {
		struct list_job j = {evbuffer_new(), 0};
		scheduler_foreach(c->sched, list_one, &j);
		evbuffer_add_printf(out, "ok %zu\n", j.n);
		evbuffer_add_buffer(out, j.out);
		evbuffer_free(j.out);
		return;
	}
	if (strcmp(cmd, "flush") == 0 && arg == NULL) {
		size_t n = scheduler_flush(c->sched);
		evbuffer_add_printf(out, "ok %zu deferred message(s) are due now\n", n);
		return;
	}
	if (arg == NULL ||
	    (strcmp(cmd, "show") != 0 && strcmp(cmd, "delete") != 0 && strcmp(cmd, "flush") != 0 &&
	     strcmp(cmd, "hold") != 0 && strcmp(cmd, "release") != 0)) {
		evbuffer_add_printf(out, "error unknown request: ");
		add_clean(out, cmd);
		evbuffer_add(out, "\n", 1);
		return;
	}
	if (!spool_valid_id(arg)) {
		evbuffer_add_printf(out, "error no message ");
		add_clean(out, arg);
		evbuffer_add_printf(out, " in the queue\n");
		return;
	}
	memcpy(id, arg, sizeof(id));
	if (strcmp(cmd, "show") == 0) {
		struct spool_msg *m;
		if (scheduler_lookup(c->sched, id, &info) == -1 ||
		    (m = spool_msg_open(c->sp, id, err, sizeof(err))) == NULL) {
			evbuffer_add_printf(out, "error no message %s in the queue\n", id);
			return;
		}
		evbuffer_add_printf(out, "ok\n");
		control_format_show(out, m, &info, util_now());
		spool_msg_close(m);
		return;
	}
	msg[0] = '\0';
	if (strcmp(cmd, "delete") == 0)
		reply_op(out, scheduler_delete(c->sched, id, msg, sizeof(msg)), msg);
	else if (strcmp(cmd, "flush") == 0)
		reply_op(out, scheduler_flush_id(c->sched, id, msg, sizeof(msg)), msg);
	else if (strcmp(cmd, "hold") == 0)
		reply_op(out, scheduler_hold(c->sched, id, msg, sizeof(msg)), msg);
	else
		reply_op(out, scheduler_release(c->sched, id, msg, sizeof(msg)), msg);
}

/* --- connections ------------------------------------------------------------ */

static void conn_free(struct cconn *cc)
{
	struct control *c = cc->c;

	if (cc->prev)
		cc->prev->next = cc->next;
	else
		c->conns = cc->next;
	if (cc->next)
		cc->next->prev = cc->prev;
	c->nconns--;
	bufferevent_free(cc->bev);
	free(cc);
}

static void on_written(struct bufferevent *bev, void *arg)
{
	if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		conn_free(arg);
}

static void on_event(struct bufferevent *bev, short what, void *arg);

/* Answer and close once it is written. */
static void conn_finish(struct cconn *cc)
{
	bufferevent_disable(cc->bev, EV_READ);
	bufferevent_setcb(cc->bev, NULL, on_written, on_event, cc);
	if (evbuffer_get_length(bufferevent_get_output(cc->bev)) == 0)
		conn_free(cc);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	conn_free(arg); /* EOF, error or timeout */
}

static void on_read(struct bufferevent *bev, void *arg)
{
	struct cconn *cc = arg;
	struct evbuffer *in = bufferevent_get_input(bev), *out = bufferevent_get_output(bev);
	size_t n;
	char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_LF);

	if (line == NULL) {
		if (evbuffer_get_length(in) >= CONTROL_LINE_MAX) {
			evbuffer_add_printf(out, "error request too long\n");
			conn_finish(cc);
		}
		return;
	}
	if (n >= CONTROL_LINE_MAX)
		evbuffer_add_printf(out, "error request too long\n");
	else {
		if (n > 0 && line[n - 1] == '\r')
			line[--n] = '\0';
		if (strlen(line) != n)
			evbuffer_add_printf(out, "error NUL in the request\n");
		else
			handle(cc->c, cc, line, out);
	}
	free(line);
	conn_finish(cc);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
	struct control *c = arg;
	struct ucred cred;
	socklen_t len = sizeof(cred);
	struct timeval tv = {CONTROL_TIMEOUT_S, 0};
	struct cconn *cc;

	if (c->nconns >= CONTROL_MAX_CONNS) {
		log_warnx("control: too many connections; one refused");
		evutil_closesocket(fd);
		return;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1) {
		log_warn("control: cannot tell who connected (SO_PEERCRED)");
		evutil_closesocket(fd);
		return;
	}
	cc = xcalloc(1, sizeof(*cc));
	cc->c = c;
	cc->uid = cred.uid;
	cc->bev = bufferevent_socket_new(c->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (cc->bev == NULL) {
		evutil_closesocket(fd);
		free(cc);
		return;
	}
	cc->next = c->conns;
	if (c->conns)
		c->conns->prev = cc;
	c->conns = cc;
	c->nconns++;
	bufferevent_set_timeouts(cc->bev, &tv, &tv);
	if (cred.uid != 0 && cred.uid != geteuid()) {
		log_warnx(
		    "control: refused a request from uid %ld (pid %ld): only root and uid %ld "
		    "may control the relay",
		    (long)cred.uid, (long)cred.pid, (long)geteuid());
		evbuffer_add_printf(
		    bufferevent_get_output(cc->bev),
		    "error permission denied: only root and the user the relay runs as (uid %ld) "
		    "may control it\n",
		    (long)geteuid());
		conn_finish(cc);
		return;
	}
	bufferevent_setcb(cc->bev, on_read, NULL, on_event, cc);
	bufferevent_enable(cc->bev, EV_READ);
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
	log_warn("control: accept failed");
}

struct control *control_new(struct event_base *base, struct spool *sp, struct scheduler *sched,
                            char *err, size_t errlen)
{
	struct control *c = xcalloc(1, sizeof(*c));
	struct sockaddr_un sun;
	int fd = -1, dirfd = -1, r;
	mode_t old;

	c->base = base;
	c->sp = sp;
	c->sched = sched;
	c->path = xasprintf("%s/%s", spool_path(sp), CONTROL_SOCKET);
	if (unlink(c->path) == -1 && errno != ENOENT) { /* stale: we hold the lock */
		snprintf(err, errlen, "cannot remove the old %s: %s", c->path, strerror(errno));
		goto fail;
	}
	if (sock_addr(spool_path(sp), &sun, &dirfd) == -1 ||
	    (fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) == -1) {
		snprintf(err, errlen, "cannot create %s: %s", c->path, strerror(errno));
		goto fail;
	}
	old = umask(0177);
	r = bind(fd, (struct sockaddr *)&sun, sizeof(sun));
	umask(old);
	if (r == -1 || chmod(c->path, 0600) == -1) {
		snprintf(err, errlen, "cannot create %s: %s", c->path, strerror(errno));
		goto fail;
	}
	c->lst = evconnlistener_new(base, on_accept, c, LEV_OPT_CLOSE_ON_FREE, 16, fd);
	if (c->lst == NULL) {
		snprintf(err, errlen, "cannot listen on %s: %s", c->path, strerror(errno));
		goto fail;
	}
	fd = -1;
	evconnlistener_set_error_cb(c->lst, on_accept_error);
	if (dirfd != -1)
		close(dirfd);
	log_debug("control socket %s", c->path);
	return c;
fail:
	if (fd != -1)
		close(fd);
	if (dirfd != -1)
		close(dirfd);
	control_free(c);
	return NULL;
}

void control_free(struct control *c)
{
	if (c == NULL)
		return;
	while (c->conns)
		conn_free(c->conns);
	if (c->lst) {
		evconnlistener_free(c->lst);
		unlink(c->path);
	}
	free(c->path);
	free(c);
}
