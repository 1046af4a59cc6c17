/*-------------------------------------------------------------------------
 *
 * settings.c
 *	  The reliq.* settings (GUCs): their variables, definitions, checks and
 *	  defaults, and the rules that follow from one setting alone.
 *
 * Every part of reliq reads the variables (settings.h); only _PG_init
 * defines them, once, in the postmaster.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "nats_url.h"
#include "order_registry.h"
#include "profile.h"
#include "settings.h"
#include "trace.h"

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
uint64		reliq_instance_id = 0;	/* not a setting: see reliq_draw_instance_id */

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

/*
 * reliq.metrics_path: an absolute path of printable characters without
 * spaces or a query, as the request line carries it.
 */
static bool
check_metrics_path(char **newval, void **extra, GucSource source)
{
	const char *p = *newval;

	if (p == NULL || p[0] != '/')
	{
		GUC_check_errdetail("The path of the Prometheus endpoint must start with \"/\".");
		return false;
	}
	for (; *p; p++)
	{
		if (*p <= ' ' || *p >= 127 || *p == '?' || *p == '#')
		{
			GUC_check_errdetail("The path of the Prometheus endpoint may not contain spaces, control characters, \"?\" or \"#\".");
			return false;
		}
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

/* Define every reliq.* setting; from _PG_init. */
void
reliq_settings_define(void)
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
	DefineCustomIntVariable("reliq.max_ordered_messages",
							"Number of messages of ordered subscriptions (ordering => ...) received and not finished yet that shared memory can keep.",
							"A worker pulls nothing for an ordered subscription while the room is taken; each holds at most about its max_ack_pending.",
							&reliq_max_ordered_messages, 20000, 1000, 10000000,
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
							   PGC_SIGHUP, 0, check_metrics_path, NULL, NULL);

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
	reliq_profile_define();

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

	/* reliq.otlp_* and the other tracing settings: trace.c's own */
	reliq_trace_define_settings();

	MarkGUCPrefixReserved("reliq");
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

/*
 * Drawn once per postmaster and inherited by every process it starts (a
 * crash restart of the backends keeps it; a server restart, or a copy of
 * the data directory started elsewhere, draws another).
 */
void
reliq_draw_instance_id(void)
{
	if (!pg_strong_random(&reliq_instance_id, sizeof(reliq_instance_id)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random instance id for reliq")));
}
