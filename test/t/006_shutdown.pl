# pg_ctl stop -m fast returns promptly while every worker is inside a
# handler that would run for an hour; the messages the workers held are
# given back at once (NAK), not after ack_wait; and they are applied after
# the restart, once.
#
# Not a speed test: the assertion is only that shutdown does not wait for
# the handlers (an hour); the measured time is printed.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'shutdown');
$nats->start;
$nats->stream_create('LONG', ['long.>']);

my $node = reliq_node('shutdown', $nats);
$node->safe_psql('postgres', q{
	CREATE TABLE finished (id int);
	-- the handlers take an hour, but only before the restart
	CREATE TABLE first_life (started timestamptz);
	INSERT INTO first_life SELECT pg_postmaster_start_time();
	CREATE FUNCTION long_job(m reliq.message) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		IF (SELECT started = pg_postmaster_start_time() FROM first_life) THEN
			PERFORM pg_sleep(3600);
		END IF;
		INSERT INTO finished VALUES ((reliq.message_json(m)->>'id')::int);
	END $$;
	SELECT reliq.create_subscription('long', stream => 'LONG', subject => 'long.>',
	       handler => 'long_job(reliq.message)'::regprocedure,
	       batch_size => 1, concurrency => 2, ack_wait => '120s');
});
# a worker holds one message and prefetches one: 4 keep both busy, and
# none is left on the server undelivered
$nats->publish('long.job', count => 4, start => 1, payload => '{"id":%d}');
ok(wait_for($node, q{SELECT count(*) = 2 FROM pg_stat_activity
                      WHERE backend_type = 'reliq worker' AND wait_event = 'PgSleep'}),
	'both workers busy in their handlers');

my $t0 = time;
$node->stop('fast');
my $elapsed = time - $t0;
diag(sprintf('pg_ctl stop -m fast with busy workers took %.2f s', $elapsed));
cmp_ok($elapsed, '<', 60, 'fast shutdown did not wait for the hour-long handlers');

# With ack_wait at 120 s, a message the workers held comes back this soon
# only if they gave it back (NAK) as they exited.  Look with a no_wait pull
# of our own: it gets a message, or a 404 status.  (The pull
# takes what it gets; after the restart the consumer starts again at the
# database's position anyway.)
my $got = '';
my $deadline = time + 30;
while (time < $deadline && $got !~ /"id"/)
{
	# a 404 "No Messages" status makes natstool fail: nothing to take yet
	$got = eval {
		$nats->request('$JS.API.CONSUMER.MSG.NEXT.LONG.reliq_long',
			'{"batch":1,"no_wait":true}');
	} // '';
	select(undef, undef, undef, 0.2) unless $got =~ /"id"/;
}
like($got, qr/"id"/,
	'the held messages were given back at shutdown (NAK), not left for ack_wait');

$node->start;
ok(wait_idle($node, 'long'), 'interrupted messages redelivered and applied');
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id) FROM finished'),
	'4|4', 'each applied once');

$node->stop;
$nats->stop;
done_testing();
