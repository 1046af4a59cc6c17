/*-------------------------------------------------------------------------
 *
 * sink.h
 *	  The table sink: JSON messages inserted as rows of a table, in bulk
 *	  (see sink.c).
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

/* Payloads as reliq_sink_insert takes them (an opaque pointer datum). */
extern Datum reliq_sink_rows(ReliqMessage **msgs, int count);
extern Datum reliq_sink_row_from_bytea(bytea *payload);

/* Insert the rows as the current user (the subscription's owner). */
extern void reliq_sink_insert(ReliqSink *sink, Datum rows);

#endif							/* RELIQ_SINK_H */
