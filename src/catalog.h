/*-------------------------------------------------------------------------
 *
 * catalog.h
 *	  Reading reliq.subscription, and the bookkeeping tables behind
 *	  exactly-once: stream identity, acknowledged floor, ledger pruning.
 *
 * Every function here expects to be called inside a transaction; each
 * makes its own SPI connection (spi_safe.h).
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_CATALOG_H
#define RELIQ_CATALOG_H

#include "postgres.h"

#include "datatype/timestamp.h"

/* The SPI helpers (safe search_path, kept plans) moved to spi_safe.h. */
#include "spi_safe.h"

typedef struct ReliqSubscription
{
	int64		id;
	char	   *name;
	char	   *stream;
	char	   *subject;
	char	   *consumer;
	char	   *handler;		/* "schema.function(reliq.message)" or
								 * "...(reliq.message[])", or NULL */
	Oid			target;			/* table sink, or InvalidOid */
	bool		upsert;			/* table sink: mode 'upsert' (else 'insert') */
	int			nkey;			/* upsert: the key's columns */
	char	  **key;
	char	   *columns;		/* table sink: the columns setting (jsonb
								 * text), or NULL */
	char	   *newer_than;		/* upsert: the column saying which message is
								 * newer, or NULL */
	bool		strict_keys;	/* table sink: on_unknown_keys 'dead_letter' */
	char	   *ordering;		/* 'none', 'key', '$subject[N]' or
								 * '$header.Name' */
	int			norder;			/* ordering: the parts of a message's order
								 * key (ordering.c); 0 for 'none' */
	struct ReliqOrderPart *order;
	int			batch_size;
	int			concurrency;
	int			max_deliver;
	int			nbackoff;
	int64	   *backoff_ms;
	int64		ack_wait_ms;
	int64		handler_timeout_ms; /* 0: none */
	bool		start_new;
	bool		enabled;
	Oid			owner;
	int64		version;
	TimestampTz created_at;
} ReliqSubscription;

/* What the launcher needs of each subscription. */
typedef struct ReliqSubscriptionSummary
{
	int64		id;
	char		name[NAMEDATALEN];
	bool		enabled;
	int			concurrency;
	int			batch_size;
	int64		version;
} ReliqSubscriptionSummary;

/* What the monitor watches of each subscription. */
typedef struct ReliqWatched
{
	int64		id;
	char	   *name;
	char	   *stream;
	char	   *consumer;
	bool		enabled;
	bool		attached;		/* a worker has recorded the stream's identity */
	int64		stream_created;
	int64		ack_floor;		/* recorded for that identity; 0 if none */
	int64		applied_seq;	/* the highest sequence this database applied
								 * of that identity: the floor, or the
								 * ledger's highest row */
	bool		diverged;		/* reliq._stream_divergence has a row */
	bool		loss_accepted;	/* ... which reliq.accept_stream_loss() has
								 * accepted: the consumer is to be rewound */
	int64		diverged_last_seq;	/* the row's stream_last_seq */
} ReliqWatched;

extern bool reliq_catalog_extension_present(void);
extern int	reliq_catalog_list_watched(ReliqWatched **list);
extern ReliqSubscription *reliq_catalog_load_subscription(int64 id);
extern int	reliq_catalog_list_subscriptions(ReliqSubscriptionSummary **list);
extern void reliq_catalog_forget_dropped(void);
extern int64 reliq_max_ack_pending(int batch_size, int concurrency);
extern int64 reliq_subscription_max_ack_pending(const ReliqSubscription *sub);

extern int64 reliq_catalog_claim_stream(int64 subscription_id,
										int64 stream_created,
										int64 *floor, bool *has_history);
extern int64 reliq_catalog_floor(int64 subscription_id, int64 stream_created);
extern void reliq_catalog_advance_floor(int64 subscription_id,
										int64 stream_created, int64 ack_floor);
extern int64 reliq_catalog_applied_seq(int64 subscription_id,
									   int64 stream_created);
extern void reliq_catalog_note_divergence(int64 subscription_id,
										  int64 stream_created,
										  int64 stream_last_seq,
										  int64 applied_seq);
extern bool reliq_catalog_diverged(int64 subscription_id,
								   int64 stream_created);
extern void reliq_catalog_forget_divergence(int64 subscription_id,
											bool accepted_only);

#endif							/* RELIQ_CATALOG_H */
