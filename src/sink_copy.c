/*-------------------------------------------------------------------------
 *
 * sink_copy.c
 *	  The table sink's COPY path: payloads parsed once by the JSON lexer
 *	  into COPY's text format and written by COPY FROM's machinery
 *	  (sink_internal.h; the rules are in sink.c's header).
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
		reliq_sink_unknown_key(sink, p.unknown);
}

/* The JSON text as jsonb prints it. */
static char *
as_jsonb_prints(const char *raw, int len)
{
	return DatumGetCString(DirectFunctionCall1(jsonb_out, reliq_sink_payload_jsonb(raw, len)));
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
bool
reliq_sink_copy_path_ok(ReliqSink *sink, SinkRows *rows)
{
	return sink->copy_ok && rows->count > 1 &&
		check_enable_rls(sink->relid, InvalidOid, true) == RLS_NONE;
}

void
reliq_sink_insert_by_copy(ReliqSink *sink, SinkRows *rows)
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
			char	   *value = reliq_sink_mapped_value(&sink->mapped[j], &rows->meta[i]);
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
			reliq_sink_insert_by_statement(sink, reliq_sink_row_objects(sink, rows, group, n));
		}
		pfree(data.data);
	}
}
