--
-- errors: every bad argument gets an error with its SQLSTATE, a detail
-- and a hint where one helps.
--
CREATE FUNCTION app.ok_handler(m reliq.message) RETURNS void
LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION app.int_handler(i integer) RETURNS void
LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION app.returns_int(m reliq.message) RETURNS integer
LANGUAGE sql AS $$ SELECT 1 $$;
CREATE FUNCTION app.returns_set(m reliq.message) RETURNS SETOF void
LANGUAGE sql AS $$ SELECT $$;
CREATE TABLE app.sink (id int);
CREATE VIEW app.sink_view AS SELECT 1 AS id;

-- Unknown handler: PostgreSQL's own error, at the cast.
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
                                               handler => 'app.nope(reliq.message)'::regprocedure)$$);
-- Wrong signatures.
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
                                               handler => 'app.int_handler(integer)'::regprocedure)$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
                                               handler => 'app.returns_int(reliq.message)'::regprocedure)$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
                                               handler => 'app.returns_set(reliq.message)'::regprocedure)$$);
-- Handler and target: exactly one.
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1')$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
                                               handler => 'app.ok_handler(reliq.message)'::regprocedure,
                                               target => 'app.sink'::regclass)$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
                                               target => 'app.sink_view'::regclass)$$);
-- Settings out of range.
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
                                               handler => 'app.ok_handler(reliq.message)'::regprocedure,
                                               batch_size => 0)$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
                                               handler => 'app.ok_handler(reliq.message)'::regprocedure,
                                               batch_size => 10001)$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
                                               handler => 'app.ok_handler(reliq.message)'::regprocedure,
                                               concurrency => -1)$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
                                               handler => 'app.ok_handler(reliq.message)'::regprocedure,
                                               max_deliver => 0)$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
                                               handler => 'app.ok_handler(reliq.message)'::regprocedure,
                                               backoff => '{}')$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
                                               handler => 'app.ok_handler(reliq.message)'::regprocedure,
                                               backoff => '{1s,-1s}')$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
                                               handler => 'app.ok_handler(reliq.message)'::regprocedure,
                                               ack_wait => '100ms')$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
                                               handler => 'app.ok_handler(reliq.message)'::regprocedure,
                                               start => 'middle')$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
                                               handler => 'app.ok_handler(reliq.message)'::regprocedure,
                                               batch_size => NULL)$$);
-- Names.
SELECT try($$SELECT reliq.create_subscription('has space', stream => 'REGRESS', subject => 'regress.e1',
                                               handler => 'app.ok_handler(reliq.message)'::regprocedure)$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
                                               handler => 'app.ok_handler(reliq.message)'::regprocedure,
                                               consumer => 'a.b')$$);
-- The stream must exist, and the subject must be one of its.
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'NOPE', subject => 'regress.e1',
                                               handler => 'app.ok_handler(reliq.message)'::regprocedure)$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'elsewhere.>',
                                               handler => 'app.ok_handler(reliq.message)'::regprocedure)$$);
-- reliq checks it itself (nats-server 2.10 and later would accept it):
-- wider than the stream's subjects, or a wildcard where it has a literal.
SELECT split_part(try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => '>',
                                               handler => 'app.ok_handler(reliq.message)'::regprocedure)$$), E'\n', 2) AS wider;
SELECT split_part(try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => '*.e1',
                                               handler => 'app.ok_handler(reliq.message)'::regprocedure)$$), E'\n', 2) AS wildcard;
SELECT count(*) AS subscriptions_made FROM reliq.subscription;

-- Duplicates.
SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
                                 handler => 'app.ok_handler(reliq.message)'::regprocedure,
                                 enabled => false) > 0 AS created;
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
                                               handler => 'app.ok_handler(reliq.message)'::regprocedure)$$);
SELECT try($$SELECT reliq.create_subscription('e2', stream => 'REGRESS', subject => 'regress.e2',
                                               handler => 'app.ok_handler(reliq.message)'::regprocedure,
                                               consumer => 'reliq_e1')$$);

-- Altering: same checks, and an unknown name.
SELECT try($$SELECT reliq.alter_subscription('e1', batch_size => 0)$$);
SELECT try($$SELECT reliq.set_concurrency('e1', 0)$$);
SELECT try($$SELECT reliq.alter_subscription('e1', handler => 'app.returns_int(reliq.message)'::regprocedure)$$);
SELECT try($$SELECT reliq.alter_subscription('e1', subject => 'elsewhere.>')$$);
SELECT try($$SELECT reliq.alter_subscription('nope', batch_size => 5)$$);
SELECT try($$SELECT reliq.set_concurrency('nope', 2)$$);
SELECT try($$SELECT reliq.drop_subscription('nope')$$);
SELECT reliq.drop_subscription('nope', if_exists => true);
SELECT batch_size, concurrency, version FROM reliq.subscription WHERE subscription_name = 'e1';
SELECT reliq.drop_subscription('e1', drop_consumer => true);

-- Other functions.
SELECT try($$SELECT reliq.publish(NULL, 'x'::bytea)$$);
SELECT try($$SELECT reliq.publish('regress.x', 'x'::bytea, headers => '[1, 2]')$$);
SELECT try($$SELECT reliq.publish('regress.x', 'x'::bytea, headers => '{"a": 1}')$$);
SELECT try($$SELECT reliq.publish('nobody.listens', 'x'::bytea)$$);
SELECT try($$SELECT reliq.create_stream('EMPTY', ARRAY[]::text[])$$);
SELECT try($$SELECT reliq.wait_idle('nope')$$);
SELECT try($$SELECT reliq.replay_dead_letter(123456)$$);
SELECT try($$SELECT reliq.subscription_stats_reset('nope')$$);
SELECT try($$SELECT reliq._subscription_changed()$$);
