/*-------------------------------------------------------------------------
 *
 * batch.c
 *	  Apply one batch of messages in one transaction: the fast and slow
 *	  paths and the systemic-failure breaker.  Each message itself is
 *	  applied by handler.c; the ledger and the dead letters are written by
 *	  batch_ledger.c.
 *
 * The fast path runs the whole batch in a single transaction with no
 * subtransaction: ledger rows first (written for the whole batch as COPY
 * writes rows; if a sequence is there already, the batch starts again
 * with INSERT ... ON CONFLICT DO NOTHING RETURNING, which finds the
 * duplicates), then each handler, or one call of a set-based handler
 * with the fresh messages, or one INSERT for a table sink, then
 * COMMIT.  Only if anything fails is the batch redone on the
 * slow path, with one subtransaction per message, so that a failing
 * message rolls back alone (a set-based handler is called there with a
 * one-element array).  A subtransaction per message on every batch
 * would burn an XID each and overflow the 64-entry subxid cache of every
 * snapshot taken meanwhile.
 *
 * On the slow path constraints are checked immediately, so a deferred
 * constraint a handler violates fails that handler, not the COMMIT.
 * Handlers (and table sinks) are applied through handler.c, as the
 * subscription's owner; the bookkeeping statements here run as reliq.
 *
 * Which errors are systemic: a failure whose SQLSTATE is of class 22
 * (data exception), 23 (integrity constraint violation) or P0 (raised by
 * PL/pgSQL) is the message's own; any other (undefined table or function,
 * insufficient privilege, lock or statement timeout, out of resources...)
 * may hit every message alike.  When reliq.systemic_failure_threshold
 * distinct messages in a row fail with such errors, the batch's failed
 * messages are held (rule 4 of redelivery.c) instead of nacked, so a
 * dropped table does not dead-letter the backlog.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "pg_compat.h"
#include "batch.h"
#include "batch_internal.h"
#include "batch_read.h"
#include "outbox.h"
#include "profile.h"
#include "reliq.h"
#include "shmem.h"
#include "sink.h"
#include "spi_safe.h"
#include "trace.h"
#include "xact.h"

/*
 * Record a batch's sequences; those at or below the acknowledged floor
 * are duplicates and not recorded.  Followed by ON CONFLICT DO NOTHING:
 * duplicates are the rows not returned.  (The plain first try of a batch
 * is record_plain, in batch_ledger.c.)
 */
#define LEDGER_INSERT \
	"INSERT INTO reliq._ledger (subscription_id, stream_created, stream_seq)" \
	" SELECT $1, $2, s FROM unnest($3) AS s" \
	"  WHERE s > COALESCE((SELECT f.ack_floor FROM reliq._stream_floor f" \
	"                      WHERE f.subscription_id = $1 AND f.stream_created = $2), 0)"


void
reliq_batch_init(ReliqBatchState *state)
{
	memset(state, 0, sizeof(*state));
	state->cxt = AllocSetContextCreate(TopMemoryContext, "reliq batch state",
									   ALLOCSET_DEFAULT_SIZES);
	state->message_cxt = AllocSetContextCreate(state->cxt, "reliq message",
											   ALLOCSET_DEFAULT_SIZES);
}

/*
 * Free what reliq_batch_init and the batches since made (a worker gives up
 * a subscription).  Inside a transaction: kept plans are released.
 */
void
reliq_batch_free(ReliqBatchState *state)
{
	SPIPlanPtr *plans[] = {&state->ledger_plan,
		&state->unrecord_plan,
	&state->dead_letter_plan};
	int			i;

	for (i = 0; i < lengthof(plans); i++)
	{
		if (*plans[i] != NULL)
			SPI_freeplan(*plans[i]);
		*plans[i] = NULL;
	}
	if (state->handler)
		reliq_free_handler(state->handler);
	state->handler = NULL;
	MemoryContextDelete(state->cxt);
	state->cxt = NULL;
}

/* A new or reloaded subscription; the handler plan follows if it changed. */
void
reliq_batch_set_subscription(ReliqBatchState *state, ReliqSubscription *sub)
{
	state->sub = sub;
}

/* The subscription fails as a whole: hold failed messages, do not nack them. */
static bool
breaker_tripped(const ReliqBatchState *state)
{
	return state->breaker.consecutive >= reliq_systemic_failure_threshold;
}

static bool
is_message_error(int sqlerrcode)
{
	return reliq_error_kind(sqlerrcode) == RELIQ_ERROR_MESSAGE;
}

static void
breaker_success(ReliqBreaker *breaker)
{
	breaker->consecutive = 0;
	breaker->nrecent = 0;
	breaker->next = 0;
}

static void
breaker_failure(ReliqBreaker *breaker, const ReliqMessage *msg)
{
	int			i;

	if (msg->error == NULL || is_message_error(msg->error->sqlerrcode))
		return;
	for (i = 0; i < breaker->nrecent; i++)
		if (breaker->recent[i] == msg->stream_seq)
			return;
	breaker->recent[breaker->next] = msg->stream_seq;
	breaker->next = (breaker->next + 1) % RELIQ_BREAKER_MEMORY;
	if (breaker->nrecent < RELIQ_BREAKER_MEMORY)
		breaker->nrecent++;
	breaker->consecutive++;
}

/*
 * Plans
 */

static void
ensure_plans(ReliqBatchState *state)
{
	const ReliqSubscription *sub = state->sub;
	MemoryContext old;
	char	   *key;
	int			nest;

	if (!OidIsValid(state->message_type))
	{
		TupleDesc	desc;

		state->message_type = reliq_message_type_oid();
		desc = lookup_rowtype_tupdesc(state->message_type, -1);
		old = MemoryContextSwitchTo(state->cxt);
		state->message_tupdesc = CreateTupleDescCopy(desc);
		MemoryContextSwitchTo(old);
		ReleaseTupleDesc(desc);
	}

	if (state->ledger_plan == NULL)
	{
		Oid			ledger_args[3] = {INT8OID, INT8OID, INT8ARRAYOID};
		Oid			dead_letter_args[15] = {INT8OID, TEXTOID, TEXTOID, TEXTOID,
			BYTEAOID, JSONBOID, INT8OID, INT4OID, TIMESTAMPTZOID,
		TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID};

		nest = reliq_enter_safe_search_path();

		/*
		 * Record the sequences; those already recorded, or at or below the
		 * acknowledged floor, are duplicates.  ON CONFLICT waits for a
		 * concurrent transaction recording the same sequence, so two
		 * workers given the same message cannot both apply it.
		 */
		state->ledger_plan = reliq_prepare_kept(LEDGER_INSERT
												" ON CONFLICT DO NOTHING RETURNING stream_seq",
												3, ledger_args);

		/*
		 * The first try of a batch is plain (record_plain, batch_ledger.c): it costs a
		 * fraction of an INSERT with ON CONFLICT (no pre-check of the index,
		 * no speculative insertion, no executor, rows written a page at a
		 * time), and it fails with unique_violation only when a message is
		 * a redelivery.  It waits for a concurrent transaction recording the
		 * same sequence just the same.
		 */
		state->unrecord_plan = reliq_prepare_kept(
											"DELETE FROM reliq._ledger"
											" WHERE subscription_id = $1 AND stream_created = $2"
											"   AND stream_seq = ANY($3)",
											3, ledger_args);
		state->dead_letter_plan = reliq_prepare_kept(
											   "INSERT INTO reliq.dead_letter (subscription_id, subscription, stream, subject,"
											   "  data, headers, stream_seq, delivered, published_at, error_message,"
											   "  error_detail, error_context, sqlstate, traceparent, error_kind)"
											   " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
											   15, dead_letter_args);
		reliq_leave_safe_search_path(nest);
	}

	key = sub->handler ? psprintf("handler %s", sub->handler) :
		reliq_sink_settings_key(sub);
	if (state->handler == NULL ||
		strcmp(key, state->handler_key) != 0 ||
		(sub->handler == NULL && reliq_sink_is_stale()))
	{
		if (state->handler)
		{
			reliq_free_handler(state->handler);
			state->handler = NULL;
			pfree(state->handler_key);
		}
		state->handler = reliq_prepare_handler(sub, state->cxt);
		state->handler_key = MemoryContextStrdup(state->cxt, key);
	}
	pfree(key);
}

static void
apply_message(ReliqBatchState *state, ReliqMessage *msg)
{
	MemoryContext old = MemoryContextSwitchTo(state->message_cxt);
	Datum		argument;

	if (state->sub->handler != NULL)
	{
		argument = reliq_message_datum(msg, state->sub->name,
									   state->message_tupdesc);
		if (state->handler->set_based)
			argument = reliq_handler_message_array(&argument, 1,
												   state->message_type);
	}
	else
		argument = reliq_sink_rows(&msg, 1);
	reliq_trace_set_current(&msg->trace);
	msg->outboxed = reliq_call_handler(state->sub, state->handler, argument,
									   msg->trace.traceparent,
									   state->sub->id, state->stream_created,
									   msg->stream_seq);
	reliq_trace_set_current(NULL);
	MemoryContextSwitchTo(old);
	MemoryContextReset(state->message_cxt);
}

/*
 * The fast path of a table sink or a set-based handler: the messages to
 * apply in one INSERT, or in one call of the handler with them all as a
 * reliq.message[] (no reliq.traceparent: it is a message's).  What the
 * handler or the triggers of the table publish is written with message
 * ids derived from the first of them.
 */
static void
apply_in_bulk(ReliqBatchState *state, ReliqMessage **msgs, int count)
{
	MemoryContext old;
	Datum		argument;
	int			i;

	if (count == 0)
		return;
	old = MemoryContextSwitchTo(state->message_cxt);
	if (state->sub->handler != NULL)
	{
		Datum	   *messages = palloc(sizeof(Datum) * count);

		for (i = 0; i < count; i++)
			messages[i] = reliq_message_datum(msgs[i], state->sub->name,
											  state->message_tupdesc);
		argument = reliq_handler_message_array(messages, count,
											   state->message_type);
	}
	else
		argument = reliq_sink_rows(msgs, count);
	/* many messages, no one context to carry on; one: its own */
	reliq_trace_set_current(count == 1 ? &msgs[0]->trace : NULL);
	for (i = 0; i < count; i++)
		msgs[i]->trace.start_ns = reliq_trace_now_ns();
	msgs[0]->outboxed = reliq_call_handler(state->sub, state->handler, argument,
										   NULL, state->sub->id,
										   state->stream_created,
										   msgs[0]->stream_seq);
	reliq_trace_set_current(NULL);
	for (i = 0; i < count; i++)
	{
		msgs[i]->outcome = RELIQ_OUTCOME_PROCESSED;
		msgs[i]->trace.end_ns = reliq_trace_now_ns();
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(state->message_cxt);
}

/*
 * Apply one message whose ledger row the caller has just tried to write:
 * a duplicate if it was recorded already; dead-lettered unheard if it has
 * been delivered more than max_deliver times; otherwise handled.
 */
static void
apply_or_divert(ReliqBatchState *state, ReliqMessage *msg, bool fresh,
				MemoryContext batch_cxt)
{
	if (msg->trace.sampled)
		msg->trace.start_ns = reliq_trace_now_ns();
	if (!fresh)
		msg->outcome = RELIQ_OUTCOME_DUPLICATE;
	else if (reliq_redelivery_beyond_limit(state->sub, state->control, msg))
	{
		MemoryContext old = MemoryContextSwitchTo(batch_cxt);

		/* rule 2 of redelivery.c: its earlier deliveries died with their worker */
		msg->error = reliq_redelivery_limit_error(state->sub, msg);
		MemoryContextSwitchTo(old);
		reliq_batch_dead_letter(state, msg);
		msg->outcome = RELIQ_OUTCOME_DEAD_LETTERED;
	}
	else
	{
		apply_message(state, msg);
		msg->outcome = RELIQ_OUTCOME_PROCESSED;
	}
	if (msg->trace.sampled)
		msg->trace.end_ns = reliq_trace_now_ns();
}

/*
 * The batch's transaction: reliq's skeleton (xact.c), with one SPI
 * connection for the whole of it.  No activity is reported: the worker
 * shows its own for the batch and its acks.
 */
static void
start_batch_transaction(ReliqBatchState *state)
{
	(void) reliq_xact_begin(NULL);
	reliq_spi_connect();
	reliq_profile_lap(RELIQ_STEP_BEGIN);
	ensure_plans(state);
	reliq_profile_lap(RELIQ_STEP_PLANS);
}

/*
 * A newer stream incarnation is recorded, or the subscription was dropped:
 * apply nothing; attach anew, or stop.
 */
static void
abandon_for_new_stream(ReliqBatchResult *result, MemoryContext batch_cxt)
{
	result->stream_changed = !result->subscription_gone;
	reliq_spi_finish();
	reliq_xact_abort(batch_cxt);
}

static void
finish_batch_transaction(MemoryContext batch_cxt)
{
	reliq_profile_lap(RELIQ_STEP_APPLY);
	reliq_spi_finish();
	reliq_xact_commit(batch_cxt);
	reliq_profile_lap(RELIQ_STEP_COMMIT);
}

/* Copy the error being handled into cxt and clear it. */
static ErrorData *
take_error(MemoryContext cxt)
{
	ErrorData  *error;

	MemoryContextSwitchTo(cxt);
	error = CopyErrorData();
	FlushErrorState();
	return error;
}

static void
reset_outcomes(ReliqMessage *msgs, int nmsgs)
{
	int			i;

	for (i = 0; i < nmsgs; i++)
	{
		msgs[i].outcome = RELIQ_OUTCOME_NONE;
		msgs[i].error = NULL;
		msgs[i].outboxed = 0;
	}
}

/*
 * The fast path.  Returns false, with the transaction rolled back and no
 * outcome set, if anything failed.  With plain_ledger, a duplicate makes
 * the ledger INSERT fail: *redo_with_conflicts tells the caller to try
 * again without it.
 */
static bool
run_fast_path(ReliqBatchState *state, ReliqMessage *msgs, int nmsgs,
			  ReliqBatchResult *result, MemoryContext batch_cxt,
			  bool plain_ledger, bool *redo_with_conflicts)
{
	volatile bool ok = true;
	bool	   *fresh = palloc0(sizeof(bool) * nmsgs);
	int		   *all = palloc(sizeof(int) * nmsgs);
	int			i;

	for (i = 0; i < nmsgs; i++)
		all[i] = i;

	PG_TRY();
	{
		start_batch_transaction(state);
		if (!reliq_batch_stream_is_current(state, result))
			abandon_for_new_stream(result, batch_cxt);
		else
		{
			reliq_batch_record(state, msgs, all, nmsgs, fresh, plain_ledger);
			if (state->sub->handler != NULL && !state->handler->set_based)
			{
				for (i = 0; i < nmsgs; i++)
					apply_or_divert(state, &msgs[i], fresh[i], batch_cxt);
			}
			else
			{
				ReliqMessage **bulk = palloc(sizeof(ReliqMessage *) * nmsgs);
				int			nbulk = 0;

				for (i = 0; i < nmsgs; i++)
				{
					if (fresh[i] &&
						!reliq_redelivery_beyond_limit(state->sub, state->control, &msgs[i]))
						bulk[nbulk++] = &msgs[i];
					else
						apply_or_divert(state, &msgs[i], fresh[i], batch_cxt);
				}
				apply_in_bulk(state, bulk, nbulk);
				pfree(bulk);
			}
			finish_batch_transaction(batch_cxt);
		}
	}
	PG_CATCH();
	{
		ErrorData  *error;

		HOLD_INTERRUPTS();
		error = take_error(batch_cxt);
		reliq_handler_cleanup();
		AbortCurrentTransaction();
		RESUME_INTERRUPTS();
		MemoryContextReset(state->message_cxt);
		*redo_with_conflicts = reliq_ledger_insert_running &&
			error->sqlerrcode == ERRCODE_UNIQUE_VIOLATION;
		reliq_ledger_insert_running = false;
		FreeErrorData(error);
		ok = false;
	}
	PG_END_TRY();

	MemoryContextSwitchTo(batch_cxt);
	if (!ok)
		reset_outcomes(msgs, nmsgs);
	pfree(fresh);
	pfree(all);
	return ok;
}

/* One message in its own subtransaction; sets its outcome. */
static void
run_in_subtransaction(ReliqBatchState *state, ReliqMessage *msgs, int index,
					  MemoryContext batch_cxt)
{
	ReliqMessage *msg = &msgs[index];
	MemoryContext old = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(old);
	PG_TRY();
	{
		apply_or_divert(state, msg, reliq_batch_record_one(state, msgs, index), batch_cxt);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(old);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *error = take_error(batch_cxt);

		reliq_handler_cleanup();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(old);
		CurrentResourceOwner = owner;
		MemoryContextReset(state->message_cxt);
		msg->outcome = RELIQ_OUTCOME_FAILED;
		msg->error = error;
		if (msg->trace.sampled)
			msg->trace.end_ns = reliq_trace_now_ns();
	}
	PG_END_TRY();
}

/*
 * ordering => 'key': has an earlier message of msgs[i]'s key failed in
 * this batch (or waited behind one)?  Then msgs[i] waits too, untried: it
 * is applied after that message (apply.c, ordering.c).
 */
static bool
follows_failure_of_its_key(const ReliqMessage *msgs, int i)
{
	int			j;

	if (!msgs[i].ordered)
		return false;
	for (j = 0; j < i; j++)
		if (msgs[j].ordered && msgs[j].order_key == msgs[i].order_key &&
			(msgs[j].outcome == RELIQ_OUTCOME_FAILED ||
			 msgs[j].outcome == RELIQ_OUTCOME_DEFERRED))
			return true;
	return false;
}

static void
run_slow_path(ReliqBatchState *state, ReliqMessage *msgs, int nmsgs,
			  ReliqBatchResult *result, MemoryContext batch_cxt)
{
	volatile bool ok = true;
	int			i;

	result->used_slow_path = true;
	PG_TRY();
	{
		bool		tripped;

		start_batch_transaction(state);
		if (!reliq_batch_stream_is_current(state, result))
			abandon_for_new_stream(result, batch_cxt);
		else
		{
			reliq_spi_check(SPI_execute("SET CONSTRAINTS ALL IMMEDIATE", false, 0),
							SPI_OK_UTILITY, "set constraints immediate");

			for (i = 0; i < nmsgs; i++)
			{
				CHECK_FOR_INTERRUPTS();
				if (follows_failure_of_its_key(msgs, i))
					msgs[i].outcome = RELIQ_OUTCOME_DEFERRED;
				else
					run_in_subtransaction(state, msgs, i, batch_cxt);
			}

			for (i = 0; i < nmsgs; i++)
			{
				if (msgs[i].outcome == RELIQ_OUTCOME_PROCESSED)
					breaker_success(&state->breaker);
				else if (msgs[i].outcome == RELIQ_OUTCOME_FAILED)
					breaker_failure(&state->breaker, &msgs[i]);
			}
			tripped = breaker_tripped(state);

			for (i = 0; i < nmsgs; i++)
			{
				ReliqMessage *msg = &msgs[i];

				if (msg->outcome != RELIQ_OUTCOME_FAILED)
					continue;
				if (tripped)
					msg->outcome = RELIQ_OUTCOME_HELD;
				else if (reliq_error_kind(msg->error->sqlerrcode) == RELIQ_ERROR_TRANSIENT)
				{
					/* busy, not wrong: held and tried again, never a dead letter */
					msg->outcome = RELIQ_OUTCOME_HELD;
					result->transient++;
				}
				else if (msg->delivered >= state->sub->max_deliver)
				{
					/* its ledger row went with its subtransaction */
					if (reliq_batch_record_one(state, msgs, i))
					{
						reliq_batch_dead_letter(state, msg);
						msg->outcome = RELIQ_OUTCOME_DEAD_LETTERED;
					}
					else
						msg->outcome = RELIQ_OUTCOME_DUPLICATE;
				}
			}
			result->tripped = tripped;
			finish_batch_transaction(batch_cxt);
		}
	}
	PG_CATCH();
	{
		HOLD_INTERRUPTS();
		result->batch_error = take_error(batch_cxt);
		reliq_handler_cleanup();
		AbortCurrentTransaction();
		RESUME_INTERRUPTS();
		MemoryContextReset(state->message_cxt);
		ok = false;
	}
	PG_END_TRY();

	MemoryContextSwitchTo(batch_cxt);
	if (!ok)
	{
		/* nothing committed: keep every message for a later retry */
		for (i = 0; i < nmsgs; i++)
			msgs[i].outcome = RELIQ_OUTCOME_HELD;
		result->tripped = true;
	}
}

/*
 * Tracing
 */

/*
 * Each message's trace context and, with tracing on, its span ids; the
 * batch's span, in a trace of its own.  batch_span->type stays 0 when
 * none of the messages is sampled.
 */
static void
start_traces(ReliqMessage *msgs, int nmsgs, ReliqSpan *batch_span)
{
	bool		on = reliq_tracing_on();
	bool		sampled = false;
	int			i;

	for (i = 0; i < nmsgs; i++)
	{
		reliq_trace_start_message(&msgs[i].trace,
								  reliq_message_header(&msgs[i], "traceparent"),
								  reliq_message_header(&msgs[i], "tracestate"),
								  on);
		sampled |= msgs[i].trace.sampled;
	}
	batch_span->type = 0;
	if (!sampled)
		return;
	memset(batch_span, 0, sizeof(*batch_span));
	batch_span->type = RELIQ_SPAN_BATCH;
	reliq_trace_new_id(batch_span->trace_id, RELIQ_TRACE_ID_LEN);
	reliq_trace_new_id(batch_span->span_id, RELIQ_SPAN_ID_LEN);
	batch_span->start_ns = reliq_trace_now_ns();
}

static const char *
outcome_name(ReliqOutcome outcome)
{
	switch (outcome)
	{
		case RELIQ_OUTCOME_PROCESSED:
			return "applied";
		case RELIQ_OUTCOME_DUPLICATE:
			return "duplicate";
		case RELIQ_OUTCOME_FAILED:
			return "failed";
		case RELIQ_OUTCOME_DEAD_LETTERED:
			return "dead_lettered";
		case RELIQ_OUTCOME_HELD:
			return "held";
		case RELIQ_OUTCOME_DEFERRED:
			return "deferred";
		case RELIQ_OUTCOME_NONE:
			break;
	}
	return "not_applied";
}

/*
 * The spans of a finished batch: one per sampled message, linked to the
 * batch's, and the batch's; handed to the ring in one go.
 */
static void
record_spans(ReliqBatchState *state, ReliqMessage *msgs, int nmsgs,
			 const ReliqBatchResult *result, ReliqSpan *batch_span)
{
	ReliqSpan  *spans;
	bool		rolled_back;
	int			n = 0;
	int			i;

	if (batch_span->type == 0)
		return;
	batch_span->end_ns = reliq_trace_now_ns();
	spans = palloc(sizeof(ReliqSpan) * (nmsgs + 1));
	for (i = 0; i < nmsgs; i++)
	{
		ReliqMessage *msg = &msgs[i];
		ReliqSpan  *s;

		if (!msg->trace.sampled)
			continue;
		s = &spans[n++];
		memset(s, 0, sizeof(*s));
		s->type = RELIQ_SPAN_PROCESS;
		memcpy(s->trace_id, msg->trace.span.trace_id, RELIQ_TRACE_ID_LEN);
		memcpy(s->span_id, msg->trace.span.span_id, RELIQ_SPAN_ID_LEN);
		s->has_parent = msg->trace.has_parent;
		if (s->has_parent)
			memcpy(s->parent_id, msg->trace.parent.span_id, RELIQ_SPAN_ID_LEN);
		s->has_link = true;
		memcpy(s->link_trace_id, batch_span->trace_id, RELIQ_TRACE_ID_LEN);
		memcpy(s->link_span_id, batch_span->span_id, RELIQ_SPAN_ID_LEN);
		s->start_ns = msg->trace.start_ns ? msg->trace.start_ns : batch_span->start_ns;
		s->end_ns = msg->trace.end_ns >= s->start_ns ? msg->trace.end_ns : batch_span->end_ns;
		s->stream_seq = msg->stream_seq;
		s->delivery_count = msg->delivered;
		reliq_span_text(s->outcome, outcome_name(msg->outcome), sizeof(s->outcome));
		reliq_span_text(s->subject, msg->subject, sizeof(s->subject));
		reliq_span_text(s->subscription, state->sub->name, sizeof(s->subscription));
		reliq_span_text(s->stream, msg->stream, sizeof(s->stream));
		reliq_span_text(s->consumer, msg->consumer, sizeof(s->consumer));
		if (msg->error != NULL)
		{
			s->error = true;
			reliq_span_text(s->sqlstate, unpack_sql_state(msg->error->sqlerrcode),
							sizeof(s->sqlstate));
			reliq_span_text(s->error_message, msg->error->message,
							sizeof(s->error_message));
		}
	}
	reliq_span_text(batch_span->subscription, state->sub->name,
					sizeof(batch_span->subscription));
	batch_span->message_count = nmsgs;
	rolled_back = result->batch_error || result->stream_changed ||
		result->subscription_gone;
	reliq_span_text(batch_span->outcome, rolled_back ? "rolled back" : "committed",
					sizeof(batch_span->outcome));
	if (result->batch_error)
	{
		batch_span->error = true;
		reliq_span_text(batch_span->sqlstate,
						unpack_sql_state(result->batch_error->sqlerrcode),
						sizeof(batch_span->sqlstate));
		reliq_span_text(batch_span->error_message, result->batch_error->message,
						sizeof(batch_span->error_message));
	}
	spans[n++] = *batch_span;
	reliq_trace_record(spans, n);
	pfree(spans);
}

/*
 * Apply a batch.  Afterwards every message has an outcome, and what the
 * outcomes say has been committed; the caller acks accordingly.  Messages
 * and result live in the caller's (batch) memory context.
 */
void
reliq_batch_run(ReliqBatchState *state, ReliqMessage *msgs, int nmsgs,
				ReliqBatchResult *result)
{
	MemoryContext batch_cxt = CurrentMemoryContext;
	ReliqSpan	batch_span;
	bool		redo = false;
	bool		applied;
	int			i;

	memset(result, 0, sizeof(*result));
	reset_outcomes(msgs, nmsgs);
	start_traces(msgs, nmsgs, &batch_span);

	/* a redelivery in the batch fails the plain ledger INSERT: again */
	applied = run_fast_path(state, msgs, nmsgs, result, batch_cxt, true, &redo);
	if (!applied && redo)
		applied = run_fast_path(state, msgs, nmsgs, result, batch_cxt, false, &redo);
	if (applied)
	{
		if (!result->stream_changed && !result->subscription_gone)
			breaker_success(&state->breaker);
	}
	else
		run_slow_path(state, msgs, nmsgs, result, batch_cxt);

	for (i = 0; i < nmsgs; i++)
	{
		ReliqMessage *msg = &msgs[i];

		switch (msg->outcome)
		{
			case RELIQ_OUTCOME_PROCESSED:
				result->processed++;
				result->outboxed += msg->outboxed;
				break;
			case RELIQ_OUTCOME_DUPLICATE:
				result->duplicates++;
				break;
			case RELIQ_OUTCOME_FAILED:
				result->failed++;
				result->retried++;
				break;
			case RELIQ_OUTCOME_DEAD_LETTERED:
				result->dead_lettered++;
				if (msg->error && msg->error->sqlerrcode != RELIQ_ERRCODE_DELIVERY_LIMIT)
					result->failed++;
				break;
			case RELIQ_OUTCOME_HELD:
				result->held++;
				if (msg->error)
					result->failed++;
				break;
			case RELIQ_OUTCOME_DEFERRED:
				result->deferred++;
				break;
			case RELIQ_OUTCOME_NONE:
				break;
		}
		if (msg->error && msg->error->sqlerrcode != RELIQ_ERRCODE_DELIVERY_LIMIT)
		{
			result->last_failure = msg->error;
			result->last_failure_seq = msg->stream_seq;
		}
	}
	record_spans(state, msgs, nmsgs, result, &batch_span);
}
