/*
 * reliq--0.1.sql
 *	  Install script: catalog, message type, SQL API and privileges.
 *
 * Safe against objects planted in other schemas: every name is qualified,
 * every function runs with search_path = pg_catalog, pg_temp, and the
 * script refuses a pre-existing reliq schema it does not own.
 */

\echo Use "CREATE EXTENSION reliq" to load this file. \quit

DO $reliq$
BEGIN
    IF (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'reliq')
       IS DISTINCT FROM (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER) THEN
        RAISE EXCEPTION 'schema reliq exists and is owned by another role'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'reliq installs into its own schema; a schema made beforehand by someone else could hold objects reliq would trust.',
                  HINT = 'Drop or rename schema reliq, then run CREATE EXTENSION reliq again.';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'reliq_admin') THEN
        CREATE ROLE reliq_admin NOLOGIN;
    END IF;
END
$reliq$;

COMMENT ON SCHEMA reliq IS 'reliq: NATS JetStream consumers inside PostgreSQL';

/*
 * Catalog
 */

CREATE TABLE reliq.subscription (
    id                bigserial PRIMARY KEY,
    subscription_name text NOT NULL UNIQUE,
    stream            text NOT NULL,
    subject           text NOT NULL,
    consumer          text NOT NULL,
    handler           text,
    target            pg_catalog.regclass,
    batch_size        integer NOT NULL,
    concurrency       integer NOT NULL,
    max_deliver       integer NOT NULL,
    backoff           interval[] NOT NULL,
    ack_wait          interval NOT NULL,
    handler_timeout   interval,
    start             text NOT NULL DEFAULT 'all',
    enabled           boolean NOT NULL DEFAULT true,
    owner             pg_catalog.regrole NOT NULL,
    version           bigint NOT NULL DEFAULT 1,
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT subscription_name_valid CHECK (subscription_name OPERATOR(pg_catalog.~) '^[A-Za-z0-9_-]{1,48}$'),
    CONSTRAINT consumer_name_valid CHECK (consumer OPERATOR(pg_catalog.~) '^[A-Za-z0-9_-]{1,64}$'),
    CONSTRAINT handler_or_target CHECK ((handler IS NULL) OPERATOR(pg_catalog.<>) (target IS NULL)),
    CONSTRAINT batch_size_range CHECK (batch_size BETWEEN 1 AND 10000),
    CONSTRAINT concurrency_range CHECK (concurrency BETWEEN 1 AND 1024),
    CONSTRAINT max_deliver_positive CHECK (max_deliver OPERATOR(pg_catalog.>=) 1),
    CONSTRAINT backoff_not_empty CHECK (pg_catalog.cardinality(backoff) OPERATOR(pg_catalog.>=) 1),
    CONSTRAINT ack_wait_range CHECK (ack_wait OPERATOR(pg_catalog.>=) '1 second'::interval),
    CONSTRAINT start_valid CHECK (start OPERATOR(pg_catalog.=) ANY (ARRAY['all', 'new'])),
    CONSTRAINT consumer_unique UNIQUE (stream, consumer)
);
COMMENT ON TABLE reliq.subscription IS 'One row per reliq subscription; change it through reliq.create_subscription, alter_subscription and drop_subscription';
COMMENT ON COLUMN reliq.subscription.handler IS 'Function (reliq.message) RETURNS void, as schema.name(reliq.message); NULL when target is set';
COMMENT ON COLUMN reliq.subscription.target IS 'Table sink: each JSON message becomes a row; NULL when handler is set';
COMMENT ON COLUMN reliq.subscription.version IS 'Bumped on every change; workers reload when it moves';

CREATE TABLE reliq.dead_letter (
    id              bigserial PRIMARY KEY,
    subscription_id bigint NOT NULL,
    subscription    text NOT NULL,
    stream          text NOT NULL,
    subject         text NOT NULL,
    data            bytea NOT NULL,
    headers         jsonb NOT NULL DEFAULT '{}',
    stream_seq      bigint NOT NULL,
    delivered       integer NOT NULL,
    published_at    timestamptz,
    error_message   text,
    error_detail    text,
    error_context   text,
    sqlstate        text,
    traceparent     text,
    failed_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    replay_attempts integer NOT NULL DEFAULT 0,
    last_replay_at  timestamptz
);
CREATE INDEX dead_letter_subscription ON reliq.dead_letter (subscription_id, failed_at);
COMMENT ON TABLE reliq.dead_letter IS 'Messages that failed max_deliver times; replay with reliq.replay_dead_letter(id) or drop with reliq.discard_dead_letter(id)';

/*
 * The ledger: every stream sequence a subscription has applied, written in
 * the transaction that applied it.  A stream is identified by its name and
 * its creation time (stream_created, in nanoseconds since the Unix epoch),
 * because a stream deleted and made again restarts at sequence 1.
 * Rows at or below _stream_floor.ack_floor are pruned: the server has
 * acknowledged every message up to there, and reliq treats any of them
 * that comes back as a duplicate.
 */
CREATE TABLE reliq._ledger (
    subscription_id bigint NOT NULL,
    stream_created  bigint NOT NULL,
    stream_seq      bigint NOT NULL,
    PRIMARY KEY (subscription_id, stream_created, stream_seq)
);

CREATE TABLE reliq._stream_floor (
    subscription_id bigint NOT NULL,
    stream_created  bigint NOT NULL,
    ack_floor       bigint NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (subscription_id, stream_created)
);

CREATE TABLE reliq._stream_identity (
    subscription_id bigint PRIMARY KEY,
    stream_created  bigint NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE reliq._stream_identity IS 'The incarnation of its stream (creation time) a subscription''s workers last attached to; batches labelled with another are refused';

-- Publishes made by handlers, written in the handler's transaction and
-- published by the worker after COMMIT (see reliq.publish).
CREATE TABLE reliq._outbox (
    id              bigserial PRIMARY KEY,
    subscription_id bigint NOT NULL,
    subject         text NOT NULL,
    data            bytea NOT NULL,
    headers         jsonb,
    msg_id          text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX _outbox_subscription ON reliq._outbox (subscription_id, id);

SELECT pg_catalog.pg_extension_config_dump('reliq.subscription', '');
SELECT pg_catalog.pg_extension_config_dump('reliq.subscription_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('reliq.dead_letter', '');
SELECT pg_catalog.pg_extension_config_dump('reliq.dead_letter_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('reliq._ledger', '');
SELECT pg_catalog.pg_extension_config_dump('reliq._stream_floor', '');
SELECT pg_catalog.pg_extension_config_dump('reliq._stream_identity', '');
SELECT pg_catalog.pg_extension_config_dump('reliq._outbox', '');
SELECT pg_catalog.pg_extension_config_dump('reliq._outbox_id_seq', '');

/*
 * The message a handler receives.
 */
CREATE TYPE reliq.message AS (
    subscription text,
    subject      text,
    data         bytea,
    headers      jsonb,
    stream       text,
    stream_seq   bigint,
    delivered    integer,
    published_at timestamptz
);
COMMENT ON TYPE reliq.message IS 'A JetStream message as a handler receives it';

CREATE FUNCTION reliq.message_json(m reliq.message)
RETURNS jsonb
LANGUAGE sql STABLE STRICT PARALLEL SAFE
AS $$ SELECT pg_catalog.convert_from(m.data, 'UTF8')::pg_catalog.jsonb $$;
COMMENT ON FUNCTION reliq.message_json(reliq.message) IS 'The message payload parsed as JSON (an error, counted as a handler failure, when it is not JSON)';

/*
 * C functions
 */

CREATE FUNCTION reliq._subscription_changed()
RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'reliq_subscription_changed';

CREATE FUNCTION reliq._ensure_consumer(stream text, consumer text, subject text,
                                       ack_wait interval, max_ack_pending bigint,
                                       start text, description text)
RETURNS TABLE (created boolean, num_pending bigint, num_ack_pending bigint)
LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'reliq_ensure_consumer';

CREATE FUNCTION reliq._delete_consumer(stream text, consumer text)
RETURNS boolean
LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'reliq_delete_consumer';

CREATE FUNCTION reliq._parse_ack_subject(reply text,
    OUT stream text, OUT consumer text, OUT delivered integer,
    OUT stream_seq bigint, OUT consumer_seq bigint,
    OUT published_at timestamptz, OUT pending bigint)
RETURNS record
LANGUAGE c IMMUTABLE STRICT AS 'MODULE_PATHNAME', 'reliq_parse_ack_subject_sql';

CREATE FUNCTION reliq.publish(subject text, data bytea, headers jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE c AS 'MODULE_PATHNAME', 'reliq_publish';
COMMENT ON FUNCTION reliq.publish(text, bytea, jsonb) IS 'JetStream publish; returns the stream sequence. Inside a handler it is transactional: published after the batch commits, and returns NULL';

CREATE FUNCTION reliq.create_stream(stream text, subjects text[])
RETURNS text
LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'reliq_create_stream';
COMMENT ON FUNCTION reliq.create_stream(text, text[]) IS 'Creates the JetStream stream, or sets its subjects; returns ''created'' or ''updated''';

CREATE FUNCTION reliq.wait_idle(subscription_name text, timeout interval DEFAULT '30s')
RETURNS boolean
LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'reliq_wait_idle';
COMMENT ON FUNCTION reliq.wait_idle(text, interval) IS 'Waits until the subscription has nothing pending or unacknowledged on the server; false on timeout';

CREATE FUNCTION reliq.replay_dead_letter(id bigint)
RETURNS boolean
LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'reliq_replay_dead_letter';
COMMENT ON FUNCTION reliq.replay_dead_letter(bigint) IS 'Runs the handler on a dead letter now, as the subscription owner; deletes it and returns true on success, records the new error and returns false on failure';

CREATE FUNCTION reliq.subscription_stats_reset(subscription_name text DEFAULT NULL)
RETURNS void
LANGUAGE c AS 'MODULE_PATHNAME', 'reliq_subscription_stats_reset';

CREATE FUNCTION reliq._subscription_stats(
    OUT subscription_id bigint, OUT state text, OUT workers integer,
    OUT received bigint, OUT processed bigint, OUT failed bigint,
    OUT retried bigint, OUT dead_lettered bigint, OUT duplicates bigint,
    OUT batches bigint, OUT in_flight bigint,
    OUT pending bigint, OUT ack_pending bigint, OUT redelivered bigint,
    OUT ack_floor bigint, OUT max_ack_pending bigint,
    OUT consumer_info_at timestamptz,
    OUT last_error text, OUT last_error_at timestamptz,
    OUT last_batch_at timestamptz, OUT stats_reset_at timestamptz,
    OUT messages_per_second double precision,
    OUT batch_p50 interval, OUT batch_p99 interval,
    OUT latency_p50 interval, OUT latency_p99 interval,
    OUT disconnected_since timestamptz, OUT lag_growing boolean,
    OUT last_failure_at timestamptz, OUT slow_path_batches bigint)
RETURNS SETOF record
LANGUAGE c AS 'MODULE_PATHNAME', 'reliq_subscription_stats';

CREATE FUNCTION reliq.metrics()
RETURNS text
LANGUAGE c AS 'MODULE_PATHNAME', 'reliq_metrics';
COMMENT ON FUNCTION reliq.metrics() IS 'Every subscription''s figures in the Prometheus text exposition format (the same as the reliq.metrics_port endpoint)';

CREATE FUNCTION reliq._worker_status(
    OUT pid integer, OUT subscription_id bigint, OUT subscription_name text,
    OUT worker_index integer, OUT state text, OUT connected boolean,
    OUT batch_size integer, OUT in_flight integer,
    OUT since timestamptz, OUT started_at timestamptz)
RETURNS SETOF record
LANGUAGE c AS 'MODULE_PATHNAME', 'reliq_worker_status';

/*
 * Views
 */

CREATE VIEW reliq.subscription_stats AS
SELECT s.subscription_name,
       s.enabled,
       CASE WHEN NOT s.enabled THEN 'paused'
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
       s.consumer
  FROM reliq.subscription s
  LEFT JOIN reliq._subscription_stats() st ON st.subscription_id OPERATOR(pg_catalog.=) s.id;
COMMENT ON VIEW reliq.subscription_stats IS 'One row per subscription: counters since the last reset, worker state and the consumer as the server last reported it';

CREATE VIEW reliq.worker_status AS
SELECT w.pid, w.subscription_name, w.worker_index, w.state, w.connected,
       w.batch_size, w.in_flight, w.since, w.started_at
  FROM reliq._worker_status() w;
COMMENT ON VIEW reliq.worker_status IS 'One row per running reliq worker';

CREATE FUNCTION reliq.health(OUT subscription_name text, OUT status text, OUT reasons text[])
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
      (1, NOT s.enabled, 'ok', 'paused'),
      (2, s.enabled AND s.workers = 0, 'down', 'no worker running'),
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
      (8, s.lag_growing, 'degraded',
          format('lag growing while nothing is processed (%s pending)', s.pending)),
      (9, s.enabled AND s.workers > 0 AND s.consumer_info_at
            < now() - 3 * current_setting('reliq.refresh_interval')::interval, 'degraded',
          format('no consumer information from the server since %s', s.consumer_info_at)),
      (10, s.state <> 'failing' AND s.last_failure_at > now() - interval '1 minute', 'degraded',
          'messages failed in the last minute: ' || s.last_error)
  ) AS r(ord, active, level, reason) ON r.active
 GROUP BY s.subscription_name
 ORDER BY s.subscription_name
$$;
COMMENT ON FUNCTION reliq.health() IS 'One row per subscription: ok, degraded or down, with the reasons';

-- Warns when the enabled subscriptions want more workers than there are.
CREATE FUNCTION reliq._warn_worker_budget()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    wanted bigint;
    budget integer := current_setting('reliq.max_workers')::integer;
BEGIN
    SELECT COALESCE(sum(concurrency), 0) INTO wanted FROM reliq.subscription WHERE enabled;
    IF wanted > budget THEN
        RAISE WARNING 'subscriptions now want % workers, but reliq.max_workers is %', wanted, budget
            USING DETAIL = 'Subscriptions are served in order of creation; the last ones run with fewer workers than their concurrency, or none.',
                  HINT = 'Increase reliq.max_workers (and max_worker_processes) and restart the server, or lower a concurrency.';
    END IF;
END
$$;

/*
 * SQL API
 */

-- Checks shared by create_subscription and alter_subscription.
CREATE FUNCTION reliq._check_settings(p_name text, p_batch_size integer,
                                      p_concurrency integer, p_max_deliver integer,
                                      p_backoff interval[], p_ack_wait interval,
                                      p_handler_timeout interval)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_batch_size IS NOT NULL AND (p_batch_size < 1 OR p_batch_size > 10000) THEN
        RAISE EXCEPTION 'batch_size must be between 1 and 10000, not %', p_batch_size
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'batch_size is the number of messages pulled and handled in one transaction.',
                  HINT = 'Values of 100 to 1000 suit most handlers.';
    END IF;
    IF p_concurrency IS NOT NULL AND (p_concurrency < 1 OR p_concurrency > 1024) THEN
        RAISE EXCEPTION 'concurrency must be between 1 and 1024, not %', p_concurrency
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'concurrency is the number of workers pulling for the subscription.',
                  HINT = format('To pause the subscription, use reliq.alter_subscription(%L, enabled => false).', p_name);
    END IF;
    IF p_max_deliver IS NOT NULL AND p_max_deliver < 1 THEN
        RAISE EXCEPTION 'max_deliver must be at least 1, not %', p_max_deliver
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'max_deliver is the number of failed deliveries after which a message is dead-lettered.';
    END IF;
    IF p_backoff IS NOT NULL AND (cardinality(p_backoff) = 0
                                  OR EXISTS (SELECT FROM unnest(p_backoff) b WHERE b IS NULL OR b < '0'::interval)) THEN
        RAISE EXCEPTION 'backoff must list at least one delay, none negative or NULL'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'backoff[n] is the delay before delivery n+1 of a failed message; the last delay repeats.',
                  HINT = 'For example backoff => ''{1s,10s,1min}''::interval[].';
    END IF;
    IF p_ack_wait IS NOT NULL AND p_ack_wait < '1 second'::interval THEN
        RAISE EXCEPTION 'ack_wait must be at least 1 second, not %', p_ack_wait
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

-- Checks a handler's signature and that the owner may run it; returns its canonical text.
CREATE FUNCTION reliq._check_handler(p_handler regprocedure, p_owner regrole)
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
       OR f.pronargs <> 1 OR f.proargtypes[0] <> 'reliq.message'::regtype THEN
        RAISE EXCEPTION 'function % cannot be a reliq handler', p_handler
            USING ERRCODE = 'invalid_function_definition',
                  DETAIL = format('A handler takes one argument of type reliq.message and returns void; %s returns %s%s.',
                                  p_handler, CASE WHEN f.proretset THEN 'setof ' ELSE '' END,
                                  format_type(f.prorettype, NULL)),
                  HINT = 'CREATE FUNCTION app.on_event(m reliq.message) RETURNS void LANGUAGE plpgsql AS ...';
    END IF;
    IF NOT has_schema_privilege(p_owner, f.nspname, 'USAGE')
       OR NOT has_function_privilege(p_owner, p_handler, 'EXECUTE') THEN
        RAISE EXCEPTION 'role % may not execute handler %', p_owner, p_handler
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'Handlers run with the privileges of the subscription''s owner.',
                  HINT = format('GRANT USAGE ON SCHEMA %I TO %s; GRANT EXECUTE ON FUNCTION %s TO %s;',
                                f.nspname, p_owner, p_handler, p_owner);
    END IF;
    RETURN format('%I.%I(reliq.message)', f.nspname, f.proname);
END
$$;

CREATE FUNCTION reliq._check_target(p_target regclass, p_owner regrole)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = p_target) NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', p_target
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'A table sink inserts into a table or a partitioned table.';
    END IF;
    IF NOT has_table_privilege(p_owner, p_target, 'INSERT') THEN
        RAISE EXCEPTION 'role % may not insert into %', p_owner, p_target
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'A table sink inserts with the privileges of the subscription''s owner.',
                  HINT = format('GRANT INSERT ON %s TO %s;', p_target, p_owner);
    END IF;
END
$$;

CREATE FUNCTION reliq._require_admin(p_action text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT pg_has_role('reliq_admin', 'MEMBER') THEN
        RAISE EXCEPTION 'permission denied to % a reliq subscription', p_action
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'Only superusers and members of role reliq_admin may create, alter or drop subscriptions.',
                  HINT = format('A superuser can run: GRANT reliq_admin TO %I;', current_user);
    END IF;
    IF current_database() <> current_setting('reliq.database_name') THEN
        RAISE EXCEPTION 'reliq workers run only in database "%"', current_setting('reliq.database_name')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('A subscription in database %I would never run.', current_database()),
                  HINT = format('Connect to database "%s", or set reliq.database_name = %L and restart the server.',
                                current_setting('reliq.database_name'), current_database());
    END IF;
END
$$;

-- The subscription row for a change by the current user, locked.
CREATE FUNCTION reliq._owned_subscription(p_name text, p_action text, p_missing_ok boolean DEFAULT false)
RETURNS reliq.subscription
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s reliq.subscription;
BEGIN
    PERFORM reliq._require_admin(p_action);
    -- Look before locking: FOR UPDATE would apply the update policy and
    -- hide another owner's subscription instead of refusing it.
    SELECT * INTO s FROM reliq.subscription WHERE subscription_name = p_name;
    IF NOT FOUND THEN
        IF p_missing_ok THEN
            RETURN NULL;
        END IF;
        RAISE EXCEPTION 'subscription "%" does not exist', p_name
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT subscription_name FROM reliq.subscription lists the subscriptions.';
    END IF;
    IF NOT pg_has_role(s.owner, 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of subscription "%" to % it', p_name, p_action
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = format('Subscription %s belongs to role %s.', p_name, s.owner);
    END IF;
    SELECT * INTO s FROM reliq.subscription WHERE id = s.id FOR UPDATE;
    RETURN s;
END
$$;

CREATE FUNCTION reliq._max_ack_pending(p_batch_size integer, p_concurrency integer)
RETURNS bigint
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT greatest(1000, 2::bigint * p_batch_size * p_concurrency) $$;
COMMENT ON FUNCTION reliq._max_ack_pending(integer, integer) IS 'MaxAckPending of the consumer: room for every worker''s batch and the next one it pulls meanwhile';

CREATE FUNCTION reliq.create_subscription(
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
    PERFORM reliq._warn_worker_budget();
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION reliq.create_subscription(text, text, text, regprocedure, integer, integer, integer, interval[], interval, regclass, text, text, boolean, interval)
    IS 'Creates a subscription and its durable consumer; its workers start within a second';

CREATE FUNCTION reliq.alter_subscription(
    subscription_name text,
    batch_size        integer DEFAULT NULL,
    concurrency       integer DEFAULT NULL,
    max_deliver       integer DEFAULT NULL,
    backoff           interval[] DEFAULT NULL,
    ack_wait          interval DEFAULT NULL,
    enabled           boolean DEFAULT NULL,
    handler           regprocedure DEFAULT NULL,
    subject           text DEFAULT NULL,
    handler_timeout   interval DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s reliq.subscription;
    v_handler text;
BEGIN
    s := reliq._owned_subscription(alter_subscription.subscription_name, 'alter');
    PERFORM reliq._check_settings(s.subscription_name,
                                  alter_subscription.batch_size, alter_subscription.concurrency,
                                  alter_subscription.max_deliver, alter_subscription.backoff,
                                  alter_subscription.ack_wait, alter_subscription.handler_timeout);
    IF alter_subscription.handler IS NOT NULL THEN
        IF s.target IS NOT NULL THEN
            RAISE EXCEPTION 'subscription "%" is a table sink', s.subscription_name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Drop it and create a subscription with a handler instead.';
        END IF;
        v_handler := reliq._check_handler(alter_subscription.handler, s.owner);
    END IF;

    IF alter_subscription.subject IS DISTINCT FROM NULL AND alter_subscription.subject <> s.subject
       OR alter_subscription.ack_wait IS DISTINCT FROM NULL AND alter_subscription.ack_wait <> s.ack_wait
       OR COALESCE(alter_subscription.batch_size, s.batch_size) <> s.batch_size
       OR COALESCE(alter_subscription.concurrency, s.concurrency) <> s.concurrency THEN
        PERFORM reliq._ensure_consumer(s.stream, s.consumer,
                                       COALESCE(alter_subscription.subject, s.subject),
                                       COALESCE(alter_subscription.ack_wait, s.ack_wait),
                                       reliq._max_ack_pending(COALESCE(alter_subscription.batch_size, s.batch_size),
                                                              COALESCE(alter_subscription.concurrency, s.concurrency)),
                                       s.start, 'reliq subscription ' || s.subscription_name);
    END IF;

    UPDATE reliq.subscription AS t
       SET batch_size      = COALESCE(alter_subscription.batch_size, t.batch_size),
           concurrency     = COALESCE(alter_subscription.concurrency, t.concurrency),
           max_deliver     = COALESCE(alter_subscription.max_deliver, t.max_deliver),
           backoff         = COALESCE(alter_subscription.backoff, t.backoff),
           ack_wait        = COALESCE(alter_subscription.ack_wait, t.ack_wait),
           enabled         = COALESCE(alter_subscription.enabled, t.enabled),
           handler         = COALESCE(v_handler, t.handler),
           subject         = COALESCE(alter_subscription.subject, t.subject),
           handler_timeout = CASE WHEN alter_subscription.handler_timeout IS NULL THEN t.handler_timeout
                                  WHEN alter_subscription.handler_timeout = '0'::interval THEN NULL
                                  ELSE alter_subscription.handler_timeout END
     WHERE t.id = s.id;
    IF alter_subscription.concurrency IS NOT NULL OR alter_subscription.enabled THEN
        PERFORM reliq._warn_worker_budget();
    END IF;
END
$$;
COMMENT ON FUNCTION reliq.alter_subscription(text, integer, integer, integer, interval[], interval, boolean, regprocedure, text, interval)
    IS 'Changes a subscription; NULL leaves a setting unchanged; workers pick it up within a second, without restart';

CREATE FUNCTION reliq.set_concurrency(subscription_name text, concurrency integer)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT reliq.alter_subscription(subscription_name, concurrency => concurrency) $$;
COMMENT ON FUNCTION reliq.set_concurrency(text, integer) IS 'Sets the number of workers of a subscription, live';

CREATE FUNCTION reliq.drop_subscription(subscription_name text,
                                        if_exists boolean DEFAULT false,
                                        drop_consumer boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s reliq.subscription;
BEGIN
    s := reliq._owned_subscription(drop_subscription.subscription_name, 'drop', drop_subscription.if_exists);
    IF s.id IS NULL THEN
        RAISE NOTICE 'subscription "%" does not exist, skipping', drop_subscription.subscription_name;
        RETURN;
    END IF;
    DELETE FROM reliq.subscription WHERE id = s.id;
    IF drop_consumer THEN
        PERFORM reliq._delete_consumer(s.stream, s.consumer);
    ELSE
        RAISE NOTICE 'durable consumer "%" is kept on stream "%"', s.consumer, s.stream
            USING HINT = 'A subscription made again with the same consumer continues where this one stopped; drop_consumer => true deletes it.';
    END IF;
END
$$;
COMMENT ON FUNCTION reliq.drop_subscription(text, boolean, boolean) IS 'Drops a subscription; its workers stop within a second';

CREATE FUNCTION reliq.discard_dead_letter(id bigint)
RETURNS boolean
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM reliq.dead_letter d WHERE d.id = discard_dead_letter.id;
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION reliq.discard_dead_letter(bigint) IS 'Deletes a dead letter; false when there is none with that id (or it is not yours)';

/*
 * Triggers: keep version and updated_at honest, and wake the launcher when
 * a change commits.
 */
CREATE FUNCTION reliq._subscription_bump_version()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.version := OLD.version + 1;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER subscription_bump_version
    BEFORE UPDATE ON reliq.subscription
    FOR EACH ROW EXECUTE FUNCTION reliq._subscription_bump_version();

CREATE TRIGGER subscription_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON reliq.subscription
    FOR EACH STATEMENT EXECUTE FUNCTION reliq._subscription_changed();

/*
 * Privileges
 *
 * Superusers and members of reliq_admin manage subscriptions; row-level
 * security lets a member change only subscriptions owned by a role whose
 * privileges it has.  Handlers run as the owner.  The ledger is reliq's
 * alone.
 */
REVOKE ALL ON ALL TABLES IN SCHEMA reliq FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA reliq FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA reliq FROM PUBLIC;
GRANT USAGE ON SCHEMA reliq TO PUBLIC;
GRANT USAGE ON TYPE reliq.message TO PUBLIC;
GRANT EXECUTE ON FUNCTION reliq.message_json(reliq.message) TO PUBLIC;

GRANT EXECUTE ON FUNCTION
    reliq.create_subscription(text, text, text, regprocedure, integer, integer, integer, interval[], interval, regclass, text, text, boolean, interval),
    reliq.alter_subscription(text, integer, integer, integer, interval[], interval, boolean, regprocedure, text, interval),
    reliq.set_concurrency(text, integer),
    reliq.drop_subscription(text, boolean, boolean),
    reliq.discard_dead_letter(bigint),
    reliq.replay_dead_letter(bigint),
    reliq.publish(text, bytea, jsonb),
    reliq.create_stream(text, text[]),
    reliq.wait_idle(text, interval),
    reliq.subscription_stats_reset(text),
    reliq._check_settings(text, integer, integer, integer, interval[], interval, interval),
    reliq._check_handler(regprocedure, regrole),
    reliq._check_target(regclass, regrole),
    reliq._require_admin(text),
    reliq._owned_subscription(text, text, boolean),
    reliq._max_ack_pending(integer, integer),
    reliq._ensure_consumer(text, text, text, interval, bigint, text, text),
    reliq._delete_consumer(text, text),
    reliq._warn_worker_budget(),
    reliq._subscription_bump_version(),
    reliq._subscription_changed()
    TO reliq_admin;
-- create_subscription etc. check membership themselves, with a clearer error than EXECUTE's
GRANT EXECUTE ON FUNCTION
    reliq.create_subscription(text, text, text, regprocedure, integer, integer, integer, interval[], interval, regclass, text, text, boolean, interval),
    reliq.alter_subscription(text, integer, integer, integer, interval[], interval, boolean, regprocedure, text, interval),
    reliq.set_concurrency(text, integer),
    reliq.drop_subscription(text, boolean, boolean),
    reliq._require_admin(text),
    reliq._owned_subscription(text, text, boolean)
    TO PUBLIC;

GRANT EXECUTE ON FUNCTION reliq._subscription_stats(), reliq._worker_status(),
                          reliq._parse_ack_subject(text), reliq.metrics(), reliq.health()
    TO reliq_admin, pg_monitor;
GRANT SELECT ON reliq.subscription_stats, reliq.worker_status TO reliq_admin, pg_monitor;

GRANT SELECT, INSERT, UPDATE, DELETE ON reliq.subscription TO reliq_admin;
GRANT USAGE ON SEQUENCE reliq.subscription_id_seq TO reliq_admin;
-- UPDATE: replay_dead_letter locks the row and records a failed attempt
GRANT SELECT, UPDATE, DELETE ON reliq.dead_letter TO reliq_admin;

ALTER TABLE reliq.subscription ENABLE ROW LEVEL SECURITY;
CREATE POLICY subscription_visible ON reliq.subscription
    FOR SELECT USING (true);
CREATE POLICY subscription_insert_own ON reliq.subscription
    FOR INSERT WITH CHECK (pg_catalog.pg_has_role(owner, 'USAGE'));
CREATE POLICY subscription_update_own ON reliq.subscription
    FOR UPDATE USING (pg_catalog.pg_has_role(owner, 'USAGE'))
    WITH CHECK (pg_catalog.pg_has_role(owner, 'USAGE'));
CREATE POLICY subscription_delete_own ON reliq.subscription
    FOR DELETE USING (pg_catalog.pg_has_role(owner, 'USAGE'));

ALTER TABLE reliq.dead_letter ENABLE ROW LEVEL SECURITY;
CREATE POLICY dead_letter_own ON reliq.dead_letter
    USING (EXISTS (SELECT FROM reliq.subscription s
                    WHERE s.id OPERATOR(pg_catalog.=) dead_letter.subscription_id
                      AND pg_catalog.pg_has_role(s.owner, 'USAGE')));
