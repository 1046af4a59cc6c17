# Two clusters that both believe they own a subscription: only the lease
# holder applies; the other is 'fenced' until reliq.take_over() moves the
# lease, and then the former owner stops.  Whoever ends as the owner has
# every message exactly once.
#
#   a. a standby promoted while the old primary keeps running (a network
#      partition, a mistaken failover)
#   b. a copy made with pg_dump -Fc and pg_restore into a fresh cluster
#      (CREATE EXTENSION by the restore; reliq's configuration tables,
#      ledger and floor come with the dump), pointed at the same NATS
#
# Messages flow throughout (a background publisher at a steady rate).
# Whether a fenced cluster applies nothing is checked deterministically: a
# batch is published while it is fenced, the owner applies all of it, and
# the fenced cluster's row count has not moved.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);
use ReliqTest::Nats;
use ReliqTest::Node;
use ReliqTest::Replication;

my $BG   = 3000;    # background messages, ids 1..3000
my $RATE = 150;     # per second: they flow for 20 s
my $P2   = 100;     # published while the newcomer is fenced: 3001..3100
my $P3   = 400;     # published after the take-over: 3101..3500
my $N    = $BG + $P2 + $P3;

my $nats = ReliqTest::Nats->new(name => 'splitbrain');
$nats->start;

sub rows
{
	my ($node) = @_;
	return $node->safe_psql('postgres', 'SELECT count(*) FROM applied');
}

# Output of a query, or its error.
sub try_sql
{
	my ($node, $query) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $query);
	return $ret == 0 ? $out : "(failed: $err)";
}

sub health_text
{
	my ($node, $sub) = @_;
	my ($ret, $out) = $node->psql('postgres',
		"SELECT status || ': ' || array_to_string(reasons, '; ') FROM reliq.health() WHERE subscription_name = '$sub'");
	return $ret == 0 ? $out : '(health() failed)';
}

# Wait until the row count of $node has not moved for $quiet seconds
# (bounded); returns that count, or undef.
sub wait_still
{
	my ($node, $quiet, $timeout) = @_;
	my $deadline = time + $timeout;
	my ($last, $since) = (rows($node), time);
	while (time < $deadline)
	{
		sleep 0.25;
		my $now = rows($node);
		if ($now != $last) { ($last, $since) = ($now, time); next; }
		return $last if time - $since >= $quiet;
	}
	diag($node->name . " still applying after ${timeout}s");
	return undef;
}

# Both clusters run; $owner holds the lease and applies, $newcomer must be
# fenced.  Then the take-over.  $what names the scenario.
sub fence_and_take_over
{
	my (%a) = @_;
	my ($owner, $newcomer, $sub, $subject, $what, $publisher) =
	  @a{qw(owner newcomer sub subject what publisher)};

	my $baseline = $a{baseline};
	ok(wait_for($newcomer, "SELECT state = 'fenced' FROM reliq.subscription_stats WHERE subscription_name = '$sub'", 60),
		"$what: the newcomer is fenced");
	diag("$what: newcomer's subscription_stats: state, lease_holder = "
		  . try_sql($newcomer, "SELECT state || ', ' || coalesce(lease_holder, '(null)') FROM reliq.subscription_stats WHERE subscription_name = '$sub'"));
	ok(wait_for($newcomer, "SELECT status = 'down' AND array_to_string(reasons, ' ') LIKE '%fenced%' "
			  . "AND array_to_string(reasons, ' ') LIKE '%reliq.take_over(''$sub'')%' "
			  . "FROM reliq.health() WHERE subscription_name = '$sub'", 30),
		"$what: health() on the newcomer: down, fenced, names reliq.take_over('$sub')");
	diag("$what: newcomer's health(): " . health_text($newcomer, $sub));
	is(try_sql($owner, "SELECT state FROM reliq.subscription_stats WHERE subscription_name = '$sub'"),
		'running', "$what: the owner is running");
	diag("$what: owner's health(): " . health_text($owner, $sub));

	# While fenced: a batch the owner applies in full, the newcomer not at all.
	my $t_fenced = time;
	$nats->publish("$subject.p2", count => $P2, start => $BG + 1, payload => '{"id":%d}',
		msg_id => "$sub-%d");
	ok(wait_for($owner, sprintf('SELECT count(*) = %d FROM applied WHERE id > %d AND id <= %d', $P2, $BG, $BG + $P2), 60),
		"$what: the owner applies what is published meanwhile");
	sleep(3 - (time - $t_fenced)) if time - $t_fenced < 3;
	is(rows($newcomer), $baseline, "$what: the fenced newcomer applied nothing");

	# The take-over.
	my $t_take = time;
	$newcomer->safe_psql('postgres', "SELECT reliq.take_over('$sub')");
	ok(wait_for($owner, "SELECT state = 'fenced' FROM reliq.subscription_stats WHERE subscription_name = '$sub'", 60),
		"$what: the former owner becomes fenced");
	diag(sprintf('%s: former owner fenced %.2f s after take_over', $what, time - $t_take));
	diag("$what: former owner's health(): " . health_text($owner, $sub));
	my $still = wait_still($owner, 3, 60);
	ok(defined $still, "$what: the former owner stops applying");
	ok(wait_for($newcomer, "SELECT count(*) > $baseline FROM applied", 60),
		"$what: the new owner applies");
	my $first = $newcomer->safe_psql('postgres',
		sprintf('SELECT extract(epoch FROM min(at)) FROM applied WHERE at >= to_timestamp(%.6f)', $t_take));
	diag(sprintf('%s: first commit on the new owner %.2f s after take_over', $what, $first - $t_take))
	  if $first ne '';

	# After the take-over: the rest, applied by the new owner only.
	$nats->publish("$subject.p3", count => $P3, start => $BG + $P2 + 1, payload => '{"id":%d}',
		msg_id => "$sub-%d");
	is($nats->wait_publish($publisher), $BG, "$what: background messages published");
	ok(wait_for($newcomer, "SELECT count(DISTINCT id) >= $N FROM applied", 180),
		"$what: the new owner consumed everything");
	ok(wait_idle($newcomer, $sub, 60), "$what: idle");
	is($newcomer->safe_psql('postgres',
			'SELECT count(*), count(DISTINCT id), min(id), max(id) FROM applied'),
		"$N|$N|1|$N", "$what: every message exactly once on the new owner");
	is(rows($owner), $still // -1, "$what: the former owner applied nothing more after it was fenced");
	my ($orows, $odistinct) = split /\|/, $owner->safe_psql('postgres',
		'SELECT count(*), count(DISTINCT id) FROM applied');
	is($orows, $odistinct, "$what: nothing applied twice on the former owner either");
	diag(sprintf('%s: the former owner ended with %d of %d messages', $what, $odistinct, $N));
	return;
}

my $setup = q{
	-- no unique constraint: a message applied twice shows up as two rows
	CREATE TABLE applied (id int, seq bigint, at timestamptz DEFAULT clock_timestamp());
	CREATE FUNCTION apply(m reliq.message) RETURNS void LANGUAGE sql AS $$
		INSERT INTO applied (id, seq) VALUES ((reliq.message_json(m)->>'id')::int, m.stream_seq)
	$$;
	SELECT reliq.create_subscription('%s', stream => '%s', subject => '%s.>',
	       handler => 'apply(reliq.message)'::regprocedure, batch_size => 50,
	       concurrency => 2, ack_wait => '5s');
};

# a. A standby promoted while the old primary keeps running.
{
	my $what = '(a) promoted standby, old primary alive';
	$nats->stream_create('SPLITA', ['splita.>']);
	my $primary = reliq_primary('old_primary', $nats);
	my $standby = reliq_standby($primary, 'promoted');
	$primary->safe_psql('postgres', sprintf($setup, 'split_a', 'SPLITA', 'splita'));
	$primary->wait_for_catchup($standby);

	my $publisher = $nats->publish_bg('splita.bg', count => $BG, start => 1,
		payload => '{"id":%d}', msg_id => 'split_a-%d', rate => $RATE, retry_for => 120);
	ok(wait_for($primary, 'SELECT count(*) >= 300 FROM applied', 60), "$what: the primary consumes");
	promote_standby($standby);
	my $baseline = rows($standby);
	diag("$what: promoted with $baseline rows");
	ok(wait_for($primary, sprintf('SELECT count(*) > %d FROM applied', $baseline + 100), 60),
		"$what: the old primary goes on applying after the promotion");

	fence_and_take_over(owner => $primary, newcomer => $standby, sub => 'split_a',
		subject => 'splita', what => $what, publisher => $publisher, baseline => $baseline);
	$primary->stop;
	$standby->stop;
}

# b. A copy made by pg_dump and pg_restore.
{
	my $what = '(b) pg_dump/pg_restore copy';
	$nats->stream_create('SPLITB', ['splitb.>']);
	my $orig = reliq_node('original', $nats);
	$orig->safe_psql('postgres', sprintf($setup, 'split_b', 'SPLITB', 'splitb'));

	my $publisher = $nats->publish_bg('splitb.bg', count => $BG, start => 1,
		payload => '{"id":%d}', msg_id => 'split_b-%d', rate => $RATE, retry_for => 120);
	ok(wait_for($orig, 'SELECT count(*) >= 300 FROM applied', 60), "$what: the original consumes");

	my $dump = PostgreSQL::Test::Utils::tempdir() . '/original.dump';
	$orig->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', 'postgres' ], "$what: pg_dump -Fc");
	my $copy = reliq_node('copy', $nats, no_extension => 1);
	$copy->command_ok([ 'pg_restore', '-d', 'postgres', $dump ], "$what: pg_restore");
	is($copy->safe_psql('postgres', q{SELECT count(*) FROM reliq.subscription WHERE subscription_name = 'split_b'}),
		'1', "$what: the subscription came with the dump");
	my $baseline = rows($copy);
	diag(sprintf('%s: restored %d rows, ledger %s, floor %s', $what, $baseline,
			$copy->safe_psql('postgres', 'SELECT count(*) FROM reliq._ledger'),
			$copy->safe_psql('postgres', q{SELECT coalesce(string_agg(t::text, ' '), 'none') FROM reliq._stream_floor t})));

	fence_and_take_over(owner => $orig, newcomer => $copy, sub => 'split_b',
		subject => 'splitb', what => $what, publisher => $publisher, baseline => $baseline);
	$orig->stop;
	$copy->stop;
}

$nats->stop;
done_testing();
