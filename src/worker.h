/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  A reliq pool worker: one background worker serving the subscriptions
 *	  the launcher assigned to it, each as a lane (pool.c; its files share
 *	  worker_internal.h).
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_WORKER_H
#define RELIQ_WORKER_H

#include "fmgr.h"

/* bgw_main_arg is the slot index; bgw_extra holds the slot's generation. */
extern PGDLLEXPORT void reliq_worker_main(Datum main_arg);

#endif							/* RELIQ_WORKER_H */
