/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  A reliq worker: one background worker pulling for one subscription.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_WORKER_H
#define RELIQ_WORKER_H

#include "fmgr.h"

/* bgw_main_arg is the slot index; bgw_extra holds the slot's generation. */
extern PGDLLEXPORT void reliq_worker_main(Datum main_arg);

#endif							/* RELIQ_WORKER_H */
