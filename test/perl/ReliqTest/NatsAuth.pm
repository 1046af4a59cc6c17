#
# ReliqTest::NatsAuth - credentials, JWTs and certificates for testing reliq
# against an authenticating (and/or TLS) nats-server.
#

=pod

=head1 NAME

ReliqTest::NatsAuth - NATS auth material (token, user/password, NKey/JWT
operator mode, TLS) for reliq's TAP tests

=head1 SYNOPSIS

  use PostgreSQL::Test::Utils;
  use ReliqTest::Nats;
  use ReliqTest::NatsAuth qw(operator_setup other_user_creds tls_setup
    token_conf userpass_conf);

  # decentralized auth (operator / account / user JWTs, .creds file)
  my $op = operator_setup(PostgreSQL::Test::Utils::tempdir('creds'));
  my $nats = ReliqTest::Nats->new(
	  name        => 'jwt',
	  extra_conf  => $op->{server_conf},
	  client_args => [ '--creds', $op->{creds_file} ]);
  $nats->start;

  # TLS with client certificates
  my $tls = tls_setup(PostgreSQL::Test::Utils::tempdir('tls'));
  my $nats2 = ReliqTest::Nats->new(
	  name        => 'tls',
	  scheme      => 'tls',
	  extra_conf  => $tls->{server_conf},
	  client_args => [ '--tls-ca', $tls->{ca_cert},
		  '--tls-cert', $tls->{client_cert}, '--tls-key', $tls->{client_key} ]);

  # token, user/password
  ReliqTest::Nats->new(name => 't', extra_conf => token_conf('s3cret'),
	  client_args => [ '--token', 's3cret' ]);
  ReliqTest::Nats->new(name => 'u', extra_conf => userpass_conf('bob', 'pw'),
	  client_args => [ '--user', 'bob', '--password', 'pw' ]);

=head1 DESCRIPTION

Only core Perl modules and the C<openssl> command-line tool (OpenSSL 3,
for Ed25519) are used; no nsc / nk binary is needed.

NKeys follow the Go nkeys library: base32 (RFC 4648 alphabet, no padding)
of prefix byte(s) + 32 key bytes + CRC-16/XMODEM (little-endian) of what
precedes it.  Public prefixes: operator 14<<3 ("O..."), account 0
("A..."), user 20<<3 ("U...").  Seeds ("S...") carry (18<<3 | prefix>>5),
((prefix & 31) << 3) and the 32-byte Ed25519 private seed.

JWTs follow nats-io/jwt v2: header {"typ":"JWT","alg":"ed25519-nkey"},
base64url (no padding) header and claims, Ed25519 signature of
"HEADER.CLAIMS" by the issuer, base64url (no padding).  jti is the
base32 (no padding) SHA-512/256 of the standard claims serialized without
jti, as the Go library does.

Ed25519 is done with C<openssl genpkey -algorithm ed25519 -outform DER>
(the seed is the last 32 bytes of the PKCS#8 DER), C<openssl pkey -pubout
-outform DER> (the public key is the last 32 bytes of the SPKI DER) and
C<openssl pkeyutl -sign -rawin>.

Every file written is mode 0644 and every directory passed in is made 0755
so that a PostgreSQL server running as another user (postgres, when the
tests run as root) can read the keys, certificates and .creds files --
provided the directories above it are traversable too
(PostgreSQL::Test::Utils::tempdir makes 0700 directories under tmp_check:
the directory handed to these functions is chmod'ed, its parents are not).
These are throwaway test secrets.

Never use an C<authorization {}> block that declares only a C<$SYS>
account with nats-server 2.9.x (CVE-2023-47090: it disables auth); nothing
here does.

=cut

package ReliqTest::NatsAuth;

use strict;
use warnings;

use Carp;
use Digest::SHA qw(sha512256);
use Exporter 'import';
use File::Spec;
use File::Temp ();
use JSON::PP;
use MIME::Base64 qw(encode_base64 decode_base64);
use POSIX ();

our @EXPORT_OK = qw(
  operator_setup other_user_creds user_creds write_creds
  tls_setup token_conf userpass_conf
  nkey_create nkey_from_seed nkey_sign nkey_verify
  nkey_encode_public nkey_encode_seed nkey_decode
  jwt_encode jwt_decode base32_encode base32_decode crc16 b64url
);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

our $OPENSSL = $ENV{RELIQ_OPENSSL} // 'openssl';

my $json = JSON::PP->new->canonical;

# ---------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------

# Run openssl with @args (no shell); returns stdout (raw bytes), dies
# with stderr on failure.  $opts{stdin} is fed on stdin when given.
sub _openssl
{
	my (@args) = @_;
	my %o = ref $args[-1] eq 'HASH' ? %{ pop @args } : ();

	my $errf = File::Temp->new(TEMPLATE => 'openssl_err_XXXX', TMPDIR => 1);
	my $inf;
	if (defined $o{stdin})
	{
		$inf = File::Temp->new(TEMPLATE => 'openssl_in_XXXX', TMPDIR => 1);
		binmode $inf;
		print $inf $o{stdin};
		close $inf;
	}
	my $pid = open(my $ph, '-|');
	croak "fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		open STDIN, '<', (defined $inf ? $inf->filename : '/dev/null');
		open STDERR, '>', $errf->filename;
		{ exec { $OPENSSL } $OPENSSL, @args; }
		print STDERR "exec $OPENSSL failed: $!\n";
		POSIX::_exit(127);
	}
	binmode $ph;
	my $out = do { local $/; <$ph> } // '';
	close $ph;
	my $status = $?;
	if ($status != 0)
	{
		my $err = do { local (@ARGV, $/) = ($errf->filename); <> } // '';
		croak "openssl @args failed (wait status $status): $err";
	}
	return $out;
}

sub _write_file
{
	my ($path, $content, $mode) = @_;
	open my $fh, '>', $path or croak "could not write $path: $!";
	binmode $fh;
	print $fh $content;
	close $fh or croak "could not write $path: $!";
	chmod($mode // 0644, $path) or croak "chmod $path: $!";
	return $path;
}

sub _read_file
{
	my ($path) = @_;
	open my $fh, '<', $path or croak "could not read $path: $!";
	binmode $fh;
	local $/;
	my $c = <$fh>;
	close $fh;
	return $c;
}

sub _prepare_dir
{
	my ($dir) = @_;
	croak "a directory is required" unless defined $dir && $dir ne '';
	if (!-d $dir)
	{
		mkdir $dir or croak "mkdir $dir: $!";
	}
	chmod 0755, $dir or croak "chmod $dir: $!";
	return File::Spec->rel2abs($dir);
}

# nats-server config string literal
sub _q
{
	my $s = shift;
	$s =~ s/(["\\])/\\$1/g;
	return "\"$s\"";
}

=pod

=head1 ENCODING FUNCTIONS

=over

=item base32_encode($bytes), base32_decode($text)

RFC 4648 base32 (A-Z2-7), no padding.

=item crc16($bytes)

CRC-16/XMODEM (poly 0x1021, init 0, no reflection), as in nkeys.

=item b64url($bytes)

base64url without padding (RFC 4648 section 5), as JWTs use.

=back

=cut

my @B32 = ('A' .. 'Z', '2' .. '7');
my %B32 = map { $B32[$_] => $_ } 0 .. 31;

sub base32_encode
{
	my ($bytes) = @_;
	my $bits = unpack('B*', $bytes);
	$bits .= '0' x ((5 - length($bits) % 5) % 5);
	return join '', map { $B32[ oct("0b$_") ] } ($bits =~ /(.{5})/g);
}

sub base32_decode
{
	my ($text) = @_;
	$text =~ s/=+$//;
	my $bits = join '', map {
		croak "invalid base32 character \"$_\"" unless exists $B32{$_};
		sprintf('%05b', $B32{$_})
	} split //, uc $text;
	$bits = substr($bits, 0, length($bits) - length($bits) % 8);
	return pack('B*', $bits);
}

sub crc16
{
	my ($bytes) = @_;
	my $crc = 0;
	foreach my $b (unpack('C*', $bytes))
	{
		$crc ^= $b << 8;
		for (1 .. 8)
		{
			$crc = ($crc & 0x8000) ? (($crc << 1) ^ 0x1021) : ($crc << 1);
			$crc &= 0xffff;
		}
	}
	return $crc;
}

sub b64url
{
	my ($bytes) = @_;
	my $s = encode_base64($bytes, '');
	$s =~ tr{+/}{-_};
	$s =~ s/=+$//;
	return $s;
}

sub _b64url_decode
{
	my ($s) = @_;
	croak "invalid base64url \"$s\"" if $s =~ /[^A-Za-z0-9_-]/;
	$s =~ tr{-_}{+/};
	$s .= '=' x ((4 - length($s) % 4) % 4);
	return decode_base64($s);
}

=pod

=head1 NKEY FUNCTIONS

A key pair is a hashref { type => 'operator'|'account'|'user', public =>
"O...", seed => "SO...", raw_seed => 32 bytes, raw_public => 32 bytes }.

=over

=item nkey_create($type)

New random Ed25519 key pair (openssl genpkey).

=item nkey_from_seed($seed)

Key pair from an encoded seed ("SA...", "SO...", "SU..."); the public key
is derived by openssl.

=item nkey_encode_public($type, $raw32), nkey_encode_seed($type, $raw32)

=item nkey_decode($text)

Checks the CRC and returns (kind, type, raw32): kind is 'public' or
'seed'; type the key type name.

=item nkey_sign($kp, $data) -> 64-byte Ed25519 signature

=item nkey_verify($public, $data, $sig) -> true when valid (openssl)

=back

=cut

my %PREFIX = (
	operator => 14 << 3,
	server   => 13 << 3,
	cluster  => 2 << 3,
	account  => 0,
	user     => 20 << 3,
);
my %PREFIX_NAME = reverse %PREFIX;
my $SEED_PREFIX = 18 << 3;

# fixed DER prefixes of Ed25519 PKCS#8 private keys and SPKI public keys
my $ED25519_PKCS8_PREFIX = pack('H*', '302e020100300506032b657004220420');
my $ED25519_SPKI_PREFIX  = pack('H*', '302a300506032b6570032100');

sub _with_crc
{
	my ($raw) = @_;
	return base32_encode($raw . pack('v', crc16($raw)));
}

sub nkey_encode_public
{
	my ($type, $raw) = @_;
	croak "unknown nkey type \"$type\"" unless exists $PREFIX{$type};
	croak "public key must be 32 bytes" unless length($raw) == 32;
	return _with_crc(pack('C', $PREFIX{$type}) . $raw);
}

sub nkey_encode_seed
{
	my ($type, $raw) = @_;
	croak "unknown nkey type \"$type\"" unless exists $PREFIX{$type};
	croak "seed must be 32 bytes" unless length($raw) == 32;
	my $p = $PREFIX{$type};
	return _with_crc(
		pack('CC', $SEED_PREFIX | ($p >> 5), ($p & 31) << 3) . $raw);
}

sub nkey_decode
{
	my ($text) = @_;
	my $bin = base32_decode($text);
	croak "nkey \"$text\" has a bad length" unless length($bin) >= 4;
	my $body = substr($bin, 0, -2);
	my $crc  = unpack('v', substr($bin, -2));
	croak "nkey \"$text\" has a bad checksum" unless crc16($body) == $crc;
	my ($b0, $b1) = unpack('CC', $body);
	if (($b0 & 0xf8) == $SEED_PREFIX && length($body) == 34)
	{
		my $p = (($b0 & 7) << 5) | (($b1 & 0xf8) >> 3);
		croak "seed \"$text\" has an unknown type" unless exists $PREFIX_NAME{$p};
		return ('seed', $PREFIX_NAME{$p}, substr($body, 2));
	}
	if (length($body) == 33 && exists $PREFIX_NAME{$b0})
	{
		return ('public', $PREFIX_NAME{$b0}, substr($body, 1));
	}
	croak "\"$text\" is not a known nkey";
}

sub _pem_private
{
	my ($raw_seed) = @_;
	return "-----BEGIN PRIVATE KEY-----\n"
	  . encode_base64($ED25519_PKCS8_PREFIX . $raw_seed)
	  . "-----END PRIVATE KEY-----\n";
}

sub _keypair
{
	my ($type, $raw_seed) = @_;
	my $spki = _openssl('pkey', '-in', '/dev/stdin', '-pubout', '-outform',
		'DER', { stdin => _pem_private($raw_seed) });
	croak "unexpected Ed25519 public key from openssl"
	  unless length($spki) == 44
	  && substr($spki, 0, 12) eq $ED25519_SPKI_PREFIX;
	my $raw_pub = substr($spki, 12);
	return {
		type       => $type,
		raw_seed   => $raw_seed,
		raw_public => $raw_pub,
		seed       => nkey_encode_seed($type, $raw_seed),
		public     => nkey_encode_public($type, $raw_pub),
	};
}

sub nkey_create
{
	my ($type) = @_;
	croak "unknown nkey type \"$type\"" unless exists $PREFIX{$type};
	my $der = _openssl('genpkey', '-algorithm', 'ed25519', '-outform', 'DER');
	croak "unexpected Ed25519 private key from openssl"
	  unless length($der) == 48
	  && substr($der, 0, 16) eq $ED25519_PKCS8_PREFIX;
	return _keypair($type, substr($der, 16));
}

sub nkey_from_seed
{
	my ($seed) = @_;
	my ($kind, $type, $raw) = nkey_decode($seed);
	croak "\"$seed\" is a public key, not a seed" unless $kind eq 'seed';
	return _keypair($type, $raw);
}

sub nkey_sign
{
	my ($kp, $data) = @_;
	my $keyf = File::Temp->new(TEMPLATE => 'nkey_XXXX', TMPDIR => 1);
	print $keyf _pem_private($kp->{raw_seed});
	close $keyf;
	my $sig = _openssl('pkeyutl', '-sign', '-rawin', '-inkey', $keyf->filename,
		'-in', '/dev/stdin', { stdin => $data });
	croak "unexpected Ed25519 signature length " . length($sig)
	  unless length($sig) == 64;
	return $sig;
}

sub nkey_verify
{
	my ($public, $data, $sig) = @_;
	my ($kind, $type, $raw) = nkey_decode($public);
	croak "\"$public\" is not a public key" unless $kind eq 'public';
	my $pubf = File::Temp->new(TEMPLATE => 'nkeypub_XXXX', TMPDIR => 1);
	print $pubf "-----BEGIN PUBLIC KEY-----\n",
	  encode_base64($ED25519_SPKI_PREFIX . $raw),
	  "-----END PUBLIC KEY-----\n";
	close $pubf;
	my $sigf = File::Temp->new(TEMPLATE => 'nkeysig_XXXX', TMPDIR => 1);
	binmode $sigf;
	print $sigf $sig;
	close $sigf;
	my $ok = eval {
		_openssl('pkeyutl', '-verify', '-rawin', '-pubin', '-inkey',
			$pubf->filename, '-sigfile', $sigf->filename, '-in', '/dev/stdin',
			{ stdin => $data });
		1;
	};
	return $ok ? 1 : 0;
}

=pod

=head1 JWT FUNCTIONS

=over

=item jwt_encode($issuer_kp, $subject_public, $name, \%nats, %opts)

Signs a v2 claim set {jti, iat, iss, name, sub, nats => {%nats, version =>
2}} with $issuer_kp (opts: exp, nbf, aud; iat => fixed issue time).
%nats must contain "type".

=item jwt_decode($jwt) -> (\%header, \%claims)

Decodes (does not verify) a JWT; nkey_verify can check the signature.

=back

=cut

sub _jti
{
	my (%c) = @_;
	# Go's json.Marshal of ClaimsData (without jti): field order aud, exp,
	# jti, iat, iss, name, nbf, sub, empty values omitted
	my @parts;
	foreach my $k (qw(aud exp jti iat iss name nbf sub))
	{
		next unless defined $c{$k} && $c{$k} ne '' && $c{$k} ne '0';
		my $v = $c{$k};
		$v = ($k eq 'exp' || $k eq 'iat' || $k eq 'nbf')
		  ? ($v + 0)
		  : JSON::PP->new->allow_nonref->encode("$v");
		push @parts, "\"$k\":$v";
	}
	return base32_encode(sha512256('{' . join(',', @parts) . '}'));
}

sub jwt_encode
{
	my ($issuer, $subject, $name, $nats, %o) = @_;
	croak "nats claims need a type" unless $nats && $nats->{type};

	# Issued a minute ago: a claim stamped "now" by this process was once
	# refused by a nats-server started the same second (all of one run's
	# users at once, while the same keys passed later), which points at
	# clock steps on the test VM.  Backdating is the usual cure for skew.
	my %std = (
		iat  => $o{iat} // time() - 60,
		iss  => $issuer->{public},
		name => $name,
		sub  => $subject,
	);
	$std{exp} = $o{exp} if $o{exp};
	$std{nbf} = $o{nbf} if $o{nbf};
	$std{aud} = $o{aud} if defined $o{aud};
	$std{jti} = _jti(%std);

	# numbers must stay JSON numbers (Go unmarshals them into int64)
	$std{$_} = 0 + $std{$_} foreach grep { exists $std{$_} } qw(iat exp nbf);
	my %claims = (%std, nats => { %$nats, version => 2 });
	my $header = b64url('{"typ":"JWT","alg":"ed25519-nkey"}');
	my $body   = b64url($json->encode(\%claims));
	my $sig    = nkey_sign($issuer, "$header.$body");
	return "$header.$body." . b64url($sig);
}

sub jwt_decode
{
	my ($jwt) = @_;
	my @p = split /\./, $jwt;
	croak "a JWT has 3 parts" unless @p == 3;
	return ($json->decode(_b64url_decode($p[0])),
		$json->decode(_b64url_decode($p[1])));
}

=pod

=head1 OPERATOR MODE

=over

=item operator_setup($dir, %opts)

Creates an operator, a system account, an account with JetStream enabled
(unlimited), and a user of that account with unlimited pub/sub; writes
files in $dir (made 0755, files 0644) and returns a hashref:

  operator_public operator_seed operator_jwt operator_jwt_file
  system_account_public system_account_seed system_account_jwt
  account_public account_seed account_jwt account_name
  user_public user_seed user_jwt user_name
  creds_file              # <dir>/user.creds (standard .creds format)
  server_conf             # operator / system_account / resolver: MEMORY /
                          # resolver_preload (no jetstream block: Nats.pm
                          # adds it)
  account_kp operator_kp user_kp system_account_kp  # key pairs (hashrefs)

opts: account_name (default "RELIQ"), user_name (default "reliq"),
operator_name (default "RELIQ_OP").

=item user_creds($setup, $dir, %opts)

Another user of the setup's account: returns { user_public, user_seed,
user_jwt, creds_file }.  opts: name (also the file name, default
"user2"), pub => \%permission, sub => \%permission (nats-io/jwt
Permission: { allow => [...], deny => [...] }), bearer => 1 (bearer token:
no nonce signature needed), exp => unix time, signer => key pair (default
the account; a different account key gives a user the server rejects).

=item other_user_creds($setup, $dir)

A user signed by a fresh account key that the server does not know:
{ account_public, user_public, user_seed, user_jwt, creds_file
(<dir>/other.creds) }.  The server must refuse it.

=item write_creds($path, $jwt, $seed)

Writes a .creds file (mode 0644) and returns $path.

=back

=cut

sub write_creds
{
	my ($path, $jwt, $seed) = @_;
	my $text = <<"EOF";
-----BEGIN NATS USER JWT-----
$jwt
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
$seed
------END USER NKEY SEED------

*************************************************************
EOF
	return _write_file($path, $text, 0644);
}

sub _user_jwt
{
	my ($signer, $user, $name, %o) = @_;
	my %nats = (
		type    => 'user',
		pub     => $o{pub} // {},
		sub     => $o{sub} // {},
		subs    => -1,
		data    => -1,
		payload => -1,
	);
	$nats{bearer_token} = JSON::PP::true if $o{bearer};
	return jwt_encode($signer, $user->{public}, $name, \%nats,
		($o{exp} ? (exp => $o{exp}) : ()));
}

sub operator_setup
{
	my ($dir, %o) = @_;
	$dir = _prepare_dir($dir);
	my $acct_name = $o{account_name}  // 'RELIQ';
	my $user_name = $o{user_name}     // 'reliq';
	my $op_name   = $o{operator_name} // 'RELIQ_OP';

	my $op   = nkey_create('operator');
	my $sys  = nkey_create('account');
	my $acct = nkey_create('account');
	my $user = nkey_create('user');

	my $op_jwt = jwt_encode($op, $op->{public}, $op_name,
		{ type => 'operator', system_account => $sys->{public} });

	my %unlimited = (
		subs      => -1,
		data      => -1,
		payload   => -1,
		imports   => -1,
		exports   => -1,
		wildcards => JSON::PP::true,
		conn      => -1,
		leaf      => -1,
	);
	# the system account must not have JetStream
	my $sys_jwt = jwt_encode($op, $sys->{public}, 'SYS',
		{
			type   => 'account',
			limits => { %unlimited },
			default_permissions => { pub => {}, sub => {} },
		});
	my $acct_jwt = jwt_encode($op, $acct->{public}, $acct_name,
		{
			type   => 'account',
			limits => {
				%unlimited,
				mem_storage  => -1,
				disk_storage => -1,
				streams      => -1,
				consumer     => -1,
			},
			default_permissions => { pub => {}, sub => {} },
		});
	my $user_jwt = _user_jwt($acct, $user, $user_name);

	my $op_file = _write_file(File::Spec->catfile($dir, 'operator.jwt'),
		"$op_jwt\n", 0644);
	my $creds = write_creds(File::Spec->catfile($dir, 'user.creds'),
		$user_jwt, $user->{seed});

	my $conf = "# operator mode (generated by ReliqTest::NatsAuth)\n"
	  . "operator: " . _q($op_jwt) . "\n"
	  . "system_account: " . _q($sys->{public}) . "\n"
	  . "resolver: MEMORY\n"
	  . "resolver_preload: {\n"
	  . "  $acct->{public}: " . _q($acct_jwt) . "\n"
	  . "  $sys->{public}: " . _q($sys_jwt) . "\n"
	  . "}\n";

	return {
		dir                   => $dir,
		operator_kp           => $op,
		operator_public       => $op->{public},
		operator_seed         => $op->{seed},
		operator_jwt          => $op_jwt,
		operator_jwt_file     => $op_file,
		system_account_kp     => $sys,
		system_account_public => $sys->{public},
		system_account_seed   => $sys->{seed},
		system_account_jwt    => $sys_jwt,
		account_kp            => $acct,
		account_public        => $acct->{public},
		account_seed          => $acct->{seed},
		account_jwt           => $acct_jwt,
		account_name          => $acct_name,
		user_kp               => $user,
		user_public           => $user->{public},
		user_seed             => $user->{seed},
		user_jwt              => $user_jwt,
		user_name             => $user_name,
		creds_file            => $creds,
		server_conf           => $conf,
	};
}

sub user_creds
{
	my ($setup, $dir, %o) = @_;
	$dir = _prepare_dir($dir);
	my $name = $o{name} // 'user2';
	croak "invalid user name \"$name\"" unless $name =~ /^[A-Za-z0-9_.-]+$/;
	my $signer = $o{signer} // $setup->{account_kp};
	my $user   = nkey_create('user');
	my $jwt    = _user_jwt($signer, $user, $name, %o);
	my $creds  = write_creds(File::Spec->catfile($dir, "$name.creds"),
		$jwt, $user->{seed});
	return {
		user_kp     => $user,
		user_public => $user->{public},
		user_seed   => $user->{seed},
		user_jwt    => $jwt,
		creds_file  => $creds,
	};
}

sub other_user_creds
{
	my ($setup, $dir) = @_;
	my $other = nkey_create('account');
	my $u = user_creds($setup, $dir, name => 'other', signer => $other);
	$u->{account_kp}     = $other;
	$u->{account_public} = $other->{public};
	return $u;
}

=pod

=head1 TLS

=over

=item tls_setup($dir, %opts)

Writes (in $dir, made 0755; files 0644) EC P-256 keys and certificates:

  ca_key ca_cert                      # test CA (self-signed)
  server_key server_cert              # CN=localhost, SAN IP:127.0.0.1, DNS:localhost
  client_key client_cert              # CN=reliq-client, signed by the CA
  wrong_ca_key wrong_ca_cert          # another CA, not trusted by the server
  wrong_client_key wrong_client_cert  # client cert signed by the wrong CA
  server_conf           # tls { cert_file key_file ca_file verify: true }
  server_conf_tls_only  # tls { cert_file key_file } (no client certs)

Each *_cert/*_key value is an absolute path.  opts: days (default 3650).

=back

=cut

sub tls_setup
{
	my ($dir, %o) = @_;
	$dir = _prepare_dir($dir);
	my $days = $o{days} // 3650;
	my %f;
	my $path = sub { File::Spec->catfile($dir, $_[0]) };

	my $genkey = sub {
		my ($file) = @_;
		_openssl('genpkey', '-algorithm', 'EC', '-pkeyopt',
			'ec_paramgen_curve:P-256', '-out', $file);
		chmod 0644, $file or croak "chmod $file: $!";
		return $file;
	};
	my $make_ca = sub {
		my ($tag, $cn) = @_;
		my $key  = $genkey->($path->("$tag.key"));
		my $cert = $path->("$tag.crt");
		_openssl('req', '-x509', '-new', '-key', $key, '-sha256', '-days',
			$days, '-subj', "/O=reliq tests/CN=$cn", '-addext',
			'basicConstraints=critical,CA:TRUE', '-addext',
			'keyUsage=critical,keyCertSign,cRLSign', '-out', $cert);
		chmod 0644, $cert or croak "chmod $cert: $!";
		return ($key, $cert);
	};
	my $make_leaf = sub {
		my ($tag, $cn, $ca_key, $ca_cert, $ext) = @_;
		my $key  = $genkey->($path->("$tag.key"));
		my $csr  = $path->("$tag.csr");
		my $cert = $path->("$tag.crt");
		my $extf = _write_file($path->("$tag.ext"), $ext, 0644);
		_openssl('req', '-new', '-key', $key, '-subj',
			"/O=reliq tests/CN=$cn", '-out', $csr);
		_openssl('x509', '-req', '-in', $csr, '-CA', $ca_cert, '-CAkey',
			$ca_key, '-CAcreateserial', '-sha256', '-days', $days,
			'-extfile', $extf, '-out', $cert);
		unlink $csr, $extf;
		chmod 0644, $cert or croak "chmod $cert: $!";
		return ($key, $cert);
	};

	@f{qw(ca_key ca_cert)} = $make_ca->('ca', 'reliq test CA');
	@f{qw(server_key server_cert)} = $make_leaf->(
		'server', 'localhost', @f{qw(ca_key ca_cert)},
		"basicConstraints=CA:FALSE\n"
		  . "keyUsage=critical,digitalSignature,keyEncipherment\n"
		  . "extendedKeyUsage=serverAuth\n"
		  . "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
	my $client_ext = "basicConstraints=CA:FALSE\n"
	  . "keyUsage=critical,digitalSignature,keyEncipherment\n"
	  . "extendedKeyUsage=clientAuth\n";
	@f{qw(client_key client_cert)} =
	  $make_leaf->('client', 'reliq-client', @f{qw(ca_key ca_cert)},
		$client_ext);
	@f{qw(wrong_ca_key wrong_ca_cert)} =
	  $make_ca->('wrong_ca', 'untrusted test CA');
	@f{qw(wrong_client_key wrong_client_cert)} =
	  $make_leaf->('wrong_client', 'reliq-client',
		@f{qw(wrong_ca_key wrong_ca_cert)}, $client_ext);
	chmod 0644, grep { -f } map { $path->($_) } qw(ca.srl wrong_ca.srl);

	$f{dir} = $dir;
	$f{server_conf} =
	    "# TLS with client certificates (generated by ReliqTest::NatsAuth)\n"
	  . "tls {\n"
	  . "  cert_file: " . _q($f{server_cert}) . "\n"
	  . "  key_file: " . _q($f{server_key}) . "\n"
	  . "  ca_file: " . _q($f{ca_cert}) . "\n"
	  . "  verify: true\n"
	  . "  timeout: 5\n"
	  . "}\n";
	$f{server_conf_tls_only} =
	    "# TLS, no client certificates (generated by ReliqTest::NatsAuth)\n"
	  . "tls {\n"
	  . "  cert_file: " . _q($f{server_cert}) . "\n"
	  . "  key_file: " . _q($f{server_key}) . "\n"
	  . "  timeout: 5\n"
	  . "}\n";
	return \%f;
}

=pod

=head1 SIMPLE AUTH

=over

=item token_conf($token)

  authorization { token: "TOKEN" }

=item userpass_conf($user, $password)

  authorization { users: [ { user: "USER", password: "PASSWORD" } ] }

Values are quoted and escaped for the server's config parser.  Note that
cnats 3.4.1 copies token, user and password into its CONNECT JSON without
escaping: a '"' or '\' in them makes the server refuse the connection
(invalid JSON, or a different value), whatever the config says.

=back

=cut

sub token_conf
{
	my ($token) = @_;
	croak "token must not be empty" unless defined $token && $token ne '';
	return "authorization {\n  token: " . _q($token) . "\n}\n";
}

sub userpass_conf
{
	my ($user, $password) = @_;
	croak "user must not be empty" unless defined $user && $user ne '';
	croak "password must not be empty"
	  unless defined $password && $password ne '';
	return "authorization {\n  users: [\n    { user: " . _q($user)
	  . ", password: " . _q($password) . " }\n  ]\n}\n";
}

1;
