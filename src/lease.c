/*-------------------------------------------------------------------------
 *
 * lease.c
 *	  One owner at a time.  A promoted standby and its old primary, a
 *	  restored copy and its original, a PITR clone: any two PostgreSQL
 *	  clusters pointed at one NATS could consume one subscription together
 *	  and split its stream between two databases.  So each consumer has a
 *	  lease, kept on the NATS side in a JetStream key-value bucket
 *	  (reliq.lease_bucket), key "<stream>.<consumer>", whose value names
 *	  the owning cluster instance: system identifier, timeline, and a
 *	  random id drawn by the postmaster at start (so a copy of the data
 *	  directory, or the same server after a restart, is another instance).
 *
 * Two kinds of keys, so that a thousand subscriptions cost one write per
 * round, not a thousand:
 *
 *	 - "=alive.<instance>": the instance's heartbeat, renewed by
 *	   compare-and-set on the revision it wrote last, every lease_ttl / 4
 *	   (reliq_lease_round, run by the monitor).
 *	 - "<stream>.<consumer>": the consumer's owner, written only when an
 *	   instance acquires it.
 *
 * Workers only read the outcome in shared memory (reliq_lease_usable),
 * before they pull and again before they acknowledge.  The rules:
 *
 *	 - An instance may consume the consumers whose owner key names it
 *	   until 3/4 of lease_ttl after its last heartbeat renewal was sent.
 *	 - An owner key naming another instance is taken, by compare-and-set,
 *	   only once this monitor has seen that instance's heartbeat at the
 *	   same revision for a whole lease_ttl on its own clock (the owner
 *	   sent that revision before it was first seen, so it stopped consuming
 *	   before), or marked released (a clean shutdown, below).  No clocks
 *	   are compared across machines.  The heartbeat carries the lease_ttl
 *	   its owner renews with, and the taker waits for the longer of that
 *	   and its own: two clusters configured differently cannot shorten
 *	   each other's lease.
 *	 - An owner key naming an earlier run of this very server (same
 *	   lineage, machine boot and data directory, another postmaster) is
 *	   taken at once, with the rewind: PostgreSQL starts no postmaster
 *	   while a process of the former remains attached to its shared
 *	   memory, as every reliq process is.  A restart in place (a crash, an
 *	   immediate stop) waits for no lease_ttl; a copy elsewhere does.
 *	 - An owner key is written "acquiring" (with the wait before consuming)
 *	   until the rewind is done, then plainly.  A monitor or server that
 *	   restarts meanwhile acquires again, wait and rewind included, instead
 *	   of consuming from the former owner's position.
 *	 - Lease intervals are measured on clocks no setting of the wall clock
 *	   moves: an owner's validity on CLOCK_BOOTTIME (reliq_lease_clock,
 *	   which counts a suspension), a taker's waits on CLOCK_MONOTONIC
 *	   (which does not: a suspended taker waits longer, never shorter).
 *	   A heartbeat's "seen" time is taken after the read that saw it.
 *	 - Ownership is confirmed by writes, never by a read alone: after its
 *	   heartbeat was written over, an owner writes each owner key still
 *	   naming it at the revision it read; a taker's write at the same
 *	   revision then fails, or the owner's does.
 *	 - Before taking a consumer, the taker writes over the former owner's
 *	   heartbeat ("revoked"), by compare-and-set on the revision it saw.
 *	   If that fails, the owner is alive: nothing is taken.  If it
 *	   succeeds, the owner's next renewal fails; it then stops consuming
 *	   everything at once, reads its owner keys again, and goes on with
 *	   those still its own.  An owner that was merely cut off cannot come
 *	   back believing it still owns what was taken meanwhile.
 *	 - reliq.take_over() does the same at once, and this cluster waits a
 *	   lease_ttl before consuming: the former owner's validity, from its
 *	   last renewal, has run out by then.
 *	 - Whenever this instance acquires a consumer it did not hold, the
 *	   consumer may be ahead of what this database has applied (the old
 *	   primary acked batches that never reached this standby; the original
 *	   went on after the dump).  The database owns the position: the
 *	   consumer is deleted and made again after the floor this database's
 *	   own bookkeeping proves applied (reliq._stream_floor: written where
 *	   the consumer stood when the subscription was created, raised by this
 *	   lineage only while it held the lease, and replicated in WAL order
 *	   after the commits it covers), and the ledger absorbs what this
 *	   database already has.  Streams whose retention deletes acked messages
 *	   (interest, work queue) cannot redeliver: they are not rewound, and
 *	   health() says so.
 *	 - Each acquisition makes a consumer of its own: "<durable>-r<N>",
 *	   N the owner key's revision the acquisition replaced (no two
 *	   acquisitions replace the same revision), or the durable name for
 *	   the first owner (no owner key).  The owner key names it; the new
 *	   consumer is made first, then the former owners' are deleted
 *	   (retire_former_consumers).  An ACK, NAK, in-progress or TERM of a
 *	   former owner's late worker names its own consumer in the reply
 *	   subject, so it reaches no consumer at all, where with one name for
 *	   every owner nats-server applied it to the new owner's delivery of
 *	   that stream sequence (and lost it, if the new owner then NAKed).
 *	   Workers under a lease attach only to the consumer the owner key
 *	   names, published in shared memory, and never make one; a consumer
 *	   deleted on the server is made again by the holder's monitor.
 *	 - The epoch in shared memory moves at each acquisition, so workers
 *	   attached before attach anew to the consumer made again.
 *	 - A clean shutdown (postmaster.pid says "stopping") marks the
 *	   heartbeat released once the launcher and every worker have exited;
 *	   the next cluster takes the consumers at once.  A switchover or a
 *	   restart then waits for no lease_ttl.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include "access/xlog.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/pmsignal.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "lease.h"
#include "lease_internal.h"
#include "nats_client.h"
#include "reliq.h"
#include "shmem.h"
#include "xact.h"

/* What the monitor alone knows of each lease. */
typedef struct LeaseTrack
{
	int64		id;
	char		key[160];
	char		base[RELIQ_CONSUMER_NAME_LEN];	/* the durable name */
	uint64		held;			/* revision of the owner key this instance
								 * wrote; 0: not held */
	TimestampTz consume_after;	/* ACQUIRING: the former holder is done */
	bool		present;		/* still a subscription (this round) */
	bool		no_rewind_noted;
	bool		recheck;		/* held: confirm the owner key (by a write) */
	TimestampTz acquiring_since;	/* fenced by an earlier run of ours */
	ReliqLeaseView view;
} LeaseTrack;

static void holder_consumer(LeaseTrack *t, const char *value);
static bool confirm_owner(ReliqNatsConnection *conn, LeaseTrack *t);

static LeaseTrack *tracks = NULL;
static int	ntracks = 0;
static int	maxtracks = 0;

/* This instance's heartbeat. */
static uint64 alive_revision = 0;	/* as written last; 0: not yet */
static TimestampTz alive_valid_until = 0;	/* consume until then */
static bool rescan = true;		/* read the owner keys of held leases */
static bool renewal_failed = false; /* the last write of the heartbeat */

/* Other instances' heartbeats, as this monitor has seen them. */
typedef struct Heartbeat
{
	char		instance[32];
	uint64		revision;		/* 0: no heartbeat key */
	TimestampTz seen_at;		/* when that revision was first seen */
	bool		stopped;		/* unchanged for a whole wait, then revoked
								 * by us: every consumer it held is free */
	bool		released;
	char	   *value;			/* in TopMemoryContext */
	int64		round;			/* read in this round already */
} Heartbeat;

static Heartbeat *heartbeats = NULL;
static int	nheartbeats = 0;
static int	maxheartbeats = 0;
static int64 round_number = 0;

/*
 * The clock of a taker's waits (a heartbeat unchanged for a ttl, the wait
 * before consuming): CLOCK_MONOTONIC, which no setting of the wall clock
 * moves and which stands still while this machine is suspended, so a
 * suspended taker waits longer, never shorter.  The owner's validity is on
 * reliq_lease_clock() (shmem.c), which does count a suspension.
 */
static TimestampTz
wait_clock(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (TimestampTz) ts.tv_sec * USECS_PER_SEC + ts.tv_nsec / 1000;
}

long
reliq_lease_renew_interval_ms(void)
{
	return Max(reliq_lease_ttl / 4, 10);
}

static void
describe_holder(LeaseTrack *t, const char *value)
{
	snprintf(t->view.holder, sizeof(t->view.holder),
			 "system %s timeline %s at %s:%s (database %s, instance %s)",
			 reliq_lease_field(value, "system"), reliq_lease_field(value, "timeline"),
			 reliq_lease_field(value, "host"), reliq_lease_field(value, "port"),
			 reliq_lease_field(value, "database"), reliq_lease_field(value, "instance"));
}

static void
describe_me(LeaseTrack *t)
{
	describe_holder(t, reliq_lease_identity_value());
}

static LeaseTrack *
track_for(const ReliqWatched *w)
{
	char		key[160];
	int			i;

	snprintf(key, sizeof(key), "%s.%s", w->stream, w->consumer);
	for (i = 0; i < ntracks; i++)
		if (tracks[i].id == w->id)
		{
			if (strcmp(tracks[i].key, key) != 0)
				break;			/* consumer renamed: start afresh */
			return &tracks[i];
		}
	if (i == ntracks)
	{
		if (ntracks == maxtracks)
		{
			maxtracks = Max(16, maxtracks * 2);
			tracks = tracks == NULL ?
				MemoryContextAlloc(TopMemoryContext, sizeof(LeaseTrack) * maxtracks) :
				repalloc(tracks, sizeof(LeaseTrack) * maxtracks);
		}
		ntracks++;
	}
	memset(&tracks[i], 0, sizeof(LeaseTrack));
	tracks[i].id = w->id;
	strlcpy(tracks[i].key, key, sizeof(tracks[i].key));
	strlcpy(tracks[i].base, w->consumer, sizeof(tracks[i].base));
	strlcpy(tracks[i].view.consumer, w->consumer, sizeof(tracks[i].view.consumer));
	return &tracks[i];
}

/*
 * Make a held consumer start again right after this database's floor, as
 * an acquisition does, under the same name, and move the epoch, so that a
 * worker still attached to the consumer as it was attaches anew: after
 * reliq.accept_stream_loss() moved the floor of a subscription whose
 * stream lost its tail, or when the consumer was deleted on the server
 * (workers under a lease make none).  True when done.
 * (Leases off: no epoch to move; the workers detached when the stream
 * diverged, and attach again when the state clears.)
 */
bool
reliq_lease_rewind(ReliqNatsConnection *conn, const ReliqWatched *w,
				   const char *why)
{
	LeaseTrack	untracked;
	LeaseTrack *t = NULL;
	ReliqControl *control;
	int			i;

	for (i = 0; i < ntracks; i++)
		if (tracks[i].id == w->id)
			t = &tracks[i];
	if (t == NULL)
	{
		memset(&untracked, 0, sizeof(untracked));
		t = &untracked;
	}

	/*
	 * Held: confirmed by a write first.  A taker deletes the former owner's
	 * consumer right after writing the owner key, and this instance may
	 * not have seen its heartbeat written over yet: it must not make again
	 * what its successor just deleted (it would be left on the server,
	 * holding an interest stream's messages, with nobody to delete it).
	 */
	if (t->held != 0 && t->view.state == RELIQ_LEASE_OWNED && !confirm_owner(conn, t))
		return false;
	if (!reliq_lease_make_consumer(conn, w, t->view.consumer, t->view.epoch + 1,
								   &t->no_rewind_noted, why))
		return false;
	control = reliq_control_find(w->id, false);
	if (t != &untracked && t->held != 0 && t->view.state == RELIQ_LEASE_OWNED)
	{
		t->view.epoch++;
		if (control != NULL)
			reliq_lease_publish(control, &t->view);
	}
	return true;
}

/* The key of an instance's heartbeat. */
static char *
heartbeat_key(const char *instance)
{
	return psprintf("=alive.%s", instance);
}

/*
 * Another instance's heartbeat, read once per round (a fenced or taking
 * cluster looks at each former owner once, however many consumers it had).
 */
static Heartbeat *
heartbeat_of(ReliqNatsConnection *conn, const char *instance)
{
	Heartbeat  *h = NULL;
	char	   *value;
	uint64		revision;
	TimestampTz now;
	int			i;

	for (i = 0; i < nheartbeats; i++)
		if (strcmp(heartbeats[i].instance, instance) == 0)
			h = &heartbeats[i];
	if (h != NULL && h->round == round_number)
		return h;
	if (!reliq_nats_kv_get(conn, heartbeat_key(instance), &value, &revision, NULL))
		return NULL;
	now = wait_clock();			/* after the read: it was seen by then */
	if (h == NULL)
	{
		if (nheartbeats == maxheartbeats)
		{
			maxheartbeats = Max(8, maxheartbeats * 2);
			heartbeats = heartbeats == NULL ?
				MemoryContextAlloc(TopMemoryContext, sizeof(Heartbeat) * maxheartbeats) :
				repalloc(heartbeats, sizeof(Heartbeat) * maxheartbeats);
		}
		h = &heartbeats[nheartbeats++];
		memset(h, 0, sizeof(*h));
		strlcpy(h->instance, instance, sizeof(h->instance));
		h->revision = revision;
		h->seen_at = now;
	}
	else if (revision != h->revision)
	{
		/* written since, by its owner or by another taker */
		h->revision = revision;
		h->seen_at = now;
		h->stopped = false;
	}
	if (h->value)
		pfree(h->value);
	h->value = MemoryContextStrdup(TopMemoryContext, revision ? value : "");
	h->released = revision != 0 && strcmp(reliq_lease_field(value, "released"), "true") == 0;
	h->round = round_number;
	return h;
}

/*
 * Write over another instance's heartbeat (compare-and-set on the revision
 * seen), so that it cannot renew without reading its owner keys again.
 * False if it moved: that instance is alive.
 */
static bool
revoke_heartbeat(ReliqNatsConnection *conn, Heartbeat *h)
{
	uint64		written;
	char	   *value;

	if (h->released || h->stopped)
		return true;			/* it is gone and said so, or we said so */
	value = psprintf("{\"instance\":\"%s\",\"revoked_by\":\"%s\"}",
					 h->instance, reliq_lease_instance());
	if (reliq_nats_kv_put(conn, heartbeat_key(h->instance), value, h->revision,
						  &written, NULL) != RELIQ_KV_OK)
		return false;
	h->revision = written;
	h->seen_at = wait_clock();
	return true;
}

/*
 * Held by another instance whose heartbeat has not run out.  Fenced; but
 * where the holder is most likely this server before a reboot (same
 * lineage, same host and data directory, another boot), "acquiring" for
 * at most two of its ttls: a heartbeat that still moves after that belongs
 * to something alive, and this server is fenced.
 */
static void
become_fenced(LeaseTrack *t, const char *value, TimestampTz now)
{
	const char *mine = reliq_lease_identity_value();
	bool		same_place = reliq_lease_same_lineage(value) &&
		strcmp(reliq_lease_field(value, "host"), reliq_lease_field(mine, "host")) == 0 &&
		strcmp(reliq_lease_field(value, "datadir"), reliq_lease_field(mine, "datadir")) == 0;

	describe_holder(t, value);
	holder_consumer(t, value);
	t->view.valid_until = 0;
	if (t->view.state == RELIQ_LEASE_UNKNOWN && same_place)
	{
		t->view.state = RELIQ_LEASE_ACQUIRING;
		t->acquiring_since = now;
	}
	else if (t->view.state != RELIQ_LEASE_ACQUIRING || !same_place ||
			 now - t->acquiring_since >= (int64) 2 * reliq_lease_owner_wait_ms(value) * 1000)
		t->view.state = RELIQ_LEASE_FENCED;
}

/*
 * Write the owner key over revision (0: it must not exist) as an
 * acquisition: this instance consumes wait_ms later, after the rewind.
 * Until the rewind is done the key says "acquiring_wait_ms", so that a
 * monitor or server that restarts meanwhile waits and rewinds again
 * rather than consume from the former owner's position (settle_owner
 * writes the plain identity afterwards).
 */
static char *
acquiring_value(LeaseTrack *t, int wait_ms)
{
	const char *identity = reliq_lease_identity_value();

	return psprintf("%.*s,\"consumer\":\"%s\",\"acquiring_wait_ms\":%d}",
					(int) strlen(identity) - 1, identity, t->view.consumer,
					Max(wait_ms, 0));
}

/* The owner key of a settled owner: its identity and its consumer. */
static char *
owned_value(LeaseTrack *t)
{
	const char *identity = reliq_lease_identity_value();

	return psprintf("%.*s,\"consumer\":\"%s\"}",
					(int) strlen(identity) - 1, identity, t->view.consumer);
}

/*
 * The consumer an owner key's holder consumes: the one it names, or the
 * durable name (an owner key written by reliq 0.2).
 */
static void
holder_consumer(LeaseTrack *t, const char *value)
{
	char	   *named = reliq_lease_field(value, "consumer");

	strlcpy(t->view.consumer, named[0] ? named : t->base,
			sizeof(t->view.consumer));
}

static bool
write_owner(ReliqNatsConnection *conn, LeaseTrack *t, uint64 revision,
			int wait_ms, TimestampTz now)
{
	uint64		written;
	char		before[RELIQ_CONSUMER_NAME_LEN];

	/*
	 * A consumer of its own for each acquisition, named after the revision
	 * this write replaces (no two acquisitions replace the same one); the
	 * durable name for the first owner.  A former owner's late acks, NAKs
	 * and in-progress acks name its consumer, which no longer exists once
	 * this one is made: they cannot touch this owner's deliveries.
	 */
	strlcpy(before, t->view.consumer, sizeof(before));
	if (revision == 0)
		strlcpy(t->view.consumer, t->base, sizeof(t->view.consumer));
	else
		snprintf(t->view.consumer, sizeof(t->view.consumer), "%s-r" UINT64_FORMAT,
				 t->base, revision);
	if (reliq_nats_kv_put(conn, t->key, acquiring_value(t, wait_ms),
						  revision, &written, NULL) != RELIQ_KV_OK)
	{
		strlcpy(t->view.consumer, before, sizeof(t->view.consumer));
		return false;
	}
	t->held = written;
	t->consume_after = TimestampTzPlusMilliseconds(now, Max(wait_ms, 0));
	t->view.state = RELIQ_LEASE_ACQUIRING;
	t->view.valid_until = alive_valid_until;
	describe_me(t);
	return true;
}

/*
 * The rewind is done: the owner key names this instance plainly (written
 * at the revision held, so a take-over meanwhile wins).  True if written.
 */
static bool
settle_owner(ReliqNatsConnection *conn, LeaseTrack *t)
{
	uint64		written;

	if (reliq_nats_kv_put(conn, t->key, owned_value(t), t->held,
						  &written, NULL) != RELIQ_KV_OK)
		return false;
	t->held = written;
	return true;
}

/*
 * A held and settled lease, confirmed by a write at the revision held.
 * Written over meanwhile: not usable until the owner keys are read again.
 */
static bool
confirm_owner(ReliqNatsConnection *conn, LeaseTrack *t)
{
	ReliqControl *control;

	if (settle_owner(conn, t))
		return true;
	t->view.valid_until = 0;
	t->recheck = true;
	control = reliq_control_find(t->id, false);
	if (control != NULL)
		reliq_lease_publish(control, &t->view);
	return false;
}

/* An owner key written by an acquisition whose rewind is not done: its wait. */
static bool
owner_unsettled(const char *value, int *wait_ms)
{
	char	   *wait = reliq_lease_field(value, "acquiring_wait_ms");

	*wait_ms = atoi(wait);
	return wait[0] != '\0';
}

/*
 * Look at a consumer this instance does not hold, and take it if it may:
 * nobody owns it, or its owner's heartbeat is released, or unrenewed for
 * a whole lease_ttl (then revoked first).
 */
static void
try_acquire(ReliqNatsConnection *conn, const ReliqWatched *w, LeaseTrack *t,
			TimestampTz now)
{
	uint64		revision;
	char	   *value;
	char	   *owner;
	Heartbeat  *h;
	bool		unsettled;
	int			wait_ms;

	if (!reliq_nats_kv_get(conn, t->key, &value, &revision, NULL))
		return;
	if (revision == 0)
	{
		(void) write_owner(conn, t, 0, 0, now);
		return;
	}
	owner = reliq_lease_field(value, "instance");
	unsettled = owner_unsettled(value, &wait_ms);
	if (strcmp(owner, reliq_lease_instance()) == 0)
	{
		/*
		 * The monitor restarted under the same postmaster.  In the middle
		 * of an acquisition (its rewind not done; a take-over's former
		 * owner perhaps still consuming): acquire again, wait included.
		 * Otherwise it is ours as it was: confirmed by a write.
		 */
		if (unsettled)
			(void) write_owner(conn, t, revision, wait_ms, now);
		else
		{
			t->held = revision;
			holder_consumer(t, value);
			if (settle_owner(conn, t))
			{
				t->view.state = RELIQ_LEASE_OWNED;
				t->view.valid_until = alive_valid_until;
				describe_me(t);
			}
			else
				t->held = 0;
		}
		return;
	}
	if (reliq_lease_earlier_run(value))
	{
		/*
		 * This server restarted in place (a crash, an immediate stop): at
		 * once, with the rewind (a restore in place is older than its
		 * consumer); after the wait of an acquisition it had not finished.
		 */
		if (write_owner(conn, t, revision, unsettled ? wait_ms : 0, now))
			ereport(LOG,
					(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
					 errmsg("reliq subscription \"%s\": took over consumer \"%s\" at once from this server's earlier run",
							w->name, w->consumer),
					 errdetail("The holder ran in this data directory on this machine since its last boot, and PostgreSQL starts no postmaster while a process of the former one remains.")));
		return;
	}
	h = heartbeat_of(conn, owner);
	if (h == NULL)
		return;					/* cannot tell now */
	if (h->released)
	{
		/* its owner shut down cleanly, after its workers had exited */
		if (write_owner(conn, t, revision, 0, now))
			ereport(LOG,
					(errmsg("reliq subscription \"%s\": took over consumer \"%s\", released by %s at its shutdown",
							w->name, w->consumer, value)));
		return;
	}
	if (h->stopped || now - h->seen_at >= (int64) reliq_lease_owner_wait_ms(h->value) * 1000)
	{
		/*
		 * Unrenewed for a whole lease_ttl, its own and ours: it has
		 * stopped, and every consumer it held may be taken at once (not one
		 * per lease_ttl, as when each revoke started the wait anew).
		 */
		int			waited = reliq_lease_owner_wait_ms(h->value);

		if (revoke_heartbeat(conn, h))
			h->stopped = true;
		if (h->stopped && write_owner(conn, t, revision, 0, now))
		{
			ereport(LOG,
					(errmsg("reliq subscription \"%s\": took over consumer \"%s\" from %s, whose heartbeat had not moved for %d ms",
							w->name, w->consumer, value, waited)));
			return;
		}
	}
	become_fenced(t, value, now);
}

/* reliq.take_over(): take the consumer from whoever owns it now. */
static void
take_over(ReliqNatsConnection *conn, const ReliqWatched *w, LeaseTrack *t,
		  ReliqControl *control, TimestampTz now)
{
	uint64		revision;
	char	   *value;
	Heartbeat  *h = NULL;
	int			wait_ms = reliq_lease_ttl;

	if (!reliq_nats_kv_get(conn, t->key, &value, &revision, NULL))
		goto retry;
	if (revision != 0 && strcmp(reliq_lease_field(value, "instance"), reliq_lease_instance()) != 0)
	{
		h = heartbeat_of(conn, reliq_lease_field(value, "instance"));
		if (h == NULL)
			goto retry;
		wait_ms = reliq_lease_owner_wait_ms(h->value);	/* read before the revoke */
		if (h->revision != 0 && !revoke_heartbeat(conn, h))
			goto retry;
	}
	if (!write_owner(conn, t, revision, wait_ms, now))
		goto retry;
	ereport(LOG,
			(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
			 errmsg("reliq subscription \"%s\": taking over consumer \"%s\" from %s; consuming in %d ms",
					w->name, w->consumer, revision ? value : "nobody", wait_ms),
			 errdetail("The former owner stops within that time, when its own heartbeat runs out.")));
	return;

retry:
	reliq_control_request_take_over(control);	/* next round */
}

/* A held lease, after this instance's heartbeat was written over. */
static void
check_still_mine(ReliqNatsConnection *conn, const ReliqWatched *w,
				 LeaseTrack *t, TimestampTz now)
{
	uint64		revision;
	char	   *value;

	if (!reliq_nats_kv_get(conn, t->key, &value, &revision, NULL))
	{
		t->view.valid_until = 0;	/* unknown: not usable this round */
		return;
	}
	if (revision != 0 && strcmp(reliq_lease_field(value, "instance"), reliq_lease_instance()) == 0)
	{
		/*
		 * Confirmed by a write, not by the read: a taker revokes the
		 * heartbeat, then writes the owner key at the revision it read.
		 * Read between the two, the key still names us; writing it at that
		 * revision makes exactly one of us win.  (The read may also be an
		 * older replica's answer: the write is the leader's.)  The value
		 * is of the same kind: an acquisition stays one.
		 */
		uint64		written;
		char	   *mine = t->view.state == RELIQ_LEASE_ACQUIRING ?
			acquiring_value(t, (int) ((t->consume_after - now) / 1000)) :
			owned_value(t);

		switch (reliq_nats_kv_put(conn, t->key, mine, revision, &written, NULL))
		{
			case RELIQ_KV_OK:
				t->held = written;
				t->view.valid_until = alive_valid_until;
				t->recheck = false;
				return;
			case RELIQ_KV_ERROR:
				t->view.valid_until = 0;	/* unknown: not usable this round */
				return;
			case RELIQ_KV_CONFLICT:
				break;			/* it moved: read it again */
		}
		if (!reliq_nats_kv_get(conn, t->key, &value, &revision, NULL))
		{
			t->view.valid_until = 0;
			return;
		}
		if (revision != 0 && strcmp(reliq_lease_field(value, "instance"), reliq_lease_instance()) == 0)
		{
			t->view.valid_until = 0;	/* ours, unconfirmed: next round */
			return;
		}
	}
	if (revision == 0)
	{
		/* gone (deleted by hand, or the bucket was lost): take it again */
		t->held = 0;
		t->recheck = false;
		(void) write_owner(conn, t, 0, 0, now);
		return;
	}
	t->recheck = false;
	ereport(WARNING,
			(errcode(ERRCODE_OBJECT_IN_USE),
			 errmsg("reliq subscription \"%s\": another cluster took over consumer \"%s\"; this cluster stops consuming it",
					w->name, w->consumer),
			 errdetail("The lease is now held by %s.", value),
			 errhint("To take it back: SELECT reliq.take_over('%s');", w->name)));
	t->held = 0;
	t->view.state = RELIQ_LEASE_FENCED;
	become_fenced(t, value, now);
}

static void
step(ReliqNatsConnection *conn, const ReliqWatched *w, LeaseTrack *t)
{
	ReliqControl *control = reliq_control_find(w->id, true);
	TimestampTz now = wait_clock();

	if (control != NULL && t->view.state == RELIQ_LEASE_UNKNOWN && t->view.epoch == 0)
	{
		ReliqLeaseView before;

		/* a restarted monitor goes on from the epoch the workers know */
		reliq_lease_read(control, &before);
		t->view.epoch = before.epoch;
	}

	if (control != NULL && t->held == 0 &&
		reliq_control_take_over_asked(control))
		take_over(conn, w, t, control, now);
	else if (control != NULL && t->held != 0)
		reliq_control_forget_take_over(control);	/* ours already */

	if (t->held != 0 && (rescan || t->recheck))
	{
		t->recheck = true;
		check_still_mine(conn, w, t, now);
	}
	else if (t->held != 0)
		t->view.valid_until = alive_valid_until;
	else
		try_acquire(conn, w, t, now);

	if (t->held != 0 && t->view.state == RELIQ_LEASE_ACQUIRING &&
		wait_clock() >= t->consume_after &&
		reliq_lease_make_consumer(conn, w, t->view.consumer, t->view.epoch + 1,
								  &t->no_rewind_noted,
						"This cluster has just acquired the consumer's lease; redeliveries of what this database already applied are absorbed by its ledger."))
	{
		if (settle_owner(conn, t))
		{
			t->view.state = RELIQ_LEASE_OWNED;
			t->view.epoch++;
		}
		else
		{
			/* taken meanwhile, or unknown: read it again next round */
			t->view.valid_until = 0;
			t->recheck = true;
		}
	}
	if (control != NULL)
		reliq_lease_publish(control, &t->view);
}

/*
 * Renew this instance's heartbeat.  If someone wrote over it (took a
 * consumer from us), or it is gone (the bucket was lost), stop consuming
 * everything at once and read the owner keys again this round.
 */
static bool
renew_heartbeat(ReliqNatsConnection *conn)
{
	char	   *key = heartbeat_key(reliq_lease_instance());
	TimestampTz sent = reliq_lease_clock();
	uint64		written;
	uint64		revision;
	char	   *value;
	int			i;

	switch (reliq_nats_kv_put(conn, key, reliq_lease_heartbeat_value(),
							  alive_revision, &written, NULL))
	{
		case RELIQ_KV_OK:
			alive_revision = written;
			alive_valid_until = TimestampTzPlusMilliseconds(sent, reliq_lease_ttl * 3 / 4);
			renewal_failed = false;
			return true;
		case RELIQ_KV_ERROR:
			renewal_failed = true;
			return false;		/* unrenewed, the leases lapse by themselves */
		case RELIQ_KV_CONFLICT:
			break;
	}

	/* written over: nothing of ours is usable until read again */
	alive_valid_until = 0;
	for (i = 0; i < ntracks; i++)
		if (tracks[i].held != 0)
		{
			ReliqControl *control = reliq_control_find(tracks[i].id, false);

			tracks[i].view.valid_until = 0;
			if (control != NULL)
				reliq_lease_publish(control, &tracks[i].view);
		}
	if (alive_revision != 0)
		ereport(LOG,
				(errmsg("reliq monitor: this cluster's heartbeat was written over (a consumer was taken over, or the lease bucket was lost); checking which consumers are still its own")));
	rescan = true;
	renewal_failed = true;
	if (!reliq_nats_kv_get(conn, key, &value, &revision, NULL))
		return false;
	sent = reliq_lease_clock();
	if (reliq_nats_kv_put(conn, key, reliq_lease_heartbeat_value(), revision,
						  &written, NULL) != RELIQ_KV_OK)
		return false;
	renewal_failed = false;
	alive_revision = written;
	alive_valid_until = TimestampTzPlusMilliseconds(sent, reliq_lease_ttl * 3 / 4);
	return false;				/* held leases wait for the next round */
}

/*
 * Between rounds, when a round of the monitor runs long: renew the
 * heartbeat, and with it the validity of the leases held (unless it was
 * written over: then they wait for the next round's reading).
 */
void
reliq_lease_heartbeat(ReliqNatsConnection *conn)
{
	int			i;

	if (reliq_lease_ttl == 0 || alive_revision == 0 ||
		!reliq_nats_kv_open(conn, reliq_lease_bucket, NULL) ||
		!renew_heartbeat(conn))
		return;
	for (i = 0; i < ntracks; i++)
	{
		LeaseTrack *t = &tracks[i];
		ReliqControl *control;

		if (t->held == 0 || t->view.state != RELIQ_LEASE_OWNED)
			continue;
		t->view.valid_until = alive_valid_until;
		control = reliq_control_find(t->id, false);
		if (control != NULL)
			reliq_lease_publish(control, &t->view);
	}
}

/* Does a live subscription use this key (one dropped and made again)? */
static bool
key_in_use(const char *key)
{
	int			i;

	for (i = 0; i < ntracks; i++)
		if (tracks[i].present && strcmp(tracks[i].key, key) == 0)
			return true;
	return false;
}

/*
 * One round over every subscription (enabled or paused: a paused one stays
 * owned).  The owner keys of dropped subscriptions are deleted.  Returns
 * false when the heartbeat could not be written (the bucket's leader gone
 * in an election, the connection down): the monitor then tries again soon,
 * not a renewal period later, so that a new leader is used as soon as it
 * answers and the leases do not lapse meanwhile.
 */
bool
reliq_lease_round(ReliqNatsConnection *conn, const ReliqWatched *subscriptions,
				  int count)
{
	int			i;
	bool		renewed;
	ReliqNatsStatus st = {0};

	if (reliq_lease_ttl == 0)
	{
		ReliqLeaseView off;

		memset(&off, 0, sizeof(off));
		off.state = RELIQ_LEASE_OFF;
		for (i = 0; i < count; i++)
		{
			ReliqControl *control = reliq_control_find(subscriptions[i].id, true);

			if (control != NULL)
				reliq_lease_publish(control, &off);
		}
		ntracks = 0;
		return true;
	}
	if (!reliq_nats_kv_open(conn, reliq_lease_bucket, &st))
	{
		reliq_nats_report(&st, LOG, 0,
						  psprintf("reliq monitor: could not open the lease bucket \"%s\"",
								   reliq_lease_bucket),
						  NULL, NULL);
		return false;
	}
	(void) reliq_lease_identity_value();
	round_number++;
	(void) renew_heartbeat(conn);
	renewed = !renewal_failed;
	if (alive_revision == 0)
		return false;			/* no heartbeat yet: own nothing */

	for (i = 0; i < ntracks; i++)
		tracks[i].present = false;
	for (i = 0; i < count; i++)
	{
		LeaseTrack *t = track_for(&subscriptions[i]);

		/* a dead postmaster's cluster must not look alive to a successor */
		if (!PostmasterIsAlive())
			proc_exit(1);
		CHECK_FOR_INTERRUPTS();
		t->present = true;
		step(conn, &subscriptions[i], t);
	}
	rescan = false;
	for (i = 0; i < ntracks;)
	{
		if (!tracks[i].present)
		{
			if (tracks[i].held != 0 && !key_in_use(tracks[i].key))
				(void) reliq_nats_kv_delete(conn, tracks[i].key, NULL);
			tracks[i] = tracks[--ntracks];
		}
		else
			i++;
	}
	return renewed;
}

/*
 * At the monitor's exit: if the server is shutting down cleanly and no
 * launcher or worker is left (so nothing of this cluster can pull or ack
 * any more: workers close their NATS connection before they free their
 * slot), mark this instance's heartbeat released, so that the next owner
 * (the promoted standby of a switchover, this server restarted) need not
 * wait for it to run out.  Otherwise it runs out by itself.
 */
void
reliq_lease_release_all(ReliqNatsConnection *conn)
{
	char	   *released;
	uint64		revision;

	if (conn == NULL || !reliq_nats_is_connected(conn) || reliq_lease_ttl == 0 ||
		alive_revision == 0 ||
		!reliq_lease_server_stopping() || !reliq_lease_workers_gone(Min(reliq_nats_timeout, 2000)))
		return;
	released = reliq_lease_heartbeat_value();
	released = psprintf("%.*s,\"released\":true}", (int) strlen(released) - 1,
						released);
	if (reliq_nats_kv_put(conn, heartbeat_key(reliq_lease_instance()), released,
						  alive_revision, &revision, NULL) == RELIQ_KV_OK)
		alive_revision = 0;
}
