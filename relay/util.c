/*
 * util.c - allocation wrappers, checked snprintf, size/duration parsing, clocks.
 *
 * Owns nothing stateful.  Must never return NULL from an allocation: running
 * out of memory ends the process through fatal(), which the spool survives.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "relay/log.h"
#include "relay/util.h"

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (p == NULL)
		fatal("malloc(%zu)", n);
	return p;
}

void *xcalloc(size_t nmemb, size_t size)
{
	void *p = calloc(nmemb ? nmemb : 1, size ? size : 1);
	if (p == NULL)
		fatal("calloc(%zu, %zu)", nmemb, size);
	return p;
}

void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	if (q == NULL)
		fatal("realloc(%zu)", n);
	return q;
}

void *xreallocarray(void *p, size_t nmemb, size_t size)
{
	void *q = reallocarray(p, nmemb ? nmemb : 1, size ? size : 1);
	if (q == NULL)
		fatal("reallocarray(%zu, %zu)", nmemb, size);
	return q;
}

char *xstrdup(const char *s)
{
	char *p = strdup(s);
	if (p == NULL)
		fatal("strdup");
	return p;
}

char *xstrndup(const char *s, size_t n)
{
	char *p = strndup(s, n);
	if (p == NULL)
		fatal("strndup");
	return p;
}

char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *p;
	int r;

	va_start(ap, fmt);
	r = vasprintf(&p, fmt, ap);
	va_end(ap);
	if (r < 0)
		fatal("vasprintf");
	return p;
}

int bsnprintf(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	if (r < 0 || (size_t)r >= size)
		return -1;
	return 0;
}

/* Shared by sizes and durations: a decimal number and an optional unit letter. */
static int parse_number_unit(const char *s, uint64_t *num, char *unit)
{
	char *end;
	unsigned long long v;

	while (isspace((unsigned char)*s))
		s++;
	if (!isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0)
		return -1;
	*unit = 0;
	if (*end && !isspace((unsigned char)*end))
		*unit = (char)toupper((unsigned char)*end++);
	while (isspace((unsigned char)*end))
		end++;
	if (*end != '\0')
		return -1;
	*num = v;
	return 0;
}

int util_parse_size(const char *s, uint64_t *out)
{
	uint64_t v, mul;
	char unit;

	if (parse_number_unit(s, &v, &unit) == -1)
		return -1;
	switch (unit) {
	case 0:
	case 'B':
		mul = 1;
		break;
	case 'K':
		mul = 1024;
		break;
	case 'M':
		mul = 1024 * 1024;
		break;
	case 'G':
		mul = 1024ULL * 1024 * 1024;
		break;
	default:
		return -1;
	}
	if (v > UINT64_MAX / mul)
		return -1;
	*out = v * mul;
	return 0;
}

int util_parse_duration(const char *s, uint64_t *seconds)
{
	uint64_t v, mul;
	char unit;

	if (parse_number_unit(s, &v, &unit) == -1)
		return -1;
	switch (unit) {
	case 0:
	case 'S':
		mul = 1;
		break;
	case 'M':
		mul = 60;
		break;
	case 'H':
		mul = 3600;
		break;
	case 'D':
		mul = 86400;
		break;
	default:
		return -1;
	}
	if (v > UINT64_MAX / mul)
		return -1;
	*seconds = v * mul;
	return 0;
}

double util_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

double util_monotime(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}
