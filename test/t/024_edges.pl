# The extension's edges, with workers and a nats-server.
#
# DROP EXTENSION reliq while four workers apply a steady stream, three
# times: the drop succeeds at the first try, nobody reports a deadlock, no
# process crashes, the workers go away; after CREATE EXTENSION and the
# same subscriptions again (the durable consumers were kept), every
# message is applied.  Then reliq.nats_url: the forms reliq can use are
# accepted, and a malformed value in postgresql.conf is refused at reload
# while the old value stays.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'edges');
$nats->start;
$nats->stream_create('EDGE', ['edge.>']);

# A short deadlock_timeout: a deadlock would be detected (and logged) fast.
my $node = reliq_node('edges', $nats,
	conf => "deadlock_timeout = '100ms'\nlog_lock_waits = on\n");
# Each batch lasts a while (a trigger sleeps 30 ms per INSERT): while the
# drop waits for one, the other workers start theirs -- the interleaving
# that deadlocked.
$node->safe_psql('postgres', q{
	CREATE SCHEMA app;
	CREATE TABLE app.a (id int);
	CREATE TABLE app.b (id int);
	CREATE FUNCTION app.slow() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM pg_sleep(0.03);
		RETURN NULL;
	END $$;
	CREATE TRIGGER slow AFTER INSERT ON app.a FOR EACH STATEMENT EXECUTE FUNCTION app.slow();
	CREATE TRIGGER slow AFTER INSERT ON app.b FOR EACH STATEMENT EXECUTE FUNCTION app.slow();
});
my $subscribe = q{
	SET client_min_messages = warning;
	SELECT reliq.create_subscription(s, stream => 'EDGE', subject => 'edge.' || s,
	       target => ('app.' || s)::regclass, batch_size => 20, concurrency => 2,
	       ack_wait => '5s')
	  FROM unnest(ARRAY['a', 'b']) s;
};
$node->safe_psql('postgres', $subscribe);

my $total = 9000;
my @publishers = map {
	$nats->publish_bg("edge.$_", count => $total, start => 1,
		payload => '{"id":%d}', msg_id => "$_-%d", rate => 1500)
} qw(a b);

my $workers = q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'reliq worker'};
for my $round (1 .. 3)
{
	my $target = $round * 1200;
	ok(wait_for($node, "SELECT (SELECT count(*) FROM app.a) >= $target
	                       AND (SELECT count(*) FROM app.b) >= $target
	                       AND ($workers) = 4"),
		"round $round: four workers busy");
	my $t = time;
	my ($ret, $out, $err) = $node->psql('postgres', 'DROP EXTENSION reliq');
	note(sprintf('round %d: DROP EXTENSION took %.2f s', $round, time - $t));
	is($ret, 0, "round $round: DROP EXTENSION succeeds at the first try");
	unlike($err, qr/deadlock/, "round $round: no deadlock");
	$t = time;
	ok(wait_for($node, "SELECT ($workers) = 0"), "round $round: the workers are gone");
	note(sprintf('round %d: workers gone %.2f s after the drop', $round, time - $t));
	$node->safe_psql('postgres', 'CREATE EXTENSION reliq');
	$node->safe_psql('postgres', $subscribe);
}

is($nats->wait_publish($_), $total, 'publisher done') for @publishers;
ok(wait_idle($node, $_), "subscription $_ drained") for qw(a b);
for my $s (qw(a b))
{
	my ($distinct, $rows) = split /\|/, $node->safe_psql('postgres',
		"SELECT count(DISTINCT id), count(*) FROM app.$s");
	is($distinct, $total, "subscription $s: every message applied, none lost");
	# The ledger goes with the extension: what a worker committed and had
	# not acknowledged when the drop stopped it comes again afterwards.
	note("subscription $s: applied again after a drop: " . ($rows - $distinct));
}

my $log = slurp_file($node->logfile);
unlike($log, qr/deadlock detected|detected deadlock/, 'no deadlock in the server log');
unlike($log, qr/terminated by signal|was terminated|PANIC|TRAP:|all server processes terminated/,
	'no process crashed');
my @stopped = $log =~ /DROP EXTENSION reliq: stopped (\d+) reliq workers/g;
note(join(", ", @stopped) . " reliq workers stopped by the three drops");

# reliq.nats_url: what the NATS C client can use is accepted.
for my $url ('nats://127.0.0.1:4222', 'tls://nats.example.com:4443',
	'127.0.0.1:4222', 'localhost', 'nats://[::1]:4222/',
	'nats://reliq:p@ss:word@host-1.internal:4222',
	'nats://token@nats_1:4222',
	'nats://a:4222,nats://b:4222, nats://c:4222')
{
	my ($ret, $out, $err) = $node->psql('postgres',
		"ALTER SYSTEM SET reliq.nats_url = '$url'");
	is($ret, 0, "accepted: $url") or diag($err);
}
$node->safe_psql('postgres', 'ALTER SYSTEM RESET reliq.nats_url');

# A malformed value in postgresql.conf: the reload keeps the one in use,
# and says why in the log.
my $before = $node->safe_psql('postgres', 'SHOW reliq.nats_url');
my $offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "reliq.nats_url = 'htp:/bogus url'\n");
$node->reload;
ok( $node->wait_for_log(qr/invalid NATS server URL "htp:\/bogus" in reliq.nats_url/, $offset),
	'the reload logs the malformed URL');
is($node->safe_psql('postgres', 'SHOW reliq.nats_url'), $before,
	'the URL in use is kept');

$node->stop;
$nats->stop;
done_testing();
