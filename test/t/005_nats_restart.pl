# nats-server killed (-9) and restarted in the middle of a stream, and
# stopped and started while the workers wait on their pulls: nothing lost,
# nothing applied twice, and PostgreSQL never restarted -- in particular
# no crash from pulls that cnats buffered while disconnected (Debian's
# cnats 3.4.1 Fetch overflows its array in that situation; reliq does not
# use Fetch).  nats-server 2.9 forgets recent acks when killed and
# delivers acked messages again; the ledger absorbs them.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'natsrestart');
$nats->start;
$nats->stream_create('SHIP', ['ship.>']);

my $node = reliq_node('natsrestart', $nats);
my $started = postmaster_start_time($node);
$node->safe_psql('postgres', q{
	CREATE TABLE shipments (id int, seq bigint);
	CREATE FUNCTION ship(m reliq.message) RETURNS void LANGUAGE sql AS $$
		INSERT INTO shipments VALUES ((reliq.message_json(m)->>'id')::int, m.stream_seq)
	$$;
	SELECT reliq.create_subscription('ship', stream => 'SHIP', subject => 'ship.>',
	       handler => 'ship(reliq.message)'::regprocedure, batch_size => 100, concurrency => 2,
	       ack_wait => '5s');
});

# Idle workers with pulls outstanding while the server goes away and comes
# back, several times.
for my $round (1 .. 3)
{
	$nats->stop;
	sleep 1.5;      # pulls time out and are retried meanwhile
	$nats->start;
}
$nats->publish('ship.idle', count => 100, start => 100001, payload => '{"id":%d}', msg_id => 'idle-%d');
ok(wait_idle($node, 'ship'), 'consuming after restarts of an idle server');

# kill -9 in the middle of a stream, twice.
my $total = 10000;
my $publisher = $nats->publish_bg('ship.out', count => $total, start => 1,
	payload => '{"id":%d}', msg_id => 'ship-%d', rate => 4000);
for my $round (1 .. 2)
{
	my $target = $round * 2000;
	ok(wait_for($node, "SELECT count(*) >= $target FROM shipments WHERE id <= $total"),
		"round $round: consuming");
	$nats->kill9;
	sleep 1;
	$nats->start;
}
is($nats->wait_publish($publisher), $total, 'publisher done');
ok(wait_idle($node, 'ship', 180), 'drained after the kills');

is($node->safe_psql('postgres',
		"SELECT count(*), count(DISTINCT id), min(id), max(id) FROM shipments WHERE id <= $total"),
	"$total|$total|1|$total", 'every shipment applied exactly once');
is($node->safe_psql('postgres', 'SELECT count(*) FROM shipments WHERE id > 100000'),
	'100', 'messages published after the idle restarts applied once');
is(postmaster_start_time($node), $started, 'PostgreSQL was never restarted');
my $s = reliq_stats($node, 'ship');
diag("ship: received $s->{received}, processed $s->{processed}, duplicates $s->{duplicates}");
# A worker whose fresh connection attempts all met a killed server backs
# off (exponentially, capped); it gets back to running by itself.
ok(wait_for($node, q{SELECT state = 'running' FROM reliq.subscription_stats WHERE subscription_name = 'ship'}),
	'running');
ok($node->log_contains('disconnected from NATS'), 'disconnection logged');

$node->stop;
$nats->stop;
done_testing();
