/*-------------------------------------------------------------------------
 *
 * order_registry.c
 *	  ordering => 'key' across a subscription's workers.  With concurrency
 *	  above 1 the messages of one key reach several workers (each its own
 *	  process and pull); a worker may apply a message only once every
 *	  older message of its key is finished, wherever it is.  Shared memory
 *	  keeps what that takes:
 *
 * - every message of an ordered subscription received and not finished
 *	 yet, by key, in stream order, with the worker (process) holding it,
 *	 or none: given back (NAKed after a failure, released); it comes back
 *	 from the server and whoever receives it takes it over.  A message is
 *	 finished when applied, dead-lettered or found a duplicate;
 * - pulls in turn: one worker of a subscription at a time has a pull out,
 *	 and hands the turn on only once that pull has ended and all it
 *	 brought is registered.  So the messages are registered in the order
 *	 the server delivered them, which for first deliveries is stream
 *	 order, before any later delivery can be applied anywhere.  A worker
 *	 that was refused the turn is named as waiting (while it keeps asking);
 *	 the turn goes to it next.  The workers still apply in parallel: only pulls take turns.
 *
 * reliq_order_runnable says which of a worker's messages may go now: none
 * of its key's older messages is held by another worker or given back,
 * and those this worker holds go before it in the same group (ordering.c
 * groups by delivery count: rule 1 of apply.c).  With concurrency 1 it is
 * the same rule with one worker.
 *
 * What is never finished: a worker that exits gives back what it held
 * (reliq_order_let_go, from its lanes and at its exit, after the NAKs);
 * one that died is noticed by its process being gone.  Its messages come again from the server after
 * ack_wait.  A message given back and not received again within the
 * subscription's forget_after_ms (longer than its backoff and ack_wait:
 * the stream lost it, or its consumer was made again) is forgotten, so
 * that its key does not wait for ever.
 *
 * Room: reliq.max_ordered_messages messages at once, over all ordered
 * subscriptions.  A turn reserves room for its pull; a worker that finds
 * no room pulls nothing until there is (the lane reports it).
 *
 * Locks: one LWLock, exclusive, for every call; no call waits for
 * anything else while holding it.  reliq_order_generation (an atomic) grows
 * whenever a message is finished or given back: a worker with messages
 * waiting for another's looks again then.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "order_registry.h"
#include "settings.h"

int reliq_max_ordered_messages = 20000;

typedef struct OrderKeyTag
{
	int64  sub;
	uint64 key;
} OrderKeyTag;

/* A key with unfinished messages: a list of nodes in stream order. */
typedef struct OrderKey
{
	OrderKeyTag tag;
	int32       head;
	int32       tail;
} OrderKey;

/* One unfinished message. */
typedef struct OrderNode
{
	int64       seq;
	int32       next;          /* -1: none */
	int         holder;        /* pid; 0: given back */
	TimestampTz given_back_at; /* when holder became 0 */
} OrderNode;

/* A subscription's pull turn. */
typedef struct OrderTurn
{
	int64       sub;
	int         holder;    /* pid with a pull out (or about to), 0: none */
	int         waiting;   /* pid refused the turn, 0: none */
	TimestampTz waited_at; /* when it was last refused */
	int         reserved;  /* room reserved for the holder's pull */
} OrderTurn;

typedef struct OrderShared
{
	LWLock          *lock;
	int              capacity;
	int              nfree;
	int              reserved;
	int32            free_head;
	pg_atomic_uint32 generation;
	OrderNode        nodes[FLEXIBLE_ARRAY_MEMBER];
} OrderShared;

/*
 * A worker refused the turn asks again within milliseconds while it wants
 * it (lane_pull.c); one that has not asked for this long (its lane holds
 * a failing batch, or left) is no longer waiting.
 */
#define RELIQ_TURN_WAIT_EXPIRES_MS 200

static OrderShared *order_shared = NULL;
static HTAB        *order_keys = NULL;
static HTAB        *order_turns = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/*
 * Shared memory
 */

static int
max_turns(void)
{
	return 2 * reliq_max_subscriptions;
}

static Size
shared_size(void)
{
	return add_size(offsetof(OrderShared, nodes),
					mul_size(reliq_max_ordered_messages, sizeof(OrderNode)));
}

static Size
registry_size(void)
{
	Size size = shared_size();

	size = add_size(size, hash_estimate_size(reliq_max_ordered_messages, sizeof(OrderKey)));
	return add_size(size, hash_estimate_size(max_turns(), sizeof(OrderTurn)));
}

static void
registry_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(registry_size());
	RequestNamedLWLockTranche("reliq ordering", 1);
}

static void
registry_shmem_startup(void)
{
	HASHCTL ctl;
	bool    found;
	int     i;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	order_shared = ShmemInitStruct("reliq ordering", shared_size(), &found);
	if (!found)
	{
		order_shared->lock = &(GetNamedLWLockTranche("reliq ordering"))->lock;
		order_shared->capacity = reliq_max_ordered_messages;
		order_shared->nfree = reliq_max_ordered_messages;
		order_shared->reserved = 0;
		pg_atomic_init_u32(&order_shared->generation, 0);
		for (i = 0; i < reliq_max_ordered_messages; i++)
		{
			order_shared->nodes[i].next = i + 1 < reliq_max_ordered_messages ? i + 1 : -1;
			order_shared->nodes[i].holder = 0;
		}
		order_shared->free_head = reliq_max_ordered_messages > 0 ? 0 : -1;
	}
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(OrderKeyTag);
	ctl.entrysize = sizeof(OrderKey);
	order_keys = ShmemInitHash("reliq ordering keys", reliq_max_ordered_messages,
							   reliq_max_ordered_messages, &ctl, HASH_ELEM | HASH_BLOBS);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(int64);
	ctl.entrysize = sizeof(OrderTurn);
	order_turns = ShmemInitHash("reliq ordering turns", max_turns(), max_turns(), &ctl,
								HASH_ELEM | HASH_BLOBS);
	LWLockRelease(AddinShmemInitLock);
}

void
reliq_order_registry_install_hooks(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = registry_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = registry_shmem_startup;
}

/*
 * Nodes and keys (the lock held exclusively)
 */

#define NODE(i) (&order_shared->nodes[(i)])

static bool
process_alive(int pid)
{
	return pid == MyProcPid || kill(pid, 0) == 0 || errno == EPERM;
}

static int32
node_alloc(void)
{
	int32 i = order_shared->free_head;

	if (i < 0)
		return -1;
	order_shared->free_head = NODE(i)->next;
	order_shared->nfree--;
	return i;
}

static void
node_free(int32 i)
{
	NODE(i)->next = order_shared->free_head;
	NODE(i)->holder = 0;
	order_shared->free_head = i;
	order_shared->nfree++;
}

static OrderKey *
find_key(int64 sub, uint64 key)
{
	OrderKeyTag tag;

	memset(&tag, 0, sizeof(tag));
	tag.sub = sub;
	tag.key = key;
	return hash_search(order_keys, &tag, HASH_FIND, NULL);
}

/* Unlink node i (prev: the node before it, -1 if it is the head). */
static void
unlink_node(OrderKey *k, int32 prev, int32 i)
{
	int32 next = NODE(i)->next;

	if (prev < 0)
		k->head = next;
	else
		NODE(prev)->next = next;
	if (k->tail == i)
		k->tail = prev;
	node_free(i);
	if (k->head < 0)
		(void) hash_search(order_keys, &k->tag, HASH_REMOVE, NULL);
}

/* The node of message seq of key k, or -1; *prev the node before it. */
static int32
find_node(const OrderKey *k, int64 seq, int32 *prev)
{
	int32 i;

	*prev = -1;
	for (i = k->head; i >= 0 && NODE(i)->seq < seq; i = NODE(i)->next)
		*prev = i;
	return i >= 0 && NODE(i)->seq == seq ? i : -1;
}

/* The node of msg, or -1 (not ordered, or not registered); its key, *prev. */
static int32
message_node(int64 sub, const ReliqMessage *msg, OrderKey **k, int32 *prev)
{
	if (!msg->ordered || (*k = find_key(sub, msg->order_key)) == NULL)
		return -1;
	return find_node(*k, msg->stream_seq, prev);
}

static void
give_back_node(int32 i)
{
	NODE(i)->holder = 0;
	NODE(i)->given_back_at = GetCurrentTimestamp();
}

static void
bump_generation(void)
{
	pg_atomic_fetch_add_u32(&order_shared->generation, 1);
}

static OrderTurn *
find_turn(int64 sub, bool create)
{
	OrderTurn *t;
	bool       found;

	if (!create)
		return hash_search(order_turns, &sub, HASH_FIND, NULL);
	t = hash_search(order_turns, &sub, HASH_ENTER_NULL, &found);
	if (t == NULL)
	{
		HASH_SEQ_STATUS scan;
		OrderTurn      *idle;

		/* full: forget the turns nobody holds or waits for */
		hash_seq_init(&scan, order_turns);
		while ((idle = hash_seq_search(&scan)) != NULL)
			if (idle->holder == 0 && idle->waiting == 0)
				(void) hash_search(order_turns, &idle->sub, HASH_REMOVE, NULL);
		t = hash_search(order_turns, &sub, HASH_ENTER_NULL, &found);
		if (t == NULL)
			return NULL;
	}
	if (!found)
	{
		t->holder = 0;
		t->waiting = 0;
		t->waited_at = 0;
		t->reserved = 0;
	}
	return t;
}

static void
release_turn(OrderTurn *t)
{
	order_shared->reserved -= t->reserved;
	t->reserved = 0;
	t->holder = 0;
}

/* Give back what this process holds of sub (0: of every subscription). */
static void
let_go_locked(int64 sub)
{
	HASH_SEQ_STATUS scan;
	OrderKey       *k;
	OrderTurn      *t;
	bool            changed = false;

	hash_seq_init(&scan, order_keys);
	while ((k = hash_seq_search(&scan)) != NULL)
	{
		int32 i;

		if (sub != 0 && k->tag.sub != sub)
			continue;
		for (i = k->head; i >= 0; i = NODE(i)->next)
			if (NODE(i)->holder == MyProcPid)
			{
				give_back_node(i);
				changed = true;
			}
	}
	hash_seq_init(&scan, order_turns);
	while ((t = hash_seq_search(&scan)) != NULL)
	{
		if (sub != 0 && t->sub != sub)
			continue;
		if (t->holder == MyProcPid)
			release_turn(t);
		if (t->waiting == MyProcPid)
			t->waiting = 0;
	}
	if (changed)
		bump_generation();
}

/*
 * Pulls in turn
 */

/*
 * May this process pull up to want messages of sub now?  Yes if it holds
 * the turn (its room reserved anew), or takes it: nobody holds it (or its
 * holder is gone), nobody else is waiting for it, and there is room.  A
 * refused caller waits for it; *full says whether for room.
 */
bool
reliq_order_take_turn(int64 sub, int want, bool *full)
{
	OrderTurn *t;
	bool       taken = false;

	*full = false;
	LWLockAcquire(order_shared->lock, LW_EXCLUSIVE);
	t = find_turn(sub, true);
	if (t == NULL)
		*full = true;
	else
	{
		if (t->holder != 0 && t->holder != MyProcPid && !process_alive(t->holder))
			release_turn(t);
		if (t->waiting != 0 &&
			(!process_alive(t->waiting) ||
			 TimestampDifferenceExceeds(t->waited_at, GetCurrentTimestamp(), RELIQ_TURN_WAIT_EXPIRES_MS)))
			t->waiting = 0; /* gone, or no longer asking (held, left) */
		if (t->holder == MyProcPid)
			release_turn(t); /* reserved anew below */
		if (t->holder != 0 || (t->waiting != 0 && t->waiting != MyProcPid))
		{
			if (t->waiting == 0 || t->waiting == MyProcPid)
			{
				t->waiting = MyProcPid;
				t->waited_at = GetCurrentTimestamp();
			}
		}
		else if (order_shared->nfree - order_shared->reserved < want)
			*full = true;
		else
		{
			t->holder = MyProcPid;
			t->reserved = want;
			order_shared->reserved += want;
			if (t->waiting == MyProcPid)
				t->waiting = 0;
			taken = true;
		}
	}
	LWLockRelease(order_shared->lock);
	return taken;
}

/* The caller's pull has ended and all it brought is registered. */
void
reliq_order_end_turn(int64 sub)
{
	OrderTurn *t;

	LWLockAcquire(order_shared->lock, LW_EXCLUSIVE);
	t = find_turn(sub, false);
	if (t != NULL && t->holder == MyProcPid)
		release_turn(t);
	LWLockRelease(order_shared->lock);
}

/*
 * Messages
 */

/*
 * The caller received msgs (ordered ones have their keys set): it holds
 * them now.  One seen before (given back, or held by a worker whose
 * delivery ran out) is taken over; a new one goes in its place in its
 * key's list, from the room its turn reserved.
 */
void
reliq_order_register(int64 sub, const ReliqMessage *msgs, int n)
{
	OrderTurn *t;
	int        unregistered = 0;
	int        i;

	LWLockAcquire(order_shared->lock, LW_EXCLUSIVE);
	t = find_turn(sub, false);
	for (i = 0; i < n; i++)
	{
		OrderKeyTag tag;
		OrderKey   *k;
		bool        found;
		int32       prev;
		int32       node;

		if (!msgs[i].ordered)
			continue;
		memset(&tag, 0, sizeof(tag));
		tag.sub = sub;
		tag.key = msgs[i].order_key;
		k = hash_search(order_keys, &tag, HASH_ENTER_NULL, &found);
		if (k == NULL)
		{
			unregistered++;
			continue;
		}
		if (!found)
			k->head = k->tail = -1;
		if (k->tail >= 0 && NODE(k->tail)->seq < msgs[i].stream_seq)
		{
			prev = k->tail; /* the usual case: newer than all */
			node = -1;
		}
		else
			node = find_node(k, msgs[i].stream_seq, &prev);
		if (node < 0)
		{
			node = node_alloc();
			if (node < 0)
			{
				unregistered++;
				if (k->head < 0)
					(void) hash_search(order_keys, &k->tag, HASH_REMOVE, NULL);
				continue;
			}
			if (t != NULL && t->holder == MyProcPid && t->reserved > 0)
			{
				t->reserved--;
				order_shared->reserved--;
			}
			NODE(node)->seq = msgs[i].stream_seq;
			NODE(node)->next = prev < 0 ? k->head : NODE(prev)->next;
			if (prev < 0)
				k->head = node;
			else
				NODE(prev)->next = node;
			if (NODE(node)->next < 0)
				k->tail = node;
		}
		NODE(node)->holder = MyProcPid;
	}
	LWLockRelease(order_shared->lock);
	if (unregistered > 0)
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("%d messages of an ordered subscription could not be registered", unregistered),
				 errdetail("reliq.max_ordered_messages (%d) messages are registered already; these are applied without waiting for older messages of their keys held by other workers.",
						   reliq_max_ordered_messages),
				 errhint("Increase reliq.max_ordered_messages and restart the server.")));
}

static int
find_seq(const ReliqMessage *msgs, int n, int64 seq)
{
	int lo = 0;
	int hi = n - 1;

	while (lo <= hi)
	{
		int mid = (lo + hi) / 2;

		if (msgs[mid].stream_seq == seq)
			return mid;
		if (msgs[mid].stream_seq < seq)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return -1;
}

/*
 * Which of msgs (sorted by stream sequence, held by the caller) may be
 * tried now: go[i] is set for an untried message that is not ordered, or
 * each of whose key's older unfinished messages is held by the caller and
 * goes now in the same group.  Given-back messages not seen again within
 * forget_after_ms, and what a process now gone held, are dealt with here.
 */
void
reliq_order_runnable(int64 sub, const ReliqMessage *msgs, int n, const bool *tried,
					 const int *group, int64 forget_after_ms, bool *go)
{
	TimestampTz now = GetCurrentTimestamp();
	bool        changed = false;
	int         i;

	LWLockAcquire(order_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < n; i++)
	{
		OrderKey *k;
		int32     prev = -1;
		int32     node;
		bool      blocked = false;

		go[i] = false;
		if (tried[i])
			continue;
		if (!msgs[i].ordered || (k = find_key(sub, msgs[i].order_key)) == NULL)
		{
			go[i] = true;
			continue;
		}
		node = k->head;
		while (node >= 0 && NODE(node)->seq < msgs[i].stream_seq && !blocked)
		{
			OrderNode *o = NODE(node);
			int32      next = o->next;

			if (o->holder != 0 && o->holder != MyProcPid && !process_alive(o->holder))
			{
				give_back_node(node);
				changed = true;
			}
			if (o->holder == 0 &&
				TimestampDifferenceExceeds(o->given_back_at, now, (int) Min(forget_after_ms, PG_INT32_MAX)))
			{
				bool last = k->head == node && next < 0;

				unlink_node(k, prev, node); /* never came back */
				changed = true;
				if (last)
					break; /* k is gone */
				node = next;
				continue;
			}
			if (o->holder != MyProcPid)
				blocked = true;
			else
			{
				int j = find_seq(msgs, n, o->seq);

				blocked = j < 0 || !go[j] || group[j] != group[i];
			}
			prev = node;
			node = next;
		}
		go[i] = !blocked;
	}
	LWLockRelease(order_shared->lock);
	if (changed)
		bump_generation();
}

/*
 * After a batch: a message applied, dead-lettered or found a duplicate is
 * finished; one that failed was NAKed: given back.  Held and deferred
 * ones stay the caller's.
 */
void
reliq_order_settle(int64 sub, const ReliqMessage *msgs, int n)
{
	bool changed = false;
	int  i;

	LWLockAcquire(order_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < n; i++)
	{
		OrderKey *k;
		int32     prev;
		int32     node;

		if ((node = message_node(sub, &msgs[i], &k, &prev)) < 0)
			continue;
		switch (msgs[i].outcome)
		{
			case RELIQ_OUTCOME_PROCESSED:
			case RELIQ_OUTCOME_DUPLICATE:
			case RELIQ_OUTCOME_DEAD_LETTERED:
				unlink_node(k, prev, node);
				changed = true;
				break;
			case RELIQ_OUTCOME_FAILED:
				if (NODE(node)->holder == MyProcPid)
				{
					give_back_node(node);
					changed = true;
				}
				break;
			case RELIQ_OUTCOME_HELD:
			case RELIQ_OUTCOME_DEFERRED:
			case RELIQ_OUTCOME_NONE:
				break;
		}
	}
	LWLockRelease(order_shared->lock);
	if (changed)
		bump_generation();
}

/* The caller gave msgs back to the server (NAK). */
void
reliq_order_give_back(int64 sub, const ReliqMessage *msgs, int n)
{
	int i;

	if (n == 0)
		return;
	LWLockAcquire(order_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < n; i++)
	{
		OrderKey *k;
		int32     prev;
		int32     node;

		if ((node = message_node(sub, &msgs[i], &k, &prev)) >= 0 &&
			NODE(node)->holder == MyProcPid)
			give_back_node(node);
	}
	LWLockRelease(order_shared->lock);
	bump_generation();
}

/*
 * The caller holds nothing of sub any more, nor its turn (sub 0: of any
 * subscription; a pool worker's exit, once it has given back what it
 * held).
 */
void
reliq_order_let_go(int64 sub)
{
	if (order_shared == NULL)
		return;
	LWLockAcquire(order_shared->lock, LW_EXCLUSIVE);
	let_go_locked(sub);
	LWLockRelease(order_shared->lock);
}

/* Grows whenever a message is finished or given back. */
uint32
reliq_order_generation(void)
{
	return pg_atomic_read_u32(&order_shared->generation);
}
