# End to end against a real nats-server: a backlog published before the
# subscription, more while it runs, two workers, a handler that publishes
# to a second subscription through the outbox.  Every message applied
# exactly once; counters equal what was published.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'e2e');
$nats->start;
$nats->stream_create('ORDERS', ['order.>', 'invoice.>']);

my $node = reliq_node('e2e', $nats);
$node->safe_psql('postgres', q{
	CREATE TABLE orders (id int, amount int, traceparent text, subject text, seq bigint);
	CREATE TABLE invoices (order_id int, seq bigint);
	CREATE FUNCTION on_order(m reliq.message) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE o jsonb := reliq.message_json(m);
	BEGIN
		INSERT INTO orders VALUES ((o->>'id')::int, (o->>'amount')::int,
		                           m.headers->>'traceparent', m.subject, m.stream_seq);
		PERFORM reliq.publish('invoice.created', jsonb_build_object('order_id', o->'id')::text::bytea);
	END $$;
	CREATE FUNCTION on_invoice(m reliq.message) RETURNS void LANGUAGE sql AS $$
		INSERT INTO invoices VALUES ((reliq.message_json(m)->>'order_id')::int, m.stream_seq)
	$$;
});

# A backlog published before the subscription exists is processed.
my $backlog = 1500;
is($nats->publish('order.created', count => $backlog, start => 1,
		payload => '{"id":%d,"amount":7}', msg_id => 'order-%d',
		headers => [['traceparent', '00-abc-01']]),
	$backlog, 'backlog published');

$node->safe_psql('postgres', q{
	SELECT reliq.create_subscription('orders', stream => 'ORDERS', subject => 'order.>',
	       handler => 'on_order(reliq.message)'::regprocedure, batch_size => 100, concurrency => 2);
	SELECT reliq.create_subscription('invoices', stream => 'ORDERS', subject => 'invoice.>',
	       handler => 'on_invoice(reliq.message)'::regprocedure, batch_size => 50);
});

# More while it runs.
my $live = 1500;
is($nats->publish('order.created', count => $live, start => $backlog + 1,
		payload => '{"id":%d,"amount":7}', msg_id => 'order-%d',
		headers => [['traceparent', '00-abc-01']]),
	$live, 'live messages published');
my $total = $backlog + $live;

ok(wait_idle($node, 'orders'), 'orders drained');
ok(wait_idle($node, 'invoices'), 'invoices drained');

is($node->safe_psql('postgres',
		'SELECT count(*), count(DISTINCT id), min(id), max(id), count(DISTINCT seq) FROM orders'),
	"$total|$total|1|$total|$total", 'every order applied exactly once');
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT order_id) FROM invoices'),
	"$total|$total", 'every outbox publish delivered exactly once');
is($node->safe_psql('postgres', q{SELECT count(*) FROM orders WHERE traceparent = '00-abc-01' AND subject = 'order.created'}),
	$total, 'headers and subject reach the handler');
is($node->safe_psql('postgres', 'SELECT count(*) FROM reliq._outbox'), '0', 'outbox empty');

my $stats = reliq_stats($node, 'orders');
is($stats->{received}, $total, 'received counts every message');
is($stats->{processed}, $total, 'processed counts every message');
is("$stats->{failed}|$stats->{retried}|$stats->{dead_lettered}|$stats->{duplicates}", '0|0|0|0',
	'no failures, retries, dead letters or duplicates');
is($stats->{state}, 'running', 'state is running');
is($stats->{workers}, 2, 'two workers');
ok($stats->{batches} >= $total / 100, "batches ($stats->{batches}) at most batch_size messages each");

ok(wait_for($node, q{SELECT pending = 0 AND ack_pending = 0 FROM reliq.subscription_stats WHERE subscription_name = 'orders'}),
	'consumer info shows nothing pending');

is($node->safe_psql('postgres',
		q{SELECT string_agg(backend_type || ':' || application_name, ',' ORDER BY application_name)
		    FROM pg_stat_activity WHERE backend_type LIKE 'reliq%'}),
	'reliq launcher:reliq launcher,reliq monitor:reliq monitor,reliq worker:reliq worker #0,reliq worker:reliq worker #1,reliq worker:reliq worker #2',
	'launcher, monitor and a pool of three workers (two lanes of orders, one of invoices) are visible in pg_stat_activity');
is($node->safe_psql('postgres',
		q{SELECT string_agg(subscription_name || ':' || worker_index, ',' ORDER BY subscription_name, worker_index)
		    FROM reliq.worker_status}),
	'invoices:2,orders:0,orders:1', 'each lane on its own worker, the least loaded first');

# The consumer on the server matches the subscription.
my $ci = $nats->consumer_info('ORDERS', 'reliq_orders');
is($ci->{config}{ack_policy}, 'explicit', 'consumer uses explicit acks');
is($ci->{config}{filter_subject}, 'order.>', 'consumer filters the subject');
is($ci->{config}{max_deliver}, -1, 'server-side max_deliver unlimited (reliq counts)');

# A table sink: each JSON message becomes a row of the target table.
$node->safe_psql('postgres', q{
	CREATE TABLE order_rows (id int, amount int, note text);
	SELECT reliq.create_subscription('rows', stream => 'ORDERS', subject => 'order.>',
	       target => 'order_rows'::regclass, batch_size => 200);
});
ok(wait_idle($node, 'rows'), 'table sink drained');
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id), sum(amount), count(note) FROM order_rows'),
	"$total|$total|" . (7 * $total) . '|0', 'each message inserted once, keys matched to columns');

$node->stop;
$nats->stop;
done_testing();
