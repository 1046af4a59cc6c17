/*-------------------------------------------------------------------------
 *
 * sink.c
 *	  The table sink: JSON messages written as rows of a table, in bulk:
 *	  inserted (mode 'insert'), or upserted and deleted by key (mode
 *	  'upsert', see "The upsert path" below).  Columns may also be filled
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
 * target allows it (see "The COPY path" below): each payload is parsed
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
#include "sink.h"
#include "spi_safe.h"

/* Columns with a default that a message may leave out: a 64-bit set. */
#define RELIQ_SINK_MAX_DEFAULTS 64

typedef struct SinkStatement
{
	uint64		present;		/* which defaulted columns it lists */
	SPIPlanPtr	plan;
} SinkStatement;

/* How a column takes a JSON value on the COPY path. */
typedef enum SinkColumnKind
{
	SINK_COLUMN_TEXT,			/* the value as text (a string's contents) */
	SINK_COLUMN_JSON,			/* json: the value as jsonb prints it */
	SINK_COLUMN_JSONB			/* jsonb: the value's JSON text */
} SinkColumnKind;

/* A column's name as the key of the lookup table. */
typedef struct SinkColumnEntry
{
	char		name[NAMEDATALEN];
	int			column;
} SinkColumnEntry;

/* Where a column named by the columns setting takes its value from. */
typedef enum SinkSource
{
	SINK_FROM_SUBJECT,			/* $subject */
	SINK_FROM_SUBJECT_TOKEN,	/* $subject[N], tokens counted from 1 */
	SINK_FROM_STREAM,			/* $stream */
	SINK_FROM_STREAM_SEQ,		/* $stream_seq */
	SINK_FROM_PUBLISHED_AT,		/* $published_at, ISO 8601 in UTC */
	SINK_FROM_DELIVERED,		/* $delivered */
	SINK_FROM_HEADER			/* $header.Name: its first value */
} SinkSource;

typedef struct SinkMapped
{
	int			column;			/* index into the sink's columns */
	SinkSource	source;
	int			token;			/* SINK_FROM_SUBJECT_TOKEN */
	char	   *header;			/* SINK_FROM_HEADER */
} SinkMapped;

/* An upsert statement for one set of named columns ('1' per column). */
typedef struct SinkUpsert
{
	char	   *named;
	SPIPlanPtr	plan;
} SinkUpsert;

struct ReliqSink
{
	MemoryContext cxt;
	Oid			relid;
	char	   *table;			/* qualified name */
	int			ncolumns;		/* insertable columns, in attnum order */
	char	  **columns;		/* quoted names */
	char	  **names;			/* names as they are, the JSON keys */
	SinkColumnKind *kinds;
	Oid		   *types;
	int32	   *typmods;
	int		   *default_index;	/* per column: its bit, or -1 */
	int			ndefaults;
	char	  **default_keys;	/* per bit: the column's name, the JSON key */
	int			nstatements;
	SinkStatement *statements;
	bool		copy_ok;		/* may the COPY path be taken? */
	HTAB	   *by_name;		/* column name -> index */
	int			nmapped;		/* the columns setting */
	SinkMapped *mapped;
	bool		upsert;			/* mode 'upsert' */
	int			nkey;
	int		   *key_columns;	/* indexes into columns */
	int			newer_column;	/* newer_than, or -1 */
	bool		strict_keys;	/* on_unknown_keys 'dead_letter' */
	int			nupserts;
	SinkUpsert *upserts;
	SPIPlanPtr	delete_plan;
};

/* What a message gives a sink besides its payload. */
typedef struct SinkMeta
{
	const char *subject;
	const char *stream;
	int64		stream_seq;
	int			delivered;
	TimestampTz published_at;
	int			nheaders;
	const char **header_keys;
	const char **header_values;
	bool		from_wire;		/* strings in UTF-8, not the server's encoding */
} SinkMeta;

/*
 * What reliq_sink_rows hands to reliq_sink_write: the payloads, in the
 * server's encoding, and what else of each message a sink may use.
 */
typedef struct SinkRows
{
	int			count;
	char	  **data;
	int		   *len;
	SinkMeta   *meta;
} SinkRows;

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
static bool
copy_type_ok(Oid typid)
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
static int
column_index(ReliqSink *sink, const char *name)
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
		m->column = column_index(sink, name);
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
		sink->key_columns[i] = column_index(sink, sub->key[i]);
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
		(sink->newer_column = column_index(sink, sub->newer_than)) < 0)
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
					  "SELECT a.attname::text, a.atthasdef OR a.attidentity = 'd', a.atttypid, a.atttypmod"
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
		if (!copy_type_ok(typid))
			sink->copy_ok = false;
		entry = hash_search(sink->by_name, name, HASH_ENTER, NULL);
		entry->column = (int) row;
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
static void
insert_by_statement(ReliqSink *sink, Datum rows)
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
static Datum
payload_jsonb(const char *data, int len)
{
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(pnstrdup(data, len)));
}

/*
 * Columns from the subject, the headers and the metadata
 */

/* The first value of a header, its name matched without regard to case. */
static const char *
find_header(const SinkMeta *meta, const char *name)
{
	int			i;

	for (i = 0; i < meta->nheaders; i++)
		if (pg_strcasecmp(meta->header_keys[i], name) == 0)
			return meta->header_values[i];
	return NULL;
}

/* The Nth token (from 1) of a subject, or NULL. */
static char *
subject_token(const char *subject, int n)
{
	const char *start = subject;
	const char *dot;

	while (--n > 0)
	{
		dot = strchr(start, '.');
		if (dot == NULL)
			return NULL;
		start = dot + 1;
	}
	dot = strchr(start, '.');
	return pnstrdup(start, dot ? dot - start : strlen(start));
}

/* A timestamp in ISO 8601, in UTC, whatever DateStyle and TimeZone say. */
static char *
iso_timestamp(TimestampTz t)
{
	struct pg_tm tm;
	fsec_t		fsec;
	char		buf[MAXDATELEN + 1];

	if (timestamp2tm(t, NULL, &tm, &fsec, NULL, NULL) != 0)
		return NULL;
	EncodeDateTime(&tm, fsec, true, 0, NULL, USE_ISO_DATES, buf);
	return pstrdup(buf);
}

/* A string of the message in the server's encoding. */
static char *
meta_string(const SinkMeta *meta, const char *s)
{
	if (s == NULL)
		return NULL;
	return meta->from_wire ? pg_any_to_server(s, strlen(s), PG_UTF8) : (char *) s;
}

/* The value a mapped column takes from a message (as text), or NULL. */
static char *
mapped_value(const SinkMapped *m, const SinkMeta *meta)
{
	switch (m->source)
	{
		case SINK_FROM_SUBJECT:
			return meta_string(meta, meta->subject);
		case SINK_FROM_SUBJECT_TOKEN:
			return meta->subject ?
				meta_string(meta, subject_token(meta->subject, m->token)) : NULL;
		case SINK_FROM_STREAM:
			return meta_string(meta, meta->stream);
		case SINK_FROM_STREAM_SEQ:
			return psprintf(INT64_FORMAT, meta->stream_seq);
		case SINK_FROM_PUBLISHED_AT:
			return iso_timestamp(meta->published_at);
		case SINK_FROM_DELIVERED:
			return psprintf("%d", meta->delivered);
		case SINK_FROM_HEADER:
			return meta_string(meta, find_header(meta, m->header));
	}
	return NULL;
}

/*
 * The mapped columns of a message as a JSON object, or NULL if none has a
 * value (a header the message lacks leaves its column out).
 */
static Jsonb *
mapped_object(ReliqSink *sink, const SinkMeta *meta)
{
	StringInfoData buf;
	int			n = 0;
	int			i;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (i = 0; i < sink->nmapped; i++)
	{
		char	   *value = mapped_value(&sink->mapped[i], meta);

		if (value == NULL)
			continue;
		if (n++ > 0)
			appendStringInfoChar(&buf, ',');
		escape_json(&buf, sink->names[sink->mapped[i].column]);
		appendStringInfoChar(&buf, ':');
		escape_json(&buf, value);
	}
	appendStringInfoChar(&buf, '}');
	if (n == 0)
		return NULL;
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

/* on_unknown_keys 'dead_letter': a key the table has no column for. */
static void
unknown_key(ReliqSink *sink, const char *key)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("message has the key \"%s\", which is not a column of %s", key, sink->table),
			 errdetail("The subscription's on_unknown_keys is 'dead_letter': such a message fails, is retried with the backoff, and after max_deliver deliveries becomes a dead letter."),
			 errhint("Add the column (ALTER TABLE %s ADD COLUMN ...), or let such keys be ignored: reliq.alter_subscription(..., on_unknown_keys => 'ignore').",
					 sink->table)));
}

/* With on_unknown_keys 'dead_letter', fail on a key of no column. */
static void
check_keys(ReliqSink *sink, Jsonb *object)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken token;

	if (!sink->strict_keys)
		return;
	it = JsonbIteratorInit(&object->root);
	while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char	   *key;

		if (token != WJB_KEY)
			continue;
		key = pnstrdup(v.val.string.val, v.val.string.len);
		if (column_index(sink, key) < 0)
			unknown_key(sink, key);
	}
}

/*
 * Row i as a JSON object: its payload, with the mapped columns put in (a
 * mapped column wins over a key of the payload).  With empty_ok an empty
 * payload is an empty object (a delete in upsert mode).
 */
static Jsonb *
row_object(ReliqSink *sink, SinkRows *rows, int i, bool empty_ok)
{
	Jsonb	   *object;
	Jsonb	   *mapped;

	if (rows->len[i] == 0 && empty_ok)
		object = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
	else
		object = DatumGetJsonbP(payload_jsonb(rows->data[i], rows->len[i]));
	if (!JB_ROOT_IS_OBJECT(object))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("message is not a JSON object"),
				 errdetail("A table sink makes a row of each message; its keys are the columns.")));
	check_keys(sink, object);
	if (sink->nmapped == 0 || (mapped = mapped_object(sink, &rows->meta[i])) == NULL)
		return object;
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(object),
											  JsonbPGetDatum(mapped)));
}

/* Rows as objects (payloads and mapped columns), a jsonb[] for a statement. */
static Datum
row_objects(ReliqSink *sink, SinkRows *rows, const int *indexes, int count)
{
	Datum	   *objects = palloc(sizeof(Datum) * Max(count, 1));
	int			i;

	for (i = 0; i < count; i++)
		objects[i] = JsonbPGetDatum(row_object(sink, rows, indexes ? indexes[i] : i, false));
	return PointerGetDatum(construct_array(objects, count, JSONBOID, -1, false,
										   TYPALIGN_INT));
}

/*
 * The COPY path
 *
 * Each payload is read once by PostgreSQL's JSON lexer; the values of the
 * top-level keys that name columns are kept as jsonb_populate_record would
 * see them: a string's contents, a number as jsonb prints it, true or
 * false, null as NULL, an object or array as jsonb prints it; for a jsonb
 * column the value's JSON text, for a json column that text as jsonb
 * prints it.  A key given twice counts with its last value, as in jsonb.
 * The rows are written in COPY's text format and read by CopyFrom.
 */

typedef enum SinkValueKind
{
	SINK_ABSENT = 0,
	SINK_NULL,
	SINK_STRING,
	SINK_NUMBER,
	SINK_BOOL,
	SINK_NESTED
} SinkValueKind;

typedef struct SinkValue
{
	SinkValueKind kind;
	char	   *token;			/* a scalar's token (a string de-escaped) */
	const char *raw;			/* the value's JSON text, in the payload */
	int			raw_len;
} SinkValue;

typedef struct SinkParse
{
	ReliqSink  *sink;
	JsonLexContext *lex;
	int			depth;
	bool		is_object;
	int			column;			/* of the current top-level key, or -1 */
	const char *raw_start;
	SinkValueKind kind;
	char	   *token;
	SinkValue  *values;			/* per column */
	char	   *unknown;		/* the first key of no column, or NULL */
} SinkParse;

static RELIQ_JSON_CB
parse_object_start(void *state)
{
	SinkParse  *p = state;

	if (p->depth == 0)
		p->is_object = true;
	p->depth++;
	return RELIQ_JSON_OK;
}

static RELIQ_JSON_CB
parse_end(void *state)
{
	((SinkParse *) state)->depth--;
	return RELIQ_JSON_OK;
}

static RELIQ_JSON_CB
parse_array_start(void *state)
{
	((SinkParse *) state)->depth++;
	return RELIQ_JSON_OK;
}

static RELIQ_JSON_CB
parse_field_start(void *state, char *fname, bool isnull)
{
	SinkParse  *p = state;

	if (p->depth != 1)
		return RELIQ_JSON_OK;
	p->column = -1;
	if (strlen(fname) < NAMEDATALEN)
	{
		SinkColumnEntry *entry = hash_search(p->sink->by_name, fname,
											 HASH_FIND, NULL);

		if (entry != NULL)
			p->column = entry->column;
	}
	if (p->column < 0 && p->unknown == NULL)
		p->unknown = pstrdup(fname);
	p->raw_start = p->lex->token_start;
	p->kind = SINK_NESTED;
	p->token = NULL;
	return RELIQ_JSON_OK;
}

static RELIQ_JSON_CB
parse_field_end(void *state, char *fname, bool isnull)
{
	SinkParse  *p = state;
	SinkValue  *v;

	if (p->depth != 1 || p->column < 0)
		return RELIQ_JSON_OK;
	v = &p->values[p->column];
	v->kind = isnull ? SINK_NULL : p->kind;
	v->token = p->token;
	v->raw = p->raw_start;
	v->raw_len = p->lex->prev_token_terminator - p->raw_start;
	return RELIQ_JSON_OK;
}

static RELIQ_JSON_CB
parse_scalar(void *state, char *token, JsonTokenType tokentype)
{
	SinkParse  *p = state;

	if (p->depth != 1)
		return RELIQ_JSON_OK;
	switch (tokentype)
	{
		case JSON_TOKEN_STRING:
			p->kind = SINK_STRING;
			break;
		case JSON_TOKEN_NUMBER:
			p->kind = SINK_NUMBER;
			break;
		case JSON_TOKEN_NULL:
			p->kind = SINK_NULL;
			break;
		default:
			p->kind = SINK_BOOL;
			break;
	}
	p->token = token;
	return RELIQ_JSON_OK;
}

/* Parse one payload into values (one per column of the sink). */
static void
parse_payload(ReliqSink *sink, char *data, int len, SinkValue *values)
{
	SinkParse	p;
	JsonSemAction sem;

	memset(&p, 0, sizeof(p));
	memset(&sem, 0, sizeof(sem));
	memset(values, 0, sizeof(SinkValue) * sink->ncolumns);
	p.sink = sink;
	p.values = values;
	p.column = -1;
	p.lex = reliq_json_lexer(data, len, GetDatabaseEncoding());
	sem.semstate = &p;
	sem.object_start = parse_object_start;
	sem.object_end = parse_end;
	sem.array_start = parse_array_start;
	sem.array_end = parse_end;
	sem.object_field_start = parse_field_start;
	sem.object_field_end = parse_field_end;
	sem.scalar = parse_scalar;
	pg_parse_json_or_ereport(p.lex, &sem);
	if (!p.is_object)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("message is not a JSON object"),
				 errdetail("A table sink makes a row of each message; its keys are the columns.")));
	if (sink->strict_keys && p.unknown != NULL)
		unknown_key(sink, p.unknown);
}

/* The JSON text as jsonb prints it. */
static char *
as_jsonb_prints(const char *raw, int len)
{
	return DatumGetCString(DirectFunctionCall1(jsonb_out, payload_jsonb(raw, len)));
}

/* s, escaped for COPY's text format. */
static void
append_copy_text(StringInfo buf, const char *s, int len)
{
	const char *p;
	const char *run = s;

	for (p = s; p < s + len; p++)
	{
		char		c = *p;
		const char *esc;

		switch (c)
		{
			case '\\':
				esc = "\\\\";
				break;
			case '\n':
				esc = "\\n";
				break;
			case '\r':
				esc = "\\r";
				break;
			case '\t':
				esc = "\\t";
				break;
			default:
				continue;
		}
		appendBinaryStringInfo(buf, run, p - run);
		appendStringInfoString(buf, esc);
		run = p + 1;
	}
	appendBinaryStringInfo(buf, run, s + len - run);
}

/* One column's value in COPY's text format. */
static void
append_value(StringInfo buf, SinkColumnKind kind, SinkValue *v)
{
	const char *text;

	if (v->kind == SINK_ABSENT || v->kind == SINK_NULL)
	{
		appendStringInfoString(buf, "\\N");
		return;
	}
	if (kind == SINK_COLUMN_JSONB)
	{
		append_copy_text(buf, v->raw, v->raw_len);
		return;
	}
	if (kind == SINK_COLUMN_JSON || v->kind == SINK_NESTED)
		text = as_jsonb_prints(v->raw, v->raw_len);
	else if (v->kind == SINK_NUMBER &&
			 (strpbrk(v->token, "eE") != NULL || strncmp(v->token, "-0", 2) == 0))
		text = DatumGetCString(DirectFunctionCall1(numeric_out,
												   DirectFunctionCall3(numeric_in,
																	   CStringGetDatum(v->token),
																	   ObjectIdGetDatum(InvalidOid),
																	   Int32GetDatum(-1))));
	else
		text = v->token;
	append_copy_text(buf, text, strlen(text));
}

/* Where CopyFrom reads the rows from (its callback takes no argument). */
static StringInfo copy_source = NULL;
static int	copy_offset = 0;

static int
copy_read(void *outbuf, int minread, int maxread)
{
	int			n = Min(maxread, copy_source->len - copy_offset);

	memcpy(outbuf, copy_source->data + copy_offset, n);
	copy_offset += n;
	return n;
}

/*
 * COPY the rows in data (COPY's text format, in the server's encoding)
 * into the table relid, its columns attnames (a List of String).  With
 * check_privileges, the current user needs INSERT on those columns, as
 * for an INSERT listing them.
 */
static void
reliq_copy_text(Oid relid, List *attnames, bool check_privileges,
				StringInfo data)
{
	Relation	rel;
	ParseState *pstate;
	ParseNamespaceItem *nsitem;
	List	   *options;
	CopyFromState cstate;

	rel = table_open(relid, RowExclusiveLock);
	pstate = make_parsestate(NULL);
	nsitem = addRangeTableEntryForRelation(pstate, rel, RowExclusiveLock,
										   NULL, false, false);
	if (check_privileges)
	{
		Bitmapset  *columns = NULL;
		ListCell   *lc;

		foreach(lc, attnames)
		{
			AttrNumber	attnum = get_attnum(relid, strVal(lfirst(lc)));

			columns = bms_add_member(columns,
									 attnum - FirstLowInvalidHeapAttributeNumber);
		}
		reliq_check_insert_permissions(pstate, nsitem, columns);
	}
	options = list_make1(makeDefElem("encoding",
									 (Node *) makeString((char *) GetDatabaseEncodingName()),
									 -1));
	copy_source = data;
	copy_offset = 0;
	PushActiveSnapshot(GetTransactionSnapshot());
	cstate = BeginCopyFrom(pstate, rel, NULL, NULL, false, copy_read,
						   attnames, options);
	(void) CopyFrom(cstate);
	EndCopyFrom(cstate);
	PopActiveSnapshot();
	copy_source = NULL;
	free_parsestate(pstate);
	table_close(rel, NoLock);
	CommandCounterIncrement();
}

/*
 * COPY the rows in data into the target, listing the columns without a
 * default and the defaulted ones in present, with INSERT's privilege
 * checks.
 */
static void
copy_rows(ReliqSink *sink, uint64 present, StringInfo data)
{
	List	   *attnames = NIL;
	int			i;

	for (i = 0; i < sink->ncolumns; i++)
	{
		int			bit = sink->default_index[i];

		if (bit >= 0 && (present & (UINT64CONST(1) << bit)) == 0)
			continue;
		attnames = lappend(attnames, makeString(sink->names[i]));
	}
	reliq_copy_text(sink->relid, attnames, true, data);
}

/*
 * May these rows take the COPY path?  Not a single row (the slow path and
 * replays keep the statement, and its errors' context, as they were), not
 * under row-level security (COPY FROM does not apply policies), and not
 * when a set of columns would list none (COPY would take that for all).
 */
static bool
copy_path_ok(ReliqSink *sink, SinkRows *rows)
{
	return sink->copy_ok && rows->count > 1 &&
		check_enable_rls(sink->relid, InvalidOid, true) == RLS_NONE;
}

static void
insert_by_copy(ReliqSink *sink, SinkRows *rows)
{
	SinkValue  *values = palloc(sizeof(SinkValue) * sink->ncolumns);
	uint64	   *present = palloc(sizeof(uint64) * rows->count);
	StringInfo *lines = palloc(sizeof(StringInfo) * rows->count);
	bool	   *done;
	int			i;
	int			j;

	for (i = 0; i < rows->count; i++)
	{
		StringInfo	line = makeStringInfo();

		parse_payload(sink, rows->data[i], rows->len[i], values);
		for (j = 0; j < sink->nmapped; j++)
		{
			char	   *value = mapped_value(&sink->mapped[j], &rows->meta[i]);
			SinkValue  *v = &values[sink->mapped[j].column];
			StringInfoData raw;

			if (value == NULL)
				continue;		/* a header it lacks: as if not mapped */
			initStringInfo(&raw);
			escape_json(&raw, value);
			v->kind = SINK_STRING;
			v->token = value;
			v->raw = raw.data;
			v->raw_len = raw.len;
		}
		present[i] = 0;
		for (j = 0; j < sink->ncolumns; j++)
		{
			int			bit = sink->default_index[j];

			if (bit >= 0)
			{
				if (values[j].kind == SINK_ABSENT)
					continue;	/* the table fills it */
				present[i] |= UINT64CONST(1) << bit;
			}
			if (line->len > 0)
				appendStringInfoChar(line, '\t');
			append_value(line, sink->kinds[j], &values[j]);
		}
		appendStringInfoChar(line, '\n');
		lines[i] = line;
	}

	/* one COPY per set of defaulted columns named, in the order first seen */
	done = palloc0(sizeof(bool) * rows->count);
	for (i = 0; i < rows->count; i++)
	{
		StringInfoData data;
		bool		listed = false;

		if (done[i])
			continue;
		initStringInfo(&data);
		for (j = i; j < rows->count; j++)
			if (!done[j] && present[j] == present[i])
			{
				appendBinaryStringInfo(&data, lines[j]->data, lines[j]->len);
				done[j] = true;
			}
		for (j = 0; j < sink->ncolumns && !listed; j++)
			listed = sink->default_index[j] < 0 ||
				(present[i] & (UINT64CONST(1) << sink->default_index[j])) != 0;
		if (listed)
			copy_rows(sink, present[i], &data);
		else
		{
			/* no column listed: the statement inserts rows of defaults */
			int		   *group = palloc(sizeof(int) * rows->count);
			int			n = 0;

			for (j = i; j < rows->count; j++)
				if (present[j] == present[i])
					group[n++] = j;
			insert_by_statement(sink, row_objects(sink, rows, group, n));
		}
		pfree(data.data);
	}
}

/*
 * Which column a value that does not fit belongs to
 *
 * jsonb_populate_record's errors name the type, not the column.  A message
 * applied alone (the slow path, a replay) has each scalar value it names
 * run through its column type's input function first, under an error
 * context naming the column and the value, so a dead letter says which
 * column did not take which value.  The statement then converts the same
 * values the same way.
 */

typedef struct SinkValueContext
{
	const char *table;
	const char *column;
	const char *value;
} SinkValueContext;

static void
value_error_context(void *arg)
{
	SinkValueContext *c = arg;
	int			len = strlen(c->value);

	if (len > 64)
		len = pg_mbcliplen(c->value, len, 64);
	errcontext("table sink %s, column %s, value \"%.*s%s\"",
			   c->table, c->column, len, c->value, c->value[len] ? "..." : "");
}

static void
check_values(ReliqSink *sink, Jsonb *object)
{
	JsonbIterator *it = JsonbIteratorInit(&object->root);
	JsonbValue	v;
	JsonbIteratorToken token;
	SinkValueContext context;
	ErrorContextCallback callback;
	char	   *name = NULL;

	context.table = sink->table;
	callback.callback = value_error_context;
	callback.arg = &context;
	while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		int			column;
		char	   *text;
		Oid			infunc;
		Oid			ioparam;

		if (token == WJB_KEY)
			name = pnstrdup(v.val.string.val, v.val.string.len);
		if (token != WJB_VALUE || v.type == jbvNull || v.type == jbvBinary ||
			(column = column_index(sink, name)) < 0 ||
			sink->kinds[column] != SINK_COLUMN_TEXT || !copy_type_ok(sink->types[column]))
			continue;
		if (v.type == jbvString)
			text = pnstrdup(v.val.string.val, v.val.string.len);
		else if (v.type == jbvBool)
			text = v.val.boolean ? "true" : "false";
		else
			text = DatumGetCString(DirectFunctionCall1(numeric_out,
													   NumericGetDatum(v.val.numeric)));
		context.column = sink->columns[column];
		context.value = text;
		getTypeInputInfo(sink->types[column], &infunc, &ioparam);
		callback.previous = error_context_stack;
		error_context_stack = &callback;
		(void) OidInputFunctionCall(infunc, text, ioparam, sink->typmods[column]);
		error_context_stack = callback.previous;
	}
}

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
static bool
is_delete(const SinkMeta *meta, int len)
{
	const char *op = find_header(meta, "reliq-op");

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

/* The upsert listing the columns marked '1' in named; kept. */
static SPIPlanPtr
upsert_statement(ReliqSink *sink, const char *named)
{
	StringInfoData sql;
	StringInfoData values;
	StringInfoData updates;
	Oid			argtypes[1] = {JSONBARRAYOID};
	SPIPlanPtr	plan;
	int			n = 0;
	int			i;

	for (i = 0; i < sink->nupserts; i++)
		if (strcmp(sink->upserts[i].named, named) == 0)
			return sink->upserts[i].plan;

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
			appendStringInfo(&sql, " WHERE t.%s IS NULL OR t.%s <= EXCLUDED.%s",
							 sink->columns[sink->newer_column],
							 sink->columns[sink->newer_column],
							 sink->columns[sink->newer_column]);
	}
	else
		appendStringInfoString(&sql, ") DO NOTHING");

	plan = reliq_prepare_kept(sql.data, 1, argtypes);
	sink->upserts = sink->nupserts == 0 ?
		MemoryContextAlloc(sink->cxt, sizeof(SinkUpsert)) :
		repalloc(sink->upserts, sizeof(SinkUpsert) * (sink->nupserts + 1));
	sink->upserts[sink->nupserts].named = MemoryContextStrdup(sink->cxt, named);
	sink->upserts[sink->nupserts].plan = plan;
	sink->nupserts++;
	pfree(sql.data);
	pfree(values.data);
	pfree(updates.data);
	return plan;
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
		reliq_spi_check(SPI_execute_plan(upsert_statement(sink, named[i]),
										 &arg, NULL, false, 0),
						SPI_OK_INSERT, "upsert into a table sink's target");
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
		rank[i] = (i > 0 && strcmp(keyed[i].key, keyed[i - 1].key) == 0) ?
			rank[i - 1] + 1 : 0;
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

static void
upsert_rows(ReliqSink *sink, SinkRows *rows)
{
	SinkKeyed  *keyed = palloc(sizeof(SinkKeyed) * rows->count);
	int			i;

	for (i = 0; i < rows->count; i++)
	{
		keyed[i].delete = is_delete(&rows->meta[i], rows->len[i]);
		keyed[i].object = row_object(sink, rows, i, keyed[i].delete);
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
		check_values(sink, row_object(sink, rows, 0,
									  sink->upsert && is_delete(&rows->meta[0], rows->len[0])));
	if (sink->upsert)
		upsert_rows(sink, rows);
	else if (copy_path_ok(sink, rows))
		insert_by_copy(sink, rows);
	else
		insert_by_statement(sink, row_objects(sink, rows, NULL, rows->count));
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
