/*-------------------------------------------------------------------------
 *
 * metrics.c
 *	  reliq's figures in the Prometheus text exposition format (version
 *	  0.0.4), built from shared memory alone, so reliq.metrics() and the
 *	  HTTP endpoint (metrics_server.c) say the same and never touch NATS or
 *	  a table.
 *
 * Every family has HELP and TYPE lines; counters end in _total; every
 * sample carries the label subscription.  Counters restart from zero after
 * reliq.subscription_stats_reset() or a server restart, which Prometheus
 * treats as a counter reset.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "metrics.h"
#include "reliq.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(reliq_metrics);

static const char *const subscription_states[] = {
	"running", "paused", "stopped", "failing", "backing_off", "disconnected",
	"connecting"
};

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
counter_samples(StringInfo buf, const char *name, const char *help,
				const ReliqStatsSnapshot *snaps, int n, size_t offset)
{
	int			i;

	family(buf, name, "counter", help);
	for (i = 0; i < n; i++)
	{
		sample_prefix(buf, name, &snaps[i]);
		appendStringInfo(buf, "} " UINT64_FORMAT "\n",
						 *(const uint64 *) ((const char *) &snaps[i] + offset));
	}
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
		const uint64 *buckets = latency ? s->latency_hist : s->batch_hist;
		uint64		cumulative = 0;

		for (b = 0; b <= RELIQ_HISTOGRAM_BOUNDS; b++)
		{
			cumulative += buckets[b];
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
						 (double) (latency ? s->latency_sum_us : s->batch_sum_us) / 1000000.0);
		sample_prefix(buf, psprintf("%s_count", name), s);
		appendStringInfo(buf, "} " UINT64_FORMAT "\n",
						 latency ? s->latency_count : s->batch_count);
	}
}

static double
unix_seconds(TimestampTz t)
{
	return (double) t / USECS_PER_SEC +
		(double) ((POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY);
}

/* The exposition text, palloc'd in the current memory context. */
char *
reliq_metrics_text(void)
{
	ReliqStatsSnapshot *snaps;
	StringInfoData buf;
	int			n;
	int			i;
	int			k;

	reliq_shmem_require();
	n = reliq_stats_snapshot(&snaps);
	initStringInfo(&buf);

	counter_samples(&buf, "reliq_messages_received_total",
					"Messages received from JetStream, redeliveries included.",
					snaps, n, offsetof(ReliqStatsSnapshot, received));
	counter_samples(&buf, "reliq_messages_processed_total",
					"Messages applied by the handler and committed.",
					snaps, n, offsetof(ReliqStatsSnapshot, processed));
	counter_samples(&buf, "reliq_messages_failed_total",
					"Handler failures; each failed delivery counts.",
					snaps, n, offsetof(ReliqStatsSnapshot, failed));
	counter_samples(&buf, "reliq_messages_retried_total",
					"Failed messages negatively acknowledged for a later delivery.",
					snaps, n, offsetof(ReliqStatsSnapshot, retried));
	counter_samples(&buf, "reliq_messages_dead_lettered_total",
					"Messages moved to reliq.dead_letter.",
					snaps, n, offsetof(ReliqStatsSnapshot, dead_lettered));
	counter_samples(&buf, "reliq_messages_duplicate_total",
					"Redeliveries of messages already applied, acknowledged without running the handler.",
					snaps, n, offsetof(ReliqStatsSnapshot, duplicates));
	counter_samples(&buf, "reliq_batches_total",
					"Batches applied, one transaction each.",
					snaps, n, offsetof(ReliqStatsSnapshot, batches));

	family(&buf, "reliq_consumer_pending", "gauge",
		   "Messages on the server not yet delivered to the consumer, as last reported.");
	for (i = 0; i < n; i++)
		if (snaps[i].have_consumer_info)
			gauge_sample(&buf, "reliq_consumer_pending", &snaps[i], snaps[i].pending);
	family(&buf, "reliq_consumer_ack_pending", "gauge",
		   "Messages delivered and not yet acknowledged, as last reported.");
	for (i = 0; i < n; i++)
		if (snaps[i].have_consumer_info)
			gauge_sample(&buf, "reliq_consumer_ack_pending", &snaps[i], snaps[i].ack_pending);
	family(&buf, "reliq_consumer_redelivered", "gauge",
		   "Messages being delivered again, as last reported.");
	for (i = 0; i < n; i++)
		if (snaps[i].have_consumer_info)
			gauge_sample(&buf, "reliq_consumer_redelivered", &snaps[i], snaps[i].redelivered);
	family(&buf, "reliq_consumer_max_ack_pending", "gauge",
		   "The consumer's limit of unacknowledged messages.");
	for (i = 0; i < n; i++)
		if (snaps[i].have_consumer_info)
			gauge_sample(&buf, "reliq_consumer_max_ack_pending", &snaps[i], snaps[i].max_ack_pending);
	family(&buf, "reliq_last_server_contact_timestamp_seconds", "gauge",
		   "When consumer information last came from the server (Unix time).");
	for (i = 0; i < n; i++)
		if (snaps[i].consumer_info_at != 0)
			gauge_sample(&buf, "reliq_last_server_contact_timestamp_seconds", &snaps[i],
						 unix_seconds(snaps[i].consumer_info_at));

	family(&buf, "reliq_workers", "gauge", "Workers running.");
	for (i = 0; i < n; i++)
		gauge_sample(&buf, "reliq_workers", &snaps[i], snaps[i].workers);
	family(&buf, "reliq_workers_desired", "gauge",
		   "Workers the subscription asks for (its concurrency; 0 while paused).");
	for (i = 0; i < n; i++)
		gauge_sample(&buf, "reliq_workers_desired", &snaps[i],
					 snaps[i].enabled ? snaps[i].concurrency : 0);
	family(&buf, "reliq_in_flight", "gauge",
		   "Messages the workers have received and not yet acknowledged.");
	for (i = 0; i < n; i++)
		gauge_sample(&buf, "reliq_in_flight", &snaps[i], snaps[i].in_flight);
	family(&buf, "reliq_messages_per_second", "gauge",
		   "Messages applied per second over the last minute.");
	for (i = 0; i < n; i++)
		gauge_sample(&buf, "reliq_messages_per_second", &snaps[i], snaps[i].rate);
	family(&buf, "reliq_last_batch_timestamp_seconds", "gauge",
		   "When the last batch committed (Unix time).");
	for (i = 0; i < n; i++)
		if (snaps[i].last_batch_at != 0)
			gauge_sample(&buf, "reliq_last_batch_timestamp_seconds", &snaps[i],
						 unix_seconds(snaps[i].last_batch_at));

	family(&buf, "reliq_subscription_state", "gauge",
		   "1 for the subscription's current state, 0 for the others.");
	for (i = 0; i < n; i++)
	{
		const char *state = snaps[i].state ? snaps[i].state : "stopped";

		for (k = 0; k < lengthof(subscription_states); k++)
		{
			sample_prefix(&buf, "reliq_subscription_state", &snaps[i]);
			appendStringInfo(&buf, ",state=\"%s\"} %d\n", subscription_states[k],
							 strcmp(state, subscription_states[k]) == 0);
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

/* reliq.metrics(): the same text the HTTP endpoint serves. */
Datum
reliq_metrics(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(reliq_metrics_text()));
}
