# Nodes of different PostgreSQL major releases replicate with each other:
# a 15 node, a 17 node and an 18 node in one mesh.  The 18 node joins with
# replstamp.join() through the 15 node; each writes, conflicting rows
# included; after syncs every node holds the same rows and the same change
# log, and verify() finds nothing between the oldest and the newest major.
# The row images, the stamps, the digests and the protocol are the same
# whatever major serves or applies them.
#
# test/run builds replstamp against each major and names the installations
# in REPLSTAMP_INSTALL_PG15, REPLSTAMP_INSTALL_PG17 and REPLSTAMP_INSTALL_PG18
# (17 and 18 fetched by test/pg_major.sh into its cache).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my @majors = (15, 17, 18);
my @missing = grep { !$ENV{"REPLSTAMP_INSTALL_PG$_"} } @majors;
plan skip_all => 'no installation of PostgreSQL ' . join(' and ', @missing)
  . ' (test/run builds them; set REPLSTAMP_INSTALL_PG<major>)'
  if @missing;

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

my $schema = q{
	CREATE EXTENSION replstamp;
	CREATE TABLE t (id int PRIMARY KEY, v text, n numeric, d timestamptz, j jsonb, a int[]);
	SELECT replstamp.track('t');
};
my %n = map { $_ => replstamp_node("pg$_", install => $ENV{"REPLSTAMP_INSTALL_PG$_"}, sql => $schema) }
  @majors;
my ($n15, $n17, $n18) = @n{@majors};
like(sq($n{$_}, 'SELECT version()'), qr/^PostgreSQL $_\./, "node pg$_ runs PostgreSQL $_") for @majors;

# 15 and 17 by add_peer, both ways; 18 joins the mesh through 15.
add_peer($n15, 'pg17', $n17);
add_peer($n17, 'pg15', $n15);
is(sq($n18, "SELECT string_agg(node || ' ' || action, '; ' ORDER BY node) FROM replstamp.join(\$\$"
	  . $n15->connstr('postgres') . "\$\$, name => 'pg18')"),
	'pg15 there: added; here: added; pg17 there: added; here: added',
	'the 18 node joins through the 15 node and is added on both others');

# Each writes its own rows, of types whose binary and text forms matter,
# and all three update one row.
for my $m (@majors)
{
	sq($n{$m}, qq{INSERT INTO t SELECT g, 'from $m', g / 7.0, '2026-01-01 00:00+00'::timestamptz + g * interval '1 hour',
		jsonb_build_object('major', $m, 'g', g), ARRAY[g, $m] FROM generate_series($m * 100, $m * 100 + 49) g});
	sq($n{$m}, qq{INSERT INTO t VALUES (1, 'contended', $m) ON CONFLICT (id) DO UPDATE SET v = 'updated on $m', n = $m});
}
for (1 .. 2)
{
	sq($n{$_}, 'SELECT replstamp.sync_all()') for @majors;
}
my $state = wait_converged([ $n15, $n17, $n18 ], ['t'], 'after each major wrote');
like($state, qr/^t 151:/, 'every node holds the 150 rows of the three and the contended one');
is(sq($_, 'SELECT count(DISTINCT replica_id) FROM replstamp.changes'), '3',
	$_->name . ' holds changes stamped by all three replica IDs') for ($n15, $n17, $n18);

# A second round through each: an 18 update reaches 15 through 17 alone.
sq($n15, q{SELECT replstamp.drop_peer('pg18')});
sq($n18, q{UPDATE t SET v = 'changed on 18' WHERE id = 1500});
sq($n17, q{SELECT replstamp.sync('pg18')});
sq($n15, q{SELECT replstamp.sync('pg17')});
is(sq($n15, 'SELECT v FROM t WHERE id = 1500'), 'changed on 18', 'an 18 change reaches 15 relayed by 17');

# verify() between the oldest and the newest major: digests agree.
add_peer($n15, 'pg18', $n18);
sq($_, 'SELECT replstamp.sync_all()') for ($n18, $n15);
wait_converged([ $n15, $n17, $n18 ], ['t'], 'after the relay');
is(sq($n15, q{SELECT count(*) FROM replstamp.verify('pg18')}), '0', 'verify() on 15 against 18 finds no difference');
is(sq($n18, q{SELECT count(*) FROM replstamp.verify('pg15')}), '0', 'verify() on 18 against 15 finds no difference');

$_->stop for ($n15, $n17, $n18);
done_testing();
