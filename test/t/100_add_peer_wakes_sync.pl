# With replstamp.sync_interval on before the extension exists (the usual
# order), add_peer() wakes the sync worker: the first sync does not wait for
# the launcher's retry of a database whose worker left for want of the
# extension, nor for the interval of a worker already running.
#
# The interval is an hour, so the launcher's retry (the interval or
# SYNC_RETRY_S, whichever is longer) and the running worker's next round
# both come long after poll_query_until gives up: only a wake-up explains
# the rows arriving, and without one this test fails instead of passing
# slowly.  The server logs at DEBUG1, so the test can wait for the
# worker's "no replstamp in database" before the extension is created.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my $a = replstamp_node('a', sql => $TRACK_T);
my $c = replstamp_node('c', sql => $TRACK_T);
my $b = replstamp_node('b', conf => ['replstamp.sync_interval = 3600', 'log_min_messages = debug1']);
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

$b->wait_for_log(qr/no replstamp in database "postgres", its sync worker exits/);
$b->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'replstamp sync'")
  or die 'the sync worker of a database without replstamp did not leave';
pass('before CREATE EXTENSION the sync worker leaves');

sq($a, "INSERT INTO t SELECT g, 'from a' FROM generate_series(1, 5) g");
sq($b, $TRACK_T);
add_peer($b, 'a', $a);
$b->poll_query_until('postgres', 'SELECT count(*) = 5 FROM t')
  or die 'the first peer added was not synced';
pass('the extension created after start, the first peer added is synced at once');
is(sq($b, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'replstamp sync' AND datname = 'postgres'"),
	'1', 'by the sync worker, started again');

# The worker now sleeps for an hour; another peer wakes it.
sq($c, "INSERT INTO t SELECT g, 'from c' FROM generate_series(101, 105) g");
add_peer($b, 'c', $c);
$b->poll_query_until('postgres', 'SELECT count(*) = 10 FROM t')
  or die 'the running sync worker was not woken';
pass('a peer added wakes the running sync worker');

# A peer added in a transaction that rolls back is not there (the wake-up
# it queued is dropped with it, and nothing breaks).
sq($b, "BEGIN; SELECT replstamp.add_peer('gone', 'host=/nonexistent dbname=x'); ROLLBACK");
is(sq($b, 'SELECT count(*) FROM replstamp.peers'), '2', 'a rolled-back add_peer() leaves no peer');

$a->stop;
$b->stop;
$c->stop;
done_testing();
