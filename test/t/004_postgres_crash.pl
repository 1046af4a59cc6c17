# PostgreSQL stopped with -m immediate (a crash, as far as the data is
# concerned) in the middle of a stream, twice, then restarted: nothing
# lost, nothing applied twice.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'pgcrash');
$nats->start;
$nats->stream_create('PAY', ['pay.>']);

my $node = reliq_node('pgcrash', $nats);
$node->safe_psql('postgres', q{
	-- no unique constraint: a message applied twice shows up as two rows
	CREATE TABLE payments (id int, seq bigint);
	CREATE FUNCTION pay(m reliq.message) RETURNS void LANGUAGE sql AS $$
		INSERT INTO payments VALUES ((reliq.message_json(m)->>'id')::int, m.stream_seq)
	$$;
	SELECT reliq.create_subscription('pay', stream => 'PAY', subject => 'pay.>',
	       handler => 'pay(reliq.message)'::regprocedure, batch_size => 50, concurrency => 2,
	       ack_wait => '5s');
});

my $total = 8000;
my $publisher = $nats->publish_bg('pay.in', count => $total, start => 1,
	payload => '{"id":%d}', msg_id => 'pay-%d', rate => 4000);

for my $round (1 .. 2)
{
	# wait until some of it is applied, so the crash falls mid-stream
	my $target = $round * 1500;
	ok(wait_for($node, "SELECT count(*) >= $target FROM payments"),
		"round $round: consuming");
	$node->stop('immediate');
	sleep 0.5;
	$node->start;
}

is($nats->wait_publish($publisher), $total, 'publisher done');
ok(wait_idle($node, 'pay', 180), 'drained after the crashes');
is($node->safe_psql('postgres',
		'SELECT count(*), count(DISTINCT id), min(id), max(id), count(DISTINCT seq) FROM payments'),
	"$total|$total|1|$total|$total", 'every payment applied exactly once');

$node->stop;
$nats->stop;
done_testing();
