# A rolled-back node is caught by a node that knows it only through a
# third one.  Three nodes pull in a ring: b from a, c from b, a from c, so
# c holds a's changes only as b relayed them.  a's stopped data directory
# is copied, a writes on, the ring carries those changes to c, b goes down,
# and the copy is put back in a's place, which writes again under the same
# stamps.  a's next sync, from c, shows it that c holds another history of
# its replica ID: it rotates by itself, re-issues what it wrote since the
# rollback, and once b is back all three end with the same rows and the
# same change-log stamps.  A fourth node that pulled the changes made after
# the rollback before anybody noticed learns that their history was
# abandoned and re-issues them under its own ID.  Negative control: with
# replstamp.check_histories = off on all three, the same rollback diverges
# silently.
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

sub ring
{
	my ($check) = @_;
	my $tag = $check eq 'on' ? '' : ' (check_histories off)';
	my @conf = ('replstamp.prune_interval = 0', "replstamp.check_histories = $check");
	my %n = map { $_ => replstamp_node("${_}_$check", template => 1, conf => \@conf, sql => $schema) } qw(a b c);
	my ($a, $b, $c) = @n{qw(a b c)};
	add_peer($b, 'a', $a);
	add_peer($c, 'b', $b);
	add_peer($a, 'c', $c);
	sq($a, "INSERT INTO t SELECT g, 'a' FROM generate_series(1, 10) g");
	sq($c, "INSERT INTO t SELECT g, 'c' FROM generate_series(201, 205) g");
	sq($b, "SELECT replstamp.sync('a')");
	sq($c, "SELECT replstamp.sync('b')");
	sq($a, "SELECT replstamp.sync('c')");
	sq($b, "SELECT replstamp.sync('a')");
	my $id = sq($a, 'SELECT replica_id FROM replstamp.node');

	my $copy = "$PostgreSQL::Test::Utils::tmp_check/ring_copy_$check";
	$a->stop;
	system('cp', '-a', $a->data_dir, $copy) == 0 or die 'cp failed';
	start_verified($a, sub { $a->start });
	sq($a, "INSERT INTO t SELECT g, 'lost by the rollback' FROM generate_series(11, 15) g");
	sq($b, "SELECT replstamp.sync('a')");
	is(sq($c, "SELECT replstamp.sync('b')"), '5', "c gets a's changes 11-15 through b$tag");
	is(sq($c, "SELECT count(*) FROM replstamp.peer WHERE conninfo LIKE '%port=" . $a->port . " %'"), '0',
		"c does not pull from a$tag");

	$b->stop;
	$a->stop;
	rmtree($a->data_dir);
	system('cp', '-a', $copy, $a->data_dir) == 0 or die 'cp failed';
	start_verified($a, sub { $a->start });
	sq($a, "INSERT INTO t SELECT g, 'after the rollback' FROM generate_series(16, 20) g");

	# A fourth node, new, pulls from a before anybody noticed: it holds the
	# changes made after the rollback under the old stamps.  b will pull from
	# it.
	my $d;
	if ($check eq 'on')
	{
		$d = replstamp_node("d_$check", template => 1, conf => \@conf, sql => $schema);
		add_peer($d, 'a', $a);
		sq($d, "SELECT replstamp.sync('a')");
		is(sq($d, "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$id' AND (pk->>'id')::int BETWEEN 16 AND 20"),
			'5', 'a new node d pulls from a, before anybody noticed, what a wrote after the rollback');
	}
	set_guc($_, 'replstamp.sync_interval', 1) for ($a, $c);
	return ($a, $b, $c, $id, $d);
}

# 1. With the histories compared.
my ($a, $b, $c, $id, $d) = ring('on');
$a->poll_query_until('postgres', "SELECT replica_id <> '$id' FROM replstamp.node")
  or die 'the rolled-back node never rotated';
ok($a->log_contains(qr/peer "c" holds changes of this node's replica ID $id that this data set does not have/),
	'c, which knows a only through b, showed a that it went back in time');
my $new = sq($a, 'SELECT replica_id FROM replstamp.node');
$b->start;
add_peer($b, 'd', $d);
set_guc($_, 'replstamp.sync_interval', 1) for ($b, $d);
wait_converged([ $a, $b, $c, $d ], ['t'], 'ring after the rollback');
is(sq($_, 'SELECT count(*) FROM t'), '25', $_->name . ' holds every row: both histories and c\'s') for ($a, $b, $c, $d);
is(sq($_, "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$id' AND (pk->>'id')::int BETWEEN 16 AND 20"),
	'0', $_->name . ': no change made after the rollback carries the old ID') for ($a, $b, $c, $d);
# The epoch a abandoned starts at the first serial a stamped after the
# rollback.
my $dead_from = sq($a, "SELECT first_serial FROM replstamp.epoch WHERE replica_id = '$id' AND dead");
ok($d->log_contains(qr/reports that the history of replica ID $id from serial $dead_from on was abandoned/),
	"d learnt that the history it pulled (from serial $dead_from) was abandoned");
my $id_d = sq($d, 'SELECT replica_id FROM replstamp.node');
# The tables converge as soon as c holds a's re-issue of rows 16-20; d's
# reaches it through b with the next automatic syncs.
ok($c->poll_query_until('postgres',
		"SELECT count(*) = 5 FROM replstamp.changes WHERE replica_id = '$id_d' AND (pk->>'id')::int BETWEEN 16 AND 20"),
	"d re-issued what it held of it under its own ID, and that reached c through b");
is(sq($c, "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$new' AND (pk->>'id')::int BETWEEN 16 AND 20"),
	'5', "they reached c under a's new ID");
# Each node a key of its own: a sync worker may bring another's row in
# between, and a shared max(id) + 1 would then collide on the table's key.
my $next = 900000;
sq($_, 'INSERT INTO t VALUES (' . ++$next . ", 'next')") for ($a, $b, $c, $d);
pass('the next local write on each node goes through');
$_->stop for ($a, $b, $c, $d);

# 2. Negative control.
($a, $b, $c, $id) = ring('off');
$b->start;
sq($b, "SELECT replstamp.sync('a')");
sq($c, "SELECT replstamp.sync('b')");
sq($a, "SELECT replstamp.sync('c')");
is(sq($a, 'SELECT replica_id FROM replstamp.node'), $id, 'without the check: the node never rotates');
is(sq($c, 'SELECT count(*) FROM t WHERE id BETWEEN 16 AND 20'), '0',
	'without the check: c never gets what a wrote after the rollback');
is(sq($a, 'SELECT count(*) FROM t WHERE id BETWEEN 11 AND 15'), '0',
	'without the check: a never gets back what it lost');
is(sq($_, "SELECT count(*) FROM replstamp.peers WHERE status NOT IN ('ok', 'new') OR last_error IS NOT NULL"), '0',
	'without the check: ' . $_->name . ' reports nothing wrong') for ($a, $b, $c);
$_->stop for ($a, $b, $c);

done_testing();
