/*-------------------------------------------------------------------------
 *
 * shmem.h
 *	  reliq's shared memory: one slot per worker and one statistics entry
 *	  per subscription.  The locking rules are in the header of shmem.c.
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

#include "reliq.h"

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
	RELIQ_WORKER_STOPPING		/* asked to stop: finishing its batch */
} ReliqWorkerState;

extern const char *reliq_worker_state_name(ReliqWorkerState state);

typedef struct ReliqWorkerSlot
{
	/* Assigned by the launcher; see the locking rules. */
	bool		in_use;
	uint64		generation;
	int64		subscription_id;
	int			worker_index;
	char		subscription_name[NAMEDATALEN];

	/* Requests from the launcher; read by the worker without a lock. */
	pg_atomic_uint32 stop_requested;
	pg_atomic_uint64 config_version;

	/* Written by the worker, read by anyone, under mutex. */
	slock_t		mutex;
	pid_t		pid;
	Latch	   *latch;
	ReliqWorkerState state;
	bool		connected;
	TimestampTz since;			/* when state last changed */
	TimestampTz started_at;
	int			batch_size;
	int			in_flight;		/* received, not yet acked or nacked */
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

	/* Everything below under mutex. */
	slock_t		mutex;
	TimestampTz last_batch_at;
	TimestampTz last_error_at;
	TimestampTz stats_reset_at;
	char		last_error[RELIQ_ERROR_LEN];

	/* Consumer information from the server, refreshed by the workers. */
	bool		have_consumer_info;
	int64		num_pending;
	int64		num_ack_pending;
	int64		num_redelivered;
	int64		num_waiting;
	int64		ack_floor;
	TimestampTz consumer_info_at;
} ReliqSubscriptionStats;

typedef struct ReliqShared
{
	LWLock	   *lock;			/* slot and stats entry assignment */

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

/* Worker slots */
extern void reliq_slot_set_state(ReliqWorkerSlot *slot, ReliqWorkerState state);
extern void reliq_slot_set_connected(ReliqWorkerSlot *slot, bool connected);
extern void reliq_slot_set_progress(ReliqWorkerSlot *slot, int batch_size,
									int in_flight);

#endif							/* RELIQ_SHMEM_H */
