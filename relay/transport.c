/*
 * transport.c - helpers shared by the transports (relay/transport.h).
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "relay/transport.h"

void delivery_set_all(struct delivery *d, enum delivery_status st, const char *fmt, ...)
{
	char text[DELIVERY_TEXT_MAX];
	va_list ap;
	size_t i;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	for (i = 0; text[i]; i++)
		if ((unsigned char)text[i] < 0x20 || text[i] == 0x7f)
			text[i] = ' ';
	for (i = 0; i < d->nrcpts; i++) {
		d->status[i] = st;
		memcpy(d->text[i], text, sizeof(text));
	}
}
