/*-------------------------------------------------------------------------
 *
 * sink.c
 *	  The table sink: JSON messages inserted as rows of a table, in bulk.
 *
 * The fresh messages of a batch go in with one statement:
 *
 *	 INSERT INTO t (a, b, ...)
 *	 SELECT r.a, r.b, ...
 *	   FROM pg_catalog.unnest($1::jsonb[]) AS m(j),
 *			LATERAL pg_catalog.jsonb_populate_record(NULL::t, m.j) AS r
 *
 * Keys are matched to columns as jsonb_populate_record does.  A column
 * whose key a message lacks must get its default, as a plain INSERT that
 * leaves the column out would give it; a column present with null gets
 * NULL.  So the column list depends on which of the columns that have a
 * default (or are identity columns BY DEFAULT) each message names: the
 * messages of a batch are grouped by that set, one INSERT per group, each
 * statement prepared once per set and kept.  PostgreSQL fills the
 * defaults itself, from the catalog: reliq never parses a default's text
 * again (which could resolve its names differently, or need privileges a
 * plain INSERT does not, such as USAGE on an identity's sequence).
 * Generated columns and identity columns GENERATED ALWAYS are never
 * listed.
 *
 * A message that is not a JSON object, or does not fit the table, fails
 * (here, or in the statement); batch.c then applies the batch one message per
 * subtransaction, and the message takes the usual failure path.
 *
 * Every name in the statements is qualified, so they run the same under
 * any search_path.  A relcache invalidation of the target (ALTER TABLE...)
 * marks the prepared statements stale: the worker prepares them again
 * before its next batch.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "reliq.h"
#include "sink.h"
#include "spi_safe.h"

/* Columns with a default that a message may leave out: a 64-bit set. */
#define RELIQ_SINK_MAX_DEFAULTS 64

typedef struct SinkStatement
{
	uint64		present;		/* which defaulted columns it lists */
	SPIPlanPtr	plan;
} SinkStatement;

struct ReliqSink
{
	MemoryContext cxt;
	char	   *table;			/* qualified name */
	int			ncolumns;		/* insertable columns, in attnum order */
	char	  **columns;		/* quoted names */
	int		   *default_index;	/* per column: its bit, or -1 */
	int			ndefaults;
	char	  **default_keys;	/* per bit: the column's name, the JSON key */
	int			nstatements;
	SinkStatement *statements;
};

static Oid	watched_target = InvalidOid;
static bool statements_stale = false;

static void
sink_relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == watched_target)
		statements_stale = true;
}

bool
reliq_sink_is_stale(void)
{
	return statements_stale;
}

/* Read the target's columns; statements are prepared as sets appear. */
ReliqSink *
reliq_sink_prepare(const ReliqSubscription *sub, MemoryContext cxt)
{
	static bool callback_registered = false;
	char	   *relname = get_rel_name(sub->target);
	Oid			argtypes[1] = {OIDOID};
	Datum		args[1];
	ReliqSink  *sink;
	MemoryContext old;
	uint64		row;

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(sink_relcache_callback, (Datum) 0);
		callback_registered = true;
	}
	watched_target = sub->target;
	statements_stale = false;

	if (relname == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("target table of subscription \"%s\" does not exist",
						sub->name),
				 errdetail("The table with OID %u was dropped.", sub->target),
				 errhint("Create the table again, or drop the subscription.")));

	args[0] = ObjectIdGetDatum(sub->target);
	reliq_spi_execute("read the columns of a table sink's target",
					  "SELECT a.attname::text, a.atthasdef OR a.attidentity = 'd'"
					  "  FROM pg_catalog.pg_attribute a"
					  " WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped"
					  "   AND a.attgenerated = '' AND a.attidentity <> 'a'"
					  " ORDER BY a.attnum",
					  1, argtypes, args, NULL, true, 0, SPI_OK_SELECT);

	old = MemoryContextSwitchTo(cxt);
	sink = palloc0(sizeof(ReliqSink));
	sink->cxt = cxt;
	sink->table = quote_qualified_identifier(get_namespace_name(get_rel_namespace(sub->target)),
											 relname);
	sink->ncolumns = (int) SPI_processed;
	sink->columns = palloc0(sizeof(char *) * Max(sink->ncolumns, 1));
	sink->default_index = palloc0(sizeof(int) * Max(sink->ncolumns, 1));
	sink->default_keys = palloc0(sizeof(char *) * RELIQ_SINK_MAX_DEFAULTS);
	for (row = 0; row < SPI_processed; row++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[row];
		char	   *name = SPI_getvalue(tuple, SPI_tuptable->tupdesc, 1);
		bool		isnull;
		bool		has_default = DatumGetBool(SPI_getbinval(tuple, SPI_tuptable->tupdesc,
															 2, &isnull));

		sink->columns[row] = pstrdup(quote_identifier(name));
		sink->default_index[row] = -1;
		if (has_default)
		{
			if (sink->ndefaults == RELIQ_SINK_MAX_DEFAULTS)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("target table %s of subscription \"%s\" has more than %d columns with a default",
								sink->table, sub->name, RELIQ_SINK_MAX_DEFAULTS),
						 errhint("Use a handler function that inserts the row.")));
			sink->default_index[row] = sink->ndefaults;
			sink->default_keys[sink->ndefaults++] = pstrdup(name);
		}
	}
	MemoryContextSwitchTo(old);
	SPI_freetuptable(SPI_tuptable);
	return sink;
}

void
reliq_sink_free(ReliqSink *sink)
{
	int			i;

	for (i = 0; i < sink->nstatements; i++)
		reliq_spi_check(SPI_freeplan(sink->statements[i].plan), 0,
						"free a table sink's plan");
	/* the rest goes with the handler's memory context */
}

/* The statement listing the defaulted columns in present; kept. */
static SPIPlanPtr
statement_for(ReliqSink *sink, uint64 present)
{
	StringInfoData columns;
	StringInfoData values;
	Oid			argtypes[1] = {JSONBARRAYOID};
	SPIPlanPtr	plan;
	char	   *sql;
	int			n = 0;
	int			i;

	for (i = 0; i < sink->nstatements; i++)
		if (sink->statements[i].present == present)
			return sink->statements[i].plan;

	initStringInfo(&columns);
	initStringInfo(&values);
	for (i = 0; i < sink->ncolumns; i++)
	{
		int			bit = sink->default_index[i];

		if (bit >= 0 && (present & (UINT64CONST(1) << bit)) == 0)
			continue;			/* the table fills it */
		appendStringInfo(&columns, "%s%s", n > 0 ? ", " : "", sink->columns[i]);
		appendStringInfo(&values, "%sr.%s", n > 0 ? ", " : "", sink->columns[i]);
		n++;
	}
	if (n == 0)
		sql = psprintf("INSERT INTO %s SELECT FROM pg_catalog.unnest($1) AS m(j)",
					   sink->table);
	else
		sql = psprintf("INSERT INTO %s (%s) SELECT %s"
					   " FROM pg_catalog.unnest($1) AS m(j),"
					   " LATERAL pg_catalog.jsonb_populate_record(NULL::%s, m.j) AS r",
					   sink->table, columns.data, values.data, sink->table);

	plan = reliq_prepare_kept(sql, 1, argtypes);

	sink->statements = sink->nstatements == 0 ?
		MemoryContextAlloc(sink->cxt, sizeof(SinkStatement)) :
		repalloc(sink->statements, sizeof(SinkStatement) * (sink->nstatements + 1));
	sink->statements[sink->nstatements].present = present;
	sink->statements[sink->nstatements].plan = plan;
	sink->nstatements++;
	pfree(columns.data);
	pfree(values.data);
	pfree(sql);
	return plan;
}

/* Which of the columns with a default the object names; an error if it is no object. */
static uint64
keys_present(ReliqSink *sink, Jsonb *object)
{
	uint64		present = 0;
	int			i;

	if (!JB_ROOT_IS_OBJECT(object))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("message is not a JSON object"),
				 errdetail("A table sink makes a row of each message; its keys are the columns.")));
	for (i = 0; i < sink->ndefaults; i++)
	{
		JsonbValue	key;

		key.type = jbvString;
		key.val.string.val = sink->default_keys[i];
		key.val.string.len = strlen(sink->default_keys[i]);
		if (findJsonbValueFromContainer(&object->root, JB_FOBJECT, &key) != NULL)
			present |= UINT64CONST(1) << i;
	}
	return present;
}

/* Not under the safe search_path: every name is qualified (see above). */
static void
execute(SPIPlanPtr plan, Datum rows)
{
	reliq_spi_check(SPI_execute_plan(plan, &rows, NULL, false, 0),
					SPI_OK_INSERT, "insert into a table sink's target");
}

/*
 * Insert rows (a jsonb[] of objects) into the target, as the current user:
 * one statement per set of defaulted columns the objects name.
 */
void
reliq_sink_insert(ReliqSink *sink, Datum rows)
{
	ArrayType  *array = DatumGetArrayTypeP(rows);
	Datum	   *objects;
	uint64	   *present;
	bool	   *done;
	int			count;
	int			i;
	int			j;

	deconstruct_array(array, JSONBOID, -1, false, TYPALIGN_INT,
					  &objects, NULL, &count);
	if (count == 0)
		return;
	present = palloc(sizeof(uint64) * count);
	for (i = 0; i < count; i++)
		present[i] = keys_present(sink, DatumGetJsonbP(objects[i]));

	/* the usual case: every message names the same columns */
	for (i = 1; i < count && present[i] == present[0]; i++)
		;
	if (i == count)
	{
		execute(statement_for(sink, present[0]), rows);
		pfree(present);
		return;
	}

	done = palloc0(sizeof(bool) * count);
	for (i = 0; i < count; i++)
	{
		Datum	   *group;
		int			ngroup = 0;

		if (done[i])
			continue;
		group = palloc(sizeof(Datum) * count);
		for (j = i; j < count; j++)
		{
			if (!done[j] && present[j] == present[i])
			{
				group[ngroup++] = objects[j];
				done[j] = true;
			}
		}
		execute(statement_for(sink, present[i]),
				PointerGetDatum(construct_array(group, ngroup, JSONBOID, -1,
												false, TYPALIGN_INT)));
		pfree(group);
	}
	pfree(done);
	pfree(present);
}

/* A message payload as jsonb; an error if it is not UTF-8 JSON. */
static Datum
payload_jsonb(const char *data, int len)
{
	char	   *converted = pg_any_to_server(data, len, PG_UTF8);

	if (converted == data)
		converted = pnstrdup(data, len);
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(converted));
}

/* The payloads of msgs as a jsonb[], for reliq_sink_insert. */
Datum
reliq_sink_rows(ReliqMessage **msgs, int count)
{
	Datum	   *rows = palloc(sizeof(Datum) * Max(count, 1));
	int			i;

	for (i = 0; i < count; i++)
		rows[i] = payload_jsonb(msgs[i]->data, msgs[i]->data_len);
	return PointerGetDatum(construct_array(rows, count, JSONBOID, -1, false,
										   TYPALIGN_INT));
}

/* One payload given as bytea (a replayed dead letter) as a jsonb[]. */
Datum
reliq_sink_row_from_bytea(bytea *payload)
{
	Datum		row = payload_jsonb(VARDATA_ANY(payload), VARSIZE_ANY_EXHDR(payload));

	return PointerGetDatum(construct_array(&row, 1, JSONBOID, -1, false,
										   TYPALIGN_INT));
}
