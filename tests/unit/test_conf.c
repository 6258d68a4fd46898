/*
 * test_conf.c - relay.ini loading: defaults, every key, units, and every error.
 *
 * Most cases are rows of one table: an ini text, the error it must produce
 * (a substring, plus the line the message must name) or NULL, and a function
 * checking the loaded values.  Each row is its own unit case, so the driver
 * can run and report rows one by one.  Cases that need more than a text
 * (generated long lines, the environment, the shipped relay.ini.example) are
 * plain functions after the table.
 *
 * No secret value may ever appear in an error: rows use SECRETVALUE in
 * secrets and every error is checked for it.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf/conf.h"
#include "relay/log.h"
#include "relay/netaddr.h"
#include "relay/util.h"
#include "tests/unit/unit.h"

#define LISTEN "[listen:local]\naddress = 127.0.0.1:2525\n" /* two lines */
#define MB     (1024ULL * 1024)

struct conf_row {
	const char *name;
	const char *ini;
	const char *err; /* substring of the one-line error; NULL: must load */
	int line;        /* line the error must name; 0: "PATH: ..." */
	void (*check)(const struct conf *c);
};

/* ---- helpers ------------------------------------------------------------ */

static char *write_temp(const char *text, size_t len)
{
	const char *dir = getenv("TMPDIR");
	char *path = xasprintf("%s/test_conf.XXXXXX", dir && *dir ? dir : "/tmp");
	int fd = mkstemp(path);

	if (fd == -1 || write(fd, text, len) != (ssize_t)len || close(fd) == -1) {
		perror(path);
		exit(2);
	}
	return path;
}

static int port_of(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)ss)->sin_port);
	return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
}

static int has_net(const struct conf_listener *l, const char *cidr)
{
	struct netaddr_cidr want;
	size_t i;

	if (netaddr_parse_cidr(cidr, &want) == -1)
		return 0;
	for (i = 0; i < l->nnetworks; i++)
		if (memcmp(&l->networks[i], &want, sizeof(want)) == 0)
			return 1;
	return 0;
}

static void clear_env(void)
{
	unsetenv("AWS_REGION");
	unsetenv("AWS_DEFAULT_REGION");
}

/* ---- checks of loaded values --------------------------------------------- */

static void check_defaults(const struct conf *c)
{
	const struct conf_listener *l = &c->listeners[0];
	char host[256] = "";

	gethostname(host, sizeof(host) - 1);
	CHECK_STR(c->hostname, host);
	CHECK_STR(c->spool, "/var/spool/sesrelay");
	CHECK(c->user == NULL);
	CHECK_INT(c->log, CONF_LOG_STDERR);
	CHECK_INT(c->max_message_size, 40 * MB);
	CHECK_INT(c->max_recipients, 100);
	CHECK_INT(c->max_connections, 1000);
	CHECK_INT(c->max_connections_per_ip, 20);
	CHECK_INT(c->spool_reserve, 100 * MB);
	CHECK_INT(c->log_level, LOG_LEVEL_INFO);
	CHECK_INT(c->smtp_timeout, 300);
	CHECK_INT(c->data_timeout, 600);
	CHECK_INT(c->session_timeout, 3600);

	CHECK_INT(c->nlisteners, 1);
	CHECK_STR(l->name, "local");
	CHECK_STR(l->address, "127.0.0.1:2525");
	CHECK_INT(l->ss.ss_family, AF_INET);
	CHECK_INT(l->sslen, sizeof(struct sockaddr_in));
	CHECK_INT(port_of(&l->ss), 2525);
	CHECK_INT(l->tls, CONF_TLS_NONE);
	CHECK_INT(l->auth, CONF_AUTH_OFF);
	CHECK_INT(l->nnetworks, 2);
	CHECK(has_net(l, "127.0.0.0/8"));
	CHECK(has_net(l, "::1/128"));
	CHECK_INT(l->proxy_protocol, 0);

	CHECK(c->tls_certificate == NULL);
	CHECK(c->tls_private_key == NULL);
	CHECK(c->users_file == NULL);

	CHECK_INT(c->transport, CONF_TRANSPORT_API);
	CHECK(c->region == NULL);
	CHECK_INT(c->api_version, 2);
	CHECK(c->endpoint == NULL);
	CHECK(c->configuration_set == NULL);
	CHECK(c->profile == NULL);
	CHECK(c->access_key_id == NULL);
	CHECK(c->secret_access_key == NULL);
	CHECK(c->max_send_rate == 0);
	CHECK_INT(c->concurrency, 16);
	CHECK(c->smtp_host == NULL);
	CHECK_INT(c->smtp_port, 587);
	CHECK_INT(c->smtp_tls, CONF_TLS_STARTTLS);
	CHECK(c->smtp_username == NULL);
	CHECK(c->smtp_password == NULL);
	CHECK(c->ca_file == NULL);

	CHECK_INT(c->retry_initial, 60);
	CHECK_INT(c->retry_max, 3600);
	CHECK_INT(c->lifetime, 5 * 86400);
	CHECK(c->bounce_from == NULL);
	CHECK(c->http_address == NULL);
}

static void check_defaults_line(const struct conf *c)
{
	CHECK_INT(c->listeners[0].line, 1);
}

static void check_relay(const struct conf *c)
{
	CHECK_STR(c->hostname, "relay.home.example");
	CHECK_STR(c->spool, "/srv/spool");
	CHECK_STR(c->user, "root");
	CHECK_INT(c->log, CONF_LOG_SYSLOG);
	CHECK_INT(c->max_message_size, 20 * MB);
	CHECK_INT(c->max_recipients, 50);
	CHECK_INT(c->max_connections, 10);
	CHECK_INT(c->max_connections_per_ip, 3);
	CHECK_INT(c->spool_reserve, 1024 * MB);
	CHECK_INT(c->log_level, LOG_LEVEL_DEBUG);
	CHECK_INT(c->smtp_timeout, 90);
	CHECK_INT(c->data_timeout, 2 * 3600);
	CHECK_INT(c->session_timeout, 86400);
	CHECK_INT(c->listeners[0].line, 15);
}

static void check_listeners(const struct conf *c)
{
	const struct conf_listener *a = &c->listeners[0], *b = &c->listeners[1];

	CHECK_STR(c->tls_certificate, "/etc/sesrelay/fullchain.pem");
	CHECK_STR(c->tls_private_key, "/etc/sesrelay/privkey.pem");
	CHECK_STR(c->users_file, "/etc/sesrelay/users");
	CHECK_INT(c->nlisteners, 2);

	CHECK_STR(a->name, "sub-mission_2");
	CHECK_INT(a->line, 6);
	CHECK_STR(a->address, "[::]:587");
	CHECK_INT(a->ss.ss_family, AF_INET6);
	CHECK_INT(a->sslen, sizeof(struct sockaddr_in6));
	CHECK_INT(port_of(&a->ss), 587);
	CHECK_INT(a->tls, CONF_TLS_STARTTLS);
	CHECK_INT(a->auth, CONF_AUTH_REQUIRED);
	CHECK_INT(a->nnetworks, 2);
	CHECK(has_net(a, "192.168.0.0/16"));
	CHECK(has_net(a, "10.1.2.3/32"));
	CHECK_INT(a->proxy_protocol, 1);

	CHECK_STR(b->name, "smtps");
	CHECK_INT(b->line, 12);
	CHECK_INT(port_of(&b->ss), 465);
	CHECK_INT(b->tls, CONF_TLS_IMPLICIT);
	CHECK_INT(b->auth, CONF_AUTH_OPTIONAL);
	CHECK_INT(b->nnetworks, 2);
	CHECK_INT(b->proxy_protocol, 0);
}

static void check_ses_api(const struct conf *c)
{
	CHECK_INT(c->transport, CONF_TRANSPORT_API);
	CHECK_STR(c->region, "eu-west-1");
	CHECK_INT(c->api_version, 1);
	CHECK_INT(c->max_message_size, 10 * MB);
	CHECK_STR(c->endpoint, "http://127.0.0.1:8005");
	CHECK_STR(c->configuration_set, "my-set");
	CHECK_STR(c->profile, "mail");
	CHECK_STR(c->access_key_id, "AKIDEXAMPLE");
	CHECK_STR(c->secret_access_key, "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
	CHECK(c->max_send_rate == 0.5);
	CHECK_INT(c->concurrency, 4);
	CHECK_STR(c->ca_file, "/etc/ssl/custom.pem");
}

static void check_ses_smtp(const struct conf *c)
{
	CHECK_INT(c->transport, CONF_TRANSPORT_SMTP);
	CHECK_INT(c->max_message_size, 40 * MB);
	CHECK_STR(c->smtp_host, "email-smtp.eu-west-1.amazonaws.com");
	CHECK_INT(c->smtp_port, 465);
	CHECK_INT(c->smtp_tls, CONF_TLS_IMPLICIT);
	CHECK_STR(c->smtp_username, "AKIDEXAMPLE");
	CHECK_STR(c->smtp_password, "BPaSSwordEXAMPLE/xyz+");
	CHECK(c->max_send_rate == 14);
}

static void check_queue_http(const struct conf *c)
{
	CHECK_INT(c->retry_initial, 30);
	CHECK_INT(c->retry_max, 7200);
	CHECK_INT(c->lifetime, 86400);
	CHECK_STR(c->bounce_from, "mailer-daemon@example.com");
	CHECK_STR(c->http_address, "127.0.0.1:9025");
	CHECK_INT(c->http_ss.ss_family, AF_INET);
	CHECK_INT(c->http_sslen, sizeof(struct sockaddr_in));
	CHECK_INT(port_of(&c->http_ss), 9025);
}

static void check_sizes(const struct conf *c)
{
	CHECK_INT(c->max_message_size, 512 * 1024);
	CHECK_INT(c->spool_reserve, 0);
}

static void check_sizes_lower(const struct conf *c)
{
	CHECK_INT(c->max_message_size, 2048);
	CHECK_INT(c->spool_reserve, 1024ULL * MB);
}

static void check_durations(const struct conf *c)
{
	CHECK_INT(c->smtp_timeout, 45);
	CHECK_INT(c->data_timeout, 15 * 60);
	CHECK_INT(c->session_timeout, 3 * 3600);
	CHECK_INT(c->retry_initial, 1);
	CHECK_INT(c->retry_max, 90);
	CHECK_INT(c->lifetime, 30 * 86400);
}

static void check_booleans(const struct conf *c)
{
	static const int want[] = {1, 0, 1, 0, 1, 0, 1, 0, 1};
	size_t i;

	CHECK_INT(c->nlisteners, 9);
	for (i = 0; i < 9; i++)
		CHECK_INT(c->listeners[i].proxy_protocol, want[i]);
}

static void check_case_insensitive(const struct conf *c)
{
	CHECK_INT(c->log_level, LOG_LEVEL_DEBUG);
	CHECK_INT(c->log, CONF_LOG_SYSLOG);
	CHECK_INT(c->listeners[0].auth, CONF_AUTH_OFF);
	CHECK_INT(c->listeners[0].proxy_protocol, 1);
	CHECK_INT(c->transport, CONF_TRANSPORT_SMTP);
	CHECK(c->max_send_rate == 0);
}

static void check_level_error(const struct conf *c)
{
	CHECK_INT(c->log_level, LOG_LEVEL_ERROR);
}

static void check_level_warn(const struct conf *c)
{
	CHECK_INT(c->log_level, LOG_LEVEL_WARN);
}

static void check_at_limit(const struct conf *c)
{
	CHECK_INT(c->max_message_size, 10 * MB);
}

static void check_continuation(const struct conf *c)
{
	const struct conf_listener *l = &c->listeners[0];

	CHECK_INT(l->nnetworks, 4);
	CHECK(has_net(l, "127.0.0.0/8"));
	CHECK(has_net(l, "192.168.0.0/16"));
	CHECK(has_net(l, "fd00::/8"));
	CHECK(has_net(l, "10.0.0.0/8"));
	CHECK_INT(l->proxy_protocol, 1);
}

static void check_repeated_networks(const struct conf *c)
{
	const struct conf_listener *l = &c->listeners[0];

	CHECK_INT(l->nnetworks, 3);
	CHECK(has_net(l, "10.0.0.0/8"));
	CHECK(has_net(l, "192.168.1.0/24"));
	CHECK(has_net(l, "::1/128"));
}

static void check_no_networks(const struct conf *c)
{
	CHECK_INT(c->listeners[0].nnetworks, 0);
	CHECK(c->listeners[0].networks == NULL);
}

static void check_one_network(const struct conf *c)
{
	CHECK_INT(c->listeners[0].nnetworks, 1);
	CHECK(has_net(&c->listeners[0], "10.0.0.0/8"));
}

static void check_loopback_auth(const struct conf *c)
{
	CHECK_INT(c->nlisteners, 2);
	CHECK_INT(c->listeners[0].auth, CONF_AUTH_REQUIRED);
	CHECK_INT(c->listeners[1].auth, CONF_AUTH_OPTIONAL);
	CHECK_INT(c->listeners[1].ss.ss_family, AF_INET6);
}

static void check_syntax_variants(const struct conf *c)
{
	CHECK_STR(c->spool, "/a;b");
	CHECK_STR(c->hostname, "relay.example");
	CHECK_INT(c->max_recipients, 7);
	CHECK_INT(c->listeners[0].line, 7);
	CHECK_INT(port_of(&c->listeners[0].ss), 2525);
}

/* ---- the table ----------------------------------------------------------- */

static const struct conf_row rows[] = {
    /* values */
    {"defaults", LISTEN, NULL, 0, check_defaults},
    {"defaults_listener_line", LISTEN, NULL, 0, check_defaults_line},
    {"empty_values_are_defaults",
     "[relay]\nhostname =\nspool =\nuser =\nlog =\nmax_message_size =\nmax_recipients =\n"
     "max_connections =\nmax_connections_per_ip =\nspool_reserve =\nlog_level =\n"
     "smtp_timeout =\ndata_timeout =\nsession_timeout =\n"
     "[listen:local]\naddress = 127.0.0.1:2525\ntls =\nauth =\nproxy_protocol =\n"
     "[tls]\ncertificate =\nprivate_key =\n[users]\nfile =\n"
     "[ses]\ntransport =\nregion =\napi_version =\nendpoint =\nconfiguration_set =\n"
     "profile =\naccess_key_id =\nsecret_access_key =\nmax_send_rate =\nconcurrency =\n"
     "smtp_host =\nsmtp_port =\nsmtp_tls =\nsmtp_username =\nsmtp_password =\nca_file =\n"
     "[queue]\nretry_initial =\nretry_max =\nlifetime =\nbounce_from =\n"
     "[http]\naddress =\n",
     NULL, 0, check_defaults},
    {"relay_keys",
     "[relay]\nhostname = relay.home.example\nspool = /srv/spool\nuser = root\n"
     "log = syslog\nmax_message_size = 20M\nmax_recipients = 50\nmax_connections = 10\n"
     "max_connections_per_ip = 3\nspool_reserve = 1G\nlog_level = debug\n"
     "smtp_timeout = 90\ndata_timeout = 2h\nsession_timeout = 1d\n" LISTEN,
     NULL, 0, check_relay},
    {"listener_keys",
     "[tls]\ncertificate = /etc/sesrelay/fullchain.pem\nprivate_key = /etc/sesrelay/privkey.pem\n"
     "[users]\nfile = /etc/sesrelay/users\n"
     "[listen:sub-mission_2]\naddress = [::]:587\ntls = starttls\nauth = required\n"
     "relay_networks = 192.168.0.0/16, 10.1.2.3\nproxy_protocol = yes\n"
     "[listen:smtps]\naddress = 0.0.0.0:465\ntls = implicit\nauth = optional\n",
     NULL, 0, check_listeners},
    {"ses_api_keys",
     "[ses]\ntransport = api\nregion = eu-west-1\napi_version = 1\n"
     "endpoint = http://127.0.0.1:8005\nconfiguration_set = my-set\nprofile = mail\n"
     "access_key_id = AKIDEXAMPLE\n"
     "secret_access_key = wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY\n"
     "max_send_rate = 0.5\nconcurrency = 4\nca_file = /etc/ssl/custom.pem\n" LISTEN,
     NULL, 0, check_ses_api},
    {"ses_smtp_keys",
     "[ses]\ntransport = smtp\nsmtp_host = email-smtp.eu-west-1.amazonaws.com\n"
     "smtp_port = 465\nsmtp_tls = implicit\nsmtp_username = AKIDEXAMPLE\n"
     "smtp_password = BPaSSwordEXAMPLE/xyz+\nmax_send_rate = 14\n" LISTEN,
     NULL, 0, check_ses_smtp},
    {"queue_and_http_keys",
     "[queue]\nretry_initial = 30s\nretry_max = 2h\nlifetime = 1d\n"
     "bounce_from = mailer-daemon@example.com\n[http]\naddress = 127.0.0.1:9025\n" LISTEN,
     NULL, 0, check_queue_http},
    {"size_units", "[relay]\nmax_message_size = 512K\nspool_reserve = 0\n" LISTEN, NULL, 0,
     check_sizes},
    {"size_units_lowercase", "[relay]\nmax_message_size = 2k\nspool_reserve = 1g\n" LISTEN, NULL, 0,
     check_sizes_lower},
    {"duration_units",
     "[relay]\nsmtp_timeout = 45s\ndata_timeout = 15m\nsession_timeout = 3h\n"
     "[queue]\nretry_initial = 1\nretry_max = 90s\nlifetime = 30d\n" LISTEN,
     NULL, 0, check_durations},
    {"booleans",
     "[listen:a]\naddress = 127.0.0.1:2501\nproxy_protocol = yes\n"
     "[listen:b]\naddress = 127.0.0.1:2502\nproxy_protocol = no\n"
     "[listen:c]\naddress = 127.0.0.1:2503\nproxy_protocol = true\n"
     "[listen:d]\naddress = 127.0.0.1:2504\nproxy_protocol = false\n"
     "[listen:e]\naddress = 127.0.0.1:2505\nproxy_protocol = on\n"
     "[listen:f]\naddress = 127.0.0.1:2506\nproxy_protocol = off\n"
     "[listen:g]\naddress = 127.0.0.1:2507\nproxy_protocol = 1\n"
     "[listen:h]\naddress = 127.0.0.1:2508\nproxy_protocol = 0\n"
     "[listen:i]\naddress = 127.0.0.1:2509\nproxy_protocol = YES\n",
     NULL, 0, check_booleans},
    {"enums_ignore_case",
     "[relay]\nlog_level = DEBUG\nlog = Syslog\n[ses]\ntransport = SMTP\nmax_send_rate = Auto\n"
     "[listen:local]\naddress = 127.0.0.1:2525\nauth = Off\nproxy_protocol = On\n",
     NULL, 0, check_case_insensitive},
    {"log_level_error", "[relay]\nlog_level = error\n" LISTEN, NULL, 0, check_level_error},
    {"log_level_warn", "[relay]\nlog_level = warn\n" LISTEN, NULL, 0, check_level_warn},
    {"max_message_size_at_limit",
     "[relay]\nmax_message_size = 10M\n[ses]\napi_version = 1\n" LISTEN, NULL, 0, check_at_limit},
    {"relay_networks_continuation",
     "[listen:lan]\naddress = 0.0.0.0:25\nrelay_networks = 127.0.0.0/8,\n"
     "    192.168.0.0/16 ; home\n  ; a comment inside the list\n\n"
     "    fd00::/8 10.0.0.0/8\nproxy_protocol = yes\n",
     NULL, 0, check_continuation},
    {"relay_networks_repeated",
     "[listen:lan]\naddress = 0.0.0.0:25\nrelay_networks = 10.0.0.0/8\n"
     "relay_networks = 192.168.1.0/24,::1\n",
     NULL, 0, check_repeated_networks},
    {"relay_networks_empty_means_none", LISTEN "relay_networks =\n", NULL, 0, check_no_networks},
    {"relay_networks_empty_then_continued", LISTEN "relay_networks =\n    10.0.0.0/8\n", NULL, 0,
     check_one_network},
    {"auth_without_tls_on_loopback",
     "[users]\nfile = /etc/sesrelay/users\n"
     "[listen:a]\naddress = 127.0.0.1:2525\nauth = required\n"
     "[listen:b]\naddress = [::1]:2526\nauth = optional\n",
     NULL, 0, check_loopback_auth},
    {"comments_crlf_bom_colon",
     "\xEF\xBB\xBF; comment\r\n# another\r\n[relay] ; section comment\r\n"
     "spool = /a;b ; inline comment\r\nhostname: relay.example\r\n"
     "max_recipients=7\r\n[listen:local]\r\n   address = 127.0.0.1:2525\r\n",
     NULL, 0, check_syntax_variants},

    /* structure errors */
    {"empty_file", "", "no [listen:NAME] section: sesrelay would accept no mail", 0, NULL},
    {"only_comments", "; nothing\n\n[relay]\n", "no [listen:NAME] section", 0, NULL},
    {"unknown_section", LISTEN "[relya]\n", "unknown section [relya]", 3, NULL},
    {"unknown_key", "[relay]\nspoool = /x\n" LISTEN, "unknown key 'spoool' in [relay]", 2, NULL},
    {"unknown_key_listener", LISTEN "relay_network = 10.0.0.0/8\n",
     "unknown key 'relay_network' in [listen:local]", 3, NULL},
    {"key_outside_section", "spool = /x\n" LISTEN, "'spool' is outside any section", 1, NULL},
    {"repeated_scalar", "[relay]\nspool = /a\nlog = syslog\nspool = /b\n" LISTEN,
     "[relay] 'spool' given twice (first on line 2)", 4, NULL},
    {"repeated_scalar_empty", "[relay]\nspool =\nspool = /b\n" LISTEN,
     "'spool' given twice (first on line 2)", 3, NULL},
    {"repeated_listener_key", LISTEN "tls = none\ntls = none\n",
     "[listen:local] 'tls' given twice (first on line 3)", 4, NULL},
    {"repeated_section", "[relay]\nspool = /a\n[ses]\n[relay]\n" LISTEN,
     "section [relay] given twice (first on line 1)", 4, NULL},
    {"scalar_continuation", "[relay]\nspool = /a\n  /b\n" LISTEN, "[relay] 'spool' takes one value",
     3, NULL},
    {"syntax_error", "[relay]\ngarbage\n" LISTEN, "expected \"key = value\"", 2, NULL},
    {"section_unclosed", "[relay\n" LISTEN, "section header without closing ']'", 1, NULL},
    {"section_trailing_text", "[relay] x\n" LISTEN, "unexpected text after ']'", 1, NULL},
    {"section_name_too_long",
     "[listen:"
     "aaaaaaaaaabbbbbbbbbbccccccccccddddddddddeee"
     "]\n",
     "is longer than 49 characters", 1, NULL},
    {"listen_name_empty", "[listen:]\naddress = 127.0.0.1:25\n",
     "a listener name is one or more letters", 1, NULL},
    {"listen_name_bad_chars", "[listen:my lan]\naddress = 127.0.0.1:25\n",
     "[listen:my lan]: a listener name", 1, NULL},
    {"duplicate_listener_name",
     "[listen:a]\naddress = 127.0.0.1:25\n[listen:a]\naddress = 127.0.0.1:26\n",
     "[listen:a] given twice (first on line 1)", 3, NULL},
    {"listener_without_address", "[listen:a]\ntls = none\n", "[listen:a] has no address", 1, NULL},
    {"listener_address_empty", "[relay]\n[listen:a]\naddress =\n", "[listen:a] has no address", 2,
     NULL},

    /* bad values */
    {"bad_enum_tls", "[listen:lan]\naddress = 0.0.0.0:25\ntls = startls\n",
     "[listen:lan] tls = \"startls\": expected none, starttls or implicit", 3, NULL},
    {"bad_enum_auth", LISTEN "auth = yes\n", "auth = \"yes\": expected off, optional or required",
     3, NULL},
    {"bad_enum_log", "[relay]\nlog = file\n" LISTEN,
     "[relay] log = \"file\": expected stderr or syslog", 2, NULL},
    {"bad_enum_log_level", "[relay]\nlog_level = verbose\n" LISTEN,
     "expected error, warn, info or debug", 2, NULL},
    {"bad_enum_transport", "[ses]\ntransport = http\n" LISTEN,
     "[ses] transport = \"http\": expected api or smtp", 2, NULL},
    {"bad_enum_api_version", "[ses]\napi_version = 3\n" LISTEN, "expected 1 or 2", 2, NULL},
    {"bad_enum_smtp_tls", "[ses]\nsmtp_tls = ssl\n" LISTEN, "expected starttls, implicit or none",
     2, NULL},
    {"bad_bool", LISTEN "proxy_protocol = maybe\n",
     "expected yes, no, true, false, on, off, 1 or 0", 3, NULL},
    {"bad_size", "[relay]\nmax_message_size = 10X\n" LISTEN,
     "max_message_size = \"10X\": expected a size such as 512K, 40M or 1G", 2, NULL},
    {"bad_size_zero", "[relay]\nmax_message_size = 0\n" LISTEN,
     "max_message_size = \"0\": expected a size above 0, such as 10M", 2, NULL},
    {"bad_size_negative", "[relay]\nspool_reserve = -1M\n" LISTEN, "expected a size", 2, NULL},
    {"bad_duration", "[queue]\nretry_max = 5w\n" LISTEN, "retry_max = \"5w\": expected a duration",
     2, NULL},
    {"bad_duration_zero", "[relay]\nsmtp_timeout = 0\n" LISTEN,
     "smtp_timeout = \"0\": expected a duration from 1s to 365d", 2, NULL},
    {"bad_duration_too_long", "[queue]\nlifetime = 400d\n" LISTEN, "expected a duration", 2, NULL},
    {"bad_int_zero", "[relay]\nmax_recipients = 0\n" LISTEN,
     "max_recipients = \"0\": expected a whole number from 1 to 100000", 2, NULL},
    {"bad_int_too_big", "[relay]\nmax_recipients = 100001\n" LISTEN,
     "expected a whole number from 1 to 100000", 2, NULL},
    {"bad_int_text", "[relay]\nmax_connections = many\n" LISTEN,
     "expected a whole number of at least 1", 2, NULL},
    {"bad_int_per_ip", "[relay]\nmax_connections_per_ip = 0\n" LISTEN,
     "expected a whole number of at least 1", 2, NULL},
    {"bad_int_concurrency", "[ses]\nconcurrency = 2000\n" LISTEN,
     "expected a whole number from 1 to 1024", 2, NULL},
    {"bad_int_port", "[ses]\nsmtp_port = 70000\n" LISTEN, "expected a whole number from 1 to 65535",
     2, NULL},
    {"bad_rate_zero", "[ses]\nmax_send_rate = 0\n" LISTEN, "expected auto or a positive number", 2,
     NULL},
    {"bad_rate_inf", "[ses]\nmax_send_rate = inf\n" LISTEN, "expected auto or a positive number", 2,
     NULL},
    {"bad_cidr", LISTEN "relay_networks = 10.0.0.0/8, 10.0.0.0/33\n",
     "[listen:local] relay_networks: \"10.0.0.0/33\" is not an IP network", 3, NULL},
    {"bad_cidr_on_continuation", LISTEN "relay_networks = 10.0.0.0/8\n    lan.example\n",
     "\"lan.example\" is not an IP network", 4, NULL},
    {"bad_address_hostname", "[listen:a]\naddress = localhost:25\n",
     "address = \"localhost:25\": expected a numeric host:port", 2, NULL},
    {"bad_address_port_zero", "[listen:a]\naddress = 127.0.0.1:0\n", "expected a numeric host:port",
     2, NULL},
    {"bad_http_address", "[http]\naddress = 9025\n" LISTEN,
     "[http] address = \"9025\": expected a numeric host:port", 2, NULL},
    {"bad_hostname", "[relay]\nhostname = relay example\n" LISTEN,
     "expected a host name such as relay.example.com", 2, NULL},
    {"bad_region", "[ses]\nregion = US West\n" LISTEN, "expected an AWS region", 2, NULL},
    {"bad_endpoint", "[ses]\nendpoint = email.us-east-1.amazonaws.com\n" LISTEN,
     "expected a URL such as https://", 2, NULL},
    {"bad_bounce_from_no_at", "[queue]\nbounce_from = postmaster\n" LISTEN,
     "bounce_from = \"postmaster\": expected an address", 2, NULL},
    {"bad_bounce_from_two_at", "[queue]\nbounce_from = a@b@example.com\n" LISTEN,
     "expected an address", 2, NULL},
    {"bad_bounce_from_empty_local", "[queue]\nbounce_from = @example.com\n" LISTEN,
     "expected an address", 2, NULL},
    {"bad_bounce_from_empty_domain", "[queue]\nbounce_from = postmaster@\n" LISTEN,
     "expected an address", 2, NULL},
    {"bad_bounce_from_space", "[queue]\nbounce_from = post master@example.com\n" LISTEN,
     "expected an address", 2, NULL},
    {"unknown_user", "[relay]\nuser = no-such-user-sesrelay\n" LISTEN,
     "[relay] user = \"no-such-user-sesrelay\": no such user", 2, NULL},

    /* cross-checks */
    {"duplicate_address", "[listen:a]\naddress = 0.0.0.0:25\n[listen:b]\naddress = 0.0.0.0:25\n",
     "[listen:b] address 0.0.0.0:25 is already used by [listen:a]", 4, NULL},
    {"duplicate_address_v6_spelling",
     "[listen:a]\naddress = [::1]:25\n[listen:b]\naddress = [0:0::1]:25\n",
     "is already used by [listen:a]", 4, NULL},
    {"auth_cleartext_public",
     "[users]\nfile = /etc/sesrelay/users\n[listen:sub]\naddress = 0.0.0.0:587\n"
     "auth = required\n",
     "[listen:sub] auth = required with tls = none on 0.0.0.0:587: AUTH would send passwords "
     "in clear text; set tls = starttls or implicit",
     5, NULL},
    {"auth_cleartext_v6_any",
     "[users]\nfile = /etc/sesrelay/users\n[listen:sub]\naddress = [::]:587\n"
     "tls = none\nauth = optional\n",
     "AUTH would send passwords in clear text", 6, NULL},
    {"tls_without_certificate", "[listen:sub]\naddress = 0.0.0.0:587\ntls = starttls\n",
     "[listen:sub] tls = starttls needs a [tls] section with certificate and private_key", 3, NULL},
    {"certificate_without_key", "[tls]\ncertificate = /x.pem\n" LISTEN,
     "[tls] certificate is set but private_key is not", 2, NULL},
    {"key_without_certificate", "[tls]\nprivate_key = /x.pem\n" LISTEN,
     "[tls] private_key is set but certificate is not", 2, NULL},
    {"auth_without_users_file", LISTEN "auth = required\n",
     "[listen:local] auth = required needs [users] file", 3, NULL},
    {"retry_max_below_initial", "[queue]\nretry_initial = 10m\nretry_max = 5m\n" LISTEN,
     "[queue] retry_max (300s) is shorter than retry_initial (600s)", 3, NULL},
    {"retry_max_below_default_initial", "[queue]\nretry_max = 30s\n" LISTEN,
     "retry_max (30s) is shorter than retry_initial (60s)", 2, NULL},
    {"retry_initial_above_default_max", "[queue]\nretry_initial = 2h\n" LISTEN,
     "retry_max (3600s) is shorter than retry_initial (7200s)", 2, NULL},
    {"lifetime_below_initial",
     "[queue]\nretry_initial = 1h\nretry_max = 1h\nlifetime = 30m\n" LISTEN,
     "[queue] lifetime (1800s) is shorter than retry_initial (3600s)", 4, NULL},
    {"max_message_size_over_api_v2", "[relay]\nmax_message_size = 50M\n" LISTEN,
     "max_message_size = 50M is more than SES accepts with transport = api, api_version = 2: at "
     "most 40M",
     2, NULL},
    {"max_message_size_over_api_v1",
     "[relay]\nmax_message_size = 20M\n[ses]\napi_version = 1\n" LISTEN,
     "with transport = api, api_version = 1: at most 10M", 2, NULL},
    {"max_message_size_over_smtp",
     "[ses]\ntransport = smtp\n[relay]\nmax_message_size = 41943041\n" LISTEN,
     "max_message_size = 41943041 bytes is more than SES accepts with transport = smtp: at "
     "most 40M",
     4, NULL},
    {"access_key_without_secret", "[ses]\naccess_key_id = AKIDEXAMPLE\n" LISTEN,
     "access_key_id and secret_access_key go together", 2, NULL},
    {"secret_without_access_key", "[ses]\nprofile = x\nsecret_access_key = SECRETVALUE\n" LISTEN,
     "access_key_id and secret_access_key go together", 3, NULL},
    {"secret_not_echoed", "[ses]\nsecret_access_key = SECRETVALUE with space\n" LISTEN,
     "[ses] secret_access_key: must not contain spaces", 2, NULL},
    {"smtp_password_not_echoed", "[ses]\nsmtp_password = SECRETVALUE x\n" LISTEN,
     "[ses] smtp_password: must not contain spaces", 2, NULL},
    {"smtp_password_repeated_not_echoed",
     "[ses]\nsmtp_password = SECRETVALUE\nsmtp_password = SECRETVALUE2\n" LISTEN,
     "'smtp_password' given twice (first on line 2)", 3, NULL},
};

#define NROWS (sizeof(rows) / sizeof(rows[0]))

/* ---- running a row -------------------------------------------------------- */

#define EXPECT(cond, err)                                                                          \
	do {                                                                                       \
		if (!(cond))                                                                       \
			fprintf(stderr, "  error was: %s\n", (err));                               \
		CHECK(cond);                                                                       \
	} while (0)

static void verify_error(const struct conf_row *r, const char *path, const char *err)
{
	char prefix[512];

	if (r->line > 0)
		snprintf(prefix, sizeof(prefix), "%s:%d: ", path, r->line);
	else
		snprintf(prefix, sizeof(prefix), "%s: ", path);
	EXPECT(strncmp(err, prefix, strlen(prefix)) == 0, err);
	EXPECT(strstr(err, r->err) != NULL, err);
	EXPECT(strchr(err, '\n') == NULL, err);
	EXPECT(strstr(err, "SECRETVALUE") == NULL, err);
}

static void verify_row(const struct conf_row *r, const char *path, const struct conf *c,
                       const char *err)
{
	if (r->err == NULL) {
		EXPECT(c != NULL, err);
		CHECK_STR(c->path, path);
		if (r->check)
			r->check(c);
		return;
	}
	EXPECT(c == NULL, "(loaded without error)");
	verify_error(r, path, err);
}

static void run_row(void)
{
	const struct conf_row *r = NULL;
	struct conf *c;
	char err[512] = "", *path;
	size_t i;

	for (i = 0; i < NROWS; i++)
		if (strcmp(rows[i].name, unit_current) == 0)
			r = &rows[i];
	CHECK(r != NULL);
	clear_env();
	path = write_temp(r->ini, strlen(r->ini));
	c = conf_load(path, err, sizeof(err));
	unlink(path);
	verify_row(r, path, c, err);
	conf_free(c);
	free(path);
}

/* ---- cases that need more than a text -------------------------------------- */

/* Load TEXT (LEN bytes) and return the error, or "" when it loaded. */
static void load_text(const char *text, size_t len, char *err, size_t errlen, char **pathp)
{
	char *path = write_temp(text, len);
	struct conf *c = conf_load(path, err, errlen);

	unlink(path);
	if (c != NULL)
		err[0] = '\0';
	conf_free(c);
	if (pathp)
		*pathp = path;
	else
		free(path);
}

/* "[relay]\nspool = /aaa...\n" LISTEN with the spool line LEN bytes long. */
static char *spool_line_ini(size_t len, const char *eol)
{
	char *value = xmalloc(len + 1), *ini;

	memset(value, 'a', len);
	value[len] = '\0';
	memcpy(value, "spool = /", 9);
	ini = xasprintf("[relay]%s%s%s%s", eol, value, eol, LISTEN);
	free(value);
	return ini;
}

static void test_overlong_line(void)
{
	char err[512], *path, *ini = spool_line_ini(300, "\n"), want[600];

	clear_env();
	load_text(ini, strlen(ini), err, sizeof(err), &path);
	snprintf(want, sizeof(want), "%s:2: line longer than 198 bytes", path);
	free(ini);
	free(path);
	CHECK_STR(err, want);
}

static void test_line_length_limit(void)
{
	char err[512], *ini;

	clear_env();
	ini = spool_line_ini(198, "\n");
	load_text(ini, strlen(ini), err, sizeof(err), NULL);
	free(ini);
	CHECK_STR(err, "");
	ini = spool_line_ini(198, "\r\n"); /* the CR does not count */
	load_text(ini, strlen(ini), err, sizeof(err), NULL);
	free(ini);
	CHECK_STR(err, "");
	ini = spool_line_ini(199, "\n");
	load_text(ini, strlen(ini), err, sizeof(err), NULL);
	free(ini);
	CHECK(strstr(err, ":2: line longer than 198 bytes") != NULL);
}

static void test_overlong_last_line(void)
{
	static const char text[] = LISTEN "relay_networks = 10.0.0.0/8,";
	char err[512], *ini = xasprintf("%s%0250d", text, 0);

	clear_env();
	load_text(ini, strlen(ini), err, sizeof(err), NULL);
	free(ini);
	CHECK(strstr(err, ":3: line longer than 198 bytes") != NULL);
}

static void test_long_comment(void)
{
	char err[512], *ini = xasprintf("; %0300d\n    # %0300d\n%s", 0, 0, LISTEN);

	clear_env();
	load_text(ini, strlen(ini), err, sizeof(err), NULL);
	free(ini);
	CHECK_STR(err, "");
}

static void test_nul_byte(void)
{
	static const char text[] = "[relay]\nspool = /a\0b\n" LISTEN;
	char err[512];

	clear_env();
	load_text(text, sizeof(text) - 1, err, sizeof(err), NULL);
	CHECK(strstr(err, ":2: NUL byte in line") != NULL);
}

static void test_missing_file(void)
{
	char err[512], want[512];
	const char *path = "/nonexistent/sesrelay/relay.ini";

	CHECK(conf_load(path, err, sizeof(err)) == NULL);
	snprintf(want, sizeof(want), "%s: cannot open: No such file or directory", path);
	CHECK_STR(err, want);
}

static void test_directory(void)
{
	char err[512];

	CHECK(conf_load("/", err, sizeof(err)) == NULL);
	CHECK(strncmp(err, "/: ", 3) == 0);
	CHECK(strstr(err, "Is a directory") != NULL);
}

static void test_small_error_buffer(void)
{
	static const char text[] = "[relay]\nlog = file\n";
	char err[16];
	char *path = write_temp(text, sizeof(text) - 1);

	memset(err, 'x', sizeof(err));
	CHECK(conf_load(path, err, sizeof(err)) == NULL);
	CHECK(conf_load(path, NULL, 0) == NULL);
	unlink(path);
	free(path);
	CHECK_INT(strlen(err), sizeof(err) - 1);
}

static void test_example_file(void)
{
	const char *dir = getenv("SESRELAY_SRCDIR");
	char err[512], *path = xasprintf("%s/relay.ini.example", dir && *dir ? dir : ".");
	struct conf *c;

	clear_env();
	c = conf_load(path, err, sizeof(err));
	free(path);
	if (c == NULL)
		fprintf(stderr, "  error was: %s\n", err);
	CHECK(c != NULL);
	check_defaults(c);
	conf_free(c);
}

static void test_region_from_env(void)
{
	char err[512], *path;
	struct conf *c;

	clear_env();
	path = write_temp(LISTEN, strlen(LISTEN));
	setenv("AWS_DEFAULT_REGION", "eu-central-1", 1);
	c = conf_load(path, err, sizeof(err));
	CHECK(c != NULL);
	CHECK_STR(c->region, "eu-central-1");
	conf_free(c);
	setenv("AWS_REGION", "us-west-2", 1); /* wins over AWS_DEFAULT_REGION */
	c = conf_load(path, err, sizeof(err));
	CHECK(c != NULL);
	CHECK_STR(c->region, "us-west-2");
	conf_free(c);
	setenv("AWS_REGION", "not a region", 1);
	c = conf_load(path, err, sizeof(err));
	CHECK(c == NULL);
	CHECK(strstr(err, "AWS_REGION=\"not a region\" is not an AWS region") != NULL);
	unlink(path);
	free(path);
	clear_env();
}

static void test_region_file_wins(void)
{
	static const char text[] = "[ses]\nregion = ap-south-1\n" LISTEN;
	char err[512], *path = write_temp(text, sizeof(text) - 1);
	struct conf *c;

	setenv("AWS_REGION", "us-west-2", 1);
	c = conf_load(path, err, sizeof(err));
	unlink(path);
	free(path);
	clear_env();
	CHECK(c != NULL);
	CHECK_STR(c->region, "ap-south-1");
	conf_free(c);
}

static void test_default_path(void)
{
	setenv("SESRELAY_CONFIG", "/tmp/x.ini", 1);
	CHECK_STR(conf_default_path(), "/tmp/x.ini");
	setenv("SESRELAY_CONFIG", "", 1);
	CHECK_STR(conf_default_path(), "/etc/sesrelay/relay.ini");
	unsetenv("SESRELAY_CONFIG");
	CHECK_STR(conf_default_path(), "/etc/sesrelay/relay.ini");
}

static const struct unit_case fn_cases[] = {
    {"overlong_line", test_overlong_line},
    {"line_length_limit", test_line_length_limit},
    {"overlong_last_line_without_newline", test_overlong_last_line},
    {"long_comment_is_fine", test_long_comment},
    {"nul_byte", test_nul_byte},
    {"missing_file", test_missing_file},
    {"directory_instead_of_file", test_directory},
    {"small_error_buffer", test_small_error_buffer},
    {"example_file_loads", test_example_file},
    {"region_from_env", test_region_from_env},
    {"region_in_file_wins_over_env", test_region_file_wins},
    {"default_path", test_default_path},
};

#define NFN (sizeof(fn_cases) / sizeof(fn_cases[0]))

/* One unit case per table row, then the function cases. */
static struct unit_case cases[NROWS + NFN];

__attribute__((constructor)) static void register_cases(void)
{
	size_t i;

	for (i = 0; i < NROWS; i++) {
		cases[i].name = rows[i].name;
		cases[i].fn = run_row;
	}
	for (i = 0; i < NFN; i++)
		cases[NROWS + i] = fn_cases[i];
}

UNIT_MAIN(cases)
