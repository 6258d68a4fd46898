/*
 * test_sqs.c - the SQS client's pure parts, the SES receipt notification
 * reader, and the client's promises about callbacks, as scenarios.
 *
 * 1. Requests: the JSON bodies, and the signed headers checked against
 *    signatures botocore's SigV4Auth computed for service "sqs" (with and
 *    without a session token); queue URLs, regions and endpoints.
 * 2. ReceiveMessage answers: realistic ones (an SNS envelope as the body,
 *    its MD5OfBody checked), empty ones, and hostile ones refused whole.
 * 3. Error answers (JSON __type, x-amzn-ErrorType, query XML) and classes.
 * 4. Receipt notifications: an S3 action's notification in an SNS envelope
 *    and with raw delivery, SES's setup notification, SNS's subscription
 *    messages, other notification and action types, S3's own events, then
 *    hostile documents: missing fields, bad addresses, escapes that hide a
 *    NUL, huge arrays, deep nesting, cut documents.
 * 5. The client without a network: failures found up front are reported
 *    from the loop, never inside the call; cancel and free keep done() from
 *    running; sqs_free() from inside a done callback is safe.
 *
 * Test credentials only: the AWS documentation example keys.
 */
#include <strings.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>

#include "ses/ses_api.h"
#include "ses/ses_creds.h"
#include "ses/ses_http.h"
#include "ses/sigv4.h"
#include "ses/sqs.h"
#include "unit.h"

#define DOC_AKID   "AKIAIOSFODNN7EXAMPLE"
#define DOC_SECRET "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
#define DOC_TIME   1369353600 /* 20130524T000000Z */
#define QUEUE_URL  "https://sqs.us-east-1.amazonaws.com/123456789012/inbound"

static const struct sigv4_credentials DOC_CREDS = {DOC_AKID, DOC_SECRET, NULL};

/* The value of header NAME in l (case-insensitive), or NULL. */
static const char *slist_get(const struct curl_slist *l, const char *name)
{
	size_t n = strlen(name);

	for (; l; l = l->next)
		if (strncasecmp(l->data, name, n) == 0 && l->data[n] == ':')
			return l->data + n + 2;
	return NULL;
}

static char *evbuffer_take(struct evbuffer *b)
{
	size_t n = evbuffer_get_length(b);
	char *s = malloc(n + 1);

	evbuffer_remove(b, s, n);
	s[n] = '\0';
	evbuffer_free(b);
	return s;
}

/* inner as SNS delivers it to SQS: a JSON string inside the envelope. */
static char *sns_wrap(const char *type, const char *inner)
{
	struct evbuffer *b = evbuffer_new();

	evbuffer_add_printf(b,
	                    "{\n  \"Type\" : \"%s\",\n"
	                    "  \"MessageId\" : \"0d5d8b6e-5f4a-5d0e-8a3b-1c2d3e4f5a6b\",\n"
	                    "  \"TopicArn\" : \"arn:aws:sns:us-east-1:123456789012:ses-inbound\",\n"
	                    "  \"Subject\" : \"Amazon SES Email Receipt Notification\",\n"
	                    "  \"Message\" : \"",
	                    type);
	ses_api_json_escape(b, inner);
	evbuffer_add_printf(
	    b, "\",\n  \"Timestamp\" : \"2024-03-01T10:00:01.123Z\",\n"
	       "  \"SignatureVersion\" : \"1\",\n"
	       "  \"Signature\" : \"EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNK==\",\n"
	       "  \"SigningCertURL\" : \"https://sns.us-east-1.amazonaws.com/x.pem\",\n"
	       "  \"UnsubscribeURL\" : \"https://sns.us-east-1.amazonaws.com/?u=1\"\n}");
	return evbuffer_take(b);
}

/* --- 1. requests ---------------------------------------------------------------- */

static struct sqs *offline_client(struct event_base **base, struct ses_http **http,
                                  struct ses_creds **creds, const char *url, const char *region,
                                  const char *endpoint)
{
	struct sqs_config cfg = {url, region, endpoint, 0};
	char err[200];

	*base = event_base_new();
	*http = ses_http_new(*base, NULL, 2);
	*creds = ses_creds_new(*base, *http, NULL);
	return sqs_new(*base, *http, *creds, &cfg, err, sizeof(err));
}

static void offline_free(struct sqs *q, struct event_base *base, struct ses_http *http,
                         struct ses_creds *creds)
{
	sqs_free(q);
	ses_creds_free(creds);
	ses_http_free(http);
	event_base_free(base);
}

static void test_request_bodies(void)
{
	char *b = sqs_receive_body(QUEUE_URL, 10, 20, 300);

	CHECK_STR(b, "{\"QueueUrl\":\"" QUEUE_URL "\",\"MaxNumberOfMessages\":10,"
	             "\"WaitTimeSeconds\":20,\"VisibilityTimeout\":300,"
	             "\"MessageSystemAttributeNames\":[\"ApproximateReceiveCount\"]}");
	free(b);
	b = sqs_receive_body("http://127.0.0.1:9/0/q", 1, 0, -1);
	CHECK_STR(b, "{\"QueueUrl\":\"http://127.0.0.1:9/0/q\",\"MaxNumberOfMessages\":1,"
	             "\"WaitTimeSeconds\":0,"
	             "\"MessageSystemAttributeNames\":[\"ApproximateReceiveCount\"]}");
	free(b);
	/* handles are base64 with + / =; a quote or backslash must stay inside the string */
	b = sqs_delete_body(QUEUE_URL, "AQEB+/x=\"\\");
	CHECK_STR(b, "{\"QueueUrl\":\"" QUEUE_URL "\",\"ReceiptHandle\":\"AQEB+/x=\\\"\\\\\"}");
	free(b);
}

/* Signatures computed by botocore 1.29 SigV4Auth("sqs", "us-east-1") for
 * this exact request at 20130524T000000Z. */
static void test_sign_matches_botocore(void)
{
	static const struct {
		const char *token, *signed_headers, *signature;
	} cases[] = {
	    {NULL, "content-type;host;x-amz-date;x-amz-target",
	     "58450b099bbeb923b28f46c75c6b1bd0a5f9908a31641d9ecfd7a220ee2e6743"},
	    {"FwoGZXIvYXdzEXAMPLE/token+==",
	     "content-type;host;x-amz-date;x-amz-security-token;x-amz-target",
	     "4925f35b36ffcdcef123e1ad4130d4816bc0ef95b97d88636ee05e00a8891c15"},
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct sigv4_credentials cr = {DOC_AKID, DOC_SECRET, cases[i].token};
		struct event_base *base;
		struct ses_http *http;
		struct ses_creds *creds;
		struct sqs *q = offline_client(&base, &http, &creds, QUEUE_URL, NULL, NULL);
		char *body = sqs_receive_body(QUEUE_URL, 10, 20, 300), *url = NULL, want[400];
		const char *err = NULL;
		struct curl_slist *h;

		CHECK(q != NULL);
		h = sqs_request_headers(q, "ReceiveMessage", body, strlen(body), &cr, DOC_TIME,
		                        &url, &err);
		CHECK(h != NULL);
		CHECK_STR(url, "https://sqs.us-east-1.amazonaws.com/");
		CHECK_STR(slist_get(h, "Host"), "sqs.us-east-1.amazonaws.com");
		CHECK_STR(slist_get(h, "X-Amz-Date"), "20130524T000000Z");
		CHECK_STR(slist_get(h, "X-Amz-Target"), "AmazonSQS.ReceiveMessage");
		CHECK_STR(slist_get(h, "Content-Type"), "application/x-amz-json-1.0");
		CHECK_STR(slist_get(h, "X-Amz-Security-Token"), cases[i].token);
		snprintf(want, sizeof(want),
		         "AWS4-HMAC-SHA256 Credential=" DOC_AKID
		         "/20130524/us-east-1/sqs/aws4_request, "
		         "SignedHeaders=%s, Signature=%s",
		         cases[i].signed_headers, cases[i].signature);
		CHECK_STR(slist_get(h, "Authorization"), want);
		curl_slist_free_all(h);
		free(url);
		free(body);
		offline_free(q, base, http, creds);
	}
}

static void test_queue_urls_regions_endpoints(void)
{
	static const struct {
		const char *url, *region, *endpoint;
		const char *want_url, *want_host, *want_region;
	} cases[] = {
	    {QUEUE_URL, NULL, NULL, "https://sqs.us-east-1.amazonaws.com/",
	     "sqs.us-east-1.amazonaws.com", "us-east-1"},
	    {"https://sqs.eu-west-1.amazonaws.com/123456789012/mail.fifo", "", NULL,
	     "https://sqs.eu-west-1.amazonaws.com/", "sqs.eu-west-1.amazonaws.com", "eu-west-1"},
	    {"https://sqs.cn-north-1.amazonaws.com.cn/123/q", NULL, NULL,
	     "https://sqs.cn-north-1.amazonaws.com.cn/", "sqs.cn-north-1.amazonaws.com.cn",
	     "cn-north-1"},
	    /* the legacy host form */
	    {"https://ap-southeast-2.queue.amazonaws.com/123/q", NULL, NULL,
	     "https://ap-southeast-2.queue.amazonaws.com/", "ap-southeast-2.queue.amazonaws.com",
	     "ap-southeast-2"},
	    /* a VPC endpoint for the queue's region */
	    {QUEUE_URL, NULL, "https://vpce-0a1b-c2d3.sqs.us-east-1.vpce.amazonaws.com/",
	     "https://vpce-0a1b-c2d3.sqs.us-east-1.vpce.amazonaws.com/",
	     "vpce-0a1b-c2d3.sqs.us-east-1.vpce.amazonaws.com", "us-east-1"},
	    /* a test server: the region must be given */
	    {"http://127.0.0.1:9324/000000000000/q", "us-west-2", NULL, "http://127.0.0.1:9324/",
	     "127.0.0.1:9324", "us-west-2"},
	    /* an explicit region wins over the host's */
	    {QUEUE_URL, "eu-central-1", NULL, "https://sqs.us-east-1.amazonaws.com/",
	     "sqs.us-east-1.amazonaws.com", "eu-central-1"},
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct event_base *base;
		struct ses_http *http;
		struct ses_creds *creds;
		struct sqs *q = offline_client(&base, &http, &creds, cases[i].url, cases[i].region,
		                               cases[i].endpoint);
		const char *err = NULL;
		char *url = NULL;
		struct curl_slist *h;

		CHECK(q != NULL);
		CHECK_STR(sqs_name(q), cases[i].url);
		CHECK_STR(sqs_region(q), cases[i].want_region);
		h = sqs_request_headers(q, "DeleteMessage", "{}", 2, &DOC_CREDS, DOC_TIME, &url,
		                        &err);
		CHECK(h != NULL);
		CHECK_STR(url, cases[i].want_url);
		CHECK_STR(slist_get(h, "Host"), cases[i].want_host);
		CHECK(strstr(slist_get(h, "Authorization"), cases[i].want_region) != NULL);
		curl_slist_free_all(h);
		free(url);
		offline_free(q, base, http, creds);
	}
}

static void test_new_refuses_bad_config(void)
{
	static const struct {
		const char *url, *region, *endpoint;
	} bad[] = {
	    {NULL, "us-east-1", NULL},
	    {"", "us-east-1", NULL},
	    {"sqs.us-east-1.amazonaws.com/1/q", NULL, NULL},       /* no scheme */
	    {"ftp://sqs.us-east-1.amazonaws.com/1/q", NULL, NULL}, /* not http */
	    {"https://sqs.us-east-1.amazonaws.com", NULL, NULL},   /* no queue path */
	    {"https://sqs.us-east-1.amazonaws.com/", NULL, NULL},
	    {"https://u:p@sqs.us-east-1.amazonaws.com/1/q", NULL, NULL},
	    {"https://sqs.us-east-1.amazonaws.com/1/q?x=1", NULL, NULL},
	    {"https://sqs.us-east-1.amazonaws.com/1/q w", NULL, NULL},
	    {"http://127.0.0.1:9324/0/q", NULL, NULL}, /* no region anywhere */
	    {QUEUE_URL, "US EAST", NULL},
	    {QUEUE_URL, NULL, "http://h/path"},
	    {QUEUE_URL, NULL, "http://"},
	    {"https://sqs..amazonaws.com/1/q", NULL, NULL},
	};
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct sqs_config cfg = {bad[i].url, bad[i].region, bad[i].endpoint, 0};
		char err[200] = "";

		CHECK(sqs_new(NULL, NULL, NULL, &cfg, err, sizeof(err)) == NULL);
		CHECK(err[0] != '\0');
	}
}

/* --- 2. ReceiveMessage answers ------------------------------------------------------ */

/* The UTF-8 body {"hello": "wörld"} and its MD5 (python3 hashlib). */
#define HELLO_BODY "{\"hello\": \"w\xc3\xb6rld\"}"
#define HELLO_MD5  "4ab427beb5fc3c7f50700d62143f7e6c"

static void test_receive_answer_messages(void)
{
	/* the body's own escapes, escaped once more; \u00f6 decodes to UTF-8 */
	const char *answer = "{\"Messages\":[{\"Attributes\":{\"ApproximateReceiveCount\":\"3\"},"
	                     "\"Body\":\"{\\\"hello\\\": \\\"w\\u00f6rld\\\"}\","
	                     "\"MD5OfBody\":\"" HELLO_MD5 "\","
	                     "\"MessageId\":\"5fea7756-0ea4-451a-a703-a558b933e274\","
	                     "\"ReceiptHandle\":\"AQEBzWwaftRI0KuVm4tP+/7q1rGgNqicHq==\"},\n"
	                     "  {\"MessageId\":\"m2\",\"ReceiptHandle\":\"h2\",\"Body\":\"\","
	                     "\"MD5OfBody\":\"D41D8CD98F00B204E9800998ECF8427E\"}]}";
	struct sqs_message *m = NULL;
	char err[200] = "";
	size_t n = 99;

	CHECK(sqs_parse_receive(answer, strlen(answer), &m, &n, err, sizeof(err)) == 0);
	CHECK_INT(n, 2);
	CHECK_STR(m[0].message_id, "5fea7756-0ea4-451a-a703-a558b933e274");
	CHECK_STR(m[0].receipt_handle, "AQEBzWwaftRI0KuVm4tP+/7q1rGgNqicHq==");
	CHECK_STR(m[0].body, HELLO_BODY);
	CHECK_INT(m[0].body_len, strlen(HELLO_BODY));
	CHECK_INT(m[0].receive_count, 3);
	CHECK_INT(m[0].oversize, 0);
	CHECK_STR(m[1].body, "");
	CHECK_INT(m[1].receive_count, 0);
	sqs_messages_free(m, n);
}

static void test_receive_answer_empty(void)
{
	static const char *const empty[] = {"{}", " {\"Messages\":[]}", "{\"Other\":1}"};
	size_t i;

	for (i = 0; i < sizeof(empty) / sizeof(empty[0]); i++) {
		struct sqs_message *m = (void *)1;
		size_t n = 99;
		char err[200];

		CHECK(sqs_parse_receive(empty[i], strlen(empty[i]), &m, &n, err, sizeof(err)) == 0);
		CHECK(m == NULL);
		CHECK_INT(n, 0);
	}
}

static void test_receive_answer_oversize_body(void)
{
	struct evbuffer *b = evbuffer_new();
	struct sqs_message *m = NULL;
	char err[200];
	size_t n = 0, i;
	char *answer;

	/* over the cap once decoded; the escaped text is longer still */
	evbuffer_add_printf(b, "{\"Messages\":[{\"MessageId\":\"big\",\"ReceiptHandle\":\"hb\","
	                       "\"MD5OfBody\":\"00000000000000000000000000000000\",\"Body\":\"");
	for (i = 0; i < SQS_BODY_MAX / 3 + 1; i++)
		evbuffer_add(b, "ab\\\"", 4); /* 3 bytes once decoded */
	evbuffer_add_printf(b, "\"},{\"MessageId\":\"small\",\"ReceiptHandle\":\"hs\","
	                       "\"Body\":\"x\"}]}");
	answer = evbuffer_take(b);
	CHECK(sqs_parse_receive(answer, strlen(answer), &m, &n, err, sizeof(err)) == 0);
	CHECK_INT(n, 2);
	CHECK_INT(m[0].oversize, 1);
	CHECK(m[0].body == NULL);
	CHECK_STR(m[0].receipt_handle, "hb"); /* so the caller can delete it */
	CHECK_STR(m[1].body, "x");
	sqs_messages_free(m, n);
	free(answer);
}

static void test_receive_answer_hostile(void)
{
	static const struct {
		const char *json, *why;
	} bad[] = {
	    {"", "an empty answer"},
	    {"[]", "not a JSON object"},
	    {"<ReceiveMessageResponse/>", "not a JSON object"},
	    {"{\"Messages\":{}}", "not a readable array"},
	    {"{\"Messages\":null}", "not a readable array"},
	    {"{\"Messages\":[{\"MessageId\":\"a\",\"ReceiptHandle\":\"h\",\"Body\":\"b\"}",
	     "not a readable array"},
	    {"{\"Messages\":[{\"ReceiptHandle\":\"h\",\"Body\":\"b\"}]}", "usable MessageId"},
	    {"{\"Messages\":[{\"MessageId\":\"\",\"ReceiptHandle\":\"h\",\"Body\":\"b\"}]}",
	     "usable MessageId"},
	    {"{\"Messages\":[{\"MessageId\":\"a b\",\"ReceiptHandle\":\"h\",\"Body\":\"b\"}]}",
	     "usable MessageId"},
	    {"{\"Messages\":[{\"MessageId\":\"a\",\"Body\":\"b\"}]}", "usable ReceiptHandle"},
	    {"{\"Messages\":[{\"MessageId\":\"a\",\"ReceiptHandle\":\"h\\u0000x\",\"Body\":\"b\"}]"
	     "}",
	     "usable ReceiptHandle"},
	    {"{\"Messages\":[{\"MessageId\":\"a\",\"ReceiptHandle\":\"h\\n\",\"Body\":\"b\"}]}",
	     "usable ReceiptHandle"},
	    {"{\"Messages\":[{\"MessageId\":\"a\",\"ReceiptHandle\":\"h\"}]}", "without a Body"},
	    {"{\"Messages\":[{\"MessageId\":\"a\",\"ReceiptHandle\":\"h\",\"Body\":7}]}",
	     "without a Body"},
	    {"{\"Messages\":[{\"MessageId\":\"a\",\"ReceiptHandle\":\"h\",\"Body\":\"b\\u0000\"}]}",
	     "a Body with a NUL"},
	    {"{\"Messages\":[{\"MessageId\":\"a\",\"ReceiptHandle\":\"h\",\"Body\":\"b\","
	     "\"MD5OfBody\":\"d41d8cd98f00b204e9800998ecf8427e\"}]}",
	     "message 1: a Body that does not match its MD5OfBody"},
	};
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct sqs_message *m = (void *)1;
		size_t n = 99;
		char err[200] = "";

		if (sqs_parse_receive(bad[i].json, strlen(bad[i].json), &m, &n, err, sizeof(err)) !=
		    -1) {
			fprintf(stderr, "case %zu accepted\n", i);
			CHECK(0);
		}
		CHECK(m == NULL && n == 0);
		if (strstr(err, bad[i].why) == NULL) {
			fprintf(stderr, "case %zu: err \"%s\", want \"%s\"\n", i, err, bad[i].why);
			CHECK(0);
		}
	}
}

static void test_receive_answer_caps(void)
{
	struct evbuffer *b = evbuffer_new();
	struct sqs_message *m = NULL;
	char err[200] = "", *answer, nul[] = "{\"Messages\":[]}";
	size_t n = 0, i;

	evbuffer_add_printf(b, "{\"Messages\":[");
	for (i = 0; i < SQS_MAX_MESSAGES + 1; i++)
		evbuffer_add_printf(
		    b, "%s{\"MessageId\":\"m%zu\",\"ReceiptHandle\":\"h\",\"Body\":\"\"}",
		    i ? "," : "", i);
	evbuffer_add_printf(b, "]}");
	answer = evbuffer_take(b);
	CHECK(sqs_parse_receive(answer, strlen(answer), &m, &n, err, sizeof(err)) == -1);
	CHECK(strstr(err, "more than 10 messages") != NULL);
	free(answer);

	/* a handle one byte over the cap */
	b = evbuffer_new();
	evbuffer_add_printf(
	    b, "{\"Messages\":[{\"MessageId\":\"a\",\"Body\":\"\",\"ReceiptHandle\":\"");
	for (i = 0; i < SQS_RECEIPT_HANDLE_MAX + 1; i++)
		evbuffer_add(b, "h", 1);
	evbuffer_add_printf(b, "\"}]}");
	answer = evbuffer_take(b);
	CHECK(sqs_parse_receive(answer, strlen(answer), &m, &n, err, sizeof(err)) == -1);
	answer[strlen(answer) - 5] = '"'; /* now exactly at the cap... */
	memmove(answer + strlen(answer) - 4, "}]}", 4);
	CHECK(sqs_parse_receive(answer, strlen(answer), &m, &n, err, sizeof(err)) == 0);
	CHECK_INT(strlen(m[0].receipt_handle), SQS_RECEIPT_HANDLE_MAX);
	sqs_messages_free(m, n);
	free(answer);

	/* a NUL byte anywhere */
	nul[3] = '\0';
	CHECK(sqs_parse_receive(nul, sizeof(nul) - 1, &m, &n, err, sizeof(err)) == -1);
	CHECK(strstr(err, "NUL") != NULL);

	CHECK(sqs_receipt_handle_valid("AQEB+/=") == 1);
	CHECK(sqs_receipt_handle_valid("") == 0);
	CHECK(sqs_receipt_handle_valid(NULL) == 0);
	CHECK(sqs_receipt_handle_valid("a b") == 0);
	CHECK(sqs_receipt_handle_valid("a\xc3\xa9") == 0);
}

/* --- 3. errors and classes -------------------------------------------------------- */

static void test_parse_error(void)
{
	static const struct {
		const char *body, *header, *code, *message;
	} cases[] = {
	    {"{\"__type\":\"com.amazonaws.sqs#QueueDoesNotExist\","
	     "\"message\":\"The specified queue does not exist.\"}",
	     NULL, "QueueDoesNotExist", "The specified queue does not exist."},
	    {"{\"__type\":\"com.amazon.coral.service#InvalidSignatureException\","
	     "\"Message\":\"The request signature we calculated does not match\"}",
	     NULL, "InvalidSignatureException",
	     "The request signature we calculated does not match"},
	    /* the header wins; the body still gives the message */
	    {"{\"__type\":\"x#Other\",\"message\":\"m\\u00e9\\n\"}", "AccessDeniedException",
	     "AccessDeniedException", "m?? "},
	    {"{\"code\":\"AWS.SimpleQueueService.NonExistentQueue:Sender\"}", NULL,
	     "AWS.SimpleQueueService.NonExistentQueue", ""},
	    {"<ErrorResponse><Error><Type>Sender</Type><Code>InvalidClientTokenId</Code>"
	     "<Message>The security token included in the request is invalid.</Message>"
	     "</Error></ErrorResponse>",
	     NULL, "InvalidClientTokenId",
	     "The security token included in the request is invalid."},
	    {"<html>502 Bad Gateway</html>", NULL, "", ""},
	    {"", "ThrottlingException", "ThrottlingException", ""},
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char code[SQS_CODE_MAX], message[200];
		int rc = sqs_parse_error(cases[i].body, strlen(cases[i].body), cases[i].header,
		                         code, sizeof(code), message, sizeof(message));

		CHECK_INT(rc, cases[i].code[0] ? 0 : -1);
		CHECK_STR(code, cases[i].code);
		CHECK_STR(message, cases[i].message);
	}
}

static void test_classify(void)
{
	static const struct {
		long status;
		const char *code;
		enum sqs_class cls;
		const char *hint_has;
	} cases[] = {
	    {200, "", SQS_OK, NULL},
	    {200, NULL, SQS_OK, NULL},
	    {0, "", SQS_TRANSIENT, NULL},
	    {500, "InternalFailure", SQS_TRANSIENT, NULL},
	    {503, "", SQS_TRANSIENT, NULL},
	    {429, "", SQS_TRANSIENT, NULL},
	    {400, "RequestThrottled", SQS_TRANSIENT, NULL},
	    {400, "ThrottlingException", SQS_TRANSIENT, NULL},
	    {403, "OverLimit", SQS_TRANSIENT, NULL},
	    {400, "ExpiredToken", SQS_TRANSIENT, NULL},
	    {403, "SignatureDoesNotMatch", SQS_OPERATOR, "secret access key"},
	    {400, "InvalidSignatureException", SQS_OPERATOR, "secret access key"},
	    {403, "InvalidClientTokenId", SQS_OPERATOR, "access key id"},
	    {400, "UnrecognizedClientException", SQS_OPERATOR, "access key id"},
	    {403, "AccessDenied", SQS_OPERATOR, "sqs:ReceiveMessage"},
	    {400, "AccessDeniedException", SQS_OPERATOR, "sqs:DeleteMessage"},
	    {400, "QueueDoesNotExist", SQS_OPERATOR, "queue_url"},
	    {400, "AWS.SimpleQueueService.NonExistentQueue", SQS_OPERATOR, "queue_url"},
	    {400, "KmsAccessDenied", SQS_OPERATOR, "kms:Decrypt"},
	    {400, "RequestExpired", SQS_OPERATOR, "clock"},
	    {403, "", SQS_OPERATOR, NULL},
	    {401, "Whatever", SQS_OPERATOR, NULL},
	    {400, "ReceiptHandleIsInvalid", SQS_REJECTED, NULL},
	    {400, "InvalidParameterValue", SQS_REJECTED, NULL},
	    {400, "SomethingNew", SQS_REJECTED, NULL},
	    {404, "", SQS_REJECTED, NULL},
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *hint = sqs_hint(cases[i].code);

		CHECK_INT(sqs_classify(cases[i].status, cases[i].code), cases[i].cls);
		if (cases[i].hint_has)
			CHECK(hint != NULL && strstr(hint, cases[i].hint_has) != NULL);
		else if (cases[i].cls != SQS_OPERATOR)
			CHECK(hint == NULL);
	}
	CHECK_STR(sqs_class_name(SQS_OK), "ok");
	CHECK_STR(sqs_class_name(SQS_TRANSIENT), "transient");
	CHECK_STR(sqs_class_name(SQS_OPERATOR), "operator");
	CHECK_STR(sqs_class_name(SQS_REJECTED), "rejected");
}

/* --- 4. receipt notifications ----------------------------------------------------------- */

/* An S3 action's notification as SES writes it (fields as documented, values
 * invented): one mail for three recipients, one of them Bcc'd.  %s: the
 * recipients array's text. */
#define S3_NOTIFICATION_FMT                                                                        \
	"{\"notificationType\":\"Received\",\"mail\":{\"timestamp\":\"2024-03-01T10:00:00.512Z\"," \
	"\"source\":\"bob@sender.example\",\"messageId\":"                                         \
	"\"o3vrnil0e2ic28trm7dfhrc2v0clambda4nbp0g1\","                                            \
	"\"destination\":[\"alice@example.com\",\"team@example.com\"],\"headersTruncated\":false," \
	"\"headers\":[{\"name\":\"Return-Path\",\"value\":\"<bob@sender.example>\"},"              \
	"{\"name\":\"Received\",\"value\":\"from mail.sender.example by "                          \
	"inbound-smtp.us-east-1.amazonaws.com with SMTP id "                                       \
	"o3vrnil0e2ic28trm7dfhrc2v0clambda4nbp0g1 "                                                \
	"for alice@example.com; Fri, 01 Mar 2024 10:00:00 +0000 (UTC)\"},"                         \
	"{\"name\":\"Subject\",\"value\":\"Quarterly \\\"numbers\\\" \\u2014 draft\"}],"           \
	"\"commonHeaders\":{\"returnPath\":\"bob@sender.example\",\"from\":[\"Bob "                \
	"<bob@sender.example>\"],"                                                                 \
	"\"to\":[\"alice@example.com\",\"team@example.com\"],\"subject\":\"Quarterly\"}},"         \
	"\"receipt\":{\"timestamp\":\"2024-03-01T10:00:00.512Z\",\"processingTimeMillis\":431,"    \
	"\"recipients\":%s,"                                                                       \
	"\"spamVerdict\":{\"status\":\"PASS\"},\"virusVerdict\":{\"status\":\"PASS\"},"            \
	"\"spfVerdict\":{\"status\":\"PASS\"},\"dkimVerdict\":{\"status\":\"GRAY\"},"              \
	"\"dmarcVerdict\":{\"status\":\"PASS\"},"                                                  \
	"\"action\":{\"type\":\"S3\",\"topicArn\":\"arn:aws:sns:us-east-1:123456789012:ses-"       \
	"inbound\","                                                                               \
	"\"bucketName\":\"inbound-mail\",\"objectKeyPrefix\":\"mail/\","                           \
	"\"objectKey\":\"mail/o3vrnil0e2ic28trm7dfhrc2v0clambda4nbp0g1\"}}}"

#define THREE_RCPTS "[\"alice@example.com\",\"team@example.com\",\"hidden.bcc@example.org\"]"

static char *s3_notification(const char *recipients)
{
	size_t n = strlen(S3_NOTIFICATION_FMT) + strlen(recipients) + 1;
	char *s = malloc(n);

	snprintf(s, n, S3_NOTIFICATION_FMT, recipients);
	return s;
}

static int expect_received(const char *body, const char *label)
{
	struct sqs_receipt r;
	char err[200] = "";

	if (sqs_parse_receipt(body, strlen(body), &r, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s: refused: %s\n", label, err);
		return -1;
	}
	if (r.kind != SQS_RECEIPT_RECEIVED || strcmp(r.bucket, "inbound-mail") != 0 ||
	    strcmp(r.object_key, "mail/o3vrnil0e2ic28trm7dfhrc2v0clambda4nbp0g1") != 0 ||
	    r.nrecipients != 3 || strcmp(r.recipients[0], "alice@example.com") != 0 ||
	    strcmp(r.recipients[2], "hidden.bcc@example.org") != 0 ||
	    strcmp(r.spam_verdict, "PASS") != 0 || strcmp(r.virus_verdict, "PASS") != 0 ||
	    strcmp(r.dkim_verdict, "GRAY") != 0 || strcmp(r.source, "bob@sender.example") != 0 ||
	    strcmp(r.mail_message_id, "o3vrnil0e2ic28trm7dfhrc2v0clambda4nbp0g1") != 0 ||
	    strcmp(r.timestamp, "2024-03-01T10:00:00.512Z") != 0 ||
	    strcmp(r.action_type, "S3") != 0) {
		fprintf(stderr, "%s: wrong fields (kind %s, key %s)\n", label,
		        sqs_receipt_kind_name(r.kind), r.object_key);
		sqs_receipt_free(&r);
		return -1;
	}
	sqs_receipt_free(&r);
	return 0;
}

static void test_receipt_s3_notification_wrapped_and_raw(void)
{
	char *raw = s3_notification(THREE_RCPTS), *wrapped = sns_wrap("Notification", raw);
	struct sqs_receipt r;
	char err[200];

	CHECK(expect_received(raw, "raw delivery") == 0);
	CHECK(expect_received(wrapped, "SNS envelope") == 0);
	CHECK(sqs_parse_receipt(wrapped, strlen(wrapped), &r, err, sizeof(err)) == 0);
	CHECK_INT(r.sns, 1);
	CHECK_STR(r.sns_message_id, "0d5d8b6e-5f4a-5d0e-8a3b-1c2d3e4f5a6b");
	CHECK_STR(r.topic_arn, "arn:aws:sns:us-east-1:123456789012:ses-inbound");
	sqs_receipt_free(&r);
	CHECK(sqs_parse_receipt(raw, strlen(raw), &r, err, sizeof(err)) == 0);
	CHECK_INT(r.sns, 0);
	sqs_receipt_free(&r);
	/* not NUL-terminated: only len counts */
	{
		size_t n = strlen(wrapped);
		char *copy = malloc(n);

		memcpy(copy, wrapped, n);
		CHECK(sqs_parse_receipt(copy, n, &r, err, sizeof(err)) == 0);
		CHECK_INT(r.nrecipients, 3);
		sqs_receipt_free(&r);
		free(copy);
	}
	free(raw);
	free(wrapped);
}

static void test_receipt_utf8_recipients_and_key(void)
{
	const char *doc =
	    "{\"notificationType\":\"Received\",\"mail\":{\"source\":\"\",\"messageId\":\"x1\"},"
	    "\"receipt\":{\"recipients\":[\"j\\u00fcrgen@b\\u00fccher.example\","
	    "\"\\u7528\\u6237@\\u4f8b\\u5b50.\\u5e7f\\u544a\",\"a+tag@x.example\"],"
	    "\"action\":{\"type\":\"S3\",\"bucketName\":\"Legacy_Bucket.name\","
	    "\"objectKey\":\"in box/\\ud83d\\ude00 x1\"}}}";
	struct sqs_receipt r;
	char err[200] = "";

	CHECK(sqs_parse_receipt(doc, strlen(doc), &r, err, sizeof(err)) == 0);
	CHECK_INT(r.kind, SQS_RECEIPT_RECEIVED);
	CHECK_INT(r.nrecipients, 3);
	CHECK_STR(r.recipients[0], "j\xc3\xbcrgen@b\xc3\xbc"
	                           "cher.example");
	CHECK_STR(r.recipients[1],
	          "\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.\xe5\xb9\xbf\xe5\x91\x8a");
	CHECK_STR(r.object_key, "in box/\xf0\x9f\x98\x80 x1");
	CHECK_STR(r.bucket, "Legacy_Bucket.name");
	CHECK_STR(r.source, ""); /* the null reverse-path */
	CHECK_STR(r.spam_verdict, "");
	sqs_receipt_free(&r);
}

static void test_receipt_setup_notification(void)
{
	/* SES sends it when the rule is created; the object is its test file */
	const char *setup = "{\"notificationType\":\"Received\",\"receipt\":{\"recipients\":[],"
	                    "\"action\":{\"type\":\"S3\",\"bucketName\":\"inbound-mail\","
	                    "\"objectKey\":\"mail/AMAZON_SES_SETUP_NOTIFICATION\"}},"
	                    "\"mail\":{\"messageId\":\"AMAZON_SES_SETUP_NOTIFICATION\","
	                    "\"source\":\"no-reply@amazonaws.com\"}}";
	const char *by_key =
	    "{\"notificationType\":\"Received\",\"receipt\":{\"action\":{\"type\":\"S3\","
	    "\"bucketName\":\"b-1\",\"objectKey\":\"AMAZON_SES_SETUP_NOTIFICATION\"}},\"mail\":{}}";
	char *wrapped = sns_wrap("Notification", setup);
	struct sqs_receipt r;
	char err[200] = "";

	CHECK(sqs_parse_receipt(wrapped, strlen(wrapped), &r, err, sizeof(err)) == 0);
	CHECK_INT(r.kind, SQS_RECEIPT_SETUP);
	CHECK_STR(sqs_receipt_kind_name(r.kind), "setup");
	CHECK(strstr(r.why, "setup") != NULL);
	CHECK_STR(r.bucket, "inbound-mail");
	CHECK_STR(r.object_key, "mail/AMAZON_SES_SETUP_NOTIFICATION");
	CHECK(r.recipients == NULL && r.nrecipients == 0);
	sqs_receipt_free(&r);
	CHECK(sqs_parse_receipt(by_key, strlen(by_key), &r, err, sizeof(err)) == 0);
	CHECK_INT(r.kind, SQS_RECEIPT_SETUP);
	sqs_receipt_free(&r);
	free(wrapped);
}

static void test_receipt_other_kinds_are_discarded(void)
{
	static const struct {
		const char *doc, *why;
		int wrap; /* in an SNS Notification envelope */
	} cases[] = {
	    /* SNS's own messages to a new subscriber */
	    {"{\"Type\":\"SubscriptionConfirmation\",\"MessageId\":\"m\",\"Token\":\"t\","
	     "\"TopicArn\":\"arn:aws:sns:us-east-1:1:t\",\"Message\":\"You have chosen to "
	     "subscribe\","
	     "\"SubscribeURL\":\"https://sns.us-east-1.amazonaws.com/"
	     "?Action=ConfirmSubscription\"}",
	     "SNS SubscriptionConfirmation", 0},
	    {"{\"Type\":\"UnsubscribeConfirmation\",\"Message\":\"bye\"}",
	     "SNS UnsubscribeConfirmation", 0},
	    /* SES's notice that a topic now gets its notifications */
	    {"{\"notificationType\":\"AmazonSnsSubscriptionSucceeded\",\"message\":\"You have "
	     "successfully subscribed your Amazon SNS topic\"}",
	     "notificationType AmazonSnsSubscriptionSucceeded", 1},
	    /* sending-side feedback on the same topic */
	    {"{\"notificationType\":\"Bounce\",\"bounce\":{\"bounceType\":\"Permanent\"},"
	     "\"mail\":{\"messageId\":\"x\"}}",
	     "notificationType Bounce", 1},
	    /* other receipt actions publish alerts too */
	    {"{\"notificationType\":\"Received\",\"receipt\":{\"recipients\":[\"a@b.c\"],"
	     "\"action\":{\"type\":\"Lambda\",\"functionArn\":\"arn:aws:lambda:x\"}},"
	     "\"mail\":{\"messageId\":\"x\"}}",
	     "receipt action Lambda, not S3", 1},
	    {"{\"notificationType\":\"Received\",\"receipt\":{\"recipients\":[\"a@b.c\"],"
	     "\"action\":{\"type\":\"SNS\",\"encoding\":\"UTF8\"}},\"mail\":{\"messageId\":\"x\"},"
	     "\"content\":\"From: a@b.c\\r\\n\\r\\nhi\"}",
	     "receipt action SNS, not S3", 0},
	    /* S3's test event when a bucket notification is first set up */
	    {"{\"Service\":\"Amazon "
	     "S3\",\"Event\":\"s3:TestEvent\",\"Time\":\"2024-03-01T10:00:00Z\","
	     "\"Bucket\":\"inbound-mail\",\"RequestId\":\"r\",\"HostId\":\"h\"}",
	     "S3's test event", 0},
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *doc =
		    cases[i].wrap ? sns_wrap("Notification", cases[i].doc) : strdup(cases[i].doc);
		struct sqs_receipt r;
		char err[200] = "";

		if (sqs_parse_receipt(doc, strlen(doc), &r, err, sizeof(err)) != 0) {
			fprintf(stderr, "case %zu refused: %s\n", i, err);
			CHECK(0);
		}
		CHECK_INT(r.kind, SQS_RECEIPT_OTHER);
		if (strcmp(r.why, cases[i].why) != 0) {
			fprintf(stderr, "case %zu: why \"%s\", want \"%s\"\n", i, r.why,
			        cases[i].why);
			CHECK(0);
		}
		CHECK(r.recipients == NULL);
		sqs_receipt_free(&r);
		free(doc);
	}
}

/* A document SQS_NOTIFICATION with one part replaced: what must be refused. */
static char *replace(const char *s, const char *from, const char *to)
{
	const char *at = strstr(s, from);
	size_t n = strlen(s) - strlen(from) + strlen(to) + 1;
	char *out = malloc(n);

	if (at == NULL) {
		fprintf(stderr, "fixture lacks %s\n", from);
		abort();
	}
	snprintf(out, n, "%.*s%s%s", (int)(at - s), s, to, at + strlen(from));
	return out;
}

static void test_receipt_hostile_documents_are_refused(void)
{
	static const struct {
		const char *from, *to, *why;
	} edits[] = {
	    {"\"bucketName\":\"inbound-mail\",", "", "bucketName missing"},
	    {"\"bucketName\":\"inbound-mail\"", "\"bucketName\":\"in/bound\"", "not a bucket name"},
	    {"\"bucketName\":\"inbound-mail\"", "\"bucketName\":7", "bucketName missing"},
	    {"\"objectKey\":\"mail/o3vrnil0e2ic28trm7dfhrc2v0clambda4nbp0g1\"",
	     "\"objectKey\":\"\"", "objectKey is empty"},
	    {"\"objectKey\":\"mail/o3vrnil0e2ic28trm7dfhrc2v0clambda4nbp0g1\"",
	     "\"objectKey\":\"a\\u0000b\"", "objectKey holds a NUL"},
	    {"\"objectKey\":\"mail/o3vrnil0e2ic28trm7dfhrc2v0clambda4nbp0g1\"",
	     "\"objectKey\":\"\\udc00\xff\"", "objectKey is empty or not UTF-8"},
	    {",\"objectKey\":\"mail/o3vrnil0e2ic28trm7dfhrc2v0clambda4nbp0g1\"", "",
	     "objectKey missing"},
	    {"\"recipients\":" THREE_RCPTS ",", "", "recipients is missing"},
	    {THREE_RCPTS, "[]", "recipients is empty"},
	    {THREE_RCPTS, "\"alice@example.com\"", "recipients is missing or not an array"},
	    {THREE_RCPTS, "[\"alice@example.com\",7]", "recipient 2 is not a string"},
	    {THREE_RCPTS, "[\"alice@example.com\",null]", "recipient 2 is not a string"},
	    {THREE_RCPTS, "[\"alice example.com\"]", "recipient 1 is not an address"},
	    {THREE_RCPTS, "[\"alice@\"]", "recipient 1 is not an address"},
	    {THREE_RCPTS, "[\"@example.com\"]", "recipient 1 is not an address"},
	    {THREE_RCPTS, "[\"\"]", "recipient 1 is not an address"},
	    {THREE_RCPTS, "[\"a@b.c\\r\\nRCPT TO:<x@y>\"]", "recipient 1 is not an address"},
	    {THREE_RCPTS, "[\"a@b.c\\u0000evil@x\"]", "recipient 1 holds a NUL"},
	    {THREE_RCPTS, "[\"<a@b.c>\"]", "recipient 1 is not an address"},
	    {THREE_RCPTS, "[\"a@b.c\\u007f\"]", "recipient 1 is not an address"},
	    /* cut short: the rest of the document is read as the array's tail */
	    {THREE_RCPTS, "[\"a@b.c\", \"x@y\"", "unreadable"},
	    {"\"source\":\"bob@sender.example\"", "\"source\":\"bob sender\"",
	     "mail.source is not an address"},
	    {"\"source\":\"bob@sender.example\"", "\"source\":\"b\\u0000@x\"",
	     "mail.source holds a NUL"},
	    {"\"status\":\"PASS\"}", "\"status\":\"P\\u0000SS\"}",
	     "spamVerdict.status holds a NUL"},
	};
	char *base = s3_notification(THREE_RCPTS);
	size_t i;

	for (i = 0; i < sizeof(edits) / sizeof(edits[0]); i++) {
		char *doc = replace(base, edits[i].from, edits[i].to);
		int w;

		for (w = 0; w < 2; w++) {
			char *body = w ? sns_wrap("Notification", doc) : strdup(doc);
			struct sqs_receipt r;
			char err[200] = "";

			if (sqs_parse_receipt(body, strlen(body), &r, err, sizeof(err)) != -1) {
				fprintf(stderr, "edit %zu (wrap %d) accepted\n", i, w);
				CHECK(0);
			}
			if (strstr(err, edits[i].why) == NULL) {
				fprintf(stderr, "edit %zu: err \"%s\", want \"%s\"\n", i, err,
				        edits[i].why);
				CHECK(0);
			}
			CHECK(r.recipients == NULL && r.nrecipients == 0);
			sqs_receipt_free(&r); /* safe after a failure */
			free(body);
		}
		free(doc);
	}
	free(base);
}

static void test_receipt_not_ses_at_all(void)
{
	static const struct {
		const char *body, *why;
	} bad[] = {
	    {"", "an empty body"},
	    {"hello", "not a JSON object"},
	    {"[1,2]", "not a JSON object"},
	    {"{}", "neither an SNS envelope nor an SES notification"},
	    {"{\"foo\":\"bar\"}", "neither an SNS envelope nor an SES notification"},
	    {"{\"Records\":[{\"eventSource\":\"aws:s3\",\"eventName\":\"ObjectCreated:Put\"}]}",
	     "an S3 event notification, not SES's"},
	    {"{\"Type\":\"Notification\",\"MessageId\":\"m\"}", "the SNS Message missing"},
	    {"{\"Type\":\"Notification\",\"Message\":{\"notificationType\":\"Received\"}}",
	     "the SNS Message missing"},
	    {"{\"Type\":\"Notification\",\"Message\":\"not json\"}", "not a JSON object"},
	    {"{\"Type\":\"Notification\",\"Message\":\"{\\\"notificationType\\\":\\\"Rece\"}",
	     "neither an SNS envelope nor an SES notification"},
	    {"{\"Type\":\"Notification\",\"Message\":\"{}\\u0000{\\\"notificationType\\\":1}\"}",
	     "the SNS Message holds a NUL"},
	    {"{\"notificationType\":\"Received\"", "neither an SNS envelope nor an SES"},
	    {"{\"notificationType\":\"Received\",\"receipt\":{\"recipients\":[\"a@b.c\"]},"
	     "\"mail\":{\"messageId\":\"x\"}}",
	     "receipt.action.type missing"},
	    {"{\"notificationType\":7}", "neither an SNS envelope nor an SES"},
	    /* an envelope inside an envelope is not SES's */
	    {"{\"Type\":\"Notification\",\"Message\":\"{\\\"Type\\\":\\\"Notification\\\"}\"}",
	     "neither an SNS envelope nor an SES notification"},
	};
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct sqs_receipt r;
		char err[200] = "";

		if (sqs_parse_receipt(bad[i].body, strlen(bad[i].body), &r, err, sizeof(err)) !=
		    -1) {
			fprintf(stderr, "case %zu accepted (kind %s)\n", i,
			        sqs_receipt_kind_name(r.kind));
			CHECK(0);
		}
		if (strstr(err, bad[i].why) == NULL) {
			fprintf(stderr, "case %zu: err \"%s\", want \"%s\"\n", i, err, bad[i].why);
			CHECK(0);
		}
		sqs_receipt_free(&r);
	}
	/* a NUL byte in the body itself */
	{
		const char nul[] = "{\"notificationType\":\"Received\"}\0{}";
		struct sqs_receipt r;
		char err[200] = "";

		CHECK(sqs_parse_receipt(nul, sizeof(nul) - 1, &r, err, sizeof(err)) == -1);
		CHECK(strstr(err, "NUL") != NULL);
	}
}

/* n recipients, "u0@example.com"... */
static char *recipients_array(size_t n)
{
	struct evbuffer *b = evbuffer_new();
	size_t i;

	evbuffer_add(b, "[", 1);
	for (i = 0; i < n; i++)
		evbuffer_add_printf(b, "%s\"u%zu@example.com\"", i ? "," : "", i);
	evbuffer_add(b, "]", 1);
	return evbuffer_take(b);
}

static void test_receipt_caps(void)
{
	char *arr, *doc, *wrapped, err[200] = "", addr[SQS_ADDR_MAX + 40];
	struct sqs_receipt r;
	size_t i;

	/* exactly the cap: every one kept, in order */
	arr = recipients_array(SQS_RECEIPT_RCPTS_MAX);
	doc = s3_notification(arr);
	wrapped = sns_wrap("Notification", doc);
	CHECK(sqs_parse_receipt(wrapped, strlen(wrapped), &r, err, sizeof(err)) == 0);
	CHECK_INT(r.nrecipients, SQS_RECEIPT_RCPTS_MAX);
	CHECK_STR(r.recipients[999], "u999@example.com");
	sqs_receipt_free(&r);
	free(arr), free(doc), free(wrapped);

	/* one more, and a hundred thousand: refused, without reading them all */
	for (i = 0; i < 2; i++) {
		arr = recipients_array(i ? 100000 : SQS_RECEIPT_RCPTS_MAX + 1);
		doc = s3_notification(arr);
		CHECK(sqs_parse_receipt(doc, strlen(doc), &r, err, sizeof(err)) == -1);
		CHECK(strstr(err, "more than 1000 recipients") != NULL);
		free(arr), free(doc);
	}

	/* an address at the cap, and one byte over */
	for (i = 0; i < 2; i++) {
		size_t len = SQS_ADDR_MAX + i;
		char list[SQS_ADDR_MAX + 50];

		memset(addr, 'a', len);
		memcpy(addr + len - 10, "@x.example", 10);
		addr[len] = '\0';
		snprintf(list, sizeof(list), "[\"%s\"]", addr);
		doc = s3_notification(list);
		CHECK_INT(sqs_parse_receipt(doc, strlen(doc), &r, err, sizeof(err)), i ? -1 : 0);
		if (i)
			CHECK(strstr(err, "recipient 1 too long") != NULL);
		else
			CHECK_INT(strlen(r.recipients[0]), SQS_ADDR_MAX);
		sqs_receipt_free(&r);
		free(doc);
	}

	/* a key over 1024 bytes once decoded, though it fits escaped... no: \u0041 is longer */
	{
		struct evbuffer *b = evbuffer_new();
		char *key, *d;

		evbuffer_add_printf(b, "\"objectKey\":\"");
		for (i = 0; i < SQS_OBJECT_KEY_MAX + 1; i++)
			evbuffer_add(b, "\\u00e9", 6); /* 2 bytes each once decoded */
		evbuffer_add(b, "\"", 1);
		key = evbuffer_take(b);
		doc = s3_notification(THREE_RCPTS);
		d = replace(doc, "\"objectKey\":\"mail/o3vrnil0e2ic28trm7dfhrc2v0clambda4nbp0g1\"",
		            key);
		CHECK(sqs_parse_receipt(d, strlen(d), &r, err, sizeof(err)) == -1);
		CHECK(strstr(err, "objectKey too long") != NULL);
		free(key), free(doc), free(d);
	}
}

static void test_receipt_deep_and_cut_documents(void)
{
	char *doc = s3_notification(THREE_RCPTS), *wrapped = sns_wrap("Notification", doc);
	struct evbuffer *b = evbuffer_new();
	struct sqs_receipt r;
	char err[200], *deep;
	size_t i, n = strlen(wrapped);

	/* every prefix of a good document: refused or read, never past its end */
	for (i = 0; i < n; i++) {
		char *cut = malloc(i ? i : 1);

		memcpy(cut, wrapped, i);
		if (sqs_parse_receipt(cut, i, &r, err, sizeof(err)) == 0)
			CHECK(r.kind != SQS_RECEIPT_RECEIVED || r.nrecipients == 3);
		sqs_receipt_free(&r);
		free(cut);
	}
	/* nesting far past the parser's depth limit, where the fields would be */
	evbuffer_add_printf(b, "{\"notificationType\":\"Received\",\"mail\":");
	for (i = 0; i < 10000; i++)
		evbuffer_add(b, "[", 1);
	for (i = 0; i < 10000; i++)
		evbuffer_add(b, "]", 1);
	evbuffer_add_printf(b, ",\"receipt\":{\"recipients\":[\"a@b.c\"],\"action\":{\"type\":"
	                       "\"S3\",\"bucketName\":\"bbb\",\"objectKey\":\"k\"}}}");
	deep = evbuffer_take(b);
	CHECK(sqs_parse_receipt(deep, strlen(deep), &r, err, sizeof(err)) == -1);
	sqs_receipt_free(&r);
	free(deep), free(doc), free(wrapped);
}

/* --- 5. the client, offline ------------------------------------------------------- */

struct seen {
	int calls;
	enum sqs_class cls;
	char text[SQS_TEXT_MAX];
	struct sqs *free_me; /* sqs_free() from inside done */
};

static void on_done(void *arg, const struct sqs_result *r)
{
	struct seen *w = arg;

	w->calls++;
	w->cls = r->cls;
	snprintf(w->text, sizeof(w->text), "%s", r->text);
	if (w->free_me) {
		sqs_free(w->free_me);
		w->free_me = NULL;
	}
}

/* Runs the loop until nothing is pending, bounded. */
static void run_loop(struct event_base *base)
{
	struct timeval tv = {2, 0};

	event_base_loopexit(base, &tv);
	event_base_dispatch(base);
}

static void test_failures_are_reported_from_the_loop(void)
{
	struct event_base *base;
	struct ses_http *http;
	struct ses_creds *creds;
	struct sqs *q =
	    offline_client(&base, &http, &creds, "http://127.0.0.1:9/0/q", "us-east-1", NULL);
	struct seen no_creds = {0}, bad_handle = {0}, many = {0}, wait = {0}, vis = {0};

	CHECK(q != NULL);
	/* creds never started: ses_creds_get() is NULL */
	sqs_receive(q, 10, 20, 30, on_done, &no_creds);
	sqs_delete(q, "not a handle", on_done, &bad_handle);
	sqs_receive(q, 11, 0, -1, on_done, &many);
	sqs_receive(q, 1, 21, -1, on_done, &wait);
	sqs_receive(q, 1, 0, SQS_MAX_VISIBILITY + 1, on_done, &vis);
	CHECK_INT(sqs_in_flight(q), 5);
	CHECK_INT(no_creds.calls + bad_handle.calls + many.calls + wait.calls + vis.calls, 0);
	run_loop(base);
	CHECK_INT(no_creds.calls, 1);
	CHECK_INT(no_creds.cls, SQS_TRANSIENT);
	CHECK(strstr(no_creds.text, "ReceiveMessage http://127.0.0.1:9/0/q: no AWS credentials") ==
	      no_creds.text);
	CHECK_INT(bad_handle.calls, 1);
	CHECK_INT(bad_handle.cls, SQS_REJECTED);
	CHECK(
	    strstr(bad_handle.text, "DeleteMessage http://127.0.0.1:9/0/q: not a receipt handle") ==
	    bad_handle.text);
	CHECK_INT(many.cls, SQS_REJECTED);
	CHECK_INT(wait.cls, SQS_REJECTED);
	CHECK_INT(vis.cls, SQS_REJECTED);
	CHECK_INT(many.calls + wait.calls + vis.calls, 3);
	CHECK_INT(sqs_in_flight(q), 0);
	offline_free(q, base, http, creds);
}

static void test_cancel_and_free_silence_done(void)
{
	struct event_base *base;
	struct ses_http *http;
	struct ses_creds *creds;
	struct sqs *q = offline_client(&base, &http, &creds, QUEUE_URL, NULL, NULL);
	struct seen a = {0}, b = {0}, c = {0};
	struct sqs_call *ca;

	CHECK(q != NULL);
	ca = sqs_receive(q, 1, 0, -1, on_done, &a);
	sqs_delete(q, "AQEB", on_done, &b);
	sqs_cancel(ca);
	sqs_cancel(NULL);
	CHECK_INT(sqs_in_flight(q), 1);
	sqs_free(q);
	/* a new client on the same loop: only its own call reports */
	{
		struct sqs_config cfg = {QUEUE_URL, NULL, NULL, 0};
		char err[200];

		q = sqs_new(base, http, creds, &cfg, err, sizeof(err));
	}
	CHECK(q != NULL);
	sqs_delete(q, "AQEB", on_done, &c);
	run_loop(base);
	CHECK_INT(a.calls, 0);
	CHECK_INT(b.calls, 0);
	CHECK_INT(c.calls, 1);
	offline_free(q, base, http, creds);
}

/* The first done frees the client: the second call must never report. */
static void test_free_from_inside_done(void)
{
	struct event_base *base;
	struct ses_http *http;
	struct ses_creds *creds;
	struct sqs *q = offline_client(&base, &http, &creds, QUEUE_URL, NULL, NULL);
	struct seen first = {0}, second = {0};

	CHECK(q != NULL);
	sqs_delete(q, "b", on_done, &second); /* linked first, reported last */
	sqs_delete(q, "a", on_done, &first);
	first.free_me = q;
	second.free_me = q;
	run_loop(base);
	CHECK_INT(first.calls + second.calls, 1);
	offline_free(NULL, base, http, creds);
}

static const struct unit_case UNIT_TESTS[] = {
    {"request_bodies", test_request_bodies},
    {"sign_matches_botocore", test_sign_matches_botocore},
    {"queue_urls_regions_endpoints", test_queue_urls_regions_endpoints},
    {"new_refuses_bad_config", test_new_refuses_bad_config},
    {"receive_answer_messages", test_receive_answer_messages},
    {"receive_answer_empty", test_receive_answer_empty},
    {"receive_answer_oversize_body", test_receive_answer_oversize_body},
    {"receive_answer_hostile", test_receive_answer_hostile},
    {"receive_answer_caps", test_receive_answer_caps},
    {"parse_error", test_parse_error},
    {"classify", test_classify},
    {"receipt_s3_notification_wrapped_and_raw", test_receipt_s3_notification_wrapped_and_raw},
    {"receipt_utf8_recipients_and_key", test_receipt_utf8_recipients_and_key},
    {"receipt_setup_notification", test_receipt_setup_notification},
    {"receipt_other_kinds_are_discarded", test_receipt_other_kinds_are_discarded},
    {"receipt_hostile_documents_are_refused", test_receipt_hostile_documents_are_refused},
    {"receipt_not_ses_at_all", test_receipt_not_ses_at_all},
    {"receipt_caps", test_receipt_caps},
    {"receipt_deep_and_cut_documents", test_receipt_deep_and_cut_documents},
    {"failures_are_reported_from_the_loop", test_failures_are_reported_from_the_loop},
    {"cancel_and_free_silence_done", test_cancel_and_free_silence_done},
    {"free_from_inside_done", test_free_from_inside_done},
};

UNIT_MAIN(UNIT_TESTS)
