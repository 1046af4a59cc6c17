#!/usr/bin/perl
# bench/bench.pl: reliq's benchmark; run it with "make bench" (scripts/bench).
#
# One run, one machine, one set of messages, one target table.  Two
# sections, chosen with BENCH=core|pool (default: both):
#
# core (issue 13)
#   ceilings   \copy of the same rows into the table; a NATS-only drain of
#              the same messages (pull and ack, no database work) at each
#              batch size; their serial combination 1 / (1/copy + 1/drain),
#              since both share the same cores; the streaming ceiling: a
#              NATS-only drain while the messages are being published;
#   reliq      the table sink, a per-message PL/pgSQL handler and a
#              set-based handler (one call per batch, reliq.message[]) at
#              batch sizes 10, 100, 500 and concurrency 1 and 2, each
#              draining the same backlog of N messages through a fresh
#              durable consumer, three times (the median is the figure);
#              the worker's private memory afterwards; the CPU per message
#              of reliq's workers and of nats-server;
#   Node.js    the seed-style consumer reliq replaces (bench/node/consumer.js:
#              one INSERT and one ack per message) and the strong peer
#              (bench/node/peer.js: two loops, fetch 500, one transaction
#              per batch with a dedup ledger and one INSERT);
#   stall      the stall of issue 13: a drain through the per-message
#              handler (batch 500 x 2, fresh consumer) right after another
#              subscription of the stream was paused (while it drained,
#              or while it idled), and a drain across a restart of
#              nats-server, BENCH_STALL_TRIES times each; a gap over 1 s
#              between commits fails the bench;
#   streaming  reliq consuming while N messages are being published;
#   latency    publish -> commit at fixed offered rates (2,000 and 20,000
#              msg/s), from JetStream's timestamp and the commit timestamp
#              of the row;
#   memory     the worker's private memory every 100k messages over 1M;
#   upsert     the table sink in mode 'upsert' (key id) beside mode 'insert',
#              on N messages over 10,000 keys, batch 500 x 2 (issue 21);
#   profile    where a batch's time goes, step by step, from collecting it to
#              its acks (reliq.profile_batches, reliq.batch_profile()), for
#              the table sink and the per-message handler at batch 1, 10,
#              100 and 500; and the small batches' rates (10 x 2, 100 x 2)
#              as a share of batch 500 x 2's.
#
# pool (issue 10), on reliq.max_workers = 4
#   1,000 subscriptions x 100 messages each: the drain time, every one
#   served, 0 lost, 0 duplicated; 200 subscriptions with a trickle spread
#   over all of them: publish -> commit; 1,000 idle subscriptions: CPU of
#   reliq's processes and nats-server, log lines; one busy subscription
#   beside 199 idle ones against alone.  Waits are bounded: what is not
#   served is reported as such ("not served: N subscriptions").
#
# Every run that commits rows is checked for gaps: any time over one second
# between two consecutive commits (from the rows' commit timestamps) is
# printed with when it happened.
#
# Rates are taken between the first and the last commit (the first
# transaction's rows left out), or for the drains and the Node consumers
# from the first message received to the last ack, so that starting a
# process is not counted.  Prints Markdown tables at the end.
#
# Environment:
#   BENCH                 all (default), core or pool
#   BENCH_ONLY            a regex of run keys, e.g. 'sink/500|latency|pool/idle'
#                         (keys: sink|handler|batch/<batch>/<conc>, node/<fetch>/<k>,
#                         kv/insert|upsert|ordered/500/2, kv/upsert|ordered/500/1,
#                         profile/sink|handler/<batch>,
#                         peer, stall/pause, stall/restart, streaming,
#                         latency/<rate>, memory, pool/drain,
#                         pool/trickle, pool/idle, pool/busy); ceilings always run
#                         in core unless BENCH_CEILINGS=0
#   BENCH_N (100000)      the backlog each throughput run drains
#   BENCH_REPEAT (3)      runs of each reliq row, ceiling and the strong peer
#   BENCH_NODE_N (BENCH_N)  messages of each seed-style Node run
#   BENCH_RATES ('2000 20000')  offered rates of the latency runs, msg/s
#   BENCH_LATENCY_SECONDS (10)
#   BENCH_MEMORY_N (1000000; 0 skips)
#   BENCH_STALL_TRIES (3) tries of each stall row
#   BENCH_PROFILE_N (20000) messages of each profile row (a quarter at batch 1)
#   BENCH_UPSERT_KEYS (10000) keys of the upsert rows' N messages
#   BENCH_SKIP_NODE=1     no Node.js runs
#   BENCH_POOL_SUBS (1000), BENCH_POOL_MSGS (100): the pool drain
#   BENCH_POOL_TRICKLE_SUBS (200), BENCH_POOL_TRICKLE_RATE (200 msg/s in all),
#   BENCH_POOL_TRICKLE_SECONDS (20)
#   BENCH_POOL_IDLE_SUBS (1000), BENCH_POOL_IDLE_SECONDS (30)
#   BENCH_POOL_NEIGHBOURS (199), BENCH_POOL_BATCH (100): the busy subscription
#   BENCH_POOL_STALL (30): seconds without progress before a pool run stops
#   waiting and reports what was not served
#   BENCH_KEEP=1          keep the directory (logs, data)
#   (key tracing: the per-message handler, batch 100, concurrency 1, with
#   reliq.otlp_endpoint off and on at reliq.trace_sample_rate 1.0, to an
#   OTLP receiver that answers without decoding; $repeat runs of each)
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../test/perl";
use File::Temp qw(tempdir);
use IO::Socket::INET;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(time sleep);
use ReliqTest::Local qw(free_port stop_pid start_site stop_site site_query);
use ReliqTest::Otlp;

$| = 1;
my $section    = $ENV{BENCH} || 'all';
my $N          = $ENV{BENCH_N}        // 100_000;
my $repeat     = $ENV{BENCH_REPEAT}   // 3;
my $node_n     = $ENV{BENCH_NODE_N}   // $N;
my $memory_n   = $ENV{BENCH_MEMORY_N} // 1_000_000;
my @rates      = split ' ', ($ENV{BENCH_RATES} // '2000 20000');
my $lat_secs   = $ENV{BENCH_LATENCY_SECONDS} // 10;
my $only       = $ENV{BENCH_ONLY};
my $ceilings   = $ENV{BENCH_CEILINGS} // 1;
my $stall_tries = $ENV{BENCH_STALL_TRIES} // 3;
my $profile_n  = $ENV{BENCH_PROFILE_N} // 20_000;
my $upsert_keys = $ENV{BENCH_UPSERT_KEYS} // 10_000;
my %pool = (
	subs           => $ENV{BENCH_POOL_SUBS}            // 1000,
	msgs           => $ENV{BENCH_POOL_MSGS}            // 100,
	trickle_subs   => $ENV{BENCH_POOL_TRICKLE_SUBS}    // 200,
	trickle_rate   => $ENV{BENCH_POOL_TRICKLE_RATE}    // 200,
	trickle_secs   => $ENV{BENCH_POOL_TRICKLE_SECONDS} // 20,
	idle_subs      => $ENV{BENCH_POOL_IDLE_SUBS}       // 1000,
	idle_secs      => $ENV{BENCH_POOL_IDLE_SECONDS}    // 30,
	neighbours     => $ENV{BENCH_POOL_NEIGHBOURS}      // 199,
	batch          => $ENV{BENCH_POOL_BATCH}           // 100,
	stall          => $ENV{BENCH_POOL_STALL}           // 30,
);
my $root       = "$FindBin::Bin/..";
my $natstool   = "$root/test/tools/natstool";
my $node_dir   = $ENV{BENCH_NODE_DIR} // "$root/bench/node";
my $payload    = '{"id":%d,"kind":"order","amount":42,"note":"bench"}';
-x $natstool or die "$natstool is missing: run make bench (it builds it)\n";
$section =~ /^(all|core|pool)$/ or die "BENCH must be all, core or pool, not \"$section\"\n";
$repeat >= 1 or die "BENCH_REPEAT must be at least 1\n";

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

# reliq.max_workers = 4 is the default, which the pool rows are about; the
# core rows run one subscription at a time, with at most 2 workers.
start_site(\%site, $dir, 'bench', <<'CONF');
track_commit_timestamp = on
shared_buffers = 256MB
max_wal_size = 4GB
reliq.max_workers = 4
reliq.max_subscriptions = 2000
CONF
my $nats_url = $site{nats_url};
my $pg_port  = $site{pg_port};
my @psql     = @{ $site{psql} };
sub sql { return site_query(\%site, @_); }

# A query that may fail: (1, output) or (0, the error's text).
sub sql_try
{
	my ($query) = @_;
	my $err = "$dir/psql.err";
	my $pid = open(my $fh, '-|') // die "fork: $!";
	if ($pid == 0)
	{
		open STDERR, '>', $err or die;
		exec @psql, '-d', $site{database}, '-v', 'ON_ERROR_STOP=1', '-A', '-t', '-F', '|', '-c', $query;
		die "exec psql: $!";
	}
	local $/;
	my $out = <$fh> // '';
	my $ok = close $fh;
	$out =~ s/\s+\z//;
	return (1, $out) if $ok;
	my $text = `cat $err`;
	my ($e) = $text =~ /^(?:psql:[^\n]*?)?ERROR:\s+(.*)$/m;
	return (0, $e // $text);
}

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

sub js_stream
{
	my ($name, $subjects) = @_;
	js_api("STREAM.CREATE.$name",
		qq({"name":"$name","subjects":["$subjects"],"storage":"file"}));
}

sub js_delete_stream
{
	my ($name) = @_;
	natstool('request', "\$JS.API.STREAM.DELETE.$name", '');
}

# Start a child process with its output in files; returns its PID.
sub spawn
{
	my ($out, @cmd) = @_;
	my $pid = fork // die "fork: $!";
	if ($pid == 0)
	{
		open STDOUT, '>', $out or die;
		open STDERR, '>', "$out.err" or die;
		exec @cmd or die "exec $cmd[0]: $!";
	}
	push @children, $pid;
	return $pid;
}

# Wait for a child started by spawn; returns its exit status.
sub reap
{
	my ($pid) = @_;
	waitpid($pid, 0);
	my $status = $?;
	@children = grep { $_ != $pid } @children;
	return $status;
}

# Progress: on a terminal one line, rewritten; elsewhere a line every 5 s.
my $tty = -t STDERR;
my $last_progress = 0;

sub progress
{
	my ($what, $done, $total) = @_;
	if ($tty)
	{
		printf STDERR "\r  %-46s %9d / %d", $what, $done, $total;
	}
	elsif (time - $last_progress >= 5)
	{
		printf STDERR "  %-46s %9d / %d\n", $what, $done, $total;
		$last_progress = time;
	}
}

sub done_line
{
	my ($what, $text) = @_;
	printf STDERR "\r%s\r", ' ' x 80 if $tty;
	printf "  %-46s %s\n", $what, $text;
}

sub median
{
	my @v = sort { $a <=> $b } @_;
	return undef unless @v;
	return @v % 2 ? $v[$#v / 2] : ($v[@v / 2 - 1] + $v[@v / 2]) / 2;
}

sub thousands
{
	my ($n) = @_;
	1 while $n =~ s/^(\d+)(\d{3})/$1,$2/;
	return $n;
}

# Is run $key selected (BENCH and BENCH_ONLY)?
sub want
{
	my ($key) = @_;
	my $is_pool = $key =~ m{^pool/};
	return 0 if $section eq 'core' && $is_pool;
	return 0 if $section eq 'pool' && !$is_pool;
	return !defined $only || $key =~ /$only/;
}

sql(<<'SQL');
CREATE EXTENSION reliq;
CREATE SCHEMA bench;
CREATE TABLE bench.events (id bigint, kind text, amount int, note text);
CREATE TABLE bench.latency (stream_seq bigint, published_at timestamptz);
CREATE TABLE bench.kv (id bigint PRIMARY KEY, kind text, amount int, note text);
CREATE TABLE bench.kv_insert (id bigint, kind text, amount int, note text);
CREATE TABLE bench.pool_events (sub int, id bigint, kind text, amount int, note text);
CREATE TABLE bench.pool_latency (subscription text, stream_seq bigint, published_at timestamptz);
-- the handler a user would write: parse, insert the row
CREATE FUNCTION bench.insert_event(m reliq.message) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    j jsonb := reliq.message_json(m);
BEGIN
    INSERT INTO bench.events (id, kind, amount, note)
    VALUES ((j->>'id')::bigint, j->>'kind', (j->>'amount')::int, j->>'note');
END $$;
-- the same as a set-based handler: one call per batch
CREATE FUNCTION bench.insert_events(msgs reliq.message[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench.events (id, kind, amount, note)
    SELECT (j->>'id')::bigint, j->>'kind', (j->>'amount')::int, j->>'note'
      FROM unnest(msgs) AS m, LATERAL reliq.message_json(m::reliq.message) AS j;
END $$;
-- both handlers insert what they are given
DO $$
DECLARE
    m reliq.message;
BEGIN
    m.data := convert_to('{"id":1,"kind":"order","amount":42,"note":"bench"}', 'UTF8');
    PERFORM bench.insert_event(m);
    PERFORM bench.insert_events(ARRAY[m, m]);
    IF (SELECT count(*) FROM bench.events WHERE id = 1 AND kind = 'order' AND amount = 42) <> 3 THEN
        RAISE EXCEPTION 'the benchmark''s handlers do not insert what they are given';
    END IF;
    TRUNCATE bench.events;
END $$;
CREATE FUNCTION bench.record_latency(m reliq.message) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench.latency VALUES (m.stream_seq, m.published_at);
END $$;
CREATE FUNCTION bench.record_pool_latency(m reliq.message) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench.pool_latency VALUES (m.subscription, m.stream_seq, m.published_at);
END $$;
SQL

my $hz = `getconf CLK_TCK` || 100;
chomp $hz;
my $cpu = `nproc`;
chomp $cpu;
my $cpu_model = (grep { /^model name/ } split /\n/, `cat /proc/cpuinfo`)[0] // '';
$cpu_model =~ s/^model name\s*:\s*//;
my $bench_started = time;
print "reliq benchmark ($section): N = $N messages of ", length(sprintf($payload, $N)),
  " bytes, $repeat run(s) of each reliq row, $cpu cores ($cpu_model)\n";
print "  nats-server $nats_url, PostgreSQL 127.0.0.1:$pg_port, in $dir\n";
print "  load average at the start: ", join(' ', (split ' ', `cat /proc/loadavg`)[0 .. 2]), "\n\n";

my %result;    # key => { rate => msgs/s (median), runs => [...], ... }
my @gaps;      # every gap over 1 s: "what: text"
my @errors;    # lost or duplicated messages: the bench exits 1
my $consumers = 0;
my $backlog_published = 0;

# The backlog: N messages, published once, read by every throughput run.
sub publish_backlog
{
	return if $backlog_published++;
	js_stream('BENCH', 'bench.>');
	my $t0 = time;
	natstool('publish', 'bench.events', '--count', $N, '--start', 1, '--payload', $payload);
	done_line("publish the backlog", sprintf('%d msgs in %.2f s', $N, time - $t0));
}

sub fresh_consumer
{
	my ($batch, $stream, $subject) = @_;
	$stream //= 'BENCH';
	$subject //= 'bench.events';
	my $name = 'drain' . ++$consumers;
	js_api("CONSUMER.DURABLE.CREATE.$stream.$name",
		qq({"stream_name":"$stream","config":{"durable_name":"$name","ack_policy":"explicit",)
		  . qq("deliver_policy":"all","filter_subject":"$subject","max_ack_pending":)
		  . (2 * $batch > 1000 ? 2 * $batch : 1000) . '}}');
	return $name;
}

# Number of pull requests waiting on a consumer (0 if it is unknown).
sub num_waiting
{
	my ($stream, $consumer) = @_;
	my $out = eval { natstool('request', "\$JS.API.CONSUMER.INFO.$stream.$consumer", '') } // '';
	return $out =~ /"num_waiting":\s*(\d+)/ ? $1 : 0;
}

# Wait until $want pulls wait on the consumer (someone is ready to take
# messages); after 15 s one is enough; after 60 s go on anyway.
sub wait_pulling
{
	my ($stream, $consumer, $want) = @_;
	my $t0 = time;
	while (time - $t0 < 60)
	{
		my $n = num_waiting($stream, $consumer);
		return if $n >= $want || ($n >= 1 && time - $t0 > 15);
		sleep 0.1;
	}
	print "  (no pull waiting on $stream/$consumer after 60 s; going on)\n";
}

# The PIDs of reliq's workers (the pool's, not the launcher or monitor).
sub worker_pids
{
	return split /\n/, sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'reliq worker'");
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

# The largest private memory of the workers of $sub (of any reliq worker
# when no worker names the subscription, as in a shared pool).
sub worker_memory
{
	my ($sub) = @_;
	my @pids = split /\n/, sql("SELECT pid FROM reliq.worker_status WHERE subscription_name = '$sub'");
	@pids = split /\n/, sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'reliq worker'")
	  unless @pids;
	my @mb = map { private_mb($_) // () } @pids;
	return @mb ? (sort { $b <=> $a } @mb)[0] : undef;
}

# The commits of the rows in $table: rows, rate between the first and the
# last commit (the first transaction's rows left out), the epoch of the
# first and last commit, and every gap over one second between two
# consecutive commits, as text.
sub commit_profile
{
	my ($table, $t_start) = @_;
	my $c = "SELECT pg_xact_commit_timestamp(xmin) AS t, count(*) AS n FROM $table GROUP BY 1";
	my ($rows, $first_rows, $first, $last) = split /\|/, sql(
		"SELECT sum(n), (array_agg(n ORDER BY t))[1], extract(epoch FROM min(t)), extract(epoch FROM max(t))
		   FROM ($c) c");
	return { rows => 0, rate => 0, gaps => [] } unless $rows;
	my $secs = $last - $first;
	my @g;
	for my $line (split /\n/, sql(
		"SELECT round(gap::numeric, 2), extract(epoch FROM prev), before, to_char(prev, 'HH24:MI:SS.MS')
		   FROM (SELECT t, lag(t) OVER w AS prev, extract(epoch FROM t - lag(t) OVER w) AS gap,
		                sum(n) OVER w - n AS before
		           FROM ($c) c WINDOW w AS (ORDER BY t)) o
		  WHERE gap > 1 ORDER BY t"))
	{
		my ($gap, $prev, $before, $clock) = split /\|/, $line;
		push @g, sprintf('%.2f s without a commit from %.2f s into the run (%s, after %s rows)',
			$gap, $prev - ($t_start // $first), $clock, thousands($before));
	}
	return {
		rows  => $rows,
		rate  => $secs > 0 ? ($rows - $first_rows) / $secs : 0,
		first => $first,
		last  => $last,
		gaps  => \@g,
	};
}

# Print and remember the gaps of one run.
sub report_gaps
{
	my ($what, $p) = @_;
	for my $g (@{ $p->{gaps} })
	{
		print "    GAP: $what: $g\n";
		push @gaps, "$what: $g";
	}
}

# Wait until subscription $sub has processed $want messages, watching its
# counter in shared memory (a count(*) of the table every 0.2 s would take
# CPU from the run it measures).  Gives up after $stall seconds without
# progress; returns what was processed.
sub wait_processed
{
	my ($what, $sub, $want, $stall) = @_;
	$stall //= 300;
	my $done = 0;
	my $moved = time;
	while (1)
	{
		my $now = sql("SELECT processed FROM reliq.subscription_stats WHERE subscription_name = '$sub'") || 0;
		$moved = time if $now != $done;
		$done = $now;
		progress($what, $done, $want);
		return $done if $done >= $want;
		if (time - $moved > $stall)
		{
			done_line($what, sprintf('STALLED: %d of %d messages, none for %d s', $done, $want, $stall));
			return $done;
		}
		sleep 0.2;
	}
}

# Check the rows of a drain: every id 1..$n once.
sub check_rows
{
	my ($what, $table, $n) = @_;
	my ($rows, $distinct, $missing) = split /\|/, sql(
		"SELECT count(*), count(DISTINCT id), $n - count(DISTINCT id) FILTER (WHERE id BETWEEN 1 AND $n)
		   FROM $table");
	my @bad;
	push @bad, "$missing lost" if $missing;
	push @bad, ($rows - $distinct) . " duplicated" if $rows != $distinct;
	return 1 unless @bad;
	push @errors, "$what: " . join(', ', @bad);
	print "    ERROR: $what: ", join(', ', @bad), "\n";
	return 0;
}

sub keep_run
{
	my ($key, %r) = @_;
	my $res = $result{$key} //= { runs => [], mems => [], avgs => [] };
	push @{ $res->{runs} }, $r{rate};
	push @{ $res->{mems} }, $r{mem} if defined $r{mem};
	push @{ $res->{avgs} }, $r{avg} if defined $r{avg};
	$res->{rate} = median(@{ $res->{runs} });
	$res->{mem} = median(@{ $res->{mems} });
	$res->{avg} = median(@{ $res->{avgs} });
	$res->{$_} = $r{$_} for grep { !/^(rate|mem|avg)$/ } keys %r;
	return $res;
}

sub runs_text
{
	my ($res) = @_;
	return join(', ', map { sprintf('%.0f', $_) } @{ $res->{runs} });
}

############################################################################
# core: the ceilings
############################################################################

sub copy_ceiling
{
	my $csv = "$dir/rows.csv";
	open my $fh, '>', $csv or die;
	print $fh "$_,order,42,bench\n" for 1 .. $N;
	close $fh;
	for my $run (1 .. $repeat)
	{
		sql('TRUNCATE bench.events; CHECKPOINT');
		my $t0 = time;
		system(@psql, '-d', 'bench', '-c', "\\copy bench.events FROM '$csv' CSV") == 0
		  or die "\\copy failed\n";
		my $secs = time - $t0;
		my $rows = sql('SELECT count(*) FROM bench.events');
		die "\\copy loaded $rows rows, not $N\n" unless $rows == $N;
		keep_run('copy', rate => $N / $secs);
	}
	done_line('ceiling: \copy', sprintf('%8.0f rows/s (%s)', $result{copy}{rate}, runs_text($result{copy})));
}

sub drain_ceiling
{
	my ($batch) = @_;
	for my $run (1 .. $repeat)
	{
		my $name = fresh_consumer($batch);
		progress("ceiling: NATS drain, batch $batch", 0, $N);
		my $out = natstool('drain', 'BENCH', $name, '--count', $N, '--batch', $batch);
		$out =~ /drained (\d+) in ([\d.]+) s/ or die "natstool drain: $out";
		keep_run("drain$batch", rate => $1 / $2);
		js_api("CONSUMER.DELETE.BENCH.$name", '');
	}
	my $d = $result{"drain$batch"};
	$result{"ceiling$batch"} = { rate => 1 / (1 / $result{copy}{rate} + 1 / $d->{rate}) };
	done_line("ceiling: NATS drain, batch $batch",
		sprintf('%8.0f msgs/s (%s); with \copy %8.0f msgs/s', $d->{rate}, runs_text($d),
			$result{"ceiling$batch"}{rate}));
}

# The streaming ceiling: a NATS-only drain (batch 500, as the "while
# publishing" row) of a fresh stream while N messages are published to it;
# from the first publish to the drain's last ack.
sub streaming_ceiling
{
	my $batch = 500;
	my $what = "ceiling: publish + NATS drain, batch $batch";
	for my $run (1 .. $repeat)
	{
		js_stream('LIVE', 'live.>');
		my $name = fresh_consumer($batch, 'LIVE', 'live.events');
		my $dpid = spawn("$dir/drain-live.out", $natstool, '--url', $nats_url, '--timeout', 10000,
			'drain', 'LIVE', $name, '--count', $N, '--batch', $batch);
		wait_pulling('LIVE', $name, 1);
		my $t0 = time;
		my $ppid = spawn("$dir/publish-live.out", $natstool, '--url', $nats_url, 'publish', 'live.events',
			'--count', $N, '--start', 1, '--payload', $payload);
		progress($what, 0, $N);
		die "\n$what: natstool drain failed: " . `cat $dir/drain-live.out.err` if reap($dpid) != 0;
		my $secs = time - $t0;
		die "\n$what: publisher failed: " . `cat $dir/publish-live.out.err` if reap($ppid) != 0;
		keep_run('streamceiling', rate => $N / $secs);
		js_delete_stream('LIVE');
	}
	my $s = $result{streamceiling};
	$result{streamceiling_combined} = { rate => 1 / (1 / $result{copy}{rate} + 1 / $s->{rate}) };
	done_line($what, sprintf('%8.0f msgs/s (%s); with \copy %8.0f msgs/s', $s->{rate}, runs_text($s),
		$result{streamceiling_combined}{rate}));
}

############################################################################
# core: reliq's rows
############################################################################

my $runs = 0;
my %how = (
	sink    => "target => 'bench.events'::regclass",
	handler => "handler => 'bench.insert_event(reliq.message)'::regprocedure",
	batch   => "handler => 'bench.insert_events(reliq.message[])'::regprocedure",
);
my %label = (
	sink    => 'reliq table sink',
	handler => 'reliq PL/pgSQL handler, per message',
	batch   => 'reliq PL/pgSQL handler, set-based',
);

# One row: a fresh subscription (and consumer) drains the backlog, $repeat times.
sub reliq_row
{
	my ($path, $batch, $concurrency) = @_;
	my $key = "$path/$batch/$concurrency";
	return unless want($key);
	my $what = sprintf('reliq %-7s batch %3d, concurrency %d', $path, $batch, $concurrency);
	for my $run (1 .. $repeat)
	{
		my $name = 'run' . ++$runs;
		sql('TRUNCATE bench.events; CHECKPOINT');
		my %w0 = map { $_ => cpu_ticks($_) // 0 } worker_pids();
		my $n0 = cpu_ticks($site{nats_pid}) // 0;
		my $t0 = time;
		my ($ok, $err) = sql_try("SELECT reliq.create_subscription('$name', stream => 'BENCH', subject => 'bench.events',
		       $how{$path}, batch_size => $batch, concurrency => $concurrency)");
		if (!$ok)
		{
			die "$what: create_subscription failed: $err\n" unless $path eq 'batch';
			$result{$key} = { skipped => 'set-based handlers not available' };
			done_line($what, "skipped: set-based handlers not available (create_subscription: $err)");
			return;
		}
		my $done = wait_processed("$what, run $run", $name, $N);
		# CPU per message: of reliq's workers, and of nats-server (less
		# moved by other load on the machine than the rate is)
		my $wticks = 0;
		$wticks += (cpu_ticks($_) // 0) - ($w0{$_} // 0) for worker_pids();
		my $nticks = (cpu_ticks($site{nats_pid}) // 0) - $n0;
		my $p = commit_profile('bench.events', $t0);
		my ($slow, $avg) = split /\|/, sql("SELECT slow_path_batches, round(processed::numeric / greatest(batches, 1))
			FROM reliq.subscription_stats WHERE subscription_name = '$name'");
		my $mb = worker_memory($name);
		sql("SELECT reliq.drop_subscription('$name', drop_consumer => true)");
		check_rows("$what, run $run", 'bench.events', $N) if $done >= $N;
		report_gaps("$what, run $run", $p);
		my $wus = $done ? $wticks * 1e6 / $hz / $done : 0;
		my $nus = $done ? $nticks * 1e6 / $hz / $done : 0;
		keep_run($key, rate => ($done >= $N ? $p->{rate} : 0), mem => $mb, avg => $avg,
			batch => $batch, conc => $concurrency, path => $path);
		my $res = $result{$key};
		push @{ $res->{wus} }, $wus;
		push @{ $res->{nus} }, $nus;
		done_line("$what, run $run", sprintf('%8.0f msgs/s, %3d per batch, worker %5.1f MB, CPU per msg: workers %.1f µs, nats-server %.1f µs, first commit after %.2f s%s%s',
			$p->{rate}, $avg, $mb // 0, $wus, $nus, ($p->{first} // $t0) - $t0, $slow ? ", $slow slow-path batches" : '',
			@{ $p->{gaps} } ? ', ' . scalar(@{ $p->{gaps} }) . ' GAP(S) over 1 s' : ''));
	}
	my $r = $result{$key};
	$r->{wus_median} = median(@{ $r->{wus} });
	$r->{nus_median} = median(@{ $r->{nus} });
	done_line($what, sprintf('%8.0f msgs/s median (%s); CPU per msg: workers %.1f µs, nats-server %.1f µs',
		$r->{rate}, runs_text($r), $r->{wus_median}, $r->{nus_median})) if $repeat > 1;
}

# The per-step profile of a batch (issue 21): a subscription drains
# $profile_n messages (a quarter of it at batch 1) with
# reliq.profile_batches on; the first batches are left out (the profile
# is read after two and subtracted, so plans and set-up are not counted);
# reliq.batch_profile() gives each step's wall and CPU time (the worker's
# main thread), and /proc the CPU of the whole worker process (the NATS
# client's threads too) over the same batches.
# reliq.batch_profile() of one subscription: batches, messages, and each
# step's wall and CPU time (µs) in all.
sub profile_snapshot
{
	my ($name) = @_;
	my %p = (wall => {}, cpu => {});
	for my $line (split /\n/, sql("SELECT step, batches, messages, wall_us, cpu_us FROM reliq.batch_profile()
	                                WHERE subscription_name = '$name'"))
	{
		my ($step, $b, $m, $w, $c) = split /\|/, $line;
		@p{qw(batches messages)} = ($b, $m);
		$p{wall}{$step} = $w;
		$p{cpu}{$step} = $c;
	}
	return %p;
}

sub profile_row
{
	my ($path, $batch) = @_;
	my $key = "profile/$path/$batch";
	return unless want($key);
	my $n = $batch == 1 ? int($profile_n / 4) : $profile_n;
	$n = $N if $n > $N;
	my $what = sprintf('profile %-7s batch %3d', $path, $batch);
	my $name = 'prof' . ++$runs;
	sql('TRUNCATE bench.events; CHECKPOINT');
	sql('ALTER SYSTEM SET reliq.profile_batches = on');
	sql('SELECT pg_reload_conf()');
	sql("SELECT reliq.create_subscription('$name', stream => 'BENCH', subject => 'bench.events',
	       $how{$path}, batch_size => $batch, concurrency => 1)");
	# leave out the first batches (plans, set-up): from the third on
	my %before;
	my $t0 = time;
	do { sleep 0.01; %before = profile_snapshot($name); }
	  while (($before{batches} // 0) < 3 && time - $t0 < 60);
	# the CPU ticks read just before each snapshot, so both windows shift alike
	my @pids = worker_pids();
	my %w0 = map { $_ => cpu_ticks($_) // 0 } @pids;
	%before = profile_snapshot($name);
	my $done = wait_processed($what, $name, $n);
	my $wticks = 0;
	$wticks += (cpu_ticks($_) // 0) - ($w0{$_} // 0) for @pids;
	my %after = profile_snapshot($name);
	my (%wall, %cpu);
	my $batches = ($after{batches} // 0) - ($before{batches} // 0);
	my $messages = ($after{messages} // 0) - ($before{messages} // 0);
	for my $step (keys %{ $after{wall} // {} })
	{
		$wall{$step} = $after{wall}{$step} - ($before{wall}{$step} // 0);
		$cpu{$step} = $after{cpu}{$step} - ($before{cpu}{$step} // 0);
	}
	sql("SELECT reliq.drop_subscription('$name', drop_consumer => true)");
	sql('ALTER SYSTEM RESET reliq.profile_batches');
	sql('SELECT pg_reload_conf()');
	if (!$batches)
	{
		done_line($what, 'no batch profiled');
		return;
	}
	my $proc_us = $wticks * 1e6 / $hz;
	$result{$key} = { batch => $batch, path => $path, batches => $batches, messages => $messages,
		wall => \%wall, cpu => \%cpu, proc_us => $proc_us };
	my $cpu_sum = 0;
	$cpu_sum += $_ for values %cpu;
	my $wall_sum = 0;
	$wall_sum += $_ for values %wall;
	done_line($what, sprintf('%d batches of %.1f: wall %.0f µs per batch, CPU %.0f µs per batch (main thread), %.0f µs (process, /proc)',
		$batches, $messages / $batches, $wall_sum / $batches, $cpu_sum / $batches, $proc_us / $batches));
}

# The upsert sink beside the insert sink, on the same messages: N
# messages over $upsert_keys keys (subject bench.kv.<id>), drained by a table
# sink in mode 'insert' (into bench.kv_insert) or 'upsert' (bench.kv,
# key id).  The rate runs from the first processed message the
# statistics show to the last (polled every 50 ms): an upsert rewrites
# rows, so the rows' commit timestamps cannot give it.
sub publish_kv
{
	return if $result{kv_published}++;
	my $t0 = time;
	my $left = $N;
	while ($left > 0)
	{
		my $count = $left < $upsert_keys ? $left : $upsert_keys;
		natstool('publish', 'bench.kv.%d', '--count', $count, '--start', 1, '--payload', $payload);
		$left -= $count;
	}
	done_line("publish $N messages over $upsert_keys keys", sprintf('in %.2f s', time - $t0));
}

sub kv_row
{
	my ($mode, $batch, $concurrency) = @_;
	my $key = "kv/$mode/$batch/$concurrency";
	return unless want($key);
	publish_kv();
	# 'ordered': the upsert sink with ordering by its key, taken from the
	# subject (bench.kv.<id>): the cost of keeping each key's order when
	# nothing fails
	my $upsert = $mode eq 'upsert' || $mode eq 'ordered';
	my $table = $upsert ? 'bench.kv' : 'bench.kv_insert';
	my $what = sprintf('reliq %s sink, %d keys, batch %d, concurrency %d', $mode, $upsert_keys, $batch, $concurrency);
	for my $run (1 .. $repeat)
	{
		my $name = 'kv' . ++$runs;
		sql("TRUNCATE $table; CHECKPOINT");
		my %w0 = map { $_ => cpu_ticks($_) // 0 } worker_pids();
		sql("SELECT reliq.create_subscription('$name', stream => 'BENCH', subject => 'bench.kv.>',
		       target => '$table'::regclass" . ($upsert ? ", mode => 'upsert', key => ARRAY['id']" : '')
			. ($mode eq 'ordered' ? ", ordering => 'key', columns => '{\"id\": \"\$subject[3]\"}'" : '')
			. ", batch_size => $batch, concurrency => $concurrency)");
		my ($t_first, $p_first, $t_last, $done) = (undef, 0, undef, 0);
		my $moved = time;
		while (1)
		{
			my $now = sql("SELECT processed FROM reliq.subscription_stats WHERE subscription_name = '$name'") || 0;
			my $t = time;
			($t_first, $p_first) = ($t, $now) if !defined $t_first && $now > 0;
			$moved = $t if $now != $done;
			$done = $now;
			progress("$what, run $run", $done, $N);
			if ($done >= $N) { $t_last = $t; last; }
			last if $t - $moved > 300;
			sleep 0.05;
		}
		my $wticks = 0;
		$wticks += (cpu_ticks($_) // 0) - ($w0{$_} // 0) for worker_pids();
		sql("SELECT reliq.drop_subscription('$name', drop_consumer => true)");
		my $rate = $t_last && $t_last > $t_first ? ($N - $p_first) / ($t_last - $t_first) : 0;
		my ($rows, $keys) = split /\|/, sql("SELECT count(*), count(DISTINCT id) FROM $table");
		my $want_rows = $upsert ? $upsert_keys : $N;
		if ($rows != $want_rows || $keys != $upsert_keys)
		{
			push @errors, "$what, run $run: $rows rows, $keys keys (want $want_rows rows, $upsert_keys keys)";
			print "    ERROR: $what, run $run: $rows rows, $keys keys\n";
		}
		my $wus = $done ? $wticks * 1e6 / $hz / $done : 0;
		keep_run($key, rate => $rate, batch => $batch, conc => $concurrency, mode => $mode);
		push @{ $result{$key}{wus} }, $wus;
		done_line("$what, run $run", sprintf('%8.0f msgs/s, CPU per msg: workers %.1f µs', $rate, $wus));
	}
	$result{$key}{wus_median} = median(@{ $result{$key}{wus} });
}

# The stall of issue 13: a drain through the per-message handler (batch
# 500 x 2, fresh consumer) right after another subscription of the same
# stream was paused, $stall_tries times; and a drain across a restart of
# nats-server.  A gap over one second between two commits fails the bench
# (for the restart: after the first commit that follows it).
sub stall_pause_row
{
	my $key = 'stall/pause';
	return unless want($key);
	my $what = 'stall: drain after a pause';
	sql('CREATE TABLE IF NOT EXISTS bench.side (LIKE bench.events)');
	my @secs;
	for my $try (1 .. $stall_tries)
	{
		my $a = 'pausea' . ++$runs;
		my $b = 'pauseb' . $runs;
		sql('TRUNCATE bench.events, bench.side; CHECKPOINT');
		# odd tries pause it while it drains the backlog, even ones while
		# it idles (its lanes on their long idle pulls)
		my $busy = $try % 2;
		sql("SELECT reliq.create_subscription('$a', stream => 'BENCH',
		       subject => '" . ($busy ? 'bench.events' : 'bench.quiet') . "',
		       target => 'bench.side'::regclass, batch_size => 500, concurrency => 2)");
		if ($busy) { wait_processed("$what, try $try: the first", $a, $N / 5); }
		else { sleep 4; }
		sql("SELECT reliq.alter_subscription('$a', enabled => false)");
		my $t0 = time;
		sql("SELECT reliq.create_subscription('$b', stream => 'BENCH', subject => 'bench.events',
		       $how{handler}, batch_size => 500, concurrency => 2)");
		my $done = wait_processed("$what, try $try", $b, $N, 120);
		my $p = commit_profile('bench.events', $t0);
		sql("SELECT reliq.drop_subscription('$_', drop_consumer => true)") for $a, $b;
		check_rows("$what, try $try", 'bench.events', $N) if $done >= $N;
		push @errors, "$what, try $try: stalled at $done of $N" if $done < $N;
		report_gaps("$what, try $try", $p);
		push @errors, "$what, try $try: " . scalar(@{ $p->{gaps} }) . " gap(s) over 1 s" if @{ $p->{gaps} };
		my $secs = ($p->{last} // time) - $t0;
		push @secs, $secs;
		done_line("$what, try $try", sprintf('%s: %d msgs in %.2f s (%.0f msgs/s between commits)%s',
			$busy ? 'the other paused while draining' : 'the other paused while idle', $done, $secs,
			$p->{rate}, @{ $p->{gaps} } ? ', ' . scalar(@{ $p->{gaps} }) . ' GAP(S) over 1 s' : ''));
	}
	$result{$key} = { secs => \@secs };
}

sub restart_nats
{
	my ($port) = $nats_url =~ /:(\d+)$/;
	stop_pid($site{nats_pid});
	$site{nats_pid} = undef;
	$site{nats_pid} = ReliqTest::Local::start_nats($dir, $port);
}

sub stall_restart_row
{
	my $key = 'stall/restart';
	return unless want($key);
	my $what = 'stall: drain across a nats-server restart';
	my @secs;
	for my $try (1 .. $stall_tries)
	{
		my $b = 'restart' . ++$runs;
		sql('TRUNCATE bench.events; CHECKPOINT');
		my $t0 = time;
		sql("SELECT reliq.create_subscription('$b', stream => 'BENCH', subject => 'bench.events',
		       $how{handler}, batch_size => 500, concurrency => 2)");
		# odd tries restart it a third of the way, even ones at the first commit
		wait_processed("$what, try $try: before", $b, $try % 2 ? $N / 3 : 1);
		my $t_restart = time;
		restart_nats();
		my $t_up = time;
		my $done = wait_processed("$what, try $try", $b, $N, 120);
		my ($resumed) = sql("SELECT extract(epoch FROM min(pg_xact_commit_timestamp(xmin))) FROM bench.events
		  WHERE pg_xact_commit_timestamp(xmin) > to_timestamp($t_up)");
		my $p = commit_profile('bench.events', $t0);
		my ($redelivered) = sql("SELECT format('%s retried, %s duplicates, %s slow-path batches', retried, duplicates, slow_path_batches) FROM reliq.subscription_stats WHERE subscription_name = '$b'");
		sql("SELECT reliq.drop_subscription('$b', drop_consumer => true)");
		check_rows("$what, try $try", 'bench.events', $N) if $done >= $N;
		push @errors, "$what, try $try: stalled at $done of $N" if $done < $N;
		# the gap that spans the restart itself is expected; any later one is not
		my @late = grep { my ($from) = /from ([\d.]+) s into/; $from + $t0 >= ($resumed || $t_up) - 0.001 } @{ $p->{gaps} };
		report_gaps("$what, try $try", { gaps => \@late });
		push @errors, "$what, try $try: " . scalar(@late) . " gap(s) over 1 s after the restart" if @late;
		push @secs, ($p->{last} // time) - $t0;
		done_line("$what, try $try", sprintf('%d msgs in %.2f s; restart took %.2f s, first commit %.2f s after it was up; %s%s',
			$done, $secs[-1], $t_up - $t_restart, ($resumed || $t_up) - $t_up, $redelivered // '?',
			@late ? ', ' . scalar(@late) . ' GAP(S) over 1 s after it' : ''));
	}
	$result{$key} = { secs => \@secs };
}

# CPU seconds (user + system) a process has used, from /proc; 0 if gone.
sub cpu_seconds
{
	my ($pid) = @_;
	open(my $fh, '<', "/proc/$pid/stat") or return 0;
	my $stat = <$fh>;
	close $fh;
	$stat =~ s/^.*\) //;    # after the command name, which may hold blanks
	my @f = split ' ', $stat;
	return ($f[11] + $f[12]) / 100;    # utime, stime (fields 14, 15) in ticks
}

# The trace exporter's PID: the postmaster's child of that title.
sub exporter_pid
{
	open(my $fh, '<', "$site{pgdata}/postmaster.pid") or return undef;
	my $postmaster = <$fh> + 0;
	close $fh;
	foreach my $stat (glob '/proc/[0-9]*/stat')
	{
		my ($pid) = $stat =~ m{/proc/(\d+)/};
		open(my $s, '<', $stat) or next;
		my $line = <$s> // '';
		close $s;
		next unless $line =~ /\) \S+ (\d+) / && $1 == $postmaster;
		open(my $c, '<', "/proc/$pid/cmdline") or next;
		my $cmd = <$c> // '';
		close $c;
		return $pid if $cmd =~ /reliq trace exporter/;
	}
	return undef;
}

# Tracing off and on (rate 1.0), in turns, $repeat times each: the
# per-message handler drains the backlog; the spans go to a receiver that
# answers 200 without decoding them (ReliqTest::Otlp, mode discard).
sub tracing_row
{
	my ($batch, $concurrency) = @_;
	return unless want('tracing');
	my $otlp = ReliqTest::Otlp->new(mode => 'discard', file => "$dir/spans.jsonl",
		free_port => \&free_port);
	$otlp->start;
	for my $run (1 .. $repeat)
	{
		# off first in odd runs, on first in even ones: no order favoured
		for my $on ($run % 2 ? (0, 1) : (1, 0))
		{
			my $what = sprintf('reliq handler batch %3d, concurrency %d, tracing %s', $batch,
				$concurrency, $on ? 'on (rate 1.0)' : 'off');
			sql("ALTER SYSTEM SET reliq.otlp_endpoint = '" . ($on ? $otlp->url : '') . "'");
			sql("ALTER SYSTEM SET reliq.trace_sample_rate = 1.0");
			sql('SELECT pg_reload_conf()');
			sleep 1;
			my $name = 'run' . ++$runs;
			sql('TRUNCATE bench.events; CHECKPOINT');
			my $before = sql('SELECT spans_recorded FROM reliq.trace_stats()');
			my $exporter = exporter_pid();
			my $exporter_cpu = $exporter ? cpu_seconds($exporter) : 0;
			my %worker_cpu = map { $_ => cpu_seconds($_) } worker_pids();
			my $t0 = time;
			sql("SELECT reliq.create_subscription('$name', stream => 'BENCH', subject => 'bench.events',
			       $how{handler}, batch_size => $batch, concurrency => $concurrency)");
			my $done = wait_processed("$what, run $run", $name, $N);
			my $p = commit_profile('bench.events', $t0);
			# the workers' CPU over the run (pool workers outlive it)
			my $worker_cpu = 0;
			$worker_cpu += cpu_seconds($_) - ($worker_cpu{$_} // 0) for worker_pids();
			sleep 1.5;    # the exporter's last round
			$exporter_cpu = $exporter ? cpu_seconds($exporter) - $exporter_cpu : 0;
			sql("SELECT reliq.drop_subscription('$name', drop_consumer => true)");
			check_rows("$what, run $run", 'bench.events', $N) if $done >= $N;
			report_gaps("$what, run $run", $p);
			my $spans = sql('SELECT spans_recorded FROM reliq.trace_stats()') - $before;
			keep_run("tracing/$on", rate => ($done >= $N ? $p->{rate} : 0));
			push @{ $result{"tracing/$on"}{worker_us} }, 1e6 * $worker_cpu / $N;
			push @{ $result{"tracing/$on"}{exporter_us} }, 1e6 * $exporter_cpu / $N;
			done_line("$what, run $run", sprintf('%8.0f msgs/s, %d spans; CPU per message: workers %.1f µs, exporter %.1f µs',
				$p->{rate}, $spans, 1e6 * $worker_cpu / $N, 1e6 * $exporter_cpu / $N));
		}
	}
	sql("ALTER SYSTEM RESET reliq.otlp_endpoint");
	sql("ALTER SYSTEM RESET reliq.trace_sample_rate");
	sql('SELECT pg_reload_conf()');
	$otlp->stop;
	my ($off, $on) = map { $result{"tracing/$_"}{rate} } 0, 1;
	my $stats = sql("SELECT spans_exported || ' exported, ' || spans_dropped_buffer_full || ' dropped (ring full), '
	                        || spans_dropped_export_failed || ' dropped (export failed)' FROM reliq.trace_stats()");
	my ($w_off, $w_on) = map { median(@{ $result{"tracing/$_"}{worker_us} }) } 0, 1;
	my $e_on = median(@{ $result{"tracing/1"}{exporter_us} });
	$result{tracing} = { off => $off, on => $on, ratio => $off ? $on / $off : 0, batch => $batch,
		conc => $concurrency, stats => $stats, w_off => $w_off, w_on => $w_on, e_on => $e_on };
	done_line('tracing on / off', sprintf('%.0f / %.0f msgs/s = %.2f; spans: %s', $on, $off,
		$result{tracing}{ratio}, $stats));
	done_line('tracing CPU per message (medians)', sprintf('workers %.1f µs off, %.1f µs on; exporter %.1f µs on',
		$w_off, $w_on, $e_on));
}

# The Node.js consumers: the seed-style baseline and the strong peer.
sub node_process
{
	my ($what, $script, $name, $n, @args) = @_;
	sql('TRUNCATE bench.events; TRUNCATE bench.peer_ledger; CHECKPOINT');
	my $out = "$dir/node-$name.out";
	my $t0 = time;
	my $pid = spawn($out, 'node', "$node_dir/$script", '--nats', $nats_url,
		'--pg', "postgresql://postgres\@127.0.0.1:$pg_port/bench",
		'--stream', 'BENCH', '--consumer', $name, '--subject', 'bench.events',
		'--count', $n, '--table', 'bench.events', @args);
	my $inserted = "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relid = 'bench.events'::regclass";
	my $before = sql($inserted);
	while (waitpid($pid, WNOHANG) != $pid)
	{
		progress($what, sql($inserted) - $before, $n);
		sleep 1;
	}
	my $status = $?;
	@children = grep { $_ != $pid } @children;
	die "\nthe Node consumer ($script) failed:\n" . `cat $out.err` if $status != 0;
	my $json = `cat $out`;
	$json =~ /"msgs_per_second":\s*([\d.]+)/ or die "node output: $json";
	my $r = $1;
	my $p = commit_profile('bench.events', $t0);
	check_rows($what, 'bench.events', $n);
	report_gaps($what, $p);
	js_api("CONSUMER.DELETE.BENCH.$name", '');
	return ($r, $p);
}

sub node_run
{
	my ($fetch, $inserts) = @_;
	return unless want("node/$fetch/$inserts");
	my $what = sprintf('node seed: fetch %3d, %2d insert%s at a time', $fetch, $inserts,
		$inserts > 1 ? 's' : '');
	my $name = fresh_consumer($fetch);
	my ($r) = node_process($what, 'consumer.js', $name, $node_n, '--fetch', $fetch,
		'--concurrency', $inserts);
	keep_run("node/$fetch/$inserts", rate => $r, fetch => $fetch, inserts => $inserts);
	done_line($what, sprintf('%8.0f msgs/s (%d messages)', $r, $node_n));
}

sub peer_row
{
	return unless want('peer');
	my $what = 'node strong peer: 2 loops, fetch 500';
	for my $run (1 .. $repeat)
	{
		my $name = fresh_consumer(1000);
		my ($r, $p) = node_process("$what, run $run", 'peer.js', $name, $N, '--fetch', 500,
			'--loops', 2, '--ledger', 'bench.peer_ledger');
		keep_run('peer', rate => $r);
		done_line("$what, run $run", sprintf('%8.0f msgs/s%s', $r,
			@{ $p->{gaps} } ? ', ' . scalar(@{ $p->{gaps} }) . ' GAP(S) over 1 s' : ''));
	}
	done_line($what, sprintf('%8.0f msgs/s median (%s)', $result{peer}{rate}, runs_text($result{peer})))
	  if $repeat > 1;
}

# While publishing: reliq consumes a stream that is being written.
sub streaming_row
{
	my ($batch, $concurrency) = @_;
	return unless want('streaming');
	my $what = sprintf('streaming: sink, batch %d, concurrency %d', $batch, $concurrency);
	for my $run (1 .. $repeat)
	{
		js_stream('LIVE', 'live.>');
		sql('TRUNCATE bench.events; CHECKPOINT');
		sql("SELECT reliq.create_subscription('live', stream => 'LIVE', subject => 'live.events',
		       target => 'bench.events'::regclass, batch_size => $batch, concurrency => $concurrency)");
		wait_pulling('LIVE', 'reliq_live', $concurrency);
		my $t0 = time;
		my $pid = spawn("$dir/publish-live.out", $natstool, '--url', $nats_url, 'publish', 'live.events',
			'--count', $N, '--start', 1, '--payload', $payload);
		my $done = wait_processed("$what, run $run", 'live', $N);
		my $p = commit_profile('bench.events', $t0);
		my $secs = ($p->{last} // time) - $t0;
		die "\npublisher failed\n" if reap($pid) != 0;
		sql("SELECT reliq.drop_subscription('live', drop_consumer => true)");
		js_delete_stream('LIVE');
		check_rows("$what, run $run", 'bench.events', $N) if $done >= $N;
		report_gaps("$what, run $run", $p);
		keep_run('streaming', rate => ($done >= $N ? $N / $secs : 0), batch => $batch, conc => $concurrency);
		done_line("$what, run $run", sprintf('%8.0f msgs/s, first publish to last commit', $N / $secs));
	}
	done_line($what, sprintf('%8.0f msgs/s median (%s)', $result{streaming}{rate}, runs_text($result{streaming})))
	  if $repeat > 1;
}

# Latency at a fixed offered rate: publish -> commit of each message.
sub latency_run
{
	my ($rate) = @_;
	return unless want("latency/$rate");
	my $count = $rate * $lat_secs;
	my $what = "latency at $rate msg/s offered, handler";
	js_stream('LAT', 'lat.>');
	sql('TRUNCATE bench.latency');
	sql("SELECT reliq.create_subscription('lat', stream => 'LAT', subject => 'lat.x',
	       handler => 'bench.record_latency(reliq.message)'::regprocedure)");
	wait_pulling('LAT', 'reliq_lat', 1);
	my $t0 = time;
	my $pid = spawn("$dir/publish-lat.out", $natstool, '--url', $nats_url, 'publish', 'lat.x',
		'--count', $count, '--rate', $rate, '--payload', $payload);
	my $published_in;
	my $done = 0;
	my $moved = time;
	while (1)
	{
		if (!defined $published_in && waitpid($pid, WNOHANG) == $pid)
		{
			$published_in = time - $t0;
			@children = grep { $_ != $pid } @children;
			die "\n$what: publisher failed\n" if $? != 0;
		}
		my $now = sql("SELECT processed FROM reliq.subscription_stats WHERE subscription_name = 'lat'") || 0;
		$moved = time if $now != $done;
		$done = $now;
		progress($what, $done, $count);
		last if $done >= $count && defined $published_in;
		if (time - $moved > 300)
		{
			done_line($what, "STALLED: $done of $count");
			last;
		}
		sleep 0.2;
	}
	if (!defined $published_in)
	{
		reap($pid);
		$published_in = time - $t0;
	}
	my ($p50, $p99, $max, $n, $stored) = split /\|/, sql(
		"SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY ms), percentile_disc(0.99) WITHIN GROUP (ORDER BY ms), max(ms), count(*),
		        (count(*) - 1) / nullif(extract(epoch FROM max(published_at) - min(published_at)), 0)
		   FROM (SELECT published_at, extract(epoch FROM pg_xact_commit_timestamp(xmin) - published_at) * 1000 AS ms
		           FROM bench.latency) l");
	my ($rp50, $rp99, $avg) = split /\|/, sql(
		"SELECT extract(epoch FROM latency_p50) * 1000, extract(epoch FROM latency_p99) * 1000,
		        round(processed::numeric / greatest(batches, 1), 1)
		   FROM reliq.subscription_stats WHERE subscription_name = 'lat'");
	my $p = commit_profile('bench.latency', $t0);
	sql("SELECT reliq.drop_subscription('lat', drop_consumer => true)");
	js_delete_stream('LAT');
	report_gaps($what, $p);
	$result{"latency/$rate"} = { p50 => $p50, p99 => $p99, max => $max, count => $n,
		offered => $stored || 0, rate => $rate, avg => $avg };
	done_line($what, sprintf('p50 %.2f ms, p99 %.2f ms, max %.1f ms (%d msgs, stored at %.0f msg/s, %s per batch; reliq\'s own p50 %.2f, p99 %.2f ms)',
		$p50 // 0, $p99 // 0, $max // 0, $n, $stored || 0, $avg // '-', $rp50 || 0, $rp99 || 0));
}

# Memory over a long run: the sink at batch 500 while 1M messages are published.
sub memory_run
{
	return unless $memory_n && want('memory');
	my $what = "memory over $memory_n messages";
	js_stream('MEM', 'mem.>');
	sql('TRUNCATE bench.events; CHECKPOINT');
	sql("SELECT reliq.create_subscription('mem', stream => 'MEM', subject => 'mem.x',
	       target => 'bench.events'::regclass, batch_size => 500)");
	wait_pulling('MEM', 'reliq_mem', 1);
	my $t0 = time;
	my $pid = spawn("$dir/publish-mem.out", $natstool, '--url', $nats_url, 'publish', 'mem.x',
		'--count', $memory_n, '--start', 1, '--payload', $payload);
	my @samples;
	my $step = $memory_n / 10;
	my $next = $step;
	my $done = 0;
	my $moved = time;
	while (time - $moved < 300)
	{
		my $processed = sql("SELECT processed FROM reliq.subscription_stats WHERE subscription_name = 'mem'") || 0;
		$moved = time if $processed != $done;
		$done = $processed;
		progress($what, $processed, $memory_n);
		if ($processed >= $next || $processed >= $memory_n)
		{
			push @samples, sprintf('%.1f', worker_memory('mem') // 0);
			$next += $step while $next <= $processed;
		}
		last if $processed >= $memory_n;
		sleep 0.2;
	}
	reap($pid);
	my $p = commit_profile('bench.events', $t0);
	sql("SELECT reliq.drop_subscription('mem', drop_consumer => true)");
	js_delete_stream('MEM');
	check_rows($what, 'bench.events', $memory_n) if $done >= $memory_n;
	report_gaps($what, $p);
	$result{memory} = \@samples;
	done_line($what, "worker MB every " . ($step / 1000) . "k: @samples"
		  . ($done < $memory_n ? " (STALLED at $done)" : ''));
}

############################################################################
# pool: many subscriptions on the default 4 workers
############################################################################

# Publish $count messages spread over $subjects subjects (message k, from
# 0, to subject sprintf($subject_fmt, k % $subjects + 1)) through JetStream,
# speaking the NATS protocol directly: up to 256 publishes in flight, each
# acknowledged by JetStream (PubAck).  $payload_of->($k, $s) makes the
# payload; $rate (msg/s, 0 = as fast as possible) spaces them.  Returns the
# seconds it took.
sub publish_spread
{
	my (%o) = @_;
	my ($host, $port) = $nats_url =~ m{//([^:/]+):(\d+)} or die "nats url $nats_url";
	my $sock = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Proto => 'tcp')
	  or die "connect to nats-server: $!";
	binmode $sock;
	my $in = '';
	my ($acked, $sent) = (0, 0);
	my $inbox = "_INBOX.benchpub$$";
	my $send = sub {
		my ($data) = @_;
		while (length $data)
		{
			my $n = syswrite($sock, $data);
			die "write to nats-server: $!" unless defined $n;
			substr($data, 0, $n, '');
		}
	};
	my $pongs = 0;
	my $read = sub {
		my ($timeout) = @_;
		my $rin = '';
		vec($rin, fileno($sock), 1) = 1;
		if (select(my $rout = $rin, undef, undef, $timeout) > 0)
		{
			my $n = sysread($sock, $in, 1 << 16, length $in);
			die "nats-server closed the connection\n" unless $n;
		}
		while (1)
		{
			if ($in =~ /\AMSG \S+ \S+ +(?:\S+ +)?(\d+)\r\n/)
			{
				my ($len, $head) = ($1, length $&);
				last if length($in) < $head + $len + 2;
				my $body = substr($in, $head, $len);
				substr($in, 0, $head + $len + 2, '');
				die "JetStream refused a publish: $body\n" if $body =~ /"error"/;
				$acked++;
			}
			elsif ($in =~ s/\APING\r\n//) { $send->("PONG\r\n"); }
			elsif ($in =~ s/\APONG\r\n//) { $pongs++; }
			elsif ($in =~ s/\A(?:INFO [^\r\n]*|\+OK)\r\n//) { }
			elsif ($in =~ /\A-ERR ([^\r\n]*)\r\n/) { die "nats-server: -ERR $1\n"; }
			else { last; }
		}
	};
	$send->(qq(CONNECT {"verbose":false,"pedantic":false,"protocol":1,"name":"bench"}\r\n)
		  . "SUB $inbox.* 1\r\nPING\r\n");
	my $deadline = time + 10;
	$read->(0.1) while !$pongs && time < $deadline;
	die "no PONG from nats-server\n" unless $pongs;

	my $t0 = time;
	my $last_ack = time;
	while ($acked < $o{count})
	{
		my $out = '';
		my $now = time;
		while ($sent < $o{count} && $sent - $acked < 256
			&& (!$o{rate} || $t0 + $sent / $o{rate} <= $now))
		{
			my $subject = sprintf($o{subject}, $sent % $o{subjects} + 1);
			my $data = $o{payload_of}->($sent, $sent % $o{subjects} + 1);
			$out .= "PUB $subject $inbox.$sent " . length($data) . "\r\n$data\r\n";
			$sent++;
		}
		$send->($out) if length $out;
		my $wait = 0.05;
		if ($o{rate} && $sent < $o{count} && $sent - $acked < 256)
		{
			$wait = $t0 + $sent / $o{rate} - time;
			$wait = 0 if $wait < 0;
		}
		my $before = $acked;
		$read->($wait);
		$last_ack = time if $acked != $before;
		die "no PubAck from JetStream for 10 s ($acked of $o{count})\n" if time - $last_ack > 10;
		progress($o{what}, $acked, $o{count}) if $o{what};
	}
	close $sock;
	return time - $t0;
}

# Create $n subscriptions named "${prefix}1".."${prefix}$n" in one
# statement, subscription i on subject sprintf($subject_fmt, i); returns
# (1, seconds) or (0, the error).
sub create_many
{
	my ($n, $prefix, $stream, $subject_fmt, $how, $extra) = @_;
	my $subject = $subject_fmt =~ s/%d/' || i || '/r;
	my $t0 = time;
	my ($ok, $err) = sql_try("SET client_min_messages = error;
		SELECT count(reliq.create_subscription('$prefix' || i, stream => '$stream', subject => '$subject',
		       $how $extra)) FROM generate_series(1, $n) i");
	return ($ok, $ok ? time - $t0 : $err);
}

sub drop_many
{
	my ($prefix) = @_;
	sql("SET client_min_messages = error;
		SELECT count(reliq.drop_subscription(subscription_name)) FROM reliq.subscription
		 WHERE subscription_name LIKE '$prefix%'");
	# the workers of dropped subscriptions go within a second or so
	my $t0 = time;
	sleep 0.2 while time - $t0 < 30
	  && sql("SELECT count(*) FROM reliq.worker_status WHERE subscription_name LIKE '$prefix%'") > 0;
}

# How the subscriptions named $prefix* stand: "running 4, stopped 996".
sub states
{
	my ($prefix) = @_;
	return join(', ', map { join ' ', split /\|/ } split /\n/, sql(
		"SELECT state, count(*) FROM reliq.subscription_stats WHERE subscription_name LIKE '$prefix%'
		  GROUP BY state ORDER BY count(*) DESC"));
}

# 1,000 subscriptions, 100 messages each, published before they exist: the
# time from their creation until every message is committed.
sub pool_drain
{
	return unless want('pool/drain');
	my ($S, $M) = ($pool{subs}, $pool{msgs});
	my $what = "pool: $S subscriptions x $M messages";
	js_stream('POOL', 'pool.>');
	sql('TRUNCATE bench.pool_events; CHECKPOINT');
	my $pub = publish_spread(what => "$what: publish", subject => 'pool.%d', subjects => $S,
		count => $S * $M,
		payload_of => sub { sprintf('{"sub":%d,"id":%d,"kind":"order","amount":42,"note":"bench"}', $_[1], $_[0] + 1) });
	done_line("$what: publish", sprintf('%d msgs in %.2f s', $S * $M, $pub));
	my $t0 = time;
	my ($ok, $created) = create_many($S, 'pool', 'POOL', 'pool.%d', "target => 'bench.pool_events'::regclass", '');
	if (!$ok)
	{
		$result{'pool/drain'} = { error => $created };
		done_line($what, "could not create the subscriptions: $created");
		js_delete_stream('POOL');
		return;
	}
	my $t_created = time;
	done_line("$what: create", sprintf('%.2f s', $t_created - $t0));
	# Wait until every message has its row, or nothing moves.  The table's
	# count is cheaper than the statistics of 1,000 subscriptions.
	my ($total, $moved) = (0, time);
	my $timed_out = 0;
	while (1)
	{
		my $n = sql('SELECT count(*) FROM bench.pool_events');
		$moved = time if $n != $total;
		$total = $n;
		progress($what, $n, $S * $M);
		last if $n >= $S * $M
		  && sql("SELECT count(DISTINCT id) FROM bench.pool_events WHERE id BETWEEN 1 AND $S * $M") == $S * $M;
		if (time - $moved > $pool{stall})
		{
			$timed_out = 1;
			last;
		}
		sleep 0.5;
	}
	my $p = commit_profile('bench.pool_events', $t_created);
	my ($rows, $distinct, $in_range, $full, $partial, $any, $slowest) = split /\|/, sql(
		"SELECT count(*), count(DISTINCT id), count(DISTINCT id) FILTER (WHERE id BETWEEN 1 AND $S * $M),
		        (SELECT count(*) FROM (SELECT sub FROM bench.pool_events GROUP BY sub HAVING count(DISTINCT id) = $M) f),
		        (SELECT count(*) FROM (SELECT sub FROM bench.pool_events GROUP BY sub HAVING count(DISTINCT id) < $M) f),
		        count(DISTINCT sub),
		        (SELECT extract(epoch FROM max(t)) FROM (SELECT min(pg_xact_commit_timestamp(xmin)) AS t
		                                                   FROM bench.pool_events GROUP BY sub) f)
		   FROM bench.pool_events");
	my $processed = sql("SELECT coalesce(sum(processed), 0) FROM reliq.subscription_stats WHERE subscription_name LIKE 'pool%'");
	my $states = states('pool');
	drop_many('pool');
	js_delete_stream('POOL');
	my $dups = $rows - $distinct;
	# lost: committed as processed by reliq (and so acked) but not in the table
	my $lost = $processed > $in_range ? $processed - $in_range : 0;
	push @errors, "$what: $dups duplicated" if $dups;
	push @errors, "$what: $lost lost" if $lost;
	report_gaps($what, $p);
	my $drain = $p->{last} ? $p->{last} - $t_created : undef;
	$result{'pool/drain'} = {
		subs => $S, msgs => $M, full => $full, partial => $partial, not_served => $S - $any,
		dups => $dups, lost => $lost, missing => $S * $M - $in_range, drain => $drain,
		slowest_start => $slowest ? $slowest - $t_created : undef, created => $t_created - $t0,
		complete => !$timed_out, states => $states, stall => $pool{stall},
	};
	my $r = $result{'pool/drain'};
	done_line($what, $timed_out
		? sprintf('not served: %d subscriptions (%d partly, %d fully served; nothing moved for %d s); %d duplicated, %d lost; states: %s',
			$r->{not_served}, $partial, $full, $pool{stall}, $dups, $lost, $states)
		: sprintf('drained in %.2f s (last subscription started %.2f s after creation), %d/%d served, %d duplicated, %d lost',
			$drain, $r->{slowest_start}, $full, $S, $dups, $lost));
}

# A trickle spread over 200 subscriptions: publish -> commit.
sub pool_trickle
{
	return unless want('pool/trickle');
	my ($S, $rate, $secs) = ($pool{trickle_subs}, $pool{trickle_rate}, $pool{trickle_secs});
	my $count = $rate * $secs;
	my $what = "pool: trickle over $S subscriptions";
	js_stream('TRICKLE', 'trickle.>');
	sql('TRUNCATE bench.pool_latency');
	my ($ok, $created) = create_many($S, 'trickle', 'TRICKLE', 'trickle.%d',
		"handler => 'bench.record_pool_latency(reliq.message)'::regprocedure", ", start => 'new'");
	if (!$ok)
	{
		$result{'pool/trickle'} = { error => $created };
		done_line($what, "could not create the subscriptions: $created");
		js_delete_stream('TRICKLE');
		return;
	}
	sleep 5;    # let the workers attach
	my $t0 = time;
	my $pub = publish_spread(what => "$what: $rate msg/s", subject => 'trickle.%d', subjects => $S,
		count => $count, rate => $rate, payload_of => sub { sprintf($payload, $_[0] + 1) });
	my ($done, $moved) = (0, time);
	while (1)
	{
		my $n = sql('SELECT count(*) FROM bench.pool_latency');
		$moved = time if $n != $done;
		$done = $n;
		progress("$what: committed", $done, $count);
		last if $done >= $count || time - $moved > $pool{stall};
		sleep 0.5;
	}
	my ($p50, $p99, $max, $n, $subs, $dups) = split /\|/, sql(
		"SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY ms), percentile_disc(0.99) WITHIN GROUP (ORDER BY ms),
		        max(ms), count(*), count(DISTINCT subscription), count(*) - count(DISTINCT stream_seq)
		   FROM (SELECT subscription, stream_seq, extract(epoch FROM pg_xact_commit_timestamp(xmin) - published_at) * 1000 AS ms
		           FROM bench.pool_latency) l");
	push @errors, "$what: $dups duplicated" if $dups;
	my $p = commit_profile('bench.pool_latency', $t0);
	my $states = states('trickle');
	drop_many('trickle');
	js_delete_stream('TRICKLE');
	report_gaps($what, $p);
	$result{'pool/trickle'} = { subs => $S, rate => $rate, count => $count, committed => $n,
		p50 => $p50, p99 => $p99, max => $max, not_served => $S - ($subs || 0),
		offered => $count / $pub, states => $states };
	done_line($what, sprintf('p50 %.2f ms, p99 %.2f ms, max %.1f ms (%d of %d msgs committed at %.0f msg/s offered)%s',
		$p50 || 0, $p99 || 0, $max || 0, $n, $count, $count / $pub,
		$S - ($subs || 0) ? sprintf('; not served: %d subscriptions; states: %s', $S - ($subs || 0), $states) : ''));
}

# CPU ticks (user + system) of a process, or undef once it is gone.
sub cpu_ticks
{
	my ($pid) = @_;
	open my $fh, '<', "/proc/$pid/stat" or return undef;
	my $stat = <$fh>;
	$stat =~ s/^.*\)\s+//s;    # the command name may hold spaces
	my @f = split ' ', $stat;
	return $f[11] + $f[12];    # utime and stime, fields 14 and 15
}

sub line_count
{
	my ($file) = @_;
	open my $fh, '<', $file or return 0;
	my $n = 0;
	$n++ while <$fh>;
	return $n;
}

# 1,000 idle subscriptions: what reliq's processes and nats-server spend,
# and what they log, while nothing is published.
sub pool_idle
{
	return unless want('pool/idle');
	my ($S, $secs) = ($pool{idle_subs}, $pool{idle_secs});
	my $what = "pool: $S idle subscriptions";
	js_stream('IDLE', 'idle.>');
	my ($ok, $created) = create_many($S, 'idle', 'IDLE', 'idle.%d',
		"target => 'bench.pool_events'::regclass", ", start => 'new'");
	if (!$ok)
	{
		$result{'pool/idle'} = { error => $created };
		done_line($what, "could not create the subscriptions: $created");
		js_delete_stream('IDLE');
		return;
	}
	done_line("$what: create", sprintf('%.2f s', $created));
	my $pg_log = "$dir/postgresql.log";
	my $nats_log = "$dir/nats-server.log";
	# Let the workers attach and the launcher and monitor settle: at least
	# 10 s, then until PostgreSQL has logged nothing for 5 s (at most 60 s).
	my $t_settle = time;
	my ($lines, $quiet_since) = (line_count($pg_log), time);
	while (time - $t_settle < 60)
	{
		my $now = line_count($pg_log);
		($lines, $quiet_since) = ($now, time) if $now != $lines;
		last if time - $t_settle >= 10 && time - $quiet_since >= 5;
		progress("$what: settling", int(time - $t_settle), 60);
		sleep 1;
	}
	my $settled = time - $t_settle;
	done_line("$what: settle", sprintf('%.0f s%s', $settled, time - $quiet_since < 5 ? ' (the log did not go quiet)' : ''));
	my $hz = POSIX::sysconf(POSIX::_SC_CLK_TCK()) || 100;
	my $procs = sub {
		my %p = map { split /\|/ } split /\n/,
		  sql("SELECT pid, backend_type FROM pg_stat_activity WHERE backend_type LIKE 'reliq%'");
		$p{ $site{nats_pid} } = 'nats-server';
		return \%p;
	};
	my ($pg_lines0, $nats_lines0) = (line_count($pg_log), line_count($nats_log));
	my $before = $procs->();
	my %t0 = map { $_ => cpu_ticks($_) } keys %$before;
	my $t0 = time;
	while (time - $t0 < $secs)
	{
		progress("$what: measuring", int(time - $t0), $secs);
		sleep 1;
	}
	my $after = $procs->();
	my %t1 = map { $_ => cpu_ticks($_) } keys %$after;
	my $elapsed = time - $t0;
	my ($pg_lines, $nats_lines) = (line_count($pg_log) - $pg_lines0, line_count($nats_log) - $nats_lines0);
	my %type = (%$before, %$after);
	my %pct;
	for my $pid (keys %type)
	{
		next unless defined $t1{$pid};    # gone: its last ticks are lost
		my $ticks = $t1{$pid} - ($t0{$pid} // 0);
		my $kind = $type{$pid} eq 'reliq worker' ? 'workers' : $type{$pid} eq 'nats-server' ? 'nats' : 'other';
		$pct{$kind} += 100 * $ticks / $hz / $elapsed;
	}
	# what was logged, most frequent first, numbers and names made N
	my %freq;
	for ($pg_lines ? split /\n/, `tail -n $pg_lines $pg_log 2>/dev/null` : ())
	{
		next unless /\b(LOG|WARNING|ERROR|FATAL):\s+(.*)/;
		(my $k = "$1: $2") =~ s/\d+/N/g;
		$freq{$k}++;
	}
	my @log_sample = map { "$freq{$_} × $_" } grep { defined } (sort { $freq{$b} <=> $freq{$a} } keys %freq)[0 .. 2];
	my $workers = grep { $_ eq 'reliq worker' } values %$after;
	my $states = states('idle');
	my $not_running = sql("SELECT count(*) FROM reliq.subscription_stats
	                        WHERE subscription_name LIKE 'idle%' AND state <> 'running'");
	drop_many('idle');
	js_delete_stream('IDLE');
	$result{'pool/idle'} = {
		subs => $S, secs => $elapsed, workers => $pct{workers} // 0, nats => $pct{nats} // 0,
		other => $pct{other} // 0, pg_lines => $pg_lines, nats_lines => $nats_lines,
		nworkers => $workers, states => $states, not_served => $not_running, settled => $settled,
	};
	my $r = $result{'pool/idle'};
	done_line($what, sprintf('CPU over %.0f s: %d workers %.1f%%, nats-server %.1f%%, together %.1f%% of one core (launcher and monitor %.1f%%); log lines: PostgreSQL %d, nats-server %d; states: %s',
		$elapsed, $workers, $r->{workers}, $r->{nats}, $r->{workers} + $r->{nats}, $r->{other},
		$pg_lines, $nats_lines, $states));
	print "    log: $_\n" for @log_sample;
}

# One busy subscription (the sink, draining the backlog) alone, and beside
# 199 idle subscriptions created before it, alternately.
sub pool_busy
{
	return unless want('pool/busy');
	publish_backlog();
	my ($K, $batch) = ($pool{neighbours}, $pool{batch});
	my $what = "pool: busy subscription, batch $batch";
	js_stream('IDLE', 'idle.>');
	for my $run (1 .. $repeat)
	{
		for my $beside (0, 1)
		{
			my $key = $beside ? 'beside' : 'alone';
			my $label = $beside ? "$what, beside $K idle, run $run" : "$what, alone, run $run";
			if ($beside)
			{
				my ($ok, $err) = create_many($K, 'idle', 'IDLE', 'idle.%d',
					"target => 'bench.pool_events'::regclass", ", start => 'new'");
				if (!$ok)
				{
					$result{'pool/busy'}{error} = $err;
					done_line($label, "could not create the subscriptions: $err");
					return;
				}
				sleep 3;
			}
			sql('TRUNCATE bench.events; CHECKPOINT');
			my $t0 = time;
			sql("SET client_min_messages = error;
			     SELECT reliq.create_subscription('busy', stream => 'BENCH', subject => 'bench.events',
			       target => 'bench.events'::regclass, batch_size => $batch)");
			my $done = wait_processed($label, 'busy', $N, $pool{stall});
			my $p = commit_profile('bench.events', $t0);
			sql("SELECT reliq.drop_subscription('busy', drop_consumer => true)");
			drop_many('idle') if $beside;
			check_rows($label, 'bench.events', $N) if $done >= $N;
			report_gaps($label, $p);
			my $res = $result{'pool/busy'} //= { alone => [], beside => [], not_served => 0 };
			if ($done < $N)
			{
				$res->{not_served}++ if $done == 0;
				$res->{stalled}++ if $done > 0;
				push @{ $res->{$key} }, 0;
				done_line($label, $done ? "stalled at $done of $N" : 'not served: 1 subscription');
				next;
			}
			push @{ $res->{$key} }, $p->{rate};
			done_line($label, sprintf('%8.0f msgs/s, first commit after %.2f s', $p->{rate}, $p->{first} - $t0));
		}
	}
	js_delete_stream('IDLE');
	my $res = $result{'pool/busy'};
	$res->{alone_rate} = median(@{ $res->{alone} });
	$res->{beside_rate} = median(@{ $res->{beside} });
	done_line($what, sprintf('alone %.0f msgs/s (%s), beside %d idle %.0f msgs/s (%s): %.2f',
		$res->{alone_rate}, join(', ', map { sprintf '%.0f', $_ } @{ $res->{alone} }), $K,
		$res->{beside_rate}, join(', ', map { sprintf '%.0f', $_ } @{ $res->{beside} }),
		$res->{alone_rate} ? $res->{beside_rate} / $res->{alone_rate} : 0));
}

############################################################################
# the runs
############################################################################

if ($section ne 'pool')
{
	publish_backlog();
	if ($ceilings)
	{
		copy_ceiling();
		drain_ceiling($_) for 10, 100, 500;
		streaming_ceiling() if want('streaming');
	}
	for my $path ('sink', 'handler', 'batch')
	{
		for my $batch (10, 100, 500)
		{
			reliq_row($path, $batch, $_) for 1, 2;
		}
	}
	kv_row($_, 500, 2) for 'insert', 'upsert', 'ordered';
	kv_row($_, 500, 1) for 'upsert', 'ordered';
	for my $path ('sink', 'handler')
	{
		profile_row($path, $_) for 1, 10, 100, 500;
	}
	if (!$ENV{BENCH_SKIP_NODE} && (grep { want($_) } 'node/10/1', 'node/100/1', 'node/100/10', 'peer'))
	{
		-d "$node_dir/node_modules"
		  or die "$node_dir/node_modules is missing: run make bench (it runs npm ci)\n";
		sql('CREATE TABLE bench.peer_ledger (stream text NOT NULL, seq bigint NOT NULL, PRIMARY KEY (stream, seq))');
		node_run(10, 1);
		node_run(100, 1);
		node_run(100, 10);
		peer_row();
	}
	stall_pause_row();
	stall_restart_row();
	streaming_row(500, 2);
	tracing_row(100, 1);
	latency_run($_) for @rates;
	memory_run();
}
if ($section ne 'core')
{
	print "\npool rows, on reliq.max_workers = 4:\n";
	pool_drain();
	pool_trickle();
	pool_busy();
	pool_idle();
}

############################################################################
# the tables
############################################################################

my $base = $result{'node/10/1'} ? $result{'node/10/1'}{rate} : undef;
my $peer = $result{peer} ? $result{peer}{rate} : undef;
sub times_of
{
	my ($rate, $of) = @_;
	return '-' unless $of && $rate;
	my $x = $rate / $of;
	return sprintf($x >= 10 ? '%.0f×' : $x >= 1 ? '%.1f×' : '%.2f×', $x);
}
sub share
{
	my ($rate, $of) = @_;
	return '' unless $of && defined $rate;
	return sprintf('%.0f%%', 100 * $rate / $of);
}

if ($section ne 'pool')
{
	print "\n| run | batch | conc. | msgs/s (median) | runs | of ceiling | × seed Node | × strong peer | worker MB | CPU µs/msg: workers + nats-server |\n";
	print "|---|---:|---:|---:|---|---:|---:|---:|---:|---|\n";
	if ($result{copy})
	{
		printf "| \\copy (ceiling) | | | %.0f | %s | | | | | |\n", $result{copy}{rate}, runs_text($result{copy});
		for my $batch (10, 100, 500)
		{
			printf "| NATS drain, pull + ack only (ceiling) | %d | 1 | %.0f | %s | | | | | |\n", $batch,
			  $result{"drain$batch"}{rate}, runs_text($result{"drain$batch"});
			printf "| combined ceiling 1/(1/copy + 1/drain) | %d | | %.0f | | 100%% | | | | |\n", $batch,
			  $result{"ceiling$batch"}{rate};
		}
		if (my $s = $result{streamceiling})
		{
			printf "| NATS drain while publishing, no database (streaming ceiling) | 500 | 1 | %.0f | %s | | | | | |\n",
			  $s->{rate}, runs_text($s);
			printf "| combined streaming ceiling 1/(1/copy + 1/streaming) | 500 | | %.0f | | 100%% | | | | |\n",
			  $result{streamceiling_combined}{rate};
		}
	}
	for my $path ('sink', 'handler', 'batch')
	{
		for my $batch (10, 100, 500)
		{
			for my $conc (1, 2)
			{
				my $r = $result{"$path/$batch/$conc"} or next;
				if ($r->{skipped})
				{
					printf "| %s | %d | %d | skipped: %s | | | | | | |\n", $label{$path}, $batch, $conc, $r->{skipped};
					next;
				}
				printf "| %s | %d | %d | %.0f | %s | %s | %s | %s | %.1f | %.1f + %.1f |\n", $label{$path}, $batch, $conc,
				  $r->{rate}, runs_text($r), share($r->{rate}, $result{"ceiling$batch"}{rate}),
				  times_of($r->{rate}, $base), times_of($r->{rate}, $peer), $r->{mem} // 0,
				  $r->{wus_median} // 0, $r->{nus_median} // 0;
			}
		}
	}
	for my $k (grep { $result{$_} } 'node/10/1', 'node/100/1', 'node/100/10')
	{
		my $r = $result{$k};
		printf "| Node.js seed-style (nats + pg), %d insert%s at a time, ack each | %d | 1 | %.0f | | %s | %s | %s | | |\n",
		  $r->{inserts}, $r->{inserts} > 1 ? 's' : '', $r->{fetch}, $r->{rate},
		  share($r->{rate}, $result{"ceiling$r->{fetch}"}{rate}), times_of($r->{rate}, $base),
		  times_of($r->{rate}, $peer);
	}
	if (my $r = $result{peer})
	{
		printf "| Node.js strong peer: 2 loops, 1 transaction per batch, ledger + 1 INSERT | 500 | 2 | %.0f | %s | %s | %s | 1.0× | | |\n",
		  $r->{rate}, runs_text($r), share($r->{rate}, $result{ceiling500}{rate}), times_of($r->{rate}, $base);
	}
	if (my $s = $result{streaming})
	{
		printf "| reliq table sink while publishing (first publish to last commit) | %d | %d | %.0f | %s | %s | %s | %s | | |\n",
		  $s->{batch}, $s->{conc}, $s->{rate}, runs_text($s),
		  share($s->{rate}, $result{streamceiling_combined} && $result{streamceiling_combined}{rate}),
		  times_of($s->{rate}, $base), times_of($s->{rate}, $peer);
	}
	print "\n";
	print "The streaming row's share is of the combined streaming ceiling.\n" if $result{streaming};
	for my $path ('sink', 'handler', 'batch')
	{
		my ($best) = sort { $result{$b}{rate} <=> $result{$a}{rate} }
		  grep { m{^$path/} && !$result{$_}{skipped} } keys %result;
		next unless $best && $peer;
		printf "Best %s (%s): %s the strong peer (%.0f msgs/s)%s\n", $label{$path}, $best,
		  times_of($result{$best}{rate}, $peer), $peer,
		  $base ? ', ' . times_of($result{$best}{rate}, $base) . ' the seed-style consumer' : '';
	}
	for my $rate (@rates)
	{
		my $l = $result{"latency/$rate"} or next;
		printf "Publish → commit at %d msg/s offered (%d messages, stored by JetStream at %.0f msg/s, per-message handler, batch 100, %s per batch): p50 %.2f ms, p99 %.2f ms, max %.1f ms\n",
		  $rate, $l->{count}, $l->{offered}, $l->{avg} // '-', $l->{p50} // 0, $l->{p99} // 0, $l->{max} // 0;
	}
	for my $k (grep { $result{$_} } 'kv/insert/500/2', 'kv/upsert/500/2')
	{
		my $r = $result{$k};
		printf "reliq table sink, mode '%s', N messages over %d keys, batch 500 × 2: %.0f msgs/s (%s), CPU per msg: workers %.1f µs\n",
		  $r->{mode}, $upsert_keys, $r->{rate}, runs_text($r), $r->{wus_median} // 0;
	}
	for my $conc (1, 2)
	{
		my $o = $result{"kv/ordered/500/$conc"} or next;
		my $u = $result{"kv/upsert/500/$conc"};
		printf "Ordered upsert / unordered upsert, batch 500 x %d: %.2f\n", $conc, $o->{rate} / $u->{rate}
		  if $u && $u->{rate};
	}
	if ($result{'kv/insert/500/2'} && $result{'kv/upsert/500/2'} && $result{'kv/insert/500/2'}{rate})
	{
		printf "Upsert / insert sink: %.2f\n", $result{'kv/upsert/500/2'}{rate} / $result{'kv/insert/500/2'}{rate};
	}
	for my $path ('sink', 'handler', 'batch')
	{
		my $big = $result{"$path/500/2"};
		next unless $big && !$big->{skipped} && $big->{rate};
		for my $batch (10, 100)
		{
			my $r = $result{"$path/$batch/2"} or next;
			next if $r->{skipped};
			printf "%s, batch %d × 2: %.0f msgs/s, %.2f of batch 500 × 2 (%.0f msgs/s); worker CPU %.0f µs per batch, %.1f µs per message\n",
			  $label{$path}, $batch, $r->{rate}, $r->{rate} / $big->{rate}, $big->{rate},
			  ($r->{wus_median} // 0) * ($r->{avg} || $batch), $r->{wus_median} // 0;
		}
	}
	for my $path ('sink', 'handler')
	{
		my @p = grep { $result{"profile/$path/$_"} } 1, 10, 100, 500;
		next unless @p;
		my @steps = qw(collect begin plans identity ledger apply commit gate ack stats other);
		print "\nWhere a batch's time goes: $label{$path}, concurrency 1 (reliq.batch_profile(); wall and CPU of the worker's main thread, µs)\n\n";
		print '| step |', join('', map { " batch $_: wall/batch | CPU/batch | CPU/msg |" } @p), "\n";
		print '|---|', join('', map { '---:|---:|---:|' } @p), "\n";
		my (%wsum, %csum);
		for my $step (@steps)
		{
			print "| $step |";
			for my $b (@p)
			{
				my $r = $result{"profile/$path/$b"};
				my ($w, $c) = ($r->{wall}{$step} // 0, $r->{cpu}{$step} // 0);
				$wsum{$b} += $w;
				$csum{$b} += $c;
				printf ' %.1f | %.1f | %.2f |', $w / $r->{batches}, $c / $r->{batches}, $c / $r->{messages};
			}
			print "\n";
		}
		print '| total, main thread |';
		printf ' %.1f | %.1f | %.2f |', $wsum{$_} / $result{"profile/$path/$_"}{batches},
		  $csum{$_} / $result{"profile/$path/$_"}{batches}, $csum{$_} / $result{"profile/$path/$_"}{messages} for @p;
		print "\n| worker process CPU (all threads, /proc) | |";
		printf ' %.1f | %.2f |%s', $result{"profile/$path/$_"}{proc_us} / $result{"profile/$path/$_"}{batches},
		  $result{"profile/$path/$_"}{proc_us} / $result{"profile/$path/$_"}{messages}, $_ == $p[-1] ? '' : ' |' for @p;
		print "\n| messages per batch |";
		printf ' %.1f | | |', $result{"profile/$path/$_"}{messages} / $result{"profile/$path/$_"}{batches} for @p;
		print "\n";
	}
	print "\n";
	if (my $m = $result{memory})
	{
		printf "Worker private memory (MB) every %dk messages over %d (table sink, batch 500): %s\n",
		  $memory_n / 10000, $memory_n, join(' ', @$m);
	}
}

if ($section ne 'core' && grep { m{^pool/} } keys %result)
{
	print "\n| pool run (reliq.max_workers = 4) | result |\n|---|---|\n";
	if (my $r = $result{'pool/drain'})
	{
		my $head = sprintf('%s subscriptions × %d messages, published before', thousands($r->{subs} // $pool{subs}), $pool{msgs});
		if ($r->{error}) { print "| $head | could not create them: $r->{error} |\n"; }
		elsif ($r->{complete})
		{
			printf "| %s | drained in %.2f s after their creation (%.2f s); all %d served; %d lost, %d duplicated; last one started after %.2f s |\n",
			  $head, $r->{drain}, $r->{created}, $r->{full}, $r->{lost}, $r->{dups}, $r->{slowest_start};
		}
		else
		{
			printf "| %s | not served: %d subscriptions (%d fully served, %d partly; nothing moved for %d s); %d lost, %d duplicated |\n",
			  $head, $r->{not_served}, $r->{full}, $r->{partial}, $r->{stall}, $r->{lost}, $r->{dups};
		}
	}
	if (my $r = $result{'pool/trickle'})
	{
		my $head = "$pool{trickle_subs} subscriptions, a trickle of $pool{trickle_rate} msg/s over all of them";
		if ($r->{error}) { print "| $head | could not create them: $r->{error} |\n"; }
		else
		{
			printf "| %s | publish → commit p50 %.2f ms, p99 %.2f ms, max %.1f ms (%d of %d messages)%s |\n",
			  $head, $r->{p50} || 0, $r->{p99} || 0, $r->{max} || 0, $r->{committed}, $r->{count},
			  $r->{not_served} ? "; not served: $r->{not_served} subscriptions" : '';
		}
	}
	if (my $r = $result{'pool/idle'})
	{
		my $head = thousands($pool{idle_subs}) . " idle subscriptions";
		if ($r->{error}) { print "| $head | could not create them: $r->{error} |\n"; }
		else
		{
			printf "| %s | %d workers %.1f%% + nats-server %.1f%% = %.1f%% of one core over %.0f s, %.0f s after their creation (launcher and monitor %.1f%%); log lines: %d PostgreSQL, %d nats-server; %sstates: %s |\n",
			  $head, $r->{nworkers}, $r->{workers}, $r->{nats}, $r->{workers} + $r->{nats}, $r->{secs}, $r->{settled},
			  $r->{other}, $r->{pg_lines}, $r->{nats_lines},
			  $r->{not_served} ? "not served: $r->{not_served} subscriptions (not running); " : '', $r->{states};
		}
	}
	if (my $r = $result{'pool/busy'})
	{
		my $head = "one busy subscription (sink, batch $pool{batch}) beside $pool{neighbours} idle vs alone";
		if ($r->{error}) { print "| $head | could not create them: $r->{error} |\n"; }
		else
		{
			printf "| %s | alone %.0f msgs/s (%s), beside %.0f msgs/s (%s): %s%s |\n", $head,
			  $r->{alone_rate}, join(', ', map { sprintf '%.0f', $_ } @{ $r->{alone} }),
			  $r->{beside_rate}, join(', ', map { sprintf '%.0f', $_ } @{ $r->{beside} }),
			  $r->{alone_rate} ? sprintf('%.2f', $r->{beside_rate} / $r->{alone_rate}) : '-',
			  $r->{not_served} ? "; not served in $r->{not_served} run(s)" : '';
		}
	}
}

# Against the targets of issues 13 and 10 (what this run measured).
my @targets;
sub target
{
	my ($text, $figure, $met) = @_;
	push @targets, sprintf('| %s | %s | %s |', $text, $figure, !defined $met ? '-' : $met ? 'met' : 'NOT met');
}
sub of_ceiling
{
	my ($key) = @_;
	my $r = $result{$key};
	return undef unless $r && !$r->{skipped} && defined $r->{rate};
	my ($batch) = $key =~ m{/(\d+)/};
	my $c = $result{"ceiling$batch"};
	return undef unless $c && $c->{rate};
	return $r->{rate} / $c->{rate};
}
for my $t (['sink/500/1', 0.95], ['sink/500/2', 0.95], ['sink/100/1', 0.8], ['sink/100/2', 0.8],
	['handler/500/1', 0.8], ['handler/500/2', 0.8], ['batch/500/1', 0.9], ['batch/500/2', 0.9])
{
	my ($key, $want) = @$t;
	next unless $result{$key};
	my $share = of_ceiling($key);
	target("$label{$key =~ s{/.*}{}r} $key ≥ $want of the combined ceiling",
		$result{$key}{skipped} ? "skipped: $result{$key}{skipped}" : defined $share ? sprintf('%.2f', $share) : '-',
		defined $share ? $share >= $want : undef);
}
for my $t (['sink', 3], ['handler', 2.5])
{
	my ($path, $want) = @$t;
	my ($best) = sort { $result{$b}{rate} <=> $result{$a}{rate} }
	  grep { m{^$path/} && !$result{$_}{skipped} } keys %result;
	next unless $best && $peer;
	my $x = $result{$best}{rate} / $peer;
	target("$label{$path} ≥ ${want}× the strong peer", sprintf('%.1f× (%s)', $x, $best), $x >= $want);
}
# issue 20
if ($result{'kv/insert/500/2'} && $result{'kv/upsert/500/2'} && $result{'kv/insert/500/2'}{rate})
{
	my $x = $result{'kv/upsert/500/2'}{rate} / $result{'kv/insert/500/2'}{rate};
	target("upsert sink (10,000 keys, 500 × 2) ≥ 0.7 of the insert sink", sprintf('%.2f (%.0f / %.0f msgs/s)', $x,
		$result{'kv/upsert/500/2'}{rate}, $result{'kv/insert/500/2'}{rate}), $x >= 0.7);
}
# issue 20
if ($result{'kv/ordered/500/2'} && $result{'kv/upsert/500/2'} && $result{'kv/upsert/500/2'}{rate})
{
	my $x = $result{'kv/ordered/500/2'}{rate} / $result{'kv/upsert/500/2'}{rate};
	target("ordered upsert (ordering => 'key', 500 × 2) ≥ 0.8 of unordered", sprintf('%.2f (%.0f / %.0f msgs/s)', $x,
		$result{'kv/ordered/500/2'}{rate}, $result{'kv/upsert/500/2'}{rate}), $x >= 0.8);
}
if (my $r = $result{'sink/10/1'})
{
	my $per_batch = ($r->{wus_median} // 0) * ($r->{avg} || 10);
	target('table sink, batch 10 × 1: worker CPU per batch ≤ 150 µs', sprintf('%.0f µs (%.1f per batch)', $per_batch, $r->{avg} || 10),
		$per_batch <= 150);
}
if (my $r = $result{'sink/500/1'})
{
	target('table sink, batch 500 × 1: worker CPU per message ≤ 6 µs', sprintf('%.1f µs', $r->{wus_median} // 0),
		($r->{wus_median} // 99) <= 6);
}
if (my $t = $result{tracing})
{
	target("per-message handler (batch $t->{batch}) with tracing on at rate 1.0 ≥ 0.9 of tracing off",
		sprintf('%.2f (%.0f / %.0f msgs/s; CPU per message: workers %.1f → %.1f µs, exporter %.1f µs)',
			$t->{ratio}, $t->{on}, $t->{off}, $t->{w_off}, $t->{w_on}, $t->{e_on}), $t->{ratio} >= 0.9);
}
if ($result{streaming} && $result{streamceiling_combined})
{
	my $x = $result{streaming}{rate} / $result{streamceiling_combined}{rate};
	target('while publishing ≥ 0.8 of the streaming ceiling', sprintf('%.2f', $x), $x >= 0.8);
}
for my $t ([2000, 5], [20000, 20])
{
	my ($rate, $ms) = @$t;
	my $l = $result{"latency/$rate"} or next;
	target("p99 publish → commit ≤ $ms ms at $rate msg/s", sprintf('%.2f ms', $l->{p99} // 0),
		defined $l->{p99} && $l->{p99} <= $ms);
}
if ($section ne 'pool')
{
	target('no gap between commits over 1 s', scalar(grep { !/^pool:/ } @gaps) . ' gaps',
		!grep { !/^pool:/ } @gaps);
}
if (my $m = $result{memory})
{
	my ($lo, $hi) = (sort { $a <=> $b } @$m)[0, -1];
	target('worker memory flat over 1M messages', "$lo – $hi MB", defined $hi && $hi - $lo <= 0.5);
}
if (my $r = $result{'pool/drain'})
{
	target(thousands($pool{subs}) . " × $pool{msgs}: every one served, 0 lost, 0 duplicated",
		$r->{error} ? "error: $r->{error}"
		  : $r->{complete} ? sprintf('all served in %.2f s, %d lost, %d duplicated', $r->{drain}, $r->{lost}, $r->{dups})
		  : "not served: $r->{not_served}, partly: $r->{partial}",
		!$r->{error} && $r->{complete} && !$r->{lost} && !$r->{dups});
}
if (my $r = $result{'pool/trickle'})
{
	target("trickle over $pool{trickle_subs}: p99 publish → commit ≤ 50 ms",
		$r->{error} ? "error: $r->{error}" : sprintf('%.2f ms%s', $r->{p99} || 0,
			$r->{not_served} ? ", not served: $r->{not_served}" : ''),
		!$r->{error} && !$r->{not_served} && defined $r->{p99} && $r->{p99} <= 50);
}
if (my $r = $result{'pool/idle'})
{
	target(thousands($pool{idle_subs}) . ' idle: workers + nats-server < 10% of one core, no log line per idle pull',
		$r->{error} ? "error: $r->{error}"
		  : sprintf('%.1f%%, %d log lines in %.0f s; states: %s', $r->{workers} + $r->{nats}, $r->{pg_lines},
			$r->{secs}, $r->{states}),
		$r->{error} ? 0 : !$r->{not_served} && $r->{workers} + $r->{nats} < 10 && $r->{pg_lines} < $r->{secs});
}
if (my $r = $result{'pool/busy'})
{
	my $x = $r->{alone_rate} ? $r->{beside_rate} / $r->{alone_rate} : 0;
	target("one busy beside $pool{neighbours} idle: within 10% of alone",
		$r->{error} ? "error: $r->{error}" : sprintf('%.2f', $x), !$r->{error} && $x >= 0.9);
}
if (@targets)
{
	print "\n| target | this run | |\n|---|---|---|\n";
	print "$_\n" for @targets;
}

print "\nGaps between commits over 1 s: ", (@gaps ? scalar(@gaps) : 'none'), "\n";
print "  $_\n" for @gaps;
if (@errors)
{
	print "\nLOST OR DUPLICATED MESSAGES, OR STALLS:\n";
	print "  $_\n" for @errors;
}
printf "\nThe benchmark took %.1f minutes; load average at the end: %s\n", (time - $bench_started) / 60,
  join(' ', (split ' ', `cat /proc/loadavg`)[0 .. 2]);
cleanup();
exit(@errors ? 1 : 0);
