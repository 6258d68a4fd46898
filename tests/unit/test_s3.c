/*
 * test_s3.c - the S3 client's pure parts and its promises about callbacks,
 * as scenarios.
 *
 * 1. Signing: AWS's published S3 SigV4 examples (S3 API reference, "Signature
 *    Calculations for the Authorization Header: Transferring Payload in a
 *    Single Chunk": GET Object with a Range, PUT Object, GET Bucket
 *    Lifecycle, GET Bucket (List Objects)), signed by s3_sign() byte for byte;
 *    then the URL and headers a client sends for each addressing style.
 * 2. Keys: URI encoding per segment and what counts as a key.
 * 3. The ListObjectsV2 parser: pages that must parse (entities, UTF-8,
 *    truncation) and hostile ones that must be refused whole.
 * 4. Error documents and their classes.
 * 5. The client without a network: failures found up front are reported
 *    from the loop and never inside the call; cancel and free keep done()
 *    from running; s3_free() from inside a done callback is safe.
 *
 * Test credentials only: the AWS documentation example keys.
 */
#include <strings.h>

#include <curl/curl.h>
#include <event2/event.h>

#include "ses/s3.h"
#include "ses/ses_creds.h"
#include "ses/ses_http.h"
#include "ses/sigv4.h"
#include "unit.h"

#define DOC_AKID   "AKIAIOSFODNN7EXAMPLE"
#define DOC_SECRET "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
#define DOC_TIME   1369353600 /* 20130524T000000Z */
#define DOC_HOST   "examplebucket.s3.amazonaws.com"

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

/* --- 1. signing -------------------------------------------------------------- */

static const struct sigv4_header RANGE[] = {{"Range", "bytes=0-9"}};
static const struct sigv4_header PUT_HEADERS[] = {{"Date", "Fri, 24 May 2013 00:00:00 GMT"},
                                                  {"x-amz-storage-class", "REDUCED_REDUNDANCY"}};

static const struct {
	const char *name, *method, *path, *query, *payload_hash;
	const struct sigv4_header *extra;
	size_t nextra;
	const char *signed_headers, *signature;
} AWS_EXAMPLES[] = {
    {"GET Object", "GET", "/test.txt", NULL, NULL, RANGE, 1,
     "host;range;x-amz-content-sha256;x-amz-date",
     "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"},
    /* sha256("Welcome to Amazon S3.") */
    {"PUT Object", "PUT", "/test%24file.text", NULL,
     "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072", PUT_HEADERS, 2,
     "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
     "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"},
    {"GET Bucket Lifecycle", "GET", "/", "lifecycle", NULL, NULL, 0,
     "host;x-amz-content-sha256;x-amz-date",
     "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"},
    {"GET Bucket (List Objects)", "GET", "/", "max-keys=2&prefix=J", NULL, NULL, 0,
     "host;x-amz-content-sha256;x-amz-date",
     "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"},
};

static void test_sign_aws_examples(void)
{
	size_t i;

	for (i = 0; i < sizeof(AWS_EXAMPLES) / sizeof(AWS_EXAMPLES[0]); i++) {
		struct s3_sign_input in = {AWS_EXAMPLES[i].method,
		                           DOC_HOST,
		                           AWS_EXAMPLES[i].path,
		                           AWS_EXAMPLES[i].query,
		                           "us-east-1",
		                           AWS_EXAMPLES[i].payload_hash,
		                           AWS_EXAMPLES[i].extra,
		                           AWS_EXAMPLES[i].nextra,
		                           DOC_TIME};
		const char *err = NULL;
		struct curl_slist *h = s3_sign(&in, &DOC_CREDS, &err);
		char want[512];

		CHECK(h != NULL);
		snprintf(want, sizeof(want),
		         "AWS4-HMAC-SHA256 Credential=" DOC_AKID
		         "/20130524/us-east-1/s3/aws4_request, SignedHeaders=%s, Signature=%s",
		         AWS_EXAMPLES[i].signed_headers, AWS_EXAMPLES[i].signature);
		if (strcmp(slist_get(h, "Authorization"), want) != 0)
			fprintf(stderr, "example: %s\n", AWS_EXAMPLES[i].name);
		CHECK_STR(slist_get(h, "Authorization"), want);
		CHECK_STR(slist_get(h, "X-Amz-Date"), "20130524T000000Z");
		CHECK_STR(slist_get(h, "X-Amz-Content-SHA256"), AWS_EXAMPLES[i].payload_hash
		                                                    ? AWS_EXAMPLES[i].payload_hash
		                                                    : SIGV4_EMPTY_SHA256);
		CHECK_STR(slist_get(h, "Host"), DOC_HOST);
		CHECK(slist_get(h, "X-Amz-Security-Token") == NULL);
		curl_slist_free_all(h);
	}
}

static void test_sign_session_token_is_sent_and_signed(void)
{
	struct sigv4_credentials cr = {DOC_AKID, DOC_SECRET, "FwoGZXIvYXdzEXAMPLETOKEN=="};
	struct s3_sign_input in = {"GET", DOC_HOST, "/test.txt", NULL,    "us-east-1",
	                           NULL,  NULL,     0,           DOC_TIME};
	const char *err = NULL;
	struct curl_slist *h = s3_sign(&in, &cr, &err);

	CHECK(h != NULL);
	CHECK_STR(slist_get(h, "X-Amz-Security-Token"), "FwoGZXIvYXdzEXAMPLETOKEN==");
	CHECK(strstr(slist_get(h, "Authorization"),
	             "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token,") !=
	      NULL);
	curl_slist_free_all(h);
}

static void test_sign_refuses(void)
{
	static const struct sigv4_header dup_host[] = {{"host", "evil.example"}};
	static const struct sigv4_header auth[] = {{"Authorization", "x"}};
	static const struct sigv4_header crlf[] = {{"Range", "bytes=0-9\r\nX-Evil: 1"}};
	struct s3_sign_input in = {"GET", DOC_HOST, "/k", NULL,    "us-east-1",
	                           NULL,  NULL,     0,    DOC_TIME};
	const char *err = NULL;

	in.extra = dup_host, in.nextra = 1;
	CHECK(s3_sign(&in, &DOC_CREDS, &err) == NULL && err != NULL);
	in.extra = auth, err = NULL;
	CHECK(s3_sign(&in, &DOC_CREDS, &err) == NULL && err != NULL);
	in.extra = crlf, err = NULL;
	CHECK(s3_sign(&in, &DOC_CREDS, &err) == NULL && err != NULL);
	in.extra = NULL, in.nextra = 0, in.region = "", err = NULL;
	CHECK(s3_sign(&in, &DOC_CREDS, &err) == NULL && err != NULL);
}

/* A client that is never used for I/O: s3_request_headers() is pure. */
static struct s3 *offline_client(struct event_base **base, struct ses_http **http,
                                 struct ses_creds **creds, const char *bucket, const char *region,
                                 const char *endpoint)
{
	struct s3_config cfg = {bucket, region, endpoint, 0, 0};
	char err[200];

	*base = event_base_new();
	*http = ses_http_new(*base, NULL, 2);
	*creds = ses_creds_new(*base, *http, NULL);
	return s3_new(*base, *http, *creds, &cfg, err, sizeof(err));
}

static void offline_free(struct s3 *s, struct event_base *base, struct ses_http *http,
                         struct ses_creds *creds)
{
	s3_free(s);
	ses_creds_free(creds);
	ses_http_free(http);
	event_base_free(base);
}

static const struct {
	const char *bucket, *region, *endpoint, *key, *query;
	const char *url, *host;
} ADDRESSING[] = {
    /* virtual-hosted: the bucket is in the host name */
    {"inbound-mail", "eu-west-1", NULL, "in/a b+c", NULL,
     "https://inbound-mail.s3.eu-west-1.amazonaws.com/in/a%20b%2Bc",
     "inbound-mail.s3.eu-west-1.amazonaws.com"},
    {"inbound-mail", "eu-west-1", NULL, NULL, "list-type=2&max-keys=1",
     "https://inbound-mail.s3.eu-west-1.amazonaws.com/?list-type=2&max-keys=1",
     "inbound-mail.s3.eu-west-1.amazonaws.com"},
    /* a dot would break the wildcard certificate: path-style */
    {"mail.example.com", "us-west-2", NULL, "k", NULL,
     "https://s3.us-west-2.amazonaws.com/mail.example.com/k", "s3.us-west-2.amazonaws.com"},
    /* an explicit endpoint (s3rver, MinIO): path-style */
    {"test", "us-east-1", "http://127.0.0.1:4568/", "x/\xc3\xbc.eml", NULL,
     "http://127.0.0.1:4568/test/x/%C3%BC.eml", "127.0.0.1:4568"},
    {"test", "us-east-1", "http://127.0.0.1:4568", NULL, "list-type=2",
     "http://127.0.0.1:4568/test?list-type=2", "127.0.0.1:4568"},
};

static void test_request_addressing(void)
{
	size_t i;

	for (i = 0; i < sizeof(ADDRESSING) / sizeof(ADDRESSING[0]); i++) {
		struct event_base *base;
		struct ses_http *http;
		struct ses_creds *creds;
		struct s3 *s = offline_client(&base, &http, &creds, ADDRESSING[i].bucket,
		                              ADDRESSING[i].region, ADDRESSING[i].endpoint);
		const char *err = NULL;
		char *url = NULL;
		struct curl_slist *h;

		CHECK(s != NULL);
		h = s3_request_headers(s, "GET", ADDRESSING[i].key, ADDRESSING[i].query, NULL, 0,
		                       &DOC_CREDS, DOC_TIME, &url, &err);
		CHECK(h != NULL);
		CHECK_STR(url, ADDRESSING[i].url);
		CHECK_STR(slist_get(h, "Host"), ADDRESSING[i].host);
		CHECK(strstr(slist_get(h, "Authorization"), "/us-east-1/") != NULL ||
		      strstr(slist_get(h, "Authorization"), ADDRESSING[i].region) != NULL);
		free(url);
		curl_slist_free_all(h);
		offline_free(s, base, http, creds);
	}
}

static void test_new_refuses_bad_config(void)
{
	static const struct {
		const char *bucket, *region, *endpoint;
	} bad[] = {
	    {NULL, "us-east-1", NULL},
	    {"ab", "us-east-1", NULL},
	    {"a/b", "us-east-1", NULL},
	    {"bucket", "", NULL},
	    {"bucket", NULL, NULL},
	    {"bucket", "US EAST", NULL},
	    {"bucket", "us-east-1", "ftp://x"},
	    {"bucket", "us-east-1", "http://h/path"},
	    {"bucket", "us-east-1", "http://"},
	    {"bucket", "us-east-1", "http://u@h"},
	    {"buc ket", "us-east-1", NULL},
	};
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct s3_config cfg = {bad[i].bucket, bad[i].region, bad[i].endpoint, 0, 0};
		char err[200] = "";

		CHECK(s3_new(NULL, NULL, NULL, &cfg, err, sizeof(err)) == NULL);
		CHECK(err[0] != '\0');
	}
}

/* --- 2. keys ------------------------------------------------------------------ */

static void test_key_encode(void)
{
	static const struct {
		const char *key, *want;
	} cases[] = {
	    {"plain/key.eml", "plain/key.eml"},
	    {"a b", "a%20b"},
	    {"a+b", "a%2Bb"},
	    {"100%", "100%25"},
	    {"unreserved-._~", "unreserved-._~"},
	    {"dir//x/../y/./z", "dir//x/../y/./z"},
	    {"\xc3\xbc\xe2\x82\xac", "%C3%BC%E2%82%AC"},
	    {"\xf0\x9f\x98\x80", "%F0%9F%98%80"},
	    {"!*'();:@&=$,?#[]", "%21%2A%27%28%29%3B%3A%40%26%3D%24%2C%3F%23%5B%5D"},
	    {"tab\there", "tab%09here"},
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *got = s3_key_encode(cases[i].key);
		CHECK_STR(got, cases[i].want);
		free(got);
	}
}

static void test_key_valid(void)
{
	static const struct {
		const char *key;
		int ok;
	} cases[] = {
	    {"a", 1},
	    {"inbound/\xc3\xbc", 1},
	    {"\xf4\x8f\xbf\xbf", 1}, /* U+10FFFF */
	    {"", 0},
	    {"\xc0\x80", 0},         /* overlong NUL */
	    {"\xe0\x80\xaf", 0},     /* overlong '/' */
	    {"\xed\xa0\x80", 0},     /* a surrogate */
	    {"\xf4\x90\x80\x80", 0}, /* past U+10FFFF */
	    {"\xc3", 0},             /* cut short */
	    {"\xff", 0},
	};
	char key[S3_KEY_MAX + 2];
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		CHECK_INT(s3_key_valid(cases[i].key) == 0, cases[i].ok);
	CHECK(s3_key_valid(NULL) == -1);
	memset(key, 'k', S3_KEY_MAX);
	key[S3_KEY_MAX] = '\0';
	CHECK(s3_key_valid(key) == 0);
	key[S3_KEY_MAX] = 'k';
	key[S3_KEY_MAX + 1] = '\0';
	CHECK(s3_key_valid(key) == -1);
}

/* --- 3. ListObjectsV2 --------------------------------------------------------- */

#define LBR_OPEN                                                                                   \
	"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult "                           \
	"xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
#define LBR_CLOSE "</ListBucketResult>"
#define ENTRY(key, etag, size)                                                                     \
	"<Contents><Key>" key "</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified>"        \
	"<ETag>" etag "</ETag><Size>" size "</Size><StorageClass>STANDARD</StorageClass>"          \
	"</Contents>"

static void test_list_entities_utf8_truncation(void)
{
	static const char xml[] = LBR_OPEN
	    "<Name>b</Name><IsTruncated>true</IsTruncated>"
	    "<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=&amp;x"
	    "</NextContinuationToken>" ENTRY("in/a&amp;b &lt;c&gt; &quot;d&quot; &apos;e&apos;",
	                                     "&quot;9b2cf535f27731c974343645a3985328&quot;", "42")
	        ENTRY("in/caf&#233;/&#x1F600;+%20.eml", "\"abc-2\"", "0")
	            ENTRY("in/big", "&quot;x&quot;", "9999999999999999999") LBR_CLOSE;
	struct s3_list l;
	char err[128] = "";

	CHECK(s3_parse_list(xml, strlen(xml), &l, err, sizeof(err)) == 0);
	CHECK_INT(l.nobjects, 3);
	CHECK_STR(l.objects[0].key, "in/a&b <c> \"d\" 'e'");
	CHECK_STR(l.objects[0].etag, "9b2cf535f27731c974343645a3985328");
	CHECK_INT(l.objects[0].size, 42);
	CHECK_STR(l.objects[1].key, "in/caf\xc3\xa9/\xf0\x9f\x98\x80+%20.eml");
	CHECK_STR(l.objects[1].etag, "abc-2");
	CHECK_INT(l.objects[1].size, 0);
	CHECK(l.objects[2].size == 9999999999999999999ULL);
	CHECK_INT(l.truncated, 1);
	CHECK_STR(l.next_token, "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=&x");
	s3_list_free(&l);
	s3_list_free(&l); /* idempotent on an emptied list */
}

static void test_list_last_and_empty_pages(void)
{
	static const char last[] = LBR_OPEN "<IsTruncated>false</IsTruncated>" ENTRY(
	    "k", "\"e\"", "1") "<NextContinuationToken>ignored</NextContinuationToken>" LBR_CLOSE;
	static const char empty[] = LBR_OPEN "<Name>b</Name><KeyCount>0</KeyCount>"
	                                     "<IsTruncated>false</IsTruncated>" LBR_CLOSE;
	/* s3rver and S3 leave ETag out for nothing; an entry without one is fine */
	static const char no_etag[] =
	    LBR_OPEN "<Contents><Key>k</Key><Size>5</Size></Contents>" LBR_CLOSE;
	struct s3_list l;
	char err[128];

	CHECK(s3_parse_list(last, strlen(last), &l, err, sizeof(err)) == 0);
	CHECK_INT(l.nobjects, 1);
	CHECK_INT(l.truncated, 0);
	CHECK(l.next_token == NULL);
	s3_list_free(&l);
	CHECK(s3_parse_list(empty, strlen(empty), &l, err, sizeof(err)) == 0);
	CHECK_INT(l.nobjects, 0);
	CHECK(l.objects == NULL);
	s3_list_free(&l);
	CHECK(s3_parse_list(no_etag, strlen(no_etag), &l, err, sizeof(err)) == 0);
	CHECK_STR(l.objects[0].etag, "");
	CHECK_INT(l.objects[0].size, 5);
	s3_list_free(&l);
}

/* Flags outside every <Contents> count; a key's own text cannot forge them. */
static void test_list_ignores_flags_inside_contents(void)
{
	static const char xml[] =
	    LBR_OPEN "<Contents><IsTruncated>true</IsTruncated><Key>k</Key><Size>1</Size>"
	             "</Contents><IsTruncated>false</IsTruncated>" LBR_CLOSE;
	struct s3_list l;
	char err[128];

	CHECK(s3_parse_list(xml, strlen(xml), &l, err, sizeof(err)) == 0);
	CHECK_INT(l.truncated, 0);
	s3_list_free(&l);
}

static void test_list_hostile_pages_are_refused(void)
{
	static const char *const bad[] = {
	    "",
	    "<Error><Code>AccessDenied</Code></Error>",
	    "<ListBucketResult>" ENTRY("k", "e", "1"), /* unclosed root */
	    LBR_OPEN "<Contents><Key>k</Key><Size>1</Size>" LBR_CLOSE,
	    LBR_OPEN
	    "<Contents><Contents><Key>k</Key><Size>1</Size></Contents></Contents>" LBR_CLOSE,
	    LBR_OPEN "<Contents/>" LBR_CLOSE,
	    LBR_OPEN "<Contents><Size>1</Size></Contents>" LBR_CLOSE,
	    LBR_OPEN ENTRY("", "e", "1") LBR_CLOSE,
	    LBR_OPEN "<Contents><Key/><Size>1</Size></Contents>" LBR_CLOSE,
	    LBR_OPEN "<Contents><Key>k</Key></Contents>" LBR_CLOSE,
	    LBR_OPEN ENTRY("k", "e", "-1") LBR_CLOSE,
	    LBR_OPEN ENTRY("k", "e", "1e3") LBR_CLOSE,
	    LBR_OPEN ENTRY("k", "e", "") LBR_CLOSE,
	    LBR_OPEN ENTRY("k", "e", "12345678901234567890") LBR_CLOSE,
	    LBR_OPEN ENTRY("&#xD800;", "e", "1") LBR_CLOSE, /* a lone surrogate */
	    LBR_OPEN ENTRY("\xc0\xaf", "e", "1") LBR_CLOSE, /* overlong UTF-8 */
	    LBR_OPEN "<IsTruncated>true</IsTruncated>" ENTRY("k", "e", "1") LBR_CLOSE,
	    LBR_OPEN "<IsTruncated>true</IsTruncated><NextContinuationToken/>" LBR_CLOSE,
	    LBR_OPEN "<IsTruncated>yes</IsTruncated>" LBR_CLOSE,
	    LBR_OPEN "<Contents><Key>k</Key><Size>1</Size><ETag>"
	             "0123456789012345678901234567890123456789012345678901234567890123456789"
	             "0123456789012345678901234567890123456789012345678901234567890123456789"
	             "</ETag></Contents>" LBR_CLOSE,
	};
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct s3_list l;
		char err[128] = "";

		if (s3_parse_list(bad[i], strlen(bad[i]), &l, err, sizeof(err)) != -1)
			fprintf(stderr, "accepted bad[%zu]: %s\n", i, bad[i]);
		CHECK(s3_parse_list(bad[i], strlen(bad[i]), &l, err, sizeof(err)) == -1);
		CHECK(err[0] != '\0');
		CHECK(l.objects == NULL && l.nobjects == 0 && l.next_token == NULL);
	}
}

/* Built at run time: sizes and counts right at the caps and one past them. */
static char *page_of(size_t nkeys, size_t keylen, const char *extra)
{
	size_t cap = 256 + nkeys * (keylen + 64) + strlen(extra), n, i;
	char *xml = malloc(cap), *key = malloc(keylen + 1);

	memset(key, 'k', keylen);
	key[keylen] = '\0';
	n = (size_t)snprintf(xml, cap, "%s%s", LBR_OPEN, extra);
	for (i = 0; i < nkeys; i++)
		n += (size_t)snprintf(xml + n, cap - n,
		                      "<Contents><Key>%s</Key><Size>%zu</Size></Contents>", key, i);
	snprintf(xml + n, cap - n, "%s", LBR_CLOSE);
	free(key);
	return xml;
}

static void test_list_caps(void)
{
	struct s3_list l;
	char err[128], *xml, token[S3_TOKEN_MAX + 80];

	xml = page_of(S3_LIST_MAX_KEYS, 8, "");
	CHECK(s3_parse_list(xml, strlen(xml), &l, err, sizeof(err)) == 0);
	CHECK_INT(l.nobjects, S3_LIST_MAX_KEYS);
	s3_list_free(&l);
	free(xml);
	xml = page_of(S3_LIST_MAX_KEYS + 1, 8, "");
	CHECK(s3_parse_list(xml, strlen(xml), &l, err, sizeof(err)) == -1);
	free(xml);

	xml = page_of(1, S3_KEY_MAX, "");
	CHECK(s3_parse_list(xml, strlen(xml), &l, err, sizeof(err)) == 0);
	CHECK_INT(strlen(l.objects[0].key), S3_KEY_MAX);
	s3_list_free(&l);
	free(xml);
	xml = page_of(1, S3_KEY_MAX + 1, "");
	CHECK(s3_parse_list(xml, strlen(xml), &l, err, sizeof(err)) == -1);
	CHECK(strstr(err, "1024") != NULL);
	free(xml);

	snprintf(
	    token, sizeof(token),
	    "<IsTruncated>true</IsTruncated><NextContinuationToken>%0*d</NextContinuationToken>",
	    S3_TOKEN_MAX, 7);
	xml = page_of(1, 3, token);
	CHECK(s3_parse_list(xml, strlen(xml), &l, err, sizeof(err)) == 0);
	CHECK_INT(strlen(l.next_token), S3_TOKEN_MAX);
	s3_list_free(&l);
	free(xml);
	snprintf(
	    token, sizeof(token),
	    "<IsTruncated>true</IsTruncated><NextContinuationToken>%0*d</NextContinuationToken>",
	    S3_TOKEN_MAX + 1, 7);
	xml = page_of(1, 3, token);
	CHECK(s3_parse_list(xml, strlen(xml), &l, err, sizeof(err)) == -1);
	free(xml);
}

static void test_list_nul_byte_is_refused(void)
{
	static const char xml[] =
	    LBR_OPEN "<Contents><Key>a\0b</Key><Size>1</Size></Contents>" LBR_CLOSE;
	struct s3_list l;
	char err[128];

	CHECK(s3_parse_list(xml, sizeof(xml) - 1, &l, err, sizeof(err)) == -1);
	CHECK(strstr(err, "NUL") != NULL);
}

/* --- 4. errors ------------------------------------------------------------------ */

static void test_parse_error(void)
{
	static const char doc[] =
	    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SignatureDoesNotMatch</Code>"
	    "<Message>The request signature we calculated does not match &amp; so on\x01</Message>"
	    "<StringToSign>AWS4-HMAC-SHA256\n...</StringToSign><RequestId>R1</RequestId></Error>";
	char code[S3_CODE_MAX], msg[256];

	CHECK(s3_parse_error(doc, strlen(doc), code, sizeof(code), msg, sizeof(msg)) == 0);
	CHECK_STR(code, "SignatureDoesNotMatch");
	CHECK_STR(msg, "The request signature we calculated does not match & so on ");
	CHECK(s3_parse_error("<html>502</html>", 16, code, sizeof(code), msg, sizeof(msg)) == -1);
	CHECK_STR(code, "");
	CHECK(s3_parse_error("", 0, code, sizeof(code), msg, sizeof(msg)) == -1);
	CHECK(s3_parse_error("<Error><Code></Code></Error>", 28, code, sizeof(code), msg,
	                     sizeof(msg)) == -1);
}

static void test_classify(void)
{
	static const struct {
		long status;
		const char *code;
		enum s3_class want;
	} cases[] = {
	    {200, "", S3_OK},
	    {204, NULL, S3_OK},
	    {0, "", S3_TRANSIENT},
	    {500, "InternalError", S3_TRANSIENT},
	    {503, "SlowDown", S3_TRANSIENT},
	    {400, "RequestTimeout", S3_TRANSIENT},
	    {400, "ExpiredToken", S3_TRANSIENT},
	    {502, "", S3_TRANSIENT},
	    {429, "", S3_TRANSIENT},
	    {200, "InternalError", S3_TRANSIENT}, /* CopyObject's late failure */
	    {403, "AccessDenied", S3_OPERATOR},
	    {403, "InvalidAccessKeyId", S3_OPERATOR},
	    {403, "SignatureDoesNotMatch", S3_OPERATOR},
	    {404, "NoSuchBucket", S3_OPERATOR},
	    {403, "RequestTimeTooSkewed", S3_OPERATOR},
	    {301, "PermanentRedirect", S3_OPERATOR},
	    {400, "AuthorizationHeaderMalformed", S3_OPERATOR},
	    {403, "", S3_OPERATOR},
	    {404, "NoSuchKey", S3_NOT_FOUND},
	    {404, "", S3_NOT_FOUND},
	    {400, "InvalidArgument", S3_REJECTED},
	    {412, "PreconditionFailed", S3_REJECTED},
	    {400, "", S3_REJECTED},
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (s3_classify(cases[i].status, cases[i].code) != cases[i].want)
			fprintf(stderr, "case %zu: %ld %s\n", i, cases[i].status,
			        cases[i].code ? cases[i].code : "(null)");
		CHECK_STR(s3_class_name(s3_classify(cases[i].status, cases[i].code)),
		          s3_class_name(cases[i].want));
	}
	CHECK(s3_hint("SignatureDoesNotMatch") != NULL);
	CHECK(strstr(s3_hint("RequestTimeTooSkewed"), "clock") != NULL);
	CHECK(s3_hint("NoSuchKey") == NULL);
	CHECK(s3_hint("") == NULL);
}

/* --- 5. the client, offline ----------------------------------------------------- */

struct seen {
	int calls;
	enum s3_class cls;
	char text[S3_TEXT_MAX];
	struct s3 *free_me; /* s3_free() from inside done */
};

static void on_done(void *arg, const struct s3_result *r)
{
	struct seen *w = arg;

	w->calls++;
	w->cls = r->cls;
	snprintf(w->text, sizeof(w->text), "%s", r->text);
	if (w->free_me) {
		s3_free(w->free_me);
		w->free_me = NULL;
	}
}

static size_t sink_all(void *arg, const char *data, size_t len)
{
	return len;
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
	struct s3 *s =
	    offline_client(&base, &http, &creds, "bucket", "us-east-1", "http://127.0.0.1:9");
	struct seen no_creds = {0}, bad_key = {0}, bad_dst = {0}, long_prefix = {0};
	char prefix[S3_KEY_MAX + 2];

	memset(prefix, 'p', sizeof(prefix) - 1);
	prefix[sizeof(prefix) - 1] = '\0';
	CHECK(s != NULL);
	/* creds never started: ses_creds_get() is NULL */
	s3_get(s, "k", sink_all, NULL, on_done, &no_creds);
	s3_delete(s, "", on_done, &bad_key);
	s3_copy(s, "k", "\xff", on_done, &bad_dst);
	s3_list(s, prefix, NULL, 0, on_done, &long_prefix);
	CHECK_INT(s3_in_flight(s), 4);
	CHECK_INT(no_creds.calls + bad_key.calls + bad_dst.calls + long_prefix.calls, 0);
	run_loop(base);
	CHECK_INT(no_creds.calls, 1);
	CHECK_INT(no_creds.cls, S3_TRANSIENT);
	CHECK(strstr(no_creds.text, "GetObject s3://bucket/k: no AWS credentials") ==
	      no_creds.text);
	CHECK_INT(bad_key.calls, 1);
	CHECK_INT(bad_key.cls, S3_REJECTED);
	CHECK_INT(bad_dst.calls, 1);
	CHECK_INT(bad_dst.cls, S3_REJECTED);
	CHECK(strstr(bad_dst.text, "CopyObject s3://bucket/k -> %FF") == bad_dst.text);
	CHECK_INT(long_prefix.calls, 1);
	CHECK_INT(long_prefix.cls, S3_REJECTED);
	CHECK_INT(s3_in_flight(s), 0);
	offline_free(s, base, http, creds);
}

static void test_cancel_and_free_silence_done(void)
{
	struct event_base *base;
	struct ses_http *http;
	struct ses_creds *creds;
	struct s3 *s = offline_client(&base, &http, &creds, "bucket", "us-east-1", NULL);
	struct seen a = {0}, b = {0}, c = {0};
	struct s3_call *ca;

	CHECK(s != NULL);
	ca = s3_get(s, "k", sink_all, NULL, on_done, &a);
	s3_probe(s, "in/", on_done, &b);
	s3_cancel(ca);
	s3_cancel(NULL);
	CHECK_INT(s3_in_flight(s), 1);
	s3_free(s);
	/* a new client on the same loop: only its own call reports */
	{
		struct s3_config cfg = {"bucket", "us-east-1", NULL, 0, 0};
		char err[200];

		s = s3_new(base, http, creds, &cfg, err, sizeof(err));
	}
	CHECK(s != NULL);
	s3_delete(s, "x", on_done, &c);
	run_loop(base);
	CHECK_INT(a.calls, 0);
	CHECK_INT(b.calls, 0);
	CHECK_INT(c.calls, 1);
	offline_free(s, base, http, creds);
}

/* The first done frees the client: the second call must never report. */
static void test_free_from_inside_done(void)
{
	struct event_base *base;
	struct ses_http *http;
	struct ses_creds *creds;
	struct s3 *s = offline_client(&base, &http, &creds, "bucket", "us-east-1", NULL);
	struct seen first = {0}, second = {0};

	CHECK(s != NULL);
	s3_delete(s, "b", on_done, &second); /* linked first, reported last */
	s3_delete(s, "a", on_done, &first);
	first.free_me = s;
	second.free_me = s;
	run_loop(base);
	CHECK_INT(first.calls + second.calls, 1);
	offline_free(NULL, base, http, creds);
}

static const struct unit_case UNIT_TESTS[] = {
    {"sign_aws_examples", test_sign_aws_examples},
    {"sign_session_token_is_sent_and_signed", test_sign_session_token_is_sent_and_signed},
    {"sign_refuses", test_sign_refuses},
    {"request_addressing", test_request_addressing},
    {"new_refuses_bad_config", test_new_refuses_bad_config},
    {"key_encode", test_key_encode},
    {"key_valid", test_key_valid},
    {"list_entities_utf8_truncation", test_list_entities_utf8_truncation},
    {"list_last_and_empty_pages", test_list_last_and_empty_pages},
    {"list_ignores_flags_inside_contents", test_list_ignores_flags_inside_contents},
    {"list_hostile_pages_are_refused", test_list_hostile_pages_are_refused},
    {"list_caps", test_list_caps},
    {"list_nul_byte_is_refused", test_list_nul_byte_is_refused},
    {"parse_error", test_parse_error},
    {"classify", test_classify},
    {"failures_are_reported_from_the_loop", test_failures_are_reported_from_the_loop},
    {"cancel_and_free_silence_done", test_cancel_and_free_silence_done},
    {"free_from_inside_done", test_free_from_inside_done},
};

UNIT_MAIN(UNIT_TESTS)
