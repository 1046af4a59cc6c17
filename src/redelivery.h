/*-------------------------------------------------------------------------
 *
 * redelivery.h
 *	  The redelivery policy (redelivery.c): whose fault an error is, how
 *	  redeliveries are grouped, when a message is dead-lettered unheard,
 *	  and how long a failed message waits before it comes again.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_REDELIVERY_H
#define RELIQ_REDELIVERY_H

#include "catalog.h"
#include "control.h"
#include "message.h"

/* SQLSTATE of a message dead-lettered without a handler error. */
#define RELIQ_ERRCODE_DELIVERY_LIMIT MAKE_SQLSTATE('R', 'Q', '0', '0', '1')

/* Whose fault an error is; error_kind in reliq.dead_letter. */
typedef enum ReliqErrorKind
{
	RELIQ_ERROR_MESSAGE,		/* the message's data: retried, then dead */
	RELIQ_ERROR_TRANSIENT,		/* lock, deadlock, serialization: held */
	RELIQ_ERROR_SUBSCRIPTION,	/* anything else: counts to the breaker */
	RELIQ_ERROR_DELIVERY_LIMIT, /* RQ001: handling never completed */
} ReliqErrorKind;

extern ReliqErrorKind reliq_error_kind(int sqlerrcode);
extern const char *reliq_error_kind_name(ReliqErrorKind kind);

/* Rule 1: the group a message is applied in (1, 2; 0: alone). */
extern int	reliq_redelivery_group(const ReliqMessage *msg);

/* Rule 2: dead-letter without running the handler? */
extern bool reliq_redelivery_beyond_limit(const ReliqSubscription *sub,
										  ReliqControl *control,
										  const ReliqMessage *msg);
extern ErrorData *reliq_redelivery_limit_error(const ReliqSubscription *sub,
											   const ReliqMessage *msg);

/* Rules 3 and 4: the wait after a failed delivery, or a held batch's probe. */
extern int64 reliq_redelivery_backoff_ms(const ReliqSubscription *sub,
										 int attempt);

#endif							/* RELIQ_REDELIVERY_H */
