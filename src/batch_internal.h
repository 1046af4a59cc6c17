/*-------------------------------------------------------------------------
 *
 * batch_internal.h
 *	  What batch.c and batch_ledger.c share; nothing else includes it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_BATCH_INTERNAL_H
#define RELIQ_BATCH_INTERNAL_H

#include "batch.h"

/* The plain ledger INSERT of a fast path is running (batch.c's error path). */
extern bool reliq_ledger_insert_running;

extern bool reliq_batch_stream_is_current(ReliqBatchState *state,
										  ReliqBatchResult *result);
extern void reliq_batch_record(ReliqBatchState *state, ReliqMessage *msgs,
							   const int *indexes, int count, bool *fresh,
							   bool plain);
extern bool reliq_batch_record_one(ReliqBatchState *state, ReliqMessage *msgs,
								   int index);
extern void reliq_batch_dead_letter(ReliqBatchState *state, ReliqMessage *msg);

#endif							/* RELIQ_BATCH_INTERNAL_H */
