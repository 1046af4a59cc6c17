# ReliqTest::Node: a PostgreSQL::Test::Cluster with reliq preloaded and
# pointed at a ReliqTest::Nats server, plus the waits reliq's TAP tests
# share.  Waits are bounded to turn a hang into a failure; no test asserts
# on how long anything took.
package ReliqTest::Node;

use strict;
use warnings;
use Exporter 'import';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

our @EXPORT = qw(reliq_node wait_idle wait_for reliq_stats query_row
  postmaster_start_time rewind_consumer);

# A started cluster with reliq preloaded, CREATE EXTENSION done.
# Options: conf => extra postgresql.conf text, no_extension => 1.
sub reliq_node
{
	my ($name, $nats, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf', sprintf(<<'CONF', $nats->url, $opts{conf} // ''));
shared_preload_libraries = 'reliq'
reliq.nats_url = '%s'
reliq.database_name = 'postgres'
reliq.max_workers = 8
reliq.naptime = 200
reliq.refresh_interval = 1000
reliq.lease_ttl = '3s'
max_worker_processes = 16
log_statement = none
restart_after_crash = on
%s
CONF
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION reliq')
	  unless $opts{no_extension};
	return $node;
}

# Pause a subscription, then delete its durable consumer on the server and
# make it again from the first message of the stream (same ack_wait and
# max_ack_pending), as an operator resetting it by hand would.  Returns
# whether the workers stopped; the caller resumes the subscription.
sub rewind_consumer
{
	my ($node, $nats, $subscription, $stream, $filter) = @_;
	my $consumer = "reliq_$subscription";
	$node->safe_psql('postgres',
		"SELECT reliq.alter_subscription('$subscription', enabled => false)");
	my $paused = wait_for($node,
		"SELECT count(*) = 0 FROM reliq.worker_status WHERE subscription_name = '$subscription'");
	my $ci = $nats->consumer_info($stream, $consumer);
	$nats->consumer_delete($stream, $consumer);
	$nats->consumer_create($stream, $consumer,
		filter_subject  => $filter,
		ack_wait        => $ci->{config}{ack_wait},
		max_ack_pending => $ci->{config}{max_ack_pending},
		deliver_policy  => 'all');
	return $paused;
}

# Poll a boolean query until it is true; returns whether it became true.
sub wait_for
{
	my ($node, $query, $timeout) = @_;
	$timeout //= 60;
	my $deadline = time + $timeout;
	while (time < $deadline)
	{
		my ($ret, $out) = $node->psql('postgres', $query);
		return 1 if $ret == 0 && $out eq 't';
		sleep 0.2;
	}
	diag("still false after ${timeout}s: $query");
	return 0;
}

sub wait_idle
{
	my ($node, $subscription, $timeout) = @_;
	$timeout //= 120;
	return wait_for($node,
		"SELECT reliq.wait_idle('$subscription', '5s')", $timeout);
}

# One row as a hash.
sub query_row
{
	my ($node, $query) = @_;
	my $out = $node->safe_psql('postgres', $query, extra_params => ['-x', '-A']);
	my %row;
	for my $line (split /\n/, $out)
	{
		my ($k, $v) = split /\|/, $line, 2;
		$row{$k} = $v if defined $k;
	}
	return \%row;
}

sub reliq_stats
{
	my ($node, $subscription) = @_;
	return query_row($node,
		"SELECT * FROM reliq.subscription_stats WHERE subscription_name = '$subscription'");
}

sub postmaster_start_time
{
	my ($node) = @_;
	return $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');
}

1;
