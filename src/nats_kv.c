/*-------------------------------------------------------------------------
 *
 * nats_kv.c
 *	  The JetStream key-value bucket that holds the leases (lease.c): open
 *	  or create it, get, compare-and-set, delete.  Part of the NATS client
 *	  (nats_internal.h).
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

/*
 * The lease bucket
 */

/*
 * Bind to the bucket, creating it when missing: history 1, file storage,
 * three replicas where the server is part of a cluster (one otherwise).
 */
bool
reliq_nats_kv_open(ReliqNatsConnection *conn, const char *bucket,
				   ReliqNatsStatus *st)
{
	kvConfig	cfg;
	natsStatus	s;
	sigset_t	saved;

	if (conn->kv != NULL)
		return true;
	reliq_nats_request_starts(conn);
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
			reliq_nats_remember_error(st, "creating the lease bucket", s, 0);
	}
	else if (s != NATS_OK)
		reliq_nats_remember_error(st, "opening the lease bucket", s, 0);
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
				  uint64 *revision, ReliqNatsStatus *st)
{
	kvEntry    *entry = NULL;
	natsStatus	s;
	sigset_t	saved;

	/* first: the caller's deadline may close the bucket, or open it */
	reliq_nats_request_starts(conn);
	*value = NULL;
	*revision = 0;
	if (conn->kv == NULL)
	{
		reliq_nats_remember_failure(st, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
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
		reliq_nats_remember_error(st, "reading a lease", s, 0);
	return s == NATS_OK;
}

/*
 * Write a key if its current revision is `expected` (0: if it does not
 * exist).  A refusal is a conflict only if the key turns out not to be at
 * `expected`; otherwise the write failed for another reason.
 */
ReliqKvResult
reliq_nats_kv_put(ReliqNatsConnection *conn, const char *key,
				  const char *value, uint64 expected, uint64 *revision,
				  ReliqNatsStatus *st)
{
	uint64_t	rev = 0;
	natsStatus	s;
	sigset_t	saved;
	char	   *current;
	uint64		current_rev;

	/* first: the caller's deadline may close the bucket, or open it */
	reliq_nats_request_starts(conn);
	if (conn->kv == NULL)
	{
		reliq_nats_remember_failure(st, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
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
	reliq_nats_remember_error(st, "writing a lease", s, 0);
	if (s == NATS_NO_RESPONDERS)
	{
		/* no stream behind the bucket any more: open (make) it again */
		BLOCK_SIGNALS(saved);
		kvStore_Destroy(conn->kv);
		RESTORE_SIGNALS(saved);
		conn->kv = NULL;
		return RELIQ_KV_ERROR;
	}
	/* moved since: a conflict; the reason of the write's failure otherwise */
	if (reliq_nats_kv_get(conn, key, &current, &current_rev, NULL) &&
		current_rev != expected)
		return RELIQ_KV_CONFLICT;
	return RELIQ_KV_ERROR;
}

bool
reliq_nats_kv_delete(ReliqNatsConnection *conn, const char *key,
					 ReliqNatsStatus *st)
{
	natsStatus	s;
	sigset_t	saved;

	/* first: the caller's deadline may close the bucket, or open it */
	reliq_nats_request_starts(conn);
	if (conn->kv == NULL)
		return false;
	BLOCK_SIGNALS(saved);
	s = kvStore_Delete(conn->kv, key);
	RESTORE_SIGNALS(saved);
	if (s != NATS_OK)
		reliq_nats_remember_error(st, "deleting a lease", s, 0);
	return s == NATS_OK;
}
