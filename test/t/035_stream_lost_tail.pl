# A stream that loses its tail (issue 19, item 7).  JetStream acknowledges
# a publish before it is on disk; after an OS crash a stream may lose its
# last messages and hand their sequences out again to new messages.  The
# ledger and the floor name messages by sequence, so such a new message
# was taken for a redelivery: acked as a duplicate (nats-server 2.10 and
# later set the consumer back to the stream's end) or never delivered
# (2.9 keeps the consumer past it), never applied either way, and nothing
# said so.
#
# Here the loss is made by hand: 100 messages applied, nats-server
# stopped, the last 20 messages cut from the stream's file store, the
# server started again (its last sequence is then 80).
#
#   a. found by the monitor: the subscription is 'diverged' before new
#      messages come; health() says down, last_error gives the figures,
#      the metric says so.  New messages at sequences 81.. are neither
#      applied nor acked as duplicates while it is diverged, also across
#      a restart of PostgreSQL.  reliq.accept_stream_loss() refuses
#      misuse; accepted, the floor moves back to 80, the consumer is
#      rewound, and every new message is applied exactly once, those past
#      the former tail too.
#   b. new messages published at once after the restart (before the
#      monitor's round, so a worker may meet them first, as duplicates):
#      diverged all the same, nothing acked as a duplicate.  The stream
#      may have been seen to end at 90 by then: last_kept => 80 says
#      where its old history ends, and every new message is applied
#      once.
#
# Fails without the fix: a is never 'diverged' (the first assertion after
# the restart), and reliq.accept_stream_loss() does not exist.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReliqTest::Nats;
use ReliqTest::Node;

my $nats = ReliqTest::Nats->new(name => 'losttail');
$nats->start;
$nats->stream_create('TAILA', ['taila.>']);
$nats->stream_create('TAILB', ['tailb.>']);
$nats->stream_create('WHOLE', ['whole.>']);

my $node = reliq_node('losttail', $nats);
$node->safe_psql('postgres', q{
	-- no unique constraint: a message applied twice shows up as two rows
	CREATE TABLE applied (sub text, id int, seq bigint);
	CREATE FUNCTION apply(m reliq.message) RETURNS void LANGUAGE sql AS $$
		INSERT INTO applied VALUES (m.subscription, (reliq.message_json(m)->>'id')::int, m.stream_seq)
	$$;
	SELECT reliq.create_subscription(s, stream => upper(s), subject => s || '.>',
	       handler => 'apply(reliq.message)'::regprocedure, batch_size => 20,
	       ack_wait => '3s')
	  FROM unnest(ARRAY['taila', 'tailb', 'whole']) AS s;
	CREATE ROLE stranger LOGIN;
});

sub publish
{
	my ($subject, $from, $to) = @_;
	$nats->publish($subject, count => $to - $from + 1, start => $from,
		payload => '{"id":%d}', msg_id => "$subject-%d");
}

sub stat_of
{
	my ($sub, $column) = @_;
	return $node->safe_psql('postgres',
		"SELECT $column FROM reliq.subscription_stats WHERE subscription_name = '$sub'");
}

sub cell
{
	my ($query) = @_;
	return $node->safe_psql('postgres', $query);
}

# What a call of SQL raised: "SQLSTATE: message", or "" if nothing.
sub error_of
{
	my ($sql, $user) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $sql,
		extra_params => ['-v', 'VERBOSITY=verbose', ($user ? ('-U', $user) : ())]);
	return '' if $ret == 0;
	return $err =~ /ERROR:\s+([0-9A-Z]{5}):\s+([^\n]*)/ ? "$1: $2" : $err;
}

# Cut a stream's file store after sequence $keep, nats-server stopped:
# message blocks past it removed, the block holding it truncated after
# it, the indexes removed (the server rebuilds them from the blocks).
# A record of a block starts with its length (4 bytes, little-endian,
# the top bit a flag) and its sequence (8 bytes, two top bits flags).
sub cut_tail
{
	my ($stream, $keep) = @_;
	my $dir = $nats->store_dir . '/jetstream/$G/streams/' . $stream . '/msgs';
	opendir(my $dh, $dir) or die "no message store $dir: $!";
	my @files = grep { !/^\.\.?$/ } readdir $dh;
	closedir $dh;
	my $cut = 0;
	for my $file (sort { ($a =~ /(\d+)/)[0] <=> ($b =~ /(\d+)/)[0] } grep { /^\d+\.blk$/ } @files)
	{
		my $path = "$dir/$file";
		my $data = slurp_file($path);
		my $off  = 0;
		while ($off + 12 <= length $data)
		{
			my $len = unpack('V', substr($data, $off, 4)) & 0x7fffffff;
			my $seq = unpack('Q<', substr($data, $off + 4, 8)) & ((1 << 62) - 1);
			last if $len == 0 || $seq > $keep;
			$off += $len;
		}
		next if $off == length $data;
		$cut += length($data) - $off;
		if ($off == 0)
		{
			unlink $path or die "could not remove $path: $!";
		}
		else
		{
			truncate($path, $off) or die "could not truncate $path: $!";
		}
	}
	for my $file (grep { !/\.blk$/ } @files)
	{
		unlink "$dir/$file" or die "could not remove $dir/$file: $!";
	}
	return $cut;
}

publish('taila.x', 1, 100);
publish('tailb.x', 1, 100);
publish('whole.x', 1, 100);
ok(wait_for($node, "SELECT count(*) = 300 FROM applied"), 'applied 3 x 100 before the loss');
ok(wait_idle($node, $_), "$_: idle") for qw(taila tailb whole);

$nats->stop;
ok(cut_tail('TAILA', 80) > 0, 'a: the tail of TAILA cut from its store');
ok(cut_tail('TAILB', 80) > 0, 'b: the tail of TAILB cut from its store');
$nats->start;
is($nats->stream_info('TAILA')->{state}{last_seq}, 80, 'a: TAILA ends at 80 after the restart');
# b: new messages at once, before anyone looked (sequences 81 to 90)
publish('tailb.y', 1001, 1010);
is($nats->stream_info('TAILB')->{state}{last_seq}, 90, 'b: TAILB ends at 90');

# a. Found by the monitor.
ok(wait_for($node, "SELECT state = 'diverged' FROM reliq.subscription_stats WHERE subscription_name = 'taila'"),
	'a: diverged');
like(stat_of('taila', 'last_error'),
	qr/stream TAILA lost its tail: its last sequence is 80, this database applied up to 100/,
	'a: last_error gives the figures');
like(cell("SELECT status || ': ' || array_to_string(reasons, ' | ') FROM reliq.health() WHERE subscription_name = 'taila'"),
	qr/^down: .*reliq\.accept_stream_loss\('taila'\)/, 'a: health() says down, and what to run');
like(cell('SELECT reliq.metrics()'),
	qr/reliq_subscription_state\{subscription="taila",state="diverged"\} 1/, 'a: the metric says diverged');
is(cell("SELECT state FROM reliq.subscription_stats WHERE subscription_name = 'whole'"), 'running',
	'the subscription of the stream that kept its tail runs');

# New messages at sequences 81 to 90 while diverged.  Two rounds of the
# monitor after they are in the stream, the workers had their turns too.
publish('taila.y', 1001, 1010);
my $published = cell('SELECT now()');
ok(wait_for($node, "SELECT consumer_info_at > '$published'::timestamptz + interval '2 s' FROM reliq.subscription_stats WHERE subscription_name = 'taila'"),
	'a: the monitor looked twice since');
is(cell("SELECT count(*) FROM applied WHERE sub = 'taila' AND id > 1000"), '0', 'a: no new message applied while diverged');
is(stat_of('taila', 'duplicates'), '0', 'a: none acked as a duplicate');
is(stat_of('taila', 'state'), 'diverged', 'a: still diverged');

# A restart while diverged (shared memory forgets; the catalog does not).
$node->restart;
my $restarted = cell('SELECT now()');
ok(wait_for($node, "SELECT state = 'diverged' AND consumer_info_at > '$restarted'::timestamptz + interval '2 s' FROM reliq.subscription_stats WHERE subscription_name = 'taila'"),
	'a: diverged after a restart, two rounds of the monitor later');
is(cell("SELECT count(*) FROM applied WHERE sub = 'taila' AND id > 1000"), '0', 'a: still nothing new applied');
is(stat_of('taila', 'duplicates'), '0', 'a: nor acked as a duplicate since the restart');

# Misuse of reliq.accept_stream_loss().
is(error_of("SELECT reliq.accept_stream_loss('nope')"),
	'42704: subscription "nope" does not exist', 'an unknown subscription is refused');
is(error_of("SELECT reliq.accept_stream_loss('whole')"),
	'55000: subscription "whole" is not diverged', 'a subscription that is not diverged is refused');
is(error_of("SELECT reliq.accept_stream_loss('taila')", 'stranger'),
	'42501: permission denied to accept the stream loss of a reliq subscription',
	'a role that is not reliq_admin is refused');

# Accept the loss.
like(cell("SELECT reliq.accept_stream_loss('taila')"),
	qr/stream TAILA ends at sequence 80; this database had applied up to 100\. The floor is now 80/,
	'a: the loss accepted');
like(error_of("SELECT reliq.accept_stream_loss('taila')"),
	qr/^55000: (the loss of stream "TAILA"'s tail was accepted already|subscription "taila" is not diverged)/,
	'a: accepted twice is refused');
ok(wait_for($node, "SELECT count(*) = 10 FROM applied WHERE sub = 'taila' AND id > 1000"),
	'a: the new messages are applied after the loss was accepted');
is(stat_of('taila', 'state'), 'running', 'a: running again');
# past the former tail too
publish('taila.z', 1011, 1040);
ok(wait_for($node, "SELECT count(*) = 40 FROM applied WHERE sub = 'taila' AND id > 1000"),
	'a: and those past the former tail');
ok(wait_idle($node, 'taila'), 'a: idle');
is(cell("SELECT count(*), count(DISTINCT id), min(seq), max(seq) FROM applied WHERE sub = 'taila' AND id > 1000"),
	'40|40|81|120', 'a: each new message exactly once, at sequences 81 to 120');
is(cell("SELECT count(*), count(DISTINCT id) FROM applied WHERE sub = 'taila' AND id <= 1000"),
	'100|100', 'a: the first 100 still once each');
is(cell("SELECT status FROM reliq.health() WHERE subscription_name = 'taila'"), 'ok', 'a: health() ok');

# b. New messages before anyone looked.
ok(wait_for($node, "SELECT state = 'diverged' FROM reliq.subscription_stats WHERE subscription_name = 'tailb'"),
	'b: diverged');
like(stat_of('tailb', 'last_error'), qr/its last sequence is (80|90), this database applied up to 100/,
	'b: last_error gives the figures');
is(cell("SELECT count(*) FROM applied WHERE sub = 'tailb' AND id > 1000"), '0', 'b: no new message applied while diverged');
is(stat_of('tailb', 'duplicates'), '0', 'b: none acked as a duplicate');
# The monitor saw the stream end at 90 (or 80, had it looked before the
# publish): the operator, who knows where the old history ends, says 80.
like(error_of("SELECT reliq.accept_stream_loss('tailb', last_kept => 95)"),
	qr/^22023: last_kept must be between 0 and (80|90), not 95/,
	"b: last_kept above the stream's last sequence is refused");
like(cell("SELECT reliq.accept_stream_loss('tailb', last_kept => 80)"), qr/The floor is now 80/,
	'b: the loss accepted, the old history ending at 80');
ok(wait_for($node, "SELECT count(*) = 10 FROM applied WHERE sub = 'tailb' AND id > 1000"),
	'b: the new messages are applied after the loss was accepted');
publish('tailb.z', 1011, 1040);
ok(wait_for($node, "SELECT count(*) = 40 FROM applied WHERE sub = 'tailb' AND id > 1000"),
	'b: and those past the former tail')
  or diag(cell("SELECT string_agg(id || '@' || seq, ' ' ORDER BY seq) FROM applied WHERE sub = 'tailb' AND id > 1000"));
ok(wait_idle($node, 'tailb'), 'b: idle');
is(cell("SELECT count(*), count(DISTINCT id), min(seq), max(seq) FROM applied WHERE sub = 'tailb' AND id > 1000"),
	'40|40|81|120', 'b: each new message exactly once, at sequences 81 to 120');
ok(wait_for($node, 'SELECT count(*) = 0 FROM reliq._stream_divergence'),
	'the divergences are forgotten once the consumers were rewound');
is(cell("SELECT string_agg(status, ',') FROM reliq.health()"), 'ok,ok,ok', 'health() ok for all');

$node->stop;
$nats->stop;
done_testing();
