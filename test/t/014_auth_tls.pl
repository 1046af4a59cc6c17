# Authentication and TLS to NATS: a token, a user and password (also read
# from a file), a credentials file (operator-mode NKey/JWT), TLS with a CA
# and a client certificate -- each against a nats-server configured for
# it, each consuming for real.  And the wrong ways: a wrong token, TLS
# required but not configured, TLS configured but not offered.  Each gives
# a clear last_error without the secret, loses nothing once mended, and
# leaves the server running.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use ReliqTest::Nats;
use ReliqTest::NatsAuth qw(operator_setup tls_setup token_conf userpass_conf);
use ReliqTest::Node;

my $dir = PostgreSQL::Test::Utils::tempdir('auth');
my $token = 'tok-' . int(rand(1e9));
my $password = 'pw ' . int(rand(1e9)) . ':{},#';
my $op = operator_setup("$dir/operator");
my $tls = tls_setup("$dir/tls");
my @tls_files = ('--tls-ca', $tls->{ca_cert}, '--tls-cert', $tls->{client_cert},
	'--tls-key', $tls->{client_key});

my %server = (
	token => ReliqTest::Nats->new(name => 'token', extra_conf => token_conf($token),
		client_args => [ '--token', $token ]),
	userpass => ReliqTest::Nats->new(name => 'userpass',
		extra_conf => userpass_conf('reliq', $password),
		client_args => [ '--user', 'reliq', '--password', $password ]),
	creds => ReliqTest::Nats->new(name => 'creds', extra_conf => $op->{server_conf},
		client_args => [ '--creds', $op->{creds_file} ]),
	tls => ReliqTest::Nats->new(name => 'tls', scheme => 'tls',
		extra_conf => $tls->{server_conf}, client_args => \@tls_files),
);
for my $s (values %server)
{
	$s->start;
	$s->stream_create('A', ['a.>']);
}

my $node = reliq_node('auth', $server{token}, conf => "reliq.nats_token = '$token'");
my $started = postmaster_start_time($node);
$node->safe_psql('postgres', q{
	CREATE TABLE got (subject text, id int);
	CREATE FUNCTION record(m reliq.message) RETURNS void LANGUAGE sql AS $$
		INSERT INTO got VALUES (m.subject, (reliq.message_json(m)->>'id')::int)
	$$;
	SELECT reliq.create_subscription('auth', stream => 'A', subject => 'a.>',
	       handler => 'record(reliq.message)'::regprocedure);
});

# Point reliq at another server, with these settings (the others reset).
sub use_settings
{
	my (%set) = @_;
	my $sql = join '', map { "ALTER SYSTEM RESET reliq.nats_$_;\n" }
	  qw(token user password credentials_file tls_ca_file tls_cert_file tls_key_file);
	$sql .= join '', map { "ALTER SYSTEM SET reliq.$_ = '$set{$_}';\n" } sort keys %set;
	$node->safe_psql('postgres', $sql);
	$node->reload;
}

sub consumed
{
	my ($subject, $count) = @_;
	return wait_for($node, "SELECT count(DISTINCT id) = $count FROM got WHERE subject = '$subject'");
}

$server{token}->publish('a.token', count => 20, start => 1, payload => '{"id":%d}');
ok(consumed('a.token', 20), 'token: consuming');

use_settings(nats_url => $server{userpass}->url, nats_user => 'reliq', nats_password => $password);
$server{userpass}->publish('a.userpass', count => 20, start => 1, payload => '{"id":%d}');
ok(consumed('a.userpass', 20), 'user and password: consuming');

my $password_file = "$dir/nats.password";
PostgreSQL::Test::Utils::append_to_file($password_file, "$password\n");
use_settings(nats_url => $server{userpass}->url, nats_user => 'reliq',
	nats_password => "file:$password_file");
$server{userpass}->publish('a.userpass', count => 10, start => 21, payload => '{"id":%d}');
ok(consumed('a.userpass', 30), 'password read from a file: consuming');

# The file unreadable when the worker connects again (the URL spelled
# otherwise, so that it reconnects): no connection, the file named as the
# reason.  (It used to connect without the password, and the server's
# refusal hid the cause.)
chmod 0000, $password_file or die "chmod: $!";
use_settings(nats_url => 'nats://localhost:' . $server{userpass}->port, nats_user => 'reliq',
	nats_password => "file:$password_file");
ok(wait_for($node, q{SELECT last_error LIKE '%could not read the file of reliq.nats_password%' FROM reliq.subscription_stats}),
	'the password file unreadable: last_error names it');
chmod 0600, $password_file or die "chmod: $!";
use_settings(nats_url => $server{userpass}->url, nats_user => 'reliq',
	nats_password => "file:$password_file");
$server{userpass}->publish('a.userpass', count => 5, start => 31, payload => '{"id":%d}');
ok(consumed('a.userpass', 35), 'readable again: consuming');

use_settings(nats_url => $server{creds}->url, nats_credentials_file => $op->{creds_file});
$server{creds}->publish('a.creds', count => 20, start => 1, payload => '{"id":%d}');
ok(consumed('a.creds', 20), 'credentials file (NKey/JWT): consuming');

use_settings(nats_url => $server{tls}->url, nats_tls_ca_file => $tls->{ca_cert},
	nats_tls_cert_file => $tls->{client_cert}, nats_tls_key_file => $tls->{client_key});
$server{tls}->publish('a.tls', count => 20, start => 1, payload => '{"id":%d}');
ok(consumed('a.tls', 20), 'TLS with a client certificate: consuming');
ok($node->safe_psql('postgres', q{SELECT reliq.publish('a.tls', '{"id": 21}'::bytea)}) > 0,
	'a backend publishes over TLS too');
ok(consumed('a.tls', 21), 'and it is consumed');

# The wrong ways.
my $wrong = 'wrong-' . int(rand(1e9));
use_settings(nats_url => $server{token}->url, nats_token => $wrong);
$server{token}->publish('a.token', count => 10, start => 21, payload => '{"id":%d}');
ok(wait_for($node, q{SELECT last_error LIKE '%Authorization Violation%' FROM reliq.subscription_stats}),
	'a wrong token: last_error says Authorization Violation');
ok(wait_for($node, q{SELECT status = 'down' FROM reliq.health()}), 'and health says down');
is($node->safe_psql('postgres', "SELECT count(*) FROM reliq.subscription_stats WHERE last_error LIKE '%$wrong%'"),
	'0', 'last_error does not show the token');
my ($ret, $out, $err) = $node->psql('postgres', q{SELECT reliq.publish('a.token', 'x'::bytea)});
like($err, qr/could not connect to NATS/, 'a backend gets a clear error');
unlike($err, qr/\Q$wrong\E/, 'without the token');
use_settings(nats_url => $server{token}->url, nats_token => $token);
ok(consumed('a.token', 30), 'mended: what was published meanwhile is consumed');

use_settings(nats_url => 'nats://127.0.0.1:' . $server{tls}->port);
ok(wait_for($node, q{SELECT last_error LIKE '%could not connect to NATS%' AND state IN ('backing_off', 'connecting', 'disconnected')
                      FROM reliq.subscription_stats}),
	'TLS required by the server but not configured: a clear error');
use_settings(nats_url => 'tls://127.0.0.1:' . $server{token}->port, nats_token => $token,
	nats_tls_ca_file => $tls->{ca_cert});
ok(wait_for($node, q{SELECT last_error LIKE '%could not connect to NATS%' FROM reliq.subscription_stats}),
	'TLS configured but the server offers none: a clear error');
use_settings(nats_url => $server{token}->url, nats_token => $token);
$server{token}->publish('a.token', count => 5, start => 31, payload => '{"id":%d}');
ok(consumed('a.token', 35), 'consuming again');

# A setting the NATS C client could not send is refused when made.
($ret, $out, $err) = $node->psql('postgres', q{ALTER SYSTEM SET reliq.nats_password = 'a"b'});
like($err, qr/invalid value for parameter "reliq.nats_password".*double quote or a backslash/s,
	'a password with a double quote is refused with a reason');

my @leaks = grep { /\Q$wrong\E|\Q$password\E|\Q$token\E/ && !/parameter "reliq\.nats_\w+" changed to/ }
  split /\n/, slurp_file($node->logfile);
is(scalar @leaks, 0, 'reliq writes no secret to the log') or diag(@leaks);
is(postmaster_start_time($node), $started, 'the server kept running');
is($node->safe_psql('postgres', 'SELECT count(*) - count(DISTINCT (subject, id)) FROM got'), '0',
	'nothing applied twice');

$node->stop;
$_->stop for values %server;
done_testing();
