# Schema changes of tracked tables replicate as stamped changes, in order
# with the rows around them, and are applied on every peer at that place,
# as the table's owner.  Three nodes, a full mesh, syncs by hand with
# replstamp.sync_batch_size = 3 (pages end between most transactions).
#   1. ADD COLUMN on a while a writer on a inserts rows that use the new
#      column from the first transaction after it commits, and a writer on
#      b inserts rows without it; c gets a's changes relayed through b:
#      every node ends with the column, the values, the same rows;
#   2. ALTER COLUMN TYPE, SET NOT NULL, ADD/DROP CONSTRAINT, CREATE/DROP
#      INDEX, RENAME COLUMN (on b), DROP COLUMN: every node ends with the
#      same definition (replstamp.table_schema()) and rows;
#   3. the same ADD COLUMN run on a and on b before either synced: found
#      done, not an error; the same ADD COLUMN IF NOT EXISTS on b and c;
#   4. ADD COLUMN x int on a and x text on b, concurrently: the sync stops
#      on every node with a clear error (the peer shows failing, never ok);
#      made the same by hand and the loser skipped, all converge;
#   5. CREATE TABLE in a tracked schema: created and tracked everywhere,
#      with the rows written in its transaction;
#   6. the statement runs on a peer as the table's owner, not as the
#      superuser that runs the sync: a CHECK the owner's function
#      validates refuses a superuser;
#   7. with replstamp.replicate_ddl off, a schema change stays local (the
#      rolling, by-hand way of doc/operations.md still works);
#   8. verify() names a table whose definitions differ between two nodes.
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
	SELECT replstamp.track('t');
	CREATE SCHEMA app;
	CREATE ROLE alice;
	GRANT ALL ON SCHEMA public, app TO alice;
	CREATE FUNCTION public.not_superuser(int) RETURNS boolean IMMUTABLE
	    LANGUAGE sql AS $$ SELECT NOT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user $$;
	CREATE TABLE owned (id int PRIMARY KEY, v text);
	ALTER TABLE owned OWNER TO alice;
	SELECT replstamp.track('owned');
};
my @nodes = map {
	replstamp_node($_, template => 1,
		conf => ['replstamp.prune_interval = 0', 'replstamp.sync_batch_size = 3'], sql => $schema)
} qw(a b c);
my ($a, $b, $c) = @nodes;
add_mesh(@nodes);

sub sync_from
{
	my ($x, $peer) = @_;
	return sq($x, "SELECT replstamp.sync('" . $peer->name . "')");
}

sub sync_round
{
	for my $x (@nodes)
	{
		sync_from($x, $_) for grep { $_ != $x } @nodes;
	}
}

sub same_everywhere
{
	my ($what, @tables) = @_;
	my @schemas = map { my $n = $_; join(' ', map { sq($n, "SELECT replstamp.table_schema('$_')") } @tables) } @nodes;
	is($schemas[$_], $schemas[0], "$what: " . $nodes[$_]->name . ' has the definition a has') for (1, 2);
	wait_converged(\@nodes, \@tables, $what);
}

# 1.
sq($a, q{INSERT INTO t SELECT g, 'a' FROM generate_series(1, 10) g});
sync_round();
my $writer_sql = q{
DO $$
BEGIN
	FOR i IN 1..60 LOOP
		BEGIN
			EXECUTE 'INSERT INTO t (id, v, c) VALUES ($1, ''w'', $1)' USING 100 + i;
		EXCEPTION WHEN undefined_column THEN
			INSERT INTO t (id, v) VALUES (100 + i, 'w');
		END;
		COMMIT;
		PERFORM pg_catalog.pg_sleep(0.01);
	END LOOP;
END $$;
};
my $b_sql = q{
DO $$
BEGIN
	FOR i IN 1..60 LOOP
		INSERT INTO t (id, v) VALUES (1000 + i, 'b');
		COMMIT;
		PERFORM pg_catalog.pg_sleep(0.01);
	END LOOP;
END $$;
};
my ($wout, $bout) = ('', '');
my $w = psql_start($a, $writer_sql, \$wout);
my $bw = psql_start($b, $b_sql, \$bout);
sq($a, q{BEGIN; INSERT INTO t VALUES (11, 'before'); ALTER TABLE t ADD COLUMN c int; INSERT INTO t VALUES (12, 'same xact', 12); COMMIT});
# Pulls while both write: b from a, c from b only (a's changes relayed).
for (1 .. 5)
{
	sync_from($b, $a);
	sync_from($c, $b);
}
$w->finish;
$bw->finish;
is(sq($c, q{SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'c'}), '1',
	'c has the column a added, relayed by b');
sync_round();
sync_round();
is(sq($b, q{SELECT count(*) FILTER (WHERE c IS DISTINCT FROM id) FROM t WHERE id > 100 AND id < 1000 AND c IS NOT NULL}),
	'0', 'the values the writer on a gave the new column are on b');
is(sq($c, q{SELECT c FROM t WHERE id = 12}), '12', 'the row written in the ALTER\'s transaction has its value on c');
is(sq($a, q{SELECT count(*) FROM t WHERE id > 1000}), '60', 'b\'s rows without the column are on a');
same_everywhere('ADD COLUMN with writers on a and b', 't');
is(sq($b, q{SELECT string_agg(outcome, ',') FROM replstamp.schema_change WHERE statement LIKE '%ADD COLUMN c%'}),
	'applied', 'b recorded the schema change as applied');
is(sq($a, q{SELECT count(*) FROM replstamp.peer WHERE status <> 'ok'}), '0', 'no peer is failing on a');

# 2.
sq($a, q{ALTER TABLE t ALTER COLUMN c TYPE bigint});
sq($a, q{INSERT INTO t VALUES (20, 'big', 5000000000)});
sq($a, q{ALTER TABLE t ADD CONSTRAINT v_not_empty CHECK (v <> ''), ALTER COLUMN v SET NOT NULL});
sq($a, q{CREATE INDEX t_c ON t (c)});
sync_round();
sq($b, q{ALTER TABLE t RENAME COLUMN c TO cc; INSERT INTO t VALUES (21, 'renamed', 21)});
sync_round();
sq($c, q{DROP INDEX t_c; ALTER TABLE t DROP CONSTRAINT v_not_empty});
sq($c, q{ALTER TABLE t ADD COLUMN gone int; ALTER TABLE t DROP COLUMN gone});
sync_round();
is(sq($a, q{SELECT cc FROM t WHERE id = 20}), '5000000000', 'the bigint value reached a after the rename on b');
is(sq($b, q{SELECT count(*) FROM pg_indexes WHERE indexname = 't_c'}), '0', 'the index c dropped is gone from b');
is(sq($a, q{SELECT attnotnull FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'v'}), 't',
	'SET NOT NULL replicated');
same_everywhere('type, constraints, indexes, rename, drop', 't');

# 3.
sq($a, q{ALTER TABLE t ADD COLUMN e int});
sq($b, q{ALTER TABLE t ADD COLUMN e int});
sq($_, q{ALTER TABLE t ADD COLUMN IF NOT EXISTS e2 int}) for ($b, $c);
sync_round();
is(sq($a, q{SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'e2'}), '1',
	'the same ADD COLUMN IF NOT EXISTS made on b and c reached a');
is(sq($a, q{SELECT string_agg(outcome, ',') FROM replstamp.schema_change WHERE NOT origin AND statement LIKE '%ADD COLUMN e%'}),
	'found_done', 'the same ADD COLUMN made on b is found done on a');
is(sq($_, q{SELECT count(*) FROM replstamp.peer WHERE status <> 'ok'}), '0', 'no peer is failing on ' . $_->name)
  for @nodes;
same_everywhere('the same ADD COLUMN on two nodes', 't');

# 4.
sq($a, q{ALTER TABLE t ADD COLUMN x int});
sq($b, q{ALTER TABLE t ADD COLUMN x text});
for my $pair ([ $a, $b ], [ $b, $a ], [ $c, $a ], [ $c, $b ])
{
	my ($x, $p) = @$pair;
	$x->psql('postgres', "SELECT replstamp.sync('" . $p->name . "')");
}
for my $pair ([ $a, 'b' ], [ $b, 'a' ], [ $c, 'b' ])
{
	my ($x, $p) = @$pair;
	like(sq($x, "SELECT status || ': ' || last_error FROM replstamp.peer WHERE name = '$p'"),
		qr/^failing: schema change of table public\.t from peer "$p" conflicts with schema change/,
		$x->name . " shows its sync from $p failing, with the conflicting schema change named");
}
# b's text loses: b takes a's definition by hand, a and c skip b's change.
my $lost = sq($a, q{SELECT last_error_change FROM replstamp.peer WHERE name = 'b'});
like($lost, qr{^[0-9a-f-]+/\d+$}, 'the change that failed is named');
my ($lid, $lserial) = split m{/}, $lost;
sq($b, q{SET replstamp.replicate_ddl = off; ALTER TABLE t ALTER COLUMN x TYPE int USING x::int});
sq($_, "SELECT replstamp.skip('$lid', $lserial)") for ($a, $c);
sync_round();
sync_round();
is(sq($_, q{SELECT count(*) FROM replstamp.peer WHERE status <> 'ok'}), '0', 'no peer is failing on ' . $_->name . ' once resolved')
  for @nodes;
same_everywhere('a concurrent conflict resolved', 't');

# 5.
sq($a, q{SELECT replstamp.track_schema('app')});
sq($a, q{BEGIN; CREATE TABLE app.n (id int PRIMARY KEY, v text); INSERT INTO app.n VALUES (1, 'a'); COMMIT});
sync_round();
is(sq($c, q{SELECT state FROM replstamp.tracked_table WHERE relation = 'app.n'}), 'tracked', 'app.n is tracked on c');
sq($c, q{INSERT INTO app.n VALUES (2, 'c')});
sync_round();
is(sq($a, q{SELECT string_agg(v, ',' ORDER BY id) FROM app.n}), 'a,c', 'rows of app.n go both ways');
same_everywhere('CREATE TABLE in a tracked schema', 't', 'app.n');

# 6.
sq($a, q{INSERT INTO owned SELECT g, 'x' FROM generate_series(1, 5) g});
sync_round();
sq($a, q{SET ROLE alice; ALTER TABLE owned ADD CONSTRAINT by_owner CHECK (public.not_superuser(id))});
sq($a, q{SET ROLE alice; INSERT INTO owned VALUES (6, 'x')});
sync_round();
is(sq($b, q{SELECT count(*) FROM pg_constraint WHERE conname = 'by_owner'}), '1',
	'b validated the CHECK as the table owner');
is(sq($b, q{SELECT count(*) FROM replstamp.peer WHERE status <> 'ok'}), '0', 'no sync failed on b');
same_everywhere('DDL run as the owner', 'owned');

# 7.
sq($a, q{SET replstamp.replicate_ddl = off; ALTER TABLE t ADD COLUMN local_only int});
sync_round();
is(sq($b, q{SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'local_only'}), '0',
	'with replicate_ddl off the column stays on a');
sq($_, q{SET replstamp.replicate_ddl = off; ALTER TABLE t ADD COLUMN local_only int}) for ($b, $c);
sq($a, q{UPDATE t SET local_only = 7 WHERE id = 1});
sync_round();
is(sq($c, q{SELECT local_only FROM t WHERE id = 1}), '7', 'the rolling, by-hand ADD COLUMN still carries values');

# 8.
is(sq($a, q{SELECT count(*) FROM replstamp.verify('b')}), '0', 'verify() finds a and b alike, definitions included');
sq($c, q{SET replstamp.replicate_ddl = off; CREATE INDEX only_c ON t (v)});
is(sq($a, q{SELECT relation || ' ' || pk || ' ' || difference FROM replstamp.verify('c')}),
	'public.t {} other definition: index only_c', 'verify() names the index only c has');

done_testing();
