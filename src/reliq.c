/*-------------------------------------------------------------------------
 *
 * reliq.c
 *	  Module entry point: refuses to load unless preloaded, defines the
 *	  settings (settings.c), installs the shared-memory and guard hooks and
 *	  registers reliq's static background workers: the launcher, the
 *	  monitor, the trace exporter and, with reliq.metrics_port, the metrics
 *	  endpoint (none under pg_upgrade, in binary-upgrade mode).
 *
 * Nothing here talks to NATS: the postmaster must never start the NATS
 * client's threads, so every cnats call happens in a worker or a backend.
 * Nothing calls back into this file.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"

#include "guard.h"
#include "order_registry.h"
#include "reliq.h"
#include "shmem.h"
#include "trace.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/*
 * The static background workers.  bgw_type and bgw_name are both the type,
 * so pg_stat_activity's backend_type names it; restart is in seconds.
 */
typedef struct StaticWorker
{
	const char *type;
	const char *function;
	bool		database;		/* connects to reliq.database_name */
	int			restart;
} StaticWorker;

static const StaticWorker static_workers[] = {
	{"reliq launcher", "reliq_launcher_main", true, 5},
	{"reliq monitor", "reliq_monitor_main", true, 10},
	{"reliq trace exporter", "reliq_trace_exporter_main", false, 10},
	{"reliq metrics", "reliq_metrics_server_main", false, 10},	/* last */
};

static void
register_static_worker(const StaticWorker *w)
{
	BackgroundWorker bgw;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS |
		(w->database ? BGWORKER_BACKEND_DATABASE_CONNECTION : 0);
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = w->restart;
	strlcpy(bgw.bgw_library_name, RELIQ_LIBRARY_NAME, BGW_MAXLEN);
	strlcpy(bgw.bgw_function_name, w->function, BGW_MAXLEN);
	strlcpy(bgw.bgw_name, w->type, BGW_MAXLEN);
	strlcpy(bgw.bgw_type, w->type, BGW_MAXLEN);
	RegisterBackgroundWorker(&bgw);
}

void
_PG_init(void)
{
	int			n = lengthof(static_workers);
	int			i;

	/*
	 * pg_upgrade checks that the new installation can LOAD every library
	 * the old cluster's functions name, in a server started in
	 * binary-upgrade mode (-b).  That is not a server reliq runs in, so
	 * such a LOAD succeeds without doing anything.
	 */
	if (!process_shared_preload_libraries_in_progress && IsBinaryUpgrade)
		return;
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("reliq must be loaded via shared_preload_libraries"),
				 errdetail("reliq runs background workers and keeps shared memory, which only a library loaded at server start can do."),
				 errhint("Add reliq to shared_preload_libraries in postgresql.conf and restart the server.")));

	reliq_settings_define();
	reliq_draw_instance_id();
	reliq_shmem_install_hooks();
	reliq_trace_install_hooks();
	reliq_order_registry_install_hooks();
	reliq_guard_install();

	/*
	 * pg_upgrade starts both clusters in binary-upgrade mode with their own
	 * postgresql.conf.  No worker may run there: in the old cluster a
	 * commit would hand the new one rows whose transaction ids pg_upgrade
	 * gives out again (it has read the next one already), in the new one
	 * the launcher's connection makes pg_restore's DROP DATABASE of
	 * reliq.database_name fail, and neither may touch a lease.
	 */
	if (IsBinaryUpgrade)
		return;

	/* the metrics endpoint only with reliq.metrics_port */
	if (reliq_metrics_port == 0)
		n--;
	for (i = 0; i < n; i++)
		register_static_worker(&static_workers[i]);
}
