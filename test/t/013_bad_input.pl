# The bad-input matrix: payloads and headers a producer should not send,
# handlers that misbehave, and a server that changes under reliq.  Each
# case gives a clear error (a dead letter, last_error or the log), loses
# no message, and leaves the server running.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'bad', extra_conf => 'max_payload: 2MB');
$nats->start;
$nats->stream_create('BAD', ['bad.>']);

my $node = reliq_node('bad', $nats);
my $started = postmaster_start_time($node);
$node->safe_psql('postgres', q{
	CREATE TABLE got (sub text, subject text, len int, md5 text, headers jsonb,
	                  search_path text, role text, note text);
	-- records what arrived, without interpreting it
	CREATE FUNCTION record(m reliq.message) RETURNS void LANGUAGE sql AS $$
		INSERT INTO got VALUES (m.subscription, m.subject, length(m.data), md5(m.data),
		                        m.headers, current_setting('search_path'), current_user, NULL)
	$$;
	-- reads the payload as JSON
	CREATE FUNCTION parse(m reliq.message) RETURNS void LANGUAGE sql AS $$
		INSERT INTO got (sub, note) VALUES (m.subscription, reliq.message_json(m)->>'id')
	$$;
	SELECT reliq.create_subscription('raw', stream => 'BAD', subject => 'bad.raw.>',
	       handler => 'record(reliq.message)'::regprocedure);
	SELECT reliq.create_subscription('json', stream => 'BAD', subject => 'bad.json.>',
	       handler => 'parse(reliq.message)'::regprocedure, max_deliver => 2, backoff => '{50ms}');
});

# Payloads: invalid UTF-8, NUL bytes, empty, 1 MiB -- passed through as bytea.
my $mib = 'x' x (1024 * 1024);
$node->safe_psql('postgres', q{
	SELECT reliq.publish('bad.raw.utf8', '\xfffe41'::bytea);
	SELECT reliq.publish('bad.raw.nul', '\x0061006200'::bytea);
	SELECT reliq.publish('bad.raw.empty', ''::bytea);
	SELECT reliq.publish('bad.raw.big', repeat('x', 1048576)::bytea);
	SELECT reliq.publish('bad.raw.headers', 'h'::bytea,
	       headers => '{"Grüße": "naïve ☃", "dup": ["first", "second"], "bad": "ok"}');
});
# A header value that is not UTF-8 at all, straight from a client.
$nats->publish('bad.raw.latin1', count => 1, start => 1, payload => 'l',
	headers => [[ 'x-latin1', "caf\xe9" ]]);
ok(wait_idle($node, 'raw'), 'raw subscription drained');
my %got = map { my ($s, @r) = split /\|/; ($s => \@r) } split /\n/, $node->safe_psql('postgres',
	q{SELECT subject, len, md5, headers FROM got WHERE sub = 'raw'});
is($got{'bad.raw.utf8'}[0], 3, 'invalid UTF-8 payload passed on as bytes');
is($got{'bad.raw.nul'}[0], 5, 'NUL bytes passed on');
is($got{'bad.raw.empty'}[0], 0, 'empty payload passed on');
is($got{'bad.raw.big'}[0], 1048576, '1 MiB payload passed on');
is($got{'bad.raw.big'}[1], $node->safe_psql('postgres', q{SELECT md5(repeat('x', 1048576))}),
	'1 MiB payload intact');
is($got{'bad.raw.headers'}[2], '{"bad": "ok", "dup": ["first", "second"], "Grüße": "naïve ☃"}',
	'non-ASCII and repeated header keys: a string, and an array of the values');
is($got{'bad.raw.latin1'}[2], '{"x-latin1": "caf�"}', 'invalid UTF-8 in a header replaced, message kept');

# Reading those as JSON fails: dead letters with the reason.
$node->safe_psql('postgres', <<'SQL');
SELECT reliq.publish('bad.json.utf8', '\xfffe'::bytea);
SELECT reliq.publish('bad.json.nul', '\x7b2269223a2200227d'::bytea);
SELECT reliq.publish('bad.json.empty', ''::bytea);
SELECT reliq.publish('bad.json.broken', '{"id": 1,'::bytea);
SELECT reliq.publish('bad.json.fine', '{"id": "ok"}'::bytea);
SQL
ok(wait_idle($node, 'json'), 'json subscription drained');
is($node->safe_psql('postgres', q{
	SELECT string_agg(subject || '=' || sqlstate, ',' ORDER BY subject)
	  FROM reliq.dead_letter WHERE subscription = 'json'}),
	'bad.json.broken=22P02,bad.json.empty=22P02,bad.json.nul=22021,bad.json.utf8=22021',
	'invalid JSON and invalid UTF-8 dead-lettered with their SQLSTATE');
is($node->safe_psql('postgres', q{SELECT note FROM got WHERE sub = 'json'}), 'ok', 'the good one applied');
is($node->safe_psql('postgres', q{SELECT octet_length(data) FROM reliq.dead_letter WHERE subject = 'bad.json.nul'}),
	'9', 'the dead letter keeps the payload byte for byte');

# Handlers that misbehave: COMMIT, SET ROLE, SET SESSION AUTHORIZATION,
# an endless loop, and one that changes search_path.  They run as a
# non-superuser owner; nothing leaks into the next message.
$node->safe_psql('postgres', q{
	CREATE ROLE bad_owner;
	GRANT reliq_admin TO bad_owner;
	GRANT INSERT ON got TO bad_owner;
	CREATE FUNCTION naughty(m reliq.message) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE
		what text := convert_from(m.data, 'UTF8');
	BEGIN
		INSERT INTO got VALUES (m.subscription, m.subject, NULL, NULL, NULL,
		                        current_setting('search_path'), current_user, what);
		IF what = 'commit' THEN COMMIT; END IF;
		IF what = 'set_role' THEN SET ROLE postgres; END IF;
		IF what = 'session' THEN SET SESSION AUTHORIZATION postgres; END IF;
		IF what = 'loop' THEN LOOP END LOOP; END IF;
		IF what = 'set_path' THEN
			SET search_path = pg_catalog;
			PERFORM set_config('work_mem', '1MB', false);
		END IF;
	END $$;
	SET ROLE bad_owner;
	SELECT reliq.create_subscription('naughty', stream => 'BAD', subject => 'bad.naughty',
	       handler => 'naughty(reliq.message)'::regprocedure, max_deliver => 2,
	       backoff => '{50ms}', handler_timeout => '500ms', batch_size => 10);
	RESET ROLE;
});
for my $what (qw(before commit set_role session loop set_path after))
{
	$nats->publish('bad.naughty', count => 1, start => 1, payload => $what);
}
ok(wait_idle($node, 'naughty'), 'naughty subscription drained');
is($node->safe_psql('postgres', q{
	SELECT string_agg(convert_from(data, 'UTF8') || '=' || sqlstate, ',' ORDER BY stream_seq)
	  FROM reliq.dead_letter WHERE subscription = 'naughty'}),
	'commit=2D000,set_role=42501,session=42501,loop=57014',
	'COMMIT, SET ROLE, SET SESSION AUTHORIZATION and the endless loop fail and are dead-lettered');
is($node->safe_psql('postgres', q{SELECT count(DISTINCT role), min(role) FROM got WHERE sub = 'naughty'}),
	'1|bad_owner', 'every attempt ran as the owner');
is($node->safe_psql('postgres', q{SELECT search_path FROM got WHERE sub = 'naughty' AND note = 'after'}),
	$node->safe_psql('postgres', 'SHOW search_path'),
	'a handler that changed search_path did not change it for the next message');
is($node->safe_psql('postgres', q{SELECT count(*) FROM got WHERE sub = 'naughty' AND note IN ('before', 'set_path', 'after')}),
	'3', 'the well-behaved messages applied once each');

# The consumer deleted on the server while messages flow: made again from
# the last acknowledged message; nothing lost, nothing applied twice.
$node->safe_psql('postgres', q{
	SELECT reliq.create_subscription('deleted', stream => 'BAD', subject => 'bad.deleted',
	       handler => 'record(reliq.message)'::regprocedure, batch_size => 20);
});
my $publisher = $nats->publish_bg('bad.deleted', count => 2000, start => 1,
	payload => '{"id":%d}', msg_id => 'del-%d', rate => 500);
ok(wait_for($node, q{SELECT count(*) > 300 FROM got WHERE sub = 'deleted'}), 'consuming');
$nats->consumer_delete('BAD', 'reliq_deleted');
is($nats->wait_publish($publisher), 2000, 'published');
ok(wait_idle($node, 'deleted'), 'drained through the deletion');
is($node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT md5) FROM got WHERE sub = 'deleted'}),
	'2000|2000', 'every message applied exactly once');
# A pull outstanding at the deletion gets "409 Consumer Deleted"; without
# one, the next pull goes unanswered and the worker asks for the consumer.
ok($node->log_contains(qr/consumer "reliq_deleted" (?:was deleted on the server|of stream "BAD" has disappeared from the server)/),
	'the deletion is logged');

# A subscription dropped while its worker is in the middle of a batch.
$node->safe_psql('postgres', q{
	CREATE FUNCTION slow(m reliq.message) RETURNS void LANGUAGE sql AS $$ SELECT pg_sleep(1) $$;
	SELECT reliq.create_subscription('dropme', stream => 'BAD', subject => 'bad.dropme',
	       handler => 'slow(reliq.message)'::regprocedure, batch_size => 5);
});
$nats->publish('bad.dropme', count => 10, start => 1, payload => '{"id":%d}');
ok(wait_for($node, q{SELECT count(*) = 1 FROM pg_stat_activity
                      WHERE backend_type = 'reliq worker' AND query LIKE '%subscription dropme'
                        AND wait_event = 'PgSleep'}),
	'worker busy in a handler');
$node->safe_psql('postgres', q{SELECT reliq.drop_subscription('dropme')});
ok(wait_for($node, q{SELECT count(*) = 0 FROM reliq.worker_status WHERE subscription_name = 'dropme'}),
	'its worker gives it up');

# JetStream disabled on the server.
my $plain = ReliqTest::Nats->new(name => 'nojs', jetstream => 0);
$plain->start;
my $url = $plain->url;
$node->safe_psql('postgres', "ALTER SYSTEM SET reliq.nats_url = '$url'");
$node->reload;
my ($ret, $out, $err) = $node->psql('postgres', q{
	SELECT reliq.create_subscription('nojs', stream => 'BAD', subject => 'bad.nojs',
	       handler => 'record(reliq.message)'::regprocedure)});
like($err, qr/ERROR:  JetStream is not available on the NATS server.*HINT:  Start nats-server with JetStream enabled/s,
	'creating a subscription says JetStream is missing');
ok(wait_for($node, q{SELECT last_error LIKE '%no JetStream API answered%' FROM reliq.subscription_stats WHERE subscription_name = 'raw'}),
	'running subscriptions show it in last_error');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET reliq.nats_url');
$node->reload;
$plain->stop;
$node->safe_psql('postgres', q{SELECT reliq.publish('bad.raw.back', 'b'::bytea)});
ok(wait_for($node, q{SELECT count(*) = 1 FROM got WHERE subject = 'bad.raw.back'}),
	'back to the JetStream server: consuming again');

is(postmaster_start_time($node), $started, 'the server kept running throughout');
ok(!$node->log_contains('terminated by signal'), 'no backend crashed');

$node->stop;
$nats->stop;
done_testing();
