/*-------------------------------------------------------------------------
 *
 * xact.c
 *	  The transaction skeleton of reliq's background workers, written once:
 *	  a short transaction for bookkeeping, as worker_spi runs one.
 *
 * reliq_xact_begin() sets the statement start time, starts the
 * transaction, pushes a snapshot and, given an activity, reports it to
 * pg_stat_activity.  It returns the memory context that was current;
 * reliq_xact_commit() (or reliq_xact_abort()) makes it current again: a
 * commit leaves TopMemoryContext current, where a loop's allocations
 * would leak.  In between, the transaction's own memory context is
 * current, so what is not copied out goes with the transaction.
 *
 * SPI connections are the caller's business (each catalog.c function makes
 * its own; a batch holds one for the whole transaction), so one
 * transaction may run several.  An error thrown inside is the caller's to
 * catch: AbortCurrentTransaction() cleans up the snapshot too.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "pgstat.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "xact.h"

/* reliq_xact_begin reported an activity: say idle at the end. */
static bool activity_reported = false;

/*
 * Start a transaction with a snapshot.  activity, if not NULL, is shown in
 * pg_stat_activity until the end (a worker applying a batch reports its
 * own, for the whole batch and its acks, and passes NULL).
 */
MemoryContext
reliq_xact_begin(const char *activity)
{
	MemoryContext caller = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	activity_reported = (activity != NULL);
	if (activity_reported)
		pgstat_report_activity(STATE_RUNNING, activity);
	return caller;
}

static void
xact_done(MemoryContext caller)
{
	MemoryContextSwitchTo(caller);
	pgstat_report_stat(false);
	if (activity_reported)
		pgstat_report_activity(STATE_IDLE, NULL);
	activity_reported = false;
}

/* Commit, and return to the caller's memory context. */
void
reliq_xact_commit(MemoryContext caller)
{
	PopActiveSnapshot();
	CommitTransactionCommand();
	xact_done(caller);
}

/* Roll back instead: nothing the transaction did is to last. */
void
reliq_xact_abort(MemoryContext caller)
{
	PopActiveSnapshot();
	AbortCurrentTransaction();
	xact_done(caller);
}
