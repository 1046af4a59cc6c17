/*-------------------------------------------------------------------------
 *
 * metrics.c
 *	  reliq's figures in the Prometheus text exposition format (version
 *	  0.0.4), built from shared memory alone, so reliq.metrics() and the
 *	  HTTP endpoint (metrics_server.c) say the same and never touch NATS or
 *	  a table.
 *
 * Every family has HELP and TYPE lines; counters end in _total; every
 * sample of a subscription's family carries the label subscription.
 * Counters restart from zero after reliq.subscription_stats_reset() or a
 * server restart, which Prometheus treats as a counter reset.
 *
 * Instance-level series: reliq_build_info{version} (always 1),
 * reliq_nats_connected{worker} per running worker (its slot number), and
 * reliq_dead_letter_backlog{subscription}, the rows of reliq.dead_letter,
 * and the reliq_trace_* families of the span ring and its exporter.
 * The HTTP endpoint has no database connection, so the backlog is counted
 * by the monitor, which has one and is in no hurry: at most once per
 * reliq.refresh_interval, in the transaction in which it reads the
 * subscriptions, into the subscription's statistics entry
 * (reliq_metrics_count_dead_letters).  A count of the table itself,
 * rather than a counter kept by whoever inserts or deletes, stays right
 * through rollbacks, replays, discards, a DELETE by hand and restarts.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "metrics.h"
#include "reliq.h"
#include "shmem.h"
#include "trace.h"
#include "version.h"

PG_FUNCTION_INFO_V1(reliq_metrics);

/* A label value, escaped as the exposition format wants. */
static void
append_label(StringInfo buf, const char *value)
{
	const char *p;

	for (p = value; *p; p++)
	{
		if (*p == '\\' || *p == '"')
			appendStringInfoChar(buf, '\\');
		if (*p == '\n')
			appendStringInfoString(buf, "\\n");
		else
			appendStringInfoChar(buf, *p);
	}
}

static void
family(StringInfo buf, const char *name, const char *type, const char *help)
{
	appendStringInfo(buf, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void
sample_prefix(StringInfo buf, const char *name, const ReliqStatsSnapshot *s)
{
	appendStringInfo(buf, "%s{subscription=\"", name);
	append_label(buf, s->subscription_name);
	appendStringInfoChar(buf, '"');
}

static void
gauge_sample(StringInfo buf, const char *name, const ReliqStatsSnapshot *s,
			 double value)
{
	sample_prefix(buf, name, s);
	appendStringInfo(buf, "} %.15g\n", value);
}

static void
histogram_samples(StringInfo buf, const char *name, const char *help,
				  const ReliqStatsSnapshot *snaps, int n, bool latency)
{
	int			i;
	int			b;

	family(buf, name, "histogram", help);
	for (i = 0; i < n; i++)
	{
		const ReliqStatsSnapshot *s = &snaps[i];
		const ReliqHistogramCopy *h = latency ? &s->commit_latency : &s->batch_duration;
		uint64		cumulative = 0;

		for (b = 0; b <= RELIQ_HISTOGRAM_BOUNDS; b++)
		{
			cumulative += h->buckets[b];
			sample_prefix(buf, psprintf("%s_bucket", name), s);
			if (b < RELIQ_HISTOGRAM_BOUNDS)
				appendStringInfo(buf, ",le=\"%g\"} " UINT64_FORMAT "\n",
								 reliq_histogram_bounds[b], cumulative);
			else
				appendStringInfo(buf, ",le=\"+Inf\"} " UINT64_FORMAT "\n",
								 cumulative);
		}
		sample_prefix(buf, psprintf("%s_sum", name), s);
		appendStringInfo(buf, "} %.6f\n",
						 (double) h->sum_us / 1000000.0);
		sample_prefix(buf, psprintf("%s_count", name), s);
		appendStringInfo(buf, "} " UINT64_FORMAT "\n", h->count);
	}
}

static double
unix_seconds(TimestampTz t)
{
	return (double) t / USECS_PER_SEC +
		(double) ((POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY);
}

/* Counters: an uint64 field of the snapshot each. */
typedef struct CounterFamily
{
	const char *name;
	const char *help;
	size_t		offset;
} CounterFamily;

static const CounterFamily counters[] = {
	{"reliq_messages_received_total",
		"Messages received from JetStream, redeliveries included.",
	offsetof(ReliqStatsSnapshot, received)},
	{"reliq_messages_processed_total",
		"Messages applied by the handler and committed.",
	offsetof(ReliqStatsSnapshot, processed)},
	{"reliq_messages_failed_total",
		"Handler failures; each failed delivery counts.",
	offsetof(ReliqStatsSnapshot, failed)},
	{"reliq_messages_retried_total",
		"Failed messages negatively acknowledged for a later delivery.",
	offsetof(ReliqStatsSnapshot, retried)},
	{"reliq_messages_dead_lettered_total",
		"Messages moved to reliq.dead_letter.",
	offsetof(ReliqStatsSnapshot, dead_lettered)},
	{"reliq_messages_duplicate_total",
		"Redeliveries of messages already applied, acknowledged without running the handler.",
	offsetof(ReliqStatsSnapshot, duplicates)},
	{"reliq_batches_total",
		"Batches applied, one transaction each.",
	offsetof(ReliqStatsSnapshot, batches)},
	{"reliq_slow_path_batches_total",
		"Batches that failed as a whole and were redone with one subtransaction per message.",
	offsetof(ReliqStatsSnapshot, slow_path_batches)},
};

/* Gauges: a function gives the value, or false when there is none. */
typedef bool (*GaugeValue) (const ReliqStatsSnapshot *s, double *value);

static bool
g_pending(const ReliqStatsSnapshot *s, double *v)
{
	*v = s->pending;
	return s->have_consumer_info;
}

static bool
g_ack_pending(const ReliqStatsSnapshot *s, double *v)
{
	*v = s->ack_pending;
	return s->have_consumer_info;
}

static bool
g_redelivered(const ReliqStatsSnapshot *s, double *v)
{
	*v = s->redelivered;
	return s->have_consumer_info;
}

static bool
g_max_ack_pending(const ReliqStatsSnapshot *s, double *v)
{
	*v = s->max_ack_pending;
	return s->have_consumer_info;
}

static bool
g_server_contact(const ReliqStatsSnapshot *s, double *v)
{
	*v = unix_seconds(s->consumer_info_at);
	return s->consumer_info_at != 0;
}

static bool
g_workers(const ReliqStatsSnapshot *s, double *v)
{
	*v = s->workers;
	return true;
}

static bool
g_workers_desired(const ReliqStatsSnapshot *s, double *v)
{
	*v = s->enabled ? s->concurrency : 0;
	return true;
}

static bool
g_in_flight(const ReliqStatsSnapshot *s, double *v)
{
	*v = s->in_flight;
	return true;
}

static bool
g_rate(const ReliqStatsSnapshot *s, double *v)
{
	*v = s->rate;
	return true;
}

static bool
g_last_batch(const ReliqStatsSnapshot *s, double *v)
{
	*v = unix_seconds(s->last_batch_at);
	return s->last_batch_at != 0;
}

static bool
g_dead_letter_backlog(const ReliqStatsSnapshot *s, double *v)
{
	*v = s->dead_letter_backlog;
	return s->dead_letter_backlog >= 0;
}

typedef struct GaugeFamily
{
	const char *name;
	const char *help;
	GaugeValue	value;
} GaugeFamily;

static const GaugeFamily gauges[] = {
	{"reliq_consumer_pending",
		"Messages on the server not yet delivered to the consumer, as last reported.", g_pending},
	{"reliq_consumer_ack_pending",
		"Messages delivered and not yet acknowledged, as last reported.", g_ack_pending},
	{"reliq_consumer_redelivered",
		"Messages being delivered again, as last reported.", g_redelivered},
	{"reliq_consumer_max_ack_pending",
		"The consumer's limit of unacknowledged messages.", g_max_ack_pending},
	{"reliq_last_server_contact_timestamp_seconds",
		"When consumer information last came from the server (Unix time).", g_server_contact},
	{"reliq_workers", "Workers running.", g_workers},
	{"reliq_workers_desired",
		"Workers the subscription asks for (its concurrency; 0 while paused).", g_workers_desired},
	{"reliq_in_flight",
		"Messages the workers have received and not yet acknowledged.", g_in_flight},
	{"reliq_messages_per_second",
		"Messages applied per second over the last minute.", g_rate},
	{"reliq_last_batch_timestamp_seconds",
		"When the last batch committed (Unix time).", g_last_batch},
	{"reliq_dead_letter_backlog",
		"Rows in reliq.dead_letter, as counted by the monitor at most reliq.refresh_interval ago.", g_dead_letter_backlog},
};

/*
 * NATS connection of each running worker, by slot number.  A fenced
 * worker holds no connection on purpose (another cluster owns the
 * consumer) and is left out, so that 0 always means trouble.
 */
static void
nats_connected_samples(StringInfo buf)
{
	ReliqWorkerSnapshot *workers;
	int			n = reliq_workers_snapshot(&workers);
	int			i;
	int			last = -1;

	family(buf, "reliq_nats_connected", "gauge",
		   "1 while the worker is connected to NATS, 0 while it is not (fenced workers are left out).");
	/* one row per lane, a worker's rows together: one sample per worker */
	for (i = 0; i < n; i++)
	{
		if (workers[i].state == RELIQ_WORKER_FENCED || workers[i].slot == last)
			continue;
		last = workers[i].slot;
		appendStringInfo(buf, "reliq_nats_connected{worker=\"%d\"} %d\n",
						 workers[i].slot, workers[i].connected ? 1 : 0);
	}
	pfree(workers);
}

/* The span ring and the exporter (trace.c). */
static void
trace_samples(StringInfo buf)
{
	ReliqTraceStats t;

	reliq_trace_stats(&t);
	family(buf, "reliq_trace_spans_recorded_total", "counter",
		   "Spans put in the shared ring for the exporter.");
	appendStringInfo(buf, "reliq_trace_spans_recorded_total " UINT64_FORMAT "\n", t.recorded);
	family(buf, "reliq_trace_spans_exported_total", "counter",
		   "Spans the OTLP endpoint accepted.");
	appendStringInfo(buf, "reliq_trace_spans_exported_total " UINT64_FORMAT "\n", t.exported);
	family(buf, "reliq_trace_spans_dropped_total", "counter",
		   "Spans lost: the ring was full (buffer_full), or their export failed or timed out (export_failed).");
	appendStringInfo(buf, "reliq_trace_spans_dropped_total{reason=\"buffer_full\"} " UINT64_FORMAT "\n",
					 t.dropped_buffer_full);
	appendStringInfo(buf, "reliq_trace_spans_dropped_total{reason=\"export_failed\"} " UINT64_FORMAT "\n",
					 t.dropped_export_failed);
	family(buf, "reliq_trace_export_errors_total", "counter",
		   "Export requests that failed.");
	appendStringInfo(buf, "reliq_trace_export_errors_total " UINT64_FORMAT "\n", t.export_errors);
	family(buf, "reliq_trace_buffered_spans", "gauge",
		   "Spans waiting in the ring.");
	appendStringInfo(buf, "reliq_trace_buffered_spans %d\n", t.buffered);
	if (t.last_export_at != 0)
	{
		family(buf, "reliq_trace_last_export_timestamp_seconds", "gauge",
			   "When an export last succeeded, in seconds since the Unix epoch.");
		appendStringInfo(buf, "reliq_trace_last_export_timestamp_seconds %.3f\n",
						 unix_seconds(t.last_export_at));
	}
}

/* The exposition text, palloc'd in the current memory context. */
char *
reliq_metrics_text(void)
{
	ReliqStatsSnapshot *snaps;
	StringInfoData buf;
	int			n;
	int			f;
	int			i;
	int			k;

	reliq_shmem_require();
	n = reliq_stats_snapshot(&snaps);
	initStringInfo(&buf);

	family(&buf, "reliq_build_info", "gauge",
		   "Always 1; the label version is the version of the loaded reliq library.");
	appendStringInfo(&buf, "reliq_build_info{version=\"%s\"} 1\n", RELIQ_VERSION);
	nats_connected_samples(&buf);
	trace_samples(&buf);

	for (f = 0; f < lengthof(counters); f++)
	{
		family(&buf, counters[f].name, "counter", counters[f].help);
		for (i = 0; i < n; i++)
		{
			sample_prefix(&buf, counters[f].name, &snaps[i]);
			appendStringInfo(&buf, "} " UINT64_FORMAT "\n",
							 *(const uint64 *) ((const char *) &snaps[i] + counters[f].offset));
		}
	}

	for (f = 0; f < lengthof(gauges); f++)
	{
		family(&buf, gauges[f].name, "gauge", gauges[f].help);
		for (i = 0; i < n; i++)
		{
			double		value;

			if (gauges[f].value(&snaps[i], &value))
				gauge_sample(&buf, gauges[f].name, &snaps[i], value);
		}
	}

	family(&buf, "reliq_subscription_state", "gauge",
		   "1 for the subscription's current state, 0 for the others.");
	for (i = 0; i < n; i++)
	{
		/* every state but standby: a standby serves no metrics of workers */
		for (k = 0; k < RELIQ_SUBSCRIPTION_STANDBY; k++)
		{
			sample_prefix(&buf, "reliq_subscription_state", &snaps[i]);
			appendStringInfo(&buf, ",state=\"%s\"} %d\n",
							 reliq_subscription_state_name(k),
							 snaps[i].state == k);
		}
	}

	histogram_samples(&buf, "reliq_batch_duration_seconds",
					  "Duration of a batch, from BEGIN to its acknowledgements.",
					  snaps, n, false);
	histogram_samples(&buf, "reliq_commit_latency_seconds",
					  "Time from the publication of a message to the commit that applied it.",
					  snaps, n, true);
	return buf.data;
}

/*
 * Count the rows of reliq.dead_letter per subscription into the
 * statistics entries (0 for a subscription without any), at most once per
 * reliq.refresh_interval.  Called by the monitor inside a transaction
 * with a snapshot; the monitor connects as the bootstrap superuser, so
 * row-level security hides nothing.  Holds the LWLock in shared mode so
 * that no entry changes hands while it writes, and each entry's spinlock
 * for one store.
 */
void
reliq_metrics_count_dead_letters(void)
{
	static TimestampTz last_count = 0;
	TimestampTz now = GetCurrentTimestamp();
	uint64		nrows;
	uint64		r;
	int			i;

	if (last_count != 0 &&
		!TimestampDifferenceExceeds(last_count, now, reliq_refresh_interval))
		return;
	last_count = now;

	if (SPI_connect() != SPI_OK_CONNECT)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not connect to SPI to count reliq's dead letters")));
	if (SPI_execute("SELECT subscription_id, pg_catalog.count(*)"
					"  FROM reliq.dead_letter GROUP BY subscription_id",
					true, 0) != SPI_OK_SELECT)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not count the rows of reliq.dead_letter")));
	nrows = SPI_processed;

	LWLockAcquire(reliq_shared->lock, LW_SHARED);
	for (i = 0; i < reliq_shared->max_subscriptions; i++)
	{
		ReliqSubscriptionStats *entry = &reliq_shared->stats[i];
		int64		count = 0;

		if (entry->subscription_id == 0)
			continue;
		for (r = 0; r < nrows; r++)
		{
			HeapTuple	tuple = SPI_tuptable->vals[r];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			Datum		id = SPI_getbinval(tuple, desc, 1, &isnull);

			if (!isnull && DatumGetInt64(id) == entry->subscription_id)
			{
				count = DatumGetInt64(SPI_getbinval(tuple, desc, 2, &isnull));
				break;
			}
		}
		SpinLockAcquire(&entry->mutex);
		entry->dead_letter_backlog = count;
		SpinLockRelease(&entry->mutex);
	}
	LWLockRelease(reliq_shared->lock);
	SPI_finish();
}

/* reliq.metrics(): the same text the HTTP endpoint serves. */
Datum
reliq_metrics(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(reliq_metrics_text()));
}
