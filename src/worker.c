/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  A reliq pool worker: one NATS connection, serving each subscription
 *	  the launcher assigned to it as a lane.  For each lane: pull a batch,
 *	  apply it in one transaction (batch.c), then acknowledge.  The order
 *	  is fetch, BEGIN, ledger, handlers, COMMIT, ack (batch.c records the
 *	  stream sequences in the ledger before it runs the handlers); nothing
 *	  is acked before its transaction commits.
 *
 * The pool (drawn in docs/architecture.md)
 * ----------------------------------------
 * reliq.max_workers workers at most are shared by every enabled
 * subscription.  The launcher gives each subscription min(concurrency,
 * max_workers) lanes on distinct workers, the least loaded first, and
 * moves none while its worker runs.  A worker turns round its lanes:
 * each lane in turn applies at most one batch of what has arrived for it,
 * then the next lane gets its turn, so a busy subscription cannot starve
 * its neighbours and an idle one costs a few checks.  When no lane had
 * anything, the worker waits on its inbox (RELIQ_POLL_MS at most) for
 * whatever arrives for any lane.  Every lane keeps its own pull request
 * out on the server (long ones with heartbeats once it is idle), its own
 * ledger plans, handler, breaker and held batch, and runs its handlers
 * as its subscription's owner.
 *
 * States of a lane (reliq.worker_status):
 *
 *	 connecting    attaching to the consumer (or the worker is connecting)
 *	 fetching      a pull request is out; waiting for messages
 *	 processing    applying a batch, then acking it
 *	 failing       the subscription fails as a whole: the lane keeps the
 *				   failed batch (sending in-progress acks, so the server
 *				   neither redelivers it nor counts deliveries), pulls
 *				   nothing, and retries the batch after the backoff delays;
 *				   the worker's other lanes go on
 *	 disconnected  the connection dropped; the client reconnects by itself
 *	 backing_off   connecting or attaching failed; waiting to try again
 *	 stopping      the lane is leaving (pause, drop, fewer workers): what it
 *				   holds unapplied is given back (NAK)
 *	 fenced        this cluster does not hold the consumer's lease (lease.c):
 *				   no pull, no ack; attached anew once it does
 *
 * A worker with no lane shows once, as idle.
 *
 * Waits: the inbox is read in slices of RELIQ_POLL_MS so that interrupts
 * (shutdown, reload) and the postmaster's death are seen quickly.  SIGTERM
 * ends the worker at once (die): an unfinished batch is rolled back,
 * unacked, and given back.
 *
 * Nothing is acked that may not last (may_acknowledge): not after the
 * postmaster died (the commit went to a data directory no standby will
 * see), not while the worker is asked to die, not before the synchronous
 * standbys that synchronous_commit asks for confirmed the commit (a cancel
 * cuts COMMIT's own wait short), and not once the lease has lapsed.
 *
 * The consumer's figures on the server, and the floor and the pruning of
 * the ledger, are the monitor's alone (monitor.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <malloc.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/syncrep.h"
#include "replication/walsender.h"
#include "replication/walsender_private.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/pmsignal.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "batch.h"
#include "catalog.h"
#include "nats_client.h"
#include "outbox.h"
#include "reliq.h"
#include "shmem.h"
#include "version.h"
#include "xact.h"
#include "worker.h"

/* How often a waiting worker looks at its latch and interrupts. */
#define RELIQ_POLL_MS 100
/* Filling a batch under a backlog (collect_batch). */
#define RELIQ_LINGER_MS 1		/* longest wait for more messages */
#define RELIQ_GAP_US 200		/* a longer silence ends the batch */

/*
 * An idle lane's pulls: after this many empty pulls in a row, a lane asks
 * for pulls of RELIQ_IDLE_PULL_MS with a heartbeat every
 * RELIQ_IDLE_HEARTBEAT_MS (a silent pull is noticed after three), so that
 * a thousand idle subscriptions cost little.  A message ends idleness.
 */
#define RELIQ_IDLE_AFTER 2
#define RELIQ_IDLE_PULL_MS 30000
#define RELIQ_IDLE_HEARTBEAT_MS 5000

/* Every lane gets a turn at least this often, needed or not. */
#define RELIQ_SWEEP_MS 1000

/* At most one WARNING about failing messages per this many ms. */
#define RELIQ_WARNING_INTERVAL_MS 10000

typedef struct Pool Pool;

/* One subscription served by this worker. */
typedef struct Lane
{
	Pool	   *pool;
	ReliqLaneStatus *status;	/* in the slot; NULL once closed */
	ReliqSubscriptionStats *stats;
	int64		subscription_id;
	int			lane_index;
	ReliqSubscription *sub;
	MemoryContext sub_cxt;		/* holds sub */
	MemoryContext held_cxt;		/* holds the held batch, if any */
	ReliqBatchState batch;

	ReliqPuller *puller;
	bool		attached;
	int64		stream_created;
	int			missed_pulls;
	int			empty_pulls;	/* in a row; RELIQ_IDLE_AFTER makes it idle */
	TimestampTz pull_after;		/* no pull before (after a refused one) */

	int			retries;
	TimestampTz retry_at;
	char		problem[RELIQ_ERROR_LEN];

	ReliqMessage *held;
	int			nheld;
	int			probes;
	TimestampTz next_probe;
	TimestampTz next_progress;

	bool		leaving;		/* no longer assigned: going */
	bool		outbox_pending; /* rows may wait in reliq._outbox */
	TimestampTz next_outbox_try;

	TimestampTz last_warning_at;
	int			unreported_failures;

	uint64		lease_epoch;	/* of the lease when last attached */
	bool		awaiting_standby;	/* logged that acks wait for a standby */
} Lane;

struct Pool
{
	ReliqWorkerSlot *slot;
	int			index;			/* of the slot: the worker's number */
	ReliqNatsConnection *conn;
	ReliqInbox *inbox;
	bool		connected;		/* as last reported */
	uint64		reconnects_seen;
	int			retries;
	TimestampTz retry_at;
	char		problem[RELIQ_ERROR_LEN];

	uint64		assignment_seen;
	int			assignment_retries; /* taking up a lane failed: again at */
	TimestampTz assignment_retry_at;	/* assignment_retry_at (0: no) */
	char		assignment_problem[RELIQ_ERROR_LEN];
	Lane	  **lanes;
	int			nlanes;
	int			lanes_capacity;
	int			next_lane;		/* whose turn comes first next round */
	TimestampTz next_sweep;		/* every lane gets a turn then */
	TimestampTz next_refresh;	/* see pool_refresh */
	bool		stopping;
	MemoryContext turn_cxt;		/* reset before each lane's turn */

	/* the messages being applied (until acked), and whose */
	Lane	   *applying_lane;
	ReliqMessage *applying;
	int			napplying;
	int64		applying_alone; /* the redelivery being applied alone */
};

/*
 * The worker's state, static: the exit callbacks read it, and an error
 * that ends the worker may have unwound reliq_worker_main's frame.
 */
static Pool TheWorker;
static Pool *MyPool = NULL;		/* set once the worker is under way */

static TimestampTz
after_ms(int64 ms)
{
	return TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);
}

static long
ms_until(TimestampTz when)
{
	long		secs;
	int			usecs;

	TimestampDifference(GetCurrentTimestamp(), when, &secs, &usecs);
	return secs * 1000 + usecs / 1000;
}

/*
 * Give messages back: a NAK each, so that the server delivers them again
 * soon rather than after ack_wait.  Unlike an ack, a NAK claims nothing: a
 * redelivery of what was committed is absorbed by the ledger, and
 * nats-server ignores a NAK that does not match a pending delivery of the
 * consumer as it is now (an ack could move its position).  So NAKs need
 * no lease, only a connection.  delay_ms lets a pull request of ours that
 * the server still holds run out first, or it would get them again.
 */
static int
release_messages(Pool *p, ReliqMessage *msgs, int n, int64 delay_ms)
{
	int			released = 0;
	int			i;

	if (p->conn == NULL || !reliq_nats_is_connected(p->conn))
		return 0;
	for (i = 0; i < n; i++)
		released += reliq_nats_ack(p->conn, msgs[i].reply, RELIQ_NAK, delay_ms);
	return released;
}

/* Delay for NAKs: until the lane's outstanding pull (if any) has run out. */
static int64
release_delay_ms(Lane *l)
{
	int64		left = l->puller ? reliq_puller_request_left_ms(l->puller) : 0;

	return left > 0 ? left + 100 : 0;
}

/*
 * At exit, give back what this worker holds and has not acked: the batch
 * being applied when a fast shutdown interrupted it, the held batches of
 * failing subscriptions, and what arrived meanwhile.  Otherwise each would
 * wait for ack_wait.  The connection closes right after, which ends our
 * pulls on the server, so a second is delay enough.
 */
static void
release_unapplied(Pool *p)
{
	int			released = 0;
	int			i;

	if (p->conn == NULL || !reliq_nats_is_connected(p->conn) || !PostmasterIsAlive())
		return;
	if (p->inbox)
	{
		reliq_inbox_closing(p->inbox);
		(void) reliq_inbox_pump(p->inbox, 0);
	}
	for (i = 0; i < p->nlanes; i++)
	{
		Lane	   *l = p->lanes[i];
		int64		delay = Min(release_delay_ms(l), 1000);

		if (l == p->applying_lane)
			released += release_messages(p, p->applying, p->napplying, delay);
		released += release_messages(p, l->held, l->nheld, delay);
		if (l->puller != NULL)
			released += reliq_puller_release_queued(l->puller, delay);
	}
	if (released > 0)
		(void) reliq_nats_flush(p->conn, Min(reliq_nats_timeout, 1000));
}

/*
 * Close the NATS connection (sending what it buffered) before the slot is
 * freed: a free slot promises the monitor that this worker can send
 * nothing more (lease.c releases leases at a clean shutdown on that).
 */
static void
close_connection(int code, Datum arg)
{
	if (MyPool != NULL)
		release_unapplied(MyPool);
	reliq_nats_close(reliq_nats_session_connection_if_any());
}

static void
detach_slot(int code, Datum arg)
{
	Pool	   *p = MyPool;
	int			i;

	if (p == NULL || p->slot == NULL)
		return;
	/* dying while applying one message alone: that message is the cause */
	if (p->applying_alone != 0 && p->applying_lane != NULL &&
		p->applying_lane->stats != NULL)
		reliq_stats_note_death(p->applying_lane->stats, p->applying_alone);
	for (i = 0; i < p->nlanes; i++)
		if (p->lanes[i]->status != NULL)
			reliq_lane_close(p->slot, p->lanes[i]->status);
	SpinLockAcquire(&p->slot->mutex);
	p->slot->pid = 0;
	p->slot->latch = NULL;
	p->slot->state = RELIQ_WORKER_STOPPED;
	p->slot->connected = false;
	SpinLockRelease(&p->slot->mutex);
	p->slot = NULL;
}

/* Take over the slot the launcher prepared, unless it has moved on. */
static bool
attach_slot(Pool *p, int slot_index, uint64 generation)
{
	ReliqWorkerSlot *slot;
	bool		ours;

	if (slot_index < 0 || slot_index >= reliq_shared->max_workers)
		return false;
	slot = &reliq_shared->slots[slot_index];

	LWLockAcquire(reliq_shared->lock, LW_SHARED);
	ours = slot->in_use && slot->generation == generation;
	if (ours)
	{
		SpinLockAcquire(&slot->mutex);
		slot->pid = MyProcPid;
		slot->latch = MyLatch;
		slot->state = RELIQ_WORKER_CONNECTING;
		slot->since = GetCurrentTimestamp();
		slot->started_at = slot->since;
		slot->connected = false;
		slot->disconnected_at = slot->since;
		SpinLockRelease(&slot->mutex);
	}
	LWLockRelease(reliq_shared->lock);
	if (!ours)
		return false;

	p->slot = slot;
	p->index = slot_index;
	on_shmem_exit(detach_slot, (Datum) 0);
	before_shmem_exit(close_connection, (Datum) 0);
	return true;
}

static void
set_state(Lane *l, ReliqWorkerState state)
{
	if (l->status != NULL)
		reliq_lane_set_state(l->pool->slot, l->status, state);
}

static void
report_progress(Lane *l, int in_flight)
{
	if (l->status != NULL)
		reliq_lane_set_progress(l->pool->slot, l->status,
								l->sub ? l->sub->batch_size : 0, in_flight);
}

/* Make message the current problem; true if it is a new one (to log). */
static bool
problem_is_new(char *current, const char *message)
{
	if (strcmp(message, current) == 0)
		return false;
	strlcpy(current, message, RELIQ_ERROR_LEN);
	return true;
}

static void note_problem(Lane *l, int elevel, int sqlerrcode,
						 const char *fmt,...) pg_attribute_printf(4, 5);
static void note_pool_problem(Pool *p, int elevel, int sqlerrcode,
							  const char *fmt,...) pg_attribute_printf(4, 5);

/*
 * Log a problem of a lane once, when it starts or changes, and show it in
 * last_error; the same problem again stays quiet.
 */
static void
note_problem(Lane *l, int elevel, int sqlerrcode, const char *fmt,...)
{
	char		message[RELIQ_ERROR_LEN];
	va_list		args;

	va_start(args, fmt);
	vsnprintf(message, sizeof(message), fmt, args);
	va_end(args);

	if (problem_is_new(l->problem, message))
		ereport(elevel,
				(errcode(sqlerrcode),
				 errmsg("reliq subscription \"%s\": %s", l->sub->name, message)));
	if (l->stats != NULL)
		reliq_stats_set_error(l->stats, message);
}

static void
clear_problem(Lane *l, const char *resolution)
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
 * A problem of the worker's connection: logged once per worker, and shown
 * in the last_error of every subscription it serves.
 */
static void
note_pool_problem(Pool *p, int elevel, int sqlerrcode, const char *fmt,...)
{
	char		message[RELIQ_ERROR_LEN];
	va_list		args;
	int			i;

	va_start(args, fmt);
	vsnprintf(message, sizeof(message), fmt, args);
	va_end(args);

	if (problem_is_new(p->problem, message))
		ereport(elevel,
				(errcode(sqlerrcode),
				 errmsg("reliq worker %d: %s", p->index, message)));
	for (i = 0; i < p->nlanes; i++)
		if (p->lanes[i]->stats != NULL && !p->lanes[i]->leaving)
			reliq_stats_set_error(p->lanes[i]->stats, message);
}

static void
clear_pool_problem(Pool *p, const char *resolution)
{
	if (p->problem[0] != '\0')
	{
		ereport(LOG,
				(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
				 errmsg("reliq worker %d: %s", p->index, resolution)));
		p->problem[0] = '\0';
	}
	p->retries = 0;
}

/* The next try after a failure: reliq.naptime, doubling, capped. */
static TimestampTz
next_retry(int *retries)
{
	int64		delay = (int64) reliq_naptime << Min(*retries, 5);

	(*retries)++;
	return after_ms(Min(delay, reliq_max_retry_interval));
}

static void
schedule_retry(Lane *l)
{
	l->retry_at = next_retry(&l->retries);
}

/* Wait on the latch for at most ms, then look at interrupts. */
static void
wait_latch(long ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 Max(ms, 1), PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * The postmaster is gone: exit at once, acking nothing.  What this worker
 * committed since went to a data directory that no standby receives any
 * more; unacked, it is redelivered to whoever consumes next.
 */
static void
exit_if_postmaster_died(void)
{
	if (!PostmasterIsAlive())
		proc_exit(1);
}

/*
 * Error boundaries
 *
 * An ERROR in one lane's work outside batch.c (claiming the stream,
 * loading the subscription, the outbox, the lease, the acks) ends that
 * lane's turn, not the worker: in a background worker without a boundary
 * it becomes FATAL, and the worker restarted with all its lanes.  As the
 * autovacuum launcher and PostgreSQL's own main loop do, the boundary
 * logs the error (once while it stays the same: problem), aborts the
 * transaction if one is open, releases LWLocks, and restores the memory
 * context and resource owner of before; its caller then puts the lane
 * back as a restart of the worker would have, and lets it try again
 * after a backoff.  FATAL (SIGTERM, the postmaster gone) still ends the
 * worker.  batch.c catches the errors of a batch (handlers, ledger)
 * itself.  Returns the error's message, in cxt.
 */
static char *
recover_from_error(char *problem, MemoryContext cxt, ResourceOwner owner)
{
	ErrorData  *edata;

	HOLD_INTERRUPTS();
	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	if (problem_is_new(problem, edata->message))
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

/*
 * Subscription settings
 */

static bool
consumer_settings_differ(const ReliqSubscription *a, const ReliqSubscription *b)
{
	return strcmp(a->stream, b->stream) != 0 ||
		strcmp(a->consumer, b->consumer) != 0 ||
		strcmp(a->subject, b->subject) != 0 ||
		a->ack_wait_ms != b->ack_wait_ms ||
		reliq_subscription_max_ack_pending(a) != reliq_subscription_max_ack_pending(b);
}

static void detach(Lane *l);
static ReliqPuller *adopt_puller(Lane *l);
static void begin_leaving(Lane *l, bool closing);

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
	sub = reliq_catalog_extension_present() && reliq_catalog_version_ok(DEBUG1) ?
		reliq_catalog_load_subscription(l->subscription_id) : NULL;
	reliq_xact_commit(caller);

	if (sub == NULL)
	{
		MemoryContextDelete(cxt);
		return false;
	}
	MemoryContextSetParent(cxt, TopMemoryContext);
	if (l->sub != NULL && consumer_settings_differ(l->sub, sub))
		detach(l);				/* attach again: updates the consumer */
	if (l->sub != NULL && l->nheld > 0)
		l->next_probe = GetCurrentTimestamp();	/* a fix may have come */
	if (l->sub_cxt)
		MemoryContextDelete(l->sub_cxt);
	l->sub_cxt = cxt;
	l->sub = sub;
	reliq_batch_set_subscription(&l->batch, sub);
	report_progress(l, l->nheld);
	return true;
}

/*
 * Connection and consumer
 */

/*
 * Stop pulling for the lane's consumer.  A pull still out keeps being
 * answered to our inbox until it runs out; what it brings for a consumer
 * nobody pulls for is given back after a delay (nats_client.c).
 */
static void
detach(Lane *l)
{
	if (l->puller)
	{
		reliq_puller_destroy(l->puller, release_delay_ms(l));
		l->puller = NULL;
	}
	l->attached = false;
	l->missed_pulls = 0;
	l->empty_pulls = 0;
}

static void
pool_disconnect(Pool *p)
{
	int			i;

	for (i = 0; i < p->nlanes; i++)
		detach(p->lanes[i]);
	if (p->inbox)
	{
		reliq_inbox_destroy(p->inbox);
		p->inbox = NULL;
	}
	if (p->conn)
	{
		reliq_nats_close(p->conn);
		p->conn = NULL;
	}
	if (p->connected)
	{
		p->connected = false;
		reliq_slot_set_connected(p->slot, false);
	}
}

static void
set_all_lanes(Pool *p, ReliqWorkerState state)
{
	int			i;

	for (i = 0; i < p->nlanes; i++)
		if (!p->lanes[i]->leaving)
			set_state(p->lanes[i], state);
}

/*
 * Make sure the worker has a usable connection and inbox.  Connects when
 * it has none (backing off after failures), notices a changed setting, a
 * lost connection (the client reconnects by itself) and a reconnection
 * (which loses the pull requests).
 */
static bool
pool_connected(Pool *p)
{
	uint64		reconnects;
	int			i;

	if (p->conn && reliq_nats_settings_changed(p->conn))
	{
		ereport(LOG,
				(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
				 errmsg("reliq worker %d: NATS settings changed, reconnecting", p->index)));
		pool_disconnect(p);
	}
	if (p->conn == NULL)
	{
		char		name[64];

		if (GetCurrentTimestamp() < p->retry_at)
		{
			set_all_lanes(p, RELIQ_WORKER_BACKING_OFF);
			return false;
		}
		reliq_slot_set_state(p->slot, RELIQ_WORKER_CONNECTING);
		set_all_lanes(p, RELIQ_WORKER_CONNECTING);
		snprintf(name, sizeof(name), "reliq worker #%d", p->index);
		p->conn = reliq_nats_connect(name);
		if (p->conn != NULL)
		{
			reliq_nats_adopt_session_connection(p->conn);
			p->inbox = reliq_inbox_create(p->conn,
										  Max(reliq_fetch_timeout, RELIQ_IDLE_PULL_MS) + 1000);
		}
		if (p->conn == NULL || p->inbox == NULL)
		{
			note_pool_problem(p, WARNING, ERRCODE_CONNECTION_FAILURE, "could not connect to NATS at %s: %s",
							  reliq_nats_redacted_url(), reliq_nats_last_error());
			pool_disconnect(p);
			p->retry_at = next_retry(&p->retries);
			return false;
		}
		p->reconnects_seen = reliq_nats_reconnect_count(p->conn);
		p->connected = true;
		reliq_slot_set_connected(p->slot, true);
		reliq_slot_set_state(p->slot, RELIQ_WORKER_FETCHING);
		clear_pool_problem(p, "connected to NATS");
		ereport(LOG,
				(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
				 errmsg("reliq worker %d connected to NATS at %s",
						p->index, reliq_nats_redacted_url())));
		return true;
	}

	if (!reliq_nats_is_connected(p->conn))
	{
		if (p->connected)
		{
			p->connected = false;
			reliq_slot_set_connected(p->slot, false);
			reliq_slot_set_state(p->slot, RELIQ_WORKER_DISCONNECTED);
			note_pool_problem(p, LOG, ERRCODE_CONNECTION_FAILURE, "disconnected from NATS; reconnecting");
		}
		for (i = 0; i < p->nlanes; i++)
			if (p->lanes[i]->puller)
				reliq_puller_forget_request(p->lanes[i]->puller);
		set_all_lanes(p, RELIQ_WORKER_DISCONNECTED);
		return false;
	}
	reconnects = reliq_nats_reconnect_count(p->conn);
	if (reconnects != p->reconnects_seen)
	{
		p->reconnects_seen = reconnects;
		for (i = 0; i < p->nlanes; i++)
		{
			if (p->lanes[i]->puller)
				reliq_puller_forget_request(p->lanes[i]->puller);
			p->lanes[i]->missed_pulls = 0;
		}
	}
	if (!p->connected)
	{
		p->connected = true;
		reliq_slot_set_connected(p->slot, true);
		reliq_slot_set_state(p->slot, RELIQ_WORKER_FETCHING);
		clear_pool_problem(p, "reconnected to NATS");
		for (i = 0; i < p->nlanes; i++)
			if (!p->lanes[i]->leaving && p->lanes[i]->stats)
				reliq_stats_set_error(p->lanes[i]->stats, "reconnected to NATS");
	}
	return true;
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
	char	   *description;
	MemoryContext caller;

	if (l->attached)
		return true;
	if (GetCurrentTimestamp() < l->retry_at)
		return false;
	set_state(l, RELIQ_WORKER_CONNECTING);

	if (!reliq_nats_stream_info(p->conn, l->sub->stream, &before))
	{
		note_problem(l, WARNING, ERRCODE_CONNECTION_FAILURE, "could not look up stream \"%s\": %s",
					 l->sub->stream, reliq_nats_last_error());
		schedule_retry(l);
		return false;
	}
	if (!before.found)
	{
		note_problem(l, WARNING, ERRCODE_UNDEFINED_OBJECT, "stream \"%s\" does not exist", l->sub->stream);
		schedule_retry(l);
		return false;
	}

	caller = reliq_xact_begin("reliq: attaching to the stream");
	claimed = reliq_catalog_claim_stream(l->sub->id, before.created_ns,
										 &floor, &has_history);
	reliq_xact_commit(caller);
	if (claimed == 0)
	{
		/* dropped or paused: the launcher takes the lane away */
		schedule_retry(l);
		return false;
	}
	Assert(claimed == before.created_ns);

	description = psprintf("reliq subscription %s", l->sub->name);
	memset(&spec, 0, sizeof(spec));
	spec.stream = l->sub->stream;
	spec.consumer = l->sub->consumer;
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

	if (!reliq_nats_ensure_consumer(p->conn, &spec, &info, &created))
	{
		note_problem(l, WARNING, ERRCODE_EXTERNAL_ROUTINE_EXCEPTION, "could not set up consumer \"%s\" of stream \"%s\": %s",
					 l->sub->consumer, l->sub->stream, reliq_nats_last_error());
		schedule_retry(l);
		return false;
	}
	if (!reliq_nats_stream_info(p->conn, l->sub->stream, &after) ||
		!after.found || after.created_ns != before.created_ns)
	{
		note_problem(l, LOG, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "stream \"%s\" changed while attaching; trying again",
					 l->sub->stream);
		schedule_retry(l);
		return false;
	}
	if (created)
		ereport(LOG,
				(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
				 errmsg("reliq subscription \"%s\": created consumer \"%s\" on stream \"%s\"%s",
						l->sub->name, l->sub->consumer, l->sub->stream,
						has_history ? psprintf(" from sequence " INT64_FORMAT, floor + 1) : "")));

	l->stream_created = before.created_ns;
	l->batch.stream_created = before.created_ns;

	if (l->puller == NULL)
		l->puller = adopt_puller(l);
	if (l->puller == NULL)
		l->puller = reliq_puller_create(p->inbox, l->sub->stream, l->sub->consumer);
	if (l->puller == NULL)
	{
		note_problem(l, WARNING, ERRCODE_EXTERNAL_ROUTINE_EXCEPTION, "could not pull from consumer \"%s\": %s",
					 l->sub->consumer, reliq_nats_last_error());
		schedule_retry(l);
		return false;
	}
	l->attached = true;
	l->missed_pulls = 0;
	l->empty_pulls = 0;
	clear_problem(l, "attached to its consumer again");
	ereport(DEBUG1,
			(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
			 errmsg("reliq subscription \"%s\": worker %d attached to consumer \"%s\" (" INT64_FORMAT " pending)",
					l->sub->name, p->index, l->sub->consumer, info.num_pending)));
	return true;
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

		if (old == l || !old->leaving || puller == NULL ||
			strcmp(old->sub->stream, l->sub->stream) != 0 ||
			strcmp(old->sub->consumer, l->sub->consumer) != 0)
			continue;
		old->puller = NULL;
		old->attached = false;
		ereport(DEBUG1,
				(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
				 errmsg("reliq subscription \"%s\": takes over the pull of consumer \"%s\" from a lane given up",
						l->sub->name, l->sub->consumer)));
		return puller;
	}
	return NULL;
}

/*
 * Is the consumer we attached to still there?  Called when pulls go
 * unanswered, and periodically.  (A consumer made again under the same
 * name needs nothing: the ledger is keyed by the stream, and a server
 * restart changes a consumer's creation time anyway.)
 */
static void
verify_consumer(Lane *l)
{
	ReliqConsumerInfo info;

	if (!reliq_nats_consumer_info(l->pool->conn, l->sub->stream, l->sub->consumer, &info))
		return;					/* cannot tell now; the connection reports */
	if (!info.found)
	{
		note_problem(l, WARNING, ERRCODE_UNDEFINED_OBJECT, "consumer \"%s\" of stream \"%s\" has disappeared from the server",
					 l->sub->consumer, l->sub->stream);
		detach(l);
	}
}

/*
 * Every reliq.refresh_interval, once for all the lanes of the worker: look
 * for outbox rows left behind (one query), and make sure each stream read
 * is still the incarnation its lanes attached to (a request per stream,
 * not per lane; batch.c checks the catalog's record at every batch).  The
 * consumers' figures and the ledgers' pruning are the monitor's
 * (monitor.c), which works even while every worker is busy.
 */
static void
pool_refresh(Pool *p)
{
	TimestampTz now = GetCurrentTimestamp();
	int64	   *waiting;
	bool		orphans;
	int			nwaiting;
	bool		orphans_taken = false;
	int			i;
	int			j;

	if (now < p->next_refresh || p->nlanes == 0)
		return;
	p->next_refresh = TimestampTzPlusMilliseconds(now, reliq_refresh_interval);

	nwaiting = reliq_outbox_waiting(&waiting, &orphans);
	for (i = 0; i < p->nlanes; i++)
	{
		Lane	   *l = p->lanes[i];

		if (l->leaving)
			continue;
		for (j = 0; j < nwaiting; j++)
			if (waiting[j] == l->sub->id)
				l->outbox_pending = true;
		if (orphans && !orphans_taken && l->attached)
			l->outbox_pending = orphans_taken = true;
	}

	if (!reliq_nats_is_connected(p->conn))
		return;
	for (i = 0; i < p->nlanes; i++)
	{
		Lane	   *l = p->lanes[i];
		ReliqStreamInfo stream;
		bool		seen_before = false;

		if (l->leaving || !l->attached)
			continue;
		for (j = 0; j < i && !seen_before; j++)
			seen_before = !p->lanes[j]->leaving && p->lanes[j]->attached &&
				strcmp(p->lanes[j]->sub->stream, l->sub->stream) == 0;
		if (seen_before)
			continue;
		if (!reliq_nats_stream_info(p->conn, l->sub->stream, &stream))
			continue;			/* cannot tell now; the connection reports */
		for (j = i; j < p->nlanes; j++)
		{
			Lane	   *other = p->lanes[j];

			if (other->leaving || !other->attached ||
				strcmp(other->sub->stream, l->sub->stream) != 0 ||
				(stream.found && stream.created_ns == other->stream_created))
				continue;
			note_problem(other, LOG, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "stream \"%s\" was deleted or made again; attaching anew",
						 other->sub->stream);
			detach(other);
		}
	}
}

/* The outstanding pull ended without filling the batch. */
static void
handle_pull_end(Lane *l)
{
	const char *description;
	int			status = reliq_puller_end_status(l->puller, &description);

	switch (status)
	{
		case 404:				/* no messages */
		case 408:				/* expired */
			l->missed_pulls = 0;
			l->empty_pulls++;
			break;
		case 409:
			if (strstr(description, "Deleted") != NULL ||
				strstr(description, "deleted") != NULL)
			{
				note_problem(l, WARNING, ERRCODE_UNDEFINED_OBJECT, "consumer \"%s\" was deleted on the server",
							 l->sub->consumer);
				detach(l);
			}
			else
			{
				note_problem(l, WARNING, ERRCODE_EXTERNAL_ROUTINE_EXCEPTION, "pull refused: %d %s", status, description);
				l->pull_after = after_ms(reliq_naptime);
			}
			break;
		case 0:					/* no answer at all */
		case 503:				/* no responders */
			l->empty_pulls = 0;
			if (reliq_nats_is_connected(l->pool->conn) && ++l->missed_pulls >= 2)
			{
				l->missed_pulls = 0;
				verify_consumer(l);
			}
			break;
		default:
			note_problem(l, WARNING, ERRCODE_EXTERNAL_ROUTINE_EXCEPTION, "pull refused: %d %s", status, description);
			l->pull_after = after_ms(reliq_naptime);
			break;
	}
}

/*
 * Take what has arrived for the lane, up to max, without waiting; deal
 * with the end of its pull.  A message lands in msgs[*n].
 */
static void
take_arrived(Lane *l, ReliqMessage *msgs, int max, int *n)
{
	while (*n < max && l->attached)
	{
		ReliqPullEvent event = reliq_puller_next(l->puller, &msgs[*n]);

		if (event == RELIQ_PULL_MESSAGE)
		{
			(*n)++;
			l->empty_pulls = 0;
		}
		else if (event == RELIQ_PULL_ENDED)
			handle_pull_end(l);
		else
			break;
	}
}

/* Keep a pull request out for the lane, unless it has enough in hand. */
static void
keep_pulling(Lane *l, int max)
{
	bool		idle = l->empty_pulls >= RELIQ_IDLE_AFTER;
	int			queued;

	if (!l->attached || l->leaving || reliq_puller_active(l->puller) ||
		!reliq_nats_is_connected(l->pool->conn) ||
		GetCurrentTimestamp() < l->pull_after)
		return;
	queued = reliq_puller_queued(l->puller);
	if (queued >= max)
		return;
	if (!reliq_puller_request(l->puller, max - queued,
							  idle ? Max(reliq_fetch_timeout, RELIQ_IDLE_PULL_MS) : reliq_fetch_timeout,
							  idle ? RELIQ_IDLE_HEARTBEAT_MS : 0))
		l->pull_after = after_ms(RELIQ_POLL_MS);
}

/*
 * Collect up to max messages of the lane from what has arrived, without
 * waiting for the first.  Under a backlog (the server said more are
 * pending: each message carries the consumer's pending count in its reply
 * subject), the rest of a batch streams in microseconds apart, and fewer,
 * fuller transactions go faster: keep taking messages while they come
 * less than RELIQ_GAP_US apart, for at most RELIQ_LINGER_MS.  Under light
 * load nothing is pending and nothing is added to the latency.  Before
 * returning, asks for the next batch, so messages flow in while this one
 * is applied.
 */
static int
collect_batch(Lane *l, ReliqMessage *msgs, int max)
{
	int			n = 0;

	take_arrived(l, msgs, max, &n);
	if (n > 0 && n < max && msgs[n - 1].pending > 0 &&
		l->attached && reliq_puller_active(l->puller))
	{
		TimestampTz until = after_ms(RELIQ_LINGER_MS);
		TimestampTz last_arrival = GetCurrentTimestamp();

		while (n < max && msgs[n - 1].pending > 0 &&
			   l->attached && reliq_puller_active(l->puller))
		{
			int			before = n;
			TimestampTz now;

			if (reliq_inbox_pump(l->pool->inbox, 0) < 0)
				break;
			take_arrived(l, msgs, max, &n);
			now = GetCurrentTimestamp();
			if (n > before)
				last_arrival = now;
			else if (now - last_arrival >= RELIQ_GAP_US || now >= until)
				break;
			else
				pg_usleep(RELIQ_GAP_US / 4);
		}
	}
	keep_pulling(l, max);
	if (n == 0 && l->attached)
		set_state(l, RELIQ_WORKER_FETCHING);
	return n;
}

/*
 * The lease (lease.c): this cluster consumes only while it holds it
 */

/* Usable right now, and still the lease this lane attached under? */
static bool
lease_current(Lane *l)
{
	ReliqLeaseView lease;

	/*
	 * The launcher frees the entry of a dropped subscription and may hand
	 * it to another: a lane still finishing must not read that one's.
	 */
	if (l->stats == NULL || l->stats->subscription_id != l->sub->id)
		return false;
	reliq_lease_read(l->stats, &lease);
	return reliq_lease_usable(&lease, GetCurrentTimestamp()) &&
		(lease.state == RELIQ_LEASE_OFF || lease.epoch == l->lease_epoch);
}

static void
drop_held(Lane *l)
{
	if (l->nheld > 0)
	{
		l->nheld = 0;
		l->held = NULL;
		MemoryContextDelete(l->held_cxt);
		l->held_cxt = NULL;
	}
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
	detach(l);
	drop_held(l);
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
	if (l->stats != NULL)
		reliq_lease_read(l->stats, &lease);
	if (reliq_lease_usable(&lease, GetCurrentTimestamp()))
	{
		if (lease.state == RELIQ_LEASE_OWNED && lease.epoch != l->lease_epoch)
		{
			forget_consumer(l);
			l->lease_epoch = lease.epoch;
		}
		return true;
	}
	if (lease.state == RELIQ_LEASE_FENCED || lease.state == RELIQ_LEASE_ACQUIRING)
	{
		forget_consumer(l);
		set_state(l, RELIQ_WORKER_FENCED);
		if (lease.state == RELIQ_LEASE_FENCED)
			note_problem(l, LOG, ERRCODE_OBJECT_IN_USE, "fenced: consumer \"%s\" is owned by %s; to move it here: SELECT reliq.take_over('%s')",
						 l->sub->consumer, lease.holder, l->sub->name);
	}
	else if (l->stats == NULL)
		note_problem(l, WARNING, ERRCODE_CONFIGURATION_LIMIT_EXCEEDED, "no statistics entry, so no lease: raise reliq.max_subscriptions");
	else
		set_state(l, RELIQ_WORKER_CONNECTING);	/* until the lease is renewed */
	return false;
}

/* The wait synchronous_commit asks for: a SYNC_REP_WAIT_* mode. */
static int
sync_wait_mode(void)
{
	if (max_wal_senders == 0 || SyncRepStandbyNames == NULL ||
		SyncRepStandbyNames[0] == '\0')
		return SYNC_REP_NO_WAIT;
	switch (synchronous_commit)
	{
		case SYNCHRONOUS_COMMIT_REMOTE_WRITE:
			return SYNC_REP_WAIT_WRITE;
		case SYNCHRONOUS_COMMIT_REMOTE_FLUSH:
			return SYNC_REP_WAIT_FLUSH;
		case SYNCHRONOUS_COMMIT_REMOTE_APPLY:
			return SYNC_REP_WAIT_APPLY;
		default:
			return SYNC_REP_NO_WAIT;
	}
}

/*
 * Wait until the synchronous standbys confirmed WAL up to lsn.  COMMIT
 * waits for that itself, but a cancel (a statement timeout, a
 * pg_cancel_backend) cuts its wait short with a mere WARNING, and the
 * commit stands locally; an ack must not get ahead of the standby.
 * Waits on the latch: death of the postmaster and termination end it.
 */
static void
await_standbys(Lane *l, XLogRecPtr lsn)
{
	int			mode = sync_wait_mode();

	while (mode != SYNC_REP_NO_WAIT)
	{
		bool		confirmed;

		LWLockAcquire(SyncRepLock, LW_SHARED);
		confirmed = WalSndCtl->lsn[mode] >= lsn;
		LWLockRelease(SyncRepLock);
		if (confirmed)
			break;
		if (!l->awaiting_standby)
			ereport(LOG,
					(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
					 errmsg("reliq subscription \"%s\": acknowledgements wait until the synchronous standby confirms %X/%X",
							l->sub->name, LSN_FORMAT_ARGS(lsn)),
					 errdetail("The commit's own wait for synchronous replication was cancelled.")));
		l->awaiting_standby = true;
		wait_latch(RELIQ_POLL_MS);
		mode = sync_wait_mode();
	}
	l->awaiting_standby = false;
}

/*
 * After COMMIT, before publishing the outbox and acking: nothing goes out
 * that may not last.  Exits (acking nothing) when the postmaster has died
 * or the worker is asked to die; waits for synchronous standbys; false
 * when the lease has lapsed meanwhile (another cluster may own the
 * consumer now: its messages are left to it, unacked).
 */
static bool
may_acknowledge(Lane *l, XLogRecPtr flushed)
{
	exit_if_postmaster_died();
	CHECK_FOR_INTERRUPTS();
	await_standbys(l, flushed);
	exit_if_postmaster_died();
	if (lease_current(l))
		return true;
	note_problem(l, LOG, ERRCODE_OBJECT_IN_USE, "the lease lapsed during a batch; its messages are left unacknowledged");
	return false;
}

/*
 * Publishing what handlers published, after their commit
 */

/* Outbox rows published in one transaction. */
#define RELIQ_OUTBOX_ROUND 500

static void
drain_outbox(Lane *l)
{
	Pool	   *p = l->pool;
	bool		stuck = false;
	int			rows;

	if (!l->outbox_pending || p->conn == NULL || !reliq_nats_is_connected(p->conn))
		return;
	pgstat_report_activity(STATE_RUNNING, "reliq: publishing the outbox");
	do
	{
		rows = reliq_outbox_publish(p->conn, l->sub->id, RELIQ_OUTBOX_ROUND, &stuck);
	} while (rows == RELIQ_OUTBOX_ROUND && !stuck);
	pgstat_report_activity(STATE_IDLE, NULL);

	l->outbox_pending = stuck;
	if (stuck)
	{
		note_problem(l, WARNING, ERRCODE_CONNECTION_FAILURE, "messages wait in reliq._outbox: %s",
					 reliq_nats_last_error());
		l->next_outbox_try = after_ms(reliq_refresh_interval);
	}
}

/*
 * Acknowledging
 */

/*
 * A batch applied faster than this has its acks (and the pull already asked
 * for) flushed with a round trip; see acknowledge().
 */
#define RELIQ_QUICK_BATCH_US 2000

static void
acknowledge(Lane *l, ReliqMessage *msgs, int n, bool quick)
{
	ReliqNatsConnection *conn = l->pool->conn;
	bool		ok = true;
	int			i;

	for (i = 0; i < n; i++)
	{
		ReliqMessage *msg = &msgs[i];

		switch (msg->outcome)
		{
			case RELIQ_OUTCOME_PROCESSED:
			case RELIQ_OUTCOME_DUPLICATE:
				ok &= reliq_nats_ack(conn, msg->reply, RELIQ_ACK, 0);
				break;
			case RELIQ_OUTCOME_FAILED:
				ok &= reliq_nats_ack(conn, msg->reply, RELIQ_NAK,
									 reliq_subscription_backoff_ms(l->sub, msg->delivered));
				break;
			case RELIQ_OUTCOME_DEAD_LETTERED:
				ok &= reliq_nats_ack(conn, msg->reply, RELIQ_TERM, 0);
				break;
			case RELIQ_OUTCOME_NONE:
				/* not applied (the stream changed): deliver again now */
				ok &= reliq_nats_ack(conn, msg->reply, RELIQ_NAK, 0);
				break;
			case RELIQ_OUTCOME_HELD:
				break;
		}
	}

	/*
	 * Whether to flush with a round trip.  Left alone, cnats's flusher
	 * thread writes what is buffered (these acks, and the pull for the next
	 * batch) after a pause of about a millisecond.  A large batch takes
	 * longer than that to apply, so the pause is hidden, while waiting for
	 * the PONG of a flush would leave the worker idle as nats-server works
	 * through hundreds of acks (without it, two workers at batch 500 went
	 * from 57k to 72k msg/s on two cores).  A quick batch would wait for
	 * the pause instead: flush it (batch 10 ran at a third of the speed
	 * without).  An ack that never arrives only means a redelivery, which
	 * the ledger absorbs; the worker flushes before it stops.
	 */
	if (ok && quick)
		ok = reliq_nats_flush(conn, reliq_nats_timeout);
	if (!ok)
		ereport(DEBUG1,
				(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
				 errmsg("reliq subscription \"%s\": acknowledgements not sent: %s",
						l->sub->name, reliq_nats_last_error())));
}

static void
send_in_progress(Lane *l)
{
	int			i;

	for (i = 0; i < l->nheld; i++)
		(void) reliq_nats_ack(l->pool->conn, l->held[i].reply, RELIQ_IN_PROGRESS, 0);
	(void) reliq_nats_flush(l->pool->conn, reliq_nats_timeout);
	l->next_progress = after_ms(Max(l->sub->ack_wait_ms / 2, 1));
}

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

static void
copy_held(Lane *l, ReliqMessage *msgs, int n)
{
	MemoryContext cxt;
	MemoryContext old;
	int			i;
	int			j;

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
		*dst = *src;
		dst->subject = pstrdup(src->subject);
		dst->reply = pstrdup(src->reply);
		dst->stream = pstrdup(src->stream);
		dst->consumer = pstrdup(src->consumer);
		dst->data = palloc(src->data_len + 1);
		memcpy(dst->data, src->data, src->data_len + 1);
		dst->header_keys = palloc(sizeof(char *) * Max(src->nheaders, 1));
		dst->header_values = palloc(sizeof(char *) * Max(src->nheaders, 1));
		for (j = 0; j < src->nheaders; j++)
		{
			dst->header_keys[j] = pstrdup(src->header_keys[j]);
			dst->header_values[j] = pstrdup(src->header_values[j]);
		}
		dst->error = NULL;
	}
	MemoryContextSwitchTo(old);
	if (l->held_cxt)
		MemoryContextDelete(l->held_cxt);
	l->held_cxt = cxt;
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

/* Apply a batch, acknowledge it, count it. */
static void
process_batch(Lane *l, ReliqMessage *msgs, int n, bool probe)
{
	ReliqBatchResult result;
	bool		was_failing = (l->nheld > 0);
	TimestampTz started = GetCurrentTimestamp();
	TimestampTz committed;

	set_state(l, RELIQ_WORKER_PROCESSING);
	report_progress(l, n);
	pgstat_report_activity(STATE_RUNNING,
						   psprintf("reliq: applying %d messages of subscription %s", n, l->sub->name));

	reliq_batch_run(&l->batch, msgs, n, &result);
	committed = GetCurrentTimestamp();
	if (result.subscription_gone)
	{
		/*
		 * Dropped meanwhile: nothing was applied.  Give the messages back
		 * as a lane given up does; without delay, because until this
		 * lane's pull has run out they come back to its own queue, which
		 * a subscription made again under the same consumer takes over
		 * (adopt_puller).
		 */
		(void) release_messages(l->pool, msgs, n, 0);
		begin_leaving(l, false);
		pgstat_report_activity(STATE_IDLE, NULL);
		return;
	}
	if (result.outboxed > 0)
		l->outbox_pending = true;
	if (!may_acknowledge(l, GetFlushRecPtr(NULL)))
	{
		/*
		 * Committed, so counted; not acked but NAKed, so delivered again at
		 * once to whoever owns the consumer now (this cluster's ledger, or
		 * another's, absorbs or applies it).
		 */
		count_batch(l, probe ? 0 : n, &result);
		release_messages(l->pool, msgs, n, release_delay_ms(l));
		forget_consumer(l);
		pgstat_report_activity(STATE_IDLE, NULL);
		return;
	}
	drain_outbox(l);
	acknowledge(l, msgs, n, committed - started < RELIQ_QUICK_BATCH_US);
	count_batch(l, probe ? 0 : n, &result);
	time_batch(l, msgs, n, started, committed, &result);
	report_failures(l, &result);

	if (result.stream_changed)
	{
		note_problem(l, LOG, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "stream \"%s\" was made again; attaching to the new one",
					 l->sub->stream);
		detach(l);
	}

	if (result.tripped && result.held > 0)
	{
		if (!was_failing)
		{
			ereport(LOG,
					(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
					 errmsg("reliq subscription \"%s\": systemic failure detected; holding %d messages and pausing pulls",
							l->sub->name, result.held),
					 errdetail("%d distinct messages in a row failed with errors not specific to them; nothing is dead-lettered meanwhile.",
							   l->batch.breaker.consecutive),
					 errhint("Fix the cause shown in reliq.subscription_stats.last_error; reliq retries after the subscription's backoff delays.")));
			l->probes = 0;
		}
		copy_held(l, msgs, n);
		l->next_probe = after_ms(reliq_subscription_backoff_ms(l->sub, ++l->probes));
		l->next_progress = GetCurrentTimestamp();
		set_state(l, RELIQ_WORKER_FAILING);
	}
	else if (was_failing)
	{
		ereport(LOG,
				(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
				 errmsg("reliq subscription \"%s\": resumed after a systemic failure",
						l->sub->name)));
		drop_held(l);
	}
	report_progress(l, l->nheld);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * Apply what was collected.  First deliveries go in one batch, and first
 * redeliveries (delivered = 2) in another; each later redelivery goes in a
 * transaction of its own, so that a message whose handler kills the
 * worker (each time, before COMMIT) takes the messages that shared its
 * first batch down twice at most, then only itself, towards max_deliver.
 *
 * Redeliveries come in bulk after a restart of nats-server or of the
 * worker, a lost connection (their acks lost), a lane given up, or an
 * expired ack_wait.  Applied one per transaction, each with its commit
 * flush and its ack round trip, a thousand of them took seconds, and the
 * messages pulled meanwhile waited: when that wait passed ack_wait they
 * came again, as redeliveries too, and a subscription drained about one
 * message per transaction until it caught up (issue 13).
 */
static void
apply_collected(Lane *l, ReliqMessage *msgs, int n)
{
	Pool	   *p = l->pool;
	ReliqMessage *group = palloc(sizeof(ReliqMessage) * n);
	bool	   *tried = palloc0(sizeof(bool) * n);
	int			ngroup;
	int			pass;
	int			i;

	p->applying_lane = l;
	p->applying = msgs;
	p->napplying = n;
	for (pass = 1; pass <= 2 && l->attached && l->nheld == 0; pass++)
	{
		ngroup = 0;
		for (i = 0; i < n; i++)
			if (Max(msgs[i].delivered, 1) == pass)
			{
				group[ngroup++] = msgs[i];
				tried[i] = true;
			}
		if (ngroup > 0)
			process_batch(l, group, ngroup, false);
	}
	for (i = 0; i < n && l->attached && l->nheld == 0; i++)
		if (msgs[i].delivered > 2)
		{
			tried[i] = true;
			p->applying_alone = msgs[i].stream_seq;
			process_batch(l, &msgs[i], 1, false);
			p->applying_alone = 0;
		}
	/* what a failing state or a detach left unapplied comes again later */
	for (i = 0; i < n; i++)
		if (!tried[i] && msgs[i].delivered > 1 && p->conn)
			(void) reliq_nats_ack(p->conn, msgs[i].reply, RELIQ_NAK, 0);
	p->applying_lane = NULL;
	p->applying = NULL;
	p->napplying = 0;
	pfree(tried);
	pfree(group);
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

	set_state(l, RELIQ_WORKER_FAILING);
	if (!lease_current(l))
	{
		/* no longer ours: give the held batch back to the owner */
		(void) release_messages(l->pool, l->held, l->nheld, release_delay_ms(l));
		forget_consumer(l);
		return false;
	}
	if (now >= l->next_progress && reliq_nats_is_connected(l->pool->conn))
		send_in_progress(l);
	if (now >= l->next_probe)
	{
		ReliqMessage *msgs = palloc(sizeof(ReliqMessage) * l->nheld);
		int			n = l->nheld;

		memcpy(msgs, l->held, sizeof(ReliqMessage) * n);
		process_batch(l, msgs, n, true);
		return true;
	}
	return false;
}

/*
 * Lanes: taken up when the launcher assigns a subscription, given up when
 * it takes it away
 */

static Lane *
find_lane(Pool *p, int64 subscription_id)
{
	int			i;

	for (i = 0; i < p->nlanes; i++)
		if (p->lanes[i]->subscription_id == subscription_id)
			return p->lanes[i];
	return NULL;
}

static void
open_status(Lane *l)
{
	if (l->status == NULL)
		l->status = reliq_lane_open(l->pool->slot, l->subscription_id,
									l->sub->name, l->lane_index);
	report_progress(l, l->nheld);
}

/*
 * Load a lane's subscription under an error boundary (it is a lane's
 * failure: see recover_from_error).  On an ERROR the lane keeps what it
 * had, the problem shows in the subscription's last_error, and the worker
 * takes up its assignment again after a backoff.  *gone: the subscription
 * is no longer there.
 */
static bool
load_subscription_guarded(Lane *l, bool *gone)
{
	Pool	   *p = l->pool;
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
		message = recover_from_error(p->assignment_problem, cxt, owner);
	}
	PG_END_TRY();
	*gone = (message == NULL && !loaded);
	if (message == NULL)
		return loaded;
	if (l->stats == NULL)
		l->stats = reliq_stats_find(l->subscription_id, false, NULL);
	if (l->stats != NULL)
		reliq_stats_set_error(l->stats, message);
	p->assignment_retry_at = next_retry(&p->assignment_retries);
	return false;
}

static void
add_lane(Pool *p, const ReliqAssignment *assignment)
{
	Lane	   *l = MemoryContextAllocZero(TopMemoryContext, sizeof(Lane));
	bool		gone;

	l->pool = p;
	l->subscription_id = assignment->subscription_id;
	l->lane_index = assignment->lane_index;
	reliq_batch_init(&l->batch);
	if (!load_subscription_guarded(l, &gone))
	{
		reliq_batch_free(&l->batch);
		pfree(l);
		return;
	}
	l->stats = reliq_stats_find(l->sub->id, true, l->sub->name);
	l->batch.stats = l->stats;
	l->outbox_pending = true;	/* a worker before us may have left rows */
	open_status(l);

	if (p->nlanes == p->lanes_capacity)
	{
		p->lanes_capacity = Max(p->lanes_capacity * 2, 8);
		p->lanes = p->lanes ?
			repalloc(p->lanes, sizeof(Lane *) * p->lanes_capacity) :
			MemoryContextAlloc(TopMemoryContext, sizeof(Lane *) * p->lanes_capacity);
	}
	p->lanes[p->nlanes++] = l;
	ereport(DEBUG1,
			(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
			 errmsg("reliq worker %d serves subscription \"%s\" (lane %d)",
					p->index, l->sub->name, l->lane_index)));
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
static void
begin_leaving(Lane *l, bool closing)
{
	int64		delay = closing ? Min(release_delay_ms(l), 1000) : 0;
	int			released;

	if (!l->leaving)
		ereport(DEBUG1,
				(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
				 errmsg("reliq worker %d gives up subscription \"%s\"",
						l->pool->index, l->sub->name)));
	l->leaving = true;
	released = release_messages(l->pool, l->held, l->nheld, delay);
	drop_held(l);
	if (closing && l->puller)
		released += reliq_puller_release_queued(l->puller, delay);

	/*
	 * A stopping worker flushes once, before it exits, not once per lane
	 * (a round trip each); a lane given up alone flushes what it gave back.
	 */
	if (released > 0 && !closing)
		(void) reliq_nats_flush(l->pool->conn, reliq_nats_timeout);
	if (l->status != NULL)
	{
		reliq_lane_close(l->pool->slot, l->status);
		l->status = NULL;
	}
}

/* A leaving lane: done once its last pull has ended; then give back. */
static bool
leaving_done(Lane *l)
{
	if (l->puller != NULL && reliq_puller_active(l->puller) &&
		reliq_puller_request_left_ms(l->puller) > 0 &&
		l->pool->conn != NULL && reliq_nats_is_connected(l->pool->conn))
		return false;
	if (l->puller != NULL && reliq_puller_queued(l->puller) > 0)
		(void) reliq_puller_release_queued(l->puller, 0);
	return true;
}

static void
free_lane(Lane *l)
{
	MemoryContext caller;

	if (l->status != NULL)
		reliq_lane_close(l->pool->slot, l->status);
	detach(l);
	drop_held(l);
	caller = reliq_xact_begin("reliq: giving up a subscription");
	reliq_batch_free(&l->batch);
	reliq_xact_commit(caller);
	if (l->sub_cxt)
		MemoryContextDelete(l->sub_cxt);
	pfree(l);
}

/* Free the lanes that are gone; keep the others in their order. */
static void
remove_finished_lanes(Pool *p)
{
	int			kept = 0;
	int			i;

	for (i = 0; i < p->nlanes; i++)
	{
		Lane	   *l = p->lanes[i];

		if (l->leaving && leaving_done(l))
			free_lane(l);
		else
			p->lanes[kept++] = l;
	}
	if (kept != p->nlanes)
	{
		p->nlanes = kept;
		p->next_lane = kept > 0 ? p->next_lane % kept : 0;
	}
}

/*
 * The launcher changed what this worker serves (or a subscription's
 * settings): take up new lanes, give up those taken away, reload changed
 * ones.
 */
static void
apply_assignment(Pool *p)
{
	ReliqAssignment *assigned;
	int			nassigned;
	bool		gone;
	int			i;

	p->assignment_retry_at = 0;
	assigned = palloc(sizeof(ReliqAssignment) * Max(reliq_shared->max_subscriptions, 1));
	LWLockAcquire(reliq_shared->lock, LW_SHARED);
	nassigned = p->slot->nassigned;
	memcpy(assigned, p->slot->assigned, sizeof(ReliqAssignment) * nassigned);
	LWLockRelease(reliq_shared->lock);

	for (i = 0; i < p->nlanes; i++)
	{
		Lane	   *l = p->lanes[i];
		int			j;

		for (j = 0; j < nassigned; j++)
			if (assigned[j].subscription_id == l->subscription_id)
				break;
		if (j == nassigned)
		{
			if (!l->leaving)
				begin_leaving(l, false);
			continue;
		}
		if (l->leaving)
		{
			/* given back before its pull ran out: take it up again */
			l->leaving = false;
			open_status(l);
		}
		l->lane_index = assigned[j].lane_index;
		if (assigned[j].config_version > l->sub->version &&
			!load_subscription_guarded(l, &gone) && gone)
			begin_leaving(l, false);
	}
	for (i = 0; i < nassigned; i++)
		if (find_lane(p, assigned[i].subscription_id) == NULL)
			add_lane(p, &assigned[i]);
	pfree(assigned);
}

/* Every assigned subscription loaded again after a failure. */
static void
clear_assignment_problem(Pool *p)
{
	ereport(LOG,
			(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
			 errmsg("reliq worker %d: every subscription assigned to it is loaded", p->index)));
	p->assignment_problem[0] = '\0';
	p->assignment_retries = 0;
}

/* Interrupts, reloads, stop requests and assignment changes. */
static void
check_for_news(Pool *p)
{
	uint64		version;

	exit_if_postmaster_died();
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
	if (!p->stopping && pg_atomic_read_u32(&p->slot->stop_requested) != 0)
	{
		int			i;

		p->stopping = true;
		ereport(DEBUG1,
				(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
				 errmsg("reliq worker %d stopping: requested by the launcher", p->index)));
		for (i = 0; i < p->nlanes; i++)
			begin_leaving(p->lanes[i], true);
	}
	if (p->stopping)
		return;
	version = pg_atomic_read_u64(&p->slot->assignment_version);
	if (version != p->assignment_seen ||
		(p->assignment_retry_at != 0 && GetCurrentTimestamp() >= p->assignment_retry_at))
	{
		p->assignment_seen = version;
		apply_assignment(p);
		if (p->assignment_retry_at == 0 && p->assignment_problem[0] != '\0')
			clear_assignment_problem(p);
	}
}

/*
 * One lane's turn: at most one batch.  Never waits for messages.  True
 * when it applied something.
 */
static bool
lane_turn(Lane *l)
{
	ReliqMessage *msgs;
	int			n;

	if (l->leaving)
		return false;
	if (!lease_allows(l))
		return false;
	if (!ensure_attached(l))
	{
		if (GetCurrentTimestamp() < l->retry_at)
			set_state(l, RELIQ_WORKER_BACKING_OFF);
		return false;
	}
	if (l->nheld > 0)
		return hold_step(l);
	if (l->outbox_pending && GetCurrentTimestamp() >= l->next_outbox_try)
		drain_outbox(l);
	if (!l->attached)
		return false;

	msgs = palloc(sizeof(ReliqMessage) * l->sub->batch_size);
	n = collect_batch(l, msgs, l->sub->batch_size);
	if (n == 0)
		return false;
	apply_collected(l, msgs, n);
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
	int64		delay = release_delay_ms(l);

	if (p->applying_lane == l)
	{
		(void) release_messages(p, p->applying, p->napplying, delay);
		p->applying_lane = NULL;
		p->applying = NULL;
		p->napplying = 0;
		p->applying_alone = 0;
	}
	(void) release_messages(p, l->held, l->nheld, delay);
	forget_consumer(l);
	if (l->stats != NULL && !l->leaving)
		reliq_stats_set_error(l->stats, message);
	schedule_retry(l);
	set_state(l, RELIQ_WORKER_BACKING_OFF);
	report_progress(l, 0);
}

/* One lane's turn under its own error boundary. */
static bool
lane_turn_guarded(Lane *l)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool busy = false;
	char	   *volatile message = NULL;

	PG_TRY();
	{
		busy = lane_turn(l);
	}
	PG_CATCH();
	{
		message = recover_from_error(l->problem, cxt, owner);
	}
	PG_END_TRY();
	if (message != NULL)
		lane_failed(l, message);
	return busy;
}

/* How long the worker may wait for its inbox before a lane needs it. */
static int
idle_wait_ms(Pool *p)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next = TimestampTzPlusMilliseconds(now, RELIQ_POLL_MS);
	int			i;

	next = Min(next, p->next_sweep);
	for (i = 0; i < p->nlanes; i++)
	{
		Lane	   *l = p->lanes[i];

		if (l->nheld > 0)
		{
			next = Min(next, l->next_probe);
			next = Min(next, l->next_progress);
		}
		if (!l->attached && l->retry_at > now)
			next = Min(next, l->retry_at);
		if (l->pull_after > now)
			next = Min(next, l->pull_after);
	}
	return (int) Max(ms_until(next), 0);
}

/*
 * Does the lane need a turn now: something arrived for it, its pull ended
 * or needs sending, or one of its timers is due?  An idle lane with a pull
 * out needs none; it is still looked at in every sweep (RELIQ_SWEEP_MS),
 * for what only a turn notices (a lease lost, a problem resolved).
 */
static bool
lane_wants_turn(Lane *l, TimestampTz now)
{
	if (l->leaving)
		return false;
	if (!l->attached || l->puller == NULL)
		return now >= l->retry_at;
	if (l->nheld > 0)
		return now >= l->next_probe || now >= l->next_progress;
	if (l->outbox_pending && now >= l->next_outbox_try)
		return true;
	if (!reliq_puller_active(l->puller))
		return now >= l->pull_after;
	return reliq_puller_wants_turn(l->puller, now);
}

/*
 * Give every lane that needs one its turn, starting with a different lane
 * each round; every lane in a sweep.
 */
static bool
serve_lanes(Pool *p)
{
	bool		busy = false;
	int			count = p->nlanes;
	int			start = count > 0 ? p->next_lane % count : 0;
	TimestampTz now = GetCurrentTimestamp();
	bool		sweep = now >= p->next_sweep;
	int			k;

	if (sweep)
		p->next_sweep = TimestampTzPlusMilliseconds(now, RELIQ_SWEEP_MS);
	for (k = 0; k < count; k++)
	{
		Lane	   *l = p->lanes[(start + k) % count];

		if (!sweep && !lane_wants_turn(l, now))
			continue;
		MemoryContextReset(p->turn_cxt);
		check_for_news(p);
		if (p->nlanes != count)
			break;				/* lanes came or went: start a new round */
		if (reliq_inbox_pump(p->inbox, 0) < 0)
			return busy;
		if (lane_turn_guarded(l))
		{
			busy = true;
			now = GetCurrentTimestamp();
		}
	}
	p->next_lane = count > 0 ? (start + 1) % count : 0;
	return busy;
}

void
reliq_worker_main(Datum main_arg)
{
	Pool	   *p = &TheWorker;
	uint64		generation;
	char		appname[NAMEDATALEN];

	memset(p, 0, sizeof(*p));
	MyPool = p;
	memcpy(&generation, MyBgworkerEntry->bgw_extra, sizeof(generation));

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	if (!attach_slot(p, DatumGetInt32(main_arg), generation))
		proc_exit(0);

	BackgroundWorkerInitializeConnection(reliq_database_name, NULL, 0);

	snprintf(appname, sizeof(appname), "reliq worker #%d", p->index);
	SetConfigOption("application_name", appname, PGC_USERSET, PGC_S_SESSION);

	/*
	 * An ack promises that the batch is durable: its COMMIT must have
	 * reached disk.  With synchronous_commit = off a crash could lose a
	 * batch already acked, so the worker commits with at least "local".
	 */
	if (synchronous_commit == SYNCHRONOUS_COMMIT_OFF)
	{
		SetConfigOption("synchronous_commit", "local", PGC_SUSET, PGC_S_OVERRIDE);
		ereport(LOG,
				(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
				 errmsg("reliq worker %d commits with synchronous_commit = local",
						p->index),
				 errdetail("synchronous_commit is off here; an acknowledgement must follow a durable commit.")));
	}

	/*
	 * Keep freed memory in the process.  Each batch allocates and frees
	 * about the same few hundred kilobytes (payloads, jsonb, executor
	 * state); when glibc handed them back to the kernel, every batch
	 * faulted them in again, about 5% of a busy worker's time.  The
	 * worker's memory stays at its high-water mark, which the batch size
	 * bounds.
	 */
	mallopt(M_MMAP_THRESHOLD, 8 * 1024 * 1024);
	mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);

	p->turn_cxt = AllocSetContextCreate(TopMemoryContext, "reliq lane turn",
										ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(p->turn_cxt);
	check_for_news(p);

	for (;;)
	{
		MemoryContextSwitchTo(p->turn_cxt);
		MemoryContextReset(p->turn_cxt);
		check_for_news(p);
		remove_finished_lanes(p);
		if (p->stopping)
			break;
		if (p->nlanes == 0 && p->conn == NULL)
		{
			/* nothing to serve: connect only when there is */
			reliq_slot_set_state(p->slot, RELIQ_WORKER_IDLE);
			wait_latch(RELIQ_POLL_MS * 10);
			continue;
		}
		if (!pool_connected(p))
		{
			wait_latch(Max(Min(ms_until(p->retry_at), RELIQ_POLL_MS), 1));
			continue;
		}
		pool_refresh(p);
		if (!serve_lanes(p))
		{
			if (reliq_inbox_pump(p->inbox, idle_wait_ms(p)) < 0)
			{
				note_pool_problem(p, WARNING, ERRCODE_CONNECTION_FAILURE, "%s", reliq_nats_last_error());
				pool_disconnect(p);
				p->retry_at = next_retry(&p->retries);
			}
		}
	}

	/* asked to stop: every lane has given back what it held */
	if (p->conn && reliq_nats_is_connected(p->conn))
		(void) reliq_nats_flush(p->conn, reliq_nats_timeout);
	ereport(DEBUG1,
			(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
			 errmsg("reliq worker %d stopped", p->index)));
	proc_exit(0);
}
