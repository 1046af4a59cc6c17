--
-- dead_letter: a failing message is retried with backoff, then moved to
-- reliq.dead_letter after max_deliver deliveries; the rest of its batch
-- commits.  Dead letters can be replayed or discarded.
--
CREATE TABLE app.accepted (id int, delivered int);
CREATE TABLE app.switch (failing boolean);
INSERT INTO app.switch VALUES (true);
CREATE FUNCTION app.fragile(m reliq.message) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    j jsonb := reliq.message_json(m);
BEGIN
    INSERT INTO app.accepted VALUES ((j->>'id')::int, m.delivered);
    IF (j->>'bad')::boolean AND (SELECT failing FROM app.switch) THEN
        RAISE EXCEPTION 'message % is bad', j->>'id'
            USING DETAIL = 'the producer set "bad"', ERRCODE = 'data_exception';
    END IF;
END
$$;

SELECT reliq.create_subscription('fragile', stream => 'REGRESS', subject => 'regress.fragile',
                                 handler => 'app.fragile(reliq.message)'::regprocedure,
                                 max_deliver => 3, backoff => '{100ms,200ms}', batch_size => 5) > 0 AS created;
SELECT count(*) AS published FROM (
    SELECT reliq.publish('regress.fragile',
                         jsonb_build_object('id', g, 'bad', g IN (4, 8))::text::bytea,
                         headers => jsonb_build_object('traceparent', '00-' || g))
      FROM generate_series(1, 10) g) p;
SELECT reliq.wait_idle('fragile', '60s');

-- The good ones were applied once each; the failures left no trace.
SELECT count(*), count(DISTINCT id), bool_and(NOT id IN (4, 8)) AS no_bad FROM app.accepted;
SELECT subscription, subject, convert_from(data, 'UTF8') AS data, headers, delivered,
       error_message, error_detail, sqlstate, replay_attempts
  FROM reliq.dead_letter ORDER BY stream_seq;
SELECT received, processed, failed, retried, dead_lettered, duplicates, state
  FROM reliq.subscription_stats WHERE subscription_name = 'fragile';

-- Replay while the cause persists: false, and the attempt is recorded.
SELECT reliq.replay_dead_letter(id) FROM reliq.dead_letter ORDER BY id LIMIT 1;
SELECT replay_attempts, error_message FROM reliq.dead_letter ORDER BY id;

-- Fix the cause; replay runs the handler and removes the dead letter.
UPDATE app.switch SET failing = false;
SELECT reliq.replay_dead_letter(id) FROM reliq.dead_letter ORDER BY id LIMIT 1;
SELECT count(*) AS dead_letters FROM reliq.dead_letter;
SELECT id FROM app.accepted WHERE id IN (4, 8) ORDER BY id;

-- Discard the other one.
SELECT reliq.discard_dead_letter(id) FROM reliq.dead_letter;
SELECT reliq.discard_dead_letter(123456);
SELECT count(*) AS dead_letters FROM reliq.dead_letter;

-- Counters reset.
SELECT reliq.subscription_stats_reset('fragile');
SELECT received, processed, failed, dead_lettered FROM reliq.subscription_stats WHERE subscription_name = 'fragile';
SELECT reliq.drop_subscription('fragile', drop_consumer => true);
