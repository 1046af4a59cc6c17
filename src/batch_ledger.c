/*-------------------------------------------------------------------------
 *
 * batch_ledger.c
 *	  The bookkeeping statements of a batch (batch.c), run as the worker,
 *	  not as the subscription's owner: is the stream the one recorded, the
 *	  ledger rows of its sequences (the plain first try written as COPY
 *	  writes rows, then INSERT ... ON CONFLICT DO NOTHING RETURNING, which
 *	  tells the duplicates), and the dead letters.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "pg_compat.h"
#include "batch_internal.h"
#include "batch_read.h"
#include "profile.h"
#include "reliq.h"
#include "spi_safe.h"

/* The plain ledger INSERT of a fast path is running (see run_fast_path). */
bool		reliq_ledger_insert_running = false;

/*
 * False when the subscription has been dropped (as this transaction sees
 * it), or the recorded stream incarnation is not ours.
 */
bool
reliq_batch_stream_is_current(ReliqBatchState *state, ReliqBatchResult *result)
{
	int64		recorded;
	bool		exists = reliq_read_stream_identity(state->sub->id, &recorded);

	reliq_profile_lap(RELIQ_STEP_IDENTITY);
	if (!exists)
	{
		result->subscription_gone = true;
		return false;
	}
	return recorded != 0 && recorded == state->stream_created;
}

/*
 * A prune may have deleted a committed ledger row between the snapshot of
 * the ledger INSERT and its conflict check, making a sequence look new.
 * The prune raised the floor in the same transaction, and this statement's
 * snapshot is later than the INSERT's: a "new" sequence at or below the
 * floor seen now was applied before.  Undo our row for it.  (With a new
 * snapshot, batch_read.c: the one the transaction began with is older than
 * the INSERT's, and would see no prune the INSERT did not.)
 */
static void
forget_pruned(ReliqBatchState *state, ReliqMessage *msgs, const int *indexes,
			  int count, bool *fresh)
{
	Datum		args[3];
	Datum	   *seqs;
	int64		floor;
	int			nstale = 0;
	int			i;

	if (!reliq_read_stream_floor(state->sub->id, state->stream_created, &floor))
		return;
	args[0] = Int64GetDatum(state->sub->id);
	args[1] = Int64GetDatum(state->stream_created);

	seqs = palloc(sizeof(Datum) * Max(count, 1));
	for (i = 0; i < count; i++)
	{
		if (fresh[indexes[i]] && msgs[indexes[i]].stream_seq <= floor)
		{
			fresh[indexes[i]] = false;
			seqs[nstale++] = Int64GetDatum(msgs[indexes[i]].stream_seq);
		}
	}
	if (nstale > 0)
	{
		args[2] = PointerGetDatum(construct_array(seqs, nstale, INT8OID, 8,
												  FLOAT8PASSBYVAL,
												  TYPALIGN_DOUBLE));
		reliq_spi_execute_plan("correct reliq._ledger", state->unrecord_plan,
							   args, NULL, false, 0, SPI_OK_DELETE);
	}
	pfree(seqs);
}

/*
 * The plain first try of a batch's ledger rows: those above the
 * acknowledged floor, all fresh, written as COPY writes rows (the heap a
 * page at a time with table_multi_insert, one WAL record per page, then
 * each index entry), not through the executor row by row.  The primary
 * key's unique check is the one an INSERT makes: a sequence recorded
 * already (or twice in the batch) fails with unique_violation, and a
 * concurrent transaction recording it is waited for.  reliq._ledger has
 * no trigger, no constraint but its primary key, and is reliq's own.  The
 * floor is read with a snapshot of its own, as the INSERT's subquery was.
 */
static void
record_plain(ReliqBatchState *state, ReliqMessage *msgs, const int *indexes,
			 int count, bool *fresh)
{
	int64		floor = 0;
	int			n = 0;
	int			i;
	Relation	rel;
	TupleDesc	desc;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot **slots;

	(void) reliq_read_stream_floor(state->sub->id, state->stream_created, &floor);
	rel = table_open(reliq_batch_table_oid(RELIQ_TABLE_LEDGER), RowExclusiveLock);
	/* a copy: slots of it pin nothing in the resource owner */
	desc = CreateTupleDescCopy(RelationGetDescr(rel));
	slots = palloc(sizeof(TupleTableSlot *) * Max(count, 1));
	for (i = 0; i < count; i++)
	{
		TupleTableSlot *slot;

		fresh[indexes[i]] = msgs[indexes[i]].stream_seq > floor;
		if (!fresh[indexes[i]])
			continue;
		slot = MakeSingleTupleTableSlot(desc, &TTSOpsVirtual);
		slot->tts_values[0] = Int64GetDatum(state->sub->id);
		slot->tts_values[1] = Int64GetDatum(state->stream_created);
		slot->tts_values[2] = Int64GetDatum(msgs[indexes[i]].stream_seq);
		memset(slot->tts_isnull, false, sizeof(bool) * desc->natts);
		ExecStoreVirtualTuple(slot);
		slots[n++] = slot;
	}
	if (n > 0)
	{
		estate = CreateExecutorState();
		rri = makeNode(ResultRelInfo);
		InitResultRelInfo(rri, rel, 1, NULL, 0);
		ExecOpenIndices(rri, false);
		reliq_ledger_insert_running = true;
		table_multi_insert(rel, slots, n, GetCurrentCommandId(true), 0, NULL);
		for (i = 0; i < n; i++)
			list_free(reliq_insert_index_tuples(rri, slots[i], estate));
		reliq_ledger_insert_running = false;
		ExecCloseIndices(rri);
		FreeExecutorState(estate);
		CommandCounterIncrement();
	}
	for (i = 0; i < n; i++)
		ExecDropSingleTupleTableSlot(slots[i]);
	pfree(slots);
	FreeTupleDesc(desc);
	table_close(rel, NoLock);
	forget_pruned(state, msgs, indexes, count, fresh);
}

/*
 * Record msgs[i] for every i in indexes; mark fresh[i] for those recorded
 * now.  A sequence present twice in one batch is recorded once: the second
 * copy stays not fresh, a duplicate.  The plain first try (record_plain)
 * fails instead on a sequence recorded before.
 */
void
reliq_batch_record(ReliqBatchState *state, ReliqMessage *msgs,
				   const int *indexes, int count, bool *fresh, bool plain)
{
	Datum	   *seqs;
	Datum		args[3];
	ArrayType  *array;
	uint64		row;
	int			i;

	if (plain)
	{
		record_plain(state, msgs, indexes, count, fresh);
		reliq_profile_lap(RELIQ_STEP_LEDGER);
		return;
	}
	seqs = palloc(sizeof(Datum) * Max(count, 1));
	for (i = 0; i < count; i++)
	{
		seqs[i] = Int64GetDatum(msgs[indexes[i]].stream_seq);
		fresh[indexes[i]] = false;
	}
	array = construct_array(seqs, count, INT8OID, 8, FLOAT8PASSBYVAL,
							TYPALIGN_DOUBLE);
	args[0] = Int64GetDatum(state->sub->id);
	args[1] = Int64GetDatum(state->stream_created);
	args[2] = PointerGetDatum(array);
	reliq_spi_execute_plan("write reliq._ledger", state->ledger_plan,
						   args, NULL, false, 0, SPI_OK_INSERT_RETURNING);

	/*
	 * RETURNING gives the rows in the order of the array, so each returned
	 * sequence is looked for from where the last one was found: one pass
	 * over the batch, not one per row.
	 */
	i = 0;
	for (row = 0; row < SPI_processed; row++)
	{
		bool		isnull;
		int64		seq = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[row],
													  SPI_tuptable->tupdesc,
													  1, &isnull));
		int			tries;

		for (tries = 0; tries < count; tries++, i = (i + 1) % count)
		{
			if (msgs[indexes[i]].stream_seq == seq && !fresh[indexes[i]])
			{
				fresh[indexes[i]] = true;
				break;
			}
		}
	}
	SPI_freetuptable(SPI_tuptable);
	pfree(array);
	forget_pruned(state, msgs, indexes, count, fresh);
	pfree(seqs);
	reliq_profile_lap(RELIQ_STEP_LEDGER);
}

bool
reliq_batch_record_one(ReliqBatchState *state, ReliqMessage *msgs, int index)
{
	bool		fresh = false;
	bool	   *flags = palloc0(sizeof(bool) * (index + 1));

	reliq_batch_record(state, msgs, &index, 1, flags, false);
	fresh = flags[index];
	pfree(flags);
	return fresh;
}

static Datum
nullable_text(const char *s, char *null_flag)
{
	if (s == NULL)
	{
		*null_flag = 'n';
		return (Datum) 0;
	}
	return CStringGetTextDatum(s);
}

void
reliq_batch_dead_letter(ReliqBatchState *state, ReliqMessage *msg)
{
	MemoryContext old = MemoryContextSwitchTo(state->message_cxt);
	ErrorData  *error = msg->error;
	Datum		values[15];
	char		nulls[15];
	bytea	   *data;

	memset(nulls, ' ', sizeof(nulls));
	data = (bytea *) palloc(VARHDRSZ + msg->data_len);
	SET_VARSIZE(data, VARHDRSZ + msg->data_len);
	memcpy(VARDATA(data), msg->data, msg->data_len);

	values[0] = Int64GetDatum(state->sub->id);
	values[1] = CStringGetTextDatum(state->sub->name);
	values[2] = PointerGetDatum(reliq_text_from_wire(msg->stream, strlen(msg->stream)));
	values[3] = PointerGetDatum(reliq_text_from_wire(msg->subject, strlen(msg->subject)));
	values[4] = PointerGetDatum(data);
	values[5] = reliq_message_headers_jsonb(msg);
	values[6] = Int64GetDatum(msg->stream_seq);
	values[7] = Int32GetDatum(msg->delivered);
	values[8] = TimestampTzGetDatum(reliq_unix_ns_to_timestamptz(msg->published_ns));
	values[9] = nullable_text(error ? error->message : NULL, &nulls[9]);
	values[10] = nullable_text(error ? error->detail : NULL, &nulls[10]);
	values[11] = nullable_text(error ? error->context : NULL, &nulls[11]);
	values[12] = nullable_text(error ? unpack_sql_state(error->sqlerrcode) : NULL,
							   &nulls[12]);
	values[13] = nullable_text(reliq_message_header(msg, "traceparent"), &nulls[13]);
	values[14] = nullable_text(error ? reliq_error_kind_name(reliq_error_kind(error->sqlerrcode)) : NULL,
							   &nulls[14]);

	reliq_spi_execute_plan("write reliq.dead_letter", state->dead_letter_plan,
						   values, nulls, false, 0, SPI_OK_INSERT);
	MemoryContextSwitchTo(old);
	MemoryContextReset(state->message_cxt);
}
