/*-------------------------------------------------------------------------
 *
 * pool.c
 *	  A reliq pool worker process: its slot, its NATS connection and
 *	  inbox (shared by its lanes), the lanes the launcher assigns it, the
 *	  rounds of turns, and its exit.  For each lane (lane.c): pull a
 *	  batch, apply it in one transaction (apply.c, batch.c), then, once
 *	  the ack gate lets it (ack_gate.c), acknowledge.  The order is fetch,
 *	  BEGIN, ledger, handlers, COMMIT, ack; nothing is acked before its
 *	  transaction commits.
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
 * whatever arrives for any lane.  A worker with no lane shows once, as
 * idle.
 *
 * Waits: the inbox is read in slices of RELIQ_POLL_MS so that interrupts
 * (shutdown, reload) and the postmaster's death are seen quickly.  SIGTERM
 * ends the worker at once (die): an unfinished batch is rolled back,
 * unacked, and given back by the exit callbacks.
 *
 * The consumer's figures on the server, and the floor and the pruning of
 * the ledger, are the monitor's alone (monitor.c).
 *
 * Locks: the slot's assignment is copied under the reliq LWLock (shared);
 * what the worker does is written under the slot's spinlock (shmem.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <malloc.h>

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/pmsignal.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "order_registry.h"
#include "outbox.h"
#include "worker.h"
#include "worker_internal.h"

/* Every lane gets a turn at least this often, needed or not. */
#define RELIQ_SWEEP_MS 1000

/*
 * The worker's state, static: the exit callbacks read it, and an error
 * that ends the worker may have unwound reliq_worker_main's frame.
 */
static Pool TheWorker;
static Pool *MyPool = NULL;		/* set once the worker is under way */

static void note_pool_problem(Pool *p, int elevel, int sqlerrcode,
							  const char *fmt,...) pg_attribute_printf(4, 5);

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
		(void) reliq_inbox_pump(p->inbox, 0, NULL);
	}
	for (i = 0; i < p->nlanes; i++)
	{
		Lane	   *l = p->lanes[i];
		int64		delay = Min(reliq_ack_release_delay_ms(l->puller), 1000);

		if (l == p->applying_lane)
			released += reliq_ack_release(p->conn, p->applying, p->napplying, delay);
		released += reliq_ack_release(p->conn, l->held, l->nheld, delay);
		released += reliq_ack_release(p->conn, l->deferred, l->ndeferred, delay);
		if (l->puller != NULL)
			released += reliq_puller_release_queued(l->puller, delay);
	}
	if (released > 0)
		(void) reliq_nats_flush(p->conn, Min(reliq_nats_timeout, 1000), NULL);
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
	/* only now may another worker take an ordered subscription's turn */
	reliq_order_let_go(0);
}

static void
detach_slot(int code, Datum arg)
{
	Pool	   *p = MyPool;
	int			i;

	if (p == NULL || p->slot == NULL)
		return;
	/* dying while applying one message alone: that message is the cause */
	reliq_apply_note_death(p);
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

	if (reliq_problem_is_new(p->problem, message))
		ereport(elevel,
				(errcode(sqlerrcode),
				 errmsg("reliq worker %d: %s", p->index, message)));
	for (i = 0; i < p->nlanes; i++)
		if (p->lanes[i]->stats != NULL && !reliq_lane_leaving(p->lanes[i]))
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

static void
pool_disconnect(Pool *p)
{
	int			i;

	for (i = 0; i < p->nlanes; i++)
		reliq_lane_detach(p->lanes[i]);
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

/*
 * What every lane shows while the worker's connection is down (connecting,
 * backing_off, disconnected); link_up: each shows its own state again.
 */
static void
show_link(Pool *p, bool link_up, ReliqWorkerState state)
{
	int			i;

	if (p->link_down == !link_up && (link_up || p->link_state == state))
		return;
	p->link_down = !link_up;
	p->link_state = state;
	for (i = 0; i < p->nlanes; i++)
		reliq_lane_publish(p->lanes[i]);
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
		ReliqNatsStatus st = {0};

		if (GetCurrentTimestamp() < p->retry_at)
		{
			show_link(p, false, RELIQ_WORKER_BACKING_OFF);
			return false;
		}
		reliq_slot_set_state(p->slot, RELIQ_WORKER_CONNECTING);
		show_link(p, false, RELIQ_WORKER_CONNECTING);
		snprintf(name, sizeof(name), "reliq worker #%d", p->index);
		p->conn = reliq_nats_connect(name, &st);
		if (p->conn != NULL)
		{
			reliq_nats_adopt_session_connection(p->conn);
			p->inbox = reliq_inbox_create(p->conn,
										  Max(reliq_fetch_timeout, RELIQ_IDLE_PULL_MS) + 1000,
										  &st);
		}
		if (p->conn == NULL || p->inbox == NULL)
		{
			note_pool_problem(p, WARNING, ERRCODE_CONNECTION_FAILURE, "could not connect to NATS at %s: %s",
							  reliq_nats_redacted_url(), st.message);
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
		show_link(p, true, RELIQ_WORKER_FETCHING);
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
		show_link(p, false, RELIQ_WORKER_DISCONNECTED);
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
			if (!reliq_lane_leaving(p->lanes[i]) && p->lanes[i]->stats)
				reliq_stats_set_error(p->lanes[i]->stats, "reconnected to NATS");
	}
	show_link(p, true, RELIQ_WORKER_FETCHING);
	return true;
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
refresh(Pool *p)
{
	int64	   *waiting;
	bool		orphans;
	int			nwaiting;
	bool		orphans_taken = false;
	int			i;
	int			j;

	nwaiting = reliq_outbox_waiting(&waiting, &orphans);
	for (i = 0; i < p->nlanes; i++)
	{
		Lane	   *l = p->lanes[i];

		if (reliq_lane_leaving(l))
			continue;
		for (j = 0; j < nwaiting; j++)
			if (waiting[j] == l->sub->id)
				l->outbox_pending = true;
		if (orphans && !orphans_taken && reliq_lane_attached(l))
			l->outbox_pending = orphans_taken = true;
	}

	if (!reliq_nats_is_connected(p->conn))
		return;
	for (i = 0; i < p->nlanes; i++)
	{
		Lane	   *l = p->lanes[i];
		ReliqStreamInfo stream;
		bool		seen_before = false;

		if (reliq_lane_leaving(l) || !reliq_lane_attached(l))
			continue;
		for (j = 0; j < i && !seen_before; j++)
			seen_before = !reliq_lane_leaving(p->lanes[j]) && reliq_lane_attached(p->lanes[j]) &&
				strcmp(p->lanes[j]->sub->stream, l->sub->stream) == 0;
		if (seen_before)
			continue;
		if (!reliq_nats_stream_info(p->conn, l->sub->stream, &stream, NULL))
			continue;			/* cannot tell now; the connection reports */
		for (j = i; j < p->nlanes; j++)
		{
			Lane	   *other = p->lanes[j];

			if (reliq_lane_leaving(other) || !reliq_lane_attached(other) ||
				strcmp(other->sub->stream, l->sub->stream) != 0 ||
				(stream.found && stream.created_ns == other->stream_created))
				continue;
			reliq_note_problem(other, LOG, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "stream \"%s\" was deleted or made again; attaching anew",
						 other->sub->stream);
			reliq_lane_detach(other);
		}
	}
}

/*
 * refresh() under the pool's own error boundary: an ERROR there (the
 * outbox's table refused, say) is logged once, shown in the lanes'
 * last_error, and the refresh tried again after a backoff; the worker and
 * its lanes go on (before, it ended the worker and every lane with it).
 */
static void
pool_refresh(Pool *p)
{
	TimestampTz now = GetCurrentTimestamp();
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	if (now < p->next_refresh || p->nlanes == 0)
		return;
	p->next_refresh = TimestampTzPlusMilliseconds(now, reliq_refresh_interval);
	PG_TRY();
	{
		refresh(p);
		if (p->refresh_retries > 0)
		{
			ereport(LOG,
					(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
					 errmsg("reliq worker %d: its refresh (the outbox, the streams) works again", p->index)));
			p->refresh_retries = 0;
			p->refresh_problem[0] = '\0';
		}
	}
	PG_CATCH();
	{
		char	   *message = reliq_recover_from_error(p->refresh_problem, cxt, owner);
		int			i;

		for (i = 0; i < p->nlanes; i++)
			if (p->lanes[i]->stats != NULL && !reliq_lane_leaving(p->lanes[i]))
				reliq_stats_set_error(p->lanes[i]->stats,
									  psprintf("the worker's refresh failed: %s", message));
		p->next_refresh = next_retry(&p->refresh_retries);
	}
	PG_END_TRY();
}

static Lane *
find_lane(Pool *p, int64 subscription_id)
{
	int			i;

	for (i = 0; i < p->nlanes; i++)
		if (p->lanes[i]->subscription_id == subscription_id)
			return p->lanes[i];
	return NULL;
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

		if (reliq_lane_leaving(l) && reliq_lane_leaving_done(l))
			reliq_lane_free(l);
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
 * After loading a lane's subscription: a lane whose subscription is gone
 * leaves; a failed load (an ERROR, already shown) is tried again after a
 * backoff.
 */
static void
loaded(Pool *p, ReliqLoadOutcome outcome, Lane *l)
{
	if (outcome == RELIQ_LOAD_GONE && l != NULL)
		reliq_lane_begin_leaving(l, false);
	else if (outcome == RELIQ_LOAD_FAILED)
		p->assignment_retry_at = next_retry(&p->assignment_retries);
}

static void
add_lane(Pool *p, const ReliqAssignment *assignment)
{
	ReliqLoadOutcome outcome;
	Lane	   *l = reliq_lane_create(p, assignment, &outcome);

	loaded(p, outcome, l);
	if (l == NULL)
		return;
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
 * The launcher changed what this worker serves (or a subscription's
 * settings): take up new lanes, give up those taken away, reload changed
 * ones.
 */
static void
apply_assignment(Pool *p)
{
	ReliqAssignment *assigned;
	int			nassigned;
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
			if (!reliq_lane_leaving(l))
				reliq_lane_begin_leaving(l, false);
			continue;
		}
		if (reliq_lane_leaving(l))
		{
			/* given back before its pull ran out: take it up again */
			reliq_lane_take_back(l);
		}
		l->lane_index = assigned[j].lane_index;
		if (assigned[j].config_version > l->sub->version)
			loaded(p, reliq_lane_load(l), l);
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

	reliq_worker_exit_if_postmaster_died();
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
			reliq_lane_begin_leaving(p->lanes[i], true);
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
 * How long the worker may wait for its inbox before a lane needs it.  A
 * lane's timer is compared with the time serve_lanes looked at the lanes:
 * one that fell due since then has had no turn, and waits for none.
 */
static int
idle_wait_ms(Pool *p)
{
	TimestampTz now = p->served_at;
	TimestampTz next = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), RELIQ_POLL_MS);
	int			i;

	next = Min(next, p->next_sweep);
	for (i = 0; i < p->nlanes; i++)
		next = reliq_lane_next_wake(p->lanes[i], now, next);
	return (int) Max(ms_until(next), 0);
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

	p->served_at = now;
	if (sweep)
		p->next_sweep = TimestampTzPlusMilliseconds(now, RELIQ_SWEEP_MS);
	for (k = 0; k < count; k++)
	{
		Lane	   *l = p->lanes[(start + k) % count];

		if (!sweep && !reliq_lane_wants_turn(l, now))
			continue;
		MemoryContextReset(p->turn_cxt);
		check_for_news(p);
		if (p->nlanes != count)
			break;				/* lanes came or went: start a new round */
		if (reliq_inbox_pump(p->inbox, 0, NULL) < 0)
			return busy;
		if (reliq_lane_turn(l))
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
			reliq_worker_wait_latch(RELIQ_POLL_MS * 10);
			continue;
		}
		if (!pool_connected(p))
		{
			reliq_worker_wait_latch(Max(Min(ms_until(p->retry_at), RELIQ_POLL_MS), 1));
			continue;
		}
		pool_refresh(p);
		if (!serve_lanes(p))
		{
			ReliqNatsStatus st = {0};

			if (reliq_inbox_pump(p->inbox, idle_wait_ms(p), &st) < 0)
			{
				note_pool_problem(p, WARNING, ERRCODE_CONNECTION_FAILURE, "%s", st.message);
				pool_disconnect(p);
				p->retry_at = next_retry(&p->retries);
			}
		}
	}

	/* asked to stop: every lane has given back what it held */
	if (p->conn && reliq_nats_is_connected(p->conn))
		(void) reliq_nats_flush(p->conn, reliq_nats_timeout, NULL);
	ereport(DEBUG1,
			(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
			 errmsg("reliq worker %d stopped", p->index)));
	proc_exit(0);
}
