/*
 * reliq 0.2 -> 0.3
 *
 * Every SQL change after the release of 0.2 lives here (and a fresh install
 * of 0.3 runs reliq--0.1.sql, reliq--0.1--0.2.sql, then this script).
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION reliq UPDATE TO '0.3'" to load this file. \quit
