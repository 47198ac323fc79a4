# A copy restored from a backup takes a new replica ID before it stamps
# anything; the live node keeps its ID through its backups and restarts.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;
require_programs('pg_basebackup');

# No maintenance round during the test: part 5 needs a node that has not
# recorded its LUS (replstamp.lus_mark) lately.
my $a = replstamp_node('live', init => { allows_streaming => 1 },
	conf => ['replstamp.prune_interval = 0']);
$a->safe_psql('postgres', q{
	CREATE EXTENSION replstamp;
	CREATE TABLE t (id int PRIMARY KEY, v text);
	SELECT replstamp.track('t');
	INSERT INTO t SELECT g, 'before backup' FROM generate_series(1, 10) g;
});
my $id_a = $a->safe_psql('postgres', 'SELECT replica_id FROM replstamp.node');

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

# 1. Backup wrapped in prepare/finish, while a transaction is in flight.
my $inflight = $a->background_psql('postgres');
$inflight->query_safe('BEGIN');
$inflight->query_safe("INSERT INTO t VALUES (100, 'in flight during backup')");
my $inflight_serial = sq($a, "SELECT replstamp.lowest_uncommitted_serial()");
sq($a, "SELECT replstamp.prepare_backup('nightly')");
is(sq($a, 'SELECT state FROM replstamp.node'), 'backup', 'live node is marked backup during the backup');
is(sq($a, 'SELECT backup_lus FROM replstamp.node'), $inflight_serial,
	'the recorded LUS is the serial of the transaction in flight');
$a->backup('marked');
sq($a, 'SELECT replstamp.finish_backup()');
$inflight->query_safe('COMMIT');
$inflight->quit;
sq($a, "INSERT INTO t SELECT g, 'after backup' FROM generate_series(11, 20) g");
is(sq($a, 'SELECT state FROM replstamp.node'), 'original', 'live node is original after the backup');
is(sq($a, 'SELECT replica_id FROM replstamp.node'), $id_a, 'live node keeps its ID through its backup');

# 2. Restore it: the worker rotates.
my $b = PostgreSQL::Test::Cluster->new('restored');
$b->init_from_backup($a, 'marked');
start_verified($b, sub { $b->start });
my $id_b = sq($b, 'SELECT replica_id FROM replstamp.node');
isnt($id_b, $id_a, 'restored copy has a new replica ID');
is(sq($b, 'SELECT state FROM replstamp.node'), 'original', 'restored copy is original again');
like(sq($b, "SELECT retired_reason FROM replstamp.replica_history WHERE replica_id = '$id_a'"),
	qr/restored from backup "nightly"/, 'history: the old ID is retired with the reason');
is(sq($b, "SELECT lus_at_retirement FROM replstamp.replica_history WHERE replica_id = '$id_a'"),
	$inflight_serial, 'history: the LUS recorded at backup time');
is(sq($b, "SELECT serial FROM replstamp.vector_state WHERE replica_id = '$id_a'"),
	$inflight_serial - 1, 'vector: the old ID is held only below the recorded LUS');
is(sq($b, "SELECT minted_reason FROM replstamp.replica_history WHERE replica_id = '$id_b'")
	=~ /restored/ ? 1 : 0, 1, 'history: the new ID says why it was minted');
sq($b, "INSERT INTO t VALUES (1000, 'on the copy')");
is(sq($b, "SELECT replica_id FROM replstamp.changes WHERE (pk->>'id')::int = 1000"),
	$id_b, 'a change on the copy carries the new ID');
is(sq($b, "SELECT count(*) FROM t WHERE v = 'after backup'"), '0',
	'the copy lacks what the live node did after the backup');
start_verified($b, sub { $b->restart });
is(sq($b, 'SELECT replica_id FROM replstamp.node'), $id_b, 'the copy keeps its new ID through a restart');
is(sq($b, 'SELECT count(*) FROM replstamp.replica_history'), '2', 'no second rotation');
$b->stop;

# 3. The live node: clean restart and crash restart keep the ID.
start_verified($a, sub { $a->restart });
is(sq($a, 'SELECT replica_id FROM replstamp.node'), $id_a, 'clean restart keeps the ID');
$a->stop('immediate');
start_verified($a, sub { $a->start });
is(sq($a, 'SELECT replica_id FROM replstamp.node'), $id_a, 'crash restart keeps the ID');
is(sq($a, 'SELECT count(*) FROM replstamp.replica_history'), '1', 'live node never rotated');

# 4. No window: with no background worker at all, the first write after
# start-up does the check itself and gets the new ID.
my $c = PostgreSQL::Test::Cluster->new('raced');
$c->init_from_backup($a, 'marked');
$c->append_conf('postgresql.conf', 'max_worker_processes = 0');
$c->start;
sq($c, "BEGIN; INSERT INTO t VALUES (1999, 'rolled back'); ROLLBACK;");
is(sq($c, 'SELECT replica_id FROM replstamp.node'), $id_a,
	'a rolled-back first write leaves the rotation undone');
sq($c, "INSERT INTO t VALUES (2000, 'first statement')");
my $id_c = sq($c, "SELECT replica_id FROM replstamp.changes WHERE (pk->>'id')::int = 2000");
isnt($id_c, $id_a, 'the first write after start-up does not carry the old ID');
is(sq($c, 'SELECT replica_id FROM replstamp.node'), $id_c, 'it carries the new current ID');
is(sq($c, 'SELECT count(*) FROM replstamp.replica_history'), '2', 'exactly one rotation');
ok(!$c->log_contains(qr/identity of database "postgres" verified/),
	'no worker ran the check: the write path did');
$c->stop;

# 5. A plain pg_basebackup, not wrapped: backup_label.old gives it away.
# Without a recorded LUS (the worker that records it at start-up ran
# before; nothing runs it again here) the copy claims none of a's changes.
sq($a, 'DELETE FROM replstamp.lus_mark');
$a->backup('plain');
my $d = PostgreSQL::Test::Cluster->new('plaincopy');
$d->init_from_backup($a, 'plain');
start_verified($d, sub { $d->start });
my $id_d = sq($d, 'SELECT replica_id FROM replstamp.node');
isnt($id_d, $id_a, 'a restored pg_basebackup copy rotates too');
like(sq($d, "SELECT retired_reason FROM replstamp.replica_history WHERE replica_id = '$id_a'"),
	qr/a base backup was restored/, 'reason: the base backup label');
is(sq($d, "SELECT serial FROM replstamp.vector_state WHERE replica_id = '$id_a'"), '0',
	'without a recorded LUS the vector claims nothing of the old ID');
$d->stop;

# 6. With rotate_on_restore = off: a warning, and the old ID stays.
my $e = PostgreSQL::Test::Cluster->new('norotate');
$e->init_from_backup($a, 'marked');
$e->append_conf('postgresql.conf', 'replstamp.rotate_on_restore = off');
start_verified($e, sub { $e->start });
is(sq($e, 'SELECT replica_id FROM replstamp.node'), $id_a, 'rotate_on_restore = off keeps the old ID');
ok($e->log_contains(qr/WARNING:.*was restored or copied but keeps replica ID $id_a/),
	'rotate_on_restore = off logs a warning');
$e->stop;

# 7. A promoted standby: timeline and backup label change.
$a->backup('forstandby');
my $s = PostgreSQL::Test::Cluster->new('standby');
$s->init_from_backup($a, 'forstandby', has_streaming => 1);
$s->start;
$a->wait_for_catchup($s);
is(sq($s, 'SELECT replica_id FROM replstamp.node'), $id_a, 'a standby replays the primary ID');
start_verified($s, sub { $s->promote });
my $id_s = sq($s, 'SELECT replica_id FROM replstamp.node');
isnt($id_s, $id_a, 'a promoted standby rotates');
like(sq($s, "SELECT retired_reason FROM replstamp.replica_history WHERE replica_id = '$id_a'"),
	qr/timeline changed from 1 to 2/, 'reason: the timeline changed');
$s->stop;

# 8. Manual rotation keeps the old ID's changes claimed.
my $old = $id_a;
my $new = sq($a, "SELECT replstamp.rotate('test')");
isnt($new, $old, 'rotate() returns a new ID');
is(sq($a, 'SELECT replica_id FROM replstamp.node'), $new, 'rotate() makes it current');
is(sq($a, "SELECT serial = replstamp.lowest_uncommitted_serial() - 1 FROM replstamp.vector WHERE replica_id = '$old'"),
	't', 'the manually retired ID is held up to the LUS');
my ($rc, $out, $err) = $a->psql('postgres', q{
	CREATE ROLE plain LOGIN; SET ROLE plain; SELECT replstamp.rotate('nope')});
like($err, qr/permission denied for function rotate/, 'rotate() is for privileged roles only');

# 9. A database copied with CREATE DATABASE ... TEMPLATE: a new database
# OID.  Without a restart in between, its first write still rotates.
$a->safe_psql('postgres', 'CREATE DATABASE app');
$a->safe_psql('app', q{
	CREATE EXTENSION replstamp;
	CREATE TABLE t (id int PRIMARY KEY, v text);
	SELECT replstamp.track('t');
	INSERT INTO t VALUES (1, 'in app');
});
my $id_app = $a->safe_psql('app', 'SELECT replica_id FROM replstamp.node');
$a->safe_psql('postgres', 'CREATE DATABASE app_copy TEMPLATE app');
$a->safe_psql('app_copy', "INSERT INTO t VALUES (2, 'in the copy')");
my $id_copy = $a->safe_psql('app_copy', 'SELECT replica_id FROM replstamp.node');
isnt($id_copy, $id_app, 'a database copied from a template rotates before its first stamp');
is($a->safe_psql('app_copy', 'SELECT replica_id FROM replstamp.changes WHERE (pk->>$$id$$)::int = 2'),
	$id_copy, 'and stamps its first change with its new ID');
like($a->safe_psql('app_copy', "SELECT retired_reason FROM replstamp.replica_history WHERE replica_id = '$id_app'"),
	qr/copied from another database/, 'reason: copied from another database');
$a->safe_psql('app', "INSERT INTO t VALUES (3, 'in app again')");
is($a->safe_psql('app', 'SELECT replica_id FROM replstamp.node'), $id_app, 'the template keeps its ID');
start_verified($a, sub { $a->restart }, 'postgres', 'app', 'app_copy');
is($a->safe_psql('app_copy', 'SELECT replica_id FROM replstamp.node'), $id_copy,
	'after a restart the copy keeps its new ID');
is($a->safe_psql('app', 'SELECT replica_id FROM replstamp.node'), $id_app, 'and so does the template');

# 10. A copy whose first act is to pull: it tells its peer a new ID, not
# the template's (the peer would record it as a puller under the
# template's ID, which is the template's own).
$a->safe_psql('postgres', 'CREATE DATABASE app_pull TEMPLATE app');
$a->safe_psql('app_pull', "SELECT replstamp.add_peer('app', 'host=" . $a->host . ' port=' . $a->port . " dbname=app')");
$a->safe_psql('app', "INSERT INTO t VALUES (4, 'for the puller')");
$a->safe_psql('app_pull', "SELECT replstamp.sync('app')");
my $id_pull = $a->safe_psql('app_pull', 'SELECT replica_id FROM replstamp.node');
isnt($id_pull, $id_app, 'a copy that pulls before it stamps rotates first');
is($a->safe_psql('app', 'SELECT string_agg(replica_id::text, \',\') FROM replstamp.pullers'), $id_pull,
	'its peer records it as a puller under its new ID only');
is($a->safe_psql('app_pull', 'SELECT v FROM t WHERE id = 4'), 'for the puller', 'and it pulled');

$a->stop;
done_testing();
