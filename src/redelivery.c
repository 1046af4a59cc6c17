/*-------------------------------------------------------------------------
 *
 * redelivery.c
 *	  The redelivery policy, in one place.  Applying a lane's messages
 *	  (apply.c) and a batch (batch.c) ask it; the ring of deaths it reads
 *	  is kept in each subscription's control entry (control.c).
 *
 * Whose fault is an error?  (shown in reliq.dead_letter's error_kind)
 * -------------------------------------------------------------------
 * - transient: the database was busy (a lock not had within lock_timeout,
 *	 a deadlock, a serialization failure); the same message succeeds later.
 *	 Never dead-lettered: the message is held and tried again (rule 4).
 * - message: the message's own data (data exceptions, constraint
 *	 violations, an exception raised by a PL/pgSQL handler); retried with
 *	 the backoff (rule 3), then dead-lettered at max_deliver.  Does not
 *	 count towards batch.c's breaker.
 * - subscription: anything else (a missing function or privilege, a full
 *	 disk): counts towards the breaker, which holds the batch when the
 *	 subscription fails as a whole (rule 4).
 * - delivery_limit: RQ001, a message delivered more than max_deliver times
 *	 whose handling never completed (rule 2).
 *
 * The rules
 * ---------
 * 1. Grouping.  First deliveries go in one batch, and first redeliveries
 *	  (delivered = 2) in another; each later redelivery goes in a
 *	  transaction of its own, so that a message whose handler kills the
 *	  worker (each time, before COMMIT) takes the messages that shared its
 *	  first batch down twice at most, then only itself, towards
 *	  max_deliver.  Redeliveries come in bulk after a restart of
 *	  nats-server or of the worker, a lost connection (their acks lost), a
 *	  lane given up, or an expired ack_wait.  Applied one per transaction,
 *	  each with its commit flush and its ack round trip, a thousand of them
 *	  took seconds, and the messages pulled meanwhile waited: when that
 *	  wait passed ack_wait they came again, as redeliveries too, and a
 *	  subscription drained about one message per transaction until it
 *	  caught up (issue 13).
 * 2. Deaths.  A worker that dies while applying one message alone records
 *	  that message's sequence in shared memory (apply.c, from the worker's
 *	  exit callback).  A message delivered more than max_deliver times with
 *	  such a record, and no handler error, is dead-lettered without running
 *	  it again: crash loops end.  A message merely received alongside a
 *	  culprit, and lost with it, has its handler run.  Without a record (a
 *	  crash restart clears shared memory) the limit is doubled.
 * 3. NAK backoff.  A message whose handler failed is given back with the
 *	  subscription's backoff delay for its delivery count; what was not
 *	  applied at all (the stream changed, the subscription gone, a
 *	  failing state or a lost consumer left it untried) comes back at
 *	  once.
 * 4. Hold and probe.  A subscription failing as a whole (batch.c's
 *	  breaker), or messages failing with a transient error, hold their
 *	  failed batch: in-progress acks every ack_wait / 2 keep it from being
 *	  redelivered or counted, pulls pause, and it is tried again (a probe)
 *	  after the backoff delay of the probe's number; the first success
 *	  ends the hold.  Nothing is dead-lettered meanwhile, and the delivery
 *	  count does not grow.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "redelivery.h"

ReliqErrorKind
reliq_error_kind(int sqlerrcode)
{
	int			category = ERRCODE_TO_CATEGORY(sqlerrcode);

	if (sqlerrcode == RELIQ_ERRCODE_DELIVERY_LIMIT)
		return RELIQ_ERROR_DELIVERY_LIMIT;
	if (category == ERRCODE_TRANSACTION_ROLLBACK ||
		sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE)
		return RELIQ_ERROR_TRANSIENT;
	if (category == ERRCODE_DATA_EXCEPTION ||
		category == ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION ||
		category == ERRCODE_PLPGSQL_ERROR)
		return RELIQ_ERROR_MESSAGE;
	return RELIQ_ERROR_SUBSCRIPTION;
}

const char *
reliq_error_kind_name(ReliqErrorKind kind)
{
	switch (kind)
	{
		case RELIQ_ERROR_MESSAGE:
			return "message";
		case RELIQ_ERROR_TRANSIENT:
			return "transient";
		case RELIQ_ERROR_SUBSCRIPTION:
			return "subscription";
		case RELIQ_ERROR_DELIVERY_LIMIT:
			return "delivery_limit";
	}
	return "subscription";
}

/* Rule 1: 1 for first deliveries, 2 for first redeliveries, 0 alone. */
int
reliq_redelivery_group(const ReliqMessage *msg)
{
	int			delivered = Max(msg->delivered, 1);

	return delivered <= 2 ? delivered : 0;
}

/* Rule 2. */
bool
reliq_redelivery_beyond_limit(const ReliqSubscription *sub,
							  ReliqControl *control, const ReliqMessage *msg)
{
	int			limit = sub->max_deliver;

	if (msg->delivered <= limit)
		return false;
	if (msg->delivered > 2 * limit + 1)
		return true;
	return control != NULL &&
		reliq_control_deaths(control, msg->stream_seq) > 0;
}

/*
 * The error a message dead-lettered by rule 2 carries, in the current
 * memory context.
 */
ErrorData *
reliq_redelivery_limit_error(const ReliqSubscription *sub,
							 const ReliqMessage *msg)
{
	ErrorData  *error = palloc0(sizeof(ErrorData));

	error->elevel = ERROR;
	error->sqlerrcode = RELIQ_ERRCODE_DELIVERY_LIMIT;
	error->message = psprintf("message delivered %d times, more than max_deliver (%d), without its handling completing",
							  msg->delivered, sub->max_deliver);
	error->detail = pstrdup("Earlier deliveries ended without a handler error reaching reliq: the worker was terminated or crashed while handling it, or its batch outlasted ack_wait.");
	return error;
}

/*
 * Rules 3 and 4: the subscription's backoff delay for a failed delivery
 * number, or a held batch's probe number (1-based; the last delay repeats).
 */
int64
reliq_redelivery_backoff_ms(const ReliqSubscription *sub, int attempt)
{
	int			i = Min(Max(attempt, 1), sub->nbackoff) - 1;

	return sub->backoff_ms[i];
}
