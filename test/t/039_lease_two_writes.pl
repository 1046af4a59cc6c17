# The two-write race of a take-over (issue 19, item 4).
#
# A taker writes over the owner's heartbeat ("revoked"), then writes the
# owner key at the revision it read: two writes.  An owner whose renewal
# failed reads its owner keys again; read between the taker's two writes,
# the owner key still names it.  If that read were its confirmation, it
# would go on consuming, the taker's write would land as well, and two
# clusters would consume the same stream.  The owner confirms with a write
# at the revision it read instead: exactly one of the two writes can win.
#
# Here the race is forced.  The original (A) talks to nats-server directly,
# its physical copy (B, a base backup started as a primary) through a proxy
# of the test harness.  reliq.take_over() on B: its revoke passes, and the
# proxy holds B's connection from its owner-key write on.  A's renewal fails
# and A reads its owner key, which still names it; only then does the proxy
# release B's write.  A must have written its owner key meanwhile (B's late
# write then fails on the revision); B's retried take-over then revokes A
# again, and A stops.  Without the write, A keeps consuming after B took
# the lease, and never learns it lost it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);
use MIME::Base64 qw(decode_base64);
use ReliqTest::Nats;
use ReliqTest::Node;
use ReliqTest::Proxy;
use ReliqTest::Replication;

my $nats = ReliqTest::Nats->new(name => 'twowrites');
$nats->start;
my $proxy = ReliqTest::Proxy->new(
	target_port => $nats->port,
	port        => PostgreSQL::Test::Cluster::get_free_port())->start;

$nats->stream_create('RACE', ['race.>']);
my $owner_subject = '$KV.reliq_leases.RACE.reliq_race';

# The owner key as the lease bucket's leader has it: (revision, instance).
sub owner_key
{
	my $r = $nats->js_api('STREAM.MSG.GET.KV_reliq_leases',
		{ last_by_subj => $owner_subject });
	my $value = decode_base64($r->{message}{data} // '');
	my ($instance) = $value =~ /"instance":"([^"]*)"/;
	return ($r->{message}{seq}, $instance // '');
}

sub state_of
{
	my ($node) = @_;
	my ($ret, $out) = $node->psql('postgres',
		"SELECT state FROM reliq.subscription_stats WHERE subscription_name = 'race'");
	return $ret == 0 ? $out : '(failed)';
}

sub publish
{
	my ($from, $to) = @_;
	$nats->publish('race.m', count => $to - $from + 1, start => $from,
		payload => '{"id":%d}', msg_id => 'race-%d');
}

my $a = reliq_primary('race_a', $nats);
$a->safe_psql('postgres', q{
	-- no unique constraint: a message applied twice shows up as two rows
	CREATE TABLE applied (id int);
	CREATE FUNCTION apply(m reliq.message) RETURNS void LANGUAGE sql AS $$
		INSERT INTO applied VALUES ((reliq.message_json(m)->>'id')::int)
	$$;
	SELECT reliq.create_subscription('race', stream => 'RACE', subject => 'race.>',
	       handler => 'apply(reliq.message)'::regprocedure, batch_size => 20,
	       ack_wait => '3s');
});
publish(1, 100);
ok(wait_for($a, 'SELECT count(*) = 100 FROM applied'), 'A applies');
my $a_instance = (owner_key())[1];
ok($a_instance ne '', "A holds the owner key ($a_instance)");

# B: a copy of A through the proxy.  Its pings are answered by nobody while
# it is held: reliq.nats_timeout (its ping interval and request timeout)
# is long enough for the hold, and for its held write to be answered.
$a->backup('copy');
my $b = PostgreSQL::Test::Cluster->new('race_b');
$b->init_from_backup($a, 'copy');    # no standby.signal: a primary
$b->append_conf('postgresql.conf', sprintf(<<'CONF', $proxy->url));
reliq.nats_url = '%s'
reliq.nats_timeout = 15000
CONF
$b->start;
ok(wait_for($b, "SELECT state = 'fenced' FROM reliq.subscription_stats WHERE subscription_name = 'race'", 60),
	'B is fenced while A renews');

# The race: B's take-over, its owner-key write held.
my ($before, $holder) = owner_key();
# A write is a publish to the key's subject ("PUB" or "HPUB" at the start
# of a line); a read names the subject after the direct-get API's prefix.
$proxy->hold_on("PUB $owner_subject ");
$b->safe_psql('postgres', "SELECT reliq.take_over('race')");
my $deadline = time + 30;
sleep 0.05 until $proxy->holding || time > $deadline;
ok($proxy->holding, "B's owner-key write is held (its revoke went through)");
is($holder, $a_instance, 'the owner key named A before');

# A's renewal fails on the revoked heartbeat; it reads its owner key (still
# naming it) and confirms it by a write.  Wait well past a renewal or two.
my ($revision, $names) = owner_key();
$deadline = time + 10;
while (time < $deadline && $revision == $before)
{
	sleep 0.1;
	($revision, $names) = owner_key();
}
ok($revision > $before, "A wrote its owner key while B's write was held (revision $before -> $revision)");
is($names, $a_instance, 'the owner key still names A');
ok($proxy->holding, 'B is still held');

# B's late write lands now: at the revision it read, it must fail.
$proxy->release;
ok(!$proxy->holding, 'released');

# B's take-over is tried again and revokes A once more: A stops, B owns.
ok(wait_for($b, "SELECT state = 'running' FROM reliq.subscription_stats WHERE subscription_name = 'race'", 60),
	'B took the lease in the end');
ok(wait_for($a, "SELECT state = 'fenced' FROM reliq.subscription_stats WHERE subscription_name = 'race'", 30),
	'A knows it lost it');
isnt((owner_key())[1], $a_instance, 'the owner key names B, not A');

# From now on only B consumes.  Sampled while messages flow, A is never
# running again.
my ($samples, $a_running) = (0, 0);
for my $i (1 .. 20)
{
	publish(100 + 5 * ($i - 1) + 1, 100 + 5 * $i);
	sleep 0.25;
	$samples++;
	$a_running++ if state_of($a) eq 'running';
}
is($a_running, 0, "A was not running in any of $samples samples");
ok(wait_for($b, 'SELECT count(DISTINCT id) = 200 FROM applied', 60), 'B applied every message');
ok(wait_idle($b, 'race', 60), 'B is idle');
is($b->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id), min(id), max(id) FROM applied'),
	'200|200|1|200', 'each message exactly once on B');
is($a->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id), max(id) FROM applied'),
	'100|100|100', 'A applied nothing published after the take-over');

$b->stop;
$a->stop;
$proxy->stop;
$nats->stop;
done_testing();
