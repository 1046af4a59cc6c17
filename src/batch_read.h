/*-------------------------------------------------------------------------
 *
 * batch_read.h
 *	  The bookkeeping reads of a batch's transaction, by index and without
 *	  SPI (batch_read.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_BATCH_READ_H
#define RELIQ_BATCH_READ_H

/* reliq's tables a batch reads or writes directly. */
typedef enum ReliqBatchTable
{
	RELIQ_TABLE_SUBSCRIPTION,
	RELIQ_TABLE_STREAM_IDENTITY,
	RELIQ_TABLE_STREAM_FLOOR,
	RELIQ_TABLE_LEDGER,
	RELIQ_TABLE_COUNT
} ReliqBatchTable;

extern Oid	reliq_batch_table_oid(ReliqBatchTable table);
extern bool reliq_read_stream_identity(int64 subscription_id, int64 *stream_created);
extern bool reliq_read_stream_floor(int64 subscription_id, int64 stream_created,
									int64 *ack_floor);

#endif							/* RELIQ_BATCH_READ_H */
