/*-------------------------------------------------------------------------
 *
 * ack_gate.c
 *	  What a pool worker may send after COMMIT, and how: the ack gate
 *	  (standbys, lease), the outbox's publishes, and the ACK, NAK, TERM and
 *	  in-progress acks themselves.  Takes what it needs as arguments (a
 *	  connection, a subscription, its statistics entry, messages); it knows
 *	  no lane and changes none.
 *
 * Nothing goes out that may not last (reliq_ack_gate): not after the
 * postmaster died (the commit went to a data directory no standby will
 * see), not while the worker is asked to die, not before the synchronous
 * standbys that synchronous_commit asks for confirmed the commit (a cancel
 * cuts COMMIT's own wait short), and not once the lease has lapsed or was
 * acquired anew since the lane attached.
 *
 * A NAK claims nothing, unlike an ack: a redelivery of what was committed
 * is absorbed by the ledger, and nats-server ignores a NAK that does not
 * match a pending delivery of the consumer as it is now.  So giving back
 * (reliq_ack_release) needs no lease, only a connection.
 *
 * Locks: SyncRepLock (shared) to read what the standbys confirmed; the
 * lease is read under its statistics entry's spinlock (shmem.c).  Neither
 * is held across a wait or a call into the NATS client.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "replication/syncrep.h"
#include "replication/walsender.h"
#include "replication/walsender_private.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/pmsignal.h"
#include "storage/ipc.h"

#include "outbox.h"
#include "worker_internal.h"

/* Wait on the latch for at most ms, then look at interrupts. */
void
reliq_worker_wait_latch(long ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 Max(ms, 1), PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * The postmaster is gone: exit at once, acking nothing.  What this worker
 * committed since went to a data directory that no standby receives any
 * more; unacked, it is redelivered to whoever consumes next.
 */
void
reliq_worker_exit_if_postmaster_died(void)
{
	if (!PostmasterIsAlive())
		proc_exit(1);
}

/*
 * Give messages back: a NAK each, so that the server delivers them again
 * soon rather than after ack_wait.  delay_ms lets a pull request of ours
 * that the server still holds run out first, or it would get them again.
 */
int
reliq_ack_release(ReliqNatsConnection *conn, ReliqMessage *msgs, int n,
				  int64 delay_ms)
{
	int			released = 0;
	int			i;

	if (conn == NULL || !reliq_nats_is_connected(conn))
		return 0;
	for (i = 0; i < n; i++)
		released += reliq_nats_ack(conn, msgs[i].reply, RELIQ_NAK, delay_ms, NULL);
	return released;
}

/* Delay for NAKs: until the puller's outstanding pull (if any) has run out. */
int64
reliq_ack_release_delay_ms(ReliqPuller *puller)
{
	int64		left = puller ? reliq_puller_request_left_ms(puller) : 0;

	return left > 0 ? left + 100 : 0;
}

/*
 * Usable right now, and still the lease of the given epoch (the one the
 * lane attached under)?
 */
bool
reliq_ack_lease_current(ReliqControl *control, int64 subscription_id,
						uint64 epoch)
{
	ReliqLeaseView lease;

	if (!reliq_control_belongs(control, subscription_id))
		return false;
	reliq_lease_read(control, &lease);
	return reliq_lease_usable(&lease) &&
		(lease.state == RELIQ_LEASE_OFF || lease.epoch == epoch);
}

/* The wait synchronous_commit asks for: a SYNC_REP_WAIT_* mode. */
static int
sync_wait_mode(void)
{
	if (max_wal_senders == 0 || SyncRepStandbyNames == NULL ||
		SyncRepStandbyNames[0] == '\0')
		return SYNC_REP_NO_WAIT;
	switch (synchronous_commit)
	{
		case SYNCHRONOUS_COMMIT_REMOTE_WRITE:
			return SYNC_REP_WAIT_WRITE;
		case SYNCHRONOUS_COMMIT_REMOTE_FLUSH:
			return SYNC_REP_WAIT_FLUSH;
		case SYNCHRONOUS_COMMIT_REMOTE_APPLY:
			return SYNC_REP_WAIT_APPLY;
		default:
			return SYNC_REP_NO_WAIT;
	}
}

/*
 * Wait until the synchronous standbys confirmed WAL up to lsn.  COMMIT
 * waits for that itself, but a cancel (a statement timeout, a
 * pg_cancel_backend) cuts its wait short with a mere WARNING, and the
 * commit stands locally; an ack must not get ahead of the standby.
 * Waits on the latch: death of the postmaster and termination end it.
 * *awaiting: whether the wait was logged already (once per wait).
 */
static void
await_standbys(const ReliqSubscription *sub, bool *awaiting, XLogRecPtr lsn)
{
	int			mode = sync_wait_mode();

	while (mode != SYNC_REP_NO_WAIT)
	{
		bool		confirmed;

		LWLockAcquire(SyncRepLock, LW_SHARED);
		confirmed = WalSndCtl->lsn[mode] >= lsn;
		LWLockRelease(SyncRepLock);
		if (confirmed)
			break;
		if (!*awaiting)
			ereport(LOG,
					(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
					 errmsg("reliq subscription \"%s\": acknowledgements wait until the synchronous standby confirms %X/%X",
							sub->name, LSN_FORMAT_ARGS(lsn)),
					 errdetail("The commit's own wait for synchronous replication was cancelled.")));
		*awaiting = true;
		reliq_worker_wait_latch(RELIQ_POLL_MS);
		mode = sync_wait_mode();
	}
	*awaiting = false;
}

/*
 * The gate, after COMMIT, before publishing the outbox and acking.  Exits
 * (acking nothing) when the postmaster has died or the worker is asked to
 * die; waits for synchronous standbys; false when the lease has lapsed
 * meanwhile (another cluster may own the consumer now: its messages are
 * left to it, unacked).
 */
bool
reliq_ack_gate(ReliqControl *control, const ReliqSubscription *sub,
			   uint64 epoch, bool *awaiting_standby, XLogRecPtr flushed)
{
	reliq_worker_exit_if_postmaster_died();
	CHECK_FOR_INTERRUPTS();
	await_standbys(sub, awaiting_standby, flushed);
	reliq_worker_exit_if_postmaster_died();
	return reliq_ack_lease_current(control, sub->id, epoch);
}

/* Outbox rows published in one transaction. */
#define RELIQ_OUTBOX_ROUND 500

/*
 * Publish what the subscription's handlers wrote to reliq._outbox, after
 * their commit.  False when rows still wait (the reason is the NATS
 * client's last error).
 */
bool
reliq_ack_publish_outbox(ReliqNatsConnection *conn, int64 subscription_id,
						 ReliqNatsStatus *st)
{
	bool		stuck = false;
	int			rows;

	pgstat_report_activity(STATE_RUNNING, "reliq: publishing the outbox");
	do
	{
		rows = reliq_outbox_publish(conn, subscription_id, RELIQ_OUTBOX_ROUND,
									&stuck, st);
	} while (rows == RELIQ_OUTBOX_ROUND && !stuck);
	pgstat_report_activity(STATE_IDLE, NULL);
	return !stuck;
}

/*
 * Acknowledge a batch that passed the gate, as each message's outcome
 * says: +ACK applied and duplicates, -NAK failed (after nak_delay_ms[i],
 * the redelivery policy's, apply.c), +TERM dead-lettered, -NAK at once
 * what was not applied.  quick: the batch took less than
 * RELIQ_QUICK_BATCH_US (see below).
 */
void
reliq_ack_send(ReliqNatsConnection *conn, const ReliqSubscription *sub,
			   ReliqMessage *msgs, const int64 *nak_delay_ms, int n, bool quick)
{
	ReliqNatsStatus st = {0};
	bool		ok = true;
	int			i;

	for (i = 0; i < n; i++)
	{
		ReliqMessage *msg = &msgs[i];

		switch (msg->outcome)
		{
			case RELIQ_OUTCOME_PROCESSED:
			case RELIQ_OUTCOME_DUPLICATE:
				ok &= reliq_nats_ack(conn, msg->reply, RELIQ_ACK, 0, &st);
				break;
			case RELIQ_OUTCOME_FAILED:
				ok &= reliq_nats_ack(conn, msg->reply, RELIQ_NAK, nak_delay_ms[i], &st);
				break;
			case RELIQ_OUTCOME_DEAD_LETTERED:
				ok &= reliq_nats_ack(conn, msg->reply, RELIQ_TERM, 0, &st);
				break;
			case RELIQ_OUTCOME_NONE:
				/* not applied (the stream changed): deliver again now */
				ok &= reliq_nats_ack(conn, msg->reply, RELIQ_NAK, 0, &st);
				break;
			case RELIQ_OUTCOME_HELD:
			case RELIQ_OUTCOME_DEFERRED:
				/* kept by the lane, alive with in-progress acks */
				break;
		}
	}

	/*
	 * Whether to flush with a round trip.  Left alone, cnats's flusher
	 * thread writes what is buffered (these acks, and the pull for the next
	 * batch) after a pause of about a millisecond.  A large batch takes
	 * longer than that to apply, so the pause is hidden, while waiting for
	 * the PONG of a flush would leave the worker idle as nats-server works
	 * through hundreds of acks (without it, two workers at batch 500 went
	 * from 57k to 72k msg/s on two cores).  A quick batch would wait for
	 * the pause instead: flush it (batch 10 ran at a third of the speed
	 * without).  An ack that never arrives only means a redelivery, which
	 * the ledger absorbs; the worker flushes before it stops.
	 */
	if (ok && quick)
		ok = reliq_nats_flush(conn, reliq_nats_timeout, &st);
	if (!ok)
		ereport(DEBUG1,
				(errcode(ERRCODE_SUCCESSFUL_COMPLETION),
				 errmsg("reliq subscription \"%s\": acknowledgements not sent: %s",
						sub->name, st.message)));
}

/*
 * Keep held messages alive on the server: an in-progress ack each, so
 * that it neither redelivers them nor counts deliveries.
 */
void
reliq_ack_in_progress(ReliqNatsConnection *conn, ReliqMessage *msgs, int n)
{
	int			i;

	for (i = 0; i < n; i++)
		(void) reliq_nats_ack(conn, msgs[i].reply, RELIQ_IN_PROGRESS, 0, NULL);
	(void) reliq_nats_flush(conn, reliq_nats_timeout, NULL);
}
