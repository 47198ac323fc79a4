# Last writer wins orders changes the same way on every node, whatever
# the clocks and whatever the keys (issue 8, item 5):
#  - an UPDATE that changes a row's key is "old key deleted, new key
#    written" at one stamp, on every node: concurrent changes of either key
#    end with the same rows everywhere;
#  - a node whose clock runs 2 minutes ahead cannot make a later change on
#    another node lose: the hybrid clock moves past every stamp time seen,
#    and replstamp.peers shows the skew;
#  - a change stamped more than replstamp.max_clock_skew ahead is refused,
#    and the sync goes on once that is allowed.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my ($a, $b) = map {
	replstamp_node($_, sql => q{
		CREATE EXTENSION replstamp;
		CREATE TABLE kc (k int PRIMARY KEY, v text);
		CREATE TABLE t (id int PRIMARY KEY, v text);
		SELECT replstamp.track('kc'); SELECT replstamp.track('t');
	})
} qw(a b);
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
add_peer($a, 'b', $b);
add_peer($b, 'a', $a);
sub sync_both { for (1 .. 2) { sq($b, "SELECT replstamp.sync('a')"); sq($a, "SELECT replstamp.sync('b')"); } }
sub kc { my ($n, $lo, $hi) = @_; return sq($n, "SELECT coalesce(string_agg(k || ':' || v, ',' ORDER BY k), '') FROM kc WHERE k BETWEEN $lo AND $hi"); }

# Item 5(b).  Each case on its own keys, in both time orders.
sq($a, q{INSERT INTO kc VALUES (1, 'v0'), (11, 'v0'), (7, 'v7'), (17, 'v7')});
sync_both();
# A moves 1 to 2 while B updates 1 (A first, then B the other way round).
sq($a, 'UPDATE kc SET k = 2 WHERE k = 1');
sq($b, "UPDATE kc SET v = 'b' WHERE k = 1");
sq($b, "UPDATE kc SET v = 'b' WHERE k = 11");
sq($a, 'UPDATE kc SET k = 12 WHERE k = 11');
# A moves 7 to 8 while B inserts 8.
sq($a, 'UPDATE kc SET k = 8 WHERE k = 7');
sq($b, "INSERT INTO kc VALUES (8, 'b-insert')");
sq($b, "INSERT INTO kc VALUES (18, 'b-insert')");
sq($a, 'UPDATE kc SET k = 18 WHERE k = 17');
sync_both();
is(kc($a, 1, 2), kc($b, 1, 2), 'key change against a later update of the old key: the same rows on both nodes');
is(kc($a, 1, 2), '1:b,2:v0', 'the later update keeps the old key alive, the new key holds the moved row');
is(kc($a, 11, 12), kc($b, 11, 12), 'key change after an update of the old key: the same rows on both nodes');
is(kc($a, 11, 12), '12:v0', 'the old key is gone, the new key holds the moved row');
is(kc($a, 7, 8), kc($b, 7, 8), 'key change against a later insert of the new key: the same rows on both nodes');
is(kc($a, 7, 8), '8:b-insert', 'the later insert wins the new key');
is(kc($a, 17, 18), kc($b, 17, 18), 'key change after an insert of the new key: the same rows on both nodes');
is(kc($a, 17, 18), '18:v7', 'the later key change wins the new key');

# Item 5(a).  a's clock runs 2 minutes ahead.
sub set_clock
{
	my ($n, $ms) = @_;
	sq($n, "ALTER SYSTEM SET replstamp.debug_clock_offset = $ms; SELECT pg_reload_conf()");
	$n->poll_query_until('postgres', "SELECT current_setting('replstamp.debug_clock_offset')::interval = interval '$ms ms'")
	  or die 'the clock offset was not taken';
}
set_clock($a, 120000);
sq($a, "INSERT INTO t VALUES (1, 'a, 2 minutes ahead')");
sq($b, "SELECT replstamp.sync('a')");
sq($b, "UPDATE t SET v = 'b, later' WHERE id = 1");
sync_both();
is(sq($a, 'SELECT v FROM t WHERE id = 1'), 'b, later', "b's later update wins on a");
is(sq($b, 'SELECT v FROM t WHERE id = 1'), 'b, later', 'and on b');
is(sq($b, q{SELECT clock_skew BETWEEN '1 min 50 s' AND '2 min 10 s' FROM replstamp.peers WHERE name = 'a'}), 't',
	'replstamp.peers shows that a runs 2 minutes ahead');
sq($a, "UPDATE t SET v = 'a, later still' WHERE id = 1");
sync_both();
is(sq($b, 'SELECT v FROM t WHERE id = 1') . '|' . sq($a, 'SELECT v FROM t WHERE id = 1'),
	'a, later still|a, later still', "and a's next update wins on both");

# 10 minutes ahead: more than replstamp.max_clock_skew (5 minutes).
set_clock($a, 600000);
sq($a, "INSERT INTO t VALUES (2, 'a, 10 minutes ahead')");
my ($rc, $out, $err) = $b->psql('postgres', "SELECT replstamp.sync('a')");
like($err, qr/ERROR:  peer "a" sent a change stamped .*, more than replstamp.max_clock_skew ahead of this node's clock\n.*\nHINT:  Fix the clocks/,
	'a change stamped 10 minutes ahead is refused, with a clear error');
is(sq($b, 'SELECT count(*) FROM t WHERE id = 2'), '0', 'and not applied');
like(sq($b, "SELECT last_error FROM replstamp.peers WHERE name = 'a'"), qr/max_clock_skew/, 'replstamp.peers says why');
sq($b, "ALTER SYSTEM SET replstamp.max_clock_skew = '15min'; SELECT pg_reload_conf()");
$b->poll_query_until('postgres', "SELECT current_setting('replstamp.max_clock_skew') = '15min'")
  or die 'max_clock_skew was not taken';
sq($b, "SELECT replstamp.sync('a')");
is(sq($b, 'SELECT v FROM t WHERE id = 2'), 'a, 10 minutes ahead', 'once allowed, the sync goes on');

$_->stop for ($a, $b);
done_testing();
