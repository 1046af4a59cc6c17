# Redeliveries in bulk (issue 13, the stall): messages that come back
# together with delivered = 2 (here every message failed once and was
# given back with a NAK; after a restart of nats-server, a lost connection
# or an expired ack_wait, the same) are applied in batches, not in one
# transaction each, and still exactly once.  Later redeliveries are still
# applied one by one (test 002: a message that kills its worker).
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use ReliqTest::Nats;
use ReliqTest::Node;

my $K = 300;
my $nats = ReliqTest::Nats->new(name => 'redeliv');
$nats->start;
$nats->stream_create('R', ['r.>']);

my $node = reliq_node('redeliv', $nats);
$node->safe_psql('postgres', q{
	CREATE TABLE done (id int, delivered int);
	-- fails every message the first time it is delivered
	CREATE FUNCTION on_msg(m reliq.message) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		IF m.delivered < 2 THEN
			RAISE EXCEPTION 'first delivery of %', m.stream_seq;
		END IF;
		INSERT INTO done VALUES ((convert_from(m.data, 'UTF8')::jsonb->>'id')::int, m.delivered);
	END $$;
});
$nats->publish('r.x', count => $K, start => 1, payload => '{"id":%d}');
my $t0 = time;
$node->safe_psql('postgres', q{
	SELECT reliq.create_subscription('again', stream => 'R', subject => 'r.>',
	       handler => 'on_msg(reliq.message)'::regprocedure, batch_size => 100,
	       backoff => '{200ms}');
});
ok(wait_for($node, "SELECT count(*) >= $K FROM done", 120), 'the redeliveries applied');
ok(wait_idle($node, 'again'), 'drained');
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id), min(delivered), max(delivered) FROM done'),
	"$K|$K|2|2", 'each applied once, at its second delivery');
my $stats = reliq_stats($node, 'again');
diag(sprintf('%d processed, %d failed, in %d batches (%d on the slow path), drained %.1f s after the start',
	$stats->{processed}, $stats->{failed}, $stats->{batches}, $stats->{slow_path_batches}, time - $t0));
is($stats->{failed}, $K, 'each failed once');
# the first deliveries take a few batches, the redeliveries as few: one
# transaction per redelivery would make it more than $K
cmp_ok($stats->{batches}, '<=', $K / 10, 'redeliveries applied in batches, not one transaction each');

$node->stop;
$nats->stop;
done_testing();
