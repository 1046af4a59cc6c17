# reliq on a three-node NATS JetStream cluster (issue 9, item 4): a
# subscription consumes an R3 stream while, mid-stream, three nodes are
# killed (-9) and restarted one after the other: the one a worker is
# connected to (preferably leading nothing), the stream's leader, and the
# leader of the lease bucket (reliq_leases, R3).  The publisher (natstool,
# all three URLs, Nats-Msg-Id) survives the kills.  Every message is
# applied exactly once, reliq.health() is ok at the end, PostgreSQL never
# restarted.  Printed, not asserted: the time from each kill to the first
# commit after it, and the longest pause between applied messages that
# followed (leader elections, a lease that lapsed while its bucket had no
# leader).
#
# Other tests can use the same cluster: see ReliqTest::NatsCluster.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);
use ReliqTest::NatsCluster;
use ReliqTest::Node;

# Publishing must outlast the three kills and, after the last, a lease_ttl
# and the wait for more consumption: about 80 s (at 48 s, a slow leader
# election in the second kill left nothing to consume after the third).
my $total     = 20000;
my $rate      = 250;          # messages/s
my $inflight  = 2 * 50;       # concurrency x batch_size

my $cluster = ReliqTest::NatsCluster->new(name => 'ncl');
my $t = time;
$cluster->start;
note(sprintf('cluster formed in %.1f s: %s', time - $t, $cluster->url));
ok(defined $cluster->meta_leader, 'the cluster has a JetStream meta leader');

my $node = reliq_node('ncluster', $cluster);
my $started = postmaster_start_time($node);

# The stream: R3 through reliq when it can, else through the JetStream API.
my ($ret, $out, $err) = $node->psql('postgres',
	q{SELECT reliq.create_stream('ORD', ARRAY['ord.>'], replicas => 3)});
if ($ret != 0)
{
	note("reliq.create_stream(..., replicas => 3) failed, creating ORD through the JetStream API: $err");
	$cluster->stream_create('ORD', ['ord.>'], num_replicas => 3);
}
my $info = $cluster->stream_info('ORD');
is($info->{config}{num_replicas}, 3, 'ORD has three replicas');
my $leader0 = $cluster->wait_stream_current('ORD');
note('ORD leader: ' . $leader0->name);

$node->safe_psql('postgres', q{
	-- no unique constraint: a message applied twice shows up as two rows
	-- at: when it was applied, to measure the pauses after each kill
	CREATE TABLE orders (id int, seq bigint, at timestamptz DEFAULT clock_timestamp());
	CREATE FUNCTION ord(m reliq.message) RETURNS void LANGUAGE sql AS $$
		INSERT INTO orders (id, seq) VALUES ((reliq.message_json(m)->>'id')::int, m.stream_seq)
	$$;
	SELECT reliq.create_subscription('ord', stream => 'ORD', subject => 'ord.>',
	       handler => 'ord(reliq.message)'::regprocedure, batch_size => 50, concurrency => 2,
	       ack_wait => '5s');
});

# Bounded poll of a Perl condition; returns its value or undef.
sub poll
{
	my ($timeout, $check) = @_;
	my $deadline = time + $timeout;
	while (time < $deadline)
	{
		my $r = $check->();
		return $r if $r;
		sleep 0.1;
	}
	return undef;
}

sub applied
{
	return $node->safe_psql('postgres', 'SELECT count(*) FROM orders');
}

my $publisher = $cluster->publish_bg('ord.in', count => $total, start => 1,
	payload => '{"id":%d}', msg_id => 'ord-%d', rate => $rate,
	retry_for => 150);

ok(poll(60, sub { $cluster->connected_server_of('reliq worker #0') }),
	'worker #0 is connected to a node of the cluster');

# The lease bucket's stream (reliq.lease_bucket = reliq_leases), once the
# monitor has made it; undef in a reliq without leases.
my $lease_stream = 'KV_reliq_leases';
my $has_leases = $node->safe_psql('postgres',
	q{SELECT count(*) > 0 FROM pg_proc WHERE proname = 'take_over'
	  AND pronamespace = 'reliq'::regnamespace}) eq 't';

my $lease_ttl = $node->safe_psql('postgres',
	q{SELECT COALESCE((SELECT setting::int FROM pg_settings WHERE name = 'reliq.lease_ttl'), 0)});    # ms

# Who leads what now: { ORD => node, consumer => node, lease => node }.
sub leaders
{
	my %l = (
		ORD      => $cluster->stream_leader('ORD'),
		consumer => $cluster->consumer_leader('ORD', 'reliq_ord'));
	$l{lease} = $cluster->stream_leader($lease_stream) if $has_leases;
	return \%l;
}

sub describe
{
	my $l = shift;
	return join(', ', map { "$_ leader " . ($l->{$_} ? $l->{$_}->name : '?') }
		  sort keys %$l);
}

# Wait until every replica of what the test relies on has caught up, so
# that the next kill leaves a quorum everywhere.
sub all_current
{
	$cluster->wait_stream_current('ORD');
	$cluster->wait_consumer_current('ORD', 'reliq_ord');
	$cluster->wait_stream_current($lease_stream) if $has_leases;
}

my @kills;    # [ what, node name, time of the kill ]

# Kill -9 a node, wait until consumption moves on, print how long it took,
# start the node again and wait until it has caught up.
sub kill_and_watch
{
	my ($what, $victim) = @_;
	my $before   = applied();
	my $last_seq = $cluster->stream_info('ORD')->{state}{last_seq};
	note("$what: " . describe(leaders()) . '; reliq connections: '
		  . join(', ', map { "$_->{name} -> " . $_->{server}->name }
			  grep { ($_->{name} // '') =~ /^reliq / } $cluster->connections));
	my $t0 = time;
	push @kills, [ $what, $victim->name, $t0 ];
	$cluster->kill9($victim);
	note("$what: killed " . $victim->name . " with $before applied, stream at seq $last_seq");

	my $moved = poll(90, sub { applied() > $before });
	my $t_moved = time - $t0;
	# more than what was in flight when the node died
	my $resumed = poll(90, sub { applied() > $before + $inflight });
	# A lease that could not be renewed lapses up to a lease_ttl after the
	# kill: consumption must go on after that too, with the node still down.
	sleep($t0 + $lease_ttl / 1000 + 1 - time) if time < $t0 + $lease_ttl / 1000 + 1;
	my $later = applied();
	my $still = poll(90, sub { applied() > $later + $inflight });
	ok($moved && $resumed && $still, "$what: consumption goes on with the node down");
	diag(sprintf('%s (%s): first commit after the kill %.2f s',
		$what, $victim->name, $t_moved));
	note("$what: " . describe(leaders()));

	my $t1 = time;
	$cluster->start($victim);
	all_current();
	note(sprintf('%s: %s rejoined and caught up in %.1f s',
		$what, $victim->name, time - $t1));
	return;
}

# 1. A node a worker is connected to: preferably one that leads nothing
# (stream, consumer, lease bucket), so that this kill is about the
# connection only; the next ones are about leaders.
ok(wait_for($node, 'SELECT count(*) >= 2000 FROM orders', 120), 'consuming');
all_current();
my $conns = $cluster->reliq_connections;
my $lead  = leaders();
my %leading = map { $_->name => 1 } grep { defined } values %$lead;
my @on = grep { $conns->{"reliq worker #$_"} } 0, 1;
my ($w) = grep { !$leading{ $conns->{"reliq worker #$_"} } } @on;
$w //= $on[0] // 0;
my $victim = $cluster->node($conns->{"reliq worker #$w"} // 0);
note("killing the node of worker #$w, " . $victim->name
	  . ($leading{ $victim->name } ? ' (a leader too)' : ' (leading nothing)'));
kill_and_watch('worker server kill', $victim);
my $moved_to = $cluster->connected_server_of("reliq worker #$w");
ok($moved_to && $moved_to != $victim || poll(60, sub {
			my $s = $cluster->connected_server_of("reliq worker #$w");
			return $s && $s != $victim;
		}),
	"worker #$w reconnected to another node");

# 2. The stream's leader.
ok(wait_for($node, 'SELECT count(*) >= 5000 FROM orders', 120), 'consuming again');
kill_and_watch('stream leader kill', $cluster->wait_stream_current('ORD'));

# 3. The lease bucket's leader: the lease cannot be renewed until the
# bucket has a leader again.
SKIP:
{
	skip 'no leases in this reliq yet (no reliq.take_over)', 3 unless $has_leases;
	my $kv = eval { $cluster->stream_info($lease_stream) };
	is($kv && $kv->{config}{num_replicas}, 3,
		'the lease bucket reliq_leases has three replicas');
	ok(wait_for($node, 'SELECT count(*) >= 8000 FROM orders', 120), 'consuming still');
	kill_and_watch('lease bucket leader kill', $cluster->wait_stream_current($lease_stream));
}

is($cluster->wait_publish($publisher), $total, 'publisher done through the kills');
is($cluster->stream_info('ORD')->{state}{messages}, $total,
	'the stream holds every message once');
ok(wait_idle($node, 'ord', 180), 'drained');
is($node->safe_psql('postgres',
		'SELECT count(*), count(DISTINCT id), min(id), max(id), count(DISTINCT seq) FROM orders'),
	"$total|$total|1|$total|$total", 'every message applied exactly once');
ok(wait_for($node,
		q{SELECT status = 'ok' FROM reliq.health() WHERE subscription_name = 'ord'}, 60),
	'health ok at the end')
  or diag($node->safe_psql('postgres', 'SELECT * FROM reliq.health()'));
is(postmaster_start_time($node), $started, 'PostgreSQL was never restarted');
# The longest pause between two applied messages in the 20 s after each
# kill (up to the next kill), the wait from the kill to the first message
# after it included: what the kill cost, publishing and consuming together.
for my $i (0 .. $#kills)
{
	my ($what, $name, $t0) = @{ $kills[$i] };
	my $until = $i < $#kills ? $kills[ $i + 1 ][2] : $t0 + 20;
	$until = $t0 + 20 if $until > $t0 + 20;
	my $pause = $node->safe_psql('postgres', qq{
		SELECT round(extract(epoch FROM max(gap))::numeric, 2), count(*) - 1
		  FROM (SELECT at - lag(at) OVER (ORDER BY at) AS gap
		          FROM (SELECT at FROM orders
		                 WHERE at >= to_timestamp($t0) AND at < to_timestamp($until)
		                UNION ALL SELECT to_timestamp($t0)) w) g});
	my ($longest, $n) = split /\|/, $pause;
	diag(sprintf('%s (%s): longest pause between applied messages in the %.0f s after the kill: %s s (%d applied)',
		$what, $name, $until - $t0, $longest // '?', $n));
}

my $s = reliq_stats($node, 'ord');
diag("ord: received $s->{received}, processed $s->{processed}, duplicates $s->{duplicates}");

$node->stop;
$cluster->stop;
done_testing();
