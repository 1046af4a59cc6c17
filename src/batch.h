/*-------------------------------------------------------------------------
 *
 * batch.h
 *	  One batch of messages, one transaction: ledger, handlers (handler.h),
 *	  dead letters.  The worker acks according to each message's outcome only
 *	  after reliq_batch_run() has committed.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_BATCH_H
#define RELIQ_BATCH_H

#include "executor/spi.h"
#include "fmgr.h"

#include "catalog.h"
#include "handler.h"
#include "message.h"
#include "redelivery.h"

/* Size of the memory of recently failed stream sequences. */
#define RELIQ_BREAKER_MEMORY 64

/*
 * Systemic failure detection.  consecutive counts distinct messages that
 * failed with an error not attributable to the message itself (see
 * batch.c) since the last success.  Reaching
 * reliq.systemic_failure_threshold trips it: failed messages are then held
 * and retried rather than nacked towards the dead-letter table.
 */
typedef struct ReliqBreaker
{
	int			consecutive;
	int64		recent[RELIQ_BREAKER_MEMORY];
	int			nrecent;
	int			next;
} ReliqBreaker;

/* A lane's state, kept across its batches (lane.c). */
struct ReliqSubscriptionStats;
struct ReliqControl;

typedef struct ReliqBatchState
{
	ReliqSubscription *sub;
	struct ReliqSubscriptionStats *stats;	/* may be NULL */
	struct ReliqControl *control;	/* may be NULL */
	int64		stream_created; /* incarnation of the stream attached to */
	MemoryContext cxt;			/* lives as long as the lane */
	MemoryContext message_cxt;	/* reset after each message */
	Oid			message_type;
	TupleDesc	message_tupdesc;
	SPIPlanPtr	ledger_plan;	/* ... ON CONFLICT DO NOTHING */
	SPIPlanPtr	unrecord_plan;
	SPIPlanPtr	dead_letter_plan;
	ReliqHandler *handler;
	char	   *handler_key;	/* what handler was prepared for */
	ReliqBreaker breaker;
} ReliqBatchState;

typedef struct ReliqBatchResult
{
	int			processed;
	int			duplicates;
	int			failed;			/* handler failures, whatever followed */
	int			retried;		/* of those, nacked for a later delivery */
	int			dead_lettered;
	int			held;
	int			outboxed;		/* publishes written to reliq._outbox */
	bool		used_slow_path;
	int			transient;		/* held for a transient error (lock, deadlock) */
	int			deferred;		/* ordering: behind a failure of their key */
	bool		tripped;		/* failing as a whole: messages held */
	bool		stream_changed; /* a newer stream incarnation exists */
	bool		subscription_gone;	/* dropped: nothing applied */
	ErrorData  *batch_error;	/* an error outside any handler */
	ErrorData  *last_failure;	/* the last handler error */
	int64		last_failure_seq;
} ReliqBatchResult;

extern void reliq_batch_init(ReliqBatchState *state);
extern void reliq_batch_free(ReliqBatchState *state);
extern void reliq_batch_set_subscription(ReliqBatchState *state,
										 ReliqSubscription *sub);
extern void reliq_batch_run(ReliqBatchState *state, ReliqMessage *msgs,
							int nmsgs, ReliqBatchResult *result);

#endif							/* RELIQ_BATCH_H */
