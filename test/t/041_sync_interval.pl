# replstamp.sync_interval: the launcher keeps a sync worker per database
# that syncs with every peer on its own; a peer that goes away is recorded
# and retried; zero stops the workers; the launcher comes back after a crash
# restart.  replstamp.sync_delay pauses a sync after each page, and a
# cancel during the pause keeps the pages before it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my ($a, $b) = map {
	replstamp_node($_, conf => ['restart_after_crash = on'], sql => $TRACK_T)
} qw(a b);
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
# A database without the extension: its sync worker must just go away.
$b->safe_psql('postgres', 'CREATE DATABASE plain');
add_peer($b, 'a', $a);

is(sq($b, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'replstamp sync'"), '0',
	'no sync worker while sync_interval is 0');
sq($a, "INSERT INTO t SELECT g, 'first' FROM generate_series(1, 10) g");
sq($b, 'ALTER SYSTEM SET replstamp.sync_interval = 1');
sq($b, 'SELECT pg_reload_conf()');
$b->poll_query_until('postgres', 'SELECT count(*) = 10 FROM t')
  or die 'the sync worker pulled nothing';
pass('with sync_interval = 1 the changes arrive without a call');
is(sq($b, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'replstamp sync' AND datname = 'postgres'"),
	'1', 'one sync worker for the database with replstamp');
is(sq($b, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'replstamp sync' AND datname = 'plain'"),
	'0', 'none stays in the database without it');
ok(sq($b, "SELECT last_sync_at > now() - interval '1 minute' AND changes_pulled >= 10 FROM replstamp.peers WHERE name = 'a'") eq 't',
	'replstamp.peers shows the automatic syncs');

# The peer goes away: the error is recorded, the worker goes on.
$a->stop;
$b->poll_query_until('postgres', "SELECT last_error IS NOT NULL FROM replstamp.peers WHERE name = 'a'")
  or die 'no error recorded';
pass('a stopped peer: the error is recorded in replstamp.peers');
$a->start;
sq($a, "INSERT INTO t SELECT g, 'second' FROM generate_series(11, 20) g");
$b->poll_query_until('postgres', 'SELECT count(*) = 20 FROM t') or die 'no catch-up';
pass('once the peer is back, the worker catches up');
is(sq($b, "SELECT last_error IS NULL FROM replstamp.peers WHERE name = 'a'"), 't',
	'and the error is cleared');

# A crash restart: the launcher and the sync worker come back.
my $victim = $b->background_psql('postgres');
my $pid = $victim->query_safe('SELECT pg_backend_pid()');
my $offset = -s $b->logfile;
kill 'KILL', $pid;
$b->wait_for_log(qr/database system is ready to accept connections/, $offset);
eval { $victim->quit; };
$b->poll_query_until('postgres', "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'replstamp launcher'")
  or die 'no launcher after the crash restart';
pass('the launcher is back after a crash restart');
sq($a, "INSERT INTO t SELECT g, 'third' FROM generate_series(21, 30) g");
$b->poll_query_until('postgres', 'SELECT count(*) = 30 FROM t') or die 'no sync after the crash';
pass('and syncing goes on');

# Zero stops the workers.
sq($b, 'ALTER SYSTEM SET replstamp.sync_interval = 0');
sq($b, 'SELECT pg_reload_conf()');
$b->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'replstamp sync'")
  or die 'the sync worker does not stop';
pass('sync_interval = 0 stops the sync worker');
sq($a, "INSERT INTO t VALUES (31, 'not synced')");
sleep 2;
is(sq($b, 'SELECT count(*) FROM t'), '30', 'and nothing is pulled any more');

# Switched back on, the workers resume at once, not after the minute the
# launcher waits before it starts again a worker that stopped on its own.
my $t0 = time;
sq($b, 'ALTER SYSTEM SET replstamp.sync_interval = 1');
sq($b, 'SELECT pg_reload_conf()');
$b->poll_query_until('postgres', 'SELECT count(*) = 31 FROM t') or die 'no sync after switching back on';
my $took = time - $t0;
ok($took < 30, "switched back on, the sync worker pulls again at once ($took s)");

# replstamp.sync_delay, with pages of 10 changes, both SET in the session
# that calls sync(): its worker takes them on.
sq($b, 'ALTER SYSTEM SET replstamp.sync_interval = 0');
sq($b, 'SELECT pg_reload_conf()');
$b->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'replstamp sync'")
  or die 'the sync worker did not stop';
# Three transactions of ten rows: a page ends between two of them.
sq($a, join(';', map { "INSERT INTO t SELECT g, 'paced' FROM generate_series($_, $_ + 9) g" } (101, 111, 121)));
my $out = '';
my $h = IPC::Run::start(
	[ 'psql', '-X', '-At', '-d', $b->connstr('postgres'), '-c', 'SET replstamp.sync_batch_size = 10',
	  '-c', "SET replstamp.sync_delay = '1h'", '-c', "SELECT replstamp.sync('a')" ],
	'>', \$out, '2>', \$out, IPC::Run::timeout(180));
$b->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity
	WHERE query = 'replstamp: syncing from peer a' AND wait_event_type = 'Extension'
	AND (SELECT count(*) FROM t WHERE id > 100) = 10})
  or die 'the sync did not pause after its first page';
pass('after its first page of 10 changes, the sync pauses for replstamp.sync_delay');
sq($b, q{SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query = 'SELECT replstamp.sync(''a'')'});
$h->finish;
like($out, qr/canceling statement due to user request/, 'a cancel stops it during the pause');
is(sq($b, 'SELECT count(*) FROM t WHERE id > 100'), '10', 'the page before the pause is kept');
is(sq($b, "SELECT replstamp.sync('a')"), '20', 'the next sync, in a session with neither set, goes on from there');

$a->stop;
$b->stop;
done_testing();
