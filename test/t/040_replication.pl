# Three nodes pull stamped changes from each other: transitive, applied
# once, last writer wins, only up to the peer's safe watermark, a bad batch
# applies nothing.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my @nodes = map {
	replstamp_node($_, sql => q{
		CREATE EXTENSION replstamp;
		CREATE TABLE accounts (id int PRIMARY KEY, balance int, note text);
		SELECT replstamp.track('accounts');
	})
} qw(a b c);
my ($a, $b, $c) = @nodes;
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
# a <-> b <-> c, and c -> a: c learns a's changes only through b.
add_peer($a, 'b', $b); add_peer($b, 'a', $a); add_peer($b, 'c', $c); add_peer($c, 'b', $b); add_peer($a, 'c', $c);
sub content { my ($n) = @_; return sq($n, "SELECT string_agg(format('%s:%s:%s', id, balance, note), ',' ORDER BY id) FROM accounts"); }
sub sync_round { for (1 .. 2) { sq($b, 'SELECT replstamp.sync_all()'); sq($a, 'SELECT replstamp.sync_all()'); sq($c, 'SELECT replstamp.sync_all()'); } }

sq($a, "INSERT INTO accounts SELECT g, 0, 'a' FROM generate_series(1, 10) g");
sq($b, "INSERT INTO accounts SELECT g, 0, 'b' FROM generate_series(11, 20) g");
is(sq($b, "SELECT replstamp.sync('a')"), '10', 'b pulls a\'s 10 changes');
is(sq($b, "SELECT replstamp.sync('a')"), '0', 'a second sync pulls nothing');
is(sq($c, "SELECT replstamp.sync('b')"), '20', 'c pulls a\'s changes through b (transitive)');
is(sq($c, "SELECT count(DISTINCT replica_id) FROM replstamp.changes"), '2', 'with their original stamps');
is(sq($a, "SELECT replstamp.sync_all()"), '10', 'a gets b\'s changes once though two peers have them');
is(content($a), content($c), 'a and c hold the same rows');

# Conflicts: the same row changed on two nodes; the later writer wins everywhere.
sq($a, "UPDATE accounts SET balance = 1, note = 'a wins?' WHERE id = 5");
sq($b, "UPDATE accounts SET balance = 2, note = 'b later' WHERE id = 5");
sq($c, "DELETE FROM accounts WHERE id = 12");
sq($a, "UPDATE accounts SET balance = 3 WHERE id = 12");
sq($b, "UPDATE accounts SET id = 200 WHERE id = 15");    # key change
# Two conflicts whose changes reach c in one batch, in both time orders.
sq($a, "UPDATE accounts SET note = 'a first' WHERE id = 6");
sq($b, "UPDATE accounts SET note = 'b second' WHERE id = 6");
sq($b, "UPDATE accounts SET note = 'b first' WHERE id = 7");
sq($a, "UPDATE accounts SET note = 'a second' WHERE id = 7");
sync_round();
is(sq($c, "SELECT string_agg(note, ',' ORDER BY id) FROM accounts WHERE id IN (6, 7)"),
	'b second,a second', 'within one batch the later writer wins whatever the order of arrival');
is(content($a), content($b), 'after conflicts a and b hold the same rows');
is(content($b), content($c), 'after conflicts b and c hold the same rows');
is(sq($a, "SELECT note FROM accounts WHERE id = 5"), 'b later', 'the later update wins');
is(sq($c, "SELECT count(*) FROM accounts WHERE id = 12"), '1', 'a later update wins over an earlier delete');
is(sq($a, "SELECT count(*) FROM accounts WHERE id IN (15, 200)"), '1', 'a key change moves the row');

# The watermark: a transaction holding serial N commits after N+1 was synced.
my $s1 = $a->background_psql('postgres');
$s1->query_safe('BEGIN');
$s1->query_safe("INSERT INTO accounts VALUES (100, 0, 'slow')");
sq($a, "INSERT INTO accounts VALUES (101, 0, 'fast')");
sq($b, "SELECT replstamp.sync('a')");
is(sq($b, "SELECT count(*) FROM accounts WHERE id IN (100, 101)"), '0',
	'nothing at or above the uncommitted serial is served');
$s1->query_safe('COMMIT');
$s1->quit;
sq($b, "SELECT replstamp.sync('a')");
is(sq($b, "SELECT count(*) FROM accounts WHERE id IN (100, 101)"), '2',
	'once it commits, the earlier serial is delivered too');

# A bad transaction: it writes a table not tracked on the puller; nothing
# of it applies.
sq($a, "CREATE TABLE only_on_a (id int PRIMARY KEY); SELECT replstamp.track('only_on_a')");
sq($a, "BEGIN; INSERT INTO accounts VALUES (300, 0, 'same transaction'); INSERT INTO only_on_a VALUES (1); COMMIT");
my $before = sq($b, "SELECT count(*) FROM replstamp.changes");
my ($rc, $out, $err) = $b->psql('postgres', "SELECT replstamp.sync('a')");
like($err, qr/which does not exist here/, 'a change of an unknown table is a clear error');
is(sq($b, "SELECT count(*) FROM replstamp.changes"), $before, 'nothing of the transaction was applied');
sq($b, "SELECT replstamp.sync_all()");
like(sq($b, "SELECT last_error FROM replstamp.peers WHERE name = 'a'"), qr/only_on_a/,
	'sync_all records the error in replstamp.peers');
sq($_, "CREATE TABLE only_on_a (id int PRIMARY KEY); SELECT replstamp.track('only_on_a')") for ($b, $c);
sq($b, "SELECT replstamp.sync('a')");
is(sq($b, "SELECT count(*) FROM accounts WHERE id = 300"), '1', 'once fixed, the next sync completes');

# A peer that is down: a clear error, nothing applied.
$c->stop;
($rc, $out, $err) = $b->psql('postgres', "SELECT replstamp.sync('c')");
like($err, qr/could not connect to peer "c"/, 'a stopped peer gives a clear error');
unlike($err, qr/port=/, 'the error does not show the connection string');
$c->start;

# Privileges: conninfo is hidden from ordinary users, peers are for superusers.
sq($a, 'CREATE ROLE plain LOGIN');
($rc, $out, $err) = $a->psql('postgres', 'SET ROLE plain; SELECT conninfo FROM replstamp.peer');
like($err, qr/permission denied/, 'ordinary users cannot read connection strings');
($rc, $out, $err) = $a->psql('postgres', "SET ROLE plain; SELECT replstamp.add_peer('x', 'host=evil')");
like($err, qr/permission denied/, 'ordinary users cannot add peers');
is(sq($a, "SET ROLE plain; SELECT count(*) FROM replstamp.peers"), '2', 'but can see the peers');
($rc, $out, $err) = $a->psql('postgres', "SELECT replstamp.add_peer('y', 'host=''unterminated')");
like($err, qr/invalid connection string for peer "y"/, 'a malformed connection string is refused');

sync_round();
is(content($a), content($b), 'finally a and b hold the same rows');
is(content($b), content($c), 'finally b and c hold the same rows');

$_->stop for @nodes;
done_testing();
