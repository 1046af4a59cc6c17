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
 *	   are compared across machines.
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

#include <unistd.h>

#include "access/xlog.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/postmaster.h"
#include "storage/ipc.h"
#include "storage/fd.h"
#include "storage/pmsignal.h"
#include "utils/pidfile.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "lease.h"
#include "nats_client.h"
#include "reliq.h"
#include "shmem.h"
#include "xact.h"

/* What the monitor alone knows of each lease. */
typedef struct LeaseTrack
{
	int64		id;
	char		key[160];
	uint64		held;			/* revision of the owner key this instance
								 * wrote; 0: not held */
	TimestampTz consume_after;	/* ACQUIRING: the former holder is done */
	bool		present;		/* still a subscription (this round) */
	bool		no_rewind_noted;
	ReliqLeaseView view;
} LeaseTrack;

static LeaseTrack *tracks = NULL;
static int	ntracks = 0;
static int	maxtracks = 0;
static char *my_identity = NULL;
static char my_instance[32];

/* This instance's heartbeat. */
static uint64 alive_revision = 0;	/* as written last; 0: not yet */
static TimestampTz alive_valid_until = 0;	/* consume until then */
static bool rescan = true;		/* read the owner keys of held leases */

/* Other instances' heartbeats, as this monitor has seen them. */
typedef struct Heartbeat
{
	char		instance[32];
	uint64		revision;		/* 0: no heartbeat key */
	TimestampTz seen_at;		/* when that revision was first seen */
	bool		released;
	char	   *value;			/* in TopMemoryContext */
	int64		round;			/* read in this round already */
} Heartbeat;

static Heartbeat *heartbeats = NULL;
static int	nheartbeats = 0;
static int	maxheartbeats = 0;
static int64 round_number = 0;

long
reliq_lease_renew_interval_ms(void)
{
	return Max(reliq_lease_ttl / 4, 10);
}

/*
 * This instance's id as leases name it: the random id the postmaster drew
 * at start, in hex.  Also written into the metadata of the consumers it
 * owns (nats-server 2.10+).
 */
const char *
reliq_lease_instance(void)
{
	if (my_instance[0] == '\0')
		snprintf(my_instance, sizeof(my_instance), "%016llx",
				 (unsigned long long) reliq_instance_id);
	return my_instance;
}

/* The lease value naming this instance (JSON), made once. */
static char *
my_identity_value(void)
{
	char		host[128];

	if (my_identity != NULL)
		return my_identity;
	if (gethostname(host, sizeof(host)) != 0)
		strlcpy(host, "unknown", sizeof(host));
	host[sizeof(host) - 1] = '\0';
	(void) reliq_lease_instance();
	my_identity = MemoryContextStrdup(TopMemoryContext,
									  psprintf("{\"instance\":\"%s\",\"system\":\"" UINT64_FORMAT "\","
											   "\"timeline\":%u,\"host\":\"%s\",\"port\":%d,\"database\":\"%s\"}",
											   my_instance, GetSystemIdentifier(),
											   GetWALInsertionTimeLine(), host,
											   PostPortNumber, reliq_database_name));
	return my_identity;
}

/* A string field of a lease value; "" if absent.  Values are ours. */
static char *
field(const char *value, const char *name)
{
	char	   *pattern = psprintf("\"%s\":", name);
	const char *p = value ? strstr(value, pattern) : NULL;
	const char *end;

	if (p == NULL)
		return "";
	p += strlen(pattern);
	if (*p == '"')
	{
		p++;
		end = strchr(p, '"');
	}
	else
		end = p + strcspn(p, ",}");
	return end ? pnstrdup(p, end - p) : "";
}

/* Another run of this very server (or a file-level copy of it)? */
static bool
holder_is_same_lineage(const char *value)
{
	return strcmp(field(value, "system"),
				  psprintf(UINT64_FORMAT, GetSystemIdentifier())) == 0 &&
		strcmp(field(value, "timeline"),
			   psprintf("%u", GetWALInsertionTimeLine())) == 0;
}

static void
describe_holder(LeaseTrack *t, const char *value)
{
	snprintf(t->view.holder, sizeof(t->view.holder),
			 "system %s timeline %s at %s:%s (database %s, instance %s)",
			 field(value, "system"), field(value, "timeline"),
			 field(value, "host"), field(value, "port"),
			 field(value, "database"), field(value, "instance"));
}

static void
describe_me(LeaseTrack *t)
{
	describe_holder(t, my_identity_value());
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
	return &tracks[i];
}

/*
 * The database owns the position: make the consumer start again right
 * after what this database proves applied.  True when done (or when there
 * is nothing this can do); false to try again next round.
 */
static bool
rewind_consumer(ReliqNatsConnection *conn, const ReliqWatched *w, LeaseTrack *t)
{
	ReliqStreamInfo stream;
	ReliqConsumerSpec spec;
	ReliqConsumerInfo info;
	ReliqSubscription *sub;
	int64		floor;
	bool		existed;
	bool		created;
	MemoryContext cxt;

	if (!reliq_nats_stream_info(conn, w->stream, &stream))
		return false;
	if (!stream.found)
		return true;			/* the workers say so; nothing to rewind */
	if (!stream.redelivers)
	{
		if (!t->no_rewind_noted)
			ereport(LOG,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("reliq subscription \"%s\": stream \"%s\" has %s retention, so its consumer cannot be brought back to this database's position",
							w->name, w->stream, stream.retention),
					 errdetail("The stream deletes acknowledged messages; what a former owner acknowledged but this database lacks cannot be delivered again."),
					 errhint("Use synchronous replication (synchronous_commit = on with synchronous_standby_names) so that nothing acknowledged is missing after a failover.")));
		t->no_rewind_noted = true;
		return true;
	}

	cxt = reliq_xact_begin("reliq monitor: reading a subscription's position");
	MemoryContextSwitchTo(cxt);
	sub = reliq_catalog_load_subscription(w->id);
	floor = sub ? reliq_catalog_floor(w->id, stream.created_ns) : -1;
	reliq_xact_commit(cxt);
	if (sub == NULL)
		return true;			/* dropped meanwhile */

	memset(&spec, 0, sizeof(spec));
	spec.stream = sub->stream;
	spec.consumer = sub->consumer;
	spec.filter_subject = sub->subject;
	spec.description = psprintf("reliq subscription %s", sub->name);
	spec.ack_wait_ms = sub->ack_wait_ms;
	spec.max_ack_pending = reliq_subscription_max_ack_pending(sub);
	if (floor >= 0)
	{
		spec.deliver_from = RELIQ_DELIVER_FROM_SEQ;
		spec.start_seq = floor + 1;
	}
	else if (sub->start_new)
	{
		/* the subscription's start is its creation, whatever came since */
		spec.deliver_from = RELIQ_DELIVER_FROM_TIME;
		spec.start_time_ns = reliq_timestamptz_to_unix_ns(sub->created_at);
	}
	else
		spec.deliver_from = RELIQ_DELIVER_ALL;
	spec.owner_instance = reliq_lease_instance();
	spec.owner_epoch = t->view.epoch + 1;	/* step() moves it on success */

	if (!reliq_nats_delete_consumer(conn, sub->stream, sub->consumer, &existed) ||
		!reliq_nats_ensure_consumer(conn, &spec, &info, &created))
	{
		reliq_nats_report(LOG, 0,
						  psprintf("reliq subscription \"%s\": could not bring consumer \"%s\" back to this database's position",
								   w->name, sub->consumer),
						  NULL, NULL);
		return false;
	}
	ereport(LOG,
			(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
			 errmsg("reliq subscription \"%s\": consumer \"%s\" starts again at %s, this database's position",
					w->name, sub->consumer,
					floor >= 0 ? psprintf("stream sequence " INT64_FORMAT, floor + 1) :
					sub->start_new ? "the subscription's creation" :
					"the first message of the stream"),
			 errdetail("This cluster has just acquired the consumer's lease; redeliveries of what this database already applied are absorbed by its ledger.")));
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
heartbeat_of(ReliqNatsConnection *conn, const char *instance, TimestampTz now)
{
	Heartbeat  *h = NULL;
	char	   *value;
	uint64		revision;
	int			i;

	for (i = 0; i < nheartbeats; i++)
		if (strcmp(heartbeats[i].instance, instance) == 0)
			h = &heartbeats[i];
	if (h != NULL && h->round == round_number)
		return h;
	if (!reliq_nats_kv_get(conn, heartbeat_key(instance), &value, &revision))
		return NULL;
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
		h->revision = revision;
		h->seen_at = now;
	}
	if (h->value)
		pfree(h->value);
	h->value = MemoryContextStrdup(TopMemoryContext, revision ? value : "");
	h->released = revision != 0 && strcmp(field(value, "released"), "true") == 0;
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

	if (h->released)
		return true;			/* it is gone and said so */
	value = psprintf("{\"instance\":\"%s\",\"revoked_by\":\"%s\"}",
					 h->instance, my_instance);
	if (reliq_nats_kv_put(conn, heartbeat_key(h->instance), value, h->revision,
						  &written) != RELIQ_KV_OK)
		return false;
	h->revision = written;
	h->seen_at = GetCurrentTimestamp();
	return true;
}

static void
become_fenced(LeaseTrack *t, const char *value, TimestampTz now)
{
	describe_holder(t, value);
	t->view.valid_until = 0;

	/*
	 * An earlier run of this server whose heartbeat has not run out yet:
	 * say "acquiring" (then something else is alive there, a copy of this
	 * server, and this one is fenced).
	 */
	if (t->view.state == RELIQ_LEASE_UNKNOWN && holder_is_same_lineage(value))
		t->view.state = RELIQ_LEASE_ACQUIRING;
	else if (t->view.state != RELIQ_LEASE_ACQUIRING || !holder_is_same_lineage(value))
		t->view.state = RELIQ_LEASE_FENCED;
}

/* This instance has just written the owner key. */
static void
acquired(LeaseTrack *t, uint64 revision, TimestampTz consume_after)
{
	t->held = revision;
	t->consume_after = consume_after;
	t->view.state = RELIQ_LEASE_ACQUIRING;
	t->view.valid_until = alive_valid_until;
	describe_me(t);
}

/* Write the owner key over revision (0: it must not exist). */
static bool
write_owner(ReliqNatsConnection *conn, LeaseTrack *t, uint64 revision,
			TimestampTz consume_after)
{
	uint64		written;

	if (reliq_nats_kv_put(conn, t->key, my_identity_value(), revision,
						  &written) != RELIQ_KV_OK)
		return false;
	acquired(t, written, consume_after);
	return true;
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

	if (!reliq_nats_kv_get(conn, t->key, &value, &revision))
		return;
	if (revision == 0)
	{
		(void) write_owner(conn, t, 0, now);
		return;
	}
	owner = field(value, "instance");
	if (strcmp(owner, my_instance) == 0)
	{
		/* the monitor restarted under the same postmaster: still ours */
		t->held = revision;
		t->view.state = RELIQ_LEASE_OWNED;
		t->view.valid_until = alive_valid_until;
		describe_me(t);
		return;
	}
	h = heartbeat_of(conn, owner, now);
	if (h == NULL)
		return;					/* cannot tell now */
	if (h->released)
	{
		/* its owner shut down cleanly, after its workers had exited */
		if (write_owner(conn, t, revision, now))
			ereport(LOG,
					(errmsg("reliq subscription \"%s\": took over consumer \"%s\", released by %s at its shutdown",
							w->name, w->consumer, value)));
		return;
	}
	if (now - h->seen_at >= (int64) reliq_lease_ttl * 1000)
	{
		/* unrenewed for a whole lease_ttl: its owner has stopped */
		if (revoke_heartbeat(conn, h) && write_owner(conn, t, revision, now))
		{
			ereport(LOG,
					(errmsg("reliq subscription \"%s\": took over consumer \"%s\" from %s, whose heartbeat had not moved for %d ms",
							w->name, w->consumer, value, reliq_lease_ttl)));
			return;
		}
	}
	become_fenced(t, value, now);
}

/* reliq.take_over(): take the consumer from whoever owns it now. */
static void
take_over(ReliqNatsConnection *conn, const ReliqWatched *w, LeaseTrack *t,
		  ReliqSubscriptionStats *entry, TimestampTz now)
{
	uint64		revision;
	char	   *value;
	Heartbeat  *h = NULL;

	if (!reliq_nats_kv_get(conn, t->key, &value, &revision))
		goto retry;
	if (revision != 0 && strcmp(field(value, "instance"), my_instance) != 0)
	{
		h = heartbeat_of(conn, field(value, "instance"), now);
		if (h == NULL || (h->revision != 0 && !revoke_heartbeat(conn, h)))
			goto retry;
	}
	if (!write_owner(conn, t, revision,
					 TimestampTzPlusMilliseconds(now, reliq_lease_ttl)))
		goto retry;
	ereport(LOG,
			(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
			 errmsg("reliq subscription \"%s\": taking over consumer \"%s\" from %s; consuming in %d ms",
					w->name, w->consumer, revision ? value : "nobody", reliq_lease_ttl),
			 errdetail("The former owner stops within that time, when its own heartbeat runs out.")));
	return;

retry:
	pg_atomic_write_u32(&entry->take_over_requested, 1);	/* next round */
}

/* A held lease, after this instance's heartbeat was written over. */
static void
check_still_mine(ReliqNatsConnection *conn, const ReliqWatched *w,
				 LeaseTrack *t, TimestampTz now)
{
	uint64		revision;
	char	   *value;

	if (!reliq_nats_kv_get(conn, t->key, &value, &revision))
	{
		t->view.valid_until = 0;	/* unknown: not usable this round */
		return;
	}
	if (revision != 0 && strcmp(field(value, "instance"), my_instance) == 0)
	{
		t->held = revision;
		t->view.valid_until = alive_valid_until;
		return;
	}
	if (revision == 0)
	{
		/* gone (deleted by hand, or the bucket was lost): take it again */
		t->held = 0;
		(void) write_owner(conn, t, 0, now);
		return;
	}
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
	ReliqSubscriptionStats *entry = reliq_stats_find(w->id, true, w->name);
	TimestampTz now = GetCurrentTimestamp();

	if (entry != NULL && t->held == 0 &&
		pg_atomic_exchange_u32(&entry->take_over_requested, 0) != 0)
		take_over(conn, w, t, entry, now);
	else if (entry != NULL && t->held != 0)
		pg_atomic_write_u32(&entry->take_over_requested, 0);	/* ours already */

	if (t->held != 0 && rescan)
		check_still_mine(conn, w, t, now);
	else if (t->held != 0)
		t->view.valid_until = alive_valid_until;
	else
		try_acquire(conn, w, t, now);

	if (t->held != 0 && t->view.state == RELIQ_LEASE_ACQUIRING &&
		GetCurrentTimestamp() >= t->consume_after &&
		rewind_consumer(conn, w, t))
	{
		t->view.state = RELIQ_LEASE_OWNED;
		t->view.epoch++;
	}
	if (entry != NULL)
		reliq_lease_publish(entry, &t->view);
}

/*
 * Renew this instance's heartbeat.  If someone wrote over it (took a
 * consumer from us), or it is gone (the bucket was lost), stop consuming
 * everything at once and read the owner keys again this round.
 */
static bool
renew_heartbeat(ReliqNatsConnection *conn)
{
	char	   *key = heartbeat_key(my_instance);
	TimestampTz sent = GetCurrentTimestamp();
	uint64		written;
	uint64		revision;
	char	   *value;
	int			i;

	switch (reliq_nats_kv_put(conn, key, my_identity_value(),
							  alive_revision, &written))
	{
		case RELIQ_KV_OK:
			alive_revision = written;
			alive_valid_until = TimestampTzPlusMilliseconds(sent, reliq_lease_ttl * 3 / 4);
			return true;
		case RELIQ_KV_ERROR:
			return false;		/* unrenewed, the leases lapse by themselves */
		case RELIQ_KV_CONFLICT:
			break;
	}

	/* written over: nothing of ours is usable until read again */
	alive_valid_until = 0;
	for (i = 0; i < ntracks; i++)
		if (tracks[i].held != 0)
		{
			ReliqSubscriptionStats *entry = reliq_stats_find(tracks[i].id, false, NULL);

			tracks[i].view.valid_until = 0;
			if (entry != NULL)
				reliq_lease_publish(entry, &tracks[i].view);
		}
	if (alive_revision != 0)
		ereport(LOG,
				(errmsg("reliq monitor: this cluster's heartbeat was written over (a consumer was taken over, or the lease bucket was lost); checking which consumers are still its own")));
	rescan = true;
	if (!reliq_nats_kv_get(conn, key, &value, &revision))
		return false;
	sent = GetCurrentTimestamp();
	if (reliq_nats_kv_put(conn, key, my_identity_value(), revision,
						  &written) != RELIQ_KV_OK)
		return false;
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
		!reliq_nats_kv_open(conn, reliq_lease_bucket) ||
		!renew_heartbeat(conn))
		return;
	for (i = 0; i < ntracks; i++)
	{
		LeaseTrack *t = &tracks[i];
		ReliqSubscriptionStats *entry;

		if (t->held == 0 || t->view.state != RELIQ_LEASE_OWNED)
			continue;
		t->view.valid_until = alive_valid_until;
		entry = reliq_stats_find(t->id, false, NULL);
		if (entry != NULL)
			reliq_lease_publish(entry, &t->view);
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
 * owned).  The owner keys of dropped subscriptions are deleted.
 */
void
reliq_lease_round(ReliqNatsConnection *conn, const ReliqWatched *subscriptions,
				  int count)
{
	int			i;

	if (reliq_lease_ttl == 0)
	{
		ReliqLeaseView off;

		memset(&off, 0, sizeof(off));
		off.state = RELIQ_LEASE_OFF;
		for (i = 0; i < count; i++)
		{
			ReliqSubscriptionStats *entry = reliq_stats_find(subscriptions[i].id, true,
															 subscriptions[i].name);

			if (entry != NULL)
				reliq_lease_publish(entry, &off);
		}
		ntracks = 0;
		return;
	}
	if (!reliq_nats_kv_open(conn, reliq_lease_bucket))
	{
		reliq_nats_report(LOG, 0,
						  psprintf("reliq monitor: could not open the lease bucket \"%s\"",
								   reliq_lease_bucket),
						  NULL, NULL);
		return;
	}
	(void) my_identity_value();
	round_number++;
	(void) renew_heartbeat(conn);
	if (alive_revision == 0)
		return;					/* no heartbeat yet: own nothing */

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
				(void) reliq_nats_kv_delete(conn, tracks[i].key);
			tracks[i] = tracks[--ntracks];
		}
		else
			i++;
	}
}

/* Is the postmaster shutting down (not merely restarting a process)? */
static bool
server_stopping(void)
{
	FILE	   *file = AllocateFile("postmaster.pid", "r");
	char		line[128];
	int			lineno = 0;
	bool		stopping = false;

	if (file == NULL)
		return false;
	while (fgets(line, sizeof(line), file) != NULL)
		if (++lineno == LOCK_FILE_LINE_PM_STATUS)
		{
			stopping = strncmp(line, PM_STATUS_STOPPING, strlen(PM_STATUS_STOPPING)) == 0;
			break;
		}
	FreeFile(file);
	return stopping;
}

/* Have the launcher and every worker exited (waiting up to wait_ms)? */
static bool
workers_gone(int wait_ms)
{
	int			waited;

	for (waited = 0; waited <= wait_ms; waited += 10)
	{
		bool		gone;
		int			i;

		SpinLockAcquire(&reliq_shared->mutex);
		gone = (reliq_shared->launcher_pid == 0);
		SpinLockRelease(&reliq_shared->mutex);
		for (i = 0; gone && i < reliq_shared->max_workers; i++)
		{
			ReliqWorkerSlot *slot = &reliq_shared->slots[i];

			SpinLockAcquire(&slot->mutex);
			gone = (slot->pid == 0);
			SpinLockRelease(&slot->mutex);
		}
		if (gone)
			return true;
		pg_usleep(10000L);
	}
	return false;
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
		!server_stopping() || !workers_gone(Min(reliq_nats_timeout, 2000)))
		return;
	released = psprintf("%.*s,\"released\":true}",
						(int) strlen(my_identity_value()) - 1,
						my_identity_value());
	if (reliq_nats_kv_put(conn, heartbeat_key(my_instance), released,
						  alive_revision, &revision) == RELIQ_KV_OK)
		alive_revision = 0;
}
