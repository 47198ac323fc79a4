# Rules of the C sources that the compiler does not check.
#
# 1. No return, break, continue or goto leaves a PG_TRY, PG_CATCH or
#    PG_FINALLY block (PostgreSQL's own rule, src/include/utils/elog.h):
#    the blocks are the body of a do { } while (0), so a "continue" in a
#    PG_CATCH only leaves that do-while, skips the restoring of the
#    exception stack, and the code after PG_END_TRY runs as if nothing had
#    failed.  A page of changes that failed was dropped that way while
#    every peer showed 'ok' (issue 19).  A break or continue is allowed
#    where it stays inside a loop (or a switch, for break) that is itself
#    inside the block.
# 2. Every source file includes errors.h, which sets replstamp's message
#    domain: src/errors.c tells replstamp's own messages (which never quote
#    row values) from PostgreSQL's by it.
#
# Copyright (c) 2026, the replstamp authors
use strict;
use warnings;
use Test::More;

# The C text with comments, strings and character constants blanked out
# (newlines kept, for line numbers).
sub blank_c
{
	my ($text) = @_;
	$text =~ s{(/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')}{
		my $m = $1; $m =~ s/[^\n]/ /g; $m }gse;
	return $text;
}

# Tokens of interest with their line numbers.
sub tokens
{
	my ($text) = @_;
	my @t;
	my $line = 1;
	while ($text =~ /(\n)|([A-Za-z_][A-Za-z_0-9]*)|([{}();])/g)
	{
		if (defined $1) { $line++; next; }
		push @t, [ defined $2 ? $2 : $3, $line ];
	}
	return @t;
}

# The jumps that leave a PG_TRY block, as "line N: keyword".
sub jumps_out_of_try
{
	my ($text) = @_;
	my @t = tokens(blank_c($text));
	my @found;
	my $depth = 0;    # brace depth
	my $paren = 0;    # parenthesis depth
	# One entry per PG_TRY being walked: its scopes (loops and switches
	# that began inside it), each { kind, depth at which its body ends,
	# whether the body is one statement }.
	my @regions;
	my $pending;      # a loop or switch keyword whose body comes next
	for (my $i = 0; $i < @t; $i++)
	{
		my ($tok, $line) = @{ $t[$i] };
		if ($tok eq 'PG_TRY') { push @regions, []; next; }
		if ($tok eq 'PG_END_TRY') { pop @regions; next; }
		if ($tok eq '(') { $paren++; next; }
		if ($tok eq ')')
		{
			$paren--;
			# The header of a for, while or switch is over: its body follows.
			if ($pending && $paren == $pending->{paren})
			{
				my $next = $t[ $i + 1 ] ? $t[ $i + 1 ][0] : '';
				if ($next eq '{')
				{
					$pending->{end_depth} = $depth;
				}
				else
				{
					$pending->{stmt} = 1;
					$pending->{end_depth} = $depth;
				}
				push @{ $regions[-1] }, $pending if @regions;
				$pending = undef;
			}
			next;
		}
		if ($tok eq '{') { $depth++; next; }
		if ($tok eq '}')
		{
			$depth--;
			if (@regions)
			{
				my $s = $regions[-1];
				pop @$s while @$s && !$s->[-1]{stmt} && $depth <= $s->[-1]{end_depth};
			}
			next;
		}
		if ($tok eq ';')
		{
			if (@regions && $paren == 0)
			{
				my $s = $regions[-1];
				pop @$s while @$s && $s->[-1]{stmt} && $depth <= $s->[-1]{end_depth};
			}
			next;
		}
		next unless @regions;
		if ($tok =~ /^(for|while|switch)$/)
		{
			$pending = { kind => $tok eq 'switch' ? 'switch' : 'loop', paren => $paren };
			next;
		}
		if ($tok eq 'do')
		{
			push @{ $regions[-1] }, { kind => 'loop', end_depth => $depth };
			next;
		}
		my $scopes = $regions[-1];
		if ($tok eq 'return' || $tok eq 'goto')
		{
			push @found, "line $line: $tok";
		}
		elsif ($tok eq 'break')
		{
			push @found, "line $line: break" unless @$scopes;
		}
		elsif ($tok eq 'continue')
		{
			push @found, "line $line: continue" unless grep { $_->{kind} eq 'loop' } @$scopes;
		}
	}
	return @found;
}

# Negative controls: the checker sees the jump that dropped failed pages,
# and the others, and lets loops inside a block be.
is_deeply(
	[
		jumps_out_of_try(
			"for (;;) {\n PG_TRY();\n { f(); }\n PG_CATCH();\n { if (x) PG_RE_THROW();\n continue;\n }\n PG_END_TRY();\n break;\n}\n"
		)
	],
	['line 6: continue'],
	'the checker finds a continue in a PG_CATCH (the dropped-page bug)');
is_deeply(
	[
		jumps_out_of_try(
			"PG_TRY();\n{\n if (a) return;\n while (b) { if (c) break; else continue; }\n"
			  . " for (i = 0; i < n; i++)\n  if (d) break;\n switch (e) { case 1: break; }\n"
			  . " do { continue; } while (0);\n if (f) goto out;\n break;\n}\nPG_FINALLY();\n{ g(); }\nPG_END_TRY();\n"
		)
	],
	[ 'line 3: return', 'line 9: goto', 'line 10: break' ],
	'the checker finds return, goto and a bare break, and allows jumps within inner loops and switches');
is_deeply([ jumps_out_of_try("PG_TRY();\n{ /* return */ s = \"break;\"; }\nPG_END_TRY();\nreturn;\n") ],
	[], 'the checker ignores comments, strings and code after PG_END_TRY');

my @files = sort glob('src/*.c');
ok(@files > 10, 'the sources are found (' . scalar(@files) . ' files in src/)');
for my $f (@files)
{
	open(my $fh, '<', $f) or die "$f: $!";
	my $text = do { local $/; <$fh> };
	close $fh;
	my @j = jumps_out_of_try($text);
	is(join(', ', @j), '', "$f: no return, break, continue or goto leaves a PG_TRY block");
	like($text, qr/^#include "errors\.h"$/m, "$f: includes errors.h (replstamp's message domain)");
}

done_testing();
