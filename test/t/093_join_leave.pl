# Joining and leaving.
#  1. A node started from the schema only joins two nodes that hold data
#     (add_peer both ways, one sync): it ends with exactly their rows, and
#     its own writes reach them.
#  2. The same once the existing nodes have pruned their change logs: the
#     latest change of every row is kept, so the new node still gets every
#     row, and a row deleted before the prune stays deleted (its tombstone
#     is kept).  Rows that were never stamped (a table tracked after it had
#     rows, without backfill) reach it only after
#     replstamp.track(t, backfill => true) on a node that has them.
#  3. A node made from CALL replstamp.backup() of a live node rotates its
#     replica ID when it starts, joins without copying the data again (it
#     pulls only what changed since the backup), does not make the others
#     forget the live node as a puller, and no stamp names two changes.
#  4. A node leaves for good: until the remaining nodes drop it, it holds
#     back their pruning; one replstamp.drop_peer() on each releases it.
#  5. A node that joins after tombstones expired refuses, as the nodes it
#     joined do, a node that was away for longer than their lifetime.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my $schema = q{
	CREATE EXTENSION replstamp;
	CREATE TABLE t (id int PRIMARY KEY, v text);
	CREATE TABLE late (id int PRIMARY KEY, v text);
	SELECT replstamp.track('t');
};
my @conf = ('replstamp.prune_interval = 0');

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
sub content
{
	my ($n, $table) = @_;
	$table //= 't';
	return sq($n, "SELECT coalesce(string_agg(id || ':' || v, ',' ORDER BY id), '') FROM $table");
}
sub rid { my ($n) = @_; return sq($n, 'SELECT replica_id FROM replstamp.node'); }

# x pulls from y and y from x.
sub join_peers
{
	my ($x, $y) = @_;
	add_peer($x, $y->name, $y);
	add_peer($y, $x->name, $x);
	return;
}
# Every node pulls from every other, in turn.
sub sync_round
{
	my @nodes = @_;
	for my $x (@nodes)
	{
		for my $y (@nodes)
		{
			sq($x, "SELECT replstamp.sync('" . $y->name . "')") unless $x == $y;
		}
	}
	return;
}
# The changes of one row of t held here.
sub row_changes
{
	my ($n, $id) = @_;
	return sq($n, qq{SELECT count(*) FROM replstamp.changes WHERE relation = 'public.t' AND pk = '{"id": $id}'});
}

my $a = replstamp_node('a', init => { allows_streaming => 1 }, conf => \@conf, sql => $schema);
my $b = replstamp_node('b', conf => \@conf, sql => $schema);
join_peers($a, $b);

# a holds rows in late from before it was tracked there, without backfill.
sq($a, q{INSERT INTO late SELECT g, 'untracked ' || g FROM generate_series(1, 20) g;
	SELECT replstamp.track('late')});
sq($b, q{SELECT replstamp.track('late')});

sq($a, q{INSERT INTO t SELECT g, 'a' || g FROM generate_series(1, 100) g});
sq($b, q{INSERT INTO t SELECT g, 'b' || g FROM generate_series(101, 150) g});
sync_round($a, $b);
sq($a, q{UPDATE t SET v = 'a updated' WHERE id BETWEEN 1 AND 10});
sq($b, q{UPDATE t SET v = 'b updated' WHERE id BETWEEN 5 AND 15});
sq($a, q{DELETE FROM t WHERE id BETWEEN 20 AND 24});
sq($b, q{DELETE FROM t WHERE id IN (101, 102)});
sq($a, q{INSERT INTO late VALUES (21, 'stamped')});
sync_round($a, $b);
is(content($a), content($b), 'a and b hold the same rows before anyone joins');

# 1. c, from the schema only, joins.
my $c = replstamp_node('c', conf => \@conf, sql => $schema . q{SELECT replstamp.track('late');});
join_peers($c, $a);
join_peers($c, $b);
my $applied = sq($c, 'SELECT replstamp.sync_all()');
ok($applied > 0, "c's first sync applies the changes a and b hold ($applied)");
is(content($c), content($a), 'c holds exactly the rows of a');
is(sq($c, 'SELECT count(*) FROM t WHERE id BETWEEN 20 AND 24 OR id IN (101, 102)'), '0',
	'the rows deleted on a and b are not on c');
sq($c, q{INSERT INTO t VALUES (1000, 'from c'); UPDATE t SET v = 'c updated' WHERE id = 1});
sq($a, q{SELECT replstamp.sync('c')});
sq($b, q{SELECT replstamp.sync('c')});
is(content($a), content($c), "c's writes reach a");
is(content($b), content($c), "c's writes reach b");
is(content($c, 'late'), '21:stamped',
	"but of the rows a held before it tracked late, none reach c: they were never stamped");

# 2. The existing nodes prune; then e, from the schema only, joins.
sq($a, q{UPDATE t SET v = 'a again' WHERE id BETWEEN 30 AND 39});
sq($a, q{DELETE FROM t WHERE id = 40});
sync_round($a, $b, $c);
my $before = row_changes($a, 30);
my %pruned = map { $_->name => sq($_, 'SELECT replstamp.prune()') } ($a, $b, $c);
ok($pruned{a} > 0 && $pruned{b} > 0 && $pruned{c} > 0,
	"every puller holds everything: pruning removes changes (a $pruned{a}, b $pruned{b}, c $pruned{c})");
is(row_changes($a, 30) . ' of ' . $before, "1 of $before", 'of a row changed several times only the latest change is left');
is(sq($a, q{SELECT op FROM replstamp.changes WHERE pk = '{"id": 40}' AND relation = 'public.t'}), 'DELETE',
	'of a deleted row its tombstone is left');

my $e = replstamp_node('e', conf => \@conf, sql => $schema . q{SELECT replstamp.track('late');});
join_peers($e, $_) for ($a, $b, $c);
sq($e, 'SELECT replstamp.sync_all()');
is(content($e), content($a), 'e, joining after the prune, holds exactly the rows of a');
is(sq($e, 'SELECT count(*) FROM t WHERE id = 40 OR id BETWEEN 20 AND 24'), '0',
	'the rows deleted before the prune are not on e');
is(sq($e, q{SELECT count(*) FROM replstamp.row_version WHERE relation = 'public.t' AND pk = '{"id": 40}' AND deleted}),
	'1', 'e holds the tombstone of the row deleted before the prune');

# Rows that were never stamped reach the new nodes after a backfill on a.
sq($a, q{SELECT replstamp.track('late', backfill => true)});
$a->poll_query_until('postgres', q{SELECT backfill = 'done' FROM replstamp.tracked_table WHERE relation = 'public.late'})
  or die 'the backfill does not end';
sync_round($a, $b, $c, $e);
is(content($_, 'late'), content($a, 'late'), $_->name . ': after the backfill on a, the rows of late are here')
  for ($b, $c, $e);

sq($e, q{INSERT INTO t VALUES (2000, 'from e')});
sync_round($a, $b, $c, $e);
is(content($_), content($e), $_->name . ": e's writes are here") for ($a, $b, $c);

# 3. d, made from a backup of a, joins: it pulls only what changed since.
my $id_a = rid($a);
my $backup = $a->backup_dir . '/for_d';
sq($a, "CALL replstamp.backup('$backup')");
sq($a, q{UPDATE t SET v = 'a after the backup' WHERE id BETWEEN 50 AND 56});
sq($b, q{UPDATE t SET v = 'b after the backup' WHERE id BETWEEN 60 AND 63});
sq($a, q{SELECT replstamp.sync('b')});
my $d = PostgreSQL::Test::Cluster->new('d');
$d->init_from_backup($a, 'for_d');
start_verified($d, sub { $d->start });
my $id_d = rid($d);
isnt($id_d, $id_a, 'd, started from the backup, has a replica ID of its own');
like(sq($d, "SELECT retired_reason FROM replstamp.replica_history WHERE replica_id = '$id_a'"),
	qr/restored from backup/, "and retired a's, as a restored copy");
is(sq($d, 'SELECT string_agg(name, \',\' ORDER BY name) FROM replstamp.peer'), 'b,c,e',
	"d has a's peers already");
my $held = sq($d, 'SELECT count(*) FROM replstamp.changes');
add_peer($d, 'a', $a);
add_peer($_, 'd', $d) for ($a, $b, $c, $e);
is(sq($d, 'SELECT replstamp.sync_all()'), '11',
	"its first sync applies only the 11 changes made after the backup (it holds $held already)");
ok(sq($d, 'SELECT count(*) FROM replstamp.changes') <= $held + 11,
	'and it holds at most those more (the sync removes the versions they superseded, if every puller holds them)');
is(content($d), content($a), 'd holds the rows of a');
is(sq($_, "SELECT count(*) FROM replstamp.puller WHERE replica_id = '$id_a'"), '1',
	$_->name . ": a is still a puller after d, which retired a's replica ID, pulled")
  for ($b, $c, $e);

sq($d, q{INSERT INTO t VALUES (3000, 'from d'); UPDATE t SET v = 'd updated' WHERE id = 2});
sq($a, q{UPDATE t SET v = 'a after d joined' WHERE id = 3});
sync_round($a, $b, $c, $e, $d);
is(content($_), content($d), $_->name . ": d's writes are here and the rows are the same") for ($a, $b, $c, $e);
is(sq($d, "SELECT count(*) FROM replstamp.changes WHERE NOT applied AND replica_id <> '$id_d' "
	  . "AND serial >= (SELECT lus_at_retirement FROM replstamp.replica_history WHERE replica_id = '$id_a')"), '0',
	'since the backup, d stamps only with its own replica ID');
# No stamp names two different changes anywhere.
my (%seen, @clashes);
for my $n ($a, $b, $c, $e, $d)
{
	for my $line (split /\n/, sq($n, q{SELECT replica_id || '/' || serial || ' ' || md5(relation || op || pk::text || coalesce(row_image::text, '')) FROM replstamp.changes}))
	{
		my ($stamp, $digest) = split / /, $line;
		push @clashes, $stamp if defined $seen{$stamp} && $seen{$stamp} ne $digest;
		$seen{$stamp} //= $digest;
	}
}
is(scalar(@clashes), 0, 'no stamp names two different changes on any two nodes (' . scalar(keys %seen) . ' stamps)');

# 4. d leaves for good.  Until the others drop it, it holds back their pruning.
$d->stop;
sq($a, qq{UPDATE t SET v = 'a, version ' || $_ WHERE id = 70}) for (1 .. 10);
# Twice: a puller's next pull tells what it holds after the first.
sync_round($a, $b, $c, $e) for (1 .. 2);
for my $n ($a, $b, $c, $e)
{
	ok(sq($n, "SELECT changes_not_held FROM replstamp.pullers WHERE replica_id = '$id_d'") >= 10,
		$n->name . ': replstamp.pullers shows d lacking the changes made since it left');
	sq($n, 'SELECT replstamp.prune()');
	is(row_changes($n, 70), '10', $n->name . ': pruning keeps the 10 changes of a row d lacks');
}
sq($_, q{SELECT replstamp.drop_peer('d')}) for ($a, $b, $c, $e);
for my $n ($a, $b, $c, $e)
{
	is(sq($n, "SELECT count(*) FROM replstamp.pullers WHERE replica_id = '$id_d'"), '0',
		$n->name . ': after drop_peer(\'d\') d is no puller');
	ok(sq($n, 'SELECT replstamp.prune()') >= 9, $n->name . ': and pruning removes what only d lacked');
	is(row_changes($n, 70), '1', $n->name . ': the latest change of the row is left');
}
my ($rc, $out, $err) = $a->psql('postgres', q{SELECT replstamp.drop_peer('d')});
like($err, qr/peer "d" does not exist/, 'dropping a peer that is not there is an error');
sync_round($a, $b, $c, $e);
is(content($_), content($a), $_->name . ' holds the rows of a') for ($b, $c, $e);

# 5. A node that joins after tombstones expired refuses, as the others do,
# a node away for longer than their lifetime: it holds a deleted row.
$c->stop;
sq($a, q{DELETE FROM t WHERE id = 80; UPDATE t SET v = 'after the delete' WHERE id = 81});
sync_round($a, $b, $e) for (1 .. 2);
for my $n ($a, $b, $e)
{
	sq($n, q{ALTER SYSTEM SET replstamp.tombstone_lifetime = '1s'; SELECT pg_reload_conf()});
	$n->poll_query_until('postgres',
		q{SELECT replstamp.prune() >= 0 AND EXISTS (SELECT 1 FROM replstamp.purged)
		  AND NOT EXISTS (SELECT 1 FROM replstamp.changes WHERE relation = 'public.t' AND pk = '{"id": 80}')})
	  or die 'the tombstones do not expire on ' . $n->name;
}
is(sq($a, q{SELECT count(*) FROM replstamp.changes WHERE relation = 'public.t' AND pk = '{"id": 80}'}), '0',
	'once its tombstone expired, nothing of the deleted row is left on a');
# f runs the mesh's lifetime, as every node should: it takes the others'
# word that tombstones were dropped only as far as it holds changes older
# than its own lifetime.
my $f = replstamp_node('f', conf => [@conf, "replstamp.tombstone_lifetime = '1s'"],
	sql => $schema . q{SELECT replstamp.track('late');});
join_peers($f, $_) for ($a, $b, $e);
sq($f, 'SELECT replstamp.sync_all()');
is(content($f), content($a), 'f, joining after the tombstones expired, holds the rows of a');

$c->start;
is(sq($c, 'SELECT count(*) FROM t WHERE id = 80'), '1', 'c, away since before the delete, still holds the row');
($rc, $out, $err) = $c->psql('postgres', q{SELECT replstamp.sync('a')});
like($err, qr/node "c\/postgres" is too far behind to pull from here/, 'a refuses c');
add_peer($c, 'f', $f);
add_peer($f, 'c', $c);
($rc, $out, $err) = $c->psql('postgres', q{SELECT replstamp.sync('f')});
like($err, qr/node "c\/postgres" is too far behind to pull from here/,
	'f, which never held the tombstone, refuses c too');
($rc, $out, $err) = $c->psql('postgres', q{SELECT replstamp.sync('a')});
like($err, qr/node "c\/postgres" is too far behind to pull from here/,
	'so c cannot pass for current with a either, with the deleted row still here');
($rc, $out, $err) = $f->psql('postgres', q{SELECT replstamp.sync('c')});
like($err, qr/peer "c" is too far behind to pull from/, 'and does not pull from c');
is(sq($f, 'SELECT count(*) FROM t WHERE id = 80'), '0', 'the deleted row does not come back on f');
$c->stop;
sq($_, q{SELECT replstamp.drop_peer('c')}) for ($a, $b, $e, $f);

done_testing();
