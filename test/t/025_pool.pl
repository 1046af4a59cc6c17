# The worker pool: more subscriptions than workers are all served; a busy
# subscription does not starve its neighbours on the same worker; a
# failing subscription holds its batch while the others on its worker go
# on; concurrency changes live, both ways, without moving other lanes; a
# concurrency above the pool shows as a shortfall; reliq.max_subscriptions
# refuses the subscription past it with the setting to raise.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'pool');
$nats->start;
$nats->stream_create('POOL', ['pool.>']);

my $node = reliq_node('pool', $nats,
	conf => "reliq.max_workers = 2\nreliq.max_subscriptions = 12");
$node->safe_psql('postgres', q{
	CREATE TABLE got (sub text, id int, at timestamptz DEFAULT clock_timestamp());
	CREATE FUNCTION got(m reliq.message) RETURNS void LANGUAGE sql AS $$
		INSERT INTO got (sub, id) VALUES (m.subscription, (reliq.message_json(m)->>'id')::int)
	$$;
	CREATE FUNCTION slow(m reliq.message) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM pg_sleep(0.0005);
		INSERT INTO got (sub, id) VALUES (m.subscription, (reliq.message_json(m)->>'id')::int);
	END $$;
	-- fails as a whole (a table missing) until the table is made
	CREATE FUNCTION needs_table(m reliq.message) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		EXECUTE 'INSERT INTO later_table VALUES ($1)' USING (reliq.message_json(m)->>'id')::int;
	END $$;
});

# Six subscriptions of concurrency 1 on a pool of two workers.
for my $i (1 .. 6)
{
	$node->safe_psql('postgres', qq{
		SELECT reliq.create_subscription('s$i', stream => 'POOL', subject => 'pool.s$i',
		       handler => 'got(reliq.message)'::regprocedure, batch_size => 50);
	});
	$nats->publish("pool.s$i", count => 200, start => 1, payload => '{"id":%d}');
}
for my $i (1 .. 6)
{
	ok(wait_idle($node, "s$i"), "subscription s$i served");
}
is($node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT (sub, id)) FROM got}),
	'1200|1200', 'six subscriptions on two workers: 1200 applied, none twice');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'reliq worker'}),
	'2', 'two worker processes (reliq.max_workers)');
is($node->safe_psql('postgres', q{
	SELECT string_agg(n::text, ',' ORDER BY worker_index)
	  FROM (SELECT worker_index, count(*) AS n FROM reliq.worker_status GROUP BY worker_index) w}),
	'3,3', 'three lanes on each worker');
is($node->safe_psql('postgres', q{SELECT count(*) FROM reliq.subscription_stats
	WHERE state = 'running' AND workers = 1 AND worker_shortfall IS NULL}),
	'6', 'every subscription running, with no shortfall');
is($node->safe_psql('postgres', q{SELECT count(*) FROM reliq.health() WHERE status <> 'ok'}),
	'0', 'health() ok for all');
# A worker with three lanes is one series of reliq_nats_connected, and no
# series appears twice (Prometheus rejects a scrape that repeats one).
is($node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE line LIKE ('reliq_nats_connected' || chr(123) || '%')), count(*) - count(DISTINCT series)
	  FROM (SELECT line, split_part(line, ' ', 1) AS series
	          FROM regexp_split_to_table(reliq.metrics(), E'\n') AS line
	         WHERE line <> '' AND line NOT LIKE '#%') s}),
	'2|0', 'metrics: one reliq_nats_connected series per worker, no series twice');

# Which worker serves what, to see that nothing moves below.
my $lanes_before = $node->safe_psql('postgres', q{
	SELECT string_agg(subscription_name || '@' || worker_index, ',' ORDER BY subscription_name)
	  FROM reliq.worker_status WHERE subscription_name IN ('s1', 's2', 's3', 's4', 's5', 's6')});

# A failing subscription beside healthy ones: it holds its batch, they go on.
$node->safe_psql('postgres', q{
	SELECT reliq.create_subscription('bad', stream => 'POOL', subject => 'pool.bad',
	       handler => 'needs_table(reliq.message)'::regprocedure, batch_size => 10,
	       max_deliver => 3, backoff => '{1s}');
});
$nats->publish('pool.bad', count => 20, start => 1, payload => '{"id":%d}');
ok(wait_for($node, q{SELECT state = 'failing' FROM reliq.subscription_stats WHERE subscription_name = 'bad'}),
	'the subscription whose handler fails as a whole is failing');
my $bad_worker = $node->safe_psql('postgres',
	q{SELECT worker_index FROM reliq.worker_status WHERE subscription_name = 'bad'});
for my $i (1 .. 6)
{
	$nats->publish("pool.s$i", count => 100, start => 1001, payload => '{"id":%d}');
}
for my $i (1 .. 6)
{
	ok(wait_for($node, qq{SELECT count(*) = 300 FROM got WHERE sub = 's$i'}),
		"s$i goes on beside the failing one");
}
is($node->safe_psql('postgres', q{SELECT state, dead_lettered FROM reliq.subscription_stats WHERE subscription_name = 'bad'}),
	'failing|0', 'still failing, nothing dead-lettered meanwhile');
ok($node->safe_psql('postgres', qq{SELECT count(*) >= 1 FROM reliq.worker_status
	WHERE worker_index = $bad_worker AND subscription_name <> 'bad'}),
	'it shares its worker with healthy subscriptions');
$node->safe_psql('postgres', q{CREATE TABLE later_table (id int)});
ok(wait_for($node, q{SELECT count(*) = 20 FROM later_table}, 60),
	'once fixed, the held batch and the rest are applied');
ok(wait_for($node, q{SELECT state = 'running' FROM reliq.subscription_stats WHERE subscription_name = 'bad'}),
	'and it runs again');

# A busy subscription does not starve a quiet one on the same worker:
# every lane gets a turn between two batches of another.
$node->safe_psql('postgres', q{
	SELECT reliq.create_subscription('busy', stream => 'POOL', subject => 'pool.busy',
	       handler => 'slow(reliq.message)'::regprocedure, batch_size => 100);
});
ok(wait_for($node, q{SELECT state = 'running' FROM reliq.subscription_stats WHERE subscription_name = 'busy'}),
	'busy subscription running');
my $busy_worker = $node->safe_psql('postgres',
	q{SELECT worker_index FROM reliq.worker_status WHERE subscription_name = 'busy'});
my $quiet = $node->safe_psql('postgres', qq{SELECT min(subscription_name) FROM reliq.worker_status
	WHERE worker_index = $busy_worker AND subscription_name LIKE 's_'});
$nats->publish('pool.busy', count => 10000, start => 1, payload => '{"id":%d}');
ok(wait_for($node, q{SELECT count(*) > 500 FROM got WHERE sub = 'busy'}), 'busy subscription draining');
$nats->publish("pool.$quiet", count => 20, start => 5001, payload => '{"id":%d}');
ok(wait_for($node, qq{SELECT count(*) = 20 FROM got WHERE sub = '$quiet' AND id > 5000}),
	"the quiet neighbour $quiet on the same worker is served");
my $busy_done = $node->safe_psql('postgres', q{SELECT count(*) FROM got WHERE sub = 'busy'});
cmp_ok($busy_done, '<', 10000, "... while the busy one is still draining ($busy_done of 10000 applied)");
ok(wait_idle($node, 'busy', 120), 'busy subscription drained');
is($node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT id) FROM got WHERE sub = 'busy'}),
	'10000|10000', 'busy: all applied once');

# Live resizing: more lanes, then fewer; the other lanes stay where they are.
$node->safe_psql('postgres', q{SELECT reliq.alter_subscription('s1', concurrency => 2)});
ok(wait_for($node, q{SELECT count(DISTINCT worker_index) = 2 FROM reliq.worker_status WHERE subscription_name = 's1'}),
	'concurrency 2: s1 runs on both workers');
$nats->publish('pool.s1', count => 500, start => 2001, payload => '{"id":%d}');
ok(wait_for($node, q{SELECT count(*) = 800 FROM got WHERE sub = 's1'}), 's1 applies on two lanes');
$node->safe_psql('postgres', q{SELECT reliq.alter_subscription('s1', concurrency => 1)});
ok(wait_for($node, q{SELECT count(*) = 1 FROM reliq.worker_status WHERE subscription_name = 's1'}),
	'concurrency 1 again: one lane');
$nats->publish('pool.s1', count => 100, start => 3001, payload => '{"id":%d}');
ok(wait_for($node, q{SELECT count(*) = 900 FROM got WHERE sub = 's1'}), 's1 still served');
is($node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT id) FROM got WHERE sub = 's1'}),
	'900|900', 's1: none lost or applied twice through the resizing');
is($node->safe_psql('postgres', q{
	SELECT string_agg(subscription_name || '@' || worker_index, ',' ORDER BY subscription_name)
	  FROM reliq.worker_status WHERE subscription_name IN ('s1', 's2', 's3', 's4', 's5', 's6')}),
	$lanes_before, 'no other lane moved');

# Pausing takes the lane away; resuming brings it back.
$node->safe_psql('postgres', q{SELECT reliq.alter_subscription('s2', enabled => false)});
ok(wait_for($node, q{SELECT count(*) = 0 FROM reliq.worker_status WHERE subscription_name = 's2'}),
	'paused: no lane');
$nats->publish('pool.s2', count => 50, start => 4001, payload => '{"id":%d}');
$node->safe_psql('postgres', q{SELECT reliq.alter_subscription('s2', enabled => true)});
ok(wait_for($node, q{SELECT count(*) = 50 FROM got WHERE sub = 's2' AND id BETWEEN 4001 AND 4050}), 'resumed: what came meanwhile is applied')
  or diag(explain([$node->safe_psql('postgres', q{SELECT count(*) FROM got WHERE sub = 's2'}),
		$node->safe_psql('postgres', q{SELECT state, workers, received, processed, duplicates, pending, ack_pending, last_error, lease_holder FROM reliq.subscription_stats WHERE subscription_name = 's2'}),
		$node->safe_psql('postgres', q{SELECT * FROM reliq.worker_status WHERE subscription_name = 's2'}),
		$nats->consumer_info('POOL', 'reliq_s2')]));

# A concurrency above the pool: every worker serves it, the rest is a
# shortfall that names the setting.
$node->safe_psql('postgres', q{SELECT reliq.alter_subscription('s3', concurrency => 3)});
ok(wait_for($node, q{SELECT workers = 2 AND worker_shortfall IS NOT NULL FROM reliq.subscription_stats WHERE subscription_name = 's3'}),
	'concurrency 3 on a pool of 2: two workers and a shortfall');
like($node->safe_psql('postgres', q{SELECT worker_shortfall FROM reliq.subscription_stats WHERE subscription_name = 's3'}),
	qr/2 of 3 workers running: concurrency is above reliq\.max_workers \(2\)/, 'the shortfall names reliq.max_workers');
like($node->safe_psql('postgres', q{SELECT status || ': ' || array_to_string(reasons, '; ') FROM reliq.health() WHERE subscription_name = 's3'}),
	qr/^degraded: .*short of workers: 2 of 3 workers running/, 'health() says so');
ok($node->log_contains(qr/reliq subscription "s3" wants 3 workers at once, but reliq\.max_workers is 2/),
	'and the log');

# reliq.max_subscriptions (12 here): the 13th subscription is refused.
my $count = $node->safe_psql('postgres', q{SELECT count(*) FROM reliq.subscription});
for my $i ($count + 1 .. 12)
{
	$node->safe_psql('postgres', qq{
		SELECT reliq.create_subscription('extra$i', stream => 'POOL', subject => 'pool.extra$i',
		       handler => 'got(reliq.message)'::regprocedure);
	});
}
my ($ret, $out, $err) = $node->psql('postgres', q{
	SELECT reliq.create_subscription('one_too_many', stream => 'POOL', subject => 'pool.x',
	       handler => 'got(reliq.message)'::regprocedure)});
isnt($ret, 0, 'the subscription past reliq.max_subscriptions is refused');
like($err, qr/reliq\.max_subscriptions \(12\) reached/, 'the error names the setting');
like($err, qr/HINT:  Raise reliq\.max_subscriptions/, 'the hint says what to do');
ok(wait_for($node, q{SELECT count(*) = 12 FROM reliq.subscription_stats WHERE state = 'running'}),
	'all twelve served by the two workers');

$node->stop;
done_testing();
