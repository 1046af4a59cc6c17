# The lease's holes (issue 19), each case failing without its fix:
#
#   a. settings drift: an original renewing with reliq.lease_ttl = 10s and
#      a physical copy of it (a base backup started as a primary) with 1s.
#      The copy must stay fenced and the original must never stop: the
#      taker waits for the owner's ttl, which travels with its heartbeat.
#   b. a restart during an acquisition: reliq.take_over() on that copy,
#      and its monitor killed (SIGKILL: the server crash-restarts) once
#      the acquisition has begun.  The copy must still wait for the
#      original and rewind: it ends with every message, each once,
#      including those only the original had applied since the copy.
#   c. a restart in place: with reliq.lease_ttl = 60s, an immediate stop
#      and a start of the same server.  Its earlier run is gone (the same
#      data directory, machine and boot), so the lease is taken at once
#      with a rewind, not after 60 s.
#   d. reliq.take_over() on a work-queue stream: refused (its consumer
#      cannot be rewound), with the loss named; force => true takes it.
#   e. an owner of four subscriptions stops without releasing its leases
#      (an immediate stop) while another cluster waits: once the former
#      heartbeat has stood still for a lease_ttl, all four are taken in
#      one go, not one per lease_ttl (each take used to start the wait
#      anew).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);
use ReliqTest::Nats;
use ReliqTest::Node;
use ReliqTest::Replication;

my $nats = ReliqTest::Nats->new(name => 'leaseholes');
$nats->start;

my $setup = q{
	-- no unique constraint: a message applied twice shows up as two rows
	CREATE TABLE applied (id int, seq bigint);
	CREATE FUNCTION apply(m reliq.message) RETURNS void LANGUAGE sql AS $$
		INSERT INTO applied (id, seq) VALUES ((reliq.message_json(m)->>'id')::int, m.stream_seq)
	$$;
	SELECT reliq.create_subscription('%s', stream => '%s', subject => '%s.>',
	       handler => 'apply(reliq.message)'::regprocedure, batch_size => 20,
	       ack_wait => '3s');
};

sub rows
{
	my ($node) = @_;
	return $node->safe_psql('postgres', 'SELECT count(*) FROM applied');
}

sub state_of
{
	my ($node, $sub) = @_;
	my ($ret, $out) = $node->psql('postgres',
		"SELECT state FROM reliq.subscription_stats WHERE subscription_name = '$sub'");
	return $ret == 0 ? $out : '(failed)';
}

sub publish
{
	my ($subject, $from, $to) = @_;
	$nats->publish($subject, count => $to - $from + 1, start => $from,
		payload => '{"id":%d}', msg_id => "$subject-%d");
}

# a. Settings drift.
$nats->stream_create('DRIFT', ['drift.>']);
my $orig = reliq_primary('drift_original', $nats, conf => "reliq.lease_ttl = '10s'\n");
$orig->safe_psql('postgres', sprintf($setup, 'drift', 'DRIFT', 'drift'));
publish('drift.a', 1, 200);
ok(wait_for($orig, 'SELECT count(*) = 200 FROM applied'), 'a: the original applies');

$orig->backup('copy');
my $copy = PostgreSQL::Test::Cluster->new('drift_copy');
$copy->init_from_backup($orig, 'copy');    # no standby.signal: a primary
$copy->append_conf('postgresql.conf', "reliq.lease_ttl = '1s'\n");
$copy->start;
my $baseline = rows($copy);
ok(wait_for($copy, "SELECT state = 'fenced' FROM reliq.subscription_stats WHERE subscription_name = 'drift'", 30),
	"a: the copy with the shorter ttl is fenced");

# Ten of the original's ttls of the copy's, while messages flow: the copy
# never takes the lease, the original never stops.
my ($samples, $copy_fenced, $orig_running) = (0, 0, 0);
for my $i (1 .. 40)
{
	publish('drift.b', 200 + 5 * ($i - 1) + 1, 200 + 5 * $i);
	sleep 0.25;
	$samples++;
	$copy_fenced++  if state_of($copy, 'drift') eq 'fenced';
	$orig_running++ if state_of($orig, 'drift') eq 'running';
}
is($copy_fenced, $samples, "a: the copy was fenced in every sample ($copy_fenced of $samples)");
is($orig_running, $samples, "a: the original was running in every sample ($orig_running of $samples)");
ok(wait_for($orig, 'SELECT count(*) = 400 FROM applied'), 'a: the original applied all 400');
is(rows($copy), $baseline, 'a: the copy applied nothing');

# b. reliq.take_over() on the copy, its monitor killed once the
# acquisition has begun.  The copy lacks what the original applied since
# the backup.
$copy->safe_psql('postgres', "SELECT reliq.take_over('drift')");
ok(wait_for($copy, "SELECT state = 'acquiring' FROM reliq.subscription_stats WHERE subscription_name = 'drift'", 30),
	'b: the copy is acquiring');
my $monitor = $copy->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'reliq monitor'});
ok($monitor =~ /^\d+$/, "b: the copy's monitor ($monitor)");
kill 'KILL', $monitor;
publish('drift.c', 401, 450);
ok(wait_for($orig, "SELECT state = 'fenced' FROM reliq.subscription_stats WHERE subscription_name = 'drift'", 60),
	'b: the original is fenced');
ok(wait_for($copy, 'SELECT count(DISTINCT id) = 450 FROM applied', 120),
	'b: the copy applied every message, those only the original had included');
ok(wait_idle($copy, 'drift', 60), 'b: idle');
is($copy->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id), min(id), max(id) FROM applied'),
	'450|450|1|450', 'b: each exactly once on the copy');
my ($orows, $odistinct) = split /\|/, $orig->safe_psql('postgres',
	'SELECT count(*), count(DISTINCT id) FROM applied');
is($orows, $odistinct, 'b: nothing applied twice on the original either');
$orig->stop;
$copy->stop;

# c. A restart in place with a long ttl.
$nats->stream_create('INPLACE', ['inplace.>']);
my $node = reliq_node('inplace', $nats, conf => "reliq.lease_ttl = '60s'\n");
$node->safe_psql('postgres', sprintf($setup, 'inplace', 'INPLACE', 'inplace'));
publish('inplace.a', 1, 100);
ok(wait_for($node, 'SELECT count(*) = 100 FROM applied'), 'c: applied before the restart');
my $log_offset = -s $node->logfile;
$node->stop('immediate');
$node->start;
publish('inplace.b', 101, 200);
# Bounded below the 60 s ttl: waiting out the earlier run's lease could
# not get there.
ok(wait_for($node, 'SELECT count(DISTINCT id) = 200 FROM applied', 40),
	'c: consuming again without waiting out the former lease');
like(slurp_file($node->logfile, $log_offset),
	qr/took over consumer "reliq_inplace" at once from this server's earlier run/,
	"c: the log says the lease came from the server's earlier run");
ok(wait_idle($node, 'inplace', 60), 'c: idle');
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id) FROM applied'),
	'200|200', 'c: each exactly once');
$node->stop;

# d. A work-queue stream cannot be rewound: take_over refused unless forced.
$nats->stream_create('WQ', ['wq.>'], retention => 'workqueue');
my $wq = reliq_node('workqueue', $nats);
$wq->safe_psql('postgres', sprintf($setup, 'wq', 'WQ', 'wq'));
my ($ret, $out, $err) = $wq->psql('postgres', "SELECT reliq.take_over('wq')");
isnt($ret, 0, 'd: take_over on a work-queue stream is refused');
like($err, qr/has workqueue retention: a take-over cannot bring its consumer back/,
	'd: ... saying why');
like($err, qr/whatever the former owner acknowledged and this database has not applied is gone/,
	'd: ... naming the loss');
like($err, qr/reliq\.take_over\('wq', force => true\)/, 'd: ... and how to accept it');
like($wq->safe_psql('postgres', "SELECT reliq.take_over('wq', force => true)"),
	qr/^subscription wq: this cluster takes the lease/, 'd: forced, it is taken');
publish('wq.a', 1, 20);
ok(wait_for($wq, 'SELECT count(*) = 20 FROM applied'), 'd: and consumed');
$wq->stop;

# e. Four consumers of one stopped owner, taken together.
$nats->stream_create('MANY', ['many.>']);
my @subs = map { "many$_" } 1 .. 4;
my $many_setup = q{
	CREATE TABLE applied (id int, seq bigint);
	CREATE FUNCTION apply(m reliq.message) RETURNS void LANGUAGE sql AS $$
		INSERT INTO applied (id, seq) VALUES ((reliq.message_json(m)->>'id')::int, m.stream_seq)
	$$;
} . join('', map { "SELECT reliq.create_subscription('$_', stream => 'MANY', subject => 'many.$_.>', handler => 'apply(reliq.message)'::regprocedure);\n" } @subs);
my $first = reliq_node('many_first', $nats, conf => "reliq.lease_ttl = '20s'\n");
$first->safe_psql('postgres', $many_setup);
ok(wait_for($first, "SELECT count(*) = 4 FROM reliq.subscription_stats WHERE state = 'running'"),
	'e: the first cluster runs the four');
my $second = reliq_node('many_second', $nats, conf => "reliq.lease_ttl = '20s'\n");
$second->safe_psql('postgres', $many_setup);
ok(wait_for($second, "SELECT count(*) = 4 FROM reliq.subscription_stats WHERE state = 'fenced'"),
	'e: the second is fenced for all four');
$first->stop('immediate');
ok(wait_for($second, "SELECT count(*) >= 1 FROM reliq.subscription_stats WHERE state = 'running'", 90),
	'e: the second takes a first consumer once the heartbeat stood still');
my $t_first = time;
# One lease_ttl (20 s) apart each, the last would come a minute later.
ok(wait_for($second, "SELECT count(*) = 4 FROM reliq.subscription_stats WHERE state = 'running'", 15),
	'e: ... and the other three with it, not a lease_ttl each');
diag(sprintf('e: all four running %.1f s after the first', time - $t_first));
$second->stop;

$nats->stop;
done_testing();
