/*-------------------------------------------------------------------------
 *
 * ordering.h
 *	  ordering => 'key': a message's order key (the subscription's
 *	  ordering setting, resolved when it is loaded).  The lane's side of
 *	  it is declared in worker_internal.h.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_ORDERING_H
#define RELIQ_ORDERING_H

#include "catalog.h"
#include "message.h"

/* One part of an order key: a subject token, or a header's first value. */
typedef struct ReliqOrderPart
{
	bool  header;
	int   token; /* subject token, counted from 1 */
	char *name;  /* header name */
} ReliqOrderPart;

extern void reliq_ordering_resolve(ReliqSubscription *sub);
extern void reliq_ordering_set_keys(const ReliqSubscription *sub,
									ReliqMessage *msgs, int n);

#endif /* RELIQ_ORDERING_H */
