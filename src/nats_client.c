/*-------------------------------------------------------------------------
 *
 * nats_client.c
 *	  The only file of reliq that uses the NATS C client (cnats).
 *
 * Rules that keep a cnats client from harming a PostgreSQL backend:
 *
 * - cnats starts threads of its own (timers, socket reader, flusher,
 *   callback dispatchers); they inherit the signal mask of the thread that
 *   creates them.  Every call that may start a thread runs with all
 *   signals blocked (see BLOCK_SIGNALS), so PostgreSQL's signal handlers
 *   only ever run on the backend's main thread.
 * - Those threads never touch PostgreSQL state.  The callbacks below only
 *   update atomics in a malloc'd block that is never freed, because cnats
 *   may run a callback after the connection has been closed.
 * - Debian's cnats 3.4.1 natsSubscription_Fetch can write past its array
 *   (fixed upstream in 3.9.0), and natsMsg_Ack/Nak/Term crash on messages
 *   of a plain subscription.  So reliq pulls by hand: a plain synchronous
 *   subscription on one inbox per connection, shared by the consumers the
 *   worker serves, one pull request at a time per consumer published to
 *   $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>, and acks published to
 *   each message's reply subject.
 * - Every wait is bounded: by reliq.fetch_timeout for pulls and by
 *   reliq.nats_timeout for everything else.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <pthread.h>
#include <signal.h>

#include <nats/nats.h>

#include "common/hashfn.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "utils/fmgrprotos.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "nats_client.h"
#include "reliq.h"

/*
 * State the cnats threads write through callbacks.  malloc'd and never
 * freed: cnats may deliver the closed/disconnected callbacks after
 * natsConnection_Destroy has returned.
 */
typedef struct ConnectionEvents
{
	pg_atomic_uint32 connected;
	pg_atomic_uint64 reconnects;
	pg_atomic_uint64 async_errors;
} ConnectionEvents;

struct ReliqNatsConnection
{
	natsConnection *nc;
	jsCtx	   *js;
	kvStore    *kv;				/* the lease bucket, once opened */
	ConnectionEvents *events;
	uint32		settings_hash;	/* of the settings it was made with */
};

/*
 * cnats 3.4.1 (and 3.10) has no public way to read the server's version
 * from its INFO.  It makes the same decisions with this function (which
 * consumer-create subject to use, whether the server knows a feature),
 * exported by libnats with this signature since 2.x.
 */
extern bool natsConn_srvVersionAtLeast(natsConnection *nc, int major,
									   int minor, int update);

/* How long "paused" lasts on the server: until resumed, in practice. */
#define RELIQ_PAUSE_UNTIL "2100-01-01T00:00:00Z"

static char last_error[512];
static int	last_js_error = 0;
static int	last_sqlerrcode = 0;
static bool last_no_responders = false;

static ReliqNatsConnection *session_conn = NULL;
static bool session_exit_registered = false;

/*
 * Block every signal while cnats may create threads, so that the threads
 * start with all signals blocked; restore the backend's mask afterwards.
 */
#define BLOCK_SIGNALS(saved) \
	do { \
		sigset_t	block_all_; \
		sigfillset(&block_all_); \
		pthread_sigmask(SIG_SETMASK, &block_all_, &(saved)); \
	} while (0)
#define RESTORE_SIGNALS(saved) \
	pthread_sigmask(SIG_SETMASK, &(saved), NULL)

/*
 * cnats' last error text, without the "(file.c:123): " it starts with.
 */
static const char *
library_error_text(void)
{
	const char *detail = nats_GetLastError(NULL);

	if (detail != NULL && detail[0] == '(')
	{
		const char *end = strstr(detail, "): ");

		if (end != NULL)
			detail = end + 3;
	}
	return detail;
}

/*
 * The SQLSTATE a failure is reported with: JetStream missing, a stream or
 * consumer (or, for a publish, a stream capturing the subject) that does
 * not exist, a request the server refused, or else the connection.
 */
static int
sqlerrcode_of(natsStatus status, jsErrCode js_error, bool jetstream_missing)
{
	if (jetstream_missing)
		return ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE;
	if (status == NATS_NO_RESPONDERS || js_error == JSStreamNotFoundErr ||
		js_error == JSConsumerNotFoundErr)
		return ERRCODE_UNDEFINED_OBJECT;
	if (js_error != 0 || status == NATS_ERR)
		return ERRCODE_EXTERNAL_ROUTINE_EXCEPTION;
	return ERRCODE_CONNECTION_FAILURE;
}

static void
remember_error(const char *what, natsStatus status, jsErrCode js_error)
{
	const char *text = natsStatus_GetText(status);
	const char *detail = library_error_text();
	bool		jetstream_missing;

	last_js_error = (int) js_error;
	last_no_responders = (status == NATS_NO_RESPONDERS);
	jetstream_missing = (status == NATS_NO_RESPONDERS && strcmp(what, "publishing") != 0) ||
		js_error == JSNotEnabledForAccountErr || js_error == JSNotEnabledErr;
	last_sqlerrcode = sqlerrcode_of(status, js_error, jetstream_missing);
	if (jetstream_missing)
		snprintf(last_error, sizeof(last_error),
				 "%s: no JetStream API answered (is JetStream enabled on the server, and for this account?)",
				 what);
	else if (detail == NULL || detail[0] == '\0' || strcmp(detail, text) == 0)
		snprintf(last_error, sizeof(last_error), "%s: %s", what, text);
	else if (status == NATS_ERR)
		snprintf(last_error, sizeof(last_error), "%s: %s", what, detail);
	else
		snprintf(last_error, sizeof(last_error), "%s: %s (%s)",
				 what, text, detail);
	if (js_error != 0)
	{
		size_t		len = strlen(last_error);

		snprintf(last_error + len, sizeof(last_error) - len,
				 " [JetStream error %d]", (int) js_error);
	}
}

/* A failure cnats did not report, with the SQLSTATE to report it with. */
static void
remember_failure(int sqlerrcode, const char *message)
{
	last_js_error = 0;
	last_sqlerrcode = sqlerrcode;
	last_no_responders = false;
	strlcpy(last_error, message, sizeof(last_error));
}

/* Not connected, or the like. */
static void
remember_message(const char *message)
{
	remember_failure(ERRCODE_CONNECTION_FAILURE, message);
}

const char *
reliq_nats_last_error(void)
{
	return last_error;
}

int
reliq_nats_last_js_error(void)
{
	return last_js_error;
}

/* A publish nobody answered: no stream captures the subject. */
bool
reliq_nats_last_was_no_responders(void)
{
	return last_no_responders;
}

/* JetStream is off on the server, or for the account reliq uses. */
bool
reliq_nats_last_was_jetstream_missing(void)
{
	return last_js_error == JSNotEnabledForAccountErr ||
		last_js_error == JSNotEnabledErr ||
		(last_no_responders && strstr(last_error, "no JetStream API answered") != NULL);
}

/* The URL setting with any user:password@ removed, for messages. */
char *
reliq_nats_redacted_url(void)
{
	StringInfoData buf;
	const char *p = reliq_nats_url;

	initStringInfo(&buf);
	while (*p)
	{
		const char *end = strchr(p, ',');
		const char *scheme = strstr(p, "://");
		const char *at = strchr(p, '@');
		int			len = end ? end - p : strlen(p);

		if (at && (!end || at < end))
		{
			int			prefix = (scheme && scheme < at) ? scheme + 3 - p : 0;

			appendBinaryStringInfo(&buf, p, prefix);
			appendStringInfoString(&buf, "***@");
			appendBinaryStringInfo(&buf, at + 1, p + len - (at + 1));
		}
		else
			appendBinaryStringInfo(&buf, p, len);
		if (!end)
			break;
		appendStringInfoChar(&buf, ',');
		p = end + 1;
	}
	return buf.data;
}

/*
 * ereport the last failure: the one path from a NATS failure to an
 * ereport.  what is the message ("could not publish to subject ...").
 * sqlerrcode 0 takes the failure's own (see sqlerrcode_of).  detail NULL
 * is the failure as cnats and the server told it; a detail of the
 * caller's own is shown to the client and the failure goes to the server
 * log.  hint NULL gives the usual one for the failure, "" none.
 */
void
reliq_nats_report(int elevel, int sqlerrcode, const char *what,
				  const char *detail, const char *hint)
{
	int			own = last_sqlerrcode ? last_sqlerrcode : ERRCODE_CONNECTION_FAILURE;

	if (sqlerrcode == 0)
		sqlerrcode = own;
	if (hint == NULL && reliq_nats_last_was_jetstream_missing())
		hint = "Start nats-server with JetStream enabled (-js, or a jetstream block in its configuration), for the account reliq connects as.";
	else if (hint == NULL && own == ERRCODE_CONNECTION_FAILURE)
		hint = psprintf("Check reliq.nats_url (now \"%s\") and that nats-server is running.",
						reliq_nats_redacted_url());
	ereport(elevel,
			(errcode(sqlerrcode),
			 errmsg("%s", what),
			 errdetail("%s", detail ? detail : last_error),
			 detail ? errdetail_log("%s", last_error) : 0,
			 (hint && hint[0]) ? errhint("%s", hint) : 0));
}

/*
 * Connection
 */

static void
on_disconnected(natsConnection *nc, void *closure)
{
	ConnectionEvents *events = closure;

	pg_atomic_write_u32(&events->connected, 0);
}

static void
on_reconnected(natsConnection *nc, void *closure)
{
	ConnectionEvents *events = closure;

	pg_atomic_fetch_add_u64(&events->reconnects, 1);
	pg_atomic_write_u32(&events->connected, 1);
}

static void
on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err,
			   void *closure)
{
	ConnectionEvents *events = closure;

	pg_atomic_fetch_add_u64(&events->async_errors, 1);
}

static uint32
settings_hash(void)
{
	StringInfoData buf;
	uint32		hash;

	initStringInfo(&buf);
	appendStringInfo(&buf, "%s|%s|%s|%s|%s|%s|%s|%s|%d",
					 reliq_nats_url, reliq_nats_credentials_file,
					 reliq_nats_token, reliq_nats_user, reliq_nats_password,
					 reliq_nats_tls_ca_file, reliq_nats_tls_cert_file,
					 reliq_nats_tls_key_file, reliq_nats_timeout);
	hash = hash_bytes((unsigned char *) buf.data, buf.len);
	pfree(buf.data);
	return hash;
}

static bool
is_set(const char *setting)
{
	return setting != NULL && setting[0] != '\0';
}

/*
 * A secret setting's value: itself, or with "file:PATH" the first line of
 * that file (so that rotating it by reload does not put it in the server
 * log, where the postmaster reports every changed setting).  NULL, with
 * last_error set, when the file cannot be read or holds what the NATS
 * client cannot send.
 */
static char *
secret_value(const char *setting, const char *name)
{
	FILE	   *file;
	char		line[1024];
	size_t		len;

	if (strncmp(setting, "file:", 5) != 0)
		return pstrdup(setting);
	file = AllocateFile(setting + 5, "r");
	if (file == NULL)
	{
		snprintf(last_error, sizeof(last_error),
				 "could not read the file of %s \"%s\": %s",
				 name, setting + 5, strerror(errno));
		return NULL;
	}
	if (fgets(line, sizeof(line), file) == NULL)
		line[0] = '\0';
	FreeFile(file);
	len = strcspn(line, "\r\n");
	line[len] = '\0';
	if (strpbrk(line, "\"\\") != NULL)
	{
		snprintf(last_error, sizeof(last_error),
				 "the file of %s holds a double quote or a backslash, which the NATS C client cannot send",
				 name);
		return NULL;
	}
	return pstrdup(line);
}

/* natsOptions from the reliq.nats_* settings. */
static natsStatus
build_options(natsOptions *opts, const char *client_name,
			  ConnectionEvents *events)
{
	natsStatus	s = NATS_OK;
	char	   *urls = pstrdup(reliq_nats_url);
	const char *servers[64];
	int			nservers = 0;
	char	   *token;
	char	   *saveptr = NULL;
	bool		secure = false;

	for (token = strtok_r(urls, ", ", &saveptr);
		 token != NULL && nservers < lengthof(servers);
		 token = strtok_r(NULL, ", ", &saveptr))
	{
		servers[nservers++] = token;
		if (strncmp(token, "tls://", 6) == 0)
			secure = true;
	}
	if (nservers == 0)
		return NATS_INVALID_ARG;

	s = natsOptions_SetServers(opts, servers, nservers);
	if (s == NATS_OK)
		s = natsOptions_SetName(opts, client_name);
	if (s == NATS_OK)
		s = natsOptions_SetTimeout(opts, reliq_nats_timeout);
	/* A frozen server is noticed after two unanswered pings. */
	if (s == NATS_OK)
		s = natsOptions_SetPingInterval(opts, reliq_nats_timeout);
	if (s == NATS_OK)
		s = natsOptions_SetMaxPingsOut(opts, 2);
	/* Reconnect forever; the worker decides what to do meanwhile. */
	if (s == NATS_OK)
		s = natsOptions_SetAllowReconnect(opts, true);
	if (s == NATS_OK)
		s = natsOptions_SetMaxReconnect(opts, -1);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectWait(opts, Max(reliq_nats_timeout / 4, 1));
	if (s == NATS_OK)
		s = natsOptions_SetDisconnectedCB(opts, on_disconnected, events);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectedCB(opts, on_reconnected, events);
	if (s == NATS_OK)
		s = natsOptions_SetErrorHandler(opts, on_async_error, events);

	if (s == NATS_OK && is_set(reliq_nats_credentials_file))
		s = natsOptions_SetUserCredentialsFromFiles(opts,
													reliq_nats_credentials_file,
													NULL);
	if (s == NATS_OK && is_set(reliq_nats_token))
	{
		char	   *secret = secret_value(reliq_nats_token, "reliq.nats_token");

		s = secret ? natsOptions_SetToken(opts, secret) : NATS_INVALID_ARG;
	}
	if (s == NATS_OK && is_set(reliq_nats_user))
	{
		char	   *password = is_set(reliq_nats_password) ?
			secret_value(reliq_nats_password, "reliq.nats_password") : NULL;

		if (is_set(reliq_nats_password) && password == NULL)
			s = NATS_INVALID_ARG;
		else
			s = natsOptions_SetUserInfo(opts, reliq_nats_user, password);
	}

	if (is_set(reliq_nats_tls_ca_file) || is_set(reliq_nats_tls_cert_file))
		secure = true;
	if (s == NATS_OK && secure)
		s = natsOptions_SetSecure(opts, true);
	if (s == NATS_OK && is_set(reliq_nats_tls_ca_file))
		s = natsOptions_LoadCATrustedCertificates(opts, reliq_nats_tls_ca_file);
	if (s == NATS_OK && is_set(reliq_nats_tls_cert_file))
		s = natsOptions_LoadCertificatesChain(opts, reliq_nats_tls_cert_file,
											  reliq_nats_tls_key_file);
	return s;
}

/*
 * Connect with the current reliq.nats_* settings.  Returns NULL on
 * failure (reason in reliq_nats_last_error()).  The connection then keeps
 * itself connected: cnats reconnects on its own, forever.
 */
ReliqNatsConnection *
reliq_nats_connect(const char *client_name)
{
	ReliqNatsConnection *conn;
	ConnectionEvents *events;
	natsOptions *opts = NULL;
	jsOptions	js_opts;
	natsStatus	s;
	sigset_t	saved;

	events = malloc(sizeof(ConnectionEvents));
	if (events == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	pg_atomic_init_u32(&events->connected, 0);
	pg_atomic_init_u64(&events->reconnects, 0);
	pg_atomic_init_u64(&events->async_errors, 0);

	conn = MemoryContextAllocZero(TopMemoryContext, sizeof(*conn));
	conn->events = events;
	conn->settings_hash = settings_hash();

	BLOCK_SIGNALS(saved);
	s = natsOptions_Create(&opts);
	if (s == NATS_OK)
	{
		last_error[0] = '\0';
		s = build_options(opts, client_name, events);
	}
	if (s != NATS_OK && last_error[0] == '\0')
		remember_error("configuring the NATS connection", s, 0);
	else
	{
		s = natsConnection_Connect(&conn->nc, opts);
		if (s != NATS_OK)
			remember_error("connecting to NATS", s, 0);
	}
	if (s == NATS_OK)
	{
		jsOptions_Init(&js_opts);
		js_opts.Wait = reliq_nats_timeout;
		s = natsConnection_JetStream(&conn->js, conn->nc, &js_opts);
		if (s != NATS_OK)
			remember_error("opening the JetStream context", s, 0);
	}
	if (s != NATS_OK && conn->nc != NULL)
	{
		natsConnection_Destroy(conn->nc);
		conn->nc = NULL;
	}
	natsOptions_Destroy(opts);
	RESTORE_SIGNALS(saved);

	if (s != NATS_OK)
	{
		pfree(conn);
		return NULL;
	}
	pg_atomic_write_u32(&events->connected, 1);
	return conn;
}

void
reliq_nats_close(ReliqNatsConnection *conn)
{
	sigset_t	saved;

	if (conn == NULL)
		return;
	if (conn == session_conn)
		session_conn = NULL;
	BLOCK_SIGNALS(saved);
	if (conn->kv)
		kvStore_Destroy(conn->kv);
	if (conn->js)
		jsCtx_Destroy(conn->js);
	if (conn->nc)
	{
		natsConnection_Close(conn->nc);
		natsConnection_Destroy(conn->nc);
	}
	RESTORE_SIGNALS(saved);
	pg_atomic_write_u32(&conn->events->connected, 0);
	pfree(conn);
}

bool
reliq_nats_is_connected(ReliqNatsConnection *conn)
{
	return conn != NULL && pg_atomic_read_u32(&conn->events->connected) != 0;
}

uint64
reliq_nats_reconnect_count(ReliqNatsConnection *conn)
{
	return pg_atomic_read_u64(&conn->events->reconnects);
}

/* Did a reload change the settings this connection was made with? */
bool
reliq_nats_settings_changed(ReliqNatsConnection *conn)
{
	return conn->settings_hash != settings_hash();
}

static void
close_session_connection(int code, Datum arg)
{
	if (session_conn != NULL)
		reliq_nats_close(session_conn);
}

/*
 * The connection SQL functions of this process use (reliq.publish and
 * friends).  In a worker it is the worker's own connection; in a backend
 * it is made on first use and kept until the backend exits.
 */
ReliqNatsConnection *
reliq_nats_session_connection(void)
{
	if (session_conn != NULL && reliq_nats_settings_changed(session_conn))
		reliq_nats_close(session_conn);
	if (session_conn == NULL)
	{
		char		name[64];

		snprintf(name, sizeof(name), "reliq backend %d", MyProcPid);
		session_conn = reliq_nats_connect(name);
		if (session_conn == NULL)
			reliq_nats_report(ERROR, ERRCODE_CONNECTION_FAILURE,
							  psprintf("could not connect to NATS at \"%s\"",
									   reliq_nats_redacted_url()),
							  NULL, NULL);
		if (!session_exit_registered)
		{
			on_proc_exit(close_session_connection, (Datum) 0);
			session_exit_registered = true;
		}
	}
	return session_conn;
}

/* The session's connection, without making one. */
ReliqNatsConnection *
reliq_nats_session_connection_if_any(void)
{
	return session_conn;
}

void
reliq_nats_adopt_session_connection(ReliqNatsConnection *conn)
{
	session_conn = conn;
	if (conn != NULL && !session_exit_registered)
	{
		on_proc_exit(close_session_connection, (Datum) 0);
		session_exit_registered = true;
	}
}

/*
 * Streams and consumers
 */

static void
init_js_options(jsOptions *opts)
{
	jsOptions_Init(opts);
	opts->Wait = reliq_nats_timeout;
}

bool
reliq_nats_stream_info(ReliqNatsConnection *conn, const char *stream,
					   ReliqStreamInfo *info)
{
	jsStreamInfo *si = NULL;
	jsOptions	opts;
	jsErrCode	js_error = 0;
	natsStatus	s;
	sigset_t	saved;

	memset(info, 0, sizeof(*info));
	init_js_options(&opts);
	BLOCK_SIGNALS(saved);
	s = js_GetStreamInfo(&si, conn->js, stream, &opts, &js_error);
	RESTORE_SIGNALS(saved);

	/* 2.9 answers a missing stream with an error, code 10059 */
	if (s == NATS_NOT_FOUND || js_error == RELIQ_JS_STREAM_NOT_FOUND)
	{
		remember_error("looking up the stream", s, js_error);
		return true;
	}
	if (s != NATS_OK)
	{
		remember_error("looking up the stream", s, js_error);
		return false;
	}
	info->found = true;
	info->created_ns = si->Created;
	info->first_seq = (int64) si->State.FirstSeq;
	info->last_seq = (int64) si->State.LastSeq;
	info->messages = (int64) si->State.Msgs;
	info->replicas = si->Config ? (int) si->Config->Replicas : 1;
	if (si->Config && si->Config->SubjectsLen > 0)
	{
		int			i;

		info->nsubjects = si->Config->SubjectsLen;
		info->subjects = palloc(sizeof(char *) * info->nsubjects);
		for (i = 0; i < info->nsubjects; i++)
			info->subjects[i] = pstrdup(si->Config->Subjects[i]);
	}
	switch (si->Config ? si->Config->Retention : js_LimitsPolicy)
	{
		case js_InterestPolicy:
			info->retention = "interest";
			break;
		case js_WorkQueuePolicy:
			info->retention = "workqueue";
			break;
		default:
			info->retention = "limits";
			break;
	}
	info->redelivers = (strcmp(info->retention, "limits") == 0);
	jsStreamInfo_Destroy(si);
	return true;
}

/*
 * Create the stream with `replicas` copies (file storage), or set its
 * subjects if it exists (an existing stream keeps its replicas).
 */
bool
reliq_nats_create_stream(ReliqNatsConnection *conn, const char *stream,
						 const char **subjects, int nsubjects, int replicas,
						 bool *created)
{
	jsStreamInfo *si = NULL;
	jsStreamInfo *result = NULL;
	jsOptions	opts;
	jsErrCode	js_error = 0;
	natsStatus	s;
	sigset_t	saved;

	init_js_options(&opts);
	BLOCK_SIGNALS(saved);
	s = js_GetStreamInfo(&si, conn->js, stream, &opts, &js_error);
	if (s == NATS_NOT_FOUND)
	{
		jsStreamConfig cfg;

		jsStreamConfig_Init(&cfg);
		cfg.Name = stream;
		cfg.Subjects = subjects;
		cfg.SubjectsLen = nsubjects;
		cfg.Storage = js_FileStorage;
		cfg.Replicas = replicas;
		js_error = 0;
		s = js_AddStream(&result, conn->js, &cfg, &opts, &js_error);
		*created = true;
		if (s != NATS_OK)
			remember_error("creating the stream", s, js_error);
	}
	else if (s == NATS_OK)
	{
		const char **old_subjects = si->Config->Subjects;
		int			old_len = si->Config->SubjectsLen;

		si->Config->Subjects = subjects;
		si->Config->SubjectsLen = nsubjects;
		js_error = 0;
		s = js_UpdateStream(&result, conn->js, si->Config, &opts, &js_error);
		/* give cnats its own array back before it frees the info */
		si->Config->Subjects = old_subjects;
		si->Config->SubjectsLen = old_len;
		*created = false;
		if (s != NATS_OK)
			remember_error("updating the stream", s, js_error);
	}
	else
		remember_error("looking up the stream", s, js_error);
	if (si)
		jsStreamInfo_Destroy(si);
	if (result)
		jsStreamInfo_Destroy(result);
	RESTORE_SIGNALS(saved);
	return s == NATS_OK;
}

static void
copy_consumer_info(const jsConsumerInfo *ci, ReliqConsumerInfo *info)
{
	info->found = true;
	info->created_ns = ci->Created;
	info->ack_floor_stream_seq = (int64) ci->AckFloor.Stream;
	info->delivered_stream_seq = (int64) ci->Delivered.Stream;
	info->num_pending = (int64) ci->NumPending;
	info->num_ack_pending = ci->NumAckPending;
	info->num_redelivered = ci->NumRedelivered;
	info->num_waiting = ci->NumWaiting;
	info->max_ack_pending = ci->Config ? ci->Config->MaxAckPending : 0;
}

/*
 * Consumer information.  Returns true with info->found = false when the
 * consumer (or its stream: see reliq_nats_last_js_error()) does not exist.
 */
bool
reliq_nats_consumer_info(ReliqNatsConnection *conn, const char *stream,
						 const char *consumer, ReliqConsumerInfo *info)
{
	jsConsumerInfo *ci = NULL;
	jsOptions	opts;
	jsErrCode	js_error = 0;
	natsStatus	s;
	sigset_t	saved;

	memset(info, 0, sizeof(*info));
	init_js_options(&opts);
	BLOCK_SIGNALS(saved);
	s = js_GetConsumerInfo(&ci, conn->js, stream, consumer, &opts, &js_error);
	RESTORE_SIGNALS(saved);

	if (s == NATS_NOT_FOUND || js_error == RELIQ_JS_CONSUMER_NOT_FOUND ||
		js_error == RELIQ_JS_STREAM_NOT_FOUND)
	{
		remember_error("looking up the consumer", s, js_error);
		return true;
	}
	if (s != NATS_OK)
	{
		remember_error("looking up the consumer", s, js_error);
		return false;
	}
	copy_consumer_info(ci, info);
	jsConsumerInfo_Destroy(ci);
	return true;
}

/* A number of a consumer-information object; 0 when absent. */
static int64
json_int_at(JsonbContainer *object, const char *key)
{
	JsonbValue	v;

	if (object == NULL ||
		getKeyJsonValueFromContainer(object, key, strlen(key), &v) == NULL ||
		v.type != jbvNumeric)
		return 0;
	return DatumGetInt64(DirectFunctionCall1(numeric_int8,
											 NumericGetDatum(v.val.numeric)));
}

/* A boolean of an object; false when absent. */
static bool
json_bool_at(JsonbContainer *object, const char *key)
{
	JsonbValue	v;

	return object != NULL &&
		getKeyJsonValueFromContainer(object, key, strlen(key), &v) != NULL &&
		v.type == jbvBool && v.val.boolean;
}

/* An object field of an object, or NULL. */
static JsonbContainer *
json_object_at(JsonbContainer *object, const char *key)
{
	JsonbValue	v;

	if (object == NULL ||
		getKeyJsonValueFromContainer(object, key, strlen(key), &v) == NULL ||
		v.type != jbvBinary || !JsonContainerIsObject(v.val.binary.data))
		return NULL;
	return v.val.binary.data;
}

/*
 * The figures of many consumers of one stream, in a few requests: the
 * pages of $JS.API.CONSUMER.LIST.<stream> (256 consumers each on 2.9),
 * instead of a consumer-information request per consumer.  infos[i] is for
 * consumers[i]; found is false for one not on the list.  False when a
 * page could not be had (reliq_nats_last_error() says why); a stream that
 * does not exist lists nothing.  (cnats's js_Consumers does the same, but
 * crashed here with a thousand consumers.)
 */
bool
reliq_nats_consumer_infos(ReliqNatsConnection *conn, const char *stream,
						  const char **consumers, int count,
						  ReliqConsumerInfo *infos)
{
	char	   *subject = psprintf("$JS.API.CONSUMER.LIST.%s", stream);
	int64		offset = 0;
	int64		total = 0;
	HTAB	   *wanted;
	HASHCTL		ctl;
	int			i;

	memset(infos, 0, sizeof(ReliqConsumerInfo) * count);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = NAMEDATALEN * 2;
	ctl.entrysize = ctl.keysize + sizeof(int);
	ctl.hcxt = CurrentMemoryContext;
	wanted = hash_create("reliq consumers listed", Max(count, 16), &ctl,
						 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	for (i = 0; i < count; i++)
	{
		char		key[NAMEDATALEN * 2];
		char	   *entry;

		strlcpy(key, consumers[i], sizeof(key));
		entry = hash_search(wanted, key, HASH_ENTER, NULL);
		memcpy(entry + ctl.keysize, &i, sizeof(int));
	}

	do
	{
		char		body[64];
		natsMsg    *reply = NULL;
		natsStatus	s;
		sigset_t	saved;
		Jsonb	   *page;
		JsonbValue	v;
		JsonbContainer *error;
		JsonbContainer *list = NULL;
		int			n;

		snprintf(body, sizeof(body), "{\"offset\":" INT64_FORMAT "}", offset);
		BLOCK_SIGNALS(saved);
		s = natsConnection_Request(&reply, conn->nc, subject, body, strlen(body),
								   reliq_nats_timeout);
		RESTORE_SIGNALS(saved);
		if (s != NATS_OK)
		{
			remember_error("listing the consumers", s, 0);
			return false;
		}
		page = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
												  CStringGetDatum(pnstrdup(natsMsg_GetData(reply),
																		   natsMsg_GetDataLength(reply)))));
		natsMsg_Destroy(reply);
		if (!JB_ROOT_IS_OBJECT(page))
		{
			remember_message("the consumer list is not a JSON object");
			return false;
		}
		error = json_object_at(&page->root, "error");
		if (error != NULL)
		{
			int64		code = json_int_at(error, "err_code");

			if (code == RELIQ_JS_STREAM_NOT_FOUND)
				return true;
			remember_message(psprintf("listing the consumers: JetStream error " INT64_FORMAT, code));
			last_js_error = (int) code;
			return false;
		}
		total = json_int_at(&page->root, "total");
		if (getKeyJsonValueFromContainer(&page->root, "consumers", 9, &v) != NULL &&
			v.type == jbvBinary && JsonContainerIsArray(v.val.binary.data))
			list = v.val.binary.data;
		n = list ? JsonContainerSize(list) : 0;
		for (i = 0; i < n; i++)
		{
			JsonbValue *element = getIthJsonbValueFromContainer(list, i);
			JsonbContainer *ci;
			JsonbValue	name;
			char		key[NAMEDATALEN * 2];
			char	   *entry;
			int			index;
			ReliqConsumerInfo *info;

			if (element == NULL || element->type != jbvBinary ||
				!JsonContainerIsObject(element->val.binary.data))
				continue;
			ci = element->val.binary.data;
			if (getKeyJsonValueFromContainer(ci, "name", 4, &name) == NULL ||
				name.type != jbvString || name.val.string.len >= (int) sizeof(key))
				continue;
			memcpy(key, name.val.string.val, name.val.string.len);
			key[name.val.string.len] = '\0';
			entry = hash_search(wanted, key, HASH_FIND, NULL);
			if (entry == NULL)
				continue;
			memcpy(&index, entry + ctl.keysize, sizeof(int));
			info = &infos[index];
			info->found = true;
			info->ack_floor_stream_seq = json_int_at(json_object_at(ci, "ack_floor"), "stream_seq");
			info->delivered_stream_seq = json_int_at(json_object_at(ci, "delivered"), "stream_seq");
			info->num_pending = json_int_at(ci, "num_pending");
			info->num_ack_pending = json_int_at(ci, "num_ack_pending");
			info->num_redelivered = json_int_at(ci, "num_redelivered");
			info->num_waiting = json_int_at(ci, "num_waiting");
			info->max_ack_pending = json_int_at(json_object_at(ci, "config"), "max_ack_pending");
			/* 2.11+ says "paused": true; absent means not paused */
			info->paused_known = true;
			info->paused = json_bool_at(ci, "paused");
		}
		if (n == 0)
			break;
		offset += n;
	} while (offset < total);
	return true;
}

/*
 * Is the server this connection is connected to (as its INFO said) of
 * this version or newer?  Features of newer servers are used only then.
 */
bool
reliq_nats_server_at_least(ReliqNatsConnection *conn, int major, int minor)
{
	return conn != NULL && reliq_nats_is_connected(conn) &&
		natsConn_srvVersionAtLeast(conn->nc, major, minor, 0);
}

/*
 * A request to the JetStream API whose answer is a JSON object; NULL
 * (reason remembered) when there is no answer or it is an error.
 */
static Jsonb *
js_api_request(ReliqNatsConnection *conn, const char *subject,
			   const char *body, const char *what)
{
	natsMsg    *reply = NULL;
	natsStatus	s;
	sigset_t	saved;
	char	   *text;
	Jsonb	   *answer;
	JsonbContainer *error;

	BLOCK_SIGNALS(saved);
	s = natsConnection_Request(&reply, conn->nc, subject, body, strlen(body),
							   reliq_nats_timeout);
	RESTORE_SIGNALS(saved);
	if (s != NATS_OK)
	{
		remember_error(what, s, 0);
		return NULL;
	}
	text = pnstrdup(natsMsg_GetData(reply), natsMsg_GetDataLength(reply));
	natsMsg_Destroy(reply);
	answer = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text)));
	if (!JB_ROOT_IS_OBJECT(answer))
	{
		remember_message(psprintf("%s: the answer is not a JSON object", what));
		return NULL;
	}
	error = json_object_at(&answer->root, "error");
	if (error != NULL)
	{
		JsonbValue	v;
		int64		code = json_int_at(error, "err_code");
		char	   *description = "";

		if (getKeyJsonValueFromContainer(error, "description", 11, &v) != NULL &&
			v.type == jbvString)
			description = pnstrdup(v.val.string.val, v.val.string.len);
		remember_failure(code == RELIQ_JS_CONSUMER_NOT_FOUND ||
						 code == RELIQ_JS_STREAM_NOT_FOUND ?
						 ERRCODE_UNDEFINED_OBJECT : ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
						 psprintf("%s: %s [JetStream error " INT64_FORMAT "]",
								  what, description, code));
		last_js_error = (int) code;
		return NULL;
	}
	return answer;
}

/*
 * Name the owning instance and its lease epoch in the consumer's metadata
 * (nats-server 2.10+), so that whoever looks at the consumer on the server
 * sees which cluster consumes it.  cnats 3.4.1 knows no metadata: the
 * consumer's configuration as the server has it is sent back with the
 * metadata changed, through the same create-or-update request cnats uses.
 * The server's own "_nats." keys are left to the server.  Nothing is sent
 * when the metadata already says so.
 */
static bool
set_owner_metadata(ReliqNatsConnection *conn, const ReliqConsumerSpec *spec)
{
	const char *keys[] = {"reliq.instance", "reliq.epoch"};
	const char *values[2];
	Jsonb	   *info;
	JsonbValue	config_value;
	JsonbContainer *config;
	JsonbContainer *metadata;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken token;
	StringInfoData body;
	bool		same = true;
	bool		first = true;
	int			i;

	values[0] = spec->owner_instance;
	values[1] = psprintf(UINT64_FORMAT, spec->owner_epoch);
	info = js_api_request(conn, psprintf("$JS.API.CONSUMER.INFO.%s.%s",
										 spec->stream, spec->consumer),
						  "", "looking up the consumer");
	if (info == NULL)
		return false;
	if (getKeyJsonValueFromContainer(&info->root, "config", 6, &config_value) == NULL ||
		config_value.type != jbvBinary ||
		!JsonContainerIsObject(config_value.val.binary.data))
	{
		remember_message("the consumer information has no configuration");
		return false;
	}
	config = config_value.val.binary.data;
	metadata = json_object_at(config, "metadata");
	for (i = 0; i < lengthof(keys); i++)
	{
		if (metadata == NULL ||
			getKeyJsonValueFromContainer(metadata, keys[i], strlen(keys[i]), &v) == NULL ||
			v.type != jbvString || v.val.string.len != strlen(values[i]) ||
			memcmp(v.val.string.val, values[i], v.val.string.len) != 0)
			same = false;
	}
	if (same)
		return true;

	/* the metadata: the user's keys as they are, then ours */
	initStringInfo(&body);
	appendStringInfoString(&body, "{");
	if (metadata != NULL)
	{
		char	   *key = NULL;

		it = JsonbIteratorInit(metadata);
		while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			if (token == WJB_KEY)
				key = pnstrdup(v.val.string.val, v.val.string.len);
			else if (token == WJB_VALUE && v.type == jbvString &&
					 strncmp(key, "_nats.", 6) != 0 &&
					 strcmp(key, keys[0]) != 0 && strcmp(key, keys[1]) != 0)
			{
				if (!first)
					appendStringInfoChar(&body, ',');
				escape_json(&body, key);
				appendStringInfoChar(&body, ':');
				escape_json(&body, pnstrdup(v.val.string.val, v.val.string.len));
				first = false;
			}
		}
	}
	for (i = 0; i < lengthof(keys); i++)
	{
		if (!first)
			appendStringInfoChar(&body, ',');
		escape_json(&body, keys[i]);
		appendStringInfoChar(&body, ':');
		escape_json(&body, values[i]);
		first = false;
	}
	appendStringInfoChar(&body, '}');

	{
		Jsonb	   *config_jsonb;
		Jsonb	   *with_metadata;
		char	   *request;

		config_jsonb = JsonbValueToJsonb(&config_value);
		with_metadata = DatumGetJsonbP(DirectFunctionCall2(jsonb_concat,
														   JsonbPGetDatum(config_jsonb),
														   DirectFunctionCall1(jsonb_in,
																			   CStringGetDatum(psprintf("{\"metadata\":%s}", body.data)))));
		resetStringInfo(&body);
		appendStringInfoString(&body, "{\"stream_name\":");
		escape_json(&body, spec->stream);
		appendStringInfo(&body, ",\"config\":%s}",
						 JsonbToCString(NULL, &with_metadata->root, VARSIZE(with_metadata)));
		request = psprintf("$JS.API.CONSUMER.CREATE.%s.%s", spec->stream,
						   spec->consumer);
		return js_api_request(conn, request, body.data,
							  "updating the consumer's metadata") != NULL;
	}
}

/*
 * Pause the consumer on the server until far in the future, or resume it
 * (nats-server 2.11+: $JS.API.CONSUMER.PAUSE.<stream>.<consumer>; an empty
 * request resumes).  The caller checks the server's version.
 */
bool
reliq_nats_pause_consumer(ReliqNatsConnection *conn, const char *stream,
						  const char *consumer, bool pause)
{
	Jsonb	   *answer;

	answer = js_api_request(conn, psprintf("$JS.API.CONSUMER.PAUSE.%s.%s",
										   stream, consumer),
							pause ? "{\"pause_until\":\"" RELIQ_PAUSE_UNTIL "\"}" : "",
							pause ? "pausing the consumer" : "resuming the consumer");
	if (answer == NULL)
		return false;
	if (json_bool_at(&answer->root, "paused") != pause)
	{
		remember_message(pause ? "the server did not pause the consumer" :
						 "the server did not resume the consumer");
		return false;
	}
	return true;
}

/*
 * Make the durable consumer match spec: create it if missing, update what
 * differs otherwise.  Explicit acks; MaxDeliver unlimited, because reliq
 * counts deliveries itself and dead-letters (a server-side limit would
 * silently drop a message whose last delivery died with its worker).
 */
bool
reliq_nats_ensure_consumer(ReliqNatsConnection *conn,
						   const ReliqConsumerSpec *spec,
						   ReliqConsumerInfo *info, bool *created)
{
	jsConsumerInfo *ci = NULL;
	jsConsumerInfo *result = NULL;
	jsOptions	opts;
	jsErrCode	js_error = 0;
	natsStatus	s;
	sigset_t	saved;
	int64		ack_wait_ns = spec->ack_wait_ms * 1000000;
	bool		ok = false;
	int			attempt;

	memset(info, 0, sizeof(*info));
	*created = false;
	init_js_options(&opts);
	BLOCK_SIGNALS(saved);

	/* Two rounds: another worker may create it between our look and add. */
	for (attempt = 0; attempt < 2 && !ok; attempt++)
	{
		js_error = 0;
		s = js_GetConsumerInfo(&ci, conn->js, spec->stream, spec->consumer,
							   &opts, &js_error);
		if (js_error == RELIQ_JS_STREAM_NOT_FOUND)
		{
			remember_failure(ERRCODE_UNDEFINED_OBJECT,
							 psprintf("stream \"%s\" does not exist", spec->stream));
			last_js_error = js_error;
			break;
		}
		if (s == NATS_NOT_FOUND || js_error == RELIQ_JS_CONSUMER_NOT_FOUND)
		{
			jsConsumerConfig cfg;

			jsConsumerConfig_Init(&cfg);
			cfg.Durable = spec->consumer;
			cfg.Description = spec->description;
			cfg.AckPolicy = js_AckExplicit;
			cfg.AckWait = ack_wait_ns;
			cfg.MaxDeliver = -1;
			cfg.FilterSubject = spec->filter_subject;
			cfg.MaxAckPending = spec->max_ack_pending;
			switch (spec->deliver_from)
			{
				case RELIQ_DELIVER_ALL:
					cfg.DeliverPolicy = js_DeliverAll;
					break;
				case RELIQ_DELIVER_NEW:
					cfg.DeliverPolicy = js_DeliverNew;
					break;
				case RELIQ_DELIVER_FROM_SEQ:
					cfg.DeliverPolicy = js_DeliverByStartSequence;
					cfg.OptStartSeq = (uint64) spec->start_seq;
					break;
				case RELIQ_DELIVER_FROM_TIME:
					cfg.DeliverPolicy = js_DeliverByStartTime;
					cfg.OptStartTime = spec->start_time_ns;
					break;
			}
			js_error = 0;
			s = js_AddConsumer(&result, conn->js, spec->stream, &cfg, &opts,
							   &js_error);
			if (s == NATS_OK)
			{
				*created = true;
				copy_consumer_info(result, info);
				ok = true;
			}
			else
				remember_error("creating the consumer", s, js_error);
		}
		else if (s != NATS_OK)
		{
			remember_error("looking up the consumer", s, js_error);
			break;
		}
		else if (ci->Config->AckPolicy != js_AckExplicit ||
				 (ci->Config->DeliverSubject != NULL &&
				  ci->Config->DeliverSubject[0] != '\0'))
		{
			remember_failure(ERRCODE_INVALID_PARAMETER_VALUE,
							 "the consumer exists but is not a pull consumer with explicit acks");
			break;
		}
		else
		{
			jsConsumerConfig *cfg = ci->Config;
			const char *old_filter = cfg->FilterSubject;
			bool		same = (old_filter != NULL &&
								strcmp(old_filter, spec->filter_subject) == 0 &&
								cfg->AckWait == ack_wait_ns &&
								cfg->MaxDeliver == -1 &&
								cfg->MaxAckPending == spec->max_ack_pending);

			if (same)
			{
				copy_consumer_info(ci, info);
				ok = true;
			}
			else
			{
				cfg->FilterSubject = spec->filter_subject;
				cfg->AckWait = ack_wait_ns;
				cfg->MaxDeliver = -1;
				cfg->MaxAckPending = spec->max_ack_pending;
				js_error = 0;
				s = js_UpdateConsumer(&result, conn->js, spec->stream, cfg,
									  &opts, &js_error);
				/* give cnats its own string back before it frees the info */
				cfg->FilterSubject = old_filter;
				if (s == NATS_OK)
				{
					copy_consumer_info(result, info);
					ok = true;
				}
				else
					remember_error("updating the consumer", s, js_error);
			}
		}
		if (ci)
		{
			jsConsumerInfo_Destroy(ci);
			ci = NULL;
		}
		if (result)
		{
			jsConsumerInfo_Destroy(result);
			result = NULL;
		}
		/* only a lost race to create is worth a second round */
		if (!ok && js_error != JSConsumerNameExistErr)
			break;
	}
	RESTORE_SIGNALS(saved);
	if (ok && spec->owner_instance != NULL &&
		reliq_nats_server_at_least(conn, 2, 10) &&
		!set_owner_metadata(conn, spec))
		reliq_nats_report(WARNING, 0,
						  psprintf("could not write the owner into the metadata of consumer \"%s\" of stream \"%s\"",
								   spec->consumer, spec->stream),
						  NULL, "");
	return ok;
}

bool
reliq_nats_delete_consumer(ReliqNatsConnection *conn, const char *stream,
						   const char *consumer, bool *existed)
{
	jsOptions	opts;
	jsErrCode	js_error = 0;
	natsStatus	s;
	sigset_t	saved;

	init_js_options(&opts);
	BLOCK_SIGNALS(saved);
	s = js_DeleteConsumer(conn->js, stream, consumer, &opts, &js_error);
	RESTORE_SIGNALS(saved);
	*existed = (s == NATS_OK);
	if (s == NATS_OK || s == NATS_NOT_FOUND ||
		js_error == RELIQ_JS_CONSUMER_NOT_FOUND ||
		js_error == RELIQ_JS_STREAM_NOT_FOUND)
		return true;
	remember_error("deleting the consumer", s, js_error);
	return false;
}

/*
 * The lease bucket
 */

/*
 * Bind to the bucket, creating it when missing: history 1, file storage,
 * three replicas where the server is part of a cluster (one otherwise).
 */
bool
reliq_nats_kv_open(ReliqNatsConnection *conn, const char *bucket)
{
	kvConfig	cfg;
	natsStatus	s;
	sigset_t	saved;

	if (conn->kv != NULL)
		return true;
	BLOCK_SIGNALS(saved);
	s = js_KeyValue(&conn->kv, conn->js, bucket);
	if (s == NATS_NOT_FOUND)
	{
		kvConfig_Init(&cfg);
		cfg.Bucket = bucket;
		cfg.Description = "reliq: which PostgreSQL cluster owns each consumer";
		cfg.History = 1;
		cfg.StorageType = js_FileStorage;
		cfg.Replicas = 3;
		s = js_CreateKeyValue(&conn->kv, conn->js, &cfg);
		if (s != NATS_OK)
		{
			/* a single server refuses replicas: one copy then */
			cfg.Replicas = 1;
			s = js_CreateKeyValue(&conn->kv, conn->js, &cfg);
		}
		if (s != NATS_OK)
			remember_error("creating the lease bucket", s, 0);
	}
	else if (s != NATS_OK)
		remember_error("opening the lease bucket", s, 0);
	RESTORE_SIGNALS(saved);
	if (s != NATS_OK)
		conn->kv = NULL;
	return s == NATS_OK;
}

/*
 * The value and revision of a key; *revision = 0 (and *value NULL) when the
 * key does not exist or was deleted.  false when the server could not tell.
 */
bool
reliq_nats_kv_get(ReliqNatsConnection *conn, const char *key, char **value,
				  uint64 *revision)
{
	kvEntry    *entry = NULL;
	natsStatus	s;
	sigset_t	saved;

	*value = NULL;
	*revision = 0;
	if (conn->kv == NULL)
	{
		remember_failure(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
						 "the lease bucket is not open");
		return false;
	}
	BLOCK_SIGNALS(saved);
	s = kvStore_Get(&entry, conn->kv, key);
	if (s == NATS_OK)
	{
		*value = pstrdup(kvEntry_ValueString(entry) ? kvEntry_ValueString(entry) : "");
		*revision = kvEntry_Revision(entry);
		kvEntry_Destroy(entry);
	}
	RESTORE_SIGNALS(saved);
	if (s == NATS_NOT_FOUND)
		return true;
	if (s != NATS_OK)
		remember_error("reading a lease", s, 0);
	return s == NATS_OK;
}

/*
 * Write a key if its current revision is `expected` (0: if it does not
 * exist).  A refusal is a conflict only if the key turns out not to be at
 * `expected`; otherwise the write failed for another reason.
 */
ReliqKvResult
reliq_nats_kv_put(ReliqNatsConnection *conn, const char *key,
				  const char *value, uint64 expected, uint64 *revision)
{
	uint64_t	rev = 0;
	natsStatus	s;
	sigset_t	saved;
	char	   *current;
	uint64		current_rev;

	if (conn->kv == NULL)
	{
		remember_failure(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
						 "the lease bucket is not open");
		return RELIQ_KV_ERROR;
	}
	BLOCK_SIGNALS(saved);
	if (expected == 0)
		s = kvStore_CreateString(&rev, conn->kv, key, value);
	else
		s = kvStore_UpdateString(&rev, conn->kv, key, value, expected);
	RESTORE_SIGNALS(saved);
	if (s == NATS_OK)
	{
		*revision = rev;
		return RELIQ_KV_OK;
	}
	remember_error("writing a lease", s, 0);
	if (s == NATS_NO_RESPONDERS)
	{
		/* no stream behind the bucket any more: open (make) it again */
		BLOCK_SIGNALS(saved);
		kvStore_Destroy(conn->kv);
		RESTORE_SIGNALS(saved);
		conn->kv = NULL;
		return RELIQ_KV_ERROR;
	}
	if (reliq_nats_kv_get(conn, key, &current, &current_rev) &&
		current_rev != expected)
		return RELIQ_KV_CONFLICT;
	return RELIQ_KV_ERROR;
}

bool
reliq_nats_kv_delete(ReliqNatsConnection *conn, const char *key)
{
	natsStatus	s;
	sigset_t	saved;

	if (conn->kv == NULL)
		return false;
	BLOCK_SIGNALS(saved);
	s = kvStore_Delete(conn->kv, key);
	RESTORE_SIGNALS(saved);
	if (s != NATS_OK)
		remember_error("deleting a lease", s, 0);
	return s == NATS_OK;
}

/*
 * Publishing
 */

bool
reliq_nats_publish(ReliqNatsConnection *conn, const char *subject,
				   const char *data, int len,
				   const char **header_keys, const char **header_values,
				   int nheaders, const char *msg_id,
				   int64 *stream_seq, bool *duplicate)
{
	natsMsg    *msg = NULL;
	jsPubAck   *ack = NULL;
	jsPubOptions opts;
	jsErrCode	js_error = 0;
	natsStatus	s;
	sigset_t	saved;
	int			i;

	BLOCK_SIGNALS(saved);
	s = natsMsg_Create(&msg, subject, NULL, data, len);
	for (i = 0; s == NATS_OK && i < nheaders; i++)
		s = natsMsgHeader_Add(msg, header_keys[i], header_values[i]);
	if (s != NATS_OK)
		remember_error("building the message", s, 0);
	else
	{
		jsPubOptions_Init(&opts);
		opts.MaxWait = reliq_nats_timeout;
		opts.MsgId = msg_id;
		s = js_PublishMsg(&ack, conn->js, msg, &opts, &js_error);
		if (s != NATS_OK)
			remember_error("publishing", s, js_error);
		else
		{
			*stream_seq = (int64) ack->Sequence;
			*duplicate = ack->Duplicate;
			jsPubAck_Destroy(ack);
		}
	}
	natsMsg_Destroy(msg);
	RESTORE_SIGNALS(saved);
	return s == NATS_OK;
}

/*
 * Pulling
 *
 * A worker serves several consumers on one connection.  All their pull
 * requests answer to one inbox (a plain synchronous subscription on
 * "<inbox>.*"), so the worker waits for all of them in one place
 * (reliq_inbox_pump).  Each pull's reply subject is
 * "<inbox>.<puller id>.<pull number>".  Messages are sorted to their puller
 * as they are read:
 *
 *	 - a delivery carries its original subject, but its reply subject
 *	   ($JS.ACK.<stream>.<consumer>...) names the consumer: it goes to that
 *	   consumer's puller, whichever of its pulls it answers;
 *	 - a status (100 heartbeat, 404, 408, 409) carries the pull's reply
 *	   subject: it goes to the puller with that id, and ends the pull only
 *	   when it answers the outstanding one (a late 408 of an old pull must
 *	   not end the current one).
 *
 * A delivery for a consumer no puller serves any more is given back (NAK).
 * Messages wait in their puller's queue (as cnats' natsMsg, owned by us)
 * until the worker takes them.
 */

#define RELIQ_CONSUMER_KEY_LEN 512

typedef struct PullerByConsumer
{
	char		key[RELIQ_CONSUMER_KEY_LEN];	/* "<stream> <consumer>" */
	ReliqPuller *puller;		/* NULL: retired, see held_until */
	TimestampTz held_until;		/* a destroyed puller's pull may be held */
} PullerByConsumer;

/*
 * A delivery no puller wants is given back (NAK) with a delay, so that a
 * pull of ours the server still holds cannot be handed it straight back
 * (nats-server 2.9 gives a NAKed message to a waiting pull at once, and
 * counts a delivery each time).  When the consumer's puller was destroyed
 * with its pull out, the delay runs until that pull ends; otherwise it
 * covers only the moments by which the server's end of a pull may trail
 * ours.
 */
#define RELIQ_STRAY_SKEW_MS 500

typedef struct PullerById
{
	uint32		id;
	ReliqPuller *puller;
} PullerById;

struct ReliqInbox
{
	ReliqNatsConnection *conn;
	natsSubscription *sub;
	char	   *prefix;			/* "<inbox>" */
	HTAB	   *by_consumer;
	HTAB	   *by_id;
	uint32		next_id;
	int64		stray_delay_ms; /* longest NAK delay of a stray delivery */
	uint64		strays;			/* deliveries no puller wanted (NAKed) */
};

struct ReliqPuller
{
	ReliqInbox *inbox;
	uint32		id;
	char		key[RELIQ_CONSUMER_KEY_LEN];
	char	   *next_subject;	/* $JS.API.CONSUMER.MSG.NEXT.<s>.<c> */
	uint64		pull_count;
	char	   *current_reply;	/* reply subject of the outstanding pull */
	bool		active;
	int			requested;
	int			received;
	int			heartbeat_ms;	/* of the outstanding pull; 0: none */
	TimestampTz sent_at;
	TimestampTz last_heard;		/* last message or heartbeat of any pull */
	TimestampTz deadline;		/* when an unanswered pull is given up */
	TimestampTz expires_at;		/* when the server ends the outstanding pull */
	bool		end_pending;	/* an end not yet reported by next() */
	int			end_status;		/* status code that ended the last pull */
	char		end_description[128];

	/* deliveries read from the inbox, not yet taken (a ring) */
	natsMsg   **queue;
	int			qhead;
	int			qlen;
	int			qcap;
};

static void
consumer_key(char *key, const char *stream, const char *consumer)
{
	snprintf(key, RELIQ_CONSUMER_KEY_LEN, "%s %s", stream, consumer);
}

/*
 * The consumer a JetStream reply subject names, as a key; false if it is
 * not one (reliq_ack_subject_parse: either layout).
 */
static bool
ack_subject_key(const char *reply, char *key)
{
	ReliqAckSubject ack;

	if (!reliq_ack_subject_parse(reply, &ack) ||
		ack.stream.len + ack.consumer.len + 2 > RELIQ_CONSUMER_KEY_LEN)
		return false;
	snprintf(key, RELIQ_CONSUMER_KEY_LEN, "%.*s %.*s",
			 ack.stream.len, ack.stream.str, ack.consumer.len, ack.consumer.str);
	return true;
}

ReliqInbox *
reliq_inbox_create(ReliqNatsConnection *conn, int64 stray_delay_ms)
{
	ReliqInbox *inbox;
	natsInbox  *name = NULL;
	char	   *wildcard;
	natsStatus	s;
	sigset_t	saved;
	HASHCTL		ctl;

	inbox = MemoryContextAllocZero(TopMemoryContext, sizeof(*inbox));
	inbox->conn = conn;
	inbox->next_id = 1;
	inbox->stray_delay_ms = stray_delay_ms;

	BLOCK_SIGNALS(saved);
	s = natsInbox_Create(&name);
	if (s == NATS_OK)
	{
		inbox->prefix = MemoryContextStrdup(TopMemoryContext, name);
		natsInbox_Destroy(name);
		wildcard = psprintf("%s.*.*", inbox->prefix);
		s = natsConnection_SubscribeSync(&inbox->sub, conn->nc, wildcard);
		pfree(wildcard);
	}
	/* Replayed pulls can deliver bursts: never drop them as slow. */
	if (s == NATS_OK)
		s = natsSubscription_SetPendingLimits(inbox->sub, -1, -1);
	RESTORE_SIGNALS(saved);

	if (s != NATS_OK)
	{
		remember_error("subscribing to the pull inbox", s, 0);
		reliq_inbox_destroy(inbox);
		return NULL;
	}

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = RELIQ_CONSUMER_KEY_LEN;
	ctl.entrysize = sizeof(PullerByConsumer);
	ctl.hcxt = TopMemoryContext;
	inbox->by_consumer = hash_create("reliq pullers by consumer", 64, &ctl,
									 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(uint32);
	ctl.entrysize = sizeof(PullerById);
	ctl.hcxt = TopMemoryContext;
	inbox->by_id = hash_create("reliq pullers by id", 64, &ctl,
							   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	return inbox;
}

/*
 * A delivery nobody here takes (its consumer's puller is gone): give it
 * back after delay_ms (see RELIQ_STRAY_SKEW_MS).
 */
static void
give_back(ReliqInbox *inbox, natsMsg *m, int64 delay_ms)
{
	(void) reliq_nats_ack(inbox->conn, natsMsg_GetReply(m), RELIQ_NAK, delay_ms);
	inbox->strays++;
}

/*
 * Close the inbox.  Its pullers must have been destroyed first.  Anything
 * still unread in it is given back.
 */
void
reliq_inbox_destroy(ReliqInbox *inbox)
{
	sigset_t	saved;

	if (inbox == NULL)
		return;
	if (inbox->sub)
	{
		natsMsg    *m = NULL;

		while (natsSubscription_NextMsg(&m, inbox->sub, 0) == NATS_OK)
		{
			ReliqAckSubject ack;

			if (reliq_ack_subject_parse(natsMsg_GetReply(m), &ack))
				give_back(inbox, m, 0);	/* the connection closes next */
			natsMsg_Destroy(m);
		}
		BLOCK_SIGNALS(saved);
		natsSubscription_Unsubscribe(inbox->sub);
		natsSubscription_Destroy(inbox->sub);
		RESTORE_SIGNALS(saved);
	}
	if (inbox->by_consumer)
		hash_destroy(inbox->by_consumer);
	if (inbox->by_id)
		hash_destroy(inbox->by_id);
	if (inbox->prefix)
		pfree(inbox->prefix);
	pfree(inbox);
}

static void
enqueue(ReliqPuller *puller, natsMsg *m)
{
	if (puller->qlen == puller->qcap)
	{
		int			newcap = Max(puller->qcap * 2, 16);
		natsMsg   **queue = MemoryContextAlloc(TopMemoryContext,
											   sizeof(natsMsg *) * newcap);
		int			i;

		for (i = 0; i < puller->qlen; i++)
			queue[i] = puller->queue[(puller->qhead + i) % puller->qcap];
		if (puller->queue)
			pfree(puller->queue);
		puller->queue = queue;
		puller->qcap = newcap;
		puller->qhead = 0;
	}
	puller->queue[(puller->qhead + puller->qlen) % puller->qcap] = m;
	puller->qlen++;
}

static natsMsg *
dequeue(ReliqPuller *puller)
{
	natsMsg    *m;

	if (puller->qlen == 0)
		return NULL;
	m = puller->queue[puller->qhead];
	puller->qhead = (puller->qhead + 1) % puller->qcap;
	puller->qlen--;
	return m;
}

/* The puller a status message's subject "<inbox>.<id>.<n>" names. */
static ReliqPuller *
puller_of_status(ReliqInbox *inbox, const char *subject)
{
	size_t		plen = strlen(inbox->prefix);
	uint32		id;
	char	   *end;
	PullerById *entry;

	if (strncmp(subject, inbox->prefix, plen) != 0 || subject[plen] != '.')
		return NULL;
	id = (uint32) strtoul(subject + plen + 1, &end, 10);
	if (*end != '.')
		return NULL;
	entry = hash_search(inbox->by_id, &id, HASH_FIND, NULL);
	return entry ? entry->puller : NULL;
}

/* Sort one message read from the inbox to its puller.  Takes m. */
static void
dispatch(ReliqInbox *inbox, natsMsg *m, TimestampTz now)
{
	const char *reply = natsMsg_GetReply(m);
	const char *status = NULL;
	const char *description = NULL;
	char		key[RELIQ_CONSUMER_KEY_LEN];
	ReliqPuller *puller;

	if (reply != NULL && ack_subject_key(reply, key))
	{
		PullerByConsumer *entry = hash_search(inbox->by_consumer, key,
											  HASH_FIND, NULL);

		if (entry == NULL || entry->puller == NULL)
		{
			int64		delay = RELIQ_STRAY_SKEW_MS;

			if (entry != NULL && entry->held_until > now)
				delay += (entry->held_until - now) / 1000;
			else if (entry != NULL)
				hash_search(inbox->by_consumer, key, HASH_REMOVE, NULL);
			give_back(inbox, m, Min(delay, inbox->stray_delay_ms));
			natsMsg_Destroy(m);
			return;
		}
		puller = entry->puller;
		enqueue(puller, m);
		puller->last_heard = now;
		if (puller->active && ++puller->received >= puller->requested)
			puller->active = false;
		return;
	}

	puller = puller_of_status(inbox, natsMsg_GetSubject(m));
	if (puller != NULL &&
		natsMsgHeader_Get(m, "Status", &status) == NATS_OK && status != NULL)
	{
		puller->last_heard = now;
		if (strcmp(status, "100") != 0 && puller->active &&
			strcmp(natsMsg_GetSubject(m), puller->current_reply) == 0)
		{
			puller->active = false;
			puller->end_pending = true;
			puller->end_status = atoi(status);
			puller->end_description[0] = '\0';
			if (natsMsgHeader_Get(m, "Description", &description) == NATS_OK)
				strlcpy(puller->end_description, description,
						sizeof(puller->end_description));
		}
	}
	/* a heartbeat, a status of an earlier pull, or of a gone puller */
	natsMsg_Destroy(m);
}

/*
 * No responders (503) to one of our pulls: cnats reports it without
 * saying which.  End every outstanding pull that has heard nothing since
 * it was sent; a live one is merely asked for again.
 */
static void
end_unanswered(ReliqInbox *inbox)
{
	HASH_SEQ_STATUS seq;
	PullerById *entry;

	hash_seq_init(&seq, inbox->by_id);
	while ((entry = hash_seq_search(&seq)) != NULL)
	{
		ReliqPuller *puller = entry->puller;

		if (puller->active && puller->last_heard < puller->sent_at)
		{
			puller->active = false;
			puller->end_pending = true;
			puller->end_status = 503;
			strlcpy(puller->end_description, "No Responders",
					sizeof(puller->end_description));
		}
	}
}

/* At most this many messages are sorted per call, to stay responsive. */
#define RELIQ_PUMP_MAX 4096

/*
 * Wait up to wait_ms for the inbox, then sort what has arrived to the
 * pullers.  Returns how many messages were read; -1 if the subscription
 * failed (reason in reliq_nats_last_error()).
 */
int
reliq_inbox_pump(ReliqInbox *inbox, int wait_ms)
{
	int			n = 0;
	TimestampTz now = 0;

	while (n < RELIQ_PUMP_MAX)
	{
		natsMsg    *m = NULL;
		natsStatus	s;

		s = natsSubscription_NextMsg(&m, inbox->sub, n == 0 ? Max(wait_ms, 0) : 0);
		if (s == NATS_TIMEOUT)
			break;
		if (now == 0)
			now = GetCurrentTimestamp();
		if (s == NATS_NO_RESPONDERS)
		{
			end_unanswered(inbox);
			n++;
			continue;
		}
		if (s != NATS_OK)
		{
			remember_error("reading the pull inbox", s, 0);
			return -1;
		}
		dispatch(inbox, m, now);
		n++;
	}
	return n;
}

/*
 * The connection closes next, which ends every pull of ours on the
 * server: deliveries no puller wants need only a short delay now.
 */
void
reliq_inbox_closing(ReliqInbox *inbox)
{
	inbox->stray_delay_ms = Min(inbox->stray_delay_ms, 1000);
}

/* Deliveries given back because no puller of this inbox wanted them. */
uint64
reliq_inbox_strays(ReliqInbox *inbox)
{
	return inbox->strays;
}

ReliqPuller *
reliq_puller_create(ReliqInbox *inbox, const char *stream,
					const char *consumer)
{
	ReliqPuller *puller;
	PullerByConsumer *by_consumer;
	PullerById *by_id;
	bool		found;

	puller = MemoryContextAllocZero(TopMemoryContext, sizeof(*puller));
	puller->inbox = inbox;
	consumer_key(puller->key, stream, consumer);
	by_consumer = hash_search(inbox->by_consumer, puller->key, HASH_ENTER, &found);
	if (found && by_consumer->puller != NULL)
	{
		/* one puller per consumer and inbox: the caller keeps to that */
		pfree(puller);
		remember_message("consumer already has a puller on this connection");
		return NULL;
	}
	by_consumer->puller = puller;
	by_consumer->held_until = 0;
	puller->id = inbox->next_id++;
	by_id = hash_search(inbox->by_id, &puller->id, HASH_ENTER, NULL);
	by_id->puller = puller;

	puller->next_subject = MemoryContextStrdup(TopMemoryContext,
											   psprintf("$JS.API.CONSUMER.MSG.NEXT.%s.%s",
														stream, consumer));
	puller->current_reply = MemoryContextAllocZero(TopMemoryContext,
												   strlen(inbox->prefix) + 48);
	return puller;
}

/*
 * Stop pulling for this consumer.  Deliveries still queued are given back
 * after delay_ms (see reliq_puller_release_queued); later ones, once the
 * inbox is read, at once.
 */
void
reliq_puller_destroy(ReliqPuller *puller, int64 delay_ms)
{
	PullerByConsumer *entry;

	if (puller == NULL)
		return;
	(void) reliq_puller_release_queued(puller, delay_ms);
	entry = hash_search(puller->inbox->by_consumer, puller->key, HASH_FIND, NULL);
	if (entry != NULL && puller->active &&
		puller->expires_at > GetCurrentTimestamp())
	{
		/* its pull is still out: strays wait for its end (see dispatch) */
		entry->puller = NULL;
		entry->held_until = puller->expires_at;
	}
	else if (entry != NULL)
		hash_search(puller->inbox->by_consumer, puller->key, HASH_REMOVE, NULL);
	hash_search(puller->inbox->by_id, &puller->id, HASH_REMOVE, NULL);
	if (puller->queue)
		pfree(puller->queue);
	pfree(puller->next_subject);
	pfree(puller->current_reply);
	pfree(puller);
}

/*
 * Ask the server for up to batch messages, waiting at most expires_ms for
 * them, with idle heartbeats every heartbeat_ms (0: none; at most half of
 * expires_ms).  Only while connected: cnats would otherwise buffer the
 * request and replay it on reconnect, long after anyone waits for it.
 */
bool
reliq_puller_request(ReliqPuller *puller, int batch, int expires_ms,
					 int heartbeat_ms)
{
	char		body[160];
	natsStatus	s;
	TimestampTz now;

	Assert(!puller->active && batch > 0);
	if (!reliq_nats_is_connected(puller->inbox->conn))
	{
		remember_message("not connected to NATS");
		return false;
	}
	if (heartbeat_ms * 2 > expires_ms)
		heartbeat_ms = 0;
	puller->pull_count++;
	sprintf(puller->current_reply, "%s.%u." UINT64_FORMAT,
			puller->inbox->prefix, puller->id, puller->pull_count);
	if (heartbeat_ms > 0)
		snprintf(body, sizeof(body),
				 "{\"batch\":%d,\"expires\":" INT64_FORMAT ",\"idle_heartbeat\":" INT64_FORMAT "}",
				 batch, (int64) expires_ms * 1000000, (int64) heartbeat_ms * 1000000);
	else
		snprintf(body, sizeof(body), "{\"batch\":%d,\"expires\":" INT64_FORMAT "}",
				 batch, (int64) expires_ms * 1000000);
	s = natsConnection_PublishRequestString(puller->inbox->conn->nc,
											puller->next_subject,
											puller->current_reply, body);
	if (s != NATS_OK)
	{
		remember_error("sending a pull request", s, 0);
		return false;
	}
	now = GetCurrentTimestamp();
	puller->active = true;
	puller->requested = batch;
	puller->received = 0;
	puller->heartbeat_ms = heartbeat_ms;
	puller->end_pending = false;
	puller->end_status = 0;
	puller->end_description[0] = '\0';
	puller->sent_at = now;
	puller->expires_at = now + (TimestampTz) expires_ms * 1000;
	/* The server ends it at expires_ms; allow as much again for the reply. */
	puller->deadline = now + (TimestampTz) expires_ms * 2000 +
		(TimestampTz) reliq_nats_timeout * 1000;
	return true;
}

bool
reliq_puller_active(ReliqPuller *puller)
{
	return puller->active;
}

/*
 * Stop waiting for the outstanding pull (say, after a disconnection: the
 * server may have forgotten it).  Anything it still delivers is taken as
 * a stale delivery by a later batch.
 */
void
reliq_puller_forget_request(ReliqPuller *puller)
{
	puller->active = false;
	puller->end_pending = false;
}

/* Messages received and waiting to be taken. */
int
reliq_puller_queued(ReliqPuller *puller)
{
	return puller->qlen;
}

/*
 * How long (ms) until the server ends our outstanding pull request; 0 if
 * none is out.  A message NAKed before then could be delivered to that
 * request again (nats-server 2.9 does so even once nobody listens).
 */
int64
reliq_puller_request_left_ms(ReliqPuller *puller)
{
	TimestampTz now = GetCurrentTimestamp();

	if (!puller->active || puller->expires_at <= now)
		return 0;
	return (puller->expires_at - now) / 1000 + 1;
}

/*
 * Give back what arrived and was never taken: a NAK for each message
 * (after delay_ms), so the server delivers it again soon instead of after
 * ack_wait.  Returns how many.  (Runs at a worker's exit too: no
 * PostgreSQL memory is allocated.)
 */
int
reliq_puller_release_queued(ReliqPuller *puller, int64 delay_ms)
{
	natsMsg    *m;
	int			released = 0;

	while ((m = dequeue(puller)) != NULL)
	{
		if (reliq_nats_ack(puller->inbox->conn, natsMsg_GetReply(m),
						   RELIQ_NAK, delay_ms))
			released++;
		natsMsg_Destroy(m);
	}
	return released;
}

/*
 * Has the puller something for its owner to look at: a message, the end of
 * its pull, no pull out, or a pull silent for too long?  (Cheap: no
 * system call.)
 */
bool
reliq_puller_wants_turn(ReliqPuller *puller, TimestampTz now)
{
	TimestampTz heard;

	if (puller->qlen > 0 || puller->end_pending || !puller->active)
		return true;
	if (now > puller->deadline)
		return true;
	heard = Max(puller->last_heard, puller->sent_at);
	return puller->heartbeat_ms > 0 &&
		now - heard > (TimestampTz) puller->heartbeat_ms * 3000 +
		(TimestampTz) reliq_nats_timeout * 1000;
}

/* The status (and its description) that ended the last pull; 0: silence. */
int
reliq_puller_end_status(ReliqPuller *puller, const char **description)
{
	if (description)
		*description = puller->end_description;
	return puller->end_status;
}

static void
copy_message(natsMsg *m, ReliqMessage *msg)
{
	const char **keys = NULL;
	int			nkeys = 0;
	int			len = natsMsg_GetDataLength(m);
	int			i;

	memset(msg, 0, sizeof(*msg));
	msg->subject = pstrdup(natsMsg_GetSubject(m));
	msg->reply = pstrdup(natsMsg_GetReply(m));
	msg->data = palloc(len + 1);
	if (len > 0)
		memcpy(msg->data, natsMsg_GetData(m), len);
	msg->data[len] = '\0';
	msg->data_len = len;

	if (natsMsgHeader_Keys(m, &keys, &nkeys) == NATS_OK && nkeys > 0)
	{
		int			capacity = nkeys;

		msg->header_keys = palloc(sizeof(char *) * capacity);
		msg->header_values = palloc(sizeof(char *) * capacity);
		for (i = 0; i < nkeys; i++)
		{
			const char **values = NULL;
			int			nvalues = 0;
			int			j;

			if (natsMsgHeader_Values(m, keys[i], &values, &nvalues) != NATS_OK)
				continue;
			for (j = 0; j < nvalues; j++)
			{
				if (msg->nheaders == capacity)
				{
					capacity *= 2;
					msg->header_keys = repalloc(msg->header_keys,
												sizeof(char *) * capacity);
					msg->header_values = repalloc(msg->header_values,
												  sizeof(char *) * capacity);
				}
				msg->header_keys[msg->nheaders] = pstrdup(keys[i]);
				msg->header_values[msg->nheaders] = pstrdup(values[j]);
				msg->nheaders++;
			}
			free((void *) values);
		}
		free((void *) keys);
	}
}

/*
 * The next event of this puller, without waiting (reliq_inbox_pump reads
 * the inbox): a message taken from its queue, the end of its outstanding
 * pull, or nothing.  A pull that heard nothing, not even a heartbeat, for
 * three heartbeats, or nothing at all by its deadline, has ended too: a
 * missing consumer or stream is silent.
 */
ReliqPullEvent
reliq_puller_next(ReliqPuller *puller, ReliqMessage *msg)
{
	natsMsg    *m = dequeue(puller);

	if (m != NULL)
	{
		copy_message(m, msg);
		natsMsg_Destroy(m);
		if (!reliq_parse_ack_subject(msg->reply, msg))
		{
			/* Not acked: the server redelivers it after ack_wait. */
			ereport(WARNING,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("ignoring a JetStream message with an unexpected reply subject \"%s\"",
							msg->reply)));
			return RELIQ_PULL_NOTHING;
		}
		return RELIQ_PULL_MESSAGE;
	}
	if (puller->end_pending)
	{
		puller->end_pending = false;
		return RELIQ_PULL_ENDED;
	}
	if (puller->active)
	{
		TimestampTz now = GetCurrentTimestamp();
		TimestampTz heard = Max(puller->last_heard, puller->sent_at);

		if (now > puller->deadline ||
			(puller->heartbeat_ms > 0 &&
			 now - heard > (TimestampTz) puller->heartbeat_ms * 3000 +
			 (TimestampTz) reliq_nats_timeout * 1000))
		{
			puller->active = false;
			puller->end_status = 0;
			strlcpy(puller->end_description, "no answer to the pull request",
					sizeof(puller->end_description));
			return RELIQ_PULL_ENDED;
		}
	}
	return RELIQ_PULL_NOTHING;
}

/*
 * Acknowledgements
 */

bool
reliq_nats_ack(ReliqNatsConnection *conn, const char *reply,
			   ReliqAckKind kind, int64 delay_ms)
{
	char		body[64];
	natsStatus	s;

	switch (kind)
	{
		case RELIQ_ACK:
			strcpy(body, "+ACK");
			break;
		case RELIQ_NAK:
			if (delay_ms > 0)
				snprintf(body, sizeof(body), "-NAK {\"delay\":" INT64_FORMAT "}",
						 delay_ms * 1000000);
			else
				strcpy(body, "-NAK");
			break;
		case RELIQ_TERM:
			strcpy(body, "+TERM");
			break;
		case RELIQ_IN_PROGRESS:
			strcpy(body, "+WPI");
			break;
	}
	s = natsConnection_PublishString(conn->nc, reply, body);
	if (s != NATS_OK)
	{
		remember_error("sending an acknowledgement", s, 0);
		return false;
	}
	return true;
}

/*
 * Wait until the server has everything sent so far (one round trip).
 * While disconnected a flush could only time out: what was sent waits in
 * the reconnect buffer and goes out on reconnection.
 */
bool
reliq_nats_flush(ReliqNatsConnection *conn, int timeout_ms)
{
	natsStatus	s;

	if (!reliq_nats_is_connected(conn))
	{
		remember_message("not connected to NATS; acknowledgements wait in the reconnect buffer");
		return false;
	}
	s = natsConnection_FlushTimeout(conn->nc, Max(timeout_ms, 1));

	if (s != NATS_OK)
	{
		remember_error("flushing to NATS", s, 0);
		return false;
	}
	return true;
}
