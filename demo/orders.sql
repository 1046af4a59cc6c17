--
-- demo/orders.sql: an entity stream, as a reliq user sets it up.
--
-- Order services publish each change of an order to orders.<region>.<id>.<event>:
-- a JSON object with the fields that changed, and an empty payload when an
-- order is deleted.  The table sink keeps app.orders at the current state
-- of every order: upserts by order_id (taken from the subject), only the
-- fields a message names, deletes by empty payload, a version guard so that
-- a replayed or redelivered change never moves an order back, and each
-- order's changes applied in stream order by two workers (so a delete is
-- never undone by an older change applied after it).
--
\set ON_ERROR_STOP on
CREATE EXTENSION IF NOT EXISTS reliq;
SELECT reliq.create_stream('ORDERS', ARRAY['orders.>']);

CREATE SCHEMA IF NOT EXISTS app;
CREATE TABLE app.orders (
    order_id   bigint PRIMARY KEY,
    region     text NOT NULL,
    status     text NOT NULL,
    amount     numeric(10, 2),
    version    int NOT NULL,           -- the producer's version of the order
    stream_seq bigint NOT NULL         -- the last message applied to it
);

SELECT reliq.create_subscription('orders', stream => 'ORDERS', subject => 'orders.>',
                                 target => 'app.orders'::regclass,
                                 mode => 'upsert',           -- key: the primary key, order_id
                                 columns => '{"order_id": "$subject[3]",
                                              "region": "$subject[2]",
                                              "stream_seq": "$stream_seq"}',
                                 newer_than => 'version',
                                 ordering => 'key',          -- each order's changes in stream order,
                                 concurrency => 2,           -- on two workers
                                 batch_size => 500);
