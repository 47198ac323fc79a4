# Restores and pruning: a copy restored from a backup taken before pruning
# rotates and pulls back what it lost from what its peer kept; restored
# twice, with everything pruned, the retired replica IDs leave every
# vector instead of piling up; a copy of a plain pg_basebackup (its old ID
# claimed from nothing) that is older than the tombstones its peer dropped
# is refused, never allowed to bring deleted rows back.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;
require_programs('pg_basebackup');

my $schema = q{CREATE EXTENSION replstamp;
	CREATE TABLE accounts (id int PRIMARY KEY, note text);
	SELECT replstamp.track('accounts');};
my @conf = ('replstamp.prune_interval = 0');
my $a = replstamp_node('a', init => { allows_streaming => 1 }, conf => \@conf, sql => $schema);
my $b = replstamp_node('b', conf => \@conf, sql => $schema);
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
sub content { my ($n) = @_; return sq($n, "SELECT string_agg(format('%s:%s', id, note), ',' ORDER BY id) FROM accounts"); }
sub id_of { my ($n) = @_; return sq($n, 'SELECT replica_id FROM replstamp.node'); }
sub vector { my ($n) = @_;
	return sq($n, "SELECT string_agg(replica_id::text, ',' ORDER BY replica_id) FROM replstamp.vector"); }
sub ids { return join(',', sort @_); }
add_peer($a, 'b', $b);
add_peer($b, 'a', $a);
# Both ways, twice: the second round tells each what its puller holds.
sub round { my @n = @_; for (1 .. 2) { sq($_, 'SELECT replstamp.sync_all()') for @n; } }
sub prune_all { my @n = @_; round(@n); sq($_, 'SELECT replstamp.prune()') for @n; }
# A copy of $from's backup $name, restored, rotated, b pulling from it.
sub restore
{
	my ($from, $name, $new) = @_;
	$from->stop('immediate');
	my $r = PostgreSQL::Test::Cluster->new($new);
	$r->init_from_backup($from, $name);
	start_verified($r, sub { $r->start });
	sq($b, "UPDATE replstamp.peer SET conninfo = \$\$" . $r->connstr('postgres') . "\$\$ WHERE name = 'a'");
	return $r;
}

sq($a, "INSERT INTO accounts SELECT g, 'first' FROM generate_series(1, 12) g");
round($a, $b);
my $id_a = id_of($a);
my $id_b = id_of($b);

# Two backups: one of replstamp's own (marked), one plain pg_basebackup.
sq($a, "CALL replstamp.backup('" . $a->backup_dir . "/marked')");
# (A copy of a node that never recorded its lowest uncommitted serial, as
# after archive recovery in 031: it claims nothing of the old ID.)
sq($a, 'DELETE FROM replstamp.lus_mark');
$a->backup('plain');

# After them: updates, deletes, inserts; then everything every node holds
# is pruned on both.
sq($a, "UPDATE accounts SET note = 'second' WHERE id <= 6");
sq($a, "UPDATE accounts SET note = 'third' WHERE id <= 3");
sq($a, 'DELETE FROM accounts WHERE id IN (11, 12)');
sq($a, "INSERT INTO accounts SELECT g, 'after backup' FROM generate_series(13, 15) g");
prune_all($a, $b);
is(sq($b, "SELECT count(*) FROM replstamp.changes c WHERE NOT EXISTS (SELECT 1 FROM replstamp.row_version v
	WHERE v.replica_id = c.replica_id AND v.serial = c.serial)"), '0', 'b keeps only the latest change of each row');
my $expected = content($b);
my $p;

# 1. a is lost; its copy from before the pruning rotates and converges
# from what b kept.
my $a2 = restore($a, 'marked', 'a2');
my $id_a2 = id_of($a2);
isnt($id_a2, $id_a, 'the restored copy rotates');
is(sq($a2, 'SELECT count(*) FROM accounts WHERE id IN (11, 12, 13)'), '2', 'it lost what a did after the backup');
sq($a2, "SELECT replstamp.sync('b')");
is(content($a2), $expected, 'it pulls back from what b kept: updates, deletes and inserts');
sq($a2, "UPDATE accounts SET note = 'by a2'");
round($a2, $b);
is(content($b), content($a2), 'b gets what the copy writes');
is(sq($b, "SELECT retired FROM replstamp.vector_state WHERE replica_id = '$id_a'"), 't',
	'b learns that a\'s ID is retired');

# 2. Restored once more (a2 from a backup of its own), then every row is
# written again and everything is pruned: the retired IDs leave the
# vectors, except a's, whose two tombstones are the latest changes of
# rows 11 and 12.
sq($a2, "CALL replstamp.backup('" . $a2->backup_dir . "/marked')");
sq($a2, "UPDATE accounts SET note = 'lost with a2' WHERE id = 1");
round($a2, $b);
my $a3 = restore($a2, 'marked', 'a3');
my $id_a3 = id_of($a3);
sq($a3, "SELECT replstamp.sync('b')");
is(content($a3), content($b), 'the second copy converges too');
sq($a3, "UPDATE accounts SET note = 'by a3'");
# Every write from another replica ID is a conflict ('overwrote'): they
# are listed for an hour, with copies of the versions they replaced, and
# hold nothing back.
round($a3, $b);
# a3 prunes first: a2's ID, all held by b, leaves its vector; then its
# next handshake no longer names that ID, which b must not take for
# "holds nothing of it".
sq($a3, 'SELECT replstamp.prune()');
round($a3, $b);
sq($b, 'SELECT replstamp.prune()');
prune_all($a3, $b);
is(content($a3), content($b), 'a3 and b hold the same rows');
is(vector($b), ids($id_b, $id_a, $id_a3), 'b\'s vector: a3\'s ID, and a\'s for its tombstones; a2\'s left');
is(vector($a3), ids($id_a, $id_a3), 'a3\'s vector: the same');
is(sq($a3, "SELECT string_agg(replica_id::text, ',' ORDER BY replica_id) FROM replstamp.replica_history WHERE NOT in_vector"),
	$id_a2, 'a3\'s history keeps a2\'s ID, out of the vector');

# A manual rotation, then more writes: that retired ID leaves too, though
# the vector's entry of an ID all made here follows the lowest
# uncommitted serial, which keeps moving.
sq($a3, "SELECT replstamp.rotate('test')");
my $id_a4 = id_of($a3);
sq($a3, "UPDATE accounts SET note = 'by a4'");
round($a3, $b);
# a3 writes right before it prunes, as a busy node does.
for my $i (1 .. 2)
{
	round($a3, $b);
	sq($a3, "INSERT INTO accounts VALUES (100 + $i, 'later')");
	sq($a3, 'SELECT replstamp.prune()');
	sq($b, 'SELECT replstamp.prune()');
}
is(vector($b), ids($id_b, $id_a, $id_a4), 'b\'s vector after a manual rotation: the new ID (and a\'s)');
is(vector($a3), ids($id_a, $id_a4), 'a3\'s vector: the same');

# 3. The tombstones are dropped: a's ID leaves the vectors too.
for my $n ($a3, $b)
{
	sq($n, "ALTER SYSTEM SET replstamp.tombstone_lifetime = '1s'; SELECT pg_reload_conf()");
	$n->poll_query_until('postgres', q{SELECT replstamp.prune() >= 0 AND EXISTS (SELECT 1 FROM replstamp.purged)})
	  or die $n->name . ' dropped no tombstone';
}
prune_all($a3, $b);
is(vector($b), ids($id_b, $id_a4), 'b\'s vector: its own ID and a3\'s current one');
is(vector($a3), $id_a4, 'a3\'s vector: its current ID (b stamped nothing)');

# 4. A pg_basebackup of a taken without the backup mark, before a deleted
# rows 11 and 12, and before any LUS was recorded: its copy claims
# nothing of a's old ID, yet holds a's rows.  b dropped the tombstones of
# those deletes: the copy is refused both ways.
$p = PostgreSQL::Test::Cluster->new('plaincopy');
$p->init_from_backup($a, 'plain');
start_verified($p, sub { $p->start });
is(sq($p, "SELECT serial FROM replstamp.vector_state WHERE replica_id = '$id_a'"), '0',
	'the plain copy claims nothing of a\'s old ID');
is(sq($p, 'SELECT count(*) FROM accounts WHERE id IN (11, 12)'), '2', 'but holds the rows a deleted');
my ($rc, $out, $err) = $p->psql('postgres', "SELECT replstamp.sync('b')");
like($err, qr/is too far behind to pull from here/, 'it is refused by b');
is(sq($p, 'SELECT count(*) FROM accounts WHERE id IN (11, 12)'), '2', 'and pulled nothing');
sq($b, "SELECT replstamp.add_peer('p', \$\$" . $p->connstr('postgres') . "\$\$)");
($rc, $out, $err) = $b->psql('postgres', "SELECT replstamp.sync('p')");
like($err, qr/peer "p" is too far behind to pull from/, 'nor does b pull from it');
is(sq($b, 'SELECT count(*) FROM accounts WHERE id IN (11, 12)'), '0', 'the deleted rows stay deleted on b');

$_->stop for ($a3, $b, $p);
done_testing();
