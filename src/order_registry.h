/*-------------------------------------------------------------------------
 *
 * order_registry.h
 *	  ordering => 'key' across a subscription's workers: the messages of
 *	  ordered subscriptions not finished yet, by key, in shared memory,
 *	  and whose turn it is to pull (order_registry.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_ORDER_REGISTRY_H
#define RELIQ_ORDER_REGISTRY_H

#include "message.h"

extern int reliq_max_ordered_messages;

extern void reliq_order_registry_install_hooks(void);

/* Pulls in turn */
extern bool reliq_order_take_turn(int64 sub, int want, bool *full);
extern void reliq_order_end_turn(int64 sub);

/* The messages a worker holds, and what became of them */
extern void   reliq_order_register(int64 sub, const ReliqMessage *msgs, int n);
extern void   reliq_order_runnable(int64 sub, const ReliqMessage *msgs, int n,
								   const bool *tried, const int *group,
								   int64 forget_after_ms, bool *go);
extern void   reliq_order_settle(int64 sub, const ReliqMessage *msgs, int n);
extern void   reliq_order_give_back(int64 sub, const ReliqMessage *msgs, int n);
extern void   reliq_order_let_go(int64 sub);
extern uint32 reliq_order_generation(void);

#endif /* RELIQ_ORDER_REGISTRY_H */
