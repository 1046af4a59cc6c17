/*-------------------------------------------------------------------------
 *
 * worker_internal.h
 *	  What the files of a reliq pool worker share; nothing else includes
 *	  it (worker.h is the worker's face to the rest of reliq).
 *
 * A pool worker is four files, each calling only those below it:
 *
 *	 pool.c      the process: its slot, its NATS connection and inbox, the
 *				 lanes the launcher assigns it, the rounds of turns, exit
 *	 lane.c      one subscription served by the worker (a lane): its state
 *				 machine (attach, pull, hold, leave), each turn under its
 *				 own error boundary
 *	 apply.c     applying what a lane collected: the redelivery policy
 *				 (its rules at the top of the file), a batch through
 *				 batch.c, counting, a lane's problems; returns a verdict
 *				 the lane acts on
 *	 ack_gate.c  what may go out after COMMIT: the standbys, the lease, the
 *				 outbox, then ACK, NAK and TERM; takes what it needs as
 *				 arguments
 *
 * Invariants: nothing is acked before its transaction committed and the
 * ack gate let it through; a lane's state changes only in lane.c; an
 * ERROR in a lane's turn outside batch.c ends that turn, not the worker.
 *
 * Locks: none of these files holds a lock across a call into another.
 * pool.c reads the slot's assignment under the reliq LWLock; what a lane
 * shows is written under the slot's spinlock, the lease read under the
 * statistics entry's spinlock (both in shmem.c); ack_gate.c reads what the
 * standbys confirmed under SyncRepLock.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_WORKER_INTERNAL_H
#define RELIQ_WORKER_INTERNAL_H

#include "access/xlogdefs.h"
#include "utils/timestamp.h"

#include "batch.h"
#include "catalog.h"
#include "nats_client.h"
#include "reliq.h"
#include "settings.h"
#include "shmem.h"

/* How often a waiting worker looks at its latch and interrupts. */
#define RELIQ_POLL_MS 100

/*
 * An idle lane's pulls: after this many empty pulls in a row, a lane asks
 * for pulls of RELIQ_IDLE_PULL_MS with a heartbeat every
 * RELIQ_IDLE_HEARTBEAT_MS (a silent pull is noticed after three), so that
 * a thousand idle subscriptions cost little.  A message ends idleness.
 */
#define RELIQ_IDLE_AFTER 2
#define RELIQ_IDLE_PULL_MS 30000
#define RELIQ_IDLE_HEARTBEAT_MS 5000

typedef struct Pool Pool;

/*
 * A lane's state.  It changes only through reliq_lane_transition()
 * (lane.c), which asserts that the lane comes from one of the states
 * written on the new one ("from:"); a change to the same state is always
 * allowed.  What reliq.worker_status shows is derived from it (lane.c,
 * shown_state), and from the worker's connection while that is down.
 */
typedef enum ReliqLaneState
{
	RELIQ_LANE_ATTACHING,		/* no consumer attached; attaches at its turn
								 * ("connecting").  From: BACKING_OFF, FETCHING,
								 * PROCESSING, FAILING (detached), FENCED,
								 * LAPSED (the lease usable again), DIVERGED
								 * (the loss accepted), LEAVING (taken back).
								 * A new lane starts here. */
	RELIQ_LANE_BACKING_OFF,		/* attaching or a turn failed; again at
								 * retry_at ("backing_off").  From: ATTACHING,
								 * FENCED, LAPSED, DIVERGED */
	RELIQ_LANE_FETCHING,		/* attached: a pull out, or to send
								 * ("fetching").  From: ATTACHING (attached),
								 * PROCESSING (a batch done), LAPSED (renewed),
								 * LEAVING (taken back) */
	RELIQ_LANE_PROCESSING,		/* applying a batch, then acking it
								 * ("processing").  From: FETCHING, FAILING (a
								 * probe) */
	RELIQ_LANE_FAILING,			/* failing as a whole: holds its batch,
								 * probes after the backoff ("failing").  From:
								 * PROCESSING, ATTACHING (attached with a held
								 * batch), LAPSED (renewed) */
	RELIQ_LANE_FENCED,			/* another cluster holds the lease, or this one
								 * is acquiring it: no puller ("fenced").  From:
								 * ATTACHING, BACKING_OFF, LAPSED, DIVERGED */
	RELIQ_LANE_LAPSED,			/* this cluster's lease was not renewed: keeps
								 * its puller, pulls nothing ("connecting").
								 * From: ATTACHING, BACKING_OFF, FETCHING,
								 * FAILING, FENCED, DIVERGED */
	RELIQ_LANE_DIVERGED,		/* the stream lost its tail (monitor.c): no
								 * puller, nothing applied or acked, until
								 * reliq.accept_stream_loss() ("diverged").
								 * From: ATTACHING, BACKING_OFF, FETCHING,
								 * PROCESSING, FAILING, FENCED, LAPSED */
	RELIQ_LANE_LEAVING			/* no longer assigned: applies nothing, shows
								 * nothing, until its last pull has ended.
								 * From: any */
} ReliqLaneState;

/* One subscription served by this worker. */
typedef struct Lane
{
	Pool	   *pool;
	ReliqLaneState state;		/* see reliq_lane_transition() */
	ReliqLaneStatus *status;	/* in the slot; NULL once closed */
	ReliqSubscriptionStats *stats;
	ReliqControl *control;
	int64		subscription_id;
	int			lane_index;
	ReliqSubscription *sub;
	MemoryContext sub_cxt;		/* holds sub */
	MemoryContext held_cxt;		/* holds the held batch, if any */
	ReliqBatchState batch;

	ReliqPuller *puller;		/* attached to the consumer while set */
	int64		stream_created;
	int			missed_pulls;
	int			empty_pulls;	/* in a row; RELIQ_IDLE_AFTER makes it idle */
	TimestampTz pull_after;		/* no pull before (after a refused one) */

	int			retries;
	TimestampTz retry_at;
	char		problem[RELIQ_ERROR_LEN];

	ReliqMessage *held;
	int			nheld;
	bool		held_transient; /* held for a transient error, not the
								 * breaker */
	int			probes;
	TimestampTz next_probe;
	TimestampTz next_progress;

	/* ordering => 'key' (ordering.c) */
	bool		order_registered;	/* holds messages in the registry */
	bool		order_turn;		/* holds the subscription's pull turn */
	uint32		order_generation;	/* of the registry, last looked at */
	bool		deferred_ready;	/* some may go: with the next batch */
	ReliqMessage *deferred;		/* behind an unfinished message of their key */
	int			ndeferred;
	int			maxdeferred;
	MemoryContext deferred_cxt;
	TimestampTz next_deferred_progress;

	bool		outbox_pending; /* rows may wait in reliq._outbox */
	TimestampTz next_outbox_try;

	TimestampTz last_warning_at;
	int			unreported_failures;

	uint64		lease_epoch;	/* of the lease when last attached */
	char		consumer[RELIQ_CONSUMER_NAME_LEN];	/* attached to (or to be):
													 * the one the lease's
													 * holder made */
	bool		awaiting_standby;	/* logged that acks wait for a standby */
} Lane;

/* The worker: one per process (pool.c). */
struct Pool
{
	ReliqWorkerSlot *slot;
	int			index;			/* of the slot: the worker's number */
	ReliqNatsConnection *conn;
	ReliqInbox *inbox;
	bool		connected;		/* as last reported */
	bool		link_down;		/* not connected: every lane shows link_state */
	ReliqWorkerState link_state;	/* connecting, backing_off, disconnected */
	uint64		reconnects_seen;
	int			retries;
	TimestampTz retry_at;
	char		problem[RELIQ_ERROR_LEN];

	uint64		assignment_seen;
	int			assignment_retries; /* taking up a lane failed: again at */
	TimestampTz assignment_retry_at;	/* assignment_retry_at (0: no) */
	char		assignment_problem[RELIQ_ERROR_LEN];
	Lane	  **lanes;
	int			nlanes;
	int			lanes_capacity;
	int			next_lane;		/* whose turn comes first next round */
	TimestampTz next_sweep;		/* every lane gets a turn then */
	TimestampTz served_at;		/* when serve_lanes last looked at the lanes */
	TimestampTz next_refresh;	/* see pool_refresh */
	int			refresh_retries;	/* pool_refresh failed: again at
									 * next_refresh, with a backoff */
	char		refresh_problem[RELIQ_ERROR_LEN];
	bool		stopping;
	MemoryContext turn_cxt;		/* reset before each lane's turn */

	/* the messages being applied (until acked), and whose */
	Lane	   *applying_lane;
	ReliqMessage *applying;
	int			napplying;
	int64		applying_alone; /* the redelivery being applied alone */
};

/* What applying a batch found; the lane acts on it (lane.c). */
typedef enum ReliqApplyVerdict
{
	RELIQ_APPLY_DONE,			/* applied and acknowledged: go on */
	RELIQ_APPLY_HOLD,			/* failing as a whole: the batch is held */
	RELIQ_APPLY_GONE,			/* the subscription was dropped: leave */
	RELIQ_APPLY_LEASE_LOST,		/* committed, not acked: forget the consumer */
	RELIQ_APPLY_STREAM_CHANGED,	/* a new incarnation of the stream: attach
								 * anew */
	RELIQ_APPLY_DIVERGED		/* the stream lost its tail: its duplicates
								 * were not acked; stop consuming */
} ReliqApplyVerdict;

/* Loading a lane's subscription (lane.c). */
typedef enum ReliqLoadOutcome
{
	RELIQ_LOAD_OK,
	RELIQ_LOAD_GONE,			/* dropped, or the catalog not usable */
	RELIQ_LOAD_FAILED			/* an ERROR: try again later */
} ReliqLoadOutcome;

static inline TimestampTz
after_ms(int64 ms)
{
	return TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);
}

static inline long
ms_until(TimestampTz when)
{
	long		secs;
	int			usecs;

	TimestampDifference(GetCurrentTimestamp(), when, &secs, &usecs);
	return secs * 1000 + usecs / 1000;
}

/* The next try after a failure: reliq.naptime, doubling, capped. */
static inline TimestampTz
next_retry(int *retries)
{
	int64		delay = (int64) reliq_naptime << Min(*retries, 5);

	(*retries)++;
	return after_ms(Min(delay, reliq_max_retry_interval));
}

static inline bool
reliq_lane_leaving(const Lane *l)
{
	return l->state == RELIQ_LANE_LEAVING;
}

/* Attached to its consumer: it has a puller (a leaving lane may, too). */
static inline bool
reliq_lane_attached(const Lane *l)
{
	return l->puller != NULL;
}

/* What a lane shows in reliq.worker_status: its batch size, in flight. */
static inline void
reliq_lane_report_progress(Lane *l, int in_flight)
{
	if (l->status != NULL)
		reliq_lane_set_progress(l->pool->slot, l->status,
								l->sub ? l->sub->batch_size : 0, in_flight);
}

/* lane.c */
extern Lane *reliq_lane_create(Pool *p, const ReliqAssignment *assignment,
							   ReliqLoadOutcome *outcome);
extern ReliqLoadOutcome reliq_lane_load(Lane *l);
extern void reliq_lane_take_back(Lane *l);
extern void reliq_lane_begin_leaving(Lane *l, bool closing);
extern bool reliq_lane_leaving_done(Lane *l);
extern void reliq_lane_free(Lane *l);
extern void reliq_lane_detach(Lane *l);
extern void reliq_lane_publish(Lane *l);
extern char *reliq_recover_from_error(char *problem, MemoryContext cxt,
									  ResourceOwner owner);
extern bool reliq_lane_turn(Lane *l);
extern bool reliq_lane_wants_turn(Lane *l, TimestampTz now);
extern TimestampTz reliq_lane_next_wake(Lane *l, TimestampTz now,
										TimestampTz next);

/* apply.c */
extern ReliqApplyVerdict reliq_apply_collected(Lane *l, ReliqMessage *msgs,
											   int n);
extern ReliqApplyVerdict reliq_apply_probe(Lane *l);
extern ReliqApplyVerdict reliq_apply_batch(Lane *l, ReliqMessage *msgs, int n);
extern void reliq_apply_drop_held(Lane *l);
extern void reliq_apply_drain_outbox(Lane *l);
extern void reliq_apply_note_death(Pool *p);
extern bool reliq_problem_is_new(char *current, const char *message);
extern void reliq_note_problem(Lane *l, int elevel, int sqlerrcode,
							   const char *fmt,...) pg_attribute_printf(4, 5);
extern void reliq_clear_problem(Lane *l, const char *resolution);

/* lane_pull.c */
extern int	reliq_lane_collect_batch(Lane *l, ReliqMessage *msgs, int max);
extern bool reliq_lane_pulls_in_turn(Lane *l);
extern void reliq_lane_hand_on_pull_turn(Lane *l);
extern int	reliq_lane_give_back_queued(Lane *l, int64 delay_ms);
extern void reliq_lane_drop_pull_turn(Lane *l);

/* ordering.c */
extern ReliqApplyVerdict reliq_ordering_apply(Lane *l, ReliqMessage *msgs,
											  int n);
extern void reliq_ordering_note(Lane *l, const ReliqMessage *msgs, int n);
extern bool reliq_ordering_ready(Lane *l);
extern bool reliq_ordering_changed(Lane *l);
extern void reliq_ordering_received(Lane *l, ReliqMessage *msgs, int n);
extern void reliq_ordering_keep_alive(Lane *l);
extern int	reliq_ordering_release(Lane *l, int64 delay_ms);
extern void reliq_ordering_forget(Lane *l);

/* ack_gate.c */
extern void reliq_worker_wait_latch(long ms);
extern void reliq_worker_exit_if_postmaster_died(void);
extern int	reliq_ack_release(ReliqNatsConnection *conn, ReliqMessage *msgs,
							  int n, int64 delay_ms);
extern int64 reliq_ack_release_delay_ms(ReliqPuller *puller);
extern bool reliq_ack_lease_current(ReliqControl *control,
									int64 subscription_id, uint64 epoch);
extern bool reliq_ack_gate(ReliqControl *control,
						   const ReliqSubscription *sub, uint64 epoch,
						   bool *awaiting_standby, XLogRecPtr flushed);
extern bool reliq_ack_publish_outbox(ReliqNatsConnection *conn,
									 int64 subscription_id,
									 ReliqNatsStatus *st);
extern void reliq_ack_send(ReliqNatsConnection *conn,
						   const ReliqSubscription *sub, ReliqMessage *msgs,
						   const int64 *nak_delay_ms, int n, bool quick);
extern void reliq_ack_in_progress(ReliqNatsConnection *conn,
								  ReliqMessage *msgs, int n);

#endif							/* RELIQ_WORKER_INTERNAL_H */
