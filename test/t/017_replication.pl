# Exactly once through a failover to a streaming standby.  A reliq primary
# with a hot standby (pg_basebackup, streaming) consumes a stream; messages
# are published at a steady rate; the primary dies mid-stream and the
# standby is promoted.  The promoted standby must end with every message
# applied once: those the dead primary acked but never shipped to the
# standby (asynchronous replication) are delivered again, because the new
# primary takes the lease and re-creates the consumer after the floor its
# own tables prove applied.
#
#   a. asynchronous; the walreceiver stopped (SIGSTOP) for 2 s while
#      messages flow, so the standby lags; then the primary dies as a
#      machine would (every process SIGKILLed at once)
#   b. asynchronous; the postmaster alone is SIGKILLed: every reliq
#      process must exit by itself; the rest is killed, then the promotion
#   c. synchronous replication; the primary dies as a machine would
#
# Before each promotion the standby must show the subscription as
# 'standby' and health() 'ok' with a reason starting 'standby', and run
# no reliq process.  Times (kill to first commit on the new primary, exit
# of reliq processes after the postmaster's death) are printed, not
# asserted.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);
use ReliqTest::Nats;
use ReliqTest::Node;
use ReliqTest::Replication;

my $N    = 4000;    # messages per scenario
my $RATE = 500;     # per second: the kill falls about 2 s in, 6 s remain

my $nats = ReliqTest::Nats->new(name => 'replication');
$nats->start;

sub count_rows
{
	my ($node) = @_;
	my ($ret, $out) = $node->psql('postgres', 'SELECT count(*) FROM applied');
	return $ret == 0 ? $out : undef;
}

sub scenario
{
	my (%s) = @_;
	my $tag    = $s{tag};
	my $stream = 'REP' . uc $tag;
	my $sub    = "rep_$tag";
	my $what   = "($tag) $s{title}";
	$nats->stream_create($stream, ["rep$tag.>"]);

	my $primary = reliq_primary("primary_$tag", $nats);
	my $standby = reliq_standby($primary, "standby_$tag", synchronous => $s{synchronous});

	# Made on the primary after the standby exists: it reaches the
	# standby through replication.
	$primary->safe_psql('postgres', qq{
		-- no unique constraint: a message applied twice shows up as two rows
		CREATE TABLE applied (id int, seq bigint, at timestamptz DEFAULT clock_timestamp());
		CREATE FUNCTION apply(m reliq.message) RETURNS void LANGUAGE sql AS \$\$
			INSERT INTO applied (id, seq) VALUES ((reliq.message_json(m)->>'id')::int, m.stream_seq)
		\$\$;
		SELECT reliq.create_subscription('$sub', stream => '$stream', subject => 'rep$tag.>',
		       handler => 'apply(reliq.message)'::regprocedure, batch_size => 50,
		       concurrency => 2, ack_wait => '5s');
	});
	$primary->wait_for_catchup($standby);

	ok(wait_for($standby, "SELECT state = 'standby' FROM reliq.subscription_stats WHERE subscription_name = '$sub'", 30),
		"$what: the hot standby shows the subscription as 'standby'");
	ok(wait_for($standby, "SELECT status = 'ok' AND reasons[1] LIKE 'standby%' FROM reliq.health() WHERE subscription_name = '$sub'", 30),
		"$what: health() on the standby: ok, standby");
	diag("$what: standby health(): "
		  . $standby->safe_psql('postgres', "SELECT status || ' ' || array_to_string(reasons, '; ') FROM reliq.health() WHERE subscription_name = '$sub'"));
	is($standby->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'reliq %'}),
		'0', "$what: no reliq process on the hot standby");

	my $publisher = $nats->publish_bg("rep$tag.m", count => $N, start => 1,
		payload => '{"id":%d}', msg_id => "rep$tag-%d", rate => $RATE, retry_for => 120);
	ok(wait_for($primary, 'SELECT count(*) >= 800 FROM applied', 60), "$what: the primary consumes");

	my ($t_kill, $before_kill);
	if ($s{kill} eq 'machine')
	{
		my $wr;
		if ($s{stop_walreceiver})
		{
			# The standby falls behind while the primary applies and acks.
			$wr = walreceiver_stop($standby);
			sleep $s{stop_walreceiver};
		}
		$before_kill = count_rows($primary);
		$t_kill = kill_machine($primary);
		walreceiver_cont($wr) if $wr;
	}
	else
	{
		my @reliq = reliq_pids($primary);
		ok(scalar(@reliq) >= 3, "$what: reliq processes found on the primary (@reliq)");
		$before_kill = count_rows($primary);
		$t_kill = time;
		my @left = kill_postmaster($primary);
		my ($gone, $secs, $alive) = wait_pids_gone(\@reliq, 60);
		ok($gone, "$what: every reliq process exits after the postmaster's death")
		  or diag("still alive 60 s after the postmaster's death: @$alive");
		diag(sprintf('%s: reliq processes (%d) gone %.2f s after the postmaster was killed',
				$what, scalar @reliq, $secs)) if $gone;
		my @others = kill_pids(@left);
		note("killed the remaining processes of the old primary: @others");
		my ($others_gone) = wait_pids_gone(\@left, 30);
		ok($others_gone, "$what: the old primary's remaining processes are gone");
	}
	my $ci = $nats->consumer_info($stream, "reliq_$sub");
	my $acked = $ci ? $ci->{ack_floor}{stream_seq} : 0;

	my $t_promote = promote_standby($standby);
	my $on_standby = count_rows($standby);
	diag(sprintf('%s: the primary had applied >= %d rows before the kill, JetStream ack floor %d, the standby had %d at promotion',
			$what, $before_kill, $acked, $on_standby));

	is($nats->wait_publish($publisher), $N, "$what: every message published");
	ok(wait_for($standby, "SELECT count(DISTINCT id) >= $N FROM applied", 180),
		"$what: the promoted standby consumed everything");
	ok(wait_idle($standby, $sub, 60), "$what: idle on the new primary");
	is($standby->safe_psql('postgres',
			'SELECT count(*), count(DISTINCT id), min(id), max(id) FROM applied'),
		"$N|$N|1|$N", "$what: every message applied exactly once on the new primary (0 lost, 0 twice)");

	my $first = $standby->safe_psql('postgres',
		sprintf('SELECT extract(epoch FROM min(at)) FROM applied WHERE at >= to_timestamp(%.6f)', $t_promote));
	if ($first ne '')
	{
		diag(sprintf('%s: kill to first commit on the new primary %.2f s (promotion asked %.2f s after the kill, took %.2f s to the first commit)',
				$what, $first - $t_kill, $t_promote - $t_kill, $first - $t_promote));
	}
	my $stats = reliq_stats($standby, $sub);
	diag(sprintf('%s: new primary: state %s, processed %s, duplicates absorbed %s',
			$what, $stats->{state} // '?', $stats->{processed} // '?', $stats->{duplicates} // '?'));

	$standby->stop;
	return;
}

scenario(tag => 'a', title => 'asynchronous, walreceiver stopped 2 s, machine death',
	kill => 'machine', stop_walreceiver => 2);
scenario(tag => 'b', title => 'asynchronous, postmaster alone killed', kill => 'postmaster');
scenario(tag => 'c', title => 'synchronous, machine death', kill => 'machine', synchronous => 1);

$nats->stop;
done_testing();
