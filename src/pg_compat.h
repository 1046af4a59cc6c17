/*
 * pg_compat.h: the differences between the PostgreSQL majors reliq builds
 * against (15 to 18), in one place.
 *
 * Every other file calls the names below and carries no version test of
 * its own.  Each shim says which major changed the API, so that dropping a
 * major is deleting the branches that name it.  Include this after the
 * PostgreSQL headers a file needs.
 */
#ifndef RELIQ_PG_COMPAT_H
#define RELIQ_PG_COMPAT_H

#include "postgres.h"

#include "catalog/pg_proc.h"
#include "common/jsonapi.h"
#include "executor/executor.h"
#include "parser/parse_node.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/acl.h"
#include "utils/backend_status.h"

#if PG_VERSION_NUM < 150000 || PG_VERSION_NUM >= 190000
#error "reliq supports PostgreSQL 15 to 18"
#endif

#if PG_VERSION_NUM < 170000
#include "storage/sinvaladt.h"
#endif

/*
 * The local transaction id of this backend's current transaction
 * (17 moved PGPROC.lxid into PGPROC.vxid).
 */
#if PG_VERSION_NUM >= 170000
#define RELIQ_MY_LXID (MyProc->vxid.lxid)
#else
#define RELIQ_MY_LXID (MyProc->lxid)
#endif

/*
 * The PGPROC of the backend running a virtual transaction, or NULL
 * (17 replaced BackendId by ProcNumber).
 */
static inline PGPROC *
reliq_vxid_proc(const VirtualTransactionId *vxid)
{
#if PG_VERSION_NUM >= 170000
	return ProcNumberGetProc(vxid->procNumber);
#else
	return BackendIdGetProc(vxid->backendId);
#endif
}

/*
 * The n-th (from 1) entry of this backend's snapshot of the backend
 * statuses (17 renamed it).
 */
static inline LocalPgBackendStatus *
reliq_local_backend_status(int n)
{
#if PG_VERSION_NUM >= 170000
	return pgstat_get_local_beentry_by_index(n);
#else
	return pgstat_fetch_stat_local_beentry(n);
#endif
}

/* May role execute the function?  (16 folded pg_proc_aclcheck into object_aclcheck.) */
static inline AclResult
reliq_proc_aclcheck(Oid function, Oid role, AclMode mode)
{
#if PG_VERSION_NUM >= 160000
	return object_aclcheck(ProcedureRelationId, function, role, mode);
#else
	return pg_proc_aclcheck(function, role, mode);
#endif
}

/*
 * The index entries of a tuple just inserted with table_multi_insert
 * (16 added onlySummarizing).
 */
static inline List *
reliq_insert_index_tuples(ResultRelInfo *rri, TupleTableSlot *slot,
						  EState *estate)
{
#if PG_VERSION_NUM >= 160000
	return ExecInsertIndexTuples(rri, slot, estate, false, false, NULL, NIL,
								 false);
#else
	return ExecInsertIndexTuples(rri, slot, estate, false, false, NULL, NIL);
#endif
}

/*
 * The JSON lexer's semantic callbacks return an error code since 16; a
 * callback is declared "static RELIQ_JSON_CB name(...)" and ends with
 * "return RELIQ_JSON_OK;".
 */
#if PG_VERSION_NUM >= 160000
#define RELIQ_JSON_CB JsonParseErrorType
#define RELIQ_JSON_OK JSON_SUCCESS
#else
#define RELIQ_JSON_CB void
#define RELIQ_JSON_OK
#endif

/* A lexer over len bytes of json, escapes resolved (17 added the context argument). */
static inline JsonLexContext *
reliq_json_lexer(char *json, int len, int encoding)
{
#if PG_VERSION_NUM >= 170000
	return makeJsonLexContextCstringLen(NULL, json, len, encoding, true);
#else
	return makeJsonLexContextCstringLen(json, len, encoding, true);
#endif
}

/*
 * Check that the current user may insert into the columns (attribute
 * numbers offset by FirstLowInvalidHeapAttributeNumber) of the relation
 * the namespace item names; ereports if not.  16 moved the permissions of
 * a range table entry into RTEPermissionInfo.
 */
static inline void
reliq_check_insert_permissions(ParseState *pstate, ParseNamespaceItem *nsitem,
							   Bitmapset *columns)
{
#if PG_VERSION_NUM >= 160000
	nsitem->p_perminfo->requiredPerms = ACL_INSERT;
	nsitem->p_perminfo->insertedCols = columns;
	(void) ExecCheckPermissions(pstate->p_rtable, pstate->p_rteperminfos, true);
#else
	nsitem->p_rte->requiredPerms = ACL_INSERT;
	nsitem->p_rte->insertedCols = columns;
	(void) ExecCheckRTPerms(pstate->p_rtable, true);
#endif
}

#endif							/* RELIQ_PG_COMPAT_H */
