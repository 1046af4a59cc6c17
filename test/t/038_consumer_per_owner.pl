# A consumer per owner (issue 19, stale acks).  The ack subject
# $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.… does not say which
# incarnation of a consumer an ack was for.  When each owner consumed a
# consumer of the same name (deleted and made again at the database's
# position), a former owner's late ack (buffered by its client across a
# reconnect, or sent between its ack gate and its acks) reached the new
# owner's consumer, and nats-server removed the delivery by stream sequence:
# a message the new owner had received but not committed, and then NAKed,
# was never delivered again.
#
# Here the owner changes (a restart in place: the earlier run's lease is
# taken at once, with the rewind), the new owner's handler holds message
# id 1 on a lock, the test sends the ack the former owner's late worker
# would send for that stream sequence, and the handler then fails once.
# With a consumer of its own per owner the stale ack lands on no consumer,
# the NAK brings the message again and it is applied; with one name for
# every owner it was never applied (shown failing before the fix).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'perowner');
$nats->start;
$nats->stream_create('STALE', ['stale.>']);

my $node = reliq_node('perowner', $nats);
$node->safe_psql('postgres', q{
	CREATE TABLE applied (id int, seq bigint);
	CREATE TABLE fail_switch (x int);
	CREATE FUNCTION apply(m reliq.message) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE
		v int := (reliq.message_json(m)->>'id')::int;
	BEGIN
		IF v = 1 THEN
			PERFORM pg_advisory_xact_lock(4242);
			IF EXISTS (SELECT 1 FROM fail_switch) THEN
				RAISE EXCEPTION 'message 1 fails on purpose';
			END IF;
		END IF;
		INSERT INTO applied (id, seq) VALUES (v, m.stream_seq);
	END $$;
	SELECT reliq.create_subscription('stale', stream => 'STALE', subject => 'stale.>',
	       handler => 'apply(reliq.message)'::regprocedure, batch_size => 10,
	       ack_wait => '3s');
});

sub in_use
{
	return $node->safe_psql('postgres',
		"SELECT consumer_in_use FROM reliq.subscription_stats WHERE subscription_name = 'stale'");
}

sub consumer_names
{
	return join(',', sort @{ $nats->js_api('CONSUMER.NAMES.STALE')->{consumers} // [] });
}

# The first owner consumes the durable name.
$nats->publish('stale.a', count => 20, start => 100, payload => '{"id":%d}');
ok(wait_for($node, 'SELECT count(*) = 20 FROM applied'), 'the first owner applies');
ok(wait_for($node, q{SELECT consumer_in_use = 'reliq_stale' FROM reliq.subscription_stats
	WHERE subscription_name = 'stale'}), 'the first owner consumes the durable name');
my $former = in_use();

# The owner changes: a restart in place (a new instance, at once).
$node->stop('immediate');
$node->start;
ok(wait_for($node, q{SELECT state = 'running' AND consumer_in_use ~ '^reliq_stale-r[0-9]+$'
	FROM reliq.subscription_stats WHERE subscription_name = 'stale'}, 60),
	'the new owner consumes a consumer of its own');
my $current = in_use();
isnt($current, $former, "a new name ($current)");
ok(eventually_names($current),
	'the former owner\'s consumer is deleted once the new one is made');

# Message 1, held by the new owner's handler on a lock.
my $locker = $node->background_psql('postgres');
$locker->query_safe('SELECT pg_advisory_lock(4242)');
$nats->publish('stale.b', count => 1, start => 1, payload => '{"id":%d}');
my $seq = $nats->stream_info('STALE')->{state}{last_seq};
ok(wait_for($node, q{SELECT count(*) = 1 FROM pg_locks
	WHERE locktype = 'advisory' AND objid = 4242 AND NOT granted}),
	"the new owner's handler holds message 1 (stream sequence $seq)");

# The former owner's late worker acks that stream sequence.
ok($nats->send_core("\$JS.ACK.STALE.$former.1.$seq.$seq.1700000000000000000.0", ''),
	"a late ack of the former owner's consumer for sequence $seq");

# The handler fails once: the NAK must bring the message again.
$node->safe_psql('postgres', 'INSERT INTO fail_switch VALUES (1)');
$locker->query_safe('SELECT pg_advisory_unlock(4242)');
ok(wait_for($node, q{SELECT failed >= 1 FROM reliq.subscription_stats WHERE subscription_name = 'stale'}),
	'message 1 failed once');
$node->safe_psql('postgres', 'DELETE FROM fail_switch');
$locker->quit;
ok(wait_for($node, 'SELECT count(*) = 1 FROM applied WHERE id = 1', 60),
	'message 1 is delivered again and applied: the stale ack touched nothing');
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id) FROM applied'),
	'21|21', 'each message once');
is($node->safe_psql('postgres', 'SELECT count(*) FROM reliq.dead_letter'), '0',
	'nothing dead-lettered');

# alter_subscription changes the consumer in use, not the durable name.
$node->safe_psql('postgres', q{SELECT reliq.alter_subscription('stale', ack_wait => '4s')});
is(($nats->consumer_info('STALE', $current) // {})->{config}{ack_wait}, 4_000_000_000,
	'alter_subscription updates the consumer in use');
is(consumer_names(), $current, 'and makes no consumer of the durable name');

# drop_subscription(drop_consumer => true) deletes the consumer in use.
$node->safe_psql('postgres', q{SELECT reliq.drop_subscription('stale', drop_consumer => true)});
is(consumer_names(), '', 'dropped with its consumer: none is left');

# A work-queue stream: its consumer cannot be replaced (a second consumer
# of the same subjects is refused, and a new one would not be owed what
# the former was): a new owner goes on with the former owner's.
$nats->stream_create('WQ', ['wq.>'], retention => 'workqueue');
$node->safe_psql('postgres', q{
	SELECT reliq.create_subscription('wq', stream => 'WQ', subject => 'wq.>',
	       handler => 'apply(reliq.message)'::regprocedure, batch_size => 10,
	       ack_wait => '3s');
});
$nats->publish('wq.a', count => 10, start => 1000, payload => '{"id":%d}');
ok(wait_for($node, 'SELECT count(*) = 10 FROM applied WHERE id >= 1000'),
	'work queue: the first owner applies');
$node->stop('immediate');
$node->start;
$nats->publish('wq.a', count => 10, start => 1010, payload => '{"id":%d}');
ok(wait_for($node, 'SELECT count(*) = 20 FROM applied WHERE id >= 1000', 60),
	'work queue: the new owner applies what came after the owner change');
is($node->safe_psql('postgres',
	"SELECT consumer_in_use FROM reliq.subscription_stats WHERE subscription_name = 'wq'"),
	'reliq_wq', "work queue: the new owner consumes the former owner's consumer");
is(join(',', @{ $nats->js_api('CONSUMER.NAMES.WQ')->{consumers} // [] }), 'reliq_wq',
	'work queue: no other consumer was made');

$node->stop;
$nats->stop;
done_testing();

sub eventually_names
{
	my ($want) = @_;
	foreach (1 .. 300)
	{
		return 1 if consumer_names() eq $want;
		select(undef, undef, undef, 0.1);
	}
	diag('consumers: ' . consumer_names());
	return 0;
}
