# track() of a partitioned table covers every partition, present and
# future; its changes are stamped under the partitioned table's name, and
# each node routes a pulled row to its own partition, whatever its
# partitions are.  Three nodes, a full mesh, syncs by hand: a and b
# partition m by range of k (b with a default partition instead of a's
# third one), c by hash of id.
#   1. rows written on a and b reach every node, each in the partition
#      its own layout gives it, stamped as public.m only;
#   2. a partition created after track(), and one attached, are stamped
#      (the trigger cloned, enabled ALWAYS) and their rows replicate;
#   3. an UPDATE of the partition key moves a row between partitions on
#      a, and within one partition on c: every node ends with the row
#      under its new key only;
#   4. writers on a, b and c insert, update and move rows concurrently:
#      all three end with the same rows and change logs, verify() finds
#      no difference;
#   5. TRUNCATE of m replicates; TRUNCATE of one partition alone, and
#      disabling the cloned trigger on a partition, are refused;
#   6. untrack() of m removes the trigger from every partition.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

my $range = q{
	CREATE EXTENSION replstamp;
	CREATE TABLE m (k int, id int, v text, PRIMARY KEY (k, id)) PARTITION BY RANGE (k);
	CREATE TABLE m_1 PARTITION OF m FOR VALUES FROM (0) TO (100);
	CREATE TABLE m_2 PARTITION OF m FOR VALUES FROM (100) TO (200);
	SELECT replstamp.track('m');
};
my $hash = q{
	CREATE EXTENSION replstamp;
	CREATE TABLE m (k int, id int, v text, PRIMARY KEY (k, id)) PARTITION BY HASH (id);
	CREATE TABLE m_h0 PARTITION OF m FOR VALUES WITH (MODULUS 3, REMAINDER 0);
	CREATE TABLE m_h1 PARTITION OF m FOR VALUES WITH (MODULUS 3, REMAINDER 1);
	CREATE TABLE m_h2 PARTITION OF m FOR VALUES WITH (MODULUS 3, REMAINDER 2);
	SELECT replstamp.track('m');
};
my $a = replstamp_node('a', template => 1, conf => ['replstamp.prune_interval = 0'], sql => $range);
my $b = replstamp_node('b', template => 1, conf => ['replstamp.prune_interval = 0'],
	sql => $range . q{CREATE TABLE m_default PARTITION OF m DEFAULT;});
my $c = replstamp_node('c', template => 1, conf => ['replstamp.prune_interval = 0'], sql => $hash);
my @nodes = ($a, $b, $c);
add_mesh(@nodes);

sub sync_round
{
	for my $x (@nodes)
	{
		sq($x, "SELECT replstamp.sync('" . $_->name . "')") for grep { $_ != $x } @nodes;
	}
}

sub rows { my ($n) = @_; return sq($n, q{SELECT string_agg(k || '/' || id || '=' || v, ',' ORDER BY k, id) FROM m}); }

# 1.
sq($a, q{INSERT INTO m SELECT g, g, 'a' FROM generate_series(1, 199, 11) g});
sq($b, q{INSERT INTO m SELECT g, 1000 + g, 'b' FROM generate_series(5, 195, 19) g});
sync_round();
my $want = rows($a);
is(rows($_), $want, $_->name . ': holds the rows written on a and b') for ($b, $c);
is(sq($a, q{SELECT string_agg(DISTINCT relation, ',') FROM replstamp.changes}), 'public.m',
	'the changes of every partition are stamped under the partitioned table\'s name');
is(sq($c, q{SELECT count(DISTINCT tableoid) FROM m}), '3', 'c spreads them over its own (hash) partitions');
is(sq($b, q{SELECT count(*) FROM m_2}), sq($a, q{SELECT count(*) FROM m_2}),
	'b routes them to its partitions as a does');

# 2. A partition created after track() on a (b takes its rows in its
# default partition), and a table attached as a partition.
sq($a, q{CREATE TABLE m_3 PARTITION OF m FOR VALUES FROM (200) TO (300)});
sq($a, q{CREATE TABLE m_4 (k int, id int, v text, PRIMARY KEY (k, id));
	ALTER TABLE m ATTACH PARTITION m_4 FOR VALUES FROM (300) TO (400)});
is( sq($a, q{SELECT string_agg(c.relname || ':' || g.tgenabled::text, ',' ORDER BY c.relname) FROM pg_trigger g
		JOIN pg_class c ON c.oid = g.tgrelid WHERE g.tgname = 'replstamp_stamp' AND c.relname IN ('m_3', 'm_4')}),
	'm_3:A,m_4:A', 'a created and an attached partition carry the stamp trigger, enabled ALWAYS');
sq($a, q{INSERT INTO m VALUES (250, 1, 'new partition'), (350, 1, 'attached')});
sync_round();
is(sq($_, q{SELECT string_agg(v, ',' ORDER BY k) FROM m WHERE k >= 200}), 'new partition,attached',
	$_->name . ': holds the rows of the partitions made after track()') for @nodes;
is(sq($b, q{SELECT count(*) FROM m_default}), '2', 'b holds them in its default partition');

# 3. A row moves between partitions on a (1 -> 2), within one on c.
sq($a, q{UPDATE m SET k = 150, v = 'moved' WHERE k = 1 AND id = 1});
sync_round();
for my $x (@nodes)
{
	is(sq($x, q{SELECT string_agg(k || '/' || v, ',' ORDER BY k) FROM m WHERE id = 1}), '150/moved,250/new partition,350/attached',
		$x->name . ': the moved row is there under its new key only');
}
is(sq($b, q{SELECT tableoid::regclass FROM m WHERE k = 150 AND id = 1}), 'm_2', 'b moved it to its partition m_2');
is( sq($a, q{SELECT string_agg(op || ' ' || (pk->>'k') || '>' || (row_image->>'k'), ',') FROM replstamp.changes
		WHERE NOT applied AND row_image->>'v' = 'moved'}),
	'UPDATE 1>150', 'the move is stamped as one UPDATE of m, from the old key to the new row');
is(sq($a, q{SELECT count(*) FROM replstamp.changes WHERE op = 'DELETE'}), '0', 'and no DELETE is left of it');
# A move and an ordinary change in one statement, and a move undone by a
# savepoint: each row's change on its own.
sq($a, q{BEGIN; UPDATE m SET k = k + 100 WHERE id IN (12, 23); SAVEPOINT s;
	UPDATE m SET k = 10 WHERE k = 150 AND id = 1; ROLLBACK TO s; COMMIT});
is( sq($a, q{SELECT string_agg(op, ',' ORDER BY serial) FROM replstamp.changes c
		WHERE NOT applied AND xact = (SELECT max(xact) FROM replstamp.changes WHERE NOT applied)}),
	'UPDATE,UPDATE', 'two rows moved by one statement: two UPDATEs, nothing of the rolled back move');
sync_round();
my $moved = rows($a);
is(rows($_), $moved, $_->name . ': holds the rows as a does after the moves') for ($b, $c);

# 4. Writers on a, b and c: inserts, updates and moves of the same rows.
sq($_, 'CREATE TABLE stop (x int)') for @nodes;
my %out;
my %w;
my $i = 0;
for my $x (@nodes)
{
	$i++;
	$out{ $x->name } = '';
	$w{ $x->name } = psql_start($x, qq{DO \$\$ DECLARE i int := 0; BEGIN WHILE NOT EXISTS (SELECT 1 FROM stop) LOOP
		i := i + 1;
		BEGIN
			UPDATE m SET k = (k + 37 * $i) % 400, v = '$i:' || i WHERE id = (i * 7 + $i) % 60 AND k < 390;
			UPDATE m SET v = '$i' || i WHERE id = (i * 3) % 60 AND k < 100;
		EXCEPTION WHEN unique_violation THEN NULL;	-- a move onto a key taken
			WHEN deadlock_detected THEN NULL;		-- with a sync's page, in the other order
		END;
		INSERT INTO m VALUES ((i * 13 + $i) % 400, 100000 * $i + i, '$i') ON CONFLICT DO NOTHING;
		COMMIT; PERFORM pg_sleep(0.002); END LOOP; END \$\$}, \$out{ $x->name });
}
for (1 .. 6)
{
	sync_round();
}
sq($_, 'INSERT INTO stop VALUES (1)') for @nodes;
$w{$_}->finish for keys %w;
is(join('', map { $out{$_} } sort keys %out), "DO\nDO\nDO\n", 'the writers on a, b and c ran without an error');
sync_round();
sync_round();
wait_converged(\@nodes, ['m'], 'writers moving rows between partitions on three nodes');
ok(sq($a, q{SELECT count(*) FROM replstamp.changes WHERE op = 'UPDATE' AND pk->>'k' <> row_image->>'k'}) > 10,
	'the writers moved rows between partitions');
is(sq($a, q{SELECT count(*) FROM replstamp.verify('b')}), '0', 'verify() finds no difference between a and b');
is(sq($c, q{SELECT count(*) FROM replstamp.verify('a', deep => true)}), '0', 'nor a deep one between c and a');

# 5. TRUNCATE.
my ($ret, $stdout, $stderr) = $a->psql('postgres', 'TRUNCATE m_1');
like($stderr, qr/cannot truncate partition "m_1" of tracked table "m" on its own/, 'TRUNCATE of one partition is refused');
($ret, $stdout, $stderr) = $a->psql('postgres', 'ALTER TABLE m_2 DISABLE TRIGGER replstamp_stamp');
like($stderr, qr/cannot disable, replace or drop the replstamp triggers of partition "m_2"/,
	'disabling the cloned trigger of a partition is refused');
sq($b, 'TRUNCATE m');
is(sq($b, q{SELECT string_agg(relation, ',') FROM replstamp.changes WHERE op = 'TRUNCATE'}), 'public.m',
	'TRUNCATE of m is one change of m');
sync_round();
is(sq($_, 'SELECT count(*) FROM m'), '0', $_->name . ': TRUNCATE of m on b emptied m') for @nodes;

# 6. untrack() undoes track() on every partition.
sq($c, q{SELECT replstamp.untrack('m')});
is(sq($c, q{SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'replstamp%'}), '0',
	'untrack() removes the triggers from m and every partition');
my $before = sq($c, 'SELECT count(*) FROM replstamp.changes');
sq($c, q{INSERT INTO m VALUES (1, 1, 'local')});
is(sq($c, 'SELECT count(*) FROM replstamp.changes'), $before, 'and its writes are no longer stamped');

done_testing();
