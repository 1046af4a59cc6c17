# Observability: subscription_stats counters equal what was published and
# what failed; the server-side figures fall to zero; latency and rate are
# filled; reliq.metrics() and the HTTP endpoint (curl) parse strictly and
# agree with the SQL figures; reliq.health() goes down when nats-server
# stops and back to ok when it returns; the traceparent of a message is
# visible to its handler and kept with its dead letter; state changes are
# logged once.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReliqTest::Nats;
use ReliqTest::Node;
use ReliqTest::Prometheus qw(parse_exposition sample_value);

my $nats = ReliqTest::Nats->new(name => 'obs');
$nats->start;
$nats->stream_create('OBS', ['obs.>']);

my $metrics_port = PostgreSQL::Test::Cluster::get_free_port();
my $node = reliq_node('obs', $nats, conf => <<"CONF");
reliq.metrics_port = $metrics_port
reliq.health_disconnect_timeout = 1000
CONF
$node->safe_psql('postgres', q{
	CREATE TABLE seen (id int, traceparent_header text, traceparent_setting text);
	CREATE FUNCTION observe(m reliq.message) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE j jsonb := reliq.message_json(m);
	BEGIN
		IF j ? 'fail' THEN RAISE EXCEPTION 'message % fails', j->>'id'; END IF;
		INSERT INTO seen VALUES ((j->>'id')::int, m.headers->>'traceparent',
		                         current_setting('reliq.traceparent', true));
	END $$;
	SELECT reliq.create_subscription('obs', stream => 'OBS', subject => 'obs.>',
	       handler => 'observe(reliq.message)'::regprocedure,
	       max_deliver => 2, backoff => '{100ms}', batch_size => 100);
});

my $trace = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
$nats->publish('obs.traced', count => 400, start => 1, payload => '{"id":%d}',
	headers => [['traceparent', $trace]]);
$nats->publish('obs.plain', count => 100, start => 401, payload => '{"id":%d}');
$nats->publish('obs.bad', count => 5, start => 1001, payload => '{"id":%d,"fail":1}',
	headers => [['traceparent', $trace]]);
ok(wait_idle($node, 'obs'), 'drained');

# Counters equal what was published and what failed.
my $s = reliq_stats($node, 'obs');
is("$s->{received}|$s->{processed}|$s->{failed}|$s->{retried}|$s->{dead_lettered}|$s->{duplicates}",
	'510|500|10|5|5|0', 'received, processed, failed, retried, dead_lettered, duplicates');
ok(wait_for($node, q{SELECT pending = 0 AND ack_pending = 0 AND redelivered = 0 AND consumer_info_at IS NOT NULL
                      FROM reliq.subscription_stats WHERE subscription_name = 'obs'}),
	'server-side pending and ack_pending fall to 0');
$s = reliq_stats($node, 'obs');
ok($s->{messages_per_second} > 0, "messages_per_second over the last minute ($s->{messages_per_second})");
isnt($s->{latency_p50}, '', "publish-to-commit latency p50 ($s->{latency_p50}) and p99 ($s->{latency_p99})");
is($node->safe_psql('postgres', q{SELECT batch_p50 <= batch_p99 AND latency_p50 <= latency_p99
                                   FROM reliq.subscription_stats WHERE subscription_name = 'obs'}),
	't', 'p50 <= p99');
like($s->{last_error}, qr/message 100\d fails/, 'last_error names the failure');

# Trace context.
is($node->safe_psql('postgres', qq{SELECT count(*) FROM seen WHERE traceparent_setting = '$trace' AND traceparent_header = '$trace'}),
	'400', 'traceparent visible to the handler in headers and as reliq.traceparent');
is($node->safe_psql('postgres', q{SELECT count(*) FROM seen WHERE id > 400 AND COALESCE(traceparent_setting, '') = ''}),
	'100', 'reliq.traceparent is empty for messages without one (nothing leaks from the previous message)');
is($node->safe_psql('postgres', qq{SELECT count(*) FROM reliq.dead_letter WHERE traceparent = '$trace'}),
	'5', 'traceparent kept with the dead letters');

# Metrics from SQL: parse strictly, compare with the SQL figures.
my $text = $node->safe_psql('postgres', 'SELECT reliq.metrics()');
my $m = eval { parse_exposition($text) };
ok($m, 'reliq.metrics() is valid Prometheus exposition') or diag($@);
for my $pair (
	[ 'reliq_messages_received_total',      'received' ],
	[ 'reliq_messages_processed_total',     'processed' ],
	[ 'reliq_messages_failed_total',        'failed' ],
	[ 'reliq_messages_retried_total',       'retried' ],
	[ 'reliq_messages_dead_lettered_total', 'dead_lettered' ],
	[ 'reliq_messages_duplicate_total',     'duplicates' ],
	[ 'reliq_batches_total',                'batches' ],
	[ 'reliq_slow_path_batches_total',      'slow_path_batches' ],
	[ 'reliq_workers',                      'workers' ],
	[ 'reliq_consumer_pending',             'pending' ],
	[ 'reliq_consumer_ack_pending',         'ack_pending' ])
{
	is(sample_value($m, $pair->[0], subscription => 'obs'), $s->{ $pair->[1] },
		"$pair->[0] matches subscription_stats.$pair->[1]");
}
is(sample_value($m, 'reliq_subscription_state', subscription => 'obs', state => 'running'), 1,
	'state gauge');
is(sample_value($m, 'reliq_commit_latency_seconds_count', subscription => 'obs'), 500,
	'one latency observation per applied message');
is(sample_value($m, 'reliq_batch_duration_seconds_count', subscription => 'obs'), $s->{batches},
	'one duration observation per batch');
is($m->{families}{reliq_commit_latency_seconds}, 'histogram', 'latency is a histogram');

# The same over HTTP.
my $url = "http://127.0.0.1:$metrics_port/metrics";
my $body = `curl -sS --max-time 10 $url`;
is($? >> 8, 0, 'curl fetched /metrics');
my $h = eval { parse_exposition($body) };
ok($h, 'the endpoint serves valid Prometheus exposition') or diag($@);
is(sample_value($h, 'reliq_messages_processed_total', subscription => 'obs'), 500,
	'endpoint agrees with SQL');
is(`curl -s -o /dev/null -w '%{http_code}' --max-time 10 http://127.0.0.1:$metrics_port/other`, '404',
	'other paths are 404');

# Health: ok; down when nats-server stops; ok again when it is back.
$node->safe_psql('postgres', q{
	CREATE FUNCTION quiet(m reliq.message) RETURNS void LANGUAGE sql AS $$ SELECT $$;
	SELECT reliq.create_subscription('steady', stream => 'OBS', subject => 'obs.steady',
	       handler => 'quiet(reliq.message)'::regprocedure);
});
$nats->publish('obs.steady', count => 10, start => 1, payload => '{"id":%d}');
ok(wait_idle($node, 'steady'), 'steady drained');
ok(wait_for($node, q{SELECT status = 'ok' FROM reliq.health() WHERE subscription_name = 'steady'}),
	'health ok');
is($node->safe_psql('postgres', q{SELECT status FROM reliq.health() WHERE subscription_name = 'obs'}),
	'degraded', 'recent message failures make a subscription degraded');
$nats->stop;
ok(wait_for($node, q{SELECT status = 'down' AND reasons[1] LIKE 'disconnected from NATS for%'
                      FROM reliq.health() WHERE subscription_name = 'steady'}),
	'health down while nats-server is stopped');
is($node->safe_psql('postgres', q{SELECT state FROM reliq.subscription_stats WHERE subscription_name = 'steady'}),
	'disconnected', 'state disconnected');
my $down = $node->safe_psql('postgres', 'SELECT reliq.metrics()');
is(sample_value(parse_exposition($down), 'reliq_subscription_state', subscription => 'steady', state => 'disconnected'),
	1, 'metrics show it too');
$nats->start;
ok(wait_for($node, q{SELECT status = 'ok' FROM reliq.health() WHERE subscription_name = 'steady'}),
	'health ok again after nats-server returns');

# Paused is ok, with the reason.
$node->safe_psql('postgres', q{SELECT reliq.alter_subscription('steady', enabled => false)});
is($node->safe_psql('postgres', q{SELECT status, reasons FROM reliq.health() WHERE subscription_name = 'steady'}),
	'ok|{paused}', 'paused is ok, and says so');

# Worker status and logs.
# (each worker resumes once the monitor has renewed its lease, which lapsed
# while nats-server was away)
ok(wait_for($node, q{SELECT (state, connected, batch_size) = ('fetching', true, 100)
                       FROM reliq.worker_status WHERE subscription_name = 'obs'}),
	'worker_status');
my $log = slurp_file($node->logfile);
my %disconnects;
$disconnects{$1}++ while $log =~ /reliq worker (\d+): disconnected from NATS/g;
ok(%disconnects && !grep({ $_ != 1 } values %disconnects),
	'one LOG line per worker for the disconnection, not one per retry or per subscription');
like($log, qr/reliq worker \d+: reconnected to NATS/, 'reconnection logged');
unlike($log, qr/handler failed on stream sequence.*\n.*handler failed on stream sequence/,
	'failures are not logged one per message');

$node->stop;
$nats->stop;
done_testing();
