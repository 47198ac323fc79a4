# Last writer wins while local transactions write the rows a sync applies,
# step by step (test 043 does it at random under pgbench):
# 1. a local transaction that began before a change was applied, and
#    writes the row after it, is the later change (its stamp is the time of
#    the write, not of its start);
# 2. a sync that waits for a local transaction's row lock, and then writes
#    an older change over the row, puts the local, later change back;
# 3. a sync commits what it applied before it waits for a row: a local
#    transaction that then writes a row the sync applied just before does
#    not deadlock with it (pgbench's order of rows, against a page of
#    changes in another order, did so dozens of times a minute).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my ($a, $b) = map {
	replstamp_node($_, sql => $TRACK_T)
} qw(a b);
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
add_peer($a, 'b', $b);
add_peer($b, 'a', $a);
sq($a, "INSERT INTO t VALUES (1, 'start'), (2, 'start')");
sq($b, "SELECT replstamp.sync('a')");
sub row { my ($n, $id) = @_; return sq($n, "SELECT v FROM t WHERE id = $id"); }

# 1. b's transaction begins, a changes row 1, b applies it, then b's
# transaction writes row 1 and commits.
my $s = $b->background_psql('postgres');
$s->query_safe('BEGIN');
$s->query_safe('SELECT 1');    # the transaction has started
sq($a, "UPDATE t SET v = 'a, applied first' WHERE id = 1");
sq($b, "SELECT replstamp.sync('a')");
is(row($b, 1), 'a, applied first', "b applied a's change");
$s->query_safe("UPDATE t SET v = 'b, written after' WHERE id = 1");
$s->query_safe('COMMIT');
ok(sq($b, q{SELECT changed_at > (SELECT max(changed_at) FROM replstamp.changes
	WHERE (pk->>'id')::int = 1 AND replica_id <> (SELECT replica_id FROM replstamp.node))
	FROM replstamp.changes WHERE (pk->>'id')::int = 1 AND replica_id = (SELECT replica_id FROM replstamp.node)}) eq 't',
	"b's write is stamped later than the change it overwrote, though its transaction began before");
sq($a, "SELECT replstamp.sync('b')");
is(row($a, 1), 'b, written after', "a takes b's later write");
is(row($b, 1), 'b, written after', 'b keeps it');

# 2. b's transaction writes row 2 and holds it; a's older change of row 2
# arrives; the sync waits for the row, then must not leave a's older value.
sq($a, "UPDATE t SET v = 'a, older' WHERE id = 2");
$s->query_safe('BEGIN');
$s->query_safe("UPDATE t SET v = 'b, newer, committed while the sync waits' WHERE id = 2");
my $out = '';
my $sync = psql_start($b, "SELECT replstamp.sync('a')", \$out);
$b->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE query LIKE 'replstamp: syncing from peer%' AND wait_event_type = 'Lock'")
  or die 'the sync does not wait for the row';
pass('the sync waits for the row b holds');
$s->query_safe('COMMIT');
$sync->finish;
like($out, qr/^\d+$/, 'the sync completes');
is(row($b, 2), 'b, newer, committed while the sync waits',
	"b's later change is back after the sync wrote the older one over it");
sq($a, "SELECT replstamp.sync('b')");
is(row($a, 2), 'b, newer, committed while the sync waits', 'and a agrees');

# 3. a changes row 10, then row 11 (one page).  b's transaction holds row
# 11; the sync applies row 10 and waits for row 11; then b's transaction
# writes row 10.
sq($a, "INSERT INTO t VALUES (10, 'start'), (11, 'start')");
sq($b, "SELECT replstamp.sync('a')");
sq($a, "UPDATE t SET v = 'a' WHERE id = 10");
sq($a, "UPDATE t SET v = 'a' WHERE id = 11");
my $deadlocks = sq($b, "SELECT deadlocks FROM pg_stat_database WHERE datname = 'postgres'");
$s->query_safe('BEGIN');
$s->query_safe("UPDATE t SET v = 'b' WHERE id = 11");
$out = '';
$sync = psql_start($b, "SELECT replstamp.sync('a')", \$out);
$b->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE query LIKE 'replstamp: syncing from peer%' AND wait_event_type = 'Lock'")
  or die 'the sync does not wait for the row';
is(row($b, 10), 'a', 'the sync has committed row 10 before it waits for row 11');
# The local transaction goes on with row 10: no wait, no deadlock.
$s->query_safe("SET statement_timeout = '30s'");
$s->query_safe("UPDATE t SET v = 'b' WHERE id = 10");
$s->query_safe('COMMIT');
pass('the local transaction writes row 10 and commits');
$sync->finish;
like($out, qr/^\d+$/, 'the sync completes');
sq($b, 'SELECT pg_stat_force_next_flush()');
is(sq($b, "SELECT deadlocks FROM pg_stat_database WHERE datname = 'postgres'"), $deadlocks, 'no deadlock');
is(sq($b, "SELECT string_agg(v, ',' ORDER BY id) FROM t WHERE id IN (10, 11)"), 'b,b',
	"b's later writes win on b");
sq($a, "SELECT replstamp.sync('b')");
is(sq($a, "SELECT string_agg(v, ',' ORDER BY id) FROM t WHERE id IN (10, 11)"), 'b,b', 'and on a');
$s->quit;

$_->stop for ($a, $b);
done_testing();
