# Faults during sync: the peer's backend killed mid-sync, the local backend
# cancelled mid-sync; garbage from a peer (wrong types, a hostile table
# name, huge and misshapen rows, serials out of range); a table owner's
# trigger trying to become superuser through the apply.  Each: a clear
# error, nothing of the batch applied, no crash, and the next sync works.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my ($a, $b, $evil) = map {
	replstamp_node($_, sql => q{
		CREATE EXTENSION replstamp;
		CREATE TABLE big (id int PRIMARY KEY, v text);
		CREATE TABLE t2 (id int PRIMARY KEY, n int);
		CREATE TABLE docs (id int PRIMARY KEY, doc text);
		SELECT replstamp.track(t) FROM unnest('{big,t2,docs}'::regclass[]) t;
	})
} qw(a b evil);
sub sq { my ($node, $sql) = @_; return $node->safe_psql('postgres', $sql); }
add_peer($b, 'a', $a);
add_peer($b, 'evil', $evil);

sub held_from
{
	my ($node) = @_;
	my $id = sq($node, 'SELECT replica_id FROM replstamp.node');
	return sq($b, "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$id'");
}

# Run replstamp.sync(peer) on b in the background.
sub background_sync
{
	my ($peer, $out) = @_;
	return psql_start($b, "SELECT replstamp.sync('$peer')", $out);
}

# A local transaction on b inserts the key a sync is about to apply: the
# sync waits for it after committing the pages before it.
sub hold_key
{
	my ($id) = @_;
	my $s = $b->background_psql('postgres');
	$s->query_safe('BEGIN');
	$s->query_safe("INSERT INTO big VALUES ($id, 'local')");
	return $s;
}
sub wait_for_lock
{
	$b->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE query LIKE 'replstamp: syncing from peer%' AND wait_event_type = 'Lock'")
	  or die 'the sync never waited';
}

# 1. The peer's backend is killed in the middle of the sync: the pages
# committed before stay, the next sync goes on from there, and every
# change arrives exactly once.
sq($b, 'ALTER SYSTEM SET replstamp.sync_batch_size = 1000');
sq($b, 'SELECT pg_reload_conf()');
# Fifty transactions of 1,000 rows: pages end between them.
sq($a, join(';', map { "INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series($_ * 1000 + 1, $_ * 1000 + 1000) g" } (0 .. 49)));
my $log = '';
my $hold = hold_key(20000);
my $h = background_sync('a', \$log);
wait_for_lock();
sq($a, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'replstamp' AND backend_type = 'client backend'");
$hold->query_safe('ROLLBACK');
$h->finish;
like($log, qr/terminating connection due to administrator command|peer "a" failed during sync|server closed the connection/,
	'peer killed mid-sync: clear error');
like($log, qr/on peer "a"|peer "a" failed/, 'peer killed mid-sync: the error names the peer');
my $held = held_from($a);
ok($held >= 19000 && $held < 50000, "peer killed mid-sync: the pages committed before it stay ($held changes)");
is(sq($b, 'SELECT count(*) FROM big'), $held, 'peer killed mid-sync: the table holds exactly those');

# 2. The local backend is cancelled in the middle of the sync: the sync
# worker stops with it.
$log = '';
$hold = hold_key(40000);
$h = background_sync('a', \$log);
wait_for_lock();
sq($b, "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query = 'SELECT replstamp.sync(''a'')'");
$h->finish;
$hold->query_safe('ROLLBACK');
$hold->quit;
like($log, qr/canceling statement due to user request/, 'local backend cancelled mid-sync: clear error');
$b->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'replstamp sync request'")
  or die 'the sync worker goes on';
pass('local backend cancelled: its sync worker stops too');
$a->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = 'replstamp'")
  or die 'the session on the peer stays';
pass('and the session on the peer is gone');
my $resumed_from = held_from($a);
ok($resumed_from >= 39000 && $resumed_from < 50000, "local backend cancelled: the pages before stay ($resumed_from changes)");
is(sq($b, "SELECT replstamp.sync('a')"), 50000 - $resumed_from, 'the next sync applies the rest');
is(sq($b, 'SELECT count(*) FROM big'), '50000', 'with every row');
is(held_from($a), '50000', 'and every change exactly once');

# 3. Garbage from a peer: a superuser there forges its change log.
my $evil_id = sq($evil, 'SELECT replica_id FROM replstamp.node');
my $round = 0;
sub garbage
{
	my ($forge, $re, $what) = @_;
	$round++;
	my $base = $round * 10;
	sq($evil, "INSERT INTO t2 SELECT g, g FROM generate_series($base + 1, $base + 5) g");
	my $target = sq($evil, "SELECT serial FROM replstamp.changes WHERE relation = 'public.t2' AND (pk->>'id')::int = $base + 3");
	my $before = held_from($evil);
	my $rows = sq($b, 'SELECT count(*) FROM t2');
	sq($evil, "ALTER TABLE replstamp.changes DISABLE TRIGGER USER; $forge" =~ s/\$S/$target/gr);
	my ($rc, $out, $err) = $b->psql('postgres', "SELECT replstamp.sync('evil')");
	like($err, $re, "$what: clear error");
	is(held_from($evil), $before, "$what: nothing of the batch applied");
	is(sq($b, 'SELECT count(*) FROM t2'), $rows, "$what: the table is untouched");
	# The peer repents: the change is removed, the next sync works.
	sq($evil, "DELETE FROM replstamp.changes WHERE replica_id = '$evil_id' AND serial = $target OR serial < 0");
	sq($b, "SELECT replstamp.sync('evil')");
	is(sq($b, "SELECT count(*) FROM t2 WHERE id BETWEEN $base + 1 AND $base + 5"), '4',
		"$what: once the peer sends sense, the next sync works");
}

garbage(q{UPDATE replstamp.changes SET row_image = '{"id": 13, "n": "thirteen"}' WHERE serial = $S},
	qr/invalid input syntax for type integer: "thirteen"/, 'a value of the wrong type');
garbage(q{UPDATE replstamp.changes SET relation = 'public.t2"; DROP TABLE t2; --' WHERE serial = $S},
	qr/ERROR:  invalid name syntax\nCONTEXT:  applying change [-0-9a-f]+\/\d+ \(INSERT\) of table public.t2"; DROP TABLE t2; -- from peer "evil"/, 'a hostile table name');
is(sq($b, "SELECT count(*) FROM pg_class WHERE relname = 't2'"), '1', 'and t2 is still there');
garbage(q{UPDATE replstamp.changes SET pk = '{"nope": 33}' WHERE serial = $S},
	qr/the row key of table public.t2 differs between peer "evil" and this node/, 'a key of other columns');
garbage(q{ALTER TABLE replstamp.changes DROP CONSTRAINT changes_op_check; UPDATE replstamp.changes SET op = 'X' WHERE serial = $S},
	qr/sent a change with unknown operation "X"/, 'an unknown operation');
garbage(q{UPDATE replstamp.changes SET row_image = NULL WHERE serial = $S},
	qr/sent a malformed change/, 'an INSERT without a row image');

# A huge row that fits is simply applied.
sq($evil, "INSERT INTO docs VALUES (1, repeat('d', 20000000))");
is(sq($b, "SELECT replstamp.sync('evil')"), '1', 'a 20 MB row that fits the table is applied');
is(sq($b, 'SELECT length(doc) FROM docs WHERE id = 1'), '20000000', 'whole');

# A peer whose data went back in time: it says it handed out fewer
# serials of its own ID than this node holds.  Nothing is pulled under
# that ID, the peer is reported, and our vector does not move back.
my $v_before = sq($b, "SELECT serial FROM replstamp.vector WHERE replica_id = '$evil_id'");
sq($evil, q{ALTER FUNCTION replstamp.serve(jsonb) RENAME TO serve_real;
	CREATE FUNCTION replstamp.serve(req jsonb) RETURNS jsonb LANGUAGE sql AS $$
		SELECT jsonb_set(jsonb_set(r, '{issued}', '1'), '{vector}',
		       (SELECT jsonb_agg(CASE WHEN e->>'id' = r->>'replica_id' THEN jsonb_set(e, '{serial}', '1') ELSE e END)
		          FROM jsonb_array_elements(r->'vector') e))
		  FROM replstamp.serve_real(req) r $$});
sq($evil, 'INSERT INTO t2 VALUES (1000, 1000)');
my ($rc, $out, $err) = $b->psql('postgres', "SELECT replstamp.sync('evil')");
is($out, '0', 'a peer whose serials went backwards: nothing pulled');
like($err, qr/has handed out serials of its replica ID [-0-9a-f]+ only up to 1, but this node holds them up to/,
	'and a warning says so');
is(sq($b, "SELECT status FROM replstamp.peers WHERE name = 'evil'"), 'diverged', 'replstamp.peers shows the peer diverged');
is(sq($b, "SELECT serial FROM replstamp.vector WHERE replica_id = '$evil_id'"), $v_before,
	'and our vector does not move back');
is($b->safe_psql('postgres', 'SELECT 1'), '1', 'b never crashed');
ok(!$b->log_contains(qr/server process .* was terminated by signal/), 'no backend of b died');

# 4. A table owner cannot use the apply to run code as a superuser.
sq($b, q{
	CREATE ROLE mallory LOGIN;
	CREATE SCHEMA mallory AUTHORIZATION mallory;
	CREATE TABLE trap (id int PRIMARY KEY);
	SELECT replstamp.track('trap');
	ALTER TABLE trap OWNER TO mallory;
});
$b->safe_psql('postgres', q{
	CREATE FUNCTION mallory.escalate() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		ALTER ROLE mallory SUPERUSER;
		RETURN NEW;
	END $$;
	CREATE TRIGGER escalate BEFORE INSERT ON trap FOR EACH ROW EXECUTE FUNCTION mallory.escalate();
	ALTER TABLE trap ENABLE ALWAYS TRIGGER escalate;
}, extra_params => [ '-U', 'mallory' ]);
sq($a, 'CREATE TABLE trap (id int PRIMARY KEY); SELECT replstamp.track(\'trap\'); INSERT INTO trap VALUES (1)');
($rc, $out, $err) = $b->psql('postgres', "SELECT replstamp.sync('a')");
# 16 reworded the refusal ("permission denied to alter role").
like($err, qr/must be superuser to alter superuser roles|permission denied to alter role/,
	"the owner's trigger runs as the owner, in a restricted context");
is(sq($b, "SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'"), 'f', 'mallory is not a superuser');
is(sq($b, 'SELECT count(*) FROM trap'), '0', 'and nothing of that batch was applied');

# 5. A relay that claims another node's changes it does not send: b
# pulls a's ID from evil as well, but its vector moves past what a itself
# said only as far as the changes evil sends, so a's next changes still
# reach b from a.
sq($evil, q{DROP FUNCTION replstamp.serve(jsonb);
	ALTER FUNCTION replstamp.serve_real(jsonb) RENAME TO serve});
sq($b, 'DROP TRIGGER escalate ON trap');
sq($evil, "CREATE TABLE trap (id int PRIMARY KEY); SELECT replstamp.track('trap')");
add_peer($evil, 'a', $a);
sq($a, 'INSERT INTO t2 VALUES (2000, 1)');
sq($evil, "SELECT replstamp.sync('a')");
sq($b, "SELECT replstamp.sync('a')");
my $a_id = sq($a, 'SELECT replica_id FROM replstamp.node');
my $a_held = sq($b, "SELECT serial FROM replstamp.vector WHERE replica_id = '$a_id'");
sq($evil, qq{ALTER FUNCTION replstamp.serve(jsonb) RENAME TO serve_real;
	CREATE FUNCTION replstamp.serve(req jsonb) RETURNS jsonb LANGUAGE sql AS \$\$
		SELECT jsonb_set(r, '{vector}',
		       (SELECT jsonb_agg(CASE WHEN e->>'id' = '$a_id' THEN jsonb_set(e, '{serial}', '9223372036854775807') ELSE e END)
		          FROM jsonb_array_elements(r->'vector') e))
		  FROM replstamp.serve_real(req) r \$\$});
$b->psql('postgres', "SELECT replstamp.sync('evil')");
is(sq($b, "SELECT serial FROM replstamp.vector WHERE replica_id = '$a_id'"), $a_held,
	"a relay claiming a's ID up to 2^63-1 does not move b's vector of it");
sq($a, 'INSERT INTO t2 VALUES (2001, 1)');
sq($b, "SELECT replstamp.sync('a')");
is(sq($b, 'SELECT count(*) FROM t2 WHERE id = 2001'), '1', "and a's next change still reaches b");

$_->stop for ($a, $b, $evil);
done_testing();
