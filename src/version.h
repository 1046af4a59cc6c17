/*-------------------------------------------------------------------------
 *
 * version.h
 *	  The version of the loaded library, and the check that the installed
 *	  SQL (pg_extension.extversion) is of the same version.
 *
 * RELIQ_VERSION moves with default_version in reliq.control: a release
 * that changes the SQL ships reliq--OLD--NEW.sql, and the library refuses
 * to work on a catalog of another version until ALTER EXTENSION reliq
 * UPDATE has run.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_VERSION_H
#define RELIQ_VERSION_H

#define RELIQ_VERSION "0.3"

extern char *reliq_catalog_version(void);
extern bool reliq_catalog_version_ok(int elevel);

#endif							/* RELIQ_VERSION_H */
