# reliq in a real Patroni high-availability cluster (issue 9): etcd and two
# Patroni nodes on loopback, asynchronous streaming replication (Patroni's
# default).  A stream of N messages with unique ids is published at a
# steady rate; mid-stream
#  (a) the leader's postmaster is killed with SIGKILL and Patroni fails
#      over (primary_start_timeout 0: see ReliqTest::Patroni), after ~2 s
#      during which the leader's walsender was stopped (SIGSTOP), so the
#      new leader lacks the last commits of the old one, which had already
#      acked those messages; the old leader rejoins as a replica (pg_rewind);
#  (b) later a `patronictl switchover` moves the leader back;
#  (c) then the leader's Patroni alone is killed: the replica is promoted
#      while the old primary runs on (split brain); reliq's lease keeps
#      the new leader fenced until the old node's Patroni, restarted,
#      demotes it.
# At the end, on the final leader, every id is applied exactly once; the
# replica runs no reliq process and reports its subscription as standby.
# Times from each fault to the first commit on the new leader are printed.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);
use ReliqTest::Nats;
use ReliqTest::Patroni;

my $total = 15_000;
my $rate  = 150;    # messages per second: the stream lasts ~100 s

my $nats = ReliqTest::Nats->new(name => 'patroni');
$nats->start;

my $ha = ReliqTest::Patroni->new(name => 'pat', nats => $nats);
my $t0 = time;
$ha->start;
my $first   = $ha->leader;
my $second  = $ha->replica;
note(sprintf('Patroni cluster up in %.1f s: leader %s, replica %s',
	time - $t0, $first, $second));
is($first, 'pat1', 'the first node bootstrapped and leads');

$ha->safe_psql($first, q{
	CREATE EXTENSION reliq;
	SELECT reliq.create_stream('PAY', ARRAY['pay.>']);
	-- no unique constraint: a message applied twice shows up as two rows
	CREATE TABLE applied (id int, seq bigint,
		node text DEFAULT current_setting('reliq_test.node'),
		at timestamptz DEFAULT clock_timestamp());
	CREATE FUNCTION pay(m reliq.message) RETURNS void LANGUAGE sql AS $$
		INSERT INTO applied (id, seq) VALUES ((reliq.message_json(m)->>'id')::int, m.stream_seq)
	$$;
	SELECT reliq.create_subscription('pay', stream => 'PAY', subject => 'pay.>',
	       handler => 'pay(reliq.message)'::regprocedure, batch_size => 50, concurrency => 2,
	       ack_wait => '5s');
});

my $publisher = $nats->publish_bg('pay.in', count => $total, start => 1,
	payload => '{"id":%d}', msg_id => 'pay-%d', rate => $rate, retry_for => 60);

# ------------------------------------------------------------------ (a)
ok($ha->wait_for($first, 'SELECT count(*) >= 1500 FROM applied', 120),
	"(a) $first is consuming");
ok($ha->wait_for($second, 'SELECT count(*) >= 1000 FROM applied', 60),
	"(a) $second replays it");

# reliq processes of the doomed leader, to check they die with it
my @reliq_pids = split /\n/, $ha->safe_psql($first,
	"SELECT pid FROM pg_stat_activity WHERE backend_type LIKE 'reliq%'");
note("reliq processes on $first: @reliq_pids");

# Widen the asynchronous-replication window: stop the walsender that feeds
# the replica (stopping the replica's walreceiver would not do: what the
# walsender wrote meanwhile would wait in the socket buffers and arrive
# when it resumed), let the leader commit (and ack) for ~2 s, then kill the
# postmaster, and the stopped walsender with it (stopped, it would never
# notice the postmaster's death and would keep the old shared memory).
my $walsender = $ha->walsender_pid($first, $second);
ok(defined $walsender, "(a) walsender for $second found");
kill 'STOP', $walsender if $walsender;
sleep 2;
my $applied_on_old = $ha->safe_psql($first, 'SELECT count(*) FROM applied');
my $kill = $ha->kill9_postmaster($first, also => [ grep { defined } $walsender ]);
note(sprintf('(a) postmaster of %s killed at %.3f (%d rows there)',
	$first, $kill->{time}, $applied_on_old));

my @left = $ha->wait_postgres_gone(\@reliq_pids, 60);
is("@left", '', '(a) every reliq process of the killed postmaster exited');
# Whatever is left of the killed postmaster keeps its shared memory and
# stops the node from starting again: kill it so the rest can be tested.
my @orphans = $ha->wait_postgres_gone($kill->{children}, @left ? 1 : 30);
if (@orphans)
{
	diag("children of the killed postmaster still alive, SIGKILL: @orphans");
	kill 'KILL', @orphans;
}

my $new = $ha->wait_leader(not => $first, timeout => 120);
my $t_promoted = time;
is($new, $second, "(a) Patroni failed over to $second");

my $survived = $ha->safe_psql($new,
	"SELECT count(*) FROM applied WHERE node = '$first'");
my $lost = $applied_on_old - $survived;
note("(a) $first had committed $applied_on_old rows; $survived reached $new");
cmp_ok($lost, '>', 0,
	'(a) the failover lost commits of the old leader (the asynchronous window under test)');

$ha->wait_streaming($first, timeout => 180);
my $t_rejoined = time;

ok($ha->wait_for($new,
		"SELECT count(*) >= 300 FROM applied WHERE node = '$new'", 150),
	"(a) $new consumes after the failover");
my $first_commit_a = $ha->safe_psql($new,
	"SELECT extract(epoch FROM min(at)) FROM applied WHERE node = '$new'");

# ------------------------------------------------------------------ (b)
my $sw = $ha->switchover(leader => $new, candidate => $first);
is($ha->wait_leader(name => $first, timeout => 120), $first,
	"(b) switched over to $first");
my $t_switched = time;
$ha->wait_streaming($new, timeout => 120);
ok($ha->wait_for($first, sprintf(
			"SELECT count(*) > 0 FROM applied WHERE node = '%s' AND at > to_timestamp(%.3f)",
			$first, $sw->{time}), 150),
	"(b) $first consumes again after the switchover");
my $first_commit_b = $ha->safe_psql($first, sprintf(
		"SELECT extract(epoch FROM min(at)) FROM applied WHERE node = '%s' AND at > to_timestamp(%.3f)",
		$first, $sw->{time}));

# ------------------------------------------------------------------ (c)
# Patroni of the leader dies alone (as a frozen or partitioned Patroni
# would): its PostgreSQL goes on as a primary, and once the leader key
# expires (ttl) Patroni promotes the replica: two primaries.  The lease
# keeps the new one fenced while the old one, still connected to NATS,
# renews it.  When the old node's Patroni comes back it demotes its
# PostgreSQL (what it committed meanwhile is discarded by pg_rewind) and
# the new leader takes the lease over.
my $t_c = $ha->kill9_patroni($first);
is($ha->wait_leader(not => $first, timeout => 120), $new,
	"(c) with the Patroni of $first dead, $new is promoted");
my $t_promoted_c = time;
is($ha->safe_psql($first, 'SELECT pg_is_in_recovery()'), 'f',
	"(c) $first is still a primary (split brain)");
ok($ha->wait_for($new,
		"SELECT state = 'fenced' FROM reliq.subscription_stats WHERE subscription_name = 'pay'", 60),
	"(c) $new is fenced");
my $fenced_health = $ha->safe_psql($new,
	"SELECT status || ' ' || array_to_string(reasons, ' | ') FROM reliq.health() WHERE subscription_name = 'pay'");
note("(c) health() on $new: $fenced_health");
like($fenced_health, qr/^down .*fenced.*reliq\.take_over\('pay'\)/,
	"(c) health() on $new: down, fenced, take_over");
unlike($fenced_health, qr/disconnected/,
	"(c) health() on $new does not call the fenced subscription disconnected");
ok($ha->wait_for($first,
		"SELECT state = 'running' FROM reliq.subscription_stats WHERE subscription_name = 'pay'", 30),
	"(c) $first, holding the lease, goes on consuming");
is($ha->safe_psql($new, sprintf(
			"SELECT count(*) FROM applied WHERE node = '%s' AND at > to_timestamp(%.3f)", $new, $t_c)),
	0, "(c) $new, fenced, has applied nothing");
my $split_rows = $ha->safe_psql($first, sprintf(
		"SELECT count(*) FROM applied WHERE at > to_timestamp(%.3f)", $t_promoted_c));
my $t_restart = time;
$ha->start_node($first);
$ha->wait_streaming($first, timeout => 180);
my $t_rejoined_c = time;
ok($ha->wait_for($new, sprintf(
			"SELECT count(*) > 0 FROM applied WHERE node = '%s' AND at > to_timestamp(%.3f)",
			$new, $t_c), 150),
	"(c) $new consumes once $first is demoted");
my $first_commit_c = $ha->safe_psql($new, sprintf(
		"SELECT extract(epoch FROM min(at)) FROM applied WHERE node = '%s' AND at > to_timestamp(%.3f)",
		$new, $t_c));
my $publishing = $publisher->pumpable ? 'still publishing' : 'publisher had finished';
note("(c) after the split brain: $publishing");
my $final   = $new;
my $replica = $first;

# ------------------------------------------------------------------ end
is($nats->wait_publish($publisher), $total, 'publisher done');
ok($ha->wait_for($final, "SELECT count(DISTINCT id) >= $total FROM applied", 180),
	'every id arrived on the final leader');
ok($ha->wait_for($final, "SELECT reliq.wait_idle('pay', '5s')", 120), 'drained');
is($ha->safe_psql($final,
		'SELECT count(*), count(DISTINCT id), min(id), max(id) FROM applied'),
	"$total|$total|1|$total", 'every id applied exactly once on the final leader');

# no reliq process on the replica: neither in pg_stat_activity nor among
# the postmaster's children
is($ha->safe_psql($replica,
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'reliq%'"),
	0, "no reliq backend on the replica $replica");
my ($rpm, @rkids) = $ha->postgres_pids($replica);
my @reliq_procs = grep {
	ReliqTest::Patroni::_cmdline($_) =~ /: reliq (?:launcher|monitor|worker|metrics)/
} @rkids;
is("@reliq_procs", '', "no reliq process among the replica's postgres processes");

ok($ha->wait_for($final,
		"SELECT bool_and(status = 'ok') FROM reliq.health()", 60),
	'health() ok for every subscription on the leader')
  or diag($ha->psql($final, 'SELECT * FROM reliq.health()'));
is($ha->safe_psql($replica,
		"SELECT state FROM reliq.subscription_stats WHERE subscription_name = 'pay'"),
	'standby', "the replica's subscription is standby");
is($ha->safe_psql($replica,
		"SELECT status || ' ' || (reasons[1] LIKE 'standby%') FROM reliq.health() WHERE subscription_name = 'pay'"),
	'ok true', "health() on the replica: ok, standby");

diag(sprintf('(a) kill -9 of the postmaster of %s: new leader %s after %.1f s, '
		. 'first commit on it %.1f s after the kill, %s streaming again after %.1f s; '
		. '%d commits lost to asynchronous replication',
	$first, $new, $t_promoted - $kill->{time},
	$first_commit_a - $kill->{time}, $first, $t_rejoined - $kill->{time}, $lost));
diag(sprintf('(b) switchover %s -> %s: leader after %.1f s, first commit on it %.1f s after patronictl started',
	$new, $first, $t_switched - $sw->{time}, $first_commit_b - $sw->{time}));
diag(sprintf('(c) Patroni of %s killed: %s promoted after %.1f s; %s (split brain) committed %d rows '
		. 'after that; its Patroni restarted %.1f s after the kill, %s streaming again %.1f s later, '
		. 'first commit on %s %.1f s after the restart',
	$first, $new, $t_promoted_c - $t_c, $first, $split_rows, $t_restart - $t_c,
	$first, $t_rejoined_c - $t_restart, $new, $first_commit_c - $t_restart));
my $stats = $ha->safe_psql($final,
	"SELECT processed || ' processed, ' || duplicates || ' duplicates absorbed' FROM reliq.subscription_stats WHERE subscription_name = 'pay'");
note("final leader $final since its promotion: $stats");

$ha->stop;
$nats->stop;
done_testing();
