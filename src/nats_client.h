/*-------------------------------------------------------------------------
 *
 * nats_client.h
 *	  reliq's door to NATS: connections, JetStream management, publishing,
 *	  pulling by hand and acknowledging.  No cnats type appears here;
 *	  only the four files of the client (nats_conn.c, nats_js.c,
 *	  nats_kv.c, nats_inbox.c) include nats.h, through nats_internal.h.
 *
 * Functions that can fail return false (or NULL) and write the reason into
 * a ReliqNatsStatus their caller owns (NULL: not wanted), so that no later
 * call can overwrite it before it is reported; reliq_nats_report() turns
 * one into an ereport, with an errcode chosen from the failure: the one
 * way a NATS failure reaches the log or the client.
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

/* Why a call failed; meaningful only after it did. */
typedef struct ReliqNatsStatus
{
	int			sqlerrcode;		/* to report it with */
	int			js_error;		/* JetStream API error code; 0 none */
	bool		no_responders;	/* nobody answered (a publish: no stream
								 * captures the subject) */
	bool		jetstream_missing;	/* off on the server or for the account */
	char		message[512];	/* what was being done, and what went wrong */
} ReliqNatsStatus;

extern void reliq_nats_report(const ReliqNatsStatus *st, int elevel,
							  int sqlerrcode, const char *what,
							  const char *detail, const char *hint);
extern char *reliq_nats_redacted_url(void);

/* Connections */
extern ReliqNatsConnection *reliq_nats_connect(const char *client_name,
											   ReliqNatsStatus *st);

/*
 * A deadline kept ahead of every request on a connection: the client calls
 * it before each request it sends to the server (not again while it runs,
 * and not for plain acks).  The monitor renews the lease heartbeat there,
 * when due, so that no number of requests for figures can hold it back.
 * NULL: none.
 */
typedef void (*ReliqNatsBeforeRequest)(ReliqNatsConnection *conn);
extern void reliq_nats_before_requests(ReliqNatsConnection *conn,
									   ReliqNatsBeforeRequest hook);
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
								   const char *stream, ReliqStreamInfo *info,
								   ReliqNatsStatus *st);
extern bool reliq_nats_create_stream(ReliqNatsConnection *conn,
									 const char *stream,
									 const char **subjects, int nsubjects,
									 int replicas, bool *created,
									 ReliqNatsStatus *st);
extern bool reliq_nats_consumer_infos(ReliqNatsConnection *conn,
									  const char *stream,
									  const char **consumers, int count,
									  ReliqConsumerInfo *infos,
									  ReliqNatsStatus *st);
extern bool reliq_nats_consumer_info(ReliqNatsConnection *conn,
									 const char *stream, const char *consumer,
									 ReliqConsumerInfo *info,
									 ReliqNatsStatus *st);
extern bool reliq_nats_ensure_consumer(ReliqNatsConnection *conn,
									   const ReliqConsumerSpec *spec,
									   ReliqConsumerInfo *info,
									   bool *created, ReliqNatsStatus *st);
extern bool reliq_nats_delete_consumer(ReliqNatsConnection *conn,
									   const char *stream, const char *consumer,
									   bool *existed, ReliqNatsStatus *st);
extern bool reliq_nats_consumer_incarnations(ReliqNatsConnection *conn,
											 const char *stream,
											 const char *base,
											 const char *description,
											 List **names,
											 ReliqNatsStatus *st);
extern bool reliq_consumer_is_incarnation(const char *name, const char *base);
extern bool reliq_nats_consumer_in_use(ReliqNatsConnection *conn,
									   const char *stream, const char *durable,
									   const char *description,
									   char **name, bool *exists,
									   ReliqNatsStatus *st);
extern bool reliq_nats_server_at_least(ReliqNatsConnection *conn,
									   int major, int minor);
extern bool reliq_nats_pause_consumer(ReliqNatsConnection *conn,
									  const char *stream, const char *consumer,
									  bool pause, ReliqNatsStatus *st);

/*
 * A key-value bucket, for the leases (lease.c).  Revisions are the
 * bucket's stream sequences; 0 means "no such key".
 */
typedef enum ReliqKvResult
{
	RELIQ_KV_OK,
	RELIQ_KV_CONFLICT,			/* the key is not at the expected revision */
	RELIQ_KV_ERROR				/* the reason in the caller's status */
} ReliqKvResult;

extern bool reliq_nats_kv_open(ReliqNatsConnection *conn, const char *bucket,
							   ReliqNatsStatus *st);
extern bool reliq_nats_kv_get(ReliqNatsConnection *conn, const char *key,
							  char **value, uint64 *revision,
							  ReliqNatsStatus *st);
extern ReliqKvResult reliq_nats_kv_put(ReliqNatsConnection *conn,
									   const char *key, const char *value,
									   uint64 expected, uint64 *revision,
									   ReliqNatsStatus *st);
extern bool reliq_nats_kv_delete(ReliqNatsConnection *conn, const char *key,
								 ReliqNatsStatus *st);

/* Publishing (JetStream: waits for the stream's acknowledgement). */
extern bool reliq_nats_publish(ReliqNatsConnection *conn, const char *subject,
							   const char *data, int len,
							   const char **header_keys,
							   const char **header_values, int nheaders,
							   const char *msg_id,
							   int64 *stream_seq, bool *duplicate,
							   ReliqNatsStatus *st);

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
									  int64 stray_delay_ms,
									  ReliqNatsStatus *st);
extern void reliq_inbox_destroy(ReliqInbox *inbox);
extern int	reliq_inbox_pump(ReliqInbox *inbox, int wait_ms,
							 ReliqNatsStatus *st);
extern uint64 reliq_inbox_strays(ReliqInbox *inbox);
extern void reliq_inbox_closing(ReliqInbox *inbox);

extern ReliqPuller *reliq_puller_create(ReliqInbox *inbox,
										const char *stream,
										const char *consumer,
										ReliqNatsStatus *st);
extern void reliq_puller_destroy(ReliqPuller *puller, int64 delay_ms);
extern bool reliq_puller_request(ReliqPuller *puller, int batch,
								 int expires_ms, int heartbeat_ms,
								 ReliqNatsStatus *st);
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
						   ReliqAckKind kind, int64 delay_ms,
						   ReliqNatsStatus *st);
extern bool reliq_nats_flush(ReliqNatsConnection *conn, int timeout_ms,
							 ReliqNatsStatus *st);

#endif							/* RELIQ_NATS_CLIENT_H */
