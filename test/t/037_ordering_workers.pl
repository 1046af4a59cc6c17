# ordering across workers (issue 20): with concurrency => 4 the messages
# of one key reach four worker processes, and are still applied in stream
# order through failures and retries (src/order_registry.c).  20 keys,
# 40 messages each, interleaved, in batches of 10; message a.2 fails
# twice before it succeeds.  Ordered: every key's messages are applied in
# stream order, by more than one worker, a's later messages wait for a.2
# while the other keys flow.  The same stream without ordering, also on
# four workers, applies a's later messages first (what the test catches).
# Then a worker holding messages is ended (pg_terminate_backend): what it
# held is given back, and the order still holds.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'ordering_workers');
$nats->start;
$nats->stream_create('OW', ['ow.>']);

my $node = reliq_node('ordering_workers', $nats);
$node->safe_psql('postgres', q{
	CREATE SEQUENCE tries_ordered;
	CREATE SEQUENCE tries_unordered;
	CREATE TABLE log (id bigserial, sub text, key text, n int, pid int DEFAULT pg_backend_pid());
	CREATE FUNCTION apply(m reliq.message) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE j jsonb := reliq.message_json(m);
	BEGIN
		IF j->>'key' = 'a' AND (j->>'n')::int = 2
		   AND nextval(format('tries_%s', m.subscription)) <= 4 THEN
			RAISE EXCEPTION 'a.2 is not ready yet';
		END IF;
		INSERT INTO log (sub, key, n) VALUES (m.subscription, j->>'key', (j->>'n')::int);
	END $$;
	SELECT reliq.create_subscription('ordered', stream => 'OW', subject => 'ow.>',
	       handler => 'apply(reliq.message)'::regprocedure, batch_size => 10, concurrency => 4,
	       max_deliver => 5, backoff => '{2s}', ordering => '$subject[2]', enabled => false);
	SELECT reliq.create_subscription('unordered', stream => 'OW', subject => 'ow.>',
	       handler => 'apply(reliq.message)'::regprocedure, batch_size => 10, concurrency => 4,
	       max_deliver => 5, backoff => '{2s}', enabled => false);
	SELECT count(reliq.publish(format('ow.%s.%s', k, n), format('{"key": "%s", "n": %s}', k, n)))
	  FROM generate_series(1, 40) n, (SELECT chr(ascii('a') + i) AS k FROM generate_series(0, 19) i) keys;
	SELECT reliq.alter_subscription('ordered', enabled => true);
	SELECT reliq.alter_subscription('unordered', enabled => true);
});
ok(wait_for($node, q{SELECT count(*) = 1600 FROM log}, 120), 'both subscriptions applied all 800 messages');
ok(wait_idle($node, 'ordered', 60), 'ordered: idle');

my $out_of_order = q{
	SELECT count(*) FROM (SELECT n, lag(n) OVER (PARTITION BY key ORDER BY id) AS prev
	                        FROM log WHERE sub = '%s') x
	 WHERE n <= prev};
is($node->safe_psql('postgres', q{SELECT count(DISTINCT pid) > 1 FROM log WHERE sub = 'ordered'}),
	't', 'ordered: applied by more than one worker');
is($node->safe_psql('postgres', sprintf($out_of_order, 'ordered')), '0',
	'ordered: every key applied in stream order');
is($node->safe_psql('postgres', q{SELECT string_agg(n::text, ',' ORDER BY id) FROM log WHERE sub = 'ordered' AND key = 'a'}),
	join(',', 1 .. 40), "ordered: a's later messages waited for a.2");
isnt($node->safe_psql('postgres', q{
	SELECT count(*) FROM log
	 WHERE sub = 'ordered' AND key <> 'a'
	   AND id > (SELECT id FROM log WHERE sub = 'ordered' AND key = 'a' AND n = 1)
	   AND id < (SELECT id FROM log WHERE sub = 'ordered' AND key = 'a' AND n = 2)}),
	'0', 'ordered: other keys were applied while a.2 was failing');
is($node->safe_psql('postgres', q{SELECT failed, dead_lettered FROM reliq.subscription_stats WHERE subscription_name = 'ordered'}),
	'2|0', 'ordered: two failures, no dead letter');
isnt($node->safe_psql('postgres', sprintf($out_of_order, 'unordered')), '0',
	"unordered on four workers: a's later messages passed a.2 (what ordering prevents)");
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT (sub, key, n)) FROM log'),
	'1600|1600', 'each message applied once by each subscription');

# A worker that ends holding messages: the handler waits on a lock the
# test holds, so the ordered workers stop with messages in hand; one of
# them is terminated.  What it held is given back (NAK) and comes again;
# the other workers' newer messages of the same keys wait for it.
$node->safe_psql('postgres', q{
	CREATE TABLE gate (id int);
	CREATE OR REPLACE FUNCTION apply(m reliq.message) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE j jsonb := reliq.message_json(m);
	BEGIN
		PERFORM * FROM gate FOR SHARE;
		INSERT INTO log (sub, key, n) VALUES (m.subscription, j->>'key', (j->>'n')::int);
	END $$;
	SELECT reliq.alter_subscription('unordered', enabled => false);
});
my $locker = $node->background_psql('postgres');
$locker->query_safe('BEGIN; LOCK TABLE gate IN EXCLUSIVE MODE');
$node->safe_psql('postgres', q{
	SELECT count(reliq.publish(format('ow.%s.%s', k, n), format('{"key": "%s", "n": %s}', k, n)))
	  FROM generate_series(41, 60) n, (SELECT chr(ascii('a') + i) AS k FROM generate_series(0, 19) i) keys;
});
ok(wait_for($node, q{SELECT count(*) >= 2 FROM pg_locks l JOIN pg_stat_activity a USING (pid)
	 WHERE NOT l.granted AND l.relation = 'gate'::regclass AND a.backend_type LIKE 'reliq%'}, 60),
	'ordered workers wait with messages in hand');
my $victim = $node->safe_psql('postgres', q{
	SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)
	 WHERE NOT l.granted AND l.relation = 'gate'::regclass AND a.backend_type LIKE 'reliq%' LIMIT 1});
$node->safe_psql('postgres', "SELECT pg_terminate_backend($victim)");
$locker->query_safe('COMMIT');
$locker->quit;
ok(wait_for($node, q{SELECT count(*) = 1200 FROM log WHERE sub = 'ordered'}, 120),
	'ordered: the 400 new messages applied after a worker ended');
is($node->safe_psql('postgres', sprintf($out_of_order, 'ordered')), '0',
	'ordered: every key still in stream order');
is($node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT (key, n)) FROM log WHERE sub = 'ordered'}),
	'1200|1200', 'ordered: each message applied once');

$node->stop;
$nats->stop;
done_testing();
