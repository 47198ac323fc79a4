# A tracked table never stops replicating silently (issue 27, items 2 and
# 3, and the status check):
#  - DDL that would let its changes go unstamped or unidentifiable is
#    refused: SET UNLOGGED (a crash empties it with nothing stamped),
#    disabling, re-enabling for origin only, or dropping replstamp's
#    trigger, dropping or changing the primary key;
#  - a table dropped and created again without its triggers (pg_restore
#    --clean -t) shows in replstamp.problems and is warned of at every
#    sync, with the command that makes it replicate again;
#  - replstamp.problems names every reason a tracked table is not
#    replicated fully, and is empty when all is well; replstamp.status
#    counts them.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;
require_programs('pg_dump', 'pg_restore');

my $a = replstamp_node('a', conf => ['replstamp.prune_interval = 0'], sql => $TRACK_T);
my $b = replstamp_node('b', conf => ['replstamp.prune_interval = 0'], sql => $TRACK_T);
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
add_peer($b, 'a', $a);
add_peer($a, 'b', $b);
sq($a, q{INSERT INTO t SELECT g, 'a' FROM generate_series(1, 10) g});
sq($b, q{SELECT replstamp.sync('a')});
my $problems = q{SELECT coalesce(string_agg(problem || ' ' || object, ', ' ORDER BY problem, object), 'none') FROM replstamp.problems};

is(sq($a, $problems), 'none', 'replstamp.problems is empty when all is well');
is(sq($a, q{SELECT problems FROM replstamp.status}), '0', 'and replstamp.status counts no problem');

# 1. DDL that would make the table's changes go unstamped or unidentifiable.
my @refused = (
	[ 'ALTER TABLE t SET UNLOGGED', qr/cannot make table public\.t unlogged because it is tracked by replstamp/ ],
	[ 'ALTER TABLE t DISABLE TRIGGER replstamp_stamp', qr/cannot disable, replace or drop the replstamp triggers/ ],
	[ 'ALTER TABLE t DISABLE TRIGGER ALL', qr/cannot disable, replace or drop the replstamp triggers/ ],
	[ 'ALTER TABLE t DISABLE TRIGGER USER', qr/cannot disable, replace or drop the replstamp triggers/ ],
	[ 'ALTER TABLE t ENABLE TRIGGER replstamp_stamp', qr/cannot disable, replace or drop the replstamp triggers/ ],
	[ 'ALTER TABLE t ENABLE REPLICA TRIGGER replstamp_stamp', qr/cannot disable, replace or drop the replstamp triggers/ ],
	[ 'ALTER TRIGGER replstamp_stamp ON t RENAME TO x', qr/cannot disable, replace or drop the replstamp triggers/ ],
	[ 'DROP TRIGGER replstamp_stamp ON t', qr/cannot disable, replace or drop the replstamp triggers/ ],
	[ 'DROP TRIGGER replstamp_refuse_truncate ON t', qr/cannot disable, replace or drop the replstamp triggers/ ],
	[ 'ALTER TABLE t DROP CONSTRAINT t_pkey', qr/cannot drop the primary key of table public\.t because it is tracked by replstamp/ ],
	[ 'ALTER TABLE t DROP COLUMN id CASCADE', qr/cannot drop the primary key of table public\.t because it is tracked by replstamp/ ],
	[ 'ALTER TABLE t DROP CONSTRAINT t_pkey, ADD PRIMARY KEY (id, v)',
		qr/cannot change the primary key of table public\.t because it is tracked by replstamp.*\n.*by \(id\); the new key is \(id, v\)/ ],
);
for my $case (@refused)
{
	my ($sql, $expect) = @$case;
	my ($rc, $out, $err) = $a->psql('postgres', $sql);
	like($err, $expect, "refused: $sql");
	like($err, qr/HINT:  .*replstamp\.untrack/, "  with a hint to untrack it first") if $sql =~ /UNLOGGED|CONSTRAINT t_pkey$/;
}
is(sq($a, q{SELECT relpersistence FROM pg_class WHERE oid = 't'::regclass}), 'p', 'the table is still logged');
is(sq($a, q{SELECT string_agg(tgname || ':' || tgenabled::text, ',' ORDER BY tgname) FROM pg_trigger WHERE tgrelid = 't'::regclass}),
	'replstamp_refuse_truncate:A,replstamp_stamp:A', 'its triggers are still enabled ALWAYS');
sq($a, q{ALTER TABLE t DROP CONSTRAINT t_pkey, ADD PRIMARY KEY (id)});
pass('the same key made again is accepted');
my $before = sq($a, q{SELECT count(*) FROM replstamp.changes});
sq($a, q{SET session_replication_role = replica; INSERT INTO t VALUES (11, 'replica role')});
is(sq($a, q{SELECT count(*) FROM replstamp.changes}), $before + 1,
	'a write under session_replication_role = replica is stamped too (the trigger fires ALWAYS)');
is(sq($a, $problems), 'none', 'no problem after all that');

# 2. A single table restored with pg_restore --clean -t: dropped and created
# again without its triggers.
my $dump = $b->basedir . '/t.dump';
$b->command_ok([ 'pg_dump', '--format=custom', '--table=t', '--file', $dump, '--dbname', $b->connstr('postgres') ],
	'pg_dump of one tracked table');
$b->command_ok([ 'pg_restore', '--clean', '--table=t', '--dbname', $b->connstr('postgres'), $dump ],
	'pg_restore --clean -t restores it');
is(sq($b, q{SELECT state FROM replstamp.tracked_table WHERE relation = 'public.t'}), 'dropped',
	'replstamp recorded the table as dropped');
is(sq($b, $problems), 're-created, not tracked public.t', 'replstamp.problems shows it is not replicated');
is(sq($b, q{SELECT problems FROM replstamp.status}), '1', 'replstamp.status counts it');
like(sq($b, q{SELECT hint FROM replstamp.problems}),
	qr/ALTER TABLE public\.t ADD PRIMARY KEY \(id\); then, .*replstamp\.track\('public\.t', backfill => true\)/,
	'with the commands that make it replicate again (pg_restore -t brings back no key)');
sq($a, q{INSERT INTO t VALUES (12, 'a again')});
for my $round (1, 2)
{
	my ($rc, $out, $err) = $b->psql('postgres', q{SELECT replstamp.sync('a')});
	like($err, qr/WARNING:  replstamp: table public\.t is not replicated by this node: re-created, not tracked/,
		"sync $round warns of it");
	like($err, qr/HINT:  .*replstamp\.track\('public\.t', backfill => true\)/, '  and says what to do');
}
my ($rc, $out, $err) = $b->psql('postgres', q{SELECT replstamp.sync_all()});
like($err, qr/WARNING:  replstamp: table public\.t is not replicated by this node/, 'so does sync_all()');
sq($b, q{ALTER TABLE public.t ADD PRIMARY KEY (id)});
sq($b, q{SELECT replstamp.track('public.t', backfill => true)});
is(sq($b, $problems), 'none', 'tracked again, the table is no problem any more');
sq($b, q{INSERT INTO t VALUES (13, 'b after the restore')});
$b->poll_query_until('postgres', q{SELECT backfill = 'done' FROM replstamp.tracked_table WHERE relation = 'public.t'})
  or die 'the backfill never ended';
($rc, $out, $err) = $b->psql('postgres', q{SELECT replstamp.sync('a')});
is($err, '', 'and a sync no longer warns');
sq($a, q{SELECT replstamp.sync('b')});
is(sq($a, q{SELECT v FROM t WHERE id = 13}), 'b after the restore', "b's changes reach a again");

# 3. What replstamp.problems names (the guard bypassed by a superuser).
sq($a, q{ALTER EVENT TRIGGER replstamp_ddl_guard DISABLE});
is(sq($a, $problems), 'ddl guard disabled replstamp_ddl_guard', 'a disabled DDL guard');
sq($a, q{ALTER TABLE t SET UNLOGGED; ALTER TABLE t DISABLE TRIGGER replstamp_stamp});
is(sq($a, $problems), 'ddl guard disabled replstamp_ddl_guard, not stamped public.t, unlogged public.t',
	'an unlogged table and a disabled trigger');
sq($a, q{ALTER TABLE t ENABLE ALWAYS TRIGGER replstamp_stamp; ALTER TABLE t SET LOGGED;
	ALTER EVENT TRIGGER replstamp_ddl_guard ENABLE ALWAYS});
sq($a, q{SELECT replstamp.add_peer('nowhere', 'host=/nonexistent dbname=postgres connect_timeout=1')});
$a->psql('postgres', q{SELECT replstamp.sync('nowhere')});
is(sq($a, $problems), 'peer failing nowhere', 'a peer that fails');
sq($a, q{SELECT replstamp.drop_peer('nowhere')});
is(sq($a, $problems), 'none', 'and empty again once all is well');

# 4. A table dropped while tracked, created again to stay local: untrack()
# says so, and it is no problem any more.
sq($a, q{CREATE TABLE loc (id int PRIMARY KEY); SELECT replstamp.track('loc'); DROP TABLE loc;
	CREATE TABLE loc (id int PRIMARY KEY)});
is(sq($a, $problems), 're-created, not tracked public.loc', 'a tracked table dropped and created again');
sq($a, q{SELECT replstamp.untrack('loc')});
is(sq($a, $problems), 'none', 'untrack() records that it stays local');
is(sq($a, q{SELECT state FROM replstamp.tracked_table WHERE relation = 'public.loc'}), 'untracked', 'as untracked');

$_->stop for ($a, $b);
done_testing();
