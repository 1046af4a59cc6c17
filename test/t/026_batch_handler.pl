# Set-based handlers (issue 13, part 1): a handler taking reliq.message[]
# is called once per batch transaction with the fresh messages.  When the
# call fails the batch is redone with one-element calls, each in a
# subtransaction, so a poison message is isolated, retried, dead-lettered
# and replayed as with a per-message handler.  Exactly once across a
# worker killed mid-stream; the handler runs as the subscription's owner.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'batchh');
$nats->start;
$nats->stream_create('B', ['b.>']);

my $node = reliq_node('batchh', $nats);
$node->safe_psql('postgres', q{
	CREATE ROLE alice LOGIN;
	CREATE ROLE bob LOGIN;
	GRANT reliq_admin TO alice, bob;
	CREATE SCHEMA app;
	GRANT USAGE ON SCHEMA app TO alice, bob;
	-- bad = true violates the check: a poison message
	CREATE TABLE app.items (sub text, id int, seq bigint, who text,
	                        bad boolean NOT NULL DEFAULT false CHECK (NOT bad));
	CREATE TABLE app.calls (sub text, n int);
	GRANT INSERT ON app.items, app.calls TO alice;
	CREATE FUNCTION app.on_batch(msgs reliq.message[]) RETURNS void
	LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO app.calls VALUES (msgs[1].subscription, cardinality(msgs));
		INSERT INTO app.items (sub, id, seq, who, bad)
		SELECT m.subscription, (j->>'id')::int, m.stream_seq, current_user,
		       COALESCE((j->>'bad')::boolean, false)
		  FROM unnest(msgs) AS m,
		       LATERAL (SELECT convert_from(m.data, 'UTF8')::jsonb AS j) p;
		IF (SELECT bool_or(convert_from(m.data, 'UTF8')::jsonb ? 'sleep') FROM unnest(msgs) m) THEN
			PERFORM pg_sleep(0.1);
		END IF;
	END $$;
	CREATE FUNCTION app.on_one(m reliq.message) RETURNS void
	LANGUAGE sql AS $$ INSERT INTO app.items (sub, id, seq, who) VALUES (m.subscription, -1, m.stream_seq, current_user) $$;
	CREATE FUNCTION app.on_texts(t text[]) RETURNS void LANGUAGE sql AS $$ SELECT $$;
});

# The signature: reliq.message[] is accepted and recorded so; other arrays are not.
$node->safe_psql('postgres', q{
	SELECT reliq.create_subscription('bulk', stream => 'B', subject => 'b.bulk',
	       handler => 'app.on_batch(reliq.message[])'::regprocedure, batch_size => 100);
}, extra_params => ['-U', 'alice']);
is($node->safe_psql('postgres', q{SELECT handler FROM reliq.subscription WHERE subscription_name = 'bulk'}),
	'app.on_batch(reliq.message[])', 'the handler is recorded as schema.name(reliq.message[])');
my ($ret, $out, $err) = $node->psql('postgres', q{
	SELECT reliq.create_subscription('texts', stream => 'B', subject => 'b.texts',
	       handler => 'app.on_texts(text[])'::regprocedure);
});
like($err, qr/cannot be a reliq handler/, 'a handler taking text[] is refused');
($ret, $out, $err) = $node->psql('postgres', 'DROP FUNCTION app.on_batch(reliq.message[])');
like($err, qr/uses it as its handler/, 'a set-based handler in use may not be dropped');

# 1. N messages, applied once each, in one call per batch, as the owner.
my $n = 2000;
$nats->publish('b.bulk', count => $n, start => 1, payload => '{"id":%d}');
ok(wait_idle($node, 'bulk'), 'bulk drained');
is($node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT id), count(DISTINCT seq), min(id), max(id)
	FROM app.items WHERE sub = 'bulk'}), "$n|$n|$n|1|$n", 'every message applied exactly once');
my $s = reliq_stats($node, 'bulk');
my $calls = $node->safe_psql('postgres', q{SELECT count(*) || '|' || sum(n) || '|' || max(n) FROM app.calls WHERE sub = 'bulk'});
diag("bulk: $s->{batches} batches, $s->{slow_path_batches} on the slow path; calls|messages|largest: $calls");
my ($ncalls, $nsum, $nmax) = split /\|/, $calls;
is($ncalls, $s->{batches}, 'the handler was called once per batch');
is($nsum, $n, 'the calls were given every message once');
cmp_ok($nmax, '>', 1, 'a call took more than one message');
is($s->{slow_path_batches}, 0, 'no batch took the slow path');
is($node->safe_psql('postgres', q{SELECT string_agg(DISTINCT who, ',') FROM app.items WHERE sub = 'bulk'}),
	'alice', 'the handler ran as the subscription owner');

# 2. A poison message: the others are applied once, it is retried, then
# dead-lettered; replayed once the table accepts it.
$node->safe_psql('postgres', q{
	SELECT reliq.create_subscription('poison', stream => 'B', subject => 'b.poison',
	       handler => 'app.on_batch(reliq.message[])'::regprocedure, batch_size => 50,
	       max_deliver => 2, backoff => '{100ms}');
}, extra_params => ['-U', 'alice']);
$nats->publish('b.poison', count => 20, start => 1, payload => '{"id":%d}');
$nats->publish('b.poison', count => 1, start => 21, payload => '{"id":%d,"bad":true}');
$nats->publish('b.poison', count => 20, start => 22, payload => '{"id":%d}');
ok(wait_for($node, q{SELECT count(*) = 1 FROM reliq.dead_letter WHERE subscription = 'poison'}),
	'the poison message reaches reliq.dead_letter');
ok(wait_idle($node, 'poison'), 'poison drained');
is($node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT id), bool_or(id = 21) FROM app.items WHERE sub = 'poison'}),
	'40|40|f', 'the 40 others applied once each, the poison message not');
my $dl = query_row($node, qq{SELECT id, convert_from(data, 'UTF8')::jsonb->>'id' AS msg, stream_seq - $n AS seq, delivered, sqlstate, error_message FROM reliq.dead_letter WHERE subscription = 'poison'});
is("$dl->{msg}|$dl->{seq}|$dl->{delivered}|$dl->{sqlstate}", '21|21|2|23514',
	'dead letter: the poison message (21st on its subject), delivered max_deliver times, the check violation');
like($dl->{error_message}, qr/check constraint/, 'the handler error is recorded');
$s = reliq_stats($node, 'poison');
diag("poison: $s->{batches} batches, $s->{slow_path_batches} slow, failed $s->{failed}, dead_lettered $s->{dead_lettered}");
cmp_ok($s->{slow_path_batches}, '>=', 1, 'the failing call was isolated on the slow path');
($ret, $out, $err) = $node->psql('postgres', "SELECT reliq.replay_dead_letter($dl->{id})",
	extra_params => ['-U', 'alice']);
is($out, 'f', 'replay while the table still refuses it fails');
$node->safe_psql('postgres', q{ALTER TABLE app.items DROP CONSTRAINT items_bad_check});
is($node->safe_psql('postgres', "SELECT reliq.replay_dead_letter($dl->{id})", extra_params => ['-U', 'alice']),
	't', 'replay succeeds once the table accepts it');
is($node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE id = 21 AND who = 'alice')
	FROM app.items WHERE sub = 'poison'}), '41|41|1', 'the replayed message applied once, as the owner');
is($node->safe_psql('postgres', q{SELECT count(*) FROM reliq.dead_letter WHERE subscription = 'poison'}),
	'0', 'the dead letter is gone');

# 3. Exactly once across a worker terminated mid-stream.  The subscription
# starts with a per-message handler and is switched by alter_subscription.
$node->safe_psql('postgres', q{
	SELECT reliq.create_subscription('kill', stream => 'B', subject => 'b.kill',
	       handler => 'app.on_one(reliq.message)'::regprocedure, batch_size => 50,
	       ack_wait => '2s', enabled => false);
	SELECT reliq.alter_subscription('kill', handler => 'app.on_batch(reliq.message[])'::regprocedure,
	       enabled => true);
}, extra_params => ['-U', 'alice']);
my $k = 3000;
$nats->publish('b.kill', count => $k, start => 1, payload => '{"id":%d,"sleep":1}');
ok(wait_for($node, q{SELECT count(*) >= 300 FROM app.items WHERE sub = 'kill'}), 'kill: applying');
my $pid = $node->safe_psql('postgres', q{SELECT pid FROM reliq.worker_status WHERE subscription_name = 'kill' LIMIT 1});
my $before = $node->safe_psql('postgres', q{SELECT count(*) FROM app.items WHERE sub = 'kill'});
is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)"), 't', "worker $pid terminated");
diag("kill: terminated worker $pid after $before of $k applied");
ok(wait_for($node, "SELECT count(*) >= $k FROM app.items WHERE sub = 'kill'", 180), 'kill: every message applied');
ok(wait_idle($node, 'kill'), 'kill drained');
is($node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE id = -1)
	FROM app.items WHERE sub = 'kill'}), "$k|$k|0", 'exactly once across the killed worker, all by the set-based handler');
$s = reliq_stats($node, 'kill');
diag("kill: received $s->{received}, processed $s->{processed}, duplicates $s->{duplicates}, batches $s->{batches}");

# 4. The owner's privileges: bob (an admin too) may not insert into
# app.items; his subscription with the same handler applies nothing and
# loses nothing.
($ret, $out, $err) = $node->psql('postgres', q{INSERT INTO app.items (sub, id) VALUES ('bob', 0)},
	extra_params => ['-U', 'bob']);
like($err, qr/permission denied/, 'bob may not insert into app.items himself');
$node->safe_psql('postgres', q{
	SELECT reliq.create_subscription('bobs', stream => 'B', subject => 'b.bobs',
	       handler => 'app.on_batch(reliq.message[])'::regprocedure, backoff => '{100ms}',
	       max_deliver => 1000);
}, extra_params => ['-U', 'bob']);
$nats->publish('b.bobs', count => 10, start => 1, payload => '{"id":%d}');
ok(wait_for($node, q{SELECT last_error LIKE '%permission denied%' FROM reliq.subscription_stats
	WHERE subscription_name = 'bobs'}), "bob's subscription: permission denied to its handler");
is($node->safe_psql('postgres', q{SELECT count(*) FROM app.items WHERE sub = 'bobs'}), '0',
	'nothing applied with the privileges of anyone but bob');
$node->safe_psql('postgres', q{GRANT INSERT ON app.items, app.calls TO bob});
ok(wait_for($node, q{SELECT count(*) = 10 FROM app.items WHERE sub = 'bobs'}, 120),
	'granted: the held messages are applied');
is($node->safe_psql('postgres', q{SELECT count(DISTINCT id), string_agg(DISTINCT who, ',') FROM app.items WHERE sub = 'bobs'}),
	'10|bob', 'once each, as bob');
is($node->safe_psql('postgres', q{SELECT count(*) FROM reliq.dead_letter}), '0', 'no dead letters left');

my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal|PANIC|TRAP:/, 'no backend crashed');

$node->stop;
$nats->stop;
done_testing();
