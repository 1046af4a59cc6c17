/*-------------------------------------------------------------------------
 *
 * version.c
 *	  reliq.version(), and the check that the library and the installed
 *	  SQL agree.
 *
 * A new library (a package upgrade and a restart) may find the SQL of
 * the previous release in the database until someone runs ALTER
 * EXTENSION reliq UPDATE.  Workers must not run on it: the C code
 * expects the tables, functions and views of its own version.  The
 * launcher and each worker call reliq_catalog_version_ok() in the
 * transaction in which they read the catalog: the launcher says why
 * (a WARNING that names the command to run, once) and serves nothing, so
 * its workers stop; a worker just gives up the subscription.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"

#include "reliq.h"
#include "version.h"

PG_FUNCTION_INFO_V1(reliq_version);

/*
 * The installed version of the extension in the current database
 * (pg_extension.extversion), palloc'd; NULL when it is not installed.
 * Must be called inside a transaction.
 */
char *
reliq_catalog_version(void)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	char	   *version = NULL;

	Assert(IsTransactionState());
	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum(RELIQ_EXTENSION_NAME));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;
		Datum		datum = heap_getattr(tuple, Anum_pg_extension_extversion,
										 RelationGetDescr(rel), &isnull);

		if (!isnull)
			version = text_to_cstring(DatumGetTextPP(datum));
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return version;
}

/*
 * Error out when the extension is installed in this database at another
 * version than the library's.  Nothing happens when it is not installed:
 * callers deal with that as before (they wait for CREATE EXTENSION).
 * Called by the launcher and the workers inside a transaction.
 */
bool
reliq_catalog_version_ok(int elevel)
{
	char	   *installed = reliq_catalog_version();
	char	   *database;

	if (installed == NULL || strcmp(installed, RELIQ_VERSION) == 0)
		return true;
	database = get_database_name(MyDatabaseId);
	ereport(elevel,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("extension \"reliq\" is installed at version %s, but the loaded library is version %s",
					installed, RELIQ_VERSION),
			 errdetail("The SQL of reliq %s in database \"%s\" does not match the reliq %s library this server loaded; no messages are consumed until they agree.",
					   installed, database ? database : "?", RELIQ_VERSION),
			 errhint("Run ALTER EXTENSION reliq UPDATE in database \"%s\".",
					 database ? database : reliq_database_name)));
	return false;
}

/* reliq.version(): the version of the loaded library. */
Datum
reliq_version(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(RELIQ_VERSION));
}
