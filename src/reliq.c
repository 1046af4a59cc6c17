/*-------------------------------------------------------------------------
 *
 * reliq.c
 *	  Module entry point: refuses to load unless preloaded, defines the
 *	  reliq.* settings, reserves shared memory and registers reliq's static
 *	  background workers: the launcher, the monitor, the trace exporter
 *	  and, with reliq.metrics_port, the metrics endpoint (none under
 *	  pg_upgrade, in binary-upgrade mode).
 *
 * Nothing here talks to NATS: the postmaster must never start the NATS
 * client's threads, so every cnats call happens in a worker or a backend.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/dbcommands.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "utils/guc.h"

#include "guard.h"
#include "launcher.h"
#include "metrics.h"
#include "monitor.h"
#include "nats_url.h"
#include "reliq.h"
#include "shmem.h"
#include "trace.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

char	   *reliq_database_name = NULL;
char	   *reliq_nats_url = NULL;
int			reliq_max_workers = 4;
int			reliq_max_subscriptions = 64;
int			reliq_fetch_timeout = 1000;
int			reliq_nats_timeout = 2000;
int			reliq_naptime = 1000;
int			reliq_refresh_interval = 5000;
int			reliq_systemic_failure_threshold = 10;
char	   *reliq_nats_credentials_file = NULL;
char	   *reliq_nats_token = NULL;
char	   *reliq_nats_user = NULL;
char	   *reliq_nats_password = NULL;
char	   *reliq_nats_tls_ca_file = NULL;
char	   *reliq_nats_tls_cert_file = NULL;
char	   *reliq_nats_tls_key_file = NULL;
char	   *reliq_traceparent = NULL;
int			reliq_health_disconnect_timeout = 10000;
int			reliq_metrics_port = 0;
char	   *reliq_metrics_listen_address = NULL;
char	   *reliq_metrics_path = NULL;
int			reliq_lease_ttl = 10000;
int			reliq_max_retry_interval = 5000;
char	   *reliq_lease_bucket = NULL;
uint64		reliq_instance_id = 0;

/*
 * The NATS C client (3.4.1) puts user, password and token into its
 * CONNECT message without escaping: a '"' or '\\' would make the server
 * refuse it as a protocol error.  Say so when the setting is made.
 */
static bool
check_connect_string(char **newval, void **extra, GucSource source)
{
	if (*newval != NULL && strncmp(*newval, "file:", 5) != 0 &&
		strpbrk(*newval, "\"\\") != NULL)
	{
		GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
		GUC_check_errdetail("The NATS C client sends it unescaped; a double quote or a backslash breaks its CONNECT message.");
		return false;
	}
	return true;
}

/* A secret: settable only in postgresql.conf, shown only to superusers. */
static void
define_secret(const char *name, const char *description, char **variable,
			  bool connect_string)
{
	DefineCustomStringVariable(name, description, NULL, variable, "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   connect_string ? check_connect_string : NULL,
							   NULL, NULL);
}

static void
define_settings(void)
{
	DefineCustomStringVariable("reliq.database_name",
							   "Database the reliq launcher and workers connect to.",
							   NULL, &reliq_database_name, "postgres",
							   PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("reliq.nats_url",
							   "NATS server URL, or a comma-separated list of URLs of one cluster.",
							   NULL, &reliq_nats_url, "nats://127.0.0.1:4222",
							   PGC_SIGHUP, 0, reliq_check_nats_url, NULL, NULL);
	DefineCustomIntVariable("reliq.max_workers",
							"Upper bound of reliq workers, all subscriptions together.",
							"Each worker is a background worker: max_worker_processes must leave room for them and the launcher.",
							&reliq_max_workers, 4, 0, 1024,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("reliq.max_subscriptions",
							"Number of subscriptions whose statistics are kept in shared memory.",
							NULL, &reliq_max_subscriptions, 64, 1, 100000,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("reliq.fetch_timeout",
							"Longest wait of one pull for messages.",
							"Also bounds how long a worker takes to notice a shutdown or a retuning while idle.",
							&reliq_fetch_timeout, 1000, 10, 60000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("reliq.nats_timeout",
							"Longest wait of one NATS request: connect, JetStream API call, publish acknowledgement, flush.",
							NULL, &reliq_nats_timeout, 2000, 10, 60000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("reliq.naptime",
							"How often the launcher re-reads reliq.subscription when nothing woke it.",
							NULL, &reliq_naptime, 1000, 10, 60000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("reliq.refresh_interval",
							"How often the monitor refreshes consumer information from the server and prunes the ledgers.",
							NULL, &reliq_refresh_interval, 5000, 100, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("reliq.systemic_failure_threshold",
							"Consecutive distinct failed messages after which a subscription is considered failing as a whole.",
							"While failing, failed messages are held and retried, never dead-lettered.",
							&reliq_systemic_failure_threshold, 10, 1, 1000000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);

	DefineCustomStringVariable("reliq.traceparent",
							   "W3C trace context of the message whose handler is running.",
							   "Set by reliq from the message's traceparent header while its handler runs; empty otherwise.",
							   &reliq_traceparent, "",
							   PGC_USERSET, GUC_NOT_IN_SAMPLE, NULL, NULL, NULL);
	DefineCustomIntVariable("reliq.health_disconnect_timeout",
							"How long a subscription may be disconnected from NATS before reliq.health() reports it down.",
							NULL, &reliq_health_disconnect_timeout, 10000, 0, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("reliq.metrics_port",
							"TCP port of the Prometheus endpoint (at reliq.metrics_path); 0 turns it off.",
							NULL, &reliq_metrics_port, 0, 0, 65535,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("reliq.metrics_listen_address",
							   "Address the Prometheus endpoint listens on.",
							   NULL, &reliq_metrics_listen_address, "127.0.0.1",
							   PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("reliq.metrics_path",
							   "HTTP path of the Prometheus endpoint.",
							   NULL, &reliq_metrics_path, "/metrics",
							   PGC_SIGHUP, 0, reliq_metrics_path_check, NULL, NULL);

	DefineCustomIntVariable("reliq.max_retry_interval",
							"Longest wait between two attempts of a worker to connect to NATS or attach to its consumer.",
							"Attempts start reliq.naptime apart and double; a server that returns is noticed within this time.",
							&reliq_max_retry_interval, 5000, 10, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("reliq.lease_ttl",
							"How long a consumer's lease lasts unrenewed; 0 turns leases off.",
							"A failover resumes consumption within about this time after the former owner stopped; the owner renews every quarter of it.",
							&reliq_lease_ttl, 10000, 0, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomStringVariable("reliq.lease_bucket",
							   "JetStream key-value bucket holding the consumers' leases.",
							   NULL, &reliq_lease_bucket, "reliq_leases",
							   PGC_POSTMASTER, 0, NULL, NULL, NULL);

	define_secret("reliq.nats_credentials_file",
				  "NATS credentials file (JWT and NKey seed).",
				  &reliq_nats_credentials_file, false);
	define_secret("reliq.nats_token",
				  "NATS authentication token, or file:PATH to read it from a file.",
				  &reliq_nats_token, true);
	define_secret("reliq.nats_user", "NATS user name.", &reliq_nats_user, true);
	define_secret("reliq.nats_password",
				  "NATS password, or file:PATH to read it from a file.",
				  &reliq_nats_password, true);
	define_secret("reliq.nats_tls_ca_file",
				  "CA certificates (PEM) that verify the NATS server.",
				  &reliq_nats_tls_ca_file, false);
	define_secret("reliq.nats_tls_cert_file",
				  "Client certificate (PEM) presented to the NATS server.",
				  &reliq_nats_tls_cert_file, false);
	define_secret("reliq.nats_tls_key_file",
				  "Private key (PEM) of the client certificate.",
				  &reliq_nats_tls_key_file, false);

	reliq_trace_define_settings();

	MarkGUCPrefixReserved("reliq");
}

void
_PG_init(void)
{
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

	define_settings();

	/*
	 * Drawn once per postmaster and inherited by every process it starts
	 * (a crash restart of the backends keeps it; a server restart, or a
	 * copy of the data directory started elsewhere, draws another).
	 */
	if (!pg_strong_random(&reliq_instance_id, sizeof(reliq_instance_id)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random instance id for reliq")));
	reliq_shmem_install_hooks();
	reliq_trace_install_hooks();
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
	reliq_launcher_register();
	reliq_monitor_register();
	reliq_trace_exporter_register();
	if (reliq_metrics_port > 0)
		reliq_metrics_server_register();
}

/*
 * Register one of reliq's static background workers (launcher, monitor,
 * metrics); bgw_type and bgw_name are both `type`, so pg_stat_activity's
 * backend_type names it.
 */
void
reliq_register_static_worker(const char *type, const char *function,
							 bool database, int restart_seconds)
{
	BackgroundWorker bgw;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS |
		(database ? BGWORKER_BACKEND_DATABASE_CONNECTION : 0);
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = restart_seconds;
	strlcpy(bgw.bgw_library_name, RELIQ_LIBRARY_NAME, BGW_MAXLEN);
	strlcpy(bgw.bgw_function_name, function, BGW_MAXLEN);
	strlcpy(bgw.bgw_name, type, BGW_MAXLEN);
	strlcpy(bgw.bgw_type, type, BGW_MAXLEN);
	RegisterBackgroundWorker(&bgw);
}

static bool
in_worker_database(void)
{
	char	   *current = get_database_name(MyDatabaseId);

	return current != NULL && strcmp(current, reliq_database_name) == 0;
}

/*
 * Functions that need the workers (subscriptions, statistics, waiting for
 * idle) refuse to run elsewhere rather than silently doing nothing.
 */
void
reliq_require_worker_database(const char *what)
{
	if (!in_worker_database())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s needs the reliq workers, which run only in database \"%s\"",
						what, reliq_database_name),
				 errhint("Connect to database \"%s\", or set reliq.database_name to this database and restart the server.",
						 reliq_database_name)));
}
