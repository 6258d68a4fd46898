/*
 * conf.h - relay.ini: the whole configuration as one validated struct.
 *
 * conf_load() reads the file with inih, checks every key of SPEC.md section 3
 * (unknown sections and keys, repeated scalars, bad values and over-long lines
 * are errors naming file:line), applies defaults and cross-checks.  It never
 * touches the network or the spool; the daemon decides what to do with the
 * result.  Reload (SIGHUP) loads a fresh struct and swaps it in.
 */
#ifndef SESRELAY_CONF_H
#define SESRELAY_CONF_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "relay/netaddr.h"

enum conf_tls { CONF_TLS_NONE, CONF_TLS_STARTTLS, CONF_TLS_IMPLICIT };
enum conf_auth { CONF_AUTH_OFF, CONF_AUTH_OPTIONAL, CONF_AUTH_REQUIRED };
enum conf_log { CONF_LOG_STDERR, CONF_LOG_SYSLOG };
enum conf_transport { CONF_TRANSPORT_API, CONF_TRANSPORT_SMTP };
enum conf_from_format { CONF_FROM_NAME, CONF_FROM_NAME_AT_ADDRESS };
enum conf_after { CONF_AFTER_DELETE, CONF_AFTER_MOVE };
enum conf_verdict { CONF_VERDICT_HOLD, CONF_VERDICT_FORWARD, CONF_VERDICT_DELETE };

struct conf_listener {
	char *name;                    /* after "listen:" */
	char *address;                 /* as written */
	struct sockaddr_storage ss;
	socklen_t sslen;
	enum conf_tls tls;             /* default none */
	enum conf_auth auth;           /* default off */
	struct netaddr_cidr *networks; /* relay_networks; default 127.0.0.0/8, ::1/128 */
	size_t nnetworks;
	int proxy_protocol;            /* default 0 */
	int line;                      /* where the section starts, for messages */
};

struct conf {
	char *path;

	/* [relay] */
	char *hostname;               /* default: gethostname() */
	char *spool;                  /* default /var/spool/sesrelay */
	char *user;                   /* NULL: stay as started */
	enum conf_log log;            /* default stderr */
	uint64_t max_message_size;    /* default by transport: 40M (api v2, smtp), 10M (api v1) */
	int max_recipients;           /* default 100 */
	int max_connections;          /* default 1000 */
	int max_connections_per_ip;   /* default 20 */
	uint64_t spool_reserve;       /* default 100M */
	int log_level;                /* enum log_level, default info */
	uint64_t smtp_timeout;        /* seconds; idle per command, default 300 */
	uint64_t data_timeout;        /* seconds; whole DATA phase, default 600 */
	uint64_t session_timeout;     /* seconds; whole session cap, default 3600 */

	struct conf_listener *listeners;
	size_t nlisteners;

	/* [tls] */
	char *tls_certificate;
	char *tls_private_key;

	/* [users] */
	char *users_file;

	/* [ses] */
	enum conf_transport transport; /* default api */
	char *region;                  /* default: AWS_REGION, AWS_DEFAULT_REGION; may stay NULL */
	int api_version;               /* 1 or 2, default 2 */
	char *endpoint;                /* NULL: https://email.<region>.amazonaws.com */
	char *configuration_set;
	char *profile;
	char *access_key_id;
	char *secret_access_key;
	double max_send_rate;          /* recipients/s; 0 = auto */
	int concurrency;               /* default 16 */
	char *smtp_host;               /* NULL: email-smtp.<region>.amazonaws.com */
	int smtp_port;                 /* default 587 */
	enum conf_tls smtp_tls;        /* default starttls */
	char *smtp_username;
	char *smtp_password;
	char *ca_file;
	int check_identities;          /* refuse unverified identities at MAIL/RCPT; default 1 */

	/* [queue] */
	uint64_t retry_initial;        /* seconds, default 60 */
	uint64_t retry_max;            /* seconds, default 3600 */
	uint64_t lifetime;             /* seconds, default 5d */
	char *bounce_from;

	/* [http] */
	char *http_address;            /* NULL: no HTTP listener */

	/* [inbound]: forward what SES stored in S3 (relay/inbound.c) */
	char *inbound_bucket;          /* NULL: receiving is off */
	char *inbound_prefix;          /* "" */
	char *inbound_region;          /* default [ses] region */
	char *inbound_endpoint;        /* NULL: https://BUCKET.s3.REGION.amazonaws.com */
	char *inbound_queue_url;       /* SQS queue of SES's receipt notifications, or NULL */
	uint64_t inbound_poll_interval; /* seconds, default 60 */
	char *inbound_from_address;    /* verified address forwarded mail is sent from */
	enum conf_from_format inbound_from_format; /* default name */
	char *inbound_subject_prefix;  /* "" */
	char **inbound_map;            /* "KEY DEST[, DEST...]" entries, as written */
	int *inbound_map_line;
	size_t ninbound_map;
	enum conf_after inbound_after; /* delete_after: default delete */
	char *inbound_done_prefix;     /* default "done/" */
	char *inbound_held_prefix;     /* default "held/" */
	enum conf_verdict inbound_failed_verdict; /* default hold */
	struct sockaddr_storage http_ss;
	socklen_t http_sslen;
};

/*
 * Load and validate PATH.  On error returns NULL and writes one line
 * "PATH:LINE: what is wrong" (or "PATH: what is wrong") into err.
 */
struct conf *conf_load(const char *path, char *err, size_t errlen);
void conf_free(struct conf *conf);

/* Default path: $SESRELAY_CONFIG or /etc/sesrelay/relay.ini */
const char *conf_default_path(void);

#endif
