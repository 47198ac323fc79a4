# More restores that must rotate, from CALL replstamp.backup(): archive
# recovery past the end of the backup (which replays the flip back to
# 'original'), point-in-time recovery to a named restore point; and a crash of the live node in the
# middle of its own backup (allowed to rotate: where in doubt, rotate).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

my $a = replstamp_node('primary', init => { has_archiving => 1, allows_streaming => 1 });
sq($a, q{CREATE EXTENSION replstamp; CREATE TABLE t (id int PRIMARY KEY);
	SELECT replstamp.track('t'); INSERT INTO t SELECT generate_series(1, 10);});
my $id = sq($a, 'SELECT replica_id FROM replstamp.node');

# The backup: replstamp's own, into the place the test framework restores from.
sq($a, "CALL replstamp.backup('" . $a->backup_dir . "/b', label => 'archived')");
sq($a, 'INSERT INTO t SELECT generate_series(11, 20)');
sq($a, "SELECT pg_create_restore_point('rp')");
sq($a, 'INSERT INTO t SELECT generate_series(21, 30)');
my $walfile = sq($a, 'SELECT pg_walfile_name(pg_current_wal_lsn())');
sq($a, 'SELECT pg_switch_wal()');
$a->poll_query_until('postgres', "SELECT '$walfile' <= last_archived_wal FROM pg_stat_archiver")
  or die 'WAL was not archived';

# 1. Archive recovery to the end of the archive: the flip back is replayed.
my $r = PostgreSQL::Test::Cluster->new('archive_end');
$r->init_from_backup($a, 'b', has_restoring => 1, standby => 0);
start_verified($r, sub { $r->start });
is(sq($r, 'SELECT count(*) >= 20 FROM t'), 't', 'archive recovery replayed past the end of the backup');
my $rid = sq($r, 'SELECT replica_id FROM replstamp.node');
isnt($rid, $id, 'a copy recovered past the flip back to original still rotates');
like(sq($r, "SELECT retired_reason FROM replstamp.replica_history WHERE replica_id = '$id'"),
	qr/a base backup was restored/, 'reason: the backup label, since the state said original');
is(sq($r, "SELECT serial FROM replstamp.vector_state WHERE replica_id = '$id'"), '0',
	'the old ID is claimed from nothing: the copy may lack its unarchived tail');
$r->stop;

# 2. Point-in-time recovery to a named restore point.
my $p = PostgreSQL::Test::Cluster->new('pitr');
$p->init_from_backup($a, 'b', has_restoring => 1, standby => 0);
$p->append_conf('postgresql.conf', qq{
recovery_target_name = 'rp'
recovery_target_action = 'promote'
});
start_verified($p, sub { $p->start });
is(sq($p, 'SELECT max(id) FROM t'), '20', 'recovered to the restore point');
isnt(sq($p, 'SELECT replica_id FROM replstamp.node'), $id, 'PITR rotates');
like(sq($p, "SELECT retired_reason FROM replstamp.replica_history WHERE replica_id = '$id'"),
	qr/timeline changed from 1 to \d+/, "reason: the timeline changed (the first copy already took timeline 2 in the shared archive)");
sq($p, 'INSERT INTO t VALUES (1000)');
is(sq($p, "SELECT replica_id FROM replstamp.changes WHERE (pk->>'id')::int = 1000"),
	sq($p, 'SELECT replica_id FROM replstamp.node'), 'new changes carry the new ID');
$p->stop;

# 3. The live node crashes in the middle of its own backup.
sq($a, "SELECT replstamp.prepare_backup('interrupted')");
$a->stop('immediate');
start_verified($a, sub { $a->start });
my $after = sq($a, 'SELECT replica_id FROM replstamp.node');
isnt($after, $id, 'a crash during its own backup rotates the live node (where in doubt, rotate)');
like(sq($a, "SELECT retired_reason FROM replstamp.replica_history WHERE replica_id = '$id'"),
	qr/state was 'backup'/, 'reason recorded: the state was backup');
is(sq($a, 'SELECT state FROM replstamp.node'), 'original', 'and it is original again');

$a->stop;
done_testing();
