# Barman, the real tool (Debian's package): backup_method = postgres
# (pg_basebackup) with WAL streamed by pg_receivewal through a replication
# slot, the state flip done by the hook scripts doc/backup-and-restore.md
# prints (taken from it), and `barman recover` into a new data directory that
# rotates its replica ID and re-converges with a peer, the changes the
# original made after the backup included.  Also: when prepare_backup() fails, the hook
# stops the backup, and finish_backup() still runs.
use strict;
use warnings;
use FindBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;
require_programs('pg_basebackup', 'pg_receivewal');

plan skip_all => 'barman is not installed (test/run installs it as root)'
  unless system('barman --version >/dev/null 2>&1') == 0;
# Debian 12's Barman predates PostgreSQL 17 and refuses its data directories.
plan skip_all => "Barman here (Debian 12's) supports no PostgreSQL newer than 15; this is " . pg_major()
  if pg_major() > 15;

sub sq { my ($n, $sql) = @_; return $n->safe_psql('app', $sql); }
sub content { my ($n) = @_;
	return sq($n, "SELECT string_agg(format('%s:%s', id, note), ',' ORDER BY id) FROM accounts"); }
sub connect_to { my ($n, $name, $peer) = @_;
	sq($n, "SELECT replstamp.add_peer('$name', \$\$" . $peer->connstr('app') . "\$\$)"); }

my $schema = q{CREATE EXTENSION replstamp;
	CREATE TABLE accounts (id int PRIMARY KEY, note text);
	SELECT replstamp.track('accounts');};
my $a = replstamp_node('a', init => { allows_streaming => 1 });
$a->safe_psql('postgres', 'CREATE DATABASE app');
sq($a, $schema);
my $b = replstamp_node('b');
$b->safe_psql('postgres', 'CREATE DATABASE app');
sq($b, $schema);
connect_to($a, 'b', $b);
connect_to($b, 'a', $a);

# Barman's home, log and configuration stay under this test's directory;
# it runs as this user, with this installation's pg_basebackup and
# pg_receivewal.
my $tmp = PostgreSQL::Test::Utils::tempdir;
my $conf = "$tmp/barman.conf";
# Barman's log goes with the directory: on a failure, show its end first.
END
{
	if (defined $tmp && -e "$tmp/barman.log" && !Test::More->builder->is_passing)
	{
		my @lines = split /\n/, slurp_file("$tmp/barman.log");
		diag("end of barman.log:\n" . join("\n", @lines[ ($#lines > 80 ? $#lines - 80 : 0) .. $#lines ]));
	}
}
mkdir "$tmp/home" or die "$tmp/home: $!";
my $user = getpwuid($<);
my $host = $a->host;
my $port = $a->port;
my $bindir = $a->config_data('--bindir');

# The hook lines of the barman.conf in doc/backup-and-restore.md, with its
# example host and role replaced by this node's.
my $readme = slurp_file("$FindBin::Bin/../../doc/backup-and-restore.md");
my ($block) = $readme =~ /<!-- test\/t\/061_barman\.pl runs the hooks of this block -->\s*```ini\n(.*?)```/s;
ok(defined $block, 'doc/backup-and-restore.md has the Barman configuration');
my @hooks = grep { /^(pre|post)_backup/ } split /\n/, ($block // '');
is(scalar @hooks, 2, 'with a pre and a post backup hook');
s/-h pg\.example/-h '$host' -p $port/g, s/-U postgres/-U $user/g for @hooks;

append_to_file($conf, <<"EOF");
[barman]
barman_home = $tmp/home
barman_user = $user
log_file = $tmp/barman.log
log_level = INFO
minimum_redundancy = 0

[pg]
description = "replstamp test node a"
conninfo = host=$host port=$port user=$user dbname=postgres
streaming_conninfo = host=$host port=$port user=$user
backup_method = postgres
streaming_archiver = on
slot_name = barman
create_slot = auto
archiver = off
path_prefix = $bindir
@{[ join("\n", @hooks) ]}
EOF

sub barman { return run_log([ 'barman', '-c', $conf, @_ ]); }
# receive-wal runs in the background: never leave it behind, whatever happens.
END { local $?; system("barman -c '$conf' -q receive-wal --stop pg >/dev/null 2>&1") if defined $conf && -e $conf; }

sq($a, "INSERT INTO accounts SELECT g, 'a before backup' FROM generate_series(1, 5) g");
sq($b, "INSERT INTO accounts SELECT g, 'b before backup' FROM generate_series(6, 10) g");
sq($b, "SELECT replstamp.sync('a')");
sq($a, "SELECT replstamp.sync('b')");
my $id_a = sq($a, 'SELECT replica_id FROM replstamp.node');

# barman cron creates the slot and starts receive-wal (pg_receivewal) in
# the background; switch-wal --archive waits until a WAL file arrives.
ok(barman('cron'), 'barman cron: creates the slot and starts receive-wal');
# receive-wal starts in the background, and the slot holds no WAL until it
# connects: a switch before that moves past the segment Barman then waits
# for (which never arrives).  Wait until it streams.
$a->poll_query_until('postgres', q{SELECT EXISTS (SELECT 1 FROM pg_stat_replication WHERE state = 'streaming')
	AND EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = 'barman' AND restart_lsn IS NOT NULL)})
  or die 'barman receive-wal never started streaming';
ok(barman('switch-wal', '--force', '--archive', '--archive-timeout', '180', 'pg'),
	'barman switch-wal --archive: WAL streams into Barman');
ok(barman('check', 'pg'), 'barman check: every check OK');

ok(barman('backup', '--wait', 'pg'), 'barman backup with the hooks of doc/backup-and-restore.md');
is(sq($a, 'SELECT state FROM replstamp.node'), 'original', 'the post hook marked the live node original again');
is(sq($a, 'SELECT replica_id FROM replstamp.node'), $id_a, 'the live node keeps its ID');
is(sq($a, 'SELECT backup_label FROM replstamp.node'), 'barman', 'the pre hook recorded the backup');
my ($list) = run_command([ 'barman', '-c', $conf, 'list-backups', 'pg' ]);
is(scalar(() = $list =~ /^pg \d{8}T\d{6}/mg), 1, 'barman list-backups shows the backup');

# The pre hook cannot mark the node (a second prepare_backup() is refused
# while the node is 'backup'): the hook exits 63, Barman stops the backup,
# and the post hook still unmarks the node.
sq($a, "SELECT replstamp.prepare_backup('someone else')");
ok(!barman('backup', 'pg'), 'a backup whose pre hook fails is stopped');
is(sq($a, 'SELECT state FROM replstamp.node'), 'original', 'and the post hook still ran finish_backup()');
($list) = run_command([ 'barman', '-c', $conf, 'list-backups', 'pg' ]);
like($list, qr/FAILED/, 'Barman lists it as failed');
is(scalar(() = $list =~ /^pg \d{8}T\d{6}.* - (?!FAILED)/mg), 1, 'one usable backup, as before');

# After the backup: A changes rows, B pulls them, then A is lost.
sq($a, "INSERT INTO accounts SELECT g, 'a after backup' FROM generate_series(11, 15) g");
sq($a, "UPDATE accounts SET note = 'a changed after backup' WHERE id = 6");
sq($b, "SELECT replstamp.sync('a')");
is(sq($b, "SELECT count(*) FROM accounts WHERE note LIKE 'a%after backup'"), '6',
	'B holds the changes A made after the backup');
barman('receive-wal', '--stop', 'pg');
$a->stop('immediate');

# Recover into a new data directory.
my $r = PostgreSQL::Test::Cluster->new('a_restored');
ok(barman('recover', 'pg', 'latest', $r->data_dir), 'barman recover into a new directory');
$r->append_conf('postgresql.conf', 'port = ' . $r->port . "\nunix_socket_directories = '" . $r->host . "'\n");
start_verified($r, sub { $r->start }, 'app');
my $id_r = sq($r, 'SELECT replica_id FROM replstamp.node');
isnt($id_r, $id_a, 'the recovered copy has a new replica ID');
like(sq($r, "SELECT retired_reason FROM replstamp.replica_history WHERE replica_id = '$id_a'"),
	qr/restored from backup "barman"/, 'replica_history: retired because restored from the Barman backup');
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
	'the recovered copy pulls back from B what A did after the backup');
is(sq($b, "SELECT count(*) FROM accounts WHERE id BETWEEN 16 AND 20"), '5',
	'B gets the changes of the recovered copy');
is(content($r), content($b), 'the recovered copy and B hold the same rows');
is(sq($r, 'SELECT count(*) FROM accounts'), '20', 'all 20 rows');

$_->stop for ($r, $b);
done_testing();
