# CALL replstamp.backup(target) copies what PostgreSQL 15's own base backup
# copies and skips what it skips: relation cache init files, including the
# temporary pg_internal.init.<pid> ones; the contents (not the directory) of
# pg_stat_tmp and the like, also when the directory is a symbolic link;
# only this server's version directory of a tablespace; a tablespace inside
# the data directory once, not twice; special files, with a warning; and, as
# before, temporary files, temporary relations and replication slots.  The
# copy starts and has every table.
use strict;
use warnings;
use File::Find;
use POSIX qw(mkfifo);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;
require_programs('pg_verifybackup', 'pg_waldump');

my $node = replstamp_node('live', init => { allows_streaming => 1 });
my $pgdata = $node->data_dir;
my $base = $node->basedir;
my $tsdir = PostgreSQL::Test::Utils::tempdir();

sub sq { my ($sql) = @_; return $node->safe_psql('postgres', $sql); }

mkdir("$pgdata/ts_inside") or die;
my ($ret, $out, $err) = $node->psql('postgres', qq{
	CREATE EXTENSION replstamp;
	CREATE TABLESPACE ts LOCATION '$tsdir';
	CREATE TABLESPACE ts_inside LOCATION '$pgdata/ts_inside';
	CREATE TABLE in_ts (id int PRIMARY KEY) TABLESPACE ts;
	CREATE TABLE in_ts_inside (id int PRIMARY KEY) TABLESPACE ts_inside;
	SELECT replstamp.track('in_ts');
	INSERT INTO in_ts SELECT generate_series(1, 100);
	INSERT INTO in_ts_inside SELECT generate_series(1, 200);
	SELECT pg_create_physical_replication_slot('kept');
});
is($ret, 0, 'setup') or diag($err);
my $dboid = sq("SELECT oid FROM pg_database WHERE datname = 'postgres'");
my $ts_oid = sq("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'");
my $inside_oid = sq("SELECT oid FROM pg_tablespace WHERE spcname = 'ts_inside'");
my ($version_dir) = map { s{.*/}{}r } glob("$tsdir/PG_*");

# pg_stat_tmp elsewhere, behind a symbolic link.
$node->stop;
rename("$pgdata/pg_stat_tmp", "$base/stat_tmp") or die;
symlink("$base/stat_tmp", "$pgdata/pg_stat_tmp") or die;
$node->start;

sub put { my ($path) = @_; open(my $fh, '>', $path) or die "$path: $!"; print $fh "x\n"; close $fh; }

# What a running server leaves around.
put("$pgdata/global/pg_internal.init.12345");
put("$pgdata/base/$dboid/pg_internal.init.678");
put("$base/stat_tmp/some_extension.stat");
mkdir("$pgdata/base/pgsql_tmp");
put("$pgdata/base/pgsql_tmp/pgsql_tmp999.0");
put("$pgdata/pgsql_tmp_left_over");
# A version directory of another major version in the tablespace (left by
# pg_upgrade), and a stray file next to it.
mkdir("$tsdir/PG_14_202107181") or die;
mkdir("$tsdir/PG_14_202107181/$dboid") or die;
put("$tsdir/PG_14_202107181/$dboid/16999");
put("$tsdir/stray");
mkfifo("$pgdata/a_fifo", 0600) or die "mkfifo: $!";
# A temporary table, held open while the backup runs.
my $temp = $node->background_psql('postgres');
$temp->query_safe('CREATE TEMP TABLE tmp AS SELECT generate_series(1, 10) AS id');
my $temp_file = $temp->query_safe("SELECT pg_relation_filepath('tmp')");
ok(-e "$pgdata/$temp_file", "the temporary table has its file $temp_file");

my $target = $node->backup_dir . '/bk';
($ret, $out, $err) = $node->psql('postgres', "CALL replstamp.backup('$target')");
is($ret, 0, 'the backup succeeds') or diag($err);
$temp->quit;

my @copied;
find(sub { push @copied, $File::Find::name =~ s{^\Q$target\E/}{}r }, $target);
my $copied = join("\n", sort @copied);

is(join(' ', grep { m{(^|/)pg_internal\.init} } @copied), '',
	'no relation cache init file is copied, pg_internal.init.<pid> included');
ok(-d "$target/pg_stat_tmp" && !-l "$target/pg_stat_tmp",
	'a pg_stat_tmp behind a symbolic link is copied as a directory');
is(join(' ', grep { m{^pg_stat_tmp/} } @copied), '', 'but without its contents');
unlike($err, qr/skipping symbolic link ".*pg_stat_tmp"/, 'and without a warning');
is(join(' ', map { s{^pg_tblspc/$ts_oid/}{}r } grep { m{^pg_tblspc/$ts_oid/[^/]+$} } @copied),
	$version_dir, "only this server's version directory of a tablespace is copied");
is(join(' ', grep { m{^ts_inside/} } @copied), '',
	'a tablespace inside the data directory is not copied a second time');
ok(-d "$target/ts_inside", 'its location stays, as an empty directory');
ok(-d "$target/pg_tblspc/$inside_oid/$version_dir", 'it is copied with the tablespaces');
like($err, qr/WARNING:  skipping special file ".*a_fifo"/, 'a special file is skipped with a warning');
ok(!-e "$target/a_fifo", 'and not copied');
is(join(' ', grep { m{pgsql_tmp} } @copied), '', 'temporary files are not copied');
is(join(' ', grep { m{(^|/)t\d+_\d+} } @copied), '', 'temporary relations are not copied');
is(join(' ', grep { m{^pg_replslot/} } @copied), '', 'replication slots are not copied');
# What pg_wal holds: what pg_basebackup of this major sends, empty.  17
# added the WAL summaries of incremental backups, and a manifest of
# version 2 that names the system (which pg_verifybackup checks).
my @wal_dirs = ('archive_status', (pg_major() >= 17 ? ('summaries') : ()));
is(join(' ', sort map { s{.*/}{}r } grep { -d } glob("$target/pg_wal/*")), join(' ', @wal_dirs),
	'pg_wal holds the directories ' . join(' and ', @wal_dirs) . ', as pg_basebackup ' . pg_major() . ' sends it');
is(join(' ', grep { m{^pg_wal/(archive_status|summaries)/.} } @copied), '', 'and they are empty');
my $manifest = slurp_file("$target/backup_manifest");
my $sysid = $node->safe_psql('postgres', 'SELECT system_identifier FROM pg_control_system()');
if (pg_major() >= 17)
{
	like($manifest, qr/^\{ "PostgreSQL-Backup-Manifest-Version": 2,\n"System-Identifier": $sysid,/,
		'the manifest is of version 2 and names the system, as pg_basebackup ' . pg_major() . ' writes it');
}
else
{
	like($manifest, qr/^\{ "PostgreSQL-Backup-Manifest-Version": 1,/, 'the manifest is of version 1, as 15 writes it');
}
$node->command_ok([ 'pg_verifybackup', $target ], 'pg_verifybackup accepts the backup');

my $copy = PostgreSQL::Test::Cluster->new('copy');
$copy->init_from_backup($node, 'bk');
start_verified($copy, sub { $copy->start });
is($copy->safe_psql('postgres', 'SELECT (SELECT count(*) FROM in_ts) || \' \' || (SELECT count(*) FROM in_ts_inside)'),
	'100 200', 'the copy starts and has the tables of both tablespaces');
$copy->stop;
$node->stop;
done_testing();
