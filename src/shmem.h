/*-------------------------------------------------------------------------
 *
 * shmem.h
 *	  reliq's shared memory: one slot per pool worker (with the
 *	  subscriptions the launcher assigned to it, and what the worker does on
 *	  each), and one statistics entry per subscription.  The locking rules
 *	  are in the header of shmem.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_SHMEM_H
#define RELIQ_SHMEM_H

#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/spin.h"

#include "control.h"
#include "profile.h"
#include "reliq.h"
#include "stats_math.h"

/* What a worker is doing; shown in reliq.worker_status. */
typedef enum ReliqWorkerState
{
	RELIQ_WORKER_STOPPED = 0,	/* slot free, or its worker has exited */
	RELIQ_WORKER_STARTING,		/* registered by the launcher, not running yet */
	RELIQ_WORKER_CONNECTING,	/* connecting to NATS, attaching to the consumer */
	RELIQ_WORKER_FETCHING,		/* waiting for messages */
	RELIQ_WORKER_PROCESSING,	/* inside a batch transaction, or acking */
	RELIQ_WORKER_FAILING,		/* systemic failure: holding a batch, probing */
	RELIQ_WORKER_DISCONNECTED,	/* connection lost; the client reconnects */
	RELIQ_WORKER_BACKING_OFF,	/* waiting to retry connecting or attaching */
	RELIQ_WORKER_FENCED,		/* this cluster does not hold the lease */
	RELIQ_WORKER_IDLE,			/* a pool worker with no subscription */
	RELIQ_WORKER_DIVERGED		/* the stream went back below what this
								 * database applied: consumes nothing */
} ReliqWorkerState;

extern const char *reliq_worker_state_name(ReliqWorkerState state);

/*
 * A subscription's state in one word (reliq.subscription_stats.state,
 * reliq.health(), the metric reliq_subscription_state).  The names are
 * written once, in shmem.c; SQL reads them from reliq._state_names().
 * The metric lists the states before RELIQ_SUBSCRIPTION_STANDBY.
 */
typedef enum ReliqSubscriptionState
{
	RELIQ_SUBSCRIPTION_RUNNING = 0,
	RELIQ_SUBSCRIPTION_PAUSED,	/* not enabled */
	RELIQ_SUBSCRIPTION_STOPPED, /* enabled, but no worker runs */
	RELIQ_SUBSCRIPTION_FAILING, /* a worker holds a batch: systemic failure */
	RELIQ_SUBSCRIPTION_BACKING_OFF, /* a worker waits to retry connecting */
	RELIQ_SUBSCRIPTION_DISCONNECTED,	/* no worker is connected to NATS */
	RELIQ_SUBSCRIPTION_CONNECTING,	/* workers starting or connecting */
	RELIQ_SUBSCRIPTION_FENCED,	/* another cluster holds the lease */
	RELIQ_SUBSCRIPTION_ACQUIRING,	/* this cluster is taking the lease */
	RELIQ_SUBSCRIPTION_DIVERGED,	/* the stream lost its tail: its last
									 * sequence went below what this database
									 * applied; waits for
									 * reliq.accept_stream_loss() */
	RELIQ_SUBSCRIPTION_STANDBY	/* a hot standby: no workers (SQL only) */
} ReliqSubscriptionState;

#define RELIQ_SUBSCRIPTION_STATES (RELIQ_SUBSCRIPTION_STANDBY + 1)

extern const char *reliq_subscription_state_name(ReliqSubscriptionState state);


/*
 * A subscription the launcher gave a pool worker: the worker serves it as
 * one of its lanes.  lane_index tells the subscription's workers apart
 * (0 .. concurrency - 1).
 */
typedef struct ReliqAssignment
{
	int64		subscription_id;
	int			lane_index;
	int64		config_version; /* the catalog row's version to load */
} ReliqAssignment;

/* What a worker does on one of its lanes; written by the worker. */
typedef struct ReliqLaneStatus
{
	int64		subscription_id;	/* 0: unused */
	char		subscription_name[NAMEDATALEN];
	int			lane_index;
	ReliqWorkerState state;
	TimestampTz since;			/* when state last changed */
	int			batch_size;
	int			in_flight;		/* received, not yet acked or nacked */
} ReliqLaneStatus;

typedef struct ReliqWorkerSlot
{
	/* Assigned by the launcher; see the locking rules. */
	bool		in_use;
	uint64		generation;
	int			nassigned;
	ReliqAssignment *assigned;	/* max_subscriptions of them */

	/* Requests from the launcher; read by the worker without a lock. */
	pg_atomic_uint32 stop_requested;
	pg_atomic_uint64 assignment_version;	/* bumped at each change of
											 * assigned[] */

	/* Written by the worker, read by anyone, under mutex. */
	slock_t		mutex;
	pid_t		pid;
	Latch	   *latch;
	ReliqWorkerState state;		/* of the worker as a whole */
	bool		connected;
	TimestampTz since;
	TimestampTz started_at;
	TimestampTz disconnected_at;	/* 0 while connected */
	ReliqLaneStatus *lanes;		/* max_subscriptions of them */
} ReliqWorkerSlot;

typedef struct ReliqSubscriptionStats
{
	/* Identity; assigned under ReliqShared->lock.  0 means free. */
	int64		subscription_id;
	char		subscription_name[NAMEDATALEN];

	/* Monotonic counters, added to by any worker of the subscription. */
	pg_atomic_uint64 received;
	pg_atomic_uint64 processed;
	pg_atomic_uint64 failed;
	pg_atomic_uint64 retried;
	pg_atomic_uint64 dead_lettered;
	pg_atomic_uint64 duplicates;
	pg_atomic_uint64 batches;
	pg_atomic_uint64 slow_path_batches; /* redone one message at a time */
	ReliqHistogram batch_duration;	/* a batch, from BEGIN to the acks */
	ReliqHistogram commit_latency;	/* a message, from publish to commit */

	/*
	 * Under lock (an LWLock of tranche "reliq stats"): what takes a loop to
	 * write or to copy.  Recent figures (p50/p99 and the rate over the last
	 * minute).
	 */
	LWLock		lock;
	ReliqSamples batch_samples;
	ReliqSamples latency_samples;
	ReliqRate	rate;

	/* Everything below under mutex: a few fields, copied without a loop. */
	slock_t		mutex;
	TimestampTz last_batch_at;
	TimestampTz last_error_at;
	TimestampTz last_failure_at;	/* of a message, not of the connection */
	TimestampTz stats_reset_at;
	char		last_error[RELIQ_ERROR_LEN];

	/* Consumer information from the server, refreshed by the monitor. */
	bool		have_consumer_info;
	int64		num_pending;
	int64		num_ack_pending;
	int64		num_redelivered;
	int64		ack_floor;
	int64		max_ack_pending;
	TimestampTz consumer_info_at;

	/* (pending, processed) at the monitor's last refreshes (4 points). */
	ReliqLagPoints lag;

	/* The stream's retention, written by the monitor. */
	char		retention[16];	/* "limits", "interest", "workqueue"; "" unknown */

	/* From the catalog, copied by the launcher at each reconciliation. */
	bool		catalog_known;
	bool		enabled;
	int			concurrency;
	int			batch_size;
	int			workers_allowed;	/* within reliq.max_workers */
	bool		start_refused;	/* a worker could not be registered
								 * (max_worker_processes) */

	/* Rows in reliq.dead_letter, counted by the monitor (metrics.c); -1 not yet. */
	int64		dead_letter_backlog;

	/* The batch profile (profile.c), while reliq.profile_batches is on. */
	pg_atomic_uint64 profile_batches;
	pg_atomic_uint64 profile_messages;
	pg_atomic_uint64 profile_wall_ns[RELIQ_STEP_COUNT];
	pg_atomic_uint64 profile_cpu_ns[RELIQ_STEP_COUNT];
} ReliqSubscriptionStats;

/*
 * A copy of what a running worker does on one of its lanes; a worker with
 * no lane has one snapshot with subscription_id 0.
 */
typedef struct ReliqWorkerSnapshot
{
	int			slot;			/* index of its slot: stable while it runs */
	int64		subscription_id;
	char		subscription_name[NAMEDATALEN];
	int			worker_index;	/* the pool worker: 0 .. max_workers - 1 */
	int			lane_index;
	pid_t		pid;
	ReliqWorkerState state;
	bool		connected;
	int			batch_size;
	int			in_flight;
	TimestampTz since;
	TimestampTz started_at;
	TimestampTz disconnected_at;
} ReliqWorkerSnapshot;

/*
 * A consistent copy of one subscription's figures, taken without holding
 * any lock while it is used (reliq.subscription_stats, reliq.metrics).
 */
typedef struct ReliqStatsSnapshot
{
	int64		subscription_id;
	char		subscription_name[NAMEDATALEN];
	bool		catalog_known;
	bool		enabled;
	int			concurrency;
	int			batch_size;
	int			workers_allowed;
	bool		start_refused;
	ReliqSubscriptionState state;	/* as the workers and the lease say */
	ReliqLeaseView lease;
	char		retention[16];
	int			workers;
	int64		in_flight;
	TimestampTz disconnected_since; /* all workers disconnected since; or 0 */
	uint64		received;
	uint64		processed;
	uint64		failed;
	uint64		retried;
	uint64		dead_lettered;
	uint64		duplicates;
	uint64		batches;
	uint64		slow_path_batches;
	TimestampTz last_batch_at;
	TimestampTz last_error_at;
	TimestampTz last_failure_at;
	TimestampTz stats_reset_at;
	char		last_error[RELIQ_ERROR_LEN];
	bool		have_consumer_info;
	int64		pending;
	int64		ack_pending;
	int64		redelivered;
	int64		ack_floor;
	int64		max_ack_pending;
	TimestampTz consumer_info_at;
	double		rate;			/* processed per second, last minute */
	int64		batch_p50_us;	/* -1: no sample */
	int64		batch_p99_us;
	int64		latency_p50_us;
	int64		latency_p99_us;
	bool		lag_growing;
	int64		lag_from;
	int64		lag_to;
	ReliqHistogramCopy batch_duration;
	ReliqHistogramCopy commit_latency;
	int64		dead_letter_backlog;	/* -1: not counted yet */
	bool		diverged;
} ReliqStatsSnapshot;

typedef struct ReliqShared
{
	LWLock	   *lock;			/* slot and stats entry assignment */
	int			stats_tranche;	/* of each stats entry's lock */

	slock_t		mutex;			/* protects launcher_pid and launcher_latch */
	pid_t		launcher_pid;
	Latch	   *launcher_latch;

	int			max_workers;
	int			max_subscriptions;
	ReliqWorkerSlot *slots;		/* max_workers of them */
	ReliqSubscriptionStats *stats;	/* max_subscriptions of them */
} ReliqShared;

extern ReliqShared *reliq_shared;

extern void reliq_shmem_install_hooks(void);
extern void reliq_shmem_require(void);

/* Launcher side */
extern void reliq_set_launcher(pid_t pid, Latch *latch);
extern void reliq_wake_launcher(void);

/* Statistics entries */
extern ReliqSubscriptionStats *reliq_stats_find(int64 subscription_id,
												bool create,
												const char *subscription_name);
extern void reliq_stats_keep_only(const int64 *subscription_ids, int count);
extern void reliq_stats_reset(ReliqSubscriptionStats *entry);
extern void reliq_stats_set_error(ReliqSubscriptionStats *entry,
								  const char *message);
extern void reliq_stats_set_failure(ReliqSubscriptionStats *entry,
									const char *message);
extern void reliq_stats_set_catalog(ReliqSubscriptionStats *entry,
									bool enabled, int concurrency,
									int batch_size, int workers_allowed,
									bool start_refused);
extern void reliq_stats_record_batch(ReliqSubscriptionStats *entry,
									 int64 duration_us,
									 const int64 *latencies_us, int nlatencies,
									 int processed);
extern void reliq_stats_record_lag(ReliqSubscriptionStats *entry,
								   int64 pending);
extern void reliq_stats_set_consumer_info(ReliqSubscriptionStats *entry,
										  int64 pending, int64 ack_pending,
										  int64 redelivered, int64 ack_floor,
										  int64 max_ack_pending);
extern int	reliq_stats_snapshot(ReliqStatsSnapshot **snapshots);
extern void reliq_stats_set_retention(ReliqSubscriptionStats *entry,
									  const char *retention);
extern void reliq_stats_note_divergence(ReliqSubscriptionStats *entry,
										ReliqControl *control,
										const char *subscription,
										const char *stream,
										int64 stream_last_seq,
										int64 applied_seq);
extern const char *reliq_lease_state_name(ReliqLeaseState state);
extern int	reliq_workers_snapshot(ReliqWorkerSnapshot **workers);

/* Worker slots and their lanes */
extern void reliq_slot_set_state(ReliqWorkerSlot *slot, ReliqWorkerState state);
extern void reliq_slot_set_connected(ReliqWorkerSlot *slot, bool connected);
extern ReliqLaneStatus *reliq_lane_open(ReliqWorkerSlot *slot,
										int64 subscription_id,
										const char *subscription_name,
										int lane_index);
extern void reliq_lane_close(ReliqWorkerSlot *slot, ReliqLaneStatus *lane);
extern void reliq_lane_set_state(ReliqWorkerSlot *slot, ReliqLaneStatus *lane,
								 ReliqWorkerState state);
extern void reliq_lane_set_progress(ReliqWorkerSlot *slot,
									ReliqLaneStatus *lane, int batch_size,
									int in_flight);

#endif							/* RELIQ_SHMEM_H */
