/*-------------------------------------------------------------------------
 *
 * metrics.h
 *	  reliq's figures in the Prometheus text exposition format, and the
 *	  optional HTTP endpoint that serves them.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_METRICS_H
#define RELIQ_METRICS_H

#include "fmgr.h"
#include "utils/guc.h"

extern char *reliq_metrics_text(void);
extern void reliq_metrics_count_dead_letters(void);

extern PGDLLEXPORT void reliq_metrics_server_main(Datum main_arg);

#endif							/* RELIQ_METRICS_H */
