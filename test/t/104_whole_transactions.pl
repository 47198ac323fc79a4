# A sync applies every remote transaction whole, in an order in which no
# transaction comes before one it had seen committed, relays included;
# an immediate stop at any point leaves each remote transaction wholly
# applied or wholly absent, and the next sync goes on.
#
# Readers sample an invariant on the pulling node while it syncs with
# small pages and a pause after each (replstamp.sync_delay): with pages cut
# every sync_batch_size changes, as before 1.2, each of these samples saw
# half of a transaction.
#   1. transfers between rows of a table (the sum stays the same), at
#      several page sizes;
#   2. a transaction that read another's committed row and committed after
#      it, though it took its first serial before it (commit order is not
#      serial order);
#   3. parents and children relayed through a third node: b pulls parent P1
#      from a and writes child C1; a pulls P2 from b and writes C2; c pulls
#      from b only and never holds a child without its parent;
#   4. one transaction larger than the page and than 16 MB, applied with
#      work_mem at its minimum;
#   5. an immediate stop in the middle of a sync of several transactions,
#      and in the middle of one large transaction.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use ReplstampTest;

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

my $schema = q{
	CREATE EXTENSION replstamp;
	CREATE TABLE acct (id int PRIMARY KEY, bal int NOT NULL);
	CREATE TABLE note (id int PRIMARY KEY, v int);
	CREATE TABLE parent (id int PRIMARY KEY);
	CREATE TABLE child (id int PRIMARY KEY, pid int NOT NULL);
	CREATE TABLE big (id int PRIMARY KEY, pad text);
	SELECT replstamp.track(r) FROM unnest('{acct,note,parent,child,big}'::regclass[]) r;
	-- Samples an invariant every 5 ms, each time in a snapshot of its own,
	-- until a row appears in stop (not tracked); returns how many samples
	-- broke it, and how many were taken.
	CREATE TABLE stop (x int);
	CREATE FUNCTION sample(what text) RETURNS text LANGUAGE plpgsql AS $$
	DECLARE bad int := 0; n int := 0; ok boolean;
	BEGIN
		LOOP
			EXECUTE what INTO ok;
			n := n + 1;
			IF NOT ok THEN bad := bad + 1; END IF;
			EXIT WHEN EXISTS (SELECT 1 FROM stop) OR n > 100000;
			PERFORM pg_sleep(0.005);
		END LOOP;
		RETURN bad || ' of ' || n;
	END $$;
};
# No automatic pruning: the end compares the change logs, and a prune on a
# alone (superseded changes every puller holds) would make them differ
# until b prunes too, which on a loaded machine came after the wait.
my @nodes = map { replstamp_node($_, template => 1, conf => ['replstamp.prune_interval = 0'], sql => $schema) } qw(a b c);
my ($a, $b, $c) = @nodes;
add_peer($b, 'a', $a);
add_peer($a, 'b', $b);
add_peer($c, 'b', $b);

sq($a, 'INSERT INTO acct SELECT g, 100 FROM generate_series(1, 3000) g; INSERT INTO note VALUES (1, 0)');
is(sq($b, "SELECT replstamp.sync('a')"), '3001', 'b holds the 3,001 rows of a');

my $sum_ok = q{SELECT sum(bal) = 300000 FROM acct};

# Sync $node from $peer with pages of $batch changes and a pause of $delay
# after each, while a reader samples $check there; returns what the sync
# applied and how many samples broke the invariant (after checking that
# there were samples).
sub sync_sampled
{
	my ($node, $peer, $batch, $delay, $check) = @_;
	my $out = '';
	my $reader = psql_start($node, "SELECT sample(\$q\$$check\$q\$)", \$out);
	usleep(100_000);
	my $applied = $node->safe_psql('postgres', qq{
		SET replstamp.sync_batch_size = $batch;
		SET replstamp.sync_delay = '$delay';
		SELECT replstamp.sync('$peer')});
	$node->safe_psql('postgres', 'INSERT INTO stop VALUES (1)');
	$reader->finish;
	$node->safe_psql('postgres', 'DELETE FROM stop');
	chomp $out;
	my ($bad, $n) = $out =~ /^(\d+) of (\d+)$/ or die "the reader failed: $out";
	ok($n >= 10, "$n samples were taken during the sync");
	return ($applied, $bad);
}

# --- 1. Transfers, pages of 1, 100 and 1000 changes: five transfers of
# 4, 600 and 2000 rows each (the first half of the rows give 1 to the
# second half).
for my $t ([ 1, 4 ], [ 100, 600 ], [ 1000, 2000 ])
{
	my ($batch, $rows) = @$t;
	for my $k (0 .. 4)
	{
		my $lo = $k * 250 % (3001 - $rows);
		sq($a, "UPDATE acct SET bal = bal + CASE WHEN id <= $lo + $rows / 2 THEN -1 ELSE 1 END "
			  . "WHERE id > $lo AND id <= $lo + $rows");
	}
	my ($applied, $bad) = sync_sampled($b, 'a', $batch, '150ms', $sum_ok);
	is($applied, 5 * $rows, "pages of $batch: five transactions of $rows changes applied");
	is($bad, '0', "pages of $batch: no reader on b ever saw part of a transfer");
}
is(sq($b, 'SELECT sum(bal) FROM acct'), '300000', 'the sum holds on b');

# --- 2. Commit order is not serial order.  T1 takes its first serial,
# T2 updates row 2 and commits, T1 copies row 2's balance into the note
# and commits after it.
sq($c, "SELECT replstamp.sync('b')");
my $o1 = '';
my $t1 = psql_start($a, q{BEGIN;
	UPDATE acct SET bal = bal - 5 WHERE id = 3000;
	SELECT pg_sleep(1.5);
	UPDATE note SET v = (SELECT bal FROM acct WHERE id = 2) WHERE id = 1;
	UPDATE acct SET bal = bal + 5 WHERE id = 2999;
	COMMIT;}, \$o1);
usleep(500_000);
sq($a, 'BEGIN; UPDATE acct SET bal = bal + 7 WHERE id = 2; UPDATE acct SET bal = bal - 7 WHERE id = 1; COMMIT');
$t1->finish;
is(sq($a, 'SELECT v = (SELECT bal FROM acct WHERE id = 2) FROM note'), 't',
	'on a, T1 read what T2 committed');
my $aid = sq($a, 'SELECT replica_id FROM replstamp.node');
my $serials = sq($a, "SELECT string_agg(serial::text, ',' ORDER BY serial) FROM replstamp.changes "
	  . "WHERE replica_id = '$aid' AND serial > (SELECT max(serial) - 5 FROM replstamp.changes WHERE replica_id = '$aid')");
my ($bad2);
(undef, $bad2) = sync_sampled($b, 'a', 1, '300ms',
	q{SELECT v IS NOT DISTINCT FROM 0 OR v = (SELECT bal FROM acct WHERE id = 2) FROM note});
is($bad2, '0', 'no reader on b saw the note copied from row 2 before row 2 itself');
is(sq($b, "SELECT string_agg(serial::text, ',' ORDER BY usn, xact, serial) FROM replstamp.changes "
		  . "WHERE replica_id = '$aid' AND serial IN (" . join(',', split /,/, $serials) . ")"),
	do { my @s = split /,/, $serials; join(',', @s[1, 2, 0, 3, 4]) },
	'b applied T2 (serials 2 and 3 of 5) before T1 (1, 4, 5): the order they committed in');

# --- 3. Parents and children relayed through b to c (which holds
# everything else already).
sq($c, "SELECT replstamp.sync('b')");
sq($a, 'INSERT INTO parent VALUES (1)');
sq($b, "SELECT replstamp.sync('a')");
sq($b, 'INSERT INTO child VALUES (1, 1); INSERT INTO parent VALUES (2)');
sq($a, "SELECT replstamp.sync('b')");
sq($a, 'INSERT INTO child VALUES (2, 2)');
sq($b, "SELECT replstamp.sync('a')");
my ($applied3, $bad3) = sync_sampled($c, 'b', 1, '300ms',
	q{SELECT NOT EXISTS (SELECT 1 FROM child WHERE pid NOT IN (SELECT id FROM parent))});
is($bad3, '0', 'c, pulling from b only, never held a child without its parent');
is(sq($c, q{SELECT (SELECT count(*) FROM parent) || '/' || (SELECT count(*) FROM child)}), '2/2',
	'c holds both parents and both children');
is(sq($c, 'SELECT sum(bal) FROM acct'), '300000', 'and the sum holds on c');

# --- 4. One transaction of 60,000 rows of 400 bytes: larger than a page
# and than the 16 MB kept for a retry.
sq($a, "INSERT INTO big SELECT g, repeat('x', 400) FROM generate_series(1, 60000) g");
my ($applied4, $bad4) = sync_sampled($b, 'a', 100, '0',
	q{SELECT count(*) IN (0, 60000) FROM big});
is($applied4, '60000', 'the large transaction applied');
is($bad4, '0', 'no reader saw part of it');

# --- 5. Immediate stops in the middle of a sync.
# Ten transfers, pages of one transaction and a pause of 400 ms after each:
# stop b while it syncs.
for my $k (0 .. 9)
{
	my $lo = $k * 300;
	sq($a, "UPDATE acct SET bal = bal + CASE WHEN id <= $lo + 150 THEN 2 ELSE -2 END "
		  . "WHERE id > $lo AND id <= $lo + 300");
}
my $out5 = '';
my $s5 = IPC::Run::start(
	[ 'psql', '-X', '-At', '-d', $b->connstr('postgres'), '-c', 'SET replstamp.sync_batch_size = 1',
	  '-c', "SET replstamp.sync_delay = '400ms'", '-c', "SELECT replstamp.sync('a')" ],
	'>', \$out5, '2>', \$out5, IPC::Run::timeout(300));
my $applied_transfers = "SELECT count(DISTINCT xact) FROM replstamp.changes WHERE applied AND relation = 'public.acct' "
	  . "AND xact > (SELECT max(xact) FROM replstamp.changes WHERE relation = 'public.big')";
$b->poll_query_until('postgres', "SELECT ($applied_transfers) >= 1") or die 'the sync does not start';
$b->stop('immediate');
$s5->finish;
$b->start;
my $held = sq($b, $applied_transfers);
ok($held > 0 && $held < 10, "the stop came in the middle of the sync ($held of 10 transfers applied)");
is(sq($b, 'SELECT sum(bal) FROM acct'), '300000', 'after the immediate stop, no transfer is half applied');
is(sq($b, "SELECT replstamp.sync('a')"), 3000 - 300 * $held, 'the next sync applies the rest, from the last whole transaction');
is(sq($b, 'SELECT sum(bal) FROM acct'), '300000', 'the sum holds');

# One transaction of 150,000 changes: stop b while it applies it.
sq($a, "UPDATE big SET pad = repeat('y', 400)");
sq($a, "INSERT INTO big SELECT g, 'z' FROM generate_series(60001, 150000) g");
sq($a, "UPDATE big SET pad = 'w' WHERE id <= 150000");
my $out6 = '';
my $s6 = psql_start($b, "SELECT replstamp.sync('a')", \$out6);
# Stop once the sync's transaction has written to big (it holds its lock).
$b->poll_query_until('postgres', q{SELECT count(*) > 0 FROM pg_locks l JOIN pg_stat_activity s USING (pid)
	WHERE l.relation = 'big'::regclass AND l.mode = 'RowExclusiveLock' AND s.query LIKE 'replstamp: syncing%'})
  or die 'the sync does not apply';
usleep(300_000);
$b->stop('immediate');
$s6->finish;
$b->start;
# Each of the three transactions whole or absent: pads x (none applied),
# y (the first), y and z (two), w (all three).
my $state = sq($b, q{SELECT string_agg(k || ':' || n, ' ' ORDER BY k) FROM
	(SELECT left(pad, 1) AS k, count(*) AS n FROM big GROUP BY 1) s});
like($state, qr/^(x:60000|y:60000|y:60000 z:90000|w:150000)$/,
	"after an immediate stop while applying large transactions, each is whole or absent ($state)");
sq($b, "SELECT replstamp.sync('a')");
is(sq($b, q{SELECT count(*) FILTER (WHERE pad = 'w') || '/' || count(*) FROM big}), '150000/150000',
	'the next sync applies them');
wait_converged([ $a, $b ], [qw(acct note parent child big)], 'at the end');

done_testing();
