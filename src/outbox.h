/*-------------------------------------------------------------------------
 *
 * outbox.h
 *	  reliq.publish inside a handler: written to reliq._outbox in the
 *	  batch's transaction, published after it commits.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_OUTBOX_H
#define RELIQ_OUTBOX_H

#include "utils/jsonb.h"

#include "nats_client.h"

/* While a handler runs (batch.c) */
extern void reliq_outbox_begin(void);
extern void reliq_outbox_defer(const char *subject, bytea *data,
							   Jsonb *headers, const char *msg_id);
extern int	reliq_outbox_write(int64 subscription_id);
extern void reliq_outbox_discard(void);

/* After COMMIT (ack_gate.c); call outside a transaction. */
extern int	reliq_outbox_waiting(int64 **subscription_ids, bool *orphans);
extern int	reliq_outbox_publish(ReliqNatsConnection *conn,
								 int64 subscription_id, int limit,
								 bool *stuck, ReliqNatsStatus *st);

#endif							/* RELIQ_OUTBOX_H */
