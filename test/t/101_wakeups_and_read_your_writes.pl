# Replication is on once a peer is added, and a commit wakes its pullers:
# with no setting at all, a change reaches the peer; with the fallback poll
# set to an hour (it runs once, when the peer is added), a change made
# afterwards still crosses a -> b -> c, which only the wake-ups (b's apply
# commit wakes c) explain.  A wake-up lost with its connection (the serving
# backend terminated) costs nothing but a reconnect; a peer that is down
# is retried with a back-off that replstamp.peers shows, and recovers.
# Read-your-writes: last_stamp() names the session's last committed write,
# and wait_for() on another node returns true once that node holds it,
# woken by the apply's commit, or false at its timeout.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

# --- The defaults replicate.
my $x = replstamp_node('x', defaults => 1, sql => $TRACK_T);
my $y = replstamp_node('y', defaults => 1, sql => $TRACK_T);
is(sq($y, 'SHOW replstamp.sync_interval'), '10s', 'the fallback poll defaults to 10 s');
add_peer($y, 'x', $x);
sq($x, "INSERT INTO t VALUES (1, 'defaults')");
$y->poll_query_until('postgres', "SELECT count(*) = 1 FROM t WHERE v = 'defaults'")
  or die 'the default configuration did not replicate';
pass('with no setting, a change reaches the peer once the peer is added');
$y->poll_query_until('postgres', "SELECT wakeups FROM replstamp.peers WHERE name = 'x'")
  or die 'no connection waits on x';
pass('replstamp.peers shows the connection that waits for wake-ups');

# A database with replstamp but no peer keeps no sync worker connected:
# nothing stands in the way of DROP DATABASE.
sq($y, 'CREATE DATABASE lonely');
$y->safe_psql('lonely', 'CREATE EXTENSION replstamp');
$y->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = 'lonely'")
  or die 'a sync worker stays in a database without peers';
sq($y, 'DROP DATABASE lonely');
pass('a database without peers has no resident sync worker, and can be dropped');
$x->stop;
$y->stop;

# --- A relay: a -> b -> c, the poll an hour.
my @hour = (conf => ['replstamp.sync_interval = 3600']);
my $a = replstamp_node('a', @hour, sql => $TRACK_T);
my $b = replstamp_node('b', @hour, sql => $TRACK_T);
my $c = replstamp_node('c', @hour, sql => $TRACK_T);
add_peer($b, 'a', $a);
add_peer($c, 'b', $b);
for my $n ($b, $c)
{
	$n->poll_query_until('postgres', 'SELECT bool_and(wakeups) FROM replstamp.peers')
	  or die $n->name . ': no connection waits';
}
sq($a, "INSERT INTO t VALUES (10, 'relayed')");
$c->poll_query_until('postgres', "SELECT count(*) = 1 FROM t WHERE id = 10")
  or die 'the change did not cross the relay';
pass('a commit on a reaches c through b without a poll: b\'s apply commit woke c');

# Read-your-writes across the relay.
my $stamp = sq($a, "INSERT INTO t VALUES (11, 'mine'); SELECT replstamp.last_stamp()");
like($stamp, qr{^[0-9a-f-]{36}/\d+$}, 'last_stamp() names the committed write');
is(sq($c, "SELECT replstamp.wait_for('$stamp', '180s')"), 't',
	'wait_for() on c returns true once c holds the write');
is(sq($c, "SELECT v FROM t WHERE id = 11"), 'mine', 'and the write is there to read');
is(sq($a, 'SELECT replstamp.last_stamp() IS NULL'), 't', 'a new session has no last stamp');
is(sq($a, "BEGIN; INSERT INTO t VALUES (12, 'x'); ROLLBACK; SELECT replstamp.last_stamp() IS NULL"),
	't', 'a rolled-back write gives no stamp');
is(sq($a, "SELECT replstamp.wait_for('$stamp', '0s')"), 't', 'the origin holds its own write');

my ($id) = split m{/}, $stamp;
is(sq($c, "SELECT replstamp.wait_for('$id/999999999', '200ms')"), 'f',
	'wait_for() returns false at its timeout when the change does not arrive');
my ($rc, $out, $err) = $c->psql('postgres', "SELECT replstamp.wait_for('nonsense')");
like($err, qr/invalid stamp/, 'a malformed stamp is refused');

# wait_for() sleeps until the change arrives: e has no peer yet when it starts.
my $e = replstamp_node('e', @hour, sql => $TRACK_T);
my $wait_out = '';
my $h = psql_start($e, "SELECT replstamp.wait_for('$stamp', '180s')", \$wait_out);
$e->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE query LIKE '%wait_for(%' AND wait_event = 'Extension' AND pid <> pg_backend_pid()")
  or die 'wait_for() is not waiting';
add_peer($e, 'a', $a);
$h->finish;
is($wait_out, "t\n", 'a waiting wait_for() returns true when the apply commits the change');
$e->stop;

# --- A lost wake-up: the serving backend of b's wait on a is terminated.
my $killed = sq($a,
	"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE '%wait_for_changes%' AND pid <> pg_backend_pid()");
cmp_ok($killed, '>=', 1, 'the waiting connection on a was terminated');
sq($a, "INSERT INTO t VALUES (20, 'after the loss')");
$c->poll_query_until('postgres', "SELECT count(*) = 1 FROM t WHERE id = 20")
  or die 'a lost wake-up lost the change';
pass('after a lost wake-up the change still arrives (reconnect, then sync)');

# --- A peer that is down: back-off shown, then recovery.
my $d = replstamp_node('d', @hour, sql => $TRACK_T);
sq($d, "INSERT INTO t VALUES (30, 'from d')");
add_peer($b, 'd', $d);
$b->poll_query_until('postgres', "SELECT count(*) = 1 FROM t WHERE id = 30")
  or die 'd was not synced';
$d->stop;
$b->poll_query_until('postgres',
	"SELECT NOT wakeups AND next_retry_at IS NOT NULL FROM replstamp.peers WHERE name = 'd'")
  or die 'the back-off is not shown';
pass('a peer that is down is shown with no wake-ups and its next retry');
$d->start;
sq($d, "INSERT INTO t VALUES (31, 'd is back')");
$b->poll_query_until('postgres', "SELECT count(*) = 1 FROM t WHERE id = 31")
  or die 'the peer that came back was not synced';
$b->poll_query_until('postgres',
	"SELECT wakeups AND next_retry_at IS NULL FROM replstamp.peers WHERE name = 'd'")
  or die 'the connection to d did not come back';
pass('the peer back up is reconnected and synced');

# --- Who may wait: wait_for_changes() is for pullers.
sq($a, 'CREATE ROLE nobody LOGIN');
($rc, $out, $err) = $a->psql('postgres', 'SELECT replstamp.wait_for_changes(NULL)',
	extra_params => [ '-U', 'nobody' ]);
like($err, qr/permission denied/, 'wait_for_changes() is not granted to PUBLIC');

wait_converged([ $b, $c ], ['t'], 'after it all');
$_->stop for ($a, $b, $c, $d);
done_testing();
