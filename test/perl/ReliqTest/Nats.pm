#
# ReliqTest::Nats - manage a real nats-server (with JetStream) for reliq's
# TAP tests, and talk to it through test/tools/natstool.
#

=pod

=head1 NAME

ReliqTest::Nats - a real nats-server (JetStream) for reliq's TAP tests

=head1 SYNOPSIS

  use PostgreSQL::Test::Utils;
  use ReliqTest::Nats;

  my $nats = ReliqTest::Nats->new(name => 'nats1');
  $nats->start;
  $nats->stream_create('EVENTS', ['ev.>']);
  my $n = $nats->publish('ev.a', count => 1000, msg_id => 'm-%d');
  my $info = $nats->stream_info('EVENTS');
  print $info->{state}{messages};
  $nats->restart;
  $nats->stop;

=head1 DESCRIPTION

Each object manages one nats-server process listening on 127.0.0.1 on a
free port (from PostgreSQL::Test::Cluster::get_free_port), with JetStream
stored in a directory made by PostgreSQL::Test::Utils::tempdir, and its log
in the test log directory.  The server is started in the background and
only ever signalled by its own PID.  Servers still running when the object
is destroyed or the test ends are stopped.

Talking to the server goes through test/tools/natstool (built by the repo
Makefile), or $ENV{RELIQ_NATSTOOL} when set.  The nats-server binary is
$ENV{RELIQ_NATS_SERVER}, else nats-server from PATH, else
/usr/sbin/nats-server.

Nothing here asserts on timing: waits are bounded only to turn a hang into
an error.

=cut

package ReliqTest::Nats;

use strict;
use warnings;

use Carp;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Spec;
use IPC::Run;
use JSON::PP;
use MIME::Base64 qw(decode_base64);
use POSIX qw(WNOHANG);
use Scalar::Util qw(refaddr weaken);
use Time::HiRes qw(usleep);

use PostgreSQL::Test::Utils ();
use PostgreSQL::Test::Cluster ();

# Seconds to wait for a starting server to answer, and for a stopping one
# to exit before SIGKILL.
our $START_TIMEOUT = 30;
our $STOP_TIMEOUT  = 10;

my @all_servers;    # weak references, for END

my $json = JSON::PP->new->canonical->allow_nonref;

# natstool: $ENV{RELIQ_NATSTOOL}, else <repo>/test/tools/natstool, found
# from this file's location (<repo>/test/perl/ReliqTest/Nats.pm) when the
# module is loaded (so a later chdir does not matter).
my $default_natstool = File::Spec->catfile(
	abs_path(File::Spec->catdir(dirname(__FILE__), '..', '..', 'tools'))
	  // File::Spec->catdir(dirname(__FILE__), '..', '..', 'tools'),
	'natstool');

sub natstool_path
{
	return $ENV{RELIQ_NATSTOOL} if $ENV{RELIQ_NATSTOOL};
	return $default_natstool;
}

sub _server_path
{
	return $ENV{RELIQ_NATS_SERVER} if $ENV{RELIQ_NATS_SERVER};
	foreach my $dir (File::Spec->path)
	{
		my $p = File::Spec->catfile($dir, 'nats-server');
		return $p if -x $p;
	}
	return '/usr/sbin/nats-server';
}

=pod

=head1 METHODS

=over

=item ReliqTest::Nats->new(name => NAME, extra_conf => TEXT, port => PORT)

Creates the object; does not start the server.  NAME (default "nats")
is used as server_name and in file names.  EXTRA_CONF is appended
verbatim to the generated config file.  PORT defaults to a free port.

=cut

sub new
{
	my ($class, %args) = @_;
	my $name = $args{name} // 'nats';

	croak "invalid server name \"$name\"" unless $name =~ /^[A-Za-z0-9_.-]+$/;

	my $logdir = $PostgreSQL::Test::Utils::log_path
	  // File::Spec->catdir('tmp_check', 'log');
	mkdir $logdir unless -d $logdir;

	my $basedir =
	  File::Spec->rel2abs(PostgreSQL::Test::Utils::tempdir("nats_$name"));
	my $self = bless {
		name       => $name,
		extra_conf => $args{extra_conf} // '',
		jetstream  => $args{jetstream} // 1,
		client_args => $args{client_args} // [],
		scheme     => $args{scheme} // 'nats',
		port       => $args{port} // PostgreSQL::Test::Cluster::get_free_port(),
		basedir    => $basedir,
		store_dir  => File::Spec->catdir($basedir, 'jetstream'),
		conffile   => File::Spec->catfile($basedir, 'nats.conf'),
		logfile    => File::Spec->rel2abs(
			File::Spec->catfile($logdir, "nats_$name.log")),
		pid        => undef,
		owner      => $$,
		bg         => {},
	}, $class;

	my $ref = $self;
	push @all_servers, $ref;
	weaken($all_servers[-1]);
	return $self;
}

=pod

=item Accessors: url, port, pid, logfile, store_dir, conffile, name

url is "nats://127.0.0.1:PORT"; pid is undef when not running.

=cut

sub url       { my $self = shift; return "$self->{scheme}://127.0.0.1:$self->{port}"; }
sub port      { return $_[0]->{port}; }
sub pid       { return $_[0]->{pid}; }
sub logfile   { return $_[0]->{logfile}; }
sub store_dir { return $_[0]->{store_dir}; }
sub conffile  { return $_[0]->{conffile}; }
sub name      { return $_[0]->{name}; }

=pod

=item $nats->is_running

True while the server process exists (reaps it if it has exited).

=cut

sub is_running
{
	my $self = shift;
	my $pid  = $self->{pid};

	return 0 unless defined $pid;
	my $r = waitpid($pid, WNOHANG);
	return 1 if $r == 0;
	# exited (and now reaped), or not our child any more
	$self->{last_exit} = $? if $r == $pid;
	$self->{pid} = undef;
	return 0;
}

sub _log_tail
{
	my ($self, $lines) = @_;
	$lines //= 30;
	open my $fh, '<', $self->{logfile} or return "(no log file $self->{logfile})";
	my @all = <$fh>;
	close $fh;
	splice(@all, 0, @all - $lines) if @all > $lines;
	return "--- last lines of $self->{logfile} ---\n" . join('', @all);
}

sub _append_log
{
	my ($self, $text) = @_;
	if (open my $fh, '>>', $self->{logfile})
	{
		print $fh "### ReliqTest::Nats: $text\n";
		close $fh;
	}
}

=pod

=item $nats->start(wait => 0)

Writes the config file (listen 127.0.0.1:PORT, server_name, JetStream
store_dir, log_file, no monitoring port), starts nats-server in the
background and waits (at most $START_TIMEOUT s) until C<$JS.API.INFO>
answers through natstool.  Dies with the tail of the server log if the
server exits or does not answer.  With wait => 0 it returns as soon as
the process is started (a cluster member cannot answer before a quorum
of its peers is up: ReliqTest::NatsCluster waits for the cluster itself).

=cut

sub start
{
	my ($self, %o) = @_;

	croak "nats-server $self->{name} is already running (pid $self->{pid})"
	  if $self->is_running;

	mkdir $self->{store_dir} unless -d $self->{store_dir};
	my $q = sub { my $s = shift; $s =~ s/(["\\])/\\$1/g; return "\"$s\""; };
	open my $cf, '>', $self->{conffile}
	  or croak "could not write $self->{conffile}: $!";
	print $cf "# generated by ReliqTest::Nats\n",
	  "server_name: ", $q->($self->{name}), "\n",
	  "listen: ", $q->("127.0.0.1:$self->{port}"), "\n",
	  "log_file: ", $q->($self->{logfile}), "\n",
	  "logtime: true\n",
	  ($self->{jetstream}
		? ("jetstream {\n", "  store_dir: ", $q->($self->{store_dir}), "\n", "}\n")
		: ()),
	  $self->{extra_conf}, "\n";
	close $cf;

	my $server = _server_path();
	$self->_append_log("starting $server -c $self->{conffile}");

	my $pid = fork();
	croak "fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		# child: stdout/stderr (panics etc.) go to the server log too
		open STDIN,  '<',  '/dev/null';
		open STDOUT, '>>', $self->{logfile};
		open STDERR, '>&', \*STDOUT;
		{ exec { $server } $server, '-c', $self->{conffile}; }
		print STDERR "exec $server failed: $!\n";
		POSIX::_exit(127);
	}
	$self->{pid} = $pid;
	return $self if exists $o{wait} && !$o{wait};

	my $deadline = time() + $START_TIMEOUT;
	while (1)
	{
		if (!$self->is_running)
		{
			croak "nats-server $self->{name} exited during startup (wait status "
			  . ($self->{last_exit} // '?') . ")\n" . $self->_log_tail;
		}
		my ($ok, $out, $err) =
		  $self->_natstool([ 'request', '$JS.API.INFO' ], timeout_ms => 500);
		if ($ok)
		{
			my $r = eval { $json->decode($out) };
			last if $r && !$r->{error};
		}
		# without JetStream nobody answers: connecting is all we can ask
		last if !$self->{jetstream} && $err =~ /[Nn]o [Rr]esponders/;
		if (time() > $deadline)
		{
			my $tail = $self->_log_tail;
			$self->kill9;
			croak "nats-server $self->{name} did not answer \$JS.API.INFO within "
			  . "$START_TIMEOUT s (last natstool error: $err)\n$tail";
		}
		usleep(100_000);
	}
	return $self;
}

=pod

=item $nats->stop

SIGTERM to the server's PID (and SIGCONT in case it was stopped), waits at
most $STOP_TIMEOUT s, then SIGKILL; reaps it.  No-op when not running.

=cut

sub stop
{
	my $self = shift;
	my $pid  = $self->{pid};

	return unless $self->is_running;
	$self->_append_log("stopping pid $pid (SIGTERM)");
	kill 'TERM', $pid;
	kill 'CONT', $pid;
	my $deadline = time() + $STOP_TIMEOUT;
	while (time() <= $deadline)
	{
		if (waitpid($pid, WNOHANG) == $pid)
		{
			$self->{last_exit} = $?;
			$self->{pid} = undef;
			return;
		}
		usleep(50_000);
	}
	$self->_append_log("pid $pid did not exit after $STOP_TIMEOUT s, SIGKILL");
	$self->kill9;
	return;
}

=pod

=item $nats->kill9

SIGKILL to the server's PID and reap it.

=item $nats->sigstop, $nats->sigcont

SIGSTOP / SIGCONT to the server's PID.

=item $nats->restart(wait => 0)

stop then start (with the same options): same port, same config, same
JetStream store.

=cut

sub kill9
{
	my $self = shift;
	my $pid  = $self->{pid};

	return unless defined $pid;
	$self->_append_log("killing pid $pid (SIGKILL)");
	kill 'KILL', $pid;
	waitpid($pid, 0);
	$self->{last_exit} = $?;
	$self->{pid} = undef;
	return;
}

sub sigstop
{
	my $self = shift;
	croak "nats-server $self->{name} is not running" unless $self->is_running;
	$self->_append_log("SIGSTOP to pid $self->{pid}");
	kill 'STOP', $self->{pid};
	return;
}

sub sigcont
{
	my $self = shift;
	croak "nats-server $self->{name} is not running" unless $self->is_running;
	$self->_append_log("SIGCONT to pid $self->{pid}");
	kill 'CONT', $self->{pid};
	return;
}

sub restart
{
	my ($self, %o) = @_;
	$self->stop;
	return $self->start(%o);
}

# Run natstool synchronously: returns (success, stdout, stderr, exit code).
sub _natstool
{
	my ($self, $args, %o) = @_;
	my @cmd = (natstool_path(), '--url', $self->url, @{ $self->{client_args} });
	push @cmd, '--timeout', $o{timeout_ms} if $o{timeout_ms};
	push @cmd, @$args;

	croak "natstool not found at $cmd[0] (build it: make test/tools/natstool)"
	  unless -x $cmd[0];

	# With a .creds file, cnats 3.4.1 is now and then refused at connect
	# ("Authorization Violation", the server logging only "authentication
	# error") right after the same credentials connected: seen in about one
	# run of 012 in five.  The helpers here expect to connect, so such a
	# refusal is tried again (twice at most, and said).
	my $creds = grep { $_ eq '--creds' } @{ $self->{client_args} };
	for (my $attempt = 1;; $attempt++)
	{
		my ($in, $out, $err) = ('', '', '');
		my @t = $o{wall_timeout} ? (IPC::Run::timeout($o{wall_timeout})) : ();
		my $ok = eval { IPC::Run::run(\@cmd, '<', \$in, '>', \$out, '2>', \$err, @t) };
		if (!defined $ok && $@)
		{
			return (0, $out, "natstool did not finish: $@ $err", -1);
		}
		my $code = $? >> 8;
		if (!$ok && $creds && $attempt < 3 && $err =~ /cannot connect.*Authorization Violation/s)
		{
			Test::More::note("natstool refused at connect with creds (attempt $attempt), trying again: $err");
			next;
		}
		return ($ok ? 1 : 0, $out, $err, $code);
	}
}

=pod

=item $nats->request($subject, $data, timeout_ms => MS)

Core NATS request through natstool; returns the reply payload (trailing
newline removed).  Dies on timeout, no responders or a bare status reply.

=cut

sub request
{
	my ($self, $subject, $data, %o) = @_;
	my @args = ('request', $subject);
	push @args, $data if defined $data;
	my ($ok, $out, $err, $code) = $self->_natstool(\@args,
		timeout_ms   => $o{timeout_ms},
		wall_timeout => $PostgreSQL::Test::Utils::timeout_default // 180);
	croak "request to $subject on $self->{name} failed (exit $code): $err"
	  unless $ok;
	chomp $out;
	return $out;
}

=pod

=item $nats->send_core($subject, $data)

One core NATS message to $subject, without a reply subject (as a client's
ack is sent); dies if it could not be sent.

=cut

sub send_core
{
	my ($self, $subject, $data) = @_;
	my ($ok, $out, $err, $code) = $self->_natstool([ 'send', $subject, $data // '' ],
		wall_timeout => 60);
	croak "send to $subject on $self->{name} failed (exit $code): $err"
	  unless $ok && $out =~ /^sent 1$/m;
	return 1;
}

=pod

=item $nats->js_api($suffix, \%body_or_undef, allow_error => 1)

Requests C<'$JS.API.' . $suffix> with the JSON-encoded body (empty when
undef) and returns the decoded reply.  Dies if the reply has an "error"
member, unless allow_error is true.

=cut

sub js_api
{
	my ($self, $suffix, $body, %o) = @_;
	my $data  = defined $body ? $json->encode($body) : '';
	my $reply = $self->request('$JS.API.' . $suffix, $data);
	my $r     = eval { $json->decode($reply) };
	croak "\$JS.API.$suffix: cannot decode reply \"$reply\": $@" unless ref $r;
	if ($r->{error} && !$o{allow_error})
	{
		my $e = $r->{error};
		croak sprintf("\$JS.API.%s failed: %s (code %s, err_code %s)",
			$suffix, $e->{description} // '?', $e->{code} // '?',
			$e->{err_code} // '?');
	}
	return $r;
}

=pod

=item $nats->stream_create($name, \@subjects, %config)

C<$JS.API.STREAM.CREATE.$name> with {name, subjects, storage => "file",
%config} (%config are stream config fields, e.g. max_msgs => 10,
duplicate_window => NANOSECONDS, retention => "workqueue").  Returns the
reply.

=item $nats->stream_delete($name), $nats->stream_info($name),
$nats->stream_purge($name)

=cut

sub stream_create
{
	my ($self, $name, $subjects, %config) = @_;
	return $self->js_api("STREAM.CREATE.$name",
		{ name => $name, subjects => $subjects, storage => 'file', %config });
}

sub stream_delete
{
	my ($self, $name, %o) = @_;
	return $self->js_api("STREAM.DELETE.$name", undef, %o);
}

sub stream_purge
{
	my ($self, $name, %o) = @_;
	return $self->js_api("STREAM.PURGE.$name", undef, %o);
}

sub stream_info
{
	my ($self, $name, %o) = @_;
	return $self->js_api("STREAM.INFO.$name", undef, %o);
}

=pod

=item $nats->consumer_create($stream, $durable, %config)

Creates (or updates) a durable consumer: {durable_name => $durable,
ack_policy => "explicit", deliver_policy => "all", %config}.  Returns the
reply (consumer info).

=item $nats->consumer_info($stream, $consumer)

Hashref, or undef when the consumer does not exist (err_code 10014).

=item $nats->consumer_delete($stream, $consumer)

=cut

sub consumer_create
{
	my ($self, $stream, $durable, %config) = @_;
	return $self->js_api(
		"CONSUMER.DURABLE.CREATE.$stream.$durable",
		{
			stream_name => $stream,
			config      => {
				durable_name   => $durable,
				ack_policy     => 'explicit',
				deliver_policy => 'all',
				%config
			}
		});
}

sub consumer_info
{
	my ($self, $stream, $consumer) = @_;
	my $r = $self->js_api("CONSUMER.INFO.$stream.$consumer", undef,
		allow_error => 1);
	if (my $e = $r->{error})
	{
		return undef if ($e->{err_code} // 0) == 10014;
		croak sprintf("\$JS.API.CONSUMER.INFO.%s.%s failed: %s (code %s, err_code %s)",
			$stream, $consumer, $e->{description} // '?', $e->{code} // '?',
			$e->{err_code} // '?');
	}
	return $r;
}

sub consumer_delete
{
	my ($self, $stream, $consumer, %o) = @_;

	# nats-server 2.9.10 can fail a delete with code 500 ("unlinkat ...:
	# directory not empty") when acks are written to the consumer's store
	# at that moment.  Try again; "not found" after that means it went.
	my $failed_once = 0;
	for my $try (1 .. 5)
	{
		my $r = $self->js_api("CONSUMER.DELETE.$stream.$consumer", undef,
			%o, allow_error => 1);
		my $e = $r->{error};
		return $r unless $e;
		return { success => JSON::PP::true }
		  if $failed_once && ($e->{err_code} // 0) == 10014;
		$failed_once = 1 if ($e->{code} // 0) == 500;
		return $r if $o{allow_error} && ($e->{code} // 0) != 500;
		if (($e->{code} // 0) != 500 || $try == 5)
		{
			croak sprintf("\$JS.API.CONSUMER.DELETE.%s.%s failed: %s (code %s, err_code %s)",
				$stream, $consumer, $e->{description} // '?', $e->{code} // '?',
				$e->{err_code} // '?');
		}
		usleep(100_000);
	}
}

=pod

=item $nats->stream_messages($stream, first => SEQ, last => SEQ)

Reads stored messages with C<$JS.API.STREAM.MSG.GET> (no consumer
involved), by default from the stream's first to last sequence.  Returns
an arrayref of { seq, subject, data, time, headers => { KEY => [VALUES] } },
skipping deleted sequences.

=cut

sub stream_messages
{
	my ($self, $stream, %o) = @_;
	my ($first, $last) = ($o{first}, $o{last});
	if (!defined $first || !defined $last)
	{
		my $st = $self->stream_info($stream)->{state};
		$first //= $st->{first_seq};
		$last  //= $st->{last_seq};
	}
	return [] if !$last || $last < $first;

	my ($ok, $out, $err, $code) = $self->_natstool(
		[
			'request', "\$JS.API.STREAM.MSG.GET.$stream", '{"seq":%d}',
			'--start', $first, '--count', $last - $first + 1
		],
		wall_timeout => $PostgreSQL::Test::Utils::timeout_default // 180);
	croak "reading messages of $stream failed (exit $code): $err" unless $ok;

	my @msgs;
	foreach my $line (split /\n/, $out)
	{
		# Fast path for the usual reply (JSON::PP is slow on big streams):
		# {"type":"...","message":{"subject":S,"seq":N[,"hdrs":B64],"data":B64,"time":T}}
		if ($line =~
			/^\{"type":"[^"]*","message":\{"subject":"([^"\\]*)","seq":(\d+),(?:"hdrs":"([^"]*)",)?(?:"data":"([^"]*)",)?"time":"([^"]*)"\}\}$/
		  )
		{
			push @msgs,
			  {
				seq     => $2 + 0,
				subject => $1,
				time    => $5,
				data    => defined $4 ? decode_base64($4) : '',
				headers => _parse_headers(defined $3 ? decode_base64($3) : ''),
			  };
			next;
		}
		my $r = $json->decode($line);
		if ($r->{error})
		{
			next if ($r->{error}{err_code} // 0) == 10037;    # no message found
			croak "\$JS.API.STREAM.MSG.GET.$stream: $r->{error}{description}";
		}
		my $m = $r->{message};
		push @msgs,
		  {
			seq     => $m->{seq},
			subject => $m->{subject},
			time    => $m->{time},
			data    => defined $m->{data} ? decode_base64($m->{data}) : '',
			headers => _parse_headers(
				defined $m->{hdrs} ? decode_base64($m->{hdrs}) : ''),
		  };
	}
	return \@msgs;
}

# "NATS/1.0\r\nKey: value\r\n...\r\n\r\n" -> { Key => [values] }
sub _parse_headers
{
	my $raw = shift;
	my %h;
	my @lines = split /\r\n/, $raw;
	shift @lines;    # NATS/1.0 [status]
	foreach my $l (@lines)
	{
		next unless $l =~ /^([^:]+):\s?(.*)$/;
		push @{ $h{$1} }, $2;
	}
	return \%h;
}

=pod

=item $nats->publish($subject, count => N, start => K, payload => FMT,
msg_id => FMT, headers => [[KEY, VALUE], ...], rate => R, retry_for => S,
timeout_ms => MS)

Runs natstool publish and returns the number of messages acknowledged by
JetStream; dies on failure.  FMT: "%d" (at most once) is replaced by the
index K..K+N-1.  natstool's stderr (retries, reconnections) goes to the
test log.

=item $nats->publish_bg(same arguments)

Starts natstool publish in the background (IPC::Run) and returns the
harness; $nats->wait_publish($harness) waits for it and returns the count
(dies on failure).

=cut

sub _publish_cmd
{
	my ($self, $subject, %a) = @_;
	my @cmd = (natstool_path(), '--url', $self->url, @{ $self->{client_args} });
	push @cmd, '--timeout', $a{timeout_ms} if $a{timeout_ms};
	push @cmd, 'publish', $subject;
	push @cmd, '--count',     $a{count}     if defined $a{count};
	push @cmd, '--start',     $a{start}     if defined $a{start};
	push @cmd, '--payload',   $a{payload}   if defined $a{payload};
	push @cmd, '--msg-id',    $a{msg_id}    if defined $a{msg_id};
	push @cmd, '--rate',      $a{rate}      if defined $a{rate};
	push @cmd, '--retry-for', $a{retry_for} if defined $a{retry_for};
	foreach my $h (@{ $a{headers} // [] })
	{
		push @cmd, '--header', "$h->[0]=$h->[1]";
	}
	croak "natstool not found at $cmd[0] (build it: make test/tools/natstool)"
	  unless -x $cmd[0];
	return \@cmd;
}

sub _publish_result
{
	my ($self, $ok, $out, $err, $cmd) = @_;
	print STDERR "# natstool publish stderr:\n$err" if $err ne '';
	croak "natstool publish failed (exit " . ($? >> 8) . "): $err"
	  unless $ok;
	croak "unexpected natstool output \"$out\"" unless $out =~ /^published (\d+)$/m;
	return $1 + 0;
}

sub publish
{
	my ($self, $subject, %a) = @_;
	my $cmd = $self->_publish_cmd($subject, %a);
	my ($in, $out, $err) = ('', '', '');
	my $ok = IPC::Run::run($cmd, '<', \$in, '>', \$out, '2>', \$err);
	return $self->_publish_result($ok, $out, $err, $cmd);
}

sub publish_bg
{
	my ($self, $subject, %a) = @_;
	my $cmd = $self->_publish_cmd($subject, %a);
	my $io  = { in => '', out => '', err => '' };
	my $h   = IPC::Run::start($cmd, '<', \$io->{in}, '>', \$io->{out},
		'2>', \$io->{err});
	$self->{bg}{ refaddr($h) } = [ $h, $io, $cmd ];
	return $h;
}

sub wait_publish
{
	my ($self, $h) = @_;
	my $e = delete $self->{bg}{ refaddr($h) }
	  or croak "wait_publish: not a harness from publish_bg";
	my $io = $e->[1];
	my $ok = $h->finish;
	return $self->_publish_result($ok, $io->{out}, $io->{err}, $e->[2]);
}

=pod

=back

=cut

sub _cleanup
{
	my $self = shift;
	return unless $self->{owner} == $$;    # never from a forked child
	foreach my $e (values %{ $self->{bg} })
	{
		eval { $e->[0]->kill_kill; };
	}
	$self->{bg} = {};
	$self->stop if defined $self->{pid};
	return;
}

sub DESTROY
{
	my $self = shift;
	local ($?, $@, $!);
	$self->_cleanup;
	return;
}

END
{
	local ($?, $@, $!);
	foreach my $s (@all_servers)
	{
		$s->_cleanup if defined $s;
	}
}

1;
