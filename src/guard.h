/*-------------------------------------------------------------------------
 *
 * guard.h
 *	  reliq's edges: a DROP EXTENSION that neither deadlocks with the
 *	  workers nor silently takes user handlers, and handlers that cannot be
 *	  dropped while a subscription uses them.  See guard.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_GUARD_H
#define RELIQ_GUARD_H

/* Installs the hooks; from _PG_init. */
extern void reliq_guard_install(void);

/*
 * The gate a transaction of reliq's own processes passes before it touches
 * reliq's tables: share-locks the extension (waiting while a DROP
 * EXTENSION reliq is under way) and returns whether the extension still
 * exists.  Call it first in the transaction, with nothing of reliq's
 * locked yet.
 */
extern bool reliq_guard_enter(void);

#endif							/* RELIQ_GUARD_H */
