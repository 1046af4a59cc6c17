# ReliqTest::Faults: reliq's fault suite.  Publishes N messages with unique
# ids at a steady rate while faults fire in a random order, then waits
# and counts what was applied.
#
# Faults:
#   pg_immediate       pg_ctl stop -m immediate, then start
#   worker_kill9       kill -9 of one reliq worker (the postmaster then
#                      restarts every backend: PostgreSQL's own rule)
#   postmaster_kill9   kill -9 of the postmaster alone; every reliq process
#                      must exit by itself (bounded wait, time printed);
#                      the backends left are killed, then a start
#   nats_kill9         kill -9 of nats-server, then start (same store)
#   nats_sigstop       SIGSTOP nats-server for longer than ack_wait, SIGCONT
#   proxy_cut          the TCP connection between reliq and nats-server cut
#   proxy_blackhole    the same connection silently dropping everything
#   lock_timeout       the target table locked; handlers hit lock_timeout
#   statement_timeout  the target table locked; handlers hit handler_timeout
#
# After each fault two times are taken: recovery, until the workers
# receive messages again (subscription_stats.received moves: duplicates a
# killed nats-server sends again count, they are work too); and the
# latency of a probe message published when the fault ended, until it is
# applied (it waits behind whatever backlog the fault built up).  What
# must hold: every message applied exactly once, nothing dead-lettered,
# the postmaster restarted only by the test's own kills, no reliq process
# outliving a killed postmaster.
package ReliqTest::Faults;

use strict;
use warnings;
use List::Util qw(max shuffle);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Time::HiRes qw(sleep time);
use ReliqTest::Nats;
use ReliqTest::Node;
use ReliqTest::Proxy;
use ReliqTest::Replication ();

our @KINDS = qw(pg_immediate worker_kill9 postmaster_kill9 nats_kill9 nats_sigstop
  proxy_cut proxy_blackhole lock_timeout statement_timeout);

my $ACK_WAIT = 3;    # seconds; SIGSTOP lasts longer than this
my $LONGEST_BACKOFF = 1;    # seconds: the subscription's backoff, below

# A probe must be applied within its fault's recovery (until the workers
# receive again) plus ack_wait (a redelivery of what the fault cut off)
# plus the longest backoff (a NAK's delay), plus the backlog the fault
# built up: what was published during the fault and its recovery, drained
# at no less than BACKLOG_RATE_FACTOR times the publishing rate.
my $BACKLOG_RATE_FACTOR = 2;

# Longest wait for the reliq processes of a killed postmaster to exit:
# only to turn one that never does into a failure.
my $PM_DEATH_WAIT = 30;

# run(messages => N, per_kind => K, seed => S, kinds => [...],
#     order => [kinds in the order to fire them] (instead of kinds and
#     per_kind), log_level => "warning" (log_min_messages),
#     say => sub { print ... })
# Returns a hash of figures.
sub run
{
	my (%p) = @_;
	my $say = $p{say} // sub { };
	my $messages = $p{messages};
	my $per_kind = $p{per_kind};
	my $seed = $p{seed} // time;
	my @kinds = @{ $p{kinds} // \@KINDS };
	for my $kind (@kinds)
	{
		die "unknown fault kind \"$kind\" (known: @KINDS)\n" unless grep { $_ eq $kind } @KINDS;
	}
	srand($seed);

	my $nats = ReliqTest::Nats->new(name => 'faults');
	$nats->start;
	$nats->stream_create('FAULTS', ['faults.>']);
	my $proxy = ReliqTest::Proxy->new(
		target_port => $nats->port,
		port        => PostgreSQL::Test::Cluster::get_free_port())->start;
	my $node = reliq_node('faults', $proxy, conf => sprintf(<<'CONF', $p{log_level} // 'warning'));
reliq.nats_timeout = 1000
reliq.fetch_timeout = 500
log_min_messages = %s
CONF
	$node->safe_psql('postgres', sprintf(<<'SQL', $ACK_WAIT));
CREATE TABLE applied (id bigint, seq bigint, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE fault_ctl (lock_timeout text);
INSERT INTO fault_ctl VALUES ('300ms');
CREATE FUNCTION apply(m reliq.message) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	PERFORM set_config('lock_timeout', (SELECT lock_timeout FROM fault_ctl), true);
	INSERT INTO applied (id, seq) VALUES ((reliq.message_json(m)->>'id')::bigint, m.stream_seq);
END $$;
SELECT reliq.create_subscription('faults', stream => 'FAULTS', subject => 'faults.>',
       handler => 'apply(reliq.message)'::regprocedure, batch_size => 100, concurrency => 2,
       ack_wait => '%d s', max_deliver => 10000, backoff => '{200ms,1s}',
       handler_timeout => '1s');
SQL

	# The order from the seed alone (starting the servers above draws from
	# rand too: seeded before them, the same seed gave another order once
	# a server more or less was started), or as given.
	srand($seed);
	my @faults = $p{order} ? @{ $p{order} } : shuffle((@kinds) x $per_kind);
	for my $kind (@faults)
	{
		die "unknown fault kind \"$kind\" (known: @KINDS)\n" unless grep { $_ eq $kind } @KINDS;
	}
	# spread the stream over the expected length of the fault sequence
	my $rate = max(50, int($messages / (scalar(@faults) * 5.5)));
	$say->(sprintf("fault suite: %d messages at %d/s, %d faults (%s), seed %d",
			$messages, $rate, scalar @faults,
			$p{order} ? 'in the order given' : "$per_kind of each kind", $seed));
	my $publisher = $nats->publish_bg('faults.m', count => $messages, start => 1,
		payload => '{"id":%d}', msg_id => 'm-%d', rate => $rate, retry_for => 600);

	my (%count, %recovery, %probe_latency);
	my @over_bound;    # probes applied later than their bound
	my $probes = 0;
	my $kills = 0;
	my @pm_death_exit;    # seconds until the reliq processes exited
	my $outlived = 0;     # postmaster kills some reliq process outlived
	my $locker;
	for my $i (0 .. $#faults)
	{
		my $kind = $faults[$i];
		sleep(0.5 + rand(1.5));
		my $t0 = time;
		if ($kind eq 'pg_immediate')
		{
			$node->stop('immediate');
			sleep 0.3;
			$node->start;
		}
		elsif ($kind eq 'worker_kill9')
		{
			my $pid = $node->safe_psql('postgres',
				q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'reliq worker' ORDER BY random() LIMIT 1});
			if ($pid)
			{
				kill 'KILL', $pid;
				$kills++;
				# the postmaster restarts every backend; wait for connections
				sleep 0.5;
				$node->poll_query_until('postgres', 'SELECT true');
			}
		}
		elsif ($kind eq 'postmaster_kill9')
		{
			# The postmaster alone dies (an OOM kill, an operator's
			# mistake).  Every reliq process must notice and exit by
			# itself; the other backends are then killed by PID, as
			# an operator would before starting the cluster again (the
			# new postmaster refuses to start while they hold the old
			# shared memory).
			my @reliq = ReliqTest::Replication::reliq_pids($node);
			my @left = ReliqTest::Replication::kill_postmaster($node);
			my ($gone, $secs, $alive) =
			  ReliqTest::Replication::wait_pids_gone(\@reliq, $PM_DEATH_WAIT);
			push @pm_death_exit, $secs;
			$outlived++ unless $gone;
			$say->(sprintf('       postmaster killed: %d reliq processes %s after %.2f s%s',
					scalar @reliq, $gone ? 'exited' : 'STILL ALIVE', $secs,
					$gone ? '' : " (pids @$alive)"));
			ReliqTest::Replication::kill_pids(@left);
			my ($others_gone, undef, $others) =
			  ReliqTest::Replication::wait_pids_gone(\@left, 30);
			die "processes @$others of the killed postmaster survived SIGKILL\n"
			  unless $others_gone;
			ReliqTest::Replication::start_after_kill($node);
		}
		elsif ($kind eq 'nats_kill9')
		{
			$nats->kill9;
			sleep 0.5;
			$nats->start;
		}
		elsif ($kind eq 'nats_sigstop')
		{
			$nats->sigstop;
			sleep($ACK_WAIT + 1);
			$nats->sigcont;
		}
		elsif ($kind eq 'proxy_cut')
		{
			$proxy->cut;
			sleep 2;
			$proxy->restore;
		}
		elsif ($kind eq 'proxy_blackhole')
		{
			$proxy->blackhole;
			sleep 4;    # longer than reliq's ping-based detection
			$proxy->restore;
		}
		elsif ($kind eq 'lock_timeout' || $kind eq 'statement_timeout')
		{
			$node->safe_psql('postgres', sprintf("UPDATE fault_ctl SET lock_timeout = '%s'",
					$kind eq 'lock_timeout' ? '300ms' : '0'));
			$locker = $node->background_psql('postgres');
			$locker->query_safe('BEGIN; LOCK TABLE applied IN ACCESS EXCLUSIVE MODE;');
			sleep 2.5;
			$locker->query_safe('COMMIT');
			$locker->quit;
			$node->safe_psql('postgres', "UPDATE fault_ctl SET lock_timeout = '300ms'");
		}
		my $fault_end = time;

		# A probe published now; then wait for the workers to receive
		# messages again, and for the probe to be applied.
		my $probe = 1_000_000_000 + $i;
		$nats->publish('faults.probe', count => 1, start => $probe, payload => '{"id":%d}',
			msg_id => 'probe-%d');
		$probes++;
		my $received_at_end = received($node);
		my ($resumed, $applied);
		my $deadline = time + 300;
		my @look_at = (10, 30, 60);    # a slow probe: what stands still, when
		while (time < $deadline && !defined $applied)
		{
			if (@look_at && time - $fault_end >= $look_at[0])
			{
				$say->(sprintf('  %3d/%d %s: probe not applied after %d s', $i + 1,
						scalar @faults, $kind, shift @look_at));
				$say->("      $_") for diagnose($node, $nats);
			}
			# The counter restarts from zero when the postmaster
			# reinitialises shared memory: a smaller value is a new base.
			my $r = received($node);
			$received_at_end = $r
			  if defined $r && (!defined $received_at_end || $r < $received_at_end);
			$resumed //= time - $fault_end if defined $r && $r > $received_at_end;
			my ($ret, $out) = $node->psql('postgres', "SELECT count(*) FROM applied WHERE id = $probe");
			$applied = time - $fault_end if $ret == 0 && $out eq '1';
			sleep 0.1;
		}
		$resumed //= $applied;
		my $bound = probe_bound($fault_end - $t0, $resumed, $rate);
		if (!defined $applied || $applied > $bound)
		{
			push @over_bound, sprintf('%d/%d %s: probe applied after %s, bound %.1f s',
				$i + 1, scalar @faults, $kind,
				defined $applied ? sprintf('%.1f s', $applied) : 'NEVER', $bound);
		}
		$count{$kind}++;
		$recovery{$kind} = max($recovery{$kind} // 0, $resumed // 999);
		$probe_latency{$kind} = max($probe_latency{$kind} // 0, $applied // 999);
		$say->(sprintf("  %3d/%d %-18s fault %.1f s, consuming again after %s, probe applied after %s",
				$i + 1, scalar @faults, $kind, $fault_end - $t0,
				defined $resumed ? sprintf('%.1f s', $resumed) : 'NEVER',
				defined $applied ? sprintf('%.1f s', $applied) : 'NEVER'));
		die "no recovery after $kind\n" unless defined $applied;
	}

	my $published = $nats->wait_publish($publisher);
	my $idle = wait_idle($node, 'faults', 300);
	my ($rows, $distinct, $lo, $hi) = split /\|/, $node->safe_psql('postgres',
		"SELECT count(*), count(DISTINCT id), min(id), max(id) FROM applied WHERE id <= $messages");
	my ($probe_rows, $probe_distinct) = split /\|/, $node->safe_psql('postgres',
		'SELECT count(*), count(DISTINCT id) FROM applied WHERE id >= 1000000000');
	my $dead = $node->safe_psql('postgres', 'SELECT count(*) FROM reliq.dead_letter');
	my $stats = reliq_stats($node, 'faults');
	my $log = slurp_file($node->logfile);
	my $crash_restarts = () = $log =~ /all server processes terminated; reinitializing/g;

	my %figures = (
		seed                 => $seed,
		messages             => $messages,
		published            => $published,
		idle                 => $idle ? 1 : 0,
		applied              => $distinct,
		lost                 => $messages - $distinct,
		duplicated           => $rows - $distinct,
		probes               => $probes,
		probes_lost          => $probes - $probe_distinct,
		probes_duplicated    => $probe_rows - $probe_distinct,
		dead_lettered        => $dead,
		duplicates_absorbed  => $stats->{duplicates},
		crash_restarts       => $crash_restarts,
		expected_restarts    => $kills,
		postmaster_kills     => scalar @pm_death_exit,
		reliq_outlived_postmaster => $outlived,
		reliq_exit_after_postmaster_max => max(0, @pm_death_exit),
		faults               => \%count,
		recovery             => \%recovery,
		longest_recovery     => max(values %recovery),
		probe_latency        => \%probe_latency,
		longest_probe        => max(values %probe_latency),
		probes_over_bound    => \@over_bound,
	);

	$node->stop;
	$proxy->stop;
	$nats->stop;
	return \%figures;
}

# The longest a probe may take to be applied after its fault ended: the
# fault's recovery, ack_wait, the longest backoff, and the backlog of the
# fault (published during it and its recovery at $rate, drained at least
# $BACKLOG_RATE_FACTOR times as fast).
sub probe_bound
{
	my ($fault_secs, $resumed, $rate) = @_;
	my $backlog_secs = ($fault_secs + ($resumed // 0)) / $BACKLOG_RATE_FACTOR;
	return ($resumed // 0) + $ACK_WAIT + $LONGEST_BACKOFF + $backlog_secs;
}

# What the subscription, its workers, the reliq processes and its consumer
# on the server show now: printed when a probe is slow, so that a stall
# says where it stands while it lasts (issue 19, item 9: once in seven
# replays, a probe waited 55 s, and the logs afterwards told nothing).
sub diagnose
{
	my ($node, $nats) = @_;
	my @lines;
	my $query = sub {
		my ($what, $sql) = @_;
		my ($ret, $out, $err) = $node->psql('postgres', $sql);
		push @lines, $ret == 0 ? map { "$what: $_" } split /\n/, $out : "$what: (failed: $err)";
	};
	$query->('subscription', q{SELECT concat_ws(' ', state, 'lease', lease_holder,
		lease_valid_until - now(), 'consumer', consumer_in_use, 'received', received,
		'processed', processed, 'in_flight', in_flight, 'pending', pending,
		'ack_pending', ack_pending, 'redelivered', redelivered, 'last_error', last_error)
		FROM reliq.subscription_stats WHERE subscription_name = 'faults'});
	$query->('worker', q{SELECT concat_ws(' ', pid, worker_index, state, connected, in_flight)
		FROM reliq.worker_status});
	$query->('process', q{SELECT concat_ws(' ', pid, backend_type, state, wait_event_type,
		wait_event, now() - xact_start, left(query, 60)) FROM pg_stat_activity
		WHERE backend_type LIKE 'reliq%'});
	$query->('applied', q{SELECT concat_ws(' ', 'max seq', max(seq), 'last at', now() - max(at))
		FROM applied});
	my ($ret, $consumer) = $node->psql('postgres', q{SELECT consumer_in_use
		FROM reliq.subscription_stats WHERE subscription_name = 'faults'});
	if ($ret == 0 && $consumer ne '')
	{
		my $ci = eval { $nats->consumer_info('FAULTS', $consumer) };
		push @lines, $ci
		  ? sprintf('server: consumer %s delivered %s ack floor %s pending %s ack_pending %s waiting %s redelivered %s',
			$consumer, $ci->{delivered}{stream_seq} // '?', $ci->{ack_floor}{stream_seq} // '?',
			$ci->{num_pending} // '?', $ci->{num_ack_pending} // '?',
			$ci->{num_waiting} // '?', $ci->{num_redelivered} // '?')
		  : "server: consumer $consumer: " . ($@ ? $@ =~ s/\n.*//sr : 'not on the server');
	}
	return @lines;
}

# Messages the workers have received (NULL while PostgreSQL restarts).
sub received
{
	my ($node) = @_;
	my ($ret, $out) = $node->psql('postgres',
		q{SELECT received FROM reliq.subscription_stats WHERE subscription_name = 'faults'});
	return ($ret == 0 && $out ne '') ? $out : undef;
}

# The figures as a table.
sub report
{
	my ($f) = @_;
	my @lines = (
		sprintf('messages %d, applied %d, lost %d, duplicated %d, dead-lettered %d',
			$f->{messages}, $f->{applied}, $f->{lost}, $f->{duplicated}, $f->{dead_lettered}),
		sprintf('probes %d, lost %d, duplicated %d; redeliveries absorbed by the ledger: %d',
			$f->{probes}, $f->{probes_lost}, $f->{probes_duplicated}, $f->{duplicates_absorbed}),
		sprintf('postmaster crash-restarts: %d (the test killed %d workers); seed %d',
			$f->{crash_restarts}, $f->{expected_restarts}, $f->{seed}),
		sprintf('postmaster killed alone %d times: reliq processes exited within %.2f s at most, '
			  . '%d times some outlived it (%d s)',
			$f->{postmaster_kills}, $f->{reliq_exit_after_postmaster_max},
			$f->{reliq_outlived_postmaster}, $PM_DEATH_WAIT),
		sprintf('%-18s %6s %14s %18s', 'fault', 'count', 'recovery max', 'probe latency max'),
	);
	for my $kind (@KINDS)
	{
		next unless $f->{faults}{$kind};
		push @lines, sprintf('%-18s %6d %12.1f s %16.1f s', $kind, $f->{faults}{$kind},
			$f->{recovery}{$kind}, $f->{probe_latency}{$kind});
	}
	push @lines, sprintf('%-18s %6s %12.1f s %16.1f s', 'longest', '',
		$f->{longest_recovery}, $f->{longest_probe});
	push @lines, sprintf('probes over their bound (recovery + ack_wait %d s + backoff %d s + backlog): %d',
		$ACK_WAIT, $LONGEST_BACKOFF, scalar @{ $f->{probes_over_bound} });
	push @lines, "  $_" for @{ $f->{probes_over_bound} };
	return @lines;
}

1;
