#!/usr/bin/perl
# bench/bench.pl: reliq's benchmark; run it with "make bench" (scripts/bench).
#
# One run, one machine, one set of messages, one target table:
#
#   ceilings   \copy of the same rows into the table; a NATS-only drain of
#              the same messages (pull and ack, no database work) at each
#              batch size; their serial combination 1 / (1/copy + 1/drain),
#              since both share the same cores;
#   reliq      the table sink and a PL/pgSQL handler that inserts the row,
#              at batch sizes 10, 100, 500 and concurrency 1 and 2, each
#              draining the same backlog of N messages through a fresh
#              durable consumer; the worker's private memory afterwards;
#   baseline   a seed-style Node.js consumer (npm nats + pg: fetch a
#              batch, one INSERT per message, ack after the insert);
#   streaming  reliq consuming while N messages are being published;
#   latency    publish -> commit at a fixed offered rate, from JetStream's
#              timestamp and the commit timestamp of the row;
#   memory     the worker's private memory every 100k messages over 1M.
#
# Rates are taken between the first and the last commit (the first
# transaction's rows left out), or for the drain and the Node consumer
# from the first message received to the last ack, so that starting a
# process is not counted.  Prints a Markdown table at the end.
#
# Environment: BENCH_N (100000), BENCH_NODE_N (BENCH_N), BENCH_MEMORY_N
# (1000000; 0 skips), BENCH_RATE (2000 msg/s), BENCH_LATENCY_SECONDS (10),
# BENCH_SKIP_NODE=1, BENCH_KEEP=1 (keep the directory), BENCH_ONLY (a
# regex of the reliq rows to run, e.g. 'sink').
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../test/perl";
use File::Temp qw(tempdir);
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(time sleep);
use ReliqTest::Local qw(stop_pid start_site stop_site site_query);

$| = 1;
my $N          = $ENV{BENCH_N}        // 100_000;
my $node_n     = $ENV{BENCH_NODE_N}   // $N;
my $memory_n   = $ENV{BENCH_MEMORY_N} // 1_000_000;
my $rate       = $ENV{BENCH_RATE}     // 2000;
my $lat_secs   = $ENV{BENCH_LATENCY_SECONDS} // 10;
my $only       = $ENV{BENCH_ONLY};
my $root       = "$FindBin::Bin/..";
my $natstool   = "$root/test/tools/natstool";
my $node_dir   = $ENV{BENCH_NODE_DIR} // "$root/bench/node";
my $payload    = '{"id":%d,"kind":"order","amount":42,"note":"bench"}';
-x $natstool or die "$natstool is missing: run make bench (it builds it)\n";

my $dir = tempdir('reliq-bench-XXXXXX', TMPDIR => 1, CLEANUP => !$ENV{BENCH_KEEP});
my (%site, @children);

sub cleanup
{
	stop_pid($_, 2) for grep { $_ } @children;
	@children = ();
	stop_site(\%site);
}
END { cleanup(); }
$SIG{INT} = $SIG{TERM} = $SIG{HUP} = sub { print STDERR "\ninterrupted\n"; exit 130; };
$SIG{PIPE} = sub { exit 141; };

start_site(\%site, $dir, 'bench', <<'CONF');
track_commit_timestamp = on
shared_buffers = 256MB
max_wal_size = 4GB
CONF
my $nats_url = $site{nats_url};
my $pg_port  = $site{pg_port};
my @psql     = @{ $site{psql} };
sub sql { return site_query(\%site, @_); }

sub natstool
{
	my @args = @_;
	open my $fh, '-|', $natstool, '--url', $nats_url, '--timeout', 10000, @args
	  or die "natstool: $!";
	local $/;
	my $out = <$fh>;
	close $fh or die "natstool @args failed\n";
	return $out;
}

sub js_api
{
	my ($api, $body) = @_;
	my $out = natstool('request', "\$JS.API.$api", $body);
	die "JetStream API $api: $out" if $out =~ /"error"/;
	return $out;
}

# Progress: on a terminal one line, rewritten; elsewhere a line every 5 s.
my $tty = -t STDERR;
my $last_progress = 0;

sub progress
{
	my ($what, $done, $total) = @_;
	if ($tty)
	{
		printf STDERR "\r  %-44s %9d / %d", $what, $done, $total;
	}
	elsif (time - $last_progress >= 5)
	{
		printf STDERR "  %-44s %9d / %d\n", $what, $done, $total;
		$last_progress = time;
	}
}

sub done_line
{
	my ($what, $text) = @_;
	printf STDERR "\r%s\r", ' ' x 78 if $tty;
	printf "  %-44s %s\n", $what, $text;
}

sql(<<'SQL');
CREATE EXTENSION reliq;
CREATE SCHEMA bench;
CREATE TABLE bench.events (id bigint, kind text, amount int, note text);
CREATE TABLE bench.latency (stream_seq bigint, published_at timestamptz);
-- the handler a user would write: parse, insert the row
CREATE FUNCTION bench.insert_event(m reliq.message) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    j jsonb := reliq.message_json(m);
BEGIN
    INSERT INTO bench.events (id, kind, amount, note)
    VALUES ((j->>'id')::bigint, j->>'kind', (j->>'amount')::int, j->>'note');
END $$;
CREATE FUNCTION bench.record_latency(m reliq.message) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench.latency VALUES (m.stream_seq, m.published_at);
END $$;
SQL

my $cpu = `nproc`;
chomp $cpu;
my $cpu_model = (grep { /^model name/ } split /\n/, `cat /proc/cpuinfo`)[0] // '';
$cpu_model =~ s/^model name\s*:\s*//;
print "reliq benchmark: N = $N messages of ", length(sprintf($payload, $N)),
  " bytes, $cpu cores ($cpu_model)\n";
print "  nats-server $nats_url, PostgreSQL 127.0.0.1:$pg_port, in $dir\n\n";

# The backlog: N messages, published once, read by every run.
js_api('STREAM.CREATE.BENCH', '{"name":"BENCH","subjects":["bench.>"],"storage":"file"}');
{
	my $t0 = time;
	natstool('publish', 'bench.events', '--count', $N, '--start', 1, '--payload', $payload);
	done_line("publish the backlog", sprintf('%d msgs in %.2f s', $N, time - $t0));
}

my %result;    # key => { rate => msgs/s, mem => MB, note => text }
my $consumers = 0;

sub fresh_consumer
{
	my ($batch) = @_;
	my $name = 'drain' . ++$consumers;
	js_api("CONSUMER.DURABLE.CREATE.BENCH.$name",
		qq({"stream_name":"BENCH","config":{"durable_name":"$name","ack_policy":"explicit",)
		  . qq("deliver_policy":"all","filter_subject":"bench.events","max_ack_pending":)
		  . (2 * $batch > 1000 ? 2 * $batch : 1000) . '}}');
	return $name;
}

# Ceiling 1: \copy of the same rows.
{
	my $csv = "$dir/rows.csv";
	open my $fh, '>', $csv or die;
	print $fh "$_,order,42,bench\n" for 1 .. $N;
	close $fh;
	sql('TRUNCATE bench.events; CHECKPOINT');
	my $t0 = time;
	system(@psql, '-d', 'bench', '-c', "\\copy bench.events FROM '$csv' CSV") == 0
	  or die "\\copy failed\n";
	my $secs = time - $t0;
	my $rows = sql('SELECT count(*) FROM bench.events');
	die "\\copy loaded $rows rows, not $N\n" unless $rows == $N;
	$result{copy} = { rate => $N / $secs };
	done_line('ceiling: \copy', sprintf('%8.0f rows/s', $N / $secs));
}

# Ceiling 2: pull and ack only, at each batch size.
for my $batch (10, 100, 500)
{
	my $name = fresh_consumer($batch);
	progress("ceiling: NATS drain, batch $batch", 0, $N);
	my $out = natstool('drain', 'BENCH', $name, '--count', $N, '--batch', $batch);
	$out =~ /drained (\d+) in ([\d.]+) s/ or die "natstool drain: $out";
	$result{"drain$batch"} = { rate => $1 / $2 };
	$result{"ceiling$batch"} =
	  { rate => 1 / (1 / $result{copy}{rate} + 1 / $result{"drain$batch"}{rate}) };
	done_line("ceiling: NATS drain, batch $batch",
		sprintf('%8.0f msgs/s; combined with \copy %8.0f msgs/s',
			$result{"drain$batch"}{rate}, $result{"ceiling$batch"}{rate}));
	js_api("CONSUMER.DELETE.BENCH.$name", '');
}

# Private memory of a process, in MB: its anonymous resident pages
# (RssAnon: heap, stacks, memory contexts), not the shared buffers it has
# touched, which smaps would count as private while no other process has.
sub private_mb
{
	my ($pid) = @_;
	open my $fh, '<', "/proc/$pid/status" or return undef;
	while (<$fh>)
	{
		return $1 / 1024 if /^RssAnon:\s+(\d+) kB/;
	}
	return undef;
}

sub worker_memory
{
	my ($sub) = @_;
	my @mb = map { private_mb($_) // () }
	  split /\n/, sql("SELECT pid FROM reliq.worker_status WHERE subscription_name = '$sub'");
	return @mb ? (sort { $b <=> $a } @mb)[0] : undef;
}

# Rate between the first and the last commit of the rows in $table; the
# rows of the first transaction are left out (the clock starts at its end).
sub commit_rate
{
	my ($table) = @_;
	my ($rows, $first_rows, $secs) = split /\|/, sql(
		"WITH c AS (SELECT pg_xact_commit_timestamp(xmin) AS t FROM $table)
		 SELECT count(*), count(*) FILTER (WHERE t = (SELECT min(t) FROM c)),
		        extract(epoch FROM max(t) - min(t)) FROM c");
	return ($rows, $secs > 0 ? ($rows - $first_rows) / $secs : 0);
}

# Wait until subscription $sub has processed $want messages, watching its
# counter in shared memory (a count(*) of the table every 0.2 s would take
# CPU from the run it measures).
sub wait_processed
{
	my ($what, $sub, $want, $timeout) = @_;
	my $deadline = time + ($timeout // 600);
	my $done = 0;
	while (time < $deadline)
	{
		$done = sql("SELECT processed FROM reliq.subscription_stats WHERE subscription_name = '$sub'");
		progress($what, $done, $want);
		return $done if $done >= $want;
		sleep 0.2;
	}
	die "\n$what: $done of $want messages after the timeout\n";
}

# Wait until every worker of $sub is attached and waiting for messages.
sub wait_ready
{
	my ($sub, $workers) = @_;
	my $deadline = time + 60;
	while (time < $deadline)
	{
		return if sql("SELECT count(*) FROM reliq.worker_status
		                WHERE subscription_name = '$sub' AND connected AND state = 'fetching'") >= $workers;
		sleep 0.1;
	}
	die "the workers of $sub did not get ready within 60 s\n";
}

my $runs = 0;

# One reliq run: a fresh subscription (and consumer) drains the backlog.
sub reliq_run
{
	my ($path, $batch, $concurrency) = @_;
	my $key = "$path/$batch/$concurrency";
	my $what = sprintf('reliq %-7s batch %3d, concurrency %d', $path, $batch, $concurrency);
	return if defined $only && $key !~ /$only/;
	my $name = 'run' . ++$runs;
	my $how = $path eq 'sink'
	  ? "target => 'bench.events'::regclass"
	  : "handler => 'bench.insert_event(reliq.message)'::regprocedure";
	sql('TRUNCATE bench.events; CHECKPOINT');
	sql("SELECT reliq.create_subscription('$name', stream => 'BENCH', subject => 'bench.events',
	       $how, batch_size => $batch, concurrency => $concurrency)");
	wait_processed($what, $name, $N);
	my ($rows, $r) = commit_rate('bench.events');
	die "\n$what: $rows rows for $N messages\n" unless $rows == $N;
	my $dups = sql("SELECT count(*) - count(DISTINCT id) FROM bench.events");
	die "\n$what: $dups rows twice\n" if $dups;
	my $mb = worker_memory($name);
	my ($slow, $avg) = split /\|/, sql("SELECT slow_path_batches, round(processed::numeric / greatest(batches, 1))
		FROM reliq.subscription_stats WHERE subscription_name = '$name'");
	sql("SELECT reliq.drop_subscription('$name', drop_consumer => true)");
	$result{$key} = { rate => $r, mem => $mb, batch => $batch, avg => $avg };
	done_line($what, sprintf('%8.0f msgs/s, %3d per batch, worker %5.1f MB private%s', $r, $avg, $mb // 0,
		$slow ? ", $slow slow-path batches" : ''));
}

for my $path ('sink', 'handler')
{
	for my $batch (10, 100, 500)
	{
		reliq_run($path, $batch, $_) for 1, 2;
	}
}

# The baseline: the Node.js consumer reliq replaces.
sub node_run
{
	my ($fetch, $inserts) = @_;
	my $what = sprintf('node    fetch %3d, %2d insert%s at a time', $fetch, $inserts,
		$inserts > 1 ? 's' : '');
	my $name = fresh_consumer($fetch);
	sql('TRUNCATE bench.events; CHECKPOINT');
	my $out = "$dir/node-$name.out";
	my $pid = fork // die;
	if ($pid == 0)
	{
		open STDOUT, '>', $out or die;
		open STDERR, '>', "$out.err" or die;
		exec 'node', "$node_dir/consumer.js", '--nats', $nats_url,
		  '--pg', "postgresql://postgres\@127.0.0.1:$pg_port/bench",
		  '--stream', 'BENCH', '--consumer', $name, '--subject', 'bench.events',
		  '--fetch', $fetch, '--count', $node_n, '--table', 'bench.events',
		  '--concurrency', $inserts
		  or die "exec node: $!";
	}
	push @children, $pid;
	my $inserted = "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relid = 'bench.events'::regclass";
	my $before = sql($inserted);
	while (waitpid($pid, WNOHANG) != $pid)
	{
		progress($what, sql($inserted) - $before, $node_n);
		sleep 1;
	}
	@children = grep { $_ != $pid } @children;
	die "\nthe Node consumer failed:\n" . `cat $out.err` if $? != 0;
	my $json = `cat $out`;
	$json =~ /"msgs_per_second":\s*([\d.]+)/ or die "node output: $json";
	my $r = $1;
	$result{"node/$fetch/$inserts"} = { rate => $r };
	done_line($what, sprintf('%8.0f msgs/s (%d messages)', $r, $node_n));
	js_api("CONSUMER.DELETE.BENCH.$name", '');
}

if (!$ENV{BENCH_SKIP_NODE})
{
	-d "$node_dir/node_modules"
	  or die "$node_dir/node_modules is missing: run make bench (it runs npm ci)\n";
	node_run(10, 1);
	node_run(100, 1);
	node_run(100, 10);
}

# While publishing: reliq consumes a stream that is being written.
sub streaming_run
{
	my ($path, $batch, $concurrency) = @_;
	my $what = sprintf('streaming: %s, batch %d, concurrency %d', $path, $batch, $concurrency);
	js_api('STREAM.CREATE.LIVE', '{"name":"LIVE","subjects":["live.>"],"storage":"file"}');
	sql('TRUNCATE bench.events; CHECKPOINT');
	sql("SELECT reliq.create_subscription('live', stream => 'LIVE', subject => 'live.events',
	       target => 'bench.events'::regclass, batch_size => $batch, concurrency => $concurrency)");
	wait_ready('live', $concurrency);
	my $t0 = time;
	my $pid = fork // die;
	if ($pid == 0)
	{
		open STDOUT, '>', '/dev/null';
		exec $natstool, '--url', $nats_url, 'publish', 'live.events', '--count', $N,
		  '--start', 1, '--payload', $payload or die;
	}
	push @children, $pid;
	wait_processed($what, 'live', $N);
	my $secs = time - $t0;
	my $rows = sql('SELECT count(*) FROM bench.events');
	die "\n$what: $rows rows for $N messages\n" unless $rows == $N;
	waitpid($pid, 0);
	@children = grep { $_ != $pid } @children;
	die "\npublisher failed\n" if $? != 0;
	sql("SELECT reliq.drop_subscription('live', drop_consumer => true)");
	js_api('STREAM.DELETE.LIVE', '');
	$result{streaming} = { rate => $N / $secs, batch => $batch };
	done_line($what, sprintf('%8.0f msgs/s, first publish to last commit', $N / $secs));
}
streaming_run('sink', 500, 2) if !defined $only || 'streaming' =~ /$only/;

# Latency at a fixed offered rate: publish -> commit of each message.
sub latency_run
{
	my $count = $rate * $lat_secs;
	my $what = "latency at $rate msg/s offered, handler";
	js_api('STREAM.CREATE.LAT', '{"name":"LAT","subjects":["lat.>"],"storage":"file"}');
	sql("SELECT reliq.create_subscription('lat', stream => 'LAT', subject => 'lat.x',
	       handler => 'bench.record_latency(reliq.message)'::regprocedure)");
	wait_ready('lat', 1);
	my $pid = fork // die;
	if ($pid == 0)
	{
		open STDOUT, '>', '/dev/null';
		exec $natstool, '--url', $nats_url, 'publish', 'lat.x', '--count', $count,
		  '--rate', $rate, '--payload', $payload or die;
	}
	push @children, $pid;
	wait_processed($what, 'lat', $count);
	waitpid($pid, 0);
	@children = grep { $_ != $pid } @children;
	my ($p50, $p99, $max) = split /\|/, sql(
		"SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY ms), percentile_disc(0.99) WITHIN GROUP (ORDER BY ms), max(ms)
		   FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - published_at) * 1000 AS ms
		           FROM bench.latency) l");
	my ($rp50, $rp99) = split /\|/, sql(
		"SELECT extract(epoch FROM latency_p50) * 1000, extract(epoch FROM latency_p99) * 1000
		   FROM reliq.subscription_stats WHERE subscription_name = 'lat'");
	sql("SELECT reliq.drop_subscription('lat', drop_consumer => true)");
	js_api('STREAM.DELETE.LAT', '');
	$result{latency} = { p50 => $p50, p99 => $p99, max => $max, count => $count };
	done_line($what, sprintf('p50 %.2f ms, p99 %.2f ms, max %.1f ms (%d msgs; reliq\'s own p50 %.2f, p99 %.2f ms)',
		$p50, $p99, $max, $count, $rp50 // 0, $rp99 // 0));
}
latency_run() if !defined $only || 'latency' =~ /$only/;

# Memory over a long run: the sink at batch 500 while 1M messages are published.
sub memory_run
{
	my $what = "memory over $memory_n messages";
	js_api('STREAM.CREATE.MEM', '{"name":"MEM","subjects":["mem.>"],"storage":"file"}');
	sql('TRUNCATE bench.events; CHECKPOINT');
	sql("SELECT reliq.create_subscription('mem', stream => 'MEM', subject => 'mem.x',
	       target => 'bench.events'::regclass, batch_size => 500)");
	wait_ready('mem', 1);
	my $pid = fork // die;
	if ($pid == 0)
	{
		open STDOUT, '>', '/dev/null';
		exec $natstool, '--url', $nats_url, 'publish', 'mem.x', '--count', $memory_n,
		  '--payload', $payload or die;
	}
	push @children, $pid;
	my @samples;
	my $step = $memory_n / 10;
	my $next = $step;
	my $deadline = time + 1200;
	while (time < $deadline)
	{
		my $processed = sql("SELECT processed FROM reliq.subscription_stats WHERE subscription_name = 'mem'");
		progress($what, $processed, $memory_n);
		if ($processed >= $next || $processed >= $memory_n)
		{
			push @samples, sprintf('%.1f', worker_memory('mem') // 0);
			$next += $step while $next <= $processed;
		}
		last if $processed >= $memory_n;
		sleep 0.2;
	}
	waitpid($pid, 0);
	@children = grep { $_ != $pid } @children;
	sql("SELECT reliq.drop_subscription('mem', drop_consumer => true)");
	js_api('STREAM.DELETE.MEM', '');
	$result{memory} = \@samples;
	done_line($what, "worker MB every " . ($step / 1000) . "k: @samples");
}
memory_run() if $memory_n && (!defined $only || 'memory' =~ /$only/);

# The table.  The baseline is the consumer as the original service was
# written: fetch 10, one INSERT at a time, ack after each.
my $base = $result{'node/10/1'} ? $result{'node/10/1'}{rate} : undef;
print "\n| run | batch | conc. | msgs/s | of ceiling | × Node baseline | worker MB |\n";
print "|---|---:|---:|---:|---:|---:|---:|\n";
printf "| \\copy (ceiling) | | | %.0f | | | |\n", $result{copy}{rate};
for my $batch (10, 100, 500)
{
	printf "| NATS drain, pull + ack only (ceiling) | %d | 1 | %.0f | | | |\n", $batch,
	  $result{"drain$batch"}{rate};
	printf "| combined ceiling 1/(1/copy + 1/drain) | %d | | %.0f | 100%% | | |\n", $batch,
	  $result{"ceiling$batch"}{rate};
}
for my $path ('sink', 'handler')
{
	for my $batch (10, 100, 500)
	{
		for my $conc (1, 2)
		{
			my $r = $result{"$path/$batch/$conc"} or next;
			printf "| reliq %s | %d | %d | %.0f | %.0f%% | %s | %.1f |\n",
			  $path eq 'sink' ? 'table sink' : 'PL/pgSQL handler', $batch, $conc, $r->{rate},
			  100 * $r->{rate} / $result{"ceiling$batch"}{rate},
			  $base ? sprintf('%.0f×', $r->{rate} / $base) : '-', $r->{mem} // 0;
		}
	}
}
for my $k (sort grep { m{^node/} } keys %result)
{
	my (undef, $fetch, $inserts) = split m{/}, $k;
	printf "| Node.js baseline (nats + pg), %d insert%s at a time | %d | 1 | %.0f | %.0f%% | %.2f× | |\n",
	  $inserts, $inserts > 1 ? 's' : '', $fetch, $result{$k}{rate},
	  100 * $result{$k}{rate} / $result{"ceiling$fetch"}{rate}, $result{$k}{rate} / $base;
}
if (my $s = $result{streaming})
{
	printf "| reliq table sink while publishing (first publish to last commit) | %d | 2 | %.0f | %.0f%% | %s | |\n",
	  $s->{batch}, $s->{rate}, 100 * $s->{rate} / $result{"ceiling$s->{batch}"}{rate},
	  $base ? sprintf('%.0f×', $s->{rate} / $base) : '-';
}
my ($best_key) = sort { $result{$b}{rate} <=> $result{$a}{rate} }
  grep { m{^(sink|handler)/} } keys %result;
my ($fast_node) = sort { $result{$b}{rate} <=> $result{$a}{rate} }
  grep { m{^node/} } keys %result;
if ($best_key && $fast_node)
{
	printf "\nBest reliq run (%s) against the fastest Node variant (%s, %.0f msgs/s): %.1f×\n",
	  $best_key, $fast_node, $result{$fast_node}{rate},
	  $result{$best_key}{rate} / $result{$fast_node}{rate};
}
if (my $l = $result{latency})
{
	printf "\nPublish → commit at %d msg/s offered (%d messages, handler, batch 100): p50 %.2f ms, p99 %.2f ms, max %.1f ms\n",
	  $rate, $l->{count}, $l->{p50}, $l->{p99}, $l->{max};
}
if (my $m = $result{memory})
{
	printf "Worker private memory (MB) every %dk messages over %d (table sink, batch 500): %s\n",
	  $memory_n / 10000, $memory_n, join(' ', @$m);
}
cleanup();
