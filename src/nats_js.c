/*-------------------------------------------------------------------------
 *
 * nats_js.c
 *	  JetStream administration: streams, consumers (made, updated, deleted,
 *	  asked one by one or listed a page at a time), their metadata and
 *	  their pause on the server.  Part of the NATS client (nats_internal.h).
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

/* How long "paused" lasts on the server: until resumed, in practice. */
#define RELIQ_PAUSE_UNTIL "2100-01-01T00:00:00Z"

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
					   ReliqStreamInfo *info, ReliqNatsStatus *st)
{
	jsStreamInfo *si = NULL;
	jsOptions	opts;
	jsErrCode	js_error = 0;
	natsStatus	s;
	sigset_t	saved;

	memset(info, 0, sizeof(*info));
	init_js_options(&opts);
	reliq_nats_request_starts(conn);
	BLOCK_SIGNALS(saved);
	s = js_GetStreamInfo(&si, conn->js, stream, &opts, &js_error);
	RESTORE_SIGNALS(saved);

	/* 2.9 answers a missing stream with an error, code 10059 */
	if (s == NATS_NOT_FOUND || js_error == RELIQ_JS_STREAM_NOT_FOUND)
	{
		reliq_nats_remember_error(st, "looking up the stream", s, js_error);
		return true;
	}
	if (s != NATS_OK)
	{
		reliq_nats_remember_error(st, "looking up the stream", s, js_error);
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
						 bool *created, ReliqNatsStatus *st)
{
	jsStreamInfo *si = NULL;
	jsStreamInfo *result = NULL;
	jsOptions	opts;
	jsErrCode	js_error = 0;
	natsStatus	s;
	sigset_t	saved;

	init_js_options(&opts);
	reliq_nats_request_starts(conn);
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
			reliq_nats_remember_error(st, "creating the stream", s, js_error);
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
			reliq_nats_remember_error(st, "updating the stream", s, js_error);
	}
	else
		reliq_nats_remember_error(st, "looking up the stream", s, js_error);
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
 * consumer (or its stream: its js_error in *st) does not exist.
 */
bool
reliq_nats_consumer_info(ReliqNatsConnection *conn, const char *stream,
						 const char *consumer, ReliqConsumerInfo *info,
						 ReliqNatsStatus *st)
{
	jsConsumerInfo *ci = NULL;
	jsOptions	opts;
	jsErrCode	js_error = 0;
	natsStatus	s;
	sigset_t	saved;

	memset(info, 0, sizeof(*info));
	init_js_options(&opts);
	reliq_nats_request_starts(conn);
	BLOCK_SIGNALS(saved);
	s = js_GetConsumerInfo(&ci, conn->js, stream, consumer, &opts, &js_error);
	RESTORE_SIGNALS(saved);

	if (s == NATS_NOT_FOUND || js_error == RELIQ_JS_CONSUMER_NOT_FOUND ||
		js_error == RELIQ_JS_STREAM_NOT_FOUND)
	{
		reliq_nats_remember_error(st, "looking up the consumer", s, js_error);
		return true;
	}
	if (s != NATS_OK)
	{
		reliq_nats_remember_error(st, "looking up the consumer", s, js_error);
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
 * page could not be had (*st says why); a stream that
 * does not exist lists nothing.  (cnats's js_Consumers does the same, but
 * crashed here with a thousand consumers.)
 */
bool
reliq_nats_consumer_infos(ReliqNatsConnection *conn, const char *stream,
						  const char **consumers, int count,
						  ReliqConsumerInfo *infos, ReliqNatsStatus *st)
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
		reliq_nats_request_starts(conn);
		BLOCK_SIGNALS(saved);
		s = natsConnection_Request(&reply, conn->nc, subject, body, strlen(body),
								   reliq_nats_timeout);
		RESTORE_SIGNALS(saved);
		if (s != NATS_OK)
		{
			reliq_nats_remember_error(st, "listing the consumers", s, 0);
			return false;
		}
		page = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
												  CStringGetDatum(pnstrdup(natsMsg_GetData(reply),
																		   natsMsg_GetDataLength(reply)))));
		natsMsg_Destroy(reply);
		if (!JB_ROOT_IS_OBJECT(page))
		{
			reliq_nats_remember_message(st, "the consumer list is not a JSON object");
			return false;
		}
		error = json_object_at(&page->root, "error");
		if (error != NULL)
		{
			int64		code = json_int_at(error, "err_code");

			if (code == RELIQ_JS_STREAM_NOT_FOUND)
				return true;
			reliq_nats_remember_message(st, psprintf("listing the consumers: JetStream error " INT64_FORMAT, code));
			reliq_nats_remember_js_error(st, (int) code);
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
			   const char *body, const char *what, ReliqNatsStatus *st)
{
	natsMsg    *reply = NULL;
	natsStatus	s;
	sigset_t	saved;
	char	   *text;
	Jsonb	   *answer;
	JsonbContainer *error;

	reliq_nats_request_starts(conn);
	BLOCK_SIGNALS(saved);
	s = natsConnection_Request(&reply, conn->nc, subject, body, strlen(body),
							   reliq_nats_timeout);
	RESTORE_SIGNALS(saved);
	if (s != NATS_OK)
	{
		reliq_nats_remember_error(st, what, s, 0);
		return NULL;
	}
	text = pnstrdup(natsMsg_GetData(reply), natsMsg_GetDataLength(reply));
	natsMsg_Destroy(reply);
	answer = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text)));
	if (!JB_ROOT_IS_OBJECT(answer))
	{
		reliq_nats_remember_message(st, psprintf("%s: the answer is not a JSON object", what));
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
		reliq_nats_remember_failure(st, code == RELIQ_JS_CONSUMER_NOT_FOUND ||
						 code == RELIQ_JS_STREAM_NOT_FOUND ?
						 ERRCODE_UNDEFINED_OBJECT : ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
						 psprintf("%s: %s [JetStream error " INT64_FORMAT "]",
								  what, description, code));
		reliq_nats_remember_js_error(st, (int) code);
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
set_owner_metadata(ReliqNatsConnection *conn, const ReliqConsumerSpec *spec,
				   ReliqNatsStatus *st)
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
						  "", "looking up the consumer", st);
	if (info == NULL)
		return false;
	if (getKeyJsonValueFromContainer(&info->root, "config", 6, &config_value) == NULL ||
		config_value.type != jbvBinary ||
		!JsonContainerIsObject(config_value.val.binary.data))
	{
		reliq_nats_remember_message(st, "the consumer information has no configuration");
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
							  "updating the consumer's metadata", st) != NULL;
	}
}

/*
 * Pause the consumer on the server until far in the future, or resume it
 * (nats-server 2.11+: $JS.API.CONSUMER.PAUSE.<stream>.<consumer>; an empty
 * request resumes).  The caller checks the server's version.
 */
bool
reliq_nats_pause_consumer(ReliqNatsConnection *conn, const char *stream,
						  const char *consumer, bool pause, ReliqNatsStatus *st)
{
	Jsonb	   *answer;

	answer = js_api_request(conn, psprintf("$JS.API.CONSUMER.PAUSE.%s.%s",
										   stream, consumer),
							pause ? "{\"pause_until\":\"" RELIQ_PAUSE_UNTIL "\"}" : "",
							pause ? "pausing the consumer" : "resuming the consumer", st);
	if (answer == NULL)
		return false;
	if (json_bool_at(&answer->root, "paused") != pause)
	{
		reliq_nats_remember_message(st, pause ? "the server did not pause the consumer" :
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
						   ReliqConsumerInfo *info, bool *created,
						   ReliqNatsStatus *st)
{
	jsConsumerInfo *ci = NULL;
	jsConsumerInfo *result = NULL;
	jsOptions	opts;
	jsErrCode	js_error = 0;
	natsStatus	s;
	sigset_t	saved;
	int64		ack_wait_ns = spec->ack_wait_ms * 1000000;
	bool		ok = false;
	ReliqNatsStatus metadata = {0};
	int			attempt;

	memset(info, 0, sizeof(*info));
	*created = false;
	init_js_options(&opts);
	reliq_nats_request_starts(conn);
	BLOCK_SIGNALS(saved);

	/* Two rounds: another worker may create it between our look and add. */
	for (attempt = 0; attempt < 2 && !ok; attempt++)
	{
		js_error = 0;
		s = js_GetConsumerInfo(&ci, conn->js, spec->stream, spec->consumer,
							   &opts, &js_error);
		if (js_error == RELIQ_JS_STREAM_NOT_FOUND)
		{
			reliq_nats_remember_failure(st, ERRCODE_UNDEFINED_OBJECT,
							 psprintf("stream \"%s\" does not exist", spec->stream));
			reliq_nats_remember_js_error(st, js_error);
			break;
		}
		if ((s == NATS_NOT_FOUND || js_error == RELIQ_JS_CONSUMER_NOT_FOUND) &&
			spec->must_exist)
		{
			reliq_nats_remember_failure(st, ERRCODE_UNDEFINED_OBJECT,
										psprintf("consumer \"%s\" of stream \"%s\" does not exist",
												 spec->consumer, spec->stream));
			reliq_nats_remember_js_error(st, RELIQ_JS_CONSUMER_NOT_FOUND);
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
				reliq_nats_remember_error(st, "creating the consumer", s, js_error);
		}
		else if (s != NATS_OK)
		{
			reliq_nats_remember_error(st, "looking up the consumer", s, js_error);
			break;
		}
		else if (ci->Config->AckPolicy != js_AckExplicit ||
				 (ci->Config->DeliverSubject != NULL &&
				  ci->Config->DeliverSubject[0] != '\0'))
		{
			reliq_nats_remember_failure(st, ERRCODE_INVALID_PARAMETER_VALUE,
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
					reliq_nats_remember_error(st, "updating the consumer", s, js_error);
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
		!set_owner_metadata(conn, spec, &metadata))
		reliq_nats_report(&metadata, WARNING, 0,
						  psprintf("could not write the owner into the metadata of consumer \"%s\" of stream \"%s\"",
								   spec->consumer, spec->stream),
						  NULL, "");
	return ok;
}

bool
reliq_nats_delete_consumer(ReliqNatsConnection *conn, const char *stream,
						   const char *consumer, bool *existed,
						   ReliqNatsStatus *st)
{
	jsOptions	opts;
	jsErrCode	js_error = 0;
	natsStatus	s;
	sigset_t	saved;

	init_js_options(&opts);
	reliq_nats_request_starts(conn);
	BLOCK_SIGNALS(saved);
	s = js_DeleteConsumer(conn->js, stream, consumer, &opts, &js_error);
	RESTORE_SIGNALS(saved);
	*existed = (s == NATS_OK);
	if (s == NATS_OK || s == NATS_NOT_FOUND ||
		js_error == RELIQ_JS_CONSUMER_NOT_FOUND ||
		js_error == RELIQ_JS_STREAM_NOT_FOUND)
		return true;
	reliq_nats_remember_error(st, "deleting the consumer", s, js_error);
	return false;
}

/*
 * Is name "<base>-r<digits>", the consumer of one acquisition of the
 * lease of base's subscription (lease.c)?
 */
bool
reliq_consumer_is_incarnation(const char *name, const char *base)
{
	size_t		len = strlen(base);
	const char *p;

	if (strncmp(name, base, len) != 0 || strncmp(name + len, "-r", 2) != 0)
		return false;
	p = name + len + 2;
	if (*p == '\0')
		return false;
	for (; *p; p++)
		if (*p < '0' || *p > '9')
			return false;
	return true;
}

/*
 * The consumers of a stream that are incarnations of base (above) made by
 * reliq for the subscription whose consumers have this description
 * ("reliq subscription <name>"; NULL: any reliq subscription's), so that
 * no consumer of somebody else is ever taken for one.  Names of the
 * JetStream API's list of names, a page at a time; each candidate is
 * asked for its description.
 */
bool
reliq_nats_consumer_incarnations(ReliqNatsConnection *conn, const char *stream,
								 const char *base, const char *description,
								 List **names, ReliqNatsStatus *st)
{
	ReliqNatsStatus own;
	char	   *subject = psprintf("$JS.API.CONSUMER.NAMES.%s", stream);
	int64		offset = 0;
	int64		total = 0;

	*names = NIL;
	do
	{
		char		body[64];
		Jsonb	   *page;
		JsonbValue	v;
		JsonbContainer *list = NULL;
		int			n;
		int			i;

		snprintf(body, sizeof(body), "{\"offset\":" INT64_FORMAT "}", offset);
		if (st == NULL)
			st = &own;
		st->js_error = 0;
		page = js_api_request(conn, subject, body, "listing the consumers", st);
		if (page == NULL)
			return st->js_error == RELIQ_JS_STREAM_NOT_FOUND;
		total = json_int_at(&page->root, "total");
		if (getKeyJsonValueFromContainer(&page->root, "consumers", 9, &v) != NULL &&
			v.type == jbvBinary && JsonContainerIsArray(v.val.binary.data))
			list = v.val.binary.data;
		n = list ? JsonContainerSize(list) : 0;
		for (i = 0; i < n; i++)
		{
			JsonbValue *element = getIthJsonbValueFromContainer(list, i);
			char	   *name;
			jsConsumerInfo *ci = NULL;
			jsOptions	opts;
			jsErrCode	js_error = 0;
			natsStatus	s;
			sigset_t	saved;
			bool		ours;

			if (element == NULL || element->type != jbvString)
				continue;
			name = pnstrdup(element->val.string.val, element->val.string.len);
			if (!reliq_consumer_is_incarnation(name, base))
				continue;
			init_js_options(&opts);
			reliq_nats_request_starts(conn);
			BLOCK_SIGNALS(saved);
			s = js_GetConsumerInfo(&ci, conn->js, stream, name, &opts, &js_error);
			ours = s == NATS_OK && ci->Config != NULL &&
				ci->Config->Description != NULL &&
				(description != NULL ?
				 strcmp(ci->Config->Description, description) == 0 :
				 strncmp(ci->Config->Description, "reliq subscription ", 19) == 0);
			if (ci)
				jsConsumerInfo_Destroy(ci);
			RESTORE_SIGNALS(saved);
			if (s != NATS_OK && s != NATS_NOT_FOUND &&
				js_error != RELIQ_JS_CONSUMER_NOT_FOUND)
			{
				reliq_nats_remember_error(st, "looking up the consumer", s, js_error);
				return false;
			}
			if (ours)
				*names = lappend(*names, name);
		}
		if (n == 0)
			break;
		offset += n;
	} while (offset < total);
	return true;
}

/*
 * The consumer of a durable name in use on the server: the durable name
 * itself if it exists, otherwise its newest incarnation made by reliq
 * (the highest revision); otherwise the durable name, *exists false.
 * False when the server could not tell.
 */
bool
reliq_nats_consumer_in_use(ReliqNatsConnection *conn, const char *stream,
						   const char *durable, const char *description,
						   char **name, bool *exists, ReliqNatsStatus *st)
{
	ReliqConsumerInfo info;
	List	   *names;
	ListCell   *lc;
	uint64		newest_revision = 0;

	*name = pstrdup(durable);
	*exists = false;
	if (!reliq_nats_consumer_info(conn, stream, durable, &info, st))
		return false;
	if (info.found)
	{
		*exists = true;
		return true;
	}
	if (!reliq_nats_consumer_incarnations(conn, stream, durable, description,
										  &names, st))
		return false;
	foreach(lc, names)
	{
		char	   *candidate = lfirst(lc);
		uint64		revision = strtou64(candidate + strlen(durable) + 2, NULL, 10);

		if (!*exists || revision > newest_revision)
		{
			*name = candidate;
			newest_revision = revision;
			*exists = true;
		}
	}
	return true;
}
