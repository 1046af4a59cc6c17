/*-------------------------------------------------------------------------
 *
 * api.c
 *	  SQL-callable functions written in C: publishing and stream
 *	  management, consumer set-up for create/alter_subscription, waiting
 *	  for idle, replaying dead letters, the statistics behind
 *	  reliq.subscription_stats and reliq.worker_status, and the state
 *	  names and MaxAckPending as C knows them, for the SQL.
 *
 * The SQL API that only touches tables (create_subscription and friends)
 * is PL/pgSQL in the install script.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "batch.h"
#include "catalog.h"
#include "handler.h"
#include "nats_client.h"
#include "outbox.h"
#include "reliq.h"
#include "shmem.h"
#include "spi_safe.h"
#include "subject.h"
#include "trace.h"

PG_FUNCTION_INFO_V1(reliq_publish);
PG_FUNCTION_INFO_V1(reliq_create_stream);
PG_FUNCTION_INFO_V1(reliq_ensure_consumer);
PG_FUNCTION_INFO_V1(reliq_delete_consumer);
PG_FUNCTION_INFO_V1(reliq_stream_retention);
PG_FUNCTION_INFO_V1(reliq_wait_idle);
PG_FUNCTION_INFO_V1(reliq_replay_dead_letter);
PG_FUNCTION_INFO_V1(reliq_subscription_stats_reset);
PG_FUNCTION_INFO_V1(reliq_subscription_stats);
PG_FUNCTION_INFO_V1(reliq_worker_status);
PG_FUNCTION_INFO_V1(reliq_subscription_status);
PG_FUNCTION_INFO_V1(reliq_request_take_over);
PG_FUNCTION_INFO_V1(reliq_consumers_in_use);
PG_FUNCTION_INFO_V1(reliq_state_names);
PG_FUNCTION_INFO_V1(reliq_max_ack_pending_sql);

/* How often wait_idle asks the server. */
#define RELIQ_WAIT_IDLE_POLL_MS 100

static int64
interval_to_ms(const Interval *interval)
{
	int64		days = (int64) interval->day +
		(int64) interval->month * DAYS_PER_MONTH;

	return interval->time / 1000 + days * SECS_PER_DAY * 1000;
}

/*
 * reliq.publish(subject, data, headers): a JetStream publish, waiting for
 * the stream's acknowledgement; returns the stream sequence.  Inside a
 * handler it is transactional instead: queued in reliq._outbox and
 * published after the batch commits, with a Nats-Msg-Id derived from the
 * message being handled unless the headers give one; it returns NULL.
 * The text and jsonb overloads (0.2) are SQL functions that pass their
 * payload's UTF-8 bytes here.
 */
Datum
reliq_publish(PG_FUNCTION_ARGS)
{
	ReliqNatsStatus st = {0};
	char	   *subject;
	bytea	   *data;
	const char **keys = NULL;
	const char **values = NULL;
	const char *msg_id = NULL;
	char		derived_id[128];
	int			nheaders = 0;
	int64		seq = 0;
	bool		duplicate = false;
	bool		published;
	bool		in_handler;
	Jsonb	   *headers;
	ReliqSpan	span;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("subject and data of reliq.publish must not be NULL"),
				 errhint("An empty payload is '' (text) or ''::bytea.")));
	subject = text_to_cstring(PG_GETARG_TEXT_PP(0));
	data = PG_GETARG_BYTEA_PP(1);
	headers = PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2);
	if (headers != NULL)
		(void) reliq_headers_from_jsonb(headers, &keys, &values, &msg_id);

	/* Inside a handler: published after the batch commits (outbox.c). */
	in_handler = reliq_handler_publish_msg_id(derived_id, sizeof(derived_id));
	headers = reliq_trace_publish_headers(headers, in_handler, &span);
	if (in_handler)
	{
		reliq_outbox_defer(subject, data, headers,
						   msg_id ? msg_id : derived_id);
		PG_RETURN_NULL();
	}

	if (headers != NULL)
		nheaders = reliq_headers_from_jsonb(headers, &keys, &values, &msg_id);
	if (span.type == 0)			/* an explicit traceparent, if sampled */
		reliq_trace_publish_span(&span, subject, keys, values, nheaders, msg_id);
	else
	{
		reliq_span_text(span.subject, subject, sizeof(span.subject));
		reliq_span_text(span.msg_id, msg_id, sizeof(span.msg_id));
	}
	published = reliq_nats_publish(reliq_nats_session_connection(), subject,
								   VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data),
								   keys, values, nheaders, msg_id, &seq,
								   &duplicate, &st);
	if (span.type != 0)
	{
		reliq_trace_end_publish(&span, published, duplicate, seq, st.message);
		reliq_trace_record(&span, 1);
	}
	if (!published)
	{
		if (st.no_responders)
			reliq_nats_report(&st, ERROR, ERRCODE_UNDEFINED_OBJECT,
							  psprintf("no JetStream stream captures subject \"%s\"", subject),
							  "reliq.publish stores the message in a stream, and none listens on this subject.",
							  psprintf("Add the subject to a stream: SELECT reliq.create_stream('NAME', ARRAY['%s']);",
									   subject));
		reliq_nats_report(&st, ERROR, ERRCODE_CONNECTION_FAILURE,
						  psprintf("could not publish to subject \"%s\"", subject),
						  NULL, NULL);
	}
	PG_RETURN_INT64(seq);
}

/*
 * reliq.create_stream(stream, subjects [, replicas]): 'created' or
 * 'updated'.  (0.1's SQL declares two arguments; 0.2 adds replicas.)
 */
Datum
reliq_create_stream(PG_FUNCTION_ARGS)
{
	ReliqNatsStatus st = {0};
	char	   *stream = text_to_cstring(PG_GETARG_TEXT_PP(0));
	ArrayType  *array = PG_GETARG_ARRAYTYPE_P(1);
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;
	const char **subjects;
	bool		created = false;
	int			replicas = 1;
	int			i;

	if (PG_NARGS() > 2 && !PG_ARGISNULL(2))
		replicas = PG_GETARG_INT32(2);
	if (replicas < 1 || replicas > 5)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("replicas must be between 1 and 5, not %d", replicas),
				 errhint("A JetStream stream keeps 1 to 5 copies; 3 is usual for a cluster of three servers.")));
	deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &nulls, &nelems);
	if (nelems == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a stream needs at least one subject"),
				 errhint("For example reliq.create_stream('EVENTS', ARRAY['user.>', 'plan.>']).")));
	subjects = palloc(sizeof(char *) * nelems);
	for (i = 0; i < nelems; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("subjects must not contain NULL")));
		subjects[i] = TextDatumGetCString(elems[i]);
	}
	if (!reliq_nats_create_stream(reliq_nats_session_connection(), stream,
								  subjects, nelems, replicas, &created, &st))
		reliq_nats_report(&st, ERROR, ERRCODE_CONNECTION_FAILURE,
						  psprintf("could not create or update stream \"%s\"", stream),
						  NULL, NULL);
	PG_RETURN_TEXT_P(cstring_to_text(created ? "created" : "updated"));
}

/* The stream's subjects, comma-separated, for a message. */
static char *
subject_list(const ReliqStreamInfo *stream)
{
	StringInfoData buf;
	int			i;

	initStringInfo(&buf);
	for (i = 0; i < stream->nsubjects; i++)
		appendStringInfo(&buf, "%s%s", i > 0 ? ", " : "", stream->subjects[i]);
	return buf.data;
}

/*
 * reliq._ensure_consumer(stream, consumer, subject, ack_wait,
 * max_ack_pending, start, description): create or update the durable
 * consumer of a subscription, from create/alter_subscription.  Returns
 * whether it was created, its pending counts, and (0.2) its ack floor, the
 * stream's creation time and retention; the 0.1 SQL declares only the
 * first three columns, and the rest are left out of its rows.
 */
Datum
reliq_ensure_consumer(PG_FUNCTION_ARGS)
{
	ReliqNatsStatus st = {0};
	ReliqConsumerSpec spec;
	ReliqConsumerInfo info;
	ReliqStreamInfo stream;
	char	   *start = text_to_cstring(PG_GETARG_TEXT_PP(5));
	bool		created = false;
	TupleDesc	tupdesc;
	Datum		values[6];
	bool		nulls[6] = {false};

	memset(&spec, 0, sizeof(spec));
	spec.stream = text_to_cstring(PG_GETARG_TEXT_PP(0));
	spec.consumer = text_to_cstring(PG_GETARG_TEXT_PP(1));
	spec.filter_subject = text_to_cstring(PG_GETARG_TEXT_PP(2));
	spec.ack_wait_ms = interval_to_ms(PG_GETARG_INTERVAL_P(3));
	spec.max_ack_pending = PG_GETARG_INT64(4);
	spec.deliver_from = strcmp(start, "new") == 0 ? RELIQ_DELIVER_NEW : RELIQ_DELIVER_ALL;
	spec.description = text_to_cstring(PG_GETARG_TEXT_PP(6));

	/*
	 * Under a lease each owner consumes a consumer of its own,
	 * "<durable>-r<revision>" (lease.c): where the durable name is gone,
	 * the newest of those is the subscription's consumer (altered; or
	 * continued, when a dropped subscription is made again).
	 */
	{
		char	   *in_use;
		bool		exists;

		if (reliq_nats_consumer_in_use(reliq_nats_session_connection(), spec.stream,
									   spec.consumer, spec.description,
									   &in_use, &exists, NULL))
			spec.consumer = in_use;
	}

	/* Where it is known, the stream's subjects must cover the filter. */
	if (!reliq_nats_stream_info(reliq_nats_session_connection(), spec.stream,
								&stream, NULL))
		stream.found = false;
	if (stream.found && stream.nsubjects > 0 &&
		!reliq_subject_within_any(spec.filter_subject,
								  (const char *const *) stream.subjects,
								  stream.nsubjects))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("could not set up consumer \"%s\" on stream \"%s\"",
						spec.consumer, spec.stream),
				 errdetail("The subject \"%s\" is not within the stream's subjects (%s): the consumer would never receive a message.",
						   spec.filter_subject, subject_list(&stream)),
				 errhint("Choose a subject within the stream's subjects, or add the subject to the stream.")));

	if (!reliq_nats_ensure_consumer(reliq_nats_session_connection(), &spec,
									&info, &created, &st))
	{
		if (st.jetstream_missing)
			reliq_nats_report(&st, ERROR, 0,
							  "JetStream is not available on the NATS server",
							  NULL, NULL);
		if (st.js_error == RELIQ_JS_STREAM_NOT_FOUND)
			reliq_nats_report(&st, ERROR, ERRCODE_UNDEFINED_OBJECT,
							  psprintf("stream \"%s\" does not exist", spec.stream),
							  "A subscription reads a JetStream stream that must exist first.",
							  psprintf("Create it with SELECT reliq.create_stream('%s', ARRAY['subject.>']); or with the nats CLI.",
									   spec.stream));
		reliq_nats_report(&st, ERROR, ERRCODE_INVALID_PARAMETER_VALUE,
						  psprintf("could not set up consumer \"%s\" on stream \"%s\"",
								   spec.consumer, spec.stream),
						  NULL,
						  "Check that the subject is within the stream's subjects, and that an existing consumer of that name is a pull consumer with explicit acks.");
	}

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("function returning record called in context that cannot accept type record")));
	values[0] = BoolGetDatum(created);
	values[1] = Int64GetDatum(info.num_pending);
	values[2] = Int64GetDatum(info.num_ack_pending);
	/*
	 * 0.2: where the consumer stands (its ack floor; for one just made,
	 * where it starts: a new consumer reports an ack floor of 0 even when
	 * it starts after the stream's last message), in which incarnation of
	 * the stream, and that stream's retention.
	 */
	values[3] = Int64GetDatum(created ?
							  Max(info.ack_floor_stream_seq, info.delivered_stream_seq) :
							  info.ack_floor_stream_seq);
	if (!stream.found &&
		!reliq_nats_stream_info(reliq_nats_session_connection(), spec.stream,
								&stream, NULL))
		stream.found = false;
	nulls[4] = nulls[5] = !stream.found;
	values[4] = Int64GetDatum(stream.created_ns);
	values[5] = nulls[5] ? (Datum) 0 : CStringGetTextDatum(stream.retention);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * reliq._stream_retention(stream) (0.3): "limits", "interest" or
 * "workqueue"; NULL if the stream does not exist.
 */
Datum
reliq_stream_retention(PG_FUNCTION_ARGS)
{
	ReliqNatsStatus st = {0};
	char	   *stream = text_to_cstring(PG_GETARG_TEXT_PP(0));
	ReliqStreamInfo info;

	if (!reliq_nats_stream_info(reliq_nats_session_connection(), stream, &info, &st))
		reliq_nats_report(&st, ERROR, ERRCODE_CONNECTION_FAILURE,
						  psprintf("could not look up stream \"%s\"", stream),
						  NULL, NULL);
	if (!info.found)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(info.retention));
}

/* Is name the durable consumer of a subscription on stream? */
static bool
durable_of_a_subscription(const char *stream, const char *name)
{
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		args[2] = {CStringGetTextDatum(stream), CStringGetTextDatum(name)};
	bool		found;

	reliq_spi_connect();
	reliq_spi_execute("read reliq.subscription",
					  "SELECT 1 FROM reliq.subscription WHERE stream = $1 AND consumer = $2",
					  2, argtypes, args, NULL, true, 1, SPI_OK_SELECT);
	found = SPI_processed > 0;
	reliq_spi_finish();
	return found;
}

/*
 * reliq._delete_consumer(stream, consumer): the durable consumer and every
 * incarnation of it made by an owner (lease.c); false if none existed.
 */
Datum
reliq_delete_consumer(PG_FUNCTION_ARGS)
{
	ReliqNatsStatus st = {0};
	ReliqNatsConnection *conn = reliq_nats_session_connection();
	char	   *stream = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *consumer = text_to_cstring(PG_GETARG_TEXT_PP(1));
	List	   *names;
	ListCell   *lc;
	bool		any = false;

	if (!reliq_nats_consumer_incarnations(conn, stream, consumer, NULL, &names, &st))
		reliq_nats_report(&st, ERROR, ERRCODE_CONNECTION_FAILURE,
						  psprintf("could not list the consumers of stream \"%s\"", stream),
						  NULL, NULL);
	names = lcons(consumer, names);
	foreach(lc, names)
	{
		char	   *name = lfirst(lc);
		bool		existed = false;

		/* another subscription's durable name that looks like one */
		if (lc != list_head(names) && durable_of_a_subscription(stream, name))
			continue;

		if (!reliq_nats_delete_consumer(conn, stream, name, &existed, &st))
			reliq_nats_report(&st, ERROR, ERRCODE_CONNECTION_FAILURE,
							  psprintf("could not delete consumer \"%s\" of stream \"%s\"",
									   name, stream),
							  NULL, NULL);
		any |= existed;
	}
	PG_RETURN_BOOL(any);
}

/* Stream and consumer of a subscription, by name; an error if unknown. */
static void
lookup_subscription(const char *name, int64 *id, char **stream, char **consumer)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1] = {CStringGetTextDatum(name)};

	reliq_spi_connect();
	reliq_spi_execute("read reliq.subscription",
					  "SELECT id, stream, consumer FROM reliq.subscription"
					  " WHERE subscription_name = $1",
					  1, argtypes, args, NULL, true, 1, SPI_OK_SELECT);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("subscription \"%s\" does not exist", name),
				 errhint("SELECT subscription_name FROM reliq.subscription lists the subscriptions.")));
	{
		HeapTuple	t = SPI_tuptable->vals[0];
		TupleDesc	d = SPI_tuptable->tupdesc;
		bool		isnull;

		*id = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
		if (stream)
			*stream = MemoryContextStrdup(caller, SPI_getvalue(t, d, 2));
		if (consumer)
			*consumer = MemoryContextStrdup(caller, SPI_getvalue(t, d, 3));
	}
	reliq_spi_finish();
}

/*
 * reliq.wait_idle(name, timeout): true once the server has nothing
 * pending and nothing unacknowledged for the subscription's consumer, on
 * two readings a poll apart (nats-server 2.9 was seen to report a filtered
 * consumer with nothing pending just after a publish it had acknowledged).
 * Acks are sent only after commit, so then every delivered message has
 * been committed (or dead-lettered).
 */
Datum
reliq_wait_idle(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int64		timeout_ms = interval_to_ms(PG_GETARG_INTERVAL_P(1));
	TimestampTz deadline;
	int64		id;
	char	   *stream;
	char	   *consumer;
	bool		idle_before = false;

	reliq_require_worker_database("reliq.wait_idle");
	lookup_subscription(name, &id, &stream, &consumer);
	consumer = reliq_lease_consumer(reliq_control_find(id, false), consumer);
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), Max(timeout_ms, 0));

	for (;;)
	{
		ReliqConsumerInfo info;

		CHECK_FOR_INTERRUPTS();
		if (reliq_nats_consumer_info(reliq_nats_session_connection(), stream,
									 consumer, &info, NULL) &&
			info.found && info.num_pending == 0 && info.num_ack_pending == 0)
		{
			if (idle_before)
				PG_RETURN_BOOL(true);
			idle_before = true;
		}
		else
			idle_before = false;
		/* a first idle reading is confirmed by a second, past the deadline too */
		if (!idle_before && GetCurrentTimestamp() >= deadline)
			PG_RETURN_BOOL(false);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 RELIQ_WAIT_IDLE_POLL_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*
 * reliq.replay_dead_letter(id): run the subscription's handler on the
 * dead letter now, in the caller's transaction, as the subscription's
 * owner.  On success the dead letter is deleted (its sequence is in the
 * ledger already); on failure its error is updated and false returned.
 */
Datum
reliq_replay_dead_letter(PG_FUNCTION_ARGS)
{
	int64		id = PG_GETARG_INT64(0);
	MemoryContext caller = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	Oid			argtypes[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(id)};
	ReliqSubscription *sub;
	ReliqHandler *handler;
	Datum		message;
	int64		subscription_id;
	int64		stream_seq;
	char	   *traceparent;
	ReliqMessageTrace replay_trace;
	bool		isnull;
	volatile bool ok = true;
	ErrorData  *error = NULL;

	/* reliq's own statements run under the safe search_path (spi_safe.c) */
	reliq_spi_connect();
	reliq_spi_execute("read reliq.dead_letter",
					  "SELECT d.subscription_id, d.stream_seq,"
					  "       ROW(d.subscription, d.subject, d.data, d.headers, d.stream,"
					  "           d.stream_seq, d.delivered, d.published_at)::reliq.message,"
					  "       d.traceparent"
					  "  FROM reliq.dead_letter d WHERE d.id = $1 FOR UPDATE",
					  1, argtypes, args, NULL, false, 1, SPI_OK_SELECT);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("dead letter " INT64_FORMAT " does not exist", id),
				 errdetail("Either there is no such id, or it belongs to a subscription you do not own."),
				 errhint("SELECT id, subscription, error_message FROM reliq.dead_letter lists them.")));
	subscription_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	stream_seq = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	message = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
	traceparent = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4);

	sub = reliq_catalog_load_subscription(subscription_id);
	if (sub == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("the subscription of dead letter " INT64_FORMAT " no longer exists", id),
				 errhint("Drop the dead letter with reliq.discard_dead_letter(" INT64_FORMAT ").", id)));
	if (!has_privs_of_role(GetUserId(), sub->owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of subscription \"%s\" to replay its dead letters",
						sub->name)));

	handler = reliq_prepare_handler(sub, CurrentMemoryContext);

	/* its publishes carry the stored traceparent on, as it is (no span) */
	reliq_trace_start_message(&replay_trace, traceparent, NULL, false);
	reliq_trace_set_current(&replay_trace);
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(caller);
	PG_TRY();
	{
		reliq_call_handler(sub, handler, reliq_handler_argument(sub, message),
						   traceparent, sub->id, 0, stream_seq);
		reliq_spi_execute("delete a replayed dead letter",
						  "DELETE FROM reliq.dead_letter WHERE id = $1",
						  1, argtypes, args, NULL, false, 0, SPI_OK_DELETE);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(caller);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(caller);
		error = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(caller);
		CurrentResourceOwner = owner;
		ok = false;
	}
	PG_END_TRY();
	reliq_trace_set_current(NULL);
	reliq_free_handler(handler);

	if (!ok)
	{
		Oid			uargtypes[6] = {INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID};
		Datum		uargs[6];
		char		unulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};

		uargs[0] = Int64GetDatum(id);
		uargs[1] = CStringGetTextDatum(error->message ? error->message : "");
		uargs[2] = error->detail ? CStringGetTextDatum(error->detail) : (Datum) 0;
		unulls[2] = error->detail ? ' ' : 'n';
		uargs[3] = error->context ? CStringGetTextDatum(error->context) : (Datum) 0;
		unulls[3] = error->context ? ' ' : 'n';
		uargs[4] = CStringGetTextDatum(unpack_sql_state(error->sqlerrcode));
		uargs[5] = CStringGetTextDatum(reliq_error_kind_name(reliq_error_kind(error->sqlerrcode)));
		reliq_spi_execute("record a failed replay",
						  "UPDATE reliq.dead_letter"
						  "   SET replay_attempts = replay_attempts + 1,"
						  "       last_replay_at = now(),"
						  "       error_message = $2, error_detail = $3,"
						  "       error_context = $4, sqlstate = $5, error_kind = $6"
						  " WHERE id = $1",
						  6, uargtypes, uargs, unulls, false, 0, SPI_OK_UPDATE);
		ereport(NOTICE,
				(errcode(error->sqlerrcode),
				 errmsg("replay of dead letter " INT64_FORMAT " failed: %s", id, error->message),
				 error->detail ? errdetail("%s", error->detail) : 0));
	}
	reliq_spi_finish();
	PG_RETURN_BOOL(ok);
}

/* reliq.subscription_stats_reset(name): one subscription, or all if NULL. */
Datum
reliq_subscription_stats_reset(PG_FUNCTION_ARGS)
{
	int			i;

	reliq_shmem_require();
	if (!PG_ARGISNULL(0))
	{
		int64		id;
		ReliqSubscriptionStats *entry;

		lookup_subscription(text_to_cstring(PG_GETARG_TEXT_PP(0)), &id, NULL, NULL);
		entry = reliq_stats_find(id, false, NULL);
		if (entry)
			reliq_stats_reset(entry);
		PG_RETURN_VOID();
	}
	LWLockAcquire(reliq_shared->lock, LW_SHARED);
	for (i = 0; i < reliq_shared->max_subscriptions; i++)
		if (reliq_shared->stats[i].subscription_id != 0)
			reliq_stats_reset(&reliq_shared->stats[i]);
	LWLockRelease(reliq_shared->lock);
	PG_RETURN_VOID();
}

static Datum
timestamp_or_null(TimestampTz t, bool *isnull)
{
	*isnull = (t == 0);
	return TimestampTzGetDatum(t);
}

static Datum
interval_us_or_null(int64 us, bool *isnull)
{
	Interval   *interval;

	*isnull = (us < 0);
	if (us < 0)
		return (Datum) 0;
	interval = palloc0(sizeof(Interval));
	interval->time = us;
	return IntervalPGetDatum(interval);
}

/* reliq._subscription_stats(): the figures behind reliq.subscription_stats. */
Datum
reliq_subscription_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ReliqStatsSnapshot *snapshots;
	int			n;
	int			i;

	reliq_shmem_require();
	reliq_require_worker_database("reliq.subscription_stats");
	InitMaterializedSRF(fcinfo, 0);
	n = reliq_stats_snapshot(&snapshots);

	for (i = 0; i < n; i++)
	{
		ReliqStatsSnapshot *s = &snapshots[i];
		Datum		values[30];
		bool		nulls[30] = {false};

		values[0] = Int64GetDatum(s->subscription_id);
		values[1] = CStringGetTextDatum(reliq_subscription_state_name(s->state));
		values[2] = Int32GetDatum(s->workers);
		values[3] = Int64GetDatum((int64) s->received);
		values[4] = Int64GetDatum((int64) s->processed);
		values[5] = Int64GetDatum((int64) s->failed);
		values[6] = Int64GetDatum((int64) s->retried);
		values[7] = Int64GetDatum((int64) s->dead_lettered);
		values[8] = Int64GetDatum((int64) s->duplicates);
		values[9] = Int64GetDatum((int64) s->batches);
		values[10] = Int64GetDatum(s->in_flight);
		values[11] = Int64GetDatum(s->pending);
		values[12] = Int64GetDatum(s->ack_pending);
		values[13] = Int64GetDatum(s->redelivered);
		values[14] = Int64GetDatum(s->ack_floor);
		values[15] = Int64GetDatum(s->max_ack_pending);
		nulls[11] = nulls[12] = nulls[13] = nulls[14] = nulls[15] = !s->have_consumer_info;
		values[16] = timestamp_or_null(s->consumer_info_at, &nulls[16]);
		values[17] = CStringGetTextDatum(s->last_error);
		nulls[17] = (s->last_error[0] == '\0');
		values[18] = timestamp_or_null(s->last_error_at, &nulls[18]);
		values[19] = timestamp_or_null(s->last_batch_at, &nulls[19]);
		values[20] = timestamp_or_null(s->stats_reset_at, &nulls[20]);
		values[21] = Float8GetDatum(s->rate);
		values[22] = interval_us_or_null(s->batch_p50_us, &nulls[22]);
		values[23] = interval_us_or_null(s->batch_p99_us, &nulls[23]);
		values[24] = interval_us_or_null(s->latency_p50_us, &nulls[24]);
		values[25] = interval_us_or_null(s->latency_p99_us, &nulls[25]);
		values[26] = timestamp_or_null(s->disconnected_since, &nulls[26]);
		values[27] = BoolGetDatum(s->lag_growing);
		values[28] = timestamp_or_null(s->last_failure_at, &nulls[28]);
		values[29] = Int64GetDatum((int64) s->slow_path_batches);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

Datum
reliq_worker_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ReliqWorkerSnapshot *workers;
	int			nworkers;
	int			i;

	reliq_shmem_require();
	InitMaterializedSRF(fcinfo, 0);
	nworkers = reliq_workers_snapshot(&workers);
	for (i = 0; i < nworkers; i++)
	{
		ReliqWorkerSnapshot *w = &workers[i];
		Datum		values[10];
		bool		nulls[10] = {false};

		values[0] = Int32GetDatum(w->pid);
		/* an idle pool worker serves no subscription */
		values[1] = Int64GetDatum(w->subscription_id);
		nulls[1] = (w->subscription_id == 0);
		values[2] = CStringGetTextDatum(w->subscription_name);
		nulls[2] = (w->subscription_id == 0);
		values[3] = Int32GetDatum(w->worker_index);
		values[4] = CStringGetTextDatum(reliq_worker_state_name(w->state));
		values[5] = BoolGetDatum(w->connected);
		values[6] = Int32GetDatum(w->batch_size);
		values[7] = Int32GetDatum(w->in_flight);
		values[8] = timestamp_or_null(w->since, &nulls[8]);
		values[9] = timestamp_or_null(w->started_at, &nulls[9]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * reliq._subscription_status(): who holds each subscription's lease, its
 * stream's retention, and the workers the launcher may or could not start.
 */
Datum
reliq_subscription_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ReliqStatsSnapshot *snapshots;
	int			n;
	int			i;

	reliq_shmem_require();
	InitMaterializedSRF(fcinfo, 0);
	n = reliq_stats_snapshot(&snapshots);
	for (i = 0; i < n; i++)
	{
		ReliqStatsSnapshot *s = &snapshots[i];
		Datum		values[7];
		bool		nulls[7] = {false};

		values[0] = Int64GetDatum(s->subscription_id);
		values[1] = CStringGetTextDatum(reliq_lease_state_name(s->lease.state));
		values[2] = CStringGetTextDatum(s->lease.holder);
		nulls[2] = (s->lease.holder[0] == '\0');
		values[3] = timestamp_or_null(s->lease.valid_until == 0 ? 0 :
									  reliq_lease_wall_time(s->lease.valid_until),
									  &nulls[3]);
		values[4] = CStringGetTextDatum(s->retention);
		nulls[4] = (s->retention[0] == '\0');
		values[5] = Int32GetDatum(s->workers_allowed);
		values[6] = BoolGetDatum(s->start_refused);
		nulls[5] = nulls[6] = !s->catalog_known;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * reliq._consumers_in_use() (0.3): the consumer each subscription's lease
 * holder made and its workers attach to (lease.c), as the monitor last
 * published it; NULL where not known yet.
 */
Datum
reliq_consumers_in_use(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ReliqStatsSnapshot *snapshots;
	int			n;
	int			i;

	reliq_shmem_require();
	InitMaterializedSRF(fcinfo, 0);
	n = reliq_stats_snapshot(&snapshots);
	for (i = 0; i < n; i++)
	{
		ReliqStatsSnapshot *s = &snapshots[i];
		Datum		values[2];
		bool		nulls[2] = {false};

		values[0] = Int64GetDatum(s->subscription_id);
		values[1] = CStringGetTextDatum(s->lease.consumer);
		nulls[1] = (s->lease.consumer[0] == '\0');
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * reliq._request_take_over(id): ask the monitor to write this cluster into
 * the subscription's lease at its next round (reliq.take_over() checks
 * privileges and says what happens next).
 */
Datum
reliq_request_take_over(PG_FUNCTION_ARGS)
{
	int64		id = PG_GETARG_INT64(0);
	ReliqControl *control;

	reliq_shmem_require();
	reliq_require_worker_database("reliq.take_over");
	control = reliq_control_find(id, true);
	if (control == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("no room in shared memory for subscription " INT64_FORMAT, id),
				 errhint("Raise reliq.max_subscriptions and restart the server.")));
	reliq_control_request_take_over(control);
	PG_RETURN_VOID();
}

/*
 * reliq._state_names(): the name of every subscription state, one column
 * each, so that SQL spells none.  The columns must be named as C names the
 * states, in the same order.
 */
Datum
reliq_state_names(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[RELIQ_SUBSCRIPTION_STATES];
	bool		nulls[RELIQ_SUBSCRIPTION_STATES] = {false};
	int			i;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("function returning record called in context that cannot accept type record")));
	for (i = 0; i < RELIQ_SUBSCRIPTION_STATES; i++)
	{
		const char *name = reliq_subscription_state_name(i);

		if (i >= tupdesc->natts ||
			strcmp(NameStr(TupleDescAttr(tupdesc, i)->attname), name) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("reliq._state_names() does not match the states of the library"),
					 errdetail("Column %d should be named \"%s\".", i + 1, name),
					 errhint("Update the extension: ALTER EXTENSION reliq UPDATE.")));
		values[i] = CStringGetTextDatum(name);
	}
	if (tupdesc->natts != RELIQ_SUBSCRIPTION_STATES)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("reliq._state_names() does not match the states of the library"),
				 errdetail("It has %d columns; the library knows %d states.",
						   tupdesc->natts, RELIQ_SUBSCRIPTION_STATES),
				 errhint("Update the extension: ALTER EXTENSION reliq UPDATE.")));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* reliq._max_ack_pending(batch_size, concurrency): see catalog.c. */
Datum
reliq_max_ack_pending_sql(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(reliq_max_ack_pending(PG_GETARG_INT32(0), PG_GETARG_INT32(1)));
}
