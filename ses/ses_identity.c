/*
 * ses_identity.c - the sandbox state and verified identities of the SES
 * account, polled in the background, for fail-fast refusals at MAIL and RCPT.
 *
 * One poll: GetAccount (ProductionAccessEnabled), then every page of
 * ListEmailIdentities (GET /v2/email/identities?PageSize=1000[&NextToken=]).
 * A poll that completes replaces the set in one step; a poll that fails keeps
 * the previous one, for at most STALE_AFTER seconds.  See ses_identity.h for
 * the promises.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <event2/event.h>

#include "conf/conf.h"
#include "relay/log.h"
#include "relay/util.h"
#include "ses/ses_api.h"
#include "ses/ses_creds.h"
#include "ses/ses_http.h"
#include "ses/ses_identity.h"
#include "ses/sigv4.h"

#define POLL_INTERVAL   300   /* seconds between successful polls */
#define POLL_RETRY      60    /* after a transient failure */
#define POLL_DENIED     600   /* after the IAM policy refused */
#define POLL_NO_CREDS   5     /* credentials not there yet */
#define EARLY_MIN       60    /* a refusal re-polls if the last poll is older */
#define STALE_AFTER     3600  /* failed polls this long: forget what we knew */
#define CALL_TIMEOUT_MS 20000
#define PAGE_MAX        (4 * 1024 * 1024)
#define TOKEN_MAX       2048
#define PAGES_MAX       (SES_IDENTITY_MAX / 1000 + 2)
#define ACCOUNT_PATH    "/v2/email/account"
#define LIST_PATH       "/v2/email/identities"
/* SES's mailbox simulator: always a valid recipient, sandbox or not */
#define SIMULATOR_DOMAIN "simulator.amazonses.com"

struct ses_identity {
	struct event_base *base;
	struct ses_http *http;
	struct ses_creds *creds;
	char *region, *base_url, *host;
	struct event *timer;
	struct ses_http_call *call;

	/* what is known (in use) */
	int known;                  /* 1: set and sandbox below are good */
	int sandbox;
	struct ses_identity_set set;
	time_t last_ok;             /* when the last poll completed */

	/* the poll under way */
	time_t poll_started;
	int pending_sandbox;
	struct ses_identity_set pending;
	char next_token[TOKEN_MAX];
	int pages;
	int warned;                 /* a failure was logged; quiet until success */
};

/* --- the set --------------------------------------------------------------- */

static int entry_cmp(const void *a, const void *b)
{
	return strcmp(((const struct ses_identity_entry *)a)->name,
	              ((const struct ses_identity_entry *)b)->name);
}

void ses_identity_set_clear(struct ses_identity_set *set)
{
	size_t i;

	for (i = 0; i < set->n; i++)
		free(set->e[i].name);
	free(set->e);
	memset(set, 0, sizeof(*set));
}

static int set_add(struct ses_identity_set *set, const char *name, int sending)
{
	char *s;
	size_t i;

	if (set->n >= SES_IDENTITY_MAX)
		return -1;
	if (set->n == set->cap) {
		set->cap = set->cap ? set->cap * 2 : 64;
		set->e = xreallocarray(set->e, set->cap, sizeof(*set->e));
	}
	s = xstrdup(name);
	for (i = 0; s[i]; i++)
		s[i] = (char)tolower((unsigned char)s[i]);
	set->e[set->n].name = s;
	set->e[set->n].sending = sending != 0;
	set->n++;
	return 0;
}

void ses_identity_set_seal(struct ses_identity_set *set)
{
	if (set->n > 1)
		qsort(set->e, set->n, sizeof(*set->e), entry_cmp);
}

/* Index of name in a sealed set, or -1 (a name listed twice: either). */
static long set_find(const struct ses_identity_set *set, const char *name, int sending)
{
	size_t lo = 0, hi = set->n, k;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(name, set->e[mid].name);

		if (c == 0) {
			/* duplicates sit together: any one enabled for sending will do */
			for (k = mid; k > 0 && strcmp(set->e[k - 1].name, name) == 0; k--)
				;
			for (; k < set->n && strcmp(set->e[k].name, name) == 0; k++)
				if (!sending || set->e[k].sending)
					return (long)k;
			return -1;
		}
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return -1;
}

int ses_identity_set_covers(const struct ses_identity_set *set, const char *addr, int sending)
{
	char low[SES_IDENTITY_NAME_MAX + 1];
	const char *d;
	size_t i, n = strlen(addr);

	if (n == 0 || n > SES_IDENTITY_NAME_MAX)
		return 0;
	for (i = 0; i <= n; i++)
		low[i] = (char)tolower((unsigned char)addr[i]);
	if (set_find(set, low, sending) >= 0)
		return 1;
	/* the domain, then each parent: a verified domain covers its subdomains */
	if ((d = strrchr(low, '@')) == NULL)
		return 0;
	for (d++; *d; ) {
		if (set_find(set, d, sending) >= 0)
			return 1;
		if ((d = strchr(d, '.')) == NULL || strchr(d + 1, '.') == NULL)
			break; /* never a bare top-level domain */
		d++;
	}
	return 0;
}

int ses_identity_parse_page(const char *body, size_t len, struct ses_identity_set *set,
                            char *next, size_t nextlen)
{
	char name[SES_IDENTITY_NAME_MAX + 1], status[32];
	const char *el;
	size_t pos = 0, ellen;
	int r, sending;

	next[0] = '\0';
	while ((r = ses_api_json_array_next(body, len, "EmailIdentities", &pos, &el, &ellen)) == 1) {
		if (ses_api_json_string(el, ellen, "IdentityName", name, sizeof(name)) == -1 ||
		    strlen(name) >= SES_IDENTITY_NAME_MAX || name[0] == '\0')
			continue; /* nameless or over-long: cannot be one of ours */
		if (ses_api_json_string(el, ellen, "VerificationStatus", status, sizeof(status)) == 0) {
			if (strcmp(status, "SUCCESS") != 0)
				continue;
		} else if (ses_api_json_bool(el, ellen, "SendingEnabled", &sending) == -1 || !sending)
			continue; /* an old answer without the status: sending enabled means verified */
		if (ses_api_json_bool(el, ellen, "SendingEnabled", &sending) == -1)
			sending = 1;
		if (set_add(set, name, sending) == -1)
			return -1;
	}
	if (r == -1)
		return -1;
	if (ses_api_json_string(body, len, "NextToken", next, nextlen) == -1)
		next[0] = '\0';
	return 0;
}

/* --- polling ------------------------------------------------------------------ */

static void poll_start(evutil_socket_t fd, short what, void *arg);

static void schedule(struct ses_identity *id, int seconds)
{
	struct timeval tv = {seconds, 0};

	event_add(id->timer, &tv);
}

static void send_get(struct ses_identity *id, const char *path_query, ses_http_done done)
{
	const struct sigv4_credentials *cr = ses_creds_get(id->creds);
	struct ses_http_request req;
	struct curl_slist *headers;
	const char *err = NULL;
	char *url;

	if (cr == NULL) {
		schedule(id, POLL_NO_CREDS);
		return;
	}
	headers = ses_api_sign(id->host, id->region, "GET", path_query, NULL, SIGV4_EMPTY_SHA256,
	                       cr, &err);
	if (headers == NULL) {
		if (!id->warned)
			log_warnx("SES identities: cannot sign the request: %s", err);
		id->warned = 1;
		schedule(id, POLL_DENIED);
		return;
	}
	url = xasprintf("%s%s", id->base_url, path_query);
	memset(&req, 0, sizeof(req));
	req.method = "GET";
	req.url = url;
	req.headers = headers;
	req.timeout_ms = CALL_TIMEOUT_MS;
	req.max_response = PAGE_MAX;
	req.done = done;
	req.arg = id;
	id->call = ses_http_send(id->http, &req);
	free(url);
}

/* A poll failed: keep what we knew unless it is too old; try again later. */
static void poll_failed(struct ses_identity *id, const struct ses_http_response *r,
                        const char *what)
{
	struct ses_api_reply rep;
	char text[DELIVERY_TEXT_MAX];
	enum delivery_status st;
	time_t now = time(NULL);

	ses_identity_set_clear(&id->pending);
	st = r ? ses_api_outcome(r, &rep, text, sizeof(text)) : DELIVERY_BOUNCE;
	if (r == NULL)
		snprintf(text, sizeof(text), "malformed answer");
	if (st == DELIVERY_OPERATOR) {
		if (!id->warned)
			log_warnx("SES identities: %s failed (%s): unverified senders and sandbox "
			          "recipients are not refused at SMTP time; allow ses:GetAccount and "
			          "ses:ListEmailIdentities in the IAM policy, or set [ses] "
			          "check_identities = no",
			          what, text);
		schedule(id, POLL_DENIED);
	} else {
		if (!id->warned)
			log_warnx("SES identities: %s failed (%s): retrying in %ds", what, text,
			          POLL_RETRY);
		schedule(id, POLL_RETRY);
	}
	id->warned = 1;
	if (id->known && now - id->last_ok > STALE_AFTER) {
		log_warnx("SES identities: no answer for over an hour: refusing nothing until "
		          "SES answers again");
		id->known = 0;
		ses_identity_set_clear(&id->set);
	}
}

static void list_next(struct ses_identity *id);

static void list_done(void *arg, const struct ses_http_response *r)
{
	struct ses_identity *id = arg;
	int changed;

	id->call = NULL;
	if (!r->ok || r->status != 200) {
		poll_failed(id, r, "ListEmailIdentities");
		return;
	}
	if (ses_identity_parse_page(r->body, r->body_len, &id->pending, id->next_token,
	                            sizeof(id->next_token)) == -1 || r->truncated) {
		if (id->pending.n >= SES_IDENTITY_MAX) {
			/* too many to keep: behave as if unknown, say so once */
			if (!id->warned)
				log_warnx("SES identities: more than %d verified identities: not "
				          "checked at SMTP time",
				          SES_IDENTITY_MAX);
			id->warned = 1;
			ses_identity_set_clear(&id->pending);
			ses_identity_set_clear(&id->set);
			id->known = 0;
			schedule(id, POLL_INTERVAL);
			return;
		}
		poll_failed(id, NULL, "ListEmailIdentities");
		return;
	}
	if (id->next_token[0] != '\0') {
		if (++id->pages >= PAGES_MAX) {
			poll_failed(id, NULL, "ListEmailIdentities (endless pages)");
			return;
		}
		list_next(id);
		return;
	}
	/* complete: swap in */
	ses_identity_set_seal(&id->pending);
	changed = !id->known || id->sandbox != id->pending_sandbox || id->set.n != id->pending.n;
	ses_identity_set_clear(&id->set);
	id->set = id->pending;
	memset(&id->pending, 0, sizeof(id->pending));
	id->sandbox = id->pending_sandbox;
	id->known = 1;
	id->last_ok = time(NULL);
	if (changed || id->warned)
		log_info("SES identities: account in %s, %zu verified identit%s: refusing %s at "
		         "SMTP time",
		         id->sandbox ? "the SANDBOX" : "production", id->set.n,
		         id->set.n == 1 ? "y" : "ies",
		         id->sandbox ? "unverified senders and recipients" : "unverified senders");
	id->warned = 0;
	schedule(id, POLL_INTERVAL);
}

static void list_next(struct ses_identity *id)
{
	char *path, *tok = NULL;

	if (id->next_token[0] != '\0') {
		tok = sigv4_uri_encode(id->next_token, strlen(id->next_token), false);
		path = xasprintf("%s?NextToken=%s&PageSize=1000", LIST_PATH, tok);
	} else
		path = xasprintf("%s?PageSize=1000", LIST_PATH);
	send_get(id, path, list_done);
	free(path);
	free(tok);
}

static void account_done(void *arg, const struct ses_http_response *r)
{
	struct ses_identity *id = arg;
	struct ses_api_account a;

	id->call = NULL;
	if (!r->ok || r->status != 200) {
		poll_failed(id, r, "GetAccount");
		return;
	}
	if (ses_api_parse_account(r->body, r->body_len, &a) == -1) {
		poll_failed(id, NULL, "GetAccount");
		return;
	}
	id->pending_sandbox = !a.production;
	id->next_token[0] = '\0';
	id->pages = 0;
	ses_identity_set_clear(&id->pending);
	list_next(id);
}

static void poll_start(evutil_socket_t fd, short what, void *arg)
{
	struct ses_identity *id = arg;

	if (id->call)
		return; /* a poll is under way */
	id->poll_started = time(NULL);
	send_get(id, ACCOUNT_PATH, account_done);
}

void ses_identity_refresh(struct ses_identity *id)
{
	if (id && id->call == NULL)
		schedule(id, 0);
}

/* A refusal: make sure we are not refusing on old news for long. */
static void refused(struct ses_identity *id)
{
	if (id->call == NULL && time(NULL) - id->poll_started >= EARLY_MIN)
		schedule(id, 0);
}

/* --- lookups ------------------------------------------------------------------ */

int ses_identity_active(const struct ses_identity *id)
{
	return id != NULL && id->known;
}

int ses_identity_refuse_sender(struct ses_identity *id, const char *addr, char *why,
                               size_t whylen)
{
	if (id == NULL || !id->known || addr[0] == '\0')
		return 0;
	if (ses_identity_set_covers(&id->set, addr, 1))
		return 0;
	snprintf(why, whylen,
	         "%s is not a verified SES identity in %s (verify the address or its domain in "
	         "SES)",
	         addr, id->region);
	refused(id);
	return 1;
}

int ses_identity_refuse_rcpt(struct ses_identity *id, const char *addr, char *why,
                             size_t whylen)
{
	const char *at;

	if (id == NULL || !id->known || !id->sandbox)
		return 0;
	if ((at = strrchr(addr, '@')) != NULL && strcasecmp(at + 1, SIMULATOR_DOMAIN) == 0)
		return 0;
	if (ses_identity_set_covers(&id->set, addr, 0))
		return 0;
	snprintf(why, whylen,
	         "the SES account is in the sandbox (%s) and %s is not a verified identity "
	         "(verify it in SES, or request production access)",
	         id->region, addr);
	refused(id);
	return 1;
}

/* --- life cycle --------------------------------------------------------------- */

void ses_identity_free(struct ses_identity *id)
{
	if (id == NULL)
		return;
	if (id->call)
		ses_http_cancel(id->call);
	if (id->timer)
		event_free(id->timer);
	ses_identity_set_clear(&id->set);
	ses_identity_set_clear(&id->pending);
	free(id->region);
	free(id->base_url);
	free(id->host);
	free(id);
}

struct ses_identity *ses_identity_new(struct event_base *base, struct ses_http *http,
                                      struct ses_creds *creds, const struct conf *conf)
{
	struct ses_identity *id;
	char *def = NULL;
	int bad;

	if (!conf->check_identities || conf->region == NULL || *conf->region == '\0')
		return NULL;
	id = xcalloc(1, sizeof(*id));
	id->base = base;
	id->http = http;
	id->creds = creds;
	id->region = xstrdup(conf->region);
	if (conf->endpoint == NULL || *conf->endpoint == '\0')
		def = xasprintf("https://email.%s.amazonaws.com", conf->region);
	bad = ses_api_parse_endpoint(def ? def : conf->endpoint, &id->base_url, &id->host);
	free(def);
	if (bad == -1) {
		ses_identity_free(id);
		return NULL; /* the transport says why */
	}
	if ((id->timer = evtimer_new(base, poll_start, id)) == NULL)
		fatalx("evtimer_new failed");
	schedule(id, 0);
	return id;
}
