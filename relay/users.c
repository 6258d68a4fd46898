/*
 * users.c - loading the users file, verifying passwords, sender ownership.
 *
 * Why crypt(3) with yescrypt: it is the slow, salted, memory-hard hash that
 * Debian itself uses for /etc/shadow, maintained in libxcrypt (part of the C
 * library's toolchain, no extra dependency), and its strings are the same an
 * admin gets from `mkpasswd -m yescrypt`.  SHA-512-crypt ("$6$") is accepted
 * for existing files.  Comparison of the computed hash is constant-time.
 */
#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "relay/log.h"
#include "relay/users.h"
#include "relay/util.h"

#define USERS_LINE_MAX 4096
#define USERS_MAX 100000

struct user {
	char *name;
	char *hash;
	char **senders;
	size_t nsenders;
};

struct users {
	struct user *v;
	size_t n;
};

/* A valid yescrypt hash of a random password: the unknown-user decoy. */
static const char dummy_hash[] =
    "$y$j9T$Yy6uB5WkvmDUbsUbG1jk./$dIPO22bGtAMFxW/TZ06BIpcX.Cx9faIINZLmlZCeb83";

static int valid_hash(const char *h)
{
	return (strncmp(h, "$y$", 3) == 0 || strncmp(h, "$6$", 3) == 0 ||
		   strncmp(h, "$7$", 3) == 0 || strncmp(h, "$gy$", 4) == 0) &&
	       strlen(h) > 10;
}

static int valid_sender(const char *s)
{
	const char *at = strchr(s, '@');

	if (strcmp(s, "*") == 0)
		return 1;
	if (at == NULL || at[1] == '\0' || strchr(at + 1, '@') != NULL)
		return 0;
	for (; *s; s++)
		if ((unsigned char)*s <= ' ' || (unsigned char)*s >= 0x7f || *s == ',')
			return 0;
	return 1;
}

void users_free(struct users *u)
{
	size_t i, j;

	if (u == NULL)
		return;
	for (i = 0; i < u->n; i++) {
		free(u->v[i].name);
		OPENSSL_cleanse(u->v[i].hash, strlen(u->v[i].hash));
		free(u->v[i].hash);
		for (j = 0; j < u->v[i].nsenders; j++)
			free(u->v[i].senders[j]);
		free(u->v[i].senders);
	}
	free(u->v);
	free(u);
}

static int parse_line(struct users *u, char *line, const char *path, int lineno, char *err,
    size_t errlen)
{
	char *c1 = strchr(line, ':'), *c2 = strrchr(line, ':'), *tok, *save;
	struct user *us;

	if (c1 == NULL || c2 == c1) {
		snprintf(err, errlen, "%s:%d: expected name:hash:allowed-senders", path, lineno);
		return -1;
	}
	*c1 = *c2 = '\0';
	if (*line == '\0' || strlen(line) > 255) {
		snprintf(err, errlen, "%s:%d: empty or over-long user name", path, lineno);
		return -1;
	}
	if (!valid_hash(c1 + 1)) {
		snprintf(err, errlen,
		    "%s:%d: user %s: the hash is not a crypt(3) yescrypt ($y$) or SHA-512 ($6$) "
		    "string; make one with 'sesrelay passwd %s'",
		    path, lineno, line, line);
		return -1;
	}
	if (users_find(u, line) != NULL) {
		snprintf(err, errlen, "%s:%d: user %s listed twice", path, lineno, line);
		return -1;
	}
	if (u->n >= USERS_MAX) {
		snprintf(err, errlen, "%s:%d: more than %d users", path, lineno, USERS_MAX);
		return -1;
	}
	u->v = xreallocarray(u->v, u->n + 1, sizeof(*u->v));
	us = &u->v[u->n++];
	memset(us, 0, sizeof(*us));
	us->name = xstrdup(line);
	us->hash = xstrdup(c1 + 1);
	for (tok = strtok_r(c2 + 1, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
		if (!valid_sender(tok)) {
			snprintf(err, errlen,
			    "%s:%d: user %s: allowed sender \"%s\" is not an address, @domain or *",
			    path, lineno, line, tok);
			return -1;
		}
		us->senders = xreallocarray(us->senders, us->nsenders + 1, sizeof(char *));
		us->senders[us->nsenders++] = xstrdup(tok);
	}
	if (us->nsenders == 0) {
		snprintf(err, errlen, "%s:%d: user %s has no allowed senders (use * for any)", path,
		    lineno, line);
		return -1;
	}
	return 0;
}

struct users *users_load(const char *path, char *err, size_t errlen)
{
	struct users *u;
	struct stat st;
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int lineno = 0, fd;
	FILE *f;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1 || fstat(fd, &st) == -1) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		if (fd != -1)
			close(fd);
		return NULL;
	}
	if (st.st_mode & (S_IROTH | S_IWOTH | S_IWGRP)) {
		snprintf(err, errlen,
		    "%s: readable or writable by other users (mode %03o): run chmod 600 %s (or 640 "
		    "with a group only sesrelay is in)",
		    path, (unsigned)(st.st_mode & 0777), path);
		close(fd);
		return NULL;
	}
	if ((f = fdopen(fd, "r")) == NULL) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		close(fd);
		return NULL;
	}
	u = xcalloc(1, sizeof(*u));
	while ((n = getline(&line, &cap, f)) != -1) {
		lineno++;
		if (n > USERS_LINE_MAX) {
			snprintf(err, errlen, "%s:%d: line longer than %d bytes", path, lineno,
			    USERS_LINE_MAX);
			goto fail;
		}
		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' '))
			line[--n] = '\0';
		char *p = line;
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '\0' || *p == '#')
			continue;
		if (parse_line(u, p, path, lineno, err, errlen) == -1)
			goto fail;
	}
	if (line) {
		OPENSSL_cleanse(line, cap);
		free(line);
	}
	fclose(f);
	return u;
fail:
	OPENSSL_cleanse(line, cap);
	free(line);
	fclose(f);
	users_free(u);
	return NULL;
}

size_t users_count(const struct users *u)
{
	return u ? u->n : 0;
}

const struct user *users_find(const struct users *u, const char *name)
{
	size_t i;

	if (u == NULL)
		return NULL;
	for (i = 0; i < u->n; i++)
		if (strcmp(u->v[i].name, name) == 0)
			return &u->v[i];
	return NULL;
}

const char *user_name(const struct user *u)
{
	return u->name;
}

const struct user *users_at(const struct users *u, size_t i)
{
	return u && i < u->n ? &u->v[i] : NULL;
}

size_t user_sender_count(const struct user *u)
{
	return u->nsenders;
}

const char *user_sender_at(const struct user *u, size_t i)
{
	return i < u->nsenders ? u->senders[i] : NULL;
}

int users_verify_hash(const char *hash, const char *password)
{
	struct crypt_data *cd = xcalloc(1, sizeof(*cd));
	const char *h = hash ? hash : dummy_hash;
	const char *r;
	int ok = 0;

	r = crypt_r(password, h, cd);
	if (r != NULL && r[0] != '*' && strlen(r) == strlen(h))
		ok = CRYPTO_memcmp(r, h, strlen(h)) == 0;
	OPENSSL_cleanse(cd, sizeof(*cd));
	free(cd);
	return ok && hash != NULL;
}

int users_verify(const struct user *u, const char *password)
{
	return users_verify_hash(u ? u->hash : NULL, password);
}

const char *user_hash(const struct user *u)
{
	return u->hash;
}

int users_sender_allowed(const struct user *u, const char *addr)
{
	const char *at = strrchr(addr, '@');
	size_t i;

	for (i = 0; i < u->nsenders; i++) {
		const char *s = u->senders[i];
		if (strcmp(s, "*") == 0)
			return 1;
		if (at == NULL)
			continue; /* <> and bare names only match "*" */
		if (s[0] == '@' && strcasecmp(s + 1, at + 1) == 0)
			return 1;
		if (strcasecmp(s, addr) == 0)
			return 1;
	}
	return 0;
}

char *users_hash(const char *password)
{
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data *cd;
	char *out = NULL;

	if (crypt_gensalt_rn("$y$", 0, NULL, 0, salt, sizeof(salt)) == NULL)
		return NULL;
	cd = xcalloc(1, sizeof(*cd));
	const char *r = crypt_r(password, salt, cd);
	if (r != NULL && r[0] == '$')
		out = xstrdup(r);
	OPENSSL_cleanse(cd, sizeof(*cd));
	free(cd);
	return out;
}

/* Read a password: from a terminal without echo (twice), else one line of stdin. */
static char *read_password(void)
{
	char *a = NULL, *b = NULL;
	size_t ca = 0, cb = 0;
	struct termios old, quiet;
	int tty = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &old) == 0;
	ssize_t n;

	if (tty) {
		quiet = old;
		quiet.c_lflag &= (tcflag_t)~ECHO;
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
		fputs("Password: ", stderr);
	}
	n = getline(&a, &ca, stdin);
	if (tty) {
		fputs("\nAgain: ", stderr);
		ssize_t m = getline(&b, &cb, stdin);
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
		fputs("\n", stderr);
		if (m < 0 || n < 0 || strcmp(a, b) != 0) {
			fputs("sesrelay: the passwords differ\n", stderr);
			free(a);
			free(b);
			return NULL;
		}
		OPENSSL_cleanse(b, cb);
		free(b);
	}
	if (n <= 0) {
		free(a);
		return NULL;
	}
	while (n > 0 && (a[n - 1] == '\n' || a[n - 1] == '\r'))
		a[--n] = '\0';
	if (n == 0) {
		fputs("sesrelay: empty password\n", stderr);
		free(a);
		return NULL;
	}
	return a;
}

int users_cli_passwd(int argc, char **argv)
{
	const char *user = argc > 2 ? argv[2] : NULL;
	char *pw, *hash;
	int i;

	if (user && (strchr(user, ':') || user[0] == '-' || *user == '\0')) {
		fprintf(stderr, "usage: sesrelay passwd [USER [SENDER...]]\n");
		return 2;
	}
	if (user && argc == 3 && strchr(user, '@') == NULL) {
		fprintf(stderr, "sesrelay: name the addresses %s may send as: sesrelay passwd %s "
				"ADDRESS|@DOMAIN|* ...\n",
		    user, user);
		return 2;
	}
	for (i = 3; i < argc; i++)
		if (!valid_sender(argv[i])) {
			fprintf(stderr, "sesrelay: \"%s\" is not an address, @domain or *\n", argv[i]);
			return 2;
		}
	if ((pw = read_password()) == NULL)
		return 1;
	hash = users_hash(pw);
	OPENSSL_cleanse(pw, strlen(pw));
	free(pw);
	if (hash == NULL) {
		fprintf(stderr, "sesrelay: cannot hash the password (libcrypt without yescrypt?)\n");
		return 1;
	}
	if (user == NULL) {
		printf("%s\n", hash);
	} else {
		printf("%s:%s:", user, hash);
		if (argc > 3)
			for (i = 3; i < argc; i++)
				printf("%s%s", i > 3 ? "," : "", argv[i]);
		else
			printf("%s", user); /* an address: it may send as itself */
		printf("\n");
	}
	free(hash);
	return 0;
}
