/*-------------------------------------------------------------------------
 *
 * monitor.c
 *	  The reliq monitor: one background worker that, every
 *	  reliq.refresh_interval, lists the consumers of every stream that
 *	  subscriptions read (pending, ack_pending, redelivered, ack floor:
 *	  a request per 256 consumers, not one per consumer), publishes
 *	  the figures to shared memory, and prunes each ledger below the floor
 *	  the server has acknowledged.
 *
 * It also keeps the consumers' leases (lease.c), every reliq.lease_ttl / 4,
 * and records a floor only for a subscription whose lease this cluster
 * holds: the server's ack floor speaks for this database only then.
 *
 * And it owns the server-side pause (nats-server 2.11+): the consumer of a
 * paused subscription is paused on the server too, and resumed with the
 * subscription, by the lease holder only, so that a paused subscription
 * stays paused whichever cluster consumes next.  The catalog's enabled is
 * the truth: a consumer paused by hand is resumed while its subscription
 * is enabled.
 *
 * It is not a worker on purpose: when every worker of a subscription is
 * stuck in a handler -- the usual reason a subscription stalls -- the
 * figures that show the stall (ack_pending at max_ack_pending, a backlog
 * growing while nothing is applied) must still be fresh.
 *
 * A stream that loses its tail (an OS crash before JetStream's fsync, a cut
 * store) hands out its last sequences again, to new messages.  The ledger
 * and the floor name messages by sequence, so such a new message would
 * be taken for a duplicate: acked and never applied.  The monitor watches
 * for it here, at no cost to the workers: each round it already asks the
 * stream for its state, and reads each subscription's floor; it also
 * reads the ledger's highest sequence (an index probe per subscription).
 * When the stream, the same incarnation, ends below what this database
 * applied, the subscription is diverged (reliq._stream_divergence): its
 * workers consume nothing and ack nothing until reliq.accept_stream_loss()
 * moves the floor back; the monitor then rewinds the consumer to it.  A
 * worker that meets a duplicate checks the same at once (apply.c), in
 * case new messages come before this round.  What neither can see: a
 * stream whose new messages overtook the highest sequence applied before
 * either looked (no message ids are kept per sequence).
 *
 * Pruning is safe only for the stream incarnation the workers attached to
 * (reliq._stream_identity): the consumer is asked first, the stream second,
 * and the floor is recorded only if the stream is still that incarnation
 * (incarnations never come back, so it was that one when the consumer
 * answered too).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "lease.h"
#include "metrics.h"
#include "monitor.h"
#include "nats_client.h"
#include "reliq.h"
#include "shmem.h"
#include "xact.h"

static char last_problem[RELIQ_ERROR_LEN];
static char last_pause_problem[RELIQ_ERROR_LEN];

/*
 * A NATS failure (what: "could not ..."): logged when it starts or
 * changes, nothing while it persists.
 */
static void
note_failure(const ReliqNatsStatus *st, const char *what)
{
	char	   *problem = psprintf("%s: %s", what, st->message);

	if (strcmp(problem, last_problem) != 0)
	{
		reliq_nats_report(st, LOG, 0, psprintf("reliq monitor: %s", what), NULL, NULL);
		strlcpy(last_problem, problem, sizeof(last_problem));
	}
}

/* After a round in which NATS answered. */
static void
note_success(void)
{
	if (last_problem[0] != '\0')
		ereport(LOG,
				(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
				 errmsg("reliq monitor: in contact with NATS again")));
	last_problem[0] = '\0';
}

/* The subscriptions, read in a short transaction of our own. */
static int
read_watched(ReliqWatched **watched, MemoryContext cxt)
{
	MemoryContext caller = reliq_xact_begin("reliq monitor: reading subscriptions");
	int			count = 0;

	*watched = NULL;
	if (reliq_catalog_extension_present())
	{
		MemoryContextSwitchTo(cxt);
		count = reliq_catalog_list_watched(watched);
		reliq_metrics_count_dead_letters();
	}
	reliq_xact_commit(caller);
	return count;
}

static void
record_floor(const ReliqWatched *w, int64 ack_floor)
{
	MemoryContext caller = reliq_xact_begin("reliq monitor: pruning the ledger");

	reliq_catalog_advance_floor(w->id, w->stream_created, ack_floor);
	reliq_xact_commit(caller);
}

static TimestampTz next_heartbeat = 0;

/*
 * The lease's own deadline, kept ahead of the figures: the NATS client
 * calls this before each request on the monitor's connection
 * (reliq_nats_before_requests), so the heartbeat is renewed when due even
 * in the middle of a long round (a thousand subscriptions' figures take
 * longer than lease_ttl / 4), and no code for figures needs to think of
 * it.  Not during a lease round, which renews the heartbeat itself.
 */
static void
heartbeat_if_due(ReliqNatsConnection *conn)
{
	TimestampTz now = GetCurrentTimestamp();

	if (now < next_heartbeat)
		return;
	next_heartbeat = TimestampTzPlusMilliseconds(now, reliq_lease_renew_interval_ms());
	reliq_lease_heartbeat(conn);
}

/*
 * reliq.accept_stream_loss() moved the floor of a diverged subscription:
 * rewind its consumer to it, then forget the loss and let the workers
 * consume.  Tried again each round until done, whether or not the
 * consumer exists (a diverged subscription's workers make none).
 */
static void
rewind_after_loss(ReliqNatsConnection *conn, const ReliqWatched *w,
				  ReliqControl *control)
{
	MemoryContext caller;

	if (!reliq_lease_rewind(conn, w,
							"The stream lost its tail and reliq.accept_stream_loss() moved this database's floor to its last sequence; new messages from there on are applied."))
		return;
	caller = reliq_xact_begin("reliq monitor: forgetting an accepted stream loss");
	reliq_catalog_forget_divergence(w->id, true);
	reliq_xact_commit(caller);
	reliq_control_set_diverged(control, false);
	ereport(LOG,
			(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
			 errmsg("reliq subscription \"%s\": consuming again after the accepted loss of stream \"%s\"'s tail",
					w->name, w->stream)));
}

/*
 * A stream's lost tail (see the file header).  True while the subscription
 * is diverged: no floor is recorded from the consumer then (it may stand
 * where the stream's former tail ended).
 */
static bool
watch_stream_tail(const ReliqWatched *w, ReliqSubscriptionStats *entry,
				  ReliqControl *control, const ReliqStreamInfo *stream)
{
	MemoryContext caller;
	int64		last_seq;

	if (!w->diverged && stream->last_seq >= w->applied_seq)
		return false;			/* a worker's flag stays: its row may be
								 * newer than this round's reading */

	last_seq = w->diverged ? Min(stream->last_seq, w->diverged_last_seq) :
		stream->last_seq;
	if (!w->diverged || last_seq < w->diverged_last_seq)
	{
		caller = reliq_xact_begin("reliq monitor: recording a stream's lost tail");
		reliq_catalog_note_divergence(w->id, w->stream_created, last_seq,
									  w->applied_seq);
		reliq_xact_commit(caller);
	}
	if (!w->diverged)
		ereport(WARNING,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("reliq subscription \"%s\": stream \"%s\" lost its tail: its last sequence is " INT64_FORMAT ", but this database applied up to " INT64_FORMAT,
						w->name, w->stream, last_seq, w->applied_seq),
				 errdetail("The server may hand out those sequences again to new messages, which would be taken for duplicates; the subscription consumes nothing meanwhile."),
				 errhint("If the loss is accepted: SELECT reliq.accept_stream_loss('%s');",
						 w->name)));
	/* each round: last_error says it while it lasts, whatever came between */
	reliq_stats_note_divergence(entry, control, w->name, w->stream, last_seq,
								w->applied_seq);
	return true;
}

/*
 * A diverged subscription whose stream was made again: the new
 * incarnation lost nothing, and its workers attach to it as to any new
 * stream (they claim it when they attach, which a diverged lane does not
 * do).
 */
static void
forget_lost_tail(const ReliqWatched *w, ReliqControl *control)
{
	MemoryContext caller = reliq_xact_begin("reliq monitor: forgetting a lost tail");

	reliq_catalog_forget_divergence(w->id, false);
	reliq_xact_commit(caller);
	reliq_control_set_diverged(control, false);
	ereport(LOG,
			(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
			 errmsg("reliq subscription \"%s\": stream \"%s\" was made again; no longer diverged",
					w->name, w->stream)));
}

/*
 * Pause or resume w's consumer on the server (2.11+) to match w->enabled,
 * when this cluster holds its lease and the listing said how it stands.
 * A failure is logged when it starts or changes; the next round tries
 * again.
 */
static void
sync_server_pause(ReliqNatsConnection *conn, const ReliqWatched *w,
				  const char *consumer, const ReliqConsumerInfo *info)
{
	ReliqControl *control = reliq_control_find(w->id, false);
	ReliqLeaseView lease;
	bool		pause = !w->enabled;
	char	   *problem;
	ReliqNatsStatus st = {0};

	if (control == NULL || !info->found || !info->paused_known ||
		info->paused == pause)
		return;
	reliq_lease_read(control, &lease);
	if (!reliq_lease_usable(&lease))
		return;
	if (reliq_nats_pause_consumer(conn, w->stream, consumer, pause, &st))
	{
		ereport(LOG,
				(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
				 errmsg("reliq subscription \"%s\": consumer \"%s\" %s on the server",
						w->name, consumer, pause ? "paused" : "resumed")));
		last_pause_problem[0] = '\0';
		return;
	}
	problem = psprintf("%s %s: %s", w->name, pause ? "pause" : "resume",
					   st.message);
	if (strcmp(problem, last_pause_problem) != 0)
	{
		reliq_nats_report(&st, LOG, 0,
						  psprintf("reliq subscription \"%s\": could not %s consumer \"%s\" on the server",
								   w->name, pause ? "pause" : "resume", consumer),
						  NULL, "");
		strlcpy(last_pause_problem, problem, sizeof(last_pause_problem));
	}
}

/*
 * The consumer of a lease this cluster holds is gone from the server
 * (deleted by hand, or lost with a server's store).  Under a lease the
 * workers make no consumer (a late worker of a former owner could
 * otherwise make one and consume beside the new owner): the holder's
 * monitor makes it again, after this database's position, under the same
 * name, and the workers attach anew.
 */
static void
remake_if_deleted(ReliqNatsConnection *conn, const ReliqWatched *w,
				  ReliqControl *control, const char *consumer)
{
	ReliqLeaseView lease;
	ReliqStreamInfo stream;

	if (control == NULL || !w->enabled || w->diverged || w->loss_accepted)
		return;
	reliq_lease_read(control, &lease);
	if (lease.state != RELIQ_LEASE_OWNED || !reliq_lease_usable(&lease))
		return;

	/*
	 * Only in the stream the workers claimed: a stream that is gone has no
	 * consumer to make (the workers say so), and one made again is claimed
	 * first by a worker attaching.  Otherwise each round would log and
	 * move the epoch for nothing.
	 */
	if (!reliq_nats_stream_info(conn, w->stream, &stream, NULL) || !stream.found ||
		stream.created_ns != w->stream_created)
		return;
	ereport(LOG,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("reliq subscription \"%s\": consumer \"%s\" of stream \"%s\" has disappeared from the server; making it again at this database's position",
					w->name, consumer, w->stream)));
	(void) reliq_lease_rewind(conn, w,
							  "The consumer was deleted on the server; this database's floor says where to go on, and its ledger absorbs what it already applied.");
}

/*
 * One round over every subscription: the consumers first, then each
 * stream once.  A floor is recorded only if the stream is still the
 * incarnation the workers attached to when asked after the consumer
 * (incarnations never come back, so it was that one when the consumer
 * answered too).
 */
static void
watch(ReliqNatsConnection *conn, MemoryContext cxt)
{
	ReliqWatched *watched;
	ReliqConsumerInfo *infos;
	ReliqStreamInfo *streams;
	bool	   *asked;
	char	  **in_use;
	int			count = read_watched(&watched, cxt);
	int			i;
	int			j;

	infos = palloc0(sizeof(ReliqConsumerInfo) * Max(count, 1));
	streams = palloc0(sizeof(ReliqStreamInfo) * Max(count, 1));
	asked = palloc0(sizeof(bool) * Max(count, 1));
	in_use = palloc0(sizeof(char *) * Max(count, 1));

	/* the consumer each lease's holder made, or the durable name */
	for (i = 0; i < count; i++)
		in_use[i] = reliq_lease_consumer(reliq_control_find(watched[i].id, false),
										 watched[i].consumer);

	/*
	 * The consumers of each stream, listed a page of 256 at a time (a
	 * thousand subscriptions: four requests, not a thousand); the stream
	 * is asked after its consumers, below.
	 */
	for (i = 0; i < count; i++)
	{
		const char **names;
		int		   *index;
		ReliqConsumerInfo *listed;
		int			n = 0;

		if (asked[i])
			continue;
		CHECK_FOR_INTERRUPTS();
		names = palloc(sizeof(char *) * count);
		index = palloc(sizeof(int) * count);
		for (j = i; j < count; j++)
			if (!asked[j] && strcmp(watched[j].stream, watched[i].stream) == 0)
			{
				asked[j] = true;
				index[n] = j;
				names[n++] = in_use[j];
			}
		listed = palloc(sizeof(ReliqConsumerInfo) * n);
		if (!reliq_nats_consumer_infos(conn, watched[i].stream, names, n, listed,
									   NULL))
		{
			/*
			 * A cluster with a server down may not answer a listing (the
			 * meta leader waits for every peer of the stream) while each
			 * consumer's leader still answers for its consumer: ask them
			 * one by one.
			 */
			for (j = 0; j < n; j++)
			{
				ReliqNatsStatus st = {0};

				CHECK_FOR_INTERRUPTS();
				if (!reliq_nats_consumer_info(conn, watched[i].stream, names[j],
											  &listed[j], &st))
				{
					note_failure(&st, psprintf("could not ask NATS about consumer \"%s\"",
										  names[j]));
					return; /* the connection is likely gone: next round */
				}
			}
		}
		for (j = 0; j < n; j++)
			infos[index[j]] = listed[j];
	}
	for (i = 0; i < count; i++)
	{
		ReliqWatched *w = &watched[i];
		ReliqSubscriptionStats *entry;

		entry = reliq_stats_find(w->id, false, NULL);
		if (!infos[i].found)
		{
			remake_if_deleted(conn, w, reliq_control_find(w->id, false), in_use[i]);
			continue;
		}
		reliq_stats_set_consumer_info(entry, infos[i].num_pending,
									  infos[i].num_ack_pending,
									  infos[i].num_redelivered,
									  infos[i].ack_floor_stream_seq,
									  infos[i].max_ack_pending);
		if (entry != NULL && w->enabled)
			reliq_stats_record_lag(entry, infos[i].num_pending);
	}

	memset(asked, 0, sizeof(bool) * Max(count, 1));
	/* each stream once, after its consumers */
	for (i = 0; i < count; i++)
	{
		if (asked[i] || !infos[i].found)
			continue;
		if (!reliq_nats_stream_info(conn, watched[i].stream, &streams[i], NULL))
			memset(&streams[i], 0, sizeof(ReliqStreamInfo));
		asked[i] = true;
		for (j = i + 1; j < count; j++)
			if (!asked[j] && strcmp(watched[j].stream, watched[i].stream) == 0)
			{
				streams[j] = streams[i];
				asked[j] = true;
			}
	}

	for (i = 0; i < count; i++)
	{
		ReliqWatched *w = &watched[i];
		ReliqSubscriptionStats *entry = reliq_stats_find(w->id, false, NULL);
		ReliqControl *control = reliq_control_find(w->id, false);
		ReliqLeaseView lease;

		if (control == NULL)
			continue;
		if (w->loss_accepted)
		{
			/* no floor from a consumer about to be made again */
			reliq_lease_read(control, &lease);
			if (reliq_lease_usable(&lease) && w->attached)
				rewind_after_loss(conn, w, control);
			continue;
		}
		if (!infos[i].found || !streams[i].found)
			continue;
		if (entry != NULL)
			reliq_stats_set_retention(entry, streams[i].retention);
		reliq_lease_read(control, &lease);
		if (reliq_lease_usable(&lease) && w->attached &&
			streams[i].created_ns == w->stream_created)
		{
			if (watch_stream_tail(w, entry, control, &streams[i]))
				continue;
		}
		else if (reliq_lease_usable(&lease) && w->attached &&
				 (w->diverged || reliq_control_diverged(control)))
			forget_lost_tail(w, control);	/* the stream was made again */
		if (reliq_lease_usable(&lease) &&
			w->attached && infos[i].ack_floor_stream_seq > w->ack_floor &&
			streams[i].created_ns == w->stream_created)
		{
			record_floor(w, infos[i].ack_floor_stream_seq);
		}
	}

	/* a standby's catalog is the primary's: the primary's monitor acts */
	if (reliq_nats_server_at_least(conn, 2, 11) && !RecoveryInProgress())
		for (i = 0; i < count; i++)
			sync_server_pause(conn, &watched[i], in_use[i], &infos[i]);
	note_success();
}

static ReliqNatsConnection *conn = NULL;

/* Before shared memory goes: release the leases at a clean shutdown. */
static void
monitor_exit(int code, Datum arg)
{
	reliq_lease_release_all(conn);
}

void
reliq_monitor_main(Datum main_arg)
{
	MemoryContext cxt;
	TimestampTz next_watch = 0;
	TimestampTz next_lease = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(reliq_database_name, NULL, 0);
	SetConfigOption("application_name", "reliq monitor", PGC_USERSET, PGC_S_SESSION);

	cxt = AllocSetContextCreate(TopMemoryContext, "reliq monitor",
								ALLOCSET_DEFAULT_SIZES);
	before_shmem_exit(monitor_exit, (Datum) 0);
	for (;;)
	{
		TimestampTz now;
		long		secs;
		int			usecs;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		MemoryContextSwitchTo(cxt);
		MemoryContextReset(cxt);

		if (conn != NULL && reliq_nats_settings_changed(conn))
		{
			reliq_nats_close(conn);
			conn = NULL;
		}
		if (conn == NULL)
		{
			ReliqNatsStatus st = {0};

			conn = reliq_nats_connect("reliq monitor", &st);
			if (conn != NULL)
				reliq_nats_before_requests(conn, heartbeat_if_due);
			if (conn == NULL)
				note_failure(&st, psprintf("could not connect to NATS at %s",
									  reliq_nats_redacted_url()));
		}
		now = GetCurrentTimestamp();
		if (conn != NULL && reliq_nats_is_connected(conn) && now >= next_lease)
		{
			ReliqWatched *watched;
			int			count = read_watched(&watched, cxt);
			bool		renewed;

			next_lease = TimestampTzPlusMilliseconds(now, reliq_lease_renew_interval_ms());
			reliq_nats_before_requests(conn, NULL);
			renewed = reliq_lease_round(conn, watched, count);
			reliq_nats_before_requests(conn, heartbeat_if_due);
			if (!renewed)
				next_lease = Min(next_lease,
								 TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															 RELIQ_LEASE_RETRY_MS));
			next_heartbeat = next_lease;
		}
		if (conn != NULL && reliq_nats_is_connected(conn) && now >= next_watch)
		{
			next_watch = TimestampTzPlusMilliseconds(now, reliq_refresh_interval);
			watch(conn, cxt);
		}

		if (conn == NULL || !reliq_nats_is_connected(conn))
			next_watch = next_lease =
				TimestampTzPlusMilliseconds(now, reliq_lease_renew_interval_ms());
		TimestampDifference(GetCurrentTimestamp(), Min(next_watch, next_lease),
							&secs, &usecs);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(secs * 1000 + usecs / 1000, 1), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
