/*-------------------------------------------------------------------------
 *
 * message.c
 *	  Everything about one message that does not need the NATS client:
 *	  its JetStream metadata (parsed from the $JS.ACK reply subject), its
 *	  headers as jsonb, and the reliq.message value a handler receives.
 *
 * NATS carries bytes.  Subjects and header values are expected to be UTF-8;
 * invalid sequences are replaced by U+FFFD rather than failing the message,
 * so a bad header can never stop a message from reaching its handler or the
 * dead-letter table.  The payload is passed on untouched as bytea.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "message.h"
#include "reliq.h"

PG_FUNCTION_INFO_V1(reliq_parse_ack_subject_sql);
PG_FUNCTION_INFO_V1(reliq_ack_subject_sql);

#define RELIQ_ACK_PREFIX "$JS.ACK."
#define RELIQ_MAX_ACK_TOKENS 16

/* A number of an ack subject: digits only, at most PG_INT64_MAX. */
static bool
parse_count(const ReliqToken *token, int64 *result)
{
	uint64		value = 0;
	int			i;

	if (token->len == 0)
		return false;
	for (i = 0; i < token->len; i++)
	{
		char		c = token->str[i];

		if (c < '0' || c > '9' ||
			value > ((uint64) PG_INT64_MAX - (c - '0')) / 10)
			return false;
		value = value * 10 + (c - '0');
	}
	*result = (int64) value;
	return true;
}

/*
 * The one parser of JetStream ack subjects (the reply subject of every
 * delivery, which names its consumer and carries its metadata).  Layouts,
 * in tokens after "$JS.ACK.":
 *
 *	 7: <stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>
 *		(nats-server 2.9 and what later servers send to older clients)
 *	 9: <domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>
 *	10: the same and a random token
 *
 * "_" as domain means none.  Tokens after the tenth are ignored, as the
 * NATS clients do, so that a server appending one more does not stop
 * consumption.  Pure: no allocation, no error raised, so the inbox code
 * may sort deliveries with it; ack's strings point into reply.
 */
bool
reliq_ack_subject_parse(const char *reply, ReliqAckSubject *ack)
{
	ReliqToken	tokens[RELIQ_MAX_ACK_TOKENS];
	int			ntokens = 0;
	const char *start;
	const char *p;
	int			first;
	int64		delivered;

	memset(ack, 0, sizeof(*ack));
	if (reply == NULL || strncmp(reply, RELIQ_ACK_PREFIX,
								 strlen(RELIQ_ACK_PREFIX)) != 0)
		return false;
	start = reply + strlen(RELIQ_ACK_PREFIX);
	for (p = start;; p++)
	{
		if (*p != '.' && *p != '\0')
			continue;
		if (ntokens == RELIQ_MAX_ACK_TOKENS || p == start)
			return false;		/* too long, or an empty token */
		tokens[ntokens].str = start;
		tokens[ntokens].len = p - start;
		ntokens++;
		if (*p == '\0')
			break;
		start = p + 1;
	}

	if (ntokens == 7)
		first = 0;
	else if (ntokens >= 9)
	{
		first = 2;
		if (!(tokens[0].len == 1 && tokens[0].str[0] == '_'))
			ack->domain = tokens[0];
		ack->account = tokens[1];
		if (ntokens >= 10)
			ack->token = tokens[9];
	}
	else
		return false;

	ack->stream = tokens[first];
	ack->consumer = tokens[first + 1];
	if (!parse_count(&tokens[first + 2], &delivered) || delivered > PG_INT32_MAX ||
		!parse_count(&tokens[first + 3], &ack->stream_seq) ||
		!parse_count(&tokens[first + 4], &ack->consumer_seq) ||
		!parse_count(&tokens[first + 5], &ack->published_ns) ||
		!parse_count(&tokens[first + 6], &ack->pending))
		return false;
	ack->delivered = (int) delivered;
	return true;
}

/*
 * Fill msg's metadata from its reply subject; false when that is not an
 * ack subject.  The strings are palloc'd.
 */
bool
reliq_parse_ack_subject(const char *reply, ReliqMessage *msg)
{
	ReliqAckSubject ack;

	if (!reliq_ack_subject_parse(reply, &ack))
		return false;
	msg->stream = pnstrdup(ack.stream.str, ack.stream.len);
	msg->consumer = pnstrdup(ack.consumer.str, ack.consumer.len);
	msg->delivered = ack.delivered;
	msg->stream_seq = ack.stream_seq;
	msg->consumer_seq = ack.consumer_seq;
	msg->published_ns = ack.published_ns;
	msg->pending = ack.pending;
	return true;
}

TimestampTz
reliq_unix_ns_to_timestamptz(int64 ns)
{
	return (TimestampTz) (ns / 1000) -
		((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY *
		 USECS_PER_SEC);
}

int64
reliq_timestamptz_to_unix_ns(TimestampTz t)
{
	int64		epoch_us = (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) *
		SECS_PER_DAY * USECS_PER_SEC;

	return (t + epoch_us) * 1000;
}

/*
 * Make wire bytes (expected UTF-8) into a string of the database encoding,
 * replacing invalid UTF-8 by U+FFFD.  A character the database encoding
 * cannot represent still raises the usual conversion error.
 */
static char *
wire_to_server(const char *str, int len)
{
	StringInfoData buf;
	const unsigned char *s = (const unsigned char *) str;
	int			i = 0;

	if (pg_verifymbstr(str, len, true) && GetDatabaseEncoding() == PG_UTF8)
		return pnstrdup(str, len);

	initStringInfo(&buf);
	while (i < len)
	{
		int			l = pg_utf_mblen(s + i);

		if (s[i] != 0 && i + l <= len && pg_utf8_islegal(s + i, l))
		{
			appendBinaryStringInfo(&buf, str + i, l);
			i += l;
		}
		else
		{
			appendStringInfoString(&buf, "\xEF\xBF\xBD");
			i++;
		}
	}
	return pg_any_to_server(buf.data, buf.len, PG_UTF8);
}

text *
reliq_text_from_wire(const char *str, int len)
{
	return cstring_to_text(wire_to_server(str, len));
}

static void
push_string(JsonbParseState **state, JsonbIteratorToken token, const char *str)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = wire_to_server(str, strlen(str));
	v.val.string.len = strlen(v.val.string.val);
	pushJsonbValue(state, token, &v);
}

/*
 * Headers as a jsonb object: a key with one value maps to a string, a key
 * that came several times maps to an array of its values, in order.
 * No headers give '{}'.
 */
/*
 * A deep copy of src in the current memory context (the error and the
 * trace's span are not copied: a kept message is tried again).
 */
void
reliq_message_copy(ReliqMessage *dst, const ReliqMessage *src)
{
	int			j;

	*dst = *src;
	dst->subject = pstrdup(src->subject);
	dst->reply = pstrdup(src->reply);
	dst->stream = pstrdup(src->stream);
	dst->consumer = pstrdup(src->consumer);
	dst->data = palloc(src->data_len + 1);
	memcpy(dst->data, src->data, src->data_len + 1);
	dst->header_keys = palloc(sizeof(char *) * Max(src->nheaders, 1));
	dst->header_values = palloc(sizeof(char *) * Max(src->nheaders, 1));
	for (j = 0; j < src->nheaders; j++)
	{
		dst->header_keys[j] = pstrdup(src->header_keys[j]);
		dst->header_values[j] = pstrdup(src->header_values[j]);
	}
	dst->error = NULL;
}

Datum
reliq_message_headers_jsonb(const ReliqMessage *msg)
{
	JsonbParseState *state = NULL;
	JsonbValue *result;
	bool	   *done = palloc0(sizeof(bool) * Max(msg->nheaders, 1));
	int			i,
				j;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (i = 0; i < msg->nheaders; i++)
	{
		int			count = 0;

		if (done[i])
			continue;
		for (j = i; j < msg->nheaders; j++)
			if (strcmp(msg->header_keys[i], msg->header_keys[j]) == 0)
				count++;

		push_string(&state, WJB_KEY, msg->header_keys[i]);
		if (count == 1)
			push_string(&state, WJB_VALUE, msg->header_values[i]);
		else
		{
			pushJsonbValue(&state, WJB_BEGIN_ARRAY, NULL);
			for (j = i; j < msg->nheaders; j++)
			{
				if (strcmp(msg->header_keys[i], msg->header_keys[j]) == 0)
				{
					push_string(&state, WJB_ELEM, msg->header_values[j]);
					done[j] = true;
				}
			}
			pushJsonbValue(&state, WJB_END_ARRAY, NULL);
		}
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	pfree(done);
	return JsonbPGetDatum(JsonbValueToJsonb(result));
}

/*
 * Headers given as a jsonb object: each value a string or an array of
 * strings (a header sent several times).
 */
int
reliq_headers_from_jsonb(Jsonb *headers, const char ***keys, const char ***values,
				   const char **msg_id)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken token;
	int			capacity = 8;
	int			n = 0;
	char	   *key = NULL;
	int			depth = 0;

	*msg_id = NULL;
	if (!JB_ROOT_IS_OBJECT(headers))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("headers must be a JSON object"),
				 errhint("For example '{\"traceparent\": \"00-...\"}'::jsonb.")));

	*keys = palloc(sizeof(char *) * capacity);
	*values = palloc(sizeof(char *) * capacity);
	it = JsonbIteratorInit(&headers->root);
	while ((token = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		switch (token)
		{
			case WJB_BEGIN_OBJECT:
			case WJB_BEGIN_ARRAY:
				if (++depth > (token == WJB_BEGIN_OBJECT ? 1 : 2))
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("header values must be strings or arrays of strings")));
				break;
			case WJB_END_OBJECT:
			case WJB_END_ARRAY:
				depth--;
				break;
			case WJB_KEY:
				key = pnstrdup(v.val.string.val, v.val.string.len);
				break;
			case WJB_VALUE:
			case WJB_ELEM:
				if (v.type != jbvString)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("value of header \"%s\" must be a string or an array of strings",
									key)));
				if (n == capacity)
				{
					capacity *= 2;
					*keys = repalloc(*keys, sizeof(char *) * capacity);
					*values = repalloc(*values, sizeof(char *) * capacity);
				}
				(*keys)[n] = key;
				(*values)[n] = pnstrdup(v.val.string.val, v.val.string.len);
				if (strcmp(key, "Nats-Msg-Id") == 0)
					*msg_id = (*values)[n];
				n++;
				break;
			default:
				break;
		}
	}
	return n;
}

/* The first value of a header, or NULL. */
const char *
reliq_message_header(const ReliqMessage *msg, const char *key)
{
	int			i;

	for (i = 0; i < msg->nheaders; i++)
		if (strcmp(msg->header_keys[i], key) == 0)
			return msg->header_values[i];
	return NULL;
}

Oid
reliq_message_type_oid(void)
{
	Oid			namespace = get_namespace_oid(RELIQ_SCHEMA_NAME, false);
	Oid			type = GetSysCacheOid2(TYPENAMENSP, Anum_pg_type_oid,
									   CStringGetDatum("message"),
									   ObjectIdGetDatum(namespace));

	if (!OidIsValid(type))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("type reliq.message does not exist"),
				 errhint("Run CREATE EXTENSION reliq in this database.")));
	return type;
}

/* The reliq.message value of msg, in the current memory context. */
Datum
reliq_message_datum(const ReliqMessage *msg, const char *subscription_name,
					TupleDesc message_tupdesc)
{
	Datum		values[8];
	bool		nulls[8] = {false};
	bytea	   *data;

	if (message_tupdesc->natts < 8)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("type reliq.message has %d attributes, expected at least 8",
						message_tupdesc->natts),
				 errhint("Update the extension: ALTER EXTENSION reliq UPDATE.")));

	data = (bytea *) palloc(VARHDRSZ + msg->data_len);
	SET_VARSIZE(data, VARHDRSZ + msg->data_len);
	if (msg->data_len > 0)
		memcpy(VARDATA(data), msg->data, msg->data_len);

	values[0] = CStringGetTextDatum(subscription_name);
	values[1] = PointerGetDatum(reliq_text_from_wire(msg->subject,
													 strlen(msg->subject)));
	values[2] = PointerGetDatum(data);
	values[3] = reliq_message_headers_jsonb(msg);
	values[4] = PointerGetDatum(reliq_text_from_wire(msg->stream,
													 strlen(msg->stream)));
	values[5] = Int64GetDatum(msg->stream_seq);
	values[6] = Int32GetDatum(msg->delivered);
	values[7] = TimestampTzGetDatum(reliq_unix_ns_to_timestamptz(msg->published_ns));

	return HeapTupleGetDatum(heap_form_tuple(message_tupdesc, values, nulls));
}

/*
 * reliq._parse_ack_subject(text): the metadata reliq reads from a reply
 * subject, for tests and for debugging by hand.
 */
Datum
reliq_parse_ack_subject_sql(PG_FUNCTION_ARGS)
{
	char	   *reply = text_to_cstring(PG_GETARG_TEXT_PP(0));
	ReliqMessage msg = {0};
	TupleDesc	tupdesc;
	Datum		values[7];
	bool		nulls[7] = {false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("function returning record called in context that cannot accept type record")));
	if (!reliq_parse_ack_subject(reply, &msg))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("\"%s\" is not a JetStream acknowledgement subject", reply),
				 errdetail("Expected $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<timestamp>.<pending>, optionally with domain and account after $JS.ACK.")));

	values[0] = CStringGetTextDatum(msg.stream);
	values[1] = CStringGetTextDatum(msg.consumer);
	values[2] = Int32GetDatum(msg.delivered);
	values[3] = Int64GetDatum(msg.stream_seq);
	values[4] = Int64GetDatum(msg.consumer_seq);
	values[5] = TimestampTzGetDatum(reliq_unix_ns_to_timestamptz(msg.published_ns));
	values[6] = Int64GetDatum(msg.pending);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

static Datum
token_datum(const ReliqToken *token, bool *isnull)
{
	*isnull = (token->str == NULL);
	if (*isnull)
		return (Datum) 0;
	return PointerGetDatum(reliq_text_from_wire(token->str, token->len));
}

/*
 * reliq._ack_subject(text): every part of an ack subject, in either
 * layout; NULL when the subject is not one (reliq_ack_subject_parse).
 */
Datum
reliq_ack_subject_sql(PG_FUNCTION_ARGS)
{
	char	   *subject = text_to_cstring(PG_GETARG_TEXT_PP(0));
	ReliqAckSubject ack;
	TupleDesc	tupdesc;
	Datum		values[10];
	bool		nulls[10] = {false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("function returning record called in context that cannot accept type record")));
	if (!reliq_ack_subject_parse(subject, &ack))
		PG_RETURN_NULL();

	values[0] = token_datum(&ack.domain, &nulls[0]);
	values[1] = token_datum(&ack.account, &nulls[1]);
	values[2] = token_datum(&ack.stream, &nulls[2]);
	values[3] = token_datum(&ack.consumer, &nulls[3]);
	values[4] = Int32GetDatum(ack.delivered);
	values[5] = Int64GetDatum(ack.stream_seq);
	values[6] = Int64GetDatum(ack.consumer_seq);
	values[7] = TimestampTzGetDatum(reliq_unix_ns_to_timestamptz(ack.published_ns));
	values[8] = Int64GetDatum(ack.pending);
	values[9] = token_datum(&ack.token, &nulls[9]);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
