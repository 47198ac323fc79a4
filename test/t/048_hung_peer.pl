# A peer that never answers cannot wedge a node, and syncs of one database
# do not trip over each other (issue 8, items 7 and 10):
#  - a peer that accepts TCP connections and says nothing is given up
#    after connect_timeout; one that connects and then never answers a
#    query, after replstamp.peer_timeout;
#  - while a sync waits for a peer it holds no transaction and no row
#    lock: local writes of the rows it applied go on;
#  - sync_all() goes on with the other peers after a hung one;
#  - two syncs of one peer at once both succeed, one after the other.
use strict;
use warnings;
use IO::Socket::INET;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use ReplstampTest;

my ($a, $b, $z, $w) = map { replstamp_node($_, sql => $TRACK_T) } qw(a b z w);
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
add_peer($b, 'a', $a);

# replstamp.sync(peer) on b, timed; a sync that does not end is given up
# after 180 s.
sub timed_sync
{
	my ($peer) = @_;
	my $timed_out = 0;
	my $t0 = time;
	my ($rc, $out, $err) = $b->psql('postgres', "SELECT replstamp.sync('$peer')",
		timeout => 180, timed_out => \$timed_out);
	return ($err // '', time - $t0, $timed_out);
}
sub sync_worker_waits
{
	my ($what) = @_;
	$b->poll_query_until('postgres', qq{SELECT count(*) > 0 FROM pg_stat_activity
		WHERE backend_type = 'replstamp sync request' AND $what})
	  or die "the sync never got there: $what";
}

# 1. Two syncs of one peer at once.  The first is held on a key that a
# local transaction inserts; the second starts meanwhile and waits for the
# database's sync lock; both succeed, and every change arrives once.
sq($a, "INSERT INTO t SELECT g, 'a' FROM generate_series(1, 3000) g");
my $hold = $b->background_psql('postgres');
$hold->query_safe('BEGIN');
$hold->query_safe("INSERT INTO t VALUES (2500, 'local')");
my ($out1, $out2) = ('', '');
my $h1 = psql_start($b, "SELECT replstamp.sync('a')", \$out1);
sync_worker_waits(q{wait_event_type = 'Lock' AND wait_event = 'transactionid'});
# The second one reads a table in the same statement.
my $h2 = psql_start($b, "SELECT replstamp.sync(name) FROM replstamp.peer WHERE name = 'a'", \$out2);
sync_worker_waits(q{wait_event_type = 'Lock' AND wait_event = 'advisory'});
pass('the second sync waits for the first');
# A caller that only waits for its sync does not hold back the pruning of
# the row versions the sync makes dead (a hot row's HOT chain would grow
# through the whole sync); one whose statement reads on afterwards does.
my @xmins = split /\n/, sq($b, q{SELECT coalesce(backend_xmin::text, 'none') FROM pg_stat_activity
	WHERE backend_type = 'client backend' AND query LIKE 'SELECT replstamp.sync(%' ORDER BY query});
is($xmins[0], 'none', 'while SELECT replstamp.sync() waits, its backend advertises no xmin');
isnt($xmins[1] // 'none', 'none', 'a statement that reads a table keeps its xmin while it waits');
$hold->query_safe('ROLLBACK');
$hold->quit;
$h1->finish;
$h2->finish;
like($out1, qr/^\d+\n$/, 'the first sync succeeds');
like($out2, qr/^\d+\n$/, 'the second sync succeeds too');
is($out1 + $out2, 3000, 'between them they apply every change once');
is(sq($b, 'SELECT count(*) FROM t'), '3000', 'and b holds every row');

# 2. A peer that accepts the TCP connection and never says anything.
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $listener = IO::Socket::INET->new(
	LocalAddr => '127.0.0.1', LocalPort => $port, Proto => 'tcp', Listen => 16, ReuseAddr => 1)
  or die "cannot listen on 127.0.0.1:$port: $!";
sq($b, "SELECT replstamp.add_peer('hung', 'host=127.0.0.1 port=$port dbname=postgres connect_timeout=2')");
my ($err, $took, $timed_out) = timed_sync('hung');
like($err, qr/ERROR:  could not connect to peer "hung"\nDETAIL:  timeout expired after 2 s \(connect_timeout\)/,
	'a peer that never completes the connection: the sync gives up after connect_timeout');
ok(!$timed_out && $took < 60, sprintf('within a bounded time (%.1f s)', $took));

# 3. A peer that connects and never answers: w's serve() waits for a lock
# that a session on w holds.
add_peer($b, 'wedged', $w);
sq($b, "ALTER SYSTEM SET replstamp.peer_timeout = '2s'; SELECT pg_reload_conf()");
my $wedge = $w->background_psql('postgres');
$wedge->query_safe('BEGIN');
$wedge->query_safe('LOCK TABLE replstamp.node IN ACCESS EXCLUSIVE MODE');
($err, $took, $timed_out) = timed_sync('wedged');
like($err, qr/ERROR:  peer "wedged" did not answer within 2 s\n.*HINT:  .*replstamp\.peer_timeout/s,
	'a peer that never answers: the sync gives up after replstamp.peer_timeout');
ok(!$timed_out && $took < 60, sprintf('within a bounded time (%.1f s)', $took));

$wedge->query_safe('ROLLBACK');
$wedge->quit;

# 4. sync_all() with a good peer before and after the hung one.  While it
# waits for the hung peer, the rows it applied from a are not locked and
# it holds no transaction; then it goes on with z.
sq($b, "SELECT replstamp.drop_peer('wedged')");
sq($b, "SELECT replstamp.drop_peer('hung')");
sq($b, "SELECT replstamp.add_peer('hung', 'host=127.0.0.1 port=$port dbname=postgres connect_timeout=4')");
add_peer($b, 'z', $z);
sq($a, "UPDATE t SET v = 'a2' WHERE id <= 10");
sq($z, "INSERT INTO t SELECT g, 'z' FROM generate_series(5001, 5010) g");
my $all = '';
my $h = psql_start($b, 'SELECT replstamp.sync_all()', \$all);
sync_worker_waits(q{query = 'replstamp: syncing from peer hung'});
is(sq($b, q{SET statement_timeout = '20s';
	INSERT INTO t VALUES (1, 'local') ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v RETURNING v}),
	'local', 'while sync_all waits for a hung peer, a local write of a row it applied goes through');
is(sq($b, q{SELECT count(*) FROM pg_stat_activity
	WHERE query = 'replstamp: syncing from peer hung' AND (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL)}),
	'0', 'the sync holds no transaction while it waits');
is(sq($b, q{SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s USING (pid)
	WHERE s.query = 'replstamp: syncing from peer hung' AND l.locktype <> 'advisory'}),
	'0', 'and no lock but its sync lock');
$h->finish;
like($all, qr/WARNING:  replstamp: sync from peer "hung" failed: could not connect to peer "hung"/,
	'sync_all reports the hung peer');
like($all, qr/^20$/m, 'and applies the changes of the others');
is(sq($b, "SELECT count(*) FROM t WHERE id BETWEEN 5001 AND 5010"), '10', "z's rows are here");
is(sq($b, "SELECT string_agg(name || ':' || (last_error IS NULL)::text, ',' ORDER BY name) FROM replstamp.peers"),
	'a:true,hung:false,z:true', 'replstamp.peers shows which peer failed');

$listener->close;
$_->stop for ($a, $b, $z, $w);
done_testing();
