# Tracing (issue 12): the demo's three-step flow (demo/setup.sql) with
# reliq.otlp_endpoint pointed at an OTLP/HTTP receiver on loopback
# (ReliqTest::Otlp).  One trace per user across the three subscriptions:
# each process span's parent is the upstream processing span, through the
# traceparent reliq carries on in reliq.publish; publish spans hang off the
# processing span that published.  An incoming context is respected
# (sampled or not), the sample rate applies to messages without one, a
# failed message's span carries its SQLSTATE.  A receiver that hangs or
# refuses loses spans, counted, and not a single message.
use strict;
use warnings;
use File::Basename qw(dirname);
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);
use ReliqTest::Nats;
use ReliqTest::Node;
use ReliqTest::Otlp;

my $root = dirname(dirname(dirname(__FILE__)));
my $nats = ReliqTest::Nats->new(name => 'trace');
$nats->start;

my $otlp = ReliqTest::Otlp->new(mode => 'ok');
$otlp->start;

my $node = reliq_node('trace', $nats, no_extension => 1, conf => sprintf(<<'CONF', $otlp->url));
reliq.otlp_endpoint = '%s'
reliq.otlp_headers = 'Authorization=Bearer s3cret, X-Tenant = t1'
reliq.service_name = 'reliq-test'
reliq.otlp_timeout = '1s'
CONF
$node->safe_psql('postgres', slurp_file("$root/demo/setup.sql"));

# Settings are checked when made.
my ($ret, $out, $err) = $node->psql('postgres', q{ALTER SYSTEM SET reliq.otlp_endpoint = 'ftp://x'});
like($err, qr/must be an http:\/\/ or https:\/\/ URL/, 'an endpoint that is not http(s) is refused');
($ret, $out, $err) = $node->psql('postgres', q{ALTER SYSTEM SET reliq.otlp_headers = 'novalue'});
like($err, qr/list of name=value/, 'headers that are not name=value are refused');

sub reload_with
{
	my ($settings) = @_;
	foreach my $k (sort keys %$settings)
	{
		$node->safe_psql('postgres', "ALTER SYSTEM SET $k = '$settings->{$k}'");
	}
	$node->reload;
	# the reload reaches the workers and the exporter when they next look
	$node->safe_psql('postgres', 'SELECT pg_sleep(0.5)');
	return;
}

sub ready_users { return $node->safe_psql('postgres', 'SELECT count(*) FROM app.users WHERE ready'); }

my $sql_payload = q{'{"user_id": %d, "email": "u%d@example.com"}'::jsonb};

# Users 1..3: no context (rate 1.0): a new trace each.
$nats->publish('user.onboarding.completed', count => 3, start => 1,
	payload => '{"user_id":%d,"email":"u@example.com"}');
# User 4: published by a backend with reliq.publish: the trace starts there.
$node->safe_psql('postgres',
	sprintf("SELECT reliq.publish('user.onboarding.completed', $sql_payload)", 4, 4));
# User 5: an incoming sampled context, with tracestate.
my $t5 = '5' x 32;
my $p5 = 'a5' x 8;
$nats->publish('user.onboarding.completed', count => 1, start => 5,
	payload => '{"user_id":%d,"email":"u@example.com"}',
	headers => [ [ 'traceparent', "00-$t5-$p5-01" ], [ 'tracestate', 'vendor=abc' ] ]);
# User 6: an incoming context that says not sampled.
my $t6 = '6' x 32;
$nats->publish('user.onboarding.completed', count => 1, start => 6,
	payload => '{"user_id":%d,"email":"u@example.com"}',
	headers => [ [ 'traceparent', "00-$t6-" . ('b6' x 8) . "-00" ] ]);
# User 9: a later version of traceparent, read by its first four fields;
# user 10: an invalid one (upper-case hex): a new trace.
my $t9 = '9' x 32;
my $p9 = 'a9' x 8;
$nats->publish('user.onboarding.completed', count => 1, start => 9,
	payload => '{"user_id":%d,"email":"u@example.com"}',
	headers => [ [ 'traceparent', "cc-$t9-$p9-01-what-comes-next" ] ]);
my $t10 = 'A' x 32;
$nats->publish('user.onboarding.completed', count => 1, start => 10,
	payload => '{"user_id":%d,"email":"u@example.com"}',
	headers => [ [ 'traceparent', "00-$t10-" . ('B1' x 8) . "-01" ] ]);
# A message its handler refuses (no user_id): failed, then dead-lettered.
$nats->publish('user.onboarding.completed', count => 1, start => 0,
	payload => '{"email":"nobody@example.com","n":%d}');

ok(wait_for($node, q{SELECT count(*) = 8 FROM app.users WHERE ready}, 120),
	'users 1 to 6, 9 and 10 went through the three steps');
ok(wait_for($node, q{SELECT count(*) = 1 FROM reliq.dead_letter}, 60),
	'the refused message is dead-lettered');

# User 7 at rate 0, then user 8 at rate 1: the ring and the exporter keep
# their order, so once user 8's spans are in, user 7's would be too.
reload_with({ 'reliq.trace_sample_rate' => '0' });
$nats->publish('user.onboarding.completed', count => 1, start => 7,
	payload => '{"user_id":%d,"email":"u@example.com"}');
ok(wait_for($node, q{SELECT ready FROM app.users WHERE id = 7}, 60), 'user 7 is ready');
reload_with({ 'reliq.trace_sample_rate' => '1' });
$nats->publish('user.onboarding.completed', count => 1, start => 8,
	payload => '{"user_id":%d,"email":"u@example.com"}');
ok(wait_for($node, q{SELECT ready FROM app.users WHERE id = 8}, 60), 'user 8 is ready');

# The carried context, as the stream stored it: trace id of each
# plan.generation.requested message, by user.
my %carried;
foreach my $m (@{ $nats->stream_messages('EVENTS') })
{
	next unless $m->{subject} eq 'plan.generation.requested';
	my ($user) = $m->{data} =~ /"user_id":\s*(\d+)/;
	$carried{$user} = {
		traceparent => $m->{headers}{traceparent}[0] // '',
		tracestate  => $m->{headers}{tracestate}[0] // ''
	};
}

# Wait for user 8's complete trace (five spans).
my $t8 = ($carried{8}{traceparent} =~ /^00-([0-9a-f]{32})-/)[0] // '';
my $spans;
for (1 .. 300)
{
	$spans = $otlp->spans;
	last if (grep { $_->{traceId} eq $t8 } @$spans) >= 5;
	sleep 0.2;
}
my %by_trace;
push @{ $by_trace{ $_->{traceId} } }, $_ foreach @$spans;
my %by_id = map { $_->{spanId} => $_ } @$spans;
note(scalar(@$spans) . ' spans received in ' . scalar(keys %by_trace) . ' traces');

# One trace per user: process(onboarding) -> process(plans) ->
# process(ready), each publish span a child of the processing span.
sub check_flow
{
	my ($label, $trace, $root_parent) = @_;
	my @s = @{ $by_trace{$trace} // [] };
	my %named;
	push @{ $named{ $_->{name} } }, $_ foreach @s;
	my ($p1) = @{ $named{'process user.onboarding.completed'} // [] };
	my ($p2) = @{ $named{'process plan.generation.requested'} // [] };
	my ($p3) = @{ $named{'process plan.generation.completed'} // [] };
	my ($u1) = @{ $named{'publish plan.generation.requested'} // [] };
	my ($u2) = @{ $named{'publish plan.generation.completed'} // [] };
	ok($p1 && $p2 && $p3 && $u1 && $u2, "$label: the three process spans and two publish spans are in one trace")
	  or return diag(explain(\@s));
	is(scalar(@s), 5 + (defined $root_parent && $root_parent eq 'publish' ? 1 : 0),
		"$label: and nothing else");
	is($p2->{parentSpanId}, $p1->{spanId}, "$label: step 2's parent is step 1's processing span");
	is($p3->{parentSpanId}, $p2->{spanId}, "$label: step 3's parent is step 2's processing span");
	is($u1->{parentSpanId}, $p1->{spanId}, "$label: the publish of step 1 is a child of its processing");
	is($u2->{parentSpanId}, $p2->{spanId}, "$label: the publish of step 2 is a child of its processing");
	return ($p1, $p2, $p3, $u1, $u2);
}

my %root_traces;
foreach my $t (keys %by_trace)
{
	foreach my $s (@{ $by_trace{$t} })
	{
		$root_traces{$t} = 1
		  if $s->{name} eq 'process user.onboarding.completed'
		  && $s->{parentSpanId} eq ''
		  && $s->{attributes}{'reliq.outcome'} eq 'applied';
	}
}
# users 1, 2, 3, 8 and 10 (invalid context) start a trace of their own
is(scalar(keys %root_traces), 5, 'five traces start at an onboarding message without a valid context');
my @first;
foreach my $t (sort keys %root_traces)
{
	my @f = check_flow("trace $t", $t);
	@first = @f if @f && !@first;
}

# The attributes of a processing span, a publish span and the batch span.
SKIP:
{
	skip 'no trace to look at', 15 unless @first;
	my ($p1, $p2, $p3, $u1) = @first;
	my $a = $p1->{attributes};
	is($p1->{kind}, 5, 'a processing span is of kind CONSUMER');
	is($a->{'messaging.system'}, 'nats', 'messaging.system');
	is($a->{'messaging.destination.name'}, 'user.onboarding.completed', 'messaging.destination.name');
	is($a->{'messaging.operation'}, 'process', 'messaging.operation');
	is($a->{'reliq.subscription'}, 'onboarding', 'reliq.subscription');
	is($a->{'reliq.stream'}, 'EVENTS', 'reliq.stream');
	like($a->{'reliq.stream_seq'}, qr/^[1-9]\d*$/, 'reliq.stream_seq is a positive integer');
	is($a->{'reliq.delivery_count'}, 1, 'reliq.delivery_count');
	is($a->{'reliq.outcome'}, 'applied', 'reliq.outcome');
	is($p1->{resource}{'service.name'}, 'reliq-test', 'service.name from reliq.service_name');
	is($p1->{headers}{authorization}, 'Bearer s3cret', 'reliq.otlp_headers are sent');
	is($p1->{path}, '/v1/traces', 'to /v1/traces of an endpoint given without a path');
	is($u1->{kind}, 4, 'a publish span is of kind PRODUCER');
	like($u1->{attributes}{'messaging.message.id'}, qr/^reliq:\d+:/, 'with the Nats-Msg-Id it was published with');
	my ($link) = @{ $p1->{links} };
	my $batch = $link ? $by_id{ $link->{spanId} } : undef;
	ok($batch && $batch->{name} eq 'reliq batch onboarding'
		  && $batch->{attributes}{'reliq.outcome'} eq 'committed'
		  && $batch->{attributes}{'messaging.batch.message_count'} >= 1,
		'a processing span links to its batch span');
}

# User 4: the trace starts at the backend's publish span.
my ($t4) = grep {
	my $t = $_;
	grep { $_->{name} eq 'publish user.onboarding.completed' && $_->{parentSpanId} eq '' } @{ $by_trace{$t} }
} keys %by_trace;
ok($t4, 'a reliq.publish outside a handler starts a trace');
if ($t4)
{
	my ($pub) = grep { $_->{name} eq 'publish user.onboarding.completed' } @{ $by_trace{$t4} };
	check_flow('user 4', $t4, 'publish');
	my ($p1) = grep { $_->{name} eq 'process user.onboarding.completed' } @{ $by_trace{$t4} };
	is($p1 && $p1->{parentSpanId}, $pub->{spanId}, "user 4: the first processing span's parent is that publish");
}

# User 5: the incoming context is continued, its tracestate passed on.
check_flow('user 5', $t5);
my ($p5span) = grep { $_->{name} eq 'process user.onboarding.completed' } @{ $by_trace{$t5} // [] };
is($p5span && $p5span->{parentSpanId}, $p5, 'user 5: the first processing span has the incoming parent');
is($carried{5}{tracestate}, 'vendor=abc', 'user 5: tracestate is carried on');
like($carried{5}{traceparent}, qr/^00-$t5-[0-9a-f]{16}-01$/, 'user 5: the carried traceparent continues the trace');

# User 9: a later version's context is continued.
check_flow('user 9', $t9);
my ($p9span) = grep { $_->{name} eq 'process user.onboarding.completed' } @{ $by_trace{$t9} // [] };
is($p9span && $p9span->{parentSpanId}, $p9, 'user 9: a later version of traceparent is read by its first four fields');
like($carried{9}{traceparent}, qr/^00-$t9-[0-9a-f]{16}-01$/, 'user 9: and carried on as version 00');
unlike($carried{10}{traceparent}, qr/^00-$t10/i, 'user 10: an invalid traceparent starts a new trace');

# User 6 (incoming not sampled) and user 7 (rate 0): carried, no span.
like($carried{6}{traceparent}, qr/^00-$t6-[0-9a-f]{16}-00$/, 'user 6: the unsampled context is carried on, unsampled');
ok(!$by_trace{$t6}, 'user 6: no span of an unsampled trace');
my ($t7) = $carried{7}{traceparent} =~ /^00-([0-9a-f]{32})-[0-9a-f]{16}-00$/;
ok($t7, 'user 7: a message without context at rate 0 gets a new, unsampled trace');
ok($t7 && !$by_trace{$t7}, 'user 7: no span at rate 0');

# The refused message: failed spans with the SQLSTATE, then dead-lettered.
my @bad = grep {
	     $_->{name} eq 'process user.onboarding.completed'
	  && ($_->{attributes}{'reliq.outcome'} eq 'failed' || $_->{attributes}{'reliq.outcome'} eq 'dead_lettered')
} @$spans;
ok((grep { $_->{attributes}{'reliq.outcome'} eq 'failed' } @bad), 'a failed message has a span with outcome failed');
ok((grep { $_->{attributes}{'reliq.outcome'} eq 'dead_lettered' } @bad), 'and one with outcome dead_lettered');
ok(@bad && !(grep { ($_->{attributes}{'error.type'} // '') ne '22023' || ($_->{status}{code} // 0) != 2 } @bad),
	'with error.type = its SQLSTATE (22023) and status ERROR');
is(scalar(grep { $_->{traceId} !~ /^[0-9a-f]{32}$/ || $_->{spanId} !~ /^[0-9a-f]{16}$/ || $_->{end} < $_->{start} } @$spans),
	0, 'ids are lower-case hex, no span ends before it starts');

my $stats = $node->safe_psql('postgres',
	q{SELECT tracing, spans_exported > 0, spans_dropped_buffer_full + spans_dropped_export_failed FROM reliq.trace_stats()});
is($stats, 't|t|0', 'trace_stats: tracing, spans exported, none dropped');

# A hanging receiver, then a refusing one: spans are dropped and counted,
# every message applied exactly once.
$otlp->stop;
my $hang = ReliqTest::Otlp->new(mode => 'hang');
$hang->start;
reload_with({ 'reliq.otlp_endpoint' => $hang->url, 'reliq.otlp_timeout' => '300ms' });
$nats->publish('user.onboarding.completed', count => 20, start => 100,
	payload => '{"user_id":%d,"email":"u@example.com"}');
ok(wait_for($node, q{SELECT count(*) = 20 FROM app.users WHERE id BETWEEN 100 AND 119 AND ready}, 120),
	'with a hanging receiver, every user goes through');
ok(wait_for($node, q{SELECT spans_dropped_export_failed > 0 AND export_errors > 0 FROM reliq.trace_stats()}, 60),
	'spans whose export timed out are dropped and counted');

reload_with({ 'reliq.otlp_endpoint' => ReliqTest::Otlp::refusing_url() });
my $errors = $node->safe_psql('postgres', 'SELECT export_errors FROM reliq.trace_stats()');
$nats->publish('user.onboarding.completed', count => 20, start => 200,
	payload => '{"user_id":%d,"email":"u@example.com"}');
ok(wait_for($node, q{SELECT count(*) = 20 FROM app.users WHERE id BETWEEN 200 AND 219 AND ready}, 120),
	'with a refusing receiver, every user goes through');
ok(wait_for($node, "SELECT export_errors > $errors AND last_error LIKE '%Couldn''t connect%' FROM reliq.trace_stats()", 60),
	'refused exports are counted, with the error');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM app.users u
	 WHERE (SELECT count(*) FROM app.plans p WHERE p.user_id = u.id) <> 1}),
	'0', 'every user has exactly one plan: each message applied once');
like($node->safe_psql('postgres', 'SELECT reliq.metrics()'),
	qr/^reliq_trace_spans_dropped_total\{reason="export_failed"\} [1-9]/m,
	'the metric counts the dropped spans');

# Tracing off: the incoming context is passed on as it came, no span made.
reload_with({ 'reliq.otlp_endpoint' => '' });
my $off_tp = '00-' . ('7' x 32) . '-' . ('c7' x 8) . '-01';
my $recorded = $node->safe_psql('postgres', 'SELECT spans_recorded FROM reliq.trace_stats()');
$nats->publish('user.onboarding.completed', count => 1, start => 400,
	payload => '{"user_id":%d,"email":"u@example.com"}',
	headers => [ [ 'traceparent', $off_tp ], [ 'tracestate', 'k=v' ] ]);
ok(wait_for($node, q{SELECT ready FROM app.users WHERE id = 400}, 60), 'user 400 is ready (tracing off)');
my ($m400) = grep { $_->{subject} eq 'plan.generation.requested' && $_->{data} =~ /"user_id":\s*400\b/ }
  @{ $nats->stream_messages('EVENTS') };
is($m400 && $m400->{headers}{traceparent}[0], $off_tp, 'tracing off: traceparent passed on unchanged');
is($m400 && $m400->{headers}{tracestate}[0], 'k=v', 'tracing off: tracestate passed on unchanged');
is($node->safe_psql('postgres', "SELECT NOT tracing AND spans_recorded = $recorded FROM reliq.trace_stats()"),
	't', 'tracing off: no span recorded');

# A fast stop while the exporter may be waiting on the hanging receiver.
reload_with({ 'reliq.otlp_endpoint' => $hang->url, 'reliq.otlp_timeout' => '60s' });
$nats->publish('user.onboarding.completed', count => 5, start => 300,
	payload => '{"user_id":%d,"email":"u@example.com"}');
ok(wait_for($node, q{SELECT count(*) = 5 FROM app.users WHERE id BETWEEN 300 AND 304 AND ready}, 120),
	'users go through while an export hangs');
my $t0 = time;
$node->stop('fast');
note(sprintf('fast stop with an export hanging took %ds', time - $t0));
pass('the server stops with an export hanging');

$hang->stop;
$nats->stop;
done_testing();
