# pgBackRest, the real tool (Debian's package): a stanza whose WAL is
# archived with archive-push, a backup taken by the wrapper script of
# doc/backup-and-restore.md (run as it is printed there), a restore into a
# new data directory that rotates its replica ID and re-converges with a
# peer, the changes the original made after the backup included.
use strict;
use warnings;
use FindBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

plan skip_all => 'pgbackrest is not installed (test/run installs it as root)'
  unless system('pgbackrest version >/dev/null 2>&1') == 0;
# Debian 12's pgBackRest predates PostgreSQL 17 and refuses its data directories.
plan skip_all => "pgBackRest here (Debian 12's) supports no PostgreSQL newer than 15; this is " . pg_major()
  if pg_major() > 15;

sub sq { my ($n, $sql) = @_; return $n->safe_psql('app', $sql); }
sub content { my ($n) = @_;
	return sq($n, "SELECT string_agg(format('%s:%s', id, note), ',' ORDER BY id) FROM accounts"); }
sub connect_to { my ($n, $name, $peer) = @_;
	sq($n, "SELECT replstamp.add_peer('$name', \$\$" . $peer->connstr('app') . "\$\$)"); }

# Everything pgBackRest writes stays under this test's directory.
my $tmp = PostgreSQL::Test::Utils::tempdir;
my $conf = "$tmp/pgbackrest.conf";
mkdir "$tmp/$_" or die "$tmp/$_: $!" for qw(log lock spool);

my $a = PostgreSQL::Test::Cluster->new('a');
open my $fh, '>', $conf or die "$conf: $!";
print $fh <<"EOF";
[global]
repo1-path=$tmp/repo
repo1-retention-full=2
log-path=$tmp/log
lock-path=$tmp/lock
spool-path=$tmp/spool
log-level-console=warn
log-level-file=detail
start-fast=y

[main]
pg1-path=@{[ $a->data_dir ]}
pg1-port=@{[ $a->port ]}
pg1-socket-path=@{[ $a->host ]}
EOF
close $fh;

my $schema = q{CREATE EXTENSION replstamp;
	CREATE TABLE accounts (id int PRIMARY KEY, note text);
	SELECT replstamp.track('accounts');};
$a->init(allows_streaming => 1);
$a->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'replstamp'
replstamp.sync_interval = 0
archive_mode = on
archive_command = 'pgbackrest --config=$conf --stanza=main archive-push %p'
});
$a->start;
$a->safe_psql('postgres', 'CREATE DATABASE app');
sq($a, $schema);
my $b = replstamp_node('b');
$b->safe_psql('postgres', 'CREATE DATABASE app');
sq($b, $schema);
connect_to($a, 'b', $b);
connect_to($b, 'a', $a);

sq($a, "INSERT INTO accounts SELECT g, 'a before backup' FROM generate_series(1, 5) g");
sq($b, "INSERT INTO accounts SELECT g, 'b before backup' FROM generate_series(6, 10) g");
sq($b, "SELECT replstamp.sync('a')");
sq($a, "SELECT replstamp.sync('b')");
my $id_a = sq($a, 'SELECT replica_id FROM replstamp.node');

my $env = "PGBACKREST_CONFIG='$conf' PGHOST='" . $a->host . "' PGPORT='" . $a->port . "'";
my ($out, $err);
ok(run_log([ 'sh', '-c', "$env pgbackrest --stanza=main stanza-create" ]), 'pgbackrest stanza-create');
ok(run_log([ 'sh', '-c', "$env pgbackrest --stanza=main check" ]),
	'pgbackrest check: archive_command pushes WAL into the repository');

# The wrapper doc/backup-and-restore.md prints, byte for byte.
my $readme = slurp_file("$FindBin::Bin/../../doc/backup-and-restore.md");
my ($script) = $readme =~ /<!-- test\/t\/060_pgbackrest\.pl runs this block -->\s*```sh\n(.*?)```/s;
ok(defined $script, 'doc/backup-and-restore.md has the pgBackRest wrapper script');
$script //= "exit 1\n";
append_to_file("$tmp/backup.sh", $script);
chmod 0755, "$tmp/backup.sh";
ok(run_log([ 'sh', '-c', "$env $tmp/backup.sh" ]), 'the wrapper script takes a backup');
is(sq($a, 'SELECT state FROM replstamp.node'), 'original', 'the live node is original again');
is(sq($a, 'SELECT replica_id FROM replstamp.node'), $id_a, 'and keeps its ID');
is(sq($a, 'SELECT backup_label FROM replstamp.node'), 'pgbackrest', 'the label of the wrapped backup is recorded');
my ($info) = run_command([ 'sh', '-c', "$env pgbackrest --stanza=main --output=json info" ]);
like($info, qr/"type":"full"/, 'pgbackrest info lists the full backup');

# A failing backup still ends with finish_backup(): the trap.
my $bad = "PGBACKREST_CONFIG='$tmp/missing.conf' PGHOST='" . $a->host . "' PGPORT='" . $a->port . "'";
ok(!run_log([ 'sh', '-c', "$bad $tmp/backup.sh" ]), 'the wrapper fails when pgbackrest fails');
is(sq($a, 'SELECT state FROM replstamp.node'), 'original', 'and still marks the node original again');

# After the backup: A changes rows, B pulls them, then A is lost.
sq($a, "INSERT INTO accounts SELECT g, 'a after backup' FROM generate_series(11, 15) g");
sq($a, "UPDATE accounts SET note = 'a changed after backup' WHERE id = 6");
sq($b, "SELECT replstamp.sync('a')");
is(sq($b, "SELECT count(*) FROM accounts WHERE note LIKE 'a%after backup'"), '6',
	'B holds the changes A made after the backup');
$a->stop('immediate');

# Restore into a new data directory.
my $r = PostgreSQL::Test::Cluster->new('a_restored');
ok(run_log([ 'sh', '-c', "pgbackrest --config=$conf --stanza=main restore --pg1-path=" . $r->data_dir
	. ' --archive-mode=off' ]), 'pgbackrest restore --pg1-path into a new directory');
# The restored configuration is A's: give the copy its own port and socket.
$r->append_conf('postgresql.conf', 'port = ' . $r->port . "\nunix_socket_directories = '" . $r->host . "'\n");
like(slurp_file($r->data_dir . '/postgresql.auto.conf'), qr/restore_command = '.*--config=\Q$conf\E.*archive-get/,
	'the restore_command pgBackRest writes names the same configuration file');
start_verified($r, sub { $r->start }, 'app');
my $id_r = sq($r, 'SELECT replica_id FROM replstamp.node');
isnt($id_r, $id_a, 'the restored copy has a new replica ID');
like(sq($r, "SELECT retired_reason FROM replstamp.replica_history WHERE replica_id = '$id_a'"),
	qr/restored from backup "pgbackrest"/, 'replica_history: retired because restored from the pgBackRest backup');
is(sq($r, "SELECT count(*) FROM accounts WHERE id BETWEEN 11 AND 15"), '0',
	'the copy lacks what A did after the backup');
sq($r, "INSERT INTO accounts SELECT g, 'restored a' FROM generate_series(16, 20) g");
is(sq($r, "SELECT replica_id FROM replstamp.changes WHERE (pk->>'id')::int = 16"), $id_r,
	'a change on the copy carries the new ID');

# Re-converge: each pulls from the other.
sq($r, "UPDATE replstamp.peer SET conninfo = \$\$" . $b->connstr('app') . "\$\$ WHERE name = 'b'");
sq($b, "SELECT replstamp.drop_peer('a')");
connect_to($b, 'a', $r);
sq($b, "SELECT replstamp.sync('a')");
sq($r, "SELECT replstamp.sync('b')");
is(sq($r, "SELECT count(*) FROM accounts WHERE note LIKE 'a%after backup'"), '6',
	'the restored copy pulls back from B what A did after the backup');
is(sq($b, "SELECT count(*) FROM accounts WHERE id BETWEEN 16 AND 20"), '5',
	'B gets the changes of the restored copy');
is(content($r), content($b), 'the restored copy and B hold the same rows');
is(sq($r, 'SELECT count(*) FROM accounts'), '20', 'all 20 rows');

$_->stop for ($r, $b);
done_testing();
