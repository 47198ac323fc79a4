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
	return IPC::Run::start(
		[ 'psql', '-X', '-At', '-d', $b->connstr('postgres'), '-c', "SELECT replstamp.sync('$peer')" ],
		'>', $out, '2>', $out);
}

# 1. The peer's backend is killed in the middle of the sync.
sq($a, "INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 50000) g");
my $log = '';
my $h = background_sync('a', \$log);
$a->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'replstamp' AND backend_type = 'client backend'")
  or die 'the sync never connected';
sq($a, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'replstamp' AND backend_type = 'client backend'");
$h->finish;
like($log, qr/peer "a" failed during sync|could not (receive|send) data|server closed the connection/,
	'peer killed mid-sync: clear error');
is(held_from($a), '0', 'peer killed mid-sync: nothing applied');
is(sq($b, 'SELECT count(*) FROM big'), '0', 'peer killed mid-sync: the table is untouched');

# 2. The local backend is cancelled in the middle of the sync.
$log = '';
$h = background_sync('a', \$log);
$b->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE query LIKE 'replstamp: syncing from peer%' AND state = 'active'")
  or die 'the sync never started';
sleep 1;
sq($b, "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE 'replstamp: syncing from peer%' AND state = 'active'");
$h->finish;
like($log, qr/canceling statement due to user request/, 'local backend cancelled mid-sync: clear error');
is(held_from($a), '0', 'local backend cancelled: nothing applied');
is(sq($a, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'replstamp'"), '0',
	'and the session on the peer is gone');
is(sq($b, "SELECT replstamp.sync('a')"), '50000', 'the next sync completes');
is(sq($b, 'SELECT count(*) FROM big'), '50000', 'with every row');

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
	qr/ERROR:  invalid name syntax\nCONTEXT:  applying change [-0-9a-f]+\/\d+ of table public.t2"; DROP TABLE t2; -- from peer "evil"/, 'a hostile table name');
is(sq($b, "SELECT count(*) FROM pg_class WHERE relname = 't2'"), '1', 'and t2 is still there');
garbage(q{UPDATE replstamp.changes SET row_image = jsonb_build_object('id', 33, 'n', 33, 'junk', repeat('j', 20000000)) WHERE serial = $S},
	qr/sent a row of public.t2 that does not fit the table here/, 'a huge row with a column the table lacks');
garbage(q{ALTER TABLE replstamp.changes DROP CONSTRAINT changes_op_check; UPDATE replstamp.changes SET op = 'X' WHERE serial = $S},
	qr/sent a change with unknown operation "X"/, 'an unknown operation');
garbage(q{UPDATE replstamp.changes SET row_image = NULL WHERE serial = $S},
	qr/sent a malformed change/, 'an INSERT without a row image');

# A huge row that fits is simply applied.
sq($evil, "INSERT INTO docs VALUES (1, repeat('d', 20000000))");
is(sq($b, "SELECT replstamp.sync('evil')"), '1', 'a 20 MB row that fits the table is applied');
is(sq($b, 'SELECT length(doc) FROM docs WHERE id = 1'), '20000000', 'whole');

# A vector that goes backwards: a peer claiming less than it served before
# gets nothing requested, and our vector does not move back.
my $v_before = sq($b, "SELECT serial FROM replstamp.vector WHERE replica_id = '$evil_id'");
sq($evil, qq{CREATE OR REPLACE FUNCTION replstamp.serve_vector(OUT replica_id uuid, OUT serial bigint)
	RETURNS SETOF record LANGUAGE sql AS \$\$ SELECT '$evil_id'::uuid, 1::bigint \$\$});
sq($evil, 'INSERT INTO t2 VALUES (1000, 1000)');
is(sq($b, "SELECT replstamp.sync('evil')"), '0', 'a peer whose vector went backwards: nothing pulled');
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
my ($rc, $out, $err) = $b->psql('postgres', "SELECT replstamp.sync('a')");
like($err, qr/must be superuser to alter superuser roles/, "the owner's trigger runs as the owner, in a restricted context");
is(sq($b, "SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'"), 'f', 'mallory is not a superuser');
is(sq($b, 'SELECT count(*) FROM trap'), '0', 'and nothing of that batch was applied');

$_->stop for ($a, $b, $evil);
done_testing();
