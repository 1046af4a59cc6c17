/*-------------------------------------------------------------------------
 *
 * lease_internal.h
 *	  What lease.c takes from lease_identity.c (the values that name a
 *	  lease's holder, and what they tell about another holder) and from
 *	  lease_consumer.c (the consumer of an acquisition).
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_LEASE_INTERNAL_H
#define RELIQ_LEASE_INTERNAL_H

extern char *reliq_lease_identity_value(void);
extern char *reliq_lease_heartbeat_value(void);
extern char *reliq_lease_field(const char *value, const char *name);
extern bool  reliq_lease_same_lineage(const char *value);
extern bool  reliq_lease_earlier_run(const char *value);
extern int   reliq_lease_owner_wait_ms(const char *heartbeat);
extern bool  reliq_lease_server_stopping(void);
extern bool  reliq_lease_workers_gone(int wait_ms);

extern bool  reliq_lease_make_consumer(ReliqNatsConnection *conn,
									   const ReliqWatched *w, char *consumer,
									   uint64 epoch, bool *no_rewind_noted,
									   const char *why);

#endif /* RELIQ_LEASE_INTERNAL_H */
