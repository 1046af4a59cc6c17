/*-------------------------------------------------------------------------
 *
 * profile.h
 *	  The per-step profile of a batch (reliq.profile_batches), defined in
 *	  profile.c; read with reliq.batch_profile().
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_PROFILE_H
#define RELIQ_PROFILE_H

/* The steps of a batch, in the order a batch goes through them. */
typedef enum ReliqProfileStep
{
	RELIQ_STEP_COLLECT,			/* take what arrived, linger, ask for more */
	RELIQ_STEP_BEGIN,			/* BEGIN, snapshot, SPI connection */
	RELIQ_STEP_PLANS,			/* kept plans, handler or sink set-up */
	RELIQ_STEP_IDENTITY,		/* the stream incarnation and subscription read */
	RELIQ_STEP_LEDGER,			/* the ledger rows and the floor */
	RELIQ_STEP_APPLY,			/* the handler calls or the sink's write */
	RELIQ_STEP_COMMIT,			/* COMMIT (the WAL flush), pgstat */
	RELIQ_STEP_GATE,			/* standbys, lease, outbox */
	RELIQ_STEP_ACK,				/* the acks and their flush */
	RELIQ_STEP_STATS,			/* counting, timing, reporting */
	RELIQ_STEP_OTHER,			/* the rest: grouping, outcomes, activity */
	RELIQ_STEP_COUNT
} ReliqProfileStep;

struct ReliqSubscriptionStats;

extern bool reliq_profile_batches;

extern void reliq_profile_define(void);
extern void reliq_profile_start_slow(void);
extern void reliq_profile_lap_slow(ReliqProfileStep step);
extern void reliq_profile_end_slow(struct ReliqSubscriptionStats *stats, int nmsgs);
extern void reliq_profile_reset(struct ReliqSubscriptionStats *entry, bool init);

/*
 * The calls the batch path makes: one test of a bool each while the
 * profile is off.  reliq_profile_start() begins a batch (its collection),
 * reliq_profile_lap(step) gives the time since the last lap to step, and
 * reliq_profile_end() gives the rest to "other" and adds the batch to the
 * subscription's statistics entry.
 */
static inline void
reliq_profile_start(void)
{
	if (unlikely(reliq_profile_batches))
		reliq_profile_start_slow();
}

static inline void
reliq_profile_lap(ReliqProfileStep step)
{
	if (unlikely(reliq_profile_batches))
		reliq_profile_lap_slow(step);
}

static inline void
reliq_profile_end(struct ReliqSubscriptionStats *stats, int nmsgs)
{
	if (unlikely(reliq_profile_batches))
		reliq_profile_end_slow(stats, nmsgs);
}

#endif							/* RELIQ_PROFILE_H */
