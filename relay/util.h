/*
 * util.h - allocation wrappers that die on failure, checked string helpers,
 * and parsing of sizes and durations shared by the config loader and the CLI.
 *
 * Out of memory is not a condition sesrelay tries to survive: the wrappers log
 * and exit, so no caller has an untested NULL path.
 */
#ifndef SESRELAY_UTIL_H
#define SESRELAY_UTIL_H

#include <stddef.h>
#include <stdint.h>

void *xmalloc(size_t n);
void *xcalloc(size_t nmemb, size_t size);
void *xrealloc(void *p, size_t n);
void *xreallocarray(void *p, size_t nmemb, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* asprintf that dies on failure */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* snprintf that reports truncation: returns 0 on success, -1 if it did not fit. */
int bsnprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* "10M" -> 10485760.  K/M/G are powers of 1024.  Returns 0 or -1. */
int util_parse_size(const char *s, uint64_t *out);
/* "90s", "5m", "1h", "2d"; a bare number is seconds.  Returns 0 or -1. */
int util_parse_duration(const char *s, uint64_t *seconds);

/* Monotonic and wall clock in seconds, as doubles. */
double util_now(void);
double util_monotime(void);

#endif
