# Live tuning while a stream flows: more workers, bigger and smaller
# batches, pause, resume, fewer workers -- no restart, no reload, and in
# the end every message applied exactly once.  How long each change took
# to show is printed, not asserted (speed figures belong in the benchmark).
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'tuning');
$nats->start;
$nats->stream_create('TUNE', ['tune.>']);

my $node = reliq_node('tuning', $nats, conf => 'reliq.max_workers = 4');
$node->safe_psql('postgres', q{
	CREATE TABLE tuned (id int, pid int);
	CREATE FUNCTION tune(m reliq.message) RETURNS void LANGUAGE sql AS $$
		INSERT INTO tuned VALUES ((reliq.message_json(m)->>'id')::int, pg_backend_pid())
	$$;
	SELECT reliq.create_subscription('tune', stream => 'TUNE', subject => 'tune.>',
	       handler => 'tune(reliq.message)'::regprocedure, batch_size => 50);
});

my $total = 12000;
my $publisher = $nats->publish_bg('tune.x', count => $total, start => 1,
	payload => '{"id":%d}', msg_id => 'tune-%d', rate => 1500);

# Time until a condition holds; undef if it never does (bounded wait).
sub time_until
{
	my ($query) = @_;
	my $t0 = time;
	return wait_for($node, $query) ? time - $t0 : undef;
}

ok(wait_for($node, 'SELECT count(*) > 500 FROM tuned'), 'consuming');

$node->safe_psql('postgres', q{SELECT reliq.set_concurrency('tune', 3)});
my $t = time_until(q{SELECT count(DISTINCT pid) = 3 FROM reliq.worker_status
                      WHERE subscription_name = 'tune'});
ok(defined $t, 'three workers after set_concurrency');
diag(sprintf('set_concurrency 1 -> 3 visible in pg_stat_activity after %.2f s', $t // -1));
ok(wait_for($node, q{SELECT count(DISTINCT pid) = 3 FROM tuned WHERE id > (SELECT max(id) - 300 FROM tuned)}),
	'all three apply messages');

$node->safe_psql('postgres', q{SELECT reliq.alter_subscription('tune', batch_size => 500)});
$t = time_until(q{SELECT bool_and(batch_size = 500) AND count(*) = 3 FROM reliq.worker_status WHERE subscription_name = 'tune'});
ok(defined $t, 'batch size changed live');
diag(sprintf('batch_size 50 -> 500 picked up by the workers after %.2f s', $t // -1));

# Pause: the workers stop; nothing is applied while paused.
$node->safe_psql('postgres', q{SELECT reliq.alter_subscription('tune', enabled => false)});
$t = time_until(q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'reliq worker'});
ok(defined $t, 'paused: no worker');
diag(sprintf('pause took effect after %.2f s', $t // -1));
my $at_pause = $node->safe_psql('postgres', 'SELECT count(*) FROM tuned');
sleep 1;
is($node->safe_psql('postgres', 'SELECT count(*) FROM tuned'), $at_pause, 'nothing applied while paused');
is($node->safe_psql('postgres', q{SELECT state FROM reliq.subscription_stats WHERE subscription_name = 'tune'}),
	'paused', 'state shows paused');

# Ask for more workers than reliq.max_workers allows (no warning while
# paused: a paused subscription wants none), then resume with smaller
# batches: a warning, and the stats show the shortfall.
my ($ret, $out, $err) = $node->psql('postgres', q{SELECT reliq.set_concurrency('tune', 6)});
unlike($err, qr/WARNING/, 'no warning while paused');
($ret, $out, $err) = $node->psql('postgres',
	q{SELECT reliq.alter_subscription('tune', enabled => true, batch_size => 20)});
like($err, qr/WARNING:  subscription "tune" wants 6 workers at once, but reliq.max_workers is 4/,
	'resuming with more workers than reliq.max_workers allows warns');
ok(wait_for($node, q{SELECT workers = 4 AND concurrency = 6 FROM reliq.subscription_stats WHERE subscription_name = 'tune'}),
	'resumed, running 4 of the 6 workers asked for');
ok(wait_for($node, "SELECT count(*) > $at_pause FROM tuned"), 'consuming again');

$node->safe_psql('postgres', q{SELECT reliq.set_concurrency('tune', 1)});
ok(wait_for($node, q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'reliq worker'}),
	'back to one worker');

is($nats->wait_publish($publisher), $total, 'publisher done');
ok(wait_idle($node, 'tune', 180), 'drained');
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id), min(id), max(id) FROM tuned'),
	"$total|$total|1|$total", 'every message applied exactly once through all the changes');

$node->stop;
$nats->stop;
done_testing();
