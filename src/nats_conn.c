/*-------------------------------------------------------------------------
 *
 * nats_conn.c
 *	  reliq's NATS client, first of four files (nats_internal.h): connections,
 *	  the errors of every NATS call, publishing and acks.
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

#include "nats_internal.h"
#include "reliq.h"

static ReliqNatsConnection *session_conn = NULL;
static bool session_exit_registered = false;


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

/*
 * A failure of cnats, with what was being done, into the caller's status
 * (NULL: the caller does not want it).
 */
void
reliq_nats_remember_error(ReliqNatsStatus *st, const char *what,
						  natsStatus status, jsErrCode js_error)
{
	const char *text = natsStatus_GetText(status);
	const char *detail = library_error_text();

	if (st == NULL)
		return;
	st->js_error = (int) js_error;
	st->no_responders = (status == NATS_NO_RESPONDERS);
	st->jetstream_missing = (status == NATS_NO_RESPONDERS && strcmp(what, "publishing") != 0) ||
		js_error == JSNotEnabledForAccountErr || js_error == JSNotEnabledErr;
	st->sqlerrcode = sqlerrcode_of(status, js_error, st->jetstream_missing);
	if (st->jetstream_missing)
		snprintf(st->message, sizeof(st->message),
				 "%s: no JetStream API answered (is JetStream enabled on the server, and for this account?)",
				 what);
	else if (detail == NULL || detail[0] == '\0' || strcmp(detail, text) == 0)
		snprintf(st->message, sizeof(st->message), "%s: %s", what, text);
	else if (status == NATS_ERR)
		snprintf(st->message, sizeof(st->message), "%s: %s", what, detail);
	else
		snprintf(st->message, sizeof(st->message), "%s: %s (%s)",
				 what, text, detail);
	if (js_error != 0)
	{
		size_t		len = strlen(st->message);

		snprintf(st->message + len, sizeof(st->message) - len,
				 " [JetStream error %d]", (int) js_error);
	}
}

/* A failure cnats did not report, with the SQLSTATE to report it with. */
void
reliq_nats_remember_failure(ReliqNatsStatus *st, int sqlerrcode,
							const char *message)
{
	if (st == NULL)
		return;
	st->js_error = 0;
	st->sqlerrcode = sqlerrcode;
	st->no_responders = false;
	st->jetstream_missing = false;
	strlcpy(st->message, message, sizeof(st->message));
}

/* Not connected, or the like. */
void
reliq_nats_remember_message(ReliqNatsStatus *st, const char *message)
{
	reliq_nats_remember_failure(st, ERRCODE_CONNECTION_FAILURE, message);
}

/* The JetStream error code of a failure reported otherwise. */
void
reliq_nats_remember_js_error(ReliqNatsStatus *st, int code)
{
	if (st == NULL)
		return;
	st->js_error = code;
	st->jetstream_missing = (code == JSNotEnabledForAccountErr ||
							 code == JSNotEnabledErr);
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
 * ereport a failure: the one path from a NATS failure to an ereport.
 * what is the message ("could not publish to subject ...").  sqlerrcode 0
 * takes the failure's own (see sqlerrcode_of).  detail NULL is the
 * failure as cnats and the server told it; a detail of the caller's own
 * is shown to the client and the failure goes to the server log.  hint
 * NULL gives the usual one for the failure, "" none.
 */
void
reliq_nats_report(const ReliqNatsStatus *st, int elevel, int sqlerrcode,
				  const char *what, const char *detail, const char *hint)
{
	int			own = st->sqlerrcode ? st->sqlerrcode : ERRCODE_CONNECTION_FAILURE;

	if (sqlerrcode == 0)
		sqlerrcode = own;
	if (hint == NULL && st->jetstream_missing)
		hint = "Start nats-server with JetStream enabled (-js, or a jetstream block in its configuration), for the account reliq connects as.";
	else if (hint == NULL && own == ERRCODE_CONNECTION_FAILURE)
		hint = psprintf("Check reliq.nats_url (now \"%s\") and that nats-server is running.",
						reliq_nats_redacted_url());
	ereport(elevel,
			(errcode(sqlerrcode),
			 errmsg("%s", what),
			 errdetail("%s", detail ? detail : st->message),
			 detail ? errdetail_log("%s", st->message) : 0,
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
 * log, where the postmaster reports every changed setting).  NULL, the
 * reason in *st, when the file cannot be read or holds what the NATS
 * client cannot send.
 */
static char *
secret_value(const char *setting, const char *name, ReliqNatsStatus *st)
{
	FILE	   *file;
	char		line[1024];
	size_t		len;

	if (strncmp(setting, "file:", 5) != 0)
		return pstrdup(setting);
	file = AllocateFile(setting + 5, "r");
	if (file == NULL)
	{
		reliq_nats_remember_message(st, psprintf("could not read the file of %s \"%s\": %s",
												 name, setting + 5, strerror(errno)));
		return NULL;
	}
	if (fgets(line, sizeof(line), file) == NULL)
		line[0] = '\0';
	FreeFile(file);
	len = strcspn(line, "\r\n");
	line[len] = '\0';
	if (strpbrk(line, "\"\\") != NULL)
	{
		reliq_nats_remember_message(st, psprintf("the file of %s holds a double quote or a backslash, which the NATS C client cannot send",
												 name));
		return NULL;
	}
	return pstrdup(line);
}

/* natsOptions from the reliq.nats_* settings. */
static natsStatus
build_options(natsOptions *opts, const char *client_name,
			  ConnectionEvents *events, ReliqNatsStatus *st)
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
		char	   *secret = secret_value(reliq_nats_token, "reliq.nats_token", st);

		s = secret ? natsOptions_SetToken(opts, secret) : NATS_INVALID_ARG;
	}
	if (s == NATS_OK && is_set(reliq_nats_user))
	{
		char	   *password = is_set(reliq_nats_password) ?
			secret_value(reliq_nats_password, "reliq.nats_password", st) : NULL;

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
 * failure (the reason in *st).  The connection then keeps itself
 * connected: cnats reconnects on its own, forever.
 */
ReliqNatsConnection *
reliq_nats_connect(const char *client_name, ReliqNatsStatus *st)
{
	ReliqNatsStatus own;
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

	if (st == NULL)
		st = &own;
	st->message[0] = '\0';
	BLOCK_SIGNALS(saved);
	s = natsOptions_Create(&opts);
	if (s == NATS_OK)
		s = build_options(opts, client_name, events, st);
	if (s != NATS_OK)
	{
		/* a secret setting that could not be read has said why */
		if (st->message[0] == '\0')
			reliq_nats_remember_error(st, "configuring the NATS connection", s, 0);
	}
	else
	{
		s = natsConnection_Connect(&conn->nc, opts);
		if (s != NATS_OK)
			reliq_nats_remember_error(st, "connecting to NATS", s, 0);
	}
	if (s == NATS_OK)
	{
		jsOptions_Init(&js_opts);
		js_opts.Wait = reliq_nats_timeout;
		s = natsConnection_JetStream(&conn->js, conn->nc, &js_opts);
		if (s != NATS_OK)
			reliq_nats_remember_error(st, "opening the JetStream context", s, 0);
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
		ReliqNatsStatus st = {0};

		snprintf(name, sizeof(name), "reliq backend %d", MyProcPid);
		session_conn = reliq_nats_connect(name, &st);
		if (session_conn == NULL)
			reliq_nats_report(&st, ERROR, ERRCODE_CONNECTION_FAILURE,
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

void
reliq_nats_before_requests(ReliqNatsConnection *conn, ReliqNatsBeforeRequest hook)
{
	conn->before_request = hook;
}

/*
 * The caller's deadline first (reliq_nats_before_requests), once: its own
 * requests do not call it again.
 */
void
reliq_nats_request_starts(ReliqNatsConnection *conn)
{
	if (conn->before_request == NULL || conn->in_before_request)
		return;
	conn->in_before_request = true;
	PG_TRY();
	{
		conn->before_request(conn);
	}
	PG_FINALLY();
	{
		conn->in_before_request = false;
	}
	PG_END_TRY();
}

/*
 * Publishing
 */

bool
reliq_nats_publish(ReliqNatsConnection *conn, const char *subject,
				   const char *data, int len,
				   const char **header_keys, const char **header_values,
				   int nheaders, const char *msg_id,
				   int64 *stream_seq, bool *duplicate, ReliqNatsStatus *st)
{
	natsMsg    *msg = NULL;
	jsPubAck   *ack = NULL;
	jsPubOptions opts;
	jsErrCode	js_error = 0;
	natsStatus	s;
	sigset_t	saved;
	int			i;

	reliq_nats_request_starts(conn);
	BLOCK_SIGNALS(saved);
	s = natsMsg_Create(&msg, subject, NULL, data, len);
	for (i = 0; s == NATS_OK && i < nheaders; i++)
		s = natsMsgHeader_Add(msg, header_keys[i], header_values[i]);
	if (s != NATS_OK)
		reliq_nats_remember_error(st, "building the message", s, 0);
	else
	{
		jsPubOptions_Init(&opts);
		opts.MaxWait = reliq_nats_timeout;
		opts.MsgId = msg_id;
		s = js_PublishMsg(&ack, conn->js, msg, &opts, &js_error);
		if (s != NATS_OK)
			reliq_nats_remember_error(st, "publishing", s, js_error);
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
 * Acknowledgements
 */

bool
reliq_nats_ack(ReliqNatsConnection *conn, const char *reply,
			   ReliqAckKind kind, int64 delay_ms, ReliqNatsStatus *st)
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
		reliq_nats_remember_error(st, "sending an acknowledgement", s, 0);
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
reliq_nats_flush(ReliqNatsConnection *conn, int timeout_ms, ReliqNatsStatus *st)
{
	natsStatus	s;

	if (!reliq_nats_is_connected(conn))
	{
		reliq_nats_remember_message(st, "not connected to NATS; acknowledgements wait in the reconnect buffer");
		return false;
	}
	s = natsConnection_FlushTimeout(conn->nc, Max(timeout_ms, 1));

	if (s != NATS_OK)
	{
		reliq_nats_remember_error(st, "flushing to NATS", s, 0);
		return false;
	}
	return true;
}
