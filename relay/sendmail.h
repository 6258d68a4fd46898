/*
 * sendmail.h - "sesrelay sendmail" / the binary invoked as "sendmail": a
 * sendmail(8)-compatible front end that reads one message on stdin and
 * submits it over SMTP to the running daemon on loopback.  See sendmail.c
 * for the design, the flags and the exit codes (sysexits).
 */
#ifndef SESRELAY_SENDMAIL_H
#define SESRELAY_SENDMAIL_H

/* 1 when argv[0]'s base name is "sendmail" (a symlink to sesrelay). */
int sendmail_invoked_as(const char *argv0);

/*
 * Run the sendmail front end.  argv[0] is the command word ("sendmail"),
 * options and recipients follow.  config is the path main.c resolved (-c,
 * $SESRELAY_CONFIG or the default); sendmail's own -C FILE overrides it.
 * Returns the process exit status: 0 once the relay has answered 250 to the
 * final dot (the message is on disk), else a sysexits code.
 */
int sendmail_main(int argc, char **argv, const char *config);

/*
 * Parse an RFC 5322 address list (the unfolded value of To:, Cc:, Bcc:, or a
 * command-line argument): mailboxes with display names, quoted strings,
 * comments, <angle> addresses (a source route is dropped), groups and empty
 * list elements.  fn gets each addr-spec as the relay needs it in MAIL/RCPT
 * ("user@example.com", "\"a b\"@example.com", "root"); "<>" yields nothing.
 * Returns the number of addresses, or -1 with *why set (a static string)
 * when the list cannot be read unambiguously: unterminated quotes, comments,
 * domain literals or <, a bare name without an address, an address over 256
 * octets, control characters.
 */
int sendmail_parse_addresses(const char *list, void (*fn)(void *arg, const char *addr), void *arg,
                             const char **why);

/*
 * A display name for "From: NAME <addr>", ready for the header: plain
 * atoms as they are, a quoted-string when NAME has specials, RFC 2047
 * encoded-words (UTF-8, base64) when it has 8-bit bytes.  Control
 * characters become spaces, so a name can never add a header line.
 * Returns a malloc'd string ("" for an empty name).
 */
char *sendmail_display_name(const char *name);

#endif
