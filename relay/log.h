/*
 * log.h - one-line, Postfix-style event logging.
 *
 * Every line is "sesrelay[PID]: TEXT".  Lines about a message start with its
 * queue id (or "NOQUEUE") and carry key=value fields; see SPEC.md section 6.
 * Nothing here ever sees a secret: callers must not pass passwords, keys or
 * AUTH payloads.
 */
#ifndef SESRELAY_LOG_H
#define SESRELAY_LOG_H

#include <stdarg.h>

enum log_level { LOG_LEVEL_ERROR, LOG_LEVEL_WARN, LOG_LEVEL_INFO, LOG_LEVEL_DEBUG };

void log_init(const char *progname, int to_syslog);
void log_set_level(enum log_level level);
int log_level_enabled(enum log_level level);

/* log_warn() appends ": strerror(errno)"; log_warnx() does not. */
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warnx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Unrecoverable: log and exit(1).  fatal() appends strerror(errno). */
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void fatalx(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* A broken invariant: a bug in sesrelay, never a runtime condition. */
#define ASSERT(cond)                                                                     \
	do {                                                                             \
		if (!(cond))                                                             \
			log_panic(__FILE__, __LINE__, #cond);                            \
	} while (0)
void log_panic(const char *file, int line, const char *what) __attribute__((noreturn));

#endif
