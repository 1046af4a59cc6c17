#
# ReliqTest::Patroni - a real Patroni-managed PostgreSQL high-availability
# cluster on loopback (one etcd, N Patroni nodes) for reliq's TAP tests.
#

=pod

=head1 NAME

ReliqTest::Patroni - etcd + Patroni + PostgreSQL 15 on loopback

=head1 SYNOPSIS

  use ReliqTest::Nats;
  use ReliqTest::Patroni;

  my $nats = ReliqTest::Nats->new(name => 'ha');
  $nats->start;
  my $ha = ReliqTest::Patroni->new(name => 'ha', nats => $nats);
  $ha->start;                              # a leader and streaming replicas
  my $leader  = $ha->leader;               # "ha1"
  my $replica = $ha->replica;              # "ha2"
  print $ha->safe_psql($leader, 'SELECT 1');
  my $t = $ha->kill9_postmaster($leader);  # Patroni fails over by itself
  my $new = $ha->wait_leader(not => $leader);
  $ha->wait_streaming($leader);            # the old leader rejoined
  $ha->switchover(leader => $new, candidate => $leader);
  $ha->stop;                               # Patroni, leftover postgres, etcd

=head1 DESCRIPTION

Starts one etcd (etcd-server 3.4, F</usr/bin/etcd>) on free loopback client
and peer ports with its data in a temporary directory, and Patroni 3.0.2
nodes (F</usr/bin/patroni>) whose YAML configuration is written here: REST
API on 127.0.0.1, the etcd v3 API as DCS (C<< dcs => 'etcd' >> uses the v2
API through python3-etcd instead), PostgreSQL 15 from
F</usr/lib/postgresql/15/bin> listening on 127.0.0.1 with its Unix socket
in a short temporary directory, trust authentication on loopback,
C<use_pg_rewind> (Patroni forces C<wal_log_hints> on) so that a former
leader rejoins as a replica, and reliq preloaded and pointed at the given
NATS server(s).  Patroni forces C<cluster_name> to the scope
(NAME, the same on every node), so each node gets the custom
setting C<reliq_test.node> = its name: a column
C<DEFAULT current_setting('reliq_test.node')> says which node wrote a row
(Patroni rewrites postgresql.conf before every start, pg_rewind included,
so it stays the node's own).

Timings are short: ttl 10, loop_wait 1, retry_timeout 3, a
C<maximum_lag_on_failover> of 1 TB (asynchronous replication may lose
what the dead leader had not shipped: failing over anyway is the point)
and C<primary_start_timeout> 0.

=head2 What makes Patroni fail over

With Patroni's default C<primary_start_timeout> (300 s) a leader whose
postmaster is killed with SIGKILL keeps the leader key: Patroni does crash
recovery in single-user mode, starts PostgreSQL read-only "because i had
the session lock" and promotes it again (a new timeline, same node, back
~3 s after the kill): no failover (C<< dcs_settings =>
{ primary_start_timeout => 300 } >> gives that).  With
C<primary_start_timeout> 0 (set here in the bootstrap DCS configuration)
Patroni, on its next loop (~2 s after the kill), logs "Primary crashed.
Failing over.", releases the leader key, the replica promotes itself, and
the old leader restarts as a replica of it (pg_rewind first when its WAL
went past the fork point).  So C<kill9_postmaster> (the postmaster alone,
its children left to notice) is enough: measured, a new leader 2-3 s
after the kill, the old one streaming again 13-20 s after it.  Note that
PostgreSQL cannot start again on the node while any child of the killed
postmaster is still alive ("pre-existing shared memory block is still in
use").  C<kill9_node> kills Patroni, the
postmaster and every child at once (a machine death): the leader key
then expires after ttl and the replica takes over (measured: 10 s);
C<start_node> brings the node back and it rejoins as a replica (streaming
~14 s after the restart).  C<kill9_patroni> kills Patroni alone and
leaves PostgreSQL running: after ttl the replica promotes while the old
primary still accepts writes (split brain, as a partitioned or frozen
Patroni can cause) until C<start_node> restarts its Patroni, which
demotes it and rewinds it.

=head2 Processes

Every process is signalled by its PID only.  etcd and Patroni are children
of the test.  Patroni starts the postmaster in a new session (it is
re-parented to init), so the postmaster's PID is read from
F<postmaster.pid> and checked against F</proc/PID/cmdline> (which names
the node's own data directory); every postmaster and postmaster child seen
is remembered with its start time (so a recycled PID is never signalled)
and stopped at the end if still there.  The objects are stopped when
destroyed and in an END block, even when the test dies.

Nothing here asserts on timing: waits are bounded only to turn a hang into
an error.

=cut

package ReliqTest::Patroni;

use strict;
use warnings;

use Carp;
use File::Spec;
use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
use POSIX qw(WNOHANG);
use Scalar::Util qw(weaken);
use Time::HiRes qw(usleep time);

use PostgreSQL::Test::Utils ();
use PostgreSQL::Test::Cluster ();

our $PG_BINDIR  = $ENV{RELIQ_PG_BINDIR}  // '/usr/lib/postgresql/15/bin';
our $PATRONI    = $ENV{RELIQ_PATRONI}    // '/usr/bin/patroni';
our $PATRONICTL = $ENV{RELIQ_PATRONICTL} // '/usr/bin/patronictl';
our $ETCD       = $ENV{RELIQ_ETCD}       // '/usr/bin/etcd';

# Bounds (seconds) that only turn a hang into an error.
our $START_TIMEOUT = 120;
our $STOP_TIMEOUT  = 30;

my @all_clusters;    # weak references, for END
my $json = JSON::PP->new->canonical->allow_nonref;

=pod

=head1 METHODS

=over

=item ReliqTest::Patroni->new(%args)

name (default "ha": nodes are NAME1, NAME2, ...), nodes (default 2),
nats (a ReliqTest::Nats: reliq.nats_url is its url) or nats_url,
params (hashref: extra PostgreSQL parameters for every node, written in
each node's local configuration; they override the defaults below),
dcs_params (hashref: extra parameters for the bootstrap DCS configuration:
those Patroni takes only from there, such as max_worker_processes),
dcs_settings (hashref: extra bootstrap DCS settings such as
synchronous_mode, or primary_start_timeout to override 0),
dcs ('etcd3', default, or 'etcd' for the v2 API).

reliq parameters by default: shared_preload_libraries 'reliq',
reliq.database_name 'postgres', reliq.lease_ttl '3s', reliq.naptime 200,
reliq.refresh_interval 1000, reliq.max_workers 8; max_worker_processes 16.

=cut

sub new
{
	my ($class, %args) = @_;
	my $name = $args{name} // 'ha';
	croak "invalid cluster name \"$name\"" unless $name =~ /^[a-z][a-z0-9_]*$/;

	my $logdir = $PostgreSQL::Test::Utils::log_path
	  // File::Spec->catdir('tmp_check', 'log');
	mkdir $logdir unless -d $logdir;
	$logdir = File::Spec->rel2abs($logdir);

	my $nats_url = $args{nats_url};
	$nats_url //= $args{nats}->url if $args{nats};

	my $basedir =
	  File::Spec->rel2abs(PostgreSQL::Test::Utils::tempdir("patroni_$name"));
	my $self = bless {
		name         => $name,
		scope        => $name,
		nats_url     => $nats_url,
		params       => $args{params} // {},
		dcs_params   => $args{dcs_params} // {},
		dcs_settings => $args{dcs_settings} // {},
		dcs          => $args{dcs} // 'etcd3',
		basedir      => $basedir,
		logdir       => $logdir,
		etcd         => {
			client_port => PostgreSQL::Test::Cluster::get_free_port(),
			peer_port   => PostgreSQL::Test::Cluster::get_free_port(),
			data_dir    => File::Spec->catdir($basedir, 'etcd'),
			log         => File::Spec->catfile($logdir, "etcd_$name.log"),
			pid         => undef,
		},
		nodes  => [],
		owner  => $$,
		http   => HTTP::Tiny->new(timeout => 3),
		seen   => {},    # "pid:starttime" => 1 for every postgres process seen
	}, $class;
	croak "dcs must be etcd3 or etcd" unless $self->{dcs} =~ /^etcd3?$/;

	for my $i (1 .. ($args{nodes} // 2))
	{
		my $n    = "$name$i";
		my $ndir = File::Spec->catdir($basedir, $n);
		mkdir $ndir or croak "mkdir $ndir: $!";
		push @{ $self->{nodes} },
		  {
			name     => $n,
			api_port => PostgreSQL::Test::Cluster::get_free_port(),
			pg_port  => PostgreSQL::Test::Cluster::get_free_port(),
			dir      => $ndir,
			data_dir => File::Spec->catdir($ndir, 'data'),
			sock_dir => PostgreSQL::Test::Utils::tempdir_short(),
			conf     => File::Spec->catfile($ndir, 'patroni.yml'),
			log      => File::Spec->catfile($logdir, "patroni_$n.log"),
			pg_log   => "postgres_$n.log",
			pid      => undef,
		  };
	}

	push @all_clusters, $self;
	weaken($all_clusters[-1]);
	return $self;
}

=pod

=item Accessors

node_names (list), scope, etcd_url, node(NAME) (hashref: name, api_port,
pg_port, data_dir, sock_dir, conf, log, pid = Patroni's PID),
port(NAME), host(NAME) (the socket directory), api_url(NAME),
connstr(NAME) (a libpq connection string over TCP), postgres_log(NAME).

=cut

sub node_names { return map { $_->{name} } @{ $_[0]->{nodes} }; }
sub scope      { return $_[0]->{scope}; }
sub etcd_url   { return "http://127.0.0.1:$_[0]->{etcd}{client_port}"; }

sub node
{
	my ($self, $name) = @_;
	foreach my $n (@{ $self->{nodes} })
	{
		return $n if $n->{name} eq $name;
	}
	croak "no node \"" . ($name // '(undef)') . "\" in cluster $self->{name}";
}

sub port    { return $_[0]->node($_[1])->{pg_port}; }
sub host    { return $_[0]->node($_[1])->{sock_dir}; }
sub api_url { return "http://127.0.0.1:" . $_[0]->node($_[1])->{api_port}; }

sub connstr
{
	my ($self, $name, $db) = @_;
	return sprintf('host=127.0.0.1 port=%d user=postgres dbname=%s',
		$self->port($name), $db // 'postgres');
}

sub postgres_log
{
	my ($self, $name) = @_;
	return File::Spec->catfile($self->{logdir}, $self->node($name)->{pg_log});
}

sub _note
{
	my ($self, $text) = @_;
	my $ts = POSIX::strftime('%H:%M:%S', localtime) . sprintf('.%03d', (time * 1000) % 1000);
	Test::More::note("patroni $self->{name}: $text") if Test::More->can('note');
	foreach my $n (@{ $self->{nodes} })
	{
		if (open my $fh, '>>', $n->{log})
		{
			print $fh "### ReliqTest::Patroni $ts: $text\n";
			close $fh;
		}
	}
}

# ---------------------------------------------------------------- /proc

# { state, ppid, starttime, pgrp } of a process, or undef when it is gone.
sub _proc_stat
{
	my $pid = shift;
	open my $fh, '<', "/proc/$pid/stat" or return undef;
	my $line = <$fh>;
	close $fh;
	return undef unless defined $line;
	# pid (comm) state ppid pgrp session ... field 22 = starttime
	return undef unless $line =~ /^\d+ \(.*\) (\S) (.*)$/s;
	my $state = $1;
	my @f = split ' ', $2;
	return { state => $state, ppid => $f[0], pgrp => $f[1], starttime => $f[18] };
}

sub _cmdline
{
	my $pid = shift;
	open my $fh, '<', "/proc/$pid/cmdline" or return '';
	local $/;
	my $c = <$fh> // '';
	close $fh;
	$c =~ s/\0/ /g;
	return $c;
}

# Alive and not a zombie.
sub _alive
{
	my $pid = shift;
	return 0 unless $pid;
	my $st = _proc_stat($pid);
	return $st && $st->{state} ne 'Z' && $st->{state} ne 'X';
}

# The same process as when remembered ("pid:starttime"), still alive?
sub _same_alive
{
	my $key = shift;
	my ($pid, $start) = split /:/, $key;
	my $st = _proc_stat($pid);
	return 0 unless $st && $st->{state} ne 'Z' && $st->{state} ne 'X';
	return $st->{starttime} eq $start;
}

sub _key
{
	my $pid = shift;
	my $st  = _proc_stat($pid) or return undef;
	return "$pid:$st->{starttime}";
}

# Children of each of @pids (one level), from /proc.
sub _children
{
	my @parents = @_;
	my %p = map { $_ => 1 } @parents;
	my @kids;
	opendir my $dh, '/proc' or return ();
	while (my $e = readdir $dh)
	{
		next unless $e =~ /^\d+$/;
		my $st = _proc_stat($e) or next;
		push @kids, $e + 0 if $p{ $st->{ppid} };
	}
	closedir $dh;
	return @kids;
}

# Every descendant of $pid (not $pid itself).
sub _descendants
{
	my $pid = shift;
	my @all;
	my @level = ($pid);
	while (@level)
	{
		@level = _children(@level);
		push @all, @level;
	}
	return @all;
}

# Wait until none of @pids is alive; returns the ones still alive.
sub _wait_gone
{
	my ($timeout, @pids) = @_;
	my $deadline = time + $timeout;
	while (1)
	{
		@pids = grep { _alive($_) } @pids;
		return @pids if !@pids || time > $deadline;
		usleep(50_000);
	}
}

# Remember a postgres process (pid + start time) for the final clean-up.
sub _remember
{
	my ($self, @pids) = @_;
	foreach my $pid (@pids)
	{
		my $k = _key($pid);
		$self->{seen}{$k} = 1 if $k;
	}
}

=pod

=item $ha->postmaster_pid(NAME)

The node's running postmaster's PID (from F<postmaster.pid>, checked
against F</proc/PID/cmdline>), or undef.

=item $ha->postgres_pids(NAME)

The postmaster's PID followed by its children's.

=cut

sub postmaster_pid
{
	my ($self, $name) = @_;
	my $n = $self->node($name);
	my $f = File::Spec->catfile($n->{data_dir}, 'postmaster.pid');
	open my $fh, '<', $f or return undef;
	my $pid = <$fh>;
	close $fh;
	return undef unless defined $pid && $pid =~ /^\s*(\d+)/;
	$pid = $1;
	return undef unless _alive($pid);
	my $cmd = _cmdline($pid);
	return undef unless index($cmd, $n->{data_dir}) >= 0 && $cmd =~ m{/postgres\b};
	$self->_remember($pid);
	return $pid;
}

sub postgres_pids
{
	my ($self, $name) = @_;
	my $pm = $self->postmaster_pid($name) or return ();
	my @kids = _children($pm);
	$self->_remember(@kids);
	return ($pm, @kids);
}

# Every postmaster of this node's data directory that is running, found by
# its command line (which names the data directory), e.g. one left behind
# while Patroni was down.
sub _postmasters_of
{
	my ($self, $name) = @_;
	my $n = $self->node($name);
	my @found;
	opendir my $dh, '/proc' or return ();
	while (my $e = readdir $dh)
	{
		next unless $e =~ /^\d+$/;
		my $cmd = _cmdline($e);
		next unless $cmd =~ m{^\Q$PG_BINDIR\E/postgres } || $cmd =~ m{^postgres };
		next unless $cmd =~ /(?:^| )-D \Q$n->{data_dir}\E(?: |$)/;
		push @found, $e + 0 if _alive($e);
	}
	closedir $dh;
	return @found;
}

# ---------------------------------------------------------------- etcd

sub _start_etcd
{
	my $self = shift;
	my $e    = $self->{etcd};
	my $purl = "http://127.0.0.1:$e->{peer_port}";
	my $curl = "http://127.0.0.1:$e->{client_port}";
	my $en   = "etcd_$self->{name}";
	my @cmd  = (
		$ETCD,
		'--name'                        => $en,
		'--data-dir'                    => $e->{data_dir},
		'--listen-client-urls'          => $curl,
		'--advertise-client-urls'       => $curl,
		'--listen-peer-urls'            => $purl,
		'--initial-advertise-peer-urls' => $purl,
		'--initial-cluster'             => "$en=$purl",
		'--initial-cluster-state'       => 'new',
		'--initial-cluster-token'       => "reliq-$self->{name}-$$",
		'--enable-v2=true',
		'--heartbeat-interval'          => 100,
		'--election-timeout'            => 1000);
	$e->{pid} = _spawn($e->{log}, {}, @cmd);
	$self->_note("etcd pid $e->{pid} on $curl");

	my $deadline = time + $START_TIMEOUT;
	while (1)
	{
		croak "etcd exited during startup\n" . _tail($e->{log})
		  unless $self->_child_running($e);
		my $r = $self->{http}->get("$curl/health");
		if ($r->{success})
		{
			my $h = eval { $json->decode($r->{content}) };
			last if $h && ($h->{health} // '') eq 'true';
		}
		croak "etcd did not become healthy within $START_TIMEOUT s\n" . _tail($e->{log})
		  if time > $deadline;
		usleep(100_000);
	}
	return;
}

# fork + exec with stdout/stderr appended to $log, PG* variables removed
# (the test framework sets some), %$env added; returns the PID.
sub _spawn
{
	my ($log, $env, @cmd) = @_;
	my $pid = fork();
	croak "fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		open STDIN,  '<',  '/dev/null';
		open STDOUT, '>>', $log or POSIX::_exit(126);
		open STDERR, '>&', \*STDOUT;
		delete $ENV{$_} for grep { /^PG/ } keys %ENV;
		$ENV{$_} = $env->{$_} for keys %$env;
		$ENV{PATH} = "/usr/bin:/bin:" . ($ENV{PATH} // '');
		{ exec { $cmd[0] } @cmd; }
		print STDERR "exec $cmd[0] failed: $!\n";
		POSIX::_exit(127);
	}
	return $pid;
}

# A child we started (etcd or Patroni) still running?  Reaps it if not.
sub _child_running
{
	my ($self, $h) = @_;
	my $pid = $h->{pid};
	return 0 unless defined $pid;
	my $r = waitpid($pid, WNOHANG);
	return 1 if $r == 0;
	$h->{last_exit} = $?;
	$h->{pid} = undef;
	return 0;
}

# TERM (then KILL after $timeout) a child of ours, and reap it.
sub _stop_child
{
	my ($self, $h, $timeout, $sig) = @_;
	my $pid = $h->{pid};
	return unless defined $pid && $self->_child_running($h);
	kill $sig // 'TERM', $pid;
	kill 'CONT', $pid;
	my $deadline = time + $timeout;
	while (time <= $deadline)
	{
		if (waitpid($pid, WNOHANG) == $pid)
		{
			$h->{last_exit} = $?;
			$h->{pid} = undef;
			return 1;
		}
		usleep(50_000);
	}
	kill 'KILL', $pid;
	waitpid($pid, 0);
	$h->{last_exit} = $?;
	$h->{pid} = undef;
	return 0;
}

sub _tail
{
	my ($file, $lines) = @_;
	$lines //= 40;
	open my $fh, '<', $file or return "(no file $file)";
	my @all = <$fh>;
	close $fh;
	splice(@all, 0, @all - $lines) if @all > $lines;
	return "--- last lines of $file ---\n" . join('', @all);
}

# ---------------------------------------------------------------- config

sub _yaml_scalar
{
	my $v = shift;
	return $v if $v =~ /^-?\d+$/;
	$v =~ s/'/''/g;
	return "'$v'";
}

sub _write_config
{
	my ($self, $n) = @_;

	my %dcs_params = (
		max_connections         => 100,
		max_worker_processes    => 16,
		max_wal_senders         => 10,
		max_replication_slots   => 10,
		wal_level               => 'replica',
		wal_log_hints           => 'on',
		hot_standby             => 'on',
		track_commit_timestamp  => 'off',
		%{ $self->{dcs_params} });
	my %dcs = (
		ttl                     => 10,
		loop_wait               => 1,
		retry_timeout           => 3,
		maximum_lag_on_failover => 1099511627776,
		primary_start_timeout   => 0,
		%{ $self->{dcs_settings} });
	my %params = (
		shared_preload_libraries => 'reliq',
		'reliq.database_name'    => 'postgres',
		'reliq.lease_ttl'        => '3s',
		'reliq.naptime'          => 200,
		'reliq.refresh_interval' => 1000,
		'reliq.max_workers'      => 8,
		'reliq_test.node'        => $n->{name},
		unix_socket_directories  => $n->{sock_dir},
		wal_keep_size            => '512MB',
		logging_collector        => 'on',
		log_directory            => $self->{logdir},
		log_filename             => $n->{pg_log},
		log_file_mode            => '0640',
		log_line_prefix          => '%m [%p] %b %q%a ',
		log_min_messages         => 'info',
		log_statement            => 'none',
		%{ $self->{params} });
	$params{'reliq.nats_url'} //= $self->{nats_url} if defined $self->{nats_url};

	my $y = '';
	$y .= "# generated by ReliqTest::Patroni\n";
	$y .= "scope: $self->{scope}\n";
	$y .= "namespace: /reliq_test/\n";
	$y .= "name: $n->{name}\n";
	$y .= "log:\n  level: INFO\n";
	$y .= "restapi:\n";
	$y .= "  listen: 127.0.0.1:$n->{api_port}\n";
	$y .= "  connect_address: 127.0.0.1:$n->{api_port}\n";
	$y .= "$self->{dcs}:\n";
	$y .= "  hosts: 127.0.0.1:$self->{etcd}{client_port}\n";
	$y .= "bootstrap:\n";
	$y .= "  dcs:\n";
	$y .= "    $_: " . _yaml_scalar($dcs{$_}) . "\n" for sort keys %dcs;
	$y .= "    postgresql:\n";
	$y .= "      use_pg_rewind: true\n";
	$y .= "      use_slots: true\n";
	$y .= "      parameters:\n";
	$y .= "        $_: " . _yaml_scalar($dcs_params{$_}) . "\n" for sort keys %dcs_params;
	$y .= "  initdb:\n";
	$y .= "  - encoding: UTF8\n";
	$y .= "  - locale: C\n";
	$y .= "postgresql:\n";
	$y .= "  listen: 127.0.0.1:$n->{pg_port}\n";
	$y .= "  connect_address: 127.0.0.1:$n->{pg_port}\n";
	$y .= "  data_dir: $n->{data_dir}\n";
	$y .= "  bin_dir: $PG_BINDIR\n";
	$y .= "  pgpass: " . File::Spec->catfile($n->{dir}, 'pgpass') . "\n";
	$y .= "  use_pg_rewind: true\n";
	$y .= "  remove_data_directory_on_rewind_failure: true\n";
	$y .= "  remove_data_directory_on_diverged_timelines: true\n";
	$y .= "  authentication:\n";
	$y .= "    superuser:\n      username: postgres\n";
	$y .= "    replication:\n      username: replicator\n";
	$y .= "    rewind:\n      username: postgres\n";
	$y .= "  pg_hba:\n";
	$y .= "  - local all all trust\n";
	$y .= "  - host all all 127.0.0.1/32 trust\n";
	$y .= "  - host replication all 127.0.0.1/32 trust\n";
	$y .= "  parameters:\n";
	$y .= "    $_: " . _yaml_scalar($params{$_}) . "\n" for sort keys %params;
	$y .= "watchdog:\n  mode: off\n";
	$y .= "tags:\n  nofailover: false\n  noloadbalance: false\n  clonefrom: false\n  nosync: false\n";

	open my $fh, '>', $n->{conf} or croak "cannot write $n->{conf}: $!";
	print $fh $y;
	close $fh;
	return;
}

# ---------------------------------------------------------------- start

=pod

=item $ha->start

Starts etcd, then the first node (it bootstraps: initdb, becomes leader),
then the others (pg_basebackup from the leader), and waits until the first
node is the leader and every other node a streaming replica.  Returns
$ha.

=cut

sub start
{
	my $self = shift;
	$self->_start_etcd;
	$self->_write_config($_) for @{ $self->{nodes} };

	my ($first, @rest) = $self->node_names;
	$self->start_node($first);
	$self->wait_leader(name => $first);
	$self->start_node($_) for @rest;
	$self->wait_streaming($_) for @rest;
	return $self;
}

=pod

=item $ha->start_node(NAME)

Starts the node's Patroni (again): a node whose PostgreSQL is down (or
left running by a killed Patroni) rejoins the cluster, as a replica when
another node holds the leader key.  Does not wait: see wait_streaming and
wait_leader.

=cut

sub start_node
{
	my ($self, $name) = @_;
	my $n = $self->node($name);
	croak "Patroni of $name is already running (pid $n->{pid})"
	  if $self->_child_running($n);
	$n->{pid} = _spawn($n->{log}, {}, $PATRONI, $n->{conf});
	$self->_note("started Patroni of $name, pid $n->{pid}");
	return $n->{pid};
}

=pod

=item $ha->restart_node(NAME)

stop_node then start_node: a leader hands over (Patroni releases the
leader key when it stops) and comes back as a replica.  Does not wait.

=cut

sub restart_node
{
	my ($self, $name) = @_;
	$self->stop_node($name);
	return $self->start_node($name);
}

=pod

=item $ha->patroni_running(NAME)

Whether the node's Patroni process is running.

=cut

sub patroni_running
{
	my ($self, $name) = @_;
	return $self->_child_running($self->node($name));
}

# ---------------------------------------------------------------- state

=pod

=item $ha->cluster

The decoded C<GET /cluster> of the first node whose REST API answers
(members with name, role, state, host, port, timeline, lag), or undef.

=item $ha->leader, $ha->replica, $ha->replicas

The leader's name according to the DCS (undef when there is none); the
names of the members with role replica (replica: the first one).

=cut

sub cluster
{
	my $self = shift;
	foreach my $n (@{ $self->{nodes} })
	{
		next unless $self->_child_running($n);
		my $r = $self->{http}->get("http://127.0.0.1:$n->{api_port}/cluster");
		next unless $r->{success};
		my $c = eval { $json->decode($r->{content}) };
		return $c if $c;
	}
	return undef;
}

sub leader
{
	my $self = shift;
	my $c = $self->cluster or return undef;
	foreach my $m (@{ $c->{members} // [] })
	{
		return $m->{name} if ($m->{role} // '') eq 'leader';
	}
	return undef;
}

sub replicas
{
	my $self = shift;
	my $c = $self->cluster or return ();
	return map { $_->{name} }
	  grep { ($_->{role} // '') =~ /^(replica|sync_standby)$/ } @{ $c->{members} // [] };
}

sub replica
{
	my $self = shift;
	my @r = $self->replicas;
	return $r[0];
}

=pod

=item $ha->patroni_state(NAME)

The decoded C<GET /patroni> of the node (state, role, timeline, ...), or
undef when its REST API does not answer.

=cut

sub patroni_state
{
	my ($self, $name) = @_;
	my $r = $self->{http}->get($self->api_url($name) . '/patroni');
	return undef unless $r->{content};
	return eval { $json->decode($r->{content}) };
}

=pod

=item $ha->wait_leader(name => NAME, not => NAME, timeout => S)

Waits until the DCS names a leader (NAME if given, anything but the "not"
name if given) whose PostgreSQL accepts writes (pg_is_in_recovery() is
false).  Returns its name; dies after the timeout (default 120 s).

=cut

sub wait_leader
{
	my ($self, %o) = @_;
	my $timeout  = $o{timeout} // $START_TIMEOUT;
	my $deadline = time + $timeout;
	my $last     = '';
	while (1)
	{
		my $l = $self->leader;
		if (defined $l
			&& (!defined $o{name} || $l eq $o{name})
			&& (!defined $o{not} || $l ne $o{not}))
		{
			my ($rc, $out) = $self->psql($l, 'SELECT pg_is_in_recovery()');
			if ($rc == 0 && $out eq 'f')
			{
				$self->postgres_pids($l);
				return $l;
			}
			$last = "leader $l: pg_is_in_recovery rc $rc: $out";
		}
		else
		{
			$last = 'leader: ' . ($l // '(none)');
		}
		if (time > $deadline)
		{
			croak "no leader"
			  . (defined $o{name} ? " $o{name}" : '')
			  . (defined $o{not} ? " other than $o{not}" : '')
			  . " within $timeout s (last: $last)\n"
			  . $self->_diagnostics;
		}
		usleep(200_000);
	}
}

=pod

=item $ha->wait_streaming(NAME, timeout => S)

Waits until NAME is a replica in recovery, the leader's
pg_stat_replication shows it (application_name NAME) streaming and
Patroni reports it running.  Returns
the leader's name; dies after the timeout (default 120 s).

=cut

sub wait_streaming
{
	my ($self, $name, %o) = @_;
	my $timeout  = $o{timeout} // $START_TIMEOUT;
	my $deadline = time + $timeout;
	my $last     = '';
	while (1)
	{
		my $l = $self->leader;
		if (defined $l && $l ne $name)
		{
			my ($rc, $out) = $self->psql($l,
				"SELECT state FROM pg_stat_replication WHERE application_name = '$name'");
			my ($rc2, $rec) = $self->psql($name, 'SELECT pg_is_in_recovery()');
			my $pstate = $self->_member_state($name) // '';
			if ($rc == 0 && $out eq 'streaming' && $rc2 == 0 && $rec eq 't'
				&& $pstate eq 'running')
			{
				$self->postgres_pids($name);
				return $l;
			}
			$last = "leader $l: replication state of $name '$out', $name in recovery '$rec', Patroni state '$pstate'";
		}
		else
		{
			$last = 'leader: ' . ($l // '(none)');
		}
		if (time > $deadline)
		{
			croak "$name not streaming within $timeout s (last: $last)\n"
			  . $self->_diagnostics;
		}
		usleep(200_000);
	}
}

# The member's state ("running", "starting", ...) according to GET /cluster.
sub _member_state
{
	my ($self, $name) = @_;
	my $c = $self->cluster or return undef;
	foreach my $m (@{ $c->{members} // [] })
	{
		return $m->{state} if $m->{name} eq $name;
	}
	return undef;
}

sub _diagnostics
{
	my $self = shift;
	my $s = '';
	my $c = $self->cluster;
	$s .= "cluster: " . ($c ? $json->encode($c) : '(no REST API answers)') . "\n";
	foreach my $n (@{ $self->{nodes} })
	{
		$s .= _tail($n->{log}, 15);
		$s .= _tail($self->postgres_log($n->{name}), 10);
	}
	return $s;
}

# ---------------------------------------------------------------- SQL

=pod

=item $ha->psql(NAME, SQL, timeout => S)

Runs SQL with psql through the node's Unix socket (-X -A -t, database
postgres, user postgres, ON_ERROR_STOP).  Returns (exit code, stdout,
stderr), stdout without the trailing newline.  A psql that does not end
within the timeout (default 60 s) is killed and reported as exit code -1.

=item $ha->safe_psql(NAME, SQL), $ha->query(NAME, SQL)

The same, dying unless psql succeeds; returns stdout.

=cut

sub psql
{
	my ($self, $name, $sql, %o) = @_;
	my $n   = $self->node($name);
	my @cmd = (
		"$PG_BINDIR/psql", '-X', '-A', '-t', '-q',
		'-v', 'ON_ERROR_STOP=1',
		'-h', $n->{sock_dir}, '-p', $n->{pg_port},
		'-U', 'postgres', '-d', $o{dbname} // 'postgres',
		@{ $o{extra_params} // [] },
		'-f', '-');
	my ($out, $err) = ('', '');
	my $ok = eval {
		IPC::Run::run(\@cmd, '<', \$sql, '>', \$out, '2>', \$err,
			IPC::Run::timeout($o{timeout} // 60));
	};
	if (!defined $ok && $@)
	{
		return (-1, $out, "psql on $name did not finish: $@ $err");
	}
	my $rc = $? >> 8;
	$out =~ s/\n$//;
	return ($rc, $out, $err);
}

sub safe_psql
{
	my ($self, $name, $sql, %o) = @_;
	my ($rc, $out, $err) = $self->psql($name, $sql, %o);
	croak "psql on $name failed (exit $rc): $err\nquery: $sql" if $rc != 0;
	return $out;
}

sub query { my $self = shift; return $self->safe_psql(@_); }

=pod

=item $ha->wait_for(NAME, SQL, TIMEOUT)

Polls a boolean query on node NAME until it returns t; returns whether it
did within TIMEOUT seconds (default 60).

=cut

sub wait_for
{
	my ($self, $name, $sql, $timeout) = @_;
	$timeout //= 60;
	my $deadline = time + $timeout;
	my $last     = '';
	while (time < $deadline)
	{
		my ($rc, $out, $err) = $self->psql($name, $sql);
		return 1 if $rc == 0 && $out eq 't';
		$last = $rc == 0 ? $out : $err;
		usleep(200_000);
	}
	Test::More::diag("still false on $name after ${timeout}s: $sql (last: $last)")
	  if Test::More->can('diag');
	return 0;
}

# ---------------------------------------------------------------- faults

=pod

=item $ha->kill9_postmaster(NAME, also => [PIDS])

SIGKILL to the node's postmaster alone (Patroni and the postmaster's
children keep running; the children exit as they notice the postmaster's
death), then to the PIDs in "also" (children of that postmaster that
would not exit by themselves, e.g. a walsender stopped with SIGSTOP).
Returns { time => epoch seconds (float) just before the kill,
pid => the postmaster's PID, children => [their PIDs] }.

=cut

sub kill9_postmaster
{
	my ($self, $name, %o) = @_;
	my ($pm, @kids) = $self->postgres_pids($name);
	croak "no postmaster running for $name" unless $pm;
	my %kid = map { $_ => 1 } @kids;
	my @also = @{ $o{also} // [] };
	foreach my $p (@also)
	{
		croak "pid $p is not a child of the postmaster of $name" unless $kid{$p};
	}
	my $t = time;
	kill 'KILL', $pm;
	kill 'KILL', @also if @also;
	$self->_note(sprintf('SIGKILL to the postmaster of %s (pid %d) at %.3f%s; children %s',
		$name, $pm, $t, (@also ? " and to @also" : ''), join(' ', @kids)));
	return { time => $t, pid => $pm, children => \@kids };
}

=pod

=item $ha->wait_postgres_gone(\@pids, TIMEOUT)

Waits (default 30 s) until none of the PIDs is alive; returns the PIDs
still alive then (none: an empty list).

=cut

sub wait_postgres_gone
{
	my ($self, $pids, $timeout) = @_;
	return _wait_gone($timeout // 30, @$pids);
}

=pod

=item $ha->kill9_patroni(NAME)

SIGKILL to the node's Patroni (and to any program it was running, such as
pg_rewind or pg_basebackup), PostgreSQL left running.  Returns the time
of the kill.

=cut

sub kill9_patroni
{
	my ($self, $name) = @_;
	my $n = $self->node($name);
	croak "Patroni of $name is not running" unless $self->_child_running($n);
	$self->postgres_pids($name);
	my $pid  = $n->{pid};
	my @desc = _descendants($pid);
	my $t    = time;
	kill 'KILL', $pid, @desc;
	waitpid($pid, 0);
	$n->{last_exit} = $?;
	$n->{pid}       = undef;
	$self->_note(sprintf('SIGKILL to Patroni of %s (pid %d; its children %s) at %.3f',
		$name, $pid, join(' ', @desc), $t));
	return $t;
}

=pod

=item $ha->kill9_node(NAME)

A machine death: SIGKILL, all at once, to the node's Patroni (and its
children), its postmaster and every child of the postmaster; waits for
them to be gone.  Returns { time, pid (postmaster), children }.

=cut

sub kill9_node
{
	my ($self, $name) = @_;
	my $n = $self->node($name);
	my ($pm, @kids) = $self->postgres_pids($name);
	my $ppid = $n->{pid};
	my @pdesc = $ppid ? _descendants($ppid) : ();
	my $t = time;
	kill 'KILL', grep { defined } $ppid, @pdesc, $pm, @kids;
	if ($ppid)
	{
		waitpid($ppid, 0);
		$n->{last_exit} = $?;
		$n->{pid}       = undef;
	}
	$self->_note(sprintf('machine death of %s at %.3f: SIGKILL to Patroni %s (%s), postmaster %s, children %s',
		$name, $t, $ppid // '-', join(' ', @pdesc), $pm // '-', join(' ', @kids)));
	my @left = _wait_gone(10, grep { defined } $pm, @kids, @pdesc);
	croak "processes of $name still alive after SIGKILL: @left" if @left;
	return { time => $t, pid => $pm, children => \@kids };
}

=pod

=item $ha->stop_node(NAME)

SIGTERM to the node's Patroni (it stops PostgreSQL, fast mode), bounded
wait, then whatever PostgreSQL of this node is left is stopped by its
postmaster's PID.

=cut

sub stop_node
{
	my ($self, $name) = @_;
	my $n = $self->node($name);
	$self->postgres_pids($name);
	if ($self->_child_running($n))
	{
		$self->_note("stopping Patroni of $name (pid $n->{pid})");
		$self->_stop_child($n, $STOP_TIMEOUT);
	}
	$self->_stop_postgres($name);
	return;
}

# Stop every postmaster of the node's data directory: SIGINT (fast), then
# SIGQUIT (immediate), then SIGKILL to it and its children.
sub _stop_postgres
{
	my ($self, $name) = @_;
	my @pms = $self->_postmasters_of($name);
	my $cur = $self->postmaster_pid($name);
	push @pms, $cur if $cur && !grep { $_ == $cur } @pms;
	return unless @pms;
	my @kids = _children(@pms);
	$self->_note("stopping postgres of $name left running: postmaster @pms");
	kill 'CONT', @pms, @kids;    # in case one was stopped by the test
	kill 'INT', @pms;
	my @left = _wait_gone(15, @pms);
	if (@left)
	{
		kill 'QUIT', @left;
		@left = _wait_gone(5, @left);
	}
	if (@left)
	{
		kill 'KILL', @left, _children(@left);
	}
	_wait_gone(5, @pms, @kids);
	return;
}

=pod

=item $ha->walreceiver_pid(NAME)

The PID of the replica's WAL receiver (pg_stat_wal_receiver.pid), or
undef.

=cut

sub walreceiver_pid
{
	my ($self, $name) = @_;
	my ($rc, $out) = $self->psql($name, 'SELECT pid FROM pg_stat_wal_receiver');
	return ($rc == 0 && $out =~ /^(\d+)$/) ? $1 : undef;
}

=pod

=item $ha->walsender_pid(LEADER, REPLICA)

The PID of the leader's walsender serving REPLICA (pg_stat_replication),
or undef.

=cut

sub walsender_pid
{
	my ($self, $leader, $replica) = @_;
	my ($rc, $out) = $self->psql($leader,
		"SELECT pid FROM pg_stat_replication WHERE application_name = '$replica'");
	return ($rc == 0 && $out =~ /^(\d+)$/) ? $1 : undef;
}

=pod

=item $ha->switchover(leader => NAME, candidate => NAME)

C<patronictl -c CONF switchover --leader L --candidate C --force>; dies
unless patronictl succeeds.  Returns { time => epoch seconds before the
call, output => patronictl's output }.  Does not wait: see wait_leader.

=cut

sub switchover
{
	my ($self, %o) = @_;
	my $leader    = $o{leader} // croak 'switchover: leader => NAME';
	my $candidate = $o{candidate} // croak 'switchover: candidate => NAME';
	my ($ok, $out, $err) = $self->patronictl('switchover', '--leader', $leader,
		'--candidate', $candidate, '--force');
	my $t = $self->{last_ctl_time};
	croak "patronictl switchover failed: $out $err" unless $ok && $out =~ /Successfully switched over/i;
	$self->_note("switchover $leader -> $candidate: $out");
	return { time => $t, output => $out };
}

=pod

=item $ha->patronictl(ARGS...)

Runs patronictl with the configuration of a node whose Patroni runs (the
DCS and scope come from there).  Returns (success, stdout, stderr).

=cut

sub patronictl
{
	my ($self, @args) = @_;
	my ($n) = grep { $self->_child_running($_) } @{ $self->{nodes} };
	$n //= $self->{nodes}[0];
	my @cmd = ($PATRONICTL, '-c', $n->{conf}, @args);
	my ($in, $out, $err) = ('', '', '');
	local %ENV = %ENV;
	delete $ENV{$_} for grep { /^PG/ } keys %ENV;
	$self->{last_ctl_time} = time;
	my $ok = eval {
		IPC::Run::run(\@cmd, '<', \$in, '>', \$out, '2>', \$err,
			IPC::Run::timeout(120));
	};
	$err .= $@ if !defined $ok && $@;
	return ($ok ? 1 : 0, $out, $err);
}

# ---------------------------------------------------------------- stop

=pod

=item $ha->stop

Stops every node (stop_node), the replicas first (so that the leader's
shutdown hands nothing over), then any postgres process seen during the
test that is still alive (by PID and start time), then etcd.

=back

=cut

sub stop
{
	my $self = shift;
	return unless $self->{owner} == $$;
	# replicas first: a leader stopped first would hand over to a replica
	my $leader = eval { $self->leader } // '';
	foreach my $n (sort { ($a->{name} eq $leader) <=> ($b->{name} eq $leader) }
		@{ $self->{nodes} })
	{
		eval { $self->stop_node($n->{name}); 1 }
		  or warn "stopping $n->{name}: $@";
	}
	my @left = grep { _same_alive($_) } keys %{ $self->{seen} };
	if (@left)
	{
		my @pids = map { (split /:/)[0] } @left;
		$self->_note("postgres processes still alive, SIGKILL: @pids");
		kill 'KILL', @pids;
		_wait_gone(5, @pids);
	}
	$self->{seen} = {};
	if ($self->{etcd}{pid})
	{
		$self->_note("stopping etcd (pid $self->{etcd}{pid})");
		$self->_stop_child($self->{etcd}, $STOP_TIMEOUT);
	}
	return;
}

sub DESTROY
{
	my $self = shift;
	local ($?, $@, $!);
	eval { $self->stop; };
	return;
}

END
{
	local ($?, $@, $!);
	foreach my $c (@all_clusters)
	{
		eval { $c->stop; } if defined $c;
	}
}

1;
