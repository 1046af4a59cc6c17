/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  reliq's shared memory: pool worker slots (with their assignments and
 *	  lanes) and per-subscription statistics, where they live and how they
 *	  are locked.  The arithmetic of the statistics is stats_math.c's.
 *
 * Locking rules
 * -------------
 * - ReliqShared->lock (an LWLock of tranche "reliq") guards assignment:
 *   a worker slot's in_use, generation, nassigned and assigned[] (the
 *   subscriptions it serves), and a statistics entry's subscription_id and
 *   subscription_name.  Only the launcher assigns slots and subscriptions
 *   to them (exclusive mode), and bumps the slot's assignment_version
 *   after each change; the launcher, the monitor, a worker taking up a
 *   subscription and reliq.take_over() may assign a statistics entry
 *   (exclusive), and only the launcher frees one.  Readers that need
 *   those fields to be consistent take it in shared mode.
 * - A slot's mutex (spinlock) guards what its worker reports: pid, latch,
 *   state, connected, since, started_at, disconnected_at, and its lanes[]
 *   (what it does on each subscription it serves).  The worker writes
 *   them; anyone may copy them out, one lane per acquisition.
 * - A statistics entry's counters and latency histograms are atomics,
 *   added to by any worker of the subscription without a lock; a reset
 *   writes them (pg_atomic_write_u64), as they may be in use.
 * - A statistics entry's lock (an LWLock of tranche "reliq stats") guards
 *   what takes a loop: the recent samples (a batch adds up to batch_size
 *   of them) and the per-second rate.  Exclusive to write, shared to copy
 *   out.
 * - A statistics entry's mutex (spinlock) guards the rest, a few fields
 *   each: times, last_error, the consumer information from the server,
 *   the lag points, the stream's retention, and the copy of the
 *   subscription's settings the launcher writes.
 * - reliq_stats_snapshot() copies all of it out under the locks and does
 *   the arithmetic (stats_math.c) afterwards.
 * - ReliqShared->mutex guards the launcher's pid and latch.
 * - Order: ReliqShared->lock, then an entry's lock, then at most one
 *   spinlock.  The snapshot copies each subscription's lease from its
 *   control entry (control.c) under ReliqShared->lock, after the entry's
 *   own locks.  A spinlock is held only to copy a few fields, never for a
 *   loop, nor across a call that can fail or wait.
 *
 * What decides whether a subscription may be consumed (its lease, a
 * take-over asked for, a stream that lost its tail, the deaths of workers
 * applying a message alone) is not here: control.c keeps it.
 *
 * Statistics survive worker restarts (they live here, not in the workers)
 * but not a server restart, like those of pg_stat_statements without a
 * dump file.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "reliq.h"
#include "shmem.h"
#include "stats_math.h"

ReliqShared *reliq_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void clear_stats_entry(ReliqSubscriptionStats *entry);

/* The name of an enum value from its table; "unknown" outside it. */
static const char *
name_of(const char *const *names, int count, int value)
{
	return (value >= 0 && value < count) ? names[value] : "unknown";
}

static const char *const worker_state_names[] = {
	[RELIQ_WORKER_STOPPED] = "stopped",
	[RELIQ_WORKER_STARTING] = "starting",
	[RELIQ_WORKER_CONNECTING] = "connecting",
	[RELIQ_WORKER_FETCHING] = "fetching",
	[RELIQ_WORKER_PROCESSING] = "processing",
	[RELIQ_WORKER_FAILING] = "failing",
	[RELIQ_WORKER_DISCONNECTED] = "disconnected",
	[RELIQ_WORKER_BACKING_OFF] = "backing_off",
	[RELIQ_WORKER_FENCED] = "fenced",
	[RELIQ_WORKER_IDLE] = "idle",
	[RELIQ_WORKER_DIVERGED] = "diverged",
};

/*
 * The one spelling of each subscription state, for C and SQL alike
 * (reliq._state_names()).  Where a worker state means the same, the names
 * agree.
 */
static const char *const subscription_state_names[RELIQ_SUBSCRIPTION_STATES] = {
	[RELIQ_SUBSCRIPTION_RUNNING] = "running",
	[RELIQ_SUBSCRIPTION_PAUSED] = "paused",
	[RELIQ_SUBSCRIPTION_STOPPED] = "stopped",
	[RELIQ_SUBSCRIPTION_FAILING] = "failing",
	[RELIQ_SUBSCRIPTION_BACKING_OFF] = "backing_off",
	[RELIQ_SUBSCRIPTION_DISCONNECTED] = "disconnected",
	[RELIQ_SUBSCRIPTION_CONNECTING] = "connecting",
	[RELIQ_SUBSCRIPTION_FENCED] = "fenced",
	[RELIQ_SUBSCRIPTION_ACQUIRING] = "acquiring",
	[RELIQ_SUBSCRIPTION_DIVERGED] = "diverged",
	[RELIQ_SUBSCRIPTION_STANDBY] = "standby",
};

const char *
reliq_subscription_state_name(ReliqSubscriptionState state)
{
	return name_of(subscription_state_names, lengthof(subscription_state_names), state);
}

const char *
reliq_worker_state_name(ReliqWorkerState state)
{
	return name_of(worker_state_names, lengthof(worker_state_names), state);
}

static Size
shmem_size(void)
{
	Size		size = MAXALIGN(sizeof(ReliqShared));

	size = add_size(size, MAXALIGN(mul_size(reliq_max_workers,
											sizeof(ReliqWorkerSlot))));
	/* each worker's assignments and lanes: one per subscription at most */
	size = add_size(size, MAXALIGN(mul_size(mul_size(reliq_max_workers,
													 reliq_max_subscriptions),
											sizeof(ReliqAssignment))));
	size = add_size(size, MAXALIGN(mul_size(mul_size(reliq_max_workers,
													 reliq_max_subscriptions),
											sizeof(ReliqLaneStatus))));
	size = add_size(size, mul_size(reliq_max_subscriptions,
								   sizeof(ReliqSubscriptionStats)));
	return size;
}

static void
shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();

	RequestAddinShmemSpace(shmem_size());
	RequestNamedLWLockTranche("reliq", 1);
	reliq_control_shmem_request();
}

/* At shared memory initialisation, before any concurrent use. */
static void
init_stats_entry(ReliqSubscriptionStats *entry, int tranche)
{
	memset(entry, 0, sizeof(*entry));
	reliq_histogram_init(&entry->batch_duration);
	reliq_histogram_init(&entry->commit_latency);
	pg_atomic_init_u64(&entry->received, 0);
	pg_atomic_init_u64(&entry->processed, 0);
	pg_atomic_init_u64(&entry->failed, 0);
	pg_atomic_init_u64(&entry->retried, 0);
	pg_atomic_init_u64(&entry->dead_lettered, 0);
	pg_atomic_init_u64(&entry->duplicates, 0);
	pg_atomic_init_u64(&entry->batches, 0);
	pg_atomic_init_u64(&entry->slow_path_batches, 0);
	reliq_profile_reset(entry, true);
	entry->dead_letter_backlog = -1;
	LWLockInitialize(&entry->lock, tranche);
	SpinLockInit(&entry->mutex);
}

static void
shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	reliq_shared = ShmemInitStruct("reliq", shmem_size(), &found);
	if (!found)
	{
		char	   *base = (char *) reliq_shared;
		char	   *next;
		Size		per_worker = mul_size(reliq_max_workers, reliq_max_subscriptions);
		ReliqAssignment *assignments;
		ReliqLaneStatus *lanes;
		int			i;

		memset(reliq_shared, 0, sizeof(ReliqShared));
		reliq_shared->lock = &(GetNamedLWLockTranche("reliq"))->lock;
		reliq_shared->stats_tranche = LWLockNewTrancheId();
		SpinLockInit(&reliq_shared->mutex);
		reliq_shared->max_workers = reliq_max_workers;
		reliq_shared->max_subscriptions = reliq_max_subscriptions;
		next = base + MAXALIGN(sizeof(ReliqShared));
		reliq_shared->slots = (ReliqWorkerSlot *) next;
		next += MAXALIGN(mul_size(reliq_max_workers, sizeof(ReliqWorkerSlot)));
		assignments = (ReliqAssignment *) next;
		next += MAXALIGN(mul_size(per_worker, sizeof(ReliqAssignment)));
		lanes = (ReliqLaneStatus *) next;
		next += MAXALIGN(mul_size(per_worker, sizeof(ReliqLaneStatus)));
		reliq_shared->stats = (ReliqSubscriptionStats *) next;
		memset(assignments, 0, mul_size(per_worker, sizeof(ReliqAssignment)));
		memset(lanes, 0, mul_size(per_worker, sizeof(ReliqLaneStatus)));

		for (i = 0; i < reliq_max_workers; i++)
		{
			ReliqWorkerSlot *slot = &reliq_shared->slots[i];

			memset(slot, 0, sizeof(*slot));
			slot->assigned = assignments + (Size) i * reliq_max_subscriptions;
			slot->lanes = lanes + (Size) i * reliq_max_subscriptions;
			pg_atomic_init_u32(&slot->stop_requested, 0);
			pg_atomic_init_u64(&slot->assignment_version, 0);
			SpinLockInit(&slot->mutex);
		}
		for (i = 0; i < reliq_max_subscriptions; i++)
			init_stats_entry(&reliq_shared->stats[i],
							 reliq_shared->stats_tranche);
	}
	reliq_control_shmem_init();
	LWLockRelease(AddinShmemInitLock);

	/* every process names the tranche for itself (pg_stat_activity) */
	LWLockRegisterTranche(reliq_shared->stats_tranche, "reliq stats");
}

void
reliq_shmem_install_hooks(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = shmem_startup;
}

void
reliq_shmem_require(void)
{
	if (reliq_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("reliq shared memory is not initialized"),
				 errhint("Add reliq to shared_preload_libraries in postgresql.conf and restart the server.")));
}

void
reliq_set_launcher(pid_t pid, Latch *latch)
{
	SpinLockAcquire(&reliq_shared->mutex);
	reliq_shared->launcher_pid = pid;
	reliq_shared->launcher_latch = latch;
	SpinLockRelease(&reliq_shared->mutex);
}

/* Wake the launcher so it reconciles now rather than after its naptime. */
void
reliq_wake_launcher(void)
{
	Latch	   *latch;

	if (reliq_shared == NULL)
		return;
	SpinLockAcquire(&reliq_shared->mutex);
	latch = reliq_shared->launcher_latch;
	SpinLockRelease(&reliq_shared->mutex);
	if (latch)
		SetLatch(latch);
}

static ReliqSubscriptionStats *
stats_lookup(int64 subscription_id)
{
	int			i;

	for (i = 0; i < reliq_shared->max_subscriptions; i++)
	{
		if (reliq_shared->stats[i].subscription_id == subscription_id)
			return &reliq_shared->stats[i];
	}
	return NULL;
}

/*
 * Find the statistics entry of a subscription; with create, assign a free
 * one if it has none.  Returns NULL when reliq.max_subscriptions entries
 * are all taken (the caller warns: the subscription runs, uncounted).
 */
ReliqSubscriptionStats *
reliq_stats_find(int64 subscription_id, bool create,
				 const char *subscription_name)
{
	ReliqSubscriptionStats *entry;
	int			i;

	Assert(subscription_id != 0);
	LWLockAcquire(reliq_shared->lock, LW_SHARED);
	entry = stats_lookup(subscription_id);
	LWLockRelease(reliq_shared->lock);
	if (entry != NULL || !create)
		return entry;

	LWLockAcquire(reliq_shared->lock, LW_EXCLUSIVE);
	entry = stats_lookup(subscription_id);
	for (i = 0; entry == NULL && i < reliq_shared->max_subscriptions; i++)
	{
		if (reliq_shared->stats[i].subscription_id == 0)
		{
			entry = &reliq_shared->stats[i];
			clear_stats_entry(entry);
			entry->subscription_id = subscription_id;
			strlcpy(entry->subscription_name, subscription_name, NAMEDATALEN);
		}
	}
	LWLockRelease(reliq_shared->lock);
	return entry;
}

/* Free the entries of subscriptions that no longer exist (launcher only). */
void
reliq_stats_keep_only(const int64 *subscription_ids, int count)
{
	int			i,
				j;

	LWLockAcquire(reliq_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < reliq_shared->max_subscriptions; i++)
	{
		ReliqSubscriptionStats *entry = &reliq_shared->stats[i];
		bool		keep = false;

		if (entry->subscription_id == 0)
			continue;
		for (j = 0; j < count && !keep; j++)
			keep = (subscription_ids[j] == entry->subscription_id);
		if (!keep)
			entry->subscription_id = 0;
	}
	LWLockRelease(reliq_shared->lock);
}

/*
 * Zero the counters; the server-side figures are kept (they are gauges).
 * The entry may be in use: counters are written, not initialised, and the
 * rest is cleared under its locks.
 */
void
reliq_stats_reset(ReliqSubscriptionStats *entry)
{
	TimestampTz now = GetCurrentTimestamp();

	pg_atomic_write_u64(&entry->received, 0);
	pg_atomic_write_u64(&entry->processed, 0);
	pg_atomic_write_u64(&entry->failed, 0);
	pg_atomic_write_u64(&entry->retried, 0);
	pg_atomic_write_u64(&entry->dead_lettered, 0);
	pg_atomic_write_u64(&entry->duplicates, 0);
	pg_atomic_write_u64(&entry->batches, 0);
	pg_atomic_write_u64(&entry->slow_path_batches, 0);
	reliq_profile_reset(entry, false);
	reliq_histogram_reset(&entry->batch_duration);
	reliq_histogram_reset(&entry->commit_latency);

	LWLockAcquire(&entry->lock, LW_EXCLUSIVE);
	entry->batch_samples.count = entry->batch_samples.next = 0;
	entry->latency_samples.count = entry->latency_samples.next = 0;
	memset(&entry->rate, 0, sizeof(entry->rate));
	LWLockRelease(&entry->lock);

	SpinLockAcquire(&entry->mutex);
	entry->last_batch_at = 0;
	entry->last_error_at = 0;
	entry->last_failure_at = 0;
	entry->last_error[0] = '\0';
	entry->stats_reset_at = now;
	memset(&entry->lag, 0, sizeof(entry->lag));
	SpinLockRelease(&entry->mutex);
}

/*
 * A free entry given to another subscription.  A worker of the former one
 * may not have exited yet and still add to it: nothing is initialised
 * again, everything is written under the usual locks.
 */
static void
clear_stats_entry(ReliqSubscriptionStats *entry)
{
	reliq_stats_reset(entry);

	SpinLockAcquire(&entry->mutex);
	entry->have_consumer_info = false;
	entry->num_pending = entry->num_ack_pending = entry->num_redelivered = 0;
	entry->ack_floor = entry->max_ack_pending = 0;
	entry->consumer_info_at = 0;
	entry->retention[0] = '\0';
	entry->catalog_known = entry->enabled = entry->start_refused = false;
	entry->concurrency = entry->batch_size = entry->workers_allowed = 0;
	SpinLockRelease(&entry->mutex);
}

/* The subscription's settings, as the launcher read them. */
void
reliq_stats_set_catalog(ReliqSubscriptionStats *entry, bool enabled,
						int concurrency, int batch_size, int workers_allowed,
						bool start_refused)
{
	SpinLockAcquire(&entry->mutex);
	entry->catalog_known = true;
	entry->enabled = enabled;
	entry->concurrency = concurrency;
	entry->batch_size = batch_size;
	entry->workers_allowed = workers_allowed;
	entry->start_refused = start_refused;
	SpinLockRelease(&entry->mutex);
}

/*
 * One committed batch: its duration, the publish-to-commit latency of
 * each message it applied, and how many it applied (for the rate).
 */
void
reliq_stats_record_batch(ReliqSubscriptionStats *entry, int64 duration_us,
						 const int64 *latencies_us, int nlatencies,
						 int processed)
{
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	if (entry == NULL)
		return;
	reliq_histogram_observe(&entry->batch_duration, duration_us);
	for (i = 0; i < nlatencies; i++)
		reliq_histogram_observe(&entry->commit_latency, latencies_us[i]);

	LWLockAcquire(&entry->lock, LW_EXCLUSIVE);
	reliq_samples_add(&entry->batch_samples, duration_us);
	for (i = 0; i < nlatencies; i++)
		reliq_samples_add(&entry->latency_samples, latencies_us[i]);
	reliq_rate_add(&entry->rate, now, processed);
	LWLockRelease(&entry->lock);
}

/* The consumer as the server last described it. */
void
reliq_stats_set_consumer_info(ReliqSubscriptionStats *entry, int64 pending,
							  int64 ack_pending, int64 redelivered,
							  int64 ack_floor, int64 max_ack_pending)
{
	if (entry == NULL)
		return;
	SpinLockAcquire(&entry->mutex);
	entry->have_consumer_info = true;
	entry->num_pending = pending;
	entry->num_ack_pending = ack_pending;
	entry->num_redelivered = redelivered;
	entry->ack_floor = ack_floor;
	entry->max_ack_pending = max_ack_pending;
	entry->consumer_info_at = GetCurrentTimestamp();
	SpinLockRelease(&entry->mutex);
}

/* At each refresh: the backlog on the server and what has been processed. */
void
reliq_stats_record_lag(ReliqSubscriptionStats *entry, int64 pending)
{
	uint64		processed = pg_atomic_read_u64(&entry->processed);
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&entry->mutex);
	reliq_lag_add(&entry->lag, now, pending, (int64) processed);
	SpinLockRelease(&entry->mutex);
}

static void
set_error(ReliqSubscriptionStats *entry, const char *message, bool failure)
{
	TimestampTz now = GetCurrentTimestamp();

	if (entry == NULL)
		return;
	SpinLockAcquire(&entry->mutex);
	strlcpy(entry->last_error, message, RELIQ_ERROR_LEN);
	entry->last_error_at = now;
	if (failure)
		entry->last_failure_at = now;
	SpinLockRelease(&entry->mutex);
}

/* A problem of the subscription: connection, consumer, settings. */
void
reliq_stats_set_error(ReliqSubscriptionStats *entry, const char *message)
{
	set_error(entry, message, false);
}

/* A message (or a batch) that failed. */
void
reliq_stats_set_failure(ReliqSubscriptionStats *entry, const char *message)
{
	set_error(entry, message, true);
}

void
reliq_slot_set_state(ReliqWorkerSlot *slot, ReliqWorkerState state)
{
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&slot->mutex);
	if (slot->state != state)
	{
		slot->state = state;
		slot->since = now;
	}
	SpinLockRelease(&slot->mutex);
}

void
reliq_slot_set_connected(ReliqWorkerSlot *slot, bool connected)
{
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&slot->mutex);
	if (connected)
		slot->disconnected_at = 0;
	else if (slot->connected || slot->disconnected_at == 0)
		slot->disconnected_at = now;
	slot->connected = connected;
	SpinLockRelease(&slot->mutex);
}

/*
 * Snapshots
 */

/*
 * The state of a subscription in one word, from its settings and its
 * workers and its lease: paused, fenced (another cluster holds the lease),
 * acquiring (this cluster is taking it over), diverged (the stream lost
 * its tail), stopped (wanted but no worker runs), failing, backing_off,
 * disconnected, connecting, running.
 * ("standby" is the view's: a hot standby has no monitor or workers.)
 */
static ReliqSubscriptionState
summarize(ReliqStatsSnapshot *s, const ReliqWorkerSnapshot *workers, int nworkers)
{
	int			failing = 0;
	int			backing_off = 0;
	int			connected = 0;
	int			connecting = 0;
	TimestampTz last_disconnect = 0;
	int			i;

	s->workers = 0;
	s->in_flight = 0;
	for (i = 0; i < nworkers; i++)
	{
		const ReliqWorkerSnapshot *w = &workers[i];

		if (w->subscription_id != s->subscription_id)
			continue;
		s->workers++;
		s->in_flight += w->in_flight;
		if (w->state == RELIQ_WORKER_FAILING)
			failing++;
		if (w->state == RELIQ_WORKER_BACKING_OFF)
			backing_off++;
		if (w->connected)
			connected++;
		else if (w->disconnected_at > last_disconnect)
			last_disconnect = w->disconnected_at;
		if (w->state == RELIQ_WORKER_STARTING ||
			w->state == RELIQ_WORKER_CONNECTING)
			connecting++;
	}
	s->disconnected_since = (s->workers > 0 && connected == 0) ? last_disconnect : 0;

	if (s->catalog_known && !s->enabled)
		return RELIQ_SUBSCRIPTION_PAUSED;
	/* fenced workers hold no connection on purpose: not "disconnected" */
	if (s->lease.state == RELIQ_LEASE_FENCED ||
		s->lease.state == RELIQ_LEASE_ACQUIRING)
		s->disconnected_since = 0;
	if (s->lease.state == RELIQ_LEASE_FENCED)
		return RELIQ_SUBSCRIPTION_FENCED;
	if (s->lease.state == RELIQ_LEASE_ACQUIRING)
		return RELIQ_SUBSCRIPTION_ACQUIRING;
	if (s->diverged)
		return RELIQ_SUBSCRIPTION_DIVERGED;
	if (s->workers == 0)
		return RELIQ_SUBSCRIPTION_STOPPED;
	if (failing > 0)
		return RELIQ_SUBSCRIPTION_FAILING;
	if (backing_off > 0)
		return RELIQ_SUBSCRIPTION_BACKING_OFF;
	if (connected == 0)
		return connecting > 0 ? RELIQ_SUBSCRIPTION_CONNECTING :
			RELIQ_SUBSCRIPTION_DISCONNECTED;
	return RELIQ_SUBSCRIPTION_RUNNING;
}

/*
 * Copy out what running workers do: one snapshot per lane, and one for a
 * worker with no lane; palloc'd in the current memory context; returns
 * how many.
 */
int
reliq_workers_snapshot(ReliqWorkerSnapshot **workers)
{
	int			capacity = 16;
	int			n = 0;
	int			i;

	*workers = palloc0(sizeof(ReliqWorkerSnapshot) * capacity);
	LWLockAcquire(reliq_shared->lock, LW_SHARED);
	for (i = 0; i < reliq_shared->max_workers; i++)
	{
		ReliqWorkerSlot *slot = &reliq_shared->slots[i];
		ReliqWorkerSnapshot worker;
		int			lanes = 0;
		int			j;

		if (!slot->in_use)
			continue;
		memset(&worker, 0, sizeof(worker));
		worker.worker_index = i;
		worker.slot = i;
		SpinLockAcquire(&slot->mutex);
		worker.pid = slot->pid;
		worker.state = slot->state;
		worker.connected = slot->connected;
		worker.since = slot->since;
		worker.started_at = slot->started_at;
		worker.disconnected_at = slot->disconnected_at;
		SpinLockRelease(&slot->mutex);
		if (worker.pid == 0)
			continue;

		for (j = 0; j <= reliq_shared->max_subscriptions; j++)
		{
			ReliqWorkerSnapshot *w;

			if (n == capacity)
			{
				capacity *= 2;
				*workers = repalloc(*workers, sizeof(ReliqWorkerSnapshot) * capacity);
			}
			w = &(*workers)[n];
			*w = worker;
			if (j < reliq_shared->max_subscriptions)
			{
				ReliqLaneStatus *lane = &slot->lanes[j];

				SpinLockAcquire(&slot->mutex);
				w->subscription_id = lane->subscription_id;
				strlcpy(w->subscription_name, lane->subscription_name, NAMEDATALEN);
				w->lane_index = lane->lane_index;
				w->state = lane->state;
				w->since = lane->since;
				w->batch_size = lane->batch_size;
				w->in_flight = lane->in_flight;
				SpinLockRelease(&slot->mutex);
				if (w->subscription_id == 0)
					continue;
				lanes++;
				n++;
			}
			else if (lanes == 0)
			{
				/* a worker with nothing to do shows once, idle */
				if (worker.state != RELIQ_WORKER_STARTING &&
					worker.state != RELIQ_WORKER_CONNECTING)
					w->state = RELIQ_WORKER_IDLE;
				n++;
			}
		}
	}
	LWLockRelease(reliq_shared->lock);
	return n;
}

/*
 * Copy out every subscription's figures and the summary of its workers.
 * Locks are held only while copying.  Returns the number of snapshots,
 * palloc'd in the current memory context.
 */
int
reliq_stats_snapshot(ReliqStatsSnapshot **snapshots)
{
	ReliqWorkerSnapshot *workers;
	int			nworkers;
	int			n = 0;
	int			i;
	TimestampTz now = GetCurrentTimestamp();
	ReliqSamples *batch_samples = palloc(sizeof(ReliqSamples));
	ReliqSamples *latency_samples = palloc(sizeof(ReliqSamples));
	ReliqRate  *rate = palloc(sizeof(ReliqRate));
	ReliqLagPoints lag;

	nworkers = reliq_workers_snapshot(&workers);
	*snapshots = palloc0(sizeof(ReliqStatsSnapshot) *
						 Max(reliq_shared->max_subscriptions, 1));

	LWLockAcquire(reliq_shared->lock, LW_SHARED);
	for (i = 0; i < reliq_shared->max_subscriptions; i++)
	{
		ReliqSubscriptionStats *entry = &reliq_shared->stats[i];
		ReliqStatsSnapshot *s = &(*snapshots)[n];

		if (entry->subscription_id == 0)
			continue;
		s->subscription_id = entry->subscription_id;
		strlcpy(s->subscription_name, entry->subscription_name, NAMEDATALEN);
		s->received = pg_atomic_read_u64(&entry->received);
		s->processed = pg_atomic_read_u64(&entry->processed);
		s->failed = pg_atomic_read_u64(&entry->failed);
		s->retried = pg_atomic_read_u64(&entry->retried);
		s->dead_lettered = pg_atomic_read_u64(&entry->dead_lettered);
		s->duplicates = pg_atomic_read_u64(&entry->duplicates);
		s->batches = pg_atomic_read_u64(&entry->batches);
		s->slow_path_batches = pg_atomic_read_u64(&entry->slow_path_batches);
		reliq_histogram_copy(&entry->batch_duration, &s->batch_duration);
		reliq_histogram_copy(&entry->commit_latency, &s->commit_latency);

		LWLockAcquire(&entry->lock, LW_SHARED);
		*batch_samples = entry->batch_samples;
		*latency_samples = entry->latency_samples;
		*rate = entry->rate;
		LWLockRelease(&entry->lock);

		SpinLockAcquire(&entry->mutex);
		s->catalog_known = entry->catalog_known;
		s->enabled = entry->enabled;
		s->concurrency = entry->concurrency;
		s->batch_size = entry->batch_size;
		s->workers_allowed = entry->workers_allowed;
		s->start_refused = entry->start_refused;
		s->last_batch_at = entry->last_batch_at;
		s->last_error_at = entry->last_error_at;
		s->last_failure_at = entry->last_failure_at;
		s->stats_reset_at = entry->stats_reset_at;
		memcpy(s->last_error, entry->last_error, RELIQ_ERROR_LEN);
		s->have_consumer_info = entry->have_consumer_info;
		s->pending = entry->num_pending;
		s->ack_pending = entry->num_ack_pending;
		s->redelivered = entry->num_redelivered;
		s->ack_floor = entry->ack_floor;
		s->max_ack_pending = entry->max_ack_pending;
		s->consumer_info_at = entry->consumer_info_at;
		memcpy(s->retention, entry->retention, sizeof(s->retention));
		lag = entry->lag;
		s->dead_letter_backlog = entry->dead_letter_backlog;
		SpinLockRelease(&entry->mutex);
		reliq_control_copy(s->subscription_id, &s->lease, &s->diverged);

		reliq_samples_percentiles(batch_samples, &s->batch_p50_us, &s->batch_p99_us);
		reliq_samples_percentiles(latency_samples, &s->latency_p50_us,
								  &s->latency_p99_us);
		s->lag_growing = reliq_lag_growing(&lag, now, &s->lag_from, &s->lag_to);
		s->rate = reliq_rate_per_second(rate, now);
		s->state = summarize(s, workers, nworkers);
		n++;
	}
	LWLockRelease(reliq_shared->lock);
	pfree(workers);
	pfree(batch_samples);
	pfree(latency_samples);
	pfree(rate);
	return n;
}

/*
 * A worker takes up a lane: a free ReliqLaneStatus of its slot, where it
 * shows what it does on that subscription.  NULL if none is free (cannot
 * happen: a worker serves each subscription at most once).
 */
ReliqLaneStatus *
reliq_lane_open(ReliqWorkerSlot *slot, int64 subscription_id,
				const char *subscription_name, int lane_index)
{
	int			i;

	for (i = 0; i < reliq_shared->max_subscriptions; i++)
	{
		ReliqLaneStatus *lane = &slot->lanes[i];
		bool		taken;

		SpinLockAcquire(&slot->mutex);
		taken = (lane->subscription_id == 0);
		if (taken)
		{
			lane->subscription_id = subscription_id;
			strlcpy(lane->subscription_name, subscription_name, NAMEDATALEN);
			lane->lane_index = lane_index;
			lane->state = RELIQ_WORKER_CONNECTING;
			lane->since = GetCurrentTimestamp();
			lane->batch_size = 0;
			lane->in_flight = 0;
		}
		SpinLockRelease(&slot->mutex);
		if (taken)
			return lane;
	}
	return NULL;
}

void
reliq_lane_close(ReliqWorkerSlot *slot, ReliqLaneStatus *lane)
{
	SpinLockAcquire(&slot->mutex);
	lane->subscription_id = 0;
	lane->in_flight = 0;
	SpinLockRelease(&slot->mutex);
}

void
reliq_lane_set_state(ReliqWorkerSlot *slot, ReliqLaneStatus *lane,
					 ReliqWorkerState state)
{
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&slot->mutex);
	if (lane->state != state)
	{
		lane->state = state;
		lane->since = now;
	}
	SpinLockRelease(&slot->mutex);
}

void
reliq_lane_set_progress(ReliqWorkerSlot *slot, ReliqLaneStatus *lane,
						int batch_size, int in_flight)
{
	SpinLockAcquire(&slot->mutex);
	lane->batch_size = batch_size;
	lane->in_flight = in_flight;
	SpinLockRelease(&slot->mutex);
}

/*
 * Leases
 */

static const char *const lease_state_names[] = {
	[RELIQ_LEASE_UNKNOWN] = "unknown",
	[RELIQ_LEASE_OWNED] = "owned",
	[RELIQ_LEASE_ACQUIRING] = "acquiring",
	[RELIQ_LEASE_FENCED] = "fenced",
	[RELIQ_LEASE_OFF] = "off",
};

const char *
reliq_lease_state_name(ReliqLeaseState state)
{
	return name_of(lease_state_names, lengthof(lease_state_names), state);
}

void
reliq_stats_set_retention(ReliqSubscriptionStats *entry, const char *retention)
{
	SpinLockAcquire(&entry->mutex);
	strlcpy(entry->retention, retention, sizeof(entry->retention));
	SpinLockRelease(&entry->mutex);
}

/*
 * The stream lost its tail, with the figures, in last_error: written here
 * once for the monitor and the workers alike.
 */
void
reliq_stats_note_divergence(ReliqSubscriptionStats *entry,
							ReliqControl *control, const char *subscription,
							const char *stream, int64 stream_last_seq,
							int64 applied_seq)
{
	char		message[RELIQ_ERROR_LEN];

	snprintf(message, sizeof(message),
			 "diverged: stream %s lost its tail: its last sequence is " INT64_FORMAT
			 ", this database applied up to " INT64_FORMAT
			 "; nothing is consumed until SELECT reliq.accept_stream_loss('%s')",
			 stream, stream_last_seq, applied_seq, subscription);
	if (control != NULL)
		reliq_control_set_diverged(control, true);
	if (entry != NULL)
		reliq_stats_set_error(entry, message);
}
