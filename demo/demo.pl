#!/usr/bin/perl
# demo/demo.pl: the reliq demo; run it with scripts/demo.
#
# Starts a nats-server and a PostgreSQL cluster on free loopback ports in a
# temporary directory, installs the flow of demo/setup.sql, publishes
# onboarding events from outside (test/tools/natstool, as another service
# would), shows progress from reliq.subscription_stats, checks that every
# user got exactly one plan, prints the trace of one user as a tree (spans
# exported over OTLP to a small receiver, test/perl/ReliqTest/Otlp.pm), and
# stops everything it started.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../test/perl";
use File::Temp qw(tempdir);
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(time sleep);
use ReliqTest::Local qw(free_port stop_pid start_site stop_site site_query);
use ReliqTest::Otlp;

$| = 1;
my $users   = $ENV{DEMO_USERS} // 5000;
my $bad     = int($users / 100);          # malformed events: no user_id
my $timeout = $ENV{DEMO_TIMEOUT} // 300;
my $trace_rate = $ENV{DEMO_TRACE_RATE} // 0.01;    # of the onboarding events
my $root    = "$FindBin::Bin/..";
my $natstool = "$root/test/tools/natstool";
-x $natstool or die "$natstool is missing: run scripts/demo (it builds it)\n";

my $dir = tempdir('reliq-demo-XXXXXX', TMPDIR => 1, CLEANUP => !$ENV{DEMO_KEEP});
my %site;
my $publisher_pid;
my $otlp;

sub cleanup
{
	stop_pid($publisher_pid, 2) if $publisher_pid;
	undef $publisher_pid;
	stop_site(\%site);
	$otlp->stop if $otlp;
}
END { cleanup(); }
$SIG{INT} = $SIG{TERM} = $SIG{HUP} = sub { print STDERR "\ninterrupted\n"; exit 130; };
$SIG{PIPE} = sub { exit 141; };    # output closed: still stop what we started

# An OTLP/HTTP receiver standing in for Jaeger: it writes the spans reliq
# exports to a file, one JSON line each.
$otlp = ReliqTest::Otlp->new(file => "$dir/spans.jsonl", free_port => \&free_port);
$otlp->start;
start_site(\%site, $dir, 'demo',
	"reliq.otlp_endpoint = '" . $otlp->url . "'\n"
	  . "reliq.trace_sample_rate = $trace_rate\n"
	  . "reliq.service_name = 'reliq-demo'\n");
print "reliq demo\n";
print "  nats-server  $site{nats_url}  (pid $site{nats_pid})\n";
printf "  OTLP         %s  (spans of %g%% of the users; in %s)\n", $otlp->url,
  100 * $trace_rate, $otlp->file;
print "  PostgreSQL   127.0.0.1:$site{pg_port}, database demo, data in $dir\n\n";

my @psql = @{ $site{psql} };
sub sql { return site_query(\%site, @_); }
system(@psql, '-d', 'demo', '-f', "$FindBin::Bin/setup.sql", '-o', '/dev/null') == 0
  or die "demo/setup.sql failed\n";
print "Three subscriptions on stream EVENTS:\n";
system(@psql, '-d', 'demo', '-c',
	"SELECT subscription_name, subject, handler, batch_size, concurrency FROM reliq.subscription ORDER BY id");

# Publish from outside, like the services that emit these events.
print "Publishing $users onboarding events ($bad of them malformed) ...\n\n";
$publisher_pid = fork // die;
if ($publisher_pid == 0)
{
	open STDOUT, '>', "$dir/publisher.log";
	my $url = $site{nats_url};
	system($natstool, '--url', $url, 'publish', 'user.onboarding.completed',
		'--count', $users - $bad, '--start', 1,
		'--payload', '{"user_id":%d,"email":"user@example.com","goal":"strength"}',
		'--msg-id', 'onboarding-%d') == 0 or POSIX::_exit(1);
	system($natstool, '--url', $url, 'publish', 'user.onboarding.completed',
		'--count', $bad, '--start', 1,
		'--payload', '{"email":"nobody-%d@example.com"}',
		'--msg-id', 'malformed-%d') == 0 or POSIX::_exit(1);
	POSIX::_exit(0);
}

my $good    = $users - $bad;
my $started = time;
my $done    = 0;
printf "%7s  %-24s %-24s %-24s %s\n", 'time', 'onboarding', 'plans', 'ready',
  'users ready';
while (time - $started < $timeout)
{
	sleep 1;
	if ($publisher_pid && waitpid($publisher_pid, WNOHANG) == $publisher_pid)
	{
		die "publishing failed; see $dir/publisher.log\n" if $? != 0;
		undef $publisher_pid;
	}
	my %s;
	for my $row (split /\n/, sql(
		"SELECT subscription_name, processed, dead_lettered, COALESCE(pending, 0) + COALESCE(ack_pending, 0)
		   FROM reliq.subscription_stats"))
	{
		my ($name, $processed, $dead, $waiting) = split /\|/, $row;
		$s{$name} = sprintf('%6d done %5d waiting', $processed, $waiting)
		  . ($dead ? " $dead dead" : '');
	}
	my ($ready, $dead) = split /\|/, sql(
		"SELECT (SELECT count(*) FROM app.users WHERE ready),
		        (SELECT count(*) FROM reliq.dead_letter)");
	printf "%6.1fs  %-24s %-24s %-24s %d/%d\n", time - $started,
	  map({ $s{$_} // '' } qw(onboarding plans ready)), $ready, $good;
	if (!$publisher_pid && $ready == $good && $dead == $bad
		&& sql("SELECT bool_and(reliq.wait_idle(subscription_name, '0s')) FROM reliq.subscription") eq 't')
	{
		$done = 1;
		last;
	}
}
my $elapsed = time - $started;

print "\nreliq.subscription_stats:\n";
system(@psql, '-d', 'demo', '-c',
	"SELECT subscription_name, state, workers, received, processed, failed, retried,
	        dead_lettered, duplicates, batches
	   FROM reliq.subscription_stats ORDER BY subscription_name");
print "reliq.dead_letter (first 3 of $bad):\n";
system(@psql, '-d', 'demo', '-c',
	"SELECT id, subject, convert_from(data, 'UTF8') AS data, delivered, error_message
	   FROM reliq.dead_letter ORDER BY id LIMIT 3");

my ($nusers, $nplans, $not_one, $not_ready) = split /\|/, sql(
	"SELECT count(*),
	        (SELECT count(*) FROM app.plans),
	        count(*) FILTER (WHERE (SELECT count(*) FROM app.plans p WHERE p.user_id = u.id) <> 1),
	        count(*) FILTER (WHERE NOT u.ready)
	   FROM app.users u");
my $ok = $done && $nusers == $good && $nplans == $good && $not_one == 0 && $not_ready == 0;
printf "%s: %d users, %d plans, %d users without exactly one plan, %d not ready; "
  . "%d malformed events dead-lettered; %d messages in %.1f s\n",
  $ok ? 'OK' : 'FAILED', $nusers, $nplans, $not_one, $not_ready, $bad,
  $users + 2 * $good, $elapsed;
print_trace();
cleanup();
exit($ok ? 0 : 1);

# The trace of one user whose three steps were sampled, as a tree of
# spans: name, duration, outcome.  The exporter sends spans within about
# a second of their end: wait that long for a complete trace.
sub print_trace
{
	my ($trace, $spans);
	my $deadline = time + 10;
	while (!$trace && time < $deadline)
	{
		$spans = $otlp->spans;
		my %n;
		$n{ $_->{traceId} }++
		  foreach grep { $_->{name} eq 'process plan.generation.completed' } @$spans;
		($trace) = sort keys %n;
		sleep 0.5 unless $trace;
	}
	print "\nreliq.trace_stats():\n";
	system(@psql, '-d', 'demo', '-c',
		"SELECT spans_recorded, spans_exported, spans_dropped_buffer_full, spans_dropped_export_failed
		   FROM reliq.trace_stats()");
	if (!$trace)
	{
		print "No complete trace received (DEMO_TRACE_RATE=$trace_rate).\n";
		return;
	}
	my @mine = grep { $_->{traceId} eq $trace } @$spans;
	my %children;
	my %ids = map { $_->{spanId} => 1 } @mine;
	push @{ $children{ $ids{ $_->{parentSpanId} } ? $_->{parentSpanId} : '' } }, $_
	  foreach sort { $a->{start} <=> $b->{start} } @mine;
	my ($first) = grep { $_->{name} eq 'process user.onboarding.completed' } @mine;
	my $user = $first ? $first->{attributes}{'reliq.stream_seq'} : '?';
	print "The trace of one user ($trace; its onboarding event is stream sequence $user):\n";
	my $walk;
	$walk = sub {
		my ($span, $prefix, $last) = @_;
		my $a = $span->{attributes};
		printf "%s%s %-40s %8.2f ms  %s%s\n", $prefix, ($last ? '└─' : '├─'),
		  $span->{name}, ($span->{end} - $span->{start}) / 1e6,
		  $a->{'reliq.outcome'} // '',
		  $a->{'reliq.subscription'} ? "  (subscription $a->{'reliq.subscription'})" : '';
		my @kids = @{ $children{ $span->{spanId} } // [] };
		for my $i (0 .. $#kids)
		{
			$walk->($kids[$i], $prefix . ($last ? '   ' : '│  '), $i == $#kids);
		}
	};
	my @roots = @{ $children{''} // [] };
	$walk->($roots[$_], '', $_ == $#roots) for 0 .. $#roots;
	return;
}
