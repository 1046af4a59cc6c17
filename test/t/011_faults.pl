# The fault suite, CI profile: about 20,000 messages while 3 faults of
# each kind fire at random moments (ReliqTest::Faults lists them).  The
# long profile (1,000,000 messages, 20 of each) is scripts/faults, run by
# hand.  Seed with RELIQ_FAULT_SEED to replay an order of faults.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use ReliqTest::Faults;

my $f = ReliqTest::Faults::run(
	messages => $ENV{RELIQ_FAULT_MESSAGES} // 20000,
	per_kind => $ENV{RELIQ_FAULT_PER_KIND} // 3,
	seed     => $ENV{RELIQ_FAULT_SEED},
	say      => sub { diag(@_) });
diag($_) for ReliqTest::Faults::report($f);

is($f->{published}, $f->{messages}, 'every message published (acked by JetStream)');
ok($f->{idle}, 'drained after the faults');
is($f->{lost}, 0, 'none lost');
is($f->{duplicated}, 0, 'none applied twice');
is("$f->{probes_lost}|$f->{probes_duplicated}", '0|0', 'every probe applied once');
is($f->{dead_lettered}, 0, 'nothing dead-lettered');
is($f->{crash_restarts}, $f->{expected_restarts},
	'the postmaster crash-restarted only after the test killed a worker');
is($f->{reliq_outlived_postmaster}, 0,
	'no reliq process outlived a killed postmaster (each exited by itself)');
for my $kind (@ReliqTest::Faults::KINDS)
{
	is($f->{faults}{$kind}, $ENV{RELIQ_FAULT_PER_KIND} // 3, "$kind fired");
}
done_testing();
