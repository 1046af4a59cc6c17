/*-------------------------------------------------------------------------
 *
 * stats_math.c
 *	  The arithmetic of a subscription's statistics: latency histograms,
 *	  nearest-rank percentiles of recent samples, the rate over the last
 *	  minute and whether lag is growing.
 *
 * Nothing here takes a lock: shmem.c holds whatever the structure needs
 * (histograms are atomics and need none) and copies rings out before the
 * percentiles are computed.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/timestamp.h"

#include "stats_math.h"

/* Upper bounds of the latency histogram buckets, in seconds. */
const double reliq_histogram_bounds[RELIQ_HISTOGRAM_BOUNDS] =
{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

static void
zero_atomic(pg_atomic_uint64 *value, bool in_use)
{
	if (in_use)
		pg_atomic_write_u64(value, 0);
	else
		pg_atomic_init_u64(value, 0);
}

static void
zero_histogram(ReliqHistogram *histogram, bool in_use)
{
	int			i;

	for (i = 0; i <= RELIQ_HISTOGRAM_BOUNDS; i++)
		zero_atomic(&histogram->buckets[i], in_use);
	zero_atomic(&histogram->count, in_use);
	zero_atomic(&histogram->sum_us, in_use);
}

/* Before any concurrent use (shared memory initialisation). */
void
reliq_histogram_init(ReliqHistogram *histogram)
{
	zero_histogram(histogram, false);
}

/* Zero a histogram that workers may be adding to (init is for before use). */
void
reliq_histogram_reset(ReliqHistogram *histogram)
{
	zero_histogram(histogram, true);
}

void
reliq_histogram_observe(ReliqHistogram *histogram, int64 value_us)
{
	int			i = 0;

	while (i < RELIQ_HISTOGRAM_BOUNDS &&
		   (double) value_us > reliq_histogram_bounds[i] * 1000000.0)
		i++;
	pg_atomic_fetch_add_u64(&histogram->buckets[i], 1);
	pg_atomic_fetch_add_u64(&histogram->count, 1);
	pg_atomic_fetch_add_u64(&histogram->sum_us, (uint64) Max(value_us, 0));
}

void
reliq_histogram_copy(const ReliqHistogram *histogram, ReliqHistogramCopy *copy)
{
	ReliqHistogram *h = unconstify(ReliqHistogram *, histogram);
	int			i;

	for (i = 0; i <= RELIQ_HISTOGRAM_BOUNDS; i++)
		copy->buckets[i] = pg_atomic_read_u64(&h->buckets[i]);
	copy->count = pg_atomic_read_u64(&h->count);
	copy->sum_us = pg_atomic_read_u64(&h->sum_us);
}

void
reliq_samples_add(ReliqSamples *samples, int64 value_us)
{
	samples->values_us[samples->next] = value_us;
	samples->next = (samples->next + 1) % RELIQ_SAMPLES;
	if (samples->count < RELIQ_SAMPLES)
		samples->count++;
}

static int
compare_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/* Nearest-rank p50 and p99 of the samples; -1 when there are none. */
void
reliq_samples_percentiles(const ReliqSamples *samples, int64 *p50, int64 *p99)
{
	int64		sorted[RELIQ_SAMPLES];
	int			n = samples->count;

	if (n == 0)
	{
		*p50 = *p99 = -1;
		return;
	}
	memcpy(sorted, samples->values_us, sizeof(int64) * n);
	qsort(sorted, n, sizeof(int64), compare_int64);
	*p50 = sorted[(n * 50 + 99) / 100 - 1];
	*p99 = sorted[(n * 99 + 99) / 100 - 1];
}

void
reliq_rate_add(ReliqRate *rate, TimestampTz now, int64 count)
{
	int64		second = (int64) (now / USECS_PER_SEC);
	int			slot = (int) (second % RELIQ_RATE_SECONDS);

	if (rate->second[slot] != second)
	{
		rate->second[slot] = second;
		rate->count[slot] = 0;
	}
	rate->count[slot] += count;
}

/* Per second, over the last RELIQ_RATE_SECONDS. */
double
reliq_rate_per_second(const ReliqRate *rate, TimestampTz now)
{
	int64		second = (int64) (now / USECS_PER_SEC);
	int64		recent = 0;
	int			i;

	for (i = 0; i < RELIQ_RATE_SECONDS; i++)
		if (rate->second[i] > second - RELIQ_RATE_SECONDS &&
			rate->second[i] <= second)
			recent += rate->count[i];
	return (double) recent / RELIQ_RATE_SECONDS;
}

void
reliq_lag_add(ReliqLagPoints *lag, TimestampTz now, int64 pending,
			  int64 processed)
{
	lag->at[lag->next] = now;
	lag->pending[lag->next] = pending;
	lag->processed[lag->next] = processed;
	lag->next = (lag->next + 1) % RELIQ_LAG_POINTS;
}

/*
 * Lag grows while nothing is processed: over the refreshes of the last
 * minute, pending only went up and processed did not move.  *from and *to
 * are the first and last pending seen.
 */
bool
reliq_lag_growing(const ReliqLagPoints *lag, TimestampTz now,
				  int64 *from, int64 *to)
{
	int			i;
	int			npoints = 0;
	int64		first_pending = 0;
	int64		last_pending = 0;
	int64		first_processed = 0;
	int64		last_processed = 0;
	bool		rising = true;

	for (i = 0; i < RELIQ_LAG_POINTS; i++)
	{
		int			k = (lag->next + i) % RELIQ_LAG_POINTS;

		if (lag->at[k] == 0 ||
			TimestampDifferenceExceeds(lag->at[k], now, 60 * 1000))
			continue;
		if (npoints == 0)
		{
			first_pending = lag->pending[k];
			first_processed = lag->processed[k];
		}
		else if (lag->pending[k] <= last_pending)
			rising = false;
		last_pending = lag->pending[k];
		last_processed = lag->processed[k];
		npoints++;
	}
	*from = first_pending;
	*to = last_pending;
	return npoints >= 2 && rising && last_processed == first_processed;
}
