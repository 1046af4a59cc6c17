# ordering => 'key' (issue 20): the messages of one key are applied in
# stream order through failures and retries, while other keys flow.  A
# message of key "a" fails twice before it succeeds: with ordering by a
# subject token, a's later messages wait for it and the other keys are
# applied meanwhile; the same stream without ordering applies a's later
# messages first (which shows what the test would catch).  An upsert sink
# ordered by its key ends at the last message of a key whose older
# message failed once (unordered, the retried older message overwrites
# the newer).  The settings refused: 'key' without an upsert key taken
# from the subject.  (Concurrency above 1: 037_ordering_workers.pl.)
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'ordering');
$nats->start;
$nats->stream_create('ORD', ['ord.>', 'acct.>']);

my $node = reliq_node('ordering', $nats);
$node->safe_psql('postgres', q{
	-- a sequence per subscription, not transactional: it counts every try
	-- (a failing batch tries a message twice: whole, then alone)
	CREATE SEQUENCE tries_ordered;
	CREATE SEQUENCE tries_unordered;
	CREATE TABLE log (id bigserial, sub text, key text, n int);
	CREATE FUNCTION apply(m reliq.message) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE j jsonb := reliq.message_json(m);
	BEGIN
		IF j->>'key' = 'a' AND (j->>'n')::int = 2
		   AND nextval(format('tries_%s', m.subscription)) <= 4 THEN
			RAISE EXCEPTION 'a.2 is not ready yet';
		END IF;
		INSERT INTO log (sub, key, n) VALUES (m.subscription, j->>'key', (j->>'n')::int);
	END $$;
	SELECT reliq.create_subscription('ordered', stream => 'ORD', subject => 'ord.>',
	       handler => 'apply(reliq.message)'::regprocedure, batch_size => 10,
	       max_deliver => 5, backoff => '{1s}', ordering => '$subject[2]', enabled => false);
	SELECT reliq.create_subscription('unordered', stream => 'ORD', subject => 'ord.>',
	       handler => 'apply(reliq.message)'::regprocedure, batch_size => 10,
	       max_deliver => 5, backoff => '{1s}', enabled => false);
	-- five keys, five messages each, interleaved: ord.<key>.<n>
	SELECT count(reliq.publish(format('ord.%s.%s', k, n), format('{"key": "%s", "n": %s}', k, n)))
	  FROM generate_series(1, 5) n, unnest(ARRAY['a', 'b', 'c', 'd', 'e']) k;
	SELECT reliq.alter_subscription('ordered', enabled => true);
	SELECT reliq.alter_subscription('unordered', enabled => true);
});
ok(wait_for($node, q{SELECT count(*) = 50 FROM log}, 60), 'both subscriptions applied all 25 messages');
ok(wait_idle($node, 'ordered', 60), 'ordered: idle');

my $out_of_order = q{
	SELECT count(*) FROM (SELECT n, lag(n) OVER (PARTITION BY key ORDER BY id) AS prev
	                        FROM log WHERE sub = '%s') x
	 WHERE n <= prev};
is($node->safe_psql('postgres', sprintf($out_of_order, 'ordered')), '0',
	'ordered: every key applied in stream order');
is($node->safe_psql('postgres', q{SELECT string_agg(n::text, ',' ORDER BY id) FROM log WHERE sub = 'ordered' AND key = 'a'}),
	'1,2,3,4,5', "ordered: a's later messages waited for a.2");
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM log
	 WHERE sub = 'ordered' AND key <> 'a'
	   AND id > (SELECT id FROM log WHERE sub = 'ordered' AND key = 'a' AND n = 2)}),
	'0', 'ordered: the other keys were all applied while a.2 was failing');
is($node->safe_psql('postgres', q{SELECT failed, dead_lettered FROM reliq.subscription_stats WHERE subscription_name = 'ordered'}),
	'2|0', 'ordered: two failures, no dead letter');
isnt($node->safe_psql('postgres', sprintf($out_of_order, 'unordered')), '0',
	"unordered: a's later messages passed a.2 (what ordering prevents)");
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT (sub, key, n)) FROM log'),
	'50|50', 'each message applied once by each subscription');

# An upsert sink ordered by its key (taken from the subject): a key's
# older message fails once; its newer one waits, and the row ends at the
# newer.  A trigger refuses version 1 of account 7 the first time (the
# batch, then the message alone: two tries).
$node->safe_psql('postgres', q{
	CREATE SEQUENCE acct_tries;
	CREATE TABLE accounts (id int PRIMARY KEY, balance int, version int);
	CREATE FUNCTION refuse_once() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF NEW.id = 7 AND NEW.version = 1 AND nextval('acct_tries') <= 2 THEN
			RAISE EXCEPTION 'account 7 is busy' USING ERRCODE = 'check_violation';
		END IF;
		RETURN NEW;
	END $$;
	CREATE TRIGGER refuse_once BEFORE INSERT OR UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION refuse_once();
	SELECT reliq.create_subscription('accounts', stream => 'ORD', subject => 'acct.>',
	       target => 'accounts'::regclass, mode => 'upsert', columns => '{"id": "$subject[2]"}',
	       ordering => 'key', batch_size => 10, backoff => '{2s}');
	SELECT reliq.publish('acct.7', '{"balance": 100, "version": 1}'::text);
	SELECT reliq.publish('acct.8', '{"balance": 800, "version": 1}'::text);
});
# The newer message of account 7 comes while the older one waits for its
# redelivery (a batch of its own: in one batch the two would collapse).
ok(wait_for($node, q{SELECT failed = 1 FROM reliq.subscription_stats WHERE subscription_name = 'accounts'}, 60),
	"account 7's first message failed");
$node->safe_psql('postgres', q{SELECT reliq.publish('acct.7', '{"balance": 70, "version": 2}'::text)});
ok(wait_for($node, q{SELECT processed = 3 FROM reliq.subscription_stats WHERE subscription_name = 'accounts'}, 60),
	'the accounts applied');
is($node->safe_psql('postgres', q{SELECT string_agg(id || ':' || balance || ':' || version, ',' ORDER BY id) FROM accounts}),
	'7:70:2,8:800:1', 'the row of a key whose older message failed ends at the newer message');

# Refused settings.
my ($ret, $stdout, $stderr) = $node->psql('postgres', q{
	SELECT reliq.alter_subscription('unordered', ordering => 'key')});
like($stderr, qr/needs a table sink in upsert mode/, "'key' refused without an upsert key");
($ret, $stdout, $stderr) = $node->psql('postgres', q{
	SELECT reliq.alter_subscription('accounts', columns => '{}')});
like($stderr, qr/needs key column "id" taken from the subject or a header/,
	'a key no longer taken from the subject refused');
is($node->safe_psql('postgres', q{SELECT ordering FROM reliq.subscription WHERE subscription_name = 'accounts'}),
	'key', 'and the setting unchanged');

$node->stop;
$nats->stop;
done_testing();
