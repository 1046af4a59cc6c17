/*-------------------------------------------------------------------------
 *
 * apply.c
 *	  Applying what a lane collected: grouped as the redelivery policy
 *	  says (redelivery.c), one batch through batch.c and the ack gate
 *	  (ack_gate.c), counting it, holding a failing batch, and a lane's
 *	  problems in last_error and the log.  Returns a verdict the
 *	  lane acts on (lane.c); never changes a lane's state itself.
 *
 * The redelivery policy is redelivery.c's, with its rules at the top of
 * that file; the numbers of the rules below are its.
 *
 * Locks: none held here; the statistics are atomics and short spinlock
 * sections in shmem.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "pgstat.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "worker_internal.h"
#include "xact.h"

/* At most one WARNING about failing messages per this many ms. */
#define RELIQ_WARNING_INTERVAL_MS 10000

/*
 * A batch applied faster than this has its acks (and the pull already asked
 * for) flushed with a round trip; see reliq_ack_send().
 */
#define RELIQ_QUICK_BATCH_US 2000

/*
 * Problems: logged once, when they start or change, and shown in
 * last_error
 */

/* Make message the current problem; true if it is a new one (to log). */
bool
reliq_problem_is_new(char *current, const char *message)
{
	if (strcmp(message, current) == 0)
		return false;
	strlcpy(current, message, RELIQ_ERROR_LEN);
	return true;
}

/*
 * Log a problem of a lane once, when it starts or changes, and show it in
 * last_error; the same problem again stays quiet.
 */
void
reliq_note_problem(Lane *l, int elevel, int sqlerrcode, const char *fmt,...)
{
	char		message[RELIQ_ERROR_LEN];
	va_list		args;

	va_start(args, fmt);
	vsnprintf(message, sizeof(message), fmt, args);
	va_end(args);

	if (reliq_problem_is_new(l->problem, message))
		ereport(elevel,
				(errcode(sqlerrcode),
				 errmsg("reliq subscription \"%s\": %s", l->sub->name, message)));
	if (l->stats != NULL)
		reliq_stats_set_error(l->stats, message);
}

void
reliq_clear_problem(Lane *l, const char *resolution)
{
	if (l->problem[0] != '\0')
	{
		ereport(LOG,
				(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
				 errmsg("reliq subscription \"%s\": %s", l->sub->name, resolution)));
		l->problem[0] = '\0';
	}
	l->retries = 0;
}

/*
 * Publish what the lane's handlers published, after their commit; when
 * rows still wait, say so and try again after reliq.refresh_interval.
 */
void
reliq_apply_drain_outbox(Lane *l)
{
	ReliqNatsConnection *conn = l->pool->conn;
	ReliqNatsStatus st = {0};

	if (!l->outbox_pending || conn == NULL || !reliq_nats_is_connected(conn))
		return;
	l->outbox_pending = !reliq_ack_publish_outbox(conn, l->sub->id, &st);
	if (l->outbox_pending)
	{
		reliq_note_problem(l, WARNING, ERRCODE_CONNECTION_FAILURE, "messages wait in reliq._outbox: %s",
						   st.message);
		l->next_outbox_try = after_ms(reliq_refresh_interval);
	}
}

/*
 * Counting and reporting a batch
 */

static void
count_batch(Lane *l, int received, const ReliqBatchResult *result)
{
	ReliqSubscriptionStats *stats = l->stats;
	TimestampTz now = GetCurrentTimestamp();

	if (stats == NULL)
		return;
	pg_atomic_fetch_add_u64(&stats->received, received);
	pg_atomic_fetch_add_u64(&stats->processed, result->processed);
	pg_atomic_fetch_add_u64(&stats->failed, result->failed);
	pg_atomic_fetch_add_u64(&stats->retried, result->retried);
	pg_atomic_fetch_add_u64(&stats->dead_lettered, result->dead_lettered);
	pg_atomic_fetch_add_u64(&stats->duplicates, result->duplicates);
	pg_atomic_fetch_add_u64(&stats->batches, 1);
	if (result->used_slow_path)
		pg_atomic_fetch_add_u64(&stats->slow_path_batches, 1);
	SpinLockAcquire(&stats->mutex);
	stats->last_batch_at = now;
	SpinLockRelease(&stats->mutex);
}

/* Failures: last_error always, a WARNING at most every so often. */
static void
report_failures(Lane *l, const ReliqBatchResult *result)
{
	ErrorData  *error = result->batch_error ? result->batch_error : result->last_failure;
	char		text[RELIQ_ERROR_LEN];

	if (error == NULL)
		return;
	if (result->batch_error)
		snprintf(text, sizeof(text), "batch failed: %s", error->message);
	else
		snprintf(text, sizeof(text), "handler failed on stream sequence " INT64_FORMAT ": %s",
				 result->last_failure_seq, error->message);
	if (l->stats != NULL)
		reliq_stats_set_failure(l->stats, text);

	l->unreported_failures += Max(result->failed, 1);
	if (l->last_warning_at == 0 ||
		TimestampDifferenceExceeds(l->last_warning_at, GetCurrentTimestamp(),
								   RELIQ_WARNING_INTERVAL_MS))
	{
		ereport(WARNING,
				(errcode(error->sqlerrcode),
				 errmsg("reliq subscription \"%s\": %d message failures; last: %s",
						l->sub->name, l->unreported_failures, text),
				 error->detail ? errdetail("%s", error->detail) : 0));
		l->last_warning_at = GetCurrentTimestamp();
		l->unreported_failures = 0;
	}
}

/*
 * Latency and duration of a committed batch: publish-to-commit for each
 * message it applied, and the batch from BEGIN to its acks.
 */
static void
time_batch(Lane *l, ReliqMessage *msgs, int n, TimestampTz started,
		   TimestampTz committed, const ReliqBatchResult *result)
{
	int64	   *latencies = palloc(sizeof(int64) * Max(n, 1));
	int			nlatencies = 0;
	int			i;

	if (l->stats == NULL)
		return;
	for (i = 0; i < n; i++)
	{
		if (msgs[i].outcome != RELIQ_OUTCOME_PROCESSED)
			continue;
		latencies[nlatencies++] =
			Max(committed - reliq_unix_ns_to_timestamptz(msgs[i].published_ns), 0);
	}
	reliq_stats_record_batch(l->stats, GetCurrentTimestamp() - started,
							 latencies, nlatencies, result->processed);
	pfree(latencies);
}

/*
 * The held batch (rule 4)
 */

static void
copy_held(Lane *l, ReliqMessage *msgs, int n)
{
	MemoryContext cxt;
	MemoryContext old;
	int			i;

	/* A probe's messages point into the current held_cxt: copy, then swap. */
	cxt = AllocSetContextCreate(TopMemoryContext, "reliq held batch",
								ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	l->held = palloc(sizeof(ReliqMessage) * Max(n, 1));
	l->nheld = 0;
	for (i = 0; i < n; i++)
	{
		ReliqMessage *src = &msgs[i];
		ReliqMessage *dst;

		if (src->outcome != RELIQ_OUTCOME_HELD)
			continue;
		dst = &l->held[l->nheld++];
		reliq_message_copy(dst, src);
	}
	MemoryContextSwitchTo(old);
	if (l->held_cxt)
		MemoryContextDelete(l->held_cxt);
	l->held_cxt = cxt;
}

void
reliq_apply_drop_held(Lane *l)
{
	if (l->nheld > 0)
	{
		l->nheld = 0;
		l->held = NULL;
		MemoryContextDelete(l->held_cxt);
		l->held_cxt = NULL;
	}
}

/* Why a batch is held, logged when the hold starts (rule 4). */
static void
log_hold(Lane *l, const ReliqBatchResult *result)
{
	if (result->tripped)
		ereport(LOG,
				(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
				 errmsg("reliq subscription \"%s\": systemic failure detected; holding %d messages and pausing pulls",
						l->sub->name, result->held),
				 errdetail("%d distinct messages in a row failed with errors not specific to them; nothing is dead-lettered meanwhile.",
						   l->batch.breaker.consecutive),
				 errhint("Fix the cause shown in reliq.subscription_stats.last_error; reliq retries after the subscription's backoff delays.")));
	else
		ereport(LOG,
				(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
				 errmsg("reliq subscription \"%s\": %d messages failed with a transient error; holding them and pausing pulls",
						l->sub->name, result->transient),
				 errdetail("A lock not had within lock_timeout, a deadlock or a serialization failure is the database's state, not the message's: the messages are tried again and never dead-lettered for it."),
				 errhint("See reliq.subscription_stats.last_error; reliq retries after the subscription's backoff delays.")));
}

/* Enter or leave the hold after a batch (rule 4). */
static void
hold_or_resume(Lane *l, ReliqMessage *msgs, int n, bool was_failing,
			   const ReliqBatchResult *result)
{
	if (result->held > 0 && (result->tripped || result->transient > 0))
	{
		if (!was_failing)
		{
			log_hold(l, result);
			l->probes = 0;
		}
		l->held_transient = !result->tripped;
		copy_held(l, msgs, n);
		l->next_probe = after_ms(reliq_redelivery_backoff_ms(l->sub, ++l->probes));
		l->next_progress = GetCurrentTimestamp();
	}
	else if (was_failing)
	{
		ereport(LOG,
				(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
				 l->held_transient ?
				 errmsg("reliq subscription \"%s\": resumed after a transient error",
						l->sub->name) :
				 errmsg("reliq subscription \"%s\": resumed after a systemic failure",
						l->sub->name)));
		reliq_apply_drop_held(l);
	}
}

/* The NAK delay of each failed message (rule 3). */
static int64 *
nak_delays(Lane *l, ReliqMessage *msgs, int n)
{
	int64	   *delays = palloc0(sizeof(int64) * Max(n, 1));
	int			i;

	for (i = 0; i < n; i++)
		if (msgs[i].outcome == RELIQ_OUTCOME_FAILED)
			delays[i] = reliq_redelivery_backoff_ms(l->sub, msgs[i].delivered);
	return delays;
}

/*
 * A batch found duplicates: has the stream lost its tail (monitor.c), its
 * new messages taking sequences this database applied?  Asked only of a
 * batch with duplicates (after a restart, a lost ack, a rewind; never on
 * the steady path): the stream's last sequence (one request) against the
 * highest sequence applied (an index probe).  If the stream ends below it,
 * the subscription is diverged at once, before the duplicates are acked,
 * rather than at the monitor's next round.  When the stream cannot be
 * asked, the duplicates are acked as before; the monitor still looks.
 */
static bool
stream_lost_tail(Lane *l)
{
	ReliqStreamInfo stream;
	MemoryContext caller;
	int64		applied;

	/*
	 * What was applied first, the stream second: every sequence applied
	 * then was in the stream before the question, so a stream that kept
	 * its tail answers at least that.  (The other way round, another lane
	 * could apply a message published in between.)
	 */
	caller = reliq_xact_begin("reliq: reading the highest sequence applied");
	applied = reliq_catalog_applied_seq(l->sub->id, l->stream_created);
	reliq_xact_commit(caller);
	if (!reliq_nats_stream_info(l->pool->conn, l->sub->stream, &stream, NULL) ||
		!stream.found || stream.created_ns != l->stream_created ||
		stream.last_seq >= applied)
		return false;
	caller = reliq_xact_begin("reliq: recording a stream's lost tail");
	reliq_catalog_note_divergence(l->sub->id, l->stream_created,
								  stream.last_seq, applied);
	reliq_xact_commit(caller);
	ereport(WARNING,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("reliq subscription \"%s\": stream \"%s\" lost its tail: its last sequence is " INT64_FORMAT ", but this database applied up to " INT64_FORMAT,
					l->sub->name, l->sub->stream, stream.last_seq, applied),
			 errdetail("A batch met messages at sequences already applied; they may be new messages, so they are not acknowledged, and the subscription consumes nothing meanwhile."),
			 errhint("If the loss is accepted: SELECT reliq.accept_stream_loss('%s');",
					 l->sub->name)));
	reliq_stats_note_divergence(l->stats, l->control, l->sub->name,
								l->sub->stream, stream.last_seq, applied);
	return true;
}

/*
 * The stream lost its tail: the batch's duplicates are neither acked nor
 * counted (they come back after ack_wait to whoever pulls; nobody does
 * while the subscription is diverged, and accepting the loss rewinds the
 * consumer).
 */
static void
withhold_duplicates(ReliqMessage *msgs, int n, ReliqBatchResult *result)
{
	int			i;

	for (i = 0; i < n; i++)
		if (msgs[i].outcome == RELIQ_OUTCOME_DUPLICATE)
		{
			msgs[i].outcome = RELIQ_OUTCOME_HELD;
			result->duplicates--;
		}
}

/*
 * Apply a batch, pass the gate, acknowledge it, count it (as received,
 * the messages not counted before: a probe's and deferred ones were).
 */
ReliqApplyVerdict
reliq_apply_batch(Lane *l, ReliqMessage *msgs, int n)
{
	ReliqNatsConnection *conn = l->pool->conn;
	ReliqBatchResult result;
	bool		was_failing = (l->nheld > 0);
	bool		diverged = false;
	TimestampTz started = GetCurrentTimestamp();
	TimestampTz committed;
	int			received = 0;
	int			i;

	for (i = 0; i < n; i++)
	{
		received += !msgs[i].counted;
		msgs[i].counted = true;
	}

	reliq_profile_lap(RELIQ_STEP_OTHER);
	reliq_lane_report_progress(l, n);
	pgstat_report_activity(STATE_RUNNING,
						   psprintf("reliq: applying %d messages of subscription %s", n, l->sub->name));

	reliq_batch_run(&l->batch, msgs, n, &result);
	reliq_profile_lap(RELIQ_STEP_OTHER);
	committed = GetCurrentTimestamp();
	if (result.subscription_gone)
	{
		/*
		 * Dropped meanwhile: nothing was applied.  Give the messages back
		 * as a lane given up does; without delay, because until this
		 * lane's pull has run out they come back to its own queue, which
		 * a subscription made again under the same consumer takes over
		 * (lane.c, adopt_puller).
		 */
		(void) reliq_ack_release(conn, msgs, n, 0);
		pgstat_report_activity(STATE_IDLE, NULL);
		return RELIQ_APPLY_GONE;
	}
	if (result.outboxed > 0)
		l->outbox_pending = true;
	if (!reliq_ack_gate(l->control, l->sub, l->lease_epoch, &l->awaiting_standby,
						GetFlushRecPtr(NULL)))
	{
		/*
		 * Committed, so counted; not acked but NAKed, so delivered again at
		 * once to whoever owns the consumer now (this cluster's ledger, or
		 * another's, absorbs or applies it).
		 */
		count_batch(l, received, &result);
		(void) reliq_ack_release(conn, msgs, n, reliq_ack_release_delay_ms(l->puller));
		pgstat_report_activity(STATE_IDLE, NULL);
		return RELIQ_APPLY_LEASE_LOST;
	}
	if (result.duplicates > 0 && stream_lost_tail(l))
	{
		withhold_duplicates(msgs, n, &result);
		diverged = true;
	}
	reliq_apply_drain_outbox(l);
	reliq_profile_lap(RELIQ_STEP_GATE);
	reliq_ack_send(conn, l->sub, msgs, nak_delays(l, msgs, n), n,
				   committed - started < RELIQ_QUICK_BATCH_US);
	reliq_profile_lap(RELIQ_STEP_ACK);
	count_batch(l, received, &result);
	time_batch(l, msgs, n, started, committed, &result);
	report_failures(l, &result);
	hold_or_resume(l, msgs, n, was_failing, &result);
	if (l->sub->norder > 0)
		reliq_ordering_note(l, msgs, n);
	reliq_lane_report_progress(l, l->nheld);
	pgstat_report_activity(STATE_IDLE, NULL);
	reliq_profile_lap(RELIQ_STEP_STATS);
	reliq_profile_end(l->stats, n);

	if (result.stream_changed)
		return RELIQ_APPLY_STREAM_CHANGED;
	if (diverged)
		return RELIQ_APPLY_DIVERGED;
	return l->nheld > 0 ? RELIQ_APPLY_HOLD : RELIQ_APPLY_DONE;
}

/*
 * Apply what a lane collected, grouped as rule 1 says, until a batch's
 * verdict is other than RELIQ_APPLY_DONE.  What was left untried is given
 * back at once: redeliveries always (rule 3), first deliveries too when
 * the subscription is gone.
 */
ReliqApplyVerdict
reliq_apply_collected(Lane *l, ReliqMessage *msgs, int n)
{
	Pool	   *p = l->pool;
	ReliqMessage *group = palloc(sizeof(ReliqMessage) * n);
	bool	   *tried = palloc0(sizeof(bool) * n);
	ReliqApplyVerdict verdict = RELIQ_APPLY_DONE;
	int			ngroup;
	int			pass;
	int			i;

	if (l->sub->norder > 0)
	{
		pfree(tried);
		pfree(group);
		return reliq_ordering_apply(l, msgs, n);
	}
	p->applying_lane = l;
	p->applying = msgs;
	p->napplying = n;
	for (pass = 1; pass <= 2 && verdict == RELIQ_APPLY_DONE && reliq_lane_attached(l); pass++)
	{
		ngroup = 0;
		for (i = 0; i < n; i++)
			if (reliq_redelivery_group(&msgs[i]) == pass)
			{
				group[ngroup++] = msgs[i];
				tried[i] = true;
			}
		if (ngroup > 0)
			verdict = reliq_apply_batch(l, group, ngroup);
	}
	for (i = 0; i < n && verdict == RELIQ_APPLY_DONE && reliq_lane_attached(l); i++)
		if (reliq_redelivery_group(&msgs[i]) == 0)
		{
			tried[i] = true;
			p->applying_alone = msgs[i].stream_seq;
			verdict = reliq_apply_batch(l, &msgs[i], 1);
			p->applying_alone = 0;
		}
	for (i = 0; i < n; i++)
		if (!tried[i] && (msgs[i].delivered > 1 || verdict == RELIQ_APPLY_GONE) && p->conn)
			(void) reliq_nats_ack(p->conn, msgs[i].reply, RELIQ_NAK, 0, NULL);
	p->applying_lane = NULL;
	p->applying = NULL;
	p->napplying = 0;
	pfree(tried);
	pfree(group);
	return verdict;
}

/* Try the held batch again (rule 4). */
ReliqApplyVerdict
reliq_apply_probe(Lane *l)
{
	ReliqMessage *msgs = palloc(sizeof(ReliqMessage) * l->nheld);
	int			n = l->nheld;

	memcpy(msgs, l->held, sizeof(ReliqMessage) * n);
	return reliq_apply_batch(l, msgs, n);
}

/*
 * The worker is dying (its exit callback): if it was applying one message
 * alone, that message is the cause (rule 2).
 */
void
reliq_apply_note_death(Pool *p)
{
	if (p->applying_alone != 0 && p->applying_lane != NULL &&
		p->applying_lane->control != NULL)
		reliq_control_note_death(p->applying_lane->control, p->applying_alone);
}
