/*-------------------------------------------------------------------------
 *
 * message.h
 *	  A JetStream message as reliq holds it between the pull and the ack,
 *	  and its conversion to the SQL type reliq.message.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_MESSAGE_H
#define RELIQ_MESSAGE_H

#include "access/tupdesc.h"
#include "datatype/timestamp.h"
#include "fmgr.h"
#include "utils/jsonb.h"

#include "trace.h"

/* What became of a message in its batch; decides how it is acknowledged. */
typedef enum ReliqOutcome
{
	RELIQ_OUTCOME_NONE = 0,
	RELIQ_OUTCOME_PROCESSED,	/* handled and committed: +ACK */
	RELIQ_OUTCOME_DUPLICATE,	/* already in the ledger: +ACK, not handled */
	RELIQ_OUTCOME_FAILED,		/* handler failed: -NAK with backoff */
	RELIQ_OUTCOME_DEAD_LETTERED,	/* in reliq.dead_letter: +TERM */
	RELIQ_OUTCOME_HELD,			/* subscription failing: kept for a retry */
	RELIQ_OUTCOME_DEFERRED		/* ordering => 'key': an earlier message of
								 * its key failed; kept, tried after it */
} ReliqOutcome;

typedef struct ReliqMessage
{
	/* As received (copied out of the NATS client's message). */
	char	   *subject;
	char	   *reply;			/* the $JS.ACK subject acks are sent to */
	char	   *data;
	int			data_len;
	int			nheaders;
	char	  **header_keys;	/* a key appears once per value */
	char	  **header_values;

	/* Parsed from the reply subject. */
	char	   *stream;
	char	   *consumer;
	int64		stream_seq;
	int64		consumer_seq;
	int			delivered;
	int64		published_ns;	/* nanoseconds since the Unix epoch */
	int64		pending;

	/* ordering => 'key' (ordering.c): its order key, if it has one. */
	bool		ordered;
	uint64		order_key;
	bool		counted;		/* counted as received already */

	/* Set while the batch is processed. */
	ReliqOutcome outcome;
	ErrorData  *error;			/* why the handler failed */
	int			outboxed;		/* publishes its handler made */
	ReliqMessageTrace trace;	/* its context and processing span */
} ReliqMessage;

/* A part of a string, not terminated. */
typedef struct ReliqToken
{
	const char *str;			/* NULL: absent */
	int			len;
} ReliqToken;

/* A JetStream ack subject's parts (reliq_ack_subject_parse). */
typedef struct ReliqAckSubject
{
	ReliqToken	domain;			/* absent: none (2.9 layout, or "_") */
	ReliqToken	account;		/* account hash; absent in the 2.9 layout */
	ReliqToken	stream;
	ReliqToken	consumer;
	ReliqToken	token;			/* the random token at the end, if any */
	int			delivered;
	int64		stream_seq;
	int64		consumer_seq;
	int64		published_ns;	/* nanoseconds since the Unix epoch */
	int64		pending;
} ReliqAckSubject;

extern bool reliq_ack_subject_parse(const char *reply, ReliqAckSubject *ack);
extern bool reliq_parse_ack_subject(const char *reply, ReliqMessage *msg);
extern TimestampTz reliq_unix_ns_to_timestamptz(int64 ns);
extern int64 reliq_timestamptz_to_unix_ns(TimestampTz t);
extern Datum reliq_message_headers_jsonb(const ReliqMessage *msg);
extern void reliq_message_copy(ReliqMessage *dst, const ReliqMessage *src);
extern int	reliq_headers_from_jsonb(Jsonb *headers, const char ***keys,
									 const char ***values, const char **msg_id);
extern text *reliq_text_from_wire(const char *str, int len);
extern const char *reliq_message_header(const ReliqMessage *msg,
										const char *key);

extern Oid	reliq_message_type_oid(void);
extern Datum reliq_message_datum(const ReliqMessage *msg,
								 const char *subscription_name,
								 TupleDesc message_tupdesc);

#endif							/* RELIQ_MESSAGE_H */
