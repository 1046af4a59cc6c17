--
-- demo/setup.sql: the business flow of the demo, as a reliq user writes it.
--
--   user.onboarding.completed  -> app.on_onboarding_completed: records the user,
--                                 publishes plan.generation.requested
--   plan.generation.requested  -> app.on_plan_requested: writes the plan,
--                                 publishes plan.generation.completed
--   plan.generation.completed  -> app.on_plan_completed: marks the user ready
--
-- Each handler runs in the transaction of its batch; a handler that fails
-- rolls back alone and its message is retried, then dead-lettered.
--
\set ON_ERROR_STOP on
CREATE EXTENSION reliq;
SELECT reliq.create_stream('EVENTS', ARRAY['user.>', 'plan.>']);

CREATE SCHEMA app;
CREATE TABLE app.users (
    id           bigint PRIMARY KEY,
    email        text NOT NULL,
    onboarded_at timestamptz NOT NULL,
    ready        boolean NOT NULL DEFAULT false,
    ready_at     timestamptz
);
-- No unique constraint on user_id, on purpose: a message applied twice
-- would show as a second plan.
CREATE TABLE app.plans (
    id         bigserial PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES app.users,
    plan       jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION app.on_onboarding_completed(m reliq.message) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    event jsonb := reliq.message_json(m);
BEGIN
    IF event->>'user_id' IS NULL THEN
        RAISE EXCEPTION 'onboarding event without user_id'
            USING DETAIL = event::text, ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO app.users (id, email, onboarded_at)
    VALUES ((event->>'user_id')::bigint, event->>'email', m.published_at);
    -- Inside a handler reliq.publish derives the Nats-Msg-Id from the
    -- message being handled, so a retried handler publishes no duplicate,
    -- and carries the trace context on (traceparent, tracestate).
    PERFORM reliq.publish('plan.generation.requested',
                          jsonb_build_object('user_id', event->'user_id',
                                             'goal', COALESCE(event->>'goal', 'strength'))::text::bytea);
END
$$;

CREATE FUNCTION app.on_plan_requested(m reliq.message) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    request jsonb := reliq.message_json(m);
    user_id bigint := (request->>'user_id')::bigint;
BEGIN
    INSERT INTO app.plans (user_id, plan)
    VALUES (user_id, jsonb_build_object('goal', request->>'goal',
                                        'weeks', 4 + user_id % 8,
                                        'sessions_per_week', 3));
    PERFORM reliq.publish('plan.generation.completed',
                          jsonb_build_object('user_id', user_id)::text::bytea);
END
$$;

CREATE FUNCTION app.on_plan_completed(m reliq.message) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE app.users SET ready = true, ready_at = now()
     WHERE id = (reliq.message_json(m)->>'user_id')::bigint;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'plan completed for unknown user %', reliq.message_json(m)->>'user_id';
    END IF;
END
$$;

SELECT reliq.create_subscription('onboarding', stream => 'EVENTS',
                                 subject => 'user.onboarding.completed',
                                 handler => 'app.on_onboarding_completed(reliq.message)'::regprocedure,
                                 batch_size => 200, concurrency => 2,
                                 max_deliver => 3, backoff => '{200ms,500ms}');
SELECT reliq.create_subscription('plans', stream => 'EVENTS',
                                 subject => 'plan.generation.requested',
                                 handler => 'app.on_plan_requested(reliq.message)'::regprocedure,
                                 batch_size => 200, concurrency => 2);
SELECT reliq.create_subscription('ready', stream => 'EVENTS',
                                 subject => 'plan.generation.completed',
                                 handler => 'app.on_plan_completed(reliq.message)'::regprocedure,
                                 batch_size => 200);
