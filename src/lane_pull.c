/*-------------------------------------------------------------------------
 *
 * lane_pull.c
 *	  A lane's pulls: keeping a pull request out on the server, taking what
 *	  arrived for the lane into a batch, the end of a pull (and what it
 *	  says about the consumer), and, for an ordered subscription, the pull
 *	  turn its workers take one at a time (order_registry.c).  The lane's
 *	  state machine and turns are lane.c's.
 *
 * Locks: none held across calls; see worker_internal.h.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"

#include "order_registry.h"
#include "worker_internal.h"

/* Filling a batch under a backlog (reliq_lane_collect_batch). */
#define RELIQ_LINGER_MS 1		/* longest wait for more messages */
#define RELIQ_GAP_US 200		/* a longer silence ends the batch */

/* ordering => 'key' on more than one worker: pulls in turn. */
#define RELIQ_TURN_WAIT_MS 1	/* a lane refused the turn asks again */
#define RELIQ_TURN_IDLE_WAIT_MS 20	/* ... when its last pull was empty */
#define RELIQ_TURN_PULL_MS 100	/* a pull's longest wait for messages */

/*
 * Is the consumer we attached to still there?  Called when pulls go
 * unanswered, and periodically.  (A consumer made again under the same
 * name needs nothing: the ledger is keyed by the stream, and a server
 * restart changes a consumer's creation time anyway.)
 */
static void
verify_consumer(Lane *l)
{
	ReliqConsumerInfo info;

	if (!reliq_nats_consumer_info(l->pool->conn, l->sub->stream, l->consumer, &info,
								  NULL))
		return;					/* cannot tell now; the connection reports */
	if (!info.found)
	{
		reliq_note_problem(l, WARNING, ERRCODE_UNDEFINED_OBJECT, "consumer \"%s\" of stream \"%s\" has disappeared from the server",
					 l->consumer, l->sub->stream);
		reliq_lane_detach(l);
	}
}

/* The outstanding pull ended without filling the batch. */
static void
handle_pull_end(Lane *l)
{
	const char *description;
	int			status = reliq_puller_end_status(l->puller, &description);

	switch (status)
	{
		case 404:				/* no messages */
		case 408:				/* expired */
			l->missed_pulls = 0;
			l->empty_pulls++;
			break;
		case 409:
			if (strstr(description, "Deleted") != NULL ||
				strstr(description, "deleted") != NULL)
			{
				reliq_note_problem(l, WARNING, ERRCODE_UNDEFINED_OBJECT, "consumer \"%s\" was deleted on the server",
							 l->consumer);
				reliq_lane_detach(l);
			}
			else
			{
				reliq_note_problem(l, WARNING, ERRCODE_EXTERNAL_ROUTINE_EXCEPTION, "pull refused: %d %s", status, description);
				l->pull_after = after_ms(reliq_naptime);
			}
			break;
		case 0:					/* no answer at all */
		case 503:				/* no responders */
			l->empty_pulls = 0;
			if (reliq_nats_is_connected(l->pool->conn) && ++l->missed_pulls >= 2)
			{
				l->missed_pulls = 0;
				verify_consumer(l);
			}
			break;
		default:
			reliq_note_problem(l, WARNING, ERRCODE_EXTERNAL_ROUTINE_EXCEPTION, "pull refused: %d %s", status, description);
			l->pull_after = after_ms(reliq_naptime);
			break;
	}
}

/*
 * Take what has arrived for the lane, up to max, without waiting; deal
 * with the end of its pull.  A message lands in msgs[*n].
 */
static void
take_arrived(Lane *l, ReliqMessage *msgs, int max, int *n)
{
	while (*n < max && reliq_lane_attached(l))
	{
		ReliqPullEvent event = reliq_puller_next(l->puller, &msgs[*n]);

		if (event == RELIQ_PULL_MESSAGE)
		{
			(*n)++;
			l->empty_pulls = 0;
		}
		else if (event == RELIQ_PULL_ENDED)
			handle_pull_end(l);
		else
			break;
	}
}

/*
 * An ordered subscription on more than one worker: its workers pull in
 * turn, and a worker hands the turn on once its pull has ended.  Its
 * pulls are short (RELIQ_TURN_PULL_MS, idle or not), and it waits for
 * the end of its pull before applying what the pull brought, so that no
 * worker keeps the turn through a batch.
 */
bool
reliq_lane_pulls_in_turn(Lane *l)
{
	return l->sub->norder > 0 && l->sub->concurrency > 1;
}

/*
 * ordering => 'key': the lane's workers pull in turn (order_registry.c).
 * A lane refused the turn asks again after RELIQ_TURN_WAIT_MS, or
 * RELIQ_TURN_IDLE_WAIT_MS if its last pull brought nothing (or, with no
 * room to register what it would pull, after reliq.naptime).
 */
static bool
take_pull_turn(Lane *l, int want)
{
	bool		full;

	l->order_registered = true; /* holding or waiting: let go when it goes */
	if (reliq_order_take_turn(l->sub->id, want, &full))
	{
		l->order_turn = true;
		return true;
	}
	l->order_turn = false;
	if (full)
	{
		reliq_note_problem(l, WARNING, ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
						   "no room to register more messages of ordered subscriptions (reliq.max_ordered_messages = %d)",
						   reliq_max_ordered_messages);
		l->pull_after = after_ms(reliq_naptime);
	}
	else if (l->empty_pulls > 0)
		l->pull_after = after_ms(RELIQ_TURN_IDLE_WAIT_MS);
	else
		l->pull_after = after_ms(RELIQ_TURN_WAIT_MS);
	return false;
}

/*
 * Give back (NAK after delay_ms) what arrived for the lane and was never
 * taken; how many.  For an ordered subscription, registered first and
 * given back in the registry: newer messages of their keys wait for them.
 */
int
reliq_lane_give_back_queued(Lane *l, int64 delay_ms)
{
	ReliqMessage *msgs;
	int			n = 0;
	int			max = reliq_puller_queued(l->puller);
	int			released;

	if (l->sub == NULL || l->sub->norder == 0 || max == 0)
		return reliq_puller_release_queued(l->puller, delay_ms);
	msgs = palloc(sizeof(ReliqMessage) * max);
	while (n < max)
	{
		int			before = n;

		if (reliq_puller_next(l->puller, &msgs[n]) == RELIQ_PULL_MESSAGE)
			n++;
		if (n == before && reliq_puller_queued(l->puller) == 0)
			break;
	}
	reliq_ordering_received(l, msgs, n);
	released = reliq_ack_release(l->pool->conn, msgs, n, delay_ms);
	reliq_order_give_back(l->sub->id, msgs, n);
	pfree(msgs);
	return released;
}

/*
 * Hand the pull turn on once the lane's pull has ended and all it brought
 * is registered.  A lane holding a failing batch takes nothing: what its
 * pull brought is registered and given back, so that its subscription's
 * other workers go on.
 */
void
reliq_lane_hand_on_pull_turn(Lane *l)
{
	if (!l->order_turn || l->puller == NULL || reliq_puller_active(l->puller))
		return;
	if (reliq_puller_queued(l->puller) > 0)
	{
		if (l->nheld == 0)
			return;				/* the lane's next batch takes them */
		(void) reliq_lane_give_back_queued(l, 0);
	}
	reliq_order_end_turn(l->sub->id);
	l->order_turn = false;
}

/* Keep a pull request out for the lane, unless it has enough in hand. */
static void
keep_pulling(Lane *l, int max)
{
	bool		idle = l->empty_pulls >= RELIQ_IDLE_AFTER;
	int			queued;
	bool		ok;

	if (!reliq_lane_attached(l) || reliq_lane_leaving(l) || reliq_puller_active(l->puller) ||
		!reliq_nats_is_connected(l->pool->conn) ||
		GetCurrentTimestamp() < l->pull_after)
		return;
	queued = reliq_puller_queued(l->puller);
	if (queued >= max)
		return;
	if (l->sub->norder > 0 && !take_pull_turn(l, max - queued))
		return;
	if (reliq_lane_pulls_in_turn(l))
		ok = reliq_puller_request(l->puller, max - queued, RELIQ_TURN_PULL_MS, 0, NULL);
	else
		ok = reliq_puller_request(l->puller, max - queued,
								  idle ? Max(reliq_fetch_timeout, RELIQ_IDLE_PULL_MS) : reliq_fetch_timeout,
								  idle ? RELIQ_IDLE_HEARTBEAT_MS : 0, NULL);
	if (!ok)
		l->pull_after = after_ms(RELIQ_POLL_MS);
}

/*
 * Pulls in turn: take what the lane's pull still brings, until it ends
 * (RELIQ_TURN_PULL_MS at most, or the batch is full), so that the turn
 * can be handed on before the batch is applied.
 */
static void
take_to_pull_end(Lane *l, ReliqMessage *msgs, int max, int *n)
{
	TimestampTz until = after_ms(RELIQ_TURN_PULL_MS + reliq_nats_timeout);

	while (*n < max && reliq_lane_attached(l) && reliq_puller_active(l->puller) &&
		   GetCurrentTimestamp() < until)
	{
		CHECK_FOR_INTERRUPTS();
		reliq_worker_exit_if_postmaster_died();
		if (reliq_inbox_pump(l->pool->inbox, RELIQ_TURN_PULL_MS / 4, NULL) < 0)
			break;
		take_arrived(l, msgs, max, n);
	}
}

/*
 * Collect up to max messages of the lane from what has arrived, without
 * waiting for the first.  Under a backlog (the server said more are
 * pending: each message carries the consumer's pending count in its reply
 * subject), the rest of a batch streams in microseconds apart, and fewer,
 * fuller transactions go faster: keep taking messages while they come
 * less than RELIQ_GAP_US apart, for at most RELIQ_LINGER_MS.  Under light
 * load nothing is pending and nothing is added to the latency.  Before
 * returning, asks for the next batch, so messages flow in while this one
 * is applied (but see below for ordered subscriptions).
 */
int
reliq_lane_collect_batch(Lane *l, ReliqMessage *msgs, int max)
{
	int			n = 0;

	reliq_profile_start();
	take_arrived(l, msgs, max, &n);
	if (n > 0 && n < max && msgs[n - 1].pending > 0 &&
		reliq_lane_attached(l) && reliq_puller_active(l->puller))
	{
		TimestampTz until = after_ms(RELIQ_LINGER_MS);
		TimestampTz last_arrival = GetCurrentTimestamp();

		while (n < max && msgs[n - 1].pending > 0 &&
			   reliq_lane_attached(l) && reliq_puller_active(l->puller))
		{
			int			before = n;
			TimestampTz now;

			if (reliq_inbox_pump(l->pool->inbox, 0, NULL) < 0)
				break;
			take_arrived(l, msgs, max, &n);
			now = GetCurrentTimestamp();
			if (n > before)
				last_arrival = now;
			else if (now - last_arrival >= RELIQ_GAP_US || now >= until)
				break;
			else
				pg_usleep(RELIQ_GAP_US / 4);
		}
	}
	if (n > 0 && reliq_lane_pulls_in_turn(l))
		take_to_pull_end(l, msgs, max, &n);
	if (l->sub->norder > 0)
	{
		reliq_ordering_received(l, msgs, n);
		reliq_lane_hand_on_pull_turn(l);
	}

	/*
	 * Workers that pull in turn pull again once their batch is done: one
	 * that pulled before applying would keep the turn through its batch (a
	 * slow handler, a lock wait) while the others wait.
	 */
	if (n == 0 || !reliq_lane_pulls_in_turn(l))
		keep_pulling(l, max);
	reliq_profile_lap(RELIQ_STEP_COLLECT);
	return n;
}

/*
 * The lane drops its puller (detached): an ordered subscription's turn
 * goes on, after what the lane's pull brought and it never took is
 * registered and given back.
 */
void
reliq_lane_drop_pull_turn(Lane *l)
{
	if (!l->order_turn)
		return;
	if (l->puller != NULL)
		(void) reliq_lane_give_back_queued(l, reliq_ack_release_delay_ms(l->puller));
	reliq_order_end_turn(l->sub->id);
	l->order_turn = false;
}
