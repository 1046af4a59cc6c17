/*-------------------------------------------------------------------------
 *
 * trace.h
 *	  Tracing: W3C trace context carried from a message to what its handler
 *	  publishes, and OpenTelemetry spans handed through a ring in shared
 *	  memory to the exporter process (trace_export.c), which sends them
 *	  over OTLP/HTTP.  See trace.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_TRACE_H
#define RELIQ_TRACE_H

#include "datatype/timestamp.h"
#include "fmgr.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/guc.h"
#include "utils/jsonb.h"

#include "reliq.h"

#define RELIQ_TRACE_ID_LEN		16
#define RELIQ_SPAN_ID_LEN		8
#define RELIQ_TRACEPARENT_LEN	56	/* 55 characters and the NUL */
#define RELIQ_TRACESTATE_MAX	512 /* longer tracestate is not passed on */

/* Settings (reliq.c) */
extern char *reliq_otlp_endpoint;
extern char *reliq_otlp_headers;
extern int	reliq_otlp_timeout;
extern double reliq_trace_sample_rate;
extern char *reliq_service_name;
extern int	reliq_trace_buffer_spans;

extern void reliq_trace_define_settings(void);
extern char *reliq_otlp_url(const char *endpoint);

/* A W3C trace context: a trace id, the parent's span id and flags. */
typedef struct ReliqTraceContext
{
	uint8		trace_id[RELIQ_TRACE_ID_LEN];
	uint8		span_id[RELIQ_SPAN_ID_LEN];
	uint8		flags;			/* bit 0: sampled */
} ReliqTraceContext;

/*
 * The trace of one message being processed: its incoming context (if
 * any), and, with tracing on, the span of its processing.
 */
typedef struct ReliqMessageTrace
{
	const char *traceparent;	/* incoming header as received, or NULL */
	const char *tracestate;		/* incoming, NULL if absent or too long */
	bool		has_parent;		/* the incoming traceparent parsed */
	ReliqTraceContext parent;
	bool		traced;			/* tracing was on: span ids drawn */
	bool		sampled;		/* its span is recorded */
	ReliqTraceContext span;		/* the processing span: trace and span id */
	int64		start_ns;
	int64		end_ns;
} ReliqMessageTrace;

/* What a span record describes; the exporter names and dresses it. */
typedef enum ReliqSpanType
{
	RELIQ_SPAN_PROCESS = 1,		/* a message processed (CONSUMER) */
	RELIQ_SPAN_BATCH,			/* a batch transaction (INTERNAL) */
	RELIQ_SPAN_PUBLISH			/* a publish (PRODUCER) */
} ReliqSpanType;

#define RELIQ_SPAN_SUBJECT_LEN	128
#define RELIQ_SPAN_NAME_LEN		64
#define RELIQ_SPAN_MSGID_LEN	96
#define RELIQ_SPAN_ERROR_LEN	160

/*
 * One span as it waits in the ring: fixed size (about 700 bytes), every
 * text truncated to its field.
 */
typedef struct ReliqSpan
{
	uint8		type;			/* ReliqSpanType */
	bool		has_parent;
	bool		has_link;
	bool		error;			/* status ERROR, with sqlstate and message */
	uint8		trace_id[RELIQ_TRACE_ID_LEN];
	uint8		span_id[RELIQ_SPAN_ID_LEN];
	uint8		parent_id[RELIQ_SPAN_ID_LEN];
	uint8		link_trace_id[RELIQ_TRACE_ID_LEN];
	uint8		link_span_id[RELIQ_SPAN_ID_LEN];
	int64		start_ns;		/* Unix nanoseconds */
	int64		end_ns;
	int64		stream_seq;
	int32		delivery_count;
	int32		message_count;
	char		outcome[16];
	char		sqlstate[6];
	char		subject[RELIQ_SPAN_SUBJECT_LEN];
	char		subscription[RELIQ_SPAN_NAME_LEN];
	char		stream[RELIQ_SPAN_NAME_LEN];
	char		consumer[RELIQ_SPAN_NAME_LEN];
	char		msg_id[RELIQ_SPAN_MSGID_LEN];
	char		error_message[RELIQ_SPAN_ERROR_LEN];
} ReliqSpan;

/* Counters of the ring and the exporter (reliq.trace_stats()). */
typedef struct ReliqTraceStats
{
	uint64		recorded;
	uint64		exported;
	uint64		dropped_buffer_full;
	uint64		dropped_export_failed;
	uint64		export_errors;
	int			buffered;
	int			capacity;
	TimestampTz last_export_at;
	TimestampTz last_error_at;
	char		last_error[RELIQ_ERROR_LEN];
} ReliqTraceStats;

/* Shared memory (trace.c) */
extern void reliq_trace_install_hooks(void);

/* Context */
extern bool reliq_tracing_on(void);
extern bool reliq_trace_parse(const char *traceparent, ReliqTraceContext *ctx);
extern void reliq_trace_format(const ReliqTraceContext *ctx, char *buf);
extern void reliq_trace_new_id(uint8 *id, int len);
extern bool reliq_trace_draw_sample(void);
extern int64 reliq_trace_now_ns(void);
extern void reliq_trace_start_message(ReliqMessageTrace *trace,
									  const char *traceparent,
									  const char *tracestate, bool on);

/* While a handler runs on one message (handler.c) */
extern void reliq_trace_set_current(const ReliqMessageTrace *trace);
extern Jsonb *reliq_trace_publish_headers(Jsonb *headers, bool in_handler,
										  ReliqSpan *publish_span);

/* Spans: workers and backends record, the exporter takes */
extern void reliq_trace_record(const ReliqSpan *spans, int count);
extern int	reliq_trace_take(ReliqSpan *spans, int max);
extern void reliq_trace_set_exporter(Latch *latch);
extern void reliq_trace_count_export(uint64 exported, uint64 dropped,
									 const char *error);
extern void reliq_trace_stats(ReliqTraceStats *stats);
extern void reliq_span_text(char *dst, const char *src, size_t size);
extern void reliq_trace_end_publish(ReliqSpan *span, bool published,
									bool duplicate, int64 seq,
									const char *error);
extern void reliq_trace_publish_span(ReliqSpan *span, const char *subject,
									 const char **keys, const char **values,
									 int nheaders, const char *msg_id);

/* The exporter (trace_export.c) */
extern PGDLLEXPORT void reliq_trace_exporter_main(Datum arg);

#endif							/* RELIQ_TRACE_H */
