/*-------------------------------------------------------------------------
 *
 * trace_export.c
 *	  The exporter process, "reliq trace exporter": takes spans out of the
 *	  shared ring (trace.c) and sends them over OTLP/HTTP, as JSON, with
 *	  libcurl.  The only file that includes curl.h; only this process
 *	  calls libcurl.
 *
 * It wakes every second, or when a worker finds the ring past a
 * threshold, and sends the ring's spans in requests of up to 512.  An
 * export that fails or outlasts reliq.otlp_timeout drops its spans and
 * counts them: nothing is retried, so nothing queues without bound, and
 * workers never wait (a full ring drops what comes, trace.c).  SIGTERM
 * and the postmaster's death end a transfer under way (curl's progress
 * callback) as well as every wait.
 *
 * The JSON is OTLP's (opentelemetry-proto, JSON encoding): ids in
 * lower-case hex, times as decimal strings of Unix nanoseconds, kind and
 * status code as integers, int64 attribute values as decimal strings.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "access/xlog.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/pmsignal.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/memutils.h"

#include "trace.h"
#include "version.h"

/* Spans per export request. */
#define EXPORT_BATCH 512

/* OTLP's SpanKind and StatusCode */
#define OTLP_KIND_INTERNAL	1
#define OTLP_KIND_PRODUCER	4
#define OTLP_KIND_CONSUMER	5
#define OTLP_STATUS_ERROR		2

static CURL *curl = NULL;
static struct curl_slist *http_headers = NULL;
static char *export_url = NULL;
static char response[256];
static size_t response_len = 0;

/*
 * JSON
 */

/* An id as a JSON string of lower-case hex digits. */
static void
append_hex(StringInfo buf, const uint8 *id, int len)
{
	static const char digits[] = "0123456789abcdef";
	char		text[2 * RELIQ_TRACE_ID_LEN + 2];
	int			i;

	text[0] = '"';
	for (i = 0; i < len; i++)
	{
		text[1 + 2 * i] = digits[id[i] >> 4];
		text[2 + 2 * i] = digits[id[i] & 0xf];
	}
	text[1 + 2 * len] = '"';
	appendBinaryStringInfo(buf, text, 2 * len + 2);
}

/* A string literal, its length known at compile time. */
#define APPEND_LITERAL(buf, lit) appendBinaryStringInfo((buf), (lit), sizeof(lit) - 1)

/* Needs value escaping in JSON? (most values do not: a quick scan first) */
static bool
needs_escape(const char *value)
{
	const unsigned char *p;

	for (p = (const unsigned char *) value; *p != '\0'; p++)
		if (*p < 0x20 || *p == '"' || *p == '\\')
			return true;
	return false;
}

/* A JSON string: prefix (a literal of ours) followed by value. */
static void
append_text(StringInfo buf, const char *prefix, const char *value)
{
	if (!needs_escape(value))
	{
		appendStringInfoChar(buf, '"');
		appendStringInfoString(buf, prefix);
		appendStringInfoString(buf, value);
		appendStringInfoChar(buf, '"');
	}
	else
	{
		char	   *joined = psprintf("%s%s", prefix, value);

		escape_json(buf, joined);
		pfree(joined);
	}
}

/* A decimal integer as a JSON string, as OTLP writes int64 and fixed64. */
static void
append_int_text(StringInfo buf, int64 value)
{
	char		number[MAXINT8LEN + 1];
	int			len = pg_lltoa(value, number);

	appendStringInfoChar(buf, '"');
	appendBinaryStringInfo(buf, number, len);
	appendStringInfoChar(buf, '"');
}

/*
 * Attributes.  Keys are literals of reliq's that need no escaping.  A few
 * thousand spans a second may go through here, on the workers' machine:
 * no formatting functions, one scan of each value.
 */
static void
attr_key(StringInfo buf, bool *first, const char *key)
{
	if (*first)
		APPEND_LITERAL(buf, "{\"key\":\"");
	else
		APPEND_LITERAL(buf, ",{\"key\":\"");
	appendStringInfoString(buf, key);
	*first = false;
}

static void
attr_string(StringInfo buf, bool *first, const char *key, const char *value)
{
	attr_key(buf, first, key);
	APPEND_LITERAL(buf, "\",\"value\":{\"stringValue\":");
	append_text(buf, "", value);
	APPEND_LITERAL(buf, "}}");
}

static void
attr_int(StringInfo buf, bool *first, const char *key, int64 value)
{
	attr_key(buf, first, key);
	APPEND_LITERAL(buf, "\",\"value\":{\"intValue\":");
	append_int_text(buf, value);
	APPEND_LITERAL(buf, "}}");
}

static void
append_span(StringInfo buf, const ReliqSpan *s)
{
	bool		first = true;

	APPEND_LITERAL(buf, "{\"traceId\":");
	append_hex(buf, s->trace_id, RELIQ_TRACE_ID_LEN);
	APPEND_LITERAL(buf, ",\"spanId\":");
	append_hex(buf, s->span_id, RELIQ_SPAN_ID_LEN);
	if (s->has_parent)
	{
		APPEND_LITERAL(buf, ",\"parentSpanId\":");
		append_hex(buf, s->parent_id, RELIQ_SPAN_ID_LEN);
	}
	APPEND_LITERAL(buf, ",\"name\":");
	switch (s->type)
	{
		case RELIQ_SPAN_PROCESS:
			append_text(buf, "process ", s->subject);
			APPEND_LITERAL(buf, ",\"kind\":" CppAsString2(OTLP_KIND_CONSUMER));
			break;
		case RELIQ_SPAN_BATCH:
			append_text(buf, "reliq batch ", s->subscription);
			APPEND_LITERAL(buf, ",\"kind\":" CppAsString2(OTLP_KIND_INTERNAL));
			break;
		default:
			append_text(buf, "publish ", s->subject);
			APPEND_LITERAL(buf, ",\"kind\":" CppAsString2(OTLP_KIND_PRODUCER));
			break;
	}
	APPEND_LITERAL(buf, ",\"startTimeUnixNano\":");
	append_int_text(buf, s->start_ns);
	APPEND_LITERAL(buf, ",\"endTimeUnixNano\":");
	append_int_text(buf, Max(s->end_ns, s->start_ns));
	APPEND_LITERAL(buf, ",\"attributes\":[");

	attr_string(buf, &first, "messaging.system", "nats");
	switch (s->type)
	{
		case RELIQ_SPAN_PROCESS:
			attr_string(buf, &first, "messaging.destination.name", s->subject);
			attr_string(buf, &first, "messaging.operation", "process");
			attr_string(buf, &first, "messaging.operation.type", "process");
			attr_string(buf, &first, "messaging.consumer.group.name", s->consumer);
			attr_string(buf, &first, "reliq.subscription", s->subscription);
			attr_string(buf, &first, "reliq.stream", s->stream);
			attr_int(buf, &first, "reliq.stream_seq", s->stream_seq);
			attr_int(buf, &first, "reliq.delivery_count", s->delivery_count);
			break;
		case RELIQ_SPAN_BATCH:
			attr_string(buf, &first, "reliq.subscription", s->subscription);
			attr_int(buf, &first, "messaging.batch.message_count", s->message_count);
			break;
		default:
			attr_string(buf, &first, "messaging.destination.name", s->subject);
			attr_string(buf, &first, "messaging.operation", "publish");
			attr_string(buf, &first, "messaging.operation.type", "publish");
			if (s->msg_id[0] != '\0')
				attr_string(buf, &first, "messaging.message.id", s->msg_id);
			if (s->subscription[0] != '\0')
				attr_string(buf, &first, "reliq.subscription", s->subscription);
			if (s->stream_seq > 0)
				attr_int(buf, &first, "reliq.stream_seq", s->stream_seq);
			break;
	}
	attr_string(buf, &first, "reliq.outcome", s->outcome);
	if (s->error && s->sqlstate[0] != '\0')
		attr_string(buf, &first, "error.type", s->sqlstate);
	appendStringInfoChar(buf, ']');

	if (s->has_link)
	{
		APPEND_LITERAL(buf, ",\"links\":[{\"traceId\":");
		append_hex(buf, s->link_trace_id, RELIQ_TRACE_ID_LEN);
		APPEND_LITERAL(buf, ",\"spanId\":");
		append_hex(buf, s->link_span_id, RELIQ_SPAN_ID_LEN);
		APPEND_LITERAL(buf, "}]");
	}
	if (s->error)
	{
		APPEND_LITERAL(buf, ",\"status\":{\"code\":" CppAsString2(OTLP_STATUS_ERROR) ",\"message\":");
		append_text(buf, "", s->error_message);
		appendStringInfoChar(buf, '}');
	}
	appendStringInfoChar(buf, '}');
}

/* An ExportTraceServiceRequest of one resource and one scope. */
static void
build_request(StringInfo buf, const ReliqSpan *spans, int n)
{
	bool		first = true;
	char		instance[32];
	int			i;

	snprintf(instance, sizeof(instance), UINT64_FORMAT, GetSystemIdentifier());
	resetStringInfo(buf);
	appendStringInfoString(buf, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
	attr_string(buf, &first, "service.name", reliq_service_name);
	attr_string(buf, &first, "service.version", RELIQ_VERSION);
	attr_string(buf, &first, "service.instance.id", instance);
	appendStringInfoString(buf, "]},\"scopeSpans\":[{\"scope\":{\"name\":\"reliq\",\"version\":");
	escape_json(buf, RELIQ_VERSION);
	appendStringInfoString(buf, "},\"spans\":[");
	for (i = 0; i < n; i++)
	{
		if (i > 0)
			appendStringInfoChar(buf, ',');
		append_span(buf, &spans[i]);
	}
	appendStringInfoString(buf, "]}]}]}");
}

/*
 * HTTP
 */

/* Keep the start of the response body, for the error text. */
static size_t
keep_response(char *data, size_t size, size_t nmemb, void *arg)
{
	size_t		len = size * nmemb;
	size_t		room = sizeof(response) - 1 - response_len;

	if (room > 0)
	{
		memcpy(response + response_len, data, Min(room, len));
		response_len += Min(room, len);
		response[response_len] = '\0';
	}
	return len;
}

/* A transfer under way ends at SIGTERM or with the postmaster. */
static int
progress(void *arg, curl_off_t dltotal, curl_off_t dlnow,
		 curl_off_t ultotal, curl_off_t ulnow)
{
	return (ShutdownRequestPending || !PostmasterIsAlive()) ? 1 : 0;
}

/* s without leading and trailing blanks, in place. */
static char *
trim(char *s)
{
	char	   *end;

	while (*s == ' ' || *s == '\t')
		s++;
	end = s + strlen(s);
	while (end > s && (end[-1] == ' ' || end[-1] == '\t'))
		*--end = '\0';
	return s;
}

/* The settings as they are now: URL and headers. */
static void
configure(void)
{
	const char *p = reliq_otlp_headers ? reliq_otlp_headers : "";

	if (export_url)
		pfree(export_url);
	export_url = NULL;
	if (reliq_otlp_endpoint && reliq_otlp_endpoint[0] != '\0')
		export_url = MemoryContextStrdup(TopMemoryContext,
										 reliq_otlp_url(reliq_otlp_endpoint));

	if (http_headers)
		curl_slist_free_all(http_headers);
	http_headers = curl_slist_append(NULL, "Content-Type: application/json");
	while (*p != '\0')
	{
		const char *end = strchr(p, ',');
		const char *eq;
		char	   *item;
		char	   *key;
		char	   *value;

		if (end == NULL)
			end = p + strlen(p);
		item = pnstrdup(p, end - p);
		eq = strchr(item, '=');
		if (eq != NULL)
		{
			key = pnstrdup(item, eq - item);
			value = pstrdup(eq + 1);
			http_headers = curl_slist_append(http_headers,
											 psprintf("%s: %s", trim(key),
													  trim(value)));
		}
		p = (*end == '\0') ? end : end + 1;
	}
}

/* Send one request; NULL on success, else why not (palloc'd). */
static char *
send_spans(StringInfo body)
{
	CURLcode	rc;
	long		status = 0;

	if (curl == NULL)
	{
		curl = curl_easy_init();
		if (curl == NULL)
			return pstrdup("could not initialise libcurl");
	}
	else
		curl_easy_reset(curl);
	response_len = 0;
	response[0] = '\0';
	curl_easy_setopt(curl, CURLOPT_URL, export_url);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_POST, 1L);
	curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body->data);
	curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long) body->len);
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, http_headers);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long) reliq_otlp_timeout);
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, (long) reliq_otlp_timeout);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, keep_response);
	curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, progress);
	curl_easy_setopt(curl, CURLOPT_USERAGENT, "reliq/" RELIQ_VERSION);

	rc = curl_easy_perform(curl);
	if (rc != CURLE_OK)
		return psprintf("export to %s failed: %s", export_url,
						curl_easy_strerror(rc));
	curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
	if (status < 200 || status >= 300)
		return psprintf("export to %s failed: HTTP status %ld: %s", export_url,
						status, response);
	return NULL;
}

/*
 * Send what the ring holds, EXPORT_BATCH spans a request, until it is
 * empty or a request fails (the rest wait for the next round).  With
 * tracing turned off meanwhile, what is left is dropped.
 */
static void
export_round(ReliqSpan *spans, StringInfo body)
{
	int			n;

	while (!ShutdownRequestPending &&
		   (n = reliq_trace_take(spans, EXPORT_BATCH)) > 0)
	{
		char	   *error;

		if (export_url == NULL)
		{
			reliq_trace_count_export(0, n, NULL);
			continue;
		}
		build_request(body, spans, n);
		pgstat_report_activity(STATE_RUNNING, "reliq: exporting spans");
		error = send_spans(body);
		pgstat_report_activity(STATE_IDLE, NULL);
		reliq_trace_count_export(error ? 0 : n, error ? n : 0, error);
		if (error != NULL)
		{
			ereport(DEBUG1,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("reliq: %d spans dropped: %s", n, error)));
			pfree(error);
			break;
		}
	}
}

static void
forget_exporter(int code, Datum arg)
{
	reliq_trace_set_exporter(NULL);
}

void
reliq_trace_exporter_main(Datum arg)
{
	ReliqSpan  *spans;
	StringInfoData body;
	MemoryContext round_cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		ereport(FATAL,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not initialise libcurl for the reliq trace exporter")));
	spans = MemoryContextAlloc(TopMemoryContext, sizeof(ReliqSpan) * EXPORT_BATCH);
	round_cxt = AllocSetContextCreate(TopMemoryContext, "reliq trace export",
									  ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(round_cxt);
	configure();
	MemoryContextSwitchTo(TopMemoryContext);
	initStringInfo(&body);
	before_shmem_exit(forget_exporter, 0);
	reliq_trace_set_exporter(MyLatch);

	while (!ShutdownRequestPending)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		if (ShutdownRequestPending)
			break;
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			MemoryContextSwitchTo(round_cxt);
			configure();
			MemoryContextSwitchTo(TopMemoryContext);
		}
		MemoryContextSwitchTo(round_cxt);
		export_round(spans, &body);
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(round_cxt);
		if (body.maxlen > 4 * 1024 * 1024)
		{
			pfree(body.data);
			initStringInfo(&body);
		}
	}
	if (curl)
		curl_easy_cleanup(curl);
	proc_exit(0);
}
