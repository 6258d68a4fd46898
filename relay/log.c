/*
 * log.c - the daemon's log: "sesrelay[PID]: TEXT" on stderr or syslog(LOG_MAIL).
 *
 * One write(2) per line so lines from concurrent writers (the spool's sync
 * threads, a CLI child) never interleave.  Lines are capped at LOG_LINE_MAX;
 * longer text is cut and marked, never overflowed.  Control characters from
 * peers are escaped so a client cannot forge log lines.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "relay/log.h"

#define LOG_LINE_MAX 2048

static const char *log_prog = "sesrelay";
static int log_syslog;
static enum log_level log_current = LOG_LEVEL_INFO;

void log_init(const char *progname, int to_syslog)
{
	log_prog = progname;
	if (to_syslog && !log_syslog)
		openlog(progname, LOG_PID | LOG_NDELAY, LOG_MAIL);
	else if (!to_syslog && log_syslog)
		closelog();
	log_syslog = to_syslog;
}

void log_set_level(enum log_level level)
{
	log_current = level;
}

int log_level_enabled(enum log_level level)
{
	return level <= log_current;
}

static void log_vwrite(enum log_level level, int with_errno, const char *fmt, va_list ap)
{
	char text[LOG_LINE_MAX], line[LOG_LINE_MAX + 64];
	int saved = errno, n, prio;
	size_t i, j;

	if (!log_level_enabled(level))
		return;
	n = vsnprintf(text, sizeof(text), fmt, ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(text))
		memcpy(text + sizeof(text) - 6, "[...]", 6);
	if (with_errno) {
		size_t len = strlen(text);
		snprintf(text + len, sizeof(text) - len, ": %s", strerror(saved));
	}
	/* Escape control characters: peer text must never start a new line. */
	for (i = 0, j = 0; text[i] && j < sizeof(text) - 5; i++) {
		unsigned char c = (unsigned char)text[i];
		if (c < 0x20 || c == 0x7f) {
			snprintf(line + j, 5, "\\x%02x", c);
			j += 4;
		} else
			line[j++] = (char)c;
	}
	line[j] = '\0';
	memcpy(text, line, j + 1);

	if (log_syslog) {
		prio = level == LOG_LEVEL_ERROR  ? LOG_ERR
		       : level == LOG_LEVEL_WARN ? LOG_WARNING
		       : level == LOG_LEVEL_INFO ? LOG_INFO
						 : LOG_DEBUG;
		syslog(prio, "%s", text);
	} else {
		const char *tag = level == LOG_LEVEL_ERROR  ? "error: "
				  : level == LOG_LEVEL_WARN ? "warning: "
							    : "";
		n = snprintf(line, sizeof(line), "%s[%d]: %s%s\n", log_prog, (int)getpid(), tag,
		    text);
		if (n > 0) {
			ssize_t w = write(STDERR_FILENO, line,
			    (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
			(void)w;
		}
	}
	errno = saved;
}

#define LOG_FN(name, level, err)                                                         \
	void name(const char *fmt, ...)                                                  \
	{                                                                                \
		va_list ap;                                                              \
		va_start(ap, fmt);                                                       \
		log_vwrite(level, err, fmt, ap);                                         \
		va_end(ap);                                                              \
	}

LOG_FN(log_warn, LOG_LEVEL_WARN, 1)
LOG_FN(log_warnx, LOG_LEVEL_WARN, 0)
LOG_FN(log_info, LOG_LEVEL_INFO, 0)
LOG_FN(log_debug, LOG_LEVEL_DEBUG, 0)
LOG_FN(log_error, LOG_LEVEL_ERROR, 0)

void fatal(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vwrite(LOG_LEVEL_ERROR, 1, fmt, ap);
	va_end(ap);
	exit(1);
}

void fatalx(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vwrite(LOG_LEVEL_ERROR, 0, fmt, ap);
	va_end(ap);
	exit(1);
}

void log_panic(const char *file, int line, const char *what)
{
	log_error("panic: %s:%d: assertion failed: %s", file, line, what);
	abort();
}
