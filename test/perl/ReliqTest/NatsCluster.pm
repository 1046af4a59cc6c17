#
# ReliqTest::NatsCluster - a real three-node nats-server JetStream cluster
# for reliq's TAP tests.
#

=pod

=head1 NAME

ReliqTest::NatsCluster - a nats-server JetStream cluster (default three
nodes) on loopback for reliq's TAP tests

=head1 SYNOPSIS

  use ReliqTest::NatsCluster;
  use ReliqTest::Node;

  my $cluster = ReliqTest::NatsCluster->new(name => 'js');
  $cluster->start;                      # waits until the cluster is formed
  my $node = reliq_node('pg', $cluster); # reliq.nats_url = all three URLs

  $cluster->stream_create('ORD', ['ord.>']);   # R3 unless num_replicas given
  my $h = $cluster->publish_bg('ord.in', count => 1000, msg_id => 'o-%d',
      rate => 200, retry_for => 120);          # reconnects to any node

  my $leader = $cluster->stream_leader('ORD'); # a ReliqTest::Nats, or undef
  my $srv = $cluster->connected_server_of('reliq worker #0');
  $cluster->kill9($srv);                       # SIGKILL by PID
  $cluster->start($srv);                       # waits until it rejoined
  $cluster->wait_stream_current('ORD');        # every replica caught up
  $cluster->wait_publish($h);
  $cluster->stop;                              # every node

=head1 DESCRIPTION

Each node is a ReliqTest::Nats (so its own log file nats_NAME_nK.log in
the test log directory, its own JetStream store directory, server_name
NAME_nK, started in the background and only ever signalled by its PID,
stopped when the test ends), with extra configuration:

  http: 127.0.0.1:HTTP_PORT          # monitoring: /jsz, /connz, /routez
  cluster {
    name: NAME
    listen: 127.0.0.1:CLUSTER_PORT
    routes: [ the other nodes' cluster ports ]
  }

All ports come from PostgreSQL::Test::Cluster::get_free_port.

C<url> is the comma-separated list of the nodes' client URLs, which is
what reliq.nats_url and natstool's --url accept, so the object can be
given to ReliqTest::Node's reliq_node in place of a ReliqTest::Nats.

The JetStream API helpers of ReliqTest::Nats (js_api, request,
stream_create, stream_info, stream_delete, stream_purge, stream_messages,
consumer_create, consumer_info, consumer_delete, publish, publish_bg,
wait_publish) are available on the cluster object too and go through
natstool with the whole URL list: natstool connects to any running node
and, when publishing, reconnects to another one and resends what was not
acknowledged (same Nats-Msg-Id, so nothing is stored twice).  A JetStream
API request can still fail while a leader is being elected: callers that
make one right after a kill should be ready for that (see wait_*).

Nothing here asserts on timing: waits are bounded only to turn a hang into
an error (they die with the tail of the node logs).

=cut

package ReliqTest::NatsCluster;

use strict;
use warnings;

use Carp;
use HTTP::Tiny;
use JSON::PP;
use Scalar::Util qw(blessed weaken);
use Time::HiRes qw(usleep time);

use PostgreSQL::Test::Cluster ();
use ReliqTest::Nats;

# Seconds to wait for the cluster to form, or a node to rejoin it.
our $READY_TIMEOUT = 90;

# The stream made (and deleted) once at start to prove that the cluster
# can place a replicated stream on every node.
our $PROBE_STREAM = 'RELIQ_CLUSTER_PROBE';

my $json = JSON::PP->new->canonical->allow_nonref;
my $http = HTTP::Tiny->new(timeout => 2);

my @all_clusters;    # weak references, for END

=pod

=head1 METHODS

=over

=item ReliqTest::NatsCluster->new(name => NAME, size => N, extra_conf => TEXT)

Creates the nodes (NAME defaults to "jsc", N to 3); starts nothing.
EXTRA_CONF is appended to every node's configuration.

=cut

sub new
{
	my ($class, %args) = @_;
	my $name = $args{name} // 'jsc';
	my $size = $args{size} // 3;

	croak "invalid cluster name \"$name\"" unless $name =~ /^[A-Za-z0-9_-]+$/;
	croak "a cluster wants at least 2 nodes" unless $size >= 2;

	my @cport = map { PostgreSQL::Test::Cluster::get_free_port() } 1 .. $size;
	my @hport = map { PostgreSQL::Test::Cluster::get_free_port() } 1 .. $size;
	my @nodes;
	for my $i (0 .. $size - 1)
	{
		my @routes = map { "\"nats-route://127.0.0.1:$cport[$_]\"" }
		  grep { $_ != $i } 0 .. $size - 1;
		my $conf = join("\n",
			"http: \"127.0.0.1:$hport[$i]\"",
			"cluster {",
			"  name: \"$name\"",
			"  listen: \"127.0.0.1:$cport[$i]\"",
			"  routes: [ " . join(', ', @routes) . " ]",
			"}",
			$args{extra_conf} // '');
		my $n = ReliqTest::Nats->new(
			name       => "${name}_n" . ($i + 1),
			extra_conf => $conf);
		$n->{cluster_port} = $cport[$i];
		$n->{http_port}    = $hport[$i];
		$n->{index}        = $i;
		push @nodes, $n;
	}

	my $self = bless { name => $name, nodes => \@nodes }, $class;
	# A client of the whole cluster: ReliqTest::Nats's natstool helpers
	# with the URL list (never started, nothing to stop but publishers).
	$self->{client} = bless {
		name        => "${name}_client",
		cluster     => $self->url,
		client_args => [],
		scheme      => 'nats',
		pid         => undef,
		owner       => $$,
		bg          => {},
		logfile     => $nodes[0]->logfile,
	}, 'ReliqTest::NatsCluster::Client';
	push @all_clusters, $self;
	weaken($all_clusters[-1]);
	return $self;
}

=pod

=item Accessors

C<url>: "nats://127.0.0.1:P1,nats://127.0.0.1:P2,..." (every node, running
or not).  C<urls>: the same as a list.  C<nodes>: the ReliqTest::Nats
objects.  C<name>.  C<node(SPEC)>: a node from its index (0-based), its
server_name, or the object itself.  C<http_url(SPEC)>: its monitoring
address.  C<running_nodes>.

=cut

sub name  { return $_[0]->{name}; }
sub nodes { return @{ $_[0]->{nodes} }; }
sub urls  { return map { $_->url } @{ $_[0]->{nodes} }; }
sub url   { my $self = shift; return join(',', $self->urls); }

sub node
{
	my ($self, $spec) = @_;
	croak "node: no node given" unless defined $spec;
	return $spec if blessed($spec) && $spec->isa('ReliqTest::Nats');
	if ($spec =~ /^\d+$/)
	{
		my $n = $self->{nodes}[$spec];
		croak "node: no node number $spec" unless $n;
		return $n;
	}
	foreach my $n (@{ $self->{nodes} })
	{
		return $n if $n->name eq $spec;
	}
	croak "node: no node named \"$spec\"";
}

sub http_url
{
	my ($self, $spec) = @_;
	return "http://127.0.0.1:" . $self->node($spec)->{http_port};
}

sub running_nodes
{
	my $self = shift;
	return grep { $_->is_running } @{ $self->{nodes} };
}

=pod

=item $cluster->monitor(SPEC, PATH)

GET PATH (e.g. "/jsz", "/connz?limit=1024") from a node's monitoring port;
the decoded JSON, or undef when the node does not answer.

=cut

sub monitor
{
	my ($self, $spec, $path) = @_;
	my $n = $self->node($spec);
	return undef unless $n->is_running;
	my $r = $http->get($self->http_url($n) . $path);
	return undef unless $r->{success};
	return eval { $json->decode($r->{content}) };
}

=pod

=item $cluster->meta_leader

The node that is the JetStream meta leader, as the running nodes see it
(undef when none is known).

=cut

sub meta_leader
{
	my $self = shift;
	foreach my $n ($self->running_nodes)
	{
		my $jsz = $self->monitor($n, '/jsz') or next;
		my $l = $jsz->{meta_cluster}{leader};
		next unless defined $l && $l ne '';
		my ($node) = grep { $_->name eq $l } @{ $self->{nodes} };
		return $node if $node && $node->is_running;
	}
	return undef;
}

# Why the cluster is not ready yet (a string), or undef when it is: every
# running node answers $JS.API.INFO through its own URL and has routes to
# every other running node, and the meta leader counts every running node
# as a current peer.
sub _not_ready
{
	my $self    = shift;
	my @running = $self->running_nodes;

	return 'no node is running' unless @running;
	foreach my $n (@running)
	{
		my ($ok, $out, $err) =
		  $n->_natstool([ 'request', '$JS.API.INFO' ], timeout_ms => 1000);
		my $r = $ok ? eval { $json->decode($out) } : undef;
		return $n->name . ": \$JS.API.INFO: " . ($ok ? $out : $err)
		  unless $r && !$r->{error};
		my $routez = $self->monitor($n, '/routez')
		  or return $n->name . ': no answer on /routez';
		return $n->name . ": $routez->{num_routes} routes"
		  if ($routez->{num_routes} // 0) < @running - 1;
	}
	my $leader = $self->meta_leader or return 'no meta leader';
	my $jsz = $self->monitor($leader, '/jsz')
	  or return 'meta leader ' . $leader->name . ' does not answer /jsz';
	my %current = map { ($_->{name} => $_->{current} ? 1 : 0) }
	  @{ $jsz->{meta_cluster}{replicas} // [] };
	foreach my $n (@running)
	{
		next if $n == $leader;
		return 'meta leader ' . $leader->name . ' does not count ' . $n->name
		  . ' as current' unless $current{ $n->name };
	}
	return undef;
}

sub _logs_tail
{
	my $self = shift;
	return join('', map { $_->_log_tail(15) } @{ $self->{nodes} });
}

# Poll $check (returns a true value when done) until $timeout s; dies with
# $what and the node logs' tails.
sub _wait
{
	my ($self, $what, $timeout, $check) = @_;
	my $deadline = time() + $timeout;
	my $last;
	while (1)
	{
		my $r = eval { $check->() };
		$last = $@ if $@;
		return $r if $r;
		last if time() > $deadline;
		usleep(200_000);
	}
	croak "cluster $self->{name}: $what not reached within $timeout s"
	  . ($last ? " (last error: $last)" : '') . "\n" . $self->_logs_tail;
}

=pod

=item $cluster->wait_ready(timeout => S)

Waits until every running node answers C<$JS.API.INFO> through its own
URL, has routes to all the other running nodes, and the meta leader
counts every running node as a current peer.  Dies after S (default
$READY_TIMEOUT) seconds.

=cut

sub wait_ready
{
	my ($self, %o) = @_;
	my $why;
	$self->_wait('a formed cluster', $o{timeout} // $READY_TIMEOUT, sub {
		$why = $self->_not_ready;
		die "$why\n" if defined $why;
		return 1;
	});
	return $self;
}

=pod

=item $cluster->start, $cluster->start(SPEC)

Without SPEC: starts every node that is not running, waits until the
cluster is formed (wait_ready), then creates and deletes a throwaway
stream replicated on every node ($PROBE_STREAM), retrying until the
cluster accepts it.  With SPEC: starts that node and waits until it has
rejoined (wait_ready).

=item $cluster->stop, $cluster->stop(SPEC)

SIGTERM then (after ReliqTest::Nats's $STOP_TIMEOUT) SIGKILL to every
node's PID, or to that node's.

=item $cluster->kill9(SPEC), $cluster->restart(SPEC)

SIGKILL to that node's PID (reaped); stop and start one node (same
ports, same store) and wait until it has rejoined.

=cut

sub start
{
	my ($self, $spec) = @_;

	if (defined $spec)
	{
		my $n = $self->node($spec);
		$n->start(wait => 0);
		$self->wait_ready;
		return $n;
	}
	foreach my $n (@{ $self->{nodes} })
	{
		$n->start(wait => 0) unless $n->is_running;
	}
	$self->wait_ready;

	my $size = scalar @{ $self->{nodes} };
	$self->_wait("a stream with $size replicas", $READY_TIMEOUT, sub {
		my $r = $self->js_api("STREAM.CREATE.$PROBE_STREAM",
			{
				name         => $PROBE_STREAM,
				subjects     => ['_reliq_cluster_probe.>'],
				storage      => 'file',
				num_replicas => $size
			},
			allow_error => 1);
		return 1 if !$r->{error};
		# created by an earlier attempt whose reply was lost
		return 1 if ($r->{error}{err_code} // 0) == 10058;
		die "$r->{error}{description}\n";
	});
	$self->_wait("a leader for $PROBE_STREAM", $READY_TIMEOUT,
		sub { return $self->stream_leader($PROBE_STREAM); });
	$self->_wait("deleting $PROBE_STREAM", $READY_TIMEOUT, sub {
		my $r = $self->stream_delete($PROBE_STREAM, allow_error => 1);
		return 1 if !$r->{error} || ($r->{error}{err_code} // 0) == 10059;
		die "$r->{error}{description}\n";
	});
	return $self;
}

sub stop
{
	my ($self, $spec) = @_;
	if (defined $spec)
	{
		$self->node($spec)->stop;
		return;
	}
	$self->{client}->_cleanup;
	$_->stop foreach @{ $self->{nodes} };
	return;
}

sub kill9
{
	my ($self, $spec) = @_;
	croak 'kill9: which node?' unless defined $spec;
	$self->node($spec)->kill9;
	return;
}

sub restart
{
	my ($self, $spec) = @_;
	croak 'restart: which node? (stop and start restart them all)'
	  unless defined $spec;
	$self->node($spec)->stop;
	return $self->start($spec);
}

=pod

=item $cluster->stream_leader($stream)

The node that leads the stream now (from C<$JS.API.STREAM.INFO>'s
cluster.leader), or undef when there is none (an election going on) or
the API does not answer.

=item $cluster->wait_stream_leader($stream, timeout => S)

Waits for a stream leader that is a running node and returns it.

=item $cluster->wait_stream_current($stream, timeout => S)

Waits until the stream has a leader and every other replica it should
have is listed as current (caught up).  Returns the leader.

=item $cluster->wait_consumer_current($stream, $consumer, timeout => S)

The same for a durable consumer (its replicas: as many as the stream's
unless the consumer says otherwise).

=item $cluster->consumer_leader($stream, $consumer)

The node that leads the consumer now, or undef.

=cut

sub stream_leader
{
	my ($self, $stream) = @_;
	my $info = eval { $self->stream_info($stream) } or return undef;
	my $l = $info->{cluster}{leader};
	return undef unless defined $l && $l ne '';
	my ($n) = grep { $_->name eq $l } @{ $self->{nodes} };
	return $n;
}

sub wait_stream_leader
{
	my ($self, $stream, %o) = @_;
	return $self->_wait("a running leader for stream $stream",
		$o{timeout} // $READY_TIMEOUT, sub {
			my $l = $self->stream_leader($stream);
			return $l && $l->is_running ? $l : undef;
		});
}

# Leader node when the info's cluster part shows a leader and $want
# current replicas besides it; dies with the reason otherwise.
sub _current_leader
{
	my ($self, $info, $want) = @_;
	my $c = $info->{cluster} // {};
	die "no leader\n" unless $c->{leader};
	my @cur = grep { $_->{current} } @{ $c->{replicas} // [] };
	die scalar(@cur) . " of $want replicas current\n" if @cur < $want;
	my ($n) = grep { $_->name eq $c->{leader} } @{ $self->{nodes} };
	die "leader $c->{leader} is not running\n" unless $n && $n->is_running;
	return $n;
}

sub wait_stream_current
{
	my ($self, $stream, %o) = @_;
	return $self->_wait("every replica of stream $stream current",
		$o{timeout} // $READY_TIMEOUT, sub {
			my $info = $self->stream_info($stream);
			return $self->_current_leader($info,
				($info->{config}{num_replicas} // 1) - 1);
		});
}

sub wait_consumer_current
{
	my ($self, $stream, $consumer, %o) = @_;
	return $self->_wait("every replica of consumer $stream/$consumer current",
		$o{timeout} // $READY_TIMEOUT, sub {
			my $info = $self->consumer_info($stream, $consumer)
			  or die "no consumer $consumer\n";
			# consumer num_replicas 0: as many as the stream
			my $r = $info->{config}{num_replicas}
			  || $self->stream_info($stream)->{config}{num_replicas} // 1;
			return $self->_current_leader($info, $r - 1);
		});
}

sub consumer_leader
{
	my ($self, $stream, $consumer) = @_;
	my $info = eval { $self->consumer_info($stream, $consumer) } or return undef;
	my $l = $info->{cluster}{leader};
	return undef unless defined $l && $l ne '';
	my ($n) = grep { $_->name eq $l } @{ $self->{nodes} };
	return $n;
}

=pod

=item $cluster->connections

The client connections of every running node, from its /connz: a list of
hashrefs (the /connz entries: name, cid, ip, port, ...) with C<server>
added (the node).

=item $cluster->connected_server_of($client_name)

The node a client connection named $client_name (a string compared as it
is, or a qr// pattern) is connected to now, or undef.  reliq names its
connections "reliq SUBSCRIPTION #N" (workers), "reliq monitor" and "reliq
backend PID".

=item $cluster->reliq_connections

{ connection name => node name } for every connection whose name starts
with "reliq ".

=cut

sub connections
{
	my $self = shift;
	my @all;
	foreach my $n ($self->running_nodes)
	{
		my $c = $self->monitor($n, '/connz?limit=4096') or next;
		push @all, map { { %$_, server => $n } } @{ $c->{connections} // [] };
	}
	return @all;
}

sub connected_server_of
{
	my ($self, $client_name) = @_;
	foreach my $c ($self->connections)
	{
		my $name = $c->{name} // next;
		my $hit = ref $client_name eq 'Regexp'
		  ? $name =~ $client_name
		  : $name eq $client_name;
		return $c->{server} if $hit;
	}
	return undef;
}

sub reliq_connections
{
	my $self = shift;
	my %by_name;
	foreach my $c ($self->connections)
	{
		next unless ($c->{name} // '') =~ /^reliq /;
		$by_name{ $c->{name} } = $c->{server}->name;
	}
	return \%by_name;
}

=pod

=item JetStream helpers through the whole URL list

js_api, request, stream_info, stream_delete, stream_purge,
stream_messages, consumer_create, consumer_info, consumer_delete, publish,
publish_bg, wait_publish: as in ReliqTest::Nats.  stream_create makes
num_replicas the cluster size unless given.

=back

=cut

sub stream_create
{
	my ($self, $name, $subjects, %config) = @_;
	$config{num_replicas} //= scalar @{ $self->{nodes} };
	return $self->{client}->stream_create($name, $subjects, %config);
}

foreach my $m (qw(js_api request stream_info stream_delete stream_purge
	stream_messages consumer_create consumer_info consumer_delete publish
	publish_bg wait_publish))
{
	no strict 'refs';
	*{$m} = sub { my $self = shift; return $self->{client}->$m(@_); };
}

sub DESTROY
{
	my $self = shift;
	local ($?, $@, $!);
	# the nodes stop themselves (ReliqTest::Nats's DESTROY and END)
	$self->{client}->_cleanup if $self->{client};
	return;
}

# Background publishers first (the nodes stop themselves in
# ReliqTest::Nats's END).
END
{
	local ($?, $@, $!);
	foreach my $c (@all_clusters)
	{
		$c->{client}->_cleanup if defined $c && $c->{client};
	}
}

package ReliqTest::NatsCluster::Client;

use strict;
use warnings;

our @ISA = ('ReliqTest::Nats');

sub url { return $_[0]->{cluster}; }

1;
