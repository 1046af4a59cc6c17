/*-------------------------------------------------------------------------
 *
 * handler.c
 *	  How a subscription's messages are applied: its handler function or
 *	  its table sink, run as the subscription's owner; and the context
 *	  reliq.publish reads while a handler runs.
 *
 * Used by batch.c for every message of a batch and by api.c for
 * reliq.replay_dead_letter.  A set-based handler, schema.name(reliq.message[]),
 * is given a batch's fresh messages as one array on the fast path, and a
 * one-element array on the slow path and in a replay.
 *
 * Handlers run as the subscription's owner, as a security-restricted
 * operation (like the code an index build or REFRESH MATERIALIZED VIEW
 * runs), inside a GUC nest level that is undone after each message: a
 * handler that changes search_path or any setting does not affect the
 * next one, and cannot SET ROLE.  What a handler publishes goes to the
 * outbox (outbox.c), with message ids derived from the message being
 * handled (reliq_handler_publish_msg_id).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/timeout.h"

#include "pg_compat.h"
#include "handler.h"
#include "outbox.h"
#include "sink.h"
#include "spi_safe.h"
#include "trace.h"

/* The message whose handler is running, for reliq.publish's message ids. */
static bool in_handler = false;
static int64 current_subscription_id = 0;
static int64 current_stream_created = 0;
static int64 current_stream_seq = 0;
static int	current_publish_count = 0;

/*
 * How messages are applied: a handler function, called directly through
 * the function manager (no executor per message: the SPI statement
 * "SELECT handler($1)" spent a fifth of a worker's time starting up its
 * executor and building its projection), or a table sink's INSERT.
 */
/*
 * A set-based handler takes the batch's messages as one reliq.message[]
 * (its stored text ends so, as format_procedure_qualified writes it).
 */
bool
reliq_handler_is_set_based(const char *handler)
{
	const char *suffix = "(reliq.message[])";
	size_t		len = handler ? strlen(handler) : 0;

	return len > strlen(suffix) &&
		strcmp(handler + len - strlen(suffix), suffix) == 0;
}

/*
 * The argument of a set-based handler: messages (reliq.message datums of
 * type message_type) as one array, in the order given.
 */
Datum
reliq_handler_message_array(Datum *messages, int count, Oid message_type)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;

	get_typlenbyvalalign(message_type, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_array(messages, count, message_type,
										   typlen, typbyval, typalign));
}

ReliqHandler *
reliq_prepare_handler(const ReliqSubscription *sub, MemoryContext cxt)
{
	ReliqHandler *handler = MemoryContextAllocZero(cxt, sizeof(ReliqHandler));

	handler->cxt = cxt;
	if (sub->handler != NULL)
	{
		const char *suffix = "(reliq.message)";
		size_t		len = strlen(sub->handler);

		handler->set_based = reliq_handler_is_set_based(sub->handler);
		if (!handler->set_based &&
			(len <= strlen(suffix) ||
			 strcmp(sub->handler + len - strlen(suffix), suffix) != 0))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
					 errmsg("handler \"%s\" of subscription \"%s\" is not of the form schema.function(reliq.message) or schema.function(reliq.message[])",
							sub->handler, sub->name)));
		/* the function is looked up at each batch, as the owner */
	}
	else
		handler->sink = reliq_sink_prepare(sub, cxt);
	return handler;
}

void
reliq_free_handler(ReliqHandler *handler)
{
	if (handler->sink)
		reliq_sink_free(handler->sink);
	pfree(handler);
}

/*
 * Bumped by any invalidation of pg_proc, pg_namespace or pg_type: a
 * handler's name may now mean another function (dropped and made again,
 * renamed, its schema or argument type renamed), so look it up again.
 */
static uint64 names_generation = 1;
static bool names_callback_registered = false;

static void
names_invalidated(Datum arg, int cacheid, uint32 hashvalue)
{
	names_generation++;
}

/*
 * Once per transaction, as the owner: find the handler function by its
 * name (a function dropped and made again is found anew) and check that
 * the owner may execute it, as a statement calling it would.  The lookup
 * by name (regprocedurein: the raw parser for the argument type, a
 * catalog search, the search_path set and restored) is kept across
 * transactions until pg_proc, pg_namespace or pg_type is invalidated;
 * the privilege is checked in every transaction.
 */
static void
resolve_handler_function(const ReliqSubscription *sub, ReliqHandler *handler)
{
	Oid			function = handler->function;
	AclResult	aclresult;
	int			nest;

	if (handler->checked_lxid == RELIQ_MY_LXID && OidIsValid(handler->function))
		return;
	if (!names_callback_registered)
	{
		CacheRegisterSyscacheCallback(PROCOID, names_invalidated, (Datum) 0);
		CacheRegisterSyscacheCallback(NAMESPACEOID, names_invalidated, (Datum) 0);
		CacheRegisterSyscacheCallback(TYPEOID, names_invalidated, (Datum) 0);
		names_callback_registered = true;
	}
	if (!OidIsValid(function) || handler->names_generation != names_generation)
	{
		nest = reliq_enter_safe_search_path();
		function = DatumGetObjectId(DirectFunctionCall1(regprocedurein,
														CStringGetDatum(sub->handler)));
		reliq_leave_safe_search_path(nest);
		handler->names_generation = names_generation;
	}
	aclresult = reliq_proc_aclcheck(function, GetUserId(), ACL_EXECUTE);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_FUNCTION, get_func_name(function));
	if (function != handler->function)
	{
		fmgr_info_cxt(function, &handler->flinfo, handler->cxt);
		handler->function = function;
	}
	handler->checked_lxid = RELIQ_MY_LXID;
}

/*
 * Call the handler function on one message, or on an array of them (a
 * set-based handler); its writes are seen by the next call.
 */
static void
call_handler_function(ReliqHandler *handler, Datum message)
{
	LOCAL_FCINFO(fcinfo, 1);
	PgStat_FunctionCallUsage fcusage;

	InitFunctionCallInfoData(*fcinfo, &handler->flinfo, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = message;
	fcinfo->args[0].isnull = false;
	pgstat_init_function_usage(fcinfo, &fcusage);
	(void) FunctionCallInvoke(fcinfo);
	pgstat_end_function_usage(&fcusage, true);
	CommandCounterIncrement();
}

/*
 * What reliq_call_handler passes for one message given as a reliq.message
 * datum (a replayed dead letter): the message itself, a one-element array
 * of it for a set-based handler, or a table sink's row.
 */
Datum
reliq_handler_argument(const ReliqSubscription *sub, Datum message)
{
	if (sub->handler != NULL && reliq_handler_is_set_based(sub->handler))
		return reliq_handler_message_array(&message, 1,
										   HeapTupleHeaderGetTypeId(DatumGetHeapTupleHeader(message)));
	if (sub->handler != NULL)
		return message;
	return reliq_sink_row_from_message(DatumGetHeapTupleHeader(message));
}

/*
 * Run the handler on one message as the subscription's owner, then write
 * what it published to the outbox (as reliq); returns how many.  On error
 * the transaction or subtransaction abort restores the user and the GUC
 * nest level; handler_cleanup() undoes the rest.
 */
int
reliq_call_handler(const ReliqSubscription *sub, ReliqHandler *handler,
				   Datum message, const char *traceparent,
				   int64 subscription_id, int64 stream_created,
				   int64 stream_seq)
{
	Oid			save_userid;
	int			save_sec_context;
	int			nest;

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(sub->owner,
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	if (handler->sink == NULL)
		resolve_handler_function(sub, handler);
	nest = NewGUCNestLevel();
	if (traceparent != NULL)
		(void) set_config_option("reliq.traceparent", traceparent,
								 PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);

	current_subscription_id = subscription_id;
	current_stream_created = stream_created;
	current_stream_seq = stream_seq;
	current_publish_count = 0;
	in_handler = true;
	reliq_outbox_begin();

	if (sub->handler_timeout_ms > 0)
		enable_timeout_after(STATEMENT_TIMEOUT,
							 (int) Min(sub->handler_timeout_ms, INT_MAX));
	if (handler->sink == NULL)
		call_handler_function(handler, message);
	else
		reliq_sink_write(handler->sink, message);
	if (sub->handler_timeout_ms > 0)
		disable_timeout(STATEMENT_TIMEOUT, false);
	in_handler = false;

	AtEOXact_GUC(false, nest);
	SetUserIdAndSecContext(save_userid, save_sec_context);
	return reliq_outbox_write(subscription_id);
}

/* After an error thrown out of reliq_call_handler. */
void
reliq_handler_cleanup(void)
{
	in_handler = false;
	reliq_trace_set_current(NULL);
	reliq_outbox_discard();
	if (get_timeout_active(STATEMENT_TIMEOUT))
		disable_timeout(STATEMENT_TIMEOUT, false);
}

/*
 * reliq.publish inside a handler: a message id derived from the message
 * being handled, so that the publishes of a handler that runs again (the
 * slow path, a retry) are duplicates JetStream drops within its window.
 */
bool
reliq_handler_publish_msg_id(char *buf, size_t len)
{
	if (!in_handler)
		return false;
	snprintf(buf, len, "reliq:" INT64_FORMAT ":" INT64_FORMAT ":" INT64_FORMAT ":%d",
			 current_subscription_id, current_stream_created,
			 current_stream_seq, ++current_publish_count);
	return true;
}
