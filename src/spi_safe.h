/*-------------------------------------------------------------------------
 *
 * spi_safe.h
 *	  reliq's own SQL statements through SPI: under a safe search_path,
 *	  with kept plans, and every result code checked (see spi_safe.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_SPI_SAFE_H
#define RELIQ_SPI_SAFE_H

#include "executor/spi.h"

extern int	reliq_enter_safe_search_path(void);
extern void reliq_leave_safe_search_path(int nest_level);
extern SPIPlanPtr reliq_prepare_kept(const char *sql, int nargs,
									 Oid *argtypes);

extern void reliq_spi_connect(void);
extern void reliq_spi_finish(void);
extern void reliq_spi_check(int rc, int expected, const char *what);
extern void reliq_spi_execute(const char *what, const char *sql, int nargs,
							  Oid *argtypes, Datum *values, const char *nulls,
							  bool read_only, long count, int expected);
extern void reliq_spi_execute_plan(const char *what, SPIPlanPtr plan,
								   Datum *values, const char *nulls,
								   bool read_only, long count, int expected);

/* Columns of SPI_tuptable's rows; NULL reads as NULL, 0 or false. */
extern char *reliq_spi_text(HeapTuple tuple, TupleDesc desc, int column);
extern int64 reliq_spi_int64(HeapTuple tuple, TupleDesc desc, int column);
extern int32 reliq_spi_int32(HeapTuple tuple, TupleDesc desc, int column);
extern bool reliq_spi_bool(HeapTuple tuple, TupleDesc desc, int column);

#endif							/* RELIQ_SPI_SAFE_H */
