# pg_upgrade with reliq, from the old major (Debian's PostgreSQL 15, the
# PostgreSQL of this run) to the one RELIQ_UPGRADE_PG_CONFIG names (18):
# a cluster with a handler subscription and a table sink, a dead letter,
# and batches committed whose acks never reached the server (the NATS
# connection black-holed by a proxy), stopped cleanly; pg_upgrade --check
# says nothing about reliq; pg_upgrade --copy runs while messages are still
# published; the new cluster, with the same settings, applies every message
# exactly once (the unacked ones come again and the ledger absorbs them),
# keeps the dead letter, and takes the consumers' leases by itself.
#
# reliq must be installed into both PostgreSQL installations (scripts/test
# does it when RELIQ_UPGRADE_PG_CONFIG is set).
use strict;
use warnings;
use File::Basename qw(dirname);
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);
use ReliqTest::Local qw(free_port);
use ReliqTest::Nats;
use ReliqTest::Node;
use ReliqTest::Proxy;

my $new_pg_config = $ENV{RELIQ_UPGRADE_PG_CONFIG};
plan skip_all =>
  'RELIQ_UPGRADE_PG_CONFIG is not set (the pg_config of the PostgreSQL major to upgrade to, with reliq installed)'
  unless $new_pg_config;
my $new_bindir = `'$new_pg_config' --bindir`;
chomp $new_bindir;
my $old_bindir = `pg_config --bindir`;    # the PostgreSQL of this run
chomp $old_bindir;
my ($old_major) = `$old_bindir/pg_config --version` =~ /PostgreSQL (\d+)/;
my ($new_major) = `'$new_pg_config' --version` =~ /PostgreSQL (\d+)/;
plan skip_all => "RELIQ_UPGRADE_PG_CONFIG is PostgreSQL $new_major, not newer than this run's $old_major"
  unless $new_major && $old_major && $new_major > $old_major;
note("pg_upgrade from PostgreSQL $old_major ($old_bindir) to $new_major ($new_bindir)");

my $nats = ReliqTest::Nats->new(name => 'pgupgrade');
$nats->start;
$nats->stream_create('UPG', ['upg.>']);
# reliq reaches NATS through a proxy, so that acks can be made to vanish.
my $proxy = ReliqTest::Proxy->new(target_port => $nats->port, port => free_port())->start;

my $old = reliq_node('pgupgrade_old', $proxy);
$old->safe_psql('postgres', q{
	-- no unique constraints: a message applied twice shows up as two rows
	CREATE TABLE handled (id int, seq bigint);
	CREATE TABLE failing (id int PRIMARY KEY);
	INSERT INTO failing VALUES (150);
	CREATE TABLE sink_rows (id int, note text);
	CREATE FUNCTION on_h(m reliq.message) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE v_id int := (reliq.message_json(m)->>'id')::int;
	BEGIN
		IF EXISTS (SELECT FROM failing f WHERE f.id = v_id) THEN
			RAISE EXCEPTION 'message % fails', v_id;
		END IF;
		INSERT INTO handled VALUES (v_id, m.stream_seq);
	END $$;
	SELECT reliq.create_subscription('h', stream => 'UPG', subject => 'upg.h',
	       handler => 'on_h(reliq.message)'::regprocedure, batch_size => 50,
	       max_deliver => 2, backoff => '{100ms}', ack_wait => '30s');
	SELECT reliq.create_subscription('s', stream => 'UPG', subject => 'upg.s',
	       target => 'sink_rows'::regclass, batch_size => 50, ack_wait => '30s');
});

# 1. Applied and acknowledged on the old major; message 150 is dead-lettered.
$nats->publish('upg.h', count => 300, start => 1, payload => '{"id":%d}', msg_id => 'h-%d');
$nats->publish('upg.s', count => 300, start => 1, payload => '{"id":%d,"note":"n"}', msg_id => 's-%d');
ok(wait_idle($old, 'h'), 'old: handler subscription drained');
ok(wait_idle($old, 's'), 'old: sink drained');
is($old->safe_psql('postgres', q{SELECT count(*), count(DISTINCT id) FROM handled}), '299|299',
	'old: 299 handled once each');
is($old->safe_psql('postgres', q{SELECT count(*) FROM sink_rows}), '300', 'old: 300 rows sunk');
my $dead_letter = $old->safe_psql('postgres',
	q{SELECT id, subscription, stream_seq, convert_from(data, 'UTF8'), error_message FROM reliq.dead_letter});
like($dead_letter, qr/^\d+\|h\|\d+\|\{"id":150\}\|message 150 fails$/, 'old: message 150 dead-lettered');

# 2. Applied but never acknowledged: the workers wait on a lock with a
# batch each in hand; the NATS connection goes silent; the lock goes, the
# batches commit, and their acks go nowhere.
my ($lock_in, $lock_out, $lock_err) = ('', '', '');
my $locker = IPC::Run::start(
	[ 'psql', '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-d', $old->connstr('postgres') ],
	'<', \$lock_in, '>', \$lock_out, '2>', \$lock_err,
	IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
$lock_in .= "BEGIN; LOCK TABLE handled, sink_rows IN EXCLUSIVE MODE; SELECT 'locked';\n";
$locker->pump until $lock_out =~ /locked/;
$nats->publish('upg.h', count => 100, start => 301, payload => '{"id":%d}', msg_id => 'h-%d');
$nats->publish('upg.s', count => 100, start => 301, payload => '{"id":%d,"note":"n"}', msg_id => 's-%d');
ok(wait_for($old, q{SELECT count(DISTINCT relation) = 2 FROM pg_locks
                     WHERE NOT granted AND relation IN ('handled'::regclass, 'sink_rows'::regclass)}),
	'old: both subscriptions hold a batch, waiting for the lock');
$proxy->blackhole;
$lock_in .= "COMMIT;\n\\q\n";
$locker->finish;
ok(wait_for($old, q{SELECT (SELECT count(*) FROM handled WHERE id > 300) > 0
                       AND (SELECT count(*) FROM sink_rows WHERE id > 300) > 0
                       AND NOT EXISTS (SELECT FROM pg_locks WHERE NOT granted)}),
	'old: the held batches committed');
sleep 1;    # anything the workers still had in hand
my $unacked_h = $old->safe_psql('postgres', 'SELECT count(*) FROM handled WHERE id > 300');
my $unacked_s = $old->safe_psql('postgres', 'SELECT count(*) FROM sink_rows WHERE id > 300');
my $ci_h = $nats->consumer_info('UPG', 'reliq_h');
my $ci_s = $nats->consumer_info('UPG', 'reliq_s');
note("applied, not acknowledged: h $unacked_h (server ack floor $ci_h->{ack_floor}{stream_seq}), "
	  . "s $unacked_s (server ack floor $ci_s->{ack_floor}{stream_seq})");
ok($ci_h->{num_ack_pending} >= $unacked_h && $ci_s->{num_ack_pending} >= $unacked_s,
	'the server has no ack for what the old cluster committed last');

# The old major stops cleanly, as before any pg_upgrade; its monitor
# cannot release the leases, since NATS does not hear it.
my $old_sysid = system_identifier($old->data_dir, $old_bindir);
my $attver = $old->safe_psql('postgres',
	q{SELECT count(*) FROM pg_attribute WHERE array_to_string(attoptions, ',') LIKE '%pg_attver=%'});
$old->stop('fast');
strip_attribute_versions($old) if $attver > 0 && !binary_mentions("$new_bindir/pg_dump", 'pg_attver');
my $old_next_xid = next_xid($old->data_dir, $old_bindir);
$proxy->restore;

# 3. The new major: a fresh cluster (no data checksums, as the old one);
# the old cluster's reliq settings are added after the first check.
my $new = PostgreSQL::Test::Cluster->new('pgupgrade_new', install_path => dirname($new_bindir));
$new->init(extra => ['--no-data-checksums']);

# Producers do not stop for an upgrade.
my $during = 2000;
my $publisher = $nats->publish_bg('upg.h', count => $during, start => 401,
	payload => '{"id":%d}', msg_id => 'h-%d', rate => 200);

my $socketdir = PostgreSQL::Test::Utils::tempdir_short();
my $workdir   = PostgreSQL::Test::Utils::tempdir();    # pg_upgrade writes into its cwd
my @pg_upgrade = (
	"$new_bindir/pg_upgrade",
	'--old-bindir' => $old_bindir,        '--new-bindir'  => $new_bindir,
	'--old-datadir' => $old->data_dir,    '--new-datadir' => $new->data_dir,
	'--old-port' => $old->port,           '--new-port'    => $new->port,
	'--socketdir' => $socketdir);
my ($out, $err);
{
	chdir $workdir or die "chdir $workdir: $!";
	my $t0 = time;
	my $ok = IPC::Run::run([ @pg_upgrade, '--check' ], '>', \$out, '2>', \$err);
	note(sprintf("pg_upgrade --check: %.1f s\n%s%s", time - $t0, $out, $err));
	# The new cluster has no reliq settings yet: pg_upgrade LOADs the
	# library without shared_preload_libraries to see that it is there.
	ok($ok, 'pg_upgrade --check succeeds');
	unlike(without_paths("$out$err"), qr/reliq/i, 'pg_upgrade --check says nothing about reliq');

	$new->append_conf('postgresql.conf', reliq_settings($old));
	$t0 = time;
	$ok = IPC::Run::run([ @pg_upgrade, '--copy', '--retain' ], '>', \$out, '2>', \$err);
	note(sprintf("pg_upgrade --copy: %.1f s\n%s%s", time - $t0, $out, $err));
	ok($ok, 'pg_upgrade --copy succeeds');
	unlike(without_paths("$out$err"), qr/reliq/i, 'pg_upgrade says nothing about reliq');
	chdir $PostgreSQL::Test::Utils::tmp_check;
}
# Both clusters had reliq preloaded while pg_upgrade ran them.
my @reliq_processes;
for my $log (glob($new->data_dir . '/pg_upgrade_output.d/*/log/pg_upgrade_server.log'))
{
	open my $fh, '<', $log or die "$log: $!";
	push @reliq_processes,
	  grep { /reliq launcher started|reliq worker \d+ connected|background worker "reliq/ } <$fh>;
	close $fh;
}
is(scalar(@reliq_processes), 0, 'no reliq process ran in binary-upgrade mode')
  or diag(join('', @reliq_processes[ 0 .. ($#reliq_processes < 9 ? $#reliq_processes : 9) ]));
# pg_upgrade starts the old cluster (binary-upgrade mode) to read its
# schema after it has noted its next transaction id; a transaction there
# would hand the new cluster rows with transaction ids it gives out again.
is(next_xid($old->data_dir, $old_bindir), $old_next_xid,
	'no transaction ran in the old cluster while pg_upgrade had it started');

# 4. The new major starts, takes the leases and goes on.
$new->start;
my $new_sysid = system_identifier($new->data_dir, $new_bindir);
isnt($new_sysid, $old_sysid, "the new cluster has a system identifier of its own ($new_sysid, was $old_sysid)");
is($new->safe_psql('postgres', q{SELECT reliq.version() = extversion FROM pg_extension WHERE extname = 'reliq'}),
	't', 'reliq.version() works and matches the extension');
my $t0 = time;
my %seen;
while (time - $t0 < 60)
{
	my $states = $new->safe_psql('postgres',
		q{SELECT string_agg(subscription_name || ':' || state, ',' ORDER BY subscription_name) FROM reliq.subscription_stats});
	$seen{$_} //= sprintf('%.1f s', time - $t0) for split /,/, $states;
	last if $states eq 'h:running,s:running';
	sleep 0.1;
}
note('states after the start (first seen): '
	  . join(', ', map { "$_ at $seen{$_}" } sort { $seen{$a} <=> $seen{$b} } keys %seen));
ok($seen{'h:running'} && $seen{'s:running'}, 'both subscriptions run on the new cluster without reliq.take_over()');
like($new->safe_psql('postgres', q{SELECT lease_holder FROM reliq.subscription_stats WHERE subscription_name = 'h'}),
	qr/system $new_sysid /, 'the lease names the new cluster');

is($nats->wait_publish($publisher), $during, 'published during the upgrade');
$nats->publish('upg.h', count => 100, start => 401 + $during, payload => '{"id":%d}', msg_id => 'h-%d');
$nats->publish('upg.s', count => 200, start => 401, payload => '{"id":%d,"note":"n"}', msg_id => 's-%d');
my $total_h = 400 + $during + 100;
my $total_s = 600;
ok(wait_idle($new, 'h', 180), 'new: handler subscription drained');
ok(wait_idle($new, 's', 180), 'new: sink drained');

is($new->safe_psql('postgres',
		'SELECT count(*), count(DISTINCT id), count(DISTINCT seq), min(id), max(id) FROM handled'),
	($total_h - 1) . '|' . ($total_h - 1) . '|' . ($total_h - 1) . "|1|$total_h",
	'every handler message applied exactly once across the upgrade (150 aside)');
is($new->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id), min(id), max(id) FROM sink_rows'),
	"$total_s|$total_s|1|$total_s", 'every sink message inserted exactly once across the upgrade');
is($new->safe_psql('postgres',
		q{SELECT id, subscription, stream_seq, convert_from(data, 'UTF8'), error_message FROM reliq.dead_letter}),
	$dead_letter, 'the dead letter is kept');
my $h = reliq_stats($new, 'h');
my $s = reliq_stats($new, 's');
note("new: h received $h->{received} processed $h->{processed} duplicates $h->{duplicates}; "
	  . "s received $s->{received} processed $s->{processed} duplicates $s->{duplicates}");
ok($h->{duplicates} >= $unacked_h && $s->{duplicates} >= $unacked_s,
	'the applied but unacknowledged messages came again and were recognised');
is("$h->{state}|$s->{state}|$h->{failed}|$s->{failed}", 'running|running|0|0', 'stats: running, no failures');
is($new->safe_psql('postgres', q{SELECT string_agg(status, ',') FROM reliq.health()}), 'ok,ok', 'health() ok');

# The dead letter replays on the new major once its cause is gone.
$new->safe_psql('postgres', q{
	DELETE FROM failing;
	SELECT reliq.replay_dead_letter(id) FROM reliq.dead_letter;
});
is($new->safe_psql('postgres', q{SELECT count(*), count(DISTINCT id) FROM handled}),
	"$total_h|$total_h", 'the dead letter replayed on the new major');

$new->stop;
$proxy->stop;
$nats->stop;
done_testing();

# PostgreSQL's own version skew, not reliq's: since 15.20 (November 2026)
# every column carries an attribute option pg_attver, which 15's pg_dump
# leaves out and a PostgreSQL 18 released before (18.6, August 2026) knows
# nothing of: its pg_dump copies it and its server refuses it (ERROR:
# unrecognized parameter "pg_attver"), so pg_upgrade 15.20 -> 18.6 fails
# for any database with a table, reliq or not.  The newest 18 in Debian is
# 18.6 today, so here (and only here, on a throwaway cluster) the option
# is removed from the stopped old cluster, in single-user mode without
# reliq, before pg_upgrade.  Users upgrade to an 18 release at least as
# new as their 15 (docs/upgrading-postgresql.md).
sub strip_attribute_versions
{
	my ($node) = @_;
	# one line: in single-user mode, a newline ends a command
	my $sql = q{UPDATE pg_catalog.pg_attribute SET attoptions = (SELECT array_agg(o) FROM unnest(attoptions) o WHERE o NOT LIKE 'pg_attver=%') WHERE array_to_string(attoptions, ',') LIKE '%pg_attver=%';}
	  . "\n";
	my ($out, $err);
	IPC::Run::run([ "$old_bindir/postgres", '--single', '-D', $node->data_dir,
		'-c', 'shared_preload_libraries=', 'postgres' ], '<', \$sql, '>', \$out, '2>', \$err)
	  && "$out$err" !~ /ERROR/
	  or die "single-user mode failed: $out$err";
	note('PostgreSQL version skew: pg_attver removed from the old cluster (its pg_dump '
		  . 'omits it, the new major\'s does not know it)');
}

# pg_upgrade's words without the paths it prints (which may hold "reliq").
sub without_paths
{
	my ($text) = @_;
	$text =~ s{\S*/\S*}{}g;
	return $text;
}

sub binary_mentions
{
	my ($file, $string) = @_;
	open my $fh, '<:raw', $file or die "$file: $!";
	local $/;
	my $content = <$fh>;
	close $fh;
	return index($content, $string) >= 0;
}

# The reliq settings (and what they need) of a node's postgresql.conf.
sub reliq_settings
{
	my ($node) = @_;
	open my $fh, '<', $node->data_dir . '/postgresql.conf' or die $!;
	my $conf = join '', grep { /^(shared_preload_libraries|reliq\.|max_worker_processes)/ } <$fh>;
	close $fh;
	return $conf;
}

sub controldata
{
	my ($datadir, $bindir, $field) = @_;
	my $out = `'$bindir/pg_controldata' '$datadir'`;
	$out =~ /^\Q$field\E:\s*(.*)$/m or die "no \"$field\" in pg_controldata of $datadir";
	return $1;
}
sub system_identifier { return controldata(@_, 'Database system identifier'); }
sub next_xid          { return controldata(@_, "Latest checkpoint's NextXID"); }
