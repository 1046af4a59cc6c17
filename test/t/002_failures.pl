# Failures: backoff between deliveries, dead-lettering after max_deliver,
# a systemic failure that must not dead-letter the backlog, a handler that
# kills its own backend, and a handler that runs too long.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'failures');
$nats->start;
$nats->stream_create('JOBS', ['job.>']);

my $node = reliq_node('failures', $nats);
my $started = postmaster_start_time($node);
$node->safe_psql('postgres', q{
	CREATE TABLE done (id int, sub text);
	CREATE FUNCTION work(m reliq.message) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE j jsonb := reliq.message_json(m);
	BEGIN
		IF j ? 'fail' THEN RAISE EXCEPTION 'job % refused', j->>'id'; END IF;
		IF j ? 'die' THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF;
		IF j ? 'sleep' THEN PERFORM pg_sleep((j->>'sleep')::float); END IF;
		INSERT INTO done VALUES ((j->>'id')::int, m.subscription);
	END $$;
});

# 1. A failing message is retried after the backoff delays, then dead-lettered.
$node->safe_psql('postgres', q{
	SELECT reliq.create_subscription('retry', stream => 'JOBS', subject => 'job.retry',
	       handler => 'work(reliq.message)'::regprocedure,
	       max_deliver => 3, backoff => '{400ms,800ms}');
});
$nats->publish('job.retry', count => 1, start => 1, payload => '{"id":%d,"fail":true}');
$nats->publish('job.retry', count => 20, start => 2, payload => '{"id":%d}');
ok(wait_for($node, q{SELECT count(*) = 1 FROM reliq.dead_letter WHERE subscription = 'retry'}),
	'failing message dead-lettered');
my $dl = query_row($node, q{
	SELECT delivered, sqlstate, error_message,
	       failed_at - published_at >= interval '1200 ms' AS waited_backoff
	  FROM reliq.dead_letter WHERE subscription = 'retry'});
is($dl->{delivered}, 3, 'dead-lettered at its third delivery');
is($dl->{sqlstate}, 'P0001', 'SQLSTATE recorded');
is($dl->{error_message}, 'job 1 refused', 'error message recorded');
is($dl->{waited_backoff}, 't', 'deliveries were at least the backoff delays apart (400 ms + 800 ms)');
ok(wait_idle($node, 'retry'), 'retry subscription idle');
is($node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT id) FROM done WHERE sub = 'retry'}),
	'20|20', 'the rest of the batches committed once each');
my $s = reliq_stats($node, 'retry');
is("$s->{failed}|$s->{retried}|$s->{dead_lettered}", '3|2|1', 'failed, retried, dead_lettered counted');

# 2. A systemic failure: the table the handler writes is gone.  The
# subscription holds its batch and backs off; nothing is dead-lettered;
# once the table is back, everything is applied once.
$node->safe_psql('postgres', q{
	SELECT reliq.create_subscription('systemic', stream => 'JOBS', subject => 'job.systemic',
	       handler => 'work(reliq.message)'::regprocedure,
	       max_deliver => 2, backoff => '{200ms,500ms}', batch_size => 50);
	ALTER TABLE done RENAME TO done_away;
});
$nats->publish('job.systemic', count => 300, start => 1, payload => '{"id":%d}');
ok(wait_for($node, q{SELECT state = 'failing' FROM reliq.subscription_stats WHERE subscription_name = 'systemic'}),
	'subscription is failing');
like($node->safe_psql('postgres', q{SELECT last_error FROM reliq.subscription_stats WHERE subscription_name = 'systemic'}),
	qr/relation "done" does not exist/, 'last_error names the cause');
sleep 3;    # several probes fail meanwhile
is($node->safe_psql('postgres', q{SELECT count(*) FROM reliq.dead_letter WHERE subscription = 'systemic'}),
	'0', 'nothing dead-lettered while failing');
ok($node->log_contains('systemic failure detected'), 'state change logged');
$node->safe_psql('postgres', 'ALTER TABLE done_away RENAME TO done');
ok(wait_idle($node, 'systemic'), 'systemic subscription recovered and drained');
is($node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT id) FROM done WHERE sub = 'systemic'}),
	'300|300', 'every message applied once after recovery');
is($node->safe_psql('postgres', q{SELECT state FROM reliq.subscription_stats WHERE subscription_name = 'systemic'}),
	'running', 'running again');
ok($node->log_contains('resumed after a systemic failure'), 'recovery logged');

# 3. A handler that terminates its own backend: the worker dies before
# COMMIT at each delivery.  The message is dead-lettered once it exceeds
# max_deliver; the messages of its first batch are applied once; the
# server is never restarted.
$node->safe_psql('postgres', q{
	SELECT reliq.create_subscription('killer', stream => 'JOBS', subject => 'job.killer',
	       handler => 'work(reliq.message)'::regprocedure,
	       max_deliver => 2, ack_wait => '1s', batch_size => 20);
});
$nats->publish('job.killer', count => 5, start => 1, payload => '{"id":%d}');
$nats->publish('job.killer', count => 1, start => 6, payload => '{"id":%d,"die":true}');
$nats->publish('job.killer', count => 5, start => 7, payload => '{"id":%d}');
ok(wait_for($node, q{SELECT count(*) = 1 FROM reliq.dead_letter WHERE subscription = 'killer'}, 120),
	'message that kills its worker dead-lettered');
is($node->safe_psql('postgres', q{SELECT sqlstate, delivered > 2 FROM reliq.dead_letter WHERE subscription = 'killer'}),
	'RQ001|t', 'dead-lettered without a handler error, after max_deliver deliveries');
ok(wait_idle($node, 'killer'), 'killer subscription drained');
is($node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT id), bool_and(id <> 6) FROM done WHERE sub = 'killer'}),
	'10|10|t', 'the others applied once each');
is(postmaster_start_time($node), $started, 'postmaster never restarted');

# 4. A handler that runs too long is cancelled by handler_timeout.
$node->safe_psql('postgres', q{
	SELECT reliq.create_subscription('slow', stream => 'JOBS', subject => 'job.slow',
	       handler => 'work(reliq.message)'::regprocedure,
	       max_deliver => 2, backoff => '{100ms}', handler_timeout => '300ms');
});
$nats->publish('job.slow', count => 1, start => 1, payload => '{"id":%d,"sleep":30}');
$nats->publish('job.slow', count => 3, start => 2, payload => '{"id":%d}');
ok(wait_for($node, q{SELECT count(*) = 1 FROM reliq.dead_letter WHERE subscription = 'slow'}),
	'slow message dead-lettered');
is($node->safe_psql('postgres', q{SELECT sqlstate, error_message FROM reliq.dead_letter WHERE subscription = 'slow'}),
	'57014|canceling statement due to statement timeout', 'cancelled by the handler timeout');
ok(wait_idle($node, 'slow'), 'slow subscription drained');
is($node->safe_psql('postgres', q{SELECT count(*) FROM done WHERE sub = 'slow'}), '3', 'the others applied');

$node->stop;
$nats->stop;
done_testing();
