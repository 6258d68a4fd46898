/*
 * check.h - `sesrelay check [-c FILE]`: is this host ready to send through
 * SES?  The configuration, the credentials, the SES account, every sender
 * identity the configuration names, and the DNS records SES needs; with
 * [inbound], also the bucket SES stores received mail in (the permissions the
 * forwarder needs) and the MX of every domain the map receives for.  One line
 * per check ("ok", "warn" or "FAIL", with the fix).  See check.c.
 */
#ifndef SESRELAY_CHECK_H
#define SESRELAY_CHECK_H

/*
 * argv[1] is "check" (main.c has already taken -c FILE out of argv).
 * Returns the exit code: 0 nothing failed, 1 something did, 2 usage,
 * 78 the configuration (or the users file or TLS key it names) is broken.
 *
 * Environment: SESRELAY_DNS_SERVER=HOST:PORT (or [V6]:PORT) asks that
 * server instead of the ones in /etc/resolv.conf; SESRELAY_CHECK_TIMEOUT=SECONDS
 * caps the whole run (default 60).
 */
int check_main(int argc, char **argv, const char *config_path);

#endif
