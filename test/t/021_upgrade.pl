# Upgrading: reliq 0.1's SQL (reliq--0.1.sql as released) with
# subscriptions (a handler and a table sink), ledger rows and dead letters
# as 0.1 left them, messages published all the while, then
# ALTER EXTENSION reliq UPDATE.  The workers go on with nothing lost and
# nothing applied twice (0.1's ledger is honoured, its dead letters replay),
# and the catalog equals a fresh install of 0.3 in another database.
#
# Only one library is installed (the current one), so what a 0.1 worker would have
# written -- effects, ledger rows and dead letters of the messages it
# applied, none of them acknowledged yet on the server (as after a crash
# between COMMIT and the acks) -- is written here by SQL, the way
# src/batch.c writes it.  With the 0.1 catalog the 0.2 workers refuse to
# run, naming ALTER EXTENSION reliq UPDATE.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use Time::Local qw(timegm);
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'upgrade');
$nats->start;
$nats->stream_create('UPG', ['upg.>']);

my $node = reliq_node('upgrade', $nats, no_extension => 1);
$node->safe_psql('postgres', q{CREATE EXTENSION reliq VERSION '0.1'});
is($node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'reliq'}),
	'0.1', 'reliq 0.1 installed from its released script');
is($node->safe_psql('postgres', q{SELECT to_regprocedure('reliq.version()') IS NULL}),
	't', 'reliq.version() is new in 0.2');

# What 0.1 consumed: handler messages 1..200 are stream sequences 1..200,
# sink messages 1..200 are sequences 201..400.
my $pre = 200;
$nats->publish('upg.h', count => $pre, start => 1, payload => '{"id":%d}', msg_id => 'h-%d');
$nats->publish('upg.s', count => $pre, start => 1, payload => '{"id":%d,"note":"n"}', msg_id => 's-%d');

$node->safe_psql('postgres', q{
	-- no unique constraints: a message applied twice shows up as two rows
	CREATE TABLE handled (id int, seq bigint);
	CREATE TABLE failing (id int PRIMARY KEY);
	CREATE TABLE sink_rows (id int, note text);
	CREATE FUNCTION on_h(m reliq.message) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE v_id int := (reliq.message_json(m)->>'id')::int;
	BEGIN
		IF EXISTS (SELECT FROM failing f WHERE f.id = v_id) THEN
			RAISE EXCEPTION 'message % fails', v_id;
		END IF;
		INSERT INTO handled VALUES (v_id, m.stream_seq);
	END $$;
	-- the 0.1 API; enabled once 0.1's rows are in place
	SELECT reliq.create_subscription('h', stream => 'UPG', subject => 'upg.h',
	       handler => 'on_h(reliq.message)'::regprocedure, batch_size => 50,
	       max_deliver => 2, backoff => '{100ms}', ack_wait => '5s', enabled => false);
	SELECT reliq.create_subscription('s', stream => 'UPG', subject => 'upg.s',
	       target => 'sink_rows'::regclass, batch_size => 50, ack_wait => '5s',
	       enabled => false);
});

# The stream's incarnation as the workers name it: its creation time in
# nanoseconds since the Unix epoch.
my $created = $nats->stream_info('UPG')->{created};
$created =~ /^(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)(?:\.(\d+))?Z$/
  or die "unexpected stream creation time $created";
my $created_ns = timegm($6, $5, $4, $3, $2 - 1, $1) . substr(($7 // '') . '0' x 9, 0, 9);

# 0.1 applied handler messages 1..100, dead-lettered 101 and 102, and sank
# 1..100; nothing of it acknowledged on the server.
$node->safe_psql('postgres', qq{
	BEGIN;
	INSERT INTO reliq._stream_identity (subscription_id, stream_created)
	SELECT id, $created_ns FROM reliq.subscription;
	INSERT INTO handled SELECT i, i FROM generate_series(1, 100) i;
	INSERT INTO reliq._ledger SELECT s.id, $created_ns, i
	  FROM reliq.subscription s, generate_series(1, 102) i WHERE s.subscription_name = 'h';
	INSERT INTO reliq.dead_letter (subscription_id, subscription, stream, subject, data,
	                               stream_seq, delivered, error_message, sqlstate)
	SELECT s.id, 'h', 'UPG', 'upg.h', convert_to(format('{"id":%s}', i), 'UTF8'), i, 2,
	       format('message %s fails', i), 'P0001'
	  FROM reliq.subscription s, generate_series(101, 102) i WHERE s.subscription_name = 'h';
	INSERT INTO failing VALUES (101), (102);
	INSERT INTO sink_rows SELECT i, 'n' FROM generate_series(1, 100) i;
	INSERT INTO reliq._ledger SELECT s.id, $created_ns, 200 + i
	  FROM reliq.subscription s, generate_series(1, 100) i WHERE s.subscription_name = 's';
	COMMIT;
});
my $old_dead_letters = $node->safe_psql('postgres',
	'SELECT id, stream_seq, error_message FROM reliq.dead_letter ORDER BY id');

# Messages keep coming, through the update and after it; two of them fail
# under 0.2 too and become dead letters.
my $total = 2200;
$node->safe_psql('postgres', 'INSERT INTO failing VALUES (1500), (1501)');
my @publishers = map {
	$nats->publish_bg("upg.$_", count => $total - $pre, start => $pre + 1,
		payload => $_ eq 'h' ? '{"id":%d}' : '{"id":%d,"note":"n"}',
		msg_id => "$_-%d", rate => 300)
} qw(h s);
$node->safe_psql('postgres', q{
	SELECT reliq.alter_subscription('h', enabled => true);
	SELECT reliq.alter_subscription('s', enabled => true);
});

# The launcher and the workers check the catalog's version: nothing runs
# on 0.1's SQL; the log says why and what to run.
my $refused = 0;
for (1 .. 150)
{
	last if ($refused = slurp_file($node->logfile) =~
		/extension "reliq" is installed at version 0\.1, but the loaded library is version 0\.3/);
	sleep 0.2;
}
ok($refused, 'a 0.3 library refuses a 0.1 catalog');
like(slurp_file($node->logfile), qr/HINT:\s+Run ALTER EXTENSION reliq UPDATE in database "postgres"/,
	'the hint names ALTER EXTENSION reliq UPDATE');
is($node->safe_psql('postgres', 'SELECT count(*) FROM handled'), '100',
	'nothing is applied on the 0.1 catalog');
sleep 1;

$node->safe_psql('postgres', 'ALTER EXTENSION reliq UPDATE');
is($node->safe_psql('postgres',
		q{SELECT extversion || ' ' || reliq.version() FROM pg_extension WHERE extname = 'reliq'}),
	'0.3 0.3', 'updated through 0.2 to 0.3; reliq.version() agrees');
is($node->safe_psql('postgres', 'SELECT id, stream_seq, error_message FROM reliq.dead_letter WHERE id <= 2 ORDER BY id'),
	$old_dead_letters, "0.1's dead letters are kept");

is($nats->wait_publish($_), $total - $pre, 'publisher done') for @publishers;
ok(wait_idle($node, 'h', 180), 'handler subscription drained');
ok(wait_idle($node, 's', 180), 'sink subscription drained');

# 0.1's dead letters: one replayed (its handler succeeds now), one discarded.
$node->safe_psql('postgres', 'DELETE FROM failing WHERE id = 101');
is($node->safe_psql('postgres',
		q{SELECT reliq.replay_dead_letter(id) FROM reliq.dead_letter WHERE stream_seq = 101 AND subscription = 'h'}),
	't', "a 0.1 dead letter replays under 0.2");
is($node->safe_psql('postgres',
		q{SELECT reliq.discard_dead_letter(id) FROM reliq.dead_letter WHERE stream_seq = 102 AND subscription = 'h'}),
	't', 'and another is discarded');

# Every message applied exactly once: 0.1's ledger absorbed the
# redeliveries of what 0.1 had applied.
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id), min(id), max(id) FROM handled'),
	($total - 3) . '|' . ($total - 3) . "|1|$total", 'handler: each message once, but the discarded one and the two dead letters of 0.2');
is($node->safe_psql('postgres', q{SELECT count(*) FROM handled WHERE id IN (102, 1500, 1501)}),
	'0', 'handler: the discarded and the failing messages are not applied');
is($node->safe_psql('postgres',
		q{SELECT string_agg(((convert_from(data, 'UTF8'))::jsonb->>'id'), ',' ORDER BY stream_seq) FROM reliq.dead_letter}),
	'1500,1501', 'the messages failing under 0.2 are dead letters');
is($node->safe_psql('postgres',
		q{SELECT count(*), count(DISTINCT id), min(id), max(id), bool_and(note = 'n') FROM sink_rows}),
	"$total|$total|1|$total|t", 'sink: each message once');
my $h = reliq_stats($node, 'h');
my $s = reliq_stats($node, 's');
cmp_ok($h->{duplicates}, '>=', 102, "handler: 0.1's ledger absorbed its 102 messages ($h->{duplicates} duplicates)");
cmp_ok($s->{duplicates}, '>=', 100, "sink: 0.1's ledger absorbed its 100 messages ($s->{duplicates} duplicates)");

# The updated catalog equals a fresh install of 0.3.
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION reliq');
my $catalog = q{
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'reliq'),
     rel AS (SELECT c.oid FROM pg_class c WHERE c.relnamespace = 'reliq'::regnamespace)
SELECT kind || ' ' || def FROM (
  SELECT 'extension', format('%s relocatable=%s config=%s conditions=%s', e.extversion, e.extrelocatable,
                             (SELECT array_agg(c::regclass::text ORDER BY c::regclass::text) FROM unnest(e.extconfig) c),
                             (SELECT array_agg(x ORDER BY x) FROM unnest(e.extcondition) x))
    FROM pg_extension e WHERE e.extname = 'reliq'
  UNION ALL
  SELECT 'member', pg_describe_object(d.classid, d.objid, d.objsubid)
    FROM pg_depend d, ext WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
  UNION ALL
  SELECT 'schema', format('%s owner=%s acl=%s', n.nspname, pg_get_userbyid(n.nspowner), n.nspacl)
    FROM pg_namespace n WHERE n.nspname = 'reliq'
  UNION ALL
  SELECT 'function', format('%s owner=%s acl=%s comment=%s%s%s', p.oid::regprocedure, pg_get_userbyid(p.proowner),
                            p.proacl, obj_description(p.oid, 'pg_proc'), E'\n', pg_get_functiondef(p.oid))
    FROM pg_proc p WHERE p.pronamespace = 'reliq'::regnamespace AND p.prokind <> 'a'
  UNION ALL
  SELECT 'relation', format('%s kind=%s owner=%s acl=%s rls=%s/%s comment=%s', c.oid::regclass, c.relkind,
                            pg_get_userbyid(c.relowner), c.relacl, c.relrowsecurity, c.relforcerowsecurity,
                            obj_description(c.oid, 'pg_class'))
    FROM pg_class c JOIN rel USING (oid)
  UNION ALL
  SELECT 'view', format('%s %s', c.oid::regclass, pg_get_viewdef(c.oid))
    FROM pg_class c JOIN rel USING (oid) WHERE c.relkind IN ('v', 'm')
  UNION ALL
  SELECT 'column', format('%s #%s %s %s notnull=%s default=%s identity=%s generated=%s acl=%s comment=%s',
                          a.attrelid::regclass,
                          row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum),
                          a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                          pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated, a.attacl,
                          col_description(a.attrelid, a.attnum))
    FROM pg_attribute a JOIN rel ON rel.oid = a.attrelid
    LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
   WHERE a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT 'constraint', format('%s %s %s', co.conrelid::regclass, co.conname, pg_get_constraintdef(co.oid))
    FROM pg_constraint co JOIN rel ON rel.oid = co.conrelid
  UNION ALL
  SELECT 'index', pg_get_indexdef(i.indexrelid)
    FROM pg_index i JOIN rel ON rel.oid = i.indrelid
  UNION ALL
  SELECT 'trigger', pg_get_triggerdef(t.oid)
    FROM pg_trigger t JOIN rel ON rel.oid = t.tgrelid WHERE NOT t.tgisinternal
  UNION ALL
  SELECT 'policy', format('%s %s %s roles=%s using=%s check=%s', p.tablename, p.policyname, p.cmd,
                          p.roles, p.qual, p.with_check)
    FROM pg_policies p WHERE p.schemaname = 'reliq'
  UNION ALL
  SELECT 'sequence', format('%s %s %s %s %s', s.seqrelid::regclass, s.seqtypid::regtype, s.seqstart,
                            s.seqincrement, s.seqcache)
    FROM pg_sequence s JOIN rel ON rel.oid = s.seqrelid
  UNION ALL
  SELECT 'type', format('%s %s owner=%s acl=%s', t.oid::regtype, t.typtype, pg_get_userbyid(t.typowner), t.typacl)
    FROM pg_type t WHERE t.typnamespace = 'reliq'::regnamespace
  UNION ALL
  SELECT 'event trigger', format('%s %s %s %s %s', e.evtname, e.evtevent, e.evtfoid::regproc, e.evtenabled, e.evttags)
    FROM pg_event_trigger e JOIN pg_depend d ON d.classid = 'pg_event_trigger'::regclass AND d.objid = e.oid
    JOIN ext ON d.refobjid = ext.oid AND d.deptype = 'e'
) AS c(kind, def)
ORDER BY 1
};
my @updated = split /\x1e/, $node->safe_psql('postgres', "SELECT string_agg(line, E'\\x1e' ORDER BY line) FROM ($catalog) AS l(line)");
my @fresh   = split /\x1e/, $node->safe_psql('fresh',    "SELECT string_agg(line, E'\\x1e' ORDER BY line) FROM ($catalog) AS l(line)");
my %count;
$count{ (split / /, $_)[0] }++ for @fresh;
note(join ', ', map { "$_: $count{$_}" } sort keys %count);
cmp_ok(scalar(grep { /^function / } @fresh), '>=', 30, 'the comparison covers the functions');
cmp_ok(scalar(grep { /^member / } @fresh), '>=', 40, 'and the extension members');
my %in_fresh   = map { $_ => 1 } @fresh;
my %in_updated = map { $_ => 1 } @updated;
my @only_updated = grep { !$in_fresh{$_} } @updated;
my @only_fresh   = grep { !$in_updated{$_} } @fresh;
ok(!@only_updated && !@only_fresh, 'the updated catalog equals a fresh install of 0.3')
  or diag("only after the update:\n", join("\n", @only_updated),
	"\nonly in the fresh install:\n", join("\n", @only_fresh));

$node->stop;
$nats->stop;
done_testing();
