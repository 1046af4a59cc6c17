/*-------------------------------------------------------------------------
 *
 * launcher.h
 *	  The reliq launcher: keeps the workers in line with reliq.subscription.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_LAUNCHER_H
#define RELIQ_LAUNCHER_H

#include "fmgr.h"

extern PGDLLEXPORT void reliq_launcher_main(Datum main_arg);

#endif							/* RELIQ_LAUNCHER_H */
