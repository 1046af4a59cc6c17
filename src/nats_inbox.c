/*-------------------------------------------------------------------------
 *
 * nats_inbox.c
 *	  The pull inbox a pool worker's lanes share: pull requests, deliveries
 *	  and status messages sorted to their puller, stray deliveries given
 *	  back.  Part of the NATS client (nats_internal.h).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "utils/fmgrprotos.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "nats_internal.h"
#include "reliq.h"

/*
 * Pulling
 *
 * A worker serves several consumers on one connection.  All their pull
 * requests answer to one inbox (a plain synchronous subscription on
 * "<inbox>.*"), so the worker waits for all of them in one place
 * (reliq_inbox_pump).  Each pull's reply subject is
 * "<inbox>.<puller id>.<pull number>".  Messages are sorted to their puller
 * as they are read:
 *
 *	 - a delivery carries its original subject, but its reply subject
 *	   ($JS.ACK.<stream>.<consumer>...) names the consumer: it goes to that
 *	   consumer's puller, whichever of its pulls it answers;
 *	 - a status (100 heartbeat, 404, 408, 409) carries the pull's reply
 *	   subject: it goes to the puller with that id, and ends the pull only
 *	   when it answers the outstanding one (a late 408 of an old pull must
 *	   not end the current one).
 *
 * A delivery for a consumer no puller serves any more is given back (NAK).
 * Messages wait in their puller's queue (as cnats' natsMsg, owned by us)
 * until the worker takes them.
 */

#define RELIQ_CONSUMER_KEY_LEN 512

typedef struct PullerByConsumer
{
	char		key[RELIQ_CONSUMER_KEY_LEN];	/* "<stream> <consumer>" */
	ReliqPuller *puller;		/* NULL: retired, see held_until */
	TimestampTz held_until;		/* a destroyed puller's pull may be held */
} PullerByConsumer;

/*
 * A delivery no puller wants is given back (NAK) with a delay, so that a
 * pull of ours the server still holds cannot be handed it straight back
 * (nats-server 2.9 gives a NAKed message to a waiting pull at once, and
 * counts a delivery each time).  When the consumer's puller was destroyed
 * with its pull out, the delay runs until that pull ends; otherwise it
 * covers only the moments by which the server's end of a pull may trail
 * ours.
 */
#define RELIQ_STRAY_SKEW_MS 500

typedef struct PullerById
{
	uint32		id;
	ReliqPuller *puller;
} PullerById;

struct ReliqInbox
{
	ReliqNatsConnection *conn;
	natsSubscription *sub;
	char	   *prefix;			/* "<inbox>" */
	HTAB	   *by_consumer;
	HTAB	   *by_id;
	uint32		next_id;
	int64		stray_delay_ms; /* longest NAK delay of a stray delivery */
	uint64		strays;			/* deliveries no puller wanted (NAKed) */
};

struct ReliqPuller
{
	ReliqInbox *inbox;
	uint32		id;
	char		key[RELIQ_CONSUMER_KEY_LEN];
	char	   *next_subject;	/* $JS.API.CONSUMER.MSG.NEXT.<s>.<c> */
	uint64		pull_count;
	char	   *current_reply;	/* reply subject of the outstanding pull */
	bool		active;
	int			requested;
	int			received;
	int			heartbeat_ms;	/* of the outstanding pull; 0: none */
	TimestampTz sent_at;
	TimestampTz last_heard;		/* last message or heartbeat of any pull */
	TimestampTz deadline;		/* when an unanswered pull is given up */
	TimestampTz expires_at;		/* when the server ends the outstanding pull */
	bool		end_pending;	/* an end not yet reported by next() */
	int			end_status;		/* status code that ended the last pull */
	char		end_description[128];

	/* deliveries read from the inbox, not yet taken (a ring) */
	natsMsg   **queue;
	int			qhead;
	int			qlen;
	int			qcap;
};

static void
consumer_key(char *key, const char *stream, const char *consumer)
{
	snprintf(key, RELIQ_CONSUMER_KEY_LEN, "%s %s", stream, consumer);
}

/*
 * The consumer a JetStream reply subject names, as a key; false if it is
 * not one (reliq_ack_subject_parse: either layout).
 */
static bool
ack_subject_key(const char *reply, char *key)
{
	ReliqAckSubject ack;

	if (!reliq_ack_subject_parse(reply, &ack) ||
		ack.stream.len + ack.consumer.len + 2 > RELIQ_CONSUMER_KEY_LEN)
		return false;
	snprintf(key, RELIQ_CONSUMER_KEY_LEN, "%.*s %.*s",
			 ack.stream.len, ack.stream.str, ack.consumer.len, ack.consumer.str);
	return true;
}

ReliqInbox *
reliq_inbox_create(ReliqNatsConnection *conn, int64 stray_delay_ms,
				   ReliqNatsStatus *st)
{
	ReliqInbox *inbox;
	natsInbox  *name = NULL;
	char	   *wildcard;
	natsStatus	s;
	sigset_t	saved;
	HASHCTL		ctl;

	inbox = MemoryContextAllocZero(TopMemoryContext, sizeof(*inbox));
	inbox->conn = conn;
	inbox->next_id = 1;
	inbox->stray_delay_ms = stray_delay_ms;

	BLOCK_SIGNALS(saved);
	s = natsInbox_Create(&name);
	if (s == NATS_OK)
	{
		inbox->prefix = MemoryContextStrdup(TopMemoryContext, name);
		natsInbox_Destroy(name);
		wildcard = psprintf("%s.*.*", inbox->prefix);
		s = natsConnection_SubscribeSync(&inbox->sub, conn->nc, wildcard);
		pfree(wildcard);
	}
	/* Replayed pulls can deliver bursts: never drop them as slow. */
	if (s == NATS_OK)
		s = natsSubscription_SetPendingLimits(inbox->sub, -1, -1);
	RESTORE_SIGNALS(saved);

	if (s != NATS_OK)
	{
		reliq_nats_remember_error(st, "subscribing to the pull inbox", s, 0);
		reliq_inbox_destroy(inbox);
		return NULL;
	}

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = RELIQ_CONSUMER_KEY_LEN;
	ctl.entrysize = sizeof(PullerByConsumer);
	ctl.hcxt = TopMemoryContext;
	inbox->by_consumer = hash_create("reliq pullers by consumer", 64, &ctl,
									 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(uint32);
	ctl.entrysize = sizeof(PullerById);
	ctl.hcxt = TopMemoryContext;
	inbox->by_id = hash_create("reliq pullers by id", 64, &ctl,
							   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	return inbox;
}

/*
 * A delivery nobody here takes (its consumer's puller is gone): give it
 * back after delay_ms (see RELIQ_STRAY_SKEW_MS).
 */
static void
give_back(ReliqInbox *inbox, natsMsg *m, int64 delay_ms)
{
	(void) reliq_nats_ack(inbox->conn, natsMsg_GetReply(m), RELIQ_NAK, delay_ms,
						  NULL);
	inbox->strays++;
}

/*
 * Close the inbox.  Its pullers must have been destroyed first.  Anything
 * still unread in it is given back.
 */
void
reliq_inbox_destroy(ReliqInbox *inbox)
{
	sigset_t	saved;

	if (inbox == NULL)
		return;
	if (inbox->sub)
	{
		natsMsg    *m = NULL;

		while (natsSubscription_NextMsg(&m, inbox->sub, 0) == NATS_OK)
		{
			ReliqAckSubject ack;

			if (reliq_ack_subject_parse(natsMsg_GetReply(m), &ack))
				give_back(inbox, m, 0);	/* the connection closes next */
			natsMsg_Destroy(m);
		}
		BLOCK_SIGNALS(saved);
		natsSubscription_Unsubscribe(inbox->sub);
		natsSubscription_Destroy(inbox->sub);
		RESTORE_SIGNALS(saved);
	}
	if (inbox->by_consumer)
		hash_destroy(inbox->by_consumer);
	if (inbox->by_id)
		hash_destroy(inbox->by_id);
	if (inbox->prefix)
		pfree(inbox->prefix);
	pfree(inbox);
}

static void
enqueue(ReliqPuller *puller, natsMsg *m)
{
	if (puller->qlen == puller->qcap)
	{
		int			newcap = Max(puller->qcap * 2, 16);
		natsMsg   **queue = MemoryContextAlloc(TopMemoryContext,
											   sizeof(natsMsg *) * newcap);
		int			i;

		for (i = 0; i < puller->qlen; i++)
			queue[i] = puller->queue[(puller->qhead + i) % puller->qcap];
		if (puller->queue)
			pfree(puller->queue);
		puller->queue = queue;
		puller->qcap = newcap;
		puller->qhead = 0;
	}
	puller->queue[(puller->qhead + puller->qlen) % puller->qcap] = m;
	puller->qlen++;
}

static natsMsg *
dequeue(ReliqPuller *puller)
{
	natsMsg    *m;

	if (puller->qlen == 0)
		return NULL;
	m = puller->queue[puller->qhead];
	puller->qhead = (puller->qhead + 1) % puller->qcap;
	puller->qlen--;
	return m;
}

/* The puller a status message's subject "<inbox>.<id>.<n>" names. */
static ReliqPuller *
puller_of_status(ReliqInbox *inbox, const char *subject)
{
	size_t		plen = strlen(inbox->prefix);
	uint32		id;
	char	   *end;
	PullerById *entry;

	if (strncmp(subject, inbox->prefix, plen) != 0 || subject[plen] != '.')
		return NULL;
	id = (uint32) strtoul(subject + plen + 1, &end, 10);
	if (*end != '.')
		return NULL;
	entry = hash_search(inbox->by_id, &id, HASH_FIND, NULL);
	return entry ? entry->puller : NULL;
}

/* Sort one message read from the inbox to its puller.  Takes m. */
static void
dispatch(ReliqInbox *inbox, natsMsg *m, TimestampTz now)
{
	const char *reply = natsMsg_GetReply(m);
	const char *status = NULL;
	const char *description = NULL;
	char		key[RELIQ_CONSUMER_KEY_LEN];
	ReliqPuller *puller;

	if (reply != NULL && ack_subject_key(reply, key))
	{
		PullerByConsumer *entry = hash_search(inbox->by_consumer, key,
											  HASH_FIND, NULL);

		if (entry == NULL || entry->puller == NULL)
		{
			int64		delay = RELIQ_STRAY_SKEW_MS;

			if (entry != NULL && entry->held_until > now)
				delay += (entry->held_until - now) / 1000;
			else if (entry != NULL)
				hash_search(inbox->by_consumer, key, HASH_REMOVE, NULL);
			give_back(inbox, m, Min(delay, inbox->stray_delay_ms));
			natsMsg_Destroy(m);
			return;
		}
		puller = entry->puller;
		enqueue(puller, m);
		puller->last_heard = now;
		if (puller->active && ++puller->received >= puller->requested)
			puller->active = false;
		return;
	}

	puller = puller_of_status(inbox, natsMsg_GetSubject(m));
	if (puller != NULL &&
		natsMsgHeader_Get(m, "Status", &status) == NATS_OK && status != NULL)
	{
		puller->last_heard = now;
		if (strcmp(status, "100") != 0 && puller->active &&
			strcmp(natsMsg_GetSubject(m), puller->current_reply) == 0)
		{
			puller->active = false;
			puller->end_pending = true;
			puller->end_status = atoi(status);
			puller->end_description[0] = '\0';
			if (natsMsgHeader_Get(m, "Description", &description) == NATS_OK)
				strlcpy(puller->end_description, description,
						sizeof(puller->end_description));
		}
	}
	/* a heartbeat, a status of an earlier pull, or of a gone puller */
	natsMsg_Destroy(m);
}

/*
 * No responders (503) to one of our pulls: cnats reports it without
 * saying which.  End every outstanding pull that has heard nothing since
 * it was sent; a live one is merely asked for again.
 */
static void
end_unanswered(ReliqInbox *inbox)
{
	HASH_SEQ_STATUS seq;
	PullerById *entry;

	hash_seq_init(&seq, inbox->by_id);
	while ((entry = hash_seq_search(&seq)) != NULL)
	{
		ReliqPuller *puller = entry->puller;

		if (puller->active && puller->last_heard < puller->sent_at)
		{
			puller->active = false;
			puller->end_pending = true;
			puller->end_status = 503;
			strlcpy(puller->end_description, "No Responders",
					sizeof(puller->end_description));
		}
	}
}

/* At most this many messages are sorted per call, to stay responsive. */
#define RELIQ_PUMP_MAX 4096

/*
 * Wait up to wait_ms for the inbox, then sort what has arrived to the
 * pullers.  Returns how many messages were read; -1 if the subscription
 * failed (the reason in *st).
 */
int
reliq_inbox_pump(ReliqInbox *inbox, int wait_ms, ReliqNatsStatus *st)
{
	int			n = 0;
	TimestampTz now = 0;

	while (n < RELIQ_PUMP_MAX)
	{
		natsMsg    *m = NULL;
		natsStatus	s;

		s = natsSubscription_NextMsg(&m, inbox->sub, n == 0 ? Max(wait_ms, 0) : 0);
		if (s == NATS_TIMEOUT)
			break;
		if (now == 0)
			now = GetCurrentTimestamp();
		if (s == NATS_NO_RESPONDERS)
		{
			end_unanswered(inbox);
			n++;
			continue;
		}
		if (s != NATS_OK)
		{
			reliq_nats_remember_error(st, "reading the pull inbox", s, 0);
			return -1;
		}
		dispatch(inbox, m, now);
		n++;
	}
	return n;
}

/*
 * The connection closes next, which ends every pull of ours on the
 * server: deliveries no puller wants need only a short delay now.
 */
void
reliq_inbox_closing(ReliqInbox *inbox)
{
	inbox->stray_delay_ms = Min(inbox->stray_delay_ms, 1000);
}

/* Deliveries given back because no puller of this inbox wanted them. */
uint64
reliq_inbox_strays(ReliqInbox *inbox)
{
	return inbox->strays;
}

ReliqPuller *
reliq_puller_create(ReliqInbox *inbox, const char *stream,
					const char *consumer, ReliqNatsStatus *st)
{
	ReliqPuller *puller;
	PullerByConsumer *by_consumer;
	PullerById *by_id;
	bool		found;

	puller = MemoryContextAllocZero(TopMemoryContext, sizeof(*puller));
	puller->inbox = inbox;
	consumer_key(puller->key, stream, consumer);
	by_consumer = hash_search(inbox->by_consumer, puller->key, HASH_ENTER, &found);
	if (found && by_consumer->puller != NULL)
	{
		/* one puller per consumer and inbox: the caller keeps to that */
		pfree(puller);
		reliq_nats_remember_message(st, "consumer already has a puller on this connection");
		return NULL;
	}
	by_consumer->puller = puller;
	by_consumer->held_until = 0;
	puller->id = inbox->next_id++;
	by_id = hash_search(inbox->by_id, &puller->id, HASH_ENTER, NULL);
	by_id->puller = puller;

	puller->next_subject = MemoryContextStrdup(TopMemoryContext,
											   psprintf("$JS.API.CONSUMER.MSG.NEXT.%s.%s",
														stream, consumer));
	puller->current_reply = MemoryContextAllocZero(TopMemoryContext,
												   strlen(inbox->prefix) + 48);
	return puller;
}

/*
 * Stop pulling for this consumer.  Deliveries still queued are given back
 * after delay_ms (see reliq_puller_release_queued); later ones, once the
 * inbox is read, at once.
 */
void
reliq_puller_destroy(ReliqPuller *puller, int64 delay_ms)
{
	PullerByConsumer *entry;

	if (puller == NULL)
		return;
	(void) reliq_puller_release_queued(puller, delay_ms);
	entry = hash_search(puller->inbox->by_consumer, puller->key, HASH_FIND, NULL);
	if (entry != NULL && puller->active &&
		puller->expires_at > GetCurrentTimestamp())
	{
		/* its pull is still out: strays wait for its end (see dispatch) */
		entry->puller = NULL;
		entry->held_until = puller->expires_at;
	}
	else if (entry != NULL)
		hash_search(puller->inbox->by_consumer, puller->key, HASH_REMOVE, NULL);
	hash_search(puller->inbox->by_id, &puller->id, HASH_REMOVE, NULL);
	if (puller->queue)
		pfree(puller->queue);
	pfree(puller->next_subject);
	pfree(puller->current_reply);
	pfree(puller);
}

/*
 * Ask the server for up to batch messages, waiting at most expires_ms for
 * them, with idle heartbeats every heartbeat_ms (0: none; at most half of
 * expires_ms).  Only while connected: cnats would otherwise buffer the
 * request and replay it on reconnect, long after anyone waits for it.
 */
bool
reliq_puller_request(ReliqPuller *puller, int batch, int expires_ms,
					 int heartbeat_ms, ReliqNatsStatus *st)
{
	char		body[160];
	natsStatus	s;
	TimestampTz now;

	Assert(!puller->active && batch > 0);
	if (!reliq_nats_is_connected(puller->inbox->conn))
	{
		reliq_nats_remember_message(st, "not connected to NATS");
		return false;
	}
	if (heartbeat_ms * 2 > expires_ms)
		heartbeat_ms = 0;
	puller->pull_count++;
	sprintf(puller->current_reply, "%s.%u." UINT64_FORMAT,
			puller->inbox->prefix, puller->id, puller->pull_count);
	if (heartbeat_ms > 0)
		snprintf(body, sizeof(body),
				 "{\"batch\":%d,\"expires\":" INT64_FORMAT ",\"idle_heartbeat\":" INT64_FORMAT "}",
				 batch, (int64) expires_ms * 1000000, (int64) heartbeat_ms * 1000000);
	else
		snprintf(body, sizeof(body), "{\"batch\":%d,\"expires\":" INT64_FORMAT "}",
				 batch, (int64) expires_ms * 1000000);
	s = natsConnection_PublishRequestString(puller->inbox->conn->nc,
											puller->next_subject,
											puller->current_reply, body);
	if (s != NATS_OK)
	{
		reliq_nats_remember_error(st, "sending a pull request", s, 0);
		return false;
	}
	now = GetCurrentTimestamp();
	puller->active = true;
	puller->requested = batch;
	puller->received = 0;
	puller->heartbeat_ms = heartbeat_ms;
	puller->end_pending = false;
	puller->end_status = 0;
	puller->end_description[0] = '\0';
	puller->sent_at = now;
	puller->expires_at = now + (TimestampTz) expires_ms * 1000;
	/* The server ends it at expires_ms; allow as much again for the reply. */
	puller->deadline = now + (TimestampTz) expires_ms * 2000 +
		(TimestampTz) reliq_nats_timeout * 1000;
	return true;
}

bool
reliq_puller_active(ReliqPuller *puller)
{
	return puller->active;
}

/*
 * Stop waiting for the outstanding pull (say, after a disconnection: the
 * server may have forgotten it).  Anything it still delivers is taken as
 * a stale delivery by a later batch.
 */
void
reliq_puller_forget_request(ReliqPuller *puller)
{
	puller->active = false;
	puller->end_pending = false;
}

/* Messages received and waiting to be taken. */
int
reliq_puller_queued(ReliqPuller *puller)
{
	return puller->qlen;
}

/*
 * How long (ms) until the server ends our outstanding pull request; 0 if
 * none is out.  A message NAKed before then could be delivered to that
 * request again (nats-server 2.9 does so even once nobody listens).
 */
int64
reliq_puller_request_left_ms(ReliqPuller *puller)
{
	TimestampTz now = GetCurrentTimestamp();

	if (!puller->active || puller->expires_at <= now)
		return 0;
	return (puller->expires_at - now) / 1000 + 1;
}

/*
 * Give back what arrived and was never taken: a NAK for each message
 * (after delay_ms), so the server delivers it again soon instead of after
 * ack_wait.  Returns how many.  (Runs at a worker's exit too: no
 * PostgreSQL memory is allocated.)
 */
int
reliq_puller_release_queued(ReliqPuller *puller, int64 delay_ms)
{
	natsMsg    *m;
	int			released = 0;

	while ((m = dequeue(puller)) != NULL)
	{
		if (reliq_nats_ack(puller->inbox->conn, natsMsg_GetReply(m),
						   RELIQ_NAK, delay_ms, NULL))
			released++;
		natsMsg_Destroy(m);
	}
	return released;
}

/*
 * Has the puller something for its owner to look at: a message, the end of
 * its pull, no pull out, or a pull silent for too long?  (Cheap: no
 * system call.)
 */
bool
reliq_puller_wants_turn(ReliqPuller *puller, TimestampTz now)
{
	TimestampTz heard;

	if (puller->qlen > 0 || puller->end_pending || !puller->active)
		return true;
	if (now > puller->deadline)
		return true;
	heard = Max(puller->last_heard, puller->sent_at);
	return puller->heartbeat_ms > 0 &&
		now - heard > (TimestampTz) puller->heartbeat_ms * 3000 +
		(TimestampTz) reliq_nats_timeout * 1000;
}

/* The status (and its description) that ended the last pull; 0: silence. */
int
reliq_puller_end_status(ReliqPuller *puller, const char **description)
{
	if (description)
		*description = puller->end_description;
	return puller->end_status;
}

static void
copy_message(natsMsg *m, ReliqMessage *msg)
{
	const char **keys = NULL;
	int			nkeys = 0;
	int			len = natsMsg_GetDataLength(m);
	int			i;

	memset(msg, 0, sizeof(*msg));
	msg->subject = pstrdup(natsMsg_GetSubject(m));
	msg->reply = pstrdup(natsMsg_GetReply(m));
	msg->data = palloc(len + 1);
	if (len > 0)
		memcpy(msg->data, natsMsg_GetData(m), len);
	msg->data[len] = '\0';
	msg->data_len = len;

	if (natsMsgHeader_Keys(m, &keys, &nkeys) == NATS_OK && nkeys > 0)
	{
		int			capacity = nkeys;

		msg->header_keys = palloc(sizeof(char *) * capacity);
		msg->header_values = palloc(sizeof(char *) * capacity);
		for (i = 0; i < nkeys; i++)
		{
			const char **values = NULL;
			int			nvalues = 0;
			int			j;

			if (natsMsgHeader_Values(m, keys[i], &values, &nvalues) != NATS_OK)
				continue;
			for (j = 0; j < nvalues; j++)
			{
				if (msg->nheaders == capacity)
				{
					capacity *= 2;
					msg->header_keys = repalloc(msg->header_keys,
												sizeof(char *) * capacity);
					msg->header_values = repalloc(msg->header_values,
												  sizeof(char *) * capacity);
				}
				msg->header_keys[msg->nheaders] = pstrdup(keys[i]);
				msg->header_values[msg->nheaders] = pstrdup(values[j]);
				msg->nheaders++;
			}
			free((void *) values);
		}
		free((void *) keys);
	}
}

/*
 * The next event of this puller, without waiting (reliq_inbox_pump reads
 * the inbox): a message taken from its queue, the end of its outstanding
 * pull, or nothing.  A pull that heard nothing, not even a heartbeat, for
 * three heartbeats, or nothing at all by its deadline, has ended too: a
 * missing consumer or stream is silent.
 */
ReliqPullEvent
reliq_puller_next(ReliqPuller *puller, ReliqMessage *msg)
{
	natsMsg    *m = dequeue(puller);

	if (m != NULL)
	{
		copy_message(m, msg);
		natsMsg_Destroy(m);
		if (!reliq_parse_ack_subject(msg->reply, msg))
		{
			/* Not acked: the server redelivers it after ack_wait. */
			ereport(WARNING,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("ignoring a JetStream message with an unexpected reply subject \"%s\"",
							msg->reply)));
			return RELIQ_PULL_NOTHING;
		}
		return RELIQ_PULL_MESSAGE;
	}
	if (puller->end_pending)
	{
		puller->end_pending = false;
		return RELIQ_PULL_ENDED;
	}
	if (puller->active)
	{
		TimestampTz now = GetCurrentTimestamp();
		TimestampTz heard = Max(puller->last_heard, puller->sent_at);

		if (now > puller->deadline ||
			(puller->heartbeat_ms > 0 &&
			 now - heard > (TimestampTz) puller->heartbeat_ms * 3000 +
			 (TimestampTz) reliq_nats_timeout * 1000))
		{
			puller->active = false;
			puller->end_status = 0;
			strlcpy(puller->end_description, "no answer to the pull request",
					sizeof(puller->end_description));
			return RELIQ_PULL_ENDED;
		}
	}
	return RELIQ_PULL_NOTHING;
}
