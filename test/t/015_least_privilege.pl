# Least privilege: CREATE EXTENSION is safe against objects planted before
# it (the pg_cron-style hijack: a function in public that a superuser's
# session would run), dead letters are private to the owners of their
# subscriptions, and secrets stay secret (settings hidden from
# non-superusers, passwords never in the log or last_error).
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'privilege');
$nats->start;
$nats->stream_create('P', ['p.>']);

my $secret = 'pw-' . int(rand(1e9)) . '-secret';
(my $url_with_password = $nats->url) =~ s{^nats://}{nats://reliq:$secret\@};
my $node = reliq_node('privilege', $nats, no_extension => 1,
	conf => "reliq.nats_password = '$secret'");

# Mallory may create objects in public and in the database, and plants
# functions with the names reliq's SQL uses; each records its call.
$node->safe_psql('postgres', q{
	CREATE ROLE mallory LOGIN;
	GRANT CREATE ON DATABASE postgres TO mallory;
	GRANT CREATE ON SCHEMA public TO mallory;
});
$node->safe_psql('postgres', <<'SQL', extra_params => ['-U', 'mallory']);
CREATE TABLE public.pwned (what text);
GRANT INSERT ON public.pwned TO PUBLIC;
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql
    AS $$ INSERT INTO public.pwned VALUES ('now') RETURNING pg_catalog.now() $$;
CREATE FUNCTION public.unnest(bigint[]) RETURNS SETOF bigint LANGUAGE sql
    AS $$ INSERT INTO public.pwned VALUES ('unnest') RETURNING 1::bigint $$;
CREATE FUNCTION public.cardinality(anyarray) RETURNS integer LANGUAGE sql
    AS $$ INSERT INTO public.pwned VALUES ('cardinality') RETURNING 1 $$;
CREATE FUNCTION public.convert_from(bytea, name) RETURNS text LANGUAGE sql
    AS $$ INSERT INTO public.pwned VALUES ('convert_from') RETURNING '{}'::text $$;
CREATE FUNCTION public.pg_has_role(text, text) RETURNS boolean LANGUAGE sql
    AS $$ INSERT INTO public.pwned VALUES ('pg_has_role') RETURNING true $$;
CREATE FUNCTION public.current_setting(text) RETURNS text LANGUAGE sql
    AS $$ INSERT INTO public.pwned VALUES ('current_setting') RETURNING 'postgres'::text $$;
CREATE FUNCTION public.format(text, text) RETURNS text LANGUAGE sql
    AS $$ INSERT INTO public.pwned VALUES ('format') RETURNING ''::text $$;
CREATE FUNCTION public.bigint_eq(bigint, bigint) RETURNS boolean LANGUAGE sql
    AS $$ INSERT INTO public.pwned VALUES ('=') RETURNING $1 OPERATOR(pg_catalog.=) $2 $$;
CREATE OPERATOR public.= (LEFTARG = bigint, RIGHTARG = bigint, PROCEDURE = public.bigint_eq);
-- and a schema named like the extension's, to be trusted by it
CREATE SCHEMA reliq;
CREATE TABLE reliq.subscription (id int);
SQL

my ($ret, $out, $err) = $node->psql('postgres', 'CREATE EXTENSION reliq');
like($err, qr/schema reliq exists and is owned by another role/,
	'CREATE EXTENSION refuses a reliq schema made by someone else');
$node->safe_psql('postgres', 'DROP SCHEMA reliq CASCADE', extra_params => ['-U', 'mallory']);

# The superuser installs and uses reliq with the default search_path
# ("$user", public): none of mallory's functions may run.
$node->safe_psql('postgres', q{
	CREATE EXTENSION reliq;
	CREATE ROLE alice LOGIN;
	CREATE ROLE bob LOGIN;
	GRANT reliq_admin TO alice, bob;
	CREATE SCHEMA app;
	GRANT USAGE ON SCHEMA app TO alice, bob;
	CREATE TABLE app.done (id int);
	GRANT INSERT ON app.done TO alice, bob;
	CREATE FUNCTION app.refuse(m reliq.message) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		IF pg_catalog.length(m.data) OPERATOR(pg_catalog.>) 1 THEN
			RAISE EXCEPTION 'refused';
		END IF;
		INSERT INTO app.done VALUES (1);
	END $$;
});
for my $owner (qw(alice bob))
{
	$node->safe_psql('postgres', qq{
		SELECT reliq.create_subscription('$owner', stream => 'P', subject => 'p.$owner',
		       handler => 'app.refuse(reliq.message)'::regprocedure,
		       max_deliver => 1, batch_size => 5);
	}, extra_params => ['-U', $owner]);
	$nats->publish("p.$owner", count => 3, start => 1, payload => 'x');
	$nats->publish("p.$owner", count => 1, start => 4, payload => 'bad');
	ok(wait_idle($node, $owner), "$owner drained");
}
$node->safe_psql('postgres', q{
	SELECT reliq.alter_subscription('alice', batch_size => 10);
	SELECT * FROM reliq.subscription_stats;
	SELECT * FROM reliq.health();
	SELECT reliq.metrics();
	SELECT reliq.publish('p.alice', 'y'::bytea, '{"k": "v"}');
	SELECT reliq.wait_idle('alice', '10s');
	SELECT reliq.subscription_stats_reset();
});
is($node->safe_psql('postgres', 'SELECT count(*) FROM reliq.dead_letter'), '2', 'one dead letter each');
is($node->safe_psql('postgres', q{SELECT string_agg(DISTINCT what, ',') FROM public.pwned}), '',
	'none of the planted functions or operators ran');

# The handler is looked up by name and checked as the owner, once per
# batch: EXECUTE taken away stops it without losing a message; a function
# dropped and made again is found anew.  (max_deliver 100: the failed
# messages are retried every 100 ms, not dead-lettered after half a second
# on a busy machine before the function is made again.)
$node->safe_psql('postgres', q{
	CREATE FUNCTION app.mark(m reliq.message) RETURNS void LANGUAGE sql
	    AS $$ INSERT INTO app.done VALUES (7) $$;
	REVOKE EXECUTE ON FUNCTION app.mark(reliq.message) FROM PUBLIC;
	GRANT EXECUTE ON FUNCTION app.mark(reliq.message) TO alice;
});
$node->safe_psql('postgres', q{
	SELECT reliq.create_subscription('marks', stream => 'P', subject => 'p.marks',
	       handler => 'app.mark(reliq.message)'::regprocedure, backoff => '{100ms}',
	       max_deliver => 100);
}, extra_params => ['-U', 'alice']);
$nats->publish('p.marks', count => 3, start => 1, payload => 'x');
ok(wait_idle($node, 'marks'), 'marks drained');
$node->safe_psql('postgres', q{REVOKE EXECUTE ON FUNCTION app.mark(reliq.message) FROM alice});
$nats->publish('p.marks', count => 2, start => 4, payload => 'x');
ok(wait_for($node, q{SELECT last_error LIKE '%permission denied for function mark%'
	FROM reliq.subscription_stats WHERE subscription_name = 'marks'}),
	'the owner without EXECUTE: the handler does not run');
# (In one transaction: a handler in use may not be dropped for good.)
$node->safe_psql('postgres', q{
	BEGIN;
	DROP FUNCTION app.mark(reliq.message);
	CREATE FUNCTION app.mark(m reliq.message) RETURNS void LANGUAGE sql
	    AS $$ INSERT INTO app.done VALUES (8) $$;
	REVOKE EXECUTE ON FUNCTION app.mark(reliq.message) FROM PUBLIC;
	GRANT EXECUTE ON FUNCTION app.mark(reliq.message) TO alice;
	COMMIT;
});
ok(wait_for($node, q{SELECT count(*) = 2 FROM app.done WHERE id = 8}),
	'EXECUTE given back on a function made again: the held messages are applied by it');
is($node->safe_psql('postgres', q{SELECT count(*) FILTER (WHERE id = 7), count(*) FILTER (WHERE id = 8)
	FROM app.done}), '3|2', 'each message applied once, by the function of its time');
is($node->safe_psql('postgres', q{SELECT count(*) FROM reliq.dead_letter WHERE subscription = 'marks'}),
	'0', 'nothing dead-lettered meanwhile');

# Dead letters are private to the subscription's owner.
is($node->safe_psql('postgres', 'SELECT string_agg(subscription, \',\') FROM reliq.dead_letter',
		extra_params => ['-U', 'alice']),
	'alice', 'alice sees only her dead letters');
my $bobs = $node->safe_psql('postgres', q{SELECT id FROM reliq.dead_letter WHERE subscription = 'bob'});
is($node->safe_psql('postgres', "SELECT reliq.discard_dead_letter($bobs)", extra_params => ['-U', 'alice']),
	'f', "alice cannot discard bob's dead letter");
($ret, $out, $err) = $node->psql('postgres', "SELECT reliq.replay_dead_letter($bobs)",
	extra_params => ['-U', 'alice']);
like($err, qr/dead letter $bobs does not exist/, "alice cannot replay bob's dead letter");
my $alices = $node->safe_psql('postgres', q{SELECT id FROM reliq.dead_letter WHERE subscription = 'alice'});
like($node->safe_psql('postgres', "SELECT reliq.replay_dead_letter($alices)", extra_params => ['-U', 'alice']),
	qr/^f$/, 'alice can replay her own (it fails again, and the attempt is recorded)');
is($node->safe_psql('postgres', "SELECT replay_attempts FROM reliq.dead_letter WHERE id = $alices"),
	'1', 'attempt recorded');
is($node->safe_psql('postgres', "SELECT reliq.discard_dead_letter($bobs)", extra_params => ['-U', 'bob']),
	't', 'bob can');

# Secrets.
($ret, $out, $err) = $node->psql('postgres', 'SHOW reliq.nats_password', extra_params => ['-U', 'alice']);
# (PostgreSQL 15: "must be superuser or have privileges of
# pg_read_all_settings ..."; 16 and later: "permission denied to examine
# ...", with the role in the detail.)
like($err, qr/must be superuser or have privileges of pg_read_all_settings|permission denied to examine "reliq.nats_password"/,
	'a secret setting cannot be read by a non-superuser');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_settings
                                   WHERE name IN ('reliq.nats_password', 'reliq.nats_token', 'reliq.nats_user',
                                                  'reliq.nats_credentials_file', 'reliq.nats_tls_key_file')},
		extra_params => ['-U', 'alice']),
	'0', 'the secret settings are not listed to a non-superuser');
$node->safe_psql('postgres', "ALTER SYSTEM SET reliq.nats_url = '$url_with_password'");
$node->reload;
ok(wait_for($node, q{SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'reliq worker'}),
	'workers running');
$node->safe_psql('postgres', q{SELECT reliq.publish('p.alice', 'z'::bytea)});
ok(wait_idle($node, 'alice'), 'consuming with credentials in the URL');
ok($node->log_contains(qr/connected to NATS at nats:\/\/\*\*\*\@127\.0\.0\.1/),
	'the URL is logged with its credentials masked');
# PostgreSQL's postmaster itself logs 'parameter "reliq.nats_url" changed
# to "..."' with the new value on reload (for every setting); reliq's own
# messages must never show a secret.
my @leaks = grep { /\Q$secret\E/ && !/parameter "reliq\.nats_url" changed to/ }
  split /\n/, slurp_file($node->logfile);
is(scalar @leaks, 0, 'reliq never writes the password to the log') or diag(@leaks);
is($node->safe_psql('postgres', "SELECT count(*) FROM reliq.subscription_stats WHERE last_error LIKE '%$secret%'"),
	'0', 'nor in last_error');

$node->stop;
$nats->stop;
done_testing();
