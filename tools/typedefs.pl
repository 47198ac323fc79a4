#!/usr/bin/perl
# Prints the type names that typedefs in the given C files declare, one a
# line: the typedefs list pgindent needs (tools/pgindent.sh).  A header-level
# scan, not a compiler's: it reads "typedef ... name;", "typedef struct
# {...} name;" and "typedef ret (*name) (args);" with comments removed.
#
# Copyright (c) 2026, the replstamp authors
# Distributed under the PostgreSQL License: see LICENSE.
use strict;
use warnings;

my %names;
for my $file (@ARGV)
{
	open(my $fh, '<', $file) or die "$file: $!\n";
	local $/;
	my $text = <$fh>;
	close $fh;
	$text =~ s{/\*.*?\*/}{ }gs;
	$text =~ s{//[^\n]*}{}g;
	$text =~ s{^[ \t]*#[^\n]*(?:\\\n[^\n]*)*}{}gm;	# preprocessor lines
	while ($text =~ /\btypedef\b((?:[^;{}]|(\{(?:[^{}]|(?2))*\}))*);/g)
	{
		my $decl = $1;
		1 while $decl =~ s/\{[^{}]*\}/ /g;
		if ($decl =~ /\(\s*\*\s*(\w+)\s*\)\s*\(/)
		{
			$names{$1} = 1;			# pointer to function
			next;
		}
		if ($decl =~ /(\w+)\s*\([^()]*(?:\([^()]*\)[^()]*)*\)\s*$/)
		{
			$names{$1} = 1;			# function type
			next;
		}
		$decl =~ s/\[[^\]]*\]//g;
		$decl =~ s/\b(?:pg_attribute_\w+|__attribute__)\s*\((?:[^()]|\([^()]*\))*\)//g;
		for my $part (split /,/, $decl)
		{
			$names{$1} = 1 if $part =~ /(\w+)\s*$/;
		}
	}
}
print "$_\n" for sort keys %names;
