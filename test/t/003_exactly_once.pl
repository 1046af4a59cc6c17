# Exactly once: sequences the server delivers again are acked without
# running the handler.  Redeliveries are forced three ways: the consumer
# is deleted and made again from the start of the stream; a batch outlasts
# ack_wait while another worker pulls; the stream itself is deleted and
# made again (its sequence 1 is new work then, not a duplicate).
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'once');
$nats->start;
$nats->stream_create('EV', ['ev.>']);

my $node = reliq_node('once', $nats);
$node->safe_psql('postgres', q{
	CREATE TABLE applied (id int, sub text, seq bigint);
	CREATE FUNCTION apply(m reliq.message) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE j jsonb := reliq.message_json(m);
	BEGIN
		IF j ? 'sleep' THEN PERFORM pg_sleep((j->>'sleep')::float); END IF;
		INSERT INTO applied VALUES ((j->>'id')::int, m.subscription, m.stream_seq);
	END $$;
	SELECT reliq.create_subscription('reset', stream => 'EV', subject => 'ev.reset',
	       handler => 'apply(reliq.message)'::regprocedure, batch_size => 100);
});

# 1. Consumer deleted on the server and made again from the first message.
$nats->publish('ev.reset', count => 500, start => 1, payload => '{"id":%d}');
ok(wait_idle($node, 'reset'), 'first pass drained');
# wait for the acknowledged floor to be recorded and the ledger pruned
ok(wait_for($node, q{SELECT count(*) = 0 FROM reliq._ledger l JOIN reliq.subscription s ON s.id = l.subscription_id WHERE s.subscription_name = 'reset'}),
	'ledger pruned below the acknowledged floor');
ok(rewind_consumer($node, $nats, 'reset', 'EV', 'ev.reset'), 'paused');
is($nats->consumer_info('EV', 'reliq_reset')->{num_pending}, 500, 'new consumer will redeliver all 500');
$node->safe_psql('postgres', q{
	SELECT reliq.subscription_stats_reset('reset');
	SELECT reliq.alter_subscription('reset', enabled => true);
});
$nats->publish('ev.reset', count => 20, start => 501, payload => '{"id":%d}');
ok(wait_idle($node, 'reset'), 'second pass drained');
is($node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT id), max(id) FROM applied WHERE sub = 'reset'}),
	'520|520|520', 'redelivered sequences not applied again; new ones applied');
my $s = reliq_stats($node, 'reset');
is("$s->{duplicates}|$s->{processed}", '500|20', '500 duplicates acked, 20 processed');

# 2. A batch that outlasts ack_wait is redelivered to the other worker.
$node->safe_psql('postgres', q{
	SELECT reliq.create_subscription('slowack', stream => 'EV', subject => 'ev.slowack',
	       handler => 'apply(reliq.message)'::regprocedure,
	       batch_size => 5, concurrency => 2, ack_wait => '1s');
});
ok(wait_for($node, q{SELECT count(*) = 2 FROM reliq.worker_status WHERE subscription_name = 'slowack'}),
	'two workers');
$nats->publish('ev.slowack', count => 20, start => 1, payload => '{"id":%d,"sleep":0.4}');
ok(wait_idle($node, 'slowack', 180), 'slow subscription drained');
is($node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT id) FROM applied WHERE sub = 'slowack'}),
	'20|20', 'each applied once although ack_wait expired under them');
$s = reliq_stats($node, 'slowack');
diag("slowack: received $s->{received}, processed $s->{processed}, duplicates $s->{duplicates}");
is($s->{processed}, 20, 'processed once each');
is($s->{received}, $s->{processed} + $s->{duplicates}, 'every extra delivery counted as a duplicate');

# 3. The stream is deleted and made again: sequences restart at 1 and are new.
$node->safe_psql('postgres', q{
	SELECT reliq.create_subscription('recreated', stream => 'EV', subject => 'ev.recreated',
	       handler => 'apply(reliq.message)'::regprocedure);
});
$nats->publish('ev.recreated', count => 50, start => 1, payload => '{"id":%d}');
ok(wait_idle($node, 'recreated'), 'first stream drained');
$nats->stream_delete('EV');
$nats->stream_create('EV', ['ev.>']);
$nats->publish('ev.recreated', count => 30, start => 1001, payload => '{"id":%d}');
ok(wait_for($node, q{SELECT count(*) = 80 FROM applied WHERE sub = 'recreated'}),
	'messages of the new stream applied although their sequences were seen before');
is($node->safe_psql('postgres', q{SELECT count(DISTINCT id), min(seq), max(seq) FROM applied WHERE sub = 'recreated' AND id > 1000}),
	'30|1|30', 'new stream started at sequence 1');
is($node->safe_psql('postgres', q{SELECT count(DISTINCT stream_created) FROM reliq._stream_identity i JOIN reliq.subscription s ON s.id = i.subscription_id WHERE s.subscription_name = 'recreated'}),
	'1', 'one stream incarnation recorded');

$node->stop;
$nats->stop;
done_testing();
