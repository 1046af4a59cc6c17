#
# 000_nats_harness.pl
#	  Exercise the test-side NATS tooling for real: ReliqTest::Nats (a
#	  nats-server on a free loopback port) and test/tools/natstool
#	  (JetStream publishing that survives server restarts and kill -9).
#	  No PostgreSQL cluster is involved.
#
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

use ReliqTest::Nats;

my $nats = ReliqTest::Nats->new(name => 'harness');
$nats->start;
ok($nats->is_running, 'nats-server is running');
like($nats->url, qr{^nats://127\.0\.0\.1:\d+$}, 'url is on loopback');
ok(-f $nats->logfile, 'server log file exists');
my $acct = $nats->js_api('INFO');
is($acct->{type}, 'io.nats.jetstream.api.v1.account_info_response',
	'JetStream answers $JS.API.INFO');

# Stream state helpers.
sub state_of
{
	my ($stream) = @_;
	return $nats->stream_info($stream)->{state};
}

# Poll (bounded, not an assertion) until the stream holds at least $n
# messages, so that the next disruption happens in the middle of a publish.
sub wait_for_messages
{
	my ($stream, $n) = @_;
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	while (time() < $deadline)
	{
		my $got = state_of($stream)->{messages};
		return $got if $got >= $n;
		usleep(20_000);
	}
	die "stream $stream never reached $n messages";
}

# Check that the stream holds exactly the indexes 0..$n-1 of {"id":%d}
# payloads, each once, and nothing else.
sub check_exactly_once
{
	my ($stream, $n, $what) = @_;
	my $st = state_of($stream);
	is($st->{messages}, $n, "$what: stream holds $n messages");
	is($st->{last_seq}, $n, "$what: last sequence is $n (nothing stored twice)");

	my %seen;
	my ($dups, $bad) = (0, 0);
	foreach my $m (@{ $nats->stream_messages($stream) })
	{
		my ($id) = $m->{data} =~ /^\{"id":(\d+)\}$/;
		if (!defined $id || $id >= $n)
		{
			$bad++;
			next;
		}
		$dups++ if $seen{$id}++;
	}
	my @missing = grep { !$seen{$_} } 0 .. $n - 1;
	is($dups, 0, "$what: no index stored twice");
	is($bad,  0, "$what: no unexpected payload");
	is(scalar(@missing), 0, "$what: no index missing")
	  or diag("first missing: @missing[0 .. ($#missing < 9 ? $#missing : 9)]");
	return;
}

# --- publish with message ids, then again: de-duplicated ---------------
$nats->stream_create('EVENTS', ['ev.>']);
is($nats->publish('ev.a', count => 1000, msg_id => 'm-%d'),
	1000, 'published 1000 messages');
is(state_of('EVENTS')->{messages}, 1000, 'stream holds 1000 messages');
is($nats->publish('ev.a', count => 1000, msg_id => 'm-%d'),
	1000, 'published the same 1000 message ids again');
is(state_of('EVENTS')->{messages}, 1000,
	'still 1000 messages: the server de-duplicated them');

# --- payload / msg id formats and headers ------------------------------
$nats->stream_create('HDRS', ['hdr.>']);
is( $nats->publish(
		'hdr.x',
		count   => 2,
		start   => 7,
		payload => 'p-%d-100%%',
		msg_id  => 'h-%d',
		headers => [ [ 'X-Test', 'a' ], [ 'X-Test', 'b' ], [ 'X-Other', 'c=d' ] ]),
	2,
	'published 2 messages with headers');
my $hm = $nats->stream_messages('HDRS');
is(scalar(@$hm),   2,          'two messages stored');
is($hm->[0]{data}, 'p-7-100%', 'payload format expanded');
is($hm->[1]{data}, 'p-8-100%', 'second payload uses the next index');
is_deeply($hm->[0]{headers}{'X-Test'}, [ 'a', 'b' ],
	'repeated header keeps both values');
is_deeply($hm->[0]{headers}{'X-Other'}, ['c=d'], 'header value with "="');
is_deeply($hm->[1]{headers}{'Nats-Msg-Id'}, ['h-8'], 'Nats-Msg-Id from format');
$nats->stream_delete('HDRS');

# --- API errors and failures are reported -------------------------------
ok(!defined $nats->consumer_info('EVENTS', 'nope'),
	'consumer_info of a missing consumer is undef');
eval { $nats->stream_info('NOPE'); };
like($@, qr/stream not found/, 'js_api dies on an API error');
is($nats->stream_info('NOPE', allow_error => 1)->{error}{err_code},
	10059, 'allow_error returns the error reply');
eval { $nats->request('no.such.subject', 'x'); };
like($@, qr/no responders/i, 'request dies on no responders');
eval { $nats->publish('nostream.x', retry_for => 1); };
like($@, qr/not acknowledged/, 'publish without a stream fails after --retry-for');

# --- consumers -------------------------------------------------------------
my $ci = $nats->consumer_create('EVENTS', 'c1');
is($ci->{name}, 'c1', 'durable consumer created');
is($nats->consumer_info('EVENTS', 'c1')->{num_pending},
	1000, 'consumer sees 1000 pending messages');
$nats->consumer_delete('EVENTS', 'c1');
ok(!defined $nats->consumer_info('EVENTS', 'c1'), 'consumer deleted');

# --- kill -9 and start again: JetStream state kept -------------------------
my $port = $nats->port;
$nats->kill9;
ok(!$nats->is_running, 'server gone after kill9');
$nats->start;
is($nats->port, $port, 'same port after start');
is(state_of('EVENTS')->{messages}, 1000, 'still 1000 messages after kill -9');

# --- background publish across a restart ----------------------------------
my $h = $nats->publish_bg(
	'ev.b',
	count  => 20000,
	start  => 1000,
	msg_id => 'm-%d',
	rate   => 4000);
wait_for_messages('EVENTS', 3000);
$nats->restart;
is($nats->wait_publish($h), 20000, 'background publish across a restart');
check_exactly_once('EVENTS', 21000, 'restart');

# --- background publish across kill -9 --------------------------------------
$h = $nats->publish_bg(
	'ev.c',
	count  => 20000,
	start  => 21000,
	msg_id => 'm-%d',
	rate   => 4000);
wait_for_messages('EVENTS', 24000);
$nats->kill9;
$nats->start;
is($nats->wait_publish($h), 20000, 'background publish across kill -9');
check_exactly_once('EVENTS', 41000, 'kill -9');

# --- background publish across SIGSTOP / SIGCONT -----------------------------
$h = $nats->publish_bg(
	'ev.d',
	count  => 10000,
	start  => 41000,
	msg_id => 'm-%d',
	rate   => 4000);
wait_for_messages('EVENTS', 43000);
$nats->sigstop;
sleep 3;
$nats->sigcont;
is($nats->wait_publish($h), 10000, 'background publish across SIGSTOP');
check_exactly_once('EVENTS', 51000, 'sigstop');

$nats->stop;
ok(!$nats->is_running, 'server stopped');

done_testing();
