--
-- publish: reliq.publish with a bytea, text or jsonb payload, from a
-- session (a JetStream publish) and from a handler (the outbox).  Text is
-- sent as UTF-8, jsonb as its text.
--
CREATE TABLE app.published (subject text, hex text, body text, headers jsonb);
CREATE FUNCTION app.record_published(m reliq.message) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO app.published
    VALUES (m.subject, encode(m.data, 'hex'),
            CASE WHEN m.subject <> 'regress.pub.bytea' THEN convert_from(m.data, 'UTF8') END,
            m.headers - 'Nats-Msg-Id');
    -- a handler publishes text too: the outbox carries the same bytes
    IF m.subject = 'regress.pub.text' THEN
        PERFORM reliq.publish('regress.pub.echo', 'echo: ' || convert_from(m.data, 'UTF8'));
    END IF;
END
$$;
SELECT reliq.create_subscription('pub', stream => 'REGRESS', subject => 'regress.pub.>',
                                 handler => 'app.record_published(reliq.message)'::regprocedure) > 0 AS created;

SELECT reliq.publish('regress.pub.text', 'héllo') > 0 AS text_untyped;
SELECT reliq.publish('regress.pub.text2', 'tëxt'::text, headers => '{"kind": "text"}') > 0 AS text_typed;
SELECT reliq.publish('regress.pub.jsonb', '{"id": 1, "tags": ["a"]}'::jsonb) > 0 AS jsonb;
SELECT reliq.publish('regress.pub.bytea', '\x00ff41'::bytea) > 0 AS bytea;
SELECT reliq.publish('regress.pub.empty', '') > 0 AS empty_text;
SELECT wait_until($$(SELECT count(*) = 6 FROM app.published)$$) AS all_arrived;
SELECT reliq.wait_idle('pub', '60s');

SELECT subject, hex, body, headers FROM app.published ORDER BY subject;

SELECT reliq.drop_subscription('pub', drop_consumer => true);
