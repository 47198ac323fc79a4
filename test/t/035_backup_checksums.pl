# With data checksums on, CALL replstamp.backup(target) verifies the checksum
# of every page of every relation file it copies, as pg_basebackup does.  A
# sound cluster backs up fine while it is being written to.  Pages whose
# LSN is at or past the backup's start (WAL replay rewrites them) and new,
# all-zero pages are not checked.  Corrupted pages, in the data directory
# and in a tablespace, fail the backup with an error that names each file
# and block and counts the pages; the failed backup leaves no target, no
# slot and no 'backup' mark, and pg_stat_database counts the failures.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;
require_programs('pg_verifybackup', 'pg_waldump');

my $node = replstamp_node('live',
	init => { allows_streaming => 1, extra => ['--data-checksums'] });
my $base = $node->basedir;
my $tsdir = PostgreSQL::Test::Utils::tempdir();

sub sq { my ($sql) = @_; return $node->safe_psql('postgres', $sql); }

is(sq('SHOW data_checksums'), 'on', 'the cluster has data checksums');
$node->command_ok([ 'pgbench', '-i', '-s', '1', '-p', $node->port, '-h', $node->host, 'postgres' ],
	'pgbench -i');
sq(qq{
	CREATE EXTENSION replstamp;
	ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY;
	SELECT replstamp.track(t) FROM unnest('{pgbench_accounts,pgbench_branches,pgbench_tellers,pgbench_history}'::regclass[]) t;
	CREATE TABLESPACE ts LOCATION '$tsdir';
	CREATE TABLE victim (id int, v text) WITH (autovacuum_enabled = off);
	CREATE TABLE victim_ts (id int, v text) WITH (autovacuum_enabled = off) TABLESPACE ts;
	CREATE TABLE skipped (id int, v text) WITH (autovacuum_enabled = off);
	INSERT INTO victim SELECT g, repeat('v', 100) FROM generate_series(1, 1000) g;
	INSERT INTO victim_ts SELECT g, repeat('w', 100) FROM generate_series(1, 1000) g;
	INSERT INTO skipped SELECT g, repeat('s', 100) FROM generate_series(1, 1000) g;
});

# 1. A sound cluster, written to while the backup runs.
my $pgbench_log = "$PostgreSQL::Test::Utils::tmp_check/pgbench_035.log";
my $bench = IPC::Run::start(
	[ 'pgbench', '-n', '-c', '1', '-T', '300', '-p', $node->port, '-h', $node->host, 'postgres' ],
	'>>', $pgbench_log, '2>>', $pgbench_log);
$node->poll_query_until('postgres', 'SELECT count(*) >= 200 FROM replstamp.changes')
  or die 'pgbench makes no progress';
my $sound = "$base/sound";
my ($ret, $out, $err) = $node->psql('postgres', "CALL replstamp.backup('$sound', max_rate => 20000)");
$bench->kill_kill;
is($ret, 0, 'a sound cluster with checksums backs up while it is written to') or diag($err);
unlike($err, qr/WARNING/, 'no warning');
$node->command_ok([ 'pg_verifybackup', $sound ], 'pg_verifybackup accepts the backup');

# 2. Corrupt pages while the server is down: bytes in the middle of the
# page, the header (and its LSN, below the backup's start) untouched.
my $victim = sq("SELECT pg_relation_filepath('victim')");
my $victim_ts = sq("SELECT pg_relation_filepath('victim_ts')");
my $skipped = sq("SELECT pg_relation_filepath('skipped')");
my ($dboid) = $victim =~ m{^base/(\d+)/};
ok(sq("SELECT pg_relation_size('victim') >= 3 * 8192"), 'the victim has at least three pages');
$node->stop;

sub corrupt
{
	my ($file, $block) = @_;
	open(my $fh, '+<', $file) or die "$file: $!";
	binmode $fh;
	seek($fh, $block * 8192 + 4000, 0) or die;
	print $fh 'CORRUPTED!' x 4;
	close($fh) or die;
	return;
}
my $pgdata = $node->data_dir;
corrupt("$pgdata/$victim", 0);
corrupt("$pgdata/$victim", 2);
corrupt("$pgdata/$victim_ts", 0);
# Pages with wrong checksums that are not checked: one whose LSN lies past
# any backup's start, and a new page of zeros at the end of the file, as an
# extension cut short by a crash leaves it.
corrupt("$pgdata/$skipped", 0);
{
	open(my $fh, '+<', "$pgdata/$skipped") or die;
	binmode $fh;
	print $fh pack('LL', 0xFFFFFFFF, 0xFFFFFF00);    # pd_lsn of block 0
	seek($fh, 0, 2) or die;
	print $fh "\0" x 8192;
	close($fh) or die;
}
$node->start;
my $failures_before = sq("SELECT checksum_failures FROM pg_stat_database WHERE datname = 'postgres'") || 0;

my $target = "$base/corrupt";
($ret, $out, $err) = $node->psql('postgres', "CALL replstamp.backup('$target')",
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
isnt($ret, 0, 'a backup of corrupted pages fails');
like($err, qr/ERROR:  XX001: data checksum verification failed for 3 pages/,
	'with data_corrupted and the count of bad pages');
like($err, qr/DETAIL:  .*file "\Q$victim\E" block 0\b/, 'naming the first bad page');
like($err, qr/DETAIL:  .*file "\Q$victim\E" block 2\b/, 'and the second one in the same file');
like($err, qr/DETAIL:  .*file "pg_tblspc\/\d+\/PG_\d+_\d+\/\Q$dboid\E\/\d+" block 0\b/,
	'and the one in the tablespace');
like($err, qr/HINT:  .*pg_filenode_relation/, 'the hint says how to find the relations');
unlike($err, qr/\Q$skipped\E/, 'a page written after the start and a new page are not checked');
like($err, qr/WARNING:  .*checksum verification failed in file "\Q$victim\E", block 0: calculated [0-9A-F]+ but expected [0-9A-F]+/,
	'each bad page is also a warning as the copy finds it');
ok(!-e $target, 'the failed backup is removed');
is(sq('SELECT state FROM replstamp.node'), 'original', 'the database is original again');
is(sq('SELECT count(*) FROM pg_replication_slots'), '0', 'no slot is left');
is(sq("SELECT checksum_failures FROM pg_stat_database WHERE datname = 'postgres'") - $failures_before,
	3, 'pg_stat_database counts the bad pages');

# 3. The next backup after the bad relation is gone works.
sq('DROP TABLE victim, victim_ts');
($ret, $out, $err) = $node->psql('postgres', "CALL replstamp.backup('$target')");
is($ret, 0, 'once the corrupted relations are gone, the backup works') or diag($err);
unlike($err, qr/WARNING/, 'without a warning about the pages that are not checked');
$node->command_ok([ 'pg_verifybackup', $target ], 'and pg_verifybackup accepts it');

$node->stop;
done_testing();
