/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  reliq's shared memory: worker slots and per-subscription statistics.
 *
 * Locking rules
 * -------------
 * - ReliqShared->lock (an LWLock of tranche "reliq") guards assignment:
 *   a worker slot's in_use, generation, subscription_id, worker_index and
 *   subscription_name, and a statistics entry's subscription_id and
 *   subscription_name.  Only the launcher assigns slots (exclusive mode);
 *   the launcher and the first worker of a subscription may assign a
 *   statistics entry (exclusive).  Readers that need those fields to be
 *   consistent take it in shared mode.
 * - A slot's mutex (spinlock) guards what its worker reports: pid, latch,
 *   state, connected, since, started_at, batch_size, in_flight.  The worker
 *   writes them; anyone may copy them out.
 * - A statistics entry's counters are atomics, added to by any worker of
 *   the subscription without a lock.  Its mutex guards the rest: times,
 *   last_error and the consumer information from the server.
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
init_stats_entry(ReliqSubscriptionStats *entry)
{
	memset(entry, 0, sizeof(*entry));
	pg_atomic_init_u64(&entry->received, 0);
	pg_atomic_init_u64(&entry->processed, 0);
	pg_atomic_init_u64(&entry->failed, 0);
	pg_atomic_init_u64(&entry->retried, 0);
	pg_atomic_init_u64(&entry->dead_lettered, 0);
	pg_atomic_init_u64(&entry->duplicates, 0);
	pg_atomic_init_u64(&entry->batches, 0);
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
		int			i;

		memset(reliq_shared, 0, sizeof(ReliqShared));
		reliq_shared->lock = &(GetNamedLWLockTranche("reliq"))->lock;
		SpinLockInit(&reliq_shared->mutex);
		reliq_shared->max_workers = reliq_max_workers;
		reliq_shared->max_subscriptions = reliq_max_subscriptions;
		reliq_shared->slots = (ReliqWorkerSlot *)
			(base + MAXALIGN(sizeof(ReliqShared)));
		reliq_shared->stats = (ReliqSubscriptionStats *)
			((char *) reliq_shared->slots +
			 MAXALIGN(mul_size(reliq_max_workers, sizeof(ReliqWorkerSlot))));

		for (i = 0; i < reliq_max_workers; i++)
		{
			ReliqWorkerSlot *slot = &reliq_shared->slots[i];

			memset(slot, 0, sizeof(*slot));
			pg_atomic_init_u32(&slot->stop_requested, 0);
			pg_atomic_init_u64(&slot->config_version, 0);
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

	SpinLockAcquire(&entry->mutex);
	entry->last_batch_at = 0;
	entry->last_error_at = 0;
	entry->last_error[0] = '\0';
	entry->stats_reset_at = GetCurrentTimestamp();
	SpinLockRelease(&entry->mutex);
}

void
reliq_stats_set_error(ReliqSubscriptionStats *entry, const char *message)
{
	TimestampTz now = GetCurrentTimestamp();

	if (entry == NULL)
		return;
	SpinLockAcquire(&entry->mutex);
	strlcpy(entry->last_error, message, RELIQ_ERROR_LEN);
	entry->last_error_at = now;
	SpinLockRelease(&entry->mutex);
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
	SpinLockAcquire(&slot->mutex);
	slot->connected = connected;
	SpinLockRelease(&slot->mutex);
}

void
reliq_slot_set_progress(ReliqWorkerSlot *slot, int batch_size, int in_flight)
{
	SpinLockAcquire(&slot->mutex);
	slot->batch_size = batch_size;
	slot->in_flight = in_flight;
	SpinLockRelease(&slot->mutex);
}
