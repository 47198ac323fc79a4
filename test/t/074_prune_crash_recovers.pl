# A crash in the middle of a prune: the prune worker is killed (kill -9,
# a crash restart of the whole server) while it works through a large
# log, after some of its batches committed.  After the restart a later
# prune finishes the work: the log holds exactly the latest change of each
# row, and a peer and a new node converge from it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my $schema = q{CREATE EXTENSION replstamp;
	CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
	SELECT replstamp.track('t');};
my @conf = ('replstamp.prune_interval = 0');
my $a = replstamp_node('a', conf => [ @conf, 'restart_after_crash = on' ], sql => $schema);
my $b = replstamp_node('b', conf => \@conf, sql => $schema);
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
sub checksum { my ($n) = @_;
	return sq($n, "SELECT md5(coalesce(string_agg(format('%s:%s', id, v), ',' ORDER BY id), '')) FROM t"); }
sub not_latest { my ($n) = @_;
	return sq($n, q{SELECT count(*) FROM replstamp.changes c WHERE NOT EXISTS (
		SELECT 1 FROM replstamp.row_version rv WHERE rv.replica_id = c.replica_id AND rv.serial = c.serial)}); }
sub latest_missing { my ($n) = @_;
	return sq($n, q{SELECT count(*) FROM replstamp.row_version rv WHERE NOT EXISTS (
		SELECT 1 FROM replstamp.changes c WHERE c.replica_id = rv.replica_id AND c.serial = rv.serial)}); }
add_peer($b, 'a', $a);

# A large log: 5,000 rows written 30 times, some deleted: 150,000 changes
# that are not the latest of their row.
sq($a, 'INSERT INTO t SELECT g, 0 FROM generate_series(1, 5000) g');
sq($a, 'UPDATE t SET v = v + 1') for (1 .. 30);
sq($a, 'DELETE FROM t WHERE id % 100 = 0');
sq($b, "SELECT replstamp.sync('a')") for (1 .. 2);
my $before = sq($a, 'SELECT count(*) FROM replstamp.changes');

# Prune, and kill the prune worker once a few batches have committed.
my ($out, $err) = ('', '');
my $prune = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $a->connstr('postgres'), '-c', 'SELECT replstamp.prune()' ],
	'>', \$out, '2>', \$err);
ok($a->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity
	WHERE backend_type = 'replstamp prune' AND EXISTS (SELECT 1 FROM replstamp.prune_progress WHERE walked_upto > 0)}),
	'the prune worker is at work, some batches committed');
my $pid = sq($a, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'replstamp prune'");
my $offset = -s $a->logfile;
kill 'KILL', $pid;
$prune->finish;
$a->wait_for_log(qr/all server processes terminated; reinitializing/, $offset);
$a->wait_for_log(qr/database system is ready to accept connections/, $offset);
like($err, qr/terminat|server closed the connection|connection to server was lost/,
	'the prune was cut off by the crash');
my $mid = sq($a, 'SELECT count(*) FROM replstamp.changes');
ok($mid < $before && not_latest($a) > 0, "the crash left a half-pruned log ($mid of $before changes)");
is(latest_missing($a), '0', 'every latest change survived the crash');

# A later prune finishes the work.
my $removed = sq($a, 'SELECT replstamp.prune()');
is($removed, $mid - sq($a, 'SELECT count(*) FROM replstamp.changes'), "a later prune removes the rest ($removed)");
is(not_latest($a), '0', 'the log holds only the latest change of each row');
is(sq($a, 'SELECT count(*) FROM replstamp.changes'), sq($a, 'SELECT count(*) FROM replstamp.row_version'),
	'one change per row, tombstones included');
is(sq($a, 'SELECT count(*) FROM replstamp.prune_queue'), '0', 'nothing left queued');

# Everything still converges: b goes on, a new node starts from scratch.
sq($a, 'UPDATE t SET v = v + 1 WHERE id <= 10');
sq($b, "SELECT replstamp.sync('a')");
is(checksum($b), checksum($a), 'b converges after the crash');
my $c = replstamp_node('c', conf => \@conf, sql => $schema);
add_peer($c, 'a', $a);
sq($c, "SELECT replstamp.sync('a')");
is(checksum($c), checksum($a), 'a new node converges from the pruned log');
is(sq($c, 'SELECT count(*) FROM t'), '4950', 'without the deleted rows');

$_->stop for ($a, $b, $c);
done_testing();
