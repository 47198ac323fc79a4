# The prune's walk keeps, without a lookup, the changes shared memory
# knows to be their row's latest (latest.c).  A transaction that writes
# more versions of row_version than it may note (here 5, through
# replstamp.debug_latest_notes) forgets, when it commits, all that is known
# of its database: otherwise the clears it could not note would leave
# superseded versions marked as latest, and the walk would keep them.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my $a = replstamp_node('a', conf => ['replstamp.prune_interval = 0', 'replstamp.debug_latest_notes = 5'],
	sql => $TRACK_T);
my $b = replstamp_node('b', conf => ['replstamp.prune_interval = 0'], sql => $TRACK_T);
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
add_peer($b, 'a', $a);
my $id_a = sq($a, 'SELECT replica_id FROM replstamp.node');
sub log_rows { return sq($a, "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$id_a'"); }

# b pulls once: a puller that holds nothing of a yet, so a's prunes walk
# nothing of a's ID until b pulls again.
sq($b, "SELECT replstamp.sync('a')");

# Five rows; a prune reconciles them into row_version (five notes: all
# kept) and walks none of them.
sq($a, q{INSERT INTO t SELECT g, 'first' FROM generate_series(1, 5) g});
sq($a, 'SELECT replstamp.prune()');
is(log_rows(), '5', 'nothing of a is walked while b holds none of it');

# Twenty more rows, then a new version of the first five: the next prune's
# reconciliation supersedes five versions marked latest, among thirty
# notes it cannot all keep.
sq($a, q{INSERT INTO t SELECT g, 'filler' FROM generate_series(6, 25) g});
sq($a, q{UPDATE t SET v = 'second' WHERE id <= 5});
sq($a, 'SELECT replstamp.prune()');
is(log_rows(), '30', 'still nothing walked');

# b now holds everything: the walk removes the five superseded versions.
sq($b, "SELECT replstamp.sync('a')") for (1 .. 2);
sq($a, 'SELECT replstamp.prune()');
is(log_rows(), '25', 'the five superseded versions are removed: one change per row');
is(sq($a, q{SELECT count(*) FROM replstamp.changes c JOIN replstamp.row_version v USING (replica_id, serial)}),
	'25', 'every change left is its row\'s latest');
is(sq($b, q{SELECT string_agg(DISTINCT v, ',' ORDER BY v) FROM t}), 'filler,second', 'b holds the latest versions');

# Within the limit, the same sequence keeps the bits (the walk keeps the
# latest without lookups) and removes the superseded versions as well.
sq($a, "ALTER SYSTEM SET replstamp.debug_latest_notes = 1048576; SELECT pg_reload_conf()");
sq($a, q{UPDATE t SET v = 'third' WHERE id <= 5});
sq($a, 'SELECT replstamp.prune()');
sq($b, "SELECT replstamp.sync('a')") for (1 .. 2);
sq($a, 'SELECT replstamp.prune()');
is(log_rows(), '25', 'after another round of updates: one change per row again');

done_testing();
