# The digests follow a rotation that re-issues changes: a node that
# crashed inside a backup window rotates and gives the changes it made in
# the window new stamps (identity.c), which moves their rows' versions in
# row_version; its digests move with them.  Once the two nodes synced,
# they agree, verify() says so from the digests alone, and on each node
# the digests kept equal those rebuilt from row_version.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

my $schema = q{CREATE EXTENSION replstamp;
	CREATE TABLE t (id int PRIMARY KEY, note text);
	SELECT replstamp.track('t');};
my $a = replstamp_node('a', init => { allows_streaming => 1 },
	conf => ['replstamp.prune_interval = 0'], sql => $schema);
my $b = replstamp_node('b', conf => ['replstamp.prune_interval = 0'], sql => $schema);
add_mesh($a, $b);
my $id = sq($a, 'SELECT replica_id FROM replstamp.node');

sq($a, "INSERT INTO t SELECT g, 'before the window' FROM generate_series(1, 10) g");
sq($b, "SELECT replstamp.sync('a')");
sq($a, "SELECT replstamp.prepare_backup('never finished')");
sq($a, "INSERT INTO t SELECT g, 'in the window, pulled' FROM generate_series(11, 15) g");
sq($a, "UPDATE t SET note = 'updated in the window' WHERE id <= 3");
sq($b, "SELECT replstamp.sync('a')");
sq($a, "INSERT INTO t SELECT g, 'in the window, not pulled' FROM generate_series(16, 20) g");
# Recorded in row_version (and its digests) before the crash: the rows'
# versions the re-issue will move.
sq($a, q{SELECT replstamp.verify_digests('{"tables": ["public.t"]}') IS NOT NULL});
is(sq($a, "SELECT count(*) FROM replstamp.row_version WHERE replica_id = '$id'"), '20',
	'row_version holds the 20 rows under the old ID');
$a->stop('immediate');
start_verified($a, sub { $a->start });
isnt(sq($a, 'SELECT replica_id FROM replstamp.node'), $id, 'a rotated');
ok($a->log_contains(qr/changes the old ID made from serial \d+ on were re-issued under the new one/),
	'and re-issued the changes made in the window');

for (1 .. 2)
{
	sq($b, "SELECT replstamp.sync('a')");
	sq($a, "SELECT replstamp.sync('b')");
}
is(sq($b, 'SELECT count(*) FROM t'), '20', 'b holds every row');

is(sq($a, q{SELECT count(*) FROM replstamp.verify('b')}), '0', 'a and b agree');
is(sq($a, q{SELECT rows_read FROM replstamp.verification WHERE peer = 'b'}), '0', 'from their digests alone');
is(sq($a, q{SELECT count(*) FROM replstamp.verify('b', deep => true)}), '0', 'deep too');

my $digests = q{SELECT coalesce(md5(string_agg(relation || bucket || digest::text || nrows, ',' ORDER BY relation, bucket)), '')
                  FROM replstamp.row_digest WHERE nrows <> 0 OR digest <> decode(repeat('00', 32), 'hex')};
for my $node ($a, $b)
{
	my $kept = sq($node, $digests);
	sq($node, 'SELECT replstamp.rebuild_digests()');
	is(sq($node, $digests), $kept, $node->name . ': the digests kept are those rebuilt from row_version');
}

done_testing();
