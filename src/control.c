/*-------------------------------------------------------------------------
 *
 * control.c
 *	  Each subscription's control entry in shared memory: what decides
 *	  whether it may be consumed, kept apart from its statistics (shmem.c)
 *	  so that neither a reset of the figures nor their layout can touch it.
 *
 *	  - the lease, as the monitor holds it (lease.c publishes it; workers,
 *	    the monitor's other duties and the views read it);
 *	  - a reliq.take_over() asked for and not yet taken up by the monitor;
 *	  - whether the stream lost its tail (workers consume nothing while
 *	    set; the monitor and a worker that met a duplicate set it);
 *	  - the messages whose worker died applying them alone (apply.c notes
 *	    them from the worker's exit callback, batch.c's delivery-limit rule
 *	    reads them).  A crash restart forgets them, as it forgets the rest.
 *
 * Locking rules
 * -------------
 * - The control lock (tranche "reliq control") guards assignment: an
 *   entry's subscription_id.  Anyone may assign a free entry (exclusive);
 *   only the launcher frees one.  Lookups take it shared.
 * - An entry's take_over_requested is an atomic.
 * - An entry's mutex (spinlock) guards the lease and diverged: a copy of
 *   a few fields, never a loop.
 * - An entry's lock (an LWLock of the same tranche) guards the ring of
 *   deaths: exclusive to write, shared to read.
 * - Order: after ReliqShared->lock (shmem.c's snapshot holds it while it
 *   copies the lease), then the control lock, then an entry's lock or
 *   mutex.  Nothing here takes a lock of shmem.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include "port/atomics.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/timestamp.h"

#include "control.h"
#include "reliq.h"
#include "settings.h"

/* Messages whose worker died applying them alone (a ring). */
#define RELIQ_DEATHS 16

struct ReliqControl
{
	int64		subscription_id;	/* 0: free */
	pg_atomic_uint32 take_over_requested;

	slock_t		mutex;
	ReliqLeaseView lease;
	bool		diverged;

	LWLock		lock;
	int64		death_seq[RELIQ_DEATHS];
	int			death_count[RELIQ_DEATHS];
	int			death_next;
};

typedef struct ReliqControlShared
{
	LWLock	   *lock;
	int			tranche;
	int			count;
	ReliqControl entries[FLEXIBLE_ARRAY_MEMBER];
} ReliqControlShared;

static ReliqControlShared *control = NULL;

Size
reliq_control_shmem_size(void)
{
	return add_size(offsetof(ReliqControlShared, entries),
					mul_size(reliq_max_subscriptions, sizeof(ReliqControl)));
}

void
reliq_control_shmem_request(void)
{
	RequestAddinShmemSpace(reliq_control_shmem_size());
	RequestNamedLWLockTranche("reliq control", 1);
}

/* From shmem.c's startup hook, under AddinShmemInitLock. */
void
reliq_control_shmem_init(void)
{
	bool		found;
	int			i;

	control = ShmemInitStruct("reliq control", reliq_control_shmem_size(), &found);
	if (!found)
	{
		control->lock = &(GetNamedLWLockTranche("reliq control"))->lock;
		control->tranche = LWLockNewTrancheId();
		control->count = reliq_max_subscriptions;
		for (i = 0; i < control->count; i++)
		{
			ReliqControl *c = &control->entries[i];

			memset(c, 0, sizeof(*c));
			pg_atomic_init_u32(&c->take_over_requested, 0);
			SpinLockInit(&c->mutex);
			LWLockInitialize(&c->lock, control->tranche);
		}
	}
	LWLockRegisterTranche(control->tranche, "reliq control");
}

static ReliqControl *
lookup(int64 subscription_id)
{
	int			i;

	for (i = 0; i < control->count; i++)
		if (control->entries[i].subscription_id == subscription_id)
			return &control->entries[i];
	return NULL;
}

/*
 * A free entry given to a subscription.  A worker of a former one may not
 * have exited yet and still read it: everything is written under the
 * usual locks.
 */
static void
clear(ReliqControl *c)
{
	pg_atomic_write_u32(&c->take_over_requested, 0);
	SpinLockAcquire(&c->mutex);
	memset(&c->lease, 0, sizeof(c->lease));
	c->diverged = false;
	SpinLockRelease(&c->mutex);
	LWLockAcquire(&c->lock, LW_EXCLUSIVE);
	memset(c->death_seq, 0, sizeof(c->death_seq));
	memset(c->death_count, 0, sizeof(c->death_count));
	c->death_next = 0;
	LWLockRelease(&c->lock);
}

ReliqControl *
reliq_control_find(int64 subscription_id, bool create)
{
	ReliqControl *c;
	int			i;

	Assert(subscription_id != 0);
	LWLockAcquire(control->lock, LW_SHARED);
	c = lookup(subscription_id);
	LWLockRelease(control->lock);
	if (c != NULL || !create)
		return c;

	LWLockAcquire(control->lock, LW_EXCLUSIVE);
	c = lookup(subscription_id);
	for (i = 0; c == NULL && i < control->count; i++)
	{
		if (control->entries[i].subscription_id == 0)
		{
			c = &control->entries[i];
			clear(c);
			c->subscription_id = subscription_id;
		}
	}
	LWLockRelease(control->lock);
	return c;
}

/*
 * Still the entry of this subscription?  The launcher frees the entry of a
 * dropped subscription and may hand it to another: a lane still finishing
 * must not read that one's.
 */
bool
reliq_control_belongs(ReliqControl *c, int64 subscription_id)
{
	return c != NULL && c->subscription_id == subscription_id;
}

/* Free the entries of subscriptions that no longer exist (launcher only). */
void
reliq_control_keep_only(const int64 *subscription_ids, int count)
{
	int			i,
				j;

	LWLockAcquire(control->lock, LW_EXCLUSIVE);
	for (i = 0; i < control->count; i++)
	{
		ReliqControl *c = &control->entries[i];
		bool		keep = false;

		if (c->subscription_id == 0)
			continue;
		for (j = 0; j < count && !keep; j++)
			keep = (subscription_ids[j] == c->subscription_id);
		if (!keep)
			c->subscription_id = 0;
	}
	LWLockRelease(control->lock);
}

/* The monitor publishes what it holds. */
void
reliq_lease_publish(ReliqControl *c, const ReliqLeaseView *lease)
{
	SpinLockAcquire(&c->mutex);
	c->lease = *lease;
	SpinLockRelease(&c->mutex);
}

void
reliq_lease_read(ReliqControl *c, ReliqLeaseView *lease)
{
	SpinLockAcquire(&c->mutex);
	*lease = c->lease;
	SpinLockRelease(&c->mutex);
}

/*
 * The name of the consumer a subscription's workers attach to and the
 * monitor asks after: the one its lease's holder made (lease.c), or the
 * durable name (leases off, no control entry, or not known yet).
 */
char *
reliq_lease_consumer(ReliqControl *c, const char *durable)
{
	ReliqLeaseView lease;

	if (c == NULL)
		return pstrdup(durable);
	reliq_lease_read(c, &lease);
	return pstrdup(lease.consumer[0] != '\0' ? lease.consumer : durable);
}

/*
 * The clock of a lease's validity, in microseconds: CLOCK_BOOTTIME, which
 * no setting of the wall clock moves and which goes on while the machine
 * is suspended (a suspended owner's lease runs out, as the taker's wait
 * does).  One clock for every process of the machine.
 */
TimestampTz
reliq_lease_clock(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_BOOTTIME, &ts);
	return (TimestampTz) ts.tv_sec * USECS_PER_SEC + ts.tv_nsec / 1000;
}

/* A time of the lease clock as a wall-clock timestamp, for people. */
TimestampTz
reliq_lease_wall_time(TimestampTz lease_time)
{
	return GetCurrentTimestamp() + (lease_time - reliq_lease_clock());
}

/* May this cluster consume, and acknowledge, now? */
bool
reliq_lease_usable(const ReliqLeaseView *lease)
{
	return lease->state == RELIQ_LEASE_OFF ||
		(lease->state == RELIQ_LEASE_OWNED &&
		 reliq_lease_clock() < lease->valid_until);
}

void
reliq_control_request_take_over(ReliqControl *c)
{
	pg_atomic_write_u32(&c->take_over_requested, 1);
}

/* Asked for since the last call?  (Taken up: asked no more.) */
bool
reliq_control_take_over_asked(ReliqControl *c)
{
	return pg_atomic_exchange_u32(&c->take_over_requested, 0) != 0;
}

void
reliq_control_forget_take_over(ReliqControl *c)
{
	pg_atomic_write_u32(&c->take_over_requested, 0);
}

/*
 * The stream lost its tail (set by the monitor, or by a worker that met a
 * duplicate; cleared by the monitor once reliq.accept_stream_loss() has
 * moved the floor and the consumer was rewound).
 */
void
reliq_control_set_diverged(ReliqControl *c, bool diverged)
{
	SpinLockAcquire(&c->mutex);
	c->diverged = diverged;
	SpinLockRelease(&c->mutex);
}

bool
reliq_control_diverged(ReliqControl *c)
{
	bool		diverged;

	SpinLockAcquire(&c->mutex);
	diverged = c->diverged;
	SpinLockRelease(&c->mutex);
	return diverged;
}

/*
 * A worker died (FATAL: terminated, cancelled out) while applying the
 * message `seq` in a transaction of its own.  Recorded for the
 * delivery-limit rule of batch.c.
 */
void
reliq_control_note_death(ReliqControl *c, int64 seq)
{
	int			i;

	LWLockAcquire(&c->lock, LW_EXCLUSIVE);
	for (i = 0; i < RELIQ_DEATHS; i++)
		if (c->death_seq[i] == seq)
			break;
	if (i == RELIQ_DEATHS)
	{
		i = c->death_next;
		c->death_next = (c->death_next + 1) % RELIQ_DEATHS;
		c->death_seq[i] = seq;
		c->death_count[i] = 0;
	}
	c->death_count[i]++;
	LWLockRelease(&c->lock);
}

int
reliq_control_deaths(ReliqControl *c, int64 seq)
{
	int			count = 0;
	int			i;

	LWLockAcquire(&c->lock, LW_SHARED);
	for (i = 0; i < RELIQ_DEATHS; i++)
		if (c->death_seq[i] == seq)
			count = c->death_count[i];
	LWLockRelease(&c->lock);
	return count;
}

/*
 * A subscription's lease and divergence, for a snapshot of its figures;
 * unknown and not diverged when it has no entry yet.
 */
void
reliq_control_copy(int64 subscription_id, ReliqLeaseView *lease, bool *diverged)
{
	ReliqControl *c;

	memset(lease, 0, sizeof(*lease));
	*diverged = false;
	LWLockAcquire(control->lock, LW_SHARED);
	c = lookup(subscription_id);
	if (c != NULL)
	{
		SpinLockAcquire(&c->mutex);
		*lease = c->lease;
		*diverged = c->diverged;
		SpinLockRelease(&c->mutex);
	}
	LWLockRelease(control->lock);
}
