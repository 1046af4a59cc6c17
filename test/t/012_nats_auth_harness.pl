#
# 012_nats_auth_harness.pl
#	  Exercise ReliqTest::NatsAuth against the real nats-server: token,
#	  user/password, operator mode (NKeys, JWTs, .creds) and TLS with client
#	  certificates.  For each mode a server is started with the generated
#	  configuration, a stream is created and fed with the right credentials,
#	  and clients with missing or wrong credentials are refused.  No
#	  PostgreSQL cluster is involved.
#
use strict;
use warnings;

use IPC::Run;
use JSON::PP;
use MIME::Base64 qw(decode_base64);
use PostgreSQL::Test::Utils;
use Test::More;

use ReliqTest::Nats;
use ReliqTest::NatsAuth qw(:all);

my $json = JSON::PP->new;

# ---------------------------------------------------------------------
# Encodings, checked without a server
# ---------------------------------------------------------------------

# The key pair published in the NATS documentation (nats-server's
# examples): the seed must give this public key.
my $doc = nkey_from_seed(
	'SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY');
is($doc->{public}, 'UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4',
	'known seed gives the known user public key');
is($doc->{seed}, 'SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY',
	'seed re-encodes identically');
is(crc16('123456789'), 0x31c3, 'CRC-16/XMODEM check value');
is(base32_encode('foobar'), 'MZXW6YTBOI', 'base32 (RFC 4648 test vector)');
is(base32_decode('MZXW6YTBOI'), 'foobar', 'base32 decoding');

my $corrupt = $doc->{public};
substr($corrupt, 10, 1) = substr($corrupt, 10, 1) eq 'A' ? 'B' : 'A';
my $decoded = eval { nkey_decode($corrupt); 1 };
ok(!$decoded, 'a corrupted nkey is rejected');
like($@, qr/checksum/, 'a corrupted nkey fails its CRC');

my %first = (operator => 'O', account => 'A', user => 'U');
foreach my $type (sort keys %first)
{
	my $kp = nkey_create($type);
	my $p  = $first{$type};
	like($kp->{public}, qr/^${p}[A-Z2-7]{55}$/,
		"$type public key has prefix $first{$type} and 56 characters");
	like($kp->{seed}, qr/^S${p}[A-Z2-7]{56}$/,
		"$type seed has prefix S$first{$type} and 58 characters");
	is(nkey_from_seed($kp->{seed})->{public}, $kp->{public},
		"$type seed derives the same public key");
	my $sig = nkey_sign($kp, "payload-$type");
	ok(nkey_verify($kp->{public}, "payload-$type", $sig),
		"$type signature verifies");
	ok(!nkey_verify($kp->{public}, "payload-$type!", $sig),
		"$type signature does not verify other data");
}

# ---------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------

# natstool against $url with @args: (exit code, stdout, stderr)
sub natstool
{
	my ($url, @args) = @_;
	my @cmd = (ReliqTest::Nats::natstool_path(), '--url', $url,
		'--timeout', 2000, @args);
	my ($in, $out, $err) = ('', '', '');
	IPC::Run::run(\@cmd, '<', \$in, '>', \$out, '2>', \$err,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	return ($? >> 8, $out, $err);
}

# A client with @args must get $JS.API.INFO answered (positive control for
# the refusals below).
sub accepted
{
	my ($nats, $what, @args) = @_;
	my ($rc, $out, $err) = natstool($nats->url, @args, 'request', '$JS.API.INFO');
	my $r = eval { $json->decode($out) };
	ok($rc == 0 && $r && !$r->{error}, "$what: accepted, JetStream answers")
	  or diag("exit $rc, stdout: $out, stderr: $err");
	return;
}

# A client with @args must be refused when connecting: non-zero exit and a
# "cannot connect" error matching $why.
sub refused
{
	my ($nats, $what, $why, @args) = @_;
	my ($rc, $out, $err) = natstool($nats->url, @args, 'request', '$JS.API.INFO');
	isnt($rc, 0, "$what: refused (natstool exit status non-zero)");
	like($err, qr/cannot connect to .*$why/s, "$what: connection error matches /$why/");
	is($out, '', "$what: nothing answered");
	return;
}

# Create a stream, publish $n messages with $nats's own credentials, check
# what was stored.
sub feed_stream
{
	my ($nats, $stream, $n) = @_;
	my $subject = lc($stream) . '.in';
	my $c = $nats->stream_create($stream, [ lc($stream) . '.>' ]);
	is($c->{config}{name}, $stream, "$stream: stream created");
	is($nats->publish($subject, count => $n, msg_id => "$stream-%d",
			payload => "{\"stream\":\"$stream\",\"i\":%d}"),
		$n, "$stream: $n messages acknowledged");
	my $msgs = $nats->stream_messages($stream);
	is(scalar(@$msgs), $n, "$stream: $n messages stored");
	is_deeply([ map { $_->{data} } @$msgs ],
		[ map { "{\"stream\":\"$stream\",\"i\":$_}" } 0 .. $n - 1 ],
		"$stream: payloads stored in order");
	return;
}

# ---------------------------------------------------------------------
# Token
# ---------------------------------------------------------------------

unlike(token_conf('s3cret'), qr/\$SYS/, 'token config has no $SYS account');
{
	my $nats = ReliqTest::Nats->new(
		name        => 'auth_token',
		extra_conf  => token_conf('s3cret'),
		client_args => [ '--token', 's3cret' ]);
	$nats->start;
	accepted($nats, 'token', '--token', 's3cret');
	feed_stream($nats, 'AUTH_TOKEN', 5);
	refused($nats, 'no token', 'Authorization Violation');
	refused($nats, 'wrong token', 'Authorization Violation',
		'--token', 's3creT');
	refused($nats, 'user/password instead of token',
		'Authorization Violation', '--user', 's3cret', '--password', 's3cret');
	$nats->stop;
}

# ---------------------------------------------------------------------
# User / password
# ---------------------------------------------------------------------

unlike(userpass_conf('reliq', 'pw'), qr/\$SYS/,
	'user/password config has no $SYS account');
{
	# cnats 3.4.1 puts user and password into CONNECT without JSON
	# escaping: '"' and '\' cannot be used (the server refuses the
	# connection), other punctuation and spaces can.
	my $pw   = 'p@ss w0rd:{},#';
	my $nats = ReliqTest::Nats->new(
		name        => 'auth_userpass',
		extra_conf  => userpass_conf('reliq', $pw),
		client_args => [ '--user', 'reliq', '--password', $pw ]);
	$nats->start;
	accepted($nats, 'user/password', '--user', 'reliq', '--password', $pw);
	feed_stream($nats, 'AUTH_USERPASS', 5);
	refused($nats, 'no user', 'Authorization Violation');
	refused($nats, 'wrong password', 'Authorization Violation',
		'--user', 'reliq', '--password', "$pw!");
	refused($nats, 'unknown user', 'Authorization Violation',
		'--user', 'other', '--password', $pw);
	$nats->stop;
}

# ---------------------------------------------------------------------
# Operator mode: NKeys, JWTs, .creds
# ---------------------------------------------------------------------

{
	my $dir = PostgreSQL::Test::Utils::tempdir('auth_creds');
	my $op  = operator_setup($dir);

	# JWT chain, checked offline
	my %issuer = (
		operator_jwt       => $op->{operator_public},
		system_account_jwt => $op->{operator_public},
		account_jwt        => $op->{operator_public},
		user_jwt           => $op->{account_public});
	my %subject = (
		operator_jwt       => $op->{operator_public},
		system_account_jwt => $op->{system_account_public},
		account_jwt        => $op->{account_public},
		user_jwt           => $op->{user_public});
	foreach my $k (sort keys %issuer)
	{
		my ($h, $c) = jwt_decode($op->{$k});
		is_deeply($h, { typ => 'JWT', alg => 'ed25519-nkey' }, "$k header");
		is("$c->{iss} $c->{sub} $c->{nats}{version}",
			"$issuer{$k} $subject{$k} 2", "$k issuer, subject, version 2");
		my ($hb, $cb, $sb) = split /\./, $op->{$k};
		(my $sig = $sb) =~ tr{-_}{+/};
		$sig = decode_base64($sig . '=' x ((4 - length($sig) % 4) % 4));
		ok(nkey_verify($issuer{$k}, "$hb.$cb", $sig), "$k signed by its issuer");
	}
	my (undef, $acct) = jwt_decode($op->{account_jwt});
	is(join(',', map { $acct->{nats}{limits}{$_} } qw(mem_storage disk_storage streams consumer)),
		'-1,-1,-1,-1', 'account JWT enables JetStream without limits');

	open my $fh, '<', $op->{creds_file} or die "$op->{creds_file}: $!";
	my $creds = do { local $/; <$fh> };
	close $fh;
	like($creds,
		qr/^-----BEGIN NATS USER JWT-----\n\Q$op->{user_jwt}\E\n------END NATS USER JWT------\n.*-----BEGIN USER NKEY SEED-----\n\Q$op->{user_seed}\E\n------END USER NKEY SEED------\n/s,
		'creds file in the standard format');
	is(sprintf('%04o', (stat $op->{creds_file})[2] & 07777), '0644',
		'creds file readable by other users');
	unlike($op->{server_conf}, qr/authorization|\$SYS/,
		'operator config has no authorization block nor $SYS');

	my $other   = other_user_creds($op, $dir);
	my $expired = user_creds($op, $dir, name => 'expired', exp => time() - 3600);
	my $second  = user_creds($op, $dir, name => 'second');
	# the first user's JWT with the second user's seed: the nonce signature
	# does not match the JWT's subject
	my $mismatch = write_creds("$dir/mismatch.creds", $op->{user_jwt},
		$second->{user_seed});

	my $nats = ReliqTest::Nats->new(
		name        => 'auth_creds',
		extra_conf  => $op->{server_conf},
		client_args => [ '--creds', $op->{creds_file} ]);
	$nats->start;
	accepted($nats, 'creds', '--creds', $op->{creds_file});
	is($nats->js_api('INFO')->{limits}{max_streams}, -1,
		'JetStream account limits come from the account JWT');
	feed_stream($nats, 'AUTH_CREDS', 5);
	accepted($nats, 'another user of the account', '--creds',
		$second->{creds_file});
	refused($nats, 'no creds', 'Authorization Violation');
	refused($nats, 'user of an unknown account', 'Authorization Violation',
		'--creds', $other->{creds_file});
	refused($nats, 'JWT with another user\'s seed', 'Authorization Violation',
		'--creds', $mismatch);
	refused($nats, 'expired user JWT', 'Authorization Violation|[Ee]xpired',
		'--creds', $expired->{creds_file});
	refused($nats, 'token instead of creds', 'Authorization Violation',
		'--token', $op->{user_jwt});
	$nats->stop;
}

# ---------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------

{
	my $tls = tls_setup(PostgreSQL::Test::Utils::tempdir('auth_tls'));
	foreach my $k (grep { /_(key|cert)$/ } sort keys %$tls)
	{
		is(sprintf('%04o', (stat $tls->{$k})[2] & 07777), '0644',
			"$k is readable by other users");
	}
	my @client = ('--tls-ca', $tls->{ca_cert}, '--tls-cert',
		$tls->{client_cert}, '--tls-key', $tls->{client_key});

	my $nats = ReliqTest::Nats->new(
		name        => 'auth_tls',
		scheme      => 'tls',
		extra_conf  => $tls->{server_conf},
		client_args => \@client);
	like($nats->url, qr{^tls://127\.0\.0\.1:\d+$}, 'tls:// URL');
	$nats->start;
	accepted($nats, 'TLS with client certificate', @client);
	feed_stream($nats, 'AUTH_TLS', 5);
	refused($nats, 'TLS without client certificate', '.',
		'--tls-ca', $tls->{ca_cert});
	refused($nats, 'client certificate from an untrusted CA', '.',
		'--tls-ca', $tls->{ca_cert}, '--tls-cert', $tls->{wrong_client_cert},
		'--tls-key', $tls->{wrong_client_key});
	refused($nats, 'client not trusting the server\'s CA', 'SSL',
		'--tls-ca', $tls->{wrong_ca_cert}, '--tls-cert', $tls->{client_cert},
		'--tls-key', $tls->{client_key});
	refused($nats, 'no TLS options at all', 'SSL');
	$nats->stop;

	my $nats2 = ReliqTest::Nats->new(
		name        => 'auth_tls_only',
		scheme      => 'tls',
		extra_conf  => $tls->{server_conf_tls_only},
		client_args => [ '--tls-ca', $tls->{ca_cert} ]);
	$nats2->start;
	accepted($nats2, 'TLS-only server, CA only', '--tls-ca', $tls->{ca_cert});
	feed_stream($nats2, 'AUTH_TLS_ONLY', 3);
	refused($nats2, 'TLS-only server, untrusted server certificate', 'SSL',
		'--tls-ca', $tls->{wrong_ca_cert});
	$nats2->stop;
}

done_testing();
