/*-------------------------------------------------------------------------
 *
 * outbox.c
 *	  The transactional outbox behind reliq.publish inside a handler.
 *
 * A handler's publish must not reach NATS before the handler's transaction
 * commits: a consumer downstream would see the event before the rows it
 * refers to (or see it even though the transaction rolled back).  So
 * inside a handler reliq.publish only queues the message; when the handler
 * returns, the queue is written to reliq._outbox in the same transaction
 * (or subtransaction, so a failed message takes its publishes with it).
 * After COMMIT the worker publishes the rows of its subscription, waits
 * for JetStream's acknowledgements, deletes them, and only then acks the
 * messages of the batch.
 *
 * Each row carries a Nats-Msg-Id derived from the message being handled
 * (or the one the handler gave), so a row published twice -- the worker
 * died between publishing and deleting it -- is dropped by JetStream as a
 * duplicate, provided it comes again within the stream's duplicate window
 * (2 minutes by default).  Rows left by a worker that died are published
 * by the next worker of the subscription, at start and periodically.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "catalog.h"
#include "message.h"
#include "outbox.h"
#include "reliq.h"
#include "spi_safe.h"
#include "trace.h"
#include "xact.h"

typedef struct DeferredPublish
{
	char	   *subject;
	bytea	   *data;
	Jsonb	   *headers;		/* NULL: none */
	char	   *msg_id;
} DeferredPublish;

static List *deferred = NIL;
static MemoryContext deferred_cxt = NULL;
static SPIPlanPtr insert_plan = NULL;

/* A handler starts: publishes are queued in the current memory context. */
void
reliq_outbox_begin(void)
{
	deferred = NIL;
	deferred_cxt = CurrentMemoryContext;
}

void
reliq_outbox_defer(const char *subject, bytea *data, Jsonb *headers,
				   const char *msg_id)
{
	MemoryContext old = MemoryContextSwitchTo(deferred_cxt);
	DeferredPublish *p = palloc(sizeof(DeferredPublish));

	p->subject = pstrdup(subject);
	p->data = (bytea *) PG_DETOAST_DATUM_COPY(PointerGetDatum(data));
	p->headers = headers ? (Jsonb *) PG_DETOAST_DATUM_COPY(PointerGetDatum(headers)) : NULL;
	p->msg_id = pstrdup(msg_id);
	deferred = lappend(deferred, p);
	MemoryContextSwitchTo(old);
}

void
reliq_outbox_discard(void)
{
	deferred = NIL;
}

/*
 * Write the handler's queued publishes to reliq._outbox, in the current
 * (sub)transaction; returns how many.  Called as reliq, not the owner.
 */
int
reliq_outbox_write(int64 subscription_id)
{
	ListCell   *lc;
	int			count = 0;

	if (deferred == NIL)
		return 0;

	if (insert_plan == NULL)
	{
		Oid			argtypes[5] = {INT8OID, TEXTOID, BYTEAOID, JSONBOID, TEXTOID};
		int			nest = reliq_enter_safe_search_path();
		SPIPlanPtr	plan;

		plan = reliq_prepare_kept("INSERT INTO reliq._outbox (subscription_id, subject, data, headers, msg_id)"
								  " VALUES ($1, $2, $3, $4, $5)",
								  5, argtypes);
		reliq_leave_safe_search_path(nest);
		insert_plan = plan;
	}

	foreach(lc, deferred)
	{
		DeferredPublish *p = lfirst(lc);
		Datum		values[5];
		char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

		values[0] = Int64GetDatum(subscription_id);
		values[1] = CStringGetTextDatum(p->subject);
		values[2] = PointerGetDatum(p->data);
		values[3] = PointerGetDatum(p->headers);
		if (p->headers == NULL)
			nulls[3] = 'n';
		values[4] = CStringGetTextDatum(p->msg_id);
		reliq_spi_execute_plan("write to reliq._outbox", insert_plan,
							   values, nulls, false, 0, SPI_OK_INSERT);
		count++;
	}
	deferred = NIL;
	return count;
}

/*
 * The subscriptions that have rows waiting in reliq._outbox (a worker died
 * between COMMIT and publishing them), in the caller's memory context;
 * *orphans when some rows belong to subscriptions dropped since (any lane
 * publishes those).  One query for all the lanes of a worker, each
 * reliq.refresh_interval, instead of a transaction per lane.
 */
int
reliq_outbox_waiting(int64 **subscription_ids, bool *orphans)
{
	MemoryContext caller = reliq_xact_begin(NULL);
	int64	   *ids;
	int			n;
	int			i;

	reliq_spi_connect();
	reliq_spi_execute("read reliq._outbox",
					  "SELECT DISTINCT o.subscription_id, s.id IS NULL"
					  "  FROM reliq._outbox o"
					  "  LEFT JOIN reliq.subscription s ON s.id = o.subscription_id",
					  0, NULL, NULL, NULL, true, 0, SPI_OK_SELECT);
	n = (int) SPI_processed;
	ids = MemoryContextAlloc(caller, sizeof(int64) * (n + 1));
	*orphans = false;
	for (i = 0; i < n; i++)
	{
		ids[i] = reliq_spi_int64(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		if (reliq_spi_bool(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2))
			*orphans = true;
	}
	reliq_spi_finish();
	reliq_xact_commit(caller);
	*subscription_ids = ids;
	return n;
}

/*
 * Publish up to `limit` outbox rows of the subscription, oldest first, and
 * delete those JetStream acknowledged, in one transaction of its own.
 * Rows another worker is publishing are skipped.  A row no stream captures
 * stays (and sets *stuck); a failure of the connection stops the round.
 * Returns the number of rows looked at, so the caller knows to go on;
 * why the last row that stayed did, in *st.
 */
int
reliq_outbox_publish(ReliqNatsConnection *conn, int64 subscription_id,
					 int limit, bool *stuck, ReliqNatsStatus *st)
{
	Oid			argtypes[2] = {INT8OID, INT4OID};
	Datum		args[2] = {Int64GetDatum(subscription_id), Int32GetDatum(limit)};
	Datum	   *published;
	int			npublished = 0;
	ReliqSpan  *spans;
	int			nspans = 0;
	int			rows;
	int			i;
	MemoryContext caller;

	*stuck = false;
	/* the worker shows "publishing the outbox" meanwhile */
	caller = reliq_xact_begin(NULL);
	reliq_spi_connect();

	/* also the rows of dropped subscriptions: their commits happened */
	reliq_spi_execute("read reliq._outbox",
					  "SELECT id, subject, data, headers, msg_id FROM reliq._outbox o"
					  " WHERE subscription_id = $1 OR NOT EXISTS"
					  " (SELECT FROM reliq.subscription s WHERE s.id = o.subscription_id)"
					  " ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
					  2, argtypes, args, NULL, false, 0, SPI_OK_SELECT);
	published = palloc(sizeof(Datum) * (SPI_processed + 1));	/* ids of rows published */
	rows = (int) SPI_processed;
	/* recorded after COMMIT, when SPI's memory is gone */
	spans = MemoryContextAlloc(caller, sizeof(ReliqSpan) * (rows + 1));

	for (i = 0; i < rows; i++)
	{
		HeapTuple	t = SPI_tuptable->vals[i];
		TupleDesc	d = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
		char	   *subject = SPI_getvalue(t, d, 2);
		bytea	   *data = DatumGetByteaPP(SPI_getbinval(t, d, 3, &isnull));
		Datum		headers = SPI_getbinval(t, d, 4, &isnull);
		char	   *msg_id = SPI_getvalue(t, d, 5);
		const char **keys = NULL;
		const char **values = NULL;
		const char *header_msg_id = NULL;
		int			nheaders = 0;
		int64		seq = 0;
		bool		duplicate = false;
		bool		ok;
		ReliqSpan  *span;
		ReliqNatsStatus row = {0};

		if (!isnull)
			nheaders = reliq_headers_from_jsonb(DatumGetJsonbP(headers),
												&keys, &values, &header_msg_id);
		span = &spans[nspans];
		reliq_trace_publish_span(span, subject, keys, values, nheaders,
								 header_msg_id ? header_msg_id : msg_id);
		ok = reliq_nats_publish(conn, subject, VARDATA_ANY(data),
								VARSIZE_ANY_EXHDR(data), keys, values, nheaders,
								header_msg_id ? NULL : msg_id, &seq, &duplicate,
								&row);
		if (span->type != 0)
		{
			reliq_trace_end_publish(span, ok, duplicate, seq, row.message);
			nspans++;
		}
		if (ok)
			published[npublished++] = Int64GetDatum(id);
		else
		{
			*stuck = true;
			if (st != NULL)
				*st = row;
			if (!row.no_responders)
				break;
		}
	}

	if (npublished > 0)
	{
		Oid			delete_types[1] = {INT8ARRAYOID};
		Datum		delete_args[1];

		delete_args[0] = PointerGetDatum(construct_array(published, npublished,
														 INT8OID, 8,
														 FLOAT8PASSBYVAL,
														 TYPALIGN_DOUBLE));
		reliq_spi_execute("delete from reliq._outbox",
						  "DELETE FROM reliq._outbox WHERE id = ANY($1)",
						  1, delete_types, delete_args, NULL, false, 0,
						  SPI_OK_DELETE);
	}
	reliq_spi_finish();
	reliq_xact_commit(caller);
	reliq_trace_record(spans, nspans);
	pfree(spans);
	return *stuck ? 0 : rows;
}
