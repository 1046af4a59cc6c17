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
 * The leases come first, on their own deadline: a round of figures is
 * done a step at a time (one request to NATS, or one floor, per step), and
 * the main loop renews the leases whenever they are due, between any two
 * steps.  A round over a thousand subscriptions never delays a renewal by
 * more than one request.
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
note_failure(const char *what)
{
	char	   *problem = psprintf("%s: %s", what, reliq_nats_last_error());

	if (strcmp(problem, last_problem) != 0)
	{
		reliq_nats_report(LOG, 0, psprintf("reliq monitor: %s", what), NULL, NULL);
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

/*
 * Pause or resume w's consumer on the server (2.11+) to match w->enabled,
 * when this cluster holds its lease and the listing said how it stands.
 * A failure is logged when it starts or changes; the next round tries
 * again.
 */
static void
sync_server_pause(ReliqNatsConnection *conn, const ReliqWatched *w,
				  const ReliqConsumerInfo *info)
{
	ReliqSubscriptionStats *entry = reliq_stats_find(w->id, false, NULL);
	ReliqLeaseView lease;
	bool		pause = !w->enabled;
	char	   *problem;

	if (entry == NULL || !info->found || !info->paused_known ||
		info->paused == pause)
		return;
	reliq_lease_read(entry, &lease);
	if (!reliq_lease_usable(&lease))
		return;
	if (reliq_nats_pause_consumer(conn, w->stream, w->consumer, pause))
	{
		ereport(LOG,
				(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
				 errmsg("reliq subscription \"%s\": consumer \"%s\" %s on the server",
						w->name, w->consumer, pause ? "paused" : "resumed")));
		last_pause_problem[0] = '\0';
		return;
	}
	problem = psprintf("%s %s: %s", w->name, pause ? "pause" : "resume",
					   reliq_nats_last_error());
	if (strcmp(problem, last_pause_problem) != 0)
	{
		reliq_nats_report(LOG, 0,
						  psprintf("reliq subscription \"%s\": could not %s consumer \"%s\" on the server",
								   w->name, pause ? "pause" : "resume", w->consumer),
						  NULL, "");
		strlcpy(last_pause_problem, problem, sizeof(last_pause_problem));
	}
}

/*
 * A round of figures, done a step at a time: each step asks NATS one thing
 * (a page of a stream's consumers, a stream), or records one floor, so that
 * the main loop renews the leases on their own deadline between any two
 * steps, however many subscriptions there are.  The consumers are asked
 * first, then each stream once.  A floor is recorded only if the stream is
 * still the incarnation the workers attached to when asked after the
 * consumer (incarnations never come back, so it was that one when the
 * consumer answered too).
 */
typedef enum RoundPhase
{
	ROUND_IDLE,					/* no round under way */
	ROUND_CONSUMERS,			/* listing each stream's consumers */
	ROUND_STREAMS,				/* asking each stream */
	ROUND_FLOORS,				/* recording floors, the server-side pause */
} RoundPhase;

typedef struct Round
{
	RoundPhase	phase;
	MemoryContext cxt;			/* the round's, reset when one starts */
	ReliqWatched *watched;
	int			count;
	ReliqConsumerInfo *infos;
	ReliqStreamInfo *streams;
	bool	   *asked;
	int			next;			/* the next subscription to look at */
} Round;

static Round figures = {ROUND_IDLE};

static void
round_start(MemoryContext parent)
{
	MemoryContext old;

	if (figures.cxt == NULL)
		figures.cxt = AllocSetContextCreate(parent, "reliq monitor round",
										  ALLOCSET_DEFAULT_SIZES);
	MemoryContextReset(figures.cxt);
	figures.count = read_watched(&figures.watched, figures.cxt);
	old = MemoryContextSwitchTo(figures.cxt);
	figures.infos = palloc0(sizeof(ReliqConsumerInfo) * Max(figures.count, 1));
	figures.streams = palloc0(sizeof(ReliqStreamInfo) * Max(figures.count, 1));
	figures.asked = palloc0(sizeof(bool) * Max(figures.count, 1));
	MemoryContextSwitchTo(old);
	figures.next = 0;
	figures.phase = ROUND_CONSUMERS;
}

/*
 * The consumers of the stream of subscription i and of every later one
 * reading it, listed a page of 256 at a time (a thousand subscriptions:
 * four requests, not a thousand).  False if NATS did not answer.
 */
static bool
list_consumers(ReliqNatsConnection *conn, int i)
{
	const char **names;
	int		   *index;
	ReliqConsumerInfo *listed;
	int			n = 0;
	int			j;

	names = palloc(sizeof(char *) * figures.count);
	index = palloc(sizeof(int) * figures.count);
	for (j = i; j < figures.count; j++)
		if (!figures.asked[j] &&
			strcmp(figures.watched[j].stream, figures.watched[i].stream) == 0)
		{
			figures.asked[j] = true;
			index[n] = j;
			names[n++] = figures.watched[j].consumer;
		}
	listed = palloc(sizeof(ReliqConsumerInfo) * n);
	if (!reliq_nats_consumer_infos(conn, figures.watched[i].stream, names, n, listed))
	{
		/*
		 * A cluster with a server down may not answer a listing (the meta
		 * leader waits for every peer of the stream) while each consumer's
		 * leader still answers for its consumer: ask them one by one.
		 */
		for (j = 0; j < n; j++)
		{
			CHECK_FOR_INTERRUPTS();
			if (!reliq_nats_consumer_info(conn, figures.watched[i].stream, names[j],
										  &listed[j]))
			{
				note_failure(psprintf("could not ask NATS about consumer \"%s\"",
									  names[j]));
				return false;
			}
		}
	}
	for (j = 0; j < n; j++)
		figures.infos[index[j]] = listed[j];
	return true;
}

/* The consumers' figures, into shared memory. */
static void
publish_figures(void)
{
	int			i;

	for (i = 0; i < figures.count; i++)
	{
		ReliqWatched *w = &figures.watched[i];
		ReliqSubscriptionStats *entry;

		if (!figures.infos[i].found)
			continue;			/* the workers make it again when they attach */
		entry = reliq_stats_find(w->id, false, NULL);
		reliq_stats_set_consumer_info(entry, figures.infos[i].num_pending,
									  figures.infos[i].num_ack_pending,
									  figures.infos[i].num_redelivered,
									  figures.infos[i].ack_floor_stream_seq,
									  figures.infos[i].max_ack_pending);
		if (entry != NULL && w->enabled)
			reliq_stats_record_lag(entry, figures.infos[i].num_pending);
	}
}

/* Stream i, asked once for every subscription reading it. */
static void
ask_stream(ReliqNatsConnection *conn, int i)
{
	int			j;

	if (!reliq_nats_stream_info(conn, figures.watched[i].stream, &figures.streams[i]))
		memset(&figures.streams[i], 0, sizeof(ReliqStreamInfo));
	figures.asked[i] = true;
	for (j = i + 1; j < figures.count; j++)
		if (!figures.asked[j] &&
			strcmp(figures.watched[j].stream, figures.watched[i].stream) == 0)
		{
			figures.streams[j] = figures.streams[i];
			figures.asked[j] = true;
		}
}

/* Subscription i's retention, floor and (2.11+) server-side pause. */
static void
settle_subscription(ReliqNatsConnection *conn, int i)
{
	ReliqWatched *w = &figures.watched[i];
	ReliqSubscriptionStats *entry = reliq_stats_find(w->id, false, NULL);
	ReliqLeaseView lease;

	if (entry == NULL || !figures.infos[i].found)
		return;
	if (figures.streams[i].found)
	{
		reliq_stats_set_retention(entry, figures.streams[i].retention);
		reliq_lease_read(entry, &lease);
		if (reliq_lease_usable(&lease) &&
			w->attached && figures.infos[i].ack_floor_stream_seq > w->ack_floor &&
			figures.streams[i].created_ns == w->stream_created)
			record_floor(w, figures.infos[i].ack_floor_stream_seq);
	}
	/* a standby's catalog is the primary's: the primary's monitor acts */
	if (reliq_nats_server_at_least(conn, 2, 11) && !RecoveryInProgress())
		sync_server_pause(conn, w, &figures.infos[i]);
}

/*
 * One step of the round under way; the round is over (ROUND_IDLE) after
 * its last step, or at once when NATS stops answering.
 */
static void
round_step(ReliqNatsConnection *conn)
{
	MemoryContext old = MemoryContextSwitchTo(figures.cxt);

	while (figures.next < figures.count &&
		   (figures.phase == ROUND_FLOORS ? false : figures.asked[figures.next]))
		figures.next++;
	if (figures.next < figures.count)
	{
		switch (figures.phase)
		{
			case ROUND_CONSUMERS:
				if (!list_consumers(conn, figures.next))
					figures.phase = ROUND_IDLE;	/* likely gone: next round */
				break;
			case ROUND_STREAMS:
				if (figures.infos[figures.next].found)
					ask_stream(conn, figures.next);
				else
					figures.asked[figures.next] = true;
				break;
			case ROUND_FLOORS:
				settle_subscription(conn, figures.next);
				figures.next++;
				break;
			case ROUND_IDLE:
				break;
		}
		MemoryContextSwitchTo(old);
		return;
	}

	/* this phase is done: the next */
	figures.next = 0;
	switch (figures.phase)
	{
		case ROUND_CONSUMERS:
			publish_figures();
			memset(figures.asked, 0, sizeof(bool) * Max(figures.count, 1));
			figures.phase = ROUND_STREAMS;
			break;
		case ROUND_STREAMS:
			figures.phase = ROUND_FLOORS;
			break;
		case ROUND_FLOORS:
			note_success();
			figures.phase = ROUND_IDLE;
			break;
		case ROUND_IDLE:
			break;
	}
	MemoryContextSwitchTo(old);
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
		long		timeout;
		bool		connected;

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
			conn = reliq_nats_connect("reliq monitor");
			if (conn == NULL)
				note_failure(psprintf("could not connect to NATS at %s",
									  reliq_nats_redacted_url()));
		}
		now = GetCurrentTimestamp();
		connected = conn != NULL && reliq_nats_is_connected(conn);
		if (connected && now >= next_lease)
		{
			/* the leases first, on their own deadline, ahead of any figure */
			ReliqWatched *watched;
			int			count = read_watched(&watched, cxt);

			next_lease = TimestampTzPlusMilliseconds(now, reliq_lease_renew_interval_ms());
			if (!reliq_lease_round(conn, watched, count))
				next_lease = Min(next_lease,
								 TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															 RELIQ_LEASE_RETRY_MS));
		}
		else if (connected && (figures.phase != ROUND_IDLE || now >= next_watch))
		{
			/* then one step of the figures */
			if (figures.phase == ROUND_IDLE)
			{
				next_watch = TimestampTzPlusMilliseconds(now, reliq_refresh_interval);
				round_start(TopMemoryContext);
			}
			round_step(conn);
		}

		if (!connected)
		{
			figures.phase = ROUND_IDLE;
			next_watch = next_lease =
				TimestampTzPlusMilliseconds(now, reliq_lease_renew_interval_ms());
		}
		/* a round under way goes on at once, after a look at the latch */
		TimestampDifference(GetCurrentTimestamp(), Min(next_watch, next_lease),
							&secs, &usecs);
		timeout = figures.phase != ROUND_IDLE ? 0 : Max(secs * 1000 + usecs / 1000, 1);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
