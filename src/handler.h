/*-------------------------------------------------------------------------
 *
 * handler.h
 *	  Applying a message: a subscription's handler function or table sink,
 *	  run as its owner (see handler.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_HANDLER_H
#define RELIQ_HANDLER_H

#include "fmgr.h"

#include "catalog.h"

/*
 * How a subscription's messages are applied: its handler function (looked
 * up and checked once per transaction), or its table sink.
 */
typedef struct ReliqHandler
{
	MemoryContext cxt;
	struct ReliqSink *sink;		/* a table sink; NULL: a handler function */
	bool		set_based;		/* the handler takes reliq.message[] */
	Oid			function;		/* the handler as last looked up */
	FmgrInfo	flinfo;
	LocalTransactionId checked_lxid;	/* looked up in this transaction */
	uint64		names_generation;	/* of the lookup by name (handler.c) */
} ReliqHandler;

extern bool reliq_handler_is_set_based(const char *handler);
extern Datum reliq_handler_message_array(Datum *messages, int count,
										 Oid message_type);

/* Used by reliq.replay_dead_letter too. */
extern ReliqHandler *reliq_prepare_handler(const ReliqSubscription *sub,
										   MemoryContext cxt);
extern void reliq_free_handler(ReliqHandler *handler);
extern Datum reliq_handler_argument(const ReliqSubscription *sub,
									Datum message);
extern int	reliq_call_handler(const ReliqSubscription *sub, ReliqHandler *handler,
							   Datum message, const char *traceparent,
							   int64 subscription_id, int64 stream_created,
							   int64 stream_seq);

/* After an error thrown out of reliq_call_handler. */
extern void reliq_handler_cleanup(void);

/* Used by reliq.publish inside a handler. */
extern bool reliq_handler_publish_msg_id(char *buf, size_t len);

#endif							/* RELIQ_HANDLER_H */
