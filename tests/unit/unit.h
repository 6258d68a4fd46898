/*
 * unit.h - the smallest test harness that fits table-driven C tests.
 *
 * A test binary defines UNIT_TESTS, an array of {name, fn}.  Run with no
 * argument it runs every case and prints "ok NAME" or "FAIL NAME: why" per
 * case and exits 1 if any failed; "--list" prints the names (one per line) so
 * the pytest driver can run and report each case on its own; a NAME argument
 * runs just that case.  A case fails through CHECK()/CHECK_STR()/CHECK_INT().
 */
#ifndef SESRELAY_UNIT_H
#define SESRELAY_UNIT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct unit_case {
	const char *name;
	void (*fn)(void);
};

static int unit_failed;
static const char *unit_current;

#define CHECK(cond)                                                                      \
	do {                                                                             \
		if (!(cond)) {                                                           \
			fprintf(stderr, "FAIL %s: %s:%d: %s\n", unit_current, __FILE__,  \
			    __LINE__, #cond);                                            \
			unit_failed = 1;                                                 \
			return;                                                          \
		}                                                                        \
	} while (0)

#define CHECK_INT(got, want)                                                             \
	do {                                                                             \
		long long g_ = (long long)(got), w_ = (long long)(want);                 \
		if (g_ != w_) {                                                          \
			fprintf(stderr, "FAIL %s: %s:%d: %s = %lld, want %lld\n",         \
			    unit_current, __FILE__, __LINE__, #got, g_, w_);             \
			unit_failed = 1;                                                 \
			return;                                                          \
		}                                                                        \
	} while (0)

#define CHECK_STR(got, want)                                                             \
	do {                                                                             \
		const char *g_ = (got), *w_ = (want);                                    \
		if (g_ == NULL || w_ == NULL ? g_ != w_ : strcmp(g_, w_) != 0) {         \
			fprintf(stderr, "FAIL %s: %s:%d: %s = \"%s\", want \"%s\"\n",     \
			    unit_current, __FILE__, __LINE__, #got, g_ ? g_ : "(null)",  \
			    w_ ? w_ : "(null)");                                         \
			unit_failed = 1;                                                 \
			return;                                                          \
		}                                                                        \
	} while (0)

#define UNIT_MAIN(cases)                                                                 \
	int main(int argc, char **argv)                                                  \
	{                                                                                \
		size_t n_ = sizeof(cases) / sizeof(cases[0]), i_;                        \
		int bad_ = 0, ran_ = 0;                                                  \
		if (argc > 1 && strcmp(argv[1], "--list") == 0) {                        \
			for (i_ = 0; i_ < n_; i_++)                                      \
				printf("%s\n", cases[i_].name);                          \
			return 0;                                                        \
		}                                                                        \
		for (i_ = 0; i_ < n_; i_++) {                                            \
			if (argc > 1 && strcmp(argv[1], cases[i_].name) != 0)            \
				continue;                                                \
			unit_current = cases[i_].name;                                   \
			unit_failed = 0;                                                 \
			cases[i_].fn();                                                  \
			ran_++;                                                          \
			if (unit_failed)                                                 \
				bad_++;                                                  \
			else                                                             \
				printf("ok %s\n", cases[i_].name);                       \
		}                                                                        \
		if (ran_ == 0) {                                                         \
			fprintf(stderr, "no test case named %s\n", argv[1]);             \
			return 2;                                                        \
		}                                                                        \
		return bad_ ? 1 : 0;                                                     \
	}

#endif
