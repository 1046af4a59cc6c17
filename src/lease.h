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

/*
 * After a heartbeat that could not be written (a NATS election, a
 * reconnect), the next try: soon, so that renewal resumes as soon as the
 * bucket's new leader answers, well within the validity left (3/4 of
 * reliq.lease_ttl from the last renewal, less a renewal period).
 */
#define RELIQ_LEASE_RETRY_MS	250

#include "catalog.h"
#include "nats_client.h"

extern bool reliq_lease_round(ReliqNatsConnection *conn,
							  const ReliqWatched *subscriptions, int count);
extern void reliq_lease_release_all(ReliqNatsConnection *conn);
extern void reliq_lease_heartbeat(ReliqNatsConnection *conn);
extern bool reliq_lease_rewind(ReliqNatsConnection *conn,
							   const ReliqWatched *w, const char *why);
extern long reliq_lease_renew_interval_ms(void);
extern const char *reliq_lease_instance(void);

#endif							/* RELIQ_LEASE_H */
