# Prometheus and the operations assets in ops/: a real Prometheus (the
# Debian package's binary, on a free loopback port, its own config and
# data directory) scrapes reliq.metrics_port at a configured
# reliq.metrics_path; the target is up, a PromQL query returns the
# processed count, the alert rules load and evaluate, and every query of
# the Grafana dashboard runs.  Every metric the dashboard and the rules
# name is one reliq exports.  The instance-level series: build info,
# NATS connection per worker, dead-letter backlog.
use strict;
use warnings;
use Cwd qw(abs_path);
use JSON::PP;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);
use ReliqTest::Nats;
use ReliqTest::Node;
use ReliqTest::Prometheus qw(parse_exposition sample_value);

my $prometheus_bin = '/usr/bin/prometheus';
plan skip_all => "no Prometheus at $prometheus_bin (Debian package prometheus)"
  unless -x $prometheus_bin;

my $rules     = abs_path('ops/prometheus/reliq-alerts.yml');
my $dashboard = abs_path('ops/grafana/reliq-dashboard.json');

my $nats = ReliqTest::Nats->new(name => 'prom');
$nats->start;
$nats->stream_create('PROM', ['prom.>']);

my $metrics_port = PostgreSQL::Test::Cluster::get_free_port();
my $node = reliq_node('prom', $nats, conf => <<"CONF");
reliq.metrics_port = $metrics_port
reliq.metrics_path = '/reliq/metrics'
CONF
$node->safe_psql('postgres', q{
	CREATE TABLE got (id int);
	CREATE FUNCTION take(m reliq.message) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE j jsonb := reliq.message_json(m);
	BEGIN
		IF j ? 'fail' THEN RAISE EXCEPTION 'message % fails', j->>'id'; END IF;
		INSERT INTO got VALUES ((j->>'id')::int);
	END $$;
	SELECT reliq.create_subscription('prom', stream => 'PROM', subject => 'prom.>',
	       handler => 'take(reliq.message)'::regprocedure, max_deliver => 1, backoff => '{100ms}');
});
$nats->publish('prom.ok', count => 300, start => 1, payload => '{"id":%d}');
$nats->publish('prom.bad', count => 3, start => 1001, payload => '{"id":%d,"fail":1}');
ok(wait_idle($node, 'prom'), 'drained');
my $processed = reliq_stats($node, 'prom')->{processed};
is($processed, 300, 'processed');

# The endpoint at reliq.metrics_path; the old path is gone.
my $base = "http://127.0.0.1:$metrics_port";
is(`curl -s -o /dev/null -w '%{http_code}' --max-time 10 $base/metrics`, '404',
	'/metrics is 404 when reliq.metrics_path names another path');
my $m = eval { parse_exposition(scalar `curl -sS --max-time 10 $base/reliq/metrics`) };
ok($m, 'reliq.metrics_path serves valid exposition') or diag($@);
is(sample_value($m, 'reliq_build_info', version => '0.3'), 1, 'reliq_build_info{version="0.3"} 1');
is($node->safe_psql('postgres', 'SELECT reliq.version()'), '0.3', 'reliq.version()');
my ($slot) = map { $_->[1]{worker} } grep { $_->[0] eq 'reliq_nats_connected' } @{ $m->{samples} };
ok(defined $slot, "a worker's NATS connection is reported (worker $slot)");
is(sample_value($m, 'reliq_nats_connected', worker => $slot), 1, 'and it is up');
my ($ret, $out, $err) = $node->psql('postgres', q{ALTER SYSTEM SET reliq.metrics_path = 'metrics'});
like($err, qr/invalid value for parameter "reliq\.metrics_path".*\n.*must start with "\/"/,
	'a path without a leading slash is refused');

# The dead-letter backlog: rows of reliq.dead_letter, counted by the monitor.
ok(wait_for($node, q{SELECT reliq.metrics() LIKE '%reliq_dead_letter_backlog{subscription="prom"} 3' || chr(10) || '%'}),
	'reliq_dead_letter_backlog counts the 3 dead letters');
$node->safe_psql('postgres', q{SELECT reliq.discard_dead_letter(min(id)) FROM reliq.dead_letter});
ok(wait_for($node, q{SELECT reliq.metrics() LIKE '%reliq_dead_letter_backlog{subscription="prom"} 2' || chr(10) || '%'}),
	'and follows a discard');

# Every metric the dashboard and the alert rules name is exported.
my $text = $node->safe_psql('postgres', 'SELECT reliq.metrics()');
my %families = map { $_ => 1 } ($text =~ /^# TYPE (\S+) /mg);
my %used;
for my $file ($rules, $dashboard)
{
	$used{$_}{$file} = 1 for (slurp_file($file) =~ /\b(reliq_[a-z0-9_]+)/g);
}
cmp_ok(scalar(keys %used), '>=', 20, scalar(keys %used) . ' metric names in the dashboard and the rules');
for my $name (sort keys %used)
{
	my $family = $name;
	$family =~ s/_(bucket|sum|count)$// unless $families{$name};
	ok($families{$family}, "$name (used in " . join(', ', map { s{.*/}{}r } sort keys %{ $used{$name} }) . ') is exported');
}

# A real Prometheus.
my $dir  = PostgreSQL::Test::Utils::tempdir('prometheus');
my $port = PostgreSQL::Test::Cluster::get_free_port();
open(my $fh, '>', "$dir/prometheus.yml") or die $!;
print $fh <<"YML";
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $rules
scrape_configs:
  - job_name: reliq
    metrics_path: /reliq/metrics
    static_configs:
      - targets: ['127.0.0.1:$metrics_port']
YML
close $fh;
my $prometheus_pid = fork();
die "fork: $!" unless defined $prometheus_pid;
if ($prometheus_pid == 0)
{
	open(STDIN, '<', '/dev/null');
	open(STDOUT, '>', "$dir/prometheus.log");
	open(STDERR, '>&', \*STDOUT);
	exec($prometheus_bin, "--config.file=$dir/prometheus.yml", "--storage.tsdb.path=$dir/data",
		"--web.listen-address=127.0.0.1:$port", '--log.level=warn')
	  or POSIX::_exit(127);
}
END { if ($prometheus_pid) { kill 'TERM', $prometheus_pid; waitpid($prometheus_pid, 0); } }
note("prometheus pid $prometheus_pid on port $port, logs in $dir/prometheus.log");

sub api
{
	my ($path, %params) = @_;
	my @args = map { ('--data-urlencode', "$_=$params{$_}") } sort keys %params;
	my ($body, $err) = ('', '');
	IPC::Run::run([ 'curl', '-sS', '--max-time', '10', '-G', @args,
			"http://127.0.0.1:$port$path" ], '>', \$body, '2>', \$err);
	return eval { decode_json($body) };
}

sub query_until
{
	my ($query, $want, $timeout) = @_;
	my $deadline = time + ($timeout // 60);
	my $got;
	while (time < $deadline)
	{
		my $r = api('/api/v1/query', query => $query);
		$got = $r && $r->{status} eq 'success' && @{ $r->{data}{result} } ? $r->{data}{result}[0]{value}[1] : undef;
		return $got if defined $got && $got eq $want;
		sleep 0.5;
	}
	diag("$query: still " . ($got // 'nothing') . ", not $want");
	return $got;
}

is(query_until('up{job="reliq"}', '1'), '1', 'Prometheus scrapes reliq: the target is up');
my $targets = api('/api/v1/targets');
is($targets->{data}{activeTargets}[0]{scrapeUrl}, "http://127.0.0.1:$metrics_port/reliq/metrics",
	'at reliq.metrics_path');
is(query_until('reliq_messages_processed_total{subscription="prom"}', "$processed"), "$processed",
	'PromQL returns the processed count');
is(query_until('sum(reliq_dead_letter_backlog)', '2'), '2', 'and the dead-letter backlog');
is(query_until('reliq_build_info', '1'), '1', 'and the build info');

# The alert rules loaded, and each has evaluated without error on real data.
my ($rule_health, $nrules) = ('', 0);
my $deadline = time + 60;
while (time < $deadline)
{
	my $r = api('/api/v1/rules');
	my @rules = map { @{ $_->{rules} } } @{ $r->{data}{groups} // [] };
	$nrules = @rules;
	$rule_health = join ',', sort map { "$_->{name}=$_->{health}" } grep { $_->{health} ne 'ok' } @rules;
	last if $nrules > 0 && $rule_health eq '';
	sleep 0.5;
}
is($nrules, 10, 'Prometheus loaded the 10 alert rules of ops/prometheus/reliq-alerts.yml');
is($rule_health, '', 'every rule evaluated without error');

# Every query of the dashboard runs (template variables filled in).
my $dash = decode_json(slurp_file($dashboard));
my @exprs = map { $_->{expr} } map { @{ $_->{targets} // [] } } @{ $dash->{panels} };
cmp_ok(scalar(@exprs), '>=', 20, scalar(@exprs) . ' dashboard queries');
my @bad;
for my $expr (@exprs)
{
	(my $q = $expr) =~ s/\$__rate_interval/1m/g;
	$q =~ s/\$(instance|subscription)/.*/g;
	my $r = api('/api/v1/query', query => $q);
	push @bad, "$expr: " . ($r ? $r->{error} // '' : 'no answer')
	  unless $r && $r->{status} eq 'success';
}
is(join("\n", @bad), '', 'every dashboard query is valid PromQL and runs');

kill 'TERM', $prometheus_pid;
waitpid($prometheus_pid, 0);
$prometheus_pid = undef;
$node->stop;
$nats->stop;
done_testing();
