# ReliqTest::Local: processes on loopback for the demo and the regression
# wrapper, without the PostgreSQL::Test framework: a free port, a
# nats-server with JetStream, a throwaway PostgreSQL cluster.  Everything
# started here is stopped by its own PID (or by pg_ctl on its own data
# directory), never by name.
package ReliqTest::Local;

use strict;
use warnings;
use Exporter 'import';
use IO::Socket::INET;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(sleep time);

our @EXPORT_OK = qw(free_port start_nats stop_pid nats_server_path
  start_postgres restart_postgres stop_postgres start_site stop_site site_query);

my $pg_bindir = $ENV{PG_BINDIR} // '/usr/lib/postgresql/15/bin';

# A TCP port nobody listens on at 127.0.0.1 right now.
sub free_port
{
	my $sock = IO::Socket::INET->new(
		LocalAddr => '127.0.0.1',
		LocalPort => 0,
		Proto     => 'tcp',
		Listen    => 1,
		ReuseAddr => 0) or die "cannot find a free port: $!";
	my $port = $sock->sockport;
	close $sock;
	return $port;
}

sub nats_server_path
{
	return $ENV{RELIQ_NATS_SERVER} if $ENV{RELIQ_NATS_SERVER};
	for my $dir (split(/:/, $ENV{PATH} // ''), '/usr/sbin', '/usr/bin')
	{
		return "$dir/nats-server" if -x "$dir/nats-server";
	}
	die "nats-server not found (Debian package nats-server)\n";
}

sub wait_for_port
{
	my ($port, $what, $log) = @_;
	my $deadline = time + 30;
	while (time < $deadline)
	{
		my $s = IO::Socket::INET->new(
			PeerAddr => '127.0.0.1',
			PeerPort => $port,
			Proto    => 'tcp');
		if ($s) { close $s; return; }
		sleep 0.05;
	}
	my $tail = $log && -f $log ? `tail -20 $log` : '';
	die "$what did not listen on 127.0.0.1:$port within 30 s\n$tail";
}

# Start nats-server with JetStream in $dir; returns its PID.
sub start_nats
{
	my ($dir, $port, @extra) = @_;
	mkdir "$dir/jetstream";
	my $log = "$dir/nats-server.log";
	my $pid = fork // die "fork: $!";
	if ($pid == 0)
	{
		open STDOUT, '>>', $log or die;
		open STDERR, '>&', \*STDOUT or die;
		exec nats_server_path(), '-a', '127.0.0.1', '-p', $port, '-js',
		  '-sd', "$dir/jetstream", @extra
		  or die "exec nats-server: $!";
	}
	wait_for_port($port, 'nats-server', $log);
	return $pid;
}

# Stop a process we started: TERM, up to $grace seconds, then KILL.
sub stop_pid
{
	my ($pid, $grace) = @_;
	return unless $pid;
	$grace //= 10;
	kill 'TERM', $pid;
	my $deadline = time + $grace;
	while (time < $deadline)
	{
		return if waitpid($pid, WNOHANG) == $pid;
		sleep 0.05;
	}
	kill 'KILL', $pid;
	waitpid($pid, 0);
}

# initdb + start a cluster in $dir/pg listening on 127.0.0.1:$port.
sub start_postgres
{
	my ($dir, $port, $conf) = @_;
	my $data = "$dir/pg";
	system("$pg_bindir/initdb", '-D', $data, '-A', 'trust', '-U', 'postgres',
		'--no-sync', '-E', 'UTF8', '--locale=C')
	  == 0 or die "initdb failed\n";
	open my $fh, '>>', "$data/postgresql.conf" or die;
	print $fh "port = $port\nlisten_addresses = '127.0.0.1'\n",
	  "unix_socket_directories = '$dir'\n", $conf;
	close $fh;
	system("$pg_bindir/pg_ctl", '-D', $data, '-l', "$dir/postgresql.log",
		'-w', '-s', 'start') == 0
	  or die "pg_ctl start failed; see $dir/postgresql.log\n";
	return $data;
}

sub restart_postgres
{
	my ($data) = @_;
	system("$pg_bindir/pg_ctl", '-D', $data, '-l', "$data/../postgresql.log",
		'-m', 'fast', '-w', '-s', 'restart') == 0
	  or die "pg_ctl restart failed\n";
}

sub stop_postgres
{
	my ($data) = @_;
	return unless $data && -f "$data/postmaster.pid";
	system("$pg_bindir/pg_ctl", '-D', $data, '-m', 'fast', '-w', '-s', 'stop');
}

# A site for the demo and the benchmark: a nats-server and a cluster with
# reliq preloaded on free loopback ports in $dir, and $database made (the
# launcher connects to it at start, hence the restart).  Fills %$site as
# it goes (nats_pid, nats_url, pgdata, pg_port, psql), so that stop_site
# stops what was started even if a later step dies.
sub start_site
{
	my ($site, $dir, $database, $conf) = @_;
	my $nats_port = free_port();
	$site->{nats_url} = "nats://127.0.0.1:$nats_port";
	$site->{nats_pid} = start_nats($dir, $nats_port);
	$site->{pg_port}  = free_port();
	$site->{pgdata}   = start_postgres($dir, $site->{pg_port},
		"shared_preload_libraries = 'reliq'\n"
		  . "reliq.nats_url = '$site->{nats_url}'\n"
		  . "reliq.database_name = '$database'\n"
		  . "reliq.max_workers = 8\n"
		  . "max_worker_processes = 16\n"
		  . ($conf // ''));
	$site->{database} = $database;
	$site->{psql} = [ 'psql', '-X', '-q', '-h', $dir, '-p', $site->{pg_port}, '-U', 'postgres' ];
	system(@{ $site->{psql} }, '-d', 'postgres', '-c', "CREATE DATABASE $database") == 0
	  or die "CREATE DATABASE $database failed\n";
	restart_postgres($site->{pgdata});
	return $site;
}

sub stop_site
{
	my ($site) = @_;
	stop_postgres($site->{pgdata}) if $site->{pgdata};
	stop_pid($site->{nats_pid}) if $site->{nats_pid};
	delete @$site{qw(pgdata nats_pid)};
}

# The rows of one query in the site's database, "|" between fields; dies
# when the query fails.
sub site_query
{
	my ($site, $query) = @_;
	open my $fh, '-|', @{ $site->{psql} }, '-d', $site->{database},
	  '-v', 'ON_ERROR_STOP=1', '-A', '-t', '-F', '|', '-c', $query
	  or die "psql: $!";
	local $/;
	my $out = <$fh>;
	close $fh or die "query failed: $query\n";
	$out =~ s/\s+\z//;
	return $out;
}

1;
