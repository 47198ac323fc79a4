# DROP EXTENSION replstamp and ALTER EXTENSION replstamp UPDATE never hang
# behind replstamp's own work (issue 27, item 4): they stop the running
# sync, prune or backfill of their database first, and its caller is told
# why.  Before, DROP EXTENSION during replstamp.sync() waited forever: the
# caller waited for its worker (not a lock wait), DROP held the change
# log's lock and waited for replstamp.peer, which the caller had read, and
# the worker waited for the change log; the deadlock detector saw no cycle,
# and every write to a tracked table queued behind the DROP.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my $conf = ['replstamp.prune_interval = 0', "replstamp.peer_timeout = '600s'"];
my $a = replstamp_node('a', conf => $conf, sql => $TRACK_T);
my $b = replstamp_node('b', conf => $conf, sql => $TRACK_T);
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
add_peer($b, 'a', $a);
add_peer($a, 'b', $b);

sub extension_gone
{
	my ($node, $what) = @_;
	ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM pg_extension WHERE extname = 'replstamp'}),
		"$what ends");
}

# The sync of b from a waits for a, whose serve() a session holds up, until
# a DROP EXTENSION on b waits for a lock (before) or has stopped it (now);
# then a answers.  Returns the sync's and the DDL's output.
sub ddl_during_sync
{
	my ($ddl) = @_;
	sq($a, q{INSERT INTO t SELECT g, 'a' FROM generate_series(1, 200) g ON CONFLICT (id) DO UPDATE SET v = 'again'});
	my $wedge = $a->background_psql('postgres');
	$wedge->query_safe('BEGIN');
	$wedge->query_safe('LOCK TABLE replstamp.node IN ACCESS EXCLUSIVE MODE');
	my ($sync_out, $ddl_out) = ('', '');
	my $sync = psql_start($b, q{SELECT replstamp.sync('a')}, \$sync_out);
	$b->poll_query_until('postgres', q{SELECT count(*) > 0 FROM pg_stat_activity
		WHERE query = 'replstamp: syncing from peer a'})
	  or die 'the sync never started';
	my $run = psql_start($b, $ddl, \$ddl_out);
	$b->poll_query_until('postgres', qq{SELECT count(*) > 0 FROM pg_stat_activity
		WHERE query = \$\$$ddl\$\$ AND (wait_event_type = 'Lock' OR state = 'idle')
		UNION ALL SELECT true WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query = \$\$$ddl\$\$)
		ORDER BY 1 DESC LIMIT 1})
	  or die 'the DDL never got going';
	$wedge->query_safe('ROLLBACK');
	$wedge->quit;
	return ($sync, \$sync_out, $run, \$ddl_out);
}

# 1. DROP EXTENSION during replstamp.sync().
my ($sync, $sync_out, $run, $ddl_out) = ddl_during_sync('DROP EXTENSION replstamp CASCADE');
extension_gone($b, 'DROP EXTENSION during a sync');
$run->finish;
$sync->finish;
like($$ddl_out, qr/^DROP EXTENSION$/m, 'and succeeds');
like($$sync_out, qr/replstamp\.sync\(\) was stopped because extension "replstamp" is being dropped or updated/,
	'the sync it stopped says why');
sq($b, q{INSERT INTO t VALUES (100000, 'after')});
pass('writes to the formerly tracked table go on');
is(sq($b, q{SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'replstamp %' AND datname = 'postgres'}),
	'0', 'no replstamp worker is left in the database');

# 2. On the 1.1 catalog (the library is 1.2) no sync runs for ALTER
# EXTENSION UPDATE to stop: it refuses, and says to update (whole
# transactions need the 1.2 catalog).  A backfill, which does run there,
# is item 5.
sq($b, q{DROP TABLE t; CREATE EXTENSION replstamp VERSION '1.1';
	CREATE TABLE t (id int PRIMARY KEY, v text); SELECT replstamp.track('t')});
add_peer($b, 'a', $a);
my ($rc2, $out2, $err2) = $b->psql('postgres', q{SELECT replstamp.sync('a')});
like($err2, qr/replstamp\.sync\(\) needs replstamp 1\.2, but this database still has the catalog of replstamp 1\.1.*HINT:  Run ALTER EXTENSION replstamp UPDATE in this database/s,
	'on the 1.1 catalog a sync refuses, and says to run ALTER EXTENSION UPDATE');
sq($b, 'ALTER EXTENSION replstamp UPDATE');
like(sq($b, q{SELECT replstamp.sync('a')}), qr/^\d+$/, 'the next sync runs');
is(sq($b, q{SELECT count(*) FROM t WHERE id <= 200}), '200', 'and brings the changes');

# 3. DROP EXTENSION during replstamp.prune(), held up by a session that
# locks a table the prune writes.
my $hold = $b->background_psql('postgres');
$hold->query_safe('BEGIN');
$hold->query_safe('LOCK TABLE replstamp.puller IN ACCESS EXCLUSIVE MODE');
my $prune_out = '';
my $prune = psql_start($b, q{SELECT replstamp.prune()}, \$prune_out);
$b->poll_query_until('postgres', q{SELECT count(*) > 0 FROM pg_stat_activity
	WHERE backend_type = 'replstamp prune' AND wait_event_type = 'Lock'})
  or die 'the prune never waited';
my $drop_out = '';
my $drop = psql_start($b, 'DROP EXTENSION replstamp CASCADE', \$drop_out);
$b->poll_query_until('postgres', q{SELECT count(*) > 0 FROM pg_stat_activity
	WHERE query = 'DROP EXTENSION replstamp CASCADE' AND wait_event_type = 'Lock'})
  or die 'the DROP never waited for the lock';
$hold->query_safe('ROLLBACK');
$hold->quit;
extension_gone($b, 'DROP EXTENSION during a prune');
$drop->finish;
$prune->finish;
like($drop_out, qr/^DROP EXTENSION$/m, 'and succeeds');
like($prune_out, qr/replstamp\.prune\(\) was stopped because extension "replstamp" is being dropped/,
	'the prune it stopped says why');

# 4. DROP EXTENSION during a backfill, between two batches.
sq($b, q{CREATE EXTENSION replstamp; SELECT replstamp.track('t');
	ALTER SYSTEM SET replstamp.backfill_batch_size = 10; ALTER SYSTEM SET replstamp.backfill_delay = '1h';
	SELECT pg_reload_conf()});
sq($b, q{CREATE TABLE u (id int PRIMARY KEY); INSERT INTO u SELECT generate_series(1, 100);
	SELECT replstamp.track('u', backfill => true)});
$b->poll_query_until('postgres', q{SELECT backfill = 'running' AND backfill_rows > 0
	FROM replstamp.tracked_table WHERE relation = 'public.u'})
  or die 'the backfill never started';
my ($rc, $out, $err) = $b->psql('postgres', 'DROP EXTENSION replstamp CASCADE', timeout => 600);
is($rc, 0, 'DROP EXTENSION during a backfill succeeds') or diag $err;
is(sq($b, q{SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'replstamp %' AND datname = 'postgres'}),
	'0', 'and stops it');

# 5. ALTER EXTENSION UPDATE during a backfill: the backfill goes on after it.
sq($b, q{CREATE EXTENSION replstamp VERSION '1.1'; SELECT replstamp.track('t'); SELECT replstamp.track('u', backfill => true)});
# On the 1.1 catalog the registry is still called replstamp.tracked.
$b->poll_query_until('postgres', q{SELECT backfill = 'running' AND backfill_rows > 0
	FROM replstamp.tracked WHERE relation = 'public.u'})
  or die 'the backfill never started';
# From now on a backfill worker that starts runs without a pause.
sq($b, q{ALTER SYSTEM RESET replstamp.backfill_delay; SELECT pg_reload_conf()});
($rc, $out, $err) = $b->psql('postgres', 'ALTER EXTENSION replstamp UPDATE', timeout => 600);
is($rc, 0, 'ALTER EXTENSION UPDATE during a backfill succeeds') or diag $err;
ok($b->poll_query_until('postgres', q{SELECT backfill = 'done' AND backfill_rows = 100
	FROM replstamp.tracked_table WHERE relation = 'public.u'}),
	'the backfill it stopped resumes and stamps every row once');
is(sq($b, q{SELECT count(*) FROM replstamp.changes WHERE relation = 'public.u'}), '100',
	'one change per row');
sq($b, q{ALTER SYSTEM RESET replstamp.backfill_batch_size; SELECT pg_reload_conf()});

$_->stop for ($a, $b);
done_testing();
