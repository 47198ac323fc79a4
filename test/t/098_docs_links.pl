# Every relative link between the documentation pages resolves: README.md,
# CHANGELOG.md and doc/*.md, each link to a file that exists and, with an
# #anchor, to a heading of that page, as GitHub makes anchors of headings
# (lower case, punctuation but - and _ dropped, each space a -, a repeated
# heading numbered -1, -2, ...).  Links in code (fenced blocks, `spans`)
# and to other sites are not links.  One check per link.  No server needed.
#
# Copyright (c) 2026, the replstamp authors
use strict;
use warnings;
use File::Basename qw(dirname);
use File::Spec;
use Test::More;

# make installcheck runs the TAP tests from the top of the (copied) source
# tree, as test/t/080_upgrade.pl reads replstamp.control.
my @pages = ('README.md', 'CHANGELOG.md', sort glob('doc/*.md'));
ok(-f $_, "$_ exists") for @pages;
@pages = grep { -f } @pages;

# A page's lines outside fenced code blocks, inline code blanked out.
sub prose_lines
{
	my ($path) = @_;
	open(my $fh, '<', $path) or die "$path: $!";
	my ($fence, @out) = (undef);
	while (my $line = <$fh>)
	{
		if ($line =~ /^\s*(```|~~~)/)
		{
			my $mark = $1;
			if (!defined $fence) { $fence = $mark; }
			elsif ($mark eq $fence) { undef $fence; }
			push @out, '';
			next;
		}
		if (defined $fence) { push @out, ''; next; }
		$line =~ s/(`+)(.+?)\1/' ' x length($&)/ge;
		push @out, $line;
	}
	close $fh;
	return @out;
}

# GitHub's anchor of a heading's text.
sub slug
{
	my ($text) = @_;
	$text =~ s/\s+#+\s*$//;                   # closing #s
	$text =~ s/!?\[([^\]]*)\]\([^)]*\)/$1/g;  # links: their text
	$text =~ s/<[^>]+>//g;                    # HTML tags
	$text = lc $text;
	$text =~ s/[^\w\- ]//g;                   # punctuation but - and _
	$text =~ s/ /-/g;
	return $text;
}

# The anchors of each page (headings read with their code spans kept).
my %anchors;
for my $page (@pages)
{
	open(my $fh, '<', $page) or die "$page: $!";
	my ($fence, %seen) = (undef);
	while (my $line = <$fh>)
	{
		if ($line =~ /^\s*(```|~~~)/)
		{
			my $mark = $1;
			if (!defined $fence) { $fence = $mark; }
			elsif ($mark eq $fence) { undef $fence; }
			next;
		}
		next if defined $fence;
		next unless $line =~ /^#{1,6}\s+(.*?)\s*$/;
		my $s = slug($1);
		my $n = $seen{$s}++;
		$anchors{$page}{ $n ? "$s-$n" : $s } = 1;
	}
	close $fh;
}

my $links = 0;
for my $page (@pages)
{
	my $lineno = 0;
	for my $line (prose_lines($page))
	{
		$lineno++;
		my @targets;
		push @targets, $1 while $line =~ /\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g;
		push @targets, $1 if $line =~ /^\s*\[[^\]]+\]:\s*(\S+)/;    # [ref]: target
		for my $target (@targets)
		{
			next if $target =~ m{^[a-z][a-z0-9+.-]*:}i;    # http:, mailto:, ...
			$links++;
			my ($file, $anchor) = $target =~ /^([^#]*)(?:#(.*))?$/;
			my $resolved = $page;
			my $problem = '';
			if ($file ne '')
			{
				$resolved = File::Spec->abs2rel(File::Spec->rel2abs($file, dirname($page)));
				# Tidy "doc/../README.md" into "README.md".
				1 while $resolved =~ s{(^|/)(?!\.\./)[^/]+/\.\./}{$1};
				$problem = "no file $resolved" unless -e $resolved;
			}
			if (!$problem && defined $anchor)
			{
				if (!$anchors{$resolved})
				{
					$problem = "$resolved is not a Markdown page of the documentation";
				}
				elsif (!$anchors{$resolved}{$anchor})
				{
					$problem = "$resolved has no heading with the anchor #$anchor";
				}
			}
			ok($problem eq '', "$page:$lineno: link to $target resolves")
			  or diag($problem);
		}
	}
}
ok($links > 0, "the pages link to each other ($links relative links)");

done_testing();
