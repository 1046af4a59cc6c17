/*-------------------------------------------------------------------------
 *
 * spi_safe.c
 *	  How reliq runs its own SQL statements through SPI: under a safe
 *	  search_path, with plans kept across transactions, and with every
 *	  result code checked.
 *
 * reliq's own statements are parsed and executed with search_path =
 * pg_catalog, pg_temp, so that no object planted in another schema can
 * stand in for a built-in.  (An exact-type function such as
 * public.unnest(bigint[]) beats pg_catalog.unnest(anyarray) whatever the
 * schema order.)  Preparing under that path is not enough: up to
 * PostgreSQL 16, a cached plan run under a different search_path is
 * analysed again under the one in force -- so kept plans are also
 * executed under it (reliq_spi_execute_plan).  Handlers run with the
 * session's search_path.
 *
 * SPI reports errors in SQL by throwing them; a result code other than the
 * one a statement must give (a negative SPI_ERROR_*, or a statement of
 * another kind) means reliq itself is wrong, and is an internal error
 * naming what reliq was doing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/guc.h"

#include "spi_safe.h"

int
reliq_enter_safe_search_path(void)
{
	int			nest_level = NewGUCNestLevel();

	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return nest_level;
}

void
reliq_leave_safe_search_path(int nest_level)
{
	AtEOXact_GUC(true, nest_level);
}

/* SPI_execute_plan under the safe search_path; returns its result code. */
static int
execute_plan_safely(SPIPlanPtr plan, Datum *values, const char *nulls,
						  bool read_only, long count)
{
	int			nest = reliq_enter_safe_search_path();
	int			rc = SPI_execute_plan(plan, values, nulls, read_only, count);

	reliq_leave_safe_search_path(nest);
	return rc;
}

/* SPI_prepare and SPI_keepplan, or an error naming the statement. */
SPIPlanPtr
reliq_prepare_kept(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not prepare a statement of reliq"),
				 errdetail("SPI_prepare returned %s for: %s",
						   SPI_result_code_string(SPI_result), sql)));
	reliq_spi_check(SPI_keepplan(plan), 0, "keep a prepared plan");
	return plan;
}

void
reliq_spi_connect(void)
{
	reliq_spi_check(SPI_connect(), SPI_OK_CONNECT, "connect to SPI");
}

void
reliq_spi_finish(void)
{
	reliq_spi_check(SPI_finish(), SPI_OK_FINISH, "disconnect from SPI");
}

/* An error unless rc is what the statement must return; what: "read ...". */
void
reliq_spi_check(int rc, int expected, const char *what)
{
	if (rc != expected)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("reliq could not %s", what),
				 errdetail("SPI returned %s where %s was expected.",
						   SPI_result_code_string(rc),
						   expected == 0 ? "0" : SPI_result_code_string(expected))));
}

/* A statement of reliq's, with arguments, under the safe search_path. */
void
reliq_spi_execute(const char *what, const char *sql, int nargs,
				  Oid *argtypes, Datum *values, const char *nulls,
				  bool read_only, long count, int expected)
{
	int			nest = reliq_enter_safe_search_path();
	int			rc = SPI_execute_with_args(sql, nargs, argtypes, values, nulls,
										   read_only, count);

	reliq_leave_safe_search_path(nest);
	reliq_spi_check(rc, expected, what);
}

/* A kept plan, under the safe search_path. */
void
reliq_spi_execute_plan(const char *what, SPIPlanPtr plan, Datum *values,
					   const char *nulls, bool read_only, long count,
					   int expected)
{
	reliq_spi_check(execute_plan_safely(plan, values, nulls, read_only,
											  count),
					expected, what);
}

char *
reliq_spi_text(HeapTuple tuple, TupleDesc desc, int column)
{
	char	   *value = SPI_getvalue(tuple, desc, column);

	return value ? pstrdup(value) : NULL;
}

int64
reliq_spi_int64(HeapTuple tuple, TupleDesc desc, int column)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tuple, desc, column, &isnull);

	return isnull ? 0 : DatumGetInt64(d);
}

int32
reliq_spi_int32(HeapTuple tuple, TupleDesc desc, int column)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tuple, desc, column, &isnull);

	return isnull ? 0 : DatumGetInt32(d);
}

bool
reliq_spi_bool(HeapTuple tuple, TupleDesc desc, int column)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tuple, desc, column, &isnull);

	return isnull ? false : DatumGetBool(d);
}
