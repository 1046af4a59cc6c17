# Statistics entries under their locks (shmem.c): resets while two workers
# add to the counters (writes, not initialisation: nothing is lost or
# corrupted, and counting goes on), the histograms and the recent samples
# in step after a reset, and the entry of a dropped subscription given to
# a new one with nothing of the old left in it.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'stats');
$nats->start;
$nats->stream_create('ST', ['st.>']);

# Room for two subscriptions' statistics only: the third needs a freed one.
my $node = reliq_node('stats', $nats, conf => "reliq.max_subscriptions = 2\n");
$node->safe_psql('postgres', q{
	CREATE TABLE seen (sub text, id int);
	-- a millisecond a message, so that the resets below meet the batches
	CREATE FUNCTION note(m reliq.message) RETURNS void LANGUAGE sql AS
	  $$ INSERT INTO seen VALUES (m.subscription, (reliq.message_json(m)->>'id')::int);
	     SELECT pg_sleep(0.001) $$;
	SELECT reliq.create_subscription('busy', stream => 'ST', subject => 'st.busy',
	       handler => 'note(reliq.message)'::regprocedure, batch_size => 10, concurrency => 2);
});
ok(wait_for($node, q{SELECT count(*) = 2 FROM reliq.worker_status WHERE subscription_name = 'busy'}),
	'two workers');

# The families of reliq.metrics() for one subscription, as name => value.
sub metrics_of
{
	my ($sub) = @_;
	my %m;
	for my $line (split /\n/, $node->safe_psql('postgres', 'SELECT reliq.metrics()'))
	{
		$m{$1} = $2 if $line =~ /^(\w+)\{subscription="\Q$sub\E"\} (\S+)$/;
	}
	return \%m;
}

# 1. Resets, as fast as one session can make them, while the workers apply.
$node->safe_psql('postgres', q{
	CREATE FUNCTION reset_until(target int) RETURNS int LANGUAGE plpgsql AS $$
	DECLARE
		n int := 0;
		deadline timestamptz := clock_timestamp() + interval '120 s';
	BEGIN
		WHILE clock_timestamp() < deadline
		      AND (SELECT count(*) FROM seen WHERE sub = 'busy') < target LOOP
			PERFORM reliq.subscription_stats_reset('busy');
			n := n + 1;
		END LOOP;
		RETURN n;
	END $$;
});
my $h = $nats->publish_bg('st.busy', count => 3000, start => 1, payload => '{"id":%d}');
my $resets = $node->safe_psql('postgres', 'SELECT reset_until(3000)');
ok($nats->wait_publish($h), 'published 3000');
diag("$resets resets while the batches were applied");
ok(wait_idle($node, 'busy'), 'drained');
is($node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT id) FROM seen WHERE sub = 'busy'}),
	'3000|3000', 'every message applied once');
my $s = reliq_stats($node, 'busy');
cmp_ok($s->{processed}, '<=', 3000, 'processed since the last reset is within what was applied');

# After a last reset, the counters, the histograms and the samples count
# exactly what follows.
my $before = reliq_stats($node, 'busy')->{stats_reset_at};
$node->safe_psql('postgres', q{SELECT reliq.subscription_stats_reset('busy')});
$s = reliq_stats($node, 'busy');
is("$s->{received}|$s->{processed}|$s->{batches}", '0|0|0', 'reset to zero');
isnt($s->{stats_reset_at}, $before, 'stats_reset_at moved');
is(metrics_of('busy')->{reliq_commit_latency_seconds_count}, 0, 'latency histogram reset');
$nats->publish('st.busy', count => 200, start => 3001, payload => '{"id":%d}');
ok(wait_idle($node, 'busy'), 'drained again');
$s = reliq_stats($node, 'busy');
is("$s->{received}|$s->{processed}|$s->{failed}", '200|200|0', 'counted after the reset');
my $m = metrics_of('busy');
is($m->{reliq_commit_latency_seconds_count}, 200, 'one latency observed per message');
is($m->{reliq_batch_duration_seconds_count}, $s->{batches}, 'one duration observed per batch');
ok($s->{latency_p50} ne '' && $s->{batch_p99} ne '', 'percentiles from the samples');
cmp_ok($s->{messages_per_second}, '>', 0, 'a rate over the last minute');

# 2. A dropped subscription's entry goes to a new one, cleared.
$node->safe_psql('postgres', q{
	SELECT reliq.create_subscription('gone', stream => 'ST', subject => 'st.gone',
	       handler => 'note(reliq.message)'::regprocedure);
});
$nats->publish('st.gone', count => 50, start => 1, payload => '{"id":%d}');
ok(wait_idle($node, 'gone'), 'second subscription drained');
ok(wait_for($node, q{SELECT processed = 50 FROM reliq.subscription_stats WHERE subscription_name = 'gone'}),
	'it has the second entry');
$node->safe_psql('postgres', q{
	SELECT reliq.drop_subscription('gone');
	SELECT reliq.create_subscription('fresh', stream => 'ST', subject => 'st.fresh',
	       handler => 'note(reliq.message)'::regprocedure);
});
ok(wait_for($node, q{SELECT stats_reset_at IS NOT NULL AND workers = 1 FROM reliq.subscription_stats WHERE subscription_name = 'fresh'}),
	'the new subscription got the freed entry');
$s = reliq_stats($node, 'fresh');
is("$s->{received}|$s->{processed}|$s->{batches}|$s->{last_error}|$s->{batch_p50}",
	'0|0|0||', 'nothing of the dropped subscription left in it');
$m = metrics_of('fresh');
is($m->{reliq_commit_latency_seconds_count} // 'none', 0, 'its histogram starts empty');
$nats->publish('st.fresh', count => 30, start => 1, payload => '{"id":%d}');
ok(wait_idle($node, 'fresh'), 'new subscription drained');
$s = reliq_stats($node, 'fresh');
is("$s->{received}|$s->{processed}", '30|30', 'and counts its own messages');
is(metrics_of('fresh')->{reliq_commit_latency_seconds_count}, 30, 'in its histogram too');

$node->stop('fast');
$nats->stop;
done_testing();
