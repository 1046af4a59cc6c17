/*-------------------------------------------------------------------------
 *
 * sink.h
 *	  The table sink: JSON messages written as rows of a table, in bulk,
 *	  inserted or upserted by key (see sink.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_SINK_H
#define RELIQ_SINK_H

#include "catalog.h"
#include "message.h"

typedef struct ReliqSink ReliqSink;

/* Needs an SPI connection; the sink lives in cxt. */
extern ReliqSink *reliq_sink_prepare(const ReliqSubscription *sub,
									 MemoryContext cxt);
extern void reliq_sink_free(ReliqSink *sink);

/* True after the target table changed: prepare the sink again. */
extern bool reliq_sink_is_stale(void);

/* When this changes (alter_subscription), prepare the sink again. */
extern char *reliq_sink_settings_key(const ReliqSubscription *sub);

/* Messages as reliq_sink_write takes them (an opaque pointer datum). */
extern Datum reliq_sink_rows(ReliqMessage **msgs, int count);
extern Datum reliq_sink_row_from_message(HeapTupleHeader message);

/*
 * Write the rows as the current user (the subscription's owner): insert
 * them, or in upsert mode insert, update or delete by key.
 */
extern void reliq_sink_write(ReliqSink *sink, Datum rows);

#endif							/* RELIQ_SINK_H */
