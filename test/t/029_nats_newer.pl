# Newer NATS, used where present, never required.  With the nats-server
# RELIQ_NATS_SERVER names (2.15 in CI's newer cell; Debian 12's 2.9
# otherwise):
#
#  - messages flow, whatever ack subject layout the server sends (the one
#    parser, src/message.c; its cases are in sql/ack_subject.sql);
#  - 2.10+: the durable consumer's metadata names the owning instance and
#    its lease epoch, and follows a new owner; older: no metadata;
#  - 2.11+: pausing a subscription pauses its consumer on the server, which
#    stays paused while this cluster is down and after it restarts, and
#    resuming resumes it; older: the consumer is never paused.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use ReliqTest::Nats;
use ReliqTest::Node;

my $server = ReliqTest::Nats::_server_path();
my ($major, $minor) = (`$server --version` =~ /v(\d+)\.(\d+)\./);
ok(defined $minor, "nats-server version read: $major.$minor") or BAIL_OUT('no version');
my $has_metadata = $major > 2 || ($major == 2 && $minor >= 10);
my $has_pause    = $major > 2 || ($major == 2 && $minor >= 11);

my $nats = ReliqTest::Nats->new(name => 'newer');
$nats->start;
$nats->stream_create('NEWER', ['newer.>']);

my $node = reliq_node('newer', $nats);
$node->safe_psql('postgres', q{
	CREATE TABLE got (id int, seq bigint);
	CREATE FUNCTION on_n(m reliq.message) RETURNS void LANGUAGE sql AS $$
		INSERT INTO got VALUES ((reliq.message_json(m)->>'id')::int, m.stream_seq)
	$$;
	SELECT reliq.create_subscription('n', stream => 'NEWER', subject => 'newer.>',
	       handler => 'on_n(reliq.message)'::regprocedure, batch_size => 10);
});

$nats->publish('newer.x', count => 20, start => 1, payload => '{"id":%d}', msg_id => 'n-%d');
ok(wait_idle($node, 'n'), 'drained');
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id), sum(seq) FROM got'),
	'20|20|210', "each message once, with its stream sequence parsed from the server's ack subject");

# The instance in the lease holder's description, as the consumer should name it.
sub lease_instance
{
	my $holder = $node->safe_psql('postgres',
		q{SELECT lease_holder FROM reliq.subscription_stats WHERE subscription_name = 'n'});
	return $holder =~ /instance ([0-9a-f]{16})/ ? $1 : "none in '$holder'";
}

# The consumer on the server: the durable name for the first owner, a name
# of its own for each later one (a restart is a new owner).
sub in_use
{
	my $name = $node->safe_psql('postgres',
		q{SELECT consumer_in_use FROM reliq.subscription_stats WHERE subscription_name = 'n'});
	return $name eq '' ? 'reliq_n' : $name;
}

sub metadata
{
	my $ci = $nats->consumer_info('NEWER', in_use());
	return $ci ? ($ci->{config}{metadata} // {}) : {};
}

# Wait (up to 30 s) until $check->() holds; returns its last value.
sub eventually
{
	my ($check) = @_;
	my $ok;
	for (1 .. 150)
	{
		last if ($ok = $check->());
		sleep 0.2;
	}
	return $ok;
}

my $first_instance;
SKIP:
{
	skip "nats-server $major.$minor has no consumer metadata (2.10+)", 4 unless $has_metadata;

	$first_instance = lease_instance();
	like($first_instance, qr/^[0-9a-f]{16}$/, 'the lease names this instance');
	my $md = metadata();
	is($md->{'reliq.instance'}, $first_instance, 'consumer metadata reliq.instance names the owner');
	like($md->{'reliq.epoch'} // '', qr/^[1-9][0-9]*$/, "consumer metadata reliq.epoch is the lease's ($md->{'reliq.epoch'})");
	ok(!grep({ /^reliq\./ && $_ ne 'reliq.instance' && $_ ne 'reliq.epoch' } keys %$md),
		'no other reliq keys');
}
if (!$has_metadata)
{
	ok(!exists metadata()->{'reliq.instance'}, "nats-server $major.$minor: no metadata written");
}

# Pause.
$node->safe_psql('postgres', q{SELECT reliq.alter_subscription('n', enabled => false)});
ok(wait_for($node, q{SELECT count(*) = 0 FROM reliq.worker_status WHERE subscription_name = 'n'}),
	'paused: no worker');
SKIP:
{
	skip "nats-server $major.$minor cannot pause consumers (2.11+)", 9 unless $has_pause;

	ok(eventually(sub { ($nats->consumer_info('NEWER', 'reliq_n') // {})->{paused} }),
		'the consumer is paused on the server');
	like($nats->consumer_info('NEWER', 'reliq_n')->{config}{pause_until} // '', qr/^2100-/,
		'until far in the future');
	ok(eventually(sub { slurp_file($node->logfile) =~ /consumer "reliq_n" paused on the server/ }),
		'the monitor says so');

	# Stays paused while this cluster is down, and after it is back.
	$nats->publish('newer.x', count => 10, start => 21, payload => '{"id":%d}', msg_id => 'n-%d');
	$node->stop;
	my $ci = $nats->consumer_info('NEWER', 'reliq_n');
	ok($ci->{paused}, 'still paused with the cluster down');
	is($ci->{num_pending}, 10, 'the new messages wait on the server');
	$node->start;
	sleep 3;    # a few monitor rounds
	ok(eventually(sub { in_use() ne 'reliq_n' }), 'the restarted cluster made a consumer of its own');
	ok(eventually(sub { ($nats->consumer_info('NEWER', in_use()) // {})->{paused} }),
		"still paused after the restart (the new owner's consumer)");
	is($node->safe_psql('postgres', 'SELECT count(*) FROM got'), '20', 'nothing consumed meanwhile');

	# Resume.
	$node->safe_psql('postgres', q{SELECT reliq.alter_subscription('n', enabled => true)});
	ok(eventually(sub { !($nats->consumer_info('NEWER', in_use()) // { paused => 1 })->{paused} }),
		'resumed on the server');
	ok(eventually(sub { $node->safe_psql('postgres', 'SELECT count(*) FROM got') eq '30' }),
		'the waiting messages are consumed after resuming');
}
if (!$has_pause)
{
	sleep 3;    # a few monitor rounds
	ok(!$nats->consumer_info('NEWER', 'reliq_n')->{paused},
		"nats-server $major.$minor: the consumer is not paused on the server");
	$node->stop;
	$node->start;
	$node->safe_psql('postgres', q{SELECT reliq.alter_subscription('n', enabled => true)});
	$nats->publish('newer.x', count => 10, start => 21, payload => '{"id":%d}', msg_id => 'n-%d');
	ok(eventually(sub { $node->safe_psql('postgres', 'SELECT count(*) FROM got') eq '30' }),
		'resumed: consumed after a restart');
}

# The restarted cluster is another instance: the metadata follows the owner.
SKIP:
{
	skip "nats-server $major.$minor has no consumer metadata (2.10+)", 2 unless $has_metadata;

	my $instance = lease_instance();
	isnt($instance, $first_instance, 'the restarted cluster is another instance');
	ok(eventually(sub { (metadata()->{'reliq.instance'} // '') eq $instance }),
		'the metadata names the new owner')
	  or diag explain metadata();
}
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id) FROM got'), '30|30',
	'every message exactly once');

$node->stop;
done_testing();
