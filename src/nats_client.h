/*-------------------------------------------------------------------------
 *
 * nats_client.h
 *	  reliq's door to NATS: connections, JetStream management, publishing,
 *	  pulling by hand and acknowledging.  No cnats type appears here;
 *	  only the four files of the client (nats_conn.c, nats_js.c,
 *	  nats_kv.c, nats_inbox.c) include nats.h, through nats_internal.h.
 *
 * Functions return false on failure and leave the reason in
 * reliq_nats_last_error(); reliq_nats_report() turns it into an ereport,
 * with an errcode chosen from the failure: the one way a NATS failure
 * reaches the log or the client.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_NATS_CLIENT_H
#define RELIQ_NATS_CLIENT_H

#include "datatype/timestamp.h"
#include "nodes/pg_list.h"

#include "message.h"

typedef struct ReliqNatsConnection ReliqNatsConnection;
typedef struct ReliqInbox ReliqInbox;
typedef struct ReliqPuller ReliqPuller;

/* JetStream API error codes reliq reacts to. */
#define RELIQ_JS_CONSUMER_NOT_FOUND 10014
#define RELIQ_JS_STREAM_NOT_FOUND	10059

extern const char *reliq_nats_last_error(void);
extern int	reliq_nats_last_js_error(void);
extern bool reliq_nats_last_was_no_responders(void);
extern bool reliq_nats_last_was_jetstream_missing(void);
extern void reliq_nats_report(int elevel, int sqlerrcode, const char *what,
							  const char *detail, const char *hint);
extern char *reliq_nats_redacted_url(void);

/* Connections */
extern ReliqNatsConnection *reliq_nats_connect(const char *client_name);
extern void reliq_nats_close(ReliqNatsConnection *conn);
extern bool reliq_nats_is_connected(ReliqNatsConnection *conn);
extern uint64 reliq_nats_reconnect_count(ReliqNatsConnection *conn);
extern bool reliq_nats_settings_changed(ReliqNatsConnection *conn);
extern ReliqNatsConnection *reliq_nats_session_connection(void);
extern ReliqNatsConnection *reliq_nats_session_connection_if_any(void);
extern void reliq_nats_adopt_session_connection(ReliqNatsConnection *conn);

/* Streams and consumers */
typedef struct ReliqStreamInfo
{
	bool		found;
	int64		created_ns;		/* identifies this incarnation of the stream */
	int64		first_seq;
	int64		last_seq;
	int64		messages;
	bool		redelivers;		/* limits retention: acked messages stay */
	const char *retention;		/* "limits", "interest" or "workqueue" */
	int			replicas;
	int			nsubjects;		/* its subjects (none: a mirror or sourced) */
	char	  **subjects;		/* palloc'd in the caller's context */
} ReliqStreamInfo;

typedef enum ReliqDeliverFrom
{
	RELIQ_DELIVER_ALL,			/* from the first message of the stream */
	RELIQ_DELIVER_NEW,			/* from the next message published */
	RELIQ_DELIVER_FROM_SEQ,		/* from start_seq */
	RELIQ_DELIVER_FROM_TIME		/* from the first message at or after start_time_ns */
} ReliqDeliverFrom;

typedef struct ReliqConsumerSpec
{
	const char *stream;
	const char *consumer;
	const char *filter_subject;
	const char *description;
	int64		ack_wait_ms;
	int64		max_ack_pending;
	ReliqDeliverFrom deliver_from;	/* used only when creating */
	int64		start_seq;
	int64		start_time_ns;	/* Unix nanoseconds */
	/* Owner written to the consumer's metadata (nats-server 2.10+). */
	const char *owner_instance; /* NULL: none */
	uint64		owner_epoch;
	bool		must_exist;		/* update only: a worker under a lease never
								 * makes its consumer, the lease's owner does */
} ReliqConsumerSpec;

typedef struct ReliqConsumerInfo
{
	bool		found;
	int64		created_ns;
	int64		ack_floor_stream_seq;
	int64		delivered_stream_seq;
	int64		num_pending;
	int64		num_ack_pending;
	int64		num_redelivered;
	int64		num_waiting;
	int64		max_ack_pending;
	bool		paused_known;	/* the answer says (nats-server 2.11+) */
	bool		paused;			/* paused on the server */
} ReliqConsumerInfo;

extern bool reliq_nats_stream_info(ReliqNatsConnection *conn,
								   const char *stream, ReliqStreamInfo *info);
extern bool reliq_nats_create_stream(ReliqNatsConnection *conn,
									 const char *stream,
									 const char **subjects, int nsubjects,
									 int replicas, bool *created);
extern bool reliq_nats_consumer_infos(ReliqNatsConnection *conn,
									  const char *stream,
									  const char **consumers, int count,
									  ReliqConsumerInfo *infos);
extern bool reliq_nats_consumer_info(ReliqNatsConnection *conn,
									 const char *stream, const char *consumer,
									 ReliqConsumerInfo *info);
extern bool reliq_nats_ensure_consumer(ReliqNatsConnection *conn,
									   const ReliqConsumerSpec *spec,
									   ReliqConsumerInfo *info,
									   bool *created);
extern bool reliq_nats_delete_consumer(ReliqNatsConnection *conn,
									   const char *stream, const char *consumer,
									   bool *existed);
extern bool reliq_nats_consumer_incarnations(ReliqNatsConnection *conn,
											 const char *stream,
											 const char *base,
											 const char *description,
											 List **names);
extern bool reliq_consumer_is_incarnation(const char *name, const char *base);
extern bool reliq_nats_consumer_in_use(ReliqNatsConnection *conn,
									   const char *stream, const char *durable,
									   const char *description,
									   char **name, bool *exists);
extern bool reliq_nats_server_at_least(ReliqNatsConnection *conn,
									   int major, int minor);
extern bool reliq_nats_pause_consumer(ReliqNatsConnection *conn,
									  const char *stream, const char *consumer,
									  bool pause);

/*
 * A key-value bucket, for the leases (lease.c).  Revisions are the
 * bucket's stream sequences; 0 means "no such key".
 */
typedef enum ReliqKvResult
{
	RELIQ_KV_OK,
	RELIQ_KV_CONFLICT,			/* the key is not at the expected revision */
	RELIQ_KV_ERROR				/* reason in reliq_nats_last_error() */
} ReliqKvResult;

extern bool reliq_nats_kv_open(ReliqNatsConnection *conn, const char *bucket);
extern bool reliq_nats_kv_get(ReliqNatsConnection *conn, const char *key,
							  char **value, uint64 *revision);
extern ReliqKvResult reliq_nats_kv_put(ReliqNatsConnection *conn,
									   const char *key, const char *value,
									   uint64 expected, uint64 *revision);
extern bool reliq_nats_kv_delete(ReliqNatsConnection *conn, const char *key);

/* Publishing (JetStream: waits for the stream's acknowledgement). */
extern bool reliq_nats_publish(ReliqNatsConnection *conn, const char *subject,
							   const char *data, int len,
							   const char **header_keys,
							   const char **header_values, int nheaders,
							   const char *msg_id,
							   int64 *stream_seq, bool *duplicate);

/*
 * Pulling by hand: one inbox per connection, one puller per consumer on it,
 * one outstanding pull request per puller.
 */
typedef enum ReliqPullEvent
{
	RELIQ_PULL_NOTHING,			/* nothing now */
	RELIQ_PULL_MESSAGE,			/* a message was copied out */
	RELIQ_PULL_ENDED,			/* the current pull request has ended */
	RELIQ_PULL_ERROR			/* the subscription failed */
} ReliqPullEvent;

extern ReliqInbox *reliq_inbox_create(ReliqNatsConnection *conn,
									  int64 stray_delay_ms);
extern void reliq_inbox_destroy(ReliqInbox *inbox);
extern int	reliq_inbox_pump(ReliqInbox *inbox, int wait_ms);
extern uint64 reliq_inbox_strays(ReliqInbox *inbox);
extern void reliq_inbox_closing(ReliqInbox *inbox);

extern ReliqPuller *reliq_puller_create(ReliqInbox *inbox,
										const char *stream,
										const char *consumer);
extern void reliq_puller_destroy(ReliqPuller *puller, int64 delay_ms);
extern bool reliq_puller_request(ReliqPuller *puller, int batch,
								 int expires_ms, int heartbeat_ms);
extern ReliqPullEvent reliq_puller_next(ReliqPuller *puller, ReliqMessage *msg);
extern bool reliq_puller_active(ReliqPuller *puller);
extern bool reliq_puller_wants_turn(ReliqPuller *puller, TimestampTz now);
extern void reliq_puller_forget_request(ReliqPuller *puller);
extern int	reliq_puller_queued(ReliqPuller *puller);
extern int	reliq_puller_release_queued(ReliqPuller *puller, int64 delay_ms);
extern int64 reliq_puller_request_left_ms(ReliqPuller *puller);
extern int	reliq_puller_end_status(ReliqPuller *puller,
									const char **description);

/* Acknowledgements: sent to the message's reply subject. */
typedef enum ReliqAckKind
{
	RELIQ_ACK,
	RELIQ_NAK,
	RELIQ_TERM,
	RELIQ_IN_PROGRESS
} ReliqAckKind;

extern bool reliq_nats_ack(ReliqNatsConnection *conn, const char *reply,
						   ReliqAckKind kind, int64 delay_ms);
extern bool reliq_nats_flush(ReliqNatsConnection *conn, int timeout_ms);

#endif							/* RELIQ_NATS_CLIENT_H */
