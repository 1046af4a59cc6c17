# reliq.health() names what is wrong: a stall (ack_pending at the
# consumer's max_ack_pending) and a backlog growing while nothing is
# applied -- both seen while every worker is stuck in a handler, because
# the monitor asks the server whatever the workers are doing -- a systemic
# failure, and a subscription with no worker.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'health');
$nats->start;
$nats->stream_create('H', ['h.>']);

my $node = reliq_node('health', $nats);
$node->safe_psql('postgres', q{
	CREATE TABLE sink (id int);
	CREATE FUNCTION put(m reliq.message) RETURNS void LANGUAGE sql AS $$
		INSERT INTO sink VALUES ((reliq.message_json(m)->>'id')::int)
	$$;
	SELECT reliq.create_subscription('stuck', stream => 'H', subject => 'h.stuck',
	       handler => 'put(reliq.message)'::regprocedure, batch_size => 20);
});
$nats->publish('h.stuck', count => 5, start => 1, payload => '{"id":%d}');
ok(wait_idle($node, 'stuck'), 'running');
ok(wait_for($node, q{SELECT status = 'ok' FROM reliq.health() WHERE subscription_name = 'stuck'}), 'ok');

# Someone lowers the consumer's max_ack_pending on the server, and the
# handler blocks on a lock.
my $ci = $nats->consumer_info('H', 'reliq_stuck');
$nats->js_api('CONSUMER.DURABLE.CREATE.H.reliq_stuck',
	{ stream_name => 'H', config => { %{ $ci->{config} }, max_ack_pending => 10 } });
my $locker = $node->background_psql('postgres');
$locker->query_safe('BEGIN; LOCK TABLE sink IN ACCESS EXCLUSIVE MODE;');

$nats->publish('h.stuck', count => 100, start => 6, payload => '{"id":%d}');
ok(wait_for($node, q{SELECT status = 'degraded' AND 'stalled: 10 messages await acknowledgement, the consumer''s max_ack_pending' = ANY(reasons)
                      FROM reliq.health() WHERE subscription_name = 'stuck'}),
	'stalled at max_ack_pending');

# More keeps coming while nothing is applied.
my $publisher = $nats->publish_bg('h.stuck', count => 300, start => 106, payload => '{"id":%d}', rate => 50);
ok(wait_for($node, q{SELECT EXISTS (SELECT FROM unnest(reasons) r WHERE r LIKE 'lag growing while nothing is processed%')
                      FROM reliq.health() WHERE subscription_name = 'stuck'}),
	'lag growing while nothing is processed');
is($nats->wait_publish($publisher), 300, 'published meanwhile');

$locker->query_safe('COMMIT');
$locker->quit;
ok(wait_idle($node, 'stuck', 120), 'drained once the lock is gone');
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id) FROM sink'), '405|405', 'all applied once');

# Systemic failure: down, with the reason.
$node->safe_psql('postgres', q{ALTER TABLE sink RENAME TO sink_away});
$nats->publish('h.stuck', count => 50, start => 1001, payload => '{"id":%d}');
ok(wait_for($node, q{SELECT status = 'down' AND reasons[1] LIKE 'systemic failure: %relation "sink" does not exist%'
                      FROM reliq.health() WHERE subscription_name = 'stuck'}),
	'systemic failure: down');
$node->safe_psql('postgres', q{ALTER TABLE sink_away RENAME TO sink});
ok(wait_idle($node, 'stuck'), 'recovered');

# A concurrency above the pool: degraded, with the setting to raise; a
# subscription made afterwards is served all the same (the pool).
$node->safe_psql('postgres', q{
	SELECT reliq.set_concurrency('stuck', 10);
	SELECT reliq.create_subscription('late', stream => 'H', subject => 'h.late',
	       handler => 'put(reliq.message)'::regprocedure);
});
ok(wait_for($node, q{SELECT status = 'degraded'
                             AND reasons[1] LIKE 'short of workers: 8 of 10 workers running: concurrency is above reliq.max_workers (8)%'
                             AND cardinality(reasons) = 1
                      FROM reliq.health() WHERE subscription_name = 'stuck'}),
	'a concurrency above reliq.max_workers: degraded, with the setting to raise');
ok(wait_for($node, q{SELECT status = 'ok' FROM reliq.health() WHERE subscription_name = 'late'}),
	'a later subscription is served on the same pool');

$node->stop;
$nats->stop;
done_testing();
