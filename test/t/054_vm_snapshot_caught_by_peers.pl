# A VM or storage snapshot restore: a crash-consistent copy of a RUNNING
# data directory (every server process frozen while the files are copied,
# no pg_backup_start, no backup mark), taken while a transaction is in
# flight, is started in place of the original after the original went on
# writing and its peer pulled those writes.  The copy goes through crash
# recovery; its peer holds changes of its replica ID that it lost.  With
# sync workers running, the peers catch it and every change reaches every
# node, in two shapes: the original wrote only a few changes after the
# snapshot (serials the copy's sequence, WAL-logged ahead, never hands out
# again), and many (serials the copy hands out again for other changes).
# Negative control: replstamp.check_histories = off on both nodes.
use strict;
use warnings;
use File::Path qw(rmtree);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

my $schema = q{CREATE EXTENSION replstamp;
	CREATE TABLE t (id int PRIMARY KEY, note text);
	SELECT replstamp.track('t');};


sub snapshot_scenario
{
	my ($check, $after) = @_;
	my $tag = "$after changes after the snapshot" . ($check eq 'on' ? '' : ', check_histories off');
	my @conf = ('replstamp.prune_interval = 0', "replstamp.check_histories = $check");
	my $a = replstamp_node("a_${check}_$after", template => 1, conf => \@conf, sql => $schema);
	my $b = replstamp_node("b_${check}_$after", template => 1, conf => \@conf, sql => $schema);
	add_peer($a, 'b', $b);
	add_peer($b, 'a', $a);
	# Once the extension exists (a sync worker that finds none waits a minute).
	set_guc($_, 'replstamp.sync_interval', 1) for ($a, $b);
	sq($a, "INSERT INTO t SELECT g, 'a' FROM generate_series(1, 10) g");
	sq($b, "INSERT INTO t SELECT g, 'b' FROM generate_series(1001, 1005) g");
	my $id = sq($a, 'SELECT replica_id FROM replstamp.node');

	# The snapshot, taken with a transaction in flight.
	my $inflight = $a->background_psql('postgres');
	$inflight->query_safe('BEGIN');
	$inflight->query_safe("INSERT INTO t VALUES (11, 'in flight at the snapshot')");
	my $snap = $PostgreSQL::Test::Utils::tmp_check . "/snapshot_${check}_$after";
	snapshot_running($a, $snap);
	$inflight->query_safe('COMMIT');
	$inflight->quit;
	sq($a, "INSERT INTO t SELECT g, 'after the snapshot' FROM generate_series(12, " . (11 + $after) . ') g');
	my $last = 11 + $after;
	$b->poll_query_until('postgres', "SELECT count(*) = $after + 1 FROM t WHERE id BETWEEN 11 AND $last")
	  or die 'b does not pull';
	pass("b pulled the changes a made after the snapshot ($tag)");

	# The original is lost; the snapshot is started in its place.
	$a->stop('immediate');
	rmtree($a->data_dir);
	system('cp', '-a', $snap, $a->data_dir) == 0 or die 'cp failed';
	start_verified($a, sub { $a->start });
	ok($a->log_contains(qr/database system was not properly shut down; automatic recovery in progress/),
		"the snapshot went through crash recovery ($tag)");
	sq($a, "INSERT INTO t SELECT g, 'on the restored snapshot' FROM generate_series(101, 105) g");
	return ($a, $b, $id, $last);
}

for my $after (5, 60)
{
	my ($a, $b, $id, $last) = snapshot_scenario('on', $after);
	wait_converged([ $a, $b ], ['t'], "snapshot, $after changes after it");
	is(sq($a, 'SELECT count(*) FROM t'), 10 + 5 + 1 + $after + 5, "every row on both nodes ($after after)");
	is(sq($a, "SELECT count(*) FROM t WHERE id BETWEEN 11 AND $last"), $after + 1,
		"the restored node got back what it lost ($after after)");
	is(sq($b, "SELECT count(*) FROM t WHERE id BETWEEN 101 AND 105"), '5',
		"its peer got what it wrote after the restore ($after after)");
	ok($a->log_contains(qr/retired replica ID $id and now stamps as .*\n.*DETAIL:  Reason: peer history/),
		"the restored node rotated because its peer's history of its ID differs ($after after)");
	is(sq($b, "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$id' AND (pk->>'id')::int BETWEEN 101 AND 105"),
		'0', "nothing it wrote after the restore carries its old ID ($after after)");
	# Each node a key of its own: a sync worker may bring the other's row
	# in between, and a shared max(id) + 1 would collide on the key.
	my $next = 900000 + 10 * $after;
	sq($_, 'INSERT INTO t VALUES (' . ++$next . ", 'next')") for ($a, $b);
	pass("the next local write on each node succeeds ($after after)");
	$_->stop for ($a, $b);
}

# Negative control.
my ($a, $b, $id, $last) = snapshot_scenario('off', 60);
my $since = sq($a, 'SELECT now()');
$a->poll_query_until('postgres', "SELECT last_sync_at > '$since' FROM replstamp.peer WHERE name = 'b'")
  or die 'a never synced';
$b->poll_query_until('postgres', "SELECT last_sync_at > '$since' FROM replstamp.peer WHERE name = 'a'")
  or die 'b never synced';
sq($b, "SELECT replstamp.sync('a')");
sq($a, "SELECT replstamp.sync('b')");
is(sq($a, "SELECT count(*) FROM t WHERE id BETWEEN 11 AND $last"), '0',
	'without the check: the restored node never gets back what it lost');
isnt(sq($b, "SELECT count(*) FROM t WHERE id BETWEEN 101 AND 105"), '5',
	'without the check: its peer misses changes it made after the restore');
isnt(node_state($a, 't'), node_state($b, 't'), 'without the check: the nodes have diverged');
$_->stop for ($a, $b);

done_testing();
