/*
 * ses_identity.h - what SES will refuse, known before a client sends: whether
 * the account is in the sandbox, and which identities (addresses, domains)
 * it has verified.
 *
 * Owns: a background poll of GetAccount and ListEmailIdentities (every page)
 * on the loop, the set of verified identities it yields, and the two
 * lookups SMTP sessions make at MAIL and RCPT.  A lookup only reads memory:
 * nothing here ever makes a session wait for SES.
 *
 * Until the first poll succeeds, or when the IAM policy forbids the calls, or
 * after an hour of failed polls, nothing is refused: the relay then queues
 * what it is given and SES's own answer decides (a bounce).  A refusal
 * triggers an early re-poll (at most once a minute), so an identity verified
 * a moment ago is accepted soon after; SIGHUP re-polls at once.
 *
 * Must never: refuse on stale or partial data, log credentials.
 */
#ifndef SESRELAY_SES_IDENTITY_H
#define SESRELAY_SES_IDENTITY_H

#include <stddef.h>

struct conf;
struct event_base;
struct ses_creds;
struct ses_http;
struct ses_identity;

/* NULL (nothing is checked) when [ses] check_identities is off or no
 * endpoint/region is known.  http and creds must outlive it.  The first poll
 * starts from the loop. */
struct ses_identity *ses_identity_new(struct event_base *base, struct ses_http *http,
                                      struct ses_creds *creds, const struct conf *conf);
void ses_identity_free(struct ses_identity *id);
/* Poll now (SIGHUP). */
void ses_identity_refresh(struct ses_identity *id);

/*
 * 0 when SES would take addr as the sender (MAIL FROM), 1 when it is known
 * that it would not: neither the address nor its domain (or a parent domain)
 * is verified for sending.  The null sender "" is always accepted.  On 1, why
 * gets the words for the reply.
 */
int ses_identity_refuse_sender(struct ses_identity *id, const char *addr, char *why,
                               size_t whylen);
/* 1 when the identities are known (something could be refused now). */
int ses_identity_active(const struct ses_identity *id);
/* 1 when the account is in the sandbox and addr is not a verified identity
 * (nor in a verified domain, nor SES's mailbox simulator). */
int ses_identity_refuse_rcpt(struct ses_identity *id, const char *addr, char *why,
                             size_t whylen);

/* --- pure parts, exported for tests/unit/test_ses_identity.c ------------------- */

#define SES_IDENTITY_MAX 20000 /* identities kept; beyond: unknown (nothing refused) */
#define SES_IDENTITY_NAME_MAX 320

/* A verified-identity set under construction or in use. */
struct ses_identity_entry {
	char *name;            /* lowercase address or domain */
	int sending;           /* 1: may be used as a sender (SendingEnabled) */
};
struct ses_identity_set {
	struct ses_identity_entry *e; /* sorted by name after ses_identity_set_seal() */
	size_t n, cap;
};

/*
 * Add the verified identities of one ListEmailIdentities page to set and copy
 * its NextToken into next ("" when it is the last page).  Entries that are not
 * verified (VerificationStatus other than SUCCESS) are skipped.  0, or -1 when
 * the body is not such a page or the set would exceed SES_IDENTITY_MAX.
 */
int ses_identity_parse_page(const char *body, size_t len, struct ses_identity_set *set,
                            char *next, size_t nextlen);
void ses_identity_set_seal(struct ses_identity_set *set);
void ses_identity_set_clear(struct ses_identity_set *set);
/* addr (or its domain, or a parent of it) in a sealed set; sending: only
 * identities enabled for sending count.  1 found, 0 not. */
int ses_identity_set_covers(const struct ses_identity_set *set, const char *addr, int sending);

#endif
