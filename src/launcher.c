/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The reliq launcher: one static background worker that reconciles
 *	  reliq.subscription with the dynamic workers actually running.
 *
 * Every reliq.naptime, and whenever a change to reliq.subscription commits
 * (a statement trigger wakes it) or a worker starts or exits, the launcher:
 *
 *	 - runs a pool of min(reliq.max_workers, lanes wanted) workers, where
 *	   each enabled subscription wants min(concurrency, reliq.max_workers)
 *	   lanes, each on a different worker; so every subscription is served,
 *	   whatever reliq.max_workers is (and it warns, once per change, about
 *	   a concurrency above it);
 *	 - assigns each lane not yet served to the worker with the fewest
 *	   lanes (the first such), and moves no lane while its worker runs;
 *	   takes lanes away from workers when their subscription is paused,
 *	   dropped or wants fewer;
 *	 - asks workers that are no longer wanted to stop (they give back what
 *	   they hold first) and terminates those that have not stopped after
 *	   10 x reliq.fetch_timeout;
 *	 - tells workers each subscription's catalog version with its
 *	   assignment, so they reload changed settings without a restart;
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
#include "version.h"
#include "xact.h"

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
static bool version_warned = false;
static int	last_subscription_count = -1;
static int64 last_subscription_ids_sum = 0;

static void
clear_launcher(int code, Datum arg)
{
	reliq_set_launcher(0, NULL);
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
wake_slot(ReliqWorkerSlot *slot)
{
	Latch	   *latch;

	SpinLockAcquire(&slot->mutex);
	latch = slot->latch;
	SpinLockRelease(&slot->mutex);
	if (latch)
		SetLatch(latch);
}

static bool
start_worker(int index)
{
	ReliqWorkerSlot *slot = &reliq_shared->slots[index];
	LauncherSlot *ls = &launcher_slots[index];
	BackgroundWorker bgw;
	uint64		generation;

	/* a restarted worker keeps its lanes; a new one gets them below */
	LWLockAcquire(reliq_shared->lock, LW_EXCLUSIVE);
	if (!slot->in_use)
		slot->nassigned = 0;
	slot->in_use = true;
	slot->generation++;
	generation = slot->generation;
	pg_atomic_write_u32(&slot->stop_requested, 0);
	pg_atomic_fetch_add_u64(&slot->assignment_version, 1);
	SpinLockAcquire(&slot->mutex);
	slot->pid = 0;
	slot->latch = NULL;
	slot->state = RELIQ_WORKER_STARTING;
	slot->since = GetCurrentTimestamp();
	slot->connected = false;
	SpinLockRelease(&slot->mutex);
	LWLockRelease(reliq_shared->lock);

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(bgw.bgw_library_name, RELIQ_LIBRARY_NAME, BGW_MAXLEN);
	strlcpy(bgw.bgw_function_name, "reliq_worker_main", BGW_MAXLEN);
	snprintf(bgw.bgw_name, BGW_MAXLEN, "reliq worker #%d", index);
	strlcpy(bgw.bgw_type, "reliq worker", BGW_MAXLEN);
	bgw.bgw_main_arg = Int32GetDatum(index);
	memcpy(bgw.bgw_extra, &generation, sizeof(generation));
	bgw.bgw_notify_pid = MyProcPid;

	memset(ls, 0, sizeof(*ls));
	if (!RegisterDynamicBackgroundWorker(&bgw, &ls->handle))
	{
		LWLockAcquire(reliq_shared->lock, LW_EXCLUSIVE);
		slot->in_use = false;
		slot->nassigned = 0;
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
	slot->nassigned = 0;
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

	MemoryContext caller = reliq_xact_begin("reliq: reading subscriptions");

	*subs = NULL;
	/*
	 * The installed SQL and the loaded library must be of one version:
	 * until ALTER EXTENSION reliq UPDATE, the launcher serves nothing (its
	 * workers stop) and says why, once per change.
	 */
	if (reliq_catalog_extension_present() &&
		!reliq_catalog_version_ok(version_warned ? DEBUG1 : WARNING))
		version_warned = true;
	else if (reliq_catalog_extension_present())
	{
		MemoryContext old = MemoryContextSwitchTo(cxt);

		version_warned = false;

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
	reliq_xact_commit(caller);
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

/* How many lanes (workers at once) subscription sub may have. */
static int
lanes_wanted(const ReliqSubscriptionSummary *sub)
{
	if (!sub->enabled)
		return 0;
	return Min(sub->concurrency, reliq_shared->max_workers);
}

static void
warn_about_shortfall(const ReliqSubscriptionSummary *subs, int count)
{
	int			widest = 0;
	const char *name = NULL;
	int			i;

	for (i = 0; i < count; i++)
		if (subs[i].enabled && subs[i].concurrency > widest)
		{
			widest = subs[i].concurrency;
			name = subs[i].name;
		}
	if (widest > reliq_shared->max_workers)
	{
		if (widest != last_shortfall)
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("reliq subscription \"%s\" wants %d workers at once, but reliq.max_workers is %d",
							name, widest, reliq_shared->max_workers),
					 errdetail("Every subscription is served; those whose concurrency is above reliq.max_workers run on reliq.max_workers workers."),
					 errhint("Increase reliq.max_workers (and max_worker_processes), then restart the server; or lower the subscription's concurrency.")));
		last_shortfall = widest;
	}
	else
		last_shortfall = 0;
}

/* Is slot `index` running a worker the launcher has not asked to stop? */
static bool
slot_usable(int index)
{
	return reliq_shared->slots[index].in_use &&
		launcher_slots[index].stop_requested_at == 0 &&
		!launcher_slots[index].orphan;
}

static bool
slot_serves(const ReliqWorkerSlot *slot, int64 subscription_id)
{
	int			i;

	for (i = 0; i < slot->nassigned; i++)
		if (slot->assigned[i].subscription_id == subscription_id)
			return true;
	return false;
}

/*
 * The lanes: keep what still holds, take away what does not, and give
 * each lane not served to the usable worker with the fewest lanes that
 * does not serve its subscription yet.  A worker whose lanes changed is
 * told (assignment_version, its latch).  Counts each subscription's
 * lanes in lanes[] (parallel to subs).
 */
static void
assign_lanes(const ReliqSubscriptionSummary *subs, int count, int *lanes)
{
	bool	   *changed = palloc0(sizeof(bool) * reliq_shared->max_workers);
	int			i;
	int			w;

	memset(lanes, 0, sizeof(int) * Max(count, 1));
	LWLockAcquire(reliq_shared->lock, LW_EXCLUSIVE);

	/* what still holds */
	for (w = 0; w < reliq_shared->max_workers; w++)
	{
		ReliqWorkerSlot *slot = &reliq_shared->slots[w];
		int			kept = 0;
		int			k;

		for (k = 0; k < slot->nassigned; k++)
		{
			ReliqAssignment *a = &slot->assigned[k];
			const ReliqSubscriptionSummary *sub = find_subscription(subs, count, a->subscription_id);
			int			index = sub ? (int) (sub - subs) : -1;

			if (!slot_usable(w) || sub == NULL || a->lane_index >= lanes_wanted(sub))
			{
				changed[w] = true;
				continue;
			}
			if (a->config_version != sub->version)
			{
				a->config_version = sub->version;
				changed[w] = true;
			}
			lanes[index]++;
			slot->assigned[kept++] = *a;
		}
		slot->nassigned = kept;
	}

	/* what is missing */
	for (i = 0; i < count; i++)
	{
		int			lane;

		for (lane = 0; lane < lanes_wanted(&subs[i]); lane++)
		{
			bool		have = false;
			int			best = -1;

			for (w = 0; w < reliq_shared->max_workers && !have; w++)
			{
				ReliqWorkerSlot *slot = &reliq_shared->slots[w];
				int			k;

				for (k = 0; k < slot->nassigned; k++)
					if (slot->assigned[k].subscription_id == subs[i].id &&
						slot->assigned[k].lane_index == lane)
						have = true;
			}
			if (have)
				continue;
			for (w = 0; w < reliq_shared->max_workers; w++)
			{
				ReliqWorkerSlot *slot = &reliq_shared->slots[w];

				if (!slot_usable(w) || slot_serves(slot, subs[i].id) ||
					slot->nassigned >= reliq_shared->max_subscriptions)
					continue;
				if (best < 0 || slot->nassigned < reliq_shared->slots[best].nassigned)
					best = w;
			}
			if (best < 0)
				break;			/* fewer workers than lanes: a shortfall */
			{
				ReliqWorkerSlot *slot = &reliq_shared->slots[best];
				ReliqAssignment *a = &slot->assigned[slot->nassigned++];

				a->subscription_id = subs[i].id;
				a->lane_index = lane;
				a->config_version = subs[i].version;
				changed[best] = true;
				lanes[i]++;
			}
		}
	}
	for (w = 0; w < reliq_shared->max_workers; w++)
		if (changed[w])
			pg_atomic_fetch_add_u64(&reliq_shared->slots[w].assignment_version, 1);
	LWLockRelease(reliq_shared->lock);

	for (w = 0; w < reliq_shared->max_workers; w++)
		if (changed[w])
			wake_slot(&reliq_shared->slots[w]);
	pfree(changed);
}

static void
reconcile(MemoryContext cxt)
{
	ReliqSubscriptionSummary *subs;
	int64	   *ids;
	int		   *lanes;
	int			count;
	int			wanted_workers = 0;
	int			i;
	TimestampTz now;
	long		stop_grace_ms = 10L * reliq_fetch_timeout;
	bool		refused = false;

	MemoryContextReset(cxt);
	count = read_subscriptions(&subs, cxt);
	now = GetCurrentTimestamp();

	for (i = 0; i < count; i++)
		wanted_workers += lanes_wanted(&subs[i]);
	wanted_workers = Min(wanted_workers, reliq_shared->max_workers);
	warn_about_shortfall(subs, count);

	/*
	 * The workers: slots 0 .. wanted_workers - 1 run one each; the others
	 * stop.  A worker that exited although wanted is restarted, later if
	 * it keeps dying; it keeps its lanes meanwhile.
	 */
	for (i = 0; i < reliq_shared->max_workers; i++)
	{
		ReliqWorkerSlot *slot = &reliq_shared->slots[i];
		LauncherSlot *ls = &launcher_slots[i];
		bool		running;

		if (!slot->in_use)
		{
			if (i < wanted_workers && !refused)
			{
				if (!start_worker(i))
				{
					refused = true;
					ereport(WARNING,
							(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
							 errmsg("could not start reliq worker %d", i),
							 errdetail("The subscriptions run on the %d workers that did start.", i),
							 errhint("Raise max_worker_processes: it must leave room for reliq.max_workers plus the launcher and the monitor.")));
				}
			}
			continue;
		}
		running = worker_running(i);
		if (ls->orphan || i >= wanted_workers)
		{
			if (!running)
				free_slot(i);
			else
				stop_worker(i, now, stop_grace_ms);
			continue;
		}
		if (running)
			continue;

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
			if (start_worker(i))
				launcher_slots[i].quick_exits = quick_exits;
			else
			{
				free_slot(i);
				refused = true;
			}
		}
	}

	/* the lanes, then the statistics entries with what they got */
	lanes = MemoryContextAllocZero(cxt, sizeof(int) * Max(count, 1));
	assign_lanes(subs, count, lanes);

	ids = MemoryContextAlloc(cxt, sizeof(int64) * Max(count, 1));
	for (i = 0; i < count; i++)
	{
		ReliqSubscriptionStats *entry = reliq_stats_find(subs[i].id, true,
														 subs[i].name);

		ids[i] = subs[i].id;
		if (entry != NULL)
			reliq_stats_set_catalog(entry, subs[i].enabled, subs[i].concurrency,
									subs[i].batch_size, lanes_wanted(&subs[i]),
									(refused || start_refused) && lanes[i] < lanes_wanted(&subs[i]));
		else
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("no statistics entry left for reliq subscription \"%s\"", subs[i].name),
					 errhint("Increase reliq.max_subscriptions and restart the server.")));
	}
	reliq_stats_keep_only(ids, count);
	reliq_control_keep_only(ids, count);
	start_refused = refused;
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
			(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
			 errmsg("reliq launcher started in database \"%s\" with room for %d workers",
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
