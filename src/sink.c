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
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/jsonfuncs.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
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

struct ReliqSink
{
	MemoryContext cxt;
	Oid			relid;
	char	   *table;			/* qualified name */
	int			ncolumns;		/* insertable columns, in attnum order */
	char	  **columns;		/* quoted names */
	char	  **names;			/* names as they are, the JSON keys */
	SinkColumnKind *kinds;
	int		   *default_index;	/* per column: its bit, or -1 */
	int			ndefaults;
	char	  **default_keys;	/* per bit: the column's name, the JSON key */
	int			nstatements;
	SinkStatement *statements;
	bool		copy_ok;		/* may the COPY path be taken? */
	HTAB	   *by_name;		/* column name -> index, for the COPY path */
};

/*
 * What reliq_sink_rows hands to reliq_sink_insert: the payloads, in the
 * server's encoding.
 */
typedef struct SinkRows
{
	int			count;
	char	  **data;
	int		   *len;
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
					  "SELECT a.attname::text, a.atthasdef OR a.attidentity = 'd', a.atttypid"
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
		Oid			base = getBaseType(typid);
		SinkColumnEntry *entry;

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
			Datum	   *objects = palloc(sizeof(Datum) * rows->count);
			int			n = 0;

			for (j = i; j < rows->count; j++)
				if (present[j] == present[i])
					objects[n++] = payload_jsonb(rows->data[j], rows->len[j]);
			insert_by_statement(sink,
								PointerGetDatum(construct_array(objects, n, JSONBOID, -1,
																false, TYPALIGN_INT)));
		}
		pfree(data.data);
	}
}

/*
 * Insert the payloads as rows of the target, as the current user (the
 * subscription's owner): by COPY when it may, else by statement.
 */
void
reliq_sink_insert(ReliqSink *sink, Datum rows_datum)
{
	SinkRows   *rows = (SinkRows *) DatumGetPointer(rows_datum);
	Datum	   *objects;
	int			i;

	if (rows->count == 0)
		return;
	if (copy_path_ok(sink, rows))
	{
		insert_by_copy(sink, rows);
		return;
	}
	objects = palloc(sizeof(Datum) * rows->count);
	for (i = 0; i < rows->count; i++)
		objects[i] = payload_jsonb(rows->data[i], rows->len[i]);
	insert_by_statement(sink,
						PointerGetDatum(construct_array(objects, rows->count, JSONBOID,
														-1, false, TYPALIGN_INT)));
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

/* The payloads of msgs, for reliq_sink_insert. */
Datum
reliq_sink_rows(ReliqMessage **msgs, int count)
{
	SinkRows   *rows = palloc0(sizeof(SinkRows));
	int			i;

	rows->data = palloc(sizeof(char *) * Max(count, 1));
	rows->len = palloc(sizeof(int) * Max(count, 1));
	for (i = 0; i < count; i++)
		add_payload(rows, msgs[i]->data, msgs[i]->data_len);
	return PointerGetDatum(rows);
}

/* One payload given as bytea (a replayed dead letter), for reliq_sink_insert. */
Datum
reliq_sink_row_from_bytea(bytea *payload)
{
	SinkRows   *rows = palloc0(sizeof(SinkRows));

	rows->data = palloc(sizeof(char *));
	rows->len = palloc(sizeof(int));
	add_payload(rows, VARDATA_ANY(payload), VARSIZE_ANY_EXHDR(payload));
	return PointerGetDatum(rows);
}
