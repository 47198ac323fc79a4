# TRUNCATE of a tracked table replicates as one stamped change: every
# node deletes the rows whose latest version the truncating node held,
# and keeps the rows written where it had not seen them yet, whatever
# their stamp times and whatever order the changes arrive in.  Three
# nodes, a full mesh, syncs by hand.
#   1. a row updated on b and one inserted on c, neither seen by a, stay
#      on every node, though both are stamped before the TRUNCATE; a row
#      b updated and a had pulled before it truncated goes everywhere;
#   2. c, which never pulled from b, gets b's update through a (relay)
#      before the TRUNCATE, and deletes it too;
#   3. TRUNCATE ... CASCADE of a parent and child, and one TRUNCATE of two
#      tables, each replicate in one transaction;
#   4. writers on b and c insert and update while a truncates: all three
#      end with the same rows and change logs, and verify() finds no
#      difference;
#   5. a TRUNCATE in a REPEATABLE READ transaction covers a row pulled
#      after its snapshot was taken (TRUNCATE removes it all the same);
#   6. a prune keeps the TRUNCATE: a node that joins later gets the rows
#      it covers and the TRUNCATE, and holds what the others hold.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

my $schema = q{
	CREATE EXTENSION replstamp;
	CREATE TABLE t (id int PRIMARY KEY, v text);
	CREATE TABLE parent (id int PRIMARY KEY);
	CREATE TABLE child (id int PRIMARY KEY, pid int REFERENCES parent);
	CREATE TABLE u1 (id int PRIMARY KEY);
	CREATE TABLE u2 (id int PRIMARY KEY);
	SELECT replstamp.track(r) FROM unnest('{t,parent,child,u1,u2}'::regclass[]) r;
};
my @nodes = map { replstamp_node($_, template => 1, conf => ['replstamp.prune_interval = 0'], sql => $schema) } qw(a b c);
my ($a, $b, $c) = @nodes;
add_mesh(@nodes);

sub sync_round
{
	for my $x (@nodes)
	{
		sq($x, "SELECT replstamp.sync('" . $_->name . "')") for grep { $_ != $x } @nodes;
	}
}

# 1 and 2.
sq($a, q{INSERT INTO t SELECT g, 'a' FROM generate_series(1, 10) g});
sync_round();
is(sq($c, 'SELECT count(*) FROM t'), '10', 'every node holds the 10 rows of a');

# b updates row 7 and a pulls it; c never pulls from b before the TRUNCATE.
sq($b, q{UPDATE t SET v = 'b seen' WHERE id = 7});
sq($a, q{SELECT replstamp.sync('b')});
# Neither seen by a: stamped before its TRUNCATE.
sq($b, q{UPDATE t SET v = 'b unseen' WHERE id = 5});
sq($c, q{INSERT INTO t VALUES (50, 'c unseen')});
sq($a, 'TRUNCATE t');
is(sq($a, 'SELECT count(*) FROM t'), '0', 'TRUNCATE of a tracked table runs on a');
is(sq($a, q{SELECT count(*) FROM replstamp.changes WHERE op = 'TRUNCATE' AND relation = 'public.t'}),
	'1', 'as one stamped change');
ok( sq($a, q{SELECT max(changed_at) FILTER (WHERE op = 'TRUNCATE') > max(changed_at) FILTER (WHERE op <> 'TRUNCATE') FROM replstamp.changes}) eq 't'
	  && sq($b, q{SELECT count(*) FROM replstamp.changes WHERE row_image->>'v' = 'b unseen'}) eq '1',
	'the unseen changes are stamped before it');

# c pulls from a first: b's update of row 7 comes through a, before the TRUNCATE.
sq($c, q{SELECT replstamp.sync('a')});
is(sq($c, 'SELECT id || v FROM t ORDER BY id'), '50c unseen',
	'c deletes what a held, b\'s update of row 7 relayed by a included, and keeps its own unseen row');
sync_round();
sync_round();
for my $x (@nodes)
{
	is(sq($x, q{SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM t}), '5:b unseen,50:c unseen',
		$x->name . ': the rows a had not seen stay, every row it had seen is gone');
}

# 3. CASCADE, and two tables at once.
sq($b, q{INSERT INTO parent VALUES (1), (2); INSERT INTO child VALUES (10, 1), (20, 2);
	INSERT INTO u1 VALUES (1); INSERT INTO u2 VALUES (1)});
sync_round();
sq($a, 'TRUNCATE parent CASCADE');
sq($a, 'TRUNCATE u1, u2');
is( sq($a, q{SELECT string_agg(DISTINCT relation, ',' ORDER BY relation) || ' ' || count(DISTINCT xact)
		FROM replstamp.changes WHERE op = 'TRUNCATE' AND relation <> 'public.t'}),
	'public.child,public.parent,public.u1,public.u2 2',
	'CASCADE stamps the child too; two statements, two transactions');
sync_round();
for my $x ($b, $c)
{
	is( sq($x, q{SELECT (SELECT count(*) FROM parent) + (SELECT count(*) FROM child)
		+ (SELECT count(*) FROM u1) + (SELECT count(*) FROM u2)}),
		'0', $x->name . ': the cascaded and the listed tables are empty');
}

# 4. Writers on b and c while a truncates.
sq($a, q{INSERT INTO t SELECT g, 'a' FROM generate_series(100, 400) g});
sync_round();
sq($_, 'CREATE TABLE stop (x int)') for ($b, $c);
my ($outb, $outc) = ('', '');
my $wb = psql_start($b, q{DO $$ DECLARE i int := 0; BEGIN WHILE NOT EXISTS (SELECT 1 FROM stop) LOOP
	i := i + 1; UPDATE t SET v = 'b' || i WHERE id = 100 + i % 300; INSERT INTO t VALUES (10000 + i, 'b');
	COMMIT; IF i % 50 = 0 THEN PERFORM replstamp.sync('a'); COMMIT; END IF; PERFORM pg_sleep(0.005);
	END LOOP; END $$}, \$outb);
my $wc = psql_start($c, q{DO $$ DECLARE i int := 0; BEGIN WHILE NOT EXISTS (SELECT 1 FROM stop) LOOP
	i := i + 1; UPDATE t SET v = 'c' || i WHERE id = 400 - i % 300; INSERT INTO t VALUES (20000 + i, 'c');
	COMMIT; PERFORM pg_sleep(0.005); END LOOP; END $$}, \$outc);
for (1 .. 5)
{
	sq($a, q{SELECT replstamp.sync('b'); SELECT replstamp.sync('c')});
	sq($a, 'TRUNCATE t');
}
# Written after a's last TRUNCATE, unseen by it.
sq($b, q{INSERT INTO t VALUES (9999, 'b after')});
sq($_, 'INSERT INTO stop VALUES (1)') for ($b, $c);
$wb->finish;
$wc->finish;
is($outb . $outc, "DO\nDO\n", 'the writers on b and c ran without an error');
sync_round();
sync_round();
my $state = wait_converged(\@nodes, ['t'], 'writers on b and c during five TRUNCATEs on a');
is(sq($_, q{SELECT v FROM t WHERE id = 9999}), 'b after', $_->name . ': a row written after the last TRUNCATE survived it') for @nodes;
is(sq($a, q{SELECT count(*) FROM replstamp.verify('b')}), '0', 'verify() finds no difference between a and b');
is(sq($c, q{SELECT count(*) FROM replstamp.verify('a', deep => true)}), '0', 'nor a deep one between c and a');

# 5. A TRUNCATE in a REPEATABLE READ transaction whose snapshot is older
# than a sync that brought a row of the table: TRUNCATE removes the row
# whatever the snapshot, and its change must cover the row's version.
sq($a, 'CREATE TABLE gate (x int)');
my ($outh, $outr) = ('', '');
my $holder = psql_start($a, q{SELECT pg_advisory_lock(42); DO $$ BEGIN
	WHILE NOT EXISTS (SELECT 1 FROM gate) LOOP PERFORM pg_sleep(0.01); END LOOP; END $$}, \$outh);
$a->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = 42 AND granted})
  or die 'the advisory lock was never taken';
my $rr = psql_start($a, q{BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM t;
	SELECT pg_advisory_lock(42); TRUNCATE t; COMMIT}, \$outr);
$a->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = 42 AND NOT granted})
  or die 'the REPEATABLE READ transaction never waited';
sq($b, q{UPDATE t SET v = 'pulled after the snapshot' WHERE id = 9999});
sq($a, q{SELECT replstamp.sync('b')});
is(sq($a, 'SELECT v FROM t WHERE id = 9999'), 'pulled after the snapshot', 'a pulled the update after the snapshot was taken');
sq($a, 'INSERT INTO gate VALUES (1)');
$holder->finish;
$rr->finish;
like($outr, qr/COMMIT/, 'the REPEATABLE READ transaction truncated and committed');
sync_round();
sync_round();
wait_converged(\@nodes, ['t'], 'a TRUNCATE in an older snapshot');
is(sq($_, 'SELECT count(*) FROM t WHERE id = 9999'), '0',
	$_->name . ': the row pulled after the snapshot, before the TRUNCATE, is gone') for @nodes;

# 6. A prune keeps the TRUNCATE for a late joiner.
sq($_, 'SELECT replstamp.prune()') for @nodes;
my $d = replstamp_node('d', template => 1, conf => ['replstamp.prune_interval = 0'], sql => $schema);
add_peer($d, 'a', $a);
sq($d, q{SELECT replstamp.sync('a')});
is( sq($d, q{SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM t}),
	sq($a, q{SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM t}),
	'a node that joins after a prune holds the rows a holds');
ok(sq($d, q{SELECT count(*) FROM replstamp.changes WHERE op = 'TRUNCATE'}) > 0, 'it got the TRUNCATEs');

done_testing();
