/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The reliq launcher: one static background worker that reconciles
 *	  reliq.subscription with the dynamic workers actually running.
 *
 * Every reliq.naptime, and whenever a change to reliq.subscription commits
 * (a statement trigger wakes it) or a worker starts or exits, the launcher:
 *
 *	 - wants `concurrency` workers for each enabled subscription, in order
 *	   of subscription id, up to reliq.max_workers in all (and warns, once
 *	   per change, about the ones it cannot start);
 *	 - asks workers that are no longer wanted to stop (they finish their
 *	   batch and outstanding pull first) and terminates those that have not
 *	   stopped after 10 x reliq.fetch_timeout;
 *	 - tells running workers the subscription's catalog version, so they
 *	   reload changed settings without a restart;
 *	 - restarts workers that exited unexpectedly, waiting longer after each
 *	   quick exit (reliq.naptime doubled, up to 32 x);
 *	 - keeps a statistics entry per subscription and drops the bookkeeping
 *	   rows of dropped subscriptions.
 *
 * Without the extension in reliq.database_name it idles, and looks again
 * every naptime.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/trigger.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "launcher.h"
#include "reliq.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(reliq_subscription_changed);

/* A worker that exits within this time of starting counts as a quick exit. */
#define RELIQ_QUICK_EXIT_MS 10000

/* What the launcher alone knows of each slot. */
typedef struct LauncherSlot
{
	BackgroundWorkerHandle *handle;
	TimestampTz started_at;
	TimestampTz stop_requested_at;	/* 0: not asked to stop */
	TimestampTz restart_at;		/* earliest restart after an exit */
	int			quick_exits;
	bool		exited;
	bool		orphan;			/* started by an earlier launcher: stop it */
} LauncherSlot;

static LauncherSlot *launcher_slots = NULL;
/* A worker could not be registered this round (max_worker_processes). */
static bool start_refused = false;
static int	last_shortfall = 0;
static int	last_subscription_count = -1;
static int64 last_subscription_ids_sum = 0;

static void
clear_launcher(int code, Datum arg)
{
	reliq_set_launcher(0, NULL);
}

void
reliq_launcher_register(void)
{
	reliq_register_static_worker("reliq launcher", "reliq_launcher_main", true, 5);
}

/*
 * Statement trigger on reliq.subscription: wake the launcher when the
 * change commits, not before (it would not see it yet).
 */
static bool wake_registered = false;
static bool wake_at_commit = false;

static void
wake_launcher_at_commit(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && wake_at_commit)
		reliq_wake_launcher();
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT)
		wake_at_commit = false;
}

Datum
reliq_subscription_changed(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("reliq._subscription_changed() must be called as a trigger")));
	if (!wake_registered)
	{
		RegisterXactCallback(wake_launcher_at_commit, NULL);
		wake_registered = true;
	}
	wake_at_commit = true;
	return PointerGetDatum(NULL);
}

static void
set_slot_config_version(ReliqWorkerSlot *slot, int64 version)
{
	if (pg_atomic_read_u64(&slot->config_version) != (uint64) version)
	{
		Latch	   *latch;

		pg_atomic_write_u64(&slot->config_version, (uint64) version);
		SpinLockAcquire(&slot->mutex);
		latch = slot->latch;
		SpinLockRelease(&slot->mutex);
		if (latch)
			SetLatch(latch);
	}
}

static bool
start_worker(int index, const ReliqSubscriptionSummary *sub, int worker_index)
{
	ReliqWorkerSlot *slot = &reliq_shared->slots[index];
	LauncherSlot *ls = &launcher_slots[index];
	BackgroundWorker bgw;
	uint64		generation;

	LWLockAcquire(reliq_shared->lock, LW_EXCLUSIVE);
	slot->in_use = true;
	slot->generation++;
	generation = slot->generation;
	slot->subscription_id = sub->id;
	slot->worker_index = worker_index;
	strlcpy(slot->subscription_name, sub->name, NAMEDATALEN);
	pg_atomic_write_u32(&slot->stop_requested, 0);
	pg_atomic_write_u64(&slot->config_version, (uint64) sub->version);
	SpinLockAcquire(&slot->mutex);
	slot->pid = 0;
	slot->latch = NULL;
	slot->state = RELIQ_WORKER_STARTING;
	slot->since = GetCurrentTimestamp();
	slot->connected = false;
	slot->batch_size = 0;
	slot->in_flight = 0;
	SpinLockRelease(&slot->mutex);
	LWLockRelease(reliq_shared->lock);

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(bgw.bgw_library_name, RELIQ_LIBRARY_NAME, BGW_MAXLEN);
	strlcpy(bgw.bgw_function_name, "reliq_worker_main", BGW_MAXLEN);
	snprintf(bgw.bgw_name, BGW_MAXLEN, "reliq worker %s #%d", sub->name, worker_index);
	strlcpy(bgw.bgw_type, "reliq worker", BGW_MAXLEN);
	bgw.bgw_main_arg = Int32GetDatum(index);
	memcpy(bgw.bgw_extra, &generation, sizeof(generation));
	bgw.bgw_notify_pid = MyProcPid;

	memset(ls, 0, sizeof(*ls));
	if (!RegisterDynamicBackgroundWorker(&bgw, &ls->handle))
	{
		LWLockAcquire(reliq_shared->lock, LW_EXCLUSIVE);
		slot->in_use = false;
		slot->state = RELIQ_WORKER_STOPPED;
		LWLockRelease(reliq_shared->lock);
		ls->handle = NULL;
		return false;
	}
	ls->started_at = GetCurrentTimestamp();
	return true;
}

static void
free_slot(int index)
{
	ReliqWorkerSlot *slot = &reliq_shared->slots[index];
	LauncherSlot *ls = &launcher_slots[index];

	LWLockAcquire(reliq_shared->lock, LW_EXCLUSIVE);
	slot->in_use = false;
	slot->subscription_id = 0;
	SpinLockAcquire(&slot->mutex);
	slot->state = RELIQ_WORKER_STOPPED;
	SpinLockRelease(&slot->mutex);
	LWLockRelease(reliq_shared->lock);
	if (ls->handle)
		pfree(ls->handle);
	memset(ls, 0, sizeof(*ls));
}

static pid_t
slot_pid(ReliqWorkerSlot *slot)
{
	pid_t		pid;

	SpinLockAcquire(&slot->mutex);
	pid = slot->pid;
	SpinLockRelease(&slot->mutex);
	return pid;
}

static bool
worker_running(int index)
{
	LauncherSlot *ls = &launcher_slots[index];
	pid_t		pid;

	if (ls->orphan)
		return slot_pid(&reliq_shared->slots[index]) != 0;
	if (ls->handle == NULL)
		return false;
	return GetBackgroundWorkerPid(ls->handle, &pid) != BGWH_STOPPED;
}

/* Ask a worker to finish its batch and exit; after the grace, terminate it. */
static void
stop_worker(int index, TimestampTz now, long grace_ms)
{
	ReliqWorkerSlot *slot = &reliq_shared->slots[index];
	LauncherSlot *ls = &launcher_slots[index];

	if (ls->stop_requested_at == 0)
	{
		Latch	   *latch;

		pg_atomic_write_u32(&slot->stop_requested, 1);
		ls->stop_requested_at = now;
		SpinLockAcquire(&slot->mutex);
		latch = slot->latch;
		SpinLockRelease(&slot->mutex);
		if (latch)
			SetLatch(latch);
	}
	else if (TimestampDifferenceExceeds(ls->stop_requested_at, now, grace_ms))
	{
		if (ls->handle)
			TerminateBackgroundWorker(ls->handle);
		else
		{
			pid_t		pid = slot_pid(slot);

			if (pid != 0)
				kill(pid, SIGTERM);
		}
	}
}

/* Read the catalog: the subscriptions, or none without the extension. */
static int
read_subscriptions(ReliqSubscriptionSummary **subs, MemoryContext cxt)
{
	int			count = 0;
	int64		ids_sum = 0;
	int			i;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "reliq: reading subscriptions");
	*subs = NULL;
	if (reliq_catalog_extension_present())
	{
		MemoryContext old = MemoryContextSwitchTo(cxt);

		count = reliq_catalog_list_subscriptions(subs);
		MemoryContextSwitchTo(old);
		for (i = 0; i < count; i++)
			ids_sum += (*subs)[i].id;
		/* a subscription went away: drop its bookkeeping */
		if (count != last_subscription_count || ids_sum != last_subscription_ids_sum)
			reliq_catalog_forget_dropped();
	}
	last_subscription_count = count;
	last_subscription_ids_sum = ids_sum;
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	return count;
}

static const ReliqSubscriptionSummary *
find_subscription(const ReliqSubscriptionSummary *subs, int count, int64 id)
{
	int			i;

	for (i = 0; i < count; i++)
		if (subs[i].id == id)
			return &subs[i];
	return NULL;
}

/* How many workers subscription `id` may have within reliq.max_workers. */
static int
allowed_workers(const ReliqSubscriptionSummary *subs, int count, int64 id)
{
	int			budget = reliq_shared->max_workers;
	int			i;

	for (i = 0; i < count; i++)
	{
		int			n;

		if (!subs[i].enabled)
			continue;
		n = Min(subs[i].concurrency, budget);
		if (subs[i].id == id)
			return n;
		budget -= n;
	}
	return 0;
}

/* Is worker `worker_index` of subscription `id` wanted, within the budget? */
static bool
is_wanted(const ReliqSubscriptionSummary *subs, int count, int64 id,
		  int worker_index)
{
	return worker_index < allowed_workers(subs, count, id);
}

static void
warn_about_shortfall(const ReliqSubscriptionSummary *subs, int count)
{
	int			wanted = 0;
	int			i;

	for (i = 0; i < count; i++)
		if (subs[i].enabled)
			wanted += subs[i].concurrency;
	if (wanted > reliq_shared->max_workers)
	{
		if (wanted != last_shortfall)
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("reliq subscriptions want %d workers, but reliq.max_workers is %d",
							wanted, reliq_shared->max_workers),
					 errdetail("Subscriptions are served in order of creation; the last ones run with fewer workers than their concurrency, or none."),
					 errhint("Increase reliq.max_workers (and max_worker_processes), then restart the server; or lower some subscription's concurrency.")));
		last_shortfall = wanted;
	}
	else
		last_shortfall = 0;
}

static void
reconcile(MemoryContext cxt)
{
	ReliqSubscriptionSummary *subs;
	int64	   *ids;
	int			count;
	int			i;
	int			j;
	TimestampTz now;
	long		stop_grace_ms = 10L * reliq_fetch_timeout;

	MemoryContextReset(cxt);
	count = read_subscriptions(&subs, cxt);
	now = GetCurrentTimestamp();
	/*
	 * What the last round could not start, shown below with the settings
	 * (subscription_stats.worker_shortfall); then this round tries again.
	 */

	/* statistics entries */
	ids = MemoryContextAlloc(cxt, sizeof(int64) * Max(count, 1));
	for (i = 0; i < count; i++)
	{
		ReliqSubscriptionStats *entry = reliq_stats_find(subs[i].id, true,
														 subs[i].name);

		ids[i] = subs[i].id;
		if (entry != NULL)
			reliq_stats_set_catalog(entry, subs[i].enabled, subs[i].concurrency,
									subs[i].batch_size,
									allowed_workers(subs, count, subs[i].id),
									start_refused);
		else
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("no statistics entry left for reliq subscription \"%s\"", subs[i].name),
					 errhint("Increase reliq.max_subscriptions and restart the server.")));
	}
	reliq_stats_keep_only(ids, count);
	warn_about_shortfall(subs, count);
	start_refused = false;

	/* the workers there are */
	for (i = 0; i < reliq_shared->max_workers; i++)
	{
		ReliqWorkerSlot *slot = &reliq_shared->slots[i];
		LauncherSlot *ls = &launcher_slots[i];
		const ReliqSubscriptionSummary *sub;
		bool		running;

		if (!slot->in_use)
			continue;
		sub = find_subscription(subs, count, slot->subscription_id);
		running = worker_running(i);

		if (ls->orphan || sub == NULL ||
			!is_wanted(subs, count, sub->id, slot->worker_index))
		{
			if (!running)
				free_slot(i);
			else
				stop_worker(i, now, stop_grace_ms);
			continue;
		}

		if (running)
		{
			set_slot_config_version(slot, sub->version);
			continue;
		}

		/* It exited although wanted: restart it, later if it keeps dying. */
		if (!ls->exited)
		{
			ls->exited = true;
			if (!TimestampDifferenceExceeds(ls->started_at, now, RELIQ_QUICK_EXIT_MS))
				ls->quick_exits++;
			else
				ls->quick_exits = 0;
			ls->restart_at = TimestampTzPlusMilliseconds(now,
														 (int64) reliq_naptime << Min(ls->quick_exits, 5));
		}
		if (now >= ls->restart_at)
		{
			int			quick_exits = ls->quick_exits;

			if (ls->handle)
				pfree(ls->handle);
			if (start_worker(i, sub, slot->worker_index))
				launcher_slots[i].quick_exits = quick_exits;
			else
			{
				free_slot(i);
				start_refused = true;
			}
		}
	}

	/* the workers that are missing */
	for (i = 0; i < count; i++)
	{
		int			w;

		if (!subs[i].enabled)
			continue;
		for (w = 0; w < subs[i].concurrency; w++)
		{
			bool		have = false;
			int			free_index = -1;

			if (!is_wanted(subs, count, subs[i].id, w))
				break;
			for (j = 0; j < reliq_shared->max_workers; j++)
			{
				ReliqWorkerSlot *slot = &reliq_shared->slots[j];

				if (slot->in_use && slot->subscription_id == subs[i].id &&
					slot->worker_index == w)
					have = true;
				else if (!slot->in_use && free_index < 0)
					free_index = j;
			}
			if (have)
				continue;
			if (free_index < 0)
				break;
			if (!start_worker(free_index, &subs[i], w))
			{
				start_refused = true;
				ereport(WARNING,
						(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
						 errmsg("could not start a worker for reliq subscription \"%s\"",
								subs[i].name),
						 errhint("Raise max_worker_processes: it must leave room for reliq.max_workers plus the launcher.")));
				return;
			}
		}
	}
}

void
reliq_launcher_main(Datum main_arg)
{
	MemoryContext cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	reliq_set_launcher(MyProcPid, MyLatch);
	on_shmem_exit(clear_launcher, (Datum) 0);

	BackgroundWorkerInitializeConnection(reliq_database_name, NULL, 0);
	SetConfigOption("application_name", "reliq launcher", PGC_USERSET, PGC_S_SESSION);
	ereport(LOG,
			(errmsg("reliq launcher started in database \"%s\" with room for %d workers",
					reliq_database_name, reliq_shared->max_workers)));

	launcher_slots = MemoryContextAllocZero(TopMemoryContext,
											sizeof(LauncherSlot) * Max(reliq_shared->max_workers, 1));
	cxt = AllocSetContextCreate(TopMemoryContext, "reliq launcher",
								ALLOCSET_DEFAULT_SIZES);

	/*
	 * Workers of an earlier launcher of this server (one that exited, not a
	 * crash restart, which takes all workers with it) may still run.  We
	 * have no handles for them: ask them to stop, and start our own.
	 */
	LWLockAcquire(reliq_shared->lock, LW_EXCLUSIVE);
	{
		int			i;

		for (i = 0; i < reliq_shared->max_workers; i++)
		{
			ReliqWorkerSlot *slot = &reliq_shared->slots[i];

			if (slot->in_use && slot_pid(slot) != 0)
				launcher_slots[i].orphan = true;
			else
				slot->in_use = false;
		}
	}
	LWLockRelease(reliq_shared->lock);

	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		reconcile(cxt);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 reliq_naptime, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
