# Loading and the launcher: reliq refuses to load unless preloaded; the
# launcher idles until CREATE EXTENSION, then serves subscriptions without
# a restart; it stops the workers when the extension is dropped; more
# workers than reliq.max_workers are refused with a warning; workers of a
# subscription made in another database are refused.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'launcher');
$nats->start;
$nats->stream_create('L', ['l.>']);

# Not preloaded: a clear refusal.
my $plain = PostgreSQL::Test::Cluster->new('plain');
$plain->init;
$plain->start;
my ($ret, $out, $err) = $plain->psql('postgres', 'CREATE EXTENSION reliq');
isnt($ret, 0, 'CREATE EXTENSION refused without shared_preload_libraries');
like($err, qr/reliq must be loaded via shared_preload_libraries/, 'error says why');
like($err, qr/HINT:  Add reliq to shared_preload_libraries/, 'hint names the setting');
$plain->stop;

# Preloaded, extension not created yet: the launcher waits quietly.
my $node = reliq_node('launcher', $nats, no_extension => 1, conf => 'reliq.max_workers = 3');
ok(wait_for($node, q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'reliq launcher'}),
	'launcher running before CREATE EXTENSION');
# A table and a handler recording what each subscription got.
my $got_setup = q{
	CREATE TABLE got (sub text, id int);
	CREATE FUNCTION got(m reliq.message) RETURNS void LANGUAGE sql AS $$
		INSERT INTO got VALUES (m.subscription, (reliq.message_json(m)->>'id')::int)
	$$;
};

$node->safe_psql('postgres', 'CREATE EXTENSION reliq');
$node->safe_psql('postgres', $got_setup);
$node->safe_psql('postgres', q{
	SELECT reliq.create_subscription('a', stream => 'L', subject => 'l.a',
	       handler => 'got(reliq.message)'::regprocedure, concurrency => 2);
});
$nats->publish('l.a', count => 100, start => 1, payload => '{"id":%d}');
ok(wait_idle($node, 'a'), 'subscription served without a restart');
is($node->safe_psql('postgres', q{SELECT count(DISTINCT id) FROM got WHERE sub = 'a'}), '100', 'all applied');

# More lanes than reliq.max_workers: every subscription is served, on
# the shared pool of three workers.
$node->safe_psql('postgres', q{
	SELECT reliq.create_subscription('b', stream => 'L', subject => 'l.b',
	       handler => 'got(reliq.message)'::regprocedure, concurrency => 2);
});
ok(wait_for($node, q{SELECT count(*) = 4 FROM reliq.worker_status}), 'four lanes');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'reliq worker'}),
	'3', 'on three workers, the maximum');
is($node->safe_psql('postgres', q{SELECT workers, concurrency, worker_shortfall IS NULL FROM reliq.subscription_stats WHERE subscription_name = 'b'}),
	'2|2|t', 'the later subscription has all its workers too');

# A concurrency above the pool's size: a shortfall, with the setting.
$node->safe_psql('postgres', q{SELECT reliq.alter_subscription('b', concurrency => 4)});
ok(wait_for($node, q{SELECT workers = 3 FROM reliq.subscription_stats WHERE subscription_name = 'b'}),
	'concurrency 4 runs on all three workers');
ok($node->log_contains('reliq subscription "b" wants 4 workers at once, but reliq.max_workers is 3'),
	'the shortfall is logged');
is($node->safe_psql('postgres', q{SELECT worker_shortfall FROM reliq.subscription_stats WHERE subscription_name = 'b'}),
	'3 of 4 workers running: concurrency is above reliq.max_workers (3), the size of the worker pool; raise it and restart',
	'subscription_stats says the shortfall and the setting to raise');
is($node->safe_psql('postgres', q{SELECT status, array_to_string(reasons, ' ') LIKE '%short of workers: 3 of 4 workers running: concurrency is above reliq.max_workers (3)%'
                                  FROM reliq.health() WHERE subscription_name = 'b'}),
	'degraded|t', 'health() says it too');
$nats->publish('l.b', count => 50, start => 1, payload => '{"id":%d}');
ok(wait_idle($node, 'b'), 'still served');

# A subscription in another database would never run: refused.
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('other', 'CREATE EXTENSION reliq');
($ret, $out, $err) = $node->psql('other', q{
	SELECT reliq.create_subscription('c', stream => 'L', subject => 'l.c',
	       handler => 'reliq.message_json(reliq.message)'::regprocedure)});
like($err, qr/reliq workers run only in database "postgres"/, 'create_subscription elsewhere refused');

# Dropping the extension stops the workers.  (CASCADE would not take the
# handler unsaid: it goes first, with its subscriptions, in the same
# transaction.)
$node->safe_psql('postgres', q{
	BEGIN;
	DELETE FROM reliq.subscription;
	DROP FUNCTION got(reliq.message);
	DROP EXTENSION reliq;
	COMMIT;
});
ok(wait_for($node, q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'reliq worker'}),
	'workers stopped after DROP EXTENSION');
ok(wait_for($node, q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'reliq launcher'}),
	'launcher still there, idle');

$node->stop;

# max_worker_processes exhausted: the launcher, the monitor, the trace
# exporter and PostgreSQL's logical replication launcher leave room for one
# reliq worker of three; every subscription is served on it, short of workers.
my $tight = reliq_node('tight', $nats, conf => "max_worker_processes = 5\nreliq.max_workers = 8");
$tight->safe_psql('postgres', $got_setup);
$tight->safe_psql('postgres', q{
	SELECT reliq.create_subscription('t', stream => 'L', subject => 'l.t',
	       handler => 'got(reliq.message)'::regprocedure, concurrency => 3);
});
ok(wait_for($tight, q{SELECT worker_shortfall LIKE '1 of 3 workers running: PostgreSQL refused to start more background workers; raise max_worker_processes (5)%'
                      FROM reliq.subscription_stats WHERE subscription_name = 't'}),
	'a refused worker shows in subscription_stats, with max_worker_processes');
ok(wait_for($tight, q{SELECT status = 'degraded' AND array_to_string(reasons, ' ') LIKE '%raise max_worker_processes%'
                      FROM reliq.health() WHERE subscription_name = 't'}),
	'and in health()');
$tight->safe_psql('postgres', q{
	SELECT reliq.create_subscription('u', stream => 'L', subject => 'l.u',
	       handler => 'got(reliq.message)'::regprocedure);
});
$tight->safe_psql('postgres', q{SELECT pg_sleep(0)});
$nats->publish('l.t', count => 30, start => 1, payload => '{"id":%d}');
$nats->publish('l.u', count => 30, start => 1, payload => '{"id":%d}');
ok(wait_for($tight, q{SELECT count(*) = 60 FROM got}), 'both subscriptions served by the one worker that started');
$tight->stop;
$nats->stop;
done_testing();
