# CALL replstamp.backup(target): a self-contained, verifiable base backup
# taken inside the backup/original flip of every database with replstamp,
# while pgbench writes tracked tables and a transaction holds a serial.
# Then bad input and faults: each leaves the live node usable, 'original',
# with no backup session, no slot and no half-written target.
use strict;
use warnings;
use File::Path qw(make_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;
require_programs('pg_verifybackup', 'pg_waldump');

my $node = replstamp_node('live', init => { allows_streaming => 1 });

sub sq { my ($db, $sql) = @_; return $node->safe_psql($db, $sql); }

sub states
{
	return sq('postgres', 'SELECT state FROM replstamp.node') . ' '
	  . sq('other', 'SELECT state FROM replstamp.node');
}

# Three databases: two with replstamp, one without.
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('postgres', 'CREATE DATABASE plain');
sq('other', q{CREATE EXTENSION replstamp; CREATE TABLE o (id int PRIMARY KEY);
	SELECT replstamp.track('o'); INSERT INTO o SELECT generate_series(1, 100);});
my $tsdir = PostgreSQL::Test::Utils::tempdir();
$node->command_ok([ 'pgbench', '-i', '-s', '2', '-p', $node->port, '-h', $node->host, 'postgres' ],
	'pgbench -i');
sq('postgres', qq{
	CREATE EXTENSION replstamp;
	ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY;
	SELECT replstamp.track(t) FROM unnest('{pgbench_accounts,pgbench_branches,pgbench_tellers,pgbench_history}'::regclass[]) t;
	CREATE TABLESPACE ts LOCATION '$tsdir';
	CREATE TABLE in_ts (id int PRIMARY KEY, v text) TABLESPACE ts;
	SELECT replstamp.track('in_ts');
	INSERT INTO in_ts SELECT g, 'row ' || g FROM generate_series(1, 1000) g;
	CREATE UNLOGGED TABLE scratch (id int);
	INSERT INTO scratch SELECT generate_series(1, 1000);
	CREATE ROLE alice LOGIN;
});
my $id = sq('postgres', 'SELECT replica_id FROM replstamp.node');
my $id_other = sq('other', 'SELECT replica_id FROM replstamp.node');

# 1. Bad input: a clear error, and nothing changes.
my $base = $node->basedir;
mkdir "$base/full";
open(my $fh, '>', "$base/full/something") or die;
close $fh;
mkdir "$base/readonly";
chmod 0555, "$base/readonly";
my @bad = (
	[ "CALL replstamp.backup('relative/path')", qr/backup target must be an absolute path/, 'a relative path' ],
	[ "CALL replstamp.backup('" . $node->data_dir . "/inside')", qr/overlaps the data directory/, 'a target inside the data directory' ],
	[ "CALL replstamp.backup('$base/full')", qr/exists and is not empty/, 'a target that is not empty' ],
	[ "CALL replstamp.backup('$base/readonly')", qr/could not write into backup target/, 'a target that is not writable' ],
	[ "CALL replstamp.backup('$base/readonly/sub')", qr/could not create backup target/, 'a target that cannot be created' ],
	[ "BEGIN; CALL replstamp.backup('$base/in_xact'); COMMIT", qr/cannot run inside a transaction block/, 'inside a transaction block' ],
	[ "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS \$\$ BEGIN CALL replstamp.backup('$base/in_f'); END \$\$; SELECT f()", qr/cannot run inside a transaction block/, 'from a function' ],
);
for my $case (@bad)
{
	my ($sql, $re, $what) = @$case;
	my ($ret, $out, $err) = $node->psql('postgres', $sql);
	like($err, $re, "$what: clear error");
	is(states(), 'original original', "$what: state unchanged");
}
my ($ret, $out, $err) = $node->psql('postgres', "CALL replstamp.backup('$base/alice')",
	extra_params => [ '-U', 'alice' ]);
like($err, qr/permission denied for procedure backup/, 'an ordinary role may not take backups');
ok(!-e "$base/alice" && !-e "$base/in_xact" && !-e "$base/in_f", 'refused calls created no target');

# 2. A backup while pgbench writes and a transaction holds a serial.
my $pgbench_log = "$PostgreSQL::Test::Utils::tmp_check/pgbench_032.log";
my $bench = IPC::Run::start(
	[ 'pgbench', '-n', '-c', '2', '-T', '300', '-p', $node->port, '-h', $node->host, 'postgres' ],
	'>>', $pgbench_log, '2>>', $pgbench_log);
$node->poll_query_until('postgres', 'SELECT count(*) >= 200 FROM replstamp.changes')
  or die 'pgbench makes no progress';
my $inflight = $node->background_psql('postgres');
$inflight->query_safe('BEGIN');
$inflight->query_safe("INSERT INTO in_ts VALUES (5000, 'in flight')");
my $held = $inflight->query_safe("SELECT serial FROM replstamp.changes WHERE relation = 'public.in_ts' AND pk->>'id' = '5000'");

my $target = $node->backup_dir . '/full';
($ret, $out, $err) = $node->psql('postgres',
	"CALL replstamp.backup('$target', label => 'tap backup', max_rate => 20000)");
is($ret, 0, 'replstamp.backup under load succeeds') or diag($err);
like($err, qr/NOTICE:  marked 'backup': (postgres, other|other, postgres)/, 'it marks both databases with replstamp, not the other one');
like($err, qr/NOTICE:  copying files: \S+ \S+ of \S+ \S+ \(\d+%\)/, 'it reports progress');
like($err, qr/backup complete in/, 'and says when it is done');
# replstamp.backup_sync_method = auto: one syncfs() where the kernel reports
# write-back errors through it (Linux 5.8 and later), else fsync per file.
my ($kmaj, $kmin) = `uname -r` =~ /^(\d+)\.(\d+)/;
my $syncfs_expected = $^O eq 'linux' && ($kmaj > 5 || ($kmaj == 5 && $kmin >= 8));
like($err, $syncfs_expected ? qr/NOTICE:  syncing the backup to disk: syncfs\(\) of its file system/
	: qr/NOTICE:  syncing the backup to disk: fsync\(\) of each file/,
	'by default it syncs the way the kernel makes durable: ' . ($syncfs_expected ? 'syncfs' : 'fsync'));
$inflight->query_safe('COMMIT');
$inflight->quit;
$bench->kill_kill;
is(states(), 'original original', 'the live node is original once the call returns');
is(sq('postgres', 'SELECT count(*) FROM pg_replication_slots'), '0', 'its WAL slot is gone');
ok(!-e "$target/replstamp_backup.incomplete", 'the finished backup has no incomplete marker');
ok(-e "$target/backup_manifest" && -e "$target/backup_label", 'it has a manifest and a backup label');
ok(!-e "$target/tablespace_map" && -d "$target/pg_tblspc/" . sq('postgres', "SELECT oid FROM pg_tablespace WHERE spcname = 'ts'"),
	'the tablespace is copied into the target');
$node->command_ok([ 'pg_verifybackup', $target ], 'pg_verifybackup accepts the backup');

# The backup needs no archive: start a copy of it, with the check off first
# to see the mark the backup carries.
my $copy = PostgreSQL::Test::Cluster->new('copy');
$copy->init_from_backup($node, 'full');
$copy->append_conf('postgresql.conf', 'replstamp.rotate_on_restore = off');
start_verified($copy, sub { $copy->start }, 'postgres', 'other');
is($copy->safe_psql('postgres', 'SELECT state FROM replstamp.node') . ' '
	  . $copy->safe_psql('other', 'SELECT state FROM replstamp.node'),
	'backup backup', 'the restored copy carries the backup mark in both databases');
my $lus = $copy->safe_psql('postgres', 'SELECT backup_lus FROM replstamp.node');
ok($lus <= $held, "the recorded LUS ($lus) is at most the serial held in flight ($held)");
is($copy->safe_psql('postgres', "SELECT count(*) FROM replstamp.changes WHERE relation = 'public.in_ts' AND pk->>'id' = '5000'"),
	'0', 'the change in flight during the backup is not in it');
is($copy->safe_psql('postgres', "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$id' AND serial < $lus"),
	sq('postgres', "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$id' AND serial < $lus"),
	'every change below the recorded LUS is in the backup');
is($copy->safe_psql('postgres', 'SELECT count(*) FROM pgbench_history'),
	$copy->safe_psql('postgres', "SELECT count(*) FROM replstamp.changes WHERE relation = 'public.pgbench_history'"),
	'one stamp per history row: the copy is consistent');
is($copy->safe_psql('postgres', 'SELECT count(*) FROM in_ts WHERE id <= 1000'), '1000',
	'the table in the tablespace is there');
is($copy->safe_psql('postgres', 'SELECT count(*) FROM scratch'), '0',
	'the unlogged table comes back empty, as from any base backup');
is($copy->safe_psql('other', 'SELECT count(*) FROM o'), '100', 'the other database is there');

# With the check on, both databases rotate, with the backup's serials.
$copy->stop;
$copy->adjust_conf('postgresql.conf', 'replstamp.rotate_on_restore', 'on');
start_verified($copy, sub { $copy->start }, 'postgres', 'other');
isnt($copy->safe_psql('postgres', 'SELECT replica_id FROM replstamp.node'), $id, 'postgres rotates');
isnt($copy->safe_psql('other', 'SELECT replica_id FROM replstamp.node'), $id_other, 'other rotates');
like($copy->safe_psql('postgres', "SELECT retired_reason FROM replstamp.replica_history WHERE replica_id = '$id'"),
	qr/restored from backup "tap backup" \(state was 'backup'\)/, 'the reason names the backup');
is($copy->safe_psql('postgres', "SELECT serial FROM replstamp.vector_state WHERE replica_id = '$id'"),
	$lus - 1, 'the old ID is held below the recorded LUS');
$copy->stop;

# 3. Faults in the middle of the copy: cancel, terminate.
sub slow_backup
{
	my ($dir, $out) = @_;
	my $h = IPC::Run::start(
		[ 'psql', '-X', '-d', $node->connstr('postgres'), '-c',
		  "CALL replstamp.backup('$dir', max_rate => 2000)" ],
		'>', $out, '2>', $out);
	$node->poll_query_until('postgres',
		"SELECT phase = 'streaming database files' FROM pg_stat_progress_basebackup")
	  or die 'the backup does not reach the copy';
	return $h;
}

for my $how ('cancel', 'terminate')
{
	my $dir = "$base/interrupted_$how";
	my $log = '';
	my $h = slow_backup($dir, \$log);
	is(states(), 'backup backup', "$how: the live node is marked backup while the copy runs");
	ok(-e "$dir/replstamp_backup.incomplete" && !-e "$dir/backup_manifest",
		"$how: a partial target is marked incomplete and has no manifest");
	my ($r2, $o2, $e2) = $node->psql('postgres', "CALL replstamp.backup('$base/second')");
	like($e2, qr/another replstamp.backup\(\) is running in process \d+/, "$how: a second backup is refused");
	my ($r3, $o3, $e3) = $node->psql('postgres', "SELECT replstamp.prepare_backup()");
	like($e3, qr/a backup is already in progress in database/, "$how: so is prepare_backup()");
	sq('postgres', "SELECT pg_${how}_backend(pid) FROM pg_stat_progress_basebackup");
	$h->finish;
	like($log, $how eq 'cancel' ? qr/canceling statement due to user request/ : qr/terminating connection/,
		"$how: the caller sees the error");
	$node->poll_query_until('postgres', "SELECT state = 'original' FROM replstamp.node")
	  or die "$how: state not restored";
	$node->poll_query_until('other', "SELECT state = 'original' FROM replstamp.node")
	  or die "$how: state not restored in other";
	pass("$how: both databases are original again");
	$node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM pg_replication_slots')
	  or die "$how: slot left";
	pass("$how: the WAL slot is gone");
	ok(!-e $dir, "$how: the partial target is removed");
	sq('postgres', 'INSERT INTO in_ts VALUES (' . ($how eq 'cancel' ? 6001 : 6002) . ", 'after $how')");
	pass("$how: the live node goes on writing");
}
SKIP:
{
	my $full = $ENV{REPLSTAMP_FULL_DISK};
	skip 'no small file system to fill (run test/run as root, or set REPLSTAMP_FULL_DISK)', 5
	  unless $full && -d $full && -w $full;
	($ret, $out, $err) = $node->psql('postgres', "CALL replstamp.backup('$full/b')");
	like($err, qr/could not write file .*: No space left on device/, 'a full target: clear error');
	like($err, qr/HINT:  Free space on the backup target/, 'with a hint');
	is(states(), 'original original', 'a full target: both databases are original again');
	ok(!-e "$full/b", 'a full target: the partial backup is removed');
	is(sq('postgres', 'SELECT count(*) FROM pg_replication_slots'), '0', 'a full target: no slot left');
}
($ret, $out, $err) = $node->psql('postgres', "CALL replstamp.backup('$base/after_faults')");
is($ret, 0, 'the next backup works') or diag($err);
$node->command_ok([ 'pg_verifybackup', "$base/after_faults" ], 'and verifies');

# The other way to sync, chosen by the setting; only a superuser sets it.
($ret, $out, $err) = $node->psql('postgres',
	"SET replstamp.backup_sync_method = fsync; CALL replstamp.backup('$base/fsynced')");
is($ret, 0, 'a backup with backup_sync_method = fsync works') or diag($err);
like($err, qr/NOTICE:  syncing the backup to disk: fsync\(\) of each file/, 'and fsyncs each file');
$node->command_ok([ 'pg_verifybackup', "$base/fsynced" ], 'and verifies');
($ret, $out, $err) = $node->psql('postgres', 'SET replstamp.backup_sync_method = fsync',
	extra_params => [ '-U', 'alice' ]);
like($err, qr/permission denied to set parameter "replstamp.backup_sync_method"/,
	'an ordinary role may not choose how backups sync');
is(states(), 'original original', 'and the live node is original');
is(sq('postgres', 'SELECT replica_id FROM replstamp.node'), $id, 'the live node never rotated');

# Every background worker slot busy for a moment (a parallel query takes
# all that are free, for about 4 s): the flip to 'backup', which needs a
# worker per database, waits for one to come free instead of failing (it
# failed at once, as right after a restart while the per-database workers
# start).
sq('postgres', q{CREATE TABLE slots (pad text) WITH (fillfactor = 10, parallel_workers = 8);
	INSERT INTO slots SELECT repeat('x', 1000) FROM generate_series(1, 32)});
my $pq_out = '';
my $pq = psql_start($node, q{SET max_parallel_workers_per_gather = 8; SET parallel_setup_cost = 0;
	SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0;
	SELECT count(pg_sleep(1)) FROM slots}, \$pq_out);
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'parallel worker'
			OR backend_type LIKE 'replstamp%' OR backend_type = 'logical replication launcher'},
		sq('postgres', 'SHOW max_worker_processes')),
	'a parallel query holds every free worker slot');
($ret, $out, $err) = $node->psql('postgres', "CALL replstamp.backup('$base/slots_busy')");
is($ret, 0, 'a backup while every worker slot is busy waits for one and succeeds') or diag($err);
$pq->finish;
like($pq_out, qr/^32$/m, 'the parallel query ran to its end');
is(states(), 'original original', 'and the live node is original');

$node->stop;
done_testing();
