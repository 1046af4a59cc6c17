/*-------------------------------------------------------------------------
 *
 * xact.h
 *	  The short bookkeeping transaction of reliq's background workers
 *	  (see xact.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_XACT_H
#define RELIQ_XACT_H

#include "utils/palloc.h"

extern MemoryContext reliq_xact_begin(const char *activity);
extern void reliq_xact_commit(MemoryContext caller);
extern void reliq_xact_abort(MemoryContext caller);

#endif							/* RELIQ_XACT_H */
