# ReliqTest::Replication: streaming replication and process-level faults
# for reliq's TAP tests, on top of PostgreSQL::Test::Cluster.
#
#   my $primary = reliq_primary('primary', $nats);        # reliq_node + wal_level replica
#   my $standby = reliq_standby($primary, 'standby', synchronous => 1);
#   my @pids    = cluster_pids($primary);                  # postmaster first, then descendants
#   my @reliq   = reliq_pids($primary);                    # launcher, monitor, workers, metrics
#   my $t       = kill_machine($primary);                  # SIGKILL everything at once
#   my @left    = kill_postmaster($primary);               # SIGKILL the postmaster alone
#   my $wr      = walreceiver_stop($standby); ... walreceiver_cont($wr);
#   my ($gone, $secs, $alive) = wait_pids_gone(\@pids, 60);
#   promote_standby($standby);
#   start_after_kill($primary);                            # start again, same data directory
#
# Processes are only ever signalled by PID, and only processes of clusters
# this test started.  A PID is remembered with its start time (field 22 of
# /proc/PID/stat), so a PID reused by an unrelated process is never taken
# for the one we listed, nor signalled.  A zombie counts as gone: a
# container's PID 1 may reap the orphans of a killed postmaster late
# (start_after_kill deals with the lock file a zombie postmaster holds).
# Whatever a killed postmaster left behind is killed at the end of the
# test (END) if the test did not.
package ReliqTest::Replication;

use strict;
use warnings;
use Carp;
use Exporter 'import';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);
use ReliqTest::Node;

our @EXPORT = qw(reliq_primary reliq_standby make_synchronous cluster_pids
  reliq_pids kill_machine kill_postmaster kill_pids pids_alive wait_pids_gone
  start_after_kill walreceiver_pid walreceiver_stop walreceiver_cont
  promote_standby);

# Settings a primary needs to feed a streaming standby.  reliq_node's
# PostgreSQL::Test::Cluster->init wrote wal_level = minimal and
# max_wal_senders = 0; these come after it in postgresql.conf and win.
# The standby gets this file with the base backup.
my $STREAMING_CONF = <<'CONF';
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_log_hints = on
hot_standby = on
hot_standby_feedback = on
wal_receiver_status_interval = 1s
CONF

# PID -> start time (clock ticks since boot) of every process listed here.
my %started_at;
# PIDs orphaned by kill_postmaster that the test may not have killed.
my %orphans;

# A started reliq cluster (ReliqTest::Node::reliq_node) able to feed a
# streaming standby.  Options: conf => more postgresql.conf text,
# no_extension => 1.
sub reliq_primary
{
	my ($name, $nats, %opts) = @_;
	return reliq_node($name, $nats, %opts,
		conf => $STREAMING_CONF . ($opts{conf} // ''));
}

# A hot standby of $primary streaming from it: a base backup
# (pg_basebackup), then init_from_backup with has_streaming.  The standby
# has the primary's postgresql.conf, reliq preloaded and pointed at the
# same NATS; the extension and everything else come through replication.
# Its application_name is its node name.  Started and caught up when this
# returns.  Options: synchronous => 1 (see make_synchronous), conf => more
# postgresql.conf text for the standby.
sub reliq_standby
{
	my ($primary, $name, %opts) = @_;
	my $backup = "for_$name";
	$primary->backup($backup);
	my $standby = PostgreSQL::Test::Cluster->new($name);
	$standby->init_from_backup($primary, $backup, has_streaming => 1);
	$standby->append_conf('postgresql.conf', sprintf(<<'CONF', $primary->connstr, $name, $opts{conf} // ''));
primary_conninfo = '%s application_name=%s'
%s
CONF
	$standby->start;
	$primary->wait_for_catchup($name);
	make_synchronous($primary, $standby) if $opts{synchronous};
	return $standby;
}

# Make $standby the synchronous standby of $primary: synchronous_standby_names
# names its application_name, in the primary's postgresql.conf only (the
# standby must not inherit it: after a promotion it would wait for itself).
# Waits until pg_stat_replication says sync.
sub make_synchronous
{
	my ($primary, $standby) = @_;
	my $name = $standby->name;
	$primary->append_conf('postgresql.conf', qq{synchronous_standby_names = '"$name"'});
	$primary->reload;
	$primary->poll_query_until('postgres',
		"SELECT sync_state = 'sync' FROM pg_stat_replication WHERE application_name = '$name'")
	  or croak "$name did not become the synchronous standby of " . $primary->name;
	return;
}

# (ppid, state, starttime) of a process from /proc, or () if it is gone.
sub _stat
{
	my ($pid) = @_;
	open my $fh, '<', "/proc/$pid/stat" or return ();
	my $line = <$fh>;
	close $fh;
	return () unless defined $line;
	# "pid (comm) state ppid ..."; comm may hold spaces and parentheses
	my $rest = substr($line, rindex($line, ')') + 2);
	my @f = split / /, $rest;
	# $f[0] is field 3 (state), so field N is $f[N - 3]
	return ($f[1], $f[0], $f[19]);
}

sub _cmdline
{
	my ($pid) = @_;
	open my $fh, '<', "/proc/$pid/cmdline" or return '';
	local $/;
	my $c = <$fh> // '';
	close $fh;
	$c =~ s/\0+$//;
	$c =~ s/\0/ /g;
	return $c;
}

sub _remember
{
	my ($pid) = @_;
	my (undef, undef, $start) = _stat($pid);
	$started_at{$pid} = $start if defined $start;
	return defined $start;
}

# The postmaster's PID, from postmaster.pid.
sub _postmaster_pid
{
	my ($node) = @_;
	open my $fh, '<', $node->data_dir . '/postmaster.pid'
	  or croak 'no postmaster.pid for ' . $node->name;
	chomp(my $pid = <$fh>);
	close $fh;
	croak 'postmaster of ' . $node->name . " (pid $pid) is not running"
	  unless _stat($pid);
	return $pid;
}

# Descendants of the given PIDs, from the ppid of every process in /proc.
sub _descendants
{
	my (@roots) = @_;
	my %children;
	opendir my $dh, '/proc' or croak "cannot read /proc: $!";
	for my $pid (grep { /^\d+$/ } readdir $dh)
	{
		my ($ppid, $state) = _stat($pid);
		push @{ $children{$ppid} }, $pid if defined $ppid && $state ne 'Z';
	}
	closedir $dh;
	my @found;
	my @queue = @roots;
	while (defined(my $p = shift @queue))
	{
		for my $c (@{ $children{$p} // [] })
		{
			push @found, $c;
			push @queue, $c;
		}
	}
	return @found;
}

# Every process of a running cluster: the postmaster first, then its
# descendants (backends, auxiliary processes, background workers).
sub cluster_pids
{
	my ($node) = @_;
	my $pm = _postmaster_pid($node);
	my @pids = ($pm, _descendants($pm));
	_remember($_) for @pids;
	return @pids;
}

# reliq's processes of a running cluster: the backends pg_stat_activity
# calls 'reliq launcher', 'reliq monitor', 'reliq worker' (and any other
# 'reliq ...' type), plus children of the postmaster whose title names a
# reliq background worker without a database connection (the metrics
# server is not in pg_stat_activity).
sub reliq_pids
{
	my ($node) = @_;
	my %pids = map { $_ => 1 } grep { /^\d+$/ } split /\n/, $node->safe_psql('postgres',
		q{SELECT pid FROM pg_stat_activity WHERE backend_type LIKE 'reliq %'});
	my $pm = _postmaster_pid($node);
	for my $pid (_descendants($pm))
	{
		$pids{$pid} = 1 if _cmdline($pid) =~ /^postgres: (?:\S+: )?reliq /;
	}
	my @pids = sort { $a <=> $b } keys %pids;
	_remember($_) for @pids;
	return @pids;
}

# Those of @pids still alive: same start time as when listed, not a zombie.
sub pids_alive
{
	my (@pids) = @_;
	my @alive;
	for my $pid (@pids)
	{
		my (undef, $state, $start) = _stat($pid);
		next unless defined $state;
		next if $state eq 'Z' || $state eq 'X';
		next if defined $started_at{$pid} && $started_at{$pid} ne $start;
		push @alive, $pid;
	}
	return @alive;
}

# SIGKILL to those of @pids still alive (never to a reused PID).
sub kill_pids
{
	my (@pids) = @_;
	my @alive = pids_alive(@pids);
	kill 'KILL', @alive if @alive;
	delete @orphans{@pids};
	return @alive;
}

# Wait until no process of @$pids is alive, at most $timeout seconds.
# Returns (all gone, seconds waited, [PIDs still alive]).
sub wait_pids_gone
{
	my ($pids, $timeout) = @_;
	$timeout //= 60;
	my $t0 = time;
	my @alive;
	while (1)
	{
		@alive = pids_alive(@$pids);
		last if !@alive || time - $t0 > $timeout;
		sleep 0.02;
	}
	return (!@alive, time - $t0, \@alive);
}

# The cluster dies as its machine would: every process stops at the same
# moment.  The postmaster is stopped first (SIGSTOP: it can fork nothing
# more), its descendants are listed and stopped, then all get SIGKILL.
# Nothing runs between the first SIGSTOP and the SIGKILLs, so no process
# acts on the death of another.  Returns the time of the kill and the PIDs.
sub kill_machine
{
	my ($node) = @_;
	my $pm = _postmaster_pid($node);
	_remember($pm);
	kill 'STOP', $pm;
	my @pids = ($pm);
	# a child forked just before the SIGSTOP shows up on a second look
	for (1 .. 2)
	{
		my @more = grep { my $p = $_; !grep { $_ == $p } @pids } _descendants($pm);
		_remember($_) for @more;
		kill 'STOP', @more if @more;
		push @pids, @more;
	}
	my $t = time;
	kill 'KILL', @pids;
	$node->{_pid} = undef;    # PostgreSQL::Test::Cluster: not running
	$node->{reliq_killed_postmaster} = $pm;
	my ($gone, undef, $alive) = wait_pids_gone(\@pids, 30);
	croak "processes @$alive of " . $node->name . ' survived SIGKILL' unless $gone;
	note(sprintf('%s killed as a machine death: %d processes', $node->name, scalar @pids));
	return $t;
}

# SIGKILL to the postmaster alone.  Its descendants, listed while it is
# stopped (so it forks nothing in between), are left running, as after an
# OOM kill of the postmaster.  Returns their PIDs; they are killed at the
# end of the test if the test does not (kill_pids).
sub kill_postmaster
{
	my ($node) = @_;
	my $pm = _postmaster_pid($node);
	_remember($pm);
	kill 'STOP', $pm;
	my @children = _descendants($pm);
	_remember($_) for @children;
	kill 'KILL', $pm;
	$node->{_pid} = undef;    # PostgreSQL::Test::Cluster: not running
	$orphans{$_} = 1 for @children;
	$node->{reliq_killed_postmaster} = $pm;
	my ($gone) = wait_pids_gone([$pm], 30);
	croak "postmaster $pm of " . $node->name . ' survived SIGKILL' unless $gone;
	note(sprintf('%s: postmaster %d killed, %d children left', $node->name, $pm,
			scalar @children));
	return @children;
}

# Start a cluster again after kill_machine or kill_postmaster (and
# kill_pids of what the latter left).  A new postmaster refuses to start
# while the PID in postmaster.pid exists, and a killed postmaster is a
# zombie until PID 1 reaps it, which a container's init may do late or
# never.  So: wait (bounded) until the old postmaster is reaped; if it is
# still a zombie then, it is dead all the same, and its postmaster.pid is
# removed, as an operator would.  Returns the seconds waited for the reaping.
sub start_after_kill
{
	my ($node) = @_;
	my $old_postmaster = delete $node->{reliq_killed_postmaster}
	  or croak 'start_after_kill: ' . $node->name . ' was not killed by kill_machine or kill_postmaster';
	my $t0 = time;
	my $zombie = 0;
	while (1)
	{
		my (undef, $state, $start) = _stat($old_postmaster);
		last if !defined $state
		  || (defined $started_at{$old_postmaster} && $start ne $started_at{$old_postmaster});
		croak "postmaster $old_postmaster of " . $node->name . ' is alive'
		  unless $state eq 'Z' || $state eq 'X';
		if (time - $t0 > 10)
		{
			$zombie = 1;
			last;
		}
		sleep 0.05;
	}
	my $waited = time - $t0;
	if ($zombie)
	{
		note("postmaster $old_postmaster of " . $node->name
			  . " still unreaped after ${waited}s: removing its postmaster.pid");
		unlink $node->data_dir . '/postmaster.pid';
	}
	$node->start;
	return $waited;
}

# PID of the standby's walreceiver: pg_stat_wal_receiver, else the process
# title among the postmaster's children.  Undef if there is none.
sub walreceiver_pid
{
	my ($standby) = @_;
	my ($ret, $pid) = $standby->psql('postgres', 'SELECT pid FROM pg_stat_wal_receiver');
	if ($ret != 0 || $pid !~ /^\d+$/)
	{
		($pid) = grep { _cmdline($_) =~ /^postgres: (?:\S+: )?walreceiver/ }
		  _descendants(_postmaster_pid($standby));
	}
	return undef unless $pid;
	_remember($pid);
	return $pid;
}

# SIGSTOP to the standby's walreceiver: the standby stops receiving WAL
# while the primary goes on.  Returns its PID, for walreceiver_cont.
sub walreceiver_stop
{
	my ($standby) = @_;
	my $pid = walreceiver_pid($standby)
	  or croak 'no walreceiver on ' . $standby->name;
	kill 'STOP', $pid;
	return $pid;
}

sub walreceiver_cont
{
	my ($pid) = @_;
	kill 'CONT', pids_alive($pid);
	return;
}

# pg_ctl promote (which waits), then wait until the node is out of
# recovery.  Returns the time the promotion was asked for.
sub promote_standby
{
	my ($standby) = @_;
	my $t = time;
	$standby->promote;
	$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()')
	  or croak $standby->name . ' still in recovery after the promotion';
	return $t;
}

END
{
	local ($?, $!);
	my @left = pids_alive(keys %orphans);
	kill 'KILL', @left if @left;
}

1;
