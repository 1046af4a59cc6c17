# ReliqTest::Proxy: a TCP proxy on loopback between reliq and nats-server,
# for fault tests.  It forwards bytes both ways until told otherwise:
#
#   $proxy->cut        close every connection and refuse new ones
#   $proxy->blackhole  keep connections open but forward nothing (a network
#                      that silently drops packets); new ones hang too
#   $proxy->restore    forward again (existing black-holed connections are
#                      closed, as a real network partition would leave them)
#   $proxy->hold_on($text)
#                      the first connection whose client sends $text (a
#                      subject, say) stops being forwarded towards the
#                      server from the start of the line holding it: that
#                      line and everything the client sends after it are
#                      kept, in order; the server's side still flows.  Other
#                      connections are not touched.  One hold at a time.
#   $proxy->holding    whether a connection is held now
#   $proxy->release    forward what was kept, and everything after it
#
# A held client gets no answer to its pings: keep a hold shorter than its
# ping interval times its allowed outstanding pings, or it reconnects and
# what was kept is lost with the connection.
#
# The proxy runs in a child process started here and is stopped by its PID.
package ReliqTest::Proxy;

use strict;
use warnings;
use IO::Select;
use IO::Socket::INET;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(sleep);
use PostgreSQL::Test::Utils ();

sub new
{
	my ($class, %args) = @_;
	my $self = bless {
		target_port => $args{target_port},
		port        => $args{port},
		pid         => undef,
		parent      => $$,
		control     => undef,
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
	$self->{control} = PostgreSQL::Test::Utils::tempdir('proxy');
	my $pid = fork // die "fork: $!";
	if ($pid == 0)
	{
		_run($listener, $self->{target_port}, $self->{control});
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
sub release   { $_[0]->_signal('ALRM'); }
sub holding   { return -e "$_[0]->{control}/held"; }

sub hold_on
{
	my ($self, $text) = @_;
	PostgreSQL::Test::Utils::append_to_file("$self->{control}/pattern.new", $text);
	rename "$self->{control}/pattern.new", "$self->{control}/pattern"
	  or die "proxy: cannot arm the hold: $!";
	$self->_signal('WINCH');
}

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
	my ($listener, $target_port, $control) = @_;
	my $mode    = 'pass';
	my $applied = 'pass';
	my $stop    = 0;
	my %peer;      # socket => its partner
	my %open;      # every open connection socket
	my %client;    # the client's end of each connection
	my %tail;      # a client's last bytes forwarded (a split pattern)
	my ($pattern, $held, $kept, $arm, $release) = (undef, undef, '', 0, 0);
	local $SIG{USR1}  = sub { $mode = 'cut' };
	local $SIG{USR2}  = sub { $mode = 'blackhole' };
	local $SIG{HUP}   = sub { $mode = 'restore' };
	local $SIG{WINCH} = sub { $arm = 1 };
	local $SIG{ALRM}  = sub { $release = 1 };
	local $SIG{TERM}  = sub { $stop = 1 };
	local $SIG{PIPE} = 'IGNORE';
	my $select = IO::Select->new($listener);

	my $close = sub {
		my ($s) = @_;
		return unless defined $s && $open{$s};
		$select->remove($s);
		delete $peer{$s};
		delete $open{$s};
		delete $client{$s};
		delete $tail{$s};
		($held, $kept) = (undef, '') if defined $held && $held == $s;
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
		if ($arm)
		{
			$arm = 0;
			open my $f, '<', "$control/pattern" or die "proxy: $!";
			local $/;
			$pattern = <$f>;
			close $f;
		}
		if ($release)
		{
			$release = 0;
			syswrite($peer{$held}, $kept) if defined $held && length $kept;
			($held, $kept, $pattern) = (undef, '', undef);
			unlink "$control/held";
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
				$client{$client}  = 1;
				$peer{$client}    = $upstream;
				$peer{$upstream}  = $client;
				$select->add($client, $upstream);
				next;
			}
			my $other = $peer{$s};
			my $n = sysread($s, my $buf, 65536);
			if ($n && defined $held && $held == $s)
			{
				$kept .= $buf;
				next;
			}
			if ($n && defined $pattern && !defined $held && $client{$s})
			{
				# Hold from the start of the line that holds the pattern
				# (or from this read, if that line began in an earlier one).
				my $seen = ($tail{$s} // '') . $buf;
				my $at   = index($seen, $pattern);
				if ($at >= 0)
				{
					my $from = rindex($seen, "\n", $at) + 1 - length($tail{$s} // '');
					$from = 0 if $from < 0;
					($held, $kept) = ($s, substr($buf, $from));
					$buf = substr($buf, 0, $from);
					$pattern = undef;
					PostgreSQL::Test::Utils::append_to_file("$control/held", '');
					next if $buf eq '' && defined $other;
				}
				else
				{
					$tail{$s} = substr($seen, -length($pattern));
				}
			}
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
