/*-------------------------------------------------------------------------
 *
 * nats_url.h
 *	  Validation of reliq.nats_url when it is set.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_NATS_URL_H
#define RELIQ_NATS_URL_H

#include "utils/guc.h"

/* Most servers reliq.nats_url may list (nats_conn.c passes them on). */
#define RELIQ_MAX_NATS_SERVERS 64

extern bool reliq_check_nats_url(char **newval, void **extra, GucSource source);

#endif							/* RELIQ_NATS_URL_H */
