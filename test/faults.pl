#!/usr/bin/perl
# test/faults.pl [--messages N] [--per-kind K] [--seed S] [--kinds K1,K2]
# [--log-level L] [--order K1,K2,...]:
# the fault suite outside prove (scripts/faults runs it); prints the
# figures.  Unlike the CI profile (test/t/011_faults.pl, which prints the
# probes' figures without a timed assertion), it fails when a probe was
# applied later than its bound (ReliqTest::Faults::probe_bound).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/perl";
use Getopt::Long;
use PostgreSQL::Test::Utils;
use Test::More;
use ReliqTest::Faults;

# PostgreSQL::Test::Utils sends STDOUT to its log file; Test::More's
# output handle still reaches the terminal.
my $out = Test::More->builder->output;

# Ctrl-C or a TERM: die, so that the END blocks of the harness stop the
# nats-servers, publishers and PostgreSQL clusters this run started.
$SIG{INT} = $SIG{TERM} = sub { die "interrupted by SIG$_[0]\n" };

my %opt = (messages => 1_000_000, 'per-kind' => 20);
GetOptions(\%opt, 'messages=i', 'per-kind=i', 'seed=i', 'kinds=s', 'log-level=s', 'order=s') or die "usage\n";
my $f = ReliqTest::Faults::run(
	messages => $opt{messages},
	per_kind => $opt{'per-kind'},
	seed     => $opt{seed},
	kinds    => $opt{kinds} ? [ split /,/, $opt{kinds} ] : undef,
	log_level => $opt{'log-level'},
	order    => $opt{order} ? [ split /,/, $opt{order} ] : undef,
	say      => sub { print $out "@_\n" });
print $out "$_\n" for ReliqTest::Faults::report($f);
my $ok = $f->{lost} == 0 && $f->{duplicated} == 0 && $f->{dead_lettered} == 0
  && $f->{probes_lost} == 0 && $f->{probes_duplicated} == 0
  && $f->{crash_restarts} == $f->{expected_restarts} && $f->{idle}
  && $f->{reliq_outlived_postmaster} == 0 && !@{ $f->{probes_over_bound} };
print $out $ok ? "PASS\n" : "FAIL\n";
exit($ok ? 0 : 1);
