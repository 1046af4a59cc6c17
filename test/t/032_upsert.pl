# The table sink in upsert mode: messages of one key collapse to what
# applying them in stream order leaves (within a batch and across
# batches), deletes by header and by empty payload, keys and columns from
# the subject, the headers and the metadata, a message that does not fit
# failing alone into the dead letters with its column named, a new column
# picked up at the next batch, a redelivered stream applied once, and
# newer_than keeping a row from going back to an older version.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'upsert');
$nats->start;
$nats->stream_create('ORDERS', ['orders.>', 'profiles.>', 'versions.>']);

my $node = reliq_node('upsert', $nats);
$node->safe_psql('postgres', q{
	CREATE SCHEMA app;
	CREATE TABLE app.orders (
		order_id bigint PRIMARY KEY,
		region   text,
		status   text NOT NULL DEFAULT 'new',
		amount   numeric CONSTRAINT amount_positive CHECK (amount >= 0),
		qty      int,
		seq      bigint,
		tenant   text,
		received timestamptz
	);
	SELECT reliq.create_subscription('orders', stream => 'ORDERS', subject => 'orders.>',
	       target => 'app.orders'::regclass, mode => 'upsert', batch_size => 100,
	       max_deliver => 2, backoff => '{50ms}', enabled => false,
	       columns => '{"order_id": "$subject[3]", "region": "$subject[2]", "seq": "$stream_seq",
	                    "tenant": "$header.Tenant", "received": "$published_at"}');
	CREATE TABLE app.profiles (user_id int PRIMARY KEY, name text, email text);
	SELECT reliq.create_subscription('profiles', stream => 'ORDERS', subject => 'profiles.>',
	       target => 'app.profiles'::regclass, mode => 'upsert', key => ARRAY['user_id'],
	       batch_size => 100);
});

# The same key several times in one batch: 10 orders, 5 messages each;
# the first names amount and qty, the later ones only status.  Published
# while paused, so that one fetch takes them all.
$node->safe_psql('postgres', q{
	SELECT count(reliq.publish(format('orders.eu.%s', k),
	           CASE WHEN n = 1 THEN format('{"status": "s%s", "amount": %s, "qty": 1}', n, k)
	                ELSE format('{"status": "s%s"}', n) END,
	           headers => CASE WHEN n = 1 THEN '{"Tenant": "acme"}'::jsonb END))
	  FROM generate_series(1, 5) n, generate_series(1, 10) k;
	SELECT reliq.alter_subscription('orders', enabled => true);
});
ok(wait_idle($node, 'orders'), 'drained the first batch');
is($node->safe_psql('postgres', q{
	SELECT count(*), count(DISTINCT order_id), bool_and(status = 's5'), sum(amount), sum(qty),
	       bool_and(region = 'eu'), bool_and(tenant = 'acme'), bool_and(received <= now())
	  FROM app.orders}),
	'10|10|t|55|10|t|t|t',
	'one row per key: the last status, the amount of the first message, subject and header columns');
is($node->safe_psql('postgres', q{
	SELECT string_agg(seq::text, ',' ORDER BY order_id) FROM app.orders}),
	join(',', map { 40 + $_ } 1 .. 10), 'seq ($stream_seq) is the last message of each key');
my $stats = reliq_stats($node, 'orders');
is($stats->{slow_path_batches}, 0, 'no batch redone message by message (no row affected twice)');
is($stats->{processed}, 50, 'every message counts as processed');

# Across batches: later messages update what they name and keep the rest.
$node->safe_psql('postgres', q{
	SELECT count(reliq.publish(format('orders.us.%s', k), format('{"qty": %s}', k * 10)))
	  FROM generate_series(1, 10) k;
});
ok(wait_idle($node, 'orders'), 'drained the updates');
is($node->safe_psql('postgres', q{
	SELECT sum(qty), bool_and(status = 's5'), sum(amount), bool_and(region = 'us'), bool_and(tenant = 'acme')
	  FROM app.orders}),
	'550|t|55|t|t', 'named columns updated, others kept (a missing header keeps the tenant)');

# Deletes: by header, by empty payload, and a delete followed by an
# upsert of the same key in one batch (the row made anew).
$node->safe_psql('postgres', q{SELECT reliq.alter_subscription('orders', enabled => false)});
ok(wait_for($node, q{SELECT count(*) = 0 FROM reliq.worker_status WHERE subscription_name = 'orders'}),
	'paused');
$node->safe_psql('postgres', q{
	SELECT reliq.publish('orders.eu.1', '{}'::text, headers => '{"reliq-op": "delete"}');
	SELECT reliq.publish('orders.eu.2', ''::bytea);
	SELECT reliq.publish('orders.eu.3', ''::bytea);
	SELECT reliq.publish('orders.eu.3', '{"status": "reborn"}'::text);
	SELECT reliq.publish('orders.eu.4', '{"status": "gone"}'::text);
	SELECT reliq.publish('orders.eu.4', '{"status": "x"}'::text, headers => '{"Reliq-Op": "DELETE"}');
	SELECT reliq.publish('orders.eu.99', ''::bytea);
	SELECT reliq.alter_subscription('orders', enabled => true);
});
ok(wait_idle($node, 'orders'), 'drained the deletes');
is($node->safe_psql('postgres', q{SELECT string_agg(order_id::text, ',' ORDER BY order_id) FROM app.orders}),
	'3,5,6,7,8,9,10', 'deleted by header, by empty payload; a missing row is no error');
is($node->safe_psql('postgres', q{SELECT status, amount IS NULL, qty IS NULL, tenant IS NULL FROM app.orders WHERE order_id = 3}),
	'reborn|t|t|t', 'delete then upsert in one batch: the row made anew');

# The key from the body, deletes with a body.
$node->safe_psql('postgres', q{
	SELECT reliq.publish('profiles.set', '{"user_id": 1, "name": "ann", "email": "a@x"}'::jsonb);
	SELECT reliq.publish('profiles.set', '{"user_id": 2, "name": "bob"}'::jsonb);
	SELECT reliq.publish('profiles.set', '{"user_id": 1, "email": "ann@x"}'::jsonb);
	SELECT reliq.publish('profiles.del', '{"user_id": 2}'::jsonb, headers => '{"reliq-op": "delete"}');
});
ok(wait_idle($node, 'profiles'), 'profiles drained');
is($node->safe_psql('postgres', q{SELECT user_id, name, email FROM app.profiles}),
	'1|ann|ann@x', 'key from the body; delete with a body');

# newer_than: a row is only overwritten by a message at least as new,
# within a batch (in stream order) and against the table.
$node->safe_psql('postgres', q{
	CREATE TABLE app.versions (id int PRIMARY KEY, v int, val text, note text);
	INSERT INTO app.versions VALUES (2, 5, 'old', 'kept'), (3, 5, 'old', NULL);
	SELECT reliq.create_subscription('versions', stream => 'ORDERS', subject => 'versions.>',
	       target => 'app.versions'::regclass, mode => 'upsert', newer_than => 'v',
	       columns => '{"id": "$subject[2]"}', batch_size => 100, enabled => false);
	SELECT reliq.publish('versions.1', '{"v": 2, "val": "a", "note": "n"}'::text);
	SELECT reliq.publish('versions.1', '{"v": 1, "val": "b"}'::text);
	SELECT reliq.publish('versions.1', '{"v": 3, "val": "c"}'::text);
	SELECT reliq.publish('versions.2', '{"v": 4, "val": "stale"}'::text);
	SELECT reliq.publish('versions.3', '{"v": 5, "val": "same"}'::text);
	SELECT reliq.publish('versions.3', '{"val": "unversioned"}'::text);
	SELECT reliq.alter_subscription('versions', enabled => true);
});
ok(wait_idle($node, 'versions'), 'versions drained');
is($node->safe_psql('postgres', q{SELECT string_agg(concat_ws(' ', id, v, val, note), ',' ORDER BY id) FROM app.versions}),
	'1 3 c n,2 5 old kept,3 5 unversioned',
	'newer_than: stale messages skipped, as new applied, a message without the column applied');

# on_unknown_keys => 'dead_letter': a message with a key the table lacks
# fails alone (in upsert mode and in insert mode, whose batches go by
# COPY); once the column is added, its dead letter replays.
$node->safe_psql('postgres', q{
	SELECT reliq.alter_subscription('profiles', on_unknown_keys => 'dead_letter', max_deliver => 1);
	CREATE TABLE app.log (id int, msg text);
	SELECT reliq.create_subscription('log', stream => 'ORDERS', subject => 'profiles.>',
	       target => 'app.log'::regclass, on_unknown_keys => 'dead_letter', max_deliver => 1,
	       enabled => false);
	SELECT reliq.publish('profiles.set', '{"user_id": 5, "name": "eve", "nickname": "e"}'::jsonb);
	SELECT reliq.publish('profiles.set', '{"user_id": 6, "name": "fay"}'::jsonb);
});
ok(wait_for($node, q{SELECT count(*) = 1 FROM reliq.dead_letter WHERE subscription = 'profiles'}),
	'upsert: the message with an unknown key is a dead letter');
ok(wait_idle($node, 'profiles'), 'profiles drained again');
is($node->safe_psql('postgres', q{SELECT string_agg(user_id::text, ',' ORDER BY user_id) FROM app.profiles}),
	'1,6', 'the other message applied');
like($node->safe_psql('postgres', q{SELECT error_message FROM reliq.dead_letter WHERE subscription = 'profiles'}),
	qr/message has the key "nickname", which is not a column of app\.profiles/, 'the dead letter names the key');
$node->safe_psql('postgres', q{
	ALTER TABLE app.profiles ADD COLUMN nickname text;
	SELECT reliq.replay_dead_letter(id) FROM reliq.dead_letter WHERE subscription = 'profiles';
	ALTER TABLE app.log ADD COLUMN user_id int, ADD COLUMN name text, ADD COLUMN email text;
	SELECT reliq.alter_subscription('log', enabled => true);
});
is($node->safe_psql('postgres', q{SELECT nickname FROM app.profiles WHERE user_id = 5}),
	'e', 'replayed once the column exists');
ok(wait_idle($node, 'log'), 'log drained');
is($node->safe_psql('postgres', q{
	SELECT count(*), string_agg(error_message, '') ~ '"nickname"' FROM reliq.dead_letter WHERE subscription = 'log'}),
	'1|t', 'insert mode: the message with an unknown key is a dead letter');
is($node->safe_psql('postgres', q{SELECT count(*) FROM app.log WHERE user_id IS NOT NULL}),
	'5', 'insert mode: the others inserted');

# A message that does not fit fails alone, and ends as a dead letter that
# names the column; the others of its batch are applied.
$node->safe_psql('postgres', q{
	SELECT reliq.publish(format('orders.eu.%s', k),
	                     CASE WHEN k = 21 THEN '{"amount": "lots"}'
	                          WHEN k = 22 THEN '{"amount": -1}'
	                          ELSE '{"amount": 1}' END)
	  FROM generate_series(20, 25) k;
});
ok(wait_for($node, q{SELECT count(*) = 2 FROM reliq.dead_letter WHERE subscription = 'orders'}),
	'the two misfits are dead letters');
ok(wait_idle($node, 'orders'), 'drained after the misfits');
is($node->safe_psql('postgres', q{SELECT string_agg(order_id::text, ',' ORDER BY order_id) FROM app.orders WHERE order_id >= 20}),
	'20,23,24,25', 'the other messages of the batch applied');
is($node->safe_psql('postgres', q{
	SELECT sqlstate, error_message, error_context LIKE '%table sink app.orders, column amount, value "lots"%'
	  FROM reliq.dead_letter WHERE subject = 'orders.eu.21'}),
	'22P02|invalid input syntax for type numeric: "lots"|t', 'a type error: the column and the value in the dead letter');
like($node->safe_psql('postgres', q{SELECT sqlstate || ' ' || error_message FROM reliq.dead_letter WHERE subject = 'orders.eu.22'}),
	qr/^23514 .*amount_positive/, 'a constraint error: the constraint in the dead letter');

# Replaying a dead letter once the table takes it: its subject still
# gives the key.
$node->safe_psql('postgres', q{
	ALTER TABLE app.orders DROP CONSTRAINT amount_positive;
	SELECT reliq.replay_dead_letter(id) FROM reliq.dead_letter WHERE subject = 'orders.eu.22';
});
is($node->safe_psql('postgres', q{SELECT amount, region FROM app.orders WHERE order_id = 22}),
	'-1|eu', 'a replayed dead letter upserts by the key of its subject');

# ALTER TABLE ADD COLUMN: picked up at the next batch.
$node->safe_psql('postgres', q{
	ALTER TABLE app.orders ADD COLUMN note text;
	SELECT reliq.publish('orders.eu.5', '{"note": "hello"}'::text);
});
ok(wait_idle($node, 'orders'), 'drained after ALTER TABLE');
is($node->safe_psql('postgres', q{SELECT note, status FROM app.orders WHERE order_id = 5}),
	'hello|s5', 'a new column is filled at the next batch');

# Redelivery: the consumer made again from the first message; the ledger
# keeps every message from being applied twice (an old message applied
# again would move seq back).
my $before = $node->safe_psql('postgres', 'SELECT md5(string_agg(o::text, \',\' ORDER BY order_id)) FROM app.orders o');
ok(rewind_consumer($node, $nats, 'orders', 'ORDERS', 'orders.>'), 'paused');
$node->safe_psql('postgres', q{
	SELECT reliq.subscription_stats_reset('orders');
	SELECT reliq.alter_subscription('orders', enabled => true);
});
ok(wait_for($node, q{SELECT duplicates >= 74 FROM reliq.subscription_stats WHERE subscription_name = 'orders'}),
	'all messages delivered again and recognised');
ok(wait_idle($node, 'orders'), 'drained after the rewind');
is($node->safe_psql('postgres', 'SELECT md5(string_agg(o::text, \',\' ORDER BY order_id)) FROM app.orders o'),
	$before, 'nothing applied twice');
is(reliq_stats($node, 'orders')->{processed}, 0, 'no message processed again');

# A NOT NULL column without a default, left out by a message: the row of
# its key is updated (PostgreSQL checks NOT NULL on the row an INSERT
# proposes before ON CONFLICT finds the existing one, so an upsert would
# fail); a key without a row cannot be made and the message is a dead
# letter of its own, naming the column.
$node->safe_psql('postgres', q{
	CREATE TABLE app.accounts (id int PRIMARY KEY, owner text NOT NULL, balance int);
	SELECT reliq.create_stream('ORDERS', ARRAY['orders.>', 'profiles.>', 'versions.>', 'accounts.>']);
	SELECT reliq.create_subscription('accounts', stream => 'ORDERS', subject => 'accounts.>',
	       target => 'app.accounts'::regclass, mode => 'upsert', max_deliver => 1,
	       columns => '{"id": "$subject[2]"}');
	SELECT reliq.publish('accounts.1', '{"owner": "ann", "balance": 10}'::text);
	SELECT reliq.publish('accounts.2', '{"owner": "bob", "balance": 20}'::text);
});
ok(wait_for($node, q{SELECT count(*) = 2 FROM app.accounts}), 'two accounts made');
$node->safe_psql('postgres', q{
	SELECT reliq.publish('accounts.1', '{"balance": 11}'::text);
	SELECT reliq.publish('accounts.3', '{"balance": 30}'::text);
	SELECT reliq.publish('accounts.2', '{"balance": 21}'::text);
});
ok(wait_for($node, q{SELECT processed + dead_lettered = 5 FROM reliq.subscription_stats WHERE subscription_name = 'accounts'}),
	'the accounts drained');
is($node->safe_psql('postgres', q{SELECT string_agg(id || ':' || owner || ':' || balance, ',' ORDER BY id) FROM app.accounts}),
	'1:ann:11,2:bob:21', 'a message leaving out a NOT NULL column updates its row');
like($node->safe_psql('postgres', q{SELECT sqlstate || ' ' || error_message FROM reliq.dead_letter WHERE subject = 'accounts.3'}),
	qr/^23502 .*leaves out column owner/, 'a new key without the column: a dead letter naming it');

$node->stop;
done_testing();
