--
-- edges: what needs no nats-server, so that "make installcheck" can run it
-- against any server that preloads reliq.  Handlers in use cannot be
-- dropped, renamed or moved; DROP EXTENSION reliq CASCADE does not take
-- user functions silently; reliq.nats_url is checked when set;
-- reliq.publish takes text, jsonb and bytea.  It installs 0.1 and updates
-- it (setup.sql installs 0.3 afresh), and drops it at the end.
--
CREATE EXTENSION reliq VERSION '0.1';
ALTER EXTENSION reliq UPDATE TO '0.2';
ALTER EXTENSION reliq UPDATE TO '0.3';
SELECT extversion FROM pg_extension WHERE extname = 'reliq';
CREATE SCHEMA edges;
CREATE FUNCTION edges.on_event(m reliq.message) RETURNS void
LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION edges.spare(m reliq.message) RETURNS void
LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION edges.not_a_handler(i integer) RETURNS integer
LANGUAGE sql AS $$ SELECT i $$;

-- A subscription as create_subscription records it, paused: no worker,
-- no consumer needed.
INSERT INTO reliq.subscription (subscription_name, stream, subject, consumer, handler,
                                batch_size, concurrency, max_deliver, backoff, ack_wait,
                                enabled, owner)
VALUES ('edges', 'EDGES', 'edges.>', 'reliq_edges', 'edges.on_event(reliq.message)',
        10, 1, 5, '{1s}', '30s', false, current_user::regrole);

-- Its handler cannot go, whichever command would take it.
DROP FUNCTION edges.on_event(reliq.message);
DROP ROUTINE edges.on_event;
DROP SCHEMA edges CASCADE;
ALTER FUNCTION edges.on_event(reliq.message) RENAME TO renamed;
ALTER FUNCTION edges.on_event(reliq.message) SET SCHEMA public;
-- Other functions can.
ALTER FUNCTION edges.spare(reliq.message) RENAME TO spare2;
ALTER FUNCTION edges.spare2(reliq.message) RENAME TO spare;
DROP FUNCTION edges.not_a_handler(integer);

-- Handlers take reliq.message: without CASCADE PostgreSQL refuses, and
-- with it reliq refuses to drop them unsaid.
DROP EXTENSION reliq;
DROP EXTENSION reliq CASCADE;

-- The check is made at commit: a migration may drop a handler and make it
-- again in one transaction, or drop the subscription and its handler.
BEGIN;
DROP FUNCTION edges.on_event(reliq.message);
CREATE FUNCTION edges.on_event(m reliq.message) RETURNS void
LANGUAGE sql AS $$ SELECT 1 $$;
COMMIT;
BEGIN;
DROP FUNCTION edges.on_event(reliq.message);
SAVEPOINT s;
DELETE FROM reliq.subscription WHERE subscription_name = 'edges';
ROLLBACK TO s;
COMMIT;
BEGIN;
DROP FUNCTION edges.on_event(reliq.message);
DELETE FROM reliq.subscription WHERE subscription_name = 'edges';
ROLLBACK;
SELECT count(*) AS handlers_left FROM pg_proc WHERE proname = 'on_event';

-- reliq.nats_url: a malformed value is refused when set (nothing is
-- written: each ALTER SYSTEM here fails).  Passwords are not repeated.
ALTER SYSTEM SET reliq.nats_url = 'htp:/bogus url';
ALTER SYSTEM SET reliq.nats_url = 'nats://127.0.0.1:4222, htp://host:4222';
ALTER SYSTEM SET reliq.nats_url = 'ws://127.0.0.1:8080';
ALTER SYSTEM SET reliq.nats_url = 'wss://127.0.0.1:8443';
ALTER SYSTEM SET reliq.nats_url = 'nats://127.0.0.1:99999';
ALTER SYSTEM SET reliq.nats_url = 'nats://127.0.0.1:42x2';
ALTER SYSTEM SET reliq.nats_url = 'nats://127.0.0.1:';
ALTER SYSTEM SET reliq.nats_url = 'nats://';
ALTER SYSTEM SET reliq.nats_url = 'nats://reliq:s3cret@';
ALTER SYSTEM SET reliq.nats_url = 'nats://reliq:s3cret@host/path';
ALTER SYSTEM SET reliq.nats_url = 'nats://re"liq:s3cret@host:4222';
ALTER SYSTEM SET reliq.nats_url = 'nats://[::1:4222';
ALTER SYSTEM SET reliq.nats_url = 'nats://host|name:4222';
ALTER SYSTEM SET reliq.nats_url = ' , ';
ALTER SYSTEM SET reliq.nats_url = '';

-- reliq.publish: bytea, text or jsonb; an untyped literal is text.
SELECT p.oid::regprocedure AS publish, p.proargnames
  FROM pg_proc p WHERE p.proname = 'publish'
   AND p.pronamespace = 'reliq'::regnamespace ORDER BY 1::text;
EXPLAIN (VERBOSE, COSTS OFF) SELECT reliq.publish('edges.x', 'hello');
EXPLAIN (VERBOSE, COSTS OFF) SELECT reliq.publish('edges.x', data => 'hello', headers => '{"a": "b"}');
EXPLAIN (VERBOSE, COSTS OFF) SELECT reliq.publish('edges.x', '{"id": 1}'::jsonb);
EXPLAIN (VERBOSE, COSTS OFF) SELECT reliq.publish('edges.x', '\x00ff'::bytea);
-- NULL data is refused by the one C implementation, whatever the type.
SELECT reliq.publish('edges.x', NULL::text);
SELECT reliq.publish('edges.x', NULL::jsonb);
-- As the bytea one, only reliq_admin (and superusers) may publish.
SELECT p.oid::regprocedure AS publish,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public,
       has_function_privilege('reliq_admin', p.oid, 'EXECUTE') AS reliq_admin
  FROM pg_proc p WHERE p.proname = 'publish'
   AND p.pronamespace = 'reliq'::regnamespace ORDER BY 1::text;

-- The way out: subscription, then handlers, then the extension.
DELETE FROM reliq.subscription WHERE subscription_name = 'edges';
DROP FUNCTION edges.on_event(reliq.message), edges.spare(reliq.message);
DROP EXTENSION reliq CASCADE;
SELECT count(*) AS reliq_installed FROM pg_extension WHERE extname = 'reliq';
DROP SCHEMA edges;
