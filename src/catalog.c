/*-------------------------------------------------------------------------
 *
 * catalog.c
 *	  reliq.subscription as the launcher and workers read it, and the
 *	  bookkeeping that makes redeliveries harmless.
 *
 * Exactly-once rests on three tables, all keyed by subscription and by the
 * stream's creation time (its identity: a stream deleted and made again
 * under the same name restarts at sequence 1):
 *
 *	 reliq._ledger			every applied stream sequence, written in the
 *							transaction that applied it;
 *	 reliq._stream_floor	the highest acknowledged floor the server has
 *							reported: every matching message at or below it
 *							was committed and acked, so the ledger rows
 *							below it can go;
 *	 reliq._stream_identity the stream incarnation the workers last
 *							attached to; a batch labelled with another one
 *							is refused.
 *
 * No lock orders batches and pruning.  A prune raises the floor and deletes
 * the ledger rows below it in one transaction; a batch that writes its
 * ledger rows reads the floor again afterwards, in a later statement (so
 * with a later snapshot), and takes any sequence at or below it for a
 * duplicate (batch.c).  A row a prune deleted between the batch's snapshot
 * and its conflict check is thus still caught; and no batch, however long,
 * holds up a prune or a worker attaching.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "ordering.h"
#include "reliq.h"
#include "spi_safe.h"

bool
reliq_catalog_extension_present(void)
{
	return OidIsValid(get_extension_oid(RELIQ_EXTENSION_NAME, true));
}

/*
 * The subscription with this id, allocated in the caller's memory context;
 * NULL when it no longer exists.
 */
ReliqSubscription *
reliq_catalog_load_subscription(int64 id)
{
	MemoryContext caller = CurrentMemoryContext;
	ReliqSubscription *sub = NULL;
	Oid			argtypes[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(id)};

	reliq_spi_connect();
	reliq_spi_execute("read reliq.subscription",
					  "SELECT id, subscription_name, stream, subject, consumer, handler,"
					  "       target::oid, batch_size, concurrency, max_deliver,"
					  "       ARRAY(SELECT (extract(epoch FROM b) * 1000)::int8"
					  "               FROM unnest(backoff) WITH ORDINALITY AS u(b, n) ORDER BY n),"
					  "       (extract(epoch FROM ack_wait) * 1000)::int8,"
					  "       COALESCE((extract(epoch FROM handler_timeout) * 1000)::int8, 0),"
					  "       start = 'new', enabled, owner::oid, version, created_at,"
					  "       mode = 'upsert', key, columns::text, newer_than,"
					  "       on_unknown_keys = 'dead_letter', ordering"
					  "  FROM reliq.subscription WHERE id = $1",
					  1, argtypes, args, NULL, true, 1, SPI_OK_SELECT);

	if (SPI_processed == 1)
	{
		HeapTuple	t = SPI_tuptable->vals[0];
		TupleDesc	d = SPI_tuptable->tupdesc;
		bool		isnull;
		ArrayType  *backoff;
		Datum	   *elems;
		int			i;

		MemoryContextSwitchTo(caller);
		sub = palloc0(sizeof(ReliqSubscription));
		sub->id = reliq_spi_int64(t, d, 1);
		sub->name = reliq_spi_text(t, d, 2);
		sub->stream = reliq_spi_text(t, d, 3);
		sub->subject = reliq_spi_text(t, d, 4);
		sub->consumer = reliq_spi_text(t, d, 5);
		sub->handler = reliq_spi_text(t, d, 6);
		sub->target = DatumGetObjectId(SPI_getbinval(t, d, 7, &isnull));
		if (isnull)
			sub->target = InvalidOid;
		sub->batch_size = reliq_spi_int32(t, d, 8);
		sub->concurrency = reliq_spi_int32(t, d, 9);
		sub->max_deliver = reliq_spi_int32(t, d, 10);
		backoff = DatumGetArrayTypePCopy(SPI_getbinval(t, d, 11, &isnull));
		deconstruct_array(backoff, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
						  &elems, NULL, &sub->nbackoff);
		sub->backoff_ms = palloc(sizeof(int64) * Max(sub->nbackoff, 1));
		for (i = 0; i < sub->nbackoff; i++)
			sub->backoff_ms[i] = DatumGetInt64(elems[i]);
		if (sub->nbackoff == 0)
		{
			sub->backoff_ms[0] = 0;
			sub->nbackoff = 1;
		}
		sub->ack_wait_ms = reliq_spi_int64(t, d, 12);
		sub->handler_timeout_ms = reliq_spi_int64(t, d, 13);
		sub->start_new = reliq_spi_bool(t, d, 14);
		sub->enabled = reliq_spi_bool(t, d, 15);
		sub->owner = DatumGetObjectId(SPI_getbinval(t, d, 16, &isnull));
		sub->version = reliq_spi_int64(t, d, 17);
		sub->created_at = DatumGetTimestampTz(SPI_getbinval(t, d, 18, &isnull));
		sub->upsert = reliq_spi_bool(t, d, 19);
		if (!heap_attisnull(t, 20, d))
		{
			deconstruct_array(DatumGetArrayTypePCopy(SPI_getbinval(t, d, 20, &isnull)),
							  TEXTOID, -1, false, TYPALIGN_INT,
							  &elems, NULL, &sub->nkey);
			sub->key = palloc(sizeof(char *) * Max(sub->nkey, 1));
			for (i = 0; i < sub->nkey; i++)
				sub->key[i] = TextDatumGetCString(elems[i]);
		}
		sub->columns = reliq_spi_text(t, d, 21);
		sub->newer_than = reliq_spi_text(t, d, 22);
		sub->strict_keys = reliq_spi_bool(t, d, 23);
		sub->ordering = reliq_spi_text(t, d, 24);
		reliq_ordering_resolve(sub);
	}
	reliq_spi_finish();
	return sub;
}

/* Every subscription, for the launcher; returns the count. */
int
reliq_catalog_list_subscriptions(ReliqSubscriptionSummary **list)
{
	MemoryContext caller = CurrentMemoryContext;
	uint64		i;
	int			count;

	reliq_spi_connect();
	reliq_spi_execute("read reliq.subscription",
					  "SELECT id, subscription_name, enabled, concurrency, version, batch_size"
					  "  FROM reliq.subscription ORDER BY id",
					  0, NULL, NULL, NULL, true, 0, SPI_OK_SELECT);

	count = (int) SPI_processed;
	*list = MemoryContextAllocZero(caller,
								   sizeof(ReliqSubscriptionSummary) * Max(count, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	t = SPI_tuptable->vals[i];
		TupleDesc	d = SPI_tuptable->tupdesc;
		char	   *name = SPI_getvalue(t, d, 2);

		(*list)[i].id = reliq_spi_int64(t, d, 1);
		strlcpy((*list)[i].name, name, NAMEDATALEN);
		(*list)[i].enabled = reliq_spi_bool(t, d, 3);
		(*list)[i].concurrency = reliq_spi_int32(t, d, 4);
		(*list)[i].version = reliq_spi_int64(t, d, 5);
		(*list)[i].batch_size = reliq_spi_int32(t, d, 6);
	}
	reliq_spi_finish();
	return count;
}

/*
 * What the monitor watches of each subscription; divergence is the table
 * of lost tails (or a stand-in before the update to 0.3).
 */
#define WATCHED_QUERY(divergence) \
	"SELECT s.id, s.subscription_name, s.stream, s.consumer, s.enabled," \
	"       i.stream_created, COALESCE(f.ack_floor, 0)," \
	"       greatest(COALESCE(f.ack_floor, 0)," \
	"                (SELECT max(l.stream_seq) FROM reliq._ledger l" \
	"                  WHERE l.subscription_id = s.id" \
	"                    AND l.stream_created = i.stream_created))," \
	"       d.subscription_id IS NOT NULL, d.accepted_at IS NOT NULL," \
	"       COALESCE(d.stream_last_seq, 0)" \
	"  FROM reliq.subscription s" \
	"  LEFT JOIN reliq._stream_identity i ON i.subscription_id = s.id" \
	"  LEFT JOIN reliq._stream_floor f ON f.subscription_id = s.id" \
	"        AND f.stream_created = i.stream_created" \
	"  LEFT JOIN " divergence " d ON d.subscription_id = s.id" \
	"        AND d.stream_created = i.stream_created" \
	" ORDER BY s.id"

/*
 * Every subscription with the stream incarnation its workers attached to,
 * the floor recorded for it, the highest sequence applied and any lost
 * tail of that incarnation, for the monitor.  Allocated in the
 * caller's memory context.
 */
int
reliq_catalog_list_watched(ReliqWatched **list)
{
	MemoryContext caller = CurrentMemoryContext;
	int			count;
	uint64		i;

	/*
	 * Before ALTER EXTENSION reliq UPDATE to 0.3 there is no
	 * _stream_divergence: read no divergence (workers of another version
	 * consume nothing anyway).
	 */
	bool		divergence = OidIsValid(get_relname_relid("_stream_divergence",
														  get_namespace_oid("reliq", false)));

	reliq_spi_connect();
	reliq_spi_execute("read reliq.subscription",
					  divergence ? WATCHED_QUERY("reliq._stream_divergence") :
					  WATCHED_QUERY("(SELECT NULL::bigint AS subscription_id, NULL::bigint AS stream_created,"
									" NULL::timestamptz AS accepted_at, NULL::bigint AS stream_last_seq)"),
					  0, NULL, NULL, NULL, true, 0, SPI_OK_SELECT);

	count = (int) SPI_processed;
	*list = MemoryContextAllocZero(caller, sizeof(ReliqWatched) * Max(count, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	t = SPI_tuptable->vals[i];
		TupleDesc	d = SPI_tuptable->tupdesc;
		ReliqWatched *w = &(*list)[i];
		bool		isnull;

		w->id = reliq_spi_int64(t, d, 1);
		w->name = MemoryContextStrdup(caller, SPI_getvalue(t, d, 2));
		w->stream = MemoryContextStrdup(caller, SPI_getvalue(t, d, 3));
		w->consumer = MemoryContextStrdup(caller, SPI_getvalue(t, d, 4));
		w->enabled = reliq_spi_bool(t, d, 5);
		(void) SPI_getbinval(t, d, 6, &isnull);
		w->attached = !isnull;
		w->stream_created = reliq_spi_int64(t, d, 6);
		w->ack_floor = reliq_spi_int64(t, d, 7);
		w->applied_seq = reliq_spi_int64(t, d, 8);
		w->diverged = reliq_spi_bool(t, d, 9);
		w->loss_accepted = reliq_spi_bool(t, d, 10);
		w->diverged_last_seq = reliq_spi_int64(t, d, 11);
	}
	reliq_spi_finish();
	return count;
}

/* Drop the bookkeeping rows of subscriptions that no longer exist. */
void
reliq_catalog_forget_dropped(void)
{
	static const char *const tables[] = {
		"reliq._ledger",
		"reliq._stream_floor",
		"reliq._stream_identity",
		"reliq._stream_divergence",
	};
	int			i;

	reliq_spi_connect();
	for (i = 0; i < lengthof(tables); i++)
		reliq_spi_execute("forget the bookkeeping of dropped subscriptions",
						  psprintf("DELETE FROM %s b WHERE NOT EXISTS"
								   " (SELECT FROM reliq.subscription s WHERE s.id = b.subscription_id)",
								   tables[i]),
						  0, NULL, NULL, NULL, false, 0, SPI_OK_DELETE);
	reliq_spi_finish();
}

/*
 * The consumer's MaxAckPending: room for every worker's batch and the next
 * one it pulls meanwhile.  The one place it is computed: SQL calls it as
 * reliq._max_ack_pending() (api.c).
 */
int64
reliq_max_ack_pending(int batch_size, int concurrency)
{
	return Max((int64) 1000, (int64) 2 * batch_size * concurrency);
}

int64
reliq_subscription_max_ack_pending(const ReliqSubscription *sub)
{
	return reliq_max_ack_pending(sub->batch_size, sub->concurrency);
}

/*
 * A worker has found the stream incarnation stream_created on the server:
 * record it as the subscription's current one.  Batches labelled with any
 * other incarnation are then refused.  The last worker to attach wins: a
 * worker that read a stream just deleted finds out when it reads the
 * stream again after setting up the consumer (lane.c), and attaches
 * anew.  The ledger of other incarnations is kept -- reliq may be pointed
 * back at a server that still has one -- and goes with the subscription.
 * Returns the incarnation now recorded, or 0 if the subscription has been
 * dropped or paused.  *floor and *has_history tell
 * where the subscription stands in that stream, so a consumer that must
 * be made again starts after the last acknowledged message.
 */
int64
reliq_catalog_claim_stream(int64 subscription_id, int64 stream_created,
						   int64 *floor, bool *has_history)
{
	Oid			argtypes[2] = {INT8OID, INT8OID};
	Datum		args[2] = {Int64GetDatum(subscription_id),
	Int64GetDatum(stream_created)};
	int64		current;

	reliq_spi_connect();

	/*
	 * Wait for a drop or a pause being committed: drop_subscription deletes
	 * the consumer before its transaction commits, and a worker that saw
	 * the consumer gone must not make it again for a dropped subscription.
	 */
	reliq_spi_execute("lock the subscription",
					  "SELECT FROM reliq.subscription WHERE id = $1 AND enabled FOR KEY SHARE",
					  1, argtypes, args, NULL, false, 0, SPI_OK_SELECT);
	if (SPI_processed == 0)
	{
		reliq_spi_finish();
		return 0;
	}
	reliq_spi_execute("record the stream's identity",
					  "INSERT INTO reliq._stream_identity AS i (subscription_id, stream_created)"
					  " VALUES ($1, $2)"
					  " ON CONFLICT (subscription_id) DO UPDATE"
					  "   SET stream_created = excluded.stream_created, updated_at = now()"
					  " RETURNING stream_created",
					  2, argtypes, args, NULL, false, 1, SPI_OK_INSERT_RETURNING);
	current = reliq_spi_int64(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

	reliq_spi_execute("read reliq._stream_floor",
					  "SELECT (SELECT ack_floor FROM reliq._stream_floor"
					  "          WHERE subscription_id = $1 AND stream_created = $2),"
					  "       EXISTS (SELECT FROM reliq._ledger"
					  "                WHERE subscription_id = $1 AND stream_created = $2)",
					  2, argtypes, args, NULL, true, 1, SPI_OK_SELECT);
	{
		HeapTuple	t = SPI_tuptable->vals[0];
		TupleDesc	d = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		f = SPI_getbinval(t, d, 1, &isnull);

		*floor = isnull ? 0 : DatumGetInt64(f);
		*has_history = !isnull || reliq_spi_bool(t, d, 2);
	}
	reliq_spi_finish();
	return current;
}

/*
 * The floor recorded for this stream incarnation: every matching message
 * at or below it was applied in this database, or lay before the
 * subscription's start.  -1 when none is recorded.
 */
int64
reliq_catalog_floor(int64 subscription_id, int64 stream_created)
{
	Oid			argtypes[2] = {INT8OID, INT8OID};
	Datum		args[2] = {Int64GetDatum(subscription_id),
	Int64GetDatum(stream_created)};
	int64		floor = -1;

	reliq_spi_connect();
	reliq_spi_execute("read reliq._stream_floor",
					  "SELECT ack_floor FROM reliq._stream_floor"
					  " WHERE subscription_id = $1 AND stream_created = $2",
					  2, argtypes, args, NULL, true, 1, SPI_OK_SELECT);
	if (SPI_processed == 1)
		floor = reliq_spi_int64(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	reliq_spi_finish();
	return floor;
}

/*
 * The server reports every message up to ack_floor acknowledged: remember
 * that floor (it never goes down here, though a killed server may report a
 * lower one later) and drop the ledger rows it covers.
 */
void
reliq_catalog_advance_floor(int64 subscription_id, int64 stream_created,
							int64 ack_floor)
{
	Oid			argtypes[3] = {INT8OID, INT8OID, INT8OID};
	Datum		args[3] = {Int64GetDatum(subscription_id),
		Int64GetDatum(stream_created),
	Int64GetDatum(ack_floor)};

	reliq_spi_connect();
	reliq_spi_execute("record the acknowledged floor",
					  "INSERT INTO reliq._stream_floor AS f (subscription_id, stream_created, ack_floor)"
					  " VALUES ($1, $2, $3)"
					  " ON CONFLICT (subscription_id, stream_created) DO UPDATE"
					  "   SET ack_floor = greatest(f.ack_floor, excluded.ack_floor),"
					  "       updated_at = now()",
					  3, argtypes, args, NULL, false, 0, SPI_OK_INSERT);
	reliq_spi_execute("prune reliq._ledger",
					  "DELETE FROM reliq._ledger"
					  " WHERE subscription_id = $1 AND stream_created = $2"
					  "   AND stream_seq <= $3",
					  3, argtypes, args, NULL, false, 0, SPI_OK_DELETE);
	reliq_spi_finish();
}

/*
 * The highest stream sequence this database applied of that incarnation
 * of the stream: its floor, or the ledger's highest row above it (0:
 * none).  An index probe each.
 */
int64
reliq_catalog_applied_seq(int64 subscription_id, int64 stream_created)
{
	Oid			argtypes[2] = {INT8OID, INT8OID};
	Datum		args[2] = {Int64GetDatum(subscription_id),
	Int64GetDatum(stream_created)};
	int64		applied;

	reliq_spi_connect();
	reliq_spi_execute("read the highest sequence applied",
					  "SELECT greatest((SELECT f.ack_floor FROM reliq._stream_floor f"
					  "                  WHERE f.subscription_id = $1 AND f.stream_created = $2),"
					  "                (SELECT max(l.stream_seq) FROM reliq._ledger l"
					  "                  WHERE l.subscription_id = $1 AND l.stream_created = $2),"
					  "                0)",
					  2, argtypes, args, NULL, true, 1, SPI_OK_SELECT);
	applied = reliq_spi_int64(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	reliq_spi_finish();
	return applied;
}

/*
 * The stream lost its tail: its last sequence is below what this database
 * applied (see monitor.c).  Remember it, so that the subscription consumes
 * nothing until reliq.accept_stream_loss() (which reads the row) moves the
 * floor.  Seen again lower, the lower last sequence is kept: new messages
 * start right after the lowest one seen.
 */
void
reliq_catalog_note_divergence(int64 subscription_id, int64 stream_created,
							  int64 stream_last_seq, int64 applied_seq)
{
	Oid			argtypes[4] = {INT8OID, INT8OID, INT8OID, INT8OID};
	Datum		args[4] = {Int64GetDatum(subscription_id),
		Int64GetDatum(stream_created),
		Int64GetDatum(stream_last_seq),
	Int64GetDatum(applied_seq)};

	reliq_spi_connect();
	reliq_spi_execute("forget the lost tail of a former incarnation",
					  "DELETE FROM reliq._stream_divergence"
					  " WHERE subscription_id = $1 AND stream_created <> $2",
					  2, argtypes, args, NULL, false, 0, SPI_OK_DELETE);
	reliq_spi_execute("record a stream's lost tail",
					  "INSERT INTO reliq._stream_divergence AS d"
					  " (subscription_id, stream_created, stream_last_seq, applied_seq)"
					  " VALUES ($1, $2, $3, $4)"
					  " ON CONFLICT (subscription_id) DO UPDATE"
					  "   SET stream_last_seq = least(d.stream_last_seq, excluded.stream_last_seq)"
					  " WHERE d.stream_created = excluded.stream_created"
					  "   AND d.accepted_at IS NULL",
					  4, argtypes, args, NULL, false, 0, SPI_OK_INSERT);
	reliq_spi_finish();
}

/*
 * Has this incarnation of the subscription's stream lost its tail (a row,
 * accepted or not: an accepted loss waits for the monitor's rewind)?
 */
bool
reliq_catalog_diverged(int64 subscription_id, int64 stream_created)
{
	Oid			argtypes[2] = {INT8OID, INT8OID};
	Datum		args[2] = {Int64GetDatum(subscription_id),
	Int64GetDatum(stream_created)};
	bool		diverged;

	reliq_spi_connect();
	reliq_spi_execute("read reliq._stream_divergence",
					  "SELECT FROM reliq._stream_divergence"
					  " WHERE subscription_id = $1 AND stream_created = $2",
					  2, argtypes, args, NULL, true, 1, SPI_OK_SELECT);
	diverged = SPI_processed > 0;
	reliq_spi_finish();
	return diverged;
}

/*
 * The accepted loss is behind us (accepted_only: the consumer was
 * rewound), or the stream was made again (a new incarnation has no lost
 * tail).
 */
void
reliq_catalog_forget_divergence(int64 subscription_id, bool accepted_only)
{
	Oid			argtypes[2] = {INT8OID, BOOLOID};
	Datum		args[2] = {Int64GetDatum(subscription_id),
	BoolGetDatum(accepted_only)};

	reliq_spi_connect();
	reliq_spi_execute("forget a stream's lost tail",
					  "DELETE FROM reliq._stream_divergence"
					  " WHERE subscription_id = $1"
					  "   AND (accepted_at IS NOT NULL OR NOT $2)",
					  2, argtypes, args, NULL, false, 0, SPI_OK_DELETE);
	reliq_spi_finish();
}
