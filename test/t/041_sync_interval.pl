# replstamp.sync_interval: the launcher keeps a sync worker per database
# that syncs with every peer on its own; a peer that goes away is recorded
# and retried; zero stops the workers; the launcher comes back after a crash
# restart.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my ($a, $b) = map {
	replstamp_node($_, conf => ['restart_after_crash = on'], sql => q{
		CREATE EXTENSION replstamp;
		CREATE TABLE t (id int PRIMARY KEY, v text);
		SELECT replstamp.track('t');
	})
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

$a->stop;
$b->stop;
done_testing();
