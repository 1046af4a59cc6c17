/*-------------------------------------------------------------------------
 *
 * monitor.h
 *	  The reliq monitor: the consumers' figures from the server, whatever
 *	  the workers are doing, and the pruning of the ledgers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_MONITOR_H
#define RELIQ_MONITOR_H

#include "fmgr.h"

extern PGDLLEXPORT void reliq_monitor_main(Datum main_arg);

#endif							/* RELIQ_MONITOR_H */
