/*
 * users.h - the users file: who may AUTH, with which password, and which
 * sender addresses each may use.
 *
 * Format, one user per line ("#" comments and blank lines ignored):
 *     name:hash:allowed-senders
 * hash is a crypt(3) string - yescrypt ("$y$...", what `sesrelay passwd`
 * writes and Debian uses for /etc/shadow) or SHA-512-crypt ("$6$...");
 * allowed-senders is a comma list of addresses, "@domain" or "*".
 * Verifying a password is deliberately slow: call users_verify() off the
 * event loop (relay/workq.c).
 */
#ifndef SESRELAY_USERS_H
#define SESRELAY_USERS_H

#include <stddef.h>

struct users;
struct user;

/* NULL with "PATH:LINE: what" in err.  Refuses a file that others can read. */
struct users *users_load(const char *path, char *err, size_t errlen);
void users_free(struct users *u);
size_t users_count(const struct users *u);
const struct user *users_find(const struct users *u, const char *name);
const char *user_name(const struct user *u);
/* 1 when password matches.  u may be NULL (unknown user): the same work is
 * done against a dummy hash so timing does not reveal which names exist. */
int users_verify(const struct user *u, const char *password);
/* The same, on a copy of the hash (NULL: unknown user), for worker threads. */
int users_verify_hash(const char *hash, const char *password);
const char *user_hash(const struct user *u);
/* 1 when addr (an address, "" for <>) is one the user may send as. */
int users_sender_allowed(const struct user *u, const char *addr);
/* Enumeration, in file order (for `sesrelay check`): the i-th user (i <
 * users_count), and the i-th of its allowed senders as written ("a@b", "@b", "*"). */
const struct user *users_at(const struct users *u, size_t i);
size_t user_sender_count(const struct user *u);
const char *user_sender_at(const struct user *u, size_t i);
/* A new yescrypt hash of password (caller frees), or NULL. */
char *users_hash(const char *password);
/* `sesrelay passwd [USER [SENDER...]]` */
int users_cli_passwd(int argc, char **argv);

#endif
