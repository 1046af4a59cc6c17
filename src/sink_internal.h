/*-------------------------------------------------------------------------
 *
 * sink_internal.h
 *	  What the table sink's files share, and nothing else includes:
 *
 *	  sink.c			preparing a sink, the statement path, the dispatch
 *	  sink_columns.c	columns from the subject, headers and metadata; a
 *						value's column named in its error
 *	  sink_copy.c		the COPY path
 *	  sink_upsert.c		the upsert path (mode 'upsert')
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_SINK_INTERNAL_H
#define RELIQ_SINK_INTERNAL_H

#include "executor/spi.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"

#include "sink.h"

/* Columns with a default that a message may leave out: a 64-bit set. */
#define RELIQ_SINK_MAX_DEFAULTS 64

typedef struct SinkStatement
{
	uint64		present;		/* which defaulted columns it lists */
	SPIPlanPtr	plan;
} SinkStatement;

/* How a column takes a JSON value on the COPY path. */
typedef enum SinkColumnKind
{
	SINK_COLUMN_TEXT,			/* the value as text (a string's contents) */
	SINK_COLUMN_JSON,			/* json: the value as jsonb prints it */
	SINK_COLUMN_JSONB			/* jsonb: the value's JSON text */
} SinkColumnKind;

/* A column's name as the key of the lookup table. */
typedef struct SinkColumnEntry
{
	char		name[NAMEDATALEN];
	int			column;
} SinkColumnEntry;

/* Where a column named by the columns setting takes its value from. */
typedef enum SinkSource
{
	SINK_FROM_SUBJECT,			/* $subject */
	SINK_FROM_SUBJECT_TOKEN,	/* $subject[N], tokens counted from 1 */
	SINK_FROM_STREAM,			/* $stream */
	SINK_FROM_STREAM_SEQ,		/* $stream_seq */
	SINK_FROM_PUBLISHED_AT,		/* $published_at, ISO 8601 in UTC */
	SINK_FROM_DELIVERED,		/* $delivered */
	SINK_FROM_HEADER			/* $header.Name: its first value */
} SinkSource;

typedef struct SinkMapped
{
	int			column;			/* index into the sink's columns */
	SinkSource	source;
	int			token;			/* SINK_FROM_SUBJECT_TOKEN */
	char	   *header;			/* SINK_FROM_HEADER */
} SinkMapped;

/* An upsert statement for one set of named columns ('1' per column). */
typedef struct SinkUpsert
{
	char	   *named;
	SPIPlanPtr	plan;
	int			left_out;		/* a NOT NULL column without a default the
								 * set leaves out (an UPDATE, then), or -1 */
} SinkUpsert;

struct ReliqSink
{
	MemoryContext cxt;
	Oid			relid;
	char	   *table;			/* qualified name */
	int			ncolumns;		/* insertable columns, in attnum order */
	char	  **columns;		/* quoted names */
	char	  **names;			/* names as they are, the JSON keys */
	SinkColumnKind *kinds;
	Oid		   *types;
	int32	   *typmods;
	int		   *default_index;	/* per column: its bit, or -1 */
	bool	   *required;		/* per column: NOT NULL without a default */
	int			ndefaults;
	char	  **default_keys;	/* per bit: the column's name, the JSON key */
	int			nstatements;
	SinkStatement *statements;
	bool		copy_ok;		/* may the COPY path be taken? */
	HTAB	   *by_name;		/* column name -> index */
	int			nmapped;		/* the columns setting */
	SinkMapped *mapped;
	bool		upsert;			/* mode 'upsert' */
	int			nkey;
	int		   *key_columns;	/* indexes into columns */
	int			newer_column;	/* newer_than, or -1 */
	bool		strict_keys;	/* on_unknown_keys 'dead_letter' */
	int			nupserts;
	SinkUpsert *upserts;
	SPIPlanPtr	delete_plan;
};

/* What a message gives a sink besides its payload. */
typedef struct SinkMeta
{
	const char *subject;
	const char *stream;
	int64		stream_seq;
	int			delivered;
	TimestampTz published_at;
	int			nheaders;
	const char **header_keys;
	const char **header_values;
	bool		from_wire;		/* strings in UTF-8, not the server's encoding */
} SinkMeta;

/*
 * What reliq_sink_rows hands to reliq_sink_write: the payloads, in the
 * server's encoding, and what else of each message a sink may use.
 */
typedef struct SinkRows
{
	int			count;
	char	  **data;
	int		   *len;
	SinkMeta   *meta;
} SinkRows;

extern int reliq_sink_column_index(ReliqSink *sink, const char *name);
extern Datum reliq_sink_payload_jsonb(const char *data, int len);
extern void reliq_sink_insert_by_statement(ReliqSink *sink, Datum rows);
extern bool reliq_sink_copy_type_ok(Oid typid);
extern Jsonb *reliq_sink_row_object(ReliqSink *sink, SinkRows *rows, int i,
									bool empty_ok);
extern Datum reliq_sink_row_objects(ReliqSink *sink, SinkRows *rows,
									const int *indexes, int count);
extern char *reliq_sink_mapped_value(const SinkMapped *m,
									 const SinkMeta *meta);
extern void reliq_sink_unknown_key(ReliqSink *sink, const char *key);
extern const char *reliq_sink_find_header(const SinkMeta *meta,
										  const char *name);
extern bool reliq_sink_copy_path_ok(ReliqSink *sink, SinkRows *rows);
extern void reliq_sink_insert_by_copy(ReliqSink *sink, SinkRows *rows);
extern void reliq_sink_check_values(ReliqSink *sink, Jsonb *object);
extern bool reliq_sink_is_delete(const SinkMeta *meta, int len);
extern void reliq_sink_upsert_rows(ReliqSink *sink, SinkRows *rows);

#endif							/* RELIQ_SINK_INTERNAL_H */
