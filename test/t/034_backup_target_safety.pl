# CALL replstamp.backup(target) never writes into the cluster it copies: a
# target that is, or resolves through symbolic links to, a place inside the
# data directory, the WAL directory or a tablespace, or that contains one of
# them, is refused before anything is written.  A symbolic link to a place
# outside them is followed.
use strict;
use warnings;
use File::Basename qw(dirname);
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

sq(qq{
	CREATE EXTENSION replstamp;
	CREATE TABLESPACE ts LOCATION '$tsdir';
	CREATE TABLE in_ts (id int PRIMARY KEY) TABLESPACE ts;
	SELECT replstamp.track('in_ts');
	INSERT INTO in_ts SELECT generate_series(1, 100);
});
my ($tsver) = glob("$tsdir/PG_*");
ok(defined $tsver && -d $tsver, 'the tablespace has its version directory');

# The WAL directory elsewhere, behind a symbolic link, as initdb --waldir
# makes it.
$node->stop;
rename("$pgdata/pg_wal", "$base/wal") or die "rename pg_wal: $!";
symlink("$base/wal", "$pgdata/pg_wal") or die "symlink pg_wal: $!";
$node->start;

# What a careless or hostile caller could point the target at.
symlink("$pgdata/pg_replslot", "$base/into_replslot") or die;
symlink($pgdata, "$base/datadir_link") or die;
symlink($tsver, "$base/tsver_link") or die;
symlink($base, "$base/up") or die;

sub listing
{
	my ($dir) = @_;
	opendir(my $dh, $dir) or die "opendir $dir: $!";
	my @names = sort grep { $_ ne '.' && $_ ne '..' } readdir($dh);
	closedir($dh);
	return join(' ', @names);
}
my %before = map { $_ => listing($_) } ($pgdata, "$pgdata/pg_replslot", $tsdir, $tsver);

my @bad = (
	[ "$base/into_replslot", qr/overlaps the data directory/,
		'a symbolic link to pg_replslot' ],
	[ "$base/datadir_link/newdir", qr/overlaps the data directory/,
		'a new directory under a symbolic link to the data directory' ],
	[ "$base/missing/../datadir_link/sub", qr/overlaps the data directory/,
		'a path that reaches the data directory through .. and a symbolic link' ],
	[ "$tsdir/bk", qr/overlaps tablespace "ts"/,
		'a directory inside a tablespace location' ],
	[ "$base/tsver_link/bk", qr/overlaps tablespace "ts"/,
		'a symbolic link into a tablespace' ],
	[ "$base/wal/bk", qr/overlaps the WAL directory/,
		'a directory inside the WAL directory, which pg_wal links to' ],
	[ "$base/up", qr/overlaps the data directory/,
		'a symbolic link to a directory that holds the data directory' ],
);
for my $case (@bad)
{
	my ($target, $re, $what) = @$case;
	my ($ret, $out, $err) = $node->psql('postgres', "CALL replstamp.backup('$target')");
	isnt($ret, 0, "$what: refused");
	like($err, $re, "$what: the error names what the target overlaps");
	like($err, qr/HINT:  Choose a target outside/, "$what: the hint says what to do");
	is(sq('SELECT state FROM replstamp.node'), 'original', "$what: the database stays original");
	is(sq('SELECT count(*) FROM pg_replication_slots'), '0', "$what: no slot is left");
}
ok(!-e "$base/missing", 'no directory was created on the way to a refused target');
ok(!-e "$base/wal/bk", 'nothing was written into the WAL directory');
is(listing($_), $before{$_}, "nothing was written into $_") for sort keys %before;

# The live node is unharmed: it restarts (a copy in pg_replslot made it
# PANIC) and goes on writing.
$node->restart;
sq('INSERT INTO in_ts VALUES (101)');
is(sq('SELECT count(*) FROM in_ts'), '101', 'the node restarts and writes after the refusals');

# A symbolic link to a place outside the cluster is fine; the backup lands
# where the link points, and the WAL directory and tablespace behind links
# are copied into it.
mkdir("$base/elsewhere") or die;
symlink("$base/elsewhere", "$base/elsewhere_link") or die;
my ($ret, $out, $err) = $node->psql('postgres', "CALL replstamp.backup('$base/elsewhere_link/bk')");
is($ret, 0, 'a target behind a symbolic link to a place outside the cluster is accepted') or diag($err);
ok(-e "$base/elsewhere/bk/backup_manifest", 'the backup is where the link points');
$node->command_ok([ 'pg_verifybackup', "$base/elsewhere/bk" ], 'pg_verifybackup accepts it');
is(sq('SELECT state FROM replstamp.node'), 'original', 'and the database is original again');

$node->stop;
done_testing();
