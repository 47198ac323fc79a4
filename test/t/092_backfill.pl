# Rows that existed before track(): replstamp.track(t, backfill => true)
# stamps each of them once, as an INSERT, in the background, while writers
# go on updating, inserting and deleting rows of the same table without
# errors; rows written after track() are left to their own stamps.  A peer
# that pulls the stamps ends with exactly the same rows (a row deleted
# during the backfill does not come back, a row updated during it has its
# latest value, whichever stamp came first).  A backfill stopped by an
# immediate shutdown resumes where it stopped after the restart and still
# stamps every row once; another table's backfill runs beside it; a table
# without primary key is refused with the reason recorded; a table
# rewritten during its backfill (VACUUM FULL) is backfilled again, so that
# no row is left out; a writer that holds rows in one transaction does not
# deadlock with it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

# Automatic pruning off: the change log keeps every stamp for counting, and
# no periodic maintenance round hides a backfill that does not resume by
# itself.  Small, throttled batches: the backfill of 100,000 rows lasts a
# few seconds, long enough to write during it and to stop it half-way.
my $a = replstamp_node('a', conf => [
	'replstamp.prune_interval = 0',
	'replstamp.backfill_batch_size = 500',
	'replstamp.backfill_delay = 10ms',
	'max_connections = 30' ], sql => q{
	CREATE EXTENSION replstamp;
	CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text);
	CREATE TABLE t2 (id int PRIMARY KEY, v text);
	CREATE TABLE t3 (id int PRIMARY KEY, v text);
	CREATE TABLE t4 (id int PRIMARY KEY, v text);
	CREATE TABLE t5 (id int CONSTRAINT t5_pkey PRIMARY KEY, v text);
	CREATE TABLE t6 (id int PRIMARY KEY, v text);
	CREATE SEQUENCE new_ids START 100001;
});
my $b = replstamp_node('b', conf => ['replstamp.prune_interval = 0'], sql => q{
	CREATE EXTENSION replstamp;
	CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text);
	CREATE TABLE t2 (id int PRIMARY KEY, v text);
	CREATE TABLE t3 (id int PRIMARY KEY, v text);
	CREATE TABLE t4 (id int PRIMARY KEY, v text);
	CREATE TABLE t5 (id int PRIMARY KEY, v text);
	CREATE TABLE t6 (id int PRIMARY KEY, v text);
	SELECT replstamp.track(t) FROM unnest('{t,t2,t3,t4,t5,t6}'::regclass[]) t;
});
add_peer($b, 'a', $a);
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

# The whole contents of a table, as one string's digest.
sub contents
{
	my ($n, $table) = @_;
	return sq($n, "SELECT count(*) || ' rows, ' || coalesce(md5(string_agg(t::text, ',' ORDER BY id)), '-') FROM $table t");
}

# 1. 100,000 rows before track(); track with backfill while pgbench writes
# into the same table: updates of random rows, inserts of new ones (keys
# above 100,000, from a sequence), some deletes.
sq($a, "INSERT INTO t SELECT g, 0, 'loaded' FROM generate_series(1, 100000) g");
my $script = "$PostgreSQL::Test::Utils::tmp_check/backfill_writes.sql";
open(my $fh, '>', $script) or die "$script: $!";
print $fh <<'EOF';
\set id random(1, 100000)
\set op random(1, 10)
UPDATE t SET v = v + 1, note = 'updated' WHERE id = :id AND :op <= 6;
INSERT INTO t SELECT nextval('new_ids'), 1, 'inserted' WHERE :op BETWEEN 7 AND 9;
DELETE FROM t WHERE id = :id AND :op = 10;
EOF
close $fh;
my ($bench_out, $bench_err) = ('', '');
my $bench;
{
	local $ENV{PGAPPNAME} = 'pgbench';
	$bench = IPC::Run::start(
		[ 'pgbench', '-n', '-c', '4', '-T', '12', '-f', $script,
		  '-p', $a->port, '-h', $a->host, 'postgres' ],
		'>', \$bench_out, '2>', \$bench_err);
}
# track() once pgbench is writing.  The rows that existed then are those
# up to 100,000 and those the writers had inserted: track() waits for them
# to commit, and a later INSERT takes its key from the sequence after it.
$a->poll_query_until('postgres', "SELECT count(*) >= 200 FROM t WHERE note <> 'loaded'")
  or die 'pgbench writes nothing';
my $before = (split /\n/, sq($a, "BEGIN;
	SELECT replstamp.track('t', backfill => true);
	SELECT last_value FROM new_ids;
	COMMIT;"))[-1];
ok($a->poll_query_until('postgres',
	"SELECT backfill = 'done' FROM replstamp.tracked_table WHERE relation = 'public.t'"),
	'the backfill of t completes while pgbench writes');
my $writing = sq($a, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'");
$bench->finish;
is($?, 0, 'pgbench ends without error') or diag($bench_err);
like($bench_out, qr/number of failed transactions: 0 \(/, 'pgbench: 0 failed transactions')
  or diag($bench_out);
cmp_ok($writing, '>', 0, 'pgbench was still writing when the backfill ended');

# The stamps of t, by key.  A key up to $before existed before track(): its
# INSERT stamp is the backfill's.
sq($a, "CREATE TABLE stamps AS SELECT (pk->>'id')::int AS id, op, serial
	FROM replstamp.changes WHERE relation = 'public.t'; ANALYZE stamps, t");
my $backfilled = sq($a, "SELECT count(*) FROM stamps WHERE op = 'INSERT' AND id <= $before");
is(sq($a, "SELECT backfill_rows FROM replstamp.tracked_table WHERE relation = 'public.t'"), $backfilled,
	"replstamp.tracked_table counts the rows the backfill stamped ($backfilled)");
is(sq($a, "SELECT count(*) FROM (SELECT id FROM stamps WHERE op = 'INSERT'
	GROUP BY id HAVING count(*) > 1) d"), '0',
	'no row has two INSERT stamps: none is backfilled twice, none inserted later is backfilled');
is(sq($a, "SELECT count(*) FROM (SELECT id FROM t WHERE id <= $before AND note <> 'updated'
	EXCEPT SELECT id FROM stamps WHERE op = 'INSERT') m"), '0',
	'every row that existed before track() and was not changed since has its backfill stamp');
is(sq($a, "SELECT count(*) FROM (SELECT id FROM t EXCEPT SELECT id FROM stamps) m"), '0',
	'every row of t has a stamp');
is(sq($a, "SELECT count(*) FROM t WHERE id > $before"),
	sq($a, "SELECT count(*) FROM stamps WHERE op = 'INSERT' AND id > $before"),
	'each row inserted after track() has its own INSERT stamp only');
# The writers changed rows that existed before, while the backfill ran:
# some before it reached them (their change carries them), some after.
my ($bf_first, $bf_last) = split /\|/, sq($a, "SELECT min(serial), max(serial) FROM stamps
	WHERE op = 'INSERT' AND id <= $before");
cmp_ok(sq($a, "SELECT count(*) FROM stamps WHERE op IN ('UPDATE', 'DELETE') AND id <= $before
	AND serial BETWEEN $bf_first AND $bf_last"), '>', 100,
	'writers changed pre-existing rows while the backfill ran');
cmp_ok(sq($a, "SELECT count(*) FROM (SELECT id FROM stamps WHERE id <= $before GROUP BY id
	HAVING max(serial) FILTER (WHERE op = 'UPDATE') > min(serial) FILTER (WHERE op = 'INSERT')) x"), '>', 0,
	'some rows were updated after their backfill stamp');
cmp_ok(sq($a, "SELECT count(*) FROM (SELECT id FROM t WHERE id <= $before AND note = 'updated'
	EXCEPT SELECT id FROM stamps WHERE op = 'INSERT') x"), '>', 0,
	'some were updated before the backfill reached them: only their UPDATE stamp carries them');
cmp_ok(sq($a, "SELECT count(*) FROM (SELECT id FROM stamps WHERE id <= $before GROUP BY id
	HAVING max(serial) FILTER (WHERE op = 'DELETE') > min(serial) FILTER (WHERE op = 'INSERT')) x"), '>', 0,
	'some rows were deleted after their backfill stamp');
cmp_ok(sq($a, "SELECT count(*) FROM (SELECT id FROM stamps WHERE op = 'DELETE' AND id <= $before
	EXCEPT SELECT id FROM stamps WHERE op = 'INSERT') x"), '>', 0,
	'some were deleted before the backfill reached them');
my $deleted = sq($a, "SELECT 100000 - count(*) FROM t WHERE id <= 100000");

# 2. b pulls everything and holds exactly a's rows.
sq($b, "SELECT replstamp.sync('a')");
is(contents($b, 't'), contents($a, 't'), 'b holds exactly the rows of a: ' . contents($a, 't'));
is(sq($b, "SELECT count(*) FROM t WHERE id <= 100000"), 100000 - $deleted,
	"no deleted row came back on b ($deleted were deleted)");
is(sq($b, "SELECT sum(v) FROM t"), sq($a, "SELECT sum(v) FROM t"),
	'every row updated during the backfill has its latest value on b');

# 3. A backfill stopped half-way by an immediate shutdown resumes where it
# stopped once a is up again, and still stamps every row once.  Slower
# batches, so that it is caught running.
sq($a, "INSERT INTO t2 SELECT g, 'row ' || g FROM generate_series(1, 50000) g");
sq($a, "ALTER SYSTEM SET replstamp.backfill_delay = '100ms'");
sq($a, 'SELECT pg_reload_conf()');
sq($a, "SELECT replstamp.track('t2', true)");

# Meanwhile, another table's backfill has a worker of its own: it neither
# waits for t2's nor joins it.
sq($a, "INSERT INTO t3 SELECT g, 'row ' || g FROM generate_series(1, 1000) g;
	SELECT replstamp.track('t3', true)");
$a->poll_query_until('postgres',
	"SELECT backfill = 'done' FROM replstamp.tracked_table WHERE relation = 'public.t3'")
  or die 'the backfill of t3 does not end';
is(sq($a, "SELECT backfill FROM replstamp.tracked_table WHERE relation = 'public.t2'"), 'running',
	"another table's backfill ends while t2's goes on");

# A table that lost its primary key is not backfilled: its rows could not
# be told apart.  The error is recorded, nothing is stamped.  (Since 1.2
# the DDL guard refuses to drop a tracked table's key: a superuser gets
# there only by disabling the guard.)
sq($a, "INSERT INTO t5 SELECT g, 'row ' || g FROM generate_series(1, 1000) g;
	BEGIN;
	SELECT replstamp.track('t5', true);
	ALTER EVENT TRIGGER replstamp_ddl_guard DISABLE;
	SET LOCAL replstamp.replicate_ddl = off;   -- a hack on this node only
	ALTER TABLE t5 DROP CONSTRAINT t5_pkey;
	ALTER EVENT TRIGGER replstamp_ddl_guard ENABLE ALWAYS;
	COMMIT;");
ok($a->poll_query_until('postgres',
	"SELECT backfill_error LIKE 'cannot backfill table public.t5 because it has no row key'
	   FROM replstamp.tracked_table WHERE relation = 'public.t5'"),
	'a table without primary key: replstamp.tracked_table shows why its backfill stopped');
is(sq($a, "SELECT count(*) FROM replstamp.changes WHERE relation = 'public.t5'"), '0',
	'and nothing of it is stamped');
sq($a, 'SET replstamp.replicate_ddl = off; ALTER TABLE t5 ADD PRIMARY KEY (id)');

$a->poll_query_until('postgres',
	"SELECT backfill_rows >= 5000 FROM replstamp.tracked_table WHERE relation = 'public.t2'")
  or die 'the backfill of t2 does not progress';
$a->stop('immediate');
$a->start;
my ($state, $rows, $together) = split /\|/, sq($a, "SELECT backfill, backfill_rows,
	backfill_rows = (SELECT count(*) FROM replstamp.changes WHERE relation = 'public.t2')
	FROM replstamp.tracked_table WHERE relation = 'public.t2'");
ok($state eq 'running' && $rows > 0 && $rows < 50000,
	"the shutdown caught the backfill half-way ($state, $rows rows)");
is($together, 't', 'its stamps and its progress committed together');
sq($a, 'ALTER SYSTEM SET replstamp.backfill_delay = 0');
sq($a, 'SELECT pg_reload_conf()');
ok($a->poll_query_until('postgres',
	"SELECT backfill = 'done' FROM replstamp.tracked_table WHERE relation = 'public.t2'"),
	'after the restart the backfill resumes by itself and completes');
is(sq($a, "SELECT backfill_rows FROM replstamp.tracked_table WHERE relation = 'public.t2'"), '50000',
	'replstamp.tracked_table counts 50000 rows');
is(sq($a, "SELECT count(*) || '/' || count(DISTINCT pk) FROM replstamp.changes WHERE relation = 'public.t2'"),
	'50000/50000', 'every row of t2 is stamped exactly once');
ok($a->poll_query_until('postgres',
	"SELECT backfill = 'done' AND backfill_error IS NULL FROM replstamp.tracked_table WHERE relation = 'public.t5'"),
	'the table that got its primary key back is backfilled after the restart');
is(sq($a, "SELECT count(*) || '/' || count(DISTINCT pk) FROM replstamp.changes WHERE relation = 'public.t5'"),
	'1000/1000', 'each of its rows once');

# 4. A table rewritten during its backfill (VACUUM FULL moves rows that
# were not stamped yet before the point it had reached): its backfill
# starts again, so that no row is left out.
sq($a, "INSERT INTO t4 SELECT g, 'row ' || g FROM generate_series(1, 20000) g");
sq($a, "ALTER SYSTEM SET replstamp.backfill_delay = '100ms'");
sq($a, 'SELECT pg_reload_conf()');
sq($a, "SELECT replstamp.track('t4', true)");
$a->poll_query_until('postgres',
	"SELECT backfill_rows >= 6000 FROM replstamp.tracked_table WHERE relation = 'public.t4'")
  or die 'the backfill of t4 does not progress';
my $offset = -s $a->logfile;
sq($a, 'DELETE FROM t4 WHERE id <= 3000');
sq($a, 'VACUUM FULL t4');
sq($a, 'ALTER SYSTEM SET replstamp.backfill_delay = 0');
sq($a, 'SELECT pg_reload_conf()');
ok($a->poll_query_until('postgres',
	"SELECT backfill = 'done' FROM replstamp.tracked_table WHERE relation = 'public.t4'"),
	'the backfill of the rewritten table completes');
is(sq($a, "SELECT count(*) FROM (SELECT id FROM t4 EXCEPT SELECT (pk->>'id')::int
	FROM replstamp.changes WHERE relation = 'public.t4' AND op = 'INSERT') m"), '0',
	'every row of it is stamped');
ok($a->log_contains(qr/table public\.t4 was rewritten during its backfill; its backfill starts again/, $offset),
	'the log says the backfill started again');

# 5. A writer that locks a row, then changes another one the backfill has
# passed, in one transaction, does not deadlock with the backfill: it never
# waits for a row while it holds another.
sq($a, "INSERT INTO t6 SELECT g, 'row ' || g FROM generate_series(1, 3000) g");
sq($a, 'ALTER SYSTEM SET replstamp.backfill_batch_size = 1000');
sq($a, 'SELECT pg_reload_conf()');
my $writer = $a->background_psql('postgres', on_error_stop => 0);
$writer->query_safe('BEGIN; SELECT v FROM t6 WHERE id = 1500 FOR UPDATE');
sq($a, "SELECT replstamp.track('t6', true)");
ok($a->poll_query_until('postgres', "SELECT count(*) > 0 FROM pg_stat_activity
	WHERE backend_type = 'replstamp backfill' AND wait_event_type = 'Lock'"),
	'the backfill waits for the row the writer holds');
my ($out, $failed) = $writer->query("UPDATE t6 SET v = 'second' WHERE id = 1200;
	UPDATE t6 SET v = 'first' WHERE id = 1500; COMMIT");
is($failed ? $writer->{stderr} : '', '', "the writer's transaction goes through");
$writer->quit;
ok($a->poll_query_until('postgres', "SELECT backfill = 'done' AND backfill_error IS NULL
	FROM replstamp.tracked_table WHERE relation = 'public.t6'"),
	'and the backfill completes without error');
is(sq($a, "SELECT string_agg(op, ',' ORDER BY serial) FROM replstamp.changes
	WHERE relation = 'public.t6' AND pk->>'id' IN ('1200', '1500') GROUP BY pk ORDER BY pk->>'id'"),
	"INSERT,UPDATE\nUPDATE", 'the row it passed is stamped, then updated; the row it waited for is updated only');

sq($b, "SELECT replstamp.sync('a')");
is(contents($b, $_), contents($a, $_), "b holds exactly the rows of $_") for qw(t2 t3 t4 t5 t6);

$_->stop for ($a, $b);
done_testing();
