/*-------------------------------------------------------------------------
 *
 * stats_math.h
 *	  The arithmetic of a subscription's statistics: latency histograms,
 *	  recent samples and their percentiles, the per-second rate and the
 *	  lag trend (see stats_math.c).  Where they live and who locks them is
 *	  shmem.c's business.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_STATS_MATH_H
#define RELIQ_STATS_MATH_H

#include "datatype/timestamp.h"
#include "port/atomics.h"

/*
 * Latency histograms, cumulative since the last reset, in the layout
 * Prometheus wants: a count per bucket (upper bounds in
 * reliq_histogram_bounds, seconds; the last bucket is +Inf), the count and
 * the sum.  Atomics: added to without a lock.
 */
#define RELIQ_HISTOGRAM_BOUNDS 13
extern const double reliq_histogram_bounds[RELIQ_HISTOGRAM_BOUNDS];

typedef struct ReliqHistogram
{
	pg_atomic_uint64 buckets[RELIQ_HISTOGRAM_BOUNDS + 1];
	pg_atomic_uint64 count;
	pg_atomic_uint64 sum_us;
} ReliqHistogram;

/* A histogram copied out. */
typedef struct ReliqHistogramCopy
{
	uint64		buckets[RELIQ_HISTOGRAM_BOUNDS + 1];
	uint64		count;
	uint64		sum_us;
} ReliqHistogramCopy;

/* Recent samples kept for p50/p99 (a ring). */
#define RELIQ_SAMPLES 1024

typedef struct ReliqSamples
{
	int64		values_us[RELIQ_SAMPLES];
	int			next;
	int			count;
} ReliqSamples;

/* Messages applied in each of the last seconds, for the rate. */
#define RELIQ_RATE_SECONDS 60

typedef struct ReliqRate
{
	int64		second[RELIQ_RATE_SECONDS];
	int64		count[RELIQ_RATE_SECONDS];
} ReliqRate;

/* (pending, processed) at the last refreshes, to see lag grow. */
#define RELIQ_LAG_POINTS 4

typedef struct ReliqLagPoints
{
	TimestampTz at[RELIQ_LAG_POINTS];
	int64		pending[RELIQ_LAG_POINTS];
	int64		processed[RELIQ_LAG_POINTS];
	int			next;
} ReliqLagPoints;

extern void reliq_histogram_init(ReliqHistogram *histogram);
extern void reliq_histogram_reset(ReliqHistogram *histogram);
extern void reliq_histogram_observe(ReliqHistogram *histogram, int64 value_us);
extern void reliq_histogram_copy(const ReliqHistogram *histogram,
								 ReliqHistogramCopy *copy);

extern void reliq_samples_add(ReliqSamples *samples, int64 value_us);
extern void reliq_samples_percentiles(const ReliqSamples *samples,
									  int64 *p50, int64 *p99);

extern void reliq_rate_add(ReliqRate *rate, TimestampTz now, int64 count);
extern double reliq_rate_per_second(const ReliqRate *rate, TimestampTz now);

extern void reliq_lag_add(ReliqLagPoints *lag, TimestampTz now, int64 pending,
						  int64 processed);
extern bool reliq_lag_growing(const ReliqLagPoints *lag, TimestampTz now,
							  int64 *from, int64 *to);

#endif							/* RELIQ_STATS_MATH_H */
