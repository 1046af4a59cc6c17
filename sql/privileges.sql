--
-- privileges: who may manage subscriptions, and as whom handlers run.
--
CREATE ROLE regress_alice;
CREATE ROLE regress_bob;
CREATE ROLE regress_mallory;
GRANT reliq_admin TO regress_alice, regress_bob;
GRANT USAGE ON SCHEMA app TO regress_alice, regress_bob, regress_mallory;

CREATE TABLE app.who (subscription text, handled_as text);
GRANT INSERT ON app.who TO regress_alice;
CREATE FUNCTION app.who_am_i(m reliq.message) RETURNS void
LANGUAGE sql AS $$ INSERT INTO app.who VALUES (m.subscription, current_user) $$;
CREATE FUNCTION app.secret_handler(m reliq.message) RETURNS void
LANGUAGE sql AS $$ SELECT $$;
REVOKE EXECUTE ON FUNCTION app.secret_handler(reliq.message) FROM PUBLIC;

-- Not a member of reliq_admin: refused, with the grant to ask for.
SET ROLE regress_mallory;
SELECT try($$SELECT reliq.create_subscription('mallory', stream => 'REGRESS', subject => 'regress.m',
                                               handler => 'app.who_am_i(reliq.message)'::regprocedure)$$);
SELECT try($$SELECT reliq.publish('regress.m', 'x'::bytea)$$);
SELECT try($$SELECT * FROM reliq.dead_letter$$);
-- (The message differs between PostgreSQL majors; the SQLSTATE does not.)
SELECT left(try($$SHOW reliq.nats_token$$), 5) AS sqlstate;
RESET ROLE;

-- A member may create, but not with a handler it may not execute.
SET ROLE regress_alice;
SELECT try($$SELECT reliq.create_subscription('alice', stream => 'REGRESS', subject => 'regress.alice',
                                               handler => 'app.secret_handler(reliq.message)'::regprocedure)$$);
SELECT reliq.create_subscription('alice', stream => 'REGRESS', subject => 'regress.alice',
                                 handler => 'app.who_am_i(reliq.message)'::regprocedure) > 0 AS created;
SELECT subscription_name, owner FROM reliq.subscription;
RESET ROLE;

-- Another member may not touch it, through the API or the table.
SET ROLE regress_bob;
SELECT try($$SELECT reliq.alter_subscription('alice', batch_size => 5)$$);
SELECT try($$SELECT reliq.drop_subscription('alice')$$);
UPDATE reliq.subscription SET batch_size = 1 WHERE subscription_name = 'alice';
DELETE FROM reliq.subscription WHERE subscription_name = 'alice';
RESET ROLE;
SELECT batch_size FROM reliq.subscription WHERE subscription_name = 'alice';

-- The handler runs as alice, not as the superuser the worker connects as.
SELECT count(*) AS published FROM (
    SELECT reliq.publish('regress.alice', 'hello'::bytea) FROM generate_series(1, 3)) p;
SELECT reliq.wait_idle('alice', '60s');
SELECT subscription, handled_as, count(*) FROM app.who GROUP BY 1, 2;

-- The owner may drop it.
SET ROLE regress_alice;
SELECT reliq.drop_subscription('alice', drop_consumer => true);
RESET ROLE;
