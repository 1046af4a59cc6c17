# A transient failure is retried, never dead-lettered for (issue 20): a
# handler that cannot have a lock within lock_timeout (another session
# holds it) fails with 55P03 try after try, well past max_deliver; its
# message is held (the lane shows 'failing', pulls pause), not NAKed, so its
# delivery count does not grow, and it is applied once the other session
# lets go.  A message's own error (a check constraint) is still
# dead-lettered at max_deliver, with error_kind 'message'.
use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'transient');
$nats->start;
$nats->stream_create('TRANSIENT', ['transient.>']);

my $node = reliq_node('transient', $nats);
$node->safe_psql('postgres', q{
	CREATE TABLE applied (id int CHECK (id > 0));
	CREATE FUNCTION apply(m reliq.message) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO applied VALUES ((reliq.message_json(m)->>'id')::int);
		SET LOCAL lock_timeout = '100ms';
		PERFORM pg_advisory_xact_lock(4711);
	END $$;
	SELECT reliq.create_subscription('transient', stream => 'TRANSIENT', subject => 'transient.>',
	       handler => 'apply(reliq.message)'::regprocedure, max_deliver => 2,
	       backoff => '{200ms}'::interval[]);
});

# A message's own error: dead-lettered at max_deliver, as before.
$nats->publish('transient.bad', count => 1, start => 0, payload => '{"id":%d}');
ok(wait_for($node, q{SELECT count(*) = 1 FROM reliq.dead_letter}, 60),
	'a message failing a check constraint is dead-lettered');
is($node->safe_psql('postgres', q{SELECT sqlstate, error_kind, delivered FROM reliq.dead_letter}),
	'23514|message|2', "its error is the message's own, after max_deliver (2) deliveries");

# Another session holds the lock the handler needs.
my ($in, $out, $err) = ('', '', '');
my $holder = IPC::Run::start(
	[ 'psql', '-X', '-q', '-d', $node->connstr('postgres') ],
	\$in, \$out, \$err);
$in .= "SELECT pg_advisory_lock(4711);\n\\echo held\n";
IPC::Run::pump($holder) until $out =~ /held/;

$nats->publish('transient.good', count => 1, start => 1, payload => '{"id":%d}');

# Well past max_deliver: the 'bad' message's two failures, then at least
# five more of the locked-out one.
ok(wait_for($node, q{SELECT failed >= 7 FROM reliq.subscription_stats WHERE subscription_name = 'transient'}, 60),
	'the locked-out message failed try after try');
# (between its tries; while one runs, it shows 'running')
ok(wait_for($node, q{SELECT state = 'failing' AND last_error LIKE '%lock timeout%' FROM reliq.subscription_stats WHERE subscription_name = 'transient'}, 30),
	'the subscription shows it is failing, and why');
is($node->safe_psql('postgres', q{SELECT count(*) FROM reliq.dead_letter}),
	'1', 'a lock not had within lock_timeout dead-letters nothing');
my $info = $nats->consumer_info('TRANSIENT', 'reliq_transient');
is(($info->{num_ack_pending} // 0) . '|' . ($info->{num_redelivered} // 0), '1|0',
	'held, not NAKed: in flight once, never delivered again');
is($node->safe_psql('postgres', 'SELECT count(*) FROM applied'), '0', 'nothing applied while the lock is held');
ok($node->log_contains('failed with a transient error; holding them'), 'the hold is logged');

# The other session lets go: the message is applied, once.
$in .= "SELECT pg_advisory_unlock(4711);\n\\q\n";
$holder->finish;
ok(wait_for($node, 'SELECT count(*) = 1 FROM applied WHERE id = 1', 60),
	'applied once the lock is free');
ok(wait_idle($node, 'transient', 60), 'idle');
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id) FROM applied'),
	'1|1', 'applied exactly once');
is($node->safe_psql('postgres', 'SELECT count(*) FROM reliq.dead_letter'),
	'1', 'and the only dead letter is the constraint violation');
ok($node->log_contains('resumed after a transient error'), 'the resume is logged');

$node->stop;
$nats->stop;
done_testing();
