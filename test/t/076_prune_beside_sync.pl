# A prune does not wait for a whole sync: a sync holds the database's sync
# lock from its first page to its last, and may spend minutes between them
# waiting for its peer (up to replstamp.peer_timeout) or for local writers.
# A prune's batches and a sync's pages exclude each other one page at a
# time instead, so the log is pruned while a sync waits, and two prunes of
# one database still run one after the other.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my ($a, $b) = map {
	replstamp_node($_, conf => ['replstamp.prune_interval = 0', "replstamp.peer_timeout = '300s'"], sql => $TRACK_T)
} qw(a b);
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
add_peer($a, 'b', $b);
add_peer($b, 'a', $a);

# b's 3,000 inserts, superseded by 3,000 updates: a holds all of them, and
# b learns so at a's next sync.
sq($b, q{INSERT INTO t SELECT g, 'one' FROM generate_series(1, 3000) g});
sq($b, q{UPDATE t SET v = 'two'});
is(sq($a, q{SELECT replstamp.sync('b')}), '6000', 'a pulls the 6,000 changes of b');
sq($a, q{SELECT replstamp.sync('b')});

# b syncs from a, which never answers: a session on a holds the table a's
# serve() reads first.
my $wedge = $a->background_psql('postgres');
$wedge->query_safe('BEGIN');
$wedge->query_safe('LOCK TABLE replstamp.node IN ACCESS EXCLUSIVE MODE');
my $out = '';
my $sync = psql_start($b, q{SELECT replstamp.sync('a')}, \$out);
$b->poll_query_until('postgres', q{SELECT count(*) > 0 FROM pg_stat_activity
	WHERE query = 'replstamp: syncing from peer a'})
  or die 'the sync never started';
is(sq($b, q{SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s USING (pid)
	WHERE s.query = 'replstamp: syncing from peer a' AND l.locktype = 'advisory' AND l.granted}),
	'1', "b's sync holds the database's sync lock while it waits for a");

# The prune goes on meanwhile (before, it waited for the sync to end).
my ($rc, $pruned, $err) = $b->psql('postgres', q{SET statement_timeout = '60s'; SELECT replstamp.prune()});
is($err, '', 'a prune is not held up by the waiting sync');
is($pruned, '3000', 'it removes the 3,000 superseded inserts');
is(sq($b, q{SELECT count(*) FROM replstamp.changes}), '3000', 'the 3,000 latest changes are kept');

# Two prunes at once: the second waits for the first's lock.
sq($b, q{ALTER SYSTEM SET replstamp.debug_prune_pause = '3s'; SELECT pg_reload_conf()});
sq($b, q{UPDATE t SET v = 'three'});
$wedge->query_safe('ROLLBACK');
$sync->finish;
like($out, qr/^\d+\n$/, 'once a answers, the waiting sync ends');
sq($a, q{SELECT replstamp.sync('b')});
sq($a, q{SELECT replstamp.sync('b')});
my ($o1, $o2) = ('', '');
my $p1 = psql_start($b, 'SELECT replstamp.prune()', \$o1);
$b->poll_query_until('postgres', q{SELECT count(*) > 0 FROM pg_stat_activity
	WHERE query = 'replstamp: prune paused between batches'})
  or die 'the first prune never paused';
my $p2 = psql_start($b, 'SELECT replstamp.prune()', \$o2);
$b->poll_query_until('postgres', q{SELECT count(*) > 0 FROM pg_stat_activity
	WHERE query = 'replstamp: pruning the change log' AND wait_event_type = 'Lock' AND wait_event = 'advisory'})
  or die 'the second prune never waited for the first';
pass('a second prune waits for the first');
$p1->finish;
$p2->finish;
like($o1, qr/^\d+\n$/, 'the first prune ends');
like($o2, qr/^\d+\n$/, 'the second one too');
is($o1 + $o2, 3000, 'between them they remove the 3,000 superseded updates once');
is(sq($b, q{SELECT count(*) FROM replstamp.changes}), '3000', 'and keep the 3,000 latest changes');
is(sq($b, q{SELECT count(*) FROM replstamp.row_version rv WHERE NOT EXISTS (
	SELECT 1 FROM replstamp.changes c WHERE c.replica_id = rv.replica_id AND c.serial = rv.serial)}),
	'0', 'the latest change of every row is in the log');

sq($b, q{ALTER SYSTEM RESET replstamp.debug_prune_pause; SELECT pg_reload_conf()});
$wedge->quit;
$_->stop for ($a, $b);
done_testing();
