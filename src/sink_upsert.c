/*-------------------------------------------------------------------------
 *
 * sink_upsert.c
 *	  The table sink's upsert path (mode 'upsert'): a batch's messages
 *	  collapsed by key, one DELETE and one INSERT ... ON CONFLICT DO UPDATE
 *	  (sink_internal.h).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "catalog/pg_type.h"
#include "commands/copy.h"
#include "common/jsonapi.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "nodes/makefuncs.h"
#include "parser/parse_node.h"
#include "parser/parse_relation.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/jsonfuncs.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "pg_compat.h"
#include "reliq.h"
#include "sink_internal.h"
#include "spi_safe.h"

/*
 * The upsert path
 *
 * The messages of a batch are grouped by key and each group collapsed, in
 * stream order, into what applying them one by one would leave: the
 * objects merged (a later message's keys win; a key no message names
 * keeps the row's value), a delete dropping what came before it.  Then
 * one DELETE for the keys whose group holds a delete, and one
 *
 *	 INSERT INTO t AS t (named columns)
 *	 SELECT r.... FROM unnest($1) AS m(j), LATERAL jsonb_populate_record(NULL::t, m.j) AS r
 *	 ON CONFLICT (key) DO UPDATE SET c = EXCLUDED.c, ...
 *
 * per set of columns the collapsed objects name (usually one).  No key
 * appears twice in a statement, so ON CONFLICT never meets a row twice.
 * With newer_than, DO UPDATE ... WHERE t.col IS NULL OR t.col <=
 * EXCLUDED.col, and rounds instead of the collapse (upsert_in_rounds).
 */

typedef struct SinkKeyed
{
	char	   *key;			/* the key's values, as text */
	int64		stream_seq;
	int			index;
	bool		delete;
	Jsonb	   *object;
} SinkKeyed;

/* Does this message delete its key's row (upsert mode)? */
bool
reliq_sink_is_delete(const SinkMeta *meta, int len)
{
	const char *op = reliq_sink_find_header(meta, "reliq-op");

	if (op == NULL)
		return len == 0;
	if (pg_strcasecmp(op, "delete") == 0)
		return true;
	if (pg_strcasecmp(op, "upsert") == 0)
		return false;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown reliq-op header \"%s\"", op),
			 errdetail("An upsert sink knows the operations \"delete\" and \"upsert\" (the default)."),
			 errhint("Send \"reliq-op: delete\" to delete the row with the message's key.")));
	return false;				/* keep the compiler quiet */
}

/* The key's values of an object, as one string; an error if one is missing. */
static char *
key_text(ReliqSink *sink, Jsonb *object)
{
	StringInfoData buf;
	int			i;

	initStringInfo(&buf);
	for (i = 0; i < sink->nkey; i++)
	{
		const char *name = sink->names[sink->key_columns[i]];
		JsonbValue	key;
		JsonbValue *v;
		char	   *text;

		key.type = jbvString;
		key.val.string.val = (char *) name;
		key.val.string.len = strlen(name);
		v = findJsonbValueFromContainer(&object->root, JB_FOBJECT, &key);
		if (v == NULL || v->type == jbvNull)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("message has no value for key column \"%s\"", name),
					 errdetail("An upsert sink finds a message's row by its key: from the message's JSON object, or from the subscription's columns (its subject, headers)."),
					 errhint("Fill the key from the subject or a header with reliq.alter_subscription(..., columns => '{\"%s\": \"$subject[2]\"}').",
							 name)));
		if (v->type == jbvString)
			text = pnstrdup(v->val.string.val, v->val.string.len);
		else
		{
			Jsonb	   *scalar = JsonbValueToJsonb(v);

			text = JsonbToCString(NULL, &scalar->root, VARSIZE(scalar));
		}
		appendStringInfo(&buf, "%d:%s;", (int) strlen(text), text);
	}
	return buf.data;
}

static int
compare_keyed(const void *a, const void *b)
{
	const SinkKeyed *x = a;
	const SinkKeyed *y = b;
	int			c = strcmp(x->key, y->key);

	if (c != 0)
		return c;
	if (x->stream_seq != y->stream_seq)
		return x->stream_seq < y->stream_seq ? -1 : 1;
	return x->index - y->index;
}

/* The statement deleting the rows whose keys the objects have; kept. */
static SPIPlanPtr
delete_statement(ReliqSink *sink)
{
	StringInfoData sql;
	Oid			argtypes[1] = {JSONBARRAYOID};
	int			i;

	if (sink->delete_plan)
		return sink->delete_plan;
	initStringInfo(&sql);
	appendStringInfo(&sql, "DELETE FROM %s AS t USING pg_catalog.unnest($1) AS m(j),"
					 " LATERAL pg_catalog.jsonb_populate_record(NULL::%s, m.j) AS r WHERE ",
					 sink->table, sink->table);
	for (i = 0; i < sink->nkey; i++)
		appendStringInfo(&sql, "%st.%s = r.%s", i > 0 ? " AND " : "",
						 sink->columns[sink->key_columns[i]],
						 sink->columns[sink->key_columns[i]]);
	sink->delete_plan = reliq_prepare_kept(sql.data, 1, argtypes);
	pfree(sql.data);
	return sink->delete_plan;
}

static bool
is_key_column(ReliqSink *sink, int column)
{
	int			i;

	for (i = 0; i < sink->nkey; i++)
		if (sink->key_columns[i] == column)
			return true;
	return false;
}

/* The guard of newer_than against the values in rel, if named has it. */
static void
append_guard(StringInfo sql, ReliqSink *sink, const char *named,
			 const char *rel)
{
	const char *col;

	if (sink->newer_column < 0 || named[sink->newer_column] != '1')
		return;
	col = sink->columns[sink->newer_column];
	appendStringInfo(sql, " t.%s IS NULL OR t.%s <= %s.%s", col, col, rel, col);
}

/*
 * INSERT ... ON CONFLICT DO UPDATE of the named columns: a new key makes a
 * row (the columns left out take their defaults), an existing one has the
 * named columns updated.
 */
static char *
insert_on_conflict(ReliqSink *sink, const char *named)
{
	StringInfoData sql;
	StringInfoData values;
	StringInfoData updates;
	int			n = 0;
	int			i;

	initStringInfo(&sql);
	initStringInfo(&values);
	initStringInfo(&updates);
	appendStringInfo(&sql, "INSERT INTO %s AS t (", sink->table);
	for (i = 0; i < sink->ncolumns; i++)
	{
		if (named[i] != '1')
			continue;
		appendStringInfo(&sql, "%s%s", n > 0 ? ", " : "", sink->columns[i]);
		appendStringInfo(&values, "%sr.%s", n > 0 ? ", " : "", sink->columns[i]);
		n++;
		if (!is_key_column(sink, i))
			appendStringInfo(&updates, "%s%s = EXCLUDED.%s", updates.len > 0 ? ", " : "",
							 sink->columns[i], sink->columns[i]);
	}
	appendStringInfo(&sql, ") SELECT %s FROM pg_catalog.unnest($1) AS m(j),"
					 " LATERAL pg_catalog.jsonb_populate_record(NULL::%s, m.j) AS r"
					 " ON CONFLICT (",
					 values.data, sink->table);
	for (i = 0; i < sink->nkey; i++)
		appendStringInfo(&sql, "%s%s", i > 0 ? ", " : "",
						 sink->columns[sink->key_columns[i]]);
	if (updates.len > 0)
	{
		appendStringInfo(&sql, ") DO UPDATE SET %s", updates.data);
		/* only a message at least as new as the row overwrites it */
		if (sink->newer_column >= 0 && named[sink->newer_column] == '1')
		{
			appendStringInfoString(&sql, " WHERE");
			append_guard(&sql, sink, named, "EXCLUDED");
		}
	}
	else
		appendStringInfoString(&sql, ") DO NOTHING");
	pfree(values.data);
	pfree(updates.data);
	return sql.data;
}

/*
 * An UPDATE of the named columns, for a set that leaves out a NOT NULL
 * column without a default: PostgreSQL checks NOT NULL on the row an
 * INSERT proposes before ON CONFLICT looks for the existing row, so the
 * upsert would fail for a key that has a row.  Returns how many messages
 * name a key without a row: those would need an INSERT that cannot be.
 */
static char *
update_only(ReliqSink *sink, const char *named)
{
	StringInfoData sql;
	StringInfoData match;
	int			n = 0;
	int			i;

	initStringInfo(&sql);
	initStringInfo(&match);
	for (i = 0; i < sink->nkey; i++)
		appendStringInfo(&match, "%st.%s = m.%s", i > 0 ? " AND " : "",
						 sink->columns[sink->key_columns[i]],
						 sink->columns[sink->key_columns[i]]);
	appendStringInfo(&sql,
					 "WITH m AS MATERIALIZED (SELECT r.* FROM pg_catalog.unnest($1) AS m(j),"
					 " LATERAL pg_catalog.jsonb_populate_record(NULL::%s, m.j) AS r),"
					 " u AS (UPDATE %s AS t SET ",
					 sink->table, sink->table);
	for (i = 0; i < sink->ncolumns; i++)
		if (named[i] == '1' && !is_key_column(sink, i))
			appendStringInfo(&sql, "%s%s = m.%s", n++ > 0 ? ", " : "",
							 sink->columns[i], sink->columns[i]);
	if (n == 0)
		appendStringInfo(&sql, "%s = m.%s", sink->columns[sink->key_columns[0]],
						 sink->columns[sink->key_columns[0]]);
	appendStringInfo(&sql, " FROM m WHERE %s", match.data);
	if (sink->newer_column >= 0 && named[sink->newer_column] == '1')
	{
		appendStringInfoString(&sql, " AND (");
		append_guard(&sql, sink, named, "m");
		appendStringInfoChar(&sql, ')');
	}
	appendStringInfo(&sql, " RETURNING 1)"
					 " SELECT pg_catalog.count(*) FROM m WHERE NOT EXISTS (SELECT FROM %s AS t WHERE %s)",
					 sink->table, match.data);
	pfree(match.data);
	return sql.data;
}

/* The statement for the columns marked '1' in named; kept. */
static SinkUpsert *
upsert_statement(ReliqSink *sink, const char *named)
{
	Oid			argtypes[1] = {JSONBARRAYOID};
	SinkUpsert *upsert;
	char	   *sql;
	int			left_out = -1;
	int			i;

	for (i = 0; i < sink->nupserts; i++)
		if (strcmp(sink->upserts[i].named, named) == 0)
			return &sink->upserts[i];

	for (i = 0; i < sink->ncolumns && left_out < 0; i++)
		if (named[i] != '1' && sink->required[i])
			left_out = i;
	sql = left_out >= 0 ? update_only(sink, named) : insert_on_conflict(sink, named);

	sink->upserts = sink->nupserts == 0 ?
		MemoryContextAlloc(sink->cxt, sizeof(SinkUpsert)) :
		repalloc(sink->upserts, sizeof(SinkUpsert) * (sink->nupserts + 1));
	upsert = &sink->upserts[sink->nupserts++];
	upsert->named = MemoryContextStrdup(sink->cxt, named);
	upsert->plan = reliq_prepare_kept(sql, 1, argtypes);
	upsert->left_out = left_out;
	pfree(sql);
	return upsert;
}

/* Run one statement of upsert_objects. */
static void
run_upsert(ReliqSink *sink, SinkUpsert *upsert, Datum arg)
{
	bool		isnull;
	int64		homeless;

	if (upsert->left_out < 0)
	{
		reliq_spi_check(SPI_execute_plan(upsert->plan, &arg, NULL, false, 0),
						SPI_OK_INSERT, "upsert into a table sink's target");
		return;
	}
	reliq_spi_check(SPI_execute_plan(upsert->plan, &arg, NULL, false, 0),
					SPI_OK_SELECT, "update a table sink's target");
	homeless = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
										   1, &isnull));
	SPI_freetuptable(SPI_tuptable);
	if (homeless > 0)
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("upsert into %s: a message for a key without a row leaves out column %s, which is NOT NULL without a default",
						sink->table, sink->columns[upsert->left_out]),
				 errdetail("An upsert updates the columns a message names in the row of its key; a new row needs every NOT NULL column that has no default (" INT64_FORMAT " such messages in this statement).",
						   homeless),
				 errhint("Name the column in the message (or in the subscription's columns), or give it a default.")));
}

/* Which columns an object names: '1' or '0' per column. */
static char *
named_columns(ReliqSink *sink, Jsonb *object)
{
	char	   *named = palloc(sink->ncolumns + 1);
	int			i;

	for (i = 0; i < sink->ncolumns; i++)
	{
		JsonbValue	key;

		key.type = jbvString;
		key.val.string.val = sink->names[i];
		key.val.string.len = strlen(sink->names[i]);
		named[i] = findJsonbValueFromContainer(&object->root, JB_FOBJECT, &key) ? '1' : '0';
	}
	named[sink->ncolumns] = '\0';
	return named;
}

/* Upsert the objects (no key twice): one statement per set of named columns. */
static void
upsert_objects(ReliqSink *sink, Jsonb **objects, int count)
{
	char	  **named = palloc(sizeof(char *) * count);
	bool	   *done = palloc0(sizeof(bool) * count);
	Datum	   *group = palloc(sizeof(Datum) * count);
	Datum		arg;
	int			i;
	int			j;

	for (i = 0; i < count; i++)
		named[i] = named_columns(sink, objects[i]);
	for (i = 0; i < count; i++)
	{
		int			n = 0;

		if (done[i])
			continue;
		for (j = i; j < count; j++)
			if (!done[j] && strcmp(named[j], named[i]) == 0)
			{
				group[n++] = JsonbPGetDatum(objects[j]);
				done[j] = true;
			}
		arg = PointerGetDatum(construct_array(group, n, JSONBOID, -1, false,
											  TYPALIGN_INT));
		run_upsert(sink, upsert_statement(sink, named[i]), arg);
	}
}

/* One DELETE of the deletes' keys, then the upserts (no key twice in each). */
static void
write_keyed(ReliqSink *sink, Datum *deletes, int ndeletes, Jsonb **upserts,
			int nupserts)
{
	if (ndeletes > 0)
	{
		Datum		arg = PointerGetDatum(construct_array(deletes, ndeletes, JSONBOID,
														  -1, false, TYPALIGN_INT));

		reliq_spi_check(SPI_execute_plan(delete_statement(sink), &arg, NULL, false, 0),
						SPI_OK_DELETE, "delete from a table sink's target");
	}
	if (nupserts > 0)
		upsert_objects(sink, upserts, nupserts);
}

/*
 * Without newer_than: each key's messages (sorted by key, then stream
 * order) collapsed into one delete and one upsert at most.
 */
static void
upsert_collapsed(ReliqSink *sink, SinkKeyed *keyed, int count)
{
	Datum	   *deletes = palloc(sizeof(Datum) * count);
	Jsonb	  **upserts = palloc(sizeof(Jsonb *) * count);
	int			ndeletes = 0;
	int			nupserts = 0;
	int			i;
	int			j;

	for (i = 0; i < count; i = j)
	{
		Jsonb	   *merged = NULL;
		Jsonb	   *deleted = NULL;

		for (j = i; j < count && strcmp(keyed[j].key, keyed[i].key) == 0; j++)
		{
			if (keyed[j].delete)
			{
				deleted = keyed[j].object;
				merged = NULL;
			}
			else if (merged == NULL)
				merged = keyed[j].object;
			else
				merged = DatumGetJsonbP(DirectFunctionCall2(jsonb_concat,
															JsonbPGetDatum(merged),
															JsonbPGetDatum(keyed[j].object)));
		}
		if (deleted)
			deletes[ndeletes++] = JsonbPGetDatum(deleted);
		if (merged)
			upserts[nupserts++] = merged;
	}
	write_keyed(sink, deletes, ndeletes, upserts, nupserts);
}

/*
 * With newer_than a merge could apply columns of a message the row's
 * version would refuse: the messages go in rounds instead, the first
 * message of every key, then the second..., each round a DELETE and an
 * upsert whose guard compares with the row as the rounds before left it.
 * A batch of distinct keys is one round.
 */
static void
upsert_in_rounds(ReliqSink *sink, SinkKeyed *keyed, int count)
{
	int		   *rank = palloc(sizeof(int) * count);
	Datum	   *deletes = palloc(sizeof(Datum) * count);
	Jsonb	  **upserts = palloc(sizeof(Jsonb *) * count);
	int			rounds = 0;
	int			round;
	int			i;

	for (i = 0; i < count; i++)
	{
		rank[i] = 0;
		if (i > 0 && strcmp(keyed[i].key, keyed[i - 1].key) == 0)
			rank[i] = rank[i - 1] + 1;
		rounds = Max(rounds, rank[i] + 1);
	}
	for (round = 0; round < rounds; round++)
	{
		int			ndeletes = 0;
		int			nupserts = 0;

		for (i = 0; i < count; i++)
		{
			if (rank[i] != round)
				continue;
			if (keyed[i].delete)
				deletes[ndeletes++] = JsonbPGetDatum(keyed[i].object);
			else
				upserts[nupserts++] = keyed[i].object;
		}
		write_keyed(sink, deletes, ndeletes, upserts, nupserts);
	}
}

void
reliq_sink_upsert_rows(ReliqSink *sink, SinkRows *rows)
{
	SinkKeyed  *keyed = palloc(sizeof(SinkKeyed) * rows->count);
	int			i;

	for (i = 0; i < rows->count; i++)
	{
		keyed[i].delete = reliq_sink_is_delete(&rows->meta[i], rows->len[i]);
		keyed[i].object = reliq_sink_row_object(sink, rows, i, keyed[i].delete);
		keyed[i].key = key_text(sink, keyed[i].object);
		keyed[i].stream_seq = rows->meta[i].stream_seq;
		keyed[i].index = i;
	}
	if (rows->count > 1)
		qsort(keyed, rows->count, sizeof(SinkKeyed), compare_keyed);
	if (sink->newer_column >= 0)
		upsert_in_rounds(sink, keyed, rows->count);
	else
		upsert_collapsed(sink, keyed, rows->count);
}
