/*-------------------------------------------------------------------------
 *
 * settings.h
 *	  The reliq.* settings (GUCs), defined in settings.c; see there for
 *	  meaning and defaults.
 *
 *-------------------------------------------------------------------------
 */
#ifndef RELIQ_SETTINGS_H
#define RELIQ_SETTINGS_H

extern char *reliq_database_name;
extern char *reliq_nats_url;
extern int	reliq_max_workers;
extern int	reliq_max_subscriptions;
extern int	reliq_fetch_timeout;
extern int	reliq_nats_timeout;
extern int	reliq_naptime;
extern int	reliq_refresh_interval;
extern int	reliq_systemic_failure_threshold;
extern char *reliq_nats_credentials_file;
extern char *reliq_nats_token;
extern char *reliq_nats_user;
extern char *reliq_nats_password;
extern char *reliq_nats_tls_ca_file;
extern char *reliq_nats_tls_cert_file;
extern char *reliq_nats_tls_key_file;
extern char *reliq_traceparent;
extern int	reliq_health_disconnect_timeout;
extern int	reliq_metrics_port;
extern char *reliq_metrics_listen_address;
extern char *reliq_metrics_path;
extern int	reliq_lease_ttl;
extern int	reliq_max_retry_interval;
extern char *reliq_lease_bucket;

/* This postmaster's random id, drawn in _PG_init: names it in leases. */
extern uint64 reliq_instance_id;

extern void reliq_settings_define(void);
extern void reliq_draw_instance_id(void);

/*
 * An error unless the current database is the one reliq's workers serve:
 * SQL functions that only make sense where the workers run check it.
 */
extern void reliq_require_worker_database(const char *what);

#endif							/* RELIQ_SETTINGS_H */
