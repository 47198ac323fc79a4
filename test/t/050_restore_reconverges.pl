# The patent's scenario end to end: A and B replicate; A is backed up; A's
# later changes reach B; A is destroyed and restored from the backup; the
# restored A rotates, makes new changes, and after syncing A and B hold the
# same rows, A's lost changes included.  Negative control: with
# replstamp.rotate_on_restore = off, B silently misses the restored node's
# new changes (the USN rollback this extension prevents).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;
require_programs('pg_basebackup');

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
sub content { my ($n, $where) = @_; $where //= 'true';
	return sq($n, "SELECT string_agg(format('%s:%s', id, note), ',' ORDER BY id) FROM accounts WHERE $where"); }

my $schema = q{CREATE EXTENSION replstamp;
	CREATE TABLE accounts (id int PRIMARY KEY, note text);
	SELECT replstamp.track('accounts');};
my $a = replstamp_node('a', init => { allows_streaming => 1 }, sql => $schema);
my $b = replstamp_node('b', sql => $schema);
add_peer($a, 'b', $b);
add_peer($b, 'a', $a);

sq($a, "INSERT INTO accounts SELECT g, 'a before backup' FROM generate_series(1, 5) g");
sq($b, "INSERT INTO accounts SELECT g, 'b before backup' FROM generate_series(6, 10) g");
sq($b, "SELECT replstamp.sync('a')");
sq($a, "SELECT replstamp.sync('b')");
my $id_a = sq($a, 'SELECT replica_id FROM replstamp.node');

# Back up A, inside the state flip.
sq($a, "SELECT replstamp.prepare_backup('before the crash')");
$a->backup('bk');
sq($a, 'SELECT replstamp.finish_backup()');

# A's changes after the backup reach B, then A is destroyed.
sq($a, "INSERT INTO accounts SELECT g, 'a after backup' FROM generate_series(11, 15) g");
sq($b, "SELECT replstamp.sync('a')");
is(sq($b, 'SELECT count(*) FROM accounts WHERE id BETWEEN 11 AND 15'), '5',
	'B has the changes A made after the backup');
$a->stop('immediate');

# Restore A from the backup: it rotates, then makes new changes.
my $a2 = PostgreSQL::Test::Cluster->new('a_restored');
$a2->init_from_backup($a, 'bk');
$a2->start;
sq($a2, "INSERT INTO accounts SELECT g, 'restored a' FROM generate_series(16, 20) g");
my $id_a2 = sq($a2, 'SELECT replica_id FROM replstamp.node');
isnt($id_a2, $id_a, 'the restored A has a new replica ID');
is(sq($a2, "SELECT count(DISTINCT replica_id) FROM replstamp.changes WHERE (pk->>'id')::int BETWEEN 16 AND 20"),
	'1', 'its new changes carry one ID');
is(sq($a2, "SELECT replica_id FROM replstamp.changes WHERE (pk->>'id')::int = 16"), $id_a2,
	'and it is the new one');
is(sq($a2, 'SELECT count(*) FROM accounts WHERE id BETWEEN 11 AND 15'), '0',
	'the restored A lost the changes made after the backup');

sq($b, "SELECT replstamp.drop_peer('a')");
sq($b, "SELECT replstamp.add_peer('a', \$\$" . $a2->connstr('postgres') . "\$\$)");
sq($a2, "UPDATE replstamp.peer SET conninfo = \$\$" . $b->connstr('postgres') . "\$\$ WHERE name = 'b'");
sq($b, "SELECT replstamp.sync('a')");
sq($a2, "SELECT replstamp.sync('b')");
is(sq($b, 'SELECT count(*) FROM accounts WHERE id BETWEEN 16 AND 20'), '5',
	'B receives every change the restored A made');
is(sq($a2, 'SELECT count(*) FROM accounts WHERE id BETWEEN 11 AND 15'), '5',
	'the restored A pulls back from B what it lost');
is(content($a2), content($b), 'A and B hold the same rows');

# Negative control: the same restore with the rotation switched off, and
# the peers' comparison of histories too (it would catch the copy).
my $a3 = PostgreSQL::Test::Cluster->new('a_norotate');
$a3->init_from_backup($a, 'bk');
$a3->append_conf('postgresql.conf', "replstamp.rotate_on_restore = off\nreplstamp.check_histories = off");
$a3->start;
sq($b, 'ALTER SYSTEM SET replstamp.check_histories = off');
sq($b, 'SELECT pg_reload_conf()');
sq($a3, "INSERT INTO accounts SELECT g, 'restored without rotation' FROM generate_series(21, 25) g");
is(sq($a3, 'SELECT replica_id FROM replstamp.node'), $id_a, 'without rotation the old ID stays');
sq($b, "SELECT replstamp.add_peer('a3', \$\$" . $a3->connstr('postgres') . "\$\$)");
sq($b, "SELECT replstamp.sync('a3')");
is(sq($b, 'SELECT count(*) FROM accounts WHERE id BETWEEN 21 AND 25'), '0',
	'without rotation B silently misses the restored node\'s new changes');
is(sq($b, "SELECT count(*) FROM replstamp.changes c WHERE (pk->>'id')::int BETWEEN 11 AND 15 AND replica_id = '$id_a'"),
	'5', 'because B already holds other changes under the same stamps');

$_->stop for ($a2, $a3, $b);
done_testing();
