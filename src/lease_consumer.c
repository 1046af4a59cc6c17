/*-------------------------------------------------------------------------
 *
 * lease_consumer.c
 *	  The consumer of an acquisition (lease.c): made on the server right
 *	  after what this database proves applied, under the acquisition's own
 *	  name, and only then are the former owners' consumers deleted, so
 *	  that their late acks reach no consumer of ours.  Streams that delete
 *	  acknowledged messages keep the former owner's consumer.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "nodes/pg_list.h"

#include "catalog.h"
#include "lease.h"
#include "lease_internal.h"
#include "nats_client.h"
#include "reliq.h"
#include "shmem.h"
#include "xact.h"

/*
 * Delete the consumers of former owners (the durable name, and the
 * "<durable>-r<revision>" of earlier acquisitions) now that this owner's
 * own, keep, is made: the acks of a former owner's late workers then go
 * to a subject no consumer listens on, instead of acking deliveries of
 * ours.  True when none is left.
 */
static bool
retire_former_consumers(ReliqNatsConnection *conn, const ReliqWatched *w,
						const char *stream, const char *base, const char *keep,
						ReliqNatsStatus *st)
{
	List	   *names;
	ListCell   *lc;
	bool		existed;

	if (!reliq_nats_consumer_incarnations(conn, stream, base,
										  psprintf("reliq subscription %s", w->name),
										  &names, st))
		return false;
	if (strcmp(base, keep) != 0)
		names = lappend(names, pstrdup(base));
	foreach(lc, names)
	{
		char	   *name = lfirst(lc);

		if (strcmp(name, keep) == 0)
			continue;
		if (!reliq_nats_delete_consumer(conn, stream, name, &existed, st))
			return false;
		if (existed)
			ereport(LOG,
					(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
					 errmsg("reliq subscription \"%s\": deleted consumer \"%s\" of a former owner; \"%s\" replaces it",
							w->name, name, keep)));
	}
	return true;
}

/*
 * The database owns the position: make the consumer named `consumer`
 * (in/out, RELIQ_CONSUMER_NAME_LEN; "" for the durable name) start right
 * after what this database proves applied, with epoch in its metadata.
 * True when done (or when there is nothing this can do); false to try
 * again next round.
 */
bool
reliq_lease_make_consumer(ReliqNatsConnection *conn, const ReliqWatched *w,
						  char *consumer, uint64 epoch, bool *no_rewind_noted,
						  const char *why)
{
	ReliqStreamInfo stream;
	ReliqConsumerSpec spec;
	ReliqConsumerInfo info;
	ReliqSubscription *sub;
	int64		floor;
	bool		existed;
	bool		created;
	MemoryContext cxt;
	ReliqNatsStatus st = {0};

	if (!reliq_nats_stream_info(conn, w->stream, &stream, NULL))
		return false;
	if (!stream.found)
		return true;			/* the workers say so; nothing to rewind */
	if (!stream.redelivers)
	{
		if (!*no_rewind_noted)
			ereport(LOG,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("reliq subscription \"%s\": stream \"%s\" has %s retention, so its consumer cannot be brought back to this database's position",
							w->name, w->stream, stream.retention),
					 errdetail("The stream deletes acknowledged messages; what a former owner acknowledged but this database lacks cannot be delivered again."),
					 errhint("Use synchronous replication (synchronous_commit = on with synchronous_standby_names) so that nothing acknowledged is missing after a failover.")));
		*no_rewind_noted = true;

		/*
		 * Nor can it be replaced: a new consumer would not see what the
		 * former one was owed (interest), or be refused beside it (work
		 * queue).  The new owner goes on with the former owner's consumer
		 * (the durable name, or its newest incarnation) where one exists.
		 */
		{
			char	   *existing;
			bool		exists;

			if (!reliq_nats_consumer_in_use(conn, w->stream, w->consumer,
											psprintf("reliq subscription %s", w->name),
											&existing, &exists, NULL))
				return false;
			if (exists)
			{
				strlcpy(consumer, existing, RELIQ_CONSUMER_NAME_LEN);
				return true;
			}
		}
		/* none left: make this owner's, as for any stream */
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
	spec.consumer = consumer[0] ? consumer : sub->consumer;
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
	spec.owner_epoch = epoch;

	/*
	 * The name is this acquisition's own: whatever has it was made by an
	 * earlier try of this very acquisition.  Made first, and only then are
	 * the former owner's consumers deleted.
	 */
	if (!reliq_nats_delete_consumer(conn, sub->stream, spec.consumer, &existed, &st) ||
		!reliq_nats_ensure_consumer(conn, &spec, &info, &created, &st) ||
		!retire_former_consumers(conn, w, sub->stream, sub->consumer, spec.consumer,
								 &st))
	{
		reliq_nats_report(&st, LOG, 0,
						  psprintf("reliq subscription \"%s\": could not bring consumer \"%s\" back to this database's position",
								   w->name, spec.consumer),
						  NULL, NULL);
		return false;
	}
	/* a paused subscription's new consumer is paused on the server at once */
	if (!sub->enabled && reliq_nats_server_at_least(conn, 2, 11))
		(void) reliq_nats_pause_consumer(conn, sub->stream, spec.consumer, true, NULL);
	ereport(LOG,
			(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
			 errmsg("reliq subscription \"%s\": consumer \"%s\" starts at %s, this database's position",
					w->name, spec.consumer,
					floor >= 0 ? psprintf("stream sequence " INT64_FORMAT, floor + 1) :
					sub->start_new ? "the subscription's creation" :
					"the first message of the stream"),
			 errdetail("%s", why)));
	return true;
}
