--
-- upsert: the table sink's mode, key and columns settings, and the errors
-- of create_subscription and alter_subscription about them.  (Messages
-- flowing through an upsert sink: test/t/032_upsert.pl.)
--
CREATE TABLE app.orders (order_id bigint PRIMARY KEY, region text, status text,
                         seq bigint, received_at timestamptz, tenant text);
CREATE TABLE app.no_key (id bigint, status text);
CREATE TABLE app.two_keys (a int, b text, v text, UNIQUE (b, a));

-- Upsert by the primary key (the default key), columns from the subject,
-- the metadata and a header.
SELECT reliq.create_subscription('orders', stream => 'REGRESS', subject => 'regress.orders.>',
       target => 'app.orders'::regclass, mode => 'upsert',
       columns => '{"order_id": "$subject[4]", "region": "$subject[3]", "seq": "$stream_seq",
                    "received_at": "$published_at", "tenant": "$header.Tenant"}'::jsonb,
       enabled => false) > 0 AS created;
SELECT mode, key, columns FROM reliq.subscription WHERE subscription_name = 'orders';
-- A key naming the columns of a unique index, in any order.
SELECT reliq.create_subscription('two', stream => 'REGRESS', subject => 'regress.two',
       target => 'app.two_keys'::regclass, mode => 'upsert', key => ARRAY['a', 'b'],
       enabled => false) > 0 AS created;
SELECT mode, key, columns FROM reliq.subscription WHERE subscription_name = 'two';
-- The default mode inserts, as before.
SELECT reliq.create_subscription('plain', stream => 'REGRESS', subject => 'regress.plain',
       target => 'app.no_key'::regclass, enabled => false) > 0 AS created;
SELECT mode, key, columns FROM reliq.subscription WHERE subscription_name = 'plain';

-- Errors at create time.
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
       target => 'app.no_key'::regclass, mode => 'upsert')$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
       target => 'app.no_key'::regclass, mode => 'merge')$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
       target => 'app.orders'::regclass, mode => 'upsert', key => ARRAY['status'])$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
       target => 'app.orders'::regclass, mode => 'upsert', key => ARRAY['nope'])$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
       target => 'app.orders'::regclass, mode => 'upsert', key => ARRAY[]::text[])$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
       target => 'app.orders'::regclass, key => ARRAY['order_id'])$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
       target => 'app.orders'::regclass, columns => '{"nope": "$subject[1]"}')$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
       target => 'app.orders'::regclass, columns => '{"region": "$subject[0]"}')$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
       target => 'app.orders'::regclass, columns => '{"region": "subject"}')$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
       target => 'app.orders'::regclass, columns => '{"region": 3}')$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
       target => 'app.orders'::regclass, columns => '["region"]')$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
       handler => 'app.record_event(reliq.message)'::regprocedure, mode => 'upsert')$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
       target => 'app.orders'::regclass, mode => NULL)$$);
SELECT count(*) FROM reliq.subscription WHERE subscription_name = 'e1';

-- alter_subscription: NULL leaves mode, key and columns as they are.
SELECT reliq.alter_subscription('orders', batch_size => 20);
SELECT mode, key, columns IS NOT NULL AS has_columns FROM reliq.subscription WHERE subscription_name = 'orders';
-- '{}' removes the columns; back to insert mode drops the key.
SELECT reliq.alter_subscription('orders', mode => 'insert', columns => '{}');
SELECT mode, key, columns FROM reliq.subscription WHERE subscription_name = 'orders';
-- Upsert again: the primary key by default.
SELECT reliq.alter_subscription('orders', mode => 'upsert');
SELECT mode, key, columns FROM reliq.subscription WHERE subscription_name = 'orders';
SELECT reliq.alter_subscription('orders', columns => '{"region": "$subject[2]"}');
SELECT mode, key, columns FROM reliq.subscription WHERE subscription_name = 'orders';
SELECT try($$SELECT reliq.alter_subscription('orders', key => ARRAY['region'])$$);
SELECT try($$SELECT reliq.alter_subscription('plain', mode => 'upsert')$$);
SELECT try($$SELECT reliq.alter_subscription('orders', mode => 'insert', key => ARRAY['order_id'])$$);
SELECT try($$SELECT reliq.alter_subscription('orders', columns => '{"region": "$header."}')$$);
SELECT mode, key, columns FROM reliq.subscription WHERE subscription_name = 'orders';

-- newer_than: upsert mode only, a column of the table outside the key.
SELECT reliq.alter_subscription('orders', newer_than => 'seq');
SELECT mode, key, newer_than FROM reliq.subscription WHERE subscription_name = 'orders';
SELECT try($$SELECT reliq.alter_subscription('orders', newer_than => 'nope')$$);
SELECT try($$SELECT reliq.alter_subscription('orders', newer_than => 'order_id')$$);
SELECT try($$SELECT reliq.alter_subscription('plain', newer_than => 'status')$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
       handler => 'app.record_event(reliq.message)'::regprocedure, newer_than => 'x')$$);
SELECT reliq.alter_subscription('orders', newer_than => '');
SELECT mode, key, newer_than FROM reliq.subscription WHERE subscription_name = 'orders';
SELECT reliq.alter_subscription('orders', newer_than => 'seq');
SELECT reliq.alter_subscription('orders', mode => 'insert');
SELECT mode, key, newer_than FROM reliq.subscription WHERE subscription_name = 'orders';

-- on_unknown_keys: 'ignore' (default) or 'dead_letter', table sinks only.
SELECT reliq.alter_subscription('orders', on_unknown_keys => 'dead_letter');
SELECT mode, on_unknown_keys FROM reliq.subscription WHERE subscription_name = 'orders';
SELECT try($$SELECT reliq.alter_subscription('orders', on_unknown_keys => 'reject')$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
       target => 'app.orders'::regclass, on_unknown_keys => NULL)$$);
SELECT try($$SELECT reliq.create_subscription('e1', stream => 'REGRESS', subject => 'regress.e1',
       handler => 'app.record_event(reliq.message)'::regprocedure, on_unknown_keys => 'dead_letter')$$);
SELECT on_unknown_keys FROM reliq.subscription WHERE subscription_name = 'two';

SELECT reliq.drop_subscription(s, drop_consumer => true) FROM unnest(ARRAY['orders', 'two', 'plain']) s;
DROP TABLE app.orders, app.no_key, app.two_keys;
