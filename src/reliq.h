/*-------------------------------------------------------------------------
 *
 * reliq.h
 *	  Names shared by every part of reliq, and its settings (settings.h).
 *
 * reliq runs JetStream pull consumers inside PostgreSQL background workers:
 * a launcher (launcher.c) keeps a pool of workers (pool.c, lane.c,
 * apply.c, ack_gate.c) in line with the catalog table reliq.subscription;
 * each worker serves its subscriptions as lanes, pulls batches from NATS
 * (nats_*.c) and applies each batch in one transaction (batch.c).
 * The monitor (monitor.c) alone asks the server for the consumers'
 * figures, records the acknowledged floor and prunes the ledgers, and
 * keeps the consumers' leases (lease.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_H
#define RELIQ_H

#define RELIQ_EXTENSION_NAME	"reliq"
#define RELIQ_SCHEMA_NAME		"reliq"
#define RELIQ_LIBRARY_NAME		"reliq"

/* Longest text kept in shared memory for last_error. */
#define RELIQ_ERROR_LEN			256

/* The reliq.* settings. */
#include "settings.h"

#endif							/* RELIQ_H */
