# Tombstones: the latest change of a deleted row is kept for
# replstamp.tombstone_lifetime, so a node away for less than that gets the
# delete and cannot bring the row back, even once forgotten as a puller;
# then it is dropped, and a node away for longer is refused in both
# directions (SQLSTATE 72000, with a hint), while a node that kept syncing
# is not, even when a tombstone reached its peer only once it was already
# older than the lifetime.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my $schema = q{CREATE EXTENSION replstamp;
	CREATE TABLE accounts (id int PRIMARY KEY, note text);
	SELECT replstamp.track('accounts');};
my @conf = ('replstamp.prune_interval = 0');
my ($a, $b, $e) = map { replstamp_node($_, conf => \@conf, sql => $schema) } qw(a b e);
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
sub ids { my ($n, $where) = @_;
	return sq($n, "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM accounts WHERE $where"); }
sub content { my ($n) = @_; return sq($n, "SELECT string_agg(format('%s:%s', id, note), ',' ORDER BY id) FROM accounts"); }
# a <-> b, a <-> e.
add_peer($a, 'b', $b); add_peer($b, 'a', $a);
add_peer($a, 'e', $e); add_peer($e, 'a', $a);
sub round { for (1 .. 2) { sq($_, 'SELECT replstamp.sync_all()') for ($a, $b, $e); } }

sq($a, "INSERT INTO accounts SELECT g, 'a' FROM generate_series(1, 9) g");
round();
is(ids($e, 'true'), '1,2,3,4,5,6,7,8,9', 'e holds the nine rows');
my $id_e = sq($e, 'SELECT replica_id FROM replstamp.node');

# 1. e goes away after updating row 1; a deletes rows 1 and 2 later.
sq($e, "UPDATE accounts SET note = 'e, before the delete' WHERE id = 1");
sq($a, 'DELETE FROM accounts WHERE id IN (1, 2)');
sq($b, "SELECT replstamp.sync('a')") for (1 .. 2);
sq($a, "SELECT replstamp.sync('b')");
# A DBA forgets e as a puller: nothing holds a's pruning back but b.
is(sq($a, "SELECT replstamp.drop_puller('$id_e')"), 't', 'a forgets e');
ok(sq($a, 'SELECT replstamp.prune()') > 0, 'a prunes what b holds');
is(sq($a, q{SELECT count(*) FROM replstamp.changes c JOIN replstamp.row_version v USING (replica_id, serial)
	WHERE v.deleted}), '2', 'the two tombstones stay in the log');
is(sq($a, 'SELECT count(*) FROM replstamp.purged'), '0', 'none was dropped');
my ($rc, $out, $err) = $e->psql('postgres', "SELECT replstamp.sync('a')");
is($rc, 0, 'e, away for less than the lifetime, may pull') or diag($err);
is(ids($e, 'id IN (1, 2)'), '', 'e gets the deletes from the tombstones kept');
($rc, $out, $err) = $a->psql('postgres', "SELECT replstamp.sync('e')");
is($rc, 0, 'a may pull from e') or diag($err);
is(ids($a, 'id IN (1, 2)'), '', 'e\'s earlier update of row 1 does not bring it back on a');
round();
sq($a, 'SELECT replstamp.prune()');
is(sq($a, "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$id_e'"), '0',
	'e\'s update of row 1 lost to the delete: pruned like any other change');
is(sq($a, "SELECT format('%s %s %s', kind, loser_op, loser_image->>'note') FROM replstamp.conflicts
	WHERE loser_replica_id = '$id_e'"), 'incoming_lost UPDATE e, before the delete',
	'the conflict keeps a copy of it');
is(ids($_, 'id IN (1, 2)'), '', $_->name . ': rows 1 and 2 stay deleted') for ($a, $b, $e);
is(content($e), content($a), 'e and a hold the same rows');
# Conflicts are kept for replstamp.conflict_retention, not for the
# tombstones' lifetime.
sq($a, "ALTER SYSTEM SET replstamp.conflict_retention = '1s'; SELECT pg_reload_conf()");
$a->poll_query_until('postgres', q{SELECT replstamp.prune() >= 0
	AND NOT EXISTS (SELECT 1 FROM replstamp.conflicts)})
  or die 'the conflict was not forgotten';
pass('after conflict_retention the conflict is forgotten');
is(sq($a, 'SELECT count(*) FROM replstamp.row_version WHERE deleted'), '2', 'the tombstones stay');
sq($a, "ALTER SYSTEM RESET replstamp.conflict_retention; SELECT pg_reload_conf()");
# A latest version the walk kept, then overwritten by another node's
# change: the sync that overwrote it removes it (every puller holds it),
# its conflict keeps a copy, which restore_version() brings back.
sq($a, "UPDATE accounts SET note = 'a, overwritten later' WHERE id = 3");
my ($vid, $vserial) = split /\|/, sq($a, q{SELECT replica_id, serial FROM replstamp.changes
	WHERE pk = '{"id": 3}' ORDER BY changed_at DESC LIMIT 1});
my $v = "replica_id = '$vid' AND serial = $vserial";
round();
sq($a, 'SELECT replstamp.prune()');
is(sq($a, "SELECT count(*) FROM replstamp.changes WHERE $v"), '1',
	'the latest version of row 3 is walked and kept');
sq($b, "UPDATE accounts SET note = 'b' WHERE id = 3");
round();
is(sq($a, "SELECT format('%s %s', kind, loser_image->>'note') FROM replstamp.conflicts
	WHERE loser_replica_id = '$vid' AND loser_serial = $vserial"),
	'overwrote a, overwritten later', 'b\'s update overwrote it: a conflict names it, with a copy');
is(sq($a, "SELECT count(*) FROM replstamp.changes WHERE $v"), '0',
	'the sync that overwrote it removed it from the log');
sq($a, "SELECT replstamp.restore_version('$vid', $vserial)");
is(sq($a, 'SELECT note FROM accounts WHERE id = 3'), 'a, overwritten later',
	'restore_version() brings it back from the conflict');
round();
is(content($b), content($a), 'and b gets it as a new change');
sq($a, "ALTER SYSTEM SET replstamp.conflict_retention = '1s'; SELECT pg_reload_conf()");
$a->poll_query_until('postgres', q{SELECT replstamp.prune() >= 0 AND NOT EXISTS (SELECT 1 FROM replstamp.conflicts)})
  or die 'the conflict did not expire';
my ($rc2, $out2, $err2) = $a->psql('postgres', "SELECT replstamp.restore_version('$vid', $vserial)");
like($err2, qr/is not held here/, 'once its conflict expired, that version is gone');

# 2. e goes away again; a deletes row 7; with a lifetime of 2 s the
# tombstones are dropped.
sq($a, 'DELETE FROM accounts WHERE id = 7');
sq($b, "SELECT replstamp.sync('a')") for (1 .. 2);
sq($a, "ALTER SYSTEM SET replstamp.tombstone_lifetime = '2s'; SELECT pg_reload_conf()");
$a->poll_query_until('postgres',
	q{SELECT replstamp.prune() >= 0 AND NOT EXISTS (SELECT 1 FROM replstamp.row_version WHERE deleted)})
  or die 'the tombstones were not dropped';
ok(sq($a, 'SELECT count(*) FROM replstamp.purged') > 0, 'a records how far it dropped tombstones');
is(sq($a, q{SELECT count(*) FROM replstamp.changes c JOIN accounts t ON t.id = (c.pk->>'id')::int}),
	sq($a, 'SELECT count(*) FROM replstamp.changes'), 'the log keeps only changes of rows that exist');

($rc, $out, $err) = $e->psql('postgres', "\\set VERBOSITY verbose\nSELECT replstamp.sync('a')");
isnt($rc, 0, 'e, away for longer than the lifetime, may not pull from a');
like($err, qr/72000: node "e\/postgres" is too far behind to pull from here/, 'SQLSTATE 72000 and what is wrong');
like($err, qr/HINT:  Rebuild that node from a fresh backup of a current node/, 'the hint says what to do');
($rc, $out, $err) = $a->psql('postgres', "\\set VERBOSITY verbose\nSELECT replstamp.sync('e')");
isnt($rc, 0, 'nor may a pull from e');
like($err, qr/72000: peer "e" is too far behind to pull from/, 'SQLSTATE 72000 and what is wrong');
like($err, qr/HINT:  Rebuild that node from a fresh backup of a current node/, 'with the hint');
is(sq($a, "SELECT format('%s %s', status, last_error_sqlstate) FROM replstamp.peers WHERE name = 'e'"),
	'stale 72000', 'replstamp.peers shows e as stale');
is(ids($e, 'id = 7'), '7', 'e still holds row 7 (it would bring it back)');

# b kept syncing: it holds the tombstones, and is not refused.
($rc, $out, $err) = $b->psql('postgres', "SELECT replstamp.sync('a')");
is($rc, 0, 'b, which kept syncing, may still pull') or diag($err);
($rc, $out, $err) = $a->psql('postgres', "SELECT replstamp.sync('b')");
is($rc, 0, 'and be pulled from') or diag($err);
is(ids($_, 'id IN (1, 2, 7)'), '', $_->name . ': rows 1, 2 and 7 stay deleted') for ($a, $b);
is(content($b), content($a), 'a and b hold the same rows');

# 3. A tombstone that reaches a when it is already older than the
# lifetime (b deleted row 8 and a pulls it late) is dropped only once
# every puller of a holds it: f, which keeps pulling from a, gets the
# delete and is never refused.
my $f = replstamp_node('f', conf => \@conf, sql => $schema);
add_peer($f, 'a', $a);
sq($f, "SELECT replstamp.sync('a')") for (1 .. 2);
is(ids($f, 'id = 8'), '8', 'f holds row 8');
sq($b, 'DELETE FROM accounts WHERE id = 8');
until (sq($b, q{SELECT pg_catalog.now() - max(changed_at) > interval '2s' FROM replstamp.changes
	WHERE op = 'DELETE'}) eq 't')
{
	sq($f, "SELECT replstamp.sync('a')");    # f keeps syncing meanwhile
}
sq($a, "SELECT replstamp.sync('b')");
sq($a, 'SELECT replstamp.prune()');
is(sq($a, 'SELECT count(*) FROM replstamp.row_version WHERE deleted'), '1',
	'a keeps the late tombstone while f lacks it');
($rc, $out, $err) = $f->psql('postgres', "SELECT replstamp.sync('a')");
is($rc, 0, 'f, which kept syncing, is not refused') or diag($err);
is(ids($f, 'id = 8'), '', 'f gets the delete');
sq($f, "SELECT replstamp.sync('a')");
$a->poll_query_until('postgres',
	q{SELECT replstamp.prune() >= 0 AND NOT EXISTS (SELECT 1 FROM replstamp.row_version WHERE deleted)})
  or die 'the late tombstone was not dropped';
is(content($f), content($a), 'then a drops it, and f and a hold the same rows');

$_->stop for ($a, $b, $e, $f);
done_testing();
