/*-------------------------------------------------------------------------
 *
 * sink_columns.c
 *	  The table sink's columns from the subject, the headers and the
 *	  message's metadata (the columns setting), a message's object, and a
 *	  value that does not fit named with its column (sink_internal.h).
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
#include "subject.h"

/*
 * Columns from the subject, the headers and the metadata
 */

/* The first value of a header, its name matched without regard to case. */
const char *
reliq_sink_find_header(const SinkMeta *meta, const char *name)
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
	const char *start;
	int			len;

	return reliq_subject_token(subject, n, &start, &len) ? pnstrdup(start, len) : NULL;
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
char *
reliq_sink_mapped_value(const SinkMapped *m, const SinkMeta *meta)
{
	switch (m->source)
	{
		case SINK_FROM_SUBJECT:
			return meta_string(meta, meta->subject);
		case SINK_FROM_SUBJECT_TOKEN:
			if (meta->subject == NULL)
				return NULL;
			return meta_string(meta, subject_token(meta->subject, m->token));
		case SINK_FROM_STREAM:
			return meta_string(meta, meta->stream);
		case SINK_FROM_STREAM_SEQ:
			return psprintf(INT64_FORMAT, meta->stream_seq);
		case SINK_FROM_PUBLISHED_AT:
			return iso_timestamp(meta->published_at);
		case SINK_FROM_DELIVERED:
			return psprintf("%d", meta->delivered);
		case SINK_FROM_HEADER:
			return meta_string(meta, reliq_sink_find_header(meta, m->header));
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
		char	   *value = reliq_sink_mapped_value(&sink->mapped[i], meta);

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
void
reliq_sink_unknown_key(ReliqSink *sink, const char *key)
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
		if (reliq_sink_column_index(sink, key) < 0)
			reliq_sink_unknown_key(sink, key);
	}
}

/*
 * Row i as a JSON object: its payload, with the mapped columns put in (a
 * mapped column wins over a key of the payload).  With empty_ok an empty
 * payload is an empty object (a delete in upsert mode).
 */
Jsonb *
reliq_sink_row_object(ReliqSink *sink, SinkRows *rows, int i, bool empty_ok)
{
	Jsonb	   *object;
	Jsonb	   *mapped;

	if (rows->len[i] == 0 && empty_ok)
		object = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
	else
		object = DatumGetJsonbP(reliq_sink_payload_jsonb(rows->data[i], rows->len[i]));
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
Datum
reliq_sink_row_objects(ReliqSink *sink, SinkRows *rows, const int *indexes, int count)
{
	Datum	   *objects = palloc(sizeof(Datum) * Max(count, 1));
	int			i;

	for (i = 0; i < count; i++)
		objects[i] = JsonbPGetDatum(reliq_sink_row_object(sink, rows, indexes ? indexes[i] : i, false));
	return PointerGetDatum(construct_array(objects, count, JSONBOID, -1, false,
										   TYPALIGN_INT));
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

void
reliq_sink_check_values(ReliqSink *sink, Jsonb *object)
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
			(column = reliq_sink_column_index(sink, name)) < 0 ||
			sink->kinds[column] != SINK_COLUMN_TEXT || !reliq_sink_copy_type_ok(sink->types[column]))
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
