# A node put back in time without the backup mark -- its stopped data
# directory copied, started, written to, pulled from, stopped, and the old
# copy put back in place (what restoring a cold copy or a storage snapshot
# does) -- hands out again serials its peer already holds, for different
# changes.  Its peer holds another history of those serials: the first sync
# catches it, the node rotates by itself and re-issues what it stamped since
# the rollback, and with the sync workers running every change reaches
# every node.  Negative control: with replstamp.check_histories = off on
# both nodes the same rollback diverges silently (issue 9, item 2).
use strict;
use warnings;
use File::Path qw(rmtree);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use ReplstampTest;

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

my $schema = q{CREATE EXTENSION replstamp;
	CREATE TABLE t (id int PRIMARY KEY, note text);
	SELECT replstamp.track('t');};

sub rollback_scenario
{
	my ($check) = @_;
	my $tag = $check eq 'on' ? '' : ' (check_histories off)';
	my @conf = ('replstamp.prune_interval = 0', "replstamp.check_histories = $check");
	my $a = replstamp_node("a_$check", template => 1, conf => \@conf, sql => $schema);
	my $b = replstamp_node("b_$check", template => 1, conf => \@conf, sql => $schema);
	add_peer($a, 'b', $b);
	add_peer($b, 'a', $a);

	sq($a, "INSERT INTO t SELECT g, 'a' FROM generate_series(1, 10) g");
	sq($b, "INSERT INTO t SELECT g, 'b' FROM generate_series(101, 105) g");
	sq($b, "SELECT replstamp.sync('a')");
	sq($a, "SELECT replstamp.sync('b')");
	my $id = sq($a, 'SELECT replica_id FROM replstamp.node');

	# The cold copy, then changes the copy will not have, which b pulls.
	my $copy = $PostgreSQL::Test::Utils::tmp_check . "/cold_copy_$check";
	$a->stop;
	system('cp', '-a', $a->data_dir, $copy) == 0 or die 'cp failed';
	start_verified($a, sub { $a->start });
	sq($a, "INSERT INTO t SELECT g, 'lost by the rollback' FROM generate_series(11, 15) g");
	is(sq($b, "SELECT replstamp.sync('a')"), '5', "b pulls a's changes 11-15$tag");

	# Put the copy back and write: the same stamps, other changes.
	$a->stop;
	rmtree($a->data_dir);
	system('cp', '-a', $copy, $a->data_dir) == 0 or die 'cp failed';
	start_verified($a, sub { $a->start });
	is(sq($a, 'SELECT replica_id FROM replstamp.node'), $id,
		"the copy put back keeps its ID: nothing on the node itself gives it away$tag");
	sq($a, "INSERT INTO t SELECT g, 'after the rollback' FROM generate_series(16, 20) g");
	is(sq($a, "SELECT string_agg(serial::text, ',' ORDER BY serial) FROM replstamp.changes "
			  . "WHERE replica_id = '$id' AND (pk->>'id')::int BETWEEN 16 AND 20"),
		sq($b, "SELECT string_agg(serial::text, ',' ORDER BY serial) FROM replstamp.changes "
			  . "WHERE replica_id = '$id' AND (pk->>'id')::int BETWEEN 11 AND 15"),
		"the rolled-back node stamps new changes with the stamps b holds for others$tag");

	# The sync workers, from now on.
	my $since = sq($a, 'SELECT now()');
	my $t0 = time;
	set_guc($_, 'replstamp.sync_interval', 1) for ($a, $b);
	return ($a, $b, $id, $since, $t0);
}

# 1. With the histories compared.
my ($a, $b, $id, $since, $t0) = rollback_scenario('on');
$a->poll_query_until('postgres', "SELECT replica_id <> '$id' FROM replstamp.node")
  or die 'the rolled-back node never rotated';
my $elapsed = time - $t0;
note(sprintf('rotation %.1f s after the sync workers were started (sync_interval = 1 s)', $elapsed));
ok($a->log_contains(qr/holds changes of this node's replica ID $id that this data set does not have/),
	'the rolled-back node was told by its peer that it went back in time');
ok($a->log_contains(qr/retired replica ID $id and now stamps as .*\n.*DETAIL:  Reason: peer history/),
	'it rotated, giving the peer history as the reason');
my $new = sq($a, 'SELECT replica_id FROM replstamp.node');
wait_converged([ $a, $b ], ['t'], 'cold rollback');
is(sq($b, "SELECT string_agg(id || '=' || note, ',' ORDER BY id) FROM t WHERE id BETWEEN 11 AND 20"),
	join(',', (map { "$_=lost by the rollback" } 11 .. 15), (map { "$_=after the rollback" } 16 .. 20)),
	'both histories are kept: the changes lost by the rollback and those made after it');
is(sq($b, 'SELECT count(*) FROM t'), '25', 'every row on every node');
is(sq($b, "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$id' AND (pk->>'id')::int BETWEEN 16 AND 20"),
	'0', 'no change made after the rollback ever carries a stamp of the old history');
is(sq($b, "SELECT count(DISTINCT replica_id) FROM replstamp.changes WHERE (pk->>'id')::int BETWEEN 16 AND 20"),
	'1', 'they were re-issued under one ID');
is(sq($b, "SELECT DISTINCT replica_id FROM replstamp.changes WHERE (pk->>'id')::int BETWEEN 16 AND 20"),
	$new, "the rolled-back node's new one");
$a->poll_query_until('postgres', "SELECT count(*) = 0 FROM replstamp.peers WHERE status <> 'ok'")
  or die 'a peer of a stays not ok';
$b->poll_query_until('postgres', "SELECT count(*) = 0 FROM replstamp.peers WHERE status <> 'ok'")
  or die 'a peer of b stays not ok';
pass('recovered without a manual step: every peer is ok again');
# Each node a key of its own: a sync worker may bring the other's row in
# between, and a shared max(id) + 1 would then collide on the table's key.
my $next = 900000;
sq($_, 'INSERT INTO t VALUES (' . ++$next . ", 'next')") for ($a, $b);
pass('the next local write on each node succeeds (no duplicate stamp)');
$_->stop for ($a, $b);

# 2. Negative control: the same rollback, nobody compares histories.
($a, $b, $id, $since) = rollback_scenario('off');
$b->poll_query_until('postgres', "SELECT last_sync_at > '$since' FROM replstamp.peer WHERE name = 'a'")
  or die 'b never synced';
$a->poll_query_until('postgres', "SELECT last_sync_at > '$since' FROM replstamp.peer WHERE name = 'b'")
  or die 'a never synced';
sq($b, "SELECT replstamp.sync('a')");
sq($a, "SELECT replstamp.sync('b')");
is(sq($a, 'SELECT replica_id FROM replstamp.node'), $id, 'without the check: the node never rotates');
is(sq($b, 'SELECT count(*) FROM t WHERE id BETWEEN 16 AND 20'), '0',
	'without the check: b silently misses what a wrote after the rollback');
is(sq($a, 'SELECT count(*) FROM t WHERE id BETWEEN 11 AND 15'), '0',
	'without the check: a never gets back what it lost');
is(sq($_, "SELECT string_agg(status || coalesce(last_error, ''), ',') FROM replstamp.peers"), 'ok',
	'without the check: ' . $_->name . ' reports nothing wrong')
  for ($a, $b);
isnt(node_state($a, 't'), node_state($b, 't'), 'without the check: the nodes have diverged');
$_->stop for ($a, $b);

done_testing();
