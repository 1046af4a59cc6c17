# ReliqTest::Proxy: a TCP proxy on loopback between reliq and nats-server,
# for fault tests.  It forwards bytes both ways until told otherwise:
#
#   $proxy->cut        close every connection and refuse new ones
#   $proxy->blackhole  keep connections open but forward nothing (a network
#                      that silently drops packets); new ones hang too
#   $proxy->restore    forward again (existing black-holed connections are
#                      closed, as a real network partition would leave them)
#
# The proxy runs in a child process started here and is stopped by its PID.
package ReliqTest::Proxy;

use strict;
use warnings;
use IO::Select;
use IO::Socket::INET;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(sleep);

sub new
{
	my ($class, %args) = @_;
	my $self = bless {
		target_port => $args{target_port},
		port        => $args{port},
		pid         => undef,
		parent      => $$,
	}, $class;
	return $self;
}

sub port { return $_[0]->{port}; }
sub url  { return 'nats://127.0.0.1:' . $_[0]->{port}; }

sub start
{
	my ($self) = @_;
	my $listener = IO::Socket::INET->new(
		LocalAddr => '127.0.0.1',
		LocalPort => $self->{port},
		Listen    => 64,
		ReuseAddr => 1) or die "proxy: cannot listen on $self->{port}: $!";
	my $pid = fork // die "fork: $!";
	if ($pid == 0)
	{
		_run($listener, $self->{target_port});
		POSIX::_exit(0);
	}
	close $listener;
	$self->{pid} = $pid;
	return $self;
}

sub _signal
{
	my ($self, $signal) = @_;
	kill $signal, $self->{pid} if $self->{pid};
	sleep 0.2;    # let the child act on it
}

sub cut       { $_[0]->_signal('USR1'); }
sub blackhole { $_[0]->_signal('USR2'); }
sub restore   { $_[0]->_signal('HUP'); }

sub stop
{
	my ($self) = @_;
	return unless $self->{pid} && $$ == $self->{parent};
	kill 'TERM', $self->{pid};
	for (1 .. 100)
	{
		last if waitpid($self->{pid}, WNOHANG) == $self->{pid};
		sleep 0.05;
	}
	kill 'KILL', $self->{pid} if kill 0, $self->{pid};
	waitpid($self->{pid}, 0);
	$self->{pid} = undef;
}

sub DESTROY { $_[0]->stop; }

# The child: one select loop over the listener and every connection.
sub _run
{
	my ($listener, $target_port) = @_;
	my $mode    = 'pass';
	my $applied = 'pass';
	my $stop    = 0;
	my %peer;      # socket => its partner
	my %open;      # every open connection socket
	local $SIG{USR1} = sub { $mode = 'cut' };
	local $SIG{USR2} = sub { $mode = 'blackhole' };
	local $SIG{HUP}  = sub { $mode = 'restore' };
	local $SIG{TERM} = sub { $stop = 1 };
	local $SIG{PIPE} = 'IGNORE';
	my $select = IO::Select->new($listener);

	my $close = sub {
		my ($s) = @_;
		return unless defined $s && $open{$s};
		$select->remove($s);
		delete $peer{$s};
		delete $open{$s};
		close $s;
	};
	my $close_all = sub { $close->($_) for values %open; };

	while (!$stop)
	{
		if ($mode ne $applied)
		{
			$close_all->() if $mode eq 'cut' || $mode eq 'restore';
			# black hole: stop reading, so nothing is forwarded either way
			$select->remove($_) for $mode eq 'blackhole' ? values %open : ();
			$mode = 'pass' if $mode eq 'restore';
			$applied = $mode;
		}
		for my $s ($select->can_read(0.1))
		{
			if ($s == $listener)
			{
				my $client = $listener->accept or next;
				if ($mode eq 'cut')
				{
					close $client;
					next;
				}
				$open{$client} = $client;
				next if $mode eq 'blackhole';    # accepted, never served
				my $upstream = IO::Socket::INET->new(
					PeerAddr => '127.0.0.1',
					PeerPort => $target_port,
					Proto    => 'tcp');
				if (!$upstream)
				{
					$close->($client);
					next;
				}
				$open{$upstream}  = $upstream;
				$peer{$client}    = $upstream;
				$peer{$upstream}  = $client;
				$select->add($client, $upstream);
				next;
			}
			my $other = $peer{$s};
			my $n = sysread($s, my $buf, 65536);
			if (!$n || !defined $other || !defined syswrite($other, $buf))
			{
				$close->($other);
				$close->($s);
			}
		}
	}
	$close_all->();
}

1;
