/*
 * reliq 0.1 -> 0.2
 *
 * Every SQL change after the release of 0.1 lives here (and a fresh install
 * of 0.2 runs reliq--0.1.sql, then this script).
 *
 * - Production topologies (issue 9): the lease of each consumer
 *   (reliq._lease_status(), reliq.take_over()), the subscription states
 *   'fenced', 'acquiring' and 'standby', health() on standbys and for
 *   streams that cannot redeliver, and create_stream(..., replicas).
 */
\echo Use "ALTER EXTENSION reliq UPDATE TO '0.2'" to load this file. \quit

/*
 * create_stream gains replicas (a JetStream cluster keeps that many copies)
 */
DROP FUNCTION reliq.create_stream(text, text[]);
CREATE FUNCTION reliq.create_stream(stream text, subjects text[], replicas integer DEFAULT 1)
RETURNS text
LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'reliq_create_stream';
COMMENT ON FUNCTION reliq.create_stream(text, text[], integer) IS 'Creates the JetStream stream with that many replicas (1 to 5), or sets the subjects of an existing one; returns ''created'' or ''updated''';
REVOKE ALL ON FUNCTION reliq.create_stream(text, text[], integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reliq.create_stream(text, text[], integer) TO reliq_admin;

/*
 * Leases: which PostgreSQL cluster owns each consumer
 */
CREATE FUNCTION reliq._lease_status(
    OUT subscription_id bigint, OUT lease_state text, OUT lease_holder text,
    OUT lease_valid_until timestamptz, OUT stream_retention text)
RETURNS SETOF record
LANGUAGE c AS 'MODULE_PATHNAME', 'reliq_lease_status';

CREATE FUNCTION reliq._request_take_over(subscription_id bigint)
RETURNS void
LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'reliq_request_take_over';

CREATE FUNCTION reliq.take_over(subscription_name text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s reliq.subscription;
BEGIN
    IF pg_is_in_recovery() THEN
        RAISE EXCEPTION 'this server is a hot standby'
            USING ERRCODE = 'read_only_sql_transaction',
                  DETAIL = 'A standby consumes nothing; it takes over by itself once promoted.';
    END IF;
    IF current_setting('reliq.lease_ttl')::interval = interval '0' THEN
        RAISE EXCEPTION 'leases are off (reliq.lease_ttl = 0)'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Without leases every cluster consumes; set reliq.lease_ttl to use them.';
    END IF;
    s := reliq._owned_subscription(take_over.subscription_name, 'take over');
    PERFORM reliq._request_take_over(s.id);
    RETURN format('subscription %s: this cluster takes the lease of consumer %s at the next renewal and consumes %s later, when the former owner has stopped',
                  s.subscription_name, s.consumer, current_setting('reliq.lease_ttl'));
END
$$;
COMMENT ON FUNCTION reliq.take_over(text) IS 'Makes this cluster the owner of the subscription''s consumer; it consumes one reliq.lease_ttl later, once the former owner has stopped';
REVOKE ALL ON FUNCTION reliq.take_over(text), reliq._lease_status(),
    reliq._request_take_over(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reliq.take_over(text) TO PUBLIC;  -- checks membership itself
GRANT EXECUTE ON FUNCTION reliq._request_take_over(bigint) TO reliq_admin;
GRANT EXECUTE ON FUNCTION reliq._lease_status() TO reliq_admin, pg_monitor;

/*
 * subscription_stats: the states standby, fenced and acquiring; who holds
 * the lease; the stream's retention
 */
CREATE OR REPLACE VIEW reliq.subscription_stats AS
SELECT s.subscription_name,
       s.enabled,
       CASE WHEN NOT s.enabled THEN 'paused'
            WHEN pg_catalog.pg_is_in_recovery() THEN 'standby'
            ELSE COALESCE(st.state, 'stopped') END AS state,
       COALESCE(st.workers, 0) AS workers,
       s.concurrency,
       s.batch_size,
       COALESCE(st.received, 0) AS received,
       COALESCE(st.processed, 0) AS processed,
       COALESCE(st.failed, 0) AS failed,
       COALESCE(st.retried, 0) AS retried,
       COALESCE(st.dead_lettered, 0) AS dead_lettered,
       COALESCE(st.duplicates, 0) AS duplicates,
       COALESCE(st.batches, 0) AS batches,
       COALESCE(st.slow_path_batches, 0) AS slow_path_batches,
       COALESCE(st.in_flight, 0) AS in_flight,
       st.pending,
       st.ack_pending,
       st.redelivered,
       st.ack_floor,
       st.max_ack_pending,
       st.last_error,
       st.last_error_at,
       st.last_failure_at,
       st.last_batch_at,
       COALESCE(st.messages_per_second, 0) AS messages_per_second,
       st.batch_p50,
       st.batch_p99,
       st.latency_p50,
       st.latency_p99,
       st.consumer_info_at,
       st.disconnected_since,
       COALESCE(st.lag_growing, false) AS lag_growing,
       st.stats_reset_at,
       s.stream,
       s.subject,
       s.consumer,
       l.lease_holder,
       l.lease_valid_until,
       l.stream_retention
  FROM reliq.subscription s
  LEFT JOIN reliq._subscription_stats() st ON st.subscription_id OPERATOR(pg_catalog.=) s.id
  LEFT JOIN reliq._lease_status() l ON l.subscription_id OPERATOR(pg_catalog.=) s.id;

/*
 * health(): a standby is ok (it consumes after promotion); a fenced
 * subscription is down, with the command that moves it here; a stream that
 * cannot redeliver is said.
 */
CREATE OR REPLACE FUNCTION reliq.health(OUT subscription_name text, OUT status text, OUT reasons text[])
RETURNS SETOF record
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT s.subscription_name,
       CASE WHEN bool_or(r.level = 'down') THEN 'down'
            WHEN bool_or(r.level = 'degraded') THEN 'degraded'
            ELSE 'ok' END,
       COALESCE(array_agg(r.reason ORDER BY r.ord) FILTER (WHERE r.reason IS NOT NULL), '{}')
  FROM reliq.subscription_stats s
  LEFT JOIN LATERAL (VALUES
      (0, s.state = 'standby', 'ok',
          'standby: this server is a hot standby; the subscription is consumed after promotion'),
      (1, NOT s.enabled, 'ok', 'paused'),
      (2, s.enabled AND s.workers = 0 AND s.state NOT IN ('standby', 'fenced', 'acquiring'),
          'down', 'no worker running'),
      (3, s.state = 'failing', 'down',
          'systemic failure: ' || COALESCE(s.last_error, 'unknown error')),
      (4, s.disconnected_since < now() - current_setting('reliq.health_disconnect_timeout')::interval,
          'down', format('disconnected from NATS for %s', date_trunc('second', now() - s.disconnected_since))),
      (5, s.disconnected_since >= now() - current_setting('reliq.health_disconnect_timeout')::interval,
          'degraded', 'disconnected from NATS, reconnecting'),
      (6, s.state = 'backing_off', 'degraded',
          'backing off: ' || COALESCE(s.last_error, 'retrying')),
      (7, s.max_ack_pending > 0 AND s.ack_pending >= s.max_ack_pending, 'degraded',
          format('stalled: %s messages await acknowledgement, the consumer''s max_ack_pending', s.ack_pending)),
      (8, s.lag_growing AND s.state NOT IN ('standby', 'fenced', 'acquiring'), 'degraded',
          format('lag growing while nothing is processed (%s pending)', s.pending)),
      (9, s.enabled AND s.workers > 0 AND s.consumer_info_at
            < now() - 3 * current_setting('reliq.refresh_interval')::interval, 'degraded',
          format('no consumer information from the server since %s', s.consumer_info_at)),
      (10, s.state <> 'failing' AND s.last_failure_at > now() - interval '1 minute', 'degraded',
          'messages failed in the last minute: ' || s.last_error),
      (11, s.state = 'fenced', 'down',
          format('fenced: another PostgreSQL cluster owns consumer %s (%s); to consume here instead: SELECT reliq.take_over(%L);',
                 s.consumer, COALESCE(s.lease_holder, 'unknown'), s.subscription_name)),
      (12, s.state = 'acquiring', 'degraded',
          format('acquiring the lease of consumer %s, held by %s; consuming once it has run out (reliq.lease_ttl)',
                 s.consumer, COALESCE(s.lease_holder, 'unknown'))),
      (13, s.stream_retention IN ('interest', 'workqueue'), 'ok',
          format('stream %s has %s retention: acknowledged messages are deleted, so after a failover with asynchronous replication what the standby had not received cannot be delivered again; use synchronous replication',
                 s.stream, s.stream_retention))
  ) AS r(ord, active, level, reason) ON r.active
 GROUP BY s.subscription_name
 ORDER BY s.subscription_name
$$;
