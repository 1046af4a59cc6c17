#!/usr/bin/perl
# demo/orders.pl: the entity-stream example; run it with "scripts/demo orders".
#
# Starts a nats-server and a PostgreSQL cluster on free loopback ports in a
# temporary directory, installs demo/orders.sql (an upsert table sink),
# publishes the life of DEMO_ORDERS orders (created, paid, shipped; every
# tenth cancelled and deleted) interleaved as many order services would,
# replays a slice of old changes (as a producer retrying would), and checks
# that app.orders holds exactly the current state of every order.  Stops
# everything it started.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../test/perl";
use File::Temp qw(tempdir);
use Time::HiRes qw(time sleep);
use ReliqTest::Local qw(free_port stop_pid start_site stop_site site_query);

$| = 1;
my $orders  = $ENV{DEMO_ORDERS} // 2000;
my $timeout = $ENV{DEMO_TIMEOUT} // 300;
my $dir = tempdir('reliq-orders-XXXXXX', TMPDIR => 1, CLEANUP => !$ENV{DEMO_KEEP});
my %site;

END { stop_site(\%site); }
$SIG{INT} = $SIG{TERM} = $SIG{HUP} = sub { print STDERR "\ninterrupted\n"; exit 130; };
$SIG{PIPE} = sub { exit 141; };

start_site(\%site, $dir, 'orders', '');
print "reliq entity-stream example\n";
print "  nats-server  $site{nats_url}  (pid $site{nats_pid})\n";
print "  PostgreSQL   127.0.0.1:$site{pg_port}, database orders, data in $dir\n\n";

my @psql = @{ $site{psql} };
sub sql { return site_query(\%site, @_); }
system(@psql, '-d', 'orders', '-f', "$FindBin::Bin/orders.sql", '-o', '/dev/null') == 0
  or die "demo/orders.sql failed\n";
system(@psql, '-d', 'orders', '-c',
	"SELECT subscription_name, target, mode, key, columns, newer_than, ordering, concurrency FROM reliq.subscription");

# The producers: round by round, so each order's changes are spread over
# the stream between other orders' changes.  reliq.publish outside a
# handler publishes at once, as a service would.
my $n = $orders;
my @rounds = (
	[ 'created', "jsonb_build_object('status', 'created', 'amount', 10 + i % 90, 'version', 1)::text" ],
	[ 'paid',    "jsonb_build_object('status', 'paid', 'version', 2)::text" ],
	[ 'shipped', "jsonb_build_object('status', 'shipped', 'version', 3)::text", 'i % 10 <> 0' ],
	[ 'amended', "jsonb_build_object('amount', 10 + i % 90 + 0.5, 'version', 4)::text", 'i % 3 = 0 AND i % 10 <> 0' ],
	[ 'deleted', "''", 'i % 10 = 0' ],
	# a producer retrying old changes: must not move anything back
	[ 'created', "jsonb_build_object('status', 'created', 'amount', 1, 'version', 1)::text", 'i % 7 = 0 AND i % 10 <> 0' ],
);
my $published = 0;
my $started = time;
for my $r (@rounds)
{
	my ($event, $payload, $where) = @$r;
	$published += sql(
		"SELECT count(reliq.publish('orders.' || CASE WHEN i % 2 = 0 THEN 'eu' ELSE 'us' END || '.' || i || '.$event', $payload))
		   FROM generate_series(1, $n) AS i" . ($where ? " WHERE $where" : ''));
}
printf "Published %d changes of %d orders in %.1f s; waiting for reliq ...\n", $published, $n, time - $started;

my $idle = 0;
while (time - $started < $timeout)
{
	sleep 1;
	my ($processed, $dead) = split /\|/, sql(
		"SELECT processed, dead_lettered FROM reliq.subscription_stats WHERE subscription_name = 'orders'");
	printf "%6.1fs  %d of %d applied, %d dead letters\n", time - $started, $processed, $published, $dead;
	if ($processed >= $published && sql("SELECT reliq.wait_idle('orders', '0s')") eq 't')
	{
		$idle = 1;
		last;
	}
}

# The current state each order must have.
my $expected = "
	SELECT i AS order_id, CASE WHEN i % 2 = 0 THEN 'eu' ELSE 'us' END AS region,
	       CASE WHEN i % 10 <> 0 THEN 'shipped' END AS status,
	       (10 + i % 90 + CASE WHEN i % 3 = 0 THEN 0.5 ELSE 0 END)::numeric(10, 2) AS amount,
	       CASE WHEN i % 3 = 0 THEN 4 ELSE 3 END AS version
	  FROM generate_series(1, $n) AS i WHERE i % 10 <> 0";
my ($rows, $wrong, $deleted_present) = split /\|/, sql(
	"SELECT (SELECT count(*) FROM app.orders),
	        (SELECT count(*) FROM (($expected) EXCEPT
	                               SELECT order_id, region, status, amount, version FROM app.orders) d),
	        (SELECT count(*) FROM app.orders WHERE order_id % 10 = 0)");
print "\napp.orders, a few rows:\n";
system(@psql, '-d', 'orders', '-c', "SELECT * FROM app.orders ORDER BY order_id LIMIT 6");
my $want = $n - int($n / 10);
my $ok = $idle && $rows == $want && $wrong == 0 && $deleted_present == 0;
printf "%s: %d orders in app.orders (%d expected), %d not at their current state, "
  . "%d deleted orders present; %d changes in %.1f s\n",
  $ok ? 'OK' : 'FAILED', $rows, $want, $wrong, $deleted_present, $published, time - $started;
exit($ok ? 0 : 1);
