/*-------------------------------------------------------------------------
 *
 * lease.h
 *	  One owner at a time: the lease of each subscription's consumer, kept
 *	  in a JetStream key-value bucket by the monitor (lease.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_LEASE_H
#define RELIQ_LEASE_H

#include "catalog.h"
#include "nats_client.h"

extern void reliq_lease_round(ReliqNatsConnection *conn,
							  const ReliqWatched *subscriptions, int count);
extern void reliq_lease_release_all(ReliqNatsConnection *conn);
extern void reliq_lease_heartbeat(ReliqNatsConnection *conn);
extern long reliq_lease_renew_interval_ms(void);
extern const char *reliq_lease_instance(void);

#endif							/* RELIQ_LEASE_H */
