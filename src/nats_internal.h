/*-------------------------------------------------------------------------
 *
 * nats_internal.h
 *	  What the four files of reliq's NATS client share, and nothing else
 *	  includes: the cnats headers, the connection's layout, the signal
 *	  mask around cnats calls, and the one way a failure is remembered for
 *	  reliq_nats_report().
 *
 *	  nats_conn.c		connections, errors, publishing, acks
 *	  nats_js.c			JetStream administration: streams, consumers,
 *						the consumer listing, metadata, pause
 *	  nats_kv.c			the key-value bucket of the leases
 *	  nats_inbox.c		the pull inbox a worker's lanes share
 *
 * The rules that keep cnats from harming a backend are in nats_conn.c's
 * header; every file here follows them.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_NATS_INTERNAL_H
#define RELIQ_NATS_INTERNAL_H

#include <pthread.h>
#include <signal.h>

#include <nats/nats.h>

#include "nats_client.h"

/*
 * State the cnats threads write through callbacks.  malloc'd and never
 * freed: cnats may deliver the closed/disconnected callbacks after
 * natsConnection_Destroy has returned.
 */
typedef struct ConnectionEvents
{
	pg_atomic_uint32 connected;
	pg_atomic_uint64 reconnects;
	pg_atomic_uint64 async_errors;
} ConnectionEvents;

struct ReliqNatsConnection
{
	natsConnection *nc;
	jsCtx	   *js;
	kvStore    *kv;				/* the lease bucket, once opened */
	ConnectionEvents *events;
	uint32		settings_hash;	/* of the settings it was made with */
	ReliqNatsBeforeRequest before_request;	/* see nats_client.h */
	bool		in_before_request;
};

/* Each request to the server starts with this (nats_conn.c). */
extern void reliq_nats_request_starts(ReliqNatsConnection *conn);

/*
 * cnats 3.4.1 (and 3.10) has no public way to read the server's version
 * from its INFO.  It makes the same decisions with this function (which
 * consumer-create subject to use, whether the server knows a feature),
 * exported by libnats with this signature since 2.x.
 */
extern bool natsConn_srvVersionAtLeast(natsConnection *nc, int major,
									   int minor, int update);

/*
 * Block every signal while cnats may create threads, so that the threads
 * start with all signals blocked; restore the backend's mask afterwards.
 */
#define BLOCK_SIGNALS(saved) \
	do { \
		sigset_t	block_all_; \
		sigfillset(&block_all_); \
		pthread_sigmask(SIG_SETMASK, &block_all_, &(saved)); \
	} while (0)
#define RESTORE_SIGNALS(saved) \
	pthread_sigmask(SIG_SETMASK, &(saved), NULL)

/*
 * A failure, written into the caller's status (NULL: not wanted) and
 * reported by reliq_nats_report(): one of cnats (with what was being
 * done), one cnats did not report (with the SQLSTATE to report it with),
 * a plain message (as a connection failure), and a JetStream error code
 * besides.
 */
extern void reliq_nats_remember_error(ReliqNatsStatus *st, const char *what,
									  natsStatus status, jsErrCode js_error);
extern void reliq_nats_remember_failure(ReliqNatsStatus *st, int sqlerrcode,
										const char *message);
extern void reliq_nats_remember_message(ReliqNatsStatus *st,
										const char *message);
extern void reliq_nats_remember_js_error(ReliqNatsStatus *st, int code);

#endif							/* RELIQ_NATS_INTERNAL_H */
