# doc/reference.md documents everything the extension installs: every
# function and procedure (with each of its arguments), view, table,
# sequence and event trigger of a fresh CREATE EXTENSION replstamp, and
# every replstamp.* setting the preloaded library defines.  One check per
# object, named after it, so that a new object without an entry fails here.
#
# An entry is a Markdown heading that names the object in backquotes,
# `replstamp.name` (a function: `replstamp.name(`; a setting: its full
# name; an event trigger: its name); a function's entry, from its heading
# to the next heading, names each of its input arguments (or, unnamed, its
# type).  Objects nobody calls or reads have their entries in the section
# "Internal" of reference.md.
#
# Copyright (c) 2026, the replstamp authors
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

# make installcheck runs the TAP tests from the top of the (copied) source
# tree, as test/t/080_upgrade.pl reads replstamp.control.
my $path = 'doc/reference.md';
open(my $fh, '<', $path) or BAIL_OUT("cannot read $path from " . `pwd` . ": $!");
my @lines = <$fh>;
close $fh;

# The entries: heading line => text from it to the next heading.
my @entries;
for my $line (@lines)
{
	if ($line =~ /^#{1,6}\s/)
	{
		push @entries, { heading => $line, text => $line };
	}
	elsif (@entries)
	{
		$entries[-1]{text} .= $line;
	}
}
ok(scalar @entries > 0, "$path has headings");

my $node = replstamp_node('main', sql => 'CREATE EXTENSION replstamp');

# The objects: members of the extension and anything in its schema.
my $objects = $node->safe_psql('postgres', q{
	WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'replstamp'),
	members AS (
		SELECT classid, objid FROM pg_depend, ext
		 WHERE refclassid = 'pg_extension'::regclass AND refobjid = ext.oid AND deptype = 'e'
	)
	SELECT CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END, p.proname,
		   coalesce((SELECT string_agg(coalesce(nullif(a.n, ''), format_type(a.t, NULL)), ' ' ORDER BY a.o)
			  FROM unnest(coalesce(p.proallargtypes, p.proargtypes::oid[]),
						  coalesce(p.proargmodes, array_fill('i'::"char", ARRAY[p.pronargs])),
						  coalesce(p.proargnames, array_fill(''::text, ARRAY[p.pronargs])))
				   WITH ORDINALITY AS a(t, m, n, o)
			 WHERE a.m IN ('i', 'b', 'v')), '')
	  FROM pg_proc p
	 WHERE p.oid IN (SELECT objid FROM members WHERE classid = 'pg_proc'::regclass)
		OR p.pronamespace = 'replstamp'::regnamespace
	UNION
	SELECT CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'view' WHEN 'S' THEN 'sequence' ELSE 'table' END,
		   c.relname, ''
	  FROM pg_class c
	 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
	   AND (c.oid IN (SELECT objid FROM members WHERE classid = 'pg_class'::regclass)
			OR c.relnamespace = 'replstamp'::regnamespace)
	UNION
	SELECT 'event trigger', e.evtname, ''
	  FROM pg_event_trigger e
	 WHERE e.oid IN (SELECT objid FROM members WHERE classid = 'pg_event_trigger'::regclass)
	UNION
	SELECT 'setting', name, '' FROM pg_settings WHERE name LIKE 'replstamp.%'
	ORDER BY 1, 2, 3
});

my @objects = map { [ split /\|/, $_, -1 ] } split /\n/, $objects;
# A sanity floor: the query found what the extension surely has.
ok((grep { $_->[1] eq 'track' } @objects) && (grep { $_->[1] eq 'replstamp.sync_interval' } @objects)
	  && (grep { $_->[0] eq 'view' } @objects) && (grep { $_->[0] eq 'table' } @objects),
	'the catalog lists functions, views, tables and settings of replstamp');

for my $o (@objects)
{
	my ($kind, $name, $args) = @$o;
	my $pattern =
		$kind eq 'setting'       ? qr/`\Q$name\E[` ]/
	  : $kind eq 'event trigger' ? qr/`\Q$name\E`/
	  : $kind =~ /^(function|procedure)$/ ? qr/`replstamp\.\Q$name\E\(/
	  :                            qr/`replstamp\.\Q$name\E[` ]/;
	my @found = grep { $_->{heading} =~ $pattern } @entries;
	my $label = $kind =~ /^(function|procedure)$/ ? "replstamp.$name($args)" : $name;
	$label = "replstamp.$name" if $kind =~ /^(view|table|sequence)$/;
	my $missing = '';
	if (!@found)
	{
		$missing = 'no heading names it';
	}
	elsif ($args ne '')
	{
		# Some entry of that name (overloads have one each) names every argument.
		my $complete = grep {
			my $text = $_->{text};
			!grep { $text !~ /\b\Q$_\E\b/ } split / /, $args
		} @found;
		$missing = "its entry does not name every argument ($args)" unless $complete;
	}
	ok($missing eq '', "$path documents $kind $label")
	  or diag("$kind $label: $missing");
}

done_testing();
