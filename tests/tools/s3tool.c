/*
 * s3tool.c - one S3 operation through ses/s3.c, for the integration tests
 * (tests/test_s3_client.py).  Not installed, not part of sesrelay.
 *
 * It runs the relay's own pieces on an event loop - ses_http, the shared
 * credentials chain (ses_creds, so AWS_ACCESS_KEY_ID & co. from the
 * environment), the S3 client - does one command and exits with the outcome
 * class as its status, so a test can tell a signature error from a missing
 * key without parsing text.
 *
 *   s3tool -b BUCKET [-e ENDPOINT] [-r REGION] [-n PAGE] [-t SECONDS]
 *          [-a BYTES] [-H 'Name: value'] [-m] COMMAND [ARGS]
 *
 *   -m prints "vmhwm_kib=N" on stderr at the end: the peak resident size of
 *   this program's own address space (/proc/self/status VmHWM, which exec
 *   resets - unlike ru_maxrss, which keeps the forking parent's).
 *
 *   list [PREFIX]    every key under PREFIX, all pages, as JSON lines
 *                    {"key":"..","etag":"..","size":N}; "pages=N keys=N" on stderr
 *   get KEY          the object to stdout; "etag=E bytes=N" on stderr.  With
 *                    -a BYTES the sink refuses the data after that many bytes.
 *   delete KEY
 *   copy SRC DST     within the bucket
 *   probe [PREFIX]   ListObjectsV2 max-keys=1
 *   sign METHOD KEY|- [QUERY]
 *                    no I/O: the URL and headers s3.c would send at the time
 *                    $S3TOOL_TIME (seconds since the epoch), with the keys in
 *                    AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN;
 *                    -H adds a signed header.  For the botocore cross-check.
 *   sign-list [PREFIX [TOKEN]]   the same for s3_list()'s request (-n PAGE)
 *   sign-copy SRC DST            the same for s3_copy()'s request
 *
 * Exit: 0 ok, 1 transient, 2 operator, 3 not-found, 4 rejected, 5 aborted,
 * 64 usage, 70 the -t deadline (default 120 s) passed.  On failure the last
 * stderr line is "s3tool: CLASS [CODE]: TEXT".
 *
 * Must never print a secret: only what s3_result carries, which has none (the
 * sign command prints the Authorization header, which is not a secret, but
 * also the session token header when one is set - test tokens only).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include <curl/curl.h>

#include "relay/log.h"
#include "ses/s3.h"
#include "ses/ses_api.h"
#include "ses/ses_creds.h"
#include "ses/ses_http.h"
#include "ses/sigv4.h"

#define EXIT_USAGE    64
#define EXIT_DEADLINE 70
#define MAX_EXTRA     4

struct tool {
	struct event_base *base;
	struct ses_http *http;
	struct ses_creds *creds;
	struct s3 *s3;
	const char *cmd;
	char **args;
	int nargs;
	unsigned page;
	unsigned long long abort_after;
	unsigned long long got;
	size_t pages, keys;
	int status;
};

/* VmHWM from /proc/self/status, in KiB; -1 when unknown. */
static long vmhwm_kib(void)
{
	char line[256];
	long kib = -1;
	FILE *f = fopen("/proc/self/status", "r");

	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmHWM: %ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

static void usage(void)
{
	fprintf(stderr,
	        "usage: s3tool -b BUCKET [-e ENDPOINT] [-r REGION] [-n PAGE] [-t SECONDS]\n"
	        "              [-a BYTES] [-H 'Name: value'] [-m] list [PREFIX] | get KEY |\n"
	        "              delete KEY | copy SRC DST | probe [PREFIX] |\n"
	        "              sign METHOD KEY|- [QUERY]\n");
	exit(EXIT_USAGE);
}

static void finish(struct tool *t, int status)
{
	t->status = status;
	event_base_loopbreak(t->base);
}

/* The exit status of an outcome, with the failure line on stderr. */
static int outcome(const struct s3_result *r)
{
	if (r->cls == S3_OK)
		return 0;
	fprintf(stderr, "s3tool: %s%s%s: %s\n", s3_class_name(r->cls), r->code[0] ? " " : "",
	        r->code, r->text);
	return (int)r->cls; /* S3_TRANSIENT 1 ... S3_ABORTED 5 */
}

static void print_page(struct tool *t, const struct s3_list *l)
{
	struct evbuffer *out = evbuffer_new();
	size_t i;

	for (i = 0; i < l->nobjects; i++) {
		evbuffer_add_printf(out, "{\"key\":\"");
		ses_api_json_escape(out, l->objects[i].key);
		evbuffer_add_printf(out, "\",\"etag\":\"");
		ses_api_json_escape(out, l->objects[i].etag);
		evbuffer_add_printf(out, "\",\"size\":%llu}\n",
		                    (unsigned long long)l->objects[i].size);
	}
	if (evbuffer_get_length(out) > 0)
		fwrite(evbuffer_pullup(out, -1), 1, evbuffer_get_length(out), stdout);
	evbuffer_free(out);
	t->keys += l->nobjects;
}

static void list_done(void *arg, const struct s3_result *r)
{
	struct tool *t = arg;

	if (r->cls != S3_OK) {
		finish(t, outcome(r));
		return;
	}
	t->pages++;
	print_page(t, r->list);
	if (r->list->truncated) {
		/* s3_list() encodes the token at once: the page may go after this */
		s3_list(t->s3, t->nargs > 0 ? t->args[0] : NULL, r->list->next_token, t->page,
		        list_done, t);
		return;
	}
	fprintf(stderr, "pages=%zu keys=%zu\n", t->pages, t->keys);
	finish(t, 0);
}

static size_t get_sink(void *arg, const char *data, size_t len)
{
	struct tool *t = arg;

	if (t->abort_after && t->got + len > t->abort_after)
		return 0;
	if (fwrite(data, 1, len, stdout) != len)
		return 0;
	t->got += len;
	return len;
}

static void get_done(void *arg, const struct s3_result *r)
{
	struct tool *t = arg;

	if (fflush(stdout) != 0 && r->cls == S3_OK) {
		fprintf(stderr, "s3tool: cannot write stdout\n");
		finish(t, EXIT_USAGE);
		return;
	}
	if (r->cls == S3_OK)
		fprintf(stderr, "etag=%s bytes=%llu\n", r->etag, (unsigned long long)r->bytes);
	finish(t, outcome(r));
}

static void plain_done(void *arg, const struct s3_result *r)
{
	struct tool *t = arg;

	if (r->cls == S3_OK)
		fprintf(stderr, "%s%s%s\n", r->text, r->etag[0] ? " etag=" : "", r->etag);
	finish(t, outcome(r));
}

static void start(struct tool *t)
{
	const char *a0 = t->nargs > 0 ? t->args[0] : NULL;

	if (strcmp(t->cmd, "list") == 0 && t->nargs <= 1)
		s3_list(t->s3, a0, NULL, t->page, list_done, t);
	else if (strcmp(t->cmd, "get") == 0 && t->nargs == 1)
		s3_get(t->s3, a0, get_sink, t, get_done, t);
	else if (strcmp(t->cmd, "delete") == 0 && t->nargs == 1)
		s3_delete(t->s3, a0, plain_done, t);
	else if (strcmp(t->cmd, "copy") == 0 && t->nargs == 2)
		s3_copy(t->s3, a0, t->args[1], plain_done, t);
	else if (strcmp(t->cmd, "probe") == 0 && t->nargs <= 1)
		s3_probe(t->s3, a0, plain_done, t);
	else
		usage();
}

static void on_creds(void *arg, int ok, const char *err)
{
	struct tool *t = arg;

	if (!ok) {
		fprintf(stderr, "s3tool: operator: no credentials: %s\n", err);
		finish(t, (int)S3_OPERATOR);
		return;
	}
	start(t);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct tool *t = arg;

	fprintf(stderr, "s3tool: deadline passed\n");
	finish(t, EXIT_DEADLINE);
}

/* The sign commands: what would go on the wire, no I/O. */
static int sign_only(struct tool *t, struct sigv4_header *extra, size_t nextra)
{
	struct sigv4_credentials cr = {getenv("AWS_ACCESS_KEY_ID"), getenv("AWS_SECRET_ACCESS_KEY"),
	                               getenv("AWS_SESSION_TOKEN")};
	const char *when = getenv("S3TOOL_TIME"), *err = NULL, *method, *key;
	char **args = t->args, *url = NULL, *query = NULL, *source = NULL;
	struct curl_slist *h, *l;
	int nargs = t->nargs;

	if (when == NULL || cr.access_key_id == NULL || cr.secret_access_key == NULL)
		usage();
	if (strcmp(t->cmd, "sign-list") == 0 && nargs <= 2) {
		method = "GET";
		key = NULL;
		query =
		    s3_list_query(nargs > 0 ? args[0] : NULL, nargs > 1 ? args[1] : NULL, t->page);
	} else if (strcmp(t->cmd, "sign-copy") == 0 && nargs == 2 && nextra < MAX_EXTRA) {
		method = "PUT";
		key = args[1];
		source = s3_copy_source(t->s3, args[0]);
		extra[nextra++] = (struct sigv4_header){"x-amz-copy-source", source};
	} else if (strcmp(t->cmd, "sign") == 0 && nargs >= 2 && nargs <= 3) {
		method = args[0];
		key = strcmp(args[1], "-") == 0 ? NULL : args[1];
		query = nargs == 3 ? strdup(args[2]) : NULL;
	} else
		usage();
	h = s3_request_headers(t->s3, method, key, query, extra, nextra, &cr,
	                       (time_t)strtoll(when, NULL, 10), &url, &err);
	free(query);
	free(source);
	if (h == NULL) {
		fprintf(stderr, "s3tool: cannot sign: %s\n", err);
		return (int)S3_OPERATOR;
	}
	printf("URL %s\n", url);
	for (l = h; l; l = l->next)
		printf("%s\n", l->data);
	curl_slist_free_all(h);
	free(url);
	return 0;
}

int main(int argc, char **argv)
{
	struct tool t;
	struct s3_config cfg;
	struct sigv4_header extra[MAX_EXTRA];
	char *hv[MAX_EXTRA];
	size_t nextra = 0, i;
	struct event *deadline;
	struct timeval tv = {120, 0};
	char err[256];
	int ch, report_rss = 0;

	memset(&t, 0, sizeof(t));
	memset(&cfg, 0, sizeof(cfg));
	cfg.region = getenv("AWS_REGION");
	if (cfg.region == NULL || *cfg.region == '\0')
		cfg.region = getenv("AWS_DEFAULT_REGION");
	if (cfg.region == NULL || *cfg.region == '\0')
		cfg.region = "us-east-1";
	while ((ch = getopt(argc, argv, "a:b:e:H:mn:r:t:")) != -1) {
		switch (ch) {
		case 'a':
			t.abort_after = strtoull(optarg, NULL, 10);
			break;
		case 'b':
			cfg.bucket = optarg;
			break;
		case 'e':
			cfg.endpoint = optarg;
			break;
		case 'H': {
			char *colon = strchr(optarg, ':');
			if (colon == NULL || nextra == MAX_EXTRA)
				usage();
			hv[nextra] = strndup(optarg, (size_t)(colon - optarg));
			extra[nextra].name = hv[nextra];
			extra[nextra].value = colon[1] == ' ' ? colon + 2 : colon + 1;
			nextra++;
			break;
		}
		case 'm':
			report_rss = 1;
			break;
		case 'n':
			t.page = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'r':
			cfg.region = optarg;
			break;
		case 't':
			tv.tv_sec = strtol(optarg, NULL, 10);
			break;
		default:
			usage();
		}
	}
	if (optind >= argc || cfg.bucket == NULL)
		usage();
	t.cmd = argv[optind];
	t.args = argv + optind + 1;
	t.nargs = argc - optind - 1;
	log_init("s3tool", 0);
	if (getenv("S3TOOL_DEBUG"))
		log_set_level(LOG_LEVEL_DEBUG);

	t.base = event_base_new();
	t.http = ses_http_new(t.base, NULL, 4);
	t.creds = ses_creds_new(t.base, t.http, NULL);
	if ((t.s3 = s3_new(t.base, t.http, t.creds, &cfg, err, sizeof(err))) == NULL) {
		fprintf(stderr, "s3tool: %s\n", err);
		return EXIT_USAGE;
	}
	if (strncmp(t.cmd, "sign", 4) == 0) {
		t.status = sign_only(&t, extra, nextra);
	} else {
		deadline = evtimer_new(t.base, on_deadline, &t);
		evtimer_add(deadline, &tv);
		ses_creds_start(t.creds, on_creds, &t);
		event_base_dispatch(t.base);
		event_free(deadline);
	}
	if (report_rss)
		fprintf(stderr, "vmhwm_kib=%ld\n", vmhwm_kib());
	s3_free(t.s3);
	ses_creds_free(t.creds);
	ses_http_free(t.http);
	event_base_free(t.base);
	for (i = 0; i < nextra; i++)
		free(hv[i]);
	return t.status;
}
