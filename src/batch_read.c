/*-------------------------------------------------------------------------
 *
 * batch_read.c
 *	  The bookkeeping reads of a batch's transaction: whether the
 *	  subscription still exists and which stream incarnation is recorded
 *	  for it, and the acknowledged floor; each a lookup in the table's
 *	  primary key, without SPI.
 *
 * Each was one SPI statement, about 25 µs of CPU apiece on a 2-core VM
 * (the search_path set and restored around it, the plan revalidated, an
 * executor started and stopped), three per batch: a tenth of a batch of
 * 10.  An index lookup reads the same row with the same snapshot in a
 * few microseconds.  The snapshots are those the statements used: the
 * transaction's for the identity (a read-only statement), a new one for
 * the floor (a statement that is not read-only takes its own; see
 * batch.c, forget_pruned).
 *
 * The tables are reliq's own, with no row security and no rules; like the
 * ledger's direct write (batch_ledger.c, record_plain), these reads check no
 * privileges: the statements ran as the worker, which may read them.
 * Their OIDs are kept until a relcache invalidation of one of them (or of
 * all) says to look them up again.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "batch_read.h"

static const char *const table_names[RELIQ_TABLE_COUNT] = {
	[RELIQ_TABLE_SUBSCRIPTION] = "subscription",
	[RELIQ_TABLE_STREAM_IDENTITY] = "_stream_identity",
	[RELIQ_TABLE_STREAM_FLOOR] = "_stream_floor",
	[RELIQ_TABLE_LEDGER] = "_ledger",
};

static Oid	table_oids[RELIQ_TABLE_COUNT];
static bool callback_registered = false;

static void
table_relcache_callback(Datum arg, Oid relid)
{
	int			i;

	for (i = 0; i < RELIQ_TABLE_COUNT; i++)
		if (relid == InvalidOid || relid == table_oids[i])
			table_oids[i] = InvalidOid;
}

/* The OID of one of reliq's tables; an error if it is missing. */
Oid
reliq_batch_table_oid(ReliqBatchTable table)
{
	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(table_relcache_callback, (Datum) 0);
		callback_registered = true;
	}
	if (!OidIsValid(table_oids[table]))
	{
		Oid			relid = get_relname_relid(table_names[table],
											  get_namespace_oid("reliq", false));

		if (!OidIsValid(relid))
			elog(ERROR, "table reliq.%s is missing", table_names[table]);
		table_oids[table] = relid;
	}
	return table_oids[table];
}

/*
 * Look up the row of table whose primary key is keys[0 .. nkeys - 1]
 * (int8 columns 1 .. nkeys), as snapshot sees it; if found, *value is its
 * int8 column value_column.
 */
static bool
lookup(ReliqBatchTable table, const int64 *keys, int nkeys,
	   AttrNumber value_column, Snapshot snapshot, int64 *value)
{
	Relation	rel = table_open(reliq_batch_table_oid(table), AccessShareLock);
	ScanKeyData scankeys[2];
	SysScanDesc scan;
	HeapTuple	tuple;
	bool		found = false;
	int			i;

	Assert(nkeys <= lengthof(scankeys));
	list_free(RelationGetIndexList(rel));	/* sets rd_pkindex */
	if (!OidIsValid(rel->rd_pkindex))
		elog(ERROR, "table reliq.%s has no primary key", table_names[table]);
	for (i = 0; i < nkeys; i++)
		ScanKeyInit(&scankeys[i], i + 1, BTEqualStrategyNumber, F_INT8EQ,
					Int64GetDatum(keys[i]));
	scan = systable_beginscan(rel, rel->rd_pkindex, true, snapshot, nkeys,
							  scankeys);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull = true;

		found = true;
		if (value_column > 0)
		{
			Datum		d = heap_getattr(tuple, value_column,
										 RelationGetDescr(rel), &isnull);

			if (!isnull)
				*value = DatumGetInt64(d);
		}
	}
	systable_endscan(scan);
	/* the lock is kept to the end of the transaction, as a statement's */
	table_close(rel, NoLock);
	return found;
}

/*
 * Does the subscription exist (as this transaction's snapshot sees it)?
 * If so, *stream_created is the stream incarnation recorded for it, or 0.
 */
bool
reliq_read_stream_identity(int64 subscription_id, int64 *stream_created)
{
	Snapshot	snapshot = GetActiveSnapshot();

	*stream_created = 0;
	if (!lookup(RELIQ_TABLE_SUBSCRIPTION, &subscription_id, 1, 0, snapshot, NULL))
		return false;
	(void) lookup(RELIQ_TABLE_STREAM_IDENTITY, &subscription_id, 1, 2, snapshot,
				  stream_created);
	return true;
}

/*
 * The acknowledged floor of the subscription's stream incarnation, read
 * with a new snapshot (as a statement that is not read-only would); false
 * if none is recorded.
 */
bool
reliq_read_stream_floor(int64 subscription_id, int64 stream_created,
						int64 *ack_floor)
{
	int64		keys[2] = {subscription_id, stream_created};
	Snapshot	snapshot = RegisterSnapshot(GetTransactionSnapshot());
	bool		found;

	*ack_floor = 0;
	found = lookup(RELIQ_TABLE_STREAM_FLOOR, keys, 2, 3, snapshot, ack_floor);
	UnregisterSnapshot(snapshot);
	return found;
}
