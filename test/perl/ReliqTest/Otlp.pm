#
# ReliqTest::Otlp - a small OTLP/HTTP (JSON) trace receiver for reliq's
# TAP tests and the demo, in core Perl (IO::Socket::INET, JSON::PP).
#

=pod

=head1 NAME

ReliqTest::Otlp - an OTLP/HTTP receiver on loopback that writes each span
it receives as a line of JSON

=head1 SYNOPSIS

  use ReliqTest::Otlp;

  my $otlp = ReliqTest::Otlp->new(mode => 'ok');    # or 'hang'
  $otlp->start;
  # reliq.otlp_endpoint = $otlp->url
  my $spans = $otlp->spans;    # arrayref of decoded spans
  $otlp->stop;

  my $url = ReliqTest::Otlp::refusing_url();   # a port nobody listens on

  # outside the PostgreSQL::Test framework (the demo):
  ReliqTest::Otlp->new(file => $path, free_port => \&ReliqTest::Local::free_port);

=head1 DESCRIPTION

The receiver is a forked process listening on 127.0.0.1 on a free port
(PostgreSQL::Test::Cluster::get_free_port, unless free_port is given); the listening socket is made
before the fork, so it accepts as soon as start() returns.  It answers
POST /v1/traces (any path, in fact) with 200 and C<{}>, one request per
connection (C<Connection: close>).

Mode C<ok> decodes each ExportTraceServiceRequest as the OTLP JSON encoding
defines it and appends one line per span to the file: { traceId, spanId,
parentSpanId, name, kind, start, end (unix nanoseconds, numbers),
attributes => { key => value } (stringValue, intValue as a number,
boolValue, doubleValue), links => [{traceId, spanId}], status,
resource => { key => value }, scope, headers => { lower-case name => value },
path (of the request) }.

Mode C<discard> answers 200 without decoding or writing anything (the
benchmark: the receiver takes next to no CPU).

Mode C<hang> accepts connections and never answers: an exporter waits
until its timeout.  stop() kills the process by its PID.

=cut

package ReliqTest::Otlp;

use strict;
use warnings;
use Carp;
use IO::Socket::INET;
use JSON::PP;
use POSIX ();

my $json = JSON::PP->new->canonical;

sub new
{
	my ($class, %o) = @_;
	my $self = {
		mode      => $o{mode} // 'ok',
		file      => $o{file},
		free_port => $o{free_port} // \&_free_port,
		port      => undef,
		pid       => undef,
	};
	if (!defined $self->{file})
	{
		require PostgreSQL::Test::Utils;
		$self->{file} = PostgreSQL::Test::Utils::tempdir() . '/spans.jsonl';
	}
	croak "unknown mode $self->{mode}" unless $self->{mode} =~ /^(ok|hang|discard)$/;
	return bless $self, $class;
}

sub url  { return "http://127.0.0.1:$_[0]->{port}"; }
sub port { return $_[0]->{port}; }
sub pid  { return $_[0]->{pid}; }
sub file { return $_[0]->{file}; }

sub _free_port
{
	require PostgreSQL::Test::Cluster;
	return PostgreSQL::Test::Cluster::get_free_port();
}

# A URL on a free port with no listener: connections are refused.
sub refusing_url
{
	return 'http://127.0.0.1:' . _free_port();
}

sub start
{
	my $self = shift;
	my $listener;
	for my $try (1 .. 5)
	{
		$self->{port} = $self->{free_port}->();
		$listener = IO::Socket::INET->new(
			LocalAddr => '127.0.0.1',
			LocalPort => $self->{port},
			Proto     => 'tcp',
			Listen    => 64,
			ReuseAddr => 1);
		last if $listener;
	}
	croak "could not listen for OTLP: $!" unless $listener;
	open(my $touch, '>>', $self->{file}) or croak "$self->{file}: $!";
	close $touch;

	my $pid = fork();
	croak "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		$SIG{TERM} = sub { POSIX::_exit(0) };
		eval { $self->_serve($listener) };
		print STDERR "# OTLP receiver: $@" if $@;
		POSIX::_exit(0);
	}
	close $listener;
	$self->{pid} = $pid;
	return $self;
}

sub stop
{
	my $self = shift;
	return unless $self->{pid};
	kill 'TERM', $self->{pid};
	waitpid($self->{pid}, 0);
	$self->{pid} = undef;
	return;
}

sub DESTROY
{
	my $self = shift;
	local $?;
	$self->stop if $self->{pid} && $$ != $self->{pid};
	return;
}

sub _serve
{
	my ($self, $listener) = @_;
	my @held;
	while (my $conn = $listener->accept)
	{
		if ($self->{mode} eq 'hang')
		{
			push @held, $conn;    # never answered, never closed
			next;
		}
		$self->_handle($conn);
		close $conn;
	}
	return;
}

# One HTTP/1.1 request: headers, a Content-Length body (or chunks).
sub _handle
{
	my ($self, $conn) = @_;
	my $head = '';
	while ($head !~ /\r\n\r\n/)
	{
		my $n = sysread($conn, $head, 4096, length $head);
		return unless $n;
	}
	my ($top, $rest) = split /\r\n\r\n/, $head, 2;
	my @lines = split /\r\n/, $top;
	my $request_line = shift @lines;
	my ($method, $path) = split / /, $request_line // '';
	my %h;
	foreach my $l (@lines)
	{
		$h{ lc $1 } = $2 if $l =~ /^([^:]+):\s*(.*)$/;
	}
	my $body = $rest // '';
	if (defined $h{'content-length'})
	{
		while (length $body < $h{'content-length'})
		{
			my $n = sysread($conn, $body, 65536, length $body);
			last unless $n;
		}
	}
	my $status = '200 OK';
	if ($self->{mode} eq 'ok')
	{
		eval { $self->_record($json->decode($body), \%h, $path); 1 }
		  or $status = '400 Bad Request';
	}
	my $reply = $status =~ /^200/ ? '{}' : '{"error":"bad request"}';
	syswrite($conn,
		    "HTTP/1.1 $status\r\nContent-Type: application/json\r\n"
		  . "Content-Length: "
		  . length($reply)
		  . "\r\nConnection: close\r\n\r\n$reply");
	return;
}

sub _value
{
	my $v = shift;
	return $v->{stringValue} if exists $v->{stringValue};
	return $v->{intValue} + 0 if exists $v->{intValue};
	return $v->{doubleValue} + 0 if exists $v->{doubleValue};
	return $v->{boolValue} ? 1 : 0 if exists $v->{boolValue};
	return undef;
}

sub _attributes
{
	my $list = shift // [];
	return { map { $_->{key} => _value($_->{value}) } @$list };
}

sub _record
{
	my ($self, $req, $headers, $path) = @_;
	my @out;
	foreach my $rs (@{ $req->{resourceSpans} // [] })
	{
		my $resource = _attributes($rs->{resource}{attributes});
		foreach my $ss (@{ $rs->{scopeSpans} // [] })
		{
			foreach my $s (@{ $ss->{spans} // [] })
			{
				push @out,
				  $json->encode(
					{
						traceId      => $s->{traceId},
						spanId       => $s->{spanId},
						parentSpanId => $s->{parentSpanId} // '',
						name         => $s->{name},
						kind         => $s->{kind},
						start        => $s->{startTimeUnixNano} + 0,
						end          => $s->{endTimeUnixNano} + 0,
						attributes   => _attributes($s->{attributes}),
						links        => [
							map { { traceId => $_->{traceId}, spanId => $_->{spanId} } }
							  @{ $s->{links} // [] }
						],
						status   => $s->{status} // {},
						resource => $resource,
						scope    => $ss->{scope}{name},
						headers  => $headers,
						path     => $path,
					});
			}
		}
	}
	open(my $fh, '>>', $self->{file}) or die "$self->{file}: $!";
	print $fh map { "$_\n" } @out;
	close $fh;
	return;
}

# Every span received so far (decoded lines of the file).
sub spans
{
	my $self = shift;
	open(my $fh, '<', $self->{file}) or return [];
	my @spans;
	while (my $l = <$fh>)
	{
		chomp $l;
		next if $l eq '';
		push @spans, eval { $json->decode($l) } // next;
	}
	close $fh;
	return \@spans;
}

1;
