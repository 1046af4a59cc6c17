/*-------------------------------------------------------------------------
 *
 * sink.c
 *	  The table sink: JSON messages written as rows of a table, in bulk:
 *	  inserted (mode 'insert'), or upserted and deleted by key (mode
 *	  'upsert', see sink_upsert.c).  Columns may also be filled
 *	  from the subject, headers and metadata (the columns setting).
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
 * A batch of more than one message goes in the way COPY does, when the
 * target allows it (sink_copy.c): each payload is parsed
 * once, by the JSON lexer, into the text of the columns it names, and the
 * rows are handed to PostgreSQL's COPY FROM machinery (CopyFrom), which
 * fills defaults, checks constraints, fires triggers, routes partitions
 * and writes the heap with table_multi_insert and the indexes as COPY
 * does.  The values are those jsonb_populate_record would give.
 *
 * A message that is not a JSON object, or does not fit the table, fails
 * (here, or in the statement); batch.c then applies the batch one message per
 * subtransaction, and the message takes the usual failure path.  A
 * message written alone has its values checked against their columns'
 * types first, so that a type error names its column (check_values).
 *
 * The columns setting ("$subject[3]", "$header.Tenant"...) gives each
 * message a few more keys, put into its object (statement and upsert
 * paths) or over its parsed values (COPY path); they win over the
 * payload's keys of the same name.
 *
 * Every name in the statements is qualified, so they run the same under
 * any search_path.  A relcache invalidation of the target (ALTER TABLE...)
 * marks the prepared statements stale: the worker prepares them again
 * before its next batch.
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

/*
 * May a column of this type take its value on the COPY path?  A value goes
 * through the type's input function there, as jsonb_populate_record does
 * for scalars; arrays and composites (and domains over them) it builds
 * from the JSON structure instead, so they keep the statement path.
 */
bool
reliq_sink_copy_type_ok(Oid typid)
{
	Oid			base = getBaseType(typid);
	char		typtype = get_typtype(base);

	if (type_is_array(base) || typtype == TYPTYPE_COMPOSITE ||
		typtype == TYPTYPE_PSEUDO)
		return false;
	return true;
}

/*
 * What decides how a subscription's sink is prepared: the worker prepares
 * it again when this changes (reliq.alter_subscription).
 */
char *
reliq_sink_settings_key(const ReliqSubscription *sub)
{
	StringInfoData buf;
	int			i;

	initStringInfo(&buf);
	appendStringInfo(&buf, "target %u %s", sub->target,
					 sub->upsert ? "upsert" : "insert");
	for (i = 0; i < sub->nkey; i++)
		appendStringInfo(&buf, " %s", quote_identifier(sub->key[i]));
	appendStringInfo(&buf, " %s", sub->columns ? sub->columns : "");
	if (sub->newer_than)
		appendStringInfo(&buf, " newer than %s", quote_identifier(sub->newer_than));
	if (sub->strict_keys)
		appendStringInfoString(&buf, " strict");
	return buf.data;
}

/* The column of the sink named name, or -1. */
int
reliq_sink_column_index(ReliqSink *sink, const char *name)
{
	SinkColumnEntry *entry;

	if (strlen(name) >= NAMEDATALEN)
		return -1;
	entry = hash_search(sink->by_name, name, HASH_FIND, NULL);
	return entry ? entry->column : -1;
}

/* Parse an expression of the columns setting; false if it is none. */
static bool
parse_source(const char *expr, SinkMapped *m)
{
	if (strcmp(expr, "$subject") == 0)
		m->source = SINK_FROM_SUBJECT;
	else if (strncmp(expr, "$subject[", 9) == 0 && isdigit((unsigned char) expr[9]))
	{
		char	   *end;
		long		n = strtol(expr + 9, &end, 10);

		if (n < 1 || n > 999 || strcmp(end, "]") != 0)
			return false;
		m->source = SINK_FROM_SUBJECT_TOKEN;
		m->token = (int) n;
	}
	else if (strcmp(expr, "$stream") == 0)
		m->source = SINK_FROM_STREAM;
	else if (strcmp(expr, "$stream_seq") == 0)
		m->source = SINK_FROM_STREAM_SEQ;
	else if (strcmp(expr, "$published_at") == 0)
		m->source = SINK_FROM_PUBLISHED_AT;
	else if (strcmp(expr, "$delivered") == 0)
		m->source = SINK_FROM_DELIVERED;
	else if (strncmp(expr, "$header.", 8) == 0 && expr[8] != '\0')
	{
		m->source = SINK_FROM_HEADER;
		m->header = pstrdup(expr + 8);
	}
	else
		return false;
	return true;
}

/*
 * The columns setting, checked again against the table as it is now (a
 * column may have been dropped or renamed since create_subscription).
 */
static void
prepare_mapped(ReliqSink *sink, const ReliqSubscription *sub)
{
	Jsonb	   *columns = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
															 CStringGetDatum(sub->columns)));
	JsonbIterator *it = JsonbIteratorInit(&columns->root);
	JsonbValue	v;
	JsonbIteratorToken token;
	char	   *name = NULL;

	sink->mapped = palloc0(sizeof(SinkMapped) * Max(JsonContainerSize(&columns->root), 1));
	while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		SinkMapped *m;
		char	   *expr;

		if (token == WJB_KEY)
		{
			name = pnstrdup(v.val.string.val, v.val.string.len);
			continue;
		}
		if (token != WJB_VALUE)
			continue;
		m = &sink->mapped[sink->nmapped];
		m->column = reliq_sink_column_index(sink, name);
		if (m->column < 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("column \"%s\" in the columns of subscription \"%s\" is not a column of %s",
							name, sub->name, sink->table),
					 errdetail("The table was changed after the subscription was created."),
					 errhint("Change the setting with reliq.alter_subscription('%s', columns => ...).",
							 sub->name)));
		expr = v.type == jbvString ? pnstrdup(v.val.string.val, v.val.string.len) : "";
		if (!parse_source(expr, m))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid expression \"%s\" for column \"%s\" of subscription \"%s\"",
							expr, name, sub->name)));
		sink->nmapped++;
	}
}

/* The key's columns, checked again against the table as it is now. */
static void
prepare_key(ReliqSink *sink, const ReliqSubscription *sub)
{
	int			i;

	sink->upsert = true;
	sink->nkey = sub->nkey;
	sink->key_columns = palloc(sizeof(int) * Max(sub->nkey, 1));
	for (i = 0; i < sub->nkey; i++)
	{
		sink->key_columns[i] = reliq_sink_column_index(sink, sub->key[i]);
		if (sink->key_columns[i] < 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("key column \"%s\" of subscription \"%s\" is not a column of %s",
							sub->key[i], sub->name, sink->table),
					 errdetail("The table was changed after the subscription was created."),
					 errhint("Name the key again with reliq.alter_subscription('%s', key => ARRAY[...]).",
							 sub->name)));
	}
	sink->newer_column = -1;
	if (sub->newer_than != NULL &&
		(sink->newer_column = reliq_sink_column_index(sink, sub->newer_than)) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("newer_than column \"%s\" of subscription \"%s\" is not a column of %s",
						sub->newer_than, sub->name, sink->table),
				 errdetail("The table was changed after the subscription was created."),
				 errhint("Name it again with reliq.alter_subscription('%s', newer_than => ...), or '' for none.",
						 sub->name)));
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
	Relation	rel;
	HASHCTL		ctl;

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
					  "SELECT a.attname::text, a.atthasdef OR a.attidentity = 'd', a.atttypid, a.atttypmod, a.attnotnull"
					  "  FROM pg_catalog.pg_attribute a"
					  " WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped"
					  "   AND a.attgenerated = '' AND a.attidentity <> 'a'"
					  " ORDER BY a.attnum",
					  1, argtypes, args, NULL, true, 0, SPI_OK_SELECT);

	old = MemoryContextSwitchTo(cxt);
	sink = palloc0(sizeof(ReliqSink));
	sink->cxt = cxt;
	sink->relid = sub->target;
	sink->table = quote_qualified_identifier(get_namespace_name(get_rel_namespace(sub->target)),
											 relname);
	sink->ncolumns = (int) SPI_processed;
	sink->columns = palloc0(sizeof(char *) * Max(sink->ncolumns, 1));
	sink->names = palloc0(sizeof(char *) * Max(sink->ncolumns, 1));
	sink->kinds = palloc0(sizeof(SinkColumnKind) * Max(sink->ncolumns, 1));
	sink->types = palloc0(sizeof(Oid) * Max(sink->ncolumns, 1));
	sink->typmods = palloc0(sizeof(int32) * Max(sink->ncolumns, 1));
	sink->default_index = palloc0(sizeof(int) * Max(sink->ncolumns, 1));
	sink->required = palloc0(sizeof(bool) * Max(sink->ncolumns, 1));
	sink->default_keys = palloc0(sizeof(char *) * RELIQ_SINK_MAX_DEFAULTS);

	/* COPY takes plain and partitioned tables; it ignores rules, INSERT does not */
	rel = table_open(sub->target, AccessShareLock);
	sink->copy_ok = (rel->rd_rel->relkind == RELKIND_RELATION ||
					 rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE) &&
		!rel->rd_rel->relhasrules && sink->ncolumns > 0;
	table_close(rel, AccessShareLock);

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = NAMEDATALEN;
	ctl.entrysize = sizeof(SinkColumnEntry);
	ctl.hcxt = cxt;
	sink->by_name = hash_create("reliq sink columns", Max(sink->ncolumns, 8), &ctl,
								HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);

	for (row = 0; row < SPI_processed; row++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[row];
		char	   *name = SPI_getvalue(tuple, SPI_tuptable->tupdesc, 1);
		bool		isnull;
		bool		has_default = DatumGetBool(SPI_getbinval(tuple, SPI_tuptable->tupdesc,
															 2, &isnull));
		Oid			typid = DatumGetObjectId(SPI_getbinval(tuple, SPI_tuptable->tupdesc,
														   3, &isnull));
		int32		typmod = DatumGetInt32(SPI_getbinval(tuple, SPI_tuptable->tupdesc,
														 4, &isnull));
		bool		not_null = DatumGetBool(SPI_getbinval(tuple, SPI_tuptable->tupdesc,
														  5, &isnull));
		Oid			base = getBaseType(typid);
		SinkColumnEntry *entry;

		sink->types[row] = typid;
		sink->typmods[row] = typmod;
		sink->columns[row] = pstrdup(quote_identifier(name));
		sink->names[row] = pstrdup(name);
		if (base == JSONBOID)
			sink->kinds[row] = SINK_COLUMN_JSONB;
		else if (base == JSONOID)
			sink->kinds[row] = SINK_COLUMN_JSON;
		else
			sink->kinds[row] = SINK_COLUMN_TEXT;
		if (!reliq_sink_copy_type_ok(typid))
			sink->copy_ok = false;
		entry = hash_search(sink->by_name, name, HASH_ENTER, NULL);
		entry->column = (int) row;
		sink->default_index[row] = -1;
		sink->required[row] = not_null && !has_default;
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
	sink->strict_keys = sub->strict_keys;
	if (sub->columns != NULL)
		prepare_mapped(sink, sub);
	if (sub->upsert)
		prepare_key(sink, sub);
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
	for (i = 0; i < sink->nupserts; i++)
		reliq_spi_check(SPI_freeplan(sink->upserts[i].plan), 0,
						"free a table sink's plan");
	if (sink->delete_plan)
		reliq_spi_check(SPI_freeplan(sink->delete_plan), 0,
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
reliq_sink_insert_by_statement(ReliqSink *sink, Datum rows)
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

/* A message payload (in the server's encoding) as jsonb. */
Datum
reliq_sink_payload_jsonb(const char *data, int len)
{
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(pnstrdup(data, len)));
}

/*
 * Write the messages to the target, as the current user (the
 * subscription's owner): in insert mode by COPY when it may, else by
 * statement; in upsert mode by upsert_rows.
 */
void
reliq_sink_write(ReliqSink *sink, Datum rows_datum)
{
	SinkRows   *rows = (SinkRows *) DatumGetPointer(rows_datum);

	if (rows->count == 0)
		return;
	if (rows->count == 1)
		reliq_sink_check_values(sink, reliq_sink_row_object(sink, rows, 0,
									  sink->upsert && reliq_sink_is_delete(&rows->meta[0], rows->len[0])));
	if (sink->upsert)
		reliq_sink_upsert_rows(sink, rows);
	else if (reliq_sink_copy_path_ok(sink, rows))
		reliq_sink_insert_by_copy(sink, rows);
	else
		reliq_sink_insert_by_statement(sink, reliq_sink_row_objects(sink, rows, NULL, rows->count));
}

/* A payload in the server's encoding; an error if it is not valid UTF-8. */
static void
add_payload(SinkRows *rows, const char *data, int len)
{
	char	   *converted = pg_any_to_server(data, len, PG_UTF8);

	if (converted == data)
		converted = pnstrdup(data, len);
	rows->data[rows->count] = converted;
	rows->len[rows->count] = strlen(converted);
	rows->count++;
}

static SinkRows *
make_rows(int count)
{
	SinkRows   *rows = palloc0(sizeof(SinkRows));

	rows->data = palloc(sizeof(char *) * Max(count, 1));
	rows->len = palloc(sizeof(int) * Max(count, 1));
	rows->meta = palloc0(sizeof(SinkMeta) * Max(count, 1));
	return rows;
}

/* The payloads and metadata of msgs, for reliq_sink_write. */
Datum
reliq_sink_rows(ReliqMessage **msgs, int count)
{
	SinkRows   *rows = make_rows(count);
	int			i;

	for (i = 0; i < count; i++)
	{
		SinkMeta   *meta = &rows->meta[i];

		meta->subject = msgs[i]->subject;
		meta->stream = msgs[i]->stream;
		meta->stream_seq = msgs[i]->stream_seq;
		meta->delivered = msgs[i]->delivered;
		meta->published_at = reliq_unix_ns_to_timestamptz(msgs[i]->published_ns);
		meta->nheaders = msgs[i]->nheaders;
		meta->header_keys = (const char **) msgs[i]->header_keys;
		meta->header_values = (const char **) msgs[i]->header_values;
		meta->from_wire = true;
		add_payload(rows, msgs[i]->data, msgs[i]->data_len);
	}
	return PointerGetDatum(rows);
}

/* A text attribute of a reliq.message, or NULL. */
static const char *
message_text(HeapTupleHeader message, const char *name)
{
	bool		isnull;
	Datum		d = GetAttributeByName(message, name, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/* One message given as a reliq.message (a replayed dead letter). */
Datum
reliq_sink_row_from_message(HeapTupleHeader message)
{
	SinkRows   *rows = make_rows(1);
	SinkMeta   *meta = &rows->meta[0];
	const char *msg_id;
	bool		isnull;
	Datum		d;

	meta->subject = message_text(message, "subject");
	meta->stream = message_text(message, "stream");
	d = GetAttributeByName(message, "stream_seq", &isnull);
	meta->stream_seq = isnull ? 0 : DatumGetInt64(d);
	d = GetAttributeByName(message, "delivered", &isnull);
	meta->delivered = isnull ? 0 : DatumGetInt32(d);
	d = GetAttributeByName(message, "published_at", &isnull);
	meta->published_at = isnull ? 0 : DatumGetTimestampTz(d);
	d = GetAttributeByName(message, "headers", &isnull);
	if (!isnull)
		meta->nheaders = reliq_headers_from_jsonb(DatumGetJsonbP(d), &meta->header_keys,
												  &meta->header_values, &msg_id);
	d = GetAttributeByName(message, "data", &isnull);
	if (isnull)
	{
		rows->data[0] = "";
		rows->len[0] = 0;
		rows->count = 1;
	}
	else
	{
		/* the dead letter's bytes are as received, in UTF-8 */
		bytea	   *payload = DatumGetByteaPP(d);

		add_payload(rows, VARDATA_ANY(payload), VARSIZE_ANY_EXHDR(payload));
	}
	return PointerGetDatum(rows);
}
