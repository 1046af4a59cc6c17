/*
 * reliq 0.1 -> 0.2
 *
 * Every SQL change after the release of 0.1 lives here (and a fresh install
 * of 0.2 runs reliq--0.1.sql, then this script).
 *
 * - Production topologies (issue 9): the lease of each consumer
 *   (reliq._subscription_status(), reliq.take_over()), the subscription states
 *   'fenced', 'acquiring' and 'standby', health() on standbys and for
 *   streams that cannot redeliver, and create_stream(..., replicas).
 * - One source per rule (issue 10): state names from C
 *   (reliq._state_names()), the settings' ranges from the CHECK
 *   constraints (reliq._setting_check()), MaxAckPending from C.
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
 * A subscription's position starts at its creation.  The database owns the
 * position (a cluster that acquires a consumer's lease rewinds it to the
 * floor its own tables record), so the floor must exist from the first
 * moment: a subscription made again over a kept consumer continues from
 * that consumer's position, not from the start of the stream; one made
 * with start => 'new' starts after the stream's last message.  Written in
 * create_subscription's transaction, so it replicates with the
 * subscription row.
 */
DROP FUNCTION reliq._ensure_consumer(text, text, text, interval, bigint, text, text);
CREATE FUNCTION reliq._ensure_consumer(stream text, consumer text, subject text,
                                       ack_wait interval, max_ack_pending bigint,
                                       start text, description text)
RETURNS TABLE (created boolean, num_pending bigint, num_ack_pending bigint,
               ack_floor bigint, stream_created bigint, stream_retention text)
LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'reliq_ensure_consumer';
REVOKE ALL ON FUNCTION reliq._ensure_consumer(text, text, text, interval, bigint, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reliq._ensure_consumer(text, text, text, interval, bigint, text, text) TO reliq_admin;

-- SECURITY DEFINER: reliq's bookkeeping tables are reliq's alone.
CREATE FUNCTION reliq._record_start(p_subscription_id bigint, p_stream_created bigint, p_ack_floor bigint)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_stream_created IS NULL OR NOT EXISTS (
           SELECT FROM reliq.subscription s
            WHERE s.id = p_subscription_id AND pg_has_role(s.owner, 'USAGE')) THEN
        RETURN;
    END IF;
    INSERT INTO reliq._stream_identity (subscription_id, stream_created)
    VALUES (p_subscription_id, p_stream_created)
    ON CONFLICT (subscription_id) DO NOTHING;
    INSERT INTO reliq._stream_floor (subscription_id, stream_created, ack_floor)
    VALUES (p_subscription_id, p_stream_created, GREATEST(p_ack_floor, 0))
    ON CONFLICT (subscription_id, stream_created) DO NOTHING;
END
$$;
REVOKE ALL ON FUNCTION reliq._record_start(bigint, bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reliq._record_start(bigint, bigint, bigint) TO reliq_admin;

CREATE OR REPLACE FUNCTION reliq.create_subscription(
    subscription_name text,
    stream            text,
    subject           text,
    handler           regprocedure DEFAULT NULL,
    batch_size        integer DEFAULT 100,
    concurrency       integer DEFAULT 1,
    max_deliver       integer DEFAULT 5,
    backoff           interval[] DEFAULT '{1s,10s,1min}',
    ack_wait          interval DEFAULT '30s',
    target            regclass DEFAULT NULL,
    consumer          text DEFAULT NULL,
    start             text DEFAULT 'all',
    enabled           boolean DEFAULT true,
    handler_timeout   interval DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_owner    regrole := current_user::regrole;
    v_consumer text := COALESCE(create_subscription.consumer, 'reliq_' || create_subscription.subscription_name);
    v_handler  text;
    v_id       bigint;
    c          record;
BEGIN
    PERFORM reliq._require_admin('create');
    IF create_subscription.subscription_name IS NULL
       OR create_subscription.subscription_name !~ '^[A-Za-z0-9_-]{1,48}$' THEN
        RAISE EXCEPTION 'invalid subscription name "%"', create_subscription.subscription_name
            USING ERRCODE = 'invalid_name',
                  DETAIL = 'A subscription name has 1 to 48 letters, digits, "_" or "-"; it names the durable consumer reliq_<name>.';
    END IF;
    IF v_consumer !~ '^[A-Za-z0-9_-]{1,64}$' THEN
        RAISE EXCEPTION 'invalid consumer name "%"', v_consumer
            USING ERRCODE = 'invalid_name',
                  DETAIL = 'A durable consumer name has 1 to 64 letters, digits, "_" or "-".';
    END IF;
    IF create_subscription.stream IS NULL OR create_subscription.subject IS NULL THEN
        RAISE EXCEPTION 'stream and subject are required'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'subject is the consumer''s filter subject; wildcards are allowed.';
    END IF;
    IF (create_subscription.handler IS NULL) = (create_subscription.target IS NULL) THEN
        RAISE EXCEPTION 'a subscription needs either a handler or a target, not both'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'handler => ''app.on_event(reliq.message)''::regprocedure, or target => ''app.events''::regclass.';
    END IF;
    IF create_subscription.start IS NULL OR create_subscription.start NOT IN ('all', 'new') THEN
        RAISE EXCEPTION 'start must be ''all'' or ''new'', not %', quote_nullable(create_subscription.start)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = '''all'' processes the stream from its first message, ''new'' from the next message published.';
    END IF;
    IF create_subscription.batch_size IS NULL OR create_subscription.concurrency IS NULL
       OR create_subscription.max_deliver IS NULL OR create_subscription.backoff IS NULL
       OR create_subscription.ack_wait IS NULL OR create_subscription.enabled IS NULL THEN
        RAISE EXCEPTION 'batch_size, concurrency, max_deliver, backoff, ack_wait and enabled must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM reliq._check_settings(create_subscription.subscription_name,
                                  create_subscription.batch_size, create_subscription.concurrency,
                                  create_subscription.max_deliver, create_subscription.backoff,
                                  create_subscription.ack_wait, create_subscription.handler_timeout);
    IF create_subscription.handler IS NOT NULL THEN
        v_handler := reliq._check_handler(create_subscription.handler, v_owner);
    ELSE
        PERFORM reliq._check_target(create_subscription.target, v_owner);
    END IF;
    IF EXISTS (SELECT FROM reliq.subscription s WHERE s.subscription_name = create_subscription.subscription_name) THEN
        RAISE EXCEPTION 'subscription "%" already exists', create_subscription.subscription_name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Change it with reliq.alter_subscription, or drop it first with reliq.drop_subscription.';
    END IF;
    IF EXISTS (SELECT FROM reliq.subscription s
                WHERE s.stream = create_subscription.stream AND s.consumer = v_consumer) THEN
        RAISE EXCEPTION 'consumer "%" of stream "%" is already used by another subscription', v_consumer, create_subscription.stream
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Name another durable consumer with the consumer argument.';
    END IF;

    SELECT * INTO c FROM reliq._ensure_consumer(create_subscription.stream, v_consumer, create_subscription.subject,
                                                create_subscription.ack_wait,
                                                reliq._max_ack_pending(create_subscription.batch_size,
                                                                       create_subscription.concurrency),
                                                create_subscription.start,
                                                'reliq subscription ' || create_subscription.subscription_name);
    IF NOT c.created THEN
        RAISE NOTICE 'durable consumer "%" already exists on stream "%": the subscription continues from its position',
            v_consumer, create_subscription.stream
            USING DETAIL = format('%s messages are pending and %s await acknowledgement.', c.num_pending, c.num_ack_pending);
    END IF;

    INSERT INTO reliq.subscription (subscription_name, stream, subject, consumer, handler, target,
                                    batch_size, concurrency, max_deliver, backoff, ack_wait,
                                    handler_timeout, start, enabled, owner)
    VALUES (create_subscription.subscription_name, create_subscription.stream, create_subscription.subject,
            v_consumer, v_handler, create_subscription.target,
            create_subscription.batch_size, create_subscription.concurrency, create_subscription.max_deliver,
            create_subscription.backoff, create_subscription.ack_wait, create_subscription.handler_timeout,
            create_subscription.start, create_subscription.enabled, v_owner)
    RETURNING id INTO v_id;
    -- The subscription's position starts where its consumer stands now
    -- (see reliq._record_start).
    PERFORM reliq._record_start(v_id, c.stream_created, c.ack_floor);
    IF c.stream_retention IN ('interest', 'workqueue') THEN
        RAISE WARNING 'stream "%" has % retention: after a failover with asynchronous replication, messages acknowledged by the old primary but not yet on the standby cannot be delivered again',
            create_subscription.stream, c.stream_retention
            USING DETAIL = 'The stream deletes messages once acknowledged, so reliq cannot bring the consumer back to the new primary''s position.',
                  HINT = 'Use synchronous replication (synchronous_standby_names, synchronous_commit = on), or a stream with limits retention.';
    END IF;
    PERFORM reliq._warn_worker_budget();
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION reliq.create_subscription(text, text, text, regprocedure, integer, integer, integer, interval[], interval, regclass, text, text, boolean, interval)
    IS 'Creates a subscription and its durable consumer; its workers start within a second';

/*
 * Leases: which PostgreSQL cluster owns each consumer
 */
-- Who holds each lease, the stream's retention, and the workers the
-- launcher may start (within reliq.max_workers) or could not start.
CREATE FUNCTION reliq._subscription_status(
    OUT subscription_id bigint, OUT lease_state text, OUT lease_holder text,
    OUT lease_valid_until timestamptz, OUT stream_retention text,
    OUT workers_allowed integer, OUT start_refused boolean)
RETURNS SETOF record
LANGUAGE c AS 'MODULE_PATHNAME', 'reliq_subscription_status';

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
REVOKE ALL ON FUNCTION reliq.take_over(text), reliq._subscription_status(),
    reliq._request_take_over(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reliq.take_over(text) TO PUBLIC;  -- checks membership itself
GRANT EXECUTE ON FUNCTION reliq._request_take_over(bigint) TO reliq_admin;
GRANT EXECUTE ON FUNCTION reliq._subscription_status() TO reliq_admin, pg_monitor;

/*
 * ------------------------------------------------------------------------
 * One source per rule (issue 10, "the house in order").  This block runs
 * to the end of the file: subscription_stats and health() below are part
 * of it.
 * ------------------------------------------------------------------------
 *
 * - The state names are written once, in C (shmem.c).  SQL reads them from
 *   reliq._state_names(), one column per state, which checks its column
 *   names against C's.  subscription_stats and health() spell none; what
 *   they return is unchanged.
 * - The ranges of a subscription's settings are stated once, by the CHECK
 *   constraints of reliq.subscription.  _check_settings evaluates those
 *   constraints (reliq._setting_check) before anything reaches NATS, and
 *   takes the bounds its messages name from them.
 * - The consumer's MaxAckPending is computed once, in C (catalog.c):
 *   reliq._max_ack_pending() is that function, which the workers use too.
 */
CREATE FUNCTION reliq._state_names(
    OUT running text, OUT paused text, OUT stopped text, OUT failing text,
    OUT backing_off text, OUT disconnected text, OUT connecting text,
    OUT fenced text, OUT acquiring text, OUT standby text)
RETURNS record
LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'reliq_state_names';
COMMENT ON FUNCTION reliq._state_names() IS 'The name of each subscription state, as reliq''s C code writes it';
REVOKE ALL ON FUNCTION reliq._state_names() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reliq._state_names() TO reliq_admin, pg_monitor;

-- Evaluates a CHECK constraint of reliq.subscription (one column's) on a
-- value not stored yet, and gives the constants it compares the column
-- with (>= low, <= high; NULL where it has none).
CREATE FUNCTION reliq._setting_check(p_constraint name, p_value anyelement,
                                     OUT ok boolean, OUT low anyelement, OUT high anyelement)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_expr   text;
    v_column name;
    v_bound  text;
BEGIN
    SELECT pg_get_expr(c.conbin, c.conrelid), a.attname INTO v_expr, v_column
      FROM pg_constraint c
      JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
     WHERE c.conrelid = 'reliq.subscription'::regclass AND c.contype = 'c'
       AND c.conname = p_constraint;
    IF v_expr IS NULL THEN
        RAISE EXCEPTION 'reliq.subscription has no check constraint %', p_constraint
            USING ERRCODE = 'undefined_object';
    END IF;
    EXECUTE format('SELECT %s FROM (SELECT $1 AS %I) AS s', v_expr, v_column) INTO ok USING p_value;
    ok := ok IS NOT FALSE;      -- as a CHECK constraint judges NULL
    v_bound := (regexp_match(v_expr, format('\(%I >= ([^()]+)\)', v_column)))[1];
    IF v_bound IS NOT NULL THEN
        EXECUTE 'SELECT ' || v_bound INTO low;
    END IF;
    v_bound := (regexp_match(v_expr, format('\(%I <= ([^()]+)\)', v_column)))[1];
    IF v_bound IS NOT NULL THEN
        EXECUTE 'SELECT ' || v_bound INTO high;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION reliq._setting_check(name, anyelement) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reliq._setting_check(name, anyelement) TO reliq_admin;

-- Checks shared by create_subscription and alter_subscription; the ranges
-- are the table's CHECK constraints (a NULL setting is left unchanged).
CREATE OR REPLACE FUNCTION reliq._check_settings(p_name text, p_batch_size integer,
                                                 p_concurrency integer, p_max_deliver integer,
                                                 p_backoff interval[], p_ack_wait interval,
                                                 p_handler_timeout interval)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c record;
BEGIN
    c := reliq._setting_check('batch_size_range', p_batch_size);
    IF NOT c.ok THEN
        RAISE EXCEPTION 'batch_size must be between % and %, not %', c.low, c.high, p_batch_size
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'batch_size is the number of messages pulled and handled in one transaction.',
                  HINT = 'Values of 100 to 1000 suit most handlers.';
    END IF;
    c := reliq._setting_check('concurrency_range', p_concurrency);
    IF NOT c.ok THEN
        RAISE EXCEPTION 'concurrency must be between % and %, not %', c.low, c.high, p_concurrency
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'concurrency is the number of workers pulling for the subscription.',
                  HINT = format('To pause the subscription, use reliq.alter_subscription(%L, enabled => false).', p_name);
    END IF;
    c := reliq._setting_check('max_deliver_positive', p_max_deliver);
    IF NOT c.ok THEN
        RAISE EXCEPTION 'max_deliver must be at least %, not %', c.low, p_max_deliver
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'max_deliver is the number of failed deliveries after which a message is dead-lettered.';
    END IF;
    -- the table requires a delay; none negative or NULL is this function's own rule
    IF NOT (reliq._setting_check('backoff_not_empty', p_backoff)).ok
       OR EXISTS (SELECT FROM unnest(p_backoff) b WHERE b IS NULL OR b < '0'::interval) THEN
        RAISE EXCEPTION 'backoff must list at least one delay, none negative or NULL'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'backoff[n] is the delay before delivery n+1 of a failed message; the last delay repeats.',
                  HINT = 'For example backoff => ''{1s,10s,1min}''::interval[].';
    END IF;
    c := reliq._setting_check('ack_wait_range', p_ack_wait);
    IF NOT c.ok THEN
        RAISE EXCEPTION 'ack_wait must be at least % second%, not %',
                        extract(epoch FROM c.low)::float8,
                        CASE WHEN extract(epoch FROM c.low) = 1 THEN '' ELSE 's' END, p_ack_wait
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'ack_wait is how long the server waits for an acknowledgement before it redelivers; a batch must finish within it.';
    END IF;
    IF p_handler_timeout IS NOT NULL AND p_handler_timeout < '0'::interval THEN
        RAISE EXCEPTION 'handler_timeout must not be negative'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Zero (or NULL) means no timeout.';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION reliq._max_ack_pending(p_batch_size integer, p_concurrency integer)
RETURNS bigint
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'reliq_max_ack_pending_sql';

/*
 * subscription_stats: the states standby, fenced and acquiring; who holds
 * the lease; the stream's retention
 */
CREATE OR REPLACE VIEW reliq.subscription_stats AS
SELECT s.subscription_name,
       s.enabled,
       CASE WHEN NOT s.enabled THEN n.paused
            WHEN pg_catalog.pg_is_in_recovery() THEN n.standby
            ELSE COALESCE(st.state, n.stopped) END AS state,
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
       l.stream_retention,
       CASE WHEN s.enabled AND NOT pg_catalog.pg_is_in_recovery()
                 AND COALESCE(st.workers, 0) OPERATOR(pg_catalog.<) s.concurrency
                 AND (l.workers_allowed OPERATOR(pg_catalog.<) s.concurrency OR l.start_refused)
            THEN pg_catalog.format('%s of %s workers running: %s',
                     COALESCE(st.workers, 0), s.concurrency,
                     CASE WHEN l.workers_allowed OPERATOR(pg_catalog.<) s.concurrency
                          THEN pg_catalog.format('concurrency is above reliq.max_workers (%s), the size of the worker pool; raise it and restart',
                                                 pg_catalog.current_setting('reliq.max_workers'))
                          ELSE pg_catalog.format('PostgreSQL refused to start more background workers; raise max_worker_processes (%s) and restart',
                                                 pg_catalog.current_setting('max_worker_processes')) END)
       END AS worker_shortfall
  FROM reliq.subscription s
 CROSS JOIN reliq._state_names() n
  LEFT JOIN reliq._subscription_stats() st ON st.subscription_id OPERATOR(pg_catalog.=) s.id
  LEFT JOIN reliq._subscription_status() l ON l.subscription_id OPERATOR(pg_catalog.=) s.id;

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
 CROSS JOIN reliq._state_names() n
  LEFT JOIN LATERAL (VALUES
      (0, s.state = n.standby, 'ok',
          'standby: this server is a hot standby; the subscription is consumed after promotion'),
      (1, NOT s.enabled, 'ok', n.paused),
      (2, s.enabled AND s.workers = 0 AND s.state NOT IN (n.standby, n.fenced, n.acquiring),
          'down', 'no worker running'),
      (3, s.state = n.failing, 'down',
          'systemic failure: ' || COALESCE(s.last_error, 'unknown error')),
      (4, s.disconnected_since < now() - current_setting('reliq.health_disconnect_timeout')::interval,
          'down', format('disconnected from NATS for %s', date_trunc('second', now() - s.disconnected_since))),
      (5, s.disconnected_since >= now() - current_setting('reliq.health_disconnect_timeout')::interval,
          'degraded', 'disconnected from NATS, reconnecting'),
      (6, s.state = n.backing_off, 'degraded',
          'backing off: ' || COALESCE(s.last_error, 'retrying')),
      (7, s.max_ack_pending > 0 AND s.ack_pending >= s.max_ack_pending, 'degraded',
          format('stalled: %s messages await acknowledgement, the consumer''s max_ack_pending', s.ack_pending)),
      (8, s.lag_growing AND s.state NOT IN (n.standby, n.fenced, n.acquiring), 'degraded',
          format('lag growing while nothing is processed (%s pending)', s.pending)),
      (9, s.enabled AND s.workers > 0 AND s.consumer_info_at
            < now() - 3 * current_setting('reliq.refresh_interval')::interval, 'degraded',
          format('no consumer information from the server since %s', s.consumer_info_at)),
      (10, s.state <> n.failing AND s.last_failure_at > now() - interval '1 minute', 'degraded',
          'messages failed in the last minute: ' || s.last_error),
      (11, s.state = n.fenced, 'down',
          format('fenced: another PostgreSQL cluster owns consumer %s (%s); to consume here instead: SELECT reliq.take_over(%L);',
                 s.consumer, COALESCE(s.lease_holder, 'unknown'), s.subscription_name)),
      (12, s.state = n.acquiring, 'degraded',
          format('acquiring the lease of consumer %s, held by %s; consuming once it has run out (reliq.lease_ttl)',
                 s.consumer, COALESCE(s.lease_holder, 'unknown'))),
      (14, s.worker_shortfall IS NOT NULL, CASE WHEN s.workers = 0 THEN 'down' ELSE 'degraded' END,
          'short of workers: ' || s.worker_shortfall),
      (13, s.stream_retention IN ('interest', 'workqueue'), 'ok',
          format('stream %s has %s retention: acknowledged messages are deleted, so after a failover with asynchronous replication what the standby had not received cannot be delivered again; use synchronous replication',
                 s.stream, s.stream_retention))
  ) AS r(ord, active, level, reason) ON r.active
 GROUP BY s.subscription_name
 ORDER BY s.subscription_name
$$;

/*
 * The worker pool (issue 10): statistics live in shared memory sized by
 * reliq.max_subscriptions; a subscription past it would have none (no
 * figures, no lease, so no consumption).  Refuse it when it is made.
 */
CREATE FUNCTION reliq._subscription_limit()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    limit_setting text := current_setting('reliq.max_subscriptions', true);
    existing bigint;
BEGIN
    IF limit_setting IS NULL THEN
        RETURN NEW;             -- library not loaded here: the workers say so
    END IF;
    SELECT count(*) INTO existing FROM reliq.subscription;
    IF existing >= limit_setting::integer THEN
        RAISE EXCEPTION 'cannot create subscription "%": reliq.max_subscriptions (%) reached',
                        NEW.subscription_name, limit_setting
              USING ERRCODE = 'configuration_limit_exceeded',
                    DETAIL = 'Each subscription needs an entry in reliq''s shared memory, sized at server start by reliq.max_subscriptions.',
                    HINT = 'Raise reliq.max_subscriptions in postgresql.conf and restart the server (each subscription costs about 20 kB of shared memory), or drop subscriptions no longer used.';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER subscription_limit
    BEFORE INSERT ON reliq.subscription
    FOR EACH ROW EXECUTE FUNCTION reliq._subscription_limit();

COMMENT ON VIEW reliq.worker_status IS 'One row per subscription a running pool worker serves (worker_index is the worker), and one for a worker that serves none (subscription_name NULL, state idle)';

-- With the pool every subscription is served; only a concurrency above
-- the pool's size cannot be had.
CREATE OR REPLACE FUNCTION reliq._warn_worker_budget()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    widest reliq.subscription;
    budget integer := current_setting('reliq.max_workers')::integer;
BEGIN
    SELECT * INTO widest FROM reliq.subscription WHERE enabled
     ORDER BY concurrency DESC, id LIMIT 1;
    IF widest.concurrency > budget THEN
        RAISE WARNING 'subscription "%" wants % workers at once, but reliq.max_workers is %',
                      widest.subscription_name, widest.concurrency, budget
            USING DETAIL = 'reliq.max_workers workers are shared by every subscription; none runs on more than all of them.',
                  HINT = 'Increase reliq.max_workers (and max_worker_processes) and restart the server, or lower the concurrency.';
    END IF;
END
$$;

/*
 * ---- Versions (issue 11, part 2) ----
 *
 * reliq.version(): the version of the loaded library.  The launcher and
 * the workers refuse to run while it differs from the installed SQL
 * (pg_extension.extversion); ALTER EXTENSION reliq UPDATE makes them agree.
 */
CREATE FUNCTION reliq.version()
RETURNS text
LANGUAGE c STABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'reliq_version';
COMMENT ON FUNCTION reliq.version() IS 'Version of the loaded reliq library; workers run only while it equals the installed extension''s version';
GRANT EXECUTE ON FUNCTION reliq.version() TO PUBLIC;
-- ---- end of Versions ----

/*
 * ======================================================================
 * Safe around the extension's edges (issue 11, part 5)
 * ======================================================================
 * (DROP EXTENSION and handler drops are guarded in C, src/guard.c; the
 * SQL part is the payload types of reliq.publish.)
 *
 * reliq.publish takes text and jsonb as well as bytea.  One C
 * implementation: text is sent as its UTF-8 bytes, jsonb as its text.  An
 * untyped literal, reliq.publish('subject', 'hello'), is text: PostgreSQL
 * prefers the string category for an unknown argument.
 */
CREATE FUNCTION reliq.publish(subject text, data text, headers jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT reliq.publish(subject, pg_catalog.convert_to(data, 'UTF8'), headers) $$;
COMMENT ON FUNCTION reliq.publish(text, text, jsonb) IS 'reliq.publish with a text payload, sent as UTF-8';

CREATE FUNCTION reliq.publish(subject text, data jsonb, headers jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT reliq.publish(subject, pg_catalog.convert_to(data::pg_catalog.text, 'UTF8'), headers) $$;
COMMENT ON FUNCTION reliq.publish(text, jsonb, jsonb) IS 'reliq.publish with a JSON payload, sent as its text in UTF-8';

REVOKE ALL ON FUNCTION reliq.publish(text, text, jsonb), reliq.publish(text, jsonb, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reliq.publish(text, text, jsonb), reliq.publish(text, jsonb, jsonb) TO reliq_admin;

/*
 * ======================================================================
 * Set-based handlers (issue 13, part 1)
 * ======================================================================
 * A handler may take the whole batch: app.on_batch(reliq.message[]) is
 * called once per batch transaction with the fresh messages (redeliveries
 * the ledger absorbed left out).  If that call fails, the batch is redone
 * with one-element calls, each in a subtransaction, as for per-message
 * handlers (src/batch.c).  The stored text is schema.name(reliq.message[]),
 * as src/guard.c and src/handler.c expect.
 */
CREATE OR REPLACE FUNCTION reliq._check_handler(p_handler regprocedure, p_owner regrole)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    f record;
BEGIN
    SELECT p.proname, n.nspname, p.prokind, p.proretset, p.prorettype,
           p.pronargs, p.proargtypes
      INTO f
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE p.oid = p_handler;
    IF f.prokind <> 'f' OR f.proretset OR f.prorettype <> 'void'::regtype
       OR f.pronargs <> 1
       OR f.proargtypes[0] NOT IN ('reliq.message'::regtype, 'reliq.message[]'::regtype) THEN
        RAISE EXCEPTION 'function % cannot be a reliq handler', p_handler
            USING ERRCODE = 'invalid_function_definition',
                  DETAIL = format('A handler takes one argument of type reliq.message (or reliq.message[], the whole batch) and returns void; %s returns %s%s.',
                                  p_handler, CASE WHEN f.proretset THEN 'setof ' ELSE '' END,
                                  format_type(f.prorettype, NULL)),
                  HINT = 'CREATE FUNCTION app.on_event(m reliq.message) RETURNS void LANGUAGE plpgsql AS ..., or app.on_batch(msgs reliq.message[]).';
    END IF;
    IF NOT has_schema_privilege(p_owner, f.nspname, 'USAGE')
       OR NOT has_function_privilege(p_owner, p_handler, 'EXECUTE') THEN
        RAISE EXCEPTION 'role % may not execute handler %', p_owner, p_handler
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'Handlers run with the privileges of the subscription''s owner.',
                  HINT = format('GRANT USAGE ON SCHEMA %I TO %s; GRANT EXECUTE ON FUNCTION %s TO %s;',
                                f.nspname, p_owner, p_handler, p_owner);
    END IF;
    IF f.proargtypes[0] = 'reliq.message[]'::regtype THEN
        RETURN format('%I.%I(reliq.message[])', f.nspname, f.proname);
    END IF;
    RETURN format('%I.%I(reliq.message)', f.nspname, f.proname);
END
$$;

COMMENT ON COLUMN reliq.subscription.handler IS 'Function (reliq.message) RETURNS void, as schema.name(reliq.message), or a set-based handler (reliq.message[]) RETURNS void called once per batch; NULL when target is set';
-- ---- end of Set-based handlers ----

/*
 * ======================================================================
 * Tracing (issue 12)
 * ======================================================================
 * Spans go from the workers through a ring in shared memory to the
 * exporter process "reliq trace exporter" (src/trace.c,
 * src/trace_export.c), which sends them over OTLP/HTTP to
 * reliq.otlp_endpoint.  trace_stats() shows the ring and the exporter:
 * spans recorded, exported, dropped because the ring was full or because
 * their export failed, and the last error.
 */
CREATE FUNCTION reliq.trace_stats(
    OUT tracing boolean,
    OUT spans_recorded bigint,
    OUT spans_exported bigint,
    OUT spans_dropped_buffer_full bigint,
    OUT spans_dropped_export_failed bigint,
    OUT export_errors bigint,
    OUT buffered_spans integer,
    OUT last_export_at timestamptz,
    OUT last_error_at timestamptz,
    OUT last_error text)
RETURNS record
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'reliq_trace_stats_sql';
COMMENT ON FUNCTION reliq.trace_stats() IS 'Spans recorded, exported and dropped (ring full, export failed), and the exporter''s last error';
REVOKE ALL ON FUNCTION reliq.trace_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reliq.trace_stats() TO reliq_admin, pg_monitor;
-- ---- end of Tracing ----
