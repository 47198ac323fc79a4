# Pruning keeps what a puller lacks and the latest change of every row.
# a -> b -> c, each pulling one way only: a prunes only what b holds, b
# only what c holds; replstamp.prune() returns the number removed; a new,
# empty node converges from what is kept; replstamp.pullers and
# replstamp.status show who holds pruning back, and drop_puller() or
# drop_peer() releases it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my $schema = q{CREATE EXTENSION replstamp;
	CREATE TABLE accounts (id int PRIMARY KEY, balance int, note text);
	SELECT replstamp.track('accounts');};
my @conf = ('replstamp.prune_interval = 0');
my ($a, $b, $c) = map { replstamp_node($_, conf => \@conf, sql => $schema) } qw(a b c);
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
sub content { my ($n) = @_;
	return sq($n, "SELECT string_agg(format('%s:%s:%s', id, balance, note), ',' ORDER BY id) FROM accounts"); }
sub serials { my ($n, $id) = @_;
	return sq($n, "SELECT string_agg(serial::text, ',' ORDER BY serial) FROM replstamp.changes WHERE replica_id = '$id'"); }
sub range { my ($lo, $hi) = @_; return join(',', $lo .. $hi); }
# Changes in the log that are not the latest of their row.
sub only_latest { my ($n) = @_;
	return sq($n, q{SELECT count(*) FROM replstamp.changes c WHERE NOT EXISTS (
		SELECT 1 FROM replstamp.row_version rv WHERE c.replica_id = rv.replica_id AND c.serial = rv.serial)}); }
# Every row's latest version (row_version) still has its change in the log.
sub latest_kept { my ($n) = @_;
	return sq($n, q{SELECT count(*) FROM replstamp.row_version rv WHERE NOT EXISTS (
		SELECT 1 FROM replstamp.changes c WHERE c.replica_id = rv.replica_id AND c.serial = rv.serial)}); }

add_peer($b, 'a', $a);
add_peer($c, 'b', $b);
my $id_a = sq($a, 'SELECT replica_id FROM replstamp.node');
my $id_b = sq($b, 'SELECT replica_id FROM replstamp.node');
my $id_c = sq($c, 'SELECT replica_id FROM replstamp.node');

# Serials 1-10: ten rows.  b and c hold them.  A node learns what its
# puller holds when the puller next syncs (its handshake says so): each
# pulls once more.
sq($a, "INSERT INTO accounts SELECT g, 0, 'new' FROM generate_series(1, 10) g");
is(sq($b, "SELECT replstamp.sync('a')"), '10', 'b pulls the ten inserts');
is(sq($c, "SELECT replstamp.sync('b')"), '10', 'c pulls them from b');
sq($b, "SELECT replstamp.sync('a')");
sq($c, "SELECT replstamp.sync('b')");

# Serials 11-30: every row updated twice; 31: row 10 deleted.
sq($a, "UPDATE accounts SET balance = balance + 1, note = 'once'");
sq($a, "UPDATE accounts SET balance = balance + 1, note = 'twice'");
sq($a, 'DELETE FROM accounts WHERE id = 10');
is(serials($a, $id_a), range(1, 31), 'a holds its 31 changes');

# 1. Two nodes: b holds serials 1-10 only.
is(sq($a, 'SELECT replstamp.prune()'), '10', 'a prunes the ten inserts b holds, superseded since');
is(serials($a, $id_a), range(11, 31), 'what b lacks is kept, superseded or not');
is(sq($a, 'SELECT replstamp.prune()'), '0', 'a second prune removes nothing');
is(latest_kept($a), '0', 'the latest change of every row is in the log');
is(sq($a, "SELECT format('%s %s', label, changes_not_held) FROM replstamp.pullers WHERE replica_id = '$id_b'"),
	'b/postgres 21', 'replstamp.pullers names b and the changes it lacks');
is(sq($a, 'SELECT pullers FROM replstamp.status'), '1', 'replstamp.status counts one puller');

is(sq($b, "SELECT replstamp.sync('a')"), '21', 'b pulls the rest');
sq($b, "SELECT replstamp.sync('a')");
is(sq($a, 'SELECT replstamp.prune()'), '11', 'now a prunes the first updates and the last update of the deleted row');
is(serials($a, $id_a), range(21, 29) . ',31', 'left: the latest change of each row, the delete included');
is(latest_kept($a), '0', 'still every latest change is kept');
is(sq($a, "SELECT changes_not_held FROM replstamp.pullers WHERE replica_id = '$id_b'"), '0',
	'b lacks nothing');

# 2. Three nodes: b prunes only what c holds (a's changes up to 10).
is(sq($b, 'SELECT replstamp.prune()'), '10', 'b prunes only what c holds');
is(serials($b, $id_a), range(11, 31), 'b keeps what c lacks');
is(sq($c, "SELECT replstamp.sync('b')"), '21', 'c pulls the rest from b');
sq($c, "SELECT replstamp.sync('b')");
is(sq($b, 'SELECT replstamp.prune()'), '11', 'then b prunes as a did');
is(serials($b, $id_a), range(21, 29) . ',31', 'b keeps what a keeps');
is(content($c), content($a), 'c holds the same rows as a');

# 3. A new, empty node converges from what is kept.
my $d = replstamp_node('d', conf => \@conf, sql => $schema);
add_peer($d, 'b', $b);
is(sq($d, "SELECT replstamp.sync('b')"), '10', 'a new node pulls the ten changes kept');
is(content($d), content($a), 'and holds the same rows as a');
is(sq($d, "SELECT serial FROM replstamp.vector WHERE replica_id = '$id_a'"), '31',
	'and holds a\'s changes up to 31');
is(sq($d, 'SELECT count(*) FROM accounts WHERE id = 10'), '0', 'the deleted row stays deleted');
# d holds back b's pruning now: it is gone for good.
my $id_d = sq($d, 'SELECT replica_id FROM replstamp.node');
is(sq($b, "SELECT changes_not_held FROM replstamp.pullers WHERE replica_id = '$id_d'"), '10',
	'b keeps what d lacks: d holds nothing, as it said when it started to pull');
$d->stop;
is(sq($b, "SELECT replstamp.forget_puller('$id_d')"), 't', 'b forgets d (forget_puller(), the deprecated name of drop_puller())');

# 4. Latest versions looked at before and superseded since are pruned
# once every puller holds them.
sq($a, "UPDATE accounts SET note = 'thrice' WHERE id <= 5");    # 32-36
is(sq($a, 'SELECT replstamp.prune()'), '5', 'the versions they superseded go: b holds them');
is(serials($a, $id_a), range(26, 29) . ',31,' . range(32, 36), 'left: the latest of each row');
is(latest_kept($a), '0', 'still every latest change is kept');
sq($b, "SELECT replstamp.sync('a')");
sq($b, "SELECT replstamp.sync('a')");

# 5. Who holds pruning back, and letting go of it.
sq($a, "UPDATE accounts SET note = 'held back 1'");    # 37-45
sq($a, "UPDATE accounts SET note = 'held back 2'");    # 46-54
is(sq($a, 'SELECT replstamp.prune()'), '9', 'a prunes only what b holds');
is(sq($a, "SELECT changes_not_held FROM replstamp.pullers WHERE replica_id = '$id_b'"), '18',
	'replstamp.pullers says how many changes b lacks');
is(sq($a, "SELECT bytes_not_held > 18 * 100 AND oldest_not_held_age > interval '0' "
		. "AND since_last_pull > interval '0' FROM replstamp.pullers WHERE replica_id = '$id_b'"), 't',
	'their bytes, the age of the oldest, and how long since b pulled');
is(sq($a, 'SELECT oldest_puller FROM replstamp.status'), 'b/postgres',
	'replstamp.status names the puller that pulled the longest ago');
is(sq($a, "SELECT replstamp.drop_puller('$id_b')"), 't', 'drop_puller() forgets b');
is(sq($a, 'SELECT count(*) FROM replstamp.pullers'), '0', 'a has no puller left');
is(sq($a, 'SELECT replstamp.prune()'), '9', 'nothing holds pruning back on a any more');
is(latest_kept($a), '0', 'the latest changes are still kept');
is(sq($b, "SELECT replstamp.sync('a')"), '9', 'b pulls again what is kept');
sq($b, "SELECT replstamp.sync('a')");
is(sq($a, 'SELECT count(*) FROM replstamp.pullers'), '1', 'b is back in replstamp.pullers');
is(content($b), content($a), 'b converges after being forgotten');

# drop_peer(): b also pulls from c; dropping c as a peer forgets c as a
# puller of b.
add_peer($b, 'c', $c);
sq($b, "SELECT replstamp.sync('c')");
sq($c, "SELECT replstamp.sync('b')");
sq($c, "SELECT replstamp.sync('b')");
sq($b, 'SELECT replstamp.prune()');
sq($a, "UPDATE accounts SET note = 'after 1' WHERE id = 1");    # 55
sq($a, "UPDATE accounts SET note = 'after 2' WHERE id = 1");    # 56
sq($b, "SELECT replstamp.sync('a')");
is(sq($b, "SELECT string_agg(serial::text, ',' ORDER BY serial) FROM replstamp.changes
	WHERE replica_id = '$id_a' AND pk = '{\"id\": 1}'"), '55,56',
	'the sync that superseded serial 46, which c holds, removed it');
is(sq($b, 'SELECT replstamp.prune()'), '0', 'b keeps serial 55, which c lacks');
is(sq($b, "SELECT count(*) FROM replstamp.pullers WHERE replica_id = '$id_c'"), '1', 'c is a puller of b');
sq($b, "SELECT replstamp.drop_peer('c')");
is(sq($b, "SELECT count(*) FROM replstamp.pullers WHERE replica_id = '$id_c'"), '0',
	'drop_peer() forgets c as a puller');
is(sq($b, 'SELECT replstamp.prune()'), '1', 'b prunes what c held back');
is(latest_kept($b), '0', 'b still keeps the latest changes');
is(only_latest($b), '0', 'b keeps only the latest change of each row');
ok(only_latest($c) > 0, 'while c, which has not pruned, holds superseded changes too');

# 6. Queued versions a puller lacks must not hide the others: 2001 rows
# written on a and on c, pruned on b while latest, then all superseded
# while a puller (g, made up) lacks them; then g holds one of the two IDs
# and nothing of the other (as a node that pulled only one of them would
# say): it holds back only the first.
add_peer($b, 'c', $c);
sq($a, "INSERT INTO accounts SELECT g, 0, 'a' FROM generate_series(1000, 3000) g");
sq($c, "INSERT INTO accounts SELECT g, 0, 'c' FROM generate_series(5000, 7000) g");
sq($b, 'SELECT replstamp.sync_all()');
sq($c, "SELECT replstamp.sync('b')") for (1 .. 2);
sq($b, 'SELECT replstamp.prune()');
my ($first, $second) = sort ($id_a, $id_c);
sq($b, qq{INSERT INTO replstamp.puller (replica_id, label, last_pull_at) VALUES (gen_random_uuid(), 'g', now());
	INSERT INTO replstamp.puller_vector SELECT replica_id, '$first', 0 FROM replstamp.puller WHERE label = 'g';
	INSERT INTO replstamp.puller_vector SELECT replica_id, '$second', 0 FROM replstamp.puller WHERE label = 'g';});
sq($a, "UPDATE accounts SET note = 'a again' WHERE id >= 1000");
sq($c, "UPDATE accounts SET note = 'c again' WHERE id >= 5000");
sq($b, 'SELECT replstamp.sync_all()');
is(sq($b, "SELECT count(*) FROM replstamp.prune_queue WHERE replica_id IN ('$first', '$second')"), '4002',
	'b queued the 4002 superseded versions g lacks');
sq($b, "UPDATE replstamp.puller_vector SET serial = 1000000 WHERE replica_id = '$second'
	AND puller = (SELECT replica_id FROM replstamp.puller WHERE label = 'g')");
ok(sq($b, 'SELECT replstamp.prune()') >= 2001, 'b prunes the versions of the ID every puller holds');
is(sq($b, "SELECT format('%s %s', count(*) FILTER (WHERE replica_id = '$first'), count(*) FILTER (WHERE replica_id = '$second')) FROM replstamp.prune_queue"),
	'2001 0', 'those of the other wait in the queue, behind them or not');
sq($b, "DELETE FROM replstamp.puller WHERE label = 'g'");
ok(sq($b, 'SELECT replstamp.prune()') >= 2001, 'with g forgotten, b prunes them too');
is(sq($b, 'SELECT count(*) FROM replstamp.prune_queue'), '0', 'and nothing is left queued');

# A walked latest version that every puller holds goes as soon as a sync
# supersedes it: no queue, no prune.
sq($c, "SELECT replstamp.sync('b')") for (1 .. 2);
sq($b, 'SELECT replstamp.prune()');
my $again = sq($b, "SELECT string_agg(serial::text, ',' ORDER BY serial) FROM replstamp.changes
	WHERE replica_id = '$id_a' AND (pk->>'id')::int BETWEEN 1000 AND 1009");
is(scalar(split /,/, $again), 10, 'b keeps the latest versions of rows 1000 to 1009');
sq($a, "UPDATE accounts SET note = 'a thrice' WHERE id BETWEEN 1000 AND 1009");
sq($b, "SELECT replstamp.sync('a')");
is(sq($b, "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$id_a' AND serial IN ($again)"), '0',
	'the sync that superseded them removed them');
is(sq($b, 'SELECT count(*) FROM replstamp.prune_queue'), '0', 'without queueing them');

# 7. A row written 3000 times since the last look is recorded in
# row_version once, not 3000 times in one transaction (each lookup of the
# row then walked every version written before it).
sub rv_writes { my ($n) = @_;
	return sq($n, q{SELECT n_tup_ins + n_tup_upd FROM pg_stat_all_tables
		WHERE relid = 'replstamp.row_version'::regclass}); }
sq($c, 'SELECT replstamp.prune()');
my $w0 = rv_writes($c);
sq($c, q{DO $$ BEGIN FOR i IN 1 .. 3000 LOOP UPDATE accounts SET balance = balance + 1 WHERE id = 9; END LOOP; END $$});
sq($c, 'SELECT replstamp.prune()');
ok(rv_writes($c) - $w0 <= 2, 'pruning recorded the row\'s latest version once (' . (rv_writes($c) - $w0) . ' writes)');
sq($b, "SELECT replstamp.sync('c')") for (1 .. 2);
is(sq($c, 'SELECT replstamp.prune()'), '2999', 'once b holds them, the 2999 versions before it go');

# replstamp.status costs O(1): it reads neither the log nor row_version.
my $plan = sq($a, 'EXPLAIN SELECT * FROM replstamp.status');
unlike($plan, qr/ on (changes|row_version|puller_vector)\b/,
	'replstamp.status scans neither the change log nor row_version');
like(sq($a, 'SELECT changes_bytes FROM replstamp.status'), qr/^[1-9][0-9]+$/, 'it shows the size of the log');

$_->stop for ($a, $b, $c);
done_testing();
