/*-------------------------------------------------------------------------
 *
 * lane.c
 *	  A lane: one subscription served by a pool worker.  Its state machine
 *	  (attach to the consumer, pull, collect, hold a failing batch, leave),
 *	  the lease as it concerns the lane, and each turn under its own error
 *	  boundary.  Its pulls and collecting a batch are lane_pull.c's;
 *	  applying what it collected is apply.c's; the lane acts on the
 *	  verdict.
 *
 * A turn applies at most one batch of what has already arrived for the
 * lane and never waits for messages; the pool (pool.c) gives turns round
 * its lanes.  Every lane keeps its own pull request out on the server
 * (long ones with heartbeats once it is idle), its own ledger plans,
 * handler, breaker and held batch, and runs its handlers as its
 * subscription's owner.
 *
 * States: one value per lane (ReliqLaneState, worker_internal.h, where
 * each state lists the states it may be entered from), changed only by
 * reliq_lane_transition().  reliq.worker_status shows a name derived from
 * it (lane_shown), or the worker's connection state while that is down.
 * A failing lane keeps its failed batch (sending in-progress acks, so the
 * server neither redelivers it nor counts deliveries), pulls nothing, and
 * retries the batch after the backoff delays; the worker's other lanes go
 * on.  A lane taken away (pause, drop, fewer workers) leaves: it gives
 * back what it holds unapplied (NAK) and shows no more.
 *
 * The error boundary: an ERROR in a lane's turn outside batch.c (claiming
 * the stream, loading the subscription, the outbox, the lease, the acks)
 * ends that turn, not the worker.  Without a boundary of its own, a
 * background worker's ERROR is caught by PostgreSQL's start-up code,
 * which reports it and exits: the worker restarted with all its lanes.
 * As the autovacuum launcher and PostgreSQL's own main loop do, the
 * boundary logs the error (once while it stays the same), aborts the
 * transaction if one is open, releases LWLocks and restores the memory
 * context and resource owner; the lane is then put back as a restart of
 * the worker would have (what it held given back, its puller dropped) and
 * tries again after a backoff.  FATAL (SIGTERM, the postmaster gone)
 * still ends the worker.  batch.c catches the errors of a batch
 * (handlers, ledger) itself.
 *
 * Locks: none held across calls; see worker_internal.h.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/lwlock.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "lease.h"
#include "version.h"
#include "worker_internal.h"
#include "xact.h"

static ReliqPuller *adopt_puller(Lane *l);

/*
 * The lane's states (worker_internal.h): the states each may be entered
 * from, and what reliq.worker_status shows in each.
 */
#define S(state) (1u << (state))

static const uint32 lane_predecessors[] = {
	[RELIQ_LANE_ATTACHING] = S(RELIQ_LANE_BACKING_OFF) | S(RELIQ_LANE_FETCHING) |
	S(RELIQ_LANE_PROCESSING) | S(RELIQ_LANE_FAILING) | S(RELIQ_LANE_FENCED) |
	S(RELIQ_LANE_LAPSED) | S(RELIQ_LANE_DIVERGED) | S(RELIQ_LANE_LEAVING),
	[RELIQ_LANE_BACKING_OFF] = S(RELIQ_LANE_ATTACHING) | S(RELIQ_LANE_FENCED) |
	S(RELIQ_LANE_LAPSED) | S(RELIQ_LANE_DIVERGED),
	[RELIQ_LANE_FETCHING] = S(RELIQ_LANE_ATTACHING) | S(RELIQ_LANE_PROCESSING) |
	S(RELIQ_LANE_LAPSED) | S(RELIQ_LANE_LEAVING),
	[RELIQ_LANE_PROCESSING] = S(RELIQ_LANE_FETCHING) | S(RELIQ_LANE_FAILING),
	[RELIQ_LANE_FAILING] = S(RELIQ_LANE_PROCESSING) | S(RELIQ_LANE_ATTACHING) |
	S(RELIQ_LANE_LAPSED),
	[RELIQ_LANE_FENCED] = S(RELIQ_LANE_ATTACHING) | S(RELIQ_LANE_BACKING_OFF) |
	S(RELIQ_LANE_LAPSED) | S(RELIQ_LANE_DIVERGED),
	[RELIQ_LANE_LAPSED] = S(RELIQ_LANE_ATTACHING) | S(RELIQ_LANE_BACKING_OFF) |
	S(RELIQ_LANE_FETCHING) | S(RELIQ_LANE_FAILING) | S(RELIQ_LANE_FENCED) |
	S(RELIQ_LANE_DIVERGED),
	[RELIQ_LANE_DIVERGED] = S(RELIQ_LANE_ATTACHING) | S(RELIQ_LANE_BACKING_OFF) |
	S(RELIQ_LANE_FETCHING) | S(RELIQ_LANE_PROCESSING) | S(RELIQ_LANE_FAILING) |
	S(RELIQ_LANE_FENCED) | S(RELIQ_LANE_LAPSED),
	[RELIQ_LANE_LEAVING] = ~0u,
};

static const char *const lane_state_names[] = {
	[RELIQ_LANE_ATTACHING] = "attaching",
	[RELIQ_LANE_BACKING_OFF] = "backing off",
	[RELIQ_LANE_FETCHING] = "fetching",
	[RELIQ_LANE_PROCESSING] = "processing",
	[RELIQ_LANE_FAILING] = "failing",
	[RELIQ_LANE_FENCED] = "fenced",
	[RELIQ_LANE_LAPSED] = "lapsed",
	[RELIQ_LANE_DIVERGED] = "diverged",
	[RELIQ_LANE_LEAVING] = "leaving",
};

static const ReliqWorkerState lane_shown[] = {
	[RELIQ_LANE_ATTACHING] = RELIQ_WORKER_CONNECTING,
	[RELIQ_LANE_BACKING_OFF] = RELIQ_WORKER_BACKING_OFF,
	[RELIQ_LANE_FETCHING] = RELIQ_WORKER_FETCHING,
	[RELIQ_LANE_PROCESSING] = RELIQ_WORKER_PROCESSING,
	[RELIQ_LANE_FAILING] = RELIQ_WORKER_FAILING,
	[RELIQ_LANE_FENCED] = RELIQ_WORKER_FENCED,
	[RELIQ_LANE_LAPSED] = RELIQ_WORKER_CONNECTING,
	[RELIQ_LANE_DIVERGED] = RELIQ_WORKER_DIVERGED,
	[RELIQ_LANE_LEAVING] = RELIQ_WORKER_STOPPED,	/* not shown */
};

/*
 * What reliq.worker_status shows for the lane: its state, unless the
 * worker's connection is down (pool.c, show_link), which every lane shows.
 */
void
reliq_lane_publish(Lane *l)
{
	Pool	   *p = l->pool;

	if (l->status == NULL)
		return;
	reliq_lane_set_state(p->slot, l->status,
						 p->link_down ? p->link_state : lane_shown[l->state]);
}

/*
 * The one way a lane's state changes.  A change its states do not allow
 * is a bug: an assertion, and a WARNING in a build without assertions.
 */
static void
reliq_lane_transition(Lane *l, ReliqLaneState next)
{
	if (next != l->state && (lane_predecessors[next] & S(l->state)) == 0)
	{
		Assert(false);
		elog(WARNING, "reliq subscription \"%s\": a lane went from %s to %s, which its states do not allow",
			 l->sub->name, lane_state_names[l->state], lane_state_names[next]);
	}
	l->state = next;
	reliq_lane_publish(l);
}

/*
 * Where a lane goes on from a pause (a batch, the lease, leaving): without
 * a puller it attaches; with one it fetches, or fails while it holds a
 * batch.
 */
static ReliqLaneState
going_on(Lane *l)
{
	if (!reliq_lane_attached(l))
		return RELIQ_LANE_ATTACHING;
	return l->nheld > 0 ? RELIQ_LANE_FAILING : RELIQ_LANE_FETCHING;
}

static void
schedule_retry(Lane *l)
{
	l->retry_at = next_retry(&l->retries);
}

/*
 * The error boundary (see the file header): log the ERROR being handled
 * once while it stays the same (problem: where it is remembered), abort
 * the transaction if one is open, release LWLocks, restore the memory
 * context and resource owner of before.  Returns the error's message, in
 * cxt; the caller puts the lane back.
 */
char *
reliq_recover_from_error(char *problem, MemoryContext cxt, ResourceOwner owner)
{
	ErrorData  *edata;

	HOLD_INTERRUPTS();
	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	if (reliq_problem_is_new(problem, edata->message))
		EmitErrorReport();
	FlushErrorState();
	AbortCurrentTransaction();
	LWLockReleaseAll();
	pgstat_report_wait_end();
	pgstat_report_activity(STATE_IDLE, NULL);
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	RESUME_INTERRUPTS();
	return edata->message;
}

static bool
consumer_settings_differ(const ReliqSubscription *a, const ReliqSubscription *b)
{
	return strcmp(a->stream, b->stream) != 0 ||
		strcmp(a->consumer, b->consumer) != 0 ||
		strcmp(a->subject, b->subject) != 0 ||
		a->ack_wait_ms != b->ack_wait_ms ||
		reliq_subscription_max_ack_pending(a) != reliq_subscription_max_ack_pending(b);
}

/*
 * Stop pulling for the lane's consumer.  A pull still out keeps being
 * answered to our inbox until it runs out; what it brings for a consumer
 * nobody pulls for is given back after a delay (nats_inbox.c).
 */
void
reliq_lane_detach(Lane *l)
{
	reliq_lane_drop_pull_turn(l);
	if (l->puller)
	{
		reliq_puller_destroy(l->puller, reliq_ack_release_delay_ms(l->puller));
		l->puller = NULL;
	}
	if (l->state == RELIQ_LANE_FETCHING || l->state == RELIQ_LANE_PROCESSING ||
		l->state == RELIQ_LANE_FAILING)
		reliq_lane_transition(l, RELIQ_LANE_ATTACHING);
	l->missed_pulls = 0;
	l->empty_pulls = 0;
}

/*
 * A subscription dropped and made again under the same name (or its lane
 * moved between subscriptions of one consumer) finds the lane it replaces
 * still leaving here, holding the consumer's puller until its last pull
 * runs out -- up to RELIQ_IDLE_PULL_MS.  The inbox has one puller per
 * consumer, so the new lane takes that puller over, with its pull and
 * what it brought: they are deliveries of the same consumer, and the old
 * lane has nothing left to do.
 */
static ReliqPuller *
adopt_puller(Lane *l)
{
	Pool	   *p = l->pool;
	int			i;

	for (i = 0; i < p->nlanes; i++)
	{
		Lane	   *old = p->lanes[i];
		ReliqPuller *puller = old->puller;

		if (old == l || !reliq_lane_leaving(old) || puller == NULL ||
			strcmp(old->sub->stream, l->sub->stream) != 0 ||
			strcmp(old->consumer, l->consumer) != 0)
			continue;
		old->puller = NULL;
		ereport(DEBUG1,
				(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
				 errmsg("reliq subscription \"%s\": takes over the pull of consumer \"%s\" from a lane given up",
						l->sub->name, l->consumer)));
		return puller;
	}
	return NULL;
}

/* (Re)load the lane's subscription; false if it is gone. */
static bool
load_subscription(Lane *l)
{
	MemoryContext cxt;
	MemoryContext caller;
	ReliqSubscription *sub;

	/* under the turn's context until loaded, so that an error frees it */
	cxt = AllocSetContextCreate(CurrentMemoryContext, "reliq subscription",
								ALLOCSET_SMALL_SIZES);
	caller = reliq_xact_begin("reliq: reading subscription");
	MemoryContextSwitchTo(cxt);
	/* a catalog of another version: exit (the launcher says why) */
	sub = NULL;
	if (reliq_catalog_extension_present() && reliq_catalog_version_ok(DEBUG1))
		sub = reliq_catalog_load_subscription(l->subscription_id);
	reliq_xact_commit(caller);

	if (sub == NULL)
	{
		MemoryContextDelete(cxt);
		return false;
	}
	MemoryContextSetParent(cxt, TopMemoryContext);
	if (l->sub != NULL && consumer_settings_differ(l->sub, sub))
		reliq_lane_detach(l);				/* attach again: updates the consumer */
	if (l->sub != NULL && l->nheld > 0)
		l->next_probe = GetCurrentTimestamp();	/* a fix may have come */
	if (l->sub_cxt)
		MemoryContextDelete(l->sub_cxt);
	l->sub_cxt = cxt;
	l->sub = sub;
	reliq_batch_set_subscription(&l->batch, sub);
	reliq_lane_report_progress(l, l->nheld);
	return true;
}

/*
 * (Re)load a lane's subscription under an error boundary (a lane's
 * failure: see recover_from_error).  On an ERROR the lane keeps what it
 * had and the problem shows in the subscription's last_error, logged once
 * while it stays the same (the pool's record of it); the pool takes up
 * its assignment again after a backoff.
 */
ReliqLoadOutcome
reliq_lane_load(Lane *l)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool loaded = false;
	char	   *volatile message = NULL;

	PG_TRY();
	{
		loaded = load_subscription(l);
	}
	PG_CATCH();
	{
		message = reliq_recover_from_error(l->pool->assignment_problem, cxt, owner);
	}
	PG_END_TRY();
	if (message == NULL)
		return loaded ? RELIQ_LOAD_OK : RELIQ_LOAD_GONE;
	if (l->stats == NULL)
		l->stats = reliq_stats_find(l->subscription_id, false, NULL);
	if (l->stats != NULL)
		reliq_stats_set_error(l->stats, message);
	return RELIQ_LOAD_FAILED;
}

/*
 * Attach to the durable consumer: learn which incarnation of the stream
 * exists, record it, make the consumer match the subscription (creating
 * it after the last acknowledged message if it was lost), and make a
 * puller for it on the worker's inbox.
 */
static bool
ensure_attached(Lane *l)
{
	Pool	   *p = l->pool;
	ReliqStreamInfo before;
	ReliqStreamInfo after;
	ReliqConsumerInfo info;
	ReliqConsumerSpec spec;
	int64		claimed;
	int64		floor;
	bool		has_history;
	bool		created;
	bool		diverged;
	char	   *description;
	ReliqLeaseView lease;
	MemoryContext caller;
	ReliqNatsStatus st = {0};

	if (reliq_lane_attached(l))
		return true;
	if (GetCurrentTimestamp() < l->retry_at)
		return false;
	reliq_lane_transition(l, RELIQ_LANE_ATTACHING);

	if (!reliq_nats_stream_info(p->conn, l->sub->stream, &before, &st))
	{
		reliq_note_problem(l, WARNING, ERRCODE_CONNECTION_FAILURE, "could not look up stream \"%s\": %s",
					 l->sub->stream, st.message);
		schedule_retry(l);
		return false;
	}
	if (!before.found)
	{
		reliq_note_problem(l, WARNING, ERRCODE_UNDEFINED_OBJECT, "stream \"%s\" does not exist", l->sub->stream);
		schedule_retry(l);
		return false;
	}

	caller = reliq_xact_begin("reliq: attaching to the stream");
	claimed = reliq_catalog_claim_stream(l->sub->id, before.created_ns,
										 &floor, &has_history);
	diverged = claimed != 0 &&
		reliq_catalog_diverged(l->sub->id, before.created_ns);
	reliq_xact_commit(caller);
	if (claimed == 0)
	{
		/* dropped or paused: the launcher takes the lane away */
		schedule_retry(l);
		return false;
	}
	Assert(claimed == before.created_ns);
	if (diverged && l->control != NULL)
	{
		/*
		 * The stream lost its tail (after a restart, before the monitor's
		 * first round has said so in shared memory): attach to nothing.
		 */
		reliq_control_set_diverged(l->control, true);
		schedule_retry(l);
		return false;
	}

	/*
	 * Under a lease, the consumer its holder made (lease.c), never made
	 * here: a worker of a former owner, late, would otherwise make one
	 * and consume beside the new owner.
	 */
	memset(&lease, 0, sizeof(lease));
	if (l->control != NULL)
		reliq_lease_read(l->control, &lease);
	strlcpy(l->consumer, lease.consumer[0] ? lease.consumer : l->sub->consumer,
			sizeof(l->consumer));

	description = psprintf("reliq subscription %s", l->sub->name);
	memset(&spec, 0, sizeof(spec));
	spec.stream = l->sub->stream;
	spec.consumer = l->consumer;
	spec.must_exist = lease.state != RELIQ_LEASE_OFF;
	spec.filter_subject = l->sub->subject;
	spec.description = description;
	spec.ack_wait_ms = l->sub->ack_wait_ms;
	spec.max_ack_pending = reliq_subscription_max_ack_pending(l->sub);
	if (has_history)
	{
		spec.deliver_from = RELIQ_DELIVER_FROM_SEQ;
		spec.start_seq = floor + 1;
	}
	else
		spec.deliver_from = l->sub->start_new ? RELIQ_DELIVER_NEW : RELIQ_DELIVER_ALL;
	spec.owner_instance = reliq_lease_instance();
	spec.owner_epoch = l->lease_epoch;

	if (!reliq_nats_ensure_consumer(p->conn, &spec, &info, &created, &st))
	{
		if (spec.must_exist && st.js_error == RELIQ_JS_CONSUMER_NOT_FOUND)
			reliq_note_problem(l, LOG, ERRCODE_UNDEFINED_OBJECT, "consumer \"%s\" of stream \"%s\" does not exist; the monitor of the lease's holder makes it",
							   l->consumer, l->sub->stream);
		else
			reliq_note_problem(l, WARNING, ERRCODE_EXTERNAL_ROUTINE_EXCEPTION, "could not set up consumer \"%s\" of stream \"%s\": %s",
							   l->consumer, l->sub->stream, st.message);
		schedule_retry(l);
		return false;
	}
	if (!reliq_nats_stream_info(p->conn, l->sub->stream, &after, NULL) ||
		!after.found || after.created_ns != before.created_ns)
	{
		reliq_note_problem(l, LOG, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "stream \"%s\" changed while attaching; trying again",
					 l->sub->stream);
		schedule_retry(l);
		return false;
	}
	if (created)
		ereport(LOG,
				(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
				 errmsg("reliq subscription \"%s\": created consumer \"%s\" on stream \"%s\"%s",
						l->sub->name, l->consumer, l->sub->stream,
						has_history ? psprintf(" from sequence " INT64_FORMAT, floor + 1) : "")));

	l->stream_created = before.created_ns;
	l->batch.stream_created = before.created_ns;

	if (l->puller == NULL)
		l->puller = adopt_puller(l);
	if (l->puller == NULL)
		l->puller = reliq_puller_create(p->inbox, l->sub->stream, l->consumer, &st);
	if (l->puller == NULL)
	{
		reliq_note_problem(l, WARNING, ERRCODE_EXTERNAL_ROUTINE_EXCEPTION, "could not pull from consumer \"%s\": %s",
					 l->consumer, st.message);
		schedule_retry(l);
		return false;
	}
	reliq_lane_transition(l, going_on(l));
	l->missed_pulls = 0;
	l->empty_pulls = 0;
	reliq_clear_problem(l, "attached to its consumer again");
	ereport(DEBUG1,
			(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
			 errmsg("reliq subscription \"%s\": worker %d attached to consumer \"%s\" (" INT64_FORMAT " pending)",
					l->sub->name, p->index, l->consumer, info.num_pending)));
	return true;
}

/*
 * The consumer attached to is another cluster's now, or was made again:
 * drop the puller and any held batch (its reply subjects name deliveries
 * of the consumer as it was; an ack sent there could ack a delivery of the
 * new one).  Those messages come again from wherever they belong.
 */
static void
forget_consumer(Lane *l)
{
	reliq_lane_detach(l);
	reliq_apply_drop_held(l);
	reliq_ordering_forget(l);
}

/*
 * May this lane pull?  While another cluster holds the lease (or this one
 * is taking it over), the lane holds no puller and waits.  While this
 * cluster's own lease has merely lapsed (the monitor could not renew it,
 * usually because NATS is unreachable), it keeps its puller and pulls
 * nothing until the lease is renewed.  When the lease was acquired anew,
 * the consumer was made again at this database's position: attach afresh.
 */
static bool
lease_allows(Lane *l)
{
	ReliqLeaseView lease;

	memset(&lease, 0, sizeof(lease));
	if (l->control != NULL)
		reliq_lease_read(l->control, &lease);
	if (reliq_lease_usable(&lease))
	{
		if (lease.state == RELIQ_LEASE_OWNED && lease.epoch != l->lease_epoch)
		{
			forget_consumer(l);
			l->lease_epoch = lease.epoch;
		}
		if (l->state == RELIQ_LANE_FENCED || l->state == RELIQ_LANE_LAPSED)
			reliq_lane_transition(l, going_on(l));
		return true;
	}
	if (lease.state == RELIQ_LEASE_FENCED || lease.state == RELIQ_LEASE_ACQUIRING)
	{
		forget_consumer(l);
		reliq_lane_transition(l, RELIQ_LANE_FENCED);
		if (lease.state == RELIQ_LEASE_FENCED)
			reliq_note_problem(l, LOG, ERRCODE_OBJECT_IN_USE, "fenced: consumer \"%s\" is owned by %s; to move it here: SELECT reliq.take_over('%s')",
						 l->sub->consumer, lease.holder, l->sub->name);
	}
	else if (l->stats == NULL)
		reliq_note_problem(l, WARNING, ERRCODE_CONFIGURATION_LIMIT_EXCEEDED, "no statistics entry, so no lease: raise reliq.max_subscriptions");
	else
		reliq_lane_transition(l, RELIQ_LANE_LAPSED);	/* until it is renewed */
	return false;
}

/*
 * May this lane consume?  Not while its stream is diverged (it lost its
 * tail, monitor.c): a new message at a sequence this database applied
 * would be taken for a duplicate.  The lane gives back what it holds
 * (released, neither applied nor dead-lettered), drops its puller and
 * waits; the monitor rewinds the consumer once reliq.accept_stream_loss()
 * has moved the floor, and clears the state.  A spinlock read per turn.
 */
static bool
stream_allows(Lane *l)
{
	if (l->control == NULL || !reliq_control_diverged(l->control))
	{
		if (l->state == RELIQ_LANE_DIVERGED)
			reliq_lane_transition(l, going_on(l));
		return true;
	}
	if (l->state != RELIQ_LANE_DIVERGED)
	{
		(void) reliq_ack_release(l->pool->conn, l->held, l->nheld,
								 reliq_ack_release_delay_ms(l->puller));
		forget_consumer(l);
		reliq_lane_transition(l, RELIQ_LANE_DIVERGED);
		reliq_lane_report_progress(l, 0);
	}
	return false;
}

/*
 * What applying a batch found (apply.c), acted on: the lane's transitions
 * are made here, not there.
 */
static void
after_apply(Lane *l, ReliqApplyVerdict verdict)
{
	switch (verdict)
	{
		case RELIQ_APPLY_DONE:
		case RELIQ_APPLY_HOLD:
			reliq_lane_transition(l, going_on(l));
			break;
		case RELIQ_APPLY_GONE:
			reliq_lane_begin_leaving(l, false);
			break;
		case RELIQ_APPLY_LEASE_LOST:
			reliq_note_problem(l, LOG, ERRCODE_OBJECT_IN_USE, "the lease lapsed during a batch; its messages are left unacknowledged");
			forget_consumer(l);
			break;
		case RELIQ_APPLY_STREAM_CHANGED:
			reliq_note_problem(l, LOG, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "stream \"%s\" was made again; attaching to the new one",
							   l->sub->stream);
			reliq_lane_detach(l);
			break;
		case RELIQ_APPLY_DIVERGED:
			(void) stream_allows(l);
			break;
	}
}

/*
 * Failing: keep the held batch alive on the server and retry it when its
 * time comes.  Never waits: the worker's other lanes go on meanwhile.
 * True when a probe ran.
 */
static bool
hold_step(Lane *l)
{
	TimestampTz now = GetCurrentTimestamp();

	if (!reliq_ack_lease_current(l->control, l->sub->id, l->lease_epoch))
	{
		/* no longer ours: give the held batch back to the owner */
		(void) reliq_ack_release(l->pool->conn, l->held, l->nheld, reliq_ack_release_delay_ms(l->puller));
		forget_consumer(l);
		return false;
	}
	if (now >= l->next_progress && reliq_nats_is_connected(l->pool->conn))
	{
		reliq_ack_in_progress(l->pool->conn, l->held, l->nheld);
		l->next_progress = after_ms(Max(l->sub->ack_wait_ms / 2, 1));
	}
	if (now >= l->next_probe)
	{
		reliq_lane_transition(l, RELIQ_LANE_PROCESSING);
		after_apply(l, reliq_apply_probe(l));
		return true;
	}
	return false;
}

static void
open_status(Lane *l)
{
	if (l->status == NULL)
		l->status = reliq_lane_open(l->pool->slot, l->subscription_id,
									l->sub->name, l->lane_index);
	reliq_lane_publish(l);
	reliq_lane_report_progress(l, l->nheld);
}

/*
 * A lane for a subscription the launcher assigned; NULL when its
 * subscription could not be loaded (*outcome says why).  The pool adds it
 * to its lanes.
 */
Lane *
reliq_lane_create(Pool *p, const ReliqAssignment *assignment,
				  ReliqLoadOutcome *outcome)
{
	Lane	   *l = MemoryContextAllocZero(TopMemoryContext, sizeof(Lane));

	l->pool = p;
	l->state = RELIQ_LANE_ATTACHING;
	l->subscription_id = assignment->subscription_id;
	l->lane_index = assignment->lane_index;
	reliq_batch_init(&l->batch);
	*outcome = reliq_lane_load(l);
	if (*outcome != RELIQ_LOAD_OK)
	{
		reliq_batch_free(&l->batch);
		pfree(l);
		return NULL;
	}
	l->stats = reliq_stats_find(l->sub->id, true, l->sub->name);
	l->batch.stats = l->stats;
	l->control = reliq_control_find(l->sub->id, true);
	l->batch.control = l->control;
	l->outbox_pending = true;	/* a worker before us may have left rows */
	open_status(l);
	return l;
}

/* Given back before its last pull ran out: the lane is taken up again. */
void
reliq_lane_take_back(Lane *l)
{
	reliq_lane_transition(l, going_on(l));
	open_status(l);
}

/*
 * A lane is no longer assigned (pause, drop, a worker fewer): it applies
 * nothing more and shows no more.  A held batch is given back at once
 * (NAK).  The lane stays, unseen, until its last pull has run out: what
 * that pull brings waits in its queue, to be applied if the lane is given
 * back to this worker before then, or given back (NAK, without delay)
 * once the pull has ended.  (Given back while the pull still waits,
 * nats-server 2.9 would hand a message straight back to it.)  When the
 * worker is about to close its connection, which ends its pulls, all is
 * given back at once with a delay of a second at most.
 */
void
reliq_lane_begin_leaving(Lane *l, bool closing)
{
	int64		delay = closing ? Min(reliq_ack_release_delay_ms(l->puller), 1000) : 0;
	int			released;

	if (!reliq_lane_leaving(l))
		ereport(DEBUG1,
				(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
				 errmsg("reliq worker %d gives up subscription \"%s\"",
						l->pool->index, l->sub->name)));
	reliq_lane_transition(l, RELIQ_LANE_LEAVING);
	released = reliq_ack_release(l->pool->conn, l->held, l->nheld, delay);
	released += reliq_ordering_release(l, delay);
	reliq_apply_drop_held(l);
	if (closing && l->puller)
		released += reliq_lane_give_back_queued(l, delay);

	/*
	 * A stopping worker flushes once, before it exits, not once per lane
	 * (a round trip each); a lane given up alone flushes what it gave back.
	 */
	if (released > 0 && !closing)
		(void) reliq_nats_flush(l->pool->conn, reliq_nats_timeout, NULL);
	if (l->status != NULL)
	{
		reliq_lane_close(l->pool->slot, l->status);
		l->status = NULL;
	}
}

/* A leaving lane: done once its last pull has ended; then give back. */
bool
reliq_lane_leaving_done(Lane *l)
{
	if (l->puller != NULL && reliq_puller_active(l->puller) &&
		reliq_puller_request_left_ms(l->puller) > 0 &&
		l->pool->conn != NULL && reliq_nats_is_connected(l->pool->conn))
		return false;
	if (l->puller != NULL && reliq_puller_queued(l->puller) > 0)
		(void) reliq_lane_give_back_queued(l, 0);
	return true;
}

/*
 * The lane's kept plans and sink, freed in a transaction of their own.  An
 * ERROR there (the catalog refusing) is logged and the lane freed all the
 * same: what a failed free leaves is memory, not work, and the worker and
 * its other lanes go on.
 */
static void
free_batch_state(Lane *l)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	PG_TRY();
	{
		MemoryContext caller = reliq_xact_begin("reliq: giving up a subscription");

		reliq_batch_free(&l->batch);
		reliq_xact_commit(caller);
	}
	PG_CATCH();
	{
		(void) reliq_recover_from_error(l->problem, cxt, owner);
	}
	PG_END_TRY();
}

void
reliq_lane_free(Lane *l)
{
	if (l->status != NULL)
		reliq_lane_close(l->pool->slot, l->status);
	reliq_lane_detach(l);
	reliq_apply_drop_held(l);
	reliq_ordering_forget(l);
	free_batch_state(l);
	if (l->sub_cxt)
		MemoryContextDelete(l->sub_cxt);
	pfree(l);
}

/*
 * One lane's turn: at most one batch.  Never waits for messages.  True
 * when it applied something.
 */
static bool
turn(Lane *l)
{
	ReliqMessage *msgs;
	int			n;

	if (reliq_lane_leaving(l))
		return false;
	if (!lease_allows(l))
		return false;
	if (!stream_allows(l))
		return false;
	if (!ensure_attached(l))
	{
		if (GetCurrentTimestamp() < l->retry_at)
			reliq_lane_transition(l, RELIQ_LANE_BACKING_OFF);
		return false;
	}
	if (l->ndeferred > 0 && l->sub->norder == 0)
		(void) reliq_ordering_release(l, 0);	/* ordering turned off */
	reliq_ordering_keep_alive(l);
	reliq_lane_hand_on_pull_turn(l);
	if (l->nheld > 0)
		return hold_step(l);
	if (l->outbox_pending && GetCurrentTimestamp() >= l->next_outbox_try)
		reliq_apply_drain_outbox(l);
	if (!reliq_lane_attached(l))
		return false;
	if (l->ndeferred > 0 && (l->deferred_ready || reliq_ordering_ready(l)))
		l->deferred_ready = true;

	/*
	 * What waited for a key whose blocker was finished goes with the next
	 * batch (reliq_ordering_apply takes both), or alone if nothing has
	 * arrived: at once with one worker (whose idle pull may last 30 s),
	 * once the short pull has ended when the workers pull in turn.
	 */
	msgs = palloc(sizeof(ReliqMessage) * l->sub->batch_size);
	n = reliq_lane_collect_batch(l, msgs, l->sub->batch_size);
	if (n == 0 && (!l->deferred_ready ||
				   (reliq_lane_pulls_in_turn(l) && reliq_puller_active(l->puller))))
		return false;
	reliq_lane_transition(l, RELIQ_LANE_PROCESSING);
	after_apply(l, reliq_apply_collected(l, msgs, n));
	return true;
}

/*
 * A lane's turn raised an ERROR (see recover_from_error): do to the lane
 * what a restart of the worker did to all of them, and nothing to the
 * others.  What it was applying and what it held is given back (NAK,
 * delayed until its pull has run out), its puller dropped; it attaches
 * again after a backoff.  The problem shows in last_error.
 */
static void
lane_failed(Lane *l, const char *message)
{
	Pool	   *p = l->pool;
	int64		delay = reliq_ack_release_delay_ms(l->puller);

	if (p->applying_lane == l)
	{
		(void) reliq_ack_release(p->conn, p->applying, p->napplying, delay);
		p->applying_lane = NULL;
		p->applying = NULL;
		p->napplying = 0;
		p->applying_alone = 0;
	}
	(void) reliq_ack_release(p->conn, l->held, l->nheld, delay);
	(void) reliq_ordering_release(l, delay);
	forget_consumer(l);
	if (l->stats != NULL && !reliq_lane_leaving(l))
		reliq_stats_set_error(l->stats, message);
	schedule_retry(l);
	if (!reliq_lane_leaving(l))
		reliq_lane_transition(l, RELIQ_LANE_BACKING_OFF);
	reliq_lane_report_progress(l, 0);
}

/* One lane's turn under its own error boundary. */
bool
reliq_lane_turn(Lane *l)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool busy = false;
	char	   *volatile message = NULL;

	PG_TRY();
	{
		busy = turn(l);
	}
	PG_CATCH();
	{
		message = reliq_recover_from_error(l->problem, cxt, owner);
	}
	PG_END_TRY();
	if (message != NULL)
		lane_failed(l, message);
	return busy;
}

/*
 * Does the lane need a turn now: something arrived for it, its pull ended
 * or needs sending, or one of its timers is due?  An idle lane with a pull
 * out needs none; it is still looked at in every sweep (RELIQ_SWEEP_MS),
 * for what only a turn notices (a lease lost, a problem resolved).
 */
bool
reliq_lane_wants_turn(Lane *l, TimestampTz now)
{
	if (reliq_lane_leaving(l))
		return false;
	if (!reliq_lane_attached(l))
		return now >= l->retry_at;
	if (l->ndeferred > 0 && !l->deferred_ready &&
		(now >= l->next_deferred_progress || reliq_ordering_changed(l)))
		return true;
	if (l->nheld > 0)
		return now >= l->next_probe || now >= l->next_progress;
	if (l->outbox_pending && now >= l->next_outbox_try)
		return true;
	if (!reliq_puller_active(l->puller))
		return now >= l->pull_after;
	return reliq_puller_wants_turn(l->puller, now);
}

/* The earliest of next and the lane's timers still to come. */
TimestampTz
reliq_lane_next_wake(Lane *l, TimestampTz now, TimestampTz next)
{
	if (l->nheld > 0)
	{
		next = Min(next, l->next_probe);
		next = Min(next, l->next_progress);
	}
	if (l->ndeferred > 0)
		next = Min(next, l->next_deferred_progress);
	if (!reliq_lane_attached(l) && l->retry_at > now)
		next = Min(next, l->retry_at);
	if (l->pull_after > now)
		next = Min(next, l->pull_after);
	return next;
}
