/*-------------------------------------------------------------------------
 *
 * guard.c
 *	  reliq's edges: DROP EXTENSION reliq without deadlocks and without
 *	  silently taking user handlers; handlers that cannot be dropped,
 *	  renamed or moved while a subscription uses them.
 *
 * Two hooks, installed in the postmaster by _PG_init and so present in
 * every backend:
 *
 *	 ProcessUtility_hook  DROP EXTENSION reliq: refuses a CASCADE that would
 *						  drop functions of the user's (handlers take
 *						  reliq.message), listing them; then takes the
 *						  extension's locks without deadlocking (below);
 *						  then lets the drop run.
 *						  ALTER FUNCTION ... RENAME / SET SCHEMA of a
 *						  handler in use: refused (subscriptions name their
 *						  handler by schema and name).
 *	 object_access_hook   OAT_DROP of a function a subscription uses as its
 *						  handler, whichever command drops it (DROP
 *						  FUNCTION, DROP SCHEMA ... CASCADE, DROP OWNED,
 *						  another extension's CASCADE): refused.
 *
 * A handler's drop, rename or move is refused when the transaction commits
 * (an xact callback, as deferred constraints are checked), not at once: a
 * migration may drop a handler and make it again, or point its
 * subscription elsewhere, in one transaction.
 *
 * A hook on the deletion itself rather than a dependency in pg_depend: a
 * subscription is a row, not a catalog object, so nothing could depend on
 * the function but the extension itself -- and then DROP FUNCTION ...
 * CASCADE would drop the whole extension, with PostgreSQL's hint
 * suggesting just that.  A sql_drop event trigger could refuse too, but
 * event triggers do not fire in single-user mode nor under
 * session_replication_role = replica; the hook sees every deletion.
 *
 * Why DROP EXTENSION deadlocked.  It takes an AccessExclusiveLock on each
 * of reliq's tables in the order pg_depend lists them: reliq.subscription
 * first, then reliq.dead_letter, _ledger, _stream_floor, _stream_identity,
 * _outbox.  A worker's batch locks _stream_identity before
 * reliq.subscription (its first statement reads both), and its outbox
 * publish locks _outbox before reliq.subscription; attaching and the
 * monitor take reliq.subscription before _stream_identity.  So the drop
 * held reliq.subscription and waited for _stream_identity while a worker
 * held _stream_identity and waited for reliq.subscription: "deadlock
 * detected", in the drop or in the worker.  No single order fits every
 * transaction of reliq's, so the drop cannot simply take them "in the
 * workers' order".
 *
 * What the drop does instead (quiesce), before PostgreSQL's own drop:
 *
 *	1. AccessExclusiveLock on the extension itself, which DROP EXTENSION
 *	   would take first anyway.  Transactions that pass the gate
 *	   (reliq_guard_enter) hold a share lock on it: the drop waits for
 *	   those under way, and new ones wait here, holding nothing.
 *	2. AccessExclusiveLock on reliq.subscription, waiting in the queue (so
 *	   new batches cannot overtake it).  Only the extension's lock is held
 *	   meanwhile, and no transaction of reliq's waits for it holding
 *	   anything, so this wait cannot close a cycle.  Afterwards no batch is
 *	   past its first statement, and the launcher, which reads
 *	   reliq.subscription before it starts a worker, starts none.
 *	3. The workers of this database are stopped: terminated, as a fast
 *	   shutdown does (the open transaction rolls back, what the worker
 *	   held is given back to the server for redelivery), once each is idle
 *	   between batches or waiting for a lock.  Waiting, it is in its next
 *	   batch, which rolls back -- or, once per reliq.refresh_interval,
 *	   publishing its outbox between a COMMIT and its acks: that batch is
 *	   then delivered again.  Left running, workers would fail on the
 *	   vanished tables (and a worker dies badly on an error outside its
 *	   batch).
 *	4. Each other relation of the extension, without waiting in the lock
 *	   queue while only reliq workers hold it (one may have started
 *	   meanwhile): a worker that holds it while waiting for a lock is
 *	   waiting for us, and is terminated.  Anyone else is waited for in
 *	   the ordinary way, deadlock detector included.
 *
 * The gate is the workers' half.  Workers, the launcher and the monitor
 * that pass it first in each transaction never hold one of reliq's locks
 * while the drop waits, and see the extension gone once it commits (they
 * stop instead of failing on the vanished tables).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_class.h"
#include "catalog/pg_depend.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "parser/parse_func.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "pg_compat.h"
#include "catalog.h"
#include "guard.h"
#include "reliq.h"

/* bgw_type of a worker (launcher.c). */
#define RELIQ_WORKER_TYPE "reliq worker"
/* How often the drop looks again at a relation a worker holds. */
#define RELIQ_GUARD_POLL_MS 10
/* Functions named in full in an error; the rest are counted. */
#define RELIQ_GUARD_LIST_MAX 20

static ProcessUtility_hook_type prev_process_utility = NULL;
static object_access_hook_type prev_object_access = NULL;

/* This backend is running DROP EXTENSION reliq: its own functions go. */
static bool dropping_extension = false;

/*
 * Handlers
 */

/*
 * The subscriptions whose handler is `signature` (schema.function(argument
 * types), as format_procedure_qualified() writes it and create_subscription
 * records it), as a quoted, comma-separated list; NULL when none, or when
 * reliq is not installed here.  Read with a fresh snapshot: a subscription
 * committed meanwhile counts, and a drop_subscription earlier in this
 * transaction does too.
 */
static char *
subscriptions_naming(const char *signature)
{
	Oid			extension = get_extension_oid(RELIQ_EXTENSION_NAME, true);
	Oid			namespace;
	Oid			relid;
	AttrNumber	handler_att;
	AttrNumber	name_att;
	Relation	rel;
	Snapshot	snapshot;
	TableScanDesc scan;
	HeapTuple	tuple;
	StringInfoData names;

	if (!OidIsValid(extension))
		return NULL;
	namespace = get_namespace_oid(RELIQ_SCHEMA_NAME, true);
	relid = OidIsValid(namespace) ? get_relname_relid("subscription", namespace) : InvalidOid;
	if (!OidIsValid(relid) ||
		getExtensionOfObject(RelationRelationId, relid) != extension)
		return NULL;
	handler_att = get_attnum(relid, "handler");
	name_att = get_attnum(relid, "subscription_name");
	if (handler_att == InvalidAttrNumber || name_att == InvalidAttrNumber)
		return NULL;

	initStringInfo(&names);
	rel = table_open(relid, AccessShareLock);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = table_beginscan(rel, snapshot, 0, NULL);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		bool		isnull;
		Datum		handler = heap_getattr(tuple, handler_att,
										   RelationGetDescr(rel), &isnull);

		if (isnull || strcmp(TextDatumGetCString(handler), signature) != 0)
			continue;
		appendStringInfo(&names, "%s\"%s\"", names.len > 0 ? ", " : "",
						 TextDatumGetCString(heap_getattr(tuple, name_att,
														  RelationGetDescr(rel),
														  &isnull)));
	}
	table_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, NoLock);
	return names.len > 0 ? names.data : NULL;
}

/* The same for a function of the user's (not one of reliq's own). */
static char *
subscriptions_using(Oid function)
{
	Oid			extension = get_extension_oid(RELIQ_EXTENSION_NAME, true);

	if (!OidIsValid(extension) ||
		getExtensionOfObject(ProcedureRelationId, function) == extension)
		return NULL;
	return subscriptions_naming(format_procedure_qualified(function));
}

/*
 * A handler dropped, renamed or moved in this transaction.  The check waits
 * for the end of the transaction, so that a migration may drop a handler
 * and make it again (or point the subscription elsewhere) before it
 * commits; at commit the handler must be back or unused.
 */
typedef struct PendingHandler
{
	char	   *signature;		/* schema.function(argument types) */
	char	   *namespace;
	char	   *name;
	oidvector  *argtypes;
	const char *action;			/* "drop", "rename", "move" */
} PendingHandler;

static List *pending_handlers = NIL;	/* in TopTransactionContext */
static bool xact_callback_registered = false;

/* Does schema.name(argtypes) name a function now? */
static bool
handler_exists(const PendingHandler *h)
{
	Oid			namespace = get_namespace_oid(h->namespace, true);

	return OidIsValid(namespace) &&
		OidIsValid(GetSysCacheOid3(PROCNAMEARGSNSP, Anum_pg_proc_oid,
								   CStringGetDatum(h->name),
								   PointerGetDatum(h->argtypes),
								   ObjectIdGetDatum(namespace)));
}

static void
check_pending_handlers(void)
{
	ListCell   *cell;

	foreach(cell, pending_handlers)
	{
		PendingHandler *h = lfirst(cell);
		char	   *subscriptions;

		if (handler_exists(h))
			continue;
		subscriptions = subscriptions_naming(h->signature);
		if (subscriptions != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
					 errmsg("cannot %s function %s because reliq subscription %s uses it as its handler",
							h->action, h->signature, subscriptions),
					 errdetail("The subscription calls its handler by schema, name and argument types; without it every message would fail. This is checked at commit: a handler dropped and made again in one transaction is fine."),
					 errhint("Drop or alter the subscription first: reliq.drop_subscription(name), or reliq.alter_subscription(name, handler => 'schema.other(reliq.message)'::regprocedure).")));
	}
}

static void
guard_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			if (pending_handlers != NIL)
				check_pending_handlers();
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PARALLEL_ABORT:
			pending_handlers = NIL;	/* its memory went with the transaction */
			break;
		default:
			break;
	}
}

/* A handler a subscription uses is going: check again at commit. */
static void
defer_handler_check(Oid function, const char *action)
{
	HeapTuple	tuple;
	Form_pg_proc proc;
	PendingHandler *h;
	MemoryContext old;

	if (subscriptions_using(function) == NULL)
		return;
	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(function));
	if (!HeapTupleIsValid(tuple))
		return;
	proc = (Form_pg_proc) GETSTRUCT(tuple);
	old = MemoryContextSwitchTo(TopTransactionContext);
	h = palloc(sizeof(PendingHandler));
	h->signature = format_procedure_qualified(function);
	h->namespace = get_namespace_name(proc->pronamespace);
	h->name = pstrdup(NameStr(proc->proname));
	h->argtypes = buildoidvector(proc->proargtypes.values, proc->pronargs);
	h->action = action;
	pending_handlers = lappend(pending_handlers, h);
	MemoryContextSwitchTo(old);
	ReleaseSysCache(tuple);
	if (!xact_callback_registered)
	{
		RegisterXactCallback(guard_xact_callback, NULL);
		xact_callback_registered = true;
	}
}

static void
guard_object_access(ObjectAccessType access, Oid classId, Oid objectId,
					int subId, void *arg)
{
	if (prev_object_access)
		prev_object_access(access, classId, objectId, subId, arg);

	if (access != OAT_DROP || classId != ProcedureRelationId ||
		dropping_extension)
		return;
	/* temporary functions going at the end of a session, and the like */
	if (arg != NULL &&
		(((ObjectAccessDrop *) arg)->dropflags & PERFORM_DELETION_INTERNAL) != 0)
		return;
	defer_handler_check(objectId, "drop");
}

/* ALTER FUNCTION ... RENAME TO / SET SCHEMA: the subscription would lose it. */
static void
check_function_move(ObjectType type, Node *object, const char *action)
{
	Oid			function;

	if (type != OBJECT_FUNCTION && type != OBJECT_ROUTINE)
		return;
	function = LookupFuncWithArgs(type, castNode(ObjectWithArgs, object), true);
	if (OidIsValid(function))
		defer_handler_check(function, action);
}

/*
 * DROP EXTENSION reliq CASCADE
 */

/*
 * Functions outside any extension that depend on reliq's objects (their
 * argument or result types, or a BEGIN ATOMIC body): CASCADE would drop
 * them.  reliq's objects include their implicit parts (the array type of
 * reliq.message, a table's row type).
 */
static const char *const user_functions_sql =
"WITH RECURSIVE part(classid, objid) AS ("
"    SELECT d.classid, d.objid FROM pg_catalog.pg_depend d"
"     WHERE d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass"
"       AND d.refobjid = $1 AND d.deptype = 'e'"
"  UNION"
"    SELECT d.classid, d.objid FROM pg_catalog.pg_depend d"
"      JOIN part p ON d.refclassid = p.classid AND d.refobjid = p.objid"
"     WHERE d.deptype IN ('a', 'i'))"
" SELECT DISTINCT d.objid::pg_catalog.regprocedure::pg_catalog.text"
"   FROM pg_catalog.pg_depend d"
"   JOIN part p ON d.refclassid = p.classid AND d.refobjid = p.objid"
"  WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.deptype = 'n'"
"    AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend e"
"                     WHERE e.classid = d.classid AND e.objid = d.objid"
"                       AND e.deptype = 'e')"
"  ORDER BY 1";

/*
 * How many functions of the user's depend on the extension; the first
 * RELIQ_GUARD_LIST_MAX of them in *list, the first in *first.
 */
static int
user_functions(Oid extension, char **list, char **first)
{
	Oid			argtypes[1] = {OIDOID};
	Datum		args[1] = {ObjectIdGetDatum(extension)};
	MemoryContext caller = CurrentMemoryContext;
	StringInfoData names;
	int			count;
	int			nest;
	int			i;

	initStringInfo(&names);
	*first = NULL;
	SPI_connect();
	nest = reliq_enter_safe_search_path();
	if (SPI_execute_with_args(user_functions_sql, 1, argtypes, args, NULL,
							  true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not list the functions that depend on extension reliq");
	reliq_leave_safe_search_path(nest);
	count = (int) SPI_processed;
	for (i = 0; i < count && i < RELIQ_GUARD_LIST_MAX; i++)
	{
		char	   *name = SPI_getvalue(SPI_tuptable->vals[i],
										SPI_tuptable->tupdesc, 1);

		appendStringInfo(&names, "%s%s", i > 0 ? ", " : "", name);
		if (i == 0)
			*first = MemoryContextStrdup(caller, name);
	}
	if (count > RELIQ_GUARD_LIST_MAX)
		appendStringInfo(&names, " and %d more", count - RELIQ_GUARD_LIST_MAX);
	SPI_finish();
	*list = names.data;
	return count;
}

static void
refuse_cascade_over_user_functions(int count, const char *list, const char *first)
{
	ereport(ERROR,
			(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
			 errmsg_plural("DROP EXTENSION reliq CASCADE would drop %d function that is not part of reliq",
						   "DROP EXTENSION reliq CASCADE would drop %d functions that are not part of reliq",
						   count, count),
			 errdetail("These take or return reliq's types, as handlers take reliq.message: %s.",
					   list),
			 errhint("Drop or alter the subscriptions that use them, then drop the functions yourself (for example DROP FUNCTION %s;), then the extension.",
					 first)));
}

/*
 * Taking the extension's locks without deadlocking (see the file header)
 */

static bool
is_reliq_worker(pid_t pid)
{
	const char *type = GetBackgroundWorkerTypeByPid(pid);

	return type != NULL && strcmp(type, RELIQ_WORKER_TYPE) == 0;
}

/* Terminate a reliq worker, once; it exits as at a fast shutdown. */
static void
terminate_worker(pid_t pid, List **terminated)
{
	if (list_member_int(*terminated, pid))
		return;
	ereport(DEBUG1,
			(errmsg("DROP EXTENSION reliq: terminating reliq worker %d", (int) pid)));
	(void) kill(pid, SIGTERM);
	*terminated = lappend_int(*terminated, pid);
}

/* Wait a little, or give up after lock_timeout, as a lock wait would. */
static void
wait_a_little(TimestampTz start, const char *what)
{
	if (LockTimeout > 0 &&
		TimestampDifferenceExceeds(start, GetCurrentTimestamp(), LockTimeout))
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("could not obtain lock on %s", what)));
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 RELIQ_GUARD_POLL_MS, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * Stop the reliq workers of this database, once reliq.subscription is ours
 * (so none is inside a batch past its first statement, and the launcher,
 * which reads reliq.subscription first, starts none).  A worker is
 * terminated when it is idle between batches -- seen idle twice, a poll
 * apart, so not in the instant between publishing its outbox and acking
 * -- or waiting for a lock: its next batch, rolled back.  Terminating one
 * between its COMMIT and its acks would have that batch delivered again,
 * and applied again once the extension is back, for its ledger goes with
 * the extension.  Returns how many were terminated.
 */
static int
stop_workers(List **terminated)
{
	TimestampTz start = GetCurrentTimestamp();
	List	   *idle_before = NIL;

	for (;;)
	{
		List	   *idle_now = NIL;
		bool		any = false;
		int			n;
		int			i;

		pgstat_clear_backend_activity_snapshot();
		n = pgstat_fetch_stat_numbackends();
		for (i = 1; i <= n; i++)
		{
			LocalPgBackendStatus *local = reliq_local_backend_status(i);
			PgBackendStatus *status = local ? &local->backendStatus : NULL;
			PGPROC	   *proc;
			pid_t		pid;

			if (status == NULL || status->st_backendType != B_BG_WORKER ||
				status->st_databaseid != MyDatabaseId ||
				!is_reliq_worker(status->st_procpid))
				continue;
			pid = status->st_procpid;
			any = true;
			proc = BackendPidGetProc(pid);
			if (status->st_state == STATE_IDLE)
			{
				idle_now = lappend_int(idle_now, pid);
				if (list_member_int(idle_before, pid))
					terminate_worker(pid, terminated);
			}
			else if (proc != NULL && proc->waitLock != NULL)
				terminate_worker(pid, terminated);
		}
		pgstat_clear_backend_activity_snapshot();
		list_free(idle_before);
		idle_before = idle_now;
		if (!any)
			break;
		wait_a_little(start, "the reliq workers");
	}
	list_free(idle_before);
	return list_length(*terminated);
}

/* The extension's own relations, reliq.subscription first. */
static List *
extension_relations(Oid extension)
{
	Relation	depend;
	ScanKeyData key[2];
	SysScanDesc scan;
	HeapTuple	tuple;
	Oid			namespace = get_namespace_oid(RELIQ_SCHEMA_NAME, true);
	Oid			subscription = OidIsValid(namespace) ?
		get_relname_relid("subscription", namespace) : InvalidOid;
	List	   *relations = NIL;

	depend = table_open(DependRelationId, AccessShareLock);
	ScanKeyInit(&key[0], Anum_pg_depend_refclassid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(ExtensionRelationId));
	ScanKeyInit(&key[1], Anum_pg_depend_refobjid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(extension));
	scan = systable_beginscan(depend, DependReferenceIndexId, true, NULL, 2, key);
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		Form_pg_depend dep = (Form_pg_depend) GETSTRUCT(tuple);

		if (dep->classid == RelationRelationId &&
			dep->deptype == DEPENDENCY_EXTENSION &&
			dep->objid != subscription)
			relations = lappend_oid(relations, dep->objid);
	}
	systable_endscan(scan);
	table_close(depend, AccessShareLock);

	list_sort(relations, list_oid_cmp);
	if (OidIsValid(subscription))
		relations = lcons_oid(subscription, relations);
	return relations;
}

/*
 * AccessExclusiveLock on a relation of the extension, once the workers are
 * stopped.  Does not queue while only reliq workers hold it (one started
 * meanwhile): a worker holding it while it waits for a lock is waiting for
 * us, and is terminated.  Anyone else is waited for in the lock queue.
 */
static void
lock_relation_ending_workers(Oid relid, List **terminated)
{
	LOCKTAG		tag;
	TimestampTz start = GetCurrentTimestamp();

	SET_LOCKTAG_RELATION(tag, MyDatabaseId, relid);
	for (;;)
	{
		VirtualTransactionId *holder;

		if (ConditionalLockRelationOid(relid, AccessExclusiveLock))
			return;
		for (holder = GetLockConflicts(&tag, AccessExclusiveLock, NULL);
			 VirtualTransactionIdIsValid(*holder); holder++)
		{
			PGPROC	   *proc = reliq_vxid_proc(holder);
			pid_t		pid = proc ? proc->pid : 0;

			if (pid == 0 || !is_reliq_worker(pid))
			{
				LockRelationOid(relid, AccessExclusiveLock);
				return;
			}
			if (proc->waitLock != NULL)
				terminate_worker(pid, terminated);
		}
		wait_a_little(start, psprintf("relation \"%s\"", get_rel_name(relid)));
	}
}

/* Before the drop: see the file header.  Returns the workers terminated. */
static List *
quiesce(Oid extension)
{
	List	   *relations;
	List	   *terminated = NIL;
	ListCell   *cell;

	LockDatabaseObject(ExtensionRelationId, extension, 0, AccessExclusiveLock);
	if (get_extension_oid(RELIQ_EXTENSION_NAME, true) != extension)
		return NIL;				/* dropped while we waited */
	relations = extension_relations(extension);
	foreach(cell, relations)
	{
		if (cell == list_head(relations))
		{
			LockRelationOid(lfirst_oid(cell), AccessExclusiveLock);
			(void) stop_workers(&terminated);
		}
		else
			lock_relation_ending_workers(lfirst_oid(cell), &terminated);
	}
	list_free(relations);
	return terminated;
}

static bool
names_reliq(const DropStmt *stmt)
{
	ListCell   *cell;

	foreach(cell, stmt->objects)
		if (strcmp(strVal(lfirst(cell)), RELIQ_EXTENSION_NAME) == 0)
			return true;
	return false;
}

static void
next_process_utility(PlannedStmt *pstmt, const char *queryString,
					 bool readOnlyTree, ProcessUtilityContext context,
					 ParamListInfo params, QueryEnvironment *queryEnv,
					 DestReceiver *dest, QueryCompletion *qc)
{
	if (prev_process_utility)
		prev_process_utility(pstmt, queryString, readOnlyTree, context,
							 params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
}

static void
guard_process_utility(PlannedStmt *pstmt, const char *queryString,
					  bool readOnlyTree, ProcessUtilityContext context,
					  ParamListInfo params, QueryEnvironment *queryEnv,
					  DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	if (IsA(parsetree, DropStmt) &&
		castNode(DropStmt, parsetree)->removeType == OBJECT_EXTENSION &&
		names_reliq(castNode(DropStmt, parsetree)))
	{
		DropStmt   *stmt = castNode(DropStmt, parsetree);
		Oid			extension = get_extension_oid(RELIQ_EXTENSION_NAME, true);

		if (OidIsValid(extension))
		{
			List	   *terminated = NIL;
			char	   *list;
			char	   *first;
			int			count = user_functions(extension, &list, &first);

			if (count > 0 && stmt->behavior == DROP_CASCADE)
				refuse_cascade_over_user_functions(count, list, first);
			/* without CASCADE PostgreSQL refuses: leave the workers be */
			if (count == 0)
				terminated = quiesce(extension);
			dropping_extension = true;
			PG_TRY();
			{
				next_process_utility(pstmt, queryString, readOnlyTree, context,
									 params, queryEnv, dest, qc);
			}
			PG_FINALLY();
			{
				dropping_extension = false;
			}
			PG_END_TRY();
			/* one the launcher had started just before, waiting for us */
			(void) stop_workers(&terminated);
			if (terminated != NIL)
				ereport(LOG,
						(errmsg("DROP EXTENSION reliq: stopped %d reliq workers of database \"%s\"",
								list_length(terminated), get_database_name(MyDatabaseId))));
			return;
		}
	}
	else if (IsA(parsetree, RenameStmt))
	{
		RenameStmt *stmt = castNode(RenameStmt, parsetree);

		check_function_move(stmt->renameType, stmt->object, "rename");
	}
	else if (IsA(parsetree, AlterObjectSchemaStmt))
	{
		AlterObjectSchemaStmt *stmt = castNode(AlterObjectSchemaStmt, parsetree);

		check_function_move(stmt->objectType, stmt->object, "move");
	}
	next_process_utility(pstmt, queryString, readOnlyTree, context, params,
						 queryEnv, dest, qc);
}

/*
 * The gate, for the workers, the launcher and the monitor.  After the lock
 * is granted the catalogs are read afresh (LockDatabaseObject accepts the
 * invalidations of what it waited for): a drop that committed meanwhile
 * shows.
 */
bool
reliq_guard_enter(void)
{
	Oid			extension = get_extension_oid(RELIQ_EXTENSION_NAME, true);

	if (!OidIsValid(extension))
		return false;
	LockDatabaseObject(ExtensionRelationId, extension, 0, AccessShareLock);
	return get_extension_oid(RELIQ_EXTENSION_NAME, true) == extension;
}

void
reliq_guard_install(void)
{
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = guard_process_utility;
	prev_object_access = object_access_hook;
	object_access_hook = guard_object_access;
}
