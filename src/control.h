/*-------------------------------------------------------------------------
 *
 * control.h
 *	  What decides whether a subscription may be consumed, kept apart
 *	  from its statistics: the lease as the monitor holds it, a pending
 *	  reliq.take_over(), whether the stream lost its tail, and the ring of
 *	  messages whose worker died applying them alone (the delivery-limit
 *	  rule).  A reset of the statistics never touches it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_CONTROL_H
#define RELIQ_CONTROL_H

#include "datatype/timestamp.h"

/*
 * Who may consume a subscription's consumer: this cluster, while it holds
 * the consumer's lease (lease.c keeps it; workers read it here).
 */
typedef enum ReliqLeaseState
{
	RELIQ_LEASE_UNKNOWN = 0,	/* not looked at yet (the monitor starting) */
	RELIQ_LEASE_OWNED,			/* held: workers may consume until valid_until */
	RELIQ_LEASE_ACQUIRING,		/* written; waiting for the former owner's
								 * time to run out, or rewinding */
	RELIQ_LEASE_FENCED,			/* another cluster holds it */
	RELIQ_LEASE_OFF				/* reliq.lease_ttl = 0: no leases */
} ReliqLeaseState;

#define RELIQ_OWNER_LEN 192
/* a durable name (64) and "-r" and a revision */
#define RELIQ_CONSUMER_NAME_LEN 96

/* A copy of a subscription's lease, as the workers and views see it. */
typedef struct ReliqLeaseView
{
	ReliqLeaseState state;
	TimestampTz valid_until;	/* OWNED: consume and ack only before this,
								 * on reliq_lease_clock() */
	uint64		epoch;			/* bumped at each acquisition (the consumer
								 * was made again: attach anew) */
	char		holder[RELIQ_OWNER_LEN];	/* who holds it, for people */
	char		consumer[RELIQ_CONSUMER_NAME_LEN];	/* the consumer its holder
													 * made (lease.c); "": the
													 * durable name */
} ReliqLeaseView;

/* A subscription's control entry (shared memory; control.c). */
typedef struct ReliqControl ReliqControl;

/* Shared memory, from shmem.c's hooks */
extern Size reliq_control_shmem_size(void);
extern void reliq_control_shmem_request(void);
extern void reliq_control_shmem_init(void);

/*
 * Entries: one per subscription, assigned by whoever needs it first (the
 * monitor, a worker, reliq.take_over()), freed by the launcher.  NULL when
 * reliq.max_subscriptions are taken.
 */
extern ReliqControl *reliq_control_find(int64 subscription_id, bool create);
extern bool reliq_control_belongs(ReliqControl *control, int64 subscription_id);
extern void reliq_control_keep_only(const int64 *subscription_ids, int count);

/* The lease, written by the monitor (lease.c), read by the workers. */
extern void reliq_lease_publish(ReliqControl *control,
								const ReliqLeaseView *lease);
extern void reliq_lease_read(ReliqControl *control, ReliqLeaseView *lease);
extern char *reliq_lease_consumer(ReliqControl *control, const char *durable);
extern TimestampTz reliq_lease_clock(void);
extern TimestampTz reliq_lease_wall_time(TimestampTz lease_time);
extern bool reliq_lease_usable(const ReliqLeaseView *lease);

/* reliq.take_over(): asked by a backend, taken by the monitor. */
extern void reliq_control_request_take_over(ReliqControl *control);
extern bool reliq_control_take_over_asked(ReliqControl *control);
extern void reliq_control_forget_take_over(ReliqControl *control);

/* The stream lost its tail: workers consume nothing while set. */
extern void reliq_control_set_diverged(ReliqControl *control, bool diverged);
extern bool reliq_control_diverged(ReliqControl *control);

/* Deaths of a worker applying one message alone (apply.c, batch.c). */
extern void reliq_control_note_death(ReliqControl *control, int64 seq);
extern int	reliq_control_deaths(ReliqControl *control, int64 seq);

/* For the statistics' snapshot: the lease and divergence of a subscription. */
extern void reliq_control_copy(int64 subscription_id, ReliqLeaseView *lease,
							   bool *diverged);

#endif							/* RELIQ_CONTROL_H */
