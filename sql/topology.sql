--
-- topology: the SQL surface of production topologies (0.2): replicated
-- streams, the lease of each consumer, take_over, and where a
-- subscription's position starts.
--

-- Replicas: 1 to 5; a single server refuses more than one.
SELECT try($$SELECT reliq.create_stream('TOPO', ARRAY['topo.>'], replicas => 0)$$);
SELECT try($$SELECT reliq.create_stream('TOPO', ARRAY['topo.>'], replicas => 6)$$);
SELECT reliq.create_stream('TOPO', ARRAY['topo.>'], replicas => 1);
SELECT reliq.create_stream('TOPO', ARRAY['topo.>', 'topo2.>']);
SELECT try($$SELECT reliq.create_stream('TOPO3', ARRAY['topo3.>'], replicas => 3)$$) LIKE '08006: could not create or update stream "TOPO3"%' AS refused;

-- A subscription's position starts where its consumer stands at creation.
CREATE TABLE app.topo (id int, seq bigint);
CREATE FUNCTION app.topo_handler(m reliq.message) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO app.topo VALUES ((reliq.message_json(m)->>'id')::int, m.stream_seq)
$$;
SELECT count(*) AS published FROM (
    SELECT reliq.publish('topo.before', format('{"id": %s}', g)::bytea)
      FROM generate_series(1, 5) g) p;
SELECT reliq.create_subscription('topo_new', stream => 'TOPO', subject => 'topo.>',
                                 handler => 'app.topo_handler(reliq.message)'::regprocedure,
                                 start => 'new', ack_wait => '5s') > 0 AS created;
SELECT f.ack_floor AS floor_at_creation, i.stream_created = f.stream_created AS same_stream
  FROM reliq.subscription s
  JOIN reliq._stream_floor f ON f.subscription_id = s.id
  JOIN reliq._stream_identity i ON i.subscription_id = s.id
 WHERE s.subscription_name = 'topo_new';

-- This cluster holds the lease: running, the holder is this system.
SELECT wait_until($$(SELECT state = 'running' AND lease_holder LIKE
                        'system ' || (SELECT system_identifier FROM pg_control_system()) || ' timeline 1 at %'
                     FROM reliq.subscription_stats WHERE subscription_name = 'topo_new')$$) AS owned;
SELECT wait_until($$(SELECT stream_retention = 'limits' AND lease_valid_until > now()
                     FROM reliq.subscription_stats WHERE subscription_name = 'topo_new')$$) AS lease_valid;
SELECT status, reasons FROM reliq.health() WHERE subscription_name = 'topo_new';

-- Only what came after its creation is applied.
SELECT count(*) AS published FROM (
    SELECT reliq.publish('topo.after', format('{"id": %s}', g)::bytea)
      FROM generate_series(6, 8) g) p;
SELECT reliq.wait_idle('topo_new', '60s');
SELECT count(*), min(id), max(id) FROM app.topo;

-- Dropped with its consumer kept and made again: it continues from the
-- consumer's position, nothing applied twice.
SELECT reliq.drop_subscription('topo_new');
SELECT count(*) AS published FROM (
    SELECT reliq.publish('topo.later', format('{"id": %s}', g)::bytea)
      FROM generate_series(9, 10) g) p;
SET client_min_messages = warning;  -- the notice's counts depend on timing
SELECT reliq.create_subscription('topo_new', stream => 'TOPO', subject => 'topo.>',
                                 handler => 'app.topo_handler(reliq.message)'::regprocedure,
                                 ack_wait => '5s') > 0 AS created;
RESET client_min_messages;
SELECT wait_until($$(SELECT count(*) = 5 FROM app.topo)$$) AS caught_up;
SELECT reliq.wait_idle('topo_new', '60s');
SELECT count(*), count(DISTINCT id), min(id), max(id) FROM app.topo;

-- Dropped and made again in one transaction: the worker that served it
-- may still be pulling for the consumer under the old subscription; the
-- new one takes that pull over and goes on at once, with no problem
-- reported and nothing applied twice.
BEGIN;
SELECT reliq.drop_subscription('topo_new');
SET LOCAL client_min_messages = warning;
SELECT reliq.create_subscription('topo_new', stream => 'TOPO', subject => 'topo.>',
                                 handler => 'app.topo_handler(reliq.message)'::regprocedure,
                                 ack_wait => '5s') > 0 AS created;
COMMIT;
SELECT count(*) AS published FROM (
    SELECT reliq.publish('topo.again', format('{"id": %s}', g)::bytea)
      FROM generate_series(11, 12) g) p;
SELECT wait_until($$(SELECT count(*) = 7 FROM app.topo)$$) AS caught_up;
SELECT reliq.wait_idle('topo_new', '60s');
SELECT count(*), count(DISTINCT id), min(id), max(id) FROM app.topo;
SELECT last_error FROM reliq.subscription_stats WHERE subscription_name = 'topo_new';

-- take_over: errors, and on a subscription this cluster owns already.
SELECT try($$SELECT reliq.take_over('nope')$$);
SELECT reliq.take_over('topo_new') LIKE 'subscription topo_new: this cluster takes the lease of consumer reliq_topo_new%' AS asked;
CREATE ROLE topo_outsider;
SET ROLE topo_outsider;
SELECT try($$SELECT reliq.take_over('topo_new')$$);
RESET ROLE;
DROP ROLE topo_outsider;

SELECT reliq.drop_subscription('topo_new', drop_consumer => true);
