/*-------------------------------------------------------------------------
 *
 * trace.c
 *	  W3C trace context and the ring of spans in shared memory.
 *
 * Context.  A message's traceparent header (00-<trace id>-<parent id>-
 * <flags>) is parsed when its batch starts (batch.c).  With tracing on
 * (reliq.otlp_endpoint set) each message processed gets a span of its own:
 * a new span id, the incoming trace id or a new one, sampled as the
 * incoming flag says or, without a context, by a draw against
 * reliq.trace_sample_rate.  A reliq.publish inside its handler carries
 * traceparent 00-<trace id>-<that span>-<flags> and the incoming
 * tracestate; the header goes into the outbox row, so a worker that dies
 * before publishing leaves it for the next.  With tracing off the incoming
 * traceparent and tracestate are passed on unchanged and no span is made.
 * An explicit traceparent in the publish's headers always wins.
 *
 * Spans.  Workers and backends copy finished spans (fixed-size records,
 * trace.h) into a bounded ring in shared memory, a whole batch's spans
 * under one acquisition of the ring's LWLock; when the ring is full the
 * rest are dropped and counted, so recording never waits for the
 * exporter.  The exporter process (trace_export.c) takes them out, up to
 * 512 at a time, and sends them.
 *
 * Locking: head, tail, the records and exporter_latch under lock (an
 * LWLock of tranche "reliq trace"); the counters are atomics; the last
 * error and the times under mutex (a copy of a few fields, no loop).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/pg_prng.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"
#include "utils/timestamp.h"

#include "message.h"
#include "trace.h"

char	   *reliq_otlp_endpoint = NULL;
char	   *reliq_otlp_headers = NULL;
int			reliq_otlp_timeout = 5000;
double		reliq_trace_sample_rate = 1.0;
char	   *reliq_service_name = NULL;
int			reliq_trace_buffer_spans = 4096;

typedef struct TraceShared
{
	LWLock	   *lock;
	int			capacity;
	uint64		head;			/* spans ever written */
	uint64		tail;			/* spans ever taken */
	Latch	   *exporter_latch; /* NULL: no exporter running */

	pg_atomic_uint64 recorded;
	pg_atomic_uint64 exported;
	pg_atomic_uint64 dropped_buffer_full;
	pg_atomic_uint64 dropped_export_failed;
	pg_atomic_uint64 export_errors;

	slock_t		mutex;
	TimestampTz last_export_at;
	TimestampTz last_error_at;
	char		last_error[RELIQ_ERROR_LEN];

	ReliqSpan	spans[FLEXIBLE_ARRAY_MEMBER];
} TraceShared;

PG_FUNCTION_INFO_V1(reliq_trace_stats_sql);

static TraceShared *trace_shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* The span of the message whose handler runs (see reliq_trace_set_current). */
static bool have_current = false;
static ReliqMessageTrace current;

static pg_prng_state prng;
static bool prng_seeded = false;

/*
 * Settings
 */

static bool
check_otlp_endpoint(char **newval, void **extra, GucSource source)
{
	const char *v = *newval;

	if (v == NULL || v[0] == '\0')
		return true;
	if (strncmp(v, "http://", 7) != 0 && strncmp(v, "https://", 8) != 0)
	{
		GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
		GUC_check_errmsg("reliq.otlp_endpoint must be an http:// or https:// URL");
		GUC_check_errdetail("It is the base URL of an OTLP/HTTP receiver, such as http://jaeger:4318; an empty value turns tracing off.");
		return false;
	}
	if (strpbrk(v, " \t\r\n\"") != NULL)
	{
		GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
		GUC_check_errdetail("A URL contains no blank, quote or line break.");
		return false;
	}
	return true;
}

/* k=v,k2=v2 as OTEL_EXPORTER_OTLP_HEADERS: every item has a key and '='. */
static bool
check_otlp_headers(char **newval, void **extra, GucSource source)
{
	const char *p = *newval;

	if (p == NULL)
		return true;
	if (strpbrk(p, "\r\n") != NULL)
	{
		GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
		GUC_check_errdetail("Header names and values contain no line break.");
		return false;
	}
	while (*p != '\0')
	{
		const char *end = strchr(p, ',');
		const char *eq = strchr(p, '=');
		const char *k = p;

		if (end == NULL)
			end = p + strlen(p);
		while (k < end && *k == ' ')
			k++;
		if (k == end && *end != '\0')
		{
			p = end + 1;
			continue;
		}
		if (k == end)
			break;
		if (eq == NULL || eq >= end || eq == k)
		{
			GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
			GUC_check_errmsg("reliq.otlp_headers must be a list of name=value separated by commas");
			GUC_check_errdetail("For example: Authorization=Bearer abc,X-Scope-OrgID=tenant1.");
			return false;
		}
		p = (*end == '\0') ? end : end + 1;
	}
	return true;
}

void
reliq_trace_define_settings(void)
{
	DefineCustomStringVariable("reliq.otlp_endpoint",
							   "OTLP/HTTP endpoint spans are sent to; empty turns tracing off.",
							   "A URL without a path gets /v1/traces appended, as OTEL_EXPORTER_OTLP_ENDPOINT; with a path it is used as given.",
							   &reliq_otlp_endpoint, "",
							   PGC_SIGHUP, 0, check_otlp_endpoint, NULL, NULL);
	DefineCustomStringVariable("reliq.otlp_headers",
							   "HTTP headers sent with each export, as name=value pairs separated by commas.",
							   "As OTEL_EXPORTER_OTLP_HEADERS; often a secret, so shown only to superusers.",
							   &reliq_otlp_headers, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   check_otlp_headers, NULL, NULL);
	DefineCustomIntVariable("reliq.otlp_timeout",
							"Longest time one export request may take; a slower one is given up and its spans dropped.",
							NULL, &reliq_otlp_timeout, 5000, 100, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomRealVariable("reliq.trace_sample_rate",
							 "Share of messages without an incoming trace context whose processing is traced.",
							 "A message whose traceparent says sampled or not is traced as it says.",
							 &reliq_trace_sample_rate, 1.0, 0.0, 1.0,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("reliq.service_name",
							   "service.name of the spans reliq exports.",
							   NULL, &reliq_service_name, "reliq",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("reliq.trace_buffer_spans",
							"Spans the shared ring holds while they wait for the exporter.",
							"Each takes about 700 bytes of shared memory; spans that find it full are dropped and counted.",
							&reliq_trace_buffer_spans, 4096, 16, 1048576,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
}

/*
 * The URL exports are sent to: the endpoint with /v1/traces appended when
 * it has no path, as given otherwise.  palloc'd.
 */
char *
reliq_otlp_url(const char *endpoint)
{
	const char *host = strstr(endpoint, "://");
	const char *path = host ? strchr(host + 3, '/') : NULL;

	if (path == NULL)
		return psprintf("%s/v1/traces", endpoint);
	if (strcmp(path, "/") == 0)
		return psprintf("%.*s/v1/traces", (int) (path - endpoint), endpoint);
	return pstrdup(endpoint);
}

/*
 * Shared memory
 */

static Size
trace_shmem_size(void)
{
	return add_size(offsetof(TraceShared, spans),
					mul_size(reliq_trace_buffer_spans, sizeof(ReliqSpan)));
}

static void
trace_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(trace_shmem_size());
	RequestNamedLWLockTranche("reliq trace", 1);
}

static void
trace_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	trace_shared = ShmemInitStruct("reliq trace", trace_shmem_size(), &found);
	if (!found)
	{
		memset(trace_shared, 0, offsetof(TraceShared, spans));
		trace_shared->lock = &(GetNamedLWLockTranche("reliq trace"))->lock;
		trace_shared->capacity = reliq_trace_buffer_spans;
		pg_atomic_init_u64(&trace_shared->recorded, 0);
		pg_atomic_init_u64(&trace_shared->exported, 0);
		pg_atomic_init_u64(&trace_shared->dropped_buffer_full, 0);
		pg_atomic_init_u64(&trace_shared->dropped_export_failed, 0);
		pg_atomic_init_u64(&trace_shared->export_errors, 0);
		SpinLockInit(&trace_shared->mutex);
	}
	LWLockRelease(AddinShmemInitLock);
}

void
reliq_trace_install_hooks(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = trace_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = trace_shmem_startup;
}

/*
 * Context
 */

bool
reliq_tracing_on(void)
{
	return reliq_otlp_endpoint != NULL && reliq_otlp_endpoint[0] != '\0' &&
		trace_shared != NULL;
}

static int
hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;					/* upper case is invalid in traceparent */
}

/* len bytes from 2 * len lower-case hex digits; false if not that. */
static bool
parse_hex(const char *s, uint8 *out, int len)
{
	int			i;

	for (i = 0; i < len; i++)
	{
		int			hi = hex_value(s[2 * i]);
		int			lo = hex_value(s[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return false;
		out[i] = (uint8) (hi << 4 | lo);
	}
	return true;
}

static bool
all_zero(const uint8 *id, int len)
{
	int			i;

	for (i = 0; i < len; i++)
		if (id[i] != 0)
			return false;
	return true;
}

/*
 * Parse a W3C traceparent.  Version 00 is exactly 55 characters; a higher
 * version (not ff) is read by its first four fields, which must be
 * followed by the end or a '-'.  All-zero ids are invalid.
 */
bool
reliq_trace_parse(const char *traceparent, ReliqTraceContext *ctx)
{
	const char *s = traceparent;
	uint8		version;
	size_t		len;

	if (s == NULL)
		return false;
	len = strlen(s);
	if (len < 55 || !parse_hex(s, &version, 1) || version == 0xff ||
		s[2] != '-' || s[35] != '-' || s[52] != '-')
		return false;
	if (version == 0 && len != 55)
		return false;
	if (version != 0 && len > 55 && s[55] != '-')
		return false;
	if (!parse_hex(s + 3, ctx->trace_id, RELIQ_TRACE_ID_LEN) ||
		!parse_hex(s + 36, ctx->span_id, RELIQ_SPAN_ID_LEN) ||
		!parse_hex(s + 53, &ctx->flags, 1))
		return false;
	return !all_zero(ctx->trace_id, RELIQ_TRACE_ID_LEN) &&
		!all_zero(ctx->span_id, RELIQ_SPAN_ID_LEN);
}

static void
format_hex(char *out, const uint8 *id, int len)
{
	static const char digits[] = "0123456789abcdef";
	int			i;

	for (i = 0; i < len; i++)
	{
		out[2 * i] = digits[id[i] >> 4];
		out[2 * i + 1] = digits[id[i] & 0xf];
	}
	out[2 * len] = '\0';
}

/* buf holds RELIQ_TRACEPARENT_LEN bytes. */
void
reliq_trace_format(const ReliqTraceContext *ctx, char *buf)
{
	buf[0] = '0';
	buf[1] = '0';
	buf[2] = '-';
	format_hex(buf + 3, ctx->trace_id, RELIQ_TRACE_ID_LEN);
	buf[35] = '-';
	format_hex(buf + 36, ctx->span_id, RELIQ_SPAN_ID_LEN);
	buf[52] = '-';
	format_hex(buf + 53, &ctx->flags, 1);
}

/* The generator of ids and draws, seeded once per process. */
static void
ensure_seeded(void)
{
	if (prng_seeded)
		return;
	if (!pg_prng_strong_seed(&prng))
		pg_prng_seed(&prng, (uint64) MyProcPid ^ (uint64) GetCurrentTimestamp());
	prng_seeded = true;
}

/* A random id, never all zero. */
void
reliq_trace_new_id(uint8 *id, int len)
{
	int			i;

	ensure_seeded();
	do
	{
		for (i = 0; i < len; i += 8)
		{
			uint64		r = pg_prng_uint64(&prng);

			memcpy(id + i, &r, Min(8, len - i));
		}
	} while (all_zero(id, len));
}

/* Whether a message without a context is traced: reliq.trace_sample_rate. */
bool
reliq_trace_draw_sample(void)
{
	if (reliq_trace_sample_rate >= 1.0)
		return true;
	if (reliq_trace_sample_rate <= 0.0)
		return false;
	ensure_seeded();
	return pg_prng_double(&prng) < reliq_trace_sample_rate;
}

int64
reliq_trace_now_ns(void)
{
	return reliq_timestamptz_to_unix_ns(GetCurrentTimestamp());
}

/*
 * A message's trace as its batch starts: the incoming context, and with
 * tracing on (`on`) the ids of its processing span.
 */
void
reliq_trace_start_message(ReliqMessageTrace *trace, const char *traceparent,
						  const char *tracestate, bool on)
{
	memset(trace, 0, sizeof(*trace));
	trace->traceparent = traceparent;
	if (tracestate != NULL && strlen(tracestate) <= RELIQ_TRACESTATE_MAX)
		trace->tracestate = tracestate;
	trace->has_parent = reliq_trace_parse(traceparent, &trace->parent);
	if (!on)
		return;
	trace->traced = true;
	if (trace->has_parent)
	{
		memcpy(trace->span.trace_id, trace->parent.trace_id, RELIQ_TRACE_ID_LEN);
		trace->sampled = (trace->parent.flags & 0x01) != 0;
	}
	else
	{
		reliq_trace_new_id(trace->span.trace_id, RELIQ_TRACE_ID_LEN);
		trace->sampled = reliq_trace_draw_sample();
	}
	reliq_trace_new_id(trace->span.span_id, RELIQ_SPAN_ID_LEN);
	trace->span.flags = trace->sampled ? 0x01 : 0x00;
}

/*
 * The message whose handler is about to run (NULL: none, such as a
 * set-based handler given many messages).  The pointed-to strings must
 * outlive the handler.
 */
void
reliq_trace_set_current(const ReliqMessageTrace *trace)
{
	have_current = (trace != NULL);
	if (trace != NULL)
		current = *trace;
}

/*
 * The headers of a reliq.publish with the trace context added.
 *
 * In a handler: the processing span's context (tracing on), or the
 * incoming traceparent and tracestate unchanged (tracing off).  Outside a
 * handler with tracing on: a new trace whose parent is the publish's own
 * span, described in *publish_span for the caller to record once the
 * publish is done (publish_span->type is 0 when there is none to record).
 * Headers that give a traceparent are returned as they are; a tracestate
 * they give is kept.
 */
Jsonb *
reliq_trace_publish_headers(Jsonb *headers, bool in_handler,
							ReliqSpan *publish_span)
{
	char		formatted[RELIQ_TRACEPARENT_LEN];
	const char *traceparent;
	const char *tracestate = NULL;
	StringInfoData json;
	Datum		added;

	publish_span->type = 0;
	if (headers != NULL &&
		DatumGetBool(DirectFunctionCall2(jsonb_exists, JsonbPGetDatum(headers),
										 CStringGetTextDatum("traceparent"))))
		return headers;

	if (in_handler)
	{
		if (!have_current)
			return headers;
		if (current.traced)
		{
			reliq_trace_format(&current.span, formatted);
			traceparent = formatted;
		}
		else if (current.traceparent != NULL &&
				 strlen(current.traceparent) <= RELIQ_TRACESTATE_MAX)
			traceparent = current.traceparent;	/* passed on as it came */
		else
			return headers;
		tracestate = current.tracestate;
	}
	else
	{
		ReliqTraceContext ctx;

		if (!reliq_tracing_on())
			return headers;
		reliq_trace_new_id(ctx.trace_id, RELIQ_TRACE_ID_LEN);
		reliq_trace_new_id(ctx.span_id, RELIQ_SPAN_ID_LEN);
		ctx.flags = reliq_trace_draw_sample() ? 0x01 : 0x00;
		reliq_trace_format(&ctx, formatted);
		traceparent = formatted;
		if (ctx.flags & 0x01)
		{
			memset(publish_span, 0, sizeof(*publish_span));
			publish_span->type = RELIQ_SPAN_PUBLISH;
			memcpy(publish_span->trace_id, ctx.trace_id, RELIQ_TRACE_ID_LEN);
			memcpy(publish_span->span_id, ctx.span_id, RELIQ_SPAN_ID_LEN);
			publish_span->start_ns = reliq_trace_now_ns();
		}
	}

	initStringInfo(&json);
	appendStringInfoString(&json, "{\"traceparent\": ");
	escape_json(&json, traceparent);
	if (tracestate != NULL)
	{
		appendStringInfoString(&json, ", \"tracestate\": ");
		escape_json(&json, tracestate);
	}
	appendStringInfoChar(&json, '}');
	added = DirectFunctionCall1(jsonb_in, CStringGetDatum(json.data));
	pfree(json.data);
	if (headers == NULL)
		return DatumGetJsonbP(added);
	/* the caller's keys win: a tracestate of its own is kept */
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, added,
											  JsonbPGetDatum(headers)));
}

/* A publish span's end: its outcome, and the error if it failed. */
void
reliq_trace_end_publish(ReliqSpan *span, bool published, bool duplicate,
						int64 seq, const char *error)
{
	span->end_ns = reliq_trace_now_ns();
	span->stream_seq = published ? seq : 0;
	span->error = !published;
	if (!published)
	{
		reliq_span_text(span->outcome, "failed", sizeof(span->outcome));
		reliq_span_text(span->error_message, error, sizeof(span->error_message));
	}
	else
		reliq_span_text(span->outcome, duplicate ? "duplicate" : "published",
						sizeof(span->outcome));
}

/* Copy src into a span's text field, cut to fit. */
void
reliq_span_text(char *dst, const char *src, size_t size)
{
	strlcpy(dst, src ? src : "", size);
}

/*
 * A publish span from the traceparent a publish carries (an outbox row's
 * headers, or a backend's explicit one): its parent is the span named
 * there.  span->type stays 0 when
 * there is no sampled context, or tracing is off.
 */
void
reliq_trace_publish_span(ReliqSpan *span, const char *subject,
						 const char **keys, const char **values, int nheaders,
						 const char *msg_id)
{
	ReliqTraceContext ctx;
	int			i;

	span->type = 0;
	if (!reliq_tracing_on())
		return;
	for (i = 0; i < nheaders; i++)
		if (strcmp(keys[i], "traceparent") == 0)
			break;
	if (i == nheaders || !reliq_trace_parse(values[i], &ctx) ||
		!(ctx.flags & 0x01))
		return;
	memset(span, 0, sizeof(*span));
	span->type = RELIQ_SPAN_PUBLISH;
	memcpy(span->trace_id, ctx.trace_id, RELIQ_TRACE_ID_LEN);
	memcpy(span->parent_id, ctx.span_id, RELIQ_SPAN_ID_LEN);
	span->has_parent = true;
	reliq_trace_new_id(span->span_id, RELIQ_SPAN_ID_LEN);
	reliq_span_text(span->subject, subject, sizeof(span->subject));
	reliq_span_text(span->msg_id, msg_id, sizeof(span->msg_id));
	span->start_ns = reliq_trace_now_ns();
}

/*
 * The ring
 */

/*
 * Copy finished spans into the ring with one acquisition of its lock;
 * those that find it full are dropped and counted.  Wakes the exporter
 * when the ring fills past a threshold.
 */
void
reliq_trace_record(const ReliqSpan *spans, int count)
{
	TraceShared *ts = trace_shared;
	Latch	   *wake = NULL;
	int			stored = 0;
	int			capacity;
	uint64		used;

	if (ts == NULL || count <= 0)
		return;
	capacity = ts->capacity;
	LWLockAcquire(ts->lock, LW_EXCLUSIVE);
	while (stored < count && ts->head - ts->tail < (uint64) capacity)
	{
		ts->spans[ts->head % capacity] = spans[stored++];
		ts->head++;
	}
	used = ts->head - ts->tail;
	if (used >= (uint64) Min(512, capacity / 2))
		wake = ts->exporter_latch;
	LWLockRelease(ts->lock);

	pg_atomic_fetch_add_u64(&ts->recorded, stored);
	if (stored < count)
		pg_atomic_fetch_add_u64(&ts->dropped_buffer_full, count - stored);
	if (wake != NULL)
		SetLatch(wake);
}

/* Take up to max spans out of the ring (the exporter). */
int
reliq_trace_take(ReliqSpan *spans, int max)
{
	TraceShared *ts = trace_shared;
	int			taken = 0;

	LWLockAcquire(ts->lock, LW_EXCLUSIVE);
	while (taken < max && ts->tail < ts->head)
	{
		spans[taken++] = ts->spans[ts->tail % ts->capacity];
		ts->tail++;
	}
	LWLockRelease(ts->lock);
	return taken;
}

/* The exporter's latch, or NULL as it exits. */
void
reliq_trace_set_exporter(Latch *latch)
{
	LWLockAcquire(trace_shared->lock, LW_EXCLUSIVE);
	trace_shared->exporter_latch = latch;
	LWLockRelease(trace_shared->lock);
}

/* What an export request did: spans sent, or dropped with an error. */
void
reliq_trace_count_export(uint64 exported, uint64 dropped, const char *error)
{
	TraceShared *ts = trace_shared;
	TimestampTz now = GetCurrentTimestamp();

	if (exported > 0)
		pg_atomic_fetch_add_u64(&ts->exported, exported);
	if (dropped > 0)
		pg_atomic_fetch_add_u64(&ts->dropped_export_failed, dropped);
	if (error != NULL)
		pg_atomic_fetch_add_u64(&ts->export_errors, 1);
	SpinLockAcquire(&ts->mutex);
	if (error != NULL)
	{
		strlcpy(ts->last_error, error, sizeof(ts->last_error));
		ts->last_error_at = now;
	}
	else if (exported > 0)
		ts->last_export_at = now;
	SpinLockRelease(&ts->mutex);
}

void
reliq_trace_stats(ReliqTraceStats *stats)
{
	TraceShared *ts = trace_shared;

	memset(stats, 0, sizeof(*stats));
	if (ts == NULL)
		return;
	stats->recorded = pg_atomic_read_u64(&ts->recorded);
	stats->exported = pg_atomic_read_u64(&ts->exported);
	stats->dropped_buffer_full = pg_atomic_read_u64(&ts->dropped_buffer_full);
	stats->dropped_export_failed = pg_atomic_read_u64(&ts->dropped_export_failed);
	stats->export_errors = pg_atomic_read_u64(&ts->export_errors);
	stats->capacity = ts->capacity;
	LWLockAcquire(ts->lock, LW_SHARED);
	stats->buffered = (int) (ts->head - ts->tail);
	LWLockRelease(ts->lock);
	SpinLockAcquire(&ts->mutex);
	stats->last_export_at = ts->last_export_at;
	stats->last_error_at = ts->last_error_at;
	memcpy(stats->last_error, ts->last_error, sizeof(stats->last_error));
	SpinLockRelease(&ts->mutex);
}

/* reliq.trace_stats(): one row of the counters above. */
Datum
reliq_trace_stats_sql(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	ReliqTraceStats t;
	Datum		values[10];
	bool		nulls[10] = {false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("function returning record called in context that cannot accept type record")));
	reliq_trace_stats(&t);
	values[0] = BoolGetDatum(reliq_tracing_on());
	values[1] = Int64GetDatum((int64) t.recorded);
	values[2] = Int64GetDatum((int64) t.exported);
	values[3] = Int64GetDatum((int64) t.dropped_buffer_full);
	values[4] = Int64GetDatum((int64) t.dropped_export_failed);
	values[5] = Int64GetDatum((int64) t.export_errors);
	values[6] = Int32GetDatum(t.buffered);
	values[7] = TimestampTzGetDatum(t.last_export_at);
	nulls[7] = (t.last_export_at == 0);
	values[8] = TimestampTzGetDatum(t.last_error_at);
	nulls[8] = (t.last_error_at == 0);
	values[9] = CStringGetTextDatum(t.last_error);
	nulls[9] = (t.last_error[0] == '\0');
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
