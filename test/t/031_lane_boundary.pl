# A lane's failure stays in its lane.  One worker (reliq.max_workers = 1)
# serves three subscriptions; one of them fails outside batch.c, while
# attaching: a trigger on reliq._stream_identity refuses the update its
# worker makes when it claims the stream (catalog.c, called from the
# lane's turn; create_subscription's own insert goes through).  The error ends that lane's turn only: its neighbours go on
# committing, the worker keeps its pid, the failing subscription shows the
# problem in last_error and backs off, and once the trigger is gone it
# attaches and applies everything.  (Before the boundary, the error became
# FATAL and restarted the worker with all its lanes.)  Then the worker's
# own refresh fails (the outbox's table renamed away): the worker and its
# lanes go on.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'boundary');
$nats->start;
$nats->stream_create('LB', ['lb.>']);

my $node = reliq_node('boundary', $nats,
	conf => "reliq.max_workers = 1\nreliq.max_retry_interval = 1000\nreliq.refresh_interval = 500");
$node->safe_psql('postgres', q{
	CREATE TABLE got (sub text, id int);
	CREATE FUNCTION got(m reliq.message) RETURNS void LANGUAGE sql AS $$
		INSERT INTO got (sub, id) VALUES (m.subscription, (reliq.message_json(m)->>'id')::int)
	$$;
	-- refuses the stream identity of the subscription named 'bad'
	CREATE FUNCTION refuse_identity() RETURNS trigger LANGUAGE plpgsql
	SET search_path = pg_catalog AS $$
	BEGIN
		IF EXISTS (SELECT FROM reliq.subscription
		            WHERE id = NEW.subscription_id AND subscription_name = 'bad') THEN
			RAISE EXCEPTION 'stream identity refused by the test';
		END IF;
		RETURN NEW;
	END $$;
});

for my $s ('n1', 'n2')
{
	$node->safe_psql('postgres', qq{
		SELECT reliq.create_subscription('$s', stream => 'LB', subject => 'lb.$s',
		       handler => 'got(reliq.message)'::regprocedure, batch_size => 20);
	});
	$nats->publish("lb.$s", count => 50, start => 1, payload => '{"id":%d}');
}
ok(wait_idle($node, 'n1') && wait_idle($node, 'n2'), 'the neighbours are served');
my $pid = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'reliq worker'});
like($pid, qr/^\d+$/, 'one worker process');

# The failing lane: its claim of the stream raises an ERROR.
$node->safe_psql('postgres', q{
	CREATE TRIGGER refuse BEFORE UPDATE ON reliq._stream_identity
	   FOR EACH ROW EXECUTE FUNCTION refuse_identity();
	SELECT reliq.create_subscription('bad', stream => 'LB', subject => 'lb.bad',
	       handler => 'got(reliq.message)'::regprocedure, batch_size => 20);
});
$nats->publish('lb.bad', count => 30, start => 1, payload => '{"id":%d}');
ok(wait_for($node, q{SELECT last_error LIKE '%stream identity refused by the test%'
	FROM reliq.subscription_stats WHERE subscription_name = 'bad'}, 30),
	'the failing subscription shows its problem in last_error');

# Its neighbours keep committing meanwhile, on the same worker.
for my $round (1 .. 3)
{
	for my $s ('n1', 'n2')
	{
		$nats->publish("lb.$s", count => 20, start => 1000 * $round + 1, payload => '{"id":%d}');
	}
	my $want = 50 + 20 * $round;
	ok(wait_for($node, qq{SELECT count(*) FILTER (WHERE sub = 'n1') = $want
		AND count(*) FILTER (WHERE sub = 'n2') = $want FROM got}, 30),
		"round $round: both neighbours commit beside the failing lane");
	sleep 1;
}
is($node->safe_psql('postgres',
	q{SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE backend_type = 'reliq worker'}),
	$pid, 'the same worker process throughout');
is($node->safe_psql('postgres', q{SELECT count(*) FROM got WHERE sub = 'bad'}),
	'0', 'nothing of the failing subscription applied');
ok($node->safe_psql('postgres', q{SELECT state IN ('backing_off', 'connecting')
	FROM reliq.worker_status WHERE subscription_name = 'bad'}) eq 't',
	'its lane backs off');
my $log = slurp_file($node->logfile);
my $reports = () = $log =~ /ERROR:  stream identity refused by the test/g;
cmp_ok($reports, '>=', 1, 'the error is logged');
cmp_ok($reports, '<=', 2, "... once, not at every retry ($reports)");

# The cause removed: the lane attaches and applies what waited.
$node->safe_psql('postgres', q{DROP TRIGGER refuse ON reliq._stream_identity});
ok(wait_for($node, q{SELECT count(*) = 30 FROM got WHERE sub = 'bad'}, 30),
	'once the cause is gone, the lane recovers and applies');
ok(wait_idle($node, 'bad'), 'and drains');

# A failure of the worker's own refresh (the outbox's table gone for a
# while; pool.c): the worker and its lanes go on, the problem shows in
# last_error, and the refresh works again once the table is back.
# (Before the boundary, the error ended the worker with all its lanes.)
$node->safe_psql('postgres', 'ALTER TABLE reliq._outbox RENAME TO _outbox_away');
ok(wait_for($node, q{SELECT last_error LIKE '%the worker''s refresh failed%'
	FROM reliq.subscription_stats WHERE subscription_name = 'n1'}, 30),
	"the refresh's failure shows in last_error");
for my $s ('n1', 'n2')
{
	$nats->publish("lb.$s", count => 20, start => 9001, payload => '{"id":%d}');
}
ok(wait_for($node, q{SELECT count(*) = 40 FROM got WHERE id > 9000}, 30),
	'the lanes commit while the refresh fails');
is($node->safe_psql('postgres',
	q{SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE backend_type = 'reliq worker'}),
	$pid, 'the same worker process');
$node->safe_psql('postgres', 'ALTER TABLE reliq._outbox_away RENAME TO _outbox');
my $again = 0;
for (1 .. 150)
{
	last if ($again = $node->log_contains('its refresh \(the outbox, the streams\) works again'));
	sleep 0.2;
}
ok($again, 'the refresh works again once the table is back');

is($node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT (sub, id)) FROM got}),
	'290|290', 'everything applied once');
is($node->safe_psql('postgres',
	q{SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE backend_type = 'reliq worker'}),
	$pid, 'still the same worker process');

$node->stop;
$nats->stop;
done_testing();
