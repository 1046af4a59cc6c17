--
-- subscription_api: create, alter, retune, pause, drop, and the messages
-- a handler receives.
--
CREATE TABLE app.events (
    stream_seq bigint, subject text, id int, headers jsonb,
    delivered int, handled_by text, published_at timestamptz
);
CREATE FUNCTION app.record_event(m reliq.message) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO app.events
    VALUES (m.stream_seq, m.subject, (reliq.message_json(m)->>'id')::int,
            m.headers, m.delivered, current_user, m.published_at);
END
$$;

SELECT reliq.create_subscription('events', stream => 'REGRESS',
                                 subject => 'regress.events.>',
                                 handler => 'app.record_event(reliq.message)'::regprocedure,
                                 batch_size => 10) > 0 AS created;

SELECT subscription_name, stream, subject, consumer, handler, target,
       batch_size, concurrency, max_deliver, backoff, ack_wait, start,
       enabled, owner = current_user::regrole AS owned_by_me, version
  FROM reliq.subscription;

-- Publish 25 events with headers, wait until they are all acked.
SELECT count(*) AS published FROM (
    SELECT reliq.publish('regress.events.created', format('{"id": %s}', g)::bytea,
                         headers => jsonb_build_object('traceparent', '00-' || g,
                                                       'tags', jsonb_build_array('a', 'b')))
      FROM generate_series(1, 25) g) p;
SELECT reliq.wait_idle('events', '60s');

SELECT count(*), count(DISTINCT id), min(id), max(id),
       bool_and(delivered = 1) AS first_delivery,
       bool_and(published_at <= now()) AS timestamps
  FROM app.events;
SELECT subject, headers FROM app.events WHERE id = 7;
SELECT handled_by = current_user AS handled_as_owner FROM app.events LIMIT 1;

SELECT subscription_name, state, workers, concurrency, batch_size, received,
       processed, failed, retried, dead_lettered, duplicates, last_error
  FROM reliq.subscription_stats;

SELECT subscription_name, worker_index, state IN ('fetching', 'processing') AS working, connected
  FROM reliq.worker_status;

-- Workers show in pg_stat_activity.  (The launcher and the monitor too,
-- but in this instance they may still be waiting for the database to
-- exist; the TAP tests check them.)
SELECT backend_type, application_name
  FROM pg_stat_activity WHERE backend_type = 'reliq worker' ORDER BY 1, 2;

-- Retune live: more workers, bigger batches, no restart.
SELECT reliq.alter_subscription('events', batch_size => 50, concurrency => 2);
SELECT batch_size, concurrency, version FROM reliq.subscription WHERE subscription_name = 'events';
SELECT wait_until($$(SELECT count(*) = 2 FROM reliq.worker_status
                     WHERE subscription_name = 'events' AND batch_size = 50)$$);
SELECT reliq.set_concurrency('events', 1);
SELECT wait_until($$(SELECT count(*) = 1 FROM reliq.worker_status WHERE subscription_name = 'events')$$);

-- Pause: nothing is consumed, the backlog waits in JetStream.
SELECT reliq.alter_subscription('events', enabled => false);
SELECT wait_until($$(SELECT count(*) = 0 FROM reliq.worker_status WHERE subscription_name = 'events')$$);
SELECT state, workers FROM reliq.subscription_stats WHERE subscription_name = 'events';
SELECT count(*) AS published FROM (
    SELECT reliq.publish('regress.events.created', format('{"id": %s}', g)::bytea)
      FROM generate_series(26, 30) g) p;
SELECT reliq.wait_idle('events', '1s') AS idle_while_paused;
SELECT count(*) FROM app.events;

-- Resume: the backlog is processed.
SELECT reliq.alter_subscription('events', enabled => true);
SELECT reliq.wait_idle('events', '60s');
SELECT count(*), count(DISTINCT id) FROM app.events;

-- reliq.message and its helpers.
SELECT reliq.message_json(ROW('s', 'x.y', '{"a": [1, 2]}'::bytea, '{}', 'S', 1, 1, now())::reliq.message);
SELECT * FROM reliq._parse_ack_subject('$JS.ACK.EVENTS.reliq_x.3.1042.17.1700000000123456789.5');
SELECT * FROM reliq._parse_ack_subject('$JS.ACK.hub.ACCHASH.EVENTS.reliq_x.1.7.7.1700000000000000000.0.tokenxyz');
SELECT try($$SELECT reliq._parse_ack_subject('$JS.ACK.EVENTS.x.1')$$);

-- Drop keeps the durable consumer; making the subscription again continues from it.
SELECT reliq.drop_subscription('events');
SELECT wait_until($$(SELECT count(*) = 0 FROM reliq.worker_status)$$);
SELECT count(*) FROM reliq.subscription;
SELECT count(*) AS published FROM (
    SELECT reliq.publish('regress.events.created', format('{"id": %s}', g)::bytea)
      FROM generate_series(31, 33) g) p;
SELECT reliq.create_subscription('events', stream => 'REGRESS',
                                 subject => 'regress.events.>',
                                 handler => 'app.record_event(reliq.message)'::regprocedure) > 0 AS created;
SELECT reliq.wait_idle('events', '60s');
SELECT count(*), count(DISTINCT id), max(id) FROM app.events;
SELECT reliq.drop_subscription('events', drop_consumer => true);
SELECT reliq.drop_subscription('events', if_exists => true);
