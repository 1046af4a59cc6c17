/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  reliq's shared memory: pool worker slots (with their assignments and
 *	  lanes) and per-subscription statistics.
 *
 * Locking rules
 * -------------
 * - ReliqShared->lock (an LWLock of tranche "reliq") guards assignment:
 *   a worker slot's in_use, generation, nassigned and assigned[] (the
 *   subscriptions it serves), and a statistics entry's subscription_id and
 *   subscription_name.  Only the launcher assigns slots and subscriptions
 *   to them (exclusive mode), and bumps the slot's assignment_version
 *   after each change; the launcher and the first worker of a subscription
 *   may assign a statistics entry (exclusive).  Readers that need those
 *   fields to be consistent take it in shared mode.
 * - A slot's mutex (spinlock) guards what its worker reports: pid, latch,
 *   state, connected, since, started_at, disconnected_at, and its lanes[]
 *   (what it does on each subscription it serves).  The worker writes
 *   them; anyone may copy them out, one lane per acquisition.
 * - A statistics entry's counters and latency histograms are atomics,
 *   added to by any worker of the subscription without a lock.  Its mutex
 *   guards the rest: times, last_error, the consumer information from the
 *   server, the recent samples (p50/p99), the per-second rate, the lag
 *   points, and the copy of the subscription's settings the launcher
 *   writes, and the lease the monitor keeps (lease.c).
 *   reliq_stats_snapshot() copies all of it out under the lock and computes
 *   percentiles afterwards.  take_over_requested is an atomic flag that
 *   reliq.take_over() sets and the monitor clears.
 * - ReliqShared->mutex guards the launcher's pid and latch.
 * - Order: the LWLock before any spinlock; never two spinlocks at once;
 *   a spinlock is held only to copy a few fields, never across a call that
 *   can fail or wait.
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

ReliqShared *reliq_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static const char *const worker_state_names[] = {
	[RELIQ_WORKER_STOPPED] = "stopped",
	[RELIQ_WORKER_STARTING] = "starting",
	[RELIQ_WORKER_CONNECTING] = "connecting",
	[RELIQ_WORKER_FETCHING] = "fetching",
	[RELIQ_WORKER_PROCESSING] = "processing",
	[RELIQ_WORKER_FAILING] = "failing",
	[RELIQ_WORKER_DISCONNECTED] = "disconnected",
	[RELIQ_WORKER_STOPPING] = "stopping",
	[RELIQ_WORKER_BACKING_OFF] = "backing_off",
	[RELIQ_WORKER_FENCED] = "fenced",
	[RELIQ_WORKER_IDLE] = "idle",
};

/* Upper bounds of the latency histogram buckets, in seconds. */
const double reliq_histogram_bounds[RELIQ_HISTOGRAM_BOUNDS] = {
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10
};

const char *
reliq_worker_state_name(ReliqWorkerState state)
{
	if (state < 0 || state >= lengthof(worker_state_names))
		return "unknown";
	return worker_state_names[state];
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
}

static void
init_histogram(ReliqHistogram *histogram)
{
	int			i;

	for (i = 0; i <= RELIQ_HISTOGRAM_BOUNDS; i++)
		pg_atomic_init_u64(&histogram->buckets[i], 0);
	pg_atomic_init_u64(&histogram->count, 0);
	pg_atomic_init_u64(&histogram->sum_us, 0);
}

/* Zero a histogram that workers may be adding to (init is for before use). */
static void
reset_histogram(ReliqHistogram *histogram)
{
	int			i;

	for (i = 0; i <= RELIQ_HISTOGRAM_BOUNDS; i++)
		pg_atomic_write_u64(&histogram->buckets[i], 0);
	pg_atomic_write_u64(&histogram->count, 0);
	pg_atomic_write_u64(&histogram->sum_us, 0);
}

static void
init_stats_entry(ReliqSubscriptionStats *entry)
{
	memset(entry, 0, sizeof(*entry));
	init_histogram(&entry->batch_duration);
	init_histogram(&entry->commit_latency);
	pg_atomic_init_u64(&entry->received, 0);
	pg_atomic_init_u64(&entry->processed, 0);
	pg_atomic_init_u64(&entry->failed, 0);
	pg_atomic_init_u64(&entry->retried, 0);
	pg_atomic_init_u64(&entry->dead_lettered, 0);
	pg_atomic_init_u64(&entry->duplicates, 0);
	pg_atomic_init_u64(&entry->batches, 0);
	pg_atomic_init_u64(&entry->slow_path_batches, 0);
	pg_atomic_init_u32(&entry->take_over_requested, 0);
	entry->dead_letter_backlog = -1;
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
			init_stats_entry(&reliq_shared->stats[i]);
	}
	LWLockRelease(AddinShmemInitLock);
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
			init_stats_entry(entry);
			entry->subscription_id = subscription_id;
			strlcpy(entry->subscription_name, subscription_name, NAMEDATALEN);
			entry->stats_reset_at = GetCurrentTimestamp();
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

/* Zero the counters; the server-side figures are kept (they are gauges). */
void
reliq_stats_reset(ReliqSubscriptionStats *entry)
{
	pg_atomic_write_u64(&entry->received, 0);
	pg_atomic_write_u64(&entry->processed, 0);
	pg_atomic_write_u64(&entry->failed, 0);
	pg_atomic_write_u64(&entry->retried, 0);
	pg_atomic_write_u64(&entry->dead_lettered, 0);
	pg_atomic_write_u64(&entry->duplicates, 0);
	pg_atomic_write_u64(&entry->batches, 0);
	pg_atomic_write_u64(&entry->slow_path_batches, 0);
	reset_histogram(&entry->batch_duration);
	reset_histogram(&entry->commit_latency);

	SpinLockAcquire(&entry->mutex);
	entry->last_batch_at = 0;
	entry->last_error_at = 0;
	entry->last_failure_at = 0;
	entry->last_error[0] = '\0';
	entry->stats_reset_at = GetCurrentTimestamp();
	entry->batch_samples.count = entry->batch_samples.next = 0;
	entry->latency_samples.count = entry->latency_samples.next = 0;
	memset(entry->rate_second, 0, sizeof(entry->rate_second));
	memset(entry->rate_count, 0, sizeof(entry->rate_count));
	entry->lag_next = 0;
	memset(entry->lag_at, 0, sizeof(entry->lag_at));
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

static void
observe(ReliqHistogram *histogram, int64 value_us)
{
	int			i = 0;

	while (i < RELIQ_HISTOGRAM_BOUNDS &&
		   (double) value_us > reliq_histogram_bounds[i] * 1000000.0)
		i++;
	pg_atomic_fetch_add_u64(&histogram->buckets[i], 1);
	pg_atomic_fetch_add_u64(&histogram->count, 1);
	pg_atomic_fetch_add_u64(&histogram->sum_us, (uint64) Max(value_us, 0));
}

static void
add_sample(ReliqSamples *samples, int64 value_us)
{
	samples->values_us[samples->next] = value_us;
	samples->next = (samples->next + 1) % RELIQ_SAMPLES;
	if (samples->count < RELIQ_SAMPLES)
		samples->count++;
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
	int64		second = (int64) (GetCurrentTimestamp() / USECS_PER_SEC);
	int			slot = (int) (second % RELIQ_RATE_SECONDS);
	int			i;

	if (entry == NULL)
		return;
	observe(&entry->batch_duration, duration_us);
	for (i = 0; i < nlatencies; i++)
		observe(&entry->commit_latency, latencies_us[i]);

	SpinLockAcquire(&entry->mutex);
	add_sample(&entry->batch_samples, duration_us);
	for (i = 0; i < nlatencies; i++)
		add_sample(&entry->latency_samples, latencies_us[i]);
	if (entry->rate_second[slot] != second)
	{
		entry->rate_second[slot] = second;
		entry->rate_count[slot] = 0;
	}
	entry->rate_count[slot] += processed;
	SpinLockRelease(&entry->mutex);
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

	SpinLockAcquire(&entry->mutex);
	entry->lag_at[entry->lag_next] = GetCurrentTimestamp();
	entry->lag_pending[entry->lag_next] = pending;
	entry->lag_processed[entry->lag_next] = (int64) processed;
	entry->lag_next = (entry->lag_next + 1) % RELIQ_LAG_POINTS;
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

static int
compare_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/* Nearest-rank percentile of the samples; -1 when there are none. */
static void
percentiles(const ReliqSamples *samples, int64 *p50, int64 *p99)
{
	int64		sorted[RELIQ_SAMPLES];
	int			n = samples->count;

	if (n == 0)
	{
		*p50 = *p99 = -1;
		return;
	}
	memcpy(sorted, samples->values_us, sizeof(int64) * n);
	qsort(sorted, n, sizeof(int64), compare_int64);
	*p50 = sorted[(n * 50 + 99) / 100 - 1];
	*p99 = sorted[(n * 99 + 99) / 100 - 1];
}

/*
 * The state of a subscription in one word, from its settings and its
 * workers and its lease: paused, fenced (another cluster holds the lease),
 * acquiring (this cluster is taking it over), stopped (wanted but no worker
 * runs), failing, backing_off, disconnected, connecting, running.
 * ("standby" is the view's: a hot standby has no monitor or workers.)
 */
static const char *
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
		return "paused";
	/* fenced workers hold no connection on purpose: not "disconnected" */
	if (s->lease.state == RELIQ_LEASE_FENCED ||
		s->lease.state == RELIQ_LEASE_ACQUIRING)
		s->disconnected_since = 0;
	if (s->lease.state == RELIQ_LEASE_FENCED)
		return "fenced";
	if (s->lease.state == RELIQ_LEASE_ACQUIRING)
		return "acquiring";
	if (s->workers == 0)
		return NULL;
	if (failing > 0)
		return "failing";
	if (backing_off > 0)
		return "backing_off";
	if (connected == 0)
		return connecting > 0 ? "connecting" : "disconnected";
	return "running";
}

static void
copy_histogram(const ReliqHistogram *h, uint64 *buckets, uint64 *count,
			   uint64 *sum_us)
{
	int			i;

	for (i = 0; i <= RELIQ_HISTOGRAM_BOUNDS; i++)
		buckets[i] = pg_atomic_read_u64((pg_atomic_uint64 *) &h->buckets[i]);
	*count = pg_atomic_read_u64((pg_atomic_uint64 *) &h->count);
	*sum_us = pg_atomic_read_u64((pg_atomic_uint64 *) &h->sum_us);
}

/*
 * Lag grows while nothing is processed: over the refreshes of the last
 * minute, pending only went up and processed did not move.
 */
typedef struct LagPoints
{
	TimestampTz at[RELIQ_LAG_POINTS];
	int64		pending[RELIQ_LAG_POINTS];
	int64		processed[RELIQ_LAG_POINTS];
	int			next;
} LagPoints;

static void
lag_trend(const LagPoints *entry, ReliqStatsSnapshot *s, TimestampTz now)
{
	int			i;
	int			npoints = 0;
	int64		first_pending = 0;
	int64		last_pending = 0;
	int64		first_processed = 0;
	int64		last_processed = 0;
	bool		rising = true;

	for (i = 0; i < RELIQ_LAG_POINTS; i++)
	{
		int			k = (entry->next + i) % RELIQ_LAG_POINTS;

		if (entry->at[k] == 0 ||
			TimestampDifferenceExceeds(entry->at[k], now, 60 * 1000))
			continue;
		if (npoints == 0)
		{
			first_pending = entry->pending[k];
			first_processed = entry->processed[k];
		}
		else if (entry->pending[k] <= last_pending)
			rising = false;
		last_pending = entry->pending[k];
		last_processed = entry->processed[k];
		npoints++;
	}
	s->lag_growing = npoints >= 2 && rising && last_processed == first_processed;
	s->lag_from = first_pending;
	s->lag_to = last_pending;
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
				w->state = (worker.state == RELIQ_WORKER_STARTING ||
							worker.state == RELIQ_WORKER_CONNECTING) ?
					worker.state : RELIQ_WORKER_IDLE;
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
	int64		second = (int64) (now / USECS_PER_SEC);
	ReliqSamples *batch_samples = palloc(sizeof(ReliqSamples));
	ReliqSamples *latency_samples = palloc(sizeof(ReliqSamples));
	LagPoints	lag;

	nworkers = reliq_workers_snapshot(&workers);
	*snapshots = palloc0(sizeof(ReliqStatsSnapshot) *
						 Max(reliq_shared->max_subscriptions, 1));

	LWLockAcquire(reliq_shared->lock, LW_SHARED);
	for (i = 0; i < reliq_shared->max_subscriptions; i++)
	{
		ReliqSubscriptionStats *entry = &reliq_shared->stats[i];
		ReliqStatsSnapshot *s = &(*snapshots)[n];
		int64		recent = 0;
		int			j;

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
		copy_histogram(&entry->batch_duration, s->batch_hist,
					   &s->batch_count, &s->batch_sum_us);
		copy_histogram(&entry->commit_latency, s->latency_hist,
					   &s->latency_count, &s->latency_sum_us);

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
		strlcpy(s->last_error, entry->last_error, RELIQ_ERROR_LEN);
		s->have_consumer_info = entry->have_consumer_info;
		s->pending = entry->num_pending;
		s->ack_pending = entry->num_ack_pending;
		s->redelivered = entry->num_redelivered;
		s->ack_floor = entry->ack_floor;
		s->max_ack_pending = entry->max_ack_pending;
		s->consumer_info_at = entry->consumer_info_at;
		s->lease = entry->lease;
		memcpy(s->retention, entry->retention, sizeof(s->retention));
		for (j = 0; j < RELIQ_RATE_SECONDS; j++)
			if (entry->rate_second[j] > second - RELIQ_RATE_SECONDS &&
				entry->rate_second[j] <= second)
				recent += entry->rate_count[j];
		*batch_samples = entry->batch_samples;
		*latency_samples = entry->latency_samples;
		memcpy(lag.at, entry->lag_at, sizeof(lag.at));
		memcpy(lag.pending, entry->lag_pending, sizeof(lag.pending));
		memcpy(lag.processed, entry->lag_processed, sizeof(lag.processed));
		lag.next = entry->lag_next;
		s->dead_letter_backlog = entry->dead_letter_backlog;
		SpinLockRelease(&entry->mutex);

		percentiles(batch_samples, &s->batch_p50_us, &s->batch_p99_us);
		percentiles(latency_samples, &s->latency_p50_us, &s->latency_p99_us);
		lag_trend(&lag, s, now);
		s->rate = (double) recent / RELIQ_RATE_SECONDS;
		s->state = summarize(s, workers, nworkers);
		n++;
	}
	LWLockRelease(reliq_shared->lock);
	pfree(workers);
	pfree(batch_samples);
	pfree(latency_samples);
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
	if (state < 0 || state >= lengthof(lease_state_names))
		return "unknown";
	return lease_state_names[state];
}

/*
 * A worker died (FATAL: terminated, cancelled out) while applying the
 * message `seq` in a transaction of its own.  Recorded for the
 * delivery-limit rule of batch.c; a crash restart forgets it.
 */
void
reliq_stats_note_death(ReliqSubscriptionStats *entry, int64 seq)
{
	int			i;

	SpinLockAcquire(&entry->mutex);
	for (i = 0; i < RELIQ_DEATHS; i++)
		if (entry->death_seq[i] == seq)
			break;
	if (i == RELIQ_DEATHS)
	{
		i = entry->death_next;
		entry->death_next = (entry->death_next + 1) % RELIQ_DEATHS;
		entry->death_seq[i] = seq;
		entry->death_count[i] = 0;
	}
	entry->death_count[i]++;
	SpinLockRelease(&entry->mutex);
}

int
reliq_stats_deaths(ReliqSubscriptionStats *entry, int64 seq)
{
	int			count = 0;
	int			i;

	SpinLockAcquire(&entry->mutex);
	for (i = 0; i < RELIQ_DEATHS; i++)
		if (entry->death_seq[i] == seq)
			count = entry->death_count[i];
	SpinLockRelease(&entry->mutex);
	return count;
}

void
reliq_stats_set_retention(ReliqSubscriptionStats *entry, const char *retention)
{
	SpinLockAcquire(&entry->mutex);
	strlcpy(entry->retention, retention, sizeof(entry->retention));
	SpinLockRelease(&entry->mutex);
}

/* The monitor publishes what it holds. */
void
reliq_lease_publish(ReliqSubscriptionStats *entry, const ReliqLeaseView *lease)
{
	SpinLockAcquire(&entry->mutex);
	entry->lease = *lease;
	SpinLockRelease(&entry->mutex);
}

void
reliq_lease_read(ReliqSubscriptionStats *entry, ReliqLeaseView *lease)
{
	SpinLockAcquire(&entry->mutex);
	*lease = entry->lease;
	SpinLockRelease(&entry->mutex);
}

/* May this cluster consume, and acknowledge, now? */
bool
reliq_lease_usable(const ReliqLeaseView *lease, TimestampTz now)
{
	return lease->state == RELIQ_LEASE_OFF ||
		(lease->state == RELIQ_LEASE_OWNED && now < lease->valid_until);
}
