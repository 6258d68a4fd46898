/*
 * sqstool.c - one SQS operation through ses/sqs.c, for the integration tests
 * (tests/test_sqs_client.py).  Not installed, not part of sesrelay.
 *
 * It runs the relay's own pieces on an event loop - ses_http, the shared
 * credentials chain (ses_creds, so AWS_ACCESS_KEY_ID & co. from the
 * environment), the SQS client - does one command and exits with the outcome
 * class as its status, so a test can tell a signature error from a throttled
 * call without parsing text.
 *
 *   sqstool -q QUEUE_URL [-e ENDPOINT] [-r REGION] [-t SECONDS]
 *           [-n MAX] [-w WAIT] [-v VISIBILITY] [-p] COMMAND [ARGS]
 *
 *   receive        one ReceiveMessage (-n max messages, default 10; -w long
 *                  poll seconds, default 0; -v visibility timeout, default
 *                  the queue's); one JSON line per message on stdout:
 *                  {"id":..,"handle":..,"receive_count":N,"oversize":0|1,
 *                  "body":..}, with -p also "receipt": what
 *                  sqs_parse_receipt() made of the body (see parse).
 *                  "messages=N" on stderr.
 *   delete HANDLE  one DeleteMessage
 *   parse FILE     no I/O: sqs_parse_receipt() of FILE ("-": stdin), as
 *                  {"kind":..,"why":..,"bucket":..,"key":..,"recipients":[..],
 *                  "spam":..,"virus":..,"message_id":..,"source":..,"sns":0|1}
 *                  or {"error":..} when refused (exit 4).
 *
 * Exit: 0 ok, 1 transient, 2 operator, 3 rejected, 4 a notification refused
 * by parse, 64 usage, 70 the -t deadline (default 120 s) passed.  On failure
 * the last stderr line is "sqstool: CLASS [CODE]: TEXT".
 *
 * Must never print a secret: only what sqs_result carries, which has none.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "relay/log.h"
#include "ses/ses_api.h"
#include "ses/ses_creds.h"
#include "ses/ses_http.h"
#include "ses/sqs.h"

#define EXIT_REFUSED  4
#define EXIT_USAGE    64
#define EXIT_DEADLINE 70
#define PARSE_MAX     (4 * 1024 * 1024)

struct tool {
	struct event_base *base;
	struct ses_http *http;
	struct ses_creds *creds;
	struct sqs *q;
	const char *cmd;
	char **args;
	int nargs;
	unsigned max, wait;
	int visibility;
	int parse;
	int status;
};

static void usage(void)
{
	fprintf(stderr, "usage: sqstool -q QUEUE_URL [-e ENDPOINT] [-r REGION] [-t SECONDS]\n"
	                "               [-n MAX] [-w WAIT] [-v VISIBILITY] [-p]\n"
	                "               receive | delete HANDLE | parse FILE\n");
	exit(EXIT_USAGE);
}

static void finish(struct tool *t, int status)
{
	t->status = status;
	event_base_loopbreak(t->base);
}

/* The exit status of an outcome, with the failure line on stderr. */
static int outcome(const struct sqs_result *r)
{
	if (r->cls == SQS_OK)
		return 0;
	fprintf(stderr, "sqstool: %s%s%s: %s\n", sqs_class_name(r->cls), r->code[0] ? " " : "",
	        r->code, r->text);
	return (int)r->cls; /* SQS_TRANSIENT 1, SQS_OPERATOR 2, SQS_REJECTED 3 */
}

static void json_member(struct evbuffer *out, const char *name, const char *value, int comma)
{
	evbuffer_add_printf(out, "%s\"%s\":\"", comma ? "," : "", name);
	ses_api_json_escape(out, value);
	evbuffer_add_printf(out, "\"");
}

/* What sqs_parse_receipt() says of body, as one JSON object; its return. */
static int receipt_json(struct evbuffer *out, const char *body, size_t len)
{
	struct sqs_receipt r;
	char err[256];
	size_t i;

	if (sqs_parse_receipt(body, len, &r, err, sizeof(err)) == -1) {
		evbuffer_add_printf(out, "{");
		json_member(out, "error", err, 0);
		evbuffer_add_printf(out, "}");
		sqs_receipt_free(&r);
		return -1;
	}
	evbuffer_add_printf(out, "{");
	json_member(out, "kind", sqs_receipt_kind_name(r.kind), 0);
	json_member(out, "why", r.why, 1);
	json_member(out, "bucket", r.bucket, 1);
	json_member(out, "key", r.object_key, 1);
	evbuffer_add_printf(out, ",\"recipients\":[");
	for (i = 0; i < r.nrecipients; i++) {
		evbuffer_add_printf(out, "%s\"", i ? "," : "");
		ses_api_json_escape(out, r.recipients[i]);
		evbuffer_add_printf(out, "\"");
	}
	evbuffer_add_printf(out, "]");
	json_member(out, "spam", r.spam_verdict, 1);
	json_member(out, "virus", r.virus_verdict, 1);
	json_member(out, "message_id", r.mail_message_id, 1);
	json_member(out, "source", r.source, 1);
	evbuffer_add_printf(out, ",\"sns\":%d}", r.sns);
	sqs_receipt_free(&r);
	return 0;
}

static void print_buffer(struct evbuffer *out)
{
	if (evbuffer_get_length(out) > 0)
		fwrite(evbuffer_pullup(out, -1), 1, evbuffer_get_length(out), stdout);
	fflush(stdout);
	evbuffer_free(out);
}

static void receive_done(void *arg, const struct sqs_result *r)
{
	struct tool *t = arg;
	struct evbuffer *out;
	size_t i;

	if (r->cls != SQS_OK) {
		finish(t, outcome(r));
		return;
	}
	out = evbuffer_new();
	for (i = 0; i < r->nmessages; i++) {
		const struct sqs_message *m = &r->messages[i];

		evbuffer_add_printf(out, "{");
		json_member(out, "id", m->message_id, 0);
		json_member(out, "handle", m->receipt_handle, 1);
		evbuffer_add_printf(out, ",\"receive_count\":%u,\"oversize\":%d", m->receive_count,
		                    m->oversize);
		if (m->body) {
			json_member(out, "body", m->body, 1);
			if (t->parse) {
				evbuffer_add_printf(out, ",\"receipt\":");
				receipt_json(out, m->body, m->body_len);
			}
		}
		evbuffer_add_printf(out, "}\n");
	}
	print_buffer(out);
	fprintf(stderr, "messages=%zu\n%s\n", r->nmessages, r->text);
	finish(t, 0);
}

static void plain_done(void *arg, const struct sqs_result *r)
{
	struct tool *t = arg;

	if (r->cls == SQS_OK)
		fprintf(stderr, "%s\n", r->text);
	finish(t, outcome(r));
}

static void start(struct tool *t)
{
	if (strcmp(t->cmd, "receive") == 0 && t->nargs == 0)
		sqs_receive(t->q, t->max, t->wait, t->visibility, receive_done, t);
	else if (strcmp(t->cmd, "delete") == 0 && t->nargs == 1)
		sqs_delete(t->q, t->args[0], plain_done, t);
	else
		usage();
}

static void on_creds(void *arg, int ok, const char *err)
{
	struct tool *t = arg;

	if (!ok) {
		fprintf(stderr, "sqstool: operator: no credentials: %s\n", err);
		finish(t, (int)SQS_OPERATOR);
		return;
	}
	start(t);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct tool *t = arg;

	fprintf(stderr, "sqstool: deadline passed\n");
	finish(t, EXIT_DEADLINE);
}

/* The parse command: no client, no loop. */
static int parse_file(const char *path)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
	char *buf = malloc(PARSE_MAX);
	struct evbuffer *out = evbuffer_new();
	size_t n;
	int rc;

	if (f == NULL || buf == NULL) {
		perror(path);
		exit(EXIT_USAGE);
	}
	n = fread(buf, 1, PARSE_MAX, f);
	if (f != stdin)
		fclose(f);
	rc = receipt_json(out, buf, n);
	evbuffer_add_printf(out, "\n");
	print_buffer(out);
	free(buf);
	return rc == 0 ? 0 : EXIT_REFUSED;
}

int main(int argc, char **argv)
{
	struct tool t;
	struct sqs_config cfg;
	struct event *deadline;
	struct timeval tv = {120, 0};
	char err[256];
	int ch;

	memset(&t, 0, sizeof(t));
	memset(&cfg, 0, sizeof(cfg));
	t.max = 10;
	t.visibility = -1;
	cfg.region = getenv("AWS_REGION");
	if (cfg.region == NULL || *cfg.region == '\0')
		cfg.region = getenv("AWS_DEFAULT_REGION");
	while ((ch = getopt(argc, argv, "e:n:pq:r:t:v:w:")) != -1) {
		switch (ch) {
		case 'e':
			cfg.endpoint = optarg;
			break;
		case 'n':
			t.max = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'p':
			t.parse = 1;
			break;
		case 'q':
			cfg.queue_url = optarg;
			break;
		case 'r':
			cfg.region = optarg;
			break;
		case 't':
			tv.tv_sec = strtol(optarg, NULL, 10);
			break;
		case 'v':
			t.visibility = (int)strtol(optarg, NULL, 10);
			break;
		case 'w':
			t.wait = (unsigned)strtoul(optarg, NULL, 10);
			break;
		default:
			usage();
		}
	}
	if (optind >= argc)
		usage();
	t.cmd = argv[optind];
	t.args = argv + optind + 1;
	t.nargs = argc - optind - 1;
	if (strcmp(t.cmd, "parse") == 0) {
		if (t.nargs != 1)
			usage();
		return parse_file(t.args[0]);
	}
	if (cfg.queue_url == NULL)
		usage();
	log_init("sqstool", 0);
	if (getenv("SQSTOOL_DEBUG"))
		log_set_level(LOG_LEVEL_DEBUG);

	t.base = event_base_new();
	t.http = ses_http_new(t.base, NULL, 4);
	t.creds = ses_creds_new(t.base, t.http, NULL);
	if ((t.q = sqs_new(t.base, t.http, t.creds, &cfg, err, sizeof(err))) == NULL) {
		fprintf(stderr, "sqstool: %s\n", err);
		return EXIT_USAGE;
	}
	deadline = evtimer_new(t.base, on_deadline, &t);
	evtimer_add(deadline, &tv);
	ses_creds_start(t.creds, on_creds, &t);
	event_base_dispatch(t.base);
	event_free(deadline);
	sqs_free(t.q);
	ses_creds_free(t.creds);
	ses_http_free(t.http);
	event_base_free(t.base);
	return t.status;
}
