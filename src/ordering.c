/*-------------------------------------------------------------------------
 *
 * ordering.c
 *	  ordering => 'key': the messages of one key are applied in stream
 *	  order, through failures and retries, while other keys flow.
 *
 * A message's order key is a subject token ('$subject[N]'), a header
 * ('$header.Name'), or the upsert key ('key', whose columns then come
 * from the subject or headers by the subscription's columns setting);
 * only the key's 64-bit hash is kept (two keys of one hash merely wait
 * for each other).  A message without one (a subject too short, no such
 * header) is not ordered.
 *
 * Every worker of the subscription (its lanes: one per worker, as many as
 * its concurrency) registers what it receives in the shared registry
 * (order_registry.c: pulls in turn, so that registering follows delivery
 * order) and applies a message only once every older message of its key
 * is finished, wherever that message is.  Unfinished: held by a worker
 * (received, not applied yet: in its batch, held after a transient error,
 * or deferred), or given back (NAKed after a failure; it comes back after
 * its backoff, to whichever worker pulls then).  Finished: applied,
 * dead-lettered or found a duplicate.
 *
 * A lane keeps its deferred messages: of a key an older unfinished
 * message holds back, received but not tried; kept alive with in-progress
 * acks every ack_wait / 2, so that they are neither redelivered nor
 * counted as deliveries.  The consumer's max_ack_pending bounds them
 * (redeliveries are served before that limit, so a blocker always comes
 * back).
 *
 * reliq_ordering_apply takes the deferred messages with what was just
 * collected, in stream order, and applies in rounds what nothing holds
 * back; each round's batches (rule 1 of apply.c: first deliveries, first
 * redeliveries, later ones alone) may free keys for the next round.
 * Within a batch, batch.c's slow path does not try a message whose key
 * failed earlier in the batch (RELIQ_OUTCOME_DEFERRED).  What is left
 * waits in deferred, and is looked at again whenever the registry
 * changes.  reliq_ordering_note, after every batch (probes of a held
 * batch too), tells the registry what became of each message.
 *
 * When the lane forgets its consumer or goes, it gives back to the
 * registry all it held: the messages come again from the server, in
 * their order, and whoever receives them takes them over.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "order_registry.h"
#include "ordering.h"
#include "subject.h"
#include "worker_internal.h"

/*
 * The subscription's setting
 */

static bool
parse_part(const char *expr, ReliqOrderPart *part)
{
	int  token;
	char end;

	memset(part, 0, sizeof(*part));
	if (sscanf(expr, "$subject[%d%c", &token, &end) == 2 && end == ']' &&
		token > 0 && strchr(expr, ']')[1] == '\0')
	{
		part->token = token;
		return true;
	}
	if (strncmp(expr, "$header.", 8) == 0 && expr[8] != '\0')
	{
		part->header = true;
		part->name = pstrdup(expr + 8);
		return true;
	}
	return false;
}

/* The expression of column name in the columns setting, or NULL. */
static char *
mapped_expression(const ReliqSubscription *sub, const char *name)
{
	Jsonb      *columns;
	JsonbValue  key;
	JsonbValue *v;

	if (sub->columns == NULL)
		return NULL;
	columns = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(sub->columns)));
	key.type = jbvString;
	key.val.string.val = (char *) name;
	key.val.string.len = strlen(name);
	v = findJsonbValueFromContainer(&columns->root, JB_FOBJECT, &key);
	if (v == NULL || v->type != jbvString)
		return NULL;
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/*
 * Resolve sub->ordering into sub->order (in the current memory context).
 * The SQL functions check the setting; a setting that no longer resolves
 * (a columns setting changed by hand) is an error of the subscription.
 */
void
reliq_ordering_resolve(ReliqSubscription *sub)
{
	int i;

	sub->norder = 0;
	sub->order = NULL;
	if (sub->ordering == NULL || strcmp(sub->ordering, "none") == 0)
		return;
	if (strcmp(sub->ordering, "key") != 0)
	{
		sub->order = palloc(sizeof(ReliqOrderPart));
		if (!parse_part(sub->ordering, sub->order))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid ordering \"%s\" of subscription \"%s\"",
							sub->ordering, sub->name),
					 errhint("Set ordering => 'none', 'key', '$subject[N]' or '$header.Name' with reliq.alter_subscription.")));
		sub->norder = 1;
		return;
	}
	sub->order = palloc(sizeof(ReliqOrderPart) * Max(sub->nkey, 1));
	for (i = 0; i < sub->nkey; i++)
	{
		char *expr = mapped_expression(sub, sub->key[i]);

		if (expr == NULL || !parse_part(expr, &sub->order[i]))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("subscription \"%s\" is ordered by its key, but key column \"%s\" is not taken from the subject or a header",
							sub->name, sub->key[i]),
					 errhint("Map the column in columns (\"%s\": \"$subject[N]\" or \"$header.Name\"), or set another ordering.",
							 sub->key[i])));
	}
	sub->norder = sub->nkey;
}

/*
 * A message's order key
 */

static bool
order_key(const ReliqSubscription *sub, const ReliqMessage *msg, uint64 *key)
{
	uint64 h = 0;
	int    i;

	for (i = 0; i < sub->norder; i++)
	{
		const ReliqOrderPart *part = &sub->order[i];
		const char           *value;
		int                   len;

		if (part->header)
		{
			value = reliq_message_header(msg, part->name);
			if (value == NULL)
				return false;
			len = strlen(value);
		}
		else if (msg->subject == NULL ||
				 !reliq_subject_token(msg->subject, part->token, &value, &len))
			return false;
		h = hash_combine64(h, hash_bytes_extended((const unsigned char *) value, len, i));
	}
	*key = h;
	return true;
}

void
reliq_ordering_set_keys(const ReliqSubscription *sub, ReliqMessage *msgs, int n)
{
	int i;

	for (i = 0; i < n; i++)
		msgs[i].ordered = sub->norder > 0 && order_key(sub, &msgs[i], &msgs[i].order_key);
}

/*
 * The lane's keys and deferred messages
 */

/* Long enough for a given-back message to have come back, were it to. */
static int64
forget_after_ms(const ReliqSubscription *sub)
{
	int64 backoff = sub->nbackoff > 0 ? sub->backoff_ms[sub->nbackoff - 1] : 0;

	return 2 * sub->ack_wait_ms + backoff + 60000;
}

/*
 * Which of msgs (sorted by stream sequence) may be tried now, in the
 * groups of rule 1 (first deliveries, first redeliveries, later ones):
 * see reliq_order_runnable.
 */
static void
runnable(Lane *l, const ReliqMessage *msgs, int n, const bool *tried, bool *go)
{
	int *group = palloc(sizeof(int) * Max(n, 1));
	int  i;

	for (i = 0; i < n; i++)
		group[i] = Min(Max(msgs[i].delivered, 1), 3);
	reliq_order_runnable(l->sub->id, msgs, n, tried, group, forget_after_ms(l->sub), go);
	pfree(group);
}

static int
compare_seq(const void *a, const void *b)
{
	int64 x = ((const ReliqMessage *) a)->stream_seq;
	int64 y = ((const ReliqMessage *) b)->stream_seq;

	return x < y ? -1 : x > y;
}

/*
 * The lane received msgs: their keys, and the registry knows the lane
 * holds them.  Before anything else is pulled (pulls in turn).
 */
void
reliq_ordering_received(Lane *l, ReliqMessage *msgs, int n)
{
	if (n == 0)
		return;
	reliq_ordering_set_keys(l->sub, msgs, n);
	reliq_order_register(l->sub->id, msgs, n);
	l->order_registered = true;
}

/* Add copies of the messages to the lane's deferred ones. */
static void
defer(Lane *l, const ReliqMessage *msgs, int n)
{
	MemoryContext old;
	int           i;

	if (n == 0)
		return;
	if (l->deferred_cxt == NULL)
		l->deferred_cxt = AllocSetContextCreate(TopMemoryContext, "reliq deferred messages",
												ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(l->deferred_cxt);
	if (l->ndeferred + n > l->maxdeferred)
	{
		int max = Max(2 * l->maxdeferred, l->ndeferred + n);

		l->deferred = l->deferred ? repalloc(l->deferred, sizeof(ReliqMessage) * max) : palloc(sizeof(ReliqMessage) * max);
		l->maxdeferred = max;
	}
	for (i = 0; i < n; i++)
		reliq_message_copy(&l->deferred[l->ndeferred++], &msgs[i]);
	MemoryContextSwitchTo(old);
	if (l->next_deferred_progress == 0)
		l->next_deferred_progress = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
																Max(l->sub->ack_wait_ms / 2, 1));
}

/* Take the deferred messages out of the lane; *cxt holds them. */
static ReliqMessage *
take_deferred(Lane *l, int *n, MemoryContext *cxt)
{
	ReliqMessage *msgs = l->deferred;

	*n = l->ndeferred;
	*cxt = l->deferred_cxt;
	l->deferred = NULL;
	l->ndeferred = 0;
	l->maxdeferred = 0;
	l->deferred_cxt = NULL;
	l->next_deferred_progress = 0;
	l->deferred_ready = false;
	return msgs;
}

/* Drop the deferred messages (given back, or to come again). */
static void
drop_deferred(Lane *l)
{
	MemoryContext cxt;
	int           n;

	(void) take_deferred(l, &n, &cxt);
	if (cxt)
		MemoryContextDelete(cxt);
}

/*
 * Forget deferred messages and give back to the registry all the lane
 * held (the consumer was left or made again, or the lane goes): the
 * messages come again from the server.
 */
void
reliq_ordering_forget(Lane *l)
{
	drop_deferred(l);
	if (l->order_registered && l->sub != NULL)
		reliq_order_let_go(l->sub->id);
	l->order_registered = false;
	l->order_turn = false;
}

/* Give the deferred messages back (NAK after delay_ms); how many. */
int
reliq_ordering_release(Lane *l, int64 delay_ms)
{
	int released = reliq_ack_release(l->pool->conn, l->deferred, l->ndeferred, delay_ms);

	if (l->ndeferred > 0)
		reliq_order_give_back(l->sub->id, l->deferred, l->ndeferred);
	drop_deferred(l);
	return released;
}

/* Keep the deferred messages alive on the server when it is time. */
void
reliq_ordering_keep_alive(Lane *l)
{
	if (l->ndeferred == 0 || GetCurrentTimestamp() < l->next_deferred_progress ||
		!reliq_nats_is_connected(l->pool->conn))
		return;
	reliq_ack_in_progress(l->pool->conn, l->deferred, l->ndeferred);
	l->next_deferred_progress = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															Max(l->sub->ack_wait_ms / 2, 1));
}

/*
 * Is a deferred message free to go (what held it back was finished
 * meanwhile, here or in another worker)?  Looked at again only once the
 * registry has changed.
 */
bool
reliq_ordering_ready(Lane *l)
{
	uint32 generation = reliq_order_generation();
	bool  *tried;
	bool  *go;
	bool   ready = false;
	int    i;

	if (l->ndeferred == 0 || generation == l->order_generation)
		return false;
	l->order_generation = generation;
	qsort(l->deferred, l->ndeferred, sizeof(ReliqMessage), compare_seq);
	tried = palloc0(sizeof(bool) * l->ndeferred);
	go = palloc(sizeof(bool) * l->ndeferred);
	runnable(l, l->deferred, l->ndeferred, tried, go);
	for (i = 0; i < l->ndeferred && !ready; i++)
		ready = go[i];
	pfree(go);
	pfree(tried);
	return ready;
}

/* Has the registry changed since the lane last looked? */
bool
reliq_ordering_changed(Lane *l)
{
	return l->ndeferred > 0 && reliq_order_generation() != l->order_generation;
}

/*
 * After a batch (apply.c): the registry learns what became of each
 * message; the lane keeps what was deferred.
 */
void
reliq_ordering_note(Lane *l, const ReliqMessage *msgs, int n)
{
	int i;

	reliq_order_settle(l->sub->id, msgs, n);
	for (i = 0; i < n; i++)
		if (msgs[i].outcome == RELIQ_OUTCOME_DEFERRED)
			defer(l, &msgs[i], 1);
}

/*
 * The messages to consider: the deferred ones and the new ones, in stream
 * order; a deferred message delivered again (its in-progress acks came
 * too late) counts once, as the newer delivery.
 */
static ReliqMessage *
merge(ReliqMessage *deferred, int ndeferred, ReliqMessage *msgs, int n,
	  int *count)
{
	ReliqMessage *all = palloc(sizeof(ReliqMessage) * Max(ndeferred + n, 1));
	int           k = 0;
	int           i;

	memcpy(all, msgs, sizeof(ReliqMessage) * n);
	for (i = 0; i < n; i++)
		all[i].counted = false;
	k = n;
	for (i = 0; i < ndeferred; i++)
	{
		int  j;
		bool again = false;

		for (j = 0; j < n && !again; j++)
			again = msgs[j].stream_seq == deferred[i].stream_seq;
		if (!again)
			all[k++] = deferred[i];
	}
	qsort(all, k, sizeof(ReliqMessage), compare_seq);
	*count = k;
	return all;
}

/*
 * One round: apply what is free to go, by rule 1's groups; a key's
 * messages go in one round only while they are of one group.
 */
static ReliqApplyVerdict
apply_round(Lane *l, ReliqMessage *all, int n, bool *tried, int *ntried)
{
	ReliqMessage     *group = palloc(sizeof(ReliqMessage) * Max(n, 1));
	int              *where = palloc(sizeof(int) * Max(n, 1));
	bool             *go = palloc0(sizeof(bool) * Max(n, 1));
	ReliqApplyVerdict verdict = RELIQ_APPLY_DONE;
	int               pass;
	int               i;

	runnable(l, all, n, tried, go);

	/* first deliveries, then first redeliveries, then each later one alone */
	for (pass = 1; pass <= 3 && verdict == RELIQ_APPLY_DONE && reliq_lane_attached(l); pass++)
	{
		int ngroup = 0;
		int j;

		for (i = 0; i < n; i++)
		{
			int d = Max(all[i].delivered, 1);

			if (!go[i] || (pass < 3 ? d != pass : d < 3))
				continue;
			where[ngroup] = i;
			group[ngroup++] = all[i];
			tried[i] = true;
			(*ntried)++;
			if (pass == 3)
				break;
		}
		if (ngroup == 0)
			continue;
		if (pass == 3)
			l->pool->applying_alone = group[0].stream_seq;
		verdict = reliq_apply_batch(l, group, ngroup);
		l->pool->applying_alone = 0;
		for (j = 0; j < ngroup; j++)
			all[where[j]].counted = true; /* as reliq_apply_batch did */
		if (pass == 3)
		{
			/* the next one alone, if any: go round this pass again */
			for (i = 0; i < n; i++)
				if (go[i] && !tried[i] && Max(all[i].delivered, 1) >= 3)
				{
					pass--;
					break;
				}
		}
	}
	pfree(go);
	pfree(where);
	pfree(group);
	return verdict;
}

/*
 * Apply what a lane collected (n may be 0: deferred messages whose key is
 * free now), keeping each key's stream order.
 */
ReliqApplyVerdict
reliq_ordering_apply(Lane *l, ReliqMessage *msgs, int n)
{
	Pool             *p = l->pool;
	MemoryContext     deferred_cxt;
	int               ndeferred;
	ReliqMessage     *deferred = take_deferred(l, &ndeferred, &deferred_cxt);
	ReliqMessage     *all;
	bool             *tried;
	int               ntried = 0;
	int               count;
	ReliqApplyVerdict verdict = RELIQ_APPLY_DONE;
	int               i;

	l->order_generation = reliq_order_generation(); /* see ready */
	all = merge(deferred, ndeferred, msgs, n, &count);
	tried = palloc0(sizeof(bool) * Max(count, 1));
	p->applying_lane = l;
	p->applying = all;
	p->napplying = count;

	/* rounds, while a round applies something and unblocks keys */
	while (verdict == RELIQ_APPLY_DONE && ntried < count && reliq_lane_attached(l))
	{
		int before = ntried;

		verdict = apply_round(l, all, count, tried, &ntried);
		if (ntried == before)
			break;
	}

	/* the rest waits for its key, or goes back if the lane cannot go on */
	for (i = 0; i < count; i++)
	{
		if (tried[i])
			continue;
		if (verdict == RELIQ_APPLY_DONE || verdict == RELIQ_APPLY_HOLD)
			defer(l, &all[i], 1);
		else
		{
			if (p->conn)
				(void) reliq_nats_ack(p->conn, all[i].reply, RELIQ_NAK, 0, NULL);
			reliq_order_give_back(l->sub->id, &all[i], 1);
		}
	}
	p->applying_lane = NULL;
	p->applying = NULL;
	p->napplying = 0;
	pfree(tried);
	pfree(all);
	if (deferred_cxt)
		MemoryContextDelete(deferred_cxt);
	return verdict;
}
