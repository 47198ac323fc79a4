# Two clones of one stopped data directory (a cold copy started on a second
# host, a snapshot cloned for testing) present the same replica ID and hand
# out the same serials for different changes (issue 9, item 3).  A third
# node s pulls from both: the second clone it meets has another history of
# that ID, rotates and re-issues its change, so s gets both; with the sync
# workers running all three end with the same rows and change-log stamps,
# and every node's next local INSERT goes through.  Negative control: with
# replstamp.check_histories = off everywhere, s.sync('p') returns 1 and
# s.sync('p2') 0, as in the issue, and p2's row is lost without a word.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

my $schema = q{CREATE EXTENSION replstamp;
	CREATE TABLE t (id int PRIMARY KEY, note text);
	SELECT replstamp.track('t');};

sub clones
{
	my ($check) = @_;
	my @conf = ('replstamp.prune_interval = 0', "replstamp.check_histories = $check");
	my $p = replstamp_node("p_$check", template => 1, conf => \@conf, sql => $schema);
	my $s = replstamp_node("s_$check", template => 1, conf => \@conf, sql => $schema);
	add_peer($s, 'p', $p);
	add_peer($p, 's', $s);
	sq($p, "INSERT INTO t SELECT g, 'before the clone' FROM generate_series(1, 10) g");
	sq($s, "SELECT replstamp.sync('p')");
	sq($p, "INSERT INTO t SELECT g, 'before the clone, not pulled' FROM generate_series(21, 25) g");

	# The clone: a cold copy of p's data directory, started next to p.
	$p->stop;
	$p->backup_fs_cold('clone');
	my $p2 = PostgreSQL::Test::Cluster->new("p2_$check");
	$p2->init_from_backup($p, 'clone');
	start_verified($p, sub { $p->start });
	start_verified($p2, sub { $p2->start });
	is(sq($p2, 'SELECT replica_id FROM replstamp.node'), sq($p, 'SELECT replica_id FROM replstamp.node'),
		"the clones present one replica ID (check_histories $check)");
	add_peer($s, 'p2', $p2);
	add_peer($p, 'p2', $p2);
	add_peer($p2, 'p', $p);

	# Both write at once: the same stamp, two changes.
	my $w = $p->background_psql('postgres');
	$w->query_safe("BEGIN; INSERT INTO t VALUES (11, 'on p')");
	sq($p2, "INSERT INTO t VALUES (12, 'on p2')");
	$w->query_safe('COMMIT');
	$w->quit;
	is(sq($p, "SELECT serial FROM replstamp.changes WHERE (pk->>'id')::int = 11"),
		sq($p2, "SELECT serial FROM replstamp.changes WHERE (pk->>'id')::int = 12"),
		"their changes carry the same stamp (check_histories $check)");
	return ($p, $p2, $s);
}

# 1. With the histories compared.
my ($p, $p2, $s) = clones('on');
my $id = sq($p, 'SELECT replica_id FROM replstamp.node');
is(sq($s, "SELECT replstamp.sync('p')"), '6', "s.sync('p') pulls p's change (and the five from before the clone)");
is(sq($s, "SELECT replstamp.sync('p2')"), '1', "s.sync('p2') pulls p2's change too, not 0");
ok($p2->log_contains(qr/holds changes of this node's replica ID $id that this data set does not have/),
	'the clone s met second was told its history of the ID differs');
ok($p2->log_contains(qr/1 changes the old ID made from serial 16 on were re-issued/),
	'it re-issued its one change since the clone, not the ones both clones hold');
my $id2 = sq($p2, 'SELECT replica_id FROM replstamp.node');
isnt($id2, $id, 'and took a new replica ID');
is(sq($s, "SELECT replica_id FROM replstamp.changes WHERE (pk->>'id')::int = 12"), $id2,
	"p2's change reached s under p2's new ID");
set_guc($_, 'replstamp.sync_interval', 1) for ($p, $p2, $s);
wait_converged([ $p, $p2, $s ], ['t'], 'two clones and a third node');
is(sq($_, 'SELECT string_agg(id::text, \',\' ORDER BY id) FROM t WHERE id > 10'), '11,12,21,22,23,24,25',
	$_->name . ' holds both clones\' rows') for ($p, $p2, $s);
my $next = 100;
for my $n ($p, $p2, $s)
{
	my ($rc, $out, $err) = $n->psql('postgres', "INSERT INTO t SELECT g, 'next' FROM generate_series($next, $next + 4) g");
	is($rc . $err, '0', $n->name . "'s next local INSERTs go through (no duplicate key on changes_pkey)");
	$next += 10;
}
wait_converged([ $p, $p2, $s ], ['t'], 'after the next writes');
$_->stop for ($p, $p2, $s);

# 2. Negative control: the issue's numbers.
($p, $p2, $s) = clones('off');
is(sq($s, "SELECT replstamp.sync('p')"), '6', "without the check: s.sync('p') returns 1 (and the five from before the clone)");
is(sq($s, "SELECT replstamp.sync('p2')"), '0', "without the check: s.sync('p2') returns 0");
sq($p, "SELECT replstamp.sync('p2')");
sq($p2, "SELECT replstamp.sync('p')");
is(sq($s, 'SELECT count(*) FROM t WHERE id = 12'), '0', "without the check: p2's row never reaches s");
is(sq($p, 'SELECT count(*) FROM t WHERE id = 12'), '0', "nor p");
is(sq($p2, 'SELECT count(*) FROM t WHERE id = 11'), '0', "and p's row never reaches p2");
is(sq($_, "SELECT count(*) FROM replstamp.peers WHERE status NOT IN ('ok', 'new') OR last_error IS NOT NULL"), '0',
	'without the check: ' . $_->name . ' reports nothing wrong') for ($p, $p2, $s);
$_->stop for ($p, $p2, $s);

done_testing();
