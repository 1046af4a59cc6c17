/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The loop of a reliq worker: pull a batch, apply it in one transaction
 *	  (batch.c), then acknowledge.  The order is fetch, BEGIN, ledger,
 *	  handlers, COMMIT, ack; nothing is acked before its transaction commits.
 *
 * States (shown in reliq.worker_status, drawn in docs/architecture.md):
 *
 *	 connecting    making the NATS connection; attaching to the consumer
 *	 fetching      a pull request is out; waiting for messages
 *	 processing    applying a batch, then acking it
 *	 failing       the subscription fails as a whole: the worker keeps the
 *				   failed batch (sending in-progress acks, so the server
 *				   neither redelivers it nor counts deliveries), pulls
 *				   nothing, and retries the batch after the backoff delays
 *	 disconnected  the connection dropped; the client reconnects by itself
 *	 backing_off   connecting or attaching failed; waiting to try again
 *	 stopping      asked to stop (scale down, pause, drop): no new pulls;
 *				   the batch in hand and the outstanding pull are finished
 *
 *	 fenced        this cluster does not hold the consumer's lease (lease.c):
 *				   no pull, no ack; attached anew once it does
 *
 * Waits: a pull waits at most reliq.fetch_timeout; the inbox is polled in
 * slices of RELIQ_POLL_MS so that interrupts (shutdown, reload) and the
 * postmaster's death are seen quickly; retries wait on the latch.  SIGTERM
 * ends the worker at once (die): an unfinished batch is rolled back,
 * unacked, and redelivered.
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
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "batch.h"
#include "catalog.h"
#include "nats_client.h"
#include "outbox.h"
#include "reliq.h"
#include "shmem.h"
#include "worker.h"

/* How often a waiting worker looks at its latch and interrupts. */
#define RELIQ_POLL_MS 100
/* Filling a batch under a backlog (collect_batch). */
#define RELIQ_LINGER_MS 1		/* longest wait for more messages */
#define RELIQ_GAP_US 200		/* a longer silence ends the batch */

/* At most one WARNING about failing messages per this many ms. */
#define RELIQ_WARNING_INTERVAL_MS 10000


typedef struct Worker
{
	ReliqWorkerSlot *slot;
	ReliqSubscriptionStats *stats;
	int			worker_index;
	ReliqSubscription *sub;
	MemoryContext sub_cxt;		/* holds sub */
	MemoryContext batch_cxt;	/* reset after each batch */
	MemoryContext held_cxt;		/* holds the held batch, if any */
	ReliqBatchState batch;

	ReliqNatsConnection *conn;
	ReliqPuller *puller;
	bool		attached;
	bool		connected;		/* as last reported */
	uint64		reconnects_seen;
	int64		stream_created;
	int			missed_pulls;
	TimestampTz next_refresh;

	int			retries;
	TimestampTz retry_at;
	char		problem[RELIQ_ERROR_LEN];

	ReliqMessage *held;
	int			nheld;
	int			probes;
	TimestampTz next_probe;
	TimestampTz next_progress;

	bool		stopping;
	bool		outbox_pending; /* rows may wait in reliq._outbox */
	TimestampTz next_outbox_try;

	TimestampTz last_warning_at;
	int			unreported_failures;

	uint64		lease_epoch;	/* of the lease when last attached */
	ReliqMessage *applying;		/* the messages being applied (until acked) */
	int			napplying;
	bool		awaiting_standby;	/* logged that acks wait for a standby */
} Worker;

static ReliqWorkerSlot *MySlot = NULL;
static struct Worker *MyWorker = NULL;	/* for the exit callback */
static ReliqSubscriptionStats *MyStats = NULL;
static int64 applying_alone = 0;	/* the redelivery being applied alone */

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
release_messages(Worker *w, ReliqMessage *msgs, int n, int64 delay_ms)
{
	int			released = 0;
	int			i;

	if (w->conn == NULL || !reliq_nats_is_connected(w->conn))
		return 0;
	for (i = 0; i < n; i++)
		released += reliq_nats_ack(w->conn, msgs[i].reply, RELIQ_NAK, delay_ms);
	return released;
}

/* Delay for NAKs: until our outstanding pull (if any) has run out. */
static int64
release_delay_ms(Worker *w)
{
	int64		left = w->puller ? reliq_puller_request_left_ms(w->puller) : 0;

	return left > 0 ? left + 100 : 0;
}

/*
 * At exit, give back what this worker holds and has not acked: the batch
 * being applied when a fast shutdown interrupted it, the held batch of a
 * failing subscription, and what arrived in the inbox meanwhile.
 * Otherwise each would wait for ack_wait.
 */
static void
release_unapplied(Worker *w)
{
	int64		delay;
	int			released;

	if (w->conn == NULL || !reliq_nats_is_connected(w->conn) || !PostmasterIsAlive())
		return;
	delay = release_delay_ms(w);
	released = release_messages(w, w->applying, w->napplying, delay) +
		release_messages(w, w->held, w->nheld, delay);
	if (w->puller != NULL)
		released += reliq_puller_release_queued(w->puller, delay);
	if (released > 0)
		(void) reliq_nats_flush(w->conn, Min(reliq_nats_timeout, 1000));
}

/*
 * Close the NATS connection (sending what it buffered) before the slot is
 * freed: a free slot promises the monitor that this worker can send
 * nothing more (lease.c releases leases at a clean shutdown on that).
 */
static void
close_connection(int code, Datum arg)
{
	if (MyWorker != NULL)
		release_unapplied(MyWorker);
	reliq_nats_close(reliq_nats_session_connection_if_any());
}

static void
detach_slot(int code, Datum arg)
{
	if (MySlot == NULL)
		return;
	/* dying while applying one message alone: that message is the cause */
	if (applying_alone != 0 && MyStats != NULL)
		reliq_stats_note_death(MyStats, applying_alone);
	SpinLockAcquire(&MySlot->mutex);
	MySlot->pid = 0;
	MySlot->latch = NULL;
	MySlot->state = RELIQ_WORKER_STOPPED;
	MySlot->connected = false;
	MySlot->in_flight = 0;
	SpinLockRelease(&MySlot->mutex);
	MySlot = NULL;
}

/* Take over the slot the launcher prepared, unless it has moved on. */
static bool
attach_slot(Worker *w, int slot_index, uint64 generation)
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
		w->worker_index = slot->worker_index;
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

	w->slot = slot;
	MySlot = slot;
	on_shmem_exit(detach_slot, (Datum) 0);
	before_shmem_exit(close_connection, (Datum) 0);
	return true;
}

static void
set_state(Worker *w, ReliqWorkerState state)
{
	reliq_slot_set_state(w->slot, state);
}

static void
report_connected(Worker *w, bool connected)
{
	if (connected == w->connected)
		return;
	w->connected = connected;
	reliq_slot_set_connected(w->slot, connected);
}

/*
 * Log a problem once, when it starts or changes, and show it in
 * last_error; the same problem again stays quiet.
 */
static void
note_problem(Worker *w, int elevel, const char *fmt,...)
{
	char		message[RELIQ_ERROR_LEN];
	va_list		args;

	va_start(args, fmt);
	vsnprintf(message, sizeof(message), fmt, args);
	va_end(args);

	if (strcmp(message, w->problem) != 0)
	{
		ereport(elevel,
				(errmsg("reliq subscription \"%s\": %s", w->sub->name, message)));
		strlcpy(w->problem, message, sizeof(w->problem));
	}
	reliq_stats_set_error(w->stats, message);
}

static void
clear_problem(Worker *w, const char *resolution)
{
	if (w->problem[0] != '\0')
	{
		ereport(LOG,
				(errmsg("reliq subscription \"%s\": %s", w->sub->name, resolution)));
		w->problem[0] = '\0';
	}
	w->retries = 0;
}

static void
schedule_retry(Worker *w)
{
	int64		delay = (int64) reliq_naptime << Min(w->retries, 5);

	w->retries++;
	w->retry_at = after_ms(Min(delay, reliq_max_retry_interval));
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
 * A short transaction for reliq's bookkeeping.  end_transaction() returns
 * to the memory context that was current before (a commit leaves
 * TopMemoryContext current, where the loop's allocations would leak).
 */
static MemoryContext
begin_transaction(const char *activity)
{
	MemoryContext caller = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
	return caller;
}

static void
end_transaction(MemoryContext caller)
{
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller);
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
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

/* (Re)load the subscription; false if it is gone. */
static bool
load_subscription(Worker *w, int64 subscription_id)
{
	MemoryContext cxt;
	ReliqSubscription *sub;

	MemoryContext caller;

	cxt = AllocSetContextCreate(TopMemoryContext, "reliq subscription",
								ALLOCSET_SMALL_SIZES);
	caller = begin_transaction("reliq: reading subscription");
	MemoryContextSwitchTo(cxt);
	sub = reliq_catalog_extension_present() ?
		reliq_catalog_load_subscription(subscription_id) : NULL;
	end_transaction(caller);

	if (sub == NULL)
	{
		MemoryContextDelete(cxt);
		return false;
	}
	if (w->sub != NULL && consumer_settings_differ(w->sub, sub))
		w->attached = false;	/* attach again: updates the consumer */
	if (w->sub != NULL && w->nheld > 0)
		w->next_probe = GetCurrentTimestamp();	/* a fix may have come */
	if (w->sub_cxt)
		MemoryContextDelete(w->sub_cxt);
	w->sub_cxt = cxt;
	w->sub = sub;
	reliq_batch_set_subscription(&w->batch, sub);
	reliq_slot_set_progress(w->slot, sub->batch_size, w->nheld);
	return true;
}

static void
begin_stopping(Worker *w, const char *why)
{
	if (w->stopping)
		return;
	w->stopping = true;
	set_state(w, RELIQ_WORKER_STOPPING);
	ereport(DEBUG1,
			(errmsg("reliq subscription \"%s\": worker %d stopping: %s",
					w->sub->name, w->worker_index, why)));
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

/* Interrupts, reloads, stop requests and catalog changes. */
static void
check_for_news(Worker *w)
{
	exit_if_postmaster_died();
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
	if (pg_atomic_read_u32(&w->slot->stop_requested) != 0)
		begin_stopping(w, "requested by the launcher");
	if (!w->stopping &&
		pg_atomic_read_u64(&w->slot->config_version) > (uint64) w->sub->version)
	{
		if (!load_subscription(w, w->sub->id))
			begin_stopping(w, "subscription dropped");
	}
}

/*
 * Connection and consumer
 */

static void
detach(Worker *w)
{
	if (w->puller)
	{
		reliq_puller_destroy(w->puller);
		w->puller = NULL;
	}
	w->attached = false;
	w->missed_pulls = 0;
}

static void
disconnect(Worker *w)
{
	detach(w);
	if (w->conn)
	{
		reliq_nats_close(w->conn);
		w->conn = NULL;
	}
	report_connected(w, false);
}

static bool
ensure_connected(Worker *w)
{
	char		name[128];

	if (w->conn && reliq_nats_settings_changed(w->conn))
	{
		ereport(LOG,
				(errmsg("reliq subscription \"%s\": NATS settings changed, reconnecting",
						w->sub->name)));
		disconnect(w);
	}
	if (w->conn)
		return true;
	if (GetCurrentTimestamp() < w->retry_at)
		return false;

	set_state(w, RELIQ_WORKER_CONNECTING);
	snprintf(name, sizeof(name), "reliq %s #%d", w->sub->name, w->worker_index);
	w->conn = reliq_nats_connect(name);
	if (w->conn == NULL)
	{
		note_problem(w, WARNING, "could not connect to NATS at %s: %s",
					 reliq_nats_redacted_url(), reliq_nats_last_error());
		schedule_retry(w);
		return false;
	}
	reliq_nats_adopt_session_connection(w->conn);
	w->reconnects_seen = reliq_nats_reconnect_count(w->conn);
	report_connected(w, true);
	ereport(LOG,
			(errmsg("reliq subscription \"%s\": worker %d connected to NATS at %s",
					w->sub->name, w->worker_index, reliq_nats_redacted_url())));
	return true;
}

/*
 * Attach to the durable consumer: learn which incarnation of the stream
 * exists, record it, make the consumer match the subscription (creating
 * it after the last acknowledged message if it was lost), and open a new
 * pull inbox.
 */
static bool
ensure_attached(Worker *w)
{
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

	if (w->attached)
		return true;
	if (GetCurrentTimestamp() < w->retry_at)
		return false;
	set_state(w, RELIQ_WORKER_CONNECTING);
	if (!reliq_nats_is_connected(w->conn))
	{
		note_problem(w, LOG, "disconnected from NATS");
		schedule_retry(w);
		return false;
	}

	if (!reliq_nats_stream_info(w->conn, w->sub->stream, &before))
	{
		note_problem(w, WARNING, "could not look up stream \"%s\": %s",
					 w->sub->stream, reliq_nats_last_error());
		schedule_retry(w);
		return false;
	}
	if (!before.found)
	{
		note_problem(w, WARNING, "stream \"%s\" does not exist", w->sub->stream);
		schedule_retry(w);
		return false;
	}

	caller = begin_transaction("reliq: attaching to the stream");
	claimed = reliq_catalog_claim_stream(w->sub->id, before.created_ns,
										 &floor, &has_history);
	end_transaction(caller);
	if (claimed == 0)
	{
		begin_stopping(w, "subscription dropped or paused");
		return false;
	}
	Assert(claimed == before.created_ns);

	description = psprintf("reliq subscription %s", w->sub->name);
	memset(&spec, 0, sizeof(spec));
	spec.stream = w->sub->stream;
	spec.consumer = w->sub->consumer;
	spec.filter_subject = w->sub->subject;
	spec.description = description;
	spec.ack_wait_ms = w->sub->ack_wait_ms;
	spec.max_ack_pending = reliq_subscription_max_ack_pending(w->sub);
	if (has_history)
	{
		spec.deliver_from = RELIQ_DELIVER_FROM_SEQ;
		spec.start_seq = floor + 1;
	}
	else
		spec.deliver_from = w->sub->start_new ? RELIQ_DELIVER_NEW : RELIQ_DELIVER_ALL;

	if (!reliq_nats_ensure_consumer(w->conn, &spec, &info, &created))
	{
		note_problem(w, WARNING, "could not set up consumer \"%s\" of stream \"%s\": %s",
					 w->sub->consumer, w->sub->stream, reliq_nats_last_error());
		schedule_retry(w);
		return false;
	}
	if (!reliq_nats_stream_info(w->conn, w->sub->stream, &after) ||
		!after.found || after.created_ns != before.created_ns)
	{
		note_problem(w, LOG, "stream \"%s\" changed while attaching; trying again",
					 w->sub->stream);
		schedule_retry(w);
		return false;
	}
	if (created)
		ereport(LOG,
				(errmsg("reliq subscription \"%s\": created consumer \"%s\" on stream \"%s\"%s",
						w->sub->name, w->sub->consumer, w->sub->stream,
						has_history ? psprintf(" from sequence " INT64_FORMAT, floor + 1) : "")));

	w->stream_created = before.created_ns;
	w->batch.stream_created = before.created_ns;

	if (w->puller)
		reliq_puller_destroy(w->puller);
	w->puller = reliq_puller_create(w->conn, w->sub->stream, w->sub->consumer);
	if (w->puller == NULL)
	{
		note_problem(w, WARNING, "could not subscribe to a pull inbox: %s",
					 reliq_nats_last_error());
		schedule_retry(w);
		return false;
	}
	w->attached = true;
	w->missed_pulls = 0;
	w->reconnects_seen = reliq_nats_reconnect_count(w->conn);
	w->next_refresh = after_ms(reliq_refresh_interval);
	clear_problem(w, "attached to its consumer again");
	ereport(DEBUG1,
			(errmsg("reliq subscription \"%s\": worker %d attached to consumer \"%s\" (" INT64_FORMAT " pending)",
					w->sub->name, w->worker_index, w->sub->consumer, info.num_pending)));
	return true;
}

/*
 * Is the consumer we attached to still there?  Called when pulls go
 * unanswered, and periodically by worker 0.  (A consumer made again under
 * the same name needs nothing: the ledger is keyed by the stream, and a
 * server restart changes a consumer's creation time anyway.)
 */
static void
verify_consumer(Worker *w)
{
	ReliqConsumerInfo info;

	if (!reliq_nats_consumer_info(w->conn, w->sub->stream, w->sub->consumer, &info))
		return;					/* cannot tell now; the connection reports */
	if (!info.found)
	{
		note_problem(w, WARNING, "consumer \"%s\" of stream \"%s\" has disappeared from the server",
					 w->sub->consumer, w->sub->stream);
		detach(w);
	}
}

/*
 * Every reliq.refresh_interval: look for outbox rows left behind, and
 * (worker 0) make sure the stream is still the incarnation attached to.
 * The consumer's figures and the ledger's pruning are the monitor's
 * (monitor.c), which works even while every worker is busy.
 */
static void
maybe_refresh(Worker *w)
{
	ReliqStreamInfo stream;

	if (GetCurrentTimestamp() < w->next_refresh)
		return;
	w->next_refresh = after_ms(reliq_refresh_interval);
	w->outbox_pending = true;	/* rows a dead worker or a dropped subscription left */
	if (w->worker_index != 0 || !reliq_nats_is_connected(w->conn))
		return;
	if (reliq_nats_stream_info(w->conn, w->sub->stream, &stream) &&
		(!stream.found || stream.created_ns != w->stream_created))
	{
		note_problem(w, LOG, "stream \"%s\" was deleted or made again; attaching anew",
					 w->sub->stream);
		detach(w);
	}
}

/* The outstanding pull ended without filling the batch. */
static void
handle_pull_end(Worker *w)
{
	const char *description;
	int			status = reliq_puller_end_status(w->puller, &description);

	switch (status)
	{
		case 404:				/* no messages */
		case 408:				/* expired */
			w->missed_pulls = 0;
			break;
		case 409:
			if (strstr(description, "Deleted") != NULL ||
				strstr(description, "deleted") != NULL)
			{
				note_problem(w, WARNING, "consumer \"%s\" was deleted on the server",
							 w->sub->consumer);
				detach(w);
			}
			else
			{
				note_problem(w, WARNING, "pull refused: %d %s", status, description);
				wait_latch(reliq_naptime);
			}
			break;
		case 0:					/* no answer at all */
		case 503:				/* no responders */
			if (reliq_nats_is_connected(w->conn) && ++w->missed_pulls >= 2)
			{
				w->missed_pulls = 0;
				verify_consumer(w);
			}
			break;
		default:
			note_problem(w, WARNING, "pull refused: %d %s", status, description);
			wait_latch(reliq_naptime);
			break;
	}
}

/* Keep track of the connection; a reconnection loses the pull request. */
static bool
connection_usable(Worker *w)
{
	uint64		reconnects = reliq_nats_reconnect_count(w->conn);

	if (!reliq_nats_is_connected(w->conn))
	{
		if (w->connected)
		{
			report_connected(w, false);
			note_problem(w, LOG, "disconnected from NATS; reconnecting");
		}
		set_state(w, RELIQ_WORKER_DISCONNECTED);
		reliq_puller_forget_request(w->puller);
		return false;
	}
	if (reconnects != w->reconnects_seen)
	{
		w->reconnects_seen = reconnects;
		reliq_puller_forget_request(w->puller);
		w->missed_pulls = 0;
	}
	if (!w->connected)
	{
		report_connected(w, true);
		clear_problem(w, "reconnected to NATS");
	}
	return true;
}

/*
 * Wait up to wait_ms for the next inbox event and deal with it; a message
 * lands in msgs[*n].  Returns false when nothing came (or the inbox
 * failed, and the worker detached).
 */
static bool
next_event(Worker *w, ReliqMessage *msgs, int *n, int wait_ms)
{
	switch (reliq_puller_next(w->puller, wait_ms, &msgs[*n]))
	{
		case RELIQ_PULL_MESSAGE:
			(*n)++;
			return true;
		case RELIQ_PULL_ENDED:
			handle_pull_end(w);
			return true;
		case RELIQ_PULL_ERROR:
			note_problem(w, WARNING, "%s", reliq_nats_last_error());
			detach(w);
			return false;
		case RELIQ_PULL_NOTHING:
			return false;
	}
	return false;
}

/* Take the messages that have arrived, without waiting. */
static void
take_arrived(Worker *w, ReliqMessage *msgs, int max, int *n)
{
	while (*n < max && w->attached && next_event(w, msgs, n, 0))
		;
}

/*
 * Collect up to max messages.  Returns as soon as at least one has come
 * (what arrived meanwhile comes along), or after reliq.fetch_timeout with
 * none.  Before returning a non-empty batch it asks for the next one, so
 * messages flow in while this batch is applied.
 */
static int
collect_batch(Worker *w, ReliqMessage *msgs, int max)
{
	TimestampTz give_up = after_ms(reliq_fetch_timeout);
	int			n = 0;

	set_state(w, w->stopping ? RELIQ_WORKER_STOPPING : RELIQ_WORKER_FETCHING);
	for (;;)
	{
		take_arrived(w, msgs, max, &n);
		if (n > 0 || !w->attached)
			break;
		if (w->stopping && !reliq_puller_active(w->puller))
			break;
		if (GetCurrentTimestamp() >= give_up)
			break;

		check_for_news(w);
		if (!w->attached)
			break;
		if (!connection_usable(w))
		{
			wait_latch(RELIQ_POLL_MS);
			continue;
		}
		if (!w->stopping)
			set_state(w, RELIQ_WORKER_FETCHING);
		if (!reliq_puller_active(w->puller) && !w->stopping &&
			!reliq_puller_request(w->puller, max, reliq_fetch_timeout))
		{
			wait_latch(RELIQ_POLL_MS);
			continue;
		}
		(void) next_event(w, msgs, &n, RELIQ_POLL_MS);
	}

	/*
	 * Not full, while the pull is still delivering and the server said it
	 * had more (each message carries the consumer's pending count in its
	 * reply subject): under a backlog the rest streams in microseconds
	 * apart, and fewer, fuller transactions go faster.  Keep taking
	 * messages while they come less than RELIQ_GAP_US apart, for at most
	 * RELIQ_LINGER_MS.  Under light load nothing is pending and nothing is
	 * added to the latency.
	 */
	if (n > 0 && n < max && msgs[n - 1].pending > 0 &&
		w->attached && reliq_puller_active(w->puller))
	{
		TimestampTz until = after_ms(RELIQ_LINGER_MS);
		TimestampTz last_arrival = GetCurrentTimestamp();

		while (n < max && msgs[n - 1].pending > 0 &&
			   w->attached && reliq_puller_active(w->puller))
		{
			int			before = n;
			TimestampTz now;

			take_arrived(w, msgs, max, &n);
			now = GetCurrentTimestamp();
			if (n > before)
				last_arrival = now;
			else if (now - last_arrival >= RELIQ_GAP_US || now >= until)
				break;
			else
				pg_usleep(RELIQ_GAP_US / 4);
		}
	}

	if (n > 0 && w->attached && !w->stopping &&
		!reliq_puller_active(w->puller) && reliq_nats_is_connected(w->conn))
	{
		int			queued = reliq_puller_queued(w->puller);

		if (queued < max)
			(void) reliq_puller_request(w->puller, max - queued,
										reliq_fetch_timeout);
	}
	return n;
}

/*
 * The lease (lease.c): this cluster consumes only while it holds it
 */

/* Usable right now, and still the lease this worker attached under? */
static bool
lease_current(Worker *w)
{
	ReliqLeaseView lease;

	/*
	 * The launcher frees the entry of a dropped subscription and may hand
	 * it to another: a worker still finishing must not read that one's.
	 */
	if (w->stats == NULL || w->stats->subscription_id != w->sub->id)
		return false;
	reliq_lease_read(w->stats, &lease);
	return reliq_lease_usable(&lease, GetCurrentTimestamp()) &&
		(lease.state == RELIQ_LEASE_OFF || lease.epoch == w->lease_epoch);
}

/*
 * The consumer attached to is another cluster's now, or was made again:
 * drop the inbox and any held batch (its reply subjects name deliveries of
 * the consumer as it was; an ack sent there could ack a delivery of the new
 * one).  Those messages come again from wherever they belong.
 */
static void
forget_consumer(Worker *w)
{
	detach(w);
	if (w->nheld > 0)
	{
		w->nheld = 0;
		w->held = NULL;
		MemoryContextDelete(w->held_cxt);
		w->held_cxt = NULL;
	}
}

/*
 * May this worker pull?  While another cluster holds the lease (or this
 * one is taking it over), the worker holds no pull inbox and waits.  While
 * this cluster's own lease has merely lapsed (the monitor could not renew
 * it, usually because NATS is unreachable), it keeps its inbox and pulls
 * nothing until the lease is renewed.  When the lease was acquired anew,
 * the consumer was made again at this database's position: attach afresh.
 */
static bool
lease_allows(Worker *w)
{
	ReliqLeaseView lease;

	memset(&lease, 0, sizeof(lease));
	if (w->stats != NULL)
		reliq_lease_read(w->stats, &lease);
	if (reliq_lease_usable(&lease, GetCurrentTimestamp()))
	{
		if (lease.state == RELIQ_LEASE_OWNED && lease.epoch != w->lease_epoch)
		{
			forget_consumer(w);
			w->lease_epoch = lease.epoch;
		}
		return true;
	}
	if (lease.state == RELIQ_LEASE_FENCED || lease.state == RELIQ_LEASE_ACQUIRING)
	{
		forget_consumer(w);
		set_state(w, RELIQ_WORKER_FENCED);
		if (lease.state == RELIQ_LEASE_FENCED)
			note_problem(w, LOG, "fenced: consumer \"%s\" is owned by %s; to move it here: SELECT reliq.take_over('%s')",
						 w->sub->consumer, lease.holder, w->sub->name);
	}
	else if (w->stats == NULL)
		note_problem(w, WARNING, "no statistics entry, so no lease: raise reliq.max_subscriptions");
	else if (w->conn != NULL && w->puller != NULL && connection_usable(w))
		set_state(w, RELIQ_WORKER_CONNECTING);	/* until the lease is renewed */
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
await_standbys(Worker *w, XLogRecPtr lsn)
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
		if (!w->awaiting_standby)
			ereport(LOG,
					(errmsg("reliq subscription \"%s\": acknowledgements wait until the synchronous standby confirms %X/%X",
							w->sub->name, LSN_FORMAT_ARGS(lsn)),
					 errdetail("The commit's own wait for synchronous replication was cancelled.")));
		w->awaiting_standby = true;
		wait_latch(RELIQ_POLL_MS);
		mode = sync_wait_mode();
	}
	w->awaiting_standby = false;
}

/*
 * After COMMIT, before publishing the outbox and acking: nothing goes out
 * that may not last.  Exits (acking nothing) when the postmaster has died
 * or the worker is asked to die; waits for synchronous standbys; false
 * when the lease has lapsed meanwhile (another cluster may own the
 * consumer now: its messages are left to it, unacked).
 */
static bool
may_acknowledge(Worker *w, XLogRecPtr flushed)
{
	exit_if_postmaster_died();
	CHECK_FOR_INTERRUPTS();
	await_standbys(w, flushed);
	exit_if_postmaster_died();
	if (lease_current(w))
		return true;
	note_problem(w, LOG, "the lease lapsed during a batch; its messages are left unacknowledged");
	return false;
}

/*
 * Publishing what handlers published, after their commit
 */

/* Outbox rows published in one transaction. */
#define RELIQ_OUTBOX_ROUND 500

static void
drain_outbox(Worker *w)
{
	bool		stuck = false;
	int			rows;

	if (!w->outbox_pending || w->conn == NULL || !reliq_nats_is_connected(w->conn))
		return;
	pgstat_report_activity(STATE_RUNNING, "reliq: publishing the outbox");
	do
	{
		rows = reliq_outbox_publish(w->conn, w->sub->id, RELIQ_OUTBOX_ROUND, &stuck);
	} while (rows == RELIQ_OUTBOX_ROUND && !stuck);
	pgstat_report_activity(STATE_IDLE, NULL);

	w->outbox_pending = stuck;
	if (stuck)
	{
		note_problem(w, WARNING, "messages wait in reliq._outbox: %s",
					 reliq_nats_last_error());
		w->next_outbox_try = after_ms(reliq_refresh_interval);
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
acknowledge(Worker *w, ReliqMessage *msgs, int n, bool quick)
{
	bool		ok = true;
	int			i;

	for (i = 0; i < n; i++)
	{
		ReliqMessage *msg = &msgs[i];

		switch (msg->outcome)
		{
			case RELIQ_OUTCOME_PROCESSED:
			case RELIQ_OUTCOME_DUPLICATE:
				ok &= reliq_nats_ack(w->conn, msg->reply, RELIQ_ACK, 0);
				break;
			case RELIQ_OUTCOME_FAILED:
				ok &= reliq_nats_ack(w->conn, msg->reply, RELIQ_NAK,
									 reliq_subscription_backoff_ms(w->sub, msg->delivered));
				break;
			case RELIQ_OUTCOME_DEAD_LETTERED:
				ok &= reliq_nats_ack(w->conn, msg->reply, RELIQ_TERM, 0);
				break;
			case RELIQ_OUTCOME_NONE:
				/* not applied (the stream changed): deliver again now */
				ok &= reliq_nats_ack(w->conn, msg->reply, RELIQ_NAK, 0);
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
	 * the ledger absorbs; the worker flushes before it stops (finish).
	 */
	if (ok && quick)
		ok = reliq_nats_flush(w->conn, reliq_nats_timeout);
	if (!ok)
		ereport(DEBUG1,
				(errmsg("reliq subscription \"%s\": acknowledgements not sent: %s",
						w->sub->name, reliq_nats_last_error())));
}

static void
send_in_progress(Worker *w)
{
	int			i;

	for (i = 0; i < w->nheld; i++)
		(void) reliq_nats_ack(w->conn, w->held[i].reply, RELIQ_IN_PROGRESS, 0);
	(void) reliq_nats_flush(w->conn, reliq_nats_timeout);
	w->next_progress = after_ms(Max(w->sub->ack_wait_ms / 2, 1));
}

static void
count_batch(Worker *w, int received, const ReliqBatchResult *result)
{
	ReliqSubscriptionStats *stats = w->stats;
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
report_failures(Worker *w, const ReliqBatchResult *result)
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
	reliq_stats_set_failure(w->stats, text);

	w->unreported_failures += Max(result->failed, 1);
	if (w->last_warning_at == 0 ||
		TimestampDifferenceExceeds(w->last_warning_at, GetCurrentTimestamp(),
								   RELIQ_WARNING_INTERVAL_MS))
	{
		ereport(WARNING,
				(errcode(error->sqlerrcode),
				 errmsg("reliq subscription \"%s\": %d message failures; last: %s",
						w->sub->name, w->unreported_failures, text),
				 error->detail ? errdetail("%s", error->detail) : 0));
		w->last_warning_at = GetCurrentTimestamp();
		w->unreported_failures = 0;
	}
}

static void
copy_held(Worker *w, ReliqMessage *msgs, int n)
{
	MemoryContext cxt;
	MemoryContext old;
	int			i;
	int			j;

	/* A probe's messages point into the current held_cxt: copy, then swap. */
	cxt = AllocSetContextCreate(TopMemoryContext, "reliq held batch",
								ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	w->held = palloc(sizeof(ReliqMessage) * Max(n, 1));
	w->nheld = 0;
	for (i = 0; i < n; i++)
	{
		ReliqMessage *src = &msgs[i];
		ReliqMessage *dst;

		if (src->outcome != RELIQ_OUTCOME_HELD)
			continue;
		dst = &w->held[w->nheld++];
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
	if (w->held_cxt)
		MemoryContextDelete(w->held_cxt);
	w->held_cxt = cxt;
}

/*
 * Latency and duration of a committed batch: publish-to-commit for each
 * message it applied, and the batch from BEGIN to its acks.
 */
static void
time_batch(Worker *w, ReliqMessage *msgs, int n, TimestampTz started,
		   TimestampTz committed, const ReliqBatchResult *result)
{
	int64	   *latencies = palloc(sizeof(int64) * Max(n, 1));
	int			nlatencies = 0;
	int			i;

	for (i = 0; i < n; i++)
	{
		if (msgs[i].outcome != RELIQ_OUTCOME_PROCESSED)
			continue;
		latencies[nlatencies++] =
			Max(committed - reliq_unix_ns_to_timestamptz(msgs[i].published_ns), 0);
	}
	reliq_stats_record_batch(w->stats, GetCurrentTimestamp() - started,
							 latencies, nlatencies, result->processed);
	pfree(latencies);
}

/* Apply a batch, acknowledge it, count it. */
static void
process_batch(Worker *w, ReliqMessage *msgs, int n, bool probe)
{
	ReliqBatchResult result;
	bool		was_failing = (w->nheld > 0);
	TimestampTz started = GetCurrentTimestamp();
	TimestampTz committed;

	set_state(w, RELIQ_WORKER_PROCESSING);
	reliq_slot_set_progress(w->slot, w->sub->batch_size, n);
	pgstat_report_activity(STATE_RUNNING,
						   psprintf("reliq: applying %d messages of subscription %s", n, w->sub->name));

	reliq_batch_run(&w->batch, msgs, n, &result);
	committed = GetCurrentTimestamp();
	if (result.outboxed > 0)
		w->outbox_pending = true;
	if (!may_acknowledge(w, GetFlushRecPtr(NULL)))
	{
		/*
		 * Committed, so counted; not acked but NAKed, so delivered again at
		 * once to whoever owns the consumer now (this cluster's ledger, or
		 * another's, absorbs or applies it).
		 */
		count_batch(w, probe ? 0 : n, &result);
		release_messages(w, msgs, n, release_delay_ms(w));
		forget_consumer(w);
		pgstat_report_activity(STATE_IDLE, NULL);
		return;
	}
	drain_outbox(w);
	acknowledge(w, msgs, n,
				committed - started < RELIQ_QUICK_BATCH_US);
	count_batch(w, probe ? 0 : n, &result);
	time_batch(w, msgs, n, started, committed, &result);
	report_failures(w, &result);

	if (result.subscription_gone)
		begin_stopping(w, "subscription dropped");
	if (result.stream_changed)
	{
		note_problem(w, LOG, "stream \"%s\" was made again; attaching to the new one",
					 w->sub->stream);
		detach(w);
	}

	if (result.tripped && result.held > 0)
	{
		if (!was_failing)
		{
			ereport(LOG,
					(errmsg("reliq subscription \"%s\": systemic failure detected; holding %d messages and pausing pulls",
							w->sub->name, result.held),
					 errdetail("%d distinct messages in a row failed with errors not specific to them; nothing is dead-lettered meanwhile.",
							   w->batch.breaker.consecutive),
					 errhint("Fix the cause shown in reliq.subscription_stats.last_error; reliq retries after the subscription's backoff delays.")));
			w->probes = 0;
		}
		copy_held(w, msgs, n);
		w->next_probe = after_ms(reliq_subscription_backoff_ms(w->sub, ++w->probes));
		w->next_progress = GetCurrentTimestamp();
		set_state(w, RELIQ_WORKER_FAILING);
	}
	else if (was_failing)
	{
		ereport(LOG,
				(errmsg("reliq subscription \"%s\": resumed after a systemic failure",
						w->sub->name)));
		w->nheld = 0;
		w->held = NULL;
		MemoryContextDelete(w->held_cxt);
		w->held_cxt = NULL;
	}
	reliq_slot_set_progress(w->slot, w->sub->batch_size, w->nheld);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * Apply what was collected.  First deliveries go in one batch; each
 * redelivery goes in a transaction of its own, so that a message whose
 * handler kills the worker (each time, before COMMIT) takes only itself
 * towards max_deliver, not the messages that shared its first batch.
 * Redeliveries are rare when all is well: after a failure, a crash or an
 * expired ack_wait.
 */
static void
apply_collected(Worker *w, ReliqMessage *msgs, int n)
{
	ReliqMessage *first = palloc(sizeof(ReliqMessage) * n);
	int			nfirst = 0;
	int			i;

	w->applying = msgs;
	w->napplying = n;
	for (i = 0; i < n; i++)
		if (msgs[i].delivered <= 1)
			first[nfirst++] = msgs[i];
	if (nfirst > 0)
		process_batch(w, first, nfirst, false);
	for (i = 0; i < n && w->attached && w->nheld == 0; i++)
		if (msgs[i].delivered > 1)
		{
			applying_alone = msgs[i].stream_seq;
			process_batch(w, &msgs[i], 1, false);
			applying_alone = 0;
		}
	/* what a failing state or a detach left unapplied comes again later */
	for (; i < n; i++)
		if (msgs[i].delivered > 1 && msgs[i].outcome == RELIQ_OUTCOME_NONE && w->conn)
			(void) reliq_nats_ack(w->conn, msgs[i].reply, RELIQ_NAK, 0);
	w->applying = NULL;
	w->napplying = 0;
	pfree(first);
}

/* Failing: keep the held batch alive on the server and retry it. */
static void
hold_step(Worker *w)
{
	TimestampTz now = GetCurrentTimestamp();

	set_state(w, RELIQ_WORKER_FAILING);
	if (w->stopping)
	{
		int			i;

		for (i = 0; i < w->nheld; i++)
			(void) reliq_nats_ack(w->conn, w->held[i].reply, RELIQ_NAK, 0);
		(void) reliq_nats_flush(w->conn, reliq_nats_timeout);
		w->nheld = 0;
		return;
	}
	if (!lease_current(w))
	{
		/* no longer ours: give the held batch back to the owner */
		(void) release_messages(w, w->held, w->nheld, release_delay_ms(w));
		forget_consumer(w);
		return;
	}
	if (now >= w->next_progress && reliq_nats_is_connected(w->conn))
		send_in_progress(w);
	if (now >= w->next_probe)
	{
		ReliqMessage *msgs = palloc(sizeof(ReliqMessage) * w->nheld);
		int			n = w->nheld;

		memcpy(msgs, w->held, sizeof(ReliqMessage) * n);
		process_batch(w, msgs, n, true);
		return;
	}
	wait_latch(Min(RELIQ_POLL_MS * 10,
				   Max(Min(ms_until(w->next_probe), ms_until(w->next_progress)), 1)));
}

static void
finish(Worker *w)
{
	if (w->nheld > 0 && w->conn)
		hold_step(w);
	if (w->conn && reliq_nats_is_connected(w->conn))
		(void) reliq_nats_flush(w->conn, reliq_nats_timeout);
	disconnect(w);
	ereport(DEBUG1,
			(errmsg("reliq subscription \"%s\": worker %d stopped",
					w->sub->name, w->worker_index)));
	proc_exit(0);
}

void
reliq_worker_main(Datum main_arg)
{
	Worker		w;
	uint64		generation;
	int64		subscription_id;
	char		appname[NAMEDATALEN];
	ReliqMessage *msgs = NULL;

	memset(&w, 0, sizeof(w));
	MyWorker = &w;
	memcpy(&generation, MyBgworkerEntry->bgw_extra, sizeof(generation));

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	if (!attach_slot(&w, DatumGetInt32(main_arg), generation))
		proc_exit(0);
	subscription_id = w.slot->subscription_id;

	BackgroundWorkerInitializeConnection(reliq_database_name, NULL, 0);

	snprintf(appname, sizeof(appname), "reliq %s #%d",
			 w.slot->subscription_name, w.worker_index);
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
				(errmsg("reliq worker for subscription \"%s\" commits with synchronous_commit = local",
						w.slot->subscription_name),
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

	reliq_batch_init(&w.batch);
	w.batch_cxt = AllocSetContextCreate(TopMemoryContext, "reliq batch",
										ALLOCSET_DEFAULT_SIZES);
	if (!load_subscription(&w, subscription_id))
		proc_exit(0);
	w.stats = reliq_stats_find(w.sub->id, true, w.sub->name);
	MyStats = w.stats;
	w.batch.stats = w.stats;
	w.outbox_pending = true;	/* a worker before us may have left rows */

	for (;;)
	{
		int			n;

		/* everything an iteration allocates goes when it ends */
		MemoryContextSwitchTo(w.batch_cxt);
		MemoryContextReset(w.batch_cxt);
		check_for_news(&w);
		if (w.stopping && w.nheld == 0 &&
			(w.puller == NULL || !reliq_puller_active(w.puller)) &&
			(w.puller == NULL || reliq_puller_queued(w.puller) == 0))
			break;
		if (w.stopping && w.nheld > 0)
			break;

		if (!lease_allows(&w))
		{
			if (w.stopping)
				break;
			wait_latch(RELIQ_POLL_MS * 5);
			continue;
		}
		if (!ensure_connected(&w) || !ensure_attached(&w))
		{
			if (w.stopping)
				break;
			if (GetCurrentTimestamp() < w.retry_at)
				set_state(&w, RELIQ_WORKER_BACKING_OFF);
			wait_latch(Max(Min(ms_until(w.retry_at), RELIQ_POLL_MS * 10), 1));
			continue;
		}
		if (w.nheld > 0)
		{
			hold_step(&w);
			continue;
		}
		if (w.outbox_pending && GetCurrentTimestamp() >= w.next_outbox_try)
			drain_outbox(&w);
		maybe_refresh(&w);
		if (!w.attached)
			continue;

		msgs = palloc(sizeof(ReliqMessage) * w.sub->batch_size);
		n = collect_batch(&w, msgs, w.sub->batch_size);
		if (n > 0)
			apply_collected(&w, msgs, n);
	}
	finish(&w);
}
