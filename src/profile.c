/*-------------------------------------------------------------------------
 *
 * profile.c
 *	  The per-step profile of a batch: where a worker's time goes from
 *	  collecting a batch to its acks, step by step (profile.h), in wall
 *	  time and in the worker's own CPU time, added up per subscription in
 *	  its statistics entry and read with reliq.batch_profile().
 *
 * Off by default (reliq.profile_batches, superuser only): then each of the
 * dozen calls a batch makes is one test of a bool.  On, each step boundary
 * reads two clocks (the CPU-time one a system call) and a batch adds
 * 2 x RELIQ_STEP_COUNT + 2 atomics to shared memory, no lock.  The laps
 * are kept in the worker process (a pool worker applies one batch at a
 * time), so only the addition at the end touches shared memory.
 *
 * The CPU time is the main thread's (CLOCK_THREAD_CPUTIME_ID): the NATS
 * client's threads (reader, flusher) are not in it; the bench measures the
 * whole process from /proc beside it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "profile.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(reliq_batch_profile);

bool		reliq_profile_batches = false;

static const char *const step_names[RELIQ_STEP_COUNT] = {
	[RELIQ_STEP_COLLECT] = "collect",
	[RELIQ_STEP_BEGIN] = "begin",
	[RELIQ_STEP_PLANS] = "plans",
	[RELIQ_STEP_IDENTITY] = "identity",
	[RELIQ_STEP_LEDGER] = "ledger",
	[RELIQ_STEP_APPLY] = "apply",
	[RELIQ_STEP_COMMIT] = "commit",
	[RELIQ_STEP_GATE] = "gate",
	[RELIQ_STEP_ACK] = "ack",
	[RELIQ_STEP_STATS] = "stats",
	[RELIQ_STEP_OTHER] = "other",
};

/* The batch being profiled in this process. */
static bool started = false;
static int64 last_wall_ns;
static int64 last_cpu_ns;
static int64 wall_ns[RELIQ_STEP_COUNT];
static int64 cpu_ns[RELIQ_STEP_COUNT];

/* CLOCK_MONOTONIC for wall time, CLOCK_THREAD_CPUTIME_ID for CPU time. */
static int64
clock_ns(clockid_t clock)
{
	struct timespec ts;

	if (clock_gettime(clock, &ts) != 0)
		return 0;
	return (int64) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void
reliq_profile_define(void)
{
	DefineCustomBoolVariable("reliq.profile_batches",
							 "Adds up where each batch's time goes, step by step (see reliq.batch_profile()).",
							 "Reads two clocks per step of a batch while on.",
							 &reliq_profile_batches, false, PGC_SUSET, 0,
							 NULL, NULL, NULL);
}

/* A batch begins: forget what was not given to one. */
void
reliq_profile_start_slow(void)
{
	memset(wall_ns, 0, sizeof(wall_ns));
	memset(cpu_ns, 0, sizeof(cpu_ns));
	last_wall_ns = clock_ns(CLOCK_MONOTONIC);
	last_cpu_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID);
	started = true;
}

void
reliq_profile_lap_slow(ReliqProfileStep step)
{
	int64		wall;
	int64		cpu;

	if (!started)
	{
		reliq_profile_start_slow();
		return;
	}
	wall = clock_ns(CLOCK_MONOTONIC);
	cpu = clock_ns(CLOCK_THREAD_CPUTIME_ID);
	wall_ns[step] += wall - last_wall_ns;
	cpu_ns[step] += cpu - last_cpu_ns;
	last_wall_ns = wall;
	last_cpu_ns = cpu;
}

/*
 * The batch is done: the rest is "other"; add it up in stats.  A batch
 * that follows in the same turn (rule 1 of apply.c) starts from here.
 */
void
reliq_profile_end_slow(ReliqSubscriptionStats *stats, int nmsgs)
{
	int			i;

	if (!started)
		return;
	reliq_profile_lap_slow(RELIQ_STEP_OTHER);
	if (stats != NULL)
	{
		pg_atomic_fetch_add_u64(&stats->profile_batches, 1);
		pg_atomic_fetch_add_u64(&stats->profile_messages, nmsgs);
		for (i = 0; i < RELIQ_STEP_COUNT; i++)
		{
			pg_atomic_fetch_add_u64(&stats->profile_wall_ns[i], Max(wall_ns[i], 0));
			pg_atomic_fetch_add_u64(&stats->profile_cpu_ns[i], Max(cpu_ns[i], 0));
		}
	}
	memset(wall_ns, 0, sizeof(wall_ns));
	memset(cpu_ns, 0, sizeof(cpu_ns));
}

/* Zero an entry's profile (the entry may be in use: written, not initialised). */
void
reliq_profile_reset(ReliqSubscriptionStats *entry, bool init)
{
	int			i;

	if (init)
	{
		pg_atomic_init_u64(&entry->profile_batches, 0);
		pg_atomic_init_u64(&entry->profile_messages, 0);
		for (i = 0; i < RELIQ_STEP_COUNT; i++)
		{
			pg_atomic_init_u64(&entry->profile_wall_ns[i], 0);
			pg_atomic_init_u64(&entry->profile_cpu_ns[i], 0);
		}
		return;
	}
	pg_atomic_write_u64(&entry->profile_batches, 0);
	pg_atomic_write_u64(&entry->profile_messages, 0);
	for (i = 0; i < RELIQ_STEP_COUNT; i++)
	{
		pg_atomic_write_u64(&entry->profile_wall_ns[i], 0);
		pg_atomic_write_u64(&entry->profile_cpu_ns[i], 0);
	}
}

/*
 * reliq.batch_profile(): per subscription and step, the batches profiled,
 * their messages, and the step's wall and CPU time in all (µs).  Zeroed by
 * reliq.subscription_stats_reset().
 */
Datum
reliq_batch_profile(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			i;
	int			j;

	reliq_shmem_require();
	InitMaterializedSRF(fcinfo, 0);
	LWLockAcquire(reliq_shared->lock, LW_SHARED);
	for (i = 0; i < reliq_shared->max_subscriptions; i++)
	{
		ReliqSubscriptionStats *entry = &reliq_shared->stats[i];
		uint64		batches;
		uint64		messages;

		if (entry->subscription_id == 0)
			continue;
		batches = pg_atomic_read_u64(&entry->profile_batches);
		messages = pg_atomic_read_u64(&entry->profile_messages);
		if (batches == 0)
			continue;
		for (j = 0; j < RELIQ_STEP_COUNT; j++)
		{
			Datum		values[6];
			bool		nulls[6] = {false};

			values[0] = CStringGetTextDatum(entry->subscription_name);
			values[1] = CStringGetTextDatum(step_names[j]);
			values[2] = Int64GetDatum((int64) batches);
			values[3] = Int64GetDatum((int64) messages);
			values[4] = Float8GetDatum(pg_atomic_read_u64(&entry->profile_wall_ns[j]) / 1000.0);
			values[5] = Float8GetDatum(pg_atomic_read_u64(&entry->profile_cpu_ns[j]) / 1000.0);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	LWLockRelease(reliq_shared->lock);
	return (Datum) 0;
}
