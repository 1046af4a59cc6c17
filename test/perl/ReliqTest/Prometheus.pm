# ReliqTest::Prometheus: a strict parser of the Prometheus text exposition
# format (0.0.4), for tests.  parse() dies on the first violation:
#   - every sample belongs to a family declared by a TYPE line before it
#     (histograms: NAME_bucket, NAME_sum, NAME_count);
#   - metric and label names are valid, label values are quoted with valid
#     escapes, values are floats (or +Inf, -Inf, NaN);
#   - HELP and TYPE appear once per family; counters end in _total;
#   - histogram buckets are cumulative, their le bounds increase and end
#     with +Inf equal to _count.
# Returns { families => { name => type }, samples => [ [name, {labels}, value] ] }.
package ReliqTest::Prometheus;

use strict;
use warnings;
use Exporter 'import';

our @EXPORT_OK = qw(parse_exposition sample_value);

my $NAME  = qr/[a-zA-Z_:][a-zA-Z0-9_:]*/;
my $LABEL = qr/[a-zA-Z_][a-zA-Z0-9_]*/;
my $VALUE = qr/[-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|Inf|NaN)/;

sub parse_exposition
{
	my ($text) = @_;
	my (%type, %help, @samples);
	my $n = 0;
	for my $line (split /\n/, $text)
	{
		$n++;
		next if $line eq '';
		if ($line =~ /^# HELP ($NAME) (.*)$/)
		{
			die "line $n: second HELP for $1\n" if $help{$1}++;
			next;
		}
		if ($line =~ /^# TYPE ($NAME) (counter|gauge|histogram|summary|untyped)$/)
		{
			my ($family, $kind) = ($1, $2);
			die "line $n: second TYPE for $family\n" if exists $type{$family};
			die "line $n: counter $family does not end in _total\n"
			  if $kind eq 'counter' && $family !~ /_total$/;
			$type{$family} = $kind;
			next;
		}
		die "line $n: unexpected comment: $line\n" if $line =~ /^#/;
		$line =~ /^($NAME)(?:\{(.*)\})? ($VALUE)$/
		  or die "line $n: not a sample: $line\n";
		my ($name, $labels, $value) = ($1, $2 // '', $3);
		my %labels;
		while ($labels ne '')
		{
			$labels =~ s/^($LABEL)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)//
			  or die "line $n: bad labels: $labels\n";
			die "line $n: label $1 twice\n" if exists $labels{$1};
			$labels{$1} = $2;
		}
		my $family = $name;
		if (!exists $type{$family})
		{
			($family = $name) =~ s/_(bucket|sum|count)$//;
			die "line $n: sample $name has no TYPE\n"
			  unless exists $type{$family} && $type{$family} eq 'histogram';
		}
		push @samples, [ $name, \%labels, $value ];
	}
	# histograms: cumulative buckets ending in +Inf == _count
	for my $family (grep { $type{$_} eq 'histogram' } keys %type)
	{
		my %series;
		for my $s (@samples)
		{
			next unless $s->[0] eq "${family}_bucket";
			my $le = $s->[1]{le} // die "$family bucket without le\n";
			push @{ $series{ series_key($s->[1]) } }, [ $le, $s->[2] ];
		}
		for my $key (keys %series)
		{
			my @b = @{ $series{$key} };
			die "$family\{$key}: last bucket is not +Inf\n" unless $b[-1][0] eq '+Inf';
			for my $i (1 .. $#b)
			{
				die "$family\{$key}: le not increasing\n"
				  unless $b[$i][0] eq '+Inf' || $b[$i][0] > $b[ $i - 1 ][0];
				die "$family\{$key}: buckets not cumulative\n" if $b[$i][1] < $b[ $i - 1 ][1];
			}
			my ($count) = map { $_->[2] }
			  grep { $_->[0] eq "${family}_count" && series_key($_->[1]) eq $key } @samples;
			die "$family\{$key}: +Inf bucket differs from _count\n"
			  unless defined $count && $count == $b[-1][1];
		}
	}
	return { families => \%type, samples => \@samples };
}

# The labels of a sample but le, as one string.
sub series_key
{
	my %labels = %{ $_[0] };
	delete $labels{le};
	return join ',', map { "$_=$labels{$_}" } sort keys %labels;
}

# The value of the sample with this name and these labels, or undef.
sub sample_value
{
	my ($parsed, $name, %labels) = @_;
	for my $s (@{ $parsed->{samples} })
	{
		next unless $s->[0] eq $name;
		next if grep { ($s->[1]{$_} // "\0") ne $labels{$_} } keys %labels;
		return $s->[2];
	}
	return undef;
}

1;
